# PeakVI verbs on the shipped scATAC-seq data (600 cells x 2,000 peaks, six cell types).

atac_seurat <- function() cellvi_dataset("bmmc_atac_small")

test_that("RunPEAKVI, AccessibilityPEAKVI and FindMarkersPEAKVI on a Seurat object", {
  skip_if_no_core()
  atac <- atac_seurat()
  expect_equal(SeuratObject::Assays(atac), "peaks")
  dir <- file.path(tempdir(), "atac_peakvi")
  # the shipped peaks hold counts: the user is told they are read as open / closed
  expect_warning(out <- RunPEAKVI(atac, max_epochs = 3, seed = 0, model_dir = dir,
                                  verbose = FALSE), "above 0 as open")
  emb <- SeuratObject::Embeddings(out[["peakvi"]])
  # PeakVI's square-root rule: n_hidden = floor(sqrt(2000)) = 44, n_latent = floor(sqrt(44)) = 6
  expect_equal(dim(emb), c(600L, 6L))
  expect_equal(rownames(emb), colnames(atac))
  expect_equal(colnames(emb)[1], "PeakVI_1")
  expect_true(all(is.finite(emb)))
  misc <- SeuratObject::Misc(out[["peakvi"]])
  expect_equal(misc$model, "PEAKVI")
  expect_equal(misc$model_dir, normalizePath(dir))
  expect_equal(misc$train_args$batch_size, 128L)
  expect_equal(misc$train_args$lr, 1e-4)
  expect_equal(SeuratObject::DefaultAssay(out[["peakvi"]]), "peaks")
  expect_equal(out@meta.data, atac@meta.data)

  regions <- rownames(atac)[1:25]
  acc <- AccessibilityPEAKVI(out, features = regions, verbose = FALSE)
  est <- SeuratObject::GetAssayData(acc, assay = "PEAKVI", slot = "data")
  expect_equal(dim(est), c(25L, 600L))
  expect_equal(rownames(est), regions)
  expect_equal(colnames(est), colnames(atac))
  expect_true(all(as.matrix(est) > 0 & as.matrix(est) < 1))
  # with a threshold: sparse, the same estimates above it, zeros elsewhere
  sparse <- AccessibilityPEAKVI(out, features = regions, threshold = 0.1, assay.name = "acc",
                                verbose = FALSE)
  thr <- SeuratObject::GetAssayData(sparse, assay = "acc", slot = "data")
  expect_s4_class(thr, "dgCMatrix")
  dense <- as.matrix(est)
  expect_equal(as.matrix(thr) > 0, dense > 0.1)

  da <- FindMarkersPEAKVI(out, ident.1 = "B", ident.2 = "CD14.Mono.1", group.by = "cell_type",
                          n_samples = 200, logfc.threshold = 0, min.pct = 0, seed = 3,
                          verbose = FALSE)
  expect_s3_class(da, "data.frame")
  expect_equal(nrow(da), 2000L)
  expect_setequal(rownames(da), rownames(atac))
  expect_true(all(c("avg_log2FC", "pct.1", "pct.2", "prob_da", "bayes_factor", "effect_size",
                    "emp_effect", "est_prob1", "est_prob2", "is_da_fdr") %in% names(da)))
  expect_false(is.unsorted(rev(da$prob_da)))
  # pct.1 / pct.2: the observed fractions of B cells and monocytes with the region open
  counts <- SeuratObject::GetAssayData(atac, assay = "peaks", slot = "counts")
  b <- atac$cell_type == "B"
  expect_equal(da$pct.1, unname(Matrix::rowMeans(counts[rownames(da), b] > 0)), tolerance = 1e-6)
  expect_equal(da$effect_size, da$est_prob2 - da$est_prob1, tolerance = 1e-6)
  # seed: the call repeats; Seurat's filters (and defaults) on the same draws
  run <- function(...) FindMarkersPEAKVI(out, ident.1 = "B", ident.2 = "CD14.Mono.1",
                                         group.by = "cell_type", n_samples = 200, seed = 3,
                                         verbose = FALSE, ...)
  expect_identical(run(logfc.threshold = 0, min.pct = 0), da)
  expect_identical(run(), da[pmax(da$pct.1, da$pct.2) >= 0.1 & abs(da$avg_log2FC) >= 0.25, ])
  pos <- run(only.pos = TRUE, logfc.threshold = 0.5, min.pct = 0.2)
  expect_identical(pos, da[pmax(da$pct.1, da$pct.2) >= 0.2 & da$avg_log2FC >= 0.5, ])
  # vanilla mode: prob_da is P(accessibility 1 > 2), no FDR calls
  vanilla <- run(mode = "vanilla", features = rownames(atac)[1:20], logfc.threshold = 0,
                 min.pct = 0)
  expect_false("is_da_fdr" %in% names(vanilla))
  expect_true(all(vanilla$prob_da >= 0 & vanilla$prob_da <= 1))
  # the model saved from R is an ordinary cellvi model
  model <- reticulate::import("cellvi")$load_model(dir)
  expect_equal(class(model)[1], "cellvi.models._peakvi.PEAKVI")
})

