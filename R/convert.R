# Conversion between R single-cell objects (Seurat, SingleCellExperiment) and Python AnnData.
#
# Layout rules (see DESIGN.md, "The R package"):
# - Sparse stays sparse. A genes x cells dgCMatrix (compressed sparse columns) has exactly the
#   memory layout of a cells x genes CSR matrix, so the three slots @x, @i, @p become
#   scipy.sparse.csr_matrix((data, indices, indptr), shape = (n_cells, n_genes)) with no
#   transposition, and the way back reuses CSR data/indices/indptr as @x/@i/@p.
# - Metadata columns travel one by one as numpy arrays / pandas extension arrays, so that factor
#   levels (and their order), NA and the logical/integer/double/character types survive.
# - Python is imported lazily (.cellvi_py()), never at package load.

# ---- Python modules -------------------------------------------------------------------------

.cellvi_py_cache <- new.env(parent = emptyenv())

# numpy, scipy.sparse, pandas, anndata and the builtins, imported once with convert = FALSE.
.cellvi_py <- function() {
  if (is.null(.cellvi_py_cache$mods)) {
    # the same Python choice as cellvi_available() (R/python.R), when that helper is there
    if (exists(".choose_python", mode = "function")) .choose_python()
    mods <- c(np = "numpy", sp = "scipy.sparse", pd = "pandas", ad = "anndata")
    handles <- lapply(mods, function(m) {
      tryCatch(reticulate::import(m, convert = FALSE), error = function(e) {
        stop("Python module '", m, "' could not be imported: ",
             .r_wording(conditionMessage(e)), ". ", .python_advice(), call. = FALSE)
      })
    })
    handles$bi <- reticulate::import_builtins(convert = FALSE)
    .cellvi_py_cache$mods <- handles
  }
  .cellvi_py_cache$mods
}

# ---- small R helpers ------------------------------------------------------------------------

.or_default <- function(x, y) if (is.null(x)) y else x

.require_pkg <- function(pkg, why) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    stop("package '", pkg, "' is needed to ", why, "; install it (CRAN or Bioconductor; ",
         "on Debian: apt-get install r-cran-", tolower(pkg), " or r-bioc-", tolower(pkg), ").",
         call. = FALSE)
  }
}

.no_dots <- function(...) {
  if (...length()) {
    nms <- names(list(...))
    nms <- if (is.null(nms)) rep("", ...length()) else nms
    nms[!nzchar(nms)] <- "<unnamed>"
    stop("unused argument(s): ", paste(nms, collapse = ", "), call. = FALSE)
  }
}

.show_some <- function(x, n = 5) {
  x <- as.character(x)
  s <- paste(utils::head(x, n), collapse = ", ")
  if (length(x) > n) s <- paste0(s, ", ... (", length(x), " in all)")
  if (!length(x)) s <- "(none)"
  s
}

# An error of a kind (a Python exception name, e.g. "KeyError" for a missing name): in R an
# ordinary error with this message; cellvi.interop.read_rds() raises it as that exception.
.stop_kind <- function(kind, ...) {
  stop(structure(class = c("cellvi_error", "error", "condition"),
                 list(message = paste0(...), call = NULL, type = kind)))
}

# Resolve TRUE / FALSE / NULL / character names against what is available.
.select_names <- function(request, available, what) {
  if (is.null(request) || isFALSE(request)) return(character(0))
  if (isTRUE(request)) return(available)
  if (!is.character(request)) {
    stop(what, " must be TRUE, FALSE or a character vector of names", call. = FALSE)
  }
  missing <- setdiff(request, available)
  if (length(missing)) {
    .stop_kind("KeyError", what, " '", paste(missing, collapse = "', '"),
               "' not found; available: ", .show_some(available, 20))
  }
  unique(request)
}

# ---- R -> Python ----------------------------------------------------------------------------

# Any matrix-like (dense matrix, any Matrix class, DelayedArray) -> dgCMatrix. Sparse input is
# never densified; dense input becomes sparse here, before anything goes to Python.
.as_dgc <- function(m, what) {
  if (methods::is(m, "dgCMatrix")) return(m)
  out <- tryCatch({
    if (is.matrix(m) || methods::is(m, "Matrix")) {
      m <- methods::as(m, "CsparseMatrix")
      m <- methods::as(m, "generalMatrix")
      if (!methods::is(m, "dMatrix")) m <- methods::as(m, "dMatrix")
      m
    } else {
      methods::as(m, "dgCMatrix")
    }
  }, error = function(e) {
    stop(what, " (class ", class(m)[1], ") could not be turned into a sparse dgCMatrix: ",
         conditionMessage(e), call. = FALSE)
  })
  if (!methods::is(out, "dgCMatrix")) out <- methods::as(out, "dgCMatrix")
  out
}

# Small Python helpers, compiled once (numpy only; no cellvi import, so no torch start-up).
.cellvi_py_helpers <- function() {
  if (is.null(.cellvi_py_cache$helpers)) {
    code <- paste(
      "def first_non_integer(x, chunk=1 << 16):",
      "    \"\"\"First value of the 1-d float array x that is not a whole number, or None.",
      "    Scans in chunks into one reused buffer: no temporary as large as x.\"\"\"",
      "    import numpy as np",
      "    buf = np.empty(min(chunk, x.size), dtype=x.dtype)",
      "    for start in range(0, x.size, chunk):",
      "        c = x[start:start + chunk]",
      "        b = buf[:c.size]",
      "        np.trunc(c, out=b)",
      "        bad = np.flatnonzero(b != c)",
      "        if bad.size:",
      "            return float(c[bad[0]])",
      "    return None",
      "helpers = __import__('types').SimpleNamespace(first_non_integer=first_non_integer)",
      sep = "\n")
    scope <- reticulate::py_run_string(code, local = TRUE, convert = FALSE)
    .cellvi_py_cache$helpers <- scope$`__getitem__`("helpers")
  }
  .cellvi_py_cache$helpers
}

# Checks the stored values of a count matrix: x is @x of a dgCMatrix (R), x_py the same values
# as a float64 numpy array (the buffer the transfer to Python makes anyway). NaN, infinite and
# negative values are found in R with single passes that allocate nothing (anyNA, min, max);
# the non-integer scan runs in numpy, in chunks, because in R it allocates temporaries as
# large as x (memory and time grow with x), while the chunked scan allocates only a chunk.
.check_counts <- function(x, x_py, allow_non_counts, what, hint) {
  if (!length(x)) return(invisible(TRUE))
  if (anyNA(x)) {
    stop(what, " contains ", sum(is.na(x)), " NaN/NA value(s); counts must be finite. ",
         "Remove or fix them before converting.", call. = FALSE)
  }
  lo <- min(x)
  hi <- max(x)
  if (is.infinite(lo) || is.infinite(hi)) {
    stop(what, " contains infinite values (range ", lo, " to ", hi, "); counts must be finite.",
         call. = FALSE)
  }
  if (allow_non_counts) return(invisible(TRUE))
  if (lo < 0) {
    stop(what, " has negative values (min ", signif(lo, 4), "), so it does not hold raw counts: ",
         "normalized or scaled data was probably passed. ", .counts_fix(hint), call. = FALSE)
  }
  bad <- reticulate::py_to_r(.cellvi_py_helpers()$first_non_integer(x_py))
  if (!is.null(bad)) {
    stop(what, " has non-integer values (e.g. ", signif(bad, 6), "), so it does not hold raw ",
         "counts: normalized data was probably passed. ", .counts_fix(hint), call. = FALSE)
  }
  invisible(TRUE)
}

