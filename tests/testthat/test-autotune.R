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
