"""Shared neural network layers."""
from ._layers import Classifier, CovariateLinear, ExpressionDecoder, FCLayers, GaussianEncoder

__all__ = ["Classifier", "CovariateLinear", "ExpressionDecoder", "FCLayers", "GaussianEncoder"]
