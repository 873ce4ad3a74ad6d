"""Decoding (section 4.4): the key/value cache, top-k/top-p filters, stop tokens, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook.decoding import filter_top_k, filter_top_p, generate, sample_next
from dlbook.nn import GPT, GPTConfig
from dlbook.nn.attention import KVCache


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    fields = dict(vocab_size=17, block_size=12, n_layer=2, n_head=2, n_embd=16)
    fields.update(overrides)
    return GPT(GPTConfig(**fields)).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", [{}, {"rope": True}, {"norm": "rms", "mlp": "swiglu"}])
def test_cached_logits_equal_full_forward(seed, variant):
    model = tiny_gpt(seed, **variant)
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, 17, (3, 12), generator=g)
    full, _ = model(seq)
    cache = model.new_cache()
    # a prompt of 5 positions in one call, then the rest one position at a time
    pieces = [model(seq[:, :5], cache=cache)[0]]
    pieces += [model(seq[:, t : t + 1], cache=cache)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 12


def test_cached_chunks_of_several_positions():
    model = tiny_gpt(3, rope=True)
    seq = torch.randint(0, 17, (2, 11))
    full, _ = model(seq)
    cache = model.new_cache()
    parts = [model(seq[:, a:b], cache=cache)[0] for a, b in [(0, 3), (3, 7), (7, 11)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 4, 12, 15])
def test_generate_with_and_without_cache_agree(prompt_len):
    """Greedy decoding past block_size (sliding window) gives the same tokens either way."""
    model = tiny_gpt(4)
    prompt = torch.randint(0, 17, (2, prompt_len), generator=torch.Generator().manual_seed(1))
    a = generate(model, prompt, 20, temperature=0, use_cache=True)
    b = generate(model, prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(a, b)
    assert a.shape == (2, prompt_len + 20)  # the whole prompt is kept in the output
    assert torch.equal(a[:, :prompt_len], prompt)


def test_sampling_is_reproducible_and_same_with_cache():
    model = tiny_gpt(5)
    prompt = torch.zeros(2, 3, dtype=torch.long)
    runs = [
        generate(model, prompt, 15, temperature=0.9, top_k=8, top_p=0.9, use_cache=cache,
                 generator=torch.Generator().manual_seed(7))
        for cache in (True, True, False)
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_cache_is_rejected_past_block_size_and_for_other_batch():
    model = tiny_gpt(0)
    cache = model.new_cache()
    model(torch.zeros(2, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceed block_size"):
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache was built"):
        model(torch.zeros(3, 1, dtype=torch.long), cache=cache)


def test_cache_memory_formula():
    model = tiny_gpt(0)
    cache = model.new_cache()
    assert cache.nbytes() == 0
    model(torch.zeros(3, 2, dtype=torch.long), cache=cache)
    c = model.config
    assert cache.nbytes() == 2 * c.n_layer * 3 * c.block_size * c.n_embd * 4
    cache.reset()
    assert cache.length == 0 and cache.nbytes() == 0
    with pytest.raises(ValueError):
        KVCache(0, 8)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=30),
    st.floats(0.01, 1.0),
)
def test_top_p_keeps_the_smallest_nucleus(values, p):
    logits = torch.tensor(values, dtype=torch.float64)[None]
    kept = torch.isfinite(filter_top_p(logits, p))[0]
    probs = torch.softmax(logits, -1)[0]
    assert kept[logits[0] == logits[0].max()].any()  # a most probable token always survives
    assert probs[kept].sum() >= p - 1e-9  # the nucleus holds at least p
    # minimal: dropping the least probable kept token leaves less than p
    smallest = probs[kept].min()
    assert probs[kept].sum() - smallest < p + 1e-9
    # a nucleus is a top set: every kept token is at least as probable as every dropped one
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=30), st.integers(1, 40))
def test_top_k_keeps_the_k_largest(values, k):
    logits = torch.tensor(values)[None]
    kept = torch.isfinite(filter_top_k(logits, k))[0]
    assert int(kept.sum()) >= min(k, len(values))  # ties may keep more
    assert logits[0][kept].min() >= torch.topk(logits[0], min(k, len(values))).values[-1]


def test_low_temperature_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1, keepdim=True)
    assert torch.equal(sample_next(logits, 0.0), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_p=1e-6), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_k=1), greedy)
    assert torch.equal(sample_next(logits, 1e-4), greedy)


def test_stop_tokens_end_each_row():
    model = tiny_gpt(6)
    prompt = torch.randint(0, 17, (3, 2), generator=torch.Generator().manual_seed(2))
    free = generate(model, prompt, 30, temperature=0)
    stop = int(free[0, 4])  # the third generated token of row 0
    out = generate(model, prompt, 30, temperature=0, stop_tokens=[stop])
    for row_free, row in zip(free, out, strict=True):
        hits = (row_free[2:] == stop).nonzero()
        if len(hits):  # identical up to the first stop token, then only the stop token
            end = 2 + int(hits[0])
            assert torch.equal(row[: end + 1], row_free[: end + 1])
            assert (row[end:] == stop).all()
    if all((r[2:] == stop).any() for r in free):
        assert out.shape[1] < free.shape[1]  # every row stopped: generation ended early
    sampled = generate(model, prompt, 30, temperature=1.0, stop_tokens=list(range(17)),
                       generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (3, 3)  # every token is a stop token: one step and done


def test_generate_restores_training_mode():
    model = tiny_gpt(0).train()
    generate(model, torch.zeros(1, 1, dtype=torch.long), 2)
    assert model.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop_tokens": [99]}, "stop tokens"),
    ],
)
def test_bad_settings_get_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_gpt(0), torch.zeros(1, 2, dtype=torch.long), 3, **kwargs)


def test_bad_prompts_get_clear_errors():
    model = tiny_gpt(0)
    with pytest.raises(ValueError, match="T >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="token ids"):
        generate(model, torch.full((1, 2), 17), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), -1)


def test_tiny_positive_temperature_is_greedy_not_a_crash():
    """Dividing by 1e-30 used to give inf logits, nan probabilities and a multinomial error."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 10
    greedy = logits.argmax(-1, keepdim=True)
    for t in (1e-8, 1e-30, 5e-324):
        assert torch.equal(sample_next(logits, t), greedy)
    masked = logits.clone()
    masked[:, :10] = float("-inf")  # -inf logits (filtered tokens) stay at probability 0
    assert torch.equal(sample_next(masked, 1e-30), masked.argmax(-1, keepdim=True))


