# %% [markdown]
# # PyTorch 2 essentials
#
# Every model in this book, from a two-layer perceptron to a GPT, is written with a handful of
# PyTorch {cite:p}`paszke2019pytorch` ideas: the **tensor** (an n-dimensional array with a
# shape, a number type and a device), **broadcasting** (how tensors of different shapes
# combine), **autograd** (derivatives computed for you), the **module** (a container for
# parameters and the computation that uses them) and, since PyTorch 2, **`torch.compile`**
# (which turns Python code into fused machine code). This section covers each of them, and
# every statement it makes is checked by the code that follows it. If you already write
# PyTorch daily, skim the headings and the exercises; the `torch.compile` measurements at the end
# are worth a look either way.

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

from dlbook import get_device, pick, seed_everything
from dlbook.bench import seconds_per_call
from dlbook.book import glue

_ = seed_everything(0)

# %% [markdown]
# ## Tensors
#
# A **tensor** is a block of numbers laid out in memory together with three pieces of
# metadata: its **shape** (the size along each dimension), its **dtype** (the number type of
# every element) and its **device** (the memory it lives in: CPU RAM or a GPU's). A scalar has
# shape `()`, a vector `(n,)`, a matrix `(m, n)`, a batch of 32 colour images
# `(32, 3, 224, 224)`. The usual ways to make one:

# %%
a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])   # from Python data
z = torch.zeros(2, 3)                                  # filled with 0
r = torch.randn(2, 3)                                  # standard normal samples
s = torch.arange(6)                                    # 0, 1, ..., 5 (integers)
g = torch.linspace(0, 1, 5)                            # 5 evenly spaced points in [0, 1]
for name, t in [("a", a), ("z", z), ("r", r), ("s", s), ("g", g)]:
    print(f"{name}: shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}")
assert a.shape == (2, 3) and a.ndim == 2 and a.numel() == 6
assert s.dtype == torch.int64 and a.dtype == torch.float32   # the defaults

# %% [markdown]
# Python integers become `int64` tensors and Python floats `float32` tensors: those are the
# default dtypes. Arithmetic is elementwise (`a * a` squares every entry); `@` is the matrix
# product.

# %%
assert torch.equal(a * a, a**2)
assert (a @ a.T).shape == (2, 2)
assert (a @ a.T)[0, 1] == 1 * 4 + 2 * 5 + 3 * 6

# %% [markdown]
# ### Views and copies
#
# Memory is flat, so a tensor also stores **strides**: how many elements to skip in memory to
# move one step along each dimension. A `(2, 3)` tensor stored row after row has strides
# `(3, 1)`. Many operations change only the shape and strides and keep the memory: they return a
# **view** that shares its storage with the original, and writing through one changes the
# other. `view`, `reshape` (when it can), transposition `.T`, `unsqueeze`, and slicing with
# ranges all return views. A tensor whose elements are in row-major order in memory is
# **contiguous**; a transpose is not, and `view` refuses to flatten it, because no choice of
# strides reads the transposed elements in row order from the same memory. `reshape` then
# falls back to a copy.

# %%
x = torch.arange(6.0).view(2, 3)
v = x.view(3, 2)              # a view: same memory, new shape
v[0, 0] = 100.0
assert x[0, 0] == 100.0       # the write shows through
assert v.data_ptr() == x.data_ptr()
print("strides of x:", x.stride(), " of x.T:", x.T.stride())
assert x.stride() == (3, 1) and x.T.stride() == (1, 3) and not x.T.is_contiguous()

try:
    x.T.view(6)
except RuntimeError as err:
    print("x.T.view(6) fails:", str(err).split(".")[0])
else:
    raise AssertionError("view of a transposed tensor should fail")

flat = x.T.reshape(6)         # reshape copies here
assert flat.data_ptr() != x.data_ptr()
assert torch.equal(flat, x.T.contiguous().view(6))

# %% [markdown]
# ### Indexing
#
# Indexing follows NumPy. Integers and slices (`x[0]`, `x[:, 1:]`, `x[..., ::2]`) give views.
# Indexing with a tensor of integers or with a boolean mask ("advanced" indexing) gathers
# elements that need not be evenly spaced, so it returns a **copy**.

