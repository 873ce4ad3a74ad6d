# %% [markdown]
# # Distributed training: data parallel and sharded
#
# A model that trains in a day on one GPU trains in about three hours on eight, if the work can
# be split; and a model too large for one GPU's memory can only be trained if its state is
# split. Both are the business of **distributed training**. This section explains the two
# strategies every large-model practitioner uses, *data parallelism* (DDP) and *fully sharded
# data parallelism* (FSDP), and launches both for real: with `torchrun`, two processes, on this
# machine's CPU, talking through PyTorch's gloo backend. The commands are the ones you would run
# on GPUs; only the backend changes.
#
# The model here is the digits MLP of {doc}`../01_basics/04_training_loop`, kept small so that
# the runs take seconds; nothing below depends on its size or kind.

# %%
import json
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F

from dlbook import pick
from dlbook.book import glue
from dlbook.data import load_digits
from dlbook.distributed import memory_per_rank, run_torchrun, shard_of_batch, torchrun_command
from dlbook.train_parallel import build_model

workdir = Path(tempfile.mkdtemp())
steps = pick(smoke=3, book=40)

# %% [markdown]
# ## Data parallelism: same model, different data
#
# In data-parallel training each of $N$ processes (**ranks**, one per GPU) holds a full copy of
# the model. Every step, a global batch of $B$ examples is split into $N$ shares of $B/N$; each
# rank computes the gradient of the mean loss over its share, the ranks average their gradients,
# and each applies the same optimizer step to its copy, which therefore stays identical to the
# others. Averaging is exact: with equal shares $S_1, \dots, S_N$,
#
# $$
# \nabla_\theta \frac{1}{B} \sum_{i=1}^{B} \ell_i
# = \frac{1}{N} \sum_{r=1}^{N} \underbrace{\frac{1}{B/N} \sum_{i \in S_r} \nabla_\theta \ell_i}_{\text{rank } r\text{'s gradient}},
# $$
#
# so $N$ ranks with $B/N$ examples each take *the same step* as one process with $B$ examples.
# Before launching processes we check the identity inside this one, playing both ranks:

# %%
x_all, y_all = load_digits(seed=0).train.tensors
x, y = x_all[:64], y_all[:64]
model = build_model()


