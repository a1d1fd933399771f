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


def nonzeros(x: torch.Tensor):
    flat = x.reshape(-1)
    index = torch.nonzero(flat).squeeze(1)
    return index, flat[index]


@pytest.mark.parametrize("encode_covariates", [False, True])
def test_scvi_and_totalvi_encoders_read_non_zeros_as_dense(counts, encode_covariates):
    """The modules' sparse encoder input (log1p at the non-zeros; totalVI's per-cell scaling,
    proteins and continuous covariates as the dense tail) gives the dense input's posterior."""
    from cellvi.modules import TOTALVAE, VAE

    torch.manual_seed(3)
    batch = torch.tensor([0, 1] * 4 + [0])
    cont = torch.randn(9, 2)
    vae = VAE(17, n_batch=2, n_continuous_cov=2, encode_covariates=encode_covariates, use_observed_lib_size=False,
              library_log_means=torch.zeros(2).numpy(), library_log_vars=torch.ones(2).numpy()).eval()
    counts = counts.clone()
    counts[4, 0] = 1  # every cell has a count (the library's log)
    args = dict(x=counts, batch=batch, cont_covs=cont)
    sparse, dense = vae.inference(**args, x_nz=nonzeros(counts)), vae.inference(**args)
    for key in ("qz_mean", "qz_var", "ql_mean", "ql_var"):
        torch.testing.assert_close(sparse[key], dense[key])

    proteins = torch.poisson(torch.full((9, 4), 20.0))
    total = TOTALVAE(17, 4, n_batch=2, n_continuous_cov=2, encode_covariates=encode_covariates).eval()
    args = dict(x=counts, y=proteins, batch=batch, cont_covs=cont)
    sparse, dense = total.inference(**args, x_nz=nonzeros(counts)), total.inference(**args)
    for key in ("qz_mean", "qz_var"):
        torch.testing.assert_close(sparse[key], dense[key])


def test_reads_sparse_below_the_density_threshold():
    from cellvi.nn import reads_sparse
    from cellvi.nn._sparse import SPARSE_INPUT_MAX_DENSITY

    shape = (100, 1000)
    n_max = int(SPARSE_INPUT_MAX_DENSITY * 100 * 1000)
    assert reads_sparse(torch.arange(n_max), shape)
    assert not reads_sparse(torch.arange(n_max + 1), shape)
    assert not reads_sparse(None, shape)
