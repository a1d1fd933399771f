# One internal path for every verb (DESIGN.md, "R verbs as declarations").
#
# A verb is a declaration made with .verb(): the Python model class it fits (or, for a query
# verb, none: it loads the model recorded on the object), the arguments that go to
# setup_anndata(), to the model and to train() -- each with its checker -- and its outputs
# (functions of the model that return results: a latent space, loadings, per-cell columns,
# assays, or a table). .run_verb() does the rest, the same way for every verb and both
# ecosystems:
#
#   convert the object to AnnData -> set up, build, train and save the model (or load the one
#   recorded on the object) -> query it -> write the results back
#
# through an ecosystem adapter (.seurat, .sce) that knows where each kind of result goes
# (DimReduc or reducedDim, meta.data or colData, assay or altExp). The object is modified only
# at the end, on R's copy, so an error at any step leaves the user's object as it was.
#
# The file is named aaa- so that R collates it first: the verb files declare their verbs at
# top level with the functions defined here.

# ---- argument checkers -----------------------------------------------------------------------
# A checker takes (value, argument name) and returns the value Python gets. Attributes mark
# checkers of obs columns (their values are the metadata columns converted with the counts),
# checkers that read an R argument of another name (`arg`), and fixed values (`fixed`).

.arg_count <- function(minimum = 1L, null_ok = FALSE) {
  force(minimum)
  force(null_ok)
  function(x, name) .as_count(x, name, minimum = minimum, null_ok = null_ok)
}

.arg_number <- function(lower = -Inf, upper = Inf, null_ok = FALSE) {
  force(lower)
  force(upper)
  force(null_ok)
  function(x, name) .as_number(x, name, lower, upper, null_ok = null_ok)
}

.arg_flag <- function(x, name) .as_flag(x, name)

.arg_choice <- function(...) {
  choices <- c(...)
  function(x, name) .as_choice(x, name, choices)
}

# A device for torch: "auto", "cpu", "cuda", "cuda:N" (GPU number N) or "mps".
.arg_device <- function(x, name) {
  if (is.character(x) && length(x) == 1L && !is.na(x) && grepl("^cuda:[0-9]+$", x)) return(x)
  if (!is.character(x) || length(x) != 1L || !x %in% c("auto", "cpu", "cuda", "mps")) {
    stop("`", name, "` must be \"auto\", \"cpu\", \"cuda\", \"cuda:N\" (GPU number N) or \"mps\", not ",
         .show(x), call. = FALSE)
  }
  x
}

# One non-empty name (of an assay, altExp, ...).
.arg_name <- function(x, name) {
  if (!is.character(x) || length(x) != 1L || is.na(x) || !nzchar(x)) {
    stop("`", name, "` must be one non-empty name, not ", .show(x), call. = FALSE)
  }
  x
}

# One obs column name, or NULL.
.arg_column <- structure(function(x, name) {
  if (is.null(x)) return(NULL)
  if (!is.character(x) || length(x) != 1L || is.na(x)) {
    stop("`", name, "` must be one column name, not ", .show(x), call. = FALSE)
  }
  x
}, obs_column = TRUE)

# Several obs column names, or NULL (Python wants a list, even of one name).
.arg_columns <- structure(function(x, name) {
  x <- .as_names(x, name)
  if (is.null(x)) NULL else as.list(x)
}, obs_column = TRUE)

# The checker `checker` reading the R argument `arg` (the Python name is the list's name).
.arg_as <- function(arg, checker) {
  attr(checker, "arg") <- arg
  checker
}

# A value the verb always passes (its R function has no such argument).
.arg_fixed <- function(value) {
  force(value)
  structure(function(x, name) value, fixed = TRUE)
}

# Values of the arguments named in `checkers`, read from the verb's environment `a` and checked;
# arguments the verb does not have are skipped. `drop_null`: leave out NULL values (setup keys
# not given) instead of passing None.
.check_args <- function(checkers, a, drop_null = FALSE) {
  out <- list()
  for (py_name in names(checkers)) {
    check <- checkers[[py_name]]
    arg <- .or_default(attr(check, "arg"), py_name)
    fixed <- isTRUE(attr(check, "fixed"))
    if (!fixed && !exists(arg, envir = a, inherits = FALSE)) next
    value <- check(if (fixed) NULL else get(arg, envir = a, inherits = FALSE), arg)
    if (is.null(value) && drop_null) next
    out[py_name] <- list(value)
  }
  out
}

# ---- shared argument declarations -----------------------------------------------------------

# setup_anndata() keys of the scVI family.
.covariate_setup <- list(batch_key = .arg_column, labels_key = .arg_column,
                         categorical_covariate_keys = .arg_columns,
                         continuous_covariate_keys = .arg_columns)

# Network settings of scVI-like models.
.vae_args <- list(n_latent = .arg_count(), n_hidden = .arg_count(), n_layers = .arg_count(),
                  dropout_rate = .arg_number(0, 1),
                  gene_likelihood = .arg_choice("zinb", "nb", "poisson"),
                  dispersion = .arg_choice("gene", "gene-batch", "gene-label", "gene-cell"))

# train() settings; `verbose` becomes the progress bar.
.train_spec <- list(max_epochs = .arg_count(null_ok = TRUE), batch_size = .arg_count(2L),
                    train_size = .arg_number(0, 1), early_stopping = .arg_flag,
                    lr = .arg_number(0), device = .arg_device,
                    progress_bar = .arg_as("verbose", .arg_flag))

