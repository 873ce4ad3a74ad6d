"""Tests for dlbook.nn.transformer and dlbook.nn.gpt."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlbook.checkpoint import load_model, save_model
from dlbook.counting import gpt_params
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.nn.transformer import (
    FeedForward,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
    TransformerEncoder,
    TransformerEncoderConfig,
    make_mlp,
)


@pytest.mark.parametrize(("seed", "shape"), [(0, (3, 8)), (1, (2, 5, 16)), (2, (4, 1, 3, 7))])
def test_rmsnorm_matches_torch(seed, shape):
    torch.manual_seed(seed)
    ours, ref = RMSNorm(shape[-1], eps=1e-6), nn.RMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x1 = (3 * torch.randn(shape) + 1).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    # each row has root mean square equal to its gain when the gain is one
    torch.testing.assert_close(
        RMSNorm(shape[-1])(x1).pow(2).mean(-1), torch.ones(shape[:-1]), atol=1e-4, rtol=1e-4
    )


def test_mlp_and_swiglu_by_hand():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    m = FeedForward(8, 32)
    expected = m.c_proj(nn.functional.gelu(x @ m.c_fc.weight.T + m.c_fc.bias))
    torch.testing.assert_close(m(x), expected)
    s = SwiGLU(8, 20, bias=False)
    a = x @ s.gate.weight.T
    expected = (a * torch.sigmoid(a) * (x @ s.up.weight.T)) @ s.c_proj.weight.T
    torch.testing.assert_close(s(x), expected)
    n_gelu = sum(p.numel() for p in make_mlp("gelu", 96, bias=False).parameters())
    n_swiglu = sum(p.numel() for p in make_mlp("swiglu", 96, bias=False).parameters())
    assert abs(n_swiglu - n_gelu) / n_gelu < 0.02


@pytest.mark.parametrize("norm_first", [True, False])
def test_post_norm_block_matches_torch_encoder_layer(norm_first):
    torch.manual_seed(0)
    c, h = 16, 4
    ours = TransformerBlock(c, h, norm_first=norm_first)
    ref = nn.TransformerEncoderLayer(
        c, h, dim_feedforward=4 * c, dropout=0.0, activation="gelu", batch_first=True,
        norm_first=norm_first,
    )
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.c_attn.weight)
        ref.self_attn.in_proj_bias.copy_(ours.attn.c_attn.bias)
        ref.self_attn.out_proj.weight.copy_(ours.attn.c_proj.weight)
        ref.self_attn.out_proj.bias.copy_(ours.attn.c_proj.bias)
        for a, b in [(ref.linear1, ours.mlp.c_fc), (ref.linear2, ours.mlp.c_proj),
                     (ref.norm1, ours.norm1), (ref.norm2, ours.norm2)]:
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    ours.eval()
    ref.eval()
    x = torch.randn(2, 5, c)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("seed", "norm", "mlp", "norm_first"), [
    (0, "layer", "gelu", True), (1, "rms", "swiglu", True), (2, "layer", "gelu", False),
])
def test_causal_block_future_does_not_change_past(seed, norm, mlp, norm_first):
    torch.manual_seed(seed)
    block = TransformerBlock(16, 4, causal=True, norm=norm, mlp=mlp, norm_first=norm_first)
    x = torch.randn(2, 10, 16)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, 16)
    torch.testing.assert_close(block(x)[:, :6], block(x2)[:, :6])
    assert not torch.allclose(block(x)[:, 6:], block(x2)[:, 6:])
    # an encoder block (bidirectional) does let the future in
    enc = TransformerBlock(16, 4, causal=False)
    assert not torch.allclose(enc(x)[:, :6], enc(x2)[:, :6])


def test_encoder_shapes_and_errors():
    cfg = TransformerEncoderConfig(vocab_size=12, block_size=9, n_layer=2, n_head=2, n_embd=16,
                                   n_out=5)
    model = TransformerEncoder(cfg)
    assert model(torch.randint(0, 12, (3, 9))).shape == (3, 9, 5)
    with pytest.raises(ValueError):
        model(torch.randint(0, 12, (3, 10)))
    with pytest.raises(ValueError):
        model(torch.full((1, 4), 12))
    with pytest.raises(ValueError):
        TransformerEncoderConfig(vocab_size=12, block_size=9, n_head=3, n_embd=16)


def small_gpt(**kw) -> GPT:
    cfg = dict(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


@pytest.mark.parametrize("kw", [{}, {"rope": True, "norm": "rms", "mlp": "swiglu", "bias": False}])
def test_gpt_shapes_and_initial_loss(kw):
    torch.manual_seed(0)
    model = small_gpt(**kw)
    idx = torch.randint(0, 97, (4, 16))
    targets = torch.randint(0, 97, (4, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 16, 97)
    assert abs(loss.item() - math.log(97)) < 0.1  # small init: nearly uniform predictions
    logits_only, none = model(idx[:, :5])
    assert none is None and logits_only.shape == (4, 5, 97)
    assert model.lm_head.weight is model.wte.weight
    # the count against the independent closed form of dlbook.counting (tied head counted once)
    c = model.config
    assert model.num_params() == gpt_params(c)
    tables = c.vocab_size * c.n_embd + (0 if c.rope else c.block_size * c.n_embd)
    assert model.num_params(non_embedding=True) == gpt_params(c) - tables


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = small_gpt(rope=True)
    idx = torch.randint(0, 97, (2, 12))
    idx2 = idx.clone()
    idx2[:, 8:] = (idx2[:, 8:] + 1) % 97
    torch.testing.assert_close(model(idx)[0][:, :8], model(idx2)[0][:, :8])


def test_gpt_errors():
    model = small_gpt()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, 4), 97))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, 4), -1))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 4))  # float ids
    with pytest.raises(ValueError):
        GPTConfig(n_embd=30, n_head=4)


def test_gpt_residual_projection_init():
    torch.manual_seed(0)
    model = small_gpt(n_layer=8, n_embd=64)
    std = model.blocks[3].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.blocks[3].attn.c_attn.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize("kw", [{}, {"rope": True, "norm": "rms", "mlp": "swiglu"}])
def test_gpt_save_load_round_trip_keeps_tied_weights(tmp_path, kw):
    torch.manual_seed(0)
    model = small_gpt(**kw)
    with torch.no_grad():  # move the weights away from init so a re-init would be noticed
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_model(model, tmp_path)
    loaded = load_model(tmp_path, {"GPT": GPT})
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.wte.weight
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    idx = torch.randint(0, 97, (2, 16))
    model.eval()
    torch.testing.assert_close(model(idx)[0], loaded(idx)[0], rtol=0, atol=0)


def test_gpt_generate():
    torch.manual_seed(0)
    model = small_gpt().eval()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), 20, temperature=0)
    assert out.shape == (2, 23)
    again = model.generate(torch.zeros(2, 3, dtype=torch.long), 20, temperature=0)
    assert torch.equal(out, again)


def bert_layout(**kw) -> TransformerEncoderConfig:
    cfg = dict(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=16, norm_first=False,
               type_vocab_size=2, emb_norm=True, norm_eps=1e-12, mlp_hidden=24, head=False)
    cfg.update(kw)
    return TransformerEncoderConfig(**cfg)


def test_encoder_bert_layout_options():
    torch.manual_seed(0)
    model = TransformerEncoder(bert_layout()).eval()
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"wte", "wpe", "wtt", "emb_norm", "blocks"}  # post-norm: no ln_f, no head
    assert model.blocks[0].mlp.c_fc.out_features == 24
    assert model.blocks[0].norm1.eps == 1e-12 and model.emb_norm.eps == 1e-12
    assert not model.blocks[0].norm_first
    idx = torch.randint(0, 40, (3, 7))
    h = model(idx)
    assert h.shape == (3, 7, 16)
    torch.testing.assert_close(model.hidden_states(idx), h)
    # token type 0 is the default; type 1 changes the output
    types = torch.zeros_like(idx)
    torch.testing.assert_close(model(idx, token_type_ids=types), h)
    assert not torch.allclose(model(idx, token_type_ids=1 - types), h)
    # padded positions do not change the real ones
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    idx2 = idx.clone()
    idx2[0, 4:] = (idx[0, 4:] + 1) % 40
    torch.testing.assert_close(model(idx, mask)[0, :4], model(idx2, mask)[0, :4])
    assert not torch.allclose(model(idx)[0, :4], model(idx2)[0, :4])
    # a post-norm output is layer-normalised at every position (unit gain, zero shift at init)
    torch.testing.assert_close(h.std(-1, unbiased=False), torch.ones(3, 7))


def test_encoder_default_keeps_pre_norm_and_head():
    model = TransformerEncoder(TransformerEncoderConfig(vocab_size=12, block_size=9, n_embd=16))
    assert model.blocks[0].norm_first and model.ln_f is not None and model.head is not None
    assert model.wtt is None and model.emb_norm is None
    assert model.ln_f.eps == 1e-5 and model.blocks[0].mlp.c_fc.out_features == 64


def test_encoder_bad_token_types():
    model = TransformerEncoder(bert_layout())
    idx = torch.randint(0, 40, (2, 5))
    with pytest.raises(ValueError, match="token ids must lie"):
        model(idx, token_type_ids=torch.full((2, 5), 2))
    with pytest.raises(ValueError, match="shape"):
        model(idx, token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    plain = TransformerEncoder(TransformerEncoderConfig(vocab_size=40, block_size=12))
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        plain(idx, token_type_ids=torch.zeros_like(idx))
    with pytest.raises(ValueError, match="mlp_hidden"):
        bert_layout(mlp_hidden=-1)
