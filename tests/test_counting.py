"""Closed-form parameter counts (dlbook.counting) against PyTorch's own ``numel`` counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlbook.counting import (
    attention_params,
    conv2d_params,
    embedding_params,
    gpt_params,
    linear_params,
    mlp_params,
    norm_params,
    param_breakdown,
    rnn_params,
    swiglu_hidden,
    transformer_block_params,
)
from dlbook.nn.attention import MultiHeadAttention
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.nn.mlp import MLP, MLPConfig
from dlbook.nn.transformer import (
    RMSNorm,
    TransformerBlock,
    TransformerEncoder,
    TransformerEncoderConfig,
)

FAST = settings(max_examples=25, deadline=None)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@FAST
@given(st.integers(1, 40), st.integers(1, 40), st.booleans())
def test_linear(d_in, d_out, bias):
    assert linear_params(d_in, d_out, bias) == count(nn.Linear(d_in, d_out, bias=bias))


@FAST
@given(st.integers(1, 30), st.lists(st.integers(1, 30), max_size=4), st.integers(1, 12))
def test_mlp(d_in, hidden, d_out):
    assert mlp_params(d_in, hidden, d_out) == count(MLP(MLPConfig(d_in, hidden, d_out)))


@FAST
@given(
    st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5),
    st.integers(1, 5), st.booleans(),
)
def test_conv2d(g, cin_per_group, cout_per_group, kh, kw, bias):
    cin, cout = g * cin_per_group, g * cout_per_group
    conv = nn.Conv2d(cin, cout, (kh, kw), groups=g, bias=bias)
    assert conv2d_params(cin, cout, (kh, kw), groups=g, bias=bias) == count(conv)
    if kh == kw:
        assert conv2d_params(cin, cout, kh, groups=g, bias=bias) == count(conv)


@FAST
@given(st.integers(1, 300), st.integers(1, 64))
def test_embedding(v, c):
    assert embedding_params(v, c) == count(nn.Embedding(v, c))


@FAST
@given(
    st.sampled_from(["rnn", "gru", "lstm"]), st.integers(1, 12), st.integers(1, 12),
    st.integers(1, 3), st.booleans(), st.booleans(),
)
def test_rnn(kind, d, h, layers, bias, bidirectional):
    cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind]
    module = cls(d, h, num_layers=layers, bias=bias, bidirectional=bidirectional)
    assert rnn_params(kind, d, h, layers, bias, bidirectional) == count(module)


@FAST
@given(st.integers(1, 4), st.integers(1, 8), st.booleans(), st.integers(1, 20), st.integers(1, 20))
def test_attention(heads, head_dim, bias, kdim, vdim):
    c = heads * head_dim
    assert attention_params(c, bias) == count(nn.MultiheadAttention(c, heads, bias=bias))
    assert attention_params(c, bias) == count(MultiHeadAttention(c, heads, bias=bias))
    mha = nn.MultiheadAttention(c, heads, bias=bias, kdim=kdim, vdim=vdim)
    assert attention_params(c, bias, kdim, vdim) == count(mha)


@FAST
@given(st.integers(1, 50), st.booleans(), st.booleans())
def test_norms(dim, affine, bias):
    ln = nn.LayerNorm(dim, elementwise_affine=affine, bias=bias)
    assert norm_params("layer", dim, affine, bias) == count(ln)
    bn = nn.BatchNorm2d(dim, affine=affine)
    assert norm_params("batch", dim, affine) == count(bn)
    assert sum(b.numel() for b in bn.buffers()) == 2 * dim + 1  # running stats + counter
    assert norm_params("rms", dim) == count(RMSNorm(dim)) == count(nn.RMSNorm(dim))


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 4), st.sampled_from([2, 4, 6, 10]), st.sampled_from(["gelu", "swiglu"]),
    st.sampled_from(["layer", "rms"]), st.booleans(),
)
def test_transformer_block(heads, head_dim, mlp, norm, bias):
    c = heads * head_dim
    block = TransformerBlock(c, heads, mlp=mlp, norm=norm, bias=bias)
    assert transformer_block_params(c, mlp, norm, bias) == count(block)


@pytest.mark.parametrize("c", [1, 2, 3, 7, 8, 64, 100, 768, 4096])
def test_swiglu_hidden_is_close_to_eight_thirds(c):
    h = swiglu_hidden(c)
    assert h % 8 == 0 and 8 * c / 3 - 1 <= h < 8 * c / 3 + 8


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 3), st.integers(1, 3), st.sampled_from([2, 4, 8]), st.integers(1, 300),
    st.integers(1, 64), st.booleans(), st.sampled_from(["layer", "rms"]),
    st.sampled_from(["gelu", "swiglu"]), st.booleans(),
)
def test_gpt(n_layer, n_head, head_dim, vocab, block, rope, norm, mlp, bias):
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head,
                    n_embd=n_head * head_dim, rope=rope, norm=norm, mlp=mlp, bias=bias)
    model = GPT(cfg)
    assert gpt_params(cfg) == count(model)
    parts = param_breakdown(model)
    assert sum(parts.values()) == count(model)
    assert parts["token embedding"] == vocab * cfg.n_embd and parts["head"] == 0
    assert parts["position embedding"] == (0 if rope else block * cfg.n_embd)
    # untie the output layer: one more (V, C) matrix
    model.lm_head.weight = nn.Parameter(model.wte.weight.detach().clone())
    assert gpt_params(cfg, tied=False) == count(model)
    assert param_breakdown(model)["head"] == vocab * cfg.n_embd


def test_gpt2_small_on_meta_device():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    with torch.device("meta"):
        model = GPT(cfg)
    assert gpt_params(cfg) == count(model) == 124_439_808
    assert transformer_block_params(768) == 12 * 768**2 + 13 * 768


def test_breakdown_of_encoder():
    cfg = TransformerEncoderConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=8)
    model = TransformerEncoder(cfg)
    parts = param_breakdown(model)
    assert sum(parts.values()) == count(model)
    assert parts["head"] == 8 * 30 + 30


def test_breakdown_rejects_unknown_models():
    with pytest.raises(ValueError, match="belongs"):
        param_breakdown(nn.Sequential(nn.Linear(2, 2)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="groups"):
        conv2d_params(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="kind"):
        rnn_params("transformer", 4, 4)
    with pytest.raises(ValueError, match="positive"):
        linear_params(0, 3)
    with pytest.raises(ValueError, match="positive"):
        embedding_params(10, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        norm_params("group", 8)
    with pytest.raises(ValueError, match="mlp"):
        transformer_block_params(8, mlp="relu")
    with pytest.raises(ValueError, match="attribute"):
        gpt_params(object())