def gradient(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    F.cross_entropy(model(xs), ys).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


world = 2
per_rank = [gradient(shard_of_batch(x, r, world), shard_of_batch(y, r, world)) for r in range(world)]
averaged = torch.stack(per_rank).mean(0)
torch.testing.assert_close(averaged, gradient(x, y), rtol=1e-5, atol=1e-7)
print("mean of the two ranks' gradients == gradient of the whole batch")

# %% [markdown]
# The averaging is an **all-reduce**: every rank contributes a tensor and every rank receives
# the sum. The usual ring algorithm does it as a *reduce-scatter* (each rank ends with the sum
# of one $1/N$-th of the tensor) followed by an *all-gather* (each rank collects the other
# sums); each phase sends $\tfrac{N-1}{N}$ of the tensor per rank, so a rank sends about twice
# the gradient size per step whatever $N$ is. PyTorch's `DistributedDataParallel`
# {cite:p}`li2020pytorch` hides this cost by cutting the gradients into buckets and all-reducing
# each bucket while the backward pass is still computing the earlier layers' gradients.
#
# ## Launching with torchrun
#
# A distributed job is several copies of one program. `torchrun` starts them and tells each its
# `RANK`, `LOCAL_RANK` (its index on this machine, which picks its GPU) and `WORLD_SIZE`;
# `dlbook.distributed.init_distributed` turns these into a process group, NCCL on GPUs and
# gloo on CPUs:
#
# ```{literalinclude} ../../dlbook/distributed.py
# :pyobject: init_distributed
# ```
#
# The training program, `dlbook.train_parallel`, is short. Every rank draws the *same* global
# batch from a shared seed and keeps its own share; DDP averages the gradients inside
# `loss.backward()`:
#
# ```{literalinclude} ../../dlbook/train_parallel.py
# :pyobject: train
# ```
#
# We run it three times: in one process (the reference), with DDP on two processes, and with
# FSDP on two processes, each with the same global batch of 64.

# %%
def launch(strategy: str) -> dict:
    out = workdir / f"{strategy}.json"
    args = ["--strategy", strategy, "--steps", str(steps), "--global-batch", "64", "--out", str(out)]
    if strategy == "single":
        cmd = [sys.executable, "-m", "dlbook.train_parallel", *args]
    else:
        cmd = torchrun_command("dlbook.train_parallel", *args, nproc_per_node=2)
    print(" ".join(cmd[1:]))
    run_torchrun(cmd)
    return json.loads(out.read_text())


runs = {strategy: launch(strategy) for strategy in ("single", "ddp", "fsdp")}
assert runs["ddp"]["world_size"] == runs["fsdp"]["world_size"] == 2

# %% [markdown]
# ## The two-process run follows the one-process run
#
# If data parallelism is implemented correctly, the loss of every step matches the single
# process's, up to the rounding of summing in a different order.

# %%
reference = torch.tensor(runs["single"]["losses"])
gaps = {s: (torch.tensor(runs[s]["losses"]) - reference).abs().max().item() for s in ("ddp", "fsdp")}
print({s: f"{g:.1e}" for s, g in gaps.items()})
assert all(g < 1e-5 for g in gaps.values()), gaps
assert all(abs(runs[s]["checksum"] - runs["single"]["checksum"]) < 1e-4 for s in ("ddp", "fsdp"))
glue("s4_6_ddp_gap", gaps["ddp"], ".1e")
glue("s4_6_fsdp_gap", gaps["fsdp"], ".1e")
glue("s4_6_steps", steps)

plt.figure(figsize=(6, 3.2))
plt.plot(reference, label="1 process, batch 64", linewidth=4, alpha=0.4)
plt.plot(runs["ddp"]["losses"], "--", label="DDP, 2 × 32")
plt.plot(runs["fsdp"]["losses"], ":", label="FSDP, 2 × 32")
plt.xlabel("step")
plt.ylabel("loss of the global batch")
plt.legend()
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# Over {glue}`s4_6_steps` steps the largest difference in loss is {glue}`s4_6_ddp_gap` for DDP
# and {glue}`s4_6_fsdp_gap` for FSDP: the curves lie on top of each other, and both runs end
# with the reference's weights (the checksums agree). Each rank also checks, at the end, that
# all ranks hold identical weights.
#
# ## Sharding: FSDP and ZeRO
#
# DDP gives every rank a full copy of everything. Training with Adam in mixed precision
# {cite:p}`micikevicius2018mixed` keeps, per parameter, a 16-bit weight (2 bytes), a 16-bit
# gradient (2 bytes), and in float32 a master weight and Adam's two moments (12 bytes): 16
# bytes per parameter, before activations. A 7-billion-parameter model needs 112 GB for these
# alone, more than one GPU has. The **ZeRO** stages {cite:p}`rajbhandari2020zero` remove the
# redundancy step by step: stage 1 shards the optimizer state over the $N$ ranks, stage 2 also
# the gradients, stage 3 also the parameters. Per rank, with $\Psi$ parameters:
#
# | strategy | parameters | gradients | optimizer state | total |
# |---|---|---|---|---|
# | DDP | $2\Psi$ | $2\Psi$ | $12\Psi$ | $16\Psi$ |
# | ZeRO-1 | $2\Psi$ | $2\Psi$ | $12\Psi/N$ | $4\Psi + 12\Psi/N$ |
# | ZeRO-2 | $2\Psi$ | $2\Psi/N$ | $12\Psi/N$ | $2\Psi + 14\Psi/N$ |
# | ZeRO-3 / FSDP | $2\Psi/N$ | $2\Psi/N$ | $12\Psi/N$ | $16\Psi/N$ |
#
# PyTorch's **FSDP** {cite:p}`zhao2023pytorch` implements stage 3: each rank stores $1/N$ of
# every parameter; before a layer runs, its full weights are gathered (all-gather) and freed
# again after use; after its backward, its gradients are summed and scattered so each rank keeps
# the gradient of its own shard (reduce-scatter). In FSDP2 this is `fully_shard(module)`,
# applied to each layer (the unit that is gathered at once) and then to the whole model. Our
# FSDP run above did exactly this. The arithmetic, computed by the library:

# %%
def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f}"


sizes = {"GPT-2 small (124 M)": 124e6, "1.5 B": 1.5e9, "7 B": 7e9, "70 B": 70e9}
n_gpus = 8
print(f"GB per rank on {n_gpus} GPUs (weights, gradients, Adam state; no activations)")
print(f"{'model':>20} " + " ".join(f"{s:>7}" for s in ("ddp", "zero1", "zero2", "fsdp")))
table = {}
for name, n in sizes.items():
    table[name] = {s: memory_per_rank(int(n), n_gpus, s)["total"] for s in ("ddp", "zero1", "zero2", "fsdp")}
    print(f"{name:>20} " + " ".join(f"{gigabytes(v):>7}" for v in table[name].values()))

seven = table["7 B"]
assert seven["ddp"] == 16 * 7e9 and seven["fsdp"] == 16 * 7e9 / n_gpus
glue("s4_6_7b_ddp", gigabytes(seven["ddp"]))
glue("s4_6_7b_fsdp", gigabytes(seven["fsdp"]))

