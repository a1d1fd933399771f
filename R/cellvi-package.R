#' cellvi: deep probabilistic models for single-cell omics (the scVI family)
#'
#' cellvi runs the scVI family of deep generative models on the objects that Seurat and
#' Bioconductor users already have, and returns the results inside those objects. The models
#' are fitted by cellvi's Python core (PyTorch and AnnData), which this package carries in its
#' tarball and installs with [install_cellvi()].
#'
#' @section Getting started:
#' 1. `install_cellvi()` once: a Python virtual environment with the core and PyTorch (the
#'    CUDA build when an NVIDIA GPU is found, else the CPU build; or say `torch = "cpu"` /
#'    `"cuda"`). [cellvi_available()] says whether R finds it.
#' 2. Run a model on your object. Seurat verbs are `RunX()` and return the Seurat object with
#'    a reduction or metadata added, as [Seurat::RunPCA()] does; SingleCellExperiment verbs
#'    are `runX()` and return the object with a `reducedDim`, `colData` columns or an assay.
#'    The trained model is kept inside the object (or, with `model_dir`, in a directory
#'    recorded on it), so the query verbs (`NormalizeX()`, `FindMarkersX()`, ...) and later
#'    sessions use it without retraining; [cellvi_models()] lists and removes them.
#'
#' @section Models and verbs:
#' - scVI: [RunSCVI()] / [runSCVI()] (batch-corrected latent space), [NormalizeSCVI()],
#'   [FindMarkersSCVI()] (Bayesian differential expression shaped like
#'   [Seurat::FindMarkers()]); LDVAE: [RunLinearSCVI()].
#' - scANVI (cell-type labels from partial annotation): [RunSCANVI()]; reference mapping of a
#'   query onto a trained model: [MapQuerySCVI()].
#' - totalVI (CITE-seq RNA and proteins): [RunTOTALVI()], [NormalizeTOTALVI()],
#'   [FindMarkersTOTALVI()].
#' - PeakVI (scATAC-seq): [RunPEAKVI()], [AccessibilityPEAKVI()], [FindMarkersPEAKVI()].
#' - CellAssign (cell types from marker genes): [RunCellAssign()]; AutoZI (zero-inflated
#'   genes): [RunAUTOZI()]; Solo (doublets): [RunSolo()].
#' - Seurat v5 objects (`Assay5`, split layers) work with every Seurat verb; [scVIIntegration()]
#'   is an integration method for Seurat 5's `IntegrateLayers()`.
#' - Conversion: [as_anndata()], [as_seurat()], [as_sce()], [read_h5ad()]; shipped data:
#'   [cellvi_dataset()], among them `"kang_pbmc"`: 3,000 PBMCs of 8 donors with cell types,
#'   for a real analysis without Python set-up beyond [install_cellvi()].
#'
#' Arguments shared by the verbs are described once, in [cellvi-params].
#'
#' @keywords internal
#' @importClassesFrom Matrix dgCMatrix
"_PACKAGE"

#' Arguments shared by cellvi's verbs
#'
#' The verbs of every model take the same names for the same things. Seurat verbs use
#' Seurat's names (`object`, `assay`, `reduction.name`), SingleCellExperiment verbs
#' Bioconductor's (`x`, `assay.type`, `name`); model and training settings keep the Python
#' core's names, so one page of the Python documentation serves both. A verb's own page
#' lists its arguments, with the defaults of its model.
#'
#' @param object A Seurat object with raw counts (SeuratObject 4 assays, or SeuratObject 5
#'   `Assay5` layers, joined or split: split counts layers are read together, cells in the
#'   object's order).
#' @param x A SingleCellExperiment with raw counts.
#' @param assay Assay holding the counts (default: the default assay); its `counts` slot is
#'   used.
#' @param assay.type Assay holding the counts.
#' @param features Genes to model (default: all). Highly variable genes are a good choice,
#'   e.g. `VariableFeatures(object)`.
#' @param batch_key Metadata column of the batch (sample, donor, lane ...): its effects are
#'   removed from the latent space. `NULL` on a Seurat v5 object whose counts are split in
#'   layers (`split(object[["RNA"]], f = ...)`): the split is the batch (a message says so;
#'   the metadata column `split.layer` is added to record it); otherwise no batch.
#' @param labels_key Metadata column of cell labels.
#' @param categorical_covariate_keys,continuous_covariate_keys Metadata columns of further
#'   covariates.
#' @param n_latent,n_hidden,n_layers,dropout_rate Network size.
#' @param gene_likelihood `"zinb"` (default, as scvi-tools), `"nb"` or `"poisson"`. For UMI
#'   counts (10x and other droplet data) `"nb"` is usually the better choice when normalized
#'   expression or markers matter: a ZINB model can explain a gene's absence from a cell type
#'   by zero inflation and keep its mean high there, and normalized expression (which leaves
#'   the zero inflation out) then shows the gene where it is absent. ZINB suits read counts
#'   of full-length protocols (e.g. Smart-seq2).
#' @param dispersion `"gene"`, `"gene-batch"`, `"gene-label"` or `"gene-cell"`.
#' @param max_epochs Training epochs (`NULL`: `min(round(20000 / cells * 400), 400)`).
#' @param batch_size Cells per minibatch.
#' @param train_size Fraction of the cells used for training (the rest for validation).
#' @param early_stopping Stop when the validation loss stops improving.
#' @param lr Learning rate.
#' @param device `"auto"` (a GPU when there is one), `"cpu"`, `"cuda"`, `"cuda:N"` (GPU
#'   number N) or `"mps"`.
#' @param seed Integer seed for reproducible runs (`NULL`: not seeded).
#' @param model_dir `NULL` (default): the trained model is kept inside the returned object
#'   (a few MB for most models), so `saveRDS()`/`readRDS()` carries it and later verbs work
#'   in any session; see [cellvi_models()]. A directory: the model is saved there and the
#'   object records its path only (for large models; the folder must then travel with the
#'   object). The folder is replaced when the model is saved, so one that exists must be
#'   empty or hold only cellvi models (a rerun replaces them); any other folder is refused
#'   before training.
#' @param model_kwargs Named list of further model settings passed to Python as they are
#'   (e.g. `list(use_observed_lib_size = FALSE)`).
#' @param plan_kwargs Named list of further training settings (the Python core's
#'   `cellvi.train.TrainingPlan`) passed as they are, e.g. `list(precision = "bf16-mixed")`
#'   for bfloat16 networks on a GPU, or `list(reduce_lr_on_plateau = TRUE)`.
#' @param reduction.name,reduction.key Name and key of the new reduction.
#' @param name Name of the new reducedDim.
#' @param reduction The reduction whose model to use.
#' @param dimred The reducedDim whose model to use.
#' @param verbose Show progress and messages (`FALSE`: no progress; a message that announces a
#'   choice made for you, such as Seurat v5 split counts taken as the batch or a group skipped
#'   for too few cells, still shows: `suppressMessages()` silences it). Training shows the planned
#'   epochs and an estimate of the whole run after the first epoch, then a bar in a terminal,
#'   or, when R's output is not a terminal (`Rscript` into a log, a knitted document), a plain
#'   line every ~10% of the epochs (epoch, ELBO, elapsed and remaining time). When the
#'   validation ELBO is still clearly rising at the last epoch, a warning says "not
#'   converged" (more epochs may change the results); `options(cellvi.warn_not_converged =
#'   FALSE)` silences it.
#' @name cellvi-params
#' @keywords internal
NULL
