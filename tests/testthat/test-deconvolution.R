# Deconvolution verbs (RunDestVI / runDestVI, RunStereoscope / runStereoscope) on the shipped
# lymph node reference (330 cells, 11 types) and Visium spots, and on pseudo-spots summed from
# reference cells (truth known).

# Spots summed from 2-10 random cells of `reference` (a Seurat object); truth = cell fractions.
pseudo_spots <- function(reference, n_spots, seed = 1) {
  set.seed(seed)
  counts <- SeuratObject::GetAssayData(reference, slot = "counts")
  types <- as.character(reference$cell_type)
  levels <- sort(unique(types))
  pick <- lapply(seq_len(n_spots), function(i) sample(ncol(counts), sample(2:10, 1)))
  spots <- do.call(cbind, lapply(pick, function(cells) Matrix::rowSums(counts[, cells, drop = FALSE])))
  spots <- methods::as(Matrix::Matrix(spots, sparse = TRUE), "CsparseMatrix")
  colnames(spots) <- paste0("spot", seq_len(n_spots))
  truth <- t(vapply(pick, function(cells) as.numeric(table(factor(types[cells], levels)) / length(cells)),
                    numeric(length(levels))))
  dimnames(truth) <- list(colnames(spots), levels)
  object <- SeuratObject::CreateSeuratObject(spots)
  object$x <- stats::runif(n_spots)
  object$y <- stats::runif(n_spots)
  list(object = object, truth = truth)
}

prop_matrix <- function(meta, types) {
  as.matrix(meta[, paste0("prop.", types)])
}

test_that("RunStereoscope recovers pseudo-spot proportions; results in metadata and an assay", {
  skip_if_no_core()
  reference <- cellvi_dataset("lymphnode_reference_small")
  # Half of each type's cells as the reference, the other half summed into spots.
  set.seed(0)
  half <- unlist(lapply(split(seq_len(ncol(reference)), reference$cell_type),
                        function(i) sample(i, length(i) %/% 2)))
  ref <- reference[, half]
  made <- pseudo_spots(reference[, -half], 120)
  dir <- file.path(tempdir(), "stereoscope_pseudo")
  out <- RunStereoscope(made$object, ref, labels_key = "cell_type", max_epochs = 300, seed = 0,
                        model_dir = dir, verbose = FALSE)
  types <- sort(unique(as.character(reference$cell_type)))
  props <- prop_matrix(out[[]], types)
  expect_true(all(props >= 0))
  expect_equal(unname(rowSums(props)), rep(1, ncol(out)), tolerance = 1e-6)
  r <- cor(as.vector(props), as.vector(made$truth[colnames(out), types]))
  # measured 0.52 (seed 0): 15 reference cells per type; chance is 0
  expect_gt(r, 0.35)
  # the assay "proportions": cell types x spots, the same numbers
  expect_true("proportions" %in% SeuratObject::Assays(out))
  assay <- as.matrix(SeuratObject::GetAssayData(out, assay = "proportions"))
  expect_equal(ncol(assay), ncol(out))
  expect_equal(unname(assay["B", ]), unname(out$prop.B), tolerance = 1e-6)
  # the record: both models saved, reloadable
  record <- SeuratObject::Misc(out, "cellvi")$stereoscope
  expect_equal(record$model, "SpatialStereoscope")
  expect_equal(record$reference_model, "RNAStereoscope")
  expect_true(dir.exists(record$model_dir) && dir.exists(record$reference_model_dir))
  model <- load_cellvi_model(record$model_dir)
  expect_equal(unlist(reticulate::py_to_r(model$cell_types)), types)
  # nothing else changed
  expect_equal(out@meta.data[, colnames(made$object@meta.data)], made$object@meta.data)
  skip_if_not_installed("ggplot2")
  p <- plot_proportions(out, cell_types = c("B", "T_CD4"))
  expect_s3_class(p, "ggplot")
  expect_equal(nrow(p$data), 2 * ncol(out))
})

