# %% [markdown]
# # Instruction tuning
#
# A pretrained language model continues text; an assistant answers questions. The step between
# the two is **supervised fine-tuning** (SFT) on conversations: prompts written as a user would
# write them, each followed by the answer the model should give, trained with the ordinary
# next-token loss but counted on the answers only. Wei et al. {cite:p}`wei2022finetuned` showed
# that fine-tuning on many tasks phrased as instructions makes a model follow instructions for
# tasks it never saw, and SFT is the first of the three stages of InstructGPT
# {cite:p}`ouyang2022training`, whose later stages (a reward model, then PPO) sections 5.7 and
# 5.8 replace with DPO and GRPO.
#
# SmolLM2-135M-Instruct has been through this already, on general chat data; this section
# teaches it something it does not do: answer a question with *the answer only*, exactly, so a
# program can check it. It builds the pieces from scratch: a data set with verifiable answers,
# the loss mask, padding and packing (with a proof that packed examples do not see each other),
# and an evaluation on held-out questions, before and after, with LoRA ({doc}`04_lora`) and
# with full fine-tuning compared.

# %%
import copy
import time

import matplotlib.pyplot as plt
import torch

from dlbook import checks_enabled, pick, seed_everything
from dlbook.bench import seconds_per_call
from dlbook.book import error_message, glue
from dlbook.data.tasks import exact_match, make_tasks, split_of, well_formed
from dlbook.evaluate import evaluate, stop_token
from dlbook.hub import load
from dlbook.lora import apply_lora
from dlbook.nn.losses import IGNORE_INDEX
from dlbook.sft import (
    SFTConfig,
    answer_loss,
    book_sft_config,
    pack_examples,
    pad_batch,
    render_chat,
    sft_run,
    task_example,
)

_ = seed_everything(0)
model, tokenizer = load("smollm2-135m")
model.requires_grad_(False)
PAD = stop_token(tokenizer)  # any id will do: never a target

# %% [markdown]
# ## Conversations as token sequences
#
# {doc}`Section 5.2 <02_real_decoder>` showed SmolLM2's chat template, ChatML: every turn is
# `<|im_start|>role\n...<|im_end|>\n`, and a conversation without a system turn gets a default
# one. A training example is a whole conversation, tokenised; `dlbook.sft.render_chat` also
# marks which tokens the model should learn to produce: the assistant's words and the
# `<|im_end|>` that ends its turn (so that it learns to stop), not the headers and not the
# user's words. Here is one example, the trained tokens in brackets:

# %%
conversation = [
    {"role": "user", "content": "What is 47 + 38? Answer with the number only."},
    {"role": "assistant", "content": "85"},
]
ex = render_chat(tokenizer, conversation)
shown = "".join(
    f"[{tokenizer.decode([i])}]" if keep else tokenizer.decode([i])
    for i, keep in zip(ex.ids, ex.trained, strict=True)
)
print(shown)
print(f"{len(ex)} tokens, {sum(ex.trained)} trained")
assert list(ex.ids) == tokenizer.apply_chat_template(conversation, tokenize=True)
answer_ids = [i for i, k in zip(ex.ids, ex.trained, strict=True) if k]
assert tokenizer.decode(answer_ids) == "85<|im_end|>"
glue("s5_6_example_tokens", len(ex))
glue("s5_6_example_trained", sum(ex.trained))

# %% [markdown]
# Of {glue}`s5_6_example_tokens` tokens, {glue}`s5_6_example_trained` are trained. The loss is the
# mean negative log-likelihood over the set $A$ of trained positions only,
#
# $$
# \mathcal{L} = -\frac{1}{|A|} \sum_{t \in A} \log p_\theta(x_t \mid x_{<t}),
# $$
#
# implemented, as in every section before, by setting the target of every other position to
# the ignore index $-100$ (`IGNORE_INDEX`). Two reasons for the mask: the prompt is given at
# inference, so learning to predict it spends capacity on the wrong thing, and in real data
# prompts are long while answers are short, so an unmasked loss would be mostly about prompts.
# The claim to check is that the masked positions contribute *exactly* nothing: the gradient of
# the loss with respect to the logits at prompt positions is zero, not small.

# %%
inputs, targets = ex.inputs_targets()
idx, tgt = torch.tensor([inputs]), torch.tensor([targets])
logits = model(idx)[0].detach().requires_grad_()
loss = torch.nn.functional.cross_entropy(logits[0], tgt[0], ignore_index=IGNORE_INDEX)
loss.backward()
prompt_rows = tgt[0] == IGNORE_INDEX
print(f"loss {loss.item():.3f}; |grad| at {int(prompt_rows.sum())} prompt positions: "
      f"{logits.grad[0, prompt_rows].abs().max().item()}, at the answer: "
      f"{logits.grad[0, ~prompt_rows].abs().max().item():.3f}")