test_that("PeakVI verbs name what is missing or wrong", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  expect_error(RunPEAKVI(pbmc, max_epochs = 1, verbose = FALSE), "assay 'peaks' not found")
  atac <- atac_seurat()
  expect_error(AccessibilityPEAKVI(atac, verbose = FALSE),
               "reduction 'peakvi' not found; run RunPEAKVI")
  expect_error(RunPEAKVI(atac, dropout_rate = 2, verbose = FALSE), "dropout_rate")
  expect_error(AccessibilityPEAKVI(atac, threshold = 2, verbose = FALSE), "threshold")
  scvi <- RunSCVI(pbmc, max_epochs = 1, verbose = FALSE,
                  model_dir = file.path(tempdir(), "pv_scvi"))
  expect_error(FindMarkersPEAKVI(scvi, ident.1 = "0", reduction = "scvi", verbose = FALSE),
               "reduction 'scvi' holds a SCVI model; this verb needs a PEAKVI model")
})

test_that("runPEAKVI, accessibilityPEAKVI and findMarkersPEAKVI on a SingleCellExperiment", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- cellvi_dataset("bmmc_atac_small", as = "SingleCellExperiment")
  sce <- sce[, sce$cell_type %in% c("B", "CD14.Mono.1", "CD4.N1")]
  sce <- suppressWarnings(runPEAKVI(sce, batch_key = "donor", n_latent = 5, max_epochs = 3,
                                    seed = 0, verbose = FALSE,
                                    model_dir = file.path(tempdir(), "atac_peakvi_sce")))
  latent <- SingleCellExperiment::reducedDim(sce, "PeakVI")
  expect_equal(dim(latent), c(300L, 5L))
  expect_equal(rownames(latent), colnames(sce))
  record <- S4Vectors::metadata(sce)$cellvi$PeakVI
  expect_equal(record$assay.type, "counts")
  expect_equal(record$setup$batch_key, "donor")

  all_regions <- accessibilityPEAKVI(sce, threshold = 0.2, verbose = FALSE)
  est <- SummarizedExperiment::assay(all_regions, "PeakVI_accessibility")
  expect_equal(dim(est), c(2000L, 300L))
  expect_s4_class(est, "dgCMatrix")
  expect_true(all(est@x > 0.2 & est@x < 1))
  some <- accessibilityPEAKVI(sce, features = rownames(sce)[1:3], name = "acc", verbose = FALSE)
  expect_equal(rownames(SingleCellExperiment::altExp(some, "acc")), rownames(sce)[1:3])

  da <- findMarkersPEAKVI(sce, "cell_type", group1 = "B", features = rownames(sce)[1:40],
                          n_samples = 100, seed = 2, verbose = FALSE)
  expect_equal(sort(rownames(da)), sort(rownames(sce)[1:40]))
  expect_identical(findMarkersPEAKVI(sce, "cell_type", group1 = "B",
                                     features = rownames(sce)[1:40], n_samples = 100, seed = 2,
                                     verbose = FALSE), da)
  stacked <- findMarkersPEAKVI(sce, "cell_type", features = rownames(sce)[1:10],
                               n_samples = 50, verbose = FALSE)
  expect_equal(nrow(stacked), 30L)
  expect_setequal(unique(stacked$group), c("B", "CD14.Mono.1", "CD4.N1"))
})
