# %% [markdown]
# # Reinforcement learning from verifiable rewards
#
# Supervised fine-tuning ({doc}`06_sft`) shows the model the right answer and asks it to
# imitate. Reinforcement learning (RL) never shows the answer: the model writes its own
# attempts, a **reward** scores each, and the training makes the well-scored attempts more
# likely. That needs no demonstrations, only a way to judge, and for questions with a
# checkable answer (arithmetic, unit conversions, code with tests) the judge can be a short
# program: a **verifiable reward**. The algorithm of this section is **GRPO**, *group relative
# policy optimisation*, introduced with DeepSeekMath {cite:p}`shao2024deepseekmath` (which
# paired it with a learned reward model; it works the same with a rule), a variant of PPO
# {cite:p}`schulman2017proximal` that needs no value network.
#
# This section writes the pieces from scratch in `dlbook.rl`: the policy-gradient estimate and
# why a baseline helps, PPO's clipped objective, GRPO's group-relative advantages and its KL
# estimate, and a rule-based reward. It then trains the SFT model of {doc}`06_sft` with GRPO on
# one of its task families, plots the reward, and measures held-out accuracy before, during
# and after; what made this short CPU run work says much about what RL needs.
# The last part relates all this to RLHF with a *learned* reward model, and to DPO
# ({doc}`07_dpo`).

# %%
import math
import re

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import binomtest, linregress

from dlbook import checks_enabled, seed_everything
from dlbook.book import error_message, glue
from dlbook.data.tasks import Task, exact_match, make_tasks, reward, well_formed
from dlbook.device import get_device
from dlbook.hub import load
from dlbook.rl import (
    book_grpo_config,
    group_advantages,
    grpo_loss,
    grpo_run,
    kl_estimate,
    prompt_ids,
    rollout_batch,
    stop_token,
)
from dlbook.sft import book_sft_config, sft_run

generator = seed_everything(0)

# %% [markdown]
# ## The policy gradient
#
# A language model is a **policy** $\pi_\theta$: given a prompt $x$ it samples a completion
# $y$, token by token. A reward $r(x, y)$ scores the completion, and RL maximises the expected
# reward $J(\theta) = \mathbb{E}_{y \sim \pi_\theta}[r(x, y)]$. The reward is a black box (a
# program, a person), so we cannot backpropagate through it. The **log-derivative trick**
# turns the gradient of an expectation into an expectation we can sample
# {cite:p}`williams1992simple`:
#
# $$
# \nabla_\theta J = \sum_y r(y)\, \nabla_\theta \pi_\theta(y)
# = \sum_y \pi_\theta(y)\, r(y)\, \nabla_\theta \log \pi_\theta(y)
# = \mathbb{E}_{y \sim \pi_\theta}\big[r(y)\, \nabla_\theta \log \pi_\theta(y)\big].
# $$
#
# Sample completions, weight the gradient of each one's log-likelihood by its reward: this is
# REINFORCE. For a sequence, $\log \pi_\theta(y) = \sum_t \log \pi_\theta(y_t \mid x,
# y_{<t})$, so the gradient is that of the supervised loss on the model's *own* samples,
# each weighted by its reward. Subtracting a **baseline** $b$ that does not depend on $y$
# leaves the expectation unchanged, because $\mathbb{E}[\nabla \log \pi_\theta(y)] = \sum_y
# \nabla \pi_\theta(y) = \nabla 1 = 0$, but it can shrink the variance a lot. The weight $r -
# b$ is the **advantage**: how much better this sample was than expected.
#
# A check on a policy over four actions, where the exact gradient is known: average the
# estimate over many samples, with and without the mean reward as the baseline.

# %%
theta = torch.tensor([0.5, 0.0, -0.5, 1.0], requires_grad=True)
r_actions = torch.tensor([1.0, 0.0, 0.1, 0.1])
exact = torch.autograd.grad((theta.softmax(0) * r_actions).sum(), theta)[0]

probs = theta.detach().softmax(0)
n_samples = 20_000
actions = torch.multinomial(probs, n_samples, replacement=True, generator=generator)
score = torch.eye(4)[actions] - probs  # ∇θ log softmax(θ)[a] = onehot(a) - softmax(θ)
baseline = (probs * r_actions).sum()
per_sample = r_actions[actions, None] * score
per_sample_b = (r_actions[actions, None] - baseline) * score
for name, g in [("exact", exact), ("REINFORCE", per_sample.mean(0)),
                ("with baseline", per_sample_b.mean(0))]:
    print(f"{name:14s}", np.round(g.numpy(), 4))
var_plain = per_sample.var(0).sum().item()
var_base = per_sample_b.var(0).sum().item()
print(f"variance of one sample's estimate: {var_plain:.4f} without, {var_base:.4f} with baseline")
glue("s5_8_var_ratio", var_plain / var_base, ".1f")
assert torch.allclose(per_sample.mean(0), exact, atol=0.01)
assert torch.allclose(per_sample_b.mean(0), exact, atol=0.01)
assert var_base < var_plain / 1.5

