# %% [markdown]
# # Writing GPU kernels with Triton
#
# Most of the time a model spends on a GPU is spent in a few dozen *kernels*: the programs
# that PyTorch launches for a matrix product, a softmax, a layer norm. Matrix products are
# limited by arithmetic and vendor libraries already run them near the chip's peak. Most other
# operations are limited by **memory traffic**: they do a few additions per number, and the
# time goes into reading the numbers from the GPU's main memory (HBM) and writing the results
# back. PyTorch in eager mode runs `x - x.max()`, `.exp()`, `.sum()` and `/` as separate
# kernels, and each one reads its input from HBM and writes its output back. A **fused** kernel
# reads the input once, does all the steps in the chip's fast on-chip memory, and writes once.
# FlashAttention {cite:p}`dao2022flashattention` applies the same idea to attention: it never
# writes the $T \times T$ matrix of scores to HBM at all.
#
# Triton {cite:p}`tillet2019triton` is a Python-embedded language for writing such kernels: one
# writes what one *program* does with a *block* of numbers (a row, a tile), and the compiler
# decides how the GPU's threads share the work. It is what `torch.compile` generates for GPUs
# (section {doc}`../04_pretraining/05_efficiency`). This section writes three kernels, each
# checked against PyTorch:
#
# 1. a **fused softmax**, numerically stable, for rows that fit in one block;
# 2. **layer norm**, forward and backward, with the backward derived by hand and wrapped in a
#    `torch.autograd.Function` so that `.backward()` works;
# 3. a **FlashAttention-style forward**, built on the *online softmax*
#    {cite:p}`milakov2018online`, which we first derive and check in plain PyTorch.
#
# ```{note}
# This page is built on a CPU. Without a CUDA device, `dlbook.kernels` sets
# `TRITON_INTERPRET=1` before Triton is imported, and every kernel below runs in Triton's
# **interpreter**: the same kernel source, executed program by program with numpy. That is
# exact enough to check every kernel against PyTorch, and far too slow to say anything about
# speed. On a GPU the same cells compile and run the real kernels; the timings and peak memory
# against PyTorch's kernels are the `triton kernels vs PyTorch` row of `make gpu-check`
# (`dlbook/gpu_check.py`). Triton publishes wheels for Linux only, so
# `pip install 'dlbook[kernels]'` fails on macOS and Windows: run this section on Linux, in
# WSL, or in a hosted notebook such as Colab.
# ```

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from dlbook import pick, seed_everything
from dlbook.book import error_message, glue

# dlbook.kernels before triton: on a machine without CUDA it switches Triton to its
# interpreter, which must happen before the first `import triton`.
from dlbook.kernels import INTERPRETED, flash_attention, layer_norm, softmax

_ = seed_everything(0)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"device {device}, Triton interpreter: {INTERPRETED}")
glue("s6_7_mode", "Triton's CPU interpreter" if INTERPRETED else "compiled GPU kernels")

# %% [markdown]
# The kernels on this page ran as: {glue}`s6_7_mode`.
#
# ## Why fusing pays: counting memory traffic
#
# Take a softmax over the rows of an $M \times N$ matrix, written the way one would in
# PyTorch: `z = x - x.max(-1)`, `e = z.exp()`, `s = e.sum(-1)`, `y = e / s`. Each line is one
# kernel; each reads its inputs from HBM and writes its output. We count the elements moved,
# and compare with a fused kernel that reads $x$ once and writes $y$ once.

# %%
M, N = 4096, 1000
unfused = {  # kernel: (elements read, elements written)
    "max": (M * N, M),
    "subtract": (M * N + M, M * N),
    "exp": (M * N, M * N),
    "sum": (M * N, M),
    "divide": (M * N + M, M * N),
}
moved_unfused = sum(r + w for r, w in unfused.values())
moved_fused = 2 * M * N
traffic_ratio = moved_unfused / moved_fused
print(f"unfused {moved_unfused / 1e6:.1f} M elements, fused {moved_fused / 1e6:.1f} M "
      f"-> {traffic_ratio:.2f}x less traffic")
assert 3.9 < traffic_ratio < 4.1
glue("s6_7_traffic", traffic_ratio, ".1f")

