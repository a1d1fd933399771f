# scVI and LDVAE verbs for Seurat (RunSCVI, RunLinearSCVI, NormalizeSCVI) and
# SingleCellExperiment (runSCVI, runLinearSCVI, normalizeSCVI). Training, saving and querying
# are shared; only the write-back differs between the two ecosystems.

# ---- shared: train, save, reload ---------------------------------------------------------

.setup_columns <- function(setup) {
  unique(unlist(setup[c("batch_key", "labels_key", "categorical_covariate_keys",
                        "continuous_covariate_keys")], use.names = FALSE))
}

.check_setup <- function(batch_key, labels_key, categorical_covariate_keys,
                         continuous_covariate_keys) {
  one <- function(x, name) {
    if (is.null(x)) return(NULL)
    if (!is.character(x) || length(x) != 1L || is.na(x)) {
      stop("`", name, "` must be one column name, not ", .show(x), call. = FALSE)
    }
    x
  }
  setup <- list(batch_key = one(batch_key, "batch_key"), labels_key = one(labels_key, "labels_key"),
                categorical_covariate_keys = .as_names(categorical_covariate_keys,
                                                       "categorical_covariate_keys"),
                continuous_covariate_keys = .as_names(continuous_covariate_keys,
                                                      "continuous_covariate_keys"))
  # Python wants lists for the covariate keys, even of one name.
  for (k in c("categorical_covariate_keys", "continuous_covariate_keys")) {
    if (!is.null(setup[[k]])) setup[[k]] <- as.list(setup[[k]])
  }
  Filter(Negate(is.null), setup)
}

.model_args <- function(n_latent, n_hidden, n_layers, dropout_rate, gene_likelihood,
                        dispersion, model_kwargs) {
  if (!is.list(model_kwargs)) stop("`model_kwargs` must be a named list", call. = FALSE)
  c(list(n_latent = .as_count(n_latent, "n_latent"), n_hidden = .as_count(n_hidden, "n_hidden"),
         n_layers = .as_count(n_layers, "n_layers"),
         dropout_rate = .as_number(dropout_rate, "dropout_rate", 0, 1),
         gene_likelihood = .as_choice(gene_likelihood, "gene_likelihood", c("zinb", "nb", "poisson")),
         dispersion = .as_choice(dispersion, "dispersion",
                                 c("gene", "gene-batch", "gene-label", "gene-cell"))),
    model_kwargs)
}

.train_args <- function(max_epochs, batch_size, train_size, early_stopping, lr, device, verbose) {
  list(max_epochs = .as_count(max_epochs, "max_epochs", null_ok = TRUE),
       batch_size = .as_count(batch_size, "batch_size", minimum = 2L),
       train_size = .as_number(train_size, "train_size", 0, 1),
       early_stopping = .as_flag(early_stopping, "early_stopping"),
       lr = .as_number(lr, "lr", 0),
       device = .as_choice(device, "device", c("auto", "cpu", "cuda", "mps")),
       progress_bar = .as_flag(verbose, "verbose"))
}

# Checks every argument a training verb (whose environment is `a`) passes to Python.
.verb_args <- function(a) {
  setup <- .check_setup(a$batch_key, a$labels_key, a$categorical_covariate_keys,
                        a$continuous_covariate_keys)
  columns <- .setup_columns(setup)
  list(setup = setup,
       model_args = .model_args(a$n_latent, a$n_hidden, a$n_layers, a$dropout_rate,
                                a$gene_likelihood, a$dispersion, a$model_kwargs),
       train_args = .train_args(a$max_epochs, a$batch_size, a$train_size, a$early_stopping,
                                a$lr, a$device, a$verbose),
       columns = if (length(columns)) columns else FALSE)
}

.new_model_dir <- function(model_class) {
  root <- file.path(tools::R_user_dir("cellvi", "data"), "models")
  stamp <- format(Sys.time(), "%Y%m%d-%H%M%S")
  # tempfile() makes its suffix without R's random-number stream: a user's set.seed() before
  # each verb neither repeats a directory (one model overwriting another) nor is disturbed.
  tempfile(paste0(model_class, "-", stamp, "-"), tmpdir = root)
}

