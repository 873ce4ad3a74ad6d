# %% [markdown]
# # Scaling laws in miniature
#
# Before spending millions on one pretraining run, a lab wants to know what it will get: how
# low the loss will go for a given budget, and whether that budget buys more by making the
# model larger or by training it on more text. *Scaling laws* answer both from a series of
# small, cheap runs. They are empirical regularities: over many orders of magnitude, the test
# loss of a language model falls as a power law in the number of parameters $N$, the number of
# training tokens $D$ and the training compute $C$. This section states the two landmark
# results, then reproduces the method at toy scale on the King James Bible: a grid of GPTs
# from about ten thousand to nearly a million parameters, each trained on several token budgets,
# a compute-efficient frontier, a fitted exponent and a compute-optimal model size.

# %% [markdown]
# ## Power laws in $N$, $D$ and $C$
#
# A *power law* $L = a\,x^{-\alpha}$ is a straight line on log-log axes,
# $\log L = \log a - \alpha \log x$: every doubling of $x$ multiplies the loss by the same
# factor $2^{-\alpha}$. Training compute is counted in floating-point operations (FLOPs).
# A forward pass costs about $2N$ FLOPs per token (one multiply-add per weight) and the
# backward pass twice that, so training on $D$ tokens costs
#
# $$
# C \approx 6ND .
# $$ (eq-s4-7-compute)
#
# Here $N$ counts the *non-embedding* parameters (the token and position tables are lookups,
# not matrix products), and the cost of attention scores, $12\,n_\text{layer}\,T\,C_\text{model}$
# FLOPs per token for $n_\text{layer}$ layers of width $C_\text{model}$ and context $T$ (section
# {doc}`05_efficiency`), is neglected; we check below how much it matters at our scale.
#
# {cite:t}`kaplan2020scaling` trained Transformers up to about $1.5\times10^9$ non-embedding
# parameters and found, for a model trained to convergence on enough data, and for data
# limited by early stopping on a large model,
#
# $$
# L(N) = \left(\frac{N_c}{N}\right)^{\alpha_N},\ \alpha_N \approx 0.076,
# \qquad
# L(D) = \left(\frac{D_c}{D}\right)^{\alpha_D},\ \alpha_D \approx 0.095,
# $$
#
# and, along the compute-efficient frontier, $L \propto C^{-0.050}$ ($L$ is the cross-entropy in
# nats per BPE token on their test text). From their fits they
# concluded that, as compute grows, the optimal model size should grow much faster than the
# data, roughly $N_\text{opt} \propto C^{0.73}$: large models trained on comparatively few
# tokens, stopped well before convergence.
#
# {cite:t}`hoffmann2022training` revisited the question with over 400 models and, crucially, a
# learning-rate schedule whose cosine decay ends at each run's token budget (Kaplan et al.
# used one schedule length for all budgets, which makes short runs look worse than they are).
# All three of their estimation methods gave $N_\text{opt} \propto C^{a}$ and
# $D_\text{opt} \propto C^{b}$ with $a$ between 0.46 and 0.50 and $b = 1 - a$: parameters and tokens should
# grow *equally*, at about 20 tokens per parameter. Their 70-billion-parameter model
# Chinchilla, trained on 1.4 trillion tokens (20 per parameter), outperformed the 280-billion
# Gopher trained with a similar compute budget on 300 billion tokens.
#
# If the loss at a fixed compute is minimised at $N_\text{opt}(C)$ and $D = C/(6N)$, then
# with Chinchilla's ratio $D = 20N$ equation {eq}`eq-s4-7-compute` gives
# $N_\text{opt} = \sqrt{C/120}$.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullFormatter

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.artifacts import kjv_tokens
from dlbook.bench import flops_per_token, matmul_params
from dlbook.book import glue
from dlbook.data.lm import split_tokens
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.pretrain import PretrainConfig
from dlbook.scaling import compute_frontier, fit_power_law, train_for_tokens

seed_everything(0)
device = get_device()
# Our models are tiny: on a CPU, one thread per run is faster than splitting each small matrix
# product across cores (the synchronisation costs more than it saves).
torch.set_num_threads(1)

