# CellAssign verbs (cell types from marker genes): RunCellAssign (Seurat) and runCellAssign
# (SingleCellExperiment), declared on the one path of aaa-verbs.R. The markers are a named list
# of genes per type or a genes x types 0/1 matrix; the model reads only the marker genes, with
# size factors computed from all genes (each cell's total over the mean total) unless a
# metadata column gives them. Results are metadata columns `cellassign.*`.

# ---- markers -----------------------------------------------------------------------------------

# The markers as a genes x types data.frame of 0/1 (rownames = genes), from a named list of
# gene vectors or a 0/1 matrix / data.frame with gene rownames and type colnames.
.marker_table <- function(markers) {
  if (is.list(markers) && !is.data.frame(markers)) {
    if (!length(markers) || is.null(names(markers)) || any(!nzchar(names(markers)))) {
      stop("`markers` must be a named list (one element of marker genes per cell type) or a ",
           "genes x cell types 0/1 matrix", call. = FALSE)
    }
    if (anyDuplicated(names(markers))) {
      stop("`markers` names a cell type twice: ",
           .show_some(unique(names(markers)[duplicated(names(markers))])), call. = FALSE)
    }
    for (type in names(markers)) {
      genes <- markers[[type]]
      if (!is.character(genes) || !length(genes) || anyNA(genes)) {
        stop("the markers of '", type, "' must be gene names (a character vector), not ",
             .show(genes), call. = FALSE)
      }
    }
    genes <- unique(unlist(markers, use.names = FALSE))
    table <- vapply(markers, function(g) as.integer(genes %in% g), integer(length(genes)))
    table <- matrix(table, nrow = length(genes), dimnames = list(genes, names(markers)))
  } else if (is.matrix(markers) || is.data.frame(markers)) {
    table <- as.matrix(markers)
    if (is.null(rownames(table)) || is.null(colnames(table))) {
      stop("a marker matrix needs gene rownames and cell-type colnames", call. = FALSE)
    }
    if (is.logical(table)) storage.mode(table) <- "integer"
    if (!is.numeric(table) || anyNA(table) || any(!table %in% c(0, 1))) {
      stop("a marker matrix must hold only 0 and 1 (1: the gene marks the type)", call. = FALSE)
    }
  } else {
    stop("`markers` must be a named list of marker genes per cell type or a genes x cell types ",
         "0/1 matrix, not ", .show(markers), call. = FALSE)
  }
  as.data.frame(table, check.names = FALSE, stringsAsFactors = FALSE)
}

.arg_markers <- function(x, name) .marker_table(x)

# ---- declaration -------------------------------------------------------------------------------

.size_factor_column <- "cellvi_size_factor"

# CellAssign is built from the markers (a pandas DataFrame made here), with size factors from
# a metadata column or computed on the AnnData's genes (all of them: before the model narrows
# to the markers).
.cellassign_plan <- function(plan, eco, object, a, args) {
  markers <- args$options$markers
  own <- a$size_factor_key
  if (!is.null(own)) {
    if (!is.character(own) || length(own) != 1L || is.na(own)) {
      stop("`size_factor_key` must be one metadata column name", call. = FALSE)
    }
    if (!own %in% eco$columns(object)) {
      stop("metadata column '", own, "' (size_factor_key) not found; available: ",
           .show_some(eco$columns(object), 20), call. = FALSE)
    }
    plan$columns <- unique(c(if (!isFALSE(plan$columns)) plan$columns, own))
  } else {
    plan$adapt <- function(adata) {
      np <- .cellvi_py()$np
      totals <- as.numeric(reticulate::py_to_r(np$asarray(adata$X$sum(axis = 1L))$ravel()))
      if (any(totals <= 0)) {
        stop(sum(totals <= 0), " cell(s) have no counts in the assay, so no size factor; ",
             "remove them first (e.g. cells with nCount > 0)", call. = FALSE)
      }
      adata$obs$`__setitem__`(.size_factor_column, np$asarray(totals / mean(totals)))
      adata
    }
  }
  setup <- c(args$setup, list(size_factor_key = .or_default(own, .size_factor_column)))
  model_args <- args$model_args
  plan$setup <- setup
  plan$build <- function(cv, adata) {
    .py_call(do.call(cv$CellAssign$setup_anndata, c(list(adata), setup)))
    .py_call(do.call(cv$CellAssign, c(list(adata, cell_type_markers = reticulate::r_to_py(markers)),
                                      model_args)))
  }
  plan$record_name <- "cellassign"
  plan
}

# Per cell: the most probable type, its probability, and optionally every type's probability.
.out_cellassign <- function(model, adata, a, plan, cells) {
  probs <- .py_df_to_r(.py_call(model$predict(adata)))
  probs <- as.matrix(probs[cells, , drop = FALSE])
  best <- max.col(probs, ties.method = "first")
  columns <- list(cellassign.type = factor(colnames(probs)[best], levels = colnames(probs)),
                  cellassign.probability = probs[cbind(seq_along(best), best)])
  if (isTRUE(a$all_probabilities)) {
    for (type in colnames(probs)) columns[[paste0("cellassign.prob.", type)]] <- unname(probs[, type])
  }
  columns <- lapply(columns, function(v) stats::setNames(v, cells))
  if (isTRUE(a$verbose)) {
    counts <- table(columns$cellassign.type)
    message("CellAssign: ", paste0(names(counts), " ", counts, collapse = ", "))
  }
  list(columns = columns)
}

