"""Clear errors for optional dependencies."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional package needed by one feature is not installed."""


def require(module: str, pip_name: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the ``pip install``.

    Example:
        >>> sklearn = require("sklearn", "scikit-learn", "the digits data set")
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        need = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"the package {pip_name or module!r} is needed{need} but is not installed; "
            f"run: pip install {pip_name or module}"
        ) from e
