# scVI and LDVAE verbs for Seurat (RunSCVI, RunLinearSCVI, NormalizeSCVI, TuneLinearSCVI) and
# SingleCellExperiment (runSCVI, runLinearSCVI, normalizeSCVI, tuneLinearSCVI): one
# declaration per verb, shared by both ecosystems and run by .run_verb() (aaa-verbs.R).
# TuneSCVI / tuneSCVI are documented in autotune.R; their declaration is here.

# ---- declarations ----------------------------------------------------------------------------
# Each verb is a declaration run by .run_verb() (aaa-verbs.R), for Seurat and SCE alike.

.scvi_verb <- .verb("SCVI", setup = .covariate_setup, model_args = .vae_args,
                    train_args = .train_spec, outputs = list(.out_latent))

.ldvae_verb <- .verb("LinearSCVI", setup = .covariate_setup, model_args = .vae_args,
                     train_args = .train_spec, outputs = list(.out_latent, .out_loadings))

# Hyperparameter search (autotune.R): the model verbs, searching.
.tune_scvi_verb <- .tune_verb(.scvi_verb)
.tune_ldvae_verb <- .tune_verb(.ldvae_verb)

.normalize_scvi_verb <- .verb(
  options = list(library_size = .arg_number(0), n_samples = .arg_count(), log = .arg_flag),
  outputs = list(function(model, adata, a, plan, cells) {
    expr <- .normalized_expression(model, adata, a$features, a$library_size, a$n_samples,
                                   a$transform_batch)
    dimnames(expr) <- list(.or_default(a$features, .model_genes(model)), cells)
    list(assays = list(rna = list(data = expr, whole = is.null(a$features),
                                  log1p = .as_flag(.or_default(a$log, FALSE), "log"))))
  }),
  accepts = c("SCVI", "LinearSCVI", "SCANVI", "AUTOZI"))

# ---- shared helpers ----------------------------------------------------------------------------

# The setup keys of the scVI family, checked (kept for callers and tests of the old name).
.check_setup <- function(batch_key, labels_key, categorical_covariate_keys,
                         continuous_covariate_keys) {
  .check_args(.covariate_setup, environment(), drop_null = TRUE)
}

# Normalized expression of `adata` (genes x cells, dense) for the chosen genes.
.normalized_expression <- function(model, adata, features, library_size, n_samples,
                                   transform_batch) {
  expr <- .py_value(.py_call(model$get_normalized_expression(
    adata, gene_list = if (is.null(features)) NULL else as.list(features),
    library_size = .as_number(library_size, "library_size", 0),
    n_samples = .as_count(n_samples, "n_samples"),
    transform_batch = if (is.null(transform_batch)) NULL else as.list(transform_batch),
    return_numpy = TRUE)))
  t(expr)
}

# The model recorded on a Seurat reduction.
.reduction_model <- function(object, reduction) {
  .recorded_model(.seurat, object, reduction)$model
}

# ---- Seurat ---------------------------------------------------------------------------

#' Run scVI on a Seurat object
#'
#' Trains scVI (a variational autoencoder of the raw counts, with batch effects removed) and
#' stores its latent space as a dimensional reduction, as [Seurat::RunPCA()] does. The model
#' is saved to `model_dir` and recorded in the reduction's `misc`, so that later verbs
#' ([NormalizeSCVI()]) and later R sessions can query it without retraining.
#'
#' @inheritParams cellvi-params
#' @return The Seurat object with the reduction added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, batch_key = "groups", max_epochs = 50)
#'   pbmc <- Seurat::RunUMAP(pbmc, reduction = "scvi", dims = 1:10)
#' }
#' }
#' @export
RunSCVI <- function(object, assay = NULL, features = NULL, batch_key = NULL, labels_key = NULL,
                    categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                    n_latent = 10, n_hidden = 128, n_layers = 1, dropout_rate = 0.1,
                    gene_likelihood = "zinb", dispersion = "gene", max_epochs = NULL,
                    batch_size = 128, train_size = 0.9, early_stopping = FALSE, lr = 1e-3,
                    device = "auto", seed = NULL, model_dir = NULL, model_kwargs = list(),
                    plan_kwargs = list(),
                    reduction.name = "scvi", reduction.key = "scVI_", verbose = TRUE) {
  .run_verb(.seurat, object, .scvi_verb, environment())
}

#' Run LDVAE (scVI with a linear decoder) on a Seurat object
#'
#' Like [RunSCVI()], and the decoder's gene loadings are stored as the reduction's feature
#' loadings, so that `Loadings(object[["ldvae"]])` gives each latent dimension's genes.
#'
#' @inheritParams cellvi-params
#' @return The Seurat object with the reduction added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunLinearSCVI(SeuratObject::pbmc_small, max_epochs = 50)
#'   head(Seurat::Loadings(pbmc[["ldvae"]]))
#' }
#' }
#' @export
RunLinearSCVI <- function(object, assay = NULL, features = NULL, batch_key = NULL,
                          labels_key = NULL, categorical_covariate_keys = NULL,
                          continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                          n_layers = 1, dropout_rate = 0.1, gene_likelihood = "nb",
                          dispersion = "gene", max_epochs = NULL, batch_size = 128,
                          train_size = 0.9, early_stopping = FALSE, lr = 1e-3, device = "auto",
                          seed = NULL, model_dir = NULL, model_kwargs = list(),
                          plan_kwargs = list(),
                          reduction.name = "ldvae", reduction.key = "LDVAE_", verbose = TRUE) {
  .run_verb(.seurat, object, .ldvae_verb, environment())
}

