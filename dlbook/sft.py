"""Supervised fine-tuning on conversations (section 5.6): loss masks, padding and packing.

A conversation is rendered with the model's chat template and tokenised; only the tokens the
assistant wrote (its answers and the end-of-turn token that closes each) are training targets,
every other position gets :data:`~dlbook.nn.losses.IGNORE_INDEX`. Examples are batched either by
*padding* each to the longest in the batch or by *packing* several into one row, with segment
labels that keep them from attending to each other (:meth:`dlbook.nn.GPT.forward`).

Shapes: ``N`` examples or rows, ``T`` tokens per row.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from dlbook.config import NonNegativeInt, PositiveFloat, validate_config
from dlbook.nn.losses import IGNORE_INDEX

#: Roles a conversation may contain (SmolLM2's ChatML template accepts these three).
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatExample:
    """A tokenised conversation: ``ids`` and, per token, whether it is a training target."""

    ids: tuple[int, ...]
    trained: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def inputs_targets(self) -> tuple[list[int], list[int]]:
        """Next-token pairs ``(ids[:-1], targets)``: ``targets[t]`` is ``ids[t + 1]`` where that
        token is trained, else :data:`IGNORE_INDEX`."""
        pairs = zip(self.ids[1:], self.trained[1:], strict=True)
        targets = [i if keep else IGNORE_INDEX for i, keep in pairs]
        return list(self.ids[:-1]), targets


def render_chat(
    tokenizer, messages: Sequence[Mapping[str, str]], max_len: int | None = None
) -> ChatExample:
    """Tokenise ``messages`` with ``tokenizer.apply_chat_template`` and mark the assistant's
    tokens (each answer and its closing ``<|im_end|>``) as targets.

    The ids equal ``apply_chat_template(messages, tokenize=True)`` (asserted here): each turn
    is tokenised on its own and special tokens separate turns, so no merge crosses a boundary.

    Raises:
        ValueError: no messages, an unknown role, no assistant turn (nothing to learn), or
            more than ``max_len`` tokens (the conversation does not fit the context).
    """
    if not messages:
        raise ValueError("the conversation is empty")
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ValueError(f"message {i} has role {m.get('role')!r}; roles are {ROLES}")
    if messages[0]["role"] == "assistant":
        raise ValueError("the conversation must start with a system or user turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant turn: there is nothing to train on")
    ids: list[int] = []
    trained: list[bool] = []
    for i, m in enumerate(messages):
        # The template adds the default system prompt before a first non-system message.
        turn = tokenizer.apply_chat_template([m], tokenize=False)
        if i > 0 or m["role"] == "system":
            turn = turn[turn.index(f"<|im_start|>{m['role']}\n"):]
        turn_ids = tokenizer.encode(turn, allowed_special="all")
        if m["role"] == "assistant":
            header = tokenizer.encode(f"<|im_start|>{m['role']}\n", allowed_special="all")
            if turn_ids[: len(header)] != header:
                raise ValueError("the assistant header does not tokenise on its own")
            n_newline = len(tokenizer.encode("\n"))  # after <|im_end|>: not the model's to say
            marks = [False] * len(header) + [True] * (len(turn_ids) - len(header) - n_newline)
            trained += marks + [False] * n_newline
        else:
            trained += [False] * len(turn_ids)
        ids += turn_ids
    if ids != list(tokenizer.apply_chat_template(messages, tokenize=True)):
        raise ValueError("turn-by-turn tokenisation differs from the whole conversation's")
    if max_len is not None and len(ids) > max_len:
        raise ValueError(
            f"the conversation has {len(ids)} tokens, more than the context of {max_len}; "
            "shorten it or raise max_len"
        )
    return ChatExample(tuple(ids), tuple(trained))


def pad_batch(examples: Sequence[ChatExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad examples to the longest: ``(idx, targets)``, both ``(N, T_max - 1)``.

    No attention mask is needed: with causal attention a real token never sees the padding
    after it, and padded positions have target :data:`IGNORE_INDEX`.
    """
    if not examples:
        raise ValueError("no examples to batch")
    width = max(len(e) for e in examples) - 1
    idx = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        x, y = e.inputs_targets()
        idx[row, : len(x)] = torch.tensor(x)
        targets[row, : len(y)] = torch.tensor(y)
    return idx, targets


