"""What every Module shares: the loss record and the tensor-dict entry point."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .. import _constants as C


@dataclasses.dataclass
class LossOutput:
    """The objective of one minibatch and its parts.

    ``loss`` is the scalar the trainer minimises (KL terms weighted by the warm-up);
    ``reconstruction_loss`` and ``kl_local`` are per cell and unweighted, so that
    ``-(reconstruction_loss + kl_local)`` is each cell's evidence lower bound (ELBO).
    ``extra_metrics`` holds further scalars to record per epoch (e.g. a classification loss).
    ``kl_global`` is a dataset-level KL term (e.g. of per-gene parameters), counted once per
    data set in the ELBO; a module that has one adds its share to ``loss`` itself.
    """

    loss: torch.Tensor
    reconstruction_loss: torch.Tensor
    kl_local: torch.Tensor
    extra_metrics: dict = dataclasses.field(default_factory=dict)
    kl_global: torch.Tensor | float = 0.0

    @property
    def elbo(self) -> torch.Tensor:
        """Per-cell evidence lower bound."""
        return -(self.reconstruction_loss + self.kl_local)


def _as_float32(value):
    """``value`` with every lower-precision float tensor in it cast to float32: tensors, and
    those inside dicts, lists, tuples and plain objects (distributions), which are copied, not
    changed."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_as_float32(v) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type)):
        cast = {k: _as_float32(v) for k, v in vars(value).items()}
        if any(cast[k] is not v for k, v in vars(value).items()):
            copy = object.__new__(type(value))
            copy.__dict__.update(cast)
            return copy
    return value


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def loss_in_float32(device_type: str, loss, *args, **kwargs):
    """``loss(*args, **kwargs)`` in float32 with autocast off, its inputs cast up first.

    Under mixed precision (``TrainingPlan.precision``) the networks run in bfloat16; the
    likelihood, the KL and their sums over genes and cells must not (bfloat16 keeps ~3
    significant digits)."""
    if not _autocast_enabled(device_type):
        return loss(*args, **kwargs)
    with torch.autocast(device_type, enabled=False):
        return loss(*_as_float32(args), **_as_float32(kwargs))


def fold_samples(z: torch.Tensor, batch: torch.Tensor, cat_covs=(), cont_covs=None):
    """A decoder's inputs with ``z``'s leading sample dimensions folded into the cell dimension.

    ``z`` is ([samples x] cells x latent); the per-cell ``batch``, ``cat_covs`` and
    ``cont_covs`` are repeated once per sample. Returns the decoder input (``z``, then the
    continuous covariates), the categorical codes (``batch`` first) and ``z``'s leading shape,
    to unfold the decoder's output with ``out.reshape(*lead, -1)``.
    """
    lead = z.shape[:-1]
    z_cells = z.reshape(-1, z.shape[-1])
    n_rep = z_cells.shape[0] // batch.shape[0]

    def rep(t):
        return t if n_rep == 1 else t.repeat(n_rep, *([1] * (t.dim() - 1)))

    dec_in = z_cells if cont_covs is None else torch.cat([z_cells, rep(cont_covs)], dim=-1)
    return dec_in, [rep(batch), *[rep(c) for c in cat_covs]], lead


class BaseModule(nn.Module):
    """A model's math. Subclasses implement ``inference``, ``generative`` and ``loss`` and say
    how a tensor dict (see ``cellvi._constants``) maps to their arguments.

    A Module with an expression decoder (see ``analysis.ExpressionMixin``) returns from
    ``generative`` the normalised expression ``"scale"`` and the count distribution
    ``"dist"``; with ``likelihood=False`` only ``"scale"``; with ``genes_major=True`` only
    ``"scale_by_gene"`` (genes first), which differential expression reads.
    """

    @staticmethod
    def covariates(tensors: dict) -> tuple[list, "torch.Tensor | None"]:
        """The categorical covariates (a list of code tensors) and continuous covariates of a
        minibatch (the standard fields; empty and None when absent)."""
        cats = tensors.get(C.CAT_COVS_KEY)
        return (list(cats.unbind(-1)) if cats is not None else []), tensors.get(C.CONT_COVS_KEY)

    def inference_inputs(self, tensors: dict) -> dict:
        raise NotImplementedError

    def generative_inputs(self, tensors: dict, inference_out: dict, **overrides) -> dict:
        raise NotImplementedError

    def inference(self, **kwargs) -> dict:
        raise NotImplementedError

    def generative(self, **kwargs) -> dict:
        raise NotImplementedError

    def loss(self, tensors: dict, inference_out: dict, generative_out: dict, kl_weight: float = 1.0,
             **kwargs) -> LossOutput:
        raise NotImplementedError

    # What a training plan's adversarial classifier sees and predicts (see
    # TrainingPlan.adversarial_classifier): by default the latent and the batch.
    @property
    def n_adversarial_classes(self) -> int:
        return getattr(self, "n_batch", 1)

    def adversarial_inputs(self, tensors: dict, inference_out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, class code per cell) for the adversarial classifier."""
        return inference_out["z"], tensors[C.BATCH_KEY]

    def forward(self, tensors: dict, kl_weight: float = 1.0, n_samples: int = 1, **loss_kwargs):
        """One pass; ``loss_kwargs`` (e.g. a labelled minibatch) go to :meth:`loss`."""
        inference_out = self.inference(**self.inference_inputs(tensors), n_samples=n_samples)
        generative_out = self.generative(**self.generative_inputs(tensors, inference_out))
        loss = loss_in_float32(minibatch_device_type(tensors), self.loss, tensors, inference_out, generative_out,
                               kl_weight, **loss_kwargs)
        return inference_out, generative_out, loss

    def train(self, mode: bool = True) -> "BaseModule":
        """As ``nn.Module.train``, but submodules marked frozen (``frozen_in_eval``) stay in
        eval mode: a frozen BatchNorm keeps its running statistics, a frozen Dropout is off."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if getattr(module, "frozen_in_eval", False):
                    module.eval()
        return self


def minibatch_device_type(tensors) -> str:
    """The device type of a minibatch (a tensor dict, or a list of them: joint data)."""
    for t in (tensors if isinstance(tensors, (list, tuple)) else [tensors]):
        if t:
            return next(iter(t.values())).device.type
    return "cpu"
