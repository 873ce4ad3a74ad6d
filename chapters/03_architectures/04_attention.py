# %% [markdown]
# # Attention
#
# A recurrent network reads a sequence one step at a time and must squeeze everything it has
# seen into a fixed-size state; information about a token fifty steps back survives only if
# every step in between chose to keep it. *Attention* removes that bottleneck: every position
# may look directly at every other position and take what it needs, in one step, whatever the
# distance. It is the operation at the heart of the Transformer {cite:p}`vaswani2017attention`
# and therefore of every large language model in this book.
#
# This section derives scaled dot-product attention, explains the $1/\sqrt{d_k}$ factor by a
# variance argument that we measure, adds the two masks a language model needs (padding and
# causal), assembles multi-head attention and checks it against PyTorch's own, and ends with the
# three common ways to tell attention *where* a token is: sinusoidal encodings, learned
# positions and rotary embeddings.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from dlbook import get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.nn.attention import (
    MultiHeadAttention,
    RotaryEmbedding,
    bool_to_additive,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    sinusoidal_positions,
)

seed_everything(0)
device = get_device()
TOL = dict(atol=2e-5, rtol=1e-4)  # float32 tolerance for "equal up to rounding"

# %% [markdown]
# ## Attention as a soft look-up
#
# Think of a dictionary: a *query* is compared with every *key*, and the *value* stored under
# the matching key is returned. Attention makes this differentiable by replacing the exact
# match with a similarity score and the single winner with a weighted average. With $T_q$
# queries $q_i \in \mathbb{R}^{d_k}$, $T_k$ keys $k_j \in \mathbb{R}^{d_k}$ and values
# $v_j \in \mathbb{R}^{d_v}$, query $i$ computes scores $s_{ij}$, turns them into weights
# $a_{ij}$ that are positive and sum to one over $j$, and returns the weighted mean of the
# values:
#
# $$
# s_{ij} = \frac{q_i^\top k_j}{\sqrt{d_k}}, \qquad
# a_{ij} = \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}, \qquad
# o_i = \sum_j a_{ij}\, v_j .
# $$
#
# Stacking the queries, keys and values as rows of matrices $Q \in \mathbb{R}^{T_q\times d_k}$,
# $K \in \mathbb{R}^{T_k\times d_k}$, $V \in \mathbb{R}^{T_k\times d_v}$ turns the three
# formulas into two matrix products and a row-wise softmax:
#
# $$
# \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V .
# $$
#
# In *self*-attention $Q$, $K$ and $V$ are all computed from the same sequence $X$ by learned
# linear maps; the weights $a_{ij}$ then say how much token $i$ reads from token $j$. We write
# this formula literally, for one query at a time, then all at once.

# %%
T, d_k, d_v = 5, 8, 3
Q, K, V = torch.randn(T, d_k), torch.randn(T, d_k), torch.randn(T, d_v)

# one query at a time: scores, softmax, weighted mean of the values
rows = []
for i in range(T):
    s = torch.stack([Q[i] @ K[j] for j in range(T)]) / math.sqrt(d_k)
    a = torch.exp(s) / torch.exp(s).sum()
    rows.append(sum(a[j] * V[j] for j in range(T)))
out_loop = torch.stack(rows)

# all queries at once: softmax(Q K^T / sqrt(d_k)) V
out_matrix = torch.softmax(Q @ K.T / math.sqrt(d_k), dim=-1) @ V

torch.testing.assert_close(out_loop, out_matrix, **TOL)
torch.testing.assert_close(out_matrix, F.scaled_dot_product_attention(Q, K, V), **TOL)
out_matrix

# %% [markdown]
# PyTorch's `F.scaled_dot_product_attention` computes the same thing, but picks a fused kernel
# (FlashAttention on recent GPUs) that never stores the $T_q \times T_k$ weight matrix. The
# library keeps a plain reference version that *does* return the weights, for teaching and for
# plots; it also accepts the masks introduced below:
#
# ```{literalinclude} ../../dlbook/nn/attention.py
# :pyobject: scaled_dot_product_attention
# ```

# %%
q, k, v = (torch.randn(2, 3, 7, 16) for _ in range(3))  # (batch, heads, T, d)
out_ref, weights = scaled_dot_product_attention(q, k, v)
torch.testing.assert_close(out_ref, F.scaled_dot_product_attention(q, k, v), **TOL)
torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7))  # rows are distributions
print("reference == F.scaled_dot_product_attention; weights", tuple(weights.shape))

