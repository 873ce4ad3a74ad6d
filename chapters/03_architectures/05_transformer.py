# %% [markdown]
# # The Transformer block
#
# Attention ({doc}`04_attention`) lets every position read from every other one, but on its
# own it is a weighted average: it mixes information across positions and computes little.
# The *Transformer block* {cite:p}`vaswani2017attention` pairs it with a position-wise
# feed-forward network that does the computing, wraps both in residual connections and
# normalisations so that dozens of blocks can be stacked and trained, and is the single
# repeated unit of every GPT, BERT and Llama model.
#
# This section builds the block's parts from their equations (layer norm and RMSNorm, the GELU
# and SwiGLU feed-forward networks, the residual stream), assembles encoder and decoder blocks
# and checks them against PyTorch's own, measures why *pre-norm* blocks are the ones used in
# deep models, and finally trains a small Transformer encoder against an LSTM on a task where
# reading far back matters.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.nn.transformer import (
    RMSNorm,
    TransformerBlock,
    TransformerEncoder,
    TransformerEncoderConfig,
    make_mlp,
)

seed_everything(0)
device = get_device()
TOL = dict(atol=2e-5, rtol=1e-4)

# %% [markdown]
# ## Normalisation: layer norm and RMSNorm
#
# Deep networks train badly when the scale of their activations drifts from layer to layer.
# *Layer normalisation* {cite:p}`ba2016layer` rescales each token's vector
# $x \in \mathbb{R}^C$ on its own (unlike batch norm, it does not look at other examples, so it
# works the same for any batch size and sequence length):
#
# $$
# \mu = \frac1C\sum_{i=1}^C x_i, \qquad \sigma^2 = \frac1C\sum_{i=1}^C (x_i-\mu)^2, \qquad
# \mathrm{LN}(x) = \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} \odot \gamma + \beta ,
# $$
#
# with a learned gain $\gamma$ and bias $\beta$. *RMSNorm* {cite:p}`zhang2019root` drops the
# centring and the bias and divides by the root mean square only,
#
# $$
# \mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\frac1C\sum_i x_i^2 + \epsilon}} \odot g ,
# $$
#
# which is cheaper and, in practice, works as well; Llama-style models use it. We write both
# from the formulas and compare them with `nn.LayerNorm`, `nn.RMSNorm` and the library's
# `RMSNorm`, outputs and gradients.

