"""Small real data sets shipped with cellvi, for examples and smoke tests, and pseudo-spots
built from single cells with known proportions (to check a deconvolution)."""
from __future__ import annotations

import os


def pbmc_small():
    """80 PBMCs x 230 genes (raw counts), Seurat's ``pbmc_small``.

    The same cells ship with R's SeuratObject (MIT licence) as ``SeuratObject::pbmc_small``;
    obs holds Seurat's clusters (``RNA_snn_res.1``), ``groups`` and ``letter.idents``.

    Examples
    --------
    >>> import cellvi.datasets
    >>> adata = cellvi.datasets.pbmc_small()
    >>> adata.shape
    (80, 230)
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "pbmc_small.h5ad"))


def pbmc_cite_small():
    """400 PBMCs x 500 genes with 14 surface proteins (CITE-seq; raw counts), for totalVI.

    ``X`` holds the RNA counts and ``obsm["protein_expression"]`` the antibody-derived tag
    counts (a DataFrame, cells x proteins, e.g. ``CD3_TotalSeqB``, ``CD19_TotalSeqB``), as
    ``cellvi.TOTALVI.setup_anndata`` reads them.

    Provenance: 10x Genomics' ``pbmc_10k_protein_v3`` (peripheral blood mononuclear cells of a
    healthy donor, TotalSeq-B antibodies; licence CC BY 4.0), as filtered for the totalVI
    paper (Gayoso et al. 2021; YosefLab/totalVI_reproducibility, 6,855 cells x 4,000 genes).
    Kept here: 400 cells drawn at random (seed 0) and the 500 genes with the highest variance
    of log1p(counts per 10,000) over those cells; counts unchanged. Built by
    ``scripts/make_pbmc_cite_small.py``.

    Examples
    --------
    >>> import cellvi.datasets
    >>> adata = cellvi.datasets.pbmc_cite_small()
    >>> adata.shape, adata.obsm["protein_expression"].shape
    ((400, 500), (400, 14))
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "pbmc_cite_small.h5ad"))


def bmmc_atac_small():
    """600 bone-marrow cells x 2,000 peaks (scATAC-seq fragment counts per peak), for PeakVI.

    Six cell types, 100 cells each (obs ``cell_type``: CD14.Mono.1, B, CD4.N1, CD8.CM, NK,
    GMP), from two donors (obs ``donor``); peaks are named ``chr:start-end``. The counts are
    not binarised (PeakVI binarises them itself); about 7% of the entries are non-zero.

    Provenance: Granja et al. 2019 (bone marrow mononuclear cells, scATAC-seq), 10,000 random
    peaks as shipped by the epiCHAOS R package (MIT). Kept here: 100 cells drawn at random
    (seed 0) from each of the six types and the 2,000 peaks accessible in the most of those
    cells; counts unchanged. Built by ``scripts/make_bmmc_atac_small.py``.

    Examples
    --------
    >>> import cellvi.datasets
    >>> adata = cellvi.datasets.bmmc_atac_small()
    >>> adata.shape
    (600, 2000)
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "bmmc_atac_small.h5ad"))


def merfish_reference_small():
    """1,304 single cells x 134 genes (raw counts) of the mouse hypothalamic preoptic region,
    with 14 cell types (obs ``cell_type``): the reference of :func:`merfish_spatial_small`,
    for gimVI (imputation of unmeasured genes) and spatial deconvolution.

    Provenance: the MERFISH example of the spacexr R package (Cable et al. 2022, Nature
    Biotechnology 40:517-526; licence GPL-3). All genes, and all cells but the 4 with no
    counts of them; counts unchanged. Built by ``scripts/make_merfish_small.py``.

    Examples
    --------
    >>> import cellvi.datasets
    >>> adata = cellvi.datasets.merfish_reference_small()
    >>> adata.shape
    (1304, 134)
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "merfish_reference_small.h5ad"))


def merfish_spatial_small():
    """750 MERFISH cells x 134 genes (raw counts) with their coordinates (obs ``x``, ``y`` and
    obsm ``spatial``): single-cell resolution spatial data measuring the same genes as
    :func:`merfish_reference_small`. Hold some genes out to see how well gimVI imputes them.

    Provenance: the MERFISH example of the spacexr R package (Cable et al. 2022; licence
    GPL-3). All cells and genes, counts unchanged. Built by ``scripts/make_merfish_small.py``.

    Examples
    --------
    >>> import cellvi, cellvi.datasets
    >>> seq = cellvi.datasets.merfish_reference_small()
    >>> spatial = cellvi.datasets.merfish_spatial_small()
    >>> held_out = ["Gad1", "Slc17a7"]
    >>> spatial = spatial[:, ~spatial.var_names.isin(held_out)].copy()
    >>> cellvi.GIMVI.setup_anndata(seq)
    >>> cellvi.GIMVI.setup_anndata(spatial)
    >>> model = cellvi.GIMVI(seq, spatial)
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "merfish_spatial_small.h5ad"))


def lymphnode_reference_small():
    """330 lymph-node single cells x 300 genes (raw counts), 11 cell types (30 cells each,
    obs ``cell_type``): the reference for :func:`lymphnode_visium_small` (DestVI,
    Stereoscope).

    Provenance: the spacexr R package's lymph node reference (licence GPL-3). Kept: every
    cell and the 300 genes of the Visium spots that best tell the 11 types apart (variance
    across types of their mean log-normalised expression, among genes detected in at least
    10% of the cells); counts unchanged. Built by ``scripts/make_lymphnode_spatial_small.py``.

    Examples
    --------
    >>> import cellvi.datasets
    >>> ref = cellvi.datasets.lymphnode_reference_small()
    >>> ref.obs["cell_type"].value_counts().head(3)
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "lymphnode_reference_small.h5ad"))


