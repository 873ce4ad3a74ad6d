"""FlashAttention-style forward in Triton (Dao et al., 2022): exact attention, tiled.

One program owns ``BLOCK_M`` queries of one (batch, head). It loops over the keys in tiles of
``BLOCK_N`` and keeps, per query row, the **online softmax** state: the running maximum ``m``,
the running sum ``l = sum exp(s - m)`` and the unnormalised output ``acc = sum exp(s - m) v``.
A new tile with scores ``s`` updates them as::

    m_new = max(m, rowmax(s))
    alpha = exp(m - m_new)                 # rescales what was summed against the old maximum
    p     = exp(s - m_new)
    l     = alpha * l + rowsum(p)
    acc   = alpha * acc + p @ v_tile

and at the end ``out = acc / l``. The ``T x T`` score matrix never exists: each program holds a
``BLOCK_M x BLOCK_N`` tile of it at a time. Besides the output, the kernel writes the row's
log-sum-exp ``m + log l`` (what a backward pass would need to rebuild the probabilities).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from dlbook.kernels._common import check_devices, check_tensor, is_power_of_two


@triton.jit
def _flash_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, T, scale,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, DOT_F32: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)  # which (batch, head): the tensors are (B*H, T, D)
    base = bh * T * D  # int64: B*H*T*D may pass 2**31, which int32 offsets would wrap
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + base + offs_m[:, None] * D + offs_d[None, :],
                mask=offs_m[:, None] < T, other=0.0)
    if DOT_F32:  # see flash_attention: bfloat16 tl.dot in the interpreter
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    # Causal: key tiles that start after this block's last query are skipped entirely.
    end_n = tl.minimum(T, start_m + BLOCK_M) if CAUSAL else T
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(k_ptr + base + offs_n[:, None] * D + offs_d[None, :],
                    mask=offs_n[:, None] < T, other=0.0)
        v = tl.load(v_ptr + base + offs_n[:, None] * D + offs_d[None, :],
                    mask=offs_n[:, None] < T, other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale  # (BLOCK_M, BLOCK_N)
        keep = offs_n[None, :] < T
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = alpha * l_i + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + base + offs_m[:, None] * D + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < T)
    tl.store(lse_ptr + bh * T + offs_m, m_i + tl.log(l_i), mask=offs_m < T)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    block_m: int = 64,
    block_n: int = 64,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention ``softmax(q k^T / sqrt(D)) v``, tiled, without the ``T x T`` matrix.

    Equal to ``F.scaled_dot_product_attention(q, k, v, is_causal=causal)`` (forward only).

    Args:
        q, k, v: ``(B, H, T, D)``, contiguous, one dtype (float32/float16/bfloat16), the same
            shape (self-attention); ``D`` a power of two, at least 16 (``tl.dot``'s minimum).
        causal: position ``i`` attends only to keys ``j <= i``.
        block_m: queries per program; block_n: keys per tile. Powers of two, at least 16.
        return_lse: also return the log-sum-exp of each row's scores, ``(B, H, T)`` float32.

    Returns:
        ``(B, H, T, D)`` in ``q``'s dtype (and the log-sum-exp when asked).

    Raises:
        ValueError: wrong rank, mismatched shapes, dtypes or devices, non-contiguous inputs,
            CPU tensors when the kernels are compiled for the GPU, or a head dimension / block
            size that is not a power of two of at least 16.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, ndim=4)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k and v must have one shape (B, H, T, D), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_devices(q=q, k=k, v=v)
    B, H, T, D = q.shape
    if not is_power_of_two(D) or D < 16:
        raise ValueError(f"the head dimension must be a power of two >= 16, got {D}")
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if not is_power_of_two(value) or value < 16:
            raise ValueError(f"{name} must be a power of two >= 16, got {value}")
    # Triton's interpreter (3.x) computes tl.dot on bfloat16 tiles wrongly (numpy has no
    # bfloat16); there the tiles are widened to float32 first. Compiled kernels keep bfloat16.
    from dlbook.kernels import INTERPRETED

    dot_f32 = INTERPRETED and q.dtype == torch.bfloat16
    out = torch.empty_like(q)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(T, block_m), B * H)
    _flash_fwd_kernel[grid](
        q, k, v, out, lse, T, 1.0 / math.sqrt(D),
        D=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=bool(causal), DOT_F32=dot_f32,
    )
    return (out, lse) if return_lse else out