assert torch.count_nonzero(logits.grad[0, prompt_rows]) == 0
assert logits.grad[0, ~prompt_rows].abs().max() > 0
# The library's answer_loss computes the head only at the trained positions: the same number.
torch.testing.assert_close(answer_loss(model, idx, tgt), loss.detach())
# The head's share of the multiply-adds per token: lm_head against the blocks' linear layers.
head_macs = model.config.n_embd * model.config.vocab_size
block_macs = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.startswith("blocks."))
head_share = head_macs / (head_macs + block_macs)
assert (model.config.n_embd, model.config.vocab_size) == (576, 49152)
assert 0.15 < head_share < 0.25 and len(tokenizer.encode("85")) == 2
glue("s5_6_head_share", head_share, ".0%")

# %% [markdown]
# `dlbook.sft.answer_loss` gives the same loss without computing the logits where nothing is
# learnt: the language-model head of SmolLM2 maps 576 numbers to 49,152 at every position,
# {glue}`s5_6_head_share` of the multiply-adds per token (attention scores aside), and here
# {glue}`s5_6_example_trained` of {glue}`s5_6_example_tokens` positions need it. (SmolLM2 splits numbers into single digits,
# so "85" is two tokens.)
#
# ## A data set with checkable answers
#
# No instruction-tuning set ships offline, so `dlbook.data.tasks` generates one. Each question
# has one exact answer that a program checks; four families ask for a sum of two two-digit
# numbers, four numbers sorted, a unit conversion and the larger of two numbers, always "with the
# number only" (or "the sorted list only"). A question belongs to the held-out split when the
# CRC-32 of its text is divisible by 4, so the split does not depend on the seed and a held-out
# question can never appear in training.

# %%
n_test = pick(smoke=4, book=80)
test_tasks = make_tasks(n_test, "test")
train_tasks = make_tasks(pick(smoke=8, book=256), "train")
for t in test_tasks[:4]:
    print(f"{t.family:8s} {t.prompt!r} → {t.answer!r}")
assert not {t.prompt for t in train_tasks} & {t.prompt for t in test_tasks}
assert all(split_of(t.prompt) == "test" for t in test_tasks)
glue("s5_6_n_test", n_test)

# %% [markdown]
# The model as published answers them like this (greedy decoding, at most 16 new tokens,
# `dlbook.evaluate.evaluate`, which answers all questions in batches with the key/value cache and
# reports the exact-match rate with a 95 % Wilson interval {cite:p}`wilson1927probable`):

# %%
before = evaluate(model, tokenizer, test_tasks, exact_match)
for t, c in list(zip(test_tasks, before.completions, strict=True))[:4]:
    print(f"{t.answer!r:>18} ← {c!r}")
print(f"exact match before fine-tuning: {before}")
glue("s5_6_before", before.mean, ".0%")
if checks_enabled():
    assert sum(not well_formed(c) for c in before.completions) > n_test / 2  # mostly prose
glue("s5_6_before_high", before.high, ".0%")

# %% [markdown]
# It explains its way towards an answer ("To solve this, we need to add ...") and runs out of
# tokens, or answers in a sentence: {glue}`s5_6_before` exact matches out of
# {glue}`s5_6_n_test` held-out questions (the 95 % interval reaches up to
# {glue}`s5_6_before_high`). Whether it *could* add is a separate question; it does not do
# what was asked.
#
# ## Padding and packing
#
# Examples differ in length. **Padding** fills each row of a batch up to the longest example
# with a filler id whose target is ignored; with causal attention the real tokens never look at
# the filler that follows them, so no attention mask is needed, but the filler costs compute.
# **Packing** concatenates several examples into each row of fixed length, wasting only the
# row's tail. Concatenated, though, later examples would attend to earlier ones, which they
# never see at inference. The library prevents it {cite:p}`krell2021efficient`: `pack_examples`
# returns a segment label per token, and `GPT.forward(..., segments=...)` builds a block-diagonal
# causal mask from them (a token attends to earlier tokens *of its own segment*) and restarts the
# positions at every segment, so each example is computed as if it were alone, up to float
# rounding:
#
# ```{literalinclude} ../../dlbook/nn/attention.py
# :pyobject: segment_mask
# ```
#
# The check, on SmolLM2 itself: three conversations packed into one row give the logits each
# gives alone, and changing the first one's tokens does not change the others' logits by a
# single bit.

