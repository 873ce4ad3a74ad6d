"""The Vision Transformer (section 6.2; Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

An image ``(B, C_in, H, W)`` is cut into ``N = (H / P)(W / P)`` square patches of ``P × P``
pixels; each patch, flattened to ``C_in P²`` numbers, is mapped linearly to a token of width
``C`` (``n_embd``). A learned class token is put in front, learned position embeddings are added,
and the ``N + 1`` tokens go through the library's pre-norm Transformer encoder blocks
(:class:`dlbook.nn.transformer.TransformerBlock`). A linear head reads the class token's final
state and gives the class logits ``(B, n_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dlbook.config import Dropout, NonNegativeInt, check_int
from dlbook.nn.transformer import block_stack, check_block_config, make_norm

__all__ = [
    "PatchEmbedding",
    "VisionTransformer",
    "ViTConfig",
    "attention_rollout",
    "check_images",
    "patchify",
]


def check_images(images: torch.Tensor, channels: int, patch_size: int,
                 image_size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``images`` is ``(B, channels, H, W)`` with ``H`` and ``W``
    divisible by ``patch_size`` (and, if ``image_size`` is given, ``H = W = image_size``)."""
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(
            f"expected images of shape (B, {channels}, H, W), got {tuple(images.shape)}"
        )
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}×{w} is not divisible by the patch size {patch_size}; crop or pad "
            f"the images, or choose a patch size that divides both sides"
        )
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(
            f"this model was built for {image_size}×{image_size} images (its position table "
            f"has one entry per patch), got {h}×{w}"
        )


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut ``images (B, C_in, H, W)`` into non-overlapping ``P × P`` patches, row by row.

    Returns:
        ``(B, N, C_in · P · P)`` with ``N = (H / P)(W / P)``; patch ``n = i · (W / P) + j`` holds
        rows ``iP … iP+P-1`` and columns ``jP … jP+P-1``, flattened channel-major (channel,
        then row, then column: the order of a ``Conv2d`` weight ``(C, C_in, P, P)``).

    Raises:
        ValueError: not a 4-D tensor, or ``H`` or ``W`` not divisible by ``patch_size``.
    """
    check_int("patch_size", patch_size)
    if images.dim() != 4:
        raise ValueError(f"expected images (B, C_in, H, W), got {tuple(images.shape)}")
    check_images(images, images.shape[1], patch_size)
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C_in, H/P, P, W/P, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C_in, P, P)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class PatchEmbedding(nn.Module):
    """Map each ``P × P`` patch of an image linearly to a token of width ``n_embd``.

    Implemented as a ``Conv2d`` with kernel size and stride ``P``: the kernel visits every patch
    exactly once, so it computes ``patchify(x) @ W.reshape(n_embd, -1).T + b``.

    Input ``(B, C_in, H, W)``, output ``(B, N, n_embd)`` with ``N = (H / P)(W / P)``.
    """

    def __init__(self, in_channels: int, n_embd: int, patch_size: int) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("n_embd", n_embd),
                            ("patch_size", patch_size)):
            check_int(name, value)
        self.in_channels, self.patch_size = in_channels, patch_size
        self.proj = nn.Conv2d(in_channels, n_embd, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` → ``(B, N, n_embd)``; ``ValueError`` on a wrong channel count or
        a size not divisible by the patch size."""
        check_images(images, self.in_channels, self.patch_size)
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, C, H/P, W/P) → (B, N, C)


