# %% [markdown]
# # Training deep networks stably
#
# A network with two hidden layers trains on almost anything. Stack thirty layers and, without
# care, it does not train at all: the gradient that reaches the first layers is either so small
# that they never move, or so large that one step throws the weights away. This was the main
# obstacle to deep networks for two decades {cite:p}`bengio1994learning,glorot2010understanding`.
# Three tools removed it, and every large model in this book uses all three: **initialization**
# scaled to the layer's width, **normalization** layers, and **residual connections**.
#
# This section measures the problem layer by layer, derives the initialization rules from a
# variance argument and checks them, writes batch and layer normalization from their equations
# and asserts they equal PyTorch's modules, and measures what residual connections do to the
# gradient. The probes it uses, `grad_norms` and `activation_stats`, live in `dlbook.probes`.

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.data import load_digits
from dlbook.probes import activation_stats, grad_norms

seed_everything(0)
device = get_device()
splits = load_digits(seed=0)
x_train, y_train = (t.to(device) for t in splits.train.tensors)
x_probe, y_probe = x_train[:256], y_train[:256]  # one batch for the gradient probes

# %% [markdown]
# ## Why gradients vanish or explode
#
# Write a plain deep network as $h_0 = x$, $z_l = W_l h_{l-1} + b_l$, $h_l = \phi(z_l)$ for
# $l = 1, \dots, L$, with an activation function $\phi$ applied element-wise. Back-propagation
# (section {doc}`03_backprop`) sends the gradient of the loss $\ell$ backwards one layer at a
# time,
#
# $$
# \frac{\partial \ell}{\partial h_{l-1}} = W_l^\top \Big( \phi'(z_l) \odot \frac{\partial \ell}{\partial h_l} \Big),
# \qquad
# \frac{\partial \ell}{\partial W_l} = \Big( \phi'(z_l) \odot \frac{\partial \ell}{\partial h_l} \Big)\, h_{l-1}^\top ,
# $$
#
# so the gradient at layer $l$ is the gradient at the top multiplied by $L - l$ factors
# $W_k^\top \operatorname{diag}(\phi'(z_k))$. If these factors shrink vectors on average, the
# product shrinks *geometrically* with depth and the first layers receive almost nothing: the
# gradient **vanishes**. If they stretch vectors, it **explodes**. The sigmoid makes vanishing
# almost certain, because $\sigma'(z) = \sigma(z)(1 - \sigma(z)) \le 1/4$ everywhere.
#
# We measure it. The network below has 30 linear layers of width 128 on the digits (64 inputs,
# 10 classes). We run one forward and backward pass on a batch of 256 training images and read the norm of
# each layer's gradient with `dlbook.probes.grad_norms`:
#
# ```{literalinclude} ../../dlbook/probes.py
# :pyobject: grad_norms
# ```

# %%
depth, width = 30, 128


def deep_mlp(act: type[nn.Module], init=None, depth: int = depth, width: int = width) -> nn.Sequential:
    """`depth` linear layers: 64 → width → … → width → 10, activation `act` between them.
    `init(weight)` re-initializes every weight (biases then start at zero); None keeps
    PyTorch's default initialization."""
    sizes = [64] + [width] * (depth - 1) + [10]
    layers: list[nn.Module] = []
    for i in range(depth):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        if init is not None:
            init(linear.weight)
            nn.init.zeros_(linear.bias)
        layers += [linear, act()] if i < depth - 1 else [linear]
    return nn.Sequential(*layers)


def kaiming(w: torch.Tensor, gain: float = 1.0) -> None:
    nn.init.normal_(w, std=gain * math.sqrt(2.0 / w.shape[1]))


setups = {
    "sigmoid, default init": (nn.Sigmoid, None),
    "tanh, default init": (nn.Tanh, None),
    "tanh, Xavier init": (nn.Tanh, nn.init.xavier_normal_),
    "ReLU, default init": (nn.ReLU, None),
    "ReLU, Kaiming init": (nn.ReLU, kaiming),
    "ReLU, 1.5 × Kaiming": (nn.ReLU, lambda w: kaiming(w, 1.5)),
}
layer_grads: dict[str, list[float]] = {}
for name, (act, init) in setups.items():
    seed_everything(0)
    model = deep_mlp(act, init).to(device)
    F.cross_entropy(model(x_probe), y_probe).backward()
    layer_grads[name] = list(grad_norms(model, by="module").values())
    assert len(layer_grads[name]) == depth

