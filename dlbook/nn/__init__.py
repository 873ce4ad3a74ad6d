"""Layers and models that the chapters build from scratch and then reuse."""

from __future__ import annotations

from torch import nn

from dlbook.nn.attention import (
    MultiHeadAttention,
    RotaryEmbedding,
    apply_rope,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    sinusoidal_positions,
)
from dlbook.nn.cnn import LeNet, LeNetConfig, ResidualBlock, ResNet, ResNetConfig
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.nn.mlp import MLP, MLPConfig
from dlbook.nn.rnn import CharLSTM, CharLSTMConfig
from dlbook.nn.transformer import (
    FeedForward,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
    TransformerEncoder,
    TransformerEncoderConfig,
)
from dlbook.nn.vit import PatchEmbedding, VisionTransformer, ViTConfig, attention_rollout, patchify

#: Models that :func:`dlbook.checkpoint.load_model` may rebuild from a ``config.json``.
MODELS: dict[str, type[nn.Module]] = {
    model.__name__: model
    for model in (MLP, LeNet, ResNet, CharLSTM, TransformerEncoder, GPT, VisionTransformer)
}

__all__ = [
    "GPT",
    "MLP",
    "MODELS",
    "CharLSTM",
    "CharLSTMConfig",
    "FeedForward",
    "GPTConfig",
    "LeNet",
    "LeNetConfig",
    "MLPConfig",
    "MultiHeadAttention",
    "RMSNorm",
    "ResNet",
    "ResNetConfig",
    "ResidualBlock",
    "RotaryEmbedding",
    "SwiGLU",
    "TransformerBlock",
    "TransformerEncoder",
    "TransformerEncoderConfig",
    "PatchEmbedding",
    "ViTConfig",
    "VisionTransformer",
    "attention_rollout",
    "patchify",
    "apply_rope",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
    "sinusoidal_positions",
]
