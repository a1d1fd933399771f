# Seurat v5 objects (SeuratObject >= 5: Assay5, layers, split layers): conversion both ways,
# every Seurat verb on split counts (the split as the batch), results written as v5 assays, and
# scVIIntegration() called as Seurat 5's IntegrateLayers() calls its methods.
#
# Debian's SeuratObject is 4.1, so the normal test run skips this file; scripts/test.sh runs it
# in a separate R process with a library holding SeuratObject 5.3 first in R_LIBS
# (../shared/rpkgs/install_seurat_v5.sh).

skip_unless_v5 <- function(core = TRUE) {
  skip_if_not(utils::packageVersion("SeuratObject") >= "5.0.0",
              "needs SeuratObject >= 5 (scripts/test.sh runs this file with it)")
  if (core) skip_if_not(cellvi_available(), "cellvi Python core not available")
}

# `object` with `assay` as an Assay5, its counts and data split by `split` (a vector per cell).
as_v5 <- function(object, split = NULL, assay = SeuratObject::DefaultAssay(object)) {
  if (!inherits(object[[assay]], "StdAssay")) {
    suppressWarnings(object[[assay]] <- methods::as(object[[assay]], "Assay5"))
  }
  if (!is.null(split)) object[[assay]] <- suppressMessages(split(object[[assay]], f = split))
  object
}

counts_of <- function(object, assay = "RNA") {
  SeuratObject::LayerData(object, assay = assay, layer = "counts")
}

# pbmc_small, its RNA counts split in layers by `groups` (counts.g2, counts.g1: interleaved cells)
pbmc_split <- function() as_v5(SeuratObject::pbmc_small, split = SeuratObject::pbmc_small$groups)

test_that("split counts layers are read as one matrix, cells in the object's order", {
  skip_unless_v5(core = FALSE)
  pbmc <- SeuratObject::pbmc_small
  joined <- as_v5(pbmc)
  split <- pbmc_split()
  expect_equal(SeuratObject::Layers(split[["RNA"]]),
               c("data.g2", "data.g1", "scale.data", "counts.g2", "counts.g1"))
  m <- cellvi:::.seurat_matrix(split, "RNA", "counts")
  expect_s4_class(m, "dgCMatrix")
  expect_identical(m, counts_of(joined))
  expect_identical(colnames(m), colnames(pbmc))
  expect_identical(cellvi:::.seurat_matrix(split, "RNA", "data"),
                   SeuratObject::LayerData(joined, layer = "data"))
  groups <- cellvi:::.seurat5_split(split, "RNA")
  expect_identical(names(groups), colnames(pbmc))
  expect_identical(as.character(groups), as.character(pbmc$groups))
  expect_equal(levels(groups), c("g2", "g1"))
  expect_null(cellvi:::.seurat5_split(joined, "RNA"))
  expect_equal(cellvi:::.seurat_layer_names(split, "RNA"), c("data", "scale.data", "counts"))
  expect_error(cellvi:::.seurat_matrix(split, "RNA", "spliced"), "layer 'spliced' not found")
  # parts with different features: the union in the assay's order, zero where a part lacks one
  a <- Matrix::sparseMatrix(i = c(1, 2), j = c(1, 2), x = c(1, 2), dims = c(2, 2),
                            dimnames = list(c("f1", "f3"), c("c1", "c3")))
  b <- Matrix::sparseMatrix(i = c(1, 2), j = c(1, 1), x = c(5, 6), dims = c(2, 1),
                            dimnames = list(c("f2", "f3"), "c2"))
  expect_warning(j <- cellvi:::.join_layer_parts(list(a, b), c("f1", "f2", "f3"),
                                                c("c1", "c2", "c3"), "x"), "count as zero")
  expect_equal(as.matrix(j), matrix(c(1, 0, 0, 0, 5, 6, 0, 0, 2), 3,
                                    dimnames = list(c("f1", "f2", "f3"), c("c1", "c2", "c3"))))
})