test_that("RunDestVI with defaults on the shipped Visium spots; runDestVI on SCE", {
  skip_if_no_core()
  reference <- cellvi_dataset("lymphnode_reference_small")
  spots <- cellvi_dataset("lymphnode_visium_small")
  spots <- spots[, 1:200]
  out <- RunDestVI(spots, reference, labels_key = "cell_type", reference_max_epochs = 30,
                   max_epochs = 30, seed = 0, verbose = FALSE,
                   model_dir = file.path(tempdir(), "destvi_visium"))
  types <- sort(unique(as.character(reference$cell_type)))
  props <- prop_matrix(out[[]], types)
  expect_equal(unname(rowSums(props)), rep(1, ncol(out)), tolerance = 1e-6)
  expect_true(all(props >= 0))
  expect_equal(SeuratObject::Misc(out, "cellvi")$destvi$reference_model, "CondSCVI")
  model <- load_cellvi_model(SeuratObject::Misc(out, "cellvi")$destvi$model_dir)
  gamma <- reticulate::py_to_r(model$get_gamma(return_numpy = TRUE))
  expect_equal(dim(gamma), c(200L, 5L, length(types)))
  skip_if_not_installed("ggplot2")
  expect_s3_class(plot_proportions(out), "ggplot")  # coordinates from metadata x, y

  skip_if_not_installed("SingleCellExperiment")
  ref_sce <- cellvi_dataset("lymphnode_reference_small", as = "SingleCellExperiment")
  sce <- cellvi_dataset("lymphnode_visium_small", as = "SingleCellExperiment")[, 1:100]
  sce <- runDestVI(sce, ref_sce, labels_key = "cell_type", reference_max_epochs = 10,
                   max_epochs = 10, amortization = "none", seed = 0, verbose = FALSE,
                   model_dir = file.path(tempdir(), "destvi_sce"))
  alt <- SingleCellExperiment::altExp(sce, "proportions")
  values <- SummarizedExperiment::assay(alt, "proportions")
  expect_equal(dim(values), c(length(types), 100L))
  expect_equal(unname(colSums(values)), rep(1, 100), tolerance = 1e-6)
  expect_equal(unname(values["B", ]), unname(sce$prop.B), tolerance = 1e-6)
  expect_equal(S4Vectors::metadata(sce)$cellvi$destvi$model, "DestVI")
  # a Seurat reference for SCE spots works too
  sce2 <- runStereoscope(sce, reference, labels_key = "cell_type", max_epochs = 10,
                         reference_max_epochs = 5, verbose = FALSE,
                         model_dir = file.path(tempdir(), "stereo_sce"))
  expect_true("prop.B" %in% colnames(SummarizedExperiment::colData(sce2)))
})

test_that("deconvolution verbs give clear errors", {
  skip_if_no_core()
  reference <- cellvi_dataset("lymphnode_reference_small")
  spots <- cellvi_dataset("lymphnode_visium_small")[, 1:60]
  expect_error(RunStereoscope(spots, reference, labels_key = "celltype", verbose = FALSE),
               "reference metadata column 'celltype' \\(labels_key\\) not found")
  expect_error(RunStereoscope(spots, reference, verbose = FALSE), "labels_key")
  expect_error(RunStereoscope(spots, "reference", labels_key = "cell_type", verbose = FALSE),
               "must be a Seurat object or a SingleCellExperiment")
  few <- spots[1:5, ]
  expect_error(RunStereoscope(few, reference, labels_key = "cell_type", max_epochs = 2,
                              reference_max_epochs = 2, verbose = FALSE),
               "share 5 genes with the reference")
  expect_error(RunDestVI(spots, reference, labels_key = "cell_type", amortization = "all",
                         verbose = FALSE), "amortization")
  expect_warning(
    RunDestVI(spots[, 1:30], reference, labels_key = "cell_type", max_epochs = 2,
              reference_max_epochs = 2, verbose = FALSE,
              model_dir = file.path(tempdir(), "destvi_few")),
    "fewer than 50 spots")
  expect_error(plot_proportions(spots), "no metadata columns starting with 'prop.'")
})

test_that("plot_proportions matches coordinates to spots by name, never silently by position", {
  skip_if_no_core()
  skip_if_not_installed("ggplot2")
  spots <- cellvi_dataset("lymphnode_visium_small")[, 1:20]
  spots$prop.B <- seq(0, 1, length.out = 20)
  spots$prop.T <- 1 - spots$prop.B
  # SeuratObject 5's image coordinates: x, y and the spot in a column `cell`, any order
  xy <- data.frame(x = spots$x, y = spots$y, cell = colnames(spots))[20:1, ]
  rownames(xy) <- NULL
  b <- plot_proportions(spots, coords = xy)$data
  b <- b[b$cell_type == "B", ]
  expect_equal(b$x, unname(spots$x))
  expect_equal(b$proportion, unname(spots$prop.B))
  # rows named, but not by spot: an error, not a guess
  named <- data.frame(x = spots$x, y = spots$y, row.names = paste0("spot", 1:20))
  expect_error(plot_proportions(spots, coords = named), "row names that are not the spots' names")
  # unnamed rows, one per spot: taken in the spots' order
  plain <- cbind(spots$x, spots$y)
  b <- plot_proportions(spots, coords = plain)$data
  expect_equal(b$y[b$cell_type == "T"], unname(spots$y))
})

