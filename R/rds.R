# The R half of Python's cellvi.interop.read_rds() (through rpy2): reads a Seurat object or
# SingleCellExperiment from an .rds file and returns its parts -- chosen by .seurat_parts() /
# .sce_parts() in convert.R, the same code as as_anndata() -- as plain R vectors that Python
# reads through their buffers: matrices as dgCMatrix slots (or dense values), data-frame columns
# as (type, values[, levels]) and names as one joined string.
#
# Python sources convert.R and this file into the R it embeds (from a source checkout), or
# takes cellvi:::.rds_read from the installed R package; nothing here may call Python.

# Record separator: names travel from R as one string joined with it, because rpy2 converts a
# character vector string by string, far more slowly than paste and one split in Python. When
# a value contains it, the vector travels as it is instead.
.rds_sep <- "\036"

# strings: one joined string plus the 0-based positions of NAs
.rds_chr <- function(x) {
  x <- enc2utf8(as.character(x))
  na <- is.na(x)
  x[na] <- ""
  out <- list(n = length(x), na = which(na) - 1L)
  if (any(grepl(.rds_sep, x, fixed = TRUE))) out$values <- x
  else out$joined <- paste(x, collapse = .rds_sep)
  out
}

.rds_sparse <- function(m, what) {
  requireNamespace("Matrix", quietly = TRUE)
  m <- .as_dgc(m, what)
  list(x = m@x, i = m@i, p = m@p, dim = m@Dim)
}

# a layer keeps its storage: base matrix -> dense values, anything else -> dgCMatrix slots
.rds_matrix <- function(m, what) {
  if (is.matrix(m)) {
    storage.mode(m) <- "double"
    return(list(dense = as.vector(m), dim = dim(m)))
  }
  .rds_sparse(m, what)
}

.rds_column <- function(v) {
  v <- .plain_column(v)
  if (is.factor(v)) {
    # an NA level (addNA) is missing, not a category (as as_anndata() sends it)
    if (anyNA(levels(v))) v <- factor(v, levels = levels(v)[!is.na(levels(v))], ordered = is.ordered(v))
    return(list(type = "factor", codes = as.integer(unclass(v)), levels = .rds_chr(levels(v)),
                ordered = is.ordered(v)))
  }
  v <- as.vector(v)  # drops classes and attributes the types below do not need
  if (is.logical(v)) return(list(type = "logical", values = v))
  if (is.integer(v)) return(list(type = "integer", values = v))
  if (is.double(v)) return(list(type = "double", values = v))
  list(type = "character", values = .rds_chr(v))
}

.rds_frame <- function(cols) {
  list(names = .rds_chr(.or_default(names(cols), character(0))), columns = unname(lapply(cols, .rds_column)))
}

.rds_named <- function(items, encode) {
  list(names = .rds_chr(.or_default(names(items), character(0))), values = unname(lapply(items, encode)))
}

.rds_object <- function(path) {
  obj <- tryCatch(readRDS(path), error = function(e) {
    .stop_kind("ValueError", "could not read '", path, "' as an .rds file: ", conditionMessage(e))
  })
  cls <- class(obj)
  pkg <- attr(cls, "package")
  if (isS4(obj) && !is.null(pkg) && !pkg %in% c(".GlobalEnv", "methods") &&
      !suppressPackageStartupMessages(requireNamespace(pkg, quietly = TRUE))) {
    .stop_kind("ImportError", "'", path, "' holds an object of class ", cls[1L],
               " from the R package ", pkg, ", which R cannot load; install it in R")
  }
  if (!methods::is(obj, "Seurat") && !methods::is(obj, "SummarizedExperiment")) {
    .stop_kind("TypeError", "'", path, "' holds an R object of class ",
               paste(cls, collapse = "/"), ", not a Seurat or SingleCellExperiment object")
  }
  if (!methods::is(obj, "Seurat") &&
      !suppressPackageStartupMessages(requireNamespace("SummarizedExperiment", quietly = TRUE))) {
    .stop_kind("ImportError", "reading a ", cls[1L], " needs the R package SummarizedExperiment")
  }
  obj
}

# The parts of the object in `path`, encoded. `protein` NULL: the "ADT" assay / altExp when
# there is one; a name: that one; FALSE: none.
.rds_parts <- function(path, assay, layers, all_layers, protein) {
  obj <- .rds_object(path)
  layers <- if (isTRUE(all_layers)) TRUE else layers
  if (methods::is(obj, "Seurat")) {
    have <- SeuratObject::Assays(obj)
    if (is.null(protein)) protein <- if ("ADT" %in% have) "ADT"
    parts <- .seurat_parts(obj, assay = assay, metadata = TRUE, reductions = TRUE,
                           protein_assay = if (!isFALSE(protein)) protein, layers = layers)
    kind <- "Seurat"
  } else {
    have <- if (methods::is(obj, "SingleCellExperiment")) {
      SingleCellExperiment::altExpNames(obj)
    } else {
      character(0)
    }
    if (is.null(protein)) protein <- if ("ADT" %in% have) "ADT"
    parts <- .sce_parts(obj, assay.type = .or_default(assay, "counts"), metadata = TRUE,
                        reductions = TRUE, protein_altexp = if (!isFALSE(protein)) protein,
                        layers = layers)
    kind <- class(obj)[1L]
  }
  proteins <- parts$proteins
  list(kind = kind,
       x = .rds_sparse(parts$counts, parts$what),
       obs_names = .rds_chr(parts$cells), var_names = .rds_chr(parts$features),
       obs = .rds_frame(parts$obs), var = .rds_frame(parts$var),
       obsm = .rds_named(parts$reductions, function(m) {
         list(values = as.double(m), ncol = ncol(m))
       }),
       layers = .rds_named(parts$layers, function(m) .rds_matrix(m, "a layer")),
       proteins = if (!is.null(proteins)) {
         list(values = as.double(proteins), names = .rds_chr(rownames(proteins)))
       })
}

# Entry point for Python: the encoded parts, or list(error = <Python exception name>,
# message); R's warnings are collected in $warnings (Python re-issues them).
.rds_read <- function(path, assay = NULL, layers = character(0), all_layers = FALSE,
                      protein = NULL) {
  warns <- character(0)
  res <- tryCatch(
    withCallingHandlers(
      suppressPackageStartupMessages(.rds_parts(path, assay, layers, all_layers, protein)),
      warning = function(w) {
        warns <<- c(warns, conditionMessage(w))
        invokeRestart("muffleWarning")
      }),
    cellvi_error = function(e) list(error = e$type, message = conditionMessage(e)),
    error = function(e) {
      list(error = "RuntimeError",
           message = paste0("R failed while reading '", path, "': ", conditionMessage(e)))
    })
  res$warnings <- warns
  res
}