# genes x cells dgCMatrix -> scipy CSR, cells x genes, float32 data and int32 indices, after
# the count checks. The dgCMatrix slots are reused as they are (no transposition).
# reticulate 1.28 hands numpy a read-only view of a private copy of each R vector; data then
# becomes float32 (a new, writable array); indices/indptr are copied once more so that the
# CSR is writable (torch.from_numpy warns on read-only arrays, and scipy's in-place methods
# such as eliminate_zeros() fail on them).
.dgc_to_py_csr <- function(m, allow_non_counts = TRUE, what = "the matrix", hint = "") {
  py <- .cellvi_py()
  x64 <- reticulate::np_array(m@x)
  .check_counts(m@x, x64, allow_non_counts, what, hint)
  x <- x64$astype("float32")
  rm(x64)
  i <- reticulate::np_array(m@i, dtype = "int32")$copy()
  p <- reticulate::np_array(m@p, dtype = "int32")$copy()
  py$sp$csr_matrix(reticulate::tuple(x, i, p, convert = FALSE),
                   shape = reticulate::tuple(ncol(m), nrow(m), convert = FALSE), copy = FALSE)
}

# character vector -> numpy object array of str, with None where NA.
.py_str_array <- function(v) {
  py <- .cellvi_py()
  v <- as.character(v)
  na <- is.na(v)
  if (!length(v)) return(py$np$array(list(), dtype = "object"))
  arr <- reticulate::np_array(ifelse(na, "", v), dtype = "object")
  if (any(na)) arr <- py$np$where(reticulate::np_array(na), NULL, arr)
  arr
}

.py_index <- function(names) {
  .cellvi_py()$pd$Index(.py_str_array(names), dtype = "object")
}

.is_convertible_column <- function(v) {
  is.factor(v) || (is.atomic(v) && !is.null(v) && is.null(dim(v)))
}

# A convertible column as one of the types that travel: factor, logical, integer, double or
# character (Date/POSIXt, difftime, complex and raw values become strings).
.plain_column <- function(v) {
  if (inherits(v, c("Date", "POSIXt", "difftime")) || is.complex(v) || is.raw(v)) {
    v <- as.character(v)
  }
  v
}

# One R metadata column -> numpy array or pandas (extension) array of the same length:
# factor -> Categorical (levels and order kept, ordered flag kept, NA -> code -1);
# logical -> bool (with NA: pandas nullable "boolean"); integer -> int32 (with NA: nullable
# "Int32"); double -> float64 (NA -> NaN); character -> object array of str (NA -> None);
# Date/POSIXt and other atomic types -> strings.
.r_column_to_py <- function(v) {
  py <- .cellvi_py()
  np_copy <- function(x, dtype) reticulate::np_array(x, dtype = dtype)$copy()
  if (is.factor(v)) {
    if (anyNA(levels(v))) v <- factor(v, levels = levels(v)[!is.na(levels(v))])  # addNA(): NA is missing
    codes <- as.integer(v) - 1L
    codes[is.na(codes)] <- -1L
    return(py$pd$Categorical$from_codes(np_copy(codes, "int32"),
                                        categories = .py_index(levels(v)),
                                        ordered = is.ordered(v)))
  }
  v <- .plain_column(v)
  na <- is.na(v)
  if (is.logical(v)) {
    vals <- np_copy(!na & v, "bool")
    if (!any(na)) return(vals)
    return(py$pd$arrays$BooleanArray(vals, np_copy(na, "bool")))
  }
  if (is.integer(v)) {
    if (!any(na)) return(np_copy(v, "int32"))
    v[na] <- 0L
    return(py$pd$arrays$IntegerArray(np_copy(v, "int32"), np_copy(na, "bool")))
  }
  if (is.double(v)) return(np_copy(as.vector(v), "float64"))
  .py_str_array(v)
}

# Named list of equal-length R columns -> pandas DataFrame with the given index.
.py_dataframe <- function(cols, index) {
  py <- .cellvi_py()
  idx <- .py_index(index)
  if (!length(cols)) return(py$pd$DataFrame(index = idx))
  arrays <- lapply(cols, .r_column_to_py)
  data <- reticulate::py_dict(as.list(names(cols)), unname(arrays), convert = FALSE)
  py$pd$DataFrame(data, index = idx)
}

# Metadata (data.frame or S4Vectors DataFrame) -> named list of convertible columns, selected
# by `request` (TRUE / FALSE / names). Unconvertible columns (lists, matrices, nested
# DataFrames) are dropped with a warning when everything was asked for, an error when named.
.metadata_columns <- function(df, request, what, rows = NULL) {
  available <- colnames(df)
  if (is.null(available)) available <- character(0)
  keep <- .select_names(request, available, paste(what, "column(s)"))
  cols <- lapply(keep, function(nm) {
    v <- df[[nm]]
    if (isS4(v)) v <- tryCatch(as.vector(v), error = function(e) v)  # e.g. an Rle
    v
  })
  names(cols) <- keep
  ok <- vapply(cols, .is_convertible_column, logical(1))
  if (any(!ok)) {
    msg <- paste0(what, " column(s) '", paste(keep[!ok], collapse = "', '"),
                  "' are not plain vectors (lists, matrices or nested tables) and cannot ",
                  "be converted")
    if (isTRUE(request)) warning(msg, "; they were left out.", call. = FALSE)
    else stop(msg, ".", call. = FALSE)
    cols <- cols[ok]
  }
  if (!is.null(rows)) cols <- lapply(cols, function(v) v[rows])
  cols
}

.select_features <- function(features, available) {
  if (is.null(features)) return(NULL)
  features <- as.character(features)
  idx <- match(features, available)
  if (anyNA(idx)) {
    miss <- unique(features[is.na(idx)])
    .stop_kind("KeyError", length(miss), " of ", length(features),
               " requested feature(s) not found: ", .show_some(miss),
               "; available features include: ", .show_some(available))
  }
  if (anyDuplicated(idx)) stop("features contains duplicated names: ",
                               .show_some(unique(features[duplicated(idx)])), call. = FALSE)
  idx
}

# Reductions (named list of cells x k matrices) aligned to `cells`.
.align_reductions <- function(reds, cells) {
  out <- list()
  for (nm in names(reds)) {
    emb <- as.matrix(reds[[nm]])
    if (!is.numeric(emb)) {
      warning("reduction '", nm, "' is not numeric; it was left out.", call. = FALSE)
      next
    }
    if (!is.null(rownames(emb))) {
      idx <- match(cells, rownames(emb))
      if (anyNA(idx)) {
        warning("reduction '", nm, "' lacks ", sum(is.na(idx)), " of the cells; it was left out.",
                call. = FALSE)
        next
      }
      emb <- emb[idx, , drop = FALSE]
    } else if (nrow(emb) != length(cells)) {
      warning("reduction '", nm, "' has ", nrow(emb), " rows for ", length(cells),
              " cells; it was left out.", call. = FALSE)
      next
    }
    out[[nm]] <- emb
  }
  out
}

# ---- R objects -> parts ------------------------------------------------------------------------
# What an object holds for an AnnData, as plain R values ("parts"): counts (features x cells,
# any matrix class), cell and feature names, obs and var columns (named lists of vectors in
# cell / feature order), reductions (cells x k matrices, rows in cell order), proteins (proteins
# x cells, dense, or NULL) and further matrices of the counts' shape (layers). They are chosen
# here once for both ways to Python: as_anndata() (reticulate, in this R session) and
# cellvi.interop.read_rds() (rpy2: Python sources this file and rds.R into the R it embeds, so
# nothing in this section may call Python or depend on the package namespace).

# obsm key of the protein counts (as the Python models expect them).
.protein_obsm_key <- "protein_expression"

.parts <- function(counts, obs = list(), var = list(), reductions = list(), proteins = NULL,
                   layers = list(), what = "the count matrix", hint = "Pass the raw counts") {
  cells <- .or_default(colnames(counts), as.character(seq_len(ncol(counts))))
  features <- .or_default(rownames(counts), as.character(seq_len(nrow(counts))))
  # Reductions, proteins and results are matched to cells by name.
  .refuse_duplicated(cells, "cell", "colnames(object)")
  .refuse_duplicated(features, "feature", "rownames(object)")
  list(counts = counts, cells = cells, features = features,
       obs = obs, var = var, reductions = reductions, proteins = proteins, layers = layers,
       what = what, hint = hint)
}

