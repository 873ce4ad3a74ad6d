# %% [markdown]
# # Decoding
#
# A language model does not write text; it assigns a probability to every possible next token.
# **Decoding** is the procedure that turns those distributions into a sequence: pick a token,
# append it, ask the model again. The choice of procedure matters as much as a good deal of
# extra training. Always taking the most likely token gives dull, looping text; sampling from
# the full distribution lets in rare tokens that derail a sentence. Between the two lie
# temperature, top-k {cite:p}`fan2018hierarchical` and top-p (nucleus) sampling
# {cite:p}`holtzman2020curious`, the knobs of every text-generation interface.
#
# Decoding is also where the cost of a Transformer changes shape. Training processes whole
# windows in parallel; generation produces one token at a time, and done naively it re-reads the
# entire context at every step. The **key/value cache** removes that waste and is what makes
# generation from large models affordable {cite:p}`pope2023efficiently`.
#
# This section uses the character-level GPT pretrained on the King James Bible in
# {doc}`section 4.3 <03_pretraining>` and builds, in order: temperature, greedy decoding,
# top-k and top-p, a comparison of the strategies on measured quantities, stop tokens, and the
# key/value cache, whose logits are asserted equal to the uncached model's and whose speed-up
# is measured against the sequence length.

# %%
import math
import re

import matplotlib.pyplot as plt
import numpy as np
import torch

from dlbook import checks_enabled, pick, seed_everything
from dlbook.artifacts import pretrained_kjv_run
from dlbook.bench import seconds_per_call
from dlbook.book import error_message, glue
from dlbook.data.text import load_kjv
from dlbook.decoding import (
    entropy,
    filter_top_k,
    filter_top_p,
    generate,
    real_word_fraction,
    sample_next,
    words,
)
from dlbook.nn import GPT, GPTConfig

_ = seed_everything(0)
run = pretrained_kjv_run()  # trained in section 4.3 (on first use), then loaded from the cache
model, tokenizer = run.model.cpu().eval(), run.tokenizer
V, T = tokenizer.vocab_size, model.config.block_size
val_loss = run.history[-1]["val_loss"]
print(model.config)
print(f"validation loss {val_loss:.3f} nats/char, vocabulary {V}, context {T}")
glue("s4_4_val_loss", val_loss, ".2f")
glue("s4_4_block", T)


def encode(text: str) -> torch.Tensor:
    """The ids of ``text`` as a batch of one: ``(1, len(text))``."""
    return tokenizer.encode(text)[None]


# %% [markdown]
# ## From logits to a distribution: temperature
#
# At each step the model produces logits $z \in \mathbb{R}^V$ for the next token. Softmax turns
# them into probabilities; decoding with a **temperature** $\tau > 0$ divides the logits first:
#
# $$
# p_i(\tau) = \frac{e^{z_i/\tau}}{\sum_{j=1}^{V} e^{z_j/\tau}}.
# $$
#
# At $\tau = 1$ this is the model's own distribution. As $\tau \to 0$ the largest logit
# dominates and $p(\tau)$ tends to a one-hot vector on $\arg\max_i z_i$; as $\tau \to \infty$ all
# differences vanish and $p(\tau)$ tends to the uniform distribution. In between, the entropy
# $H(\tau) = -\sum_i p_i(\tau) \ln p_i(\tau)$ grows steadily with $\tau$: writing $\beta = 1/\tau$,
# one finds $dH/d\beta = -\beta\,\mathrm{Var}_{p}(z) \le 0$, so $H$ can only rise as $\tau$ rises.
# The name and the formula come from statistical physics, where $\tau$ is the temperature of a
# Boltzmann distribution.
#
# Here is the model's distribution after a prompt, at three temperatures, and the entropy as a
# function of $\tau$ (the code asserts that it never decreases).

# %%
prompt = "And the LORD spake unto Mo"
with torch.no_grad():
    logits = model(encode(prompt))[0][0, -1]  # (V,) logits for the next character
taus = [0.5, 1.0, 2.0]
top = torch.topk(logits, 8).indices
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3))
width = 0.27
for n, tau in enumerate(taus):
    p = torch.softmax(logits / tau, dim=-1)
    ax.bar(np.arange(8) + (n - 1) * width, p[top].numpy(), width, label=f"τ = {tau}")