fig, ax = plt.subplots(figsize=(7, 3.8))
for name, norms in layer_grads.items():
    ax.semilogy(range(1, depth + 1), norms, marker=".", label=name)
ax.set(xlabel="layer (1 = next to the input)", ylabel="‖∂ℓ/∂θ‖ of the layer",
       title=f"Gradient norm per layer, {depth}-layer MLP, one batch of digits")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, ncol=2)
plt.show()

ratio = {name: g[0] / g[-1] for name, g in layer_grads.items()}
for name, r in ratio.items():
    print(f"{name:24s} first/last layer gradient norm: {r:.2e}")
glue("s2_6_sigmoid_ratio", ratio["sigmoid, default init"], ".0e")
glue("s2_6_tanh_ratio", ratio["tanh, default init"], ".0e")
glue("s2_6_relu_ratio", ratio["ReLU, default init"], ".0e")
glue("s2_6_kaiming_ratio", ratio["ReLU, Kaiming init"], ".2f")
glue("s2_6_explode_first", layer_grads["ReLU, 1.5 × Kaiming"][0], ".1e")
assert ratio["sigmoid, default init"] < 1e-10
assert ratio["ReLU, default init"] < 1e-6
assert 0.1 < ratio["ReLU, Kaiming init"] < 10 and 0.1 < ratio["tanh, Xavier init"] < 10
assert layer_grads["ReLU, 1.5 × Kaiming"][0] > 1e3 * layer_grads["ReLU, Kaiming init"][0]

# %% [markdown]
# The picture is stark. With sigmoids, the first layer's gradient is a factor
# {glue}`s2_6_sigmoid_ratio` of the last layer's: no optimizer step can move those weights.
# Tanh and ReLU with PyTorch's default initialization vanish too (factors
# {glue}`s2_6_tanh_ratio` and {glue}`s2_6_relu_ratio`). The same ReLU network with *Kaiming*
# initialization passes the gradient through all thirty layers almost unchanged (ratio
# {glue}`s2_6_kaiming_ratio`), and multiplying that initialization's standard deviation by only
# 1.5 makes the gradient explode, to a norm of {glue}`s2_6_explode_first` at the first layer. The
# initialization scale decides everything; the next section derives the right one.
#
# ## Initialization from a variance argument
#
# Consider one pre-activation $z_i = \sum_{j=1}^{n_\text{in}} w_{ij} x_j$ of a layer with
# $n_\text{in}$ inputs (its *fan-in*), with zero bias. Assume the weights are drawn
# independently with mean 0 and variance $\operatorname{Var}(w)$, independently of the inputs.
# Each term has mean $\mathbb{E}[w_{ij}]\,\mathbb{E}[x_j] = 0$ and variance
# $\mathbb{E}[w_{ij}^2 x_j^2] = \operatorname{Var}(w)\,\mathbb{E}[x_j^2]$, and the terms are
# uncorrelated, so
#
# $$
# \operatorname{Var}(z_i) = n_\text{in} \operatorname{Var}(w)\, \mathbb{E}[x^2] .
# $$ (eq-var-preact)
#
# Note $\mathbb{E}[x^2]$, not $\operatorname{Var}(x)$: the inputs of a layer are the outputs
# of an activation and need not have mean zero.
#
# **Tanh (Xavier/Glorot).** Near zero $\tanh(z) \approx z$, so $\mathbb{E}[x^2] \approx
# \operatorname{Var}(z_{\text{prev}})$, and the variance is kept layer to layer when
# $n_\text{in} \operatorname{Var}(w) = 1$. The same argument for the backward pass (the
# gradient is multiplied by $W^\top$, which sums over the $n_\text{out}$ outputs) asks for
# $n_\text{out} \operatorname{Var}(w) = 1$. {cite:t}`glorot2010understanding` compromise between
# the two:
#
# $$
# \operatorname{Var}(w) = \frac{2}{n_\text{in} + n_\text{out}},
# \qquad
# w \sim \mathcal{U}(-a, a),\; a = \sqrt{\frac{6}{n_\text{in} + n_\text{out}}},
# $$
#
# since a uniform distribution on $[-a, a]$ has variance $a^2/3$.
#
# **ReLU (Kaiming/He).** Let $z$ be the previous pre-activation, symmetric around zero, and
# $x = \max(0, z)$. Half of the mass of $z$ is positive, and there $x^2 = z^2$, so
# $\mathbb{E}[x^2] = \tfrac12 \mathbb{E}[z^2] = \tfrac12 \operatorname{Var}(z)$. Putting this
# into {eq}`eq-var-preact`, the variance stays constant through depth when
# $\tfrac12 n_\text{in} \operatorname{Var}(w) = 1$ {cite:p}`he2015delving`:
#
# $$
# \operatorname{Var}(w) = \frac{2}{n_\text{in}},
# \qquad
# w \sim \mathcal{N}\Big(0, \frac{2}{n_\text{in}}\Big).
# $$
#
# With any other scale $c \cdot 2/n_\text{in}$ the variance is multiplied by $c$ at *every*
# layer, so after $L$ layers by $c^L$: $0.5^{30} \approx 10^{-9}$, $1.5^{30} \approx 2 \cdot
# 10^{5}$. PyTorch's default for `nn.Linear` draws $\mathcal{U}(-1/\sqrt{n_\text{in}},
# 1/\sqrt{n_\text{in}})$, variance $1/(3 n_\text{in})$, i.e. $c = 1/6$ for a ReLU network: fine
# for a few layers, fatal for thirty.
#
# First we check that PyTorch's initializers draw what the formulas say, on one large weight
# matrix so the sample statistics are precise.

