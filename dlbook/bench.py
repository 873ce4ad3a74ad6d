"""FLOPs, model FLOPs utilisation (MFU), timing, and a GPT training benchmark (``dlbook bench``).

FLOPs per token follow the standard estimate for a decoder-only Transformer (Kaplan et al.
2020, the PaLM paper's appendix): a forward pass costs ``2 N`` FLOPs (one multiply-add per
weight) for the ``N`` parameters used in matrix products, plus, per layer, ``2 · T · C`` for
the attention scores of one query against ``T`` keys and ``2 · T · C`` for the weighted sum of
the values; training (forward + backward) costs three times the forward pass:

    flops_per_token = 3 · (2 N + 4 · n_layer · T · C) = 6 N + 12 · n_layer · T · C

MFU is achieved FLOPs per second divided by the device's peak dense throughput.
:func:`seconds_per_call` is the one stopwatch of the book: warm-up calls, repeated timed calls,
and a CUDA synchronisation so that the time covers the GPU's work, not just its launch.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from dlbook.config import check_int
from dlbook.device import autocast, describe, get_device
from dlbook.nn.gpt import GPT, GPTConfig

__all__ = [
    "PEAK_BF16_FLOPS",
    "SIZES",
    "BenchResult",
    "benchmark_gpt",
    "flops_per_token",
    "matmul_flops_per_second",
    "matmul_params",
    "peak_flops",
    "seconds_per_call",
]

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


def seconds_per_call(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    stat: Literal["median", "min", "mean"] = "median",
    device: torch.device | str | None = None,
) -> float:
    """Wall-clock seconds of one call of ``fn()``.

    ``warmup`` untimed calls first (compilation, caches, allocator), then ``repeats`` timed
    calls, summarised by ``stat``: the ``median`` (robust to a busy machine), the ``min`` (the
    best the code can do) or the ``mean`` (total time / calls, what a training loop pays).
    ``warmup=0, repeats=1`` times a first call, compilation included. On a CUDA ``device``
    the GPU is synchronised before the clock starts and after every call, since kernels run
    asynchronously.
    """
    check_int("repeats", repeats)
    check_int("warmup", warmup, low=0)
    if stat not in ("median", "min", "mean"):
        raise ValueError(f"stat must be 'median', 'min' or 'mean', not {stat!r}")
    device = torch.device(device) if device is not None else None
    cuda = device is not None and device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    if stat == "median":
        return statistics.median(times)
    return min(times) if stat == "min" else sum(times) / len(times)


def matmul_params(model: GPT) -> int:
    """Parameters of ``model`` used in matrix products: all but the position table. With
    weight tying the token embedding is counted once, as the output layer (a ``V × C``
    product per token); the position table is a lookup and costs nothing."""
    n = model.num_params(non_embedding=False)
    return n - (model.wpe.weight.numel() if model.wpe is not None else 0)


def flops_per_token(config: GPTConfig, matmul_params: int, training: bool = True) -> float:
    """Estimated FLOPs to process one token at full context (``× 3`` for training).

    ``matmul_params``: parameters used in matrix products (:func:`matmul_params`).
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
        """The fields as a dict of plain (JSON-serialisable, finite) values."""
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
    """Time ``steps`` training steps (AdamW) of a GPT of ``size`` on random tokens
    ``(batch_size, block_size)``.

    ``dtype="auto"`` is bf16 autocast on CUDA and float32 on the CPU. The first ``warmup``
    steps (compilation, allocator warm-up) are not timed. On CUDA, TF32 matrix products are
    allowed during the run (as in any real training run) and the previous setting is restored
    afterwards.

    Raises:
        ValueError: an unknown size or dtype, ``steps``/``batch_size`` not a positive integer,
            ``warmup`` negative, or ``peak_tflops`` not a finite positive number.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_int("warmup", warmup, low=0)
    if peak_tflops is not None and not (
        isinstance(peak_tflops, (int, float)) and math.isfinite(peak_tflops) and peak_tflops > 0
    ):
        raise ValueError(f"peak_tflops must be a finite number > 0, got {peak_tflops!r}")
    if dtype not in ("auto", "bf16", "fp32"):
        raise ValueError(f"dtype must be 'auto', 'bf16' or 'fp32', not {dtype!r}")
    device = device or get_device()
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    amp = torch.bfloat16 if dtype == "bf16" else None
    config = SIZES[size]
    torch.manual_seed(0)
    model = GPT(config).to(device)
    params = model.num_params(non_embedding=False)
    matmul = matmul_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile else model
    tokens = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        with autocast(device, amp):
            _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        step_seconds = seconds_per_call(step, repeats=steps, warmup=0, stat="mean", device=device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    tokens_per_second = batch_size * config.block_size / step_seconds
    fpt = flops_per_token(config, matmul)
    achieved = tokens_per_second * fpt
    peak = peak_tflops * 1e12 if peak_tflops is not None else peak_flops(device)
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


def matmul_flops_per_second(
    n: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    repeats: int = 10,
) -> float:
    """Measured FLOP/s of an ``n × n`` matrix product: a practical peak for MFU on a CPU."""
    check_int("n", n)
    device = device or get_device()
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = seconds_per_call(lambda: a @ b, repeats=repeats, warmup=1, stat="mean", device=device)
    return 2 * n**3 / seconds