# %% [markdown]
# ## Fitting a power law
#
# To fit $L = a\,C^{-\alpha}$ we take logarithms and solve an ordinary least-squares problem
# for the line $\log L = \log a - \alpha \log C$: with $u_i = \log C_i$, $v_i = \log L_i$,
#
# $$
# \alpha = -\frac{\sum_i (u_i - \bar u)(v_i - \bar v)}{\sum_i (u_i - \bar u)^2},
# \qquad \log a = \bar v + \alpha \bar u .
# $$
#
# Fitting in log space weighs relative errors equally at every scale, which is what we want
# for data spanning orders of magnitude. Real losses cannot fall below the entropy of the text,
# so a fit may add an *irreducible* term, $L = E + a\,C^{-\alpha}$, which is no longer linear in
# the parameters and needs an iterative least-squares solver. The library's
# `fit_power_law` does both:
#
# ```{literalinclude} ../../dlbook/scaling.py
# :pyobject: fit_power_law
# ```
#
# Before trusting it with real runs we check that it recovers a known exponent from noisy
# synthetic points, and that the closed form above gives the same line.

# %%
rng = np.random.default_rng(0)
c_syn = np.logspace(10, 16, 12)
true_alpha, true_a = 0.07, 30.0
l_syn = true_a * c_syn ** -true_alpha * np.exp(rng.normal(0, 0.01, c_syn.size))
fit_syn = fit_power_law(c_syn, l_syn)
u, v = np.log(c_syn), np.log(l_syn)
alpha_hand = -np.sum((u - u.mean()) * (v - v.mean())) / np.sum((u - u.mean()) ** 2)
assert abs(alpha_hand - fit_syn["alpha"]) < 1e-9
assert abs(fit_syn["alpha"] - true_alpha) < 0.01, fit_syn

# With an irreducible term: points from E + a C^-alpha, recovered by the curve fit.
l_irr = (1.2 + 40.0 * c_syn ** -0.15) * np.exp(rng.normal(0, 0.003, c_syn.size))
fit_irr = fit_power_law(c_syn, l_irr, irreducible=True)
assert abs(fit_irr["alpha"] - 0.15) < 0.03 and abs(fit_irr["E"] - 1.2) < 0.1, fit_irr
glue("s4_7_syn_alpha", fit_syn["alpha"], ".4f")
glue("s4_7_syn_irr_alpha", fit_irr["alpha"], ".3f")
glue("s4_7_syn_irr_e", fit_irr["E"], ".3f")
print(fit_syn, fit_irr, sep="\n")

# %% [markdown]
# From points drawn around $30\,C^{-0.07}$ with 1 % noise the fit returns
# $\alpha =$ {glue}`s4_7_syn_alpha`; from points around $1.2 + 40\,C^{-0.15}$ the fit with an
# irreducible term returns $\alpha =$ {glue}`s4_7_syn_irr_alpha` and
# $E =$ {glue}`s4_7_syn_irr_e`.
#
# ## The experiment
#
# We use the character-level tokenizer: its vocabulary has only a few dozen symbols, so the
# embedding table is a small part of even the smallest model, and every model sees exactly the
# same stream of tokens. (With the library's byte-level BPE the vocabulary, and with it the
# embedding table, would be larger than the non-embedding part of our smallest models.) Each
# run trains a fresh GPT with `train_for_tokens`, which calls the book's pretraining loop
# (AdamW, warm-up and a cosine decay that ends at the run's budget, as in Chinchilla) and then
# scores the model on the same fixed windows of the held-out last 10 % of the text:
#
# ```{literalinclude} ../../dlbook/scaling.py
# :pyobject: train_for_tokens
# ```
#
# The grid: several shapes (depth, width) and several token budgets, each twice the previous one.
# The learning rate, batch size and context length are the same for every run; only $N$ and
# $D$ change.

