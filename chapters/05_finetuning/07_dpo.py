# %% [markdown]
# # Preference optimisation (DPO)
#
# Supervised fine-tuning ({doc}`section 5.6 <06_sft>`) teaches a model to imitate written
# answers. Often it is easier to *compare* two answers than to write the best one, and what we
# want is a model whose answers are preferred. Reinforcement learning from human feedback
# (RLHF) turns comparisons into a training signal in two stages
# {cite:p}`christiano2017deep,ouyang2022training`: fit a **reward model** to the comparisons,
# then optimise the policy (the language model) to earn high reward with a reinforcement
# learning algorithm such as PPO {cite:p}`schulman2017proximal`, while a penalty keeps it close
# to the supervised model. **Direct preference optimisation** (DPO) {cite:p}`rafailov2023direct`
# shows that, for the same objective, both stages collapse into one classification loss on the
# pairs, with no reward model and no sampling during training.
#
# This section derives the DPO loss from the RLHF objective step by step, implements it and
# checks it against an independent formula, builds preference pairs from the SFT model's own
# samples ranked by the verifiable checker of the task suite, trains LoRA adapters with DPO for
# two values of $\beta$, and measures what changed: preference accuracy and reward margins on
# held-out pairs, the task metric, and the KL divergence from the starting model.

# %%
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest

from dlbook import checks_enabled, pick, seed_everything
from dlbook.artifacts import cached_record_run, cached_run, config_key
from dlbook.book import error_message, glue
from dlbook.checkpoint import atomic_write, read_json
from dlbook.data.tasks import exact_match, make_tasks
from dlbook.evaluate import evaluate, stop_token, wilson_interval
from dlbook.hub import load
from dlbook.lora import apply_lora, load_adapter, save_adapter, trainable_parameters
from dlbook.preference import (
    DPOConfig,
    PreferencePair,
    batch_order,
    dpo_loss,
    make_pairs,
    pair_examples,
    preference_metrics,
    sample_completions,
    sampled_kl,
    sequence_logprobs,
    train_dpo,
)
from dlbook.sft import book_sft_config, load_sft_model, sft_run

generator = seed_everything(0)

# %% [markdown]
# ## From RLHF to DPO
#
# **Preferences.** A labeller (here: a program) sees a prompt $x$ and two completions and
# says which is better, $y_w \succ y_l$ ($w$ for the winner, $l$ for the loser). The
# Bradley–Terry model {cite:p}`bradley1952rank` explains such comparisons by a hidden score
# per item, here a reward $r(x, y)$: the probability that $y_w$ wins is the logistic function
# of the difference,
#
# $$
# P(y_w \succ y_l \mid x) = \frac{e^{r(x, y_w)}}{e^{r(x, y_w)} + e^{r(x, y_l)}}
# = \sigma\big(r(x, y_w) - r(x, y_l)\big), \qquad \sigma(z) = \frac{1}{1 + e^{-z}} .
# $$
#
# RLHF fits a reward model $r_\phi$ by maximising this likelihood on the labelled pairs
# {cite:p}`christiano2017deep,ouyang2022training`, i.e. by minimising
# $-\mathbb{E}\,\log \sigma(r_\phi(x, y_w) - r_\phi(x, y_l))$. Only differences of rewards
# enter, so any function of $x$ alone can be added to $r$ without changing a single
# probability.
#
# **The RLHF objective.** The policy $\pi_\theta$ should earn a high reward without drifting
# far from a reference policy $\pi_\text{ref}$ (the SFT model it starts from), where the reward
# model was fitted and can be trusted: optimised too hard against a learnt reward, a policy
# eventually gets *worse* by the true measure the reward model stands in for
# {cite:p}`gao2023scaling`. For each prompt:
#
# $$
# \max_{\pi}\; \mathbb{E}_{y \sim \pi(\cdot|x)}\big[r(x, y)\big]
# - \beta\, \mathrm{KL}\big(\pi(\cdot|x) \,\|\, \pi_\text{ref}(\cdot|x)\big),
# $$
#
# with $\beta > 0$ setting the price of a nat of divergence. RLHF solves this with PPO,
# sampling from the policy and scoring the samples with $r_\phi$ all through training.
#
# **Its solution in closed form.** Write $Z(x) = \sum_y \pi_\text{ref}(y|x)\, e^{r(x,y)/\beta}$
# and $\pi^*(y|x) = \pi_\text{ref}(y|x)\, e^{r(x,y)/\beta} / Z(x)$, a probability
# distribution. Then, dividing the objective by $-\beta$,
#
# $$
# \mathbb{E}_{y\sim\pi}\Big[\log \frac{\pi(y|x)}{\pi_\text{ref}(y|x)} - \frac{r(x,y)}{\beta}\Big]
# = \mathbb{E}_{y\sim\pi}\Big[\log \frac{\pi(y|x)}{\pi_\text{ref}(y|x)\, e^{r(x,y)/\beta} / Z(x)}
# \Big] - \log Z(x)
# = \mathrm{KL}\big(\pi \,\|\, \pi^*\big) - \log Z(x).
# $$
#
# $Z(x)$ does not depend on $\pi$ and a KL divergence is smallest, zero, when the two
# distributions are equal, so $\pi^*$ is *the* maximiser {cite:p}`rafailov2023direct`. The
# cell below checks this on a toy "language" of five completions: no random policy beats
# $\pi^*$.

# %%
toy_g = torch.Generator().manual_seed(0)
toy_ref = torch.softmax(torch.randn(5, generator=toy_g, dtype=torch.float64), 0)
toy_r = torch.randn(5, generator=toy_g, dtype=torch.float64)


def rlhf_objective(pi: torch.Tensor, beta: float) -> torch.Tensor:
    """E_pi[r] - beta KL(pi || pi_ref) on the toy problem."""
    return (pi * toy_r).sum() - beta * (pi * (pi / toy_ref).log()).sum()


