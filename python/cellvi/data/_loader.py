"""Minibatches cut from tensors held once on the device.

Every registered field is held once on the training device for the whole run: sparse ones
as CSR (three torch tensors), the rest as dense tensors. A minibatch is gathered with
vectorised index arithmetic and each sparse field densified alone. No AnnData is touched per
minibatch. The gather also yields each sparse field's non-zero entries, which the
likelihoods use to skip work on zeros.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .. import _constants as C
from .._settings import settings
from ._backed import BackedCSR, window_minibatches
from ._registry import AnnTensors


class _SparseStore:
    """One CSR field on the storage device (three tensors) and its host index pointer; an
    on-disk matrix (:class:`BackedCSR`) has no tensors and is read per minibatch."""

    def __init__(self, X):
        self.n_cols = X.shape[1]
        self.csr = X
        self.backed = isinstance(X, BackedCSR)
        if self.backed:
            self.host = {}
            return
        self.host = {
            "indptr": torch.from_numpy(X.indptr.astype(np.int64, copy=False)),
            "indices": torch.from_numpy(X.indices),
            "values": torch.from_numpy(X.data),
        }


class DeviceData:
    """An :class:`AnnTensors` moved to ``device``; ``minibatch(idx)`` returns a tensor dict.

    Every registered field is served under its key. A sparse (CSR) field is densified per
    minibatch and also gives its non-zero entries (flat index, value) under
    ``C.nz_keys(key)``; dense fields (per-cell codes, covariates, obsm matrices) are gathered
    by row. With float32 values and int32 indices on the CPU (the usual h5ad layout) a sparse
    field shares memory with the scipy matrix. On a GPU the data live in GPU memory for the
    whole run when they take less than ``gpu_fraction`` of the free memory; otherwise they
    stay in host memory and each minibatch is cut there, into page-locked memory, and sent
    over without waiting (the next one is cut while the GPU computes).
    """

    def __init__(self, tensors: AnnTensors, device: torch.device | str = "cpu", gpu_fraction: float = 0.5):
        device = torch.device(device)
        self.device = device
        self.n_obs = tensors.n_obs
        sparse = {k: _SparseStore(v) for k, v in tensors.items() if sp.issparse(v) or isinstance(v, BackedCSR)}
        dense = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items() if k not in sparse}
        self.storage_device = device
        if device.type == "cuda":
            n_bytes = sum(t.numel() * t.element_size() for t in dense.values())
            n_bytes += sum(t.numel() * t.element_size() for s in sparse.values() for t in s.host.values())
            free, _ = torch.cuda.mem_get_info(device)
            if n_bytes > gpu_fraction * free:  # kept where they are (no page-locked second copy)
                self.storage_device = torch.device("cpu")
        # On the CPU, scipy's row gather and densify (compiled loops, one pass over the chosen
        # rows) cut a minibatch faster than the tensor arithmetic below (several vectorised
        # passes with temporaries), which is kept for data held on a GPU. On-disk matrices, and
        # data too large for the GPU, are cut on the host too, into page-locked memory that is
        # copied while the GPU still computes the step before.
        self.backed = any(s.backed for s in sparse.values())
        self._on_cpu = device.type == "cpu" or self.backed or self.storage_device.type == "cpu"
        for s in sparse.values():
            if s.backed:
                continue
            stored = {k: t.to(self.storage_device) for k, t in s.host.items()}
            s.indptr, s.indices, s.values = stored["indptr"], stored["indices"], stored["values"]
        self.sparse = sparse
        self.obs = {k: t.to(self.storage_device) for k, t in dense.items()}

    # The count matrix's stored arrays (X is the usual sparse field).
    @property
    def n_vars(self) -> int:
        return self.sparse[C.X_KEY].n_cols

    @property
    def indptr(self) -> torch.Tensor:
        return self.sparse[C.X_KEY].indptr

    @property
    def indices(self) -> torch.Tensor:
        return self.sparse[C.X_KEY].indices

    @property
    def values(self) -> torch.Tensor:
        return self.sparse[C.X_KEY].values

    def minibatch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every field's rows ``idx``: dense sparse fields plus their non-zeros, and the rest.

        Nothing here waits for the GPU: ``idx`` and the row counts are read on the host, and
        what goes to the GPU leaves from page-locked memory without blocking (a copy from
        ordinary memory would first wait for every step queued before it)."""
        idx_host = idx.cpu()
        if self._on_cpu:
            out = {key: torch.index_select(t, 0, _to(idx_host, t.device)) for key, t in self.obs.items()}
            for key, store in self.sparse.items():
                out.update(_cut_host(store, key, idx_host))
            return out if self.device.type == "cpu" else {k: _to(t, self.device) for k, t in out.items()}
        return self._cut_tensors(_to(idx_host, self.storage_device), idx_host)

    def _cut_tensors(self, idx: torch.Tensor, idx_host: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``minibatch`` by tensor arithmetic on the storage device (the GPU path)."""
        idx_host = idx.cpu() if idx_host is None else idx_host
        out = {key: torch.index_select(t, 0, idx) for key, t in self.obs.items()}
        for key, store in self.sparse.items():
            total = int((store.host["indptr"][idx_host + 1] - store.host["indptr"][idx_host]).sum())
            out.update(_cut(store, key, idx, total))
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

    # The trainer's schedule. A data source serves "index" objects to ``minibatch``; here
    # they are tensors of cell positions (JointData serves one per data set).
    @staticmethod
    def n_cells(indices) -> int:
        """Cells in ``indices`` (a set of cells or one minibatch's index)."""
        return len(indices)

    def epoch_minibatches(self, indices, batch_size: int, generator: torch.Generator | None = None,
                          min_cells: int = 2, part: int = 0, n_parts: int = 1) -> list:
        """One training epoch's minibatches of ``indices``: shuffled with ``generator``, in
        order without it; a last minibatch of fewer than ``min_cells`` cells joins the one
        before (see :func:`split_minibatches`). With ``n_parts`` > 1 (data parallelism), only
        slice ``part`` of each minibatch (see :meth:`shard`). With an on-disk count matrix and
        more cells than ``settings.backed_window_cells``, shuffled window by window (see
        :mod:`cellvi.data._backed`); each window is read ahead while the one before trains,
        and only the rows of this part's slices are kept."""
        def split(cells, size, shuffle=False):
            return split_minibatches(cells, size, shuffle, generator, min_last=min_cells)

        if not self.backed or generator is None:
            batches, windows = split(indices, batch_size, generator is not None), None
        elif len(indices) <= settings.backed_window_cells:  # one window: the in-memory order
            batches, windows = split(indices, batch_size, True), [np.asarray(indices)]
        else:
            batches, windows = window_minibatches(indices, batch_size, generator, settings.backed_window_cells,
                                                  split)
        if n_parts > 1:
            batches = [self.shard(b, part, n_parts) for b in batches]
            if windows is not None:  # each process holds its own cells only
                mine = torch.cat(batches).numpy() if batches else np.zeros(0, dtype=np.int64)
                windows = [w[np.isin(w, mine)] for w in windows]
        if windows is not None:
            for store in self.sparse.values():
                if store.backed:
                    store.csr.plan(windows)
        return batches

    def release(self) -> None:
        """Free what training held beyond the data (an on-disk matrix's read-ahead windows)."""
        for store in self.sparse.values():
            if store.backed:
                store.csr.release()

    def eval_minibatches(self, indices, batch_size: int) -> list:
        """Minibatches that visit every cell of ``indices`` once (validation)."""
        return split_minibatches(indices, batch_size)

    @staticmethod
    def shard(index, part: int, n_parts: int):
        """Slice ``part`` of ``n_parts`` near-equal slices of one minibatch's index (a rank's
        share of a data-parallel step)."""
        return torch.tensor_split(index, n_parts)[part]


class JointData:
    """Several data sets trained together (e.g. gimVI's reference and spatial cells), each
    held as its own :class:`DeviceData` with its own registry.

    An index is a tuple with one entry per data set (cell positions in that data set, or None
    for none of its cells), and ``minibatch`` returns a list with one tensor dict (or None)
    per data set. A training epoch is one pass over the largest data set's cells; every step
    also takes a minibatch of each other data set, cycled through (reshuffled at every pass)
    as often as needed, so each step sees cells of every data set. Validation visits each
    cell once, one data set at a time.
    """

    def __init__(self, parts: "list[DeviceData]"):
        if len(parts) < 2:
            raise ValueError("JointData needs at least two data sets")
        devices = {str(p.device) for p in parts}
        if len(devices) > 1:
            raise ValueError(f"the data sets are on different devices: {sorted(devices)}")
        self.parts = list(parts)
        self.device = parts[0].device
        self.n_obs = tuple(p.n_obs for p in parts)

    @staticmethod
    def n_cells(indices) -> int:
        return sum(len(i) for i in indices if i is not None)

    def minibatch(self, idx) -> "list[dict[str, torch.Tensor] | None]":
        return [part.minibatch(i) if i is not None and len(i) else None for part, i in zip(self.parts, idx)]

    def epoch_minibatches(self, indices, batch_size: int, generator: torch.Generator | None = None,
                          min_cells: int = 2, part: int = 0, n_parts: int = 1) -> list:
        if any(len(i) == 0 for i in indices):
            raise ValueError(f"every data set needs training cells; got {[len(i) for i in indices]}")
        shuffle = generator is not None

        def split(cells):
            return split_minibatches(cells, batch_size, shuffle, generator, min_last=min_cells)

        per_set = [split(i) for i in indices]
        n_steps = max(len(b) for b in per_set)
        steps = []
        for d, batches in enumerate(per_set):
            while len(batches) < n_steps:  # cycle a smaller data set, a fresh order each pass
                batches = batches + split(indices[d])
            steps.append(batches[:n_steps])
        steps = list(zip(*steps))
        return steps if n_parts == 1 else [self.shard(step, part, n_parts) for step in steps]

    @staticmethod
    def shard(index, part: int, n_parts: int):
        """Slice ``part`` of each data set's cells in one step's index (see
        :meth:`DeviceData.shard`); a data set without cells there stays None."""
        return tuple(None if i is None else torch.tensor_split(i, n_parts)[part] for i in index)

    def release(self) -> None:
        for part in self.parts:
            part.release()

    def eval_minibatches(self, indices, batch_size: int) -> list:
        out = []
        for d, idx in enumerate(indices):
            for chunk in split_minibatches(idx, batch_size) if len(idx) else []:
                out.append(tuple(chunk if e == d else None for e in range(len(indices))))
        return out


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor bound for a GPU goes through page-locked memory
    (torch's caching host allocator: reused, and not before its copy is done) so that the copy
    does not wait for the GPU."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _cut_host(store: _SparseStore, key: str, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """``_cut`` on the CPU with scipy: the same tensors, in the same order."""
    sub = store.csr[idx.numpy()]
    rows = np.repeat(np.arange(sub.shape[0], dtype=np.int64), np.diff(sub.indptr))
    nz_index, nz_value = C.nz_keys(key)
    return {key: torch.from_numpy(sub.toarray()),
            nz_index: torch.from_numpy(rows * store.n_cols + sub.indices),
            nz_value: torch.from_numpy(sub.data)}


def _cut(store: _SparseStore, key: str, idx: torch.Tensor, total: int) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of a stored CSR field, dense, with their non-zero entries (any device)."""
    device = idx.device
    starts = store.indptr[idx]
    lengths = store.indptr[idx + 1] - starts
    n = idx.shape[0]
    rows = torch.repeat_interleave(torch.arange(n, device=device), lengths, output_size=total)
    # Position of each gathered entry inside the CSR arrays.
    offsets = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(total, device=device) + (starts - offsets).repeat_interleave(lengths, output_size=total)
    # index_select and scatter_: several times faster on the CPU than tensor[index].
    cols = torch.index_select(store.indices, 0, pos).long()
    vals = torch.index_select(store.values, 0, pos)
    flat = rows * store.n_cols + cols
    X = torch.zeros(n * store.n_cols, device=device, dtype=vals.dtype).scatter_(0, flat, vals)
    nz_index, nz_value = C.nz_keys(key)
    return {key: X.view(n, store.n_cols), nz_index: flat, nz_value: vals}


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
    indices, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
    min_last: int = 2,
) -> list[torch.Tensor]:
    """Split cell indices into minibatches; a last minibatch of fewer than ``min_last`` cells
    (by default: of one cell) joins the one before.

    (BatchNorm cannot normalise a batch of one cell, and dropping it would lose the cell. Data
    parallelism asks for 2 cells per process: ``min_last = 2 x processes``.)
    """
    indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    if shuffle:
        indices = indices[torch.randperm(len(indices), generator=generator)]
    chunks = list(torch.split(indices, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < min_last:
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
