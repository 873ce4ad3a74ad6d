"""FLOPs, model FLOPs utilisation (MFU) and a GPT training benchmark (``dlbook bench gpt``).

FLOPs per token follow the standard estimate for a decoder-only Transformer (Kaplan et al.
2020, the PaLM paper's appendix): a forward pass costs ``2 N`` FLOPs (one multiply-add per
weight) for the ``N`` parameters used in matrix products, plus, per layer, ``2 · T · C`` for
the attention scores of one query against ``T`` keys and ``2 · T · C`` for the weighted sum of
the values; training (forward + backward) costs three times the forward pass:

    flops_per_token = 3 · (2 N + 4 · n_layer · T · C) = 6 N + 12 · n_layer · T · C

MFU is achieved FLOPs per second divided by the device's peak dense throughput.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dlbook.device import autocast, describe, get_device
from dlbook.nn.gpt import GPT, GPTConfig

# Peak dense bf16 tensor-core throughput, FLOP/s, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "A100": 312e12,
}

SIZES = {
    "tiny": GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128),
    "small": GPTConfig(vocab_size=4096, block_size=256, n_layer=6, n_head=6, n_embd=384),
    # GPT-2 small: 12 layers, width 768, context 1024; vocabulary padded from 50,257 to a
    # multiple of 64 so the embedding and head matrices map well onto tensor cores.
    "124M": GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def flops_per_token(config: GPTConfig, matmul_params: int, training: bool = True) -> float:
    """Estimated FLOPs to process one token at full context (``× 3`` for training).

    ``matmul_params``: parameters used in matrix products, i.e. all but the position table
    (with weight tying the token embedding counts once, as the output layer).
    """
    forward = 2 * matmul_params + 4 * config.n_layer * config.block_size * config.n_embd
    return 3 * forward if training else forward


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a known GPU, or ``None`` (CPUs and unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return value
    return None


@dataclass
class BenchResult:
    """What one benchmark run measured."""

    device: str
    size: str
    params: int
    batch_size: int
    block_size: int
    dtype: str
    compiled: bool
    step_seconds: float
    tokens_per_second: float
    flops_per_token: float
    achieved_tflops: float
    mfu: float | None
    peak_memory_gb: float
    memory_kind: str

    def report(self) -> str:
        """Human-readable lines."""
        mfu = f"{self.mfu:.1%}" if self.mfu is not None else "n/a (unknown peak; --peak-tflops)"
        return "\n".join(
            [
                f"device           {self.device}",
                f"model            {self.size} ({self.params / 1e6:.1f} M parameters)",
                f"batch            {self.batch_size} × {self.block_size} tokens, {self.dtype}"
                f"{', compiled' if self.compiled else ''}",
                f"step time        {self.step_seconds * 1e3:.1f} ms",
                f"throughput       {self.tokens_per_second:,.0f} tokens/s",
                f"model FLOPs      {self.achieved_tflops * 1e3:,.1f} GFLOP/s",
                f"MFU              {mfu}",
                f"peak memory      {self.peak_memory_gb:.2f} GB ({self.memory_kind})",
            ]
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def benchmark_gpt(
    size: str = "tiny",
    *,
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 3,
    dtype: str = "auto",
    compile: bool = False,
    device: torch.device | None = None,
    peak_tflops: float | None = None,
) -> BenchResult:
    """Time ``steps`` training steps (AdamW) of a GPT of ``size`` on random tokens.

    ``dtype="auto"`` is bf16 autocast on CUDA and float32 on the CPU. The first ``warmup``
    steps (compilation, allocator warm-up) are not timed.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("steps and batch_size must be at least 1, warmup at least 0")
    device = device or get_device()
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    amp = {"bf16": torch.bfloat16, "fp32": None}.get(dtype, "bad")
    if amp == "bad":
        raise ValueError(f"dtype must be 'auto', 'bf16' or 'fp32', not {dtype!r}")
    config = SIZES[size]
    torch.manual_seed(0)
    model = GPT(config).to(device)
    params = model.num_params(non_embedding=False)
    # The token embedding is also the output layer (tied), whose matmul costs 2·V·C per token:
    # count it; the position table is a lookup and costs nothing.
    matmul_params = model.num_params(non_embedding=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile else model
    tokens = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        with autocast(device, amp):  # type: ignore[arg-type]
            _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_seconds = (time.perf_counter() - start) / steps
    tokens_per_second = batch_size * config.block_size / step_seconds
    fpt = flops_per_token(config, matmul_params)
    achieved = tokens_per_second * fpt
    peak = peak_tflops * 1e12 if peak_tflops else peak_flops(device)
    if device.type == "cuda":
        memory, kind = torch.cuda.max_memory_allocated(device) / 1e9, "CUDA allocated"
    else:  # ru_maxrss is in kilobytes on Linux
        memory, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "process RSS"
    return BenchResult(
        device=describe(device),
        size=size,
        params=params,
        batch_size=batch_size,
        block_size=config.block_size,
        dtype=dtype,
        compiled=compile,
        step_seconds=step_seconds,
        tokens_per_second=tokens_per_second,
        flops_per_token=fpt,
        achieved_tflops=achieved / 1e12,
        mfu=achieved / peak if peak else None,
        peak_memory_gb=memory,
        memory_kind=kind,
    )


def saved_activation_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``fn()`` runs.

    This is the activation memory of a training step, measured the same way on any device:
    every tensor that the forward pass stores for backward goes through the pack hook.
    Tensors sharing a storage are counted once; storages of ``exclude`` (pass the model's
    parameters, which matrix products also save) are not counted.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


class Checkpointed(nn.Module):
    """Wrap a block so its activations are recomputed in backward instead of stored.

    ``forward`` takes whatever the wrapped block takes (``x (B, T, C)``, keywords) and returns
    the same output; only the memory/compute trade changes.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Wrap every module of ``blocks`` (e.g. ``GPT.blocks``) in :class:`Checkpointed`, in place.

    Parameter names gain a ``.block`` level; save weights before wrapping, or unwrap with
    ``blocks[i] = blocks[i].block``.
    """
    for i, block in enumerate(blocks):
        if not isinstance(block, Checkpointed):
            blocks[i] = Checkpointed(block)


def matmul_flops_per_second(
    n: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    repeats: int = 10,
) -> float:
    """Measured FLOP/s of an ``n × n`` matrix product: a practical peak for MFU on a CPU."""
    device = device or get_device()
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)
