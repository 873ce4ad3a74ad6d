"""Convolutional networks for small grey images (sections 3.1–3.2): LeNet and a small ResNet.

Both take a batch of images ``(batch, in_channels, image_size, image_size)`` (28×28 grey
digits by default) and return class logits ``(batch, num_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from dlbook.config import check_int, validate_config


def _check_images(x: torch.Tensor, channels: int, size: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(batch, channels, size, size)``."""
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(
            f"{model} expects images of shape (batch, {channels}, {size}, {size}), "
            f"got {tuple(x.shape)}"
        )


def out_size(n: int, k: int, p: int = 0, s: int = 1, d: int = 1) -> int:
    """Length of a convolution's (or pooling's) output along one axis of length ``n``, for
    kernel size ``k``, padding ``p``, stride ``s`` and dilation ``d`` (section 3.1's
    eq-out-size): ``floor((n + 2p - d(k - 1) - 1) / s) + 1``.

    Raises:
        ValueError: a size is not a positive integer (``p``: non-negative), or the dilated
            kernel does not fit the padded input even once.
    """
    for name, value, low in (("n", n, 1), ("k", k, 1), ("p", p, 0), ("s", s, 1), ("d", d, 1)):
        check_int(name, value, low)
    if n + 2 * p < d * (k - 1) + 1:
        raise ValueError(f"a kernel of {k} (dilation {d}) does not fit {n} + 2·{p} positions")
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------- LeNet


@dataclass
class LeNetConfig:
    """Architecture of a :class:`LeNet`.

    Attributes:
        in_channels: channels of the input images (1 for grey).
        image_size: height = width of the input images.
        channels: output channels of the two 5×5 convolutions.
        hidden: widths of the fully connected layers after the convolutions.
        num_classes: number of outputs.
    """

    in_channels: int = 1
    image_size: int = 28
    channels: list[int] = field(default_factory=lambda: [6, 16])
    hidden: list[int] = field(default_factory=lambda: [120, 84])
    num_classes: int = 10

    def __post_init__(self) -> None:
        validate_config(self)  # every field by its annotation: sizes >= 1
        if len(self.channels) != 2:
            raise ValueError(
                f"LeNet has two convolutions: channels needs 2 entries, got {self.channels}"
            )
        if self.feature_size < 1:
            raise ValueError(f"image_size {self.image_size} is too small for LeNet (needs >= 12)")

    @property
    def feature_size(self) -> int:
        """Height = width of the feature maps after the second pooling."""
        size = self.image_size
        if size < 12:  # conv2 needs 5 positions after the first pooling
            return 0
        size = out_size(out_size(size, 5, p=2), 2, s=2)  # conv1 keeps the size; pool halves it
        return out_size(out_size(size, 5), 2, s=2)  # conv2 removes 4; pool halves it


class LeNet(nn.Module):
    """A LeNet-5-style network (LeCun et al., 1998) with ReLU and max pooling.

    ``conv 5×5 (pad 2) → ReLU → max-pool 2 → conv 5×5 → ReLU → max-pool 2 → flatten →
    (Linear → ReLU)* → Linear``. Input ``(batch, in_channels, image_size, image_size)``,
    output logits ``(batch, num_classes)``.
    """

    config_class = LeNetConfig

    def __init__(self, config: LeNetConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.conv1 = nn.Conv2d(config.in_channels, c1, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        sizes = [c2 * config.feature_size**2, *config.hidden, config.num_classes]
        self.fcs = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutions and pooling: ``(B, C, S, S)`` → ``(B, channels[1], F, F)``."""
        _check_images(x, self.config.in_channels, self.config.image_size, "LeNet")
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.max_pool2d(F.relu(self.conv2(x)), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, S, S)`` to logits ``(B, num_classes)``."""
        h = self.features(x).flatten(1)
        for fc in self.fcs[:-1]:
            h = F.relu(fc(h))
        return self.fcs[-1](h)


# --------------------------------------------------------------------------- ResNet


class ResidualBlock(nn.Module):
    """The basic residual block of (He et al., 2016) with batch norm (Ioffe and Szegedy, 2015).

    ``y = ReLU(BN(conv3×3(ReLU(BN(conv3×3_s(x))))) + shortcut(x))``, where the first
    convolution has stride ``s`` and ``shortcut`` is the identity when the shape is kept, else
    a strided 1×1 convolution with batch norm (a *projection*). Input ``(B, in_channels, H, W)``,
    output ``(B, out_channels, ⌈H/s⌉, ⌈W/s⌉)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` → ``(B, out_channels, ⌈H/s⌉, ⌈W/s⌉)``."""
        if x.dim() != 4 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(
                f"ResidualBlock expects (batch, {self.conv1.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


@dataclass
class ResNetConfig:
    """Architecture of a small :class:`ResNet` for little images.

    Attributes:
        in_channels: channels of the input images (1 for grey).
        image_size: height = width of the input images.
        widths: channels of each stage; every stage after the first halves the resolution.
        blocks: residual blocks per stage (same length as ``widths``).
        num_classes: number of outputs.
    """

    in_channels: int = 1
    image_size: int = 28
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    num_classes: int = 10

    def __post_init__(self) -> None:
        validate_config(self)  # every field by its annotation: sizes >= 1
        if not self.widths or len(self.widths) != len(self.blocks):
            raise ValueError(
                f"widths and blocks need one entry per stage (at least one stage), got "
                f"{self.widths} and {self.blocks}"
            )


class ResNet(nn.Module):
    """A small residual network: a 3×3 stem, stages of :class:`ResidualBlock`, global average
    pooling and a linear classifier.

    Input ``(batch, in_channels, image_size, image_size)``, output logits ``(batch, num_classes)``.
    """

    config_class = ResNetConfig

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        w0 = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w0, 3, padding=1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        c_in = w0
        for i, (width, n) in enumerate(zip(config.widths, config.blocks, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(ResidualBlock(c_in, width, stride))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps before pooling: ``(B, C, S, S)`` → ``(B, widths[-1], S', S')``."""
        _check_images(x, self.config.in_channels, self.config.image_size, "ResNet")
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, S, S)`` to logits ``(B, num_classes)``."""
        return self.head(self.features(x).mean(dim=(2, 3)))
