"""``make gpu-check``: run the book's GPU-only claims on one CUDA GPU and print one table.

The book's chapters run on a CPU in CI, so the claims that only a GPU can check live here:

* **bf16 autocast**: a GPT trained with bfloat16 autocast follows float32's loss (same first-step
  loss to 1 %, at least 90 % of float32's progress, the rule section 4.5 asserts on the CPU);
* **flash attention**: ``F.scaled_dot_product_attention`` with the FlashAttention backend forced
  agrees with the library's reference attention (:func:`dlbook.nn.attention.
  scaled_dot_product_attention`) in bfloat16, and refuses float32 (it is chosen only for
  fp16/bf16 on CUDA);
* **torch.compile**: the compiled library GPT gives the eager model's logits, and how much
  faster a training step runs;
* **bench 124M**: ``dlbook bench gpt --size 124M --compile --dtype bf16`` and its MFU against
  the book's target (≥ 50 % of the data-sheet peak);
* **triton kernels**: section 6.7's Triton kernels (:mod:`dlbook.kernels`: fused softmax, layer
  norm forward + backward, FlashAttention-style forward) against PyTorch's: parity, time
  (``triton.testing.do_bench``, median) and peak memory over a few sizes; on a CPU the kernels only
  run in Triton's interpreter, which is not a benchmark, so the row is skipped there;
* **full profile**: the cheapest GPU sections run end to end with ``DLBOOK_PROFILE=full``.

``python -m dlbook.gpu_check --dry-run`` runs every check on the CPU with tiny sizes (the sections
in the ``smoke`` profile) and reports what needs CUDA as ``skipped: no CUDA``; the test suite runs
it that way. ``--out results.json`` also writes the rows as JSON. The exit status is 1 when a check
failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from dlbook.device import autocast
from dlbook.nn.attention import scaled_dot_product_attention
from dlbook.nn.gpt import GPT, GPTConfig

#: Sections run with ``DLBOOK_PROFILE=full`` by default: the efficiency section is the cheapest
#: whose ``full`` sizes are meant for a GPU.
DEFAULT_SECTIONS = ("4.5",)
MFU_TARGET = 0.5  # section 4.5: GPT-2 small, bf16, compiled, flash attention on an H100


@dataclass
class Row:
    """One line of the report.

    Attributes:
        check: what was checked.
        status: ``"pass"``, ``"fail"``, ``"skipped"`` or ``"error"`` (the check itself crashed).
        value: the headline number, formatted.
        detail: how it was measured, or why it was skipped.
        seconds: wall time of the check.
        data: the raw numbers, for the JSON output.
    """

    check: str
    status: str
    value: str = ""
    detail: str = ""
    seconds: float = 0.0
    data: dict[str, object] | None = None


def _bench_module() -> ModuleType:
    """The module with ``benchmark_gpt``: ``dlbook.bench`` (new name) or ``dlbook.perf``."""
    for name in ("dlbook.bench", "dlbook.perf"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "benchmark_gpt"):
            return module
    raise ImportError("neither dlbook.bench nor dlbook.perf provides benchmark_gpt")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpt_config(dry_run: bool) -> GPTConfig:
    if dry_run:
        return GPTConfig(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return GPTConfig(vocab_size=4096, block_size=256, n_layer=6, n_head=6, n_embd=384)


def check_bf16_autocast(device: torch.device, dry_run: bool) -> Row:
    """Train one GPT twice from the same weights on one fixed batch, float32 vs bf16 autocast.

    Passes when the first-step losses agree to 1 % and bf16 makes at least 90 % of float32's
    progress (drop in loss) over the run.
    """
    config = _gpt_config(dry_run)
    steps, batch = (4, 2) if dry_run else (60, 16)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (batch, config.block_size + 1), generator=gen)
    x, y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    torch.manual_seed(0)
    base = GPT(config).to(device)
    curves: dict[str, list[float]] = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(steps):
            with autocast(device, dtype):
                _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        curves[name] = losses
    fp32, bf16 = curves["fp32"], curves["bf16"]
    first = abs(bf16[0] - fp32[0]) / fp32[0]
    progress = (bf16[0] - bf16[-1]) / (fp32[0] - fp32[-1])
    ok = first < 0.01 and progress >= 0.9
    return Row(
        "bf16 autocast vs fp32",
        "pass" if ok else "fail",
        f"progress {progress:.0%}",
        f"{steps} AdamW steps, loss {fp32[0]:.3f}→{fp32[-1]:.3f} fp32, {bf16[0]:.3f}→"
        f"{bf16[-1]:.3f} bf16; first-step difference {first:.2%} (limit 1 %), progress ≥ 90 %",
        data={"fp32": fp32, "bf16": bf16, "first_step_rel_diff": first, "progress": progress},
    )


def check_flash_attention(device: torch.device, dry_run: bool) -> Row:
    """FlashAttention (forced) vs the library's reference attention, bf16 inputs, causal."""
    name = "flash attention parity"
    if device.type != "cuda":
        return Row(name, "skipped", detail="skipped: no CUDA (FlashAttention is a CUDA kernel)")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device=device).manual_seed(0)
    b, h, t, d = 4, 12, 1024, 64
    q, k, v = (
        torch.randn(b, h, t, d, device=device, generator=gen, dtype=torch.bfloat16)
        for _ in range(3)
    )
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        try:
            F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
            takes_fp32 = True
        except RuntimeError:
            takes_fp32 = False
    reference, _ = scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    reference_bf16, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    diff = (flash.float() - reference).abs().max().item()
    diff_bf16 = (reference_bf16.float() - reference).abs().max().item()
    ok = diff < 2e-2 and not takes_fp32
    return Row(
        name,
        "pass" if ok else "fail",
        f"max |Δ| {diff:.1e}",
        f"B,H,T,D = {b},{h},{t},{d}, causal, bf16 vs fp32 reference (limit 2e-2); the reference "
        f"itself in bf16: {diff_bf16:.1e}; flash accepts fp32: {'yes' if takes_fp32 else 'no'}",
        data={"max_abs_diff": diff, "reference_bf16_diff": diff_bf16, "flash_fp32": takes_fp32},
    )


