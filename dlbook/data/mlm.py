"""Masked-language-model inputs (section 5.1): BERT's 80/10/10 corruption of token ids.

Shapes use ``B`` batch and ``T`` sequence length.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dlbook.nn.losses import IGNORE_INDEX


def mask_tokens(
    ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    p: float = 0.15,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``ids (B, T)`` for masked-language modelling (Devlin et al., 2019).

    Each position that is not a special token (padding, ``[CLS]``, ``[SEP]``, ...) is chosen
    with probability ``p``; of the chosen ones 80 % become ``mask_id``, 10 % a token drawn
    uniformly from ``[0, vocab_size)`` and 10 % stay as they are, so the model cannot learn that
    only ``[MASK]`` positions matter. The target is the original id at a chosen position and
    ``ignore_index`` elsewhere (:data:`dlbook.nn.losses.IGNORE_INDEX`, ``-100``, which the
    library's losses and ``F.cross_entropy`` skip). A ``generator`` must live on
    the device of ``ids``.

    Returns:
        ``(inputs, targets)``, both ``(B, T)`` int64; ``ids`` is not modified.

    Raises:
        ValueError: ``p`` outside ``(0, 1]``, or ``mask_id`` outside ``[0, vocab_size)``.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"masking probability p must be in (0, 1], got {p}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
    ids = ids.long()
    device = ids.device
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long, device=device)
    eligible = ~torch.isin(ids, special)

    def uniform() -> torch.Tensor:
        return torch.rand(ids.shape, generator=generator, device=device)

    chosen = (uniform() < p) & eligible
    roll = uniform()  # one draw decides what a chosen position becomes
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = mask_id
    randomise = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator, device=device)
    inputs[randomise] = random_ids[randomise]
    targets = torch.full_like(ids, ignore_index)
    targets[chosen] = ids[chosen]
    return inputs, targets


__all__ = ["mask_tokens"]
