"""Count matrices that stay on disk: the X of a backed AnnData (``read_h5ad(path, backed="r")``).

Training and queries read rows as they need them, never the whole matrix. A training epoch
(:func:`window_minibatches`) visits the cells window by window: the cells are cut into blocks
of consecutive rows, the blocks are shuffled, and the resulting sequence is cut into windows
of a whole number of minibatches (at most ``settings.backed_window_cells`` cells); each
window is read from the file (one contiguous read per stretch of nearby rows) and shuffled
within. The next window is read in a background thread while the current one trains. When
one window covers every training cell, the order is the in-memory order: the same seed gives
the same minibatches and the same model.
"""
from __future__ import annotations

import concurrent.futures
import mmap
import threading

import numpy as np
import scipy.sparse as sp
import torch

BLOCK_CELLS = 1024  # consecutive rows per block: one contiguous read
# Rows this close are read in one range and the rows between dropped (e.g. validation cells
# spread through the file: one read per minibatch, not one per cell).
MAX_GAP = 64


# Arrays at least this large (a window's data and indices) get pages of their own.
_OWN_PAGES_BYTES = 1 << 20


def _empty(n: int, dtype) -> np.ndarray:
    """``np.empty(n, dtype)``; a large one in anonymous memory of its own, handed back to the
    system the moment the array is dropped. (From malloc, a freed window's memory often stays
    with the process: glibc raises its mmap threshold after each large free, so the next
    windows come from a heap that a reading thread's arena rarely trims. Reading an epoch's
    windows of ~25 MiB, with read-ahead, peaked 78 MiB above the start from malloc and 55 MiB
    with pages of their own. A whole 1M-cell training run, with this and the windows sorted
    once, went from 285 to 276 MiB.)"""
    dtype = np.dtype(dtype)
    n_bytes = int(n) * dtype.itemsize
    if n_bytes < _OWN_PAGES_BYTES:
        return np.empty(n, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, n_bytes), dtype=dtype, count=n)


def uniform_index_dtype(X: sp.csr_matrix) -> sp.csr_matrix:
    """``X`` with its row pointers and column indices of one integer type (sharing the data).

    Files often hold 64-bit row pointers beside 32-bit indices; scipy then converts the whole
    index arrays to one type on every row selection, a pass over the matrix per minibatch
    (100x slower at 200,000 cells).
    """
    if X.indptr.dtype == X.indices.dtype:
        return X
    dtype = np.int64 if X.nnz >= 2**31 or max(X.shape) >= 2**31 else np.int32
    return sp.csr_matrix((X.data, X.indices.astype(dtype, copy=False), X.indptr.astype(dtype, copy=False)),
                         shape=X.shape, copy=False)


def row_blocks(X, columns=None):
    """(first row, CSR) of consecutive row blocks covering a CSR matrix in memory (one block)
    or on disk (:class:`BackedCSR`, read block by block), with only ``columns`` (positions, in
    that order; default all): whole-matrix statistics that hold one block at a time."""
    if columns is not None:
        X = select_columns(X, columns)
    yield from X.row_blocks() if isinstance(X, BackedCSR) else [(0, X)]


def select_columns(X, columns):
    """Only ``columns`` (positions, in that order) of a CSR matrix in memory (a copy) or on
    disk (still on disk)."""
    return X.select_columns(columns) if isinstance(X, BackedCSR) else X[:, np.asarray(columns)].tocsr()


def row_sums(X, columns=None) -> np.ndarray:
    """Each row's sum (float64) over ``columns`` (positions; default all) of a CSR matrix in
    memory or on disk."""
    return np.concatenate([np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
                           for _, block in row_blocks(X, columns)])


def to_memory(X, columns=None) -> sp.csr_matrix:
    """A CSR matrix in memory or on disk as one in memory, with only ``columns``."""
    blocks = [block for _, block in row_blocks(X, columns)]
    return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")


def is_backed_matrix(X) -> bool:
    """True for the on-disk CSR matrix of a backed AnnData."""
    try:
        from anndata.abc import CSRDataset
    except ImportError:  # anndata < 0.10
        return False
    return isinstance(X, CSRDataset)