# %%
n_out, n_in = 600, 400
w = torch.empty(n_out, n_in)
nn.init.xavier_uniform_(w)
xavier_bound = math.sqrt(6 / (n_in + n_out))
assert w.abs().max() <= xavier_bound and w.abs().max() > 0.99 * xavier_bound
assert abs(w.var().item() / (2 / (n_in + n_out)) - 1) < 0.02
nn.init.kaiming_normal_(w, nonlinearity="relu")  # mode="fan_in" by default
assert abs(w.std().item() / math.sqrt(2 / n_in) - 1) < 0.01
assert abs(w.mean().item()) < 3 * math.sqrt(2 / n_in) / math.sqrt(w.numel())
default = nn.Linear(n_in, n_out).weight.detach()
assert abs(default.var().item() / (1 / (3 * n_in)) - 1) < 0.02
print(f"xavier_uniform_: max |w| {xavier_bound:.4f} (bound), var ratio ok; "
      f"kaiming_normal_: std {w.std():.4f} vs {math.sqrt(2 / n_in):.4f}")

# %% [markdown]
# Now the claim itself: push a batch of standard-normal inputs through 30 random ReLU layers
# (width 512, zero biases) with weight variance $c \cdot 2/n_\text{in}$, and record the variance
# of each layer's pre-activations with `dlbook.probes.activation_stats`, which attaches a
# forward hook to every `nn.Linear` for one pass and removes the hooks afterwards:
#
# ```{literalinclude} ../../dlbook/probes.py
# :pyobject: activation_stats
# ```

# %%
probe_width = pick(smoke=128, book=512)
probe_x = torch.randn(1024, probe_width, device=device)
variances: dict[float, list[float]] = {}
for c in (0.5, 1.0, 1.5):
    seed_everything(1)
    model = nn.Sequential(*[m for _ in range(depth) for m in
                            (nn.Linear(probe_width, probe_width), nn.ReLU())]).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            kaiming(layer.weight, math.sqrt(c))
            nn.init.zeros_(layer.bias)
    stats = activation_stats(model, probe_x)
    variances[c] = [s["std"] ** 2 for s in stats.values()]

kaiming_var = torch.tensor(variances[1.0])
band = kaiming_var / kaiming_var[0]
print("Kaiming: variance relative to layer 1 stays in", [round(band.min().item(), 2),
                                                         round(band.max().item(), 2)])
low, high = pick(smoke=(0.1, 10.0), book=(0.2, 5.0))  # narrower widths wobble more
assert low < band.min() and band.max() < high  # roughly constant through 30 layers
assert variances[0.5][-1] / variances[0.5][0] < 1e-6  # 0.5**29 ≈ 2e-9: vanishes
assert variances[1.5][-1] / variances[1.5][0] > 1e3  # 1.5**29 ≈ 1e5: explodes
glue("s2_6_band_lo", band.min().item(), ".2f")
glue("s2_6_band_hi", band.max().item(), ".2f")

fig, ax = plt.subplots(figsize=(6, 3.4))
for c, v in variances.items():
    ax.semilogy(range(1, depth + 1), v, marker=".", label=f"Var(w) = {c} × 2/fan_in")
    ax.semilogy(range(1, depth + 1), [v[0] * c**layer for layer in range(depth)], color="gray",
                linestyle=":", linewidth=1)
ax.set(xlabel="layer", ylabel="Var(pre-activation)",
       title="ReLU stack: measured (markers) vs predicted c^(l−1) (dotted)")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The prediction $c^{\,l-1}$ (dotted) matches the measurement over many orders of magnitude.
