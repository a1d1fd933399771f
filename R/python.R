# Access to the Python core. Loading the R package never starts Python: the core is imported
# on the first call that needs it.

.cellvi_env <- new.env(parent = emptyenv())

# The virtualenv that install_cellvi() creates by default.
.default_envname <- "r-cellvi"

#' Install the cellvi Python core for R
#'
#' Creates (or reuses) a Python virtual environment and installs into it PyTorch, then the
#' cellvi Python core that this R package carries (under `system.file("python", package =
#' "cellvi")`, the same version as the R package) and its dependencies, with versions that
#' the installed reticulate can load: reticulate older than 1.36 cannot load NumPy 2, so
#' `numpy<2` is added for it. Nothing is fetched for the core itself, only its dependencies
#' (PyTorch, AnnData, NumPy, SciPy, pandas) from the package index pip is configured with.
#'
#' PyTorch is installed first, so that the core's own requirement (`torch>=2.2`) is already
#' met and pip pulls no other build. A torch already in the environment is kept (pip finds
#' the requirement satisfied); to switch between the CPU and CUDA builds, use a new
#' `envname` or uninstall torch from the environment first.
#'
#' @param envname Name of (or path to) the virtual environment.
#' @param source Where to install the core from: `NULL` (the core carried by this R package),
#'   or the path of a checkout of the cellvi repository.
#' @param torch Which PyTorch build: `"auto"` (`"cuda"` when `nvidia-smi` finds an NVIDIA
#'   GPU, else `"cpu"`), `"cpu"` (on Linux from PyTorch's CPU wheel index, some 200 MB
#'   instead of the several GB of CUDA libraries that the default Linux build pulls),
#'   `"cuda"` (the package index's default build, with CUDA on Linux), or a pip requirement
#'   given as is (e.g. `"torch==2.5.1"` or the path of a wheel file).
#' @param python Python interpreter to build the environment from (`NULL`: reticulate's
#'   choice).
#' @param extra_packages Further pip requirements.
#' @return The environment's Python, invisibly.
#' @examples
#' \dontrun{
#' # the core shipped with this package, in the virtualenv "r-cellvi", with PyTorch's CUDA
#' # build when nvidia-smi finds an NVIDIA GPU, else its CPU build (torch = "auto")
#' install_cellvi()
#' # the CPU build whatever the machine has
#' install_cellvi(torch = "cpu")
#' # with a CUDA build of PyTorch, into another environment
#' install_cellvi(envname = "r-cellvi-gpu", torch = "cuda")
#' # from a checkout of the cellvi repository
#' install_cellvi(source = "~/src/cellvi")
#' }
#' @export
install_cellvi <- function(envname = .default_envname, source = NULL, torch = "auto",
                           python = NULL, extra_packages = NULL) {
  steps <- .cellvi_requirements(source, torch, extra_packages)
  # R's LD_LIBRARY_PATH can make a shared-library Python load another Python's libpython
  # (then pip has no ssl); the Python and pip that run here need none of R's libraries.
  old <- Sys.getenv("LD_LIBRARY_PATH", unset = NA)
  Sys.unsetenv("LD_LIBRARY_PATH")
  on.exit(if (!is.na(old)) Sys.setenv(LD_LIBRARY_PATH = old), add = TRUE)
  if (!reticulate::virtualenv_exists(envname)) {
    # no packages at creation: reticulate's default (the newest NumPy) could be NumPy 2
    reticulate::virtualenv_create(envname, python = python, packages = character())
  }
  venv_python <- reticulate::virtualenv_python(envname)
  # setuptools writes build files into the source tree: build from a copy, so that a
  # read-only R library (a site library) works too.
  build_dir <- tempfile("cellvi-core-")
  on.exit(unlink(build_dir, recursive = TRUE), add = TRUE)
  core <- .copy_core(steps$core$source, build_dir)
  .pip_install(venv_python, steps$torch$packages, steps$torch$options, "PyTorch")
  .pip_install(venv_python, c(core, steps$core$packages), character(), "the cellvi core")
  message("cellvi's Python core is installed in '", envname, "'. ",
          if (identical(envname, .default_envname)) "A new R session uses it by itself." else
            paste0("In a new R session, set RETICULATE_PYTHON=", venv_python,
                   " before loading cellvi."))
  invisible(venv_python)
}