#' Hyperparameter search for LDVAE on a Seurat object
#'
#' As [TuneSCVI()], for LDVAE (scVI with a linear decoder, [RunLinearSCVI()]): searches its
#' default space (`lr`, `n_layers`, `n_hidden`, `n_latent`, `dropout_rate`,
#' `gene_likelihood`; trial 0 is LDVAE's defaults, with the NB likelihood) or `search_space`,
#' and returns the trials, or with `fit_best = TRUE` the object with the best settings'
#' reduction and gene loadings, as [RunLinearSCVI()] adds them.
#'
#' @inheritParams TuneSCVI
#' @inheritParams RunLinearSCVI
#' @return A data.frame of trials (see [TuneSCVI()]), or with `fit_best = TRUE` the Seurat
#'   object with the reduction (and its loadings) added, the search in its
#'   `misc$autotune`.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   space <- list(model_params = list(n_latent = tune_choice(c(5, 10))))
#'   trials <- TuneLinearSCVI(SeuratObject::pbmc_small, search_space = space, num_samples = 3,
#'                            max_epochs = 5, save_dir = tempfile("tune"), verbose = FALSE)
#'   trials[, c("trial", "state", "metric", "n_latent")]
#' }
#' }
#' @export
TuneLinearSCVI <- function(object, assay = NULL, features = NULL, batch_key = NULL,
                           labels_key = NULL, categorical_covariate_keys = NULL,
                           continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                           n_layers = 1, dropout_rate = 0.1, gene_likelihood = "nb",
                           dispersion = "gene", search_space = NULL, metric = "marginal_ll",
                           num_samples = 20, max_epochs = NULL, test_size = 0.25,
                           scheduler = "asha", n_jobs = 1, storage = NULL, study_name = NULL,
                           save_dir = NULL, fit_best = FALSE, batch_size = 128,
                           device = "auto", seed = 0, model_dir = NULL, model_kwargs = list(),
                           reduction.name = "ldvae", reduction.key = "LDVAE_", verbose = TRUE) {
  .run_verb(.seurat, object, .tune_ldvae_verb, environment())
}

#' scVI-normalized expression into a Seurat assay
#'
#' Decodes each cell's latent state into expression with technical noise (library size,
#' dropout and, with `transform_batch`, batch) removed, and stores it as a new assay.
#'
#' As after [Seurat::NormalizeData()], the assay's `data` slot holds log-normalized values:
#' `log1p(expression scaled to library_size per cell)` (natural log), so that violin plots,
#' feature plots and `FindMarkers()` read it as they read Seurat's own; `expm1()` gives the
#' linear values back. With `log = FALSE` the `data` slot holds the linear values instead.
#'
#' @param object A Seurat object on which [RunSCVI()] or [RunLinearSCVI()] has run (or
#'   [RunSCANVI()], [RunAUTOZI()]: name its reduction).
#' @param features Genes to return (default: all genes of the model). Only these are computed
#'   and stored.
#' @param assay.name Name of the new assay.
#' @param library_size Total per cell the expression is scaled to.
#' @param n_samples Posterior samples averaged per cell.
#' @param transform_batch Batch (or batches, averaged) to generate every cell in; `NULL`:
#'   each cell's own.
#' @param log `TRUE`: `log1p()` of the normalized expression in the `data` slot (as Seurat's
#'   log-normalized data); `FALSE`: the linear values (expression per `library_size`).
#' @param verbose Show messages.
#' @inheritParams cellvi-params
#' @return The Seurat object with the new assay (`log1p` of the normalized expression in its
#'   `data` slot, or the linear values with `log = FALSE`).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 50)
#'   pbmc <- NormalizeSCVI(pbmc, features = c("CD3E", "MS4A1"))
#'   SeuratObject::GetAssayData(pbmc, assay = "SCVI")[, 1:5]  # log1p(expression per 10k)
#' }
#' }
#' @export
NormalizeSCVI <- function(object, reduction = "scvi", features = NULL, assay.name = "SCVI",
                          library_size = 1e4, n_samples = 1, transform_batch = NULL, log = TRUE,
                          verbose = TRUE) {
  .run_verb(.seurat, object, .normalize_scvi_verb, environment())
}

# ---- SingleCellExperiment ----------------------------------------------------------------

