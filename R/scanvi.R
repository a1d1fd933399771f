# scANVI (RunSCANVI for Seurat, runSCANVI for SingleCellExperiment) and reference mapping
# (MapQuerySCVI, for both). Training and saving are the scVI verbs' (scvi.R); what is added
# here is the label write-back, shared by annotation and mapping.

# ---- shared: predictions -----------------------------------------------------------------

# Per-label probabilities of the model's own cells: cells x labels, rownames = cells.
.label_probabilities <- function(model) {
  probs <- .py_call(model$predict(soft = TRUE))
  out <- .py_value(probs$to_numpy())
  dimnames(out) <- list(unlist(.py_value(probs$index$tolist())),
                        unlist(.py_value(probs$columns$tolist())))
  out
}

# The label columns written into an object's cell metadata, for cells in `cells` order:
# predicted.<key> (a factor), predicted.<key>.score (its probability) and, with
# `probabilities`, the full matrix (cells x labels) as prediction.score.<key>.
.prediction_columns <- function(probs, cells, labels_key, probabilities) {
  probs <- probs[cells, , drop = FALSE]
  best <- max.col(probs, ties.method = "first")
  columns <- list(factor(colnames(probs)[best], levels = colnames(probs)),
                  probs[cbind(seq_len(nrow(probs)), best)])
  names(columns) <- paste0("predicted.", labels_key, c("", ".score"))
  list(columns = columns, matrix = if (probabilities) probs,
       matrix_name = paste0("prediction.score.", labels_key))
}

.write_predictions_seurat <- function(object, predictions) {
  for (name in names(predictions$columns)) object[[name]] <- predictions$columns[[name]]
  if (!is.null(predictions$matrix)) {
    assay <- SeuratObject::CreateAssayObject(data = t(predictions$matrix))
    # Keys are alphanumeric plus "_"; Seurat would otherwise warn and make one.
    SeuratObject::Key(assay) <- paste0(gsub("[^[:alnum:]]", "", predictions$matrix_name), "_")
    object[[predictions$matrix_name]] <- assay
  }
  object
}

.write_predictions_sce <- function(x, predictions) {
  for (name in names(predictions$columns)) {
    SummarizedExperiment::colData(x)[[name]] <- predictions$columns[[name]]
  }
  if (!is.null(predictions$matrix)) {
    SummarizedExperiment::colData(x)[[predictions$matrix_name]] <- predictions$matrix
  }
  x
}

.scanvi_args <- function(a) {
  if (!is.character(a$labels_key) || length(a$labels_key) != 1L || is.na(a$labels_key)) {
    stop("`labels_key` must be the name of the metadata column of cell labels, not ",
         .show(a$labels_key), call. = FALSE)
  }
  if (length(a$unlabeled_category) != 1L || is.na(a$unlabeled_category)) {
    stop("`unlabeled_category` must be one value (the label of unannotated cells), not ",
         .show(a$unlabeled_category), call. = FALSE)
  }
  args <- .verb_args(a)
  args$setup$unlabeled_category <- as.character(a$unlabeled_category)
  args$model_args$classification_ratio <- .as_number(a$classification_ratio,
                                                     "classification_ratio", 0)
  args$probabilities <- .as_flag(a$probabilities, "probabilities")
  args
}

# Trains scANVI on `adata`, from scratch or from the scVI model `scvi_model`; returns the fit
# and its label probabilities.
.fit_scanvi <- function(adata, args, a, scvi_model) {
  build <- NULL
  if (!is.null(scvi_model)) {
    build <- function(cv) {
      .py_call(cv$SCANVI$from_scvi_model(
        scvi_model, args$setup$unlabeled_category, labels_key = args$setup$labels_key,
        adata = adata, classification_ratio = args$model_args$classification_ratio))
    }
  }
  fit <- .fit_model(adata, "SCANVI", args, a$seed, a$model_dir, a$verbose, build = build)
  fit$model_class <- "SCANVI"
  fit$probabilities <- .label_probabilities(fit$model)
  fit
}

# ---- scANVI ------------------------------------------------------------------------------