# %% [markdown]
# ## Why divide by $\sqrt{d_k}$
#
# Suppose the components of $q$ and $k$ are independent with mean 0 and variance 1, as they
# roughly are at initialisation. Each product $q_i k_i$ then has mean
# $\mathbb{E}[q_i]\mathbb{E}[k_i] = 0$ and variance
# $\mathbb{E}[q_i^2 k_i^2] = \mathbb{E}[q_i^2]\,\mathbb{E}[k_i^2] = 1$, and the $d_k$ products
# are independent of one another, so their variances add:
#
# $$
# \mathrm{Var}(q^\top k) = \sum_{i=1}^{d_k} \mathrm{Var}(q_i k_i) = d_k,
# \qquad
# \mathrm{Var}\!\left(\frac{q^\top k}{\sqrt{d_k}}\right) = 1 .
# $$
#
# Without the factor, the scores spread out like $\sqrt{d_k}$: at $d_k = 1024$ their standard
# deviation is 32, and a softmax of numbers that far apart puts nearly all weight on the
# largest one. Such a *saturated* softmax has almost zero gradient, because
# $\partial a_i / \partial s_j = a_i(\delta_{ij} - a_j)$ vanishes when one $a_i$ is 1 and the
# rest are 0. We measure both effects.

# %%
n_samples = pick(smoke=2_000, book=50_000)
dims = [4, 16, 64, 256, 1024]
variances = []
for d in dims:
    qs, ks = torch.randn(n_samples, d), torch.randn(n_samples, d)
    variances.append((qs * ks).sum(-1).var().item())
for d, var in zip(dims, variances, strict=True):
    print(f"d_k = {d:5d}: Var(q.k) = {var:8.1f}   Var / d_k = {var / d:.3f}")
    assert abs(var / d - 1) < pick(smoke=0.2, book=0.05), "Var(q.k) should be d_k"
glue("s3_4_var_ratio_1024", variances[-1] / dims[-1], ".3f")

# %%
def softmax_stats(d: int, scaled: bool, n_keys: int = 32, n: int = 500) -> tuple[float, float]:
    """Mean largest attention weight and median gradient norm |d(sum w*a)/ds| for random q, K."""
    s = (torch.randn(n, 1, d) @ torch.randn(n, d, n_keys)).squeeze(1)  # (n, n_keys) raw scores
    s = (s / math.sqrt(d) if scaled else s).requires_grad_()
    a = torch.softmax(s, dim=-1)
    (a * torch.randn_like(a)).sum().backward()  # a random downstream gradient
    return a.max(-1).values.mean().item(), s.grad.norm(dim=-1).median().item()


stats = {sc: [softmax_stats(d, sc) for d in dims] for sc in (True, False)}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for sc, label in ((True, r"scaled by $1/\sqrt{d_k}$"), (False, "unscaled")):
    axes[0].plot(dims, [m for m, _ in stats[sc]], marker="o", label=label)
    axes[1].plot(dims, [g for _, g in stats[sc]], marker="o", label=label)
axes[0].set(xscale="log", xlabel="$d_k$", ylabel="mean largest weight", title="saturation (32 keys)")
axes[1].set(xscale="log", yscale="log", xlabel="$d_k$", ylabel="median gradient norm", title="gradient through softmax")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
plt.tight_layout()
plt.show()

max_unscaled, max_scaled = stats[False][-1][0], stats[True][-1][0]
grad_ratio = stats[True][-1][1] / stats[False][-1][1]
glue("s3_4_max_unscaled", max_unscaled, ".2f")
glue("s3_4_max_scaled", max_scaled, ".2f")
glue("s3_4_grad_ratio", grad_ratio, ",.0f")
assert max_unscaled > 0.8 and max_scaled < 0.5
assert grad_ratio > 100

