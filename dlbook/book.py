"""Helpers for chapter scripts that work the same as a notebook, on the site and as plain Python."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()  # type: ignore[attr-defined]
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class _Formatted:
    """A value that displays as its formatted text (no quotes), for myst-nb's glue."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def glue(name: str, value: Any, fmt: str | None = None) -> None:
    """Publish ``value`` under ``name`` so the prose can quote it with ``{glue}`name```.

    In a notebook (the site build) this is myst-nb's ``glue``; run as a script it prints the
    value instead. ``fmt`` (e.g. ``".3f"``, ``".1%"``, ``","``) formats numbers so the prose
    shows what was measured at a sensible precision; strings are shown without quotes.
    """
    text = format(value, fmt) if fmt is not None else (value if isinstance(value, str) else None)
    shown = _Formatted(text) if text is not None else value
    if _in_notebook():
        from myst_nb import glue as nb_glue

        nb_glue(name, shown, display=False)
    else:
        print(f"[glue] {name} = {shown!r}")


def error_message(fn: Callable[[], object], error: type[Exception] = ValueError) -> str:
    """Call ``fn``, which must raise ``error``, and return the message, so a chapter can show
    (and assert) what bad input gets. Raises ``AssertionError`` if ``fn`` returns normally."""
    try:
        fn()
    except error as e:
        return str(e)
    raise AssertionError(f"expected {error.__name__} from {fn!r}")
