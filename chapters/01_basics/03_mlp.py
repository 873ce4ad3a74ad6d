# %% [markdown]
# # Neurons, layers and the MLP
#
# The multilayer perceptron (MLP) is the simplest neural network that is genuinely useful, and
# it never goes away: every Transformer block in a GPT contains one, holding about two thirds of
# the block's parameters. This section builds it from its smallest part, the artificial neuron,
# up to the library's `dlbook.nn.MLP` that later sections train. Along the way it answers two
# questions: why the network needs a **nonlinear** activation function, and what a network
# with a single hidden layer can represent.

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.nn import MLP, MLPConfig

seed_everything(0)
device = get_device()

# %% [markdown]
# ## The neuron
#
# {cite:t}`mcculloch1943logical` modelled a nerve cell as a unit that sums weighted inputs and
# fires when the sum exceeds a threshold; {cite:t}`rosenblatt1958perceptron` made the weights
# learnable, in the perceptron. The modern **artificial neuron** keeps the weighted sum and
# replaces the hard threshold by a smooth or piecewise-linear **activation function** $\phi$.
# With inputs $x \in \mathbb{R}^n$, a **weight** vector $w \in \mathbb{R}^n$ and a **bias**
# $b \in \mathbb{R}$, its output (its *activation*) is
#
# $$ a = \phi\left(w^\top x + b\right) = \phi\left(\sum_{i=1}^n w_i x_i + b\right). $$
#
# The weighted sum $z = w^\top x + b$ is called the **pre-activation**. Geometrically, $z = 0$
# is a hyperplane in input space; the neuron measures on which side of it, and how far, an input
# lies, and $\phi$ shapes the answer.
#
# A worked example with two inputs: $x = (2, 3)$, $w = (1, 2)$, $b = 0$ and
# $\phi = \mathrm{ReLU}$ (defined below; it keeps positive numbers as they are). Then
# $z = 2 \cdot 1 + 3 \cdot 2 + 0 = 8$ and $a = \mathrm{ReLU}(8) = 8$. In code:

# %%
x = torch.tensor([2.0, 3.0])
w = torch.tensor([1.0, 2.0])
b = torch.tensor(0.0)
a = torch.relu(w @ x + b)
glue("s1_3_neuron_out", a.item(), ".0f")
print("a =", a.item())
assert a.item() == 8.0

# %% [markdown]
# The neuron outputs {glue}`s1_3_neuron_out`, as computed by hand.
#
# ## Activation functions
#
# Four activations cover almost all of this book:
#
# | name | $\phi(z)$ | $\phi'(z)$ |
# |---|---|---|
# | ReLU {cite:p}`nair2010rectified` | $\max(0, z)$ | $1$ if $z > 0$, else $0$ |
# | sigmoid | $\sigma(z) = 1 / (1 + e^{-z})$ | $\sigma(z)\,(1 - \sigma(z))$ |
# | tanh | $\tanh z$ | $1 - \tanh^2 z$ |
# | GELU {cite:p}`hendrycks2016gelu` | $z\,\Phi(z)$ | $\Phi(z) + z\,\varphi(z)$ |
#
# Here $\Phi(z) = \tfrac12\left(1 + \operatorname{erf}(z/\sqrt2)\right)$ is the cumulative
# distribution function of the standard normal distribution and
# $\varphi(z) = e^{-z^2/2}/\sqrt{2\pi}$ its density. (ReLU's derivative at exactly $0$ does not
# exist; PyTorch uses $0$ there, as does the table.) The derivatives follow from the chain
# rule: for the sigmoid,
# $\sigma'(z) = e^{-z}/(1 + e^{-z})^2 = \sigma(z) \cdot \frac{e^{-z}}{1 + e^{-z}} = \sigma(z)(1 - \sigma(z))$;
# for GELU, the product rule with $\Phi' = \varphi$. Training uses the derivatives
# (section {doc}`../02_math/03_backprop`), so we compute each of them twice, by autograd and by
# its closed form, and assert the two agree on a grid of points.

# %%
def std_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def std_normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)


activations = {  # name: (phi, closed-form derivative)
    "ReLU": (torch.relu, lambda z: (z > 0).to(z.dtype)),
    "sigmoid": (torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))),
    "tanh": (torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
    "GELU": (lambda z: z * std_normal_cdf(z), lambda z: std_normal_cdf(z) + z * std_normal_pdf(z)),
}
# our exact GELU is PyTorch's (approximate="none" is the erf form)
zs = torch.linspace(-4, 4, 401, dtype=torch.float64)
assert torch.allclose(activations["GELU"][0](zs), nn.functional.gelu(zs))

