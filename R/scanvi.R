# scANVI (RunSCANVI / TuneSCANVI for Seurat, runSCANVI / tuneSCANVI for SingleCellExperiment)
# and reference mapping (MapQuerySCVI, for both), declared as verbs on the one path of
# aaa-verbs.R. What is added
# here is the label output (shared by annotation and mapping) and the mapping plan.

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

# The predictions of a model that classifies (scANVI) for the object's cells; NULL for others.
.out_predictions <- function(model, adata, a, plan, cells) {
  if (!reticulate::py_has_attr(model, "predict")) return(NULL)
  labels_key <- .py_value(model$registry$labels_key)
  predictions <- .prediction_columns(.label_probabilities(model), cells, labels_key,
                                     isTRUE(a$probabilities))
  matrices <- list()
  if (!is.null(predictions$matrix)) matrices[[predictions$matrix_name]] <- predictions$matrix
  list(columns = predictions$columns, cell_matrices = matrices)
}

# labels_key is required: the metadata column of the labels.
.arg_labels_key <- structure(function(x, name) {
  if (!is.character(x) || length(x) != 1L || is.na(x)) {
    stop("`labels_key` must be the name of the metadata column of cell labels, not ",
         .show(x), call. = FALSE)
  }
  x
}, obs_column = TRUE)

.arg_unlabeled <- function(x, name) {
  if (length(x) != 1L || is.na(x)) {
    stop("`unlabeled_category` must be one value (the label of unannotated cells), not ",
         .show(x), call. = FALSE)
  }
  as.character(x)
}

# scANVI from scratch, or (with `scvi_reduction` / `scvi_dimred`) from the object's scVI model,
# whose genes, counts and covariates it then takes.
.scanvi_from_scvi <- function(plan, eco, object, a, args) {
  start <- a[[if (eco$name == "seurat") "scvi_reduction" else "scvi_dimred"]]
  if (is.null(start)) return(plan)
  found <- .recorded_model(eco, object, start)
  scvi_model <- found$model
  if (eco$name == "seurat") {
    plan$input$counts <- .or_default(a$assay, found$input$counts)
  } else {
    plan$input <- found$input
  }
  plan$features <- .model_genes(scvi_model)
  plan$columns <- unique(c(setdiff(.model_obs_columns(scvi_model), FALSE), args$setup$labels_key))
  plan$build <- function(cv, adata) {
    .py_call(cv$SCANVI$from_scvi_model(
      scvi_model, args$setup$unlabeled_category, labels_key = args$setup$labels_key,
      adata = adata, classification_ratio = args$model_args$classification_ratio))
  }
  plan
}

.scanvi_verb <- .verb(
  "SCANVI",
  setup = c(list(labels_key = .arg_labels_key, unlabeled_category = .arg_unlabeled),
            .covariate_setup[c("batch_key", "categorical_covariate_keys",
                               "continuous_covariate_keys")]),
  model_args = c(.vae_args, list(classification_ratio = .arg_number(0))),
  train_args = .train_spec, options = list(probabilities = .arg_flag),
  plan = .scanvi_from_scvi, outputs = list(.out_latent, .out_predictions))