# %% [markdown]
# The measured variance divided by $d_k$ is {glue}`s3_4_var_ratio_1024` at $d_k = 1024$. With
# 32 keys, the unscaled softmax gives its largest weight {glue}`s3_4_max_unscaled` on average
# at $d_k = 1024$ (nearly a hard arg-max), the scaled one {glue}`s3_4_max_scaled`, the same as
# at $d_k = 4$; and for a typical (median) query the gradient that flows back through the
# scaled softmax is {glue}`s3_4_grad_ratio` times larger than through the unscaled one. The
# factor $1/\sqrt{d_k}$ keeps the scores at unit scale whatever the head width, so widening the
# heads does not by itself push the softmax into saturation. It does not make the rest of a
# model width-independent: learning rates and initialisation scales still change with width,
# and transferring them across widths takes a parametrisation designed for it
# {cite:p}`yang2021tensor`.
#
# ## Masks
#
# Two situations require that some query–key pairs get **exactly zero** weight.
#
# * **Padding.** Sequences in a batch have different lengths and are padded to the longest one;
#   no real token may read from the padding.
# * **Causality.** A language model predicts token $t+1$ from tokens $1, \dots, t$. If position
#   $t$ could attend to position $t+1$ during training, it would simply copy the answer. A
#   *causal* mask allows query $i$ to see keys $j \le i$ only.
#
# A mask is applied to the scores before the softmax. In its *additive* form it is a matrix $M$
# with $M_{ij} = 0$ where attention is allowed and $M_{ij} = -\infty$ where it is not; since
# $e^{-\infty} = 0$, the masked weights are exactly zero and the remaining ones renormalise:
#
# $$
# a_{ij} = \frac{e^{s_{ij} + M_{ij}}}{\sum_{j'} e^{s_{ij'} + M_{ij'}}} .
# $$
#
# The *boolean* form stores `True` where attention is allowed (PyTorch's convention for
# `F.scaled_dot_product_attention`; beware that `nn.MultiheadAttention` uses the opposite one,
# `True` = masked). Both forms give the same result; we check that and the two properties we
# need: zero weight on masked keys, and no influence of future tokens on past outputs.

# %%
B, T, d = 2, 6, 8
q, k, v = (torch.randn(B, 1, T, d) for _ in range(3))
lengths = torch.tensor([6, 4])                       # the second sequence has 2 padding tokens
keep = padding_mask(lengths, T)[:, None, None, :]    # (B, 1, 1, T), True = real token
allowed = keep & causal_mask(T)                      # padding AND causal: (B, 1, T, T)

out_bool, w = scaled_dot_product_attention(q, k, v, allowed)
out_add, _ = scaled_dot_product_attention(q, k, v, bool_to_additive(allowed))
torch.testing.assert_close(out_bool, out_add)
torch.testing.assert_close(out_bool, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), **TOL)
assert torch.all(w[~allowed.expand_as(w)] == 0), "masked positions get exactly zero weight"

# the future cannot influence the past: change tokens 4 and 5 and compare outputs 0..3
k2, v2 = k.clone(), v.clone()
k2[..., 4:, :], v2[..., 4:, :] = torch.randn(B, 1, 2, d), torch.randn(B, 1, 2, d)
out_a, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
out_b, _ = scaled_dot_product_attention(q, k2, v2, is_causal=True)
torch.testing.assert_close(out_a[..., :4, :], out_b[..., :4, :])
assert not torch.allclose(out_a[..., 4:, :], out_b[..., 4:, :])
print("boolean == additive; masked weights are 0; outputs 0..3 ignore tokens 4..5")

# %% [markdown]
# To *see* attention, we build a toy sequence whose attention pattern we can predict. Each word
# gets a random unit-length embedding $e_w$, and we let queries, keys and values be the
# embeddings themselves, scaled up ($q = k = v = 4 e_w$): a token then attends most to tokens
# equal to itself. The heat
# maps show the weights $a_{ij}$ (row: query $i$, column: key $j$) without a mask, with a causal
# mask, and with both a causal and a padding mask (the last two tokens are padding).

# %%
words = "the cat saw the dog and the cat ran <pad> <pad>".split()
vocab = sorted(set(words))
emb = torch.nn.functional.normalize(torch.randn(len(vocab), 16), dim=-1) * 4
x = emb[[vocab.index(w) for w in words]][None, None]     # (1, 1, T, 16)
n_words = len(words)
real = padding_mask(torch.tensor([n_words - 2]), n_words)[:, None, None, :]
masks = {
    "no mask": None,
    "causal": causal_mask(n_words),
    "causal + padding": real & causal_mask(n_words),
}
fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
for ax, (title, m) in zip(axes, masks.items(), strict=True):
    _, w = scaled_dot_product_attention(x, x, x, m)
    ax.imshow(w[0, 0], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n_words), words, rotation=60)
    ax.set_yticks(range(n_words), words)
    ax.set(title=title, xlabel="key $j$", ylabel="query $i$")
