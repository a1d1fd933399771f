"""Read a Seurat or SingleCellExperiment saved as ``.rds`` into an AnnData, through rpy2.

The R side is the R package's own code (``.rds_read`` in R/rds.R, on the conversion code of
R/convert.R that ``as_anndata()`` uses), loaded once per process: it reads the object and
returns a list of plain R vectors: the count matrix as the slots of a dgCMatrix, data-frame
columns as (type, values[, levels]) and names as one joined string. The Python side turns
those into NumPy arrays through their buffers (no per-element loops, no dense copies).
"""
from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["read_rds"]

_RPY2_MISSING = (
    'read_rds needs the optional dependency rpy2: pip install "cellvi[r]" '
    "(or pip install \"rpy2>=3.5,<3.6\"; rpy2 3.5.x is the series for R < 4.5, "
    "rpy2 3.6 needs R >= 4.5)"
)

# Record separator: names are sent from R as one string joined with it, because rpy2 converts
# a character vector string by string, far more slowly than R's paste and one split here. When
# a value contains it, the R side sends the vector as it is instead.
_SEP = "\x1e"
_NA_INTEGER = np.iinfo(np.int32).min  # R's NA_integer_ and NA for logicals

# The R side is the R package's own conversion code (R/convert.R chooses what an object holds
# for an AnnData, for as_anndata() and for this reader alike; R/rds.R encodes it for the trip
# through rpy2). From a source checkout both files are sourced from the repository, so that the
# reader and the R package in that checkout never differ; otherwise the installed R package's
# copy (cellvi:::.rds_read) is used.
_R_FILES = ("convert.R", "rds.R")

_R_LOADER = r"""
function(files) {
  if (length(files)) {
    env <- new.env(parent = globalenv())
    for (f in files) sys.source(f, envir = env, keep.source = FALSE)
    return(get(".rds_read", envir = env))
  }
  if (!suppressPackageStartupMessages(requireNamespace("cellvi", quietly = TRUE))) return(NULL)
  ns <- asNamespace("cellvi")
  if (!exists(".rds_read", envir = ns, inherits = FALSE)) return(NULL)
  get(".rds_read", envir = ns)
}
"""

_R_READER = None


def _r_source_files() -> list[str]:
    """R/convert.R and R/rds.R of the checkout this package runs from, or [] when it runs
    from an installed copy (no R package source beside it)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    description = os.path.join(root, "DESCRIPTION")
    files = [os.path.join(root, "R", f) for f in _R_FILES]
    try:
        with open(description, encoding="utf-8") as fh:
            is_cellvi = any(line.strip() == "Package: cellvi" for line in fh)
    except OSError:
        return []
    return files if is_cellvi and all(os.path.isfile(f) for f in files) else []


def _r():
    """(robjects, localconverter, reader function), importing rpy2 and starting R on first use."""
    global _R_READER
    try:
        import rpy2.robjects as ro
        from rpy2.robjects.conversion import localconverter
    except ImportError as e:
        raise ImportError(_RPY2_MISSING) from e
    if _R_READER is None:
        with localconverter(ro.default_converter):
            reader = ro.r(_R_LOADER)(ro.StrVector(_r_source_files()))
        if reader is ro.NULL or isinstance(reader, type(ro.NULL)):
            raise ImportError(
                "read_rds needs the R code of cellvi's R package: install the R package cellvi "
                "in the R that rpy2 uses (R CMD INSTALL <cellvi checkout>), or run cellvi from a "
                "source checkout")
        _R_READER = reader
    return ro, localconverter, _R_READER


# --- R values -> Python -------------------------------------------------------------------


def _items(lst) -> dict:
    """An R named list as a dict (names are few: no need for speed)."""
    names = lst.names
    try:
        names = list(names)
    except TypeError:  # NULL names
        return {}
    return dict(zip(names, lst))


def _buffer(vec, dtype) -> np.ndarray:
    """A read-only view on an R vector's memory; copy it before the R object goes away."""
    if len(vec) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(vec.memoryview(), dtype=dtype)


def _strings(lst) -> tuple[list, np.ndarray]:
    """(values, 0-based NA positions) from the R helper ``chr``."""
    d = _items(lst)
    n = int(d["n"][0])
    na = _buffer(d["na"], np.int32).copy()
    if "joined" in d:
        values = d["joined"][0].split(_SEP) if n else []
    else:
        values = list(d["values"])
    if len(values) != n:  # pragma: no cover - guards the protocol with the R side
        raise RuntimeError(f"read_rds: expected {n} strings from R, got {len(values)}")
    return values, na


def _names(lst):
    import pandas as pd

    values, _ = _strings(lst)
    return pd.Index(values, dtype=object)


