"""Grouped-query attention (section 5.2) and the Llama options of GPTConfig."""

from __future__ import annotations

import pytest
import torch

from dlbook.checkpoint import load_model, save_model
from dlbook.nn import GPT, MODELS, GPTConfig, MultiHeadAttention, RotaryEmbedding
from dlbook.nn.attention import KVCache, padding_mask, scaled_dot_product_attention
from dlbook.nn.transformer import RMSNorm


def gqa(seed: int, c: int = 24, h: int = 6, h_kv: int = 2, causal: bool = True, bias=True):
    torch.manual_seed(seed)
    return MultiHeadAttention(c, h, n_kv_head=h_kv, causal=causal, bias=bias).eval()


def reference_gqa(m: MultiHeadAttention, x, rope=None, mask=None):
    """GQA written out another way: separate Q/K/V matmuls, K and V repeated per group, the
    library's reference (non-fused) attention."""
    b, t, c = x.shape
    h, h_kv, d = m.n_head, m.n_kv_head, m.head_dim
    w, bias = m.c_attn.weight, m.c_attn.bias
    wq, wk, wv = w[:c], w[c : c + h_kv * d], w[c + h_kv * d :]
    bq, bk, bv = (None, None, None) if bias is None else (
        bias[:c], bias[c : c + h_kv * d], bias[c + h_kv * d :]
    )
    q = torch.nn.functional.linear(x, wq, bq).view(b, t, h, d).transpose(1, 2)
    k = torch.nn.functional.linear(x, wk, bk).view(b, t, h_kv, d).transpose(1, 2)
    v = torch.nn.functional.linear(x, wv, bv).view(b, t, h_kv, d).transpose(1, 2)
    if rope is not None:
        q, k = rope(q), rope(k)
    k, v = (z.repeat_interleave(h // h_kv, dim=1) for z in (k, v))
    y, _ = scaled_dot_product_attention(q, k, v, mask, is_causal=m.causal)
    return m.c_proj(y.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("h_kv", [1, 2, 3, 6])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("use_rope", [False, True])
def test_gqa_matches_reference_with_repeated_kv(h_kv, causal, use_rope):
    m = gqa(h_kv, h_kv=h_kv, causal=causal)
    assert m.c_attn.weight.shape == (24 + 2 * h_kv * 4, 24)
    x = torch.randn(2, 7, 24, generator=torch.Generator().manual_seed(h_kv))
    rope = RotaryEmbedding(4, 16, base=100000.0) if use_rope else None
    with torch.no_grad():
        ours = m(x, rope=rope)
        ref = reference_gqa(m, x, rope)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_gqa_matches_torch_sdpa_enable_gqa_with_padding():
    m = gqa(3, causal=False)
    x = torch.randn(3, 5, 24)
    kpm = padding_mask(torch.tensor([5, 3, 1]), 5)
    with torch.no_grad():
        ours = m(x, key_padding_mask=kpm)
        q, k, v = m._heads(x, None)
        y = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=kpm[:, None, None, :], enable_gqa=True
        )
        ref = m.c_proj(y.transpose(1, 2).reshape(x.shape))
        ref2 = reference_gqa(m, x, mask=kpm[:, None, None, :])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours, ref2, atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_kv_weights_repeated_per_group():
    """A GQA layer is an MHA layer whose key/value weights are shared within each group."""
    g = gqa(4, h=6, h_kv=2)
    torch.manual_seed(0)
    m = MultiHeadAttention(24, 6, causal=True).eval()
    c, d, groups = 24, 4, 3
    w, b = g.c_attn.weight.detach(), g.c_attn.bias.detach()
    wk, wv = w[c : c + 8].view(2, d, c), w[c + 8 :].view(2, d, c)
    bk, bv = b[c : c + 8].view(2, d), b[c + 8 :].view(2, d)
    with torch.no_grad():
        m.c_attn.weight.copy_(torch.cat([
            w[:c], wk.repeat_interleave(groups, 0).reshape(-1, c),
            wv.repeat_interleave(groups, 0).reshape(-1, c)]))
        m.c_attn.bias.copy_(torch.cat([
            b[:c], bk.repeat_interleave(groups, 0).reshape(-1),
            bv.repeat_interleave(groups, 0).reshape(-1)]))
        m.c_proj.load_state_dict(g.c_proj.state_dict())
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        torch.testing.assert_close(g(x), m(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            g.attention_weights(x), m.attention_weights(x), atol=1e-6, rtol=1e-6
        )


def test_n_kv_head_equal_n_head_is_plain_mha_exactly():
    torch.manual_seed(0)
    old = MultiHeadAttention(24, 6, causal=True).eval()
    new = MultiHeadAttention(24, 6, n_kv_head=6, causal=True).eval()
    new.load_state_dict(old.state_dict())  # same parameter names and shapes: old checkpoints load
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        assert torch.equal(old(x), new(x))
    cfg = dict(vocab_size=31, block_size=16, n_layer=2, n_head=4, n_embd=32)
    torch.manual_seed(1)
    a = GPT(GPTConfig(**cfg)).eval()
    torch.manual_seed(1)
    b = GPT(GPTConfig(**cfg, n_kv_head=4)).eval()
    idx = torch.randint(0, 31, (2, 16))
    with torch.no_grad():
        assert torch.equal(a(idx)[0], b(idx)[0])


def llama_like(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=37, block_size=20, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, bias=False,
        rope=True, norm="rms", mlp="swiglu", rope_base=100000.0, norm_eps=1e-5, mlp_hidden=40,
    )
    fields.update(kw)
    return GPT(GPTConfig(**fields)).eval()


@pytest.mark.parametrize("h_kv", [1, 2, 3])
def test_gqa_cached_logits_equal_uncached(h_kv):
    model = llama_like(h_kv, n_kv_head=h_kv)
    seq = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(h_kv))
    with torch.no_grad():
        full, _ = model(seq)
        cache = model.new_cache()
        parts = [model(seq[:, :6], cache=cache)[0]]
        parts += [model(seq[:, i : i + 1], cache=cache)[0] for i in range(6, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.layers[0].k.shape == (2, h_kv, 20, 8)  # the cache holds only the kv heads


def test_kv_cache_memory_scales_with_kv_heads():
    sizes = {}
    for h_kv in (6, 2, 1):
        model = llama_like(n_kv_head=h_kv)
        cache = model.new_cache(max_len=12)
        with torch.no_grad():
            model(torch.zeros(3, 5, dtype=torch.long), cache=cache)
        sizes[h_kv] = cache.nbytes()
        assert sizes[h_kv] == 2 * 2 * 3 * h_kv * 12 * 8 * 4  # 2 (k, v) * L * B * H_kv * T * D * 4
    assert sizes[6] == 3 * sizes[2] == 6 * sizes[1]


def test_llama_options_reach_the_modules():
    model = llama_like()
    block = model.blocks[0]
    assert isinstance(block.norm1, RMSNorm) and block.norm1.eps == 1e-5
    assert model.ln_f.eps == 1e-5
    assert model.rope.base == 100000.0 and model.wpe is None
    assert block.mlp.gate.weight.shape == (40, 48) and block.mlp.gate.bias is None
    assert block.attn.c_attn.weight.shape == (48 + 2 * 2 * 8, 48)
    assert model.lm_head.weight is model.wte.weight
    defaults = GPT(GPTConfig(rope=True, norm="rms"))
    assert defaults.rope.base == 10000.0 and defaults.ln_f.eps == 1e-6  # unchanged defaults


def test_gqa_gpt_save_load_round_trip(tmp_path):
    model = llama_like()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", MODELS).eval()
    assert loaded.config == model.config
    idx = torch.randint(0, 37, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_padding_mask_with_cache_is_an_error():
    m = gqa(0)
    x = torch.randn(1, 3, 24)
    cache = KVCache(1, 8)
    with pytest.raises(ValueError, match="key_padding_mask is not supported with a key/value"):
        m(x, key_padding_mask=torch.ones(1, 3, dtype=torch.bool), kv=cache.layers[0])
    assert cache.length == 0  # nothing was appended


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_kv_head": 4}, "must divide n_head"),
        ({"n_kv_head": -1}, "n_kv_head must be an integer >= 0"),
        ({"mlp_hidden": 2.5}, "mlp_hidden must be an integer"),
        ({"norm_eps": -1e-5}, "norm_eps must be a finite number in \\[0, 1\\)"),
        ({"rope_base": 0.5}, "rope_base must be"),
    ],
)
def test_bad_llama_options(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(n_head=6, n_embd=48, **kw)
    with pytest.raises(ValueError, match="positive divisor of n_head"):
        MultiHeadAttention(24, 6, n_kv_head=4)
    with pytest.raises(ValueError, match="max_len must lie in"):
        llama_like().new_cache(max_len=21)
