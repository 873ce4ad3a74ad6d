"""Looking inside a model (section 6.3): attention capture, the logit lens, linear probes and
gradient × input saliency.

Every tool here reads a model without changing it: forward hooks that are removed afterwards
(also when the forward pass raises), and no parameter is touched.

* :func:`capture_attention` runs a forward pass and recomputes, from each attention module's
  own inputs, its attention probabilities ``softmax(QK^T / sqrt(D))`` ``(B, H, T, T)``;
  :func:`attention_from_probs` turns them back into the module's output, which is how one
  checks that the captured probabilities are the ones the model used.
* :func:`residual_stream` collects the hidden state before the first block and after each block
  ``(L + 1, B, T, C)``; :func:`logit_lens` reads any of them through the final norm and the
  unembedding (the "logit lens").
* :func:`fit_probe` trains a logistic-regression probe on frozen features; :class:`Probe`
  predicts and scores it.
* :func:`gradient_x_input` and :func:`embedding_saliency`: the gradient of one output with
  respect to the input, times the input.

Shapes use ``B`` batch, ``T`` positions, ``C`` width, ``H`` heads, ``L`` blocks, ``V``
vocabulary, ``K`` classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbook.nn.attention import MultiHeadAttention

__all__ = [
    "AttentionCapture",
    "Probe",
    "attention_from_probs",
    "attention_probs",
    "capture_attention",
    "embedding_saliency",
    "first_token_score",
    "fit_probe",
    "gradient_x_input",
    "input_saliency",
    "logit_lens",
    "previous_token_score",
    "residual_stream",
]


# --------------------------------------------------------------------------- attention


def attention_probs(
    attn: MultiHeadAttention,
    x: torch.Tensor,
    rope: nn.Module | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention probabilities ``(B, H, T, T)`` that ``attn`` computes on ``x (B, T, C)``.

    Recomputed as ``softmax(q k^T / sqrt(D))`` from the module's own projections by
    :meth:`~dlbook.nn.MultiHeadAttention.attention_weights` (with RoPE when given, the causal
    mask when the module is causal, and the optional boolean ``key_padding_mask (B, T)``,
    ``True`` = real token). Under grouped-query attention query head ``h`` reads key head
    ``h // G``. Each row sums to 1.
    """
    if not isinstance(attn, MultiHeadAttention):
        raise ValueError(f"expected a MultiHeadAttention module, got {type(attn).__name__}")
    if key_padding_mask is not None and (
        key_padding_mask.shape != x.shape[:2] or key_padding_mask.dtype != torch.bool
    ):
        raise ValueError("key_padding_mask must be a boolean (B, T) tensor")
    return attn.attention_weights(x, key_padding_mask, rope)


def attention_from_probs(
    attn: MultiHeadAttention,
    x: torch.Tensor,
    probs: torch.Tensor,
    rope: nn.Module | None = None,
) -> torch.Tensor:
    """The output ``(B, T, C)`` of ``attn`` on ``x (B, T, C)`` computed from given attention
    probabilities ``probs (B, H, T, T)``: ``c_proj(concat_h(probs_h @ v_h))``. With the
    probabilities of :func:`attention_probs` it equals ``attn(x)`` (no dropout, eval mode)."""
    b, t, _ = x.shape
    if probs.shape != (b, attn.n_head, t, t):
        raise ValueError(f"probs must be {(b, attn.n_head, t, t)}, got {tuple(probs.shape)}")
    _, _, v = attn._heads(x, rope)
    v = v.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # (B, H, T, D)
    y = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, t, attn.n_embd)
    return attn.c_proj(y)


@dataclass
class AttentionCapture:
    """What :func:`capture_attention` recorded, one entry per attention module in order.

    Attributes:
        probs: attention probabilities ``(B, H, T, T)``.
        inputs: each module's input ``x (B, T, C)``.
        outputs: each module's output ``(B, T, C)``.
        ropes: the rotary embedding each module was called with (or ``None``).
    """

    probs: list[torch.Tensor]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    ropes: list[nn.Module | None]

    def stacked(self) -> torch.Tensor:
        """All probabilities as one tensor ``(L, B, H, T, T)``."""
        return torch.stack(self.probs)


