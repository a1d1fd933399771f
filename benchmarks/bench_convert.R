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

file_arg <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
source(file.path(dirname(file_arg), "_common.R"))
size <- matrix_size_options()
n_cells <- size$n_cells
n_genes <- size$n_genes
nnz_target <- size$nnz_target
repeats <- 3L

use_tree_python()
lib <- install_tree(tempfile("cellvi-lib"))
suppressPackageStartupMessages(library(cellvi, lib.loc = lib))

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
  if (reticulate::py_available()) reticulate::import("gc")$collect()  # without starting Python
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

# ---- data -------------------------------------------------------------------------------------
t0 <- proc.time()[["elapsed"]]
m <- simulate_dgc(n_cells, n_genes, nnz_target)
gen_secs <- proc.time()[["elapsed"]] - t0
nnz <- length(m@x)
dgc_mib <- as.numeric(object.size(m)) / 2^20
csr_mib <- (nnz * (4 + 4) + (n_cells + 1) * 4) / 2^20
dense_mib <- as.numeric(n_cells) * n_genes * 4 / 2^20
cat(sprintf("matrix: %s genes x %s cells, %s non-zeros (made in %.1f s); dgCMatrix %.0f MiB, CSR (float32/int32) %.0f MiB, dense float32 would be %.0f MiB\n",
            format(n_genes, big.mark = ","), format(n_cells, big.mark = ","),
            format(nnz, big.mark = ","), gen_secs, dgc_mib, csr_mib, dense_mib))

# ---- Python start and import (once per session) --------------------------------------------------
imp <- measure(function() cellvi_available())  # starts Python and imports the core
if (!isTRUE(imp$value)) stop("the cellvi Python core is not available; set RETICULATE_PYTHON")
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
if (bench_record) {
  pyver <- function(mod) reticulate::import("importlib.metadata")$version(mod)
  append_results(c(
    section_head(sprintf("R -> AnnData conversion, %s cells x %s genes dgCMatrix, %s non-zeros (simulated)",
                         format(n_cells, big.mark = ","), format(n_genes, big.mark = ","),
                         format(nnz, big.mark = ",")), "bench_convert.R",
                 sprintf("%s, reticulate %s, Matrix %s; Python %s, numpy %s, scipy %s, pandas %s, anndata %s",
                         R.version.string, utils::packageVersion("reticulate"), utils::packageVersion("Matrix"),
                         reticulate::py_config()$version, pyver("numpy"), pyver("scipy"), pyver("pandas"),
                         pyver("anndata"))),
    sprintf("- sizes: dgCMatrix %.0f MiB, CSR float32/int32 %.0f MiB, a dense float32 copy would be %.0f MiB; Python start + imports %.2f s (once per session, not in the rows)",
            dgc_mib, csr_mib, dense_mib, imp$secs),
    "- memory: VmHWM of the R process (R and Python together) minus VmRSS before the step (reset before each step); retained = VmRSS after the step and a gc, result still alive",
    "",
    table))
}
unlink(lib, recursive = TRUE)