# ---- a verb ------------------------------------------------------------------------------------

# model       Python class (a name on the cellvi module) the verb fits; NULL: the verb queries
#             the model recorded on the object (under its `reduction` / `dimred` argument).
# setup       checkers of the setup_anndata() arguments (named as in Python).
# model_args  checkers of the model's arguments; a `model_kwargs` list of the verb is added.
# train_args  checkers of train()'s arguments; a `plan_kwargs` list of the verb goes to
#             train(plan_kwargs = ) (the training plan's further settings).
# options     checkers of further arguments the outputs read (not sent to Python).
# proteins    the model reads protein counts (Seurat `protein_assay`, SCE `protein_altexp`).
# outputs     functions (model, adata, a, plan, cells) -> list of results: latent (cells x k,
#             rownames = cells), loadings (features x k), columns (named list of per-cell
#             vectors), cell_matrices (named list of cells x k matrices), assays (list with
#             `rna` and/or `protein`: list(data = features x cells, whole = all features?,
#             unit = what the rows are, assay_name = the SCE altExp's assay name)),
#             features (a data.frame of per-feature columns, rownames = features of the
#             counts' assay: Seurat meta.features of that assay, SCE rowData; features the
#             model did not read get NA), table (a data.frame returned instead of the object).
# plan        function(plan, eco, object, a, args) -> plan: changes the default plan (input,
#             features, columns, model, build, adapt, train, setup, record, latent names,
#             record_name: where a fitted model with no latent space is recorded, in the
#             Seurat object's misc$cellvi or the SCE's metadata$cellvi; fit: function(adata,
#             args, seed, model_dir, verbose) -> list(model, dir, record) that fits and saves
#             in place of .fit_model(), for a verb that fits several models: `model` is what
#             its outputs get, `record` is added to the record).
# accepts     model classes a query verb can use (NULL: any).
# fit_by      the verbs that make its model, named by ecosystem (for error messages).
.verb <- function(model = NULL, setup = list(), model_args = list(), train_args = list(),
                  options = list(), proteins = FALSE, outputs = list(), plan = NULL,
                  accepts = NULL, fit_by = c(seurat = "RunSCVI()", sce = "runSCVI()")) {
  list(model = model, setup = setup, model_args = model_args, train_args = train_args,
       options = options, proteins = proteins, outputs = outputs, plan = plan,
       accepts = accepts, fit_by = fit_by)
}

# Checks every argument a verb (whose environment is `a`) passes to Python.
.verb_args <- function(verb, a) {
  setup <- .check_args(verb$setup, a, drop_null = TRUE)
  model_args <- .check_args(verb$model_args, a)
  if (exists("model_kwargs", envir = a, inherits = FALSE)) {
    if (!is.list(a$model_kwargs)) stop("`model_kwargs` must be a named list", call. = FALSE)
    model_args <- c(model_args, a$model_kwargs)
  }
  train_args <- .check_args(verb$train_args, a)
  if (exists("plan_kwargs", envir = a, inherits = FALSE) && length(a$plan_kwargs)) {
    if (!is.list(a$plan_kwargs) || is.null(names(a$plan_kwargs)) || any(names(a$plan_kwargs) == "")) {
      stop("`plan_kwargs` must be a named list, e.g. list(precision = \"bf16-mixed\")", call. = FALSE)
    }
    train_args$plan_kwargs <- a$plan_kwargs
  }
  options <- .check_args(verb$options, a)
  is_column <- vapply(verb$setup, function(f) isTRUE(attr(f, "obs_column")), logical(1))
  columns <- unique(unlist(setup[intersect(names(verb$setup)[is_column], names(setup))],
                           use.names = FALSE))
  list(setup = setup, model_args = model_args, train_args = train_args, options = options,
       columns = if (length(columns)) columns else FALSE)
}

# ---- the path ----------------------------------------------------------------------------------

