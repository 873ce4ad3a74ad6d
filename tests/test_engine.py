"""The batching engine (dlbook.serve.engine) and the decoder's key-padding mask it relies on."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from dlbook.decoding import generate
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.serve.engine import BatchingEngine, EngineBusy, GenerationRequest, TokenStream

V, BLOCK = 61, 48


def tiny_gpt(rope: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32, rope=rope,
        n_kv_head=2 if rope else 0, norm="rms" if rope else "layer",
        mlp="swiglu" if rope else "gelu", bias=not rope,
    )
    return GPT(config).double().eval()


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(map(len, prompts))
    idx = torch.zeros(len(prompts), t, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        idx[i, t - len(p):] = torch.tensor(p)
        mask[i, t - len(p):] = True
    return idx, mask


PROMPTS = [[5, 9, 14, 3, 22, 7, 1], [40, 2], [17, 33, 8, 8]]


def alone(model: GPT, prompt: list[int], n: int, stops: tuple[int, ...] = ()) -> list[int]:
    """Greedy continuation of one prompt by dlbook.decoding.generate (no padding, no batch)."""
    out = generate(model, torch.tensor([prompt]), n, temperature=0.0, stop_tokens=stops)
    new = out[0, len(prompt):].tolist()
    for i, t in enumerate(new):
        if t in stops:
            return new[:i]
    return new


# --------------------------------------------------------------------------- the padding mask


@pytest.mark.parametrize("rope", [True, False])
def test_left_padded_batch_equals_each_prompt_alone(rope):
    """RoPE: a constant shift of a row's positions leaves its scores unchanged; learned
    positions (wpe) are counted per row over the real tokens."""
    model = tiny_gpt(rope)
    idx, mask = left_pad(PROMPTS)
    tol = 1e-6 if rope else 1e-10  # apply_rope rotates in float32: not bit-exact after a shift
    with torch.no_grad():
        batched, _ = model(idx, pad_mask=mask)
        assert not torch.isnan(batched).any()  # padded queries see themselves, no NaN
        for i, p in enumerate(PROMPTS):
            single, _ = model(torch.tensor([p]))
            torch.testing.assert_close(batched[i, mask[i]], single[0], atol=tol, rtol=tol)


@pytest.mark.parametrize("rope", [True, False])
def test_padding_mask_is_remembered_by_the_cache(rope):
    model = tiny_gpt(rope, seed=1)
    tol = 1e-6 if rope else 1e-10
    idx, mask = left_pad(PROMPTS)
    nxt = torch.tensor([[3], [4], [5]])
    with torch.no_grad():
        cache = model.new_cache(12)
        model(idx, cache=cache, pad_mask=mask)
        assert cache.mask is not None and cache.mask[:, : idx.shape[1]].equal(mask)
        step, _ = model(nxt, cache=cache)  # no mask: the new token is real
        for i, p in enumerate(PROMPTS):
            full, _ = model(torch.tensor([p + [3 + i]]))
            torch.testing.assert_close(step[i, -1], full[0, -1], atol=tol, rtol=tol)
        # dropping a row from the cache (what the engine does with a finished request)
        cache.select_rows(torch.tensor([2, 0]))
        again, _ = model(torch.tensor([[6], [7]]), cache=cache)
        for row, (i, t) in enumerate([(2, 6), (0, 7)]):
            full, _ = model(torch.tensor([PROMPTS[i] + [3 + i, t]]))
            torch.testing.assert_close(again[row, -1], full[0, -1], atol=tol, rtol=tol)


def test_pad_mask_errors_and_unchanged_path():
    model = tiny_gpt()
    idx = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="pad_mask must be a boolean tensor"):
        model(idx, pad_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="pad_mask must be a boolean tensor"):
        model(idx, pad_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="segments"):
        model(idx, segments=torch.zeros(1, 3, dtype=torch.long),
              pad_mask=torch.ones(1, 3, dtype=torch.bool))
    with torch.no_grad():  # an all-True mask is the same as none
        torch.testing.assert_close(model(idx, pad_mask=torch.ones(1, 3, dtype=torch.bool))[0],
                                   model(idx)[0], atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("rope", [True, False])
def test_batched_greedy_generation_equals_generate_alone(rope):
    model = tiny_gpt(rope)
    n = [6, 9, 4]  # different lengths: rows leave the wave at different steps (compaction)
    with BatchingEngine(model, max_batch=3, max_wait_s=1.0) as engine:
        streams = [
            engine.submit(GenerationRequest(tuple(p), k)) for p, k in zip(PROMPTS, n, strict=True)
        ]
        got = [s.result(timeout=30) for s in streams]
        stats = engine.stats
    for p, k, s, tokens in zip(PROMPTS, n, streams, got, strict=True):
        assert tokens == alone(model, p, k)
        assert s.finish_reason == "length" and s.completion_tokens == k
        assert s.prompt_tokens == len(p)
    assert stats["requests"] == 3 and stats["batches"] >= 1
    assert stats["batches"] == 1 and stats["mean_batch_size"] == 3.0  # all in one wave


def test_stop_tokens_end_a_stream_without_being_streamed():
    model = tiny_gpt(seed=2)
    p = PROMPTS[0]
    free = alone(model, p, 8)
    stop = free[3]  # a token greedy decoding does produce
    first = free.index(stop)
    with BatchingEngine(model) as engine:
        s = engine.submit(GenerationRequest(tuple(p), 8, stop_tokens=(stop,)))
        tokens = list(s)
    assert tokens == free[:first] == alone(model, p, 8, (stop,))
    assert s.finish_reason == "stop" and stop not in tokens


def test_cancel_mid_stream_and_async_iteration():
    model = tiny_gpt()
    with BatchingEngine(model) as engine:
        s = engine.submit(GenerationRequest((1, 2, 3), 40))
        seen = []
        for t in s:
            seen.append(t)
            if len(seen) == 2:
                s.cancel()
        # cancel() ends the iteration at once: tokens already buffered are not yielded
        assert s.finish_reason == "cancelled" and len(seen) == 2

        async def consume() -> list[int]:
            return [t async for t in engine.submit(GenerationRequest((4, 5), 5))]

        assert asyncio.run(consume()) == alone(model, [4, 5], 5)
        # the engine still serves after a cancel
        assert engine.submit(GenerationRequest((7,), 3)).result(timeout=30) == alone(
            model, [7], 3)


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_gpt()
    req = GenerationRequest((3, 4, 5), 10, temperature=1.5, top_p=0.9, seed=7)
    with BatchingEngine(model) as engine:
        a, b = (engine.submit(req).result(timeout=30) for _ in range(2))
        c = engine.submit(GenerationRequest((3, 4, 5), 10, temperature=1.5, top_p=0.9,
                                            seed=8)).result(timeout=30)
    gen = torch.Generator().manual_seed(7)
    ref = generate(model, torch.tensor([[3, 4, 5]]), 10, temperature=1.5, top_p=0.9,
                   generator=gen)[0, 3:].tolist()
    assert a == b == ref
    assert c != a


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_ids": (), "max_new_tokens": 3}, "must not be empty"),
        ({"prompt_ids": (1, 2.5), "max_new_tokens": 3}, "integer token ids"),
        ({"prompt_ids": (1,), "max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"prompt_ids": (1,), "max_new_tokens": 2, "temperature": -1}, "temperature"),
        ({"prompt_ids": (1,), "max_new_tokens": 2, "top_p": 1.5}, "top_p"),
        ({"prompt_ids": (1,), "max_new_tokens": 2, "seed": 2**64},
         r"seed must lie in \[0, 2\*\*63\)"),
        ({"prompt_ids": (1,), "max_new_tokens": 2, "seed": -1}, "seed must lie"),
        ({"prompt_ids": (1,), "max_new_tokens": 2, "seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationRequest(**kwargs)


def test_submit_checks_against_the_model():
    engine = BatchingEngine(tiny_gpt(), max_batch=2, max_queue=3)  # not started: requests queue
    with pytest.raises(ValueError, match=r"must lie in \[0, 61\)"):
        engine.submit(GenerationRequest((1, V), 2))
    with pytest.raises(ValueError, match="stop_tokens must lie"):
        engine.submit(GenerationRequest((1,), 2, stop_tokens=(-1,)))
    with pytest.raises(ValueError, match="exceeds the model's block_size=48"):
        engine.submit(GenerationRequest(tuple(range(40)), 9))
    engine.submit(GenerationRequest(tuple(range(40)), 8))  # exactly block_size fits
    queued = [engine.submit(GenerationRequest((1,), 2)) for _ in range(2)]
    with pytest.raises(EngineBusy, match="max_queue=3"):
        engine.submit(GenerationRequest((1,), 2))
    assert engine.stats["pending"] == 3
    engine.close()
    assert all(s.finish_reason == "cancelled" for s in queued)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(GenerationRequest((1,), 2))


def test_streams_cancelled_while_queued_do_not_fill_the_queue():
    engine = BatchingEngine(tiny_gpt(), max_batch=2, max_queue=2)  # not started: requests queue
    first = [engine.submit(GenerationRequest((1,), 2)) for _ in range(2)]
    with pytest.raises(EngineBusy):
        engine.submit(GenerationRequest((1,), 2))
    first[0].cancel()
    later = engine.submit(GenerationRequest((1,), 2))  # the cancelled one no longer counts
    assert engine.stats["pending"] == 2
    with pytest.raises(EngineBusy):
        engine.submit(GenerationRequest((1,), 2))
    engine.close()
    assert first[1].finish_reason == later.finish_reason == "cancelled"


def test_a_bad_seed_ends_its_own_row_only():
    """A seed that slips past GenerationRequest's check (here forced in) makes the row's
    generator fail; the request next to it in the same wave still completes."""
    model = tiny_gpt()
    bad_request = GenerationRequest((3, 4), 5, temperature=1.0, seed=1)
    object.__setattr__(bad_request, "seed", 2**64)  # what validation now refuses
    with BatchingEngine(model, max_batch=2, max_wait_s=5.0) as engine:  # both in one wave
        bad = engine.submit(bad_request)
        good = engine.submit(GenerationRequest((2, 1), 5))
        assert good.result(timeout=30) == alone(model, [2, 1], 5)
        assert good.finish_reason == "length"
        assert bad.result(timeout=30) == [] and bad.finish_reason == "error"
        assert "verflow" in bad.error
        assert engine.stats["batches"] == 1 and engine.stats["errors"] == 0


class Flaky(GPT):
    """A GPT whose forward pass fails on a chosen prompt token."""

    def features(self, idx, cache=None, segments=None, pad_mask=None):
        if bool((idx == 13).any()):
            raise RuntimeError("boom")
        return super().features(idx, cache, segments, pad_mask)


def test_a_model_error_ends_the_wave_but_not_the_worker():
    model = Flaky(tiny_gpt().config).double().eval()
    with BatchingEngine(model, max_batch=2, max_wait_s=5.0) as engine:  # both in one wave
        bad = engine.submit(GenerationRequest((13, 1), 5))
        other = engine.submit(GenerationRequest((2, 1), 5))  # same wave: also ends
        assert list(bad) == [] and bad.finish_reason == "error" and "boom" in bad.error
        other.result(timeout=30)
        assert other.finish_reason == "error"
        later = [engine.submit(GenerationRequest((2, 1), 3)) for _ in range(2)]
        for stream in later:
            assert stream.result(timeout=30) == alone(model, [2, 1], 3)
            assert stream.finish_reason == "length"
        assert engine.stats["errors"] == 1 and engine.stats["batches"] == 2


def test_many_threads_submit_concurrently():
    model = tiny_gpt(seed=3)
    prompts = [[(7 * i + j) % V for j in range(1 + i % 5)] for i in range(8)]
    results: dict[int, list[int]] = {}

    def client(i: int) -> None:
        stream: TokenStream = engine.submit(GenerationRequest(tuple(prompts[i]), 3 + i % 4))
        results[i] = list(stream)

    with BatchingEngine(model, max_batch=4, max_wait_s=0.05) as engine:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = engine.stats
    for i, p in enumerate(prompts):
        assert results[i] == alone(model, p, 3 + i % 4)
    assert stats["requests"] == 8 and stats["mean_batch_size"] <= 4
    assert stats["batches"] < 8  # some requests did share a wave
