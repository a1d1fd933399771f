"""The variational autoencoder of scVI (and, with a linear decoder, of LDVAE).

Generative model for cell n, gene g:
    z_n ~ N(0, I);  l_n = log library (observed, or ~ N(mu_batch, var_batch) when learned)
    rho_n = softmax(f(z_n, s_n))          normalised expression, s_n the batch and covariates
    x_ng ~ ZINB / NB / Poisson(mean exp(l_n) * rho_ng, inverse dispersion theta_g, ...)
Inference: q(z_n | x_n) = N(mu(x_n), sigma^2(x_n)), and q(l_n | x_n) when l is learned.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from .. import _constants as C
from ..distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from ..nn import ExpressionDecoder, GaussianEncoder, SparseRows, reads_sparse
from ._base import BaseModule, LossOutput, fold_samples

GENE_LIKELIHOODS = ("zinb", "nb", "poisson")
DISPERSIONS = ("gene", "gene-batch", "gene-label", "gene-cell")
NORM_CHOICES = ("none", "encoder", "decoder", "both")
LATENT_DISTRIBUTIONS = ("normal", "ln")


def _normal(mean, var) -> Normal:
    return Normal(mean, var.sqrt(), validate_args=False)  # NaN must reach the trainer's check


def _log_standard_normal(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I), summed over the last dimension."""
    return _normal(torch.zeros_like(x), torch.ones_like(x)).log_prob(x).sum(-1)


def _rsample(mean, var, sample_shape=()) -> torch.Tensor:
    eps = torch.randn(*sample_shape, *mean.shape, device=mean.device, dtype=mean.dtype)
    return mean + var.sqrt() * eps


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


