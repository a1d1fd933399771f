"""Model criticism: ``cellvi.criticism.posterior_predictive_check(model)``.

See :mod:`cellvi.analysis._criticism` for what the numbers mean.
"""
from .analysis._criticism import PosteriorPredictiveCheck, posterior_predictive_check

__all__ = ["PosteriorPredictiveCheck", "posterior_predictive_check"]
