# %% [markdown]
# # Depth, width and trainable parameters per layer type
#
# The number of trainable parameters is the first number anyone quotes about a model, and for
# good reasons. It fixes the memory the weights take (4 bytes each in float32, so a model of
# $N$ parameters needs $4N$ bytes before it has seen a single input, and about four times that
# while training with Adam), it fixes most of the compute (a forward pass of a Transformer costs
# about $2N$ floating-point operations per token), and the scaling laws of language models are
# written in terms of it {cite:p}`kaplan2020scaling,hoffmann2022training`. An engineer should
# be able to count the parameters of any layer on the back of an envelope, know where the
# parameters of a large model live, and know what a given budget of parameters buys when it is
# spent on more layers or on wider ones.
#
# This section derives a closed-form count for every layer type of the book, asserts each
# formula against PyTorch over grids of configurations, counts a whole GPT (GPT-2 small comes
# out at the famous 124 M), puts the FLOPs per token next to the parameters, plots where the
# parameters of GPT-style models live as they grow, and ends with an experiment that spends
# the same parameter budget on shallow-and-wide and on deep-and-narrow networks.

# %%
import itertools
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.bench import flops_per_token, matmul_params
from dlbook.book import glue
from dlbook.counting import (
    attention_params,
    conv2d_params,
    embedding_params,
    gpt_params,
    linear_params,
    mlp_params,
    norm_params,
    param_breakdown,
    rnn_params,
    swiglu_hidden,
    transformer_block_params,
)
from dlbook.data.digits import load_digits
from dlbook.nn.attention import MultiHeadAttention
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.nn.mlp import MLP, MLPConfig
from dlbook.nn.transformer import RMSNorm, TransformerBlock
from dlbook.train import Trainer, accuracy

seed_everything(0)
device = get_device()
print("device:", device)


def count(module: nn.Module) -> int:
    """Trainable parameters as PyTorch sees them (a shared tensor is listed once)."""
    return sum(p.numel() for p in module.parameters())


# %% [markdown]
# ## Depth and width
#
# A network is a graph of layers from its input to its output. Its **depth** is the number of
# layers with parameters on the *longest* path from input to output; its **width** is the number
# of units a layer produces: features for a fully connected layer, channels for a convolution,
# the model width $C$ (`n_embd`) for a Transformer. An MLP with hidden widths $[128, 64]$ has
# depth 3 (three linear layers; activations have no parameters and are not counted) and widths
# 128 and 64. By convention a Transformer's depth is its number of blocks, `n_layer`, although
# each block holds several linear layers in a row. Residual connections
# {cite:p}`he2016deep` make the distinction matter: they add a *short* path around every block,
# so a 48-block Transformer has paths of every length from 0 to 48 blocks, and "depth" is the
# length of the longest one.
#
# Depth and width do not cost the same. A linear layer from width $w$ to width $w$ has $w^2 + w$
# parameters, so doubling the width of every layer multiplies the count by about four, while
# doubling the depth only doubles it. Counting is the tool that lets us compare the two at an
# equal budget, which we do at the end of the section.
#
# ## Counting rules for the basic layers
#
# Every layer of the book stores its parameters as weight matrices (or tensors) and bias
# vectors, so every count is a sum of products of shapes. We write $b \in \{0, 1\}$ for
# "the layer has biases".
#
# **Linear.** `nn.Linear(d_in, d_out)` computes $y = Wx + \beta$ with $W \in \mathbb{R}^{d_{out}
# \times d_{in}}$ and $\beta \in \mathbb{R}^{d_{out}}$:
#
# $$
# N_{\text{linear}} = d_{out}\, d_{in} + b\, d_{out}.
# $$
#
# **Convolution.** `nn.Conv2d(C_in, C_out, (k_h, k_w), groups=g)` splits the input channels into
# $g$ groups and each output channel sees only the $C_{in}/g$ channels of its group through a
# $k_h \times k_w$ window (section {doc}`01_convolutions`). Every output channel has one kernel
# of shape $(C_{in}/g) \times k_h \times k_w$ and one bias:
#
# $$
# N_{\text{conv}} = C_{out}\,\frac{C_{in}}{g}\,k_h k_w + b\, C_{out}.
# $$ (eq-conv-count)
#
# The count depends neither on the image size nor on stride and padding: the same kernel
# slides over every position. A *depthwise* convolution ($g = C_{in} = C_{out}$) has only
# $C\,k_h k_w + bC$ parameters.
#
# **Embedding.** `nn.Embedding(V, C)` is a table with one row of $C$ numbers per token:
# $N_{\text{emb}} = VC$.
#
# The library's counters implement these formulas:
#
# ```{literalinclude} ../../dlbook/counting.py
# :pyobject: conv2d_params
# ```
#
# A formula is only as good as its check. The next cell compares each counter with
# `sum(p.numel() for p in module.parameters())` over grids of shapes, with and without biases,
# for every valid number of groups:

