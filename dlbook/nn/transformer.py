"""The Transformer block (section 3.5): normalisation, feed-forward, residual stream, encoder.

Shapes use ``B`` batch, ``T`` sequence length and ``C`` model width (``n_embd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlbook.nn.attention import LayerKV, MultiHeadAttention, RotaryEmbedding

NORMS = ("layer", "rms")
MLPS = ("gelu", "swiglu")


class RMSNorm(nn.Module):
    r"""Root-mean-square normalisation:
    :math:`y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon}\,\odot g`.

    Like layer norm without subtracting the mean and without a bias. Input and output
    ``(..., dim)``; statistics are taken over the last dimension, in float32.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x (..., dim)``."""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    """``"layer"`` → ``nn.LayerNorm(dim)``, ``"rms"`` → :class:`RMSNorm` (never has a bias)."""
    if kind == "layer":
        return nn.LayerNorm(dim, bias=bias)
    if kind == "rms":
        return RMSNorm(dim)
    raise ValueError(f"norm must be one of {NORMS}, not {kind!r}")


class FeedForward(nn.Module):
    """Position-wise feed-forward network ``c_proj(GELU(c_fc(x)))``, ``(B, T, C)`` → ``(B, T, C)``.

    The hidden width is ``hidden`` (classically ``4 C``).
    """

    def __init__(self, n_embd: int, hidden: int, *, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.act = nn.GELU()
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., C)`` to ``(..., C)``."""
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class SwiGLU(nn.Module):
    r"""Gated feed-forward network of Shazeer (2020):
    :math:`W_2\,(\mathrm{SiLU}(W_g x) \odot W_u x)`, ``(B, T, C)`` → ``(B, T, C)``.

    It has three matrices instead of two; a hidden width of about ``(2/3)·4C`` keeps the
    parameter count of a GELU MLP of width ``4C``.
    """

    def __init__(self, n_embd: int, hidden: int, *, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=bias)
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., C)`` to ``(..., C)``."""
        return self.dropout(self.c_proj(nn.functional.silu(self.gate(x)) * self.up(x)))


def swiglu_hidden(n_embd: int) -> int:
    """Hidden width of a :class:`SwiGLU` for model width ``C``: ``8C/3`` rounded up to a multiple
    of 8, so that its three matrices hold about as many weights as a ``4C`` GELU MLP's two."""
    return -(-(8 * n_embd // 3) // 8) * 8


def check_block_config(config: object) -> None:
    """Validate the fields a Transformer config shares (``vocab_size``, ``block_size``,
    ``n_layer``, ``n_head``, ``n_embd``, ``norm``, ``mlp``, ``rope``, ``dropout``); raise
    ``ValueError`` naming the first bad one."""
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value = getattr(config, name)
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    n_embd, n_head = config.n_embd, config.n_head  # type: ignore[attr-defined]
    if n_embd % n_head != 0:
        raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
    if getattr(config, "rope", False) and (n_embd // n_head) % 2 != 0:
        raise ValueError("rope needs an even head width n_embd / n_head")
    if config.norm not in NORMS:  # type: ignore[attr-defined]
        raise ValueError(f"norm must be one of {NORMS}, not {config.norm!r}")  # type: ignore[attr-defined]
    if config.mlp not in MLPS:  # type: ignore[attr-defined]
        raise ValueError(f"mlp must be one of {MLPS}, not {config.mlp!r}")  # type: ignore[attr-defined]
    dropout = getattr(config, "dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def make_mlp(kind: str, n_embd: int, *, bias: bool = True, dropout: float = 0.0) -> nn.Module:
    """``"gelu"`` → :class:`FeedForward` of width ``4C``; ``"swiglu"`` → :class:`SwiGLU` of width
    ``8C/3`` rounded up to a multiple of 8 (about the same parameter count)."""
    if kind == "gelu":
        return FeedForward(n_embd, 4 * n_embd, bias=bias, dropout=dropout)
    if kind == "swiglu":
        return SwiGLU(n_embd, swiglu_hidden(n_embd), bias=bias, dropout=dropout)
    raise ValueError(f"mlp must be one of {MLPS}, not {kind!r}")


class TransformerBlock(nn.Module):
    """One Transformer block: self-attention and a feed-forward network, each in a residual branch.

    * pre-norm (``norm_first=True``, GPT-2 and later):
      ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``
    * post-norm (``norm_first=False``, the original Transformer):
      ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``

    Input and output ``(B, T, C)``. ``causal=True`` makes it a decoder block (no position sees a
    later one); ``causal=False`` an encoder block (bidirectional).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        causal: bool = False,
        norm_first: bool = True,
        norm: str = "layer",
        mlp: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = make_norm(norm, n_embd, bias)
        self.attn = MultiHeadAttention(n_embd, n_head, bias=bias, dropout=dropout, causal=causal)
        self.norm2 = make_norm(norm, n_embd, bias)
        self.mlp = make_mlp(mlp, n_embd, bias=bias, dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        kv: LayerKV | None = None,
    ) -> torch.Tensor:
        """Map ``x (B, T, C)`` to ``(B, T, C)``; ``key_padding_mask (B, T)`` is ``True`` for
        real tokens; ``rope`` optionally rotates queries and keys; ``kv`` is this layer's
        key/value cache (see :meth:`MultiHeadAttention.forward`)."""
        if self.norm_first:
            x = x + self.attn(self.norm1(x), key_padding_mask, rope, kv)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, key_padding_mask, rope, kv))
        return self.norm2(x + self.mlp(x))


def block_stack(config: Any, *, causal: bool) -> nn.ModuleList:
    """``config.n_layer`` pre-norm :class:`TransformerBlock` s of the config's width, heads,
    norm, MLP, bias and dropout; ``causal`` for a decoder."""
    c = config
    return nn.ModuleList(
        TransformerBlock(
            c.n_embd, c.n_head, causal=causal, norm_first=True, norm=c.norm, mlp=c.mlp,
            bias=c.bias, dropout=c.dropout,
        )
        for _ in range(c.n_layer)
    )


@dataclass
class TransformerEncoderConfig:
    """Architecture of a :class:`TransformerEncoder`.

    Attributes:
        vocab_size: number of input token ids.
        block_size: longest sequence (size of the learned position table).
        n_layer, n_head, n_embd: depth, heads per block, model width.
        n_out: outputs per position (``0``: same as ``vocab_size``).
        dropout: dropout probability in attention, MLP and after the embeddings.
        bias: biases in linear layers and layer norms.
        norm: ``"layer"`` or ``"rms"``.
        mlp: ``"gelu"`` or ``"swiglu"``.
        rope: rotary position embeddings instead of a learned position table.
    """

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_out: int = 0
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layer"
    mlp: str = "gelu"
    rope: bool = False

    def __post_init__(self) -> None:
        check_block_config(self)


class TransformerEncoder(nn.Module):
    """A bidirectional pre-norm Transformer that labels every position of a token sequence.

    ``idx (B, T)`` of token ids → logits ``(B, T, n_out)``.
    """

    config_class = TransformerEncoderConfig

    def __init__(self, config: TransformerEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos_emb = None if c.rope else nn.Embedding(c.block_size, c.n_embd)
        self.rope = RotaryEmbedding(c.n_embd // c.n_head, c.block_size) if c.rope else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = block_stack(c, causal=False)
        self.norm = make_norm(c.norm, c.n_embd, c.bias)
        self.head = nn.Linear(c.n_embd, c.n_out or c.vocab_size, bias=c.bias)

    def forward(
        self, idx: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map token ids ``(B, T)`` (``key_padding_mask (B, T)``, ``True`` = real) to logits
        ``(B, T, n_out)``."""
        check_ids(idx, self.config.vocab_size, self.config.block_size)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, key_padding_mask, self.rope)
        return self.head(self.norm(x))


def check_ids(idx: torch.Tensor, vocab_size: int, block_size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``idx`` is an integer ``(B, T)`` tensor with every id in
    ``[0, vocab_size)`` and, if ``block_size`` is given, ``T <= block_size``."""
    if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"expected token ids (B, T) of integers (int64 or int32), got {idx.dtype} "
            f"{tuple(idx.shape)}"
        )
    if block_size is not None and idx.shape[1] > block_size:
        raise ValueError(
            f"sequence length {idx.shape[1]} exceeds block_size={block_size}; crop the input"
        )
    # Reading min/max waits for the device and breaks a compiled graph: checked eagerly only.
    if torch.compiler.is_compiling():
        return
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got min {int(idx.min())}, "
            f"max {int(idx.max())}"
        )
