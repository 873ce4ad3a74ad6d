"""Activation memory (section 4.5): what a training step stores for backward, and activation
checkpointing, which trades that memory for a second forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["Checkpointed", "checkpoint_blocks", "saved_activation_bytes"]


def saved_activation_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``fn()`` runs.

    This is the activation memory of a training step, measured the same way on any device:
    every tensor that the forward pass stores for backward goes through the pack hook.
    Tensors sharing a storage are counted once; storages of ``exclude`` (pass the model's
    parameters, which matrix products also save) are not counted.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


class Checkpointed(nn.Module):
    """Wrap a block so its activations are recomputed in backward instead of stored.

    ``forward`` takes whatever the wrapped block takes (``x (B, T, C)``, keywords) and returns
    the same output; only the memory/compute trade changes.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Wrap every module of ``blocks`` (e.g. ``GPT.blocks``) in :class:`Checkpointed`, in place.

    Parameter names gain a ``.block`` level; save weights before wrapping, or unwrap with
    ``blocks[i] = blocks[i].block``.
    """
    for i, block in enumerate(blocks):
        if not isinstance(block, Checkpointed):
            blocks[i] = Checkpointed(block)
