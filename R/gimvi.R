# gimVI verbs (imputation of unmeasured genes in spatial data from a single-cell reference):
# RunGIMVI (Seurat) and runGIMVI (SingleCellExperiment), declared on the one path of
# aaa-verbs.R. The verb's object is the spatial data (its counts become the model's spatial
# AnnData); the reference, a Seurat object or an SCE, is converted in the plan's build step.
# Results: the spatial cells' joint latent as a reduction / reducedDim, and the imputed
# expression of every reference gene in the spatial cells as an assay (Seurat) or an altExp
# (SCE).

# ---- declaration -------------------------------------------------------------------------------

.gimvi_genes <- function(eco, object, input) {
  if (eco$name == "seurat") rownames(object[[input$counts]]) else rownames(object)
}

.gimvi_plan <- function(plan, eco, object, a, args) {
  reference <- a$reference
  ref_eco <- .eco_of(reference, "`reference`")
  ref_eco$check(reference)
  ref_input <- .reference_input(ref_eco, reference, a$reference_assay)
  ref_batch <- .arg_column(a$reference_batch_key, "reference_batch_key")
  if (!is.null(ref_batch) && !ref_batch %in% ref_eco$columns(reference)) {
    stop("reference metadata column '", ref_batch, "' (reference_batch_key) not found; available: ",
         .show_some(ref_eco$columns(reference), 20), call. = FALSE)
  }
  ref_genes <- .or_default(a$reference_features, .gimvi_genes(ref_eco, reference, ref_input))
  spatial_genes <- .or_default(plan$features, .gimvi_genes(eco, object, plan$input))
  missing <- setdiff(spatial_genes, ref_genes)
  if (length(missing)) {
    shared <- length(intersect(spatial_genes, ref_genes))
    stop(length(missing), " of the ", length(spatial_genes), " spatial genes are not reference ",
         "genes: ", .show_some(missing, 10), ". gimVI imputes reference genes from the spatial ",
         "genes, so every spatial gene must be in the reference (same identifiers; ", shared,
         " are shared). Keep the shared ones: features = intersect(rownames(",
         if (eco$name == "seurat") "object" else "x", "), rownames(reference))", call. = FALSE)
  }
  setup <- args$setup
  model_args <- args$model_args
  plan$setup <- setup
  plan$build <- function(cv, adata) {
    ref_adata <- ref_eco$anndata(reference, ref_input, a$reference_features,
                                 if (is.null(ref_batch)) FALSE else ref_batch)
    .py_call(do.call(cv$GIMVI$setup_anndata, c(list(ref_adata), list(batch_key = ref_batch))))
    .py_call(do.call(cv$GIMVI$setup_anndata, c(list(adata), setup)))
    .py_call(do.call(cv$GIMVI, c(list(ref_adata, adata), model_args)))
  }
  plan$record <- list(reference_assay = ref_input$counts, reference_batch_key = ref_batch,
                      reference_class = class(reference)[[1]])
  if (eco$name == "sce") {
    # The SCE adapter names both the reducedDim and the altExp of an assay result after the
    # verb's `name`: the reducedDim takes `name` here, the altExp `altexp.name` (this call's
    # own environment, so nothing outside the verb changes).
    plan$latent_name <- a$name
    assign("name", a$altexp.name, envir = a)
  }
  plan
}

# The spatial cells' latent (the second data set of the model).
.out_gimvi_latent <- function(model, adata, a, plan, cells) {
  latent <- .py_value(reticulate::py_get_item(.py_call(model$get_latent_representation()), 1L))
  rownames(latent) <- unlist(.py_value(adata$obs_names$tolist()))
  list(latent = latent)
}

