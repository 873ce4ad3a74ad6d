"""The cache of the book's own trained runs, keyed by a hash of their configuration.

A section that needs a model trained in an earlier section asks for it here instead of
depending on the order the chapters run in. :func:`cached_run` is the mechanism, for any run
described by a dataclass configuration: the first call trains (``build``) and saves into
``cache_dir()/runs/<name>-<key>``, where ``<key>`` is :func:`config_key` of the configuration;
later calls load (``load``) in seconds, a changed configuration never loads a stale result, and
an entry that cannot be read (corrupt or partial files) is reported with a warning and rebuilt.

The book's character-level GPT of section 4.3 (:func:`pretrained_kjv_run`,
:func:`pretrained_kjv_gpt`) is the first user. Real published weights are a different thing and
come from :mod:`dlbook.hub`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dlbook.checkpoint import CheckpointError, atomic_write, load_model, read_json, save_model
from dlbook.config import PROFILES, cache_dir
from dlbook.config import profile as active_profile
from dlbook.data.lm import read_tokens, split_tokens, write_tokens
from dlbook.data.text import CharTokenizer, load_kjv
from dlbook.nn.gpt import GPT
from dlbook.pretrain import PretrainConfig, pretrain

__all__ = [
    "PretrainedRun",
    "cached_record_run",
    "cached_run",
    "config_key",
    "kjv_config",
    "kjv_tokens",
    "pretrained_kjv_gpt",
    "pretrained_kjv_run",
    "run_directory",
]

CACHE_VERSION = 1  # bump when the training code changes what a configuration produces
MARKER = "run.json"  # written last: an entry without it is unfinished

T = TypeVar("T")


def _plain(config: Any) -> Any:
    """``config`` as JSON values (tuples become lists), for hashing and comparison."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"expected a dataclass configuration, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_key(config: Any, extra: str = "") -> str:
    """A 16-hex-digit hash of the dataclass ``config`` (and ``extra``, e.g. the corpus name):
    the cache key.

    Any change of any field gives a different key, so a cached result is only ever reused by
    exactly the configuration that produced it.
    """
    blob = json.dumps(
        {"version": CACHE_VERSION, "extra": extra, "type": type(config).__name__,
         "config": _plain(config)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_directory(name: str, config: Any) -> Path:
    """``cache_dir()/runs/<name>-<config_key(config, name)>``: where :func:`cached_run` keeps
    the run ``name`` of ``config``."""
    if not name or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise ValueError(f"a run name is letters, digits, '-', '_' or '.', got {name!r}")
    return cache_dir() / "runs" / f"{name}-{config_key(config, name)}"


def cached_run(
    name: str,
    config: Any,
    build: Callable[[Path], T],
    load: Callable[[Path], T],
    *,
    retrain: bool = False,
) -> tuple[T, bool]:
    """The result of the run ``name`` with the dataclass ``config``, built once and cached.

    ``build(directory)`` trains and writes its files into ``directory`` (it may resume from a
    checkpoint it left there when interrupted) and returns the result; ``load(directory)``
    reads them back and raises :class:`~dlbook.checkpoint.CheckpointError` when it cannot.
    A marker file (``run.json``, holding the configuration) is written after ``build`` returns,
    so an interrupted build is never mistaken for a finished one.

    Args:
        name: the run's name, e.g. ``"kjv-char-gpt"`` (part of the folder name and the key).
        config: a dataclass describing everything that determines the result.
        build, load: see above.
        retrain: ignore a cached result and build again.

    Returns:
        ``(result, built_now)``.
    """
    directory = run_directory(name, config)
    marker = directory / MARKER
    if not retrain and directory.exists():
        try:
            meta = read_json(marker, "no finished run here")
            if not isinstance(meta, dict) or meta.get("config") != _plain(config):
                raise CheckpointError(f"{marker} was written for a different configuration")
            return load(directory), False
        except CheckpointError as e:
            warnings.warn(f"cached {name} unusable, retraining: {e}", stacklevel=2)
    marker.unlink(missing_ok=True)
    result = build(directory)
    meta = {"name": name, "type": type(config).__name__, "config": _plain(config)}
    atomic_write(marker, lambda p: p.write_text(json.dumps(meta, indent=1)))
    return result, True


ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.json"


def cached_record_run(
    name: str,
    config: Any,
    train: Callable[[Path], dict],
    *,
    adapter: bool = True,
) -> tuple[dict, Path | None, bool]:
    """A fine-tuning run that leaves measurements (a JSON record) and an adapter, cached.

    The pattern of sections 5.4–5.8 on top of :func:`cached_run`: ``train(adapter_path)``
    trains, saves the adapter it trained to ``adapter_path`` (e.g. with
    :func:`dlbook.lora.save_adapter`) and returns the record of its measurements, which is
    written atomically to ``metrics.json``. A cached entry whose adapter or record is missing or
    unreadable is rebuilt. With ``adapter=False`` (e.g. a full fine-tune, whose weights are not
    kept) only the record is stored and ``adapter_path`` is ``None`` in ``train``'s call.

    Returns:
        ``(record, adapter path or None, built_now)``.
    """

    def adapter_path(directory: Path) -> Path | None:
        return directory / ADAPTER_FILE if adapter else None

    def build(directory: Path) -> dict:
        directory.mkdir(parents=True, exist_ok=True)
        record = train(adapter_path(directory))
        atomic_write(directory / METRICS_FILE, lambda p: p.write_text(json.dumps(record)))
        return record

    def load(directory: Path) -> dict:
        if adapter and not (directory / ADAPTER_FILE).is_file():
            raise CheckpointError(f"{directory} has no {ADAPTER_FILE}")
        return read_json(directory / METRICS_FILE, f"no {METRICS_FILE}")

    record, built = cached_run(name, config, build, load)
    return record, adapter_path(run_directory(name, config)), built


# --------------------------------------------------------------------------- the 4.3 run

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


@dataclass
class PretrainedRun:
    """The book's pretrained model with everything the book reports about its training."""

    model: GPT
    tokenizer: CharTokenizer
    config: PretrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    directory: Path | None = None
    trained_now: bool = False


KJV_RUN = "kjv-char-gpt"


def _load_kjv_run(directory: Path, config: PretrainConfig) -> PretrainedRun:
    history = read_json(directory / "history.json", "no training history")
    if not isinstance(history, list):
        raise CheckpointError(f"{directory / 'history.json'} is not a list of evaluations")
    try:
        tokenizer = CharTokenizer.load(directory / "tokenizer.json")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory}: unreadable tokenizer: {e}") from e
    model = load_model(directory, {"GPT": GPT})
    if model.config.vocab_size != tokenizer.vocab_size:  # type: ignore[union-attr]
        raise CheckpointError(f"{directory}: the model and the tokenizer do not match")
    return PretrainedRun(model, tokenizer, config, history, directory)  # type: ignore[arg-type]


def _build_kjv_run(directory: Path, config: PretrainConfig, resume: bool) -> PretrainedRun:
    tokenizer, data = kjv_tokens(config)
    train_data, val_data = split_tokens(data, config.val_fraction)
    result = pretrain(
        config, train_data, val_data, tokenizer.vocab_size,
        checkpoint_path=directory / "train.pt", resume=resume,
    )
    save_model(result.model, directory)
    tokenizer.save(directory / "tokenizer.json")
    atomic_write(directory / "history.json", lambda p: p.write_text(json.dumps(result.history)))
    (directory / "train.pt").unlink(missing_ok=True)  # the model file is all a user needs
    return PretrainedRun(result.model, tokenizer, config, result.history, directory, True)


def pretrained_kjv_run(
    profile: str | None = None, *, config: PretrainConfig | None = None, retrain: bool = False
) -> PretrainedRun:
    """The character-level GPT pretrained on the King James Bible, with its training history.

    On first use the model is trained with :func:`dlbook.pretrain.pretrain` (minutes in the
    ``book`` profile on a CPU; an interrupted training resumes from its checkpoint) and saved
    with :func:`dlbook.checkpoint.save_model` plus the tokenizer and history by
    :func:`cached_run`. Later calls load it in seconds. A cache entry that cannot be read
    (corrupt or partial files) is reported with a warning and retrained.

    Args:
        profile: which of the book's configurations (:func:`kjv_config`); default: active one.
        config: a configuration of your own instead of the profile's.
        retrain: ignore a cached model and train again.
    """
    config = kjv_config(profile) if config is None else config
    if not isinstance(config, PretrainConfig):
        raise ValueError(f"config must be a PretrainConfig, got {type(config).__name__}")
    run, _ = cached_run(
        KJV_RUN, config,
        build=lambda d: _build_kjv_run(d, config, resume=not retrain),
        load=lambda d: _load_kjv_run(d, config),
        retrain=retrain,
    )
    return run


def pretrained_kjv_gpt(profile: str | None = None) -> tuple[GPT, CharTokenizer]:
    """``(model, tokenizer)`` of :func:`pretrained_kjv_run`: a character-level GPT trained on
    the King James Bible (trained on first use, then loaded from the cache), in eval mode on
    the CPU."""
    run = pretrained_kjv_run(profile)
    return run.model.cpu().eval(), run.tokenizer