# Trains a model on an AnnData handle and saves it; returns the model, its directory and the
# latent space (cells x n_latent, rownames = cells). The model is set up and built from `args`,
# or made by `build(core)` (e.g. from another model); `train = FALSE` saves it untrained.
.fit_model <- function(adata, model_class, args, seed, model_dir, verbose, build = NULL,
                       train = TRUE) {
  cv <- .core()
  if (!is.null(seed)) cv$settings$seed <- .as_count(seed, "seed", minimum = 0L)
  cls <- cv[[model_class]]
  model <- if (is.null(build)) {
    .py_call(do.call(cls$setup_anndata, c(list(adata), args$setup)))
    .py_call(do.call(cls, c(list(adata), args$model_args)))
  } else {
    build(cv)
  }
  if (verbose && train) {
    message("Training ", model_class, " on ", .py_value(adata$n_obs), " cells x ",
            .py_value(adata$n_vars), " genes")
  }
  if (train) .py_call(do.call(model$train, args$train_args))
  model_dir <- .or_default(model_dir, .new_model_dir(model_class))
  dir.create(dirname(model_dir), recursive = TRUE, showWarnings = FALSE)
  .py_call(model$save(model_dir, overwrite = TRUE))
  model_dir <- normalizePath(model_dir)
  .cellvi_env$models[[model_dir]] <- model
  if (verbose) message("Model saved in ", model_dir)
  latent <- .py_value(.py_call(model$get_latent_representation()))
  rownames(latent) <- unlist(.py_value(adata$obs_names$tolist()))
  list(model = model, dir = model_dir, latent = latent)
}

#' Load a saved cellvi model
#'
#' Loads (once per session, then from a cache) a model directory written by the verbs or by
#' Python's `model.save()`.
#'
#' @param model_dir The model's directory.
#' @return The Python model (a reticulate handle without automatic conversion: wrap results
#'   in `reticulate::py_to_r()`).
#' @examples
#' \dontrun{
#' model <- load_cellvi_model(Misc(seurat[["scvi"]])$model_dir)
#' reticulate::py_to_r(model$history)
#' }
#' @export
load_cellvi_model <- function(model_dir) {
  if (!is.character(model_dir) || length(model_dir) != 1L || !dir.exists(model_dir)) {
    stop("no saved cellvi model at ", .show(model_dir), call. = FALSE)
  }
  model_dir <- normalizePath(model_dir)
  if (is.null(.cellvi_env$models[[model_dir]])) {
    .cellvi_env$models[[model_dir]] <- .py_call(.core()$load_model(model_dir))
  }
  .cellvi_env$models[[model_dir]]
}

.reduction_model <- function(object, reduction) {
  if (!reduction %in% SeuratObject::Reductions(object)) {
    stop("reduction '", reduction, "' not found; run RunSCVI() first (reductions: ",
         .show_some(SeuratObject::Reductions(object), 20), ")", call. = FALSE)
  }
  misc <- SeuratObject::Misc(object[[reduction]])
  if (is.null(misc$model_dir)) {
    stop("reduction '", reduction, "' was not made by cellvi (no model_dir in its misc)",
         call. = FALSE)
  }
  load_cellvi_model(misc$model_dir)
}

# The object's cells as the model's input: its genes (in order) and obs columns.
.query_anndata <- function(x, model, ...) {
  as_anndata(x, ..., features = .model_genes(model), metadata = .model_obs_columns(model),
             reductions = FALSE)
}

# The model recorded for a SingleCellExperiment's reducedDim, and the object's cells as its
# input (list(model, adata)).
.dimred_model <- function(x, dimred) {
  record <- S4Vectors::metadata(x)$cellvi[[dimred]]
  if (is.null(record)) {
    stop("no cellvi model recorded for reducedDim '", dimred, "'; run runSCVI() first",
         call. = FALSE)
  }
  model <- load_cellvi_model(record$model_dir)
  list(model = model, adata = .query_anndata(x, model, assay.type = record$assay.type))
}

.loadings <- function(model, key) {
  # The decoder's weights as a plain matrix (reticulate 1.28's DataFrame conversion warns).
  loadings <- .py_value(.py_call(model$module$decoder$loadings()$cpu()$numpy()))
  dimnames(loadings) <- list(.model_genes(model), paste0(key, seq_len(ncol(loadings))))
  loadings
}

