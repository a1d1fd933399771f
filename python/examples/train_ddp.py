"""Train scVI data-parallel over several processes (GPUs, or CPU cores) with torchrun.

One machine, 4 GPUs (or 4 CPU processes when there is no GPU):

    torchrun --nproc_per_node=4 python/examples/train_ddp.py data.h5ad batch model_dir

Several machines (run the same line on each, with its own --node-rank):

    torchrun --nnodes=2 --nproc_per_node=4 --node-rank=0 \
        --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        python/examples/train_ddp.py data.h5ad batch model_dir

Every process runs this whole script on the whole data set; ``train(strategy="ddp")`` gives
each its slice of every minibatch (``batch_size`` cells per process) and averages the
gradients, so the run equals one process with a minibatch ``processes x batch_size`` large.
All processes end with the same model; rank 0 alone prints and writes it. Without arguments
the script trains on simulated counts and writes nothing.
"""
import sys

import numpy as np
import torch

import cellvi


def simulated_counts(n_cells: int = 4000, n_genes: int = 500):
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    types = rng.integers(4, size=n_cells)
    profiles = rng.gamma(0.6, 1.0, size=(4, n_genes))
    mean = profiles[types] / profiles[types].sum(1, keepdims=True) * rng.lognormal(np.log(500), 0.3, (n_cells, 1))
    counts = rng.poisson(rng.gamma(5.0, mean / 5.0)).astype(np.float32)
    obs = pd.DataFrame({"batch": rng.choice(["a", "b"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    return anndata.AnnData(sp.csr_matrix(counts), obs=obs)


def main(argv):
    import anndata

    path, batch_key, model_dir = (argv + [None, None, None])[:3]
    adata = anndata.read_h5ad(path) if path else simulated_counts()
    batch_key = batch_key or ("batch" if path is None else None)
    cellvi.settings.seed = 0  # the processes agree on rank 0's seed in any case
    cellvi.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = cellvi.SCVI(adata)
    model.train(max_epochs=20, batch_size=128, strategy="ddp")
    rank = torch.distributed.get_rank()
    if rank == 0:
        print(f"{torch.distributed.get_world_size()} processes; validation ELBO by epoch:",
              np.round(model.history["elbo_validation"].to_numpy(), 2))
    if model_dir:
        model.save(model_dir, overwrite=True)  # a no-op on every rank but 0
    torch.distributed.barrier()  # every rank done before the group goes
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
