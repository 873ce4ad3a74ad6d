# %% [markdown]
# # Training efficiently
#
# Pretraining is paid for in GPU hours, so a training step that runs twice as fast halves the
# bill, and a step that needs half the memory allows a model twice as large on the same GPU.
# This section measures where the time and memory of a GPT training step go and the standard
# techniques that reduce them: mixed precision, gradient accumulation, activation
# checkpointing, fused attention and `torch.compile`. It ends with the book's benchmark
# command, which reports tokens per second, memory and *model FLOPs utilisation* (MFU) on
# whatever device it runs on.
#
# Everything here runs on a CPU, where the numbers are small; the techniques and the code are
# the ones that matter on a GPU, and the chapter says what changes there.

# %%
import sys
import time
from pydoc_data.topics import topics

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.bench import (
    benchmark_gpt,
    flops_per_token,
    matmul_flops_per_second,
    matmul_params,
    seconds_per_call,
)
from dlbook.book import glue
from dlbook.data.text import random_windows
from dlbook.memory import checkpoint_blocks, saved_activation_bytes
from dlbook.nn.attention import scaled_dot_product_attention
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.pretrain import lm_loss  # cross-entropy of GPT's (logits, loss) output
from dlbook.train import Trainer

device = get_device()
config = GPTConfig(vocab_size=256, block_size=pick(smoke=32, book=128), n_layer=4, n_head=4,
                   n_embd=128)
# Byte-level data: the Python documentation that ships with every Python, as byte ids 0..255.
data = torch.tensor(list("\n".join(topics.values()).encode("utf-8")), dtype=torch.long)
print(f"{len(data):,} bytes of text; model of {GPT(config).num_params(False):,} parameters")


