# Hyperparameter search on the Python core's cellvi.autotune (Optuna): the search-space
# specifications, .tune_verb() and TuneSCVI / tuneSCVI. A tune verb is an ordinary verb of the
# shared path (.run_verb, aaa-verbs.R) whose fit step runs the search: .tune_verb() turns any
# model's verb declaration into its tune verb, so another model's TuneX() is one declaration
# next to its RunX() (`.tune_x_verb <- .tune_verb(.x_verb)`, in the model's file, which R
# collates after this one) plus its R function. TuneLinearSCVI (scvi.R), TuneSCANVI
# (scanvi.R), TuneTOTALVI (totalvi.R) and TunePEAKVI (peakvi.R) are made so.

# ---- search-space specifications ---------------------------------------------------------------

.tune_spec <- function(kind, ...) structure(list(kind = kind, ...), class = "cellvi_tune_spec")

# Whole numbers stay integers in Python (n_latent = 10, not 10.0).
.as_values <- function(values) {
  if (is.numeric(values) && all(is.finite(values)) && all(values == round(values))) {
    values <- as.integer(values)
  }
  as.list(values)
}

#' Search-space specifications for hyperparameter search
#'
#' Describe the values a parameter may take in [TuneSCVI()]'s `search_space`:
#' `tune_choice()` one of several values, `tune_uniform()` a number drawn uniformly,
#' `tune_loguniform()` a positive number whose logarithm is uniform (learning rates),
#' `tune_randint()` a whole number from `low` to `high` (both included).
#'
#' @param values Values to choose from (numbers, strings or logicals).
#' @param low,high The range.
#' @return A specification (a list of class `cellvi_tune_spec`) for `search_space`.
#' @seealso [TuneSCVI()]
#' @examples
#' space <- list(model_params = list(n_latent = tune_choice(c(10, 20, 30)),
#'                                   gene_likelihood = tune_choice(c("nb", "zinb"))),
#'               train_params = list(lr = tune_loguniform(1e-4, 1e-2)))
#' str(space$model_params$n_latent)
#' @export
tune_choice <- function(values) {
  if (!length(values) || anyNA(values) || !(is.numeric(values) || is.character(values) ||
                                            is.logical(values))) {
    stop("`values` must be a non-empty vector of numbers, strings or logicals, not ",
         .show(values), call. = FALSE)
  }
  .tune_spec("choice", values = .as_values(values))
}

#' @rdname tune_choice
#' @export
tune_uniform <- function(low, high) {
  .tune_spec("uniform", low = .as_number(low, "low"), high = .as_number(high, "high"))
}

#' @rdname tune_choice
#' @export
tune_loguniform <- function(low, high) {
  .tune_spec("loguniform", low = .as_number(low, "low", lower = .Machine$double.xmin),
             high = .as_number(high, "high"))
}

#' @rdname tune_choice
#' @export
tune_randint <- function(low, high) {
  .tune_spec("randint", low = .as_count(low, "low", minimum = -.Machine$integer.max),
             high = .as_count(high, "high", minimum = -.Machine$integer.max))
}

# The search space as Python gets it: a dict of sections of specs (NULL: the model's default).
.check_space <- function(space) {
  if (is.null(space)) return(NULL)
  if (!is.list(space) || is.null(names(space)) || any(names(space) == "")) {
    stop("`search_space` must be a named list with `model_params` and/or `train_params`, not ",
         .show(space), call. = FALSE)
  }
  bad <- setdiff(names(space), c("model_params", "train_params"))
  if (length(bad)) {
    stop("`search_space` has unknown section(s) ", paste(bad, collapse = ", "),
         "; use `model_params` (model settings) and `train_params` (training settings)",
         call. = FALSE)
  }
  lapply(space, function(section) {
    if (!is.list(section) || (length(section) && is.null(names(section)))) {
      stop("each section of `search_space` must be a named list of tune_choice(), ",
           "tune_uniform(), tune_loguniform() or tune_randint()", call. = FALSE)
    }
    lapply(names(section), function(n) {
      if (!inherits(section[[n]], "cellvi_tune_spec")) {
        stop("`search_space` entry `", n, "` must be made with tune_choice(), tune_uniform(), ",
             "tune_loguniform() or tune_randint(), not ", .show(section[[n]]), call. = FALSE)
      }
    })
    lapply(section, unclass)
  })
}