test_that("as_anndata / as_seurat round trips of v5 objects, split and joined", {
  skip_unless_v5()
  pbmc <- SeuratObject::pbmc_small
  split <- pbmc_split()
  ad <- as_anndata(split)
  expect_equal(unlist(reticulate::py_to_r(ad$obs_names$tolist())), colnames(pbmc))
  x <- reticulate::py_to_r(ad$X$toarray())
  expect_equal(unname(t(x)), unname(as.matrix(counts_of(as_v5(pbmc)))))
  back <- as_seurat(ad)
  expect_s4_class(back[["RNA"]], "Assay5")
  expect_equal(SeuratObject::Layers(back[["RNA"]]), c("counts.g2", "counts.g1"))
  for (l in c("counts.g2", "counts.g1")) {
    expect_equal(SeuratObject::LayerData(back, layer = l),
                 SeuratObject::LayerData(split, layer = l))
  }
  expect_false("split.layer" %in% colnames(back[[]]))  # the layers hold it
  expect_equal(back$groups, split$groups)
  expect_equal(SeuratObject::Reductions(back), c("pca", "tsne"))
  # split by another obs column; or not at all
  other <- as_seurat(ad, split.by = "letter.idents")
  expect_equal(SeuratObject::Layers(other[["RNA"]]), c("counts.A", "counts.B"))
  flat <- as_seurat(ad, split.by = NULL)
  expect_equal(SeuratObject::Layers(flat[["RNA"]]), "counts")
  expect_equal(as.character(flat$split.layer), as.character(pbmc$groups))
  expect_error(as_seurat(ad, split.by = "nope"), "'nope' \\(split.by\\) not found")
  # joined: an Assay5 with one counts layer, metadata kept
  joined <- as_v5(pbmc)
  again <- as_seurat(as_anndata(joined))
  expect_s4_class(again[["RNA"]], "Assay5")
  expect_equal(SeuratObject::Layers(again[["RNA"]]), "counts")
  expect_equal(counts_of(again), counts_of(joined))
  expect_equal(again[[]][, colnames(pbmc[[]])], pbmc[[]], ignore_attr = TRUE)
  # the normalized layers, split too
  data <- as_anndata(split, slot = "data", allow_non_counts = TRUE)
  expect_equal(unname(t(reticulate::py_to_r(data$X$toarray()))),
               unname(as.matrix(SeuratObject::LayerData(joined, layer = "data"))),
               tolerance = 1e-6)
})

test_that("RunSCVI on split counts: the split is the batch; queries work split and joined", {
  skip_unless_v5()
  split <- pbmc_split()
  expect_message(out <- RunSCVI(split, max_epochs = 3, seed = 0, verbose = FALSE),
                 "split in 2 layers \\(counts.g2, counts.g1\\): the split is the batch")
  expect_equal(SeuratObject::Layers(out[["RNA"]]), SeuratObject::Layers(split[["RNA"]]))
  expect_equal(rownames(SeuratObject::Embeddings(out, "scvi")), colnames(split))
  record <- SeuratObject::Misc(out[["scvi"]])
  expect_equal(record$setup$batch_key, "split.layer")
  expect_equal(as.character(out$split.layer), as.character(split$groups))
  model <- load_cellvi_model(out, "scvi")
  expect_equal(unlist(reticulate::py_to_r(model$registry$batch_key)), "split.layer")
  # normalized expression: a new Assay5 (one joined "data" layer)
  norm <- NormalizeSCVI(out, features = c("CD3E", "MS4A1", "LYZ"), verbose = FALSE)
  expect_s4_class(norm[["SCVI"]], "Assay5")
  expect_equal(SeuratObject::Layers(norm[["SCVI"]]), "data")
  expr <- SeuratObject::LayerData(norm, assay = "SCVI", layer = "data")
  expect_equal(dim(expr), c(3L, ncol(split)))
  expect_equal(colnames(expr), colnames(split))
  expect_true(all(is.finite(as.matrix(expr))))
  markers <- FindMarkersSCVI(out, ident.1 = "0", ident.2 = "1", n_samples = 50, verbose = FALSE)
  expect_s3_class(markers, "data.frame")
  expect_true(all(c("avg_log2FC", "pct.1", "pct.2", "proba_de") %in% names(markers)))
  # after JoinLayers() the model's batch column is in the metadata
  joined <- out
  joined[["RNA"]] <- SeuratObject::JoinLayers(joined[["RNA"]])
  again <- NormalizeSCVI(joined, features = c("CD3E", "MS4A1"), verbose = FALSE)
  again <- SeuratObject::LayerData(again, assay = "SCVI", layer = "data")
  expect_equal(dimnames(again), dimnames(expr[1:2, ]))
})