# Names that cells and features are matched by must be unique (`accessor`: how the user sets
# them, for the fix).
.refuse_duplicated <- function(names, what, accessor) {
  dup <- unique(names[duplicated(names)])
  if (length(dup)) {
    stop(length(dup), " ", what, " names are duplicated (", .show_some(dup, 5), "); make them ",
         "unique first, e.g. ", accessor, " <- make.unique(", accessor, ")", call. = FALSE)
  }
  invisible()
}

# A data.frame given for the cells (or features) of a matrix, in the matrix's order: by its row
# names when it has its own (not 1, 2, ...), which must then name every cell (feature).
.aligned_table <- function(table, names, what, names_of) {
  if (!is.data.frame(table) || .row_names_info(table) <= 0 || is.null(names)) return(table)
  idx <- match(names, rownames(table))
  if (anyNA(idx)) {
    stop("the row names of `", what, "` are not the matrix's ", names_of, ": ", sum(is.na(idx)),
         " missing (e.g. ", .show_some(names[is.na(idx)], 3), "); give `", what, "` one row per ",
         "name, or no row names (rows in the matrix's order)", call. = FALSE)
  }
  table[idx, , drop = FALSE]
}

# Protein counts (proteins x cells, any matrix class) -> dense double matrix with columns in
# `cells` order and named rows.
.protein_matrix <- function(m, cells, what) {
  m <- tryCatch(as.matrix(m), error = function(e) {
    stop(what, " (class ", class(m)[1], ") could not be turned into a matrix: ",
         conditionMessage(e), call. = FALSE)
  })
  if (!is.numeric(m) && !is.logical(m)) stop(what, " is not numeric", call. = FALSE)
  storage.mode(m) <- "double"
  if (is.null(rownames(m))) rownames(m) <- as.character(seq_len(nrow(m)))
  if (!is.null(colnames(m)) && !identical(colnames(m), cells)) {
    idx <- match(cells, colnames(m))
    if (anyNA(idx)) {
      stop(what, " lacks ", sum(is.na(idx)), " of the ", length(cells), " cells (e.g. ",
           .show_some(cells[is.na(idx)], 3), ")", call. = FALSE)
    }
    m <- m[, idx, drop = FALSE]
  } else if (ncol(m) != length(cells)) {
    stop(what, " has ", ncol(m), " cells, the counts ", length(cells), call. = FALSE)
  }
  colnames(m) <- cells
  m
}

# Protein counts from a Seurat assay (antibody-derived tags, e.g. "ADT").
.seurat_proteins <- function(object, protein_assay, cells) {
  assays <- SeuratObject::Assays(object)
  if (!is.character(protein_assay) || length(protein_assay) != 1L ||
      !protein_assay %in% assays) {
    .stop_kind("KeyError", "protein assay '", paste(protein_assay, collapse = ", "),
               "' not found; available assays: ", .show_some(assays),
               ". Pass protein_assay = the assay of the antibody-derived tag (ADT) counts.")
  }
  m <- .seurat_matrix(object, protein_assay, "counts")
  if (!length(m)) {
    .stop_kind("KeyError", "protein assay '", protein_assay, "' holds no raw counts (its ",
               "'counts' is empty). Pass protein_assay = the assay of the raw antibody-derived ",
               "tag (ADT) counts.")
  }
  .protein_matrix(m, cells, paste0("protein assay '", protein_assay, "'"))
}

# Protein counts from the "counts" assay of a SingleCellExperiment's altExp.
.sce_proteins <- function(object, protein_altexp, cells) {
  available <- if (methods::is(object, "SingleCellExperiment")) {
    SingleCellExperiment::altExpNames(object)
  } else {
    character(0)
  }
  if (!is.character(protein_altexp) || length(protein_altexp) != 1L ||
      !protein_altexp %in% available) {
    .stop_kind("KeyError", "protein altExp '", paste(protein_altexp, collapse = ", "),
               "' not found; available altExps: ", .show_some(available),
               ". Pass protein_altexp = the altExp of the antibody-derived tag (ADT) counts.")
  }
  alt <- SingleCellExperiment::altExp(object, protein_altexp)
  an <- SummarizedExperiment::assayNames(alt)
  if (!"counts" %in% an) {
    .stop_kind("KeyError", "altExp '", protein_altexp, "' has no 'counts' assay; available: ",
               .show_some(an))
  }
  .protein_matrix(SummarizedExperiment::assay(alt, "counts", withDimnames = TRUE), cells,
                  paste0("protein altExp '", protein_altexp, "'"))
}

# Further matrices (layers) of the counts' shape, by name, read by `get(name)`; ones whose
# genes or cells differ from the counts' are left out with a warning.
.same_shape_layers <- function(names, get, counts) {
  out <- list()
  for (l in names) {
    m <- get(l)
    if (!identical(dim(m), dim(counts)) ||
        !identical(unname(dimnames(m)), unname(dimnames(counts)))) {
      warning("layer '", l, "' skipped: its genes or cells differ from those of the counts",
              call. = FALSE)
      next
    }
    out[[l]] <- m
  }
  out
}

# A Seurat object's parts: `assay`'s `slot` as the counts, meta.data, the assay's feature
# metadata, reductions, the protein assay's counts and other slots / layers of `assay`.
.seurat_parts <- function(object, assay = NULL, slot = "counts", metadata = TRUE,
                          reductions = TRUE, protein_assay = NULL, layers = NULL) {
  assays <- SeuratObject::Assays(object)
  assay <- .or_default(assay, SeuratObject::DefaultAssay(object))
  if (!is.character(assay) || length(assay) != 1 || !assay %in% assays) {
    .stop_kind("KeyError", "assay '", paste(assay, collapse = ", "), "' not found; available: ",
               .show_some(assays))
  }
  counts <- .seurat_matrix(object, assay, slot)
  if (!length(counts)) {
    normalized_only <- slot == "counts" &&
      length(tryCatch(.seurat_matrix(object, assay, "data"), error = function(e) NULL)) > 0
    .stop_kind("KeyError", "assay '", assay, "' holds no ", slot, " (its '", slot,
               "' is empty)", if (normalized_only) {
                 paste0("; it holds normalized values ('data') only, and the models need the raw ",
                        "counts: pass assay = an assay whose counts hold them, or restore them")
               })
  }
  parts <- .parts(counts, what = paste0("Seurat assay '", assay, "' (", slot, ")"),
                  hint = "Pass the raw counts: slot = \"counts\"")
  meta <- .with_split_column(object[[]], .seurat5_split(object, assay, slot))
  rows <- match(parts$cells, rownames(meta))
  if (anyNA(rows)) {
    .stop_kind("ValueError", "the rows of meta.data do not match the cells of assay '", assay,
               "'")
  }
  parts$obs <- .metadata_columns(meta, metadata, "metadata", rows = rows)
  fmeta <- object[[assay]][[]]
  if (is.data.frame(fmeta) && ncol(fmeta)) {
    parts$var <- .metadata_columns(fmeta, TRUE, "feature metadata",
                                   rows = match(parts$features, rownames(fmeta)))
  }
  red_names <- .select_names(reductions, SeuratObject::Reductions(object), "reduction(s)")
  reds <- lapply(red_names, function(r) SeuratObject::Embeddings(object, reduction = r))
  names(reds) <- red_names
  parts$reductions <- .align_reductions(reds, parts$cells)
  if (!is.null(protein_assay)) {
    parts$proteins <- .seurat_proteins(object, protein_assay, parts$cells)
  }
  if (length(layers) && !isFALSE(layers)) {
    have <- .seurat_layer_names(object, assay)
    lay <- .select_names(layers, setdiff(have, c(slot, "counts", "scale.data")), "layer(s)")
    parts$layers <- .same_shape_layers(lay, function(l) .seurat_matrix(object, assay, l),
                                       counts)
  }
  parts
}

