#' Integration scores of a latent space or reduction
#'
#' scib-style scores of how well an embedding keeps cell types apart while mixing batches,
#' for comparing integrations on one object (scVI's latent space, Harmony, plain PCA, ...).
#' Biological conservation: label silhouette (rescaled to 0-1), and NMI and ARI of k-means
#' (as many clusters as labels) against the labels. Batch correction: batch silhouette within
#' each label (1 - |width|), iLISI (effective number of batches among each cell's 90 nearest
#' neighbours, median, rescaled to 0-1) and graph connectivity (share of each label's cells in
#' its largest connected piece of the 15-nearest-neighbour graph). `bio` and `batch` are the
#' means of the two groups; `total` = 0.6 bio + 0.4 batch. Computed by the Python core
#' (`cellvi.metrics.integration_scores`). Higher is better for every score.
#'
#' @param object A Seurat object, a SingleCellExperiment, or a cells x dimensions matrix.
#' @param reduction The reduction (Seurat) or reducedDim (SingleCellExperiment) to score;
#'   ignored for a matrix.
#' @param batch A metadata / colData column naming each cell's batch, or (for a matrix) the
#'   batch of every cell.
#' @param labels A column (or vector) of cell types; `NA` marks cells of unknown type, which
#'   the label-based scores leave out. `NULL`: only iLISI is computed.
#' @param seed Seed of the k-means restarts.
#' @return A named numeric vector: `label_silhouette`, `nmi`, `ari`, `batch_silhouette`,
#'   `ilisi`, `graph_connectivity`, `bio`, `batch`, `total` (`NA` where a score cannot be
#'   computed).
#' @examples
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   kang <- cellvi_dataset("kang_pbmc")
#'   kang <- RunSCVI(kang, batch_key = "donor", max_epochs = 20)
#'   IntegrationScores(kang, reduction = "scvi", batch = "donor", labels = "cell_type")
#' }
#' @export
IntegrationScores <- function(object, reduction = NULL, batch, labels = NULL, seed = 0L) {
  seed <- .as_count(seed, "seed", minimum = 0L)
  eco <- if (is.matrix(object)) NULL else .eco_of(object, "`object`")
  column <- function(value, what) {
    if (is.null(value) || is.null(eco) || !(is.character(value) && length(value) == 1L)) {
      return(value)
    }
    meta <- eco$metadata(object)
    if (!value %in% colnames(meta)) {
      stop("metadata column '", value, "' (", what, ") not found; available: ",
           .show_some(colnames(meta), 10), call. = FALSE)
    }
    meta[[value]]
  }
  if (is.null(eco)) {
    embedding <- object
  } else {
    if (is.null(reduction) || !is.character(reduction) || length(reduction) != 1L) {
      stop("`reduction` must name the reduction to score (e.g. \"scvi\" or \"harmony\")",
           call. = FALSE)
    }
    available <- eco$reductions(object)
    if (!reduction %in% available) {
      stop("reduction '", reduction, "' not found; available: ",
           if (length(available)) .show_some(available, 10) else "none", call. = FALSE)
    }
    embedding <- eco$embedding(object, reduction)
  }
  batch <- column(batch, "batch")
  labels <- column(labels, "labels")
  for (v in list(list(batch, "batch"), list(labels, "labels"))) {
    if (!is.null(v[[1]]) && length(v[[1]]) != nrow(embedding)) {
      stop("`", v[[2]], "` has ", length(v[[1]]), " values for ", nrow(embedding), " cells",
           call. = FALSE)
    }
  }
  as_py <- function(v) if (is.null(v)) NULL else .py_str_array(v)  # NA -> None: left out
  scores <- .py_call(.core()$metrics$integration_scores(
    .cellvi_py()$np$asarray(unname(as.matrix(embedding)), dtype = "float64"), as_py(batch), as_py(labels),
    seed = as.integer(seed)))
  unlist(reticulate::py_to_r(scores$to_dict()))
}
