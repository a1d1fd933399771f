"""The variational autoencoder of totalVI (Gayoso et al. 2021): RNA and protein counts of
CITE-seq cells, as scvi-tools 1.4 defines it.

Generative model for cell n in batch s_n and protein panel p_n (the panel defaults to the
batch), gene g, protein t:
    z_n ~ N(0, I);  l_n = log library (observed, or ~ N(mu_s, var_s) when learned)
    rho_n = softmax(f_rho(z_n, s_n));       x_ng ~ NB / ZINB(exp(l_n) rho_ng, theta_g)
    log beta_nt ~ N(a_t(z_n, s_n), b_t(z_n, s_n)^2)        protein background rate
    alpha_nt = beta_nt * r_t(z_n, s_n), r >= 1              protein foreground rate
    pi_nt = sigmoid(f_pi(z_n, s_n))                         probability of the background
    e_ts = exp(log_per_batch_efficiency[t, s])              capture efficiency of the batch
    y_nt ~ pi_nt NB(e beta_nt, phi_t) + (1 - pi_nt) NB(e alpha_nt, phi_t)
With size factors the RNA rate is size_factor_n * softplus(f_rho) instead (no softmax).
The prior of log beta is N(c_tp, d_tp^2) per protein and panel, with c and log d learned
(initialised at c = 3, d = 1 unless an empirical prior is given).
Inference: q(z | x, y) and q(l | x, y) Gaussian, from x / (1 + mean(x)) and
y / (1 + mean(y)) per cell (log1p of those with ``log_variational``); log beta is drawn
from N(a, b^2) itself, so its KL term compares N(a, b^2) with the prior. Proteins not
measured in a cell's panel (``protein_batch_mask``) enter neither the likelihood nor that KL.

The background term of each cell's loss also holds, over all proteins, -log LogNormal(e; 0, 1)
of its batch's efficiencies and 1e-3 * -log sigmoid(mixing logits); both count in the ELBO,
and the protein reconstruction term is weighted by the KL warm-up, as in scvi-tools.
Normalized protein expression (``rate_back``, ``rate_fore``) leaves the efficiency out;
``rate_back_scaled`` and ``rate_fore_scaled`` carry it, as the likelihood does.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import _constants as C
from ..distributions import NegativeBinomial, NegativeBinomialMixture, ZeroInflatedNegativeBinomial
from ..nn import GaussianEncoder, SparseRows, TotalVIDecoder, reads_sparse
from ._base import BaseModule, LossOutput, fold_samples
from ._vae import LATENT_DISTRIBUTIONS, NORM_CHOICES, _log_standard_normal, _normal, _rsample, check_choice

GENE_LIKELIHOODS = ("nb", "zinb")
GENE_DISPERSIONS = ("gene", "gene-batch", "gene-label")
PROTEIN_DISPERSIONS = ("protein", "protein-batch", "protein-label")
LIBRARY_LOG_MAX = 15.0  # a learned log library is clamped here (exp(15) ~ 3.3e6 counts)
# Tensor of each cell's protein panel code; without it a cell's panel is its batch.
PANEL_KEY = C.PANEL_KEY
MIXING_PENALTY = 1e-3  # weight of -log sigmoid(mixing logits), which favours the background
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _log_normal_density(x, mean, log_sd):
    """log N(x; mean, exp(log_sd)^2) per entry."""
    return -0.5 * ((x - mean) * torch.exp(-log_sd)).square() - log_sd - HALF_LOG_2PI


class TOTALVAE(BaseModule):
    """totalVI's variational autoencoder (pure torch; knows nothing of AnnData).

    ``n_panel`` (default ``n_batch``) is the number of protein panels: the protein mask
    (panels x proteins) and the background prior (proteins x panels) are per panel, read
    from the tensor ``PANEL_KEY`` when present, else from the batch. Dispersions and
    efficiencies stay per batch. ``extra_decoder_kwargs`` go to :class:`TotalVIDecoder`
    (e.g. ``activation_function_bg="exp"``).
    """

    def __init__(
        self,
        n_input_genes: int,
        n_input_proteins: int,
        n_batch: int = 1,
        n_labels: int = 1,
        n_hidden: int = 256,
        n_latent: int = 20,
        n_layers_encoder: int = 2,
        n_layers_decoder: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] = (),
        dropout_rate_decoder: float = 0.2,
        dropout_rate_encoder: float = 0.2,
        gene_dispersion: str = "gene",
        protein_dispersion: str = "protein",
        log_variational: bool = True,
        gene_likelihood: str = "nb",
        latent_distribution: str = "normal",
        protein_batch_mask: np.ndarray | None = None,
        encode_covariates: bool = True,
        protein_background_prior_mean: np.ndarray | None = None,
        protein_background_prior_scale: np.ndarray | None = None,
        use_size_factor_key: bool = False,
        use_observed_lib_size: bool = True,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        n_panel: int | None = None,
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
        extra_decoder_kwargs: dict | None = None,
    ):
        super().__init__()
        check_choice("gene_likelihood", gene_likelihood, GENE_LIKELIHOODS)
        check_choice("gene_dispersion", gene_dispersion, GENE_DISPERSIONS)
        check_choice("protein_dispersion", protein_dispersion, PROTEIN_DISPERSIONS)
        check_choice("use_batch_norm", use_batch_norm, NORM_CHOICES)
        check_choice("use_layer_norm", use_layer_norm, NORM_CHOICES)
        check_choice("latent_distribution", latent_distribution, LATENT_DISTRIBUTIONS)
        n_genes, n_proteins = int(n_input_genes), int(n_input_proteins)
        n_panel = n_batch if n_panel is None else int(n_panel)
        if n_panel < 1:
            raise ValueError(f"n_panel must be at least 1, got {n_panel}")
        self.n_input_genes, self.n_input_proteins = n_genes, n_proteins
        self.n_batch, self.n_labels, self.n_latent = n_batch, n_labels, n_latent
        self.n_panel = n_panel
        self.gene_dispersion, self.protein_dispersion = gene_dispersion, protein_dispersion
        self.gene_likelihood = gene_likelihood
        self.log_variational = log_variational
        self.encode_covariates = encode_covariates
        self.n_continuous_cov = n_continuous_cov
        self.use_size_factor_key = use_size_factor_key
        # With size factors the library is given, never learned.
        self.use_observed_lib_size = use_size_factor_key or use_observed_lib_size

        columns = {"gene": (), "protein": (), "batch": (n_batch,), "label": (n_labels,)}
        self.px_r = nn.Parameter(torch.randn(n_genes, *columns[gene_dispersion.rsplit("-", 1)[-1]]))
        self.py_r = nn.Parameter(2 * torch.rand(n_proteins, *columns[protein_dispersion.rsplit("-", 1)[-1]]))
        # Capture efficiency of each protein in each batch (log scale), under a LogNormal(0, 1) prior.
        self.log_per_batch_efficiency = nn.Parameter(torch.zeros(n_proteins, n_batch))

        if protein_batch_mask is not None:
            mask = np.asarray(protein_batch_mask, dtype=np.float32)
            if mask.shape != (n_panel, n_proteins):
                raise ValueError(f"protein_batch_mask must be (n_panel, n_proteins) = {(n_panel, n_proteins)}, "
                                 f"got {mask.shape}")
            self.register_buffer("protein_batch_mask", torch.as_tensor(mask))
        else:
            self.protein_batch_mask = None

        # Prior of the log protein background: N(alpha[t, p], exp(log_beta[t, p])^2) per
        # panel. Given as one column, one prior is shared (and learned) by all panels.
        if protein_background_prior_mean is None:
            alpha = torch.full((n_proteins, n_panel), 3.0)
            log_beta = torch.zeros(n_proteins, n_panel)
        else:
            if protein_background_prior_scale is None:
                raise ValueError("protein_background_prior_mean needs protein_background_prior_scale")
            mean = np.asarray(protein_background_prior_mean, dtype=np.float32)
            scale = np.asarray(protein_background_prior_scale, dtype=np.float32)
            mean, scale = mean.reshape(n_proteins, -1), scale.reshape(n_proteins, -1)
            if mean.shape != scale.shape or mean.shape[1] not in (1, n_panel):
                raise ValueError("protein background prior mean and scale must both be (n_proteins, n_panel) "
                                 f"or (n_proteins,); got {mean.shape} and {scale.shape}")
            if not np.all(scale > 0):
                raise ValueError("protein_background_prior_scale must be positive")
            alpha, log_beta = torch.as_tensor(mean), torch.log(torch.as_tensor(scale))
        self.background_pro_alpha = nn.Parameter(alpha)
        self.background_pro_log_beta = nn.Parameter(log_beta)

        if not self.use_observed_lib_size:
            if library_log_means is None or library_log_vars is None:
                raise ValueError("a learned library size needs library_log_means and library_log_vars")
            self.register_buffer("library_log_means", torch.as_tensor(library_log_means, dtype=torch.float32).reshape(1, -1))
            self.register_buffer("library_log_vars", torch.as_tensor(library_log_vars, dtype=torch.float32).reshape(1, -1))

        cat_sizes = [n_batch, *n_cats_per_cov]
        enc_bn, enc_ln = use_batch_norm in ("encoder", "both"), use_layer_norm in ("encoder", "both")
        dec_bn, dec_ln = use_batch_norm in ("decoder", "both"), use_layer_norm in ("decoder", "both")
        n_enc_in = n_genes + n_proteins + (n_continuous_cov if encode_covariates else 0)
        enc_cats = cat_sizes if encode_covariates else ()
        self.z_encoder = GaussianEncoder(
            n_enc_in, n_latent, enc_cats, n_layers_encoder, n_hidden, dropout_rate_encoder, latent_distribution,
            use_batch_norm=enc_bn, use_layer_norm=enc_ln, sparse_input=True,
        )
        if not self.use_observed_lib_size:
            self.l_encoder = GaussianEncoder(
                n_enc_in, 1, enc_cats, 1, n_hidden, dropout_rate_encoder,
                use_batch_norm=enc_bn, use_layer_norm=enc_ln, sparse_input=True,
            )
        decoder_kwargs = {"scale_activation": "softplus" if use_size_factor_key else "softmax",
                          **(extra_decoder_kwargs or {})}
        self.decoder = TotalVIDecoder(
            n_latent + n_continuous_cov, n_genes, n_proteins, cat_sizes, n_layers_decoder, n_hidden,
            dropout_rate_decoder, dec_bn, dec_ln, zero_inflation=gene_likelihood == "zinb", **decoder_kwargs,
        )

    @property
    def latent_distribution(self) -> str:
        return self.z_encoder.latent_distribution

    def z_transform(self, untran_z: torch.Tensor) -> torch.Tensor:
        """z from a draw of the Gaussian posterior (the identity, or softmax for "ln")."""
        return self.z_encoder.z_transform(untran_z)

    # -- tensor dict -> arguments -----------------------------------------------------------
    def _panel(self, tensors: dict) -> torch.Tensor:
        """Each cell's protein panel: the ``PANEL_KEY`` tensor, else its batch."""
        panel = tensors.get(PANEL_KEY)
        if panel is not None:
            return panel.reshape(-1).long()
        if self.n_panel != self.n_batch:
            raise ValueError(f"the module has {self.n_panel} protein panels but {self.n_batch} batches, and "
                             f"the tensors hold no '{PANEL_KEY}' codes; pass each cell's panel under that key")
        return tensors[C.BATCH_KEY]

    def inference_inputs(self, tensors: dict) -> dict:
        cats, cont = self.covariates(tensors)
        x, nz = tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY)
        return {"x": x, "y": tensors[C.PROTEIN_KEY], "batch": tensors[C.BATCH_KEY],
                "cat_covs": cats, "cont_covs": cont,
                "x_nz": (nz, tensors[C.X_NZ_VALUE_KEY]) if reads_sparse(nz, x.shape) else None}

    def generative_inputs(self, tensors: dict, inference_out: dict, transform_batch=None) -> dict:
        cats, cont = self.covariates(tensors)
        batch = tensors[C.BATCH_KEY]
        if transform_batch is not None:
            batch = torch.full_like(batch, int(transform_batch))
        return {
            "z": inference_out["z"], "library": inference_out["library"], "batch": batch,
            "cat_covs": cats, "cont_covs": cont, "labels": tensors.get(C.LABELS_KEY),
            "size_factor": tensors.get(C.SIZE_FACTOR_KEY),
        }

    # -- the model ---------------------------------------------------------------------------
    def _latent_samples(self, qz_mean, qz_var, sample_shape) -> dict:
        untran_z = _rsample(qz_mean, qz_var, sample_shape)
        return {"qz_mean": qz_mean, "qz_var": qz_var, "untran_z": untran_z,
                "z": self.z_encoder.z_transform(untran_z)}

    @staticmethod
    def _library_sample(ql_mean, ql_var, sample_shape) -> torch.Tensor:
        return torch.clamp(_rsample(ql_mean, ql_var, sample_shape), max=LIBRARY_LOG_MAX)

    def encoder_input(self, x: torch.Tensor, y: torch.Tensor, x_nz=None, cont_covs=None):
        """RNA and proteins, each divided by (1 + the cell's mean count), log1p'ed with
        ``log_variational``, side by side (then the continuous covariates, if given). With
        ``x_nz`` (the RNA's non-zero flat indices and values) a ``SparseRows`` of the RNA with
        the rest as its dense tail: the same numbers, computed at the non-zeros only."""
        y_in = y / (1 + y.mean(-1, keepdim=True))
        if self.log_variational:
            y_in = torch.log1p(y_in)
        tail = y_in if cont_covs is None else torch.cat([y_in, cont_covs], dim=-1)
        if x_nz is None:
            x_in = x / (1 + x.mean(-1, keepdim=True))
            return torch.cat([torch.log1p(x_in) if self.log_variational else x_in, tail], dim=-1)
        nz_index, nz_value = x_nz
        n_cells, n_genes = x.shape
        rows = torch.div(nz_index, n_genes, rounding_mode="floor")
        scale = 1 + torch.zeros(n_cells, dtype=nz_value.dtype, device=nz_value.device).index_add_(
            0, rows, nz_value) / n_genes
        values = nz_value / scale.index_select(0, rows)
        return SparseRows(nz_index, torch.log1p(values) if self.log_variational else values, n_cells, n_genes,
                          tail=tail)

    def inference(self, x, y, batch, cat_covs=(), cont_covs=None, n_samples: int = 1, x_nz=None) -> dict:
        """q(z | x, y) and the log library: observed log(sum x), or a draw of q(l | x, y).
        ``x_nz``: the RNA's non-zeros (flat indices, values), read by the encoders instead of
        ``x`` (the same numbers, faster)."""
        cats = [batch, *cat_covs] if self.encode_covariates else ()
        x_in = self.encoder_input(x, y, x_nz, cont_covs if self.encode_covariates else None)
        sample_shape = (n_samples,) if n_samples > 1 else ()
        out = self._latent_samples(*self.z_encoder(x_in, cats), sample_shape)
        if self.use_observed_lib_size:
            library = torch.log(x.sum(-1, keepdim=True))
            out["library"] = library.expand(*sample_shape, *library.shape)
        else:
            ql_mean, ql_var = self.l_encoder(x_in, cats)
            out.update(ql_mean=ql_mean, ql_var=ql_var, library=self._library_sample(ql_mean, ql_var, sample_shape))
        return out

    def resample_inference(self, inference_out: dict, rows: torch.Tensor, n_samples: int = 1) -> dict:
        """The posterior of cells ``rows`` (positions in ``inference_out``, which holds one
        sample per cell) with fresh samples, without encoding again."""
        sample_shape = (n_samples,) if n_samples > 1 else ()
        out = self._latent_samples(inference_out["qz_mean"][rows], inference_out["qz_var"][rows], sample_shape)
        if self.use_observed_lib_size:
            library = inference_out["library"][rows]
            out["library"] = library.expand(*sample_shape, *library.shape)
        else:
            ql_mean, ql_var = inference_out["ql_mean"][rows], inference_out["ql_var"][rows]
            out.update(ql_mean=ql_mean, ql_var=ql_var, library=self._library_sample(ql_mean, ql_var, sample_shape))
        return out

    @staticmethod
    def _by_cell(param: torch.Tensor, kind: str, batch, labels) -> torch.Tensor:
        """exp(param) for each cell: (features,) or (cells, features) by batch or label."""
        if param.dim() == 1:
            return torch.exp(param)
        codes = batch if kind.endswith("batch") else labels
        if codes is None:
            raise ValueError(f"dispersion {kind!r} needs the cells' labels")
        return torch.exp(param).T[codes]

    def protein_efficiency(self, batch: torch.Tensor) -> torch.Tensor:
        """exp(log_per_batch_efficiency) of each cell's batch: cells x proteins."""
        return torch.exp(self.log_per_batch_efficiency).T[batch]

    def generative(self, z, library, batch, cat_covs=(), cont_covs=None, labels=None, size_factor=None,
                   likelihood: bool = True, genes_major: bool = False) -> dict:
        """Likelihood parameters of RNA and proteins. ``likelihood=False`` returns only the RNA
        ``"scale"`` and ``genes_major=True`` only ``"scale_by_gene"`` (genes first); both skip
        the protein heads.

        Protein rates: ``rate_back`` and ``rate_fore`` without the batch's efficiency (what
        normalized expression reports), ``rate_back_scaled`` and ``rate_fore_scaled`` with
        it (``protein_efficiency`` times those), as ``protein_dist`` uses them."""
        dec_in, cats, lead = fold_samples(z, batch, cat_covs, cont_covs)

        def unfold(t):
            return t.reshape(*lead, t.shape[-1])

        if genes_major or not likelihood:
            scale = self.decoder.gene_expression(dec_in, cats)
            if genes_major:
                return {"scale_by_gene": scale.t().reshape(-1, *lead)}
            return {"scale": unfold(scale)}

        dec = self.decoder(dec_in, cats)
        if size_factor is not None:
            library = torch.log(size_factor).reshape(-1, 1)
        scale = unfold(dec["scale"])
        rate = torch.exp(library) * scale
        theta = self._by_cell(self.px_r, self.gene_dispersion, batch, labels)
        dropout = unfold(dec["dropout"]) if dec["dropout"] is not None else None
        if self.gene_likelihood == "zinb":
            dist = ZeroInflatedNegativeBinomial(rate, theta, dropout)
        else:
            dist = NegativeBinomial(rate, theta)

        back_alpha, back_beta = unfold(dec["back_alpha"]), unfold(dec["back_beta"])
        log_rate_back = back_alpha + back_beta * torch.randn_like(back_alpha)
        rate_back = torch.exp(log_rate_back)
        fore_scale = unfold(dec["fore_scale"])
        rate_fore = rate_back * fore_scale
        mixing = unfold(dec["mixing"])
        theta_protein = self._by_cell(self.py_r, self.protein_dispersion, batch, labels)
        efficiency = self.protein_efficiency(batch)
        rate_back_scaled, rate_fore_scaled = efficiency * rate_back, efficiency * rate_fore
        return {
            "scale": scale, "rate": rate, "theta": theta, "dropout": dropout, "dist": dist,
            "back_alpha": back_alpha, "back_beta": back_beta, "log_rate_back": log_rate_back,
            "rate_back": rate_back, "fore_scale": fore_scale, "rate_fore": rate_fore, "mixing": mixing,
            "theta_protein": theta_protein, "protein_efficiency": efficiency,
            "rate_back_scaled": rate_back_scaled, "rate_fore_scaled": rate_fore_scaled,
            "protein_dist": NegativeBinomialMixture(rate_back_scaled, rate_fore_scaled, theta_protein, mixing),
        }

    # -- loss ----------------------------------------------------------------------------------
    def _protein_mask(self, panel: torch.Tensor) -> torch.Tensor | None:
        """Cells x proteins, True where the protein was measured in the cell's panel."""
        if self.protein_batch_mask is None:
            return None
        return self.protein_batch_mask[panel] > 0

    def _background_prior(self, panel: torch.Tensor):
        """(mean, log sd) of the log-background prior, cells x proteins (or 1 x proteins)."""
        alpha, log_beta = self.background_pro_alpha.T, self.background_pro_log_beta.T
        if alpha.shape[0] == 1:
            return alpha, log_beta
        return alpha[panel], log_beta[panel]

    def _library_prior(self, batch: torch.Tensor):
        return _normal(self.library_log_means[0, batch].unsqueeze(-1),
                       self.library_log_vars[0, batch].unsqueeze(-1))

    def _efficiency_penalty(self, batch: torch.Tensor) -> torch.Tensor:
        """-log LogNormal(e; 0, 1) of the cell's batch efficiencies, summed over all proteins:
        log e + (log e)^2 / 2 + log(2 pi) / 2 each."""
        log_e = self.log_per_batch_efficiency.T[batch]
        return (log_e + 0.5 * log_e.square() + HALF_LOG_2PI).sum(-1)

    @staticmethod
    def _masked_sum(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is not None:
            values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
        return values.sum(-1)

    @staticmethod
    def _per_cell(values: torch.Tensor, n_cells: int) -> torch.Tensor:
        """Per-cell values, averaged over leading sample dimensions when there are any."""
        if values.dim() == 0:
            return values.expand(n_cells)
        return values.reshape(-1, n_cells).mean(0) if values.dim() > 1 else values

    def _reconstruction_rna(self, tensors: dict, generative_out: dict) -> torch.Tensor:
        """-log p(x | z, l) per cell; the fused sparse path when one sample per cell."""
        dist = generative_out["dist"]
        if dist.mu.dim() == 2:
            return -dist.log_prob_per_cell(tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY),
                                           tensors.get(C.X_NZ_VALUE_KEY))
        return -dist.log_prob(tensors[C.X_KEY]).sum(-1)

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0,
             protein_reconstruction_weight: float = 1.0) -> LossOutput:
        """Per cell: reconstruction = -log p(x | .) - log p(y | .) over measured proteins;
        kl_local = KL(z) + KL(l) + the background term (KL of the measured proteins' log
        background, the efficiency prior and the mixing penalty). The loss weights the
        protein reconstruction, KL(z) and the background term by ``kl_weight`` (KL(l) is
        never weighted), as scvi-tools 1.4 does."""
        y, batch = tensors[C.PROTEIN_KEY], tensors[C.BATCH_KEY]
        panel = self._panel(tensors)
        n = batch.shape[0]
        mask = self._protein_mask(panel)
        rec_gene = self._per_cell(self._reconstruction_rna(tensors, generative_out), n)
        rec_protein = self._per_cell(-self._masked_sum(generative_out["protein_dist"].log_prob(y), mask), n)

        qz_mean, qz_var = inference_out["qz_mean"], inference_out["qz_var"]
        kl_z = 0.5 * (qz_var + qz_mean.square() - 1 - torch.log(qz_var)).sum(-1)
        if self.use_observed_lib_size:
            kl_l = torch.zeros_like(kl_z)
        else:
            prior = self._library_prior(batch)
            ql_mean, ql_var = inference_out["ql_mean"], inference_out["ql_var"]
            kl_l = 0.5 * (torch.log(prior.variance / ql_var)
                          + (ql_var + (ql_mean - prior.mean).square()) / prior.variance - 1).sum(-1)
        # KL(N(a, b^2) || N(c, d^2)) = log(d / b) + (b^2 + (a - c)^2) / (2 d^2) - 1/2
        prior_mean, prior_log_sd = self._background_prior(panel)
        back_alpha, back_beta = generative_out["back_alpha"], generative_out["back_beta"]
        kl_back = (prior_log_sd - torch.log(back_beta)
                   + 0.5 * (back_beta.square() + (back_alpha - prior_mean).square()) * torch.exp(-2 * prior_log_sd)
                   - 0.5)
        kl_back = self._per_cell(self._masked_sum(kl_back, mask), n)
        # Over every protein, measured or not: -log sigmoid(logits) = softplus(-logits).
        mixing_penalty = self._per_cell(MIXING_PENALTY * F.softplus(-generative_out["mixing"]).sum(-1), n)
        back_term = kl_back + self._efficiency_penalty(batch) + mixing_penalty

        loss = torch.mean(rec_gene + kl_weight * protein_reconstruction_weight * rec_protein
                          + kl_weight * kl_z + kl_l + kl_weight * back_term)
        return LossOutput(
            loss=loss,
            reconstruction_loss=rec_gene + rec_protein,
            kl_local=kl_z + kl_l + back_term,
            extra_metrics={"reconstruction_loss_rna": rec_gene.mean().detach(),
                           "reconstruction_loss_protein": rec_protein.mean().detach()},
        )

    @torch.no_grad()
    def marginal_ll(self, tensors: dict, n_mc_samples: int = 1000, chunk: int = 100) -> torch.Tensor:
        """Importance-sampled log p(x, y) per cell. Proposal: q(z | x, y), q(l | x, y) when the
        library is learned, and the decoder's N(a, b^2) for the log protein background, whose
        weight is its prior over that proposal (measured proteins only: an unmeasured
        protein's background integrates out exactly). The efficiencies and the mixing penalty
        are parameters and a regulariser, not latent variables: they are not in the weights."""
        inf = self.inference(**self.inference_inputs(tensors))
        x, y, batch = tensors[C.X_KEY], tensors[C.PROTEIN_KEY], tensors[C.BATCH_KEY]
        panel = self._panel(tensors)
        mask = self._protein_mask(panel)
        prior_mean, prior_log_sd = self._background_prior(panel)
        qz = _normal(inf["qz_mean"], inf["qz_var"])
        log_w = []
        for start in range(0, n_mc_samples, chunk):
            k = min(chunk, n_mc_samples - start)
            sample = self._latent_samples(inf["qz_mean"], inf["qz_var"], (k,))
            untran_z = sample["untran_z"]
            lw = _log_standard_normal(untran_z) - qz.log_prob(untran_z).sum(-1)
            if self.use_observed_lib_size:
                sample["library"] = inf["library"].expand(k, *inf["library"].shape)
            else:
                ql = _normal(inf["ql_mean"], inf["ql_var"])
                lib = self._library_sample(inf["ql_mean"], inf["ql_var"], (k,))
                sample["library"] = lib
                lw = lw + (self._library_prior(batch).log_prob(lib) - ql.log_prob(lib)).sum(-1)
            gen = self.generative(**self.generative_inputs(tensors, sample))
            lw = lw + gen["dist"].log_prob(x).sum(-1)
            log_back = gen["log_rate_back"]
            back_ratio = (_log_normal_density(log_back, prior_mean, prior_log_sd)
                          - _log_normal_density(log_back, gen["back_alpha"], torch.log(gen["back_beta"])))
            lw = lw + self._masked_sum(gen["protein_dist"].log_prob(y) + back_ratio, mask)
            log_w.append(lw)
        log_w = torch.cat(log_w, dim=0)
        return torch.logsumexp(log_w, dim=0) - np.log(n_mc_samples)


