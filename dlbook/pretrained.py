"""Pretraining a character-level GPT on the King James Bible, and the cached result (section 4.3).

:func:`pretrain` is the book's pretraining loop: random windows from a memory-mapped token
stream, AdamW with warm-up + cosine decay, gradient clipping, periodic evaluation and
checkpoints that resume bit-exactly. It is built on :class:`dlbook.train.Trainer` (one optimizer
step at a time through :meth:`~dlbook.train.Trainer.train_step`, checkpoints through its
``state_dict``/``load``).

:func:`pretrained_kjv_gpt` trains such a model on first use and caches it under
:func:`dlbook.config.cache_dir`, in a folder named after a hash of the training configuration,
so later parts of the book get the same model in seconds and a changed configuration never
loads a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlbook.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    load_model,
    read_json,
    save_checkpoint,
    save_model,
)
from dlbook.config import PROFILES, cache_dir
from dlbook.config import profile as active_profile
from dlbook.data.lm import read_tokens, sample_windows, split_tokens, write_tokens
from dlbook.data.text import CharTokenizer, load_kjv
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.schedules import warmup_cosine_scheduler
from dlbook.train import Trainer

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "PretrainedRun",
    "config_key",
    "estimate_loss",
    "kjv_config",
    "kjv_tokens",
    "lm_loss",
    "make_optimizer",
    "pretrain",
    "pretrained_kjv_gpt",
    "pretrained_kjv_run",
]

CACHE_VERSION = 1  # bump when the training code changes what a configuration produces


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run (model, data, optimisation, seed).

    Attributes:
        n_layer, n_head, n_embd, block_size, dropout: the GPT (see :class:`GPTConfig`).
        corpus_chars: use this many leading characters of the corpus (``None``: all of it).
        val_fraction: the last part of the token stream held out for validation.
        batch_size: windows per optimizer step.
        max_steps: optimizer steps.
        warmup_steps: linear warm-up steps of the learning rate.
        lr: peak learning rate; it decays along a cosine to ``min_lr_ratio * lr``.
        weight_decay: AdamW decay of the matrices (not of biases, norms).
        grad_clip: clip the global gradient norm to this value.
        eval_interval: evaluate (and checkpoint) every this many steps.
        eval_batches: batches of fixed random windows per evaluation.
        seed: initial weights, batches and evaluation windows.
    """

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    corpus_chars: int | None = None
    val_fraction: float = 0.1
    batch_size: int = 32
    max_steps: int = 1000
    warmup_steps: int = 50
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "eval_interval", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps], got {self.warmup_steps}")
        if self.corpus_chars is not None and self.corpus_chars < 1:
            raise ValueError(f"corpus_chars must be positive or None, got {self.corpus_chars}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model's :class:`GPTConfig` for a tokenizer with ``vocab_size`` ids."""
        return GPTConfig(
            vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
        )


# The runs of the book, by profile: `book` trains in a few minutes on a 2-core CPU.
_PROFILE_CONFIGS: dict[str, PretrainConfig] = {
    "smoke": PretrainConfig(
        n_layer=1, n_head=2, n_embd=32, block_size=32, corpus_chars=100_000, batch_size=8,
        max_steps=20, warmup_steps=4, eval_interval=10, eval_batches=2,
    ),
    "book": PretrainConfig(
        n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=32, max_steps=1800,
        warmup_steps=60, lr=2e-3, eval_interval=100, eval_batches=6,
    ),
    "full": PretrainConfig(
        n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1, batch_size=64,
        max_steps=5000, warmup_steps=200, lr=1e-3, eval_interval=250, eval_batches=20,
    ),
}


def kjv_config(profile: str | None = None) -> PretrainConfig:
    """The book's pretraining configuration for ``profile`` (default: the active profile)."""
    name = active_profile() if profile is None else profile
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, not {name!r}")
    return _PROFILE_CONFIGS[name]


def config_key(config: PretrainConfig, extra: str = "") -> str:
    """A 16-hex-digit hash of ``config`` (and ``extra``, e.g. the corpus name): the cache key.

    Any change of any field gives a different key, so a cached model is only ever reused by
    exactly the configuration that trained it.
    """
    if not isinstance(config, PretrainConfig):
        raise ValueError(f"expected a PretrainConfig, got {type(config).__name__}")
    blob = json.dumps(
        {"version": CACHE_VERSION, "extra": extra, "config": dataclasses.asdict(config)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- data


def kjv_tokens(config: PretrainConfig) -> tuple[CharTokenizer, np.memmap]:
    """Character-tokenize the King James Bible (its first ``config.corpus_chars`` characters)
    and return the tokenizer and the token stream as a read-only memmap ``(N,)``.

    The ids are written once to ``cache_dir()/tokens/kjv-char-<hash>.bin`` and reopened on
    later calls, so the tokenization cost is paid once per corpus.
    """
    text = load_kjv()
    if config.corpus_chars is not None:
        text = text[: config.corpus_chars]
    if not text:
        raise ValueError("the corpus is empty: nothing to tokenize")
    tokenizer = CharTokenizer.from_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache_dir() / "tokens" / f"kjv-char-{digest}.bin"
    try:
        data = read_tokens(path)
    except (FileNotFoundError, ValueError):
        write_tokens(path, tokenizer.encode(text), tokenizer.vocab_size)
        data = read_tokens(path)
    return tokenizer, data


# --------------------------------------------------------------------------- training pieces


def lm_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of GPT ``outputs`` (``logits (B, T, V)`` or the
    ``(logits, loss)`` pair that :class:`GPT` returns) against ``targets (B, T)``."""
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW that decays the weight matrices and embeddings (tensors with ``dim >= 2``) but not
    biases and normalisation gains, as nanoGPT does."""
    params = [p for p in model.parameters() if p.requires_grad]
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
    """Mean next-token loss of ``model`` over ``n_batches`` random windows of ``data``.

    The windows depend only on ``seed``, so every evaluation of a run sees the same ones and
    the numbers of a curve are comparable. The model is put in eval mode and left there.
    """
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


# --------------------------------------------------------------------------- the cached model


@dataclass
class PretrainedRun:
    """A pretrained model with everything the book reports about its training."""

    model: GPT
    tokenizer: CharTokenizer
    config: PretrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    directory: Path | None = None
    trained_now: bool = False


def _run_dir(config: PretrainConfig) -> Path:
    return cache_dir() / "pretrained" / f"kjv-char-gpt-{config_key(config, 'kjv-char')}"


def _load_run(directory: Path, config: PretrainConfig) -> PretrainedRun:
    meta = read_json(directory / "run.json", "no finished run here")
    if meta.get("config") != json.loads(json.dumps(dataclasses.asdict(config))):
        raise CheckpointError(f"{directory} was trained with a different configuration")
    try:
        tokenizer = CharTokenizer.load(directory / "tokenizer.json")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory}: unreadable tokenizer: {e}") from e
    model = load_model(directory, {"GPT": GPT})
    if model.config.vocab_size != tokenizer.vocab_size:  # type: ignore[union-attr]
        raise CheckpointError(f"{directory}: the model and the tokenizer do not match")
    return PretrainedRun(model, tokenizer, config, meta["history"], directory)  # type: ignore[arg-type]


def pretrained_kjv_run(
    profile: str | None = None, *, config: PretrainConfig | None = None, retrain: bool = False
) -> PretrainedRun:
    """The character-level GPT pretrained on the King James Bible, with its training history.

    On first use the model is trained with :func:`pretrain` (minutes in the ``book`` profile on
    a CPU; an interrupted training resumes from its checkpoint) and saved with
    :func:`dlbook.checkpoint.save_model` plus the tokenizer and history in
    ``cache_dir()/pretrained/kjv-char-gpt-<key>``, where ``<key>`` is :func:`config_key` of the
    configuration. Later calls load it in seconds. A cache entry that cannot be read (corrupt or
    partial files) is reported with a warning and retrained.

    Args:
        profile: which of the book's configurations (:func:`kjv_config`); default: active one.
        config: a configuration of your own instead of the profile's.
        retrain: ignore a cached model and train again.
    """
    config = kjv_config(profile) if config is None else config
    directory = _run_dir(config)
    if not retrain and directory.exists():
        try:
            return _load_run(directory, config)
        except CheckpointError as e:
            warnings.warn(f"cached model unusable, retraining: {e}", stacklevel=2)
    tokenizer, data = kjv_tokens(config)
    train_data, val_data = split_tokens(data, config.val_fraction)
    result = pretrain(
        config, train_data, val_data, tokenizer.vocab_size,
        checkpoint_path=directory / "train.pt", resume=not retrain,
    )
    save_model(result.model, directory)
    tokenizer.save(directory / "tokenizer.json")
    meta = {"config": dataclasses.asdict(config), "history": result.history}
    atomic_write(directory / "run.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
    (directory / "train.pt").unlink(missing_ok=True)  # the model file is all a user needs
    return PretrainedRun(
        result.model, tokenizer, config, result.history, directory, trained_now=True
    )


def pretrained_kjv_gpt(profile: str | None = None) -> tuple[GPT, CharTokenizer]:
    """``(model, tokenizer)`` of :func:`pretrained_kjv_run`: a character-level GPT trained on
    the King James Bible (trained on first use, then loaded from the cache), in eval mode on
    the CPU."""
    run = pretrained_kjv_run(profile)
    return run.model.cpu().eval(), run.tokenizer