def pack_examples(
    examples: Sequence[ChatExample], seq_len: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack examples into rows of ``seq_len`` input tokens, first fit in the given order:
    ``(idx, targets, segments)``, each ``(N_rows, seq_len)``.

    ``segments`` numbers the examples of a row 0, 1, 2, ... (the unused tail of a row gets its
    own label); pass it to :meth:`dlbook.nn.GPT.forward` so that no example attends to another.

    Raises:
        ValueError: no examples, or one longer than ``seq_len + 1`` tokens.
    """
    if not examples:
        raise ValueError("no examples to pack")
    rows: list[list[ChatExample]] = []
    room: list[int] = []
    for e in examples:
        need = len(e) - 1
        if need > seq_len:
            raise ValueError(
                f"an example of {len(e)} tokens does not fit rows of {seq_len} + 1"
            )
        for r, free in enumerate(room):
            if need <= free:
                rows[r].append(e)
                room[r] -= need
                break
        else:
            rows.append([e])
            room.append(seq_len - need)
    idx = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    segments = torch.empty((len(rows), seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for s, e in enumerate(row):
            x, y = e.inputs_targets()
            idx[r, start : start + len(x)] = torch.tensor(x)
            targets[r, start : start + len(y)] = torch.tensor(y)
            segments[r, start : start + len(x)] = s
            start += len(x)
        segments[r, start:] = len(row)  # the padding tail: a segment of its own
    return idx, targets, segments


# ------------------------------------------------------------------ losses at a few positions


def target_logprobs(
    model, idx: torch.Tensor, targets: torch.Tensor, segments: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probability of each target token under ``model``: ``(B, T)``, ``0`` where the target
    is :data:`IGNORE_INDEX`. The head runs only at target positions (:meth:`GPT.features`).

    Summed over ``T`` it is the log-likelihood of a completion given its prompt, the quantity
    DPO (section 5.7) and GRPO (section 5.8) work with.
    """
    if targets.shape != idx.shape:
        raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}")
    hidden = model.features(idx, segments=segments)  # (B, T, C)
    keep = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[keep]).float()  # (M, V)
    picked = logits.log_softmax(-1).gather(1, targets[keep][:, None])[:, 0]
    out = torch.zeros(idx.shape, dtype=torch.float32, device=idx.device)
    return out.masked_scatter(keep, picked)


