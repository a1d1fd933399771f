# RunSCVI's overhead beyond training (conversion in, write-back, model save), on kang_se_12261
# as a Seurat object. Not a test: it prints figures, and with --record appends them to
# benchmarks/RESULTS.md.
#
#   Rscript benchmarks/bench_runscvi.R [--record] [--epochs 2]
#
# Overhead = RunSCVI's wall time minus the time of model$train() measured inside the same call
# (cellvi's history has no wall time, so the training is timed by running the same training
# directly in Python on the same AnnData right after). Python's start-up (first call) is
# measured separately, before anything else.

file_arg <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
source(file.path(dirname(file_arg), "_common.R"))
epochs <- as.integer(bench_option("epochs", 2))
root <- bench_root
use_tree_python()
lib <- install_tree(tempfile("cellvi-lib"))
suppressPackageStartupMessages({library(cellvi, lib.loc = lib); library(Seurat)})

t0 <- Sys.time()
stopifnot(cellvi_available())
cv <- cellvi_python_module()
torch <- reticulate::import("torch"); torch$set_num_threads(2L)
python_start <- as.numeric(Sys.time() - t0, units = "secs")

kang <- as_seurat(read_h5ad(file.path(root, "..", "shared", "data", "kang_se_12261.h5ad")))
kang$sample_id <- factor(kang$sample_id)

time_it <- function(expr) { t <- Sys.time(); force(expr); as.numeric(Sys.time() - t, units = "secs") }
runs <- sapply(1:3, function(i) {
  total <- time_it(obj <- RunSCVI(kang, batch_key = "sample_id", max_epochs = epochs, seed = 0,
                                  verbose = FALSE, model_dir = file.path(tempdir(), paste0("m", i))))
  # The same training alone, in Python, on the same data.
  adata <- as_anndata(kang, metadata = "sample_id", reductions = FALSE)
  cv$settings$seed <- 0L
  cv$SCVI$setup_anndata(adata, batch_key = "sample_id")
  model <- cv$SCVI(adata)
  train <- time_it(model$train(max_epochs = epochs, progress_bar = FALSE))
  c(total = total, train = train)
})
overhead <- runs["total", ] - runs["train", ]
lines <- c(
  sprintf("| Python start (first call: import cellvi, torch) | %.2f s |", python_start),
  sprintf("| RunSCVI total (%d epochs), median of 3 | %.2f s |", epochs, median(runs["total", ])),
  sprintf("| training alone, median of 3 | %.2f s |", median(runs["train", ])),
  sprintf("| overhead (conversion, write-back, save), median of 3 | %.2f s |", median(overhead)))
table <- c("| step | time |", "| --- | --- |", lines)
cat(table, sep = "\n")
if (bench_record) {
  append_results(c(
    section_head("RunSCVI overhead on kang_se_12261 (Seurat, 12,261 x 1,287)", "bench_runscvi.R",
                 sprintf("2 torch threads; R %s, reticulate %s", getRversion(), packageVersion("reticulate"))),
    "", table))
}
