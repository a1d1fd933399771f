# Conversion between Seurat / SingleCellExperiment and Python AnnData (R/convert.R).

skip_if_no_python <- function() {
  skip_if_not(cellvi_available(), "cellvi Python core not available")
}

py_keys <- function(x) {
  as.character(reticulate::py_to_r(reticulate::import_builtins(convert = FALSE)$list(x$keys())))
}

py_val <- function(x) {
  v <- reticulate::py_to_r(x)
  if (!is.null(dim(v)) && length(dim(v)) == 1L) dim(v) <- NULL
  v
}

# 6 genes x 5 cells of small counts, a few zeros, and one column of every metadata type.
toy_counts <- function() {
  m <- matrix(c(0, 1, 0, 3, 0, 2,
                5, 0, 0, 0, 1, 0,
                0, 0, 7, 0, 0, 0,
                1, 1, 1, 1, 1, 1,
                0, 0, 0, 0, 0, 9), nrow = 6,
              dimnames = list(paste0("gene-", 1:6), paste0("cell_", 1:5)))
  methods::as(m, "CsparseMatrix")
}

toy_meta <- function() {
  data.frame(
    fac = factor(c("z", "a", "z", NA, "m"), levels = c("z", "unused", "a", "m")),
    ord = factor(c("low", "high", "mid", "low", "high"), levels = c("low", "mid", "high"),
                 ordered = TRUE),
    lgl = c(TRUE, FALSE, NA, TRUE, FALSE),
    lgl_full = c(TRUE, FALSE, FALSE, TRUE, TRUE),
    int = c(1L, -2L, 3L, 40000L, 5L),
    int_na = c(1L, NA, 3L, NA, 5L),
    num = c(0.5, NA, -1e10, 3.25, pi),
    chr = c("a", "b", NA, "déjà vu", ""),
    row.names = paste0("cell_", 1:5), stringsAsFactors = FALSE
  )
}

toy_sce <- function() {
  skip_if_not_installed("SingleCellExperiment")
  counts <- toy_counts()
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = counts, logcounts = log1p(counts)),
    colData = S4Vectors::DataFrame(toy_meta(), check.names = FALSE),
    rowData = S4Vectors::DataFrame(symbol = paste0("S", 1:6), hv = c(TRUE, FALSE)[c(1, 2, 1, 2, 1, 2)]))
  SingleCellExperiment::reducedDim(sce, "PCA") <- matrix(seq_len(10) / 3, nrow = 5)
  sce
}

toy_seurat <- function() {
  skip_if_not_installed("SeuratObject")
  suppressWarnings(SeuratObject::CreateSeuratObject(counts = toy_counts(), meta.data = toy_meta()))
}

expect_same_columns <- function(got, want) {
  for (nm in names(want)) {
    expect_identical(got[[nm]], want[[nm]], label = paste0("column '", nm, "'"))
  }
}

test_that("every metadata type and all names survive SCE -> AnnData -> SCE", {
  skip_if_no_python()
  sce <- toy_sce()
  adata <- as_anndata(sce)
  expect_equal(py_val(adata$obs_names$tolist()), colnames(sce))
  expect_equal(py_val(adata$var_names$tolist()), rownames(sce))
  dtypes <- vapply(toy_meta(), function(x) "", "")
  for (nm in names(dtypes)) dtypes[[nm]] <- reticulate::py_str(adata$obs[[nm]]$dtype)
  expect_equal(unname(dtypes), c("category", "category", "boolean", "bool", "int32", "Int32",
                                 "float64", "object"))
  expect_identical(py_val(adata$obs[["fac"]]$cat$categories$tolist()), c("z", "unused", "a", "m"))
  expect_true(py_val(adata$obs[["ord"]]$cat$ordered))

  back <- as_sce(adata)
  expect_identical(dimnames(back), dimnames(sce))
  cd <- as.data.frame(SummarizedExperiment::colData(back))
  expect_same_columns(cd, toy_meta())
  expect_identical(levels(back$fac), c("z", "unused", "a", "m"))
  expect_true(is.ordered(back$ord))
  expect_identical(SummarizedExperiment::rowData(back)$symbol, paste0("S", 1:6))
  expect_identical(SummarizedExperiment::rowData(back)$hv, SummarizedExperiment::rowData(sce)$hv)
  expect_identical(SummarizedExperiment::assay(back, "counts"), toy_counts())
  pca <- SingleCellExperiment::reducedDim(back, "PCA")
  expect_equal(unname(pca), unname(SingleCellExperiment::reducedDim(sce, "PCA")))
  expect_identical(rownames(pca), colnames(sce))
})