.cellassign_verb <- .verb(
  "CellAssign",
  setup = .covariate_setup[c("batch_key", "categorical_covariate_keys",
                             "continuous_covariate_keys")],
  model_args = list(dispersion = .arg_choice("gene", "basis"),
                    min_delta = .arg_number(0)),
  train_args = .train_spec,
  options = list(markers = .arg_markers, all_probabilities = .arg_flag),
  plan = .cellassign_plan, outputs = list(.out_cellassign))

# ---- verbs ---------------------------------------------------------------------------------------

#' Cell types from marker genes with CellAssign (Seurat)
#'
#' Fits CellAssign, a probabilistic model of the counts of marker genes as a mixture over
#' cell types (each type over-expresses its markers), and writes to the metadata each cell's
#' most probable type (`cellassign.type`), its probability (`cellassign.probability`) and, with
#' `all_probabilities = TRUE`, every type's probability (`cellassign.prob.<type>`). Only the
#' marker genes enter the model; each cell's size factor is its total count over all genes of
#' the assay divided by the mean total, unless `size_factor_key` names a metadata column.
#' The model is saved to `model_dir` and recorded in `Misc(object, "cellvi")$cellassign`.
#'
#' List a gene as a marker of every type that expresses it (e.g. NKG7 for NK cells and for
#' cytotoxic CD8 T cells): a type is told apart by the markers it has and the others lack.
#'
#' @param markers A named list with the marker genes of each cell type (e.g.
#'   `list(T = c("CD3E", "CD3D"), B = "CD79A")`), or a genes x cell types 0/1 matrix. Genes
#'   are named as in the assay.
#' @param assay Assay holding the counts (default: the default assay).
#' @param size_factor_key Metadata column of size factors (default: computed as above).
#' @param batch_key,categorical_covariate_keys,continuous_covariate_keys Metadata columns of
#'   covariates of the expression.
#' @param dispersion `"gene"` (one per gene; the default, which fitted held-out cells better)
#'   or `"basis"` (scvi-tools' function of the mean).
#' @param min_delta Smallest log over-expression of a marker in its type.
#' @param all_probabilities Also write every type's probability.
#' @param max_epochs,batch_size,train_size,early_stopping,lr Training settings (defaults as
#'   scvi-tools': up to 400 epochs with early stopping, 1024 cells, learning rate 3e-3).
#' @inheritParams cellvi-params
#' @return The Seurat object with the metadata columns added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunCellAssign(SeuratObject::pbmc_small,
#'                         markers = list(T = c("CD3E", "CD3D"), B = c("MS4A1", "CD79A"),
#'                                        Mono = c("LYZ", "S100A9"), NK = c("NKG7", "GNLY")),
#'                         max_epochs = 50)
#'   table(pbmc$cellassign.type)
#' }
#' }
#' @export
RunCellAssign <- function(object, markers, assay = NULL, size_factor_key = NULL,
                          batch_key = NULL, categorical_covariate_keys = NULL,
                          continuous_covariate_keys = NULL, dispersion = "gene", min_delta = 2,
                          all_probabilities = FALSE, max_epochs = 400, batch_size = 1024,
                          train_size = 0.9, early_stopping = TRUE, lr = 3e-3, device = "auto",
                          seed = NULL, model_dir = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .cellassign_verb, environment())
}

#' Cell types from marker genes with CellAssign (SingleCellExperiment)
#'
#' As [RunCellAssign()]; the columns go to `colData(x)` and the model is recorded in
#' `metadata(x)$cellvi$cellassign`.
#'
#' @param size_factor_key `colData` column of size factors (default: each cell's total count
#'   over the mean total; note that `sizeFactors(x)` is not read unless named here).
#' @inheritParams RunCellAssign
#' @inheritParams cellvi-params
#' @return `x` with the `colData` columns added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   sce <- runCellAssign(sce, markers = list(T = c("CD3E", "CD3D"), B = c("MS4A1", "CD79A")),
#'                        max_epochs = 50)
#'   table(sce$cellassign.type)
#' }
#' }
#' @rdname runCellAssign-sce
#' @export
runCellAssign <- function(x, markers, assay.type = "counts", size_factor_key = NULL,
                          batch_key = NULL, categorical_covariate_keys = NULL,
                          continuous_covariate_keys = NULL, dispersion = "gene", min_delta = 2,
                          all_probabilities = FALSE, max_epochs = 400, batch_size = 1024,
                          train_size = 0.9, early_stopping = TRUE, lr = 3e-3, device = "auto",
                          seed = NULL, model_dir = NULL, verbose = TRUE) {
  .run_verb(.sce, x, .cellassign_verb, environment())
}