# SeuratObject 5's functions (Layers, LayerData), looked up when called: written as
# SeuratObject::Layers they would make R CMD check fail where SeuratObject 4 is installed.
.so5 <- function(name) getExportedValue("SeuratObject", name)

# Cell metadata with the split of the counts' layer (a factor from .seurat5_split(), or NULL:
# not split) as column .split_column, replacing a column of that name.
.with_split_column <- function(meta, split) {
  if (is.null(split)) return(meta)
  meta[[.split_column]] <- split[rownames(meta)]
  meta
}

# Non-empty slots (SeuratObject 4) or layers (SeuratObject 5; a split layer by its name, not
# its parts') of an assay.
.seurat_layer_names <- function(object, assay) {
  if (.seuratobject_v5()) {
    have <- .so5("Layers")(object[[assay]])
    return(unique(vapply(have, function(l) {
      base <- have[startsWith(l, paste0(have, "."))]
      if (length(base)) return(base[1])
      dot <- regexpr(".", l, fixed = TRUE)
      # a part "<layer>.<group>" of a split layer whose own name is not a layer
      if (dot > 1L && sum(startsWith(have, substr(l, 1L, dot))) > 1L) substr(l, 1L, dot - 1L)
      else l
    }, character(1), USE.NAMES = FALSE)))
  }
  have <- c("counts", "data", "scale.data")
  have[vapply(have, function(l) {
    length(SeuratObject::GetAssayData(object, slot = l, assay = assay)) > 0
  }, logical(1))]
}

# reducedDimNames(x) without its cost: the accessor runs updateObject() on the whole object,
# a noticeable share of converting it (bench_convert_sce.R); the names are those of the
# internal colData's reducedDims table, read directly when it is there.
.sce_reduced_dim_names <- function(x) {
  fast <- tryCatch(colnames(SingleCellExperiment::int_colData(x)[["reducedDims"]]),
                   error = function(e) NULL)
  if (is.character(fast)) return(fast)
  SingleCellExperiment::reducedDimNames(x)
}

# A SummarizedExperiment's parts: assay `assay.type` as the counts, colData, rowData,
# reducedDims (SingleCellExperiment), the protein altExp's counts and the other assays.
.sce_parts <- function(object, assay.type = "counts", metadata = TRUE, reductions = TRUE,
                       protein_altexp = NULL, layers = NULL) {
  an <- SummarizedExperiment::assayNames(object)
  if (is.character(assay.type) && !assay.type %in% an || length(assay.type) != 1) {
    .stop_kind("KeyError", "assay.type '", paste(assay.type, collapse = ", "),
               "' not found; available: ", .show_some(an))
  }
  parts <- .parts(SummarizedExperiment::assay(object, assay.type, withDimnames = TRUE),
                  what = paste0("assay '", assay.type, "'"),
                  hint = "Pass the raw counts: assay.type = \"counts\"")
  parts$obs <- .metadata_columns(SummarizedExperiment::colData(object), metadata, "colData")
  parts$var <- .metadata_columns(SummarizedExperiment::rowData(object), TRUE, "rowData")
  if (methods::is(object, "SingleCellExperiment")) {
    red_names <- .select_names(reductions, .sce_reduced_dim_names(object), "reducedDim(s)")
    reds <- lapply(red_names, function(r) {
      e <- SingleCellExperiment::reducedDim(object, r)
      if (!is.null(colnames(object))) rownames(e) <- colnames(object)
      e
    })
    names(reds) <- red_names
    parts$reductions <- .align_reductions(reds, parts$cells)
  } else if (is.character(reductions) && length(reductions)) {
    stop("a SummarizedExperiment has no reducedDims", call. = FALSE)
  }
  if (!is.null(protein_altexp)) {
    parts$proteins <- .sce_proteins(object, protein_altexp, parts$cells)
  }
  if (length(layers) && !isFALSE(layers)) {
    counts_name <- if (is.character(assay.type)) assay.type else an[assay.type]
    lay <- .select_names(layers, setdiff(an, counts_name), "layer(s)")
    parts$layers <- .same_shape_layers(
      lay, function(l) SummarizedExperiment::assay(object, l, withDimnames = TRUE),
      parts$counts)
  }
  parts
}

# ---- parts -> AnnData (reticulate) -------------------------------------------------------------

# Protein counts must be counts too: finite, and (unless allowed) non-negative whole numbers.
.check_protein_counts <- function(m, allow_non_counts, what) {
  if (anyNA(m) || any(is.infinite(m))) {
    stop(what, " contains NaN/NA or infinite values; counts must be finite.", call. = FALSE)
  }
  if (allow_non_counts || !length(m)) return(invisible(TRUE))
  if (min(m) < 0 || any(m != round(m))) {
    stop(what, " does not hold raw counts (negative or non-integer values, e.g. ",
         signif(m[m < 0 | m != round(m)][1], 6), "). ",
         .counts_fix("Pass the raw ADT counts", protein = TRUE), call. = FALSE)
  }
  invisible(TRUE)
}

# proteins x cells matrix -> pandas DataFrame, cells x proteins (float64).
.py_protein_frame <- function(m) {
  py <- .cellvi_py()
  values <- t(m)
  dimnames(values) <- NULL
  py$pd$DataFrame(reticulate::np_array(values, dtype = "float64", order = "C"),
                  index = .py_index(colnames(m)), columns = .py_index(rownames(m)))
}

# The parts as an AnnData: counts -> CSR X, obs, var, reductions -> obsm["X_<name>"], proteins
# -> obsm["protein_expression"] (a DataFrame). `features` keeps those genes, in that order.
.build_anndata <- function(parts, features, allow_non_counts) {
  py <- .cellvi_py()
  m <- .as_dgc(parts$counts, parts$what)
  genes <- parts$features
  cells <- parts$cells
  var_cols <- parts$var
  fidx <- .select_features(features, genes)
  if (!is.null(fidx)) {
    m <- m[fidx, , drop = FALSE]
    genes <- genes[fidx]
    var_cols <- lapply(var_cols, function(v) v[fidx])
  }
  if (!is.null(parts$proteins)) {
    .check_protein_counts(parts$proteins, allow_non_counts, "the protein counts")
  }
  adata <- py$ad$AnnData(X = .dgc_to_py_csr(m, allow_non_counts, parts$what, parts$hint),
                         obs = .py_dataframe(parts$obs, cells),
                         var = .py_dataframe(var_cols, genes))
  for (nm in names(parts$reductions)) {
    emb <- parts$reductions[[nm]]
    dimnames(emb) <- NULL
    adata$obsm$`__setitem__`(paste0("X_", nm),
                             reticulate::np_array(emb, dtype = "float64", order = "C"))
  }
  if (!is.null(parts$proteins)) {
    adata$obsm$`__setitem__`(.protein_obsm_key, .py_protein_frame(parts$proteins))
  }
  adata
}

