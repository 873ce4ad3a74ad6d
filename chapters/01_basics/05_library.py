# %% [markdown]
# # The library: a reusable training loop
#
# The loop of {doc}`04_training_loop` is forty lines. Copied into every later section it would
# drift: one copy gets gradient clipping, another a fix for the last batch, a third forgets
# `model.eval()`. So from here on the book trains with one tested loop, `dlbook.train.Trainer`,
# and this section shows what it adds to the hand-written one and checks that it computes the
# same thing.
#
# What the library loop does beyond section 1.4:
#
# * **Devices and precision.** It moves the model and every batch to the device that
#   `dlbook.get_device()` picks (CUDA, Apple MPS or the CPU), and on a CUDA GPU runs the
#   forward pass under bfloat16 *autocast* (float16 with loss scaling on GPUs without bfloat16)
#   {cite:p}`micikevicius2018mixed`. On the CPU it stays in float32.
# * **History and progress.** Every epoch's numbers go into a `History`; a tqdm bar shows
#   progress.
# * **Checkpoints that resume exactly.** After every epoch it can write the model, optimizer,
#   schedule, counters and random-number state to disk, atomically; a resumed run ends with
#   the same weights, bit for bit, as one that was never interrupted.
# * **Clear errors.** A loss that turns into `nan`, a checkpoint of another model, a corrupt
#   file or an empty data set stop the run with a message that says what happened.

# %%
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.checkpoint import CheckpointError, load_model, save_model
from dlbook.data import load_digits
from dlbook.device import describe
from dlbook.nn import MLP, MODELS, MLPConfig
from dlbook.plot import plot_curves
from dlbook.train import EarlyStopping, Trainer, accuracy

device = get_device()
print("device:", describe(device))
splits = load_digits(seed=0)
config = MLPConfig(in_features=64, hidden=[128, 64], out_features=10, dropout=0.1)
workdir = Path(tempfile.mkdtemp())

# %% [markdown]
# ## The step and the loop
#
# Here is the library's training step. It is the five lines of section 1.4 plus the precision
# handling (`autocast`, and a gradient scaler that is switched off except for float16),
# optional gradient clipping, and a check that the loss is finite:
#
# ```{literalinclude} ../../dlbook/train.py
# :pyobject: Trainer.train_step
# ```
#
# `fit` runs epochs of such steps, evaluates, records, checkpoints and stops early. One detail
# matters for exact resumption: the shuffle order of epoch $e$ comes from a generator seeded
# with a number computed from `(seed, e)` alone, so a run restarted at epoch $e$ sees the same
# batches as one that got there without stopping.
#
# ```{literalinclude} ../../dlbook/train.py
# :pyobject: Trainer._loader
# ```
#
# ## Same numbers as the hand-written loop
#
# A library earns trust by reproducing the thing it replaces. We train one model with the
# `Trainer` and a copy with the bare loop of section 1.4, feeding the bare loop the same
# per-epoch shuffle order, and compare the weights.

# %%
def fresh_model(seed: int = 0, dropout: float = 0.0) -> MLP:
    seed_everything(seed)
    return MLP(MLPConfig(in_features=64, hidden=[128, 64], out_features=10, dropout=dropout))


epochs, batch_size, lr = pick(smoke=1, book=3), 32, 1e-3

library_model = fresh_model()
trainer = Trainer(library_model, torch.optim.AdamW(library_model.parameters(), lr=lr),
                  device="cpu", seed=0, progress=False)
trainer.fit(splits.train, epochs=epochs, batch_size=batch_size)

bare_model = fresh_model()
optimizer = torch.optim.AdamW(bare_model.parameters(), lr=lr)
for epoch in range(epochs):
    order = torch.Generator().manual_seed(0 * 1_000_003 + epoch)  # the Trainer's seeding rule
    for x, y in DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=order):
        loss = F.cross_entropy(bare_model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

max_diff = max((a - b).abs().max().item() for a, b in
               zip(library_model.parameters(), bare_model.parameters(), strict=True))
print(f"largest weight difference after {epochs} epochs: {max_diff:.2e}")
assert max_diff == 0.0
glue("s1_5_max_diff", max_diff, ".1e")

# %% [markdown]
# The two models agree exactly (largest difference {glue}`s1_5_max_diff`): the library adds
# bookkeeping, not different arithmetic.
#
# ## Training the digits model with the library
#
# The whole of section 1.4's training now takes a few lines: an optimizer, a schedule, early
# stopping and a checkpoint file.

# %%
max_epochs = pick(smoke=2, book=60, full=100)
model = fresh_model(dropout=0.1)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
steps = max_epochs * len(DataLoader(splits.train, batch_size=32))
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=3e-5)
trainer = Trainer(model, optimizer, scheduler=schedule, metrics={"accuracy": accuracy},
                  device=device, seed=0)