def answer_loss(
    model, idx: torch.Tensor, targets: torch.Tensor, segments: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the target tokens only: equal to ``model(idx, targets)[1]`` but
    without computing logits where nothing is learnt.

    Raises:
        ValueError: no position has a target.
    """
    n = int((targets != IGNORE_INDEX).sum())
    if n == 0:
        raise ValueError("no position has a target; is every token masked?")
    return -target_logprobs(model, idx, targets, segments).sum() / n


# --------------------------------------------------------------------------- a cached SFT run


@dataclass(frozen=True)
class SFTConfig:
    """One supervised fine-tune of SmolLM2-135M-Instruct on the tasks of
    :mod:`dlbook.data.tasks`: LoRA (``method="lora"``) or every weight (``"full"``)."""

    method: Literal["lora", "full"] = "lora"
    steps: int = 16
    examples_per_step: int = 16
    seq_len: int = 256  # packing rows: examples are packed into rows of this many tokens
    lr: PositiveFloat = 2e-3
    r: int = 8
    alpha: PositiveFloat = 16.0
    target: tuple[str, ...] = (r"blocks\..*",)  # every linear layer of the blocks
    n_test: int = 80
    seed: NonNegativeInt = 0

    def __post_init__(self) -> None:
        validate_config(self)


def task_example(tokenizer, task, max_len: int | None = None) -> ChatExample:
    """The two-turn conversation of a task (its question, the exact answer), tokenised."""
    return render_chat(
        tokenizer,
        [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": task.answer}],
        max_len,
    )


def train_sft(model, examples: Sequence[ChatExample], config: SFTConfig, pad_id: int) -> dict:
    """Train ``model``'s parameters that require gradients with AdamW on packed batches of
    ``config.examples_per_step`` examples; return the losses and timing."""
    from dlbook.finetune import optimizer_state_bytes

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires a gradient: nothing would train")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    need = config.steps * config.examples_per_step
    if len(examples) < need:
        raise ValueError(f"{config.steps} steps need {need} examples, got {len(examples)}")
    losses, tokens = [], 0
    model.train()
    start = time.perf_counter()
    for step in range(config.steps):
        batch = examples[step * config.examples_per_step : (step + 1) * config.examples_per_step]
        idx, targets, segments = pack_examples(batch, config.seq_len, pad_id)
        loss = answer_loss(model, idx, targets, segments)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        tokens += sum(len(e) - 1 for e in batch)
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "losses": losses,
        "seconds_per_step": seconds / config.steps,
        "tokens_per_second": tokens / seconds,
        "optimizer_state_bytes": optimizer_state_bytes(opt),
    }


def sft_run(model, tokenizer, config: SFTConfig) -> tuple[dict, Path | None]:
    """Fine-tune a copy of ``model`` as ``config`` says, evaluate it on the held-out tasks, and
    cache the result → ``(record, adapter path or None)``.

    The record holds the training losses, seconds per step, optimizer-state bytes, trainable
    parameters and the held-out exact match (mean, interval, per family, completions). A LoRA
    run also saves its adapter (``adapter.safetensors``) for sections 5.7 and 5.8; a full
    fine-tune keeps only its measurements (the weights would be 0.5 GB). ``model`` itself is
    left unchanged.
    """
    from dlbook.artifacts import cached_record_run
    from dlbook.data.tasks import exact_match, make_tasks
    from dlbook.evaluate import evaluate, stop_token
    from dlbook.lora import apply_lora, save_adapter, trainable_parameters

    pad_id = stop_token(tokenizer)  # any id will do: padding is never a target

    def fine_tune(adapter: Path | None) -> dict:
        torch.manual_seed(config.seed)
        tuned = copy.deepcopy(model)
        if config.method == "lora":
            apply_lora(tuned, list(config.target), r=config.r, alpha=config.alpha)
        else:
            tuned.requires_grad_(True)
        n_train = config.steps * config.examples_per_step
        train = make_tasks(n_train, "train", seed=config.seed)
        examples = [task_example(tokenizer, t, tuned.config.block_size) for t in train]
        record = train_sft(tuned, examples, config, pad_id)
        result = evaluate(tuned, tokenizer, make_tasks(config.n_test, "test"), exact_match)
        record.update(
            config=asdict(config),
            trainable=trainable_parameters(tuned)[0],
            exact_match=[result.mean, result.low, result.high],
            by_family=result.by_family,
            completions=result.completions,
        )
        if adapter is not None:
            save_adapter(tuned, adapter)
        return record

    record, adapter, _ = cached_record_run(
        f"smollm2-sft-{config.method}", config, fine_tune, adapter=config.method == "lora"
    )
    return record, adapter


def load_sft_model(model, adapter: Path, config: SFTConfig):
    """A copy of ``model`` with the SFT adapter at ``adapter`` loaded and merged into its
    weights: the starting (and reference) policy of sections 5.7 and 5.8."""
    from dlbook.lora import apply_lora, load_adapter, remove_lora

    tuned = copy.deepcopy(model)
    apply_lora(tuned, list(config.target), r=config.r, alpha=config.alpha)
    load_adapter(tuned, adapter)
    remove_lora(tuned, merge=True)
    tuned.requires_grad_(False)
    return tuned.eval()


def book_sft_config() -> SFTConfig:
    """The LoRA SFT run of section 5.6 for the current profile (``smoke``: one step on two
    examples; ``book``/``full``: 16 steps of 16): sections 5.7 and 5.8 start from its adapter,
    which the artifact cache shares between them."""
    from dlbook.config import pick

    return pick(smoke=SFTConfig(steps=1, examples_per_step=2, n_test=4), book=SFTConfig())
