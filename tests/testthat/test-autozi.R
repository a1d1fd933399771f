# AutoZI verbs: per-gene zero-inflation results in the feature metadata (Seurat meta.features,
# SCE rowData) and the latent space as a reduction / reducedDim.

test_that("RunAUTOZI writes per-gene columns to the assay's feature metadata", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  dir <- file.path(tempdir(), "pbmc_autozi")
  genes <- rownames(pbmc)[1:150]
  out <- RunAUTOZI(pbmc, features = genes, max_epochs = 5, seed = 0, model_dir = dir,
                   verbose = FALSE)
  meta <- out[["RNA"]][[]]
  cols <- c("autozi.alpha", "autozi.beta", "autozi.prob_zi", "autozi.is_zi")
  expect_true(all(cols %in% colnames(meta)))
  expect_equal(rownames(meta), rownames(pbmc))
  # the modelled genes have values; the others NA
  modelled <- rownames(meta) %in% genes
  expect_true(all(is.finite(meta$autozi.prob_zi[modelled])))
  expect_true(all(is.na(meta$autozi.prob_zi[!modelled])))
  expect_type(meta$autozi.is_zi, "logical")
  expect_true(all(meta$autozi.alpha[modelled] > 0 & meta$autozi.alpha[modelled] < 1))
  expect_equal(meta$autozi.is_zi[modelled], meta$autozi.prob_zi[modelled] > 0.5)
  # the earlier feature metadata stay
  expect_equal(meta[, colnames(pbmc[["RNA"]][[]])], pbmc[["RNA"]][[]])
  # prob_zi is the Beta posterior's CDF at 0.5
  expect_equal(meta$autozi.prob_zi[modelled],
               stats::pbeta(0.5, meta$autozi.alpha[modelled], meta$autozi.beta[modelled]),
               tolerance = 1e-5)
  emb <- SeuratObject::Embeddings(out[["autozi"]])
  expect_equal(dim(emb), c(ncol(pbmc), 10L))
  expect_equal(colnames(emb)[1], "AUTOZI_1")
  misc <- SeuratObject::Misc(out[["autozi"]])
  expect_equal(misc$model, "AUTOZI")
  expect_equal(misc$model_dir, normalizePath(dir))
  expect_equal(out@meta.data, pbmc@meta.data)
  # the same calls from the saved model, from Python
  model <- reticulate::import("cellvi")$load_model(dir)
  ab <- model$get_alphas_betas()
  expect_equal(as.numeric(ab$alpha_posterior), meta[genes, "autozi.alpha"], tolerance = 1e-6)
  expect_equal(as.numeric(ab$beta_posterior), meta[genes, "autozi.beta"], tolerance = 1e-6)
  # the scVI query verbs read the AutoZI model too
  norm <- NormalizeSCVI(out, reduction = "autozi", features = genes[1:5], verbose = FALSE)
  expr <- SeuratObject::GetAssayData(norm, assay = "SCVI", slot = "data")
  expect_equal(dim(expr), c(5L, ncol(pbmc)))
  de <- FindMarkersSCVI(out, ident.1 = "0", reduction = "autozi", n_samples = 50,
                        logfc.threshold = 0, min.pct = 0, verbose = FALSE)
  expect_setequal(rownames(de), genes)
  expect_true(all(c("avg_log2FC", "pct.1", "pct.2", "proba_de") %in% names(de)))
  # a stricter call
  strict <- RunAUTOZI(pbmc, features = genes, max_epochs = 2, seed = 0, prob_threshold = 0.9,
                      model_dir = file.path(tempdir(), "pbmc_autozi2"), verbose = FALSE)
  smeta <- strict[["RNA"]][[]][genes, ]
  expect_equal(smeta$autozi.is_zi, smeta$autozi.prob_zi > 0.9)
})

test_that("runAUTOZI writes rowData columns and a reducedDim; per-batch zero inflation", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
  sce <- sce[seq_len(min(200L, nrow(sce))), ]
  sce$half <- rep(c("a", "b"), length.out = ncol(sce))
  keep <- Matrix::colSums(SummarizedExperiment::assay(sce, "counts")) > 0
  sce <- sce[, keep]
  out <- runAUTOZI(sce, batch_key = "half", zero_inflation = "gene-batch", n_latent = 4,
                   max_epochs = 2, seed = 0, model_dir = file.path(tempdir(), "sce_autozi"),
                   verbose = FALSE)
  rd <- SummarizedExperiment::rowData(out)
  for (col in c("alpha", "beta", "prob_zi", "is_zi")) {
    expect_true(all(paste0("autozi.", col, "_", c("a", "b")) %in% colnames(rd)))
  }
  expect_true(all(is.finite(rd$autozi.prob_zi_a)))
  expect_equal(dim(SingleCellExperiment::reducedDim(out, "AutoZI")), c(ncol(sce), 4L))
  record <- S4Vectors::metadata(out)$cellvi$AutoZI
  expect_equal(record$model, "AUTOZI")
  expect_equal(record$assay.type, "counts")
})

test_that("AutoZI verbs name what is wrong", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  expect_error(RunAUTOZI(pbmc, zero_inflation = "gene-cell", verbose = FALSE), "zero_inflation")
  expect_error(RunAUTOZI(pbmc, alpha_prior = 2, verbose = FALSE), "alpha_prior")
  expect_error(RunAUTOZI(pbmc, alpha_prior = 1, max_epochs = 1, verbose = FALSE),
               "alpha_prior must be a number strictly between 0 and 1")
  expect_error(RunAUTOZI(pbmc, threshold = 1.5, verbose = FALSE), "threshold")
  expect_error(RunAUTOZI(pbmc, batch_key = "nope", verbose = FALSE), "nope")
})
