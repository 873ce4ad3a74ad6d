"""Attention (section 3.4): scaled dot-product attention, masks, multi-head attention, positions.

Shapes use ``B`` batch, ``H`` heads, ``T`` sequence length (``T_q`` queries, ``T_k`` keys),
``C`` model width (``n_embd``) and ``D = C / H`` the width of one head.

Mask convention (the same as :func:`torch.nn.functional.scaled_dot_product_attention`): a
*boolean* mask is ``True`` where a query **may** attend to a key; a *float* mask is added to the
scores, with ``-inf`` where attention is forbidden.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Reference attention :math:`\mathrm{softmax}(QK^\top/\sqrt{d_k} + M)\,V`, written out.

    Args:
        q: queries ``(..., T_q, D)``.
        k: keys ``(..., T_k, D)``.
        v: values ``(..., T_k, D_v)``.
        mask: ``None``, a boolean mask (``True`` = may attend) or an additive float mask, either
            broadcastable to ``(..., T_q, T_k)``.
        is_causal: also forbid query ``i`` to attend to keys ``j > i``.

    Returns:
        ``(out, weights)``: ``out (..., T_q, D_v)`` and the attention weights
        ``(..., T_q, T_k)``, each row summing to 1.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys need the same width, got {q.shape} and {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values need the same length, got {k.shape} and {v.shape}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if is_causal:
        causal = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def causal_mask(
    t_q: int, t_k: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean lower-triangular mask ``(T_q, T_k)``: ``True`` where key ``j <= i`` (may attend)."""
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """Boolean key-padding mask ``(B, T)`` from true lengths ``(B,)``: ``True`` for real tokens."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > t).any()):
        raise ValueError(f"every length must lie in [1, {t}], got {lengths.tolist()}")
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def bool_to_additive(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn a boolean mask (``True`` = may attend) into an additive one (0 or ``-inf``)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a boolean mask, got dtype {mask.dtype}")
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf")
    )


# --------------------------------------------------------------------------- positions


def sinusoidal_positions(t: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    r"""The fixed encodings of Vaswani et al. (2017), shape ``(T, dim)``.

    :math:`P_{p,2i} = \sin(p/\mathrm{base}^{2i/d})`,
    :math:`P_{p,2i+1} = \cos(p/\mathrm{base}^{2i/d})`.
    """
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    pos = torch.arange(t, dtype=torch.float32)[:, None]  # (T, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    angles = pos * inv_freq  # (T, dim/2)
    out = torch.empty(t, dim)
    out[:, 0::2] = torch.sin(angles)
    out[:, 1::2] = torch.cos(angles)
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Rotate each pair ``(x_{2i}, x_{2i+1})`` of ``x`` by the angle whose cos/sin are given.

    Args:
        x: ``(..., T, D)`` with ``D`` even (queries or keys of one or more heads).
        cos, sin: ``(T, D/2)``, the cosines and sines of the angles :math:`p\,\theta_i`
            (or ``(B, 1, T, D/2)``: one set of positions per sequence, for ``x (B, H, T, D)``).

    Returns:
        ``(..., T, D)``, the same dtype as ``x``.
    """
    if x.shape[-1] % 2 != 0 or cos.shape[-2:] != (x.shape[-2], x.shape[-1] // 2):
        raise ValueError(
            f"apply_rope needs x (..., T, D) with D even and cos/sin (T, D/2); got x "
            f"{tuple(x.shape)}, cos {tuple(cos.shape)}"
        )
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., T, D/2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding (RoPE, Su et al.): rotate pair ``i`` at position ``p`` by
    :math:`p\,\theta_i`, :math:`\theta_i = \mathrm{base}^{-2i/D}`.

    Applied to queries and keys (not values), it makes the score of query position ``m`` and key
    position ``n`` depend on the positions only through ``m - n``. Holds no parameters; its
    cos/sin tables are non-persistent buffers (not saved in a checkpoint).
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.arange(max_seq_len, dtype=torch.float32)[:, None] * inv_freq  # (T, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(
        self, x: torch.Tensor, offset: int = 0, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rotate ``x (..., T, head_dim)`` as if its first position were ``offset``, or, given
        ``positions (B, T)`` (integers), ``x (B, H, T, head_dim)`` at those positions."""
        t = x.shape[-2]
        if positions is not None:
            if positions.shape != (x.shape[0], t) or x.dim() != 4:
                raise ValueError(
                    f"positions must be (B, T) = {(x.shape[0], t)} for x (B, H, T, D), got "
                    f"{tuple(positions.shape)} for x {tuple(x.shape)}"
                )
            if int(positions.max()) >= self.max_seq_len or int(positions.min()) < 0:
                raise ValueError(f"positions must lie in [0, {self.max_seq_len})")
            return apply_rope(x, self.cos[positions][:, None], self.sin[positions][:, None])
        if offset + t > self.max_seq_len:
            raise ValueError(
                f"positions {offset}..{offset + t - 1} exceed max_seq_len={self.max_seq_len}"
            )
        return apply_rope(x, self.cos[offset : offset + t], self.sin[offset : offset + t])


# --------------------------------------------------------------------------- key/value cache


class LayerKV:
    """The cached keys and values of one attention layer: buffers ``(B, H_kv, T_max, D)``
    allocated on the first :meth:`append` with the dtype and device of the keys (``H_kv`` is the
    number of key/value heads, fewer than the query heads under grouped-query attention)."""

    def __init__(self, max_len: int) -> None:
        self.max_len, self.length = max_len, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        # The key-padding mask ``(B, max_len)`` of the cached positions (``True`` = real token),
        # shared by every layer of a :class:`KVCache` and written by :meth:`KVCache.extend_mask`;
        # ``None``: every cached position is real (the fast path, no mask at all).
        self.mask: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v (B, H_kv, T, D)`` after the cached positions; return all keys and values
        so far, ``(B, H_kv, length, D)`` each (views of the buffers, no copy)."""
        b, h, t, d = k.shape
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {end} do not fit")
        if self.k is None or self.v is None:
            # Uninitialised: only positions already written are ever read back, and a long
            # context (8192 positions) would otherwise be zeroed for nothing.
            self.k = k.new_empty(b, h, self.max_len, d)
            self.v = v.new_empty(b, h, self.max_len, d)
        elif self.k.shape[:2] != (b, h) or self.k.shape[-1] != d:
            raise ValueError(
                f"the cache was built for (B, H, D) = {tuple(self.k.shape[:2])} + "
                f"({self.k.shape[-1]},), got keys {tuple(k.shape)}; call reset() first"
            )
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Keys and values of every layer of a decoder for the positions processed so far.

    Attention at a new position needs the keys and values of all earlier positions; they do not
    change once computed, so a generator that keeps them feeds the model one new token per step
    instead of the whole sequence. Memory: ``2 * n_layer * B * H_kv * T_max * D`` numbers, with
    ``H_kv`` the key/value heads (grouped-query attention keeps fewer of them than query heads).

    Args:
        n_layer: number of attention layers.
        max_len: most positions it can hold (the model's ``block_size``).
    """

    def __init__(self, n_layer: int, max_len: int) -> None:
        if n_layer < 1 or max_len < 1:
            raise ValueError(f"need n_layer >= 1 and max_len >= 1, got {n_layer}, {max_len}")
        self.max_len = max_len
        self.layers = [LayerKV(max_len) for _ in range(n_layer)]

    @property
    def length(self) -> int:
        """Number of positions cached (the same in every layer)."""
        return self.layers[0].length

    def reset(self) -> None:
        """Forget every cached position (the buffers are reallocated on the next use)."""
        self.layers = [LayerKV(self.max_len) for _ in self.layers]

    @property
    def mask(self) -> torch.Tensor | None:
        """Key-padding mask ``(B, max_len)`` (``True`` = real token) of the positions cached or
        about to be, or ``None`` when no padding was ever given (every position real)."""
        return self.layers[0].mask

    def extend_mask(self, pad_mask: torch.Tensor) -> None:
        """Record the key-padding mask ``pad_mask (B, T)`` (boolean, ``True`` = real token) of the
        ``T`` positions about to be appended after the ``length`` cached ones (called by
        :meth:`dlbook.nn.GPT.features` before its layers run; earlier positions without a mask
        count as real). Every layer's attention then ignores the padded keys."""
        b, t = pad_mask.shape
        start = self.length
        if start + t > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {start + t} do not fit")
        mask = self.mask
        if mask is None:
            mask = torch.ones(b, self.max_len, dtype=torch.bool, device=pad_mask.device)
        elif mask.shape[0] != b:
            raise ValueError(f"pad_mask has {b} rows but the cache holds {mask.shape[0]}")
        mask[:, start : start + t] = pad_mask
        for layer in self.layers:
            layer.mask = mask

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (1-D integer indices, in that order) of every
        buffer: a batching server drops finished sequences from the cache this way."""
        for layer in self.layers:
            for name in ("k", "v", "mask"):
                buf = getattr(layer, name)
                if buf is not None:
                    setattr(layer, name, buf.index_select(0, rows.to(buf.device)))
        mask = self.layers[0].mask
        for layer in self.layers:  # index_select copies: share one mask again
            layer.mask = mask

    def nbytes(self) -> int:
        """Bytes held by the key and value buffers (0 before the first use)."""
        return sum(
            buf.numel() * buf.element_size()
            for layer in self.layers
            for buf in (layer.k, layer.v)
            if buf is not None
        )


# --------------------------------------------------------------------------- packed sequences


def check_segments(segments: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``segments`` is an integer tensor of ``shape`` ``(B, T)``
    whose labels never decrease along a row (each packed example is one contiguous run)."""
    if segments.shape != shape or segments.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"segments must be integer labels of shape {shape}, got {segments.dtype} "
            f"{tuple(segments.shape)}"
        )
    if segments.shape[1] > 1 and bool((segments[:, 1:] < segments[:, :-1]).any()):
        raise ValueError("segment labels must not decrease along a row (one run per example)")


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position of each token within its segment: ``(B, T)`` labels → ``(B, T)`` positions that
    restart at 0 where the label changes (``[[0, 0, 0, 1, 1]] → [[0, 1, 2, 0, 1]]``)."""
    b, t = segments.shape
    index = torch.arange(t, device=segments.device).expand(b, t)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, 1, T, T)``: query ``i`` may attend to key ``j`` iff both carry the same
    segment label and ``j <= i`` (causal attention that never crosses an example boundary)."""
    t = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    return (same & causal_mask(t, device=segments.device))[:, None]


def _see_self_if_blind(mask: torch.Tensor) -> torch.Tensor:
    """Let a query that may attend to no key at all attend to its own position, the last
    ``T_q`` keys being the queries' own (``mask (..., T_q, T_k)`` boolean). A padded query on
    the left of a left-padded causal row has no real key at or before it; a fully masked row
    would give NaN (and NaN times a zero weight is still NaN). Rows with a key are unchanged."""
    t_q, t_k = mask.shape[-2:]
    blind = ~mask.any(dim=-1, keepdim=True)  # (..., T_q, 1)
    own = torch.ones(t_q, t_k, dtype=torch.bool, device=mask.device)
    own = own.tril(t_k - t_q) & ~own.tril(t_k - t_q - 1)  # query i <-> key T_k - T_q + i
    return mask | (blind & own)


# --------------------------------------------------------------------------- multi-head attention


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over ``(B, T, C)`` with ``n_head`` heads of width ``C / n_head``.

    One linear layer ``c_attn`` makes queries, keys and values (its weight ``(3C, C)`` stacks
    ``W_Q; W_K; W_V``, the layout of ``nn.MultiheadAttention.in_proj_weight``), the heads attend
    in parallel through :func:`torch.nn.functional.scaled_dot_product_attention` (a fused/flash
    kernel where one exists), and ``c_proj`` mixes the concatenated heads.

    Grouped-query attention (GQA, Ainslie et al. 2023): with ``n_kv_head < n_head`` there are
    only ``n_kv_head`` key/value heads, each shared by a group of ``G = n_head / n_kv_head``
    consecutive query heads (query head ``h`` reads key/value head ``h // G``). ``c_attn`` is
    then ``(C + 2 H_kv D, C)`` and the key/value cache is ``G`` times smaller.
    ``n_kv_head = n_head`` is ordinary multi-head attention (the default).

    Args:
        n_embd: model width ``C``.
        n_head: number of (query) heads; must divide ``n_embd``.
        n_kv_head: number of key/value heads; must divide ``n_head`` (``None``: ``n_head``).
        bias: whether the projections have biases.
        dropout: dropout on the attention weights and on the output (training only).
        causal: forbid each position to attend to later positions.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if isinstance(n_kv_head, bool) or n_kv_head < 1 or n_head % n_kv_head != 0:
            raise ValueError(
                f"n_kv_head={n_kv_head!r} must be a positive divisor of n_head={n_head}"
            )
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.n_kv_head, self.kv_dim = n_kv_head, n_kv_head * (n_embd // n_head)
        self.causal, self.dropout = causal, dropout
        self.c_attn = nn.Linear(n_embd, n_embd + 2 * self.kv_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def _heads(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding | None,
        offset: int = 0,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x (B, T, C)`` to ``q (B, H, T, D)`` and ``k, v (B, H_kv, T, D)`` (RoPE
        applied to q, k, the first position of ``x`` being ``offset``, or at ``positions``)."""
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"expected input (B, T, {self.n_embd}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).split([self.n_embd, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (z.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2) for z in (k, v))
        if rope is not None:
            q, k = rope(q, offset, positions), rope(k, offset, positions)
        return q, k, v

    def _mask(self, key_padding_mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
        """Combine the causal and key-padding masks into one boolean ``(B, 1, T, T)`` or None."""
        if key_padding_mask is None:
            return None
        if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2:
            raise ValueError("key_padding_mask must be a boolean (B, T) tensor, True = real token")
        mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
        if self.causal:
            mask = _see_self_if_blind(mask & causal_mask(t, device=mask.device))
        return mask

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        kv: LayerKV | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map ``x (B, T, C)`` to ``(B, T, C)``.

        Args:
            x: the sequence.
            key_padding_mask: optional boolean ``(B, T)``, ``True`` for real tokens; padded keys
                get zero attention weight.
            rope: optional rotary embedding applied to queries and keys.
            kv: optional key/value cache of this layer (section 4.4): ``x`` holds the positions
                that follow the ``kv.length`` cached ones; its keys and values are appended and
                its queries attend to every cached position as well.
            segments: optional integer ``(B, T)`` labels of packed examples (section 5.6): a
                token attends only within its own segment (causally), and RoPE positions
                restart at 0 at each segment, so each example is computed as if alone.

        Raises:
            ValueError: a ``key_padding_mask`` or ``segments`` together with ``kv`` (the cached
                path needs the mask over the cached positions too: it reads it from the cache,
                ``kv.mask``, written by :meth:`KVCache.extend_mask`), or both
                ``key_padding_mask`` and ``segments``.
        """
        if segments is not None:
            if kv is not None or key_padding_mask is not None:
                raise ValueError("segments cannot be combined with kv or key_padding_mask")
            check_segments(segments, tuple(x.shape[:2]))
            q, k, v = self._heads(x, rope, positions=segment_positions(segments))
            mask = segment_mask(segments) if self.causal else (
                segments[:, :, None] == segments[:, None, :])[:, None]
            return self._attend(x, q, k, v, mask, is_causal=False)
        if kv is not None:
            if key_padding_mask is not None:
                raise ValueError(
                    "key_padding_mask is not supported with a key/value cache; decode without "
                    "padding (one prompt per call, or prompts of equal length) or pass kv=None"
                )
            return self._forward_cached(x, rope, kv)
        q, k, v = self._heads(x, rope)
        mask = self._mask(key_padding_mask, x.shape[1])
        return self._attend(x, q, k, v, mask, is_causal=self.causal and mask is None)

    def _attend(
        self,
        x: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        """Attention of ``q (B, H, T, D)`` over ``k, v (B, H_kv, T, D)`` with a boolean mask
        (or the causal flag), heads concatenated and projected: ``(B, T, C)`` like ``x``."""
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(x.shape)  # concatenate the heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _forward_cached(
        self, x: torch.Tensor, rope: RotaryEmbedding | None, kv: LayerKV
    ) -> torch.Tensor:
        start = kv.length
        q, k, v = self._heads(x, rope, offset=start)
        k, v = kv.append(k, v)  # (B, H_kv, start + T, D)
        t_q, t_k = q.shape[-2], k.shape[-2]
        mask = None
        if self.causal and t_q > 1:
            # Query i sits at position start + i: it may see keys 0 .. start + i, a causal mask
            # aligned to the bottom-right corner (``causal_mask`` aligns to the top-left).
            mask = torch.ones(t_q, t_k, dtype=torch.bool, device=x.device).tril(t_k - t_q)
        if kv.mask is not None:  # padded keys (KVCache.extend_mask), (B, 1, 1, T_k)
            keys = kv.mask[:, None, None, :t_k]
            mask = _see_self_if_blind(keys if mask is None else keys & mask)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=self.n_kv_head != self.n_head
        )  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(x.shape))

    @torch.no_grad()
    def attention_weights(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
    ) -> torch.Tensor:
        """The attention weights ``(B, H, T, T)`` that :meth:`forward` uses (for plots)."""
        q, k, _ = self._heads(x, rope)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # query head h: kv h // G
        mask = self._mask(key_padding_mask, x.shape[1])
        _, w = scaled_dot_product_attention(q, k, k, mask, is_causal=self.causal and mask is None)
        return w
