# %% [markdown]
# # Pretraining
#
# **Pretraining** is the long first phase of a language model's life: the GPT of the
# {doc}`previous section <02_gpt>` is shown raw text and trained to predict each next token,
# nothing else. There are no labels to collect, since the text is its own target, so the data
# can be as large as the compute allows, and everything the model later knows (spelling,
# grammar, style, facts) is learned here. Fine-tuning (Part 5) only adjusts what pretraining
# built.
#
# This section pretrains a GPT from scratch on the King James Bible, on a CPU, in a few
# minutes, and looks at every piece of the pipeline:
#
# 1. the data: tokenized once into a memory-mapped file, split by position, sampled as random
#    windows;
# 2. the objective and how to read it: cross-entropy, perplexity, and two baselines a model
#    must beat;
# 3. the optimisation: AdamW, a warm-up + cosine learning-rate schedule, gradient clipping,
#    periodic evaluation;
# 4. checkpoints that resume *bit-exactly*, demonstrated by interrupting a run;
# 5. the trained model: its loss curves and samples before and after training.
#
# The library function that does all this, `dlbook.pretrain.pretrain`, is the one that
# trains the model that later parts of the book load, from a cache, with
# `dlbook.artifacts.pretrained_kjv_gpt()`. This section calls it and then takes it apart.

# %%
import dataclasses
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from dlbook import checks_enabled, pick, seed_everything
from dlbook.artifacts import kjv_config, kjv_tokens, pretrained_kjv_run
from dlbook.bench import flops_per_token, matmul_params
from dlbook.book import error_message, glue
from dlbook.checkpoint import CheckpointError, load_checkpoint
from dlbook.data.lm import read_tokens, sample_windows, split_tokens, write_tokens
from dlbook.data.text import CharTokenizer, load_kjv, random_windows
from dlbook.decoding import entropy, real_word_fraction, words
from dlbook.nn.gpt import GPT
from dlbook.pretrain import estimate_loss, pretrain
from dlbook.schedules import warmup_cosine
from dlbook.tokenizers import ByteBPETokenizer

_ = seed_everything(0)
config = kjv_config()  # the book's run for the active profile
print(config)
tokenizer, data = kjv_tokens(config)  # character tokenizer + token ids (explained below)
V = tokenizer.vocab_size
tokens_seen = config.max_steps * config.batch_size * config.block_size
glue("s4_3_tokens_seen", tokens_seen, ",")
glue("s4_3_vocab", V)

# %% [markdown]
# ## Choosing the tokenizer
#
# Section {doc}`01_tokenization` built a byte-level BPE tokenizer. The book's run uses the
# **character** tokenizer instead, with its {glue}`s4_3_vocab` symbols, and the reason is not
# quality but clarity: every loss is *per character* and directly comparable to the simple
# baselines below, a sample can be read (and decoded, in section {doc}`04_decoding`) one
# character at a time, and the token file is the text itself. What this choice costs is a
# measurement, made near the end of this section ("Characters or BPE?"): trained with the same
# compute, a GPT on BPE tokens predicts held-out text better, per byte, than one on characters.
#
# ## The data pipeline
#
# The corpus is tokenized **once** and the ids are written to a flat binary file. Reading it
# back as a `numpy.memmap` maps the file into memory without loading it: the operating system
# reads only the pages a batch touches. For our corpus of a few megabytes this is a convenience; for a
# pretraining corpus of a trillion tokens it is the only way, and the code is the same.
# `dlbook.data.lm.write_tokens` stores each id in the smallest unsigned type that holds the
# vocabulary (here one byte per character) and records the length next to the file, so that a
# truncated file is detected instead of silently read.

# %%
path = Path(data.filename)
print(f"{len(data):,} tokens, vocabulary {V}, dtype {data.dtype}, file {path.stat().st_size:,} bytes")
assert isinstance(data, np.memmap) and data.dtype == np.uint8
assert path.stat().st_size == len(data)  # one byte per token
text = load_kjv()[: config.corpus_chars]
assert tokenizer.decode(np.asarray(data[:300]).tolist()) == text[:300]
print(repr(text[:120]))

