# %% [markdown]
# # LoRA from scratch
#
# Fine-tuning every weight of a pretrained model works, but it is expensive in a way that has
# little to do with the task: the gradients and the optimizer's state are as large as the model
# (AdamW keeps two more numbers per weight), and every fine-tuned variant is a full copy of the
# model to store and serve. **Low-rank adaptation** (LoRA) {cite:p}`hu2022lora` freezes the
# pretrained weights and learns, for a few chosen matrices $W$, an update $\Delta W = BA$ of low
# rank $r$. Only $A$ and $B$ train; they hold a fraction of a percent of the model's parameters,
# the optimizer state shrinks by the same factor, and a fine-tuned variant is a file of a few
# megabytes next to the shared base model. On GPT-3 175B, Hu et al. report 10,000 times fewer
# trainable parameters and a third of the GPU memory of fine-tuning with Adam, at a quality on
# par with full fine-tuning on their benchmarks.
#
# Why would a low-rank update be enough? Li et al. {cite:p}`li2018measuring` defined the
# *intrinsic dimension* of a task as the smallest number of parameters $d$ such that training
# only a random $d$-dimensional subspace of the weights, $\theta = \theta_0 + P z$ with a fixed
# random $P$ and $z \in \mathbb{R}^d$, reaches 90 % of the full solution's quality. Aghajanyan et
# al. {cite:p}`aghajanyan2021intrinsic` measured it for fine-tuning pretrained language models
# and found it very low: optimising 200 parameters projected into the full space tunes RoBERTa to
# 90 % of the full fine-tuning performance on the MRPC paraphrase task. Fine-tuning moves a
# pretrained model by a small amount in few directions; LoRA bets that the per-matrix updates
# are low-rank as well, and learns them directly.
#
# This section derives LoRA, builds it by hand, shows the library's version (checked equal to
# the hand-built one and to Hugging Face `peft`'s), applies it to SmolLM2-135M on a held-out
# domain with ranks $r \in \{1, 4, 8, 16\}$ and then to the R8 classifier of
# {doc}`03_classification`, measures the memory it saves, and stores the results as adapter
# files.

# %%
import copy
import math
import os
import pydoc_data.topics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm.auto import tqdm

from dlbook import checks_enabled, pick, seed_everything
from dlbook.artifacts import cached_record_run
from dlbook.book import error_message, glue
from dlbook.finetune import finetuned_r8_classifier, optimizer_state_bytes, r8_config
from dlbook.hub import load
from dlbook.lora import (
    LoRALinear,
    adapter_metadata,
    apply_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    name_matches,
    remove_lora,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
)
from dlbook.nn import GPT, GPTConfig

_ = seed_everything(0)

# %% [markdown]
# ## The math
#
# Take one linear layer of a pretrained model, $y = W_0 x + b$ with $W_0 \in \mathbb{R}^{d_\text
# {out} \times d_\text{in}}$. Full fine-tuning learns an arbitrary update, $W = W_0 + \Delta W$,
# with $d_\text{out} d_\text{in}$ free numbers. LoRA restricts the update to rank $r$ by writing it
# as a product,
#
# $$
# \Delta W = \frac{\alpha}{r}\, B A, \qquad B \in \mathbb{R}^{d_\text{out} \times r},\quad
# A \in \mathbb{R}^{r \times d_\text{in}},
# $$
#
# so that the layer computes
#
# $$
# y = W_0 x + b + \frac{\alpha}{r}\, B (A x),
# $$
#
# with $r (d_\text{in} + d_\text{out})$ trainable numbers instead of $d_\text{in} d_\text{out}$:
# for a $576 \times 576$ projection of SmolLM2 and $r = 8$, 9,216 instead of 331,776. Note the
# order of evaluation: $B(Ax)$ costs $r(d_\text{in} + d_\text{out})$ multiply-adds per token and
# never forms the $d_\text{out} \times d_\text{in}$ matrix $BA$.
#
# Three details make it work in practice.
#
# * **$B$ starts at zero, $A$ at random.** Then $\Delta W = 0$ and the adapted model *is* the
#   pretrained model at step 0: fine-tuning starts from what pretraining learned, not from a
#   perturbed copy. Both cannot be zero: the gradient of the loss $L$ with respect to $A$ is
#   $\frac{\alpha}{r} B^\top \frac{\partial L}{\partial y} x^\top$, and with respect to $B$ it is
#   $\frac{\alpha}{r} \frac{\partial L}{\partial y} (Ax)^\top$; with $A = B = 0$ both vanish and
#   nothing ever trains. With $B = 0$ and $A \neq 0$, the first step moves $B$ only, and $A$
#   follows from the second step on.
# * **The scale $\alpha / r$.** Hu et al. fix $\alpha$ and vary $r$, so that trying another rank
#   does not require another learning rate. The library initialises $A$ as `peft` does, like a
#   default `nn.Linear` weight (Kaiming-uniform with $a = \sqrt 5$, i.e. uniform in
#   $\pm 1/\sqrt{d_\text{in}}$).
# * **Merging.** After training, $W = W_0 + \frac{\alpha}{r} BA$ is an ordinary matrix of the
#   original shape: written into the base layer it gives the adapted model with *no* extra cost
#   at inference, and subtracting it again restores the base model.
#
# Which matrices to adapt is a choice. Hu et al. adapt the attention projections (on GPT-3 the
# query and value ones); QLoRA {cite:p}`dettmers2023qlora` found that adapting every linear
# layer was needed to match full fine-tuning, and many recipes now do so. The base model, its
# embeddings and its norms stay frozen.
#
# ## LoRA by hand
#
# Here is the layer as one function, on a random $48 \times 64$ "pretrained" weight, with
# $A$ initialised as described and $B = 0$:

