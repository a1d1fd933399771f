# Spatial deconvolution verbs: RunDestVI / runDestVI (CondSCVI reference, then DestVI) and
# RunStereoscope / runStereoscope (RNAStereoscope reference, then SpatialStereoscope), declared
# on the one path of aaa-verbs.R, and plot_proportions() to draw the results over the spots'
# coordinates. Each verb fits two models (the reference on a labelled single-cell object, then
# the spatial model on the spots) through the plan$fit hook; the proportions go to metadata
# columns `prop.<cell type>` and to an assay (Seurat) or altExp (SCE) "proportions", and the
# models are recorded in misc$cellvi$<destvi|stereoscope> / metadata$cellvi$<...>.

# ---- the reference ------------------------------------------------------------------------------

# Checks the labelled single-cell reference (a Seurat object or a SingleCellExperiment, whatever
# the spatial object is) and its labels column, in R's terms, before anything is converted.
.check_reference <- function(reference, labels_key) {
  if (is.null(labels_key) || !is.character(labels_key) || length(labels_key) != 1L ||
      is.na(labels_key)) {
    stop("`labels_key` must name the reference's metadata column of cell types, not ",
         .show(labels_key), call. = FALSE)
  }
  if (inherits(reference, "Seurat")) {
    columns <- colnames(reference[[]])
  } else if (methods::is(reference, "SingleCellExperiment")) {
    columns <- colnames(SummarizedExperiment::colData(reference))
  } else {
    stop("`reference` must be a Seurat object or a SingleCellExperiment of single cells with ",
         "their cell types, not ", .show(class(reference)), call. = FALSE)
  }
  if (!labels_key %in% columns) {
    stop("reference metadata column '", labels_key, "' (labels_key) not found; available: ",
         .show_some(columns, 20), call. = FALSE)
  }
  invisible(reference)
}

# The verb's `reference_assay` (either kind of reference, as RunGIMVI()'s), or the SCE verbs'
# former name of it, `reference_assay.type`, still taken.
.deconv_reference_assay <- function(a) {
  former <- a$reference_assay.type
  if (is.null(former)) return(a$reference_assay)
  if (!is.null(a$reference_assay) && !identical(a$reference_assay, former)) {
    stop("`reference_assay` (", .show(a$reference_assay), ") and `reference_assay.type` (",
         .show(former), ") both name the reference's assay; give `reference_assay` only ",
         "(`reference_assay.type` is its former name)", call. = FALSE)
  }
  former
}

# ---- declaration -------------------------------------------------------------------------------

.deconv_models <- list(
  destvi = c(reference = "CondSCVI", spatial = "DestVI"),
  stereoscope = c(reference = "RNAStereoscope", spatial = "SpatialStereoscope"))

# The plan of both verbs: fit the reference model on `reference`, then the spatial model on the
# spots (the verb's object), save both (model_dir/reference, model_dir/spatial).
.deconv_plan <- function(kind) {
  force(kind)
  function(plan, eco, object, a, args) {
    classes <- .deconv_models[[kind]]
    plan$columns <- FALSE
    plan$record_name <- kind
    reference <- a$reference
    labels_key <- a$labels_key
    .check_reference(reference, labels_key)  # before anything is converted or trained
    ref_eco <- .eco_of(reference, "`reference`")
    ref_input <- .reference_input(ref_eco, reference, .deconv_reference_assay(a))
    reference_args <- if (kind == "destvi") .condscvi_args(a) else list()
    reference_epochs <- .as_count(a$reference_max_epochs, "reference_max_epochs", null_ok = TRUE)
    plan$fit <- function(adata, args, seed, model_dir, verbose) {
      cv <- .core()
      model_dir <- .or_default(model_dir, .new_model_dir(classes[["spatial"]]))
      dir.create(model_dir, recursive = TRUE, showWarnings = FALSE)
      model_dir <- normalizePath(model_dir)
      ref <- ref_eco$anndata(reference, ref_input, NULL, labels_key)
      ref_cls <- cv[[classes[["reference"]]]]
      .py_call(ref_cls$setup_anndata(ref, labels_key = labels_key))
      sc <- .py_call(do.call(ref_cls, c(list(ref), reference_args)))
      common <- args$train_args[intersect(c("device", "progress_bar"), names(args$train_args))]
      if (verbose) {
        message("Training ", classes[["reference"]], " on the reference (", .py_value(ref$n_obs),
                " cells x ", .py_value(ref$n_vars), " genes)")
      }
      .py_call(do.call(sc$train, c(list(max_epochs = reference_epochs), common)))
      ref_dir <- file.path(model_dir, "reference")
      .py_call(sc$save(ref_dir, overwrite = TRUE))
      .cellvi_env$models[[ref_dir]] <- sc
      st_cls <- cv[[classes[["spatial"]]]]
      st <- .py_call(do.call(st_cls$from_rna_model, c(list(adata, sc), args$model_args)))
      if (verbose) {
        message("Training ", classes[["spatial"]], " on ", .py_value(adata$n_obs), " spots x ",
                .py_value(length(st$var_names)), " genes shared with the reference")
      }
      .py_call(do.call(st$train, args$train_args))
      st_dir <- file.path(model_dir, "spatial")
      .py_call(st$save(st_dir, overwrite = TRUE))
      .cellvi_env$models[[st_dir]] <- st
      if (verbose) message("Models saved in ", model_dir)
      list(model = st, dir = st_dir,
           record = list(reference_model_dir = ref_dir, labels_key = labels_key,
                         reference_model = classes[["reference"]],
                         reference_assay = ref_input$counts))
    }
    plan
  }
}