# %% [markdown]
# The fused version moves {glue}`s6_7_traffic` times fewer numbers. For an operation limited by
# memory bandwidth that is close to the speed-up one can hope for; the arithmetic is
# free by comparison.
#
# ## Triton's model: programs, blocks, masks
#
# A Triton kernel is a Python function decorated with `@triton.jit`. It is launched on a
# **grid** of programs, `kernel[grid](args...)`; each program asks `tl.program_id(0)` which
# one it is and works on whole blocks: `tl.arange(0, BLOCK)` is a vector of offsets,
# `tl.load(ptr + offsets)` reads a block of memory, arithmetic on blocks is elementwise,
# `tl.max`/`tl.sum` reduce a block, and `tl.store` writes one back. Block sizes must be
# compile-time constants (`tl.constexpr`) and **powers of two**, so a block rarely matches the
# data exactly: a **mask** tells `tl.load` and `tl.store` which lanes are real, and what
# value the padded lanes read.
#
# The first kernel adds two vectors, 1,000 numbers in blocks of 256: four programs, the last of
# which has only 232 numbers left for its 256 lanes and masks the other 24.

# %%
@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n  # the last block runs past the end of the data
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


a, b = torch.randn(1000, device=device), torch.randn(1000, device=device)
out = torch.empty_like(a)
grid = (triton.cdiv(a.numel(), 256),)
add_kernel[grid](a, b, out, a.numel(), BLOCK=256)
print(f"{grid[0]} programs, max |error| {(out - (a + b)).abs().max().item():.1e}")
assert grid == (4,) and torch.equal(out, a + b)

# %% [markdown]
# ## A fused softmax
#
# One program per row: load the row (width rounded up to a power of two, padded lanes masked),
# reduce, write. A first attempt follows the textbook formula
# $\mathrm{softmax}(x)_i = e^{x_i} / \sum_j e^{x_j}$ literally.

# %%
@triton.jit
def naive_softmax_kernel(out_ptr, in_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * n_cols + cols, mask=mask, other=-float("inf"))  # exp(-inf) = 0
    num = tl.exp(x)
    tl.store(out_ptr + row * n_cols + cols, num / tl.sum(num, axis=0), mask=mask)


