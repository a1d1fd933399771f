# totalVI verbs (RNA and proteins of CITE-seq cells): RunTOTALVI / runTOTALVI (joint latent
# space), TuneTOTALVI / tuneTOTALVI (its hyperparameter search, autotune.R), NormalizeTOTALVI / normalizeTOTALVI (denoised RNA and proteins) and
# FindMarkersTOTALVI / findMarkersTOTALVI (genes and proteins), declared on the one path of
# aaa-verbs.R. The proteins come from a Seurat assay (`protein_assay`) or an SCE altExp
# (`protein_altexp`) and travel as obsm["protein_expression"] (convert.R).

# ---- declarations ----------------------------------------------------------------------------

.totalvi_verb <- .verb(
  "TOTALVI",
  setup = c(list(protein_expression_obsm_key = .arg_fixed(.protein_obsm_key)),
            .covariate_setup[c("batch_key", "categorical_covariate_keys",
                               "continuous_covariate_keys")]),
  model_args = list(n_latent = .arg_count(),
                    gene_dispersion = .arg_choice("gene", "gene-batch", "gene-label"),
                    protein_dispersion = .arg_choice("protein", "protein-batch", "protein-label"),
                    gene_likelihood = .arg_choice("nb", "zinb")),
  train_args = .train_spec, proteins = TRUE, outputs = list(.out_latent))

.tune_totalvi_verb <- .tune_verb(.totalvi_verb)

.totalvi_fit_by <- c(seurat = "RunTOTALVI()", sce = "runTOTALVI()")

# Denoised RNA (genes x cells) and proteins (proteins x cells, background removed unless
# `include_protein_background`).
.out_totalvi_normalized <- function(model, adata, a, plan, cells) {
  as_list <- function(x) if (is.null(x)) NULL else as.list(x)
  out <- .py_value(.py_call(model$get_normalized_expression(
    adata, gene_list = as_list(a$features), protein_list = as_list(a$proteins),
    library_size = .as_number(a$library_size, "library_size", 0),
    n_samples = .as_count(a$n_samples, "n_samples"),
    transform_batch = as_list(a$transform_batch),
    include_protein_background = .as_flag(a$include_protein_background,
                                          "include_protein_background"),
    return_numpy = TRUE)))
  rna <- t(out[[1]])
  proteins <- t(out[[2]])
  dimnames(rna) <- list(.or_default(a$features, .model_genes(model)), cells)
  dimnames(proteins) <- list(.or_default(a$proteins, unlist(.py_value(model$protein_names))),
                             cells)
  assays <- list()
  logged <- .as_flag(.or_default(a$log, FALSE), "log")
  if (nrow(rna)) assays$rna <- list(data = rna, whole = is.null(a$features), log1p = logged)
  if (nrow(proteins)) {
    assays$protein <- list(data = proteins, whole = is.null(a$proteins), log1p = logged)
  }
  list(assays = assays)
}

.normalize_totalvi_verb <- .verb(
  options = list(library_size = .arg_number(0), n_samples = .arg_count(),
                 include_protein_background = .arg_flag, log = .arg_flag),
  outputs = list(.out_totalvi_normalized), accepts = "TOTALVI", fit_by = .totalvi_fit_by)

.markers_totalvi_verb <- .verb(
  options = list(protein_prior_count = .arg_number(0), include_protein_background = .arg_flag),
  plan = .markers_plan, outputs = list(.out_markers), accepts = "TOTALVI",
  fit_by = .totalvi_fit_by)

# ---- Seurat ------------------------------------------------------------------------------------

