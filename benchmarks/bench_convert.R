# Speed and memory of the R -> AnnData conversion (cellvi::as_anndata) on a large sparse matrix,
# and of the way back (cellvi::as_sce). Not a test: it prints figures, and with --record
# appends them to benchmarks/RESULTS.md.
#
#   Rscript benchmarks/bench_convert.R [--record] [--cells 100000] [--genes 2000] [--nnz 1e7]
#
# It installs the working tree into a temporary library first (so the code measured is the
# code in the tree) and uses RETICULATE_PYTHON, or .venv/bin/python when that is unset.
# Memory is this process's peak resident set (VmHWM, reset through /proc/self/clear_refs before
# each step), i.e. R and Python together, minus the resident set just before the step.

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

lib <- tempfile("cellvi-lib")
dir.create(lib)
log <- system2(file.path(R.home("bin"), "R"),
               c("CMD", "INSTALL", "--no-multiarch", "--no-test-load", paste0("--library=", lib),
                 shQuote(root)), stdout = TRUE, stderr = TRUE)
if (!is.null(attr(log, "status"))) stop("R CMD INSTALL failed:\n", paste(log, collapse = "\n"))
suppressPackageStartupMessages(library(cellvi, lib.loc = lib))
if (!cellvi_available()) stop("the cellvi Python core is not available; set RETICULATE_PYTHON")