def naive_softmax(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    naive_softmax_kernel[(x.shape[0],)](out, x, x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
    return out


rows, cols = pick(smoke=16, book=64), 1000
x = torch.randn(rows, cols, device=device)
naive_err = (naive_softmax(x) - torch.softmax(x, -1)).abs().max().item()
large = x * 100  # logits of a confident model: exp(100) overflows float32
with np.errstate(over="ignore", invalid="ignore"):  # the interpreter's numpy would warn
    naive_large = naive_softmax(large)
print(f"naive kernel: max |error| {naive_err:.1e} on N(0,1) inputs; "
      f"{naive_large.isnan().float().mean().item():.0%} NaN when the logits are scaled by 100")
assert naive_err < 1e-6 and naive_large.isnan().any()

# %% [markdown]
# On small inputs it is right; on large logits $e^{x}$ overflows to `inf` and `inf / inf`
# gives NaN. The fix costs nothing: softmax is unchanged when a constant is subtracted from
# every $x_i$, and subtracting the row's maximum makes the largest exponent $e^0 = 1$. The
# library's kernel does that, computes in float32 whatever the input dtype, and accepts any
# number of leading dimensions:
#
# ```{literalinclude} ../../dlbook/kernels/softmax.py
# :pyobject: _softmax_kernel
# ```

# %%
ours = softmax(large)
softmax_err = (ours - torch.softmax(large, -1)).abs().max().item()
softmax_err_small = (softmax(x) - torch.softmax(x, -1)).abs().max().item()
print(f"library softmax vs torch.softmax: {softmax_err:.1e} (scaled logits), "
      f"{softmax_err_small:.1e} (N(0,1))")
assert not ours.isnan().any() and softmax_err < 1e-6 and softmax_err_small < 1e-6
assert triton.next_power_of_2(cols) == 1024
glue("s6_7_softmax_err", max(softmax_err, softmax_err_small), ".0e")
glue("s6_7_softmax_cols", cols, ",")

# %% [markdown]
# On rows of width {glue}`s6_7_softmax_cols` (not a power of two: the kernel's block is 1,024
# wide and masks the rest), the library kernel agrees with `torch.softmax` to
# {glue}`s6_7_softmax_err` on both inputs. Bad input gets a clear message rather than a wrong
# answer; the kernels index memory by hand, so a transposed view would be read wrongly. A row
# must also fit in one block: like Triton's layer-norm tutorial, the wrapper refuses rows of
# more than 65,536 bytes, {glue}`s6_7_max_cols` float32 values (wider blocks would spill out of
# registers; a wider softmax would loop over the row in tiles, as the attention kernel below
# does over keys):

# %%
print(error_message(lambda: softmax(x.t())))
print(error_message(lambda: softmax(torch.ones(3, 4, dtype=torch.int64))))
max_cols = 65536 // torch.empty(0).element_size()
_ = softmax(torch.randn(1, max_cols, device=device))  # the widest row is accepted
print(error_message(lambda: softmax(torch.randn(1, max_cols + 1, device=device))))
assert max_cols == 16384
glue("s6_7_max_cols", max_cols, ",")

# %% [markdown]
# ## Layer norm, forward and backward
#
# Layer norm {cite:p}`ba2016layer` normalises each row $x \in \mathbb{R}^N$ and then scales and
# shifts it per column:
#
# $$
# \mu = \frac1N\sum_i x_i, \qquad \sigma = \sqrt{\frac1N\sum_i (x_i-\mu)^2 + \epsilon}, \qquad
# \hat x = \frac{x-\mu}{\sigma}, \qquad y = \gamma \odot \hat x + \beta .
# $$
#
# The forward kernel is one program per row, like the softmax; it also writes $\mu$ and
# $1/\sigma$ (two numbers per row) for the backward. For the backward, let $g = dy \odot \gamma$
# be the gradient with respect to $\hat x$. Since $\partial\mu/\partial x_i = 1/N$ and
# $\partial\sigma/\partial x_i = (x_i-\mu)/(N\sigma) = \hat x_i / N$,
#
# $$
# \frac{\partial \hat x_j}{\partial x_i}
# = \frac{1}{\sigma}\Big(\delta_{ij} - \frac1N\Big) - \frac{x_j-\mu}{\sigma^2}\,\frac{\hat x_i}{N}
# = \frac{1}{\sigma}\Big(\delta_{ij} - \frac1N - \frac{\hat x_i \hat x_j}{N}\Big),
# $$
#
# and summing $g_j$ against it gives
#
# $$
# dx = \frac{1}{\sigma}\Big(g - \overline{g} - \hat x\,\overline{g\odot\hat x}\Big), \qquad
# d\gamma = \sum_{\text{rows}} dy \odot \hat x, \qquad d\beta = \sum_{\text{rows}} dy,
# $$
#
# where a bar is the mean over the row. $dx$ needs only the row itself (two reductions), so it
# fits the one-program-per-row pattern; $d\gamma$ and $d\beta$ are sums over *rows*, a
# different direction. Before writing any kernel we check the formula against autograd in
# plain PyTorch.

# %%
n_rows, n_cols = pick(smoke=24, book=160), pick(smoke=96, book=384)  # widths: not powers of 2
x = (torch.randn(n_rows, n_cols, device=device) * 3 + 1).requires_grad_()
gamma = torch.randn(n_cols, device=device, requires_grad=True)
beta = torch.randn(n_cols, device=device, requires_grad=True)
dy = torch.randn(n_rows, n_cols, device=device)
ref_y = F.layer_norm(x, (n_cols,), gamma, beta, eps=1e-5)
ref_dx, ref_dgamma, ref_dbeta = torch.autograd.grad(ref_y, (x, gamma, beta), dy)

with torch.no_grad():
    mu = x.mean(-1, keepdim=True)
    sigma = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    x_hat = (x - mu) / sigma
    g = dy * gamma
    dx_hand = (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True)) / sigma
    dgamma_hand, dbeta_hand = (dy * x_hat).sum(0), dy.sum(0)
hand_err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in
               ((dx_hand, ref_dx), (dgamma_hand, ref_dgamma), (dbeta_hand, ref_dbeta)))
print(f"hand-derived gradients vs autograd: max relative error {hand_err:.1e}")
assert hand_err < 1e-5

# %% [markdown]
# The formula holds. The library's backward runs it in two kernels. In the first, each program
# takes a few consecutive rows, writes their $dx$ and keeps running sums of $dy\odot\hat x$ and
# $dy$ in registers, written out as one row of *partial* sums per program; the second kernel
# adds the partial rows up, column block by column block. (The Triton tutorial instead adds
# into a few shared buffers under locks; partial rows need no locks.)
#
# ```{literalinclude} ../../dlbook/kernels/layernorm.py
# :pyobject: _ln_bwd_dx_kernel
# ```
#
# `LayerNormFunction` connects the kernels to autograd: `forward` launches the forward kernel
# and saves $x$, $\gamma$, $\mu$ and $1/\sigma$; `backward` receives $dy$ and returns one
# gradient per input of `forward` (`None` for `eps`).
#
# ```{literalinclude} ../../dlbook/kernels/layernorm.py
# :pyobject: LayerNormFunction.backward
# ```