# %%
checked = 0
for d_in, d_out, bias in itertools.product([1, 3, 17, 64], [1, 5, 32], [True, False]):
    assert linear_params(d_in, d_out, bias) == count(nn.Linear(d_in, d_out, bias=bias))
    checked += 1
for cin, cout, k, bias in itertools.product([1, 2, 4, 6, 12], [2, 4, 6, 12], [(1, 1), (3, 3), (5, 3)], [True, False]):
    for g in (g for g in range(1, min(cin, cout) + 1) if cin % g == 0 and cout % g == 0):
        conv = nn.Conv2d(cin, cout, k, groups=g, bias=bias)
        assert conv2d_params(cin, cout, k, groups=g, bias=bias) == count(conv)
        checked += 1
for v, c in itertools.product([1, 10, 256, 1000], [1, 8, 64]):
    assert embedding_params(v, c) == count(nn.Embedding(v, c))
    checked += 1
print(f"{checked} linear, convolution and embedding layers: formula == numel")

# a 3x3 convolution of 64 -> 64 channels, standard vs depthwise
conv_std = conv2d_params(64, 64, 3)
conv_dw = conv2d_params(64, 64, 3, groups=64)
glue("s3_6_conv_std", conv_std, ",")
glue("s3_6_conv_dw", conv_dw, ",")

# %% [markdown]
# A standard $3 \times 3$ convolution from 64 to 64 channels has {glue}`s3_6_conv_std`
# parameters; its depthwise version has {glue}`s3_6_conv_dw`, because each channel keeps only
# its own nine weights and bias.
#
# ## Recurrent layers
#
# An Elman RNN, a GRU {cite:p}`cho2014learning` and an LSTM {cite:p}`hochreiter1997long` (section
# {doc}`03_rnns`) differ in their number of *gates* $G$: 1 for the RNN (the candidate state
# itself), 3 for the GRU (reset, update, candidate) and 4 for the LSTM (input, forget, cell,
# output). Each gate of a layer with input size $D$ and hidden size $H$ has an input matrix
# $H \times D$, a recurrent matrix $H \times H$, and, in PyTorch, **two** bias vectors, `b_ih`
# and `b_hh`; mathematically one would do, but PyTorch keeps both (cuDNN's layout), and they
# count. Layer $l$ of a stack reads the states of layer $l - 1$, so its input size is $H$, or
# $2H$ when the stack is bidirectional ($s = 2$ directions, each with its own weights):
#
# $$
# N_{\text{rnn}} = s \sum_{l=1}^{L} \big(G H (D_l + H) + 2 b\, G H\big),
# \qquad D_1 = D,\; D_{l > 1} = sH.
# $$ (eq-rnn-count)

# %%
cells = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
checked = 0
for kind, d, h, layers, bias, bi in itertools.product(
    cells, [1, 7, 32], [1, 5, 16], [1, 2, 3], [True, False], [False, True]
):
    module = cells[kind](d, h, num_layers=layers, bias=bias, bidirectional=bi)
    assert rnn_params(kind, d, h, layers, bias, bi) == count(module)
    checked += 1
print(f"{checked} recurrent layers: formula == numel")
# the second bias vector is not free: an LSTM of width 512 pays 2 * 4 * 512 for it
lstm_bias = rnn_params("lstm", 256, 512) - rnn_params("lstm", 256, 512, bias=False)
assert lstm_bias == 2 * 4 * 512
glue("s3_6_lstm_count", rnn_params("lstm", 256, 512), ",")
glue("s3_6_lstm_bias", lstm_bias, ",")

# %% [markdown]
# An LSTM with input 256 and hidden size 512 has {glue}`s3_6_lstm_count` parameters, of which
# {glue}`s3_6_lstm_bias` are biases.
#
# ## Attention
#
# Multi-head self-attention on width $C$ (section {doc}`04_attention`) projects the input to
# queries, keys and values with three $C \times C$ matrices and mixes the heads' outputs with a
# fourth; each projection has a bias of size $C$. The heads split the width among themselves
# (head $i$ uses rows $iD, \dots, (i+1)D - 1$ of each projection, $D = C/H$), so **the number
# of heads does not change the count**:
#
# $$
# N_{\text{attn}} = 4C^2 + 4bC.
# $$ (eq-attn-count)
#
# `nn.MultiheadAttention` stores the three input projections as one `in_proj_weight` of shape
# $(3C, C)$, and so does the library's `MultiHeadAttention` (its `c_attn`). When keys and values
# come from a sequence of another width ($d_k$, $d_v$, e.g. cross-attention to an encoder),
# PyTorch stores three separate matrices and the count becomes $C(C + d_k + d_v) + C^2 + 4bC$.

