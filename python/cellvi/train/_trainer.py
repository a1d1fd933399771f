"""One trainer for every model: Adam, linear KL warm-up, validation, early stopping, history,
progress bar, devices and seeds. A plain loop: per minibatch it does the module's work and
nothing else (no per-step host synchronisation, no per-step logging)."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import math

import numpy as np
import torch

from .._settings import settings
from ..data import DeviceData, cycle_minibatches, split_minibatches
from ..modules import BaseModule

logger = logging.getLogger("cellvi")


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


def resolve_device(device="auto") -> torch.device:
    """``"auto"``: CUDA if available, then Apple MPS, then CPU; else as given."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "gpu":
        device = "cuda"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


def as_count(value, name: str, minimum: int = 1) -> int:
    """An integer argument that may arrive as a whole float (e.g. 400.0 from R)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def seeded_generator(offset: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``settings.seed`` (random when no seed is set)."""
    gen = torch.Generator()
    if settings.seed is None:
        gen.seed()
    else:
        gen.manual_seed(settings.seed + offset)
    return gen


def split_indices(n_obs: int, train_size: float, validation_size: float | None = None):
    """Shuffled train and validation cell indices (seeded by ``settings.seed``)."""
    if not 0.0 < float(train_size) <= 1.0:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}")
    if validation_size is None:
        validation_size = 1.0 - train_size
    if validation_size < 0 or train_size + validation_size > 1.0 + 1e-9:
        raise ValueError("train_size + validation_size must not exceed 1")
    n_train = math.ceil(train_size * n_obs)
    n_val = min(math.floor(validation_size * n_obs), n_obs - n_train)
    perm = torch.randperm(n_obs, generator=seeded_generator(1)).numpy()
    return np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_val])


@contextlib.contextmanager
def single_threaded_global_openblas():
    """Run with one thread in an OpenBLAS that the host process loaded globally, if any.

    Inside R, torch's matrix products resolve to the BLAS that R loaded (its symbols come
    first); with OpenBLAS's own thread pool spinning beside torch's threads, training runs at
    half speed. A plain Python process has no such global OpenBLAS, and nothing changes.
    """
    try:
        lib = ctypes.CDLL(None)
        get, set_ = lib.openblas_get_num_threads, lib.openblas_set_num_threads
    except (AttributeError, OSError):
        yield
        return
    before = get()
    set_(1)
    try:
        yield
    finally:
        set_(before)


