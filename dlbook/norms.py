"""Batch and layer normalization written from their equations (section 2.6), with their
hand-derived backward passes.

Teaching versions of ``nn.BatchNorm1d`` and ``nn.LayerNorm`` that follow PyTorch's conventions
exactly (biased variance to normalize, unbiased variance in the running estimate, momentum
weighing the new value); the tests check outputs, running statistics and gradients against
PyTorch. Shapes: ``B`` examples, ``d`` features.
"""

from __future__ import annotations

import torch

__all__ = ["HandBatchNorm", "bn_backward", "hand_layer_norm", "ln_backward"]


class HandBatchNorm:
    """Batch normalization of ``(B, d)`` inputs, written from the equations of section 2.6.

    ``gamma``/``beta`` ``(d,)`` are leaf tensors that collect gradients; ``running_mean`` and
    ``running_var`` ``(d,)`` are updated in training mode (``training = True``) and used in eval
    mode.
    """

    def __init__(self, d: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        self.gamma = torch.ones(d, requires_grad=True)
        self.beta = torch.zeros(d, requires_grad=True)
        self.running_mean, self.running_var = torch.zeros(d), torch.ones(d)
        self.momentum, self.eps, self.training = momentum, eps, True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x (B, d)`` → ``(B, d)``; training mode needs ``B >= 2``."""
        if self.training:
            if x.shape[0] < 2:
                raise ValueError("batch norm in training mode needs at least 2 examples")
            mu = x.mean(dim=0)
            var = ((x - mu) ** 2).mean(dim=0)  # biased: used to normalize
            b, m = x.shape[0], self.momentum
            with torch.no_grad():
                self.running_mean = (1 - m) * self.running_mean + m * mu
                self.running_var = (1 - m) * self.running_var + m * var * b / (b - 1)
        else:
            mu, var = self.running_mean, self.running_var
        return self.gamma * (x - mu) / torch.sqrt(var + self.eps) + self.beta


def bn_backward(
    x: torch.Tensor, gamma: torch.Tensor, dy: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """∂ℓ/∂x ``(B, d)`` for batch norm in training mode, by equation (eq-bn-backward), from the
    input ``x (B, d)``, the gain ``gamma (d,)`` and the upstream gradient ``dy (B, d)``."""
    mu, var = x.mean(0), x.var(0, unbiased=False)
    x_hat = (x - mu) / torch.sqrt(var + eps)
    g = gamma * dy
    return (g - g.mean(0) - x_hat * (g * x_hat).mean(0)) / torch.sqrt(var + eps)


def hand_layer_norm(
    x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Layer norm over the last dimension of ``x (..., d)`` with ``gamma, beta (d,)``."""
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return gamma * (x - mu) / torch.sqrt(var + eps) + beta


def ln_backward(
    x: torch.Tensor, gamma: torch.Tensor, dy: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """∂ℓ/∂x ``(..., d)`` for layer norm: equation (eq-bn-backward) with the means taken over
    the last dimension instead of the batch."""
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    x_hat = (x - mu) / torch.sqrt(var + eps)
    g = gamma * dy
    mean_g, mean_gx = g.mean(-1, keepdim=True), (g * x_hat).mean(-1, keepdim=True)
    return (g - mean_g - x_hat * mean_gx) / torch.sqrt(var + eps)