# ---- the tune verb ---------------------------------------------------------------------------

# One string, or NULL.
.as_string <- function(x, name, what) {
  if (is.null(x)) return(NULL)
  if (!is.character(x) || length(x) != 1L || is.na(x) || !nzchar(x)) {
    stop("`", name, "` must be NULL or ", what, ", not ", .show(x), call. = FALSE)
  }
  x
}

# Arguments of the search (sent to cellvi.autotune.run_autotune).
.tune_args <- list(
  metric = .arg_choice("marginal_ll", "elbo_validation", "reconstruction_validation"),
  num_samples = .arg_count(), test_size = .arg_number(0, 1), max_epochs = .arg_count(null_ok = TRUE),
  scheduler = function(x, name) {
    if (is.null(x) || identical(x, "none")) return(NULL)
    .as_choice(x, name, c("asha", "median", "none"))
  },
  n_jobs = .arg_count(), study_name = function(x, name) .as_string(x, name, "one name"),
  storage = function(x, name) .as_string(x, name, "one database URL"),
  save_dir = function(x, name) if (is.null(x)) NULL else path.expand(as.character(x)))

# Optuna is an optional dependency of the core: say how to add it to cellvi's environment.
.optuna_available <- function() reticulate::py_module_available("optuna")

.check_optuna <- function(available = .optuna_available()) {
  if (!isTRUE(available)) {
    stop("hyperparameter search needs Optuna in cellvi's Python environment; install it with ",
         "cellvi::install_cellvi(extra_packages = \"optuna\") (or pip install ",
         "'cellvi[autotune]'); a PostgreSQL `storage` also needs ",
         "extra_packages = c(\"optuna\", \"psycopg[binary]\")", call. = FALSE)
  }
  invisible(TRUE)
}

# Names of the parameters the search varies: those of `space`, or (NULL) of the model's
# default space (cellvi.autotune.default_search_space).
.searched_names <- function(space, tune, cls) {
  if (!is.null(space)) return(unlist(lapply(space, names), use.names = FALSE))
  default <- tune$default_search_space(cls)
  builtins <- reticulate::import_builtins(convert = TRUE)
  unlist(lapply(c("model_params", "train_params"),
                function(section) builtins$list(reticulate::py_get_item(default, section))))
}

# A model or train argument the user set (a value other than the verb's default) that the
# search varies: its value would be silently replaced in every trial, so say so.
.warn_overridden <- function(a, names) {
  caller <- .cellvi_env$caller$name
  f <- if (!is.null(caller)) get0(caller, envir = asNamespace("cellvi"), mode = "function")
  if (is.null(f) || !length(names)) return(invisible())
  defaults <- formals(f)
  given <- Filter(function(n) {
    n %in% names(defaults) && exists(n, envir = a, inherits = FALSE) &&
      !isTRUE(all.equal(a[[n]], eval(defaults[[n]], baseenv())))
  }, names)
  if (length(given)) {
    many <- length(given) > 1L
    shown <- paste0(given, " = ", vapply(given, function(n) .show(a[[n]]), ""), collapse = ", ")
    warning("the search varies ", paste(given, collapse = ", "), ", so ", shown,
            if (many) " are" else " is", " not used; to keep ", if (many) "them" else "it",
            " fixed, give a `search_space` without ", if (many) "them" else "it", call. = FALSE)
  }
  invisible()
}

