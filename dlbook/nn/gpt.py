"""A GPT (decoder-only Transformer language model) built from the blocks of sections 3.4-3.5.

In the manner of nanoGPT's ``model.py``: a dataclass config, token (+ position) embeddings, a
stack of causal pre-norm blocks, a final norm and a language-model head that shares its weight
with the token embedding. Shapes use ``B`` batch, ``T`` sequence length, ``C`` width, ``V``
vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from dlbook.config import Dropout, Interval, NonNegativeInt
from dlbook.nn.attention import KVCache, RotaryEmbedding, check_segments, segment_positions
from dlbook.nn.losses import token_cross_entropy
from dlbook.nn.transformer import block_stack, check_block_config, check_ids, make_norm


@dataclass
class GPTConfig:
    """Architecture of a :class:`GPT`.

    Attributes:
        vocab_size: number of token ids ``V``.
        block_size: longest context ``T`` the model accepts.
        n_layer, n_head, n_embd: depth, heads per block, width ``C``.
        dropout: dropout probability (embeddings, attention, residual branches).
        bias: biases in linear layers and layer norms (GPT-2: ``True``).
        rope: rotary position embeddings instead of a learned position table.
        norm: ``"layer"`` (GPT-2) or ``"rms"``.
        mlp: ``"gelu"`` (GPT-2) or ``"swiglu"``.
        n_kv_head: key/value heads of grouped-query attention, a divisor of ``n_head``;
            ``0``: ``n_head`` (plain multi-head attention, GPT-2).
        rope_base: the base of the RoPE frequencies ``base ** (-2i / D)`` (only with ``rope``;
            Llama: ``10000``, SmolLM2: ``100000``).
        norm_eps: epsilon of every norm; ``0``: the norm's default.
        mlp_hidden: feed-forward width; ``0``: the default of the ``mlp`` kind.

    A Llama-style decoder (SmolLM2) is ``bias=False, rope=True, norm="rms", mlp="swiglu"`` with
    ``n_kv_head < n_head``, ``norm_eps=1e-5`` and its own ``rope_base`` and ``mlp_hidden``.
    """

    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: Dropout = 0.0
    bias: bool = True
    rope: bool = False
    norm: Literal["layer", "rms"] = "layer"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    n_kv_head: NonNegativeInt = 0
    rope_base: Annotated[float, Interval("(1, inf)")] = 10000.0
    norm_eps: Annotated[float, Interval("[0, 1)")] = 0.0
    mlp_hidden: NonNegativeInt = 0

    def __post_init__(self) -> None:
        check_block_config(self)  # every field by its annotation, then heads/width
        if self.n_kv_head and self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (each key/value "
                "head serves a whole group of query heads)"
            )


class GPT(nn.Module):
    """Decoder-only Transformer: ``idx (B, T)`` → next-token logits ``(B, T, V)``."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = None if c.rope else nn.Embedding(c.block_size, c.n_embd)
        self.rope = (
            RotaryEmbedding(c.n_embd // c.n_head, c.block_size, base=c.rope_base)
            if c.rope
            else None
        )
        self.drop = nn.Dropout(c.dropout)
        self.blocks = block_stack(c, causal=True)
        self.ln_f = make_norm(c.norm, c.n_embd, c.bias, eps=c.norm_eps or None)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one (V, C) matrix, two uses
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 n_layer),
        # so the variance of the stream does not grow with depth at initialisation.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied tensor counted once). With ``non_embedding``, the ``N``
        of scaling-law papers (Kaplan et al. 2020): without the token and position tables (with
        weight tying the token table is also the output layer, left out as well)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
        return n

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """An empty key/value cache for :meth:`forward` (one slot per layer, ``max_len``
        positions, default ``block_size``; its buffers, ``(B, n_kv_head, max_len, D)`` per layer
        for keys and for values, take the dtype and device of the first keys stored)."""
        block_size = self.config.block_size
        max_len = block_size if max_len is None else max_len
        if not 1 <= max_len <= block_size:
            raise ValueError(f"max_len must lie in [1, block_size={block_size}], got {max_len}")
        return KVCache(self.config.n_layer, max_len)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segments: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(B, T, V)`` for the next token at every position, and the mean cross-entropy
        against ``targets (B, T)`` when given (:data:`~dlbook.nn.losses.IGNORE_INDEX`, ``-100``,
        marks positions to ignore), else ``None``.

        With a ``cache`` (from :meth:`new_cache`), ``idx`` holds the tokens that follow the
        ``cache.length`` positions already cached; their keys and values are added to it.

        With ``segments (B, T)`` (integer labels, constant along each packed example), every
        example is computed as if it were alone: attention stays inside its segment and
        positions restart at 0 (section 5.6, packing).

        With ``pad_mask (B, T)`` (boolean, ``True`` = real token), prompts of different lengths
        share one batch (section 6.6, serving): padded keys get no attention weight and each
        row is computed as if alone. Padding goes on the **left**, so every row's next token
        is predicted at the last column. With a cache the mask is remembered for the cached
        positions (:meth:`KVCache.extend_mask`); later calls may pass ``None`` (all real).
        Learned positions (``wpe``) are counted per row over the real tokens; RoPE needs no
        change (shifting all positions of a row by the same amount leaves its attention
        scores unchanged). Logits at padded positions are meaningless.

        Raises:
            ValueError: ``T`` (plus the cached positions) ``> block_size``, ids outside
                ``[0, V)``, mis-shaped targets, segments or pad_mask, or segments with a cache
                or a pad_mask.
        """
        logits = self.lm_head(self.features(idx, cache, segments, pad_mask))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = token_cross_entropy(logits, targets)  # checks the shape; skips IGNORE_INDEX
        return logits, loss

    def features(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        segments: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalised hidden states ``(B, T, C)`` that :meth:`forward` maps to logits.

        Fine-tuning losses that need the next-token distribution at a few positions only (the
        answer tokens of section 5.6) apply ``lm_head`` to those rows instead of all ``T``: the
        head is about a fifth of SmolLM2's compute. Arguments and errors as :meth:`forward`.
        """
        c = self.config
        if segments is not None:
            if cache is not None:
                raise ValueError("segments (packed examples) cannot be used with a cache")
            check_segments(segments, tuple(idx.shape))
        start = 0 if cache is None else cache.length
        if cache is not None and start + idx.shape[-1] > c.block_size:
            raise ValueError(
                f"{start} cached + {idx.shape[-1]} new positions exceed block_size="
                f"{c.block_size}; crop the input or reset the cache"
            )
        check_ids(idx, c.vocab_size, c.block_size)
        positions = None
        if pad_mask is not None or (cache is not None and cache.mask is not None):
            if pad_mask is None:
                pad_mask = torch.ones(idx.shape, dtype=torch.bool, device=idx.device)
            positions = self._pad_positions(idx, pad_mask, cache, segments)
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            if segments is not None:
                x = x + self.wpe(segment_positions(segments))
            elif positions is not None:
                x = x + self.wpe(positions)
            else:
                x = x + self.wpe(torch.arange(start, start + idx.shape[1], device=idx.device))
        x = self.drop(x)
        kpm = pad_mask if cache is None else None  # a cache holds its mask (extend_mask)
        for i, block in enumerate(self.blocks):
            kv = None if cache is None else cache.layers[i]
            x = block(x, kpm, rope=self.rope, kv=kv, segments=segments)
        return self.ln_f(x)

    @staticmethod
    def _pad_positions(
        idx: torch.Tensor,
        pad_mask: torch.Tensor,
        cache: KVCache | None,
        segments: torch.Tensor | None,
    ) -> torch.Tensor:
        """Check ``pad_mask (B, T)``, record it in the cache, and return each token's position
        among the real tokens of its row ``(B, T)`` (padding: 0)."""
        if segments is not None:
            raise ValueError("segments (packed examples) cannot be combined with pad_mask")
        if pad_mask.dtype != torch.bool or pad_mask.shape != idx.shape:
            raise ValueError(
                f"pad_mask must be a boolean tensor of the ids' shape {tuple(idx.shape)} "
                f"(True = real token), got {pad_mask.dtype} {tuple(pad_mask.shape)}"
            )
        full = pad_mask
        if cache is not None:
            start = cache.length
            cache.extend_mask(pad_mask)
            full = cache.mask[:, : start + idx.shape[1]]  # type: ignore[index]
        return (full.cumsum(dim=1) - 1).clamp(min=0)[:, -idx.shape[1] :]

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Sequence[int] = (),
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx (B, T)`` by up to ``max_new_tokens`` tokens → ``(B, T + n)``.

        See :func:`dlbook.decoding.generate` (sampling with temperature, top-k, top-p; stop
        tokens; a key/value cache; a prompt longer than ``block_size`` is cropped to its last
        ``block_size`` tokens). ``temperature=0`` is greedy.
        """
        from dlbook.decoding import generate  # decoding works on any model with this interface

        return generate(
            self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            stop_tokens=stop_tokens, use_cache=use_cache, generator=generator,
        )