# %%
packed_examples = [task_example(tokenizer, t) for t in train_tasks[:3]]
p_idx, p_targets, p_seg = pack_examples(packed_examples, 256, PAD)
with torch.no_grad():
    packed_logits = model(p_idx, segments=p_seg)[0]
    start, isolation_err = 0, 0.0
    for e in packed_examples:
        alone = model(torch.tensor([e.inputs_targets()[0]]))[0]
        isolation_err = max(isolation_err, (packed_logits[:, start : start + len(e) - 1] - alone)
                            .abs().max().item())
        start += len(e) - 1
    changed = p_idx.clone()
    n_first = len(packed_examples[0]) - 1
    changed[0, :n_first] = torch.randint(0, 49152, (n_first,))
    rest = model(changed, segments=p_seg)[0][:, n_first:start]
    leak = (rest - packed_logits[:, n_first:start]).abs().max().item()
    unmasked = (model(p_idx)[0][:, n_first:start] - packed_logits[:, n_first:start]).abs().max()
print(f"packed vs alone: max |diff| {isolation_err:.1e}; after changing example 1: {leak}; "
      f"without the segment mask: {unmasked.item():.2f}")
assert isolation_err < 1e-3 and leak == 0.0 and unmasked > 1.0
glue("s5_6_isolation_err", isolation_err, ".0e")
glue("s5_6_unmasked_diff", unmasked.item(), ".1f")

# %% [markdown]
# Packed and alone agree to {glue}`s5_6_isolation_err` (float32 rounding of differently shaped
# matrix products), changing another example changes nothing at
# all, and without segment labels (no mask, positions not restarted) the logits move by up to
# {glue}`s5_6_unmasked_diff`.
#
# What packing buys is measured in training tokens per second: the same examples, one forward
# and backward pass through a LoRA-adapted SmolLM2, padded (one example per row) and packed into
# rows of 256 tokens.

# %%
bench_examples = [task_example(tokenizer, t) for t in train_tasks[: pick(smoke=4, book=32)]]
lora_model = copy.deepcopy(model)
apply_lora(lora_model, [r"blocks\..*"], r=8, alpha=16)
real_tokens = sum(len(e) - 1 for e in bench_examples)


def step(*batch):
    """One forward and backward pass of the answer loss on a batch."""
    lora_model.zero_grad(set_to_none=True)
    answer_loss(lora_model, *batch).backward()


padded = pad_batch(bench_examples, PAD)
packed = pack_examples(bench_examples, 256, PAD)
rows = {"padded": padded, "packed": packed}
speed = {}
for name, batch in rows.items():
    seconds = seconds_per_call(lambda b=batch: step(*b), repeats=pick(smoke=1, book=3))
    speed[name] = real_tokens / seconds
    print(f"{name}: batch {tuple(batch[0].shape)}, {real_tokens / batch[0].numel():.0%} real tokens,"
          f" {speed[name]:.0f} real tokens/s")
fill = {name: real_tokens / batch[0].numel() for name, batch in rows.items()}
assert fill["packed"] > fill["padded"]
glue("s5_6_fill_padded", fill["padded"], ".0%")
glue("s5_6_fill_packed", fill["packed"], ".0%")
glue("s5_6_speed_padded", speed["padded"], ".0f")
glue("s5_6_speed_packed", speed["packed"], ".0f")

# %% [markdown]
# Padded, {glue}`s5_6_fill_padded` of the positions hold real tokens; packed,
# {glue}`s5_6_fill_packed`. The measured throughput was {glue}`s5_6_speed_padded` real tokens
# per second padded and {glue}`s5_6_speed_packed` packed, on the machine that built this page.
# Packing wins only if the saved positions outweigh the cost of the segment mask (an explicit
# mask can rule out the fastest fused attention kernels, and a shared machine makes such
# timings noisy). Our questions are of similar lengths, so little is saved here; with real
# instruction data, whose lengths vary from a few tokens to thousands, padding can waste much of
# the batch, and packing is common.
#
# ## Fine-tuning: LoRA and every weight
#
# Both runs see the same 256 training questions in the same order, 16 packed batches of 16
# conversations, with AdamW: the LoRA run adapts every linear layer of the blocks with rank 8
# ($\alpha = 16$, learning rate $2 \cdot 10^{-3}$), the full run trains all 135 M weights
# with the usual much smaller learning rate, $5 \cdot 10^{-5}$. Each is
# evaluated on the held-out questions; `dlbook.sft.sft_run` caches the measurements and the
# LoRA adapter, which sections {doc}`5.7 <07_dpo>` and {doc}`5.8 <08_grpo>` start from.

