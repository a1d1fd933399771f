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
    shared with the scipy matrix, not copied.
    """

    def __init__(self, tensors: AnnTensors, device: torch.device | str = "cpu"):
        device = torch.device(device)
        X = tensors.X
        self.device = device
        self.n_obs, self.n_vars = X.shape
        self.indptr = torch.from_numpy(X.indptr.astype(np.int64, copy=False)).to(device)
        self.indices = torch.from_numpy(X.indices).to(device)
        self.values = torch.from_numpy(X.data).to(device)
        self.obs = {C.BATCH_KEY: torch.from_numpy(tensors.batch).to(device)}
        self.obs[C.LABELS_KEY] = torch.from_numpy(tensors.labels).to(device)
        for key, arr in (
            (C.CAT_COVS_KEY, tensors.categorical_covariates),
            (C.CONT_COVS_KEY, tensors.continuous_covariates),
            (C.SIZE_FACTOR_KEY, tensors.size_factor),
        ):
            if arr is not None:
                self.obs[key] = torch.from_numpy(arr).to(device)

    def minibatch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense counts of rows ``idx`` plus their non-zeros and per-cell covariates."""
        idx = idx.to(self.device)
        starts = self.indptr[idx]
        lengths = self.indptr[idx + 1] - starts
        total = int(lengths.sum())
        n = idx.shape[0]
        rows = torch.repeat_interleave(torch.arange(n, device=self.device), lengths, output_size=total)
        # Position of each gathered entry inside the CSR arrays.
        offsets = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(total, device=self.device) + (starts - offsets).repeat_interleave(
            lengths, output_size=total
        )
        cols = self.indices[pos].long()
        vals = self.values[pos]
        flat = rows * self.n_vars + cols
        X = torch.zeros(n * self.n_vars, device=self.device, dtype=vals.dtype)
        X[flat] = vals
        out = {key: t[idx] for key, t in self.obs.items()}
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
