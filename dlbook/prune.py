"""Magnitude pruning, unstructured and structured (section 6.5).

* **Unstructured** (:func:`magnitude_prune`): set the fraction ``s`` of weights with the
  smallest ``|w|`` to zero, ranked over all chosen layers at once (``scope="global"``) or
  within each layer (``scope="layer"``). The zeros are kept by a mask buffer applied through
  :mod:`torch.nn.utils.parametrize`: ``layer.weight`` is ``original * mask`` on every access,
  so a pruned model can be fine-tuned and its pruned weights stay zero.
  :func:`remove_masks` bakes the masks into plain weights. The matrices keep their shapes,
  so a dense matrix product costs the same as before.
* **Structured** (:func:`prune_heads`, :func:`prune_mlp_channels`, :func:`prune_structured`):
  remove whole attention heads or hidden channels of the feed-forward network, ranked by
  :func:`head_scores` and :func:`mlp_channel_scores`. The matrices get smaller; the model
  does less arithmetic.

Shapes: a linear weight is ``(out_features, in_features)``; ``B`` batch, ``T`` tokens,
``C`` model width, ``H`` heads of width ``D``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from dlbook.nn.attention import MultiHeadAttention, RotaryEmbedding
from dlbook.nn.transformer import FeedForward

__all__ = [
    "Mask",
    "PrunedAttention",
    "head_scores",
    "linear_layers",
    "magnitude_prune",
    "mlp_channel_scores",
    "prune_heads",
    "prune_mlp_channels",
    "prune_structured",
    "remove_masks",
    "sparsity",
]

#: Layers that :func:`linear_layers` leaves out by default: the classifier's output head.
DEFAULT_EXCLUDE = r"(^|\.)head$"


# --------------------------------------------------------------------------- unstructured


class Mask(nn.Module):
    """A parametrization ``weight -> weight * mask`` with a fixed 0/1 ``mask`` buffer of the
    weight's shape (saved in the ``state_dict``, moved by ``.to()``)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def linear_layers(model: nn.Module, exclude: str | None = DEFAULT_EXCLUDE) -> list[nn.Linear]:
    """Every ``nn.Linear`` of ``model`` whose qualified name does not match the regular
    expression ``exclude`` (default: the output ``head``; ``None``: keep all)."""
    pattern = re.compile(exclude) if exclude else None
    return [m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not (pattern and pattern.search(name))]


def _mask_of(layer: nn.Linear) -> torch.Tensor | None:
    if parametrize.is_parametrized(layer, "weight"):
        for p in layer.parametrizations["weight"]:
            if isinstance(p, Mask):
                return p.mask
    return None


def _check_layers(layers: Sequence[nn.Module]) -> list[nn.Linear]:
    layers = list(layers)
    if not layers:
        raise ValueError("no layers to prune")
    bad = [type(m).__name__ for m in layers if not isinstance(m, nn.Linear)]
    if bad:
        raise ValueError(f"only nn.Linear layers can be pruned, got {bad[:3]}")
    return layers  # type: ignore[return-value]


def _prune_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask of the 1-D ``scores`` with exactly its ``k`` smallest entries
    ``False`` (ties at the threshold: lowest index first). Uses ``kthvalue``, linear time; a
    sort or ``torch.topk`` with a ``k`` of millions is far slower on a CPU."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k == 0:
        return keep
    threshold = scores.kthvalue(k).values
    below = scores < threshold
    keep[below] = False
    ties = torch.nonzero(scores == threshold).flatten()
    keep[ties[: k - int(below.sum())]] = False
    return keep