# Imputed expression of every reference gene in the spatial cells (genes x cells), relative to
# the cell's total of the spatial genes, times `library_size`.
.out_gimvi_imputed <- function(model, adata, a, plan, cells) {
  values <- .py_value(reticulate::py_get_item(
    .py_call(model$get_imputed_values(normalized = TRUE)), 1L))
  data <- t(values) * a$library_size
  dimnames(data) <- list(.model_genes(model), unlist(.py_value(adata$obs_names$tolist())))
  list(assays = list(rna = list(data = data[, cells, drop = FALSE], whole = FALSE,
                                unit = "reference genes imputed")))
}

.gimvi_verb <- .verb(
  "GIMVI",
  setup = list(batch_key = .arg_column),
  model_args = list(n_latent = .arg_count()),
  train_args = c(.train_spec[c("max_epochs", "batch_size", "train_size", "lr", "device",
                               "progress_bar")],
                 list(kappa = .arg_number(0))),
  options = list(library_size = .arg_number(0), altexp.name = .arg_name),
  plan = .gimvi_plan, outputs = list(.out_gimvi_latent, .out_gimvi_imputed))

# ---- verbs ---------------------------------------------------------------------------------------

#' Impute unmeasured genes in spatial data with gimVI (Seurat)
#'
#' gimVI (Lopez et al. 2019) learns one latent space of spatial data that measure a panel of
#' genes (MERFISH, osmFISH, STARmap, seqFISH, ...) and of a single-cell RNA reference that
#' measures all genes, with one decoder of all reference genes shared by both. Each spatial
#' cell's latent decodes to every reference gene: the imputation.
#'
#' Writes to the spatial object a new assay `assay.name` (default `"imputed"`) holding, for
#' every reference gene, its imputed expression in each spatial cell (in the `data` slot):
#' the expression relative to the cell's total of the spatial genes, times `library_size`
#' (so the spatial genes of a cell sum to `library_size`, as `NormalizeData` scales counts),
#' and the spatial cells' latent as the reduction `reduction.name` (for `FindNeighbors`,
#' `RunUMAP`). Log-transform the imputed values for plots on a log scale, e.g.
#' `log1p(GetAssayData(object, assay = "imputed"))`. The model is saved to `model_dir` and
#' recorded in the reduction's misc.
#'
#' Every spatial gene must be a reference gene (same identifiers); restrict the spatial
#' genes with `features` otherwise. Hold some spatial genes out (fit on the others with
#' `features`) to measure how well genes are imputed: the correlation of a held-out gene's
#' imputed and measured values. On spacexr's MERFISH pair of the mouse hypothalamus (134
#' genes, 13 held out, 200 epochs, seeds 0-2) the median Spearman correlation over the
#' held-out genes was 0.18-0.27, and 0.17-0.28 with scvi-tools' gimVI: a real but partial
#' signal.
#'
#' @param object A Seurat object of spatial data with raw counts (cells or spots x genes);
#'   coordinates in its metadata are kept but not used.
#' @param reference The single-cell reference with raw counts: a Seurat object or a
#'   SingleCellExperiment. Its genes are the genes imputed.
#' @param assay Assay of `object` holding the spatial counts (default: the default assay).
#' @param features Spatial genes to fit on (default: all genes of `assay`); all must be
#'   reference genes.
#' @param reference_assay For a Seurat reference, its assay (default: its default assay);
#'   for a SingleCellExperiment reference, its assay name (default `"counts"`).
#' @param reference_features Reference genes to model and impute (default: all).
#' @param batch_key,reference_batch_key Metadata columns of the batch within the spatial
#'   data and within the reference (default: none).
#' @param n_latent Dimensions of the joint latent space.
#' @param max_epochs Training epochs: passes over the larger data set (default 200, as
#'   scvi-tools).
#' @param kappa Weight of the adversarial loss that mixes the two data sets in the latent
#'   space (0: none).
#' @param batch_size,train_size,lr Training settings: cells of each data set per minibatch,
#'   fraction of each data set's cells used for training, learning rate.
#' @param library_size The imputed values are scaled to this total over the spatial genes
#'   (1: the model's normalized expression, as Python's `get_imputed_values()`).
#' @param assay.name Name of the new assay of imputed genes.
#' @param reduction.name,reduction.key Name and key of the spatial cells' latent reduction.
#' @param model_kwargs Named list of further settings of Python's `cellvi.GIMVI` (e.g.
#'   `list(generative_distributions = list("zinb", "nb"), dropout_rate_encoder = 0.2)`).
#' @inheritParams cellvi-params
#' @return The spatial Seurat object with the imputed assay and the latent reduction added.
#' @seealso [runGIMVI()] for SingleCellExperiment objects.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   spatial <- cellvi_dataset("merfish_spatial_small")
#'   reference <- cellvi_dataset("merfish_reference_small")
#'   # hold out two measured genes to see how well they are imputed
#'   held_out <- c("Gad1", "Slc17a7")
#'   spatial <- RunGIMVI(spatial, reference, max_epochs = 50,
#'                       features = setdiff(rownames(spatial), held_out))
#'   imputed <- SeuratObject::GetAssayData(spatial, assay = "imputed")
#'   measured <- SeuratObject::GetAssayData(spatial, assay = "RNA", slot = "counts")
#'   cor(imputed["Gad1", ], measured["Gad1", ], method = "spearman")
#' }
#' }
#' @export
RunGIMVI <- function(object, reference, assay = NULL, features = NULL, reference_assay = NULL,
                     reference_features = NULL, batch_key = NULL, reference_batch_key = NULL,
                     n_latent = 10, max_epochs = 200, kappa = 5, batch_size = 128,
                     train_size = 0.9, lr = 1e-3, library_size = 1e4, assay.name = "imputed",
                     reduction.name = "gimvi", reduction.key = "gimvi_", model_kwargs = list(),
                     plan_kwargs = list(),
                     device = "auto", seed = NULL, model_dir = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .gimvi_verb, environment())
}