class VAE(BaseModule):
    """scVI's variational autoencoder (pure torch; knows nothing of AnnData)."""

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_labels: int = 1,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] = (),
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        log_variational: bool = True,
        gene_likelihood: str = "zinb",
        latent_distribution: str = "normal",
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
        use_observed_lib_size: bool = True,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        linear_decoder: bool = False,
        decoder_bias: bool = True,
    ):
        super().__init__()
        check_choice("gene_likelihood", gene_likelihood, GENE_LIKELIHOODS)
        check_choice("dispersion", dispersion, DISPERSIONS)
        check_choice("use_batch_norm", use_batch_norm, NORM_CHOICES)
        check_choice("use_layer_norm", use_layer_norm, NORM_CHOICES)
        check_choice("latent_distribution", latent_distribution, LATENT_DISTRIBUTIONS)
        self.n_input, self.n_batch, self.n_labels, self.n_latent = n_input, n_batch, n_labels, n_latent
        self.dispersion = dispersion
        self.gene_likelihood = gene_likelihood
        self.log_variational = log_variational
        self.encode_covariates = encode_covariates
        self.use_observed_lib_size = use_observed_lib_size
        self.n_continuous_cov = n_continuous_cov

        if dispersion == "gene":
            self.px_r = nn.Parameter(torch.randn(n_input))
        elif dispersion == "gene-batch":
            self.px_r = nn.Parameter(torch.randn(n_input, n_batch))
        elif dispersion == "gene-label":
            self.px_r = nn.Parameter(torch.randn(n_input, n_labels))
        else:
            self.px_r = None

        if not use_observed_lib_size:
            if library_log_means is None or library_log_vars is None:
                raise ValueError("a learned library size needs library_log_means and library_log_vars")
            self.register_buffer("library_log_means", torch.as_tensor(library_log_means, dtype=torch.float32).reshape(1, -1))
            self.register_buffer("library_log_vars", torch.as_tensor(library_log_vars, dtype=torch.float32).reshape(1, -1))

        cat_sizes = [n_batch, *n_cats_per_cov]
        enc_bn = use_batch_norm in ("encoder", "both")
        enc_ln = use_layer_norm in ("encoder", "both")
        dec_bn = use_batch_norm in ("decoder", "both")
        dec_ln = use_layer_norm in ("decoder", "both")
        n_enc_in = n_input + (n_continuous_cov if encode_covariates else 0)
        enc_cats = cat_sizes if encode_covariates else ()
        self.z_encoder = GaussianEncoder(
            n_enc_in, n_latent, enc_cats, n_layers, n_hidden, dropout_rate, latent_distribution,
            use_batch_norm=enc_bn, use_layer_norm=enc_ln, inject_covariates=deeply_inject_covariates,
            sparse_input=True,
        )
        if not use_observed_lib_size:
            self.l_encoder = GaussianEncoder(
                n_enc_in, 1, enc_cats, 1, n_hidden, dropout_rate,
                use_batch_norm=enc_bn, use_layer_norm=enc_ln, inject_covariates=deeply_inject_covariates,
                sparse_input=True,
            )
        self.decoder = ExpressionDecoder(
            n_latent + n_continuous_cov, n_input, cat_sizes, n_layers, n_hidden,
            inject_covariates=deeply_inject_covariates, use_batch_norm=dec_bn, use_layer_norm=dec_ln,
            linear=linear_decoder, bias=decoder_bias, dispersion_per_cell=dispersion == "gene-cell",
            zero_inflation=gene_likelihood == "zinb",
        )

    @property
    def latent_distribution(self) -> str:
        return self.z_encoder.latent_distribution

    def z_transform(self, untran_z: torch.Tensor) -> torch.Tensor:
        """z from a draw of the Gaussian posterior (the identity, or softmax for "ln")."""
        return self.z_encoder.z_transform(untran_z)

    # -- tensor dict -> arguments -----------------------------------------------------------
    def inference_inputs(self, tensors: dict) -> dict:
        cats, cont = self.covariates(tensors)
        x, nz = tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY)
        return {"x": x, "batch": tensors[C.BATCH_KEY], "cat_covs": cats, "cont_covs": cont,
                "x_nz": (nz, tensors[C.X_NZ_VALUE_KEY]) if reads_sparse(nz, x.shape) else None}

    def generative_inputs(self, tensors: dict, inference_out: dict, transform_batch=None) -> dict:
        cats, cont = self.covariates(tensors)
        batch = tensors[C.BATCH_KEY]
        if transform_batch is not None:
            batch = torch.full_like(batch, int(transform_batch))
        size_factor = tensors.get(C.SIZE_FACTOR_KEY)
        library = inference_out["library"]
        if size_factor is not None:
            library = torch.log(size_factor).unsqueeze(-1).expand_as(library)
        return {
            "z": inference_out["z"], "library": library, "batch": batch,
            "cat_covs": cats, "cont_covs": cont, "labels": tensors[C.LABELS_KEY],
        }

    # -- the model ---------------------------------------------------------------------------
    def inference(self, x, batch, cat_covs=(), cont_covs=None, n_samples: int = 1, x_nz=None) -> dict:
        """q(z | x) and the log library (observed, or a draw of q(l | x)). ``x_nz``: the
        counts' non-zeros (flat indices, values), read by the encoders instead of ``x`` (the
        same numbers, computed at the non-zeros only)."""
        cats = [batch, *cat_covs] if self.encode_covariates else ()
        tail = cont_covs if self.encode_covariates else None
        if x_nz is None:
            x_in = torch.log1p(x) if self.log_variational else x
            if tail is not None:
                x_in = torch.cat([x_in, tail], dim=-1)
        else:
            values = torch.log1p(x_nz[1]) if self.log_variational else x_nz[1]
            x_in = SparseRows(x_nz[0], values, *x.shape, tail=tail)
        qz_mean, qz_var = self.z_encoder(x_in, cats)
        sample_shape = (n_samples,) if n_samples > 1 else ()
        untran_z = _rsample(qz_mean, qz_var, sample_shape)
        out = {"qz_mean": qz_mean, "qz_var": qz_var, "untran_z": untran_z,
               "z": self.z_encoder.z_transform(untran_z)}
        if self.use_observed_lib_size:
            library = torch.log(x.sum(-1, keepdim=True))
            out["library"] = library.expand(*sample_shape, *library.shape)
        else:
            ql_mean, ql_var = self.l_encoder(x_in, cats)
            out.update(ql_mean=ql_mean, ql_var=ql_var,
                       library=_rsample(ql_mean, ql_var, sample_shape))
        return out

    def resample_inference(self, inference_out: dict, rows: torch.Tensor, n_samples: int = 1) -> dict:
        """The posterior of cells ``rows`` (positions in ``inference_out``, which holds one
        sample per cell) with fresh samples: a cell listed several times gets independent
        draws without being encoded again."""
        qz_mean, qz_var = inference_out["qz_mean"][rows], inference_out["qz_var"][rows]
        sample_shape = (n_samples,) if n_samples > 1 else ()
        untran_z = _rsample(qz_mean, qz_var, sample_shape)
        out = {"qz_mean": qz_mean, "qz_var": qz_var, "untran_z": untran_z,
               "z": self.z_encoder.z_transform(untran_z)}
        if self.use_observed_lib_size:
            library = inference_out["library"][rows]
            out["library"] = library.expand(*sample_shape, *library.shape)
        else:
            ql_mean, ql_var = inference_out["ql_mean"][rows], inference_out["ql_var"][rows]
            out.update(ql_mean=ql_mean, ql_var=ql_var, library=_rsample(ql_mean, ql_var, sample_shape))
        return out

    def generative(self, z, library, batch, cat_covs=(), cont_covs=None, labels=None,
                   likelihood: bool = True, genes_major: bool = False) -> dict:
        """Likelihood parameters; ``likelihood=False`` returns only ``"scale"`` (cheaper: the
        dispersion and zero-inflation heads are skipped); ``genes_major=True`` returns only
        ``"scale_by_gene"``, the scale laid out genes x (samples x) cells."""
        dec_in, cats, lead = fold_samples(z, batch, cat_covs, cont_covs)
        if genes_major:
            scale = self.decoder.scale_by_gene(dec_in, cats)
            return {"scale_by_gene": scale.reshape(-1, *lead)}
        scale, log_theta, zi_logits = self.decoder(dec_in, cats, with_zi=likelihood and self.gene_likelihood == "zinb",
                                                   with_theta=likelihood)
        scale = scale.reshape(*lead, -1)
        if not likelihood:
            return {"scale": scale}
        mu = scale * torch.exp(library)
        if self.dispersion == "gene":
            theta = torch.exp(self.px_r)
        elif self.dispersion == "gene-batch":
            theta = torch.exp(self.px_r).T[batch]
        elif self.dispersion == "gene-label":
            theta = torch.exp(self.px_r).T[labels]
        else:
            theta = torch.exp(log_theta).reshape(*lead, -1)
        if self.gene_likelihood == "zinb":
            dist = ZeroInflatedNegativeBinomial(mu, theta, zi_logits.reshape(*lead, -1))
        elif self.gene_likelihood == "nb":
            dist = NegativeBinomial(mu, theta)
        else:
            dist = Poisson(mu)
        return {"scale": scale, "dist": dist, "theta": theta}

    def _library_prior(self, batch: torch.Tensor) -> Normal:
        return _normal(self.library_log_means[0, batch].unsqueeze(-1),
                       self.library_log_vars[0, batch].unsqueeze(-1))

    def _kl_library(self, inference_out: dict, batch: torch.Tensor) -> torch.Tensor:
        if self.use_observed_lib_size:
            return torch.zeros((), device=batch.device)
        prior = self._library_prior(batch)
        posterior = _normal(inference_out["ql_mean"], inference_out["ql_var"])
        return kl_divergence(posterior, prior).sum(-1)

    @staticmethod
    def _reconstruction(tensors: dict, generative_out: dict) -> torch.Tensor:
        """-log p(x | z, l) per cell."""
        return -generative_out["dist"].log_prob_per_cell(
            tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY), tensors.get(C.X_NZ_VALUE_KEY)
        )

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0) -> LossOutput:
        reconstruction = self._reconstruction(tensors, generative_out)
        qz_mean, qz_var = inference_out["qz_mean"], inference_out["qz_var"]
        # Closed-form KL(N(m, v) || N(0, 1)).
        kl_z = 0.5 * (qz_var + qz_mean.square() - 1 - torch.log(qz_var)).sum(-1)
        kl_l = self._kl_library(inference_out, tensors[C.BATCH_KEY])
        loss = torch.mean(reconstruction + kl_weight * kl_z + kl_l)
        return LossOutput(loss, reconstruction, kl_z + kl_l)

    def log_prior_z(self, untran_z: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over latent dimensions: the standard normal prior."""
        return _log_standard_normal(untran_z)

    @torch.no_grad()
    def marginal_ll(self, tensors: dict, n_mc_samples: int = 1000, chunk: int = 100) -> torch.Tensor:
        """Importance-sampled log p(x) per cell, with q(z|x) (and q(l|x)) as the proposal."""
        inf = self.inference(**self.inference_inputs(tensors))
        qz = _normal(inf["qz_mean"], inf["qz_var"])
        x = tensors[C.X_KEY]
        log_w = []
        for start in range(0, n_mc_samples, chunk):
            k = min(chunk, n_mc_samples - start)
            z = qz.sample((k,))
            sample = {"z": self.z_encoder.z_transform(z)}
            lw = self.log_prior_z(z, sample["z"]) - qz.log_prob(z).sum(-1)
            if self.use_observed_lib_size:
                sample["library"] = inf["library"].expand(k, *inf["library"].shape)
            else:
                ql = _normal(inf["ql_mean"], inf["ql_var"])
                prior_l = self._library_prior(tensors[C.BATCH_KEY])
                lib = ql.sample((k,))
                sample["library"] = lib
                lw = lw + (prior_l.log_prob(lib) - ql.log_prob(lib)).sum(-1)
            gen = self.generative(**self.generative_inputs(tensors, sample))
            dist = gen["dist"]
            lw = lw + dist.log_prob(x.expand(k, *x.shape)).sum(-1)
            log_w.append(lw)
        log_w = torch.cat(log_w, dim=0)
        return torch.logsumexp(log_w, dim=0) - np.log(n_mc_samples)