def _two_gaussians(values: np.ndarray, n_iter: int = 100, tol: float = 1e-3, var_floor: float = 1e-6):
    """A two-component 1-D Gaussian mixture fitted to each row of ``values`` (cells x points) by
    EM, vectorised over rows, started from a k-means split seeded at each row's min and max.

    Returns (mean, sd) of each row's lower component and a mask of the rows that could be fitted
    (a row whose values are all equal cannot).
    """
    x = np.asarray(values, dtype=np.float64)
    n, p = x.shape
    lo, hi = x.min(1), x.max(1)
    ok = hi - lo > 1e-12
    # k-means (Lloyd) from centres at min and max: a hard start for EM.
    centres = np.stack([lo, hi], axis=1)
    for _ in range(20):
        upper = np.abs(x - centres[:, 1:]) < np.abs(x - centres[:, :1])
        n_up = upper.sum(1)
        new = np.stack([np.where(n_up < p, (x * ~upper).sum(1) / np.maximum(p - n_up, 1), centres[:, 0]),
                        np.where(n_up > 0, (x * upper).sum(1) / np.maximum(n_up, 1), centres[:, 1])], axis=1)
        if np.allclose(new, centres):
            break
        centres = new
    resp = np.stack([~upper, upper], axis=2).astype(np.float64)  # cells x points x 2
    tiny = 10 * np.finfo(np.float64).eps
    previous = -np.inf
    for _ in range(n_iter):
        # M step
        nk = resp.sum(1) + tiny
        mean = (resp * x[:, :, None]).sum(1) / nk
        var = (resp * (x[:, :, None] - mean[:, None, :]) ** 2).sum(1) / nk + var_floor
        weight = nk / p
        # E step
        log_dens = (np.log(weight)[:, None, :] - 0.5 * np.log(2 * np.pi * var)[:, None, :]
                    - 0.5 * (x[:, :, None] - mean[:, None, :]) ** 2 / var[:, None, :])
        top = log_dens.max(2, keepdims=True)
        log_norm = top + np.log(np.exp(log_dens - top).sum(2, keepdims=True))
        resp = np.exp(log_dens - log_norm)
        bound = log_norm[:, :, 0].mean(1)  # mean log-likelihood per point, per row
        if np.all(np.abs(bound - previous) < tol):
            break
        previous = bound
    lower = np.argmin(mean, axis=1)
    rows = np.arange(n)
    return mean[rows, lower], np.sqrt(var[rows, lower]), ok


