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
import numbers
import re
from collections.abc import Sequence
from typing import Any

import torch

from dlbook.config import check_int

__all__ = [
    "check_sampling",
    "entropy",
    "filter_top_k",
    "filter_top_p",
    "generate",
    "real_word_fraction",
    "sample_next",
    "words",
]


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row of ``logits (..., V)``; set the rest to
    ``-inf``. Ties with the ``k``-th largest are kept."""
    check_int("top_k", k)
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
    if top_k is not None:
        check_int("top_k", top_k)
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
    temperature, truncated by ``top_k`` and/or ``top_p`` (in that order) and sampled. Any tiny
    positive temperature works and tends to greedy (one that rounds to 0 in float32 is greedy).
    """
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (B, V), got {tuple(logits.shape)}")
    check_sampling(temperature, top_k, top_p)
    if torch.tensor(temperature, dtype=torch.float32).item() == 0.0:  # 0, or below float32
        return logits.argmax(dim=-1, keepdim=True)
    # Shift the best logit to 0 before dividing: with a tiny temperature the quotients of the
    # others then go to -inf (probability 0), never to +inf (softmax of inf - inf is nan).
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def last_logits(
    model: Any, idx: torch.Tensor, cache: Any, pad_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token logits ``(B, V)`` after ``idx (B, T)`` (with ``cache``, after the cached
    positions too; ``pad_mask (B, T)``, ``True`` = real token, for left-padded rows, passed on
    only when given). A model with ``features`` (the final hidden states, such as
    :class:`dlbook.nn.GPT`) maps only the last position through the output layer: for a prompt
    of ``T`` tokens that skips ``T - 1`` rows of a ``C × V`` matmul, a fifth of the prefill's
    work for SmolLM2's 49,152-token vocabulary."""
    extra = {} if pad_mask is None else {"pad_mask": pad_mask}
    features = getattr(model, "features", None)
    if features is None or not hasattr(model, "lm_head"):
        logits, _ = model(idx, cache=cache, **extra) if cache is not None else model(idx, **extra)
        return logits[:, -1, :]
    return model.lm_head(features(idx, cache, **extra)[:, -1, :])


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
    check_int("max_new_tokens", max_new_tokens, low=0)
    vocab_size, block_size = model.config.vocab_size, model.config.block_size
    stop_list = list(stop_tokens)
    bad = [t for t in stop_list if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
    if bad:  # torch.tensor(..., dtype=long) would silently truncate 2.7 to 2
        raise ValueError(f"stop tokens must be integer ids, got {bad!r}")
    stops = torch.tensor([int(t) for t in stop_list], dtype=torch.long, device=idx.device)
    if stops.numel() and (int(stops.min()) < 0 or int(stops.max()) >= vocab_size):
        raise ValueError(f"stop tokens must lie in [0, {vocab_size}), got {stop_list}")
    check_sampling(temperature, top_k, top_p)  # before the first (possibly long) forward pass

    was_training = model.training
    model.eval()
    try:
        # A cache only as long as this call can fill (not block_size positions per row).
        needed = min(block_size, idx.shape[1] + int(max_new_tokens))
        cache = model.new_cache(max(needed, 1)) if use_cache else None
        finished = torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)
        last_stop = torch.zeros_like(finished, dtype=torch.long)
        for _ in range(int(max_new_tokens)):
            if cache is None:
                logits = last_logits(model, idx[:, -block_size:], None)
            else:
                if cache.length + 1 > block_size:
                    cache.reset()
                feed = idx[:, -block_size:] if cache.length == 0 else idx[:, -1:]
                logits = last_logits(model, feed, cache)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
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


# --------------------------------------------------------------------------- measuring samples


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy in nats of the next-token distributions ``softmax(logits / temperature)``:
    ``logits (..., V)`` → ``(...)``.

    Computed from ``log_softmax`` (in at least float32), so tokens of probability 0 (``-inf``
    logits, or underflow at a small temperature) contribute 0 instead of ``nan``.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32))
                             / temperature, dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


_WORD = re.compile(r"[A-Za-z]+")


def words(text: str) -> list[str]:
    """The words of ``text``: maximal runs of ASCII letters (case kept), so punctuation,
    digits and line breaks separate words and never make one unknown."""
    return _WORD.findall(text)


def real_word_fraction(sample: str, vocabulary: set[str]) -> float:
    """The fraction of the words of the generated text ``sample`` that are in ``vocabulary``
    (e.g. ``set(words(training_text))``): the book's one measure of spelling in samples.

    ``sample`` is a continuation cut out of a longer text, so a word touching either end may be
    a piece of a word: a first word that starts at the very first character (it may continue
    the prompt's last word) and a last word that ends at the very last character (the length
    limit may have cut it) are left out. ``0.0`` when no whole word remains.
    """
    found = words(sample)
    if sample[:1].isascii() and sample[:1].isalpha():
        found = found[1:]
    if sample[-1:].isascii() and sample[-1:].isalpha():
        found = found[:-1]
    if not found:
        return 0.0
    return sum(w in vocabulary for w in found) / len(found)
