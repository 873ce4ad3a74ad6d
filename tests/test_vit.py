"""Tests of the Vision Transformer (section 6.2): patches, patch embedding, attention parity,
shapes, errors, and one training step."""

import pytest
import torch
from torch.nn import functional as F

from dlbook.nn import MODELS
from dlbook.nn.vit import (
    PatchEmbedding,
    VisionTransformer,
    ViTConfig,
    attention_rollout,
    patchify,
)


def small_config(**kw) -> ViTConfig:
    return ViTConfig(**{"image_size": 12, "patch_size": 4, "n_layer": 2, "n_head": 2,
                        "n_embd": 16, "n_classes": 3, **kw})


def test_patchify_shapes_and_content():
    x = torch.randn(2, 3, 12, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 3 * 2, 3 * 16)
    # patch (row 1, column 1) is number 1 * (8 / 4) + 1 = 3, flattened channel-major
    assert torch.equal(p[:, 3], x[:, :, 4:8, 4:8].reshape(2, -1))
    assert torch.equal(patchify(x, 1), x.flatten(2).transpose(1, 2))


def test_patch_embedding_equals_reshape_and_linear():
    torch.manual_seed(0)
    embed = PatchEmbedding(3, 10, 4)
    x = torch.randn(5, 3, 8, 12)
    w = embed.proj.weight.reshape(10, -1)
    expected = F.linear(patchify(x, 4), w, embed.proj.bias)
    out = embed(x)
    assert out.shape == (5, 6, 10)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_matches_torch_multihead_attention():
    """The attention inside the ViT equals nn.MultiheadAttention with the same weights."""
    torch.manual_seed(0)
    model = VisionTransformer(small_config()).eval()
    attn = model.blocks[0].attn
    x = torch.randn(3, 10, 16)
    ref = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.c_attn.weight)
        ref.in_proj_bias.copy_(attn.c_attn.bias)
        ref.out_proj.weight.copy_(attn.c_proj.weight)
        ref.out_proj.bias.copy_(attn.c_proj.bias)
        out_ref, w_ref = ref(x, x, x, need_weights=True, average_attn_weights=False)
        out = attn(x)
        w = attn.attention_weights(x)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)


def test_forward_shapes_and_attention_maps():
    torch.manual_seed(0)
    cfg = small_config()
    model = VisionTransformer(cfg).eval()
    x = torch.randn(4, 1, 12, 12)
    assert cfg.n_patches == 9
    assert model.tokens(x).shape == (4, 10, 16)
    assert model.hidden_states(x).shape == (4, 10, 16)
    logits = model(x)
    assert logits.shape == (4, 3)
    # the head reads the class token (position 0) of the final states
    torch.testing.assert_close(logits, model.head(model.hidden_states(x)[:, 0]))
    maps = model.attention_maps(x)
    assert maps.shape == (2, 4, 2, 10, 10)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 2, 10))
    roll = attention_rollout(maps)
    assert roll.shape == (4, 10, 10)
    torch.testing.assert_close(roll.sum(-1), torch.ones(4, 10))
    # one layer of rollout is the head-averaged map mixed half-half with the identity
    one = attention_rollout(maps[:1])
    torch.testing.assert_close(one, 0.5 * maps[0].mean(1) + 0.5 * torch.eye(10))


def test_bad_inputs():
    model = VisionTransformer(small_config())
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(2, 1, 10, 10))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(2, 3, 12, 12))
    with pytest.raises(ValueError, match="built for 12"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 1, 9, 8), 4)
    with pytest.raises(ValueError):
        patchify(torch.randn(8, 8), 4)
    with pytest.raises(ValueError, match="must divide"):
        ViTConfig(image_size=28, patch_size=5)
    with pytest.raises(ValueError):
        ViTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError):
        attention_rollout(torch.rand(2, 3, 4, 4))


def test_training_step_reduces_loss_and_registry():
    torch.manual_seed(0)
    model = VisionTransformer(small_config())
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 3, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert MODELS["VisionTransformer"] is VisionTransformer