# %%
checked = 0
for heads, head_dim, bias in itertools.product([1, 2, 4, 8], [2, 8, 16], [True, False]):
    c = heads * head_dim
    assert attention_params(c, bias) == count(nn.MultiheadAttention(c, heads, bias=bias))
    assert attention_params(c, bias) == count(MultiHeadAttention(c, heads, bias=bias))
    for kdim, vdim in [(3, 5), (c, 2 * c)]:
        mha = nn.MultiheadAttention(c, heads, bias=bias, kdim=kdim, vdim=vdim)
        assert attention_params(c, bias, kdim, vdim) == count(mha)
    checked += 4
# the head count really does not matter
assert len({count(nn.MultiheadAttention(64, h)) for h in (1, 2, 4, 8, 16, 32, 64)}) == 1
print(f"{checked} attention layers: formula == numel")

# %% [markdown]
# ## Normalisation layers: parameters and buffers
#
# A **parameter** is a tensor that the optimizer updates; a **buffer** is state that the module
# carries (and saves in its `state_dict`) but that gradient descent does not touch. Layer norm
# {cite:p}`ba2016layer` over $C$ features has a gain and a bias, $2C$ parameters ($C$ with
# `bias=False`). Batch norm {cite:p}`ioffe2015batch` over $C$ channels has the same $2C$
# parameters, plus running estimates of the mean and variance of every channel and a counter of
# batches seen: $2C + 1$ numbers that are *buffers*, updated by averaging in `forward`, not by
# the optimizer. RMSNorm {cite:p}`zhang2019root` keeps a gain only, $C$ parameters:
#
# $$
# N_{\text{LN}} = C + bC, \qquad N_{\text{BN}} = 2C \;(+\,2C + 1 \text{ buffers}),
# \qquad N_{\text{RMS}} = C.
# $$

# %%
checked = 0
for dim, affine, bias in itertools.product([1, 3, 64, 768], [True, False], [True, False]):
    assert norm_params("layer", dim, affine, bias) == count(nn.LayerNorm(dim, elementwise_affine=affine, bias=bias))
    for bn in (nn.BatchNorm1d(dim, affine=affine), nn.BatchNorm2d(dim, affine=affine)):
        assert norm_params("batch", dim, affine) == count(bn)
        assert sum(b.numel() for b in bn.buffers()) == 2 * dim + 1  # mean, var, num_batches_tracked
    assert norm_params("rms", dim) == count(RMSNorm(dim)) == count(nn.RMSNorm(dim))
    checked += 4
bn = nn.BatchNorm2d(64)
print(f"{checked} norm layers: formula == numel")
print("BatchNorm2d(64) parameters:", [n for n, _ in bn.named_parameters()], "buffers:", [n for n, _ in bn.named_buffers()])

# %% [markdown]
# ## A Transformer block
#
# The pre-norm block of the library (`dlbook.nn.transformer.TransformerBlock`) and of GPT-2 {cite:p}`radford2019language`
# is two norms, an attention layer and a feed-forward network (MLP) of hidden width $h$. The
# classic MLP is two linear layers $C \to h \to C$ with a GELU between them and $h = 4C$
# {cite:p}`vaswani2017attention`; the gated SwiGLU variant {cite:p}`shazeer2020glu` has *three*
# matrices (gate, up, down), so to keep the count of the GELU MLP its width is cut to
# $h \approx \tfrac{2}{3} \cdot 4C = \tfrac{8}{3} C$ (the library rounds it up to a multiple of 8).
# Adding up the pieces,
#
# $$
# N_{\text{block}} = \underbrace{4C^2 + 4bC}_{\text{attention}}
# + \underbrace{2Ch + b(h + C)}_{\text{GELU MLP}}\ \text{or}\ \underbrace{3Ch + b(2h + C)}_{\text{SwiGLU}}
# + \underbrace{2(C + bC)}_{\text{two LayerNorms}}\ \text{or}\ \underbrace{2C}_{\text{two RMSNorms}},
# $$ (eq-block-count)
#
# and for GPT-2's block (GELU, $h = 4C$, LayerNorm, biases) this is
# $4C^2 + 4C + 8C^2 + 5C + 4C = 12C^2 + 13C$. The $12C^2$ is worth remembering: **a Transformer
# block has about $12C^2$ parameters**, one third in attention and two thirds in the MLP.

