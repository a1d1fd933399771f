# Models kept inside the objects (the default) or in a directory (model_dir), listed and
# removed with cellvi_models() / cellvi_remove_models(). Tests write only to tempdir().

# Runs R `code` in a fresh Rscript process with this session's libraries; its output lines.
run_fresh_r <- function(code) {
  libs <- paste0("c(", paste(sprintf("'%s'", .libPaths()), collapse = ", "), ")")
  script <- tempfile(fileext = ".R")
  writeLines(c(sprintf(".libPaths(%s)", libs), code), script)
  out <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), script, stdout = TRUE,
                                  stderr = TRUE))
  list(output = out, status = .or_status(attr(out, "status")))
}
.or_status <- function(x) if (is.null(x)) 0L else x

user_models_dir <- function() file.path(tools::R_user_dir("cellvi", "data"), "models")

test_that("a model is kept inside the Seurat object and survives saveRDS/readRDS in a fresh R process", {
  skip_if_no_core()
  before <- list.files(user_models_dir())
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 2, seed = 0, verbose = FALSE)
  misc <- SeuratObject::Misc(pbmc[["scvi"]])
  expect_type(misc$model_store$bytes, "raw")
  # saved under this session's temporary directory, nothing in the user's data folder
  expect_true(startsWith(misc$model_dir, normalizePath(tempdir())))
  expect_identical(list.files(user_models_dir()), before)
  models <- cellvi_models(pbmc)
  expect_identical(models$name, "scvi")
  expect_identical(models$model, "SCVI")
  expect_identical(models$stored, "object")
  expect_true(models$size_mb > 0 && models$size_mb < 5)
  expect_true(models$available)

  rds <- tempfile(fileext = ".rds")
  saveRDS(pbmc, rds)
  unlink(misc$model_dir, recursive = TRUE)  # the models folder emptied
  res <- run_fresh_r(c(
    "suppressPackageStartupMessages(library(cellvi))",
    sprintf("pbmc <- readRDS('%s')", rds),
    "pbmc <- NormalizeSCVI(pbmc, features = c('CD3E', 'MS4A1'), verbose = FALSE)",
    "m <- FindMarkersSCVI(pbmc, ident.1 = '0', ident.2 = '1', n_samples = 50, verbose = FALSE)",
    "cat('OK', nrow(SeuratObject::GetAssayData(pbmc, assay = 'SCVI')), ncol(m) > 3,",
    "    cellvi_models(pbmc)$available, '\\n')"))
  expect_identical(res$status, 0L, info = paste(res$output, collapse = "\n"))
  expect_true(any(grepl("^OK 2 TRUE TRUE", res$output)), info = paste(res$output, collapse = "\n"))
  # and in this session too, from the bytes
  out <- NormalizeSCVI(pbmc, features = "CD3E", verbose = FALSE)
  expect_identical(rownames(SeuratObject::GetAssayData(out, assay = "SCVI")), "CD3E")
})

test_that("a model is kept inside the SingleCellExperiment and survives saveRDS/readRDS in a fresh R process", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
  sce <- runSCVI(sce, max_epochs = 2, seed = 0, verbose = FALSE)
  record <- S4Vectors::metadata(sce)$cellvi$scVI
  expect_type(record$model_store$bytes, "raw")
  rds <- tempfile(fileext = ".rds")
  saveRDS(sce, rds)
  unlink(record$model_dir, recursive = TRUE)
  res <- run_fresh_r(c(
    "suppressPackageStartupMessages(library(cellvi))",
    sprintf("sce <- readRDS('%s')", rds),
    "sce <- normalizeSCVI(sce, features = 'CD3E', verbose = FALSE)",
    "cat('OK', SingleCellExperiment::altExpNames(sce), '\\n')"))
  expect_true(any(grepl("^OK scVI_normalized", res$output)), info = paste(res$output, collapse = "\n"))
})

