# %% [markdown]
# # Quantisation for inference
#
# A trained model is served many more times than it is trained, and at serving time two costs
# dominate: the **memory** that holds the weights, and the **bandwidth** that moves them. When
# a language model generates text one token at a time, every token needs a pass over every
# weight, with only one row of activations to multiply: the arithmetic is small and the
# bytes read are large, so on a GPU decoding is limited by memory bandwidth rather than by
# arithmetic. Storing each weight in 8 or 4 bits instead of 32 shrinks the file, the memory,
# and the bytes each token must read.
#
# {doc}`../05_finetuning/05_qlora` quantised weights to save memory while *training*. This
# section is about *inference*: post-training quantisation of two finished models, the R8
# news classifier of {doc}`../05_finetuning/03_classification` and SmolLM2-135M. It builds
# symmetric quantisation with one scale per output channel and one scale per group of inputs;
# int4 codes packed two per byte; a matrix product that works on the packed codes group by
# group; PyTorch's own dynamic int8 and the torchao library's weight-only int8 as
# references; and, for every variant, the size on disk, the CPU latency and the change in
# accuracy or perplexity, measured.

# %%
import copy
import math
import pydoc_data.topics
import time
import warnings
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown
from torch import nn

from dlbook import checks_enabled, pick, seed_everything
from dlbook.bench import seconds_per_call
from dlbook.book import error_message, glue
from dlbook.finetune import finetuned_r8_classifier, predict, r8_documents
from dlbook.hub import load
from dlbook.quant import (
    Int4Linear,
    Int8Linear,
    absmax_quantize,
    dequantize_groupwise,
    int4_matmul,
    pack_4bit,
    pack_int4,
    quantize_groupwise,
    quantize_model,
    saved_nbytes,
    unpack_4bit,
)

_ = seed_everything(0)

# %% [markdown]
# ## Symmetric quantisation with $b$ bits
#
# Take a group of weights $w_1, \dots, w_g$ and $b$ bits per weight. **Symmetric absmax**
# quantisation uses the integer codes $\{-(2^{b-1}-1), \dots, 2^{b-1}-1\}$ (±127 for int8, ±7
# for int4) and one scale that maps the group's largest magnitude onto the largest code:
#
# $$
# s = \frac{\max_i |w_i|}{2^{b-1}-1}, \qquad q_i = \operatorname{round}(w_i / s), \qquad
# \hat w_i = s\, q_i, \qquad |w_i - \hat w_i| \le \frac{s}{2}.
# $$
#
# The bound holds because rounding moves $w_i / s$ by at most one half, and nothing is clipped,
# since $|w_i| / s \le 2^{b-1}-1$. The error of *every* weight is set by the *largest* weight
# sharing its scale, which is why the choice of the group matters:
#
# * **per tensor**: one $s$ for the whole matrix; a single outlier coarsens the grid for all;
# * **per output channel** (per row of $W \in \mathbb{R}^{\text{out} \times \text{in}}$): one
#   $s$ per row, the usual choice for int8;
# * **group-wise**: each row cut into groups of $g$ consecutive inputs (32, 64 or 128), one
#   $s$ per group, the usual choice for int4.
#
# A group is a subset of its row, so its absmax, and with it its scale and its error bound,
# can never be larger than the row's. The price is storage: a float32 scale per group adds
# $32/g$ bits per weight, 0.5 bits at $g = 64$. `dlbook.quant.quantize_groupwise` implements
# all of it (`group_size=None` is per channel):
#
# ```{literalinclude} ../../dlbook/quant.py
# :pyobject: quantize_groupwise
# ```
#
# We try it on a matrix of SmolLM2, the down projection of the first block's feed-forward
# layer ($576 \times 1536$):

# %%
llm, tokenizer = load("smollm2-135m")
if pick(smoke=True, book=False):
    llm.blocks = llm.blocks[:1]  # smoke: 1 of the 30 blocks, so every line runs in seconds
llm.eval()
assert len(llm.blocks) == pick(smoke=1, book=30)
W = llm.blocks[0].mlp.c_proj.weight.detach()  # (576, 1536)


