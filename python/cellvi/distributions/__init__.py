"""Count likelihoods."""
from ._counts import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial

__all__ = ["NegativeBinomial", "Poisson", "ZeroInflatedNegativeBinomial"]