# %%
y = layer_norm(x, gamma, beta, eps=1e-5)
dx, dgamma, dbeta = torch.autograd.grad(y, (x, gamma, beta), dy)
ln_errors = {  # largest error relative to the largest entry of PyTorch's result
    name: ((ours - ref).abs().max() / ref.abs().max()).item()
    for name, ours, ref in (("y", y, ref_y), ("dx", dx, ref_dx), ("dgamma", dgamma, ref_dgamma),
                            ("dbeta", dbeta, ref_dbeta))
}
print({k: f"{v:.1e}" for k, v in ln_errors.items()})
assert all(v < 1e-5 for v in ln_errors.values())
# the same gradients through .backward() and a loss (a few rows: the interpreter is slow)
x2 = x[:16].detach().clone().requires_grad_()
layer_norm(x2, gamma, beta).square().mean().backward()
x3 = x[:16].detach().clone().requires_grad_()
F.layer_norm(x3, (n_cols,), gamma, beta).square().mean().backward()
assert torch.allclose(x2.grad, x3.grad, atol=1e-6)
for key, value in ln_errors.items():
    glue(f"s6_7_ln_{key}", value, ".0e")
glue("s6_7_ln_shape", f"{n_rows} × {n_cols}")

# %% [markdown]
# On a {glue}`s6_7_ln_shape` input, the Triton layer norm agrees with `F.layer_norm` to
# {glue}`s6_7_ln_y` in the output, and its gradients agree with autograd's to
# {glue}`s6_7_ln_dx` ($dx$), {glue}`s6_7_ln_dgamma` ($d\gamma$) and {glue}`s6_7_ln_dbeta`
# ($d\beta$), each the largest difference relative to the largest entry of PyTorch's result. The column sums add the rows in a different order from PyTorch's, so they differ
# in the last bits of float32; that is rounding, not a bug.
#
# ## The online softmax
#
# Attention computes $O = \mathrm{softmax}(QK^\top/\sqrt d)\,V$. Written as three PyTorch
# operations it materialises the score matrix $S = QK^\top/\sqrt d$, $T \times T$ per head, in
# HBM, reads it back for the softmax, writes the probabilities, and reads them again for the
# product with $V$. To avoid that, a kernel must compute a softmax over keys it sees only a
# tile at a time, and the normaliser $\sum_j e^{s_j - \max s}$ seems to need the maximum over
# *all* keys before the first exponential.
#
# It does not {cite:p}`milakov2018online`. Process the scores of one row in tiles and keep two
# numbers: $m$, the maximum seen so far, and $\ell = \sum_{\text{seen}} e^{s_j - m}$. A new
# tile $t$ updates them:
#
# $$
# m' = \max\big(m, \max_{j\in t} s_j\big), \qquad
# \ell' = \ell\, e^{m - m'} + \sum_{j \in t} e^{s_j - m'} .
# $$
#
# The factor $e^{m-m'}$ re-expresses the old sum against the new maximum, so by induction
# $\ell = \sum_{\text{seen}} e^{s_j - m}$ after every tile, and at the end
# $\ell = \sum_j e^{s_j - \max s}$: exactly the softmax normaliser, in one pass. The same
# rescaling carries the output: keep $o = \sum_{\text{seen}} e^{s_j - m} v_j$ and update
# $o' = o\,e^{m-m'} + \sum_{j\in t} e^{s_j - m'} v_j$; then the attention output is
# $o/\ell$. Every step uses only the current tile. First the normaliser alone, on one row of
# scores, in plain PyTorch:

# %%
T_row, tile = 512, 64
scores = torch.randn(T_row, generator=torch.Generator().manual_seed(3)) * 3
scores[300] += 12.0  # a late, large score: the running maximum must jump
m, ell = torch.tensor(float("-inf")), torch.tensor(0.0)
trace = []
for start in range(0, T_row, tile):
    s = scores[start:start + tile]
    m_new = torch.maximum(m, s.max())
    ell = ell * torch.exp(m - m_new) + torch.exp(s - m_new).sum()
    m = m_new
    trace.append((m.item(), ell.item()))