for toy_beta in (0.1, 1.0, 10.0):
    pi_star = toy_ref * torch.exp(toy_r / toy_beta)
    pi_star /= pi_star.sum()
    best = rlhf_objective(pi_star, toy_beta)
    others = torch.softmax(3 * torch.randn(2000, 5, generator=toy_g, dtype=torch.float64), 1)
    assert all(rlhf_objective(p, toy_beta) < best for p in others)
    # the optimum's value is beta log Z, as the identity above says
    log_z = torch.logsumexp(toy_ref.log() + toy_r / toy_beta, 0)
    assert abs(best - toy_beta * log_z) < 1e-12
    print(f"beta {toy_beta:5}: pi* = {np.round(pi_star.numpy(), 3)}")
print(f"pi_ref       = {np.round(toy_ref.numpy(), 3)}; rewards {np.round(toy_r.numpy(), 2)}")

# %% [markdown]
# A small $\beta$ piles the probability on the best completion, a large one leaves
# $\pi_\text{ref}$ almost unchanged.
#
# **From rewards to policies.** Take the logarithm of $\pi^*$ and solve for the reward:
#
# $$
# r(x, y) = \beta \log \frac{\pi^*(y|x)}{\pi_\text{ref}(y|x)} + \beta \log Z(x).
# $$
#
# Every reward function corresponds to an optimal policy, and the reward can be read off that
# policy up to the term $\beta \log Z(x)$, which depends on the prompt only. Put this into
# the Bradley–Terry probability: both completions share the prompt, so $\beta \log Z(x)$
# cancels, and the probability of the preferences is a function of the policy alone:
#
# $$
# P(y_w \succ y_l \mid x) = \sigma\Big(\beta \log \frac{\pi^*(y_w|x)}{\pi_\text{ref}(y_w|x)}
# - \beta \log \frac{\pi^*(y_l|x)}{\pi_\text{ref}(y_l|x)}\Big).
# $$
#
# **The DPO loss.** Instead of fitting a reward and then finding its optimal policy, fit the
# policy directly by maximum likelihood of the observed preferences:
#
# $$
# \mathcal{L}_\text{DPO}(\theta) = -\mathbb{E}_{(x, y_w, y_l)} \log \sigma\big(\hat r_\theta(x, y_w)
# - \hat r_\theta(x, y_l)\big), \qquad
# \hat r_\theta(x, y) = \beta \log \frac{\pi_\theta(y|x)}{\pi_\text{ref}(y|x)} .
# $$
#
# $\hat r_\theta$ is the **implicit reward** of the policy: the reward for which $\pi_\theta$
# would be optimal, up to a term in $x$ alone {cite:p}`rafailov2023direct`. The loss needs
# four numbers per pair, the log-probabilities of both completions under the policy and the
# reference; a completion's log-probability is the sum of the log-probabilities of its tokens
# given the prompt and the tokens before them.
#
# Its gradient shows what it does. With $\hat\Delta = \hat r_\theta(x, y_w) - \hat
# r_\theta(x, y_l)$ and $\frac{d}{dz}\log\sigma(z) = \sigma(-z)$,
#
# $$
# \nabla_\theta \mathcal{L}_\text{DPO} = -\beta\, \mathbb{E}\Big[\sigma(-\hat\Delta)\,
# \big(\nabla_\theta \log \pi_\theta(y_w|x) - \nabla_\theta \log \pi_\theta(y_l|x)\big)\Big]:
# $$
#
# raise the likelihood of the chosen completion, lower that of the rejected one, and weigh
# each pair by how wrongly the implicit reward ranks it; pairs it already ranks well fade out.
#
# **At initialisation** the policy is the reference, so every implicit reward is
# $\beta \log 1 = 0$ and the loss is $-\log \sigma(0) = \ln 2$ for any data and any $\beta$.
#
# ## The loss in code
#
# `dlbook.preference.dpo_loss` is the formula above, with $\log\sigma$ computed by
# `F.logsigmoid`, which is accurate for large margins of either sign. It returns the loss and
# the implicit rewards of both sides. We check it against the Bradley–Terry likelihood computed
# another way, from explicit probabilities $e^{r_w} / (e^{r_w} + e^{r_l})$ in float64, and
# compare the gradients that autograd finds for each:

# %%
print(dpo_loss.__doc__.split("\n\n")[0])


def bradley_terry_nll(pc, pr, rc, rr, beta):
    """-mean log P(chosen wins), P from explicit Bradley-Terry probabilities (no log-sigmoid)."""
    r_w, r_l = beta * (pc - rc), beta * (pr - rr)
    return -torch.log(torch.exp(r_w) / (torch.exp(r_w) + torch.exp(r_l))).mean()


check_g = torch.Generator().manual_seed(1)
ours = [(-30 * torch.rand(16, generator=check_g, dtype=torch.float64)).requires_grad_()
        for _ in range(4)]  # policy chosen, policy rejected, reference chosen, reference rejected
theirs = [t.detach().clone().requires_grad_() for t in ours]
worst_loss = worst_grad = 0.0
for beta in (0.1, 0.5, 2.0):
    loss, _, _ = dpo_loss(*ours, beta)
    ref_loss = bradley_terry_nll(*theirs, beta)
    grads = torch.autograd.grad(loss, ours)
    ref_grads = torch.autograd.grad(ref_loss, theirs)
    worst_loss = max(worst_loss, abs(loss - ref_loss).item())
    worst_grad = max(worst_grad, max((a - b).abs().max().item()
                                     for a, b in zip(grads, ref_grads, strict=True)))
print(f"largest difference: loss {worst_loss:.1e}, gradient {worst_grad:.1e}")
assert worst_loss < 1e-12 and worst_grad < 1e-12
same = torch.zeros(16, dtype=torch.float64)
assert dpo_loss(same, same - 3, same, same - 3, 0.1)[0].item() == math.log(2)
glue("s5_7_parity_toy", max(worst_loss, worst_grad), ".0e")

