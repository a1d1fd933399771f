# Argument checks at the R boundary: R passes doubles (2, 400) where Python wants integers,
# so every numeric argument is coerced and validated here, with messages in R's terms.

.as_count <- function(x, name, minimum = 1L, null_ok = FALSE) {
  if (is.null(x) && null_ok) return(NULL)
  if (!is.numeric(x) || length(x) != 1L || is.na(x) || !is.finite(x)) {
    stop("`", name, "` must be a single whole number, not ", .show(x), call. = FALSE)
  }
  if (x != round(x)) stop("`", name, "` must be a whole number, not ", x, call. = FALSE)
  if (x < minimum) stop("`", name, "` must be at least ", minimum, ", not ", x, call. = FALSE)
  as.integer(x)
}

.as_number <- function(x, name, lower = -Inf, upper = Inf, null_ok = FALSE) {
  if (is.null(x) && null_ok) return(NULL)
  if (!is.numeric(x) || length(x) != 1L || is.na(x)) {
    stop("`", name, "` must be a single number, not ", .show(x), call. = FALSE)
  }
  if (x < lower || x > upper) {
    stop("`", name, "` must be between ", lower, " and ", upper, ", not ", x, call. = FALSE)
  }
  as.numeric(x)
}

.as_flag <- function(x, name) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) {
    stop("`", name, "` must be TRUE or FALSE, not ", .show(x), call. = FALSE)
  }
  x
}

.as_choice <- function(x, name, choices) {
  if (!is.character(x) || length(x) != 1L || !x %in% choices) {
    stop("`", name, "` must be one of ", paste0('"', choices, '"', collapse = ", "),
         ", not ", .show(x), call. = FALSE)
  }
  x
}

.as_names <- function(x, name, null_ok = TRUE) {
  if (is.null(x) && null_ok) return(NULL)
  if (!is.character(x) || anyNA(x) || length(x) == 0L) {
    stop("`", name, "` must be a character vector of column names, not ", .show(x),
         call. = FALSE)
  }
  x
}

.show <- function(x) {
  if (is.null(x)) return("NULL")
  text <- paste(utils::capture.output(dput(x)), collapse = "")
  if (nchar(text) > 60) paste0(substr(text, 1, 57), "...") else text
}

# Runs `expr` (a Python call): a Python exception becomes an R error carrying the Python
# message only (no traceback noise), and Python's UserWarnings (cellvi's own warnings to the
# user) become R warnings; R would otherwise print them as stray text that suppressWarnings()
# cannot silence. Other warning categories (library deprecation notices) are dropped.
.py_call <- function(expr) {
  .core()  # Python starts with the chosen interpreter before anything else touches it
  py_warnings <- reticulate::import("warnings", convert = FALSE)
  recorder <- py_warnings$catch_warnings(record = TRUE)
  caught <- recorder$`__enter__`()
  builtins <- reticulate::import_builtins(convert = FALSE)
  py_warnings$simplefilter("always", builtins$UserWarning)
  result <- tryCatch(expr, python.builtin.BaseException = function(e) {
    stop(.r_wording(conditionMessage(e)), call. = FALSE)
  }, error = function(e) {
    stop(.r_wording(conditionMessage(e)), call. = FALSE)
  }, finally = recorder$`__exit__`(NULL, NULL, NULL))
  caught <- Filter(function(w) reticulate::py_to_r(builtins$issubclass(w$category, builtins$UserWarning)),
                   reticulate::py_to_r(caught))
  # options(cellvi.warn_not_converged = FALSE) silences the "not converged" warning
  if (isFALSE(getOption("cellvi.warn_not_converged", TRUE))) {
    caught <- Filter(function(w) !identical(.py_value(w$category$`__name__`),
                                            "ConvergenceWarning"), caught)
  }
  messages <- unique(vapply(caught, function(w) reticulate::py_str(w$message),
                            character(1)))
  for (msg in messages) warning(msg, call. = FALSE)
  result
}

# A Python error message in R's terms: no exception name in front ("ValueError: ", "KeyError:
# '...'"), no reticulate footer or trailing blank lines, metadata columns instead of obs columns,
# and R code instead of Python code in the advice.
.r_wording <- function(msg) {
  msg <- sub("(?s)\n*Run `reticulate::py_last_error\\(\\)`.*$", "", msg, perl = TRUE)
  msg <- sub("^\\s*(Error in py_call_impl[^:]*:\\s*)?", "", msg, perl = TRUE)
  msg <- sub("^([A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Warning|Exit|Interrupt)): ", "", msg,
             perl = TRUE)
  msg <- sub("\\s+$", "", msg, perl = TRUE)
  # KeyError's message is the repr of its argument: quoted, with quotes escaped
  if (grepl("^'.*'$", msg) || grepl('^".*"$', msg)) {
    msg <- gsub("\\\\'", "'", substr(msg, 2L, nchar(msg) - 1L))
  }
  msg <- gsub("(\\w+)\\.obs\\['([^']+)'\\] = 'query_' \\+ \\1\\.obs\\['\\2'\\]\\.astype\\(str\\)",
              "\\1$\\2 <- paste0(\"query_\", \\1$\\2)", msg, perl = TRUE)
  empty <- regmatches(msg, regexec(paste0("^\\S+(?: '[^']*')? has (\\d+) cells with zero total counts ",
                                           "\\((.*)\\); remove them first, e\\.g\\..*$"), msg, perl = TRUE))[[1]]
  if (length(empty)) {
    seurat <- identical(.cellvi_env$caller$eco, "seurat")
    msg <- paste0(empty[[2]], " cells have no counts in the genes used (", empty[[3]], "); remove them ",
                  "first, e.g. ", if (seurat) "object <- subset(object, nCount_RNA > 0)" else
                    "x <- x[, Matrix::colSums(counts(x)) > 0]",
                  " (with `features`, count over those genes only, or choose more features)")
  }
  msg <- gsub("(\\w+)\\.obs\\['([^']+)'\\]", "\\1$\\2", msg, perl = TRUE)
  msg <- gsub("\\bobs column", "metadata column", msg, perl = TRUE)
  msg
}

# An R value from a Python object (reticulate handles made with convert = FALSE stay Python).
.py_value <- function(x) {
  if (inherits(x, "python.builtin.object")) reticulate::py_to_r(x) else x
}
