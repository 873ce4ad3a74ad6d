"""Exporting a model out of Python (section 6.6, serving): ``torch.export`` and ONNX.

A trained :class:`~dlbook.finetune.SequenceClassifier` is Python code plus weights. To serve it
without the Python that defines it, it is traced once into a graph of tensor operations:

* :func:`export_classifier` → a :class:`torch.export.ExportedProgram` (PyTorch's own graph
  format, ahead-of-time; :func:`save_exported`/:func:`load_exported` store it in a ``.pt2``
  file), with a **dynamic** batch and sequence dimension, so that one graph serves any batch
  of any length up to ``block_size``;
* :func:`to_onnx` → an ``.onnx`` file (the exchange format that ONNX Runtime, TensorRT and
  browsers run), written by the ``torch.export``-based exporter (``torch.onnx.export(...,
  dynamo=True)``, which needs the ``onnxscript`` package) from the same exported program;
* :func:`onnx_session` and :func:`onnx_logits` run that file with ONNX Runtime (an optional
  dependency: a clear error says how to install it when it is missing).

The graphs take two inputs, ``input_ids (B, T)`` (int64) and ``attention_mask (B, T)`` (bool,
``True`` = real token), and return ``logits (B, K)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlbook.checkpoint import CheckpointError, atomic_write
from dlbook.data.optional import require

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "export_classifier",
    "load_exported",
    "onnx_logits",
    "onnx_session",
    "save_exported",
    "to_onnx",
]

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)


def _inputs(ids: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and normalise ``ids (B, T)`` (integers → int64) and ``mask (B, T)`` (→ bool;
    ``None``: every token real)."""
    ids = torch.as_tensor(ids)
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            f"ids must be integer token ids (B, T), got {ids.dtype} {tuple(ids.shape)}"
        )
    if ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"ids need at least one row and one token, got {tuple(ids.shape)}")
    ids = ids.long()
    if mask is None:
        mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    mask = torch.as_tensor(mask)
    if mask.shape != ids.shape:
        raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}, got "
                         f"{tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must be boolean (or 0/1): True = real token")
        mask = mask.bool()
    # contiguous: torch.export would otherwise tie the sequence length to a slice's stride
    return ids.contiguous(), mask.contiguous()


def _dynamic_shapes(model: nn.Module, ids: torch.Tensor) -> tuple[dict[int, Any], ...]:
    """Dynamic batch and sequence dimensions, shared by both inputs (the sequence at most the
    encoder's ``block_size``)."""
    if ids.shape[0] < 2 or ids.shape[1] < 2:
        raise ValueError(
            "the example batch needs at least 2 rows and 2 tokens, got "
            f"{tuple(ids.shape)}: torch.export treats a size of 1 as a constant, and the graph "
            "would then only accept that size"
        )
    config = getattr(getattr(model, "encoder", None), "config", None)
    block_size = getattr(config, "block_size", None)
    if block_size is not None and ids.shape[1] > block_size:
        raise ValueError(f"the example has {ids.shape[1]} tokens > block_size={block_size}")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=int(block_size) if block_size else 1 << 16)
    return ({0: batch, 1: seq}, {0: batch, 1: seq})