# %%
tokenizer, stream = kjv_tokens(PretrainConfig(corpus_chars=pick(smoke=200_000, book=None)))
train_data, val_data = split_tokens(stream, 0.1)
block_size = pick(smoke=16, book=32, full=128)
batch_size = pick(smoke=4, book=16, full=64)
shapes = pick(  # (n_layer, n_head, n_embd)
    smoke=[(1, 2, 16), (2, 2, 32)],
    book=[(1, 2, 32), (2, 2, 48), (2, 4, 80), (3, 4, 112), (4, 4, 128)],
    full=[(1, 2, 32), (2, 2, 64), (3, 4, 128), (4, 4, 192), (6, 6, 288), (8, 8, 384)],
)
budgets = pick(  # training tokens
    smoke=[256, 512],
    book=[2**14 * 2**k for k in range(5)],
    full=[2**20 * 2**k for k in range(6)],
)
configs = [
    GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=nl, n_head=nh,
              n_embd=ne)
    for nl, nh, ne in shapes
]
for cfg in configs:
    print(f"L={cfg.n_layer} C={cfg.n_embd}: N = {GPT(cfg).num_params(non_embedding=True):,}")

# %%
runs = []
for cfg in configs:
    for tokens in budgets:
        r = train_for_tokens(cfg, tokens, train_data, val_data, batch_size=batch_size,
                             lr=3e-3, eval_batches=pick(smoke=2, book=20), device=device)
        runs.append(r)
        print(f"N={r['N']:>9,.0f} D={r['D']:>9,.0f} C={r['C']:.2e} "
              f"val={r['val_loss']:.3f} ({r['seconds']:.1f} s)")
sizes = sorted({r["N"] for r in runs})
glue("s4_7_n_min", sizes[0], ",.0f")
glue("s4_7_n_max", sizes[-1], ",.0f")
glue("s4_7_n_runs", len(runs))
glue("s4_7_seconds", sum(r["seconds"] for r in runs), ".0f")

# %% [markdown]
# ## The compute-efficient frontier
#
# Each run is one point (compute, loss). For any compute budget the best we know how to do is
# the lowest loss reached by any run that cost no more: the *compute-efficient frontier*, the
# lower envelope of all points. `compute_frontier` keeps the runs that beat every cheaper run:
#
# ```{literalinclude} ../../dlbook/scaling.py
# :pyobject: compute_frontier
# ```
#
# We fit the power law to the frontier.

# %%
points = [(r["C"], r["val_loss"], r["N"], r["D"]) for r in runs]
frontier = compute_frontier(points)
# A frontier of one point happens only in the tiny smoke runs; fit all points then.
fit_points = frontier if len(frontier) >= 2 else points
fit = fit_power_law([p[0] for p in fit_points], [p[1] for p in fit_points])
glue("s4_7_alpha", fit["alpha"], ".3f")
glue("s4_7_a", fit["a"], ".2f")
glue("s4_7_frontier_n", len(frontier))
glue("s4_7_fit_rms", fit["rms"], ".3f")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
ax = axes[0]
colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
for color, n in zip(colors, sizes, strict=True):
    mine = sorted((r["C"], r["val_loss"]) for r in runs if r["N"] == n)
    ax.plot(*zip(*mine, strict=True), "o-", color=color, alpha=0.8, label=f"N = {n:,.0f}")
fc = np.array([p[0] for p in frontier])
ax.plot(fc, [p[1] for p in frontier], "k*", ms=12, label="frontier")
grid = np.logspace(np.log10(min(p[0] for p in points)), np.log10(max(p[0] for p in points)))
ax.plot(grid, fit["a"] * grid ** -fit["alpha"], "k--",
        label=rf"fit $L = {fit['a']:.1f}\,C^{{-{fit['alpha']:.3f}}}$")
ax.set(xscale="log", yscale="log", xlabel="training compute C = 6ND (FLOPs)",
       ylabel="validation loss (nats/char)", title="Loss against compute")
ax.legend(fontsize=8)

# Iso-FLOP view: interpolate each model's loss at fixed compute budgets (linear in log C).
log_c = {n: np.log([r["C"] for r in runs if r["N"] == n]) for n in sizes}
loss_at = {n: [r["val_loss"] for r in runs if r["N"] == n] for n in sizes}


def iso_flop(c: float) -> list[tuple[float, float]]:
    """(N, interpolated loss) for every model whose runs bracket compute c."""
    out = []
    for n in sizes:
        if log_c[n][0] <= np.log(c) <= log_c[n][-1]:
            out.append((n, float(np.interp(np.log(c), log_c[n], loss_at[n]))))
    return out


# Budgets that at least three model sizes bracket, one low and one high.
candidates = np.logspace(np.log10(min(p[0] for p in points)), np.log10(max(p[0] for p in points)),
                         41)