@contextmanager
def _hooks(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def capture_attention(
    model: nn.Module, *args: Any, **kwargs: Any
) -> tuple[Any, AttentionCapture]:
    """Run ``model(*args, **kwargs)`` and capture every attention module's probabilities.

    Forward hooks on each :class:`~dlbook.nn.MultiHeadAttention` recompute the probabilities
    from the module's inputs (:func:`attention_probs`); the model's output is unchanged.

    Returns:
        ``(output of the model, AttentionCapture)``.

    Raises:
        ValueError: the model has no attention module, or one is called with a key/value cache
            or packed segments (not supported here: run without them).
    """
    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention module")
    cap = AttentionCapture([], [], [], [])

    def hook(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], out: Any) -> None:
        names = ("x", "key_padding_mask", "rope", "kv", "segments")
        got = dict(zip(names, a, strict=False)) | kw
        if got.get("kv") is not None or got.get("segments") is not None:
            raise ValueError("capture_attention does not support a kv cache or segments")
        x, rope = got["x"].detach(), got.get("rope")
        assert isinstance(module, MultiHeadAttention)
        with torch.no_grad():
            cap.probs.append(attention_probs(module, x, rope, got.get("key_padding_mask")))
        cap.inputs.append(x)
        cap.outputs.append(out.detach())
        cap.ropes.append(rope)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    with _hooks(handles):
        out = model(*args, **kwargs)
    return out, cap


def previous_token_score(probs: torch.Tensor, start: int = 2) -> torch.Tensor:
    """Mean attention mass on the previous token, per head: ``probs (..., H, T, T)`` →
    ``(..., H)``, the average of ``probs[..., i, i - 1]`` over queries ``i >= start``
    (``start=2`` leaves out the first two queries, for which position ``i - 1`` is position 0
    or nothing)."""
    t = probs.shape[-1]
    if not 1 <= start < t:
        raise ValueError(f"start must lie in [1, T={t}), got {start}")
    i = torch.arange(start, t, device=probs.device)
    return probs[..., i, i - 1].mean(-1)


def first_token_score(probs: torch.Tensor, start: int = 2) -> torch.Tensor:
    """Mean attention mass on position 0 (the "attention sink"), per head: ``probs
    (..., H, T, T)`` → ``(..., H)``, averaged over queries ``i >= start``."""
    t = probs.shape[-1]
    if not 1 <= start < t:
        raise ValueError(f"start must lie in [1, T={t}), got {start}")
    return probs[..., start:, 0].mean(-1)


# --------------------------------------------------------------------------- logit lens


def residual_stream(model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The residual stream ``(L + 1, B, T, C)`` of ``model(*args, **kwargs)``: the input of the
    first block (the embeddings), then the output of each of the ``L`` blocks of
    ``model.blocks`` (before any final norm). Runs without gradients."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks` list to read")
    states: list[torch.Tensor] = []

    def pre(module: nn.Module, a: tuple[Any, ...]) -> None:
        states.append(a[0].detach())

    def post(module: nn.Module, a: tuple[Any, ...], out: torch.Tensor) -> None:
        states.append(out.detach())

    handles = [blocks[0].register_forward_pre_hook(pre)]
    handles += [b.register_forward_hook(post) for b in blocks]
    with _hooks(handles), torch.no_grad():
        model(*args, **kwargs)
    return torch.stack(states)