test_that("every metadata type survives Seurat -> AnnData -> Seurat", {
  skip_if_no_python()
  seu <- toy_seurat()
  adata <- as_anndata(seu)
  back <- suppressWarnings(as_seurat(adata))
  expect_identical(colnames(back), colnames(seu))
  expect_identical(rownames(back), rownames(seu))
  expect_same_columns(back[[]], seu[[]])
  expect_identical(names(back[[]]), names(seu[[]]))
  expect_identical(SeuratObject::GetAssayData(back, slot = "counts"),
                   SeuratObject::GetAssayData(seu, slot = "counts"))
})

test_that("the Python matrix is the dgCMatrix's CSC read as CSR: cells x genes, no transposition", {
  skip_if_no_python()
  m <- toy_counts()
  adata <- as_anndata(m)
  X <- adata$X
  expect_equal(py_val(X$format), "csr")
  expect_equal(unlist(py_val(X$shape)), c(ncol(m), nrow(m)))
  expect_identical(as.integer(py_val(X$indptr)), m@p)
  expect_identical(as.integer(py_val(X$indices)), m@i)
  expect_identical(as.double(py_val(X$data)), m@x)
  expect_equal(py_val(X$data$dtype$name), "float32")
  expect_equal(py_val(X$indices$dtype$name), "int32")
  expect_true(py_val(X$indices$flags$writeable))
  # dense and CSC input give the same dgCMatrix back
  expect_identical(SummarizedExperiment::assay(as_sce(adata)), m)
  adata$X <- X$tocsc()
  expect_identical(SummarizedExperiment::assay(as_sce(adata)), m)
  adata$X <- X$toarray()
  expect_identical(SummarizedExperiment::assay(as_sce(adata)), m)
  # a dense R matrix is made sparse (not a dense copy in Python)
  expect_equal(py_val(as_anndata(as.matrix(m))$X$format), "csr")
})

test_that("features picks genes by name, in the order given", {
  skip_if_no_python()
  sce <- toy_sce()
  adata <- as_anndata(sce, features = c("gene-5", "gene-2"), metadata = c("fac", "num"),
                      reductions = FALSE)
  expect_equal(py_val(adata$var_names$tolist()), c("gene-5", "gene-2"))
  expect_equal(py_val(adata$var[["symbol"]]$tolist()), c("S5", "S2"))
  expect_equal(py_val(adata$obs$columns$tolist()), c("fac", "num"))
  expect_length(py_keys(adata$obsm), 0)
  back <- as_sce(adata)
  expect_identical(SummarizedExperiment::assay(back), toy_counts()[c(5, 2), ])
  expect_identical(ncol(as.data.frame(SummarizedExperiment::colData(as_sce(
    as_anndata(sce, metadata = FALSE))))), 0L)
})