plt.tight_layout()
plt.show()
_, w_full = scaled_dot_product_attention(x, x, x, masks["causal + padding"])
# the last "cat" (position 7) puts most of its weight on the two "cat"s, the padding gets none
glue("s3_4_cat_weight", w_full[0, 0, 7, [1, 7]].sum().item(), ".2f")
assert w_full[0, 0, 7, [1, 7]].sum() > 0.9
assert torch.all(w_full[0, 0, :, -2:] == 0)

# %% [markdown]
# In the right-hand map the second *cat* puts a total weight of {glue}`s3_4_cat_weight` on the
# two occurrences of *cat*, the upper triangle (the future) is dark, and no query reads from
# the padding. (Padding *queries* still produce outputs; the loss simply ignores them.)
#
# ## Multi-head attention
#
# A single attention pattern averages values with one set of weights. Often a token needs
# several things at once, e.g. the previous word *and* the subject of the sentence. *Multi-head*
# attention runs $H$ attentions in parallel, each in its own $d = C/H$-dimensional subspace of
# the model width $C$, and mixes their results {cite:p}`vaswani2017attention`. For an input
# $X \in \mathbb{R}^{T \times C}$ and head $h$ with projections
# $W_Q^{(h)}, W_K^{(h)}, W_V^{(h)} \in \mathbb{R}^{C \times d}$:
#
# $$
# \mathrm{head}_h = \mathrm{Attention}\big(XW_Q^{(h)}, XW_K^{(h)}, XW_V^{(h)}\big),
# \qquad
# \mathrm{MHA}(X) = \big[\mathrm{head}_1, \dots, \mathrm{head}_H\big]\, W_O ,
# $$
#
# with $W_O \in \mathbb{R}^{C \times C}$. The cost is that of one full-width attention: $H$
# heads of width $C/H$. In code, the $3H$ projection matrices are one linear layer of output
# width $3C$, and the heads become a batch dimension. We first write it with an explicit loop
# over the heads, from raw weight matrices.

# %% mystnb={"figure": {"caption": "One head of multi-head attention: three projections of the same input give queries, keys and values; the scaled scores of queries against keys, masked and normalised by a softmax, weight the values. The H heads' outputs are concatenated and multiplied by W_O.", "name": "fig-qkv"}, "image": {"alt": "Data-flow diagram of one attention head. The input X, T by C, feeds three linear projections: Q equals X W_Q, K equals X W_K and V equals X W_V, each T by d. Q and K meet in the scores S equals Q K transpose over the square root of d, a T by T matrix; adding the mask M and taking a softmax gives weights A whose rows sum to 1; A times V gives the head's output, T by d; the outputs of the H heads are concatenated and multiplied by W_O, giving T by C."}}
from dlbook.plot import diagram  # schematic drawings (boxes and arrows)

diagram(
    {
        "x": (0, 6, "$X$:  $T \\times C$", "io"),
        "q": (-2.6, 4.8, "$Q = XW_Q$\n$T \\times d$", "linear"),
        "k": (0, 4.8, "$K = XW_K$\n$T \\times d$", "linear"),
        "v": (2.6, 4.8, "$V = XW_V$\n$T \\times d$", "linear"),
        "s": (-1.3, 3.6, "$S = QK^\\top / \\sqrt{d}$\n$T \\times T$", "attn"),
        "a": (-1.3, 2.4, "$A = \\mathrm{softmax}(S + M)$\nmask $M$; rows sum to 1", "attn", 3.0),
        "o": (0.65, 1.2, "$\\mathrm{head} = AV$\n$T \\times d$", "attn"),
        "c": (0.65, 0, "concatenate the $H$ heads,\nmultiply by $W_O$:  $T \\times C$", "linear", 3.4),
    },
    [("x", "q"), ("x", "k"), ("x", "v"), ("q", "s"), ("k", "s"), ("s", "a"), ("a", "o"),
     ("v", "o"), ("o", "c")],
    size=(7, 5.5), box=(2.4, 0.7), fontsize=9.5,
)
plt.show()