#' Convert a Seurat or SingleCellExperiment object to a Python AnnData
#'
#' Builds an `anndata.AnnData` (a reticulate handle to the Python object) holding the raw
#' counts as a `scipy.sparse.csr_matrix` (cells x genes, float32 values, int32 indices), the
#' cell metadata as `obs`, the feature metadata as `var` and the reductions as
#' `obsm["X_<name>"]` (float64 arrays). The sparse matrix is never densified or transposed: a
#' genes x cells `dgCMatrix` already has the memory layout of a cells x genes CSR matrix, and
#' its `@x`, `@i`, `@p` slots are handed over as they are.
#'
#' The counts are checked first: NaN and infinite values are always refused; negative or
#' non-integer values (normalized data) are refused unless `allow_non_counts = TRUE`. Protein
#' counts (`protein_assay`, `protein_altexp`) are checked the same way; they are few, so they
#' travel dense, as the models expect them.
#'
#' Metadata column types map as follows (and back, with [as_sce()] / [as_seurat()]):
#' factor -> pandas `Categorical` with the same levels in the same order (unused levels and
#' the ordered flag kept); logical -> `bool` (with NA: pandas nullable `boolean`); integer ->
#' `int32` (with NA: pandas nullable `Int32`); double -> `float64` (NA becomes NaN, and NaN
#' comes back as NA); character -> `object` array of `str` (NA -> `None`); Date/POSIXt and
#' other atomic types -> strings. Columns that are lists, matrices or nested tables are left
#' out with a warning.
#'
#' @param object A `Seurat` object, a `SingleCellExperiment` (or `SummarizedExperiment`), or a
#'   genes x cells matrix (`dgCMatrix`, any `Matrix`, or a base `matrix`).
#' @param assay Seurat: the assay to convert (default: `DefaultAssay(object)`).
#' @param slot Seurat: the slot (SeuratObject 5: layer) holding the raw counts, `"counts"`.
#'   `"data"` and `"scale.data"` are refused unless `allow_non_counts = TRUE`.
#' @param assay.type SingleCellExperiment: the assay holding the raw counts, `"counts"`.
#' @param features `NULL` (all features) or a character vector of feature names to keep, in
#'   that order.
#' @param metadata `TRUE` (all cell metadata columns), `FALSE` (none), or a character vector
#'   of column names.
#' @param reductions `TRUE` (all reductions / reducedDims, as `obsm["X_<name>"]`), `FALSE`
#'   (none), or a character vector of reduction names.
#' @param allow_non_counts `FALSE`: refuse negative or non-integer values (normalized data).
#'   `TRUE`: convert them anyway.
#' @param protein_assay Seurat: an assay of protein counts (antibody-derived tags, e.g.
#'   `"ADT"`) to convert too, for totalVI: its `counts` go to `obsm["protein_expression"]`
#'   as a pandas DataFrame (cells x proteins, protein names as columns). `NULL`: none.
#' @param protein_altexp SingleCellExperiment: the same from `altExp(object,
#'   protein_altexp)`'s `counts` assay (e.g. `"ADT"`). `NULL`: none.
#' @param obs,var Matrix method: optional data.frames of cell (rows = columns of `object`)
#'   and feature (rows = rows of `object`) metadata.
#' @param ... Not used; an error if given.
#' @return A Python `anndata.AnnData` (reticulate object, not converted to R).
#' @seealso [as_sce()], [as_seurat()], [read_h5ad()]
#' @examples
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   adata <- as_anndata(SeuratObject::pbmc_small)
#'   print(adata)                  # AnnData object with n_obs x n_vars = 80 x 230
#'   print(adata$obsm$keys())      # X_pca, X_tsne
#' }
#' if (cellvi_available() && requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   counts <- matrix(rpois(200, 3), nrow = 20,
#'                    dimnames = list(paste0("gene", 1:20), paste0("cell", 1:10)))
#'   sce <- SingleCellExperiment::SingleCellExperiment(
#'     assays = list(counts = counts),
#'     colData = data.frame(batch = factor(rep(c("b", "a"), 5), levels = c("b", "a"))))
#'   as_anndata(sce, features = c("gene1", "gene5"))
#' }
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   # a Seurat object with an ADT assay (CITE-seq): proteins in obsm["protein_expression"]
#'   cite <- cellvi_dataset("pbmc_cite_small")
#'   adata <- as_anndata(cite, protein_assay = "ADT")
#'   adata$obsm[["protein_expression"]]$shape
#' }
#' @export
as_anndata <- function(object, ...) {
  UseMethod("as_anndata")
}

#' @rdname as_anndata
#' @export
as_anndata.default <- function(object, ...) {
  stop("as_anndata() does not know objects of class '", paste(class(object), collapse = "/"),
       "'; it converts Seurat, SingleCellExperiment (or SummarizedExperiment) objects and ",
       "genes x cells matrices.", call. = FALSE)
}

#' @rdname as_anndata
#' @export
as_anndata.Seurat <- function(object, assay = NULL, slot = "counts", features = NULL,
                              metadata = TRUE, reductions = TRUE, allow_non_counts = FALSE,
                              protein_assay = NULL, ...) {
  .no_dots(...)
  .require_pkg("SeuratObject", "convert a Seurat object")
  if (!is.character(slot) || length(slot) != 1) stop("slot must be one string, e.g. \"counts\"",
                                                     call. = FALSE)
  if (slot %in% c("data", "scale.data") && !allow_non_counts) {
    stop("slot = \"", slot, "\" holds normalized or scaled values, not raw counts; the models ",
         "need raw counts: use slot = \"counts\" (or set allow_non_counts = TRUE).",
         call. = FALSE)
  }
  parts <- .seurat_parts(object, assay = assay, slot = slot, metadata = metadata,
                         reductions = reductions, protein_assay = protein_assay)
  .build_anndata(parts, features, allow_non_counts)
}

.seuratobject_v5 <- function() {
  utils::packageVersion("SeuratObject") >= "5.0.0"
}

# The genes x cells matrix of one slot/layer: GetAssayData for SeuratObject 4, LayerData for
# SeuratObject >= 5, where a layer split in parts ("counts.A", "counts.B", ...) is read as one
# matrix (.seurat5_layer(), below).
.seurat_matrix <- function(object, assay, slot) {
  if (.seuratobject_v5()) return(.seurat5_layer(object, assay, slot))
  SeuratObject::GetAssayData(object, slot = slot, assay = assay)
}

# ---- Seurat v5 layers ------------------------------------------------------------------------
# A SeuratObject 5 assay (Assay5) holds its matrices as layers; `split(object[["RNA"]], f = ...)`
# cuts each layer into parts named "<layer>.<group>" (counts.A, counts.B, ...), each holding
# some of the cells. Conversion reads the parts of a layer together, as one genes x cells matrix
# with the cells in the object's order, and offers the split as a metadata column
# (.split_column) so that it can be the batch. Nothing here needs Python (rds.R sources it).

# The metadata column that carries the split of a layer (its group per cell).
.split_column <- "split.layer"

# The layers of assay object `a` that hold `layer`: the layer itself, or else its split parts
# "<layer>.<group>" in the assay's order (character(0): none). v3/v4 assays: the slot.
.seurat5_parts_of <- function(a, layer) {
  have <- .so5("Layers")(a)
  if (layer %in% have) return(layer)
  have[startsWith(have, paste0(layer, "."))]
}

# The group of each cell of assay `assay` in the split of `layer`: a factor named by cell, in
# the assay's cell order, levels in the order of the parts; NULL when the layer is not split.
.seurat5_split <- function(object, assay, layer = "counts") {
  if (!.seuratobject_v5()) return(NULL)
  a <- object[[assay]]
  if (!inherits(a, "StdAssay")) return(NULL)
  parts <- .seurat5_parts_of(a, layer)
  if (length(parts) < 2L || identical(parts, layer)) return(NULL)
  groups <- substring(parts, nchar(layer) + 2L)
  cells <- SeuratObject::Cells(a)
  group <- rep(NA_character_, length(cells))
  for (k in seq_along(parts)) {
    group[match(SeuratObject::Cells(a, layer = parts[k]), cells)] <- groups[k]
  }
  stats::setNames(factor(group, levels = groups), cells)
}

