"""LoRA (dlbook.lora): parity with peft, initial identity, merge, dropout, adapter files."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open
from torch import nn

from dlbook.lora import (
    AdapterError,
    LoRALinear,
    adapter_metadata,
    apply_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    model_fingerprint,
    remove_lora,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
)
from dlbook.nn import GPT, GPTConfig

peft = pytest.importorskip("peft")


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def peft_pair(model: nn.Module, target: list[str], r: int, alpha: float, dropout: float = 0.0):
    """The same base wrapped by peft and by dlbook, with identical, non-zero A and B."""
    ours = copy.deepcopy(model)
    ref = peft.get_peft_model(
        copy.deepcopy(model),
        peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target),
    )
    names = apply_lora(ours, target, r=r, alpha=alpha, dropout=dropout)
    torch.manual_seed(1)
    for name, layer in lora_layers(ours).items():
        theirs = ref.base_model.model.get_submodule(name)
        with torch.no_grad():
            theirs.lora_B["default"].weight.normal_(0, 0.1)  # B != 0: a meaningful comparison
            layer.lora_A.weight.copy_(theirs.lora_A["default"].weight)
            layer.lora_B.weight.copy_(theirs.lora_B["default"].weight)
    return ours, ref, names


def grads_by_name(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            key = name.removeprefix(prefix).replace(".default", "").replace(".base_layer", "")
            out[key] = p.grad
    return out


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_matches_peft_on_small_module(dropout: float) -> None:
    torch.manual_seed(0)
    ours, ref, names = peft_pair(TwoLayer(), ["fc1", "fc2"], r=4, alpha=8, dropout=dropout)
    assert names == ["fc1", "fc2"]
    x = torch.randn(7, 12)
    ours.train()
    ref.train()
    torch.manual_seed(5)
    y_ours = ours(x)
    torch.manual_seed(5)  # the same dropout masks in both (one dropout call per layer, in order)
    y_ref = ref(x)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-6, atol=1e-6)
    (y_ours.square().sum()).backward()
    (y_ref.square().sum()).backward()
    g_ours, g_ref = grads_by_name(ours), grads_by_name(ref, "base_model.model.")
    assert set(g_ours) == set(g_ref) == {f"{n}.lora_{m}.weight" for n in names for m in "AB"}
    for k in g_ours:
        assert g_ours[k].abs().sum() > 0
        torch.testing.assert_close(g_ours[k], g_ref[k], rtol=1e-5, atol=1e-6)


def test_matches_peft_on_library_gpt() -> None:
    target = ["c_attn", "attn.c_proj"]
    ours, ref, names = peft_pair(tiny_gpt(), target, r=2, alpha=6)
    assert names == [f"blocks.{i}.attn.{m}" for i in range(2) for m in ("c_attn", "c_proj")]
    idx = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(0))
    logits, loss = ours(idx, targets=idx)
    logits_ref, loss_ref = ref(idx, targets=idx)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    loss_ref.backward()
    g_ours, g_ref = grads_by_name(ours), grads_by_name(ref, "base_model.model.")
    assert len(g_ours) == 2 * len(names) and set(g_ours) == set(g_ref)
    for k in g_ours:
        torch.testing.assert_close(g_ours[k], g_ref[k], rtol=1e-4, atol=1e-7)
    # both freeze the base: the same parameters are trainable
    assert trainable_parameters(ours)[0] == sum(
        p.numel() for p in ref.parameters() if p.requires_grad
    )


def test_zero_b_is_the_base_model_and_init_like_peft() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 40, (2, 16))
    before = model(idx)[0]
    apply_lora(model, "c_attn", r=4, alpha=8)
    assert torch.equal(model(idx)[0], before)
    layer = model.blocks[0].attn.c_attn
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert torch.count_nonzero(layer.lora_A.weight) == layer.lora_A.weight.numel()
    # Kaiming-uniform with a = sqrt(5) on fan_in = 16: U(-1/sqrt(16), 1/sqrt(16))
    assert layer.lora_A.weight.abs().max() <= 0.25
    assert layer.lora_A.weight.abs().max() > 0.2


def test_base_frozen_and_parameter_count() -> None:
    model = tiny_gpt()
    total_before = trainable_parameters(model)[1]
    names = apply_lora(model, "c_attn", r=4)
    trainable, total = trainable_parameters(model)
    assert trainable == len(names) * 4 * (16 + 48)
    assert total == total_before + trainable
    assert all(
        not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n
    )
    assert all(p.requires_grad for p in lora_state_dict(model).values())
    keep = tiny_gpt()
    apply_lora(keep, "c_attn", r=4, freeze_base=False)
    assert not keep.blocks[0].attn.c_attn.base.weight.requires_grad  # the wrapped layer is frozen
    assert keep.blocks[0].attn.c_proj.weight.requires_grad  # the rest is not


def test_merge_and_unmerge_are_exact() -> None:
    model = tiny_gpt()
    apply_lora(model, ["c_attn", "c_fc"], r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.2)
    w0 = model.blocks[1].mlp.c_fc.base.weight.clone()
    idx = torch.randint(0, 40, (2, 16))
    unmerged = model(idx)[0]
    assert merge_lora(model) == 4
    assert not torch.allclose(model.blocks[1].mlp.c_fc.base.weight, w0)
    torch.testing.assert_close(model(idx)[0], unmerged, rtol=1e-5, atol=1e-5)
    # merged: the forward no longer runs the low-rank path
    layer = model.blocks[0].attn.c_attn
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), layer.base(x))
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    unmerge_lora(model)
    torch.testing.assert_close(model.blocks[1].mlp.c_fc.base.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(idx)[0], unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


class FakeQuantLinear(nn.Module):
    """A linear-like module that is not nn.Linear (int8 weight + scale)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        scale = w.abs().max() / 127
        self.register_buffer("q", torch.round(w / scale).to(torch.int8))
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.q.float() * self.scale).T