test_that("bad counts and bad names give clear errors", {
  skip_if_no_python()
  m <- toy_counts()
  neg <- m; neg@x[2] <- -1
  expect_error(as_anndata(neg), "negative values.*normalized")
  frac <- m; frac@x[3] <- 0.693
  expect_error(as_anndata(frac), "non-integer values \\(e.g. 0.693\\).*normalized data")
  expect_no_error(as_anndata(frac, allow_non_counts = TRUE))
  nan <- m; nan@x[1] <- NaN
  expect_error(as_anndata(nan), "NaN")
  expect_error(as_anndata(nan, allow_non_counts = TRUE), "NaN")
  inf <- m; inf@x[1] <- Inf
  expect_error(as_anndata(inf), "infinite")

  sce <- toy_sce()
  expect_error(as_anndata(sce, assay.type = "logcounts"), "non-integer.*assay.type = \"counts\"")
  expect_error(as_anndata(sce, assay.type = "nope"), "assay.type 'nope' not found; available: counts, logcounts")
  expect_error(as_anndata(sce, metadata = c("fac", "donor")), "'donor' not found; available: fac, ord")
  expect_error(as_anndata(sce, features = c("gene-1", "CD3E", "MS4A1")),
               "2 of 3 requested feature\\(s\\) not found: CD3E, MS4A1")
  expect_error(as_anndata(sce, reductions = "UMAP"), "'UMAP' not found; available: PCA")
  expect_error(as_anndata(sce, slot = "counts"), "unused argument\\(s\\): slot")

  seu <- toy_seurat()
  expect_error(as_anndata(seu, slot = "data"), "slot = \"data\".*allow_non_counts")
  expect_error(as_anndata(seu, slot = "scale.data"), "not raw counts")
  expect_error(as_anndata(seu, assay = "ADT"), "assay 'ADT' not found; available: RNA")
  expect_error(as_anndata(seu, metadata = "donor"), "metadata column\\(s\\) 'donor' not found")
  expect_error(as_anndata(list()), "does not know objects of class 'list'")
  # names that cells and genes are matched by must be unique
  dup <- m
  colnames(dup)[2] <- colnames(dup)[1]
  expect_error(as_anndata(dup), "1 cell names are duplicated .*make.unique\\(colnames")
  rownames(dup) <- rep(rownames(m)[1], nrow(m))
  colnames(dup) <- colnames(m)
  expect_error(as_anndata(dup), "1 feature names are duplicated")
  # a table with row names of its own is matched by them, not taken in row order
  obs <- data.frame(who = rev(colnames(m)), row.names = rev(colnames(m)))
  ad <- as_anndata(m, obs = obs)
  expect_equal(reticulate::py_to_r(ad$obs$who$tolist()), colnames(m))
  expect_error(as_anndata(m, obs = obs[-1, , drop = FALSE]), "row names of `obs` are not the matrix's colnames")
  # a factor with an NA level (addNA()) travels with its NA as missing
  fac <- data.frame(f = addNA(factor(c("a", NA, rep("b", ncol(m) - 2)))))
  ad <- as_anndata(m, obs = fac)
  expect_equal(reticulate::py_to_r(ad$obs$f$cat$categories$tolist()), c("a", "b"))
  expect_true(reticulate::py_to_r(ad$obs$f$isna()$tolist())[[2]])
  expect_error(as_sce(list()), "expected a Python AnnData")
  expect_error(read_h5ad(file.path(tempdir(), "no-such-file.h5ad")), "file not found")
})

test_that("pbmc_small converts with its metadata and reductions", {
  skip_if_no_python()
  skip_if_not_installed("SeuratObject")
  pbmc <- SeuratObject::pbmc_small
  adata <- as_anndata(pbmc)
  expect_equal(unlist(py_val(adata$shape)), c(80, 230))
  expect_true(all(names(pbmc[[]]) %in% py_val(adata$obs$columns$tolist())))
  expect_setequal(py_keys(adata$obsm), c("X_pca", "X_tsne"))
  expect_equal(unlist(py_val(adata$obsm[["X_pca"]]$shape)), c(80, 19))
  expect_true("vst.variable" %in% py_val(adata$var$columns$tolist()))

  back <- as_seurat(adata)
  expect_setequal(SeuratObject::Reductions(back), c("pca", "tsne"))
  expect_equal(unname(SeuratObject::Embeddings(back, "pca")),
               unname(SeuratObject::Embeddings(pbmc, "pca")))
  expect_identical(SeuratObject::Key(back[["pca"]]), "pca_")
  expect_same_columns(back[[]], pbmc[[]])
  expect_identical(back[["RNA"]][[]]$vst.variable, pbmc[["RNA"]][[]]$vst.variable)
  expect_identical(SeuratObject::GetAssayData(back, slot = "counts"),
                   SeuratObject::GetAssayData(pbmc, slot = "counts"))
})