#' Run totalVI on a Seurat object with RNA and protein (ADT) counts
#'
#' Trains totalVI, a variational autoencoder of CITE-seq cells' RNA and protein counts (the
#' proteins as a mixture of a background and a foreground component), and stores its joint
#' latent space as a dimensional reduction, as [Seurat::RunPCA()] does. The model is saved to
#' `model_dir` and recorded in the reduction's `misc` (with the protein assay), so that
#' [NormalizeTOTALVI()], [FindMarkersTOTALVI()] and later R sessions query it without
#' retraining.
#'
#' @param object A Seurat object with raw RNA counts and an assay of raw protein counts.
#' @param protein_assay Assay holding the protein (antibody-derived tag) counts; its `counts`
#'   slot is used.
#' @param assay Assay holding the RNA counts (default: the default assay).
#' @param features Genes to model (default: all), e.g. `VariableFeatures(object)`.
#' @param batch_key Metadata column of the batch. Proteins with no counts in a batch are
#'   treated as not measured there, and imputed.
#' @param categorical_covariate_keys,continuous_covariate_keys Metadata columns of further
#'   covariates.
#' @param n_latent Latent dimensions.
#' @param gene_dispersion `"gene"`, `"gene-batch"` or `"gene-label"`.
#' @param protein_dispersion `"protein"`, `"protein-batch"` or `"protein-label"`.
#' @param gene_likelihood `"nb"` or `"zinb"`.
#' @param batch_size,train_size,early_stopping,lr Training settings (totalVI's defaults:
#'   256 cells, early stopping on the validation ELBO, learning rate 0.004).
#' @param model_kwargs Named list of further model settings passed to Python as they are
#'   (e.g. `list(n_hidden = 128, empirical_protein_background_prior = FALSE)`).
#' @inheritParams cellvi-params
#' @return The Seurat object with the reduction added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   cite <- cellvi_dataset("pbmc_cite_small")        # assays RNA and ADT
#'   cite <- RunTOTALVI(cite, protein_assay = "ADT", max_epochs = 20)
#'   cite <- Seurat::RunUMAP(cite, reduction = "totalvi", dims = 1:20)
#' }
#' }
#' @export
RunTOTALVI <- function(object, protein_assay = "ADT", assay = NULL, features = NULL,
                       batch_key = NULL, categorical_covariate_keys = NULL,
                       continuous_covariate_keys = NULL, n_latent = 20,
                       gene_dispersion = "gene", protein_dispersion = "protein",
                       gene_likelihood = "nb", max_epochs = NULL, batch_size = 256,
                       train_size = 0.9, early_stopping = TRUE, lr = 4e-3, device = "auto",
                       seed = NULL, model_dir = NULL, model_kwargs = list(), plan_kwargs = list(),
                       reduction.name = "totalvi", reduction.key = "totalVI_", verbose = TRUE) {
  .run_verb(.seurat, object, .totalvi_verb, environment())
}

#' Hyperparameter search for totalVI on a Seurat object
#'
#' As [TuneSCVI()], for totalVI ([RunTOTALVI()]): searches its default space (`lr`,
#' `n_latent`, `n_hidden`, `n_layers_encoder`, `dropout_rate_encoder`, `gene_likelihood`) or
#' `search_space`, every trial trained on the same cells' RNA and proteins and scored on the
#' same held-out cells, and returns the trials, or with `fit_best = TRUE` the object with the
#' best settings' joint reduction, as [RunTOTALVI()] adds it.
#'
#' @inheritParams TuneSCVI
#' @inheritParams RunTOTALVI
#' @param batch_size Cells per minibatch (the same for every trial; totalVI's default 256).
#' @param model_kwargs Named list of further model settings passed to Python as they are,
#'   the same in every trial.
#' @return A data.frame of trials (see [TuneSCVI()]), or with `fit_best = TRUE` the Seurat
#'   object with the reduction added, the search in its `misc$autotune`.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   cite <- cellvi_dataset("pbmc_cite_small")        # assays RNA and ADT
#'   space <- list(model_params = list(n_latent = tune_choice(c(10, 20))))
#'   trials <- TuneTOTALVI(cite, protein_assay = "ADT", search_space = space, num_samples = 3,
#'                         max_epochs = 5, metric = "elbo_validation",
#'                         save_dir = tempfile("tune"), verbose = FALSE)
#'   trials[, c("trial", "state", "metric", "n_latent")]
#' }
#' }
#' @export
TuneTOTALVI <- function(object, protein_assay = "ADT", assay = NULL, features = NULL,
                        batch_key = NULL, categorical_covariate_keys = NULL,
                        continuous_covariate_keys = NULL, n_latent = 20,
                        gene_dispersion = "gene", protein_dispersion = "protein",
                        gene_likelihood = "nb", search_space = NULL, metric = "marginal_ll",
                        num_samples = 20, max_epochs = NULL, test_size = 0.25,
                        scheduler = "asha", n_jobs = 1, storage = NULL, study_name = NULL,
                        save_dir = NULL, fit_best = FALSE, batch_size = 256, device = "auto",
                        seed = 0, model_dir = NULL, model_kwargs = list(),
                        reduction.name = "totalvi", reduction.key = "totalVI_",
                        verbose = TRUE) {
  .run_verb(.seurat, object, .tune_totalvi_verb, environment())
}

