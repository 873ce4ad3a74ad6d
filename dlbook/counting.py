r"""Closed-form parameter counts for the layers of the book (section 3.6).

Every function returns the number of *trainable parameters*, i.e. what
``sum(p.numel() for p in module.parameters())`` reports for the matching PyTorch (or
``dlbook.nn``) module. Buffers such as batch norm's running statistics or RoPE's cos/sin tables
are state, not parameters, and are never counted. Symbols: ``b`` is 1 when the layer has biases
and 0 otherwise; ``C`` is a model width, ``V`` a vocabulary size, ``T`` a context length, ``L``
a number of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from dlbook.config import check_int
from dlbook.nn.transformer import swiglu_hidden

RNN_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
NORM_KINDS = ("layer", "batch", "rms")
MLP_KINDS = ("gelu", "swiglu")
BREAKDOWN_KEYS = ("token embedding", "position embedding", "attention", "mlp", "norms", "head")


def _positive(**values: Any) -> None:
    for name, value in values.items():
        check_int(name, value)


def linear_params(in_features: int, out_features: int, bias: bool = True) -> int:
    r"""``nn.Linear(in_features, out_features, bias)``: :math:`d_{out} d_{in} + b\, d_{out}`."""
    _positive(in_features=in_features, out_features=out_features)
    return out_features * in_features + (out_features if bias else 0)


def mlp_params(
    in_features: int, hidden: Sequence[int], out_features: int, bias: bool = True
) -> int:
    r"""A stack of linear layers of sizes ``in_features, *hidden, out_features`` (the
    :class:`dlbook.nn.mlp.MLP`): :math:`\sum_{l} (d_{l-1} d_l + b\, d_l)`."""
    sizes = [in_features, *hidden, out_features]
    return sum(linear_params(a, c, bias) for a, c in zip(sizes[:-1], sizes[1:], strict=True))


def conv2d_params(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    groups: int = 1,
    bias: bool = True,
) -> int:
    r"""``nn.Conv2d(in_channels, out_channels, kernel_size, groups=groups, bias=bias)``:

    .. math:: C_{out} \cdot \frac{C_{in}}{g} \cdot k_h k_w + b\, C_{out}

    Each of the ``g`` groups maps ``C_in / g`` input channels to ``C_out / g`` output channels;
    ``g = C_in = C_out`` is a depthwise convolution. Stride, padding and dilation do not change
    the count.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    _positive(in_channels=in_channels, out_channels=out_channels, kh=kh, kw=kw, groups=groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
        )
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def embedding_params(num_embeddings: int, embedding_dim: int) -> int:
    r"""``nn.Embedding(num_embeddings, embedding_dim)``: a table of :math:`V \cdot C` numbers."""
    _positive(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
    return num_embeddings * embedding_dim


def rnn_params(
    kind: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bias: bool = True,
    bidirectional: bool = False,
) -> int:
    r"""``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` with ``kind`` = ``"rnn"`` / ``"gru"`` / ``"lstm"``.

    With ``G`` gates (1, 3, 4), hidden size ``H``, ``s`` directions (1 or 2) and input size
    ``D_l`` of layer ``l`` (``D_1 = D``, ``D_l = sH`` above):

    .. math:: s \sum_{l=1}^{L} \big(G H (D_l + H) + 2 b\, G H\big)

    PyTorch keeps *two* bias vectors per gate (``b_ih`` and ``b_hh``), hence the ``2``.
    """
    if kind not in RNN_GATES:
        raise ValueError(f"kind must be one of {sorted(RNN_GATES)}, not {kind!r}")
    _positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
    g, h, s = RNN_GATES[kind], hidden_size, 2 if bidirectional else 1
    total = 0
    for layer in range(num_layers):
        d = input_size if layer == 0 else s * h
        total += s * (g * h * (d + h) + (2 * g * h if bias else 0))
    return total


def attention_params(
    embed_dim: int, bias: bool = True, kdim: int | None = None, vdim: int | None = None
) -> int:
    r"""Multi-head attention: ``nn.MultiheadAttention(embed_dim, num_heads, bias=bias, kdim,
    vdim)`` or :class:`dlbook.nn.attention.MultiHeadAttention` (``kdim = vdim = C``):

    .. math:: C (C + d_k + d_v) + C^2 + 4 b\, C \;\overset{d_k = d_v = C}{=}\; 4C^2 + 4bC

    The number of heads does not appear: the heads split the width ``C`` among themselves.
    """
    kdim = embed_dim if kdim is None else kdim
    vdim = embed_dim if vdim is None else vdim
    _positive(embed_dim=embed_dim, kdim=kdim, vdim=vdim)
    c = embed_dim
    return c * (c + kdim + vdim) + c * c + (4 * c if bias else 0)


def norm_params(kind: str, dim: int, affine: bool = True, bias: bool = True) -> int:
    r"""Normalisation layers over ``dim`` features (channels for batch norm).

    * ``"layer"``: ``nn.LayerNorm(dim, elementwise_affine=affine, bias=bias)``: gain and bias,
      :math:`C + bC` (0 without ``affine``);
    * ``"batch"``: ``nn.BatchNorm{1,2,3}d(dim, affine=affine)``: :math:`2C` (0 without
      ``affine``); the running mean and variance are *buffers*, not parameters;
    * ``"rms"``: :class:`dlbook.nn.transformer.RMSNorm` or ``nn.RMSNorm``: a gain only, :math:`C`.
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"kind must be one of {NORM_KINDS}, not {kind!r}")
    _positive(dim=dim)
    if not affine:
        return 0
    if kind == "layer":
        return dim + (dim if bias else 0)
    if kind == "batch":
        return 2 * dim
    return dim


def transformer_block_params(
    n_embd: int, mlp: str = "gelu", norm: str = "layer", bias: bool = True
) -> int:
    r""":class:`dlbook.nn.transformer.TransformerBlock` (two norms, attention, feed-forward).

    With ``h`` the hidden width (``4C`` for GELU, :func:`swiglu_hidden` for SwiGLU):

    .. math::
        \underbrace{4C^2 + 4bC}_{\text{attention}}
        + \underbrace{2Ch + b(h + C)}_{\text{GELU MLP}}
          \text{ or } \underbrace{3Ch + b(2h + C)}_{\text{SwiGLU}}
        + \underbrace{2 \cdot (C + bC) \text{ or } 2C}_{\text{2 LayerNorms or 2 RMSNorms}}

    GPT-2's block (GELU, LayerNorm, biases) has :math:`12C^2 + 13C` parameters.
    """
    if mlp not in MLP_KINDS:
        raise ValueError(f"mlp must be one of {MLP_KINDS}, not {mlp!r}")
    c = n_embd
    if mlp == "gelu":
        h = 4 * c
        ff = 2 * c * h + ((h + c) if bias else 0)
    else:
        h = swiglu_hidden(c)
        ff = 3 * c * h + ((2 * h + c) if bias else 0)
    return attention_params(c, bias) + ff + 2 * norm_params(norm, c, bias=bias)


def gpt_params(config: Any, tied: bool = True) -> int:
    r"""A :class:`dlbook.nn.gpt.GPT` with ``config`` (a ``GPTConfig``):

    .. math::
        \underbrace{VC}_{\text{tokens}} + \underbrace{[\text{no RoPE}]\, TC}_{\text{positions}}
        + L \cdot \text{block}(C) + \underbrace{C + bC}_{\text{final norm}}
        + \underbrace{[\text{untied}]\, VC}_{\text{output layer}}

    The output layer has no bias; with weight tying (the library's GPT always ties) it reuses
    the token table and adds nothing. ``tied=False`` counts the model with a separate output
    matrix. RoPE has no parameters.
    """
    for name in ("vocab_size", "block_size", "n_layer", "n_embd", "rope", "norm", "mlp", "bias"):
        if not hasattr(config, name):
            raise ValueError(f"config needs a {name!r} attribute (a GPTConfig), got {config!r}")
    v, t, n_layer, c = config.vocab_size, config.block_size, config.n_layer, config.n_embd
    _positive(vocab_size=v, block_size=t, n_layer=n_layer, n_embd=c)
    total = embedding_params(v, c)
    if not config.rope:
        total += embedding_params(t, c)
    total += n_layer * transformer_block_params(c, config.mlp, config.norm, config.bias)
    total += norm_params(config.norm, c, bias=config.bias)
    if not tied:
        total += v * c
    return total


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Group the parameters of a GPT-style model (:class:`dlbook.nn.gpt.GPT` or
    :class:`dlbook.nn.transformer.TransformerEncoder`) by kind.

    Returns a dict with the keys ``token embedding``, ``position embedding``, ``attention``,
    ``mlp``, ``norms`` and ``head`` (in that order) whose values sum to the model's parameter
    count. A tied output layer shares the token table, so it is counted once, as the embedding;
    ``head`` counts only an untied output layer.

    Raises:
        ValueError: a parameter whose name matches none of the kinds.
    """
    out = dict.fromkeys(BREAKDOWN_KEYS, 0)
    for name, p in model.named_parameters():  # shared (tied) tensors are listed once
        if name.startswith(("wte.", "wtt.")):  # token and token-type (segment) tables
            key = "token embedding"
        elif name.startswith("wpe."):
            key = "position embedding"
        elif ".attn." in name:
            key = "attention"
        elif ".mlp." in name:
            key = "mlp"
        elif "norm" in name or name.startswith("ln_f."):
            key = "norms"
        elif name.startswith(("lm_head.", "head.")):
            key = "head"
        else:
            raise ValueError(f"param_breakdown does not know where parameter {name!r} belongs")
        out[key] += p.numel()
    return out