# Runs `verb` on `object` (a Seurat object or SCE, handled by the adapter `eco`) with the verb's
# arguments in the environment `a`.
.run_verb <- function(eco, object, verb, a) {
  # Messages name the arguments of the verb the user called (see .counts_fix()).
  .cellvi_env$caller <- list(name = .verb_name(sys.function(-1)), eco = eco$name, a = a)
  on.exit(.cellvi_env$caller <- NULL, add = TRUE)
  eco$check(object)
  args <- .verb_args(verb, a)
  .check_model_dir(a$model_dir)
  .set_progress_style()
  plan <- list(model = verb$model, input = eco$input(object, a, verb$proteins),
               features = a$features, columns = args$columns, setup = args$setup)
  if (!is.null(eco$prepare)) {  # Seurat v5: split counts as the batch (seurat5.R)
    ready <- eco$prepare(object, plan, args, verb, a)
    object <- ready$object; plan <- ready$plan; args <- ready$args
  }
  if (!is.null(verb$plan)) plan <- verb$plan(plan, eco, object, a, args)
  if (!is.null(eco$check_outputs)) eco$check_outputs(plan, a)
  verbose <- isTRUE(a$verbose)
  # The verb's seed holds for this call only (fitting and queries), not for later calls.
  .with_seed(a$seed, {
    if (is.null(plan$model)) {
      found <- .recorded_model(eco, object, a[[eco$model_arg]], verb)
      model <- found$model
      plan$input <- found$input
      record <- found$record
      adata <- tryCatch(
        eco$anndata(object, plan$input, .model_genes(model), .model_obs_columns(model)),
        error = function(e) {
          # The genes are the model's, not requested by the user: say so.
          lack <- regmatches(conditionMessage(e), regexec(
            "^(\\d+) of (\\d+) requested feature\\(s\\) not found: (.*); available", conditionMessage(e)))[[1]]
          if (!length(lack)) stop(e)
          stop("the object lacks ", lack[[2]], " of the ", lack[[3]], " genes the model was trained on (",
               lack[[4]], "); the model needs all of them: use the object it was trained on (a subset of ",
               "its cells is fine, not of its genes)", call. = FALSE)
        })
    } else {
      adata <- eco$anndata(object, plan$input, plan$features, plan$columns)
      if (!is.null(plan$adapt)) adata <- plan$adapt(adata)
      fit <- if (is.null(plan$fit)) {
        .fit_model(adata, plan$model, args, a$model_dir, verbose, build = plan$build,
                   train = !isFALSE(plan$train))
      } else {
        plan$fit(adata, args, a$seed, a$model_dir, verbose)
      }
      model <- fit$model
      record <- list(model = plan$model, model_dir = fit$dir, setup = plan$setup,
                     model_args = args$model_args, train_args = args$train_args,
                     cellvi_version = .py_value(.core()$`__version__`),
                     save_id = .save_id(fit$dir))
      # The plan's and the fit's entries add to these, or replace them (a tune verb's fit
      # records the settings it chose).
      extra <- c(plan$record, fit$record)
      record[names(extra)] <- extra
      # Without a `model_dir` of the user's, the saved model travels inside the object.
      if (is.null(a$model_dir) && !is.null(fit$dir)) {
        record <- .store_model(record, fit$dir)
        if (verbose) {
          message(sprintf("Model kept inside the object (%.1f MB; see ?cellvi_models)",
                          .store_size(record) / 2^20))
        }
      }
    }
    results <- list()
    cells <- colnames(object)
    for (output in verb$outputs) results <- c(results, output(model, adata, a, plan, cells))
  })
  if ("table" %in% names(results)) return(results$table)
  eco$write(object, results, record, plan, a, verbose)
}

# The exported name of the verb function `f` ("the verb" when it is not one).
.verb_name <- function(f) {
  ns <- asNamespace("cellvi")
  for (n in getNamespaceExports(ns)) {
    if (identical(get0(n, envir = ns, inherits = FALSE), f)) return(n)
  }
  "the verb"
}

# What to do about counts that are not raw counts, in the terms of the function the user
# called: a verb's own arguments (`assay`, `assay.type`, `protein_assay` ...), or, from
# as_anndata() and friends, `hint` and their `allow_non_counts`.
.counts_fix <- function(hint, protein = FALSE) {
  caller <- .cellvi_env$caller
  if (is.null(caller)) {
    return(paste0(hint, " (or set allow_non_counts = TRUE to convert ",
                  if (protein) "them" else "it", " anyway)."))
  }
  fn <- paste0(caller$name, "()")
  has <- function(arg) exists(arg, envir = caller$a, inherits = FALSE)
  seurat <- caller$eco == "seurat"
  if (protein) {
    arg <- if (seurat) "protein_assay" else "protein_altexp"
    if (!has(arg)) {  # a query verb: the protein counts the model was trained on
      return(paste0(fn, " reads the protein counts of the ", if (seurat) "assay" else "altExp",
                    " the model was trained on, which must hold the raw antibody (ADT) counts."))
    }
    return(paste0(fn, " reads the protein counts of `", arg, "`: pass ", arg, " = the ",
                  if (seurat) "assay" else "altExp", " holding the raw antibody (ADT) counts."))
  }
  if (seurat && has("assay")) {
    return(paste0(fn, " reads the counts slot of `assay`: pass assay = an assay whose counts ",
                  "slot holds the raw counts (whole numbers)."))
  }
  if (!seurat && has("assay.type")) {
    return(paste0(fn, " reads the assay named by `assay.type`: pass assay.type = the assay of ",
                  "raw counts (whole numbers), usually \"counts\"."))
  }
  paste0(fn, " needs the raw counts (whole numbers) the model was trained on.")
}

# ---- where models live -----------------------------------------------------------------------
# By default (no `model_dir` given to a verb) a model is saved into a folder of this R session's
# temporary directory, and that folder's files are kept inside the object's record
# (`model_store`: the bytes of every file), so saveRDS()/readRDS() carries the model and a
# later session needs nothing on disk: the first verb that needs the model writes the files
# back into its own temporary directory. With a `model_dir`, the model stays in that folder
# and the record holds its path only (the choice for large models).

# Session folder of models saved by verbs without a `model_dir` (and of unpacked ones).
.session_models_root <- function() file.path(tempdir(), "cellvi-models")

# How training shows progress (when `verbose`): a bar redrawn in place where R's output is a
# terminal (or RStudio's console), else -- Rscript piped to a log, a knitted document -- a plain
# line every ~10% of the epochs (the core's settings.progress_style).
.progress_style <- function() {
  if (isTRUE(getOption("knitr.in.progress"))) return("lines")
  if (isatty(stdout()) || (interactive() && nzchar(Sys.getenv("RSTUDIO")))) "bar" else "lines"
}

