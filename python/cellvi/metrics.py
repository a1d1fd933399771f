"""Scores of an integrated embedding: ``cellvi.metrics.integration_scores(latent, batch, labels)``.

See :mod:`cellvi.analysis._integration` for the definitions (scib's biological-conservation
and batch-correction metrics, computed with NumPy and SciPy alone).
"""
from .analysis._integration import (adjusted_rand_index, batch_silhouette, graph_connectivity, ilisi,
                                    integration_scores, normalized_mutual_info, silhouette_samples)

__all__ = ["adjusted_rand_index", "batch_silhouette", "graph_connectivity", "ilisi", "integration_scores",
           "normalized_mutual_info", "silhouette_samples"]
