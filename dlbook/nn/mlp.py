"""The multilayer perceptron: the first model of the book (section 1.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from dlbook.config import Dropout, validate_config

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


@dataclass
class MLPConfig:
    """Architecture of an :class:`MLP`.

    Attributes:
        in_features: size of each input vector.
        hidden: widths of the hidden layers, e.g. ``[128, 64]``; empty for a linear model.
        out_features: number of outputs (classes for a classifier).
        activation: one of ``relu``, ``gelu``, ``tanh``, ``sigmoid``.
        dropout: dropout probability after each hidden activation (0 disables it).
    """

    in_features: int
    hidden: list[int] = field(default_factory=lambda: [128])
    out_features: int = 10
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: Dropout = 0.0

    def __post_init__(self) -> None:
        validate_config(self)  # every field by its annotation: sizes >= 1, dropout in [0, 1)


class MLP(nn.Module):
    """Fully connected network: ``Linear → activation → (dropout)`` repeated, then ``Linear``.

    Input ``(..., in_features)``; output ``(..., out_features)`` (logits for a classifier).
    """

    config_class = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        sizes = [config.in_features, *config.hidden, config.out_features]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[config.activation]())
                if config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., in_features)`` to ``(..., out_features)``."""
        if x.shape[-1] != self.config.in_features:
            raise ValueError(
                f"MLP expects inputs of shape (..., {self.config.in_features}), "
                f"got {tuple(x.shape)}"
            )
        return self.net(x)
