"""Stereoscope (Andersson et al. 2020): cell-type proportions of spots from per-type
negative-binomial parameters learned on a single-cell reference.

Reference (cell n of type y_n, library l_n = total count):
    x_ng ~ NB(total_count = l_n w_{g y_n}, logits = o_g)        w = softplus(W) >= 0
(mean l_n w_gc exp(o_g)). A sum of NB variables that share their logits is NB with the
summed total counts, so a spot made of cells is again NB:
Spatial (spot s):
    x_sg ~ NB(total_count = sum_c v_sc beta_g w_gc + v_s0 eps_g, logits = o_g)
with w and o fixed from the reference, v_s >= 0 the loadings of the K types and of a noise
"type" of profile eps = softplus(eta), beta = softplus(.) a per-gene platform factor, and
eta ~ N(0, 1). Proportions are v_sc / sum_c' v_sc'.

The loadings are parameterised relative to the spot's depth: v_sc = (l_s / u) softplus(V_sc)
with l_s the spot's total count and u = sum_g sum_c w_gc e^o_g the expected total count of
one unit of every type. Equal V of 1 then fit the spot's depth, and Adam's steps on V are
relative to it (loadings of hundreds, in absolute terms, move by its learning rate per step:
a few percent over a whole run).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import _constants as C
from ..distributions import NegativeBinomial
from ._base import BaseModule, LossOutput
from ._destvae import inverse_softplus
from ._vae import check_choice

PRIOR_WEIGHTS = ("n_obs", "minibatch")


def _nb_total_count(rate: torch.Tensor, logits: torch.Tensor) -> NegativeBinomial:
    """NB(total_count, logits) in the (mean, inverse dispersion) form of cellvi's NB."""
    rate = rate + 1e-8  # a zero total count is a point mass at 0: keep it a valid NB
    return NegativeBinomial(rate * torch.exp(logits), rate)


class RNAStereoscopeModule(BaseModule):
    """Stereoscope's single-cell model: per-type, per-gene NB parameters (no encoder).

    Parameters
    ----------
    n_genes, n_labels
        Genes and cell types.
    w_init
        Initial w (genes x types; e.g. each type's mean of counts / library), so that
        training starts at the per-type means rather than at random.
    """

    def __init__(self, n_genes: int, n_labels: int, w_init: np.ndarray | None = None):
        super().__init__()
        self.n_genes, self.n_labels = n_genes, n_labels
        w0 = torch.full((n_genes, n_labels), 1.0 / n_genes) if w_init is None else torch.as_tensor(w_init)
        self.W = nn.Parameter(inverse_softplus(w0.clamp_min(1e-8)).float())
        self.px_o = nn.Parameter(torch.zeros(n_genes))

    @property
    def w(self) -> torch.Tensor:
        return F.softplus(self.W)

    def inference_inputs(self, tensors: dict) -> dict:
        return {}

    def inference(self, n_samples: int = 1) -> dict:
        return {}

    def generative_inputs(self, tensors: dict, inference_out: dict, **overrides) -> dict:
        return {"x": tensors[C.X_KEY], "y": tensors[C.LABELS_KEY]}

    def generative(self, x, y) -> dict:
        library = x.sum(-1, keepdim=True)
        # Rows of w.T, gathered straight into a contiguous cells x genes tensor, the layout
        # the fused NB likelihood works in (a column-major rate would cost it a copy).
        rate = library * torch.index_select(self.w.t(), 0, y.long().reshape(-1))
        return {"dist": _nb_total_count(rate, self.px_o)}

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0) -> LossOutput:
        rec = -generative_out["dist"].log_prob_per_cell(
            tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY), tensors.get(C.X_NZ_VALUE_KEY))
        return LossOutput(rec.mean(), rec, torch.zeros_like(rec))


class SpatialStereoscopeModule(BaseModule):
    """Stereoscope's spatial model: per-spot loadings on the reference's fixed NB parameters.

    Parameters
    ----------
    n_spots
        Spots (each has its own loadings).
    w, px_o
        The reference's w = softplus(W) (genes x types) and logits (genes), restricted to
        the genes shared with the spatial data.
    prior_weight
        ``"n_obs"``: the prior of eta counts once per data set; ``"minibatch"``: once per
        minibatch (scvi-tools' two choices).
    v_init
        Initial relative loadings softplus(V) (spots x types + 1, >= 0); default: all 1.
    """

    def __init__(self, n_spots: int, w: np.ndarray, px_o: np.ndarray, prior_weight: str = "n_obs",
                 v_init: np.ndarray | None = None):
        super().__init__()
        check_choice("prior_weight", prior_weight, PRIOR_WEIGHTS)
        w = torch.as_tensor(np.asarray(w), dtype=torch.float32)
        self.n_spots = n_spots
        self.n_genes, self.n_labels = w.shape
        self.prior_weight = prior_weight
        self.register_buffer("w", w)
        self.register_buffer("px_o", torch.as_tensor(np.asarray(px_o), dtype=torch.float32))
        v0 = torch.full((n_spots, self.n_labels + 1), 1.0) if v_init is None else torch.as_tensor(v_init)
        self.V = nn.Parameter(inverse_softplus(v0.clamp_min(1e-6)).float())
        self.beta = nn.Parameter(torch.full((self.n_genes,), float(inverse_softplus(1.0))))
        self.eta = nn.Parameter(torch.zeros(self.n_genes))

    @property
    def loadings(self) -> torch.Tensor:
        return F.softplus(self.V)

    def type_rates(self) -> torch.Tensor:
        """NB total count per unit loading of each type (genes x K + 1, the noise last)."""
        beta = F.softplus(self.beta)
        return torch.cat([beta.unsqueeze(1) * self.w, F.softplus(self.eta).unsqueeze(1)], dim=1)

    def inference_inputs(self, tensors: dict) -> dict:
        return {}

    def inference(self, n_samples: int = 1) -> dict:
        return {}

    def generative_inputs(self, tensors: dict, inference_out: dict, **overrides) -> dict:
        return {"x": tensors[C.X_KEY], "cell_index": tensors[C.CELL_INDEX_KEY]}

    def unit_total(self) -> torch.Tensor:
        """Expected total count of one unit loading of every type (u, a constant)."""
        return (self.w.sum(1) * torch.exp(self.px_o)).sum()

    def generative(self, x, cell_index) -> dict:
        v = F.softplus(torch.index_select(self.V, 0, cell_index.long()))
        depth = x.sum(-1, keepdim=True) / self.unit_total()
        rate = depth * (v @ self.type_rates().T)
        return {"v": v, "dist": _nb_total_count(rate, self.px_o)}

    def loss(self, tensors, inference_out, generative_out, kl_weight: float = 1.0, n_obs: int = 1) -> LossOutput:
        rec = -generative_out["dist"].log_prob_per_cell(
            tensors[C.X_KEY], tensors.get(C.X_NZ_INDEX_KEY), tensors.get(C.X_NZ_VALUE_KEY))
        neg_prior = 0.5 * self.eta.square().sum()
        per = n_obs if self.prior_weight == "n_obs" else rec.shape[0]
        return LossOutput(rec.mean() + neg_prior / per, rec, torch.zeros_like(rec), kl_global=neg_prior.detach())