# %%
d_in, d_out, r, alpha = 64, 48, 4, 8.0
W0 = torch.randn(d_out, d_in) / math.sqrt(d_in)  # the frozen, "pretrained" weight
b0 = 0.1 * torch.randn(d_out)
A = torch.empty(r, d_in)
nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # uniform in ±1/sqrt(d_in)
B = torch.zeros(d_out, r)


def lora_linear(x, W0, b0, A, B, alpha):
    """``x (N, d_in)`` → ``(N, d_out)``: the frozen layer plus the scaled low-rank path."""
    r = A.shape[0]
    return x @ W0.T + b0 + (alpha / r) * (x @ A.T) @ B.T  # never forms B @ A


x = torch.randn(10, d_in)
assert torch.equal(lora_linear(x, W0, b0, A, B, alpha), x @ W0.T + b0)  # B = 0: the base layer
assert A.abs().max() <= 1 / math.sqrt(d_in)
print(f"LoRA parameters {r * (d_in + d_out):,} vs full update {d_in * d_out:,}")

# %% [markdown]
# The output equals the base layer's exactly. Now the gradients of a loss at this starting
# point: as derived above, only $B$ receives one.

# %%
A_, B_ = A.clone().requires_grad_(), B.clone().requires_grad_()
target = torch.randn(10, d_out)
loss = (lora_linear(x, W0, b0, A_, B_, alpha) - target).square().mean()
loss.backward()
print(f"|grad A| = {A_.grad.norm():.3g}, |grad B| = {B_.grad.norm():.3g}")
assert torch.count_nonzero(A_.grad) == 0 and B_.grad.norm() > 0

# %% [markdown]
# Give $B$ some values, as training would, and the update $\Delta W = \frac{\alpha}{r} BA$ is a
# $48 \times 64$ matrix of rank exactly $r = 4$. Merging it into the weight gives the same
# outputs as the two-path layer, and subtracting it restores $W_0$:

# %%
B = 0.1 * torch.randn(d_out, r)
delta = (alpha / r) * B @ A  # (d_out, d_in)
rank = int(torch.linalg.matrix_rank(delta))
W_merged = W0 + delta
merge_err = (x @ W_merged.T + b0 - lora_linear(x, W0, b0, A, B, alpha)).abs().max().item()
restore_err = (W_merged - delta - W0).abs().max().item()
print(f"rank of ΔW: {rank}; merged vs two-path: {merge_err:.1e}; unmerged vs W0: {restore_err:.1e}")
assert rank == r and merge_err < 1e-5 and restore_err < 1e-6
glue("s5_4_merge_err", merge_err, ".0e")

# %% [markdown]
# ## The library's version
#
# The library's `dlbook.lora.LoRALinear` wraps *any* module with `in_features` and
# `out_features` (an `nn.Linear`, or in {doc}`the next section <05_qlora>` a 4-bit quantised
# linear), freezes it and adds the two bias-free linears `lora_A` and `lora_B`. Dropout, when
# asked for, applies to the input of the low-rank path only; the frozen path sees $x$ unchanged.
# The LoRA weights are kept in float32 even on a 16-bit base, whose rounding would swallow small
# updates.
#
# ```{literalinclude} ../../dlbook/lora.py
# :pyobject: LoRALinear.forward
# ```
#
# ```{literalinclude} ../../dlbook/lora.py
# :pyobject: LoRALinear.merge
# ```
#
# Given the same $W_0$, $b$, $A$ and $B$, it computes what the hand-written function computes,
# merged and unmerged:

# %%
base = nn.Linear(d_in, d_out)
with torch.no_grad():
    base.weight.copy_(W0)
    base.bias.copy_(b0)
layer = LoRALinear(base, r=r, alpha=alpha)
with torch.no_grad():
    layer.lora_A.weight.copy_(A)
    layer.lora_B.weight.copy_(B)
with torch.no_grad():
    ours = layer(x)
    layer.merge()
    ours_merged = layer(x)
    layer.unmerge()
lib_err = (ours - lora_linear(x, W0, b0, A, B, alpha)).abs().max().item()
torch.testing.assert_close(ours, lora_linear(x, W0, b0, A, B, alpha))
torch.testing.assert_close(ours_merged, ours)
torch.testing.assert_close(layer.base.weight, W0)
assert not base.weight.requires_grad and layer.lora_A.weight.requires_grad
print(layer)
print(f"library vs hand-written: max difference {lib_err:.1e}")

# %% [markdown]
# To adapt a whole model, `dlbook.lora.apply_lora` finds the linear layers whose
# names match a pattern (a name suffix such as `"c_attn"`, or a regular expression), replaces
# each by a `LoRALinear`, freezes everything else and returns the names it replaced. A pattern
# that matches nothing is an error that lists the names there are, rather than a silent no-op
# that would train nothing:
#
# ```{literalinclude} ../../dlbook/lora.py
# :pyobject: apply_lora
# ```
#
# **The fused attention projection.** The library's GPT computes queries, keys and values with
# one linear, `c_attn`, of shape $(C + 2 d_{kv}) \times C$ (section 3.4). Targeting `c_attn`
# gives one adapter for all three: a shared $A$ ($r \times C$) and a $B$ whose three row blocks
# update $W_Q$, $W_K$ and $W_V$. Compared with separate adapters of rank $r$ on `q_proj`,
# `k_proj` and `v_proj` (what `peft` does on a Llama checkpoint), this has fewer parameters, the
# three updates share one $r$-dimensional input subspace, and the combined update has rank at
# most $r$ rather than $3r$. It also means that the paper's choice, queries and values but not
# keys, cannot be expressed on a fused layer.
#
# ## Parity with `peft`
#
# Hugging Face's `peft` is the LoRA implementation most people use. Wrapping the same small
# library GPT with both, copying `peft`'s initial $A$ into ours and giving both the same non-zero
# $B$ (with $B = 0$ the comparison would be empty), the logits and the gradients of every LoRA
# matrix agree:

# %%
import peft  # noqa: E402  (a reference library: only this parity check uses it)

torch.manual_seed(0)
tiny = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32)).eval()
targets = ["c_attn", "attn.c_proj"]
theirs = peft.get_peft_model(
    copy.deepcopy(tiny), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets)
)
ours_model = copy.deepcopy(tiny)
names = apply_lora(ours_model, targets, r=4, alpha=8)
for name, lora in lora_layers(ours_model).items():
    ref = theirs.base_model.model.get_submodule(name)
    with torch.no_grad():
        ref.lora_B["default"].weight.normal_(0, 0.1)
        lora.lora_A.weight.copy_(ref.lora_A["default"].weight)
        lora.lora_B.weight.copy_(ref.lora_B["default"].weight)
idx = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
logits_ours, loss_ours = ours_model(idx, targets=idx)
logits_peft, loss_peft = theirs(idx, targets=idx)
loss_ours.backward()
loss_peft.backward()
grad_diff = max(
    (lora.lora_A.weight.grad - theirs.base_model.model.get_submodule(n).lora_A["default"]
     .weight.grad).abs().max().item()
    + (lora.lora_B.weight.grad - theirs.base_model.model.get_submodule(n).lora_B["default"]
       .weight.grad).abs().max().item()
    for n, lora in lora_layers(ours_model).items()
)
logit_diff = (logits_ours - logits_peft).abs().max().item()
n_peft = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
print(f"adapted: {names}")
print(f"logits differ by {logit_diff:.1e}, LoRA gradients by {grad_diff:.1e}; "
      f"trainable: ours {trainable_parameters(ours_model)[0]:,}, peft {n_peft:,}")
assert logit_diff < 1e-5 and grad_diff < 1e-5
assert trainable_parameters(ours_model)[0] == n_peft
glue("s5_4_peft_logit_diff", logit_diff, ".0e")
glue("s5_4_peft_grad_diff", grad_diff, ".0e")
del theirs, ours_model

# %% [markdown]
# The logits agree to {glue}`s5_4_peft_logit_diff` and the gradients to
# {glue}`s5_4_peft_grad_diff`, float32 rounding. The test suite checks the same on a plain
# module with dropout (same random masks), where `peft` also drops the input of the low-rank
# path only.
#
# ## LoRA on SmolLM2
#
# SmolLM2-135M-Instruct, which `dlbook.hub.load` reads into the library's GPT, has 30 blocks of width 576 with grouped-query attention:
# `c_attn` maps 576 to $576 + 2 \cdot 192 = 960$ (9 query heads, 3 key/value heads of width 64)
# and `attn.c_proj` maps 576 to 576. We adapt these two, the attention projections. How many
# parameters that trains, against the alternatives:

# %%
model, tokenizer = load("smollm2-135m")
model.requires_grad_(False)
n_total = trainable_parameters(model)[1]
linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
choices = {
    "c_attn": ["c_attn"],
    "attention (c_attn, attn.c_proj)": ["c_attn", "attn.c_proj"],
    "all linears of the blocks": [r"blocks\..*"],
}
for label, pattern in choices.items():
    per_rank = sum(m.in_features + m.out_features for n, m in linears.items()
                   if name_matches(n, pattern))
    print(f"{label:34s} {per_rank:9,} per unit of rank: r=8 → {8 * per_rank:>10,} "
          f"({8 * per_rank / n_total:.2%} of {n_total / 1e6:.1f} M)")
glue("s5_4_n_total", n_total / 1e6, ".1f")

# %% [markdown]
# ## A held-out domain: the Python documentation
#
# To see LoRA learn something, the model needs text it does not already predict well, and an
# honest test needs text it has not trained on. Every Python installation ships the reference
# manual's topics (`pydoc_data.topics`: the entries `help()` shows, such as `assert` and `with`). We
# split them **by topic**: every fifth topic in alphabetical order is held out, so the held-out
# loss measures how well the model predicts Python-documentation prose about subjects it did not
# train on, not how well it memorised pages.

# %%
topics = pydoc_data.topics.topics
topic_names = sorted(topics)
held_names = topic_names[::5]
train_names = [n for n in topic_names if n not in set(held_names)]
train_ids = torch.tensor(tokenizer.encode("\n\n".join(topics[n] for n in train_names)))
held_ids = torch.tensor(tokenizer.encode("\n\n".join(topics[n] for n in held_names)))
print(f"{len(train_names)} training topics ({len(train_ids):,} tokens), "
      f"{len(held_names)} held-out topics ({len(held_ids):,} tokens), e.g. {held_names[:4]}")
assert not set(train_names) & set(held_names)
glue("s5_4_train_topics", len(train_names))
glue("s5_4_held_topics", len(held_names))
glue("s5_4_train_tokens", len(train_ids), ",")
glue("s5_4_held_tokens", len(held_ids), ",")

# %% [markdown]
# The fine-tune is ordinary next-token training of the adapted model: windows of $T + 1$
# tokens drawn at random from the training topics, AdamW over the LoRA parameters (the only ones
# with `requires_grad`), and the held-out loss measured on fixed windows of the held-out topics.
# Each run is cached (the adapter and its measurements, in a folder keyed by a hash of the
# configuration under `dlbook.config.cache_dir()`), so {doc}`section 5.5 <05_qlora>` and a
# second build reuse it.


