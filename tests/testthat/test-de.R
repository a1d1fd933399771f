test_that("FindMarkersSCVI gives a FindMarkers-shaped table with the model's evidence", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 20, seed = 0, verbose = FALSE,
                  model_dir = file.path(tempdir(), "de_pbmc"))
  markers <- FindMarkersSCVI(pbmc, ident.1 = "0", ident.2 = "1", n_samples = 500, verbose = FALSE)
  expect_s3_class(markers, "data.frame")
  expect_equal(nrow(markers), 230L)
  expect_setequal(rownames(markers), rownames(pbmc))
  expect_true(all(c("avg_log2FC", "pct.1", "pct.2", "proba_de", "bayes_factor", "lfc_std",
                    "is_de_fdr") %in% names(markers)))
  expect_true(all(markers$pct.1 >= 0 & markers$pct.1 <= 1))
  expect_false(is.unsorted(rev(markers$proba_de)))
  expect_type(markers$is_de_fdr, "logical")
  # pct.1 is the detection rate among ident.1's cells, as in Seurat.
  cells <- SeuratObject::WhichCells(pbmc, idents = "0")
  counts <- SeuratObject::GetAssayData(pbmc, slot = "counts")[, cells]
  g <- rownames(markers)[1]
  expect_equal(markers[g, "pct.1"], mean(counts[g, ] > 0), tolerance = 1e-6)

  by_group <- FindMarkersSCVI(pbmc, ident.1 = "g1", group.by = "groups", features = c("CD3E", "MS4A1"),
                              mode = "vanilla", n_samples = 200, verbose = FALSE)
  expect_equal(sort(rownames(by_group)), c("CD3E", "MS4A1"))
  expect_true("proba_m1" %in% names(by_group))
  expect_error(FindMarkersSCVI(pbmc, ident.1 = "9", verbose = FALSE), "group '9' not found")
  expect_error(FindMarkersSCVI(pbmc, ident.1 = "0", group.by = "nope", verbose = FALSE), "not found")
})

test_that("findMarkersSCVI runs one-vs-rest on a SingleCellExperiment", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- as_sce(as_anndata(SeuratObject::pbmc_small))
  sce <- runSCVI(sce, max_epochs = 10, seed = 0, verbose = FALSE,
                 model_dir = file.path(tempdir(), "de_sce"))
  all <- findMarkersSCVI(sce, "RNA_snn_res.1", features = c("CD3E", "MS4A1", "NKG7"),
                         n_samples = 200, verbose = FALSE)
  expect_equal(sort(unique(all$group)), c("0", "1", "2"))
  expect_equal(nrow(all), 9L)
  one <- findMarkersSCVI(sce, sce$RNA_snn_res.1, group1 = "2", group2 = "0", n_samples = 200,
                         verbose = FALSE)
  expect_equal(nrow(one), nrow(sce))
  expect_error(findMarkersSCVI(sce, "cluster"), "colData column 'cluster' not found")
})