ax.set_xticks(np.arange(8), [repr(tokenizer.decode([int(i)]))[1:-1] for i in top])
ax.set(ylabel="probability", title=f"next character after {prompt!r}")
ax.legend()
grid = np.geomspace(0.05, 20, 60)


H = np.array([entropy(logits.double(), t).item() for t in grid])  # nats, dlbook.decoding
ax2.semilogx(grid, H)
ax2.axhline(math.log(V), color="grey", ls="--", label="ln V (uniform)")
ax2.set(xlabel="temperature τ", ylabel="entropy (nats)")
ax2.legend()
fig.tight_layout()
plt.show()
assert np.all(np.diff(H) >= -1e-9)  # entropy never falls as the temperature rises
assert H[0] < 0.5 and H[-1] > 0.9 * math.log(V)
p1 = torch.softmax(logits, -1)
glue("s4_4_top_char", tokenizer.decode([int(p1.argmax())]))
glue("s4_4_top_prob", p1.max().item(), ".0%")
mo_greedy = tokenizer.decode(generate(model, encode(prompt), 3, temperature=0)[0, -3:])
print(f"greedy continuation of {prompt!r}: {mo_greedy!r}")
if checks_enabled():
    assert mo_greedy == "ses" and p1.max().item() > 0.5  # confidently "Moses"

# %% [markdown]
# The model is confident that "Mo" continues as "Moses" (its three most probable next
# characters, one after the other, are "ses"): it gives "{glue}`s4_4_top_char`" a
# probability of {glue}`s4_4_top_prob`. Dividing the logits by $\tau = 0.5$ makes it surer still;
# $\tau = 2$ spreads the mass over letters that would misspell the name.
#
# ## Greedy decoding
#
# The simplest decoder takes the most probable token every time, the limit $\tau \to 0$. It is
# deterministic, and it maximises each step's probability, but not the probability of the
# sequence, and it is notorious for falling into loops: once a phrase is the most likely
# continuation of itself, greedy decoding repeats it forever {cite:p}`holtzman2020curious`.
# `dlbook.decoding.generate` implements this and the samplers below (its loop is shown later,
# with the cache):

# %%
greedy = generate(model, encode("And it came to pass"), pick(smoke=40, book=400), temperature=0)
greedy_text = tokenizer.decode(greedy[0])
print(greedy_text)


def repeated_fraction(text: str, n: int = 12) -> float:
    """Fraction of the character n-grams of ``text`` that already occurred earlier in it."""
    seen, repeats, total = set(), 0, 0
    for i in range(len(text) - n + 1):
        gram = text[i : i + n]
        repeats += gram in seen
        total += 1
        seen.add(gram)
    return repeats / max(total, 1)


glue("s4_4_greedy_repeat", repeated_fraction(greedy_text), ".0%")

# %% [markdown]
# The text is fluent at first and then circles: {glue}`s4_4_greedy_repeat` of its 12-character
# windows already appeared earlier in the same sample. Human text repeats itself far less
# (we measure and assert this below).
#
# ## Sampling, top-k and top-p
#
# **Sampling** draws the next token from $p(\tau)$. It gives variety, but a distribution over
# $V$ tokens has a long tail: each unlikely token is improbable, yet together they hold real
# mass, and one bad draw can derail a sentence. Two truncations cut the tail before sampling:
#
# * **top-k** {cite:p}`fan2018hierarchical` keeps the $k$ most probable tokens and renormalises;
# * **top-p**, or nucleus sampling {cite:p}`holtzman2020curious`, keeps the smallest set of most
#   probable tokens whose total probability reaches $p$:
#
# $$
# V_p = \text{the smallest } S \subseteq \{1..V\} \text{ with } \sum_{i \in S} p_i \ge p
# \text{ and } p_i \ge p_j \text{ for all } i \in S,\ j \notin S .
# $$
#
# Top-k keeps a fixed number of tokens whether the model is sure or not; top-p adapts: one token
# when the model is certain, many when it is not. In the library both set the removed logits to
# $-\infty$, so softmax gives them probability zero:

