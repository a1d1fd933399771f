# Makes inst/extdata/kang_pbmc.rds, the real data of the R main job (scripts/main_job.R) and
# of cellvi_dataset("kang_pbmc"): 3,000 control PBMCs of Kang et al. 2018, from
# ../shared/data/kang_se_12261.h5ad (12,261 control cells x 1,287 genes, raw counts).
#
#   RETICULATE_PYTHON=.venv/bin/python Rscript scripts/make_kang_pbmc.R [path/to/kang_se_12261.h5ad]
#
# Source: Kang HM et al. (2018), "Multiplexed droplet single-cell RNA-sequencing using
# natural genetic variation", Nature Biotechnology 36:89-94; GEO GSE96583 (public); as
# packaged by the muscat R package (data/kang_se.rda, GPL-3; cells of the control condition,
# 8 donors, 8 cell types annotated by the authors). The subset keeps the GPL-3 licence.
#
# Cells are drawn at random (seed 1), so every donor and cell type keeps its share (about 680
# CD14+ monocytes and 320 B cells, the main job's marker comparison); genes without counts in
# the subset are dropped. The file is an R list, readable without Python or Seurat:
#   counts    dgCMatrix, genes (symbols) x cells, integer counts
#   cells     data.frame: donor (factor, muscat's sample_id), cell_type (factor)
#   genes     data.frame: symbol, ensembl_id
#   source, licence   character
# Reading the .h5ad needs Python's anndata (reticulate), which the cellvi venv has.
args <- commandArgs(trailingOnly = TRUE)
h5ad <- if (length(args)) args[[1]] else file.path("..", "shared", "data", "kang_se_12261.h5ad")
out <- file.path("inst", "extdata", "kang_pbmc.rds")
n_cells <- 3000L
if (!file.exists(h5ad)) stop("no Kang data at ", h5ad, "; pass the .h5ad's path", call. = FALSE)
if (!file.exists("DESCRIPTION")) stop("run from the repository root", call. = FALSE)

anndata <- reticulate::import("anndata", convert = FALSE)
adata <- anndata$read_h5ad(h5ad)
obs <- reticulate::py_to_r(adata$obs)
var <- reticulate::py_to_r(adata$var)
x <- adata$X$tocsr()   # cells x genes CSR = genes x cells CSC: the dgCMatrix slots as they are
counts <- Matrix::sparseMatrix(
  i = as.integer(reticulate::py_to_r(x$indices)), p = as.integer(reticulate::py_to_r(x$indptr)),
  x = as.numeric(reticulate::py_to_r(x$data)), index1 = FALSE,
  dims = c(nrow(var), nrow(obs)), dimnames = list(as.character(var$feature), rownames(obs)))

set.seed(1)
keep <- sort(sample(ncol(counts), n_cells))
counts <- counts[, keep]
obs <- obs[keep, ]
expressed <- Matrix::rowSums(counts) > 0
counts <- counts[expressed, ]
stopifnot(all(counts@x == round(counts@x)), !anyDuplicated(rownames(counts)))

kang <- list(
  counts = counts,
  cells = data.frame(donor = factor(obs$sample_id), cell_type = factor(obs$cluster_id),
                     row.names = colnames(counts)),
  genes = data.frame(symbol = rownames(counts), ensembl_id = rownames(var)[expressed],
                     row.names = rownames(counts)),
  source = paste("Kang HM et al. (2018) Nat Biotechnol 36:89-94, GEO GSE96583; control",
                 "PBMCs as packaged by the muscat R package (data/kang_se.rda); 3,000 random",
                 "cells (seed 1) made by scripts/make_kang_pbmc.R"),
  licence = "GPL-3 (muscat package data)")
dir.create(dirname(out), recursive = TRUE, showWarnings = FALSE)
saveRDS(kang, out, compress = "xz")
cat(sprintf("wrote %s: %d genes x %d cells, %d donors, %d cell types, %.2f MB\n", out,
            nrow(counts), ncol(counts), nlevels(kang$cells$donor),
            nlevels(kang$cells$cell_type), file.size(out) / 2^20))
print(table(kang$cells$cell_type))
