"""Data-parallel and sharded training: process-group set-up, launch helpers, memory arithmetic.

A distributed run is several copies of one script, started by ``torchrun``, which tells each
copy its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` through environment variables. This module
turns those into a process group (NCCL on CUDA GPUs, gloo on CPUs), splits global batches among
ranks, builds ``torchrun`` command lines, and computes how much memory each rank needs under
each sharding strategy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

Strategy = Literal["ddp", "zero1", "zero2", "fsdp"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: global ``rank`` of ``world_size``, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Uses NCCL and one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available, gloo and the
    CPU otherwise. Run without torchrun, it returns a world of one and creates no group.

    Raises:
        RuntimeError: the environment names more processes on this node than it has GPUs.
    """
    if "RANK" not in os.environ:
        return DistInfo(0, 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} needs GPU {local_rank}, but this node has "
                f"{torch.cuda.device_count()}; start fewer processes per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return DistInfo(rank, local_rank, world_size, device)


def shard_of_batch(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of a global batch ``(B, ...)`` → ``(B / world, ...)``.

    Raises:
        ValueError: ``B`` is not divisible by ``world_size`` (ranks would get unequal shares,
            and averaging their gradients would no longer equal the global-batch gradient).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    if len(batch) % world_size:
        raise ValueError(
            f"a global batch of {len(batch)} does not split evenly over {world_size} ranks"
        )
    share = len(batch) // world_size
    return batch[rank * share : (rank + 1) * share]


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all ranks (identity in a world of one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def torchrun_command(
    module: str,
    *args: str,
    nproc_per_node: int = 2,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
) -> list[str]:
    """The command line that starts ``python -m module *args`` on every process of a job.

    One node (``nnodes=1``) uses torchrun's ``--standalone`` rendezvous. For several nodes, run
    the same command on each with ``rdzv_endpoint="host:port"`` of one of them.
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError("nproc_per_node and nnodes must be at least 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("a multi-node job needs rdzv_endpoint='host:port'")
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
    return [*cmd, "-m", module, *args]


def run_torchrun(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a torchrun command to completion; raise with the workers' output if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"torchrun exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def memory_per_rank(
    n_params: int,
    world_size: int,
    strategy: Strategy,
    *,
    param_bytes: int = 2,
    grad_bytes: int = 2,
    optimizer_bytes: int = 12,
) -> dict[str, float]:
    """Bytes of parameters, gradients and optimizer state each rank holds.

    The defaults are mixed-precision Adam as in the ZeRO paper: 16-bit parameters and gradients
    (2 + 2 bytes per parameter) and a float32 master copy plus Adam's two moments (12 bytes).
    ``ddp`` replicates everything; ``zero1`` shards the optimizer state, ``zero2`` also the
    gradients, ``fsdp`` (ZeRO-3) also the parameters. Activations are not included.
    """
    if world_size < 1 or n_params < 0:
        raise ValueError("world_size must be at least 1 and n_params non-negative")
    sharded = {
        "ddp": set(),
        "zero1": {"optimizer"},
        "zero2": {"optimizer", "gradients"},
        "fsdp": {"optimizer", "gradients", "parameters"},
    }
    if strategy not in sharded:
        raise ValueError(f"strategy must be one of {sorted(sharded)}, not {strategy!r}")
    per_param = {"parameters": param_bytes, "gradients": grad_bytes, "optimizer": optimizer_bytes}
    out = {
        part: n_params * size / (world_size if part in sharded[strategy] else 1)
        for part, size in per_param.items()
    }
    out["total"] = sum(out.values())
    return out
