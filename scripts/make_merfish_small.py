"""Builds python/cellvi/datasets/merfish_reference_small.h5ad and merfish_spatial_small.h5ad
(shipped; see cellvi.datasets.merfish_reference_small / merfish_spatial_small), the pair that
gimVI's examples and the vignette impute genes with.

Source: ../shared/data/spacexr_merfish_reference_1308.h5ad and spacexr_merfish_spatial_750.h5ad
-- the MERFISH example of the spacexr R package (Cable et al. 2022; licence GPL-3): a
single-cell RNA reference of the mouse hypothalamic preoptic region (1,308 cells x 134 genes,
14 cell types in obs ``cell_type``) and MERFISH cells (750 cells x the same 134 genes, with
coordinates in obs ``x``, ``y`` and obsm ``spatial``). Both are small, so all genes and all
cells are kept but the 4 reference cells with no counts of these genes (the models refuse
empty cells); counts unchanged (float32 CSR), gzip-compressed.
Run: .venv/bin/python scripts/make_merfish_small.py
"""
import os
import sys
import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "python", "cellvi", "datasets")
NOTE = ("spacexr R package (Cable et al. 2022, GPL-3), MERFISH example "
        "(dmcable/spacexr inst/extdata @744153c6); all genes, all cells with counts; built by scripts/make_merfish_small.py")


def _read(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return anndata.read_h5ad(os.path.join(DATA, name))


def main(out=OUT):
    ref = _read("spacexr_merfish_reference_1308.h5ad")
    spatial = _read("spacexr_merfish_spatial_750.h5ad")
    if list(ref.var_names) != list(spatial.var_names):
        raise SystemExit("the reference and spatial genes differ from what this script expects")
    ref = ref[np.asarray(ref.X.sum(axis=1)).ravel() > 0].copy()
    parts = {
        "merfish_reference_small": anndata.AnnData(
            X=sp.csr_matrix(ref.X, dtype=np.float32),
            obs=pd.DataFrame({"cell_type": pd.Categorical(ref.obs["cell_type"].astype(str))}, index=ref.obs_names),
            var=pd.DataFrame(index=ref.var_names), uns={"source_note": "reference: " + NOTE}),
        "merfish_spatial_small": anndata.AnnData(
            X=sp.csr_matrix(spatial.X, dtype=np.float32),
            obs=spatial.obs[["x", "y"]].astype(np.float64), var=pd.DataFrame(index=spatial.var_names),
            obsm={"spatial": np.asarray(spatial.obsm["spatial"], dtype=np.float64)},
            uns={"source_note": "MERFISH cells: " + NOTE}),
    }
    for name, adata in parts.items():
        adata.X.sort_indices()
        target = os.path.join(out, f"{name}.h5ad")
        adata.write_h5ad(target, compression="gzip")
        print(adata, f"\n{os.path.getsize(target) / 1024:.0f} KiB -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