# %%
x = torch.arange(12.0).view(3, 4)
row = x[1]                         # view
cols = x[:, [0, 2]]                # copy (integer-list indexing)
big = x[x > 6]                     # copy (boolean mask), always 1-D
print("x =\n", x, "\nx[1] =", row, "\nx[:, [0, 2]] =\n", cols, "\nx[x > 6] =", big)
row[0] = -1.0
cols[0, 0] = -2.0
assert x[1, 0] == -1.0             # the view wrote through
assert x[0, 0] == 0.0              # the copy did not
assert big.shape == (5,)

# %% [markdown]
# ## Dtypes and precision
#
# A floating-point number stores a sign, an exponent and a fraction of $p$ bits, and represents
# $\pm (1 + f)\, 2^{e}$ with $f \in [0, 1)$ a multiple of $2^{-p}$. The gap between $1$ and the
# next representable number is the **machine epsilon** $\varepsilon = 2^{-p}$: it measures the
# relative precision of the type. The exponent's bit count sets the range. Deep learning uses
# three floating-point types:
#
# | dtype | bits (sign, exponent, fraction) | typical use |
# |---|---|---|
# | `float32` | 1, 8, 23 | the default; master weights, optimiser state |
# | `bfloat16` | 1, 8, 7 | training on modern GPUs: float32's range, little precision |
# | `float16` | 1, 5, 10 | older GPUs' mixed precision: more precision, small range |
#
# and `int64` (also called `long`) for indices and class labels. We can *measure* epsilon
# rather than trust the table: halve a candidate $\varepsilon$ until $1 + \varepsilon/2$
# rounds back to exactly $1$ in the dtype.

# %%
def measured_epsilon(dtype: torch.dtype) -> float:
    """The smallest power of two eps with 1 + eps != 1 when computed in `dtype`."""
    one = torch.tensor(1.0, dtype=dtype)
    eps = torch.tensor(1.0, dtype=dtype)
    while one + eps / 2 != one:
        eps = eps / 2
    return eps.item()


rows = []
for dtype, fraction_bits in [(torch.float32, 23), (torch.bfloat16, 7), (torch.float16, 10)]:
    eps = measured_epsilon(dtype)
    info = torch.finfo(dtype)
    assert eps == info.eps == 2.0**-fraction_bits
    one = torch.tensor(1.0, dtype=dtype)
    assert one + eps != one and one + eps / 2 == one    # 1 + eps/2 rounds back down to 1
    rows.append((str(dtype).removeprefix("torch."), eps, info.max, info.tiny))
    print(f"{rows[-1][0]:>9}: eps = {eps:.3e}, largest = {info.max:.3e}, "
          f"smallest normal = {info.tiny:.3e}")
glue("s1_2_eps_fp32", rows[0][1], ".2e")
glue("s1_2_eps_bf16", rows[1][1], ".4g")
glue("s1_2_eps_fp16", rows[2][1], ".4g")
glue("s1_2_max_fp16", rows[2][2], ",.0f")

# %% [markdown]
# The loop finds $\varepsilon$ = {glue}`s1_2_eps_fp32` for float32, {glue}`s1_2_eps_bf16`
# for bfloat16 and {glue}`s1_2_eps_fp16` for float16, exactly `torch.finfo(dtype).eps`. In
# each type, $1 + \varepsilon$ is the next number after $1$ and $1 + \varepsilon/2$ rounds to
# $1$ (a tie, resolved towards the neighbour with an even last bit). Relative precision
# matters in practice: bfloat16 cannot tell $256$ from $257$, so adding many small numbers to
# a large running sum loses them; float16 keeps more digits but overflows to infinity above
# {glue}`s1_2_max_fp16`. This is why mixed-precision training {cite:p}`micikevicius2018mixed`
# keeps a float32 copy of the weights and, with float16, scales the loss.

