"""Read a Seurat or SingleCellExperiment saved as ``.rds`` into an AnnData, through rpy2.

The R side is one small R function (``_R_READER``), defined once per process, that reads the
object and returns a list of plain R vectors: the count matrix as the slots of a dgCMatrix,
data-frame columns as (type, values[, levels]) and names as one joined string. The Python side
turns those into NumPy arrays through their buffers (no per-element loops, no dense copies).
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

# Record separator: names are sent from R as one string joined with it (R's paste is fast,
# rpy2 is slow per string: 1e6 names take ~0.4 s joined and ~4.6 s one by one). When a value
# contains it, the R side sends the vector as it is instead.
_SEP = "\x1e"
_NA_INTEGER = np.iinfo(np.int32).min  # R's NA_integer_ and NA for logicals

_R_CODE = r"""
local({
  SEP <- "\036"

  cellvi_fail <- function(type, fmt, ...) {
    stop(structure(class = c("cellvi_error", "error", "condition"),
                   list(message = sprintf(fmt, ...), call = NULL, type = type)))
  }

  # strings: one joined string (fast to send) plus the 0-based positions of NAs
  chr <- function(x) {
    x <- enc2utf8(as.character(x))
    na <- is.na(x)
    x[na] <- ""
    out <- list(n = length(x), na = which(na) - 1L)
    if (any(grepl(SEP, x, fixed = TRUE))) out$values <- x
    else out$joined <- paste(x, collapse = SEP)
    out
  }

  names_or_index <- function(x, n) if (is.null(x)) as.character(seq_len(n) - 1L) else x

  # a matrix as the slots of a dgCMatrix (features x cells); other classes are coerced
  sparse <- function(m, what) {
    if (!inherits(m, "dgCMatrix")) {
      requireNamespace("Matrix", quietly = TRUE)
      m <- tryCatch({
        if (is.matrix(m) || methods::is(m, "Matrix")) {
          m <- methods::as(m, "CsparseMatrix")
          m <- methods::as(m, "generalMatrix")
          methods::as(m, "dMatrix")
        } else methods::as(m, "dgCMatrix")
      }, error = function(e) cellvi_fail("TypeError",
           "could not convert %s (class %s) to a dgCMatrix: %s", what, class(m)[1L],
           conditionMessage(e)))
      if (!inherits(m, "dgCMatrix"))
        cellvi_fail("TypeError", "could not convert %s to a dgCMatrix (got %s)", what, class(m)[1L])
    }
    list(x = m@x, i = m@i, p = m@p, dim = m@Dim)
  }

  # a layer keeps its storage: base matrix -> dense values, anything else -> dgCMatrix slots
  matrix_part <- function(m, what) {
    if (is.matrix(m)) {
      storage.mode(m) <- "double"
      list(dense = as.vector(m), dim = dim(m))
    } else sparse(m, what)
  }

  column <- function(v) {
    if (isS4(v)) v <- tryCatch(as.vector(v), error = function(e) NULL)
    if (is.null(v) || !is.atomic(v) || !is.null(dim(v))) return(NULL)
    if (is.factor(v))
      return(list(type = "factor", codes = as.integer(unclass(v)), levels = chr(levels(v)),
                  ordered = is.ordered(v)))
    if (is.null(oldClass(v))) {
      if (is.logical(v)) return(list(type = "logical", values = v))
      if (is.integer(v)) return(list(type = "integer", values = v))
      if (is.double(v)) return(list(type = "double", values = v))
      if (is.character(v)) return(list(type = "character", values = chr(v)))
    }
    list(type = "character", values = chr(as.character(v)), converted = TRUE)
  }

  frame <- function(cols, what) {
    nms <- names(cols)
    if (is.null(nms)) nms <- character(0)
    out <- lapply(cols, column)
    keep <- !vapply(out, is.null, TRUE)
    conv <- vapply(out, function(r) isTRUE(r$converted), TRUE)
    if (any(!keep))
      warning(sprintf("%s columns skipped (not atomic vectors): %s", what,
                      paste(nms[!keep], collapse = ", ")), call. = FALSE)
    if (any(conv))
      warning(sprintf("%s columns read as strings (class %s): %s", what,
                      paste(unique(vapply(cols[conv], function(v) class(v)[1L], "")), collapse = ", "),
                      paste(nms[conv], collapse = ", ")), call. = FALSE)
    list(names = chr(nms[keep]), columns = unname(out[keep]))
  }

  # align data-frame rows to `ids` by row names (when it has real ones); NULL if impossible
  align_rows <- function(df, ids) {
    if (is.null(df) || nrow(df) != length(ids)) return(NULL)
    rn <- rownames(df)
    if (is.null(rn) || (is.data.frame(df) && .row_names_info(df) <= 0L) || identical(rn, ids))
      return(df)
    idx <- match(ids, rn)
    if (anyNA(idx)) return(NULL)
    df[idx, , drop = FALSE]
  }

  embedding <- function(m, cells) {
    m <- tryCatch(as.matrix(m), error = function(e) NULL)
    if (is.null(m) || !(is.numeric(m) || is.logical(m)) || length(dim(m)) != 2L) return(NULL)
    rn <- rownames(m)
    if (!is.null(rn) && !identical(rn, cells)) {
      idx <- match(cells, rn)
      if (anyNA(idx)) return(NULL)
      m <- m[idx, , drop = FALSE]
    } else if (nrow(m) != length(cells)) return(NULL)
    list(values = as.double(m), ncol = ncol(m))
  }

  embeddings <- function(mats, cells) {
    if (length(mats) == 0L) return(list(names = chr(character(0)), values = list()))
    out <- lapply(mats, embedding, cells = cells)
    keep <- !vapply(out, is.null, TRUE)
    if (any(!keep))
      warning(sprintf("reductions skipped (not a numeric matrix over the same cells): %s",
                      paste(names(mats)[!keep], collapse = ", ")), call. = FALSE)
    list(names = chr(names(mats)[keep]), values = unname(out[keep]))
  }

  pick_layers <- function(layers, all_layers, available) {
    if (all_layers) return(available)
    missing <- setdiff(layers, available)
    if (length(missing))
      cellvi_fail("KeyError", "layer(s) %s not found; available: %s",
                  paste0("'", missing, "'", collapse = ", "),
                  if (length(available)) paste(available, collapse = ", ") else "none")
    layers
  }

  read_seurat <- function(obj, assay, layers, all_layers) {
    available <- names(obj@assays)
    if (is.null(assay)) assay <- obj@active.assay
    if (!assay %in% available)
      cellvi_fail("KeyError", "assay '%s' not found in the Seurat object; available: %s",
                  assay, paste(available, collapse = ", "))
    a <- obj@assays[[assay]]
    if (inherits(a, "Assay5")) {
      ns <- asNamespace("SeuratObject")
      if (!exists("LayerData", envir = ns, inherits = FALSE))
        cellvi_fail("ImportError",
                    "assay '%s' is a Seurat v5 Assay5; reading it needs SeuratObject >= 5.0 in R (installed: %s)",
                    assay, as.character(utils::packageVersion("SeuratObject")))
      have <- get("Layers", envir = ns)(a)
      get_layer <- function(l) get("LayerData", envir = ns)(a, layer = l)
      var_df <- if (methods::.hasSlot(a, "meta.data")) a@meta.data else NULL
      hint <- " (split layers? run JoinLayers() in R first)"
    } else {
      have <- c("counts", "data")
      have <- have[vapply(have, function(l) prod(dim(methods::slot(a, l))) > 0, TRUE)]
      get_layer <- function(l) methods::slot(a, l)
      var_df <- if (methods::.hasSlot(a, "meta.features")) a@meta.features else NULL
      hint <- ""
    }
    if (!"counts" %in% have)
      cellvi_fail("KeyError", "assay '%s' holds no counts; it has: %s%s", assay,
                  if (length(have)) paste(have, collapse = ", ") else "nothing", hint)
    counts <- get_layer("counts")
    features <- names_or_index(rownames(counts), nrow(counts))
    cells <- names_or_index(colnames(counts), ncol(counts))
    meta <- align_rows(obj@meta.data, cells)
    if (is.null(meta))
      cellvi_fail("ValueError", "the rows of meta.data do not match the cells of assay '%s'", assay)
    var_df <- align_rows(var_df, features)
    if (is.null(var_df)) var_df <- data.frame(row.names = seq_along(features))
    others <- setdiff(have, c("counts", "scale.data"))
    lay <- pick_layers(layers, all_layers, others)
    parts <- list()
    for (l in lay) {
      m <- get_layer(l)
      if (!identical(dim(m), dim(counts)) || !identical(unname(dimnames(m)), unname(dimnames(counts)))) {
        warning(sprintf("layer '%s' skipped: its genes or cells differ from those of counts", l), call. = FALSE)
        next
      }
      parts[[l]] <- matrix_part(m, sprintf("the '%s' layer of assay '%s'", l, assay))
    }
    reds <- lapply(obj@reductions, function(r) r@cell.embeddings)
    list(kind = "Seurat", assay = assay,
         x = sparse(counts, sprintf("the counts of assay '%s'", assay)),
         obs_names = chr(cells), var_names = chr(features),
         obs = frame(as.list(meta), "meta.data"), var = frame(as.list(var_df), "meta.features"),
         obsm = embeddings(reds, cells),
         layers = list(names = chr(names(parts)), values = unname(parts)))
  }

  read_sce <- function(obj, assay, layers, all_layers) {
    SE <- asNamespace("SummarizedExperiment")
    available <- SE$assayNames(obj)
    if (is.null(assay)) assay <- "counts"
    if (!assay %in% available)
      cellvi_fail("KeyError", "assay '%s' not found in the %s; available: %s", assay, class(obj)[1L],
                  if (length(available)) paste(available, collapse = ", ") else "none")
    cells <- names_or_index(colnames(obj), ncol(obj))
    features <- names_or_index(rownames(obj), nrow(obj))
    lay <- pick_layers(layers, all_layers, setdiff(available, assay))
    parts <- list()
    for (l in lay)
      parts[[l]] <- matrix_part(SE$assay(obj, l, withDimnames = FALSE), sprintf("assay '%s'", l))
    reds <- if (methods::is(obj, "SingleCellExperiment"))
      as.list(asNamespace("SingleCellExperiment")$reducedDims(obj)) else list()
    list(kind = class(obj)[1L], assay = assay,
         x = sparse(SE$assay(obj, assay, withDimnames = FALSE), sprintf("assay '%s'", assay)),
         obs_names = chr(cells), var_names = chr(features),
         obs = frame(as.list(SE$colData(obj)), "colData"),
         var = frame(as.list(SE$rowData(obj)), "rowData"),
         obsm = embeddings(reds, cells),
         layers = list(names = chr(names(parts)), values = unname(parts)))
  }

  read_any <- function(path, assay, layers, all_layers) {
    obj <- tryCatch(readRDS(path), error = function(e)
      cellvi_fail("ValueError", "could not read '%s' as an .rds file: %s", path, conditionMessage(e)))
    cls <- class(obj)
    pkg <- attr(cls, "package")
    if (isS4(obj) && !is.null(pkg) && !pkg %in% c(".GlobalEnv", "methods") &&
        !suppressPackageStartupMessages(requireNamespace(pkg, quietly = TRUE)))
      cellvi_fail("ImportError", "'%s' holds an object of class %s from the R package %s, which R cannot load; install it in R",
                  path, cls[1L], pkg)
    if (methods::is(obj, "Seurat"))
      return(read_seurat(obj, assay, layers, all_layers))
    if (methods::is(obj, "SummarizedExperiment")) {
      if (!suppressPackageStartupMessages(requireNamespace("SummarizedExperiment", quietly = TRUE)))
        cellvi_fail("ImportError", "reading a %s needs the R package SummarizedExperiment", cls[1L])
      return(read_sce(obj, assay, layers, all_layers))
    }
    cellvi_fail("TypeError",
                "'%s' holds an R object of class %s, not a Seurat or SingleCellExperiment object",
                path, paste(cls, collapse = "/"))
  }

  function(path, assay, layers, all_layers) {
    warns <- character(0)
    res <- tryCatch(
      withCallingHandlers(
        suppressPackageStartupMessages(read_any(path, assay, layers, all_layers)),
        warning = function(w) {
          warns <<- c(warns, conditionMessage(w))
          invokeRestart("muffleWarning")
        }),
      cellvi_error = function(e) list(error = e$type, message = conditionMessage(e)),
      error = function(e) list(error = "RuntimeError",
                               message = paste0("R failed while reading '", path, "': ",
                                                conditionMessage(e))))
    res$warnings <- warns
    res
  }
})
"""

_R_READER = None


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
            _R_READER = ro.r(_R_CODE)
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

    Returns
    -------
    AnnData, cells x genes:

    - ``X``: the counts as a ``scipy.sparse.csr_matrix`` of float32, made from the slots of
      R's dgCMatrix without transposing or densifying (a genes x cells CSC matrix has the
      same arrays as a cells x genes CSR matrix). Other matrix classes are converted to a
      dgCMatrix in R first.
    - ``obs_names`` / ``var_names``: cell and gene names (``"0"``, ``"1"``, ... where R has
      none).
    - ``obs``: Seurat ``meta.data`` or SCE ``colData``; ``var``: Seurat ``meta.features`` or
      SCE ``rowData``. Column types are kept: factor -> ``Categorical`` with R's levels in
      R's order (unused levels kept; ordered factors stay ordered; NA -> missing), logical
      -> ``bool`` (pandas ``"boolean"`` when it has NAs), integer -> ``int32`` (pandas
      nullable ``"Int32"`` when it has NAs), numeric -> ``float64`` (NA -> NaN), character ->
      ``object`` strings (NA -> ``None``). Other classes (Date, POSIXct, ...) are read with
      ``as.character`` and non-atomic columns (lists, nested data frames, matrices) are
      skipped, with a warning naming them.
    - ``obsm["X_<name>"]``: every Seurat reduction's ``cell.embeddings`` (e.g. ``X_pca``,
      ``X_tsne``) or SCE ``reducedDims`` (names kept as they are, e.g. ``X_PCA``), float64,
      rows in the order of the cells.
    - ``layers``: as asked with ``layers``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ImportError
        rpy2 is not installed, or R lacks the package that defines the object's class.
    TypeError
        The file holds something other than a Seurat or SingleCellExperiment object (the
        message names its class).
    KeyError
        ``assay`` or a requested layer is not there (the message lists those that are).
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

    ro, localconverter, reader = _r()
    with localconverter(ro.default_converter):
        res = reader(
            ro.StrVector([path]),
            ro.NULL if assay is None else ro.StrVector([assay]),
            ro.StrVector(wanted),
            ro.BoolVector([all_layers]),
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
            obsm[name if name.startswith("X_") else f"X_{name}"] = values.reshape(
                (len(obs_names), k), order="F").copy(order="C")
        layer_mats = {name: _layer(_items(part)) for name, part in _named_list(res["layers"]).items()}

    return anndata.AnnData(
        X=X,
        obs=obs,
        var=var,
        obsm=obsm or None,
        layers=layer_mats or None,
    )