def lymphnode_visium_small():
    """Visium spots of a lymph node x the 300 genes of :func:`lymphnode_reference_small`
    (raw counts), coordinates in ``obsm["spatial"]`` and obs ``x``, ``y``.

    Provenance: the spacexr R package's lymph node Visium example (licence GPL-3; 1,000
    spots), the same 300 genes; spots without counts in them dropped; counts unchanged.
    Built by ``scripts/make_lymphnode_spatial_small.py``.

    Examples
    --------
    >>> import cellvi, cellvi.datasets
    >>> ref, spots = cellvi.datasets.lymphnode_reference_small(), cellvi.datasets.lymphnode_visium_small()
    >>> cellvi.RNAStereoscope.setup_anndata(ref, labels_key="cell_type")
    >>> sc = cellvi.RNAStereoscope(ref)
    >>> sc.train()
    >>> st = cellvi.SpatialStereoscope.from_rna_model(spots, sc)
    >>> st.train()
    >>> st.get_proportions().head()
    """
    import anndata

    return anndata.read_h5ad(os.path.join(os.path.dirname(__file__), "lymphnode_visium_small.h5ad"))


# -- pseudo-spots: spatial spots simulated from single cells, with known proportions -------------

def split_by_label(adata, labels_key: str, rng=None, fraction: float = 0.5):
    """Two AnnData copies: a random ``fraction`` of each label's cells (rounded down), and the
    rest, each in the original cell order; e.g. a reference to train on and the cells that
    :func:`pseudo_spots` mixes, so that no spot holds a reference cell.

    ``rng``: a NumPy Generator or a seed.

    Examples
    --------
    >>> import cellvi.datasets as ds
    >>> adata = ds.merfish_reference_small()
    >>> reference, pool = ds.split_by_label(adata, "cell_type", rng=0)
    """
    import numpy as np

    if labels_key not in adata.obs:
        raise KeyError(f"{labels_key!r} is not a column of adata.obs")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(rng)
    first, second = [], []
    for _, idx in adata.obs.groupby(labels_key, observed=True).indices.items():
        idx = rng.permutation(idx)
        n_first = int(len(idx) * fraction)
        first += list(idx[:n_first])
        second += list(idx[n_first:])
    return adata[np.sort(first)].copy(), adata[np.sort(second)].copy()


def pseudo_spots(adata, labels_key: str, n_spots: int, rng=None, cells_per_spot: tuple[int, int] = (2, 10),
                 categories=None):
    """Spots whose counts are the sums of ``cells_per_spot`` (low, high: drawn uniformly) random
    cells of ``adata`` (counts in ``X``), and the truth: each spot's fraction of cells per label.

    Returns ``(spots, truth)``: an AnnData of ``n_spots`` x the same genes (CSR float32 counts,
    spots named ``spot0``, ``spot1``, ...) and a DataFrame of spots x labels (rows sum to 1;
    columns ``categories``, default the labels present, sorted). ``rng``: a NumPy Generator or
    a seed.

    Examples
    --------
    >>> import cellvi.datasets as ds
    >>> reference, pool = ds.split_by_label(ds.merfish_reference_small(), "cell_type", rng=0)
    >>> spots, truth = ds.pseudo_spots(pool, "cell_type", n_spots=200, rng=0)
    >>> truth.sum(axis=1).round(6).eq(1).all()
    True
    """
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    low, high = (int(v) for v in cells_per_spot)
    if not 1 <= low <= high <= adata.n_obs:
        raise ValueError(f"cells_per_spot must be (low, high) with 1 <= low <= high <= {adata.n_obs} cells, "
                         f"got {cells_per_spot}")
    if labels_key not in adata.obs:
        raise KeyError(f"{labels_key!r} is not a column of adata.obs")
    rng = np.random.default_rng(rng)
    labels = adata.obs[labels_key].astype(str)
    types = pd.Categorical(labels) if categories is None else pd.Categorical(labels, categories=list(categories))
    if (types.codes < 0).any():
        raise ValueError(f"labels {sorted(set(labels[types.codes < 0]))} are not among the categories")
    sizes = rng.integers(low, high + 1, size=int(n_spots))
    rows, cols = [], []
    truth = np.zeros((len(sizes), len(types.categories)))
    for spot, k in enumerate(sizes):
        cells = rng.choice(adata.n_obs, size=k, replace=False)
        rows += [spot] * k
        cols += list(cells)
        np.add.at(truth[spot], types.codes[cells], 1.0 / k)
    pick = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sizes), adata.n_obs))
    spots = anndata.AnnData((pick @ sp.csr_matrix(adata.X)).astype(np.float32).tocsr(),
                            obs=pd.DataFrame(index=[f"spot{i}" for i in range(len(sizes))]),
                            var=pd.DataFrame(index=adata.var_names.copy()))
    return spots, pd.DataFrame(truth, index=spots.obs_names, columns=list(types.categories))
