# %% [markdown]
# # Backpropagation from scratch
#
# Training a network means following the gradient of the loss with respect to every parameter,
# and a large model has billions of them. Computing each partial derivative separately would
# cost one evaluation of the network per parameter; **backpropagation**
# {cite:p}`rumelhart1986learning` computes all of them for the cost of about one extra pass
# backwards through the network. In PyTorch it hides behind one call, `loss.backward()`. This
# section takes it apart: the chain rule, the computation graph it runs on, the two ways of
# applying it (forward and reverse mode), and then a complete reverse-mode **automatic
# differentiation** engine, about a hundred lines of NumPy, that we check against PyTorch's
# autograd and use to train a small network.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from sklearn.datasets import make_moons
from torch import nn
from torch.nn import functional as F

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.bench import seconds_per_call
from dlbook.book import glue

seed_everything(0)
device = get_device()  # the engine below runs on the CPU (NumPy); PyTorch checks use `device`
torch.set_default_dtype(torch.float64)  # compare with autograd in double precision

# %% [markdown]
# ## The chain rule on a computation graph
#
# Any program that computes a number from inputs with elementary operations ($+$, $\times$,
# $\exp$, $\tanh$, matrix products, …) can be drawn as a **computation graph**: a directed
# acyclic graph whose leaves are the inputs and parameters, whose inner nodes are the results of
# operations, and whose edges say which results feed which operation. Take
#
# $$
# L = (a\,b + c)^2, \qquad\text{computed as}\qquad d = a\,b,\quad e = d + c,\quad L = e^2 .
# $$
#
# The **chain rule** says how a change in an input travels to the output. If $L$ depends on
# $d$ only through $e$, then $\partial L/\partial d = (\partial L/\partial e)(\partial e/\partial
# d)$. When a variable $v$ feeds several operations $u_1, \dots, u_k$, its influence arrives
# along every path, and the contributions add:
#
# $$
# \frac{\partial L}{\partial v} = \sum_{i=1}^{k} \frac{\partial L}{\partial u_i}\,
# \frac{\partial u_i}{\partial v}.
# $$ (eq-2-3-chain)
#
# Write $\bar v = \partial L/\partial v$ for the **adjoint** (the gradient of the final output
# with respect to $v$). Equation {eq}`eq-2-3-chain` computes the adjoint of a node from the adjoints
# of the nodes it feeds, each multiplied by a *local* derivative that depends only on one
# operation. For our example, starting from $\bar L = 1$:
#
# $$
# \bar e = 2e, \qquad \bar d = \bar e \cdot 1, \qquad \bar c = \bar e \cdot 1, \qquad
# \bar a = \bar d\, b, \qquad \bar b = \bar d\, a .
# $$
#
# Every operation therefore needs to know only two things: how to compute its output from its
# inputs (the forward pass) and how to turn the adjoint of its output into contributions to the
# adjoints of its inputs (the backward pass). That is the whole of backpropagation.

# %% [markdown]
# ## Forward mode and reverse mode
#
# The chain rule can be applied in two orders {cite:p}`griewank2008evaluating,baydin2018automatic`.
# For a function $f:\mathbb{R}^n\to\mathbb{R}^m$ composed of steps $f = f_K\circ\cdots\circ f_1$,
# the Jacobian is the product $J = J_K \cdots J_1$.
#
# * **Forward mode** carries, next to every value, its derivative along one chosen input
#   direction $\dot x$, and multiplies from the right: $J\dot x = J_K(\cdots(J_1 \dot x))$, a
#   *Jacobian-vector product*. One pass gives one column of $J$; the full gradient of a scalar
#   loss with $n$ parameters needs $n$ passes.
# * **Reverse mode** first runs the function forwards, remembering the graph, then multiplies
#   from the left starting at the output: $\bar y^\top J = ((\bar y^\top J_K)\cdots)J_1$, a
#   *vector-Jacobian product*. One backward pass gives one row of $J$; for a scalar loss
#   ($m = 1$) that row is the whole gradient, whatever $n$ is.
#
# Training has $m = 1$ and $n$ in the millions, so deep learning uses reverse mode;
# backpropagation is reverse mode applied to a neural network. The price is memory: the
# backward pass needs the intermediate values of the forward pass, which must be stored.
#
# Forward mode is easy to write with **dual numbers**: a pair $(v, \dot v)$ whose arithmetic
# follows the rules of differentiation, e.g. $(u, \dot u)(v, \dot v) = (uv, \dot u v + u \dot
# v)$. Seeding $\dot a = 1$ and all other inputs with $0$ yields $\partial L / \partial a$:

# %%
class Dual:
    """A value with its derivative along one input direction (forward mode)."""

    def __init__(self, val: float, dot: float = 0.0) -> None:
        self.val, self.dot = val, dot

    def __add__(self, other: "Dual") -> "Dual":
        return Dual(self.val + other.val, self.dot + other.dot)

    def __mul__(self, other: "Dual") -> "Dual":
        return Dual(self.val * other.val, self.dot * other.val + self.val * other.dot)

    def __pow__(self, k: int) -> "Dual":
        return Dual(self.val**k, k * self.val ** (k - 1) * self.dot)


a0, b0, c0 = 2.0, -3.0, 10.0
forward_grads = []
for i in range(3):  # one forward pass per input
    a, b, c = (Dual(v, 1.0 if j == i else 0.0) for j, v in enumerate((a0, b0, c0)))
    forward_grads.append(((a * b + c) ** 2).dot)

e0 = a0 * b0 + c0
by_hand = [2 * e0 * b0, 2 * e0 * a0, 2 * e0]
print("forward mode:", forward_grads, " by hand:", by_hand)
assert forward_grads == by_hand

# %% [markdown]
# Three passes for three inputs. Reverse mode gets all three from one backward pass. The cost
# difference grows with the number of inputs: below, PyTorch computes the gradient of
# $f(x) = \sum_i \tanh(Wx)_i$ for $x \in \mathbb{R}^n$ with $n$ forward-mode passes
# (`torch.func.jvp`, one per basis vector) and with one reverse-mode pass (`torch.autograd.grad`).