def batch(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows (B, T) of the text and their next bytes (B, T), fixed by `seed`."""
    return random_windows(data, config.block_size, batch_size, torch.Generator().manual_seed(seed))

# %% [markdown]
# ## Counting FLOPs
#
# A floating-point operation (FLOP) is one addition or multiplication. In a Transformer almost
# all of them are in matrix products: a weight matrix of $N$ entries applied to one token costs
# one multiply-add per entry, $2N$ FLOPs. Attention adds, per layer and token, $2TC$ FLOPs for
# the scores of one query against $T$ keys of width $C$ and $2TC$ for the weighted sum of the
# values. The backward pass costs about twice the forward (gradients with respect to both the
# inputs and the weights), so training costs
#
# $$
# \text{FLOPs per token} \approx 3\,(2N + 4\,L\,T\,C) = 6N + 12\,L\,T\,C ,
# $$
#
# where $N$ counts the parameters used in matrix products (all but the position table; with
# tied weights the token embedding counts once, as the output layer). This is the estimate of
# {cite:t}`kaplan2020scaling` with both attention products counted; they count only the scores,
# which gives $6N + 6\,L\,T\,C$. We check the forward part against PyTorch's own FLOP counter,
# running attention with the plain "math" kernel so its products are counted:
#
# ```{literalinclude} ../../dlbook/bench.py
# :pyobject: flops_per_token
# ```

# %%
seed_everything(0)
model = GPT(config)
x, y = batch(4, seed=0)
with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
    model(x)
counted = counter.get_total_flops() / x.numel()
estimate = flops_per_token(config, matmul_params(model), training=False)
print(f"forward FLOPs per token: counted {counted:,.0f}, estimated {estimate:,.0f}")
assert abs(estimate - counted) / counted < 0.03
glue("s4_5_flop_error", abs(estimate - counted) / counted, ".1%")

# %% [markdown]
# The estimate is within {glue}`s4_5_flop_error` of the count (the rest is layer norms,
# softmax and biases). **Model FLOPs utilisation** divides the FLOPs the model needs per second
# of training by what the hardware could do at most: MFU $=$ tokens/s $\times$ FLOPs per token
# $/$ peak FLOP/s. A GPU's peak is on its data sheet (989 TFLOP/s of dense bf16 for an H100
# SXM); a CPU's we measure with a large matrix product, the best case for any kernel.

# %%
peak = matmul_flops_per_second(n=pick(smoke=256, book=1024), device=device)
result = benchmark_gpt("tiny", batch_size=pick(smoke=2, book=16), steps=pick(smoke=1, book=5),
                       warmup=1, device=device, peak_tflops=peak / 1e12)
print(result.report())
glue("s4_5_peak_gflops", peak / 1e9, ".0f")
glue("s4_5_tokens_per_s", result.tokens_per_second, ",.0f")
glue("s4_5_mfu", result.mfu, ".0%")

# %% [markdown]
# This machine's matrix product reaches {glue}`s4_5_peak_gflops` GFLOP/s; a training step of
# the tiny GPT processes {glue}`s4_5_tokens_per_s` tokens/s, an MFU of {glue}`s4_5_mfu` relative
# to that peak. Small models have low MFU everywhere: their matrix products are too small to
# keep the arithmetic units busy, and the time goes to memory traffic and per-operation
# overhead. The rest of this section is about shrinking those.
#
# ## Mixed precision
#
# Float32 spends 4 bytes per number. The two 16-bit formats halve memory traffic and run
# several times faster on tensor cores, but keep different parts of float32's bits:
# **float16** has 5 exponent and 10 mantissa bits (precise, narrow range), **bfloat16** has
# float32's 8 exponent bits and only 7 mantissa bits (wide range, coarse).

# %%
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    info = torch.finfo(dtype)
    print(f"{str(dtype):>15}: max {info.max:.3g}, smallest normal {info.tiny:.3g}, eps {info.eps:.3g}")
assert torch.finfo(torch.bfloat16).max > 1e38 and torch.finfo(torch.float16).max == 65504

small_grad = torch.tensor(1e-8)
print("a gradient of 1e-8 in float16:", small_grad.half().item(), "in bfloat16:",
      small_grad.bfloat16().item())
assert small_grad.half().item() == 0.0 and small_grad.bfloat16().item() > 0
# float16's smallest subnormal is 2^-24; below half of it, 2^-25, a value rounds to zero
fp16_min = torch.finfo(torch.float16).smallest_normal * torch.finfo(torch.float16).eps
assert fp16_min == 2.0**-24
for value, expected in ((2.0**-24, 2.0**-24), (1.01 * 2.0**-25, 2.0**-24),
                        (2.0**-25, 0.0), (0.99 * 2.0**-25, 0.0)):  # 2^-25 itself ties to even: 0
    assert torch.tensor(value, dtype=torch.float64).half().item() == expected, value
glue("s4_5_fp16_min", fp16_min, ".1e")
glue("s4_5_fp16_zero", fp16_min / 2, ".1e")

# %% [markdown]
# Gradients can be tiny, and float16 cannot hold them: its smallest positive number is the
# subnormal $2^{-24} \approx$ {glue}`s4_5_fp16_min`, values below half of it
# ($2^{-25} \approx$ {glue}`s4_5_fp16_zero`) round to zero, and everything below the smallest
# normal number, about $6 \times 10^{-5}$, keeps fewer than 10 mantissa bits (the code checks
# the rounding at these edges). **Loss scaling** {cite:p}`micikevicius2018mixed` fixes this:
# multiply the loss by a large $S$ before `backward()`, so every gradient is $S$ times larger
# and representable, then divide by $S$ before the optimizer step. `torch.amp.GradScaler`
# does this and adapts $S$, halving it whenever a gradient overflows to `inf` (that step is
# skipped) and growing it again after a run of good steps. bfloat16 has float32's range and
# needs no scaling, which is why it is the default on GPUs that support it.

# %%
weight = torch.tensor([1.0], requires_grad=True)
(weight * 1e-8).sum().backward()  # the gradient is 1e-8
unscaled = weight.grad.half().item()
scaler_scale = 65536.0
weight.grad = None
(weight * 1e-8 * scaler_scale).sum().backward()
rescued = weight.grad.half().float().item() / scaler_scale
print(f"float16 gradient without scaling: {unscaled}, with scaling: {rescued:.3g}")
assert unscaled == 0.0 and abs(rescued - 1e-8) / 1e-8 < 1e-2

# %% [markdown]
# In training, *autocast* runs each operation in the precision that suits it: matrix products
# in 16 bits, reductions such as softmax and the loss in float32; the weights and the optimizer
# stay in float32. The `Trainer` of {doc}`../01_basics/05_library` does this with
# `amp="bf16"` (or `"fp16"`, which adds a `GradScaler`). We train the same model three ways and
# compare the loss curves.

# %%
steps, batch_size = pick(smoke=2, book=60), pick(smoke=4, book=16)
windows = [batch(batch_size, seed=s) for s in range(steps)]
train_set = TensorDataset(torch.cat([w[0] for w in windows]), torch.cat([w[1] for w in windows]))


def train_curve(amp: str, n_steps: int, accumulation_steps: int = 1,
                optimizer: str = "adamw") -> tuple[list[float], GPT, float]:
    """Train a fresh GPT on the first `n_steps` batches; losses, model, seconds per step."""
    seed_everything(0)
    gpt = GPT(config)
    opt = (torch.optim.AdamW(gpt.parameters(), lr=1e-3) if optimizer == "adamw"
           else torch.optim.SGD(gpt.parameters(), lr=0.05, momentum=0.9))
    trainer = Trainer(gpt, opt, lm_loss, amp=amp, device=device,
                      accumulation_steps=accumulation_steps, progress=False)
    losses = []
    start = time.perf_counter()
    for x_batch, y_batch in zip(train_set.tensors[0].split(batch_size)[:n_steps],
                                train_set.tensors[1].split(batch_size)[:n_steps], strict=True):
        losses.append(trainer.train_step(x_batch.to(device), y_batch.to(device)))
    return losses, gpt, (time.perf_counter() - start) / n_steps


# float16 arithmetic is emulated (slowly) on most CPUs, so its run is kept short here.
curves = {"off": train_curve("off", steps), "bf16": train_curve("bf16", steps),
          "fp16": train_curve("fp16", pick(smoke=2, book=10))}
for amp, (losses, _, seconds) in curves.items():
    print(f"{amp:>4}: loss after {len(losses)} steps {losses[-1]:.3f}, {seconds * 1e3:.0f} ms per step")
gap16 = max(abs(a - b) for a, b in zip(curves["off"][0], curves["fp16"][0], strict=False))
tail = max(1, steps // 6)  # average the last steps: single-batch losses are noisy
end32, end_bf16 = (float(np.mean(curves[k][0][-tail:])) for k in ("off", "bf16"))
progress_bf16 = (curves["bf16"][0][0] - end_bf16) / (curves["off"][0][0] - end32)
glue("s4_5_fp16_gap", gap16, ".3f")
glue("s4_5_end32", end32, ".2f")
glue("s4_5_end_bf16", end_bf16, ".2f")
glue("s4_5_bf16_progress", progress_bf16, ".0%")
glue("s4_5_ms_fp32", curves["off"][2] * 1e3, ".0f")
glue("s4_5_ms_bf16", curves["bf16"][2] * 1e3, ".0f")
glue("s4_5_ms_fp16", curves["fp16"][2] * 1e3, ".0f")
if checks_enabled():
    assert curves["off"][0][-1] < curves["off"][0][0] - 1.0  # it learns
    assert gap16 < 0.1  # float16 + loss scaling follows float32 closely
    assert progress_bf16 > 0.9  # bfloat16 makes at least 90% of float32's progress

plt.figure(figsize=(6, 3.2))
for amp, (losses, _, _) in curves.items():
    plt.plot(losses, label={"off": "float32", "bf16": "bfloat16 autocast",
                            "fp16": "float16 autocast + GradScaler"}[amp])
plt.xlabel("step")
plt.ylabel("training loss (nats per byte)")
plt.legend()
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# Float16 with loss scaling follows the float32 curve to within {glue}`s4_5_fp16_gap` nats
# over its first steps. Bfloat16 keeps only 8 significant bits, so each step rounds more and
# the runs drift apart batch by batch, yet it learns as fast: averaged over the last steps its
# loss is {glue}`s4_5_end_bf16` against {glue}`s4_5_end32`, {glue}`s4_5_bf16_progress` of
# float32's progress from the same start. Large runs train in bfloat16 for the same reason:
# the rounding is noise that the optimizer averages away, while the float32 weights and
# optimizer state keep the small updates.
#
# Speed is another matter on a CPU: here a step took {glue}`s4_5_ms_fp32` ms in float32,
# {glue}`s4_5_ms_bf16` ms in bfloat16 and {glue}`s4_5_ms_fp16` ms in float16, since CPUs
# without matrix units for 16-bit types convert or emulate them. On a GPU's tensor cores
# 16-bit matrix products run many times faster than float32 ones.
#
# ## Gradient accumulation
#
# The batch size that optimizes well (hundreds of thousands of tokens for a large model) is
# often more than fits in memory at once. **Gradient accumulation** splits the batch into $k$
# micro-batches, runs forward and backward on each, and adds up the gradients before one
# optimizer step. Weighting each micro-batch's mean loss by its share of the batch makes the
# sum exactly the gradient of the whole batch, so the run is the same run, with the memory of
# one micro-batch:
#
# ```{literalinclude} ../../dlbook/train.py
# :pyobject: Trainer.train_step
# ```

# %%
# Compared with SGD: Adam divides by the square root of tiny second moments, which turns
# rounding differences of near-zero gradients into visible weight differences.
_, large_batch, _ = train_curve("off", steps, optimizer="sgd")
_, accumulated, _ = train_curve("off", steps, accumulation_steps=4, optimizer="sgd")
max_diff = max((a - b).abs().max().item() for a, b in
               zip(large_batch.parameters(), accumulated.parameters(), strict=True))
print(f"largest weight difference, batch of {batch_size} vs 4 accumulated micro-batches: "
      f"{max_diff:.1e}")
assert max_diff < 1e-4
glue("s4_5_accum_diff", max_diff, ".0e")

# %% [markdown]
# After all steps the weights differ by at most {glue}`s4_5_accum_diff`, the rounding of
# adding in a different order. (With Adam the difference is larger, though still rounding: Adam
# divides each gradient by the root of its running square, so for parameters whose gradient is
# almost exactly zero, rounding noise becomes a full-sized step. See exercise 4.)
#
# ## Activation checkpointing
#
# Backward needs the intermediate results (**activations**) of the forward pass, and for a
# Transformer they dominate memory: they grow with batch size × sequence length × width × depth.
# **Activation checkpointing** {cite:p}`chen2016training` stores only each block's input and
# recomputes the block's forward during backward, trading about one extra forward pass
# (roughly a third more compute) for memory. We measure the activation memory exactly, as the
# bytes of every tensor autograd saves for backward, with a hook:
#
# ```{literalinclude} ../../dlbook/memory.py
# :pyobject: saved_activation_bytes
# ```

# %%
x, y = batch(pick(smoke=2, book=16), seed=1)
seed_everything(0)
plain = GPT(config)
seed_everything(0)
checkpointed = GPT(config)
checkpoint_blocks(checkpointed.blocks)

memory, grads, times = {}, {}, {}
for name, gpt in (("plain", plain), ("checkpointed", checkpointed)):
    memory[name] = saved_activation_bytes(lambda gpt=gpt: gpt(x, y)[1], exclude=gpt.parameters())

    def step(gpt=gpt) -> None:
        gpt.zero_grad()
        gpt(x, y)[1].backward()

    times[name] = seconds_per_call(step, repeats=pick(smoke=1, book=5), warmup=0, stat="mean",
                                   device=device)
    grads[name] = torch.cat([p.grad.flatten() for p in gpt.parameters()])

torch.testing.assert_close(grads["plain"], grads["checkpointed"])  # same gradients
saving = 1 - memory["checkpointed"] / memory["plain"]
print({k: f"{v / 1e6:.1f} MB" for k, v in memory.items()}, f"saved {saving:.0%}")
print({k: f"{v:.2f} s" for k, v in times.items()})
assert saving > 0.5
glue("s4_5_act_plain_mb", memory["plain"] / 1e6, ".1f")
glue("s4_5_act_ckpt_mb", memory["checkpointed"] / 1e6, ".1f")
glue("s4_5_ckpt_slowdown", times["checkpointed"] / times["plain"] - 1, ".0%")

# %% [markdown]
# Checkpointing cuts the saved activations from {glue}`s4_5_act_plain_mb` MB to
# {glue}`s4_5_act_ckpt_mb` MB with identical gradients, for a step that took
# {glue}`s4_5_ckpt_slowdown` longer here.
#
# ## Fused attention
#
# Written out, attention materialises the $T \times T$ matrix of scores per head, reads it
# back for the softmax, and again for the product with the values; the memory grows as $T^2$.
# `F.scaled_dot_product_attention` instead calls a fused kernel: on GPUs FlashAttention
# {cite:p}`dao2022flashattention`, which computes the softmax block by block in fast on-chip
# memory and never stores the full matrix, saving memory and memory traffic. We compare the
# written-out form with the fused call, for outputs, saved memory and time.

# %%
def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention written out (section 3.4's reference): q, k, v (B, H, T, D) → (B, H, T, D)."""
    return scaled_dot_product_attention(q, k, v, is_causal=True)[0]


rows = []
for t in pick(smoke=[64], book=[128, 256, 512, 1024]):
    q, k, v = (torch.randn(4, 4, t, 32, device=device, requires_grad=True) for _ in range(3))
    fused_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(fused_out, manual_attention(q, k, v), rtol=1e-4, atol=1e-5)
    row = {"T": t}
    for name, fn in (("manual", manual_attention),
                     ("fused", lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True))):
        saved = saved_activation_bytes(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v), exclude=(q, k, v))
        row[f"{name} MB"] = saved / 1e6
        row[f"{name} ms"] = 1e3 * seconds_per_call(
            lambda fn=fn, q=q, k=k, v=v: fn(q, k, v).sum().backward(), repeats=3, warmup=0,
            stat="mean", device=device,
        )
    rows.append(row)
    print({key: round(val, 1) for key, val in row.items()})