# Hyperparameter search (autotune.R); it trains scANVI from scratch (no `scvi_reduction`).
.tune_scanvi_verb <- .tune_verb(.scanvi_verb)

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
#' @param labels_key Metadata column of the cell labels; cells to be annotated carry
#'   `unlabeled_category` there.
#' @param unlabeled_category The label of unannotated cells.
#' @param scvi_reduction A reduction made by [RunSCVI()] on the same object: scANVI starts
#'   from that model (the usual workflow; it then needs few epochs), with its genes, batch,
#'   covariates and network sizes (`assay`, `features`, `batch_key`, the covariate keys,
#'   `n_latent`, `n_hidden`, `n_layers`, `dropout_rate`, `gene_likelihood`, `dispersion` and
#'   `model_kwargs` are then the scVI model's). `NULL` trains from scratch.
#' @param classification_ratio Weight of the labelled cells' classification loss.
#' @param max_epochs Training epochs (`NULL`: from scratch,
#'   `min(round(20000 / cells * 400), 400)`; with `scvi_reduction`, whose scVI model has trained
#'   already, a third of that, rounded and kept between 2 and 10, as scvi-tools does).
#' @param probabilities Also store every label's probability: in a Seurat object as an assay
#'   `prediction.score.<labels_key>` (labels x cells; a "_" in a label becomes "-", as
#'   Seurat requires), in a SingleCellExperiment as a matrix column of `colData`.
#' @inheritParams cellvi-params
#' @return The Seurat object with the reduction and the prediction columns added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- SeuratObject::pbmc_small
#'   set.seed(1)
#'   pbmc$labels <- ifelse(runif(ncol(pbmc)) < 0.3, as.character(pbmc$RNA_snn_res.1), "Unknown")
#'   pbmc <- RunSCVI(pbmc, batch_key = "groups", max_epochs = 50, seed = 0)
#'   pbmc <- RunSCANVI(pbmc, labels_key = "labels", scvi_reduction = "scvi", max_epochs = 10)
#'   table(pbmc$predicted.labels, pbmc$RNA_snn_res.1)
#' }
#' }
#' @export
RunSCANVI <- function(object, labels_key, unlabeled_category = "Unknown", batch_key = NULL,
                      assay = NULL, features = NULL, scvi_reduction = NULL,
                      categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                      n_latent = 10, n_hidden = 128, n_layers = 1, dropout_rate = 0.1,
                      gene_likelihood = "zinb", dispersion = "gene", classification_ratio = 50,
                      max_epochs = NULL, batch_size = 128, train_size = 0.9,
                      early_stopping = FALSE, lr = 1e-3, device = "auto", seed = NULL,
                      model_dir = NULL, model_kwargs = list(),
                      plan_kwargs = list(), probabilities = FALSE,
                      reduction.name = "scanvi", reduction.key = "scANVI_", verbose = TRUE) {
  .run_verb(.seurat, object, .scanvi_verb, environment())
}

#' Annotate cells with scANVI on a SingleCellExperiment
#'
#' As [RunSCANVI()]: the latent space goes to `reducedDim(x, name)`, the predictions to
#' `colData(x)` (`predicted.<labels_key>`, `predicted.<labels_key>.score` and, with
#' `probabilities = TRUE`, the matrix column `prediction.score.<labels_key>`).
#'
#' @param scvi_dimred A reducedDim made by [runSCVI()] on `x`: scANVI starts from that model,
#'   with its genes, covariates and network settings (as `scvi_reduction` of [RunSCANVI()]).
#' @param max_epochs Training epochs (`NULL`: from scratch,
#'   `min(round(20000 / cells * 400), 400)`; with `scvi_dimred`, whose scVI model has trained
#'   already, a third of that, rounded and kept between 2 and 10, as scvi-tools does).
#' @inheritParams RunSCANVI
#' @inheritParams runSCVI
#' @inheritParams cellvi-params
#' @return `x` with the reducedDim and the prediction columns added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   set.seed(1)
#'   sce$labels <- ifelse(runif(ncol(sce)) < 0.3, as.character(sce$RNA_snn_res.1), "Unknown")
#'   sce <- runSCANVI(sce, labels_key = "labels", batch_key = "groups", max_epochs = 50)
#'   table(sce$predicted.labels)
#' }
#' }
#' @rdname runSCANVI-sce
#' @export
runSCANVI <- function(x, labels_key, unlabeled_category = "Unknown", batch_key = NULL,
                      assay.type = "counts", features = NULL, scvi_dimred = NULL,
                      categorical_covariate_keys = NULL, continuous_covariate_keys = NULL,
                      n_latent = 10, n_hidden = 128, n_layers = 1, dropout_rate = 0.1,
                      gene_likelihood = "zinb", dispersion = "gene", classification_ratio = 50,
                      max_epochs = NULL, batch_size = 128, train_size = 0.9,
                      early_stopping = FALSE, lr = 1e-3, device = "auto", seed = NULL,
                      model_dir = NULL, model_kwargs = list(),
                      plan_kwargs = list(), probabilities = FALSE,
                      name = "scANVI", verbose = TRUE) {
  .run_verb(.sce, x, .scanvi_verb, environment())
}