#' Impute unmeasured genes in spatial data with gimVI (SingleCellExperiment)
#'
#' As [RunGIMVI()]. The imputed expression of every reference gene goes to the alternative
#' experiment `altexp.name` (default `"imputed"`; its assay `"normalized"`), since its rows
#' (the reference genes) differ from `x`'s; the spatial cells' latent goes to the reducedDim
#' `name`, and the model is recorded in `metadata(x)$cellvi[[name]]`.
#'
#' @param x A SingleCellExperiment of spatial data with raw counts.
#' @param assay.type Assay of `x` holding the spatial counts.
#' @param altexp.name Name of the new altExp of imputed genes.
#' @param name Name of the spatial cells' latent reducedDim.
#' @inheritParams RunGIMVI
#' @inheritParams cellvi-params
#' @return `x` with the altExp and the reducedDim added.
#' @seealso [RunGIMVI()] for Seurat objects.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   spatial <- cellvi_dataset("merfish_spatial_small", as = "SingleCellExperiment")
#'   reference <- cellvi_dataset("merfish_reference_small", as = "SingleCellExperiment")
#'   spatial <- runGIMVI(spatial, reference, max_epochs = 50)
#'   imputed <- SummarizedExperiment::assay(SingleCellExperiment::altExp(spatial, "imputed"))
#'   dim(imputed)  # reference genes x spatial cells
#' }
#' }
#' @rdname runGIMVI-sce
#' @export
runGIMVI <- function(x, reference, assay.type = "counts", features = NULL,
                     reference_assay = NULL, reference_features = NULL, batch_key = NULL,
                     reference_batch_key = NULL, n_latent = 10, max_epochs = 200, kappa = 5,
                     batch_size = 128, train_size = 0.9, lr = 1e-3, library_size = 1e4,
                     altexp.name = "imputed", name = "GIMVI", model_kwargs = list(),
                     plan_kwargs = list(),
                     device = "auto", seed = NULL, model_dir = NULL, verbose = TRUE) {
  .run_verb(.sce, x, .gimvi_verb, environment())
}
