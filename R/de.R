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
    if (!exists("ident.1", envir = a, inherits = FALSE)) {
      # FindAllMarkersSCVI: every group (in the order of its levels) against all other cells
      firsts <- if (is.factor(groups)) levels(droplevels(groups)) else sort(unique(groups))
      plan$comparisons <- .each_group(as.character(groups), firsts, NULL)
      plan$levels <- firsts
      plan$stack <- "seurat"
      return(plan)
    }
    plan$comparisons <- .one_comparison(as.character(groups), a$ident.1, a$ident.2)
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
  if (!is.null(a$group1)) {
    # one comparison, group1's groups pooled (as FindMarkersSCVI pools ident.1's)
    plan$comparisons <- .one_comparison(groups, a$group1, a$group2)
    plan$stack <- FALSE
    return(plan)
  }
  # every group (but group2, when given: each other group against it)
  plan$comparisons <- .each_group(groups, setdiff(sort(unique(groups)), a$group2), a$group2)
  plan$stack <- "sce"
  plan
}

# The comparison (a list of one) of the cells of `first` with those of `second` (NULL: all
# other cells), each side one group or several pooled.
.one_comparison <- function(groups, first, second) {
  idx <- .group_cells(groups, first, second)
  idx$message <- paste0("Comparing ", length(idx$idx1), " cells with ", length(idx$idx2),
                        " cells")
  list(idx)
}

# A comparison per group of `firsts`, each against `second` (NULL: all other cells).
.each_group <- function(groups, firsts, second) {
  lapply(firsts, function(g) {
    idx <- .group_cells(groups, g, second)
    idx$group <- g
    idx$message <- paste0("Group ", g, ": ", length(idx$idx1), " vs ", length(idx$idx2),
                          " cells")
    idx
  })
}

# The output of a markers verb whose table for one comparison is
# table_of(model, adata, idx1, idx2, a): one table, or the tables of every group stacked.
.out_markers_of <- function(table_of) {
  force(table_of)
  function(model, adata, a, plan, cells) .markers_tables(table_of, model, adata, a, plan)
}

.markers_tables <- function(table_of, model, adata, a, plan) {
  .with_markers_seed(a, {
    tables <- lapply(plan$comparisons, function(cmp) {
      if (isTRUE(a$verbose)) message(cmp$message)
      if (identical(plan$stack, "seurat") && min(length(cmp$idx1), length(cmp$idx2)) < 3L) {
        # as FindAllMarkers does
        message("Group ", cmp$group, " skipped: fewer than 3 cells to compare")
        return(NULL)
      }
      table <- .sort_markers(.seurat_filters(table_of(model, adata, cmp$idx1, cmp$idx2, a), a))
      if (identical(plan$stack, "sce")) {
        table <- cbind(group = rep(cmp$group, nrow(table)), gene = rownames(table), table)
      }
      if (identical(plan$stack, "seurat")) {
        table$cluster <- factor(rep(cmp$group, nrow(table)), levels = plan$levels)
        table$gene <- rownames(table)
      }
      table
    })
  })
  tables <- Filter(Negate(is.null), tables)
  if (length(tables) == 1L && isFALSE(plan$stack)) return(list(table = tables[[1]]))
  if (!length(tables)) return(list(table = data.frame()))
  out <- do.call(rbind, tables)
  # FindAllMarkers' row names: the genes, made unique
  rownames(out) <- if (identical(plan$stack, "seurat")) make.unique(out$gene) else NULL
  list(table = out)
}

# Runs `expr` with the core seeded by the verb's `seed`, or (NULL) by a seed drawn from R's
# random-number stream, so that set.seed() before a call repeats it too; the core's seed
# setting is put back afterwards (.with_seed()).
.with_markers_seed <- function(a, expr) {
  .with_seed(.or_default(a$seed, sample.int(.Machine$integer.max, 1L)), expr)
}

# Seurat's filters, with its meanings, for the verbs that have them (Seurat's FindMarkers and
# FindAllMarkers): features detected in at least `min.pct` of the cells of either group, with
# |avg_log2FC| (with `only.pos`: avg_log2FC) at least `logfc.threshold`, and only positive
# fold changes with `only.pos`.
.seurat_filters <- function(table, a) {
  if (!exists("min.pct", envir = a, inherits = FALSE)) return(table)
  min_pct <- .as_number(a$min.pct, "min.pct", 0, 1)
  threshold <- .as_number(a$logfc.threshold, "logfc.threshold", 0)
  only_pos <- .as_flag(a$only.pos, "only.pos")
  lfc <- table$avg_log2FC
  keep <- pmax(table$pct.1, table$pct.2) >= min_pct
  if (!any(keep)) {
    warning("no features pass min.pct = ", min_pct, "; returning an empty table",
            call. = FALSE)
  }
  keep <- keep & (if (only_pos) lfc >= threshold & lfc > 0 else abs(lfc) >= threshold)
  table[keep, , drop = FALSE]
}

