"""Layers and models that the chapters build from scratch and then reuse."""

from __future__ import annotations

from torch import nn

from dlbook.nn.mlp import MLP, MLPConfig

#: Models that :func:`dlbook.checkpoint.load_model` may rebuild from a ``config.json``.
MODELS: dict[str, type[nn.Module]] = {"MLP": MLP}

__all__ = ["MLP", "MLPConfig", "MODELS"]