fig, axes = plt.subplots(2, 4, figsize=(11, 4.6), sharex=True)
for col, (name, (phi, dphi)) in enumerate(activations.items()):
    z = zs.clone().requires_grad_(True)
    out = phi(z)
    (grad_autograd,) = torch.autograd.grad(out.sum(), z)
    grad_formula = dphi(zs)
    assert torch.allclose(grad_autograd, grad_formula, atol=1e-12), name
    axes[0, col].plot(zs, out.detach(), color="tab:blue")
    axes[0, col].set_title(name)
    axes[1, col].plot(zs, grad_autograd, color="tab:orange", lw=3, alpha=0.5, label="autograd")
    axes[1, col].plot(zs, grad_formula, color="black", lw=1, ls="--", label="closed form")
    for row in range(2):
        axes[row, col].grid(alpha=0.3)
        axes[row, col].axhline(0, color="0.5", lw=0.6)
axes[0, 0].set_ylabel(r"$\phi(z)$")
axes[1, 0].set_ylabel(r"$\phi'(z)$")
axes[1, 0].legend(fontsize=8)
for ax in axes[1]:
    ax.set_xlabel("$z$")
plt.tight_layout()
plt.show()

# %% [markdown]
# The shapes explain their uses. The sigmoid squashes to $(0, 1)$, which suits a probability,
# but its derivative is at most $1/4$ and vanishes for large $|z|$ (a "saturated" unit passes
# almost no gradient back). tanh is a rescaled sigmoid, $\tanh z = 2\sigma(2z) - 1$, centred at
# zero, with the same saturation. ReLU {cite:p}`nair2010rectified` does not saturate for
# $z > 0$ and costs one comparison; it became the default activation of deep networks. Its
# weakness is that a unit whose pre-activation is negative for every input gets zero gradient
# and stops learning. GELU
# is a smooth ReLU: it weighs $z$ by the probability $\Phi(z)$ that a standard normal variable
# is below it. GPT-style Transformers use it.
#
# ## A layer is a matrix product
#
# A **layer** is $m$ neurons reading the same input. Stacking their weight vectors as the rows
# of a matrix $W \in \mathbb{R}^{m \times n}$ and their biases into $b \in \mathbb{R}^m$, the
# layer computes all $m$ pre-activations at once, $z = Wx + b$. Networks process a **batch** of
# $B$ inputs at a time, stored as the rows of $X \in \mathbb{R}^{B \times n}$ (batch ×
# features), so
#
# $$ Z = X W^\top + b, \qquad A = \phi(Z) \in \mathbb{R}^{B \times m}, $$
#
# where $b$ is added to every row (broadcasting, section {doc}`02_pytorch`). One matrix product
# replaces $B \cdot m$ dot products, and it is what GPUs are built to do fast. PyTorch's
# `nn.Linear(n, m)` stores exactly this $W$ (shape `(m, n)`) and $b$.

# %%
B, n_in, n_out = 5, 3, 4
X = torch.randn(B, n_in)
W = torch.randn(n_out, n_in)
bias = torch.randn(n_out)
Z = X @ W.T + bias
Z_loops = torch.tensor([[sum(W[j, i] * X[r, i] for i in range(n_in)) + bias[j]
                         for j in range(n_out)] for r in range(B)])
linear = nn.Linear(n_in, n_out)
with torch.no_grad():
    linear.weight.copy_(W)
    linear.bias.copy_(bias)
assert Z.shape == (B, n_out)
assert torch.allclose(Z, Z_loops, atol=1e-6)
assert torch.allclose(Z, linear(X), atol=1e-6)

# %% [markdown]
# ## The multilayer perceptron
#
# An **MLP** chains layers: the activations of one are the inputs of the next. With $L$ layers
# of widths $n_0$ (the input size), $n_1, \dots, n_L$ (the output size),
#
# $$ H_0 = X, \qquad H_\ell = \phi\left(H_{\ell-1} W_\ell^\top + b_\ell\right) \ (\ell < L), \qquad
# \hat Y = H_{L-1} W_L^\top + b_L . $$
#
# The layers between input and output are **hidden** layers; the last layer has no activation,
# and its outputs (for a classifier, one score per class, the **logits**) go to a loss function
# (section {doc}`../02_math/02_losses`). We build one with input size 4, two hidden layers of 16
# and 8 ReLU units, and 3 outputs, three times: from explicit weight tensors, with
# `nn.Sequential`, and with the library.