#' Annotate cells with scANVI on a Seurat object
#'
#' Trains scANVI, a semi-supervised scVI: from the cells whose label is known it learns to
#' label the others, in a batch-corrected latent space. The latent space is stored as a
#' reduction and the predictions as metadata, named as Seurat's `TransferData()` names them:
#' `predicted.<labels_key>` (the most probable label) and `predicted.<labels_key>.score` (its
#' probability); with `probabilities = TRUE` every label's probability is stored as the
#' assay `prediction.score.<labels_key>`. The model is saved and recorded in the reduction's
#' `misc`, like [RunSCVI()]'s, so every scVI verb works on it.
#'
#' @param object A Seurat object with raw counts.
#' @param labels_key Metadata column of the cell labels; cells to be annotated carry
#'   `unlabeled_category` there.
#' @param unlabeled_category The label of unannotated cells.
#' @param scvi_reduction A reduction made by [RunSCVI()] on the same object: scANVI starts
#'   from that model (the usual workflow; it then needs few epochs), with its genes, batch,
#'   covariates and network sizes (`assay`, `features`, `batch_key`, the covariate keys,
#'   `n_latent`, `n_hidden`, `n_layers`, `dropout_rate`, `gene_likelihood`, `dispersion` and
#'   `model_kwargs` are then the scVI model's). `NULL` trains from scratch.
#' @param classification_ratio Weight of the labelled cells' classification loss.
#' @param probabilities Also store every label's probability.
#' @inheritParams RunSCVI
#' @return The Seurat object with the reduction and the prediction columns added.
#' @examples
#' \dontrun{
#' pbmc <- SeuratObject::pbmc_small
#' pbmc$labels <- ifelse(runif(ncol(pbmc)) < 0.3, as.character(pbmc$RNA_snn_res.1), "Unknown")
#' pbmc <- RunSCVI(pbmc, batch_key = "groups", max_epochs = 50)
#' pbmc <- RunSCANVI(pbmc, labels_key = "labels", scvi_reduction = "scvi")
#' table(pbmc$predicted.labels, pbmc$RNA_snn_res.1)
#' }
#' @export
RunSCANVI <- function(object, labels_key, unlabeled_category = "Unknown", batch_key = NULL,
                      assay = NULL, features = NULL, scvi_reduction = NULL,
                      categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                      n_latent = 10, n_hidden = 128, n_layers = 1, dropout_rate = 0.1,
                      gene_likelihood = "zinb", dispersion = "gene", classification_ratio = 50,
                      max_epochs = NULL, batch_size = 128, train_size = 0.9,
                      early_stopping = FALSE, lr = 1e-3, device = "auto", seed = NULL,
                      model_dir = NULL, model_kwargs = list(), probabilities = FALSE,
                      reduction.name = "scanvi", reduction.key = "scANVI_", verbose = TRUE) {
  if (!inherits(object, "Seurat")) stop("`object` must be a Seurat object", call. = FALSE)
  args <- .scanvi_args(environment())
  scvi_model <- NULL
  if (!is.null(scvi_reduction)) {
    scvi_model <- .reduction_model(object, scvi_reduction)
    assay <- .or_default(assay, SeuratObject::DefaultAssay(object[[scvi_reduction]]))
    features <- .model_genes(scvi_model)
    args$columns <- unique(c(setdiff(.model_obs_columns(scvi_model), FALSE), labels_key))
  }
  assay <- .or_default(assay, SeuratObject::DefaultAssay(object))
  adata <- as_anndata(object, assay = assay, features = features, metadata = args$columns,
                      reductions = FALSE)
  fit <- .fit_scanvi(adata, args, environment(), scvi_model)
  embeddings <- fit$latent[colnames(object), , drop = FALSE]
  colnames(embeddings) <- paste0(reduction.key, seq_len(ncol(embeddings)))
  predictions <- .prediction_columns(fit$probabilities, colnames(object), labels_key, probabilities)
  object[[reduction.name]] <- SeuratObject::CreateDimReducObject(
    embeddings = embeddings, key = reduction.key, assay = assay,
    misc = .settings_record(fit, args))
  .write_predictions_seurat(object, predictions)
}

