# gimVI verbs on the shipped MERFISH pair (a single-cell reference and MERFISH cells of the
# same 134 genes): held-out spatial genes are imputed with positive correlation, the imputed
# assay / altExp and the latent are written where a Seurat or Bioconductor user looks, the
# model is recorded and reloads, and bad input fails with errors that say what to do.

merfish_pair <- function(as = "Seurat") {
  list(spatial = cellvi_dataset("merfish_spatial_small", as = as),
       reference = cellvi_dataset("merfish_reference_small", as = as))
}

# Spearman correlation of each held-out gene's imputed and measured values (counts over the
# cell's total of the genes the model saw).
held_out_spearman <- function(imputed, counts, held) {
  seen <- setdiff(rownames(counts), held)
  total <- Matrix::colSums(counts[seen, , drop = FALSE])
  vapply(held, function(g) {
    stats::cor(imputed[g, ], counts[g, ] / total, method = "spearman")
  }, numeric(1))
}

held <- c("Gad1", "Slc17a6", "Mlc1", "Aqp4", "Esr1", "Sgk1")

test_that("RunGIMVI imputes held-out genes into a new assay and adds the latent reduction", {
  skip_if_no_core()
  pair <- merfish_pair()
  spatial <- pair$spatial
  features <- setdiff(rownames(spatial), held)
  dir <- file.path(tempdir(), "gimvi_seurat")
  out <- RunGIMVI(spatial, pair$reference, features = features, max_epochs = 60, seed = 0,
                  model_dir = dir, verbose = FALSE)
  # the imputed assay: every reference gene in every spatial cell
  expect_true("imputed" %in% SeuratObject::Assays(out))
  imputed <- as.matrix(SeuratObject::GetAssayData(out, assay = "imputed", slot = "data"))
  expect_equal(dim(imputed), c(nrow(pair$reference), ncol(spatial)))
  expect_equal(rownames(imputed), rownames(pair$reference))
  expect_equal(colnames(imputed), colnames(spatial))
  expect_true(all(imputed >= 0))
  # scaled so that the genes the model saw sum to library_size (1e4) in each cell
  expect_equal(unname(colSums(imputed[features, ])), rep(1e4, ncol(spatial)), tolerance = 1e-3)
  # held-out genes correlate with their measured values (Python's tests: median Spearman
  # 0.136-0.226 over seeds 0-4 at 100 epochs, 10 random held-out genes)
  counts <- SeuratObject::GetAssayData(spatial, assay = "RNA", slot = "counts")
  r <- held_out_spearman(imputed, counts, held)
  expect_gt(stats::median(r), 0.1)
  expect_gt(mean(r > 0), 0.6)
  # the latent of the spatial cells, and the record of the model
  expect_true("gimvi" %in% SeuratObject::Reductions(out))
  emb <- SeuratObject::Embeddings(out, "gimvi")
  expect_equal(dim(emb), c(ncol(spatial), 10L))
  expect_equal(colnames(emb)[1], "gimvi_1")
  record <- SeuratObject::Misc(out[["gimvi"]])
  expect_equal(record$model, "GIMVI")
  expect_equal(record$model_dir, normalizePath(dir))
  expect_equal(record$reference_assay, "RNA")
  model <- load_cellvi_model(record$model_dir)
  expect_equal(.py_value(model$`__class__`$`__name__`), "GIMVI")
  # nothing else changed; coordinates stay in the metadata
  expect_equal(out@meta.data, spatial@meta.data)
  expect_equal(SeuratObject::GetAssayData(out, assay = "RNA", slot = "counts"), counts)
})

test_that("runGIMVI writes the imputed genes to an altExp and the latent to a reducedDim", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  pair <- merfish_pair("SingleCellExperiment")
  sce <- pair$spatial
  out <- runGIMVI(sce, pair$reference, features = setdiff(rownames(sce), held), max_epochs = 20,
                  library_size = 1, seed = 0, verbose = FALSE,
                  model_dir = file.path(tempdir(), "gimvi_sce"))
  expect_true("imputed" %in% SingleCellExperiment::altExpNames(out))
  alt <- SingleCellExperiment::altExp(out, "imputed")
  expect_equal(SummarizedExperiment::assayNames(alt)[1], "normalized")
  imputed <- SummarizedExperiment::assay(alt)
  expect_equal(dim(imputed), c(nrow(pair$reference), ncol(sce)))
  expect_equal(colnames(imputed), colnames(sce))
  # library_size = 1: the model's normalized expression (sums to 1 over the genes it saw)
  seen <- setdiff(rownames(sce), held)
  expect_equal(unname(colSums(imputed[seen, ])), rep(1, ncol(sce)), tolerance = 1e-4)
  expect_equal(dim(SingleCellExperiment::reducedDim(out, "GIMVI")), c(ncol(sce), 10L))
  record <- S4Vectors::metadata(out)$cellvi$GIMVI
  expect_equal(record$model, "GIMVI")
  expect_true(dir.exists(record$model_dir))
  expect_equal(SummarizedExperiment::assayNames(out), SummarizedExperiment::assayNames(sce))
})

test_that("a Seurat spatial object takes an SCE reference, with batches in both", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  spatial <- cellvi_dataset("merfish_spatial_small")
  reference <- cellvi_dataset("merfish_reference_small", as = "SingleCellExperiment")
  spatial$slice <- ifelse(spatial$x > stats::median(spatial$x), "left", "right")
  reference$donor <- rep(c("a", "b"), length.out = ncol(reference))
  out <- RunGIMVI(spatial, reference, batch_key = "slice", reference_batch_key = "donor",
                  max_epochs = 3, n_latent = 4, seed = 0, verbose = FALSE,
                  assay.name = "GIMVI", reduction.name = "gimvi4", reduction.key = "gv_",
                  model_dir = file.path(tempdir(), "gimvi_mixed"))
  expect_true("GIMVI" %in% SeuratObject::Assays(out))
  expect_equal(ncol(SeuratObject::Embeddings(out, "gimvi4")), 4L)
  record <- SeuratObject::Misc(out[["gimvi4"]])
  expect_equal(record$reference_batch_key, "donor")
  expect_equal(record$setup$batch_key, "slice")
  expect_equal(record$reference_class, "SingleCellExperiment")
  model <- load_cellvi_model(record$model_dir)
  expect_equal(unlist(.py_value(model$module$n_batches)), c(2L, 2L))
})

test_that("gimVI verbs fail clearly on spatial genes missing from the reference and bad input", {
  skip_if_no_core()
  pair <- merfish_pair()
  reference <- pair$reference[setdiff(rownames(pair$reference), c("Gad1", "Mlc1")), ]
  expect_error(RunGIMVI(pair$spatial, reference, max_epochs = 1, verbose = FALSE),
               "2 of the 134 spatial genes are not reference genes: .*Gad1.*features = intersect")
  expect_error(RunGIMVI(pair$spatial, "not an object", max_epochs = 1),
               "`reference` must be a Seurat object or a SingleCellExperiment")
  expect_error(RunGIMVI(pair$spatial, pair$reference, reference_batch_key = "donor",
                        max_epochs = 1, verbose = FALSE),
               "reference metadata column 'donor' \\(reference_batch_key\\) not found")
  expect_error(RunGIMVI(pair$spatial, pair$reference, kappa = -1, max_epochs = 1),
               "`kappa` must be between 0")
})
