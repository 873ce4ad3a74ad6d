"""Policy-gradient fine-tuning with verifiable rewards: GRPO (Shao et al. 2024; section 5.8).

GRPO samples a *group* of ``K`` completions per prompt, scores each with a rule-based reward,
and uses the reward's standardised value within its group as the advantage of every token of
that completion: no learned value function. The update is PPO's clipped surrogate (Schulman et
al. 2017) with an optional KL penalty towards a reference policy. Shapes: ``G`` groups (prompts),
``K`` completions per group, ``N = G K`` sequences of ``T`` tokens.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dlbook.config import NonNegativeInt, PositiveFloat, check_int, validate_config
from dlbook.evaluate import prompt_ids, stop_token
from dlbook.nn.losses import IGNORE_INDEX


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages ``(r - mean_group) / (std_group + eps)``: ``(G, K)`` → ``(G, K)``.

    A group whose completions all score the same gets zero advantages (it carries no signal).
    The standard deviation is the sample (unbiased, ``n - 1``) one.

    Raises:
        ValueError: not a ``(G, K)`` tensor, an empty group, or ``K < 2``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be a (G, K) tensor, got shape {tuple(rewards.shape)}")
    if rewards.shape[0] == 0:
        raise ValueError("no groups: rewards has G=0 rows, so there is nothing to learn from")
    if rewards.shape[1] == 0:
        raise ValueError(
            "empty group: a group needs at least 2 completions of its prompt to compare, got K=0"
        )
    if rewards.shape[1] < 2:
        raise ValueError(
            "a group of 1 completion has no baseline: GRPO needs at least 2 completions per "
            f"prompt, got K={rewards.shape[1]}"
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


def grpo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
    logp_ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective to minimise, from per-token log-probabilities ``(N, T)``.

    Per token, PPO's clipped surrogate ``min(ρ A, clip(ρ, 1 - ε, 1 + ε) A)`` with the ratio
    ``ρ = exp(logp - logp_old)``, minus ``kl_coef`` times the unbiased KL estimate
    ``exp(q) - q - 1``, ``q = logp_ref - logp`` (Schulman's "k3"); averaged over each
    sequence's ``mask``-ed tokens, then over sequences, and negated.

    Args:
        logp: log-probabilities under the policy being trained (with gradients).
        logp_old: the same under the policy that sampled the completions (no gradient).
        advantages: ``(N,)``, one per completion.
        mask: ``(N, T)`` boolean, ``True`` on completion tokens.
        clip: PPO's ε.
        logp_ref, kl_coef: the reference policy's log-probabilities and the KL weight.

    Returns:
        ``(loss, stats)`` with the mean KL estimate and the fraction of clipped tokens (those
        where the clamped branch wins the ``min``, so that their gradient is zero).

    Raises:
        ValueError: mismatched shapes, a sequence without tokens, or ``kl_coef > 0`` without
            ``logp_ref``.
    """
    if logp.shape != logp_old.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError("logp, logp_old and mask must all be (N, T)")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (N,) = {tuple(logp.shape[:1])}")
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("every sequence needs at least one completion token")
    if kl_coef > 0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref")
    if logp_ref is not None and logp_ref.shape != logp.shape:
        raise ValueError("logp_ref must have the shape of logp")
    mask = mask.bool()
    # Outside the mask the log-probabilities are meaningless (padding, prompt): zero them so that
    # no inf or nan there can leak into the sums (0 * inf would be nan).
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    delta = torch.where(mask, logp - logp_old.detach(), torch.zeros_like(logp))
    ratio = torch.exp(delta)
    adv = advantages.to(logp.dtype)[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    per_token = surrogate
    kl = torch.zeros_like(logp)
    if logp_ref is not None:
        q = torch.where(mask, logp_ref.detach() - logp, torch.zeros_like(logp))
        kl = torch.exp(q) - q - 1
        per_token = surrogate - kl_coef * kl
    m = mask.to(logp.dtype)
    objective = ((per_token * m).sum(dim=1) / lengths).mean()
    # A token is clipped when the min picks the flat, clamped branch: its gradient is zero.
    clipped = (((ratio > 1 + clip) & (adv > 0)) | ((ratio < 1 - clip) & (adv < 0))) & mask
    stats = {
        "kl": float(((kl.detach() * m).sum(dim=1) / lengths).mean()),
        "clipped": float(clipped.sum() / mask.sum()),
    }
    return -objective, stats


# --------------------------------------------------------------------------- rollouts


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token estimate ``exp(q) - q - 1`` with ``q = logp_ref - logp`` of the KL divergence
    ``KL(π ‖ π_ref)`` from tokens sampled from ``π``: never negative, zero where the two agree,
    and unbiased (the expectation of ``exp(q)`` under ``π`` is 1)."""
    q = logp_ref - logp
    return torch.exp(q) - q - 1


@dataclass
class Rollouts:
    """``G`` groups of ``K`` sampled completions, flattened group by group (``N = G K``).

    ``completions`` hold the sampled ids including the stop token when one was generated (the
    decision to stop is an action the policy is trained on too); ``texts`` are the decoded
    answers without it; ``rewards`` is ``(G, K)``.
    """

    tasks: list
    prompts: list[list[int]]
    completions: list[list[int]]
    texts: list[str]
    rewards: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.completions)


def sample_groups(
    model,
    tokenizer,
    tasks: Sequence,
    k: int,
    *,
    max_new_tokens: int,
    reward_fn: Callable[[object, str], float],
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """Sample ``k`` completions of each task's prompt from ``model`` and score each with
    ``reward_fn(task, text)``.

    Raises:
        ValueError: no tasks, or ``k < 2`` (a group needs at least two completions).
    """
    from dlbook.evaluate import generate_batch

    if not tasks:
        raise ValueError("no tasks: a step needs at least one prompt (group)")
    check_int("k", k, low=2)
    stop = stop_token(tokenizer)
    group_tasks = [t for t in tasks for _ in range(k)]
    prompts = [prompt_ids(tokenizer, t) for t in group_tasks]
    model.eval()
    new = generate_batch(model, prompts, max_new_tokens, stop, temperature=temperature,
                         generator=generator)
    # generate_batch cuts at the stop token: a completion shorter than the limit stopped.
    completions = [ids + [stop] if len(ids) < max_new_tokens else ids for ids in new]
    texts = [tokenizer.decode(ids) for ids in new]
    scores = [float(reward_fn(t, c)) for t, c in zip(group_tasks, texts, strict=True)]
    rewards = torch.tensor(scores)
    return Rollouts(group_tasks, prompts, completions, texts, rewards.view(len(tasks), k))


def rollout_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded next-token pairs of ``prompt + completion``: ``(idx, targets)``, both
    ``(N, T)``, with the target :data:`IGNORE_INDEX` everywhere but on the completion's tokens
    (the policy is trained on what it said, not on the question).

    Raises:
        ValueError: different numbers of prompts and completions, or an empty one.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError("need as many prompts as completions, and at least one")
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in completions):
        raise ValueError("every prompt and every completion needs at least one token")
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True)) - 1
    idx = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    targets = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        seq = list(p) + list(c)
        idx[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        targets[row, len(p) - 1 : len(seq) - 1] = torch.tensor(list(c))
    return idx, targets


# --------------------------------------------------------------------------- the training loop


@dataclass(frozen=True)
class GRPOConfig:
    """One GRPO run on the tasks of :mod:`dlbook.data.tasks`, with a LoRA adapter trained on
    top of a frozen starting policy (which is also the KL reference)."""

    families: tuple[str, ...] = ("larger",)
    steps: int = 16
    groups: int = 4  # G prompts per step
    samples: int = 8  # K completions per prompt
    max_new_tokens: int = 8
    temperature: PositiveFloat = 1.0
    lr: PositiveFloat = 3e-4
    r: int = 8
    alpha: PositiveFloat = 16.0
    target: tuple[str, ...] = (r"blocks\..*",)
    clip: PositiveFloat = 0.2
    kl_coef: float = 0.0
    minibatches: int = 1  # gradient steps per batch of rollouts (PPO-style minibatches)
    format_bonus: float = 0.1
    n_test: int = 100
    eval_every: NonNegativeInt = 4  # greedy held-out evaluation every so many steps (0: none)
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        validate_config(self)
        if self.samples < 2:
            raise ValueError(f"GRPOConfig.samples must be >= 2 to form groups, got {self.samples}")
        if (self.groups * self.samples) % self.minibatches:
            raise ValueError("GRPOConfig.minibatches must divide groups * samples")


def grpo_step(
    policy,
    optimizer: torch.optim.Optimizer,
    rollouts: Rollouts,
    config: GRPOConfig,
    pad_id: int,
    reference=None,
) -> dict[str, float]:
    """One GRPO update from ``rollouts``: advantages within each group, then
    ``config.minibatches`` gradient steps on the clipped objective (:func:`grpo_loss`).

    With one minibatch the update is purely on-policy: ``logp_old`` is the detached ``logp``
    of the same forward pass (ratio 1, nothing clipped) and the step is the policy gradient
    with group-normalised advantages. With several, ``logp_old`` comes from a forward pass
    before the first step, and the later minibatches meet a policy that has already moved:
    there the clipping acts. ``reference`` (the frozen start) is needed only for
    ``config.kl_coef > 0``.
    """
    from dlbook.sft import target_logprobs

    advantages = group_advantages(rollouts.rewards).view(-1)
    idx, targets = rollout_batch(rollouts.prompts, rollouts.completions, pad_id)
    device = next(policy.parameters()).device
    idx, targets, advantages = idx.to(device), targets.to(device), advantages.to(device)
    mask = targets != IGNORE_INDEX
    params = [p for p in policy.parameters() if p.requires_grad]
    logp_old = logp_ref = None
    with torch.no_grad():
        if config.minibatches > 1:
            policy.eval()
            logp_old = target_logprobs(policy, idx, targets)
        if config.kl_coef > 0:
            if reference is None:
                raise ValueError("kl_coef > 0 needs the reference policy")
            logp_ref = target_logprobs(reference, idx, targets)
    policy.train()
    stats: dict[str, list[float]] = {"loss": [], "kl": [], "clipped": [], "grad_norm": []}
    order = torch.randperm(rollouts.n) if config.minibatches > 1 else torch.arange(rollouts.n)
    for rows in order.chunk(config.minibatches):
        rows = rows.to(device)
        logp = target_logprobs(policy, idx[rows], targets[rows])
        old = logp.detach() if logp_old is None else logp_old[rows]
        ref = None if logp_ref is None else logp_ref[rows]
        loss, s = grpo_loss(logp, old, advantages[rows], mask[rows], clip=config.clip,
                            logp_ref=ref, kl_coef=config.kl_coef)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        optimizer.step()
        stats["loss"].append(loss.item())
        stats["kl"].append(s["kl"])
        stats["clipped"].append(s["clipped"])
    policy.eval()
    return {k: sum(v) / len(v) for k, v in stats.items()}


def grpo_train(
    policy, tokenizer, tasks: Sequence, config: GRPOConfig, reference=None,
    generator: torch.Generator | None = None,
    reward_fn: Callable[[object, str], float] | None = None,
    progress: bool = True,
    eval_fn: Callable[[object], float] | None = None,
) -> dict[str, list[float]]:
    """Train ``policy``'s parameters that require gradients with GRPO for ``config.steps``
    steps of ``config.groups`` prompts from ``tasks`` (taken in order) × ``config.samples``
    completions, with AdamW. Returns per-step lists: the mean ``reward``, the share of exact
    answers (``correct``) and of well-formed wrong ones (``formed_wrong``), the mean completion
    length in tokens, the number of groups with any signal (rewards not all equal), the loss,
    KL, clipped share, gradient norm and seconds. ``reward_fn(task, text)`` defaults to
    :func:`dlbook.data.tasks.reward` with ``config.format_bonus``. With ``eval_fn(policy)``
    and ``config.eval_every > 0``, it is called after every ``eval_every``-th step (not after
    the last: the caller evaluates the result) and the history gains ``eval_step``,
    ``eval_score`` and ``eval_seconds``."""
    from dlbook.data.tasks import exact_match, reward, well_formed

    need = config.steps * config.groups
    if len(tasks) < need:
        raise ValueError(f"{config.steps} steps of {config.groups} prompts need {need} tasks, "
                         f"got {len(tasks)}")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires a gradient: nothing would train")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    pad_id = stop_token(tokenizer)
    history: dict[str, list[float]] = {}

    def score(task, text: str) -> float:
        if reward_fn is not None:
            return reward_fn(task, text)
        return reward(task, text, format_bonus=config.format_bonus)

    from tqdm.auto import tqdm

    bar = tqdm(range(config.steps), desc="GRPO", disable=not progress)
    for step in bar:
        start = time.perf_counter()
        batch = tasks[step * config.groups : (step + 1) * config.groups]
        rollouts = sample_groups(
            policy, tokenizer, batch, config.samples, max_new_tokens=config.max_new_tokens,
            reward_fn=score, temperature=config.temperature, generator=generator,
        )
        sampled = time.perf_counter()
        stats = grpo_step(policy, optimizer, rollouts, config, pad_id, reference)
        correct = [exact_match(t, c) for t, c in zip(rollouts.tasks, rollouts.texts, strict=True)]
        formed = [well_formed(c) and not ok for c, ok in zip(rollouts.texts, correct, strict=True)]
        row = {
            "reward": rollouts.rewards.mean().item(),
            "correct": sum(correct) / rollouts.n,
            "formed_wrong": sum(formed) / rollouts.n,
            "length": sum(map(len, rollouts.completions)) / rollouts.n,
            "groups_with_signal": int((rollouts.rewards.std(dim=1) > 0).sum()),
            **stats,
            "sample_seconds": sampled - start,
            "seconds": time.perf_counter() - start,
        }
        for key, value in row.items():
            history.setdefault(key, []).append(float(value))
        done = step + 1
        if eval_fn is not None and config.eval_every and done % config.eval_every == 0 \
                and done < config.steps:
            eval_start = time.perf_counter()
            history.setdefault("eval_step", []).append(float(done))
            history.setdefault("eval_score", []).append(float(eval_fn(policy)))
            history.setdefault("eval_seconds", []).append(time.perf_counter() - eval_start)
            policy.eval()
        bar.set_postfix(reward=f"{row['reward']:.3f}", right=f"{row['correct']:.2f}")
    return history


def _eval_record(result, tasks) -> dict:
    from dlbook.data.tasks import well_formed

    return {
        "exact_match": [result.mean, result.low, result.high],
        "by_family": result.by_family,
        "scores": result.scores,
        "completions": result.completions,
        "well_formed": sum(map(well_formed, result.completions)) / len(tasks),
    }


def grpo_run(model, tokenizer, sft_config, config: GRPOConfig, device=None) -> tuple[dict, Path]:
    """GRPO on top of the SFT model of section 5.6, cached → ``(record, adapter path)``.

    ``model`` is the base SmolLM2; the SFT adapter of ``sft_config`` (:func:`dlbook.sft.sft_run`,
    itself cached) is merged into a copy, which is the starting and the reference policy. A
    fresh LoRA adapter on top of it is trained with :func:`grpo_train` on training tasks of
    ``config.families``, and both the start and the result are evaluated greedily (exact match)
    on ``config.n_test`` held-out tasks of the same families. The record holds the training
    history, both evaluations and timing; the adapter is saved as ``adapter.safetensors``.
    """
    from dlbook.artifacts import cached_record_run, config_key
    from dlbook.data.tasks import exact_match, make_tasks
    from dlbook.evaluate import evaluate
    from dlbook.lora import apply_lora, save_adapter, trainable_parameters
    from dlbook.sft import load_sft_model, sft_run

    name = f"smollm2-grpo-sft{config_key(sft_config)[:8]}"

    def fine_tune(adapter: Path) -> dict:
        _, sft_adapter = sft_run(model, tokenizer, sft_config)
        reference = load_sft_model(model, sft_adapter, sft_config)
        if device is not None:
            reference.to(device)
        test = make_tasks(config.n_test, "test", families=config.families)
        start = time.perf_counter()
        before = evaluate(reference, tokenizer, test, exact_match)
        eval_seconds = time.perf_counter() - start
        torch.manual_seed(config.seed)
        policy = copy.deepcopy(reference)
        apply_lora(policy, list(config.target), r=config.r, alpha=config.alpha)
        train = make_tasks(config.steps * config.groups, "train", seed=config.seed + 1,
                           families=config.families)
        generator = torch.Generator(device=next(policy.parameters()).device)
        generator.manual_seed(config.seed)
        start = time.perf_counter()
        history = grpo_train(policy, tokenizer, train, config, reference, generator,
                             eval_fn=lambda m: evaluate(m, tokenizer, test, exact_match).mean)
        # training time without the evaluations during training
        train_seconds = time.perf_counter() - start - sum(history.get("eval_seconds", []))
        after = evaluate(policy, tokenizer, test, exact_match)
        record = {
            "config": asdict(config),
            "history": history,
            "before": _eval_record(before, test),
            "after": _eval_record(after, test),
            "trainable": trainable_parameters(policy)[0],
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
        }
        save_adapter(policy, adapter)
        return record

    record, adapter, _ = cached_record_run(name, config, fine_tune)
    return record, adapter


def book_grpo_config() -> GRPOConfig:
    """The GRPO run of section 5.8 for the current profile: ``smoke`` two tiny steps, ``book``
    a few minutes on a CPU on the ``larger`` family, ``full`` a longer run on three families for
    a GPU (not yet validated)."""
    from dlbook.config import pick

    return pick(
        smoke=GRPOConfig(steps=2, groups=2, samples=2, max_new_tokens=4, n_test=4,
                         eval_every=1),
        book=GRPOConfig(),
        full=GRPOConfig(families=("add", "sort", "larger"), steps=200, groups=16, samples=16,
                        max_new_tokens=16, minibatches=4, kl_coef=0.02, lr=1e-4, n_test=400,
                        eval_every=20),
    )
