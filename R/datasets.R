#' Small data sets shipped with cellvi
#'
#' Real data small enough for examples, vignettes and tests, returned as the object you work
#' with. `"kang_pbmc"` ships with the R package and needs Python only for `as = "AnnData"`;
#' the others ship with the Python core (`cellvi.datasets`).
#'
#' - `"kang_pbmc"`: 3,000 control PBMCs x 1,287 genes (raw counts) of Kang et al. 2018
#'   (Nature Biotechnology 36:89-94; GEO GSE96583) from 8 donors (metadata `donor`: batch
#'   effects to remove), with the authors' 8 cell types (`cell_type`), for integration,
#'   clustering and markers on real data. Drawn at random from the control cells packaged by
#'   the muscat R package (licence GPL-3); made by `scripts/make_kang_pbmc.R` of the cellvi
#'   repository. Genes are named by symbol; Ensembl ids are in the feature metadata
#'   (`ensembl_id`).
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
#' - `"merfish_reference_small"` and `"merfish_spatial_small"`: a single-cell RNA reference
#'   of the mouse hypothalamic preoptic region (1,304 cells x 134 genes, 14 cell types in
#'   `cell_type`) and MERFISH spatial data of the same 134 genes (750 cells, coordinates in
#'   the metadata columns `x` and `y`), for gimVI ([RunGIMVI()]: hold some spatial genes out
#'   and impute them). The MERFISH example of the spacexr R package (Cable et al. 2022;
#'   licence GPL-3), all genes and all cells with counts; made by
#'   `scripts/make_merfish_small.py`.
#' - `"lymphnode_reference_small"` and `"lymphnode_visium_small"`: a lymph node's single-cell
#'   reference (330 cells, 11 cell types of 30 cells each, metadata `cell_type`) and Visium
#'   spots (metadata `x`, `y`: the spots' coordinates), both on the 300 genes that best tell
#'   the types apart, for spatial deconvolution ([RunDestVI()], [RunStereoscope()]). From the
#'   spacexr R package (licence GPL-3); made by `scripts/make_lymphnode_spatial_small.py`.
#'
#' @param name The data set.
#' @param as `"Seurat"`, `"SingleCellExperiment"` or `"AnnData"` (the Python object).
#' @return The data set as a Seurat object, a SingleCellExperiment or an AnnData handle.
#' @examples
#' if (requireNamespace("SeuratObject", quietly = TRUE)) {
#'   kang <- cellvi_dataset("kang_pbmc")      # no Python needed
#'   table(kang$cell_type, kang$donor)
#' }
#' if (cellvi_available() && requireNamespace("SeuratObject", quietly = TRUE)) {
#'   cite <- cellvi_dataset("pbmc_cite_small")
#'   cite                                   # assays RNA and ADT
#'   rownames(cite[["ADT"]])
#' }
#' @export
cellvi_dataset <- function(name = c("pbmc_cite_small", "pbmc_small", "bmmc_atac_small",
                                    "kang_pbmc", "merfish_reference_small",
                                    "merfish_spatial_small", "lymphnode_reference_small",
                                    "lymphnode_visium_small"),
                           as = c("Seurat", "SingleCellExperiment", "AnnData")) {
  name <- match.arg(name)
  as <- match.arg(as)
  if (name == "kang_pbmc") return(.kang_pbmc(as))
  .core()  # chooses and starts Python as every verb does
  datasets <- reticulate::import("cellvi.datasets", convert = FALSE)
  adata <- .py_call(datasets[[name]]())
  assay <- if (name == "bmmc_atac_small") "peaks" else "RNA"
  switch(as, Seurat = as_seurat(adata, assay = assay), SingleCellExperiment = as_sce(adata),
         AnnData = adata)
}

# The Kang et al. PBMC subset shipped in inst/extdata (see scripts/make_kang_pbmc.R).
.kang_pbmc <- function(as) {
  path <- system.file("extdata", "kang_pbmc.rds", package = "cellvi")
  if (!nzchar(path)) {
    stop("inst/extdata/kang_pbmc.rds is missing from this installation of cellvi; ",
         "reinstall the package", call. = FALSE)
  }
  kang <- readRDS(path)
  if (as == "Seurat") {
    .require_pkg("SeuratObject", "make a Seurat object")
    object <- SeuratObject::CreateSeuratObject(kang$counts, project = "kang_pbmc",
                                               meta.data = kang$cells)
    object[["RNA"]] <- SeuratObject::AddMetaData(object[["RNA"]], kang$genes)
    return(object)
  }
  .require_pkg("SingleCellExperiment", "make a SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = kang$counts), colData = S4Vectors::DataFrame(kang$cells),
    rowData = S4Vectors::DataFrame(kang$genes))
  if (as == "SingleCellExperiment") sce else as_anndata(sce)
}