# With Kaiming's scale ($c = 1$) the variance stays between {glue}`s2_6_band_lo` and
# {glue}`s2_6_band_hi` times its first-layer value for all thirty layers; the remaining wobble
# comes from the finite width (each layer's weights are a random sample).
#
# ## Batch normalization
#
# Initialization gets the scale right at step 0; training then changes the weights and the
# scales drift. **Batch normalization** {cite:p}`ioffe2015batch` re-standardizes every feature
# on every step. (Its authors motivated it as a cure for "internal covariate shift", the drift
# of each layer's input distribution; {cite:t}`santurkar2018how` later found that its benefit
# has little to do with that and comes mainly from a smoother loss landscape, whose gradients
# are more predictive.) For a mini-batch $x \in \mathbb{R}^{B \times d}$ (rows are examples), each
# feature $k$ is normalized with the mean and the *biased* variance over the batch, then given
# a learned scale $\gamma_k$ and shift $\beta_k$ (the **affine** parameters, initialized to 1
# and 0) so the layer can represent any mean and scale it needs:
#
# $$
# \mu_k = \frac1B \sum_{i=1}^B x_{ik},\quad
# \sigma_k^2 = \frac1B \sum_{i=1}^B (x_{ik} - \mu_k)^2,\quad
# \hat x_{ik} = \frac{x_{ik} - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}},\quad
# y_{ik} = \gamma_k \hat x_{ik} + \beta_k .
# $$
#
# At evaluation time a prediction must not depend on the other examples in the batch, so the
# layer keeps **running statistics** updated at every training step with a momentum $m$
# (PyTorch's default $m = 0.1$; note the convention: $m$ weighs the *new* value):
#
# $$
# \hat\mu_k \leftarrow (1 - m)\,\hat\mu_k + m\,\mu_k, \qquad
# \hat\sigma_k^2 \leftarrow (1 - m)\,\hat\sigma_k^2 + m\,\frac{B}{B-1}\,\sigma_k^2 ,
# $$
#
# and in eval mode normalizes with $\hat\mu, \hat\sigma^2$ instead of the batch's statistics.
# One detail is easy to miss: PyTorch normalizes with the biased variance $\sigma^2_k$ but
# stores the *unbiased* estimate $\frac{B}{B-1}\sigma_k^2$ in `running_var`. We write the layer
# from these equations and compare it with `nn.BatchNorm1d` over several training steps, in
# train and eval mode.
#
# ```{literalinclude} ../../dlbook/norms.py
# :pyobject: HandBatchNorm
# ```

# %%
from dlbook.norms import HandBatchNorm, bn_backward, hand_layer_norm, ln_backward

seed_everything(0)
d, batch = 16, 32
ours, theirs = HandBatchNorm(d), nn.BatchNorm1d(d)
with torch.no_grad():  # non-trivial affine parameters, the same in both
    theirs.weight.uniform_(0.5, 1.5)
    theirs.bias.normal_()
ours.gamma = theirs.weight.detach().clone().requires_grad_()
ours.beta = theirs.bias.detach().clone().requires_grad_()