#' Hyperparameter search for scANVI on a Seurat object
#'
#' As [TuneSCVI()], for scANVI ([RunSCANVI()]) trained from scratch: searches its default
#' space (`lr`, `n_layers`, `n_hidden`, `n_latent`, `dropout_rate`, `gene_likelihood`) or
#' `search_space`, every trial scored on the same held-out cells, and returns the trials, or
#' with `fit_best = TRUE` the object with the best settings' reduction and label predictions,
#' as [RunSCANVI()] adds them.
#'
#' @inheritParams TuneSCVI
#' @inheritParams RunSCANVI
#' @return A data.frame of trials (see [TuneSCVI()]), or with `fit_best = TRUE` the Seurat
#'   object with the reduction (search in its `misc$autotune`) and the prediction columns.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- SeuratObject::pbmc_small
#'   set.seed(1)
#'   pbmc$labels <- ifelse(runif(ncol(pbmc)) < 0.5, as.character(pbmc$RNA_snn_res.1), "Unknown")
#'   space <- list(model_params = list(n_latent = tune_choice(c(5, 10))))
#'   trials <- TuneSCANVI(pbmc, labels_key = "labels", search_space = space, num_samples = 3,
#'                        max_epochs = 5, save_dir = tempfile("tune"), verbose = FALSE)
#'   trials[, c("trial", "state", "metric", "n_latent")]
#' }
#' }
#' @export
TuneSCANVI <- function(object, labels_key, unlabeled_category = "Unknown", batch_key = NULL,
                       assay = NULL, features = NULL, categorical_covariate_keys = NULL,
                       continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                       n_layers = 1, dropout_rate = 0.1, gene_likelihood = "zinb",
                       dispersion = "gene", classification_ratio = 50, search_space = NULL,
                       metric = "marginal_ll", num_samples = 20, max_epochs = NULL,
                       test_size = 0.25, scheduler = "asha", n_jobs = 1, storage = NULL,
                       study_name = NULL, save_dir = NULL, fit_best = FALSE,
                       batch_size = 128, device = "auto", seed = 0, model_dir = NULL,
                       model_kwargs = list(), probabilities = FALSE,
                       reduction.name = "scanvi", reduction.key = "scANVI_", verbose = TRUE) {
  .run_verb(.seurat, object, .tune_scanvi_verb, environment())
}

#' Hyperparameter search for scANVI on a SingleCellExperiment
#'
#' As [TuneSCANVI()], for a SingleCellExperiment: returns the trials table, or with
#' `fit_best = TRUE` the object with the best settings' latent space as a reducedDim and the
#' predictions in `colData(x)` (as [runSCANVI()]), the search recorded in
#' `metadata(x)$cellvi[[name]]$autotune`.
#'
#' @inheritParams TuneSCANVI
#' @inheritParams runSCANVI
#' @return A data.frame of trials, or `x` with the reducedDim and prediction columns added
#'   (`fit_best = TRUE`).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   set.seed(1)
#'   sce$labels <- ifelse(runif(ncol(sce)) < 0.5, as.character(sce$RNA_snn_res.1), "Unknown")
#'   trials <- tuneSCANVI(sce, labels_key = "labels", search_space = list(train_params = list(
#'     lr = tune_loguniform(1e-3, 1e-2))), num_samples = 3, max_epochs = 5,
#'     save_dir = tempfile("tune"), verbose = FALSE)
#'   attr(trials, "best_params")
#' }
#' }
#' @rdname tuneSCANVI-sce
#' @export
tuneSCANVI <- function(x, labels_key, unlabeled_category = "Unknown", batch_key = NULL,
                       assay.type = "counts", features = NULL, categorical_covariate_keys = NULL,
                       continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                       n_layers = 1, dropout_rate = 0.1, gene_likelihood = "zinb",
                       dispersion = "gene", classification_ratio = 50, search_space = NULL,
                       metric = "marginal_ll", num_samples = 20, max_epochs = NULL,
                       test_size = 0.25, scheduler = "asha", n_jobs = 1, storage = NULL,
                       study_name = NULL, save_dir = NULL, fit_best = FALSE,
                       batch_size = 128, device = "auto", seed = 0, model_dir = NULL,
                       model_kwargs = list(), probabilities = FALSE, name = "scANVI",
                       verbose = TRUE) {
  .run_verb(.sce, x, .tune_scanvi_verb, environment())
}

