# Differential expression with a trained model, shaped like Seurat's FindMarkers output:
# FindMarkersSCVI (Seurat) and findMarkersSCVI (SingleCellExperiment), declared as verbs on the
# one path of aaa-verbs.R: the groups are resolved first (plan), then the recorded model is
# loaded and its differential_expression() run per comparison (output: a table).

# Seurat: one comparison of identities (or `group.by` values) `ident.1` and `ident.2`.
# SCE: `group1` against `group2`, or with `group1 = NULL` every group against the rest,
# stacked with `group` and `gene` columns.
.markers_plan <- function(plan, eco, object, a, args) {
  if (eco$name == "seurat") {
    groups <- if (is.null(a$group.by)) {
      SeuratObject::Idents(object)
    } else {
      if (!a$group.by %in% colnames(object[[]])) {
        stop("metadata column '", a$group.by, "' not found; available: ",
             .show_some(colnames(object[[]]), 20), call. = FALSE)
      }
      object[[a$group.by, drop = TRUE]]
    }
    idx <- .group_cells(as.character(groups), a$ident.1, a$ident.2)
    idx$message <- paste0("Comparing ", length(idx$idx1), " cells with ", length(idx$idx2),
                          " cells")
    plan$comparisons <- list(idx)
    plan$stack <- FALSE
    return(plan)
  }
  groups <- a$groups
  if (is.character(groups) && length(groups) == 1L && ncol(object) != 1L) {
    if (!groups %in% colnames(SummarizedExperiment::colData(object))) {
      stop("colData column '", groups, "' not found; available: ",
           .show_some(colnames(SummarizedExperiment::colData(object)), 20),
           call. = FALSE)
    }
    groups <- SummarizedExperiment::colData(object)[[groups]]
  }
  if (length(groups) != ncol(object)) {
    stop("`groups` must have one label per cell (", ncol(object), "), not ", length(groups),
         call. = FALSE)
  }
  groups <- as.character(groups)
  firsts <- if (is.null(a$group1)) sort(unique(groups)) else a$group1
  plan$comparisons <- lapply(firsts, function(g) {
    idx <- .group_cells(groups, g, a$group2)
    idx$group <- g
    idx$message <- paste0("Group ", g, ": ", length(idx$idx1), " vs ", length(idx$idx2),
                          " cells")
    idx
  })
  plan$stack <- is.null(a$group1)
  plan
}

# The output of a markers verb whose table for one comparison is
# table_of(model, adata, idx1, idx2, a): one table, or the tables of every group stacked.
.out_markers_of <- function(table_of) {
  force(table_of)
  function(model, adata, a, plan, cells) .markers_tables(table_of, model, adata, a, plan)
}

.markers_tables <- function(table_of, model, adata, a, plan) {
  tables <- lapply(plan$comparisons, function(cmp) {
    if (isTRUE(a$verbose)) message(cmp$message)
    table <- table_of(model, adata, cmp$idx1, cmp$idx2, a)
    if (plan$stack) table <- cbind(group = cmp$group, gene = rownames(table), table)
    table
  })
  if (length(tables) == 1L) return(list(table = tables[[1]]))
  out <- do.call(rbind, tables)
  rownames(out) <- NULL
  list(table = out)
}

.out_markers <- .out_markers_of(function(...) .de_table(...))

.markers_scvi_verb <- .verb(plan = .markers_plan, outputs = list(.out_markers),
                            accepts = c("SCVI", "LinearSCVI", "SCANVI", "AUTOZI"))

# Runs the model's differential_expression for cell index sets (1-based R indices) and
# returns a data.frame: Seurat's columns first, then the model's own.
.de_table <- function(model, adata, idx1, idx2, a) {
  np <- .cellvi_py()$np
  mode <- .as_choice(a$mode, "mode", c("change", "vanilla"))
  args <- list(
    adata, idx1 = np$asarray(as.integer(idx1 - 1L)), idx2 = np$asarray(as.integer(idx2 - 1L)),
    mode = mode, delta = .as_number(a$delta, "delta", 0), fdr_target = .as_number(a$fdr_target, "fdr_target", 0, 1),
    batch_correction = .as_flag(a$batch_correction, "batch_correction"),
    batchid1 = if (is.null(a$batchid1)) NULL else as.list(as.character(a$batchid1)),
    batchid2 = if (is.null(a$batchid2)) NULL else as.list(as.character(a$batchid2)),
    n_samples = .as_count(a$n_samples, "n_samples"),
    gene_list = if (is.null(a$features)) NULL else as.list(a$features))
  if (!is.null(a$protein_prior_count)) {
    args$protein_prior_count <- .as_number(a$protein_prior_count, "protein_prior_count", 0)
  }
  de <- .py_call(do.call(model$differential_expression, args))
  # Models of genes and proteins (totalVI): a protein may share its name with a gene.
  proteins <- if (reticulate::py_has_attr(model, "protein_names")) {
    unlist(.py_value(model$protein_names))
  }
  both <- intersect(.model_genes(model), proteins)
  if (length(both)) {
    warning(length(both), " name(s) are both a gene and a protein of the model (",
            .show_some(both), "): their row names were made unique; the column feature_type ",
            "tells the gene's row from the protein's", call. = FALSE)
  }
  de <- suppressWarnings(.py_df_to_r(de))
  fdr_column <- grep("^is_de_fdr_", names(de), value = TRUE)
  evidence <- if (mode == "change") c("proba_de", "proba_not_de") else c("proba_m1", "proba_m2")
  out <- data.frame(avg_log2FC = de$lfc_mean, pct.1 = de$non_zeros_proportion1,
                    pct.2 = de$non_zeros_proportion2, row.names = rownames(de))
  own <- c(evidence, "bayes_factor", "lfc_median", "lfc_std", "lfc_min", "lfc_max", "scale1",
           "scale2", "raw_mean1", "raw_mean2", "raw_normalized_mean1", "raw_normalized_mean2")
  out <- cbind(out, de[, own, drop = FALSE])
  if (length(fdr_column)) out$is_de_fdr <- de[[fdr_column]]
  if (!is.null(de$feature_type)) out$feature_type <- as.character(de$feature_type)
  out
}