# %% [markdown]
# ```{literalinclude} ../../dlbook/decoding.py
# :pyobject: filter_top_p
# ```
#
# Sorting puts the most probable tokens first; `mass_before` is the probability of the tokens
# ranked above each one, and a token is dropped once that already reaches $p$; the scatter puts
# the decision back into vocabulary order. Applied to two contexts, one where the model is sure
# and one where it is not, the nucleus for $p = 0.9$ has very different sizes:

# %%
contexts = {"sure": "And the LORD spake unto Mo", "unsure": "And he said unto "}
nucleus = {}
for name, text in contexts.items():
    with torch.no_grad():
        z = model(encode(text))[0][0, -1]
    probs = torch.softmax(z, -1)
    kept = torch.isfinite(filter_top_p(z, 0.9))
    nucleus[name] = int(kept.sum())
    # the nucleus is a smallest top set holding at least p
    assert probs[kept].sum() >= 0.9 and probs[kept].sum() - probs[kept].min() < 0.9
    assert probs[kept].min() >= probs[~kept].max()
    assert int(torch.isfinite(filter_top_k(z, 5)).sum()) == 5
    print(f"{name:6s} {text!r}: nucleus of p=0.9 holds {nucleus[name]} of {V} characters")
glue("s4_4_nucleus_sure", nucleus["sure"])
glue("s4_4_nucleus_unsure", nucleus["unsure"])
if checks_enabled():
    assert nucleus["sure"] < nucleus["unsure"]

# %% [markdown]
# After "Mo" the nucleus holds {glue}`s4_4_nucleus_sure` character(s); after "said unto " it
# holds {glue}`s4_4_nucleus_unsure`, because many words can start there. A top-k filter would
# keep the same $k$ in both places.
#
# ## The strategies compared
#
# To compare decoders on something other than taste, we generate samples from the same prompts
# with each and measure three things:
#
# * **repetition**: the fraction of 12-character windows that already occurred earlier in the
#   same sample (the loops of greedy decoding), with the same measure on real verses of the
#   validation text for reference;
# * **real words**: the fraction of the generated words that are words of the King James
#   Bible (misspellings from the tail of the distribution lower it);
# * **model log-likelihood**: the mean negative log-probability, in nats per character, that the
#   model itself assigns to the generated text at $\tau = 1$ (low: text the model finds typical;
#   far below the validation loss: text more predictable than real text).

# %%
text = load_kjv()
kjv_words = set(words(text))
prompts = ["And it came to pass", "Blessed are the", "In the beginning", "And the king said"]
prompts = prompts[: pick(smoke=2, book=4)]
n_new = pick(smoke=30, book=400)
strategies = {
    "greedy": dict(temperature=0),
    "τ = 0.7": dict(temperature=0.7),
    "τ = 1": dict(temperature=1.0),
    "τ = 1.5": dict(temperature=1.5),
    "top-k = 5": dict(temperature=1.0, top_k=5),
    "top-p = 0.9": dict(temperature=1.0, top_p=0.9),
}


def nll_per_char(ids: torch.Tensor, start: int) -> float:
    """Mean -log p (nats) the model assigns to the tokens of ``ids (1, L)`` after ``start``,
    each predicted from (at most) the ``block_size`` tokens before it."""
    losses = []
    with torch.no_grad():
        for t in range(start, ids.shape[1]):
            context = ids[:, max(0, t - T) : t]
            logp = torch.log_softmax(model(context)[0][0, -1], -1)
            losses.append(-logp[ids[0, t]].item())
    return float(np.mean(losses))


results = {}
for name, settings in strategies.items():
    rep, real, nll = [], [], []
    for i, p in enumerate(prompts):
        ids = encode(p)
        out = generate(model, ids, n_new, generator=torch.Generator().manual_seed(i), **settings)
        sample = tokenizer.decode(out[0, ids.shape[1] :])
        rep.append(repeated_fraction(sample))
        real.append(real_word_fraction(sample, kjv_words))
        nll.append(nll_per_char(out, ids.shape[1]))
    results[name] = (np.mean(rep), np.mean(real), np.mean(nll))