bracketed = [c for c in candidates if len(iso_flop(c)) >= min(3, len(sizes))]
iso_budgets = [bracketed[0], bracketed[-1]] if len(bracketed) > 1 else bracketed[:1]
ax = axes[1]
optima = []
for c, style in zip(iso_budgets, ["s-", "o-"], strict=False):
    curve = iso_flop(c)
    n_best, l_best = min(curve, key=lambda t: t[1])
    optima.append((c, n_best, l_best, c / (6 * n_best)))
    ax.plot(*zip(*curve, strict=True), style, label=f"C = {c:.1e} FLOPs")
    ax.plot([n_best], [l_best], "r*", ms=14)
ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="validation loss (nats/char)",
       title="Iso-FLOP curves: loss at fixed compute")
ax.xaxis.set_minor_formatter(NullFormatter())  # label only the powers of ten
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

for i, (c, n_best, _, d_best) in enumerate(optima):
    glue(f"s4_7_iso{i}_c", c, ".1e")
    glue(f"s4_7_iso{i}_n", n_best, ",.0f")
    glue(f"s4_7_iso{i}_d", d_best, ",.0f")
    glue(f"s4_7_iso{i}_ratio", d_best / n_best, ".2g")
    print(f"C={c:.2e}: best N={n_best:,.0f}, D={d_best:,.0f}, D/N={d_best / n_best:.2g}")
for i in range(len(optima), 2):  # only in the tiny smoke grid: no iso-FLOP optimum to quote
    for name in ("c", "n", "d", "ratio"):
        glue(f"s4_7_iso{i}_{name}", "n/a")

# %%
if checks_enabled():
    # The fitted frontier exponent is positive: more compute, lower loss.
    assert fit["alpha"] > 0, fit
    # For every model size, doubling the tokens never raises the loss by more than noise.
    for n in sizes:
        losses = loss_at[n]
        assert all(b < a + 0.05 for a, b in zip(losses, losses[1:], strict=False)), (n, losses)
    # The best model at the largest budget beats the best model at the smallest budget.
    best = {d: min(r["val_loss"] for r in runs if r["D"] == d) for d in {r["D"] for r in runs}}
    assert best[max(best)] < best[min(best)], best
    # The frontier has several points and the compute-optimal size grows with the budget.
    assert len(frontier) >= 3, frontier
    assert optima[-1][1] >= optima[0][1], optima
    # The curves cross: at the lower iso-FLOP budget a smaller model beats the largest one
    # there, and the winners are trained on more than the second-largest token budget.
    assert optima[0][1] < max(n for n, _ in iso_flop(optima[0][0])), optima
    assert all(d_best > budgets[-2] for *_, d_best in optima), optima