history = trainer.fit(splits.train, splits.val, epochs=max_epochs, batch_size=32,
                      early_stopping=EarlyStopping(patience=pick(smoke=1, book=10)),
                      checkpoint_path=workdir / "digits.pt")
test = trainer.evaluate(splits.test)
print(f"{len(history)} epochs, test accuracy {test['accuracy']:.3f}")
glue("s1_5_test_acc", test["accuracy"], ".3f")
glue("s1_5_epochs", len(history))
if checks_enabled():
    assert test["accuracy"] >= 0.95

plot_curves({"train loss": history["train_loss"], "validation loss": history["val_loss"]},
            ylabel="cross-entropy", title="Digits MLP trained by dlbook.train.Trainer", logy=True)
plt.show()

# %% [markdown]
# After {glue}`s1_5_epochs` epochs (early stopping included) the test accuracy is
# {glue}`s1_5_test_acc`, in line with section 1.4. The history is a table with one row per
# epoch:

# %%
for row in history.rows[:3] + history.rows[max(3, len(history) - 2):]:
    print({k: round(v, 4) for k, v in row.items()})

# %% [markdown]
# ## Interrupted and resumed, bit for bit
#
# Long training runs get interrupted: a laptop lid closes, a cluster job hits its time limit.
# Resuming must continue the *same* run, which needs more than the weights: the optimizer's
# moment estimates, the schedule's position, the epoch counter, and the random state that
# dropout draws its masks from. We train a model with dropout for a number of epochs in one go;
# then train another for half of them, throw the trainer away, build a new one, move the
# random state elsewhere (a new process would start from another one), and resume from the
# checkpoint.

