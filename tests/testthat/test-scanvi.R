test_that("RunSCANVI writes the latent, the predictions and, if asked, every probability", {
  skip_if_no_core()
  pbmc <- pbmc_with_labels()
  # labels with "_": Seurat's feature names cannot hold one, so the probabilities' assay says "-"
  pbmc$labels <- ifelse(pbmc$labels == "Unknown", "Unknown", paste0("type_", pbmc$labels))
  dir <- file.path(tempdir(), "pbmc_scanvi")
  expect_silent(out <- RunSCANVI(pbmc, labels_key = "labels", batch_key = "groups", max_epochs = 30,
                                 seed = 0, model_dir = dir, probabilities = TRUE, verbose = FALSE))
  emb <- SeuratObject::Embeddings(out[["scanvi"]])
  expect_equal(dim(emb), c(80L, 10L))
  expect_equal(rownames(emb), colnames(pbmc))
  expect_equal(SeuratObject::Misc(out[["scanvi"]])$model_dir, normalizePath(dir))
  predicted <- out$predicted.labels
  expect_s3_class(predicted, "factor")
  expect_setequal(levels(predicted), c("type_0", "type_1", "type_2"))
  score <- out$predicted.labels.score
  expect_true(all(score >= 1 / 3 & score <= 1))
  probs <- SeuratObject::GetAssayData(out, assay = "prediction.score.labels", slot = "data")
  expect_equal(dim(probs), c(3L, 80L))
  expect_setequal(rownames(probs), c("type-0", "type-1", "type-2"))
  expect_equal(unname(colSums(as.matrix(probs))), rep(1, 80), tolerance = 1e-5)
  expect_equal(unname(apply(as.matrix(probs), 2, max)), unname(score), tolerance = 1e-6)
  # The labelled cells' labels are learned.
  labelled <- pbmc$labels != "Unknown"
  expect_gt(mean(as.character(predicted[labelled]) == pbmc$labels[labelled]), 0.8)
  # Nothing else of the object changed.
  expect_equal(out@meta.data[, colnames(pbmc@meta.data)], pbmc@meta.data)
  # The saved model is an ordinary cellvi model: Python loads it.
  model <- reticulate::import("cellvi")$load_model(dir)
  expect_equal(class(model)[1], "cellvi.models._scanvi.SCANVI")
})

test_that("RunSCANVI starts from a RunSCVI model; runSCANVI does the same for an SCE", {
  skip_if_no_core()
  pbmc <- RunSCVI(pbmc_with_labels(), batch_key = "groups", max_epochs = 10, seed = 0,
                  verbose = FALSE)
  out <- RunSCANVI(pbmc, labels_key = "labels", scvi_reduction = "scvi", seed = 0, verbose = FALSE)
  expect_true(all(c("scvi", "scanvi") %in% SeuratObject::Reductions(out)))
  expect_equal(SeuratObject::Misc(out[["scanvi"]])$setup$labels_key, "labels")
  expect_false("prediction.score.labels" %in% SeuratObject::Assays(out))

  sce <- Seurat::as.SingleCellExperiment(pbmc_with_labels())
  sce <- runSCVI(sce, batch_key = "groups", max_epochs = 10, seed = 0, verbose = FALSE)
  sce <- runSCANVI(sce, labels_key = "labels", scvi_dimred = "scVI", probabilities = TRUE,
                   seed = 0, verbose = FALSE)
  expect_equal(dim(SingleCellExperiment::reducedDim(sce, "scANVI")), c(80L, 10L))
  expect_s3_class(sce$predicted.labels, "factor")
  scores <- SummarizedExperiment::colData(sce)$prediction.score.labels
  expect_equal(dim(scores), c(80L, 3L))
  expect_equal(colnames(scores), c("0", "1", "2"))
  expect_equal(S4Vectors::metadata(sce)$cellvi$scANVI$model, "SCANVI")
})

test_that("RunSCANVI errors and warnings name the problem", {
  skip_if_no_core()
  pbmc <- pbmc_with_labels()
  expect_error(RunSCANVI(pbmc, labels_key = "nope", verbose = FALSE), "'nope'")
  expect_error(RunSCANVI(pbmc, labels_key = c("a", "b"), verbose = FALSE), "labels_key")
  expect_warning(RunSCANVI(pbmc, labels_key = "truth", max_epochs = 1, verbose = FALSE),
                 "fully supervised")
  expect_error(RunSCANVI(pbmc, labels_key = "labels", scvi_reduction = "pca", verbose = FALSE),
               "not made by cellvi")
})

