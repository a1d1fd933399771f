"""R objects from Python (through rpy2): read a Seurat or SingleCellExperiment ``.rds``.

This subpackage is not imported by ``import cellvi``; import it explicitly::

    from cellvi.interop import read_rds

It needs the optional dependency rpy2 (``pip install "cellvi[r]"``; rpy2 3.5.x for R < 4.5),
and R with SeuratObject and/or SingleCellExperiment installed. rpy2 is imported only when a
function here is called.
"""
from ._rds import read_rds

__all__ = ["read_rds"]
