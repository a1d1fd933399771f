"""Several workers on one study in a real PostgreSQL server (Debian's postgresql package): a
server started in a temporary directory on a free 127.0.0.1 port, stopped at the end."""
import os
import pwd

import pytest
import torch

import cellvi
from cellvi.autotune import choice, loguniform, run_autotune, worker
from cellvi.autotune._postgres import local_postgres, postgres_bin
from helpers import simulate_counts

pytest.importorskip("optuna")
pytest.importorskip("psycopg", reason="psycopg (pip install 'cellvi[autotune]') is needed for PostgreSQL")


@pytest.fixture(scope="module")
def postgres_url():
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found: apt install postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
    with local_postgres() as url:
        yield url


def test_two_local_workers_share_one_postgres_study(postgres_url, tmp_path, capsys):
    torch.set_num_threads(1)
    adata = simulate_counts(n_cells=200, n_genes=30)
    cellvi.SCVI.setup_anndata(adata, batch_key="batch")
    space = {"model_params": {"n_latent": choice([3, 10])}, "train_params": {"lr": loguniform(1e-3, 3e-2)}}
    res = run_autotune(cellvi.SCVI, adata, metric="elbo_validation", search_space=space, num_samples=6,
                       max_epochs=3, scheduler=None, storage=postgres_url, study_name="two_workers", n_jobs=2,
                       save_dir=str(tmp_path), plot=False)
    df = res.results
    # exactly the trials asked for, none lost or doubled, every one finished
    assert list(df["trial"]) == list(range(6)) and (df["state"] == "complete").all()
    assert df.iloc[0]["defaults"]
    # the two worker processes (not this one) ran them, both of them
    workers = {t.user_attrs["worker"] for t in res.study.trials}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert res.best_metric >= res.default_metric
    assert res.storage.startswith("postgresql://tuner@127.0.0.1")
    # the driver printed a line per trial the workers finished
    assert capsys.readouterr().out.count("[autotune] trial") == 6
    # the best model was saved by a worker into the run directory and loads on the AnnData
    assert res.model.is_trained and res.model.adata is adata

    # a worker joining later (as from another machine; here in this process) finds nothing
    # left to do, and the command line names a study that does not exist
    assert worker(postgres_url, "two_workers", verbose=False) == 0
    from cellvi.autotune.__main__ import main

    assert main(["worker", "--storage", postgres_url, "--study-name", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no study named 'nope'" in err and "two_workers" in err


def test_a_database_that_does_not_exist_is_refused(postgres_url, tmp_path):
    adata = simulate_counts(n_cells=60, n_genes=10)
    cellvi.SCVI.setup_anndata(adata)
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(ConnectionError, match="no_such_db.*createdb"):
        run_autotune(cellvi.SCVI, adata, storage=url, max_epochs=1, num_samples=1, save_dir=str(tmp_path / "r"))
    assert not os.path.exists(tmp_path / "r")
