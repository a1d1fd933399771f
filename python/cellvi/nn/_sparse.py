"""A first layer that reads sparse input: the product of a CSR minibatch with the weights.

Count and accessibility matrices are mostly zeros (scATAC 1-5% non-zero, RNA 5-15%), and the
first encoder layer (regions or genes x hidden) is the largest product of a step. Read as a
sparse matrix, its forward product and its weight gradient cost in proportion to the non-zero
entries instead of to cells x inputs, which at scATAC densities is a small fraction of the
dense work. The weight is stored transposed (inputs x outputs), the layout the sparse
product reads fastest (a transposed copy per step would cost as much as the product).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

# torch warns once per process that CSR tensors are "in beta" (the two products used here,
# CSR x dense forward and for the weight gradient, are long stable): spend that once here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                            (1, 1), check_invariants=False)


# Above this fraction of non-zeros the dense product is as fast or faster: a non-zero costs the
# sparse product several times what an entry costs the dense one (index reads, scattered
# access), so reading sparse pays off at scATAC densities (a few per cent) and not at those of
# RNA counts (10% and more: the same speed or slower).
SPARSE_INPUT_MAX_DENSITY = 0.05


def reads_sparse(nz_index: torch.Tensor | None, shape) -> bool:
    """Whether a first layer should read a minibatch of this shape as its non-zeros."""
    return nz_index is not None and nz_index.numel() <= SPARSE_INPUT_MAX_DENSITY * shape[0] * shape[1]


class SparseRows:
    """A minibatch (cells x features) given by its non-zero entries, as CSR, built once and
    shared by every layer that reads it; its transpose (for weight gradients) is built on first
    use. ``nz_index``: flat indices ``row * n_cols + col`` in increasing order (as the loader
    serves them); ``nz_value``: the entries. ``tail``: optional dense columns that follow the
    sparse ones (cells x k, e.g. protein counts or continuous covariates beside the genes)."""

    def __init__(self, nz_index: torch.Tensor, nz_value: torch.Tensor, n_rows: int, n_cols: int,
                 tail: torch.Tensor | None = None):
        rows = torch.div(nz_index, n_cols, rounding_mode="floor")
        self.rows, self.cols = rows, nz_index - rows * n_cols
        self.values = nz_value
        self.shape = (int(n_rows), int(n_cols))
        if tail is not None and (tail.dim() != 2 or tail.shape[0] != self.shape[0]):
            raise ValueError(f"tail must be {self.shape[0]} x k, got shape {tuple(tail.shape)}")
        self.tail = tail
        self.csr = torch.sparse_csr_tensor(_offsets(rows, n_rows), self.cols, nz_value, self.shape,
                                           check_invariants=False)  # built valid here
        self._transposed = None

    @property
    def transposed(self) -> torch.Tensor:
        """The CSR of the transpose (features x cells)."""
        if self._transposed is None:
            n_rows, n_cols = self.shape
            if self.values.device.type == "cpu":
                # scipy's CSR -> CSC is a counting sort in C, linear in the non-zeros, where an
                # argsort of the column indices would be a comparison sort
                csc = sp.csr_matrix((self.values.detach().numpy(), self.cols.numpy(),
                                     self.csr.crow_indices().numpy()), shape=self.shape).tocsc()
                offsets = torch.from_numpy(csc.indptr.astype(np.int64))
                rows, values = torch.from_numpy(csc.indices.astype(np.int64)), torch.from_numpy(csc.data)
            else:
                order = torch.argsort(self.cols, stable=True)
                offsets, rows, values = _offsets(self.cols, n_cols), self.rows[order], self.values[order]
            self._transposed = torch.sparse_csr_tensor(offsets, rows, values, (n_cols, n_rows),
                                                       check_invariants=False)
        return self._transposed

    def dense(self) -> torch.Tensor:
        """The same cells as a dense tensor (with the tail's columns)."""
        out = self.values.new_zeros(self.shape)
        out.view(-1).index_put_((self.rows * self.shape[1] + self.cols,), self.values)
        return out if self.tail is None else torch.cat([out, self.tail], dim=-1)

    @property
    def n_features(self) -> int:
        return self.shape[1] + (0 if self.tail is None else self.tail.shape[1])


def _offsets(sorted_codes: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row offsets of entries grouped by code (0..n-1)."""
    out = sorted_codes.new_zeros(n + 1)
    torch.cumsum(torch.bincount(sorted_codes, minlength=n), 0, out=out[1:])
    return out


class _SparseProduct(torch.autograd.Function):
    """x @ weight_t for a SparseRows x; the data needs no gradient."""

    @staticmethod
    def forward(ctx, weight_t, x):
        ctx.x = x
        # float32 under mixed precision too: torch has no bfloat16 sparse x dense product
        with torch.autocast(weight_t.device.type, enabled=False):
            return torch.sparse.mm(x.csr, weight_t.float())

    @staticmethod
    def backward(ctx, grad_out):
        grad_w = torch.sparse.mm(ctx.x.transposed, grad_out.contiguous()) if ctx.needs_input_grad[0] else None
        return grad_w, None


def covariate_init_bound(n_in: int, n_cats: Sequence[int]) -> float:
    """The initial range, 1 / sqrt(fan-in) as PyTorch's default, of all weights and the bias of
    a linear layer that reads ``x`` and one-hot covariates. The fan-in counts the one-hot
    columns, as in scvi-tools' layers (which concatenate them; a covariate of one category adds
    no column there). Taken from ``x`` alone, layers with covariates started wider than
    scvi-tools' (scANVI's z2 layers, 10 latent + 5 labels: 0.32 instead of 0.26)."""
    return 1.0 / math.sqrt(n_in + sum(int(n) for n in n_cats if int(n) > 1))


class SparseInputLinear(nn.Module):
    """``Linear(concat(x, one_hot(c_1), ...))`` (as ``CovariateLinear``) whose input ``x`` is a
    ``SparseRows`` or a dense tensor; the weight is held as ``weight_t`` (inputs x outputs).
    Initialised as ``CovariateLinear`` is (see :func:`covariate_init_bound`)."""

    def __init__(self, n_in: int, n_out: int, n_cats: Sequence[int] = (), bias: bool = True):
        super().__init__()
        bound = covariate_init_bound(n_in, n_cats)
        self.weight_t = nn.Parameter(torch.empty(n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound)) if bias else None
        self.cat_weights = nn.ParameterList(
            nn.Parameter(torch.empty(int(n), n_out).uniform_(-bound, bound)) for n in n_cats
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A CovariateLinear's parameters (linear.weight: outputs x inputs, linear.bias), as
        # models saved before their first layer read sparse input hold them, load transposed.
        if prefix + "linear.weight" in state_dict and prefix + "weight_t" not in state_dict:
            state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "linear.weight").t().contiguous()
            if prefix + "linear.bias" in state_dict:
                state_dict[prefix + "bias"] = state_dict.pop(prefix + "linear.bias")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        if isinstance(x, SparseRows):
            if x.n_features != self.weight_t.shape[0]:
                raise ValueError(f"the layer reads {self.weight_t.shape[0]} features, the input has {x.n_features}")
            n_sparse = x.shape[1]
            # Rows of weight_t: a slice of whole rows stays contiguous.
            weight = self.weight_t if x.tail is None else self.weight_t[:n_sparse]
            out = _SparseProduct.apply(weight, x)
            if x.tail is not None:
                out = torch.addmm(out, x.tail, self.weight_t[n_sparse:])
            if self.bias is not None:
                out = out + self.bias
        elif self.bias is not None:
            out = torch.addmm(self.bias, x, self.weight_t)
        else:
            out = x @ self.weight_t
        for weight, codes in zip(self.cat_weights, cats):
            out = out + torch.index_select(weight, 0, codes)
        return out
