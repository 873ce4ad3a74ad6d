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
* **group-wise symmetric int8 / int4** for inference (section 6.4): one absmax scale per
  group of ``group_size`` inputs of each output channel (:func:`quantize_groupwise`), int4
  codes packed two per byte (:func:`pack_int4`), and :func:`int4_matmul`, which multiplies by
  the packed codes group by group and applies each group's scale to the partial sums
  (:class:`Int4Linear`).

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


# --------------------------------------------------------------------------------------------
# Group-wise symmetric int8 / int4 for inference, and an int4 matmul on the packed codes
# --------------------------------------------------------------------------------------------


def _check_group(in_features: int, group_size: int | None, who: str) -> int:
    """The group size to use: ``in_features`` for ``None`` (per output channel)."""
    if group_size is None:
        return in_features
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{who}: group_size must be a positive int or None, got {group_size!r}")
    if in_features % group_size:
        fits = [g for g in (16, 32, 64, 128, 256) if in_features % g == 0]
        raise ValueError(
            f"{who}: group_size={group_size} does not divide in_features={in_features}; pick a "
            f"divisor ({', '.join(map(str, fits)) or 'none of 16…256 fits'}) or None for one "
            f"scale per output channel"
        )
    return group_size


def quantize_groupwise(
    w: torch.Tensor, bits: int = 4, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantisation of a weight with one scale per group of inputs.

    Each row of ``w`` (one output channel) is cut into groups of ``group_size`` consecutive
    inputs; each group gets the scale ``s = absmax / (2^(bits-1) - 1)`` and its values become
    ``q = round(w / s)`` in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` (``[-127, 127]`` for int8,
    ``[-7, 7]`` for int4). Rounding moves each weight by at most ``s / 2``.

    Args:
        w: ``(out_features, in_features)`` floating-point weight.
        bits: 2 to 8.
        group_size: inputs per scale; ``None`` for one scale per output channel (per row).

    Returns:
        ``(q, scales)``: ``q`` int8 ``(out, in)``; ``scales`` float32 ``(out, in / group_size)``.
        ``dequantize_groupwise(q, scales) ≈ w``.

    Raises:
        TypeError: ``w`` is not a floating-point tensor.
        ValueError: ``w`` is not 2-D, ``bits`` outside ``[2, 8]``, or ``group_size`` does not
            divide ``in_features``.
    """
    _check_float(w, "quantize_groupwise: w")
    if w.dim() != 2:
        raise ValueError(f"quantize_groupwise: w must be (out, in), got shape {tuple(w.shape)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"quantize_groupwise: bits must be an int in [2, 8], got {bits!r}")
    out_f, in_f = w.shape
    g = _check_group(in_f, group_size, "quantize_groupwise")
    qmax = 2 ** (bits - 1) - 1
    groups = w.detach().float().reshape(out_f, in_f // g, g)
    absmax = groups.abs().amax(dim=-1, keepdim=True)  # (out, G, 1)
    # As absmax_quantize: multiply by qmax / absmax (the same float rounding, so per-channel
    # int8 gives exactly its codes); an all-zero group gets codes 0.
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    q = torch.round(groups * (qmax / safe)).clamp_(-qmax, qmax).to(torch.int8)
    return q.reshape(out_f, in_f), (absmax / qmax).squeeze(-1)


def dequantize_groupwise(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Invert :func:`quantize_groupwise`: ``q (out, in)`` int8 and ``scales (out, G)`` →
    float32 ``(out, in)``, every group's codes times its scale.

    Raises:
        TypeError: ``q`` is not int8.
        ValueError: the shapes do not fit (``G`` must divide ``in``).
    """
    if q.dtype != torch.int8:
        raise TypeError(f"dequantize_groupwise: q must be int8, got {q.dtype}")
    if q.dim() != 2 or scales.dim() != 2 or scales.shape[0] != q.shape[0] or (
        scales.shape[1] < 1 or q.shape[1] % scales.shape[1]
    ):
        raise ValueError(
            f"dequantize_groupwise: q {tuple(q.shape)} and scales {tuple(scales.shape)} do not "
            f"fit: expected q (out, in) and scales (out, G) with G >= 1 dividing in"
        )
    out_f, in_f = q.shape
    n_groups = scales.shape[1]
    w = q.float().view(out_f, n_groups, in_f // n_groups) * scales.float().unsqueeze(-1)
    return w.view(out_f, in_f)


INT4_OFFSET = 8  # int4 codes in [-7, 7] are stored as unsigned nibbles q + 8 in [1, 15]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack signed int4 codes ``q (out, in)`` int8 in ``[-7, 7]`` two per byte →
    ``(out, in / 2)`` uint8 (nibble ``q + 8``; see :func:`pack_4bit` for the order).

    Raises:
        TypeError: ``q`` is not int8.
        ValueError: ``q`` is not 2-D with an even number of columns, or a code is outside
            ``[-7, 7]``.
    """
    if q.dtype != torch.int8:
        raise TypeError(f"pack_int4: q must be int8, got {q.dtype}")
    if q.dim() != 2 or q.shape[1] % 2:
        raise ValueError(f"pack_int4: q must be (out, in) with in even, got {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < -7 or int(q.max()) > 7):
        raise ValueError("pack_int4: codes must lie in [-7, 7]")
    return pack_4bit((q + INT4_OFFSET).to(torch.uint8)).view(q.shape[0], q.shape[1] // 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Invert :func:`pack_int4`: ``(out, in / 2)`` uint8 → int8 codes ``(out, in)``."""
    if packed.dim() != 2:
        raise ValueError(f"unpack_int4: packed must be (out, in/2), got {tuple(packed.shape)}")
    codes = unpack_4bit(packed).view(packed.shape[0], 2 * packed.shape[1])
    return codes.to(torch.int8) - INT4_OFFSET


_INT4_PAIRS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _int4_pair_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(256, 2)``: row ``b`` holds the signed codes of byte ``b``'s high and low nibble."""
    key = (device, dtype)
    if key not in _INT4_PAIRS:
        b = torch.arange(256, device=device)
        _INT4_PAIRS[key] = (torch.stack([b >> 4, b & 0x0F], dim=1) - INT4_OFFSET).to(dtype)
    return _INT4_PAIRS[key]


def int4_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ Ŵᵀ (+ bias)`` for a group-wise int4 weight ``Ŵ``, computed on the codes.

    The scale is constant within a group, so it can leave the sum over that group's inputs:
    ``y[n, o] = Σ_g s[o, g] · (Σ_{k in g} x[n, k] · q[o, k])``. The inner sums are one batched
    matrix product of the input's groups with the integer codes (unpacked from the nibbles,
    never multiplied by their scales); the scales then weight the ``G`` partial results. This
    equals dequantise-then-matmul up to float rounding (the sums are reordered).

    Args:
        x: ``(…, in_features)`` floating point.
        packed: ``(out_features, in_features / 2)`` uint8 from :func:`pack_int4`.
        scales: ``(out_features, G)`` float, ``G`` dividing ``in_features``.
        bias: optional ``(out_features,)``.

    Returns:
        ``(…, out_features)`` in ``x``'s dtype.

    Raises:
        TypeError: ``x`` is not floating point, or ``packed`` is not uint8.
        ValueError: the shapes do not fit.
    """
    # dtype only: a finiteness check would scan x on every call of every layer
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS:
        raise TypeError(
            f"int4_matmul: x must be a floating-point tensor, got "
            f"{getattr(x, 'dtype', type(x).__name__)}; convert it with .float() first"
        )
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(
            f"int4_matmul: packed must be a 2-D uint8 tensor, got {packed.dtype} "
            f"{tuple(packed.shape)}"
        )
    out_f, in_f = packed.shape[0], 2 * packed.shape[1]
    if x.shape[-1] != in_f:
        raise ValueError(
            f"int4_matmul: x has {x.shape[-1]} features in its last dimension, the weight "
            f"expects in_features={in_f}"
        )
    if (scales.dim() != 2 or scales.shape[0] != out_f or scales.shape[1] < 1
            or in_f % scales.shape[1]):
        raise ValueError(
            f"int4_matmul: scales must be (out_features={out_f}, G) with G >= 1 dividing {in_f}, "
            f"got {tuple(scales.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_f,):
        raise ValueError(f"int4_matmul: bias must be ({out_f},), got {tuple(bias.shape)}")
    n_groups = scales.shape[1]
    g = in_f // n_groups
    lead = x.shape[:-1]
    # unpack with one gather from a 256-row table of (high, low) codes: the same values as
    # unpack_int4(packed).to(x.dtype), in fewer passes over the weight
    table = _int4_pair_table(packed.device, x.dtype)
    codes = table.index_select(0, packed.reshape(-1).int())  # (O · in / 2, 2)
    codes = codes.view(out_f, n_groups, g).permute(1, 2, 0)  # (G, g, O)
    xg = x.reshape(-1, n_groups, g).transpose(0, 1)  # (G, N, g)
    partial = torch.bmm(xg, codes)  # (G, N, O): Σ_k x·q within each group
    y = (partial * scales.to(x.dtype).t().unsqueeze(1)).sum(0)  # (N, O)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.view(*lead, out_f)


class Int4Linear(_DequantizingLinear):
    """A frozen linear layer with a weight-only, group-wise symmetric int4 weight.

    Stores ``packed`` ``(out, in / 2)`` uint8 (two codes per byte), ``scales`` ``(out, G)``
    float32 and the float ``bias``: ``4 + 32 / group_size`` bits per weight.
    ``forward(x (…, in)) → (…, out)`` de-quantises ``Ŵ`` and multiplies, like the other
    de-quantising layers: :func:`int4_matmul` gives the same result (to float rounding) but
    holds per-group partial sums ``G`` times the size of the output, a lot of memory for
    inputs of many rows (its speed relative to this layer is not measured here).

    Raises:
        TypeError: ``linear`` is not an ``nn.Linear``.
        ValueError: ``group_size`` does not divide ``in_features`` (or is odd; with
            ``group_size=None``, per output channel, ``in_features`` must be even).
    """

    def __init__(self, linear: nn.Linear, group_size: int | None = 128) -> None:
        super().__init__()
        _check_linear(linear, "Int4Linear")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        g = _check_group(self.in_features, group_size, "Int4Linear")
        if g % 2:
            if group_size is None:
                raise ValueError(
                    f"Int4Linear: per-channel mode (group_size=None) uses all in_features="
                    f"{g} inputs as one group, but int4 packing needs an even number of inputs "
                    f"(two codes per byte); in_features is odd"
                )
            raise ValueError(f"Int4Linear: group_size must be even (two codes per byte), got {g}")
        self.group_size = g
        q, scales = quantize_groupwise(linear.weight.detach(), bits=4, group_size=g)
        self.register_buffer("packed", pack_int4(q))
        self.register_buffer("scales", scales)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight in float32, ``(out_features, in_features)``."""
        return dequantize_groupwise(unpack_int4(self.packed), self.scales)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int4 group {self.group_size}"
        )


def saved_nbytes(obj: nn.Module | dict[str, torch.Tensor]) -> int:
    """Bytes on disk of ``obj``'s ``state_dict`` (or of a dict of tensors) written with
    ``torch.save`` to a temporary file: what shipping the model costs, format overhead and all
    (a tied embedding/head is saved once)."""
    import os
    import tempfile

    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.pt")
        torch.save(state, path)
        return os.path.getsize(path)


QuantKind = Literal["int8", "nf4", "int4_group"]


def quantize_model(
    model: nn.Module,
    kind: QuantKind,
    skip: Sequence[str] = (),
    **kwargs: object,
) -> list[str]:
    """Replace the ``nn.Linear`` layers of ``model`` in place by :class:`Int8Linear`,
    :class:`NF4Linear` or :class:`Int4Linear` and return the names of the replaced layers.

    Kept in full precision: embeddings (they are lookups, not matrix products), any linear whose
    weight is *tied* to an embedding (a GPT's ``lm_head``: quantising it would also change, or
    duplicate, the embedding table), and every layer whose qualified name contains one of the
    strings in ``skip``. ``kwargs`` go to :class:`NF4Linear` (``block_size``, ``double_quant``)
    or, for ``kind="int4_group"``, :class:`Int4Linear` (``group_size``).

    Raises:
        ValueError: unknown ``kind``, or no linear layer was left to quantise.
    """
    if kind not in ("int8", "nf4", "int4_group"):
        raise ValueError(
            f"quantize_model: kind must be 'int8', 'nf4' or 'int4_group', got {kind!r}"
        )
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
        new: nn.Module
        if kind == "int8":
            new = Int8Linear(linear)
        elif kind == "int4_group":
            new = Int4Linear(linear, **kwargs)  # type: ignore[arg-type]
        else:
            new = NF4Linear(linear, **kwargs)  # type: ignore[arg-type]
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
    "INT4_OFFSET",
    "Int4Linear",
    "dequantize_groupwise",
    "int4_matmul",
    "pack_int4",
    "quantize_groupwise",
    "saved_nbytes",
    "unpack_int4",
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