# %%
def layer_norm(x, gamma, beta, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # the biased variance, as in the formula
    return (x - mu) / torch.sqrt(var + eps) * gamma + beta


def rms_norm(x, g, eps=1e-6):
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * g


C = 32
x = (3 * torch.randn(4, 7, C) + 2).requires_grad_()
ln, rms_torch, rms_lib = nn.LayerNorm(C), nn.RMSNorm(C, eps=1e-6), RMSNorm(C, eps=1e-6)
with torch.no_grad():  # non-trivial gains and biases
    ln.weight.uniform_(0.5, 1.5)
    ln.bias.normal_()
    rms_torch.weight.uniform_(0.5, 1.5)
    rms_lib.weight.copy_(rms_torch.weight)

upstream = torch.randn(4, 7, C)
for ours_fn, refs in [
    (lambda z: layer_norm(z, ln.weight, ln.bias), [ln]),
    (lambda z: rms_norm(z, rms_torch.weight), [rms_torch, rms_lib]),
]:
    y = ours_fn(x)
    (g_ours,) = torch.autograd.grad(y, x, upstream)
    for ref in refs:
        y_ref = ref(x)
        (g_ref,) = torch.autograd.grad(y_ref, x, upstream)
        torch.testing.assert_close(y, y_ref, **TOL)
        torch.testing.assert_close(g_ours, g_ref, **TOL)
print("layer_norm == nn.LayerNorm; rms_norm == nn.RMSNorm == dlbook RMSNorm (outputs, gradients)")

# %% [markdown]
# ```{literalinclude} ../../dlbook/nn/transformer.py
# :pyobject: RMSNorm
# ```
#
# The library computes the statistics in float32 even when the activations are bfloat16, a
# precaution for mixed-precision training (Part 4).
#
# ## The feed-forward network
#
# After attention has gathered information into each position, a two-layer network processes
# every position independently. The original design widens the vector four-fold, applies a
# non-linearity and projects back; GPT-2 uses GELU {cite:p}`hendrycks2016gelu`:
#
# $$
# \mathrm{MLP}(x) = W_2\,\mathrm{GELU}(W_1 x + b_1) + b_2, \qquad
# W_1 \in \mathbb{R}^{4C\times C},\; W_2 \in \mathbb{R}^{C\times 4C}.
# $$
#
# *Gated* variants {cite:p}`shazeer2020glu` multiply two projections element-wise, one through
# a non-linearity acting as a gate. SwiGLU uses $\mathrm{SiLU}(z) = z\,\sigma(z)$:
#
# $$
# \mathrm{SwiGLU}(x) = W_2\big(\mathrm{SiLU}(W_g x) \odot W_u x\big).
# $$
#
# With three matrices instead of two, a hidden width of $\tfrac{2}{3}\cdot 4C$ keeps the
# parameter count of the GELU network ($3 \cdot C \cdot \tfrac{8C}{3} = 2 \cdot C \cdot 4C$).
#
# ```{literalinclude} ../../dlbook/nn/transformer.py
# :pyobject: SwiGLU
# ```

# %%
gelu_mlp, swiglu = make_mlp("gelu", C), make_mlp("swiglu", C, bias=False)
h = torch.randn(5, C)
by_hand = gelu_mlp.c_proj(F.gelu(h @ gelu_mlp.c_fc.weight.T + gelu_mlp.c_fc.bias))
torch.testing.assert_close(gelu_mlp(h), by_hand)
gate = h @ swiglu.gate.weight.T
by_hand = (gate * torch.sigmoid(gate) * (h @ swiglu.up.weight.T)) @ swiglu.c_proj.weight.T
torch.testing.assert_close(swiglu(h), by_hand)
n_gelu = sum(p.numel() for n, p in gelu_mlp.named_parameters() if n.endswith("weight"))
n_swiglu = sum(p.numel() for p in swiglu.parameters())
print(f"GELU MLP weights: {n_gelu:,}   SwiGLU weights (hidden {swiglu.gate.out_features}): {n_swiglu:,}")
assert abs(n_swiglu / n_gelu - 1) < 0.05

# %% [markdown]
# ## The residual stream and the block
#
# A block adds the output of each sub-layer to its input instead of replacing it
# ({cite:t}`he2016deep`'s residual connection). Reading a Transformer as a *residual stream*
# helps: a vector $x_\ell$ per position flows from the embedding to the output head, and each
# attention and MLP sub-layer reads from the stream and *adds* its result back. Where the
# normalisation sits gives two designs.
#
# * **Post-norm** (the original Transformer): normalise after each addition,
#   $x' = \mathrm{LN}(x + \mathrm{Attn}(x))$, $\;x_{\ell+1} = \mathrm{LN}(x' + \mathrm{MLP}(x'))$.
# * **Pre-norm** (GPT-2 and nearly every model since): normalise the *input* of each branch,
#   leave the stream itself untouched,
#
# $$
# x' = x + \mathrm{Attn}(\mathrm{LN}(x)), \qquad x_{\ell+1} = x' + \mathrm{MLP}(\mathrm{LN}(x')),
# $$
#
#   and apply one final normalisation after the last block.
#
# The block is an **encoder** block when its attention is bidirectional (every position sees
# the whole sequence, as in BERT) and a **decoder** block when it is causal (as in GPT). The
# library's block covers all four combinations:
#
# ```{literalinclude} ../../dlbook/nn/transformer.py
# :pyobject: TransformerBlock
# ```
#
# We write the pre-norm block from the parts above, its two equations line by line,
# and check it, and the library's block in both placements, against PyTorch's
# `nn.TransformerEncoderLayer` with the same weights (outputs and gradients).

# %% mystnb={"figure": {"caption": "The pre-norm decoder block of GPT-2 and the library's TransformerBlock(causal=True): each sub-layer reads a normalised copy of the residual stream and adds its result back. An encoder block drops the causal mask; a post-norm block normalises after each addition instead.", "name": "fig-transformer-block"}, "image": {"alt": "Diagram of a pre-norm Transformer block, top to bottom: input x of shape B, T, C; LayerNorm; causal multi-head self-attention; a plus node that adds the input x, brought round on the right; LayerNorm; an MLP of a linear layer from C to 4C, GELU and a linear layer from 4C back to C; a second plus node that adds the stream from the first plus node; the output, of shape B, T, C."}}
from dlbook.plot import diagram  # schematic drawings (boxes and arrows)

with torch.random.fork_rng():  # leave the random stream of the cells below as it was
    shown = TransformerBlock(64, 4, causal=True)  # the figure's claims, checked on the library
assert shown.norm_first and shown.attn.causal and shown.mlp.c_fc.out_features == 4 * 64
diagram(
    {
        "x": (0, 7, "x:  (B, T, C)", "io"),
        "n1": (0, 6, "LayerNorm", "norm"),
        "a": (0, 5, "causal multi-head\nself-attention", "attn"),
        "+1": (0, 4, "+", "op"),
        "n2": (0, 3, "LayerNorm", "norm"),
        "m": (0, 2, "MLP: linear C→4C,\nGELU, linear 4C→C", "linear"),
        "+2": (0, 1, "+", "op"),
        "y": (0, 0, "output:  (B, T, C)", "io"),
    },
    [("x", "n1"), ("n1", "a"), ("a", "+1"), ("+1", "n2"), ("n2", "m"), ("m", "+2"), ("+2", "y"),
     ("x", "+1", "skip=2.0"), ("+1", "+2", "skip=2.0")],
    size=(5, 6), box=(2.4, 0.6), fontsize=9.5,
)
plt.show()

# %%
def block_from_scratch(x, blk):
    """Pre-norm block, from the library block's weights. x (B, T, C)."""
    a = blk.attn
    x = x + a.c_proj(_mha(layer_norm(x, blk.norm1.weight, blk.norm1.bias), a))
    return x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(layer_norm(x, blk.norm2.weight, blk.norm2.bias))))


