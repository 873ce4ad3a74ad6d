# %% [markdown]
# # Generalization and regularization
#
# Training minimises the loss on the training set, but what we want is a small loss on data
# the model has never seen. The difference between the two is the **generalization gap**, and
# a model whose training loss is far below its validation loss has **over-fitted**: it has
# learned the particular examples, noise included, rather than the pattern behind them. This
# section makes over-fitting visible on real data, then studies the standard remedies, the
# **regularizers**: a penalty on the size of the weights (L2 regularization and weight decay,
# and why the two differ under Adam), dropout, early stopping and data augmentation. We derive
# each, check the derivations against PyTorch, and measure what each one does on the digits.

# %%
import math

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_diabetes
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.data import load_digits
from dlbook.nn import MLP, MLPConfig
from dlbook.train import EarlyStopping, Trainer, accuracy

seed_everything(0)
device = get_device()

# %% [markdown]
# ## Capacity and over-fitting: polynomials on a real data set
#
# The clearest picture of over-fitting comes from the oldest model there is. The diabetes data
# set bundled with scikit-learn {cite:p}`pedregosa2011scikit` records, for 442 patients, the
# body-mass index (BMI) and a measure of disease progression one year later. We fit the
# progression $y$ as a polynomial of degree $p$ in the (rescaled) BMI $x$,
# $\hat y = \sum_{k=0}^p \theta_k x^k$, by least squares on a *small* training set of 25
# patients, and measure the mean squared error on 150 other patients. The degree $p$ is the
# model's **capacity**: with $p + 1$ coefficients, a higher degree can fit more patterns,
# including ones that are only noise.
#
# Least squares has a closed form (section {doc}`01_linear_regression`): with the design
# matrix $X_{ik} = x_i^k$, $\hat\theta = \arg\min_\theta \|X\theta - y\|^2$, which
# `torch.linalg.lstsq` computes stably. Because a degree-$p$ polynomial is also a degree-$(p+1)$
# one with $\theta_{p+1} = 0$, the training error can only go down as the degree grows; the
# validation error need not.

# %%
diabetes = load_diabetes()
bmi = torch.tensor(diabetes.data[:, 2], dtype=torch.float64)
target = torch.tensor(diabetes.target, dtype=torch.float64)
bmi = 2 * (bmi - bmi.min()) / (bmi.max() - bmi.min()) - 1  # rescale to [-1, 1]
target = (target - target.mean()) / target.std()  # standardize
order = torch.randperm(len(bmi), generator=torch.Generator().manual_seed(0))
train_idx, val_idx = order[:25], order[25:175]