#' Differentially expressed genes with scVI (Seurat)
#'
#' Bayesian differential expression from the scVI model stored by [RunSCVI()] or
#' [RunLinearSCVI()], between the cells of `ident.1` and `ident.2` (default: all other
#' cells). Like [Seurat::FindMarkers()], the result has one row per gene with `avg_log2FC`,
#' `pct.1` and `pct.2`; instead of p-values it has the model's evidence: `proba_de` (the
#' larger of the posterior probabilities that the log2 fold change is >= `delta` or
#' < -`delta`, as scvi-tools computes it), `bayes_factor` (its log odds), `lfc_std`
#' and the other posterior LFC summaries, and `is_de_fdr` (called DE at posterior expected
#' FDR `fdr_target`). Rows are sorted by evidence.
#'
#' @param object A Seurat object on which [RunSCVI()] has run (or [RunLinearSCVI()],
#'   [RunSCANVI()], [RunAUTOZI()]: name its reduction).
#' @param ident.1,ident.2 Groups to compare: identity classes (or values of `group.by`).
#'   `ident.2 = NULL` compares with all other cells.
#' @param group.by Metadata column defining the groups (default: the identities, `Idents()`).
#' @param features Genes to test (default: all genes of the model).
#' @param mode `"change"` (evidence that |LFC| exceeds `delta`, with FDR calls) or `"vanilla"`
#'   (evidence P(expression 1 > expression 2): columns `proba_m1`, `proba_m2`).
#' @param delta LFC threshold of `"change"` mode.
#' @param fdr_target Target posterior expected false discovery rate.
#' @param batch_correction Generate every sampled cell in each batch (`batchid1`, `batchid2`:
#'   which batches for each side; default all) and average.
#' @param batchid1,batchid2 Batches to generate the two groups in.
#' @param n_samples Cells sampled from each group's posterior.
#' @param verbose Show messages.
#' @inheritParams cellvi-params
#' @return A data.frame, one row per gene (rownames).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 50, seed = 0)
#'   markers <- FindMarkersSCVI(pbmc, ident.1 = "0", ident.2 = "1")
#'   head(markers[markers$is_de_fdr, ])
#' }
#' }
#' @export
FindMarkersSCVI <- function(object, ident.1, ident.2 = NULL, group.by = NULL, reduction = "scvi",
                            features = NULL, mode = "change", delta = 0.25, fdr_target = 0.05,
                            batch_correction = FALSE, batchid1 = NULL, batchid2 = NULL,
                            n_samples = 5000, verbose = TRUE) {
  .run_verb(.seurat, object, .markers_scvi_verb, environment())
}

#' Differentially expressed genes with scVI (SingleCellExperiment)
#'
#' As [FindMarkersSCVI()], for a SingleCellExperiment on which [runSCVI()] has run. With
#' `group1 = NULL`, every group is compared with all other cells (one-vs-rest, as
#' `scran::findMarkers()` does), and the tables are stacked with `group` and `gene` columns.
#'
#' @param x A SingleCellExperiment.
#' @param groups A vector of group labels, one per cell, or the name of a `colData` column.
#' @param group1,group2 Groups to compare (`group2 = NULL`: all other cells).
#' @inheritParams FindMarkersSCVI
#' @inheritParams cellvi-params
#' @return A data.frame (rownames = genes for one comparison).
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   sce <- cellvi_dataset("pbmc_small", as = "SingleCellExperiment")
#'   sce <- runSCVI(sce, batch_key = "groups", max_epochs = 50, seed = 0)
#'   markers <- findMarkersSCVI(sce, "RNA_snn_res.1", group1 = "0")
#'   head(markers)
#' }
#' }
#' @rdname findMarkersSCVI-sce
#' @export
findMarkersSCVI <- function(x, groups, group1 = NULL, group2 = NULL, dimred = "scVI",
                            features = NULL, mode = "change", delta = 0.25, fdr_target = 0.05,
                            batch_correction = FALSE, batchid1 = NULL, batchid2 = NULL,
                            n_samples = 5000, verbose = TRUE) {
  .run_verb(.sce, x, .markers_scvi_verb, environment())
}

# 1-based indices of the cells of `ident.1` and of `ident.2` (or of the rest).
.group_cells <- function(groups, ident.1, ident.2) {
  present <- unique(groups)
  for (g in c(ident.1, ident.2)) {
    if (!g %in% present) {
      stop("group '", g, "' not found; groups: ", .show_some(sort(present), 20),
           call. = FALSE)
    }
  }
  idx1 <- which(groups %in% ident.1)
  idx2 <- if (is.null(ident.2)) which(!groups %in% ident.1) else which(groups %in% ident.2)
  if (length(intersect(ident.1, ident.2))) stop("ident.1 and ident.2 overlap", call. = FALSE)
  if (!length(idx2)) stop("no cells to compare with", call. = FALSE)
  list(idx1 = idx1, idx2 = idx2)
}
