"""Triton kernels (section 6.7) against PyTorch; on a CPU they run in Triton's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

# Import dlbook.kernels, not triton: it sets TRITON_INTERPRET=1 on a CPU-only machine.
kernels = pytest.importorskip("dlbook.kernels")
INTERPRETED, flash_attention = kernels.INTERPRETED, kernels.flash_attention
layer_norm, softmax = kernels.layer_norm, kernels.softmax


def test_interpreter_is_chosen_without_cuda():
    assert INTERPRETED or torch.cuda.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is chosen without CUDA")
def test_kernels_work_when_triton_was_imported_first():
    """torch.compile imports triton to check for it; the kernels must still run afterwards."""
    code = (
        "import torch, triton, triton.language\n"
        "from dlbook.kernels import softmax, layer_norm\n"
        "x = torch.randn(3, 50)\n"
        "assert torch.allclose(softmax(x), x.softmax(-1), atol=1e-6)\n"
        "w = torch.ones(50, requires_grad=True)\n"
        "layer_norm(x, w, torch.zeros(50)).square().sum().backward()\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("shape", [(5, 1), (7, 100), (3, 4, 128), (2, 257)])
def test_softmax_matches_torch(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 30  # large logits
    y = softmax(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, torch.softmax(x, -1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y.sum(-1), torch.ones(shape[:-1]))


def test_softmax_is_stable_where_the_naive_formula_overflows():
    x = torch.tensor([[1000.0, 999.0, -1000.0]])
    assert torch.isnan(x.exp() / x.exp().sum()).any()  # the naive formula: inf / inf
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1))


@pytest.mark.parametrize("shape", [(6, 48), (2, 33, 100)])
def test_layer_norm_forward_and_gradients_match_torch(shape):
    gen = torch.Generator().manual_seed(1)
    n = shape[-1]
    x = torch.randn(shape, generator=gen).mul(3).add(2).requires_grad_()
    w = torch.randn(n, generator=gen).requires_grad_()
    b = torch.randn(n, generator=gen).requires_grad_()
    dy = torch.randn(shape, generator=gen)
    ours = layer_norm(x, w, b, eps=1e-5)
    ref = F.layer_norm(x, (n,), w, b, eps=1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(ours, (x, w, b), dy)
    ref_grads = torch.autograd.grad(ref, (x, w, b), dy)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_layer_norm_backward_through_a_loss():
    x = torch.randn(40, 24, dtype=torch.float32, requires_grad=True)  # 40 rows: several programs
    w = torch.ones(24, requires_grad=True)
    b = torch.zeros(24, requires_grad=True)
    layer_norm(x, w, b).pow(2).mean().backward()
    x2 = x.detach().clone().requires_grad_()
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    F.layer_norm(x2, (24,), w2, b2).pow(2).mean().backward()
    for ours, ref in ((x, x2), (w, w2), (b, b2)):
        torch.testing.assert_close(ours.grad, ref.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [16, 77])
def test_flash_attention_matches_sdpa(causal, T):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, T, 16, generator=gen) for _ in range(3))
    out, lse = flash_attention(q, k, v, causal=causal, block_m=16, block_n=32, return_lse=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    scores = q @ k.transpose(-2, -1) / 4.0
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 100, generator=gen).to(dtype)
    y = softmax(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), torch.softmax(x.float(), -1), atol=2e-3, rtol=1e-2)
    w, b = torch.randn(100, generator=gen).to(dtype), torch.randn(100, generator=gen).to(dtype)
    ref = F.layer_norm(x.float(), (100,), w.float(), b.float())
    torch.testing.assert_close(layer_norm(x, w, b).float(), ref, atol=5e-2, rtol=2e-2)
    q, k, v = (torch.randn(1, 2, 50, 16, generator=gen).to(dtype) for _ in range(3))
    out = flash_attention(q, k, v, causal=True, block_m=16, block_n=16)
    assert out.dtype == dtype
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=2e-2)


def test_causal_output_ignores_future_keys():
    q, k, v = (torch.randn(1, 1, 32, 16) for _ in range(3))
    k2, v2 = k.clone(), v.clone()
    k2[..., -1, :] += 5.0
    v2[..., -1, :] += 5.0
    a = flash_attention(q, k, v, causal=True, block_m=16, block_n=16)
    b = flash_attention(q, k2, v2, causal=True, block_m=16, block_n=16)
    assert torch.equal(a[..., :-1, :], b[..., :-1, :])
    assert not torch.equal(a[..., -1, :], b[..., -1, :])


def test_bad_inputs_raise_value_errors():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="contiguous"):
        softmax(x.t())
    with pytest.raises(ValueError, match="float32"):
        softmax(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="torch.Tensor"):
        softmax([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        layer_norm(x, torch.ones(5), torch.zeros(6))
    with pytest.raises(ValueError, match="eps"):
        layer_norm(x, torch.ones(6), torch.zeros(6), eps=0.0)
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="4 dimensions"):
        flash_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="power of two"):
        r = torch.randn(1, 1, 8, 24)
        flash_attention(r, r, r)
    with pytest.raises(ValueError, match="one shape"):
        flash_attention(q, torch.randn(1, 1, 9, 16), q)
    with pytest.raises(ValueError, match="block_n"):
        flash_attention(q, q, q, block_n=24)


def test_rows_wider_than_one_block_raise():
    """Softmax and layer norm hold a row in one block: at most 65536 bytes of it."""
    widest = 65536 // 4  # float32
    x = torch.randn(1, widest)
    torch.testing.assert_close(softmax(x), x.softmax(-1), atol=1e-6, rtol=1e-5)
    wide = torch.randn(1, widest + 1)
    with pytest.raises(ValueError, match="too wide"):
        softmax(wide)
    with pytest.raises(ValueError, match="too wide"):
        layer_norm(wide, torch.ones(widest + 1), torch.zeros(widest + 1))
    half = wide.half()  # two bytes per element: the same width fits
    assert softmax(half).shape == half.shape
    with pytest.raises(ValueError, match="too wide"):
        softmax(torch.randn(1, 2 * widest + 1).half())


def test_inputs_on_different_devices_raise():
    x = torch.randn(4, 16)
    meta = torch.empty(16, device="meta")
    with pytest.raises(ValueError, match="one device"):
        layer_norm(x, meta, torch.zeros(16))
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="one device"):
        flash_attention(q, q, torch.empty(1, 1, 8, 16, device="meta"))


def test_cpu_tensors_raise_when_the_kernels_are_compiled(monkeypatch):
    """With CUDA and no interpreter, CPU inputs get a clear message, not a Triton error."""
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="CUDA tensors"):
        softmax(x)
    with pytest.raises(ValueError, match="CUDA tensors"):
        layer_norm(x, torch.ones(16), torch.zeros(16))
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="CUDA tensors"):
        flash_attention(q, q, q)