def design(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Columns x**0 … x**degree; x (n,) → (n, degree + 1)."""
    return torch.stack([x**k for k in range(degree + 1)], dim=1)


def fit_poly(degree: int, lam: float = 0.0) -> torch.Tensor:
    """Least squares (ridge when lam > 0) fit of the training points; returns θ (degree + 1,)."""
    X, y = design(bmi[train_idx], degree), target[train_idx]
    if lam == 0:
        return torch.linalg.lstsq(X, y[:, None], driver="gelsd").solution[:, 0]
    return torch.linalg.solve(X.T @ X + lam * torch.eye(degree + 1, dtype=X.dtype), X.T @ y)


def mse(theta: torch.Tensor, idx: torch.Tensor) -> float:
    return ((design(bmi[idx], len(theta) - 1) @ theta - target[idx]) ** 2).mean().item()


degrees = list(range(0, 13))
poly_train = [mse(fit_poly(p), train_idx) for p in degrees]
poly_val = [mse(fit_poly(p), val_idx) for p in degrees]
best_degree = degrees[poly_val.index(min(poly_val))]
glue("s2_5_best_degree", best_degree)
glue("s2_5_poly_val_best", min(poly_val), ".2f")
glue("s2_5_poly_val_max", poly_val[-1], ".2f")
glue("s2_5_poly_train_max", poly_train[-1], ".2f")
# nested models: training error never increases with the degree (up to round-off)
assert all(b <= a + 1e-9 for a, b in zip(poly_train, poly_train[1:], strict=False))
assert poly_val[-1] > 1.5 * min(poly_val)

fig, (ax_curve, ax_fit) = plt.subplots(1, 2, figsize=(10, 3.5))
ax_curve.semilogy(degrees, poly_train, marker="o", label="train")
ax_curve.semilogy(degrees, poly_val, marker="o", label="validation")
ax_curve.set(xlabel="polynomial degree (capacity)", ylabel="mean squared error",
             title="Train vs validation error")
ax_curve.grid(alpha=0.3)
ax_curve.legend()
grid = torch.linspace(bmi[train_idx].min(), bmi[train_idx].max(), 200, dtype=torch.float64)
ax_fit.scatter(bmi[val_idx], target[val_idx], s=6, color="0.75", label="validation patients")
ax_fit.scatter(bmi[train_idx], target[train_idx], s=18, color="black", label="training patients")
for p in (1, best_degree, degrees[-1]):
    ax_fit.plot(grid, design(grid, p) @ fit_poly(p), label=f"degree {p}")
ax_fit.set(xlabel="BMI (rescaled)", ylabel="progression (standardized)", ylim=(-3, 4),
           title="Fits of increasing degree")
ax_fit.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# This is the classic U: training error falls with every extra degree, validation error is
# lowest at degree {glue}`s2_5_best_degree` ({glue}`s2_5_poly_val_best`) and then climbs to
# {glue}`s2_5_poly_val_max` at degree 12, while the training error there is only
# {glue}`s2_5_poly_train_max`. The degree-12 curve bends to pass near the 25 training points
# and swings wildly between and beyond them.
#
# ## Over-fitting a neural network
#
# The same happens with neural networks. We give an MLP only 200 of the digits' training
# images and sweep the width of its hidden layer from 4 to 512 units, training each network to
# convergence on the small set (full-batch Adam). The validation set is the usual one.

# %%
splits = load_digits(seed=0)
n_small = 200
x_small, y_small = (t[:n_small] for t in splits.train.tensors)
small = TensorDataset(x_small, y_small)
x_val, y_val = (t.to(device) for t in splits.val.tensors)
assert torch.bincount(y_small, minlength=10).min() >= 10  # every digit is represented


def fit_full_batch(model: nn.Module, steps: int, lr: float = 3e-3) -> nn.Module:
    model.to(device).train()
    x, y = x_small.to(device), y_small.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model in eval mode on (x, y)."""
    model.eval()
    logits = model(x.to(device))
    y = y.to(device)
    return F.cross_entropy(logits, y).item(), accuracy(logits, y).item()


widths = pick(smoke=[4, 64], book=[4, 8, 16, 32, 64, 128, 256, 512])
width_steps = pick(smoke=20, book=600)
sweep = {"train_acc": [], "val_acc": [], "train_loss": [], "val_loss": []}
for w in widths:
    seed_everything(0)
    net = fit_full_batch(MLP(MLPConfig(in_features=64, hidden=[w], out_features=10)), width_steps)
    (tl, ta), (vl, va) = scores(net, x_small, y_small), scores(net, x_val, y_val)
    for key, value in zip(sweep, (ta, va, tl, vl), strict=True):
        sweep[key].append(value)
    print(f"width {w:4d}: train acc {ta:.3f}  val acc {va:.3f}  train loss {tl:.4f}  val loss {vl:.3f}")

fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.4))
ax_acc.semilogx(widths, sweep["train_acc"], marker="o", label="train")
ax_acc.semilogx(widths, sweep["val_acc"], marker="o", label="validation")
ax_acc.set(xlabel="hidden width", ylabel="accuracy", title="200 training images")
ax_loss.loglog(widths, sweep["train_loss"], marker="o", label="train")
ax_loss.loglog(widths, sweep["val_loss"], marker="o", label="validation")
ax_loss.set(xlabel="hidden width", ylabel="cross-entropy", title="Loss")
for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend()
plt.tight_layout()
plt.show()

gap_small, gap_large = (sweep["train_acc"][i] - sweep["val_acc"][i] for i in (0, -1))
glue("s2_5_width_train_acc", sweep["train_acc"][-1], ".3f")
glue("s2_5_width_val_acc", sweep["val_acc"][-1], ".3f")
glue("s2_5_width_max", widths[-1])
if checks_enabled():
    assert sweep["train_acc"][-1] == 1.0  # the wide network memorises the 200 images
    assert sweep["val_loss"][-1] > 10 * sweep["train_loss"][-1]

