test_that("FindMarkersSCVI gives a FindMarkers-shaped table with the model's evidence", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 20, seed = 0, verbose = FALSE,
                  model_dir = file.path(tempdir(), "de_pbmc"))
  markers <- FindMarkersSCVI(pbmc, ident.1 = "0", ident.2 = "1", n_samples = 500,
                             logfc.threshold = 0, min.pct = 0, verbose = FALSE)
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
                              mode = "vanilla", n_samples = 200, logfc.threshold = 0,
                              min.pct = 0, verbose = FALSE)
  expect_equal(sort(rownames(by_group)), c("CD3E", "MS4A1"))
  expect_true("proba_m1" %in% names(by_group))
  expect_error(FindMarkersSCVI(pbmc, ident.1 = "9", verbose = FALSE), "group '9' not found")
  expect_error(FindMarkersSCVI(pbmc, ident.1 = "0", group.by = "nope", verbose = FALSE), "not found")
})

test_that("FindMarkersSCVI filters as Seurat does, sorts deterministically and repeats with a seed", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 10, seed = 0, verbose = FALSE)
  run <- function(...) FindMarkersSCVI(pbmc, ident.1 = "0", ident.2 = "1", n_samples = 300,
                                       verbose = FALSE, ...)
  all <- run(logfc.threshold = 0, min.pct = 0, seed = 7)
  expect_equal(nrow(all), 230L)
  # seed: the same call repeats exactly, another seed differs
  expect_identical(run(logfc.threshold = 0, min.pct = 0, seed = 7), all)
  expect_false(identical(run(logfc.threshold = 0, min.pct = 0, seed = 8)$avg_log2FC,
                         all$avg_log2FC))
  # no seed: set.seed() makes it repeat
  set.seed(42)
  a <- run()
  set.seed(42)
  b <- run()
  expect_identical(a, b)

  # Seurat's filters and defaults (logfc.threshold = 0.25, min.pct = 0.1), on the same draws
  def <- run(seed = 7)
  expected <- all[pmax(all$pct.1, all$pct.2) >= 0.1 & abs(all$avg_log2FC) >= 0.25, ]
  expect_identical(def, expected)
  expect_true(nrow(def) < 230L && nrow(def) > 0L)
  pos <- run(seed = 7, only.pos = TRUE)
  expect_true(all(pos$avg_log2FC >= 0.25))
  expect_identical(rownames(pos), rownames(def)[def$avg_log2FC > 0])
  strict <- run(seed = 7, min.pct = 0.5, logfc.threshold = 1)
  expect_true(all(pmax(strict$pct.1, strict$pct.2) >= 0.5 & abs(strict$avg_log2FC) >= 1))
  some <- run(seed = 7, features = c("CD3E", "MS4A1", "NKG7", "PPBP"), logfc.threshold = 0,
              min.pct = 0)
  expect_setequal(rownames(some), c("CD3E", "MS4A1", "NKG7", "PPBP"))
  expect_error(run(min.pct = 2), "`min.pct` must be between 0 and 1")
  expect_error(run(only.pos = "yes"), "`only.pos` must be TRUE or FALSE")

  # sorted by proba_de, then |avg_log2FC|, then name
  key <- order(-all$proba_de, -abs(all$avg_log2FC), rownames(all), method = "radix")
  expect_identical(key, seq_len(nrow(all)))
  ties <- all[all$proba_de == max(all$proba_de), ]
  if (nrow(ties) > 1) expect_false(is.unsorted(rev(abs(ties$avg_log2FC))))
})