# %%
configs = {
    "LoRA (r = 8)": book_sft_config(),
    "full": pick(
        smoke=SFTConfig(method="full", steps=1, examples_per_step=2, n_test=4, lr=5e-5),
        book=SFTConfig(method="full", lr=5e-5),
    ),
}
records = {}
for label, config in configs.items():
    start = time.perf_counter()
    records[label], _ = sft_run(model, tokenizer, config)
    print(f"{label}: {time.perf_counter() - start:.0f} s (cached runs take a second)")
lora_rec, full_rec = records["LoRA (r = 8)"], records["full"]

print(f"{'':14s} {'exact match':>24s} {'trainable':>12s} {'AdamW state':>12s} {'s/step':>7s}")
print(f"{'pretrained':14s} {before.mean:>7.0%} [{before.low:.0%}, {before.high:.0%}]"
      f"{'':>10s} {'-':>12s} {'-':>12s} {'-':>7s}")
for label, rec in records.items():
    em, low, high = rec["exact_match"]
    print(f"{label:14s} {em:>7.0%} [{low:.0%}, {high:.0%}]{'':>10s} {rec['trainable']:>12,} "
          f"{rec['optimizer_state_bytes'] / 1e6:>9.1f} MB {rec['seconds_per_step']:>7.1f}")
print("per family:", {label: rec["by_family"] for label, rec in records.items()})
for rec in records.values():
    glue(f"s5_6_{rec['config']['method']}_em", rec["exact_match"][0], ".0%")
    glue(f"s5_6_{rec['config']['method']}_low", rec["exact_match"][1], ".0%")
    glue(f"s5_6_{rec['config']['method']}_state", rec["optimizer_state_bytes"] / 1e6, ",.1f")
    glue(f"s5_6_{rec['config']['method']}_step", rec["seconds_per_step"], ".1f")
    glue(f"s5_6_{rec['config']['method']}_trainable", rec["trainable"], ",")
if checks_enabled():
    cfg = configs["LoRA (r = 8)"]  # the settings the prose states
    assert (cfg.steps, cfg.examples_per_step, cfg.r, cfg.alpha, cfg.lr) == (16, 16, 8, 16.0, 2e-3)
    assert configs["full"].lr == 5e-5 and configs["full"].steps == cfg.steps
    # The improvement is large and certain: the intervals do not overlap.
    assert lora_rec["exact_match"][1] > before.high and full_rec["exact_match"][1] > before.high
    assert lora_rec["exact_match"][0] >= before.mean + 0.3
    assert full_rec["optimizer_state_bytes"] > 50 * lora_rec["optimizer_state_bytes"]

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for label, rec in records.items():
    ax.plot(range(1, len(rec["losses"]) + 1), rec["losses"], marker="o", ms=3, label=label)
ax.set(xlabel="step", ylabel="answer loss (nats/token)", title="SFT on the task questions")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Exact match rises from {glue}`s5_6_before` to {glue}`s5_6_lora_em` with LoRA and to
# {glue}`s5_6_full_em` with full fine-tuning, after 16 steps; the lower ends of their 95 %
# intervals, {glue}`s5_6_lora_low` and {glue}`s5_6_full_low`, lie above the upper end of the
# pretrained model's. The costs differ more than the results: LoRA trains
# {glue}`s5_6_lora_trainable` parameters with {glue}`s5_6_lora_state` MB of optimizer state,
# full fine-tuning {glue}`s5_6_full_trainable` with {glue}`s5_6_full_state` MB, and a LoRA step
# took {glue}`s5_6_lora_step` s against {glue}`s5_6_full_step` s. Both pay for the backward
# pass through every layer (LoRA's adapters sit in every block); full fine-tuning adds the
# gradients of every weight and the AdamW update of 135 M numbers.
#
# ## What is still wrong
#
# Much of the gain is form: the model now answers with a number. Whether the number is right is
# another matter. The errors that remain after LoRA SFT:

# %%
answered = zip(test_tasks, lora_rec["completions"], strict=True)
wrong = [(t, c) for t, c in answered if not exact_match(t, c)]
for t, c in wrong[:8]:
    print(f"{t.family:8s} {t.prompt[:60]!r:64s} want {t.answer!r:>16s}, got {c!r}")
print({f: round(v, 2) for f, v in lora_rec["by_family"].items()})
if checks_enabled():
    assert sum(well_formed(c) for _, c in wrong) >= len(wrong) / 2  # mostly wrong, not verbose