def _mha(z, a):
    """Heads of attention (before the output projection). z (B, T, C) -> (B, T, C)."""
    B, T, C = z.shape
    q, k, v = (t.view(B, T, a.n_head, -1).transpose(1, 2) for t in a.c_attn(z).split(C, -1))
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, T, C)


def torch_layer_like(blk, norm_first):
    """An nn.TransformerEncoderLayer holding the same weights as a library block."""
    ref = nn.TransformerEncoderLayer(C, blk.attn.n_head, dim_feedforward=4 * C, dropout=0.0,
                                     activation="gelu", batch_first=True, norm_first=norm_first)
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(blk.attn.c_attn.weight)
        ref.self_attn.in_proj_bias.copy_(blk.attn.c_attn.bias)
        for dst, src in [(ref.self_attn.out_proj, blk.attn.c_proj), (ref.linear1, blk.mlp.c_fc),
                         (ref.linear2, blk.mlp.c_proj), (ref.norm1, blk.norm1), (ref.norm2, blk.norm2)]:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return ref.to(device)


x = torch.randn(3, 9, C, device=device)
for norm_first in (True, False):
    blk = TransformerBlock(C, 4, norm_first=norm_first).to(device)
    ref = torch_layer_like(blk, norm_first)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = blk(x1), ref(x2)
    torch.testing.assert_close(y1, y2, **TOL)
    y1.backward(upstream := torch.randn_like(y1))
    y2.backward(upstream)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    torch.testing.assert_close(blk.mlp.c_fc.weight.grad, ref.linear1.weight.grad, **TOL)
    if norm_first:
        torch.testing.assert_close(block_from_scratch(x, blk), blk(x), **TOL)
print("block from scratch == TransformerBlock == nn.TransformerEncoderLayer (pre- and post-norm)")

# %% [markdown]
# A decoder block differs only in its causal mask, and the mask must survive everything the
# block does: the MLP and the norms act on each position separately, so they cannot leak the
# future either. We check that changing the last tokens changes no earlier output of a decoder
# block, while it does change every output of an encoder block.

# %%
decoder = TransformerBlock(C, 4, causal=True).to(device)
encoder = TransformerBlock(C, 4, causal=False).to(device)
x_a = torch.randn(2, 12, C, device=device)
x_b = x_a.clone()
x_b[:, 8:] = torch.randn(2, 4, C, device=device)         # change tokens 8..11
torch.testing.assert_close(decoder(x_a)[:, :8], decoder(x_b)[:, :8])
assert not torch.allclose(encoder(x_a)[:, :8], encoder(x_b)[:, :8])
print("decoder: outputs 0..7 ignore tokens 8..11; encoder: they do not")

