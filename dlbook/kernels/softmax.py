"""Fused row-wise softmax in Triton: one program per row, one read and one write of the row.

The whole row is one block, so rows are limited to ``65536 // element size`` elements."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dlbook.kernels._common import check_devices, check_row_width, check_tensor


@triton.jit
def _softmax_kernel(out_ptr, in_ptr, in_row_stride, out_row_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride may pass 2**31
    cols = tl.arange(0, BLOCK)  # BLOCK is the next power of two >= n_cols
    mask = cols < n_cols
    # Masked-out lanes read -inf: they cannot win the max and contribute exp(-inf) = 0.
    x = tl.load(in_ptr + row * in_row_stride + cols, mask=mask, other=-float("inf"))
    x = x.to(tl.float32)
    z = x - tl.max(x, axis=0)  # numerical stability: the largest exponent is exp(0) = 1
    num = tl.exp(z)
    y = num / tl.sum(num, axis=0)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, one fused kernel (the same as ``torch.softmax(x, -1)``).

    Args:
        x: ``(..., N)``, contiguous, float32/float16/bfloat16; any number of leading dimensions.
            One row must fit in one block: ``N <= 65536 // x.element_size()`` (16,384 in
            float32).

    Returns:
        ``(..., N)`` in ``x``'s dtype; computed in float32 with the row maximum subtracted.

    Raises:
        ValueError: ``x`` is not a contiguous, non-empty floating-point tensor, its rows are
            too wide for one block, or it is not a CUDA tensor when the kernels are compiled.
    """
    check_tensor(x, "x")
    check_row_width(x, "x")
    check_devices(x=x)
    n_cols = x.shape[-1]
    rows = x.reshape(-1, n_cols)
    out = torch.empty_like(rows)
    block = triton.next_power_of_2(n_cols)
    _softmax_kernel[(rows.shape[0],)](
        out, rows, rows.stride(0), out.stride(0), n_cols, BLOCK=block
    )
    return out.reshape(x.shape)
