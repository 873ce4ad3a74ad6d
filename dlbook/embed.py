"""Sentence embeddings from an encoder (section 5.1): mean pooling over real tokens, unit length.

Shapes use ``N`` texts, ``B`` batch, ``T`` tokens and ``C`` the encoder's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden (B, T, C)`` over the positions where ``mask (B, T)`` is ``True`` →
    ``(B, C)`` (padding does not count)."""
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit hidden {tuple(hidden.shape)}")
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def sentence_embeddings(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 32,
    truncate: bool = False,
) -> torch.Tensor:
    """Embed ``texts`` as unit vectors ``(N, C)`` (float32, on the model's device): the encoder's
    last hidden states, mean-pooled over each text's real tokens (``[CLS]`` and ``[SEP]``
    included, padding not), then L2-normalised, so a dot product is a cosine similarity. This
    is how sentence-transformers uses all-MiniLM-L6-v2.

    Args:
        model: an encoder whose ``hidden_states(idx, key_padding_mask, token_type_ids)`` gives
            ``(B, T, C)`` (:class:`dlbook.nn.transformer.TransformerEncoder`).
        tokenizer: a :class:`dlbook.wordpiece.WordPieceTokenizer` (anything with its ``batch``).
        texts: the texts; encoded in batches of ``batch_size``, shortest first (less padding).
        truncate: cut a text whose encoding is longer than the model's ``block_size`` positions
            to its first ``block_size - 1`` tokens and ``[SEP]``. Without it such a text is an
            error (silently embedding only the start of a long text is a common surprise).

    Raises:
        ValueError: no texts, a bad ``batch_size``, or a text too long and ``truncate=False``.
    """
    if isinstance(texts, str):
        raise TypeError("sentence_embeddings takes a list of texts, not one str")
    if len(texts) == 0:
        raise ValueError("sentence_embeddings needs at least one text")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = model.config.block_size
    lengths = [len(tokenizer.encode(t)) for t in texts]
    if not truncate:
        for i, n in enumerate(lengths):
            if n > limit:
                raise ValueError(
                    f"text {i} has {n} tokens, more than the model's {limit} positions; "
                    f"split it or pass truncate=True to embed only its first {limit}"
                )
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = torch.empty(len(texts), model.config.n_embd, device=device)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer.batch([texts[i] for i in idx], max_length=limit if truncate else None)
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = model.hidden_states(enc["input_ids"], enc["attention_mask"],
                                     enc["token_type_ids"])
        pooled = mean_pool(hidden.float(), enc["attention_mask"])
        out[idx] = F.normalize(pooled, dim=-1)
    return out


__all__ = ["mean_pool", "sentence_embeddings"]