# %%
assert torch.tensor(256.0, dtype=torch.bfloat16) + 1 == 256          # 257 is not representable
assert torch.tensor(70000.0, dtype=torch.float16).isinf()           # beyond float16's range
assert torch.tensor(70000.0, dtype=torch.bfloat16).isfinite()       # bfloat16 has the range
total = torch.tensor(0.0, dtype=torch.bfloat16)
for _ in range(1000):
    total = total + torch.tensor(0.01, dtype=torch.bfloat16)
glue("s1_2_bf16_sum", total.item(), ".3g")
print("1000 additions of 0.01 in bfloat16:", total.item())
assert abs(total.item() - 10.0) > 1.0                                # far from the true 10

# %% [markdown]
# Adding $0.01$ a thousand times in bfloat16 gives {glue}`s1_2_bf16_sum` instead of $10$:
# once the sum is large enough, $0.01$ is less than half the gap to the next bfloat16 number
# and each addition rounds away. Integer tensors, finally, have exact arithmetic; dividing two
# of them with `/` gives a float, `//` an integer; and `.to(dtype)` converts.

# %%
i = torch.tensor([7, -7])
assert (i / 2).dtype == torch.float32 and torch.equal(i // 2, torch.tensor([3, -4]))
assert i.to(torch.float16).dtype == torch.float16

# %% [markdown]
# ## Devices
#
# A tensor's memory is on one **device**: `cpu`, `cuda` (an NVIDIA GPU, or an AMD GPU under
# ROCm) or `mps` (Apple silicon). An operation runs on the device of its inputs, and all inputs
# must be on the same device. The library's `get_device()` picks CUDA if it is available, then
# MPS, then the CPU, so every chapter runs unchanged on any of them (set `DLBOOK_DEVICE=cpu` to
# force the CPU). `.to(device)` moves a tensor (a copy across devices; the tensor itself when
# it is already there), and creation functions take `device=` to allocate directly on it.

# %%
device = get_device()
print("this page was built on:", device)
x_cpu = torch.randn(3)
x_dev = x_cpu.to(device)
y_dev = torch.ones(3, device=device)
assert x_dev.device.type == device.type and torch.equal(x_dev.cpu(), x_cpu)
assert x_cpu.to("cpu") is x_cpu                                  # no copy when already there
if device.type != "cpu":
    try:
        x_cpu + y_dev
    except RuntimeError as err:
        print("mixing devices fails:", str(err).split("\n")[0])

# %% [markdown]
# Moving data between CPU and GPU is slow compared with computing on the GPU, so code keeps
# tensors on one device and moves only what it must (a batch in, a scalar loss out with
# `.item()`).
#
# ## Broadcasting
#
# Adding a bias vector of shape `(n,)` to every row of a `(batch, n)` matrix should not need a
# loop or a copy of the bias. **Broadcasting** makes elementwise operations work on tensors of
# different shapes by these rules:
#
# 1. Align the two shapes **from the right** (the last dimensions face each other); if one has
#    fewer dimensions, pad it on the left with 1s.
# 2. In each position the two sizes must be **equal, or one of them must be 1**.
# 3. The result takes the larger size in each position; a size-1 dimension is repeated along it
#    (virtually: no memory is copied).
#
# For example $(8, 1, 6, 1)$ with $(7, 1, 5)$: pad the second to $(1, 7, 1, 5)$, then every
# position has a 1 or equal sizes, and the result is $(8, 7, 6, 5)$.

# %%
assert torch.broadcast_shapes((8, 1, 6, 1), (7, 1, 5)) == (8, 7, 6, 5)
X = torch.randn(4, 3)
bias = torch.tensor([10.0, 20.0, 30.0])
assert torch.equal(X + bias, X + bias.expand(4, 3))          # (4, 3) + (3,) -> (4, 3)
col = torch.tensor([[1.0], [2.0], [3.0], [4.0]])              # (4, 1)
assert torch.equal((X * col)[2], 3.0 * X[2])                   # each row scaled by its entry
outer = torch.arange(3.0).view(3, 1) * torch.arange(4.0)      # (3, 1) * (4,) -> (3, 4)
assert outer.shape == (3, 4) and outer[2, 3] == 2.0 * 3.0

try:
    torch.ones(3) + torch.ones(4)
except RuntimeError as err:
    message = str(err)
    print("(3,) + (4,) fails:", message)
    assert "must match" in message
else:
    raise AssertionError("shapes (3,) and (4,) must not broadcast")

# %% [markdown]
# Shapes `(3,)` and `(4,)` fail rule 2 and PyTorch says exactly which dimension is at fault.
# The dangerous case is the one that does *not* fail: subtracting a column `(n, 1)` from a
# vector `(n,)` broadcasts to an `(n, n)` matrix. A loss computed from predictions of shape
# `(n, 1)` and targets of shape `(n,)` is then silently wrong, which is why the code in this book
# asserts shapes.

# %%
pred, target = torch.randn(5, 1), torch.randn(5)
assert (pred - target).shape == (5, 5)                        # not (5,)!
assert (pred.squeeze(1) - target).shape == (5,)

# %% [markdown]
# ## Autograd
#
# Training needs the derivative of a loss with respect to every parameter. PyTorch's
# **autograd** computes them by reverse-mode automatic differentiation {cite:p}`baydin2018automatic`:
# when a tensor has `requires_grad=True`, every operation on it is recorded in a graph, and
# `.backward()` on a scalar result walks the graph backwards, applying the chain rule, and adds
# $\partial(\text{result})/\partial x$ into `x.grad`. (Section {doc}`../02_math/03_backprop`
# derives the algorithm.) Take
#
# $$ f(x) = x^3 + \sin x, \qquad f'(x) = 3x^2 + \cos x . $$

# %%
x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
f = (x**3 + torch.sin(x)).sum()         # sum: backward needs a scalar; d(sum)/dx_i = f'(x_i)
f.backward()
by_hand = 3 * x.detach() ** 2 + torch.cos(x.detach())
print("autograd:", x.grad, "\nby hand: ", by_hand)
assert torch.allclose(x.grad, by_hand)

# %% [markdown]
# Three details cause most autograd surprises:
#
# * **Gradients accumulate.** A second `backward()` *adds* to `x.grad`; training loops reset
#   it (`optimizer.zero_grad()`) every step. (Accumulation is a feature: it sums gradients
#   over several small batches.)
# * **`torch.no_grad()`** switches recording off: use it for evaluation and for updating
#   weights, where no derivative is wanted; it saves the memory the graph would take.
# * **`.detach()`** returns a tensor that shares the data but is cut off from the graph, so
#   gradients do not flow through it.

# %%
(x**3 + torch.sin(x)).sum().backward()      # a second backward pass adds to x.grad
assert torch.allclose(x.grad, 2 * by_hand)
x.grad = None                                # reset, as zero_grad does

with torch.no_grad():
    y = x * 2
assert not y.requires_grad and y.grad_fn is None

w = torch.tensor(3.0, requires_grad=True)
loss = w * w.detach()                        # d/dw treats the detached factor as a constant
loss.backward()
assert w.grad == 3.0                         # not 2 * w = 6
assert w.detach().data_ptr() == w.data_ptr()  # detach shares memory

# %% [markdown]
# ## Modules
#
# An `nn.Module` bundles **parameters** (tensors that training updates, wrapped in
# `nn.Parameter`, which sets `requires_grad=True`) with a `forward` method that uses them.
# Assigning a parameter or a sub-module as an attribute in `__init__` registers it, so that
# `.parameters()` finds every weight for the optimiser, `.to(device)` moves them all, and
# `.state_dict()` returns them as a name → tensor dictionary for saving. Here is a small custom
# module: an affine map followed by a learnable-temperature softplus.

# %%
class ScaledAffine(nn.Module):
    """y = softplus(t * (x @ W.T + b)) / t; input (batch, n_in), output (batch, n_out)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)                  # a sub-module: W (n_out, n_in), b
        self.temperature = nn.Parameter(torch.tensor(1.0))   # a parameter of this module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        return nn.functional.softplus(t * self.linear(x)) / t


m = ScaledAffine(4, 2)
for name, p in m.named_parameters():
    print(f"{name:>15}: shape {tuple(p.shape)}, requires_grad={p.requires_grad}")
assert [n for n, _ in m.named_parameters()] == ["temperature", "linear.weight", "linear.bias"]
assert sum(p.numel() for p in m.parameters()) == 1 + 4 * 2 + 2
assert list(m.state_dict()) == ["temperature", "linear.weight", "linear.bias"]

copy = ScaledAffine(4, 2)
copy.load_state_dict(m.state_dict())          # same weights, so the same function
xb = torch.randn(5, 4)
assert torch.equal(copy(xb), m(xb))
m(xb).sum().backward()
assert all(p.grad is not None for p in m.parameters())   # gradients reach every parameter

# %% [markdown]
# ## `torch.compile`
#
# In **eager** mode, the default, PyTorch runs each operation as soon as Python reaches it:
# one kernel per operation, each reading its inputs from memory and writing its output back.
# For a chain of elementwise operations on a large tensor, that memory traffic, not
# arithmetic, sets the time. `torch.compile(fn)` {cite:p}`ansel2024pytorch2` changes this in two
# steps. **TorchDynamo** hooks into CPython's frame evaluation, runs the function's bytecode
# symbolically and captures the tensor operations into a graph (falling back to Python for
# anything it cannot capture, a "graph break"). **TorchInductor** then compiles the graph: it
# **fuses** chains of elementwise operations into one loop that reads each input once and
# writes the output once, and generates C++/OpenMP code on a CPU or Triton kernels on a GPU.
# The compiled code is cached with *guards*, conditions on its inputs such as their shapes and
# dtypes; a call that fails a guard triggers a recompilation.
#
# Whether it helps is an empirical question, so we measure. The first test is a hand-written
# GELU activation (section {doc}`03_mlp`) in its tanh approximation,
#
# $$ \mathrm{GELU}(x) \approx \tfrac12 x \left(1 + \tanh\!\left(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right)\right), $$
#
# which in eager mode is about eight separate kernels over the whole tensor.

# %%
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


# `dlbook.bench.seconds_per_call` is the book's stopwatch: warm-up calls, then the median of
# timed calls, with the GPU synchronised (its kernels run asynchronously). With no warm-up and
# one call it times a first call, compilation included.
repeats = pick(smoke=2, book=20)
n = pick(smoke=1024, book=2**22, full=2**26)
big = torch.randn(n, device=device)
gelu_compiled = torch.compile(gelu_tanh)
compile_seconds = seconds_per_call(lambda: gelu_compiled(big), repeats=1, warmup=0, device=device)
assert torch.allclose(gelu_compiled(big), gelu_tanh(big), atol=1e-6)
assert torch.allclose(gelu_tanh(big), nn.functional.gelu(big, approximate="tanh"), atol=1e-6)
t_eager = seconds_per_call(lambda: gelu_tanh(big), repeats=repeats, warmup=2, device=device)
t_compiled = seconds_per_call(lambda: gelu_compiled(big), repeats=repeats, warmup=2, device=device)
print(f"GELU on {n:,} numbers: eager {1e3 * t_eager:.2f} ms, compiled {1e3 * t_compiled:.2f} ms, "
      f"first call (compiling) {compile_seconds:.1f} s")
glue("s1_2_gelu_n", n, ",")
glue("s1_2_gelu_eager_ms", 1e3 * t_eager, ".2f")
glue("s1_2_gelu_compiled_ms", 1e3 * t_compiled, ".2f")
glue("s1_2_gelu_speedup", t_eager / t_compiled, ".1f")
glue("s1_2_compile_seconds", compile_seconds, ".1f")

# %% [markdown]
# The second test is a small MLP (three `Linear` layers of width 512 with GELU between them) on
# a batch of 256 vectors, in inference mode. Here much of the work is in the matrix products,
# which eager mode already hands to an optimised matrix library; fusion can only merge the bias
# additions and activations around them, so there is less to gain.

# %%
width, batch = pick(smoke=32, book=512), pick(smoke=8, book=256)
mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                    nn.Linear(width, width)).to(device)
mlp_compiled = torch.compile(mlp)
xb = torch.randn(batch, width, device=device)
with torch.no_grad():
    mlp_compile_seconds = seconds_per_call(lambda: mlp_compiled(xb), repeats=1, warmup=0, device=device)
    assert torch.allclose(mlp_compiled(xb), mlp(xb), atol=1e-5)
    t_mlp_eager = seconds_per_call(lambda: mlp(xb), repeats=repeats, warmup=2, device=device)
    t_mlp_compiled = seconds_per_call(lambda: mlp_compiled(xb), repeats=repeats, warmup=2, device=device)
print(f"MLP: eager {1e3 * t_mlp_eager:.3f} ms, compiled {1e3 * t_mlp_compiled:.3f} ms, "
      f"first call (compiling) {mlp_compile_seconds:.1f} s")
glue("s1_2_mlp_eager_ms", 1e3 * t_mlp_eager, ".3f")
glue("s1_2_mlp_compiled_ms", 1e3 * t_mlp_compiled, ".3f")
glue("s1_2_mlp_speedup", t_mlp_eager / t_mlp_compiled, ".2f")
glue("s1_2_mlp_compile_seconds", mlp_compile_seconds, ".1f")
glue("s1_2_device", str(device))

fig, ax = plt.subplots(figsize=(6, 2.6))
labels = ["GELU, eager", "GELU, compiled", "MLP, eager", "MLP, compiled"]
times_ms = [1e3 * t for t in (t_eager, t_compiled, t_mlp_eager, t_mlp_compiled)]
ax.barh(labels, times_ms, color=["0.6", "tab:blue", "0.6", "tab:blue"])
ax.invert_yaxis()
ax.set_xlabel(f"milliseconds per call (median of {repeats}) on {device.type}")
ax.grid(axis="x", alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# On the machine that built this page (device {glue}`s1_2_device`), the elementwise GELU on
# {glue}`s1_2_gelu_n` numbers took {glue}`s1_2_gelu_eager_ms` ms eager and
# {glue}`s1_2_gelu_compiled_ms` ms compiled, a speed-up of {glue}`s1_2_gelu_speedup`×; the MLP
# took {glue}`s1_2_mlp_eager_ms` ms eager and {glue}`s1_2_mlp_compiled_ms` ms compiled, a
# speed-up of {glue}`s1_2_mlp_speedup`×. The price is paid once per process and shape: the first
# call of the compiled GELU took {glue}`s1_2_compile_seconds` s and that of the MLP
# {glue}`s1_2_mlp_compile_seconds` s, spent tracing the function and compiling it or loading the
# compiled code from PyTorch's on-disk cache (under the system's temporary directory). Where
# that cache already holds the same functions, the first call only traces and loads; with an
# empty cache the generated C++ or Triton code must also be compiled, and it takes longer. The
# outputs equal the eager ones up to floating-point rounding, which the code asserts; the
# speed-ups depend on the machine and are not asserted.
#
# The lesson generalises: compilation pays where many cheap, memory-bound operations can be
# fused (activations, normalisations, the arithmetic of an optimiser step, attention's
# softmax), on tensors large enough that memory traffic dominates, in code that runs many times.
# Fusion does not make the matrix products themselves faster, so it has less to offer where
# they dominate, and it is not worth its compile time for code that runs once. The library's
# trainer therefore makes compiling an option, not the default.

# %% [markdown]
# ## Summary
#
# * A tensor is memory plus shape, strides, dtype and device. Reshapes, transposes and slices
#   are **views** sharing memory; advanced indexing and `reshape` of non-contiguous tensors
#   **copy**.
# * float32 has $\varepsilon = 2^{-23}$, bfloat16 $2^{-7}$ (float32's range, little precision),
#   float16 $2^{-10}$ (more precision, range only to about 65,504); integer data is `int64`.
# * `get_device()` picks CUDA, MPS or CPU; all inputs of an operation must share a device.
# * Broadcasting aligns shapes from the right; sizes must match or be 1. Check shapes: a
#   `(n, 1)` minus `(n,)` is silently `(n, n)`.
# * Autograd records operations on tensors that require gradients; `backward()` *accumulates*
#   into `.grad`; `no_grad()` and `detach()` stop recording.
# * `nn.Module` registers parameters and sub-modules; `state_dict()` saves them.
# * `torch.compile` = TorchDynamo (graph capture) + TorchInductor (fused code generation). It
#   pays off most on chains of memory-bound elementwise operations and costs a one-off compile
#   time; whether it pays off for your code is a measurement, as above, not an assumption.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-1-2-1
# ```
# Without running code, predict the shape of `torch.ones(2, 1, 3) + torch.ones(4, 1)`, and
# say which of `torch.ones(2, 3) + torch.ones(2)` and `torch.ones(2, 3) + torch.ones(3)` fails.
# Then check.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-2-1
# :class: dropdown
# ```
# Aligned from the right, $(2, 1, 3)$ and $(\cdot, 4, 1)$ give $(2, 4, 3)$. For $(2, 3)$ with
# $(2,)$ the last dimensions are $3$ and $2$: neither is 1, so it fails; with $(3,)$ it works
# (the vector is added to each row). To add a per-row value, shape it as a column, $(2, 1)$.

# %%
assert (torch.ones(2, 1, 3) + torch.ones(4, 1)).shape == (2, 4, 3)
assert (torch.ones(2, 3) + torch.ones(3)).shape == (2, 3)
assert (torch.ones(2, 3) + torch.ones(2, 1)).shape == (2, 3)
try:
    torch.ones(2, 3) + torch.ones(2)
    raise AssertionError("should not broadcast")
except RuntimeError:
    pass

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-2-2
# ```
# For $g(a, b) = a^2 b + e^{ab}$, derive $\partial g/\partial a$ and $\partial g/\partial b$
# by hand, and check them with autograd at $a = 0.5$, $b = -1.5$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-2-2
# :class: dropdown
# ```
# $\partial g/\partial a = 2ab + b\,e^{ab}$ and $\partial g/\partial b = a^2 + a\,e^{ab}$.

# %%
a_ = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
b_ = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
(a_**2 * b_ + torch.exp(a_ * b_)).backward()
ea = math.exp(0.5 * -1.5)
assert math.isclose(a_.grad.item(), 2 * 0.5 * -1.5 + -1.5 * ea)
assert math.isclose(b_.grad.item(), 0.5**2 + 0.5 * ea)
print(a_.grad.item(), b_.grad.item())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-2-3
# ```
# What is the largest integer $N$ such that every integer $0, 1, \dots, N$ is exactly
# representable in bfloat16? In float16? Verify.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-2-3
# :class: dropdown
# ```
# With $p$ fraction bits, every integer up to $2^{p+1}$ is representable, and $2^{p+1} + 1$ is
# not (it would need $p + 1$ fraction bits). bfloat16 ($p = 7$): $N = 256$; float16
# ($p = 10$): $N = 2048$.

# %%
for dtype, p in [(torch.bfloat16, 7), (torch.float16, 10)]:
    ints = torch.arange(2 ** (p + 1) + 2, dtype=torch.float64)
    exact = ints.to(dtype).to(torch.float64) == ints
    assert exact[: 2 ** (p + 1) + 1].all() and not exact[2 ** (p + 1) + 1]
    print(dtype, "exact up to", 2 ** (p + 1))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-2-4
# ```
# The code `torch.compile` generates is specialised to the shapes it was traced with. Time the
# first call of `gelu_compiled` on a tensor of a new size, compare it with the time of a
# repeated call, and check that the result still equals eager mode.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-2-4
# :class: dropdown
# ```
# The first call on a new shape is slower than the repeated ones: Dynamo traces the function
# again and Inductor generates (or finds in its disk cache) code for the new shape. The values
# still match eager mode.

# %%
other = torch.randn(n // 2 + 1, device=device)
first = seconds_per_call(lambda: gelu_compiled(other), repeats=1, warmup=0, device=device)
again = seconds_per_call(lambda: gelu_compiled(other), repeats=repeats, warmup=2, device=device)
assert torch.allclose(gelu_compiled(other), gelu_tanh(other), atol=1e-6)
print(f"new shape: first call {first:.2f} s, then {1e3 * again:.2f} ms per call")

# %% [markdown]
# ```{solution-end}
# ```
