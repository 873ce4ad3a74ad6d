"""The Transformer block (section 3.5): normalisation, feed-forward, residual stream, encoder.

Shapes use ``B`` batch, ``T`` sequence length and ``C`` model width (``n_embd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch import nn

from dlbook.config import Dropout, Interval, NonNegativeInt, validate_config
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


def make_norm(kind: str, dim: int, bias: bool = True, eps: float | None = None) -> nn.Module:
    """``"layer"`` → ``nn.LayerNorm(dim)``, ``"rms"`` → :class:`RMSNorm` (never has a bias).

    ``eps`` is added to the variance; ``None`` keeps each norm's default (``1e-5`` for layer
    norm, ``1e-6`` for RMSNorm; BERT uses ``1e-12``).
    """
    if kind == "layer":
        return nn.LayerNorm(dim, bias=bias, eps=1e-5 if eps is None else eps)
    if kind == "rms":
        return RMSNorm(dim, eps=1e-6 if eps is None else eps)
    raise ValueError(f"norm must be one of {NORMS}, not {kind!r}")


class FeedForward(nn.Module):
    r"""Position-wise feed-forward network ``c_proj(GELU(c_fc(x)))``, ``(B, T, C)`` → ``(B, T, C)``.

    The hidden width is ``hidden`` (classically ``4 C``; MiniLM-L6: ``1536 = 4 · 384``). The GELU
    is the exact one, :math:`x\,\Phi(x)` with the normal CDF written through ``erf`` (BERT's;
    GPT-2 used a tanh approximation, which differs by less than ``1e-3``).
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
    """Validate a Transformer config: every field by its annotation
    (:func:`dlbook.config.validate_config`), then what relates fields (heads divide the width,
    an even head width for RoPE); raise ``ValueError`` naming the first bad one."""
    validate_config(config)  # every field by its annotation (dlbook.config)
    n_embd, n_head = config.n_embd, config.n_head  # type: ignore[attr-defined]
    if n_embd % n_head != 0:
        raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
    if getattr(config, "rope", False) and (n_embd // n_head) % 2 != 0:
        raise ValueError("rope needs an even head width n_embd / n_head")


def make_mlp(
    kind: str, n_embd: int, *, bias: bool = True, dropout: float = 0.0, hidden: int | None = None
) -> nn.Module:
    """``"gelu"`` → :class:`FeedForward` of width ``4C``; ``"swiglu"`` → :class:`SwiGLU` of width
    ``8C/3`` rounded up to a multiple of 8 (about the same parameter count). ``hidden`` overrides
    the width."""
    if kind == "gelu":
        return FeedForward(n_embd, hidden or 4 * n_embd, bias=bias, dropout=dropout)
    if kind == "swiglu":
        return SwiGLU(n_embd, hidden or swiglu_hidden(n_embd), bias=bias, dropout=dropout)
    raise ValueError(f"mlp must be one of {MLPS}, not {kind!r}")


class TransformerBlock(nn.Module):
    """One Transformer block: self-attention and a feed-forward network, each in a residual branch.

    * pre-norm (``norm_first=True``, GPT-2 and later):
      ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``
    * post-norm (``norm_first=False``, the original Transformer):
      ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``

    Input and output ``(B, T, C)``. ``causal=True`` makes it a decoder block (no position sees a
    later one); ``causal=False`` an encoder block (bidirectional). ``norm_eps`` is the norms'
    epsilon (``None``: their default) and ``mlp_hidden`` the feed-forward width (``None``: the
    default of :func:`make_mlp`); ``n_kv_head`` the key/value heads of grouped-query attention
    (``None``: ``n_head``, plain multi-head attention).
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
        norm_eps: float | None = None,
        mlp_hidden: int | None = None,
        n_kv_head: int | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = make_norm(norm, n_embd, bias, eps=norm_eps)
        self.attn = MultiHeadAttention(
            n_embd, n_head, n_kv_head=n_kv_head, bias=bias, dropout=dropout, causal=causal
        )
        self.norm2 = make_norm(norm, n_embd, bias, eps=norm_eps)
        self.mlp = make_mlp(mlp, n_embd, bias=bias, dropout=dropout, hidden=mlp_hidden)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        kv: LayerKV | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map ``x (B, T, C)`` to ``(B, T, C)``; ``key_padding_mask (B, T)`` is ``True`` for
        real tokens; ``rope`` optionally rotates queries and keys; ``kv`` is this layer's
        key/value cache; ``segments (B, T)`` labels packed examples (see
        :meth:`MultiHeadAttention.forward`)."""
        if self.norm_first:
            x = x + self.attn(self.norm1(x), key_padding_mask, rope, kv, segments)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, key_padding_mask, rope, kv, segments))
        return self.norm2(x + self.mlp(x))