def _column(col: dict):
    import pandas as pd

    kind = col["type"][0]
    if kind == "factor":
        codes = _buffer(col["codes"], np.int32).copy()
        missing = codes == _NA_INTEGER
        codes -= 1
        codes[missing] = -1
        levels, _ = _strings(col["levels"])
        ordered = bool(col["ordered"][0])
        return pd.Categorical.from_codes(codes, categories=pd.Index(levels, dtype=object), ordered=ordered)
    if kind == "logical":
        raw = _buffer(col["values"], np.int32)
        missing = raw == _NA_INTEGER
        if missing.any():
            return pd.arrays.BooleanArray(raw == 1, missing.copy())
        return raw == 1
    if kind == "integer":
        raw = _buffer(col["values"], np.int32).copy()
        missing = raw == _NA_INTEGER
        if missing.any():
            return pd.arrays.IntegerArray(raw, missing)
        return raw
    if kind == "double":
        return _buffer(col["values"], np.float64).copy()
    if kind == "character":
        values, na = _strings(col["values"])
        out = np.array(values, dtype=object) if values else np.empty(0, dtype=object)
        out[na] = None
        return out
    raise RuntimeError(f"read_rds: unknown column type {kind!r} from R")  # pragma: no cover


def _frame(lst, index):
    import pandas as pd

    d = _items(lst)
    names, _ = _strings(d["names"])
    cols = {name: _column(_items(col)) for name, col in zip(names, d["columns"])}
    return pd.DataFrame(cols, index=index)


def _csr(parts: dict):
    """dgCMatrix slots (features x cells, CSC) -> scipy CSR (cells x features), float32.

    A CSC matrix of features x cells and a CSR matrix of cells x features have the same
    three arrays, so nothing is transposed: the arrays are only copied out of R."""
    import scipy.sparse as sp

    n_features, n_cells = (int(v) for v in _buffer(parts["dim"], np.int32))
    data = _buffer(parts["x"], np.float64).astype(np.float32)
    indices = _buffer(parts["i"], np.int32).copy()
    indptr = _buffer(parts["p"], np.int32).copy()
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_features))


def _layer(parts: dict):
    if "dense" not in parts:
        return _csr(parts)
    n_features, n_cells = (int(v) for v in _buffer(parts["dim"], np.int32))
    # R stores features x cells by column: the same bytes as cells x features by row
    return _buffer(parts["dense"], np.float64).reshape(n_cells, n_features).astype(np.float32)


def _named_list(lst) -> dict:
    d = _items(lst)
    names, _ = _strings(d["names"])
    return dict(zip(names, d["values"]))


# --- public -------------------------------------------------------------------------------


