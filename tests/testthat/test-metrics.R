# IntegrationScores(): the same scores from a Seurat reduction, an SCE reducedDim and a matrix;
# an embedding that separates donors scores lower than one that mixes them.

structured_embedding <- function(types, donors, donor_shift) {
  set.seed(2)
  codes <- as.integer(factor(types))
  m <- matrix(rnorm(length(codes) * 6, sd = 0.5), ncol = 6)
  m[cbind(seq_along(codes), codes %% 5 + 1)] <- m[cbind(seq_along(codes), codes %% 5 + 1)] + 8
  m[, 6] <- m[, 6] + as.integer(factor(donors)) * donor_shift
  m
}

test_that("IntegrationScores reads a Seurat reduction and an SCE reducedDim alike", {
  skip_if_no_core()
  kang <- cellvi_dataset("kang_pbmc")[, 1:600]
  mixed <- structured_embedding(kang$cell_type, kang$donor, 0)
  split <- structured_embedding(kang$cell_type, kang$donor, 6)
  rownames(mixed) <- rownames(split) <- colnames(kang)
  colnames(mixed) <- paste0("mixed_", 1:6)
  colnames(split) <- paste0("split_", 1:6)
  kang[["mixed"]] <- SeuratObject::CreateDimReducObject(mixed, key = "mixed_", assay = "RNA")
  kang[["split"]] <- SeuratObject::CreateDimReducObject(split, key = "split_", assay = "RNA")

  good <- IntegrationScores(kang, reduction = "mixed", batch = "donor", labels = "cell_type")
  bad <- IntegrationScores(kang, reduction = "split", batch = "donor", labels = "cell_type")
  expect_named(good, c("label_silhouette", "nmi", "ari", "batch_silhouette", "ilisi",
                       "graph_connectivity", "bio", "batch", "total"))
  expect_gt(good[["ilisi"]], 0.4)
  expect_lt(bad[["ilisi"]], 0.1)
  expect_gt(good[["total"]], bad[["total"]] + 0.1)
  expect_equal(good[["total"]], 0.6 * good[["bio"]] + 0.4 * good[["batch"]])
  # the matrix form gives the same numbers
  expect_equal(IntegrationScores(mixed, batch = kang$donor, labels = kang$cell_type), good)

  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = Matrix::Matrix(0, 1, ncol(kang), sparse = TRUE)),
    colData = kang[[]], reducedDims = list(mixed = mixed))
  expect_equal(IntegrationScores(sce, reduction = "mixed", batch = "donor", labels = "cell_type"), good)
  # colData names are used as they are (as.data.frame would turn "cell type" into "cell.type")
  SummarizedExperiment::colData(sce)[["cell type"]] <- kang$cell_type
  expect_equal(IntegrationScores(sce, reduction = "mixed", batch = "donor", labels = "cell type"), good)

  # unknown types (NA) are left out of the label scores; no labels: only iLISI
  partial <- kang$cell_type
  partial[seq(1, length(partial), by = 3)] <- NA
  left_out <- IntegrationScores(mixed, batch = kang$donor, labels = partial)
  expect_true(is.finite(left_out[["nmi"]]))
  # (reticulate alone would make NA a label named "NA")
  as_label <- IntegrationScores(mixed, batch = kang$donor, labels = ifelse(is.na(partial), "NA", partial))
  expect_false(isTRUE(all.equal(left_out[["nmi"]], as_label[["nmi"]])))
  only_batch <- IntegrationScores(mixed, batch = kang$donor)
  expect_true(is.na(only_batch[["total"]]) && is.finite(only_batch[["ilisi"]]))

  expect_error(IntegrationScores(kang, reduction = "harmony", batch = "donor"),
               "reduction 'harmony' not found; available: mixed, split")
  expect_error(IntegrationScores(kang, reduction = "mixed", batch = "sample"),
               "metadata column 'sample' \\(batch\\) not found")
  expect_error(IntegrationScores(mixed, batch = kang$donor[-1]), "has 599 values for 600 cells")
})