def rel_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Relative Frobenius error ``‖approx − exact‖ / ‖exact‖``."""
    return ((approx.float() - exact.float()).norm() / exact.float().norm()).item()


# per output channel, int8: the same codes as section 5.5's absmax_quantize(dim=1)
q8, s8 = quantize_groupwise(W, bits=8, group_size=None)
assert torch.equal(q8, absmax_quantize(W, dim=1)[0]) and s8.shape == (576, 1)

group_sizes = [None, 256, 128, 64, 32, 16]
errors: dict[tuple[int, int | None], float] = {}
for bits in (8, 4):
    for g in group_sizes:
        q, s = quantize_groupwise(W, bits=bits, group_size=g)
        W_hat = dequantize_groupwise(q, s)
        n_g = W.shape[1] if g is None else g
        # the bound |w - s q| <= s / 2, for every weight of every group (plus float rounding)
        bound = s.repeat_interleave(n_g, dim=1) / 2
        assert torch.all((W_hat - W).abs() <= bound * (1 + 1e-5))
        assert int(q.abs().max()) <= 2 ** (bits - 1) - 1
        errors[bits, g] = rel_error(W_hat, W)
    print(f"int{bits}: " + ", ".join(f"{'row' if g is None else g}: {errors[bits, g]:.2e}"
                                     for g in group_sizes))
# a group's absmax never exceeds its row's: finer scales are never coarser
s_row = quantize_groupwise(W, 4)[1]
s_g32 = quantize_groupwise(W, 4, 32)[1]
assert torch.all(s_g32 <= s_row)
assert errors[4, 32] < errors[4, 128] < errors[4, None]
assert errors[8, None] < errors[4, 16]
glue("s6_4_err8_row", errors[8, None], ".1e")
glue("s6_4_err4_row", errors[4, None], ".1e")
glue("s6_4_err4_g128", errors[4, 128], ".1e")
glue("s6_4_err4_g32", errors[4, 32], ".1e")
glue("s6_4_scale_ratio", (s_g32 / s_row).mean().item(), ".2f")

fig, ax = plt.subplots(figsize=(6, 3.2))
for bits, c in ((8, "C0"), (4, "C3")):
    xs = [32 / (W.shape[1] if g is None else g) + bits for g in group_sizes]
    ax.plot(xs, [errors[bits, g] for g in group_sizes], "o-", color=c, label=f"int{bits}")
    for x_, g in zip(xs, group_sizes, strict=True):
        ax.annotate("row" if g is None else str(g), (x_, errors[bits, g]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
ax.set(yscale="log", xlabel="bits per weight (codes + float32 scales)",
       ylabel="relative error ‖Ŵ − W‖ / ‖W‖",
       title="SmolLM2 block 0, down projection: error vs group size")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Per channel, int8 leaves a relative error of {glue}`s6_4_err8_row` and int4
# {glue}`s6_4_err4_row`: the int4 step is $127/7 \approx 18$ times the int8 step of the same
# row. Groups help int4: {glue}`s6_4_err4_g128` with groups of 128 and
# {glue}`s6_4_err4_g32` with groups of 32, whose scales are on average {glue}`s6_4_scale_ratio`
# of their row's. Every point of the plot is a trade of bits for error, and int4 in groups of
# 32 to 128 is where GPTQ {cite:p}`frantar2023gptq` and AWQ {cite:p}`lin2024awq` are typically
# used: both produce int4 (or 3-bit) weights, in practice often with a scale per group of 128
# inputs (GPTQ's main results use one scale per row), but choose the codes or the scales more
# cleverly than rounding to the nearest code. GPTQ quantises the columns of a weight one at a
# time and updates the columns not yet quantised to compensate for the rounding error, using
# second-order information from a little calibration data; AWQ finds the weight channels
# that meet large activations and scales them up before rounding (and the activations down),
# so that their relative error shrinks. Here we stay with round-to-nearest.
#
# ## Packing int4 and multiplying by the codes
#
# An int4 code in $[-7, 7]$ is stored as the unsigned nibble $q + 8$, two nibbles per byte, with
# `pack_4bit` from section 5.5 (first code in the high nibble). A weight of
# $\text{out} \times \text{in}$ then takes $\text{out} \cdot \text{in} / 2$ bytes of codes plus
# $\text{out} \cdot \text{in} / g$ scales.
#
# The matrix product needs no dequantised weight. Within a group the scale is a constant, so it
# can leave the sum: for an input $x$ and an output channel $o$,
#
# $$
# y_o = \sum_k x_k \hat W_{ok} = \sum_{\text{groups } G} s_{oG} \sum_{k \in G} x_k\, q_{ok} .
# $$
#
# The inner sums multiply the input by the small integer codes, one product per group; the
# scales weight the partial results. Built by hand, one group at a time:

# %%
lin = llm.blocks[0].mlp.c_proj
g = 64
q4, s4 = quantize_groupwise(lin.weight, bits=4, group_size=g)  # (576, 1536), (576, 24)
packed = pack_4bit((q4 + 8).to(torch.uint8).reshape(-1)).view(576, 768)
assert torch.equal((unpack_4bit(packed).view(576, 1536).to(torch.int8) - 8), q4)
assert torch.equal(packed, pack_int4(q4))  # the library's pack_int4

x = torch.randn(5, 1536, generator=torch.Generator().manual_seed(1))
codes = unpack_4bit(packed).view(576, 1536).float() - 8
y_groups = torch.zeros(5, 576)
for j in range(1536 // g):
    cols = slice(j * g, (j + 1) * g)
    y_groups += (x[:, cols] @ codes[:, cols].T) * s4[:, j]  # (5, 576): one group's share
y_dequant = x @ dequantize_groupwise(q4, s4).T  # dequantise, then one product
y_lib = int4_matmul(x, packed, s4)
diff_hand = (y_groups - y_dequant).abs().max().item()
diff_lib = (y_lib - y_dequant).abs().max().item()
print(f"max |difference| to dequantise-then-matmul: by hand {diff_hand:.1e}, "
      f"library {diff_lib:.1e} (outputs of size {y_dequant.abs().max():.2f})")
assert torch.allclose(y_groups, y_dequant, atol=1e-4, rtol=1e-5)
assert torch.allclose(y_lib, y_dequant, atol=1e-4, rtol=1e-5)
glue("s6_4_diff_lib", diff_lib, ".0e")

# %% [markdown]
# The two orders of summation agree to {glue}`s6_4_diff_lib`, float32 rounding. The library's
# `int4_matmul` does the loop as one batched product over the groups:
#
# ```{literalinclude} ../../dlbook/quant.py
# :pyobject: int4_matmul
# ```
#
# `Int4Linear` holds the packed codes, the scales and the bias as buffers. Its `forward`
# de-quantises the weight and multiplies, like section 5.5's layers: the result is the same
# (asserted below), and its intermediate is one float weight, where `int4_matmul` keeps
# partial results $G$ times the size of the output, a lot of memory for inputs of many rows.
# `quantize_model(model, "int4_group", group_size=g)` swaps every linear layer of a
# model for one (and `quantize_model(model, "int8")`, from section 5.5, for the per-channel
# `Int8Linear`). Bad input gets a clear error. SmolLM2's width, 576, is not a multiple of 128,
# so groups of 128 do not fit its attention layers:

# %%
int4_layer = Int4Linear(lin, group_size=g)
assert torch.equal(int4_layer.packed, packed) and torch.equal(int4_layer.scales, s4)
assert int4_layer.nbytes() == 576 * 1536 // 2 + 576 * 24 * 4  # codes + scales (no bias)
assert torch.allclose(int4_layer(x), y_lib, atol=1e-4, rtol=1e-5)
print(error_message(lambda: Int4Linear(llm.blocks[0].attn.c_proj, group_size=128)))
print(error_message(lambda: int4_matmul(x[:, :576], packed, s4)))
print(error_message(lambda: int4_matmul(x.long(), packed, s4), TypeError))

# %% [markdown]
# ## PyTorch's dynamic int8, and torchao
#
# Weight-only schemes keep the arithmetic in floating point. PyTorch's **dynamic
# quantisation** goes further: weights are stored in int8 (per output channel with the
# `per_channel_dynamic_qconfig` we pass; the default is one scale per tensor), and at run time
# each input batch is quantised to 8 bits as well, with a scale computed on the fly
# ("dynamically") from its range, so that the product runs in integer arithmetic (the fbgemm
# or onednn int8 kernels on x86 CPUs) and is rescaled to float at the end. In this PyTorch
# version the API still works but warns that it is deprecated in favour of the `torchao`
# library; the warning, as the run printed it:

# %%
def skip_names(model: nn.Module, skip: tuple[str, ...]) -> set[str]:
    """Qualified names of the plain ``nn.Linear`` layers of ``model`` not matching ``skip``."""
    return {n for n, m in model.named_modules()
            if type(m) is nn.Linear and not any(s in n for s in skip)}


def dynamic_int8(model: nn.Module, skip: tuple[str, ...]) -> tuple[nn.Module, str]:
    """A copy of ``model`` with PyTorch's dynamic int8 linear layers (except ``skip``), and
    the first deprecation warning the call raised (empty if none)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        q = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), dict.fromkeys(skip_names(model, skip), per_channel)
        )
    msgs = [str(w.message) for w in caught
            if issubclass(w.category, DeprecationWarning | UserWarning)]
    return q, (msgs[0] if msgs else "")