# The genes x cells matrix of `layer` of `assay` in a SeuratObject 5 object; the parts of a split
# layer joined (features of any part, in the assay's order; cells in the assay's order).
.seurat5_layer <- function(object, assay, layer) {
  a <- object[[assay]]
  parts <- .seurat5_parts_of(a, layer)
  if (!length(parts)) {
    .stop_kind("KeyError", "layer '", layer, "' not found in assay '", assay, "'; available: ",
               .show_some(.so5("Layers")(a)))
  }
  mats <- lapply(parts, function(l) {
    m <- .so5("LayerData")(a, layer = l)
    if (is.null(dimnames(m)[[1]]) || is.null(dimnames(m)[[2]])) {
      dimnames(m) <- list(SeuratObject::Features(a, layer = l), SeuratObject::Cells(a, layer = l))
    }
    m
  })
  if (length(mats) == 1L) return(mats[[1]])
  .join_layer_parts(mats, SeuratObject::Features(a), SeuratObject::Cells(a),
                    paste0("layer '", layer, "' of assay '", assay, "'"))
}

# Joins matrices (features x cells, each some of the cells) into one: rows = the features of
# `features` that some part has, columns = the cells of `cells` that some part has, in those
# orders. Sparse parts stay sparse (dense parts are joined dense); a feature missing from a part
# is zero there (said in a warning).
.join_layer_parts <- function(mats, features, cells, what) {
  have <- unique(unlist(lapply(mats, rownames), use.names = FALSE))
  features <- features[features %in% have]
  dense <- all(vapply(mats, is.matrix, logical(1)))
  short <- vapply(mats, function(m) nrow(m) != length(features) ||
                    !identical(rownames(m), features), logical(1))
  if (any(vapply(mats, nrow, integer(1)) < length(features))) {
    warning(what, ": some parts lack some features (", length(features), " in all); they ",
            "count as zero there", call. = FALSE)
  }
  mats <- lapply(seq_along(mats), function(k) {
    m <- mats[[k]]
    if (!dense) m <- .as_dgc(m, what)
    if (!short[k]) return(m)
    rows <- match(features, rownames(m))
    if (dense) {
      out <- matrix(0, length(features), ncol(m), dimnames = list(features, colnames(m)))
      out[!is.na(rows), ] <- m[rows[!is.na(rows)], , drop = FALSE]
      return(out)
    }
    # rows of the part in the joined order (those it lacks stay empty)
    keep <- match(rownames(m), features)
    m <- m[!is.na(keep), , drop = FALSE]
    Matrix::sparseMatrix(i = keep[!is.na(keep)][m@i + 1L], p = m@p, x = m@x,
                         dims = c(length(features), ncol(m)),
                         dimnames = list(features, colnames(m)))
  })
  joined <- do.call(cbind, mats)
  order <- match(cells, colnames(joined))
  joined[, order[!is.na(order)], drop = FALSE]
}

#' @rdname as_anndata
#' @export
as_anndata.SummarizedExperiment <- function(object, assay.type = "counts", features = NULL,
                                            metadata = TRUE, reductions = TRUE,
                                            allow_non_counts = FALSE, protein_altexp = NULL,
                                            ...) {
  .no_dots(...)
  .require_pkg("SummarizedExperiment", "convert a SingleCellExperiment")
  if (methods::is(object, "SingleCellExperiment")) {
    .require_pkg("SingleCellExperiment", "convert a SingleCellExperiment")
  }
  parts <- .sce_parts(object, assay.type = assay.type, metadata = metadata,
                      reductions = reductions, protein_altexp = protein_altexp)
  .build_anndata(parts, features, allow_non_counts)
}

#' @rdname as_anndata
#' @export
as_anndata.SingleCellExperiment <- as_anndata.SummarizedExperiment

#' @rdname as_anndata
#' @export
as_anndata.Matrix <- function(object, features = NULL, obs = NULL, var = NULL,
                              allow_non_counts = FALSE, ...) {
  .no_dots(...)
  obs <- .aligned_table(obs, colnames(object), "obs", "colnames")
  var <- .aligned_table(var, rownames(object), "var", "rownames")
  obs_cols <- if (is.null(obs)) list() else .metadata_columns(obs, TRUE, "obs")
  var_cols <- if (is.null(var)) list() else .metadata_columns(var, TRUE, "var")
  for (x in list(list(obs_cols, ncol(object), "obs", "columns"),
                 list(var_cols, nrow(object), "var", "rows"))) {
    bad <- vapply(x[[1]], length, integer(1)) != x[[2]]
    if (any(bad)) stop(x[[3]], " must have one row per matrix ", x[[4]], " (", x[[2]], ")",
                       call. = FALSE)
  }
  .build_anndata(.parts(object, obs = obs_cols, var = var_cols), features, allow_non_counts)
}

#' @rdname as_anndata
#' @export
as_anndata.matrix <- as_anndata.Matrix

# ---- Python -> R ----------------------------------------------------------------------------

# numpy/pandas 1-d array-like -> R character vector (dim dropped).
.py_to_chr <- function(x) {
  v <- reticulate::py_to_r(.cellvi_py()$np$asarray(x, dtype = "str"))
  dim(v) <- NULL
  as.character(v)
}

.py_vec <- function(x) {
  v <- reticulate::py_to_r(x)
  dim(v) <- NULL
  v
}

# One pandas Series -> R vector (the inverse of .r_column_to_py; NaN in floats becomes NA).
.py_column_to_r <- function(s) {
  py <- .cellvi_py()
  dt <- s$dtype
  dname <- reticulate::py_to_r(py$bi$str(dt))
  kind <- reticulate::py_to_r(dt$kind)
  na <- .py_vec(s$isna()$to_numpy(dtype = "bool"))
  if (identical(dname, "category")) {
    codes <- .py_vec(s$cat$codes$to_numpy()$astype("int32"))
    codes[codes < 0L] <- NA_integer_
    lv <- .py_to_chr(s$cat$categories)
    ordered <- reticulate::py_to_r(s$cat$ordered)
    return(structure(codes + 1L, levels = lv,
                     class = if (isTRUE(ordered)) c("ordered", "factor") else "factor"))
  }
  if (kind == "b") {
    v <- .py_vec(s$to_numpy(dtype = "bool", na_value = FALSE))
    v[na] <- NA
    return(v)
  }
  if (kind %in% c("i", "u")) {
    fits <- all(na) || {
      lo <- reticulate::py_to_r(py$bi$float(s$min()))
      hi <- reticulate::py_to_r(py$bi$float(s$max()))
      lo > -.Machine$integer.max - 1 && hi <= .Machine$integer.max
    }
    v <- if (fits) .py_vec(s$to_numpy(dtype = "int32", na_value = 0L))
         else .py_vec(s$to_numpy(dtype = "float64", na_value = NaN))
    v[na] <- NA
    return(v)
  }
  if (kind == "f") {
    v <- .py_vec(s$to_numpy(dtype = "float64", na_value = NaN))
    v[na] <- NA
    return(v)
  }
  if (kind %in% c("M", "m")) s <- s$astype("str")  # dates and times as pandas prints them
  v <- .py_to_chr(s$to_numpy(dtype = "str", na_value = ""))
  v[na] <- NA
  v
}

# pandas DataFrame -> data.frame (row names from the index, column names kept as they are).
.py_df_to_r <- function(df) {
  py <- .cellvi_py()
  rn <- .py_to_chr(df$index)
  cn <- .py_to_chr(df$columns)
  cols <- lapply(seq_along(cn), function(j) {
    .py_column_to_r(df$iloc$`__getitem__`(reticulate::tuple(py$bi$slice(NULL), j - 1L,
                                                            convert = FALSE)))
  })
  names(cols) <- cn
  if (anyDuplicated(rn)) {
    warning("the index has duplicated names; they were made unique with make.unique()",
            call. = FALSE)
    rn <- make.unique(rn)
  }
  structure(cols, class = "data.frame", row.names = rn)
}