# Per spot: the proportions as metadata columns `prop.<type>` and as an assay of types x spots
# (underscores in its feature names become dashes, as Seurat wants them).
.out_proportions <- function(model, adata, a, plan, cells) {
  props <- .py_df_to_r(.py_call(model$get_proportions()))
  props <- as.matrix(props[cells, , drop = FALSE])
  columns <- lapply(seq_len(ncol(props)), function(j) stats::setNames(props[, j], cells))
  names(columns) <- paste0("prop.", colnames(props))
  data <- t(props)
  rownames(data) <- gsub("_", "-", colnames(props))
  if (isTRUE(a$verbose)) {
    top <- sort(colMeans(props), decreasing = TRUE)
    message("Mean proportions: ", paste0(names(top)[seq_len(min(5, length(top)))], " ",
                                         round(top[seq_len(min(5, length(top)))], 3),
                                         collapse = ", "), if (length(top) > 5) ", ...")
  }
  list(columns = columns,
       assays = list(rna = list(data = data, unit = "cell types", assay_name = "proportions")))
}

.destvi_verb <- .verb(
  "DestVI",
  model_args = list(vamp_prior_p = .arg_count(null_ok = TRUE), l1_reg = .arg_number(0),
                    amortization = .arg_choice("both", "latent", "proportion", "none")),
  train_args = list(max_epochs = .arg_count(), batch_size = .arg_count(null_ok = TRUE),
                    lr = .arg_number(0), device = .train_spec$device,
                    progress_bar = .train_spec$progress_bar),
  plan = .deconv_plan("destvi"), outputs = list(.out_proportions))

.stereoscope_verb <- .verb(
  "SpatialStereoscope",
  model_args = list(prior_weight = .arg_choice("n_obs", "minibatch")),
  train_args = list(max_epochs = .arg_count(), batch_size = .arg_count(),
                    lr = .arg_number(0), device = .train_spec$device,
                    progress_bar = .train_spec$progress_bar),
  plan = .deconv_plan("stereoscope"), outputs = list(.out_proportions))

# CondSCVI's network settings, from the verb's arguments (checked).
.condscvi_args <- function(a) {
  list(n_latent = .as_count(a$n_latent, "n_latent"), n_hidden = .as_count(a$n_hidden, "n_hidden"),
       n_layers = .as_count(a$n_layers, "n_layers"),
       prior = .as_choice(a$reference_prior, "reference_prior", c("normal", "mog")),
       weight_obs = .as_flag(a$weight_obs, "weight_obs"))
}

# ---- verbs ---------------------------------------------------------------------------------------