.settings_record <- function(fit, args) {
  list(model = fit$model_class, model_dir = fit$dir, setup = args$setup,
       model_args = args$model_args, train_args = args$train_args,
       cellvi_version = .py_value(.core()$`__version__`))
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

.model_genes <- function(model) unlist(.py_value(model$var_names))

.model_obs_columns <- function(model) {
  reg <- model$registry
  keys <- list(batch_key = reg$batch_key, labels_key = reg$labels_key,
               categorical_covariate_keys = reg$categorical_covariate_keys,
               continuous_covariate_keys = reg$continuous_covariate_keys)
  columns <- .setup_columns(lapply(keys, function(k) unlist(.py_value(k))))
  if (length(columns)) columns else FALSE
}

# ---- Seurat ---------------------------------------------------------------------------

#' Run scVI on a Seurat object
#'
#' Trains scVI (a variational autoencoder of the raw counts, with batch effects removed) and
#' stores its latent space as a dimensional reduction, as [Seurat::RunPCA()] does. The model
#' is saved to `model_dir` and recorded in the reduction's `misc`, so that later verbs
#' ([NormalizeSCVI()]) and later R sessions can query it without retraining.
#'
#' @param object A Seurat object with raw counts.
#' @param assay Assay holding the counts (default: the default assay); its `counts` slot is used.
#' @param features Genes to model (default: all). Highly variable genes are a good choice,
#'   e.g. `VariableFeatures(object)`.
#' @param batch_key,labels_key Metadata columns of the batch and of cell labels.
#' @param categorical_covariate_keys,continuous_covariate_keys Metadata columns of further
#'   covariates.
#' @param n_latent,n_hidden,n_layers,dropout_rate Network size.
#' @param gene_likelihood `"zinb"`, `"nb"` or `"poisson"`.
#' @param dispersion `"gene"`, `"gene-batch"`, `"gene-label"` or `"gene-cell"`.
#' @param max_epochs Training epochs (`NULL`: `min(round(20000 / cells * 400), 400)`).
#' @param batch_size,train_size,early_stopping,lr Training settings.
#' @param device `"auto"` (a GPU when there is one), `"cpu"`, `"cuda"` or `"mps"`.
#' @param seed Integer seed for reproducible runs (`NULL`: not seeded).
#' @param model_dir Where to save the model (default: a new folder under
#'   `tools::R_user_dir("cellvi", "data")`).
#' @param model_kwargs Named list of further model settings passed to Python as they are
#'   (e.g. `list(use_observed_lib_size = FALSE)`).
#' @param reduction.name,reduction.key Name and key of the new reduction.
#' @param verbose Show progress (a bar during training) and messages.
#' @return The Seurat object with the reduction added.
#' @examples
#' \dontrun{
#' pbmc <- RunSCVI(SeuratObject::pbmc_small, batch_key = "groups", max_epochs = 50)
#' pbmc <- Seurat::RunUMAP(pbmc, reduction = "scvi", dims = 1:10)
#' }
#' @export
RunSCVI <- function(object, assay = NULL, features = NULL, batch_key = NULL, labels_key = NULL,
                    categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                    n_latent = 10, n_hidden = 128, n_layers = 1, dropout_rate = 0.1,
                    gene_likelihood = "zinb", dispersion = "gene", max_epochs = NULL,
                    batch_size = 128, train_size = 0.9, early_stopping = FALSE, lr = 1e-3,
                    device = "auto", seed = NULL, model_dir = NULL, model_kwargs = list(),
                    reduction.name = "scvi", reduction.key = "scVI_", verbose = TRUE) {
  .run_seurat(object, "SCVI", environment())
}

#' Run LDVAE (scVI with a linear decoder) on a Seurat object
#'
#' Like [RunSCVI()], and the decoder's gene loadings are stored as the reduction's feature
#' loadings, so that `Loadings(object[["ldvae"]])` gives each latent dimension's genes.
#'
#' @inheritParams RunSCVI
#' @return The Seurat object with the reduction added.
#' @examples
#' \dontrun{
#' pbmc <- RunLinearSCVI(SeuratObject::pbmc_small, max_epochs = 50)
#' head(Seurat::Loadings(pbmc[["ldvae"]]))
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
  .run_seurat(object, "LinearSCVI", environment())
}

