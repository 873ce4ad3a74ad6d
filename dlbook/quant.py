"""Weight quantisation from scratch: absmax int8 and block-wise 4-bit NormalFloat (NF4).

Two schemes, both *weight-only*: the quantised weight is stored in few bits and turned back into
floating point ("dequantised") inside ``forward``, where the matrix product runs at the input's
precision.

* **absmax int8** (the building block of LLM.int8(), Dettmers et al. 2022): scale a tensor (or
  each row of it) so its largest magnitude maps to 127, round to integers in ``[-127, 127]``.
* **NF4** (QLoRA, Dettmers et al. 2023): cut the flattened weight into blocks of 64, divide each
  block by its absmax, and round every value to the nearest of 16 levels placed at quantiles of
  the standard normal distribution (:func:`nf4_code`). Two 4-bit codes share a byte. With
  **double quantisation** the 32-bit per-block absmax constants are themselves quantised to
  8 bits in blocks of 256, which brings the cost from 4.5 to about 4.127 bits per parameter.

Shapes: a weight is ``(out_features, in_features)``; ``N`` is its number of elements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NF4_BLOCK = 64  # QLoRA's block size for the weights
DQ_BLOCK = 256  # QLoRA's block size for the second quantisation of the absmax constants

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_float(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(
            f"{what} must be a floating-point tensor (float32/float16/bfloat16/float64), got "
            f"{x.dtype}; convert it with .float() first"
        )
    if x.numel() == 0:
        raise ValueError(f"{what} is empty; there is nothing to quantise")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or inf; absmax scaling needs finite values")


# --------------------------------------------------------------------------------------------
# absmax int8
# --------------------------------------------------------------------------------------------


def absmax_quantize(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantisation to int8: ``q = round(127 · x / absmax)``.

    Args:
        x: floating-point tensor of any shape.
        dim: ``None`` for one scale for the whole tensor (per-tensor); an axis to take the
            absmax along, giving one scale per slice (``dim=-1`` on a ``(out, in)`` weight is
            per-row, i.e. per output channel).

    Returns:
        ``(q, absmax)``: ``q`` int8 with the shape of ``x``; ``absmax`` float32, a scalar tensor
        (per-tensor) or ``x``'s shape with ``dim`` of size 1. ``x ≈ q · absmax / 127`` with an
        error of at most ``absmax / 254`` per element.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``x`` is empty or not finite.
    """
    _check_float(x, "absmax_quantize: x")
    x = x.float()
    absmax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    # An all-zero slice has absmax 0: divide by 1 instead; its codes are 0 and dequantise to 0.
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    q = torch.round(x * (127.0 / safe)).clamp_(-127, 127).to(torch.int8)
    return q, absmax