#' totalVI-denoised RNA and proteins into Seurat assays
#'
#' Decodes each cell's latent state into RNA expression with library size and technical noise
#' removed, and into protein expression with the protein background removed, and stores them
#' as two new assays: `log1p()` of the values in their `data` slot (as Seurat's own
#' normalization, so that plots and tests read log-scale values, like [NormalizeSCVI()]), or
#' the linear values with `log = FALSE`.
#'
#' @param object A Seurat object on which [RunTOTALVI()] has run.
#' @param features Genes to return (default: all genes of the model; `character(0)`: none).
#' @param proteins Proteins to return (default: all; `character(0)`: none).
#' @param assay.name Name of the new RNA assay.
#' @param protein.assay.name Name of the new protein assay.
#' @param library_size Total per cell the RNA expression is scaled to.
#' @param n_samples Posterior samples averaged per cell.
#' @param transform_batch Batch (or batches, averaged) to generate every cell in; `NULL`:
#'   each cell's own.
#' @param include_protein_background Add the protein background back (the expected counts
#'   of both components).
#' @param log `TRUE`: `log1p()` of the denoised values in the `data` slots; `FALSE`: the
#'   linear values.
#' @param verbose Show messages.
#' @inheritParams cellvi-params
#' @return The Seurat object with the new assays.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   cite <- RunTOTALVI(cellvi_dataset("pbmc_cite_small"), max_epochs = 20)
#'   cite <- NormalizeTOTALVI(cite)
#'   SeuratObject::GetAssayData(cite, assay = "TOTALVI_ADT")[1:5, 1:3]
#' }
#' }
#' @export
NormalizeTOTALVI <- function(object, reduction = "totalvi", features = NULL, proteins = NULL,
                             assay.name = "TOTALVI", protein.assay.name = "TOTALVI_ADT",
                             library_size = 1e4, n_samples = 1, transform_batch = NULL,
                             include_protein_background = FALSE, log = TRUE, verbose = TRUE) {
  .run_verb(.seurat, object, .normalize_totalvi_verb, environment())
}

