test_that("loading the package does not start Python", {
  code <- "library(cellvi); cat(reticulate::py_available(initialize = FALSE))"
  out <- system2(file.path(R.home("bin"), "Rscript"), c("-e", shQuote(code)), stdout = TRUE)
  expect_equal(tail(out, 1), "FALSE")
})

test_that("the Python core is found and answers", {
  skip_if_not(nzchar(Sys.getenv("RETICULATE_PYTHON")), "RETICULATE_PYTHON not set")
  expect_true(cellvi_available())
  cv <- cellvi_python_module()
  expect_match(cv$`__version__`, "^[0-9]+\\.[0-9]+")
})
