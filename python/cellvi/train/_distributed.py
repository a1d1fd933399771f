"""Data-parallel training over the processes that ``torchrun`` starts (``strategy="ddp"``).

Every process (rank) holds the whole model and data; each training step, rank r takes the
r-th of ``world_size`` equal slices of one minibatch of ``world_size x batch_size`` cells,
and the gradients are averaged over the ranks before the optimizer's step. The ranks start
from rank 0's weights and apply identical averaged gradients with identical optimizers, so
their weights stay identical; one step equals a single-process step on the whole minibatch
(the loss is a mean over cells), except that BatchNorm sees each rank's slice. Per-epoch
sums (losses, ELBO terms, validation) are added over the ranks, so every rank's history,
early stopping and learning-rate schedule agree.

Gradients go as one flat all-reduce per step (torch.distributed: gloo on CPUs, NCCL on GPUs):
the models are small (a few million parameters), so bucketing and overlap with the backward
pass, which ``DistributedDataParallel`` adds for large networks, would buy little, and the
modules keep their own forward signatures and outputs.
"""
from __future__ import annotations

import logging
import os
import random

import torch

from .._settings import settings

logger = logging.getLogger("cellvi")

STRATEGIES = (None, "ddp")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_secondary_rank() -> bool:
    """True in a process group's ranks other than 0 (which do not write files)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


class Distributed:
    """This process's place in a data-parallel run: ``rank``, ``world_size``, ``device``."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device

    @classmethod
    def start(cls, device: torch.device) -> "Distributed":
        """Join the process group of this ``torchrun`` run (started here if the script did not
        start it) and pick this rank's device: ``cuda:LOCAL_RANK`` when ``device`` is a GPU."""
        dist = torch.distributed
        if not dist.is_available():
            raise RuntimeError("strategy='ddp' needs torch.distributed, which this torch build lacks")
        if not dist.is_initialized():
            missing = [v for v in _TORCHRUN_VARIABLES if v not in os.environ]
            if missing:
                raise ValueError(
                    f"strategy='ddp' runs under torchrun, which sets {', '.join(missing)}; start the script "
                    "with `torchrun --nproc_per_node=N script.py` (or call "
                    "torch.distributed.init_process_group() before train())")
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    # -- agreement between the ranks --------------------------------------------------------------
    def agree_on_seed(self) -> None:
        """Give every rank rank 0's ``settings.seed`` (drawn there when unset): the train /
        validation split and each epoch's order must be the same on every rank. The draws
        inside the model (dropout, sampling) then differ by rank."""
        seed = settings.seed if settings.seed is not None else random.randrange(2**31 - 1)
        shared = torch.tensor([seed], dtype=torch.int64)
        self._collective(lambda t: torch.distributed.broadcast(t, 0), shared)
        if settings.seed != int(shared):  # (setting it reseeds torch: only when it changes)
            settings.seed = int(shared)
        if self.rank:
            torch.manual_seed(int(shared) + 7919 * self.rank)

    def broadcast_module(self, module: torch.nn.Module, buffers_only: bool = False) -> None:
        """Rank 0's parameters and buffers (e.g. BatchNorm's running statistics) to every
        rank; with ``buffers_only``, the buffers alone."""
        tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
        with torch.no_grad():
            for tensor in tensors:
                self._collective(lambda t: torch.distributed.broadcast(t, 0), tensor.data)

    def _collective(self, op, tensor: torch.Tensor) -> None:
        """``op`` on ``tensor`` in place, through a copy where the tensor is not where the
        backend works: NCCL on this rank's GPU, gloo on the host."""
        target = self.device if self.device.type == "cuda" else torch.device("cpu")
        if tensor.device == target:
            op(tensor)
            return
        moved = tensor.to(target)
        op(moved)
        tensor.copy_(moved)

    def average_gradients(self, params) -> None:
        """Replace each parameter's gradient by its mean over the ranks (one all-reduce). A
        parameter without a gradient on a rank counts as zero there; one without a gradient
        on every rank keeps none (the optimizer then leaves it alone, as in one process)."""
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        has_grad = [p.grad is not None for p in params]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                         + [torch.tensor(has_grad, dtype=params[0].dtype, device=params[0].device)])
        self.sum_(flat)
        flat[: flat.numel() - len(params)].div_(self.world_size)
        flags = flat[flat.numel() - len(params):].tolist()
        offset = 0
        for p, anywhere in zip(params, flags):
            n = p.numel()
            part = flat[offset:offset + n].view_as(p)
            if p.grad is not None:
                p.grad.copy_(part)
            elif anywhere:
                p.grad = part.clone()
            offset += n

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        self._collective(torch.distributed.all_reduce, tensor)
        return tensor
