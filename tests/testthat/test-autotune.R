test_that("search-space specifications are checked in R", {
  expect_equal(unclass(tune_choice(c(10, 20))), list(kind = "choice", values = list(10L, 20L)))
  expect_equal(tune_choice("nb")$values, list("nb"))  # one value stays a list in Python
  expect_equal(tune_loguniform(1e-4, 1e-2)$kind, "loguniform")
  expect_error(tune_choice(list()), "non-empty vector")
  expect_error(tune_uniform("a", 1), "`low` must be a single number")
  expect_error(cellvi:::.check_space(list(model = list())), "unknown section")
  expect_error(cellvi:::.check_space(list(model_params = list(n_latent = c(5, 10)))),
               "must be made with tune_choice")
})

test_that("TuneSCVI returns the trials, or fits the best settings on the object", {
  skip_if_no_core()
  skip_if_not(reticulate::py_module_available("optuna"), "optuna not installed")
  pbmc <- SeuratObject::pbmc_small
  space <- list(model_params = list(n_latent = tune_choice(c(3, 10))),
                train_params = list(lr = tune_loguniform(1e-3, 1e-2)))
  dir <- tempfile("tune")
  trials <- TuneSCVI(pbmc, search_space = space, metric = "elbo_validation", num_samples = 2,
                     max_epochs = 2, scheduler = "none", save_dir = dir, verbose = FALSE)
  expect_s3_class(trials, "data.frame")
  expect_equal(nrow(trials), 2L)
  expect_true(trials$defaults[1])
  expect_equal(trials$n_latent[1], 10)  # trial 0: scVI's defaults
  expect_true(all(trials$state == "complete") && all(trials$epochs == 2))
  best <- attr(trials, "best_params")
  expect_setequal(names(best), c("model_params", "train_params"))
  expect_equal(max(trials$metric), trials$metric[trials$n_latent == best$model_params$n_latent &
                                                   trials$lr == best$train_params$lr][1])
  expect_true(file.exists(file.path(attr(trials, "run_dir"), "study.db")))

  out <- TuneSCVI(pbmc, search_space = space, metric = "elbo_validation", num_samples = 2,
                  max_epochs = 2, scheduler = "none", save_dir = tempfile("tune"),
                  fit_best = TRUE, seed = 1, verbose = FALSE)
  misc <- SeuratObject::Misc(out[["scvi"]])
  expect_equal(ncol(SeuratObject::Embeddings(out[["scvi"]])),
               as.integer(misc$autotune$best_params$model_params$n_latent))
  expect_equal(nrow(misc$autotune$trials), 2L)
  expect_error(TuneSCVI(pbmc, search_space = list(model_params = list(n_latents =
                 tune_choice(c(5, 10)))), num_samples = 1, max_epochs = 1, verbose = FALSE),
               "takes no model parameter")
})

# ---- the tune verbs of the other models (one shared path: .tune_verb) -------------------------

skip_if_no_optuna <- function() {
  skip_if_no_core()
  skip_if_not(reticulate::py_module_available("optuna"), "optuna not installed")
}

# A tiny search: two trials of two epochs over one parameter.
tiny_search <- function(values = c(3, 5), name = "n_latent") {
  list(model_params = stats::setNames(list(tune_choice(values)), name))
}

# The trials table of a tiny search: two complete trials, trial 0 the model's defaults, the
# searched column, and best_params naming the trial with the highest metric.
expect_tiny_trials <- function(trials, name = "n_latent", default = NULL) {
  expect_s3_class(trials, "data.frame")
  expect_equal(nrow(trials), 2L)
  expect_true(all(c("trial", "state", "metric", "epochs", "seconds", "defaults", name) %in%
                    names(trials)))
  expect_equal(trials$trial, 0:1)
  expect_true(trials$defaults[1])
  if (!is.null(default)) expect_equal(trials[[name]][1], default)
  expect_true(all(trials$state == "complete") && all(trials$epochs == 2))
  best <- attr(trials, "best_params")
  expect_setequal(names(best), c("model_params", "train_params"))
  expect_equal(names(best$model_params), name)
  expect_equal(best$model_params[[name]], trials[[name]][which.max(trials$metric)])
  expect_true(file.exists(file.path(attr(trials, "run_dir"), "study.db")))
}

tune_quick <- function(verb, object, ...) {
  verb(object, ..., num_samples = 2, max_epochs = 2, scheduler = "none",
       save_dir = tempfile("tune"), verbose = FALSE)
}

unknown_space <- list(model_params = list(n_latents = tune_choice(c(5, 10))))
unknown_error <- "takes no model parameter|does not take model parameter"

test_that("a missing Optuna is an error that names the install command, before anything runs", {
  expect_error(cellvi:::.check_optuna(FALSE),
               'cellvi::install_cellvi(extra_packages = "optuna")', fixed = TRUE)
  expect_error(cellvi:::.check_optuna(FALSE), 'extra_packages = c("optuna", "psycopg[binary]")',
               fixed = TRUE)  # what a PostgreSQL storage needs too
  expect_true(cellvi:::.check_optuna(TRUE))
  skip_if_no_core()
  real <- cellvi:::.optuna_available
  assignInNamespace(".optuna_available", function() FALSE, "cellvi")
  tryCatch(
    expect_error(TuneLinearSCVI(SeuratObject::pbmc_small, verbose = FALSE),
                 'install it with cellvi::install_cellvi(extra_packages = "optuna")', fixed = TRUE),
    finally = assignInNamespace(".optuna_available", real, "cellvi"))
})

