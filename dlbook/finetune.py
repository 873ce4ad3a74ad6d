"""Fine-tuning a pretrained encoder for text classification (section 5.3).

The pieces, from the bottom up:

* :class:`SequenceClassifier`: an encoder plus a linear head on its pooled hidden states
  (mean over the real tokens, or the first token).
* :func:`freeze` and :func:`count_parameters`: choose what trains (a name pattern, or the
  top ``k`` layers) and report how many parameters that is.
* :func:`encode_texts`, :func:`length_batches`, :func:`collate`: tokenize and batch documents
  of similar length together, so that little compute is spent on padding.
* :func:`train_classifier` and :func:`predict`: AdamW with warm-up and cosine decay, gradient
  clipping, a progress bar, and the measured time of every step; :func:`optimizer_state_bytes`
  measures what the optimizer keeps per trainable parameter.
* :func:`accuracy`, :func:`macro_f1`, :func:`confusion_matrix`.
* :func:`finetuned_r8_classifier`: MiniLM fine-tuned on Reuters R8 by one of three methods
  (a linear head on the frozen encoder, the top ``k`` layers, everything), trained on first
  use and cached under ``cache_dir()`` by a hash of its configuration, so that later sections
  reuse it.

A frozen layer computes the same thing in every epoch, so its output is computed **once**:
the frozen method trains its head on cached pooled features, and the top-``k`` method trains
the top layers on the cached hidden states of the layer below them
(:func:`encode_hidden_states`).

Shapes: ``B`` batch, ``T`` tokens, ``C`` model width, ``K`` classes, ``N`` documents.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from dlbook.artifacts import cached_run
from dlbook.checkpoint import CheckpointError, atomic_write, read_json, read_safetensors
from dlbook.config import (
    PROFILES,
    Dropout,
    Interval,
    NonNegativeInt,
    PositiveFloat,
    UnitFloat,
    check_int,
    validate_config,
)
from dlbook.config import profile as active_profile
from dlbook.schedules import warmup_cosine_scheduler

__all__ = [
    "POOLINGS",
    "FinetunedClassifier",
    "ParameterCount",
    "R8Config",
    "SequenceClassifier",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "collate",
    "confusion_matrix",
    "count_parameters",
    "encode_hidden_states",
    "encode_texts",
    "finetuned_r8_classifier",
    "freeze",
    "length_batches",
    "macro_f1",
    "optimizer_state_bytes",
    "pool",
    "predict",
    "r8_config",
    "r8_documents",
    "train_classifier",
]

POOLINGS = ("mean", "cls")


# --------------------------------------------------------------------------- the model


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str = "mean") -> torch.Tensor:
    """Pool hidden states ``(B, T, C)`` into one vector per sequence ``(B, C)``.

    Args:
        hidden: ``(B, T, C)``.
        mask: ``(B, T)`` boolean, ``True`` for real tokens (``None``: all real).
        pooling: ``"mean"``, the average over the real tokens (what sentence-embedding models
            such as all-MiniLM-L6-v2 are trained with), or ``"cls"``, the first position (BERT's
            ``[CLS]`` token).
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1): padded positions count 0
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class SequenceClassifier(nn.Module):
    """A linear classifier on the pooled hidden states of a Transformer encoder.

    ``logits = head(dropout(pool(encoder.hidden_states(idx, mask))))``: token ids ``(B, T)``
    and their padding mask ``(B, T)`` → logits ``(B, K)``.

    Args:
        encoder: a :class:`~dlbook.nn.TransformerEncoder` (its ``hidden_states`` gives
            ``(B, T, C)``; an output head of its own, if it has one, is not used).
        n_classes: ``K``, at least 2.
        pooling: ``"mean"`` or ``"cls"`` (see :func:`pool`).
        dropout: dropout on the pooled vector during training.
    """

    def __init__(
        self, encoder: nn.Module, n_classes: int, pooling: str = "mean", dropout: float = 0.1
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        check_int("n_classes", n_classes, low=2)
        if not hasattr(encoder, "hidden_states") or not hasattr(encoder, "blocks"):
            raise TypeError(
                f"{type(encoder).__name__} is not a TransformerEncoder: it needs "
                "`hidden_states(idx, key_padding_mask)` and a `blocks` list"
            )
        self.encoder = encoder
        self.pooling = pooling
        self.n_classes = int(n_classes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.n_embd, self.n_classes)

    @property
    def n_layer(self) -> int:
        """Number of Transformer blocks in the encoder."""
        return len(self.encoder.blocks)

    def features(
        self, idx: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled hidden states ``(B, C)`` of token ids ``idx (B, T)``."""
        return pool(self.encoder.hidden_states(idx, key_padding_mask), key_padding_mask,
                    self.pooling)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of pooled features ``(B, C)`` (the head alone)."""
        return self.head(self.dropout(features))

    def forward(
        self, idx: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, K)`` of token ids ``idx (B, T)`` with ``key_padding_mask (B, T)``
        (``True`` = real token; ``None``: no padding)."""
        return self.classify(self.features(idx, key_padding_mask))

    def forward_from(
        self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None, layer: int
    ) -> torch.Tensor:
        """Logits ``(B, K)`` from the output of block ``layer`` (``hidden (B, T, C)``): runs
        blocks ``layer, ..., n_layer - 1``, the final norm and the head. ``layer = n_layer``
        runs the head alone (on the last layer's output). Equals :meth:`forward` when
        ``hidden`` is what the lower layers produce."""
        if not 0 <= layer <= self.n_layer:
            raise ValueError(f"layer must lie in [0, {self.n_layer}], got {layer}")
        enc, x = self.encoder, hidden
        for block in enc.blocks[layer:]:
            x = block(x, key_padding_mask, getattr(enc, "rope", None))
        # The final norm (pre-norm encoders only) belongs to the last layer's output; states
        # captured at layer n_layer already include it (see encode_hidden_states).
        if layer < self.n_layer and getattr(enc, "ln_f", None) is not None:
            x = enc.ln_f(x)
        return self.classify(pool(x, key_padding_mask, self.pooling))


class _FromLayer(nn.Module):
    """``(hidden (B, T, C), mask (B, T))`` → logits ``(B, K)`` through the classifier's layers
    from ``layer`` up: what trains when the layers below are frozen and their output cached."""

    def __init__(self, classifier: SequenceClassifier, layer: int) -> None:
        super().__init__()
        self.classifier, self.layer = classifier, layer

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier.forward_from(hidden, mask, self.layer)


# --------------------------------------------------------------------------- what trains


@dataclass(frozen=True)
class ParameterCount:
    """How many of a model's parameters train.

    Attributes:
        trainable: parameters with ``requires_grad``.
        total: all parameters (shared tensors counted once).
    """

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """``trainable / total``."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters train ({self.fraction:.2%})"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameter counts of ``model`` (each tensor counted once)."""
    params = list(model.parameters())  # .parameters() already skips shared duplicates
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def freeze(model: nn.Module, trainable: str | int) -> ParameterCount:
    """Freeze all of ``model`` except what ``trainable`` names; return the resulting counts.

    Args:
        model: any module; with an ``int`` it must be a :class:`SequenceClassifier`.
        trainable: either a regular expression, searched in every parameter name (``"head"``:
            the classifier's head only; ``".*"``: everything, full fine-tuning), or an integer
            ``k``: the top ``k`` encoder blocks, the encoder's final norm (when ``k >= 1``)
            and everything outside the encoder (the head) train; the embeddings and the lower
            blocks are frozen. ``k = 0`` trains the head alone.

    Raises:
        ValueError: a pattern that matches no parameter (the message shows some names), or
            ``k`` outside ``[0, n_layer]``.
    """
    names = [name for name, _ in model.named_parameters()]
    if isinstance(trainable, bool) or not isinstance(trainable, (str, int)):
        raise ValueError(f"trainable must be a name pattern (str) or a layer count (int), "
                         f"got {trainable!r}")
    if isinstance(trainable, str):
        try:
            pattern = re.compile(trainable)
        except re.error as e:
            raise ValueError(f"trainable={trainable!r} is not a regular expression: {e}") from e
        chosen = {n for n in names if pattern.search(n)}
        if not chosen:
            raise ValueError(f"trainable={trainable!r} matches no parameter; names look like "
                             f"{', '.join(names[:3])}, ..., {names[-1]}")
    else:
        if not isinstance(model, SequenceClassifier):
            raise ValueError("freeze(model, k) with a layer count needs a SequenceClassifier")
        n_layer = model.n_layer
        if not 0 <= trainable <= n_layer:
            raise ValueError(
                f"k must lie in [0, {n_layer}] (the encoder's blocks), got {trainable}"
            )
        prefixes = tuple(f"encoder.blocks.{i}." for i in range(n_layer - trainable, n_layer))
        if trainable >= 1:
            prefixes += ("encoder.ln_f.",)
        chosen = {n for n in names if not n.startswith("encoder.") or n.startswith(prefixes)}
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return count_parameters(model)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors of ``optimizer``'s state (e.g. AdamW's two moments and step
    counters), measured from the state itself.

    The state is created lazily by the first ``step()``, so call this after one.

    Raises:
        ValueError: the optimizer has no state yet.
    """
    if not optimizer.state:
        raise ValueError("the optimizer has no state yet; measure it after optimizer.step()")
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


# --------------------------------------------------------------------------- data


def encode_texts(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of every text as ``[CLS] tokens [SEP]``, cut to at most ``max_len`` ids.

    Each whitespace-separated word gives at least one WordPiece token, so only the first
    ``max_len`` words can survive the cut; the rest is dropped before tokenizing, which gives
    the same ids and saves most of the work on long documents.

    Args:
        tokenizer: a :class:`~dlbook.wordpiece.WordPieceTokenizer` (``encode_with_types``).
        texts: ``N`` documents.
        max_len: longest encoding, special tokens included, ``>= 3``.
    """
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a list of texts")
    check_int("max_len", max_len, low=3)
    return [
        tokenizer.encode_with_types(" ".join(t.split()[:max_len]), max_length=max_len)[0]
        for t in texts
    ]


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Group example indices into batches of similar length (bucketing).

    The indices are sorted by length and cut into consecutive batches of ``batch_size``, so a
    batch pads to a length close to that of its members. With ``shuffle`` the order of equal
    lengths and the order of the batches are random (a new draw each call), so training still
    sees the data in a new order every epoch.

    Returns:
        A list of batches, each a list of indices into ``lengths``; every index once.
    """
    check_int("batch_size", batch_size)
    n = len(lengths)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    lens = torch.as_tensor(list(lengths), dtype=torch.long)[order]
    order = order[torch.sort(lens, stable=True).indices]  # ties keep their (random) order
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


def collate(
    items: Sequence[torch.Tensor], pad_value: float = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack examples into a batch.

    Examples of equal shape are stacked (``(B, ...)``, mask ``None``); sequences of different
    lengths ``(T_i, ...)`` are padded at the end with ``pad_value`` to ``(B, T, ...)`` and come
    with a boolean mask ``(B, T)``, ``True`` for real positions.
    """
    if not items:
        raise ValueError("collate needs at least one example")
    if all(x.shape == items[0].shape for x in items):
        return torch.stack(list(items)), None
    lengths = torch.tensor([x.shape[0] for x in items])
    batch = nn.utils.rnn.pad_sequence(list(items), batch_first=True, padding_value=pad_value)
    mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
    return batch, mask


def _as_tensors(inputs: Sequence[Any]) -> list[torch.Tensor]:
    return [x if isinstance(x, torch.Tensor) else torch.tensor(x) for x in inputs]


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Settings of :func:`train_classifier`.

    Attributes:
        steps: optimizer steps (the schedule ends at this step).
        batch_size: examples per step.
        lr: peak learning rate of the pretrained (encoder) parameters.
        head_lr: peak learning rate of parameters named ``...head.*`` (the new, randomly
            initialised classifier); ``0``: the same as ``lr``.
        weight_decay: AdamW's decoupled weight decay, applied to matrices only (not to
            biases and norm gains).
        warmup_frac: share of the steps spent warming up linearly.
        min_lr_ratio: the cosine decay ends at this fraction of the peak.
        clip_norm: clip the gradient's global norm to this value (``0``: no clipping).
        seed: seed of the batch order and dropout.
    """

    steps: int
    batch_size: int = 32
    lr: PositiveFloat = 5e-5
    head_lr: float = 0.0
    weight_decay: float = 0.01
    warmup_frac: UnitFloat = 0.1
    min_lr_ratio: UnitFloat = 0.0
    clip_norm: float = 1.0
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        validate_config(self)  # every field by its annotation


@dataclass
class TrainResult:
    """What :func:`train_classifier` measured.

    Attributes:
        losses: training loss of every step.
        step_seconds: wall time of every step (forward, backward, clipping, update).
        optimizer_state_bytes: memory of the optimizer's state after training.
        params: trainable and total parameters.
    """

    losses: list[float]
    step_seconds: list[float]
    optimizer_state_bytes: int
    params: ParameterCount

    @property
    def seconds_per_step(self) -> float:
        """Mean step time, leaving out the first step (it allocates the optimizer state)."""
        times = self.step_seconds[1:] or self.step_seconds
        return sum(times) / len(times)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices only; the head at ``head_lr``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = re.search(r"(^|\.)head\.", name) is not None and config.head_lr > 0
        groups.setdefault((is_head, p.dim() >= 2), []).append(p)
    return [
        {"params": params, "lr": config.head_lr if is_head else config.lr,
         "weight_decay": config.weight_decay if decay else 0.0}
        for (is_head, decay), params in sorted(groups.items())
    ]


def train_classifier(
    model: nn.Module,
    inputs: Sequence[Any],
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    pad_value: float = 0,
    progress: bool = True,
    desc: str = "fine-tune",
) -> TrainResult:
    """Train ``model`` to classify ``inputs`` with cross-entropy; return what was measured.

    Batches hold examples of similar length (:func:`length_batches`, reshuffled every epoch);
    the optimizer is AdamW over the parameters that require gradients, with a linear warm-up
    and cosine decay (:func:`~dlbook.schedules.warmup_cosine_scheduler`) and gradient clipping.
    The model is left in eval mode.

    Args:
        model: maps ``(x (B, ...), mask (B, T) or None)`` to logits ``(B, K)``, e.g. a
            :class:`SequenceClassifier` (``x``: token ids ``(B, T)``).
        inputs: ``N`` examples, each a tensor (or list) of shape ``(T_i, ...)`` (token ids
            ``(T_i,)``, cached hidden states ``(T_i, C)``, or pooled features ``(C,)``).
        labels: ``(N,)`` class ids.
        config: steps, batch size, learning rates, etc.
        pad_value: what pads the inputs (the tokenizer's ``[PAD]`` id for token ids).
        progress: show a tqdm progress bar.

    Raises:
        ValueError: no trainable parameters, or inputs and labels of different lengths.
    """
    items = _as_tensors(inputs)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(items) != len(labels) or not items:
        raise ValueError(f"got {len(items)} inputs and {len(labels)} labels; need as many, >= 1")
    groups = _param_groups(model, config)
    if not groups:
        raise ValueError("the model has no trainable parameters; see freeze()")
    device = next(p for g in groups for p in g["params"]).device
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout
    optimizer = torch.optim.AdamW(groups)
    scheduler = warmup_cosine_scheduler(
        optimizer, warmup_steps=int(config.warmup_frac * config.steps),
        total_steps=config.steps, min_lr_ratio=config.min_lr_ratio,
    )
    trainable = [p for g in groups for p in g["params"]]
    lengths = [x.shape[0] if x.dim() else 1 for x in items]
    losses: list[float] = []
    seconds: list[float] = []
    batches: list[list[int]] = []
    model.train()
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        if not batches:  # a new epoch: new buckets, new order
            batches = length_batches(lengths, config.batch_size, shuffle=True,
                                     generator=generator)
        index = batches.pop()
        start = time.perf_counter()
        x, mask = collate([items[i] for i in index], pad_value)
        x = x.to(device)
        mask = None if mask is None else mask.to(device)
        loss = nn.functional.cross_entropy(model(x, mask), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_norm > 0:
            nn.utils.clip_grad_norm_(trainable, config.clip_norm)
        optimizer.step()
        scheduler.step()
        value = loss.item()  # waits for the device, so the step time is complete
        seconds.append(time.perf_counter() - start)
        losses.append(value)
        bar.set_postfix(loss=f"{value:.3f}")
    model.eval()
    return TrainResult(losses, seconds, optimizer_state_bytes(optimizer),
                       count_parameters(model))


@torch.inference_mode()
def predict(
    model: nn.Module,
    inputs: Sequence[Any],
    *,
    batch_size: int = 64,
    pad_value: float = 0,
    progress: bool = False,
    desc: str = "predict",
) -> torch.Tensor:
    """Logits ``(N, K)`` of ``model`` for ``N`` inputs (as in :func:`train_classifier`), in
    the inputs' order; batches of similar length, eval mode, on the model's device (CPU
    result)."""
    items = _as_tensors(inputs)
    if not items:
        raise ValueError("predict needs at least one input")
    device = next(model.parameters()).device
    model.eval()
    lengths = [x.shape[0] if x.dim() else 1 for x in items]
    out: list[torch.Tensor | None] = [None] * len(items)
    for index in tqdm(length_batches(lengths, batch_size), desc=desc, disable=not progress,
                      leave=False):
        x, mask = collate([items[i] for i in index], pad_value)
        logits = model(x.to(device), None if mask is None else mask.to(device)).float().cpu()
        for row, i in zip(logits, index, strict=True):
            out[i] = row
    return torch.stack(out)  # type: ignore[arg-type]


@torch.inference_mode()
def encode_hidden_states(
    classifier: SequenceClassifier,
    ids: Sequence[Sequence[int]],
    layers: Sequence[int] = (),
    *,
    pad_id: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "encode",
) -> tuple[dict[int, list[torch.Tensor]], torch.Tensor]:
    """Run the (frozen) encoder once over ``N`` token-id sequences; keep, per document, the
    outputs of the blocks in ``layers`` and the pooled output of the last layer.

    Args:
        classifier: whose encoder and pooling to use (in eval mode, without gradients).
        ids: ``N`` token-id sequences.
        layers: block counts ``m`` in ``[1, n_layer]``: keep the output of blocks
            ``0 .. m - 1`` (for ``m = n_layer``, the last layer's output, final norm included).
        pad_id: the tokenizer's ``[PAD]`` id.

    Returns:
        ``(states, features)``: ``states[m][i]`` is ``(T_i, C)``, the output of layer ``m`` for
        document ``i`` without its padding, what :meth:`SequenceClassifier.forward_from` takes
        with ``layer=m``; ``features`` is ``(N, C)``, the pooled last layer, what the head
        takes.
    """
    enc = classifier.encoder
    n_layer = classifier.n_layer
    layers = sorted(set(layers))
    if any(not 1 <= m <= n_layer for m in layers):
        raise ValueError(f"layers must lie in [1, {n_layer}], got {layers}")
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        enc.blocks[m - 1].register_forward_hook(
            lambda module, args, out, m=m: captured.__setitem__(m, out))
        for m in layers if m < n_layer
    ]
    classifier.eval()
    device = next(classifier.parameters()).device
    items = _as_tensors(ids)
    states: dict[int, list[torch.Tensor | None]] = {m: [None] * len(items) for m in layers}
    features: list[torch.Tensor | None] = [None] * len(items)
    try:
        for index in tqdm(length_batches([len(x) for x in items], batch_size), desc=desc,
                          disable=not progress, leave=False):
            x, mask = collate([items[i] for i in index], pad_id)
            if mask is None:
                mask = torch.ones(x.shape, dtype=torch.bool)
            x, mask = x.to(device), mask.to(device)
            hidden = enc.hidden_states(x, mask)
            captured[n_layer] = hidden
            pooled = pool(hidden, mask, classifier.pooling).float().cpu()
            for row, i in enumerate(index):
                features[i] = pooled[row]
                for m in layers:
                    # clone: a view would keep the whole padded batch alive
                    states[m][i] = captured[m][row, : len(items[i])].float().cpu().clone()
    finally:
        for hook in hooks:
            hook.remove()
    return {m: list(v) for m, v in states.items()}, torch.stack(features)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- metrics


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = torch.as_tensor(pred).long().flatten(), torch.as_tensor(target).long().flatten()
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} "
                         "must be non-empty and of one length")
    return pred, target


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Share of predicted class ids ``(N,)`` equal to the targets ``(N,)``."""
    pred, target = _check_pair(pred, target)
    return (pred == target).double().mean().item()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(K, K)`` counts: entry ``[i, j]`` is the number of documents of class ``i`` predicted
    as class ``j`` (rows: truth, columns: prediction)."""
    pred, target = _check_pair(pred, target)
    if int(torch.maximum(pred, target).max()) >= n_classes or int(pred.min()) < 0 or \
            int(target.min()) < 0:
        raise ValueError(f"class ids must lie in [0, {n_classes})")
    flat = target * n_classes + pred
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)


def macro_f1(pred: torch.Tensor, target: torch.Tensor, n_classes: int | None = None) -> float:
    """The unweighted mean over classes of ``F1 = 2 TP / (2 TP + FP + FN)``.

    Every class counts the same however rare it is, so a classifier that ignores a small class
    loses ``1/K`` of the score, where accuracy would hardly move. As in scikit-learn's
    ``f1_score(average="macro")``, the mean runs over the classes that occur in ``target`` or
    ``pred``, and a class with no true positives scores 0.
    """
    pred, target = _check_pair(pred, target)
    k = int(torch.maximum(pred, target).max()) + 1 if n_classes is None else n_classes
    cm = confusion_matrix(pred, target, k).double()
    tp = cm.diag()
    fp = cm.sum(0) - tp  # predicted as the class, but another
    fn = cm.sum(1) - tp  # of the class, predicted as another
    present = (cm.sum(0) + cm.sum(1)) > 0
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1e-12)
    return f1[present].mean().item()


# --------------------------------------------------------------------------- R8, cached


Method = Literal["frozen", "top", "full", "lora"]
METHODS = ("frozen", "top", "full", "lora")
#: The encoder's linear layers that ``method="lora"`` adapts: all of attention and the MLP.
LORA_TARGET = r"blocks\.\d+\.(attn|mlp)\.(c_attn|c_proj|c_fc)$"


@dataclass
class R8Config:
    """A fine-tuning run of a pretrained encoder on Reuters R8 (everything that determines it).

    Attributes:
        method: ``"frozen"`` (a linear head on the frozen encoder's pooled output),
            ``"top"`` (the top ``top_k`` blocks and the head), ``"full"`` (every parameter),
            ``"lora"`` (LoRA adapters on every attention and MLP layer, see
            :data:`LORA_TARGET` and :mod:`dlbook.lora`, and the head).
        top_k: layers trained by ``"top"``.
        lora_r, lora_alpha: the adapters' rank and scale (``"lora"`` only).
        model: the :func:`dlbook.hub.load` name of the encoder.
        pooling: ``"mean"`` or ``"cls"``.
        max_len: WordPiece tokens per document, ``[CLS]`` and ``[SEP]`` included.
        n_train: training documents used (a seeded random subset of the ``"train"`` split);
            ``0``: all.
        n_test: test documents evaluated (the first ones); ``0``: all 2,189.
        steps, batch_size, lr, head_lr, weight_decay, warmup_frac, clip_norm: the optimizer
            (see :class:`TrainConfig`).
        dropout: dropout before the head.
        seed: seed of the subset, the head's initialisation, the batch order and dropout.
    """

    method: Literal["frozen", "top", "full", "lora"] = "full"
    top_k: NonNegativeInt = 2
    lora_r: Annotated[int, Interval("[1, inf)")] = 8
    lora_alpha: PositiveFloat = 16.0
    model: str = "minilm-l6"
    pooling: Literal["mean", "cls"] = "mean"
    max_len: Annotated[int, Interval("[3, inf)")] = 128
    n_train: NonNegativeInt = 0
    n_test: NonNegativeInt = 0
    steps: int = 100
    batch_size: int = 32
    lr: PositiveFloat = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: UnitFloat = 0.1
    clip_norm: float = 1.0
    dropout: Dropout = 0.1
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        validate_config(self)  # every field by its annotation, the optimizer's included
        if self.method != "lora" and (self.lora_r, self.lora_alpha) != (8, 16.0):
            raise ValueError(f"lora_r and lora_alpha apply only to method='lora', not "
                             f"{self.method!r}")

    def train_config(self) -> TrainConfig:
        """The optimizer settings as a :class:`TrainConfig`."""
        return TrainConfig(
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, head_lr=self.head_lr,
            weight_decay=self.weight_decay, warmup_frac=self.warmup_frac,
            clip_norm=self.clip_norm, seed=self.seed,
        )

    def trained_layers(self, n_layer: int) -> int:
        """Encoder blocks whose own weights train: 0, ``top_k`` or all ``n_layer`` (``"lora"``:
        0, the adapters train instead)."""
        return {"frozen": 0, "top": self.top_k, "full": n_layer, "lora": 0}[self.method]


# The book's runs by profile. `book` is sized for a 2-core CPU: documents cut to 128 tokens,
# 1,500 training documents, and fewer steps for the full fine-tune, whose steps cost the most.
_PROFILE_CONFIGS: dict[str, dict[str, R8Config]] = {
    "smoke": {
        m: R8Config(method=m, max_len=24, n_train=48, n_test=48, steps=3, batch_size=16)
        for m in METHODS
    },
    "book": {
        "frozen": R8Config(method="frozen", n_train=1500, steps=1000, batch_size=64,
                           head_lr=1e-2, weight_decay=0.0),
        "top": R8Config(method="top", n_train=1500, steps=120, lr=1e-4),
        "full": R8Config(method="full", n_train=1500, steps=40, lr=1e-4),
        # section 5.4's settings (it sweeps lora_r and cuts documents to 32 tokens)
        "lora": R8Config(method="lora", n_train=1500, steps=60, batch_size=16, lr=2e-3,
                         head_lr=1e-2),
    },
    "full": {
        "frozen": R8Config(method="frozen", steps=3000, batch_size=64, head_lr=1e-2,
                           weight_decay=0.0),
        "top": R8Config(method="top", steps=1000),
        "full": R8Config(method="full", steps=1000),
        "lora": R8Config(method="lora", steps=1000, lr=5e-4),
    },
}


def r8_config(method: str = "full", profile: str | None = None) -> R8Config:
    """The book's R8 run of ``method`` for ``profile`` (default: the active profile)."""
    name = active_profile() if profile is None else profile
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, not {name!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    return _PROFILE_CONFIGS[name][method]


@dataclass
class FinetunedClassifier:
    """A classifier fine-tuned on R8, with what was measured when it was trained.

    Attributes:
        model: the :class:`SequenceClassifier` (eval mode, CPU).
        tokenizer: the encoder's tokenizer.
        classes: class names, indexed by class id.
        config: the run's configuration.
        metrics: ``test_accuracy``, ``test_macro_f1``, ``val_accuracy``, ``val_macro_f1``,
            ``trainable_params``, ``total_params``, ``optimizer_state_bytes``,
            ``seconds_per_step``, ``train_seconds``, ``encode_seconds`` (the one pass over
            frozen layers; 0 for full fine-tuning), ``losses`` (per step).
        test_logits: ``(N_test, K)`` logits of the evaluated test documents.
        test_labels: ``(N_test,)`` their classes.
        directory: the cache folder.
        built_now: trained by this call (``False``: loaded from the cache).
    """

    model: SequenceClassifier
    tokenizer: Any
    classes: tuple[str, ...]
    config: R8Config
    metrics: dict[str, Any]
    test_logits: torch.Tensor
    test_labels: torch.Tensor
    directory: Path
    built_now: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts``, cut as in training."""
        return encode_texts(self.tokenizer, texts, self.config.max_len)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Logits ``(N, K)`` of raw texts."""
        return predict(self.model, self.encode(texts), batch_size=batch_size,
                       pad_value=self.tokenizer.pad_id)


R8_RUN = "r8-classifier"
WEIGHTS = "trainable.safetensors"
LOGITS = "test_logits.safetensors"
METRICS = "metrics.json"


@dataclass
class _R8Data:
    classes: tuple[str, ...]
    train_ids: list[list[int]]
    train_labels: torch.Tensor
    val_ids: list[list[int]]
    val_labels: torch.Tensor
    test_ids: list[list[int]]
    test_labels: torch.Tensor


def r8_documents(config: R8Config) -> dict[str, Any]:
    """The R8 documents a run of ``config`` uses: ``{"train", "val", "test"}`` →
    :class:`~dlbook.data.textcls.TextClassificationSplit`.

    ``train`` is the seeded random subset of ``config.n_train`` documents of the ``"train"``
    split (in file order); ``test`` the first ``config.n_test`` test documents; ``val`` the
    validation split, cut to ``n_test`` documents when that is set.
    """
    from dlbook.data.textcls import TextClassificationSplit, load_text_classification

    def head(split: TextClassificationSplit, n: int) -> TextClassificationSplit:
        return TextClassificationSplit(split.texts[:n], split.labels[:n], split.classes)

    train = load_text_classification("r8", "train", seed=config.seed)
    val = load_text_classification("r8", "val", seed=config.seed)
    test = load_text_classification("r8", "test")
    if config.n_train:
        g = torch.Generator().manual_seed(config.seed)
        keep = torch.randperm(len(train), generator=g)[: config.n_train].sort().values.tolist()
        train = TextClassificationSplit([train.texts[i] for i in keep], train.labels[keep],
                                        train.classes)
    if config.n_test:
        val, test = head(val, config.n_test), head(test, config.n_test)
    return {"train": train, "val": val, "test": test}


def _r8_data(config: R8Config, tokenizer: Any) -> _R8Data:
    docs = r8_documents(config)
    ids = {name: encode_texts(tokenizer, split.texts, config.max_len)
           for name, split in docs.items()}
    return _R8Data(
        classes=docs["train"].classes,
        train_ids=ids["train"], train_labels=docs["train"].labels,
        val_ids=ids["val"], val_labels=docs["val"].labels,
        test_ids=ids["test"], test_labels=docs["test"].labels,
    )


def _new_classifier(config: R8Config, n_classes: int) -> tuple[SequenceClassifier, Any]:
    from dlbook import hub

    encoder, tokenizer = hub.load(config.model)
    torch.manual_seed(config.seed)  # the head's initial weights
    model = SequenceClassifier(encoder, n_classes, config.pooling, config.dropout)
    return model.eval(), tokenizer



def _add_adapters(model: SequenceClassifier, config: R8Config) -> None:
    """LoRA on every attention and MLP layer of ``model``'s encoder (seeded A, zero B), with
    everything else frozen but the head."""
    from dlbook.lora import apply_lora

    with torch.random.fork_rng(devices=[]):  # seeded A without touching the caller's random state
        torch.manual_seed(config.seed)
        apply_lora(model.encoder, LORA_TARGET, r=config.lora_r, alpha=config.lora_alpha)
    model.head.requires_grad_(True)


class _HeadOnly(nn.Module):
    """``(features (B, C), mask ignored)`` → logits ``(B, K)``: the classifier's head alone,
    trained on cached pooled features of the frozen encoder."""

    def __init__(self, classifier: SequenceClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier.classify(features)


# One pass over the frozen layers serves every method that starts above them: the outputs of
# the last pass stay in memory, keyed by everything that determines them, so that running
# "frozen" and then "top" in one process (as section 5.3 does) encodes the documents once.
_MEMO: dict[str, Any] = {}


def _frozen_outputs(
    model: SequenceClassifier, data: _R8Data, config: R8Config, pad_id: int, progress: bool
) -> tuple[dict[str, tuple[dict[int, list[torch.Tensor]], torch.Tensor]], float]:
    """``{split: (states by layer, pooled features (N, C))}`` for train/val/test, and the
    seconds the pass took (0 when it came from memory)."""
    fields = ("model", "pooling", "max_len", "n_train", "n_test", "seed", "top_k")
    key = json.dumps({f: getattr(config, f) for f in fields}, sort_keys=True)
    if _MEMO.get("key") == key:
        return _MEMO["outputs"], 0.0
    _MEMO.clear()  # free the previous pass before making a new one
    # The layer the top-k method starts from; the frozen method needs only the features.
    layers = [model.n_layer - config.top_k] if 0 < config.top_k < model.n_layer else []
    start = time.perf_counter()
    outputs = {
        split: encode_hidden_states(model, ids, layers, pad_id=pad_id, progress=progress,
                                    desc=f"encode {split}")
        for split, ids in (("train", data.train_ids), ("val", data.val_ids),
                           ("test", data.test_ids))
    }
    _MEMO.update(key=key, outputs=outputs)
    return outputs, time.perf_counter() - start


def _build_r8(directory: Path, config: R8Config, progress: bool) -> FinetunedClassifier:
    from dlbook.data.textcls import class_names

    classes = class_names("r8")
    model, tokenizer = _new_classifier(config, len(classes))
    data = _r8_data(config, tokenizer)
    n_layer = model.n_layer
    if config.method == "top" and not 1 <= config.top_k < n_layer:
        raise ValueError(f"top_k must lie in [1, {n_layer - 1}] for this encoder, "
                         f"got {config.top_k}")
    if config.method == "lora":
        _add_adapters(model, config)
    else:
        freeze(model, ".*" if config.method == "full" else config.trained_layers(n_layer))
    pad, train_cfg = tokenizer.pad_id, config.train_config()
    desc = f"R8 {config.method}"
    encode_seconds = 0.0
    if config.method in ("full", "lora"):
        trainer: nn.Module = model
        train_x, val_x, test_x = data.train_ids, data.val_ids, data.test_ids
    else:
        outputs, encode_seconds = _frozen_outputs(model, data, config, pad, progress)
        if config.method == "frozen":
            trainer = _HeadOnly(model)
            train_x, val_x, test_x = (list(outputs[s][1]) for s in ("train", "val", "test"))
        else:
            layer = n_layer - config.top_k
            trainer = _FromLayer(model, layer)
            train_x, val_x, test_x = (outputs[s][0][layer] for s in ("train", "val", "test"))
    start = time.perf_counter()
    result = train_classifier(trainer, train_x, data.train_labels, train_cfg, pad_value=pad,
                              progress=progress, desc=desc)
    train_seconds = time.perf_counter() - start
    val_logits = predict(trainer, val_x, pad_value=pad, progress=progress, desc=f"{desc} val")
    test_logits = predict(trainer, test_x, pad_value=pad, progress=progress,
                          desc=f"{desc} test")
    k = len(classes)
    metrics: dict[str, Any] = {
        "classes": list(classes),
        "test_accuracy": accuracy(test_logits.argmax(-1), data.test_labels),
        "test_macro_f1": macro_f1(test_logits.argmax(-1), data.test_labels, k),
        "val_accuracy": accuracy(val_logits.argmax(-1), data.val_labels),
        "val_macro_f1": macro_f1(val_logits.argmax(-1), data.val_labels, k),
        "trainable_params": result.params.trainable,
        "total_params": result.params.total,
        "optimizer_state_bytes": result.optimizer_state_bytes,
        "seconds_per_step": result.seconds_per_step,
        "train_seconds": train_seconds,
        "encode_seconds": encode_seconds,
        "n_train": len(data.train_ids),
        "losses": result.losses,
    }
    trained = {n: p.detach().cpu().contiguous().clone()
               for n, p in model.named_parameters() if p.requires_grad}
    atomic_write(directory / WEIGHTS, lambda p: save_file(trained, str(p)))
    tensors = {"test_logits": test_logits.contiguous(), "test_labels": data.test_labels}
    atomic_write(directory / LOGITS, lambda p: save_file(tensors, str(p)))
    atomic_write(directory / METRICS, lambda p: p.write_text(json.dumps(metrics, indent=1)))
    return FinetunedClassifier(model.eval(), tokenizer, classes, config, metrics, test_logits,
                               data.test_labels, directory, built_now=True)


def _load_r8(directory: Path, config: R8Config) -> FinetunedClassifier:
    metrics = read_json(directory / METRICS, "no metrics; the run did not finish")
    if not isinstance(metrics, dict) or "classes" not in metrics:
        raise CheckpointError(f"{directory / METRICS} is not an R8 run's metrics")
    classes = tuple(metrics["classes"])
    model, tokenizer = _new_classifier(config, len(classes))
    if config.method == "lora":
        _add_adapters(model, config)
    trained = read_safetensors(directory / WEIGHTS)
    expected = model.state_dict()
    wrong = [n for n, t in trained.items()
             if n not in expected or tuple(expected[n].shape) != tuple(t.shape)]
    if wrong:
        raise CheckpointError(f"{directory / WEIGHTS} does not fit the classifier: {wrong[:4]}")
    model.load_state_dict(trained, strict=False)  # the rest are the pretrained weights
    freeze(model, "|".join(f"^{re.escape(n)}$" for n in trained))
    logits = read_safetensors(directory / LOGITS)
    if "test_logits" not in logits or "test_labels" not in logits:
        raise CheckpointError(f"{directory / LOGITS} lacks the test logits")
    return FinetunedClassifier(model.eval(), tokenizer, classes, config, metrics,
                               logits["test_logits"], logits["test_labels"], directory)


def finetuned_r8_classifier(
    method: str = "full",
    *,
    profile: str | None = None,
    config: R8Config | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> FinetunedClassifier:
    """A pretrained encoder fine-tuned on Reuters R8: trained on first use, then cached.

    The run is described by an :class:`R8Config` (the book's, :func:`r8_config`, for
    ``method`` and ``profile``, unless ``config`` is given) and cached under
    ``cache_dir()/runs/r8-classifier-<hash of the config>``: the trained parameters only
    (``trainable.safetensors``: the head, the top layers, or everything), the test logits and
    the measured metrics. Loading rebuilds the encoder from :func:`dlbook.hub.load` and puts
    the trained parameters on top. An unreadable cache entry is retrained, with a warning.

    Args:
        method: ``"frozen"``, ``"top"``, ``"full"`` or ``"lora"`` (see :class:`R8Config`).
        profile: which of the book's configurations; default: the active profile.
        config: a configuration of your own instead (``method`` is then ignored).
        retrain: train again even if a cached result exists.
        progress: progress bars while training and encoding.
    """
    config = r8_config(method, profile) if config is None else config
    if not isinstance(config, R8Config):
        raise ValueError(f"config must be an R8Config, got {type(config).__name__}")
    result, _ = cached_run(
        R8_RUN, config,
        build=lambda d: _build_r8(d, config, progress),
        load=lambda d: _load_r8(d, config),
        retrain=retrain,
    )
    return result