def absmax_dequantize(q: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Invert :func:`absmax_quantize`: ``q (…) int8`` and its ``absmax`` → float32 ``(…)``.

    Raises:
        TypeError: ``q`` is not int8.
    """
    if q.dtype != torch.int8:
        raise TypeError(f"absmax_dequantize: q must be int8, got {q.dtype}")
    return q.float() * (absmax.float() / 127.0)


# --------------------------------------------------------------------------------------------
# NF4: the code book, packing, block-wise quantisation, double quantisation
# --------------------------------------------------------------------------------------------


def nf4_code() -> torch.Tensor:
    """The 16 levels of 4-bit NormalFloat, sorted, in ``[-1, 1]``: shape ``(16,)`` float32.

    Built as in QLoRA (appendix E) and bitsandbytes' ``create_normal_map``: 8 positive levels at
    the standard-normal quantiles of ``linspace(δ, 1/2, 9)[:-1]`` and 7 negative ones at minus
    the quantiles of ``linspace(δ, 1/2, 8)[:-1]``, plus an exact zero, all divided by the largest.
    The top probability ``δ = 0.9677083`` (bitsandbytes' constant, ``1 - (1/30 + 1/32)/2`` to
    seven digits) keeps the extreme quantiles finite: the quantile of 1 is infinite. The
    asymmetry (one more positive level) buys an exact zero, which zero weights and padding need.
    """
    from scipy.stats import norm  # scipy ships with scikit-learn, a dependency of the book

    # bitsandbytes' constant; 1 - (1/30 + 1/32)/2 = 0.96770833… unrounded would move the levels
    # by ~3e-7, so we keep the rounded one and the table matches the published one exactly.
    delta = 0.9677083
    # As bitsandbytes: float32 linspace, float64 quantiles, float32 normalisation.
    pos = norm.ppf(torch.linspace(delta, 0.5, 9)[:-1].double().numpy())
    neg = -norm.ppf(torch.linspace(delta, 0.5, 8)[:-1].double().numpy())
    values = torch.tensor([*pos, 0.0, *neg], dtype=torch.float32).sort().values
    return values / values.max()


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte: ``codes (N,)`` uint8 in ``[0, 15]``, ``N`` even →
    ``(N/2,)`` uint8, the first code of each pair in the high nibble (bitsandbytes' order).

    Raises:
        TypeError: ``codes`` is not uint8.
        ValueError: a code is above 15, or ``N`` is odd.
    """
    if codes.dtype != torch.uint8:
        raise TypeError(f"pack_4bit: codes must be uint8, got {codes.dtype}")
    codes = codes.reshape(-1)
    if codes.numel() % 2:
        raise ValueError(f"pack_4bit: need an even number of codes, got {codes.numel()}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"pack_4bit: codes must lie in [0, 15], found {int(codes.max())}")
    pairs = codes.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """Invert :func:`pack_4bit`: ``packed (M,)`` uint8 → codes ``(2M,)`` uint8 in ``[0, 15]``.

    Raises:
        TypeError: ``packed`` is not uint8.
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_4bit: packed must be uint8, got {packed.dtype}")
    packed = packed.reshape(-1)
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)


@dataclass
class DoubleQuantized:
    """Absmax constants ``(n,)`` stored in 8 bits: ``c ≈ q · scale / 127 + offset``.

    The constants are all positive, so their mean is subtracted first (bitsandbytes does the
    same) and the centred values are absmax-quantised in blocks of ``block_size``; a last, shorter
    block is allowed.

    Attributes:
        q: ``(n,)`` int8 codes.
        scale: ``(ceil(n / block_size),)`` float32 absmax of each block.
        offset: ``()`` float32, the mean that was subtracted.
        block_size: constants per second-level block.
    """

    q: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    block_size: int

    @classmethod
    def quantize(cls, c: torch.Tensor, block_size: int = DQ_BLOCK) -> DoubleQuantized:
        """Quantise the float32 constants ``c (n,)``."""
        _check_float(c, "DoubleQuantized.quantize: c")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        c = c.float().reshape(-1)
        offset = c.mean()
        centred = c - offset
        n = c.numel()
        pad = (-n) % block_size  # zeros in the last block change neither its absmax nor codes
        blocks = F.pad(centred, (0, pad)).view(-1, block_size)
        q, scale = absmax_quantize(blocks, dim=1)
        return cls(q.reshape(-1)[:n].clone(), scale.reshape(-1), offset, block_size)

    def dequantize(self) -> torch.Tensor:
        """The constants, float32 ``(n,)``."""
        scale = self.scale.repeat_interleave(self.block_size)[: self.q.numel()]
        return self.q.float() * (scale / 127.0) + self.offset

    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.offset))


@dataclass
class NF4Tensor:
    """A weight stored as block-wise NF4: the output of :func:`quantize_nf4`.

    Attributes:
        packed: ``(N/2,)`` uint8, two 4-bit indices into :func:`nf4_code` per byte.
        absmax: ``(N/block_size,)`` float32 per-block absmax, or a :class:`DoubleQuantized`.
        shape: the original shape.
        block_size: elements per block.
        dtype: the original dtype, restored by :meth:`dequantize`.
    """

    packed: torch.Tensor
    absmax: torch.Tensor | DoubleQuantized
    shape: tuple[int, ...]
    block_size: int
    dtype: torch.dtype = torch.float32

    def block_absmax(self) -> torch.Tensor:
        """The per-block absmax as float32 ``(N/block_size,)`` (dequantised if stored in 8 bits)."""
        if isinstance(self.absmax, DoubleQuantized):
            return self.absmax.dequantize()
        return self.absmax

    def dequantize(self) -> torch.Tensor:
        """The weight back in floating point, with the original shape and dtype."""
        # One gather from a 256-entry table of (high, low) level pairs decodes a byte at a time,
        # the same result as code[unpack_4bit(packed)] with one pass over the data fewer.
        pairs = _nf4_pair_table(self.packed.device)  # (256, 2)
        values = pairs.index_select(0, self.packed.int()).view(-1, self.block_size)
        w = values * self.block_absmax().unsqueeze(1)
        return w.view(self.shape).to(self.dtype)

    def numel(self) -> int:
        """Number of weight elements ``N``."""
        return math.prod(self.shape)

    def nbytes(self) -> int:
        """Bytes of all stored tensors: codes plus constants."""
        a = self.absmax
        n_abs = a.nbytes() if isinstance(a, DoubleQuantized) else a.numel() * a.element_size()
        return self.packed.numel() * self.packed.element_size() + n_abs

    def bits_per_param(self) -> float:
        """Stored bits per weight element, from the actual tensors (4.5 plain, ≈4.127 double)."""
        return 8 * self.nbytes() / self.numel()


_CODE_CACHE: dict[torch.device, torch.Tensor] = {}


def nf4_code_cached(device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`nf4_code` on ``device``, computed once per device (forward passes call this)."""
    device = torch.device(device)
    if device not in _CODE_CACHE:
        _CODE_CACHE[device] = nf4_code().to(device)
    return _CODE_CACHE[device]


_PAIR_CACHE: dict[torch.device, torch.Tensor] = {}


def _nf4_pair_table(device: torch.device) -> torch.Tensor:
    """``(256, 2)`` float32: row ``b`` holds the levels of byte ``b``'s high and low nibble."""
    if device not in _PAIR_CACHE:
        code = nf4_code_cached(device)
        _PAIR_CACHE[device] = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)
    return _PAIR_CACHE[device]


def quantize_nf4(
    w: torch.Tensor,
    block_size: int = NF4_BLOCK,
    double_quant: bool = True,
    dq_block_size: int = DQ_BLOCK,
) -> NF4Tensor:
    """Block-wise NF4 quantisation of a weight ``w`` (any shape, ``N`` elements).

    The flattened weight is cut into ``N / block_size`` blocks; each block is divided by its
    absmax and every value is replaced by the index of the nearest NF4 level, so that
    ``dequantize()`` returns ``code[index] · absmax`` for each element.

    Raises:
        TypeError: ``w`` is not a floating-point tensor.
        ValueError: ``block_size`` does not divide ``N`` (or is odd), or ``w`` is not finite.
    """
    _check_float(w, "quantize_nf4: w")
    n = w.numel()
    if block_size < 2 or block_size % 2:
        raise ValueError(f"quantize_nf4: block_size must be an even number >= 2, got {block_size}")
    if n % block_size:
        raise ValueError(
            f"quantize_nf4: block_size={block_size} does not divide the {n} elements of a weight "
            f"of shape {tuple(w.shape)}; pick a block size that divides it or skip this layer"
        )
    blocks = w.detach().float().reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1)  # (N / block_size,)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = blocks / safe.unsqueeze(1)  # in [-1, 1]
    code = nf4_code_cached(w.device)
    # Nearest level = number of midpoints between consecutive levels that lie below the value.
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.bucketize(normed, mids).to(torch.uint8)
    packed = pack_4bit(idx.reshape(-1))
    stored: torch.Tensor | DoubleQuantized = (
        DoubleQuantized.quantize(absmax, dq_block_size) if double_quant else absmax
    )
    return NF4Tensor(packed, stored, tuple(w.shape), block_size, w.dtype)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def _check_linear(linear: nn.Module, who: str) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{who} quantises an nn.Linear, got {type(linear).__name__}")