# %%
def dropout_trainer() -> Trainer:
    model = fresh_model(dropout=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Trainer(model, optimizer, device="cpu", seed=0, progress=False)


total = pick(smoke=2, book=6)
straight = dropout_trainer()
straight.fit(splits.train, epochs=total, batch_size=64)

first_half = dropout_trainer()
first_half.fit(splits.train, epochs=total // 2, batch_size=64, checkpoint_path=workdir / "run.pt")
del first_half
shutil.copy(workdir / "run.pt", workdir / "half.pt")  # kept for the exercises
resumed = dropout_trainer()  # builds the model from seed 0, as the first run did ...
torch.manual_seed(12345)  # ... then the random state moves on, as in a new process it would
resumed.fit(splits.train, epochs=total, batch_size=64, checkpoint_path=workdir / "run.pt",
            resume=True)

identical = all(torch.equal(a, b) for a, b in
                zip(straight.model.parameters(), resumed.model.parameters(), strict=True))
print("resumed run identical to uninterrupted run:", identical)
assert identical and resumed.step == straight.step

# %% [markdown]
# The checkpoint is written by `torch.save` and read with `torch.load(weights_only=True)`,
# which accepts tensors and plain containers only and so cannot be made to run code. Before a
# checkpoint is loaded, the model configuration it records and its tensor names and shapes are
# compared with the model's, so that the checkpoint of a different model is refused with a
# diagnosis rather than half-loaded:

# %%
wider_model = MLP(MLPConfig(in_features=64, hidden=[256], out_features=10))
wider = Trainer(wider_model, torch.optim.SGD(wider_model.parameters(), lr=0.1), progress=False)
refused, message = False, ""
try:
    wider.load(workdir / "run.pt")
except CheckpointError as error:
    refused, message = True, str(error)
print(message)
assert refused and "MLP" in message  # refused, with a diagnosis that names the model

# %% [markdown]
# ## Shipping the model
#
# For use outside training, `save_model` writes the weights as safetensors and the config as
# JSON, each file atomically: the data go to a temporary file in the same folder, which is
# flushed to disk and then renamed over the target in one step, so a crash never leaves a
# half-written file. `load_model` rebuilds the architecture from a fixed list of model classes
# (it never imports a class named by the file), checks the weights fit, and returns the model
# in eval mode, ready to predict.
#
# ```{literalinclude} ../../dlbook/checkpoint.py
# :pyobject: atomic_write
# ```

# %%
save_model(trainer.model, workdir / "digits-mlp")
shipped = load_model(workdir / "digits-mlp", MODELS)
x_test, y_test = splits.test.tensors
trainer.model.eval()
with torch.no_grad():
    assert torch.equal(shipped(x_test), trainer.model.cpu()(x_test))
print(sorted(p.name for p in (workdir / "digits-mlp").iterdir()))

(workdir / "digits-mlp" / "model.safetensors").write_bytes(b"not a tensor file")
try:
    load_model(workdir / "digits-mlp", MODELS)
except CheckpointError as error:
    print("corrupt file:", error)
else:
    raise AssertionError("a corrupt weights file must be refused")

# %% [markdown]
# ## Summary
#
# * `dlbook.train.Trainer` is the loop of section 1.4 plus device and precision handling,
#   history, progress, checkpoints and clear errors; with the same shuffle order it produces
#   exactly the same weights as the hand-written loop.
# * Exact resume needs the optimizer and schedule state, the counters, the random state, and
#   a shuffle order that depends only on the seed and the epoch.
# * Models are shipped as safetensors + JSON config, written atomically and checked on load.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-1-5-1
# ```
# Resume the dropout run from its checkpoint *without* restoring the random state (delete
# `cpu_rng` from the checkpoint dictionary before loading it by hand). Do the weights still
# match the uninterrupted run?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-5-1
# :class: dropdown
# ```
# No. The dropout masks after the restart come from a different random stream, so the second
# half of training sees different masks and ends at different weights. The weights, optimizer
# and schedule are not enough; the random state is part of a run.

# %%
state = torch.load(workdir / "half.pt", weights_only=True)
broken = dropout_trainer()
broken.model.load_state_dict(state["model"])
broken.optimizer.load_state_dict(state["optimizer"])
broken.epoch, broken.step = state["epoch"], state["step"]
torch.manual_seed(12345)  # but cpu_rng is not restored
broken.fit(splits.train, epochs=total, batch_size=64)
same = all(torch.equal(a, b) for a, b in
           zip(straight.model.parameters(), broken.model.parameters(), strict=True))
print("identical without the random state:", same)
assert not same

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-5-2
# ```
# Train the digits model with `grad_clip=1.0`. Does clipping change the test accuracy here?
# When would you expect it to matter?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-5-2
# :class: dropdown
# ```
# On this small, well-conditioned problem the gradient norm rarely exceeds 1 after the first
# steps, so clipping changes little. It matters when occasional batches produce very large
# gradients, as in recurrent networks {cite:p}`pascanu2013difficulty` and in large Transformers
# early in training, where one bad step can undo hours of progress.

# %%
model = fresh_model(dropout=0.1)
clipped = Trainer(model, torch.optim.AdamW(model.parameters(), lr=3e-3), grad_clip=1.0,
                  metrics={"accuracy": accuracy}, device=device, progress=False)
clipped.fit(splits.train, splits.val, epochs=pick(smoke=1, book=20), batch_size=32)
print(f"test accuracy with clipping: {clipped.evaluate(splits.test)['accuracy']:.3f}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-5-3
# ```
# Why does `atomic_write` create its temporary file in the *destination* folder rather than in
# the system's temporary folder?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-5-3
# :class: dropdown
# ```
# `os.replace` is atomic only within one file system. The system's temporary folder is often a
# different file system (a RAM disk, say), and there the rename fails with an `OSError`
# (`EXDEV`): `os.replace` never falls back to copying. Code that "fixes" the failure with a
# copy (`shutil.move` does exactly that) loses atomicity, since a crash during a copy leaves a
# half-written file, the very thing we set out to avoid.
# ```{solution-end}
# ```