# %% [markdown]
# Both averages match the exact gradient; the baseline divides the variance of a single
# sample's estimate by {glue}`s5_8_var_ratio`. Variance is the central difficulty of policy
# gradients: with a batch of a few dozen samples per step, as below, the noise of the estimate
# can be larger than the signal.
#
# ## PPO's clipped objective
#
# REINFORCE uses each sample once, for one gradient step. To take several steps on the same
# samples, the objective must account for the policy having moved since it sampled them. PPO
# {cite:p}`schulman2017proximal` weights each token by the probability ratio
# $\rho_t = \pi_\theta(y_t \mid \cdot) / \pi_{\theta_\text{old}}(y_t \mid \cdot)$ between
# the current policy and the one that sampled, and **clips** it, which removes any incentive
# to move a token's ratio outside $[1 - \varepsilon, 1 + \varepsilon]$:
#
# $$
# L^\text{clip}(\theta) = \mathbb{E}_t\Big[\min\big(\rho_t A_t,\;
# \operatorname{clip}(\rho_t, 1 - \varepsilon, 1 + \varepsilon)\, A_t\big)\Big].
# $$
#
# At $\rho_t = 1$ (right after sampling) the gradient of $\rho_t A_t$ is $A_t \nabla \log
# \pi_\theta$, the policy gradient. The `min` makes the objective a pessimistic bound: once a
# token with a positive advantage has become more than $1 + \varepsilon$ times as likely, or
# one with a negative advantage less than $1 - \varepsilon$ times, the objective is flat and
# the gradient zero; in the other direction, where the update went the wrong way, it is not
# clipped. $\varepsilon = 0.2$ is the usual value. `dlbook.rl.grpo_loss` implements it
# (negated, as a loss to minimise); its gradient on a single token:

# %%
rhos = torch.linspace(0.5, 1.5, 201)
fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=False)
one = torch.ones(1, 1, dtype=torch.bool)
for ax, a in zip(axes, (1.0, -1.0), strict=True):
    values, grads = [], []
    for rho in rhos:
        logp = torch.full((1, 1), math.log(rho.item()), requires_grad=True)
        loss, _ = grpo_loss(logp, torch.zeros(1, 1), torch.tensor([a]), one, clip=0.2)
        (-loss).backward()
        values.append(-loss.item())
        grads.append(logp.grad.item())
    ax.plot(rhos, values, label="objective  min(ρA, clip(ρ)A)")
    ax.plot(rhos, grads, "--", label="gradient w.r.t. log π")
    ax.axvspan(0.8, 1.2, color="grey", alpha=0.15)
    ax.set(xlabel="ratio ρ = π / π_old", title=f"advantage A = {a:+.0f}")
    ax.legend(fontsize=8)
    g = np.array(grads)
    outside = (rhos.numpy() > 1.2) if a > 0 else (rhos.numpy() < 0.8)
    assert np.all(g[outside] == 0) and np.all(g[~outside] != 0)
fig.tight_layout()
plt.show()

# %% [markdown]
# The grey band is $[1 - \varepsilon, 1 + \varepsilon]$. For $A > 0$ the gradient vanishes
# to the right of it, for $A < 0$ to the left, and elsewhere it is $\rho A$ (the
# gradient of $\rho A$ with respect to $\log \pi$ is $\rho A$ itself, so there the two
# curves coincide). In PPO for language models
# {cite:p}`ouyang2022training`, the advantages come from a **value network**, a second
# language model with a scalar head (InstructGPT initialises it from the reward model) that
# predicts the expected future reward at every token and is trained alongside the policy.
#
# ## GRPO: the group is the baseline
#
# GRPO drops the value network {cite:p}`shao2024deepseekmath`. For each prompt it samples a
# *group* of $K$ completions, scores them, and uses the group's mean reward as the baseline:
# the advantage of completion $i$ is its reward standardised within the group,
#
# $$
# A_i = \frac{r_i - \operatorname{mean}(r_1, \dots, r_K)}{\operatorname{std}(r_1, \dots,
# r_K)},
# $$
#
# given to every token of that completion. The loss is PPO's clipped objective averaged over
# each completion's tokens and then over the completions, minus a KL penalty that keeps the
# policy near a reference $\pi_\text{ref}$ (the starting model). The KL is estimated per
# sampled token with $\frac{\pi_\text{ref}}{\pi_\theta} - \log \frac{\pi_\text{ref}}
# {\pi_\theta} - 1$, which is never negative and, for tokens sampled from $\pi_\theta$,
# unbiased; DeepSeekMath uses this estimator {cite:p}`shao2024deepseekmath`.
# `group_advantages` takes rewards as a `(G, K)` tensor, one row per prompt:

# %%
rewards = torch.tensor([[1.0, 0.1, 0.1, 1.0, 0.0, 0.1, 1.0, 0.1],  # mixed: a signal
                        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # all right: no signal
adv = group_advantages(rewards)
print(np.round(adv.numpy(), 2))
assert torch.allclose(adv[0].mean(), torch.tensor(0.0), atol=1e-6)
assert abs(adv[0].std().item() - 1) < 1e-3 and torch.equal(adv[1], torch.zeros(8))
empty_group = error_message(lambda: group_advantages(torch.empty(2, 0)))
single = error_message(lambda: group_advantages(torch.tensor([[1.0], [0.0]])))
print("empty group  →", empty_group)
print("group of one →", single)
assert "empty group" in empty_group and "K=1" in single
glue("s5_8_empty_group", empty_group)

# KL estimate: zero when the policies agree, positive otherwise
logp_a = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
assert torch.equal(kl_estimate(logp_a, logp_a), torch.zeros(1, 3))
assert (kl_estimate(logp_a, logp_a - 0.3) > 0).all()

# %% [markdown]
# In the first group, the three right answers get positive advantages and the wrong ones
# negative; the second group, all right, gets zeros: when every completion scores the same,
# there is nothing to prefer, and the prompt contributes nothing to the policy-gradient term
# (only a KL penalty, if any, acts on it; too easy or too hard prompts are wasted samples). A group needs at least two completions, and an empty one is
# refused with "{glue}`s5_8_empty_group`".
#
# ## A rule-based reward
#
# The tasks of {doc}`06_sft` have exact answers, so the reward is a rule
# (`dlbook.data.tasks.reward`): **1** for the exact answer, a small **format bonus** of 0.1 for
# a wrong answer in the requested form (a bare number or list), **0** for anything else.

# %%
task = Task("What is 47 + 38? Answer with the number only.", "85", "add")
for completion in ["85", " 85\n", "84", "The answer is 85.", "85 apples"]:
    print(f"{completion!r:22s} reward {reward(task, completion)}")
assert [reward(task, c) for c in ["85", "84", "The answer is 85."]] == [1.0, 0.1, 0.0]

# %% [markdown]
# The rule is strict: "The answer is 85." is right but gets nothing, because the task asked for
# the number only. Such a reward cannot be fooled the way a learned reward model can (see
# below), but it can still reward the wrong thing, a point we return to under reward hacking.
#
# ## Training the SFT model with GRPO
#
# The policy starts from the SFT model of {doc}`06_sft` (its LoRA adapter merged into
# SmolLM2-135M-Instruct), which is also the reference. A fresh LoRA adapter on top of it is
# what GRPO trains. Each step:
#
# 1. takes $G$ training prompts and samples $K$ completions of each at temperature 1;
# 2. scores them with the reward and standardises within each group;
# 3. computes the log-probability of every completion token under the policy (the prompt is
#    masked, as in SFT; the end-of-turn token is trained when the model produced it, since
#    deciding to stop is part of the answer) and takes a gradient step on `grpo_loss`.
#
# Here is one rollout batch as the loss sees it: the prompt's positions carry no target.

# %%
base, tokenizer = load("smollm2-135m")
STOP = stop_token(tokenizer)
p_ids = prompt_ids(tokenizer, task)
answer_ids = tokenizer.encode("85") + [STOP]
idx, targets = rollout_batch([p_ids], [answer_ids], pad_id=STOP)
n_target = int((targets != -100).sum())
print(f"prompt {len(p_ids)} tokens, completion {len(answer_ids)}: {n_target} targets")
assert n_target == len(answer_ids) and targets[0, -1].item() == STOP
glue("s5_8_prompt_tokens", len(p_ids))

# %% [markdown]
# The templated prompt is {glue}`s5_8_prompt_tokens` tokens long (it includes SmolLM2's
# default system message), an answer a few tokens (more for a sorted list): much of the
# compute of a training step goes into prompts, which is why the run below is small.
#
# Which prompts to train on matters as much as the algorithm. A group teaches something only
# if its samples differ in reward, so the prompts must be neither always solved nor never. And
# what the groups of one step teach must carry over to the prompts of the next, or the steps
# pull in unrelated directions. Of the four task families, section 5.6 measured `convert` as
# the hardest for the SFT model ({glue}`s5_8_sft_convert` exact, so its groups tend to be
# uniformly wrong) and `larger` as the easiest ({glue}`s5_8_sft_larger`), yet `larger` is not
# solved: of the SFT
# model's {glue}`s5_8_wrong_before` wrong answers to the held-out questions below,
# {glue}`s5_8_smaller_first` name the *smaller* number when it comes first and
# {glue}`s5_8_smaller_second` when it comes second. Comparing two numbers is one skill shared
# by every question of the family, so a correction learned on one group helps the next, unlike
# addition, where what one group teaches (that 57 + 96 is 153) says little about 38 + 45.
# `dlbook.rl.grpo_run` therefore trains on `larger`. The run is cached like the SFT run, keyed
# by its configuration; the policy answers the held-out questions greedily before, every
# {glue}`s5_8_eval_every` steps during, and after training.

# %%
sft_config = book_sft_config()
sft_record, _ = sft_run(base, tokenizer, sft_config)  # section 5.6's run, from the cache
by_family = sft_record["by_family"]
print("SFT model, held-out exact match by family:", by_family)
glue("s5_8_sft_convert", by_family.get("convert", 0.0), ".0%")
glue("s5_8_sft_larger", by_family.get("larger", 0.0), ".0%")
if checks_enabled():
    assert min(by_family, key=by_family.get) == "convert"
    assert max(by_family, key=by_family.get) == "larger"
config = book_grpo_config()
print(config)
record, adapter_path = grpo_run(base, tokenizer, sft_config, config, device=get_device())
h = {k: np.array(v) for k, v in record["history"].items()}
steps = len(h["reward"])
print(f"{steps} steps of {config.groups} × {config.samples} completions, "
      f"{h['seconds'].sum():.0f} s ({h['sample_seconds'].mean():.1f} s sampling and "
      f"{(h['seconds'] - h['sample_seconds']).mean():.1f} s updating per step)")
for i in range(steps):
    print(f"step {i + 1:3d}: reward {h['reward'][i]:.3f}  right {h['correct'][i]:.2f}  "
          f"well-formed but wrong {h['formed_wrong'][i]:.2f}  length {h['length'][i]:.1f}  "
          f"groups with signal {h['groups_with_signal'][i]:.0f}/{config.groups}")

before, after = record["before"], record["after"]
# the held-out curve: before, during (every eval_every steps) and after training
eval_x = np.concatenate([[0], h.get("eval_step", np.array([])), [steps]])
eval_y = np.concatenate([[before["exact_match"][0]], h.get("eval_score", np.array([])),
                         [after["exact_match"][0]]])
trend = linregress(np.arange(1, steps + 1), h["reward"])
window = max(1, steps // 4)
first, last = h["reward"][:window].mean(), h["reward"][-window:].mean()
print(f"sample reward: first {window} steps {first:.3f}, last {window} {last:.3f}; "
      f"trend {trend.slope:+.4f} per step (p = {trend.pvalue:.2g})")
print("held-out exact match at steps", eval_x.astype(int).tolist(), np.round(eval_y, 2).tolist())
glue("s5_8_steps", steps)
glue("s5_8_G", config.groups)
glue("s5_8_K", config.samples)
glue("s5_8_lr", config.lr, ".0e")
glue("s5_8_sft_lr", sft_config.lr, ".0e")
glue("s5_8_lr_ratio", sft_config.lr / config.lr, ".1f")
glue("s5_8_sft_batch", sft_config.examples_per_step)
glue("s5_8_eval_every", config.eval_every)
glue("s5_8_trainable", record["trainable"], ",")
glue("s5_8_train_s", h["seconds"].sum(), ".0f")
glue("s5_8_window", window)
glue("s5_8_reward_first", first, ".2f")
glue("s5_8_reward_last", last, ".2f")
glue("s5_8_slope", trend.slope * (steps - 1), ".2f")  # the line from step 1 to the last
glue("s5_8_slope_p", trend.pvalue, ".2g")
glue("s5_8_signal", h["groups_with_signal"].mean() / config.groups, ".0%")
glue("s5_8_step_sd", h["reward"].std(ddof=1), ".2f")
glue("s5_8_eval_curve", " → ".join(f"{v:.0%}" for v in eval_y))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
ax = axes[0]
x = np.arange(1, steps + 1)
ax.plot(x, h["reward"], "o-", ms=3, alpha=0.5, label="mean reward of the step's samples")
ax.plot(x, trend.intercept + trend.slope * x, lw=2.5, label="linear trend")
ax.plot(x, h["formed_wrong"], ":", label="share well-formed but wrong")
ax.set(xlabel="GRPO step", ylabel="reward / share", ylim=(-0.02, 1.02),
       title=f"training samples ({config.groups} prompts × {config.samples}, T = 1)")
ax.legend(fontsize=8, loc="center right")
ax = axes[1]
ax.plot(eval_x, eval_y, "s-", color="C2")
ax.fill_between([0, steps], before["exact_match"][1], before["exact_match"][2], color="grey",
                alpha=0.2, label="95 % interval before")
ax.set(xlabel="GRPO step", ylabel="exact match", ylim=(min(0.5, eval_y.min() - 0.05), 1.0),
       title=f"held-out questions (greedy, {len(before['scores'])})")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %% [markdown]
# In {glue}`s5_8_steps` steps of {glue}`s5_8_G` prompts × {glue}`s5_8_K` samples
# ({glue}`s5_8_train_s` s, a LoRA adapter of {glue}`s5_8_trainable` parameters, learning rate
# {glue}`s5_8_lr`), the mean reward of the training samples was {glue}`s5_8_reward_first`
# over the first {glue}`s5_8_window` steps and {glue}`s5_8_reward_last` over the last
# {glue}`s5_8_window`. It is a noisy curve: every step draws {glue}`s5_8_G` new prompts, some
# easy and some hard, and the per-step reward scatters around its mean with a standard
# deviation of {glue}`s5_8_step_sd`. A straight line fitted through it rises by
# {glue}`s5_8_slope` over the run ($p =$ {glue}`s5_8_slope_p` for a zero slope). On average
# {glue}`s5_8_signal` of the groups had a signal (not all completions scoring the same). The
# right panel is the measure that counts: greedy answers to held-out questions the training
# never saw. It is not monotone either ({glue}`s5_8_eval_curve` at the evaluated steps): with
# {glue}`s5_8_n_test` questions one question is one point, so read the end point through the
# paired test below.

# %%
n_test = len(before["scores"])
b_scores, a_scores = np.array(before["scores"]), np.array(after["scores"])
gained = int(((a_scores == 1) & (b_scores == 0)).sum())
lost = int(((a_scores == 0) & (b_scores == 1)).sum())
p_value = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
print(f"held-out exact match ({n_test} questions): before {before['exact_match'][0]:.1%} "
      f"[{before['exact_match'][1]:.1%}, {before['exact_match'][2]:.1%}], after "
      f"{after['exact_match'][0]:.1%} [{after['exact_match'][1]:.1%}, "
      f"{after['exact_match'][2]:.1%}]")
print(f"questions gained {gained}, lost {lost}; sign test p = {p_value:.3g}")
print(f"well-formed answers: before {before['well_formed']:.0%}, after {after['well_formed']:.0%}")
test_tasks = make_tasks(n_test, "test", families=config.families)
# the comparison questions (all of them in `book`; `full` trains on other families too)
larger_rows = [i for i, t in enumerate(test_tasks) if t.family == "larger"]
larger_tasks = [test_tasks[i] for i in larger_rows]


def wrong_answer_kinds(completions: list[str]) -> list[str]:
    """For each wrong answer to a comparison question: where the smaller number stood when the
    answer named it ("first"/"second"), else "other"."""
    kinds = []
    for i in larger_rows:
        t, c = test_tasks[i], completions[i]
        a, b = map(int, re.findall(r"\d+", t.prompt))
        if not exact_match(t, c):
            named_smaller = c.strip() == str(min(a, b))
            kinds.append(("first" if a < b else "second") if named_smaller else "other")
    return kinds


wrong_before, wrong_after = (wrong_answer_kinds(r["completions"]) for r in (before, after))
for label, kinds in (("SFT model", wrong_before), ("after GRPO", wrong_after)):
    print(f"{label}: {len(kinds)} wrong answers; the smaller number when it came first "
          f"{kinds.count('first')}, second {kinds.count('second')}, "
          f"something else {kinds.count('other')}")
glue("s5_8_wrong_before", len(wrong_before))
glue("s5_8_smaller_first", wrong_before.count("first"))
glue("s5_8_smaller_second", wrong_before.count("second"))
glue("s5_8_wrong_after", len(wrong_after))
glue("s5_8_after_first", wrong_after.count("first"))
glue("s5_8_after_second", wrong_after.count("second"))
if checks_enabled():
    assert wrong_before.count("first") > 0 and wrong_before.count("second") > 0
    # fewer wrong answers on both sides: the policy did not trade one position for the other
    assert wrong_after.count("first") < wrong_before.count("first")
    assert wrong_after.count("second") < wrong_before.count("second")
glue("s5_8_n_test", n_test)
glue("s5_8_before", before["exact_match"][0], ".0%")
glue("s5_8_after", after["exact_match"][0], ".0%")
glue("s5_8_before_ci", f"{before['exact_match'][1]:.0%}–{before['exact_match'][2]:.0%}")
glue("s5_8_after_ci", f"{after['exact_match'][1]:.0%}–{after['exact_match'][2]:.0%}")
glue("s5_8_gained", gained)
glue("s5_8_lost", lost)
glue("s5_8_p", p_value, ".2g")
glue("s5_8_formed_before", before["well_formed"], ".0%")
glue("s5_8_formed_after", after["well_formed"], ".0%")
if checks_enabled():
    # the improvement this section claims: held-out accuracy up, beyond chance, and a rising
    # sample reward
    assert after["exact_match"][0] >= before["exact_match"][0] + 0.08
    assert gained > 2 * lost and p_value < 0.01
    assert trend.slope > 0 and last > first

# %% [markdown]
# On {glue}`s5_8_n_test` held-out questions, greedy exact match went from
# {glue}`s5_8_before` (95 % interval {glue}`s5_8_before_ci`) to {glue}`s5_8_after`
# ({glue}`s5_8_after_ci`): {glue}`s5_8_gained` questions that the SFT model got wrong are now
# right, and {glue}`s5_8_lost` that it got right are now wrong. Counting only the questions
# that changed, a sign test gives $p =$ {glue}`s5_8_p`: the policy learned from its own
# attempts, with no demonstration, to compare numbers better than the model it started from,
# on questions it never trained on.
#
# Two choices were made for this run, and both are about noise. The first is the task: one
# skill shared by every prompt, as argued above. The second is the step size. A step
# estimates the policy gradient from {glue}`s5_8_G` groups, and most of that estimate is
# noise; Adam scales every parameter's step to about the learning rate whether its gradient is
# signal or noise, so a large learning rate moves the adapter in largely random directions and
# disturbs what SFT taught faster than the signal accumulates. The learning rate here is
# {glue}`s5_8_lr`, {glue}`s5_8_lr_ratio` times smaller than the {glue}`s5_8_sft_lr` that
# SFT used with {glue}`s5_8_sft_batch` examples per step (the fifth exercise below asks what
# happens at the SFT's rate). We chose the family and the learning rate after trying others
# on these same held-out questions, so the $p$-value above flatters the run somewhat. GRPO as
# published uses groups of 64 completions, batches of 1024 and a learning rate of 1e-6 on the
# whole model {cite:p}`shao2024deepseekmath`: many samples, small steps. Tasks whose skill
# transfers less from prompt to prompt (addition, sorting) are likely to need that scale. The
# `full` profile of this page trains on `add`, `sort` and `larger` for 200 steps of 16
# prompts × 16 samples, with four gradient steps per batch (so the clipping acts) and a KL
# penalty, which needs a GPU; we report no result for it here.
#
# ## Reward hacking
#
# A policy optimises the reward it is given, not the intention behind it. When the two differ,
# it finds the difference: that is **reward hacking**. Our reward has two soft spots. The
# first is the format bonus, which pays 0.1 for *any* well-formed number: a policy that
# answered every question with the same number would collect it without ever being right. The
# second is particular to comparisons: a policy that always names the number that comes
# *first* is right whenever the larger number comes first ({glue}`s5_8_larger_first` of the
# held-out questions), without comparing anything. Did GRPO go either way? The share of
# well-formed but wrong samples is the dotted line of the figure, and the held-out answers
# were well-formed {glue}`s5_8_formed_before` of the time before and
# {glue}`s5_8_formed_after` after. Of the {glue}`s5_8_wrong_after` wrong answers left after
# training, {glue}`s5_8_after_first` named the smaller number when it came first and
# {glue}`s5_8_after_second` when it came second (before: {glue}`s5_8_smaller_first` and
# {glue}`s5_8_smaller_second`): no drift towards one position.
#
# What decides it is what each strategy pays. Score four fixed policies under our reward and
# under a reward for the form alone, on the held-out comparison questions: the SFT model's own
# greedy answers, a constant answer, always the first number, and an explanation.

# %%
first_numbers = [re.findall(r"\d+", t.prompt)[0] for t in larger_tasks]
larger_first = np.mean([t.answer == f for t, f in zip(larger_tasks, first_numbers, strict=True)])
glue("s5_8_larger_first", larger_first, ".0%")
n_larger = len(larger_tasks)
policies = {
    "SFT model (greedy)": [before["completions"][i] for i in larger_rows],
    'always "100"': ["100"] * n_larger,
    "always the first number": first_numbers,
    'always "The answer is …"': ["The answer is 42."] * n_larger,
}
rows = {}
for name, completions in policies.items():
    ours = np.mean([reward(t, c) for t, c in zip(larger_tasks, completions, strict=True)])
    form_only = np.mean([float(well_formed(c)) for c in completions])
    right = np.mean([exact_match(t, c) for t, c in zip(larger_tasks, completions, strict=True)])
    rows[name] = (ours, form_only, right)
    print(f"{name:26s} reward {ours:.3f}   form-only reward {form_only:.2f}   right {right:.0%}")
glue("s5_8_const_reward", rows['always "100"'][0], ".2f")
glue("s5_8_first_reward", rows["always the first number"][0], ".2f")
glue("s5_8_sft_reward", rows["SFT model (greedy)"][0], ".2f")
assert rows['always "100"'][1] == 1.0 >= rows["SFT model (greedy)"][1]
if checks_enabled():
    assert rows['always "100"'][0] < rows["always the first number"][0]
    assert rows["always the first number"][0] < rows["SFT model (greedy)"][0]

# %% [markdown]
# Under our reward the constant answer earns {glue}`s5_8_const_reward` per question, always
# naming the first number {glue}`s5_8_first_reward`, and the SFT model
# {glue}`s5_8_sft_reward`: collapsing to either shortcut would *lower* the reward, so the
# gradient does not push that way. Under a reward for the form alone, the constant answer is
# optimal, as good as any correct answer, and GRPO would have every reason to find it (it is
# easier than comparing numbers). A policy that is always well formed and right on a share $a$
# of the questions earns $0.1 + 0.9a$, the position shortcut $0.1 + 0.9 \cdot$
# {glue}`s5_8_larger_first`: a model right less often than the larger number comes first
# would gain from the shortcut even under our reward. The general lesson: whatever a reward
# pays for that is easier than the task, the policy tends to learn first. Verifiable rewards
# make the gap visible; with a learned reward model, optimising too hard against it is known
# to lower the true quality {cite:p}`gao2023scaling`.
#
# ## RLHF: learning the reward
#
# Most of what we want from an assistant (helpful, harmless, well written) has no program to
# check it. **RLHF** learns the reward from human comparisons, a method introduced for
# control tasks {cite:p}`christiano2017deep` and applied to language models in InstructGPT
# {cite:p}`ouyang2022training`: labellers compare answers to the same prompt, a **reward model** (the language model with a
# scalar head) is trained to give the preferred answer the higher score, with the
# Bradley-Terry loss $-\log \sigma(r(x, y_w) - r(x, y_l))$ {cite:p}`bradley1952rank`, and the
# policy is then optimised against it with PPO and a KL penalty towards the SFT model. That is
# InstructGPT's recipe, in three stages: SFT, reward model, PPO
# {cite:p}`ouyang2022training`.
#
# The three sections of this chapter are three answers to the question *where does the
# training signal come from*:
#
# | | signal | samples from the policy? | extra models in training |
# |---|---|---|---|
# | SFT ({doc}`06_sft`) | demonstrations of the right answer | no | none |
# | DPO ({doc}`07_dpo`) | pairs of answers, one preferred | no (fixed pairs) | none (the reference's log-probabilities are computed once, before training) |
# | RLHF with PPO | a reward model trained on preference pairs | yes | reward model, value network, reference |
# | GRPO here | a program that checks the answer | yes | none (this run has no KL term; with one, the frozen reference) |
#
# DPO {cite:p}`rafailov2023direct` starts from the same KL-regularised objective as RLHF and
# shows that its optimal policy can be written in closed form in terms of the reward; solving
# for the reward turns the reward model's loss into a loss on the policy itself, so neither a
# reward model nor sampling is needed. GRPO keeps the sampling (the policy learns from its own
# attempts, including ones no dataset contains) but replaces the learned reward with a rule and
# the value network with the group's mean. The KL penalty appears in all three preference or
# reward methods for the same reason: the reward is only trustworthy near the data it was
# built on (for a rule-based reward, the KL term instead guards against forgetting what SFT
# taught). A learned reward model is a proxy, and optimising a proxy too hard makes it
# diverge from the true goal: Gao et al. measured how a "gold" reward (a larger reward model
# standing in for human judgement) first rises and
# then falls as the policy moves away from its start under a proxy reward model
# {cite:p}`gao2023scaling`. That is reward hacking again, at scale.
#
# ## Summary
#
# * The policy gradient is $\mathbb{E}[A\, \nabla \log \pi_\theta(y)]$: the supervised
#   gradient on the model's own samples, weighted by their advantage; a baseline leaves it
#   unbiased and cuts its variance (by {glue}`s5_8_var_ratio`× in the four-action example).
# * PPO's clipped ratio lets several steps reuse one batch of samples: the gradient of a token
#   vanishes once its ratio to the sampling policy has left $[1 - \varepsilon, 1 + \varepsilon]$
#   in the direction its advantage favours.
# * GRPO takes the baseline from a group of $K$ samples of the same prompt, standardised, and
#   needs no value network; groups whose samples all score the same carry no signal.
# * With a rule-based reward (exact answer, plus 0.1 for the right form), a short CPU run of
#   {glue}`s5_8_steps` steps on the `larger` questions raised held-out exact match from
#   {glue}`s5_8_before` to {glue}`s5_8_after` (sign test $p =$ {glue}`s5_8_p`), with no
#   demonstrations. It was set up so that every prompt exercised the same skill and the steps
#   were small; the sample reward itself is noisy from step to step ({glue}`s5_8_reward_first` →
#   {glue}`s5_8_reward_last` between the first and last {glue}`s5_8_window` steps).
# * A reward that pays for something easier than the task invites hacking as soon as the
#   shortcut pays more than the policy's own answers. Here neither shortcut did (a constant
#   answer {glue}`s5_8_const_reward`, the first number {glue}`s5_8_first_reward`, the SFT model
#   {glue}`s5_8_sft_reward`), and the run, which had no KL term, took neither. Learned reward
#   models invite hacking most, which is why RLHF keeps a KL leash to the reference.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-5-8-1
# ```
# Show that subtracting a baseline $b$ that depends on the prompt but not on the completion
# leaves the policy gradient unbiased. Why does the group mean of GRPO, which includes the
# completion's *own* reward, break this slightly, and by how much for a group of $K$?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-8-1
# :class: dropdown
# ```
# $\mathbb{E}_y[b\, \nabla \log \pi(y)] = b \sum_y \nabla \pi(y) = b\, \nabla 1 = 0$. The
# group mean $\bar r = \frac1K \sum_j r_j$ contains $r_i/K$, which depends on $y_i$; writing
# $r_i - \bar r = \frac{K-1}{K}\big(r_i - \frac{1}{K-1}\sum_{j \ne i} r_j\big)$ shows that the
# mean-centred advantage is the leave-one-out advantage (an unbiased baseline) scaled by
# $\frac{K-1}{K}$: the direction is unbiased, only the size shrinks. (Dividing by the group's
# standard deviation, which also depends on $y_i$, is a further change of scale per group.)
# A numerical check with the four-action policy above:

# %%
K = 4
draws = torch.multinomial(probs, 4 * 50_000, replacement=True, generator=generator).view(-1, K)
r_g = r_actions[draws]
adv_mean = r_g - r_g.mean(1, keepdim=True)
g_est = (adv_mean[..., None] * (torch.eye(4)[draws] - probs)).mean((0, 1))
print(np.round(g_est.numpy(), 4), np.round(((K - 1) / K * exact).numpy(), 4))
assert torch.allclose(g_est, (K - 1) / K * exact, atol=0.01)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-8-2
# ```
# With one gradient step per batch, as in the run above, $\rho = 1$ and nothing is ever
# clipped. Take a toy batch of log-probabilities, make two gradient steps on `grpo_loss` with
# the same `logp_old`, and report the share of clipped tokens after each (the `clipped` entry
# of the returned statistics). Which tokens get clipped first?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-8-2
# :class: dropdown
# ```
# Treat the log-probabilities themselves as the parameters (a policy that can move each
# token's probability freely). The first step starts at ratio 1 and clips nothing; after it,
# tokens whose log-probability rose by more than $\log 1.2 \approx 0.18$ ($A > 0$) or fell by
# more than $-\log 0.8 \approx 0.22$ ($A < 0$) are clipped. With gradient descent a token's step is proportional to
# $A_i / |y_i|$, so the tokens of short completions with large advantages get there first.

# %%
g2 = torch.Generator().manual_seed(1)
logp_old = -torch.rand(6, 5, generator=g2)
mask = torch.ones(6, 5, dtype=torch.bool)
mask[:3, 2:] = False  # three short completions
advs = torch.tensor([2.0, -1.5, 0.5, 1.0, -1.0, 0.3])
params = logp_old.clone().requires_grad_(True)
opt = torch.optim.SGD([params], lr=2.0)
shares = []
for _ in range(3):
    loss, stats = grpo_loss(params, logp_old, advs, mask)
    shares.append(stats["clipped"])
    opt.zero_grad()
    loss.backward()
    opt.step()
print("clipped share at each step:", shares)
# after one step: the 2 tokens of each of the first two (short, |A| large) completions, of 21
assert shares[0] == 0 and abs(shares[1] - 4 / 21) < 1e-6

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-8-3
# ```
# Make the format bonus 1 (so that any well-formed answer earns as much as a right one) and
# run `grpo_run` again with `GRPOConfig(format_bonus=1.0)`. What happens to the reward curve
# and to held-out exact match? Then try a bonus of 0 on a model that still writes
# explanations (the base SmolLM2 without SFT): why does it barely learn?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-8-3
# :class: dropdown
# ```
# Expect the following. With a bonus of 1 the SFT model already earns nearly the maximum
# reward (its held-out answers were well-formed {glue}`s5_8_formed_before` of the time), so
# most groups score the same and carry no signal: the reward curve stays flat near 1 and
# exact match should not improve; any drift is towards answers that are easy to produce, not
# right. With a bonus of 0 on the base model, almost no sample is exactly right, so almost
# every group is all zeros: GRPO only
# learns from groups with at least one success. That is why RL from verifiable rewards starts
# from a model that succeeds some of the time, after SFT, and why a small format bonus can
# help to get a model into the form in which it *can* be right. The runs take as long as the
# one above, so they are left to you.
#
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-8-4
# ```
# How many groups carry a signal? For a prompt that the policy answers correctly with
# probability $p$, the reward of each sample is about 1 or 0.1. Compute the probability that
# a group of $K$ has at least one right and one wrong answer, for $K = 2, 4, 8, 16$ and $p =
# 0.05, 0.3, 0.9$. What does it say about the choice of $K$ and of the training prompts?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-8-4
# :class: dropdown
# ```
# The group is mixed unless all $K$ are right or all wrong: $1 - p^K - (1-p)^K$. Very easy
# and very hard prompts need large groups to produce a signal at all; prompts of medium
# difficulty are the most useful, which is why one can filter prompts by the
# policy's current success rate.

# %%
for k in (2, 4, 8, 16):
    print(f"K={k:2d}: " + "  ".join(f"p={p}: {1 - p**k - (1 - p)**k:.2f}"
                                    for p in (0.05, 0.3, 0.9)))
assert 1 - 0.05**8 - 0.95**8 < 0.4 < 1 - 0.3**8 - 0.7**8

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-8-5
# ```
# Run `grpo_run` twice more with one change each: `GRPOConfig(lr=2e-3)` (the SFT's learning
# rate), and `GRPOConfig(families=("add", "sort"), max_new_tokens=16)`. Compare the held-out
# curves with the one above. What do the two changes have in common?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-8-5
# :class: dropdown
# ```
# Expect neither to improve held-out exact match as much, and the first possibly to lower it.
# Both raise the share of noise in each update: the larger learning rate lets every noisy step move the
# adapter further, and on `add` and `sort` what one group teaches carries over little to the
# next prompt, so the signal no longer adds up across steps while the noise still does. Each
# run takes at least as long as the one above (longer on `sort`, whose prompts and answers are
# longer) (the cache keys them by their configuration, so the
# section's own run is not overwritten).
#
# ```{solution-end}
# ```
