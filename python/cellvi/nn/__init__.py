"""Shared neural network layers."""
from ._layers import (Classifier, CovariateLinear, ExpressionDecoder, FCLayers, GaussianEncoder, SigmoidDecoder,
                      TotalVIDecoder)
from ._sparse import SparseInputLinear, SparseRows, reads_sparse

__all__ = ["Classifier", "CovariateLinear", "ExpressionDecoder", "FCLayers", "GaussianEncoder", "SigmoidDecoder",
           "SparseInputLinear", "SparseRows", "TotalVIDecoder", "reads_sparse"]