# %%
checked = 0
for heads, head_dim, mlp, norm, bias in itertools.product([1, 2, 4], [2, 6, 16], ["gelu", "swiglu"], ["layer", "rms"], [True, False]):
    c = heads * head_dim
    block = TransformerBlock(c, heads, causal=True, mlp=mlp, norm=norm, bias=bias)
    assert transformer_block_params(c, mlp, norm, bias) == count(block)
    checked += 1
for c in (64, 768, 1600):
    assert transformer_block_params(c) == 12 * c**2 + 13 * c
print(f"{checked} Transformer blocks: formula == numel")
c = 768
gelu_block, swiglu_block = transformer_block_params(c, "gelu"), transformer_block_params(c, "swiglu")
glue("s3_6_swiglu_h", swiglu_hidden(c), ",")
glue("s3_6_block_gelu", gelu_block, ",")
glue("s3_6_block_swiglu", swiglu_block, ",")
assert abs(swiglu_block / gelu_block - 1) < 0.01

# %% [markdown]
# At $C = 768$ the GELU block has {glue}`s3_6_block_gelu` parameters; the SwiGLU block, with
# $h =$ {glue}`s3_6_swiglu_h`, has {glue}`s3_6_block_swiglu`, within 1 % of it.
#
# ## A whole GPT
#
# The GPT of the library (nanoGPT-style) adds a token embedding $V \times C$, a learned position
# table $T \times C$ (absent with rotary embeddings, RoPE {cite:p}`su2024roformer`, which rotate
# queries and keys by fixed angles and have no parameters), $L$ blocks, a final norm and an
# output layer $C \to V$ without bias. The output layer usually *shares* its weight with the
# token embedding (weight tying): the same $(V, C)$ matrix maps tokens to vectors and vectors to
# logits, so it is counted once. Without tying it adds another $VC$:
#
# $$
# N_{\text{GPT}} = VC + [\text{learned positions}]\,TC + L\,N_{\text{block}}(C)
# + (C + bC) + [\text{untied}]\,VC.
# $$ (eq-gpt-count)
#
# ```{literalinclude} ../../dlbook/counting.py
# :pyobject: gpt_params
# ```
#
# The grid below builds GPTs with every combination of options and compares. To check the
# untied count we untie a built model by giving its output layer its own copy of the matrix.

# %%
checked = 0
for n_layer, n_head, vocab, block, rope, norm, mlp in itertools.product(
    [1, 3], [2, 4], [7, 256], [8, 64], [False, True], ["layer", "rms"], ["gelu", "swiglu"]
):
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=8 * n_head, rope=rope, norm=norm, mlp=mlp)
    model = GPT(cfg)
    assert gpt_params(cfg) == count(model)
    assert sum(param_breakdown(model).values()) == count(model)
    model.lm_head.weight = nn.Parameter(model.wte.weight.detach().clone())  # untie
    assert gpt_params(cfg, tied=False) == count(model)
    checked += 1
print(f"{checked} GPTs: formula == numel (tied and untied)")

# %% [markdown]
# GPT-2 small has $L = 12$ blocks of width $C = 768$, a vocabulary of $V = 50\,257$ byte-level
# BPE tokens and a context of $T = 1024$ {cite:p}`radford2019language`. By the GPT count
# above, $VC + TC + 12(12C^2 + 13C) + 2C$. We evaluate the formula, and also build
# the model on PyTorch's `meta` device, which records shapes without allocating memory, so even
# GPT-2 XL can be "built" and counted in a fraction of a second:

# %%
GPT2 = {  # name: (n_layer, n_head, n_embd), vocabulary 50,257, context 1024
    "GPT-2 small": (12, 12, 768),
    "GPT-2 medium": (24, 16, 1024),
    "GPT-2 large": (36, 20, 1280),
    "GPT-2 XL": (48, 25, 1600),
}


def gpt2_config(n_layer, n_head, n_embd, vocab_size=50257, block_size=1024):
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


V, T, C, L = 50257, 1024, 768, 12
by_hand = V * C + T * C + L * (12 * C**2 + 13 * C) + 2 * C
small = gpt2_config(*GPT2["GPT-2 small"])
with torch.device("meta"):
    gpt2_small = GPT(small)
assert by_hand == gpt_params(small) == count(gpt2_small) == 124_439_808
glue("s3_6_gpt2_small", count(gpt2_small), ",")
glue("s3_6_gpt2_small_untied", gpt_params(small, tied=False), ",")
glue("s3_6_gpt2_small_m", count(gpt2_small) / 1e6, ".1f")

