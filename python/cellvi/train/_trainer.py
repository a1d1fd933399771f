"""One trainer for every model: a plain loop (per minibatch the module's work and nothing
else: no per-step host synchronisation, no per-step logging), with validation, early stopping,
history, progress bar, devices and seeds. What differs per model is its
:class:`TrainingPlan`: optimizer settings, KL warm-up, an optional reduce-on-plateau
scheduler, an optional adversarial batch classifier, the watched metric, loss arguments."""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import logging
import math
import sys
import time
import warnings

import numpy as np
import torch

from .._settings import settings
from ..data import DeviceData, JointData, cycle_minibatches
from ..modules import BaseModule
from ..nn import Classifier
from ._distributed import Distributed

logger = logging.getLogger("cellvi")


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN). Raised from a model's
    ``train()``, which then leaves the model as it was; ``history`` holds the failed run's
    per-epoch record (None when it failed before the first epoch ended)."""

    history = None


class ConvergenceWarning(UserWarning):
    """Training ended while the validation ELBO was still clearly rising."""


class StopTraining(Exception):
    """Raised by an epoch callback to end training after the current epoch, as early stopping
    does: the model is trained and keeps its history up to that epoch."""


# The epoch callback of Trainers built inside ``with epoch_callback(fn):``. A context rather
# than a train() argument so that every model's train() honours it without each override
# having to pass it on (hyperparameter search, custom monitoring).
_EPOCH_CALLBACK: contextvars.ContextVar = contextvars.ContextVar("cellvi_epoch_callback", default=None)


@contextlib.contextmanager
def epoch_callback(fn):
    """Call ``fn(trainer, row)`` after every training epoch of the models trained inside the block.

    ``row`` is the epoch's history entry (``epoch``, ``elbo_train``, ``elbo_validation``, ...);
    ``trainer`` gives access to the module and to :meth:`Trainer.evaluate`. ``fn`` may raise
    :class:`StopTraining` to end training after this epoch (the model keeps what it trained);
    any other exception propagates out of ``train()``, which then leaves the model as it was
    before the call (as for any failed run).

    Examples
    --------
    >>> def stop_when_good(trainer, row):
    ...     if row["elbo_validation"] > -1200:
    ...         raise cellvi.train.StopTraining
    >>> with cellvi.train.epoch_callback(stop_when_good):
    ...     model.train(max_epochs=400)
    """
    token = _EPOCH_CALLBACK.set(fn)
    try:
        yield fn
    finally:
        _EPOCH_CALLBACK.reset(token)


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


def split_indices(n_obs: int, train_size: float, validation_size: float | None = None, groups=None):
    """Shuffled train and validation cell indices (seeded by ``settings.seed``).

    ``groups`` (one code per cell, e.g. labelled or not) splits each group on its own in the
    same proportions, so that every group has ``ceil(train_size * n)`` training cells whatever
    the draw (scvi-tools splits a semi-supervised model's labelled and unlabelled cells so).
    """
    if not 0.0 < float(train_size) <= 1.0:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}")
    if validation_size is not None and (validation_size < 0 or train_size + validation_size > 1.0 + 1e-9):
        raise ValueError("train_size + validation_size must not exceed 1")

    groups = np.zeros(n_obs, dtype=np.int8) if groups is None else np.asarray(groups)  # one group: all cells
    if groups.shape != (n_obs,):
        raise ValueError(f"groups must hold one code per cell ({n_obs}), got shape {groups.shape}")
    perm = torch.randperm(n_obs, generator=seeded_generator(1)).numpy()
    shuffled = groups[perm]
    train, val = [], []
    for group in np.unique(groups):
        members = perm[shuffled == group]  # in the shuffled order
        n = len(members)
        n_train = math.ceil(train_size * n)
        # The rest by default: floor((1 - 0.9) * 150) would be 14 (1 - 0.9 < 0.1 in floating point).
        n_val = n - n_train if validation_size is None else min(math.floor(validation_size * n), n - n_train)
        train.append(members[:n_train])
        val.append(members[n_train:n_train + n_val])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


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


# glibc's mallopt parameters (malloc.h) and the values retained_heap() sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_MMAP_THRESHOLD = 32 << 20  # the ceiling of glibc's own adaptive threshold (64-bit)
_TRAINING_TRIM_THRESHOLD = 1 << 30
_retained_heap_depth = 0


def _glibc():
    """The process' C library when it is glibc (with mallopt and malloc_trim), else None."""
    try:
        lib = ctypes.CDLL(None)
        lib.gnu_get_libc_version  # glibc only: musl, macOS and Windows allocate otherwise
        mallopt, trim = lib.mallopt, lib.malloc_trim
    except (AttributeError, OSError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lib


@contextlib.contextmanager
def retained_heap():
    """Keep freed memory in the heap while training (glibc; elsewhere nothing changes).

    Each step allocates and frees the same large temporaries (minibatch x genes; DestVI's
    spots x types x genes). glibc hands blocks above its mmap threshold back to the kernel
    when they are freed and trims the heap's free top, so with thousands of genes every step
    faulted its memory in afresh: 8-25 MiB of page faults per step, a fifth of a totalVI
    step or of scVI's on 9,000 genes (RESULTS.md). Inside, blocks up to 32 MiB come from the
    heap and what is freed stays there for the next step. On leaving, the free memory goes
    back to the kernel (``malloc_trim``) and the trim threshold is left at twice the mmap
    threshold: the state glibc's adaptive rule itself reaches after freeing a 32 MiB block.
    """
    global _retained_heap_depth
    lib = _glibc() if _retained_heap_depth == 0 else None
    _retained_heap_depth += 1
    try:
        if lib is not None:
            lib.mallopt(_M_MMAP_THRESHOLD, _HEAP_MMAP_THRESHOLD)
            lib.mallopt(_M_TRIM_THRESHOLD, _TRAINING_TRIM_THRESHOLD)
        yield
    finally:
        _retained_heap_depth -= 1
        if lib is not None:
            lib.mallopt(_M_TRIM_THRESHOLD, 2 * _HEAP_MMAP_THRESHOLD)
            lib.malloc_trim(0)


OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
PRECISIONS = ("32-true", "bf16-mixed")


def make_optimizer(params, optimizer: str = "Adam", **kwargs) -> torch.optim.Optimizer:
    """Adam (or AdamW, with decoupled weight decay), fused into one kernel where this torch and
    device support it (much less per-step overhead on the CPU), else the default
    implementation."""
    cls = OPTIMIZERS[optimizer]
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return cls(params, **kwargs)


@dataclasses.dataclass
class TrainingPlan:
    """What a model's training declares; the loop itself (:class:`Trainer`) is shared.

    Parameters
    ----------
    lr, weight_decay, eps
        The optimizer's settings for the module's parameters.
    optimizer
        ``"Adam"`` (weight decay as an L2 term in the gradient) or ``"AdamW"`` (decoupled
        weight decay, applied to the weights directly).
    n_epochs_kl_warmup, n_steps_kl_warmup
        Linear KL warm-up over this many epochs (or optimizer steps, which wins when set).
    kl_warmup_cap
        End the warm-up by this fraction of the run at the latest (e.g. 0.75: every run ends
        at full weight, however short). Default None: never shortened, as in scvi-tools, so a
        run shorter than the warm-up ends below full weight. Ending short runs at full weight
        gives a better ELBO but worse normalized expression: on kang at 25 epochs, ZINB scVI
        then explained CD79A's absence from monocytes by zero inflation (P ~ 0.99) and kept
        its NB mean at the B-cell level (21.9 vs 24.5 per 10k in monocytes vs B cells), as
        scvi-tools does with its warm-up ended at the same point (40.3 vs 23.3); uncapped,
        3.6 vs 23.0 (scvi-tools 4.6 vs 22.2).
    reduce_lr_on_plateau, lr_factor, lr_patience, lr_threshold, lr_min
        Multiply the learning rate by ``lr_factor`` when ``monitor`` has not improved by
        more than ``lr_threshold`` for ``lr_patience`` epochs (down to ``lr_min``).
    monitor, monitor_mode
        The history column that early stopping and the scheduler watch, and whether higher
        (``"max"``: ELBOs are log-likelihood bounds) or lower (``"min"``: losses) is better.
        A ``*_validation`` metric falls back to its ``*_train`` twin when there is no
        validation set.
    progress_metrics
        What the progress bar shows after each epoch: label -> history column stem
        (``"<stem>_train"``, and ``"<stem>_validation"`` when there is a validation set). By
        default the loss and the ELBO; a classifier shows its cross-entropy instead.
    adversarial_classifier
        Train a classifier to predict the batch from the latent ``z`` on its own optimizer,
        and push the encoder to fool it (weight ``scale_adversarial_loss``, by default
        ``1 - kl_weight``). Off with a single batch. A module may have it predict something
        else (see ``BaseModule.adversarial_inputs``: gimVI's data set of origin).
    adversarial_lr, adversarial_n_layers
        The classifier's learning rate and hidden layers (32 units each).
    loss_kwargs
        Extra arguments of the module's ``loss`` during training.
    compile
        Compile the forward pass of each of the module's networks (its direct submodules:
        encoders, decoders) with ``torch.compile`` for this run, fusing their element-wise
        work. The first run of a network shape compiles for ~30 s (a C++ compiler must be
        installed); later runs, in any process, take it from torch's on-disk cache. On 2 CPU
        threads (kang, scVI) it gave no reliable speed-up (alternating processes: 11,031 and
        11,098 cells/s compiled, 10,370 and 12,614 eager); it is meant for GPUs, where it is
        not yet measured. Dropout then draws from the compiled kernels' own random stream, so
        a run differs from the eager one as another seed would. Queries run eagerly.
    precision
        ``"32-true"`` (default): float32 throughout. ``"bf16-mixed"``: the networks'
        products and activations of training steps run in bfloat16 (``torch.autocast``); the
        likelihood, the KL and the loss are computed in float32 from inputs cast up, and
        weights, gradients, optimizer state, validation and every query stay float32. For
        GPUs (NVIDIA Ampere or newer; not yet measured here) and CPUs with bfloat16 units. On
        2 CPU threads with AVX512-BF16 (kang, scVI) the products alone ran 3x faster, a whole
        training step ~6% faster (median of alternating rounds; the casts and the element-wise
        work, still float32, take the rest). For TF32 products on NVIDIA GPUs call
        ``torch.set_float32_matmul_precision("high")`` first.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-6
    eps: float = 0.01
    optimizer: str = "Adam"
    n_epochs_kl_warmup: int | None = 400
    n_steps_kl_warmup: int | None = None
    kl_warmup_cap: float | None = None
    reduce_lr_on_plateau: bool = False
    lr_factor: float = 0.6
    lr_patience: int = 30
    lr_threshold: float = 0.0
    lr_min: float = 0.0
    monitor: str = "elbo_validation"
    monitor_mode: str = "max"
    progress_metrics: dict = dataclasses.field(default_factory=lambda: {"elbo": "elbo"})
    adversarial_classifier: bool = False
    scale_adversarial_loss: float | str = "auto"
    adversarial_lr: float = 1e-3
    adversarial_n_layers: int = 2
    loss_kwargs: dict = dataclasses.field(default_factory=dict)
    compile: bool = False
    precision: str = "32-true"

    def __post_init__(self):
        for name in ("lr", "eps", "lr_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be between 0 and 1, got {self.lr_factor}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        self.lr_patience = as_count(self.lr_patience, "lr_patience")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}")
        if self.monitor_mode not in ("max", "min"):
            raise ValueError(f"monitor_mode must be 'max' or 'min', got {self.monitor_mode!r}")


class Trainer:
    """Trains ``module`` on cells of ``data`` as its ``plan`` says.

    KL warm-up is linear in steps and reaches weight 1 after ``n_epochs_kl_warmup`` epochs
    (or ``n_steps_kl_warmup`` steps), or ``kl_warmup_cap * max_epochs`` when a cap is set and
    shorter. Early stopping and the scheduler watch ``plan.monitor``.

    With ``labelled_indices`` (semi-supervised models), every step also gets a minibatch of
    those cells, cycled through independently of the main one, as ``labelled_tensors``;
    ``labelled_indices`` may be a function of the epoch, drawing a new set of labelled cells
    at the start of every epoch (e.g. a few cells per label).
    ``optimizer_params`` restricts training to some parameters (or parameter groups with
    their own settings, e.g. no weight decay); the rest are left untouched. Scalar entries of
    a loss's ``extra_metrics`` are averaged per epoch into the history; a loss's
    ``kl_global`` (a dataset-level term) is counted once per training set in the ELBO.

    ``epoch_callback(trainer, row)`` runs after every epoch (see :func:`epoch_callback`).

    ``data`` serves the minibatches and says how an epoch is cut (``epoch_minibatches``,
    ``eval_minibatches``, ``n_cells``, ``shard``): a :class:`DeviceData` cuts one data set's
    cells; a :class:`JointData` serves several data sets together, with one index array per
    data set in ``train_indices`` and ``validation_indices`` and a list of tensor dicts per
    step.

    With ``distributed`` (a :class:`cellvi.train._distributed.Distributed`, from
    ``train(strategy="ddp")``) this process is one rank of a data-parallel run: each step's
    minibatch holds ``world_size x batch_size`` cells, of which this rank trains on its slice;
    gradients and the epoch's sums are averaged or added over the ranks (see
    :mod:`cellvi.train._distributed`). Only rank 0 shows progress.
    """

    def __init__(
        self,
        module: BaseModule,
        data: DeviceData | JointData,
        train_indices: np.ndarray,
        validation_indices: np.ndarray,
        max_epochs: int,
        batch_size: int = 128,
        plan: TrainingPlan | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 45,
        early_stopping_min_delta: float = 0.0,
        limit_train_batches: int | float | None = None,
        progress_bar: bool | None = None,
        optimizer_params=None,
        labelled_indices: np.ndarray | None = None,
        epoch_callback=None,
        distributed: Distributed | None = None,
    ):
        self.module = module
        self.dist = distributed
        self.world_size = distributed.world_size if distributed is not None else 1
        # Explicit argument, else the one of an enclosing ``with epoch_callback(fn):``.
        self.epoch_callback = epoch_callback if epoch_callback is not None else _EPOCH_CALLBACK.get()
        self.data = data
        self.plan = plan = plan if plan is not None else TrainingPlan()
        self.train_indices = train_indices
        self.validation_indices = validation_indices
        self.max_epochs = as_count(max_epochs, "max_epochs")
        self.batch_size = as_count(batch_size, "batch_size")
        if self.batch_size < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            raise ValueError("batch_size must be at least 2: the network's batch normalisation needs two cells "
                             "per minibatch (128, the default, is a good choice)")
        self.n_train = data.n_cells(train_indices)
        if self.n_train < 2 * self.world_size:  # every rank's slice of a step needs 2 cells
            raise ValueError(f"training needs at least 2 cells{' per process' if self.world_size > 1 else ''}, "
                             f"got {self.n_train}{f' for {self.world_size} processes' if self.world_size > 1 else ''}")
        self.limit_train_batches = limit_train_batches
        self.n_batches = self._n_batches(len(self._epoch_steps(None)))
        if plan.n_steps_kl_warmup is not None:  # (0: no warm-up)
            self.warmup_epochs = float(plan.n_steps_kl_warmup) / self.n_batches
        else:
            self.warmup_epochs = float(plan.n_epochs_kl_warmup or 0)
        if plan.kl_warmup_cap is not None:
            self.warmup_epochs = min(self.warmup_epochs, plan.kl_warmup_cap * self.max_epochs)
        self.early_stopping = early_stopping
        self.patience = as_count(early_stopping_patience, "early_stopping_patience")
        self.min_delta = early_stopping_min_delta
        self.progress_bar = settings.progress_bar if progress_bar is None else progress_bar
        if distributed is not None and distributed.rank != 0:
            self.progress_bar = False
        params = list(optimizer_params if optimizer_params is not None else module.parameters())
        if params and not isinstance(params[0], dict):
            params = [p for p in params if p.requires_grad]
        self.optimizer = make_optimizer(params, plan.optimizer, lr=plan.lr, eps=plan.eps,
                                   weight_decay=plan.weight_decay)
        self.scheduler = None
        if plan.reduce_lr_on_plateau:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=plan.monitor_mode, factor=plan.lr_factor, patience=plan.lr_patience,
                threshold=plan.lr_threshold, threshold_mode="abs", min_lr=plan.lr_min)
        self.classifier = self.classifier_optimizer = None
        n_classes = module.n_adversarial_classes
        if plan.adversarial_classifier and n_classes > 1:
            self.classifier = Classifier(module.n_latent, n_classes, n_hidden=32,
                                         n_layers=plan.adversarial_n_layers).to(data.device)
            self.classifier_optimizer = make_optimizer(self.classifier.parameters(), lr=plan.adversarial_lr,
                                                       eps=plan.eps, weight_decay=plan.weight_decay)
        self.generator = seeded_generator(2)
        self.labelled_batches = None
        # Under data parallelism each rank draws its own labelled cells (the rest of the
        # schedule is the same on every rank).
        self._labelled_generator = seeded_generator(3 + 1000 * (distributed.rank if distributed else 0))
        self._draw_labelled = labelled_indices if callable(labelled_indices) else None
        if self._draw_labelled is None and labelled_indices is not None and len(labelled_indices) > 0:
            self.labelled_batches = cycle_minibatches(labelled_indices, self.batch_size, self._labelled_generator)
        self.history: list[dict] = []

    def _epoch_steps(self, generator: torch.Generator | None) -> list:
        """One epoch's minibatch indices for this process (shuffled with ``generator``): the
        data's minibatches, or under data parallelism this rank's slice of each minibatch of
        ``world_size x batch_size`` cells."""
        # every rank's slice of every step needs 2 cells (BatchNorm)
        return self.data.epoch_minibatches(self.train_indices, self.batch_size * self.world_size, generator,
                                           min_cells=2 * self.world_size,
                                           part=0 if self.dist is None else self.dist.rank, n_parts=self.world_size)

    def _trained_parameters(self) -> list:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

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

    def _adversarial_loss(self, z: torch.Tensor, batch: torch.Tensor, true_class: bool) -> torch.Tensor:
        """Cross-entropy of the batch classifier against the true batch (``true_class``) or
        against the uniform distribution over the other batches (what fooling it means)."""
        log_probs = torch.log_softmax(self.classifier(z.float()), dim=-1)  # float32 under mixed precision too
        if true_class:
            return -log_probs.gather(1, batch.view(-1, 1)).mean()
        n_classes = log_probs.shape[-1]
        others = log_probs.sum(-1) - log_probs.gather(1, batch.view(-1, 1)).squeeze(1)
        return -(others / (n_classes - 1)).mean()

    def _autocast(self):
        """The training step's precision context (see ``TrainingPlan.precision``)."""
        if self.plan.precision == "bf16-mixed":
            return torch.autocast(self.data.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _adversarial_scale(self, kl_weight: float) -> float:
        scale = self.plan.scale_adversarial_loss
        return 1.0 - kl_weight if scale == "auto" else float(scale)

    def _train_epoch(self, epoch: int) -> dict:
        self.module.train()
        if self.classifier is not None:
            self.classifier.train()
        batches = self._epoch_steps(self.generator)[: self.n_batches]
        if self._draw_labelled is not None:
            labelled = self._draw_labelled(epoch)
            self.labelled_batches = (cycle_minibatches(labelled, self.batch_size, self._labelled_generator)
                                     if len(labelled) else None)
        sums = torch.zeros(4, device=self.data.device)  # summed on the device: no per-step sync
        extra_sums: dict[str, torch.Tensor] = {}
        n = 0
        kl_weight = 0.0
        loss_kwargs = self.plan.loss_kwargs
        for step, idx in enumerate(batches):
            kl_weight = self.kl_weight(epoch, step, len(batches))
            tensors = self.data.minibatch(idx)
            extra = dict(loss_kwargs)
            if self.labelled_batches is not None:
                extra["labelled_tensors"] = self.data.minibatch(next(self.labelled_batches))
            with self._autocast():
                inference_out, _, out = self.module(tensors, kl_weight=kl_weight, **extra)
            loss = out.loss
            kappa = self._adversarial_scale(kl_weight) if self.classifier is not None else 0.0
            if kappa > 0:
                z, classes = self.module.adversarial_inputs(tensors, inference_out)
                loss = loss + kappa * self._adversarial_loss(z, classes, False)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.dist is not None:
                self.dist.average_gradients(self._trained_parameters())
            self.optimizer.step()
            if kappa > 0:
                classifier_loss = self._adversarial_loss(z.detach(), classes, True)
                self.classifier_optimizer.zero_grad(set_to_none=True)
                (kappa * classifier_loss).backward()
                if self.dist is not None:
                    self.dist.average_gradients(self.classifier.parameters())
                self.classifier_optimizer.step()
                extra_sums["adversarial_classifier_loss"] = (extra_sums.get("adversarial_classifier_loss", 0.0)
                                                             + classifier_loss.detach())
            with torch.no_grad():
                n_step = self.data.n_cells(idx)
                sums += torch.stack([out.loss * n_step, out.reconstruction_loss.sum(), out.kl_local.sum(),
                                     torch.as_tensor(out.kl_global, dtype=sums.dtype, device=sums.device)])
                for name, value in out.extra_metrics.items():
                    extra_sums[name] = extra_sums.get(name, 0.0) + value.detach()
            n += n_step
        n_steps = len(batches)
        if self.dist is not None:  # the sums over every rank's cells and steps
            names = list(extra_sums)
            packed = torch.cat([sums.double(), torch.tensor([float(n)], dtype=torch.float64, device=sums.device)]
                               + [torch.as_tensor(extra_sums[k], dtype=torch.float64, device=sums.device).reshape(1)
                                  for k in names])
            self.dist.sum_(packed)
            sums, n = packed[:4], int(round(float(packed[4])))
            extra_sums = dict(zip(names, packed[5:].unbind()))
            n_steps *= self.world_size
        loss, rec, kl, kl_global = sums.tolist()
        kl_global /= n_steps
        row = {"loss_train": loss / n, "elbo_train": -(rec + kl) / n - kl_global / self.n_train,
               "reconstruction_loss_train": rec / n, "kl_local_train": kl / n, "kl_weight": kl_weight}
        if kl_global:
            row["kl_global_train"] = kl_global
        row.update({f"{name}_train": float(v) / n_steps for name, v in extra_sums.items()})
        if self.scheduler is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        return row

    @torch.no_grad()
    def evaluate(self, indices, suffix: str, data=None) -> dict:
        """ELBO, reconstruction loss and local KL of cells ``indices`` of ``data`` (default:
        the training data), as history entries named ``*_{suffix}``. Another data set (e.g.
        held-out cells cut with the same registry) works as ``data``."""
        data = self.data if data is None else data
        self.module.eval()
        sums = torch.zeros(4, device=data.device)  # reconstruction, local KL, global KL, chunks
        chunks = data.eval_minibatches(indices, self.batch_size)
        if self.dist is not None:  # the ranks share the chunks; their sums are added below
            chunks = chunks[self.dist.rank::self.world_size]
        for idx in chunks:
            _, _, out = self.module(data.minibatch(idx), kl_weight=1.0)
            sums += torch.stack([out.reconstruction_loss.sum(), out.kl_local.sum(),
                                 torch.as_tensor(out.kl_global, dtype=sums.dtype, device=sums.device),
                                 torch.ones((), dtype=sums.dtype, device=sums.device)])
        if self.dist is not None:
            self.dist.sum_(sums)
        rec, kl = (sums[:2] / data.n_cells(indices)).tolist()
        kl_global = float(sums[2]) / float(sums[3])
        return {f"elbo_{suffix}": -(rec + kl) - kl_global / self.n_train,
                f"reconstruction_loss_{suffix}": rec, f"kl_local_{suffix}": kl}

    def fit(self) -> list[dict]:
        has_validation = self.data.n_cells(self.validation_indices) > 0
        monitor = self.plan.monitor
        if not has_validation and monitor.endswith("_validation"):
            monitor = monitor[: -len("_validation")] + "_train"
        if self.dist is not None:  # every rank starts from rank 0's weights
            self.dist.broadcast_module(self.module)
            if self.classifier is not None:
                self.dist.broadcast_module(self.classifier)
        progress = Progress(self.max_epochs, self.progress_bar, settings.progress_style)
        compiled = list(self.module.children()) if self.plan.compile else []
        for network in compiled:  # in place: parameter names (and saved models) stay as they are
            network.compile(dynamic=False)
        try:
            with single_threaded_global_openblas(), retained_heap():
                stopped = self._run_epochs(progress, has_validation, monitor)
        finally:
            progress.close()
            self.data.release()  # e.g. an on-disk matrix's read-ahead windows
            for network in compiled:
                network._compiled_call_impl = None  # eager again (what Module.compile() set)
        self.module.eval()
        if self.dist is not None:  # and ends with them (BatchNorm's running statistics differ)
            self.dist.broadcast_module(self.module, buffers_only=True)
        if not stopped and (self.dist is None or self.dist.rank == 0):
            warn_if_not_converged(self.history)
        return self.history

    def _run_epochs(self, progress: "Progress", has_validation: bool, monitor: str) -> bool:
        """The epochs; True when training stopped before ``max_epochs`` (early stopping or the
        epoch callback)."""
        # Early stopping compares the watched metric with its sign set so that higher is better.
        sign = 1.0 if self.plan.monitor_mode == "max" else -1.0
        best, since_best = -math.inf, 0
        for epoch in range(self.max_epochs):
            row = {"epoch": epoch, **self._train_epoch(epoch)}
            if self.dist is not None:  # validation on every rank with rank 0's running statistics
                self.dist.broadcast_module(self.module, buffers_only=True)
            if has_validation:
                row.update(self.evaluate(self.validation_indices, "validation"))
            self.history.append(row)
            if not all(math.isfinite(v) for v in row.values()):
                raise TrainingError(
                    f"the loss became NaN or infinite in epoch {epoch + 1}. Usual causes: input that "
                    "is not raw counts (normalized, scaled or very large values), a learning rate "
                    "that is too high (try lr=1e-4), or too small a batch_size."
                )
            if monitor not in row:
                raise ValueError(f"the training plan watches '{monitor}', which the history lacks; "
                                 f"history columns: {', '.join(row)}")
            postfix = {"loss": f"{row['loss_train']:.4g}"}
            for label, stem in self.plan.progress_metrics.items():
                for suffix, shown in (("train", label), ("validation", f"{label}_val")):
                    if f"{stem}_{suffix}" in row:
                        postfix[shown] = f"{row[f'{stem}_{suffix}']:.4g}"
            progress.update(epoch, postfix)
            if self.epoch_callback is not None:
                try:
                    self.epoch_callback(self, row)
                except StopTraining:
                    logger.info("training stopped by the epoch callback after epoch %d", epoch + 1)
                    return True
            if self.scheduler is not None:
                self.scheduler.step(row[monitor])
            if self.early_stopping:
                if sign * row[monitor] > best + self.min_delta:
                    best, since_best = sign * row[monitor], 0
                else:
                    since_best += 1
                    if since_best >= self.patience:
                        logger.info("early stopping after epoch %d: %s has not improved for %d epochs",
                                    epoch + 1, monitor, self.patience)
                        progress.note(f"Early stopping after epoch {epoch + 1}: {monitor} has not "
                                      f"improved for {self.patience} epochs")
                        return True
        return False


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Training progress on stderr, in one of two styles.

    ``"bar"``: a tqdm bar redrawn in place (for a terminal). ``"lines"``: a plain line after
    the first epoch and then every ~10% of the epochs (epoch, ELBO, elapsed, remaining), for
    output that is not a terminal: a log file, a pipe, a knitted document, where a bar's
    carriage returns would pile up into one long line. ``"auto"``: the bar when stderr is a
    terminal, else lines. Both say the planned epochs and an estimate of the whole run after
    the first epoch.
    """

    def __init__(self, max_epochs: int, enabled: bool, style: str = "auto", stream=None):
        if style not in ("auto", "bar", "lines"):
            raise ValueError(f"progress style must be 'auto', 'bar' or 'lines', got {style!r}")
        self.max_epochs = max_epochs
        self.enabled = bool(enabled)
        self.stream = stream if stream is not None else sys.stderr
        if style == "auto":
            style = "bar" if _is_terminal(self.stream) else "lines"
        self.style = style
        self.start = time.perf_counter()
        self.bar = None
        self._next_line = 1  # the next tenth of the run that gets a line
        if self.enabled and style == "bar":
            from tqdm.auto import tqdm  # imported here: `import cellvi` stays light

            self.bar = tqdm(total=max_epochs, desc="Training", unit="epoch", dynamic_ncols=True,
                            file=self.stream)

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            self._write(text)

    def update(self, epoch: int, postfix: dict) -> None:
        if not self.enabled:
            return
        done = epoch + 1
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / done * (self.max_epochs - done)
        if done == 1:
            self._write(f"Training for {self.max_epochs} epoch{'s' if self.max_epochs > 1 else ''}: "
                        f"the first took {elapsed:.2g}s, so about {_duration(elapsed * self.max_epochs)} "
                        "in all")
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
            return
        tenth = done * 10 // self.max_epochs
        if tenth >= self._next_line or done == self.max_epochs:
            self._next_line = tenth + 1
            metrics = "  ".join(f"{k} {v}" for k, v in postfix.items())
            self._write(f"Epoch {done}/{self.max_epochs} ({100 * done // self.max_epochs}%)  {metrics}  "
                        f"elapsed {_duration(elapsed)}  remaining ~{_duration(remaining)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def not_converged(values, min_epochs: int = 20) -> str | None:
    """Why a run whose per-epoch validation ELBO is ``values`` looks unconverged, or None.

    A straight line is fitted to the last fifth of the epochs (at least 10): the curve is
    "clearly rising" when its slope is more than three standard errors above zero and the
    rise it implies over those epochs exceeds 1% of the whole climb since the first epoch
    (so a long run creeping up by noise-level amounts passes). Runs shorter than
    ``min_epochs`` are not judged.
    """
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = values.size
    if n < min_epochs:
        return None
    tail = values[-max(10, n // 5):]
    x = np.arange(tail.size, dtype=float)
    x -= x.mean()
    slope = float((x * (tail - tail.mean())).sum() / (x * x).sum())
    residuals = tail - tail.mean() - slope * x
    se = math.sqrt(float((residuals ** 2).sum()) / (tail.size - 2) / float((x * x).sum()))
    rise = slope * (tail.size - 1)
    climb = float(values[-1] - values[0])
    if slope > 3 * se and rise > 0.01 * abs(climb):
        return (f"the validation ELBO was still rising at the last epoch (+{rise:.3g} over the "
                f"last {tail.size} epochs, to {tail[-1]:.6g})")
    return None


def warn_if_not_converged(history: list[dict]) -> None:
    """A :class:`ConvergenceWarning` when the validation ELBO was still clearly rising at the
    end of training (see :func:`not_converged`)."""
    why = not_converged([row.get("elbo_validation") for row in history])
    if why is not None:
        warnings.warn(f"not converged: {why}; more epochs (max_epochs) may change the results",
                      ConvergenceWarning, stacklevel=4)
