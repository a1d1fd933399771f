# totalVI verbs on the shipped CITE-seq data (400 cells x 500 genes, 14 proteins); tiny epochs.

cite_seurat <- function() {
  cite <- cellvi_dataset("pbmc_cite_small")
  adt <- SeuratObject::GetAssayData(cite, assay = "ADT", slot = "counts")
  cite$cd19 <- ifelse(adt["CD19-TotalSeqB", ] > stats::median(adt["CD19-TotalSeqB", ]),
                      "high", "low")
  cite
}

test_that("RunTOTALVI, NormalizeTOTALVI and FindMarkersTOTALVI on a Seurat object with ADT", {
  skip_if_no_core()
  cite <- cite_seurat()
  dir <- file.path(tempdir(), "cite_totalvi")
  out <- RunTOTALVI(cite, protein_assay = "ADT", max_epochs = 2, seed = 0, model_dir = dir,
                    verbose = FALSE)
  emb <- SeuratObject::Embeddings(out[["totalvi"]])
  expect_equal(dim(emb), c(400L, 20L))
  expect_equal(rownames(emb), colnames(cite))
  expect_equal(colnames(emb)[1], "totalVI_1")
  expect_true(all(is.finite(emb)))
  misc <- SeuratObject::Misc(out[["totalvi"]])
  expect_equal(misc$model, "TOTALVI")
  expect_equal(misc$model_dir, normalizePath(dir))
  expect_equal(misc$protein_assay, "ADT")
  expect_equal(misc$train_args$batch_size, 256L)
  expect_equal(SeuratObject::DefaultAssay(out[["totalvi"]]), "RNA")
  # nothing else of the object changed
  expect_equal(out@meta.data, cite@meta.data)
  expect_equal(out[["ADT"]]@counts, cite[["ADT"]]@counts)

  normed <- NormalizeTOTALVI(out, verbose = FALSE)
  rna <- SeuratObject::GetAssayData(normed, assay = "TOTALVI", slot = "data")
  prot <- SeuratObject::GetAssayData(normed, assay = "TOTALVI_ADT", slot = "data")
  expect_equal(dim(rna), c(500L, 400L))
  expect_equal(dim(prot), c(14L, 400L))
  expect_equal(rownames(prot), rownames(cite[["ADT"]]))
  expect_equal(colnames(prot), colnames(cite))
  expect_true(all(as.matrix(rna) >= 0) && all(as.matrix(prot) >= 0))
  # log1p of the denoised values in `data` (as Seurat's normalization); log = FALSE: linear
  expect_equal(unname(colSums(expm1(as.matrix(rna)))), rep(1e4, 400), tolerance = 1e-3)
  linear <- NormalizeTOTALVI(out, log = FALSE, verbose = FALSE)
  expect_equal(unname(colSums(as.matrix(SeuratObject::GetAssayData(linear, assay = "TOTALVI",
                                                                    slot = "data")))),
               rep(1e4, 400), tolerance = 1e-3)
  expect_equal(SeuratObject::Key(normed[["TOTALVI_ADT"]]), "totalviadt_")
  some <- NormalizeTOTALVI(out, features = c("CD14", "MS4A1"), proteins = "CD3-TotalSeqB",
                           assay.name = "tv", protein.assay.name = "tv_adt", verbose = FALSE)
  expect_equal(rownames(some[["tv"]]), c("CD14", "MS4A1"))
  expect_equal(rownames(some[["tv_adt"]]), "CD3-TotalSeqB")

  markers <- FindMarkersTOTALVI(out, ident.1 = "high", ident.2 = "low", group.by = "cd19",
                                n_samples = 100, logfc.threshold = 0, min.pct = 0, seed = 4,
                                verbose = FALSE)
  expect_s3_class(markers, "data.frame")
  expect_equal(nrow(markers), 514L)
  expect_true(all(c("avg_log2FC", "pct.1", "pct.2", "proba_de", "bayes_factor", "lfc_std",
                    "is_de_fdr", "feature_type") %in% names(markers)))
  expect_equal(as.vector(table(markers$feature_type)[c("gene", "protein")]), c(500L, 14L))
  expect_setequal(rownames(markers)[markers$feature_type == "protein"], rownames(cite[["ADT"]]))
  expect_false(is.unsorted(rev(markers$proba_de)))
  # seed: the call repeats; Seurat's filters (and defaults) on the same draws
  run <- function(...) FindMarkersTOTALVI(out, ident.1 = "high", ident.2 = "low",
                                          group.by = "cd19", n_samples = 100, seed = 4,
                                          verbose = FALSE, ...)
  expect_identical(run(logfc.threshold = 0, min.pct = 0), markers)
  keep <- pmax(markers$pct.1, markers$pct.2) >= 0.1 & abs(markers$avg_log2FC) >= 0.25
  expect_identical(run(), markers[keep, ])
  expect_true(all(run(only.pos = TRUE)$avg_log2FC > 0))
  # the model saved from R is an ordinary cellvi model
  model <- reticulate::import("cellvi")$load_model(dir)
  expect_equal(class(model)[1], "cellvi.models._totalvi.TOTALVI")
  expect_error(MapQuerySCVI(cite, dir, verbose = FALSE), "is a TOTALVI model")
})

