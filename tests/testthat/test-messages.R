# Errors in the terms of the R function the user called.

test_that("a batch or label column that is continuous or differs in every cell is refused", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  pbmc$score <- seq(0.1, 3, length.out = ncol(pbmc))
  pbmc$cell <- colnames(pbmc)
  err <- expect_error(RunSCVI(pbmc, batch_key = "score", max_epochs = 1, verbose = FALSE),
                      "metadata column 'score' \\(batch_key\\) holds non-integer numbers")
  expect_match(conditionMessage(err), "continuous_covariate_keys")
  expect_false(grepl("Error|\\n$|obs", conditionMessage(err)))
  expect_error(RunSCVI(pbmc, labels_key = "cell", max_epochs = 1, verbose = FALSE),
               "'cell' \\(labels_key\\) has a different value in every one of the 80 cells")
  sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
  sce$cell <- colnames(sce)
  expect_error(runSCVI(sce, batch_key = "cell", max_epochs = 1, verbose = FALSE),
               "different value in every one")
  # whole numbers stored as doubles are groups
  pbmc$lane <- as.numeric(pbmc$groups == "g1")
  expect_s4_class(RunSCVI(pbmc, batch_key = "lane", max_epochs = 1, verbose = FALSE), "Seurat")
})

test_that("the non-counts error names the arguments of the function called", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  bad <- SeuratObject::SetAssayData(pbmc, slot = "counts",
                                    new.data = SeuratObject::GetAssayData(pbmc, slot = "data"))
  err <- expect_error(RunSCVI(bad, max_epochs = 1, verbose = FALSE), "non-integer values")
  expect_match(conditionMessage(err), "RunSCVI() reads the counts slot of `assay`", fixed = TRUE)
  expect_false(grepl("allow_non_counts|slot =", conditionMessage(err)))
  # as_anndata() has slot and allow_non_counts: its message names them
  err <- expect_error(as_anndata(bad), "allow_non_counts = TRUE")
  sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
  SummarizedExperiment::assay(sce, "logcounts") <- log1p(SummarizedExperiment::assay(sce, "counts"))
  err <- expect_error(runSCVI(sce, assay.type = "logcounts", max_epochs = 1, verbose = FALSE),
                      "runSCVI() reads the assay named by `assay.type`", fixed = TRUE)
  expect_false(grepl("allow_non_counts", conditionMessage(err)))
})

test_that("Python errors reach R without Python prefixes and with R code in the advice", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  ref <- RunSCVI(subset(pbmc, groups == "g1"), batch_key = "groups", max_epochs = 2, seed = 0,
                 verbose = FALSE)
  query <- subset(pbmc, groups == "g2")
  query$groups <- "g1"  # a batch name the reference already has
  err <- expect_error(MapQuerySCVI(query, ref, max_epochs = 1, verbose = FALSE))
  msg <- conditionMessage(err)
  expect_match(msg, 'query$groups <- paste0("query_", query$groups)', fixed = TRUE)
  expect_false(grepl("ValueError|KeyError|\\.obs\\[|astype", msg))
  expect_false(grepl("\\s$", msg))
  expect_identical(cellvi:::.r_wording("KeyError: 'obs column \\'x\\' not found'\n\n"),
                   "metadata column 'x' not found")
  expect_identical(cellvi:::.r_wording("ValueError: bad value\n"), "bad value")
})

test_that("a core that cannot be imported says to run install_cellvi() and which Python was tried", {
  skip_if_no_core()
  # a Python without the core (the system's, usually)
  candidates <- setdiff(unique(c("/usr/bin/python3", Sys.which(c("python3", "python")))),
                        c("", Sys.getenv("RETICULATE_PYTHON")))
  lacks_core <- vapply(candidates, function(p) {
    file.exists(p) && !identical(system2(p, c("-c", shQuote("import cellvi")), stdout = FALSE,
                                         stderr = FALSE), 0L)
  }, logical(1))
  skip_if(!any(lacks_core), "every Python here has cellvi")
  python <- candidates[lacks_core][1]
  libs <- paste0("c(", paste(sprintf("'%s'", .libPaths()), collapse = ", "), ")")
  script <- tempfile(fileext = ".R")
  writeLines(c(sprintf(".libPaths(%s)", libs),
               sprintf("Sys.setenv(RETICULATE_PYTHON = '%s')", python),
               "suppressPackageStartupMessages(library(cellvi))",
               "e <- tryCatch(RunSCVI(SeuratObject::pbmc_small), error = function(e) e)",
               "cat(conditionMessage(e), '\\n')"), script)
  out <- paste(suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), script,
                                        stdout = TRUE, stderr = TRUE)), collapse = "\n")
  expect_match(out, "cellvi::install_cellvi()", fixed = TRUE)
  expect_match(out, paste0("R tried the Python ", python), fixed = TRUE)
})

test_that("reading the training history prints no pandas FutureWarning", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 3, seed = 0, verbose = FALSE)
  history <- expect_silent(cellvi_history(pbmc, "scvi"))
  expect_identical(history$epoch, 1:3)
  expect_true(all(c("elbo_train", "elbo_validation", "loss_train") %in% names(history)))
  model <- load_cellvi_model(pbmc, "scvi")
  out <- paste(utils::capture.output(h <- reticulate::py_to_r(model$history), type = "message"),
               collapse = "\n")
  expect_false(grepl("FutureWarning", out))
})
