# %% [markdown]
# # The training loop
#
# Every model in this book, from the 8×8-digit classifier below to the GPT of Part 4, is
# trained by the same loop: draw a mini-batch, compute a loss, back-propagate, let the
# optimizer take a step, adjust the learning rate, and every so often measure how the model
# does on data it has not trained on. This section writes that loop by hand, piece by piece, on
# a real data set, so that nothing in the library version of {doc}`05_library` is magic.
#
# We will build, in order: a data set and a `DataLoader`; the loss and the mini-batch gradient
# step; an optimizer with a learning-rate schedule; evaluation and early stopping; and finally
# saving the trained model, loading it back and using it to predict.

# %%
import json
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.data import load_digits
from dlbook.nn import MLP, MLPConfig
from dlbook.plot import plot_curves

seed_everything(0)
device = get_device()
print("training on", device)

# %% [markdown]
# ## The data: handwritten digits
#
# scikit-learn ships a small, real data set of handwritten digits {cite:p}`alpaydin1998digits,pedregosa2011scikit`:
# 1,797 grey-scale images of 8×8 pixels, each labelled 0–9. It installs with the package, so
# it works offline. `dlbook.data.load_digits` scales the pixel values (0–16) to $[0, 1]$,
# flattens each image to a vector of 64 numbers and splits the set, stratified by class, into
# a **training set** (what the model learns from), a **validation set** (what we watch during
# training to choose when to stop) and a **test set** (touched once, at the very end, to report
# an honest number).

# %%
splits = load_digits(seed=0)
sizes = {name: len(getattr(splits, name)) for name in ("train", "val", "test")}
print(sizes)
assert sum(sizes.values()) == 1797

x0, y0 = splits.train[0]
assert x0.shape == (64,) and x0.dtype == torch.float32 and y0.dtype == torch.int64

fig, axes = plt.subplots(2, 8, figsize=(8, 2.4))
for ax, (x, y) in zip(axes.flat, (splits.train[i] for i in range(16)), strict=True):
    ax.imshow(x.reshape(8, 8), cmap="gray_r")
    ax.set_title(int(y), fontsize=9)
    ax.axis("off")