for _ in range(5):  # five training steps on batches with shifted, scaled features
    x = (torch.randn(batch, d) * 3 + 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_ours, y_theirs = ours(x), theirs(x2)
    torch.testing.assert_close(y_ours, y_theirs)
    upstream = torch.randn(batch, d)
    (y_ours * upstream).sum().backward()
    (y_theirs * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)

torch.testing.assert_close(ours.running_mean, theirs.running_mean)
torch.testing.assert_close(ours.running_var, theirs.running_var)
torch.testing.assert_close(ours.gamma.grad, theirs.weight.grad)  # summed over the 5 steps
torch.testing.assert_close(ours.beta.grad, theirs.bias.grad)

ours.training = False
theirs.eval()
x_eval = torch.randn(7, d) * 3 + 2
torch.testing.assert_close(ours(x_eval), theirs(x_eval))
assert theirs.num_batches_tracked.item() == 5
print("hand-written batch norm == nn.BatchNorm1d (train, running stats, eval, gradients)")

# %% [markdown]
# The gradient through batch normalization can be derived by hand too. Dropping the feature
# index and writing $g_i = \gamma\, \partial\ell/\partial y_i$ for the gradient reaching $\hat
# x_i$, the chain rule through $\mu$ and $\sigma^2$ (both depend on every $x_i$) collapses to
#
# $$
# \frac{\partial \ell}{\partial x_i} = \frac{1}{\sqrt{\sigma^2 + \epsilon}}
# \Big( g_i - \frac1B \sum_{j} g_j - \hat x_i \, \frac1B \sum_j g_j \hat x_j \Big):
# $$ (eq-bn-backward)
#
# the incoming gradient, minus its mean, minus its projection on $\hat x$. Normalization thus
# removes the two directions along which the loss could not change anyway (shifting or scaling
# all $x_i$ together leaves $\hat x$ the same). We check {eq}`eq-bn-backward` against autograd.
#
# ```{literalinclude} ../../dlbook/norms.py
# :pyobject: bn_backward
# ```

# %%
x = (torch.randn(batch, d, dtype=torch.float64) * 2 + 1).requires_grad_()
bn64 = nn.BatchNorm1d(d).double()
with torch.no_grad():
    bn64.weight.uniform_(0.5, 1.5)
dy = torch.randn(batch, d, dtype=torch.float64)
(bn64(x) * dy).sum().backward()
torch.testing.assert_close(bn_backward(x.detach(), bn64.weight.detach(), dy), x.grad)

# %% [markdown]
# ## Layer normalization
#
# Batch normalization needs a batch: its output for one example depends on the others, it
# behaves differently in training and evaluation, and it is awkward for sequences of varying
# length. **Layer normalization** {cite:p}`ba2016layer` normalizes each example over its own
# $d$ features instead, the same way in training and evaluation, with no running statistics.
# It is the normalization of the Transformers in Part 3. For one example $x \in \mathbb{R}^d$:
#
# $$
# \mu = \frac1d \sum_{k=1}^d x_k,\quad
# \sigma^2 = \frac1d \sum_{k=1}^d (x_k - \mu)^2,\quad
# y_k = \gamma_k \frac{x_k - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta_k .
# $$
#
# The backward pass is {eq}`eq-bn-backward` with the roles of the two axes exchanged: the means
# run over the features of one example instead of over the batch.
#
# ```{literalinclude} ../../dlbook/norms.py
# :pyobject: hand_layer_norm
# ```
#
# ```{literalinclude} ../../dlbook/norms.py
# :pyobject: ln_backward
# ```

# %%
seed_everything(0)
ln = nn.LayerNorm(d)
with torch.no_grad():
    ln.weight.uniform_(0.5, 1.5)
    ln.bias.normal_()
gamma = ln.weight.detach().clone().requires_grad_()
beta = ln.bias.detach().clone().requires_grad_()
x = (torch.randn(4, 5, d) * 3 + 1).requires_grad_()  # (batch, positions, features)
x2 = x.detach().clone().requires_grad_()
dy = torch.randn(4, 5, d)
y_ours, y_theirs = hand_layer_norm(x, gamma, beta), ln(x2)
torch.testing.assert_close(y_ours, y_theirs)
(y_ours * dy).sum().backward()
(y_theirs * dy).sum().backward()
torch.testing.assert_close(x.grad, x2.grad)
torch.testing.assert_close(gamma.grad, ln.weight.grad)
torch.testing.assert_close(beta.grad, ln.bias.grad)
torch.testing.assert_close(ln_backward(x.detach(), gamma.detach(), dy), x.grad, rtol=1e-4, atol=1e-5)
ln.eval()
torch.testing.assert_close(ln(x2), y_theirs)  # no train/eval difference
print("hand-written layer norm == nn.LayerNorm (outputs and all gradients)")

# %% [markdown]
# Normalization also makes the initialization scale irrelevant. We insert a `LayerNorm` before
# every activation of the 30-layer ReLU MLP with PyTorch's default initialization, the network
# whose gradient vanished by a factor {glue}`s2_6_relu_ratio` above, and measure again.

# %%
class NormedMLP(nn.Sequential):
    """depth × (Linear → LayerNorm → act), then a Linear head."""

    def __init__(self, act: type[nn.Module], depth: int = depth, width: int = width) -> None:
        sizes = [64] + [width] * (depth - 1)
        layers: list[nn.Module] = []
        for i in range(depth - 1):
            layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.LayerNorm(sizes[i + 1]), act()]
        super().__init__(*layers, nn.Linear(width, 10))


seed_everything(0)
normed = NormedMLP(nn.ReLU).to(device)
F.cross_entropy(normed(x_probe), y_probe).backward()
normed_grads = [g for name, g in grad_norms(normed, by="module").items()
                if isinstance(normed.get_submodule(name), nn.Linear)]
