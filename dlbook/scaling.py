"""Scaling laws in miniature (section 4.7): power-law fits, the compute frontier, and training a
GPT on a fixed token budget.

* :func:`fit_power_law` fits ``y = a · x^(-alpha)`` (a straight line in log-log space), or
  ``y = E + a · x^(-alpha)`` with an irreducible term ``E``, by least squares in log space.
* :func:`compute_frontier` keeps the runs that no cheaper run beats: the lower envelope of loss
  against compute.
* :func:`train_for_tokens` trains a character-level GPT from scratch on ``tokens`` training
  tokens with :func:`dlbook.pretrain.pretrain` (warm-up + cosine schedule fitted to the
  budget) and measures its validation loss on fixed windows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from dlbook.bench import flops_per_token, matmul_params
from dlbook.config import check_int
from dlbook.nn.gpt import GPTConfig
from dlbook.pretrain import PretrainConfig, estimate_loss, pretrain

__all__ = [
    "compute_frontier",
    "fit_power_law",
    "train_for_tokens",
]


def _positive_1d(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must hold finite positive numbers (power laws live in log space)")
    return arr


def fit_power_law(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    irreducible: bool = False,
) -> dict[str, float]:
    """Fit ``y ≈ a · x^(-alpha)`` (or ``E + a · x^(-alpha)``) to points ``x, y`` of shape ``(n,)``.

    Without ``irreducible`` this is ordinary least squares of ``log y`` on ``log x`` (needs
    ``n >= 2``; exact for 2 points). With ``irreducible`` the squared errors of
    ``log y - log(E + a x^(-alpha))`` are minimised over ``a > 0``, ``alpha`` and
    ``0 <= E < min(y)`` (scipy's ``least_squares``, started from the plain fit; needs ``n >= 4``).

    Returns:
        ``{"a", "alpha", "E", "rms"}``: the parameters (``E = 0`` without ``irreducible``) and
        the root-mean-square residual of ``log y``.

    Raises:
        ValueError: shapes differ, values are not finite and positive, or too few points.
    """
    xs, ys = _positive_1d("x", x), _positive_1d("y", y)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same shape, got {xs.shape} and {ys.shape}")
    need = 4 if irreducible else 2
    if xs.size < need:
        raise ValueError(f"need at least {need} points to fit, got {xs.size}")
    if np.ptp(np.log(xs)) == 0:
        raise ValueError("all x are equal: the exponent is undetermined")
    lx, ly = np.log(xs), np.log(ys)
    slope, intercept = np.polyfit(lx, ly, 1)
    a, alpha, e = float(np.exp(intercept)), float(-slope), 0.0
    if irreducible:
        from scipy.optimize import least_squares

        # Work with u = x / x0 (x0 the geometric mean) so that the parameters are of order 1.
        lx0 = float(lx.mean())
        u = lx - lx0
        ymin = float(ys.min())

        def residuals(p: np.ndarray) -> np.ndarray:
            log_b, al, ee = p
            return np.log(ee + np.exp(log_b - al * u)) - ly

        # Start from the plain fit with a small irreducible term.
        start = np.array([math.log(a) - alpha * lx0 + math.log(0.9), alpha, 0.1 * ymin])
        fit = least_squares(
            residuals, start, bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, 0.999 * ymin])
        )
        log_b, alpha, e = (float(v) for v in fit.x)
        a = math.exp(log_b + alpha * lx0)
    pred = np.log(e + a * xs ** (-alpha))
    rms = float(np.sqrt(np.mean((pred - ly) ** 2)))
    return {"a": a, "alpha": alpha, "E": e, "rms": rms}


def compute_frontier(points: Iterable[Sequence[Any]]) -> list[Sequence[Any]]:
    """The compute-efficient frontier of ``points``: items ``(compute, loss, ...)``.

    A point is on the frontier if its loss is lower than that of every point with smaller or
    equal compute (for equal compute only the lowest loss survives). The result holds the input
    items themselves (extra fields such as model size ride along), sorted by compute; along it
    compute increases and loss strictly decreases.

    Raises:
        ValueError: no points, an item with fewer than two fields, or compute/loss not finite
            and positive (compute) / finite (loss).
    """
    items = list(points)
    if not items:
        raise ValueError("compute_frontier needs at least one (compute, loss) point")
    for item in items:
        if len(item) < 2:
            raise ValueError(f"each point must be (compute, loss, ...), got {item!r}")
        c, loss = float(item[0]), float(item[1])
        if not (math.isfinite(c) and c > 0) or not math.isfinite(loss):
            raise ValueError(f"compute must be finite and > 0 and loss finite, got {item!r}")
    ordered = sorted(items, key=lambda p: (float(p[0]), float(p[1])))
    frontier: list[Sequence[Any]] = []
    best = math.inf
    for item in ordered:
        if float(item[1]) < best:
            frontier.append(item)
            best = float(item[1])
    return frontier


def train_for_tokens(
    config: GPTConfig,
    tokens: int,
    train_data: np.ndarray,
    val_data: np.ndarray,
    *,
    batch_size: int = 16,
    lr: float = 3e-3,
    warmup_fraction: float = 0.05,
    eval_batches: int = 20,
    eval_seed: int = 1234,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Train a GPT of ``config`` from scratch on about ``tokens`` training tokens; return its
    validation loss and what the run cost.

    The run takes ``steps = round(tokens / (batch_size · block_size))`` optimizer steps (at
    least 1) of :func:`dlbook.pretrain.pretrain`, whose warm-up + cosine schedule ends exactly
    at the budget. The validation loss is the mean over ``eval_batches`` batches of windows of
    ``val_data`` fixed by ``eval_seed``, so every run is scored on the same text.

    Returns:
        ``{"N", "D", "steps", "C", "C_attn", "val_loss", "seconds"}``: non-embedding parameters,
        tokens seen, steps, compute ``6 N D`` and the compute with the attention and output
        layer terms (:func:`dlbook.bench.flops_per_token` times ``D``), the loss and wall time.

    Raises:
        ValueError: a non-positive token budget or bad training settings.
    """
    check_int("tokens", tokens)
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    per_step = batch_size * config.block_size
    steps = max(1, round(tokens / per_step))
    run = PretrainConfig(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
        block_size=config.block_size, dropout=config.dropout, batch_size=batch_size,
        max_steps=steps, warmup_steps=int(warmup_fraction * steps), lr=lr,
        eval_interval=steps, eval_batches=1, seed=seed,
    )
    if run.gpt_config(config.vocab_size) != config:
        raise ValueError(
            "train_for_tokens trains the GPT-2 style model of PretrainConfig (learned positions, "
            f"layer norm, GELU, biases); got {config}"
        )
    start = time.perf_counter()
    model = pretrain(run, train_data, val_data, config.vocab_size, device=device).model
    seconds = time.perf_counter() - start
    val_loss = estimate_loss(
        model, val_data, config.block_size, batch_size, eval_batches, seed=eval_seed
    )
    n = model.num_params(non_embedding=True)
    d = steps * per_step
    matmul = matmul_params(model)  # with the tied output layer
    return {
        "N": float(n),
        "D": float(d),
        "steps": float(steps),
        "C": 6.0 * n * d,
        "C_attn": flops_per_token(config, matmul) * d,
        "val_loss": val_loss,
        "seconds": seconds,
    }