#' Spatial deconvolution with DestVI (Seurat)
#'
#' DestVI (Lopez et al. 2022) estimates each spot's cell-type proportions from a labelled
#' single-cell reference. A CondSCVI model (scVI conditioned on the cell type) is first trained
#' on the reference; DestVI then describes each spot as a mixture of the reference's cell
#' types, each at its own state in the reference's latent space, plus a noise profile, with a
#' per-gene factor for the difference between the platforms. The genes the spots share with
#' the reference are used (an error gives their count when there are fewer than 10).
#'
#' The proportions (non-negative, summing to 1 over the cell types in each spot; shares of the
#' spot's cells: each type's share of the counts divided by its mean count per cell in the
#' reference) become metadata columns `prop.<cell type>` and an assay `assay.name` (cell
#' types x spots; the assay's feature names have dashes for underscores, as Seurat wants), so
#' that `Seurat::SpatialFeaturePlot()`, `Seurat::FeaturePlot()` or [plot_proportions()] can
#' draw them. The two models are saved to `model_dir` (`reference/`, `spatial/`) and recorded in
#' `Misc(object, "cellvi")$destvi`; load them with [load_cellvi_model()] to ask DestVI for more
#' (`get_gamma()`: each type's state in each spot; `get_scale_for_ct()`: a type's expression
#' in each spot).
#'
#' DestVI's minibatch is by default a tenth of the spots, between 1 and 128 (the DestVI study
#' found deconvolution degrades when a minibatch holds a large share of the spots); with fewer
#' than 50 spots it warns that deconvolution is unreliable. Coordinates are not used by the
#' model: a spatial object without them is fine (only plots need them).
#'
#' @param object A Seurat object of spots (e.g. Visium; raw counts in `assay`).
#' @param reference A Seurat object or SingleCellExperiment of single cells with raw counts and
#'   their cell types (metadata column `labels_key`). Cell types with fewer than 10 cells warn.
#' @param labels_key The reference's metadata column of cell types.
#' @param assay The spots' assay of raw counts (default: the default assay).
#' @param reference_assay The reference's assay of raw counts, whatever the kind of `object`
#'   (as in [RunGIMVI()]): for a Seurat reference, its assay (default: its default assay);
#'   for a SingleCellExperiment reference, its assay name (default `"counts"`).
#' @param features Genes of the spots to use (default: all; those shared with the reference are
#'   used).
#' @param vamp_prior_p Components per cell type of the prior of the states (k-means clusters of
#'   the reference's cells); `NULL`: a standard normal prior.
#' @param l1_reg Weight of an L1 penalty on the loadings (larger: sparser proportions).
#' @param amortization `"both"` (proportions and states from networks of each spot's
#'   expression), `"latent"`, `"proportion"` or `"none"` (free parameters per spot).
#' @param n_latent,n_hidden,n_layers The CondSCVI reference's latent dimensions, hidden units
#'   and hidden layers.
#' @param reference_prior The CondSCVI reference's prior of its latent space: `"normal"` (a
#'   standard normal) or `"mog"` (a learned mixture of Gaussians per cell type, which then
#'   serves as DestVI's prior of the states in place of `vamp_prior_p` clusters).
#' @param weight_obs Whether CondSCVI weighs each cell by the inverse of its type's frequency
#'   (rare types count as much as common ones).
#' @param max_epochs DestVI's training epochs (2000 as in scvi-tools).
#' @param reference_max_epochs The reference model's training epochs (CondSCVI: 300).
#' @param batch_size Spots per minibatch (`NULL`: a tenth of the spots, between 1 and 128).
#' @param lr DestVI's learning rate.
#' @param assay.name Name of the assay of proportions.
#' @inheritParams cellvi-params
#' @return The Seurat object with the metadata columns and the assay added.
#' @seealso [RunStereoscope()], [plot_proportions()]
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   reference <- cellvi_dataset("lymphnode_reference_small")
#'   spots <- cellvi_dataset("lymphnode_visium_small")
#'   spots <- RunDestVI(spots, reference, labels_key = "cell_type",
#'                      reference_max_epochs = 100, max_epochs = 200)
#'   head(spots[[]][, grep("^prop\\.", colnames(spots[[]]))])
#'   if (requireNamespace("ggplot2", quietly = TRUE)) plot_proportions(spots)
#' }
#' }
#' @export
RunDestVI <- function(object, reference, labels_key, assay = NULL, reference_assay = NULL,
                      features = NULL, vamp_prior_p = 15, l1_reg = 0, amortization = "both",
                      n_latent = 5, n_hidden = 128, n_layers = 2, reference_prior = "normal",
                      weight_obs = FALSE, max_epochs = 2000, reference_max_epochs = 300,
                      batch_size = NULL, lr = 3e-3, device = "auto", assay.name = "proportions",
                      seed = NULL, model_dir = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .destvi_verb, environment())
}