# %% [markdown]
# The wider networks classify all 200 training images correctly (at width
# {glue}`s2_5_width_max`, training accuracy {glue}`s2_5_width_train_acc`, validation accuracy
# {glue}`s2_5_width_val_acc`), and their training loss keeps falling towards zero, while the
# validation loss stays more than ten times higher (asserted for the widest network). Unlike the polynomials, the validation
# *accuracy* of wider networks does not collapse: over-parameterized networks often generalize
# better than counting parameters would suggest. {cite:t}`zhang2017understanding` showed how
# strange this is: the same networks can perfectly fit training sets whose labels were replaced
# by random ones (there is nothing to generalize), so their capacity alone does not explain
# why they generalize on real labels. The first exercise below repeats their experiment.
#
# ## L2 regularization and weight decay
#
# The most common regularizer adds a penalty on the squared size of the parameters to the
# loss {cite:p}`krogh1992simple`:
#
# $$
# \tilde L(\theta) = L(\theta) + \frac{\lambda}{2} \|\theta\|^2,
# \qquad
# \nabla \tilde L(\theta) = \nabla L(\theta) + \lambda \theta ,
# $$ (eq-l2-grad)
#
# since $\partial/\partial\theta_j \, \frac{\lambda}{2}\sum_k \theta_k^2 = \lambda \theta_j$.
# Large weights make a network's output sensitive to small changes of its input, so preferring
# small ones prefers smoother functions. For the polynomials the penalized least-squares problem
# keeps a closed form, **ridge regression**: setting the gradient $X^\top(X\theta - y) +
# \lambda\theta$ to zero gives $\hat\theta = (X^\top X + \lambda I)^{-1} X^\top y$. (Here the
# penalty is $\frac\lambda2\|\theta\|^2$ on the loss $\frac12\|X\theta - y\|^2$; see
# {cite:t}`hastie2009elements`, section 3.4, for ridge regression in depth.) First we check
# {eq}`eq-l2-grad` with autograd, then let ridge tame the degree-12 polynomial.

# %%
theta = torch.randn(13, dtype=torch.float64, requires_grad=True)
lam = 0.3
(0.5 * lam * theta.pow(2).sum()).backward()
torch.testing.assert_close(theta.grad, lam * theta.detach())

# ridge solution: the gradient of ½‖Xθ − y‖² + ½λ‖θ‖² vanishes there
X12, y_tr = design(bmi[train_idx], 12), target[train_idx]
theta_ridge = fit_poly(12, lam=1e-2).requires_grad_()
(0.5 * (X12 @ theta_ridge - y_tr).pow(2).sum() + 0.5 * 1e-2 * theta_ridge.pow(2).sum()).backward()
assert theta_ridge.grad.abs().max() < 1e-8

lams = [10.0**k for k in range(-8, 2)]
ridge_val = [mse(fit_poly(12, lam), val_idx) for lam in lams]
ridge_train = [mse(fit_poly(12, lam), train_idx) for lam in lams]
glue("s2_5_ridge_best", min(ridge_val), ".2f")
assert min(ridge_val) < 0.7 * poly_val[-1]

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.loglog(lams, ridge_train, marker="o", label="train")
ax.loglog(lams, ridge_val, marker="o", label="validation")
ax.axhline(poly_val[-1], color="gray", linestyle=":", label="validation, λ = 0")
ax.set(xlabel="λ", ylabel="mean squared error", title="Degree-12 polynomial with an L2 penalty")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The penalty trades a little training error for a large drop in validation error: the best
# $\lambda$ brings the degree-12 model's validation error from {glue}`s2_5_poly_val_max` down
# to {glue}`s2_5_ridge_best`. The capacity is still there; the penalty stops it from being
# spent on noise.
#
# ### With SGD, an L2 penalty *is* weight decay
#
# A gradient step on the penalized loss, with learning rate $\eta$, is
#
# $$
# \theta \leftarrow \theta - \eta\big(\nabla L(\theta) + \lambda\theta\big)
# = (1 - \eta\lambda)\,\theta - \eta \nabla L(\theta):
# $$
#
# every step first shrinks the weights by the factor $1 - \eta\lambda$, which is why the
# technique is called **weight decay**. PyTorch's optimizers take it as an argument,
# `weight_decay=λ`, which adds $\lambda\theta$ to the gradient inside the optimizer instead of
# through the loss. For SGD, with or without momentum, the two are the same algorithm; we
# assert it over 20 steps on the digits network.
#
# ### With Adam, they are not
#
# Adam (section {doc}`04_optimizers`) divides each coordinate of the gradient by a running root
# mean square $\sqrt{\hat v_t}$ of its past values. If $\lambda\theta$ goes into the gradient,
# it is divided too: weights whose gradients have been large are decayed *less*, and the decay
# no longer means "shrink every weight by the same factor". {cite:t}`loshchilov2019decoupled`
# proposed to **decouple** the decay from the gradient-based step, which gives **AdamW**:
#
# $$
# \theta \leftarrow \theta - \eta\lambda\theta - \eta \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon},
# $$
#
# where $\hat m_t, \hat v_t$ are Adam's bias-corrected moment estimates of $\nabla L$ alone.
# PyTorch's `Adam(weight_decay=λ)` is the coupled version (L2 in the gradient), `AdamW` the
# decoupled one. We check all three statements, and write one AdamW step by hand.

