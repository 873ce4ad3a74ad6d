"""Shared fixtures: a tiny classification problem and a temporary cache directory."""

from __future__ import annotations

import os

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


@pytest.fixture
def blobs() -> tuple[TensorDataset, TensorDataset]:
    """Three Gaussian blobs in 4-D: a problem an MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(123)
    centers = torch.randn(3, 4, generator=g) * 6
    y = torch.randint(0, 3, (240,), generator=g)
    x = centers[y] + torch.randn(240, 4, generator=g)
    return TensorDataset(x[:180], y[:180]), TensorDataset(x[180:], y[180:])
