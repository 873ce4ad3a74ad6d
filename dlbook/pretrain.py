"""Pretraining a GPT from scratch on a token stream (section 4.3): the configuration, the loop
and its pieces (loss, optimizer, evaluation).

:func:`pretrain` is the book's pretraining loop: random windows from a memory-mapped token
stream, AdamW with warm-up + cosine decay, gradient clipping, periodic evaluation and
checkpoints that resume bit-exactly. It is built on :class:`dlbook.train.Trainer` (one optimizer
step at a time through :meth:`~dlbook.train.Trainer.train_step`, checkpoints through its
``state_dict``/``load``). The trained model of the book's own run is cached by
:mod:`dlbook.artifacts`; real published weights come from :mod:`dlbook.hub`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import nn

from dlbook.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dlbook.config import (
    Dropout,
    Interval,
    NonNegativeInt,
    PositiveFloat,
    UnitFloat,
    check_int,
    validate_config,
)
from dlbook.data.lm import sample_windows
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.nn.losses import IGNORE_INDEX, token_cross_entropy
from dlbook.schedules import warmup_cosine_scheduler
from dlbook.train import Trainer

__all__ = [
    "IGNORE_INDEX",
    "PretrainConfig",
    "PretrainResult",
    "estimate_loss",
    "lm_loss",
    "make_optimizer",
    "pretrain",
]

Beta = Annotated[float, Interval("[0, 1)")]


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run (model, data, optimisation, seed).

    Every field is checked against its annotation by :func:`dlbook.config.validate_config`.

    Attributes:
        n_layer, n_head, n_embd, block_size, dropout: the GPT (see :class:`GPTConfig`).
        corpus_chars: use this many leading characters of the corpus (``None``: all of it).
        val_fraction: the last part of the token stream held out for validation.
        batch_size: windows per optimizer step.
        max_steps: optimizer steps.
        warmup_steps: linear warm-up steps of the learning rate.
        lr: peak learning rate; it decays along a cosine to ``min_lr_ratio * lr``.
        weight_decay: AdamW decay of the matrices (not of biases, norms).
        betas: AdamW's moment decay rates.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        eval_interval: evaluate (and checkpoint) every this many steps.
        eval_batches: batches of fixed random windows per evaluation.
        seed: initial weights, batches and evaluation windows.
    """

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: Dropout = 0.0
    corpus_chars: int | None = None
    val_fraction: Annotated[float, Interval("(0, 1)")] = 0.1
    batch_size: int = 32
    max_steps: int = 1000
    warmup_steps: NonNegativeInt = 50
    lr: PositiveFloat = 3e-3
    min_lr_ratio: UnitFloat = 0.1
    weight_decay: float = 0.1
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    grad_clip: PositiveFloat | None = 1.0
    eval_interval: int = 100
    eval_batches: int = 10
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        validate_config(self)
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}"
            )

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model's :class:`GPTConfig` for a tokenizer with ``vocab_size`` ids."""
        return GPTConfig(
            vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
        )


# --------------------------------------------------------------------------- training pieces


def lm_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of GPT ``outputs`` (``logits (B, T, V)`` or the
    ``(logits, loss)`` pair that :class:`GPT` returns) against ``targets (B, T)``.

    Targets equal to :data:`IGNORE_INDEX` are not scored, the same rule as
    :meth:`GPT.forward` (both call :func:`dlbook.nn.losses.token_cross_entropy`).
    """
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    return token_cross_entropy(logits, targets)


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW that decays the weight matrices and embeddings (tensors with ``dim >= 2``) but not
    biases and normalisation gains, as nanoGPT does. Frozen parameters are left out; a tensor
    shared by two modules (tied embeddings) appears once."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() de-duplicates
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    n_batches: int,
    seed: int = 0,
) -> float:
    """Mean next-token loss of ``model`` over ``n_batches`` random windows ``(batch_size,
    block_size)`` of the token stream ``data (N,)``.

    The windows depend only on ``seed``, so every evaluation of a run sees the same ones and
    the numbers of a curve are comparable. The model is put in eval mode and left there.
    """
    check_int("n_batches", n_batches)
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_batches):
        x, y = sample_windows(data, block_size, batch_size, generator, device)
        total += lm_loss(model(x), y).item()
    return total / n_batches


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the model (eval mode), the evaluation history (one dict
    per evaluation: ``step``, ``train_loss``, ``val_loss``, ``lr``, ``seconds``) and whether
    the run reached ``max_steps``."""

    model: GPT
    history: list[dict[str, float]]
    finished: bool


