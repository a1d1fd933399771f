"""Minibatches cut from tensors held once on the device.

The count matrix stays CSR (three torch tensors) on the training device for the whole run; a
minibatch is gathered with vectorised index arithmetic and densified alone. No AnnData is
touched per minibatch. The gather also yields the minibatch's non-zero entries, which the
likelihoods use to skip work on zeros.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .. import _constants as C
from ._registry import AnnTensors


class DeviceData:
    """An :class:`AnnTensors` moved to ``device``; ``minibatch(idx)`` returns a tensor dict.

    With float32 values and int32 indices on the CPU (the usual h5ad layout) the counts are
    shared with the scipy matrix, not copied. On a GPU the data live in GPU memory for the
    whole run when they take less than ``gpu_fraction`` of the free memory; otherwise they
    stay in pinned host memory and each minibatch is cut there and sent over.
    """

    def __init__(self, tensors: AnnTensors, device: torch.device | str = "cpu", gpu_fraction: float = 0.5):
        device = torch.device(device)
        X = tensors.X
        self.device = device
        self.n_obs, self.n_vars = X.shape
        host = {
            "indptr": torch.from_numpy(X.indptr.astype(np.int64, copy=False)),
            "indices": torch.from_numpy(X.indices),
            "values": torch.from_numpy(X.data),
            C.BATCH_KEY: torch.from_numpy(tensors.batch),
            C.LABELS_KEY: torch.from_numpy(tensors.labels),
        }
        for key, arr in (
            (C.CAT_COVS_KEY, tensors.categorical_covariates),
            (C.CONT_COVS_KEY, tensors.continuous_covariates),
            (C.SIZE_FACTOR_KEY, tensors.size_factor),
        ):
            if arr is not None:
                host[key] = torch.from_numpy(arr)
        self.storage_device = device
        if device.type == "cuda":
            n_bytes = sum(t.numel() * t.element_size() for t in host.values())
            free, _ = torch.cuda.mem_get_info(device)
            if n_bytes > gpu_fraction * free:
                self.storage_device = torch.device("cpu")
                host = {k: t.pin_memory() for k, t in host.items()}
        # On the CPU, scipy's row gather and densify (compiled loops) cut a minibatch in
        # half the time of the tensor arithmetic below, which is kept for GPUs.
        self._host_csr = X if device.type == "cpu" else None
        stored = {k: t.to(self.storage_device) for k, t in host.items()}
        self.indptr, self.indices, self.values = stored.pop("indptr"), stored.pop("indices"), stored.pop("values")
        self._host_indptr = host["indptr"]  # minibatch sizes are computed here: no device sync
        self.obs = stored

    def minibatch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense counts of rows ``idx`` plus their non-zeros and per-cell covariates."""
        idx_host = idx.cpu()
        if self._host_csr is not None:
            return self._cut_host(idx_host)
        total = int((self._host_indptr[idx_host + 1] - self._host_indptr[idx_host]).sum())
        if self.storage_device != self.device:
            return {k: t.to(self.device, non_blocking=True)
                    for k, t in self._cut(idx.to(self.storage_device), total).items()}
        return self._cut(idx.to(self.device), total)

    def _cut_host(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """``_cut`` on the CPU with scipy: the same tensors, in the same order."""
        sub = self._host_csr[idx.numpy()]
        rows = np.repeat(np.arange(sub.shape[0], dtype=np.int64), np.diff(sub.indptr))
        out = {key: torch.index_select(t, 0, idx) for key, t in self.obs.items()}
        out[C.X_KEY] = torch.from_numpy(sub.toarray())
        out[C.X_NZ_INDEX_KEY] = torch.from_numpy(rows * self.n_vars + sub.indices)
        out[C.X_NZ_VALUE_KEY] = torch.from_numpy(sub.data)
        return out

    def _cut(self, idx: torch.Tensor, total: int) -> dict[str, torch.Tensor]:
        device = idx.device
        starts = self.indptr[idx]
        lengths = self.indptr[idx + 1] - starts
        n = idx.shape[0]
        rows = torch.repeat_interleave(torch.arange(n, device=device), lengths, output_size=total)
        # Position of each gathered entry inside the CSR arrays.
        offsets = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(total, device=device) + (starts - offsets).repeat_interleave(
            lengths, output_size=total
        )
        # index_select and scatter_: several times faster on the CPU than tensor[index].
        cols = torch.index_select(self.indices, 0, pos).long()
        vals = torch.index_select(self.values, 0, pos)
        flat = rows * self.n_vars + cols
        X = torch.zeros(n * self.n_vars, device=device, dtype=vals.dtype).scatter_(0, flat, vals)
        out = {key: torch.index_select(t, 0, idx) for key, t in self.obs.items()}
        out[C.X_KEY] = X.view(n, self.n_vars)
        out[C.X_NZ_INDEX_KEY] = flat
        out[C.X_NZ_VALUE_KEY] = vals
        return out

    def iterate(
        self,
        indices: np.ndarray | torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        for idx in split_minibatches(indices, batch_size, shuffle, generator):
            yield self.minibatch(idx)


def cell_indices(n_obs: int, indices, name: str = "indices") -> np.ndarray:
    """Integer positions of the chosen cells: all (``None``), integers (negative ones count
    from the end, as in numpy) or a boolean mask of length ``n_obs``."""
    if indices is None:
        return np.arange(n_obs)
    indices = np.asarray(indices)
    if indices.dtype == bool:
        if indices.shape != (n_obs,):
            raise ValueError(f"{name} as a boolean mask must have length {n_obs}, got {indices.shape}")
        return np.flatnonzero(indices)
    if indices.size == 0:
        return indices.astype(np.int64)
    if not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"{name} must be integers or a boolean mask, got dtype {indices.dtype}")
    if indices.min() < -n_obs or indices.max() >= n_obs:
        raise IndexError(f"{name} out of range for {n_obs} cells")
    return np.where(indices < 0, indices + n_obs, indices)


def split_minibatches(
    indices, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Split cell indices into minibatches; a last minibatch of one cell joins the one before.

    (BatchNorm cannot normalise a batch of one cell, and dropping it would lose the cell.)
    """
    indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    if shuffle:
        indices = indices[torch.randperm(len(indices), generator=generator)]
    chunks = list(torch.split(indices, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


def cycle_minibatches(indices, batch_size: int, generator: torch.Generator | None = None
                      ) -> Iterator[torch.Tensor]:
    """Endless shuffled minibatches of ``indices``, reshuffled at every pass.

    A small set of cells (the labelled ones) is cycled beside the full data, one of its
    minibatches per training step.
    """
    indices = np.asarray(indices)
    if len(indices) == 0:
        raise ValueError("no cells to cycle through")
    if len(indices) == 1:  # BatchNorm needs two cells
        indices = np.repeat(indices, 2)
    while True:
        yield from split_minibatches(indices, batch_size, True, generator)
