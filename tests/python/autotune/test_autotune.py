"""run_autotune on tiny data: the defaults trial, the fixed split, SQLite resume, pruning,
the best model, the plot, other models, and bad input refused before anything starts."""
import os

import numpy as np
import pytest
import torch

import cellvi
from cellvi.autotune import choice, loguniform, run_autotune
from helpers import simulate_counts

pytest.importorskip("optuna")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def adata():
    a = simulate_counts(n_cells=160, n_genes=30)
    cellvi.SCVI.setup_anndata(a, batch_key="batch")
    return a


SPACE = {"model_params": {"n_latent": choice([3, 10]), "gene_likelihood": choice(["zinb", "nb"])},
         "train_params": {"lr": loguniform(1e-3, 3e-2)}}


def test_search_on_sqlite_resumes_and_returns_the_best_model(adata, tmp_path, capsys):
    res = run_autotune(cellvi.SCVI, adata, metric="marginal_ll", search_space=SPACE, num_samples=3,
                       max_epochs=2, scheduler=None, save_dir=str(tmp_path), metric_kwargs={"n_mc_samples": 10})
    df = res.results
    assert list(df["trial"]) == [0, 1, 2] and (df["state"] == "complete").all()
    assert (df["epochs"] == 2).all() and (df["seconds"] > 0).all()
    # trial 0 is the model's defaults
    first = df.iloc[0]
    assert first["defaults"] and first["n_latent"] == 10 and first["gene_likelihood"] == "zinb"
    assert first["lr"] == pytest.approx(1e-3)
    assert res.default_metric == pytest.approx(first["metric"])
    # the best is at least as good as the defaults, and its parameters are split by section
    assert res.best_metric >= res.default_metric
    assert res.best_metric == pytest.approx(df["metric"].max())
    assert set(res.best_params) == {"model_params", "train_params"}
    assert set(res.best_params["train_params"]) == {"lr"}
    # 40 of 160 cells held out, the same for every trial
    assert len(res.test_indices) == 40
    # a progress line per trial
    out = capsys.readouterr().out
    assert out.count("[autotune] trial") == 3 and "model defaults" in out
    # the best model is trained, saved in the run directory and on the whole AnnData
    assert res.model.is_trained and res.model.adata is adata
    assert os.path.exists(os.path.join(res.model_dir, "model.json"))
    assert res.model.init_kwargs["n_latent"] == res.best_params["model_params"]["n_latent"]
    assert res.model.get_latent_representation().shape == (160, res.best_params["model_params"]["n_latent"])
    assert os.path.exists(os.path.join(res.run_dir, "study.db"))
    assert res.plot_path and os.path.getsize(res.plot_path) > 0

    # Trials are reproducible on the fixed split: training the defaults again gives trial 0's metric.
    from cellvi.autotune._tune import CONFIG_ATTR, _Context

    ctx = _Context(res.study.user_attrs[CONFIG_ATTR], adata)
    assert np.array_equal(ctx.test_idx, res.test_indices)
    _, value, epochs = ctx.train(res.study.trials[0].params)
    assert epochs == 2 and value == pytest.approx(res.default_metric, rel=1e-5)

    # Calling again with the same study adds trials (no second defaults trial).
    again = run_autotune(cellvi.SCVI, adata, metric="marginal_ll", search_space=SPACE, num_samples=2,
                         max_epochs=2, scheduler=None, save_dir=str(tmp_path), metric_kwargs={"n_mc_samples": 10},
                         plot=False, verbose=False)
    assert list(again.results["trial"]) == [0, 1, 2, 3, 4]
    assert again.results["defaults"].sum() == 1
    assert again.best_metric >= res.best_metric
    assert np.array_equal(again.test_indices, res.test_indices)
    # ... but not with other settings under the same name
    with pytest.raises(ValueError, match="max_epochs differ"):
        run_autotune(cellvi.SCVI, adata, metric="marginal_ll", search_space=SPACE, num_samples=1, max_epochs=3,
                     scheduler=None, save_dir=str(tmp_path), metric_kwargs={"n_mc_samples": 10})


