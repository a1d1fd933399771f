# PeakVI verbs (scATAC-seq: cells x regions, peaks or bins): RunPEAKVI / runPEAKVI (latent
# space), TunePEAKVI / tunePEAKVI (its hyperparameter search, autotune.R), AccessibilityPEAKVI / accessibilityPEAKVI (accessibility estimates as an assay) and
# FindMarkersPEAKVI / findMarkersPEAKVI (differentially accessible regions), declared on the
# one path of aaa-verbs.R. The regions come from any assay (Seurat: a plain Assay or Signac's
# ChromatinAssay, default "peaks"; SCE: any assay, default "counts"); Signac is not needed.

# ---- declarations ----------------------------------------------------------------------------

.peakvi_fit_by <- c(seurat = "RunPEAKVI()", sce = "runPEAKVI()")

.peakvi_verb <- .verb(
  "PEAKVI",
  setup = .covariate_setup[c("batch_key", "categorical_covariate_keys",
                             "continuous_covariate_keys")],
  model_args = list(n_latent = .arg_count(null_ok = TRUE), n_hidden = .arg_count(null_ok = TRUE),
                    n_layers_encoder = .arg_count(), n_layers_decoder = .arg_count(),
                    dropout_rate = .arg_number(0, 1)),
  train_args = .train_spec, outputs = list(.out_latent), fit_by = .peakvi_fit_by)

.tune_peakvi_verb <- .tune_verb(.peakvi_verb)

# Cells x regions is the size of a dense estimate; above this many entries (800 MB in R) the
# verb asks for fewer regions or a threshold (a sparse result) instead of exhausting memory.
.max_dense_entries <- 1e8

# Accessibility estimates (regions x cells): dense probabilities, or with `threshold` a sparse
# matrix of the estimates above it.
.out_accessibility <- function(model, adata, a, plan, cells) {
  regions <- .or_default(a$features, .model_genes(model))
  if (is.null(a$threshold) && as.double(length(regions)) * length(cells) > .max_dense_entries) {
    stop("a dense estimate of ", length(regions), " regions x ", length(cells), " cells is ",
         "too large; choose regions with `features` or give a `threshold` (a sparse result)",
         call. = FALSE)
  }
  est <- .py_call(model$get_normalized_accessibility(
    adata, region_list = if (is.null(a$features)) NULL else as.list(a$features),
    normalize_cells = a$normalize_cells, normalize_regions = a$normalize_regions,
    threshold = a$threshold, return_numpy = TRUE))
  # cells x regions from Python: a CSR matrix with a threshold, else a dense array
  est <- if (reticulate::py_to_r(.cellvi_py()$sp$issparse(est))) {
    .py_matrix_to_dgc(est, regions, cells, "the accessibility estimates")
  } else {
    out <- t(.py_value(est))
    dimnames(out) <- list(regions, cells)
    out
  }
  list(assays = list(rna = list(data = est, whole = is.null(a$features), unit = "regions")))
}

.accessibility_peakvi_verb <- .verb(
  options = list(normalize_cells = .arg_flag, normalize_regions = .arg_flag,
                 threshold = .arg_number(0, 1, null_ok = TRUE)),
  outputs = list(.out_accessibility), accepts = "PEAKVI", fit_by = .peakvi_fit_by)

# Differential accessibility for cell index sets (1-based), shaped like FindMarkers: pct.1 and
# pct.2 (fractions of cells with the region open) and avg_log2FC (log2 ratio of the estimated
# accessibilities, group 1 over group 2), then the model's own columns.
.da_table <- function(model, adata, idx1, idx2, a) {
  np <- .cellvi_py()$np
  mode <- .as_choice(a$mode, "mode", c("change", "vanilla"))
  fdr_target <- .as_number(a$fdr_target, "fdr_target", 0, 1)
  da <- .py_call(model$differential_accessibility(
    adata, idx1 = np$asarray(as.integer(idx1 - 1L)), idx2 = np$asarray(as.integer(idx2 - 1L)),
    mode = mode, delta = .as_number(a$delta, "delta", 0), fdr_target = fdr_target,
    batch_correction = .as_flag(a$batch_correction, "batch_correction"),
    batchid1 = if (is.null(a$batchid1)) NULL else as.list(as.character(a$batchid1)),
    batchid2 = if (is.null(a$batchid2)) NULL else as.list(as.character(a$batchid2)),
    n_samples = .as_count(a$n_samples, "n_samples"),
    region_list = if (is.null(a$features)) NULL else as.list(a$features)))
  da <- suppressWarnings(.py_df_to_r(da))
  out <- data.frame(avg_log2FC = log2(da$est_prob1 / da$est_prob2), pct.1 = da$emp_prob1,
                    pct.2 = da$emp_prob2, row.names = rownames(da))
  own <- c("prob_da", "bayes_factor", "effect_size", "emp_effect", "est_prob1", "est_prob2")
  out <- cbind(out, da[, own, drop = FALSE])
  if (mode == "change") out$is_da_fdr <- as.logical(da$is_da_fdr)
  out
}