# %% [markdown]
# We **split by position**: the first 90 % of the stream is for training and the last 10 % for
# validation. Splitting at random windows instead would put overlapping text on both sides,
# and the validation loss would reward memorisation. A split by position is honest, at a
# price: the end of the Bible (the later New Testament) differs in style from most of what
# precedes it, so the validation loss will stay a little above the training loss.
#
# A training batch is $B$ windows of $T + 1$ consecutive tokens at random start positions:
# the first $T$ tokens are the input $x$, the last $T$ the targets $y$, so $y_t = x_{t+1}$ and
# one window gives $T$ next-token examples with contexts of length $1$ to $T$. The sampler
# reads from the memmap and draws the same windows as the in-memory `random_windows` of
# {doc}`../03_architectures/03_rnns`, which the code checks.
#
# ```{literalinclude} ../../dlbook/data/lm.py
# :pyobject: sample_windows
# ```

# %%
train_data, val_data = split_tokens(data, config.val_fraction)
g = torch.Generator().manual_seed(0)
x, y = sample_windows(train_data, config.block_size, 4, g)
assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
# the memmap sampler draws the same windows as the in-memory sampler of section 3.3
ref = random_windows(torch.from_numpy(np.asarray(train_data, dtype=np.int64)),
                     config.block_size, 4, torch.Generator().manual_seed(0))
assert torch.equal(x, ref[0]) and torch.equal(y, ref[1])
for row in range(2):
    print(repr(tokenizer.decode(x[row])), "->", repr(tokenizer.decode(y[row, -1:])))
glue("s4_3_n_tokens", len(data), ",")
glue("s4_3_n_train", len(train_data), ",")
glue("s4_3_n_val", len(val_data), ",")

# %% [markdown]
# The stream has {glue}`s4_3_n_tokens` tokens: {glue}`s4_3_n_train` for training and
# {glue}`s4_3_n_val` for validation.
#
# ## The objective, perplexity and two baselines
#
# For a batch of windows the loss is the mean **cross-entropy** of the next token,
#
# $$
# \mathcal{L} = -\frac{1}{BT}\sum_{b=1}^{B}\sum_{t=1}^{T} \ln p_\theta\big(x^{(b)}_{t+1} \,\big|\, x^{(b)}_{\le t}\big),
# $$ (eq-lm-loss)
#
# measured in **nats** (natural logarithm) per token; divided by $\ln 2$ it is in bits. Its
# exponential is the **perplexity**, $\operatorname{PPL} = e^{\mathcal{L}}$, a geometric mean
# of $1/p$ over the tokens. It reads as "as uncertain as a fair choice among PPL options": the
# uniform model has $\mathcal{L} = \ln V$ and $\operatorname{PPL} = V$, a model that is always
# certain and right has $\operatorname{PPL} = 1$.
#
# Two classical models set the bar. The **unigram** model predicts every character by its
# frequency in the training text, ignoring the context; the **bigram** model predicts it from
# the previous character only, $p(b \mid a) = n_{ab} / n_a$, with the counts $n$ taken from
# the training split (we add one to every count so that unseen pairs keep a small
# probability). Their validation cross-entropy is computed exactly, over the whole split.

# %%
tr = np.asarray(train_data, dtype=np.int64)
va = np.asarray(val_data, dtype=np.int64)
unigram = np.bincount(tr, minlength=V) + 1.0
unigram_loss = -np.mean(np.log(unigram[va[1:]] / unigram.sum()))
pairs = np.zeros((V, V))
np.add.at(pairs, (tr[:-1], tr[1:]), 1.0)
pairs += 1.0
bigram = pairs / pairs.sum(axis=1, keepdims=True)
bigram_loss = -np.mean(np.log(bigram[va[:-1], va[1:]]))
print(f"uniform {math.log(V):.3f}, unigram {unigram_loss:.3f}, bigram {bigram_loss:.3f} nats/char")
assert bigram_loss < unigram_loss < math.log(V)
glue("s4_3_uniform_loss", math.log(V), ".3f")
glue("s4_3_unigram_loss", unigram_loss, ".3f")
glue("s4_3_bigram_loss", bigram_loss, ".3f")
glue("s4_3_bigram_ppl", math.exp(bigram_loss), ".1f")