test_that("RunSCVI on v5 objects: batch_key wins over the split; joined v5 as v4", {
  skip_unless_v5()
  split <- pbmc_split()
  expect_no_message(out <- RunSCVI(split, batch_key = "letter.idents", max_epochs = 1, seed = 0,
                                   verbose = FALSE))
  expect_equal(SeuratObject::Misc(out[["scvi"]])$setup$batch_key, "letter.idents")
  expect_false("split.layer" %in% colnames(out[[]]))
  joined <- as_v5(SeuratObject::pbmc_small)
  expect_no_message(flat <- RunSCVI(joined, max_epochs = 1, seed = 0, verbose = FALSE))
  expect_null(SeuratObject::Misc(flat[["scvi"]])$setup$batch_key)
  norm <- NormalizeSCVI(flat, verbose = FALSE)
  expect_s4_class(norm[["SCVI"]], "Assay5")
  expect_equal(dim(norm[["SCVI"]]), dim(joined))
})

# Calls `method` exactly as Seurat 5's IntegrateLayers() calls integration methods, for a v5
# (StdAssay) assay, and adds the results to the object as it does.
integrate_layers <- function(object, method, orig.reduction = "pca", assay = NULL,
                             features = NULL, layers = NULL, scale.layer = "scale.data", ...) {
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  stopifnot(inherits(object[[assay]], "StdAssay"))
  layers <- SeuratObject::Layers(object, assay = assay, search = layers %||% "data")
  scale.layer <- SeuratObject::Layers(object, search = scale.layer)
  features <- features %||% SeuratObject::VariableFeatures(object, assay = assay,
                                                           nfeatures = 2000L)
  if (!is.null(scale.layer)) {
    features <- intersect(features, SeuratObject::Features(object, assay = assay,
                                                           layer = scale.layer))
  }
  obj.orig <- object[[orig.reduction]]
  if (is.null(SeuratObject::DefaultAssay(obj.orig))) SeuratObject::DefaultAssay(obj.orig) <- assay
  value <- method(object = object[[assay]], assay = assay, orig = obj.orig, layers = layers,
                  scale.layer = scale.layer, features = features, ...)
  for (i in names(value)) object[[i]] <- value[[i]]
  object
}
`%||%` <- function(x, y) if (is.null(x)) y else x

test_that("scVIIntegration works as IntegrateLayers() calls it, on the split layers", {
  skip_unless_v5()
  split <- pbmc_split()
  expect_equal(attr(scVIIntegration, "Seurat.method"), "integration")
  # pbmc_small's scale.data holds its 20 variable features only, and those leave 6 cells
  # without counts: IntegrateLayers() then intersects the features with the default layer's
  expect_error(integrate_layers(split, scVIIntegration, max_epochs = 1, verbose = FALSE),
               "6 cells have no counts in the 20 features")
  out <- integrate_layers(split, scVIIntegration, features = rownames(split), scale.layer = NULL,
                          max_epochs = 3, seed = 0, verbose = FALSE)
  expect_true("integrated.scvi" %in% SeuratObject::Reductions(out))
  emb <- SeuratObject::Embeddings(out, "integrated.scvi")
  expect_equal(dim(emb), c(ncol(split), 10L))
  expect_equal(rownames(emb), colnames(split))
  expect_equal(colnames(emb)[1], "integratedscVI_1")
  expect_equal(SeuratObject::DefaultAssay(out[["integrated.scvi"]]), "RNA")
  # the model: fitted on the features IntegrateLayers passed, the split as batch
  model <- load_cellvi_model(out, "integrated.scvi")
  expect_setequal(unlist(reticulate::py_to_r(model$var_names)), rownames(split))
  expect_equal(unlist(reticulate::py_to_r(model$registry$batch_key)), "split.layer")
  expect_equal(as.character(out$split.layer), as.character(split$groups))
  # later verbs use it, also after JoinLayers()
  out[["RNA"]] <- SeuratObject::JoinLayers(out[["RNA"]])
  norm <- NormalizeSCVI(out, reduction = "integrated.scvi", verbose = FALSE)
  expect_equal(dim(norm[["SCVI"]]), dim(split))
  # own arguments and `groups`
  groups <- data.frame(group = split$letter.idents, row.names = colnames(split))
  by_groups <- integrate_layers(split, scVIIntegration, features = rownames(split)[1:150],
                                scale.layer = NULL,
                                groups = groups, new.reduction = "scvi.letters", n_latent = 4,
                                max_epochs = 1, seed = 0, verbose = FALSE)
  expect_equal(ncol(SeuratObject::Embeddings(by_groups, "scvi.letters")), 4L)
  expect_equal(as.character(by_groups$scvi.letters.group), as.character(split$letter.idents))
  # nothing to integrate; not a v5 assay
  expect_error(integrate_layers(as_v5(SeuratObject::pbmc_small), scVIIntegration,
                                scale.layer = NULL, max_epochs = 1), "not split in layers")
  expect_error(scVIIntegration(SeuratObject::pbmc_small[["RNA"]], max_epochs = 1),
               "Seurat v5 assay")
})

