# Seurat v5 objects in the verbs (SeuratObject >= 5: Assay5, layers, split layers).
#
# Reading is done by the conversion (convert.R, "Seurat v5 layers"): a split counts layer
# ("counts.A", "counts.B", ... after split(object[["RNA"]], f = ...)) is read as one matrix with
# the cells in the object's order, and its split is offered as the metadata column
# "split.layer" (.split_column). Here, for every Seurat verb, on the one path of aaa-verbs.R:
#
# - .seurat5_split_batch(): a verb that fits a model with a batch, on split counts, with
#   batch_key = NULL, takes the split as the batch (and says so); the column is written into the
#   object's metadata, so that later verbs find it after JoinLayers() too.
# - .seurat_new_assay(): results that become an assay (normalized expression, imputed genes,
#   proportions, prediction scores) are a v5 Assay5 (one joined "data" layer) when the counts
#   came from an Assay5, a v3 Assay otherwise (v4 objects stay as they were).
# - scVIIntegration(): an integration method for Seurat v5's IntegrateLayers().

# The split of the counts of the Seurat verb's input as the batch: list(object, plan, args),
# changed only when the verb fits a model with a batch_key, none was given, and the counts of
# its assay are split in layers.
.seurat5_split_batch <- function(object, plan, args, verb, a) {
  out <- list(object = object, plan = plan, args = args)
  from_model <- !is.null(a$scvi_reduction) &&
    a$scvi_reduction %in% SeuratObject::Reductions(object)
  if (is.null(plan$model) || !"batch_key" %in% names(verb$setup) ||
      !is.null(args$setup$batch_key) || from_model) {
    return(out)  # (scANVI and Solo on a recorded scVI model take that model's batch)
  }
  split <- .seurat5_split(object, plan$input$counts, "counts")
  if (is.null(split)) return(out)
  message("The counts of assay '", plan$input$counts, "' are split in ", nlevels(split),
          " layers (", .show_some(paste0("counts.", levels(split)), 4), "): the split is the ",
          "batch (batch_key = \"", .split_column, "\", added to the metadata). Pass batch_key ",
          "to use another column.")
  out$object[[.split_column]] <- split[colnames(object)]
  out$args$setup$batch_key <- .split_column
  out$plan$setup$batch_key <- .split_column
  out$plan$columns <- unique(c(setdiff(plan$columns, FALSE), .split_column))
  out
}

# Metadata column names of a Seurat object, with the split of its default assay's counts.
.seurat5_columns <- function(object) {
  meta <- object[[]]
  split <- .seurat5_split(object, SeuratObject::DefaultAssay(object), "counts")
  colnames(.with_split_column(meta, split))
}

# A new assay holding `data` (features x cells) as its "data": an Assay5 when the assay `like`
# of `object` is one (SeuratObject 5), else a v3/v4 Assay. Assay5 layers are sparse (SeuratObject
# makes them so; done here to spare its warning), hold no nCount/nFeature (meaningless for
# normalized values, as for a v3 data assay), and have two or more features: SeuratObject 5.3
# turns a one-feature layer into a vector and refuses it, so one feature goes to a v3 Assay.
.seurat_new_assay <- function(object, data, like = NULL) {
  like <- .or_default(like, SeuratObject::DefaultAssay(object))
  if (.seuratobject_v5() && like %in% SeuratObject::Assays(object) &&
      inherits(object[[like]], "StdAssay") && nrow(data) >= 2L) {
    op <- options(Seurat.object.assay.calcn = FALSE)
    on.exit(options(op))
    return(.so5("CreateAssay5Object")(data = .as_dgc(data, "the result")))
  }
  SeuratObject::CreateAssayObject(data = data)
}