# the same measures on real text: validation verses of the same length as the samples
val_text = text[int(len(text) * (1 - run.config.val_fraction)) :]
real_pieces = [val_text[i * 5000 : i * 5000 + n_new] for i in range(len(prompts))]
results["real text"] = (
    np.mean([repeated_fraction(s) for s in real_pieces]),
    np.mean([real_word_fraction(s, kjv_words) for s in real_pieces]),
    np.mean([nll_per_char(encode(s), 1) for s in real_pieces]),
)
print(f"{'':14s}{'repetition':>12s}{'real words':>12s}{'nats/char':>11s}")
for name, (rep, real, nll) in results.items():
    print(f"{name:14s}{rep:12.1%}{real:12.1%}{nll:11.2f}")
for name in ("greedy", "τ = 1", "τ = 1.5", "top-p = 0.9", "real text"):
    key = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("τ", "tau")).strip("_")
    glue(f"s4_4_rep_{key}", results[name][0], ".0%")
    glue(f"s4_4_real_{key}", results[name][1], ".0%")
    glue(f"s4_4_nll_{key}", results[name][2], ".2f")
if checks_enabled():
    assert results["greedy"][0] > 2 * results["τ = 1"][0]  # greedy loops
    assert results["τ = 1.5"][1] < results["τ = 0.7"][1]  # a hot tail misspells
    assert results["top-p = 0.9"][1] > results["τ = 1.5"][1]
    assert results["greedy"][2] < results["τ = 1"][2] < results["τ = 1.5"][2]
    assert results["real text"][0] < results["greedy"][0] / 2  # people repeat far less
    gaps = {k: abs(v[2] - results["real text"][2]) for k, v in results.items() if k != "real text"}
    assert min(gaps, key=gaps.get) == "τ = 1", gaps  # closest to real text in loss
    assert results["τ = 1"][1] < results["real text"][1]  # ... but misspells more
    assert results["τ = 1.5"][1] < results["τ = 1"][1]  # hotter: worse still
    assert results["top-p = 0.9"][1] > results["τ = 1"][1]  # the cut tail spells better
    assert results["top-p = 0.9"][0] < results["greedy"][0] / 2  # ... without the loops

fig, ax = plt.subplots(figsize=(6, 3.2))
for name, (rep, real, _) in results.items():
    ax.scatter(rep, real, s=40, marker="*" if name == "real text" else "o")
    ax.annotate(name, (rep, real), textcoords="offset points", xytext=(5, 3), fontsize=8)
ax.set(xlabel="repetition (repeated 12-grams)", ylabel="real words")
fig.tight_layout()
plt.show()

# %% [markdown]
# The table shows the trade-off. Greedy decoding has the lowest model loss
# ({glue}`s4_4_nll_greedy` nats per character, far below the {glue}`s4_4_nll_real_text` of real
# verses) and the most repetition ({glue}`s4_4_rep_greedy`, against {glue}`s4_4_rep_real_text`
# for real text): maximising likelihood step by step produces text that is *more* predictable
# than human text, the observation at the heart of {cite:t}`holtzman2020curious`. Pure sampling
# at $\tau = 1$ comes closest to real text in loss ({glue}`s4_4_nll_tau_1`) but misspells
# more ({glue}`s4_4_real_tau_1` real words against {glue}`s4_4_real_real_text` for the
# validation text), and raising the temperature to 1.5 makes it much worse
# ({glue}`s4_4_real_tau_1_5`). Cutting the tail recovers most of the spelling without the loops:
# top-p at 0.9 gives {glue}`s4_4_real_top_p_0_9` real words and repeats
# {glue}`s4_4_rep_top_p_0_9` of its 12-grams. {cite:t}`holtzman2020curious` found the same
# pattern with GPT-2 on word pieces: repetitive maximisation, incoherent pure sampling, and
# nucleus sampling closest to human text.
#
# ## Stop tokens
#
# A generator also needs to know when to stop. Language models are trained on text with
# boundaries marked by special tokens (GPT-2 uses `<|endoftext|>` between documents); generation
# stops when the model emits one. Our corpus has one verse per line, so the newline is a natural
# stop token: the model ends a verse when it predicts the verse is over. `generate` takes a list
# of stop ids; a row that has produced one is padded with it, and generation ends when every row
# of the batch has stopped:

