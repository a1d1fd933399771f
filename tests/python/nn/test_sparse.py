"""The sparse-input first layer computes what the dense layer computes, with the same gradients."""
import pytest
import torch

from cellvi.nn import FCLayers, SparseInputLinear, SparseRows


def sparse_of(x: torch.Tensor) -> SparseRows:
    flat = x.reshape(-1)
    index = torch.nonzero(flat).squeeze(1)
    return SparseRows(index, flat[index], *x.shape)


@pytest.fixture
def counts():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(9, 17, generator=g) < 0.25) * torch.randint(1, 5, (9, 17), generator=g)
    x = x.float()
    x[4] = 0  # an empty row
    x[:, 3] = 0  # an empty column
    return x


def test_sparse_rows_round_trip_and_transpose(counts):
    rows = sparse_of(counts)
    assert torch.equal(rows.dense(), counts)
    assert torch.equal(rows.csr.to_dense(), counts)
    assert torch.equal(rows.transposed.to_dense(), counts.t())


def test_sparse_input_linear_matches_dense_values_and_gradients(counts):
    torch.manual_seed(1)
    layer = SparseInputLinear(17, 6, n_cats=[3, 2])
    cats = [torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2]), torch.tensor([0, 1] * 4 + [0])]
    grad = torch.randn(9, 6)
    out_sparse = layer(sparse_of(counts), cats)
    out_dense = layer(counts, cats)
    torch.testing.assert_close(out_sparse, out_dense)
    g_sparse = torch.autograd.grad((out_sparse * grad).sum(), list(layer.parameters()))
    g_dense = torch.autograd.grad((out_dense * grad).sum(), list(layer.parameters()))
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b)
    assert g_sparse[0][3].abs().sum() == 0  # an input never non-zero gets no weight gradient


def test_fc_layers_with_sparse_input_read_either_form(counts):
    torch.manual_seed(2)
    stack = FCLayers(17, 5, (), n_layers=2, n_hidden=8, dropout_rate=0.0, use_batch_norm=False,
                     use_layer_norm=True, sparse_input=True)
    torch.testing.assert_close(stack(sparse_of(counts)), stack(counts))
    # initialised as nn.Linear is: uniform within 1 / sqrt(inputs)
    weight = stack.layers[0]["linear"].weight_t
    assert weight.shape == (17, 8) and weight.abs().max() <= 1 / 17 ** 0.5