rows = []
for name, (n_layer, n_head, n_embd) in GPT2.items():
    cfg = gpt2_config(n_layer, n_head, n_embd)
    with torch.device("meta"):
        m = GPT(cfg)
    n = count(m)
    assert n == gpt_params(cfg)
    n_matmul = matmul_params(m)  # all but the position table
    f_train = flops_per_token(cfg, n_matmul, training=True)
    attn_share = 12 * n_layer * cfg.block_size * n_embd / f_train
    rows.append((name, n, n_matmul, f_train, attn_share))
    print(f"{name:13s} {n / 1e6:8.1f} M params   {f_train / 1e9:6.2f} GFLOP per trained token   "
          f"6N = {6 * n_matmul / 1e9:6.2f} G   attention scores: {attn_share:.1%}")
glue("s3_6_xl_params_b", rows[-1][1] / 1e9, ".2f")
glue("s3_6_small_gflop", rows[0][3] / 1e9, ".2f")
glue("s3_6_small_attn_share", rows[0][4], ".1%")
glue("s3_6_xl_attn_share", rows[-1][4], ".1%")

# %% [markdown]
# The formula, the hand computation and the model agree: GPT-2 small has
# {glue}`s3_6_gpt2_small` parameters with tied embeddings ({glue}`s3_6_gpt2_small_m` M, the
# "124M" of its name), and would have {glue}`s3_6_gpt2_small_untied` with a separate output
# matrix. GPT-2 XL has {glue}`s3_6_xl_params_b` billion. (Implementations that pad the
# vocabulary to 50,304, a multiple of 64, for faster matrix products, report slightly more.)
#
# ### FLOPs per token
#
# Parameters are also a measure of compute. In a forward pass every weight used in a matrix
# product takes part in one multiply and one add per token, $2N$ FLOPs; attention adds, per
# layer, $2TC$ FLOPs for the scores of one query against $T$ keys and $2TC$ for the weighted
# sum of values; and training (forward and backward) costs about three times the forward pass
# {cite:p}`kaplan2020scaling`:
#
# $$
# F_{\text{train}} \approx 6N + 12\,L\,T\,C \quad \text{FLOPs per token.}
# $$
#
# Here $N$ excludes the position table (a lookup, not a product), and a tied embedding counts
# once, as the output layer. The library's `dlbook.bench.flops_per_token` computes it (section
# {doc}`../04_pretraining/05_efficiency` uses it to measure hardware utilisation). Training
# GPT-2 small costs {glue}`s3_6_small_gflop` GFLOP per token, of which the attention scores are
# only {glue}`s3_6_small_attn_share` at a context of 1024; for GPT-2 XL the share is
# {glue}`s3_6_xl_attn_share`. For these shapes "compute $\approx 6 \times$ parameters $\times$
# tokens" is a good rule.
#
# ## Where the parameters live
#
# The GPT count says that the embedding grows like $VC$ and the blocks like $12LC^2$. In a
# small model with a large vocabulary the embedding dominates; as width and depth grow, the
# blocks take over. We count the parts of GPT-style models (vocabulary 50,257, context 1024)
# from a toy of two layers of width 128 up to GPT-2 XL:

# %%
ladder = {  # name: (n_layer, n_head, n_embd)
    "2×128": (2, 2, 128),
    "4×256": (4, 4, 256),
    "6×384": (6, 6, 384),
    "8×512": (8, 8, 512),
    **{name.replace("GPT-2 ", ""): shape for name, shape in GPT2.items()},
}
parts = {}
for name, (n_layer, n_head, n_embd) in ladder.items():
    cfg = gpt2_config(n_layer, n_head, n_embd)
    with torch.device("meta"):
        m = GPT(cfg)
    parts[name] = param_breakdown(m)
    assert sum(parts[name].values()) == count(m) == gpt_params(cfg)
    assert parts[name]["head"] == 0  # tied: the head is the token table

kinds = ["token embedding", "position embedding", "attention", "mlp", "norms"]
totals = np.array([sum(p.values()) for p in parts.values()], dtype=float)
shares = {k: np.array([p[k] for p in parts.values()]) / totals for k in kinds}
emb_share = shares["token embedding"]
assert np.all(np.diff(emb_share) < 0), "the embedding share should fall as the model grows"
glue("s3_6_emb_share_tiny", emb_share[0], ".0%")
glue("s3_6_emb_share_small", emb_share[4], ".0%")
glue("s3_6_emb_share_xl", emb_share[-1], ".0%")
glue("s3_6_mlp_share_xl", shares["mlp"][-1], ".0%")
glue("s3_6_norm_share_xl", shares["norms"][-1], ".2%")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
bottom = np.zeros(len(parts))
for k in kinds:
    ax1.bar(list(parts), shares[k], bottom=bottom, label=k)
    bottom += shares[k]