# %%
newline = int(tokenizer.encode("\n")[0])
starts = ["And Jesus said", "The LORD is my", "Then said he", "And the sons of"]
batch = [encode(s) for s in starts]
n = min(b.shape[1] for b in batch)  # prompts of equal length form one batch
ids = torch.cat([b[:, :n] for b in batch])
limit = pick(smoke=30, book=600)  # 99% of the corpus's lines are shorter than 600 characters
verses = generate(model, ids, limit, temperature=0.8, top_p=0.95,
                  stop_tokens=[newline], generator=torch.Generator().manual_seed(0))
lengths = []
for row in verses:
    line = tokenizer.decode(row).split("\n")[0]
    lengths.append(len(line))
    print(line)
stopped = (verses[:, n:] == newline).any(dim=1)
print(f"{int(stopped.sum())} of {len(starts)} verses ended with a newline; "
      f"output width {verses.shape[1]} (limit {n + limit})")
for row in verses[:, n:][stopped]:  # after its first newline a row holds only newlines
    first = int((row == newline).nonzero()[0])
    assert (row[first:] == newline).all()
if stopped.all():
    assert verses.shape[1] < n + limit  # every row stopped: the batch ended early
if checks_enabled():
    assert stopped.float().mean() >= 0.75  # the model has learned where verses end
glue("s4_4_stopped", int(stopped.sum()))
glue("s4_4_n_verses", len(starts))
glue("s4_4_shortest_verse", min(lengths))

# %% [markdown]
# {glue}`s4_4_stopped` of the {glue}`s4_4_n_verses` verses end by themselves with a newline,
# the shortest after {glue}`s4_4_shortest_verse` characters; when every row has stopped, the
# batch ends early instead of running to the limit.

# %% [markdown]
# ## The key/value cache
#
# Generation is slow for a reason that has nothing to do with sampling. To produce token $t+1$,
# a plain implementation runs the model on the whole context $x_1..x_t$ and keeps only the last
# position's logits. Yet almost all of that work was done before. In a causal Transformer,
# position $i$ never attends to later positions, so its hidden states in every layer, and in
# particular its **keys** $k_i = W_K h_i$ and **values** $v_i = W_V h_i$, do not change when
# tokens are appended. At step $t$ the new position needs only its own query and the stored
# keys and values:
#
# $$
# \mathrm{attn}(q_t) = \sum_{i \le t} \operatorname{softmax}_i
#   \Big(\frac{q_t \cdot k_i}{\sqrt{d}}\Big) v_i .
# $$
#
# A **key/value cache** keeps $k_i, v_i$ for every layer and head. Each step then feeds the model
# a single token: the linear layers cost $O(P)$ FLOPs for $P$ parameters instead of $O(tP)$, and
# attention reads $t$ cached keys instead of recomputing a $t \times t$ score matrix. The price is
# memory, $2 \cdot n_\text{layer} \cdot B \cdot T \cdot C$ numbers for batch $B$, context $T$ and
# width $C$ (keys and values, all heads together). The library allocates the buffers on first use
# and writes each new position into them:

# %% [markdown]
# ```{literalinclude} ../../dlbook/nn/attention.py
# :pyobject: LayerKV.append
# ```
#
# The attention layer computes queries, keys and values for the new positions only, with
# rotary angles (if used) for their absolute positions, appends the keys and values, and lets the
# new queries attend to everything cached. When several new positions arrive at once (the
# prompt), query $i$ sits at position $\text{start}+i$ and may see keys up to there: a causal
# mask aligned to the bottom-right corner of the score matrix.

# %% [markdown]
# ```{literalinclude} ../../dlbook/nn/attention.py
# :pyobject: MultiHeadAttention._forward_cached
# ```
#
# `GPT.forward` takes the cache, offsets the learned position embeddings by the number of cached
# positions and passes each layer its slot. The decoding loop feeds the prompt once and then one
# token per step; once the context window is full, positions cannot shift inside the cache (they
# are absolute), so the loop refills it from the last `block_size` tokens, which gives exactly the
# sliding window of the uncached path:

# %% [markdown]
# ```{literalinclude} ../../dlbook/decoding.py
# :pyobject: generate
# :start-at: was_training = model.training
# :end-before: finally:
# ```
#
# **The cache changes nothing but the cost.** The check: generate with the cache while, at every
# step, also running the full uncached forward pass on the same context, and compare the logits,
# through the prompt, the decoding steps and past the end of the context window.