test_that("MapQuerySCVI maps a Seurat and an SCE query onto references from R and Python", {
  skip_if_no_core()
  pbmc <- pbmc_with_labels(fraction = 1)
  reference <- pbmc[, pbmc$groups == "g1"]
  query <- pbmc[, pbmc$groups == "g2"]
  query$labels <- NULL
  expect_warning(  # every reference cell is labelled
    reference <- RunSCANVI(reference, labels_key = "labels", batch_key = "groups",
                           max_epochs = 30, seed = 0, verbose = FALSE),
    "fully supervised")
  mapped <- MapQuerySCVI(query, reference, max_epochs = 20, seed = 0, probabilities = TRUE,
                         verbose = FALSE)
  emb <- SeuratObject::Embeddings(mapped[["scanvi"]])
  expect_equal(rownames(emb), colnames(query))
  expect_equal(ncol(emb), 10L)
  expect_s3_class(mapped$predicted.labels, "factor")
  expect_true("prediction.score.labels" %in% SeuratObject::Assays(mapped))
  misc <- SeuratObject::Misc(mapped[["scanvi"]])
  expect_equal(misc$reference_dir, SeuratObject::Misc(reference[["scanvi"]])$model_dir)
  expect_gt(mean(as.character(mapped$predicted.labels) == query$truth), 0.6)

  # A query lacking some genes is mapped with a warning; a query batch named as a reference
  # batch is refused; a missing batch column is named.
  partial <- query[rownames(query)[-(1:10)], ]
  expect_warning(MapQuerySCVI(partial, reference, max_epochs = 1, verbose = FALSE),
                 "10 of the reference's 230 genes are missing")
  clash <- query
  clash$groups <- "g1"
  expect_error(MapQuerySCVI(clash, reference, max_epochs = 1, verbose = FALSE),
               "also names a reference batch")
  expect_error(MapQuerySCVI(query, reference, query_batch_key = "nope", verbose = FALSE),
               "no metadata column 'nope'")
  clash$donor <- "new_donor"
  renamed <- MapQuerySCVI(clash, reference, query_batch_key = "donor", max_epochs = 1,
                          verbose = FALSE)
  expect_equal(renamed$groups, clash$groups)  # the user's column is left as it was

  # An SCE query onto a reference saved from Python (an SCVI model: latent only).
  cv <- reticulate::import("cellvi")
  ad <- as_anndata(reference, metadata = "groups", reductions = FALSE)
  cv$SCVI$setup_anndata(ad, batch_key = "groups")
  scvi <- cv$SCVI(ad, n_latent = 4L)
  scvi$train(max_epochs = 2L, progress_bar = FALSE)
  py_dir <- file.path(tempdir(), "py_reference")
  scvi$save(py_dir, overwrite = TRUE)
  sce <- MapQuerySCVI(Seurat::as.SingleCellExperiment(query), py_dir, max_epochs = 2, seed = 0, verbose = FALSE)
  expect_equal(dim(SingleCellExperiment::reducedDim(sce, "scVI")), c(ncol(query), 4L))
  expect_false("predicted.labels" %in% colnames(SummarizedExperiment::colData(sce)))
  expect_equal(S4Vectors::metadata(sce)$cellvi$scVI$reference_dir, normalizePath(py_dir))

  # A SingleCellExperiment reference on which runSCANVI ran: its labels are transferred.
  expect_warning(
    sce_reference <- runSCANVI(Seurat::as.SingleCellExperiment(reference), labels_key = "labels",
                               batch_key = "groups", max_epochs = 5, seed = 0, verbose = FALSE),
    "fully supervised")
  mapped_sce <- MapQuerySCVI(Seurat::as.SingleCellExperiment(query), sce_reference,
                             max_epochs = 2, seed = 0, verbose = FALSE)
  expect_equal(dim(SingleCellExperiment::reducedDim(mapped_sce, "scANVI")), c(ncol(query), 10L))
  expect_s3_class(mapped_sce$predicted.labels, "factor")
  expect_error(MapQuerySCVI(query, sce_reference, reference.reduction = "UMAP", verbose = FALSE),
               "no cellvi model found")
})

test_that("MapQuerySCVI onto a reference without batches encodes the query as it is", {
  skip_if_no_core()
  pbmc <- pbmc_with_labels(fraction = 1)
  expect_warning(
    reference <- RunSCANVI(pbmc[, pbmc$groups == "g1"], labels_key = "labels", max_epochs = 5,
                           seed = 0, verbose = FALSE),
    "fully supervised")
  query <- pbmc[, pbmc$groups == "g2"]
  expect_message(mapped <- MapQuerySCVI(query, reference, seed = 0), "without training")
  model <- load_cellvi_model(SeuratObject::Misc(reference[["scanvi"]])$model_dir)
  ad <- as_anndata(query, metadata = FALSE, reductions = FALSE)
  expected <- reticulate::py_to_r(model$get_latent_representation(ad))
  expect_equal(unname(SeuratObject::Embeddings(mapped[["scanvi"]])), expected, tolerance = 1e-6)
  expect_s3_class(mapped$predicted.labels, "factor")
})