# %% [markdown]
# The {glue}`s4_7_n_runs` runs (models of {glue}`s4_7_n_min` to {glue}`s4_7_n_max`
# non-embedding parameters) took {glue}`s4_7_seconds` s of training on this machine. Every
# model's loss falls as its budget grows, and the curves of different sizes cross: at a small
# compute budget a small model trained on many tokens beats a large model trained on few, and
# only at larger budgets do the larger models take over. The lower envelope, the
# {glue}`s4_7_frontier_n` starred runs, is close to a straight line on log-log axes. The fit
# gives $L(C) \approx a\,C^{-\alpha}$ with $a =$ {glue}`s4_7_a` and
# $\alpha =$ {glue}`s4_7_alpha`, with a root-mean-square error of {glue}`s4_7_fit_rms` in
# $\log L$.
#
# The right panel holds compute fixed and asks which size is best (the *iso-FLOP* view of
# Hoffmann et al.). At $C =$ {glue}`s4_7_iso0_c` FLOPs the loss is lowest for
# $N =$ {glue}`s4_7_iso0_n`, trained on $D = C/6N =$ {glue}`s4_7_iso0_d` tokens,
# {glue}`s4_7_iso0_ratio` tokens per parameter; at $C =$ {glue}`s4_7_iso1_c` the best size is
# $N =$ {glue}`s4_7_iso1_n` with {glue}`s4_7_iso1_ratio` tokens per parameter. The optimum moves
# to larger models as compute grows, as both papers found. But look where the winners sit: they
# are the runs with close to the largest token budget of the grid, and smaller models, which
# might do better still with more tokens, cannot reach that compute within the grid. The
# tokens-per-parameter ratios we read off are therefore set as much by the edges of our grid as
# by the data; a real study would extend the grid until the iso-FLOP curves have a clear
# minimum in the middle.
#
# ### Why our numbers differ from the papers'
#
# Neither our exponent nor our tokens-per-parameter ratios should be expected to match Kaplan's
# $0.050$ or Chinchilla's 20:
#
# * **Scale.** Our runs span a few orders of magnitude of compute, more than ten below the
#   largest runs of Hoffmann et al. (over $10^{23}$ FLOPs). Our models are still in the first
#   phase of learning, picking up letter frequencies and common words, where loss falls fast
#   and the curve need not be a clean power law; the papers fit the regime that follows.
# * **Optimizer steps.** With one batch size for all runs, a small token budget is also a small
#   number of optimizer steps. Large models given few steps cannot move far from their random
#   initialisation, whatever their capacity; this penalises them at small budgets and pushes
#   the optimum towards small models trained long.
# * **Tokens.** A character carries far less information than a BPE token (an English BPE
#   token is typically about four characters), so "20 tokens per parameter" in characters and
#   in BPE tokens are different amounts of text. Our loss is in nats per character.
# * **Coarse grid, untuned runs.** A handful of sizes and budgets gives a frontier of a handful
#   of points and optima that can only be one of the sizes tried; one learning rate for all sizes
#   favours some over others. The papers tune these and fit smooth curves.
# * **What $N$ and $C$ count.** At our small widths and short context the attention term that
#   $6ND$ neglects is not negligible (below), and the embedding table, left out of $N$, is a
#   sizeable part of the smallest model.
#
# What does transfer is the method: a grid of cheap runs, the frontier, a fit, and a
# compute-optimal size read off iso-FLOP curves. That is how real scaling studies choose the
# size of the expensive run.
#
# ### How good is $C = 6ND$ here?

# %%
ratios = {r["N"]: r["C_attn"] / r["C"] for r in runs}
for cfg in configs:
    model = GPT(cfg)
    n = model.num_params(non_embedding=True)
    by_hand = flops_per_token(cfg, matmul_params(model)) / (6 * n)
    assert abs(by_hand - ratios[n]) < 1e-9
glue("s4_7_attn_small", ratios[sizes[0]], ".2f")
glue("s4_7_attn_large", ratios[sizes[-1]], ".2f")
print({f"{n:,.0f}": round(x, 3) for n, x in ratios.items()})

# %% [markdown]
# Counting the attention scores and the output layer (the tied embedding matrix, used as a
# matrix product at the output), as `flops_per_token` does, the smallest model costs
# {glue}`s4_7_attn_small` times $6ND$ and the largest {glue}`s4_7_attn_large` times. For
# billion-parameter models with $C_\text{model}$ in the thousands the correction is a few
# percent, which is why $6ND$ is the standard estimate; at our scale it shifts the small models
# to the right on the compute axis and makes them look somewhat less efficient.
#
# ## Summary
#
# * Language-model loss falls as a power law in parameters, data and compute; training compute
#   is about $C = 6ND$ FLOPs.
# * Kaplan et al. fitted $\alpha_N \approx 0.076$ and $\alpha_D \approx 0.095$ and advised
#   growing $N$ much faster than $D$; Hoffmann et al., with schedules matched to each budget,
#   found that $N$ and $D$ should grow equally, at about 20 tokens per parameter.
# * The method at toy scale: train a grid of sizes × token budgets, take the lower envelope of
#   loss against compute, fit $L = a C^{-\alpha}$ in log space, and read the compute-optimal
#   size off iso-FLOP curves. Here the exponent was {glue}`s4_7_alpha`.
# * The numbers of a toy study (exponent, tokens per parameter) do not transfer to large scale;
#   the procedure does.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-4-7-1
# ```
# If loss follows $L = a C^{-\alpha}$, by what factor must compute grow to lower the loss by
# 10 %? Evaluate it for our fitted $\alpha$ and for Kaplan's $\alpha_C = 0.050$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-7-1
# :class: dropdown
# ```
# $a (kC)^{-\alpha} = 0.9\, a C^{-\alpha}$ gives $k = 0.9^{-1/\alpha}$. A small exponent makes
# progress expensive: at $\alpha = 0.05$, $k = 0.9^{-20} \approx 8.2$.

