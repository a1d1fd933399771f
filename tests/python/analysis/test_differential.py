"""Differential expression: known biology on real data, a calibrated null, error messages,
and that the AnnData is left alone."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cellvi
from cellvi.analysis._differential import _comparisons, _pair_statistics, _pairs, fdr_calls
from conftest import shared_data
from helpers import simulate_counts

ISGS = ["ISG15", "IFI6", "IFIT1", "IFIT3", "MX1", "ISG20", "IFIT2", "LY6E", "IFITM3", "OAS1"]


@pytest.fixture(scope="module")
def stim_model():
    adata = shared_data("harmony_pbmc_ctrl_stim_2000.h5ad")
    # The usual filter of rarely detected genes (kept: detected in >= 5% of cells, 2,661 of
    # 9,015); it keeps the test's training short.
    adata = adata[:, np.asarray((adata.X > 0).mean(0)).ravel() >= 0.05].copy()
    cellvi.settings.seed = 0
    cellvi.SCVI.setup_anndata(adata)
    model = cellvi.SCVI(adata)
    model.train(max_epochs=30)
    return adata, model


def test_interferon_genes_top_stim_vs_ctrl_and_null_is_quiet(stim_model):
    adata, model = stim_model
    obs_before = adata.obs.copy()
    cellvi.settings.seed = 0
    de = model.differential_expression(groupby="condition", group1="stim", group2="ctrl", mode="change")
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert len(de) == adata.n_vars and de.index.is_unique
    hits = set(ISGS) & set(de.index[:50])
    assert len(hits) >= 5, hits
    assert de.loc["ISG15", "lfc_mean"] > 1 and de.loc["ISG15", "raw_mean1"] > de.loc["ISG15", "raw_mean2"]
    assert (de["proba_de"] + de["proba_not_de"]).round(6).eq(1).all()
    assert de["proba_de"].is_monotonic_decreasing
    for column in ["bayes_factor", "scale1", "scale2", "lfc_median", "lfc_std", "lfc_min", "lfc_max",
                   "non_zeros_proportion1", "raw_normalized_mean2", "is_de_fdr_0.05"]:
        assert column in de.columns
    assert (de["comparison"] == "stim vs ctrl").all()

    ctrl = np.flatnonzero(adata.obs["condition"] == "ctrl")
    rng = np.random.default_rng(1)
    rng.shuffle(ctrl)
    null = model.differential_expression(idx1=ctrl[:500], idx2=ctrl[500:], mode="change")
    assert null["is_de_fdr_0.05"].mean() <= 0.01


def test_one_vs_rest_vanilla_and_masks(stim_model):
    adata, model = stim_model
    genes = ISGS[:4] + ["ACTB", "GAPDH"]
    de = model.differential_expression(groupby="condition", gene_list=genes, n_samples=300,
                                       m_permutation=1000)
    assert list(pd.unique(de["group1"])) == ["ctrl", "stim"] and len(de) == 2 * len(genes)
    assert {"proba_m1", "proba_m2", "bayes_factor"} <= set(de.columns)
    stim = de[de["group1"] == "stim"]
    assert (stim.loc[ISGS[:4], "proba_m1"] > 0.9).all()
    mask = (adata.obs["condition"] == "stim").to_numpy()
    by_mask = model.differential_expression(idx1=mask, gene_list=genes, n_samples=300, m_permutation=1000)
    assert set(by_mask.index) == set(genes)
    assert (by_mask["group2"] == "rest").all()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(groupby="condition", group1="stimulated"), ValueError, "group 'stimulated' not found"),
        (dict(groupby="cond"), KeyError, "obs column 'cond' not found"),
        (dict(idx1=[0, 1, 2], idx2=[2, 3]), ValueError, "overlap"),
        (dict(idx1=np.array([], dtype=int)), ValueError, "selects no cells"),
        (dict(groupby="condition", group1="stim", group2="stim"), ValueError, "both 'stim'"),
        (dict(groupby="condition", group1="stim", batch_correction=True, batchid1=["b9"]), ValueError,
         "unknown batch category"),
        (dict(groupby="condition", group1="stim", mode="fast"), ValueError, "mode must be"),
        (dict(), ValueError, "pass groupby"),
        (dict(idx1=[0, 10**6]), IndexError, "out of range"),
        (dict(groupby="condition", group1="stim", mode="change", test_mode="four"), ValueError, "test_mode"),
        (dict(groupby="condition", group1="stim", pseudocounts=-1.0), ValueError, "pseudocounts"),
    ],
)
def test_bad_requests_are_refused(stim_model, kwargs, error, message):
    _, model = stim_model
    with pytest.raises(error, match=message):
        model.differential_expression(**kwargs)


@pytest.mark.parametrize("n_pairs", [7, 8])  # odd and even (the median is the lower middle draw)
@pytest.mark.parametrize("mode,test_mode", [("change", "three"), ("change", "two"), ("vanilla", "three")])
def test_pair_statistics_equal_a_direct_float64_computation(n_pairs, mode, test_mode):
    rng = np.random.default_rng(0)
    s1 = rng.gamma(0.5, size=(n_pairs, 300)) * 1e-3  # 300 genes: more than one gene chunk
    s2 = rng.gamma(0.5, size=(n_pairs, 300)) * 2e-3
    s1[:, :5] = s2[:, :5] = 0  # genes neither group expresses: every LFC ties at zero
    s1, s2 = s1.astype(np.float32), s2.astype(np.float32)
    by_gene = [torch.from_numpy(np.ascontiguousarray(s.T)) for s in (s1, s2)]
    offset, delta = 1e-4, 0.25
    unbatched = np.full(n_pairs, "", dtype=object)
    stats = _pair_statistics(*by_gene, mode, delta, offset, _pairs(unbatched, unbatched, None, torch.Generator()),
                             test_mode)

    def lfc(o):
        return np.log2(s1.astype(np.float64) + o) - np.log2(s2.astype(np.float64) + o)

    # One-to-one pairs are drawn in random order, with the generator's permutation.
    s2 = s2[torch.randperm(n_pairs, generator=torch.Generator()).numpy()]
    if mode == "change":
        up, down = (lfc(offset) >= delta).mean(0), (lfc(offset) < -delta).mean(0)
        np.testing.assert_array_equal(stats["proba_de"], np.maximum(up, down) if test_mode == "three" else up + down)
        summary = lfc(1e-3 * offset)
    else:
        np.testing.assert_array_equal(stats["proba_m1"], (s1 > s2).mean(0))
        summary = lfc(offset)
    lower_middle = np.sort(summary, 0)[(n_pairs - 1) // 2]
    expected = {"lfc_mean": summary.mean(0), "lfc_median": lower_middle, "lfc_std": summary.std(0, ddof=1),
                "lfc_min": summary.min(0), "lfc_max": summary.max(0)}
    for key, value in expected.items():
        np.testing.assert_allclose(stats[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_pairs_are_random_not_in_cell_order():
    """Samples are stored sorted by cell; pairing them in that order would match cells by
    their position in the AnnData. Both groups here rise along the cell order: paired in order
    every LFC would be 0, paired at random the LFC spread is that of two independent draws."""
    n = 4000
    trend = np.exp(np.linspace(-3, 3, n, dtype=np.float32))[None, :] * 1e-4  # 1 gene x n samples
    unbatched = np.full(n, "", dtype=object)
    stats = _pair_statistics(torch.from_numpy(trend.copy()), torch.from_numpy(trend.copy()), "vanilla", 0.25, 0.0,
                             _pairs(unbatched, unbatched, None, torch.Generator().manual_seed(0)))
    spread_of_independent_pairs = np.sqrt(2) * np.log2(trend).std()
    assert 0.9 < stats["lfc_std"][0] / spread_of_independent_pairs < 1.1


@pytest.mark.parametrize("m_permutation", [None, 600])
def test_batch_corrected_pairs_meet_within_a_batch(m_permutation):
    batch1 = np.repeat(np.array(["a", "b", "c"], dtype=object), 100)
    batch2 = np.repeat(np.array(["a", "b", "c"], dtype=object), 100)
    first, second = _pairs(batch1, batch2, m_permutation, torch.Generator().manual_seed(0))
    first = np.arange(300) if first is None else first.numpy()
    second = second.numpy()
    np.testing.assert_array_equal(batch1[first], batch2[second])
    assert len(second) == (300 if m_permutation is None else 600)
    assert all((batch1[first] == b).sum() == len(second) // 3 for b in "abc")
    # Groups generated in different batches (a confounded design): pairs ignore batches.
    first, second = _pairs(batch1, np.repeat(np.array(["d"], dtype=object), 300), None, torch.Generator())
    assert len(second) == 300 and len(np.unique(batch1[first.numpy() if first is not None else np.arange(300)])) == 3


def test_a_genes_result_does_not_depend_on_gene_list(stim_model):
    adata, model = stim_model
    kept = ISGS[:3] + ["ACTB"]
    results = []
    for gene_list in (None, kept, kept[::-1]):
        cellvi.settings.seed = 0
        de = model.differential_expression(groupby="condition", group1="stim", group2="ctrl", mode="change",
                                           n_samples=500, gene_list=gene_list)
        results.append(de.loc[kept])
    for other in results[1:]:
        for column in ["proba_de", "lfc_mean", "lfc_std", "pseudocounts", "scale1", "raw_mean2"]:
            np.testing.assert_allclose(other[column], results[0][column], rtol=1e-6, err_msg=column)


def test_fdr_calls_control_the_expected_fdr():
    p = np.array([0.99, 0.2, 0.97, 0.9, 0.5])
    calls = fdr_calls(p, 0.05)
    # Top three (0.99, 0.97, 0.9): expected FDR (0.01 + 0.03 + 0.1) / 3 = 0.047 <= 0.05.
    np.testing.assert_array_equal(calls, [True, False, True, True, False])
    assert not fdr_calls(np.array([0.5, 0.4]), 0.05).any()


def test_markers_on_kang_normalized_expression_and_batch_corrected_de():
    adata = shared_data("kang_se_12261.h5ad")
    cellvi.settings.seed = 0
    cellvi.SCVI.setup_anndata(adata, batch_key="sample_id")
    model = cellvi.SCVI(adata)  # zinb, the default
    model.train(max_epochs=8)
    symbols = adata.var["feature"].astype(str)

    # Textbook markers: the model's normalized expression orders the main cell types as the
    # log-normalised data do, wherever those differ clearly (a ZINB model can instead explain
    # a marker's absence by zero inflation and keep its mean high where it is absent).
    types = ["CD14+ Monocytes", "B cells", "NK cells", "CD4 T cells"]
    cell_type = adata.obs["cluster_id"].astype(str).to_numpy()
    markers = {"CD79A": "B cells", "LYZ": "CD14+ Monocytes", "CD14": "CD14+ Monocytes",
               "NKG7": "NK cells", "GNLY": "NK cells", "IL7R": "CD4 T cells"}
    ids = [symbols.index[symbols == g][0] for g in markers]
    counts = adata[:, ids].X.toarray()
    per_10k = counts / np.asarray(adata.X.sum(1)).ravel()[:, None] * 1e4
    log_normalised = pd.DataFrame(np.log1p(per_10k), columns=list(markers))
    expression = model.get_normalized_expression(gene_list=ids, library_size=1e4)
    expression.columns = list(markers)
    for gene, home in markers.items():
        observed = {t: log_normalised.loc[cell_type == t, gene].mean() for t in types}
        modelled = {t: expression.loc[cell_type == t, gene].mean() for t in types}
        assert max(modelled, key=modelled.get) == home, (gene, modelled)
        for a in types:
            for b in types:
                if observed[a] - observed[b] > 0.5:
                    assert modelled[a] > 2 * modelled[b], (gene, a, b, modelled)
    de = model.differential_expression(groupby="cluster_id", batch_correction=True, n_samples=2000,
                                       mode="change")
    de["symbol"] = symbols.reindex(de.index).to_numpy()

    def top(group, n=50):  # of 1,287 genes: the most up-regulated of those called DE (many
        # monocyte genes share P(DE) near 1, so the order by P(DE) alone is nearly arbitrary)
        called = de[(de["group1"] == group) & de["is_de_fdr_0.05"]]
        return set(called.sort_values("lfc_mean", ascending=False).head(n)["symbol"])

    groups = set(de["group1"])
    mono = next(g for g in groups if "CD14" in g)
    b_cells = next(g for g in groups if g.lower().startswith("b"))
    nk = next(g for g in groups if "NK" in g)
    assert {"CD14", "LYZ"} & top(mono)
    assert "CD79A" in top(b_cells)
    assert {"NKG7", "GNLY"} & top(nk)
    # Calibrated with batch correction: random halves of one cell type call (almost) nothing.
    cells = np.flatnonzero(adata.obs["cluster_id"] == mono)
    np.random.default_rng(1).shuffle(cells)
    half = len(cells) // 2
    null = model.differential_expression(idx1=cells[:half], idx2=cells[half:], batch_correction=True,
                                         n_samples=2000, mode="change")
    assert null["is_de_fdr_0.05"].mean() <= 0.01


def test_groups_by_value_missing_values_and_unequal_batch_sets(sim_trained):
    """Numeric group columns match by value (1, 1.0, "1"); cells without a group are in no
    group nor in "the rest"; batch correction over different numbers of batches per group
    draws as many samples for both."""
    adata, model = sim_trained
    data = adata.copy()
    codes = pd.Categorical(data.obs["cell_type"]).codes.astype(float)
    codes[:20] = np.nan
    data.obs["type_number"] = codes  # 0.0, 1.0, 2.0 and NaN
    de = model.differential_expression(data, groupby="type_number", gene_list=["gene0"], n_samples=50)
    assert list(de["group1"]) == ["0", "1", "2"]
    one = model.differential_expression(data, groupby="type_number", group1=1, gene_list=["gene0"], n_samples=50)
    again = model.differential_expression(data, groupby="type_number", group1="1.0", gene_list=["gene0"],
                                          n_samples=50)
    assert one["group1"].iloc[0] == again["group1"].iloc[0] == "1"
    (_, _, in1, rest), = _comparisons(data, "type_number", 1, None, None, None)
    assert not np.isin(np.arange(20), np.concatenate([in1, rest])).any()  # NaN cells: neither side
    assert len(in1) + len(rest) == data.n_obs - 20
    data.obs["tag"] = pd.Series(np.where(np.arange(data.n_obs) % 3 == 0, None, "x"), index=data.obs_names,
                                dtype=object)
    with pytest.raises(ValueError, match="no cells outside group 'x'"):  # None is no group, not the rest
        _comparisons(data, "tag", None, None, None, None)
    # batch correction, one group generated in 1 batch and the other in 2 (a confounded design;
    # an untrained model: only the sampling's bookkeeping is checked)
    three = simulate_counts(n_cells=150, n_batches=3)
    cellvi.SCVI.setup_anndata(three, batch_key="batch")
    untrained = cellvi.SCVI(three, n_latent=3, n_hidden=16)
    batches = list(untrained.registry.batch_categories)
    corrected = untrained.differential_expression(groupby="cell_type", group1="type0", group2="type1",
                                                  batch_correction=True, batchid1=batches[:1],
                                                  batchid2=batches[1:], n_samples=101, gene_list=["gene0", "gene1"])
    assert len(corrected) == 2 and corrected["proba_m1"].between(0, 1).all()