.run_seurat <- function(object, model_class, a) {
  if (!inherits(object, "Seurat")) stop("`object` must be a Seurat object", call. = FALSE)
  assay <- .or_default(a$assay, SeuratObject::DefaultAssay(object))
  args <- .verb_args(a)
  adata <- as_anndata(object, assay = assay, features = a$features,
                      metadata = args$columns, reductions = FALSE)
  fit <- .fit_model(adata, model_class, args, a$seed, a$model_dir, a$verbose)
  fit$model_class <- model_class
  embeddings <- fit$latent[colnames(object), , drop = FALSE]
  colnames(embeddings) <- paste0(a$reduction.key, seq_len(ncol(embeddings)))
  loadings <- if (model_class == "LinearSCVI") .loadings(fit$model, a$reduction.key) else new("matrix")
  object[[a$reduction.name]] <- SeuratObject::CreateDimReducObject(
    embeddings = embeddings, loadings = loadings, key = a$reduction.key, assay = assay,
    misc = .settings_record(fit, args))
  object
}

#' scVI-normalized expression into a Seurat assay
#'
#' Decodes each cell's latent state into expression with technical noise (library size,
#' dropout and, with `transform_batch`, batch) removed, and stores it as a new assay.
#'
#' @param object A Seurat object on which [RunSCVI()] or [RunLinearSCVI()] has run.
#' @param reduction The reduction whose model to use.
#' @param features Genes to return (default: all genes of the model). Only these are computed
#'   and stored.
#' @param assay.name Name of the new assay.
#' @param library_size Total per cell the expression is scaled to.
#' @param n_samples Posterior samples averaged per cell.
#' @param transform_batch Batch (or batches, averaged) to generate every cell in; `NULL`:
#'   each cell's own.
#' @param verbose Show messages.
#' @return The Seurat object with the new assay (normalized values in its `data` slot).
#' @examples
#' \dontrun{
#' pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 50)
#' pbmc <- NormalizeSCVI(pbmc, features = c("CD3E", "MS4A1"))
#' }
#' @export
NormalizeSCVI <- function(object, reduction = "scvi", features = NULL, assay.name = "SCVI",
                          library_size = 1e4, n_samples = 1, transform_batch = NULL,
                          verbose = TRUE) {
  model <- .reduction_model(object, reduction)
  adata <- .query_anndata(object, model, assay = SeuratObject::DefaultAssay(object[[reduction]]))
  expr <- .normalized_expression(model, adata, features, library_size, n_samples,
                                 transform_batch)
  dimnames(expr) <- list(.or_default(features, .model_genes(model)), colnames(object))
  object[[assay.name]] <- SeuratObject::CreateAssayObject(data = expr)
  if (verbose) message("Added assay '", assay.name, "' (", nrow(expr), " genes)")
  object
}

# ---- SingleCellExperiment ----------------------------------------------------------------

#' Run scVI on a SingleCellExperiment
#'
#' Trains scVI and stores its latent space with `reducedDim(x, name)`, as
#' `scater::runPCA()` does. The model is saved to `model_dir` and recorded in
#' `metadata(x)$cellvi[[name]]`, so [normalizeSCVI()] and later sessions can query it.
#'
#' @param x A SingleCellExperiment with raw counts.
#' @param assay.type Assay holding the counts.
#' @param name Name of the new reducedDim.
#' @inheritParams RunSCVI
#' @return `x` with the reducedDim added.
#' @examples
#' \dontrun{
#' sce <- runSCVI(sce, batch_key = "sample_id", max_epochs = 50)
#' head(SingleCellExperiment::reducedDim(sce, "scVI"))
#' }
#' @export
runSCVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                    labels_key = NULL, categorical_covariate_keys = NULL,
                    continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                    n_layers = 1, dropout_rate = 0.1, gene_likelihood = "zinb",
                    dispersion = "gene", max_epochs = NULL, batch_size = 128, train_size = 0.9,
                    early_stopping = FALSE, lr = 1e-3, device = "auto", seed = NULL,
                    model_dir = NULL, model_kwargs = list(), name = "scVI", verbose = TRUE) {
  .run_sce(x, "SCVI", environment())
}