# PyTorch's wheel index of CPU-only builds (Linux's default build on PyPI carries CUDA).
.torch_cpu_index <- "https://download.pytorch.org/whl/cpu"

# What install_cellvi() installs, as two pip steps: torch (packages and pip options), then the
# core (its source directory, and further requirements installed with it).
.cellvi_requirements <- function(source = NULL, torch = "auto", extra_packages = NULL,
                                 reticulate_version = utils::packageVersion("reticulate"),
                                 sysname = Sys.info()[["sysname"]],
                                 has_gpu = .nvidia_gpu_present()) {
  if (!is.character(torch) || length(torch) != 1L || is.na(torch) || !nzchar(torch)) {
    stop("`torch` must be \"auto\", \"cpu\", \"cuda\" or one pip requirement such as ",
         "\"torch==2.5.1\", not ", .show(torch), call. = FALSE)
  }
  build <- if (identical(torch, "auto")) (if (isTRUE(has_gpu)) "cuda" else "cpu") else torch
  torch_step <- switch(
    build,
    cpu = list(packages = "torch>=2.2",
               # only Linux's default build carries CUDA; macOS and Windows default to CPU
               options = if (identical(sysname, "Linux")) c("--index-url", .torch_cpu_index)
                         else character()),
    cuda = {
      if (identical(sysname, "Darwin")) {
        stop("PyTorch has no CUDA build for macOS: use torch = \"cpu\" (Apple GPUs are used ",
             "through device = \"mps\")", call. = FALSE)
      }
      list(packages = "torch>=2.2", options = character())
    },
    list(packages = torch, options = character()))
  numpy <- if (reticulate_version < "1.36") "numpy<2" else NULL
  list(torch = torch_step, build = build,
       core = list(source = .core_source(source), packages = c(numpy, extra_packages)))
}

# The directory holding the core's pyproject.toml: a checkout, or the copy in this package.
.core_source <- function(source = NULL) {
  if (is.null(source)) {
    shipped <- system.file("python", package = "cellvi")
    if (!nzchar(shipped) || !file.exists(file.path(shipped, "pyproject.toml"))) {
      stop("this installation of the cellvi R package does not carry its Python core ",
           "(it was installed from a source checkout rather than from a cellvi_*.tar.gz built ",
           "by scripts/build_r.sh). Pass the checkout: install_cellvi(source = ",
           "\"path/to/cellvi\")", call. = FALSE)
    }
    return(normalizePath(shipped))
  }
  if (!is.character(source) || length(source) != 1L || !dir.exists(source) ||
      !file.exists(file.path(source, "pyproject.toml"))) {
    stop("source '", source, "' is not a cellvi checkout (no pyproject.toml there)",
         call. = FALSE)
  }
  normalizePath(source)
}

# Copies the core's sources (pyproject.toml, README.md, LICENSE and python/) into `dir`.
.copy_core <- function(source, dir) {
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  entries <- intersect(c("pyproject.toml", "README.md", "LICENSE", "python"), list.files(source))
  ok <- file.copy(file.path(source, entries), dir, recursive = TRUE)
  if (!all(ok)) stop("could not copy the cellvi core from ", source, " to ", dir, call. = FALSE)
  dir
}

.pip_install <- function(python, packages, options, what) {
  args <- c("-m", "pip", "install", "--disable-pip-version-check", options, shQuote(packages))
  status <- system2(python, args)
  if (!identical(status, 0L)) {
    stop("pip could not install ", what, " (", paste(packages, collapse = " "), ") into ",
         "the environment of ", python, "; its messages above say why (a package index ",
         "that cannot be reached: see `pip config list`)", call. = FALSE)
  }
  invisible()
}