# %%
@dataclass(frozen=True)
class PydocLoRAConfig:
    """One LoRA fine-tune of SmolLM2-135M on the training topics of ``pydoc_data.topics``."""

    r: int
    alpha: float = 16.0
    target: tuple[str, ...] = ("c_attn", "attn.c_proj")
    steps: int = 16
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 2e-3
    eval_windows: int = 16
    held_out_every: int = 5
    seed: int = 0


def random_windows(ids: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random windows of ``length`` consecutive tokens: ``(n, length)``."""
    starts = torch.randint(0, len(ids) - length, (n,), generator=gen)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def heldout_loss(model: nn.Module, windows: torch.Tensor, batch: int = 4) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` on ``windows (N, T + 1)``."""
    model.eval()
    losses = [model(w[:, :-1], targets=w[:, 1:])[1].item() * len(w)
              for w in windows.split(batch)]
    return sum(losses) / len(windows)


def train_lora(model: nn.Module, config: PydocLoRAConfig) -> list[float]:
    """Train the LoRA parameters of ``model`` (already applied) for ``config.steps`` steps on
    random training windows; return the training losses."""
    gen = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in tqdm(range(config.steps), desc=f"LoRA r={config.r}", leave=False):
        w = random_windows(train_ids, config.batch_size, config.seq_len + 1, gen)
        _, loss = model(w[:, :-1], targets=w[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def eval_windows(config: PydocLoRAConfig) -> torch.Tensor:
    """The first ``eval_windows`` non-overlapping windows of the held-out topics."""
    n, length = config.eval_windows, config.seq_len + 1
    return held_ids[: n * length].view(n, length)


def pydoc_lora_run(config: PydocLoRAConfig) -> tuple[dict, Path]:
    """The measurements of one fine-tune and the path of its adapter (trained on first use)."""

    def fine_tune(adapter):
        torch.manual_seed(config.seed)  # the initial A
        apply_lora(model, list(config.target), r=config.r, alpha=config.alpha)
        try:
            start = time.perf_counter()
            losses = train_lora(model, config)
            seconds = time.perf_counter() - start
            record = {
                "config": asdict(config),
                "train_losses": losses,
                "seconds_per_step": seconds / config.steps,
                "held_out_loss": heldout_loss(model, eval_windows(config)),
                "trainable": trainable_parameters(model)[0],
            }
            save_adapter(model, adapter)
        finally:
            remove_lora(model)  # the shared base model goes back to its pretrained state
        return record

    record, adapter, _ = cached_record_run("smollm2-pydoc-lora", config, fine_tune)
    return record, adapter


# %% [markdown]
# ## How much rank does it take?
#
# The sweep trains one adapter per rank $r \in \{1, 4, 8, 16\}$, all with $\alpha = 16$, the same
# learning rate, data order and number of steps, and compares the held-out loss with the
# pretrained model's. The step budget is small (sized so that this page builds in minutes on a
# laptop CPU), so read the numbers as "what a few steps buy", not as converged results.

# %%
ranks = pick(smoke=[1, 16], book=[1, 4, 8, 16])
base_config = PydocLoRAConfig(
    r=1,
    steps=pick(smoke=1, book=16),
    seq_len=pick(smoke=16, book=128),
    batch_size=pick(smoke=2, book=4),
    eval_windows=pick(smoke=2, book=16),
)
before = heldout_loss(model, eval_windows(base_config))
runs, adapters = {}, {}
for r_ in ranks:
    cfg = PydocLoRAConfig(**{**asdict(base_config), "r": r_})
    runs[r_], adapters[r_] = pydoc_lora_run(cfg)
    rec = runs[r_]
    print(f"r={r_:2d}: {rec['trainable']:>9,} trainable ({rec['trainable'] / n_total:.3%}), "
          f"held-out loss {before:.3f} → {rec['held_out_loss']:.3f} "
          f"({rec['seconds_per_step']:.2f} s/step)")
assert all(runs[r_]["trainable"] == 80_640 * r_ for r_ in ranks)  # 30 × (1536 + 1152) × r
glue("s5_4_before", before, ".3f")
for r_ in ranks:
    glue(f"s5_4_after_r{r_}", runs[r_]["held_out_loss"], ".3f")
    glue(f"s5_4_frac_r{r_}", runs[r_]["trainable"] / n_total, ".2%")
glue("s5_4_steps", base_config.steps)
glue("s5_4_tokens_per_step", base_config.batch_size * base_config.seq_len)
step_seconds = [runs[r_]["seconds_per_step"] for r_ in ranks]
glue("s5_4_step_min", min(step_seconds), ".1f")
glue("s5_4_step_max", max(step_seconds), ".1f")
best = min(ranks, key=lambda r_: runs[r_]["held_out_loss"])
glue("s5_4_best_r", best)
glue("s5_4_best_gain", before - runs[best]["held_out_loss"], ".3f")
glue("s5_4_r1_gain", before - runs[ranks[0]]["held_out_loss"], ".3f")

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
n_train = [runs[r_]["trainable"] for r_ in ranks]
ax.semilogx(n_train, [runs[r_]["held_out_loss"] for r_ in ranks], "o-", label="after LoRA")
for r_, n in zip(ranks, n_train, strict=True):
    ax.annotate(f"r={r_}", (n, runs[r_]["held_out_loss"]), textcoords="offset points",
                xytext=(4, 6))
ax.axhline(before, color="gray", ls="--", label="pretrained SmolLM2")
ax.set(xlabel="trainable parameters", ylabel="held-out loss (nats/token)",
       title="LoRA on the attention projections of SmolLM2-135M")
ax.legend()
fig.tight_layout()
glue("s5_4_rank_fig", fig)  # shown below, with its caption, by {glue:figure}
plt.close(fig)
if checks_enabled():
    assert all(runs[r_]["held_out_loss"] < before - 0.05 for r_ in ranks)

# %% [markdown]
# ```{glue:figure} s5_4_rank_fig
# :name: fig-5-4-rank
# Held-out next-token loss of SmolLM2-135M on Python-documentation topics it did not train on,
# after {glue}`s5_4_steps` LoRA steps of {glue}`s5_4_tokens_per_step` tokens, against the number
# of trainable parameters.
# ```
#
# Before fine-tuning the model's loss on the held-out topics is {glue}`s5_4_before` nats per
# token. Every rank lowers it (asserted): to {glue}`s5_4_after_r1` at $r = 1$, where
# {glue}`s5_4_frac_r1` of the parameters train, and to {glue}`s5_4_after_r16` at $r = 16$
# ({glue}`s5_4_frac_r16`). The best rank of this run is $r =$ {glue}`s5_4_best_r`, a gain of
# {glue}`s5_4_best_gain` nats against {glue}`s5_4_r1_gain` for $r = 1$: the two gains show how much
# of what {glue}`s5_4_steps` steps can learn about unseen topics of the same documentation a
# rank-1 update of each attention projection already captures. (This is one seed and short runs:
# do not over-read small differences between ranks. The third exercise below looks at how much of its rank a
# trained adapter uses.) A training step took between
# {glue}`s5_4_step_min` and {glue}`s5_4_step_max` s across the ranks, on the machine that built
# this page. An adapter of rank $r$ on a $d_\text{out} \times d_\text{in}$ layer costs
# $r(d_\text{in} + d_\text{out})$ multiply-adds per token against the layer's
# $d_\text{in} d_\text{out}$, so the frozen model's forward and backward passes are most of the
# work at every rank. The backward pass must still run through the whole network, because the
# adapters of the first block need the gradient that arrives from the last one; what LoRA saves
# is the *weight* gradients of the frozen matrices and their optimizer state.
#
# ## The same sweep on a classifier
#
# A language model's loss is one kind of task; section {doc}`03_classification` fine-tuned
# all-MiniLM-L6-v2 on Reuters R8 with a linear head, the top layers or every weight. LoRA is a
# fourth way: adapters on every linear layer of the encoder's blocks (attention's fused
# $W_Q, W_K, W_V$ and output projection, both MLP layers: 24 layers in six blocks) and a
# new head, which must train in full since it starts from nothing. The library adds it as
# `method="lora"` of `dlbook.finetune.R8Config`, cached like the other methods. To keep the
# six runs short on a laptop CPU, every run here reads only the first {glue}`s5_4_r8_len`
# tokens of each document (section 5.3 used {glue}`s5_4_r8_len_53`) and is tested on the first
# {glue}`s5_4_r8_test` test documents; the head-only and full fine-tuning runs are repeated
# with these document lengths and test documents so that all six are compared on the same
# inputs. Together they trained for {glue}`s5_4_r8_seconds` s on the machine that built this
# page.

# %%
r8_settings = {"max_len": pick(smoke=24, book=32), "n_test": pick(smoke=48, book=400)}
lora_base = r8_config("lora")  # the library's book settings for this sweep
r8_configs = {
    "head only": replace(r8_config("frozen"), **r8_settings),
    **{f"LoRA r={r_}": replace(lora_base, lora_r=r_, **r8_settings) for r_ in ranks},
    # full fine-tuning with the same steps, batch and head learning rate as LoRA
    "full": replace(r8_config("full"), steps=lora_base.steps, batch_size=lora_base.batch_size,
                    head_lr=lora_base.head_lr, **r8_settings),
}
r8_runs = {name: finetuned_r8_classifier(config=c, progress=False).metrics
           for name, c in r8_configs.items()}
print(f"{'method':10s} {'trainable':>11s} {'accuracy':>9s} {'macro-F1':>9s} {'s/step':>7s}")
for name, m in r8_runs.items():
    print(f"{name:10s} {m['trainable_params']:>11,} {m['test_accuracy']:>9.1%} "
          f"{m['test_macro_f1']:>9.3f} {m['seconds_per_step']:>7.2f}")
r8_lora = {r_: r8_runs[f"LoRA r={r_}"] for r_ in ranks}
head_params = r8_runs["head only"]["trainable_params"]
for r_, m in r8_lora.items():  # 24 adapted layers; c_attn 384 → 1152, MLP 384 ↔ 1536
    assert m["trainable_params"] - head_params == r_ * 6 * (1536 + 768 + 1920 + 1920)
glue("s5_4_r8_len", r8_settings["max_len"])
glue("s5_4_r8_test", r8_settings["n_test"])
glue("s5_4_r8_docs_per_point", r8_settings["n_test"] / 100, ".2g")
glue("s5_4_r8_steps", lora_base.steps)
glue("s5_4_r8_batch", lora_base.batch_size)
glue("s5_4_r8_head_steps", r8_configs["head only"].steps)
glue("s5_4_r8_head_batch", r8_configs["head only"].batch_size)
glue("s5_4_r8_len_53", r8_config("full").max_len)
glue("s5_4_r8_seconds", sum(m["train_seconds"] + m["encode_seconds"] for m in r8_runs.values()),
     ".0f")
glue("s5_4_r8_encoder_m", (r8_runs["full"]["trainable_params"] - head_params) / 1e6, ".1f")
lora_f1 = [m["test_macro_f1"] for m in r8_lora.values()]
glue("s5_4_r8_lora_f1_min", min(lora_f1), ".3f")
glue("s5_4_r8_lora_f1_max", max(lora_f1), ".3f")
for name, key in (("head only", "head"), ("full", "full")):
    glue(f"s5_4_r8_{key}_acc", r8_runs[name]["test_accuracy"], ".1%")
    glue(f"s5_4_r8_{key}_f1", r8_runs[name]["test_macro_f1"], ".3f")
for r_, m in r8_lora.items():
    glue(f"s5_4_r8_r{r_}_acc", m["test_accuracy"], ".1%")
lora_acc = [m["test_accuracy"] for m in r8_lora.values()]
glue("s5_4_r8_lora_min", min(lora_acc), ".1%")
glue("s5_4_r8_lora_max", max(lora_acc), ".1%")
glue("s5_4_r8_r16_frac", r8_lora[ranks[-1]]["trainable_params"]
     / r8_runs["full"]["trainable_params"], ".1%")
lora_steps = sorted(m["seconds_per_step"] for m in r8_lora.values())
glue("s5_4_r8_step_ratio", r8_runs["full"]["seconds_per_step"]
     / lora_steps[len(lora_steps) // 2], ".1f")  # against the median LoRA step

fig, ax = plt.subplots(figsize=(6, 3.4))
xs = [m["trainable_params"] for m in r8_lora.values()]
ax.semilogx(xs, lora_acc, "o-", label="LoRA (adapters and head)")
for r_, x_, y_ in zip(ranks, xs, lora_acc, strict=True):
    ax.annotate(f"r={r_}", (x_, y_), textcoords="offset points", xytext=(4, -12))
for name, marker in (("head only", "s"), ("full", "D")):
    m = r8_runs[name]
    ax.semilogx([m["trainable_params"]], [m["test_accuracy"]], marker, ms=7, label=name)
ax.set(xlabel="trainable parameters", ylabel="test accuracy",
       title=f"MiniLM on R8 ({r8_settings['max_len']} tokens per document)")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()
if checks_enabled():
    assert min(lora_acc) > 0.9 and r8_runs["full"]["test_accuracy"] > 0.9
    # LoRA is not worse than the head alone by more than a few documents at any rank
    assert min(lora_acc) >= r8_runs["head only"]["test_accuracy"] - 0.01
    assert abs(max(lora_acc) - r8_runs["full"]["test_accuracy"]) <= 0.02

# %% [markdown]
# With {glue}`s5_4_r8_steps` steps of {glue}`s5_4_r8_batch` documents for LoRA and full
# fine-tuning (the head alone, trained on cached features, keeps its
# {glue}`s5_4_r8_head_steps` steps of {glue}`s5_4_r8_head_batch`), the head alone reaches
# {glue}`s5_4_r8_head_acc` accuracy (macro-F1 {glue}`s5_4_r8_head_f1`), full fine-tuning
# {glue}`s5_4_r8_full_acc` (macro-F1 {glue}`s5_4_r8_full_f1`), and LoRA between
# {glue}`s5_4_r8_lora_min` and {glue}`s5_4_r8_lora_max` across the ranks ($r = 1$:
# {glue}`s5_4_r8_r1_acc`, $r = 16$: {glue}`s5_4_r8_r16_acc`) while training at most
# {glue}`s5_4_r8_r16_frac` as many parameters as full fine-tuning. On
# {glue}`s5_4_r8_test` test documents one point of accuracy is
# {glue}`s5_4_r8_docs_per_point` documents, so these differences are within the noise of a
# single seed: at this budget the adapters do as well as full fine-tuning (asserted: the best
# rank within two points of it, every rank within one point of the head alone or better), and
# on documents cut to {glue}`s5_4_r8_len` tokens neither is far ahead of a well-trained head.
# Macro-F1, in which R8's rarest topics (a handful of the test documents) weigh as much as the
# commonest, moves more: {glue}`s5_4_r8_lora_f1_min` to {glue}`s5_4_r8_lora_f1_max` across the
# ranks. By accuracy the rank hardly matters here, as it hardly mattered for SmolLM2 above. A
# full fine-tuning step took {glue}`s5_4_r8_step_ratio` times as long as a typical (median)
# LoRA step: both run the whole backward pass, but LoRA skips the weight gradients of the
# frozen matrices and AdamW's update of {glue}`s5_4_r8_encoder_m` million encoder parameters.
#
# ## The memory saved
#
# Measured rather than computed: one AdamW step on a short batch, once with every parameter
# trainable (full fine-tuning) and once with the rank-8 adapters, counting the bytes of the
# gradients and of the optimizer's state (`dlbook.finetune.optimizer_state_bytes`). The learning
# rate is zero so the step does not change the model.


# %%
def training_state_bytes(model: nn.Module) -> tuple[int, int]:
    """Gradient bytes and AdamW state bytes after one step on the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)  # lr 0: weights unchanged
    w = held_ids[:17].view(1, 17)
    _, loss = model(w[:, :-1], targets=w[:, 1:])
    loss.backward()
    opt.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
    state = optimizer_state_bytes(opt)
    opt.zero_grad(set_to_none=True)
    return grads, state


model.requires_grad_(True)
full_grads, full_state = training_state_bytes(model)
model.requires_grad_(False)
apply_lora(model, ["c_attn", "attn.c_proj"], r=8, alpha=16.0)
lora_grads, lora_state = training_state_bytes(model)
remove_lora(model)
mb = 1e6
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(f"full fine-tune: gradients {full_grads / mb:7.1f} MB, AdamW state {full_state / mb:7.1f} MB")
print(f"LoRA r=8:       gradients {lora_grads / mb:7.1f} MB, AdamW state {lora_state / mb:7.1f} MB")
saving = (full_grads + full_state) / (lora_grads + lora_state)
assert full_grads == 4 * n_total and lora_grads == 4 * 80_640 * 8
assert saving > 100
glue("s5_4_full_mb", (full_grads + full_state) / mb, ".0f")
glue("s5_4_lora_mb", (lora_grads + lora_state) / mb, ".1f")
glue("s5_4_saving", saving, ".0f")
glue("s5_4_model_mb", model_bytes / mb, ".0f")

# %% [markdown]
# Gradients and AdamW moments take {glue}`s5_4_full_mb` MB for full fine-tuning of this 135 M
# model in float32 and {glue}`s5_4_lora_mb` MB with rank-8 adapters, {glue}`s5_4_saving` times
# less. The weights themselves ({glue}`s5_4_model_mb` MB in float32) and the activations are needed either way;
# the activations are what the next lever, a smaller batch or activation checkpointing, acts on,
# and the frozen weights are what quantisation shrinks in {doc}`section 5.5 <05_qlora>`.
#
# ## Adapters as files
#
# A fine-tuned variant is now just its LoRA tensors. `dlbook.lora.save_adapter`
# writes them as a safetensors file, atomically, with the rank, $\alpha$, the adapted layers
# and a fingerprint of the base model's architecture in its metadata;
# `dlbook.lora.load_adapter` checks all of them before it copies anything. One adapter of the
# sweep (rank 8 in the `book` profile), loaded into the pretrained model, reproduces the held-out loss measured
# when it was trained, merged or not:

# %%
r_show = ranks[-2] if len(ranks) > 2 else ranks[-1]
show_config = PydocLoRAConfig(**{**asdict(base_config), "r": r_show})
path = adapters[r_show]
meta = adapter_metadata(path)
print({k: v for k, v in meta.items() if k != "targets"}, f"{len(meta['targets'])} layers")
apply_lora(model, list(show_config.target), r=meta["r"], alpha=meta["alpha"])
load_adapter(model, path)
reloaded = heldout_loss(model, eval_windows(show_config))
merge_lora(model)
merged = heldout_loss(model, eval_windows(show_config))
unmerge_lora(model)
print(f"held-out loss: recorded {runs[r_show]['held_out_loss']:.4f}, reloaded {reloaded:.4f}, "
      f"merged {merged:.4f}")
assert abs(reloaded - runs[r_show]["held_out_loss"]) < 1e-4 and abs(merged - reloaded) < 1e-3
adapter_bytes = os.path.getsize(path)
print(f"adapter file {adapter_bytes / 1e6:.2f} MB vs model weights {model_bytes / 1e6:.0f} MB")
assert 100 * adapter_bytes < model_bytes
glue("s5_4_show_r", r_show)
glue("s5_4_adapter_mb", adapter_bytes / 1e6, ".2f")

# %% [markdown]
# The rank-{glue}`s5_4_show_r` adapter is a {glue}`s5_4_adapter_mb` MB file, against
# {glue}`s5_4_model_mb` MB for the model's weights: a hundred task variants of the model fit in
# less space than a second copy of it. A file is refused, before anything is loaded, when it
# does not fit: another base model, another rank, other target layers:

# %%
remove_lora(model)
apply_lora(model, list(show_config.target), r=meta["r"] * 2, alpha=meta["alpha"])
print("other rank    →", error_message(lambda: load_adapter(model, path)))
remove_lora(model)
apply_lora(model, ["c_attn"], r=meta["r"], alpha=meta["alpha"])
print("other targets →", error_message(lambda: load_adapter(model, path)))
remove_lora(model)
other = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32))
apply_lora(other, "c_attn", r=meta["r"], alpha=meta["alpha"])
print("other model   →", error_message(lambda: load_adapter(other, path)))
print("no match      →", error_message(lambda: apply_lora(model, "q_proj")))

# %% [markdown]
# ## Summary
#
# * LoRA freezes a pretrained weight $W_0$ and learns a low-rank update,
#   $W = W_0 + \frac{\alpha}{r} BA$ with $B \in \mathbb{R}^{d_\text{out} \times r}$,
#   $A \in \mathbb{R}^{r \times d_\text{in}}$: $r(d_\text{in} + d_\text{out})$ parameters per
#   matrix instead of $d_\text{in} d_\text{out}$.
# * $B = 0$ at the start makes the adapted model exactly the pretrained one; then only $B$
#   receives a gradient on the first step. The factor $\alpha / r$ lets the rank change without
#   re-tuning the learning rate.
# * After training, $\frac{\alpha}{r} BA$ merges into $W_0$ (no inference overhead) and can be
#   subtracted again.
# * The library's `LoRALinear`/`apply_lora` match the hand-written layer and `peft` (logits to
#   {glue}`s5_4_peft_logit_diff`). On a fused `c_attn`, one adapter serves $Q$, $K$ and $V$.
# * On SmolLM2-135M, adapting the attention projections lowers the held-out loss on unseen
#   Python-documentation topics from {glue}`s5_4_before` to {glue}`s5_4_after_r1` with rank 1;
#   gradients and optimizer state shrink {glue}`s5_4_saving`-fold at rank 8, and the adapter is
#   a {glue}`s5_4_adapter_mb` MB file checked against its base model when loaded.
# * On R8, adapters on every layer of MiniLM (with a new head) reach {glue}`s5_4_r8_lora_min`
#   to {glue}`s5_4_r8_lora_max` accuracy across the ranks, against {glue}`s5_4_r8_head_acc` for
#   the head alone and {glue}`s5_4_r8_full_acc` for full fine-tuning, on the same documents.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-5-4-1
# ```
# Count by hand the LoRA parameters of SmolLM2-135M with rank $r$ on (a) `c_attn` only and
# (b) every linear layer of the blocks (`c_attn`, `attn.c_proj`, `gate`, `up`, `mlp.c_proj`), and
# check both against `trainable_parameters` after `apply_lora`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-4-1
# :class: dropdown
# ```
# Each adapted $d_\text{out} \times d_\text{in}$ matrix adds $r(d_\text{in} + d_\text{out})$.
# Per block: `c_attn` $r(576 + 960) = 1536r$; `attn.c_proj` $1152r$; `gate` and `up`
# $r(576 + 1536) = 2112r$ each; `mlp.c_proj` $2112r$. Over 30 blocks: (a) $46{,}080\,r$ and
# (b) $30 \cdot 9024\, r = 270{,}720\, r$.

# %%
for pattern, per_rank in ((["c_attn"], 46_080), ([r"blocks\.\d+\.(attn|mlp)\.\w+"], 270_720)):
    apply_lora(model, pattern, r=2)
    assert trainable_parameters(model)[0] == 2 * per_rank, pattern
    remove_lora(model)
print("both counts check")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-4-2
# ```
# Initialise *both* $A$ and $B$ at zero in a `LoRALinear` and take a few optimizer steps on a
# regression target. What happens, and why? What if instead $A = 0$ and $B$ is random?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-4-2
# :class: dropdown
# ```
# With $A = B = 0$ both gradients, $\frac{\alpha}{r} B^\top g x^\top$ and
# $\frac{\alpha}{r} g (Ax)^\top$, are zero: the adapter never leaves zero (a saddle point of the
# loss in $(A, B)$). With $A = 0$ and $B$ random the model also starts unchanged, and $A$ gets
# the first gradient instead of $B$; that works too, and is the choice of some other methods.

# %%
def steps_from(a_init: torch.Tensor, b_init: torch.Tensor, steps: int = 5) -> float:
    torch.manual_seed(0)
    lay = LoRALinear(nn.Linear(16, 8), r=2, alpha=2)
    with torch.no_grad():
        lay.lora_A.weight.copy_(a_init)
        lay.lora_B.weight.copy_(b_init)
    opt = torch.optim.SGD([lay.lora_A.weight, lay.lora_B.weight], lr=0.1)
    xs, ys = torch.randn(32, 16), torch.randn(32, 8)
    for _ in range(steps):
        opt.zero_grad()
        (lay(xs) - ys).square().mean().backward()
        opt.step()
    return float(lay.delta_weight().detach().norm())


both_zero = steps_from(torch.zeros(2, 16), torch.zeros(8, 2))
a_zero = steps_from(torch.zeros(2, 16), torch.randn(8, 2))
print(f"|ΔW| after 5 steps: A=B=0 → {both_zero:.3g}; A=0, B random → {a_zero:.3g}")
assert both_zero == 0.0 and a_zero > 0

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-4-3
# ```
# How much of its rank does a trained adapter use? Load the rank-16 adapter of the sweep and
# compute the singular values of $\frac{\alpha}{r}BA$ for the `c_attn` of a few blocks. How many
# of the 16 carry 90 % of the squared norm?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-4-3
# :class: dropdown
# ```
# Take the singular values $\sigma_1 \ge \dots \ge \sigma_{16}$ of each update and count the
# smallest $k$ with $\sum_{i \le k} \sigma_i^2 \ge 0.9 \sum_i \sigma_i^2$. A $k$ well below 16
# means the update is effectively of lower rank than it was allowed; a $k$ close to 16 means
# that the adapter spreads its (short) training over all its directions. The run below prints
# $k$ for three blocks of the cached adapter.

# %%
r_big = ranks[-1]
big_config = PydocLoRAConfig(**{**asdict(base_config), "r": r_big})
apply_lora(model, list(big_config.target), r=r_big, alpha=big_config.alpha)
load_adapter(model, adapters[r_big])
for i in (0, 14, 29):
    s = torch.linalg.svdvals(model.blocks[i].attn.c_attn.delta_weight())
    energy = (s.square().cumsum(0) / s.square().sum()).tolist()
    k = next(j + 1 for j, e in enumerate(energy) if e >= 0.9)
    print(f"block {i:2d}: {k} of {r_big} singular values hold 90 % of |ΔW|²")
    assert 1 <= k <= r_big
remove_lora(model)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-4-4
# ```
# Show that merging removes the inference overhead: time a forward pass of SmolLM2 on a batch of
# 4 × 128 tokens with rank-16 adapters unmerged, merged, and without adapters.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-4-4
# :class: dropdown
# ```
# Unmerged, each adapted layer runs two extra small matrix products per token; merged, the
# model is the base architecture with different weights, and its forward pass costs the same as
# the pretrained model's (up to timing noise).

# %%
def forward_seconds(repeats: int = pick(smoke=1, book=2)) -> float:
    w = held_ids[: 4 * pick(smoke=16, book=128)].view(4, -1)
    with torch.no_grad():
        model(w)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(w)
    return (time.perf_counter() - start) / repeats


apply_lora(model, list(big_config.target), r=r_big, alpha=big_config.alpha)
t_unmerged = forward_seconds()
merge_lora(model)
t_merged = forward_seconds()
remove_lora(model)
t_base = forward_seconds()
print(f"forward: unmerged {t_unmerged:.3f} s, merged {t_merged:.3f} s, base {t_base:.3f} s")

# %% [markdown]
# ```{solution-end}
# ```