exact_m = scores.max()
exact_l = torch.exp(scores - exact_m).sum()
print(f"online: m={m.item():.3f}, l={ell.item():.6f}; exact: m={exact_m.item():.3f}, "
      f"l={exact_l.item():.6f}")
assert m == exact_m and torch.allclose(ell, exact_l, rtol=1e-5)
jump = 300 // tile  # the tile holding the large score: m jumps, the rescaled sum drops
assert trace[jump][0] > trace[jump - 1][0] and trace[jump][1] < trace[jump - 1][1]
assert all(t[0] == trace[-1][0] for t in trace[jump:])  # no larger score comes after it
assert torch.allclose(m + ell.log(), torch.logsumexp(scores, 0))

# %% [markdown]
# Now the whole of attention as a blocked loop in PyTorch: queries in tiles of `Bq`, an
# inner loop over key tiles of `Bk`, the state $(m, \ell, o)$ per query row, and an optional
# causal mask. This is the algorithm of the kernel, written with whole-tensor operations, and
# it must give `softmax(QKᵀ/√d)V` exactly.

# %%
def blocked_attention(q, k, v, causal=False, Bq=32, Bk=32):
    """softmax(q k^T / sqrt(d)) v for (T, d) tensors, one key tile at a time."""
    T, d = q.shape
    out = torch.empty_like(q)
    for qs in range(0, T, Bq):
        qi = q[qs:qs + Bq]
        rows = torch.arange(qs, min(qs + Bq, T))
        m = torch.full((len(rows),), float("-inf"))
        ell = torch.zeros(len(rows))
        o = torch.zeros(len(rows), d)
        key_end = min(T, qs + Bq) if causal else T  # later key tiles are all masked: skip them
        for ks in range(0, key_end, Bk):
            s = qi @ k[ks:ks + Bk].T / math.sqrt(d)
            if causal:
                cols = torch.arange(ks, min(ks + Bk, T))
                s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
            m_new = torch.maximum(m, s.max(1).values)
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[:, None])
            ell = alpha * ell + p.sum(1)
            o = alpha[:, None] * o + p @ v[ks:ks + Bk]
            m = m_new
        out[qs:qs + Bq] = o / ell[:, None]
    return out


T_small, d_small = 100, 16  # 100: the last tiles are partial
qkv = torch.randn(3, T_small, d_small, generator=torch.Generator().manual_seed(4))
blocked_err = {}
for causal in (False, True):
    ref = F.scaled_dot_product_attention(*qkv, is_causal=causal)
    blocked_err[causal] = (blocked_attention(*qkv, causal=causal) - ref).abs().max().item()
print({f"causal={c}": f"{e:.1e}" for c, e in blocked_err.items()})
assert max(blocked_err.values()) < 1e-5

# %% [markdown]
# ## FlashAttention in Triton
#
# The kernel is the loop above with the outer loop turned into the grid: program
# $(i, h)$ owns query tile $i$ of head $h$ (batch and heads flattened), loads its queries once,
# and walks the key tiles. The running state lives in registers; the score tile
# `s = tl.dot(q, tl.trans(k))` is `BLOCK_M × BLOCK_N` and never leaves the chip. With a causal
# mask, key tiles entirely after the program's last query are skipped, which saves about half
# the work.
# Besides the output the kernel writes the log-sum-exp $m + \log \ell$ of each row, $T$
# numbers per head, which is all a backward pass needs to rebuild the probabilities tile by
# tile.
#
# ```{literalinclude} ../../dlbook/kernels/flash.py
# :pyobject: _flash_fwd_kernel
# ```

# %%
B, H, T, D = pick(smoke=(1, 2, 80, 16), book=(2, 2, 200, 32))
q, k, v = (torch.randn(B, H, T, D, device=device) for _ in range(3))
flash_err, lse_err, seconds = {}, {}, {}
for causal in (False, True):
    start = time.perf_counter()
    out, lse = flash_attention(q, k, v, causal=causal, block_m=64, block_n=64, return_lse=True)
    seconds[causal] = time.perf_counter() - start
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    flash_err[causal] = (out - ref).abs().max().item()
    s = q @ k.transpose(-2, -1) / math.sqrt(D)
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=device).triu(1), float("-inf"))
    lse_err[causal] = (lse - torch.logsumexp(s, -1)).abs().max().item()
    blocked = blocked_attention(q[0, 0].cpu(), k[0, 0].cpu(), v[0, 0].cpu(), causal=causal)
    assert torch.allclose(out[0, 0].cpu(), blocked, atol=1e-5)  # kernel ≈ the PyTorch loop
