"""Saving and loading: model weights as safetensors + JSON config, training state for resume.

Two formats, two jobs:

* A **model file** (``save_model``/``load_model``) is what you ship: a directory with
  ``model.safetensors`` (tensors only, no code, safe to open from anyone) and ``config.json``
  (the dataclass config that rebuilds the architecture).
* A **training checkpoint** (``save_checkpoint``/``load_checkpoint``) is what you resume from:
  model, optimizer, scheduler, step counters and random-number state, written with
  ``torch.save`` and read back with ``weights_only=True``, which refuses to unpickle code.

Every file is written atomically (temporary file, ``fsync``, ``os.replace``), so a crash while
saving never leaves a half-written file where a good one used to be.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint or model file is missing, unreadable, or belongs to a different model."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one atomic step.

    The temporary file lives in the destination directory so that ``os.replace`` never crosses
    a file system; on any error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s tensor names/shapes.

    The message lists what is missing, unexpected or mis-shaped, so a checkpoint of another model
    is diagnosed rather than half-loaded.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    problems = describe_mismatch(expected, found)
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {problems}")


def describe_mismatch(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> str:
    """What differs between two ``name -> shape`` maps, in one line; ``""`` when they agree.

    Lists (a few of) the names missing from ``found``, the unexpected ones, and the mis-shaped.
    """
    found = {k: tuple(v) for k, v in found.items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = [
        f"{k}: found {found[k]} vs expected {tuple(expected[k])}"
        for k in sorted(expected.keys() & found.keys())
        if tuple(expected[k]) != found[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected {_preview(unexpected)}")
    if reshaped:
        problems.append(f"shape mismatch {_preview(reshaped)}")
    return "; ".join(problems)


def _preview(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------- model files


def save_model(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json``.

    ``model`` must carry its architecture in a dataclass attribute ``config`` (every model in
    :mod:`dlbook.nn` does), which is what :func:`load_model` rebuilds it from.
    """
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(
            f"{type(model).__name__} has no dataclass `config` attribute; save its state_dict "
            "with safetensors directly, or give the model a config"
        )
    directory = Path(directory)
    # safetensors refuses shared storage (e.g. tied embeddings); contiguous clones are safe.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "config": dataclasses.asdict(config),
    }
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
    atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return directory


def read_json(path: str | os.PathLike[str], missing: str = "missing") -> Any:
    """Parse the JSON file ``path``; ``CheckpointError`` (saying ``missing`` when the file does
    not exist) instead of a bare ``OSError``/``JSONDecodeError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (corrupt file?): {e}") from e


def _check_format_version(found: Any, source: str) -> None:
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise CheckpointError(f"{source} has no valid format_version ({found!r}); damaged file?")
    if found > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has format version {found}; this dlbook reads up to "
            f"{FORMAT_VERSION}. Upgrade dlbook."
        )


def read_model_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the parsed ``config.json`` of a model directory (keys ``format_version``,
    ``model_class``, ``config``), after checking that this dlbook can read its format."""
    path = Path(directory) / CONFIG_NAME
    meta = read_json(path, "no model config; was the model saved with save_model?")
    if not isinstance(meta, dict) or "model_class" not in meta or "config" not in meta:
        raise CheckpointError(f"{path} is not a dlbook model config")
    _check_format_version(meta.get("format_version"), str(path))
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{path}: 'config' is not a mapping of field values")
    return meta


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """``model.config`` as plain JSON values (tuples become lists), or ``None`` when the model
    has no dataclass ``config``; what checkpoints store to recognise an architecture."""
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check_same_config(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` if ``state`` records a ``model_config``/``model_class``
    different from ``model``'s: two architectures can have tensors of the same names and shapes
    (e.g. a different ``n_head``), so comparing shapes alone would load the wrong model."""
    found, expected = state.get("model_config"), model_config(model)
    if "model_class" in state and state["model_class"] != type(model).__name__:
        raise CheckpointError(
            f"{source} holds a {state['model_class']}, not a {type(model).__name__}"
        )
    if found is None or expected is None or found == expected:
        return
    if not isinstance(found, dict):
        raise CheckpointError(f"{source}: its model_config is not a mapping (damaged file?)")
    diff = [
        f"{k}: checkpoint {found.get(k)!r} vs model {expected.get(k)!r}"
        for k in sorted(found.keys() | expected.keys())
        if found.get(k) != expected.get(k)
    ]
    raise CheckpointError(
        f"{source} was written for another {type(model).__name__} configuration: "
        + _preview(diff)
    )


def load_model(
    directory: str | os.PathLike[str],
    registry: Mapping[str, type[nn.Module]],
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` and load its weights, in eval mode.

    Args:
        directory: the folder holding ``model.safetensors`` and ``config.json``.
        registry: allowed model classes by name, e.g. ``{"MLP": MLP}``; each must take its
            config dataclass as the only constructor argument and expose ``config_class``.
            Nothing outside the registry is ever instantiated.
        map_location: device for the loaded weights.

    Raises:
        CheckpointError: missing/corrupt files, an unknown model class, or weights that do not fit.
    """
    directory = Path(directory)
    meta = read_model_config(directory)
    name = meta["model_class"]
    if name not in registry:
        raise CheckpointError(
            f"{directory} holds a {name!r}, which is not one of {sorted(registry)}"
        )
    cls = registry[name]
    config_class = cls.config_class
    try:  # a damaged or foreign config.json is a bad file, not a bug in the caller
        model = cls(config_class(**meta["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}: config does not fit {name}: {e}") from e
    state = read_safetensors(directory / WEIGHTS_NAME)
    check_compatible(model, state, str(directory / WEIGHTS_NAME))
    model.load_state_dict(state)
    return model.to(map_location).eval()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; :class:`CheckpointError` if absent or unreadable."""
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt?): {e}") from e


# --------------------------------------------------------------------------- training checkpoints


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write a training checkpoint (nested dicts of tensors and plain Python values).

    ``state`` must contain ``"model"`` (a state dict); add ``"model_class"`` and
    ``"model_config"`` (:func:`model_config`) so that :func:`load_checkpoint` can refuse a
    model of another configuration. A format version is added so that future readers can
    refuse files they do not understand.
    """
    if "model" not in state:
        raise ValueError("a training checkpoint needs a 'model' state dict")
    payload = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda p: torch.save(payload, p))


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``).

    When ``model`` is given, the checkpoint is checked against it before anything is returned:
    the model class and configuration it recorded (``model_class``/``model_config``, which
    :meth:`dlbook.train.Trainer.state_dict` stores) must equal ``model``'s, and its tensors
    must have ``model``'s names and shapes. A checkpoint that recorded no configuration (one
    saved by hand) is checked by names and shapes only.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, not a dlbook checkpoint, of a
            newer format, or made for a different model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for damaged zip/pickle streams
        raise CheckpointError(
            f"{path} could not be read as a checkpoint (corrupt, truncated, or it contains "
            f"objects other than tensors and plain values): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(state, dict) or "model" not in state or "format_version" not in state:
        raise CheckpointError(f"{path} is not a dlbook training checkpoint")
    _check_format_version(state["format_version"], str(path))
    if model is not None:
        check_same_config(model, state, str(path))
        check_compatible(model, state["model"], str(path))
    return state
