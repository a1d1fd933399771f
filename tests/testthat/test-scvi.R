test_that("numeric arguments are checked at the R boundary", {
  expect_identical(cellvi:::.as_count(400, "max_epochs"), 400L)
  expect_error(cellvi:::.as_count(2.5, "max_epochs"), "`max_epochs` must be a whole number")
  expect_error(cellvi:::.as_count(0, "max_epochs"), "at least 1")
  expect_error(cellvi:::.as_count("a", "n_latent"), "single whole number")
  expect_error(cellvi:::.as_choice("gauss", "gene_likelihood", c("zinb", "nb")), "must be one of")
  expect_error(cellvi:::.check_setup(c("a", "b"), NULL, NULL, NULL), "one column name")
})

test_that("install_cellvi installs torch first (CPU or CUDA build), then the core with numpy<2 for an old reticulate", {
  src <- normalizePath(file.path("..", ".."), mustWork = FALSE)
  skip_if_not(file.exists(file.path(src, "pyproject.toml")), "not run from a source checkout")
  req <- cellvi:::.cellvi_requirements(src, "torch==2.13.0", reticulate_version = "1.28")
  expect_equal(req$torch, list(packages = "torch==2.13.0", options = character()))
  expect_equal(req$core, list(source = normalizePath(src), packages = "numpy<2"))
  # "auto": the CPU build without a GPU (on Linux from PyTorch's CPU index), else CUDA's
  req <- cellvi:::.cellvi_requirements(src, "auto", reticulate_version = "1.40",
                                       sysname = "Linux", has_gpu = FALSE)
  expect_equal(req$build, "cpu")
  expect_equal(req$torch$options, c("--index-url", "https://download.pytorch.org/whl/cpu"))
  expect_null(req$core$packages)
  req <- cellvi:::.cellvi_requirements(src, "auto", sysname = "Linux", has_gpu = TRUE)
  expect_equal(req$build, "cuda")
  expect_equal(req$torch, list(packages = "torch>=2.2", options = character()))
  expect_length(cellvi:::.cellvi_requirements(src, "cpu", sysname = "Darwin")$torch$options, 0)
  expect_error(cellvi:::.cellvi_requirements(src, "cuda", sysname = "Darwin"), "no CUDA build")
  expect_error(cellvi:::.cellvi_requirements(src, c("cpu", "cuda")), "`torch` must be")
  expect_error(cellvi:::.cellvi_requirements(tempdir()), "not a cellvi checkout")
})

test_that("install_cellvi's default source is the core carried by the package, or says how to get it", {
  shipped <- system.file("python", "pyproject.toml", package = "cellvi")
  if (nzchar(shipped)) {
    expect_equal(cellvi:::.core_source(NULL), normalizePath(dirname(shipped)))
  } else {
    # installed from a checkout (R CMD INSTALL .): no inst/python, the error names the fix
    expect_error(cellvi:::.core_source(NULL), "install_cellvi\\(source = ")
  }
})

test_that("RunSCVI adds a reduction and the model answers later, also in a new session", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  dir <- file.path(tempdir(), "pbmc_scvi")
  out <- RunSCVI(pbmc, batch_key = "groups", max_epochs = 3, seed = 1, model_dir = dir,
                 verbose = FALSE)
  expect_true("scvi" %in% SeuratObject::Reductions(out))
  emb <- SeuratObject::Embeddings(out[["scvi"]])
  expect_equal(dim(emb), c(80L, 10L))
  expect_equal(rownames(emb), colnames(pbmc))
  expect_equal(colnames(emb)[1], "scVI_1")
  expect_true(all(is.finite(emb)))
  misc <- SeuratObject::Misc(out[["scvi"]])
  expect_equal(misc$model_dir, normalizePath(dir))
  expect_equal(misc$setup$batch_key, "groups")
  # Everything else of the object is as it was.
  expect_equal(out[["RNA"]]@counts, pbmc[["RNA"]]@counts)
  expect_equal(out@meta.data, pbmc@meta.data)

  normed <- NormalizeSCVI(out, features = c("CD3E", "MS4A1"), verbose = FALSE)
  expr <- SeuratObject::GetAssayData(normed, assay = "SCVI", slot = "data")
  expect_equal(dim(expr), c(2L, 80L))
  expect_true(all(expr > 0))

  # A new R session finds the saved model through the object alone.
  rds <- tempfile(fileext = ".rds")
  saveRDS(out, rds)
  script <- tempfile(fileext = ".R")
  writeLines(c(
    "suppressMessages(library(cellvi))",
    sprintf("obj <- readRDS('%s')", rds),
    "obj <- NormalizeSCVI(obj, features = 'CD3E', verbose = FALSE)",
    "cat(dim(SeuratObject::GetAssayData(obj, assay = 'SCVI', slot = 'data')))"
  ), script)
  res <- system2(file.path(R.home("bin"), "Rscript"), script, stdout = TRUE, stderr = FALSE)
  expect_equal(tail(res, 1), "1 80")
})

