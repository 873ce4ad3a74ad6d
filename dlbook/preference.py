"""Direct preference optimisation (DPO, Rafailov et al. 2023; section 5.7).

A preference pair is a prompt with a *chosen* and a *rejected* completion. With a frozen
reference policy :math:`\\pi_\\text{ref}`, the implicit reward of a completion ``y`` is
:math:`r(x, y) = \\beta\\,[\\log \\pi_\\theta(y|x) - \\log \\pi_\\text{ref}(y|x)]` and the DPO loss
is the Bradley-Terry negative log-likelihood that the chosen completion wins,
:math:`-\\log \\sigma(r(x, y_w) - r(x, y_l))`. Shapes: ``N`` pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlbook.config import NonNegativeInt, PositiveFloat, check_int, validate_config
from dlbook.decoding import sample_next
from dlbook.evaluate import generate_batch
from dlbook.sft import ChatExample, pad_batch, render_chat, target_logprobs


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (the user's message) and two different completions, the ``chosen`` one
    preferred. Raises ``ValueError`` on construction if malformed."""

    prompt: str
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"a preference pair needs a non-empty string {name}, got {value!r}"
                )
        if self.chosen == self.rejected:
            raise ValueError(f"chosen and rejected are the same completion: {self.chosen!r}")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss from sequence log-probabilities, each ``(N,)``.

    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``: the mean loss (a scalar) and the implicit
        rewards ``β (log π - log π_ref)`` of each completion, ``(N,)`` each, detached.

    Raises:
        ValueError: ``beta <= 0`` or inputs of different shapes.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"expected four (N,) tensors of log-probabilities, got shapes {shapes}")
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


# --------------------------------------------------------------------------- pairs from samples


def rank_completion(task, completion: str) -> tuple[float, bool]:
    """How good a completion of ``task`` is, for sorting: ``(exact_match, well_formed)``, so a
    correct answer beats a wrong one and, among wrong ones, a bare number or list (the asked-for
    form) beats prose."""
    from dlbook.data.tasks import exact_match, well_formed

    return exact_match(task, completion), well_formed(completion)


def make_pairs(tasks: Sequence, samples: Sequence[Sequence[str]]) -> list[PreferencePair]:
    """One pair per task whose samples hold a correct and a wrong completion: the best-ranked
    sample (:func:`rank_completion`; the first of equals) is chosen, the worst rejected.

    ``samples[i]`` are the completions sampled for ``tasks[i]``. Surrounding white space is
    removed (the checker ignores it, and in the chat template it would merge with the tokens
    around the turn); blank ones are skipped (a pair needs two non-empty texts). Tasks whose
    samples are all right or all wrong give no pair: the checker has nothing to prefer.

    Raises:
        ValueError: ``tasks`` and ``samples`` differ in length.
    """
    if len(tasks) != len(samples):
        raise ValueError(f"{len(tasks)} tasks but {len(samples)} lists of samples")
    pairs = []
    for task, completions in zip(tasks, samples, strict=True):
        candidates = [c.strip() for c in completions if c.strip()]
        if not candidates:
            continue
        ranked = sorted(candidates, key=lambda c: rank_completion(task, c), reverse=True)
        best, worst = ranked[0], ranked[-1]
        if rank_completion(task, best)[0] == 1.0 and rank_completion(task, worst)[0] == 0.0:
            pairs.append(PreferencePair(task.prompt, best, worst))
    return pairs