# %%
seq = encode("And God said, Let there be light: and there was light.")
n_steps = pick(smoke=10, book=2 * T)
cache = model.new_cache()
max_diff = 0.0
with torch.no_grad():
    for _ in range(n_steps):
        if cache.length + 1 > T:
            cache.reset()
        feed = seq[:, -T:] if cache.length == 0 else seq[:, -1:]
        cached = model(feed, cache=cache)[0][0, -1]
        full = model(seq[:, -T:])[0][0, -1]
        max_diff = max(max_diff, (cached - full).abs().max().item())
        seq = torch.cat([seq, cached.argmax().view(1, 1)], dim=1)
print(f"{n_steps} steps (context window {T}): largest logit difference {max_diff:.1e}")
assert max_diff < 1e-4
same = torch.equal(generate(model, encode("Jesus wept."), n_steps, temperature=0, use_cache=True),
                   generate(model, encode("Jesus wept."), n_steps, temperature=0, use_cache=False))
assert same
glue("s4_4_max_diff", max_diff, ".0e")
glue("s4_4_parity_steps", n_steps)

# %% [markdown]
# Over {glue}`s4_4_parity_steps` steps the logits with and without the cache differ by at most
# {glue}`s4_4_max_diff`, the rounding of float32 arithmetic done in a different order, and
# greedy decoding produces identical text both ways.
#
# **The speed-up.** Our pretrained model has a context of only {glue}`s4_4_block` characters,
# too short to show the effect, so we time a randomly initialised GPT of the same shape with a
# longer context (the weights do not affect the time). For each context length $t$ we time one
# decoding step both ways: the uncached step runs the model on $t$ tokens, the cached one on one
# token with $t-1$ positions in the cache. Each figure is the median of several repetitions.

# %%
long_T = pick(smoke=64, book=1024)
torch.manual_seed(0)
wide = GPT(GPTConfig(vocab_size=V, block_size=long_T, n_layer=4, n_head=4, n_embd=128)).eval()
ids = torch.randint(0, V, (1, long_T))
lengths_t = [t for t in (16, 32, 64, 128, 256, 512, 1024) if t <= long_T]
reps = pick(smoke=2, book=7)


uncached_ms, cached_ms = [], []
with torch.no_grad():
    for t in lengths_t:
        uncached_ms.append(1e3 * seconds_per_call(lambda t=t: wide(ids[:, :t]), repeats=reps, warmup=0))
        cache = wide.new_cache()
        wide(ids[:, : t - 1], cache=cache)  # the prompt, cached

        def one_step(t=t, cache=cache):
            wide(ids[:, t - 1 : t], cache=cache)
            for layer in cache.layers:  # forget the step again, so each repetition is the same
                layer.length = t - 1

        cached_ms.append(1e3 * seconds_per_call(one_step, repeats=reps, warmup=0))
for t, u, c in zip(lengths_t, uncached_ms, cached_ms, strict=True):
    print(f"t = {t:5d}: uncached {u:7.2f} ms   cached {c:6.2f} ms   speed-up {u / c:5.1f}x")

# whole generations of long_T - 1 tokens from a one-token prompt
n_gen = long_T - 1
t_cached = seconds_per_call(
    lambda: generate(wide, ids[:, :1], n_gen, temperature=0), repeats=1, warmup=0
)
t_plain = seconds_per_call(
    lambda: generate(wide, ids[:, :1], n_gen, temperature=0, use_cache=False), repeats=1, warmup=0
)
print(f"{n_gen} tokens: {t_plain:.2f} s without the cache, {t_cached:.2f} s with it")
glue("s4_4_gen_speedup", t_plain / t_cached, ".1f")
glue("s4_4_gen_tokens", n_gen)
glue("s4_4_step_speedup", uncached_ms[-1] / cached_ms[-1], ".0f")
glue("s4_4_long_T", lengths_t[-1])

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.loglog(lengths_t, uncached_ms, "o-", label="without cache (t tokens per step)")
ax.loglog(lengths_t, cached_ms, "s-", label="with KV cache (1 token per step)")
ax.set(xlabel="context length t", ylabel="time per decoding step (ms)")
ax.legend()
fig.tight_layout()
plt.show()
if checks_enabled():
    assert uncached_ms[-1] > 3 * cached_ms[-1]
    assert t_plain > 1.5 * t_cached

