"""Shared fixtures: a tiny classification problem and a temporary cache directory."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset


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