@torch.no_grad()
def sample_completions(
    model, prompts: Sequence[Sequence[int]], k: int, max_new_tokens: int, stop: int, *,
    temperature: float = 1.0, generator: torch.Generator | None = None, batch_size: int = 16,
) -> list[list[list[int]]]:
    """``k`` sampled completions of each prompt → ``out[i][j]``, the new ids of sample ``j`` of
    prompt ``i`` without the stop token (as :func:`dlbook.evaluate.generate_batch` returns them).

    Each prompt is run through the model once; its keys and values are then copied ``k`` times
    in the cache and the ``k`` continuations decoded together, and a sample that has produced
    the stop token leaves the batch. The distribution is that of ``generate_batch`` (the same
    logits, the same sampling); only the ``k - 1`` repeated prompt passes and the steps of
    finished samples are saved. Prompts are grouped by length (no padding), ``batch_size``
    prompts at a time.

    Raises:
        ValueError: no prompts, an empty prompt, or bad ``k``/``max_new_tokens``/``batch_size``.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one prompt, and no empty prompt")
    for name, value in (("k", k), ("max_new_tokens", max_new_tokens),
                        ("batch_size", batch_size)):
        check_int(name, value)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    out: list[list[list[int]]] = [[[] for _ in range(k)] for _ in prompts]
    for length, members in sorted(by_length.items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            cache = model.new_cache(length + max_new_tokens)
            idx = torch.tensor([list(prompts[i]) for i in chunk], device=device)
            hidden = model.features(idx, cache=cache)[:, -1]  # the head at the last position only
            for layer in cache.layers:  # the prompt's keys and values, once per sample
                if layer.k is not None and layer.v is not None:
                    layer.k = layer.k.repeat_interleave(k, dim=0)
                    layer.v = layer.v.repeat_interleave(k, dim=0)
            last = model.lm_head(hidden).repeat_interleave(k, dim=0)  # (len(chunk) * k, V)
            rows = torch.arange(last.shape[0], device=device)  # the unfinished samples
            new: list[list[int]] = [[] for _ in range(last.shape[0])]
            for step in range(max_new_tokens):
                nxt = sample_next(last, temperature, generator=generator)[:, 0]
                for row, token in zip(rows.tolist(), nxt.tolist(), strict=True):
                    if token != stop:
                        new[row].append(token)
                going = nxt != stop
                if not bool(going.any()) or step == max_new_tokens - 1:
                    break
                if not bool(going.all()):  # drop finished samples from the batch and the cache
                    rows, nxt = rows[going], nxt[going]
                    for layer in cache.layers:
                        if layer.k is not None and layer.v is not None:
                            layer.k, layer.v = layer.k[going], layer.v[going]
                last = model(nxt[:, None], cache=cache)[0][:, -1]
            for row, ids in enumerate(new):
                out[chunk[row // k]][row % k] = ids
    model.train(was_training)
    return out


def pair_examples(
    tokenizer, pairs: Sequence[PreferencePair], max_len: int | None = None
) -> tuple[list[ChatExample], list[ChatExample]]:
    """The chosen and the rejected conversation of every pair, tokenised with the chat template
    (:func:`dlbook.sft.render_chat`): only the completion and its ``<|im_end|>`` are targets."""

    def render(prompt: str, completion: str) -> ChatExample:
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion}]
        return render_chat(tokenizer, messages, max_len)

    return ([render(p.prompt, p.chosen) for p in pairs],
            [render(p.prompt, p.rejected) for p in pairs])


def sequence_logprobs(
    model, examples: Sequence[ChatExample], pad_id: int, batch_size: int = 16
) -> torch.Tensor:
    """``log π(y | x)`` of each example: the sum of its target tokens' log-probabilities
    (:func:`dlbook.sft.target_logprobs`), ``(N,)``. The prompt's tokens are not targets, so they
    do not count. Differentiable when gradients are enabled."""
    if not examples:
        raise ValueError("no examples")
    check_int("batch_size", batch_size)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(examples), batch_size):
        idx, targets = pad_batch(examples[start : start + batch_size], pad_id)
        out.append(target_logprobs(model, idx.to(device), targets.to(device)).sum(1))
    return torch.cat(out)


def completion_example(prompt: Sequence[int], new: Sequence[int], stop: int,
                       max_new_tokens: int) -> ChatExample:
    """A prompt and the ids a model generated after it (as :func:`dlbook.evaluate.generate_batch`
    returns them, without the stop token) → an example whose targets are exactly the sampled
    tokens: the stop token is added back when the model stopped (fewer than ``max_new_tokens``
    new ids), since sampling it was part of the completion."""
    tail = list(new) + ([stop] if len(new) < max_new_tokens else [])
    return ChatExample(tuple(prompt) + tuple(tail), (False,) * len(prompt) + (True,) * len(tail))


@torch.no_grad()
def sampled_kl(
    policy, reference, prompts: Sequence[Sequence[int]], stop: int, pad_id: int, *,
    max_new_tokens: int = 16, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A Monte Carlo estimate of ``KL(π ‖ π_ref)`` per prompt, ``(N,)``: one completion ``y``
    sampled from ``policy`` at temperature 1 for each prompt, scored
    ``log π(y|x) - log π_ref(y|x)``. Each term is an unbiased estimate of that prompt's
    sequence-level KL; single terms may be negative, the KL itself cannot."""
    new = generate_batch(policy, prompts, max_new_tokens, stop, temperature=1.0,
                         generator=generator)
    examples = [completion_example(p, n, stop, max_new_tokens)
                for p, n in zip(prompts, new, strict=True)]
    return sequence_logprobs(policy, examples, pad_id) - sequence_logprobs(
        reference, examples, pad_id)


