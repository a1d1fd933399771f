"""Builds python/cellvi/datasets/lymphnode_reference_small.h5ad and lymphnode_visium_small.h5ad
(shipped; see cellvi.datasets.lymphnode_reference_small / lymphnode_visium_small).

Source: ../shared/data/spacexr_lymphnode_reference_330.h5ad (330 single cells x 10,237 genes,
11 cell types, 30 each) and spacexr_lymphnode_visium_1000.h5ad (1,000 Visium spots x 2,000
genes, coordinates in obsm["spatial"]), from the spacexr R package (GPL-3). Kept: every cell
and every spot, and the 300 genes of the spots that best tell the reference's cell types
apart (highest variance across the types of their mean log-normalised expression, among
genes with counts in at least 10% of the reference's cells); counts unchanged (float32 CSR).
The spots' coordinates are also obs columns ``x`` and ``y`` (for plots from R metadata).
Run: .venv/bin/python scripts/make_lymphnode_spatial_small.py
"""
import os
import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
TARGET = os.path.join(ROOT, "python", "cellvi", "datasets")
N_GENES = 300
NOTE = ("spacexr R package (GPL-3) lymph node {what}; the 300 genes of the Visium spots that best tell the "
        "reference's 11 cell types apart; counts unchanged; built by scripts/make_lymphnode_spatial_small.py")


def main():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = anndata.read_h5ad(os.path.join(DATA, "spacexr_lymphnode_reference_330.h5ad"))
        st = anndata.read_h5ad(os.path.join(DATA, "spacexr_lymphnode_visium_1000.h5ad"))
    shared = [g for g in st.var_names if g in set(ref.var_names)]
    R = sp.csr_matrix(ref[:, shared].X, dtype=np.float64)
    logn = sp.diags(1e4 / np.asarray(R.sum(axis=1)).ravel()) @ R
    logn.data = np.log1p(logn.data)
    types = ref.obs["cell_type"].astype(str).to_numpy()
    means = np.stack([np.asarray(logn[types == t].mean(axis=0)).ravel() for t in np.unique(types)])
    detected = np.asarray((R > 0).mean(axis=0)).ravel()
    score = np.where(detected >= 0.1, means.var(axis=0), -1.0)
    genes = [shared[i] for i in np.sort(np.argsort(-score, kind="stable")[:N_GENES])]
    out = {}
    small_ref = anndata.AnnData(
        X=sp.csr_matrix(ref[:, genes].X, dtype=np.float32),
        obs=pd.DataFrame({"cell_type": pd.Categorical(types)}, index=ref.obs_names),
        var=pd.DataFrame(index=pd.Index(genes)), uns={"source_note": NOTE.format(what="single-cell reference")})
    coords = np.asarray(st.obsm["spatial"], dtype=np.float64)
    X = sp.csr_matrix(st[:, genes].X, dtype=np.float32)
    keep = np.asarray(X.sum(axis=1)).ravel() > 0  # a spot without counts in these genes says nothing
    small_st = anndata.AnnData(
        X=X[keep], obs=pd.DataFrame({"x": coords[keep, 0], "y": coords[keep, 1]}, index=st.obs_names[keep]),
        var=pd.DataFrame(index=pd.Index(genes)), obsm={"spatial": coords[keep]},
        uns={"source_note": NOTE.format(what="Visium spots")})
    for name, ad in (("lymphnode_reference_small", small_ref), ("lymphnode_visium_small", small_st)):
        ad.X.sort_indices()
        path = os.path.join(TARGET, f"{name}.h5ad")
        ad.write_h5ad(path, compression="gzip")
        out[name] = os.path.getsize(path)
        print(ad, f"\n{out[name] / 1024:.0f} KiB -> {path}")
    print(f"total {sum(out.values()) / 1024:.0f} KiB; spots dropped for no counts: {int((~keep).sum())}")


if __name__ == "__main__":
    main()