# %% [markdown]
# The two agree to {glue}`s5_7_parity_toy` in float64, and equal log-probabilities under policy
# and reference give exactly $\ln 2$. (Hugging Face's `trl` library, whose DPO trainer would
# be the natural reference, is not installed here; the explicit likelihood is the independent
# check instead.)
#
# A pair must be well formed before it costs a forward pass: a prompt and two *different*,
# non-empty completions. `PreferencePair` checks this when it is built, and `dpo_loss` refuses
# a $\beta$ that is not positive:

# %%
print("same completion →", error_message(lambda: PreferencePair("What is 2 + 2?", "4", "4")))
print("empty prompt    →", error_message(lambda: PreferencePair("", "4", "5")))
print("beta = 0        →", error_message(lambda: dpo_loss(same, same, same, same, 0.0)))

# %% [markdown]
# ## Preference pairs from the model's own samples
#
# The policy to improve, and the reference, is the LoRA SFT model of
# {doc}`section 5.6 <06_sft>`, merged into SmolLM2-135M-Instruct {cite:p}`hu2022lora`. It
# answers many, but far from all, held-out questions exactly (section 5.6 measured it), so its
# samples are a mix of right and wrong answers. The prompts are the `larger` questions of the
# task suite ("Which is larger, 937 or 326? Answer with the number only."): the SFT model
# answers most of them right but not all ({glue}`s5_7_before_em` of the held-out ones
# greedily, measured below), and every one exercises the same skill, comparing two numbers, so
# what one pair teaches can carry over to the others ({doc}`section 5.8 <08_grpo>` returns to
# why that matters). Our "labeller" is the checker of the task suite: a correct answer beats a
# wrong one, and among wrong ones a bare number (the asked-for form) beats prose.
# For each prompt we sample $K$ completions at temperature 1 and keep the best-ranked as
# chosen and the worst-ranked as rejected, when one is correct and the other is not
# (`make_pairs`). Prompts come from the training split with a seed that SFT did not use; the
# held-out pairs come from the test split. `sample_completions` runs each prompt once and
# decodes its $K$ samples from copies of its key/value cache.

# %%
model, tokenizer = load("smollm2-135m")
sft_config = book_sft_config()
sft_record, adapter_path = sft_run(model, tokenizer, sft_config)
reference = load_sft_model(model, adapter_path, sft_config)  # frozen, eval mode
if pick(smoke=True, book=False):
    reference.blocks = reference.blocks[:2]  # smoke: 2 of the 30 blocks, so every line is quick
stop = stop_token(tokenizer)  # also the padding id
print(f"SFT model: held-out exact match {sft_record['exact_match'][0]:.1%} "
      f"on {sft_config.n_test} test questions")


@dataclass(frozen=True)
class PairConfig:
    """How the preference pairs are made (the cache key of the pairs)."""

    sft_key: str  # which SFT model sampled them
    n_layer: int  # its blocks (all 30; 2 in smoke)
    n_train: int  # training prompts
    n_test: int  # held-out prompts
    k: int  # samples per prompt
    families: tuple[str, ...] = ("larger",)  # task families of the prompts
    max_new_tokens: int = 8
    seed: int = 1
    add_answers: bool = False  # smoke only: add a right and a wrong answer to the samples


pair_config = PairConfig(
    sft_key=config_key(sft_config), n_layer=len(reference.blocks), n_train=pick(smoke=2, book=96),
    n_test=pick(smoke=2, book=32), k=pick(smoke=2, book=4),
    add_answers=pick(smoke=True, book=False),
)


def chat_prompt(task) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": task.prompt}],
                                         add_generation_prompt=True, tokenize=True)


def renders(pair: PreferencePair) -> bool:
    """Whether both conversations of ``pair`` tokenise as the chat template does (a sampled
    text that spells a special token such as ``<|im_start|>`` does not)."""
    try:
        pair_examples(tokenizer, [pair])
    except ValueError:
        return False
    return True


def build_pairs(directory: Path) -> dict:
    start = time.perf_counter()
    data = {}
    for split, n in (("train", pair_config.n_train), ("test", pair_config.n_test)):
        tasks = make_tasks(n, split, seed=pair_config.seed, families=pair_config.families)
        new = sample_completions(
            reference, [chat_prompt(t) for t in tasks], pair_config.k,
            pair_config.max_new_tokens, stop,
            generator=torch.Generator().manual_seed(pair_config.seed),
        )
        samples = [[tokenizer.decode(ids) for ids in per_task] for per_task in new]
        if pair_config.add_answers:  # smoke: a barely trained model may give no pair
            samples = [s + [t.answer, t.answer + "0"] for s, t in zip(samples, tasks, strict=True)]
        pairs = [p for p in make_pairs(tasks, samples) if renders(p)]
        correct = [sum(exact_match(t, c) for c in s) for t, s in zip(tasks, samples, strict=True)]
        # the reference's log-probabilities, once: it is frozen
        chosen, rejected = pair_examples(tokenizer, pairs)
        with torch.no_grad():
            ref_c = sequence_logprobs(reference, chosen, stop) if pairs else torch.zeros(0)
            ref_r = sequence_logprobs(reference, rejected, stop) if pairs else torch.zeros(0)
        data[split] = {
            "pairs": [asdict(p) for p in pairs], "ref_chosen": ref_c.tolist(),
            "ref_rejected": ref_r.tolist(), "n_prompts": n,
            "sample_accuracy": sum(correct) / (n * len(samples[0])),
            "all_right": sum(c == len(s) for c, s in zip(correct, samples, strict=True)),
            "all_wrong": correct.count(0),
        }
    data["seconds"] = time.perf_counter() - start
    atomic_write(directory / "pairs.json", lambda p: p.write_text(json.dumps(data)))
    return data


pair_data, _ = cached_run("smollm2-dpo-pairs", pair_config, build_pairs,
                          lambda d: read_json(d / "pairs.json", "no pairs.json"))
pairs = {s: [PreferencePair(**p) for p in pair_data[s]["pairs"]] for s in ("train", "test")}
ref_logp = {s: (torch.tensor(pair_data[s]["ref_chosen"]),
                torch.tensor(pair_data[s]["ref_rejected"])) for s in ("train", "test")}
