library(testthat)
library(cellvi)

test_check("cellvi")
