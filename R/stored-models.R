# The models an object records: listing them, removing them, getting one back as a Python
# model. Where a record lives: a Seurat reduction's misc (a model with a latent space) or
# Misc(object, "cellvi")[[name]] (one without), an SCE's metadata(x)$cellvi[[name]]. How a
# model is kept (inside the record, or as a path) is in aaa-verbs.R, "where models live".

# Named list of the records on `x` (Seurat: reductions first, then misc$cellvi; SCE: metadata).
.object_records <- function(x) {
  if (inherits(x, "Seurat")) {
    out <- list()
    for (r in SeuratObject::Reductions(x)) {
      misc <- SeuratObject::Misc(x[[r]])
      if (is.list(misc) && !is.null(misc$model_dir)) out[[r]] <- misc
    }
    for (r in names(x@misc$cellvi)) {
      if (!r %in% names(out)) out[[r]] <- x@misc$cellvi[[r]]
    }
    return(out)
  }
  if (methods::is(x, "SingleCellExperiment")) {
    return(Filter(function(r) is.list(r) && !is.null(r$model_dir), S4Vectors::metadata(x)$cellvi))
  }
  stop("`x` must be a Seurat object or a SingleCellExperiment, not ", .show(class(x)[1]),
       call. = FALSE)
}

#' The cellvi models an object records
#'
#' Every verb that trains a model records it on the object: by default the model's files are
#' kept inside the object (in the reduction's `misc` for Seurat, in `metadata(x)$cellvi` for a
#' SingleCellExperiment), so that `saveRDS()` / `readRDS()` carries the model and later verbs
#' work in any R session, on any machine. A verb given `model_dir` keeps the model in that
#' folder instead and records its path only (for large models, or to share one folder): such
#' an object needs the folder wherever it is used.
#'
#' `cellvi_models()` lists the models of an object; `cellvi_remove_models()` takes them off
#' the object (their results, such as a latent space, stay); `load_cellvi_model(x, name)` gives
#' one back as a Python model.
#'
#' @param x A Seurat object or SingleCellExperiment.
#' @return `cellvi_models()`: a data.frame with one row per model: `name` (the reduction,
#'   reducedDim or record name), `model` (its class), `stored` (`"object"`: inside the object;
#'   `"directory"`: a path only), `size_mb` (what it adds to the object), `directory` (where
#'   the model is read from in this session, for `"directory"` models the recorded path) and
#'   `available` (whether later verbs can use it).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 5, verbose = FALSE)
#'   cellvi_models(pbmc)
#'   pbmc <- cellvi_remove_models(pbmc, "scvi")  # the reduction stays, the model goes
#' }
#' }
#' @export
cellvi_models <- function(x) {
  records <- .object_records(x)
  if (!length(records)) {
    return(data.frame(name = character(0), model = character(0), stored = character(0),
                      size_mb = numeric(0), directory = character(0), available = logical(0),
                      stringsAsFactors = FALSE))
  }
  rows <- lapply(names(records), function(n) {
    r <- records[[n]]
    inside <- !is.null(r$model_store$bytes)
    dir <- if (inside) {
      .or_default(.cellvi_env$stores[[r$model_store$id]], NA_character_)
    } else {
      as.character(r$model_dir)[1]
    }
    data.frame(name = n, model = .or_default(r$model, NA_character_)[1],
               stored = if (inside) "object" else "directory",
               size_mb = round(.store_size(r) / 2^20, 2), directory = dir,
               available = inside || (!is.na(dir) && dir.exists(dir)),
               stringsAsFactors = FALSE)
  })
  do.call(rbind, rows)
}

#' @rdname cellvi_models
#' @param names Names of the models to remove (default: all), as `cellvi_models()` lists them.
#' @param delete_files Also delete the model folders from disk: those of `"directory"` models
#'   (the `model_dir` they were saved to) and this session's copies of stored ones.
#' @return `cellvi_remove_models()`: `x` without those models; the results they produced
#'   (reductions, metadata columns, assays) stay.
#' @export
cellvi_remove_models <- function(x, names = NULL, delete_files = FALSE) {
  records <- .object_records(x)
  names <- .or_default(names, names(records))
  if (!is.character(names)) {
    stop("`names` must be a character vector of model names, not ", .show(names), call. = FALSE)
  }
  unknown <- setdiff(names, names(records))
  if (length(unknown)) {
    stop("no cellvi model named ", .show_some(unknown), " on `x`; its models: ",
         .show_some(names(records), 20), call. = FALSE)
  }
  .as_flag(delete_files, "delete_files")
  for (n in names) {
    r <- records[[n]]
    if (delete_files) {
      dirs <- c(if (is.null(r$model_store$bytes)) r$model_dir,
                if (!is.null(r$model_store$id)) .cellvi_env$stores[[r$model_store$id]])
      for (d in dirs) {
        cached <- names(.cellvi_env$models)
        if (length(cached)) .cellvi_env$models[startsWith(cached, d)] <- NULL
        unlink(d, recursive = TRUE)
      }
      if (!is.null(r$model_store$id)) .cellvi_env$stores[[r$model_store$id]] <- NULL
    }
    x <- .drop_record(x, n)
  }
  x
}