glue("s5_6_n_wrong", len(wrong))

# %% [markdown]
# At least half of the {glue}`s5_6_n_wrong` wrong answers are well-formed (a bare number or
# list, asserted) but wrong. Sixteen steps taught the format; arithmetic is
# what the model knows, and SFT on 256 examples adds little of it. The next two sections improve
# the answers themselves with the model's own samples: by preferring its right answers to its
# wrong ones (DPO), and by rewarding right answers (GRPO).
#
# ## Bad input
#
# A conversation that does not fit the context, a role the template does not know, and a
# conversation with no assistant turn (nothing to learn) are errors before any computation:

# %%
long_chat = [{"role": "user", "content": "hi " * 9000}, {"role": "assistant", "content": "ok"}]
for bad in (
    lambda: render_chat(tokenizer, long_chat, max_len=model.config.block_size),
    lambda: render_chat(tokenizer, [{"role": "robot", "content": "hi"}]),
    lambda: render_chat(tokenizer, [{"role": "user", "content": "hi"}]),
):
    print(error_message(bad))
assert "context" in error_message(lambda: render_chat(tokenizer, long_chat, max_len=64))

# %% [markdown]
# ## Summary
#
# * SFT is next-token training on conversations with the loss restricted to the assistant's
#   tokens; the prompt positions receive exactly zero gradient.
# * Packing several examples per row saves the positions padding wastes; a segment mask and
#   positions that restart per example keep packed examples from seeing each other (changing
#   one leaves the others' logits unchanged bit for bit).
# * A held-out split and an exact checker turn "it seems better" into a measured improvement,
#   here from {glue}`s5_6_before` to {glue}`s5_6_lora_em` with LoRA.
# * SFT teaches the form of an answer quickly; the content improves more slowly, which the
#   preference and reinforcement-learning sections take on.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-5-6-1
# ```
# Train on every token (no mask) instead of the answers only, with the same steps. What happens
# to the loss values, and why is the comparison of the two losses not meaningful?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-6-1
# :class: dropdown
# ```
# Build the targets from `ex.ids[1:]` for every position. The unmasked loss averages over all
# {glue}`s5_6_example_tokens` − 1 positions of the example, most of them the system prompt and the question, so the loss, and its
# gradient, are mostly about reproducing the template and the questions' wording, which the
# model never has to produce. The two losses average over different sets of tokens, so their values
# cannot be compared; compare the held-out exact match instead.
#
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-6-2
# ```
# For a model with learned absolute position embeddings (the GPT of
# {doc}`../04_pretraining/02_gpt`), why is it
# essential that positions restart at each packed example, while for RoPE it would *almost* not
# matter?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-6-2
# :class: dropdown
# ```
# A learned embedding adds a different vector at position 40 than at position 0: an example
# packed behind another would be seen at positions it never occupies alone, and its logits
# would differ. With RoPE, the attention score of query $m$ and key $n$ depends only on $m - n$
# ({doc}`../03_architectures/04_attention`), so shifting a whole example by a constant changes nothing in exact arithmetic;
# only the rounding of the rotation angles differs.
#
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-6-3
# ```
# The Wilson interval of 0 successes out of 80 is not $[0, 0]$. Compute it, and compare with
# the normal approximation $\hat p \pm 1.96 \sqrt{\hat p (1 - \hat p) / n}$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-6-3
# :class: dropdown
# ```
# The normal approximation gives $[0, 0]$, claiming certainty from a finite sample. Wilson's
# interval is $[0, 4.6\,\%]$: 80 failures in a row are still compatible with a true rate of a
# few per cent.

# %%
from dlbook.evaluate import wilson_interval  # noqa: E402

low, high = wilson_interval(0, 80)
print(f"Wilson 95% interval for 0/80: [{low:.1%}, {high:.1%}]")
assert low == 0.0 and round(high, 3) == 0.046

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-6-4
# ```
# Add a fifth task family to `dlbook.data.tasks` (for example "how many letters does the word
# ... have?"), train the LoRA SFT again and measure its held-out exact match per family. Which
# families does SFT help most, and what do they have in common?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-6-4
# :class: dropdown
# ```
# Write a maker `_letters(rng)` returning a `Task`, register it in `_MAKERS` and `FAMILIES`,
# and pass `families=...` to `make_tasks`. Families whose answer the model can already compute
# (comparing two numbers) can be expected to gain most: SFT only has to teach the format.
# Letter counting is hard for a model that sees tokens, not letters; expect it to stay low.
#
# ```{solution-end}
# ```