longest = rows[-1]
assert longest["fused MB"] < longest["manual MB"]
sdpa_kernel = type(fused_out.grad_fn).__name__.removesuffix("Backward0")  # the kernel that ran
print("fused kernel:", sdpa_kernel)
glue("s4_5_sdpa_kernel", sdpa_kernel)
if len(rows) > 1:  # saved memory: the written-out form grows as T^2, the fused one as T
    grow = longest["T"] / rows[0]["T"]
    assert longest["manual MB"] / rows[0]["manual MB"] > grow**2 / 2
    assert longest["fused MB"] / rows[0]["fused MB"] < 1.5 * grow
glue("s4_5_attn_T", longest["T"])
glue("s4_5_attn_manual_mb", longest["manual MB"], ".1f")
glue("s4_5_attn_fused_mb", longest["fused MB"], ".1f")
glue("s4_5_attn_speedup", longest["manual ms"] / longest["fused ms"], ".1f")

fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 3.2))
ts = [r["T"] for r in rows]
for name in ("manual", "fused"):
    ax_mem.plot(ts, [r[f"{name} MB"] for r in rows], marker="o", label=name)
    ax_time.plot(ts, [r[f"{name} ms"] for r in rows], marker="o", label=name)
ax_mem.set(xlabel="sequence length T", ylabel="saved for backward (MB)", xscale="log", yscale="log")
ax_time.set(xlabel="sequence length T", ylabel="forward + backward (ms)", xscale="log", yscale="log")
for ax in (ax_mem, ax_time):
    ax.legend()
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# At $T =$ {glue}`s4_5_attn_T` the written-out attention saves {glue}`s4_5_attn_manual_mb` MB
# for backward, growing as $T^2$; the fused kernel saves {glue}`s4_5_attn_fused_mb` MB, growing
# as $T$ (both growth rates are asserted). The written-out forward and backward took
# {glue}`s4_5_attn_speedup` times as long as the fused one here (a timing on a shared machine,
# not asserted). The library's attention ({doc}`../03_architectures/04_attention`) always calls
# the fused function, and PyTorch picks the kernel per call. Here it ran the kernel
# {glue}`s4_5_sdpa_kernel`; on a CUDA GPU with float16 or bfloat16 inputs (as under autocast)
# and no explicit mask it is FlashAttention, with no change to the model, while float32 inputs
# or a mask make it fall back to its memory-efficient kernel or the written-out math.
#
# ## `torch.compile`
#
# PyTorch runs eagerly: one kernel per operation, each reading its inputs from memory and
# writing its output back. `torch.compile` {cite:p}`ansel2024pytorch2` captures the model's
# graph and generates fused kernels for chains of elementwise operations (layer norm, GELU,
# residual additions, dropout), removing the round trips to memory between them. Compilation
# costs time once; afterwards each step is faster when the model is memory-bound.