# %% [markdown]
# Without the cache the cost of a step grows with the context, roughly linearly at first and
# faster once the $t \times t$ attention matters; with the cache it stays nearly flat on this
# small model, whose single-token step is dominated by fixed overheads. At $t =$
# {glue}`s4_4_long_T` a cached step is {glue}`s4_4_step_speedup` times faster, and generating
# {glue}`s4_4_gen_tokens` tokens is {glue}`s4_4_gen_speedup` times faster end to end. (These
# times are measured on the machine that built this page; on a GPU the uncached path also
# wastes memory bandwidth, and the ratio grows with the model.)
#
# The memory is not free: for GPT-2 small (12 layers, width 768) a full 1,024-token context
# holds $2 \cdot 12 \cdot 1024 \cdot 768 \approx 18.9$ M numbers per sequence, 37.7 MB in
# bfloat16, and serving many long sequences at once is limited by the cache rather than by the
# weights (exercise 3).
#
# ## Bad input
#
# `generate` checks its arguments before any work: a prompt must be a non-empty `(B, T)` batch
# of ids inside the vocabulary; the temperature must be a finite number $\ge 0$, `top_k` a
# positive integer, `top_p` in $(0, 1]$, stop tokens inside the vocabulary. A prompt longer than
# the context is **cropped** to its last `block_size` tokens (documented behaviour, the same
# sliding window used once generation passes the context), while `GPT.forward` itself refuses
# an input, cached or not, that would exceed the context.

# %%
def full_cache():
    """A cache holding a whole context window of the pretrained model."""
    cache = model.new_cache()
    with torch.no_grad():
        model(encode(text[:T]), cache=cache)
    return cache


for name, call in {
    "empty prompt": lambda: generate(model, torch.zeros(1, 0, dtype=torch.long), 5),
    "temperature": lambda: generate(model, encode("And"), 5, temperature=-1),
    "top_p": lambda: generate(model, encode("And"), 5, top_p=1.5),
    "stop token": lambda: generate(model, encode("And"), 5, stop_tokens=[V]),
    "unknown character": lambda: encode("And \u00e9"),
    "cache overflow": lambda: model(encode("A"), cache=full_cache()),
}.items():
    print(f"{name:18s} → {error_message(call)}")
long_prompt = tokenizer.encode(text[: 2 * T])[None]
out = generate(model, long_prompt, 5, temperature=0)
assert out.shape[1] == long_prompt.shape[1] + 5  # cropped for the model, kept in the output


# %% [markdown]
# ## Summary
#
# * Decoding turns next-token distributions into text. Temperature $\tau$ rescales the logits;
#   the entropy of the distribution rises with $\tau$, from greedy ($\tau \to 0$) to uniform.
# * Greedy decoding maximises each step's probability and loops; pure sampling is varied but
#   lets in the unlikely tail. Top-k keeps a fixed number of candidates, top-p the smallest set
#   holding probability $p$, which adapts to the model's certainty.
# * Measured on our model: greedy text is more predictable than real text and repeats itself,
#   hot sampling misspells, nucleus sampling keeps words real without the loops.
# * Stop tokens end a sequence; a batch stops when every row has produced one.
# * A key/value cache stores each layer's keys and values so that each step runs the model on
#   one token. It gives the same logits (asserted to {glue}`s4_4_max_diff`) at a fraction of the
#   cost ({glue}`s4_4_step_speedup`× per step at {glue}`s4_4_long_T` tokens here), paid for in
#   memory: $2\, n_\text{layer} B T C$ numbers.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-4-4-1
# ```
# Show numerically that sampling at a small temperature is greedy decoding: for the positions of
# a batch of validation windows, draw one sample per position at $\tau = 0.01$ and compare with
# the arg-max. Where can the two still differ?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-4-1
# :class: dropdown
# ```
# At $\tau = 0.01$ a logit gap of $\Delta$ becomes a probability ratio of $e^{100\Delta}$: unless
# the two largest logits lie within a few hundredths of each other, the sample is the arg-max.
# The two differ only at near-ties, which are rare.

# %%
val_ids = tokenizer.encode(val_text[: 64 * T]).view(64, T)[: pick(smoke=4, book=64)]
with torch.no_grad():
    z = model(val_ids)[0].flatten(0, 1)  # (positions, V)
