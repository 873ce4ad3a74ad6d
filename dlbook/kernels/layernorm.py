"""Layer norm in Triton, forward and backward, wrapped in a ``torch.autograd.Function``.

Forward, per row ``x`` of width ``N``: ``mu = mean(x)``, ``sigma = sqrt(var(x) + eps)``,
``x_hat = (x - mu) / sigma``, ``y = x_hat * gamma + beta``; the kernel saves ``mu`` and
``1 / sigma`` (two floats per row) for the backward.

Backward, with ``g = dy * gamma``::

    dx     = (g - mean(g) - x_hat * mean(g * x_hat)) / sigma      (per row)
    dgamma = sum over rows of dy * x_hat                          (per column)
    dbeta  = sum over rows of dy

The backward runs in two kernels: each program handles ``ROWS`` consecutive rows, writes their
``dx`` and one row of partial column sums; a second kernel adds the partial rows up per column.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dlbook.kernels._common import check_devices, check_row_width, check_tensor


@triton.jit
def _ln_fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, stride, n_cols, eps,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride may pass 2**31
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(mask, x - mean, 0.0)  # padded lanes must not enter the variance
    var = tl.sum(xc * xc, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(y_ptr + row * stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _ln_bwd_dx_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                      stride, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # int64: row * stride may pass 2**31
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, ROWS):
        row = pid * ROWS + i
        if row < n_rows:
            x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            x_hat = tl.where(mask, (x - mean) * rstd, 0.0)
            g = dy * w
            c1 = tl.sum(x_hat * g, axis=0) / n_cols  # mean(g * x_hat)
            c2 = tl.sum(g, axis=0) / n_cols  # mean(g)
            dx = (g - c2 - x_hat * c1) * rstd
            tl.store(dx_ptr + row * stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw_acc += dy * x_hat
            db_acc += dy
    tl.store(dw_part_ptr + pid * n_cols + cols, dw_acc, mask=mask)
    tl.store(db_part_ptr + pid * n_cols + cols, db_acc, mask=mask)


@triton.jit
def _ln_bwd_dwdb_kernel(dw_part_ptr, db_part_ptr, dw_ptr, db_ptr, n_parts, n_cols,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_parts, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts[:, None] < n_parts) & col_mask[None, :]
        offs = parts[:, None] * n_cols + cols[None, :]
        dw += tl.sum(tl.load(dw_part_ptr + offs, mask=mask, other=0.0), axis=0)
        db += tl.sum(tl.load(db_part_ptr + offs, mask=mask, other=0.0), axis=0)
    tl.store(dw_ptr + cols, dw.to(dw_ptr.dtype.element_ty), mask=col_mask)
    tl.store(db_ptr + cols, db.to(db_ptr.dtype.element_ty), mask=col_mask)


class LayerNormFunction(torch.autograd.Function):
    """Autograd wrapper: the forward and the backward are the Triton kernels above.

    ``LayerNormFunction.apply(x, weight, bias, eps)``; ``x`` is ``(M, N)`` contiguous, ``weight``
    and ``bias`` are ``(N,)``. Use :func:`layer_norm`, which checks its inputs and reshapes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        n_rows, n_cols = x.shape
        y = torch.empty_like(x)
        mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n_cols)
        _ln_fwd_kernel[(n_rows,)](
            x, y, weight, bias, mean, rstd, x.stride(0), n_cols, eps, BLOCK=block
        )
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        dy = dy.contiguous()
        n_rows, n_cols = x.shape
        block = triton.next_power_of_2(n_cols)
        rows_per_program = 16 if n_rows > 256 else 4
        n_parts = triton.cdiv(n_rows, rows_per_program)
        dx = torch.empty_like(x)
        dw_part = torch.empty(n_parts, n_cols, dtype=torch.float32, device=x.device)
        db_part = torch.empty_like(dw_part)
        _ln_bwd_dx_kernel[(n_parts,)](
            dy, x, weight, mean, rstd, dx, dw_part, db_part, x.stride(0), n_rows, n_cols,
            ROWS=rows_per_program, BLOCK=block,
        )
        dw = torch.empty_like(weight)
        db = torch.empty_like(weight)
        block_n = min(block, 128)
        _ln_bwd_dwdb_kernel[(triton.cdiv(n_cols, block_n),)](
            dw_part, db_part, dw, db, n_parts, n_cols, BLOCK_P=32, BLOCK_N=block_n
        )
        return dx, dw, db, None


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Layer norm over the last dimension with Triton kernels, differentiable in all three inputs.

    Equal to ``F.layer_norm(x, (N,), weight, bias, eps)``, gradients included.

    Args:
        x: ``(..., N)``, contiguous, float32/float16/bfloat16. One row must fit in one block:
            ``N <= 65536 // x.element_size()`` (16,384 in float32).
        weight: ``(N,)``, the scale gamma, same dtype and device as ``x``.
        bias: ``(N,)``, the shift beta.
        eps: added to the variance before the square root; must be positive.

    Returns:
        ``(..., N)``, the normalised, scaled and shifted ``x``.

    Raises:
        ValueError: bad ranks, shapes, dtypes, non-contiguous inputs, ``eps <= 0``, rows too
            wide for one block, inputs on different devices, or CPU tensors when the kernels
            are compiled for the GPU.
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight", ndim=1)
    check_tensor(bias, "bias", ndim=1)
    n_cols = x.shape[-1]
    if weight.shape != (n_cols,) or bias.shape != (n_cols,):
        raise ValueError(
            f"weight and bias must have shape ({n_cols},) to match x's last dimension, got "
            f"{tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    if weight.dtype != x.dtype or bias.dtype != x.dtype:
        raise ValueError(f"weight and bias must have x's dtype {x.dtype}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    check_row_width(x, "x")
    check_devices(x=x, weight=weight, bias=bias)
    y = LayerNormFunction.apply(x.reshape(-1, n_cols), weight, bias, float(eps))
    return y.reshape(x.shape)