# %% [markdown]
# ## Why pre-norm: gradients at initialisation across depth
#
# In a pre-norm model the stream is a sum, $x_L = x_0 + \sum_\ell f_\ell(\cdot)$, so the output
# depends on every block through an identity path, and each block's contribution is one of
# $2L$ comparable terms. {cite:t}`xiong2020layer` showed that, at initialisation, the gradient
# of the last layer's weights is then of order $1/\sqrt{L}$ times that of a post-norm model,
# whose last layer norm sits directly before the output and passes the full gradient to the
# last block whatever the depth. Large gradients at the top of a deep post-norm model make
# the first updates too large unless the learning rate is warmed up slowly; pre-norm models
# tolerate larger learning rates and little or no warm-up.
#
# We measure this: stacks of $L$ blocks (width 64, Xavier-initialised as in their analysis), a
# linear output layer and a cross-entropy loss on random targets; the gradient norm of the
# last block's MLP output matrix $W_2$, averaged over three seeds.

# %%
def last_layer_grad(n_layer: int, norm_first: bool, seed: int, width: int = 64) -> float:
    torch.manual_seed(seed)
    blocks = nn.Sequential(*[TransformerBlock(width, 4, norm_first=norm_first) for _ in range(n_layer)])
    for m in blocks.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    final = nn.LayerNorm(width) if norm_first else nn.Identity()  # pre-norm: one final norm
    head = nn.Linear(width, 32)
    x = torch.randn(8, 16, width)
    logits = head(final(blocks(x)))
    F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 32, (8 * 16,))).backward()
    return blocks[-1].mlp.c_proj.weight.grad.norm().item()


depths = pick(smoke=[2, 4], book=[3, 6, 12, 24, 48])
seeds = pick(smoke=[0], book=[0, 1, 2])
grad = {nf: [sum(last_layer_grad(L, nf, s) for s in seeds) / len(seeds) for L in depths] for nf in (False, True)}

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(depths, grad[False], marker="o", label="post-norm")
ax.plot(depths, grad[True], marker="o", label="pre-norm")
ax.plot(depths, [grad[True][0] * math.sqrt(depths[0] / L) for L in depths], "k--", lw=1, label=r"$\propto 1/\sqrt{L}$")
ax.set(xscale="log", yscale="log", xlabel="number of blocks $L$", ylabel=r"$\|\nabla W_2\|$ of the last block",
       title="gradient at the top of the stack, at initialisation")
ax.set_xticks(depths, [str(d) for d in depths])
ax.grid(alpha=0.3)
ax.legend()
plt.show()

post_ratio, pre_ratio = grad[False][-1] / grad[False][0], grad[True][-1] / grad[True][0]
glue("s3_5_post_ratio", post_ratio, ".2f")
glue("s3_5_pre_ratio", pre_ratio, ".2f")
glue("s3_5_depth_max", depths[-1], "d")
glue("s3_5_depth_min", depths[0], "d")
glue("s3_5_post_over_pre", grad[False][-1] / grad[True][-1], ".1f")
if checks_enabled():
    assert post_ratio > 0.8, "post-norm: last-layer gradient does not shrink with depth"
    assert pre_ratio < 0.5, "pre-norm: last-layer gradient shrinks with depth"
    assert grad[False][-1] > 3 * grad[True][-1]

# %% [markdown]
# From {glue}`s3_5_depth_min` to {glue}`s3_5_depth_max` blocks, the post-norm gradient changes
# by a factor {glue}`s3_5_post_ratio` (it does not shrink), while the pre-norm one falls by a
# factor {glue}`s3_5_pre_ratio`, close to the $1/\sqrt{L}$ line; at depth
# {glue}`s3_5_depth_max` the post-norm gradient is {glue}`s3_5_post_over_pre` times larger.
# This is the measurable part of the story; the practical consequence, that post-norm models
# need a careful learning-rate warm-up and pre-norm ones train reliably at depth, is the
# experimental finding of {cite:t}`xiong2020layer`. All models in the rest of the book use
# pre-norm blocks.
#
# ## An encoder that beats an LSTM
#
# What does attention buy? A task that needs exact access to tokens far back: **copying**. The
# input is a string of $n$ random digits, a separator, and $n$ blank slots; at each blank the
# model must output the digit that stood $n+1$ positions earlier:
#
# ```
# input:   3 1 4 1 5 | _ _ _ _ _
# target:  . . . . . . 3 1 4 1 5      (. = not scored)
# ```
#
# A recurrent network must store all $n$ digits in its fixed-size state and recall them in
# order; attention simply looks them up. We train a 2-layer Transformer encoder (the library's
# `TransformerEncoder`, learned positions, pre-norm) and a one-layer `nn.LSTM` (which {doc}`03_rnns`
# shows equals the LSTM written from scratch) with about the same number of parameters,
# the same optimiser, batch size and number of steps, and measure the accuracy per digit on
# fresh sequences, for several lengths $n$. Both models see the whole input before they must
# answer, so the comparison is fair.
#
# ```{literalinclude} ../../dlbook/nn/transformer.py
# :pyobject: TransformerEncoder
# ```