def make_adam(params, **kwargs) -> torch.optim.Adam:
    """Adam, fused into one kernel where this torch and device support it (much less per-step
    overhead on the CPU), else the default implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, **kwargs)


class Trainer:
    """Trains ``module`` on cells of ``data``.

    KL warm-up is linear in steps and reaches weight 1 after
    ``min(n_epochs_kl_warmup, 0.75 * max_epochs)`` epochs, so every run ends at full weight.
    Early stopping watches the validation ELBO (the training ELBO when there is no
    validation set).

    With ``labelled_indices`` (semi-supervised models), every step also gets a minibatch of
    those cells, cycled through independently of the main one, as ``labelled_tensors``.
    ``optimizer_params`` restricts training to some parameters (or parameter groups with
    their own settings, e.g. no weight decay); the rest are left untouched. Scalar entries of
    a loss's ``extra_metrics`` are averaged per epoch into the history.
    """

    def __init__(
        self,
        module: BaseModule,
        data: DeviceData,
        train_indices: np.ndarray,
        validation_indices: np.ndarray,
        max_epochs: int,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        n_epochs_kl_warmup: int | None = 400,
        early_stopping: bool = False,
        early_stopping_patience: int = 45,
        early_stopping_min_delta: float = 0.0,
        limit_train_batches: int | float | None = None,
        progress_bar: bool | None = None,
        optimizer_params=None,
        labelled_indices: np.ndarray | None = None,
    ):
        self.module = module
        self.data = data
        self.train_indices = train_indices
        self.validation_indices = validation_indices
        self.max_epochs = as_count(max_epochs, "max_epochs")
        self.batch_size = as_count(batch_size, "batch_size")
        if len(train_indices) < 2:
            raise ValueError(f"training needs at least 2 cells, got {len(train_indices)}")
        warmup = n_epochs_kl_warmup or 0
        self.warmup_epochs = min(float(warmup), 0.75 * self.max_epochs) if warmup else 0.0
        self.early_stopping = early_stopping
        self.patience = as_count(early_stopping_patience, "early_stopping_patience")
        self.min_delta = early_stopping_min_delta
        self.limit_train_batches = limit_train_batches
        self.progress_bar = settings.progress_bar if progress_bar is None else progress_bar
        params = list(optimizer_params if optimizer_params is not None else module.parameters())
        if params and not isinstance(params[0], dict):
            params = [p for p in params if p.requires_grad]
        self.optimizer = make_adam(params, lr=lr, eps=eps, weight_decay=weight_decay)
        self.generator = seeded_generator(2)
        self.labelled_batches = None
        if labelled_indices is not None and len(labelled_indices) > 0:
            self.labelled_batches = cycle_minibatches(labelled_indices, self.batch_size, seeded_generator(3))
        self.history: list[dict] = []

    def _n_batches(self, n_total: int) -> int:
        limit = self.limit_train_batches
        if limit is None:
            return n_total
        if isinstance(limit, float) and limit <= 1.0:
            return max(1, int(n_total * limit))
        return min(n_total, as_count(limit, "limit_train_batches"))

    def kl_weight(self, epoch: int, step: int, n_steps: int) -> float:
        if self.warmup_epochs <= 0:
            return 1.0
        return min(1.0, (epoch + step / n_steps) / self.warmup_epochs)

    def _train_epoch(self, epoch: int) -> dict:
        self.module.train()
        batches = split_minibatches(self.train_indices, self.batch_size, True, self.generator)
        batches = batches[: self._n_batches(len(batches))]
        sums = torch.zeros(3, device=self.data.device)  # summed on the device: no per-step sync
        extra_sums: dict[str, torch.Tensor] = {}
        n = 0
        kl_weight = 0.0
        for step, idx in enumerate(batches):
            kl_weight = self.kl_weight(epoch, step, len(batches))
            tensors = self.data.minibatch(idx)
            extra = {}
            if self.labelled_batches is not None:
                extra["labelled_tensors"] = self.data.minibatch(next(self.labelled_batches))
            _, _, out = self.module(tensors, kl_weight=kl_weight, **extra)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                sums += torch.stack([out.loss * len(idx), out.reconstruction_loss.sum(), out.kl_local.sum()])
                for name, value in out.extra_metrics.items():
                    extra_sums[name] = extra_sums.get(name, 0.0) + value.detach()
            n += len(idx)
        loss, rec, kl = sums.tolist()
        row = {"loss_train": loss / n, "elbo_train": -(rec + kl) / n,
               "reconstruction_loss_train": rec / n, "kl_local_train": kl / n, "kl_weight": kl_weight}
        row.update({f"{name}_train": float(v) / len(batches) for name, v in extra_sums.items()})
        return row

    @torch.no_grad()
    def evaluate(self, indices, suffix: str) -> dict:
        self.module.eval()
        sums = torch.zeros(2, device=self.data.device)
        for idx in split_minibatches(indices, self.batch_size):
            _, _, out = self.module(self.data.minibatch(idx), kl_weight=1.0)
            sums += torch.stack([out.reconstruction_loss.sum(), out.kl_local.sum()])
        rec, kl = (sums / len(indices)).tolist()
        return {f"elbo_{suffix}": -(rec + kl), f"reconstruction_loss_{suffix}": rec,
                f"kl_local_{suffix}": kl}

    def fit(self) -> list[dict]:
        from tqdm.auto import tqdm  # imported here: `import cellvi` stays light

        has_validation = len(self.validation_indices) > 0
        monitor = "elbo_validation" if has_validation else "elbo_train"
        bar = tqdm(range(self.max_epochs), desc="Training", unit="epoch", disable=not self.progress_bar,
                   dynamic_ncols=True)
        with single_threaded_global_openblas():
            self._run_epochs(bar, has_validation, monitor)
        bar.close()
        self.module.eval()
        return self.history

    def _run_epochs(self, bar, has_validation: bool, monitor: str) -> None:
        best, since_best = -math.inf, 0
        for epoch in bar:
            row = {"epoch": epoch, **self._train_epoch(epoch)}
            if has_validation:
                row.update(self.evaluate(self.validation_indices, "validation"))
            self.history.append(row)
            if not all(math.isfinite(v) for v in row.values()):
                bar.close()
                raise TrainingError(
                    f"the loss became NaN or infinite in epoch {epoch + 1}. Usual causes: input that "
                    "is not raw counts (normalized, scaled or very large values), a learning rate "
                    "that is too high (try lr=1e-4), or too small a batch_size."
                )
            postfix = {"loss": f"{row['loss_train']:.4g}", "elbo": f"{row['elbo_train']:.4g}"}
            if has_validation:
                postfix["elbo_val"] = f"{row['elbo_validation']:.4g}"
            bar.set_postfix(postfix, refresh=False)
            if self.early_stopping:
                if row[monitor] > best + self.min_delta:
                    best, since_best = row[monitor], 0
                else:
                    since_best += 1
                    if since_best >= self.patience:
                        logger.info("early stopping after epoch %d: %s has not improved for %d epochs",
                                    epoch + 1, monitor, self.patience)
                        return