small = nn.Sequential(nn.Linear(1536, 576, bias=False))
small[0].load_state_dict(lin.state_dict())
with torch.no_grad():
    ref = lin(x)
    err_w8 = rel_error(Int8Linear(lin)(x), ref)
dyn_error = ""  # what dynamic int8 raised, if it failed (some CPU backends lack per-channel)
try:
    small_dyn, deprecation = dynamic_int8(small, ())
    with torch.no_grad():
        err_dyn = rel_error(small_dyn(x), ref)
except Exception as e:  # noqa: BLE001  (we show whatever it raises)
    dyn_error = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    deprecation = ""
    print(f"dynamic int8 failed here, its rows are skipped: {dyn_error}")
# the warning's first lines: what is deprecated and what to use instead
first_line = " ".join(deprecation.strip().splitlines()[:3]) if deprecation else "(no warning)"
if dyn_error:
    first_line = f"(dynamic int8 did not run: {dyn_error})"
print(first_line)
glue("s6_4_deprecation", first_line)
glue("s6_4_torch", torch.__version__)
if not dyn_error:
    assert small_dyn[0].weight().qscheme() == torch.per_channel_affine  # int8, a scale per row
    print(f"relative output error of one layer: dynamic int8 {err_dyn:.1e}, "
          f"weight-only int8 {err_w8:.1e}")
    assert err_w8 < err_dyn < 0.05 and err_w8 < 0.02
    glue("s6_4_err_dyn_layer", err_dyn, ".1e")
