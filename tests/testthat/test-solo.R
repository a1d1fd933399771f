# Solo verbs: doublets planted in the shipped CITE-seq cells (400 PBMCs x 500 genes) by summing
# the counts of random pairs of cells, a scVI model trained first or reused from the object,
# one Solo per batch, the records of the models, and clear errors.

# The shipped cells plus `n` doublets made by summing random pairs of them.
cite_with_doublets <- function(n = 40) {
  cite <- cellvi_dataset("pbmc_cite_small")
  counts <- SeuratObject::GetAssayData(cite, assay = "RNA", slot = "counts")
  set.seed(1)
  first <- sample(ncol(counts), n, replace = TRUE)
  second <- (first + sample(ncol(counts) - 1L, n, replace = TRUE) - 1L) %% ncol(counts) + 1L
  doublets <- counts[, first] + counts[, second]
  colnames(doublets) <- paste0("planted", seq_len(n))
  object <- SeuratObject::CreateSeuratObject(cbind(counts, doublets))
  object$planted <- colnames(object) %in% colnames(doublets)
  object
}

# Area under the ROC curve of `score` for `truth` (Mann-Whitney).
auroc <- function(score, truth) {
  r <- rank(score)
  n1 <- sum(truth)
  n0 <- sum(!truth)
  (sum(r[truth]) - n1 * (n1 + 1) / 2) / (n1 * n0)
}

test_that("RunSolo trains scVI first, scores planted doublets high and records its models", {
  skip_if_no_core()
  object <- cite_with_doublets()
  dir <- file.path(tempdir(), "solo_planted")
  out <- RunSolo(object, scvi_max_epochs = 100, seed = 0, model_dir = dir, verbose = FALSE)
  score <- out$solo.doublet_score
  expect_true(is.numeric(score) && all(score >= 0 & score <= 1))
  expect_s3_class(out$solo.classification, "factor")
  expect_equal(levels(out$solo.classification), c("singlet", "doublet"))
  expect_equal(as.character(out$solo.classification),
               unname(ifelse(score > 0.5, "doublet", "singlet")))
  expect_gt(auroc(score, out$planted), 0.8)
  expect_gt(mean(out$solo.classification[out$planted] == "doublet"), 0.5)
  # the record: a scVI model trained here and one Solo, both saved
  record <- SeuratObject::Misc(out, "cellvi")$solo
  expect_equal(record$model, "SOLO")
  expect_equal(record$model_dir, normalizePath(dir))
  expect_false(record$scvi_reused)
  expect_true(dir.exists(record$scvi_model_dir))
  expect_length(record$solo_dirs, 1)
  solo <- load_cellvi_model(record$solo_dirs[[1]])
  # by name on the object: the record holds several models, and the error lists them
  expect_error(load_cellvi_model(out, "solo"), "holds several models, not one:.*solo_dirs: .*scvi_model_dir: ")
  again <- as.numeric(reticulate::py_to_r(solo$predict()$`__getitem__`("doublet")$to_numpy()))
  expect_equal(unname(again), unname(score), tolerance = 1e-6)
  # nothing else changed
  expect_equal(out@meta.data[, colnames(object@meta.data)], object@meta.data)
})

test_that("RunSolo reuses the scVI reduction, one Solo per batch of its batch column", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, batch_key = "groups", max_epochs = 20, seed = 0,
                  verbose = FALSE, model_dir = file.path(tempdir(), "solo_pbmc_scvi"))
  out <- RunSolo(pbmc, max_epochs = 20, seed = 0, verbose = FALSE,
                 model_dir = file.path(tempdir(), "solo_pbmc"))
  record <- SeuratObject::Misc(out, "cellvi")$solo
  expect_true(record$scvi_reused)
  expect_equal(record$scvi_model_dir, SeuratObject::Misc(pbmc[["scvi"]])$model_dir)
  expect_equal(record$setup$batch_key, "groups")
  expect_setequal(unlist(record$batches), unique(as.character(pbmc$groups)))
  expect_length(record$solo_dirs, 2)
  expect_false(anyNA(out$solo.doublet_score))
  expect_equal(Seurat::Reductions(out), Seurat::Reductions(pbmc))  # no new reduction
})

test_that("runSolo on a SingleCellExperiment, per lane; clear errors", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
  sce$lane <- rep(c("L1", "L2"), each = ncol(sce) / 2)
  out <- runSolo(sce, batch_key = "lane", scvi_max_epochs = 20, max_epochs = 20, seed = 0,
                 verbose = FALSE, model_dir = file.path(tempdir(), "solo_sce"))
  expect_true(all(c("solo.doublet_score", "solo.classification") %in%
                  colnames(SummarizedExperiment::colData(out))))
  record <- S4Vectors::metadata(out)$cellvi$solo
  expect_equal(unlist(record$batches), c("L1", "L2"))
  expect_equal(record$assay.type, "counts")
  expect_false(record$scvi_reused)

  expect_error(runSolo(sce, batch_key = "nope", verbose = FALSE), "nope")
  expect_error(runSolo(sce, doublet_ratio = 0, verbose = FALSE), "`doublet_ratio` must be at least 1")
  pbmc <- RunAUTOZI(SeuratObject::pbmc_small, max_epochs = 2, seed = 0, verbose = FALSE,
                    model_dir = file.path(tempdir(), "solo_autozi"))
  expect_error(RunSolo(pbmc, scvi_reduction = "autozi", verbose = FALSE),
               "reduction 'autozi' holds a AUTOZI model; Solo needs a scVI model")
})
