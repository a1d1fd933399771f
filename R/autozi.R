# AutoZI verbs (which genes are zero-inflated): RunAUTOZI (Seurat) and runAUTOZI
# (SingleCellExperiment), declared on the one path of aaa-verbs.R. Per-gene results go to the
# feature metadata of the counts' assay (Seurat meta.features, SCE rowData) as `autozi.*`
# columns; the latent space becomes a reduction / reducedDim as scVI's does.

# ---- declaration -------------------------------------------------------------------------------

# Python's columns of get_zero_inflation() and their names in R (a per-batch or per-label
# model adds "_<category>" to each).
.autozi_columns <- c(alpha_posterior = "alpha", beta_posterior = "beta", prob_zi = "prob_zi",
                     is_zi = "is_zi")

# Per gene: the Beta posterior of the NB weight, the probability of zero inflation, the call.
.out_autozi <- function(model, adata, a, plan, cells) {
  table <- .py_df_to_r(.py_call(model$get_zero_inflation(
    threshold = .as_number(a$threshold, "threshold", 0, 1),
    prob_threshold = .as_number(a$prob_threshold, "prob_threshold", 0, 1))))
  names(table) <- paste0("autozi.", vapply(names(table), function(name) {
    for (py in names(.autozi_columns)) {
      if (startsWith(name, py)) return(sub(py, .autozi_columns[[py]], name, fixed = TRUE))
    }
    name
  }, character(1)))
  if (isTRUE(a$verbose)) {
    calls <- table[, startsWith(names(table), "autozi.is_zi"), drop = FALSE]
    message("AutoZI: ", paste0(sum(as.matrix(calls)), " of ", length(as.matrix(calls))),
            " gene", if (ncol(calls) > 1) "-group pairs" else "s", " zero-inflated")
  }
  list(features = table)
}

.autozi_verb <- .verb(
  "AUTOZI",
  setup = .covariate_setup,
  model_args = c(.vae_args[c("n_latent", "n_hidden", "n_layers", "dropout_rate", "dispersion")],
                 list(zero_inflation = .arg_choice("gene", "gene-batch", "gene-label"),
                      alpha_prior = .arg_number(0, 1, null_ok = TRUE),
                      beta_prior = .arg_number(0, 1, null_ok = TRUE),
                      minimal_dropout = .arg_number(0, 1))),
  train_args = .train_spec,
  options = list(threshold = .arg_number(0, 1), prob_threshold = .arg_number(0, 1)),
  outputs = list(.out_latent, .out_autozi),
  fit_by = c(seurat = "RunAUTOZI()", sce = "runAUTOZI()"))

# ---- verbs ---------------------------------------------------------------------------------------

#' Find zero-inflated genes with AutoZI (Seurat)
#'
#' Trains AutoZI, scVI's model in which each gene's counts are negative binomial (NB) with
#' probability delta and zero-inflated NB otherwise, with a Beta posterior of delta per
#' gene. Per gene, the assay's feature metadata (`object[[assay]][[]]`) gets the posterior's
#' parameters (`autozi.alpha`, `autozi.beta`), the probability that the gene is
#' zero-inflated (`autozi.prob_zi`: the posterior probability that delta is below
#' `threshold`) and the call (`autozi.is_zi`: that probability above `prob_threshold`, as in
#' scvi-tools' tutorial); genes left out by `features` get `NA`. With
#' `zero_inflation = "gene-batch"` (or `"gene-label"`) each column is given per batch (or
#' label), named e.g. `autozi.prob_zi_<batch>`. The latent space is stored as a reduction,
#' as [RunSCVI()] does, and the model is recorded in its `misc` ([NormalizeSCVI()] and
#' [FindMarkersSCVI()] read it with `reduction = "autozi"`).
#'
#' The calls settle slowly (in scvi-tools too): on 12,000 PBMCs, after 100 epochs at
#' `lr = 1e-3` two seeds agreed on only 70% of the genes, after 200 epochs at `lr = 1e-2` on
#' 98%. Check that the calls are stable, e.g. with two seeds, before reading them.
#'
#' @param zero_inflation `"gene"` (one delta per gene), `"gene-batch"` or `"gene-label"` (one
#'   per gene and batch or label; needs `batch_key` or `labels_key`).
#' @param alpha_prior,beta_prior Parameters of delta's Beta prior, each strictly between 0
#'   and 1 (`NULL` for one: 1 minus the other; `NULL` for both: the prior is learned).
#' @param minimal_dropout Least zero-inflation probability of the zero-inflated component.
#' @param threshold,prob_threshold A gene is called zero-inflated when the posterior
#'   probability that delta < `threshold` exceeds `prob_threshold`.
#' @param reduction.name,reduction.key Name and key of the latent space's reduction.
#' @inheritParams cellvi-params
#' @return The Seurat object with the feature metadata columns and the reduction added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunAUTOZI(SeuratObject::pbmc_small, max_epochs = 50, seed = 0)
#'   genes <- pbmc[["RNA"]][[]]
#'   head(genes[order(-genes$autozi.prob_zi), c("autozi.prob_zi", "autozi.is_zi")])
#'   mean(genes$autozi.is_zi)
#' }
#' }
#' @export
RunAUTOZI <- function(object, assay = NULL, features = NULL, batch_key = NULL, labels_key = NULL,
                      categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                      zero_inflation = "gene", alpha_prior = 0.5, beta_prior = 0.5,
                      minimal_dropout = 0.01, n_latent = 10, n_hidden = 128, n_layers = 1,
                      dropout_rate = 0.1, dispersion = "gene", threshold = 0.5,
                      prob_threshold = 0.5, max_epochs = NULL, batch_size = 128,
                      train_size = 0.9, early_stopping = FALSE, lr = 1e-3, device = "auto",
                      seed = NULL, model_dir = NULL, model_kwargs = list(), plan_kwargs = list(),
                      reduction.name = "autozi", reduction.key = "AUTOZI_", verbose = TRUE) {
  .run_verb(.seurat, object, .autozi_verb, environment())
}

#' Find zero-inflated genes with AutoZI (SingleCellExperiment)
#'
#' As [RunAUTOZI()]; the per-gene columns go to `rowData(x)`, the latent space to
#' `reducedDim(x, name)` and the model is recorded in `metadata(x)$cellvi[[name]]`.
#'
#' @inheritParams RunAUTOZI
#' @inheritParams cellvi-params
#' @return `x` with the `rowData` columns and the reducedDim added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   sce <- runAUTOZI(sce, max_epochs = 50, seed = 0)
#'   table(SummarizedExperiment::rowData(sce)$autozi.is_zi)
#' }
#' }
#' @rdname runAUTOZI-sce
#' @export
runAUTOZI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                      labels_key = NULL, categorical_covariate_keys = NULL,
                      continuous_covariate_keys = NULL, zero_inflation = "gene",
                      alpha_prior = 0.5, beta_prior = 0.5, minimal_dropout = 0.01,
                      n_latent = 10, n_hidden = 128, n_layers = 1, dropout_rate = 0.1,
                      dispersion = "gene", threshold = 0.5, prob_threshold = 0.5,
                      max_epochs = NULL, batch_size = 128, train_size = 0.9,
                      early_stopping = FALSE, lr = 1e-3, device = "auto", seed = NULL,
                      model_dir = NULL, model_kwargs = list(),
                      plan_kwargs = list(), name = "AutoZI",
                      verbose = TRUE) {
  .run_verb(.sce, x, .autozi_verb, environment())
}