.set_progress_style <- function() {
  cv <- .core()
  if (reticulate::py_has_attr(cv$settings, "progress_style")) {
    cv$settings$progress_style <- .progress_style()
  }
  invisible()
}

.new_model_dir <- function(model_class) {
  stamp <- format(Sys.time(), "%Y%m%d-%H%M%S")
  # tempfile() makes its suffix without R's random-number stream: a user's set.seed() before
  # each verb neither repeats a directory (one model overwriting another) nor is disturbed.
  tempfile(paste0(model_class, "-", stamp, "-"), tmpdir = .session_models_root())
}

# A `model_dir` of the user's, checked before any training: saving a model replaces its
# folder, so a folder holding anything but cellvi models (a model's own files, or the
# sub-folders of models that the deconvolution and Solo verbs save) is refused.
.check_model_dir <- function(path) {
  if (is.null(path)) return(invisible())
  if (!is.character(path) || length(path) != 1L || is.na(path) || !nzchar(path)) {
    stop("`model_dir` must be NULL or the path of a folder (one string)", call. = FALSE)
  }
  if (!file.exists(path)) return(invisible())
  if (!dir.exists(path)) {
    stop("`model_dir` '", path, "' is a file; give the path of a folder for the model", call. = FALSE)
  }
  entries <- list.files(path, all.files = TRUE, no.. = TRUE)
  # (the files of python/cellvi/models/_base.py's _SAVED_MODEL_FILES)
  is_model <- entries %in% c("model.json", "weights.npz", "arguments.npz", "split.npz", ".DS_Store") |
    file.exists(file.path(path, entries, "model.json"))
  if (any(!is_model)) {
    stop("`model_dir` '", path, "' holds files that are not a cellvi model (",
         .show_some(entries[!is_model], 5), "); saving the model replaces its folder, so choose ",
         "a new or empty folder, e.g. model_dir = \"", file.path(path, "cellvi_model"), "\"",
         call. = FALSE)
  }
  invisible()
}

# Whether `path` is `root` or lies under it (both normalized).
.path_under <- function(path, root) {
  identical(path, root) || startsWith(path, paste0(root, "/"))
}

# The folder to keep for a model saved at `dir`: its top folder under the session's models
# root (verbs that save several models save them in subfolders of one), else `dir` itself.
.store_root <- function(dir) {
  dir <- normalizePath(dir, mustWork = FALSE)
  session <- normalizePath(.session_models_root(), mustWork = FALSE)
  if (.path_under(dir, session) && !identical(dir, session)) {
    rel <- substring(dir, nchar(session) + 2L)
    return(file.path(session, strsplit(rel, "/", fixed = TRUE)[[1]][1]))
  }
  dir
}

# The files under `root` as one raw vector (serialized list of relative paths and contents).
.pack_dir <- function(root) {
  files <- list.files(root, recursive = TRUE, all.files = TRUE, no.. = TRUE)
  contents <- lapply(file.path(root, files), function(f) readBin(f, "raw", file.size(f)))
  serialize(list(files = files, contents = contents), NULL, xdr = FALSE)
}

.unpack_dir <- function(bytes, root) {
  packed <- unserialize(bytes)
  for (i in seq_along(packed$files)) {
    path <- file.path(root, packed$files[[i]])
    dir.create(dirname(path), recursive = TRUE, showWarnings = FALSE)
    writeBin(packed$contents[[i]], path)
  }
  invisible(root)
}

# `record` with the model folder(s) around `dir` kept inside it (`model_store`).
.store_model <- function(record, dir) {
  root <- .store_root(dir)
  id <- paste0(format(Sys.time(), "%Y%m%d%H%M%S"), "-", basename(tempfile("")))
  record$model_store <- list(id = id, root = root, bytes = .pack_dir(root))
  .cellvi_env$stores[[id]] <- root  # this session already has the files
  record
}

# `record` with its paths usable in this session: for a model kept inside the object, the
# files are written back (once per session) and every path under the original folder is
# moved to where they now are.
.materialize_record <- function(record) {
  store <- record$model_store
  if (is.null(store) || is.null(store$bytes)) return(record)
  here <- .cellvi_env$stores[[store$id]]
  if (is.null(here) || !dir.exists(here)) {
    here <- tempfile("unpacked-", tmpdir = .session_models_root())
    .unpack_dir(store$bytes, here)
    here <- normalizePath(here)
    .cellvi_env$stores[[store$id]] <- here
  }
  if (identical(here, store$root)) return(record)
  move <- function(x) {
    if (is.list(x)) return(lapply(x, move))
    if (!is.character(x)) return(x)
    under <- !is.na(x) & (x == store$root | startsWith(x, paste0(store$root, "/")))
    x[under] <- paste0(here, substring(x[under], nchar(store$root) + 1L))
    x
  }
  keep <- setdiff(names(record), "model_store")
  record[keep] <- lapply(record[keep], move)
  record
}

# Size in bytes of a record's stored model (0 when it keeps a path only).
.store_size <- function(record) length(record$model_store$bytes)