@torch.no_grad()
def magnitude_prune(
    model: nn.Module,
    amount: float,
    *,
    scope: Literal["global", "layer"] = "global",
    layers: Sequence[nn.Module] | None = None,
) -> dict[str, float]:
    """Zero the fraction ``amount`` of the smallest-magnitude weights; keep them zero.

    With ``scope="global"`` the ``round(amount · N)`` smallest ``|w|`` among all ``N`` weights
    of the chosen layers are pruned (layers with small weights lose more); with
    ``scope="layer"`` each layer loses ``round(amount · N_l)`` of its own ``N_l``. Pruning a
    layer that already has a mask ranks its current (masked) weights, so the zeros of earlier
    rounds count towards ``amount``: calling it with 0.5 and then 0.75 leaves 75 % zeros (an
    iterative schedule).

    Args:
        model: the model (used for the default ``layers``).
        amount: target fraction of zeros, in ``[0, 1)``.
        scope: ``"global"`` or ``"layer"``.
        layers: ``nn.Linear`` layers to prune (default: :func:`linear_layers` of ``model``,
            every linear layer but the output head).

    Returns:
        ``{"pruned": weights now zero, "total": weights in the chosen layers}`` as floats.

    Raises:
        ValueError: ``amount`` outside ``[0, 1)``, an unknown ``scope``, no layers or a layer
            that is not ``nn.Linear``.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount (the sparsity) must lie in [0, 1), got {amount!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}")
    chosen = _check_layers(linear_layers(model) if layers is None else layers)
    scores = [m.weight.detach().abs().flatten() for m in chosen]  # masked weights: zeros
    masks: list[torch.Tensor] = []
    if scope == "global":
        flat = torch.cat(scores)
        keep = _prune_mask(flat, round(amount * flat.numel()))
        masks = list(keep.split([s.numel() for s in scores]))
    else:
        masks = [_prune_mask(s, round(amount * s.numel())) for s in scores]
    pruned = 0
    for layer, keep in zip(chosen, masks, strict=True):
        mask = keep.view_as(layer.weight).to(layer.weight.dtype)
        old = _mask_of(layer)
        if old is not None:
            old.mul_(mask)  # the zeros of earlier rounds stay
        else:
            parametrize.register_parametrization(layer, "weight", Mask(mask))
        pruned += int((_mask_of(layer) == 0).sum())  # type: ignore[operator]
    return {"pruned": float(pruned), "total": float(sum(s.numel() for s in scores))}


def sparsity(model: nn.Module, layers: Sequence[nn.Module] | None = None) -> float:
    """Fraction of exactly-zero entries in the (effective, masked) weights of ``layers``
    (default: :func:`linear_layers` of ``model``, every linear layer but the head)."""
    chosen = _check_layers(linear_layers(model) if layers is None else layers)
    with torch.no_grad():
        zeros = sum(int((m.weight == 0).sum()) for m in chosen)
        total = sum(m.weight.numel() for m in chosen)
    return zeros / total


def remove_masks(model: nn.Module) -> int:
    """Make every masked weight of ``model`` a plain parameter holding ``original * mask``
    (the zeros stay, the parametrization goes); return how many layers were changed."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and _mask_of(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            count += 1
    return count


# --------------------------------------------------------------------------- structured


def _check_mha(attn: nn.Module) -> None:
    if not isinstance(attn, MultiHeadAttention):
        raise ValueError(f"expected a MultiHeadAttention, got {type(attn).__name__}")
    if attn.n_kv_head != attn.n_head:
        raise ValueError("head pruning needs n_kv_head == n_head (no grouped-query attention)")


def _head_rows(n_head: int, d: int, heads: Sequence[int]) -> torch.Tensor:
    """Indices of the ``D`` rows (or columns) of each head in ``heads``, in order."""
    return (torch.as_tensor(list(heads))[:, None] * d + torch.arange(d)).flatten()


@torch.no_grad()
def head_scores(attn: MultiHeadAttention) -> torch.Tensor:
    r"""Importance of each head ``(H,)``: :math:`\|W_V^h\|_F \, \|W_O^h\|_F`, the product of
    the Frobenius norms of the head's value rows of ``c_attn`` and its columns of ``c_proj``.

    It bounds how strongly the head can write into the residual stream: the head adds
    :math:`W_O^h W_V^h x` averaged over positions, and :math:`\|W_O^h W_V^h\|_2 \le
    \|W_O^h\|_F \|W_V^h\|_F`.
    """
    _check_mha(attn)
    h, d, c = attn.n_head, attn.head_dim, attn.n_embd
    w_v = attn.c_attn.weight[2 * c:].view(h, d, c)
    w_o = attn.c_proj.weight.view(c, h, d).transpose(0, 1)  # (H, C, D)
    return w_v.flatten(1).norm(dim=1) * w_o.flatten(1).norm(dim=1)


@torch.no_grad()
def mlp_channel_scores(mlp: FeedForward) -> torch.Tensor:
    r"""Importance of each hidden channel ``(hidden,)`` of a GELU feed-forward network:
    :math:`\|w^{\mathrm{fc}}_j\|_2 \, \|w^{\mathrm{proj}}_{:,j}\|_2`, the norm of the row of
    ``c_fc`` that feeds channel ``j`` times the norm of the column of ``c_proj`` it writes to."""
    if not isinstance(mlp, FeedForward):
        raise ValueError(f"expected a FeedForward, got {type(mlp).__name__}")
    return mlp.c_fc.weight.norm(dim=1) * mlp.c_proj.weight.norm(dim=0)


def _check_indices(indices: Sequence[int], n: int, what: str) -> list[int]:
    idx = [int(i) for i in indices]
    if any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
        raise ValueError(f"{what} to remove must be distinct ids in [0, {n}), got {idx}")
    if len(idx) >= n:
        raise ValueError(f"cannot remove all {n} {what}: at least one must stay")
    return idx


def _sub_linear(layer: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None
                ) -> nn.Linear:
    w = layer.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if layer.bias is not None:
            out.bias.copy_(layer.bias.detach() if rows is None else layer.bias.detach()[rows])
    return out


