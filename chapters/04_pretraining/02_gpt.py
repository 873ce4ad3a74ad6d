# %% [markdown]
# # The GPT model
#
# Part 3 built every piece of a Transformer: embeddings, causal self-attention, the pre-norm
# block with its residual stream, and a closed-form count of the parameters of each piece
# ({doc}`../03_architectures/05_transformer`, {doc}`../03_architectures/06_depth_and_parameters`).
# A **GPT** (generative pre-trained Transformer) {cite:p}`radford2019language` is what you get
# when you stack those blocks into a model of text: it reads token ids and, at every position,
# outputs a probability distribution over the *next* token. Pretraining (next section) only
# ever adjusts the numbers inside this model, so everything that decides whether pretraining
# works must already be right here: the shapes, the way the output layer shares its weights
# with the input, and the scale of the random weights it starts from.
#
# This section assembles the library's GPT, `dlbook.nn.gpt.GPT`, and checks it piece by piece:
# a forward pass written out by hand equals the model's, every intermediate shape is traced,
# the parameter count equals Part 3's formula, the initialisation keeps the residual stream
# from growing with depth (measured), the loss before training equals $\ln V$ as theory
# predicts, and bad input fails with a clear message.

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

from dlbook import checks_enabled, pick, seed_everything
from dlbook.book import error_message, glue
from dlbook.counting import gpt_params, param_breakdown
from dlbook.data.text import CharTokenizer, load_kjv, random_windows
from dlbook.nn.gpt import GPT, GPTConfig

generator = seed_everything(0)

# %% [markdown]
# ## The architecture
#
# Let the input be token ids $x_1, \dots, x_T$ from a vocabulary of $V$ ids, with $T$ at most
# the **context length** (`block_size`). Write $C$ for the model width (`n_embd`) and $L$ for
# the number of blocks (`n_layer`). A GPT computes
#
# $$
# \begin{aligned}
# h^{(0)}_t &= E_{x_t} + P_t ,\\
# a^{(\ell)} &= h^{(\ell-1)} + \operatorname{Attn}_\ell\big(\operatorname{LN}(h^{(\ell-1)})\big), \qquad \ell = 1, \dots, L,\\
# h^{(\ell)} &= a^{(\ell)} + \operatorname{MLP}_\ell\big(\operatorname{LN}(a^{(\ell)})\big),\\
# z_t &= \operatorname{LN}_f\big(h^{(L)}_t\big)\, E^\top \in \mathbb{R}^{V},\\
# p(x_{t+1} = v \mid x_{\le t}) &= \operatorname{softmax}(z_t)_v ,
# \end{aligned}
# $$ (eq-gpt)
#
# with the token table $E \in \mathbb{R}^{V \times C}$, the position table
# $P \in \mathbb{R}^{T_{\max} \times C}$, causal self-attention $\operatorname{Attn}_\ell$ and the
# feed-forward network $\operatorname{MLP}_\ell$ of block $\ell$, and logits $z_t$. The sequence $h^{(0)}, h^{(1)}, \dots, h^{(L)}$ is the **residual stream**: each block reads
# a normalised copy of it and *adds* its result back ("pre-norm"). Attention is **causal**:
# position $t$ only attends to positions $\le t$, so $z_t$ depends on $x_1..x_t$ alone and one
# forward pass yields $T$ next-token predictions at once, one per position. A final layer norm
# $\operatorname{LN}_f$ puts the stream on a fixed scale before the output layer.
#
# The output layer multiplies by $E^\top$, the *same* matrix that embeds the input tokens. This
# is **weight tying** {cite:p}`press2017using`: the row $E_v$ is used both to write token $v$
# into the stream and to score how well the final state matches $v$. It saves $VC$ parameters
# (a lot when $V$ is large, as we compute below) and tends to give a better model, because every
# occurrence of a token, as input *or* as target, now trains its one vector.
#
# Here is the library's model. It is a short class in the manner of nanoGPT: a dataclass
# config, the embeddings, a `ModuleList` of `TransformerBlock`s from
# {doc}`../03_architectures/05_transformer`, the final norm and the tied head. (The `cache`
# argument, `new_cache` and `generate` belong to decoding, {doc}`section 4.4 <04_decoding>`.)
#
# ```{literalinclude} ../../dlbook/nn/gpt.py
# :pyobject: GPT
# ```
#
# We build a small one with the vocabulary of the character tokenizer of the King James Bible
# (the corpus of the next section), so the numbers below are those of the model we pretrain.