# ---- reference mapping -------------------------------------------------------------------

# Mapping: the model is the reference's class, set up from the reference (its genes, its obs
# columns, the query's batch column under the reference's name), grown for the query's new
# batches (scArches' surgery) and trained on the query only; the latent and, for a scANVI
# reference, the transferred labels are written back.
.map_query_plan <- function(plan, eco, query, a, args) {
  reference_dir <- .reference_dir(a$reference_model, a$reference.reduction)
  reference <- load_cellvi_model(reference_dir)
  model_class <- .model_class(reference)
  if (!model_class %in% c("SCVI", "LinearSCVI", "SCANVI")) {
    stop("MapQuerySCVI maps onto scVI, LDVAE and scANVI references; the reference at ",
         reference_dir, " is a ", model_class, " model", call. = FALSE)
  }
  setup <- lapply(list(batch_key = reference$registry$batch_key,
                       labels_key = reference$registry$labels_key), function(k) .py_value(k))
  # The query's cell metadata the model reads: the batch (under the reference's column name),
  # covariates, and the labels if the query has them.
  meta_names <- eco$columns(query)
  columns <- setdiff(.model_obs_columns(reference), FALSE)
  batch_column <- .or_default(a$query_batch_key, setup$batch_key)
  if (!is.null(setup$batch_key) && is.null(a$query_batch_key) &&
      !batch_column %in% meta_names && .split_column %in% meta_names) {
    # a Seurat v5 query whose counts are split in layers: the split is its batch (seurat5.R)
    message("The query's counts are split in layers: the split is its batch (query_batch_key = \"",
            .split_column, "\"). Pass query_batch_key to use another column.")
    batch_column <- .split_column
  }
  if (!is.null(setup$batch_key)) {
    if (!batch_column %in% meta_names) {
      stop("the query has no metadata column '", batch_column, "' (the reference's batch ",
           "column); pass query_batch_key = the query's batch column", call. = FALSE)
    }
    columns <- unique(c(setdiff(columns, setup$batch_key), batch_column))
  }
  plan$columns <- columns[columns %in% meta_names]  # a query need not carry the labels
  plan$features <- NULL
  cls <- .core()[[model_class]]
  plan$adapt <- function(adata) {
    if (!is.null(setup$batch_key) && batch_column != setup$batch_key) {
      obs <- adata$obs
      obs$`__setitem__`(setup$batch_key, obs$`__getitem__`(batch_column))
    }
    .py_call(cls$prepare_query_anndata(adata, reference))  # warns of missing genes
  }
  unfrozen <- args$options$unfrozen
  # Without batches (or other categories) new to the reference there is nothing to learn:
  # the query is encoded by the reference network as it is.
  plan$train <- unfrozen || !is.null(setup$batch_key) ||
    length(unlist(.py_value(reference$registry$categorical_covariate_keys))) > 0
  if (!plan$train && isTRUE(a$verbose)) {
    message("The reference has no batch column: the query is encoded as it is, without training")
  }
  plan$build <- function(cv, adata) {
    .py_call(cls$load_query_data(adata, reference, freeze_dropout = args$options$freeze_dropout,
                                 unfrozen = unfrozen))
  }
  plan$model <- model_class
  plan$setup <- setup
  plan$record <- list(reference_dir = reference_dir)
  defaults <- switch(model_class, SCVI = c("scvi", "scVI"), LinearSCVI = c("ldvae", "LDVAE"),
                     SCANVI = c("scanvi", "scANVI"), TOTALVI = c("totalvi", "totalVI"),
                     c(tolower(model_class), model_class))
  if (eco$name == "seurat") {
    plan$latent_name <- .or_default(a$reduction.name, defaults[1])
    plan$latent_key <- .or_default(a$reduction.key, paste0(defaults[2], "_"))
  } else {
    plan$latent_name <- .or_default(a$reduction.name, defaults[2])
  }
  plan
}

