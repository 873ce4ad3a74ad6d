"""Decoding (section 4.4): turning next-token distributions into text.

A language model gives, at each step, logits ``(B, V)`` over the vocabulary. This module turns
them into tokens: greedy choice, sampling with a temperature, top-k and top-p (nucleus)
truncation, stop tokens, and a key/value cache so that each step feeds the model one token.

:func:`generate` works with any model that has ``config.block_size``, a ``forward(idx,
cache=...)`` returning ``(logits, loss)`` and a ``new_cache()`` method, such as
:class:`dlbook.nn.GPT`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["check_sampling", "filter_top_k", "filter_top_p", "generate", "sample_next"]


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row of ``logits (..., V)``; set the rest to
    ``-inf``. Ties with the ``k``-th largest are kept."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"top_k must be a positive integer, got {k!r}")
    kth = torch.topk(logits, min(int(k), logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens of each row of
    ``logits (..., V)`` whose probabilities sum to at least ``p``; set the rest to ``-inf``.

    The most probable token is always kept, so ``p`` close to 0 is greedy and ``p = 1`` keeps
    every token.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {p!r}")
    if p == 1.0:  # everything; the cumulative sum below may round to 1 before the tail ends
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    # A token is dropped when the tokens ranked above it already reach p.
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def check_sampling(
    temperature: float, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise ``ValueError`` unless ``temperature`` is finite and ``>= 0``, ``top_k`` a positive
    integer and ``top_p`` in ``(0, 1]`` (``None`` disables either filter)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token ``(B, 1)`` from ``logits (B, V)``.

    ``temperature=0`` takes the arg-max (greedy); otherwise the logits are divided by the
    temperature, truncated by ``top_k`` and/or ``top_p`` (in that order) and sampled.
    """
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (B, V), got {tuple(logits.shape)}")
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(
    model: Any,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend the prompts ``idx (B, T)`` by up to ``max_new_tokens`` tokens → ``(B, T + n)``.

    Args:
        model: a decoder such as :class:`dlbook.nn.GPT` (put in eval mode for the call).
        idx: prompt token ids, ``T >= 1``. A prompt longer than ``model.config.block_size``
            is cropped to its last ``block_size`` tokens (documented truncation, the same as
            the sliding window used once generation passes ``block_size``).
        max_new_tokens: most tokens to add.
        temperature, top_k, top_p: see :func:`sample_next`.
        stop_tokens: ids that end a sequence. A row that has produced one is padded with that
            id from then on; generation ends early once every row has stopped.
        use_cache: keep keys and values between steps (one token per forward pass) instead of
            re-running the whole context each step. Both give the same logits. Once the
            context is full, positions cannot shift inside the cache, so the cached path
            re-fills the cache from the last ``block_size`` tokens at each further step.
        generator: random-number generator for reproducible sampling.

    Raises:
        ValueError: a badly shaped prompt, ids outside the vocabulary, or bad sampling settings.
    """
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"expected prompt ids (B, T) with T >= 1, got {tuple(idx.shape)}")
    n_new = max_new_tokens
    if isinstance(n_new, bool) or int(n_new) != n_new or n_new < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {n_new!r}")
    vocab_size, block_size = model.config.vocab_size, model.config.block_size
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
    if stops.numel() and (int(stops.min()) < 0 or int(stops.max()) >= vocab_size):
        raise ValueError(f"stop tokens must lie in [0, {vocab_size}), got {list(stop_tokens)}")
    check_sampling(temperature, top_k, top_p)  # before the first (possibly long) forward pass

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache() if use_cache else None
        finished = torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)
        last_stop = torch.zeros_like(finished, dtype=torch.long)
        for _ in range(int(max_new_tokens)):
            if cache is None:
                logits, _ = model(idx[:, -block_size:])
            else:
                if cache.length + 1 > block_size:
                    cache.reset()
                feed = idx[:, -block_size:] if cache.length == 0 else idx[:, -1:]
                logits, _ = model(feed, cache=cache)
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            nxt = torch.where(finished, last_stop, nxt)
            idx = torch.cat([idx, nxt], dim=1)
            if stops.numel():
                hit = torch.isin(nxt, stops) & ~finished
                last_stop = torch.where(hit, nxt, last_stop)
                finished |= hit
                if bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    return idx
