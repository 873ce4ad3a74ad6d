"""GRPO (dlbook.rl): group advantages, the clipped objective, the KL estimate, rollouts, and a
whole training loop on a tiny GPT with a toy reward."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from dlbook.lora import apply_lora
from dlbook.nn import GPT, GPTConfig
from dlbook.nn.losses import IGNORE_INDEX
from dlbook.rl import (
    GRPOConfig,
    Rollouts,
    group_advantages,
    grpo_loss,
    grpo_step,
    grpo_train,
    kl_estimate,
    rollout_batch,
    sample_groups,
)
from dlbook.sft import target_logprobs

# --------------------------------------------------------------------------- advantages


def test_group_advantages_are_standardised_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1, 1.0, 0.0, 0.0], [3.0, 5.0, 4.0, 8.0]])
    adv = group_advantages(rewards, eps=0.0)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(adv.std(dim=1), torch.ones(3), atol=1e-6)  # unbiased std, as in GRPO
    # a shift or a positive scale of one group's rewards does not change its advantages
    assert torch.allclose(group_advantages(rewards * 7 + 3, eps=0.0), adv, atol=1e-5)
    # the better completion of a group gets the larger advantage
    assert adv[0, 0] > 0 > adv[0, 1] and adv[2].argmax() == 3


def test_group_advantages_of_a_uniform_group_are_zero():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(adv[0], torch.zeros(3))
    assert adv[1, 1] > 0


@pytest.mark.parametrize(
    ("shape", "words"),
    [((3, 0), "empty group"), ((0, 4), "no groups"), ((2, 1), "at least 2"),
     ((4,), "(G, K)")],
)
def test_group_advantages_refuses_bad_groups(shape, words):
    with pytest.raises(ValueError, match="empty group|no groups|at least 2|G, K"):
        group_advantages(torch.zeros(shape))
    try:
        group_advantages(torch.zeros(shape))
    except ValueError as e:
        assert words in str(e)


def test_group_advantages_refuses_nan():
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))


# --------------------------------------------------------------------------- the clipped loss


def _batch(n=4, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g) * 3
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[:, :2] = False  # a prompt
    mask[1, 4:] = False  # a short completion
    adv = torch.randn(n, generator=g)
    return logp, mask, adv


def test_loss_at_ratio_one_is_minus_the_mean_advantage():
    logp, mask, adv = _batch()
    loss, stats = grpo_loss(logp, logp.clone(), adv, mask)
    assert math.isclose(loss.item(), -adv.mean().item(), rel_tol=1e-6, abs_tol=1e-7)
    assert stats["clipped"] == 0.0 and stats["kl"] == 0.0


def test_gradient_at_ratio_one_is_the_policy_gradient():
    """d loss / d logp[i, t] = -A_i / (|o_i| N) on completion tokens, 0 elsewhere."""
    logp, mask, adv = _batch()
    x = logp.clone().requires_grad_(True)
    loss, _ = grpo_loss(x, logp, adv, mask)
    loss.backward()
    lengths = mask.sum(dim=1, keepdim=True)
    expected = -adv[:, None] / lengths / len(adv) * mask
    assert torch.allclose(x.grad, expected, atol=1e-7)


@pytest.mark.parametrize(
    ("log_ratio", "advantage", "flat"),
    [(0.5, 1.0, True), (-0.5, -1.0, True),  # beyond the trust region on the side it favours
     (0.5, -1.0, False), (-0.5, 1.0, False),  # the pessimistic side: still a gradient
     (0.1, 1.0, False), (-0.1, -1.0, False)],  # inside the region
)
def test_gradient_is_zero_only_outside_the_clip_region_on_the_favoured_side(
    log_ratio, advantage, flat
):
    logp_old = torch.full((1, 3), -1.0)
    x = (logp_old + log_ratio).requires_grad_(True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = grpo_loss(x, logp_old, torch.tensor([advantage]), mask, clip=0.2)
    loss.backward()
    assert (x.grad.abs().max().item() == 0.0) is flat
    assert stats["clipped"] == (1.0 if flat else 0.0)
    if not flat:  # unclipped: the gradient of -rho A / 3 with respect to logp
        assert torch.allclose(x.grad, torch.full((1, 3), -math.exp(log_ratio) * advantage / 3))


def test_clipped_value_is_the_pessimistic_bound():
    logp_old = torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, _ = grpo_loss(torch.full((1, 1), math.log(2.0)), logp_old, torch.tensor([1.0]), mask)
    assert math.isclose(loss.item(), -1.2, rel_tol=1e-6)  # min(2 A, 1.2 A)
    loss, _ = grpo_loss(torch.full((1, 1), math.log(2.0)), logp_old, torch.tensor([-1.0]), mask)
    assert math.isclose(loss.item(), 2.0, rel_tol=1e-6)  # min(-2, -1.2) = -2


def test_masked_positions_do_not_matter_even_if_infinite():
    logp, mask, adv = _batch()
    loss, _ = grpo_loss(logp, logp, adv, mask)
    wild = logp.masked_fill(~mask, -float("inf"))
    loss2, _ = grpo_loss(wild, logp.masked_fill(~mask, 5.0), adv, mask)
    assert torch.isfinite(loss2) and math.isclose(loss.item(), loss2.item(), rel_tol=1e-6)


def test_kl_estimate_is_non_negative_and_zero_when_equal():
    g = torch.Generator().manual_seed(1)
    a, b = -torch.rand(1000, generator=g) * 5, -torch.rand(1000, generator=g) * 5
    assert (kl_estimate(a, b) >= 0).all()
    assert torch.equal(kl_estimate(a, a), torch.zeros(1000))


def test_kl_estimate_is_unbiased():
    """Sampling x ~ p, the mean of exp(q) - q - 1 with q = log r(x) - log p(x) is KL(p || r)."""
    p = torch.tensor([0.5, 0.3, 0.2])
    r = torch.tensor([0.2, 0.2, 0.6])
    x = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = kl_estimate(p.log()[x], r.log()[x]).mean()
    exact = (p * (p / r).log()).sum()
    assert abs(estimate - exact) < 0.01


def test_kl_term_in_the_loss():
    logp, mask, adv = _batch()
    ref = logp - 0.3
    loss0, s0 = grpo_loss(logp, logp, adv, mask, logp_ref=logp)
    assert s0["kl"] == 0.0
    loss, s = grpo_loss(logp, logp, adv, mask, logp_ref=ref, kl_coef=0.5)
    assert s["kl"] > 0
    assert math.isclose(loss.item(), loss0.item() + 0.5 * s["kl"], rel_tol=1e-5)
    # the KL gradient pulls the policy towards the reference
    x = logp.clone().requires_grad_(True)
    grpo_loss(x, logp, torch.zeros(4), mask, logp_ref=ref, kl_coef=1.0)[0].backward()
    assert (x.grad[mask] > 0).all()  # minimising lowers logp where it exceeds the reference


def test_loss_refuses_bad_input():
    logp, mask, adv = _batch()
    with pytest.raises(ValueError, match="kl_coef > 0 needs logp_ref"):
        grpo_loss(logp, logp, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, logp, adv[:2], mask)
    with pytest.raises(ValueError, match="at least one completion token"):
        grpo_loss(logp, logp, adv, torch.zeros_like(mask))
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        grpo_loss(logp, logp[:, :3], adv, mask)


# --------------------------------------------------------------------------- rollouts and a run


def test_rollout_batch_masks_the_prompt():
    idx, targets = rollout_batch([[1, 2, 3], [4, 5]], [[7, 8], [9]], pad_id=0)
    assert idx.tolist() == [[1, 2, 3, 7], [4, 5, 0, 0]]
    assert targets.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8],
                                [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="at least one token"):
        rollout_batch([[1]], [[]], pad_id=0)


@dataclass(frozen=True)
class ToyTask:
    prompt: str
    answer: str
    family: str = "toy"


class CharTokenizer:
    """Characters ``a``-``o`` are ids 1-15; id 0 is the end of a turn."""

    def encode(self, text, allowed_special=None):
        return [0] if text == "<|im_end|>" else [ord(c) - 96 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 96) for i in ids if i)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return self.encode(messages[0]["content"])


def _tiny_policy(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return model.eval()


def test_sample_groups_shapes_and_stop_tokens():
    model, tok = _tiny_policy(), CharTokenizer()
    tasks = [ToyTask("abc", "a"), ToyTask("bcd", "b"), ToyTask("cde", "c")]
    ro = sample_groups(model, tok, tasks, 4, max_new_tokens=3,
                       reward_fn=lambda t, c: float(c == t.answer),
                       generator=torch.Generator().manual_seed(0))
    assert ro.rewards.shape == (3, 4) and ro.n == 12
    assert [t.prompt for t in ro.tasks[:5]] == ["abc"] * 4 + ["bcd"]
    for ids, text in zip(ro.completions, ro.texts, strict=True):
        stopped = ids[-1] == 0
        assert len(ids) <= 4 and tok.decode(ids) == text and (stopped or len(ids) == 3)
    with pytest.raises(ValueError, match="no tasks"):
        sample_groups(model, tok, [], 4, max_new_tokens=3, reward_fn=lambda t, c: 0.0)


def test_grpo_step_raises_the_probability_of_the_rewarded_completion():
    policy, ref = _tiny_policy(), _tiny_policy()
    apply_lora(policy, ["c_attn", "c_proj"], r=4, alpha=8)
    prompts = [[1, 2, 3]] * 4
    completions = [[5, 0], [6, 0], [7, 0], [8, 0]]
    ro = Rollouts([None] * 4, prompts, completions, [""] * 4, torch.tensor([[1.0, 0, 0, 0]]))
    idx, targets = rollout_batch(prompts, completions, pad_id=0)

    def logp_first():
        with torch.no_grad():
            return target_logprobs(policy, idx, targets).sum(dim=1)

    before = logp_first()
    config = GRPOConfig(groups=1, samples=4, lr=0.05, kl_coef=0.01, minibatches=2)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.lr)
    for _ in range(3):
        stats = grpo_step(policy, opt, ro, config, pad_id=0, reference=ref)
    after = logp_first()
    assert after[0] > before[0] and (after[1:] < before[1:]).all()
    assert stats["kl"] > 0 and 0.0 <= stats["clipped"] <= 1.0


def test_grpo_train_learns_a_toy_reward():
    """Reward 1 for an answer that starts with ``e`` (1 in 16 at first): the reward rises."""
    policy, tok = _tiny_policy(seed=3), CharTokenizer()
    policy.requires_grad_(True)  # every weight: a tiny model learns fast
    tasks = [ToyTask(p, "e") for p in ["abc", "bcd", "cab", "dab"] * 10]
    config = GRPOConfig(steps=20, groups=2, samples=8, max_new_tokens=2, lr=0.03, eval_every=5)
    evaluated = []

    def eval_fn(model):
        evaluated.append(model is policy)
        return 0.5

    history = grpo_train(policy, tok, tasks, config, generator=torch.Generator().manual_seed(0),
                         reward_fn=lambda t, c: float(c.startswith(t.answer)), eval_fn=eval_fn)
    assert set(history) >= {"reward", "correct", "formed_wrong", "length", "kl", "seconds"}
    assert len(history["reward"]) == 20
    # evaluated after steps 5, 10 and 15, on the policy being trained, not after the last (20)
    assert history["eval_step"] == [5.0, 10.0, 15.0] and evaluated == [True] * 3
    assert history["eval_score"] == [0.5] * 3 and len(history["eval_seconds"]) == 3
    first, last = sum(history["reward"][:5]) / 5, sum(history["reward"][-5:]) / 5
    assert first < 0.2 and last > 0.8, (first, last)


def test_grpo_train_without_evaluation_records_none():
    policy, tok = _tiny_policy(seed=3), CharTokenizer()
    policy.requires_grad_(True)
    config = GRPOConfig(steps=2, groups=1, samples=2, max_new_tokens=2, eval_every=0)
    calls = []
    history = grpo_train(policy, tok, [ToyTask("abc", "e")] * 2, config, progress=False,
                         reward_fn=lambda t, c: 0.0, eval_fn=lambda m: calls.append(m) or 0.0)
    assert "eval_step" not in history and calls == []


def test_config_checks():
    with pytest.raises(ValueError, match="samples must be >= 2"):
        GRPOConfig(samples=1)
    with pytest.raises(ValueError, match="minibatches must divide"):
        GRPOConfig(groups=3, samples=3, minibatches=2)
    with pytest.raises(ValueError, match="lr"):
        GRPOConfig(lr=0.0)
