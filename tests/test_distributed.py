import json

import pytest
import torch

from dlbook.distributed import memory_per_rank, run_torchrun, shard_of_batch, torchrun_command
from dlbook.train_parallel import main as train_parallel_main


def test_shards_tile_the_batch():
    batch = torch.arange(12).reshape(6, 2)
    shards = [shard_of_batch(batch, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(shards), batch)


@pytest.mark.parametrize("rank,world,size", [(0, 4, 6), (2, 2, 4), (-1, 2, 4)])
def test_bad_shards_are_refused(rank, world, size):
    with pytest.raises(ValueError):
        shard_of_batch(torch.zeros(size), rank, world)


def test_memory_matches_zero_paper():
    n, world = 1_000_000, 8
    assert memory_per_rank(n, world, "ddp")["total"] == 16 * n
    assert memory_per_rank(n, world, "zero1")["total"] == 4 * n + 12 * n / world
    assert memory_per_rank(n, world, "zero2")["total"] == 2 * n + 14 * n / world
    assert memory_per_rank(n, world, "fsdp")["total"] == 16 * n / world
    with pytest.raises(ValueError, match="strategy"):
        memory_per_rank(n, world, "zero4")  # type: ignore[arg-type]


def test_torchrun_commands():
    single = torchrun_command("m", "--x", nproc_per_node=4)
    assert single[-3:] == ["-m", "m", "--x"] and "--standalone" in single
    multi = torchrun_command("m", nproc_per_node=8, nnodes=2, rdzv_endpoint="h:1")
    assert "--nnodes=2" in multi and "--rdzv_endpoint=h:1" in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command("m", nnodes=2)


def test_single_strategy_refuses_to_pretend(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        train_parallel_main(["--strategy", "ddp", "--steps", "1", "--out", str(tmp_path / "x")])


def test_two_gloo_processes_follow_one_process(tmp_path):
    """DDP with 2 processes and the same global batch takes the single process's steps."""
    args = ["--steps", "8", "--global-batch", "32"]
    train_parallel_main(["--strategy", "single", *args, "--out", str(tmp_path / "one.json")])
    run_torchrun(
        torchrun_command(
            "dlbook.train_parallel",
            "--strategy",
            "ddp",
            *args,
            "--out",
            str(tmp_path / "ddp.json"),
            nproc_per_node=2,
        ),
        timeout=300,
    )
    one = json.loads((tmp_path / "one.json").read_text())
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and len(ddp["losses"]) == 8
    assert ddp["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert ddp["checksum"] == pytest.approx(one["checksum"], abs=1e-4)
    assert one["losses"][-1] < one["losses"][0]