#' Annotate cells with scANVI on a SingleCellExperiment
#'
#' As [RunSCANVI()]: the latent space goes to `reducedDim(x, name)`, the predictions to
#' `colData(x)` (`predicted.<labels_key>`, `predicted.<labels_key>.score` and, with
#' `probabilities = TRUE`, the matrix column `prediction.score.<labels_key>`).
#'
#' @param x A SingleCellExperiment with raw counts.
#' @param scvi_dimred A reducedDim made by [runSCVI()] on `x`: scANVI starts from that model,
#'   with its genes, covariates and network settings (as `scvi_reduction` of [RunSCANVI()]).
#' @inheritParams RunSCANVI
#' @inheritParams runSCVI
#' @return `x` with the reducedDim and the prediction columns added.
#' @examples
#' \dontrun{
#' sce$labels <- ifelse(runif(ncol(sce)) < 0.1, as.character(sce$cell_type), "Unknown")
#' sce <- runSCANVI(sce, labels_key = "labels", batch_key = "sample_id", max_epochs = 50)
#' table(sce$predicted.labels)
#' }
#' @export
runSCANVI <- function(x, labels_key, unlabeled_category = "Unknown", batch_key = NULL,
                      assay.type = "counts", features = NULL, scvi_dimred = NULL,
                      categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                      n_latent = 10, n_hidden = 128, n_layers = 1, dropout_rate = 0.1,
                      gene_likelihood = "zinb", dispersion = "gene", classification_ratio = 50,
                      max_epochs = NULL, batch_size = 128, train_size = 0.9,
                      early_stopping = FALSE, lr = 1e-3, device = "auto", seed = NULL,
                      model_dir = NULL, model_kwargs = list(), probabilities = FALSE,
                      name = "scANVI", verbose = TRUE) {
  if (!methods::is(x, "SingleCellExperiment")) {
    stop("`x` must be a SingleCellExperiment", call. = FALSE)
  }
  args <- .scanvi_args(environment())
  scvi_model <- NULL
  if (!is.null(scvi_dimred)) {
    scvi_fit <- .dimred_model(x, scvi_dimred)
    scvi_model <- scvi_fit$model
    assay.type <- S4Vectors::metadata(x)$cellvi[[scvi_dimred]]$assay.type
    features <- .model_genes(scvi_model)
    args$columns <- unique(c(setdiff(.model_obs_columns(scvi_model), FALSE), labels_key))
  }
  adata <- as_anndata(x, assay.type = assay.type, features = features, metadata = args$columns,
                      reductions = FALSE)
  fit <- .fit_scanvi(adata, args, environment(), scvi_model)
  latent <- fit$latent[colnames(x), , drop = FALSE]
  colnames(latent) <- paste0(name, "_", seq_len(ncol(latent)))
  predictions <- .prediction_columns(fit$probabilities, colnames(x), labels_key, probabilities)
  record <- .settings_record(fit, args)
  record$assay.type <- assay.type
  SingleCellExperiment::reducedDim(x, name) <- latent
  meta <- S4Vectors::metadata(x)
  meta$cellvi[[name]] <- record
  S4Vectors::metadata(x) <- meta
  .write_predictions_sce(x, predictions)
}

# ---- reference mapping -------------------------------------------------------------------