def block_stack(config: Any, *, causal: bool) -> nn.ModuleList:
    """``config.n_layer`` :class:`TransformerBlock` s of the config's width, heads, norm, MLP,
    bias and dropout; ``causal`` for a decoder. Pre-norm unless the config has
    ``norm_first=False``; its optional ``norm_eps``, ``mlp_hidden`` and ``n_kv_head`` (``0``:
    the default) set the norms' epsilon, the feed-forward width and the key/value heads."""
    c = config
    return nn.ModuleList(
        TransformerBlock(
            c.n_embd, c.n_head, causal=causal, norm_first=getattr(c, "norm_first", True),
            norm=c.norm, mlp=c.mlp, bias=c.bias, dropout=c.dropout,
            norm_eps=getattr(c, "norm_eps", 0.0) or None,
            mlp_hidden=getattr(c, "mlp_hidden", 0) or None,
            n_kv_head=getattr(c, "n_kv_head", 0) or None,
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
        norm_first: pre-norm blocks and a final norm ``ln_f`` (``True``); ``False``: post-norm
            blocks (the original Transformer and BERT), whose last norm ends every block, so
            there is no ``ln_f``.
        type_vocab_size: number of token types (segments) with a learned embedding ``wtt``
            added to every position (BERT: 2, sentence A and B); ``0``: none.
        emb_norm: a norm ``emb_norm`` on the sum of the embeddings (BERT).
        norm_eps: epsilon of every norm; ``0``: the norm's default (BERT: ``1e-12``).
        mlp_hidden: feed-forward width; ``0``: the default of the ``mlp`` kind (``4 C`` for
            ``"gelu"``).
        head: an output layer ``head`` of ``n_out`` units; ``False``: none, and the model
            returns its hidden states (an embedding model such as MiniLM).

    BERT's layout is ``norm_first=False, type_vocab_size=2, emb_norm=True, norm_eps=1e-12``
    with ``mlp="gelu"`` (exact GELU).
    """

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_out: NonNegativeInt = 0
    dropout: Dropout = 0.0
    bias: bool = True
    norm: Literal["layer", "rms"] = "layer"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    rope: bool = False
    norm_first: bool = True
    type_vocab_size: NonNegativeInt = 0
    emb_norm: bool = False
    norm_eps: Annotated[float, Interval("[0, 1)")] = 0.0
    mlp_hidden: NonNegativeInt = 0
    head: bool = True

    def __post_init__(self) -> None:
        check_block_config(self)  # every field by its annotation, then the cross-field rules


class TransformerEncoder(nn.Module):
    """A bidirectional Transformer that labels (or embeds) every position of a token sequence.

    ``idx (B, T)`` of token ids → logits ``(B, T, n_out)`` (or hidden states ``(B, T, C)`` when
    the config has ``head=False``). Its parameter names follow the GPT's: ``wte`` tokens,
    ``wpe`` positions, ``wtt`` token types, ``emb_norm``, ``blocks``, ``ln_f``, ``head``.
    The defaults give a pre-norm encoder; :class:`TransformerEncoderConfig` documents BERT's
    layout.
    """

    config_class = TransformerEncoderConfig

    def __init__(self, config: TransformerEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        eps = c.norm_eps or None
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = None if c.rope else nn.Embedding(c.block_size, c.n_embd)
        self.wtt = nn.Embedding(c.type_vocab_size, c.n_embd) if c.type_vocab_size else None
        self.emb_norm = make_norm(c.norm, c.n_embd, c.bias, eps=eps) if c.emb_norm else None
        self.rope = RotaryEmbedding(c.n_embd // c.n_head, c.block_size) if c.rope else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = block_stack(c, causal=False)
        # A post-norm block already ends in a norm; a second one would only rescale.
        self.ln_f = make_norm(c.norm, c.n_embd, c.bias, eps=eps) if c.norm_first else None
        self.head = nn.Linear(c.n_embd, c.n_out or c.vocab_size, bias=c.bias) if c.head else None

    def hidden_states(
        self,
        idx: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last layer's output ``(B, T, C)`` (after ``ln_f`` where there is one).

        Args:
            idx: token ids ``(B, T)``, ``T <= block_size``.
            key_padding_mask: optional boolean ``(B, T)``, ``True`` for real tokens; no position
                attends to a padded one (padded positions still get some output: ignore it).
            token_type_ids: optional ``(B, T)`` ids in ``[0, type_vocab_size)`` (default all 0);
                only for a config with ``type_vocab_size > 0``.
        """
        c = self.config
        check_ids(idx, c.vocab_size, c.block_size)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        if token_type_ids is not None:
            if self.wtt is None:
                raise ValueError("token_type_ids given, but the config has type_vocab_size=0")
            if token_type_ids.shape != idx.shape:
                raise ValueError(
                    f"token_type_ids must have the shape of idx {tuple(idx.shape)}, got "
                    f"{tuple(token_type_ids.shape)}"
                )
            check_ids(token_type_ids, c.type_vocab_size)
            x = x + self.wtt(token_type_ids)
        elif self.wtt is not None:
            x = x + self.wtt.weight[0]  # every position is of type 0
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, key_padding_mask, self.rope)
        return x if self.ln_f is None else self.ln_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map token ids ``(B, T)`` to logits ``(B, T, n_out)``; without a head (``head=False``)
        to the hidden states ``(B, T, C)``. Arguments as in :meth:`hidden_states`."""
        x = self.hidden_states(idx, key_padding_mask, token_type_ids)
        return x if self.head is None else self.head(x)


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
