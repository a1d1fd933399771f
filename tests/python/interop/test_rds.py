"""cellvi.interop.read_rds: Seurat and SingleCellExperiment .rds files written by Rscript."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

SHARED_PBMC = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data", "seuratobject_pbmc_small.h5ad"
)

# Writes, into the folder given as its argument: pbmc_small.rds (SeuratObject::pbmc_small),
# sce.rds (an SCE from pbmc_small's counts with colData columns of each R type, a dense
# logcounts assay and two reducedDims), df.rds (a plain data.frame), and CSVs of what R sees.
R_WRITER = r"""
need <- c("SeuratObject", "SingleCellExperiment", "Matrix")
missing <- need[!vapply(need, requireNamespace, TRUE, quietly = TRUE)]
if (length(missing)) { cat("MISSING R PACKAGES:", missing, "\n"); quit(status = 3) }
suppressPackageStartupMessages({ library(SeuratObject); library(SingleCellExperiment) })
out <- commandArgs(trailingOnly = TRUE)[1]
pbmc <- SeuratObject::pbmc_small
saveRDS(pbmc, file.path(out, "pbmc_small.rds"))
counts <- GetAssayData(pbmc, slot = "counts", assay = "RNA")
write.csv(data.frame(cell = colnames(counts), total = Matrix::colSums(counts),
                     nnz = Matrix::colSums(counts != 0)),
          file.path(out, "cells.csv"), row.names = FALSE)
write.csv(data.frame(gene = rownames(counts), total = Matrix::rowSums(counts)),
          file.path(out, "genes.csv"), row.names = FALSE)
md <- pbmc@meta.data
cls <- vapply(md, function(v) class(v)[1L], "")
lev <- vapply(md, function(v) if (is.factor(v)) paste(levels(v), collapse = "|") else "", "")
write.csv(data.frame(column = names(md), class = cls, levels = lev),
          file.path(out, "meta_types.csv"), row.names = FALSE)
write.csv(Embeddings(pbmc, "pca"), file.path(out, "pca.csv"))

n <- ncol(counts)
cd <- S4Vectors::DataFrame(
  condition = factor(rep(c("stim", "ctrl", "mock"), length.out = n),
                     levels = c("stim", "ctrl", "mock", "unused")),
  grade = factor(rep(c("low", "high", NA), length.out = n), levels = c("low", "high"), ordered = TRUE),
  passed = rep(c(TRUE, FALSE), length.out = n),
  passed_na = c(NA, rep(c(TRUE, FALSE), length.out = n - 1L)),
  n_genes = as.integer(Matrix::colSums(counts > 0)),
  n_na = c(NA_integer_, seq_len(n - 1L)),
  score = seq(0, 1, length.out = n),
  label = c("first", NA, paste0("cell-", seq_len(n - 2L))),
  row.names = colnames(counts))
sce <- SingleCellExperiment(
  assays = list(counts = counts, logcounts = as.matrix(log1p(counts))),
  colData = cd,
  reducedDims = list(PCA = Embeddings(pbmc, "pca")[, 1:5],
                     UMAP = matrix(seq_len(2L * n) / 10, ncol = 2L,
                                   dimnames = list(colnames(counts), c("u1", "u2")))))
saveRDS(sce, file.path(out, "sce.rds"))
saveRDS(data.frame(a = 1:3, b = letters[1:3]), file.path(out, "df.rds"))

# CITE-seq: an ADT assay (Seurat) / altExp (SCE) of protein counts, sparse in Seurat, dense in
# the SCE; its values as R sees them (proteins x cells) in adt.csv.
set.seed(1)
adt <- matrix(as.double(rpois(3L * n, 20)), nrow = 3L,
              dimnames = list(c("CD3", "CD4", "CD19"), colnames(counts)))