# %%
def mha_from_scratch(x, w_qkv, b_qkv, w_o, b_o, n_head, causal=False):
    """Multi-head self-attention with a loop over heads. x (B, T, C) -> (B, T, C)."""
    C = x.shape[-1]
    d = C // n_head
    q, k, v = (x @ w_qkv.T + b_qkv).split(C, dim=-1)           # each (B, T, C)
    heads = []
    for h in range(n_head):
        sl = slice(h * d, (h + 1) * d)                          # head h's columns
        out_h, _ = scaled_dot_product_attention(q[..., sl], k[..., sl], v[..., sl], is_causal=causal)
        heads.append(out_h)                                     # (B, T, d)
    return torch.cat(heads, dim=-1) @ w_o.T + b_o               # concatenate, then W_O


C, H = 32, 4
mha = MultiHeadAttention(C, H).to(device)
x = torch.randn(3, 10, C, device=device)
for causal in (False, True):
    mha.causal = causal
    ours = mha_from_scratch(x, mha.c_attn.weight, mha.c_attn.bias, mha.c_proj.weight, mha.c_proj.bias, H, causal)
    torch.testing.assert_close(ours, mha(x), **TOL)
print("loop over heads == MultiHeadAttention (F.scaled_dot_product_attention), with and without causal mask")

# %% [markdown]
# The library's module does the same without the loop: it reshapes $(B, T, C)$ to
# $(B, H, T, d)$ and calls `F.scaled_dot_product_attention`, which dispatches to a fused
# FlashAttention kernel on a GPU. Its layout matches PyTorch's `nn.MultiheadAttention`
# (`in_proj_weight` stacks $W_Q; W_K; W_V$), so we can copy the weights over and demand equal
# outputs *and* equal gradients, with a causal mask and a padding mask. (The `kv` argument and
# `_forward_cached` serve generation: they are the key/value cache of
# {doc}`section 4.4 <../04_pretraining/04_decoding>`.)
#
# ```{literalinclude} ../../dlbook/nn/attention.py
# :pyobject: MultiHeadAttention
# ```

# %%
mha = MultiHeadAttention(C, H, causal=True).to(device)
torch_mha = nn.MultiheadAttention(C, H, batch_first=True).to(device)
with torch.no_grad():
    torch_mha.in_proj_weight.copy_(mha.c_attn.weight)
    torch_mha.in_proj_bias.copy_(mha.c_attn.bias)
    torch_mha.out_proj.weight.copy_(mha.c_proj.weight)
    torch_mha.out_proj.bias.copy_(mha.c_proj.bias)

T = 10
keep = padding_mask(torch.tensor([10, 7, 4], device=device), T)   # (B, T), True = real
x1 = torch.randn(3, T, C, device=device, requires_grad=True)
x2 = x1.detach().clone().requires_grad_()
y_ours = mha(x1, key_padding_mask=keep)
y_torch, _ = torch_mha(x2, x2, x2, key_padding_mask=~keep,             # torch: True = ignore
                       attn_mask=~causal_mask(T, device=device), need_weights=False)
torch.testing.assert_close(y_ours, y_torch, **TOL)
upstream = torch.randn_like(y_ours)
y_ours.backward(upstream)
y_torch.backward(upstream)
torch.testing.assert_close(x1.grad, x2.grad, **TOL)
torch.testing.assert_close(mha.c_attn.weight.grad, torch_mha.in_proj_weight.grad, **TOL)
torch.testing.assert_close(mha.c_proj.weight.grad, torch_mha.out_proj.weight.grad, **TOL)
n_params = sum(p.numel() for p in mha.parameters())
assert n_params == 4 * C * C + 4 * C
glue("s3_4_mha_params", n_params, ",")
print("MultiHeadAttention == nn.MultiheadAttention: outputs and gradients")

# %% [markdown]
# Both agree in outputs and in the gradients with respect to the input and all weights. With
# $C = 32$ the module has {glue}`s3_4_mha_params` parameters: $4C^2$ in the four projections
# plus $4C$ biases, independent of the number of heads.
#
# ## Where is a token? Positional information
#
# Attention as written has no notion of order. Permute the input rows and the outputs are
# permuted in the same way (the operation is *permutation-equivariant*): "dog bites man" and
# "man bites dog" look identical to it, up to reordering. We check this, then look at three
# ways to add position.

# %%
mha = MultiHeadAttention(C, H).to(device).eval()
x = torch.randn(1, 8, C, device=device)
perm = torch.randperm(8, device=device)
torch.testing.assert_close(mha(x[:, perm]), mha(x)[:, perm], **TOL)
print("attention without positions is permutation-equivariant")