ax1.set(ylabel="share of parameters", title="Where the parameters of a GPT live")
ax1.tick_params(axis="x", rotation=45)
ax1.legend(fontsize=8, loc="lower right")
ax2.loglog(totals, totals * emb_share, "o-", label="token embedding $VC$")
ax2.loglog(totals, totals * (shares["attention"] + shares["mlp"]), "s-", label="blocks $\\approx 12LC^2$")
for name, x, y in zip(parts, totals, totals * emb_share, strict=True):
    ax2.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
ax2.set(xlabel="total parameters", ylabel="parameters", title="Embedding vs blocks")
ax2.grid(alpha=0.3, which="both")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The token embedding holds {glue}`s3_6_emb_share_tiny` of the toy model, still
# {glue}`s3_6_emb_share_small` of GPT-2 small, and only {glue}`s3_6_emb_share_xl` of GPT-2 XL,
# where the MLPs hold {glue}`s3_6_mlp_share_xl` and the norms a negligible
# {glue}`s3_6_norm_share_xl`. This is why scaling-law papers count "non-embedding" parameters
# {cite:p}`kaplan2020scaling`: for small models the embedding inflates the count without adding
# much compute per token, since looking up a row costs nothing.
#
# ## Spending a budget: depth or width?
#
# Which is better, for a fixed number of parameters: a few wide layers or many narrow ones?
# Theory gives partial answers: one hidden layer suffices to approximate any continuous function
# if it is wide enough {cite:p}`cybenko1989approximation,hornik1989multilayer`, but some
# functions that a deeper network computes with few units need exponentially many units in a
# shallower one {cite:p}`eldan2016power`. Practice adds optimisation: deep plain networks
# (without residual connections or normalisation) are harder to train.
#
# We run the experiment on the digits (8×8 images, 10 classes, section {doc}`../01_basics/03_mlp`)
# with the library's `MLP`. For depth $d$ (linear layers) and a common hidden width $w$, the
# count is
#
# $$
# N(d, w) = (64 + 1)w + (d - 2)(w^2 + w) + (10w + 10),
# $$
#
# a quadratic in $w$; for each depth we pick the integer width whose count is closest to the
# budget, train with AdamW for the same number of epochs and report the validation accuracy
# over several seeds.

# %%
budget = 16_000
depths = [2, 3, 4, 6, 8, 10]


def width_for_budget(depth, budget, d_in=64, d_out=10):
    """Integer hidden width w whose MLP of `depth` linear layers is closest to `budget`."""
    a, b, c = depth - 2, d_in + 1 + (depth - 2) + d_out, d_out - budget
    w = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return min((max(1, math.floor(w)), math.ceil(w)), key=lambda w: abs(mlp_params(d_in, [w] * (depth - 1), d_out) - budget))


widths = {d: width_for_budget(d, budget) for d in depths}
for d, w in widths.items():
    n = count(MLP(MLPConfig(64, [w] * (d - 1), 10)))
    assert n == mlp_params(64, [w] * (d - 1), 10)
    assert abs(n / budget - 1) < 0.02, (d, w, n)
    print(f"depth {d:2d}: width {w:4d}, {n:,} parameters ({n / budget - 1:+.2%} of the budget)")

# %%
splits = load_digits()
epochs = pick(smoke=1, book=30, full=60)
seeds = pick(smoke=[0], book=[0, 1], full=[0, 1, 2, 3, 4])
results = {d: [] for d in depths}  # depth -> list of (val_loss, val_acc)
for d, seed in itertools.product(depths, seeds):
    seed_everything(seed)
    model = MLP(MLPConfig(64, [widths[d]] * (d - 1), 10))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    trainer = Trainer(model, opt, metrics={"accuracy": accuracy}, device=device, seed=seed, progress=False)
    trainer.fit(splits.train, epochs=epochs, batch_size=64)
    ev = trainer.evaluate(splits.val)
    results[d].append((ev["loss"], ev["accuracy"]))
for d in depths:
    acc = [a for _, a in results[d]]
    print(f"depth {d:2d} width {widths[d]:4d}: val accuracy {np.mean(acc):.3f} (min {min(acc):.3f}, max {max(acc):.3f})")

# %%
mean_acc = np.array([np.mean([a for _, a in results[d]]) for d in depths])
mean_loss = np.array([np.mean([lo for lo, _ in results[d]]) for d in depths])
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
for d in depths:
    ax1.scatter([d] * len(results[d]), [a for _, a in results[d]], color="gray", s=12)
    ax2.scatter([d] * len(results[d]), [lo for lo, _ in results[d]], color="gray", s=12)