for s in ("train", "test"):
    d = pair_data[s]
    print(f"{s:5s}: {d['n_prompts']} prompts × {pair_config.k} samples, "
          f"{d['sample_accuracy']:.0%} of samples correct; {len(pairs[s])} pairs "
          f"({d['all_right']} prompts all right, {d['all_wrong']} all wrong)")
for p in pairs["train"][:4]:
    print(f"{p.prompt[:60]!r:64s} chosen {p.chosen!r:18s} rejected {p.rejected!r}")
glue("s5_7_k", pair_config.k)
glue("s5_7_n_train_prompts", pair_config.n_train)
glue("s5_7_n_test_prompts", pair_config.n_test)
glue("s5_7_n_train_pairs", len(pairs["train"]))
glue("s5_7_n_test_pairs", len(pairs["test"]))
glue("s5_7_sample_acc", pair_data["train"]["sample_accuracy"], ".0%")
glue("s5_7_all_right", pair_data["train"]["all_right"])
glue("s5_7_all_wrong", pair_data["train"]["all_wrong"])
glue("s5_7_pair_s", pair_data["seconds"], ".0f")
task_of = {t.prompt: t for t in make_tasks(pair_config.n_train, "train", seed=pair_config.seed,
                                           families=pair_config.families)}
assert all(exact_match(task_of[p.prompt], p.chosen) > exact_match(task_of[p.prompt], p.rejected)
           for p in pairs["train"])
if checks_enabled():
    assert len(pairs["train"]) >= 16 and len(pairs["test"]) >= 10

# %% [markdown]
# Of the {glue}`s5_7_n_train_prompts` training prompts, each sampled {glue}`s5_7_k` times
# ({glue}`s5_7_sample_acc` of the samples correct), {glue}`s5_7_n_train_pairs` gave a pair;
# {glue}`s5_7_all_right` prompts were answered right every time and {glue}`s5_7_all_wrong`
# wrong every time, and these give no pair, because `make_pairs` pairs only a correct answer
# with a wrong one.
# The {glue}`s5_7_n_test_prompts` held-out prompts gave {glue}`s5_7_n_test_pairs` pairs.
# Sampling and scoring took {glue}`s5_7_pair_s` s. The pairs are sampled from the reference,
# the policy's starting point: on-policy at step 0, increasingly off-policy as training moves
# the policy. So DPO adjusts probabilities the model actually puts mass on, rather than chasing
# answers written by someone else.
#
# **The reference is computed once.** The loss needs $\log \pi_\text{ref}(y|x)$ for every
# completion, but $\pi_\text{ref}$ is frozen: those numbers never change and no gradient
# flows through them. `build_pairs` therefore computed them once, stored with the pairs, and
# the training loop runs a single model, the policy. (RLHF with PPO, by contrast, keeps a
# reward model, a value model and the reference running during training, since it scores new
# samples all the time.)
#
# ## Training with DPO
#
# The policy is a fresh LoRA (rank 8 on every linear layer of the blocks) on top of the merged
# SFT model. Its $B$ matrices start at zero, so at the first step the policy *is* the
# reference. On the first training batch, before any update:

# %%
def new_policy(config: DPOConfig):
    torch.manual_seed(config.seed)
    policy = copy.deepcopy(reference)
    apply_lora(policy, list(config.target), r=config.r, alpha=config.alpha)
    return policy


base_dpo = DPOConfig(steps=pick(smoke=1, book=12), pairs_per_step=pick(smoke=2, book=8),
                     lr=5e-4)
examples = {s: pair_examples(tokenizer, pairs[s]) for s in ("train", "test")}
first = batch_order(len(pairs["train"]), base_dpo.pairs_per_step, base_dpo.seed)[0]
policy = new_policy(base_dpo)
n_trainable, n_total = trainable_parameters(policy)
with torch.no_grad():
    logp = sequence_logprobs(policy, [examples["train"][0][i] for i in first]
                             + [examples["train"][1][i] for i in first], stop)
k = len(first)
step0 = [dpo_loss(logp[:k], logp[k:], ref_logp["train"][0][first], ref_logp["train"][1][first],
                  b)[0].item() for b in (0.1, 0.5)]
step0_err = max(abs(v - math.log(2)) for v in step0)
print(f"loss at step 0: {step0} (ln 2 = {math.log(2):.7f}); {n_trainable:,} trainable parameters")
assert step0_err < 1e-5
del policy
glue("s5_7_step0_err", step0_err, ".0e")
glue("s5_7_trainable", n_trainable, ",")

# %% [markdown]
# The loss is $\ln 2$ up to {glue}`s5_7_step0_err`, the float32 rounding of batches padded
# differently when the reference's log-probabilities were computed. We train one adapter per
# $\beta$ with `train_dpo` (AdamW on the {glue}`s5_7_trainable` LoRA parameters, the
# chosen and rejected completions of a batch in one forward pass) and measure, for each:
#
# * on the held-out pairs, the **preference accuracy** (how often the implicit reward of the
#   chosen completion is larger) and the **reward margin** $\hat r(x, y_w) - \hat r(x, y_l)$;
# * the **task metric**, greedy exact match on {glue}`s5_7_n_eval` held-out `larger`
#   questions, against the SFT model's answers to the same questions;
# * the **KL divergence** from the reference, $\mathbb{E}_{y \sim \pi}[\log \pi(y|x) - \log
#   \pi_\text{ref}(y|x)]$, estimated with one completion sampled from the policy per held-out
#   question (`sampled_kl`): the quantity the RLHF objective charges $\beta$ per nat for.
#
# Each run is cached with its adapter, keyed by its configuration, so a rebuild only loads it.

# %%
@dataclass(frozen=True)
class DPORun:
    """One cached DPO run: the pairs it trains on, the training and what it is measured on."""

    pairs: PairConfig
    dpo: DPOConfig
    n_eval: int  # held-out questions of the pairs' families for exact match
    n_kl: int  # held-out questions for the KL estimate