# %% [markdown]
# **Sinusoidal encodings** {cite:p}`vaswani2017attention` add to the embedding of the token at
# position $p$ a fixed vector whose pairs of components oscillate at geometrically spaced
# frequencies $\omega_i = 10000^{-2i/C}$:
#
# $$
# P_{p,\,2i} = \sin(\omega_i p), \qquad P_{p,\,2i+1} = \cos(\omega_i p).
# $$
#
# Each pair is a point on a circle turning at its own speed; by the angle-addition formulas,
# $P_{p+k}$ is a fixed rotation of $P_p$ (pairwise, by $\omega_i k$), so a shift by $k$ is a
# linear map that does not depend on $p$. **Learned positions** (used by GPT-2, and in the
# {doc}`05_transformer` models) are simply a second embedding table, `nn.Embedding(block_size, C)`,
# trained with the rest; they cannot represent positions beyond `block_size`.

# %%
P = sinusoidal_positions(64, 32)
fig, ax = plt.subplots(figsize=(9, 3))
im = ax.imshow(P.T, aspect="auto", cmap="RdBu")
ax.set(xlabel="position $p$", ylabel="component", title="sinusoidal position encodings (C = 32)")
fig.colorbar(im, ax=ax)
plt.show()

# P_{p+k} is the same rotation of P_p for every p
shift = 5
omega = 10000 ** (-torch.arange(0, 32, 2) / 32)
c, s = torch.cos(omega * shift), torch.sin(omega * shift)
sin_p, cos_p = P[:-shift, 0::2], P[:-shift, 1::2]
torch.testing.assert_close(P[shift:, 0::2], sin_p * c + cos_p * s, atol=1e-4, rtol=1e-4)
torch.testing.assert_close(P[shift:, 1::2], cos_p * c - sin_p * s, atol=1e-4, rtol=1e-4)

# %% [markdown]
# **Rotary position embeddings** (RoPE) {cite:p}`su2024roformer` put the position into the
# *scores* rather than the inputs. Split a query (or key) of width $d$ into $d/2$ pairs and
# rotate pair $i$ ($i = 0, \dots, d/2 - 1$) of the vector at position $m$ by the angle
# $m\theta_i$, $\theta_i = 10000^{-2i/d}$:
#
# $$
# R_m = \mathrm{diag}\big(\rho(m\theta_0), \dots, \rho(m\theta_{d/2-1})\big), \qquad
# \rho(\alpha) = \begin{pmatrix}\cos\alpha & -\sin\alpha\\ \sin\alpha & \cos\alpha\end{pmatrix}.
# $$
#
# Rotations compose by adding angles and are orthogonal, $\rho(\alpha)^\top = \rho(-\alpha)$, so
# the score between a query at position $m$ and a key at position $n$ is
#
# $$
# \langle R_m q, R_n k\rangle = q^\top R_m^\top R_n\, k = q^\top R_{n-m}\, k ,
# $$
#
# which depends on the positions only through their difference: attention becomes aware of
# *relative* position, and no position table is needed. RoPE is applied to queries and keys
# in every layer (not to values), and is what most current open language models use.
#
# ```{literalinclude} ../../dlbook/nn/attention.py
# :pyobject: apply_rope
# ```
#
# We check this identity numerically: place the same $q$ and $k$ at every position
# $0, \dots, 63$, compute the $64 \times 64$ table of scores, and verify that all entries with
# the same $m - n$ are equal, for several shifts.

# %%
head_dim, n_pos = 16, 64
rope = RotaryEmbedding(head_dim, n_pos)
q1, k1 = torch.randn(head_dim), torch.randn(head_dim)
q_rot = rope(q1.expand(n_pos, head_dim))       # row m = R_m q
k_rot = rope(k1.expand(n_pos, head_dim))       # row n = R_n k
scores = q_rot @ k_rot.T                       # scores[m, n] = <R_m q, R_n k>
spread = {}
for shift in (-20, -3, 0, 1, 7, 30):           # m - n = shift
    diag = torch.diagonal(scores, offset=-shift)
    spread[shift] = (diag.max() - diag.min()).item()
    torch.testing.assert_close(diag, diag[0].expand_as(diag), atol=1e-4, rtol=1e-4)
