"""Tests for dlbook.quant: absmax int8, the NF4 code book, 4-bit packing, block-wise NF4 with
double quantisation, the quantised linear layers and quantize_model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dlbook.quant import (
    DoubleQuantized,
    Int8Linear,
    NF4Linear,
    absmax_dequantize,
    absmax_quantize,
    nf4_code,
    pack_4bit,
    quantize_model,
    quantize_nf4,
    unpack_4bit,
    weight_nbytes,
)

# The 16 NF4 values as published in the QLoRA paper (Dettmers et al. 2023, appendix E) and
# hard-coded in bitsandbytes' 4-bit kernels: the reference the library's derivation must meet.
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


def test_nf4_code_matches_published_table():
    code = nf4_code()
    assert code.shape == (16,) and code.dtype == torch.float32
    torch.testing.assert_close(code, torch.tensor(NF4_PUBLISHED), atol=1e-7, rtol=0)
    # The construction's properties: sorted, ends at ±1, an exact zero, 8 positive / 7 negative.
    assert torch.all(code[1:] > code[:-1])
    assert code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7


@given(st.integers(0, 200).map(lambda n: 2 * n), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(n, seed):
    codes = torch.randint(0, 16, (n,), generator=torch.Generator().manual_seed(seed))
    codes = codes.to(torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (n // 2,)
    assert torch.equal(unpack_4bit(packed), codes)


def test_pack_puts_first_code_in_high_nibble():
    assert pack_4bit(torch.tensor([0xA, 0x3], dtype=torch.uint8)).item() == 0xA3


def test_nf4_each_value_is_nearest_code_times_absmax():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 128, generator=g) * 0.05
    w[3, 7] = 0.9  # an outlier: its block's other values get coarser levels, still the nearest
    t = quantize_nf4(w, double_quant=False)
    deq = t.dequantize()
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    torch.testing.assert_close(t.absmax, absmax.squeeze(1), atol=0, rtol=0)
    code = nf4_code()
    nearest = code[(blocks / absmax).unsqueeze(-1).sub(code).abs().argmin(-1)] * absmax
    torch.testing.assert_close(deq.reshape(-1, 64), nearest, atol=1e-7, rtol=0)
    # Hence the error bound: half the widest gap between levels, times the block's absmax.
    half_gap = (code[1:] - code[:-1]).max() / 2
    assert torch.all((deq - w).reshape(-1, 64).abs() <= half_gap * absmax + 1e-7)
    # The largest magnitude of each block is exact (it maps to ±1).
    i = blocks.abs().argmax(1)
    rows = torch.arange(len(i))
    torch.testing.assert_close(deq.reshape(-1, 64)[rows, i], blocks[rows, i])


def test_nf4_zero_block_and_dtype_preserved():
    w = torch.zeros(2, 64, dtype=torch.bfloat16)
    w[1] = torch.linspace(-1, 1, 64)
    t = quantize_nf4(w)
    deq = t.dequantize()
    assert deq.dtype == torch.bfloat16 and deq.shape == (2, 64)
    assert torch.equal(deq[0], torch.zeros(64, dtype=torch.bfloat16))


def test_double_quant_memory_arithmetic_from_stored_tensors():
    w = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(1))
    plain, double = quantize_nf4(w, double_quant=False), quantize_nf4(w, double_quant=True)
    n = w.numel()
    assert plain.bits_per_param() == pytest.approx(4 + 32 / 64)
    # 4-bit codes + 8-bit constants + one float32 scale per 256 constants + one float32 offset.
    assert double.bits_per_param() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / n)
    assert round(double.bits_per_param(), 3) == 4.127
    assert isinstance(double.absmax, DoubleQuantized)
    assert double.absmax.q.dtype == torch.int8 and double.absmax.scale.numel() == n // 64 // 256


def test_double_quant_constants_error_bound():
    g = torch.Generator().manual_seed(2)
    c = torch.rand(1000, generator=g) + 0.5  # positive, like absmax constants; last block short
    dq = DoubleQuantized.quantize(c, block_size=256)
    assert dq.scale.numel() == math.ceil(1000 / 256)
    centred = (c - c.mean()).reshape(-1)
    scale = dq.scale.repeat_interleave(256)[:1000]
    assert torch.all((dq.dequantize() - c).abs() <= scale / 254 + 1e-6)
    assert torch.all(scale >= 0) and (centred.abs() <= scale + 1e-6).all()


@pytest.mark.parametrize("dim", [None, 1])
def test_int8_error_bound(dim):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 64).unsqueeze(1)
    q, absmax = absmax_quantize(x, dim=dim)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    err = (absmax_dequantize(q, absmax) - x).abs()
    assert torch.all(err <= absmax / 254 + 1e-6 * absmax)
    if dim == 1:  # per-row scales: small rows are not drowned by the large ones
        per_tensor_err = (absmax_dequantize(*absmax_quantize(x)) - x).abs()
        assert err[:8].max() < per_tensor_err[:8].max() / 100


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", [Int8Linear, NF4Linear])
def test_quantized_linear_equals_dequantize_then_linear(cls, bias):
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=bias)
    q = cls(lin)
    assert (q.in_features, q.out_features) == (128, 64)
    assert not list(q.parameters())  # frozen: nothing for an optimiser
    x = torch.randn(3, 5, 128)
    expected = F.linear(x, q.dequantized_weight(), lin.bias)
    torch.testing.assert_close(q(x), expected, atol=0, rtol=0)
    # ...and close to the float layer it replaces
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < (0.02 if cls is Int8Linear else 0.15)
    assert 0 < q.nbytes() < lin.weight.numel() * 4 / (3.5 if cls is Int8Linear else 7)


def test_nf4_linear_state_dict_round_trip():
    torch.manual_seed(0)
    a = NF4Linear(nn.Linear(64, 64))
    b = NF4Linear(nn.Linear(64, 64))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 64)
    assert torch.equal(a(x), b(x))


def _tiny_gpt():
    from dlbook.nn import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=64))


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantize_model_keeps_embeddings_and_tied_head(kind):
    model = _tiny_gpt().eval()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        ref = model(idx)[0]
    before = weight_nbytes(model)
    names = quantize_model(model, kind, skip=["blocks.1.mlp"])
    assert "lm_head" not in names and not any(n.startswith("blocks.1.mlp") for n in names)
    assert "blocks.0.mlp.c_fc" in names
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.wte.weight
    assert isinstance(model.blocks[1].mlp.c_fc, nn.Linear)
    assert isinstance(model.blocks[0].mlp.c_fc, Int8Linear if kind == "int8" else NF4Linear)
    assert weight_nbytes(model) < before
    with torch.no_grad():
        out = model(idx)[0]
    assert out.shape == ref.shape and not torch.equal(out, ref)
    assert (out - ref).norm() / ref.norm() < 0.2


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="does not divide"):
        quantize_nf4(torch.randn(10, 10))
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(torch.ones(64, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point"):
        absmax_quantize(torch.ones(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN or inf"):
        absmax_quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="uint8"):
        pack_4bit(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_4bit(torch.tensor([3, 16], dtype=torch.uint8))
    with pytest.raises(ValueError, match="even"):
        pack_4bit(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="int8"):
        absmax_dequantize(torch.zeros(3), torch.tensor(1.0))
    with pytest.raises(TypeError, match="nn.Linear"):
        NF4Linear(nn.Conv1d(64, 64, 1))
    with pytest.raises(ValueError, match="kind"):
        quantize_model(_tiny_gpt(), "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(_tiny_gpt(), "nf4", skip=["blocks"])


def test_lora_trains_on_frozen_nf4_base():
    from dlbook.lora import LoRALinear

    torch.manual_seed(0)
    teacher = nn.Linear(64, 32)
    layer = LoRALinear(NF4Linear(teacher), r=4, alpha=8)
    packed = layer.base.packed.clone()
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(layer.lora_A.weight), id(layer.lora_B.weight)}
    x = torch.randn(256, 64)
    u, v = torch.randn(64, 2) / 8, torch.randn(2, 32) / 2
    with torch.no_grad():  # a change of rank 2 <= r: the adapter can learn it
        target = teacher(x) + x @ u @ v
    opt = torch.optim.Adam(trainable, lr=1e-2)
    first = None
    for _ in range(100):
        loss = F.mse_loss(layer(x), target)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 3
    assert torch.equal(layer.base.packed, packed)  # the 4-bit base did not move


def test_nf4_dequantize_equals_unpack_then_lookup():
    w = torch.randn(8, 192, generator=torch.Generator().manual_seed(4))
    t = quantize_nf4(w, double_quant=False)
    by_hand = nf4_code()[unpack_4bit(t.packed).long()].view(-1, 64) * t.absmax.unsqueeze(1)
    assert torch.equal(t.dequantize(), by_hand.view(8, 192))
