"""Shared neural network layers."""
from ._layers import (Classifier, CovariateLinear, ExpressionDecoder, FCLayers, GaussianEncoder, SigmoidDecoder,
                      TotalVIDecoder)

__all__ = ["Classifier", "CovariateLinear", "ExpressionDecoder", "FCLayers", "GaussianEncoder", "SigmoidDecoder",
           "TotalVIDecoder"]