def read_rds(
    path: Union[str, os.PathLike],
    assay: Optional[str] = None,
    *,
    layers: Union[bool, str, Sequence[str]] = False,
    protein_assay: Union[None, bool, str] = None,
) -> "anndata.AnnData":
    """Read a Seurat or SingleCellExperiment object saved with ``saveRDS`` into an AnnData.

    Needs rpy2 (``pip install "cellvi[r]"``; rpy2 3.5.x for R < 4.5) and, in R, SeuratObject
    for Seurat objects or SingleCellExperiment for SCEs. R is started in this process on the
    first call (about a second), and loading SeuratObject or SingleCellExperiment in R takes a
    few seconds more the first time.

    Parameters
    ----------
    path
        The ``.rds`` file.
    assay
        Seurat: the assay whose ``counts`` become ``X`` (default: the object's default assay,
        ``DefaultAssay(object)``). SingleCellExperiment (or any SummarizedExperiment): the
        assay that becomes ``X`` (default ``"counts"``).
    layers
        Other matrices to read into ``adata.layers``: ``False`` (default) for none, ``True``
        for all, or names. Seurat: the assay's ``"data"`` (``scale.data`` is never read: it
        is dense and usually covers only the variable features). SingleCellExperiment: the
        other assays (e.g. ``"logcounts"``). A sparse matrix in R becomes a CSR matrix, a
        dense one a dense array; both float32, cells x genes.
    protein_assay
        Protein counts (CITE-seq antibody-derived tags) to read into
        ``obsm["protein_expression"]``, as totalVI expects them: the ``counts`` of a Seurat
        assay or of a SingleCellExperiment ``altExp`` of that name. ``None`` (default): the
        one named ``"ADT"`` when there is one; a name: that one (a ``KeyError`` if missing);
        ``False``: none.

    Returns
    -------
    AnnData, cells x genes:

    - ``X``: the counts as a ``scipy.sparse.csr_matrix`` of float32, made from the slots of
      R's dgCMatrix without transposing or densifying (a genes x cells CSC matrix has the
      same arrays as a cells x genes CSR matrix). Other matrix classes are converted to a
      dgCMatrix in R first.
    - ``obs_names`` / ``var_names``: cell and gene names (``"1"``, ``"2"``, ... where R has
      none, as ``as_anndata()`` names them in R).
    - ``obs``: Seurat ``meta.data`` or SCE ``colData``; ``var``: Seurat ``meta.features`` or
      SCE ``rowData``. Column types are kept: factor -> ``Categorical`` with R's levels in
      R's order (unused levels kept; ordered factors stay ordered; NA -> missing), logical
      -> ``bool`` (pandas ``"boolean"`` when it has NAs), integer -> ``int32`` (pandas
      nullable ``"Int32"`` when it has NAs), numeric -> ``float64`` (NA -> NaN), character ->
      ``object`` strings (NA -> ``None``). Date, POSIXct, difftime, complex and raw values
      are read as strings, and non-atomic columns (lists, nested data frames, matrices) are
      skipped, with a warning naming them.
    - ``obsm["X_<name>"]``: every Seurat reduction's ``cell.embeddings`` (e.g. ``X_pca``,
      ``X_tsne``) or SCE ``reducedDims`` (e.g. ``PCA`` as ``X_PCA``; always prefixed, as
      ``as_anndata()`` in R writes them), float64,
      rows in the order of the cells.
    - ``layers``: as asked with ``layers``.
    - ``obsm["protein_expression"]``: the protein counts (see ``protein_assay``), a pandas
      DataFrame (cells x proteins, float64) with the protein names as columns.

    What is read is chosen by the R package's own conversion code (``R/convert.R``, the code
    of ``as_anndata()`` in R): from a source checkout of cellvi it is sourced from there,
    otherwise the installed R package cellvi provides it.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ImportError
        rpy2 is not installed, R lacks the package that defines the object's class, or the
        R code of cellvi is found neither beside this package (a source checkout) nor as an
        installed R package.
    TypeError
        The file holds something other than a Seurat or SingleCellExperiment object (the
        message names its class).
    KeyError
        ``assay``, a requested layer or ``protein_assay`` is not there (the message lists
        those that are).
    ValueError
        The file is not an ``.rds`` R can read.

    Examples
    --------
    In R: ``saveRDS(SeuratObject::pbmc_small, "pbmc_small.rds")``, then in Python:

    >>> from cellvi.interop import read_rds
    >>> adata = read_rds("pbmc_small.rds")  # doctest: +SKIP
    >>> adata  # doctest: +SKIP
    AnnData object with n_obs × n_vars = 80 × 230
        obs: 'orig.ident', 'nCount_RNA', 'nFeature_RNA', 'RNA_snn_res.0.8', 'letter.idents', 'groups', 'RNA_snn_res.1'
        var: 'vst.mean', 'vst.variance', 'vst.variance.expected', 'vst.variance.standardized', 'vst.variable'
        obsm: 'X_pca', 'X_tsne'
    >>> adata.obs["letter.idents"].cat.categories.tolist()  # doctest: +SKIP
    ['A', 'B']
    >>> read_rds("sce.rds", layers=["logcounts"]).layers["logcounts"]  # doctest: +SKIP
    """
    import anndata

    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .rds file: '{path}'")
    if assay is not None and not isinstance(assay, str):
        raise TypeError(f"assay must be a string or None, got {type(assay).__name__}")
    all_layers = layers is True
    if layers is False or layers is None or all_layers:
        wanted: list = []
    elif isinstance(layers, str):
        wanted = [layers]
    else:
        wanted = [str(x) for x in layers]

    if protein_assay is True:
        protein_assay = "ADT"
    if protein_assay is not None and protein_assay is not False and not isinstance(protein_assay, str):
        raise TypeError(f"protein_assay must be a string, None or False, got {type(protein_assay).__name__}")

    ro, localconverter, reader = _r()
    with localconverter(ro.default_converter):
        res = reader(
            ro.StrVector([path]),
            ro.NULL if assay is None else ro.StrVector([assay]),
            ro.StrVector(wanted),
            ro.BoolVector([all_layers]),
            ro.NULL if protein_assay is None else (
                ro.BoolVector([False]) if protein_assay is False else ro.StrVector([protein_assay])),
        )
        res = _items(res)
        for message in res.pop("warnings", []):
            warnings.warn(f"read_rds: {message}", UserWarning, stacklevel=2)
        if "error" in res:
            kind = res["error"][0]
            message = res["message"][0]
            exc = {"KeyError": KeyError, "TypeError": TypeError, "ValueError": ValueError,
                   "ImportError": ImportError}.get(kind, RuntimeError)
            raise exc(message)

        X = _csr(_items(res["x"]))
        obs_names = _names(res["obs_names"])
        var_names = _names(res["var_names"])
        obs = _frame(res["obs"], obs_names)
        var = _frame(res["var"], var_names)
        obsm = {}
        for name, emb in _named_list(res["obsm"]).items():
            emb = _items(emb)
            k = int(emb["ncol"][0])
            values = _buffer(emb["values"], np.float64)
            # R matrices are column-major: cells x k by column
            obsm[f"X_{name}"] = values.reshape(
                (len(obs_names), k), order="F").copy(order="C")
        layer_mats = {name: _layer(_items(part)) for name, part in _named_list(res["layers"]).items()}
        proteins = res.get("proteins")
        if proteins is not None and proteins is not ro.NULL:
            import pandas as pd

            proteins = _items(proteins)
            names = _names(proteins["names"])
            # R's proteins x cells by column: the same values as cells x proteins by row
            values = _buffer(proteins["values"], np.float64).reshape(len(obs_names), len(names)).copy()
            obsm["protein_expression"] = pd.DataFrame(values, index=obs_names, columns=names)

    return anndata.AnnData(
        X=X,
        obs=obs,
        var=var,
        obsm=obsm or None,
        layers=layer_mats or None,
    )
