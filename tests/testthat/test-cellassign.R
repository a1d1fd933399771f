# CellAssign verbs on the shipped CITE-seq cells' RNA (400 PBMCs x 500 genes), with the
# proteins as an independent check of the assigned types.

pbmc_markers <- list(T = c("CD3D", "CD3G", "IL7R"), B = c("CD79A", "MS4A1"),
                     Mono = c("LYZ", "S100A8", "S100A9", "CD14"), NK = c("NKG7", "GNLY"))

test_that("RunCellAssign writes types and probabilities that agree with the proteins", {
  skip_if_no_core()
  cite <- cellvi_dataset("pbmc_cite_small")
  dir <- file.path(tempdir(), "cite_cellassign")
  out <- RunCellAssign(cite, markers = pbmc_markers, all_probabilities = TRUE, seed = 0,
                       model_dir = dir, verbose = FALSE)
  expect_s3_class(out$cellassign.type, "factor")
  expect_equal(levels(out$cellassign.type), names(pbmc_markers))
  expect_true(all(out$cellassign.probability >= 0.25 & out$cellassign.probability <= 1))
  probs <- as.matrix(out[[paste0("cellassign.prob.", names(pbmc_markers))]])
  expect_equal(unname(rowSums(probs)), rep(1, ncol(cite)), tolerance = 1e-6)
  expect_equal(unname(apply(probs, 1, max)), unname(out$cellassign.probability), tolerance = 1e-6)
  # the record of the model
  record <- SeuratObject::Misc(out, "cellvi")$cellassign
  expect_equal(record$model, "CellAssign")
  expect_equal(record$model_dir, normalizePath(dir))
  expect_equal(record$setup$size_factor_key, "cellvi_size_factor")
  # nothing else changed
  expect_equal(out@meta.data[, colnames(cite@meta.data)], cite@meta.data)
  # the surface proteins (never seen by the model) agree with the assigned types
  adt <- SeuratObject::GetAssayData(cite, assay = "ADT", slot = "counts")
  adt <- as.matrix(adt)
  adt <- log1p(t(t(adt) / colSums(adt)) * 1e4)
  type <- as.character(out$cellassign.type)
  expect_gt(mean(adt["CD3-TotalSeqB", type == "T"]), mean(adt["CD3-TotalSeqB", type != "T"]) + 1)
  expect_gt(mean(adt["CD19-TotalSeqB", type == "B"]), mean(adt["CD19-TotalSeqB", type != "B"]) + 1)
  expect_gt(mean(adt["CD14-TotalSeqB", type == "Mono"]), mean(adt["CD14-TotalSeqB", type != "Mono"]) + 1)
  expect_true(all(table(type)[names(pbmc_markers)] > 10))
  # a 0/1 matrix of markers is the same as the list
  genes <- unique(unlist(pbmc_markers))
  matrix_markers <- sapply(pbmc_markers, function(g) as.integer(genes %in% g))
  rownames(matrix_markers) <- genes
  again <- RunCellAssign(cite, markers = matrix_markers, seed = 0, verbose = FALSE,
                         model_dir = file.path(tempdir(), "cite_cellassign2"))
  expect_equal(again$cellassign.type, out$cellassign.type)
})

test_that("runCellAssign on a SingleCellExperiment; clear errors", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
  sce$sf <- Matrix::colSums(SummarizedExperiment::assay(sce, "counts"))
  sce$sf <- sce$sf / mean(sce$sf)
  sce <- runCellAssign(sce, markers = pbmc_markers, size_factor_key = "sf", max_epochs = 50,
                       seed = 0, verbose = FALSE, model_dir = file.path(tempdir(), "sce_cellassign"))
  expect_equal(levels(sce$cellassign.type), names(pbmc_markers))
  expect_equal(S4Vectors::metadata(sce)$cellvi$cellassign$setup$size_factor_key, "sf")

  cite <- cellvi_dataset("pbmc_cite_small")
  expect_error(RunCellAssign(cite, markers = c("CD3D", "CD79A"), verbose = FALSE),
               "named list")
  expect_error(RunCellAssign(cite, markers = list(T = "CD3D", X = "NOTAGENE"), verbose = FALSE),
               "no marker gene in the data")
  expect_error(RunCellAssign(cite, markers = list(T = c("CD3D", "NOTAGENE"), B = "CD79A"),
                             verbose = FALSE), "not in the data: NOTAGENE")
  expect_error(RunCellAssign(cite, markers = matrix(2, 1, 1, dimnames = list("CD3D", "T")),
                             verbose = FALSE), "only 0 and 1")
  expect_error(RunCellAssign(cite, markers = pbmc_markers, size_factor_key = "nope",
                             verbose = FALSE), "metadata column 'nope' \\(size_factor_key\\) not found")
})
