# Training progress from R: plain lines when R's output is not a terminal, silence with
# verbose = FALSE, and the "not converged" warning.

run_piped_r <- function(code) {
  libs <- paste0("c(", paste(sprintf("'%s'", .libPaths()), collapse = ", "), ")")
  script <- tempfile(fileext = ".R")
  writeLines(c(sprintf(".libPaths(%s)", libs), code), script)
  # stdout and stderr captured: not a terminal, as with Rscript piped into a log
  suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), script, stdout = TRUE,
                           stderr = TRUE))
}

test_that("training prints plain progress lines when R's output is not a terminal", {
  skip_if_no_core()
  out <- run_piped_r(c(
    "suppressPackageStartupMessages(library(cellvi))",
    "pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 20, seed = 0)",
    "cat('QUIET\\n')",
    "pbmc <- RunSCVI(SeuratObject::pbmc_small, max_epochs = 20, seed = 0, verbose = FALSE)",
    "cat('DONE\\n')"))
  text <- paste(out, collapse = "\n")
  expect_false(grepl("\r", text, fixed = TRUE), info = text)
  loud <- out[seq_len(which(out == "QUIET") - 1L)]
  expect_true(any(grepl("^Training for 20 epochs: the first took .* about .* in all$", loud)),
              info = text)
  epochs <- regmatches(loud, regexpr("^Epoch [0-9]+/20", loud))
  expect_identical(epochs, paste0("Epoch ", seq(2, 20, by = 2), "/20"))  # every 10%
  expect_true(all(grepl("elbo .*elapsed .* remaining ~", grep("^Epoch ", loud, value = TRUE))))
  quiet <- out[(which(out == "QUIET") + 1L):(which(out == "DONE") - 1L)]
  expect_false(any(grepl("Epoch|Training", quiet)), info = paste(quiet, collapse = "\n"))
})

test_that("a run that stops while the validation ELBO still rises warns 'not converged'", {
  skip_if_no_core()
  withr_opts <- options(cellvi.warn_not_converged = TRUE)
  on.exit(options(withr_opts), add = TRUE)
  sce <- cellvi_dataset("kang_pbmc", as = "SingleCellExperiment")
  expect_warning(runSCVI(sce[, 1:500], max_epochs = 25, seed = 0, verbose = FALSE),
                 "not converged: the validation ELBO was still rising.*max_epochs")
  options(cellvi.warn_not_converged = FALSE)
  expect_warning(runSCVI(sce[, 1:500], max_epochs = 25, seed = 0, verbose = FALSE), NA)
})
