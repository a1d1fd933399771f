# Access to the Python core. Loading the R package never starts Python: the core is imported
# on the first call that needs it.

.cellvi_env <- new.env(parent = emptyenv())

# The virtualenv that install_cellvi() creates by default.
.default_envname <- "r-cellvi"

#' Install the cellvi Python core for R
#'
#' Creates (or reuses) a Python virtual environment and installs the cellvi core and its
#' dependencies into it, with versions that the installed reticulate can load: reticulate
#' older than 1.36 cannot load NumPy 2, so `numpy<2` is added for it.
#'
#' @param envname Name of (or path to) the virtual environment.
#' @param source Where to install the core from: `NULL` installs `cellvi` at the version of
#'   this R package from the package index; a local path (a checkout of the cellvi
#'   repository) installs from there.
#' @param torch pip requirement for PyTorch. On Linux the package index's default build
#'   carries CUDA libraries (several GB); pass a CPU build or a pinned local wheel when you
#'   have no GPU.
#' @param python Python interpreter to build the environment from (`NULL`: reticulate's
#'   choice).
#' @param extra_packages Further pip requirements.
#' @return The environment's path, invisibly.
#' @examples
#' \dontrun{
#' # the core shipped with this package, CPU build of PyTorch, in the virtualenv "r-cellvi"
#' install_cellvi()
#' # with a CUDA build of PyTorch, into another environment
#' install_cellvi(envname = "r-cellvi-gpu", torch = "cuda")
#' # from a checkout of the cellvi repository
#' install_cellvi(source = "~/src/cellvi")
#' }
#' @export
install_cellvi <- function(envname = .default_envname, source = NULL, torch = "torch>=2.2",
                           python = NULL, extra_packages = NULL) {
  requirements <- .cellvi_requirements(source, torch, extra_packages)
  # R's LD_LIBRARY_PATH can make a shared-library Python load another Python's libpython
  # (then pip has no ssl); the Python and pip that run here need none of R's libraries.
  old <- Sys.getenv("LD_LIBRARY_PATH", unset = NA)
  Sys.unsetenv("LD_LIBRARY_PATH")
  on.exit(if (!is.na(old)) Sys.setenv(LD_LIBRARY_PATH = old), add = TRUE)
  if (!reticulate::virtualenv_exists(envname)) {
    reticulate::virtualenv_create(envname, python = python)
  }
  reticulate::virtualenv_install(envname, requirements, ignore_installed = FALSE)
  python <- reticulate::virtualenv_python(envname)
  message("cellvi's Python core is installed in '", envname, "'. ",
          if (identical(envname, .default_envname)) "A new R session uses it by itself." else
            paste0("In a new R session, set RETICULATE_PYTHON=", python, " before loading cellvi."))
  invisible(python)
}

# The pip requirements install_cellvi() installs, in order (torch first, so that the core's
# own `torch>=2.2` is already satisfied and pulls nothing else).
.cellvi_requirements <- function(source = NULL, torch = "torch>=2.2", extra_packages = NULL,
                                 reticulate_version = utils::packageVersion("reticulate")) {
  core <- if (is.null(source)) {
    paste0("cellvi==", utils::packageVersion("cellvi"))
  } else {
    if (!dir.exists(source) || !file.exists(file.path(source, "pyproject.toml"))) {
      stop("source '", source, "' is not a cellvi checkout (no pyproject.toml there)",
           call. = FALSE)
    }
    normalizePath(source)
  }
  numpy <- if (reticulate_version < "1.36") "numpy<2" else NULL
  c(torch, core, numpy, extra_packages)
}

#' Is the cellvi Python core available?
#'
#' Checks, without error, whether the Python that reticulate uses can import `cellvi`.
#' Python is chosen as follows: `RETICULATE_PYTHON` when set, the Python already running in
#' this session when there is one, else the environment made by [install_cellvi()] when it
#' exists. This starts Python if it is not running yet.
#'
#' @return `TRUE` or `FALSE`.
#' @examples
#' if (cellvi_available()) message("cellvi core found")
#' @export
cellvi_available <- function() {
  .choose_python()
  isTRUE(tryCatch(reticulate::py_module_available("cellvi"), error = function(e) FALSE))
}

.choose_python <- function() {
  if (nzchar(Sys.getenv("RETICULATE_PYTHON")) || reticulate::py_available(initialize = FALSE)) {
    return(invisible())
  }
  if (reticulate::virtualenv_exists(.default_envname)) {
    reticulate::use_virtualenv(.default_envname, required = TRUE)
  }
  invisible()
}

#' The cellvi Python module
#'
#' Imports the Python core once and returns the reticulate module handle, or stops with a
#' message saying how to provide it.
#'
#' @return A reticulate Python module object.
#' @examples
#' if (cellvi_available()) {
#'   cv <- cellvi_python_module()
#'   cv$`__version__`
#' }
#' @export
cellvi_python_module <- function() {
  if (is.null(.cellvi_env$module)) {
    if (!cellvi_available()) {
      python <- tryCatch(reticulate::py_config()$python, error = function(e) "none found")
      stop("the cellvi Python core is not available to reticulate (Python: ", python, "). ",
           "Run cellvi::install_cellvi(), or set RETICULATE_PYTHON to a Python that has ",
           "cellvi installed, then restart R.", call. = FALSE)
    }
    .cellvi_env$module <- reticulate::import("cellvi", delay_load = FALSE)
    .check_blas()
  }
  .cellvi_env$module
}

# torch's matrix products call the BLAS that R loaded first. With R's reference BLAS they are
# some 30x slower than in Python; say so once, with the fix.
.check_blas <- function() {
  timing <- reticulate::py_run_string(paste(
    "import time, torch",
    "a = torch.randn(256, 256); a @ a",
    "start = time.perf_counter()",
    "for _ in range(20): a @ a",
    "per_product = (time.perf_counter() - start) / 20 * 1000", sep = "\n"), local = TRUE)
  per_product <- timing$per_product
  if (per_product > 5) {
    warning(sprintf(paste0(
      "torch's matrix products take %.0f ms here (about 0.3 ms with a fast BLAS): R's reference ",
      "BLAS is in use and training will be slow. Install OpenBLAS (Debian/Ubuntu: apt install ",
      "libopenblas0-pthread) and restart R."), per_product), call. = FALSE)
  }
  invisible(per_product)
}

# The core for the package's own calls: no automatic conversion, so every result is converted
# explicitly where it is used (reticulate 1.28's pandas conversion is slow and warns).
.core <- function() {
  if (is.null(.cellvi_env$core)) {
    cellvi_python_module()
    .cellvi_env$core <- reticulate::import("cellvi", convert = FALSE)
  }
  .cellvi_env$core
}