status_mib <- function(field) {
  line <- grep(paste0("^", field, ":"), readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}
reset_peak <- function() {
  ok <- tryCatch({ writeLines("5", "/proc/self/clear_refs"); TRUE }, error = function(e) FALSE)
  if (!ok) warning("cannot reset VmHWM; peaks include earlier steps")
}
clean <- function() {
  invisible(gc(full = TRUE))
  reticulate::import("gc")$collect()
  invisible(gc(full = TRUE))
}
# Runs expr once with the peak memory measured; returns seconds, peak over base, retained.
measure <- function(expr_fun) {
  clean()
  base <- status_mib("VmRSS")
  reset_peak()
  t0 <- proc.time()[["elapsed"]]
  value <- expr_fun()
  secs <- proc.time()[["elapsed"]] - t0
  peak <- status_mib("VmHWM") - base
  clean()  # R's temporary copies are garbage now; what stays is the result
  retained <- status_mib("VmRSS") - base
  list(value = value, secs = secs, peak = peak, retained = retained)
}

# ---- data: a genes x cells dgCMatrix of counts, built directly in CSC form ----------------------
set.seed(0)
t0 <- proc.time()[["elapsed"]]
density <- nnz_target / (as.numeric(n_cells) * n_genes)
per_cell <- rbinom(n_cells, n_genes, density)
p <- c(0L, cumsum(per_cell))
i <- unlist(lapply(per_cell, function(k) sort.int(sample.int(n_genes, k)) - 1L), use.names = FALSE)
x <- as.numeric(rnbinom(length(i), mu = 2, size = 1) + 1)
m <- new("dgCMatrix", i = i, p = as.integer(p), x = x, Dim = c(n_genes, n_cells),
         Dimnames = list(paste0("gene", seq_len(n_genes)), paste0("cell", seq_len(n_cells))))
rm(i, p, x, per_cell)
gen_secs <- proc.time()[["elapsed"]] - t0
nnz <- length(m@x)
dgc_mib <- as.numeric(object.size(m)) / 2^20
csr_mib <- (nnz * (4 + 4) + (n_cells + 1) * 4) / 2^20
dense_mib <- as.numeric(n_cells) * n_genes * 4 / 2^20
cat(sprintf("matrix: %s genes x %s cells, %s non-zeros (made in %.1f s); dgCMatrix %.0f MiB, CSR (float32/int32) %.0f MiB, dense float32 would be %.0f MiB\n",
            format(n_genes, big.mark = ","), format(n_cells, big.mark = ","),
            format(nnz, big.mark = ","), gen_secs, dgc_mib, csr_mib, dense_mib))

# ---- Python start and import (once per session) --------------------------------------------------
imp <- measure(function() cellvi:::.cellvi_py())
small <- as_anndata(m[1:10, 1:10])  # warm the code path once
rm(small)

# ---- steps ---------------------------------------------------------------------------------------
x64 <- reticulate::np_array(m@x)  # the float64 buffer the transfer makes; the checks read it
invisible(suppressPackageStartupMessages(loadNamespace("SingleCellExperiment")))  # load time is not conversion
# The whole call goes first, so that its first run is the cold one (fresh pages) a user sees.
steps <- list(
  "as_anndata(dgCMatrix), whole call (names, obs/var, AnnData)" = function() as_anndata(m),
  "  of which: dgCMatrix -> scipy CSR, checks included (no transpose)" =
    function() cellvi:::.dgc_to_py_csr(m, FALSE, "m", ""),
  "  of which: count checks (R: NaN/Inf/negative; numpy: non-integer)" =
    function() cellvi:::.check_counts(m@x, x64, FALSE, "m", "")
)
rows <- list()
for (nm in names(steps)) {
  runs <- lapply(seq_len(repeats), function(r) {
    res <- measure(steps[[nm]])
    res$value <- NULL
    res
  })
  rows[[nm]] <- runs
}
rm(x64)
adata <- as_anndata(m)
X <- adata$X
stopifnot(identical(reticulate::py_to_r(X$format), "csr"),
          identical(unlist(reticulate::py_to_r(X$shape)), c(n_cells, n_genes)),
          reticulate::py_to_r(X$nnz) == nnz)
rows[["as_sce(AnnData), the way back"]] <- lapply(seq_len(repeats), function(r) {
  res <- measure(function() as_sce(adata))
  res$value <- NULL
  res
})

fmt_row <- function(nm, runs) {
  secs <- vapply(runs, `[[`, 0, "secs")
  sprintf("| %s | %.3f | %.3f | %.0f | %.0f |", nm, secs[1], stats::median(secs),
          runs[[1]]$peak, runs[[1]]$retained)
}
table <- c(
  sprintf("| step | first run (s) | median of %d (s) | peak RSS over base, first run (MiB) | retained after gc (MiB) |", repeats),
  "| --- | --- | --- | --- | --- |",
  vapply(names(rows), function(nm) fmt_row(nm, rows[[nm]]), ""))
cat(sprintf("Python start + imports: %.2f s\n", imp$secs))
cat(table, sep = "\n")

# ---- record ----------------------------------------------------------------------------------------
if (record) {
  git <- function(...) tryCatch(system2("git", c("-C", shQuote(root), ...), stdout = TRUE,
                                        stderr = FALSE), error = function(e) "")
  commit <- git("rev-parse", "--short", "HEAD")
  dirty <- length(git("status", "--porcelain", "--untracked-files=no")) > 0
  cpu <- sub(".*:\\s*", "", grep("^model name", readLines("/proc/cpuinfo"), value = TRUE)[1])
  py <- cellvi:::.cellvi_py()
  pyver <- function(mod) reticulate::import("importlib.metadata")$version(mod)
  section <- c(
    "",
    sprintf("## %s: R -> AnnData conversion, %s cells x %s genes dgCMatrix, %s non-zeros (simulated)",
            format(Sys.time(), "%Y-%m-%d %H:%M UTC", tz = "UTC"),
            format(n_cells, big.mark = ","), format(n_genes, big.mark = ","),
            format(nnz, big.mark = ",")),
    "",
    sprintf("- command: `Rscript benchmarks/bench_convert.R %s`", paste(args, collapse = " ")),
    sprintf("- commit: %s%s", commit, if (dirty) " (with uncommitted changes)" else ""),
    sprintf("- machine: %s (%d cores); %s, reticulate %s, Matrix %s; Python %s, numpy %s, scipy %s, pandas %s, anndata %s",
            cpu, parallel::detectCores(), R.version.string, utils::packageVersion("reticulate"),
            utils::packageVersion("Matrix"), reticulate::py_config()$version,
            pyver("numpy"), pyver("scipy"), pyver("pandas"), pyver("anndata")),
    sprintf("- sizes: dgCMatrix %.0f MiB, CSR float32/int32 %.0f MiB, a dense float32 copy would be %.0f MiB; Python start + imports %.2f s (once per session, not in the rows)",
            dgc_mib, csr_mib, dense_mib, imp$secs),
    "- memory: VmHWM of the R process (R and Python together) minus VmRSS before the step (reset before each step); retained = VmRSS after the step and a gc, result still alive",
    "",
    table)
  cat(section, file = file.path(root, "benchmarks", "RESULTS.md"), sep = "\n", append = TRUE)
  cat("appended to benchmarks/RESULTS.md\n")
}
unlink(lib, recursive = TRUE)