def pretrain(
    config: PretrainConfig,
    train_data: np.ndarray,
    val_data: np.ndarray,
    vocab_size: int,
    *,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    device: torch.device | str | None = None,
) -> PretrainResult:
    """Train a :class:`GPT` from scratch on the token streams ``train_data``/``val_data (N,)``.

    Every optimizer step draws ``config.batch_size`` random windows with a generator seeded by
    ``(config.seed, step)``, so the batches depend only on the step number; together with the
    checkpointed model, optimizer, scheduler and random state this makes a resumed run
    bit-identical to an uninterrupted one. Every ``config.eval_interval`` steps (and at step 0
    and at the end) the loss on fixed windows of both splits is recorded and, with
    ``checkpoint_path``, a checkpoint is written atomically.

    Args:
        config: the run.
        train_data, val_data: token streams (e.g. :func:`dlbook.data.lm.read_tokens` views).
        vocab_size: the tokenizer's vocabulary size.
        checkpoint_path: where to write training checkpoints.
        resume: continue from ``checkpoint_path`` if it exists.
        stop_after: stop (after checkpointing) once this many steps are done, as if the run
            had been interrupted there; ``None`` runs to ``config.max_steps``.
        device: default :func:`dlbook.device.get_device`.

    Raises:
        ValueError: bad arguments, or data too short for one window.
        CheckpointError: ``resume`` from a checkpoint of a different configuration.
    """
    if not isinstance(config, PretrainConfig):
        raise ValueError(f"config must be a PretrainConfig, got {type(config).__name__}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path")
    if stop_after is not None and stop_after < 0:
        raise ValueError(f"stop_after must be >= 0, got {stop_after}")
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if len(data) < config.block_size + 1:
            raise ValueError(
                f"{name} has {len(data)} tokens, fewer than one window of "
                f"block_size + 1 = {config.block_size + 1}"
            )
    torch.manual_seed(config.seed)
    model = GPT(config.gpt_config(vocab_size))
    optimizer = make_optimizer(model, config.lr, config.weight_decay, config.betas)
    scheduler = warmup_cosine_scheduler(
        optimizer, warmup_steps=config.warmup_steps, total_steps=config.max_steps,
        min_lr_ratio=config.min_lr_ratio,
    )
    trainer = Trainer(
        model, optimizer, lm_loss, scheduler=scheduler, grad_clip=config.grad_clip,
        device=device, seed=config.seed, progress=False,
    )
    meta = {"pretrain_config": dataclasses.asdict(config), "vocab_size": vocab_size}
    if resume and Path(checkpoint_path).exists():  # type: ignore[arg-type]
        state = load_checkpoint(checkpoint_path)  # type: ignore[arg-type]
        found = {k: state.get(k) for k in meta}
        if json.dumps(found, sort_keys=True) != json.dumps(meta, sort_keys=True):
            raise CheckpointError(
                f"{checkpoint_path} was written by a different pretraining configuration "
                f"({found}) than this one ({meta}); use another checkpoint path"
            )
        trainer.load(checkpoint_path)  # type: ignore[arg-type]

    def evaluate() -> None:
        row = {
            "step": float(trainer.step),
            "train_loss": estimate_loss(
                trainer.model, train_data, config.block_size, config.batch_size,
                config.eval_batches, seed=config.seed + 1,
            ),
            "val_loss": estimate_loss(
                trainer.model, val_data, config.block_size, config.batch_size,
                config.eval_batches, seed=config.seed + 2,
            ),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": elapsed + time.perf_counter() - start,
        }
        trainer.history.rows.append(row)

    def checkpoint() -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {**trainer.state_dict(), **meta})

    elapsed = trainer.history.rows[-1]["seconds"] if trainer.history.rows else 0.0
    start = time.perf_counter()
    if trainer.step == 0 and not trainer.history.rows:
        evaluate()
    end = config.max_steps if stop_after is None else min(stop_after, config.max_steps)
    while trainer.step < end:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + trainer.step)
        x, y = sample_windows(
            train_data, config.block_size, config.batch_size, generator, trainer.device
        )
        trainer.train_step(x, y)
        if trainer.step % config.eval_interval == 0 or trainer.step == config.max_steps:
            evaluate()
            checkpoint()
    if trainer.step == end and end < config.max_steps:
        checkpoint()  # an "interruption" between evaluations still leaves a checkpoint
    model.eval()
    return PretrainResult(model, list(trainer.history.rows), trainer.step >= config.max_steps)
