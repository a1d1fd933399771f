# as_anndata() of a SingleCellExperiment against as_anndata() of the bare dgCMatrix it holds:
# what the SCE path costs on top of the matrix (issue 18: within 1.5x). Not a test: it prints
# the figures, and with --record appends them to benchmarks/RESULTS.md.
#
#   Rscript benchmarks/bench_convert_sce.R [--record] [--cells 100000] [--genes 2000] [--nnz 1e7]
#
# The matrix is simulated once (seeded) and saved; each variant then runs in its own R process
# (a fresh Python too): it reads the matrix, builds its object (the SCE with the 100,000 cell
# names in its colnames), converts it once at full size (the first call, cold: reported apart)
# and then 3 times, timed: median and range. The working tree is installed into a temporary
# library first, so the code measured is the code in the tree; Python is RETICULATE_PYTHON, or
# .venv/bin/python when that is unset.

file_arg <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
source(file.path(dirname(file_arg), "_common.R"))
size <- matrix_size_options()
n_cells <- size$n_cells
n_genes <- size$n_genes
nnz_target <- size$nnz_target
repeats <- 3L

use_tree_python()
work <- tempfile("bench-sce-")
dir.create(work)
on.exit(unlink(work, recursive = TRUE), add = TRUE)
lib <- install_tree(file.path(work, "lib"))

# ---- data, saved once for the workers -----------------------------------------------------------
suppressPackageStartupMessages(library(Matrix))
m <- simulate_dgc(n_cells, n_genes, nnz_target)
nnz <- length(m@x)
matrix_rds <- file.path(work, "m.rds")
saveRDS(m, matrix_rds, compress = FALSE)
rm(m)

# ---- one variant in its own process ---------------------------------------------------------------
worker <- c(
  sprintf(".libPaths(c('%s', .libPaths()))", lib),
  "suppressPackageStartupMessages({library(cellvi); library(SingleCellExperiment)})",
  "args <- commandArgs(trailingOnly = TRUE)",
  "m <- readRDS(args[1])",
  "object <- if (args[2] == 'sce') SingleCellExperiment(assays = list(counts = m)) else m",
  "invisible(as_anndata(object[1:10, 1:10]))  # Python started, code paths loaded",
  "first <- system.time(a <- as_anndata(object))[['elapsed']]",
  "rm(a); invisible(gc())",
  sprintf("secs <- vapply(seq_len(%d), function(r) {", repeats),
  "  t <- system.time(a <- as_anndata(object))[['elapsed']]",
  "  rm(a); invisible(gc()); reticulate::import('gc')$collect()",
  "  t",
  "}, 0)",
  "cat('RESULT', first, secs, '\\n')")
script <- file.path(work, "worker.R")
writeLines(worker, script)
run_variant <- function(kind) {
  out <- system2(file.path(R.home("bin"), "Rscript"), c(script, matrix_rds, kind), stdout = TRUE,
                 stderr = TRUE)
  line <- grep("^RESULT", out, value = TRUE)
  if (!length(line)) stop("the ", kind, " worker failed:\n", paste(out, collapse = "\n"))
  v <- as.numeric(strsplit(line, " ")[[1]][-1])
  list(first = v[1], secs = v[-1])
}
results <- list(matrix = run_variant("matrix"), sce = run_variant("sce"))

label <- c(matrix = "as_anndata(dgCMatrix)",
           sce = sprintf("as_anndata(SingleCellExperiment holding it; %s cell names)",
                         format(n_cells, big.mark = ",")))
rows <- vapply(names(results), function(k) {
  s <- results[[k]]$secs
  sprintf("| %s | %.3f | %.3f | %.3f-%.3f |", label[[k]], results[[k]]$first, stats::median(s),
          min(s), max(s))
}, "")
ratio <- stats::median(results$sce$secs) / stats::median(results$matrix$secs)
table <- c(sprintf("| conversion (own process each) | first call (s) | median of %d (s) | range (s) |",
                   repeats),
           "| --- | --- | --- | --- |", rows)
cat(sprintf("%s cells x %s genes, %s non-zeros\n", format(n_cells, big.mark = ","),
            format(n_genes, big.mark = ","), format(nnz, big.mark = ",")))
cat(table, sep = "\n")
cat(sprintf("SCE / matrix, medians: %.2fx\n", ratio))

if (bench_record) {
  append_results(c(
    section_head(sprintf("as_anndata() of a SingleCellExperiment vs the bare dgCMatrix, %s cells x %s genes, %s non-zeros (simulated)",
                         format(n_cells, big.mark = ","), format(n_genes, big.mark = ","),
                         format(nnz, big.mark = ",")), "bench_convert_sce.R",
                 sprintf("load average at the end %s; %s, reticulate %s, Matrix %s, SingleCellExperiment %s",
                         sub(" .*", "", readLines("/proc/loadavg")), R.version.string,
                         utils::packageVersion("reticulate"), utils::packageVersion("Matrix"),
                         utils::packageVersion("SingleCellExperiment"))),
    "- each variant in its own R (and Python) process: one full-size call first (cold, reported apart), then 3 timed calls",
    "",
    table,
    "",
    sprintf("SCE / bare matrix (medians): %.2fx (target: within 1.5x).", ratio)))
}