# %% [markdown]
# A 7 B model needs {glue}`s4_6_7b_ddp` GB per GPU under DDP, which no single GPU has, and
# {glue}`s4_6_7b_fsdp` GB per GPU when fully sharded over eight, which fits on an 80 GB GPU
# with room for activations. Sharding is paid for in communication: FSDP moves the parameters
# (all-gather, forward and backward) as well as the gradients (reduce-scatter), about 1.5 times
# the traffic of DDP's all-reduce, which is why it is the tool for models that *do not fit*,
# and DDP remains the simpler choice for models that do.
#
# ## From this CPU to GPUs and many machines
#
# Nothing in `train_parallel` is specific to the CPU: `init_distributed` picks NCCL and
# `cuda:LOCAL_RANK` when GPUs are present. On one machine with eight GPUs, and on two such
# machines (run the same command on both; the rendezvous endpoint is one of them):

# %%
one_node = torchrun_command("dlbook.train_parallel", "--strategy", "fsdp", "--out", "run.json",
                            nproc_per_node=8)
two_nodes = torchrun_command("dlbook.train_parallel", "--strategy", "fsdp", "--out", "run.json",
                             nproc_per_node=8, nnodes=2, rdzv_endpoint="node0.example:29500")
for cmd in (one_node, two_nodes):
    print("python " + " ".join(cmd[1:]))
assert "--standalone" in one_node and "--nnodes=2" in two_nodes

# %% [markdown]
# With several nodes, the global batch grows with the number of ranks unless the per-rank
# batch shrinks; keeping the *global* batch fixed, as we did, keeps the optimization identical.
# What changes with scale is the cost of communication: within a node GPUs talk over NVLink,
# between nodes over a network an order of magnitude slower, which is why large jobs combine
# FSDP within nodes with plain data parallelism across them.
#
# ## Summary
#
# * Data parallelism splits each global batch over $N$ ranks and averages their gradients with
#   an all-reduce; with equal shares it takes exactly the single-process step (asserted above).
# * `torchrun` starts one process per rank; `RANK`, `LOCAL_RANK` and `WORLD_SIZE` tell each
#   where it is; the same program runs on CPUs (gloo) and GPUs (NCCL).
# * FSDP (ZeRO stage 3) shards parameters, gradients and optimizer state, cutting memory per
#   rank from $16\Psi$ to $16\Psi/N$ bytes for mixed-precision Adam, at the price of more
#   communication.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-4-6-1
# ```
# Split a global batch of 64 *unequally*, 40 examples to one rank and 24 to the other, and
# average the two ranks' mean-loss gradients. Is the result the full-batch gradient? What would
# make it so?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-6-1
# :class: dropdown
# ```
# No: the plain average gives each rank's examples weight $\tfrac{1}{2}\cdot\tfrac{1}{40}$ or
# $\tfrac{1}{2}\cdot\tfrac{1}{24}$ instead of $\tfrac{1}{64}$. Weighting each rank's gradient by
# its share of the batch (40/64 and 24/64) restores the full-batch gradient; this is why
# `shard_of_batch` refuses batches that do not split evenly.

# %%
g40, g24 = gradient(x[:40], y[:40]), gradient(x[40:], y[40:])
full = gradient(x, y)
plain, weighted = (g40 + g24) / 2, (40 * g40 + 24 * g24) / 64
print(f"plain average error {(plain - full).norm():.2e}, weighted {(weighted - full).norm():.2e}")
assert (plain - full).norm() > 1e-4
torch.testing.assert_close(weighted, full, rtol=1e-5, atol=1e-7)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-6-2
# ```
# With 8 GPUs of 80 GB, what is the largest model (in parameters) that fits under DDP, ZeRO-2
# and FSDP if weights, gradients and Adam state may use 60 GB per GPU?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-6-2
# :class: dropdown
# ```
# Solve the per-rank totals for $\Psi$: DDP $16\Psi \le 60$ GB gives 3.75 B parameters; ZeRO-2
# $(2 + 14/8)\Psi \le 60$ GB gives 16 B; FSDP $16\Psi/8 \le 60$ GB gives 30 B.

# %%
budget = 60e9
largest = {s: budget / memory_per_rank(1, 8, s)["total"] for s in ("ddp", "zero2", "fsdp")}
print({s: f"{v / 1e9:.2f} B" for s, v in largest.items()})
assert abs(largest["fsdp"] - 30e9) < 1 and abs(largest["ddp"] - 3.75e9) < 1

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-4-6-3
# ```
# Our workers averaged the loss over ranks only for logging. Why must a data-parallel run
# *not* average the loss before `backward()` in addition to DDP's gradient averaging?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-4-6-3
# :class: dropdown
# ```
# DDP already averages gradients over the $N$ ranks during `backward()`. Averaging the loss
# first (with an all-reduce, which autograd does not differentiate through in the usual way)
# would either be ignored by autograd or scale the gradient by $1/N$ a second time, so the run
# would effectively use a learning rate $N$ times too small and stop matching the
# single-process run.
# ```{solution-end}
# ```