# %%
seed_everything(0)
eager_model = GPT(config).to(device)
# The smoke profile only traces the graph ("eager" backend); book and full generate kernels.
compiled_model = torch.compile(eager_model, backend=pick(smoke="eager", book="inductor"))
x, y = (t.to(device) for t in batch(pick(smoke=2, book=16), seed=2))


def step_time(model: torch.nn.Module, repeats: int) -> float:
    return seconds_per_call(lambda: model(x, y)[1].backward(), repeats=repeats, warmup=0,
                            stat="mean", device=device)


compile_seconds = step_time(compiled_model, 1)  # the first call compiles forward and backward
torch.testing.assert_close(compiled_model(x, y)[0], eager_model(x, y)[0], rtol=1e-4, atol=1e-4)
repeats = pick(smoke=1, book=5)
eager_ms, compiled_ms = step_time(eager_model, repeats) * 1e3, step_time(compiled_model, repeats) * 1e3
print(f"compile {compile_seconds:.0f} s; step eager {eager_ms:.0f} ms, compiled {compiled_ms:.0f} ms")
glue("s4_5_compile_s", compile_seconds, ".0f")
glue("s4_5_compile_speedup", eager_ms / compiled_ms, ".2f")

# %% [markdown]
# Compilation took {glue}`s4_5_compile_s` s and the compiled step ran {glue}`s4_5_compile_speedup`×
# as fast as the eager one on this machine. The outputs agree to float tolerance. On a GPU the
# gain comes from the same source, fusing chains of element-wise operations into single
# kernels, which saves launches and trips through memory; measure it there with the benchmark
# command below.
#
# ## The benchmark command
#
# `dlbook bench gpt` puts these together: it trains a GPT of a given size on random tokens
# and reports step time, tokens per second, achieved model FLOP/s, MFU (on GPUs whose peak it
# knows, or with `--peak-tflops`) and peak memory. `--size 124M` is GPT-2 small's shape (12
# layers, width 768, context 1024). On a GPU, the configuration that matters is
#
# ```bash
# dlbook bench gpt --size 124M --batch-size 16 --compile   # bf16 autocast, flash attention
# ```
#
# The book's target for GPT-2 small in bfloat16 with compilation and flash attention is at
# least half of an H100's peak (MFU ≥ 50 %); the figure depends on the device, so it is
# measured there rather than quoted here. On the machine that builds this page we run the tiny model:

# %%
from dlbook.cli import main as dlbook_cli  # the entry point of the `dlbook` command

sys.stdout.flush()
assert dlbook_cli(["bench", "gpt", "--size", "tiny", "--steps", str(pick(smoke=1, book=3)),
                   "--warmup", "1", "--batch-size", "8"]) == 0

# %% [markdown]
# ## Summary
#
# * Training costs about $6N + 12LTC$ FLOPs per token; MFU compares the FLOPs a run achieves
#   with the hardware's peak.
# * bfloat16 autocast keeps float32's range and follows float32 training closely; float16 needs
#   loss scaling to keep small gradients from vanishing.
# * Gradient accumulation gives exactly the large-batch step with one micro-batch's memory.
# * Activation checkpointing recomputes instead of storing, trading compute for memory.
# * Fused attention avoids materialising the $T\times T$ matrix; `torch.compile` fuses
#   elementwise chains. Both are measured, not assumed.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-4-5-1
# ```
# Use the FLOPs formula to estimate how long one epoch over 10 billion tokens takes for
# GPT-2 small (124 M parameters, 85 M of them in the blocks and 38.6 M in the tied
# embedding/output matrix, $L=12$, $T=1024$, $C=768$) on 8 H100 GPUs at 40 % MFU.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-5-1
# :class: dropdown
# ```
# FLOPs per token are $6N + 12LTC$ with $N$ the parameters used in matrix products (the
# blocks and the tied output matrix); the total divided by $8 \times 0.4 \times 989$ TFLOP/s
# gives the time: about three quarters of an hour.