#' Differentially expressed genes and proteins with totalVI (Seurat)
#'
#' As [FindMarkersSCVI()], from the totalVI model stored by [RunTOTALVI()], over the genes
#' and the proteins together (denoised proteins, background removed unless
#' `include_protein_background = TRUE`, plus `protein_prior_count`). The table has
#' FindMarkersSCVI's columns and `feature_type` (`"gene"` or `"protein"`). `features`,
#' `min.pct`, `logfc.threshold` and `only.pos` filter genes and proteins alike, as in
#' [FindMarkersSCVI()] (a protein's `pct.1` and `pct.2` are the fractions of the cells with
#' any count of it), and `seed` (or `set.seed()`) makes the result repeat.
#'
#' @param object A Seurat object on which [RunTOTALVI()] has run.
#' @param features Genes and proteins to test (default: all of the model's).
#' @param protein_prior_count Added to the protein expression before fold changes.
#' @param include_protein_background Test the proteins' whole expected counts, background
#'   included, instead of the foreground alone.
#' @inheritParams FindMarkersSCVI
#' @return A data.frame, one row per gene or protein (rownames), sorted by evidence.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   cite <- RunTOTALVI(cellvi_dataset("pbmc_cite_small"), max_epochs = 20)
#'   cite <- Seurat::FindNeighbors(cite, reduction = "totalvi", dims = 1:20, verbose = FALSE)
#'   cite <- Seurat::FindClusters(cite, verbose = FALSE)
#'   markers <- FindMarkersTOTALVI(cite, ident.1 = "0", ident.2 = "1")
#'   head(markers[markers$feature_type == "protein", ])
#' }
#' }
#' @export
FindMarkersTOTALVI <- function(object, ident.1, ident.2 = NULL, group.by = NULL,
                               reduction = "totalvi", features = NULL, logfc.threshold = 0.25,
                               min.pct = 0.1, only.pos = FALSE, mode = "change",
                               delta = 0.25, fdr_target = 0.05, batch_correction = FALSE,
                               batchid1 = NULL, batchid2 = NULL, n_samples = 5000,
                               protein_prior_count = 0.1, include_protein_background = FALSE,
                               seed = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .markers_totalvi_verb, environment())
}

# ---- SingleCellExperiment ----------------------------------------------------------------------

#' Run totalVI on a SingleCellExperiment with an altExp of protein (ADT) counts
#'
#' As [RunTOTALVI()]: the joint latent space goes to `reducedDim(x, name)`, and the model is
#' recorded in `metadata(x)$cellvi[[name]]` (with the protein altExp), so that
#' [normalizeTOTALVI()], [findMarkersTOTALVI()] and later sessions query it.
#'
#' @param x A SingleCellExperiment with raw RNA counts and an altExp of raw protein counts.
#' @param protein_altexp The altExp holding the protein counts (its `counts` assay).
#' @param assay.type Assay holding the RNA counts.
#' @inheritParams RunTOTALVI
#' @inheritParams cellvi-params
#' @return `x` with the reducedDim added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
#'   sce <- runTOTALVI(sce, protein_altexp = "ADT", max_epochs = 20)
#'   dim(SingleCellExperiment::reducedDim(sce, "totalVI"))
#' }
#' }
#' @rdname runTOTALVI-sce
#' @export
runTOTALVI <- function(x, protein_altexp = "ADT", assay.type = "counts", features = NULL,
                       batch_key = NULL, categorical_covariate_keys = NULL,
                       continuous_covariate_keys = NULL, n_latent = 20,
                       gene_dispersion = "gene", protein_dispersion = "protein",
                       gene_likelihood = "nb", max_epochs = NULL, batch_size = 256,
                       train_size = 0.9, early_stopping = TRUE, lr = 4e-3, device = "auto",
                       seed = NULL, model_dir = NULL, model_kwargs = list(),
                       plan_kwargs = list(), name = "totalVI",
                       verbose = TRUE) {
  .run_verb(.sce, x, .totalvi_verb, environment())
}