fig.suptitle("Training images and their labels", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### `Dataset` and `DataLoader`
#
# PyTorch separates *what the examples are* from *how they are batched*. A `Dataset` answers
# two questions: how many examples there are (`__len__`) and what example $i$ is
# (`__getitem__`). The one above is a `TensorDataset`, but writing our own takes six lines and
# shows there is nothing more to it:

# %%
class DigitsDataset(Dataset):
    """Example i is (pixels (64,), label ())."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


ours = DigitsDataset(*splits.train.tensors)
assert len(ours) == len(splits.train)
assert all(torch.equal(a, b) for a, b in zip(ours[5], splits.train[5], strict=True))

# %% [markdown]
# A `DataLoader` draws examples from a data set and stacks them into **mini-batches**. With
# `shuffle=True` it visits the examples in a new random order every epoch (one pass over the
# training set); passing a seeded `torch.Generator` makes that order reproducible. With $N$
# examples and batch size $B$, an epoch has $\lceil N/B \rceil$ batches, the last one smaller
# when $B$ does not divide $N$.

# %%
batch_size = 32
loader = DataLoader(ours, batch_size=batch_size, shuffle=True,
                    generator=torch.Generator().manual_seed(0))
xb, yb = next(iter(loader))
print("a batch:", tuple(xb.shape), tuple(yb.shape))
assert xb.shape == (batch_size, 64) and yb.shape == (batch_size,)
assert len(loader) == math.ceil(len(ours) / batch_size)
last_batch = len(ours) - (len(loader) - 1) * batch_size
glue("s1_4_n_batches", len(loader))
glue("s1_4_last_batch", last_batch)
glue("s1_4_n_train", len(ours))

# %% [markdown]
# Our {glue}`s1_4_n_train` training images make {glue}`s1_4_n_batches` batches per epoch; the
# last one holds {glue}`s1_4_last_batch` images.
#
# ## The loss and the gradient step
#
# A classifier with parameters $\theta$ maps an image $x$ to ten **logits** $z = f_\theta(x)$,
# one score per class. The softmax turns them into probabilities
# $p_k = e^{z_k} / \sum_j e^{z_j}$, and the **cross-entropy loss** of an example with label $y$
# is the negative log-probability the model gives the right class, $\ell = -\log p_y$ (section
# {doc}`../02_math/02_losses` derives it and its gradient). Training minimises the average loss
# over the $N$ training examples, the *empirical risk*
#
# $$
# L(\theta) = \frac{1}{N} \sum_{i=1}^{N} \ell\big(f_\theta(x_i), y_i\big).
# $$
#
# Computing $\nabla L$ exactly needs a pass over all the data. **Mini-batch stochastic gradient
# descent** {cite:p}`robbins1951stochastic` instead uses the average over a random batch
# $\mathcal{B}$ of $B$ examples,
#
# $$
# g = \frac{1}{B} \sum_{i \in \mathcal{B}} \nabla_\theta\, \ell\big(f_\theta(x_i), y_i\big),
# \qquad \theta \leftarrow \theta - \eta\, g ,
# $$
#
# which is an unbiased estimate of $\nabla L$ (its expectation over random batches is the full
# gradient) at a cost of $B$ examples instead of $N$. The **learning rate** $\eta$ sets the step
# size. Let us check the unbiasedness claim on our model. We draw $M$ random batches, average
# their gradients and compare the average with the full gradient. An unbiased estimate misses
# only by its noise: if one batch gradient has per-coordinate variance $s_j^2$, the mean of $M$
# independent ones misses the full gradient by a squared distance whose expectation is
# $\sum_j s_j^2 / M$. We estimate the $s_j^2$ from the same $M$ batches and assert that the
# squared distance stays below three times that, while a single batch gradient is far off.

# %%
config = MLPConfig(in_features=64, hidden=[128, 64], out_features=10, dropout=0.1)
model = MLP(config).to(device)
model.eval()  # no dropout, so every gradient below is deterministic


def flat_grad(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean cross-entropy over (x, y), flattened into one vector."""
    model.zero_grad()
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


full = flat_grad(*splits.train.tensors)
x_all, y_all = splits.train.tensors
n_batches = pick(smoke=20, book=400)
g = torch.Generator().manual_seed(1)
batch_grads = torch.stack([
    flat_grad(x_all[idx], y_all[idx])
    for idx in (torch.randperm(len(x_all), generator=g)[:batch_size] for _ in range(n_batches))
])  # (M, P): M random batches, drawn as a shuffled DataLoader draws them
mean_grad = batch_grads.mean(dim=0)
expected_sq = batch_grads.var(dim=0).sum() / n_batches  # E ||mean - full||^2 if unbiased
err_sq = (mean_grad - full).pow(2).sum()
one_sq = (batch_grads[0] - full).pow(2).sum()
print(f"full-gradient norm {full.norm():.4f}; ||one batch - full||^2 = {one_sq:.2e}, "
      f"||mean of {n_batches} - full||^2 = {err_sq:.2e} (expected {expected_sq:.2e})")
glue("s1_4_unbiased_ratio", (err_sq / expected_sq).item(), ".2f")
glue("s1_4_unbiased_m", n_batches)
assert err_sq < 3 * expected_sq  # within the noise of M samples: no bias shows
assert one_sq > 0.1 * n_batches * expected_sq  # ... while one batch alone is noisy
# an epoch's batches partition the data, so their size-weighted mean is the full gradient exactly
weighted = sum(flat_grad(xb, yb) * len(xb) for xb, yb in loader) / len(ours)
torch.testing.assert_close(weighted, full, rtol=1e-4, atol=1e-6)

# %% [markdown]
# The mean of {glue}`s1_4_unbiased_m` random batch gradients misses the full gradient by
# {glue}`s1_4_unbiased_ratio` times the squared distance that pure noise predicts (about 1 when
# there is no bias; a biased estimate would stay off by its bias however many batches we
# average). The batches of one epoch, weighted by their sizes, even give the full gradient
# exactly, because they partition the data.

# %% [markdown]
# ## Optimizer and learning-rate schedule
#
# Plain SGD uses one learning rate for every parameter. We use **AdamW**
# {cite:p}`kingma2015adam,loshchilov2019decoupled`, which scales each parameter's step by running
# estimates of its gradient's first and second moments and applies weight decay separately;
# section {doc}`../02_math/04_optimizers` writes it from its equations. A good learning rate
# early in training is too large late in training, so we also decay $\eta$ over the run with a
# **cosine schedule** {cite:p}`loshchilov2017sgdr`,
#
# $$
# \eta_t = \eta_{\min} + \tfrac12(\eta_{\max} - \eta_{\min})\big(1 + \cos(\pi t / T)\big),
# $$
#
# from $\eta_{\max}$ at step $t = 0$ to $\eta_{\min}$ at the last step $T$. PyTorch implements it
# as `CosineAnnealingLR`; we check it against the formula.

# %%
max_epochs = pick(smoke=2, book=60, full=100)
lr_max, lr_min = 3e-3, 3e-5
total_steps = max_epochs * len(loader)


def cosine_lr(t: int) -> float:
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t / total_steps))