test_that("obsm X_scVI comes back as a reducedDim / DimReduc named scVI", {
  skip_if_no_python()
  skip_if_not_installed("SeuratObject")
  adata <- as_anndata(toy_counts())
  adata$obsm$`__setitem__`("X_scVI", reticulate::np_array(matrix(1:10 / 10, 5), dtype = "float32"))
  sce <- as_sce(adata)
  expect_equal(SingleCellExperiment::reducedDimNames(sce), "scVI")
  seu <- suppressWarnings(as_seurat(adata))
  expect_identical(SeuratObject::Key(seu[["scVI"]]), "scVI_")
  expect_equal(unname(SeuratObject::Embeddings(seu, "scVI")), matrix(1:10 / 10, 5),
               tolerance = 1e-6)
})

test_that("layers become extra SCE assays", {
  skip_if_no_python()
  skip_if_not_installed("SingleCellExperiment")
  adata <- as_anndata(toy_counts())
  adata$layers$`__setitem__`("spliced", adata$X$copy())
  sce <- as_sce(adata)
  expect_equal(SummarizedExperiment::assayNames(sce), c("counts", "spliced"))
  expect_identical(SummarizedExperiment::assay(sce, "spliced"), toy_counts())
})

test_that("kang_se_12261.h5ad reads into an SCE with its metadata", {
  skip_if_no_python()
  skip_if_not_installed("SingleCellExperiment")
  # ../shared/data beside the repository; the tests run in tests/testthat
  path <- file.path(testthat::test_path(), "..", "..", "..", "shared", "data", "kang_se_12261.h5ad")
  skip_if_not(file.exists(path), "kang_se_12261.h5ad not found (../shared/data)")
  sce <- as_sce(read_h5ad(path))
  expect_equal(dim(sce), c(1287L, 12261L))
  expect_true(all(c("sample_id", "cluster_id") %in% names(SummarizedExperiment::colData(sce))))
  expect_true(is.integer(sce$sample_id))
  expect_length(unique(sce$sample_id), 8)
  expect_true(is.factor(sce$cluster_id))
  expect_length(levels(sce$cluster_id), 8)
  expect_s4_class(SummarizedExperiment::assay(sce), "dgCMatrix")
  expect_true(all(SummarizedExperiment::assay(sce)@x == round(SummarizedExperiment::assay(sce)@x)))
  expect_identical(SummarizedExperiment::rowData(sce)$feature[1], "ISG15")
})

# ---- proteins (CITE-seq) ---------------------------------------------------------------------

# 3 proteins x 5 cells of counts, named as toy_counts()'s cells.
toy_adt <- function() {
  matrix(c(10, 0, 3, 25, 1, 7, 0, 0, 12, 4, 9, 2, 30, 5, 1), nrow = 3,
         dimnames = list(c("CD3", "CD4", "CD19"), paste0("cell_", 1:5)))
}

py_proteins <- function(adata) {
  df <- adata$obsm[["protein_expression"]]
  list(class = class(df)[1],
       values = reticulate::py_to_r(df$to_numpy()),
       columns = py_val(df$columns$tolist()),
       index = py_val(df$index$tolist()))
}

