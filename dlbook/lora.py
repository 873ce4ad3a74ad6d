"""LoRA: low-rank adaptation of a frozen model (Hu et al., 2021).

A frozen linear map ``W`` (``out × in``) is fine-tuned by learning only a low-rank update::

    y = W x + (alpha / r) · B A dropout(x),    A: (r × in),  B: (out × r),  r ≪ min(in, out)

``A`` starts like a default ``nn.Linear`` weight (Kaiming-uniform, ``a = sqrt(5)``, as in
Microsoft's ``loralib`` and Hugging Face ``peft``) and ``B`` starts at zero, so the adapted model
is *exactly* the pretrained one at step 0. After training, ``W + (alpha/r) B A`` can be merged
into the base weight so that inference costs nothing extra.

The pieces:

* :class:`LoRALinear` wraps any linear-like module (``in_features``, ``out_features`` and a
  ``forward``; ``nn.Linear`` or a quantised linear), freezes it and adds the low-rank path.
* :func:`apply_lora` swaps matching linears of a model for :class:`LoRALinear` and freezes the
  rest; :func:`trainable_parameters` counts what is left to train.
* :func:`save_adapter` / :func:`load_adapter` store only the LoRA tensors (a small safetensors
  file) with the rank, alpha, targets and a fingerprint of the base model, and refuse to load an
  adapter into a model it was not trained for.

A note on the library's :class:`~dlbook.nn.GPT`: its attention computes queries, keys and values
with one fused linear ``c_attn`` (``C → 3C``). Targeting ``c_attn`` gives *one* adapter for the
three projections: a shared ``A`` (``r × C``) and a ``B`` of ``3C × r`` whose three row blocks
update ``W_q``, ``W_k`` and ``W_v``. The update of the fused weight has rank ≤ ``r`` in total
(the three share the input subspace spanned by ``A``'s rows) and costs ``4 r C`` parameters,
where separate ``q``/``k``/``v`` adapters of rank ``r`` (``peft`` on a Llama) cost ``6 r C`` and
reach rank ``r`` each. It is not possible to adapt only ``W_q`` and ``W_v`` (the choice of the
LoRA paper) through a fused ``c_attn``; to do that, adapt the fused layer and accept the ``K``
update, or split the layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dlbook.checkpoint import atomic_write
from dlbook.config import check_int

#: Version of the adapter file layout written by :func:`save_adapter`.
ADAPTER_FORMAT = "dlbook-lora-1"


class AdapterError(ValueError):
    """An adapter file does not fit the model it is loaded into (nothing was loaded)."""


class LoRALinear(nn.Module):
    """A frozen linear-like module plus a trainable low-rank update.

    ``forward(x)`` with ``x (..., in_features)`` returns ``(..., out_features)``::

        base(x) + (alpha / r) · lora_B(lora_A(dropout(x)))

    Dropout acts on the input of the low-rank path only; the frozen path sees ``x`` unchanged.

    Args:
        base: any module with ``in_features``, ``out_features`` and ``forward(x)``; its
            parameters are frozen (``requires_grad = False``).
        r: rank of the update (``>= 1``).
        alpha: scale numerator; the update is multiplied by ``alpha / r``, so that changing ``r``
            does not change the size of the initial updates much (and the learning rate need not
            be re-tuned).
        dropout: dropout probability on the input of the low-rank path, in ``[0, 1)``.

    ``lora_A`` (``r × in``) and ``lora_B`` (``out × r``) are bias-free ``nn.Linear`` layers kept
    in float32 (float64 if the base is float64), whatever the base's dtype, because a 16-bit or
    4-bit base would make the small updates round away.
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if isinstance(base, LoRALinear):
            raise TypeError("base is already a LoRALinear; wrap its .base or skip it")
        if not (hasattr(base, "in_features") and hasattr(base, "out_features")):
            raise TypeError(
                f"{type(base).__name__} is not linear-like: LoRALinear needs a module with "
                "in_features and out_features attributes"
            )
        check_int("rank r", r)
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.base = base
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        self.r, self.alpha, self.dropout_p = r, float(alpha), float(dropout)
        self.scaling = self.alpha / r
        self.merged = False
        for p in base.parameters():
            p.requires_grad_(False)
        ref = next(iter(base.parameters()), None)
        if ref is None:
            ref = next(iter(base.buffers()), torch.empty(0))
        dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        kw = {"device": ref.device, "dtype": dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **kw)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """``A`` like a default ``nn.Linear`` weight (Kaiming-uniform, ``a = sqrt(5)``), ``B = 0``:
        the update ``B A`` is zero, so the wrapped module starts as the base module."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) · B A`` as a dense ``(out_features, in_features)`` matrix."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in_features)`` → ``(..., out_features)``."""
        y = self.base(x)
        if self.merged:
            return y
        lora_x = self.dropout(x.to(self.lora_A.weight.dtype))
        return y + (self.lora_B(self.lora_A(lora_x)) * self.scaling).to(y.dtype)

    def _dense_base(self, action: str) -> nn.Linear:
        if not isinstance(self.base, nn.Linear):
            raise TypeError(
                f"cannot {action} LoRA into a {type(self.base).__name__}: merging needs an "
                "nn.Linear base with a dense weight (dequantise it first, or keep the adapter "
                "unmerged)"
            )
        return self.base

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``(alpha/r) B A`` into the base weight, so inference runs the base layer only.

        The update is computed in float32 (or float64) and added in the weight's dtype. A weight
        tied to another layer (the GPT's ``lm_head`` and ``wte``) changes in both places.

        Raises:
            TypeError: the base is not an ``nn.Linear`` (e.g. quantised).
            RuntimeError: already merged.
        """
        base = self._dense_base("merge")
        if self.merged:
            raise RuntimeError("this LoRALinear is already merged; call unmerge() first")
        w = base.weight
        w.copy_((w.to(self.lora_A.weight.dtype) + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update merged by :meth:`merge` (exact up to float rounding).

        Raises:
            TypeError: the base is not an ``nn.Linear``.
            RuntimeError: not merged.
        """
        base = self._dense_base("unmerge")
        if not self.merged:
            raise RuntimeError("this LoRALinear is not merged; nothing to unmerge")
        w = base.weight
        w.copy_((w.to(self.lora_A.weight.dtype) - self.delta_weight()).to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, dropout={self.dropout_p:g}, merged={self.merged}"
        )


def _patterns(target: str | Iterable[str]) -> list[str]:
    patterns = [target] if isinstance(target, str) else list(target)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"target must be a non-empty pattern or list of patterns, got {target!r}")
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"target pattern {p!r} is not a valid regular expression: {e}") from e
    return patterns


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether module ``name`` matches one of ``patterns``: a pattern matches a name that ends
    with it after a dot (``"c_attn"`` matches ``"blocks.0.attn.c_attn"``) or that it matches
    entirely as a regular expression (``r"blocks\\.[0-3]\\..*c_attn"``)."""
    return any(
        name == p or name.endswith("." + p) or re.fullmatch(p, name) is not None
        for p in patterns
    )


def _is_linear_like(module: nn.Module) -> bool:
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def apply_lora(
    model: nn.Module,
    target: str | Iterable[str],
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    freeze_base: bool = True,
) -> list[str]:
    """Replace the linear-like modules of ``model`` whose names match ``target`` by
    :class:`LoRALinear` wrappers, in place, and return their names (sorted).

    Args:
        model: any module (a library GPT, encoder, classifier, or a plain ``nn.Module``).
        target: a pattern or list of patterns on module names, see :func:`name_matches`; for the
            library's Transformers, e.g. ``"c_attn"`` (fused Q, K, V; see the module docstring),
            ``["c_attn", "attn.c_proj"]`` (all of attention) or ``"c_fc"``.
        r, alpha, dropout: see :class:`LoRALinear`.
        freeze_base: freeze every parameter of ``model`` that is not a LoRA parameter (unfreeze
            a new task head yourself afterwards).

    Raises:
        ValueError: no linear-like module matches (the message lists some that would), or the
            model already has LoRA layers.
    """
    patterns = _patterns(target)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(
            "model already has LoRA layers; apply_lora once per model (merge or reload it first)"
        )
    linear_names = [n for n, m in model.named_modules() if n and _is_linear_like(m)]
    names = sorted(n for n in linear_names if name_matches(n, patterns))
    if not names:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        raise ValueError(
            f"target {patterns} matches no linear layer of {type(model).__name__}; "
            f"linear layer names end in: {', '.join(suffixes) or '(none)'}"
        )
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` modules of ``model`` by name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model`` (see :meth:`LoRALinear.merge`); return how many."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; return how many layers were unmerged."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def remove_lora(model: nn.Module, merge: bool = False) -> list[str]:
    """Put the base modules back in place of ``model``'s LoRA layers, in place; return their
    names. With ``merge``, the updates are merged into the base weights first (what to ship
    when only the adapted model is needed); without, the base model is restored as it was.

    The base parameters stay frozen (``requires_grad = False``); unfreeze them for full
    fine-tuning.
    """
    layers = lora_layers(model)
    for name, layer in layers.items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    return list(layers)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors of ``model``: ``{"<layer>.lora_A.weight": (r, in), "<layer>.lora_B
    .weight": (out, r)}`` for each LoRA layer."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{name}.lora_A.weight"] = layer.lora_A.weight
        state[f"{name}.lora_B.weight"] = layer.lora_B.weight
    return state


def model_fingerprint(model: nn.Module) -> str:
    """A short hash that identifies the architecture of ``model`` with or without LoRA layers.

    It hashes the class name, the dataclass ``config`` (when the model has one) and the names
    and shapes of all tensors that are not LoRA tensors (``.base.`` removed from the names, so
    the same model hashes alike before and after :func:`apply_lora`). It identifies an
    architecture, not particular weights: two models of the same config share it.
    """
    config = getattr(model, "config", None)
    config_json = (
        json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
        if dataclasses.is_dataclass(config) and not isinstance(config, type)
        else ""
    )
    shapes = sorted(
        (k.replace(".base.", "."), tuple(v.shape))
        for k, v in model.state_dict().items()
        if ".lora_A." not in k and ".lora_B." not in k
    )
    text = json.dumps([type(model).__name__, config_json, shapes])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _adapter_config(model: nn.Module) -> dict[str, object]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no LoRA layers; call apply_lora(model, target, r) first"
        )
    ranks = {(m.r, m.alpha) for m in layers.values()}
    if len(ranks) != 1:
        raise ValueError(f"LoRA layers have mixed (rank, alpha) {sorted(ranks)}; not supported")
    (r, alpha), = ranks
    return {"r": r, "alpha": alpha, "targets": list(layers)}


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write only the LoRA tensors of ``model`` to the safetensors file ``path``, atomically.

    The file's metadata holds the format, rank, alpha, the names of the adapted layers and
    :func:`model_fingerprint` of the base model, which :func:`load_adapter` checks. The file is
    small: ``r (in + out)`` numbers per adapted layer.

    Raises:
        ValueError: the model has no LoRA layers (or layers of different ranks).
    """
    cfg = _adapter_config(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in
               lora_state_dict(model).items()}
    meta = {
        "format": ADAPTER_FORMAT,
        "r": str(cfg["r"]),
        "alpha": repr(cfg["alpha"]),
        "targets": json.dumps(cfg["targets"]),
        "model_class": type(model).__name__,
        "fingerprint": model_fingerprint(model),
    }
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def adapter_metadata(path: str | os.PathLike[str]) -> dict[str, object]:
    """The metadata of an adapter file: ``r`` (int), ``alpha`` (float), ``targets`` (list),
    ``model_class``, ``fingerprint``, ``format``.

    Raises:
        AdapterError: the file is missing, unreadable or not a dlbook adapter.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"no adapter file at {path}; save one with save_adapter(model, path)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise AdapterError(f"{path} is not a readable safetensors file ({e})") from e
    if meta.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{path} is not a dlbook LoRA adapter (format {meta.get('format')!r})")
    return {
        "format": meta["format"],
        "r": int(meta["r"]),
        "alpha": float(meta["alpha"]),
        "targets": json.loads(meta["targets"]),
        "model_class": meta["model_class"],
        "fingerprint": meta["fingerprint"],
    }


@torch.no_grad()
def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, object]:
    """Copy the LoRA tensors saved by :func:`save_adapter` into ``model``'s LoRA layers and
    return the file's metadata (see :func:`adapter_metadata`).

    ``model`` must already carry LoRA layers of the same rank, alpha and targets
    (``apply_lora(model, target, r, alpha)``). Every check runs before anything is copied, so
    a refused adapter leaves the model as it was.

    Raises:
        AdapterError: unreadable file, other base model (fingerprint), other rank, alpha or
            targets, merged layers, or tensors of the wrong shape.
    """
    meta = adapter_metadata(path)
    if not lora_layers(model):
        raise AdapterError(
            f"{type(model).__name__} has no LoRA layers; call apply_lora(model, target=..., "
            f"r={meta['r']}, alpha={meta['alpha']:g}) before load_adapter"
        )
    cfg = _adapter_config(model)
    fingerprint = model_fingerprint(model)
    if meta["fingerprint"] != fingerprint:
        raise AdapterError(
            f"{path} was saved for another base model ({meta['model_class']}, fingerprint "
            f"{meta['fingerprint']}), not this {type(model).__name__} ({fingerprint})"
        )
    if meta["r"] != cfg["r"] or meta["alpha"] != cfg["alpha"]:
        raise AdapterError(
            f"{path} has rank {meta['r']}, alpha {meta['alpha']:g} but the model's LoRA layers "
            f"have rank {cfg['r']}, alpha {cfg['alpha']:g}; apply_lora with the adapter's values"
        )
    if meta["targets"] != cfg["targets"]:
        only_file = sorted(set(meta["targets"]) - set(cfg["targets"]))  # type: ignore[arg-type]
        only_model = sorted(set(cfg["targets"]) - set(meta["targets"]))  # type: ignore[arg-type]
        raise AdapterError(
            f"{path} adapts other layers than the model: only in the file {only_file[:3]}, "
            f"only in the model {only_model[:3]}; apply_lora with the adapter's targets"
        )
    layers = lora_layers(model)
    if any(m.merged for m in layers.values()):
        raise AdapterError("the model's LoRA layers are merged; unmerge_lora(model) first")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    own = lora_state_dict(model)
    if tensors.keys() != own.keys():
        raise AdapterError(f"{path} holds other tensors than the model's LoRA layers")
    bad = [k for k in own if tuple(tensors[k].shape) != tuple(own[k].shape)]
    if bad:
        raise AdapterError(
            f"{path}: tensor {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, the model "
            f"expects {tuple(own[bad[0]].shape)}"
        )
    for k, v in own.items():
        v.copy_(tensors[k])
    return meta


__all__ = [
    "ADAPTER_FORMAT",
    "AdapterError",
    "LoRALinear",
    "adapter_metadata",
    "apply_lora",
    "load_adapter",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "model_fingerprint",
    "name_matches",
    "remove_lora",
    "save_adapter",
    "trainable_parameters",
    "unmerge_lora",
]