normed_ratio = normed_grads[0] / normed_grads[-1]
glue("s2_6_ln_relu_ratio", normed_ratio, ".2f")
print(f"ReLU + LayerNorm, default init: first/last gradient norm {normed_ratio:.2e}")
assert normed_ratio > 1e-2 and normed_ratio > 1e6 * ratio["ReLU, default init"]

# %% [markdown]
# With a layer norm in front of every ReLU, the first layer's gradient is a fraction
# {glue}`s2_6_ln_relu_ratio` of the last layer's. The reason is visible in the backward pass of
# {eq}`eq-bn-backward`: a layer whose weights are too small produces pre-activations with a
# small $\sigma$, and normalization divides the forward signal *and* the backward gradient by
# that same $\sigma$, cancelling the shrinkage at every layer.
#
# ## Residual connections
#
# A **residual connection** {cite:p}`he2016deep` adds a block's input to its output,
# $h_l = h_{l-1} + f_l(h_{l-1})$. Its Jacobian is $I + \partial f_l / \partial h_{l-1}$, so the
# backward pass becomes
#
# $$
# \frac{\partial \ell}{\partial h_{l-1}} = \frac{\partial \ell}{\partial h_l}
# + \Big(\frac{\partial f_l}{\partial h_{l-1}}\Big)^{\!\top} \frac{\partial \ell}{\partial h_l} .
# $$
#
# Expanding the product over all layers, the gradient at the bottom contains the gradient at the
# top *unchanged* (the product of the identities), plus terms through some of the blocks. Even if
# every block shrinks gradients, the identity path carries them down intact. We compare a plain
# ReLU stack $h_l = \operatorname{ReLU}(W_l h_{l-1} + b_l)$ with its residual version $h_l =
# h_{l-1} + \operatorname{ReLU}(W_l h_{l-1} + b_l)$, both with PyTorch's default initialization
# (the one that made the plain network vanish above).

# %%
class Stack(nn.Module):
    """Input layer, `depth - 2` hidden blocks of width `width`, output layer; residual or plain."""

    def __init__(self, residual: bool, depth: int = depth, width: int = width) -> None:
        super().__init__()
        self.residual = residual
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 2))
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x))
        for block in self.blocks:
            h = h + F.relu(block(h)) if self.residual else F.relu(block(h))
        return self.out(h)


stack_grads = {}
for residual in (False, True):
    seed_everything(0)
    stack = Stack(residual).to(device)
    F.cross_entropy(stack(x_probe), y_probe).backward()
    stack_grads["residual" if residual else "plain"] = list(grad_norms(stack, by="module").values())

gain = stack_grads["residual"][0] / stack_grads["plain"][0]
glue("s2_6_residual_gain", gain, ".1e")
print(f"first-layer gradient norm, residual / plain: {gain:.2e}")
assert gain > 1e4

fig, ax = plt.subplots(figsize=(6, 3.4))
for name, norms in stack_grads.items():
    ax.semilogy(range(1, depth + 1), norms, marker=".", label=name)
ax.set(xlabel="layer", ylabel="gradient norm", title="Residual connections keep gradients alive")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# Same weights, same data; only the `h +` differs. The first layer of the residual stack
# receives a gradient {glue}`s2_6_residual_gain` times larger than in the plain stack.
#
# ## Does it train?
#
# Gradient norms at step 0 are a diagnosis; the test is training. We train three 30-layer
# networks on the digits with the same plain SGD with momentum and the same learning rate, and
# compare their training loss.

# %%
def train_loss_curve(model: nn.Module, steps: int, lr: float = 0.05,
                     norms: list[float] | None = None) -> list[float]:
    """Training losses of `steps` SGD steps; the gradient norms before clipping go to `norms`."""
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(x_train), (64,), generator=gen).to(device)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if norms is not None:
            norms.append(norm.item())
        opt.step()
        losses.append(loss.item())
    return losses


steps = pick(smoke=5, book=150)
candidates = {
    "sigmoid, default init": lambda: deep_mlp(nn.Sigmoid),
    "ReLU, Kaiming init": lambda: deep_mlp(nn.ReLU, kaiming),
    "ReLU, residual, default init": lambda: Stack(residual=True),
}
curves, grad_norms = {}, {}
for name, make in candidates.items():
    seed_everything(0)
    grad_norms[name] = []
    curves[name] = train_loss_curve(make(), steps, norms=grad_norms[name])


def smooth(values: list[float], k: int = 20) -> list[float]:
    return [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1])
            for i in range(len(values))]


fig, ax = plt.subplots(figsize=(6.5, 3.6))
for name, losses in curves.items():
    ax.plot(smooth(losses), label=name)