ax1.plot(depths, mean_acc, "o-", label=f"mean of {len(seeds)} seed(s)")
ax2.plot(depths, mean_loss, "o-")
for d, a in zip(depths, mean_acc, strict=True):
    ax1.annotate(f"w={widths[d]}", (d, a), textcoords="offset points", xytext=(3, 5), fontsize=8)
ax1.set(xlabel="depth (linear layers)", ylabel="validation accuracy", title=f"Digits, {budget:,} parameters each")
ax2.set(xlabel="depth (linear layers)", ylabel="validation loss", title=f"after {epochs} epochs")
ax1.legend(fontsize=8)
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

best = depths[int(np.argmax(mean_acc))]
glue("s3_6_budget", budget, ",")
glue("s3_6_best_depth", best, "d")
glue("s3_6_best_acc", mean_acc.max(), ".3f")
glue("s3_6_deepest_acc", mean_acc[-1], ".3f")
glue("s3_6_shallow_acc", mean_acc[0], ".3f")
glue("s3_6_deepest_width", widths[depths[-1]], "d")
glue("s3_6_shallow_width", widths[depths[0]], "d")
glue("s3_6_deepest_hidden", depths[-1] - 1, "d")
glue("s3_6_n_val", len(splits.val), ",")
glue("s3_6_one_val", 1 / len(splits.val), ".1%")
if checks_enabled():
    # robust facts only: the budget buys a good classifier, and the deepest plain stack does
    # not beat the shallowest one after the same training
    assert mean_acc.max() > 0.9, mean_acc
    assert mean_acc[0] > mean_acc[-1], mean_acc

# %% [markdown]
# With {glue}`s3_6_budget` parameters, the network with one hidden layer of width
# {glue}`s3_6_shallow_width` reaches a mean validation accuracy of {glue}`s3_6_shallow_acc`,
# the best depth is {glue}`s3_6_best_depth` ({glue}`s3_6_best_acc`), and the deepest network,
# whose {glue}`s3_6_deepest_hidden` hidden layers are only {glue}`s3_6_deepest_width` units wide,
# reaches {glue}`s3_6_deepest_acc`. Differences of a percent or less are noise here (the
# validation set has only {glue}`s3_6_n_val` images, so one image is {glue}`s3_6_one_val`).
# What the plot does show is that the same budget
# can be spent in very different shapes, and that a plain stack of many narrow layers, without
# the residual connections and normalisation of the Transformer block, trains worst: after the
# same number of epochs it lags behind the shallowest network (asserted); which of the shallow
# depths comes out best is not asserted, since their gaps are of the size of the noise. Depth
# pays off when the
# architecture makes deep networks easy to optimise; large language models, built that way,
# have been found to depend only weakly on the ratio of width to depth at a fixed non-embedding
# budget over a wide range {cite:p}`kaplan2020scaling`.
#
# ## Summary
#
# * **Depth** is the number of parameterised layers on the longest input-to-output path;
#   **width** is the number of units (features, channels, $C$) of a layer. Width costs
#   quadratically, depth linearly.
# * Every count is a sum of shapes: linear $d_{out} d_{in} + b\,d_{out}$, convolution
#   $C_{out} (C_{in}/g) k_h k_w + b\,C_{out}$, embedding $VC$, recurrent layers
#   $s\sum_l (GH(D_l + H) + 2bGH)$ with PyTorch's two biases per gate, attention $4C^2 + 4bC$
#   whatever the number of heads, norms $2C$ or $C$ (running statistics are buffers).
# * A GPT-2 block has $12C^2 + 13C$ parameters; a GPT adds $VC$ for tokens, $TC$ for learned
#   positions and nothing for a tied output layer. GPT-2 small has exactly 124,439,808.
# * Training costs about $6N + 12LTC$ FLOPs per token; for GPT-2 shapes the $6N$ dominates.
# * The embedding dominates small models and fades in large ones; the MLPs hold most of the
#   parameters of a large Transformer.
# * At a fixed budget, a deep, narrow plain MLP on the digits lags behind a shallow, wide one
#   after the same training. Counting is what makes such comparisons fair.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-3-6-1
# ```
# Count by hand the parameters of a two-layer bidirectional LSTM with input size 100 and hidden
# size 256, then check your number with `nn.LSTM`. How many would a GRU of the same shape have?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-6-1
# :class: dropdown
# ```
# With $G = 4$, $s = 2$: layer 1 has $2 \cdot (4 \cdot 256 \cdot (100 + 256) + 2 \cdot 4 \cdot
# 256) = 733{,}184$; layer 2 reads $2H = 512$ inputs: $2 \cdot (4 \cdot 256 \cdot (512 + 256) +
# 2048) = 1{,}576{,}960$; in all $2{,}310{,}144$. A GRU has $G = 3$, exactly three quarters of
# that: $1{,}732{,}608$.

