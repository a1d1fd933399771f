# scVI and LDVAE verbs for Seurat (RunSCVI, RunLinearSCVI, NormalizeSCVI) and
# SingleCellExperiment (runSCVI, runLinearSCVI, normalizeSCVI): one declaration per verb,
# shared by both ecosystems and run by .run_verb() (aaa-verbs.R).

# ---- declarations ----------------------------------------------------------------------------
# Each verb is a declaration run by .run_verb() (aaa-verbs.R), for Seurat and SCE alike.

.scvi_verb <- .verb("SCVI", setup = .covariate_setup, model_args = .vae_args,
                    train_args = .train_spec, outputs = list(.out_latent))

.ldvae_verb <- .verb("LinearSCVI", setup = .covariate_setup, model_args = .vae_args,
                     train_args = .train_spec, outputs = list(.out_latent, .out_loadings))

.normalize_scvi_verb <- .verb(
  options = list(library_size = .arg_number(0), n_samples = .arg_count()),
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
                          reduction.name = "ldvae", reduction.key = "LDVAE_", verbose = TRUE) {
  .run_verb(.seurat, object, .ldvae_verb, environment())
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
                    model_dir = NULL, model_kwargs = list(), name = "scVI", verbose = TRUE) {
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
                          seed = NULL, model_dir = NULL, model_kwargs = list(), name = "LDVAE",
                          verbose = TRUE) {
  .run_verb(.sce, x, .ldvae_verb, environment())
}

#' scVI-normalized expression into a SingleCellExperiment assay
#'
#' With all genes of the model the result is a new assay; with chosen `features` it is an
#' alternative experiment (`altExp(x, name)`) holding those genes only.
#'
#' @param x A SingleCellExperiment on which [runSCVI()] or [runLinearSCVI()] has run (or
#'   [runSCANVI()], [runAUTOZI()]: name its reducedDim).
#' @param name Name of the new assay (or altExp).
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
                          verbose = TRUE) {
  .run_verb(.sce, x, .normalize_scvi_verb, environment())
}
