"""Probes that look inside a network: gradient norms and activation statistics per layer.

Section 2.6 uses them to watch gradients vanish or explode layer by layer; later parts reuse
them to diagnose training runs.

* :func:`grad_norms` reads the gradients left by ``loss.backward()``.
* :func:`activation_stats` runs one forward pass with temporary forward hooks and returns the
  mean, standard deviation and root mean square of each selected layer's output. The hooks are
  removed afterwards, also when the forward pass raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = ["activation_stats", "grad_norms"]


def grad_norms(
    model: nn.Module, by: Literal["parameter", "module"] = "parameter"
) -> dict[str, float]:
    """Euclidean (L2) norms of the gradients stored in ``model``'s parameters.

    Call it after ``loss.backward()``. The result keeps the order of ``model.named_parameters()``.

    Args:
        model: any module whose parameters have ``.grad`` set.
        by: ``"parameter"``: one entry per parameter tensor, keyed by its name
            (``"net.0.weight"``); ``"module"``: one entry per module that owns parameters
            directly, keyed by the module's name (``"net.0"``), the norm of all its parameters'
            gradients together, :math:`\\sqrt{\\sum_p \\|g_p\\|^2}`.

    Parameters without a gradient (frozen, or unused in the forward pass) are skipped.

    Raises:
        ValueError: if ``by`` is not one of the two choices, or no parameter has a gradient
            (``backward()`` has not been called).
    """
    if by not in ("parameter", "module"):
        raise ValueError(f"by must be 'parameter' or 'module', not {by!r}")
    squares: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        key = name if by == "parameter" else name.rpartition(".")[0]
        squares[key] = squares.get(key, 0.0) + float(p.grad.detach().double().pow(2).sum())
    if not squares:
        raise ValueError(
            "no parameter of the model has a gradient; call loss.backward() before grad_norms()"
        )
    return {k: v**0.5 for k, v in squares.items()}


def activation_stats(
    model: nn.Module,
    x: torch.Tensor,
    layer_types: type[nn.Module] | Sequence[type[nn.Module]] = (nn.Linear,),
    *,
    grad: bool = False,
) -> dict[str, dict[str, float]]:
    """Statistics of the outputs of every layer of the given types, for one forward pass.

    Args:
        model: the network; it is called as ``model(x)`` in whatever mode (train/eval) it is in.
        x: an input batch, e.g. ``(batch, features)``.
        layer_types: the module classes to watch (``nn.Linear`` by default, so the statistics
            are those of the pre-activations); a class or a sequence of classes.
        grad: run the forward pass with autograd on (default off, which saves memory).

    Returns:
        ``{module_name: {"mean": m, "std": s, "rms": r}}`` in the order the modules ran, where
        ``m`` and ``s`` are the mean and (biased) standard deviation of all output elements and
        ``r = sqrt(mean(out**2))``. A module that runs several times is reported for its first
        call.

    Raises:
        ValueError: if ``layer_types`` is empty or holds a non-module class, or if no module of
            those types ran during the forward pass.
    """
    types = (layer_types,) if isinstance(layer_types, type) else tuple(layer_types)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise ValueError(
            f"layer_types must be an nn.Module subclass or a non-empty sequence of them, "
            f"got {layer_types!r}"
        )
    stats: dict[str, dict[str, float]] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if name in stats or not isinstance(output, torch.Tensor):
                return
            out = output.detach().double()
            stats[name] = {
                "mean": float(out.mean()),
                "std": float(out.std(unbiased=False)),
                "rms": float(out.pow(2).mean().sqrt()),
            }

        return hook

    handles = [
        module.register_forward_hook(make_hook(name))
        for name, module in model.named_modules()
        if isinstance(module, types)
    ]
    try:
        with torch.set_grad_enabled(grad):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not stats:
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(f"no module of type {names} ran in the forward pass of the model")
    return stats
