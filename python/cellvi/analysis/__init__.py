"""Query methods shared by models."""
from ._expression import ExpressionMixin, PosteriorMixin

__all__ = ["ExpressionMixin", "PosteriorMixin"]