# `x` without the record `name`: a Seurat reduction keeps its embeddings with an empty misc.
.drop_record <- function(x, name) {
  if (inherits(x, "Seurat")) {
    if (name %in% SeuratObject::Reductions(x) &&
        !is.null(SeuratObject::Misc(x[[name]])$model_dir)) {
      red <- x[[name]]
      red@misc <- list()
      x[[name]] <- red
    } else {
      x@misc$cellvi[[name]] <- NULL
    }
    return(x)
  }
  meta <- S4Vectors::metadata(x)
  meta$cellvi[[name]] <- NULL
  S4Vectors::metadata(x) <- meta
  x
}

# The Python model recorded on `x` under `name` (default: the only one, else an error).
.object_model <- function(x, name = NULL) {
  records <- .object_records(x)
  if (!length(records)) stop("`x` records no cellvi model", call. = FALSE)
  if (is.null(name)) {
    if (length(records) > 1L) {
      stop("`x` records several cellvi models (", .show_some(names(records), 20),
           "); pass `name`", call. = FALSE)
    }
    name <- names(records)
  }
  if (!is.character(name) || length(name) != 1L || !name %in% names(records)) {
    stop("no cellvi model named ", .show(name), " on `x`; its models: ",
         .show_some(names(records), 20), call. = FALSE)
  }
  record <- .materialize_record(records[[name]])
  if (any(grepl("_dirs$", names(record))) || is.null(record$model_dir)) {
    # A record of several models (RunSolo: one Solo per batch, on an scVI model); its
    # model_dir, if any, is the folder that holds them, not a model.
    dirs <- record[grepl("_dirs?$", names(record)) & names(record) != "model_dir"]
    dirs <- Filter(function(v) length(v) > 0L, lapply(dirs, function(v) as.character(unlist(v))))
    if (!length(dirs)) stop("the record '", name, "' on `x` holds no model directory", call. = FALSE)
    listing <- vapply(names(dirs), function(k) paste0("  ", k, ": ", paste(dirs[[k]], collapse = ", ")),
                      character(1))
    stop("the record '", name, "' holds several models, not one:\n", paste(listing, collapse = "\n"),
         "\nload one with load_cellvi_model(<one of these directories>)", call. = FALSE)
  }
  if (!dir.exists(record$model_dir)) {
    stop("the model '", name, "' was saved in the directory\n  ", record$model_dir,
         "\nwhich no longer exists", call. = FALSE)
  }
  load_cellvi_model(record$model_dir)
}

#' Training history of a cellvi model
#'
#' The per-epoch history of training (`elbo_train`, `elbo_validation`,
#' `reconstruction_loss_*`, `kl_local_*`, `loss_train`, `kl_weight`, ...), as a data.frame
#' with an `epoch` column (from 1). ELBOs are log-likelihood bounds: higher is better.
#'
#' @param x A Seurat object or SingleCellExperiment on which a cellvi verb ran, a model
#'   directory, or a model from [load_cellvi_model()].
#' @param name For an object: the name of its model (see [cellvi_models()]).
#' @return A data.frame, one row per epoch.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 20, verbose = FALSE)
#'   history <- cellvi_history(pbmc, "scvi")
#'   plot(history$epoch, history$elbo_validation, type = "l")
#' }
#' }
#' @export
cellvi_history <- function(x, name = NULL) {
  model <- if (inherits(x, "python.builtin.object")) x else load_cellvi_model(x, name)
  # converted column by column (reticulate's own DataFrame conversion warns with pandas 2)
  history <- .py_call(model$history$reset_index())
  out <- .py_df_to_r(history)
  rownames(out) <- NULL
  if (!is.null(out$epoch)) out$epoch <- as.integer(out$epoch) + 1L
  out
}