def preference_metrics(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
) -> dict[str, float]:
    """Held-out measures of the implicit reward ``β (log π - log π_ref)``: ``accuracy`` (the
    share of pairs whose chosen completion gets the larger reward, ties counting half),
    ``margin`` (mean reward of chosen minus rejected), the mean rewards of each side and the
    ``loss``."""
    with torch.no_grad():
        loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen,
                                          ref_rejected, beta)
    diff = chosen - rejected
    accuracy = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean()
    return {"accuracy": accuracy.item(), "margin": diff.mean().item(),
            "chosen_reward": chosen.mean().item(), "rejected_reward": rejected.mean().item(),
            "loss": loss.item()}


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class DPOConfig:
    """One DPO run: a fresh LoRA on the (merged) SFT policy, trained on preference pairs."""

    beta: PositiveFloat = 0.1
    steps: int = 12
    pairs_per_step: int = 8
    lr: PositiveFloat = 1e-3
    r: int = 8
    alpha: PositiveFloat = 16.0
    target: tuple[str, ...] = (r"blocks\..*",)
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        validate_config(self)


def batch_order(n_pairs: int, pairs_per_step: int, seed: int) -> list[list[int]]:
    """The pairs of each batch of one epoch: a seeded shuffle cut into batches of
    ``pairs_per_step`` (the last, incomplete one dropped). Training cycles through them.

    Raises:
        ValueError: fewer pairs than one batch.
    """
    if n_pairs < pairs_per_step:
        raise ValueError(f"{n_pairs} pairs are fewer than one batch of {pairs_per_step}")
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + pairs_per_step]
            for i in range(0, n_pairs - pairs_per_step + 1, pairs_per_step)]


def train_dpo(
    policy,
    chosen: Sequence[ChatExample],
    rejected: Sequence[ChatExample],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    config: DPOConfig,
    pad_id: int,
) -> dict[str, list[float]]:
    """Train ``policy``'s parameters that require gradients on the DPO loss with AdamW.

    ``ref_chosen`` and ``ref_rejected`` are the frozen reference's sequence log-probabilities of
    the same pairs, computed once beforehand: the reference never changes, so neither do they.
    Returns per step the ``loss``, the mean reward ``margin`` and the training-batch
    ``accuracy``.
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires a gradient: nothing would train")
    if not len(chosen) == len(rejected) == len(ref_chosen) == len(ref_rejected):
        raise ValueError("chosen, rejected and their reference log-probabilities differ in length")
    batches = batch_order(len(chosen), config.pairs_per_step, config.seed)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    history: dict[str, list[float]] = {"loss": [], "margin": [], "accuracy": []}
    policy.train()
    for step in range(config.steps):
        b = batches[step % len(batches)]
        k = len(b)
        # chosen and rejected in one forward pass: 2k rows
        logp = sequence_logprobs(policy, [chosen[i] for i in b] + [rejected[i] for i in b],
                                 pad_id, batch_size=2 * k)
        loss, r_w, r_l = dpo_loss(logp[:k], logp[k:], ref_chosen[b], ref_rejected[b],
                                  config.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history["loss"].append(loss.item())
        history["margin"].append((r_w - r_l).mean().item())
        history["accuracy"].append((r_w > r_l).double().mean().item())
    policy.eval()
    return history