# The tune verb of a model verb: same setup and fixed model / train arguments; the search's
# own arguments; fit = run the search (then, with fit_best, train the best settings on all
# cells); outputs = the trials table, or the model's outputs on the object with fit_best.
.tune_verb <- function(verb) {
  tuned <- verb
  tuned$options <- c(verb$options, .tune_args)
  tuned$outputs <- list(function(model, adata, a, plan, cells) {
    if (!isTRUE(a$fit_best)) return(list(table = plan$state$trials))
    out <- list()
    for (output in verb$outputs) out <- c(out, output(model, adata, a, plan, cells))
    out
  })
  tuned$plan <- function(plan, eco, object, a, args) {
    if (!is.null(verb$plan)) plan <- verb$plan(plan, eco, object, a, args)
    .as_flag(a$fit_best, "fit_best")
    space <- .check_space(a$search_space)
    # Before anything is converted or started.
    .check_optuna()
    cv <- .core()
    cls <- cv[[plan$model]]
    tune <- reticulate::import("cellvi.autotune", convert = FALSE)
    searched <- .searched_names(space, tune, cls)
    .warn_overridden(a, intersect(searched, c(names(verb$model_args), names(verb$train_args))))
    state <- new.env()
    plan$state <- state
    plan$fit <- function(adata, args, seed, model_dir, verbose) {
      .py_call(do.call(cls$setup_anndata, c(list(adata), args$setup)))
      opts <- args$options
      # Arguments given to the verb are fixed for every trial, unless searched.
      fixed_model <- args$model_args[setdiff(names(args$model_args), searched)]
      fixed_train <- args$train_args[setdiff(names(args$train_args),
                                             c(searched, "max_epochs", "progress_bar"))]
      old_bar <- .py_value(cv$settings$progress_bar)
      cv$settings$progress_bar <- FALSE
      on.exit(cv$settings$progress_bar <- old_bar, add = TRUE)
      res <- .py_call(tune$run_autotune(
        cls, adata, metric = opts$metric, search_space = space, num_samples = opts$num_samples,
        test_size = opts$test_size, max_epochs = opts$max_epochs, scheduler = opts$scheduler,
        seed = .as_count(.or_default(seed, 0L), "seed", minimum = 0L), storage = opts$storage,
        study_name = opts$study_name, n_jobs = opts$n_jobs, save_dir = opts$save_dir,
        model_kwargs = fixed_model, train_kwargs = fixed_train, verbose = verbose))
      trials <- .py_df_to_r(res$results)
      rownames(trials) <- NULL
      best <- .py_value(res$best_params)
      attr(trials, "best_params") <- best
      attr(trials, "run_dir") <- .py_value(res$run_dir)
      attr(trials, "study_name") <- .py_value(res$study_name)
      state$trials <- trials
      record <- list(autotune = list(study_name = .py_value(res$study_name),
                                     run_dir = .py_value(res$run_dir),
                                     best_params = best, trials = trials))
      if (!isTRUE(a$fit_best)) {
        # A table is returned, no object: nothing to store. The best trial's model stays in
        # the run directory (attr(, "run_dir")).
        if (!is.null(model_dir)) {
          warning("`model_dir` is not used with fit_best = FALSE: the trials' models are in the ",
                  "run directory, attr(result, \"run_dir\")", call. = FALSE)
        }
        return(list(model = res$model, dir = NULL, record = record))
      }
      # The best settings, trained on every cell of the object.
      best_args <- args
      best_args$model_args <- utils::modifyList(args$model_args, as.list(best$model_params))
      best_args$train_args <- utils::modifyList(args$train_args, as.list(best$train_params))
      best_args$train_args$max_epochs <- .or_default(best_args$train_args$max_epochs,
                                                     opts$max_epochs)
      best_args$setup <- args$setup
      if (verbose) message("Fitting the best settings on all cells")
      # seeded afresh, as the trials were: the fit does not depend on how many trials ran
      fit <- .with_seed(seed, .fit_model(adata, plan$model, best_args, model_dir, verbose))
      # The record names the settings the model was trained with: the best ones.
      fit$record <- c(record, list(model_args = best_args$model_args,
                                   train_args = best_args$train_args))
      fit
    }
    plan
  }
  tuned
}