# %%
gpt2 = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
# Per block: attention 4C² (+ 4C biases), MLP 8C² (+ 5C biases), two layer norms 4C.
blocks = 12 * (12 * 768**2 + 13 * 768)
n = blocks + 50304 * 768 + 2 * 768  # + tied output matrix + final layer norm
total = 10e9 * flops_per_token(gpt2, n)
hours = total / (8 * 0.4 * 989e12) / 3600
print(f"{flops_per_token(gpt2, n) / 1e9:.2f} GFLOPs per token; {hours:.2f} hours")
assert 0.5 < hours < 2

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-5-2
# ```
# Why does gradient accumulation weight each micro-batch's loss by its share of the batch
# rather than dividing by the number of micro-batches $k$?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-5-2
# :class: dropdown
# ```
# Dividing by $k$ is right only when all micro-batches are the same size. When the batch does
# not split evenly (say 50 examples into 3 micro-batches of 17, 17 and 16), each mean loss must
# count in proportion to the examples behind it; weighting by share does this and reduces to
# $1/k$ for equal sizes.
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-5-3
# ```
# Measure how the saved activation memory of the plain GPT grows with the sequence length $T$
# at fixed batch size. Is it linear or quadratic here, and why?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-5-3
# :class: dropdown
# ```
# Nearly linear: the library's attention uses the fused kernel, which saves $O(T)$ values per
# head (the output and the softmax normaliser), so every saved tensor is proportional to
# $B\,T\,C$. With the written-out attention the $T^2$ score matrices would dominate at long
# contexts.

