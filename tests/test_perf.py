import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dlbook.cli import main
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.perf import benchmark_gpt, flops_per_token


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
    estimate = flops_per_token(config, model.num_params(non_embedding=True), training=False)
    assert estimate == pytest.approx(counted, rel=0.03)
    assert flops_per_token(config, 1000) == 3 * flops_per_token(config, 1000, training=False)


def test_benchmark_runs_and_reports(capsys):
    result = benchmark_gpt("tiny", batch_size=2, steps=1, warmup=0, device=torch.device("cpu"))
    assert result.tokens_per_second > 0 and result.mfu is None and result.dtype == "fp32"
    result = benchmark_gpt(
        "tiny", batch_size=2, steps=1, warmup=0, device=torch.device("cpu"), peak_tflops=1.0
    )
    assert result.mfu == pytest.approx(result.achieved_tflops / 1.0)
    assert (
        main(
            ["bench", "gpt", "--size", "tiny", "--steps", "1", "--warmup", "0", "--batch-size", "1"]
        )
        == 0
    )
    assert "tokens/s" in capsys.readouterr().out


def test_benchmark_bad_input():
    with pytest.raises(ValueError, match="size"):
        benchmark_gpt("huge")
    with pytest.raises(ValueError, match="dtype"):
        benchmark_gpt("tiny", dtype="fp8", device=torch.device("cpu"))