else:
    assert err_w8 < 0.02
    glue("s6_4_err_dyn_layer", f"n/a ({dyn_error})")
glue("s6_4_err_w8_layer", err_w8, ".1e")

# %% [markdown]
# > {glue}`s6_4_deprecation`
#
# (This page was built with PyTorch {glue}`s6_4_torch`.)
#
# On one layer and random inputs the dynamic int8 output is off by {glue}`s6_4_err_dyn_layer`
# (relative), weight-only int8 by {glue}`s6_4_err_w8_layer`: dynamic quantisation rounds the
# inputs too.
#
# **torchao** is PyTorch's library for quantisation, the replacement the warning names. Its
# `quantize_(model, Int8WeightOnlyConfig())` replaces each linear layer's weight by a tensor
# subclass that holds int8 codes and per-channel scales. We use it as an independent
# reference for our `Int8Linear` (it is optional: without it, the chapter skips its row).

# %%
try:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
except ImportError as e:  # optional reference
    quantize_ = None
    print(f"torchao is not available ({e}); its rows are skipped")
    glue("s6_4_ao_codes_equal", "n/a")
    glue("s6_4_ao_scale_ratio", "n/a")
    glue("s6_4_ao_vs_ours", "n/a")
    glue("s6_4_ao_int4_error", f"torchao is not installed: {e}")


def torchao_int8(model: nn.Module, skip: tuple[str, ...]) -> nn.Module:
    """A copy of ``model`` with torchao's weight-only int8 (except the ``skip`` layers)."""
    names = skip_names(model, skip)
    q = copy.deepcopy(model)
    quantize_(q, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in names)
    return q


if quantize_ is not None:
    ao = torchao_int8(small, ())
    ao_w = ao[0].weight
    ours_layer = Int8Linear(lin)
    codes_equal = (ao_w.qdata == ours_layer.qweight).float().mean().item()
    max_code_diff = (ao_w.qdata.int() - ours_layer.qweight.int()).abs().max().item()
    scale_ratio = (ao_w.scale.flatten() / (ours_layer.absmax.flatten() / 127)).mean().item()
    with torch.no_grad():
        y_ao, y_ours = ao(x), ours_layer(x)
    ao_vs_ours = rel_error(y_ao, y_ours)
    print(f"torchao vs ours: {codes_equal:.1%} of the codes equal, none off by more than "
          f"{max_code_diff}; scale ratio {scale_ratio:.4f}; outputs differ by {ao_vs_ours:.1e} "
          f"(relative), each differs from float32 by {rel_error(y_ao, ref):.1e} / "
          f"{rel_error(y_ours, ref):.1e}")
    assert max_code_diff <= 1 and ao_vs_ours < 2 * err_w8
    glue("s6_4_ao_codes_equal", codes_equal, ".0%")
    glue("s6_4_ao_scale_ratio", scale_ratio, ".4f")
    glue("s6_4_ao_vs_ours", ao_vs_ours, ".1e")
    try:  # torchao's int4 needs a kernel package that this CPU install does not have
        quantize_(copy.deepcopy(small), Int4WeightOnlyConfig(group_size=64))
        ao_int4_error = "(no error: torchao's int4 ran here)"
    except Exception as e:  # noqa: BLE001  (we show whatever it raises)
        ao_int4_error = f"{type(e).__name__}: {e}"
    print(ao_int4_error)
    glue("s6_4_ao_int4_error", ao_int4_error)

# %% [markdown]
# torchao and our `Int8Linear` agree: {glue}`s6_4_ao_codes_equal` of the codes are equal and
# none differs by more than one step, because torchao divides the absmax by 127.5 (the
# midpoint of int8's asymmetric range $[-128, 127]$) where we divide by 127 (the ratio of the
# scales is {glue}`s6_4_ao_scale_ratio`); the layer outputs differ by {glue}`s6_4_ao_vs_ours`
# (relative), the same order as either differs from float32: two slightly different
# roundings of the same weights. Its int4 weight-only configuration does not run on this
# CPU install; asked to, it said:
#
# > {glue}`s6_4_ao_int4_error`
#
# ## The R8 classifier
#
# Now whole models. The first is the MiniLM encoder fine-tuned on Reuters R8 in
# {doc}`../05_finetuning/03_classification` (all its weights trained; the library trains it on
# first use and caches it, so on the site this is a load). We quantise every linear layer of
# the encoder and keep the embeddings (lookups, not products) and the small classification
# head in float32, and we measure float32 and five quantised variants: dynamic int8;
# weight-only int8 per channel, ours and torchao's; and int4 with groups of 64 and 32.
#
# For each: the **size on disk**, by writing the state dict with `torch.save` to a temporary
# file and reading its size (`dlbook.quant.saved_nbytes`); the **latency** per document, the
# median over a few repeats of a batch of documents; and the **accuracy** on the first R8
# test documents, with the share of documents whose predicted class changed.