# AnnData X / a layer (cells x genes: CSR, CSC or dense) -> genes x cells dgCMatrix.
# A cells x genes CSR is a genes x cells CSC: data/indices/indptr become @x/@i/@p directly.
.py_matrix_to_dgc <- function(X, genes, cells, what) {
  py <- .cellvi_py()
  if (reticulate::py_is_null_xptr(X) || inherits(X, "python.builtin.NoneType")) {
    stop(what, " is empty (None)", call. = FALSE)
  }
  if (reticulate::py_to_r(py$sp$issparse(X))) {
    if (!identical(reticulate::py_to_r(X$format), "csr")) X <- X$tocsr()
  } else if (reticulate::py_has_attr(X, "to_memory")) {
    X <- X$to_memory()
    if (!reticulate::py_to_r(py$sp$issparse(X))) X <- py$sp$csr_matrix(py$np$asarray(X))
    else X <- X$tocsr()
  } else {
    X <- py$sp$csr_matrix(py$np$asarray(X))
  }
  nnz <- reticulate::py_to_r(X$nnz)
  if (nnz > .Machine$integer.max) {
    stop(what, " has ", nnz, " non-zero values; a dgCMatrix holds at most 2^31 - 1.",
         call. = FALSE)
  }
  if (!reticulate::py_to_r(X$has_canonical_format)) {
    X <- X$copy()
    X$sum_duplicates()  # sorts indices too
  }
  shape <- reticulate::py_to_r(X$shape)
  methods::new("dgCMatrix",
               i = .py_vec(X$indices$astype("int32", copy = FALSE)),
               p = .py_vec(X$indptr$astype("int32", copy = FALSE)),
               x = as.double(.py_vec(X$data)),
               Dim = c(as.integer(shape[[2]]), as.integer(shape[[1]])),
               Dimnames = list(genes, cells))
}

# obsm -> named list of cells x k matrices (rows named by cell). "X_pca" becomes "pca".
# Numeric arrays and DataFrames are converted; sparse or non-numeric entries are left out, and
# so are the keys in `skip`.
.py_obsm_to_r <- function(adata, cells, skip = character(0)) {
  py <- .cellvi_py()
  keys <- setdiff(.py_to_chr(py$bi$list(adata$obsm$keys())), skip)
  out <- list()
  for (k in keys) {
    v <- adata$obsm$`__getitem__`(k)
    if (reticulate::py_to_r(py$sp$issparse(v))) {
      warning("obsm '", k, "' is sparse; it was left out.", call. = FALSE)
      next
    }
    cn <- if (reticulate::py_has_attr(v, "columns")) .py_to_chr(v$columns) else NULL
    arr <- py$np$asarray(v)
    if (!reticulate::py_to_r(arr$dtype$kind) %in% c("b", "i", "u", "f") ||
        reticulate::py_to_r(arr$ndim) != 2L) {
      warning("obsm '", k, "' is not a 2-d numeric array; it was left out.", call. = FALSE)
      next
    }
    m <- reticulate::py_to_r(arr$astype("float64"))
    dimnames(m) <- list(cells, cn)
    out[[sub("^X_", "", k)]] <- m
  }
  out
}

# obsm["protein_expression"] (a DataFrame or an array, cells x proteins) -> proteins x cells
# matrix (dense), or NULL when there is none. Protein names: the DataFrame's columns, else
# uns["protein_names"], else "1", "2", ...
.py_proteins_to_r <- function(adata, cells) {
  py <- .cellvi_py()
  if (!.protein_obsm_key %in% .py_to_chr(py$bi$list(adata$obsm$keys()))) return(NULL)
  v <- adata$obsm$`__getitem__`(.protein_obsm_key)
  names <- if (reticulate::py_has_attr(v, "columns")) {
    .py_to_chr(v$columns)
  } else if ("protein_names" %in% .py_to_chr(py$bi$list(adata$uns$keys()))) {
    .py_to_chr(adata$uns$`__getitem__`("protein_names"))
  }
  if (reticulate::py_to_r(py$sp$issparse(v))) v <- v$toarray()
  arr <- py$np$asarray(v, dtype = "float64")
  if (reticulate::py_to_r(arr$ndim) != 2L) {
    warning("obsm '", .protein_obsm_key, "' is not a 2-d numeric array; it was left out.",
            call. = FALSE)
    return(NULL)
  }
  m <- t(reticulate::py_to_r(arr))
  if (is.null(names) || length(names) != nrow(m)) names <- as.character(seq_len(nrow(m)))
  dimnames(m) <- list(names, cells)
  m
}

.check_anndata <- function(adata) {
  if (!inherits(adata, "python.builtin.object") ||
      !reticulate::py_has_attr(adata, "obs") || !reticulate::py_has_attr(adata, "var") ||
      !reticulate::py_has_attr(adata, "obsm")) {
    stop("expected a Python AnnData (e.g. from read_h5ad() or as_anndata()), got an object of ",
         "class '", class(adata)[1], "'", call. = FALSE)
  }
  invisible(adata)
}

#' Convert a Python AnnData to a SingleCellExperiment
#'
#' The way back from [as_anndata()] or [read_h5ad()]: `X` (cells x genes; CSR, CSC or dense)
#' becomes the genes x cells `dgCMatrix` assay `X_name` (a CSR matrix is reused without
#' transposing: its indptr/indices/data are the `@p`/`@i`/`@x` slots), every `layers` entry
#' becomes another assay, `obs` becomes `colData` and `var` becomes `rowData` (types restored
#' as described in [as_anndata()]: Categorical -> factor with the levels in order, bool ->
#' logical, integers -> integer (double beyond the integer range), floats -> double with NaN as
#' NA, strings -> character), numeric `obsm` entries become `reducedDims`, named without
#' their `X_` prefix (`X_scVI` -> `scVI`), and the protein counts of
#' `obsm["protein_expression"]` (CITE-seq, as totalVI reads them) become the alternative
#' experiment `protein_altexp` ("ADT").
#'
#' @param adata A Python `anndata.AnnData` (reticulate object).
#' @param X_name Name of the assay that receives `X` (default `"counts"`; if a layer has that
#'   name too, `X` is stored as `"X"`).
#' @param protein_altexp Name of the alternative experiment that receives the protein counts
#'   of `obsm["protein_expression"]` (totalVI's input; proteins x cells, as the dense
#'   `counts` assay of `altExp(sce, protein_altexp)`). `NULL`: proteins become a reducedDim
#'   like any other obsm entry.
#' @return A `SingleCellExperiment`.
#' @seealso [as_seurat()], [as_anndata()], [read_h5ad()]
#' @examples
#' if (cellvi_available() && requireNamespace("SingleCellExperiment", quietly = TRUE) &&
#'     requireNamespace("SeuratObject", quietly = TRUE)) {
#'   adata <- as_anndata(SeuratObject::pbmc_small)
#'   sce <- as_sce(adata)
#'   print(sce)
#'   levels(sce$RNA_snn_res.1)
#' }
#' @export
as_sce <- function(adata, X_name = "counts", protein_altexp = "ADT") {
  .check_anndata(adata)
  .require_pkg("SingleCellExperiment", "build a SingleCellExperiment")
  .require_pkg("S4Vectors", "build a SingleCellExperiment")
  py <- .cellvi_py()
  obs <- .py_df_to_r(adata$obs)
  var <- .py_df_to_r(adata$var)
  cells <- rownames(obs)
  genes <- rownames(var)
  layer_names <- .py_to_chr(py$bi$list(adata$layers$keys()))
  if (X_name %in% layer_names) X_name <- "X"
  assays <- list()
  assays[[X_name]] <- .py_matrix_to_dgc(adata$X, genes, cells, "AnnData X")
  for (ln in layer_names) {
    assays[[ln]] <- .py_matrix_to_dgc(adata$layers$`__getitem__`(ln), genes, cells,
                                      paste0("layer '", ln, "'"))
  }
  proteins <- if (!is.null(protein_altexp)) .py_proteins_to_r(adata, cells)
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = assays,
    colData = S4Vectors::DataFrame(obs, check.names = FALSE),
    rowData = S4Vectors::DataFrame(var, check.names = FALSE),
    reducedDims = .py_obsm_to_r(adata, cells,
                                skip = if (!is.null(proteins)) .protein_obsm_key)
  )
  if (!is.null(proteins)) {
    SingleCellExperiment::altExp(sce, protein_altexp) <-
      SummarizedExperiment::SummarizedExperiment(assays = list(counts = proteins))
  }
  sce
}