.markers_peakvi_verb <- .verb(
  plan = .markers_plan, outputs = list(.out_markers_of(.da_table)), accepts = "PEAKVI",
  fit_by = .peakvi_fit_by)

# ---- Seurat ------------------------------------------------------------------------------------

#' Run PeakVI on a Seurat object with scATAC-seq counts
#'
#' Trains PeakVI, a variational autoencoder of chromatin accessibility (a Bernoulli likelihood
#' of each region being open, with a per-cell and a per-region factor), on the cells x regions
#' counts of an assay (peaks or genome bins; counts are binarised), and stores its latent space
#' as a dimensional reduction, as [Seurat::RunPCA()] does. The model is saved to `model_dir`
#' and recorded in the reduction's `misc`, so that [AccessibilityPEAKVI()],
#' [FindMarkersPEAKVI()] and later R sessions query it without retraining. The assay may be a
#' plain Assay or Signac's ChromatinAssay; Signac itself is not needed.
#'
#' @param object A Seurat object with an assay of scATAC-seq counts (or 0/1 accessibility).
#' @param assay Assay holding the region counts (its `counts` slot).
#' @param features Regions to model (default: all).
#' @param batch_key Metadata column of the batch (sample, donor, ...).
#' @param categorical_covariate_keys,continuous_covariate_keys Metadata columns of further
#'   covariates.
#' @param n_latent,n_hidden Latent and hidden sizes (`NULL`: PeakVI's square-root rule,
#'   `n_hidden` = sqrt(regions), `n_latent` = sqrt(`n_hidden`)).
#' @param n_layers_encoder,n_layers_decoder Hidden layers of the encoders and the decoder.
#' @param dropout_rate Dropout of the hidden layers.
#' @param max_epochs Training epochs (`NULL`: PeakVI's default, 500, with early stopping).
#' @param batch_size,train_size,early_stopping,lr Training settings (PeakVI's defaults: 128
#'   cells, 90% training cells, early stopping on the validation loss, learning rate 1e-4).
#' @param model_kwargs Named list of further model settings passed to Python as they are.
#' @inheritParams cellvi-params
#' @return The Seurat object with the reduction added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   atac <- cellvi_dataset("bmmc_atac_small")          # assay "peaks"
#'   atac <- RunPEAKVI(atac, max_epochs = 20)
#'   atac <- Seurat::RunUMAP(atac, reduction = "peakvi", dims = 1:10)
#' }
#' }
#' @export
RunPEAKVI <- function(object, assay = "peaks", features = NULL, batch_key = NULL,
                      categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                      n_latent = NULL, n_hidden = NULL, n_layers_encoder = 2,
                      n_layers_decoder = 2, dropout_rate = 0.1, max_epochs = NULL,
                      batch_size = 128, train_size = 0.9, early_stopping = TRUE, lr = 1e-4,
                      device = "auto", seed = NULL, model_dir = NULL, model_kwargs = list(),
                      plan_kwargs = list(),
                      reduction.name = "peakvi", reduction.key = "PeakVI_", verbose = TRUE) {
  .run_verb(.seurat, object, .peakvi_verb, environment())
}

