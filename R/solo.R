# Solo verbs (doublet detection): RunSolo (Seurat) and runSolo (SingleCellExperiment), declared
# on the one path of aaa-verbs.R. Solo needs a trained scVI model: the one recorded on the
# object (reduction "scvi" / reducedDim "scVI") when there is one, else one trained here on
# the counts. One Solo per batch (lane); the results are metadata columns `solo.*`, and the
# models are recorded in misc$cellvi$solo / metadata$cellvi$solo.

# ---- declaration -------------------------------------------------------------------------------

# Whether `object` records a cellvi model under the reduction / reducedDim `where`.
.has_recorded_model <- function(eco, object, where) {
  if (is.null(where)) return(FALSE)
  if (eco$name == "seurat") {
    where %in% SeuratObject::Reductions(object) &&
      !is.null(SeuratObject::Misc(object[[where]])$model_dir)
  } else {
    !is.null(S4Vectors::metadata(object)$cellvi[[where]])
  }
}

# The scVI model recorded on the object is reused (its assay, genes and covariates; its batch
# column is the default batch_key); else a new scVI model is trained on the verb's counts.
.solo_plan <- function(plan, eco, object, a, args) {
  where <- a[[if (eco$name == "seurat") "scvi_reduction" else "scvi_dimred"]]
  batch_key <- args$setup$batch_key
  scvi_model <- NULL
  scvi_dir <- NULL
  if (.has_recorded_model(eco, object, where)) {
    found <- .recorded_model(eco, object, where)
    cls <- .model_class(found$model)
    if (!cls %in% c("SCVI", "LinearSCVI")) {
      what <- if (eco$name == "seurat") "scvi_reduction" else "scvi_dimred"
      stop(eco$what, " '", where, "' holds a ", cls, " model; Solo needs a scVI model (pass ",
           what, " = NULL to train one)", call. = FALSE)
    }
    scvi_model <- found$model
    scvi_dir <- found$record$model_dir
    plan$input <- found$input
    plan$features <- .model_genes(scvi_model)
    own_batch <- .py_value(scvi_model$registry$batch_key)
    batch_key <- .or_default(batch_key, own_batch)
    plan$columns <- unique(c(setdiff(.model_obs_columns(scvi_model), FALSE), batch_key))
    if (isTRUE(a$verbose)) message("Solo uses the scVI model of ", eco$what, " '", where, "'")
  }
  if (!length(plan$columns)) plan$columns <- FALSE
  plan$setup <- list(batch_key = batch_key)
  solo_args <- args$model_args
  scvi_epochs <- args$options$scvi_max_epochs
  plan$record_name <- "solo"
  plan$fit <- function(adata, args, seed, model_dir, verbose) {
    cv <- .core()
    model_dir <- .or_default(model_dir, .new_model_dir("SOLO"))
    dir.create(model_dir, recursive = TRUE, showWarnings = FALSE)
    model_dir <- normalizePath(model_dir)
    train_common <- args$train_args[intersect(c("device", "progress_bar"), names(args$train_args))]
    vae <- scvi_model
    if (is.null(vae)) {
      setup <- if (is.null(batch_key)) list() else list(batch_key = batch_key)
      .py_call(do.call(cv$SCVI$setup_anndata, c(list(adata), setup)))
      # NB rather than scVI's default ZINB: on cell-hashing doublets (scds chcl, seeds 0-2)
      # Solo's average precision was higher from an NB model in every seed (0.280 vs 0.255)
      vae <- .py_call(cv$SCVI(adata, gene_likelihood = "nb"))
      if (verbose) {
        message("Training scVI for Solo on ", .py_value(adata$n_obs), " cells x ",
                .py_value(adata$n_vars), " genes")
      }
      .py_call(do.call(vae$train, c(list(max_epochs = scvi_epochs), train_common)))
      scvi_dir <- file.path(model_dir, "scvi")
      .py_call(vae$save(scvi_dir, overwrite = TRUE))
      .cellvi_env$models[[scvi_dir]] <- vae
    }
    solos <- .py_call(do.call(cv$SOLO$from_scvi_model_per_batch,
                              c(list(vae, adata, batch_key = batch_key), solo_args)))
    batches <- unlist(.py_value(reticulate::import_builtins(convert = FALSE)$list(solos)))
    models <- list()
    dirs <- character(0)
    for (i in seq_along(batches)) {
      solo <- reticulate::py_get_item(solos, batches[[i]])
      if (verbose) {
        message("Training Solo", if (length(batches) > 1) paste0(" for batch '", batches[[i]], "'"),
                " (", .py_value(solo$adata$n_obs), " real and simulated cells)")
      }
      .py_call(do.call(solo$train, args$train_args))
      dirs[[i]] <- file.path(model_dir, sprintf("solo-%d", i))
      .py_call(solo$save(dirs[[i]], overwrite = TRUE))
      .cellvi_env$models[[dirs[[i]]]] <- solo
      models[[i]] <- solo
    }
    if (verbose) message("Models saved in ", model_dir)
    list(model = models, dir = model_dir,
         record = list(batches = batches, solo_dirs = dirs, scvi_model_dir = scvi_dir,
                       scvi_reused = !is.null(scvi_model)))
  }
  plan
}

# Per cell: the probability of being a doublet and the call (a factor: singlet, doublet).
.out_solo <- function(model, adata, a, plan, cells) {
  scores <- do.call(rbind, lapply(model, function(solo) .py_df_to_r(.py_call(solo$predict()))))
  score <- stats::setNames(scores[cells, "doublet"], cells)
  call <- factor(ifelse(score > 0.5, "doublet", "singlet"), levels = c("singlet", "doublet"))
  if (isTRUE(a$verbose)) {
    message("Solo: ", sum(call == "doublet"), " of ", length(call), " cells called doublets (",
            round(100 * mean(call == "doublet"), 1), "%)")
  }
  list(columns = list(solo.doublet_score = score, solo.classification = stats::setNames(call, cells)))
}