ax.set(xlabel="step", ylabel="training loss (moving average)", yscale="log",
       title="30-layer MLPs on the digits, SGD with momentum")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

final = {name: sum(c[-20:]) / len(c[-20:]) for name, c in curves.items()}
for name, v in final.items():
    print(f"{name:24s} final training loss {v:.3f}")
glue("s2_6_final_sigmoid", final["sigmoid, default init"], ".2f")
glue("s2_6_final_kaiming", final["ReLU, Kaiming init"], ".2f")
glue("s2_6_final_residual", final["ReLU, residual, default init"], ".2f")
glue("s2_6_log10", math.log(10), ".2f")
glue("s2_6_steps", steps)
short = {"sigmoid, default init": "sigmoid", "ReLU, Kaiming init": "kaiming",
         "ReLU, residual, default init": "residual"}
for name, key in short.items():
    norms_t = torch.tensor(grad_norms[name])
    glue(f"s2_6_median_norm_{key}", norms_t.median().item(), ".2g")
    glue(f"s2_6_clipped_{key}", (norms_t > 1.0).float().mean().item(), ".0%")
if checks_enabled():
    assert final["sigmoid, default init"] > 2.0  # stuck near log(10): chance level
    for name in ("ReLU, Kaiming init", "ReLU, residual, default init"):
        assert final[name] < 0.5 * final["sigmoid, default init"], (name, final)

# %% [markdown]
# The plain sigmoid network never leaves the loss of guessing, $\log 10 \approx$
# {glue}`s2_6_log10` (it ends at {glue}`s2_6_final_sigmoid`): its first layers receive no
# gradient. With Kaiming initialization, or with residual connections, the same depth trains
# (final losses {glue}`s2_6_final_kaiming` and {glue}`s2_6_final_residual` after
# {glue}`s2_6_steps` steps). We clipped the gradient norm to 1 in every run (`clip_grad_norm_`, a
# guard against the exploding case {cite:p}`pascanu2013difficulty`). Clipping only acts when the
# global norm exceeds 1, and then shrinks every layer's gradient by the same factor: it can
# tame a large step but cannot lift a vanishing gradient or change how the gradient is shared
# between layers. The median gradient norms before clipping were
# {glue}`s2_6_median_norm_sigmoid` (sigmoid), {glue}`s2_6_median_norm_kaiming` (Kaiming) and
# {glue}`s2_6_median_norm_residual` (residual), and clipping acted in
# {glue}`s2_6_clipped_sigmoid`, {glue}`s2_6_clipped_kaiming` and {glue}`s2_6_clipped_residual`
# of the steps.
#
# ## Summary
#
# * Back-propagation multiplies the gradient by one Jacobian per layer, so in a deep plain
#   network it shrinks or grows geometrically with depth; sigmoids ($\sigma' \le 1/4$) make it
#   vanish.
# * The variance of a pre-activation is $n_\text{in}\operatorname{Var}(w)\,\mathbb{E}[x^2]$.
#   Keeping it constant gives Xavier/Glorot initialization for tanh,
#   $\operatorname{Var}(w) = 2/(n_\text{in}+n_\text{out})$, and Kaiming/He for ReLU,
#   $\operatorname{Var}(w) = 2/n_\text{in}$; a factor $c$ off compounds to $c^L$.
# * Batch normalization standardizes each feature over the batch, keeps running statistics
#   (momentum 0.1, unbiased variance in PyTorch) for evaluation, and learns a scale and a shift.
#   Layer normalization standardizes each example over its features and has no train/eval
#   difference. Both were written here from their equations and equal PyTorch's modules.
# * Residual connections add an identity path through which the gradient reaches every layer.
# * `dlbook.probes.grad_norms` and `activation_stats` measure all of this in any model.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-2-6-1
# ```
# For tanh, Xavier's derivation assumed $\tanh(z) \approx z$. Push standard-normal inputs
# through 30 tanh layers of width 512 with Xavier initialization and plot the variance of the
# pre-activations per layer. Does it stay constant? Explain.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-6-1
# :class: dropdown
# ```
# It decays slowly. Because $|\tanh(z)| < |z|$ for $z \neq 0$, $\mathbb{E}[\tanh(z)^2] <
# \operatorname{Var}(z)$, so each layer loses a little variance; the smaller the variance, the
# closer tanh is to linear and the slower the loss. The decay is polynomial in depth, not
# geometric like a wrong scale.

