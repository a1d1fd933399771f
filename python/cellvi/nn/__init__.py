"""Shared neural network layers."""
from ._layers import CovariateLinear, ExpressionDecoder, FCLayers, GaussianEncoder

__all__ = ["CovariateLinear", "ExpressionDecoder", "FCLayers", "GaussianEncoder"]