#' Hyperparameter search for PeakVI on a Seurat object
#'
#' As [TuneSCVI()], for PeakVI ([RunPEAKVI()]): searches its default space (`lr`, `n_hidden`,
#' `n_latent`, `n_layers_encoder`, `n_layers_decoder`, `dropout_rate`) or `search_space`,
#' every trial scored on the same held-out cells, and returns the trials, or with
#' `fit_best = TRUE` the object with the best settings' reduction, as [RunPEAKVI()] adds it.
#'
#' @inheritParams TuneSCVI
#' @inheritParams RunPEAKVI
#' @param model_kwargs Named list of further model settings passed to Python as they are,
#'   the same in every trial.
#' @return A data.frame of trials (see [TuneSCVI()]), or with `fit_best = TRUE` the Seurat
#'   object with the reduction added, the search in its `misc$autotune`.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   atac <- cellvi_dataset("bmmc_atac_small")          # assay "peaks"
#'   space <- list(model_params = list(n_latent = tune_choice(c(5, 10))))
#'   trials <- TunePEAKVI(atac, search_space = space, num_samples = 3, max_epochs = 5,
#'                        save_dir = tempfile("tune"), verbose = FALSE)
#'   trials[, c("trial", "state", "metric", "n_latent")]
#' }
#' }
#' @export
TunePEAKVI <- function(object, assay = "peaks", features = NULL, batch_key = NULL,
                       categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                       n_latent = NULL, n_hidden = NULL, n_layers_encoder = 2,
                       n_layers_decoder = 2, dropout_rate = 0.1, search_space = NULL,
                       metric = "marginal_ll", num_samples = 20, max_epochs = NULL,
                       test_size = 0.25, scheduler = "asha", n_jobs = 1, storage = NULL,
                       study_name = NULL, save_dir = NULL, fit_best = FALSE,
                       batch_size = 128, device = "auto", seed = 0, model_dir = NULL,
                       model_kwargs = list(), reduction.name = "peakvi",
                       reduction.key = "PeakVI_", verbose = TRUE) {
  .run_verb(.seurat, object, .tune_peakvi_verb, environment())
}

#' PeakVI accessibility estimates into a Seurat assay
#'
#' Decodes each cell's latent state into the probability that each region is accessible,
#' and stores the estimates as a new assay (values in its `data` slot): dense, or with
#' `threshold` a sparse matrix of the estimates above it.
#'
#' @param object A Seurat object on which [RunPEAKVI()] has run.
#' @param features Regions to return (default: all regions of the model).
#' @param assay.name Name of the new assay.
#' @param normalize_cells Multiply by the cell's factor (its sequencing depth effect), giving
#'   the probability of observing the region open in that cell rather than the depth-free
#'   estimate.
#' @param normalize_regions Multiply by the region's factor (its capture efficiency).
#' @param threshold `NULL` (dense estimates) or a probability: estimates at or below it are
#'   set to 0 and the assay is sparse (for many regions x cells).
#' @param verbose Show messages.
#' @inheritParams cellvi-params
#' @return The Seurat object with the new assay.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   atac <- RunPEAKVI(cellvi_dataset("bmmc_atac_small"), max_epochs = 20)
#'   atac <- AccessibilityPEAKVI(atac, threshold = 0.05)
#'   atac[["PEAKVI"]]
#' }
#' }
#' @export
AccessibilityPEAKVI <- function(object, reduction = "peakvi", features = NULL,
                                assay.name = "PEAKVI", normalize_cells = FALSE,
                                normalize_regions = FALSE, threshold = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .accessibility_peakvi_verb, environment())
}

