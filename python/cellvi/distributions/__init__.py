"""Count likelihoods."""
from ._counts import NegativeBinomial, NegativeBinomialMixture, Poisson, ZeroInflatedNegativeBinomial

__all__ = ["NegativeBinomial", "NegativeBinomialMixture", "Poisson", "ZeroInflatedNegativeBinomial"]