start = time.perf_counter()
F.scaled_dot_product_attention(q, k, v, is_causal=True)
torch_seconds = time.perf_counter() - start
print({f"causal={c}": f"|Δ| {flash_err[c]:.1e}, lse |Δ| {lse_err[c]:.1e}" for c in (False, True)})
assert T % 64 != 0  # the last query and key tiles are partial
assert max(flash_err.values()) < 1e-5 and max(lse_err.values()) < 1e-5
glue("s6_7_flash_shape", f"{B} × {H} × {T} × {D}")
glue("s6_7_flash_err", flash_err[False], ".0e")
glue("s6_7_flash_err_causal", flash_err[True], ".0e")
glue("s6_7_lse_err", max(lse_err.values()), ".0e")
glue("s6_7_flash_ms", seconds[True] * 1e3, ",.0f")
glue("s6_7_sdpa_ms", torch_seconds * 1e3, ".2f")

# %% [markdown]
# With $(B, H, T, D) =$ {glue}`s6_7_flash_shape` ($T$ not a multiple of the tile, so the last
# tiles are masked), the kernel agrees with `F.scaled_dot_product_attention` to
# {glue}`s6_7_flash_err` without and {glue}`s6_7_flash_err_causal` with the causal mask, its
# log-sum-exp agrees with `torch.logsumexp` of the scores to {glue}`s6_7_lse_err`, and its
# output agrees with the PyTorch loop above to within float rounding (asserted to $10^{-5}$):
# that loop used tiles of 32, the kernel 64, and a different tiling adds the same terms in a
# different order, which changes the last bits of a float sum. The causal call took {glue}`s6_7_flash_ms` ms here
# against {glue}`s6_7_sdpa_ms` ms for PyTorch's kernel, a comparison that on this page only
# measures the interpreter, never the kernel (and on a GPU would include Triton's compilation
# of the first call). The wrapper refuses what the kernel cannot do:

# %%
print(error_message(lambda: flash_attention(q[0], k[0], v[0])))
odd = torch.randn(1, 1, 8, 24, device=device)
print(error_message(lambda: flash_attention(odd, odd, odd)))

# %% [markdown]
# ## What tiling saves
#
# On a CPU the speed of a kernel cannot be shown, but its memory can be computed from shapes.
# Materialised attention stores the scores (and the probabilities, for the backward) in HBM:
# $B \cdot H \cdot T^2$ numbers, growing with the square of the context. The tiled kernel
# stores only its output and $T$ log-sum-exps per head, and each program holds one query tile,
# one key and one value tile, one score tile and its accumulator on chip, a working set that
# does not depend on $T$ at all. The figure shows both for a GPT-2-small layer (12 heads of 64,
# batch 1, 16-bit numbers) next to the online softmax's state on the row above.

# %%
heads, d_head, bytes_per = 12, 64, 2
BLOCK_M = BLOCK_N = 64
contexts = 2 ** np.arange(8, 18)  # 256 ... 131,072 tokens
materialised = heads * contexts.astype(float) ** 2 * bytes_per  # the score matrix alone
lse_bytes = heads * contexts * 4.0  # float32 log-sum-exp per row
working_set = (BLOCK_M * d_head + 2 * BLOCK_N * d_head) * bytes_per + (
    BLOCK_M * BLOCK_N + BLOCK_M * d_head + 2 * BLOCK_M
) * 4  # q, k, v tiles; scores, accumulator, m and l in float32
at = int(np.flatnonzero(contexts == 32768)[0])
print(f"T=32,768: scores {materialised[at] / 2**30:.0f} GiB, log-sum-exp "
      f"{lse_bytes[at] / 2**20:.1f} MiB; working set per program {working_set / 1024:.0f} KiB")
