"""Tests of dlbook.inspect: attention capture, logit lens, probes, gradient x input."""

import pytest
import torch
from torch import nn

from dlbook.inspect import (
    attention_from_probs,
    capture_attention,
    embedding_saliency,
    first_token_score,
    fit_probe,
    gradient_x_input,
    input_saliency,
    logit_lens,
    previous_token_score,
    residual_stream,
)
from dlbook.nn import GPT, GPTConfig, TransformerEncoder, TransformerEncoderConfig


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                    rope=True, norm="rms", mlp="swiglu", bias=False)
    return GPT(cfg).eval()


def test_attention_capture_reproduces_the_model() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        ref, _ = model(idx)
    (logits, _), cap = capture_attention(model, idx)
    torch.testing.assert_close(logits, ref)  # capturing changes nothing
    assert len(cap.probs) == 2 and cap.stacked().shape == (2, 2, 4, 12, 12)
    for block, p, x, out, rope in zip(model.blocks, cap.probs, cap.inputs, cap.outputs,
                                      cap.ropes, strict=True):
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 12))
        assert float(p.triu(1).abs().max()) == 0.0  # causal: no mass on later keys
        with torch.no_grad():
            again = attention_from_probs(block.attn, x, p, rope)
        torch.testing.assert_close(again, out, atol=1e-5, rtol=1e-5)
        # a different set of probabilities would not reproduce it
        uniform = torch.ones_like(p).tril() / torch.arange(1, 13)[:, None]
        with torch.no_grad():
            other = attention_from_probs(block.attn, x, uniform, rope)
        assert float((other - out).abs().max()) > 20 * float((again - out).abs().max())


def test_attention_capture_encoder_with_padding() -> None:
    torch.manual_seed(0)
    enc = TransformerEncoder(TransformerEncoderConfig(vocab_size=30, block_size=10, n_layer=1,
                                                      n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 30, (2, 8))
    mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    _, cap = capture_attention(enc, idx, mask)
    p = cap.probs[0]
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 8))
    assert float(p[1, :, :, 5:].abs().max()) == 0.0
    with torch.no_grad():
        again = attention_from_probs(enc.blocks[0].attn, cap.inputs[0], p)
    torch.testing.assert_close(again, cap.outputs[0], atol=1e-5, rtol=1e-5)


def test_head_scores() -> None:
    t = 6
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    prev[torch.arange(1, t), torch.arange(0, t - 1)] = 1
    sink = torch.zeros(t, t)
    sink[:, 0] = 1
    probs = torch.stack([prev, sink])  # (H=2, T, T)
    torch.testing.assert_close(previous_token_score(probs), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(first_token_score(probs), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        previous_token_score(probs, start=t)


def test_logit_lens_last_layer_is_the_model() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 50, (2, 9))
    stream = residual_stream(model, idx)
    assert stream.shape == (3, 2, 9, 32)
    with torch.no_grad():
        ref, _ = model(idx)
        torch.testing.assert_close(logit_lens(model, stream[-1]), ref)
        torch.testing.assert_close(stream[0], model.wte(idx))
        # the first block maps stream[0] to stream[1]
        torch.testing.assert_close(model.blocks[0](stream[0], rope=model.rope), stream[1])
    with pytest.raises(ValueError):
        logit_lens(model, torch.zeros(3, 7))


def test_probe_separable_and_random_labels() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g)
    w = torch.randn(10, generator=g)
    y = (x @ w > 0).long()
    probe = fit_probe(x[:300], y[:300])
    assert probe.accuracy(x[300:], y[300:]) > 0.95
    noise = torch.randint(0, 2, (400,), generator=g)
    chance = fit_probe(x[:300], noise[:300]).accuracy(x[300:], noise[300:])
    assert 0.35 < chance < 0.65
    with pytest.raises(ValueError):
        fit_probe(x, y[:10])
    with pytest.raises(ValueError):
        fit_probe(x, torch.zeros(400, dtype=torch.long), n_classes=1)


def test_gradient_x_input_of_a_linear_model() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    x = torch.randn(4, 6)
    target = torch.tensor([0, 2, 1, 2])
    attr = gradient_x_input(lin, x, target)
    torch.testing.assert_close(attr, lin.weight[target].detach() * x)  # w_i x_i exactly
    torch.testing.assert_close(attr.sum(1), (lin(x) - lin.bias).gather(1, target[:, None])
                               .squeeze(1).detach())
    with pytest.raises(ValueError):
        gradient_x_input(lin, torch.ones(2, 6, dtype=torch.long), 0)


def test_embedding_saliency_matches_manual_gradient() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(20, 5)
    head = nn.Linear(5, 3)

    def model(idx: torch.Tensor) -> torch.Tensor:
        return head(emb(idx).mean(1))

    idx = torch.randint(0, 20, (2, 7))
    sal = embedding_saliency(model, emb, idx, 1)
    e = emb(idx).detach()
    expected = (e * head.weight[1].detach() / 7).sum(-1)  # linear in the embeddings
    torch.testing.assert_close(sal, expected)
    assert emb.weight.grad is None and not emb._forward_hooks


def test_input_saliency_at_a_layer_input() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(20, 5)
    inner = nn.Linear(5, 5)
    head = nn.Linear(5, 3)

    def model(idx: torch.Tensor) -> torch.Tensor:
        return head(inner(emb(idx)).mean(1))

    idx = torch.randint(0, 20, (2, 7))
    sal = input_saliency(model, inner, 2, idx)
    h = emb(idx).detach()
    expected = (h * (head.weight[2] @ inner.weight).detach() / 7).sum(-1)
    torch.testing.assert_close(sal, expected)
    assert not inner._forward_pre_hooks
