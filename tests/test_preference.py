"""Preference optimisation (section 5.7): DPO loss identities and parity, pairs, log-probs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dlbook.data.tasks import Task
from dlbook.evaluate import generate_batch
from dlbook.lora import apply_lora
from dlbook.nn import GPT, GPTConfig
from dlbook.preference import (
    DPOConfig,
    PreferencePair,
    batch_order,
    completion_example,
    dpo_loss,
    make_pairs,
    preference_metrics,
    sample_completions,
    sampled_kl,
    sequence_logprobs,
    train_dpo,
)
from dlbook.sft import ChatExample

STOP, PAD = 1, 0


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    kw = dict(vocab_size=40, block_size=64, n_layer=2, n_head=4, n_embd=32)
    kw.update(overrides)
    return GPT(GPTConfig(**kw)).eval()


def random_logps(n: int = 7, seed: int = 0, scale: float = 20.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(-scale * torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_()
            for _ in range(4)]


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
def test_loss_is_ln2_when_policy_equals_reference(beta):
    logp = -30 * torch.rand(5, dtype=torch.float64)
    other = -30 * torch.rand(5, dtype=torch.float64)
    loss, chosen, rejected = dpo_loss(logp, other, logp, other, beta)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-15)
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


def explicit_bradley_terry(pc, pr, rc, rr, beta):
    """-log P(chosen wins) with P from the Bradley-Terry softmax of the implicit rewards,
    computed as explicit probabilities (not log-sigmoid)."""
    r_w, r_l = beta * (pc - rc), beta * (pr - rr)
    p_win = torch.exp(r_w) / (torch.exp(r_w) + torch.exp(r_l))
    return -torch.log(p_win).mean()


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_loss_and_gradients_match_the_explicit_bradley_terry_likelihood(beta):
    ours = random_logps(seed=1)
    theirs = [t.detach().clone().requires_grad_() for t in ours]
    loss, _, _ = dpo_loss(*ours, beta)
    ref = explicit_bradley_terry(*theirs, beta)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    loss.backward()
    ref.backward()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)


def test_gradient_has_the_closed_form_of_the_paper():
    # dL/d log pi(y_w) = -beta * sigma(r_l - r_w) / N, and the opposite for y_l
    beta = 0.3
    pc, pr, rc, rr = random_logps(seed=2)
    loss, r_w, r_l = dpo_loss(pc, pr, rc, rr, beta)
    loss.backward()
    weight = torch.sigmoid(r_l - r_w) * beta / len(pc)
    torch.testing.assert_close(pc.grad, -weight)
    torch.testing.assert_close(pr.grad, weight)
    torch.testing.assert_close(rc.grad, weight)  # the reference enters with the opposite sign


def test_swapping_chosen_and_rejected_adds_the_mean_margin():
    # -log sigma(-d) - (-log sigma(d)) = d
    beta = 0.7
    pc, pr, rc, rr = (t.detach() for t in random_logps(seed=3))
    loss, r_w, r_l = dpo_loss(pc, pr, rc, rr, beta)
    swapped, _, _ = dpo_loss(pr, pc, rr, rc, beta)
    assert (swapped - loss).item() == pytest.approx((r_w - r_l).mean().item(), rel=1e-10)


def test_loss_ignores_what_chosen_and_rejected_share():
    # a term added to both completions' log-probs (e.g. a prompt's) cancels, as does a change
    # of the reference's normalisation
    pc, pr, rc, rr = (t.detach() for t in random_logps(seed=4))
    shift = torch.randn(len(pc), dtype=torch.float64)
    a = dpo_loss(pc, pr, rc, rr, 0.2)[0]
    assert dpo_loss(pc + shift, pr + shift, rc, rr, 0.2)[0].item() == pytest.approx(a.item())
    assert dpo_loss(pc, pr, rc - shift, rr - shift, 0.2)[0].item() == pytest.approx(a.item())


def test_bad_beta_and_shapes_are_rejected():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError, match="shapes"):
        dpo_loss(x, x, x, torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="shapes"):
        dpo_loss(*(torch.zeros(2, 3),) * 4, 0.1)


def test_preference_metrics_count_ties_as_half():
    zeros = torch.zeros(4)
    m = preference_metrics(zeros, zeros, zeros, zeros, 0.1)
    assert m["accuracy"] == 0.5 and m["margin"] == 0.0
    assert m["loss"] == pytest.approx(math.log(2))
    m = preference_metrics(torch.tensor([1.0, -1.0]), zeros[:2], zeros[:2], zeros[:2], 0.5)
    assert m["accuracy"] == 0.5 and m["margin"] == pytest.approx(0.0)
    assert m["chosen_reward"] == pytest.approx(0.0)


# --------------------------------------------------------------------------- pairs


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(prompt="", chosen="1", rejected="2"), "non-empty string prompt"),
     (dict(prompt="q", chosen="  ", rejected="2"), "non-empty string chosen"),
     (dict(prompt="q", chosen="1", rejected=None), "non-empty string rejected"),
     (dict(prompt="q", chosen="7", rejected="7"), "the same completion")],
)
def test_malformed_pairs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreferencePair(**kwargs)


def test_make_pairs_prefers_correct_then_well_formed():
    t = Task("What is 2 + 3?", "5", "add")
    pairs = make_pairs([t, t, t, t], [
        ["It is 5. ", " 5\n", "6", " "],  # right vs the worst: "6" is well formed, prose not
        ["5", "5"],                    # all correct: nothing to prefer
        ["4", "six"],                  # all wrong
        ["", "  "],                    # nothing usable
    ])
    assert pairs == [PreferencePair(t.prompt, "5", "It is 5.")]
    with pytest.raises(ValueError, match="2 tasks but 1"):
        make_pairs([t, t], [["5"]])


# --------------------------------------------------------------------------- log-probabilities


def example(prompt: list[int], completion: list[int]) -> ChatExample:
    return ChatExample(tuple(prompt + completion),
                       (False,) * len(prompt) + (True,) * len(completion))


def test_sequence_logprobs_sum_the_completion_tokens_only_and_ignore_padding():
    model = tiny_gpt()
    examples = [example([5, 6, 7], [8, 9, STOP]), example([5, 6, 7, 10, 11], [12, STOP]),
                example([3], [4, 4, 4, 4, STOP])]
    batched = sequence_logprobs(model, examples, PAD, batch_size=3)
    one_by_one = torch.cat([sequence_logprobs(model, [e], PAD) for e in examples])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ids = torch.tensor([examples[0].ids])
        logp = model(ids)[0].log_softmax(-1)[0]
    manual = sum(logp[t - 1, ids[0, t]] for t in (3, 4, 5))  # tokens 8, 9, STOP
    assert batched[0].item() == pytest.approx(manual.item(), abs=1e-5)


def test_completion_example_adds_the_stop_token_only_if_sampled():
    e = completion_example([5, 6], [7, 8], STOP, max_new_tokens=4)
    assert e.ids == (5, 6, 7, 8, STOP) and e.trained == (False, False, True, True, True)
    e = completion_example([5, 6], [7, 8, 9, 9], STOP, max_new_tokens=4)  # cut off, no stop
    assert e.ids == (5, 6, 7, 8, 9, 9)


def test_sample_completions_match_greedy_decoding_when_samples_finish_early():
    model = tiny_gpt()
    prompts = [[5, 6, 7], [8, 9, 10], [11, 12], [13, 14, 15]]
    free = generate_batch(model, prompts, 6, stop_token=39)
    stop = free[0][2]  # the first prompt stops at its third token, others later or never
    greedy = generate_batch(model, prompts, 6, stop)
    assert len({len(g) for g in greedy}) > 1  # finished samples do leave the batch
    copies = sample_completions(model, prompts, 3, 6, stop, temperature=0.0, batch_size=2)
    assert all(c == [g] * 3 for c, g in zip(copies, greedy, strict=True))


def test_sample_completions_sample_from_the_model():
    model = tiny_gpt()
    prompt = [5, 6, 7]
    draws = sample_completions(model, [prompt], 4000, 1, STOP,
                               generator=torch.Generator().manual_seed(0))[0]
    with torch.no_grad():
        probs = model(torch.tensor([prompt]))[0][0, -1].softmax(-1)
    counts = torch.bincount(torch.tensor([d[0] if d else STOP for d in draws]), minlength=40)
    assert (counts / 4000 - probs).abs().max() < 0.03
    again = sample_completions(model, [prompt], 5, 4, STOP,
                               generator=torch.Generator().manual_seed(1))
    assert again == sample_completions(model, [prompt], 5, 4, STOP,
                                       generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="k must be"):
        sample_completions(model, [prompt], 0, 4, STOP)


def test_sampled_kl_is_zero_for_the_same_model_and_positive_after_a_change():
    model = tiny_gpt()
    prompts = [[5, 6, 7]] * 40
    kl = sampled_kl(model, model, prompts, STOP, PAD, max_new_tokens=5,
                    generator=torch.Generator().manual_seed(0))
    assert torch.all(kl == 0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(3.0)
    kl = sampled_kl(other, model, prompts, STOP, PAD, max_new_tokens=5,
                    generator=torch.Generator().manual_seed(0))
    assert kl.mean() > 0


# --------------------------------------------------------------------------- training


def test_batch_order_is_a_seeded_partition():
    batches = batch_order(10, 3, seed=0)
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)
    assert len({i for b in batches for i in b}) == 9
    assert batches == batch_order(10, 3, seed=0) != batch_order(10, 3, seed=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        batch_order(2, 3, seed=0)


def test_dpo_on_a_tiny_gpt_starts_at_ln2_and_separates_the_pairs():
    ref = tiny_gpt()
    policy = copy.deepcopy(ref)
    apply_lora(policy, r"blocks\..*", r=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    chosen, rejected = [], []
    for _ in range(8):
        prompt = torch.randint(2, 40, (4,), generator=g).tolist()
        chosen.append(example(prompt, [7, 7, STOP]))
        rejected.append(example(prompt, [9, 9, STOP]))
    with torch.no_grad():
        ref_c = sequence_logprobs(ref, chosen, PAD)
        ref_r = sequence_logprobs(ref, rejected, PAD)
    config = DPOConfig(beta=0.5, steps=15, pairs_per_step=4, lr=1e-2, r=4, alpha=8.0)
    history = train_dpo(policy, chosen, rejected, ref_c, ref_r, config, PAD)
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert history["margin"][0] == pytest.approx(0.0, abs=1e-6)
    assert history["loss"][-1] < 0.3 and history["accuracy"][-1] == 1.0
    with torch.no_grad():
        m = preference_metrics(sequence_logprobs(policy, chosen, PAD),
                               sequence_logprobs(policy, rejected, PAD), ref_c, ref_r, 0.5)
    assert m["accuracy"] == 1.0 and m["margin"] > 0


def test_dpo_config_is_validated():
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError, match="steps"):
        DPOConfig(steps=0)
