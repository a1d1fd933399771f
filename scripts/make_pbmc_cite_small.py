"""Builds python/cellvi/datasets/pbmc_cite_small.h5ad (shipped; see cellvi.datasets.pbmc_cite_small).

Source: ../shared/data/totalvi_pbmc10k_cite_6855.h5ad -- 10x Genomics pbmc_10k_protein_v3
(CC BY 4.0), 6,855 cells x 4,000 genes with 14 TotalSeq-B proteins, as prepared for the
totalVI paper (YosefLab/totalVI_reproducibility). Kept: 400 cells drawn at random (seed 0)
and the 500 genes of highest variance of log1p(counts per 10,000) over those cells; raw
counts (float32 CSR, as in the source) and the 14 protein counts (float64). Run: .venv/bin/python scripts/make_pbmc_cite_small.py
"""
import os
import sys
import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "..", "shared", "data", "totalvi_pbmc10k_cite_6855.h5ad")
TARGET = os.path.join(ROOT, "python", "cellvi", "datasets", "pbmc_cite_small.h5ad")
N_CELLS, N_GENES, SEED = 400, 500, 0


def main(source=SOURCE, target=TARGET):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = anndata.read_h5ad(source)
    rng = np.random.default_rng(SEED)
    cells = np.sort(rng.choice(full.n_obs, N_CELLS, replace=False))
    X = sp.csr_matrix(full.X[cells])
    norm = sp.csr_matrix(X.multiply(1e4 / np.asarray(X.sum(axis=1))))
    norm.data = np.log1p(norm.data)
    mean = np.asarray(norm.mean(axis=0)).ravel()
    var = np.asarray(norm.multiply(norm).mean(axis=0)).ravel() - mean**2
    genes = np.sort(np.argsort(-var, kind="stable")[:N_GENES])
    counts = sp.csr_matrix(X[:, genes])
    obs_names = full.obs_names[cells]
    proteins = full.obsm["protein_expression"].iloc[cells]
    small = anndata.AnnData(
        X=counts,
        obs=pd.DataFrame({"batch": pd.Categorical(full.obs["batch"].iloc[cells].astype(str))},
                         index=obs_names),
        var=pd.DataFrame(index=full.var_names[genes]),
        obsm={"protein_expression": proteins.set_axis(obs_names, axis=0)},
        uns={"source_note": "10x Genomics pbmc_10k_protein_v3 (CC BY 4.0), via "
                            "YosefLab/totalVI_reproducibility; 400 random cells (seed 0), "
                            "500 most variable genes; built by scripts/make_pbmc_cite_small.py"},
    )
    small.write_h5ad(target, compression="gzip")
    print(small, f"\n{os.path.getsize(target) / 1024:.0f} KiB -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