test_that("a Seurat ADT assay travels as obsm protein_expression and comes back as an assay", {
  skip_if_no_python()
  seu <- toy_seurat()
  seu[["ADT"]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = toy_adt()))
  adata <- as_anndata(seu, protein_assay = "ADT")
  p <- py_proteins(adata)
  expect_match(p$class, "DataFrame")
  expect_equal(p$columns, c("CD3", "CD4", "CD19"))
  expect_equal(p$index, colnames(seu))
  expect_equal(p$values, t(toy_adt()), ignore_attr = TRUE)
  expect_false("X_ADT" %in% py_keys(adata$obsm))
  # without protein_assay the proteins stay behind
  expect_false("protein_expression" %in% py_keys(as_anndata(seu)$obsm))

  back <- suppressWarnings(as_seurat(adata))
  expect_true("ADT" %in% SeuratObject::Assays(back))
  adt <- SeuratObject::GetAssayData(back, assay = "ADT", slot = "counts")
  expect_s4_class(adt, "dgCMatrix")
  expect_identical(adt, SeuratObject::GetAssayData(seu, assay = "ADT", slot = "counts"))
  expect_false("protein_expression" %in% SeuratObject::Reductions(back))
  # the cells of the assay follow the object's order even when stored in another
  shuffled <- seu
  shuffled[["ADT"]] <- suppressWarnings(SeuratObject::CreateAssayObject(
    counts = toy_adt()[, 5:1]))
  expect_equal(py_proteins(as_anndata(shuffled, protein_assay = "ADT"))$values,
               t(toy_adt()), ignore_attr = TRUE)
})

test_that("an SCE ADT altExp travels as obsm protein_expression and comes back as an altExp", {
  skip_if_no_python()
  sce <- toy_sce()
  SingleCellExperiment::altExp(sce, "ADT") <- SummarizedExperiment::SummarizedExperiment(
    list(counts = toy_adt()))
  adata <- as_anndata(sce, protein_altexp = "ADT")
  p <- py_proteins(adata)
  expect_equal(p$columns, rownames(toy_adt()))
  expect_equal(p$index, colnames(sce))
  expect_equal(p$values, t(toy_adt()), ignore_attr = TRUE)
  back <- as_sce(adata)
  expect_equal(SingleCellExperiment::altExpNames(back), "ADT")
  adt <- SummarizedExperiment::assay(SingleCellExperiment::altExp(back, "ADT"), "counts")
  expect_true(is.matrix(adt))  # proteins are few: dense
  expect_identical(adt, toy_adt())
  expect_equal(SingleCellExperiment::reducedDimNames(back), "PCA")
  # sparse protein counts in R convert the same
  sparse <- sce
  SingleCellExperiment::altExp(sparse, "ADT") <- SummarizedExperiment::SummarizedExperiment(
    list(counts = methods::as(toy_adt(), "CsparseMatrix")))
  expect_equal(py_proteins(as_anndata(sparse, protein_altexp = "ADT"))$values,
               t(toy_adt()), ignore_attr = TRUE)
  # as_sce(protein_altexp = NULL): the obsm entry stays an ordinary reducedDim
  expect_true("protein_expression" %in%
                SingleCellExperiment::reducedDimNames(as_sce(adata, protein_altexp = NULL)))
})

test_that("missing or bad protein counts get clear errors", {
  skip_if_no_python()
  seu <- toy_seurat()
  expect_error(as_anndata(seu, protein_assay = "ADT"),
               "protein assay 'ADT' not found; available assays: RNA")
  expect_error(as_anndata(toy_sce(), protein_altexp = "ADT"),
               "protein altExp 'ADT' not found; available altExps: \\(none\\)")
  bad <- toy_adt()
  bad[1, 1] <- 0.5
  seu[["ADT"]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = bad))
  expect_error(as_anndata(seu, protein_assay = "ADT"), "does not hold raw counts.*0.5")
  expect_no_error(as_anndata(seu, protein_assay = "ADT", allow_non_counts = TRUE))
})

test_that("the shipped CITE-seq data set comes as Seurat (ADT assay) and SCE (ADT altExp)", {
  skip_if_no_python()
  cite <- cellvi_dataset("pbmc_cite_small")
  expect_equal(dim(cite), c(500L, 400L))
  expect_equal(dim(cite[["ADT"]]), c(14L, 400L))
  expect_true("CD3-TotalSeqB" %in% rownames(cite[["ADT"]]))
  sce <- cellvi_dataset("pbmc_cite_small", as = "SingleCellExperiment")
  expect_equal(dim(SingleCellExperiment::altExp(sce, "ADT")), c(14L, 400L))
  expect_true("CD3_TotalSeqB" %in% rownames(SingleCellExperiment::altExp(sce, "ADT")))
})