.map_query_verb <- .verb(
  train_args = c(.train_spec[c("max_epochs", "batch_size", "train_size")],
                 list(early_stopping = .arg_fixed(FALSE)), .train_spec[c("lr", "device",
                                                                         "progress_bar")]),
  options = list(probabilities = .arg_flag, freeze_dropout = .arg_flag, unfrozen = .arg_flag),
  plan = .map_query_plan,
  outputs = list(.out_latent, function(model, adata, a, plan, cells) {
    predictions <- .out_predictions(model, adata, a, plan, cells)
    if (is.null(predictions) && isTRUE(a$verbose)) {
      message("The reference is a ", plan$model, " model: no labels to transfer (a scANVI ",
              "reference transfers its labels)")
    }
    predictions
  }))

# The directory of a reference model given as a directory, or as a Seurat object or
# SingleCellExperiment that a cellvi verb ran on (its reduction / reducedDim `reduction`).
.reference_dir <- function(reference, reduction) {
  if (is.character(reference) && length(reference) == 1L) {
    if (!dir.exists(reference)) {
      stop("no saved cellvi model at '", reference, "' (no such directory)", call. = FALSE)
    }
    return(normalizePath(reference))
  }
  # Records of models kept inside the object are written back to disk first.
  if (inherits(reference, "Seurat")) {
    candidates <- .or_default(reduction, c("scanvi", "scvi", "ldvae"))
    dirs <- lapply(intersect(candidates, SeuratObject::Reductions(reference)), function(r) {
      misc <- SeuratObject::Misc(reference[[r]])
      if (!is.null(misc$model_dir)) .materialize_record(misc)$model_dir
    })
  } else if (methods::is(reference, "SingleCellExperiment")) {
    candidates <- .or_default(reduction, c("scANVI", "scVI", "LDVAE"))
    records <- S4Vectors::metadata(reference)$cellvi
    dirs <- lapply(intersect(candidates, names(records)),
                   function(r) .materialize_record(records[[r]])$model_dir)
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
#' @param max_epochs Training epochs (`NULL`: `min(round(20000 / cells * 400), 400)`).
#' @inheritParams RunSCANVI
#' @return `query` with the latent space and, for a scANVI reference, the transferred labels.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- SeuratObject::pbmc_small
#'   reference <- subset(pbmc, groups == "g1")
#'   query <- subset(pbmc, groups == "g2")
#'   reference <- RunSCANVI(reference, labels_key = "RNA_snn_res.1", batch_key = "groups",
#'                          max_epochs = 50, seed = 0)
#'   # the query's batch ("g2", column "groups") is new to the reference
#'   query <- MapQuerySCVI(query, reference, max_epochs = 20)
#'   table(query$predicted.RNA_snn_res.1, query$RNA_snn_res.1)
#' }
#' }
#' @export
MapQuerySCVI <- function(query, reference_model, reference.reduction = NULL,
                         query_batch_key = NULL, assay = NULL, assay.type = "counts",
                         max_epochs = NULL, batch_size = 128, train_size = 0.9, lr = 1e-3,
                         freeze_dropout = FALSE, unfrozen = FALSE, device = "auto", seed = NULL,
                         model_dir = NULL, probabilities = FALSE, reduction.name = NULL,
                         reduction.key = NULL, verbose = TRUE) {
  .run_verb(.eco_of(query), query, .map_query_verb, environment())
}