# %%
lstm_hand = 2 * (4 * 256 * (100 + 256) + 2 * 4 * 256) + 2 * (4 * 256 * (512 + 256) + 2 * 4 * 256)
assert lstm_hand == 2_310_144 == count(nn.LSTM(100, 256, num_layers=2, bidirectional=True))
assert count(nn.GRU(100, 256, num_layers=2, bidirectional=True)) == 3 * lstm_hand // 4 == 1_732_608
print(lstm_hand, 3 * lstm_hand // 4)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-6-2
# ```
# A *depthwise-separable* convolution replaces a $k \times k$ convolution from $C_{in}$ to
# $C_{out}$ channels by a depthwise $k \times k$ convolution ($g = C_{in}$) followed by a
# $1 \times 1$ convolution. Ignoring biases, show that the ratio of its parameters to the
# standard convolution's is $1/C_{out} + 1/k^2$, and check it for $C_{in} = C_{out} = 128$,
# $k = 3$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-6-2
# :class: dropdown
# ```
# By the convolution count the depthwise part has $C_{in} k^2$ and the pointwise part
# $C_{out} C_{in}$ parameters, against $C_{out} C_{in} k^2$ for the standard convolution:
# the ratio is $(C_{in} k^2 + C_{out} C_{in}) / (C_{out} C_{in} k^2) = 1/C_{out} + 1/k^2$, about
# $1/9$ for a $3 \times 3$ kernel and many channels.

# %%
cin = cout = 128
separable = count(nn.Sequential(nn.Conv2d(cin, cin, 3, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False)))
standard = conv2d_params(cin, cout, 3, bias=False)
assert math.isclose(separable / standard, 1 / cout + 1 / 9)
print(f"separable / standard = {separable / standard:.4f}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-6-3
# ```
# Use the GPT count to find the vocabulary size at which the token embedding of a GPT-2
# small-shaped model ($L = 12$, $C = 768$, $T = 1024$, tied) holds exactly half of its
# parameters. What share does it hold with the 256 byte values as the vocabulary?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-6-3
# :class: dropdown
# ```
# Half means $VC = TC + L(12C^2 + 13C) + 2C$, i.e. $V = T + L(12C + 13) + 2 = 111{,}774$, more
# than twice GPT-2's vocabulary. With $V = 256$ the embedding is a fraction of a percent.

# %%
v_half = 1024 + 12 * (12 * 768 + 13) + 2
assert v_half == 111_774
cfg = gpt2_config(12, 12, 768, vocab_size=v_half)
assert 2 * v_half * 768 == gpt_params(cfg)
byte_share = 256 * 768 / gpt_params(gpt2_config(12, 12, 768, vocab_size=256))
assert byte_share < 0.003
print(f"V for half: {v_half:,}; byte-level share: {byte_share:.2%}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-6-4
# ```
# Grouped-query attention lets $H$ query heads share $H_{kv} < H$ key and value heads: the key
# and value projections shrink to $C \times H_{kv} D$ with $D = C/H$. Write its parameter count
# (with biases) and compute the saving for $C = 4096$, $H = 32$, $H_{kv} = 8$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-6-4
# :class: dropdown
# ```
# Queries and output keep $C^2 + bC$ each; keys and values cost $C \cdot H_{kv} D + b H_{kv} D$
# each. In all $2C^2 + 2C H_{kv} D + b(2C + 2 H_{kv} D)$. With $H_{kv} D = 1024$ this is
# $2 \cdot 4096^2 + 2 \cdot 4096 \cdot 1024$ weights instead of $4 \cdot 4096^2$: a saving of
# $3/8$ of the attention weights. We check the formula by building the projections.

# %%
def gqa_params(c, h, h_kv, bias=True):
    kv = h_kv * (c // h)
    return 2 * (c * c + bias * c) + 2 * (c * kv + bias * kv)


c_, h_, hkv_ = 4096, 32, 8
with torch.device("meta"):
    kv_dim = hkv_ * c_ // h_
    projections = nn.ModuleList([nn.Linear(c_, c_), nn.Linear(c_, kv_dim), nn.Linear(c_, kv_dim), nn.Linear(c_, c_)])
assert gqa_params(c_, h_, hkv_) == count(projections)
assert gqa_params(c_, h_, h_) == attention_params(c_)  # H_kv = H is ordinary attention
saving = 1 - gqa_params(c_, h_, hkv_, bias=False) / attention_params(c_, bias=False)
assert math.isclose(saving, 3 / 8)
print(f"GQA saves {saving:.1%} of the attention weights")

# %% [markdown]
# ```{solution-end}
# ```