#' Differentially accessible regions with PeakVI (Seurat)
#'
#' Bayesian differential accessibility from the PeakVI model stored by [RunPEAKVI()], between
#' the cells of `ident.1` and `ident.2` (default: all other cells), as scvi-tools defines it:
#' evidence that the log2 ratio of the two groups' accessibility exceeds `delta`. Shaped like
#' [Seurat::FindMarkers()]: one row per region with `avg_log2FC` (log2 ratio of the estimated
#' accessibilities, `ident.1` over `ident.2`), `pct.1` and `pct.2` (fractions of the cells
#' with the region open); then the model's `prob_da`, `bayes_factor`, `effect_size`
#' (estimated accessibility of group 2 minus group 1, as scvi-tools reports it), `emp_effect`
#' (the same from the observed fractions), `est_prob1`, `est_prob2` and, in `"change"` mode,
#' `is_da_fdr` (called at posterior expected FDR `fdr_target`, over all tested regions before
#' the filters). `features`, `min.pct`, `logfc.threshold` and `only.pos` filter the regions as
#' they do in Seurat (with Seurat 4's defaults; `logfc.threshold = 0, min.pct = 0` keeps
#' every region), and `seed` (or `set.seed()`) makes the result repeat, as in
#' [FindMarkersSCVI()].
#'
#' @param object A Seurat object on which [RunPEAKVI()] has run.
#' @param features Regions to test (default: all regions of the model).
#' @param logfc.threshold Keep regions whose |`avg_log2FC`| (with `only.pos`: `avg_log2FC`) is
#'   at least this (as in Seurat; 0: no filter).
#' @param min.pct Keep regions open in at least this fraction of the cells of either group
#'   (`pct.1`, `pct.2`; as in Seurat; 0: no filter).
#' @param only.pos Keep only regions with a positive `avg_log2FC` (more accessible in
#'   `ident.1`).
#' @param mode `"change"` (`prob_da`: the posterior probability that the log2 ratio of the
#'   accessibilities is at least `delta` in size, either way; FDR calls in `is_da_fdr`; rows
#'   sorted by `prob_da`) or `"vanilla"` (`prob_da`: P(accessibility in group 1 > in group
#'   2), `bayes_factor` its log odds; no `is_da_fdr`; rows sorted by |`bayes_factor`|).
#' @param delta Threshold on the log2 ratio in `"change"` mode.
#' @inheritParams FindMarkersSCVI
#' @inheritParams cellvi-params
#' @return A data.frame, one row per region (rownames), sorted by evidence.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   atac <- RunPEAKVI(cellvi_dataset("bmmc_atac_small"), max_epochs = 20)
#'   da <- FindMarkersPEAKVI(atac, ident.1 = "B", ident.2 = "CD14.Mono.1", group.by = "cell_type")
#'   head(da[da$is_da_fdr, ])
#' }
#' }
#' @export
FindMarkersPEAKVI <- function(object, ident.1, ident.2 = NULL, group.by = NULL,
                              reduction = "peakvi", features = NULL, logfc.threshold = 0.25,
                              min.pct = 0.1, only.pos = FALSE, mode = "change",
                              delta = 0.05, fdr_target = 0.05, batch_correction = FALSE,
                              batchid1 = NULL, batchid2 = NULL, n_samples = 5000, seed = NULL,
                              verbose = TRUE) {
  .run_verb(.seurat, object, .markers_peakvi_verb, environment())
}

# ---- SingleCellExperiment ----------------------------------------------------------------------

#' Run PeakVI on a SingleCellExperiment of scATAC-seq counts
#'
#' As [RunPEAKVI()]: the latent space goes to `reducedDim(x, name)`, and the model is recorded
#' in `metadata(x)$cellvi[[name]]`, so that [accessibilityPEAKVI()], [findMarkersPEAKVI()] and
#' later sessions query it.
#'
#' @param x A SingleCellExperiment whose rows are regions (peaks or bins).
#' @param assay.type Assay holding the region counts.
#' @inheritParams RunPEAKVI
#' @inheritParams cellvi-params
#' @return `x` with the reducedDim added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("bmmc_atac_small", as = "SingleCellExperiment")
#'   sce <- runPEAKVI(sce, max_epochs = 20)
#'   dim(SingleCellExperiment::reducedDim(sce, "PeakVI"))
#' }
#' }
#' @rdname runPEAKVI-sce
#' @export
runPEAKVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                      categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                      n_latent = NULL, n_hidden = NULL, n_layers_encoder = 2,
                      n_layers_decoder = 2, dropout_rate = 0.1, max_epochs = NULL,
                      batch_size = 128, train_size = 0.9, early_stopping = TRUE, lr = 1e-4,
                      device = "auto", seed = NULL, model_dir = NULL, model_kwargs = list(),
                      plan_kwargs = list(),
                      name = "PeakVI", verbose = TRUE) {
  .run_verb(.sce, x, .peakvi_verb, environment())
}