test_that("totalVI verbs name what is missing or wrong", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  expect_error(RunTOTALVI(pbmc, max_epochs = 1, verbose = FALSE),
               "protein assay 'ADT' not found; available assays: RNA")
  cite <- cite_seurat()
  expect_error(RunTOTALVI(cite, gene_likelihood = "poisson", verbose = FALSE), "must be one of")
  expect_error(RunTOTALVI(cite, protein_assay = "CITE", verbose = FALSE),
               "protein assay 'CITE' not found; available assays: RNA, ADT")
  expect_error(NormalizeTOTALVI(cite, verbose = FALSE), "reduction 'totalvi' not found; run RunTOTALVI")
  scvi <- RunSCVI(pbmc, max_epochs = 1, verbose = FALSE, model_dir = file.path(tempdir(), "tv_scvi"))
  expect_error(NormalizeTOTALVI(scvi, reduction = "scvi", verbose = FALSE),
               "reduction 'scvi' holds a SCVI model; this verb needs a TOTALVI model")
  expect_error(runTOTALVI(Seurat::as.SingleCellExperiment(pbmc), verbose = FALSE),
               "protein altExp 'ADT' not found; available altExps: \\(none\\)")
})

test_that("runTOTALVI, normalizeTOTALVI and findMarkersTOTALVI on a SingleCellExperiment", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
  sce$half <- rep(c("a", "b"), length.out = ncol(sce))
  sce <- runTOTALVI(sce, max_epochs = 2, seed = 0, verbose = FALSE,
                    model_dir = file.path(tempdir(), "cite_totalvi_sce"))
  latent <- SingleCellExperiment::reducedDim(sce, "totalVI")
  expect_equal(dim(latent), c(400L, 20L))
  expect_equal(rownames(latent), colnames(sce))
  record <- S4Vectors::metadata(sce)$cellvi$totalVI
  expect_equal(record$protein_altexp, "ADT")
  expect_equal(record$assay.type, "counts")

  sce <- normalizeTOTALVI(sce, verbose = FALSE)
  expect_equal(dim(SummarizedExperiment::assay(sce, "totalVI_normalized")), c(500L, 400L))
  adt <- SingleCellExperiment::altExp(sce, "ADT")
  expect_equal(SummarizedExperiment::assayNames(adt), c("counts", "totalVI_normalized"))
  expect_equal(dim(SummarizedExperiment::assay(adt, "totalVI_normalized")), c(14L, 400L))
  some <- normalizeTOTALVI(sce, features = "CD14", proteins = c("CD3_TotalSeqB", "CD4_TotalSeqB"),
                           name = "tv", verbose = FALSE)
  expect_equal(rownames(SingleCellExperiment::altExp(some, "tv")), "CD14")
  expect_equal(rownames(SingleCellExperiment::altExp(some, "tv_ADT")),
               c("CD3_TotalSeqB", "CD4_TotalSeqB"))

  markers <- findMarkersTOTALVI(sce, "half", group1 = "a",
                                features = c("CD14", "CD19_TotalSeqB"), n_samples = 100,
                                seed = 5, verbose = FALSE)
  expect_equal(sort(rownames(markers)), c("CD14", "CD19_TotalSeqB"))
  expect_identical(findMarkersTOTALVI(sce, "half", group1 = "a",
                                      features = c("CD14", "CD19_TotalSeqB"), n_samples = 100,
                                      seed = 5, verbose = FALSE), markers)
  expect_equal(markers[c("CD14", "CD19_TotalSeqB"), "feature_type"], c("gene", "protein"))
})