test_that("scVIIntegration refuses RunSCVI()'s arguments it cannot use instead of dropping them", {
  # before anything else: any SeuratObject, no core needed
  expect_error(scVIIntegration(NULL, labels_key = "cell_type"),
               "does not take RunSCVI\\(\\)'s `labels_key` \\(IntegrateLayers\\(\\) passes the assay alone")
  expect_error(scVIIntegration(NULL, categorical_covariate_keys = "donor", batch_key = "sample"),
               "`categorical_covariate_keys` \\(IntegrateLayers.*; `batch_key` \\(the batch is the split")
  expect_error(scVIIntegration(NULL, reduction.name = "x"), "with `new.reduction`")
  # IntegrateLayers()'s own arguments, and other methods', still pass
  expect_error(scVIIntegration(NULL, normalization.method = "LogNormalize", dims = 1:30),
               "integrates the layers of a Seurat v5 assay")
})

test_that("scVIIntegration passes plan_kwargs to the training plan", {
  skip_unless_v5()
  split <- pbmc_split()
  expect_error(integrate_layers(split, scVIIntegration, features = rownames(split),
                                scale.layer = NULL, max_epochs = 1,
                                plan_kwargs = list(no_such_setting = 1), verbose = FALSE),
               "no_such_setting")
  out <- integrate_layers(split, scVIIntegration, features = rownames(split), scale.layer = NULL,
                          max_epochs = 1, plan_kwargs = list(kl_warmup_cap = 0.5), seed = 0,
                          verbose = FALSE)
  expect_equal(SeuratObject::Misc(out[["integrated.scvi"]])$train_args$plan_kwargs,
               list(kl_warmup_cap = 0.5))
})

test_that("RunSCANVI and MapQuerySCVI on split objects", {
  skip_unless_v5()
  pbmc <- as_v5(pbmc_with_labels(), split = SeuratObject::pbmc_small$groups)
  expect_message(ref <- RunSCANVI(pbmc, labels_key = "labels", max_epochs = 2, seed = 0,
                                  verbose = FALSE), "the split is the batch")
  expect_equal(SeuratObject::Misc(ref[["scanvi"]])$setup$batch_key, "split.layer")
  expect_true("predicted.labels" %in% colnames(ref[[]]))
  # a query split in its own layers: its split is its batch (the reference's batch column)
  query <- as_v5(SeuratObject::pbmc_small, split = rep(c("q1", "q2"), length.out = 80))
  mapped <- MapQuerySCVI(query, ref, max_epochs = 1, seed = 0, verbose = FALSE)
  expect_equal(rownames(SeuratObject::Embeddings(mapped, "scanvi")), colnames(query))
  expect_true("predicted.labels" %in% colnames(mapped[[]]))
  model <- load_cellvi_model(mapped, "scanvi")
  batches <- unlist(reticulate::py_to_r(model$registry$batch_categories))
  expect_true(all(c("g2", "g1", "q1", "q2") %in% batches))
  # ... also when the reference's batch is another column, which the query lacks
  other <- RunSCVI(as_v5(SeuratObject::pbmc_small), batch_key = "groups", max_epochs = 1,
                   seed = 0, verbose = FALSE)
  query$groups <- NULL
  expect_message(mapped <- MapQuerySCVI(query, other, max_epochs = 1, seed = 0, verbose = FALSE),
                 "query's counts are split in layers")
  expect_equal(rownames(SeuratObject::Embeddings(mapped, "scvi")), colnames(query))
})

