"""Query methods shared by models."""
from ._expression import ExpressionMixin

__all__ = ["ExpressionMixin"]
