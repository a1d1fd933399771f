"""The minibatch data path: exact densification, non-zeros, and the one-cell trap."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellvi import _constants as C
from cellvi.data import DeviceData, Registry, split_minibatches


def test_minibatch_matches_scipy_rows(sim):
    reg = Registry.from_anndata(sim, "SCVI", batch_key="batch")
    tensors = reg.tensors(sim)
    data = DeviceData(tensors)
    idx = torch.tensor([5, 0, 599, 5, 17])
    mb = data.minibatch(idx)
    dense = tensors.X[idx.numpy()].toarray()
    np.testing.assert_array_equal(mb[C.X_KEY].numpy(), dense)
    flat = mb[C.X_NZ_INDEX_KEY].numpy()
    np.testing.assert_array_equal(dense.ravel()[flat], mb[C.X_NZ_VALUE_KEY].numpy())
    assert len(flat) == (dense != 0).sum()
    np.testing.assert_array_equal(mb[C.BATCH_KEY].numpy(), tensors.batch[idx.numpy()])
    # The CPU cut (scipy) and the tensor arithmetic used on GPUs give identical minibatches.
    by_tensors = data._cut_tensors(idx)
    assert by_tensors.keys() == mb.keys()
    for key, value in mb.items():
        assert torch.equal(by_tensors[key], value), key


def test_float32_csr_is_shared_not_copied(sim):
    tensors = Registry.from_anndata(sim, "SCVI").tensors(sim)
    data = DeviceData(tensors)
    assert data.values.data_ptr() == tensors.X.data.ctypes.data
    assert sp.isspmatrix_csr(tensors.X)


def test_single_cell_last_minibatch_is_merged():
    chunks = split_minibatches(np.arange(257), 128)
    assert [len(c) for c in chunks] == [128, 129]
    chunks = split_minibatches(np.arange(258), 128, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert [len(c) for c in chunks] == [128, 128, 2]
    assert sorted(torch.cat(chunks).tolist()) == list(range(258))
    assert [len(c) for c in split_minibatches(np.arange(1), 128)] == [1]
    # data parallelism: a last step too small for 2 cells per process joins the one before
    assert [len(c) for c in split_minibatches(np.arange(259), 128, min_last=4)] == [128, 131]
    assert [len(c) for c in split_minibatches(np.arange(260), 128, min_last=4)] == [128, 128, 4]


def test_cell_indices_accepts_none_integers_negatives_and_masks():
    from cellvi.data import cell_indices

    np.testing.assert_array_equal(cell_indices(4, None), [0, 1, 2, 3])
    np.testing.assert_array_equal(cell_indices(4, [3, -1, 0]), [3, 3, 0])
    np.testing.assert_array_equal(cell_indices(4, np.array([True, False, True, False])), [0, 2])
    with pytest.raises(ValueError, match="length 4"):
        cell_indices(4, [True, False])
    with pytest.raises(IndexError, match="out of range"):
        cell_indices(4, [4])
    with pytest.raises(TypeError, match="integers or a boolean mask"):
        cell_indices(4, [0.5])
