# What the R benchmarks share: options, the working tree installed into a temporary library,
# the simulated count matrix and the RESULTS.md section header. Sourced by each script:
#
#   file_arg <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE))
#   source(file.path(dirname(file_arg), "_common.R"))

bench_args <- commandArgs(trailingOnly = TRUE)
bench_record <- "--record" %in% bench_args  # append the figures to RESULTS.md
bench_root <- normalizePath(file.path(dirname(file_arg), ".."))

# The numeric value after --name, or default.
bench_option <- function(name, default) {
  i <- match(paste0("--", name), bench_args)
  if (is.na(i)) default else as.numeric(bench_args[i + 1])
}

# RETICULATE_PYTHON, or the tree's .venv/bin/python when that is unset.
use_tree_python <- function() {
  python <- file.path(bench_root, ".venv/bin/python")
  if (!nzchar(Sys.getenv("RETICULATE_PYTHON")) && file.exists(python)) Sys.setenv(RETICULATE_PYTHON = python)
}

# The working tree installed into `lib`, so that the code measured is the code in the tree.
install_tree <- function(lib) {
  dir.create(lib, showWarnings = FALSE, recursive = TRUE)
  log <- system2(file.path(R.home("bin"), "R"),
                 c("CMD", "INSTALL", "--no-multiarch", "--no-test-load", paste0("--library=", lib),
                   shQuote(bench_root)), stdout = TRUE, stderr = TRUE)
  if (!is.null(attr(log, "status"))) stop("R CMD INSTALL failed:\n", paste(log, collapse = "\n"))
  invisible(lib)
}

# The simulated matrix's size from --cells, --genes and --nnz (default 100,000 x 2,000, 1e7
# non-zeros), for the conversion benchmarks.
matrix_size_options <- function() {
  list(n_cells = as.integer(bench_option("cells", 1e5)), n_genes = as.integer(bench_option("genes", 2000)),
       nnz_target = bench_option("nnz", 1e7))
}

# A genes x cells dgCMatrix of counts (about nnz_target non-zeros, NB(2, 1) + 1 each), built
# directly in CSC form (seeded): a sparse() call would sort ten million triplets.
simulate_dgc <- function(n_cells, n_genes, nnz_target, seed = 0) {
  set.seed(seed)
  density <- nnz_target / (as.numeric(n_cells) * n_genes)
  per_cell <- rbinom(n_cells, n_genes, density)
  p <- c(0L, cumsum(per_cell))
  i <- unlist(lapply(per_cell, function(k) sort.int(sample.int(n_genes, k)) - 1L), use.names = FALSE)
  x <- as.numeric(rnbinom(length(i), mu = 2, size = 1) + 1)
  methods::new("dgCMatrix", i = i, p = as.integer(p), x = x, Dim = c(n_genes, n_cells),
               Dimnames = list(paste0("gene", seq_len(n_genes)), paste0("cell", seq_len(n_cells))))
}

# The head of a RESULTS.md section: title with the UTC time, command, commit (marked when the
# tree has uncommitted changes) and the machine (`machine_extra`: versions and the like).
section_head <- function(title, script, machine_extra) {
  git <- function(...) tryCatch(system2("git", c("-C", shQuote(bench_root), ...), stdout = TRUE,
                                        stderr = FALSE), error = function(e) "")
  commit <- git("rev-parse", "--short", "HEAD")
  dirty <- length(git("status", "--porcelain", "--untracked-files=no")) > 0
  cpu <- sub(".*:\\s*", "", grep("^model name", readLines("/proc/cpuinfo"), value = TRUE)[1])
  c("",
    sprintf("## %s: %s", format(Sys.time(), "%Y-%m-%d %H:%M UTC", tz = "UTC"), title),
    "",
    sprintf("- command: `Rscript benchmarks/%s %s`", script, paste(bench_args, collapse = " ")),
    sprintf("- commit: %s%s", commit, if (dirty) " (with uncommitted changes)" else ""),
    sprintf("- machine: %s (%d cores); %s", cpu, parallel::detectCores(), machine_extra))
}

append_results <- function(lines) {
  cat(lines, file = file.path(bench_root, "benchmarks", "RESULTS.md"), sep = "\n", append = TRUE)
  cat("appended to benchmarks/RESULTS.md\n")
}
