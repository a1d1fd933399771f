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

test_that("the slow-BLAS warning names R's reference BLAS only when that is what R loaded", {
  expect_true(cellvi:::.tuned_blas("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"))
  expect_true(cellvi:::.tuned_blas("/opt/intel/mkl/lib/libmkl_rt.so"))
  expect_true(cellvi:::.tuned_blas(
    "/System/Library/Frameworks/Accelerate.framework/Versions/A/Frameworks/vecLib.framework/libBLAS.dylib"))
  expect_false(cellvi:::.tuned_blas("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3.11.0"))
  expect_false(cellvi:::.tuned_blas("/usr/lib/R/lib/libRblas.so"))
  expect_false(cellvi:::.tuned_blas(""))
  expect_false(cellvi:::.tuned_blas(NULL))
})