# %%
def run_optimizer(make_opt, l2_in_loss: float = 0.0, steps: int = 20) -> list[torch.Tensor]:
    """Train a fresh (seeded) digits MLP for `steps` full-batch steps; return its parameters."""
    seed_everything(0)
    model = MLP(MLPConfig(in_features=64, hidden=[32], out_features=10)).double()
    opt = make_opt(model.parameters())
    x, y = x_small.double(), y_small
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        if l2_in_loss:
            loss = loss + 0.5 * l2_in_loss * sum(p.pow(2).sum() for p in model.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))


lam, lr = 0.05, 1e-2
sgd_l2 = run_optimizer(lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9), l2_in_loss=lam)
sgd_wd = run_optimizer(lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=lam))
adam_l2 = run_optimizer(lambda ps: torch.optim.Adam(ps, lr=lr), l2_in_loss=lam)
adam_wd = run_optimizer(lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=lam))
adamw = run_optimizer(lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=lam))
assert max_diff(sgd_l2, sgd_wd) < 1e-10  # SGD: L2 penalty == weight decay
assert max_diff(adam_l2, adam_wd) < 1e-10  # Adam(weight_decay) is the L2 penalty
assert max_diff(adam_l2, adamw) > 1e-3  # ... and is not AdamW
print(f"SGD  L2 vs weight_decay: {max_diff(sgd_l2, sgd_wd):.1e}")
print(f"Adam L2 vs Adam(weight_decay): {max_diff(adam_l2, adam_wd):.1e}")
print(f"Adam L2 vs AdamW: {max_diff(adam_l2, adamw):.1e}")
glue("s2_5_adam_adamw_diff", max_diff(adam_l2, adamw), ".3f")

# one AdamW step by hand, from the equation above (t = 1, so the bias corrections are 1 − β)
seed_everything(1)
p = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
g = torch.randn(5, 3, dtype=torch.float64)
beta1, beta2, eps = 0.9, 0.999, 1e-8
m_hat = (1 - beta1) * g / (1 - beta1)
v_hat = (1 - beta2) * g**2 / (1 - beta2)
by_hand = p.detach() - lr * lam * p.detach() - lr * m_hat / (v_hat.sqrt() + eps)
opt = torch.optim.AdamW([p], lr=lr, weight_decay=lam, betas=(beta1, beta2), eps=eps)
p.grad = g.clone()
opt.step()
torch.testing.assert_close(p.detach(), by_hand)

# %% [markdown]
# After 20 steps from the same start, Adam with an L2 penalty and AdamW differ by up to
# {glue}`s2_5_adam_adamw_diff` in some weight, while SGD with an L2 penalty and SGD with
# `weight_decay` agree to round-off. Note also the units: PyTorch's AdamW shrinks by
# $\eta\lambda$ per step, so its `weight_decay` is typically 0.01–0.1, much larger than an
# L2 coefficient would be.
#
# ## Dropout
#
# **Dropout** {cite:p}`srivastava2014dropout` fights over-fitting differently: during training
# it sets each unit of a layer's output to zero independently with probability $p$, a new
# random choice at every step, so no unit can rely on particular other units being present.
# To leave the expected value of each unit unchanged, the surviving units are scaled by
# $1/(1-p)$ (**inverted dropout**): with a mask $r_i \sim \text{Bernoulli}(1-p)$,
#
# $$
# y_i = \frac{r_i\, x_i}{1-p},
# \qquad
# \mathbb{E}[y_i] = \frac{(1-p)\, x_i}{1-p} = x_i ,
# \qquad
# \operatorname{Var}[y_i] = \frac{p}{1-p}\, x_i^2 .
# $$
#
# At evaluation time dropout does nothing: thanks to the scaling in training, the network
# needs no correction. We write it by hand, check the expectation statistically, and check that
# it reproduces `nn.Dropout` exactly when both draw from the same random state (on the CPU,
# PyTorch draws the mask with `bernoulli_(1 - p)`).