def logit_lens(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Read hidden states ``(..., C)`` as next-token logits ``(..., V)`` through the model's
    final norm ``ln_f`` and unembedding ``lm_head`` (the logit lens). On the last block's output
    this is exactly the model's own logits."""
    ln_f, head = getattr(model, "ln_f", None), getattr(model, "lm_head", None)
    if ln_f is None or head is None:
        raise ValueError(f"{type(model).__name__} needs `ln_f` and `lm_head` for the logit lens")
    if hidden.shape[-1] != head.in_features:
        raise ValueError(f"hidden must end in C={head.in_features}, got {tuple(hidden.shape)}")
    return head(ln_f(hidden))


# --------------------------------------------------------------------------- probes


@dataclass
class Probe:
    """A logistic-regression probe: standardise features with the training mean and standard
    deviation, then a linear layer ``(C,) → (K,)``."""

    mean: torch.Tensor
    std: torch.Tensor
    linear: nn.Linear

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C)`` → logits ``(N, K)``."""
        with torch.no_grad():
            return self.linear((x.float() - self.mean) / self.std)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``(N,)``."""
        return self.logits(x).argmax(-1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Share of ``x (N, C)`` whose predicted class equals ``y (N,)``."""
        return float((self.predict(x) == y).float().mean())


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int | None = None,
    l2: float = 1e-3,
    steps: int = 100,
) -> Probe:
    """Train a logistic-regression probe on frozen features (full-batch L-BFGS).

    Args:
        x: features ``(N, C)``.
        y: integer labels ``(N,)`` in ``[0, K)``.
        n_classes: ``K >= 2`` (default ``y.max() + 1``, at least 2).
        l2: weight of the penalty ``l2 * ||W||^2`` added to the mean cross-entropy (for
            ``K = 2`` the same as logistic regression on ``w_1 - w_0`` with ``l2 / 2``).
        steps: L-BFGS iterations.
    """
    if x.dim() != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(f"need x (N, C) and y (N,) with N >= 2, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32) or int(y.min()) < 0:
        raise ValueError("y must hold non-negative integer labels")
    k = max(2, int(y.max()) + 1) if n_classes is None else n_classes
    if k < 2:
        raise ValueError(f"a probe needs n_classes >= 2, got {k}")
    if int(y.max()) >= k:
        raise ValueError(f"labels must lie in [0, {k}), got max {int(y.max())}")
    x = x.detach().float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z, y = (x - mean) / std, y.long()
    linear = nn.Linear(x.shape[1], k)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(z), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(mean, std, linear.requires_grad_(False))


# --------------------------------------------------------------------------- saliency


def gradient_x_input(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: int | torch.Tensor,
    sum_dim: int | None = None,
) -> torch.Tensor:
    """Gradient × input of output ``target`` of ``fn``.

    Args:
        fn: maps inputs ``(B, ...)`` to outputs ``(B, K)`` (e.g. logits).
        x: the inputs ``(B, ...)``, a floating tensor.
        target: the output column to explain, one for all rows or ``(B,)`` one per row.
        sum_dim: sum the attribution over this dimension (e.g. ``-1`` to turn embeddings
            ``(B, T, C)`` into one score per token ``(B, T)``).

    Returns:
        ``x * d fn(x)[b, target_b] / dx``, shaped like ``x`` (or summed over ``sum_dim``).
        For a linear ``fn`` this is each feature's contribution ``w_i x_i`` exactly.
    """
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor, got {x.dtype}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"fn must return (B, K), got {tuple(out.shape)}")
        t = torch.as_tensor(target, device=out.device).long().expand(out.shape[0])
        (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), x)
    attribution = (grad * x).detach()
    return attribution if sum_dim is None else attribution.sum(sum_dim)


def embedding_saliency(
    model: nn.Module,
    embedding: nn.Embedding,
    idx: torch.Tensor,
    target: int | torch.Tensor,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """Gradient × input per token ``(B, T)`` of a model that reads token ids ``idx (B, T)``
    through ``embedding`` (the token embeddings are the input, their saliencies summed over
    the width): ``model(idx, *args, **kwargs)`` must return ``(B, K)``."""
    if idx.dim() != 2:
        raise ValueError(f"idx must be (B, T), got {tuple(idx.shape)}")
    with torch.no_grad():
        emb = embedding(idx)

    def fn(e: torch.Tensor) -> torch.Tensor:
        handle = embedding.register_forward_hook(lambda m, a, out: e)
        with _hooks([handle]):
            return model(idx, *args, **kwargs)

    return gradient_x_input(fn, emb, target, sum_dim=-1)


def input_saliency(
    model: nn.Module,
    module: nn.Module,
    target: int | torch.Tensor,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """Gradient × input per position ``(B, T)`` taken at the first input ``(B, T, C)`` of
    ``module`` (for example the first Transformer block: the embeddings after any embedding
    norm), summed over the width. ``model(*args, **kwargs)`` must return ``(B, K)`` and call
    ``module`` once."""
    captured: list[torch.Tensor] = []

    def grab(m: nn.Module, a: tuple[Any, ...]) -> None:
        captured.append(a[0].detach())

    with _hooks([module.register_forward_pre_hook(grab)]), torch.no_grad():
        model(*args, **kwargs)
    if len(captured) != 1 or captured[0].dim() != 3:
        raise ValueError("module must be called once per forward pass, with a (B, T, C) input")

    def fn(h: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_pre_hook(lambda m, a: (h, *a[1:]))
        with _hooks([handle]):
            return model(*args, **kwargs)

    return gradient_x_input(fn, captured[0], target, sum_dim=-1)