class BackedCSR:
    """Rows of an on-disk CSR matrix, read as needed (``matrix[rows]``: an in-memory CSR
    float32 of those rows, in that order).

    :meth:`plan` announces the windows of a training epoch; rows inside the current window
    are then served from memory, and the next window is read ahead in a thread.
    """

    format = "csr"

    def __init__(self, dataset):
        self.shape = tuple(int(n) for n in dataset.shape)
        self._n_stored_columns = self.shape[1]
        # The stored arrays, sliced directly: anndata's own row indexing costs ~3 ms of
        # checks per call (a version lookup each time), more than the read. The row
        # pointers (8 bytes per cell) are kept in memory.
        group = dataset.group
        self._data, self._indices = group["data"], group["indices"]
        self._indptr = np.asarray(group["indptr"][:], dtype=np.int64)
        self.dtype = np.dtype(np.float32)
        self._lock = threading.Lock()  # h5py reads: one at a time
        self._pool = None
        self._windows: list = []
        self._current = None  # (sorted rows, CSR of those rows)
        self._pending = None
        self._columns = None  # positions of the columns served (None: all)

    def select_columns(self, columns) -> "BackedCSR":
        """The same rows with only ``columns`` (positions, in that order), read from the same
        file: e.g. a model's genes among the file's."""
        columns = np.asarray(columns, dtype=np.int64)
        if self._columns is not None:
            columns = self._columns[columns]
        out = BackedCSR.__new__(BackedCSR)  # not copy.copy: that would pickle (refused below)
        out.__dict__.update(self.__dict__)  # the file's arrays and its lock, shared
        out._pool, out._windows, out._current, out._pending = None, [], None, None
        out._columns, out.shape = columns, (self.shape[0], int(columns.size))
        return out

    # -- reading ---------------------------------------------------------------------------------
    def read_range(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` (one contiguous read of each stored array)."""
        return self._read_sorted(np.arange(start, stop, dtype=np.int64))

    def row_blocks(self, size: int = 16 * BLOCK_CELLS):
        """(first row, CSR) of consecutive row blocks, in order (checks, summaries)."""
        for start in range(0, self.shape[0], size):
            yield start, self.read_range(start, min(start + size, self.shape[0]))

    def sum(self, axis=None):
        """As scipy's ``sum`` (``axis`` 0 or 1: a 1 x genes or cells x 1 matrix), read in blocks."""
        if axis not in (0, 1):
            raise ValueError("a backed matrix sums along axis 0 or 1")
        parts = [np.asarray(block.sum(axis=axis), dtype=np.float64) for _, block in self.row_blocks()]
        return np.sum(parts, axis=0) if axis == 0 else np.vstack(parts)

    def _read_sorted(self, rows: np.ndarray) -> sp.csr_matrix:
        """Rows ``rows`` (sorted, unique) in that order, written straight into the result's
        arrays (no second copy of a window). Each stretch of rows with gaps of at most
        ``MAX_GAP`` between them is one contiguous read, of at most the rows it spans."""
        if rows.size == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        n_cols = self._n_stored_columns
        starts = self._indptr[rows]
        lengths = self._indptr[rows + 1] - starts
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        total = int(indptr[-1])
        index_dtype = np.int32 if total < 2**31 and n_cols < 2**31 else np.int64
        data = _empty(total, np.float32)
        indices = _empty(total, index_dtype)
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(rows) > MAX_GAP) + 1, [rows.size]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            lo, hi = int(starts[a]), int(starts[b - 1] + lengths[b - 1])
            out = slice(int(indptr[a]), int(indptr[b]))
            with self._lock:
                stretch_data, stretch_indices = self._data[lo:hi], self._indices[lo:hi]
            if hi - lo == out.stop - out.start:  # consecutive rows: all of it
                data[out], indices[out] = stretch_data, stretch_indices
            else:  # the chosen rows' entries among those read
                n = out.stop - out.start
                take = np.arange(n) + np.repeat(starts[a:b] - lo - (indptr[a:b] - indptr[a]), lengths[a:b])
                data[out], indices[out] = stretch_data[take], stretch_indices[take]
        out = sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(rows.size, n_cols), copy=False)
        if not out.has_canonical_format:  # repeated entries count once each, as in memory
            out.sum_duplicates()
        if not out.data.all():  # stored zeros are not counts above zero, as in memory
            out.eliminate_zeros()
        return out if self._columns is None else out[:, self._columns]

    def __getitem__(self, rows) -> sp.csr_matrix:
        rows = np.asarray(rows, dtype=np.int64)
        window = self._window_for(rows)
        if window is not None:
            window_rows, matrix = window
            return matrix[np.searchsorted(window_rows, rows)]
        unique, inverse = np.unique(rows, return_inverse=True)
        out = self._read_sorted(unique)
        return out if unique.size == rows.size and np.array_equal(unique, rows) else out[inverse]

    # -- training windows ------------------------------------------------------------------------
    def plan(self, windows: list) -> None:
        """The windows (arrays of rows) of the epoch about to run, in order; the first is read
        ahead now."""
        self._windows, self._current = [_sorted(np.asarray(w, dtype=np.int64)) for w in windows], None
        self._pending = self._submit(0)

    def _submit(self, i: int):
        if i >= len(self._windows):
            return None
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cellvi-backed")
        rows = self._windows[i]
        return i, self._pool.submit(lambda: (rows, self._read_sorted(rows)))

    def _window_for(self, rows: np.ndarray):
        if self._current is not None and _covers(self._current[0], rows):
            return self._current
        if self._pending is not None:
            i, future = self._pending
            if _covers(self._windows[i], rows):
                self._current = future.result()
                self._pending = self._submit(i + 1)  # read the next one while this trains
                return self._current
        return None

    def release(self) -> None:
        """Forget the epoch's windows (memory back) and stop the reading thread."""
        self._windows, self._current, self._pending = [], None, None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __getstate__(self):  # a model's tensors are never pickled with an open pool
        raise TypeError("a backed count matrix cannot be pickled; keep the AnnData's file instead")


def _sorted(rows: np.ndarray) -> np.ndarray:
    return rows if rows.size < 2 or bool(np.all(rows[1:] >= rows[:-1])) else np.sort(rows)


def _covers(window_rows: np.ndarray, rows: np.ndarray) -> bool:
    if rows.size == 0 or window_rows.size == 0:
        return False
    pos = np.searchsorted(window_rows, rows)
    return bool(np.all(pos < window_rows.size) and np.all(window_rows[np.minimum(pos, window_rows.size - 1)] == rows))


def window_minibatches(indices, batch_size: int, generator: torch.Generator, window_cells: int,
                       split) -> tuple[list, list]:
    """(minibatches, windows) of one training epoch over on-disk rows ``indices`` (each
    window's rows sorted, the order they are read in).

    The rows are cut into blocks of consecutive rows, the blocks shuffled, and the resulting
    sequence cut into windows of a whole number of minibatches (at most ``window_cells``
    cells, at least one minibatch); each window's cells are shuffled, and the sequence is cut
    into minibatches by ``split`` (no further shuffle), so no minibatch straddles two windows
    and an epoch has as many minibatches as in memory.
    """
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    blocks = np.split(indices, np.arange(BLOCK_CELLS, indices.size, BLOCK_CELLS))
    order = torch.randperm(len(blocks), generator=generator).numpy()
    sequence = np.concatenate([blocks[b] for b in order])
    per_window = max(batch_size, window_cells // batch_size * batch_size)
    for start in range(0, sequence.size, per_window):  # shuffled within each window, in place
        cells = sequence[start:start + per_window]
        cells[:] = cells[torch.randperm(cells.size, generator=generator).numpy()]
    windows = [np.sort(sequence[start:start + per_window]) for start in range(0, sequence.size, per_window)]
    return split(sequence, batch_size), windows