def _step_seconds(model: torch.nn.Module, x, y, device: torch.device, repeats: int) -> float:
    for _ in range(2):  # warm-up (and, for a compiled model, its compilation)
        model(x, y)[1].backward()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        model(x, y)[1].backward()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def check_compile(device: torch.device, dry_run: bool) -> Row:
    """``torch.compile`` of the library GPT: equal logits, and the speed-up of a training step.

    The dry run compiles with the ``eager`` backend (the graph capture, without a C++/Triton
    build), so it checks the plumbing in seconds, not the kernels.
    """
    config = _gpt_config(dry_run)
    batch, repeats = (2, 2) if dry_run else (16, 20)
    backend = "eager" if dry_run else "inductor"
    torch.manual_seed(0)
    eager = GPT(config).to(device)
    compiled = torch.compile(eager, backend=backend)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (batch, config.block_size + 1), generator=gen)
    x, y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    try:
        with torch.no_grad():
            diff = (compiled(x, y)[0] - eager(x, y)[0]).abs().max().item()
        eager_s = _step_seconds(eager, x, y, device, repeats)
        compiled_s = _step_seconds(compiled, x, y, device, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    speedup = eager_s / compiled_s
    return Row(
        f"torch.compile ({backend})",
        "pass" if diff < 1e-4 else "fail",
        f"speed-up {speedup:.2f}×",
        f"logits max |Δ| {diff:.1e} (limit 1e-4); step {eager_s * 1e3:.1f} ms eager, "
        f"{compiled_s * 1e3:.1f} ms compiled (float32, batch {batch}×{config.block_size})",
        data={"max_abs_diff": diff, "eager_s": eager_s, "compiled_s": compiled_s},
    )


def check_bench(device: torch.device, dry_run: bool) -> Row:
    """``dlbook bench gpt --size 124M --compile --dtype bf16``: MFU against the book's target."""
    bench = _bench_module()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if dry_run:
            result = bench.benchmark_gpt(
                "tiny", batch_size=2, steps=2, warmup=1, dtype="fp32", device=device
            )
        else:
            result = bench.benchmark_gpt(
                "124M",
                batch_size=16,
                steps=20,
                warmup=5,
                dtype="bf16",
                compile=True,
                device=device,
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32  # whatever the benchmark did with TF32
    name = f"bench gpt {result.size}" + (" --compile --dtype bf16" if result.compiled else "")
    summary = (
        f"{result.tokens_per_second:,.0f} tokens/s, {result.achieved_tflops:.1f} TFLOP/s, "
        f"step {result.step_seconds * 1e3:.1f} ms, peak {result.peak_memory_gb:.1f} GB"
    )
    if result.mfu is None:
        status = "pass" if dry_run else "fail"
        return Row(
            name,
            status,
            "MFU n/a",
            summary + "; no known peak for this device",
            data=result.as_dict(),
        )
    return Row(
        name,
        "pass" if result.mfu >= MFU_TARGET else "fail",
        f"MFU {result.mfu:.1%}",
        summary + f"; target MFU ≥ {MFU_TARGET:.0%}",
        data=result.as_dict(),
    )


def _peak_and_ms(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Median milliseconds (``triton.testing.do_bench``) and peak MiB allocated by one call."""
    from triton.testing import do_bench

    fn()  # compile / warm up
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return float(do_bench(fn, return_mode="median")), peak


def check_triton_kernels(device: torch.device, dry_run: bool) -> Row:
    """Section 6.7's Triton kernels vs PyTorch's on CUDA: parity, median time, peak memory.

    Softmax and layer norm (forward + backward) on ``(4096, N)`` float32 rows; attention on
    ``(B, H, T, 64)`` float16, causal, against ``F.scaled_dot_product_attention`` (whatever
    backend PyTorch picks) and against attention with the ``T x T`` matrix materialised. Passes
    when every kernel agrees with PyTorch (float32 ≤ 1e-4, float16 attention ≤ 1e-2).
    """
    name = "triton kernels vs PyTorch"
    if device.type != "cuda":
        return Row(
            name,
            "skipped",
            detail="skipped: no CUDA (on a CPU the kernels run in Triton's interpreter, which "
            "checks correctness but is not a benchmark; tests/test_kernels.py covers parity)",
        )
    from dlbook.kernels import flash_attention, layer_norm, softmax

    gen = torch.Generator(device=device).manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    worst = 0.0
    widths = (1024, 4096) if not dry_run else (256,)
    for n in widths:
        x = torch.randn(4096, n, device=device, generator=gen)
        diff = (softmax(x) - torch.softmax(x, -1)).abs().max().item()
        ms, mib = _peak_and_ms(lambda x=x: softmax(x), device)
        ref_ms, ref_mib = _peak_and_ms(lambda x=x: torch.softmax(x, -1), device)
        results[f"softmax N={n}"] = {"diff": diff, "ms": ms, "ref_ms": ref_ms, "mib": mib,
                                     "ref_mib": ref_mib}
        worst = max(worst, diff)
        w = torch.randn(n, device=device, generator=gen, requires_grad=True)
        b = torch.randn(n, device=device, generator=gen, requires_grad=True)
        xg = x.clone().requires_grad_()
        dy = torch.randn_like(x)

        def ln(fn, xg=xg, w=w, b=b, dy=dy, n=n):
            return torch.autograd.grad(fn(xg, w, b), (xg, w, b), dy)

        ours = ln(layer_norm)
        ref = ln(lambda a, w_, b_, n=n: F.layer_norm(a, (n,), w_, b_))
        diff = max((o - r).abs().max().item() / (1 + r.abs().max().item())
                   for o, r in zip(ours, ref, strict=True))
        ms, mib = _peak_and_ms(lambda: ln(layer_norm), device)
        ref_ms, ref_mib = _peak_and_ms(
            lambda n=n: ln(lambda a, w_, b_: F.layer_norm(a, (n,), w_, b_)), device
        )
        results[f"layer norm fwd+bwd N={n}"] = {"diff": diff, "ms": ms, "ref_ms": ref_ms,
                                                 "mib": mib, "ref_mib": ref_mib}
        worst = max(worst, diff)
    ok = worst <= 1e-4
    for t in (1024, 4096) if not dry_run else (256,):
        q, k, v = (torch.randn(4, 16, t, 64, device=device, generator=gen, dtype=torch.float16)
                   for _ in range(3))

        def materialised(q=q, k=k, v=v, t=t):
            s = (q @ k.transpose(-2, -1)).float() / 8.0
            s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1),
                              float("-inf"))
            return (torch.softmax(s, -1).to(q.dtype) @ v)

        out = flash_attention(q, k, v, causal=True)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        diff = (out.float() - ref.float()).abs().max().item()
        ok = ok and diff <= 1e-2
        ms, mib = _peak_and_ms(lambda q=q, k=k, v=v: flash_attention(q, k, v, causal=True),
                               device)
        ref_ms, ref_mib = _peak_and_ms(
            lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True), device
        )
        mat_ms, mat_mib = _peak_and_ms(materialised, device)
        results[f"attention T={t}"] = {"diff": diff, "ms": ms, "ref_ms": ref_ms, "mib": mib,
                                       "ref_mib": ref_mib, "materialised_ms": mat_ms,
                                       "materialised_mib": mat_mib}
    last = results[f"attention T={t}"]
    detail = "; ".join(
        f"{key}: {r['ms']:.3f} ms vs torch {r['ref_ms']:.3f} ms, {r['mib']:.0f} vs "
        f"{r['ref_mib']:.0f} MiB, |Δ| {r['diff']:.0e}" for key, r in results.items()
    )
    return Row(
        name,
        "pass" if ok else "fail",
        f"attention T={t}: {last['ms']:.2f} ms (SDPA {last['ref_ms']:.2f}, "
        f"materialised {last['materialised_ms']:.2f})",
        detail + "; limits |Δ| ≤ 1e-4 (fp32), ≤ 1e-2 (fp16 attention)",
        data=results,
    )


def check_sections(sections: Sequence[str], profile: str, timeout: float) -> list[Row]:
    """Run each section with ``dlbook run KEY --profile PROFILE`` in a subprocess."""
    rows = []
    for key in sections:
        env = dict(os.environ, MPLBACKEND="Agg")
        command = [sys.executable, "-m", "dlbook.cli", "run", key, "--profile", profile]
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            rows.append(
                Row(
                    f"run {key} ({profile})",
                    "fail",
                    "timeout",
                    f"did not finish in {timeout:.0f} s",
                )
            )
            continue
        seconds = time.perf_counter() - start
        last = (proc.stderr.strip().splitlines() or [""])[-1][:160]
        rows.append(
            Row(
                f"run {key} ({profile})",
                "pass" if proc.returncode == 0 else "fail",
                f"exit {proc.returncode}",
                f"{seconds:.0f} s" + ("" if proc.returncode == 0 else f"; {last}"),
            )
        )
    return rows


def _timed(name: str, fn: Callable[[], Row]) -> Row:
    start = time.perf_counter()
    try:
        row = fn()
    except Exception as e:  # one failing check must not hide the others' results
        row = Row(name, "error", "", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    row.seconds = time.perf_counter() - start
    return row


def run_checks(
    *, dry_run: bool, sections: Sequence[str] = DEFAULT_SECTIONS, section_timeout: float = 240.0
) -> list[Row]:
    """Run every check and return the rows (dry run: CPU, tiny sizes, sections in ``smoke``)."""
    device = torch.device("cpu") if dry_run else torch.device("cuda")
    rows = [
        _timed("bf16 autocast vs fp32", lambda: check_bf16_autocast(device, dry_run)),
        _timed("flash attention parity", lambda: check_flash_attention(device, dry_run)),
        _timed("torch.compile", lambda: check_compile(device, dry_run)),
        _timed("bench gpt", lambda: check_bench(device, dry_run)),
        _timed("triton kernels vs PyTorch", lambda: check_triton_kernels(device, dry_run)),
    ]
    start = time.perf_counter()
    section_rows = check_sections(sections, "smoke" if dry_run else "full", section_timeout)
    for row in section_rows:
        row.seconds = (time.perf_counter() - start) / len(section_rows)
    return rows + section_rows


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a plain-text table: check, status, value, seconds, detail."""
    header = ("check", "status", "result", "time", "detail")
    lines = [(r.check, r.status, r.value, f"{r.seconds:.1f} s", r.detail) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=False)][:4]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths), "-" * 6)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dlbook.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check on the CPU with tiny sizes (no GPU needed)",
    )
    parser.add_argument("--out", type=Path, help="also write the rows to this JSON file")
    parser.add_argument(
        "--sections",
        nargs="*",
        default=list(DEFAULT_SECTIONS),
        help="sections to run in the full profile (default: %(default)s)",
    )
    parser.add_argument(
        "--section-timeout",
        type=float,
        default=240.0,
        help="seconds allowed per section (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.section_timeout <= 0:
        print("gpu-check: --section-timeout must be positive", file=sys.stderr)
        return 2
    if args.out is not None and not args.out.parent.is_dir():
        print(f"gpu-check: the folder of --out ({args.out.parent}) does not exist", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA GPU here; run it on a GPU machine, or add --dry-run to run "
            "the checks on the CPU with tiny sizes",
            file=sys.stderr,
        )
        return 2
    rows = run_checks(
        dry_run=args.dry_run, sections=args.sections, section_timeout=args.section_timeout
    )
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    print(f"gpu-check on {device}, torch {torch.__version__}")
    print(format_table(rows))
    if args.out is not None:
        from dlbook.checkpoint import atomic_write

        payload = {
            "device": device,
            "torch": torch.__version__,
            "dry_run": args.dry_run,
            "rows": [asdict(r) for r in rows],
        }
        text = json.dumps(payload, indent=1, default=str)
        atomic_write(args.out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 1 if any(r.status in ("fail", "error") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