#' scVI as an integration method for Seurat v5's IntegrateLayers()
#'
#' With Seurat v5, data from several samples are integrated by splitting the counts into
#' layers (`obj[["RNA"]] <- split(obj[["RNA"]], f = obj$sample)`) and calling
#' `Seurat::IntegrateLayers()` with a method. `scVIIntegration` is such a method: it fits scVI
#' on the raw counts of the assay's split counts layers (read together, cells in the object's
#' order), with the split as the batch, and returns the batch-corrected latent space as a new
#' reduction (`new.reduction`, default `"integrated.scvi"`), ready for `FindNeighbors()` and
#' `RunUMAP()`. The model is saved and recorded in the reduction's `misc`, as [RunSCVI()]
#' records it, so [NormalizeSCVI()] and [FindMarkersSCVI()] work with
#' `reduction = "integrated.scvi"`.
#'
#' It follows IntegrateLayers()'s calling convention: `object` is the assay (an `Assay5`),
#' `orig` the reduction named by `orig.reduction`, `layers` the normalized layers,
#' `features` the features to integrate (by default the variable features), plus `assay`,
#' `scale.layer` and `groups`. scVI models counts, so it reads the counts layers whatever
#' `layers` names, and it does not use `orig` (scVI learns its own latent space) beyond
#' checking its cells. Where it differs from [RunSCVI()]: the batch is the split (or
#' `groups`), and the result is returned as a list instead of an object. It takes RunSCVI()'s
#' model and training arguments (`n_latent`, `gene_likelihood`, `max_epochs`, `plan_kwargs`
#' ...), not those that read the object's metadata (`batch_key`, `labels_key`,
#' `categorical_covariate_keys`, `continuous_covariate_keys`): IntegrateLayers() passes the
#' assay alone, without the metadata. Those are refused with an error, not ignored; for
#' covariates use [RunSCVI()] on the object.
#'
#' Seurat v5 (not SeuratObject 5 alone) is needed for IntegrateLayers() itself; the method
#' needs only SeuratObject 5.
#'
#' @param object The assay to integrate (an `Assay5`), as IntegrateLayers() passes it; its
#'   counts layer must be split (`counts.<group>` layers) unless `groups` is given.
#' @param orig The reduction IntegrateLayers() passes (`orig.reduction`; e.g. the PCA). Not
#'   used by scVI, except that its cells must be the assay's.
#' @param layers Names of the normalized layers IntegrateLayers() passes; not used (scVI reads
#'   the counts layers).
#' @param features Features whose counts scVI models (IntegrateLayers() passes the variable
#'   features, at most 2,000); `NULL`: all features of the assay.
#' @param groups Optional one-column data.frame of the group (batch) of each cell, rows named by
#'   cell, as Seurat's integration methods take it; `NULL`: the split of the counts layers.
#' @param assay Name of the assay in the Seurat object (IntegrateLayers() passes it); `NULL`:
#'   the default assay of `orig`, else `"RNA"`.
#' @param scale.layer Passed by IntegrateLayers(); not used.
#' @param new.reduction Name of the new reduction (default `"integrated.scvi"`).
#' @param reduction.key Key of the new reduction (default `"integratedscVI_"`).
#' @inheritParams RunSCVI
#' @param ... Further arguments IntegrateLayers() passes on (those of other integration
#'   methods); ignored, except that RunSCVI()'s arguments that scVIIntegration does not take
#'   (`batch_key`, `labels_key`, the covariate keys, `reduction.name`) are refused with an
#'   error that says what to do instead.
#' @return A named list, as IntegrateLayers() expects: the new reduction (a `DimReduc`) under
#'   `new.reduction`, and a one-column data.frame of each cell's batch (the metadata column
#'   `"split.layer"`, or `"<new.reduction>.group"` for `groups`), which IntegrateLayers() adds to
#'   the object's metadata, so that later verbs find the model's batch after `JoinLayers()`.
#' @seealso [RunSCVI()] (the same model on any Seurat object), [NormalizeSCVI()],
#'   [FindMarkersSCVI()]
#' @examples
#' \donttest{
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE) &&
#'     utils::packageVersion("SeuratObject") >= "5.0.0") {
#'   obj <- SeuratObject::pbmc_small
#'   obj[["RNA"]] <- methods::as(obj[["RNA"]], "Assay5")
#'   obj[["RNA"]] <- split(obj[["RNA"]], f = obj$groups)
#'   if (nzchar(system.file(package = "Seurat")) &&
#'       utils::packageVersion("Seurat") >= "5.0.0") {
#'     obj <- Seurat::IntegrateLayers(obj, method = scVIIntegration, orig.reduction = "pca",
#'                                    max_epochs = 20, verbose = FALSE)
#'   } else {
#'     # what IntegrateLayers() does, with SeuratObject 5 alone
#'     out <- scVIIntegration(obj[["RNA"]], orig = obj[["pca"]], assay = "RNA",
#'                            features = rownames(obj), max_epochs = 20, verbose = FALSE)
#'     for (name in names(out)) obj[[name]] <- out[[name]]
#'   }
#'   obj <- NormalizeSCVI(obj, reduction = "integrated.scvi", features = c("CD3E", "MS4A1"))
#' }
#' }
#' @export
scVIIntegration <- function(object, orig = NULL, layers = NULL, features = NULL, groups = NULL,
                            assay = NULL, scale.layer = NULL, new.reduction = "integrated.scvi",
                            reduction.key = "integratedscVI_", n_latent = 10, n_hidden = 128,
                            n_layers = 1, dropout_rate = 0.1, gene_likelihood = "zinb",
                            dispersion = "gene", max_epochs = NULL, batch_size = 128,
                            train_size = 0.9, early_stopping = FALSE, lr = 1e-3,
                            device = "auto", seed = NULL, model_dir = NULL,
                            model_kwargs = list(), plan_kwargs = list(), verbose = TRUE, ...) {
  .refuse_scvi_args(names(match.call(expand.dots = FALSE)$...))
  .require_pkg("SeuratObject", "integrate Seurat v5 layers")
  if (!.seuratobject_v5() || !inherits(object, "StdAssay")) {
    stop("scVIIntegration() integrates the layers of a Seurat v5 assay (Assay5); `object` is ",
         "a ", class(object)[1], " (SeuratObject ", utils::packageVersion("SeuratObject"),
         "). For other objects use RunSCVI(object, batch_key = ...).", call. = FALSE)
  }
  assay <- .or_default(assay, if (inherits(orig, "DimReduc")) {
    SeuratObject::DefaultAssay(orig)
  })
  assay <- .or_default(assay, "RNA")
  cells <- SeuratObject::Cells(object)
  if (inherits(orig, "DimReduc") && !setequal(SeuratObject::Cells(orig), cells)) {
    stop("the cells of `orig` (", length(SeuratObject::Cells(orig)), ") are not those of the ",
         "assay (", length(cells), ")", call. = FALSE)
  }
  seurat <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = object, assay = assay))
  batch <- .integration_groups(seurat, assay, groups, new.reduction)
  seurat[[batch$column]] <- batch$group[colnames(seurat)]
  if (!is.null(features)) {
    features <- intersect(as.character(features), rownames(seurat))
    empty <- Matrix::colSums(.seurat_matrix(seurat, assay, "counts")[features, , drop = FALSE]) == 0
    if (any(empty)) {
      stop(sum(empty), " cells have no counts in the ", length(features), " features to ",
           "integrate (e.g. ", .show_some(colnames(seurat)[empty], 3), "), and scVI needs ",
           "counts in every cell: pass more features (IntegrateLayers(features = ...), e.g. ",
           "more variable features or all genes) or remove those cells", call. = FALSE)
    }
  }
  a <- environment()
  assign("batch_key", batch$column, envir = a)
  assign("reduction.name", new.reduction, envir = a)
  seurat <- .run_verb(.seurat, seurat, .scvi_verb, a)
  group <- data.frame(batch$group[cells], row.names = cells)
  names(group) <- batch$column
  stats::setNames(list(seurat[[new.reduction]], group), c(new.reduction, batch$column))
}
attr(scVIIntegration, "Seurat.method") <- "integration"