# Runs `expr` with the core's seed setting (cellvi.settings.seed) set to `seed` for its
# duration (seeding torch, numpy and `random`, and the data splits); afterwards, even on an
# error, the setting is put back as it was without seeding anything again (Python's
# settings.seeded()), so that a verb's seed holds for that verb only. `seed = NULL`: `expr` as
# it is (no Python needed).
.with_seed <- function(seed, expr) {
  if (is.null(seed)) return(expr)
  seed <- .as_count(seed, "seed", minimum = 0L)
  with(.core()$settings$seeded(seed), expr)
}

# Sets up and builds a model on an AnnData handle (or makes it with `build(core, adata)`, e.g.
# from another model), trains it (unless `train = FALSE`) and saves it; list(model, dir). The
# verb's seed is set around it (.with_seed() in .run_verb()).
.fit_model <- function(adata, model_class, args, model_dir, verbose, build = NULL,
                       train = TRUE) {
  cv <- .core()
  cls <- cv[[model_class]]
  if (is.null(build) && is.null(cls)) {
    stop("the cellvi Python core (version ", .py_value(cv$`__version__`), ") has no model ",
         model_class, "; update it (cellvi::install_cellvi())", call. = FALSE)
  }
  model <- if (is.null(build)) {
    .py_call(do.call(cls$setup_anndata, c(list(adata), args$setup)))
    .py_call(do.call(cls, c(list(adata), args$model_args)))
  } else {
    build(cv, adata)
  }
  if (verbose && train) {
    message("Training ", model_class, " on ", .py_value(adata$n_obs), " cells x ",
            .py_value(adata$n_vars), " features")
  }
  if (train) .py_call(do.call(model$train, args$train_args))
  own_dir <- !is.null(model_dir)
  model_dir <- .or_default(model_dir, .new_model_dir(model_class))
  dir.create(dirname(model_dir), recursive = TRUE, showWarnings = FALSE)
  .py_call(model$save(model_dir, overwrite = TRUE))
  model_dir <- normalizePath(model_dir)
  .cellvi_env$models[[model_dir]] <- model
  if (verbose && own_dir) message("Model saved in ", model_dir)
  list(model = model, dir = model_dir)
}

#' Load a saved cellvi model
#'
#' Loads (once per session, then from a cache) a model directory written by the verbs or by
#' Python's `model.save()`, or the model a verb recorded on an object (see [cellvi_models()]).
#'
#' @param model_dir The model's directory, or a Seurat object or SingleCellExperiment on
#'   which a cellvi verb ran.
#' @param name For an object: the name of its model (a reduction, reducedDim or record name,
#'   as [cellvi_models()] lists them; default: the only one).
#' @return The Python model (a reticulate handle without automatic conversion: wrap results
#'   in `reticulate::py_to_r()`).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 20, verbose = FALSE)
#'   model <- load_cellvi_model(pbmc, "scvi")
#'   tail(cellvi_history(model))
#' }
#' }
#' @export
load_cellvi_model <- function(model_dir, name = NULL) {
  if (inherits(model_dir, "Seurat") || methods::is(model_dir, "SingleCellExperiment")) {
    return(.object_model(model_dir, name))
  }
  if (!is.character(model_dir) || length(model_dir) != 1L || is.na(model_dir)) {
    stop("`model_dir` must be a model directory or a Seurat object or SingleCellExperiment, ",
         "not ", .show(model_dir), call. = FALSE)
  }
  if (!dir.exists(model_dir)) {
    stop("no saved cellvi model at '", model_dir, "' (no such directory)", call. = FALSE)
  }
  model_dir <- normalizePath(model_dir)
  if (is.null(.cellvi_env$models[[model_dir]])) {
    .cellvi_env$models[[model_dir]] <- .py_call(.core()$load_model(model_dir))
  }
  .cellvi_env$models[[model_dir]]
}

# The model recorded on an object under `where` (a reduction / reducedDim name), checked
# against the classes `verb` accepts: list(model, input, record).
.recorded_model <- function(eco, object, where, verb = .verb()) {
  found <- eco$recorded(object, where, verb$fit_by[[eco$name]])
  found$record <- .materialize_record(found$record)
  dir <- found$record$model_dir
  if (!dir.exists(dir)) {
    stop(eco$what, " '", where, "' records a model saved in the directory\n  ", dir,
         "\nwhich no longer exists (the object keeps only its path: it was made with ",
         "`model_dir`). Restore that directory, or run ", verb$fit_by[[eco$name]],
         " again (without `model_dir` the model is kept inside the object)", call. = FALSE)
  }
  saved <- .save_id(dir)
  if (!is.null(found$record$save_id) && !identical(saved, found$record$save_id)) {
    stop(eco$what, " '", where, "' records a model saved in the directory\n  ", dir,
         "\nwhich now holds another model (saved there later, e.g. by a verb on another object ",
         "with the same `model_dir`). Run ", verb$fit_by[[eco$name]], " again, and give each ",
         "object its own `model_dir` (or none: the model is then kept inside the object)",
         call. = FALSE)
  }
  found$model <- load_cellvi_model(dir)
  if (length(verb$accepts)) {
    cls <- .model_class(found$model)
    if (!cls %in% verb$accepts) {
      stop(eco$what, " '", where, "' holds a ", cls, " model; this verb needs a ",
           paste(verb$accepts, collapse = " or "), " model (run ", verb$fit_by[[eco$name]],
           " first)", call. = FALSE)
    }
  }
  found
}

.model_class <- function(model) .py_value(model$`__class__`$`__name__`)