# "X_scVI" / "scVI" -> "scVI_"; Seurat keys are letters and digits followed by "_".
.seurat_key <- function(name) {
  k <- gsub("[^[:alnum:]]", "", name)
  if (!nzchar(k) || grepl("^[0-9]", k)) k <- paste0("DR", k)
  paste0(k, "_")
}

#' Convert a Python AnnData to a Seurat object
#'
#' The way back from [as_anndata()] or [read_h5ad()] for Seurat users: `X` (cells x genes;
#' CSR, CSC or dense, expected to hold raw counts) becomes the `counts` of assay `assay` as a
#' genes x cells `dgCMatrix` (no transposition: a CSR matrix's indptr/indices/data are the
#' `@p`/`@i`/`@x` slots), `obs` becomes `meta.data` (types restored as described in
#' [as_anndata()]), `var` becomes the assay's feature metadata, and each numeric `obsm` entry
#' becomes a `DimReduc` named without its `X_` prefix, with a key made from the name
#' (`X_scVI` -> reduction `scVI`, key `scVI_`). `layers` are not carried over. If `obs` has an
#' `orig.ident` column it also sets the identities. The protein counts of
#' `obsm["protein_expression"]` (CITE-seq, as totalVI reads them) become the assay
#' `protein_assay` ("ADT"). Seurat itself replaces underscores in feature names (genes and
#' proteins) with dashes.
#'
#' @param adata A Python `anndata.AnnData` (reticulate object).
#' @param assay Name of the assay to create (default `"RNA"`).
#' @param protein_assay Name of the assay that receives the protein counts of
#'   `obsm["protein_expression"]` (totalVI's input) as its `counts`. `NULL`: proteins become
#'   a reduction like any other obsm entry.
#' @param split.by SeuratObject 5 only: an `obs` column by which the counts layer of `assay`
#'   is split (`counts.<group>` layers, as `split(object[["RNA"]], f = ...)` makes them). The
#'   default, `"split.layer"`, is the column [as_anndata()] writes for an object whose counts
#'   are split, so a split object comes back split; that column is then dropped from the
#'   metadata (the layers hold it). Nothing is split when the column is absent, with
#'   SeuratObject 4 (where the column stays metadata), or with `split.by = NULL`.
#' @return A `Seurat` object (with SeuratObject 5: assays of class `Assay5`, as
#'   `CreateSeuratObject()` makes them).
#' @seealso [as_sce()], [as_anndata()], [read_h5ad()]
#' @examples
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   adata <- as_anndata(SeuratObject::pbmc_small)
#'   seu <- as_seurat(adata)
#'   print(seu)
#'   SeuratObject::Reductions(seu)   # "pca" "tsne"
#' }
#' @export
as_seurat <- function(adata, assay = "RNA", protein_assay = "ADT", split.by = "split.layer") {
  .check_anndata(adata)
  .require_pkg("SeuratObject", "build a Seurat object")
  obs <- .py_df_to_r(adata$obs)
  var <- .py_df_to_r(adata$var)
  cells <- rownames(obs)
  counts <- .py_matrix_to_dgc(adata$X, rownames(var), cells, "AnnData X")
  object <- SeuratObject::CreateSeuratObject(counts = counts, assay = assay,
                                             meta.data = if (ncol(obs)) obs)
  if ("orig.ident" %in% colnames(obs)) SeuratObject::Idents(object) <- "orig.ident"
  if (ncol(var)) {
    rownames(var) <- rownames(object[[assay]])
    object[[assay]] <- SeuratObject::AddMetaData(object[[assay]], metadata = var)
  }
  proteins <- if (!is.null(protein_assay)) .py_proteins_to_r(adata, cells)
  if (!is.null(proteins)) {
    rownames(proteins) <- gsub("_", "-", rownames(proteins), fixed = TRUE)  # as Seurat would
    proteins <- .as_dgc(proteins, "the protein counts")
    object[[protein_assay]] <- if (inherits(object[[assay]], "StdAssay")) {
      .so5("CreateAssay5Object")(counts = proteins)  # v5 like the RNA (SeuratObject 5)
    } else {
      SeuratObject::CreateAssayObject(counts = proteins)
    }
  }
  reds <- .py_obsm_to_r(adata, colnames(object),
                        skip = if (!is.null(proteins)) .protein_obsm_key)
  for (nm in names(reds)) {
    emb <- reds[[nm]]
    key <- .seurat_key(nm)
    colnames(emb) <- paste0(key, seq_len(ncol(emb)))
    object[[nm]] <- SeuratObject::CreateDimReducObject(embeddings = emb, key = key,
                                                       assay = assay)
  }
  .seurat5_split_by(object, assay, split.by)
}

# as_seurat()'s split: the counts of `assay` split by the metadata column `split.by` (SeuratObject
# 5; the column .split_column is dropped afterwards: the layers hold it).
.seurat5_split_by <- function(object, assay, split.by) {
  if (is.null(split.by)) return(object)
  if (!is.character(split.by) || length(split.by) != 1L || is.na(split.by)) {
    stop("split.by must be one obs column name or NULL", call. = FALSE)
  }
  present <- split.by %in% colnames(object[[]])
  if (!present || !.seuratobject_v5()) {
    if (!identical(split.by, .split_column)) {
      if (!present) {
        .stop_kind("KeyError", "obs column '", split.by, "' (split.by) not found; available: ",
                   .show_some(colnames(object[[]]), 20))
      }
      stop("split.by needs SeuratObject >= 5 (split layers); installed: ",
           utils::packageVersion("SeuratObject"), call. = FALSE)
    }
    return(object)
  }
  if (!inherits(object[[assay]], "StdAssay")) {
    stop("split.by: assay '", assay, "' is not a v5 assay (Assay5); set ",
         "options(Seurat.object.assay.version = \"v5\") or split.by = NULL", call. = FALSE)
  }
  f <- object[[split.by, drop = TRUE]]
  if (anyNA(f)) {
    stop("obs column '", split.by, "' has NA values; every cell needs a group to split by",
         call. = FALSE)
  }
  groups <- if (is.factor(f)) droplevels(f) else factor(f, levels = unique(f))
  a <- suppressMessages(split(object[[assay]], f = stats::setNames(groups, colnames(object)),
                              layers = "counts"))
  object[[assay]] <- a
  if (identical(split.by, .split_column)) object[[split.by]] <- NULL
  object
}

#' Read an .h5ad file into a Python AnnData
#'
#' Calls Python's `anndata.read_h5ad()` and returns the reticulate handle, ready for
#' [as_sce()] or [as_seurat()].
#'
#' @param path Path to an `.h5ad` file.
#' @return A Python `anndata.AnnData` (reticulate object).
#' @seealso [as_sce()], [as_seurat()], [as_anndata()]
#' @examples
#' path <- file.path(tempdir(), "example.h5ad")
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   as_anndata(SeuratObject::pbmc_small)$write_h5ad(path)
#'   adata <- read_h5ad(path)
#'   adata$shape
#' }
#' @export
read_h5ad <- function(path) {
  if (!is.character(path) || length(path) != 1 || is.na(path)) {
    stop("path must be one file name", call. = FALSE)
  }
  if (!file.exists(path)) {
    stop("file not found: '", path, "' (working directory: ", getwd(), ")", call. = FALSE)
  }
  if (dir.exists(path)) stop("'", path, "' is a directory, not an .h5ad file", call. = FALSE)
  .cellvi_py()$ad$read_h5ad(normalizePath(path))
}
