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

args <- commandArgs(trailingOnly = TRUE)
opt <- function(name, default) {
  i <- match(paste0("--", name), args)
  if (is.na(i)) default else as.numeric(args[i + 1])
}
record <- "--record" %in% args
n_cells <- as.integer(opt("cells", 1e5))
n_genes <- as.integer(opt("genes", 2000))
nnz_target <- opt("nnz", 1e7)
repeats <- 3L

file_arg <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
root <- normalizePath(file.path(dirname(file_arg), ".."))
if (!nzchar(Sys.getenv("RETICULATE_PYTHON")) && file.exists(file.path(root, ".venv/bin/python"))) {
  Sys.setenv(RETICULATE_PYTHON = file.path(root, ".venv/bin/python"))
}
work <- tempfile("bench-sce-")
dir.create(work)
on.exit(unlink(work, recursive = TRUE), add = TRUE)
lib <- file.path(work, "lib")
dir.create(lib)
log <- system2(file.path(R.home("bin"), "R"),
               c("CMD", "INSTALL", "--no-multiarch", "--no-test-load", paste0("--library=", lib),
                 shQuote(root)), stdout = TRUE, stderr = TRUE)
if (!is.null(attr(log, "status"))) stop("R CMD INSTALL failed:\n", paste(log, collapse = "\n"))

# ---- data: a genes x cells dgCMatrix of counts, built directly in CSC form (as bench_convert.R)
suppressPackageStartupMessages(library(Matrix))
set.seed(0)
density <- nnz_target / (as.numeric(n_cells) * n_genes)
per_cell <- rbinom(n_cells, n_genes, density)
p <- c(0L, cumsum(per_cell))
i <- unlist(lapply(per_cell, function(k) sort.int(sample.int(n_genes, k)) - 1L), use.names = FALSE)
x <- as.numeric(rnbinom(length(i), mu = 2, size = 1) + 1)
m <- new("dgCMatrix", i = i, p = as.integer(p), x = x, Dim = c(n_genes, n_cells),
         Dimnames = list(paste0("gene", seq_len(n_genes)), paste0("cell", seq_len(n_cells))))
nnz <- length(m@x)
matrix_rds <- file.path(work, "m.rds")
saveRDS(m, matrix_rds, compress = FALSE)
rm(m, i, p, x, per_cell)

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
           sce = "as_anndata(SingleCellExperiment holding it; 100,000 cell names)")
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

if (record) {
  git <- function(...) tryCatch(system2("git", c("-C", shQuote(root), ...), stdout = TRUE,
                                        stderr = FALSE), error = function(e) "")
  commit <- git("rev-parse", "--short", "HEAD")
  dirty <- length(git("status", "--porcelain", "--untracked-files=no")) > 0
  cpu <- sub(".*:\\s*", "", grep("^model name", readLines("/proc/cpuinfo"), value = TRUE)[1])
  load <- readLines("/proc/loadavg")
  section <- c(
    "",
    sprintf("## %s: as_anndata() of a SingleCellExperiment vs the bare dgCMatrix, %s cells x %s genes, %s non-zeros (simulated)",
            format(Sys.time(), "%Y-%m-%d %H:%M UTC", tz = "UTC"),
            format(n_cells, big.mark = ","), format(n_genes, big.mark = ","),
            format(nnz, big.mark = ",")),
    "",
    sprintf("- command: `Rscript benchmarks/bench_convert_sce.R %s`", paste(args, collapse = " ")),
    sprintf("- commit: %s%s", commit, if (dirty) " (with uncommitted changes)" else ""),
    sprintf("- machine: %s (%d cores, load average at the end %s); %s, reticulate %s, Matrix %s, SingleCellExperiment %s",
            cpu, parallel::detectCores(), sub(" .*", "", load), R.version.string,
            utils::packageVersion("reticulate"), utils::packageVersion("Matrix"),
            utils::packageVersion("SingleCellExperiment")),
    "- each variant in its own R (and Python) process: one full-size call first (cold, reported apart), then 3 timed calls",
    "",
    table,
    "",
    sprintf("SCE / bare matrix (medians): %.2fx (target: within 1.5x).", ratio))
  cat(section, file = file.path(root, "benchmarks", "RESULTS.md"), sep = "\n", append = TRUE)
  cat("appended to benchmarks/RESULTS.md\n")
}