test_that("RunDestVI passes the reference's prior and cell weights to CondSCVI", {
  skip_if_no_core()
  reference <- cellvi_dataset("lymphnode_reference_small")
  spots <- cellvi_dataset("lymphnode_visium_small")[, 1:60]
  expect_error(RunDestVI(spots, reference, labels_key = "cell_type", reference_prior = "gauss",
                         verbose = FALSE), "`reference_prior` must be one of \"normal\", \"mog\"")
  expect_error(RunDestVI(spots, reference, labels_key = "cell_type", weight_obs = NA,
                         verbose = FALSE), "`weight_obs` must be TRUE or FALSE")
  out <- RunDestVI(spots, reference, labels_key = "cell_type", reference_prior = "mog",
                   weight_obs = TRUE, max_epochs = 2, reference_max_epochs = 2, seed = 0,
                   verbose = FALSE, model_dir = file.path(tempdir(), "destvi_mog"))
  record <- SeuratObject::Misc(out, "cellvi")$destvi
  settings <- reticulate::py_to_r(load_cellvi_model(record$reference_model_dir)$init_kwargs)
  expect_equal(settings$prior, "mog")
  expect_true(settings$weight_obs)
  # vamp_prior_p = NULL: a standard normal prior of the states
  out <- RunDestVI(spots, reference, labels_key = "cell_type", vamp_prior_p = NULL,
                   max_epochs = 2, reference_max_epochs = 2, seed = 0, verbose = FALSE,
                   model_dir = file.path(tempdir(), "destvi_normal"))
  types <- sort(unique(as.character(reference$cell_type)))
  expect_equal(unname(rowSums(prop_matrix(out[[]], types))), rep(1, ncol(out)), tolerance = 1e-6)
})

test_that("`reference_assay` names the reference's counts whatever the kinds of spots and reference", {
  skip_if_no_core()
  skip_if_not_installed("SingleCellExperiment")
  reference <- cellvi_dataset("lymphnode_reference_small")
  spots <- cellvi_dataset("lymphnode_visium_small")[, 1:60]
  spots_sce <- cellvi_dataset("lymphnode_visium_small", as = "SingleCellExperiment")[, 1:60]
  # a Seurat reference whose counts of 250 genes are in a second assay
  counts <- SeuratObject::GetAssayData(reference, slot = "counts")
  reference[["RAW"]] <- SeuratObject::CreateAssayObject(counts = counts[1:250, ])
  # an SCE reference whose counts are in an assay "raw" (none named "counts")
  ref_sce <- cellvi_dataset("lymphnode_reference_small", as = "SingleCellExperiment")[1:250, ]
  SummarizedExperiment::assay(ref_sce, "raw") <- SummarizedExperiment::assay(ref_sce, "counts")
  SummarizedExperiment::assay(ref_sce, "counts") <- NULL
  reference_genes <- function(record) {
    length(reticulate::py_to_r(load_cellvi_model(record$reference_model_dir)$var_names))
  }
  fit <- function(verb, spots, ref, ...) {
    verb(spots, ref, labels_key = "cell_type", max_epochs = 2, reference_max_epochs = 2,
         seed = 0, verbose = FALSE, model_dir = tempfile("deconv"), ...)
  }
  # the SCE verb with a Seurat reference, the Seurat verb with an SCE reference
  sce <- fit(runStereoscope, spots_sce, reference, reference_assay = "RAW")
  record <- S4Vectors::metadata(sce)$cellvi$stereoscope
  expect_equal(record$reference_assay, "RAW")
  expect_equal(reference_genes(record), 250L)
  seu <- fit(RunStereoscope, spots, ref_sce, reference_assay = "raw")
  record <- SeuratObject::Misc(seu, "cellvi")$stereoscope
  expect_equal(record$reference_assay, "raw")
  expect_equal(reference_genes(record), 250L)
  # the SCE verbs' former name still works; both names at once must agree
  sce <- fit(runStereoscope, spots_sce, ref_sce, reference_assay.type = "raw")
  expect_equal(S4Vectors::metadata(sce)$cellvi$stereoscope$reference_assay, "raw")
  expect_error(fit(runDestVI, spots_sce, ref_sce, reference_assay = "raw",
                   reference_assay.type = "counts"),
               "`reference_assay` \\(\"raw\"\\) and `reference_assay.type` \\(\"counts\"\\)")
  # defaults: a Seurat reference's default assay, an SCE reference's "counts"
  expect_error(fit(RunDestVI, spots, ref_sce),
               "the reference has no assay 'counts' \\(reference_assay\\); its assays: raw")
  expect_error(fit(runDestVI, spots_sce, reference, reference_assay = "ADT"),
               "the reference has no assay 'ADT' \\(reference_assay\\); its assays: RNA, RAW")
})