betas = pick(smoke=[0.1], book=[0.1, 0.5])
run_n_kl = pick(smoke=2, book=24)
# held-out questions of the same family, and the SFT model's greedy answers to them
eval_tasks = make_tasks(pick(smoke=4, book=100), "test", families=pair_config.families)
before_eval = evaluate(reference, tokenizer, eval_tasks, exact_match)
before_scores = before_eval.scores


def measure(policy, config: DPOConfig) -> dict:
    """Held-out preference metrics, exact match and KL of a trained policy."""
    with torch.no_grad():
        pc = sequence_logprobs(policy, examples["test"][0], stop)
        pr = sequence_logprobs(policy, examples["test"][1], stop)
    held = preference_metrics(pc, pr, *ref_logp["test"], config.beta)
    held["likelihood_accuracy"] = (pc > pr).double().mean().item()
    result = evaluate(policy, tokenizer, eval_tasks, exact_match)
    kl = sampled_kl(policy, reference, [chat_prompt(t) for t in eval_tasks[: run_n_kl]], stop,
                    stop, generator=torch.Generator().manual_seed(2))
    return {"held_out": held, "exact_match": [result.mean, result.low, result.high],
            "scores": result.scores, "by_family": result.by_family, "kl": kl.mean().item(),
            "kl_se": (kl.std() / math.sqrt(len(kl))).item() if len(kl) > 1 else 0.0}


runs, adapters = {}, {}
for beta in betas:
    run = DPORun(pair_config, DPOConfig(**{**asdict(base_dpo), "beta": beta}),
                 n_eval=len(eval_tasks), n_kl=run_n_kl)

    def fine_tune(adapter: Path, run=run) -> dict:
        policy = new_policy(run.dpo)
        start = time.perf_counter()
        history = train_dpo(policy, *examples["train"], *ref_logp["train"], run.dpo, stop)
        record = {"history": history, "train_s": time.perf_counter() - start}
        record.update(measure(policy, run.dpo))
        record["total_s"] = time.perf_counter() - start
        save_adapter(policy, adapter)
        return record

    runs[beta], adapters[beta], built = cached_record_run("smollm2-dpo", run, fine_tune)
    r = runs[beta]
    print(f"beta {beta}: {'trained' if built else 'loaded'}; train {r['train_s']:.0f} s, "
          f"loss {r['history']['loss'][0]:.3f} → {r['history']['loss'][-1]:.3f}")

# %% [markdown]
# Before looking at the numbers, one more check of the implementation, this time on the real
# model: the loss and the gradients of every LoRA parameter from `dpo_loss`, against those of
# the explicit Bradley–Terry likelihood, for the trained $\beta = 0.1$ policy on a batch of
# held-out pairs (where the margins are no longer zero):

# %%
beta0 = betas[0]
policy = new_policy(base_dpo)
load_adapter(policy, adapters[beta0])
policy.train()
some = list(range(min(4, len(pairs["test"]))))
logp = sequence_logprobs(policy, [examples["test"][0][i] for i in some]
                         + [examples["test"][1][i] for i in some], stop)
k = len(some)
four = (logp[:k], logp[k:], ref_logp["test"][0][some], ref_logp["test"][1][some])
params = [p for p in policy.parameters() if p.requires_grad]
loss = dpo_loss(*four, beta0)[0]
grads = torch.autograd.grad(loss, params, retain_graph=True)
explicit = bradley_terry_nll(*(t.double() for t in four), beta0)
explicit_grads = torch.autograd.grad(explicit, params)
loss_err = abs(loss.item() - explicit.item())
grad_err = max((a - b).abs().max().item() for a, b in zip(grads, explicit_grads, strict=True))
grad_scale = max(g.abs().max().item() for g in explicit_grads)
print(f"loss {loss.item():.6f} vs {explicit.item():.6f}; largest gradient difference "
      f"{grad_err:.1e} (largest gradient {grad_scale:.1e})")
assert loss_err < 1e-6 and grad_err <= 1e-6 * max(grad_scale, 1.0)
policy.eval()
glue("s5_7_real_loss_err", loss_err, ".0e")
glue("s5_7_real_grad_err", grad_err, ".0e")

# %% [markdown]
# The losses differ by {glue}`s5_7_real_loss_err` and the gradients by at most
# {glue}`s5_7_real_grad_err` over all LoRA parameters: autograd through `F.logsigmoid` and
# through the explicit probabilities reach the same place.
#
# ## What DPO changed

# %%
before_em = (before_eval.mean, before_eval.low, before_eval.high)
ref_like_acc = (ref_logp["test"][0] > ref_logp["test"][1]).double().mean().item()
print(f"{'':10s}{'pref. acc':>10s}{'margin':>9s}{'log-ratio':>10s}{'exact match':>13s}"
      f"{'KL (nats)':>11s}")
print(f"{'SFT':10s}{0.5:10.0%}{0.0:9.3f}{0.0:10.2f}{before_em[0]:13.1%}{0.0:11.2f}")
for beta, r in runs.items():
    h = r["held_out"]
    print(f"{'β = ' + str(beta):10s}{h['accuracy']:10.0%}{h['margin']:9.3f}"
          f"{h['margin'] / beta:10.2f}{r['exact_match'][0]:13.1%}"
          f"{r['kl']:7.2f} ± {r['kl_se']:.2f}")
print(f"the SFT model's own likelihood prefers the chosen completion in {ref_like_acc:.0%} of "
      "the held-out pairs")

fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.3))
for i, (beta, r) in enumerate(runs.items()):
    steps = np.arange(1, len(r["history"]["loss"]) + 1)
    ax1.plot(steps, r["history"]["loss"], "o-", color=f"C{i}", label=f"β = {beta}")
    ax2.plot(steps, np.array(r["history"]["margin"]) / beta, "o-", color=f"C{i}",
             label=f"β = {beta}")
