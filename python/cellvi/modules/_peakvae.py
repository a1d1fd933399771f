"""PeakVI's variational autoencoder (Ashuach et al. 2022) for chromatin accessibility.

Generative model for cell n and region r, with x_nr > 0 read as "open":
    z_n ~ N(0, I)
    y_nr = g(z_n, s_n)_r                      accessibility probability (sigmoid decoder);
                                              s_n the batch and covariates
    open_nr ~ Bernoulli(y_nr * l_n * f_r)     l_n in (0, 1): the cell's library factor, read
                                              from x_n by its own network (a point estimate,
                                              not a latent variable); f_r = sigmoid(w_r): the
                                              region's factor
Inference: q(z_n | x_n) = N(mu(x_n), sigma^2(x_n)); the encoders read the data as given
(counts are not binarised on the way in).

The training objective weighs the KL term by 1/(cells in the minibatch) (``kl_scale=None``),
as scvi-tools' PeakVI effectively does: its loss, n * sum(reconstruction) + sum(KL) over a
minibatch of n cells, is n^2 times mean(reconstruction) + mean(KL) / n, and Adam(W) steps do
not depend on that overall scale. With the plain ELBO's weight (``kl_scale=1``) the posterior
collapses on scATAC data: on 1,500 bone-marrow cells x 2,500 peaks, 200 epochs, the KL fell
to 0.00 and lineages were found no better than chance in the latent space (15-NN accuracy
0.49-0.53, chance ~0.39), against 0.86-0.89 here and 0.85 for scvi-tools. The history's ELBO
is the plain, unweighted one either way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .. import _constants as C
from ..distributions import Bernoulli, scaled_bernoulli_log_likelihood_per_cell
from ..nn import GaussianEncoder, SigmoidDecoder, SparseRows, reads_sparse
from ._base import BaseModule, LossOutput, fold_samples
from ._vae import LATENT_DISTRIBUTIONS, NORM_CHOICES, _log_standard_normal, _normal, _rsample, check_choice


def default_sizes(n_regions: int, n_hidden: int | None, n_latent: int | None) -> tuple[int, int]:
    """PeakVI's square-root rule: hidden units sqrt(regions), latent dimensions sqrt(hidden)."""
    n_hidden = max(1, int(np.sqrt(n_regions))) if n_hidden is None else int(n_hidden)
    n_latent = max(1, int(np.sqrt(n_hidden))) if n_latent is None else int(n_latent)
    return n_hidden, n_latent