probe = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr_max)
probe_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(probe, T_max=total_steps, eta_min=lr_min)
lrs = []
for _ in range(total_steps):
    lrs.append(probe.param_groups[0]["lr"])
    probe.step()
    probe_schedule.step()
assert all(math.isclose(lr, cosine_lr(t), rel_tol=1e-6) for t, lr in enumerate(lrs))

plt.figure(figsize=(5, 2.6))
plt.plot(lrs)
plt.xlabel("optimizer step")
plt.ylabel("learning rate")
plt.title("Cosine decay over the whole run")
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Evaluation
#
# Evaluation differs from training in two ways. The model goes into **eval mode**
# (`model.eval()`), which switches layers such as dropout (and batch normalization, section
# {doc}`../02_math/06_stable_training`) to their inference behaviour, and gradients are not
# tracked (`torch.no_grad()`), which saves memory and time. The loss is averaged per example,
# so a smaller last batch counts for what it holds.

# %%
@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 512) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` over `data`."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
    return {"loss": loss_sum / len(data), "accuracy": correct / len(data)}


untrained = evaluate(model, splits.val)
print("before training:", untrained)
glue("s1_4_untrained_acc", untrained["accuracy"], ".2f")

# %% [markdown]
# Before training the model is right on a fraction {glue}`s1_4_untrained_acc` of the
# validation images, about what guessing among ten classes gives.
#
# ## Early stopping
#
# Training loss keeps falling as long as we train; validation loss falls, flattens, and
# eventually rises as the model starts to memorise the training images (section
# {doc}`../02_math/05_generalization` studies this). **Early stopping**
# {cite:p}`prechelt1998early` watches the validation loss, remembers the weights of the best
# epoch, and stops once it has not improved for `patience` epochs in a row.

# %%
class EarlyStopper:
    """Remember the best weights; say stop after `patience` epochs without improvement."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.bad_epochs = patience, math.inf, 0
        self.best_state: dict[str, torch.Tensor] = {}

    def should_stop(self, val_loss: float, model: nn.Module) -> bool:
        if val_loss < self.best:
            self.best, self.bad_epochs = val_loss, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

# %% [markdown]
# ## The loop
#
# Now the pieces go together. Each step is the five lines at the heart of all deep learning:
# forward pass, loss, `zero_grad` (PyTorch *accumulates* gradients, so old ones must be
# cleared), `backward`, `step`; then the schedule advances. After each epoch we evaluate on the
# validation set, record the numbers, and ask the early stopper whether to go on.

# %%
seed_everything(0)
model = MLP(config).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=lr_max, weight_decay=1e-4)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=lr_min)
stopper = EarlyStopper(patience=pick(smoke=1, book=10))
history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "train_acc": [], "val_acc": []}
train_loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

for _epoch in range(max_epochs):
    model.train()
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    train_metrics, val_metrics = evaluate(model, splits.train), evaluate(model, splits.val)
    history["train_loss"].append(train_metrics["loss"])
    history["val_loss"].append(val_metrics["loss"])
    history["train_acc"].append(train_metrics["accuracy"])
    history["val_acc"].append(val_metrics["accuracy"])
    if stopper.should_stop(val_metrics["loss"], model):
        break

epochs_run = len(history["val_loss"])
best_epoch = history["val_loss"].index(min(history["val_loss"])) + 1
model.load_state_dict(stopper.best_state)
print(f"ran {epochs_run} epochs; best validation loss at epoch {best_epoch}")
glue("s1_4_epochs_run", epochs_run)
glue("s1_4_best_epoch", best_epoch)

# %% [markdown]
# Training ran {glue}`s1_4_epochs_run` epochs; the validation loss was lowest after epoch
# {glue}`s1_4_best_epoch`, and those are the weights we keep. The curves show the typical
# picture: training loss keeps falling, validation loss levels off.

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.4))
plot_curves({"train": history["train_loss"], "validation": history["val_loss"]},
            ylabel="cross-entropy", title="Loss", ax=ax_loss, logy=True)
plot_curves({"train": history["train_acc"], "validation": history["val_acc"]},
            ylabel="accuracy", title="Accuracy", ax=ax_acc)
ax_loss.axvline(best_epoch, color="gray", linestyle=":", label="best epoch")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The test set, once
#
# With training and model selection done, the test set gives the number we report.

# %%
test = evaluate(model, splits.test)
print("test:", test)
glue("s1_4_test_acc", test["accuracy"], ".3f")
glue("s1_4_n_test", len(splits.test))
if checks_enabled():
    assert test["accuracy"] >= 0.95, test

# %% [markdown]
# The model classifies a fraction {glue}`s1_4_test_acc` of the {glue}`s1_4_n_test` test images
# correctly (the chapter asserts at least 0.95).
#
# ## Saving, loading and predicting
#
# A trained model is two things: the **architecture**, here fully described by the small
# `MLPConfig` dataclass, and the **weights**, a dictionary of named tensors (`state_dict`). We
# store the weights with **safetensors**, a format that holds tensors and nothing else, so that
# opening a file from someone else can never run code (unlike Python's pickle, which
# `torch.save` uses), and the config as JSON beside it.

# %%
folder = Path(tempfile.mkdtemp()) / "digits-mlp"
folder.mkdir(parents=True)
save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
          str(folder / "model.safetensors"))
(folder / "config.json").write_text(json.dumps(config.__dict__, indent=2))
print(sorted(p.name for p in folder.iterdir()), (folder / "config.json").read_text())

# %% [markdown]
# Loading is the reverse: rebuild the architecture from the config, then load the weights into
# it. The reloaded model must predict exactly what the trained one does.

# %%
reloaded = MLP(MLPConfig(**json.loads((folder / "config.json").read_text())))
reloaded.load_state_dict(load_file(str(folder / "model.safetensors")))
reloaded.eval()
model.eval()

x_test, y_test = splits.test.tensors
with torch.no_grad():
    assert torch.equal(reloaded(x_test), model.cpu()(x_test))
    predicted = reloaded(x_test[:12]).argmax(dim=1)

fig, axes = plt.subplots(1, 12, figsize=(10, 1.5))
for ax, image, guess, truth in zip(axes, x_test[:12], predicted, y_test[:12], strict=True):
    ax.imshow(image.reshape(8, 8), cmap="gray_r")
    ax.set_title(f"{guess.item()}", color="green" if guess == truth else "red", fontsize=10)
    ax.axis("off")
fig.suptitle("Predictions of the reloaded model (red: wrong)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# Two things this hand-written saving does not do are worth knowing. It writes the files in
# place, so a crash half-way leaves a broken file where a good one was; and it checks nothing
# when loading beyond what `load_state_dict` complains about. The library's `save_model` and
# `load_model` (section {doc}`05_library`) write atomically and diagnose files that belong to
# another model.
#
# ## Summary
#
# * A `Dataset` says how many examples there are and what example $i$ is; a `DataLoader`
#   shuffles and batches them, reproducibly with a seeded generator.
# * Mini-batch SGD follows an unbiased estimate of the full gradient at a fraction of the cost;
#   the five-line step is forward, loss, `zero_grad`, `backward`, `step`.
# * A learning-rate schedule (here cosine decay) takes large steps early and small ones late.
# * Evaluate in `eval()` mode without gradients; choose when to stop on the validation set and
#   report the test set once.
# * Save weights with safetensors and the architecture as a config; reload and check.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-1-4-1
# ```
# The model has dropout. Evaluate the trained model on the validation set in *train* mode
# (forgetting `model.eval()`) several times. What do you observe, and why does it matter?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-4-1
# :class: dropdown
# ```
# In train mode dropout zeroes a random 10 % of the hidden units on every call, so the
# predictions change from call to call and are, on average, a little worse. A model evaluated
# in the wrong mode gives noisy, pessimistic numbers, and early stopping would act on noise.