#' Hyperparameter search for PeakVI on a SingleCellExperiment
#'
#' As [TunePEAKVI()], for a SingleCellExperiment of region counts: returns the trials table,
#' or with `fit_best = TRUE` the object with the best settings' latent space as a reducedDim
#' (as [runPEAKVI()]), the search recorded in `metadata(x)$cellvi[[name]]$autotune`.
#'
#' @inheritParams TunePEAKVI
#' @inheritParams runPEAKVI
#' @return A data.frame of trials, or `x` with the reducedDim added (`fit_best = TRUE`).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("bmmc_atac_small", as = "SingleCellExperiment")
#'   trials <- tunePEAKVI(sce, search_space = list(train_params = list(
#'     lr = tune_loguniform(1e-5, 1e-3))), num_samples = 3, max_epochs = 5,
#'     save_dir = tempfile("tune"), verbose = FALSE)
#'   attr(trials, "best_params")
#' }
#' }
#' @rdname tunePEAKVI-sce
#' @export
tunePEAKVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                       categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                       n_latent = NULL, n_hidden = NULL, n_layers_encoder = 2,
                       n_layers_decoder = 2, dropout_rate = 0.1, search_space = NULL,
                       metric = "marginal_ll", num_samples = 20, max_epochs = NULL,
                       test_size = 0.25, scheduler = "asha", n_jobs = 1, storage = NULL,
                       study_name = NULL, save_dir = NULL, fit_best = FALSE,
                       batch_size = 128, device = "auto", seed = 0, model_dir = NULL,
                       model_kwargs = list(), name = "PeakVI", verbose = TRUE) {
  .run_verb(.sce, x, .tune_peakvi_verb, environment())
}

#' PeakVI accessibility estimates into a SingleCellExperiment
#'
#' As [AccessibilityPEAKVI()]: the estimates become the assay `name` of `x` (for all regions,
#' in its order) or else an altExp `name` (chosen `features`).
#'
#' @param x A SingleCellExperiment on which [runPEAKVI()] has run.
#' @param name Name of the new assay (or altExp).
#' @inheritParams AccessibilityPEAKVI
#' @inheritParams cellvi-params
#' @return `x` with the estimates added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("bmmc_atac_small", as = "SingleCellExperiment")
#'   sce <- accessibilityPEAKVI(runPEAKVI(sce, max_epochs = 20), threshold = 0.05)
#'   SummarizedExperiment::assay(sce, "PeakVI_accessibility")[1:5, 1:5]
#' }
#' }
#' @rdname accessibilityPEAKVI-sce
#' @export
accessibilityPEAKVI <- function(x, dimred = "PeakVI", features = NULL,
                                name = "PeakVI_accessibility", normalize_cells = FALSE,
                                normalize_regions = FALSE, threshold = NULL, verbose = TRUE) {
  .run_verb(.sce, x, .accessibility_peakvi_verb, environment())
}

#' Differentially accessible regions with PeakVI (SingleCellExperiment)
#'
#' As [FindMarkersPEAKVI()] (one-vs-rest with `group1 = NULL`, stacked with `group` and `gene`
#' (region) columns, as [findMarkersSCVI()] does), from the model stored by [runPEAKVI()].
#'
#' @param x A SingleCellExperiment on which [runPEAKVI()] has run.
#' @inheritParams FindMarkersPEAKVI
#' @inheritParams findMarkersSCVI
#' @inheritParams cellvi-params
#' @return A data.frame (rownames = regions for one comparison).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("bmmc_atac_small", as = "SingleCellExperiment")
#'   sce <- runPEAKVI(sce, max_epochs = 20)
#'   da <- findMarkersPEAKVI(sce, "cell_type", group1 = "B", group2 = "CD14.Mono.1")
#'   head(da)
#' }
#' }
#' @rdname findMarkersPEAKVI-sce
#' @export
findMarkersPEAKVI <- function(x, groups, group1 = NULL, group2 = NULL, dimred = "PeakVI",
                              features = NULL, mode = "change", delta = 0.05,
                              fdr_target = 0.05, batch_correction = FALSE, batchid1 = NULL,
                              batchid2 = NULL, n_samples = 5000, seed = NULL, verbose = TRUE) {
  .run_verb(.sce, x, .markers_peakvi_verb, environment())
}