# %%
sizes = pick(smoke=[8, 16], book=[16, 32, 64, 128])
saved = []
for t in sizes:
    idx = torch.randint(0, 256, (4, t))
    saved.append(saved_activation_bytes(lambda idx=idx: plain(idx, idx)[1], exclude=plain.parameters()))
ratios = [b / a for a, b in zip(saved, saved[1:], strict=False)]
print("memory ratio per doubling of T:", [f"{r:.2f}" for r in ratios])
assert all(1.8 < r < 2.3 for r in ratios)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-5-4
# ```
# Repeat the gradient-accumulation comparison with AdamW instead of SGD. How large is the
# weight difference now, and is the run still "the same run"?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-5-4
# :class: dropdown
# ```
# The difference grows to the order of the learning rate for a few weights, because Adam's
# step $\hat m/(\sqrt{\hat v}+\epsilon)$ is about $\pm\eta$ whatever the gradient's size: a
# gradient that is zero in exact arithmetic but $\pm10^{-12}$ after rounding still moves its
# weight. The losses, which depend on all weights together, stay essentially identical.

# %%
adam_large, adam_model_large, _ = train_curve("off", steps)
adam_accum, adam_model_accum, _ = train_curve("off", steps, accumulation_steps=4)
adam_diff = max((a - b).abs().max().item() for a, b in
                zip(adam_model_large.parameters(), adam_model_accum.parameters(), strict=True))
loss_diff = max(abs(a - b) for a, b in zip(adam_large, adam_accum, strict=True))
print(f"AdamW: largest weight difference {adam_diff:.1e}, largest loss difference {loss_diff:.1e}")
assert loss_diff < 1e-2

# %% [markdown]
# ```{solution-end}
# ```