# The id a save wrote into `dir`'s model.json (NULL: none, e.g. a folder of several models, or
# a model saved by an older cellvi), read without Python.
.save_id <- function(dir) {
  if (!length(dir)) return(NULL)
  path <- file.path(dir, "model.json")
  if (!file.exists(path)) return(NULL)
  lines <- readLines(path, warn = FALSE)
  hit <- regmatches(lines, regexpr('"save_id": *"[0-9a-f]+"', lines))
  if (!length(hit)) NULL else sub('.*"([0-9a-f]+)"$', "\\1", hit[[1]])
}

.model_genes <- function(model) unlist(.py_value(model$var_names))

.setup_columns <- function(setup) {
  unique(unlist(setup[c("batch_key", "labels_key", "categorical_covariate_keys",
                        "continuous_covariate_keys")], use.names = FALSE))
}

# The obs columns a model reads (FALSE: none), for converting new cells as its input.
.model_obs_columns <- function(model) {
  reg <- model$registry
  keys <- list(batch_key = reg$batch_key, labels_key = reg$labels_key,
               categorical_covariate_keys = reg$categorical_covariate_keys,
               continuous_covariate_keys = reg$continuous_covariate_keys)
  columns <- .setup_columns(lapply(keys, function(k) unlist(.py_value(k))))
  if (length(columns)) columns else FALSE
}

# ---- outputs shared by verbs -------------------------------------------------------------------

.out_latent <- function(model, adata, a, plan, cells) {
  latent <- .py_value(.py_call(model$get_latent_representation(adata)))
  rownames(latent) <- unlist(.py_value(adata$obs_names$tolist()))
  list(latent = latent)
}

# The linear decoder's gene loadings (genes x latent dimensions).
.out_loadings <- function(model, adata, a, plan, cells) {
  loadings <- .py_value(.py_call(model$get_loadings())$to_numpy())
  rownames(loadings) <- .model_genes(model)
  list(loadings = loadings)
}

# ---- ecosystem adapters ------------------------------------------------------------------------
# Each adapter: name, what (the kind of record holder, for messages), model_arg (the verb
# argument naming the record), check(object), input(object, a, proteins) -> list(counts,
# proteins), anndata(object, input, features, columns), recorded(object, where, fit_by) ->
# list(record, input), columns(object) (metadata column names), write(object, results,
# record, plan, a, verbose).

.columns_arg <- function(columns) if (length(columns) && !isFALSE(columns)) columns else FALSE

.seurat <- list(
  name = "seurat",
  what = "reduction",
  model_arg = "reduction",
  check = function(object) {
    if (!inherits(object, "Seurat")) stop("`object` must be a Seurat object", call. = FALSE)
  },
  input = function(object, a, proteins) {
    list(counts = .or_default(a$assay, SeuratObject::DefaultAssay(object)),
         proteins = if (proteins) a$protein_assay)
  },
  anndata = function(object, input, features, columns) {
    as_anndata(object, assay = input$counts, features = features,
               metadata = .columns_arg(columns), reductions = FALSE,
               protein_assay = input$proteins)
  },
  recorded = function(object, reduction, fit_by) {
    if (!reduction %in% SeuratObject::Reductions(object)) {
      stop("reduction '", reduction, "' not found; run ", fit_by, " first (reductions: ",
           .show_some(SeuratObject::Reductions(object), 20), ")", call. = FALSE)
    }
    misc <- SeuratObject::Misc(object[[reduction]])
    if (is.null(misc$model_dir)) {
      stop("reduction '", reduction, "' was not made by cellvi (no model_dir in its misc)",
           call. = FALSE)
    }
    list(record = misc, input = list(counts = SeuratObject::DefaultAssay(object[[reduction]]),
                                     proteins = misc$protein_assay))
  },
  columns = function(object) .seurat5_columns(object),
  metadata = function(object) object[[]],
  reductions = function(object) SeuratObject::Reductions(object),
  embedding = function(object, name) SeuratObject::Embeddings(object, name),
  prepare = function(object, plan, args, verb, a) .seurat5_split_batch(object, plan, args, verb, a),
  # Before any work: a result assay must not replace the counts it is computed from.
  check_outputs = function(plan, a) {
    inputs <- c(plan$input$counts, plan$input$proteins)
    for (arg in c("assay.name", "protein.assay.name")) {
      name <- get0(arg, envir = a, inherits = FALSE)
      if (!is.null(name) && name %in% inputs) {
        stop("`", arg, " = \"", name, "\"` would replace the assay of counts that the model reads; ",
             "choose another name for the result (e.g. the default)", call. = FALSE)
      }
    }
  },
  write = function(object, results, record, plan, a, verbose) {
    if (!is.null(results$latent)) {
      name <- .or_default(plan$latent_name, a$reduction.name)
      key <- .or_default(plan$latent_key, a$reduction.key)
      embeddings <- results$latent[colnames(object), , drop = FALSE]
      colnames(embeddings) <- paste0(key, seq_len(ncol(embeddings)))
      loadings <- results$loadings
      if (is.null(loadings)) {
        loadings <- new("matrix")
      } else {
        colnames(loadings) <- paste0(key, seq_len(ncol(loadings)))
      }
      if (!is.null(plan$input$proteins)) record$protein_assay <- plan$input$proteins
      object[[name]] <- SeuratObject::CreateDimReducObject(
        embeddings = embeddings, loadings = loadings, key = key, assay = plan$input$counts,
        misc = record)
    }
    if (is.null(results$latent) && !is.null(plan$record_name)) {
      object@misc[["cellvi"]][[plan$record_name]] <- record  # a model with no latent space
    }
    for (name in names(results$columns)) object[[name]] <- results$columns[[name]]
    if (!is.null(results$features)) {
      assay <- object[[plan$input$counts]]
      for (name in names(results$features)) {
        assay[[name]] <- .feature_column(results$features, name, rownames(assay))
      }
      object[[plan$input$counts]] <- assay
    }
    for (name in names(results$cell_matrices)) {
      # Keys are alphanumeric plus "_", and feature names have no "_" (as for the proportions
      # assay): Seurat would otherwise warn and change them itself.
      data <- t(results$cell_matrices[[name]])
      rownames(data) <- gsub("_", "-", rownames(data))
      object <- .seurat_add_assay(object, data, name,
                                  key = paste0(gsub("[^[:alnum:]]", "", name), "_"),
                                  like = plan$input$counts)
    }
    names_of <- c(rna = "assay.name", protein = "protein.assay.name")
    for (kind in names(results$assays)) {
      data <- results$assays[[kind]]$data
      name <- a[[names_of[[kind]]]]
      logged <- isTRUE(results$assays[[kind]]$log1p)
      # Seurat's `data` slot holds log-normalized values (what its plots and tests expect).
      object <- .seurat_add_assay(object, if (logged) log1p(data) else data, name,
                                  like = plan$input$counts)
      if (verbose) {
        message("Added assay '", name, "' (", nrow(data), " ",
                .assay_unit(results$assays[[kind]], kind),
                if (logged) "; log1p of the normalized expression in `data`", ")")
      }
    }
    object
  }
)