assert materialised[at] / lse_bytes[at] == 32768 * bytes_per / 4
glue("s6_7_mat_gib", materialised[at] / 2**30, ".0f")
glue("s6_7_lse_mib", lse_bytes[at] / 2**20, ".1f")
glue("s6_7_working_kib", working_set / 1024, ".0f")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
steps = np.arange(1, len(trace) + 1)
ax1.plot(steps, [t[0] for t in trace], "o-", label="running max $m$")
ax1.set_xlabel(f"key tiles seen ({tile} scores each)")
ax1.set_ylabel("$m$")
ax1b = ax1.twinx()
ax1b.plot(steps, [t[1] for t in trace], "s--", color="C1", label=r"running sum $\ell$")
ax1b.axhline(exact_l.item(), color="C1", lw=0.8, ls=":")
ax1b.set_ylabel(r"$\ell = \sum e^{s-m}$")
ax1.set_title("Online softmax: state after each tile")
ax1.legend(loc="upper left")
ax1b.legend(loc="center right")
ax2.loglog(contexts, materialised / 2**20, "o-", label="score matrix in HBM ($H T^2$)")
ax2.loglog(contexts, lse_bytes / 2**20, "s-", label="tiled: log-sum-exp in HBM ($H T$)")
ax2.axhline(working_set / 2**20, color="C2", ls="--", label="tiled: on-chip working set per program")
ax2.set_xlabel("context length $T$")
ax2.set_ylabel("MiB")
ax2.set_title("Attention memory beyond Q, K, V and the output")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# On the left, the running maximum jumps at the tile holding the large score and the running
# sum falls at that moment (the old terms are rescaled by $e^{m-m'}$), then settles on the
# exact normaliser (dotted). On the right, at $T = 32{,}768$ the score matrix of one layer
# would take {glue}`s6_7_mat_gib` GiB in 16 bits, before the probabilities are stored for
# the backward; the tiled kernel stores {glue}`s6_7_lse_mib` MiB of log-sum-exps and keeps a
# working set of {glue}`s6_7_working_kib` KiB per program, whatever $T$. The work is the same
# $O(T^2 d)$ multiply-adds either way; what FlashAttention removes is the traffic, and with it
# the memory that limits the context length. The timings against PyTorch's softmax,
# layer norm and attention on a GPU are in the `make gpu-check` row.
#
# ## Summary
#
# * Operations other than matrix products are limited by memory traffic; fusing the
#   max-subtract-exp-sum-divide chain of a softmax into one kernel moves
#   {glue}`s6_7_traffic` times fewer numbers.
# * A Triton kernel describes one program's work on blocks; block sizes are powers of two and
#   masks handle the ragged edges. Without a GPU, `TRITON_INTERPRET=1` runs the same source on
#   the CPU, for correctness only.
# * The fused softmax subtracts the row maximum (the naive formula gives NaN on large logits)
#   and matches `torch.softmax` to {glue}`s6_7_softmax_err`.
# * Layer norm's backward is $dx = (g - \overline g - \hat x\,\overline{g\hat x})/\sigma$ with
#   $g = dy\odot\gamma$, plus column sums for $d\gamma, d\beta$; the kernels, wrapped in a
#   `torch.autograd.Function`, match autograd's gradients.
# * The online softmax keeps a running maximum and a rescaled running sum, which lets attention
#   walk the keys tile by tile; the Triton FlashAttention forward matches
#   `F.scaled_dot_product_attention` to {glue}`s6_7_flash_err` and never stores the
#   $T\times T$ matrix.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-6-7-1
# ```
# Derive the backward of the softmax, $dx$ given $y = \mathrm{softmax}(x)$ and $dy$, and write
# it as a fused Triton kernel (one program per row). Check it against autograd.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-7-1
# :class: dropdown
# ```
# $\partial y_j/\partial x_i = y_j(\delta_{ij} - y_i)$, so
# $dx_i = \sum_j dy_j\, y_j(\delta_{ij} - y_i) = y_i\,(dy_i - \sum_j dy_j y_j)$: one reduction
# per row, the kernel reads $y$ and $dy$ once and writes $dx$ once.