#' Run scVI on a SingleCellExperiment
#'
#' Trains scVI and stores its latent space with `reducedDim(x, name)`, as
#' `scater::runPCA()` does. The model is saved to `model_dir` and recorded in
#' `metadata(x)$cellvi[[name]]`, so [normalizeSCVI()] and later sessions can query it.
#'
#' @inheritParams cellvi-params
#' @return `x` with the reducedDim added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   sce <- runSCVI(sce, batch_key = "groups", max_epochs = 50)
#'   head(SingleCellExperiment::reducedDim(sce, "scVI"))
#' }
#' }
#' @rdname runSCVI-sce
#' @export
runSCVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                    labels_key = NULL, categorical_covariate_keys = NULL,
                    continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                    n_layers = 1, dropout_rate = 0.1, gene_likelihood = "zinb",
                    dispersion = "gene", max_epochs = NULL, batch_size = 128, train_size = 0.9,
                    early_stopping = FALSE, lr = 1e-3, device = "auto", seed = NULL,
                    model_dir = NULL, model_kwargs = list(),
                    plan_kwargs = list(), name = "scVI", verbose = TRUE) {
  .run_verb(.sce, x, .scvi_verb, environment())
}

#' Run LDVAE (scVI with a linear decoder) on a SingleCellExperiment
#'
#' Like [runSCVI()]; the gene loadings are attached to the reducedDim as its `"rotation"`
#' attribute, as `scater::runPCA()` does.
#'
#' @inheritParams runSCVI
#' @return `x` with the reducedDim added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   sce <- runLinearSCVI(sce, max_epochs = 50)
#'   head(attr(SingleCellExperiment::reducedDim(sce, "LDVAE"), "rotation"))
#' }
#' }
#' @rdname runLinearSCVI-sce
#' @export
runLinearSCVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                          labels_key = NULL, categorical_covariate_keys = NULL,
                          continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                          n_layers = 1, dropout_rate = 0.1, gene_likelihood = "nb",
                          dispersion = "gene", max_epochs = NULL, batch_size = 128,
                          train_size = 0.9, early_stopping = FALSE, lr = 1e-3, device = "auto",
                          seed = NULL, model_dir = NULL, model_kwargs = list(),
                          plan_kwargs = list(), name = "LDVAE",
                          verbose = TRUE) {
  .run_verb(.sce, x, .ldvae_verb, environment())
}

#' Hyperparameter search for LDVAE on a SingleCellExperiment
#'
#' As [TuneLinearSCVI()], for a SingleCellExperiment: returns the trials table, or with
#' `fit_best = TRUE` the object with the best settings' latent space as a reducedDim (its
#' gene loadings as the `"rotation"` attribute, as [runLinearSCVI()]), the search recorded in
#' `metadata(x)$cellvi[[name]]$autotune`.
#'
#' @inheritParams TuneLinearSCVI
#' @inheritParams runLinearSCVI
#' @return A data.frame of trials, or `x` with the reducedDim added (`fit_best = TRUE`).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   trials <- tuneLinearSCVI(sce, search_space = list(model_params = list(
#'     n_latent = tune_choice(c(5, 10)))), num_samples = 3, max_epochs = 5,
#'     save_dir = tempfile("tune"), verbose = FALSE)
#'   attr(trials, "best_params")
#' }
#' }
#' @rdname tuneLinearSCVI-sce
#' @export
tuneLinearSCVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                           labels_key = NULL, categorical_covariate_keys = NULL,
                           continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                           n_layers = 1, dropout_rate = 0.1, gene_likelihood = "nb",
                           dispersion = "gene", search_space = NULL, metric = "marginal_ll",
                           num_samples = 20, max_epochs = NULL, test_size = 0.25,
                           scheduler = "asha", n_jobs = 1, storage = NULL, study_name = NULL,
                           save_dir = NULL, fit_best = FALSE, batch_size = 128,
                           device = "auto", seed = 0, model_dir = NULL, model_kwargs = list(),
                           name = "LDVAE", verbose = TRUE) {
  .run_verb(.sce, x, .tune_ldvae_verb, environment())
}

#' scVI-normalized expression into a SingleCellExperiment assay
#'
#' When the model's genes are the genes of `x` (in its order) and no `features` are chosen,
#' the result is a new assay; otherwise it is an alternative experiment (`altExp(x, name)`)
#' holding the model's (or the chosen) genes only.
#'
#' @param x A SingleCellExperiment on which [runSCVI()] or [runLinearSCVI()] has run (or
#'   [runSCANVI()], [runAUTOZI()]: name its reducedDim).
#' @param name Name of the new assay (or altExp).
#' @param log `FALSE` (default): the linear values (expression per `library_size`); `TRUE`:
#'   their `log1p()` (natural log, like `logcounts`).
#' @inheritParams NormalizeSCVI
#' @inheritParams cellvi-params
#' @return `x` with the normalized expression added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   sce <- normalizeSCVI(runSCVI(sce, max_epochs = 50), features = c("CD3E", "MS4A1"))
#'   SummarizedExperiment::assay(SingleCellExperiment::altExp(sce, "scVI_normalized"))[, 1:5]
#' }
#' }
#' @rdname normalizeSCVI-sce
#' @export
normalizeSCVI <- function(x, dimred = "scVI", features = NULL, name = "scVI_normalized",
                          library_size = 1e4, n_samples = 1, transform_batch = NULL,
                          log = FALSE, verbose = TRUE) {
  .run_verb(.sce, x, .normalize_scvi_verb, environment())
}