# %%
seed_everything(0)
tanh_stack = nn.Sequential(*[m for _ in range(depth) for m in
                             (nn.Linear(probe_width, probe_width), nn.Tanh())])
for layer in tanh_stack:
    if isinstance(layer, nn.Linear):
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
tanh_var = [s["std"] ** 2 for s in activation_stats(tanh_stack, torch.randn(1024, probe_width)).values()]
print("tanh + Xavier, variance at layers 1, 10, 20, 30:",
      [round(tanh_var[i], 3) for i in (0, 9, 19, 29)])
assert tanh_var[-1] < tanh_var[0]  # it decays...
assert tanh_var[-1] > 0.01 * tanh_var[0]  # ...but nowhere near geometrically

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-6-2
# ```
# In eval mode, batch normalization is an affine map $y = a \odot x + c$. Give $a$ and $c$ in
# terms of $\gamma, \beta$ and the running statistics, and use it to fold a `BatchNorm1d` into
# the `nn.Linear` before it (a common trick for faster inference). Check the folded layer
# gives the same outputs.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-6-2
# :class: dropdown
# ```
# $a = \gamma / \sqrt{\hat\sigma^2 + \epsilon}$ and $c = \beta - a \hat\mu$. For $z = Wx + b$
# followed by batch norm, the composition is $a \odot (Wx + b) + c$, i.e. a linear layer with
# weight $\operatorname{diag}(a) W$ and bias $a \odot b + c$.

# %%
seed_everything(0)
lin, bn = nn.Linear(10, 6), nn.BatchNorm1d(6)
for _ in range(10):  # populate the running statistics
    bn(lin(torch.randn(32, 10) * 2))
bn.eval()
a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
folded = nn.Linear(10, 6)
with torch.no_grad():
    folded.weight.copy_(a[:, None] * lin.weight)
    folded.bias.copy_(a * lin.bias + bn.bias - a * bn.running_mean)
x = torch.randn(5, 10)
torch.testing.assert_close(folded(x), bn(lin(x)))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-6-3
# ```
# Show that a batch-normalized layer's output does not change when its input is multiplied by
# a positive constant, and that therefore the bias of a `Linear` followed by `BatchNorm1d` is
# useless. Check both numerically (in train mode).
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-6-3
# :class: dropdown
# ```
# Scaling $x$ by $s > 0$ scales $x - \mu$ and $\sigma$ by $s$, so $\hat x$ is unchanged (up to
# $\epsilon$). Adding a constant $b_k$ to feature $k$ shifts $x_{ik}$ and $\mu_k$ alike, so
# $x_{ik} - \mu_k$ is unchanged. That is why convolutional and linear layers followed by batch
# norm are usually created with `bias=False`.

# %%
bn = nn.BatchNorm1d(6)
x = torch.randn(32, 6)
torch.testing.assert_close(bn(5.0 * x), bn(x), rtol=1e-4, atol=1e-4)
torch.testing.assert_close(bn(x + torch.randn(6)), bn(x), rtol=1e-4, atol=1e-4)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-6-4
# ```
# The residual stack above grows its activations with depth. Measure the standard deviation of
# $h_l$ per block with forward hooks and explain the growth from {eq}`eq-var-preact`. Why do
# Transformers put a normalization layer inside every residual block?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-6-4
# :class: dropdown
# ```
# Here $h_l = h_{l-1} + f(h_{l-1})$ with both terms non-negative (they come out of ReLUs), so
# $\mathbb{E}[h_l^2] \ge \mathbb{E}[h_{l-1}^2] + \mathbb{E}[f(h_{l-1})^2]$, and by
# {eq}`eq-var-preact` the second term is a fixed fraction of the first ($1/6$ with the default
# initialization): the mean square grows at least geometrically, and the positive cross term
# makes it grow faster still. Each block's `Linear` computes $W h_{l-1}$, whose scale is
# proportional to that of $h_{l-1}$, so `activation_stats` on the `nn.Linear` layers shows the
# growth. Normalizing the input of each block (pre-norm, $h + f(\mathrm{LN}(h))$) keeps what
# every $f$ sees at unit scale while leaving the identity path, and thus the gradient's
# highway, untouched.

# %%
seed_everything(0)
stack = Stack(residual=True)
rms = [s["rms"] for name, s in activation_stats(stack, x_probe.cpu(), nn.Linear).items()
       if name.startswith("blocks")]
print("RMS of W h at blocks 1, 10, 20, 28:", [round(rms[i], 2) for i in (0, 9, 19, 27)])
assert rms[-1] > 5 * rms[0]

# %% [markdown]
# ```{solution-end}
# ```
