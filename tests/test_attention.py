"""Parity and property tests for dlbook.nn.attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlbook.nn.attention import (
    MultiHeadAttention,
    RotaryEmbedding,
    apply_rope,
    bool_to_additive,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    sinusoidal_positions,
)

ATOL = 1e-5


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 3),
    h=st.integers(1, 4),
    t_q=st.integers(1, 9),
    t_k=st.integers(1, 9),
    d=st.integers(1, 16),
    causal=st.booleans(),
)
def test_reference_matches_torch_sdpa(seed, b, h, t_q, t_k, d, causal):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g) for t in (t_q, t_k, t_k))
    if causal and t_k < t_q:  # the first rows would see no key at all
        t_k = t_q
        k, v = torch.randn(b, h, t_k, d, generator=g), torch.randn(b, h, t_k, d, generator=g)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=causal)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(w.sum(-1), torch.ones(b, h, t_q))


def test_reference_by_hand_for_one_query():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[10.0], [20.0]])
    out, w = scaled_dot_product_attention(q, k, v)
    a = math.exp(1 / math.sqrt(2))
    w0 = a / (a + 1.0)
    assert w[0, 0].item() == pytest.approx(w0, rel=1e-6)
    assert out.item() == pytest.approx(10 * w0 + 20 * (1 - w0), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boolean_and_additive_masks_agree_and_zero_masked(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    lengths = torch.tensor([6, 3])
    keep = padding_mask(lengths, 6)[:, None, None, :]  # (B, 1, 1, T)
    out_b, w_b = scaled_dot_product_attention(q, k, v, keep)
    out_a, w_a = scaled_dot_product_attention(q, k, v, bool_to_additive(keep))
    torch.testing.assert_close(out_b, out_a)
    assert torch.all(w_b[1, :, :, 3:] == 0)
    torch.testing.assert_close(out_b, F.scaled_dot_product_attention(q, k, v, attn_mask=keep))


def test_causal_mask_shape_and_content():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert torch.equal(m, expected)


def test_padding_mask_rejects_bad_lengths():
    with pytest.raises(ValueError):
        padding_mask(torch.tensor([0, 2]), 4)
    with pytest.raises(ValueError):
        padding_mask(torch.tensor([5]), 4)


def _copy_into_torch_mha(m: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(m.n_embd, m.n_head, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(m.c_attn.weight)
        ref.in_proj_bias.copy_(m.c_attn.bias)
        ref.out_proj.weight.copy_(m.c_proj.weight)
        ref.out_proj.bias.copy_(m.c_proj.bias)
    return ref


@pytest.mark.parametrize(("seed", "c", "h", "t", "causal"), [
    (0, 16, 4, 7, False), (1, 16, 4, 7, True), (2, 24, 3, 5, True), (3, 8, 1, 9, False),
])
def test_mha_matches_nn_multiheadattention_outputs_and_grads(seed, c, h, t, causal):
    torch.manual_seed(seed)
    m = MultiHeadAttention(c, h, causal=causal)
    ref = _copy_into_torch_mha(m)
    x = torch.randn(2, t, c)
    keep = padding_mask(torch.tensor([t, max(1, t - 3)]), t)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = m(x1, keep)
    y_ref, _ = ref(
        x2, x2, x2, key_padding_mask=~keep,
        attn_mask=~causal_mask(t) if causal else None, need_weights=False,
    )
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=1e-4)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(m.c_attn.weight.grad, ref.in_proj_weight.grad, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(m.c_proj.weight.grad, ref.out_proj.weight.grad, atol=ATOL, rtol=1e-4)


def test_mha_weights_match_reference_and_respect_masks():
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 2, causal=True)
    x = torch.randn(2, 6, 16)
    keep = padding_mask(torch.tensor([6, 4]), 6)
    w = m.attention_weights(x, keep)
    assert w.shape == (2, 2, 6, 6)
    assert torch.all(w.triu(1) == 0)  # no weight on the future
    assert torch.all(w[1, :, :, 4:] == 0)  # no weight on padding
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6))


@pytest.mark.parametrize("seed", [0, 1])
def test_causal_mha_future_does_not_change_past(seed):
    torch.manual_seed(seed)
    m = MultiHeadAttention(16, 4, causal=True)
    x = torch.randn(1, 8, 16)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 16)
    torch.testing.assert_close(m(x)[:, :5], m(x2)[:, :5])
    assert not torch.allclose(m(x)[:, 5:], m(x2)[:, 5:])


def test_mha_rejects_bad_shapes():
    with pytest.raises(ValueError):
        MultiHeadAttention(10, 3)
    m = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 7))
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 8), key_padding_mask=torch.ones(2, 3))


def test_sinusoidal_positions_values():
    p = sinusoidal_positions(50, 8)
    assert p.shape == (50, 8)
    pos, i = 7, 2
    assert p[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    assert p[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    with pytest.raises(ValueError):
        sinusoidal_positions(4, 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rope_is_a_rotation_with_relative_scores(seed):
    g = torch.Generator().manual_seed(seed)
    d, t = 16, 64
    rope = RotaryEmbedding(d, t)
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)
    qs, ks = rope(q.expand(t, d)), rope(k.expand(t, d))  # q and k placed at every position
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(t))  # rotations keep norms
    scores = qs @ ks.T  # scores[m, n] = <R_m q, R_n k>
    for shift in (-5, 0, 3, 17):
        diag = torch.diagonal(scores, offset=-shift)  # entries with m - n = shift
        torch.testing.assert_close(diag, diag[0].expand_as(diag), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, -3)[0])


def test_rope_matches_complex_multiplication():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g)
    rope = RotaryEmbedding(8, 5)
    angles = torch.arange(5.0)[:, None] * 10000 ** (-torch.arange(0, 8, 2) / 8)
    z = torch.view_as_complex(x.unflatten(-1, (4, 2)).contiguous()) * torch.polar(
        torch.ones_like(angles), angles
    )
    torch.testing.assert_close(rope(x), torch.view_as_real(z).flatten(-2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        rope(torch.randn(6, 8))  # longer than max_seq_len
    with pytest.raises(ValueError):
        apply_rope(torch.randn(5, 7), rope.cos, rope.sin)