# %%
sizes = [4, 16, 8, 3]
weights = [torch.randn(n_out, n_in) / math.sqrt(n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
biases = [torch.zeros(n_out) for n_out in sizes[1:]]


def mlp_by_hand(X: torch.Tensor) -> torch.Tensor:
    """The MLP equation above, with ReLU; X (batch, 4) -> (batch, 3)."""
    H = X
    for layer, (W, b) in enumerate(zip(weights, biases, strict=True)):
        H = H @ W.T + b
        if layer < len(weights) - 1:
            H = torch.relu(H)
    return H


seq = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
with torch.no_grad():
    for linear_layer, W, b in zip(seq[::2], weights, biases, strict=True):
        linear_layer.weight.copy_(W)
        linear_layer.bias.copy_(b)

X = torch.randn(32, 4)
print(seq)
assert torch.allclose(mlp_by_hand(X), seq(X), atol=1e-6)

# %% [markdown]
# The library's `MLP` is the same `Sequential`, built from a configuration (the input size,
# the hidden widths, the output size, the activation, optional dropout) and with a check of the
# input's shape:
#
# ```{literalinclude} ../../dlbook/nn/mlp.py
# :pyobject: MLP
# ```
#
# Its parameters are named `net.0.weight`, `net.0.bias`, `net.2.weight`, …: the `Sequential`'s
# names under the attribute `net`. So the `Sequential`'s state dict loads straight into it:

# %%
library_mlp = MLP(MLPConfig(in_features=4, hidden=[16, 8], out_features=3, activation="relu"))
library_mlp.net.load_state_dict(seq.state_dict())
assert torch.allclose(library_mlp(X), mlp_by_hand(X), atol=1e-6)
assert torch.equal(library_mlp(X), seq(X))
print(list(library_mlp.state_dict()))

# %% [markdown]
# ### Counting parameters
#
# Layer $\ell$ has an $n_\ell \times n_{\ell-1}$ weight matrix and $n_\ell$ biases, so an MLP
# has
#
# $$ P = \sum_{\ell=1}^{L} (n_{\ell-1} + 1)\, n_\ell $$
#
# parameters. For a wider MLP on 8×8 digit images, 64 inputs, hidden layers of 128 and 64, and
# 10 outputs, that is $65 \cdot 128 + 129 \cdot 64 + 65 \cdot 10$:

# %%
def mlp_parameter_count(sizes: list[int]) -> int:
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))


digits_sizes = [64, 128, 64, 10]
digits_mlp = MLP(MLPConfig(in_features=64, hidden=[128, 64], out_features=10))
count = sum(p.numel() for p in digits_mlp.parameters())
glue("s1_3_param_count", count, ",")
assert count == mlp_parameter_count(digits_sizes) == 65 * 128 + 129 * 64 + 65 * 10
assert sum(p.numel() for p in library_mlp.parameters()) == mlp_parameter_count(sizes)
# doubling the hidden widths: the hidden-to-hidden product quadruples, the ends only double
doubled = mlp_parameter_count([64, 256, 128, 10]) / count
glue("s1_3_doubled_ratio", doubled, ".2f")
assert 2 < doubled < 4

# %% [markdown]
# That MLP has {glue}`s1_3_param_count` parameters. The count grows with the *product* of
# neighbouring widths, so doubling both hidden widths quadruples the $128 \cdot 64$ term but
# only doubles the terms that touch the fixed 64 inputs and 10 outputs: the total grows
# {glue}`s1_3_doubled_ratio`-fold. The deeper the MLP, the more its hidden-to-hidden products
# dominate and the closer the factor comes to 4.
#
# ## Why the nonlinearity matters
#
# Remove the activations and the MLP collapses. Two linear layers compose to one:
#
# $$ W_2 (W_1 x + b_1) + b_2 = (W_2 W_1)\, x + (W_2 b_1 + b_2), $$
#
# an affine map with weight $W_2 W_1$ and bias $W_2 b_1 + b_2$, and by induction so does any
# number of them. However many linear layers we stack, the network can represent only what a
# single linear layer can, e.g. no function that bends. We check it on a stack of three layers:

# %%
stack = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 8), nn.Linear(8, 3)).double()
W_total = torch.eye(4, dtype=torch.float64)
b_total = torch.zeros(4, dtype=torch.float64)
for layer in stack:                       # compose: x -> W (W_total x + b_total) + b
    W_total = layer.weight @ W_total
    b_total = layer.weight @ b_total + layer.bias
collapsed = nn.Linear(4, 3).double()
with torch.no_grad():
    collapsed.weight.copy_(W_total)
    collapsed.bias.copy_(b_total)