# %%
text = load_kjv()
tokenizer = CharTokenizer.from_text(text)
config = GPTConfig(
    vocab_size=tokenizer.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128
)
torch.manual_seed(0)
model = GPT(config).eval()
V, C = config.vocab_size, config.n_embd
print(config)
print(f"{model.num_params(non_embedding=False):,} parameters")

# %% [markdown]
# ## The forward pass, by hand and traced
#
# Equation {eq}`eq-gpt` written out with the model's own modules must give exactly the logits
# of `model(idx)`: this checks that the class does what the math says, and nothing else.

# %%
ids = tokenizer.encode(text[:20_000])
x, y = random_windows(ids, config.block_size, batch_size=2, generator=generator)
B, T = x.shape

with torch.no_grad():
    h = model.wte(x) + model.wpe(torch.arange(T))  # (B, T, C)
    for block in model.blocks:
        h = h + block.attn(block.norm1(h))
        h = h + block.mlp(block.norm2(h))
    by_hand = model.ln_f(h) @ model.wte.weight.T  # tied head: E^T
    logits, loss = model(x, y)

assert torch.allclose(by_hand, logits, atol=1e-5)
assert model.lm_head.weight is model.wte.weight  # one tensor, two uses
print("max |by hand - model| =", (by_hand - logits).abs().max().item())

# %% [markdown]
# To see every intermediate shape we attach a **forward hook** to each top-level module: a
# function PyTorch calls with the module's output right after the module runs. The table lists
# the modules in the order they ran.

# %%
trace: list[tuple[str, tuple[int, ...]]] = []
handles = []
for name, module in model.named_modules():
    if name.count(".") <= 1 and name not in ("", "blocks"):  # wte, wpe, drop, blocks.i, ln_f, lm_head
        handles.append(
            module.register_forward_hook(
                lambda mod, inp, out, name=name: trace.append((name, tuple(out.shape)))
            )
        )
with torch.no_grad():
    model(x)
for handle in handles:
    handle.remove()

print(f"input idx{'':<9} {tuple(x.shape)}")
for name, shape in trace:
    print(f"{name:<20} {shape}")

expected = (
    [("wte", (B, T, C)), ("wpe", (T, C)), ("drop", (B, T, C))]
    + [(f"blocks.{i}", (B, T, C)) for i in range(config.n_layer)]
    + [("ln_f", (B, T, C)), ("lm_head", (B, T, V))]
)
assert trace == expected, trace

# %% [markdown]
# Two things to notice. The position embedding comes out as $(T, C)$, without a batch
# dimension: the same positions are added to every sequence of the batch by broadcasting. And
# every block maps $(B, T, C)$ to $(B, T, C)$: the residual stream keeps its shape from the
# embeddings to the final norm, which is what lets us stack any number of blocks. Only the
# head changes the last dimension, from the width $C$ to the vocabulary $V$.
#
# ## Counting the parameters
#
# Section 3.6 derived the parameter count of a GPT in closed form, `dlbook.counting.gpt_params`:
#
# $$
# N = \underbrace{VC}_{E} + \underbrace{T_{\max} C}_{P} + L\,(12C^2 + 13C) + \underbrace{2C}_{\operatorname{LN}_f}
# \;+\; \underbrace{[\text{untied}]\; VC}_{\text{head}} .
# $$ (eq-gpt-params)
#
# The model's count must match it, and the formula tells us what tying saves without building
# an untied model.

# %%
n_model = model.num_params(non_embedding=False)
assert n_model == gpt_params(config) == sum(p.numel() for p in model.parameters())
assert n_model == V * C + config.block_size * C + config.n_layer * (12 * C**2 + 13 * C) + 2 * C
breakdown = param_breakdown(model)
print({k: f"{v:,}" for k, v in breakdown.items()})