test_that("the other models' Seurat verbs run on split v5 objects", {
  skip_unless_v5()
  split <- pbmc_split()
  two <- function(n) rep(c("a", "b"), length.out = n)
  ldvae <- suppressMessages(RunLinearSCVI(split, max_epochs = 1, seed = 0, verbose = FALSE))
  expect_equal(SeuratObject::Misc(ldvae[["ldvae"]])$setup$batch_key, "split.layer")
  autozi <- suppressMessages(RunAUTOZI(split, max_epochs = 1, seed = 0, verbose = FALSE))
  expect_true(any(grepl("autozi", names(autozi[["RNA"]][[]]))))
  solo <- suppressMessages(RunSolo(split, scvi_max_epochs = 2, max_epochs = 2, seed = 0,
                                   verbose = FALSE))
  expect_equal(length(solo$solo.doublet_score), ncol(split))
  expect_equal(solo@misc$cellvi$solo$batches, c("g2", "g1"))

  cite <- cellvi_dataset("pbmc_cite_small")
  cite <- as_v5(cite, split = two(ncol(cite)))
  expect_s4_class(cite[["ADT"]], "Assay5")
  markers <- list(T = c("CD3D", "CD3G", "IL7R"), B = c("CD79A", "MS4A1"),
                  Mono = c("LYZ", "S100A8", "CD14"), NK = c("NKG7", "GNLY"))
  assigned <- suppressMessages(RunCellAssign(cite, markers = markers, max_epochs = 2, seed = 0,
                                             verbose = FALSE))
  expect_equal(length(assigned$cellassign.type), ncol(cite))
  totalvi <- suppressMessages(RunTOTALVI(cite, max_epochs = 1, seed = 0, verbose = FALSE))
  expect_equal(SeuratObject::Misc(totalvi[["totalvi"]])$setup$batch_key, "split.layer")
  denoised <- NormalizeTOTALVI(totalvi, features = c("CD3D", "MS4A1"), verbose = FALSE)
  expect_s4_class(denoised[["TOTALVI"]], "Assay5")
  expect_s4_class(denoised[["TOTALVI_ADT"]], "Assay5")

  atac <- cellvi_dataset("bmmc_atac_small")
  atac <- as_v5(atac, split = two(ncol(atac)), assay = "peaks")
  peakvi <- suppressWarnings(suppressMessages(RunPEAKVI(atac, max_epochs = 1, seed = 0,
                                                        verbose = FALSE)))
  expect_equal(SeuratObject::Misc(peakvi[["peakvi"]])$setup$batch_key, "split.layer")

  reference <- as_v5(cellvi_dataset("lymphnode_reference_small"))
  spots <- cellvi_dataset("lymphnode_visium_small")[, 1:60]
  spots <- as_v5(spots, split = two(60))
  st <- RunStereoscope(spots, reference, labels_key = "cell_type", max_epochs = 2,
                       reference_max_epochs = 2, seed = 0, verbose = FALSE)
  expect_s4_class(st[["proportions"]], "Assay5")
  expect_equal(colnames(st[["proportions"]]), colnames(spots))

  spatial <- cellvi_dataset("merfish_spatial_small")
  spatial <- as_v5(spatial[, 1:100], split = two(100))
  ref <- cellvi_dataset("merfish_reference_small")
  ref <- as_v5(ref[, 1:200], split = two(200))
  expect_message(gimvi <- RunGIMVI(spatial, ref, max_epochs = 1, seed = 0, verbose = FALSE),
                 "the split is the batch")
  expect_s4_class(gimvi[["imputed"]], "Assay5")
  expect_equal(colnames(gimvi[["imputed"]]), colnames(spatial))
})

test_that("plot_proportions reads the coordinates of every image, matched to spots by name", {
  skip_unless_v5(core = FALSE)
  skip_if_not_installed("ggplot2")
  counts <- matrix(1, 6, 10, dimnames = list(paste0("g", 1:6), paste0("s", 1:10)))
  spots <- suppressWarnings(SeuratObject::CreateSeuratObject(methods::as(counts, "dgCMatrix")))
  spots$prop.B <- seq(0, 0.9, by = 0.1)
  spots$prop.T <- 1 - spots$prop.B
  # two slices, each image listing its spots in reverse order (x, y and a column `cell`)
  slice <- function(cells, key) {
    SeuratObject::CreateFOV(data.frame(x = match(cells, colnames(spots)), y = 0, cell = rev(cells)),
                            type = "centroids", assay = "RNA", key = key)
  }
  suppressWarnings({
    spots[["slice1"]] <- slice(paste0("s", 1:5), "a_")
    spots[["slice2"]] <- slice(paste0("s", 6:10), "b_")
  })
  b <- plot_proportions(spots, cell_types = "B")$data
  # spot s_i sits at x = 6 - i (slice 1) or 16 - i (slice 2) in the images above
  expect_equal(b$x, c(5:1, 10:6))
  expect_equal(b$proportion, unname(spots$prop.B))
})