test_that("model_dir keeps the model in a directory; a missing one is reported with its whole path", {
  skip_if_no_core()
  dir <- file.path(tempdir(), "a_rather_long_folder_name_for_the_stored_models_test", "scvi_model")
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 2, seed = 0, model_dir = dir,
                  verbose = FALSE)
  misc <- SeuratObject::Misc(pbmc[["scvi"]])
  expect_null(misc$model_store)
  expect_identical(misc$model_dir, normalizePath(dir))
  models <- cellvi_models(pbmc)
  expect_identical(models$stored, "directory")
  expect_identical(models$size_mb, 0)
  unlink(dir, recursive = TRUE)
  expect_false(cellvi_models(pbmc)$available)
  err <- expect_error(NormalizeSCVI(pbmc, verbose = FALSE), "no longer exists")
  expect_true(grepl(normalizePath(dir, mustWork = FALSE), conditionMessage(err), fixed = TRUE))
  expect_match(conditionMessage(err), "RunSCVI()", fixed = TRUE)
  err <- expect_error(load_cellvi_model(dir))
  expect_true(grepl(dir, conditionMessage(err), fixed = TRUE))
})

test_that("cellvi_models lists and cellvi_remove_models removes; load_cellvi_model takes an object", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 2, seed = 0, verbose = FALSE)
  pbmc <- RunLinearSCVI(pbmc, max_epochs = 2, seed = 0, verbose = FALSE)
  expect_setequal(cellvi_models(pbmc)$name, c("scvi", "ldvae"))
  model <- load_cellvi_model(pbmc, "ldvae")
  expect_identical(reticulate::py_to_r(model$`__class__`$`__name__`), "LinearSCVI")
  expect_error(load_cellvi_model(pbmc), "several cellvi models")
  expect_error(cellvi_remove_models(pbmc, "pca"), "no cellvi model named")
  dir <- SeuratObject::Misc(pbmc[["ldvae"]])$model_dir
  out <- cellvi_remove_models(pbmc, "ldvae", delete_files = TRUE)
  expect_identical(cellvi_models(out)$name, "scvi")
  expect_true("ldvae" %in% SeuratObject::Reductions(out))  # the result stays
  expect_false(dir.exists(dir))
  expect_error(NormalizeSCVI(out, reduction = "ldvae", verbose = FALSE), "not made by cellvi")
  expect_identical(nrow(cellvi_models(cellvi_remove_models(out))), 0L)
})

test_that("NormalizeSCVI writes log1p of the normalized expression into `data`, linear values with log = FALSE", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 2, seed = 0, verbose = FALSE)
  logged <- NormalizeSCVI(pbmc, verbose = FALSE)
  linear <- NormalizeSCVI(pbmc, log = FALSE, verbose = FALSE)
  a <- as.matrix(SeuratObject::GetAssayData(logged, assay = "SCVI", slot = "data"))
  b <- as.matrix(SeuratObject::GetAssayData(linear, assay = "SCVI", slot = "data"))
  # every gene: per cell, the linear values sum to library_size, and so do expm1 of the logs
  expect_equal(unname(colSums(b)), rep(1e4, ncol(pbmc)), tolerance = 1e-3)
  expect_equal(unname(colSums(expm1(a))), rep(1e4, ncol(pbmc)), tolerance = 1e-3)
  expect_true(max(a) < log1p(1e4) && min(a) >= 0)
  expect_error(NormalizeSCVI(pbmc, log = NA, verbose = FALSE), "`log` must be TRUE or FALSE")
})

test_that("a verb that saves several models (Solo: scVI + one Solo per batch) keeps them all inside the object", {
  skip_if_no_core()
  pbmc <- RunSolo(SeuratObject::pbmc_small, batch_key = "groups", scvi_reduction = NULL,
                  max_epochs = 2, scvi_max_epochs = 2, seed = 0, verbose = FALSE)
  record <- SeuratObject::Misc(pbmc, "cellvi")$solo
  expect_type(record$model_store$bytes, "raw")
  expect_identical(cellvi_models(pbmc)$stored, "object")
  # the session's files gone: the record is written back, every path moved with it
  unlink(record$model_dir, recursive = TRUE)
  back <- cellvi:::.materialize_record(record)
  expect_false(identical(back$model_dir, record$model_dir))
  expect_length(back$solo_dirs, 2L)
  expect_true(all(startsWith(c(back$solo_dirs, back$scvi_model_dir), back$model_dir)))
  for (d in c(back$solo_dirs, back$scvi_model_dir)) {
    expect_true(file.exists(file.path(d, "model.json")), info = d)
  }
  solo <- load_cellvi_model(back$solo_dirs[[1]])
  expect_identical(reticulate::py_to_r(solo$`__class__`$`__name__`), "SOLO")
})
