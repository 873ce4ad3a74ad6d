"""Offline data sets and data helpers."""

from dlbook.data.digits import Splits, load_digits
from dlbook.data.optional import MissingDependencyError, require

__all__ = ["MissingDependencyError", "Splits", "load_digits", "require"]