test_that("RunLinearSCVI stores loadings; bad input gets a clear message", {
  skip_if_no_core()
  pbmc <- SeuratObject::pbmc_small
  out <- RunLinearSCVI(pbmc, n_latent = 4, max_epochs = 2, seed = 1,
                       model_dir = file.path(tempdir(), "ldvae"), verbose = FALSE)
  loadings <- SeuratObject::Loadings(out[["ldvae"]])
  expect_equal(dim(loadings), c(230L, 4L))
  expect_equal(rownames(loadings), rownames(pbmc))
  expect_error(RunSCVI(pbmc, batch_key = "donor", max_epochs = 1, verbose = FALSE), "donor")
  expect_error(RunSCVI(pbmc, max_epochs = 1.5, verbose = FALSE), "whole number")
  expect_error(RunSCVI(pbmc, gene_likelihood = "normal", verbose = FALSE), "must be one of")
})

test_that("nothing of the user's is lost: model_dir, the counts assay, names that results follow", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  pbmc <- SeuratObject::pbmc_small
  # A model_dir with the user's files is refused before any training, and kept as it was.
  notes <- tempfile("notes-")
  dir.create(notes)
  writeLines("keep", file.path(notes, "notes.txt"))
  expect_error(RunSCVI(pbmc, max_epochs = 1, model_dir = notes, verbose = FALSE),
               "holds files that are not a cellvi model \\(notes.txt\\).*new or empty folder")
  expect_equal(list.files(notes, all.files = TRUE, no.. = TRUE), "notes.txt")
  # A folder that holds a model is replaced by a rerun; an object whose model was replaced
  # there says so instead of answering with the other model.
  dir <- tempfile("model-")
  first <- RunSCVI(pbmc, max_epochs = 1, seed = 0, model_dir = dir, verbose = FALSE)
  out <- RunSCVI(pbmc, max_epochs = 1, seed = 0, model_dir = dir, verbose = FALSE)
  expect_true(file.exists(file.path(dir, "model.json")))
  expect_error(NormalizeSCVI(first, features = "CD3E", verbose = FALSE),
               "now holds another model .*own `model_dir`")
  expect_no_error(NormalizeSCVI(out, features = "CD3E", verbose = FALSE))
  # A result may not replace the counts it is computed from.
  expect_error(NormalizeSCVI(out, assay.name = "RNA", verbose = FALSE),
               "would replace the assay of counts that the model reads")
  sce <- SingleCellExperiment::SingleCellExperiment(
    list(counts = SeuratObject::GetAssayData(pbmc, slot = "counts")))
  sce <- runSCVI(sce, max_epochs = 1, seed = 0, verbose = FALSE)
  expect_error(normalizeSCVI(sce, name = "counts", verbose = FALSE),
               "would replace the assay of counts")
  # normalizeSCVI: linear by default (expression per library_size), log1p on request
  linear <- SummarizedExperiment::assay(normalizeSCVI(sce, verbose = FALSE), "scVI_normalized")
  logged <- SummarizedExperiment::assay(normalizeSCVI(sce, log = TRUE, verbose = FALSE),
                                        "scVI_normalized")
  expect_equal(unname(colSums(linear)), rep(1e4, ncol(sce)), tolerance = 1e-4)
  expect_equal(unname(colSums(expm1(logged))), rep(1e4, ncol(sce)), tolerance = 1e-4)
  # Results are matched to cells and genes by name: missing or repeated names are refused.
  unnamed <- sce
  colnames(unnamed) <- NULL
  expect_error(runSCVI(unnamed, max_epochs = 1, verbose = FALSE), "no cell names .*colnames\\(x\\)")
  repeated <- sce
  colnames(repeated)[2] <- colnames(repeated)[1]
  expect_error(normalizeSCVI(repeated, verbose = FALSE), "1 cell names are duplicated .*make.unique")
  rownames(repeated) <- rep(rownames(sce)[1:115], 2)
  colnames(repeated) <- colnames(sce)
  expect_error(runSCVI(repeated, max_epochs = 1, verbose = FALSE), "115 gene names are duplicated")
  # Advice in R's terms: a cell without counts, an assay with normalized values only.
  counts <- SeuratObject::GetAssayData(pbmc, slot = "counts")
  counts[, 3] <- 0
  empty <- SeuratObject::CreateSeuratObject(counts = counts)
  expect_error(RunSCVI(empty, max_epochs = 1, verbose = FALSE),
               "1 cells have no counts .*subset\\(object, nCount_RNA > 0\\)")
  normalized <- pbmc
  normalized[["LOG"]] <- SeuratObject::CreateAssayObject(
    data = SeuratObject::GetAssayData(pbmc, slot = "data"))
  expect_error(RunSCVI(normalized, assay = "LOG", max_epochs = 1, verbose = FALSE),
               "normalized values \\('data'\\) only")
})