def test_wraps_non_linear_base_but_refuses_to_merge() -> None:
    base = FakeQuantLinear(torch.randn(6, 10))
    layer = LoRALinear(base, r=2, alpha=4)
    assert layer.lora_A.weight.dtype == torch.float32
    x = torch.randn(4, 10)
    assert torch.equal(layer(x), base(x))
    with torch.no_grad():
        layer.lora_B.weight.fill_(0.5)
    expected = base(x) + 2.0 * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(TypeError, match="nn.Linear base"):
        layer.merge()


def test_dropout_on_lora_input_only() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 8), r=4, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(64, 32)
    lora_eval = layer.eval()(x) - layer.base(x)
    torch.testing.assert_close(lora_eval, layer.lora_B(layer.lora_A(x)))
    layer.train()
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    mask_x = nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(out, layer.base(x) + layer.lora_B(layer.lora_A(mask_x)))
    assert not torch.allclose(out, layer.eval()(x))  # train differs from eval
    # the frozen path saw the undropped input: out - (low-rank path on dropped x) == base(x)
    torch.testing.assert_close(out - layer.lora_B(layer.lora_A(mask_x)), layer.base(x))


def test_adapter_round_trip(tmp_path) -> None:
    model = tiny_gpt()
    apply_lora(model, "c_attn", r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_()
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(lora_state_dict(model))  # only the LoRA tensors
    meta = adapter_metadata(path)
    assert meta["r"] == 4 and meta["alpha"] == 8.0
    assert meta["targets"] == ["blocks.0.attn.c_attn", "blocks.1.attn.c_attn"]
    fresh = tiny_gpt()
    assert model_fingerprint(fresh) == meta["fingerprint"]  # same before and after apply_lora
    apply_lora(fresh, "c_attn", r=4, alpha=8)
    idx = torch.randint(0, 40, (2, 16))
    assert not torch.allclose(fresh(idx)[0], model(idx)[0])
    load_adapter(fresh, path)
    assert torch.equal(fresh(idx)[0], model(idx)[0])


def _refused(model: nn.Module, path, match: str) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterError, match=match):
        load_adapter(model, path)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was loaded


def test_adapter_errors(tmp_path) -> None:
    model = tiny_gpt()
    apply_lora(model, "c_attn", r=4, alpha=8)
    path = save_adapter(model, tmp_path / "a.safetensors")

    other_model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32))
    apply_lora(other_model, "c_attn", r=4, alpha=8)
    _refused(other_model, path, "another base model")

    other_rank = tiny_gpt()
    apply_lora(other_rank, "c_attn", r=2, alpha=8)
    _refused(other_rank, path, "rank 4")

    other_alpha = tiny_gpt()
    apply_lora(other_alpha, "c_attn", r=4, alpha=4)
    _refused(other_alpha, path, "alpha")

    other_targets = tiny_gpt()
    apply_lora(other_targets, ["c_attn", "c_fc"], r=4, alpha=8)
    _refused(other_targets, path, "other layers")

    _refused(tiny_gpt(), path, "apply_lora")  # no LoRA layers yet

    merged = tiny_gpt()
    apply_lora(merged, "c_attn", r=4, alpha=8)
    merge_lora(merged)
    _refused(merged, path, "merged")

    with pytest.raises(AdapterError, match="no adapter file"):
        load_adapter(model, tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="not a readable"):
        load_adapter(model, garbage)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(tiny_gpt(), tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()


def test_apply_lora_errors() -> None:
    with pytest.raises(ValueError, match="matches no linear layer.*c_attn"):
        apply_lora(tiny_gpt(), "q_proj")
    with pytest.raises(ValueError, match="non-empty"):
        apply_lora(tiny_gpt(), [])
    with pytest.raises(ValueError, match="regular expression"):
        apply_lora(tiny_gpt(), "(")
    model = tiny_gpt()
    apply_lora(model, "c_attn")
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, "c_fc")
    with pytest.raises(ValueError, match="rank r"):
        LoRALinear(nn.Linear(3, 3), r=0)
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(nn.Linear(3, 3), r=1, alpha=float("nan"))
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(nn.Linear(3, 3), r=1, dropout=1.0)
    with pytest.raises(TypeError, match="not linear-like"):
        LoRALinear(nn.GELU(), r=1)


def test_regex_targets() -> None:
    names = apply_lora(tiny_gpt(), r"blocks\.1\..*", r=2)
    assert names == ["blocks.1.attn.c_attn", "blocks.1.attn.c_proj", "blocks.1.mlp.c_fc",
                     "blocks.1.mlp.c_proj"]


def test_remove_lora_restores_or_merges() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 40, (2, 16))
    base_out = model(idx)[0]
    apply_lora(model, "c_fc", r=2)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_()
    adapted = model(idx)[0]
    merged = copy.deepcopy(model)
    assert remove_lora(model) == ["blocks.0.mlp.c_fc", "blocks.1.mlp.c_fc"]
    assert not lora_layers(model) and isinstance(model.blocks[0].mlp.c_fc, nn.Linear)
    assert torch.equal(model(idx)[0], base_out)
    remove_lora(merged, merge=True)
    assert not lora_layers(merged)
    torch.testing.assert_close(merged(idx)[0], adapted, rtol=1e-5, atol=1e-5)
