"""Count likelihoods, and the Bernoulli likelihood of binary (accessibility) data."""
from ._bernoulli import Bernoulli, bernoulli_log_likelihood_per_cell, scaled_bernoulli_log_likelihood_per_cell
from ._counts import NegativeBinomial, NegativeBinomialMixture, Poisson, ZeroInflatedNegativeBinomial

__all__ = ["Bernoulli", "NegativeBinomial", "NegativeBinomialMixture", "Poisson", "ZeroInflatedNegativeBinomial",
           "bernoulli_log_likelihood_per_cell", "scaled_bernoulli_log_likelihood_per_cell"]