Xd = torch.randn(100, 4, dtype=torch.float64)
assert torch.allclose(stack(Xd), collapsed(Xd), atol=1e-12)

with_relu = nn.Sequential(stack[0], nn.ReLU(), stack[1], nn.ReLU(), stack[2])
gap = (with_relu(Xd) - collapsed(Xd)).abs().max().item()
assert gap > 1e-3                          # with ReLUs the network is no longer that map
print(f"3 linear layers vs their collapse: max difference "
      f"{(stack(Xd) - collapsed(Xd)).abs().max().item():.1e}; with ReLUs: {gap:.2f}")

# %% [markdown]
# ## What one hidden layer can represent
#
# With a nonlinearity, even one hidden layer is enough in principle. The **universal
# approximation theorem** {cite:p}`cybenko1989approximation,hornik1989multilayer` states that an
# MLP with one hidden layer of sigmoid-like units can approximate any continuous function on a
# bounded, closed region of $\mathbb{R}^n$ to any accuracy, given enough hidden units. The
# result holds for any continuous activation that is not a polynomial, ReLU included
# {cite:p}`leshno1993multilayer`. The theorem promises existence only: it says neither how many
# units are needed nor that training will find the weights.
#
# A small demonstration: fit $y = \sin(2x)$ on $[-\pi, \pi]$ (two full periods) with MLPs of
# one tanh hidden layer of growing width, trained by gradient descent on the mean squared error
# (the training loop itself is the subject of section {doc}`04_training_loop`). Each hidden unit
# contributes one shifted, scaled tanh step; the output layer adds them up.

# %%
def target(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * x)


x_train = torch.linspace(-math.pi, math.pi, 256, device=device).unsqueeze(1)   # (256, 1)
y_train = target(x_train)
x_test = (torch.rand(1000, 1, device=device) * 2 - 1) * math.pi           # fresh points
steps = pick(smoke=20, book=3000)
widths = [2, 4, 32]
fits, test_mse = {}, {}
for width in widths:
    seed_everything(0)
    model = MLP(MLPConfig(in_features=1, hidden=[width], out_features=1, activation="tanh"))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        fits[width] = model(x_train).cpu()
        test_mse[width] = nn.functional.mse_loss(model(x_test), target(x_test)).item()
    print(f"width {width:>2}: training MSE {loss.item():.2e}, test MSE {test_mse[width]:.2e}")
    glue(f"s1_3_uat_mse_w{width}", test_mse[width], ".1e")

fig, ax = plt.subplots(figsize=(6.5, 3.4))
ax.plot(x_train.cpu(), y_train.cpu(), color="black", lw=4, alpha=0.25, label=r"$\sin 2x$")
for width in widths:
    ax.plot(x_train.cpu(), fits[width], label=f"{width} hidden units")
ax.set(xlabel="$x$", ylabel="$y$", title="One hidden layer of tanh units")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
if checks_enabled():
    assert test_mse[32] < 1e-3, test_mse
    assert test_mse[2] > test_mse[4] > test_mse[32], test_mse

# %% [markdown]
# With {glue}`s1_3_uat_mse_w32` mean squared error on 1,000 fresh points, the 32-unit network
# is indistinguishable from $\sin 2x$ on the plot. Two units cannot make the four bends the
# curve needs (error {glue}`s1_3_uat_mse_w2`), and four units get most of the way
# ({glue}`s1_3_uat_mse_w4`).
#
# ## Summary
#
# * A neuron computes $\phi(w^\top x + b)$; a layer of them on a batch is one matrix product,
#   $\phi(XW^\top + b)$, which is `nn.Linear` followed by an activation.
# * ReLU, sigmoid, tanh and GELU differ mainly in their derivatives: sigmoid and tanh saturate,
#   ReLU and GELU do not for positive inputs.
# * An MLP alternates linear layers and activations; it has $\sum_\ell (n_{\ell-1} + 1) n_\ell$
#   parameters. The hand-built network, `nn.Sequential` and `dlbook.nn.MLP` compute the same
#   function when given the same weights.
# * Without nonlinearities a stack of linear layers is one linear map. With them, one hidden
#   layer can approximate any continuous function on a bounded region, given enough units.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-1-3-1
# ```
# A neuron with $w = (1, -1)$, $b = -0.5$ and a sigmoid activation reads $x = (3, 1)$.
# Compute its output and the derivative of the output with respect to $w_1$ by hand, then
# check both with autograd.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-3-1
# :class: dropdown
# ```
# $z = 3 - 1 - 0.5 = 1.5$, $a = \sigma(1.5) \approx 0.8176$. By the chain rule
# $\partial a / \partial w_1 = \sigma'(z)\, x_1 = \sigma(1.5)(1 - \sigma(1.5)) \cdot 3 \approx 0.4474$.