#' Spatial deconvolution with DestVI (SingleCellExperiment)
#'
#' As [RunDestVI()]: the metadata columns `prop.<cell type>` go to `colData(x)`, the
#' proportions (cell types x spots) to the altExp `name` (its assay `"proportions"`), and the
#' models are recorded in `metadata(x)$cellvi$destvi`.
#'
#' @param x A SingleCellExperiment of spots (raw counts in `assay.type`).
#' @param assay.type The spots' assay of raw counts.
#' @param reference_assay.type Former name of `reference_assay`, still accepted.
#' @param name Name of the altExp of proportions.
#' @inheritParams RunDestVI
#' @inheritParams cellvi-params
#' @return `x` with the `colData` columns and the altExp added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   reference <- cellvi_dataset("lymphnode_reference_small", as = "SingleCellExperiment")
#'   spots <- cellvi_dataset("lymphnode_visium_small", as = "SingleCellExperiment")
#'   spots <- runDestVI(spots, reference, labels_key = "cell_type",
#'                      reference_max_epochs = 100, max_epochs = 200)
#'   SummarizedExperiment::assay(SingleCellExperiment::altExp(spots, "proportions"))[, 1:3]
#' }
#' }
#' @rdname runDestVI-sce
#' @export
runDestVI <- function(x, reference, labels_key, assay.type = "counts",
                      reference_assay = NULL, features = NULL, vamp_prior_p = 15,
                      l1_reg = 0, amortization = "both", n_latent = 5, n_hidden = 128,
                      n_layers = 2, reference_prior = "normal", weight_obs = FALSE,
                      max_epochs = 2000, reference_max_epochs = 300, batch_size = NULL, lr = 3e-3,
                      device = "auto", name = "proportions", seed = NULL, model_dir = NULL,
                      verbose = TRUE, reference_assay.type = NULL) {
  .run_verb(.sce, x, .destvi_verb, environment())
}

#' Spatial deconvolution with Stereoscope (Seurat)
#'
#' Stereoscope (Andersson et al. 2020) learns each cell type's negative-binomial parameters
#' from a labelled single-cell reference (RNAStereoscope), then each spot's loadings on them
#' (SpatialStereoscope): a spot's counts are those of a sum of cells, with a per-gene platform
#' factor and a noise profile. The proportions are each type's share of the spot's counts (as
#' in the Stereoscope paper; [RunDestVI()]'s are shares of cells). They are written as by
#' [RunDestVI()] (metadata columns `prop.<cell type>`, an assay `assay.name`); the models are
#' recorded in `Misc(object, "cellvi")$stereoscope`.
#'
#' @param max_epochs SpatialStereoscope's training epochs (400 as in scvi-tools).
#' @param reference_max_epochs RNAStereoscope's training epochs (100: it starts at each type's
#'   mean expression).
#' @param batch_size Spots per minibatch.
#' @param lr SpatialStereoscope's learning rate (the reference trains at its own default,
#'   0.01).
#' @param prior_weight `"n_obs"`: the prior of the noise profile counts once per data set;
#'   `"minibatch"`: once per minibatch.
#' @inheritParams RunDestVI
#' @inheritParams cellvi-params
#' @return The Seurat object with the metadata columns and the assay added.
#' @seealso [RunDestVI()], [plot_proportions()]
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   reference <- cellvi_dataset("lymphnode_reference_small")
#'   spots <- cellvi_dataset("lymphnode_visium_small")
#'   spots <- RunStereoscope(spots, reference, labels_key = "cell_type", max_epochs = 200)
#'   summary(spots$prop.B)
#' }
#' }
#' @export
RunStereoscope <- function(object, reference, labels_key, assay = NULL, reference_assay = NULL,
                           features = NULL, prior_weight = "n_obs", max_epochs = 400,
                           reference_max_epochs = 100, batch_size = 128, lr = 0.01,
                           device = "auto", assay.name = "proportions", seed = NULL,
                           model_dir = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .stereoscope_verb, environment())
}

