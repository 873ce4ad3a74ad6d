import pytest
import torch

from dlbook.device import amp_dtype, autocast, get_device


def test_cpu_can_be_forced(monkeypatch):
    monkeypatch.setenv("DLBOOK_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_unavailable_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device("cuda")


def test_amp_modes():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, "auto") is None
    assert amp_dtype(cpu, "off") is None
    assert amp_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="amp mode"):
        amp_dtype(cpu, "fp8")  # type: ignore[arg-type]


def test_cpu_bf16_autocast_changes_matmul_dtype():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (a @ a).dtype is torch.float32