ax1.axhline(math.log(2), color="grey", ls="--", label="ln 2")
ax1.set(xlabel="step", ylabel="DPO loss (training batch)", title="loss")
ax2.set(xlabel="step", ylabel="margin / β (nats)", title="log-ratio margin, training batch")
ax1.legend(fontsize=8)
ax2.legend(fontsize=8)
labels = ["SFT"] + [f"β = {b}" for b in runs]
x = np.arange(len(labels))
ax3.bar(x - 0.2, [0.5] + [r["held_out"]["accuracy"] for r in runs.values()], 0.4,
        label="held-out preference accuracy")
ax3.bar(x + 0.2, [before_em[0]] + [r["exact_match"][0] for r in runs.values()], 0.4,
        label="held-out exact match")
ax3.set(xticks=x, xticklabels=labels, ylim=(0, 1), title="held out")
ax3.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

sign_p = []
for i, r in enumerate(runs.values()):
    changed = [(a, b) for a, b in zip(before_scores, r["scores"], strict=True) if a != b]
    gained = sum(b > a for a, b in changed)
    p_sign = binomtest(gained, len(changed), 0.5).pvalue if changed else 1.0
    print(f"run {i}: questions gained {gained}, lost {len(changed) - gained}, "
          f"sign test p = {p_sign:.2g}")
    glue(f"s5_7_gained_b{i}", gained)
    glue(f"s5_7_lost_b{i}", len(changed) - gained)
    glue(f"s5_7_p_b{i}", p_sign, ".2g")
    sign_p.append(p_sign)
if checks_enabled():  # exact match up for every beta, beyond chance for at least one
    assert all(r["exact_match"][0] > before_em[0] for r in runs.values()) and min(sign_p) < 0.05
glue("s5_7_before_em", before_em[0], ".1%")
glue("s5_7_before_low", before_em[1], ".0%")
glue("s5_7_before_high", before_em[2], ".0%")
glue("s5_7_ref_like_acc", ref_like_acc, ".0%")
glue("s5_7_n_eval", len(eval_tasks))
glue("s5_7_n_kl", run_n_kl)
glue("s5_7_steps", base_dpo.steps)
glue("s5_7_pairs_per_step", base_dpo.pairs_per_step)
glue("s5_7_lr", base_dpo.lr, ".0e")
for i, (beta, r) in enumerate(runs.items()):
    tag = f"b{i}"
    glue(f"s5_7_beta_{tag}", beta)
    glue(f"s5_7_acc_{tag}", r["held_out"]["accuracy"], ".0%")
    acc_low, acc_high = wilson_interval(r["held_out"]["accuracy"] * len(pairs["test"]),
                                        len(pairs["test"]))
    glue(f"s5_7_acc_low_{tag}", acc_low, ".0%")
    glue(f"s5_7_acc_high_{tag}", acc_high, ".0%")
    glue(f"s5_7_margin_{tag}", r["held_out"]["margin"], ".3f")
    glue(f"s5_7_ratio_{tag}", r["held_out"]["margin"] / beta, ".2f")
    glue(f"s5_7_like_acc_{tag}", r["held_out"]["likelihood_accuracy"], ".0%")
    glue(f"s5_7_em_{tag}", r["exact_match"][0], ".1%")
    glue(f"s5_7_em_low_{tag}", r["exact_match"][1], ".0%")
    glue(f"s5_7_em_high_{tag}", r["exact_match"][2], ".0%")
    glue(f"s5_7_kl_{tag}", r["kl"], ".2f")
    glue(f"s5_7_kl_se_{tag}", r["kl_se"], ".2f")
    glue(f"s5_7_train_s_{tag}", r["train_s"], ".0f")
    glue(f"s5_7_loss_end_{tag}", r["history"]["loss"][-1], ".3f")
if len(runs) == 1:  # smoke: one beta; the prose quotes two
    for key in ("beta", "acc", "acc_low", "acc_high", "margin", "ratio", "like_acc", "em",
                "em_low", "em_high", "kl", "gained", "lost", "p", "kl_se", "train_s", "loss_end"):
        glue(f"s5_7_{key}_b1", "n/a")
for r in runs.values():
    assert abs(r["history"]["loss"][0] - math.log(2)) < 1e-5  # every run starts at ln 2
if checks_enabled():
    for r in runs.values():
        assert r["held_out"]["accuracy"] > 0.5  # DPO learnt to rank unseen pairs
        assert r["held_out"]["margin"] > 0
        assert r["kl"] > 0  # and paid for it in divergence from the reference
        assert r["held_out"]["likelihood_accuracy"] > ref_like_acc