#' Hyperparameter search for totalVI on a SingleCellExperiment
#'
#' As [TuneTOTALVI()], for a SingleCellExperiment with an altExp of protein counts: returns
#' the trials table, or with `fit_best = TRUE` the object with the best settings' joint
#' latent space as a reducedDim (as [runTOTALVI()]), the search recorded in
#' `metadata(x)$cellvi[[name]]$autotune`.
#'
#' @inheritParams TuneTOTALVI
#' @inheritParams runTOTALVI
#' @return A data.frame of trials, or `x` with the reducedDim added (`fit_best = TRUE`).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
#'   trials <- tuneTOTALVI(sce, protein_altexp = "ADT", search_space = list(train_params =
#'     list(lr = tune_loguniform(1e-3, 1e-2))), num_samples = 3, max_epochs = 5,
#'     metric = "elbo_validation", save_dir = tempfile("tune"), verbose = FALSE)
#'   attr(trials, "best_params")
#' }
#' }
#' @rdname tuneTOTALVI-sce
#' @export
tuneTOTALVI <- function(x, protein_altexp = "ADT", assay.type = "counts", features = NULL,
                        batch_key = NULL, categorical_covariate_keys = NULL,
                        continuous_covariate_keys = NULL, n_latent = 20,
                        gene_dispersion = "gene", protein_dispersion = "protein",
                        gene_likelihood = "nb", search_space = NULL, metric = "marginal_ll",
                        num_samples = 20, max_epochs = NULL, test_size = 0.25,
                        scheduler = "asha", n_jobs = 1, storage = NULL, study_name = NULL,
                        save_dir = NULL, fit_best = FALSE, batch_size = 256, device = "auto",
                        seed = 0, model_dir = NULL, model_kwargs = list(), name = "totalVI",
                        verbose = TRUE) {
  .run_verb(.sce, x, .tune_totalvi_verb, environment())
}

#' totalVI-denoised RNA and proteins into a SingleCellExperiment
#'
#' The denoised RNA becomes the assay `name` of `x` (with chosen `features`: an altExp
#' `name`), the denoised proteins the assay `name` of the protein altExp (with chosen
#' `proteins`: an altExp `<name>_<altExp>`).
#'
#' @param x A SingleCellExperiment on which [runTOTALVI()] has run.
#' @param name Name of the new assays.
#' @param log `FALSE` (default): the linear denoised values; `TRUE`: their `log1p()`
#'   (natural log, like `logcounts`).
#' @inheritParams NormalizeTOTALVI
#' @inheritParams cellvi-params
#' @return `x` with the denoised expression added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
#'   sce <- normalizeTOTALVI(runTOTALVI(sce, max_epochs = 20))
#'   SummarizedExperiment::assay(SingleCellExperiment::altExp(sce, "ADT"), "totalVI_normalized")[1:5, 1:3]
#' }
#' }
#' @rdname normalizeTOTALVI-sce
#' @export
normalizeTOTALVI <- function(x, dimred = "totalVI", features = NULL, proteins = NULL,
                             name = "totalVI_normalized", library_size = 1e4, n_samples = 1,
                             transform_batch = NULL, include_protein_background = FALSE,
                             log = FALSE, verbose = TRUE) {
  .run_verb(.sce, x, .normalize_totalvi_verb, environment())
}

#' Differentially expressed genes and proteins with totalVI (SingleCellExperiment)
#'
#' As [findMarkersSCVI()] (one-vs-rest with `group1 = NULL`), from the totalVI model stored
#' by [runTOTALVI()], over genes and proteins, with a `feature_type` column; `seed` (or
#' `set.seed()`) makes the result repeat.
#'
#' @param x A SingleCellExperiment on which [runTOTALVI()] has run.
#' @inheritParams findMarkersSCVI
#' @inheritParams FindMarkersTOTALVI
#' @inheritParams cellvi-params
#' @return A data.frame (rownames = features for one comparison).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
#'   sce <- runTOTALVI(sce, max_epochs = 20)
#'   sce$cluster <- kmeans(SingleCellExperiment::reducedDim(sce, "totalVI"), 4)$cluster
#'   markers <- findMarkersTOTALVI(sce, "cluster", group1 = "1")
#'   head(markers[markers$feature_type == "protein", ])
#' }
#' }
#' @rdname findMarkersTOTALVI-sce
#' @export
findMarkersTOTALVI <- function(x, groups, group1 = NULL, group2 = NULL, dimred = "totalVI",
                               features = NULL, mode = "change", delta = 0.25,
                               fdr_target = 0.05, batch_correction = FALSE, batchid1 = NULL,
                               batchid2 = NULL, n_samples = 5000, protein_prior_count = 0.1,
                               include_protein_background = FALSE, seed = NULL,
                               verbose = TRUE) {
  .run_verb(.sce, x, .markers_totalvi_verb, environment())
}
