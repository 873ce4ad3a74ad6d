"""The token-level cross-entropy that every language model of the book trains with.

One rule for positions that carry no target: their target id is :data:`IGNORE_INDEX` (``-100``,
PyTorch's and Hugging Face's default), and they count neither in the sum nor in the number of
positions the mean divides by. Padding and the prompt tokens of supervised fine-tuning are
masked this way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "token_cross_entropy"]

#: Target id of a position that is not scored (``F.cross_entropy``'s ``ignore_index`` default).
IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (..., V)`` against ``targets (...)``, in float32.

    Positions whose target is :data:`IGNORE_INDEX` are left out of the mean (if every position
    is ignored the mean of nothing is ``nan``).

    Raises:
        ValueError: ``targets`` does not have the shape of ``logits`` without its last dimension.
    """
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