gpt2 = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
n_tied, n_untied = gpt_params(gpt2), gpt_params(gpt2, tied=False)
assert n_untied - n_tied == gpt2.vocab_size * gpt2.n_embd
glue("s4_2_params", n_model, ",")
glue("s4_2_tiny_saving", V * C, ",")
glue("s4_2_gpt2_tied", n_tied / 1e6, ".1f")
glue("s4_2_gpt2_untied", n_untied / 1e6, ".1f")
glue("s4_2_gpt2_saving", 1 - n_tied / n_untied, ".0%")
print(f"GPT-2 small: {n_tied:,} tied, {n_untied:,} untied")

# %% [markdown]
# Our character model has {glue}`s4_2_params` parameters, exactly the formula's count; tying
# saves only $VC =$ {glue}`s4_2_tiny_saving` of them because a character vocabulary is tiny.
# For GPT-2 small ($V = 50\,257$, $C = 768$) the same formula gives {glue}`s4_2_gpt2_tied` M
# parameters with tying and {glue}`s4_2_gpt2_untied` M without: tying removes
# {glue}`s4_2_gpt2_saving` of the model.
#
# ## Initialisation and the residual stream
#
# Our GPT initialises every linear layer and both embeddings from $\mathcal{N}(0, 0.02^2)$,
# biases at zero, norm gains at one, as nanoGPT does. The 0.02 goes back to GPT-1, whose paper
# states it {cite:p}`radford2018improving`; GPT-2's released code uses it for the linear layers
# and the token embedding, but a standard deviation of 0.01 for the position embedding. With
# one exception: the two projections that *write into* the residual stream in each block (the
# attention output `attn.c_proj` and the MLP output `mlp.c_proj`) get a standard deviation
# smaller by $1/\sqrt{2L}$, where $2L$ is the number of residual branches. This follows the
# GPT-2 paper, which scales "the weights of residual layers at initialization by a factor of
# $1/\sqrt{N}$ where $N$ is the number of residual layers" {cite:p}`radford2019language`
# (its released code, written for inference, initialises every linear layer at 0.02).
#
# Why? Because the stream is a sum. After $L$ blocks
# $h^{(L)} = h^{(0)} + \sum_{k=1}^{2L} f_k$, where $f_k$ is the output of the $k$-th branch.
# Every branch reads a *normalised* input, so at initialisation its output has about the same
# variance $\sigma_f^2$ in every block, proportional to the variance of its output projection.
# If the branch outputs are roughly uncorrelated with each other and with the stream,
#
# $$
# \operatorname{Var}\big(h^{(L)}\big) \approx \operatorname{Var}\big(h^{(0)}\big) + 2L\,\sigma_f^2 .
# $$ (eq-stream-var)
#
# The added variance grows linearly with depth: a deep network starts with a stream dominated
# by the random branches rather than by the token embeddings, and its last blocks have little
# relative influence. Scaling the output projections' standard deviation by $1/\sqrt{2L}$
# scales $\sigma_f^2$ by $1/(2L)$, so the added variance, $2L \cdot \sigma_f^2/(2L)$, no longer
# depends on $L$. We measure it: for models of growing depth we record the variance of the
# stream after every block, once with the library's initialisation and once with the residual
# projections re-drawn from $\mathcal{N}(0, 0.02^2)$.

