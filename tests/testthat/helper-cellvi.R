# Shared by the test files (testthat sources helper-*.R first).

skip_if_no_core <- function() {
  skip_if_not(cellvi_available(), "cellvi Python core not available")
  skip_if_not_installed("Seurat")
}

kang_path <- function() {
  candidates <- c(file.path("..", "..", "..", "shared", "data", "kang_se_12261.h5ad"),
                  file.path(Sys.getenv("CELLVI_SHARED_DATA", "/nonexistent"), "kang_se_12261.h5ad"))
  hit <- candidates[file.exists(candidates)]
  if (length(hit)) normalizePath(hit[1]) else NULL
}

# pbmc_small with partial labels: `labels` keeps the cluster of about half of the cells.
pbmc_with_labels <- function(fraction = 0.5) {
  pbmc <- SeuratObject::pbmc_small
  set.seed(1)
  truth <- as.character(pbmc$RNA_snn_res.1)
  pbmc$labels <- ifelse(runif(ncol(pbmc)) < fraction, truth, "Unknown")
  pbmc$truth <- truth
  pbmc
}

# Test runs train for a few epochs: their models are never converged, and saying so each time
# is noise here (test-progress.R turns the warning back on).
options(cellvi.warn_not_converged = FALSE)
