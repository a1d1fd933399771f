"""Builds python/cellvi/datasets/bmmc_atac_small.h5ad (shipped; see cellvi.datasets.bmmc_atac_small).

Source: ../shared/data/granja2019_bmmc_scatac_10kpeaks.h5ad -- Granja et al. 2019 bone marrow
scATAC-seq (14,125 cells x 10,000 random peaks; fragment counts per peak), as shipped by the
epiCHAOS R package (MIT). Kept: 600 cells, 100 drawn at random (seed 0) from each of six cell
types spanning the main lineages (CD14 monocytes 1, B, naive CD4 T, CD8 central memory T, NK,
GMP), and the 2,000 peaks accessible in the most of those cells; counts unchanged (float32
CSR), obs ``cell_type`` (the source's BioClassification without its number prefix) and
``donor`` (its Group). Run: .venv/bin/python scripts/make_bmmc_atac_small.py
"""
import os
import sys
import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "..", "shared", "data", "granja2019_bmmc_scatac_10kpeaks.h5ad")
TARGET = os.path.join(ROOT, "python", "cellvi", "datasets", "bmmc_atac_small.h5ad")
TYPES = ["11_CD14.Mono.1", "17_B", "20_CD4.N1", "24_CD8.CM", "25_NK", "07_GMP"]
N_PER_TYPE, N_PEAKS, SEED = 100, 2000, 0


def main(source=SOURCE, target=TARGET):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = anndata.read_h5ad(source)
    rng = np.random.default_rng(SEED)
    labels = full.obs["BioClassification"].astype(str).to_numpy()
    cells = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == t), N_PER_TYPE, replace=False)
                                    for t in TYPES]))
    X = sp.csr_matrix(full.X[cells], dtype=np.float32)
    open_cells = np.asarray((X > 0).sum(axis=0)).ravel()
    peaks = np.sort(np.argsort(-open_cells, kind="stable")[:N_PEAKS])
    counts = sp.csr_matrix(X[:, peaks])
    counts.sort_indices()
    obs = pd.DataFrame({
        "cell_type": pd.Categorical([t.split("_", 1)[1] for t in labels[cells]]),
        "donor": pd.Categorical(full.obs["Group"].iloc[cells].astype(str)),
    }, index=full.obs_names[cells])
    small = anndata.AnnData(
        X=counts, obs=obs, var=pd.DataFrame(index=full.var_names[peaks]),
        uns={"source_note": "Granja et al. 2019 bone marrow scATAC-seq via the epiCHAOS R package "
                            "(MIT); 100 random cells (seed 0) of each of 6 types, the 2,000 peaks "
                            "open in the most of them; built by scripts/make_bmmc_atac_small.py"},
    )
    small.write_h5ad(target, compression="gzip")
    print(small, f"\n{os.path.getsize(target) / 1024:.0f} KiB -> {target}",
          f"\ndensity {counts.nnz / np.prod(counts.shape):.3f}, max {counts.max()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
