"""Training and queries on a backed AnnData (read_h5ad(path, backed="r")): X stays on disk."""
from __future__ import annotations

import tracemalloc
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellvi
import cellvi.data._backed as backed
from cellvi.data._loader import split_minibatches
from helpers import simulate_counts


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("backed") / "sim.h5ad"
    simulate_counts(n_cells=600, n_genes=80, batch_strength=0.3).write_h5ad(path)
    return path


def trained(adata, **train):
    cellvi.settings.seed = 0
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.SCVI(adata, n_latent=5)
    model.train(max_epochs=3, batch_size=64, **train)
    return model


@pytest.fixture(scope="module")
def both(h5ad):
    """(in-memory model, backed model), trained alike; one window holds every cell."""
    assert cellvi.settings.backed_window_cells >= 600
    in_memory = trained(anndata.read_h5ad(h5ad))
    on_disk = trained(anndata.read_h5ad(h5ad, backed="r"))
    return in_memory, on_disk


def test_backed_counts_stay_on_disk(both):
    _, on_disk = both
    assert on_disk.adata.isbacked
    assert isinstance(on_disk._tensors().X, backed.BackedCSR)


def test_one_window_trains_exactly_as_in_memory(both):
    in_memory, on_disk = both
    np.testing.assert_array_equal(on_disk.history.to_numpy(), in_memory.history.to_numpy())
    for a, b in zip(in_memory.module.parameters(), on_disk.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_queries_stream_from_disk_and_match(both):
    in_memory, on_disk = both
    np.testing.assert_array_equal(on_disk.get_latent_representation(), in_memory.get_latent_representation())
    expression = []
    for model in (in_memory, on_disk):
        torch.manual_seed(1)
        expression.append(model.get_normalized_expression(library_size=1e4).to_numpy())
    np.testing.assert_allclose(expression[1], expression[0], rtol=1e-6)
    cells = np.arange(0, 600, 7)
    for model in (in_memory, on_disk):
        torch.manual_seed(1)
        model._ll = model.get_marginal_ll(indices=cells, n_mc_samples=20)
        torch.manual_seed(1)
        model._elbo = model.get_elbo(indices=cells)
        cellvi.settings.seed = 2
        model._de = model.differential_expression(groupby="cell_type", group1="type0", group2="type1",
                                                  n_samples=200)
    np.testing.assert_allclose(on_disk._ll, in_memory._ll, rtol=1e-6)
    assert on_disk._elbo == pytest.approx(in_memory._elbo, rel=1e-6)
    de_m, de_d = in_memory._de, on_disk._de.loc[in_memory._de.index]
    np.testing.assert_allclose(de_d["lfc_mean"], de_m["lfc_mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(de_d["raw_mean1"], de_m["raw_mean1"], rtol=1e-6)


def test_windows_visit_every_cell_once_without_straddling(monkeypatch):
    monkeypatch.setattr(backed, "BLOCK_CELLS", 50)
    cells = np.sort(np.random.default_rng(0).choice(1000, 700, replace=False))
    gen = torch.Generator().manual_seed(0)
    batches, windows = backed.window_minibatches(cells, 64, gen, 200, split_minibatches)
    assert len(batches) == len(split_minibatches(cells, 64))  # as many steps as in memory
    seen = np.concatenate([b.numpy() for b in batches])
    np.testing.assert_array_equal(np.sort(seen), cells)
    assert all(len(w) <= 192 for w in windows)  # whole minibatches, at most the window
    assert all(np.all(np.diff(w) > 0) for w in windows)  # sorted: the order they are read in
    window_of = {int(c): i for i, w in enumerate(windows) for c in w}
    straddling = [b for b in batches if len({window_of[int(c)] for c in b}) > 1]
    assert len(straddling) == 0


def test_small_windows_train_as_well(h5ad, both, monkeypatch):
    in_memory, _ = both
    monkeypatch.setattr(backed, "BLOCK_CELLS", 50)
    monkeypatch.setattr(cellvi.settings, "backed_window_cells", 128)
    model = trained(anndata.read_h5ad(h5ad, backed="r"))
    # Another order of cells (shuffled within windows of 128): the same fit within noise.
    final, reference = model.history["elbo_validation"].iloc[-1], in_memory.history["elbo_validation"].iloc[-1]
    assert abs(final - reference) < 0.02 * abs(reference), (final, reference)
    assert model._tensors().X._current is None  # the windows were let go after training


def test_training_memory_stays_within_the_window(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n_cells, n_genes = 50000, 300
    counts = sp.random(n_cells, n_genes, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5).astype(np.float32)
    counts[np.asarray(counts.sum(1)).ravel() == 0, 0] = 1
    path = tmp_path / "big.h5ad"
    anndata.AnnData(counts).write_h5ad(path)
    csr_bytes = counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes
    del counts
    monkeypatch.setattr(cellvi.settings, "backed_window_cells", 1024)
    adata = anndata.read_h5ad(path, backed="r")
    cellvi.settings.seed = 0
    cellvi.SCVI.setup_anndata(adata)
    model = cellvi.SCVI(adata, n_latent=5, n_hidden=32)
    tracemalloc.start()
    model.train(max_epochs=1, batch_size=256, train_size=0.95)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Two windows of ~1,024 cells x 60 non-zeros (~0.5 MB each), a validation minibatch's
    # read (its cells spread over ~20 times as many rows) and temporaries, against ~24 MB.
    assert peak < 0.25 * csr_bytes, (peak, csr_bytes)


def test_backed_errors(tmp_path):
    adata = simulate_counts(n_cells=60, n_genes=20)
    X = adata.X.toarray()
    X[5] = 0
    adata.X = sp.csr_matrix(X)
    adata.write_h5ad(tmp_path / "empty.h5ad")
    with pytest.raises(ValueError, match="1 cells with zero total counts \\(cell5\\)"):
        cellvi.SCVI.setup_anndata(anndata.read_h5ad(tmp_path / "empty.h5ad", backed="r"))
    adata = simulate_counts(n_cells=60, n_genes=20)
    adata.X = adata.X * 0.5
    adata.write_h5ad(tmp_path / "half.h5ad")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cellvi.SCVI.setup_anndata(anndata.read_h5ad(tmp_path / "half.h5ad", backed="r"))
    assert sum("non-integer" in str(w.message) for w in caught) == 1
    # Binary data: a cell with nothing open (the 7th of the 2nd block), and nothing closed
    # anywhere (a property of the whole matrix, read over several blocks).
    n_cells = 2 * backed.BLOCK_CELLS * 16 + 10
    open_ = sp.csr_matrix(np.ones((n_cells, 3), np.float32))
    closed = open_.tolil()
    closed[16 * backed.BLOCK_CELLS + 6] = 0
    anndata.AnnData(closed.tocsr()).write_h5ad(tmp_path / "closed.h5ad")
    with pytest.raises(ValueError, match=f"1 cells with no non-zero value .*\\({16 * backed.BLOCK_CELLS + 6}\\)"):
        cellvi.PEAKVI.setup_anndata(anndata.read_h5ad(tmp_path / "closed.h5ad", backed="r"))
    anndata.AnnData(open_).write_h5ad(tmp_path / "open.h5ad")
    with pytest.raises(ValueError, match=f"every entry of adata.X \\({n_cells} cells x 3 regions\\) is non-zero"):
        cellvi.PEAKVI.setup_anndata(anndata.read_h5ad(tmp_path / "open.h5ad", backed="r"))
    some_closed = open_.tolil()
    some_closed[-1, 0] = 0  # in the last block only: the whole matrix is fine
    anndata.AnnData(some_closed.tocsr()).write_h5ad(tmp_path / "some_closed.h5ad")
    cellvi.PEAKVI.setup_anndata(anndata.read_h5ad(tmp_path / "some_closed.h5ad", backed="r"))


def test_save_and_load_with_a_backed_anndata(both, tmp_path):
    _, on_disk = both
    on_disk.save(tmp_path / "m")
    loaded = cellvi.SCVI.load(tmp_path / "m", on_disk.adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), on_disk.get_latent_representation())


def test_mixed_index_types_are_made_one(sim):
    # Files often hold 64-bit row pointers beside 32-bit indices; scipy would then convert
    # the whole index arrays on every minibatch's row selection.
    X = sim.X.tocsr()
    X.indptr = X.indptr.astype(np.int64)
    sim.X = X
    cellvi.SCVI.setup_anndata(sim)
    model = cellvi.SCVI(sim)
    stored = model._tensors().X
    assert stored.indptr.dtype == stored.indices.dtype == np.int32
    assert np.shares_memory(stored.data, sim.X.data)  # no copy of the values
    assert sim.X.indptr.dtype == np.int64  # the user's matrix as it was


def test_repeated_entries_on_disk_count_once_summed(tmp_path):
    # As in memory (as_csr_float32): a (cell, gene) stored twice is one entry, the sum.
    X = sp.csr_matrix((np.array([1, 2, 3], np.float32), np.array([0, 0, 1], np.int32), np.array([0, 2, 3])),
                      shape=(2, 3))
    assert not X.has_canonical_format
    anndata.AnnData(X).write_h5ad(tmp_path / "dup.h5ad")
    matrix = backed.BackedCSR(anndata.read_h5ad(tmp_path / "dup.h5ad", backed="r").X)
    for read in (matrix[[1, 0]], matrix.read_range(0, 2)):
        assert read.has_canonical_format
    np.testing.assert_array_equal(matrix[[1, 0]].toarray(), [[0, 3, 0], [3, 0, 0]])


def test_column_selection_reads_only_those_columns(h5ad):
    adata = anndata.read_h5ad(h5ad)
    on_disk = backed.BackedCSR(anndata.read_h5ad(h5ad, backed="r").X)
    columns = np.array([40, 3, 3, 79, 0])
    chosen = on_disk.select_columns(columns)
    assert chosen.shape == (600, 5) and on_disk.shape == (600, 80)  # the original is unchanged
    rows = [5, 599, 0, 5]
    np.testing.assert_array_equal(chosen[rows].toarray(), adata.X[rows][:, columns].toarray())
    np.testing.assert_array_equal(chosen.select_columns([4, 0])[rows].toarray(),
                                  adata.X[rows][:, [0, 40]].toarray())
    np.testing.assert_array_equal(backed.to_memory(on_disk, columns).toarray(), adata.X[:, columns].toarray())
    np.testing.assert_allclose(backed.row_sums(on_disk, columns), np.asarray(adata.X[:, columns].sum(1)).ravel())


def _fit(model, epochs=2):
    model.train(max_epochs=epochs, batch_size=64)
    return model


def _cellassign(cells, spots, reference):
    markers = pd.DataFrame(0, index=cells.var_names[[30, 3, 10, 50, 61]], columns=["A", "B"])
    markers.iloc[:3, 0], markers.iloc[3:, 1] = 1, 1
    cellvi.CellAssign.setup_anndata(cells, size_factor_key="sf")
    model = _fit(cellvi.CellAssign(cells, markers))  # the markers: 5 of the file's 80 genes
    return model, model.predict().to_numpy()


def _destvi(cells, spots, reference):
    cellvi.CondSCVI.setup_anndata(cells, labels_key="cell_type")
    model = _fit(cellvi.DestVI.from_rna_model(spots, _fit(cellvi.CondSCVI(cells, n_latent=3))))
    return model, model.get_proportions().to_numpy()


def _stereoscope(cells, spots, reference):
    cellvi.RNAStereoscope.setup_anndata(cells, labels_key="cell_type")
    model = _fit(cellvi.SpatialStereoscope.from_rna_model(spots, _fit(cellvi.RNAStereoscope(cells))))
    return model, model.get_proportions().to_numpy()


def _query(cells, spots, reference):
    cellvi.SCVI.setup_anndata(reference, batch_key="batch")
    ref = _fit(cellvi.SCVI(reference, n_latent=3))
    query = cellvi.SCVI.prepare_query_anndata(spots, ref)  # 73 of the 80 genes: 7 filled with zeros
    assert not query.isbacked
    model = _fit(cellvi.SCVI.load_query_data(query, ref))
    return model, model.get_latent_representation()


@pytest.mark.parametrize("fit", [_cellassign, _destvi, _stereoscope, _query])
def test_models_that_pick_genes_read_them_from_disk(tmp_path, fit):
    # Each model reads only some of the file's genes: markers, the genes shared with the
    # spots or with a reference. On disk they stay on disk and give what memory gives.
    sim = simulate_counts(n_cells=300, n_genes=80)
    lib = np.asarray(sim.X.sum(1)).ravel()
    sim.obs["sf"] = lib / lib.mean()
    sim[:, ::-1].copy().write_h5ad(tmp_path / "cells.h5ad")  # the genes in another order
    spots = sim[::2, 7:].copy()  # a subset of the genes
    spots.obs["batch"] = "query_" + spots.obs["batch"]  # new batches (as a query)
    spots.write_h5ad(tmp_path / "spots.h5ad")
    results = []
    for mode in (None, "r"):
        cells, spots = (anndata.read_h5ad(tmp_path / f, backed=mode) for f in ("cells.h5ad", "spots.h5ad"))
        cellvi.settings.seed = 0
        model, values = fit(cells, spots, sim.copy())
        if mode and fit is not _query:
            assert isinstance(model._tensors().X, backed.BackedCSR)
        results.append(values)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_peakvi_trains_on_disk_as_in_memory(tmp_path):
    sim = simulate_counts(n_cells=300, n_genes=80)
    sim.write_h5ad(tmp_path / "peaks.h5ad")
    results = []
    for mode in (None, "r"):
        adata = anndata.read_h5ad(tmp_path / "peaks.h5ad", backed=mode)
        with pytest.warns(UserWarning, match="holds counts"):  # said at setup, read block by block
            cellvi.PEAKVI.setup_anndata(adata, batch_key="batch")
        cellvi.settings.seed = 0
        model = _fit(cellvi.PEAKVI(adata))
        results.append((model.get_latent_representation(), model.get_normalized_accessibility().to_numpy()))
    assert isinstance(model._tensors().X, backed.BackedCSR)
    for on_disk, in_memory in zip(results[1], results[0]):
        np.testing.assert_allclose(on_disk, in_memory, rtol=1e-5, atol=1e-6)


def test_stored_zeros_are_zero_counts_in_memory_and_on_disk(tmp_path):
    """A CSR matrix may store explicit zeros; the likelihoods read stored entries as counts
    above zero, so the ZINB scored them wrongly. The same counts with and without stored
    zeros now give the same model and the same scores, in memory and backed."""
    clean = simulate_counts(n_cells=200, n_genes=30)
    X = clean.X.tocsr()
    rows, cols = np.nonzero(X.toarray() == 0)
    stored = sp.csr_matrix((np.r_[X.data, np.zeros(50, np.float32)],
                            (np.r_[X.nonzero()[0], rows[:50]], np.r_[X.nonzero()[1], cols[:50]])), shape=X.shape)
    stored.sort_indices()
    assert stored.nnz == X.nnz + 50 and stored.has_canonical_format
    with_zeros = clean.copy()
    with_zeros.X = stored
    path = tmp_path / "zeros.h5ad"
    with_zeros.write_h5ad(path)
    scores = []
    for adata in (clean, with_zeros, anndata.read_h5ad(path, backed="r")):
        model = trained(adata)
        torch.manual_seed(0)
        scores.append(model.get_reconstruction_error())
    assert with_zeros.X.nnz == X.nnz + 50  # the user's matrix untouched
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-5)
    np.testing.assert_allclose(scores[2], scores[0], rtol=1e-5)