def protein_background_prior(proteins: np.ndarray, batch_codes: np.ndarray, n_batch: int,
                             protein_batch_mask: np.ndarray | None = None, n_cells: int = 100,
                             rng: np.random.Generator | int | None = None):
    """Empirical prior of the log protein background, per batch (or panel): (mean, scale),
    each n_proteins x n_batch (the batch's value repeated for every protein).

    For each batch, ``n_cells`` of its cells are drawn with replacement; a two-component
    Gaussian mixture is fitted to the log1p counts of each drawn cell's measured proteins and
    its lower component taken as the background. The batch's mean is the mean of those
    components' means, its scale sqrt(sum of their variances) / n_cells. A cell whose counts
    are all equal (e.g. all zero) counts as mean 0, sd 0.05. With a mask, a batch that
    measured fewer than 5 proteins gets (0, 0.05); a batch without cells gets (0, 1).
    (scvi-tools 1.4 does the same with scikit-learn's GaussianMixture.)
    """
    if hasattr(proteins, "toarray"):
        proteins = proteins.toarray()
    proteins = np.asarray(proteins, dtype=np.float64)
    batch_codes = np.asarray(batch_codes).reshape(-1)
    rng = np.random.default_rng(rng)
    means, scales = np.zeros(n_batch), np.ones(n_batch)
    for b in range(n_batch):
        counts = proteins[batch_codes == b]
        if counts.shape[0] == 0:
            continue  # (0, 1)
        if protein_batch_mask is not None:
            counts = counts[:, np.asarray(protein_batch_mask[b], dtype=bool)]
            if counts.shape[1] < 5:
                scales[b] = 0.05
                continue
        chosen = np.log1p(counts[rng.integers(counts.shape[0], size=n_cells)])
        mu, sd, ok = _two_gaussians(chosen)
        mu, sd = np.where(ok, mu, 0.0), np.where(ok, sd, 0.05)
        means[b] = mu.mean()
        scales[b] = np.sqrt(np.sum(sd**2)) / n_cells
    n_proteins = proteins.shape[1]
    return (np.tile(means[None, :], (n_proteins, 1)).astype(np.float32),
            np.tile(scales[None, :], (n_proteins, 1)).astype(np.float32))