# %% [markdown]
# With {glue}`s5_7_steps` steps of {glue}`s5_7_pairs_per_step` pairs (learning rate
# {glue}`s5_7_lr`):
#
# * **Preference accuracy on held-out pairs.** Before training every implicit reward is zero,
#   a tie on every pair (0.5 counting ties as half). After training, the implicit reward ranks
#   the chosen completion first in {glue}`s5_7_acc_b0` of the {glue}`s5_7_n_test_pairs`
#   held-out pairs with $\beta$ = {glue}`s5_7_beta_b0` (95 % interval
#   {glue}`s5_7_acc_low_b0`–{glue}`s5_7_acc_high_b0`) and {glue}`s5_7_acc_b1`
#   ({glue}`s5_7_acc_low_b1`–{glue}`s5_7_acc_high_b1`) with
#   $\beta$ = {glue}`s5_7_beta_b1`, with mean margins {glue}`s5_7_margin_b0` and
#   {glue}`s5_7_margin_b1`. The margin is $\beta$ times a log-ratio, so compare the log-ratio
#   margins, {glue}`s5_7_ratio_b0` and {glue}`s5_7_ratio_b1` nats. For comparison, the SFT
#   model's plain likelihood already prefers the chosen completion in {glue}`s5_7_ref_like_acc`
#   of the held-out pairs, the trained policies' in {glue}`s5_7_like_acc_b0` and
#   {glue}`s5_7_like_acc_b1`. The implicit reward measures the *change* relative to the
#   reference, not the likelihood itself; that the likelihood's ranking improved too suggests the
#   change went where the pairs pointed. The interval is wide with this few pairs; the task
#   metric, on other questions, is the stronger evidence.
# * **Task metric.** Greedy exact match on the {glue}`s5_7_n_eval` held-out questions was
#   {glue}`s5_7_before_em` for the SFT model (95 % interval
#   {glue}`s5_7_before_low`–{glue}`s5_7_before_high`) and is {glue}`s5_7_em_b0`
#   (95 % interval {glue}`s5_7_em_low_b0`–{glue}`s5_7_em_high_b0`) after DPO with
#   $\beta$ = {glue}`s5_7_beta_b0` and {glue}`s5_7_em_b1`
#   ({glue}`s5_7_em_low_b1`–{glue}`s5_7_em_high_b1`) with $\beta$ = {glue}`s5_7_beta_b1`.
#   Intervals computed for each model separately ignore that both models answer the *same*
#   questions.
#   Counting only the questions whose score changed, DPO gained {glue}`s5_7_gained_b0` and
#   lost {glue}`s5_7_lost_b0` with $\beta$ = {glue}`s5_7_beta_b0` (sign test $p =$
#   {glue}`s5_7_p_b0`), and gained {glue}`s5_7_gained_b1` and lost {glue}`s5_7_lost_b1` with
#   $\beta$ = {glue}`s5_7_beta_b1` ($p =$ {glue}`s5_7_p_b1`): the SFT model's answers got
#   better, from pairs of its own samples and no written answer.
# * **KL to the reference.** {glue}`s5_7_kl_b0` ± {glue}`s5_7_kl_se_b0` and
#   {glue}`s5_7_kl_b1` ± {glue}`s5_7_kl_se_b1` nats per completion (estimate ± standard error
#   over {glue}`s5_7_n_kl` sampled completions).
#
# A few caveats of this small experiment. DPO optimises the implicit reward *on the pairs*; that a
# better ranking of sampled completions turns into more correct greedy answers is an empirical
# matter. Here it did, on a task where every pair teaches the same skill; with pairs whose lessons
# do not carry over from one prompt to the next (the sums of `add`, say), a few dozen pairs are
# likely to teach much less ({doc}`section 5.8 <08_grpo>` makes the same argument). $\beta$ enters the loss only through the scale of the margin: with AdamW, whose
# step size does not depend on the scale of the gradient, a larger $\beta$ mostly makes the loss
# saturate sooner (the weights $\sigma(-\hat\Delta)$ of the gradient fade at a smaller log-ratio),
# so in a run this short the KL is not controlled by $\beta$ as tightly as the RLHF objective
# suggests (the estimated KL was {glue}`s5_7_kl_b0` nats with $\beta$ = {glue}`s5_7_beta_b0`
# and {glue}`s5_7_kl_b1` with $\beta$ = {glue}`s5_7_beta_b1`). The KL constraint enters DPO only through the derivation: $\pi^*$ is optimal for a
# Bradley–Terry reward fitted to infinitely many comparisons. On a finite set of pairs, each
# always ranked the same way, the DPO loss keeps falling as the margins grow, however far that
# takes the policy from $\pi_\text{ref}$; nothing in the loss stops it step by step.
#
# ## Summary
#
# * RLHF fits a Bradley–Terry reward model to comparisons and maximises reward minus
#   $\beta$ times the KL divergence from a reference policy; that objective's optimum is
#   $\pi^* \propto \pi_\text{ref}\, e^{r/\beta}$, checked numerically on a toy problem.
# * Inverting it gives $r = \beta \log(\pi^*/\pi_\text{ref}) + \beta \log Z(x)$; in the
#   Bradley–Terry likelihood $Z(x)$ cancels, which leaves the DPO loss
#   $-\log\sigma(\hat r_\theta(x, y_w) - \hat r_\theta(x, y_l))$ with the implicit reward
#   $\hat r_\theta = \beta \log(\pi_\theta / \pi_\text{ref})$.
# * The loss is $\ln 2$ at initialisation (asserted on the real model), and `dpo_loss`
#   matches the explicit Bradley–Terry likelihood in value and gradient (to
#   {glue}`s5_7_real_grad_err` on SmolLM2's LoRA parameters).
# * The reference is frozen, so its log-probabilities are computed once, before training.
# * Pairs came from the SFT model's own samples on the `larger` questions, ranked by the task's
#   checker:
#   {glue}`s5_7_n_train_pairs` training and {glue}`s5_7_n_test_pairs` held-out pairs from
#   {glue}`s5_7_k` samples per prompt.
# * A short DPO run raised the held-out preference accuracy from 0.5 to {glue}`s5_7_acc_b0`
#   ($\beta$ = {glue}`s5_7_beta_b0`, on {glue}`s5_7_n_test_pairs` pairs), at a KL of
#   {glue}`s5_7_kl_b0` nats from the reference, and greedy exact match on
#   {glue}`s5_7_n_eval` held-out `larger` questions from {glue}`s5_7_before_em` to {glue}`s5_7_em_b0` (sign test $p =$ {glue}`s5_7_p_b0`).
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-5-7-1
# ```
# Show that the DPO gradient with respect to $\log \pi_\theta(y_w|x)$ of one pair is
# $-\beta\,\sigma(-\hat\Delta)$ (divided by the number of pairs in the mean), and check it
# with autograd on random log-probabilities. Which pairs dominate a gradient step?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-7-1
# :class: dropdown
# ```
# $\frac{\partial}{\partial a}[-\log\sigma(\beta(a - b))] = -\beta\,\sigma(-\beta(a-b))$ since
# $\frac{d}{dz}\log\sigma(z) = 1 - \sigma(z) = \sigma(-z)$. Pairs whose implicit reward ranks
# the rejected completion higher ($\hat\Delta < 0$) get weights between $\beta/2$ and
# $\beta$, approaching $\beta$ as $\hat\Delta \to -\infty$; pairs already ranked well by a
# wide margin get weights near 0.