# %%
def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout: zero each entry with probability p, scale survivors by 1/(1-p)."""
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    mask = torch.empty_like(x).bernoulli_(1 - p)
    return x * mask / (1 - p)


p_drop = 0.3
x = torch.rand(1000) + 0.5
torch.manual_seed(7)
ours = dropout(x, p_drop)
torch.manual_seed(7)
layer = nn.Dropout(p_drop)
theirs = layer(x)
torch.testing.assert_close(ours, theirs)  # same random state, same mask, same output
kept = theirs != 0
torch.testing.assert_close(theirs[kept], x[kept] / (1 - p_drop))  # survivors scaled by 1/(1-p)
layer.eval()
assert torch.equal(layer(x), x)  # eval mode: the identity

# the mean is preserved in expectation: average many independent masks
n_masks = pick(smoke=200, book=4000)
samples = torch.stack([dropout(x, p_drop) for _ in range(n_masks)])  # (n_masks, 1000)
mean_error = (samples.mean(0) - x).abs().max().item()
std_error = (math.sqrt(p_drop / (1 - p_drop)) * x / math.sqrt(n_masks)).max().item()
print(f"largest |mean over masks − x| = {mean_error:.4f}; standard error {std_error:.4f}")
assert mean_error < 5 * std_error  # 1000 coordinates: 5 standard errors is ample
drop_frac = (samples == 0).float().mean().item()
assert abs(drop_frac - p_drop) < 5 * math.sqrt(p_drop * (1 - p_drop) / samples.numel())
glue("s2_5_drop_frac", drop_frac, ".4f")

# %% [markdown]
# A fraction {glue}`s2_5_drop_frac` of the entries was zeroed (the target is 0.3), the survivors
# are exactly $x_i/(1-p)$, and the mean over masks matches $x$ to within sampling error.
#
# ## Early stopping and data augmentation
#
# **Early stopping** {cite:p}`prechelt1998early` treats the number of training steps as a
# capacity knob: a network that has not trained long has not had time to memorise. We watch
# the validation loss and keep the weights of its best epoch; the library's `EarlyStopping`
# (section {doc}`../01_basics/05_library`) does exactly that:
#
# ```{literalinclude} ../../dlbook/train.py
# :pyobject: EarlyStopping.update
# ```
#
# **Data augmentation** {cite:p}`shorten2019survey` makes the training set larger by
# transforming its examples in ways that do not change their label. A handwritten digit moved
# by one pixel is the same digit, so we shift each 8×8 training image by a random
# $(\Delta_\text{row}, \Delta_\text{col}) \in \{-1, 0, 1\}^2$ every time it is drawn, filling
# the uncovered border with zeros (the background).
#
# The library's `dlbook.data.augment` does both steps: `shift_image` moves the pixels, and
# `RandomShift` wraps a data set so that every draw is shifted anew.
#
# ```{literalinclude} ../../dlbook/data/augment.py
# :pyobject: shift_image
# ```

# %%
from dlbook.data.augment import RandomShift, shift_image

img = x_small[0].reshape(8, 8)
assert torch.equal(shift_image(img, 0, 0), img)
assert torch.equal(shift_image(img, 1, 0)[1:], img[:-1]) and shift_image(img, 1, 0)[0].sum() == 0
assert torch.equal(shift_image(img, 0, -1)[:, :-1], img[:, 1:])

fig, axes = plt.subplots(1, 6, figsize=(7, 1.5))
augmented = RandomShift(small, max_shift=1, image_shape=(8, 8))
axes[0].imshow(img, cmap="gray_r")
axes[0].set_title("original", fontsize=8)
for ax in axes[1:]:
    ax.imshow(augmented[0][0].reshape(8, 8), cmap="gray_r")
    ax.set_title("shifted", fontsize=8)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Measuring the regularizers
#
# Now we train the same network, a 64–256–256–10 MLP, on the same 200 training images with
# AdamW and the library's `Trainer`, once without regularization and once with each
# regularizer, and compare training, validation and test numbers. The training numbers are
# measured in eval mode on the un-augmented 200 images, so all runs are compared on the same
# footing. To keep the comparison honest against the luck of one run, every configuration is
# trained with several seeds and we report the means.

# %%
epochs = pick(smoke=2, book=120)
n_seeds = pick(smoke=1, book=2)
configs = {
    "none": {},
    "weight decay": {"weight_decay": 0.5},
    "dropout": {"dropout": 0.5},
    "early stopping": {"early_stopping": True},
    "augmentation": {"augment": True},
    "all four": {"weight_decay": 0.5, "dropout": 0.5, "early_stopping": True, "augment": True},
}


def train_config(weight_decay: float = 0.0, dropout: float = 0.0, early_stopping: bool = False,
                 augment: bool = False, seed: int = 0) -> tuple[dict[str, float], Trainer]:
    seed_everything(seed)
    model = MLP(MLPConfig(in_features=64, hidden=[256, 256], out_features=10, dropout=dropout))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=weight_decay)
    trainer = Trainer(model, optimizer, metrics={"accuracy": accuracy}, seed=seed, progress=False)
    stopper = EarlyStopping(patience=pick(smoke=1, book=15)) if early_stopping else None
    trainer.fit(RandomShift(small, max_shift=1, image_shape=(8, 8)) if augment else small, splits.val, epochs=epochs,
                batch_size=32, early_stopping=stopper)
    result = {}
    for name, data in (("train", small), ("val", splits.val), ("test", splits.test)):
        for key, value in trainer.evaluate(data).items():
            result[f"{name}_{key}"] = value
    result["epochs"] = trainer.epoch
    return result, trainer


results: dict[str, dict[str, float]] = {}
baseline_history = None
for name, kwargs in configs.items():
    runs = []
    for seed in range(n_seeds):
        run, trainer = train_config(**kwargs, seed=seed)
        runs.append(run)
        if name == "none" and seed == 0:
            baseline_history = trainer.history
    results[name] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}

print(f"{'regularizer':15s} {'train acc':>9s} {'val acc':>8s} {'test acc':>8s} "
      f"{'train loss':>10s} {'val loss':>8s} {'epochs':>6s}")
for name, r in results.items():
    print(f"{name:15s} {r['train_accuracy']:9.3f} {r['val_accuracy']:8.3f} {r['test_accuracy']:8.3f} "
          f"{r['train_loss']:10.4f} {r['val_loss']:8.3f} {r['epochs']:6.0f}")

# %% [markdown]
# The baseline's curves show the over-fitting the regularizers fight: its training loss falls
# towards zero while the validation loss, after an early minimum, rises again.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.semilogy(baseline_history["train_loss"], label="train (running, in train mode)")
ax.semilogy(baseline_history["val_loss"], label="validation")
best_epoch = baseline_history["val_loss"].index(min(baseline_history["val_loss"]))
ax.axvline(best_epoch, color="gray", linestyle=":", label="where early stopping keeps")
ax.set(xlabel="epoch", ylabel="cross-entropy", title="No regularization, 200 training images")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

names = list(results)
fig, (ax_acc, ax_gap) = plt.subplots(1, 2, figsize=(10, 3.3))
pos = torch.arange(len(names)).float()
ax_acc.bar(pos - 0.2, [results[n]["val_accuracy"] for n in names], 0.4, label="validation")
ax_acc.bar(pos + 0.2, [results[n]["test_accuracy"] for n in names], 0.4, label="test")
ax_acc.set_ylim(0.8, 1.0)
ax_acc.set(ylabel="accuracy", title="Accuracy (mean over seeds)")
ax_gap.bar(pos, [results[n]["val_loss"] - results[n]["train_loss"] for n in names], color="C2")
ax_gap.set(ylabel="val loss − train loss", title="Generalization gap")
for ax in (ax_acc, ax_gap):
    ax.set_xticks(pos.tolist(), names, rotation=30, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
ax_acc.legend(fontsize=8)
plt.tight_layout()
plt.show()

base = results["none"]
gap = {n: r["val_loss"] - r["train_loss"] for n, r in results.items()}
for n, r in results.items():
    key = n.replace(" ", "_")
    glue(f"s2_5_{key}_test", r["test_accuracy"], ".3f")
    glue(f"s2_5_{key}_gap", gap[n], ".2f")
glue("s2_5_n_seeds", n_seeds)
glue("s2_5_all_four_train_loss", results["all four"]["train_loss"], ".2f")
glue("s2_5_none_train_loss", base["train_loss"], ".4f")
glue("s2_5_base_best_epoch", best_epoch + 1)
if checks_enabled():
    assert baseline_history["val_loss"][-1] > 1.2 * min(baseline_history["val_loss"])
    for n in ("weight decay", "dropout", "early stopping", "augmentation", "all four"):
        assert gap[n] < gap["none"], (n, gap)  # every regularizer narrows the gap
    all4 = results["all four"]
    # the combination fits the training set worse: its training loss rises more than its
    # validation loss falls, so most of the narrowing comes from the training side
    assert all4["train_loss"] > 10 * base["train_loss"]
    assert all4["train_loss"] - base["train_loss"] > base["val_loss"] - all4["val_loss"]

# %% [markdown]
# Averaged over {glue}`s2_5_n_seeds` seeds, the unregularized network reaches a test accuracy
# of {glue}`s2_5_none_test` with a gap of {glue}`s2_5_none_gap` between validation and
# training loss. Each regularizer narrows that gap (the chapter asserts it): weight decay to
# {glue}`s2_5_weight_decay_gap`, dropout to {glue}`s2_5_dropout_gap`, early stopping to
# {glue}`s2_5_early_stopping_gap`, augmentation to {glue}`s2_5_augmentation_gap`, all four
# together to {glue}`s2_5_all_four_gap`. Their effect on test accuracy is much smaller and not
# always positive: weight decay reaches {glue}`s2_5_weight_decay_test`, dropout
# {glue}`s2_5_dropout_test`, early stopping {glue}`s2_5_early_stopping_test`, augmentation
# {glue}`s2_5_augmentation_test` and all four {glue}`s2_5_all_four_test`, against the
# baseline's {glue}`s2_5_none_test`. On a test set of a few hundred images, differences of a
# point or so are within the noise of the seeds. The combination shows why a smaller gap is not
# by itself a better model: it closes the gap mostly by fitting the training set worse (training
# loss {glue}`s2_5_all_four_train_loss` against the baseline's {glue}`s2_5_none_train_loss`),
# (the chapter asserts that the rise of the training loss exceeds the fall of the validation
# loss): four regularizers at full strength are too much for this small network and budget, it
# under-fits. Regularization strength is a hyper-parameter, chosen by the validation
# score; the test score is reported once, at the end.
#
# ## Summary
#
# * Training error falls as capacity grows; validation error falls, then rises: over-fitting.
#   Networks can memorise even random labels, so what they learn depends on the data, the
#   optimizer and the regularizers, not on their size alone.
# * An L2 penalty $\frac\lambda2\|\theta\|^2$ adds $\lambda\theta$ to the gradient; with SGD this
#   is exactly weight decay, $\theta \leftarrow (1-\eta\lambda)\theta - \eta\nabla L$. With Adam
#   the penalty is rescaled per coordinate, so decoupled weight decay (AdamW) is a different,
#   usually better behaved, method.
# * Dropout zeroes units with probability $p$ in training and scales the rest by $1/(1-p)$, so
#   the expected output is unchanged and evaluation needs no correction.
# * Early stopping keeps the weights of the best validation epoch; data augmentation adds
#   label-preserving variations of the training examples.
# * Measured on 200 digit images, every regularizer narrows the train–validation gap; the
#   effect on test accuracy is smaller, and too much regularization under-fits: its strength
#   must be tuned on the validation set.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-2-5-1
# ```
# Repeat the experiment of {cite:t}`zhang2017understanding` at small scale: replace the labels
# of the 200 training images by random digits, train the widest network of the width sweep on
# them, and measure its training and validation accuracy.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-5-1
# :class: dropdown
# ```
# The network fits the random labels perfectly, given enough steps, while its validation
# accuracy is at chance (about 0.1). The same architecture, optimizer and data, with true
# labels, generalizes; so capacity alone cannot explain generalization.

# %%
seed_everything(0)
y_random = torch.randint(0, 10, (n_small,))
y_true = y_small
y_small = y_random  # fit_full_batch trains on (x_small, y_small)
memorizer = fit_full_batch(MLP(MLPConfig(in_features=64, hidden=[512], out_features=10)),
                           pick(smoke=20, book=1500), lr=3e-3)
y_small = y_true
_, random_train_acc = scores(memorizer, x_small, y_random)
_, random_val_acc = scores(memorizer, x_val, y_val)
print(f"random labels: train accuracy {random_train_acc:.3f}, validation accuracy {random_val_acc:.3f}")
if checks_enabled():
    assert random_train_acc > 0.95 and random_val_acc < 0.25

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-5-2
# ```
# Show that one SGD step with `weight_decay=λ` and learning rate $\eta$ on a parameter whose
# loss gradient is zero multiplies it by $1 - \eta\lambda$, and that one AdamW step does the
# same, while one step of `Adam(weight_decay=λ)` does not. What does Adam's step do instead?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-5-2
# :class: dropdown
# ```
# For SGD the step is $\theta - \eta\lambda\theta$. For AdamW the decay is applied directly and
# the Adam part sees a zero gradient, so $\hat m = 0$ and nothing else changes. For Adam with
# coupled decay the gradient is $\lambda\theta$; at the first step $\hat m/\sqrt{\hat v} =
# \lambda\theta / |\lambda\theta| = \operatorname{sign}(\theta)$, so every coordinate moves by
# (about) $\eta$ towards zero whatever its size: a step of fixed length, not a proportional
# shrink.

# %%
theta0 = torch.tensor([2.0, -0.5, 0.01], dtype=torch.float64)
eta, lam = 0.1, 0.2
for make, expected in (
    (lambda ps: torch.optim.SGD(ps, lr=eta, weight_decay=lam), theta0 * (1 - eta * lam)),
    (lambda ps: torch.optim.AdamW(ps, lr=eta, weight_decay=lam), theta0 * (1 - eta * lam)),
    (lambda ps: torch.optim.Adam(ps, lr=eta, weight_decay=lam), theta0 - eta * theta0.sign()),
):
    param = theta0.clone().requires_grad_()
    opt = make([param])
    param.grad = torch.zeros_like(param)
    opt.step()
    torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-6)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-5-3
# ```
# An older form of dropout did not scale in training and instead multiplied the outputs by
# $1-p$ at evaluation time. Show that the two give the same expected training output up to a
# constant factor and identical networks after a rescaling of the next layer's weights.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-5-3
# :class: dropdown
# ```
# Without scaling, $\mathbb{E}[r_i x_i] = (1-p)x_i$, so at evaluation the network must multiply
# by $1-p$ to see the same scale. Inverted dropout divides by $1-p$ in training instead. A
# network trained the old way with next-layer weights $W$ computes, at evaluation,
# $W (1-p) x$; the inverted network with weights $W' = (1-p) W$ computes $W' x$ at evaluation
# and $W' r x / (1-p) = W r x$ in training: the same function in both modes.

# %%
seed_everything(3)
x, W, p_drop = torch.randn(6), torch.randn(4, 6), 0.4
r = torch.empty(6).bernoulli_(1 - p_drop)
W_inv = (1 - p_drop) * W
torch.testing.assert_close(W_inv @ (r * x / (1 - p_drop)), W @ (r * x))  # training
torch.testing.assert_close(W_inv @ x, W @ ((1 - p_drop) * x))  # evaluation

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-5-4
# ```
# For ridge regression, show that the solution shrinks as $\lambda$ grows: compute
# $\|\hat\theta_\lambda\|$ for the degree-12 polynomial over the $\lambda$ grid above and check it
# decreases. Why must it, whatever the data?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-5-4
# :class: dropdown
# ```
# In the eigenbasis of $X^\top X = \sum_k s_k u_k u_k^\top$, $\hat\theta_\lambda = \sum_k
# \frac{u_k^\top X^\top y}{s_k + \lambda} u_k$, and every coefficient $1/(s_k + \lambda)$
# decreases with $\lambda$, so the norm does too.

# %%
norms = [fit_poly(12, lam).norm().item() for lam in lams]
print("‖θ‖ along the λ grid:", [f"{n:.3g}" for n in norms])
assert all(b < a for a, b in zip(norms, norms[1:], strict=False))

# %% [markdown]
# ```{solution-end}
# ```