#' Run LDVAE (scVI with a linear decoder) on a SingleCellExperiment
#'
#' Like [runSCVI()]; the gene loadings are attached to the reducedDim as its `"rotation"`
#' attribute, as `scater::runPCA()` does.
#'
#' @inheritParams runSCVI
#' @return `x` with the reducedDim added.
#' @examples
#' \dontrun{
#' sce <- runLinearSCVI(sce, max_epochs = 50)
#' head(attr(SingleCellExperiment::reducedDim(sce, "LDVAE"), "rotation"))
#' }
#' @export
runLinearSCVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                          labels_key = NULL, categorical_covariate_keys = NULL,
                          continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                          n_layers = 1, dropout_rate = 0.1, gene_likelihood = "nb",
                          dispersion = "gene", max_epochs = NULL, batch_size = 128,
                          train_size = 0.9, early_stopping = FALSE, lr = 1e-3, device = "auto",
                          seed = NULL, model_dir = NULL, model_kwargs = list(), name = "LDVAE",
                          verbose = TRUE) {
  .run_sce(x, "LinearSCVI", environment())
}

.run_sce <- function(x, model_class, a) {
  if (!methods::is(x, "SingleCellExperiment")) {
    stop("`x` must be a SingleCellExperiment", call. = FALSE)
  }
  args <- .verb_args(a)
  adata <- as_anndata(x, assay.type = a$assay.type, features = a$features,
                      metadata = args$columns, reductions = FALSE)
  fit <- .fit_model(adata, model_class, args, a$seed, a$model_dir, a$verbose)
  fit$model_class <- model_class
  latent <- fit$latent[colnames(x), , drop = FALSE]
  colnames(latent) <- paste0(a$name, "_", seq_len(ncol(latent)))
  if (model_class == "LinearSCVI") attr(latent, "rotation") <- .loadings(fit$model, paste0(a$name, "_"))
  SingleCellExperiment::reducedDim(x, a$name) <- latent
  record <- .settings_record(fit, args)
  record$assay.type <- a$assay.type
  meta <- S4Vectors::metadata(x)
  meta$cellvi[[a$name]] <- record
  S4Vectors::metadata(x) <- meta
  x
}

#' scVI-normalized expression into a SingleCellExperiment assay
#'
#' With all genes of the model the result is a new assay; with chosen `features` it is an
#' alternative experiment (`altExp(x, name)`) holding those genes only.
#'
#' @param x A SingleCellExperiment on which [runSCVI()] or [runLinearSCVI()] has run.
#' @param dimred The reducedDim whose model to use.
#' @param name Name of the new assay (or altExp).
#' @inheritParams NormalizeSCVI
#' @return `x` with the normalized expression added.
#' @examples
#' \dontrun{
#' sce <- normalizeSCVI(runSCVI(sce, max_epochs = 50), features = c("CD3E", "MS4A1"))
#' SummarizedExperiment::assay(SingleCellExperiment::altExp(sce, "scVI_normalized"))
#' }
#' @export
normalizeSCVI <- function(x, dimred = "scVI", features = NULL, name = "scVI_normalized",
                          library_size = 1e4, n_samples = 1, transform_batch = NULL,
                          verbose = TRUE) {
  fit <- .dimred_model(x, dimred)
  model <- fit$model
  expr <- .normalized_expression(model, fit$adata, features, library_size, n_samples,
                                 transform_batch)
  genes <- .or_default(features, .model_genes(model))
  dimnames(expr) <- list(genes, colnames(x))
  if (is.null(features) && identical(genes, rownames(x))) {
    SummarizedExperiment::assay(x, name) <- expr
  } else {
    SingleCellExperiment::altExp(x, name) <- SummarizedExperiment::SummarizedExperiment(
      assays = list(normalized = expr))
  }
  if (verbose) message("Added '", name, "' (", nrow(expr), " genes)")
  x
}
