"""Run profiles, seeding and the on-disk cache.

One knob, the environment variable ``DLBOOK_PROFILE``, decides how big every experiment in the
book is:

* ``smoke``: every line runs, in seconds. Used by the test suite. Results are meaningless and
  claims are not asserted.
* ``book`` (default): the sizes the website is built with. Real results on a 2-core CPU in minutes.
* ``full``: sizes meant for a GPU.

Chapters never branch on the profile themselves; they ask :func:`pick` for a value.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import random
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import torch

PROFILES = ("smoke", "book", "full")
DEFAULT_PROFILE = "book"
PROFILE_ENV = "DLBOOK_PROFILE"
CACHE_ENV = "DLBOOK_CACHE"

T = TypeVar("T")


def profile() -> str:
    """Return the active profile name, read from ``DLBOOK_PROFILE`` (default ``"book"``).

    Raises:
        ValueError: if the variable holds anything but ``smoke``, ``book`` or ``full``.
    """
    name = os.environ.get(PROFILE_ENV, DEFAULT_PROFILE).strip().lower() or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV}={name!r} is not a profile; choose one of {', '.join(PROFILES)}"
        )
    return name


def pick(*, smoke: T, book: T, full: T | None = None) -> T:
    """Return the value meant for the active profile.

    ``full`` falls back to ``book`` when not given, so a chapter that needs no GPU-sized variant
    names two values only.

    Example:
        >>> epochs = pick(smoke=1, book=30, full=100)
    """
    name = profile()
    if name == "smoke":
        return smoke
    if name == "full" and full is not None:
        return full
    return book


def checks_enabled() -> bool:
    """Whether the claims of a chapter are asserted (``book`` and ``full``, not ``smoke``).

    In ``smoke`` the models are too small to reach the numbers the prose claims, so chapters
    guard their claim assertions with this helper; identities that hold at any size (parity with
    PyTorch, shapes, round trips) are asserted in every profile.
    """
    return profile() != "smoke"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) and return a fresh seeded CPU generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cache_dir() -> Path:
    """Directory for artefacts shared between chapters (trained models, tokenizers).

    ``DLBOOK_CACHE`` overrides the default ``~/.cache/dlbook``. The directory is created on use.
    """
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "dlbook"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- config validation


class Interval:
    """The allowed range of a numeric config field, written as in mathematics: ``"[0, 1)"``,
    ``"(0, inf)"``. Attach it with ``typing.Annotated``, e.g. ``Annotated[float, Interval("[0,
    1)")]``; :func:`validate_config` reads it."""

    def __init__(self, spec: str) -> None:
        text = spec.replace(" ", "")
        if len(text) < 5 or text[0] not in "[(" or text[-1] not in "])" or "," not in text:
            raise ValueError(f"an interval looks like '[0, 1)' or '(0, inf)', not {spec!r}")
        low, high = text[1:-1].split(",")
        self.low, self.high = float(low), float(high)
        self.low_open, self.high_open = text[0] == "(", text[-1] == ")"
        self.spec = f"{text[0]}{low}, {high}{text[-1]}"

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __repr__(self) -> str:
        return f"Interval({self.spec!r})"

    def describe(self) -> str:
        """``">= 1"`` for ``[1, inf)``, ``"in [0, 1)"`` for a bounded interval."""
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {self.spec[1:].split(',')[0]}"
        return f"in {self.spec}"


POSITIVE_INT_RANGE = Interval("[1, inf)")  # the default of an `int` field
NON_NEGATIVE_RANGE = Interval("[0, inf)")  # the default of a `float` field
#: Common field types with a range other than the default (``int`` ≥ 1, ``float`` ≥ 0).
NonNegativeInt = Annotated[int, Interval("[0, inf)")]
PositiveFloat = Annotated[float, Interval("(0, inf)")]
Dropout = Annotated[float, Interval("[0, 1)")]
UnitFloat = Annotated[float, Interval("[0, 1]")]


def validate_config(config: Any) -> None:
    """Check every field of the dataclass ``config`` against its annotation; raise
    ``ValueError`` naming the first bad field, what it holds and what it should hold.

    The rules, by annotation (so a new field is checked as soon as it is declared):

    * ``bool``: exactly ``True`` or ``False`` (the string ``"false"`` is not a bool);
    * ``int``: an integer (not a bool) ``>= 1``; ``float``: a finite number ``>= 0``
      (an integer is accepted); ``str``: a string;
    * ``Annotated[int | float, Interval("[a, b)")]``: that range instead of the default one
      (see :data:`NonNegativeInt`, :data:`PositiveFloat`, :data:`Dropout`, :data:`UnitFloat`);
    * ``Literal["a", "b"]``: one of the choices; ``X | None``: ``None`` or an ``X``;
    * ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``: a list or tuple (JSON turns tuples into
      lists) whose items are checked as ``X`` (and ``Y``), with the length of a fixed tuple.

    Other annotations (nested objects) are not checked. Checks that relate several fields
    (``n_embd`` divisible by ``n_head``) stay in the config's ``__post_init__``.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"validate_config expects a dataclass instance, got {config!r}")
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        if f.name in hints:
            problem = _check_value(getattr(config, f.name), hints[f.name], None)
            if problem is not None:
                raise ValueError(
                    f"{type(config).__name__}.{f.name} must be {problem}, "
                    f"got {getattr(config, f.name)!r}"
                )


def check_int(name: str, value: Any, low: int = 1) -> int:
    """Return ``value`` if it is an integer (not a bool, not a float) ``>= low``; else raise
    ``ValueError`` saying so. The one check of integer arguments (sizes, counts, steps) that
    are not config fields."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        names = {1: "a positive integer", 0: "a non-negative integer"}
        what = names.get(low, f"an integer >= {low}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


_HINTS: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        try:
            _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
        except NameError as e:  # an annotation names something imported only for type checking
            raise TypeError(f"cannot resolve the field annotations of {cls.__name__}: {e}") from e
    return _HINTS[cls]


def _check_value(value: Any, hint: Any, interval: Interval | None) -> str | None:
    """``None`` if ``value`` fits ``hint``, else a description of what it should be."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        found = [a for a in hint.__metadata__ if isinstance(a, Interval)]
        return _check_value(value, args[0], found[0] if found else interval)
    if hint is Any:
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "True or False"
    if hint is int:
        rng = interval or POSITIVE_INT_RANGE
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value in rng
        return None if ok else f"an integer {rng.describe()}"
    if hint is float:
        rng = interval or NON_NEGATIVE_RANGE
        ok = (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value in rng
        )
        return None if ok else f"a finite number {rng.describe()}"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return None if ok else f"one of {', '.join(repr(a) for a in args)}"
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [_check_value(value, a, interval) for a in options]
        if any(p is None for p in problems):
            return None
        return " or ".join(problems) + (" or None" if type(None) in args else "")  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"a sequence of {len(args)} items"
            item_hints = list(args)
        else:
            item_hints = [args[0] if args else Any] * len(value)
        for i, (item, item_hint) in enumerate(zip(value, item_hints, strict=True)):
            problem = _check_value(item, item_hint, interval)
            if problem is not None:
                return f"a sequence whose items are each {problem} (item {i} is {item!r})"
        return None
    return None