# %%
run = finetuned_r8_classifier("full", progress=False)
clf = run.model.eval()
if pick(smoke=True, book=False):
    clf.encoder.blocks = clf.encoder.blocks[:1]  # smoke: 1 of the 6 blocks
n_docs = pick(smoke=8, book=160, full=400)
docs = r8_documents(run.config)["test"]
doc_ids = run.encode(docs.texts[:n_docs])
labels = docs.labels[:n_docs]
batch_ids = doc_ids[:2]
pad = run.tokenizer.pad_id
clf_skip = ("head",)
repeats, warmup = pick(smoke=1, book=2), pick(smoke=0, book=1)


def ours(kind: str, **kw: object):
    """A builder: a copy of the model quantised by ``quantize_model`` (skip list given later)."""
    def build(model: nn.Module, skip: tuple[str, ...]) -> nn.Module:
        q = copy.deepcopy(model)
        quantize_model(q, kind, skip=skip, **kw)  # type: ignore[arg-type]
        return q
    return build


variants = {
    "float32": lambda m, skip: m,
    "dynamic int8 (torch.ao)": (lambda m, skip: dynamic_int8(m, skip)[0])
    if not dyn_error else None,
    "int8 per channel (ours)": ours("int8"),
    # torchao's row is left out of the smoke test (its agreement is checked on one layer above)
    "int8 per channel (torchao)": torchao_int8
    if quantize_ is not None and pick(smoke=False, book=True) else None,
    "int4 group 64 (ours)": ours("int4_group", group_size=64),
    "int4 group 32 (ours)": ours("int4_group", group_size=32),
}
variants = {k: v for k, v in variants.items() if v is not None}


def measure_variants(
    model: nn.Module, skip: tuple[str, ...], measure: Callable[[nn.Module], dict[str, float]]
) -> dict[str, dict[str, float]]:
    """For each variant: build it from ``model``, record its size on disk (MB) and the
    numbers ``measure(variant)`` returns; the sizes must shrink with the bits."""
    rows = {}
    for name, build in variants.items():
        m = build(model, skip).eval()
        rows[name] = {"MB": saved_nbytes(m) / 1e6, **measure(m)}
        print(f"{name:28s} " + "  ".join(f"{k} {v:.4g}" for k, v in rows[name].items()))
        del m
    assert rows["int8 per channel (ours)"]["MB"] < rows["float32"]["MB"]
    assert rows["int4 group 64 (ours)"]["MB"] < rows["int8 per channel (ours)"]["MB"]
    return rows


@torch.inference_mode()
def classifier_metrics(m: nn.Module) -> dict[str, float]:
    """Milliseconds per document, accuracy and share of changed predictions of ``m``."""
    logits = predict(m, doc_ids, pad_value=pad)
    sec = seconds_per_call(lambda: predict(m, batch_ids, pad_value=pad),
                           repeats=repeats, warmup=warmup)
    return {"ms": 1000 * sec / len(batch_ids),
            "acc": (logits.argmax(-1) == labels).float().mean().item(),
            "changed": (logits.argmax(-1) != ref_logits.argmax(-1)).float().mean().item()}


with torch.inference_mode():
    ref_logits = predict(clf, doc_ids, pad_value=pad)
clf_rows = measure_variants(clf, clf_skip, classifier_metrics)
base = clf_rows["float32"]
if checks_enabled():
    assert base["acc"] > 0.8
    assert clf_rows["int8 per channel (ours)"]["changed"] <= 0.07  # a few documents at most
    assert clf_rows["int4 group 32 (ours)"]["acc"] > base["acc"] - 0.15
n_enc_linear = sum(m.weight.numel() for n, m in clf.named_modules()
                   if type(m) is nn.Linear and "head" not in n)
n_clf = sum(p.numel() for p in clf.parameters())
assert clf.encoder.wte.weight.numel() > 0.5 * (n_clf - n_enc_linear)  # the rest: embeddings
glue("s6_4_clf_linear_share", n_enc_linear / n_clf, ".0%")
glue("s6_4_clf_docs", n_docs)
glue("s6_4_batch", len(batch_ids))
glue("s6_4_clf_acc_fp32", base["acc"], ".1%")
glue("s6_4_clf_acc_int8", clf_rows["int8 per channel (ours)"]["acc"], ".1%")
glue("s6_4_clf_acc_int4", clf_rows["int4 group 32 (ours)"]["acc"], ".1%")
glue("s6_4_clf_changed_int4", clf_rows["int4 group 32 (ours)"]["changed"], ".1%")
glue("s6_4_clf_mb_fp32", base["MB"], ".1f")
glue("s6_4_clf_mb_int4", clf_rows["int4 group 64 (ours)"]["MB"], ".1f")


