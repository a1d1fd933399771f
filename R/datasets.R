#' Small data sets shipped with cellvi
#'
#' Real data small enough for examples, vignettes and tests, shipped with the Python core
#' (`cellvi.datasets`) and returned as the object you work with.
#'
#' - `"pbmc_cite_small"`: 400 PBMCs x 500 genes with 14 surface proteins (CITE-seq, raw
#'   counts), for totalVI. From 10x Genomics' `pbmc_10k_protein_v3` (licence CC BY 4.0), as
#'   filtered for the totalVI paper; 400 random cells and the 500 most variable genes. The
#'   proteins are the assay `"ADT"` (Seurat; underscores in their names become dashes, as
#'   Seurat wants: `CD3-TotalSeqB`) or the altExp `"ADT"` (SingleCellExperiment).
#' - `"pbmc_small"`: 80 PBMCs x 230 genes, the cells of `SeuratObject::pbmc_small`.
#' - `"bmmc_atac_small"`: 600 bone-marrow cells x 2,000 peaks (scATAC-seq fragment counts),
#'   for PeakVI: 100 cells of each of six types (metadata `cell_type`; `donor`), from Granja
#'   et al. 2019 as shipped by the epiCHAOS R package (MIT). The peaks are the assay `"peaks"`
#'   (Seurat) or the `counts` assay (SingleCellExperiment).
#'
#' @param name The data set.
#' @param as `"Seurat"`, `"SingleCellExperiment"` or `"AnnData"` (the Python object).
#' @return The data set as a Seurat object, a SingleCellExperiment or an AnnData handle.
#' @examples
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   cite <- cellvi_dataset("pbmc_cite_small")
#'   cite                                   # assays RNA and ADT
#'   rownames(cite[["ADT"]])
#' }
#' @export
cellvi_dataset <- function(name = c("pbmc_cite_small", "pbmc_small", "bmmc_atac_small"),
                           as = c("Seurat", "SingleCellExperiment", "AnnData")) {
  name <- match.arg(name)
  as <- match.arg(as)
  .core()  # chooses and starts Python as every verb does
  datasets <- reticulate::import("cellvi.datasets", convert = FALSE)
  adata <- .py_call(datasets[[name]]())
  assay <- if (name == "bmmc_atac_small") "peaks" else "RNA"
  switch(as, Seurat = as_seurat(adata, assay = assay), SingleCellExperiment = as_sce(adata),
         AnnData = adata)
}
