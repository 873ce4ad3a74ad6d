"""Tests of dlbook.probes: gradient norms and activation statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlbook.probes import activation_stats, grad_norms


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grad_norms_per_parameter_match_torch(seed: int) -> None:
    model = _model(seed)
    model(torch.randn(11, 5)).pow(2).sum().backward()
    norms = grad_norms(model)
    assert list(norms) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(torch.linalg.vector_norm(p.grad).item(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_grad_norms_per_module_combine_weight_and_bias(seed: int) -> None:
    model = _model(seed)
    model(torch.randn(4, 5)).sum().backward()
    per_module = grad_norms(model, by="module")
    assert list(per_module) == ["0", "2", "4"]
    for key in per_module:
        layer = model.get_submodule(key)
        both = torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])
        assert per_module[key] == pytest.approx(both.norm().item(), rel=1e-6)
    # total over modules equals clip_grad_norm_'s global norm
    total = sum(v**2 for v in per_module.values()) ** 0.5
    global_norm = nn.utils.clip_grad_norm_(model.parameters(), 1e9).item()
    assert total == pytest.approx(global_norm, rel=1e-5)


def test_grad_norms_skips_frozen_and_errors_without_backward() -> None:
    model = _model(0)
    with pytest.raises(ValueError, match="backward"):
        grad_norms(model)
    model[0].weight.requires_grad_(False)
    model(torch.randn(3, 5)).sum().backward()
    assert "0.weight" not in grad_norms(model) and "0.bias" in grad_norms(model)
    with pytest.raises(ValueError, match="by must be"):
        grad_norms(model, by="layer")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_activation_stats_match_manual_forward(seed: int) -> None:
    model = _model(seed)
    x = torch.randn(9, 5)
    stats = activation_stats(model, x)
    assert list(stats) == ["0", "2", "4"]
    h = x
    with torch.no_grad():
        for i, layer in enumerate(model):
            h = layer(h)
            if str(i) in stats:
                s = stats[str(i)]
                assert s["mean"] == pytest.approx(h.mean().item(), abs=1e-6)
                assert s["std"] == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
                assert s["rms"] == pytest.approx(h.pow(2).mean().sqrt().item(), rel=1e-5)
    both = activation_stats(model, x, [nn.ReLU, nn.Tanh])
    assert list(both) == ["1", "3"] and both["1"]["mean"] >= 0


def test_activation_stats_removes_hooks_even_on_error() -> None:
    model = _model(0)
    activation_stats(model, torch.randn(2, 5))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        activation_stats(model, torch.randn(2, 4))  # wrong input width
    assert all(not m._forward_hooks for m in model.modules())


def test_activation_stats_errors_and_grad_mode() -> None:
    model = _model(0)
    with pytest.raises(ValueError, match="no module of type"):
        activation_stats(model, torch.randn(2, 5), nn.Conv1d)
    with pytest.raises(ValueError, match="layer_types"):
        activation_stats(model, torch.randn(2, 5), [])
    with pytest.raises(ValueError, match="layer_types"):
        activation_stats(model, torch.randn(2, 5), [int])  # type: ignore[list-item]
    # a module called twice is reported for its first call
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    x = torch.randn(6, 4)
    stats = activation_stats(twice, x)
    assert list(stats) == ["0"]
    assert stats["0"]["mean"] == pytest.approx(shared(x).mean().item(), abs=1e-6)