test_that("verbose = FALSE is silent", {
  skip_if_no_core()
  expect_silent(RunSCVI(SeuratObject::pbmc_small, max_epochs = 1, verbose = FALSE,
                        model_dir = file.path(tempdir(), "quiet")))
})

test_that("runSCVI and normalizeSCVI on a SingleCellExperiment (kang)", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  path <- kang_path()
  skip_if(is.null(path), "kang_se_12261.h5ad not found")
  sce <- as_sce(read_h5ad(path))
  sce <- runSCVI(sce, batch_key = "sample_id", max_epochs = 1, seed = 0,
                 model_dir = file.path(tempdir(), "kang"), verbose = FALSE)
  latent <- SingleCellExperiment::reducedDim(sce, "scVI")
  expect_equal(dim(latent), c(ncol(sce), 10L))
  expect_equal(rownames(latent), colnames(sce))
  genes <- rownames(sce)[1:3]
  sce <- normalizeSCVI(sce, features = genes, verbose = FALSE)
  alt <- SingleCellExperiment::altExp(sce, "scVI_normalized")
  expect_equal(dim(alt), c(3L, ncol(sce)))
  sce2 <- runLinearSCVI(sce[, 1:500], n_latent = 3, max_epochs = 1, verbose = FALSE,
                        model_dir = file.path(tempdir(), "kang_ldvae"))
  expect_equal(dim(attr(SingleCellExperiment::reducedDim(sce2, "LDVAE"), "rotation")), c(nrow(sce), 3L))
})

test_that("default model directories neither repeat under set.seed nor use R's random stream", {
  set.seed(1)
  a <- cellvi:::.new_model_dir("SCVI")
  state <- .Random.seed
  set.seed(1)
  b <- cellvi:::.new_model_dir("SCVI")
  expect_false(identical(a, b))
  set.seed(1)
  cellvi:::.new_model_dir("SCVI")
  expect_identical(.Random.seed, state)
})

test_that("plan_kwargs reach the training plan, checked on both sides", {
  skip_if_no_core()
  skip_if_not_installed("SeuratObject")
  pbmc <- SeuratObject::pbmc_small
  expect_error(RunSCVI(pbmc, max_epochs = 1, plan_kwargs = list(1), verbose = FALSE),
               "`plan_kwargs` must be a named list")
  expect_error(RunSCVI(pbmc, max_epochs = 1, plan_kwargs = list(no_such_setting = 1), verbose = FALSE),
               "no_such_setting")
  pbmc <- RunSCVI(pbmc, max_epochs = 2, plan_kwargs = list(precision = "bf16-mixed", kl_warmup_cap = 0.5),
                  model_dir = file.path(tempdir(), "plan_kwargs"), verbose = FALSE)
  expect_equal(dim(SeuratObject::Embeddings(pbmc, "scvi")), c(ncol(pbmc), 10L))
  expect_true(all(is.finite(SeuratObject::Embeddings(pbmc, "scvi"))))
})
