"""Integration scores: agreement with textbook definitions and the expected ordering on
embeddings built with known structure."""
import numpy as np
import pandas as pd
import pytest

from cellvi.metrics import (adjusted_rand_index, graph_connectivity, ilisi, integration_scores,
                            normalized_mutual_info, silhouette_samples)


def _blobs(n_per=150, n_labels=4, n_batches=3, batch_shift=0.0, seed=0):
    """Labels as well-separated blobs; each batch shifted by ``batch_shift`` along a free axis."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_labels), n_per)
    batches = rng.integers(n_batches, size=len(labels))
    X = rng.normal(0.0, 0.5, (len(labels), 6))
    X[np.arange(len(labels)), labels] += 8.0
    X[:, 5] += batches * batch_shift
    return X, batches, labels


def test_silhouette_matches_its_definition_on_a_tiny_case():
    X = np.array([[0.0], [1.0], [5.0], [7.0]])
    codes = np.array([0, 0, 1, 1])
    # cell 0: a = 1, b = mean(5, 7) = 6 -> 5/6; cell 2: a = 2, b = mean(5, 4) = 4.5 -> 2.5/4.5
    expected = np.array([5 / 6, (5 - 1) / 5, 2.5 / 4.5, (6.5 - 2) / 6.5])
    np.testing.assert_allclose(silhouette_samples(X, codes), expected, rtol=1e-12)
    assert silhouette_samples(X, np.array([0, 1, 1, 1]))[0] == 0.0  # a cluster of one


def test_nmi_and_ari_on_known_labelings():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_info(a, np.array([2, 2, 0, 0, 1, 1])) == pytest.approx(1.0)
    assert adjusted_rand_index(a, np.array([2, 2, 0, 0, 1, 1])) == pytest.approx(1.0)
    # a worked example: contingency [[2, 0], [1, 1], [0, 2]]
    b = np.array([0, 0, 0, 1, 1, 1])
    index, rows, cols, total = 1 + 1, 3 * 1, 3 + 3, 15
    expected = (index - rows * cols / total) / ((rows + cols) / 2 - rows * cols / total)
    assert adjusted_rand_index(a, b) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    assert abs(adjusted_rand_index(rng.integers(4, size=4000), rng.integers(4, size=4000))) < 0.01


def test_mixed_batches_score_higher_than_separated_ones():
    mixed = integration_scores(*_blobs(batch_shift=0.0))
    split = integration_scores(*_blobs(batch_shift=6.0))
    assert mixed["nmi"] == pytest.approx(1.0) and mixed["ari"] == pytest.approx(1.0)
    assert mixed["label_silhouette"] > 0.8
    assert mixed["ilisi"] > 0.6 and split["ilisi"] < 0.05
    assert mixed["batch_silhouette"] > split["batch_silhouette"] + 0.3
    assert mixed["graph_connectivity"] == pytest.approx(1.0)
    assert split["graph_connectivity"] < 0.7  # each label falls apart into its batches
    assert mixed["total"] > split["total"] + 0.2
    assert mixed["total"] == pytest.approx(0.6 * mixed["bio"] + 0.4 * mixed["batch"])


def test_ilisi_counts_batches_among_neighbours():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(900, 4))
    even = ilisi(X, rng.integers(3, size=900), scale=False)
    assert 2.0 < even <= 3.0  # three batches drawn at random: close to three
    assert ilisi(X, np.zeros(900, dtype=int), scale=False) == pytest.approx(1.0)


def test_unknown_labels_are_left_out_and_bad_input_is_refused():
    X, batches, labels = _blobs()
    partial = pd.Series(labels, dtype=object)
    partial[::3] = None
    scores = integration_scores(X, batches, partial)
    assert scores["nmi"] == pytest.approx(1.0)
    assert np.isnan(integration_scores(X, batches)["total"])
    assert graph_connectivity(X, labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        integration_scores(np.full((10, 2), np.nan), np.zeros(10))
    with pytest.raises(ValueError, match="values for"):
        integration_scores(X, batches[:-1], labels)
    with pytest.raises(ValueError, match="missing"):
        integration_scores(X, pd.Series(batches, dtype=object).where(np.arange(len(X)) > 0), labels)


def test_scores_with_a_single_labelled_cell():
    """One cell with a known label (the rest missing): the label scores are undefined, the
    batch mixing still measured, and no crash (the neighbour search used to fail)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    batch = rng.choice(["a", "b"], 40)
    scores = integration_scores(X, batch, ["a"] + [None] * 39)
    assert np.isnan(scores["nmi"]) and np.isfinite(scores["ilisi"])
    assert scores["graph_connectivity"] == 1.0  # one cell: its label's graph is connected