# Rows by evidence (proba_de, PeakVI's prob_da; in "vanilla" mode |bayes_factor|), ties (proba_de saturates near
# 1 - 1/n_samples) by |avg_log2FC|, then by name: the same order on every run.
.sort_markers <- function(table) {
  if (!nrow(table)) return(table)
  evidence <- if (!is.null(table$proba_de)) {
    table$proba_de
  } else if (!is.null(table$prob_da) && !all(is.na(table$is_da_fdr))) {
    table$prob_da  # PeakVI's differential accessibility (change mode; vanilla: P(y1 > y2))
  } else if (!is.null(table$bayes_factor)) {
    abs(table$bayes_factor)
  } else {
    return(table)
  }
  size <- if (!is.null(table$avg_log2FC)) abs(table$avg_log2FC) else numeric(nrow(table))
  table[order(-evidence, -size, rownames(table), method = "radix"), , drop = FALSE]
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
    args$include_protein_background <- .as_flag(a$include_protein_background,
                                                "include_protein_background")
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
#' `pct.1` and `pct.2`, and `features`, `min.pct`, `logfc.threshold` and `only.pos` filter
#' the genes as they do in Seurat (with Seurat 4's defaults). There are no p-values: this is
#' a Bayesian test, and the table has the model's evidence instead: `proba_de` (the larger of
#' the posterior probabilities that the log2 fold change is >= `delta` or < -`delta`, as
#' scvi-tools computes it), `bayes_factor` (its log odds, natural log), `lfc_std` and the
#' other posterior LFC summaries, and `is_de_fdr` (called DE at posterior expected FDR
#' `fdr_target`, over all tested genes before the filters).
#'
#' Rows are sorted by evidence (`proba_de`; in `"vanilla"` mode |`bayes_factor`|), then by
#' |`avg_log2FC`| (many genes reach the largest `proba_de` that `n_samples` can show, about
#' 1 - 1/`n_samples`), then by name. The posterior is sampled: `seed` makes a call repeat
#' exactly; without it the seed is drawn from R's random-number stream, so `set.seed()`
#' before the call does the same.
#'
#' @section Volcano plot:
#' Plot `avg_log2FC` against `bayes_factor` (or against `-log10(1 - proba_de)`, which is
#' capped near `log10(n_samples)`), coloured by the FDR call; keep every gene with
#' `logfc.threshold = 0, min.pct = 0`:
#' ```
#' markers <- FindMarkersSCVI(pbmc, ident.1 = "0", ident.2 = "1",
#'                            logfc.threshold = 0, min.pct = 0)
#' plot(markers$avg_log2FC, markers$bayes_factor, pch = 20,
#'      col = ifelse(markers$is_de_fdr, "firebrick", "grey60"),
#'      xlab = "log2 fold change", ylab = "Bayes factor (log odds of DE)")
#' # or with ggplot2
#' ggplot2::ggplot(markers, ggplot2::aes(avg_log2FC, bayes_factor, colour = is_de_fdr)) +
#'   ggplot2::geom_point()
#' ```
#' A Bayes factor above 3 (natural log: odds of 20 to 1) is strong evidence; `is_de_fdr`
#' already controls the posterior expected false discovery rate over the genes tested.
#'
#' @param object A Seurat object on which [RunSCVI()] has run (or [RunLinearSCVI()],
#'   [RunSCANVI()], [RunAUTOZI()]: name its reduction).
#' @param ident.1,ident.2 Groups to compare: identity classes (or values of `group.by`).
#'   `ident.2 = NULL` compares with all other cells.
#' @param group.by Metadata column defining the groups (default: the identities, `Idents()`).
#' @param features Genes to test (default: all genes of the model).
#' @param logfc.threshold Keep genes whose |`avg_log2FC`| (with `only.pos`: `avg_log2FC`) is
#'   at least this (as in Seurat; 0: no filter).
#' @param min.pct Keep genes detected in at least this fraction of the cells of either group
#'   (as in Seurat; 0: no filter).
#' @param only.pos Keep only genes with a positive `avg_log2FC` (higher in `ident.1`).
#' @param seed Integer seed of the posterior sampling (`NULL`: drawn from R's random-number
#'   stream, so that `set.seed()` makes the result repeat).
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
#' @return A data.frame, one row per gene (rownames), in the order above.
#' @seealso [FindAllMarkersSCVI()] for every identity against the rest.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 50, seed = 0)
#'   markers <- FindMarkersSCVI(pbmc, ident.1 = "0", ident.2 = "1", seed = 1)
#'   head(markers[markers$is_de_fdr, ])
#' }
#' }
#' @export
FindMarkersSCVI <- function(object, ident.1, ident.2 = NULL, group.by = NULL, reduction = "scvi",
                            features = NULL, logfc.threshold = 0.25, min.pct = 0.1,
                            only.pos = FALSE, mode = "change", delta = 0.25, fdr_target = 0.05,
                            batch_correction = FALSE, batchid1 = NULL, batchid2 = NULL,
                            n_samples = 5000, seed = NULL, verbose = TRUE) {
  .run_verb(.seurat, object, .markers_scvi_verb, environment())
}

#' Markers of every identity with scVI (Seurat)
#'
#' [FindMarkersSCVI()] for each identity class (or value of `group.by`) against all other
#' cells, stacked as [Seurat::FindAllMarkers()] stacks them: the same columns as
#' [FindMarkersSCVI()] plus `cluster` (a factor, in the order of the identities' levels) and
#' `gene`, row names the genes made unique. Groups with fewer than 3 cells are skipped, as
#' Seurat does. No p-values: see [FindMarkersSCVI()] for the evidence columns, the sort order
#' within each cluster and how to draw a volcano plot.
#'
#' @param batch_correction Generate every sampled cell, of the group and of the rest, in
#'   each of the model's batches and average (there is no choice of batches per side here:
#'   for that, [FindMarkersSCVI()] with `batchid1`, `batchid2`).
#' @inheritParams FindMarkersSCVI
#' @return A data.frame, one row per cluster and gene.
#' @examples
#' \donttest{
#' if (cellvi_available()) {
#'   pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 50, seed = 0)
#'   all <- FindAllMarkersSCVI(pbmc, only.pos = TRUE, n_samples = 1000, seed = 1)
#'   head(all[all$is_de_fdr, c("cluster", "gene", "avg_log2FC", "proba_de")])
#' }
#' }
#' @export
FindAllMarkersSCVI <- function(object, group.by = NULL, reduction = "scvi", features = NULL,
                               logfc.threshold = 0.25, min.pct = 0.1, only.pos = FALSE,
                               mode = "change", delta = 0.25, fdr_target = 0.05,
                               batch_correction = FALSE, n_samples = 5000, seed = NULL,
                               verbose = TRUE) {
  .run_verb(.seurat, object, .markers_scvi_verb, environment())
}

#' Differentially expressed genes with scVI (SingleCellExperiment)
#'
#' As [FindMarkersSCVI()], for a SingleCellExperiment on which [runSCVI()] has run. With
#' `group1` (one group, or several pooled into one side), one comparison: one table, the
#' genes as row names. With `group1 = NULL`, every group is compared with all other cells
#' (one-vs-rest, as `scran::findMarkers()` does; with `group2`, every other group with
#' `group2`), and the tables are stacked with `group` and `gene` columns. Rows are sorted
#' as [FindMarkersSCVI()] sorts them (within each group), and `seed` (or `set.seed()`) makes
#' the result repeat.
#'
#' @param x A SingleCellExperiment.
#' @param groups A vector of group labels, one per cell, or the name of a `colData` column.
#' @param group1,group2 Groups to compare, each one group or several pooled into one side
#'   (as `ident.1` and `ident.2` of [FindMarkersSCVI()]); `group2 = NULL`: all other cells.
#'   `group1 = NULL`: every group in turn (see Description).
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
                            n_samples = 5000, seed = NULL, verbose = TRUE) {
  .run_verb(.sce, x, .markers_scvi_verb, environment())
}

# 1-based indices of the cells of `ident.1` and of `ident.2` (or of the rest: cells without a
# group, NA, are in neither, as in Seurat).
.group_cells <- function(groups, ident.1, ident.2) {
  present <- unique(groups[!is.na(groups)])
  for (g in c(ident.1, ident.2)) {
    if (!g %in% present) {
      stop("group '", g, "' not found; groups: ", .show_some(sort(present), 20),
           call. = FALSE)
    }
  }
  idx1 <- which(groups %in% ident.1)
  idx2 <- if (is.null(ident.2)) which(!is.na(groups) & !groups %in% ident.1) else which(groups %in% ident.2)
  if (length(intersect(ident.1, ident.2))) {
    stop("the two groups overlap (", .show_some(intersect(ident.1, ident.2)), ")", call. = FALSE)
  }
  if (!length(idx2)) stop("no cells to compare with", call. = FALSE)
  list(idx1 = idx1, idx2 = idx2)
}