# %%
def stream_variances(n_layer: int, scaled: bool, seed: int = 0) -> list[float]:
    """Variance of the residual stream after the embeddings and after each block, at init."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, block_size=64, n_layer=n_layer, n_head=4, n_embd=C)
    net = GPT(cfg).eval()
    if not scaled:
        for name, p in net.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02)
    out = []
    hooks = [net.drop.register_forward_hook(lambda m, i, o: out.append(o.var().item()))]
    hooks += [
        blk.register_forward_hook(lambda m, i, o: out.append(o.var().item()))
        for blk in net.blocks
    ]
    windows, _ = random_windows(ids, 64, 16, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        net(windows)
    for hk in hooks:
        hk.remove()
    return out


depths = pick(smoke=[2, 4], book=[2, 4, 8, 16, 32])
added = {True: [], False: []}
for n_layer in depths:
    for scaled in (True, False):
        v = stream_variances(n_layer, scaled)
        added[scaled].append(v[-1] - v[0])
deep = {s: stream_variances(depths[-1], s) for s in (True, False)}

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for scaled, style in ((False, "o--"), (True, "o-")):
    label = "scaled by $1/\\sqrt{2L}$" if scaled else "all $\\mathcal{N}(0, 0.02^2)$"
    axes[0].plot(range(len(deep[scaled])), deep[scaled], style, ms=3, label=label)
    axes[1].plot(depths, added[scaled], style, label=label)
axes[0].set(xlabel="block", ylabel="variance of the residual stream",
            title=f"L = {depths[-1]}, after each block")
axes[1].set(xlabel="depth L", ylabel="variance added by the blocks", xscale="log",
            yscale="log", title="added variance vs depth")
axes[1].minorticks_off()
axes[1].set_xticks(depths, [str(d) for d in depths])
for ax in axes:
    ax.legend()
fig.tight_layout()
plt.show()

growth_plain = added[False][-1] / added[False][0]
growth_scaled = added[True][-1] / added[True][0]
glue("s4_2_depth_ratio", depths[-1] // depths[0])
glue("s4_2_growth_plain", growth_plain, ".1f")
glue("s4_2_growth_scaled", growth_scaled, ".2f")
print(f"added variance grows {growth_plain:.1f}x unscaled, {growth_scaled:.2f}x scaled")
# the library really uses std 0.02 / sqrt(2L) for the residual projections
proj = model.blocks[0].mlp.c_proj.weight
assert abs(proj.std().item() - 0.02 / math.sqrt(2 * config.n_layer)) < 0.001
if checks_enabled():
    ratio = depths[-1] / depths[0]
    assert growth_plain > ratio  # at least linear in L
    assert 0.5 < growth_scaled < 2.0  # about independent of L

# %% [markdown]
# Going from $L = 2$ to $L = 32$ blocks ({glue}`s4_2_depth_ratio` times deeper), the variance
# that the blocks add to the stream grows {glue}`s4_2_growth_plain`-fold with plain
# $\mathcal{N}(0, 0.02^2)$ projections, at least in proportion to depth as {eq}`eq-stream-var`
# predicts (a little faster, because the branches' outputs are not exactly uncorrelated), and
# changes by a factor of only {glue}`s4_2_growth_scaled` with GPT-2's scaled ones. (The
# embeddings' own variance, $2 \cdot 0.02^2$, is the first point of the left panel.)
#
# ## The loss at initialisation
#
# Before any training, what loss should the model have? The **cross-entropy** of a prediction
# $p$ for the true next token $y$ is $-\ln p_y$. A model that knows nothing should spread its
# probability evenly, $p_v = 1/V$, and then the loss is exactly $\ln V$. Our model is close to
# that: the final norm gives each component of $\operatorname{LN}_f(h)$ about unit variance, so
# a logit $z_v = \operatorname{LN}_f(h) \cdot E_v$, a sum of $C$ products with $E_v$'s entries of
# standard deviation $0.02$, has standard deviation about $s = 0.02\sqrt{C}$. For logits that
# are independent $\mathcal{N}(0, s^2)$, a second-order expansion of the log-sum-exp gives
#
# $$
# \mathbb{E}[\text{loss}] = \mathbb{E}\Big[\ln \sum_v e^{z_v}\Big] - \mathbb{E}[z_y]
# \approx \ln\big(V\, \mathbb{E}[e^{z}]\big) - 0 = \ln V + \frac{s^2}{2} ,
# $$ (eq-init-loss)
#
# just above $\ln V$. Checking this number is the first thing to do with any new language model:
# a much larger initial loss means the model starts out confidently wrong (its logits are too
# large), and the first hundreds of steps are wasted on shrinking them.

# %%
with torch.no_grad():
    xb, yb = random_windows(ids, config.block_size, 64, torch.Generator().manual_seed(1))
    logits, loss_text = model(xb, yb)
    rand = torch.randint(0, V, (64, config.block_size + 1), generator=torch.Generator().manual_seed(2))
    _, loss_rand = model(rand[:, :-1], rand[:, 1:])
s = logits.std().item()
predicted = math.log(V) + s**2 / 2
print(f"ln V = {math.log(V):.4f}, predicted {predicted:.4f}, "
      f"loss on KJV text {loss_text.item():.4f}, on random ids {loss_rand.item():.4f}")
assert abs(loss_text.item() - math.log(V)) < 0.1
assert abs(loss_rand.item() - predicted) < 0.05

# the same model with PyTorch's default embedding init, N(0, 1): confidently wrong
bad = GPT(config).eval()
nn.init.normal_(bad.wte.weight, std=1.0)
with torch.no_grad():
    _, loss_bad = bad(xb, yb)
assert loss_bad.item() > math.log(V) + 1.0
glue("s4_2_lnV", math.log(V), ".3f")
glue("s4_2_init_loss", loss_text.item(), ".3f")
glue("s4_2_logit_std", s, ".3f")
glue("s4_2_pred_loss", predicted, ".3f")
glue("s4_2_bad_loss", loss_bad.item(), ".1f")

# %% [markdown]
# With $V = 63$ characters, $\ln V =$ {glue}`s4_2_lnV`; the untrained model's loss on Bible text
# is {glue}`s4_2_init_loss`. Its logits have standard deviation {glue}`s4_2_logit_std`, for
# which {eq}`eq-init-loss` predicts {glue}`s4_2_pred_loss`. The same model with the token
# table drawn from $\mathcal{N}(0, 1)$, PyTorch's default for `nn.Embedding`, starts at a loss
# of {glue}`s4_2_bad_loss`: its tied head produces logits fifty times larger. This is one more
# reason for the small GPT-2 scale.
#
# ## Bad input
#
# A GPT has a learned position table of `block_size` rows, so it cannot read longer
# sequences; and its embedding has $V$ rows, so every id must lie in $[0, V)$. PyTorch alone
# would fail deep inside `nn.Embedding` with an index error (or, on a GPU, an asynchronous
# device-side assert). The library checks the input first and says what was expected.
# `generate`, which is meant to run past the context, documents a different policy: it
# **truncates**, feeding the model only the last `block_size` tokens at every step.

# %%
too_long = torch.zeros(1, config.block_size + 1, dtype=torch.long)
msg_long = error_message(lambda: model(too_long))
msg_range = error_message(lambda: model(torch.tensor([[0, 5, V]])))
msg_negative = error_message(lambda: model(torch.tensor([[-1, 5]])))
msg_float = error_message(lambda: model(torch.zeros(1, 4)))
for msg in (msg_long, msg_range, msg_negative, msg_float):
    print("ValueError:", msg)
assert "exceeds block_size" in msg_long and f"[0, {V})" in msg_range

out = model.generate(too_long, max_new_tokens=3, generator=torch.Generator().manual_seed(0))
assert out.shape == (1, config.block_size + 4)  # generate crops its context instead
assert torch.equal(out[:, : config.block_size + 1], too_long)

# %% [markdown]
# ## Summary
#
# * A GPT is token and position embeddings, a stack of causal pre-norm blocks that add to a
#   residual stream, a final norm and a linear head; it predicts the next token at every
#   position in one pass. Every block keeps the shape $(B, T, C)$; only the head maps to $V$.
# * Weight tying uses the token table $E$ as the output matrix: it saves $VC$ parameters,
#   {glue}`s4_2_gpt2_saving` of an untied GPT-2 small. The parameter count of the library's model equals Part 3's formula.
# * The GPT-2-style initialisation draws weights from $\mathcal{N}(0, 0.02^2)$ (GPT-1's value)
#   and shrinks the residual projections by $1/\sqrt{2L}$ (the GPT-2 paper's rule); without
#   that the variance the blocks add to the stream grows at least linearly with depth, with it
#   the variance hardly depends on depth.
# * An untrained GPT should have a loss of about $\ln V$; a much larger one signals logits that
#   are too large.
# * The model rejects sequences longer than its context and ids outside the vocabulary with a
#   `ValueError`; `generate` crops its context to the last `block_size` tokens.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-4-2-1
# ```
# GPT-2 medium has $L = 24$, $C = 1024$, $V = 50\,257$ and a context of 1024 tokens. Compute
# its parameter count with {eq}`eq-gpt-params` and the fraction spent on the token table.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-2-1
# :class: dropdown
# ```
# $L(12C^2 + 13C) = 24\,(12 \cdot 1024^2 + 13 \cdot 1024) \approx 302.3$ M for the blocks,
# $VC \approx 51.5$ M for the token table and $1024 \cdot 1024 \approx 1.0$ M for positions:
# about 355 M in all, of which the token table is about 15 %, against 31 % for GPT-2 small
# (the code checks both fractions).
# Width grows the blocks quadratically but the table only linearly.

# %%
medium = GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024)
n_medium = gpt_params(medium)
by_formula = 50257 * 1024 + 1024 * 1024 + 24 * (12 * 1024**2 + 13 * 1024) + 2 * 1024
assert n_medium == by_formula
print(f"{n_medium:,} parameters, token table {50257 * 1024 / n_medium:.1%}")
assert 0.14 < 50257 * 1024 / n_medium < 0.15
assert 0.30 < 50257 * 768 / gpt_params(gpt2) < 0.32  # GPT-2 small

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-2-2
# ```
# Check causality numerically: change the token at position $t = 10$ of an input and show that
# the logits at positions $0..9$ do not change, while those at position 10 and later do.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-2-2
# :class: dropdown
# ```
# Because every attention layer masks the future, no information flows from position 10 to an
# earlier one; the logits before it are identical (up to floating-point noise).

# %%
a = x[:1].clone()
b = a.clone()
b[0, 10] = (b[0, 10] + 1) % V
with torch.no_grad():
    la, _ = model(a)
    lb, _ = model(b)
assert torch.allclose(la[:, :10], lb[:, :10], atol=1e-6)
assert not torch.allclose(la[:, 10:], lb[:, 10:], atol=1e-3)
print("max change before t=10:", (la[:, :10] - lb[:, :10]).abs().max().item())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-2-3
# ```
# Untie the head: give a copy of the model its own output matrix (a new `nn.Parameter`
# initialised from $\mathcal{N}(0, 0.02^2)$). Check that the parameter count grows by exactly
# `gpt_params(config, tied=False) - gpt_params(config)` and that the initial loss is still
# about $\ln V$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-2-3
# :class: dropdown
# ```
# The new head adds a $(V, C)$ matrix. Its logits are again sums of $C$ unit-variance terms
# times $0.02$, so the logit scale $s$ and with it the initial loss stay about the same.

# %%
untied = GPT(config).eval()
untied.lm_head.weight = nn.Parameter(torch.randn(V, C) * 0.02)
extra = sum(p.numel() for p in untied.parameters()) - gpt_params(config)
assert extra == gpt_params(config, tied=False) - gpt_params(config) == V * C
with torch.no_grad():
    _, loss_untied = untied(xb, yb)
print(f"untied initial loss {loss_untied.item():.4f} vs ln V {math.log(V):.4f}")
assert abs(loss_untied.item() - math.log(V)) < 0.1

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-2-4
# ```
# Use {eq}`eq-init-loss` to predict the initial loss when the token table is drawn from
# $\mathcal{N}(0, \sigma^2)$ for $\sigma \in \{0.01, 0.02, 0.05\}$, and compare with the
# measured loss on random ids. Where does the approximation start to fail?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-2-4
# :class: dropdown
# ```
# The logit scale is $s \approx \sigma\sqrt{C}$ and the prediction $\ln V + s^2/2$. It is good
# while $s$ is well below one; as $s$ grows the expansion of the log-sum-exp needs higher
# terms and the tied "self-logit" grows with $\sigma$ too, so the measured loss drifts away.

# %%
for sigma in (0.01, 0.02, 0.05):
    net = GPT(config).eval()
    nn.init.normal_(net.wte.weight, std=sigma)
    with torch.no_grad():
        lg, lo = net(rand[:, :-1], rand[:, 1:])
    pred = math.log(V) + lg.std().item() ** 2 / 2
    print(f"sigma={sigma}: logit std {lg.std().item():.3f}, predicted {pred:.4f}, measured {lo.item():.4f}")
    if sigma <= 0.02:
        assert abs(pred - lo.item()) < 0.05

# %% [markdown]
# ```{solution-end}
# ```