class PrunedAttention(nn.Module):
    """Multi-head self-attention with some heads removed: ``(B, T, C)`` → ``(B, T, C)``.

    Built from a :class:`~dlbook.nn.attention.MultiHeadAttention` by :func:`prune_heads`:
    ``c_attn`` is ``(3 H' D, C)`` (queries, keys and values of the ``H'`` kept heads) and
    ``c_proj`` is ``(C, H' D)``. Computes exactly what the original computes when the removed
    heads' columns of ``c_proj`` are zero. No key/value cache, no packed segments.

    Attributes:
        kept: the original ids of the kept heads, in order.
    """

    def __init__(self, attn: MultiHeadAttention, remove: Sequence[int]) -> None:
        super().__init__()
        _check_mha(attn)
        removed = set(_check_indices(remove, attn.n_head, "heads"))
        self.kept = [h for h in range(attn.n_head) if h not in removed]
        self.n_embd, self.head_dim, self.n_head = attn.n_embd, attn.head_dim, len(self.kept)
        self.causal, self.dropout = attn.causal, attn.dropout
        c, d = attn.n_embd, attn.head_dim
        rows = _head_rows(attn.n_head, d, self.kept)
        self.c_attn = _sub_linear(attn.c_attn, torch.cat([rows, rows + c, rows + 2 * c]), None)
        self.c_proj = _sub_linear(attn.c_proj, None, rows)
        self.resid_dropout = nn.Dropout(attn.resid_dropout.p)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        kv: object | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map ``x (B, T, C)`` to ``(B, T, C)``; ``key_padding_mask (B, T)``, ``True`` for
        real tokens; ``rope`` rotates queries and keys.

        Raises:
            ValueError: a wrong input shape, or ``kv`` / ``segments`` (not supported).
        """
        if kv is not None or segments is not None:
            raise ValueError("PrunedAttention supports neither a kv cache nor segments")
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"expected input (B, T, {self.n_embd}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
                   for z in self.c_attn(x).chunk(3, dim=-1))
        if rope is not None:
            q, k = rope(q), rope(k)
        mask = MultiHeadAttention._mask(self, key_padding_mask, t)  # type: ignore[arg-type]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and mask is None)
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))


def prune_heads(attn: MultiHeadAttention, heads: Sequence[int]) -> PrunedAttention:
    """A smaller attention layer without the heads ``heads`` (ids in ``[0, H)``).

    Raises:
        ValueError: not a plain multi-head attention, repeated or out-of-range ids, or all
            heads (at least one must stay).
    """
    return PrunedAttention(attn, heads)


def prune_mlp_channels(mlp: FeedForward, channels: Sequence[int]) -> FeedForward:
    """Remove the hidden channels ``channels`` of a GELU feed-forward network, in place:
    ``c_fc`` becomes ``(hidden', C)`` and ``c_proj`` ``(C, hidden')``. Returns ``mlp``.

    Raises:
        ValueError: not a :class:`~dlbook.nn.transformer.FeedForward`, repeated or
            out-of-range ids, or all channels.
    """
    if not isinstance(mlp, FeedForward):
        raise ValueError(f"expected a FeedForward, got {type(mlp).__name__}")
    n = mlp.c_fc.out_features
    removed = set(_check_indices(channels, n, "channels"))
    keep = torch.tensor([j for j in range(n) if j not in removed])
    mlp.c_fc = _sub_linear(mlp.c_fc, keep, None)
    mlp.c_proj = _sub_linear(mlp.c_proj, None, keep)
    return mlp


@torch.no_grad()
def prune_structured(
    blocks: Sequence[nn.Module], head_fraction: float = 0.0, channel_fraction: float = 0.0
) -> dict[str, list[list[int]]]:
    """Remove, in every Transformer block, the ``round(head_fraction · H)`` heads with the
    lowest :func:`head_scores` and the ``round(channel_fraction · hidden)`` feed-forward
    channels with the lowest :func:`mlp_channel_scores`; blocks are changed in place (their
    ``attn`` becomes a :class:`PrunedAttention`).

    Args:
        blocks: e.g. ``encoder.blocks``; each has ``attn`` (a plain ``MultiHeadAttention``)
            and ``mlp`` (a ``FeedForward``).
        head_fraction, channel_fraction: in ``[0, 1)``.

    Returns:
        ``{"heads": [...], "channels": [...]}``: per block, the removed ids.
    """
    for name, f in (("head_fraction", head_fraction), ("channel_fraction", channel_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {f!r}")
    removed: dict[str, list[list[int]]] = {"heads": [], "channels": []}
    for block in blocks:
        heads = head_scores(block.attn).argsort()[: round(head_fraction * block.attn.n_head)]
        heads = sorted(heads.tolist())
        if heads:
            block.attn = prune_heads(block.attn, heads)
        n_hidden = block.mlp.c_fc.out_features
        scores = mlp_channel_scores(block.mlp)
        channels = sorted(scores.argsort()[: round(channel_fraction * n_hidden)].tolist())
        if channels:
            prune_mlp_channels(block.mlp, channels)
        removed["heads"].append(heads)
        removed["channels"].append(channels)
    return removed