write.csv(adt, file.path(out, "adt.csv"))
cite <- pbmc
cite[["ADT"]] <- CreateAssayObject(counts = adt)
saveRDS(cite, file.path(out, "cite.rds"))
sce_cite <- sce
altExp(sce_cite, "ADT") <- SummarizedExperiment::SummarizedExperiment(list(counts = adt))
saveRDS(sce_cite, file.path(out, "sce_cite.rds"))
# Edge cases: a reducedDim named "pca" beside one named "X_pca"; a factor with an NA level.
edge <- sce
reducedDims(edge) <- list(pca = Embeddings(pbmc, "pca")[, 1:2], X_pca = Embeddings(pbmc, "pca")[, 3:4])
edge$with_na_level <- addNA(factor(rep(c("a", NA), length.out = n)))
saveRDS(edge, file.path(out, "sce_edge.rds"))
"""


@pytest.fixture(scope="module")
def rds_dir(tmp_path_factory):
    pytest.importorskip("rpy2.robjects", reason='rpy2 is not installed (pip install "cellvi[r]")')
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.skip("Rscript not found on PATH: R is needed to write the .rds test files")
    out = tmp_path_factory.mktemp("rds")
    script = out / "write.R"
    script.write_text(R_WRITER)
    proc = subprocess.run([rscript, "--vanilla", str(script), str(out)], capture_output=True, text=True)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, f"Rscript failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.fixture(scope="module")
def pbmc(rds_dir):
    from cellvi.interop import read_rds

    return read_rds(rds_dir / "pbmc_small.rds", layers=True)


@pytest.fixture(scope="module")
def sce(rds_dir):
    from cellvi.interop import read_rds

    return read_rds(str(rds_dir / "sce.rds"))


def test_import_cellvi_interop_does_not_import_rpy2():
    code = "import sys, cellvi, cellvi.interop; print('rpy2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_rpy2_says_how_to_install(tmp_path, monkeypatch):
    from cellvi.interop import read_rds

    f = tmp_path / "x.rds"
    f.write_bytes(b"")
    for mod in ("rpy2", "rpy2.robjects", "rpy2.robjects.conversion"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r'pip install "cellvi\[r\]".*3\.5'):
        read_rds(f)


def test_missing_file(tmp_path):
    from cellvi.interop import read_rds

    with pytest.raises(FileNotFoundError, match="nope.rds"):
        read_rds(tmp_path / "nope.rds")


def test_seurat_counts_names_and_shape(pbmc, rds_dir):
    cells = pd.read_csv(rds_dir / "cells.csv")
    genes = pd.read_csv(rds_dir / "genes.csv")
    assert pbmc.shape == (80, 230)
    assert isinstance(pbmc.X, sp.csr_matrix) and pbmc.X.dtype == np.float32
    assert pbmc.obs_names.tolist() == cells["cell"].tolist()
    assert pbmc.var_names.tolist() == genes["gene"].tolist()
    np.testing.assert_array_equal(np.asarray(pbmc.X.sum(axis=1)).ravel(), cells["total"].to_numpy())
    np.testing.assert_array_equal(np.diff(pbmc.X.indptr), cells["nnz"].to_numpy())
    np.testing.assert_array_equal(np.asarray(pbmc.X.sum(axis=0)).ravel(), genes["total"].to_numpy())
    if os.path.exists(SHARED_PBMC):
        import anndata

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = anndata.read_h5ad(SHARED_PBMC)
        assert ref.obs_names.tolist() == pbmc.obs_names.tolist()
        assert ref.var_names.tolist() == pbmc.var_names.tolist()
        assert (sp.csr_matrix(ref.X) != pbmc.X).nnz == 0


def test_seurat_meta_data_types_and_levels(pbmc, rds_dir):
    types = pd.read_csv(rds_dir / "meta_types.csv", keep_default_na=False)
    assert pbmc.obs.columns.tolist() == types["column"].tolist()
    expected = {"factor": "category", "numeric": "float64", "integer": "int32", "character": "object"}
    for column, cls, levels in types.itertuples(index=False):
        assert str(pbmc.obs[column].dtype) == expected[cls], column
        if cls == "factor":
            assert pbmc.obs[column].cat.categories.tolist() == levels.split("|"), column
    assert set(pbmc.obs["groups"]) == {"g1", "g2"}
    assert pbmc.var["vst.variable"].dtype == bool and pbmc.var["vst.variable"].sum() == 20


def test_seurat_reductions_and_data_layer(pbmc, rds_dir):
    assert pbmc.obsm["X_pca"].shape == (80, 19) and pbmc.obsm["X_tsne"].shape == (80, 2)
    assert pbmc.obsm["X_pca"].dtype == np.float64 and pbmc.obsm["X_pca"].flags.c_contiguous
    pca = pd.read_csv(rds_dir / "pca.csv", index_col=0)
    assert pca.index.tolist() == pbmc.obs_names.tolist()
    np.testing.assert_allclose(pbmc.obsm["X_pca"], pca.to_numpy(), rtol=1e-12)
    data = pbmc.layers["data"]
    assert isinstance(data, sp.csr_matrix) and data.dtype == np.float32
    # pbmc_small's data are LogNormalize(counts, scale.factor = 1e4)
    X = pbmc.X.toarray()
    expected = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(data.toarray(), expected, rtol=1e-5, atol=1e-5)


def test_sce_coldata_types(sce):
    obs = sce.obs
    assert sce.shape == (80, 230)
    cond = obs["condition"]
    assert cond.dtype == "category" and not cond.cat.ordered
    assert cond.cat.categories.tolist() == ["stim", "ctrl", "mock", "unused"]
    assert cond.iloc[:4].tolist() == ["stim", "ctrl", "mock", "stim"]
    grade = obs["grade"]
    assert grade.cat.ordered and grade.cat.categories.tolist() == ["low", "high"]
    assert grade.iloc[:3].isna().tolist() == [False, False, True] and grade.iloc[0] == "low"
    assert obs["passed"].dtype == bool and obs["passed"].iloc[:3].tolist() == [True, False, True]
    assert str(obs["passed_na"].dtype) == "boolean" and obs["passed_na"].isna().sum() == 1
    assert obs["n_genes"].dtype == np.int32
    np.testing.assert_array_equal(obs["n_genes"].to_numpy(), np.diff(sce.X.indptr))
    assert str(obs["n_na"].dtype) == "Int32" and pd.isna(obs["n_na"].iloc[0]) and obs["n_na"].iloc[1] == 1
    assert obs["score"].dtype == np.float64 and obs["score"].iloc[-1] == 1.0
    assert obs["label"].dtype == object and obs["label"].iloc[0] == "first" and obs["label"].iloc[1] is None


def test_sce_counts_reduced_dims_and_layers(sce, pbmc, rds_dir):
    from cellvi.interop import read_rds

    assert sce.obs_names.tolist() == pbmc.obs_names.tolist()
    assert sce.var_names.tolist() == pbmc.var_names.tolist()
    assert (sce.X != pbmc.X).nnz == 0
    assert set(sce.obsm) == {"X_PCA", "X_UMAP"}
    np.testing.assert_array_equal(sce.obsm["X_PCA"], pbmc.obsm["X_pca"][:, :5])
    np.testing.assert_allclose(sce.obsm["X_UMAP"][:2], [[0.1, 8.1], [0.2, 8.2]])
    assert not sce.layers
    full = read_rds(rds_dir / "sce.rds", layers=True)
    logcounts = full.layers["logcounts"]  # a dense matrix in R stays dense
    assert isinstance(logcounts, np.ndarray) and logcounts.dtype == np.float32
    np.testing.assert_allclose(logcounts, np.log1p(pbmc.X.toarray()), rtol=1e-6)
    as_x = read_rds(rds_dir / "sce.rds", assay="logcounts")  # X is always CSR
    assert isinstance(as_x.X, sp.csr_matrix)
    np.testing.assert_allclose(as_x.X.toarray(), logcounts, rtol=1e-6)


def test_result_writes_to_h5ad(sce, tmp_path):
    import anndata

    sce.write_h5ad(tmp_path / "sce.h5ad")
    back = anndata.read_h5ad(tmp_path / "sce.h5ad")
    assert back.obs["condition"].cat.categories.tolist() == ["stim", "ctrl", "mock", "unused"]
    assert str(back.obs["n_na"].dtype) == "Int32"


def test_errors_name_what_was_found(rds_dir):
    from cellvi.interop import read_rds

    with pytest.raises(TypeError, match="class data.frame"):
        read_rds(rds_dir / "df.rds")
    with pytest.raises(KeyError, match="assay 'ADT' not found.*available: RNA"):
        read_rds(rds_dir / "pbmc_small.rds", assay="ADT")
    with pytest.raises(KeyError, match="'raw' not found; available: counts, logcounts"):
        read_rds(rds_dir / "sce.rds", assay="raw")
    with pytest.raises(KeyError, match="protein assay 'CITE' not found; available assays: RNA, ADT"):
        read_rds(rds_dir / "cite.rds", protein_assay="CITE")
    with pytest.raises(KeyError, match="protein altExp 'ADT' not found; available altExps: \\(none\\)"):
        read_rds(rds_dir / "sce.rds", protein_assay="ADT")
    with pytest.raises(KeyError, match="layer.*'scale.data' not found; available: data"):
        read_rds(rds_dir / "pbmc_small.rds", layers=["scale.data"])
    with pytest.raises(ValueError, match="could not read .* as an .rds file"):
        read_rds(rds_dir / "cells.csv")


def test_proteins_of_an_adt_assay_and_altexp(rds_dir, pbmc):
    from cellvi.interop import read_rds

    adt = pd.read_csv(rds_dir / "adt.csv", index_col=0)  # proteins x cells
    for name in ("cite.rds", "sce_cite.rds"):
        adata = read_rds(rds_dir / name)
        proteins = adata.obsm["protein_expression"]
        assert isinstance(proteins, pd.DataFrame), name
        assert proteins.columns.tolist() == ["CD3", "CD4", "CD19"], name
        assert proteins.index.tolist() == adata.obs_names.tolist() == adt.columns.tolist(), name
        assert proteins.dtypes.unique().tolist() == [np.float64], name
        np.testing.assert_array_equal(proteins.to_numpy(), adt.to_numpy().T)
        assert (adata.X != pbmc.X).nnz == 0, name  # the counts are the RNA's
        assert "X_ADT" not in adata.obsm, name
    assert "protein_expression" not in read_rds(rds_dir / "cite.rds", protein_assay=False).obsm
    assert "protein_expression" not in read_rds(rds_dir / "pbmc_small.rds").obsm


def test_reader_is_the_r_packages_code():
    """From a checkout, read_rds sources the R package's own R/convert.R (no copy of it)."""
    from cellvi.interop import _rds

    files = _rds._r_source_files()
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    assert files == [os.path.join(root, "R", "convert.R"), os.path.join(root, "R", "rds.R")]
    assert not hasattr(_rds, "_R_CODE")


def test_reduced_dims_keep_apart_and_an_na_level_is_missing(rds_dir, pbmc):
    """Every reduction becomes X_<its name>, as as_anndata() writes it (a "pca" beside an
    "X_pca" used to collapse into one); a factor's NA level (addNA) travels as missing, not as
    a category named ""."""
    from cellvi.interop import read_rds

    edge = read_rds(rds_dir / "sce_edge.rds")
    assert set(edge.obsm) == {"X_pca", "X_X_pca"}
    np.testing.assert_array_equal(edge.obsm["X_pca"], pbmc.obsm["X_pca"][:, :2])
    np.testing.assert_array_equal(edge.obsm["X_X_pca"], pbmc.obsm["X_pca"][:, 2:4])
    column = edge.obs["with_na_level"]
    assert list(column.cat.categories) == ["a"]
    assert column.isna().sum() == edge.n_obs // 2

