"""gimVI's joint variational autoencoder over data sets that measure different genes
(Lopez et al. 2019): a single-cell reference with all genes, and spatial (FISH) data with a
subset of them.

Generative model for cell n of data set d (genes G_d among all genes G), gene g in G:
    z_n ~ N(0, I);  l_n = log library (observed, or ~ N(mu_{d,batch}, var_{d,batch}) when learned)
    logits_n = f(z_n, s_n)                 one decoder shared by every data set; s_n the batch
    rho_ng = exp(logits_ng) / sum_{g' in G_d} exp(logits_ng')   expression relative to G_d
    x_ng ~ ZINB / NB / Poisson(mean exp(l_n) rho_ng, theta_g[batch]) for g in G_d only
Inference: q(z_n | x_n) = N(mu_d(x_n), sigma_d^2(x_n)): one input stack per data set (its
genes), then layers shared by all. The latent is joint, so a spatial cell's z decodes to all
genes G: that is the imputation. ``rho`` normalised over G_d is the data set's own scale;
over the G_d of another data set ``e``, the scale as data set ``e`` would measure it.

Batches are numbered across data sets (the batches of data set d follow those of data sets
0..d-1), so the dispersion ``"gene-batch"`` and the decoder's batch-conditioned layers tell
data sets apart too.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import kl_divergence

from .. import _constants as C
from ..distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from ..nn import FCLayers, GaussianEncoder, SparseRows, reads_sparse
from ._base import BaseModule, LossOutput, minibatch_device_type, loss_in_float32
from ._vae import GENE_LIKELIHOODS, _normal, _rsample, check_choice

JVAE_DISPERSIONS = ("gene", "gene-batch", "gene-cell")


class JVAE(BaseModule):
    """Joint VAE of several data sets with different genes (pure torch).

    Parameters
    ----------
    n_genes
        Genes of the joint model (the reference's): the decoder's outputs.
    gene_indices
        Per data set, the positions among the ``n_genes`` of its genes, in its column order.
    n_batches
        Batches per data set.
    gene_likelihoods
        Per data set: ``"zinb"``, ``"nb"`` or ``"poisson"``.
    learn_library
        Per data set: learn the log library size (a posterior with a per-batch log-normal
        prior) rather than use the observed total count.
    library_log_means, library_log_vars
        Per data set with a learned library: mean and variance of the log library per batch.
    n_latent
        Latent dimensions.
    n_hidden, n_layers_encoder_individual, n_layers_encoder_shared
        Encoder: per data set ``n_layers_encoder_individual`` layers from its genes to
        ``n_hidden`` units, then ``n_layers_encoder_shared`` layers shared by all (0: none).
    n_hidden_decoder, n_layers_decoder_individual, n_layers_decoder_shared
        Decoder: ``n_layers_decoder_individual`` layers conditioned on the batch, then
        ``n_layers_decoder_shared`` layers without it (both 0 by default: the logits are a
        linear function of z).
    dropout_rate_encoder, dropout_rate_decoder
        Dropout of the hidden layers.
    dispersion
        ``"gene"``, ``"gene-batch"`` (across data sets, see above) or ``"gene-cell"``.
    log_variational
        Encode log(1 + x).
    """

    def __init__(
        self,
        n_genes: int,
        gene_indices: Sequence[np.ndarray],
        n_batches: Sequence[int],
        gene_likelihoods: Sequence[str] = ("zinb", "nb"),
        learn_library: Sequence[bool] = (True, False),
        library_log_means: Sequence[np.ndarray | None] | None = None,
        library_log_vars: Sequence[np.ndarray | None] | None = None,
        n_latent: int = 10,
        n_hidden: int = 64,
        n_layers_encoder_individual: int = 1,
        n_layers_encoder_shared: int = 1,
        n_hidden_decoder: int = 64,
        n_layers_decoder_individual: int = 0,
        n_layers_decoder_shared: int = 0,
        dropout_rate_encoder: float = 0.2,
        dropout_rate_decoder: float = 0.2,
        dispersion: str = "gene-batch",
        log_variational: bool = True,
    ):
        super().__init__()
        n_sets = len(gene_indices)
        for name, value in (("n_batches", n_batches), ("gene_likelihoods", gene_likelihoods),
                            ("learn_library", learn_library)):
            if len(value) != n_sets:
                raise ValueError(f"{name} needs one entry per data set ({n_sets}), got {list(value)}")
        for likelihood in gene_likelihoods:
            check_choice("gene_likelihoods", likelihood, GENE_LIKELIHOODS)
        check_choice("dispersion", dispersion, JVAE_DISPERSIONS)
        if n_layers_encoder_individual < 1:
            raise ValueError(f"n_layers_encoder_individual must be at least 1, got {n_layers_encoder_individual}")
        self.n_sets, self.n_genes, self.n_latent = n_sets, int(n_genes), int(n_latent)
        self.gene_likelihoods = list(gene_likelihoods)
        self.learn_library = [bool(v) for v in learn_library]
        self.dispersion = dispersion
        self.log_variational = log_variational
        self.n_batches = [int(n) for n in n_batches]
        self.n_batch = sum(self.n_batches)
        self.batch_offsets = [int(v) for v in np.cumsum([0, *self.n_batches[:-1]])]
        self.n_inputs = [len(idx) for idx in gene_indices]
        for d, idx in enumerate(gene_indices):
            idx = np.asarray(idx, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n_genes or len(np.unique(idx)) != idx.size):
                raise ValueError(f"gene_indices of data set {d} must be distinct positions among {n_genes} genes")
            # Buffers: they move with the module (the likelihood gathers the data set's genes).
            self.register_buffer(f"gene_index_{d}", torch.as_tensor(idx), persistent=False)
            if self.learn_library[d]:
                if library_log_means is None or library_log_vars is None or library_log_means[d] is None:
                    raise ValueError(f"data set {d} learns its library size: give its library_log_means/vars")
                self.register_buffer(f"library_log_means_{d}",
                                     torch.as_tensor(library_log_means[d], dtype=torch.float32).reshape(-1))
                self.register_buffer(f"library_log_vars_{d}",
                                     torch.as_tensor(library_log_vars[d], dtype=torch.float32).reshape(-1))

        # Encoder: one input stack per data set, then shared layers.
        self.input_stacks = nn.ModuleList(
            FCLayers(n_in, n_hidden, (), n_layers_encoder_individual, n_hidden, dropout_rate_encoder,
                     sparse_input=True)
            for n_in in self.n_inputs
        )
        self.shared_stack = (FCLayers(n_hidden, n_hidden, (), n_layers_encoder_shared, n_hidden,
                                      dropout_rate_encoder) if n_layers_encoder_shared > 0 else None)
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_var = nn.Linear(n_hidden, n_latent)
        self.l_encoders = nn.ModuleList(
            GaussianEncoder(n_in, 1, (), 1, 128, dropout_rate_encoder, sparse_input=True) if learn else nn.Identity()
            for n_in, learn in zip(self.n_inputs, self.learn_library)
        )

        # Decoder: batch-conditioned layers, shared layers, then linear heads over all genes.
        n_in = n_latent
        self.decoder_conditioned = self.decoder_shared = None
        if n_layers_decoder_individual > 0:
            self.decoder_conditioned = FCLayers(n_in, n_hidden_decoder, [self.n_batch], n_layers_decoder_individual,
                                                n_hidden_decoder, dropout_rate_decoder)
            n_in = n_hidden_decoder
        if n_layers_decoder_shared > 0:
            self.decoder_shared = FCLayers(n_in, n_hidden_decoder, (), n_layers_decoder_shared, n_hidden_decoder,
                                           dropout_rate_decoder)
            n_in = n_hidden_decoder
        self.scale_head = nn.Linear(n_in, n_genes)
        self.zi_head = nn.Linear(n_in, n_genes) if "zinb" in self.gene_likelihoods else None
        self.theta_head = nn.Linear(n_in, n_genes) if dispersion == "gene-cell" else None
        if dispersion == "gene":
            self.px_r = nn.Parameter(torch.randn(n_genes))
        elif dispersion == "gene-batch":
            self.px_r = nn.Parameter(torch.randn(n_genes, self.n_batch))
        else:
            self.px_r = None

    def gene_index(self, d: int) -> torch.Tensor:
        return getattr(self, f"gene_index_{d}")

    @property
    def n_adversarial_classes(self) -> int:
        return self.n_sets  # the adversary tells the data sets apart (see adversarial_inputs)

    def adversarial_inputs(self, tensors, inference_out) -> tuple[torch.Tensor, torch.Tensor]:
        return inference_out["z"], inference_out["dataset"]

    # -- tensor dict -> arguments -----------------------------------------------------------
    def inference_inputs(self, tensors: dict, dataset: int = 0) -> dict:
        x, nz = tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY)
        return {"x": x, "dataset": dataset,
                "x_nz": (nz, tensors[C.X_NZ_VALUE_KEY]) if reads_sparse(nz, x.shape) else None}

    def generative_inputs(self, tensors: dict, inference_out: dict, dataset: int = 0, **overrides) -> dict:
        return {"z": inference_out["z"], "library": inference_out["library"], "batch": tensors[C.BATCH_KEY],
                "dataset": dataset, **overrides}

    # -- the model ---------------------------------------------------------------------------
    def inference(self, x, dataset: int, x_nz=None, n_samples: int = 1) -> dict:
        """q(z | x) through data set ``dataset``'s input stack, and its log library (observed,
        or a draw of q(l | x)). ``x_nz``: the counts' non-zeros, read instead of ``x``."""
        if x_nz is None:
            x_in = torch.log1p(x) if self.log_variational else x
        else:
            values = torch.log1p(x_nz[1]) if self.log_variational else x_nz[1]
            x_in = SparseRows(x_nz[0], values, *x.shape)
        h = self.input_stacks[dataset](x_in)
        if self.shared_stack is not None:
            h = self.shared_stack(h)
        qz_mean = self.z_mean(h)
        qz_var = torch.exp(self.z_var(h)) + 1e-4
        sample_shape = (n_samples,) if n_samples > 1 else ()
        out = {"qz_mean": qz_mean, "qz_var": qz_var, "z": _rsample(qz_mean, qz_var, sample_shape)}
        if self.learn_library[dataset]:
            ql_mean, ql_var = self.l_encoders[dataset](x_in)
            out.update(ql_mean=ql_mean, ql_var=ql_var, library=_rsample(ql_mean, ql_var, sample_shape))
        else:
            library = torch.log(x.sum(-1, keepdim=True))
            out["library"] = library.expand(*sample_shape, *library.shape)
        return out

    def _hidden(self, z: torch.Tensor, batch: torch.Tensor, dataset: int) -> torch.Tensor:
        h = z
        if self.decoder_conditioned is not None:
            h = self.decoder_conditioned(h, [batch + self.batch_offsets[dataset]])
        if self.decoder_shared is not None:
            h = self.decoder_shared(h)
        return h

    @staticmethod
    def _head(head: nn.Linear, h: torch.Tensor, genes: torch.Tensor | None) -> torch.Tensor:
        """``head(h)`` for the rows ``genes`` only (all when None): a data set's genes cost
        only their share of the product."""
        if genes is None:
            return head(h)
        return nn.functional.linear(h, head.weight[genes], head.bias[genes])

    def generative(self, z, library, batch, dataset: int, decode_dataset: int | None = None,
                   all_genes: bool = False, likelihood: bool = True) -> dict:
        """Expression of the cells of data set ``dataset``.

        ``"scale"``: expression relative to the genes of ``decode_dataset`` (default: the
        cells' own data set), over that data set's genes, or over all genes with
        ``all_genes`` (the imputation; the scale then sums to one over ``decode_dataset``'s
        genes). With ``likelihood``, also the count distribution ``"dist"`` (mean
        ``exp(library) * scale``) over the data set's own genes.
        """
        decode = dataset if decode_dataset is None else decode_dataset
        lead = z.shape[:-1]
        z2 = z.reshape(-1, z.shape[-1])
        n_rep = z2.shape[0] // batch.shape[0]
        batch2 = batch if n_rep == 1 else batch.repeat(n_rep)
        h = self._hidden(z2, batch2, dataset)
        genes = self.gene_index(decode)
        own_genes = genes.numel() == self.n_genes and decode == dataset
        if all_genes:
            logits = self.scale_head(h)
            # exp(logits - logsumexp over the decoding data set's genes): softmax over all
            # genes when they are all its genes, else their expression relative to its genes.
            norm = logits if genes.numel() == self.n_genes else logits.index_select(-1, genes)
            scale = torch.exp(logits - torch.logsumexp(norm, -1, keepdim=True))
        else:
            scale = torch.softmax(self._head(self.scale_head, h, None if own_genes else genes), -1)
        scale = scale.reshape(*lead, -1)
        out = {"scale": scale}
        if not likelihood:
            return out
        if all_genes or decode != dataset:
            raise ValueError("the likelihood is of a data set's own genes: use all_genes=False and no decode_dataset")
        genes_or_all = None if own_genes else genes
        mu = scale * torch.exp(library)
        if self.dispersion == "gene":
            theta = torch.exp(self.px_r if genes_or_all is None else self.px_r[genes_or_all])
        elif self.dispersion == "gene-batch":
            px_r = self.px_r if genes_or_all is None else self.px_r[genes_or_all]
            theta = torch.exp(px_r).T[batch + self.batch_offsets[dataset]]
        else:
            theta = torch.exp(self._head(self.theta_head, h, genes_or_all)).reshape(*lead, -1)
        kind = self.gene_likelihoods[dataset]
        if kind == "zinb":
            zi_logits = self._head(self.zi_head, h, genes_or_all).reshape(*lead, -1)
            out["dist"] = ZeroInflatedNegativeBinomial(mu, theta, zi_logits)
        elif kind == "nb":
            out["dist"] = NegativeBinomial(mu, theta)
        else:
            out["dist"] = Poisson(mu)
        return out

    def _kl(self, inference_out: dict, batch: torch.Tensor, dataset: int) -> torch.Tensor:
        """KL of the posterior of z (and of a learned library) from its prior, per cell."""
        qz_mean, qz_var = inference_out["qz_mean"], inference_out["qz_var"]
        kl = 0.5 * (qz_var + qz_mean.square() - 1 - torch.log(qz_var)).sum(-1)
        if self.learn_library[dataset]:
            means = getattr(self, f"library_log_means_{dataset}")[batch].unsqueeze(-1)
            variances = getattr(self, f"library_log_vars_{dataset}")[batch].unsqueeze(-1)
            posterior = _normal(inference_out["ql_mean"], inference_out["ql_var"])
            kl = kl + kl_divergence(posterior, _normal(means, variances)).sum(-1)
        return kl

    def loss_of(self, tensors: dict, inference_out: dict, generative_out: dict, dataset: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p(x | z, l), KL) per cell of data set ``dataset``."""
        reconstruction = -generative_out["dist"].log_prob_per_cell(
            tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY), tensors.get(C.X_NZ_VALUE_KEY))
        return reconstruction, self._kl(inference_out, tensors[C.BATCH_KEY], dataset)

    def forward(self, tensors, kl_weight: float = 1.0, n_samples: int = 1, **loss_kwargs):
        """One pass over a joint minibatch: ``tensors`` has one tensor dict per data set (None
        for a data set without cells in it). The loss is the mean over all the step's cells
        of reconstruction + ``kl_weight`` x KL; the per-cell parts are concatenated in data
        set order. The inference output's ``"z"`` and ``"dataset"`` (codes) cover every cell."""
        if isinstance(tensors, dict):
            raise TypeError("JVAE reads a list with one tensor dict per data set (None where absent)")
        zs, codes, recs, kls, generative = [], [], [], [], []
        for d, t in enumerate(tensors):
            if t is None:
                generative.append(None)
                continue
            inf = self.inference(**self.inference_inputs(t, d))
            gen = self.generative(**self.generative_inputs(t, inf, d))
            rec, kl = loss_in_float32(minibatch_device_type(t), self.loss_of, t, inf, gen, d)
            zs.append(inf["z"])
            codes.append(torch.full((rec.shape[0],), d, dtype=torch.long, device=rec.device))
            recs.append(rec)
            kls.append(kl)
            generative.append(gen)
        if not recs:
            raise ValueError("the joint minibatch holds no cells")
        rec, kl = torch.cat(recs), torch.cat(kls)
        loss = torch.mean(rec + kl_weight * kl)
        return {"z": torch.cat(zs), "dataset": torch.cat(codes)}, generative, LossOutput(loss, rec, kl)
