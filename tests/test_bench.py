"""Tests of dlbook.bench: the FLOP estimate, the stopwatch, the benchmark and its CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import dlbook.bench as bench
from dlbook.bench import benchmark_gpt, flops_per_token, matmul_params, seconds_per_call
from dlbook.cli import main
from dlbook.nn.gpt import GPT, GPTConfig


@pytest.mark.parametrize("n_layer,n_embd,block_size", [(2, 64, 64), (3, 96, 32)])
def test_flops_estimate_matches_counted_flops(n_layer, n_embd, block_size):
    """The 2N + 4·L·T·C forward estimate against PyTorch's own FLOP counter."""
    config = GPTConfig(
        vocab_size=300, block_size=block_size, n_layer=n_layer, n_head=4, n_embd=n_embd
    )
    model = GPT(config)
    idx = torch.randint(0, 300, (2, block_size))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx)  # the math kernel computes attention with counted matmuls
    counted = counter.get_total_flops() / idx.numel()
    estimate = flops_per_token(config, matmul_params(model), training=False)
    assert estimate == pytest.approx(counted, rel=0.03)
    assert flops_per_token(config, 1000) == 3 * flops_per_token(config, 1000, training=False)


class FakeClock:
    """perf_counter stand-in: every call of the timed function advances it by the next step."""

    def __init__(self, steps: list[float]) -> None:
        self.now, self.steps = 0.0, list(steps)

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += self.steps.pop(0)


@pytest.mark.parametrize("stat,expected", [("median", 2.0), ("min", 1.0), ("mean", 3.0)])
def test_seconds_per_call_statistics(monkeypatch, stat, expected):
    clock = FakeClock([100.0, 1.0, 2.0, 6.0])  # the first (warm-up) call is not counted
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    assert seconds_per_call(clock.work, repeats=3, warmup=1, stat=stat) == expected
    assert clock.steps == []  # exactly warmup + repeats calls


def test_seconds_per_call_bad_input():
    with pytest.raises(ValueError, match="repeats"):
        seconds_per_call(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        seconds_per_call(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="stat"):
        seconds_per_call(lambda: None, stat="max")  # type: ignore[arg-type]


def test_benchmark_runs_and_reports(capsys):
    result = benchmark_gpt("tiny", batch_size=2, steps=1, warmup=0, device=torch.device("cpu"))
    assert result.tokens_per_second > 0 and result.mfu is None and result.dtype == "fp32"
    result = benchmark_gpt(
        "tiny", batch_size=2, steps=1, warmup=0, device=torch.device("cpu"), peak_tflops=1.0
    )
    assert result.mfu == pytest.approx(result.achieved_tflops / 1.0)
    args = ["bench", "gpt", "--size", "tiny", "--steps", "1", "--warmup", "0", "--batch-size", "1"]
    assert main(args) == 0
    assert "tokens/s" in capsys.readouterr().out
    assert main([*args, "--json", "--peak-tflops", "2"]) == 0
    out = json.loads(capsys.readouterr().out)  # strict JSON: no NaN
    assert out["size"] == "tiny" and out["batch_size"] == 1 and math.isfinite(out["mfu"])


def test_benchmark_restores_tf32_setting():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        benchmark_gpt("tiny", batch_size=1, steps=1, warmup=0, device=torch.device("cpu"))
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_benchmark_bad_input():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="size"):
        benchmark_gpt("huge")
    with pytest.raises(ValueError, match="dtype"):
        benchmark_gpt("tiny", dtype="fp8", device=cpu)
    for kwargs, word in [({"steps": 0}, "steps"), ({"batch_size": -2}, "batch_size"),
                         ({"warmup": -1}, "warmup"), ({"peak_tflops": 0.0}, "peak_tflops"),
                         ({"peak_tflops": -5.0}, "peak_tflops"),
                         ({"peak_tflops": float("nan")}, "peak_tflops")]:
        with pytest.raises(ValueError, match=word):
            benchmark_gpt("tiny", device=cpu, **kwargs)


@pytest.mark.parametrize(
    "extra,word",
    [
        (["--steps", "0"], "steps"),
        (["--batch-size", "-4"], "batch_size"),
        (["--warmup", "-1"], "warmup"),
        (["--peak-tflops", "0"], "peak_tflops"),
        (["--peak-tflops", "-5"], "peak_tflops"),
        (["--peak-tflops", "nan"], "peak_tflops"),
    ],
)
def test_cli_bench_bad_numbers_are_one_line(capsys, extra, word):
    assert main(["bench", "gpt", "--json", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no JSON with NaN in it, no report
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlbook bench:") and word in lines[0]


@pytest.mark.parametrize("value,word", [("bogus", "not a device name"), ("cuda", "CUDA")])
def test_cli_bad_device_is_one_line(capsys, monkeypatch, value, word):
    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("DLBOOK_DEVICE", value)
    assert main(["bench", "gpt", "--steps", "1"]) == 2
    assert main(["run", "1.1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(word in line and "DLBOOK_DEVICE" in line for line in lines)