def test_pruning_stops_bad_trials_after_an_epoch(adata, tmp_path):
    # A learning rate of 1e-6 barely moves from the initial weights: after one epoch its
    # held-out ELBO is far below the defaults', and successive halving stops it there.
    space = {"train_params": {"lr": choice([1e-6])}}  # the default 1e-3 joins the choices
    res = run_autotune(cellvi.SCVI, adata, metric="elbo_validation", search_space=space, num_samples=4,
                       max_epochs=4, scheduler="asha", scheduler_kwargs={"min_resource": 1, "reduction_factor": 2, "n_startup_trials": 1},
                       seed=1, save_dir=str(tmp_path), plot=False, verbose=False, train_kwargs={"batch_size": 32})
    df = res.results
    slow = df[(df["lr"] < 1e-5)]
    assert len(slow) >= 1
    assert (slow["state"] == "pruned").all() and (slow["epochs"] < 4).all()
    assert df.iloc[0]["state"] == "complete" and df.iloc[0]["epochs"] == 4
    # the held-out value was reported after every epoch of a complete trial
    assert sorted(res.study.trials[0].intermediate_values) == [1, 2, 3, 4]
    assert res.best_params["train_params"]["lr"] == pytest.approx(1e-3)


def test_metric_function_and_minimised_metric(adata, tmp_path):
    def neg_reconstruction(model, test_adata):
        assert test_adata.n_obs == 40
        return -model.get_reconstruction_error(test_adata)

    res = run_autotune(cellvi.SCVI, adata, metric=neg_reconstruction, search_space=SPACE, num_samples=2,
                       max_epochs=1, scheduler="median", save_dir=str(tmp_path), plot=False, verbose=False)
    assert res.mode == "max" and (res.results["state"] == "complete").all()
    res = run_autotune(cellvi.SCVI, adata, metric="reconstruction_validation", search_space=SPACE, num_samples=2,
                       max_epochs=1, scheduler=None, save_dir=str(tmp_path), plot=False, verbose=False)
    assert res.mode == "min" and res.best_metric == res.results["metric"].min()


@pytest.mark.filterwarnings("ignore:.*open in no cell", "ignore:.*reads every value above 0")
def test_other_models_use_their_declared_spaces(tmp_path):
    import cellvi.datasets

    cite = cellvi.datasets.pbmc_cite_small()[:120, :60].copy()
    cellvi.TOTALVI.setup_anndata(cite, protein_expression_obsm_key="protein_expression")
    res = run_autotune(cellvi.TOTALVI, cite, metric="elbo_validation", num_samples=2, max_epochs=1,
                       scheduler=None, save_dir=str(tmp_path), plot=False, verbose=False,
                       train_kwargs={"batch_size": 64})
    assert "n_layers_encoder" in res.results and res.results.iloc[0]["n_latent"] == 20
    assert res.results["state"].eq("complete").all()

    atac = cellvi.datasets.bmmc_atac_small()[::5, :500].copy()
    cellvi.PEAKVI.setup_anndata(atac)
    res = run_autotune(cellvi.PEAKVI, atac, metric="marginal_ll", num_samples=2, max_epochs=1, scheduler=None,
                       save_dir=str(tmp_path), plot=False, verbose=False, metric_kwargs={"n_mc_samples": 5})
    assert res.results.iloc[0]["defaults"] and res.results["state"].eq("complete").all()
    # The defaults trial shows the sizes PEAKVI derives from the data (None in its signature).
    defaults = res.results.iloc[0]
    model = cellvi.PEAKVI(atac)
    assert defaults["n_hidden"] == model.module.n_hidden and defaults["n_latent"] == model.module.n_latent