# TuneSCVI's declaration, .tune_scvi_verb, is next to RunSCVI's (scvi.R).

#' Hyperparameter search for scVI on a Seurat object
#'
#' Searches scVI's settings (by default learning rate, depth, width, latent size, dropout
#' and the count likelihood) with Optuna: each trial trains on the same 75% of the cells and
#' is scored on the same held-out 25% (`test_size`), by default by the held-out marginal
#' log-likelihood. The first trial is always the model's defaults, so the table shows what
#' tuning gained. Unpromising trials are stopped early (`scheduler`).
#'
#' The search is kept in a database: by default a SQLite file in `save_dir/study_name`, so
#' calling again with the same `study_name` adds trials to it. With a PostgreSQL `storage`,
#' workers on other machines join the same search (`python -m cellvi.autotune worker
#' --storage URL --study-name NAME --adata data.h5ad`; see the README).
#'
#' Every model with a default search space has its tune verb, with the setup and model
#' arguments of its Run verb: [TuneLinearSCVI()], [TuneSCANVI()], [TuneTOTALVI()],
#' [TunePEAKVI()] (and `tuneX()` for a SingleCellExperiment). Model arguments (`n_latent`,
#' ...) are fixed for every trial unless the search varies them (a value given for a searched
#' argument is not used, with a warning).
#'
#' @inheritParams cellvi-params
#' @param search_space `NULL` (the model's default space; for scVI: `lr`, `n_layers`,
#'   `n_hidden`, `n_latent`, `dropout_rate`, `gene_likelihood`) or a list with
#'   `model_params` and/or `train_params`, each a named list of [tune_choice()],
#'   [tune_uniform()], [tune_loguniform()] or [tune_randint()]. Names are those of the
#'   Python model and its `train()`; an unknown name is an error before anything runs.
#' @param metric `"marginal_ll"` (held-out log-likelihood, higher is better),
#'   `"elbo_validation"` (held-out ELBO) or `"reconstruction_validation"` (held-out
#'   reconstruction loss, lower is better).
#' @param num_samples Number of trials to run (added to those the study already holds).
#' @param max_epochs Epochs per trial (`NULL`: the model's default for the training cells;
#'   lower it for a faster search).
#' @param test_size Fraction of cells held out for scoring.
#' @param scheduler Early stopping of unpromising trials from the held-out value after each
#'   epoch: `"asha"` (asynchronous successive halving), `"median"` or `"none"`.
#' @param n_jobs Local worker processes; each gets `cores / n_jobs` threads.
#' @param storage `NULL` (a SQLite file in the run directory) or a database URL such as
#'   `"postgresql://user:password@host:5432/dbname"`.
#' @param study_name Name of the study (default `"<model>_<metric>"`, e.g.
#'   `"SCVI_marginal_ll"`); the same name resumes it.
#' @param save_dir Where run directories go (default `"cellvi_autotune"` in the working
#'   directory); a run directory holds the study, the best model, a plot of the search
#'   (`search.png`) and worker logs.
#' @param fit_best `FALSE`: return the trials table. `TRUE`: train the model with the best
#'   settings on all cells and return the object with what its Run verb adds (for scVI the
#'   reduction of [RunSCVI()]; see Value), the search recorded with the model (the
#'   reduction's `misc$autotune`; SCE: `metadata(x)$cellvi[[name]]$autotune`).
#' @param batch_size Cells per minibatch (the same for every trial).
#' @param seed Seed of the split, of every trial and of the search (default 0).
#' @param verbose Print a line per finished trial and messages.
#' @return With `fit_best = FALSE`, a data.frame with one row per trial: `trial` (0: the
#'   model's defaults), `state` (`"complete"`, `"pruned"`, `"fail"`), `metric`, `epochs`,
#'   `seconds`, `defaults`, the searched parameters, `error` and `duplicate_of` (the trial
#'   whose parameters this one repeats, its result reused without training; -1 for none);
#'   attributes `best_params` (a
#'   list of `model_params` and `train_params`), `run_dir` and `study_name`. With
#'   `fit_best = TRUE`, the Seurat object with the reduction added.
#' @seealso [tune_choice()] for search spaces, [RunSCVI()] to fit chosen settings;
#'   [TuneLinearSCVI()], [TuneSCANVI()], [TuneTOTALVI()], [TunePEAKVI()] for other models.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- SeuratObject::pbmc_small
#'   space <- list(model_params = list(n_latent = tune_choice(c(5, 10))),
#'                 train_params = list(lr = tune_loguniform(1e-3, 1e-2)))
#'   trials <- TuneSCVI(pbmc, search_space = space, num_samples = 3, max_epochs = 5,
#'                      save_dir = tempfile("tune"), verbose = FALSE)
#'   trials[, c("trial", "state", "metric", "n_latent", "lr")]
#'   attr(trials, "best_params")
#'   # train the best settings on all cells and keep the reduction
#'   pbmc <- TuneSCVI(pbmc, search_space = space, num_samples = 3, max_epochs = 5,
#'                    save_dir = tempfile("tune"), fit_best = TRUE, verbose = FALSE)
#'   SeuratObject::Misc(pbmc[["scvi"]])$autotune$best_params
#' }
#' }
#' @export
TuneSCVI <- function(object, assay = NULL, features = NULL, batch_key = NULL,
                     labels_key = NULL, categorical_covariate_keys = NULL,
                     continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                     n_layers = 1, dropout_rate = 0.1, gene_likelihood = "zinb",
                     dispersion = "gene", search_space = NULL,
                     metric = "marginal_ll", num_samples = 20, max_epochs = NULL,
                     test_size = 0.25, scheduler = "asha", n_jobs = 1, storage = NULL,
                     study_name = NULL, save_dir = NULL, fit_best = FALSE, batch_size = 128,
                     device = "auto", seed = 0, model_dir = NULL, model_kwargs = list(),
                     reduction.name = "scvi", reduction.key = "scVI_", verbose = TRUE) {
  .run_verb(.seurat, object, .tune_scvi_verb, environment())
}