def export_classifier(
    model: nn.Module, example_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.export.ExportedProgram:
    """Trace ``model(ids, mask) → logits (B, K)`` (a :class:`~dlbook.finetune.SequenceClassifier`
    or any module with that call) into an :class:`~torch.export.ExportedProgram` whose batch
    and sequence dimensions are dynamic.

    The model is traced in eval mode (no dropout) and left in the mode it was in. Call the
    result with ``program.module()(ids, mask)``.

    Args:
        model: the classifier.
        example_ids: example token ids ``(B, T)``, ``B >= 2`` and ``2 <= T <= block_size``
            (any values: only their shape and dtype matter).
        mask: example boolean mask ``(B, T)`` (``None``: all real).

    Raises:
        ValueError: badly shaped examples (see above).
    """
    ids, mask = _inputs(example_ids, mask)
    shapes = _dynamic_shapes(model, ids)
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(model, (ids, mask), dynamic_shapes=shapes)
    finally:
        model.train(was_training)


def save_exported(program: torch.export.ExportedProgram, path: str | os.PathLike[str]) -> Path:
    """Write ``program`` to ``path`` (a ``.pt2`` file, :func:`torch.export.save`) atomically."""
    return atomic_write(path, lambda tmp: torch.export.save(program, tmp))


def load_exported(path: str | os.PathLike[str]) -> torch.export.ExportedProgram:
    """Read a program written by :func:`save_exported`.

    Raises:
        CheckpointError: the file is missing or not a saved program.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no exported program at {path}")
    try:
        return torch.export.load(path)
    except Exception as e:  # a zip error, a pickle error, a version mismatch...
        raise CheckpointError(f"{path} is not a readable exported program: {e}") from e


def to_onnx(
    model: nn.Module | torch.export.ExportedProgram,
    path: str | os.PathLike[str],
    example_ids: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    opset_version: int | None = None,
    optimize: bool = True,
) -> Path:
    """Write the classifier as an ONNX model to ``path`` (atomically) and return the path.

    Uses the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``), which
    translates the exported graph operator by operator through ``onnxscript``. Its inputs are
    ``input_ids (B, T)`` int64 and ``attention_mask (B, T)`` bool, its output ``logits (B, K)``;
    batch and sequence are dynamic.

    Args:
        model: the classifier, or an :class:`~torch.export.ExportedProgram` of it (from
            :func:`export_classifier`: tracing is the slow part, do it once).
        path: the ``.onnx`` file to write.
        example_ids, mask: example inputs, needed when ``model`` is a module (see
            :func:`export_classifier`).
        opset_version: the ONNX operator set (``None``: the exporter's default).
        optimize: let the exporter simplify the graph (constant folding, fusing).

    Raises:
        ValueError: a module without example inputs.
        dlbook.data.optional.MissingDependencyError: ``onnx``/``onnxscript`` not installed.
    """
    require("onnxscript", "onnxscript", "exporting to ONNX")
    if not isinstance(model, torch.export.ExportedProgram):
        if example_ids is None:
            raise ValueError("to_onnx needs example_ids when given a module (or pass an "
                             "ExportedProgram from export_classifier)")
        model = export_classifier(model, example_ids, mask)
    program = torch.onnx.export(
        model,
        dynamo=True,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        opset_version=opset_version,
        optimize=optimize,
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns an ONNXProgram
    return atomic_write(path, lambda tmp: program.save(tmp))


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime ``InferenceSession`` for the model file ``path`` on the CPU
    (``threads``: intra-op threads, ``None``: ONNX Runtime's default).

    Raises:
        dlbook.data.optional.MissingDependencyError: ``onnxruntime`` is not installed.
        CheckpointError: the file is missing or is not a valid ONNX model.
    """
    ort = require("onnxruntime", "onnxruntime", "running ONNX models")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no ONNX model at {path}")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # InvalidProtobuf, Fail, ... (onnxruntime's own classes)
        raise CheckpointError(f"{path} is not a valid ONNX model: {e}") from e


def onnx_logits(
    model: str | os.PathLike[str] | Any,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run an ONNX classifier with ONNX Runtime: ``ids (B, T)``, ``mask (B, T)`` (``None``: all
    real) → ``logits (B, K)`` (a float32 CPU tensor).

    Args:
        model: the ``.onnx`` path (a session is opened for this call) or a session from
            :func:`onnx_session` (reuse one for many calls).
        ids, mask: as for the eager model.

    Raises:
        ValueError: badly shaped inputs; CheckpointError: see :func:`onnx_session`.
    """
    session = onnx_session(model) if isinstance(model, (str, os.PathLike)) else model
    ids, mask = _inputs(ids, mask)
    feeds = {INPUT_NAMES[0]: ids.cpu().numpy(), INPUT_NAMES[1]: mask.cpu().numpy()}
    (logits,) = session.run(list(OUTPUT_NAMES), feeds)
    return torch.from_numpy(logits)