.solo_verb <- .verb(
  "SOLO",
  setup = list(batch_key = .arg_column),
  model_args = list(doublet_ratio = .arg_count()),
  train_args = .train_spec[c("max_epochs", "batch_size", "train_size", "early_stopping", "lr",
                             "device", "progress_bar")],
  options = list(scvi_max_epochs = .arg_count(null_ok = TRUE)),
  plan = .solo_plan, outputs = list(.out_solo))

# ---- verbs ---------------------------------------------------------------------------------------

#' Doublet detection with Solo (Seurat)
#'
#' Solo simulates doublets by summing the counts of random pairs of cells, encodes real cells
#' and simulated doublets with a trained scVI model, and trains a classifier of the scVI
#' latent and the library size to tell them apart; real doublets resemble the simulated ones.
#' It writes to the metadata each cell's probability of being a doublet
#' (`solo.doublet_score`) and the call (`solo.classification`: `"doublet"` where that
#' probability is above 0.5, else `"singlet"`).
#'
#' Doublets form within a lane (10x channel): with `batch_key`, one Solo is trained per batch.
#' The scVI model recorded on the object (by [RunSCVI()], reduction `scvi_reduction`) is reused
#' when there is one, with its assay and genes, and its batch column is then the default
#' `batch_key`; otherwise a scVI model (negative binomial likelihood, which gave Solo a higher
#' average precision than scVI's default zero-inflated one on cell-hashing data) is trained
#' first on the counts (`scvi_max_epochs`) and saved with the Solo models, without adding a
#' reduction. The models are saved to `model_dir` and recorded in
#' `Misc(object, "cellvi")$solo` (`solo_dirs`: one Solo per batch; `scvi_model_dir`).
#'
#' The probabilities are the classifier's, with the ratio of simulated doublets to real cells
#' in its training data taken out (they do not depend on `doublet_ratio`).
#'
#' @param batch_key Metadata column of the lane (batch): one Solo per batch. Default: the
#'   reused scVI model's batch column, else none (all cells together).
#' @param assay Assay holding the counts when a scVI model is trained here (default: the
#'   default assay).
#' @param features Genes for a scVI model trained here (default: all), e.g.
#'   `VariableFeatures(object)`.
#' @param scvi_reduction The reduction of the scVI model to reuse; `NULL` (or a reduction that
#'   does not exist) trains a new one.
#' @param doublet_ratio Simulated doublets per real cell.
#' @param max_epochs Solo's training epochs (at most, with `early_stopping`).
#' @param scvi_max_epochs Epochs of the scVI model trained here (`NULL`: scVI's default,
#'   `min(round(20000 / cells * 400), 400)`).
#' @param batch_size,train_size,early_stopping,lr Solo's training settings (defaults as
#'   scvi-tools': 128 cells, 90% training cells, early stopping on the validation loss with
#'   patience 30, learning rate 1e-3).
#' @inheritParams cellvi-params
#' @return The Seurat object with the metadata columns added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSolo(SeuratObject::pbmc_small, scvi_max_epochs = 50, max_epochs = 20)
#'   table(pbmc$solo.classification)
#'   # with a scVI model already on the object, and one Solo per group of cells
#'   pbmc <- RunSCVI(pbmc, batch_key = "groups", max_epochs = 50)
#'   pbmc <- RunSolo(pbmc, max_epochs = 20)
#'   pbmc <- subset(pbmc, solo.classification == "singlet")
#' }
#' }
#' @export
RunSolo <- function(object, batch_key = NULL, assay = NULL, features = NULL,
                    scvi_reduction = "scvi", doublet_ratio = 2, max_epochs = 400,
                    scvi_max_epochs = NULL, batch_size = 128, train_size = 0.9,
                    early_stopping = TRUE, lr = 1e-3, device = "auto", seed = NULL,
                    model_dir = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .solo_verb, environment())
}

#' Doublet detection with Solo (SingleCellExperiment)
#'
#' As [RunSolo()]: the columns `solo.doublet_score` and `solo.classification` go to
#' `colData(x)`, the scVI model of reducedDim `scvi_dimred` (made by [runSCVI()]) is reused
#' when there is one, and the models are recorded in `metadata(x)$cellvi$solo`.
#'
#' @param assay.type Assay holding the counts when a scVI model is trained here.
#' @param scvi_dimred The reducedDim of the scVI model to reuse; `NULL` (or one that does not
#'   exist) trains a new one.
#' @inheritParams RunSolo
#' @inheritParams cellvi-params
#' @return `x` with the `colData` columns added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   sce <- runSolo(sce, batch_key = "groups", scvi_max_epochs = 50, max_epochs = 20)
#'   table(sce$solo.classification, sce$groups)
#' }
#' }
#' @rdname runSolo-sce
#' @export
runSolo <- function(x, batch_key = NULL, assay.type = "counts", features = NULL,
                    scvi_dimred = "scVI", doublet_ratio = 2, max_epochs = 400,
                    scvi_max_epochs = NULL, batch_size = 128, train_size = 0.9,
                    early_stopping = TRUE, lr = 1e-3, device = "auto", seed = NULL,
                    model_dir = NULL, verbose = TRUE) {
  .run_verb(.sce, x, .solo_verb, environment())
}