# %% [markdown]
# The whole table is at the end of the section. The file shrinks less than the bits suggest:
# only {glue}`s6_4_clf_linear_share` of MiniLM's parameters sit in the encoder's linear
# layers; the rest is mostly the 30,522-token embedding table, kept in float32, so the file
# goes from {glue}`s6_4_clf_mb_fp32` MB to {glue}`s6_4_clf_mb_int4` MB with int4 in groups of
# 64. On the {glue}`s6_4_clf_docs` test documents the accuracy is {glue}`s6_4_clf_acc_fp32` in
# float32, {glue}`s6_4_clf_acc_int8` with int8 weights and {glue}`s6_4_clf_acc_int4` with int4
# in groups of 32, which changed the predicted class of {glue}`s6_4_clf_changed_int4` of the
# documents.
#
# ## SmolLM2: perplexity and time per token
#
# The second model is SmolLM2-135M (all 30 blocks; the smoke test keeps 1). Its output layer
# shares its weight with the token embedding, so `quantize_model` keeps both in float32, and
# the other variants skip it too. Quality is the **perplexity** on a fixed text, the first
# tokens of the Python documentation in `pydoc_data.topics` (every variant reads the same
# tokens, so differences between them are paired). Speed is the **time per generated token**
# when decoding with a key/value cache: after a short prompt, each step feeds one token, so
# each step reads every weight once, the memory-bound case of the introduction.

# %%
text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
n_ppl = pick(smoke=32, book=1024, full=4096)
ppl_ids = torch.tensor(tokenizer.encode(text[: 8 * n_ppl]))[: n_ppl + 1]
assert len(ppl_ids) == n_ppl + 1
window = min(n_ppl, llm.config.block_size)
n_new = pick(smoke=2, book=4)
prompt = ppl_ids[:8].unsqueeze(0)
llm_skip = ("lm_head",)


@torch.inference_mode()
def perplexity(model: nn.Module) -> float:
    """exp(mean next-token loss) of ``model`` over ``ppl_ids`` in windows of ``window``."""
    total = 0.0
    for start in range(0, n_ppl, window):
        chunk = ppl_ids[start: start + window + 1]
        _, loss = model(chunk[:-1].unsqueeze(0), chunk[1:].unsqueeze(0))
        total += loss.item() * (len(chunk) - 1)
    return math.exp(total / n_ppl)


@torch.inference_mode()
def seconds_per_token(model: nn.Module) -> float:
    """Median seconds of one cached decoding step (one new token) after ``prompt``."""
    times = []
    for _ in range(repeats):
        cache = model.new_cache(prompt.shape[1] + n_new)
        model(prompt, cache=cache)  # prefill
        token = prompt[:, -1:]
        for _ in range(n_new):
            start = time.perf_counter()
            logits, _ = model(token, cache=cache)
            token = logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


llm_rows = measure_variants(
    llm, llm_skip, lambda m: {"ppl": perplexity(m), "ms": 1000 * seconds_per_token(m)}
)
lbase = llm_rows["float32"]
d_ppl = {k: r["ppl"] / lbase["ppl"] - 1 for k, r in llm_rows.items()}
if checks_enabled():
    assert abs(d_ppl["int8 per channel (ours)"]) < 0.02
    assert d_ppl["int4 group 64 (ours)"] > 0.01  # 4 bits cost measurable perplexity
    assert d_ppl["int4 group 32 (ours)"] < d_ppl["int4 group 64 (ours)"]
glue("s6_4_llm_tokens", n_ppl, ",")
dyn_key = "dynamic int8 (torch.ao)"
if dyn_key in d_ppl:
    worse = d_ppl[dyn_key] > d_ppl["int8 per channel (ours)"]
    if checks_enabled():
        assert worse  # the sentence after the glued word explains why dynamic int8 is worse
    glue("s6_4_dyn_vs_w8", "more" if worse else "less")
    glue("s6_4_llm_dppl_dyn", d_ppl[dyn_key], "+.1%")
    glue("s6_4_llm_ms_dyn", llm_rows[dyn_key]["ms"], ".1f")
else:
    glue("s6_4_dyn_vs_w8", "n/a")
    glue("s6_4_llm_dppl_dyn", f"n/a ({dyn_error})")
    glue("s6_4_llm_ms_dyn", "n/a")
glue("s6_4_llm_ppl_fp32", lbase["ppl"], ".2f")
for key, label in (("int8 per channel (ours)", "int8"),
                   ("int4 group 64 (ours)", "int4_64"), ("int4 group 32 (ours)", "int4_32")):
    glue(f"s6_4_llm_dppl_{label}", d_ppl[key], "+.1%")