test_that("FindAllMarkersSCVI is shaped like Seurat's FindAllMarkers", {
  skip_if_no_core()
  pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 10, seed = 0, verbose = FALSE)
  genes <- c("CD3E", "MS4A1", "NKG7", "PPBP", "LYZ", "S100A9")
  all <- FindAllMarkersSCVI(pbmc, features = genes, logfc.threshold = 0, min.pct = 0,
                            n_samples = 200, seed = 1, verbose = FALSE)
  expect_identical(tail(names(all), 2), c("cluster", "gene"))
  expect_true(all(c("avg_log2FC", "pct.1", "pct.2", "proba_de", "bayes_factor", "is_de_fdr") %in%
                    names(all)))
  expect_false(any(grepl("p_val", names(all))))  # no invented p-values
  expect_s3_class(all$cluster, "factor")
  expect_identical(levels(all$cluster), levels(SeuratObject::Idents(pbmc)))
  expect_equal(nrow(all), length(genes) * nlevels(SeuratObject::Idents(pbmc)))
  expect_identical(rownames(all), make.unique(all$gene))
  expect_false(is.unsorted(as.integer(all$cluster)))
  for (cl in levels(all$cluster)) {
    block <- all[all$cluster == cl, ]
    expect_setequal(block$gene, genes)
    expect_false(is.unsorted(rev(block$proba_de)))
  }
  # a cluster's block is FindMarkersSCVI of that cluster against the rest
  one <- FindMarkersSCVI(pbmc, ident.1 = "0", features = genes, logfc.threshold = 0,
                         min.pct = 0, n_samples = 200, seed = 1, verbose = FALSE)
  expect_identical(all$gene[all$cluster == "0"], rownames(one))
  pos <- FindAllMarkersSCVI(pbmc, features = genes, only.pos = TRUE, n_samples = 200, seed = 1,
                            verbose = FALSE)
  expect_true(all(pos$avg_log2FC > 0))
  by_group <- FindAllMarkersSCVI(pbmc, group.by = "groups", features = genes, n_samples = 100,
                                 logfc.threshold = 0, min.pct = 0, seed = 1, verbose = FALSE)
  expect_setequal(levels(by_group$cluster), c("g1", "g2"))
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
  # group2 alone: every other group against it
  vs0 <- findMarkersSCVI(sce, "RNA_snn_res.1", group2 = "0", features = "CD3E", n_samples = 100,
                         verbose = FALSE)
  expect_equal(sort(unique(vs0$group)), c("1", "2"))
  expect_error(findMarkersSCVI(sce, "cluster"), "colData column 'cluster' not found")
})

test_that("findMarkersSCVI pools several groups of group1 into one side, as FindMarkersSCVI pools ident.1", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- as_sce(as_anndata(SeuratObject::pbmc_small))
  sce <- runSCVI(sce, max_epochs = 2, seed = 0, verbose = FALSE,
                 model_dir = file.path(tempdir(), "de_sce_pooled"))
  genes <- c("CD3E", "MS4A1", "NKG7")
  n01 <- sum(sce$RNA_snn_res.1 %in% c("0", "1"))
  expect_message(
    pooled <- findMarkersSCVI(sce, "RNA_snn_res.1", group1 = c("0", "1"), features = genes,
                              n_samples = 100, seed = 1),
    paste0("Comparing ", n01, " cells with ", ncol(sce) - n01, " cells"))
  # one comparison: one row per gene, named by it, no group column
  expect_setequal(rownames(pooled), genes)
  expect_false("group" %in% names(pooled))
  # the same as naming the pooled groups' cells one group
  sce$pooled <- ifelse(sce$RNA_snn_res.1 %in% c("0", "1"), "01", "rest")
  one <- findMarkersSCVI(sce, "pooled", group1 = "01", features = genes, n_samples = 100,
                         seed = 1, verbose = FALSE)
  expect_identical(pooled, one)
  # both sides pooled
  both <- findMarkersSCVI(sce, "RNA_snn_res.1", group1 = "0", group2 = c("1", "2"),
                          features = genes, n_samples = 100, seed = 1, verbose = FALSE)
  expect_setequal(rownames(both), genes)
  expect_error(findMarkersSCVI(sce, "RNA_snn_res.1", group1 = c("0", "9"), verbose = FALSE),
               "group '9' not found")
})

test_that("one-vs-rest leaves cells without a group (NA) out of the rest, as Seurat does", {
  idx <- cellvi:::.group_cells(c("a", NA, "b", "a", NA), "a", NULL)
  expect_equal(idx$idx1, c(1L, 4L))
  expect_equal(idx$idx2, 3L)
  expect_error(cellvi:::.group_cells(c("a", NA), "b", NULL), "group 'b' not found; groups: a$")
})

test_that("PeakVI's vanilla tables are sorted by |bayes_factor| (prob_da is then P(y1 > y2))", {
  vanilla <- data.frame(prob_da = c(0.5, 0.01, 0.99), bayes_factor = c(0, -4.6, 4.6),
                        row.names = c("flat", "open_in_2", "open_in_1"))
  expect_equal(rownames(cellvi:::.sort_markers(vanilla))[3], "flat")
  change <- cbind(vanilla, is_da_fdr = c(FALSE, FALSE, TRUE))
  expect_equal(rownames(cellvi:::.sort_markers(change)), c("open_in_1", "flat", "open_in_2"))
})
