# The main job: a Seurat analysis of real PBMCs with cellvi.
#
#   Rscript scripts/main_job.R [--max-epochs N] [--out DIR]
#   (bash scripts/main.sh runs it after setting up; CELLVI_MAIN_EPOCHS also sets the epochs)
#
# Data: 3,000 control PBMCs of Kang et al. 2018 from 8 donors, shipped with the package
# (cellvi_dataset("kang_pbmc"); source and licence in ?cellvi_dataset). The donors were
# pooled and sequenced together (then told apart by their genotypes), so donor effects are
# mild here: the comparison shows scVI, trained with the donor as batch, keeping the donors
# mixed and the cell types apart, next to the uncorrected PCA. Writes to DIR (default out/):
#   umap_pca_vs_scvi.png      UMAP of the uncorrected PCA and of the scVI latent space,
#                             coloured by donor and by cell type
#   markers_cd14mono_vs_b.csv FindMarkersSCVI: CD14+ monocytes vs B cells
#   markers_volcano.png       log2 fold change against the evidence (Bayes factor)
#   kang_pbmc_scvi.rds        the Seurat object, its scVI model recorded in the reduction
#   scvi_model/               the trained model (loadable from R and from Python)
options(Seurat.warn.umap.uwot = FALSE)   # the uwot-vs-umap-learn notice, once per session
suppressPackageStartupMessages({
  library(Seurat)
  library(ggplot2)
  library(cellvi)
})

args <- commandArgs(trailingOnly = TRUE)
arg_value <- function(flag, default) {
  i <- match(flag, args)
  if (is.na(i)) default else args[[i + 1L]]
}
# 200 epochs: the ELBO has levelled off on these 3,000 cells; scVI's own default here would
# be 400 (min(20000 / cells * 400, 400)), twice the time for little change in the picture.
max_epochs <- as.integer(arg_value("--max-epochs", Sys.getenv("CELLVI_MAIN_EPOCHS", "200")))
out <- arg_value("--out", "out")
if (is.na(max_epochs) || max_epochs < 1) stop("--max-epochs must be a positive whole number")
dir.create(out, recursive = TRUE, showWarnings = FALSE)
out <- normalizePath(out)
started <- Sys.time()
written <- character()
wrote <- function(path) written <<- c(written, path)

# ---- data and the uncorrected view -------------------------------------------------------------
pbmc <- cellvi_dataset("kang_pbmc")
pbmc <- NormalizeData(pbmc, verbose = FALSE)
pbmc <- FindVariableFeatures(pbmc, nfeatures = 1000, verbose = FALSE)
pbmc <- ScaleData(pbmc, verbose = FALSE)
pbmc <- RunPCA(pbmc, npcs = 30, verbose = FALSE)
pbmc <- RunUMAP(pbmc, reduction = "pca", dims = 1:20, reduction.name = "umap_pca",
                reduction.key = "umapPCA_", seed.use = 1, verbose = FALSE)

# ---- scVI across donors ------------------------------------------------------------------------
# All 1,287 genes (the data are already a selection of informative genes), raw counts.
train_start <- Sys.time()
pbmc <- RunSCVI(pbmc, batch_key = "donor", max_epochs = max_epochs, seed = 0,
                model_dir = file.path(out, "scvi_model"), verbose = interactive())
train_seconds <- as.numeric(difftime(Sys.time(), train_start, units = "secs"))
wrote(file.path(out, "scvi_model"))
pbmc <- RunUMAP(pbmc, reduction = "scvi", dims = 1:10, reduction.name = "umap_scvi",
                reduction.key = "umapSCVI_", seed.use = 1, verbose = FALSE)

# ---- pictures: uncorrected vs scVI, by donor and by cell type -----------------------------------
panel <- function(reduction, group, title) {
  DimPlot(pbmc, reduction = reduction, group.by = group, pt.size = 0.3, shuffle = TRUE,
          seed = 1) + ggtitle(title) + theme(plot.title = element_text(size = 11))
}
plots <- list(panel("umap_pca", "donor", "PCA (uncorrected): donor"),
              panel("umap_scvi", "donor", "scVI latent: donor"),
              panel("umap_pca", "cell_type", "PCA (uncorrected): cell type"),
              panel("umap_scvi", "cell_type", "scVI latent: cell type"))
png(file.path(out, "umap_pca_vs_scvi.png"), width = 12, height = 10, units = "in", res = 110)
print(patchwork::wrap_plots(plots, ncol = 2))
invisible(dev.off())
wrote(file.path(out, "umap_pca_vs_scvi.png"))