# %%
@triton.jit
def softmax_bwd_kernel(dx_ptr, y_ptr, dy_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    y = tl.load(y_ptr + row * n_cols + cols, mask=mask, other=0.0)
    dy = tl.load(dy_ptr + row * n_cols + cols, mask=mask, other=0.0)
    dx = y * (dy - tl.sum(dy * y, axis=0))
    tl.store(dx_ptr + row * n_cols + cols, dx, mask=mask)


xs = torch.randn(16, 300, device=device, requires_grad=True)
ys = torch.softmax(xs, -1)
dys = torch.randn_like(ys)
(dx_ref,) = torch.autograd.grad(ys, xs, dys)
dx_kernel = torch.empty_like(dx_ref)
softmax_bwd_kernel[(16,)](dx_kernel, ys.detach(), dys, 300, BLOCK=512)
print(f"max |error| {(dx_kernel - dx_ref).abs().max().item():.1e}")
assert torch.allclose(dx_kernel, dx_ref, atol=1e-6)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-6-7-2
# ```
# Why must `BLOCK` be a power of two? Try `tl.arange(0, 24)` and explain the error, and say
# what the library's wrappers do about widths that are not powers of two.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-7-2
# :class: dropdown
# ```
# A block is spread over the threads of a program (and over the lanes of each thread's vector
# registers) in equal parts; the hardware's warps, vector widths and the tensor-core tile shapes
# are powers of two, and so are the layouts Triton builds from them. Triton therefore refuses
# other sizes when the kernel is built:

# %%
@triton.jit
def arange_kernel(out_ptr, BLOCK: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, BLOCK), tl.arange(0, BLOCK))


arange_error = error_message(
    lambda: arange_kernel[(1,)](torch.empty(24, dtype=torch.int32, device=device), BLOCK=24),
    Exception,
)
print(arange_error.splitlines()[-1][:200])
assert "power of 2" in arange_error

# %% [markdown]
# The wrappers round the block up (`triton.next_power_of_2(N)`: 1,000 columns use a block of
# 1,024) and mask the padded lanes: a load reads a neutral value there (`-inf` for a
# maximum, `0` for a sum) and a store skips them. The attention kernel needs the head
# dimension itself as a block (its loads are `BLOCK_M × D` tiles), so it refuses a $D$ that is
# not a power of two instead of padding it.
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-6-7-3
# ```
# Batches of sequences of different lengths are padded to one length, and attention must
# ignore the padded keys. Add a **key-padding mask** (a boolean per key, `True` = real token)
# to the blocked PyTorch loop, check it against `F.scaled_dot_product_attention` with an
# `attn_mask`, and say which lines of the Triton kernel change.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-7-3
# :class: dropdown
# ```
# The mask enters exactly where the causal mask does: scores of padded keys become $-\infty$
# before the running maximum is taken, so they add $e^{-\infty} = 0$ to $\ell$ and to $o$.

# %%
def blocked_attention_padded(q, k, v, key_ok, Bq=32, Bk=32):
    """Like blocked_attention, ignoring keys where key_ok is False (at least one must be True)."""
    T, d = q.shape
    out = torch.empty_like(q)
    for qs in range(0, T, Bq):
        qi = q[qs:qs + Bq]
        m = torch.full((len(qi),), float("-inf"))
        ell, o = torch.zeros(len(qi)), torch.zeros(len(qi), d)
        for ks in range(0, T, Bk):
            s = (qi @ k[ks:ks + Bk].T / math.sqrt(d)).masked_fill(~key_ok[ks:ks + Bk], float("-inf"))
            m_new = torch.maximum(m, s.max(1).values)
            # a tile with every key padded leaves m at -inf: exp(-inf - -inf) would be NaN
            alpha = torch.where(m_new == float("-inf"), 1.0, torch.exp(m - m_new))
            p = torch.exp(s - m_new[:, None]).nan_to_num(0.0)
            ell, o, m = alpha * ell + p.sum(1), alpha[:, None] * o + p @ v[ks:ks + Bk], m_new
        out[qs:qs + Bq] = o / ell[:, None]
    return out


key_ok = torch.ones(T_small, dtype=torch.bool)
key_ok[:40] = False  # left padding: whole first tile padded
key_ok[90:] = False
padded = blocked_attention_padded(*qkv, key_ok)
ref = F.scaled_dot_product_attention(*qkv, attn_mask=key_ok[None, :])
print(f"max |error| {(padded - ref).abs().max().item():.1e}")
assert torch.allclose(padded, ref, atol=1e-5)

# %% [markdown]
# In the kernel: add a pointer argument for the mask (shape `(B, T)`), load
# `ok = tl.load(mask_ptr + b * T + offs_n, mask=offs_n < T, other=0)` in the key loop, and
# widen `keep` to `keep & (ok[None, :] != 0)`. The guard against a fully padded tile is needed
# there too (a left-padded row can see only padding in its first tile), for instance by
# replacing `m_new` with 0 where it is `-inf` before the exponentials.
# ```{solution-end}
# ```