# %% [markdown]
# Guessing uniformly costs {glue}`s4_3_uniform_loss` nats per character; character
# frequencies alone bring it to {glue}`s4_3_unigram_loss`, and the previous character to
# {glue}`s4_3_bigram_loss` (a perplexity of {glue}`s4_3_bigram_ppl`). Anything the GPT gets
# below the bigram's number comes from using more than one character of context.
#
# ## Optimisation
#
# The optimiser is **AdamW** {cite:p}`loshchilov2019decoupled`, Adam with *decoupled* weight
# decay, which shrinks every weight by a factor $1 - \eta\lambda$ per step independently of the
# gradient statistics. As in nanoGPT we decay only the matrices (linear weights and the
# embedding table) and not the biases and norm gains, which set scales and offsets rather than
# store features, and, as for GPT-3 {cite:p}`brown2020language`, we use $\beta_2 = 0.95$, which
# adapts faster than the default 0.999 to the quickly changing gradient scales of early training.
#
# ```{literalinclude} ../../dlbook/pretrain.py
# :pyobject: make_optimizer
# ```
#
# The learning rate follows the **warm-up + cosine** schedule of `dlbook.schedules`: it rises
# linearly for the first steps, while Adam's second-moment estimates are still noisy and large
# updates would push the randomly initialised model into a bad region, then decays along half a
# cosine {cite:p}`loshchilov2017sgdr` to a tenth of its peak, so the last steps average out the
# noise of the mini-batches. Finally, **gradient clipping** rescales the whole gradient
# whenever its norm exceeds 1 {cite:p}`pascanu2013difficulty`, so that one unusual batch cannot
# throw the model far.

# %%
steps = np.arange(config.max_steps + 1)
lrs = [warmup_cosine(int(s), warmup_steps=config.warmup_steps, total_steps=config.max_steps,
                     max_lr=config.lr, min_lr=config.lr * config.min_lr_ratio) for s in steps]
fig, ax = plt.subplots(figsize=(6, 2.6))
ax.plot(steps, lrs)
ax.set(xlabel="optimizer step", ylabel="learning rate", title="warm-up + cosine decay")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The training loop
#
# `pretrain` puts it together on top of the library's `Trainer`
# ({doc}`../01_basics/05_library`), whose
# `train_step` does one forward/backward/clip/optimizer/scheduler step and whose `state_dict`
# holds everything needed to resume. Pretraining is organised by **steps**, not epochs: every
# step draws a fresh random batch, and the batch is a function of the step number alone (the
# generator is seeded with `(seed, step)`). Every `eval_interval` steps the loss is estimated on
# the same fixed windows of both splits, and a checkpoint is written.
#
# ```{literalinclude} ../../dlbook/pretrain.py
# :pyobject: pretrain
# ```
#
# ## Exact resume
#
# A long pretraining run *will* be interrupted: a preempted machine, a crash, a full disk. The
# checkpoint must then let it continue as if nothing had happened, and "as if" can be checked
# bit for bit. A checkpoint holds the weights, the optimizer's moment estimates, the
# scheduler's step, the step counter and the random-number state; the batches need no state
# because they depend only on the step. We run a small configuration to the end, run it again
# but stop it halfway (as a crash would), resume it from its checkpoint, and compare.

# %%
small = dataclasses.replace(
    config, n_layer=2, n_embd=pick(smoke=16, book=64), block_size=32, batch_size=8,
    max_steps=pick(smoke=6, book=40), warmup_steps=2, eval_interval=pick(smoke=3, book=10),
    eval_batches=2,
)
with tempfile.TemporaryDirectory() as tmp:
    ckpt = Path(tmp) / "run.pt"
    straight = pretrain(small, train_data, val_data, V, device="cpu")
    halfway = small.max_steps // 2 + 1
    first = pretrain(small, train_data, val_data, V, checkpoint_path=ckpt, stop_after=halfway,
                     device="cpu")
    state = load_checkpoint(ckpt)
    print("interrupted at step", state["step"], "; checkpoint holds", sorted(state))
    resumed = pretrain(small, train_data, val_data, V, checkpoint_path=ckpt, resume=True,
                       device="cpu")
    # a checkpoint of a different configuration is refused, not half-loaded
    other = dataclasses.replace(small, n_embd=small.n_embd * 2)
    try:
        pretrain(other, train_data, val_data, V, checkpoint_path=ckpt, resume=True, device="cpu")
        raise AssertionError("expected a CheckpointError")
    except CheckpointError as e:
        print("CheckpointError:", str(e)[:150], "...")
    try:
        load_checkpoint(ckpt, model=GPT(other.gpt_config(V)))
        raise AssertionError("expected a CheckpointError")
    except CheckpointError as e:
        print("CheckpointError:", str(e)[:150], "...")