# Whether an NVIDIA GPU is visible: nvidia-smi is on the PATH and lists one.
.nvidia_gpu_present <- function() {
  smi <- Sys.which("nvidia-smi")
  if (!nzchar(smi)) return(FALSE)
  out <- tryCatch(suppressWarnings(system2(smi, "-L", stdout = TRUE, stderr = FALSE)),
                  error = function(e) character())
  any(grepl("^GPU", out))
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

# Which Python R tried, why that one, and what to do: for messages when the core (or one of
# its dependencies) cannot be imported.
.python_advice <- function() {
  python <- tryCatch(reticulate::py_config()$python, error = function(e) NA_character_)
  env <- Sys.getenv("RETICULATE_PYTHON")
  why <- if (nzchar(env)) {
    "set by RETICULATE_PYTHON"
  } else if (reticulate::virtualenv_exists(.default_envname)) {
    paste0("the virtualenv '", .default_envname, "' made by install_cellvi()")
  } else {
    "reticulate's default: no RETICULATE_PYTHON and no cellvi environment"
  }
  others <- setdiff(unique(Sys.which(c("python3", "python"))), c("", python))
  paste0("R tried the Python ", if (is.na(python)) "(none found)" else python, " (", why, ")",
         if (length(others)) paste0("; other Pythons here: ", paste(others, collapse = ", ")),
         ". Run cellvi::install_cellvi() to install the core into its own environment, then ",
         "restart R", if (nzchar(env)) " without RETICULATE_PYTHON (or point it to that environment's Python)",
         "; or set RETICULATE_PYTHON to a Python that has cellvi installed.")
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
      why <- tryCatch({
        reticulate::import("cellvi")
        ""
      }, error = function(e) paste0(" (", .r_wording(conditionMessage(e)), ")"))
      stop("the cellvi Python core cannot be imported", why, ". ", .python_advice(),
           call. = FALSE)
    }
    .cellvi_env$module <- reticulate::import("cellvi", delay_load = FALSE)
    # reticulate (< 1.36) converts a pandas DataFrame with Index.format(), which pandas 2
    # deprecates: py_to_r(model$history) would print a FutureWarning the user can do nothing
    # about (cellvi_history() converts without it).
    reticulate::py_run_string(paste0(
      "import warnings; warnings.filterwarnings('ignore', message='Index.format is deprecated', ",
      "category=FutureWarning)"))
    .check_blas()
  }
  .cellvi_env$module
}

# torch's matrix products call the BLAS that R loaded first. R's reference BLAS is unthreaded
# and untuned, many times slower than the BLAS torch brings; say so once, with the fix. The
# best of three rounds is timed, and a tuned BLAS that R reports loaded silences the warning:
# on a busy machine the products are slow whatever the BLAS, and the fix would be wrong.
.check_blas <- function() {
  timing <- reticulate::py_run_string(paste(
    "import time, torch",
    "a = torch.randn(256, 256); a @ a",
    "rounds = []",
    "for _ in range(3):",
    "    start = time.perf_counter()",
    "    for _ in range(10): a @ a",
    "    rounds.append((time.perf_counter() - start) / 10 * 1000)",
    "per_product = min(rounds)", sep = "\n"), local = TRUE)
  per_product <- timing$per_product
  if (per_product > 5 && !.tuned_blas(tryCatch(utils::sessionInfo()$BLAS, error = function(e) ""))) {
    warning(sprintf(paste0(
      "torch's matrix products take %.0f ms here (about 0.3 ms with a fast BLAS): R's reference ",
      "BLAS is in use and training will be slow. Install OpenBLAS (Debian/Ubuntu: apt install ",
      "libopenblas0-pthread) and restart R."), per_product), call. = FALSE)
  }
  invisible(per_product)
}

# Whether the BLAS library R loaded (its path, as sessionInfo() gives it) is a tuned one.
.tuned_blas <- function(path) {
  isTRUE(grepl("openblas|mkl|blis|atlas|accelerate|veclib", path, ignore.case = TRUE))
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
