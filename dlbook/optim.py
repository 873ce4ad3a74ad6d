"""The optimizers of section 2.4, written from their update equations.

They are teaching versions of ``torch.optim.SGD``, ``RMSprop``, ``Adam`` and ``AdamW`` (one
loop over parameters, no fused kernels, no parameter groups) and follow PyTorch's conventions
exactly, so that they produce the same parameters step by step; the tests check this against
``torch.optim``. Each keeps a state dict per parameter and, at :meth:`Optimizer.step`, turns
the gradient in ``p.grad`` into an in-place update of ``p`` (any shape).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSProp"]


class Optimizer:
    """Minimal optimizer: a list of parameters, a state dict per parameter, ``lr`` settable."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got no parameters")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.lr = lr
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Forget the gradients (set ``p.grad`` to ``None``)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is not None:
                self.update(p, p.grad, state)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict) -> None:
        """Change ``p`` in place given its gradient ``g`` (same shape) and its ``state``."""
        raise NotImplementedError


class SGD(Optimizer):
    """theta -= lr * v with v = mu v + g (eq-2-4-momentum); mu = 0 is plain SGD."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay

    def update(self, p, g, state):
        g = g + self.weight_decay * p  # L2 penalty through the gradient
        if self.momentum:
            state["v"] = g.clone() if "v" not in state else self.momentum * state["v"] + g
            g = state["v"]
        p -= self.lr * g


class RMSProp(Optimizer):
    """eq-2-4-rmsprop, with eps outside the square root; weight_decay adds lambda * theta."""

    def __init__(
        self, params, lr: float, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, lr)
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay

    def update(self, p, g, state):
        g = g + self.weight_decay * p
        s = state.get("s", torch.zeros_like(p))
        state["s"] = s = self.alpha * s + (1 - self.alpha) * g * g
        p -= self.lr * g / (s.sqrt() + self.eps)


class Adam(Optimizer):
    """eq-2-4-adam, with bias correction; weight_decay adds the L2 gradient lambda * theta."""

    def __init__(
        self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def update(self, p, g, state):
        b1, b2 = self.betas
        g = g + self.weight_decay * p
        t = state["t"] = state.get("t", 0) + 1
        m = state["m"] = b1 * state.get("m", torch.zeros_like(p)) + (1 - b1) * g
        v = state["v"] = b2 * state.get("v", torch.zeros_like(p)) + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p -= self.lr * m_hat / (v_hat.sqrt() + self.eps)


class AdamW(Adam):
    """eq-2-4-adamw: decay the weights directly, then an Adam step without L2."""

    def __init__(
        self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay=0.0)
        self.decoupled_decay = weight_decay

    def update(self, p, g, state):
        p *= 1 - self.lr * self.decoupled_decay
        super().update(p, g, state)