assert not first.finished and resumed.finished and state["step"] == halfway
sa, sb = straight.model.state_dict(), resumed.model.state_dict()
assert all(torch.equal(sa[k], sb[k]) for k in sa)  # bit-identical weights
assert [r["val_loss"] for r in straight.history] == [r["val_loss"] for r in resumed.history]
print("resumed run == uninterrupted run, bit for bit")

# %% [markdown]
# Every tensor of the resumed model equals the uninterrupted one exactly (`torch.equal`, not
# `allclose`), and so do the validation losses of all evaluations. The same mechanism protects
# the cached model: if its training is interrupted, the next call of `pretrained_kjv_gpt`
# resumes from the checkpoint.
#
# ## Training the book's GPT
#
# Now the real run. `pretrained_kjv_run` trains the configuration printed at the top with
# `pretrain` on first use and saves the model (safetensors + config), the tokenizer and the
# history under the cache directory, in a folder named after a hash of the configuration; later
# calls load it in a second. Changing any setting changes the hash, so a stale model is never
# loaded, and an unreadable cache entry is retrained with a warning.

# %%
run = pretrained_kjv_run()
model, history = run.model, run.history
final = history[-1]
train_seconds = final["seconds"]
n_params = model.num_params(non_embedding=False)
print(f"{'trained now' if run.trained_now else 'loaded from'} {run.directory}")
print(f"{n_params:,} parameters, {tokens_seen:,} tokens seen, {train_seconds:.0f} s of training")
for row in history[:: max(1, len(history) // 6)]:
    print({k: round(v, 4) for k, v in row.items()})

# the untrained model pretrain started from: same seed, same architecture
torch.manual_seed(config.seed)
untrained = GPT(config.gpt_config(V)).eval()
init_loss = estimate_loss(untrained, val_data, config.block_size, config.batch_size,
                          config.eval_batches, seed=config.seed + 2)
assert abs(init_loss - history[0]["val_loss"]) < 1e-4
assert abs(init_loss - math.log(V)) < 0.1  # section 4.2: the loss at init is about ln V

# %%
step = [r["step"] for r in history]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, f, label in ((axes[0], lambda v: v, "loss (nats/char)"), (axes[1], math.exp, "perplexity")):
    ax.plot(step, [f(r["train_loss"]) for r in history], "o-", ms=3, label="train")
    ax.plot(step, [f(r["val_loss"]) for r in history], "o-", ms=3, label="validation")
    ax.axhline(f(unigram_loss), color="grey", ls=":", label="unigram")
    ax.axhline(f(bigram_loss), color="grey", ls="--", label="bigram")
    ax.set(xlabel="optimizer step", ylabel=label)
axes[1].set_yscale("log")
axes[1].minorticks_off()
axes[1].set_yticks([4, 6, 10, 20, 40, 60], ["4", "6", "10", "20", "40", "60"])
axes[0].legend()
fig.tight_layout()
plt.show()

val_loss = final["val_loss"]
bound = 1.6  # a correct book run ends clearly below this (measured: about 1.42)
glue("s4_3_val_loss", val_loss, ".3f")
glue("s4_3_train_loss", final["train_loss"], ".3f")
glue("s4_3_val_ppl", math.exp(val_loss), ".2f")
glue("s4_3_val_bits", val_loss / math.log(2), ".2f")
glue("s4_3_bound", bound, ".1f")
glue("s4_3_params", n_params, ",")
glue("s4_3_steps", config.max_steps, ",")
glue("s4_3_train_seconds", train_seconds, ".0f")
if checks_enabled():
    assert val_loss < bound
    assert val_loss < bigram_loss - 0.2  # clearly beats the bigram model
    assert final["train_loss"] < val_loss  # the held-out end of the Bible is harder

# %% [markdown]
# The model has {glue}`s4_3_params` parameters and saw {glue}`s4_3_tokens_seen` tokens in
# {glue}`s4_3_steps` steps ({glue}`s4_3_train_seconds` s of training when it was trained). It
# ends at a validation loss of {glue}`s4_3_val_loss` nats per character
# ({glue}`s4_3_val_bits` bits, perplexity {glue}`s4_3_val_ppl`; training loss
# {glue}`s4_3_train_loss`). The build asserts that it stays below {glue}`s4_3_bound` and
# clearly below the bigram model's {glue}`s4_3_bigram_loss`: the Transformer uses far more
# than the previous character. The curves flatten at the end, as the learning rate reaches its
# floor: going lower takes a larger budget of steps or parameters (the `full` profile trains a
# larger model for longer).
#
# ## Samples before and after
#
# A language model is a generator: feed it a prompt, sample the next character from its
# predicted distribution, append it, repeat (`GPT.generate`). We sample with a seeded generator
# at temperature 0.8 (logits divided by 0.8, which sharpens the distribution a little), first
# from the untrained model, then from the trained one.

# %%
prompt = "And God said"
ids = tokenizer.encode(prompt)[None]
n_new = pick(smoke=40, book=300)
samples = {}
for name, net in (("untrained", untrained), ("trained", model)):
    out = net.generate(ids, n_new, temperature=0.8, generator=torch.Generator().manual_seed(0))
    samples[name] = tokenizer.decode(out[0])
    print(f"--- {name} ---\n{samples[name]}\n")
assert samples["trained"].startswith(prompt) and len(samples["trained"]) == len(prompt) + n_new
# how many of the sampled words are real words of the King James Bible?
kjv_words = set(words(text))
real = {
    name: real_word_fraction(sample[len(prompt):], kjv_words) for name, sample in samples.items()
}
print({k: round(float(v), 2) for k, v in real.items()})
glue("s4_3_real_untrained", real["untrained"], ".0%")
glue("s4_3_real_trained", real["trained"], ".0%")
if checks_enabled():
    assert real["trained"] > 0.5 and real["untrained"] < 0.2

# %% [markdown]
# The untrained model produces characters at random, as its loss of $\ln V$ promised: only
# {glue}`s4_3_real_untrained` of the letter groups it emits are words of the Bible (short ones
# such as "a" or "I" by chance). Of the trained model's words {glue}`s4_3_real_trained` are real,
# and they come with the capitals, punctuation and cadence of the King James Version. It has no
# sense yet of meaning across sentences: that needs far more parameters and data.
#
# ## Characters or BPE?
#
# Is the character tokenizer holding the model back? A fair test trains the same GPT body (same
# layers and width, so the same non-embedding parameters) on both kinds of tokens, with the
# same batch of $B \times T$ tokens per step, and gives both the same training compute in
# FLOPs (the estimate of section {doc}`05_efficiency`, which counts the output layer: a BPE
# model's larger vocabulary costs more per token, so the character model gets more steps). The
# BPE tokenizer is the library's `ByteBPETokenizer` of section {doc}`01_tokenization`, trained on
# the start of the training split. Losses per token are not comparable across tokenizers
# (exercise 3 below), so both are converted to **bits per byte** of held-out text: the loss per
# token times the number of tokens the validation text encodes to, divided by its number of
# bytes and by $\ln 2$. The Bible is ASCII, so for characters bytes and tokens coincide.

# %%
cmp_vocab = pick(smoke=320, book=2048, full=2048)  # section 4.1's vocabulary size
text_all = load_kjv()[: config.corpus_chars]
assert text_all.isascii()  # one byte per character
n_train_chars = len(train_data)  # the same split by position as the character stream
bpe = ByteBPETokenizer.train(text_all[: min(n_train_chars, pick(smoke=50_000, book=1_000_000))],
                             cmp_vocab, special_tokens=())
bpe_train = np.asarray(bpe.encode(text_all[:n_train_chars]), dtype=np.int64)
bpe_val = np.asarray(bpe.encode(text_all[n_train_chars:]), dtype=np.int64)
val_bytes = len(text_all) - n_train_chars
cmp_base = dataclasses.replace(
    config, n_layer=2, n_head=4, n_embd=pick(smoke=16, book=64), block_size=64, batch_size=16,
    lr=3e-3, eval_batches=pick(smoke=2, book=4), dropout=0.0,
)
bpe_steps = pick(smoke=6, book=300)
flops = {name: flops_per_token(cmp_base.gpt_config(v), matmul_params(GPT(cmp_base.gpt_config(v))))
         for name, v in (("characters", V), ("BPE", bpe.vocab_size))}
steps_for = {"BPE": bpe_steps, "characters": round(bpe_steps * flops["BPE"] / flops["characters"])}
streams = {"characters": (train_data, val_data, V, len(val_data)),
           "BPE": (bpe_train, bpe_val, bpe.vocab_size, len(bpe_val))}
curves = {}
for name, (tr_stream, va_stream, vocab, n_val_tokens) in streams.items():
    n_steps = steps_for[name]
    cfg = dataclasses.replace(cmp_base, max_steps=n_steps, warmup_steps=max(1, n_steps // 20),
                              eval_interval=max(1, n_steps // 6))
    hist = pretrain(cfg, tr_stream, va_stream, vocab, device="cpu").history
    tokens_per_step = cfg.batch_size * cfg.block_size
    curves[name] = (
        [r["step"] * tokens_per_step * flops[name] for r in hist],  # training FLOPs so far
        [r["val_loss"] * n_val_tokens / val_bytes / math.log(2) for r in hist],  # bits per byte
    )
    print(f"{name:10} vocab {vocab:5}, {n_steps} steps, {flops[name] / 1e6:.2f} MFLOP/token: "
          f"{curves[name][1][-1]:.3f} bits/byte")
fig, ax = plt.subplots(figsize=(6, 3.2))
for name, (c, bpb) in curves.items():
    ax.plot(c, bpb, "o-", ms=3, label=name)
ax.set(xlabel="training compute (FLOPs)", ylabel="validation bits per byte")
ax.legend()
fig.tight_layout()
plt.show()
bpb_char, bpb_bpe = curves["characters"][1][-1], curves["BPE"][1][-1]
glue("s4_3_cmp_vocab", bpe.vocab_size, ",")
glue("s4_3_cmp_bytes_per_token", val_bytes / len(bpe_val), ".2f")
glue("s4_3_cmp_steps_bpe", steps_for["BPE"], ",")
glue("s4_3_cmp_steps_char", steps_for["characters"], ",")
glue("s4_3_cmp_bpb_char", bpb_char, ".2f")
glue("s4_3_cmp_bpb_bpe", bpb_bpe, ".2f")
glue("s4_3_cmp_flops", curves["BPE"][0][-1], ".1e")
book_run_flops = flops_per_token(config.gpt_config(V), matmul_params(GPT(config.gpt_config(V))))
glue("s4_3_cmp_budget_ratio", book_run_flops * tokens_seen / curves["BPE"][0][-1], ",.0f")
# the same FLOPs, up to rounding the character run's steps to a whole number
assert math.isclose(curves["BPE"][0][-1], curves["characters"][0][-1],
                    rel_tol=1 / steps_for["characters"])
if checks_enabled():
    assert bpb_bpe < bpb_char - 0.3  # BPE wins clearly at equal compute

# %% [markdown]
# With the same body, the same tokens per step and the same {glue}`s4_3_cmp_flops` training
# FLOPs ({glue}`s4_3_cmp_steps_bpe` steps with BPE, {glue}`s4_3_cmp_steps_char` with
# characters), the BPE model ends at {glue}`s4_3_cmp_bpb_bpe` bits per byte of held-out text
# and the character model at {glue}`s4_3_cmp_bpb_char`. Each BPE token of the
# {glue}`s4_3_cmp_vocab`-token vocabulary carries {glue}`s4_3_cmp_bytes_per_token` bytes of
# held-out text on average, so a window of the same length holds that many times more context
# and each step trains on that many times more text; spelling out common words is no longer
# the model's job. Even at this budget, {glue}`s4_3_cmp_budget_ratio` times smaller than the
# book's run, subword tokens win (asserted). Most large language models use them: GPT-2 and
# its successors a byte-level BPE {cite:p}`radford2019language`. Not all do: T5
# {cite:p}`raffel2020exploring` uses a SentencePiece unigram model {cite:p}`kudo2018subword`,
# and ByT5 {cite:p}`xue2022byt5` reads raw bytes and pays with longer sequences. The book stays
# with characters for the clarity listed at the top; its main run, with a larger model and
# budget, reaches {glue}`s4_3_val_bits` bits per character, which for this ASCII text is also
# bits per byte.
#
# ## Bad input
#
# The pipeline fails early and clearly on the inputs that would otherwise fail deep inside
# PyTorch or, worse, silently:
#
# * a prompt longer than the context: `GPT.forward` raises a `ValueError`, `GPT.generate`
#   documents that it crops the context to the last `block_size` tokens (section 4.2);
# * a character the tokenizer has never seen raises a `ValueError` that names it;
# * an empty corpus cannot be tokenized or written;
# * a checkpoint from a different configuration is refused with a `CheckpointError` (above).

# %%
long_prompt = tokenizer.encode(text[: config.block_size + 50])[None]
print("forward:", error_message(lambda: model(long_prompt)))
cropped = model.generate(long_prompt, 5, generator=torch.Generator().manual_seed(0))
assert cropped.shape[1] == long_prompt.shape[1] + 5
print("tokenizer:", error_message(lambda: tokenizer.encode("Jesus wept \u00e9")))
print("empty corpus:", error_message(lambda: CharTokenizer.from_text("")))
with tempfile.TemporaryDirectory() as tmp:
    print("empty stream:", error_message(lambda: write_tokens(Path(tmp) / "e.bin", [], V)))
    p = write_tokens(Path(tmp) / "t.bin", np.arange(10), V)
    with open(p, "r+b") as f:
        f.truncate(5)
    print("truncated file:", error_message(lambda: read_tokens(p)))

# %% [markdown]
# ## Summary
#
# * Pretraining minimises the next-token cross-entropy on raw text; its exponential, the
#   perplexity, is the number of equally likely choices the model is left with.
# * The data pipeline tokenizes once into a memory-mapped file, splits by position so that
#   validation text never overlaps training text, and samples random windows whose targets are
#   the inputs shifted by one.
# * AdamW (decay on matrices only), warm-up + cosine decay and gradient clipping train the GPT
#   of section 4.2; on a CPU it reaches {glue}`s4_3_val_loss` nats per character in minutes,
#   far below the unigram ({glue}`s4_3_unigram_loss`) and bigram ({glue}`s4_3_bigram_loss`)
#   baselines.
# * A checkpoint with weights, optimizer, scheduler, step and random state, plus batches that
#   depend only on the step, makes a resumed run bit-identical to an uninterrupted one.
# * `dlbook.artifacts.pretrained_kjv_gpt()` returns this model, trained once and cached under
#   a hash of its configuration, for the rest of the book.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-4-3-1
# ```
# The model's loss is an average over positions $t = 1..T$ of the window, that is, over
# contexts of length 1 to $T$. Compute the validation loss separately for every position and
# plot it. Why is it highest at the first position, and what does the curve say about how much
# context the model uses?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-3-1
# :class: dropdown
# ```
# At position 1 the model sees a single character, so it can do no better than a bigram model
# estimated from the same text; with more context the loss drops quickly and then flattens:
# the model gains most from the first few characters of context (the current word), and less
# and less from each further one.

# %%
with torch.no_grad():
    xs, ys = sample_windows(val_data, config.block_size, pick(smoke=8, book=128),
                            torch.Generator().manual_seed(3))
    logits, _ = model(xs)
    per_pos = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), ys, reduction="none").mean(dim=0)
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(np.arange(1, config.block_size + 1), per_pos.numpy())
ax.axhline(bigram_loss, color="grey", ls="--", label="bigram")
ax.set(xlabel="context length t", ylabel="validation loss", xscale="log")
ax.legend()
fig.tight_layout()
plt.show()
if checks_enabled():
    assert per_pos[0] > per_pos[config.block_size // 2 :].mean() + 0.3
    assert per_pos[0] > bigram_loss - 0.1  # one character of context: bigram territory

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-3-2
# ```
# Sample from the trained model at temperatures 0 (greedy), 0.5, 1.0 and 1.5 and measure the
# mean entropy (in nats) of the distributions the samples were drawn from. How do the samples
# change?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-3-2
# :class: dropdown
# ```
# Dividing the logits by a temperature $\tau$ sharpens ($\tau < 1$) or flattens ($\tau > 1$) the
# distribution, so its entropy grows with $\tau$. Greedy decoding ($\tau \to 0$) always takes
# the single most likely character: deterministic, and prone to repeating itself. High
# temperatures give weight to unlikely characters, and words come out misspelt.

# %%
with torch.no_grad():
    logits, _ = model(xs[:8])
entropies = []
for tau in (0.5, 1.0, 1.5):
    entropies.append(entropy(logits, tau).mean().item())
print("entropy at tau 0.5, 1.0, 1.5:", [round(e, 3) for e in entropies])
assert entropies[0] < entropies[1] < entropies[2]
for tau in (0.0, 1.5):
    out = model.generate(ids, pick(smoke=20, book=120), temperature=tau,
                         generator=torch.Generator().manual_seed(0))
    print(f"tau={tau}: {tokenizer.decode(out[0])!r}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-3-3
# ```
# Losses per character and per BPE token are not comparable. Convert the model's validation
# loss to **bits per character** and to the loss per token that a tokenizer averaging $k$
# characters per token would have to reach to be as good, for $k = 3$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-3-3
# :class: dropdown
# ```
# The total information of a text does not depend on how it is cut: $N_\text{char}\,
# \mathcal{L}_\text{char} = N_\text{tok}\,\mathcal{L}_\text{tok}$. With $k$ characters per
# token $\mathcal{L}_\text{tok} = k\,\mathcal{L}_\text{char}$: a BPE model whose loss per token
# is three times our loss per character is exactly as good. A per-token loss that looks high
# next to a per-character one can therefore be the better model.

# %%
bits_per_char = val_loss / math.log(2)
per_token_equivalent = 3 * val_loss
print(f"{bits_per_char:.3f} bits/char; a 3-char/token model needs {per_token_equivalent:.3f} nats/token")
assert math.isclose(per_token_equivalent / 3 / math.log(2), bits_per_char)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-3-4
# ```
# Gradient clipping only acts when the gradient norm exceeds the threshold. Train a fresh
# copy of the model for a few steps with the same batches and record the global gradient norm
# before clipping (the return value of `torch.nn.utils.clip_grad_norm_`). How often would the
# clip of 1.0 have acted?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-3-4
# :class: dropdown
# ```
# `clip_grad_norm_` returns the norm *before* clipping and rescales the gradients in place
# when it exceeds the threshold; the code checks that the clipped norm is at most 1. The
# printed norms show how often the clip acted in the first steps of this run. In a healthy run
# clipping is a guard against rare spikes; if it acts on almost every step for long, the
# learning rate is probably too high.

# %%
torch.manual_seed(config.seed)
fresh = GPT(config.gpt_config(V))
opt = torch.optim.AdamW(fresh.parameters(), lr=config.lr, betas=config.betas)
norms = []
for s in range(pick(smoke=3, book=20)):
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + s)  # pretrain's batches
    xb, yb = sample_windows(train_data, config.block_size, config.batch_size, gen)
    _, loss = fresh(xb, yb)
    opt.zero_grad()
    loss.backward()
    norms.append(torch.nn.utils.clip_grad_norm_(fresh.parameters(), config.grad_clip).item())
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in fresh.parameters())).item()
    assert total <= config.grad_clip * (1 + 1e-4)  # after clipping: at most the threshold
    opt.step()
print("gradient norms:", [round(n, 2) for n in norms])
print(f"clipped in {sum(n > config.grad_clip for n in norms)} of {len(norms)} steps")

# %% [markdown]
# ```{solution-end}
# ```
