# Access to the Python core. Loading the R package never starts Python: the core is imported
# lazily, on the first call that needs it.

.cellvi_env <- new.env(parent = emptyenv())

#' Is the cellvi Python core available?
#'
#' Checks, without error, whether the Python that reticulate uses (set with
#' `RETICULATE_PYTHON` or `reticulate::use_virtualenv()`) can import the `cellvi` module.
#' This starts Python if it is not running yet.
#'
#' @return `TRUE` or `FALSE`.
#' @examples
#' if (cellvi_available()) message("cellvi core found")
#' @export
cellvi_available <- function() {
  isTRUE(tryCatch(reticulate::py_module_available("cellvi"), error = function(e) FALSE))
}

#' The cellvi Python module
#'
#' Imports the Python core once and returns the reticulate module handle, or stops with a
#' message saying how to provide it.
#'
#' @return A reticulate Python module object.
#' @examples
#' \dontrun{
#' cv <- cellvi_python_module()
#' cv$`__version__`
#' }
#' @export
cellvi_python_module <- function() {
  if (is.null(.cellvi_env$module)) {
    if (!cellvi_available()) {
      stop("the cellvi Python core is not available to reticulate (Python: ",
           tryCatch(reticulate::py_config()$python, error = function(e) "none found"), "). ",
           "Point RETICULATE_PYTHON to a Python environment with cellvi installed, ",
           "e.g. the .venv made by scripts/setup_env.sh.", call. = FALSE)
    }
    .cellvi_env$module <- reticulate::import("cellvi", delay_load = FALSE)
  }
  .cellvi_env$module
}