test_that("TuneLinearSCVI / tuneLinearSCVI search LDVAE; fit_best adds reduction and loadings", {
  skip_if_no_optuna()
  pbmc <- SeuratObject::pbmc_small
  expect_tiny_trials(tune_quick(TuneLinearSCVI, pbmc, search_space = tiny_search()),
                     default = 10)
  out <- tune_quick(TuneLinearSCVI, pbmc, search_space = tiny_search(), fit_best = TRUE,
                    seed = 1)
  misc <- SeuratObject::Misc(out[["ldvae"]])
  best <- misc$autotune$best_params$model_params$n_latent
  expect_equal(misc$model, "LinearSCVI")
  expect_equal(ncol(SeuratObject::Embeddings(out[["ldvae"]])), as.integer(best))
  expect_equal(dim(SeuratObject::Loadings(out[["ldvae"]])), c(nrow(pbmc), as.integer(best)))
  expect_equal(misc$model_args$n_latent, best)  # the record names the settings trained
  expect_equal(nrow(misc$autotune$trials), 2L)

  sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
  expect_tiny_trials(tune_quick(tuneLinearSCVI, sce, search_space = tiny_search()))
  # a set argument the search varies is not used (said), and an unknown name is an error
  expect_error(expect_warning(
    tuneLinearSCVI(sce, n_latent = 7, search_space = c(tiny_search(), list(train_params = list(
      n_latents = tune_choice(c(5, 10))))), num_samples = 1, max_epochs = 1, verbose = FALSE),
    "the search varies n_latent, so n_latent = 7 is not used"), "takes no parameter")
  expect_error(TuneLinearSCVI(pbmc, search_space = unknown_space, num_samples = 1,
                              max_epochs = 1, verbose = FALSE), unknown_error)
})

test_that("TuneSCANVI / tuneSCANVI search scANVI; fit_best adds reduction and predictions", {
  skip_if_no_optuna()
  pbmc <- pbmc_with_labels()
  expect_tiny_trials(tune_quick(TuneSCANVI, pbmc, labels_key = "labels",
                                search_space = tiny_search()), default = 10)
  expect_error(TuneSCANVI(pbmc, labels_key = "labels", search_space = unknown_space,
                          num_samples = 1, max_epochs = 1, verbose = FALSE), unknown_error)

  sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
  sce$labels <- pbmc$labels
  expect_tiny_trials(tune_quick(tuneSCANVI, sce, labels_key = "labels",
                                search_space = tiny_search()))
  out <- tune_quick(tuneSCANVI, sce, labels_key = "labels", search_space = tiny_search(),
                    fit_best = TRUE, seed = 1)
  record <- S4Vectors::metadata(out)$cellvi$scANVI
  expect_equal(record$model, "SCANVI")
  expect_equal(ncol(SingleCellExperiment::reducedDim(out, "scANVI")),
               as.integer(record$autotune$best_params$model_params$n_latent))
  expect_true(all(c("predicted.labels", "predicted.labels.score") %in% names(out@colData)))
  expect_error(tuneSCANVI(sce, labels_key = "labels", search_space = unknown_space,
                          num_samples = 1, max_epochs = 1, verbose = FALSE), unknown_error)
})

test_that("TuneTOTALVI / tuneTOTALVI search totalVI on RNA and proteins", {
  skip_if_no_optuna()
  cite <- cellvi_dataset("pbmc_cite_small")
  trials <- tune_quick(TuneTOTALVI, cite, search_space = tiny_search(c(1, 2), "n_layers_encoder"),
                       metric = "elbo_validation")
  expect_tiny_trials(trials, "n_layers_encoder")
  expect_error(TuneTOTALVI(cite, search_space = unknown_space, num_samples = 1, max_epochs = 1,
                           verbose = FALSE), unknown_error)

  sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
  expect_tiny_trials(tune_quick(tuneTOTALVI, sce, search_space = tiny_search()), default = 20)
  expect_error(tuneTOTALVI(sce, search_space = unknown_space, num_samples = 1, max_epochs = 1,
                           verbose = FALSE), unknown_error)
})

test_that("TunePEAKVI / tunePEAKVI search PeakVI on region counts", {
  skip_if_no_optuna()
  atac <- cellvi_dataset("bmmc_atac_small")
  # the shipped peaks hold counts: read as open / closed, as RunPEAKVI says
  suppressWarnings(trials <- tune_quick(TunePEAKVI, atac,
                                        search_space = tiny_search(c(1, 2), "n_layers_decoder")))
  expect_tiny_trials(trials, "n_layers_decoder", default = 2)
  expect_error(suppressWarnings(TunePEAKVI(atac, search_space = unknown_space, num_samples = 1,
                                           max_epochs = 1, verbose = FALSE)), unknown_error)

  sce <- cellvi_dataset("bmmc_atac_small", as = "SingleCellExperiment")
  suppressWarnings(trials <- tune_quick(tunePEAKVI, sce,
                                        search_space = tiny_search(c(1, 2), "n_layers_encoder")))
  expect_tiny_trials(trials, "n_layers_encoder", default = 2)
  # PeakVI's n_latent default is NULL (the square-root rule): trial 0 shows what it resolved
  # to for these 2,000 regions (sqrt of n_hidden 44), not NA
  suppressWarnings(trials <- tune_quick(tunePEAKVI, sce, search_space = tiny_search(c(5, 10))))
  expect_tiny_trials(trials, "n_latent", default = 6L)
  expect_error(suppressWarnings(tunePEAKVI(sce, search_space = unknown_space, num_samples = 1,
                                           max_epochs = 1, verbose = FALSE)), unknown_error)
})
