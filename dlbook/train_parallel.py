"""A data-parallel training run, started once per rank by torchrun (section 4.6).

    python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        -m dlbook.train_parallel --strategy ddp --steps 30 --out losses.json

``--strategy single`` runs the same training in one process without torchrun: the reference
that a correct data-parallel run must reproduce. Every rank draws the same global batch (same
seed) and trains on its own contiguous share; rank 0 writes the per-step losses (averaged over
ranks, i.e. the loss of the global batch) and a checksum of the final weights to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from dlbook.checkpoint import atomic_write
from dlbook.data import load_digits
from dlbook.distributed import init_distributed, mean_over_ranks, shard_of_batch
from dlbook.nn import MLP, MLPConfig

STRATEGIES = ("single", "ddp", "fsdp")


def build_model(seed: int = 0) -> nn.Module:
    """The model every rank starts from: identical weights because of the shared seed."""
    torch.manual_seed(seed)
    return MLP(MLPConfig(in_features=64, hidden=[128, 64], out_features=10))


def wrap(model: nn.Module, strategy: str, world_size: int, device: torch.device) -> nn.Module:
    """Wrap ``model`` for ``strategy``: DDP replicates it, FSDP2 shards every Linear layer."""
    if strategy == "single":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights on every rank (FSDP2 parameters are DTensors; gather them)."""
    state = {}
    for name, value in model.state_dict().items():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        state[name.removeprefix("module.")] = value.detach().cpu()
    return state


def train(strategy: str, steps: int, global_batch: int, lr: float, seed: int = 0) -> dict:
    """Train and return ``{"losses": [...], "checksum": float, "world_size": int}``."""
    info = init_distributed()
    if strategy == "single" and info.world_size > 1:
        raise ValueError("--strategy single runs without torchrun; use ddp or fsdp under it")
    if strategy != "single" and info.world_size == 1:
        raise ValueError(f"--strategy {strategy} needs several processes: start it with torchrun")
    x_all, y_all = load_digits(seed=0).train.tensors
    model = wrap(build_model(seed).to(info.device), strategy, info.world_size, info.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    # One seed for all ranks: every rank draws the same global batch and keeps its share.
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (global_batch,), generator=order)
        x = shard_of_batch(x_all[idx], info.rank, info.world_size).to(info.device)
        y = shard_of_batch(y_all[idx], info.rank, info.world_size).to(info.device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP and FSDP average the gradients over ranks here
        optimizer.step()
        losses.append(mean_over_ranks(loss).item())
    state = full_state(model)
    checksum = float(sum(v.double().sum() for v in state.values()))
    if info.world_size > 1:  # every rank must end with the same weights
        sums = [torch.zeros(1, dtype=torch.float64) for _ in range(info.world_size)]
        dist.all_gather(sums, torch.tensor([checksum], dtype=torch.float64))
        if len({s.item() for s in sums}) != 1:
            raise RuntimeError(f"ranks disagree on the weights: {[s.item() for s in sums]}")
        dist.destroy_process_group()
    return {
        "losses": losses,
        "checksum": checksum,
        "world_size": info.world_size,
        "strategy": strategy,
        "is_main": info.is_main,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = train(args.strategy, args.steps, args.global_batch, args.lr)
    if result.pop("is_main"):
        atomic_write(args.out, lambda p: p.write_text(json.dumps(result)))


if __name__ == "__main__":
    main()