glue("s6_4_llm_mb_fp32", lbase["MB"], ".0f")
glue("s6_4_llm_mb_int4", llm_rows["int4 group 32 (ours)"]["MB"], ".0f")
emb_mb = llm.wte.weight.numel() * 4 / 1e6
assert emb_mb > 0.5 * llm_rows["int4 group 32 (ours)"]["MB"]  # the float32 table dominates
glue("s6_4_llm_mb_emb", emb_mb, ".0f")
glue("s6_4_llm_ms_fp32", lbase["ms"], ".1f")
glue("s6_4_llm_ms_int8", llm_rows["int8 per channel (ours)"]["ms"], ".1f")
glue("s6_4_llm_ms_int4", llm_rows["int4 group 32 (ours)"]["ms"], ".1f")

# %% [markdown]
# On {glue}`s6_4_llm_tokens` tokens of text, float32 SmolLM2 has a perplexity of
# {glue}`s6_4_llm_ppl_fp32`. Weight-only int8 changes it by {glue}`s6_4_llm_dppl_int8` and
# dynamic int8 by {glue}`s6_4_llm_dppl_dyn`, {glue}`s6_4_dyn_vs_w8` than weight-only int8:
# dynamic quantisation also rounds the input of every layer, with one scale for the whole
# input tensor, and Dettmers et al. found that the hidden states of language models carry a
# few feature dimensions with values far larger than the rest, which stretch such a scale
# (LLM.int8() keeps those dimensions in 16 bits {cite:p}`dettmers2022llmint8`). int4 costs {glue}`s6_4_llm_dppl_int4_64` with
# groups of 64 and {glue}`s6_4_llm_dppl_int4_32` with groups of 32, the smaller groups buying
# back part of the loss, as the reconstruction errors above predicted. (The "float32" model is
# itself decoded from the 4-bit file that ships SmolLM2, see section 5.5; quantising it again
# still costs, because our groups and rounding differ from the file's.)
#
# **Size.** The file shrinks from {glue}`s6_4_llm_mb_fp32` MB to {glue}`s6_4_llm_mb_int4` MB
# with int4 in groups of 32; most of what remains is the float32 embedding table
# ({glue}`s6_4_llm_mb_emb` MB), which is also the output layer (exercise 3).
#
# **Speed.** One decoding step took {glue}`s6_4_llm_ms_fp32` ms in float32,
# {glue}`s6_4_llm_ms_dyn` ms with dynamic int8, {glue}`s6_4_llm_ms_int8` ms with our weight-only
# int8 and {glue}`s6_4_llm_ms_int4` ms with our int4 (groups of 32), on the CPU that built this
# page. These are measurements of one machine, not properties of the formats. A GPU kernel for
# weight-only int4 loads the packed codes (an eighth of the float32 bytes), unpacks them in
# registers and multiplies, so a memory-bound decoding step can run faster. Our int4 and int8
# layers are written in plain PyTorch: each call first materialises the codes as a float
# tensor as large as the float32 weight, and so reads *more* memory than the float32 layer,
# not less; a fused kernel (one that never writes the unpacked weight out) is what turns
# fewer bits into less time. Dynamic int8 does run integer kernels. Section 6.7 writes GPU
# kernels in Triton.

# %%
names = list(variants)
table = ["| variant | R8 size (MB) | R8 ms/doc | R8 accuracy | SmolLM2 size (MB) "
         "| SmolLM2 ms/token | perplexity |", "|---|---:|---:|---:|---:|---:|---:|"]
for k in names:
    c, r = clf_rows[k], llm_rows[k]
    table.append(f"| {k} | {c['MB']:.1f} | {c['ms']:.1f} | {c['acc']:.1%} | {r['MB']:.0f} "
                 f"| {r['ms']:.1f} | {r['ppl']:.3f} ({d_ppl[k]:+.1%}) |")
table_md = "\n".join(table)
print(table_md)
glue("s6_4_table", Markdown(table_md))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for k in names:
    axes[0].scatter(clf_rows[k]["MB"], 100 * clf_rows[k]["acc"], label=k)
    axes[1].scatter(llm_rows[k]["MB"], llm_rows[k]["ppl"], label=k)
axes[0].set(xlabel="size on disk (MB)", ylabel="accuracy (%)",
            title=f"R8 classifier, {n_docs} test documents")
axes[1].set(xlabel="size on disk (MB)", ylabel="perplexity",
            title=f"SmolLM2, {n_ppl:,} tokens")