@pytest.mark.parametrize("stops", [[2.7], [True], ["3"], [1, 2.0]])
def test_non_integer_stop_tokens_are_refused(stops):
    with pytest.raises(ValueError, match="stop tokens must be integer ids"):
        generate(tiny_gpt(0), torch.zeros(1, 2, dtype=torch.long), 3, stop_tokens=stops)


def test_entropy_of_tempered_distributions():
    from dlbook.decoding import entropy

    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.softmax(logits / 0.7, -1)
    torch.testing.assert_close(entropy(logits, 0.7), -(p * p.log()).sum(-1))
    uniform = torch.zeros(2, 5)
    torch.testing.assert_close(entropy(uniform), torch.full((2,), math.log(5)))
    masked = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert entropy(masked).item() == 0.0  # -inf logits contribute 0, not nan
    assert entropy(logits, 1e-6).max() < 1e-6  # tiny temperature: one-hot, no nan
    hs = [entropy(logits, t).mean().item() for t in (0.25, 0.5, 1.0, 2.0)]
    assert hs == sorted(hs)
    with pytest.raises(ValueError, match="temperature"):
        entropy(logits, 0.0)


def test_real_word_fraction_one_rule():
    from dlbook.decoding import real_word_fraction, words

    vocab = set(words("And God said, Let there be light: and there was light."))
    assert words("LORD's day, 3 times") == ["LORD", "s", "day", "times"]
    assert real_word_fraction(" said, Let there be lihgt and", vocab) == pytest.approx(4 / 5)
    # a word touching a cut end may be a piece of a word: left out
    assert real_word_fraction("aid Let there be lig", vocab) == 1.0
    assert real_word_fraction("xyz", vocab) == 0.0  # nothing whole is left
    assert real_word_fraction(" said, Light ", vocab) == 0.5  # case-sensitive
