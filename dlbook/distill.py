r"""Knowledge distillation (Hinton, Vinyals and Dean, 2015), section 6.5.

A small *student* learns from the softened output distribution of a large *teacher* as well as
from the labels:

.. math::

    \mathcal{L} = \alpha\, T^2\, \mathrm{KL}\big(p_T^{\text{teacher}} \,\|\,
    p_T^{\text{student}}\big) + (1 - \alpha)\, \mathrm{CE}(z^{\text{student}}, y),
    \qquad p_T = \mathrm{softmax}(z / T).

The factor :math:`T^2` keeps the soft term's gradient on the scale of the hard term's for any
temperature (the gradient of the KL term with respect to the student's logits is
:math:`(p^{s}_T - p^{t}_T) / T`, which for large ``T`` is about :math:`(z - v) / (K T^2)`).

* :func:`distillation_loss`: the loss above.
* :class:`BagOfTokens`: a tiny student, the mean of learned token embeddings and a linear layer.
* :func:`train_student`: AdamW on labels alone (``teacher_logits=None``) or distilled.
* :func:`cached_teacher_logits`: compute a teacher's logits once, keep them on disk.

Shapes: ``B`` batch, ``T`` tokens, ``K`` classes, ``N`` examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from dlbook.artifacts import cached_run
from dlbook.checkpoint import CheckpointError, atomic_write, read_safetensors
from dlbook.config import check_int
from dlbook.finetune import collate, length_batches, pool

__all__ = [
    "BagOfTokens",
    "cached_teacher_logits",
    "distillation_loss",
    "train_student",
]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    T: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    r"""``alpha · T² · KL(softmax(v/T) ‖ softmax(z/T)) + (1 - alpha) · CE(z, targets)``,
    averaged over the batch.

    Args:
        student_logits: ``z``, ``(B, K)``.
        teacher_logits: ``v``, ``(B, K)`` (treated as constants: no gradient flows into them).
        targets: ``(B,)`` class ids; may be ``None`` only when ``alpha == 1``.
        T: the temperature, ``> 0``; ``T = 1`` is the plain softmax.
        alpha: weight of the soft (teacher) term, in ``[0, 1]``.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: ``T <= 0``, ``alpha`` outside ``[0, 1]``, logits that are not ``(B, K)`` of
            one shape, targets not ``(B,)``, or no targets with ``alpha < 1``.
    """
    if not isinstance(T, (int, float)) or isinstance(T, bool) or not T > 0:
        raise ValueError(f"the temperature T must be > 0, got {T!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must both be (B, K) of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if targets is None:
        if alpha < 1:
            raise ValueError("targets are needed unless alpha == 1")
    elif targets.shape != student_logits.shape[:1]:
        raise ValueError(f"targets must be ({student_logits.shape[0]},), got "
                         f"{tuple(targets.shape)}")
    log_q = F.log_softmax(student_logits / T, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().to(log_q.dtype) / T, dim=-1)
    soft = (log_p.exp() * (log_p - log_q)).sum(-1).mean()  # KL(p || q)
    if alpha == 1:
        return T * T * soft
    hard = F.cross_entropy(student_logits, targets)
    return alpha * T * T * soft + (1 - alpha) * hard


class BagOfTokens(nn.Module):
    """A tiny text classifier: the mean of learned token embeddings, then a linear layer.

    Token ids ``(B, T)`` and a padding mask ``(B, T)`` (``True`` = real token) → logits
    ``(B, K)``. It sees which tokens occur, not their order.

    Args:
        vocab_size: number of token ids.
        n_classes: ``K``.
        dim: embedding width.
        dropout: dropout on the pooled vector while training.
    """

    def __init__(self, vocab_size: int, n_classes: int, dim: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size)
        check_int("n_classes", n_classes, low=2)
        check_int("dim", dim)
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, idx: torch.Tensor, key_padding_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Logits ``(B, K)`` of token ids ``idx (B, T)``."""
        if idx.dim() != 2:
            raise ValueError(f"expected token ids (B, T), got {tuple(idx.shape)}")
        return self.head(self.dropout(pool(self.embed(idx), key_padding_mask, "mean")))


def train_student(
    model: nn.Module,
    inputs: Sequence[Sequence[int]],
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    T: float = 2.0,
    alpha: float = 0.5,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    seed: int = 0,
    pad_value: int = 0,
) -> list[float]:
    """Train ``model`` on ``N`` token-id sequences with AdamW at a constant learning rate;
    return the loss of every step. The model is left in eval mode.

    With ``teacher_logits`` ``(N, K)`` the loss is :func:`distillation_loss` with ``T`` and
    ``alpha``; without, plain cross-entropy on ``labels (N,)``. Batches hold documents of
    similar length (:func:`~dlbook.finetune.length_batches`), drawn with ``seed``, so two
    runs with one seed see the same batches in the same order.

    Raises:
        ValueError: inputs, labels and teacher logits of different lengths.
    """
    check_int("steps", steps)
    n = len(inputs)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if n == 0 or len(labels) != n or (teacher_logits is not None and len(teacher_logits) != n):
        raise ValueError(f"got {n} inputs, {len(labels)} labels and "
                         f"{'no' if teacher_logits is None else len(teacher_logits)} "
                         "teacher logits; need as many of each, >= 1")
    items = [torch.as_tensor(x, dtype=torch.long) for x in inputs]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batches: list[list[int]] = []
    losses = []
    model.train()
    for _ in range(steps):
        if not batches:
            batches = length_batches([len(x) for x in items], batch_size, shuffle=True,
                                     generator=generator)
        index = batches.pop()
        x, mask = collate([items[i] for i in index], pad_value)
        logits = model(x, mask)
        if teacher_logits is None:
            loss = F.cross_entropy(logits, labels[index])
        else:
            loss = distillation_loss(logits, teacher_logits[index], labels[index], T, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


LOGITS_FILE = "teacher_logits.safetensors"


def cached_teacher_logits(
    name: str, config: Any, compute: Callable[[], torch.Tensor], *, retrain: bool = False
) -> tuple[torch.Tensor, bool]:
    """A teacher's logits ``(N, K)``, computed once by ``compute()`` and cached on disk.

    Args:
        name: the run's name (a folder under ``cache_dir()/runs``).
        config: a dataclass describing everything that determines the logits (the teacher,
            the documents, their cut); any change computes them again.
        compute: returns the logits.
        retrain: compute again even if cached.

    Returns:
        ``(logits, computed_now)``.
    """

    def build(directory: Path) -> torch.Tensor:
        logits = compute().detach().float().cpu().contiguous()
        if logits.dim() != 2:
            raise ValueError(f"teacher logits must be (N, K), got {tuple(logits.shape)}")
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / LOGITS_FILE,
                     lambda p: save_file({"logits": logits}, str(p)))
        return logits

    def load(directory: Path) -> torch.Tensor:
        tensors = read_safetensors(directory / LOGITS_FILE)
        if "logits" not in tensors:
            raise CheckpointError(f"{directory / LOGITS_FILE} holds no logits")
        return tensors["logits"]

    return cached_run(name, config, build, load, retrain=retrain)