# %%
w_ex = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
a_ex = torch.sigmoid(w_ex @ torch.tensor([3.0, 1.0], dtype=torch.float64) - 0.5)
a_ex.backward()
s = 1 / (1 + math.exp(-1.5))
assert math.isclose(a_ex.item(), s) and math.isclose(w_ex.grad[0].item(), s * (1 - s) * 3)
print(f"a = {a_ex.item():.4f}, da/dw1 = {w_ex.grad[0].item():.4f}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-3-2
# ```
# Show that XOR, the function on $\{0, 1\}^2$ that is $1$ when exactly one input is $1$, cannot
# be computed by a single neuron with a threshold activation, but can by an MLP with two ReLU
# hidden units. Give the weights.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-3-2
# :class: dropdown
# ```
# A single neuron outputs 1 on one side of a line $w^\top x + b = 0$. The points $(0,1)$ and
# $(1,0)$ must be on the positive side, and so their midpoint $(\tfrac12, \tfrac12)$ too (a
# half-plane is convex); but that is also the midpoint of $(0, 0)$ and $(1, 1)$, which are both on
# the negative side, so it must be negative as well: a contradiction. With hidden units
# $h_1 = \mathrm{ReLU}(x_1 + x_2)$ and $h_2 = \mathrm{ReLU}(x_1 + x_2 - 1)$, the output
# $h_1 - 2h_2$ is $0, 1, 1, 0$ on the four inputs.

# %%
xor_net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
with torch.no_grad():
    xor_net[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    xor_net[0].bias.copy_(torch.tensor([0.0, -1.0]))
    xor_net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
    xor_net[2].bias.zero_()
inputs = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
assert torch.equal(xor_net(inputs).squeeze(1), torch.tensor([0.0, 1.0, 1.0, 0.0]))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-3-3
# ```
# The feed-forward block of GPT-2 small is an MLP with input and output size 768 and one hidden
# layer of $4 \cdot 768$ GELU units. How many parameters does it have? GPT-2 small has 12 such
# blocks; what fraction of its roughly 124 million parameters do they hold?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-3-3
# :class: dropdown
# ```
# $(768 + 1) \cdot 3072 + (3072 + 1) \cdot 768 = 4{,}722{,}432$ per block, $56.7$ million in the 12
# blocks: nearly half of the model.

# %%
ffn = mlp_parameter_count([768, 3072, 768])
assert ffn == 4_722_432
gpt2_ffn = MLP(MLPConfig(in_features=768, hidden=[3072], out_features=768, activation="gelu"))
assert sum(p.numel() for p in gpt2_ffn.parameters()) == ffn
print(f"{ffn:,} per block, {12 * ffn / 1e6:.1f} M in 12 blocks, {12 * ffn / 124e6:.0%} of 124 M")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-3-4
# ```
# Verify numerically the identity $\tanh z = 2\sigma(2z) - 1$, and use it to show that an MLP
# with tanh hidden units can be rewritten exactly as one with sigmoid hidden units (same
# function, different weights).
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-3-4
# :class: dropdown
# ```
# A tanh unit $\tanh(w^\top x + b) = 2\sigma(2w^\top x + 2b) - 1$: double the hidden layer's
# weights and biases, double the next layer's weights and subtract their row sums from its
# bias, to absorb the $-1$.

# %%
zz = torch.linspace(-5, 5, 101, dtype=torch.float64)
assert torch.allclose(torch.tanh(zz), 2 * torch.sigmoid(2 * zz) - 1)
tanh_net = MLP(MLPConfig(in_features=3, hidden=[6], out_features=2, activation="tanh")).double()
sig_net = MLP(MLPConfig(in_features=3, hidden=[6], out_features=2, activation="sigmoid")).double()
with torch.no_grad():
    sig_net.net[0].weight.copy_(2 * tanh_net.net[0].weight)
    sig_net.net[0].bias.copy_(2 * tanh_net.net[0].bias)
    sig_net.net[2].weight.copy_(2 * tanh_net.net[2].weight)
    sig_net.net[2].bias.copy_(tanh_net.net[2].bias - tanh_net.net[2].weight.sum(dim=1))
x3 = torch.randn(10, 3, dtype=torch.float64)
assert torch.allclose(tanh_net(x3), sig_net(x3))

# %% [markdown]
# ```{solution-end}
# ```
