"""Test helpers importable from every test module (tests/python is on pytest's path)."""
from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp


def simulate_counts(n_cells=600, n_genes=100, n_types=3, n_batches=2, seed=0, batch_strength=1.0):
    """NB counts from a few cell types; each batch multiplies genes by its own factors.

    obs: ``cell_type`` (strings), ``batch`` (strings), ``batch_int`` (integers), ``age``
    (continuous), ``donor`` (a second categorical).
    """
    rng = np.random.default_rng(seed)
    types = rng.integers(n_types, size=n_cells)
    batches = rng.integers(n_batches, size=n_cells)
    type_profiles = rng.gamma(0.6, 1.0, size=(n_types, n_genes))
    batch_factors = np.exp(batch_strength * rng.normal(size=(n_batches, n_genes)))
    library = rng.lognormal(np.log(300), 0.3, size=n_cells)
    mean = type_profiles[types] * batch_factors[batches]
    mean = mean / mean.sum(1, keepdims=True) * library[:, None]
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)
    empty = counts.sum(1) == 0
    counts[empty, 0] = 1  # no empty cells
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "batch": [f"b{b}" for b in batches],
            "batch_int": batches,
            "age": rng.normal(size=n_cells).astype(np.float32),
            "donor": pd.Categorical(rng.choice(["d1", "d2", "d3"], size=n_cells)),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return anndata.AnnData(sp.csr_matrix(counts), obs=obs, var=var)