# %%
k_ours = 0.9 ** (-1 / fit["alpha"])
k_kaplan = 0.9 ** (-1 / 0.050)
assert np.isclose(fit["a"] * (k_ours * 1e12) ** -fit["alpha"],
                  0.9 * fit["a"] * 1e12 ** -fit["alpha"])
print(f"our fit: x{k_ours:.3g}; Kaplan: x{k_kaplan:.3g}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-7-2
# ```
# GPT-3 {cite:p}`brown2020language`, with 175 billion parameters, was trained on 300 billion tokens. Estimate its training
# compute with $C = 6ND$. How large a model, trained on how many tokens, would Chinchilla's
# rule of 20 tokens per parameter choose for the same compute?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-7-2
# :class: dropdown
# ```
# $C = 6 \cdot 1.75\times10^{11} \cdot 3\times10^{11} \approx 3.2\times10^{23}$ FLOPs.
# With $D = 20N$, $C = 120N^2$, so $N = \sqrt{C/120} \approx 51$ billion parameters and
# $D \approx 1.0$ trillion tokens: a model three times smaller trained on three times more text.

# %%
c_gpt3 = 6 * 175e9 * 300e9
n_chin = np.sqrt(c_gpt3 / 120)
d_chin = 20 * n_chin
assert np.isclose(6 * n_chin * d_chin, c_gpt3)
assert 50e9 < n_chin < 52e9 and 1.0e12 < d_chin < 1.05e12
print(f"C = {c_gpt3:.2e} FLOPs; N = {n_chin / 1e9:.0f} B, D = {d_chin / 1e12:.2f} T tokens")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-7-3
# ```
# Losses level off at the entropy of the text, so the true curve is $L = E + aC^{-\alpha}$.
# Generate points from $L = 1.5 + 20\,C^{-0.1}$ for $C$ from $10^{10}$ to $10^{16}$ and fit the
# plain power law to them. Is the fitted exponent too large or too small? Why? Then fit with
# `irreducible=True`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-7-3
# :class: dropdown
# ```
# The plain fit must explain a curve that flattens towards $E$ with a single straight line in
# log-log space, whose slope is $\frac{d\log L}{d\log C} = -\alpha\,\frac{L-E}{L}$: smaller in
# magnitude than $\alpha$ everywhere. So the plain fit *underestimates* the exponent. The fit
# with an irreducible term recovers $E$ and $\alpha$.

# %%
c3 = np.logspace(10, 16, 15)
l3 = 1.5 + 20 * c3 ** -0.1
plain = fit_power_law(c3, l3)
full_fit = fit_power_law(c3, l3, irreducible=True)
assert plain["alpha"] < 0.1
assert abs(full_fit["alpha"] - 0.1) < 1e-3 and abs(full_fit["E"] - 1.5) < 1e-2
print(f"plain alpha = {plain['alpha']:.4f}; with E: alpha = {full_fit['alpha']:.4f}, "
      f"E = {full_fit['E']:.3f}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-7-4
# ```
# Kaplan et al. fitted $L(N)$ from models trained to convergence. Use our runs the same way:
# take each size's loss at the largest budget and fit $L(N) = a N^{-\alpha_N}$. Why is this
# only a rough stand-in for Kaplan's $L(N)$?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-7-4
# :class: dropdown
# ```
# At the largest budget every model has seen the same number of tokens, which is many per
# parameter for the small models but few for the large ones: the large models' losses are
# limited by data, not by size, and lie above what those models could reach. That pulls the
# right end of the fit up and makes $\alpha_N$ too small. Kaplan et al. trained each model
# on enough data (with early stopping) that data did not limit it.

# %%
last = {n: min((r for r in runs if r["N"] == n), key=lambda r: -r["D"])["val_loss"]
        for n in sizes}
fit_n = fit_power_law(list(last), list(last.values()))
print(f"alpha_N = {fit_n['alpha']:.3f}")
if checks_enabled():
    assert fit_n["alpha"] > 0

# %% [markdown]
# ```{solution-end}
# ```
