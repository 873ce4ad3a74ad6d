"""Group-wise int8/int4 weight-only quantisation and the int4 matmul (section 6.4)."""

import pytest
import torch
from torch import nn

from dlbook.quant import (
    Int4Linear,
    Int8Linear,
    absmax_quantize,
    dequantize_groupwise,
    int4_matmul,
    pack_4bit,
    pack_int4,
    quantize_groupwise,
    quantize_model,
    saved_nbytes,
    unpack_int4,
)


def _w(out_f: int = 48, in_f: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits,group", [(8, None), (8, 32), (4, None), (4, 32), (4, 64), (3, 16)])
def test_groupwise_error_bound_and_range(bits: int, group: int | None) -> None:
    w = _w()
    q, s = quantize_groupwise(w, bits, group)
    g = w.shape[1] if group is None else group
    assert q.dtype == torch.int8 and s.shape == (w.shape[0], w.shape[1] // g)
    qmax = 2 ** (bits - 1) - 1
    assert int(q.abs().max()) == qmax  # every group's absmax lands on the top code
    err = (dequantize_groupwise(q, s) - w).abs().view(w.shape[0], -1, g)
    assert torch.all(err <= s.unsqueeze(-1) / 2 * (1 + 1e-5))


def test_per_channel_int8_is_absmax_per_row() -> None:
    w = _w()
    q, s = quantize_groupwise(w, 8, None)
    q_ref, absmax = absmax_quantize(w, dim=1)
    assert torch.equal(q, q_ref)
    int8 = Int8Linear(_linear(w))
    torch.testing.assert_close(dequantize_groupwise(q, s), int8.dequantized_weight())
    torch.testing.assert_close(s * 127, absmax)


def test_smaller_groups_err_less_with_an_outlier() -> None:
    w = _w()
    w[3, 5] = 40.0
    errs = [(dequantize_groupwise(*quantize_groupwise(w, 4, g)) - w).norm() for g in (None, 64, 16)]
    assert errs[0] > errs[1] > errs[2]


def test_pack_int4_round_trip_and_layout() -> None:
    q = torch.randint(-7, 8, (6, 10), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    p = pack_int4(q)
    assert p.shape == (6, 5) and p.dtype == torch.uint8
    assert torch.equal(unpack_int4(p), q)
    assert torch.equal(p.reshape(-1), pack_4bit((q + 8).to(torch.uint8).reshape(-1)))
    assert int(p[0, 0]) == (int(q[0, 0]) + 8) * 16 + int(q[0, 1]) + 8


def _linear(w: torch.Tensor, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


@pytest.mark.parametrize("group", [None, 32, 128])
def test_int4_matmul_equals_dequantise_then_matmul(group: int | None) -> None:
    w = _w(40, 256)
    q, s = quantize_groupwise(w, 4, group)
    x = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(2))
    b = torch.randn(40)
    ref = torch.nn.functional.linear(x, dequantize_groupwise(q, s), b)
    y = int4_matmul(x, pack_int4(q), s, b)
    assert y.shape == (3, 5, 40)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)
    # float64 in, float64 out, and then the two orders of summation agree to ~1e-12
    y64 = int4_matmul(x.double(), pack_int4(q), s.double(), b.double())
    n_groups = s.shape[1]
    w64 = (q.double().view(40, n_groups, -1) * s.double().unsqueeze(-1)).view(40, 256)
    ref64 = torch.nn.functional.linear(x.double(), w64, b.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, ref64, atol=1e-10, rtol=1e-10)


def test_int4_linear_module_and_bytes() -> None:
    w = _w(64, 128)
    lin = _linear(w)
    m = Int4Linear(lin, group_size=32)
    x = torch.randn(7, 128)
    ref = torch.nn.functional.linear(x, m.dequantized_weight(), lin.bias)
    torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-5)
    # packed codes 64*128/2 bytes, scales 64*4 float32, bias 64 float32
    assert m.nbytes() == 64 * 128 // 2 + 64 * 4 * 4 + 64 * 4
    assert (m(x) - lin(x)).abs().max() < 0.5 * lin(x).abs().max()
    assert saved_nbytes(m) < saved_nbytes(lin) / 3


def test_quantize_model_int4_keeps_tied_head() -> None:
    emb = nn.Embedding(50, 32)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 50, bias=False))
    model[2].weight = emb.weight
    model.add_module("emb", emb)
    names = quantize_model(model, "int4_group", group_size=16)
    assert names == ["0"] and isinstance(model[0], Int4Linear) and model[0].group_size == 16


def test_errors() -> None:
    w = _w(8, 96)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_groupwise(w, 4, 64)
    with pytest.raises(ValueError, match="does not divide"):
        Int4Linear(_linear(w), group_size=64)
    with pytest.raises(ValueError, match="bits"):
        quantize_groupwise(w, 9)
    with pytest.raises(TypeError, match="floating-point"):
        quantize_groupwise(w.to(torch.int32))
    with pytest.raises(ValueError, match=r"\(out, in\)"):
        quantize_groupwise(w.view(-1))
    q, s = quantize_groupwise(w, 4, 32)
    p = pack_int4(q)
    with pytest.raises(TypeError, match="floating-point"):
        int4_matmul(torch.ones(2, 96, dtype=torch.long), p, s)
    with pytest.raises(TypeError, match="uint8"):
        int4_matmul(torch.ones(2, 96), p.to(torch.int8), s)
    with pytest.raises(ValueError, match="in_features=96"):
        int4_matmul(torch.ones(2, 64), p, s)
    with pytest.raises(ValueError, match="scales"):
        int4_matmul(torch.ones(2, 96), p, s[:, :2].t())
    with pytest.raises(ValueError, match=r"\[-7, 7\]"):
        pack_int4(torch.full((2, 2), 8, dtype=torch.int8))
    with pytest.raises(ValueError, match="kind"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), "int2")  # type: ignore[arg-type]


def test_empty_scales_and_odd_per_channel_errors() -> None:
    w = _w(8, 96)
    q, s = quantize_groupwise(w, 4, 32)
    no_groups = s[:, :0]  # (out, 0): no group at all
    with pytest.raises(ValueError, match="G >= 1"):
        dequantize_groupwise(q, no_groups)
    with pytest.raises(ValueError, match="G >= 1"):
        int4_matmul(torch.ones(2, 96), pack_int4(q), no_groups)
    with pytest.raises(ValueError, match=r"per-channel mode \(group_size=None\).*odd"):
        Int4Linear(nn.Linear(575, 4), group_size=None)
    with pytest.raises(ValueError, match="group_size must be even"):
        Int4Linear(nn.Linear(96, 4), group_size=3)