#' Spatial deconvolution with Stereoscope (SingleCellExperiment)
#'
#' As [RunStereoscope()], with the results written as by [runDestVI()] and the models
#' recorded in `metadata(x)$cellvi$stereoscope`.
#'
#' @inheritParams RunStereoscope
#' @inheritParams runDestVI
#' @inheritParams cellvi-params
#' @return `x` with the `colData` columns and the altExp added.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   reference <- cellvi_dataset("lymphnode_reference_small", as = "SingleCellExperiment")
#'   spots <- cellvi_dataset("lymphnode_visium_small", as = "SingleCellExperiment")
#'   spots <- runStereoscope(spots, reference, labels_key = "cell_type", max_epochs = 200)
#'   summary(spots$prop.B)
#' }
#' }
#' @rdname runStereoscope-sce
#' @export
runStereoscope <- function(x, reference, labels_key, assay.type = "counts",
                           reference_assay = NULL, features = NULL,
                           prior_weight = "n_obs", max_epochs = 400, reference_max_epochs = 100,
                           batch_size = 128, lr = 0.01, device = "auto", name = "proportions",
                           seed = NULL, model_dir = NULL, verbose = TRUE,
                           reference_assay.type = NULL) {
  .run_verb(.sce, x, .stereoscope_verb, environment())
}

# ---- plots ---------------------------------------------------------------------------------------

# The spots' coordinates (a data.frame x, y with the cells as rownames): given as a matrix or
# two column names, else from the image of a Visium Seurat object, an obsm-like reducedDim
# "spatial", or metadata columns named as spatial tools name them.
.spot_coordinates <- function(object, coords, meta) {
  cells <- rownames(meta)
  pick <- function(m, what) {
    m <- as.data.frame(m)
    # SeuratObject 5's image coordinates name their spots in a column `cell`
    if ("cell" %in% colnames(m) && !anyDuplicated(m$cell)) {
      rownames(m) <- as.character(m$cell)
      m$cell <- NULL
    }
    if (ncol(m) < 2) stop(what, " must have two columns (x, y)", call. = FALSE)
    if (!all(cells %in% rownames(m))) {
      # Rows are taken in the spots' order only when nothing names them (automatic row
      # names); rows named otherwise would be matched to the wrong spots.
      if (.row_names_info(m) > 0) {
        stop(what, " has row names that are not the spots' names (missing: ",
             .show_some(setdiff(cells, rownames(m))), ")", call. = FALSE)
      }
      if (nrow(m) != length(cells)) {
        stop(what, " must have a row per spot (", length(cells), "), named by spot", call. = FALSE)
      }
      rownames(m) <- cells
    }
    data.frame(x = as.numeric(m[cells, 1]), y = as.numeric(m[cells, 2]), row.names = cells)
  }
  if (is.character(coords)) {
    missing <- setdiff(coords, colnames(meta))
    if (length(coords) != 2 || length(missing)) {
      stop("`coords` must name two metadata columns (x, y); not found: ", .show_some(missing),
           call. = FALSE)
    }
    return(pick(meta[, coords], "`coords`"))
  }
  if (!is.null(coords)) return(pick(coords, "`coords`"))
  if (inherits(object, "Seurat") && length(SeuratObject::Images(object))) {
    # every image's spots (an object of several slices has one image per slice)
    tissue <- do.call(rbind, lapply(SeuratObject::Images(object), function(image) {
      as.data.frame(SeuratObject::GetTissueCoordinates(object, image = image))
    }))
    # Visium images: columns imagerow, imagecol; the row grows downwards.
    if (all(c("imagerow", "imagecol") %in% colnames(tissue))) {
      return(pick(data.frame(tissue$imagecol, -tissue$imagerow, row.names = rownames(tissue)),
                  "the image's coordinates"))
    }
    return(pick(tissue, "the image's coordinates"))
  }
  if (methods::is(object, "SingleCellExperiment") &&
      "spatial" %in% SingleCellExperiment::reducedDimNames(object)) {
    return(pick(SingleCellExperiment::reducedDim(object, "spatial"), "reducedDim 'spatial'"))
  }
  for (pair in list(c("x", "y"), c("spatial_1", "spatial_2"), c("imagecol", "imagerow"),
                    c("col", "row"))) {
    if (all(pair %in% colnames(meta))) return(pick(meta[, pair], "the coordinates"))
  }
  stop("no spot coordinates found: pass `coords` (two metadata column names, or a matrix of ",
       "x, y per spot); looked for a Visium image, reducedDim 'spatial' and metadata columns ",
       "x/y, spatial_1/spatial_2, imagecol/imagerow, col/row", call. = FALSE)
}