class _DequantizingLinear(nn.Module):
    """A frozen linear layer kept quantised in buffers and de-quantised on every call.

    Subclasses store their weight as buffers (plus ``bias``, or ``None``) and define
    ``dequantized_weight() -> (out_features, in_features)``.
    """

    bias: torch.Tensor | None

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def nbytes(self) -> int:
        """Bytes of the stored buffers: quantised weight, its constants and the bias."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


class Int8Linear(_DequantizingLinear):
    """A frozen linear layer whose weight is stored as int8 with one absmax per output row.

    ``forward(x (…, in_features)) → (…, out_features)`` dequantises the weight to ``x``'s dtype
    and calls ``F.linear``; the bias (if any) stays in floating point. Nothing here trains: the
    weight and scales are buffers, so an optimiser never sees them (LoRA adapts around them).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        _check_linear(linear, "Int8Linear")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, absmax = absmax_quantize(linear.weight.detach(), dim=1)
        self.register_buffer("qweight", q)  # (out, in) int8
        self.register_buffer("absmax", absmax)  # (out, 1) float32
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight in float32, ``(out_features, in_features)``."""
        return absmax_dequantize(self.qweight, self.absmax)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


class NF4Linear(_DequantizingLinear):
    """A frozen linear layer whose weight is stored as block-wise NF4 (the QLoRA base layer).

    ``forward(x (…, in_features)) → (…, out_features)`` dequantises the whole weight (4-bit codes
    × per-block absmax) to ``x``'s dtype and calls ``F.linear``: the memory saving is in storage,
    not in compute, which on a CPU is *slower* than a plain float layer. The bias stays in
    floating point. All tensors are buffers (moved by ``.to()``, saved in ``state_dict``).
    """

    def __init__(
        self,
        linear: nn.Linear,
        block_size: int = NF4_BLOCK,
        double_quant: bool = True,
        dq_block_size: int = DQ_BLOCK,
    ) -> None:
        super().__init__()
        _check_linear(linear, "NF4Linear")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.double_quant, self.dq_block_size = (
            block_size, double_quant, dq_block_size,
        )
        t = quantize_nf4(linear.weight.detach(), block_size, double_quant, dq_block_size)
        self.weight_dtype = t.dtype
        self.register_buffer("packed", t.packed)
        if isinstance(t.absmax, DoubleQuantized):
            self.register_buffer("absmax_q", t.absmax.q)
            self.register_buffer("absmax_scale", t.absmax.scale)
            self.register_buffer("absmax_offset", t.absmax.offset)
        else:
            self.register_buffer("absmax", t.absmax)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def nf4(self) -> NF4Tensor:
        """The stored weight as an :class:`NF4Tensor` (views of this module's buffers)."""
        absmax: torch.Tensor | DoubleQuantized
        if self.double_quant:
            absmax = DoubleQuantized(
                self.absmax_q, self.absmax_scale, self.absmax_offset, self.dq_block_size
            )
        else:
            absmax = self.absmax
        shape = (self.out_features, self.in_features)
        return NF4Tensor(self.packed, absmax, shape, self.block_size, self.weight_dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight in its original dtype, ``(out_features, in_features)``."""
        return self.nf4().dequantize()

    def extra_repr(self) -> str:
        dq = f", double-quantised (block {self.dq_block_size})" if self.double_quant else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"NF4 block {self.block_size}{dq}"
        )


QuantKind = Literal["int8", "nf4"]


def quantize_model(
    model: nn.Module,
    kind: QuantKind,
    skip: Sequence[str] = (),
    **kwargs: object,
) -> list[str]:
    """Replace the ``nn.Linear`` layers of ``model`` in place by :class:`Int8Linear` or
    :class:`NF4Linear` and return the names of the replaced layers.

    Kept in full precision: embeddings (they are lookups, not matrix products), any linear whose
    weight is *tied* to an embedding (a GPT's ``lm_head``: quantising it would also change, or
    duplicate, the embedding table), and every layer whose qualified name contains one of the
    strings in ``skip``. ``kwargs`` go to :class:`NF4Linear` (``block_size``, ``double_quant``).

    Raises:
        ValueError: unknown ``kind``, or no linear layer was left to quantise.
    """
    if kind not in ("int8", "nf4"):
        raise ValueError(f"quantize_model: kind must be 'int8' or 'nf4', got {kind!r}")
    embedding_weights = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    targets = [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Linear
        and id(m.weight) not in embedding_weights
        and not any(s in name for s in skip)
    ]
    if not targets:
        raise ValueError(
            "quantize_model: found no nn.Linear layer to quantise (all skipped or tied to an "
            "embedding); check the skip list"
        )
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        new = Int8Linear(linear) if kind == "int8" else NF4Linear(linear, **kwargs)  # type: ignore[arg-type]
        setattr(parent, child, new.to(linear.weight.device))
    return targets


def weight_nbytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each shared tensor counted once (a tied
    embedding/head is one matrix)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


__all__ = [
    "DQ_BLOCK",
    "NF4_BLOCK",
    "DoubleQuantized",
    "Int8Linear",
    "NF4Linear",
    "NF4Tensor",
    "absmax_dequantize",
    "absmax_quantize",
    "nf4_code",
    "nf4_code_cached",
    "pack_4bit",
    "quantize_model",
    "quantize_nf4",
    "unpack_4bit",
    "weight_nbytes",
]