# %%
def f_scalar(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    return torch.tanh(W @ x).sum()


sizes = pick(smoke=[4, 16], book=[8, 32, 128, 512])
fwd_times, rev_times = [], []
for n in sizes:
    W = torch.randn(64, n, device=device) / math.sqrt(n)
    x = torch.randn(n, device=device)

    def forward_mode(W=W, x=x, n=n) -> torch.Tensor:
        basis = torch.eye(n, device=device)
        return torch.stack([torch.func.jvp(lambda v: f_scalar(v, W), (x,), (basis[i],))[1] for i in range(n)])

    def reverse_mode(W=W, x=x) -> torch.Tensor:
        xr = x.clone().requires_grad_()
        return torch.autograd.grad(f_scalar(xr, W), xr)[0]

    torch.testing.assert_close(forward_mode(), reverse_mode())  # same gradient, two ways
    fwd_times.append(seconds_per_call(forward_mode, repeats=3, warmup=0))
    rev_times.append(seconds_per_call(reverse_mode, repeats=3, warmup=0))

plt.figure(figsize=(5, 3.2))
plt.loglog(sizes, fwd_times, "o-", label="forward mode (n passes)")
plt.loglog(sizes, rev_times, "s-", label="reverse mode (1 pass)")
plt.xlabel("number of inputs n")
plt.ylabel("seconds for the full gradient")
plt.title("Gradient of a scalar function of n inputs")
plt.grid(alpha=0.3, which="both")
plt.legend()
plt.show()
ratio = fwd_times[-1] / rev_times[-1]
glue("s2_3_fwd_rev_ratio", ratio, ".0f")
glue("s2_3_fwd_rev_n", sizes[-1])
if checks_enabled():
    assert ratio > 10, ratio

# %% [markdown]
# With $n =$ {glue}`s2_3_fwd_rev_n` inputs, forward mode takes {glue}`s2_3_fwd_rev_ratio` times
# as long as reverse mode to produce the same gradient.
#
# ## A reverse-mode engine
#
# We now write reverse mode ourselves. A `Tensor` holds
#
# * `data`: a NumPy array (the value computed in the forward pass),
# * `grad`: an array of the same shape holding the adjoint $\partial L/\partial(\text{this})$,
#   initialised to zero,
# * `_parents`: the tensors it was computed from (its incoming edges in the graph), and
# * `_backward`: a closure that, given this tensor's `grad`, **adds** the local contributions of
#   equation {eq}`eq-2-3-chain` to the `grad` of each parent.
#
# Every operation creates its output tensor and attaches the closure. The adjoints are *added*
# (`+=`), never assigned, because a tensor used twice (like $x$ in $x\cdot x$) receives a
# contribution from each use.
#
# Arrays bring one more detail: **broadcasting**. When a bias of shape $(h,)$ is added to a
# batch of shape $(N, h)$, NumPy repeats the bias $N$ times. The bias is used $N$ times, so by
# equation {eq}`eq-2-3-chain` its adjoint is the *sum* of the $N$ rows of the output's adjoint.
# `unbroadcast` sums over the axes that broadcasting created or stretched.
#
# The local derivatives we need, for $y = f(x)$ with output adjoint $\bar y$:
#
# | operation | contributions to the inputs' adjoints |
# |---|---|
# | $z = x + y$ | $\bar x \mathrel{+}= \bar z$, $\bar y \mathrel{+}= \bar z$ |
# | $z = x \odot y$ | $\bar x \mathrel{+}= \bar z \odot y$, $\bar y \mathrel{+}= \bar z \odot x$ |
# | $z = x / y$ | $\bar x \mathrel{+}= \bar z / y$, $\bar y \mathrel{+}= -\bar z\, x / y^2$ |
# | $z = x^k$ | $\bar x \mathrel{+}= \bar z\, k x^{k-1}$ |
# | $z = e^x$ | $\bar x \mathrel{+}= \bar z\, z$ |
# | $z = \log x$ | $\bar x \mathrel{+}= \bar z / x$ |
# | $z = \tanh x$ | $\bar x \mathrel{+}= \bar z (1 - z^2)$ |
# | $z = \max(x, 0)$ | $\bar x \mathrel{+}= \bar z \odot [x > 0]$ |
# | $Z = XW$, $X$ is $N\times k$, $W$ is $k \times m$ | $\bar X \mathrel{+}= \bar Z W^\top$, $\bar W \mathrel{+}= X^\top \bar Z$ |
# | $s = \sum_i x_i$ | $\bar x_i \mathrel{+}= \bar s$ |
#
# The matrix-product rule follows from $Z_{ij} = \sum_k X_{ik} W_{kj}$: $\partial L/\partial
# X_{ik} = \sum_j \bar Z_{ij} W_{kj} = (\bar Z W^\top)_{ik}$, and likewise for $W$.

# %%
def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing NumPy broadcasting."""
    while grad.ndim > len(shape):  # axes that broadcasting added in front
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):  # axes of size 1 that it stretched
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Tensor:
    """An array that remembers how it was computed, so that it can be differentiated."""

    def __init__(self, data, parents: tuple["Tensor", ...] = (), op: str = "", label: str = "") -> None:
        self.data = np.asarray(data, dtype=np.float64)
        self.grad = np.zeros_like(self.data)
        self._parents = parents
        self._backward = lambda: None
        self.op, self.label = op, label

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Tensor({self.data}, op={self.op!r})"

    # ---- operations: each builds the output and the closure that back-propagates into it ----
    def __add__(self, other) -> "Tensor":
        other = other if isinstance(other, Tensor) else Tensor(other)
        out = Tensor(self.data + other.data, (self, other), "+")

        def _backward() -> None:
            self.grad += unbroadcast(out.grad, self.shape)
            other.grad += unbroadcast(out.grad, other.shape)

        out._backward = _backward
        return out

    def __mul__(self, other) -> "Tensor":
        other = other if isinstance(other, Tensor) else Tensor(other)
        out = Tensor(self.data * other.data, (self, other), "×")

        def _backward() -> None:
            self.grad += unbroadcast(out.grad * other.data, self.shape)
            other.grad += unbroadcast(out.grad * self.data, other.shape)

        out._backward = _backward
        return out

    def __truediv__(self, other) -> "Tensor":
        other = other if isinstance(other, Tensor) else Tensor(other)
        out = Tensor(self.data / other.data, (self, other), "÷")

        def _backward() -> None:
            self.grad += unbroadcast(out.grad / other.data, self.shape)
            other.grad += unbroadcast(-out.grad * self.data / other.data**2, other.shape)

        out._backward = _backward
        return out

    def __pow__(self, k: float) -> "Tensor":
        out = Tensor(self.data**k, (self,), f"^{k:g}")

        def _backward() -> None:
            self.grad += out.grad * k * self.data ** (k - 1)

        out._backward = _backward
        return out

    def __matmul__(self, other: "Tensor") -> "Tensor":
        out = Tensor(self.data @ other.data, (self, other), "@")

        def _backward() -> None:  # (N, k) @ (k, m)
            self.grad += out.grad @ other.data.T
            other.grad += self.data.T @ out.grad

        out._backward = _backward
        return out

    def _unary(self, value: np.ndarray, local_grad: np.ndarray, op: str) -> "Tensor":
        """An elementwise op whose derivative is `local_grad` (already evaluated)."""
        out = Tensor(value, (self,), op)

        def _backward() -> None:
            self.grad += out.grad * local_grad

        out._backward = _backward
        return out

    def exp(self) -> "Tensor":
        value = np.exp(self.data)
        return self._unary(value, value, "exp")

    def log(self) -> "Tensor":
        return self._unary(np.log(self.data), 1.0 / self.data, "log")

    def tanh(self) -> "Tensor":
        value = np.tanh(self.data)
        return self._unary(value, 1.0 - value**2, "tanh")

    def relu(self) -> "Tensor":
        return self._unary(np.maximum(self.data, 0.0), (self.data > 0).astype(np.float64), "relu")

    def sum(self) -> "Tensor":
        out = Tensor(self.data.sum(), (self,), "sum")

        def _backward() -> None:
            self.grad += np.broadcast_to(out.grad, self.shape)

        out._backward = _backward
        return out

    def mean(self) -> "Tensor":
        return self.sum() / self.data.size

    # ---- the rest is derived from the operations above ----
    def __neg__(self) -> "Tensor":
        return self * -1.0

    def __sub__(self, other) -> "Tensor":
        return self + (-other if isinstance(other, Tensor) else Tensor(-np.asarray(other)))

    def __radd__(self, other) -> "Tensor":
        return self + other

    def __rmul__(self, other) -> "Tensor":
        return self * other

    def __rsub__(self, other) -> "Tensor":
        return Tensor(other) - self

    def __rtruediv__(self, other) -> "Tensor":
        return Tensor(other) / self

    # ---- reverse mode ----
    def backward(self) -> None:
        """Fill `.grad` of every tensor this one depends on with d(self)/d(that tensor)."""
        order: list[Tensor] = []
        seen: set[int] = set()

        def visit(node: Tensor) -> None:  # depth-first: parents before children
            if id(node) not in seen:
                seen.add(id(node))
                for parent in node._parents:
                    visit(parent)
                order.append(node)

        visit(self)
        self.grad = np.ones_like(self.data)  # dL/dL = 1
        for node in reversed(order):  # every node after all nodes that use it
            node._backward()

# %% [markdown]
# `backward` first sorts the graph **topologically**: a depth-first search appends a node only
# after all the nodes it was computed from, so in the reversed list every node comes after all
# the nodes that use it. By the time a node's closure runs, its adjoint has received every
# contribution, and it can pass it on. Each closure runs once and does about as much
# arithmetic as its operation's forward computation (two matrix products for one), so the
# backward pass costs a small constant multiple of the forward pass.
#
# ### The engine against autograd
#
# We check the engine on our example and on four more expressions, comparing the gradient of
# every input with PyTorch's autograd, in double precision. The second expression uses $x$
# three times; the third uses every elementwise operation; the last broadcasts a bias and
# multiplies matrices.

# %%
def both(*arrays):
    """The same values as engine tensors and as PyTorch leaf tensors."""
    ours = [Tensor(a) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    return ours, theirs


def check(fn, *arrays, name: str) -> float:
    """Back-propagate fn in both engines and return the largest gradient difference."""
    ours, theirs = both(*arrays)
    fn(*ours).backward()
    fn(*theirs).backward()
    worst = 0.0
    for o, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(o.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
        worst = max(worst, float(np.abs(o.grad - t.grad.numpy()).max()))
    print(f"{name:<28} max |ours - autograd| = {worst:.1e}")
    return worst


rng = np.random.default_rng(0)
worst = max(
    check(lambda a, b, c: (a * b + c) ** 2, 2.0, -3.0, 10.0, name="(ab + c)^2"),
    check(lambda x: x * x + x, 3.0, name="x*x + x (x used 3 times)"),
    check(
        lambda a, b, c: (a.exp() + b.exp()).log() / (a - b) ** 2 + (a * b).tanh() - (c - a).relu() / c,
        0.5, -1.5, 2.0, name="exp, log, /, -, tanh, relu",
    ),
    check(lambda x, y: ((x / y - 2.0) ** 3).sum(), rng.normal(size=(3, 4)), rng.uniform(1, 2, size=(3, 4)), name="elementwise arrays"),
    check(
        lambda X, W, b: ((X @ W + b).tanh() ** 2).mean(),
        rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=(4,)),
        name="mean(tanh(XW + b)^2)",
    ),
)
glue("s2_3_expr_err", worst, ".0e")

# %% [markdown]
# The largest difference over all five expressions is {glue}`s2_3_expr_err`: the same numbers up
# to rounding. A third, independent check needs no automatic differentiation at all: the
# **central difference** $(f(x + h) - f(x - h))/2h$, which approximates the derivative with an
# error of order $h^2$.

# %%
def central_difference(fn, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (fn(Tensor(x + step)).data - fn(Tensor(x - step)).data) / (2 * h)
    return grad


def fn(X):
    return ((X @ Tensor(np.ones((3, 2))) + 1.0).tanh() * X.sum()).mean()


X = Tensor(rng.normal(size=(4, 3)))
fn(X).backward()
numeric = central_difference(fn, X.data)
np.testing.assert_allclose(X.grad, numeric, rtol=1e-6, atol=1e-8)
print("max |engine - central difference| =", f"{np.abs(X.grad - numeric).max():.1e}")

# %% [markdown]
# ### Drawing the graph
#
# The engine records the whole graph, so we can draw it. Each box shows a node's value (top)
# and its adjoint after `backward` (bottom); arrows point in the direction of the forward pass,
# and the backward pass walks them in reverse.

# %%
def draw_graph(root: Tensor, title: str = ""):
    nodes, seen = [], set()

    def visit(node: Tensor) -> None:
        if id(node) not in seen:
            seen.add(id(node))
            for parent in node._parents:
                visit(parent)
            nodes.append(node)

    visit(root)
    level: dict[int, int] = {}
    for node in nodes:  # topological order: parents already have a level
        level[id(node)] = 1 + max((level[id(p)] for p in node._parents), default=-1)
    columns: dict[int, list[Tensor]] = {}
    for node in nodes:
        columns.setdefault(level[id(node)], []).append(node)
    pos = {}
    for x, column in columns.items():
        for k, node in enumerate(column):
            pos[id(node)] = (x * 2.2, (len(column) - 1) / 2 - k)

    fig, ax = plt.subplots(figsize=(2.3 * len(columns) + 1, 1.3 * max(len(c) for c in columns.values()) + 1))
    for node in nodes:
        for parent in node._parents:
            (x0, y0), (x1, y1) = pos[id(parent)], pos[id(node)]
            ax.add_patch(FancyArrowPatch((x0 + 0.75, y0), (x1 - 0.75, y1), arrowstyle="-|>", mutation_scale=14, color="0.4"))
    for node in nodes:
        x, y = pos[id(node)]
        leaf = not node._parents
        ax.add_patch(FancyBboxPatch((x - 0.75, y - 0.34), 1.5, 0.68, boxstyle="round,pad=0.03",
                                    facecolor="#cfe2f3" if leaf else "#fde9c9", edgecolor="black"))
        name = node.label + ("" if leaf else f" = {node.op}")
        ax.text(x, y + 0.14, name, ha="center", va="center", fontsize=10, fontweight="bold")
        ax.text(x, y - 0.14, f"value {float(node.data):g}\ngrad {float(node.grad):g}", ha="center", va="center", fontsize=8.5)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.axis("off")
    ax.set_title(title)
    return fig


a, b, c = Tensor(2.0, label="a"), Tensor(-3.0, label="b"), Tensor(10.0, label="c")
d = a * b
d.label = "d"
e = d + c
e.label = "e"
L = e**2
L.label = "L"
L.backward()
assert (float(a.grad), float(b.grad), float(c.grad)) == tuple(by_hand)
draw_graph(L, "L = (a·b + c)²: values from the forward pass, gradients from the backward pass")
plt.show()

# %% [markdown]
# The gradients in the leaves are the ones we derived by hand, $\bar a = 2eb$, $\bar b = 2ea$,
# $\bar c = 2e$, and the ones forward mode found with three passes.
#
# ## A small network, two ways
#
# A multi-layer perceptron ({doc}`../01_basics/03_mlp`) is a composition of exactly the
# operations the engine knows: $h_1 = \operatorname{relu}(XW_1 + b_1)$, $h_2 = \tanh(h_1 W_2 +
# b_2)$, $z = h_2 W_3 + b_3$. For two classes with labels $y \in \{0, 1\}$, write $s = 2y - 1
# \in \{-1, +1\}$; the logistic loss (binary cross-entropy on the logit $z$) is
#
# $$
# \mathcal{L} = \frac1N \sum_{i=1}^N \log\bigl(1 + e^{-s_i z_i}\bigr),
# $$
#
# built from `exp`, `+`, `log` and `mean`. We give the engine's MLP and a PyTorch `nn.Sequential`
# the same weights (PyTorch's `nn.Linear` stores $W^\top$) and compare every parameter's
# gradient.

# %%
class EngineMLP:
    """A 3-layer MLP on the engine: relu then tanh hidden layers, one logit out."""

    def __init__(self, sizes: list[int], rng: np.random.Generator) -> None:
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1 / math.sqrt(fan_in)  # the same range nn.Linear uses
            self.params.append(Tensor(rng.uniform(-bound, bound, size=(fan_in, fan_out))))
            self.params.append(Tensor(rng.uniform(-bound, bound, size=(fan_out,))))

    def __call__(self, X: Tensor) -> Tensor:
        W1, b1, W2, b2, W3, b3 = self.params
        h = (X @ W1 + b1).relu()
        h = (h @ W2 + b2).tanh()
        return h @ W3 + b3  # (N, 1) logits

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = np.zeros_like(p.data)


def logistic_loss(z: Tensor, s: np.ndarray) -> Tensor:
    """mean(log(1 + exp(-s z))) for logits z (N, 1) and signs s (N, 1) in {-1, +1}."""
    return ((z * Tensor(-s)).exp() + 1.0).log().mean()


def torch_copy(model: EngineMLP) -> nn.Sequential:
    W1, b1, W2, b2, W3, b3 = (torch.tensor(p.data) for p in model.params)
    net = nn.Sequential(nn.Linear(*W1.shape), nn.ReLU(), nn.Linear(*W2.shape), nn.Tanh(), nn.Linear(*W3.shape))
    with torch.no_grad():
        for layer, W, b in ((net[0], W1, b1), (net[2], W2, b2), (net[4], W3, b3)):
            layer.weight.copy_(W.T)
            layer.bias.copy_(b)
    return net


X_np, y_np = make_moons(n_samples=pick(smoke=64, book=300), noise=0.15, random_state=0)
X_test, y_test = make_moons(n_samples=500, noise=0.15, random_state=1)
s_np = (2.0 * y_np - 1.0)[:, None]

model = EngineMLP([2, 16, 16, 1], np.random.default_rng(0))
net = torch_copy(model)

loss = logistic_loss(model(Tensor(X_np)), s_np)
loss.backward()
ref_loss = F.softplus(-torch.tensor(s_np) * net(torch.tensor(X_np))).mean()  # log(1 + e^-sz)
ref_loss.backward()

assert abs(loss.data - ref_loss.item()) < 1e-12
torch_grads = [net[0].weight.grad.T, net[0].bias.grad, net[2].weight.grad.T, net[2].bias.grad,
               net[4].weight.grad.T, net[4].bias.grad]
mlp_err = max(float(np.abs(p.grad - g.numpy()).max()) for p, g in zip(model.params, torch_grads, strict=True))
for p, g in zip(model.params, torch_grads, strict=True):
    np.testing.assert_allclose(p.grad, g.numpy(), rtol=1e-10, atol=1e-13)
glue("s2_3_mlp_err", mlp_err, ".0e")
glue("s2_3_n_params", sum(p.data.size for p in model.params))
print(f"loss {loss.data:.6f} (autograd {ref_loss.item():.6f}); max gradient difference {mlp_err:.1e}")

# %% [markdown]
# All {glue}`s2_3_n_params` parameter gradients agree with autograd to {glue}`s2_3_mlp_err`.
#
# ## Training with the engine
#
# With gradients in hand, training is the loop of {doc}`../01_basics/04_training_loop`:
# forward, loss, backward, and a gradient-descent step $\theta \leftarrow \theta - \eta\,
# \nabla_\theta \mathcal{L}$ on every parameter. We train on **two moons**, a two-class problem
# that scikit-learn generates {cite:p}`pedregosa2011scikit` and that no straight line separates,
# with full-batch gradient descent. Next to it, the PyTorch copy of the network takes the same
# steps with `torch.optim.SGD`; if the engine's gradients are right the two runs stay together
# step after step.

# %%
steps = pick(smoke=5, book=1500)
lr = 0.5
model = EngineMLP([2, 16, 16, 1], np.random.default_rng(0))
net = torch_copy(model)
opt = torch.optim.SGD(net.parameters(), lr=lr)
X_t, s_t = torch.tensor(X_np), torch.tensor(s_np)

losses, drift = [], 0.0
for _ in range(steps):
    model.zero_grad()
    loss = logistic_loss(model(Tensor(X_np)), s_np)
    loss.backward()
    for p in model.params:
        p.data -= lr * p.grad
    losses.append(float(loss.data))

    opt.zero_grad()
    ref = F.softplus(-s_t * net(X_t)).mean()
    ref.backward()
    opt.step()
    drift = max(drift, abs(ref.item() - losses[-1]))

assert drift < 1e-8, drift  # the two runs follow the same trajectory
assert losses[-1] < losses[0]  # gradient descent lowers the loss


def accuracy(model: EngineMLP, X: np.ndarray, y: np.ndarray) -> float:
    return float(((model(Tensor(X)).data[:, 0] > 0) == (y == 1)).mean())


train_acc, test_acc = accuracy(model, X_np, y_np), accuracy(model, X_test, y_test)
glue("s2_3_loss0", losses[0], ".3f")
glue("s2_3_loss_end", losses[-1], ".3f")
glue("s2_3_test_acc", test_acc, ".1%")
glue("s2_3_steps", steps)
glue("s2_3_drift", drift, ".0e")
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}")
if checks_enabled():
    assert losses[-1] < 0.1 * losses[0]
    assert test_acc > 0.95

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
ax1.plot(losses)
ax1.set(xlabel="gradient step", ylabel="training loss", yscale="log", title="Training the engine's MLP")
ax1.grid(alpha=0.3)
gx, gy = np.meshgrid(np.linspace(-1.7, 2.7, 200), np.linspace(-1.2, 1.7, 200))
grid_logits = model(Tensor(np.c_[gx.ravel(), gy.ravel()])).data.reshape(gx.shape)
ax2.contourf(gx, gy, grid_logits > 0, levels=1, colors=["#f4cccc", "#cfe2f3"])
ax2.contour(gx, gy, grid_logits, levels=[0], colors="black", linewidths=1)
ax2.scatter(*X_test.T, c=y_test, cmap="coolwarm", s=8)
ax2.set(title="Decision boundary on held-out points", xticks=[], yticks=[])
plt.tight_layout()
plt.show()

# %% [markdown]
# In {glue}`s2_3_steps` steps the training loss falls from {glue}`s2_3_loss0` to
# {glue}`s2_3_loss_end`, and the network classifies {glue}`s2_3_test_acc` of 500 fresh points
# correctly. The PyTorch run never differs from the engine's by more than {glue}`s2_3_drift` in
# the loss. PyTorch's autograd works the same way as our engine: every operation on a tensor
# with `requires_grad=True` records a node with a backward function (visible as `grad_fn`), and
# `backward()` walks the graph in reverse topological order, accumulating into `.grad`. It adds
# hundreds of operations, GPU kernels, and memory management (intermediate values are freed as
# soon as the backward pass has used them), but not a different idea.

# %%
z = torch.tensor(3.0, requires_grad=True)
y = torch.tanh(z * z)
print(y.grad_fn, "<-", y.grad_fn.next_functions[0][0])

# %% [markdown]
# ## Summary
#
# * A computation is a graph of elementary operations; the chain rule computes the gradient
#   of the output from local derivatives, *summing* over every path (equation {eq}`eq-2-3-chain`).
# * Forward mode propagates one input direction per pass (Jacobian-vector products); reverse
#   mode propagates the output's adjoint backwards and gets the whole gradient of a scalar in
#   one pass (vector-Jacobian products), at the cost of storing the forward pass.
# * A reverse-mode engine needs, per operation, a forward computation and a closure that adds
#   the local contributions to its inputs' gradients; `backward` runs the closures in reverse
#   topological order. Broadcasting in the forward pass becomes a sum in the backward pass.
# * Our hundred-line engine matches PyTorch's autograd to rounding error and trains an MLP.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-2-3-1
# ```
# Add a `sigmoid` operation, $\sigma(x) = 1/(1+e^{-x})$, to the engine as a single node (not
# as a composition of `exp`, `+` and `/`). Derive its local derivative and check it against
# autograd.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-3-1
# :class: dropdown
# ```
# $\sigma'(x) = e^{-x}/(1+e^{-x})^2 = \sigma(x)\,(1 - \sigma(x))$, so the local derivative is
# computed from the output alone, like $\tanh$'s.

# %%
def sigmoid(self: Tensor) -> Tensor:
    value = 1.0 / (1.0 + np.exp(-self.data))
    return self._unary(value, value * (1.0 - value), "sigmoid")


Tensor.sigmoid = sigmoid
xs = rng.normal(size=(6,)) * 3
ours, theirs = both(xs)
(ours[0].sigmoid() * ours[0]).sum().backward()
(torch.sigmoid(theirs[0]) * theirs[0]).sum().backward()
np.testing.assert_allclose(ours[0].grad, theirs[0].grad.numpy(), rtol=1e-12)
print("sigmoid gradient matches autograd")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-3-2
# ```
# What gradient would the engine report for $f(x) = x \cdot x$ at $x = 3$ if the closures
# *assigned* the adjoint (`self.grad = ...`) instead of adding it?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-3-2
# :class: dropdown
# ```
# Both inputs of the product are the same tensor. With `+=` it receives $\bar z\,x$ twice,
# $2x = 6$. With `=` the second assignment overwrites the first and the engine reports $x = 3$,
# half the true derivative, with no error. Accumulation is also why PyTorch requires
# `zero_grad()` between steps: `.grad` keeps adding up across `backward` calls.

# %%
def mul_assigning(u: Tensor, v: Tensor) -> Tensor:
    out = Tensor(u.data * v.data, (u, v), "×")

    def _backward() -> None:
        u.grad = out.grad * v.data  # wrong: overwrites instead of accumulating
        v.grad = out.grad * u.data

    out._backward = _backward
    return out


x = Tensor(3.0)
mul_assigning(x, x).backward()
wrong = float(x.grad)
x = Tensor(3.0)
(x * x).backward()
print("assigning:", wrong, " accumulating:", float(x.grad))
assert wrong == 3.0 and float(x.grad) == 6.0

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-3-3
# ```
# For a function $f:\mathbb{R}^n\to\mathbb{R}^m$ with $n = 3$ inputs and $m = 200$ outputs,
# which mode builds the full Jacobian with fewer passes? Check with `torch.func.jacfwd` and
# `torch.func.jacrev` that both modes give the same Jacobian.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-3-3
# :class: dropdown
# ```
# Forward mode gives one column per pass ($n = 3$ passes), reverse mode one row per pass
# ($m = 200$ passes). With few inputs and many outputs, forward mode wins; training, with one
# output and many inputs, is the opposite case.

# %%
A = torch.randn(200, 3)


def many_outputs(v: torch.Tensor) -> torch.Tensor:
    return torch.sin(A @ v) * v.sum()


v = torch.randn(3)
J_fwd, J_rev = torch.func.jacfwd(many_outputs)(v), torch.func.jacrev(many_outputs)(v)
assert J_fwd.shape == (200, 3)
torch.testing.assert_close(J_fwd, J_rev)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-3-4
# ```
# The central difference has a truncation error of order $h^2$, but subtracting two nearly
# equal floating-point numbers adds a rounding error of order $\varepsilon/h$ (with
# $\varepsilon \approx 2.2\times10^{-16}$ in double precision). Plot the error of the central
# difference of $e^x$ at $x = 1$ against $h$ and find the best $h$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-3-4
# :class: dropdown
# ```
# The total error $\approx C_1 h^2 + C_2\varepsilon/h$ is smallest near $h \sim
# \varepsilon^{1/3} \approx 6\times10^{-6}$; smaller steps make it worse, not better. Automatic
# differentiation has no step size and no such trade-off.

# %%
hs = np.logspace(-12, -1, 45)
errors = np.abs((np.exp(1 + hs) - np.exp(1 - hs)) / (2 * hs) - np.exp(1))
best_h = hs[errors.argmin()]
plt.figure(figsize=(5, 3))
plt.loglog(hs, errors, ".-")
plt.axvline(np.finfo(float).eps ** (1 / 3), color="gray", ls="--", label=r"$\varepsilon^{1/3}$")
plt.xlabel("h")
plt.ylabel("|error|")
plt.legend()
plt.grid(alpha=0.3, which="both")
plt.show()
print(f"best h = {best_h:.1e}, error {errors.min():.1e}")
assert 1e-7 < best_h < 1e-3

# %% [markdown]
# ```{solution-end}
# ```
