"""Shared fixtures: a tiny classification problem and a temporary cache directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch.utils.data import TensorDataset

# Property tests draw the same examples on every run, so a red CI is reproducible; set
# HYPOTHESIS_PROFILE=explore to search with fresh random examples instead.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def shared_hub(tmp_path_factory):
    """One folder of de-quantised pretrained weights (``<cache>/hub``) for every chapter run.

    Chapter runs otherwise start from an empty cache each (they must stand alone, and their
    trained artifacts stay private); unpacking SmolLM2's GGUF file again for every chapter only
    repeats what tests/test_smollm2.py checks, at several seconds a time.
    """
    return tmp_path_factory.mktemp("hub")


def cache_with_shared_hub(cache: Path, hub: Path) -> Path:
    """``cache``, created, with its ``hub`` folder a link to ``hub``."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "hub").symlink_to(hub, target_is_directory=True)
    return cache


@pytest.fixture
def blobs() -> tuple[TensorDataset, TensorDataset]:
    """Three Gaussian blobs in 4-D: a problem an MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(123)
    centers = torch.randn(3, 4, generator=g) * 6
    y = torch.randint(0, 3, (240,), generator=g)
    x = centers[y] + torch.randn(240, 4, generator=g)
    return TensorDataset(x[:180], y[:180]), TensorDataset(x[180:], y[180:])


# Under pytest-xdist (`make test`: two workers on two cores) each worker and everything it starts
# (chapter scripts, the site build's kernels) uses one thread: two processes with a thread per
# core each oversubscribe the CPU, and OpenMP's spinning threads then slow everything down
# many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The two slowest files first: under `make test` (pytest-xdist, `--dist loadfile`, 2 workers) the
# site build and the chapter runs then start together instead of one waiting for the other.
_FIRST = {"test_site.py": 0, "test_chapters.py": 1}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: _FIRST.get(item.path.name, 2))  # stable: keeps the rest in order