# %%
model.to(device).train()
with torch.no_grad():
    x_val, y_val = (t.to(device) for t in splits.val.tensors)
    noisy = [(model(x_val).argmax(1) == y_val).float().mean().item() for _ in range(5)]
model.eval()
print("accuracy in train mode, five calls:", [f"{a:.3f}" for a in noisy])
print("accuracy in eval mode:", f"{evaluate(model, splits.val)['accuracy']:.3f}")
assert len(set(noisy)) > 1 or not checks_enabled()  # dropout makes the calls disagree

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-4-2
# ```
# How many optimizer steps does one epoch take with batch size 1, 32, and the whole training
# set? Which gives the least noisy gradient, and which the most updates per epoch?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-4-2
# :class: dropdown
# ```
# $\lceil N/B \rceil$ steps: with $N$ training images that is $N$, $\lceil N/32 \rceil$ and 1.
# The full batch gives the exact gradient (no noise) but one update per epoch; batch size 1
# gives the noisiest estimate and the most updates. Mini-batches sit between the two and use
# the hardware's parallelism.

# %%
for b in (1, 32, len(splits.train)):
    print(f"batch size {b:5d}: {len(DataLoader(splits.train, batch_size=b))} steps per epoch")
assert len(DataLoader(splits.train, batch_size=len(splits.train))) == 1

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-4-3
# ```
# Why do we choose the stopping epoch on the validation set and not on the test set?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-4-3
# :class: dropdown
# ```
# Any choice made by looking at a data set fits the model to that set a little. Had we picked
# the epoch with the best *test* loss, the test number would be optimistically biased and no
# longer an honest estimate of accuracy on new data. The validation set absorbs that bias; the
# test set is used once, after every choice is made.
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-4-4
# ```
# Save the model's weights with `torch.save(model.state_dict(), path)` and load them with
# `torch.load(path, weights_only=True)`. What does `weights_only=True` protect against?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-4-4
# :class: dropdown
# ```
# `torch.save` uses pickle, which can serialise arbitrary Python objects, including ones whose
# unpickling runs code. `weights_only=True` restricts loading to tensors and plain containers
# and refuses anything else, so a malicious file cannot execute code on your machine.

# %%
path = folder / "weights.pt"
torch.save(model.state_dict(), path)
state = torch.load(path, weights_only=True)
assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

# %% [markdown]
# ```{solution-end}
# ```
