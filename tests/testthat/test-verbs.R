# The one path of every verb (aaa-verbs.R): here, a verb's `seed`, which must hold for that
# call only (.with_seed()).

# The core's seed setting (NULL: not seeded) and a draw from torch's global stream.
core_seed <- function() reticulate::py_to_r(reticulate::import("cellvi", convert = FALSE)$settings$seed)
torch_draw <- function() {
  reticulate::py_to_r(reticulate::import("torch", convert = FALSE)$rand(1L)$item())
}

# Sets the core's seed (as a user would: seeding torch, numpy and `random`).
set_core_seed <- function(value) {
  settings <- reticulate::import("cellvi", convert = FALSE)$settings
  settings$seed <- value
  invisible()
}

test_that(".with_seed() sets the seed for its expression only and puts the setting back unseeded", {
  skip_if_no_core()
  set_core_seed(5L)
  after_5 <- torch_draw()  # the first draw after seeding 5
  set_core_seed(5L)
  expect_equal(torch_draw(), after_5)
  set_core_seed(5L)
  expect_equal(cellvi:::.with_seed(1L, core_seed()), 1L)
  expect_equal(core_seed(), 5L)
  # put back as a value, not by seeding torch with 5 again (the draws would repeat)
  expect_false(isTRUE(all.equal(torch_draw(), after_5)))
  expect_error(cellvi:::.with_seed(2L, stop("failed inside")), "failed inside")
  expect_equal(core_seed(), 5L)
  expect_equal(cellvi:::.with_seed(NULL, core_seed()), 5L)  # NULL: the setting as it is
  expect_error(cellvi:::.with_seed(-1, NULL), "seed")
  expect_equal(core_seed(), 5L)
  set_core_seed(NULL)
})

test_that("a verb's seed does not stay in force for later verbs", {
  skip_if_no_core()
  set_core_seed(NULL)
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 1, seed = 1, verbose = FALSE)
  expect_null(core_seed())
  # a markers verb seeds its sampling (from R's stream without `seed`) and puts the user's
  # setting back without seeding torch with it again
  set_core_seed(5L)
  after_5 <- torch_draw()
  set_core_seed(5L)
  FindMarkersSCVI(pbmc, ident.1 = "0", features = "CD3E", n_samples = 20, seed = 7,
                  logfc.threshold = 0, min.pct = 0, verbose = FALSE)
  expect_equal(core_seed(), 5L)
  expect_false(isTRUE(all.equal(torch_draw(), after_5)))
  # the Tune verbs' default seed (0) holds for the search only
  skip_if_not(reticulate::py_module_available("optuna"), "optuna not installed")
  set_core_seed(NULL)
  TuneSCVI(SeuratObject::pbmc_small, num_samples = 1, max_epochs = 1,
           save_dir = tempfile("tune"), verbose = FALSE)
  expect_null(core_seed())
  set_core_seed(NULL)
})

test_that("device takes a GPU's number, as Python does, and refuses what torch would not", {
  expect_equal(cellvi:::.arg_device("cuda:1", "device"), "cuda:1")
  expect_equal(cellvi:::.arg_device("cpu", "device"), "cpu")
  expect_error(cellvi:::.arg_device("gpu", "device"), "cuda:N")
  expect_error(cellvi:::.arg_device("cuda:x", "device"), "cuda:N")
  expect_error(cellvi:::.arg_device(c("cpu", "cuda"), "device"), "cuda:N")
})