@dataclass
class ViTConfig:
    """Architecture of a :class:`VisionTransformer`.

    Attributes:
        image_size: height = width of the input images.
        patch_size: side ``P`` of the square patches; must divide ``image_size``.
        in_channels: channels of the input images (1 for grey).
        n_classes: number of outputs.
        n_layer, n_head, n_embd: depth, heads per block, token width.
        mlp_hidden: feed-forward width (``0``: ``4 n_embd``).
        dropout: dropout in attention, MLP and after the embeddings.
        bias: biases in linear layers and layer norms.
        norm: ``"layer"`` or ``"rms"``.
        mlp: ``"gelu"`` or ``"swiglu"``.
    """

    image_size: int = 28
    patch_size: int = 4
    in_channels: int = 1
    n_classes: int = 10
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    mlp_hidden: NonNegativeInt = 0
    dropout: Dropout = 0.0
    bias: bool = True
    norm: Literal["layer", "rms"] = "layer"
    mlp: Literal["gelu", "swiglu"] = "gelu"

    def __post_init__(self) -> None:
        check_block_config(self)  # every field by its annotation, heads divide the width
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} must divide image_size={self.image_size}"
            )

    @property
    def n_patches(self) -> int:
        """Number of patches ``N = (image_size / patch_size)²``."""
        return (self.image_size // self.patch_size) ** 2


class VisionTransformer(nn.Module):
    """A Vision Transformer classifier: ``images (B, C_in, S, S)`` → logits ``(B, n_classes)``.

    Tokens: ``[cls; patch_1 … patch_N] + pos`` (``(B, N + 1, C)``), then ``n_layer`` pre-norm
    encoder blocks (bidirectional attention), a final norm ``ln_f`` and a linear ``head`` on the
    class token (position 0). Parameter names: ``patch_embed``, ``cls_token (1, 1, C)``,
    ``pos_embed (1, N + 1, C)``, ``blocks``, ``ln_f``, ``head``.
    """

    config_class = ViTConfig

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbedding(c.in_channels, c.n_embd, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.n_embd))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.n_patches + 1, c.n_embd))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = block_stack(c, causal=False)
        self.ln_f = make_norm(c.norm, c.n_embd, c.bias)
        self.head = nn.Linear(c.n_embd, c.n_classes, bias=c.bias)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's input ``(B, N + 1, C)``: class token, then the patch tokens, plus
        position embeddings. ``ValueError`` for images not ``(B, in_channels, S, S)`` with the
        configured ``S = image_size``."""
        c = self.config
        check_images(images, c.in_channels, c.patch_size, c.image_size)
        x = self.patch_embed(images)  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        return self.drop(torch.cat([cls, x], dim=1) + self.pos_embed)

    def hidden_states(self, images: torch.Tensor) -> torch.Tensor:
        """The final states of all tokens ``(B, N + 1, C)``, after ``ln_f``."""
        x = self.tokens(images)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, C_in, S, S)`` → class logits ``(B, n_classes)`` (from the class token)."""
        return self.head(self.hidden_states(images)[:, 0])

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer, ``(n_layer, B, n_head, N + 1, N + 1)``; row ``i``
        of a map is how token ``i`` (0: the class token) spreads its attention over the
        tokens. Computed on the same inputs the forward pass uses (in evaluation mode)."""
        maps = []
        x = self.tokens(images)
        for block in self.blocks:
            maps.append(block.attn.attention_weights(block.norm1(x)))
            x = block(x)
        return torch.stack(maps)


def attention_rollout(maps: torch.Tensor) -> torch.Tensor:
    r"""Attention rollout (Abnar & Zuidema 2020): how much each input token reaches each output
    token through all layers, counting the residual connection.

    Each layer's map is averaged over heads, mixed with the identity,
    :math:`\tilde A_l = \tfrac12 (\bar A_l + I)` (rows still sum to 1), and the layers are
    multiplied: :math:`R = \tilde A_L \cdots \tilde A_1`.

    Args:
        maps: ``(L, B, H, T, T)`` attention weights, as from
            :meth:`VisionTransformer.attention_maps`.

    Returns:
        ``(B, T, T)``, each row summing to 1; row 0 is the class token's rollout.
    """
    if maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"expected maps (L, B, H, T, T), got {tuple(maps.shape)}")
    t = maps.shape[-1]
    eye = torch.eye(t, dtype=maps.dtype, device=maps.device)
    rollout = eye.expand(maps.shape[1], t, t)
    for layer in maps:
        mixed = 0.5 * (layer.mean(dim=1) + eye)  # (B, T, T)
        rollout = mixed @ rollout
    return rollout