# The directory of a reference model given as a directory, or as a Seurat object or
# SingleCellExperiment that a cellvi verb ran on (its reduction / reducedDim `reduction`).
.reference_dir <- function(reference, reduction) {
  if (is.character(reference) && length(reference) == 1L) {
    if (!dir.exists(reference)) stop("no saved cellvi model at ", .show(reference), call. = FALSE)
    return(normalizePath(reference))
  }
  if (inherits(reference, "Seurat")) {
    candidates <- .or_default(reduction, c("scanvi", "scvi", "ldvae"))
    dirs <- lapply(intersect(candidates, SeuratObject::Reductions(reference)),
                   function(r) SeuratObject::Misc(reference[[r]])$model_dir)
  } else if (methods::is(reference, "SingleCellExperiment")) {
    candidates <- .or_default(reduction, c("scANVI", "scVI", "LDVAE"))
    records <- S4Vectors::metadata(reference)$cellvi
    dirs <- lapply(intersect(candidates, names(records)), function(r) records[[r]]$model_dir)
  } else {
    stop("`reference_model` must be a model directory, or a Seurat object or ",
         "SingleCellExperiment on which a cellvi verb ran", call. = FALSE)
  }
  dirs <- Filter(Negate(is.null), dirs)
  if (!length(dirs)) {
    stop("no cellvi model found on the reference object (looked for ",
         .show_some(candidates), "); pass the model directory or `reference.reduction`",
         call. = FALSE)
  }
  dirs[[1]]
}