class PEAKVAE(BaseModule):
    """PeakVI's network (pure torch; knows nothing of AnnData).

    Encoder (z) and library-factor network read the regions (and, with
    ``encode_covariates``, the covariates); the decoder reads z and continuous covariates, with
    the batch and categorical covariates injected into its first layer (every layer with
    ``deeply_inject_covariates``). Hidden layers: LayerNorm (``use_layer_norm``), no BatchNorm
    (``use_batch_norm``), LeakyReLU; dropout in the z encoder only. The library-factor network
    always has LayerNorm and no BatchNorm, as PeakVI's.

    ``kl_scale``: the weight of the KL term in the training loss relative to the
    reconstruction, per cell; None: 1 / (cells in the minibatch), scvi-tools' effective
    weight (see the module's notes); 1: the plain ELBO.
    """

    def __init__(
        self,
        n_input_regions: int,
        n_batch: int = 1,
        n_hidden: int | None = None,
        n_latent: int | None = None,
        n_layers_encoder: int = 2,
        n_layers_decoder: int = 2,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] = (),
        dropout_rate: float = 0.1,
        model_depth: bool = True,
        region_factors: bool = True,
        use_batch_norm: str = "none",
        use_layer_norm: str = "both",
        latent_distribution: str = "normal",
        deeply_inject_covariates: bool = False,
        encode_covariates: bool = False,
        kl_scale: float | None = None,
    ):
        super().__init__()
        if kl_scale is not None and not (isinstance(kl_scale, (int, float)) and kl_scale > 0):
            raise ValueError(f"kl_scale must be a positive number or None, got {kl_scale!r}")
        self.kl_scale = kl_scale
        check_choice("use_batch_norm", use_batch_norm, NORM_CHOICES)
        check_choice("use_layer_norm", use_layer_norm, NORM_CHOICES)
        check_choice("latent_distribution", latent_distribution, LATENT_DISTRIBUTIONS)
        n_hidden, n_latent = default_sizes(n_input_regions, n_hidden, n_latent)
        self.n_input_regions, self.n_batch, self.n_hidden, self.n_latent = n_input_regions, n_batch, n_hidden, n_latent
        self.n_continuous_cov = n_continuous_cov
        self.model_depth = model_depth
        self.encode_covariates = encode_covariates

        cat_sizes = [n_batch, *n_cats_per_cov]
        n_enc_in = n_input_regions + (n_continuous_cov if encode_covariates else 0)
        enc_cats = cat_sizes if encode_covariates else ()
        self.z_encoder = GaussianEncoder(
            n_enc_in, n_latent, enc_cats, n_layers_encoder, n_hidden, dropout_rate, latent_distribution,
            var_eps=0.0, use_batch_norm=use_batch_norm in ("encoder", "both"),
            use_layer_norm=use_layer_norm in ("encoder", "both"), activation_fn=nn.LeakyReLU, sparse_input=True,
        )
        self.z_decoder = SigmoidDecoder(
            n_latent + n_continuous_cov, n_input_regions, cat_sizes, n_layers_decoder, n_hidden,
            use_batch_norm=use_batch_norm in ("decoder", "both"),
            use_layer_norm=use_layer_norm in ("decoder", "both"), inject_covariates=deeply_inject_covariates,
        )
        self.d_encoder = (SigmoidDecoder(n_enc_in, 1, enc_cats, n_layers_encoder, n_hidden, sparse_input=True)
                          if model_depth else None)
        # Zeros: every region starts at factor sigmoid(0) = 1/2.
        self.region_factors = nn.Parameter(torch.zeros(n_input_regions)) if region_factors else None

    @property
    def latent_distribution(self) -> str:
        return self.z_encoder.latent_distribution

    def z_transform(self, untran_z: torch.Tensor) -> torch.Tensor:
        return self.z_encoder.z_transform(untran_z)

    def region_factor_probs(self) -> torch.Tensor | None:
        """f_r = sigmoid(w_r) per region (None without region factors)."""
        return torch.sigmoid(self.region_factors) if self.region_factors is not None else None

    # -- tensor dict -> arguments -----------------------------------------------------------
    def inference_inputs(self, tensors: dict) -> dict:
        cats, cont = self.covariates(tensors)
        x = tensors[C.X_KEY]
        nz_index = tensors.get(C.X_NZ_INDEX_KEY)
        # The encoders read the non-zeros alone when the minibatch comes with them (2-5% of a
        # scATAC matrix), unless continuous covariates join the regions as encoder input.
        sparse = (SparseRows(nz_index, tensors[C.X_NZ_VALUE_KEY], *x.shape)
                  if reads_sparse(nz_index, x.shape) and not (self.encode_covariates and cont is not None)
                  else None)
        return {"x": x, "batch": tensors[C.BATCH_KEY], "cat_covs": cats, "cont_covs": cont, "x_sparse": sparse}

    def generative_inputs(self, tensors: dict, inference_out: dict, transform_batch=None,
                          use_z_mean: bool = False) -> dict:
        cats, cont = self.covariates(tensors)
        batch = tensors[C.BATCH_KEY]
        if transform_batch is not None:
            batch = torch.full_like(batch, int(transform_batch))
        z = self.z_transform(inference_out["qz_mean"]) if use_z_mean else inference_out["z"]
        return {"z": z, "batch": batch, "cat_covs": cats, "cont_covs": cont}

    # -- the model ---------------------------------------------------------------------------
    def inference(self, x, batch, cat_covs=(), cont_covs=None, n_samples: int = 1, x_sparse=None) -> dict:
        """q(z | x) and the library factor; ``x_sparse``: the same cells as ``SparseRows``, read
        by the encoders instead of ``x`` (the same numbers, faster)."""
        x_in, cats = (x if x_sparse is None else x_sparse), ()
        if self.encode_covariates:
            cats = [batch, *cat_covs]
            if cont_covs is not None:
                x_in = torch.cat([x, cont_covs], dim=-1)
        qz_mean, qz_var = self.z_encoder(x_in, cats)
        sample_shape = (n_samples,) if n_samples > 1 else ()
        untran_z = _rsample(qz_mean, qz_var, sample_shape)
        d = self.d_encoder(x_in, cats) if self.d_encoder is not None else x.new_ones(x.shape[0], 1)
        return {"qz_mean": qz_mean, "qz_var": qz_var, "untran_z": untran_z, "z": self.z_transform(untran_z), "d": d}

    def resample_inference(self, inference_out: dict, rows: torch.Tensor, n_samples: int = 1) -> dict:
        """The posterior of cells ``rows`` (positions in ``inference_out``) with fresh samples
        of z; the library factor is a point estimate and is only selected."""
        qz_mean, qz_var = inference_out["qz_mean"][rows], inference_out["qz_var"][rows]
        sample_shape = (n_samples,) if n_samples > 1 else ()
        untran_z = _rsample(qz_mean, qz_var, sample_shape)
        return {"qz_mean": qz_mean, "qz_var": qz_var, "untran_z": untran_z, "z": self.z_transform(untran_z),
                "d": inference_out["d"][rows]}

    def generative(self, z, batch, cat_covs=(), cont_covs=None, regions_major: bool = False,
                   regions: torch.Tensor | None = None) -> dict:
        """``"probs"``: accessibility probabilities y ([samples x] cells x regions), without the
        library and region factors; with ``regions_major``, ``"probs_by_region"`` laid out
        regions x cells instead (one sample per cell), of the ``regions`` only when given."""
        dec_in, cats, lead = fold_samples(z, batch, cat_covs, cont_covs)
        if regions_major:
            return {"probs_by_region": self.z_decoder.by_output(dec_in, cats, regions)}
        return {"probs": self.z_decoder(dec_in, cats).reshape(*lead, -1)}

    def observation_probs(self, probs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """P(open) = y * l * f, the likelihood's parameter."""
        f = self.region_factor_probs()
        out = probs * d
        return out if f is None else out * f

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0) -> LossOutput:
        probs, d, f = generative_out["probs"], inference_out["d"], self.region_factor_probs()
        nz_index = tensors.get(C.X_NZ_INDEX_KEY)
        if nz_index is not None and probs.dim() == 2 and f is not None:
            # P = y d f and the Bernoulli in one function (the training hot path)
            reconstruction = -scaled_bernoulli_log_likelihood_per_cell(probs, d, f, nz_index,
                                                                       tensors[C.X_NZ_VALUE_KEY])
        else:
            reconstruction = -Bernoulli(self.observation_probs(probs, d)).log_prob_per_cell(
                tensors[C.X_KEY], nz_index, tensors.get(C.X_NZ_VALUE_KEY))
        qz_mean, qz_var = inference_out["qz_mean"], inference_out["qz_var"]
        kl_z = 0.5 * (qz_var + qz_mean.square() - 1 - torch.log(qz_var)).sum(-1)  # KL(q(z|x) || N(0, I))
        scale = 1.0 / reconstruction.shape[0] if self.kl_scale is None else float(self.kl_scale)
        loss = torch.mean(reconstruction + (kl_weight * scale) * kl_z)
        return LossOutput(loss, reconstruction, kl_z)

    @torch.no_grad()
    def marginal_ll(self, tensors: dict, n_mc_samples: int = 1000, chunk: int = 100) -> torch.Tensor:
        """Importance-sampled log p(x) per cell with q(z|x) as the proposal (the library factor
        is the encoder's point estimate)."""
        inf = self.inference(**self.inference_inputs(tensors))
        qz = _normal(inf["qz_mean"], inf["qz_var"])
        x = tensors[C.X_KEY]
        # Samples x cells x regions are dense: keep a chunk near 16 million values.
        chunk = max(1, min(chunk, 2**24 // max(1, x.numel())))
        gen_in = self.generative_inputs(tensors, inf)
        log_w = []
        for start in range(0, n_mc_samples, chunk):
            k = min(chunk, n_mc_samples - start)
            untran_z = qz.sample((k,))
            z = self.z_transform(untran_z)
            lw = _log_standard_normal(untran_z) - qz.log_prob(untran_z).sum(-1)
            probs = self.generative(**{**gen_in, "z": z})["probs"]
            lw = lw + Bernoulli(self.observation_probs(probs, inf["d"])).log_prob(x.expand(k, *x.shape)).sum(-1)
            log_w.append(lw)
        log_w = torch.cat(log_w, dim=0)
        return torch.logsumexp(log_w, dim=0) - np.log(n_mc_samples)