# RunSCVI()'s arguments that scVIIntegration() does not take, with what to do instead: an
# argument of RunSCVI's given to it (through IntegrateLayers()'s `...`) is refused rather than
# dropped unseen.
.integration_instead <- c(
  batch_key = paste0("the batch is the split of the counts layers, or `groups` ",
                     "(IntegrateLayers(groups = ...))"),
  reduction.name = "name the new reduction with `new.reduction`",
  metadata = paste0("IntegrateLayers() passes the assay alone, without the object's metadata, ",
                    "so there are no metadata columns to read: for covariates or labels, run ",
                    "RunSCVI(object, batch_key = ..., %s = ...) on the object instead"))
.integration_metadata_args <- c("labels_key", "categorical_covariate_keys",
                                "continuous_covariate_keys")

.refuse_scvi_args <- function(given) {
  refused <- intersect(given, setdiff(names(formals(RunSCVI)), names(formals(scVIIntegration))))
  if (!length(refused)) return(invisible())
  why <- vapply(refused, function(arg) {
    if (arg %in% .integration_metadata_args) return(sprintf(.integration_instead[["metadata"]], arg))
    if (arg %in% names(.integration_instead)) return(.integration_instead[[arg]])
    "use RunSCVI() on the object for it"
  }, character(1))
  stop("scVIIntegration() does not take RunSCVI()'s ",
       paste0("`", refused, "` (", why, ")", collapse = "; "), call. = FALSE)
}

# The batch of scVIIntegration(): list(column, group), group a factor named by cell.
.integration_groups <- function(seurat, assay, groups, new.reduction) {
  if (!is.null(groups)) {
    if (!is.data.frame(groups) || ncol(groups) < 1L || is.null(rownames(groups)) ||
        !all(colnames(seurat) %in% rownames(groups))) {
      stop("`groups` must be a data.frame with the group of every cell in its first column, ",
           "rows named by cell", call. = FALSE)
    }
    g <- groups[colnames(seurat), 1]
    g <- if (is.factor(g)) droplevels(g) else factor(g, levels = unique(g))
    return(list(column = paste0(new.reduction, ".group"),
                group = stats::setNames(g, colnames(seurat))))
  }
  split <- .seurat5_split(seurat, assay, "counts")
  if (is.null(split)) {
    stop("the counts of assay '", assay, "' are not split in layers, so there is nothing to ",
         "integrate: split them by sample first (obj[[\"", assay, "\"]] <- split(obj[[\"", assay,
         "\"]], f = obj$sample)), or pass `groups`", call. = FALSE)
  }
  list(column = .split_column, group = split)
}