torch.testing.assert_close(q_rot.norm(dim=-1), q1.norm().expand(n_pos))  # rotations keep length
assert abs(scores[0, 0] - q1 @ k1) < 1e-4                                # m = n: the plain score
glue("s3_4_rope_spread", max(spread.values()), ".1e")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].imshow(scores, cmap="RdBu")
axes[0].set(title=r"$\langle R_m q, R_n k\rangle$", xlabel="key position $n$", ylabel="query position $m$")
axes[1].plot(range(-n_pos + 1, n_pos), [torch.diagonal(scores, -s)[0].item() for s in range(-n_pos + 1, n_pos)])
axes[1].set(title="score as a function of $m - n$", xlabel="$m - n$")
axes[1].grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# The score table is constant along every diagonal: entries with the same $m - n$ differ by at
# most {glue}`s3_4_rope_spread` (float32 rounding), so the right-hand curve *is* the whole
# table. The library's `RotaryEmbedding` precomputes the cosines and sines for
# all positions up to the context length:
#
# ```{literalinclude} ../../dlbook/nn/attention.py
# :pyobject: RotaryEmbedding
# ```
#
# ## Summary
#
# * Attention is a differentiable look-up: $\mathrm{softmax}(QK^\top/\sqrt{d_k})V$ averages
#   the values with weights given by query–key similarity.
# * The $1/\sqrt{d_k}$ factor keeps the scores at unit variance ($\mathrm{Var}(q^\top k)=d_k$);
#   without it the softmax saturates and its gradient vanishes as heads get wider.
# * Masks set scores to $-\infty$ before the softmax: padding masks hide padded keys, causal
#   masks hide the future; boolean and additive masks are equivalent.
# * Multi-head attention runs $H$ attentions of width $C/H$ in parallel and mixes them with
#   $W_O$; the library's module equals `nn.MultiheadAttention` and uses the fused
#   `F.scaled_dot_product_attention`.
# * Attention ignores order unless told: sinusoidal or learned positions are added to the
#   input; RoPE rotates queries and keys so scores depend only on relative position.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-3-4-1
# ```
# If the components of $q$ have variance $\sigma_q^2$ and those of $k$ variance $\sigma_k^2$
# (still independent, zero mean), what is $\mathrm{Var}(q^\top k)$? Check your formula
# numerically for $d_k = 64$, $\sigma_q = 2$, $\sigma_k = 0.5$ and $\sigma_q = \sigma_k = 3$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-4-1
# :class: dropdown
# ```
# Each product has variance $\mathbb{E}[q_i^2]\mathbb{E}[k_i^2] = \sigma_q^2\sigma_k^2$, so
# $\mathrm{Var}(q^\top k) = d_k\,\sigma_q^2\sigma_k^2$. Dividing by $\sqrt{d_k}$ only corrects
# the width; the scale of $q$ and $k$ is the model's to learn (a large scale is how a head
# learns to attend sharply).

# %%
n = pick(smoke=2_000, book=100_000)
for sq, sk in ((2.0, 0.5), (3.0, 3.0)):
    var = ((sq * torch.randn(n, 64)) * (sk * torch.randn(n, 64))).sum(-1).var().item()
    expected = 64 * sq**2 * sk**2
    print(f"sigma_q={sq}, sigma_k={sk}: measured {var:.1f}, formula {expected:.1f}")
    assert abs(var / expected - 1) < pick(smoke=0.2, book=0.05)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-4-2
# ```
# What does attention return when all keys are equal? And when one key's score exceeds all
# others by a huge margin? Verify both with `scaled_dot_product_attention`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-4-2
# :class: dropdown
# ```
# Equal keys give equal scores, hence uniform weights $1/T_k$: the output is the plain mean of
# the values. A dominant score makes the softmax an arg-max: the output is that key's value.

# %%
v_ex = torch.randn(6, 4)
out, w = scaled_dot_product_attention(torch.randn(3, 8), torch.ones(6, 8), v_ex)
torch.testing.assert_close(out, v_ex.mean(0).expand(3, 4))
k_ex = torch.zeros(6, 8)
k_ex[2] = 100.0
out, _ = scaled_dot_product_attention(torch.ones(1, 8), k_ex, v_ex)
torch.testing.assert_close(out[0], v_ex[2])

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-4-3
# ```
# Additive masks are sometimes written with a large finite number such as $-10^9$ instead of
# $-\infty$. Show that both give the same weights when each row has at least one allowed key,
# and find what happens to a row with *no* allowed key in each case.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-4-3
# :class: dropdown
# ```
# With at least one allowed key, $e^{-10^9 - \max s}$ underflows to exactly 0 in float32, so the
# results agree. A fully masked row is different: with $-\infty$ the softmax computes
# $0/0 = \mathrm{NaN}$; with $-10^9$ every score is replaced by the same number and the softmax
# returns the *uniform* distribution, silently attending to everything. Neither is what one
# wants, which is why such rows (e.g. padding queries) must be excluded from the loss.

