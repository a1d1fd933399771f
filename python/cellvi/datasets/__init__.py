"""Small real data sets shipped with cellvi, for examples and smoke tests."""
from __future__ import annotations

import os


def pbmc_small():
    """80 PBMCs x 230 genes (raw counts), Seurat's ``pbmc_small``.

    The same cells ship with R's SeuratObject (MIT licence) as ``SeuratObject::pbmc_small``;
    obs holds Seurat's clusters (``RNA_snn_res.1``), ``groups`` and ``letter.idents``.

    Examples
    --------
    >>> import cellvi.datasets
    >>> adata = cellvi.datasets.pbmc_small()
    >>> adata.shape
    (80, 230)
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "pbmc_small.h5ad"))