# ---- markers: CD14+ monocytes vs B cells --------------------------------------------------------
Idents(pbmc) <- "cell_type"
# every gene (no Seurat filters) for the volcano plot; seeded, so the table repeats
markers <- FindMarkersSCVI(pbmc, ident.1 = "CD14+ Monocytes", ident.2 = "B cells",
                           logfc.threshold = 0, min.pct = 0, seed = 0, verbose = FALSE)
markers <- cbind(gene = rownames(markers), markers)
write.csv(markers, file.path(out, "markers_cd14mono_vs_b.csv"), row.names = FALSE)
wrote(file.path(out, "markers_cd14mono_vs_b.csv"))

called <- markers$is_de_fdr
top_up <- head(markers$gene[called & markers$avg_log2FC > 0][
  order(-markers$avg_log2FC[called & markers$avg_log2FC > 0])], 8)
top_down <- head(markers$gene[called & markers$avg_log2FC < 0][
  order(markers$avg_log2FC[called & markers$avg_log2FC < 0])], 8)
markers$label <- ifelse(markers$gene %in% c(top_up, top_down), markers$gene, NA)
markers$call <- factor(ifelse(called, "DE (FDR 5%)", "not called"),
                       levels = c("DE (FDR 5%)", "not called"))
volcano <- ggplot(markers, aes(avg_log2FC, bayes_factor, colour = call)) +
  geom_point(size = 0.8, alpha = 0.7) +
  ggrepel::geom_text_repel(aes(label = label), size = 3, colour = "black", na.rm = TRUE,
                           max.overlaps = 30, seed = 1) +
  scale_colour_manual(values = c("DE (FDR 5%)" = "firebrick", "not called" = "grey60")) +
  labs(x = "log2 fold change, CD14+ monocytes over B cells (scVI)",
       y = "Bayes factor (log odds of |LFC| > 0.25)", colour = NULL,
       title = "FindMarkersSCVI: CD14+ monocytes vs B cells") +
  theme_bw()
ggsave(file.path(out, "markers_volcano.png"), volcano, width = 8, height = 6, dpi = 110)
wrote(file.path(out, "markers_volcano.png"))

saveRDS(pbmc, file.path(out, "kang_pbmc_scvi.rds"))
wrote(file.path(out, "kang_pbmc_scvi.rds"))

# ---- summary -----------------------------------------------------------------------------------
# Donor mixing and cell-type separation in each space, from each cell's 15 nearest neighbours:
# mixing = share of neighbours from other donors over the share expected by chance (1: ideal);
# purity = share of neighbours of the cell's own type.
knn_scores <- function(emb) {
  nn <- RANN::nn2(emb, k = 16)$nn.idx[, -1]
  donor <- as.integer(pbmc$donor)
  type <- as.integer(pbmc$cell_type)
  expected <- 1 - sum((table(donor) / length(donor))^2)
  c(mixing = mean(donor[nn] != donor) / expected, purity = mean(type[nn] == type))
}
pca_scores <- knn_scores(Embeddings(pbmc, "pca")[, 1:20])
scvi_scores <- knn_scores(Embeddings(pbmc, "scvi"))
model <- load_cellvi_model(file.path(out, "scvi_model"))
history <- cellvi_history(model)

cat("\n== cellvi main job: scVI on Kang et al. 2018 control PBMCs (Seurat)\n")
cat(sprintf("data: %d cells x %d genes, %d donors, %d cell types\n", ncol(pbmc), nrow(pbmc),
            nlevels(pbmc$donor), nlevels(pbmc$cell_type)))
cat(sprintf("scVI: %d epochs in %.0f s (batch = donor); final ELBO per cell: train %.1f, validation %.1f\n",
            nrow(history), train_seconds, tail(history$elbo_train, 1),
            tail(history$elbo_validation, 1)))
cat(sprintf("kNN donor mixing (1 = ideal): PCA %.2f -> scVI %.2f; cell-type purity: PCA %.2f -> scVI %.2f\n",
            pca_scores[["mixing"]], scvi_scores[["mixing"]], pca_scores[["purity"]],
            scvi_scores[["purity"]]))
cat(sprintf("markers CD14+ monocytes vs B cells: %d of %d genes called DE (FDR 5%%)\n",
            sum(called), nrow(markers)))
cat("  up in CD14+ monocytes:", paste(top_up, collapse = ", "), "\n")
cat("  up in B cells:        ", paste(top_down, collapse = ", "), "\n")
cat("wrote:\n", paste0("  ", written, "\n"), sep = "")
cat(sprintf("total %.0f s\n", as.numeric(difftime(Sys.time(), started, units = "secs"))))