# %%
g1 = torch.Generator().manual_seed(5)
pc, pr, rc, rr = ((-20 * torch.rand(6, generator=g1, dtype=torch.float64)).requires_grad_()
                  for _ in range(4))
loss, r_w, r_l = dpo_loss(pc, pr, rc, rr, 0.5)
loss.backward()
expected = -0.5 * torch.sigmoid(-(r_w - r_l)) / 6
print("autograd:", pc.grad.numpy().round(4), "\nformula: ", expected.numpy().round(4))
assert torch.allclose(pc.grad, expected) and torch.allclose(pr.grad, -expected)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-7-2
# ```
# Swap chosen and rejected in every pair. By how much does the DPO loss change? Derive the
# identity $-\log\sigma(-z) + \log\sigma(z) = z$ and check it on the held-out pairs with the
# trained policy's log-probabilities.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-7-2
# :class: dropdown
# ```
# $\log\sigma(z) - \log\sigma(-z) = \log\frac{1 + e^{z}}{1 + e^{-z}} = \log e^{z} = z$. So the
# swapped loss exceeds the original by the mean margin: a policy that ranks the pairs right
# (positive margins) has a lower loss than its mirror image, by exactly that much.

# %%
with torch.no_grad():
    pc = sequence_logprobs(policy, examples["test"][0], stop)
    pr = sequence_logprobs(policy, examples["test"][1], stop)
loss, r_w, r_l = dpo_loss(pc, pr, *ref_logp["test"], beta0)
swapped, _, _ = dpo_loss(pr, pc, ref_logp["test"][1], ref_logp["test"][0], beta0)
print(f"swapped − original = {(swapped - loss).item():.5f}; "
      f"mean margin = {(r_w - r_l).mean().item():.5f}")
assert abs((swapped - loss - (r_w - r_l).mean()).item()) < 1e-5

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-7-3
# ```
# If some labels are wrong with probability $\varepsilon$, one may minimise the expected loss
# under label noise, $-(1-\varepsilon)\log\sigma(z) - \varepsilon\log\sigma(-z)$, with
# $z = \hat\Delta$. Show that it is still $\ln 2$ at $z = 0$, but that, unlike the DPO loss,
# it has a finite minimiser. Where is it?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-7-3
# :class: dropdown
# ```
# At $z = 0$ both terms are $-\log\sigma(0) = \ln 2$, weighted $1 - \varepsilon$ and
# $\varepsilon$. The derivative is $-(1-\varepsilon)\sigma(-z) + \varepsilon\sigma(z)$, zero at
# $\sigma(z) = 1 - \varepsilon$, i.e. $z^* = \log\frac{1-\varepsilon}{\varepsilon}$. Plain DPO
# keeps pushing the margin of every pair towards $+\infty$ (its loss only approaches 0), which
# a few wrong labels turn into pushing the wrong way without limit.

# %%
z = torch.linspace(-10, 10, 20001, dtype=torch.float64)
for eps in (0.05, 0.2):
    smoothed = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    z_best = z[smoothed.argmin()].item()
    print(f"eps {eps}: loss at 0 = {smoothed[10000].item():.6f}, minimiser {z_best:.3f}, "
          f"log((1-eps)/eps) = {math.log((1 - eps) / eps):.3f}")
    assert abs(smoothed[10000].item() - math.log(2)) < 1e-12
    assert abs(z_best - math.log((1 - eps) / eps)) < 2e-3

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-7-4
# ```
# The KL above was estimated from samples: $\frac1n\sum_i \log\frac{\pi(y_i)}{\pi_\text{ref}
# (y_i)}$ with $y_i \sim \pi$. Single terms can be negative, the KL cannot. On a categorical
# distribution of 5 outcomes (use `toy_ref` and $\pi^*$ for $\beta = 1$ from the start of the
# section), compare the estimate from 100 000 samples with the exact KL, and count how many
# terms are negative.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-7-4
# :class: dropdown
# ```
# The estimator is unbiased: its expectation is the sum $\sum_y \pi(y)\log\frac{\pi(y)}
# {\pi_\text{ref}(y)}$, the KL. A term is negative whenever the sample is more likely under the
# reference than under the policy.

# %%
pi_1 = toy_ref * torch.exp(toy_r)
pi_1 /= pi_1.sum()
exact_kl = (pi_1 * (pi_1 / toy_ref).log()).sum().item()
draws = torch.multinomial(pi_1, 100_000, replacement=True, generator=torch.Generator()
                          .manual_seed(0))
terms = (pi_1.log() - toy_ref.log())[draws]
print(f"exact KL {exact_kl:.4f}, estimate {terms.mean().item():.4f} ± "
      f"{terms.std().item() / math.sqrt(len(terms)):.4f}; negative terms: "
      f"{(terms < 0).double().mean().item():.0%}")
assert abs(terms.mean().item() - exact_kl) < 4 * terms.std().item() / math.sqrt(len(terms))
assert (terms < 0).any() and exact_kl > 0

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-7-5
# ```
# Train the $\beta = 0.1$ adapter again with twice the learning rate ($10^{-3}$) and compare
# the held-out preference accuracy, the exact match and the KL with the run above. What does
# the comparison say about what the DPO loss measures?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-7-5
# :class: dropdown
# ```
# With `cfg = DPOConfig(**{**asdict(base_dpo), "beta": 0.1, "lr": 1e-3})`, run
# `policy = new_policy(cfg)`, `train_dpo(policy, *examples["train"], *ref_logp["train"], cfg,
# stop)` and `measure(policy, cfg)` (about {glue}`s5_7_train_s_b0` s of training plus the evaluation, so it is left to you). Expect the
# policy to move further from the reference: a larger KL and larger margins. Whether the exact
# match follows is not guaranteed: the DPO loss only asks that the chosen completion gain
# *relative* to the rejected one, and lowering the probability of both, while moving mass to
# completions in neither, satisfies it too. A better ranking of pairs is not the same as
# better answers, which is why the task metric and the KL are measured alongside.
#
# ```{solution-end}
# ```
