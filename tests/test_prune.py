"""Pruning (dlbook.prune): exact mask fractions, parity with torch.nn.utils.prune, and
structured pruning equal to zeroing the removed heads or channels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from dlbook.nn.attention import MultiHeadAttention
from dlbook.nn.transformer import FeedForward, TransformerEncoder, TransformerEncoderConfig
from dlbook.prune import (
    head_scores,
    linear_layers,
    magnitude_prune,
    mlp_channel_scores,
    prune_heads,
    prune_mlp_channels,
    prune_structured,
    remove_masks,
    sparsity,
)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 30), nn.ReLU(), nn.Linear(30, 7), nn.ReLU(),
                         nn.Linear(7, 3))


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 0.9])
def test_mask_fraction_is_exact(scope, amount):
    model = mlp()
    layers = list(model)[::2]
    out = magnitude_prune(model, amount, scope=scope, layers=layers)
    n = sum(m.weight.numel() for m in layers)
    if scope == "global":
        assert out["pruned"] == round(amount * n)
    else:
        for m in layers:
            assert int((m.weight == 0).sum()) == round(amount * m.weight.numel())
    assert out["total"] == n
    assert sparsity(model, layers) == pytest.approx(out["pruned"] / n, abs=1e-12)


def test_global_matches_torch_prune():
    ours, ref = mlp(), mlp()
    magnitude_prune(ours, 0.6, layers=list(ours)[::2])
    torch_prune.global_unstructured([(m, "weight") for m in list(ref)[::2]],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.6)
    for a, b in zip(list(ours)[::2], list(ref)[::2], strict=True):
        assert torch.equal(a.weight, b.weight)


def test_layer_scope_matches_torch_prune():
    ours, ref = mlp(), mlp()
    magnitude_prune(ours, 0.3, scope="layer", layers=list(ours)[::2])
    for m in list(ref)[::2]:
        torch_prune.l1_unstructured(m, "weight", amount=0.3)
    for a, b in zip(list(ours)[::2], list(ref)[::2], strict=True):
        assert torch.equal(a.weight, b.weight)


def test_masks_survive_training_and_iterative_rounds():
    model = mlp()
    magnitude_prune(model, 0.5)  # default layers: every Linear (none is named "head")
    zero = [m.weight == 0 for m in linear_layers(model)]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 10)).pow(2).sum().backward()
        opt.step()
    assert all(bool((m.weight[z] == 0).all()) for m, z in zip(linear_layers(model), zero,
                                                                strict=True))
    magnitude_prune(model, 0.8)  # a second round keeps the first round's zeros
    assert sparsity(model) == pytest.approx(0.8, abs=1e-2)
    assert all(bool((m.weight[z] == 0).all()) for m, z in zip(linear_layers(model), zero,
                                                                strict=True))
    before = model(torch.ones(2, 10))
    assert remove_masks(model) == 3
    assert all(type(m.weight) is nn.Parameter for m in linear_layers(model))
    torch.testing.assert_close(model(torch.ones(2, 10)), before)


def test_head_is_excluded_by_default():
    torch.manual_seed(0)
    model = nn.Module()
    model.body = nn.Linear(4, 4)
    model.head = nn.Linear(4, 2)
    assert linear_layers(model) == [model.body]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_amount(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_prune(mlp(), bad)


def test_bad_layers():
    with pytest.raises(ValueError, match="nn.Linear"):
        magnitude_prune(mlp(), 0.5, layers=[nn.ReLU()])
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(mlp(), 0.5, scope="row")


def test_removed_heads_equal_zeroed_heads():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4).eval()
    zeroed = copy.deepcopy(attn)
    with torch.no_grad():
        zeroed.c_proj.weight[:, 8:16] = 0  # head 1
        zeroed.c_proj.weight[:, 24:32] = 0  # head 3
    small = prune_heads(attn, [3, 1])
    assert small.kept == [0, 2]
    assert small.c_attn.weight.shape == (48, 32) and small.c_proj.weight.shape == (32, 16)
    x = torch.randn(3, 5, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(small(x, mask), zeroed(x, mask))
        torch.testing.assert_close(small(x), zeroed(x))
    causal = MultiHeadAttention(32, 4, causal=True).eval()
    zc = copy.deepcopy(causal)
    with torch.no_grad():
        zc.c_proj.weight[:, :8] = 0
        torch.testing.assert_close(prune_heads(causal, [0])(x, mask), zc(x, mask))


def test_removed_channels_equal_zeroed_channels():
    torch.manual_seed(0)
    ff = FeedForward(16, 64)
    zeroed = copy.deepcopy(ff)
    drop = [0, 5, 63, 17]
    with torch.no_grad():
        zeroed.c_proj.weight[:, drop] = 0
    prune_mlp_channels(ff, drop)
    assert ff.c_fc.weight.shape == (60, 16) and ff.c_proj.weight.shape == (16, 60)
    x = torch.randn(4, 16)
    torch.testing.assert_close(ff(x), zeroed(x))


def test_scores_by_hand():
    torch.manual_seed(0)
    attn = MultiHeadAttention(12, 3)
    w_v = attn.c_attn.weight[24:]
    expected = torch.stack([w_v[4 * h:4 * h + 4].norm() * attn.c_proj.weight[:, 4 * h:4 * h + 4]
                            .norm() for h in range(3)])
    torch.testing.assert_close(head_scores(attn), expected)
    ff = FeedForward(6, 10)
    expected = torch.stack([ff.c_fc.weight[j].norm() * ff.c_proj.weight[:, j].norm()
                            for j in range(10)])
    torch.testing.assert_close(mlp_channel_scores(ff), expected)


def test_prune_structured_encoder_equals_zeroed():
    torch.manual_seed(0)
    cfg = TransformerEncoderConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
    enc = TransformerEncoder(cfg).eval()
    zeroed = copy.deepcopy(enc)
    removed = prune_structured(enc.blocks, 0.5, 0.25)
    assert [len(h) for h in removed["heads"]] == [2, 2]
    assert [len(c) for c in removed["channels"]] == [32, 32]
    with torch.no_grad():
        for block, heads, chans in zip(zeroed.blocks, removed["heads"], removed["channels"],
                                       strict=True):
            for h in heads:
                block.attn.c_proj.weight[:, 8 * h:8 * h + 8] = 0
            block.mlp.c_proj.weight[:, chans] = 0
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(enc(idx), zeroed(idx), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in enc.parameters()) < sum(p.numel() for p in zeroed.parameters())


def test_structured_errors():
    attn = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="at least one must stay"):
        prune_heads(attn, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        prune_heads(attn, [1, 1])
    with pytest.raises(ValueError, match="distinct"):
        prune_heads(attn, [4])
    with pytest.raises(ValueError, match="grouped-query"):
        prune_heads(MultiHeadAttention(16, 4, n_kv_head=2), [0])
    with pytest.raises(ValueError, match="at least one must stay"):
        prune_mlp_channels(FeedForward(4, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="FeedForward"):
        prune_mlp_channels(nn.Linear(3, 3), [0])
