"""Posterior predictive check: shapes, sane values and a ceiling above the observed score."""
import numpy as np

import cellvi


def test_posterior_predictive_check(sim_trained):
    adata, model = sim_trained
    ppc = cellvi.criticism.posterior_predictive_check(model, indices=np.arange(200), n_samples=3)
    g, c = ppc.per_gene, ppc.per_cell
    assert list(g.index) == list(adata.var_names) and len(c) == 200
    np.testing.assert_allclose(g["observed_mean"], adata.X[:200].toarray().mean(0), rtol=1e-6)
    np.testing.assert_allclose(c["library_size"], adata.X[:200].sum(1).A.ravel())
    assert ((g["generated_zero_fraction"] >= 0) & (g["generated_zero_fraction"] <= 1)).all()
    # The model fits its own simulation: generated means track observed ones closely.
    assert np.corrcoef(np.log1p(g["observed_mean"]), np.log1p(g["generated_mean"]))[0, 1] > 0.85
    for column in ("spearman_mean", "spearman_draw", "spearman_ceiling"):
        assert c[column].between(-1, 1).all()
    # Draws carry the count noise that the posterior mean averages away.
    assert c["spearman_mean"].median() > c["spearman_draw"].median()
    assert c["spearman_mean"].median() > c["spearman_ceiling"].median()
    assert ppc.figure is not None and len(ppc.figure.axes) == 4