cold = sample_next(z, 0.01, generator=torch.Generator().manual_seed(0))
agree = (cold == z.argmax(-1, keepdim=True)).float().mean().item()
print(f"τ = 0.01 sample equals the arg-max at {agree:.2%} of {z.shape[0]} positions")
assert agree > 0.95

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-4-2
# ```
# **Min-p sampling** keeps the tokens whose probability is at least a fraction $m$ of the most
# probable token's, $p_i \ge m \cdot \max_j p_j$. Write `filter_min_p(logits, m)` in the style of
# `filter_top_p`, and check on the "sure" and "unsure" contexts above how many tokens it keeps
# for $m = 0.1$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-4-2
# :class: dropdown
# ```
# Since $p_i / p_j = e^{z_i - z_j}$, the condition is $z_i \ge \max_j z_j + \ln m$: no softmax is
# needed. Like top-p, the number of survivors adapts to the model's certainty.

# %%
def filter_min_p(logits: torch.Tensor, m: float) -> torch.Tensor:
    """Keep the logits within ``ln m`` of the row's maximum; set the rest to ``-inf``."""
    if not 0.0 < m <= 1.0:
        raise ValueError(f"m must lie in (0, 1], got {m}")
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(m)
    return logits.masked_fill(logits < threshold, float("-inf"))


for name, ctx in contexts.items():
    with torch.no_grad():
        z = model(encode(ctx))[0][0, -1]
    kept = torch.isfinite(filter_min_p(z, 0.1))
    probs = torch.softmax(z, -1)
    assert torch.equal(kept, probs >= 0.1 * probs.max() * (1 - 1e-6))
    print(f"{name}: min-p keeps {int(kept.sum())} of {V} characters")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-4-3
# ```
# Compute the key/value cache of GPT-2 small (12 layers, width 768, context 1,024) in bfloat16
# for one sequence and for a batch of 64, and compare with the 124 M weights in the same dtype.
# Check your formula against `KVCache.nbytes()` of a small model.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-4-3
# :class: dropdown
# ```
# $2 \cdot 12 \cdot 1024 \cdot 768 \cdot 2$ bytes $= 37.7$ MB per sequence and 2.4 GB for 64,
# against 248 MB of weights: at large batch sizes the cache, not the model, fills the memory.
# This is why later models share keys and values between heads (multi-query and grouped-query
# attention), which divides the cache by the number of heads per key/value group.

# %%
per_sequence = 2 * 12 * 1024 * 768 * 2
print(f"one sequence {per_sequence / 1e6:.1f} MB, 64 sequences {64 * per_sequence / 1e9:.2f} GB, "
      f"weights {124e6 * 2 / 1e6:.0f} MB")
small = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=3, n_head=2, n_embd=16)).eval()
c = small.new_cache()
with torch.no_grad():
    small(torch.zeros(5, 4, dtype=torch.long), cache=c)
assert c.nbytes() == 2 * 3 * 5 * 32 * 16 * 4  # layers × batch × context × width × float32

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-4-4
# ```
# From the timings above, estimate how the cost of a decoding step grows with the context $t$,
# with and without the cache: fit $\log(\text{time}) = a + b \log t$ to the three longest
# contexts. What exponents $b$ do you expect for large $t$, and why are the measured ones
# smaller?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-4-4
# :class: dropdown
# ```
# Without the cache a step processes $t$ tokens: the linear layers cost $\propto t$ and the
# attention $\propto t^2$, so $b$ tends to 1 while the linear layers dominate and towards 2 for
# very long contexts. With the cache, a step costs $\propto 1$ in the linear layers and
# $\propto t$ in attention, so $b$ lies between 0 and 1. For small $t$ fixed overheads (Python,
# kernel launches) hide both, which lowers the measured exponents.

# %%
if len(lengths_t) >= 3:
    logt = np.log(lengths_t[-3:])
    b_plain = np.polyfit(logt, np.log(uncached_ms[-3:]), 1)[0]
    b_cached = np.polyfit(logt, np.log(cached_ms[-3:]), 1)[0]
    print(f"exponent without cache {b_plain:.2f}, with cache {b_cached:.2f}")
    if checks_enabled():
        assert b_plain > b_cached

# %% [markdown]
# ```{solution-end}
# ```