# %%
s_ex = torch.randn(2, 5)
allowed_ex = torch.tensor([[True, True, False, False, False], [False] * 5])
w_inf = torch.softmax(s_ex.masked_fill(~allowed_ex, float("-inf")), -1)
w_big = torch.softmax(s_ex.masked_fill(~allowed_ex, -1e9), -1)
torch.testing.assert_close(w_inf[0], w_big[0])
assert torch.isnan(w_inf[1]).all()
torch.testing.assert_close(w_big[1], torch.full((5,), 0.2))
print(w_inf, w_big, sep="\n")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-4-4
# ```
# A causal language model with RoPE sees a prompt whose tokens are all shifted right by 10
# positions (e.g. because of a prefix that every query and key ignores). Show that the attention
# *scores* among the prompt tokens do not change. Would the same hold with learned absolute
# positions?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-4-4
# :class: dropdown
# ```
# By the relative-position identity of RoPE every score depends on $m - n$ only, and shifting both by 10 keeps
# the difference. With learned absolute positions the inputs themselves change ($x + P_{p+10}$
# instead of $x + P_p$), so the scores change too.

# %%
rope_ex = RotaryEmbedding(16, 64)
qx, kx = torch.randn(1, 8, 16), torch.randn(1, 8, 16)
s0 = rope_ex(qx) @ rope_ex(kx).transpose(-2, -1)
s10 = rope_ex(qx, offset=10) @ rope_ex(kx, offset=10).transpose(-2, -1)
torch.testing.assert_close(s0, s10, atol=1e-4, rtol=1e-4)
learned = nn.Embedding(64, 16)
with torch.no_grad():
    a0 = (qx + learned.weight[:8]) @ (kx + learned.weight[:8]).transpose(-2, -1)
    a10 = (qx + learned.weight[10:18]) @ (kx + learned.weight[10:18]).transpose(-2, -1)
assert not torch.allclose(a0, a10)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-4-5
# ```
# Count the floating-point operations (FLOPs; one multiply-add is 2 FLOPs) of one forward pass
# of multi-head self-attention as a function of the sequence length $T$ and the width $C$.
# Check your formula with `torch.utils.flop_counter.FlopCounterMode` on `mha_from_scratch`,
# and find the length beyond which the $T^2$ part dominates.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-4-5
# :class: dropdown
# ```
# The projections to $Q, K, V$ and the output projection multiply a $T \times C$ matrix by
# $C \times 3C$ and $C \times C$ matrices: $2 \cdot T \cdot C \cdot 4C = 8TC^2$ FLOPs. The
# scores $QK^\top$ (summed over heads) cost $2T^2C$, the weighted sum of values another
# $2T^2C$. The total $8TC^2 + 4T^2C$ is dominated by the quadratic term once $T > 2C$, which is
# why long contexts are expensive and why fused kernels that avoid storing the $T \times T$
# matrix matter. (Bias additions and the softmax are not counted: they are $O(TC)$ and
# $O(T^2 H)$ element-wise operations.)

# %%
from torch.utils.flop_counter import FlopCounterMode

C_ex, H_ex = 64, 4
mha_ex = MultiHeadAttention(C_ex, H_ex)
args = (mha_ex.c_attn.weight, mha_ex.c_attn.bias, mha_ex.c_proj.weight, mha_ex.c_proj.bias, H_ex)
print("    T   counted FLOPs   8TC^2 + 4T^2C   share of T^2 part")
for T_len in (32, 128, 512):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mha_from_scratch(torch.randn(1, T_len, C_ex), *args)
    formula = 8 * T_len * C_ex**2 + 4 * T_len**2 * C_ex
    share = 4 * T_len**2 * C_ex / formula
    print(f"{T_len:5d} {counter.get_total_flops():15,d} {formula:15,d} {share:15.2f}")
    assert counter.get_total_flops() == formula

# %% [markdown]
# ```{solution-end}
# ```
