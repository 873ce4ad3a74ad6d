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

import os
import random
from pathlib import Path
from typing import TypeVar

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