#' Plot cell-type proportions over the spots' coordinates
#'
#' Draws the proportions written by [RunDestVI()], [RunStereoscope()] (or their
#' SingleCellExperiment twins) as one panel per cell type, each spot a point coloured by the
#' type's proportion. Needs the ggplot2 package.
#'
#' @param object A Seurat object or SingleCellExperiment with metadata columns
#'   `<prefix><cell type>`.
#' @param cell_types Cell types to draw (default: all).
#' @param coords The coordinates: two metadata column names, or a matrix / data.frame of x, y
#'   per spot (rownames: spots). Default: the image of a Visium Seurat object, the reducedDim
#'   `"spatial"`, or metadata columns `x`/`y` (also `spatial_1`/`spatial_2`,
#'   `imagecol`/`imagerow`, `col`/`row`).
#' @param prefix The prefix of the proportion columns.
#' @param ncol Panels per row.
#' @param point_size Size of the points.
#' @return A ggplot object.
#' @examples
#' \donttest{
#' if (cellvi_available() && requireNamespace("ggplot2", quietly = TRUE)) {
#'   reference <- cellvi_dataset("lymphnode_reference_small")
#'   spots <- cellvi_dataset("lymphnode_visium_small")
#'   spots <- RunStereoscope(spots, reference, labels_key = "cell_type", max_epochs = 200,
#'                           verbose = FALSE)
#'   plot_proportions(spots, cell_types = c("B", "T_CD4", "T_CD8"))
#' }
#' }
#' @export
plot_proportions <- function(object, cell_types = NULL, coords = NULL, prefix = "prop.",
                             ncol = NULL, point_size = 1) {
  .require_pkg("ggplot2", "plot proportions")
  if (!inherits(object, "Seurat") && !methods::is(object, "SingleCellExperiment")) {
    stop("`object` must be a Seurat object or a SingleCellExperiment, not ",
         .show(class(object)), call. = FALSE)
  }
  meta <- .eco_of(object)$metadata(object)
  columns <- grep(paste0("^", gsub(".", "\\.", prefix, fixed = TRUE)), colnames(meta),
                  value = TRUE)
  if (!length(columns)) {
    stop("no metadata columns starting with '", prefix, "': run RunDestVI() or ",
         "RunStereoscope() first", call. = FALSE)
  }
  types <- substring(columns, nchar(prefix) + 1L)
  if (!is.null(cell_types)) {
    unknown <- setdiff(cell_types, types)
    if (length(unknown)) {
      stop("unknown cell type(s) ", .show_some(unknown), "; available: ", .show_some(types, 20),
           call. = FALSE)
    }
    columns <- columns[match(cell_types, types)]
    types <- cell_types
  }
  xy <- .spot_coordinates(object, coords, meta)
  x <- y <- proportion <- NULL  # columns of `long` (for R CMD check)
  long <- data.frame(
    x = rep(xy$x, length(types)), y = rep(xy$y, length(types)),
    cell_type = factor(rep(types, each = nrow(xy)), levels = types),
    proportion = unlist(lapply(columns, function(col) meta[rownames(xy), col]), use.names = FALSE))
  ggplot2::ggplot(long, ggplot2::aes(x = x, y = y, colour = proportion)) +
    ggplot2::geom_point(size = point_size) +
    ggplot2::facet_wrap(~cell_type, ncol = ncol) +
    ggplot2::scale_colour_viridis_c(limits = c(0, NA)) +
    ggplot2::coord_fixed() +
    ggplot2::labs(x = NULL, y = NULL, colour = "proportion") +
    ggplot2::theme_minimal() +
    ggplot2::theme(axis.text = ggplot2::element_blank(), panel.grid = ggplot2::element_blank())
}