#' Hyperparameter search for scVI on a SingleCellExperiment
#'
#' As [TuneSCVI()], for a SingleCellExperiment: returns the trials table, or with
#' `fit_best = TRUE` the object with the best settings' latent space as a reducedDim (as
#' [runSCVI()]), the search recorded in `metadata(x)$cellvi[[name]]$autotune`.
#'
#' @inheritParams TuneSCVI
#' @inheritParams cellvi-params
#' @return A data.frame of trials, or `x` with the reducedDim added (`fit_best = TRUE`).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   trials <- tuneSCVI(sce, search_space = list(train_params = list(
#'     lr = tune_loguniform(1e-3, 1e-2))), num_samples = 3, max_epochs = 5,
#'     save_dir = tempfile("tune"), verbose = FALSE)
#'   trials[, c("trial", "state", "metric", "lr")]
#' }
#' }
#' @rdname tuneSCVI-sce
#' @export
tuneSCVI <- function(x, assay.type = "counts", features = NULL, batch_key = NULL,
                     labels_key = NULL, categorical_covariate_keys = NULL,
                     continuous_covariate_keys = NULL, n_latent = 10, n_hidden = 128,
                     n_layers = 1, dropout_rate = 0.1, gene_likelihood = "zinb",
                     dispersion = "gene", search_space = NULL,
                     metric = "marginal_ll", num_samples = 20, max_epochs = NULL,
                     test_size = 0.25, scheduler = "asha", n_jobs = 1, storage = NULL,
                     study_name = NULL, save_dir = NULL, fit_best = FALSE, batch_size = 128,
                     device = "auto", seed = 0, model_dir = NULL, model_kwargs = list(),
                     name = "scVI", verbose = TRUE) {
  .run_verb(.sce, x, .tune_scvi_verb, environment())
}