# A data assay with a valid key (letters and digits, then "_"; by default the name in lower
# case, as Seurat makes it: assay "SCVI" has key "scvi_"); a v5 Assay5 when the assay `like`
# (the counts' assay) is one (seurat5.R).
.seurat_add_assay <- function(object, data, name,
                              key = paste0(tolower(gsub("[^[:alnum:]]", "", name)), "_"),
                              like = NULL) {
  assay <- .seurat_new_assay(object, data, like)
  SeuratObject::Key(assay) <- key
  object[[name]] <- assay
  object
}

.sce <- list(
  name = "sce",
  what = "reducedDim",
  model_arg = "dimred",
  check = function(object) {
    if (!methods::is(object, "SingleCellExperiment")) {
      stop("`x` must be a SingleCellExperiment", call. = FALSE)
    }
    # Results are matched to cells and genes by name.
    .check_unique_names(colnames(object), "cell", "colnames(x)",
                        "colnames(x) <- paste0(\"cell\", seq_len(ncol(x)))")
    .check_unique_names(rownames(object), "gene", "rownames(x)",
                        "rownames(x) <- rowData(x)$<the column of gene names>")
  },
  input = function(object, a, proteins) {
    list(counts = a$assay.type, proteins = if (proteins) a$protein_altexp)
  },
  anndata = function(object, input, features, columns) {
    as_anndata(object, assay.type = input$counts, features = features,
               metadata = .columns_arg(columns), reductions = FALSE,
               protein_altexp = input$proteins)
  },
  recorded = function(x, dimred, fit_by) {
    records <- S4Vectors::metadata(x)$cellvi
    record <- records[[dimred]]
    if (is.null(record)) {
      stop("no cellvi model recorded for reducedDim '", dimred, "'; run ", fit_by, " first",
           if (length(records)) {
             paste0(" (models recorded on this object, under the name their verb gave them even ",
                    "if the reducedDim was renamed since: ", .show_some(names(records), 10), ")")
           }, call. = FALSE)
    }
    list(record = record, input = list(counts = record$assay.type,
                                       proteins = record$protein_altexp))
  },
  columns = function(x) colnames(SummarizedExperiment::colData(x)),
  metadata = function(x) as.data.frame(SummarizedExperiment::colData(x), optional = TRUE),
  reductions = function(x) .sce_reduced_dim_names(x),
  embedding = function(x, name) SingleCellExperiment::reducedDim(x, name),
  write = function(x, results, record, plan, a, verbose) {
    if (!is.null(results$latent)) {
      name <- .or_default(plan$latent_name, a$name)
      latent <- results$latent[colnames(x), , drop = FALSE]
      colnames(latent) <- paste0(name, "_", seq_len(ncol(latent)))
      if (!is.null(results$loadings)) {
        loadings <- results$loadings
        colnames(loadings) <- paste0(name, "_", seq_len(ncol(loadings)))
        attr(latent, "rotation") <- loadings
      }
      SingleCellExperiment::reducedDim(x, name) <- latent
      record$assay.type <- plan$input$counts
      if (!is.null(plan$input$proteins)) record$protein_altexp <- plan$input$proteins
      meta <- S4Vectors::metadata(x)
      meta$cellvi[[name]] <- record
      S4Vectors::metadata(x) <- meta
    }
    if (is.null(results$latent) && !is.null(plan$record_name)) {
      record$assay.type <- plan$input$counts
      meta <- S4Vectors::metadata(x)
      meta$cellvi[[plan$record_name]] <- record  # a model with no latent space
      S4Vectors::metadata(x) <- meta
    }
    for (name in names(results$columns)) {
      SummarizedExperiment::colData(x)[[name]] <- results$columns[[name]]
    }
    for (name in names(results$features)) {
      SummarizedExperiment::rowData(x)[[name]] <- .feature_column(results$features, name,
                                                                  rownames(x))
    }
    for (name in names(results$cell_matrices)) {
      SummarizedExperiment::colData(x)[[name]] <- results$cell_matrices[[name]]
    }
    for (kind in names(results$assays)) {
      x <- .sce_add_assay(x, results$assays[[kind]], kind, a$name, plan$input$proteins, verbose,
                          counts_assay = plan$input$counts)
    }
    x
  }
)