def test_bad_input_is_refused_before_anything_starts(adata, tmp_path):
    save = str(tmp_path / "runs")
    kw = dict(max_epochs=1, num_samples=1, save_dir=save, verbose=False)
    with pytest.raises(ValueError, match=r"takes no model parameter\(s\) \['n_latents'\]"):
        run_autotune(cellvi.SCVI, adata, search_space={"model_params": {"n_latents": choice([5])}}, **kw)
    with pytest.raises(ValueError, match=r"train takes no parameter\(s\) \['learning_rate'\]"):
        run_autotune(cellvi.SCVI, adata, search_space={"train_params": {"learning_rate": choice([1e-3])}}, **kw)
    with pytest.raises(ValueError, match="may not set"):
        run_autotune(cellvi.SCVI, adata, search_space={"train_params": {"train_size": choice([0.5])}}, **kw)
    with pytest.raises(ValueError, match="search space is empty"):
        run_autotune(cellvi.SCVI, adata, search_space={"model_params": {}}, **kw)
    with pytest.raises(ValueError, match="gene_likelihood='gauss' is refused"):
        run_autotune(cellvi.SCVI, adata, search_space={"model_params": {"gene_likelihood": choice(["nb", "gauss"])}},
                     **kw)
    with pytest.raises(ValueError, match="unknown metric 'elbo'"):
        run_autotune(cellvi.SCVI, adata, metric="elbo", **kw)
    with pytest.raises(ValueError, match="CellAssign cannot compute the marginal likelihood"):
        run_autotune(cellvi.CellAssign, adata, metric="marginal_ll", **kw)
    with pytest.raises(ValueError, match="not LinearSCVI.setup_anndata"):
        run_autotune(cellvi.LinearSCVI, adata, **kw)
    with pytest.raises(ConnectionError, match=r"cannot use the study storage postgresql://nobody:\*\*\*@127.0.0.1:9"):
        run_autotune(cellvi.SCVI, adata, storage="postgresql://nobody:secret@127.0.0.1:9/nothing", **kw)
    with pytest.raises(ValueError, match="not a database URL"):
        run_autotune(cellvi.SCVI, adata, storage="redis://localhost", **kw)
    with pytest.raises(ValueError, match="importable"):
        run_autotune(cellvi.SCVI, adata, metric=lambda m, a: 0.0, n_jobs=2, **kw)
    with pytest.raises(ValueError, match="max_epochs is given twice"):
        run_autotune(cellvi.SCVI, adata, train_kwargs={"max_epochs": 5}, **kw)
    assert not os.path.exists(save)  # nothing was started


def test_a_trial_started_past_the_target_is_stopped_and_left_out(adata, tmp_path):
    # Two workers can both see one slot left; the one whose trial is numbered past the target
    # must stop at once and not count. Here a worker starts a trial on a study already full.
    from cellvi.autotune import trials_dataframe
    from cellvi.autotune._tune import CONFIG_ATTR, OVER_BUDGET_ATTR, _Context, _objective

    res = run_autotune(cellvi.SCVI, adata, metric="marginal_ll", search_space=SPACE, num_samples=2,
                       max_epochs=1, scheduler=None, save_dir=str(tmp_path), metric_kwargs={"n_mc_samples": 5},
                       plot=False, verbose=False)
    study = res.study
    ctx = _Context(study.user_attrs[CONFIG_ATTR], adata)
    study.optimize(_objective(ctx, None), n_trials=1)
    extra = study.trials[-1]
    assert extra.number == 2 and extra.state.name == "PRUNED"
    assert extra.user_attrs[OVER_BUDGET_ATTR] is True and "epochs" not in extra.user_attrs
    df = trials_dataframe(study)
    assert list(df["trial"]) == [0, 1] and (df["state"] == "complete").all()


def test_a_repeated_parameter_set_reuses_the_finished_trials_result(adata, tmp_path, capsys):
    # One parameter with two values and four trials: TPE must repeat a set at least twice.
    space = {"model_params": {"n_latent": choice([3, 10])}}
    res = run_autotune(cellvi.SCVI, adata, metric="marginal_ll", search_space=space, num_samples=4,
                       max_epochs=1, scheduler=None, save_dir=str(tmp_path), metric_kwargs={"n_mc_samples": 5},
                       plot=False)
    df = res.results
    assert len(df) == 4 and (df["state"] == "complete").all()
    repeats = df[df["duplicate_of"] >= 0]
    assert len(repeats) >= 2
    for _, row in repeats.iterrows():
        original = df.set_index("trial").loc[row["duplicate_of"]]
        assert original["duplicate_of"] == -1 and original["n_latent"] == row["n_latent"]
        assert row["metric"] == original["metric"] and row["seconds"] == 0.0
        assert row["epochs"] == original["epochs"]
    out = capsys.readouterr().out
    assert "its result reused" in out
    # the best model is the original trial's saved one, even when a repeat ties with it
    assert "training the best trial" not in out
    assert res.model.init_kwargs["n_latent"] == res.best_params["model_params"]["n_latent"]


def test_a_searched_max_epochs_starts_from_the_runs_max_epochs(adata, tmp_path):
    # The defaults trial trains what an unsearched run trains (the run's max_epochs), not a
    # number of epochs drawn from the choices; the choices gain that value.
    space = {"train_params": {"max_epochs": choice([1, 2])}}
    res = run_autotune(cellvi.SCVI, adata, metric="elbo_validation", search_space=space, num_samples=2,
                       max_epochs=3, scheduler=None, save_dir=str(tmp_path), plot=False, verbose=False)
    first = res.results.iloc[0]
    assert first["defaults"] and first["max_epochs"] == 3 and first["epochs"] == 3
    assert set(res.results["max_epochs"]) <= {1, 2, 3}