# %%
N_DIGITS, SEP, BLANK = 10, 10, 11  # token ids: digits 0-9, separator, blank


def copy_batch(n_seq: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n_seq, 2n+1) and targets (n_seq, 2n+1), -100 where nothing is scored."""
    digits = torch.randint(0, N_DIGITS, (n_seq, n), generator=gen)
    inputs = torch.cat([digits, torch.full((n_seq, 1), SEP), torch.full((n_seq, n), BLANK)], 1)
    targets = torch.cat([torch.full((n_seq, n + 1), -100), digits], 1)
    return inputs.to(device), targets.to(device)


class LSTMCopier(nn.Module):
    """Embedding -> nn.LSTM -> linear head. idx (B, T) -> logits (B, T, 10)."""

    def __init__(self, emb: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.emb = nn.Embedding(N_DIGITS + 2, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, N_DIGITS)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.emb(idx))[0])


def make_transformer(n: int) -> nn.Module:
    cfg = TransformerEncoderConfig(vocab_size=N_DIGITS + 2, block_size=2 * n + 1, n_layer=2,
                                   n_head=4, n_embd=64, n_out=N_DIGITS)
    return TransformerEncoder(cfg)


def train_and_score(model: nn.Module, n: int, steps: int, lr: float, batch: int = 64) -> float:
    """Train on fresh random batches with AdamW + one-cycle schedule; return digit accuracy."""
    model.to(device)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        inputs, targets = copy_batch(batch, n, gen)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    inputs, targets = copy_batch(pick(smoke=64, book=1000), n, torch.Generator().manual_seed(12345))  # unseen test set
    with torch.no_grad():
        pred = model(inputs)[:, n + 1 :].argmax(-1)
    return (pred == targets[:, n + 1 :]).float().mean().item()


lengths = pick(smoke=[3, 5], book=[4, 8, 16, 24])
steps = pick(smoke=20, book=400)
acc = {"Transformer": [], "LSTM": []}
for n in lengths:
    seed_everything(0)
    transformer = make_transformer(n)
    acc["Transformer"].append(train_and_score(transformer, n, steps, lr=3e-3))
    seed_everything(0)
    lstm = LSTMCopier()
    acc["LSTM"].append(train_and_score(lstm, n, steps, lr=1e-2))
n_tf = sum(p.numel() for p in transformer.parameters())
n_lstm = sum(p.numel() for p in lstm.parameters())
print(f"parameters: Transformer {n_tf:,}, LSTM {n_lstm:,}")
print(" n   Transformer   LSTM")
for i, n in enumerate(lengths):
    print(f"{n:2d}   {acc['Transformer'][i]:11.3f}   {acc['LSTM'][i]:.3f}")
assert abs(n_tf / n_lstm - 1) < 0.1, "the two models have similar sizes"

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, values in acc.items():
    ax.plot(lengths, values, marker="o", label=name)
ax.axhline(1 / N_DIGITS, color="gray", ls=":", label="chance")
ax.set(xlabel="digits to copy $n$", ylabel="test accuracy per digit", ylim=(0, 1.05),
       title=f"copying after {steps} training steps")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

glue("s3_5_params_tf", n_tf, ",")
glue("s3_5_params_lstm", n_lstm, ",")
glue("s3_5_steps", steps, ",")
glue("s3_5_longest", lengths[-1], "d")
glue("s3_5_acc_tf_long", acc["Transformer"][-1], ".3f")
glue("s3_5_acc_lstm_long", acc["LSTM"][-1], ".3f")
glue("s3_5_acc_lstm_short", acc["LSTM"][0], ".3f")
glue("s3_5_shortest", lengths[0], "d")
if checks_enabled():
    assert acc["Transformer"][-1] > 0.95
    assert acc["Transformer"][-1] - acc["LSTM"][-1] > 0.5, "clear margin at the longest length"
    assert acc["LSTM"][0] > 0.9, "the LSTM can do the short task"

# %% [markdown]
# With {glue}`s3_5_params_tf` parameters (Transformer) against {glue}`s3_5_params_lstm`
# (LSTM) and {glue}`s3_5_steps` training steps each, the LSTM copies {glue}`s3_5_shortest`
# digits almost perfectly (accuracy {glue}`s3_5_acc_lstm_short`) but falls towards chance as
# the string grows: at $n =$ {glue}`s3_5_longest` it reaches {glue}`s3_5_acc_lstm_long`,
# while the Transformer reaches {glue}`s3_5_acc_tf_long`. The LSTM is not incapable in
# principle (a larger state and much longer training push its limit further), but every digit
# it recalls had to survive $n$ or more state updates; for the Transformer every digit is one
# attention step away, at any distance.
#
# ## From blocks to a GPT
#
# Stack causal pre-norm blocks between a token embedding and a final norm, project back to the
# vocabulary with the embedding matrix itself (*weight tying*), and you have GPT. The library's
# `GPT` (in `dlbook/nn/gpt.py`, configured by a `GPTConfig` dataclass) is the model that Part 4
# pretrains; it uses `F.scaled_dot_product_attention`, so it runs FlashAttention on a GPU, and
# optional RoPE, RMSNorm and SwiGLU:
#
# ```{literalinclude} ../../dlbook/nn/gpt.py
# :pyobject: GPT.forward
# ```
#
# At initialisation its weights are small (standard deviation 0.02, and $0.02/\sqrt{2L}$ for
# the projections that write into the residual stream, GPT-2's recipe to keep the stream's
# variance independent of depth), so it predicts nearly the uniform distribution and its loss
# is close to $\ln V$:

# %%
seed_everything(0)
gpt = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=128)).to(device)
idx = torch.randint(0, 512, (8, 64), device=device)
logits, loss = gpt(idx, torch.randint(0, 512, (8, 64), device=device))
assert logits.shape == (8, 64, 512)
assert gpt.lm_head.weight is gpt.wte.weight
assert abs(loss.item() - math.log(512)) < 0.05
glue("s3_5_gpt_loss", loss.item(), ".3f")
glue("s3_5_gpt_ln", math.log(512), ".3f")
glue("s3_5_gpt_params", gpt.num_params(), ",")
print(f"GPT with {gpt.num_params():,} parameters: loss at init {loss.item():.3f}, ln 512 = {math.log(512):.3f}")

# %% [markdown]
# The GPT above has {glue}`s3_5_gpt_params` parameters and an initial loss of
# {glue}`s3_5_gpt_loss` against $\ln 512 =$ {glue}`s3_5_gpt_ln`.
#
# ## Summary
#
# * Layer norm centres and rescales each token vector; RMSNorm only rescales. Both equal their
#   PyTorch counterparts.
# * The feed-forward network (GELU, or gated SwiGLU at $\tfrac{8}{3}C$ width) processes each
#   position; attention moves information between positions.
# * Each sub-layer adds to the residual stream. Pre-norm normalises the branch inputs and keeps
#   the stream an identity path; at initialisation its top-layer gradients shrink like
#   $1/\sqrt{L}$ while post-norm's do not, which is why deep models use pre-norm.
# * Encoder blocks attend in both directions, decoder blocks causally; our blocks equal
#   `nn.TransformerEncoderLayer`.
# * On copying, a small Transformer encoder stays near-perfect at lengths where an LSTM of the
#   same size and training budget falls to chance.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-3-5-1
# ```
# Show that layer norm (with $\gamma = 1$, $\beta = 0$, $\epsilon = 0$) is invariant to
# $x \mapsto a x + b$ for any $a > 0$ and scalar $b$, and that RMSNorm is invariant to scaling
# but not to shifting. Check both numerically.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-5-1
# :class: dropdown
# ```
# Under $x \mapsto ax + b$ the mean becomes $a\mu + b$ and the standard deviation $a\sigma$, so
# $(ax + b - a\mu - b)/(a\sigma) = (x-\mu)/\sigma$. RMSNorm divides by $\mathrm{rms}(x)$, which
# scales by $a$ but is not shift-equivariant, so a shift changes the output.

# %%
z = torch.randn(5, 16)
ones, zeros = torch.ones(16), torch.zeros(16)
torch.testing.assert_close(layer_norm(3 * z + 7, ones, zeros, eps=0), layer_norm(z, ones, zeros, eps=0), atol=1e-5, rtol=1e-4)
torch.testing.assert_close(rms_norm(3 * z, ones, eps=0), rms_norm(z, ones, eps=0), atol=1e-5, rtol=1e-4)
assert not torch.allclose(rms_norm(z + 7, ones, eps=0), rms_norm(z, ones, eps=0), atol=1e-2)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-5-2
# ```
# Count the parameters of one pre-norm block with width $C$, a GELU MLP of width $4C$, layer
# norms and biases everywhere. Check the formula against `TransformerBlock` for several $C$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-5-2
# :class: dropdown
# ```
# Attention: $3C^2 + 3C$ (queries, keys, values) and $C^2 + C$ (output). MLP: $4C^2 + 4C$ and
# $4C^2 + C$. Two layer norms: $4C$. Total $12C^2 + 13C$: the $12C^2$ that scaling-law papers
# use per layer {cite:p}`kaplan2020scaling`.

# %%
for width in (16, 64, 96):
    n_block = sum(p.numel() for p in TransformerBlock(width, 4).parameters())
    assert n_block == 12 * width**2 + 13 * width, (width, n_block)
    print(f"C = {width}: {n_block:,} = 12 C^2 + 13 C")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-5-3
# ```
# GPT-2 scales the initial weights of the residual projections (`c_proj`) by $1/\sqrt{2L}$.
# Build a 24-layer `GPT` and measure the standard deviation of the residual stream after the
# last block with this scaling and with all projections at standard deviation 0.02. Explain
# the difference.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-5-3
# :class: dropdown
# ```
# Each of the $2L$ branches adds a roughly independent term to the stream, so its variance
# grows linearly with the number of branches: $\mathrm{Var}(x_L) \approx \mathrm{Var}(x_0) +
# 2L\,v$ for branch variance $v$. Dividing the last matrix of each branch by $\sqrt{2L}$
# divides $v$ by $2L$, so the total added variance no longer depends on depth.

# %%
def stream_std(scaled: bool, n_layer: int = 24) -> float:
    seed_everything(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=n_layer, n_head=4, n_embd=64))
    if not scaled:
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02)
    idx_ex = torch.randint(0, 64, (8, 32))
    with torch.no_grad():
        s = model.wte(idx_ex) + model.wpe(torch.arange(32))
        s0 = s.std().item()
        for block in model.blocks:
            s = block(s)
    return s.std().item() / s0


depth_ex = pick(smoke=4, book=24)
growth_scaled, growth_plain = stream_std(True, depth_ex), stream_std(False, depth_ex)
print(f"std(x_L)/std(x_0): scaled {growth_scaled:.2f}, unscaled {growth_plain:.2f}")
assert growth_plain > growth_scaled

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-5-4
# ```
# Replace the learned positions of the copying Transformer by rotary embeddings
# (`TransformerEncoderConfig(..., rope=True)`). Why should RoPE suit this task particularly
# well? Train it at the longest length with the same budget.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-5-4
# :class: dropdown
# ```
# Every blank at position $n+1+t$ must read the digit at position $t$: always the same
# *relative* offset $n+1$. With RoPE a score depends on positions only through their
# difference, so one pattern of queries and keys serves all positions at once; with learned
# positions the model has to learn the pairing for every position separately.

# %%
n_long = lengths[-1]
seed_everything(0)
rope_model = TransformerEncoder(TransformerEncoderConfig(
    vocab_size=N_DIGITS + 2, block_size=2 * n_long + 1, n_layer=2, n_head=4, n_embd=64,
    n_out=N_DIGITS, rope=True))
acc_rope = train_and_score(rope_model, n_long, steps, lr=3e-3)
print(f"n = {n_long}: RoPE {acc_rope:.3f}, learned positions {acc['Transformer'][-1]:.3f}, LSTM {acc['LSTM'][-1]:.3f}")
if checks_enabled():
    assert acc_rope > acc["LSTM"][-1] + 0.5

# %% [markdown]
# ```{solution-end}
# ```