# Names that results are matched by: present and unique.
.check_unique_names <- function(names, what, accessor, example) {
  if (is.null(names)) {
    stop("the SingleCellExperiment has no ", what, " names (", accessor, " is NULL); name them ",
         "first, e.g. ", example, call. = FALSE)
  }
  .refuse_duplicated(names, what, accessor)
}

# Column `name` of a per-feature result, named and in the order of `features` (NA where the
# result has no row).
.feature_column <- function(table, name, features) {
  column <- table[[name]][match(features, rownames(table))]
  names(column) <- features
  column
}

# What the rows of an assay result are, for messages: its `unit`, else genes or proteins.
.assay_unit <- function(result, kind) {
  .or_default(result$unit, if (kind == "rna") "genes" else "proteins")
}

# Normalized expression into an SCE: genes as an assay of `x` (all genes, in its order) or else
# an altExp `name`; proteins as an assay of the protein altExp (all its proteins) or else an
# altExp `<name>_<altexp>`.
.sce_add_assay <- function(x, result, kind, name, protein_altexp, verbose, counts_assay = NULL) {
  data <- result$data
  if (isTRUE(result$log1p)) data <- log1p(data)
  if (kind == "rna") {
    if (isTRUE(result$whole) && identical(rownames(data), rownames(x))) {
      if (identical(name, counts_assay)) {
        stop("`name = \"", name, "\"` would replace the assay of counts that the model reads; ",
             "choose another name for the result (e.g. the default)", call. = FALSE)
      }
      SummarizedExperiment::assay(x, name) <- data
    } else {
      # The altExp's assay is named by the result (default "normalized": expression).
      assays <- stats::setNames(list(data), .or_default(result$assay_name, "normalized"))
      SingleCellExperiment::altExp(x, name) <- SummarizedExperiment::SummarizedExperiment(
        assays = assays)
    }
    if (verbose) message("Added '", name, "' (", nrow(data), " ", .assay_unit(result, kind), ")")
    return(x)
  }
  alt <- if (protein_altexp %in% SingleCellExperiment::altExpNames(x)) {
    SingleCellExperiment::altExp(x, protein_altexp)
  }
  if (isTRUE(result$whole) && !is.null(alt) && identical(rownames(data), rownames(alt))) {
    if (identical(name, "counts")) {
      stop("`name = \"counts\"` would replace the protein counts of altExp '", protein_altexp,
           "'; choose another name for the result (e.g. the default)", call. = FALSE)
    }
    dimnames(data) <- dimnames(alt)
    SummarizedExperiment::assay(alt, name) <- data
    SingleCellExperiment::altExp(x, protein_altexp) <- alt
    if (verbose) {
      message("Added assay '", name, "' to altExp '", protein_altexp, "' (", nrow(data),
              " proteins)")
    }
  } else {
    alt_name <- paste0(name, "_", protein_altexp)
    SingleCellExperiment::altExp(x, alt_name) <- SummarizedExperiment::SummarizedExperiment(
      assays = list(normalized = data))
    if (verbose) message("Added '", alt_name, "' (", nrow(data), " proteins)")
  }
  x
}

# The adapter of a query given as either kind of object.
.eco_of <- function(object, what = "`query`") {
  if (inherits(object, "Seurat")) return(.seurat)
  if (methods::is(object, "SingleCellExperiment")) return(.sce)
  stop(what, " must be a Seurat object or a SingleCellExperiment", call. = FALSE)
}

# The counts a verb reads from its second object, a reference of either kind (adapter
# `ref_eco`), named by one argument (`arg`, "reference_assay") whatever the verb's own
# ecosystem: for a Seurat reference an assay (default: its default assay), for a
# SingleCellExperiment an assay (default "counts"). Checked before anything is converted;
# list(counts = the name), the input of ref_eco$anndata().
.reference_input <- function(ref_eco, reference, assay, arg = "reference_assay") {
  seurat <- ref_eco$name == "seurat"
  counts <- if (is.null(assay)) {
    if (seurat) SeuratObject::DefaultAssay(reference) else "counts"
  } else {
    .arg_name(assay, arg)
  }
  available <- if (seurat) {
    SeuratObject::Assays(reference)
  } else {
    SummarizedExperiment::assayNames(reference)
  }
  if (!counts %in% available) {
    stop("the reference has no assay '", counts, "' (", arg, "); its assays: ",
         .show_some(available, 20), ". Pass ", arg, " = the ",
         if (seurat) "Seurat assay" else "SingleCellExperiment assay",
         " of the reference's raw counts", call. = FALSE)
  }
  list(counts = counts)
}
