"""Posterior predictive check: shapes, sane values, and each observed score near its model reference."""
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
    pairs = {"spearman_draw": "spearman_draw_vs_draw", "spearman_mean": "spearman_draw_vs_mean"}
    for observed, reference in pairs.items():
        assert c[observed].between(-1, 1).all() and c[reference].between(-1, 1).all()
        # Count noise, not the model, limits the references: they rise with library size.
        assert np.corrcoef(np.log(c["library_size"]), c[reference])[0, 1] > 0.1
    # Draws carry the count noise that the posterior mean averages away, in both pairs.
    assert c["spearman_mean"].median() > c["spearman_draw"].median()
    assert c["spearman_draw_vs_mean"].median() > c["spearman_draw_vs_draw"].median()
    assert ppc.figure is not None and len(ppc.figure.axes) == 4