axes[1].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The measurements of this run, in one table (sizes of the `torch.save` files, times per
# document in batches of {glue}`s6_4_batch` and per generated token, medians over a few
# repeats):
#
# ```{glue:md} s6_4_table
# :format: myst
# ```
#
# ## Summary
#
# * Symmetric absmax quantisation with $b$ bits: $s = \max|w| / (2^{b-1}-1)$, $q =
#   \operatorname{round}(w/s)$, error at most $s/2$ per weight, asserted for every weight here.
# * The largest weight of a group sets everyone's step; per-channel scales suit int8, groups of
#   32 to 128 inputs make int4 usable, at $32/g$ extra bits per weight for float32 scales.
# * int4 codes are stored as nibbles, two per byte, and the product can run on the codes,
#   group by group, applying each scale to a partial sum; it equals dequantise-then-matmul up
#   to float rounding.
# * PyTorch's `quantize_dynamic` still works but is deprecated in favour of torchao, whose
#   weight-only int8 agrees with ours to one code step; its int4 needs a kernel package that a
#   CPU install lacks.
# * On the two models, int8 weights were close to free in accuracy and perplexity; int4 cost
#   measurable perplexity, less with smaller groups. The speed of a format depends on its
#   kernel: our plain-PyTorch layers save memory at rest, not time.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-6-4-1
# ```
# **Asymmetric (zero-point) quantisation.** Instead of a range symmetric around zero, map each
# group's $[\min w, \max w]$ onto the codes $\{0, \dots, 15\}$: $s = (\max w - \min w) / 15$,
# $z = \operatorname{round}(-\min w / s)$, $q = \operatorname{clamp}(\operatorname{round}(w/s) +
# z, 0, 15)$, $\hat w = s (q - z)$ {cite:p}`jacob2018quantization`. Implement it for groups of
# 64 on the matrix `W` and compare its error with symmetric int4. Why must it be at least as
# good in the worst case?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-4-1
# :class: dropdown
# ```
# The step is $(\max - \min)/15 \le 2\max|w| / 15 < 2 \max|w| / 14$, the symmetric step, and
# the asymmetric code uses all 16 levels where the symmetric one uses 15. The price is one
# zero point per group (stored in 4 or 8 bits), and the product needs the extra term
# $-s z \sum_{k \in G} x_k$.

# %%
def asymmetric_int4(w: torch.Tensor, group: int) -> torch.Tensor:
    """Zero-point int4 with one (scale, zero) per group: dequantised ``(out, in)``."""
    wg = w.float().reshape(w.shape[0], -1, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s = (hi - lo).clamp_min(1e-12) / 15
    z = torch.round(-lo / s)
    q = (torch.round(wg / s) + z).clamp(0, 15)
    return (s * (q - z)).reshape(w.shape)


e_asym = rel_error(asymmetric_int4(W, 64), W)
e_sym = rel_error(dequantize_groupwise(*quantize_groupwise(W, 4, 64)), W)
print(f"int4, groups of 64: symmetric {e_sym:.3e}, asymmetric {e_asym:.3e}")
assert e_asym < e_sym

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-6-4-2
# ```
# **Choose the group size by measuring.** For every linear layer of SmolLM2's first ten blocks
# (or all the blocks kept in a smoke run), compute the relative int4 error with groups of 32 and 64 and the bits per
# weight ($4 + 32/g$). How much error does each extra half bit buy back, and is it the same in
# every layer?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-4-2
# :class: dropdown
# ```
# Halving the group from 64 to 32 costs 0.5 bits per weight and lowers the error in every
# layer, by different amounts.

# %%
gains = {}
for name_, mod in llm.blocks[:10].named_modules():
    if type(mod) is nn.Linear:
        w_ = mod.weight.detach()
        e64 = rel_error(dequantize_groupwise(*quantize_groupwise(w_, 4, 64)), w_)
        e32 = rel_error(dequantize_groupwise(*quantize_groupwise(w_, 4, 32)), w_)
        gains[name_] = e64 / e32
assert all(v > 1 for v in gains.values())
best = max(gains, key=gains.get)
print(f"{len(gains)} layers; error ratio (g=64 / g=32) from {min(gains.values()):.3f} to "
      f"{max(gains.values()):.3f} (largest in {best}); bits per weight 4.5 → 5.0")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-6-4-3
# ```
# **Why keep the embedding and the output layer?** SmolLM2's output layer is its embedding
# table (tied weights). Quantise that table to int4 (groups of 64) and to int8 per row and
# measure how much the next-token distributions change (the mean KL divergence from the
# float32 model's) on a few positions of the text. What else would quantising it change?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-4-3
# :class: dropdown
# ```
# The output layer's errors land directly on the logits, with no later layer to average them
# out, and because the matrix is tied, the same rounding also changes every input embedding.
# The table is a large share of a small model's parameters, so it is tempting to quantise it
# anyway; if you do, give it more bits than the other layers.

# %%
with torch.inference_mode():
    feats = llm.features(ppl_ids[:64].unsqueeze(0))[0]  # (64, 576)
    emb = llm.wte.weight
    logp = F.log_softmax(feats @ emb.T, -1)
    kl = {}
    for label, w_hat in (("int8 per row", dequantize_groupwise(*quantize_groupwise(emb, 8))),
                         ("int4 g64", dequantize_groupwise(*quantize_groupwise(emb, 4, 64)))):
        logq = F.log_softmax(feats @ w_hat.T, -1)
        kl[label] = (logp.exp() * (logp - logq)).sum(-1).mean().item()
print({k: f"{v:.2e} nats" for k, v in kl.items()},
      f"embedding share of parameters {emb.numel() / llm.num_params():.0%}")
assert kl["int8 per row"] < kl["int4 g64"]

# %% [markdown]
# ```{solution-end}
# ```