#' Map a query data set onto a trained reference model
#'
#' Architecture surgery as in scArches: the reference model (scVI, LDVAE or scANVI) gets
#' weights for the query's batches, only those are trained, and the query cells land in the
#' reference's latent space, which does not move. With a scANVI reference the reference's
#' labels are transferred: `predicted.<labels_key>` and `predicted.<labels_key>.score` (and,
#' with `probabilities = TRUE`, every label's probability), as with [RunSCANVI()]. The query
#' may have other genes than the reference: missing ones are filled with zeros (with a
#' warning), and too small an overlap is refused. Named `MapQuerySCVI` because Seurat already
#' exports `MapQuery`.
#'
#' @param query A Seurat object or SingleCellExperiment with raw counts.
#' @param reference_model The reference: a saved model directory (from R or Python), or a
#'   Seurat object / SingleCellExperiment on which [RunSCVI()], [RunSCANVI()] (or their SCE
#'   twins) ran.
#' @param reference.reduction The reference object's reduction (reducedDim) holding the model
#'   (default: the first of scanvi, scvi, ldvae found).
#' @param query_batch_key Metadata column of the query's batches (default: the reference's
#'   batch column name). Query batches must have names the reference does not use.
#' @param assay,assay.type Where the query's counts are (Seurat assay; SCE assay).
#' @param freeze_dropout Switch dropout off while training on the query.
#' @param unfrozen Train every weight on the query (the reference latent then moves).
#' @param reduction.name Name of the query's new reduction / reducedDim (default: that of the
#'   model class, e.g. "scanvi" / "scANVI").
#' @param reduction.key Key of the new Seurat reduction.
#' @inheritParams RunSCANVI
#' @return `query` with the latent space and, for a scANVI reference, the transferred labels.
#' @examples
#' \dontrun{
#' reference <- RunSCANVI(reference, labels_key = "cell_type", batch_key = "donor")
#' query <- MapQuerySCVI(query, reference, max_epochs = 100)
#' table(query$predicted.cell_type)
#' }
#' @export
MapQuerySCVI <- function(query, reference_model, reference.reduction = NULL,
                         query_batch_key = NULL, assay = NULL, assay.type = "counts",
                         max_epochs = NULL, batch_size = 128, train_size = 0.9, lr = 1e-3,
                         freeze_dropout = FALSE, unfrozen = FALSE, device = "auto", seed = NULL,
                         model_dir = NULL, probabilities = FALSE, reduction.name = NULL,
                         reduction.key = NULL, verbose = TRUE) {
  is_seurat <- inherits(query, "Seurat")
  if (!is_seurat && !methods::is(query, "SingleCellExperiment")) {
    stop("`query` must be a Seurat object or a SingleCellExperiment", call. = FALSE)
  }
  train_args <- .train_args(max_epochs, batch_size, train_size, FALSE, lr, device, verbose)
  probabilities <- .as_flag(probabilities, "probabilities")
  reference_dir <- .reference_dir(reference_model, reference.reduction)
  reference <- load_cellvi_model(reference_dir)
  model_class <- .py_value(reference$`__class__`$`__name__`)
  setup <- lapply(list(batch_key = reference$registry$batch_key,
                       labels_key = reference$registry$labels_key), function(k) .py_value(k))
  # The query's cell metadata the model reads: the batch (under the reference's column name),
  # covariates, and the labels if the query has them.
  meta_names <- if (is_seurat) colnames(query[[]]) else colnames(SummarizedExperiment::colData(query))
  columns <- setdiff(.model_obs_columns(reference), FALSE)
  batch_column <- .or_default(query_batch_key, setup$batch_key)
  if (!is.null(setup$batch_key)) {
    if (!batch_column %in% meta_names) {
      stop("the query has no metadata column '", batch_column, "' (the reference's batch ",
           "column); pass query_batch_key = the query's batch column", call. = FALSE)
    }
    columns <- unique(c(setdiff(columns, setup$batch_key), batch_column))
  }
  columns <- columns[columns %in% meta_names]  # a query need not carry the labels
  adata <- if (is_seurat) {
    as_anndata(query, assay = assay, metadata = if (length(columns)) columns else FALSE,
               reductions = FALSE)
  } else {
    as_anndata(query, assay.type = assay.type, metadata = if (length(columns)) columns else FALSE,
               reductions = FALSE)
  }
  if (!is.null(setup$batch_key) && batch_column != setup$batch_key) {
    obs <- adata$obs
    obs$`__setitem__`(setup$batch_key, obs$`__getitem__`(batch_column))
  }
  cells <- colnames(query)
  cls <- .core()[[model_class]]
  adata <- .py_call(cls$prepare_query_anndata(adata, reference))  # warns of missing genes
  unfrozen <- .as_flag(unfrozen, "unfrozen")
  # Without batches (or other categories) new to the reference there is nothing to learn:
  # the query is encoded by the reference network as it is.
  grows <- unfrozen || !is.null(setup$batch_key) ||
    length(unlist(.py_value(reference$registry$categorical_covariate_keys))) > 0
  if (!grows && verbose) {
    message("The reference has no batch column: the query is encoded as it is, without training")
  }
  build <- function(cv) {
    .py_call(cls$load_query_data(adata, reference,
                                 freeze_dropout = .as_flag(freeze_dropout, "freeze_dropout"),
                                 unfrozen = unfrozen))
  }
  fit <- .fit_model(adata, model_class, list(train_args = train_args), seed, model_dir, verbose,
                    build = build, train = grows)
  fit$model_class <- model_class
  record <- .settings_record(fit, list(setup = setup, train_args = train_args))
  record$reference_dir <- reference_dir
  defaults <- list(SCVI = c("scvi", "scVI"), LinearSCVI = c("ldvae", "LDVAE"),
                   SCANVI = c("scanvi", "scANVI"))[[model_class]]
  latent <- fit$latent[cells, , drop = FALSE]
  predictions <- if (model_class == "SCANVI") {
    .prediction_columns(.label_probabilities(fit$model), cells, setup$labels_key, probabilities)
  }
  if (is_seurat) {
    reduction.name <- .or_default(reduction.name, defaults[1])
    reduction.key <- .or_default(reduction.key, paste0(defaults[2], "_"))
    colnames(latent) <- paste0(reduction.key, seq_len(ncol(latent)))
    query[[reduction.name]] <- SeuratObject::CreateDimReducObject(
      embeddings = latent, key = reduction.key,
      assay = .or_default(assay, SeuratObject::DefaultAssay(query)), misc = record)
    if (!is.null(predictions)) query <- .write_predictions_seurat(query, predictions)
  } else {
    reduction.name <- .or_default(reduction.name, defaults[2])
    colnames(latent) <- paste0(reduction.name, "_", seq_len(ncol(latent)))
    record$assay.type <- assay.type
    SingleCellExperiment::reducedDim(query, reduction.name) <- latent
    meta <- S4Vectors::metadata(query)
    meta$cellvi[[reduction.name]] <- record
    S4Vectors::metadata(query) <- meta
    if (!is.null(predictions)) query <- .write_predictions_sce(query, predictions)
  }
  if (verbose && is.null(predictions)) {
    message("The reference is a ", model_class, " model: no labels to transfer (a scANVI ",
            "reference transfers its labels)")
  }
  query
}
