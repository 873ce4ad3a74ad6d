"""The training loop used from section 1.5 on.

:class:`Trainer` is the loop of section 1.4 made reusable: mini-batches from a ``DataLoader``,
forward, loss, backward, optimizer and learning-rate schedule, periodic evaluation, early stopping,
a progress bar, a history of every epoch, device and mixed-precision handling, and checkpoints that
resume to *exactly* the run that was interrupted.

Exact resume needs three things, all handled here: the optimizer/scheduler state, the random
state that dropout draws from, and a shuffle order that depends only on ``(seed, epoch)`` so an
interrupted run and an uninterrupted one see the same batches.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dlbook.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    model_config,
    save_checkpoint,
    save_model,
)
from dlbook.device import AmpMode, amp_dtype, autocast, get_device

__all__ = [
    "CheckpointError",
    "EarlyStopping",
    "History",
    "Trainer",
    "accuracy",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "save_model",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max matches the target. ``logits (n, c)``, ``targets (n,)``."""
    return (logits.argmax(dim=-1) == targets).float().mean()


@dataclass
class History:
    """One row of numbers per epoch (``epoch``, ``train_loss``, ``val_loss``, ``val_<metric>``,
    ``lr``, ``seconds``); ``history["val_loss"]`` gives a column as a list."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        if self.rows and key not in self.rows[0]:
            raise KeyError(f"{key!r} is not recorded; columns are {sorted(self.rows[0])}")
        return [row[key] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def last(self) -> dict[str, float]:
        """The most recent epoch's row."""
        if not self.rows:
            raise IndexError("the history is empty: no epoch has finished")
        return self.rows[-1]


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best`` the model's weights are rolled back to the best epoch when training
    ends, whether it stopped early or ran out of epochs.
    """

    patience: int = 5
    monitor: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0
    restore_best: bool = True
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {self.mode!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.best_epoch < 0:
            self.best = math.inf if self.mode == "min" else -math.inf

    def update(self, value: float, epoch: int, model: nn.Module) -> bool:
        """Record ``value`` for ``epoch``; return ``True`` when training should stop."""
        improved = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = state["best_state"]


class Trainer:
    """Train ``model`` with ``optimizer`` on a ``Dataset`` of ``(inputs, targets)`` pairs.

    Args:
        model: maps an input batch to outputs that ``loss_fn`` compares with targets.
        optimizer: any ``torch.optim`` optimizer over ``model``'s parameters.
        loss_fn: ``loss_fn(outputs, targets)`` → scalar; default cross-entropy.
        scheduler: optional learning-rate scheduler, stepped after every optimizer step.
        metrics: extra numbers computed in :meth:`evaluate`, e.g. ``{"accuracy": accuracy}``.
        device: where to train; default :func:`dlbook.device.get_device`.
        amp: mixed precision: ``auto`` (bf16/fp16 on CUDA, off on CPU), ``bf16``, ``fp16``, ``off``.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        accumulation_steps: split every batch into this many micro-batches and accumulate their
            gradients before the optimizer step (same result, less activation memory).
        compile: run the forward pass through ``torch.compile``.
        seed: fixes the shuffle order of every epoch and the dropout random state.
        progress: show a tqdm progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn = nn.functional.cross_entropy,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        metrics: Mapping[str, MetricFn] | None = None,
        device: torch.device | str | None = None,
        amp: AmpMode = "auto",
        grad_clip: float | None = None,
        accumulation_steps: int = 1,
        compile: bool = False,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.device = torch.device(device) if device is not None else get_device()
        self.model = model.to(self.device)
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.scheduler = scheduler
        self.metrics = dict(metrics or {})
        self.amp_dtype = amp_dtype(self.device, amp)
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {grad_clip}")
        self.grad_clip = grad_clip
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be at least 1, got {accumulation_steps}")
        self.accumulation_steps = accumulation_steps
        self.seed = seed
        self.progress = progress
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.history = History()

    # ------------------------------------------------------------------ batches

    def _loader(self, data: Dataset, batch_size: int, shuffle: bool, epoch: int) -> DataLoader:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(data) == 0:  # type: ignore[arg-type]
            raise ValueError("the data set is empty")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise ValueError("each item of the data set must be an (inputs, targets) pair")
        x, y = batch
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on the batch ``(x, y)``; returns the batch's mean loss.

        With ``accumulation_steps = k > 1`` the batch is processed as ``k`` micro-batches; each
        micro-batch loss is weighted by its share of the batch, so the accumulated gradient is
        the gradient of the whole batch while memory holds one micro-batch's activations.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        k = self.accumulation_steps
        batch_loss = 0.0
        for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
            with autocast(self.device, self.amp_dtype):
                loss = self.loss_fn(self.forward(xs), ys)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {self.step}; lower the learning rate "
                    "or enable gradient clipping"
                )
            share = len(xs) / len(x)
            self.scaler.scale(loss * share if k > 1 else loss).backward()
            batch_loss += loss.item() * share
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        return batch_loss

    @torch.no_grad()
    def evaluate(self, data: Dataset, batch_size: int = 512) -> dict[str, float]:
        """Mean loss and metrics over ``data`` (weighted by batch size), in eval mode."""
        self.model.eval()
        totals: dict[str, float] = {"loss": 0.0, **{k: 0.0 for k in self.metrics}}
        count = 0
        for batch in self._loader(data, batch_size, shuffle=False, epoch=0):
            x, y = self._to_device(batch)
            with autocast(self.device, self.amp_dtype):
                out = self.forward(x)
                totals["loss"] += self.loss_fn(out, y).item() * len(x)
            for name, fn in self.metrics.items():
                totals[name] += fn(out.float(), y).item() * len(x)
            count += len(x)
        return {k: v / count for k, v in totals.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Model outputs for the inputs ``x`` (first dimension is the batch), on the CPU."""
        self.model.eval()
        outs = []
        for start in range(0, len(x), batch_size):
            with autocast(self.device, self.amp_dtype):
                outs.append(self.forward(x[start : start + batch_size].to(self.device)).float())
        return torch.cat(outs).cpu()

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        train_data: Dataset,
        val_data: Dataset | None = None,
        *,
        epochs: int,
        batch_size: int = 64,
        early_stopping: EarlyStopping | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> History:
        """Train until ``epochs`` epochs are complete (counting epochs of a resumed run).

        With ``checkpoint_path`` a checkpoint is written atomically after every epoch; with
        ``resume=True`` training continues from it (if it exists) and ends exactly where an
        uninterrupted run would.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(train_data) == 0:  # type: ignore[arg-type]
            raise ValueError("the training data set is empty")
        if early_stopping is not None and val_data is None:
            raise ValueError("early stopping monitors validation numbers: pass val_data")
        if early_stopping is not None:  # fail now, not after a whole epoch
            columns = ["train_loss", "lr", "val_loss", *(f"val_{k}" for k in self.metrics)]
            if early_stopping.monitor not in columns:
                raise ValueError(
                    f"early stopping monitors {early_stopping.monitor!r}, which is not recorded; "
                    f"choose one of {', '.join(columns)}"
                )
        if resume and checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint_path")
        if resume and os.path.exists(checkpoint_path):  # type: ignore[arg-type]
            self.load(checkpoint_path, early_stopping)  # type: ignore[arg-type]
        if early_stopping is not None and early_stopping.bad_epochs >= early_stopping.patience:
            return self._finish(early_stopping)

        steps_per_epoch = math.ceil(len(train_data) / batch_size)  # type: ignore[arg-type]
        bar = tqdm(
            total=epochs * steps_per_epoch,
            initial=self.epoch * steps_per_epoch,
            disable=not self.progress,
            desc="training",
            unit="step",
        )
        with bar:
            while self.epoch < epochs:
                start = time.perf_counter()
                total, count = 0.0, 0
                for batch in self._loader(train_data, batch_size, True, self.epoch):
                    x, y = self._to_device(batch)
                    total += self.train_step(x, y) * len(x)
                    count += len(x)
                    bar.update()
                row = {
                    "epoch": float(self.epoch + 1),
                    "train_loss": total / count,
                    "lr": self.optimizer.param_groups[0]["lr"],
                }
                if val_data is not None:
                    row.update({f"val_{k}": v for k, v in self.evaluate(val_data).items()})
                row["seconds"] = time.perf_counter() - start
                self.history.rows.append(row)
                self.epoch += 1
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith("val")})
                stop = early_stopping is not None and early_stopping.update(
                    row[early_stopping.monitor], self.epoch, self.model
                )
                if checkpoint_path is not None:
                    self.save(checkpoint_path, early_stopping)
                if stop:
                    break
        return self._finish(early_stopping)

    def _finish(self, early_stopping: EarlyStopping | None) -> History:
        if early_stopping is not None and early_stopping.restore_best and early_stopping.best_state:
            self.model.load_state_dict(early_stopping.best_state)
        return self.history

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self, early_stopping: EarlyStopping | None = None) -> dict[str, Any]:
        """Everything needed to continue this run exactly: weights, optimizer, RNG, counters."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "model_class": type(self.model).__name__,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "history": self.history.rows,
            "cpu_rng": torch.get_rng_state(),
        }
        config = model_config(self.model)
        if config is not None:  # lets load() refuse a model of another configuration
            state["model_config"] = config
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if early_stopping is not None:
            state["early_stopping"] = early_stopping.state_dict()
        return state

    def save(self, path: str | os.PathLike[str], early_stopping: EarlyStopping | None = None):
        """Atomically write a training checkpoint to ``path``."""
        return save_checkpoint(path, self.state_dict(early_stopping))

    def load(self, path: str | os.PathLike[str], early_stopping: EarlyStopping | None = None):
        """Restore a checkpoint written by :meth:`save`, after checking that it was written for
        this model's class and configuration, tensor names and shapes, and this seed.

        Raises:
            CheckpointError: the checkpoint is unreadable or belongs to another model or run.
        """
        state = load_checkpoint(path, self.model, map_location=self.device)
        if state.get("seed") != self.seed:
            raise CheckpointError(
                f"{path} was written by a run with seed {state.get('seed')}, this trainer has "
                f"seed {self.seed}; resuming would not reproduce the interrupted run"
            )
        if (self.scheduler is None) != ("scheduler" not in state):
            raise CheckpointError(f"{path} and this trainer disagree on using a scheduler")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = History(list(state["history"]))
        torch.set_rng_state(state["cpu_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        if early_stopping is not None and "early_stopping" in state:
            early_stopping.load_state_dict(state["early_stopping"])
        return state
