# %% [markdown]
# # Optimizers
#
# Backpropagation ({doc}`03_backprop`) gives the gradient; an **optimizer** decides what to do
# with it. Plain gradient descent steps against the gradient, with the same step size for
# every parameter, and on the badly scaled loss surfaces of real networks it either crawls along
# the flat directions or oscillates across the steep ones. The optimizers in daily use fix this
# with two ideas: **momentum**, which averages gradients over time, and **adaptive step sizes**,
# which scale each parameter's step by the recent size of its gradients. This section derives
# SGD, momentum, RMSProp, Adam and AdamW from their update equations, writes each in a few
# lines, checks every one against `torch.optim` step by step, and compares them on two classic
# test functions. It ends with the learning-rate schedule that later parts of the book train
# with: linear warm-up followed by cosine decay.

# %%
import copy
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_diabetes
from torch import nn

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.schedules import warmup_cosine, warmup_cosine_scheduler

seed_everything(0)
device = get_device()
dtype = torch.float64  # parity checks in double precision

# %% [markdown]
# ## Gradient descent on a quadratic
#
# Near a minimum, any smooth loss looks like a quadratic, so the quadratic
# $f(\theta) = \tfrac12 \theta^\top A \theta$ with a symmetric positive definite $A$ tells us
# most of what we need. Its gradient is $A\theta$ and its minimum is $\theta^\star = 0$.
# Gradient descent with learning rate $\eta$, $\theta_{t+1} = \theta_t - \eta A \theta_t =
# (I - \eta A)\theta_t$, multiplies the component of $\theta$ along each eigenvector of $A$
# (eigenvalue $\lambda_i$) by $1 - \eta\lambda_i$ at every step. It converges if and only if
# $|1 - \eta\lambda_i| < 1$ for all $i$, that is $\eta < 2/\lambda_{\max}$, and the slowest
# component shrinks by $\rho(\eta) = \max_i |1 - \eta \lambda_i|$ per step. The best rate
# balances the two extreme eigenvalues:
#
# $$
# \eta^\star = \frac{2}{\lambda_{\min} + \lambda_{\max}}, \qquad
# \rho^\star = \frac{\kappa - 1}{\kappa + 1}, \qquad \kappa = \frac{\lambda_{\max}}{\lambda_{\min}} .
# $$ (eq-2-4-gd-rate)
#
# The **condition number** $\kappa$ decides everything: the steep direction caps the learning
# rate, and the flat direction then needs about $\kappa/2$ steps per factor $e$ of progress
# {cite:p}`nocedal2006numerical`. With $\eta^\star$ both extreme components shrink by exactly
# $\rho^\star$, so in two dimensions $f(\theta_t) = (\rho^\star)^{2t} f(\theta_0)$, and the number
# of steps to reduce $f$ by a factor `tol` is $\lceil \ln(\mathrm{tol}) / (2\ln\rho^\star)\rceil$.
# We check that on a rotated quadratic with $\kappa = 50$.

# %%
kappa = 50.0
angle = math.radians(30)
R = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=dtype)
A = R @ torch.diag(torch.tensor([1.0, kappa], dtype=dtype)) @ R.T
theta0 = torch.tensor([-3.0, -1.2], dtype=dtype)
tol = 1e-6


def quadratic(theta: torch.Tensor) -> torch.Tensor:
    """f(theta) = theta^T A theta / 2 for theta of shape (2,) or (2, ...) (a grid of points)."""
    return 0.5 * torch.einsum("i...,ij,j...->...", theta, A, theta)


def steps_to_tol(losses: list[float]) -> int | None:
    """First step whose loss is below tol times the initial loss (None if never)."""
    return next((t for t, f in enumerate(losses) if f < tol * losses[0]), None)


eta_star = 2 / (1 + kappa)
rho_star = (kappa - 1) / (kappa + 1)
theta, gd_losses = theta0.clone(), []
for _ in range(400):
    gd_losses.append(quadratic(theta).item())
    theta = theta - eta_star * (A @ theta)
predicted = math.ceil(math.log(tol) / (2 * math.log(rho_star)))
measured = steps_to_tol(gd_losses)
print(f"gradient descent: {measured} steps measured, {predicted} predicted")
assert abs(measured - predicted) <= 1
glue("s2_4_gd_steps", measured)
glue("s2_4_gd_pred", predicted)

# %% [markdown]
# Gradient descent with $\eta^\star$, the learning rate with the best worst-case rate, needs
# {glue}`s2_4_gd_steps` steps (the formula predicts {glue}`s2_4_gd_pred`) to reduce the loss a
# millionfold on a problem with only two parameters, because one direction is fifty times
# steeper than the other.
#
# ## Momentum
#
# **Momentum** {cite:p}`polyak1964some` keeps a running sum of past gradients, the
# *velocity*, and steps along it. PyTorch writes it as
#
# $$
# v_{t+1} = \mu v_t + g_t, \qquad \theta_{t+1} = \theta_t - \eta\, v_{t+1},
# $$ (eq-2-4-momentum)
#
# with $g_t = \nabla f(\theta_t)$, momentum coefficient $\mu \in [0, 1)$ (typically 0.9) and
# $v_1 = g_0$ on the first step. Along a direction where the gradient keeps its sign, the
# velocity grows to $g/(1-\mu)$, ten times the gradient for $\mu = 0.9$; along a direction where
# it flips sign at every step, the contributions cancel. Eliminating $v$ gives Polyak's
# *heavy-ball* form, $\theta_{t+1} = \theta_t - \eta g_t + \mu(\theta_t - \theta_{t-1})$. On a
# quadratic the best choice, $\eta = 4/(\sqrt{\lambda_{\max}} + \sqrt{\lambda_{\min}})^2$ and
# $\mu = \big((\sqrt\kappa - 1)/(\sqrt\kappa + 1)\big)^2$, improves the rate from
# $(\kappa-1)/(\kappa+1)$ to about $(\sqrt\kappa-1)/(\sqrt\kappa+1)$: the number of steps grows
# like $\sqrt\kappa$ instead of $\kappa$ {cite:p}`polyak1964some`.
#
# {cite:t}`sutskever2013importance` write the same method with the learning rate *inside* the
# velocity: $v_{t+1} = \mu v_t - \eta g_t$, $\theta_{t+1} = \theta_t + v_{t+1}$. With a constant
# $\eta$ the two forms produce identical iterates ($v^{\text{Sutskever}} = -\eta
# v^{\text{PyTorch}}$). They differ when $\eta$ changes during training: in PyTorch's form a new
# learning rate rescales the whole accumulated velocity at once, in Sutskever's it only affects
# the new gradients, and the old velocity fades out at rate $\mu$. We check both statements.

# %%
def momentum_pytorch_form(lrs, mu=0.9):
    theta, v, path = theta0.clone(), None, []
    for lr in lrs:
        g = A @ theta
        v = g if v is None else mu * v + g
        theta = theta - lr * v
        path.append(theta)
    return torch.stack(path)


def momentum_sutskever_form(lrs, mu=0.9):
    theta, v, path = theta0.clone(), torch.zeros(2, dtype=dtype), []
    for lr in lrs:
        v = mu * v - lr * (A @ theta)
        theta = theta + v
        path.append(theta)
    return torch.stack(path)


constant = [0.01] * 60
dropped = [0.01] * 30 + [0.001] * 30  # the learning rate falls tenfold at step 30
torch.testing.assert_close(momentum_pytorch_form(constant), momentum_sutskever_form(constant), rtol=1e-12, atol=1e-12)
gap = (momentum_pytorch_form(dropped) - momentum_sutskever_form(dropped)).abs().max().item()
print(f"largest gap after the learning-rate drop: {gap:.3f}")
assert gap > 1e-2
glue("s2_4_mom_gap", gap, ".2f")

# %% [markdown]
# With a constant learning rate the two forms agree to rounding; after a tenfold drop they
# drift apart by up to {glue}`s2_4_mom_gap` in parameter value. Code ported between frameworks
# with a learning-rate schedule can therefore behave differently with "the same" momentum.
#
# ## Adaptive step sizes: RMSProp, Adam, AdamW
#
# Momentum still uses one learning rate for every parameter. **RMSProp**
# {cite:p}`tieleman2012rmsprop` divides each parameter's gradient by a running root mean square
# of its recent gradients, so parameters with large gradients take smaller steps and parameters
# with small gradients larger ones (all operations elementwise):
#
# $$
# s_{t+1} = \alpha s_t + (1-\alpha)\, g_t^2, \qquad
# \theta_{t+1} = \theta_t - \eta\, \frac{g_t}{\sqrt{s_{t+1}} + \epsilon},
# $$ (eq-2-4-rmsprop)
#
# with $s_0 = 0$, $\alpha = 0.99$ and $\epsilon = 10^{-8}$ in PyTorch. PyTorch adds $\epsilon$
# *outside* the square root; placing it inside, $\sqrt{s + \epsilon}$, is a different method
# that takes much smaller steps for parameters whose gradients are tiny (exercise 4).
#
# **Adam** {cite:p}`kingma2015adam` combines the two ideas: a running mean of the gradient (the
# first moment, momentum in disguise) and a running mean of its square (the second moment, as in
# RMSProp). Both averages start at zero, so early on they are biased towards zero: after $t$
# steps of a constant gradient $g$, $m_t = (1 - \beta_1^t)\,g$. Dividing by $1 - \beta^t$ removes
# that bias:
#
# $$
# \begin{aligned}
# m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, &
# \hat m_t &= m_t / (1 - \beta_1^t),\\
# v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, &
# \hat v_t &= v_t / (1 - \beta_2^t),\\
# \theta_t &= \theta_{t-1} - \eta\, \hat m_t / (\sqrt{\hat v_t} + \epsilon), &&
# \end{aligned}
# $$ (eq-2-4-adam)
#
# with $t = 1, 2, \dots$, defaults $\beta_1 = 0.9$, $\beta_2 = 0.999$, $\epsilon = 10^{-8}$. The
# ratio $\hat m/\sqrt{\hat v}$ is close to $\pm1$ when the gradient is consistent, so the step
# is about $\eta$ in size whatever the scale of the gradient.
#
# **Weight decay** pulls the weights towards zero to regularize. The classic way adds
# $\tfrac\lambda2\|\theta\|^2$ to the loss, i.e. $\lambda\theta$ to the gradient; for plain SGD
# that is the same as shrinking the weights by a factor $1 - \eta\lambda$ each step. For Adam it
# is not: the added $\lambda\theta$ is divided by $\sqrt{\hat v}$ like the rest of the gradient,
# so weights with large gradients are barely decayed. **AdamW** {cite:p}`loshchilov2019decoupled`
# *decouples* the decay from the gradient and applies it to the weights directly, before the
# Adam step (PyTorch multiplies $\lambda$ by the learning rate):
#
# $$
# \theta \leftarrow \theta\,(1 - \eta\lambda), \qquad\text{then the Adam update
# {eq}`eq-2-4-adam` with } g_t = \nabla f(\theta_{t-1}) .
# $$ (eq-2-4-adamw)
#
# ## The optimizers in code
#
# Each optimizer keeps a state per parameter and, at `step()`, turns the gradient in
# `p.grad` into an in-place update of `p`. The base class holds what they share.
#
# The library holds them, in `dlbook.optim`; the base class and SGD with momentum:
#
# ```{literalinclude} ../../dlbook/optim.py
# :pyobject: Optimizer
# ```
#
# ```{literalinclude} ../../dlbook/optim.py
# :pyobject: SGD
# ```
#
# RMSProp, Adam and AdamW follow their equations line by line:
#
# ```{literalinclude} ../../dlbook/optim.py
# :pyobject: Adam
# ```
#
# ```{literalinclude} ../../dlbook/optim.py
# :pyobject: AdamW
# ```

# %%
from dlbook.optim import SGD, Adam, AdamW, RMSProp  # the classes shown above

# %% [markdown]
# ### Checking against `torch.optim`
#
# We train two copies of the same small network, one with our optimizer and one with
# PyTorch's, on the same mini-batches of scikit-learn's diabetes regression data
# {cite:p}`pedregosa2011scikit` (442 patients, 10 features, predict disease progression), and
# compare all parameters after every step.

# %%
features, target = load_diabetes(return_X_y=True)
X_all = torch.tensor(features, dtype=dtype, device=device)
X_all = (X_all - X_all.mean(0)) / X_all.std(0)
y_all = torch.tensor(target, dtype=dtype, device=device)[:, None]
y_all = (y_all - y_all.mean()) / y_all.std()
parity_steps = pick(smoke=5, book=200)
batch_size = 32

configs = {
    "SGD": (SGD, torch.optim.SGD, {"lr": 0.05}),
    "SGD + momentum": (SGD, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}),
    "RMSProp": (RMSProp, torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8}),
    "Adam": (Adam, torch.optim.Adam, {"lr": 1e-3, "weight_decay": 1e-3}),
    "AdamW": (AdamW, torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.1}),
}

base = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).to(device, dtype)
order = torch.randint(0, len(X_all), (parity_steps, batch_size), generator=torch.Generator().manual_seed(0))
parity = {}
for name, (ours_cls, torch_cls, hyper) in configs.items():
    net_ours, net_torch = copy.deepcopy(base), copy.deepcopy(base)
    opt_ours, opt_torch = ours_cls(net_ours.parameters(), **hyper), torch_cls(net_torch.parameters(), **hyper)
    worst, losses = 0.0, []
    for idx in order:
        xb, yb = X_all[idx], y_all[idx]
        for net, opt in ((net_ours, opt_ours), (net_torch, opt_torch)):
            opt.zero_grad()
            loss = ((net(xb) - yb) ** 2).mean()
            loss.backward()
            opt.step()
        losses.append(loss.item())
        worst = max(worst, max((a - b).abs().max().item() for a, b in zip(net_ours.parameters(), net_torch.parameters(), strict=True)))
    assert worst < 1e-6, (name, worst)
    parity[name] = {"max |ours - torch.optim|": worst, "first loss": losses[0], "last loss": losses[-1]}
    if checks_enabled():
        assert np.mean(losses[-20:]) < losses[0], name  # each optimizer makes progress

table = pd.DataFrame(parity).T
table
# %%
glue("s2_4_parity_err", max(r["max |ours - torch.optim|"] for r in parity.values()), ".0e")
glue("s2_4_parity_steps", parity_steps)

# %% [markdown]
# Over {glue}`s2_4_parity_steps` steps, every parameter of every network stays within
# {glue}`s2_4_parity_err` of PyTorch's: the equations above *are* `torch.optim`'s algorithms
# (with their default options; PyTorch adds variants such as Nesterov momentum, AMSGrad and a
# centred RMSProp behind flags).
#
# ## Paths on two test functions
#
# To see what the differences mean, we run each optimizer from the same start on two functions
# of two variables: the ill-conditioned quadratic above, and **Rosenbrock's function**
# {cite:p}`rosenbrock1960automatic`
#
# $$
# f(x, y) = (1 - x)^2 + 100\,(y - x^2)^2,
# $$
#
# whose minimum $(1, 1)$ lies at the bottom of a long, curved, narrow valley: steep across,
# nearly flat along. Learning rates were chosen per optimizer from a small grid so that each
# does reasonably well; momentum uses $\mu = 0.9$.

# %%
def rosenbrock(theta: torch.Tensor) -> torch.Tensor:
    x, y = theta[0], theta[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def run(make_opt, f, start, steps: int):
    """Optimise f from start; return the path (steps+1, 2) and the losses."""
    theta = torch.tensor(start, dtype=dtype, requires_grad=True)
    opt = make_opt([theta])
    path, losses = [theta.detach().clone()], []
    for _ in range(steps):
        opt.zero_grad()
        loss = f(theta)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        path.append(theta.detach().clone())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e8:
            break
    return torch.stack(path), losses


sq_min, sq_max = 1.0, math.sqrt(kappa)
hb_lr, hb_mu = 4 / (sq_min + sq_max) ** 2, ((sq_max - 1) / (sq_max + 1)) ** 2
on_quadratic = {
    "SGD": lambda p: SGD(p, lr=0.035),
    "momentum 0.9": lambda p: SGD(p, lr=0.01, momentum=0.9),
    "RMSProp": lambda p: RMSProp(p, lr=0.1),
    "Adam": lambda p: Adam(p, lr=0.1),
}
on_rosenbrock = {
    "SGD": lambda p: SGD(p, lr=1e-3),
    "momentum 0.9": lambda p: SGD(p, lr=1e-3, momentum=0.9),
    "RMSProp": lambda p: RMSProp(p, lr=3e-3),
    "Adam": lambda p: Adam(p, lr=0.03),
}
quad_steps, rosen_steps = pick(smoke=20, book=150), pick(smoke=50, book=3000)
rosen_dist: dict[str, float] = {}
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for ax, f, opts, start, steps, box in (
    (axes[0], quadratic, on_quadratic, theta0.tolist(), quad_steps, (-3.5, 1.0, -2.1, 1.0)),
    (axes[1], rosenbrock, on_rosenbrock, [-1.2, 1.0], rosen_steps, (-1.6, 1.4, -0.4, 1.6)),
):
    gx, gy = torch.meshgrid(torch.linspace(box[0], box[1], 200, dtype=dtype), torch.linspace(box[2], box[3], 200, dtype=dtype), indexing="xy")
    fz = f(torch.stack([gx, gy]))
    ax.contour(gx, gy, torch.log10(fz + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    for name, make in opts.items():
        path, losses = run(make, f, start, steps)
        ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=1, label=f"{name} (f = {losses[-1]:.1e})")
        if f is rosenbrock:  # distance of the end point from the minimum (1, 1)
            rosen_dist[name] = (path[-1] - torch.ones(2, dtype=dtype)).norm().item()
    ax.plot(*start, "ko")
    ax.set(xlim=box[:2], ylim=box[2:], title=f"{'quadratic, κ = 50' if f is quadratic else 'Rosenbrock'}: {steps} steps")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()
print({k: f"{v:.1e}" for k, v in rosen_dist.items()})
glue("s2_4_rosen_sgd", rosen_dist["SGD"], ".2f")
glue("s2_4_rosen_best", max(rosen_dist["momentum 0.9"], rosen_dist["Adam"]), ".0e")
if checks_enabled():
    assert max(rosen_dist["momentum 0.9"], rosen_dist["Adam"]) < 1e-3  # at the minimum
    assert rosen_dist["SGD"] > 0.1  # still in the valley

# %% [markdown]
# On the quadratic, SGD first zigzags across the narrow valley and then creeps along its floor;
# momentum gathers speed along the valley, overshoots the minimum and swings back; RMSProp and
# Adam, whose steps are normalised coordinate by coordinate, damp the zigzag quickly and follow
# the floor. On Rosenbrock's function the learning rate that keeps SGD stable in the steep
# direction leaves it crawling along the curved valley, still {glue}`s2_4_rosen_sgd` from the
# minimum at the end; momentum and Adam reach the minimum, both ending within
# {glue}`s2_4_rosen_best` of $(1, 1)$ (the final losses are in the legends).
#
# ### Steps to a tolerance
#
# How many steps does each method need to reduce the quadratic's loss a millionfold? For a fair
# comparison each gets its best learning rate from a grid (and momentum $\mu = 0.9$, not the
# tuned optimum). AdamW with $\lambda = 0$ is Adam, so it is not listed.

# %%
grid = pick(smoke=[0.03, 0.3], book=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
max_steps = pick(smoke=50, book=1000)
families = {
    "SGD": lambda p, lr: SGD(p, lr=lr),
    "SGD + momentum 0.9": lambda p, lr: SGD(p, lr=lr, momentum=0.9),
    "RMSProp": lambda p, lr: RMSProp(p, lr=lr),
    "Adam": lambda p, lr: Adam(p, lr=lr),
}
rows = {}
for name, make in families.items():
    best = (None, None)
    for lr in grid:
        _, losses = run(lambda p, make=make, lr=lr: make(p, lr), quadratic, theta0.tolist(), max_steps)
        n = steps_to_tol(losses)
        if n is not None and (best[0] is None or n < best[0]):
            best = (n, lr)
    rows[name] = {"steps to 1e-6": best[0], "best lr": best[1]}
rows["heavy ball, tuned (η*, μ*)"] = {
    "steps to 1e-6": steps_to_tol(run(lambda p: SGD(p, lr=hb_lr, momentum=hb_mu), quadratic, theta0.tolist(), max_steps)[1]),
    "best lr": hb_lr,
}
steps_table = pd.DataFrame(rows).T.astype({"steps to 1e-6": "Int64", "best lr": float})
steps_table
# %%
glue("s2_4_steps_sgd", rows["SGD"]["steps to 1e-6"])
glue("s2_4_steps_mom", rows["SGD + momentum 0.9"]["steps to 1e-6"])
glue("s2_4_steps_hb", rows["heavy ball, tuned (η*, μ*)"]["steps to 1e-6"])
glue("s2_4_steps_adam", rows["Adam"]["steps to 1e-6"])
if checks_enabled():
    assert rows["SGD + momentum 0.9"]["steps to 1e-6"] < rows["SGD"]["steps to 1e-6"]
    assert rows["heavy ball, tuned (η*, μ*)"]["steps to 1e-6"] < rows["SGD"]["steps to 1e-6"] / 3

# %% [markdown]
# SGD needs {glue}`s2_4_steps_sgd` steps, SGD with momentum 0.9 {glue}`s2_4_steps_mom`, the tuned
# heavy ball {glue}`s2_4_steps_hb` (the $\sqrt\kappa$ law at work) and Adam
# {glue}`s2_4_steps_adam`. (SGD's entry differs from the {glue}`s2_4_gd_steps` steps at
# $\eta^\star$ because $\eta^\star$ is not on the grid.) A two-parameter quadratic is a caricature, of course: in a network
# the curvature changes from place to place, the gradients are noisy, and no learning rate is
# tuned per direction. Adam's value is that it works acceptably across very different
# parameters with little tuning, which is why AdamW is the usual choice for Transformers.
#
# ## Learning-rate schedules
#
# A learning rate that is good early in training is too large late in training, when the loss
# surface has to be resolved finely; {doc}`../01_basics/04_training_loop` therefore decayed it
# along a cosine {cite:p}`loshchilov2017sgdr`. Large models add a **warm-up**: the learning rate
# starts small and rises linearly to its peak over the first steps. At the start the weights
# are random and, for Adam, the second-moment estimates rest on few gradients, and a full-size
# step can throw the model into a bad region; {cite:t}`goyal2017accurate` introduced a gradual
# warm-up to train ResNet-50 with mini-batches of 8192 images at a proportionally larger
# learning rate. With peak $\eta_{\max}$, floor $\eta_{\min}$, $W$ warm-up steps and $T$ steps
# in all, the learning rate at step $t = 0, 1, \dots$ is
#
# $$
# \eta_t = \begin{cases}
# \eta_{\max}\,(t + 1)/W, & t < W,\\
# \eta_{\min} + \tfrac12(\eta_{\max} - \eta_{\min})\,(1 + \cos \pi p_t), & W \le t < T,\\
# \eta_{\min}, & t \ge T,
# \end{cases}
# $$ (eq-2-4-warmup-cosine)
#
# where $p_t = (t - W)/(T - W)$ runs from 0 to 1 during the decay. The warm-up uses $t + 1$ so
# that the very first step already moves the weights. Written
# directly:

# %%
def my_warmup_cosine(t: int, W: int, T: int, peak: float, floor: float) -> float:
    if t >= T:
        return floor
    if t < W:
        return peak * (t + 1) / W
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (t - W) / (T - W)))

# %% [markdown]
# Later parts use this schedule, so it lives in the library as `dlbook.schedules.warmup_cosine`,
# with the argument checks a library function needs:
#
# ```{literalinclude} ../../dlbook/schedules.py
# :pyobject: warmup_cosine
# ```
#
# and as a PyTorch scheduler, a `LambdaLR` that multiplies each parameter group's learning rate
# by the same curve with $\eta_{\max} = 1$:
#
# ```{literalinclude} ../../dlbook/schedules.py
# :pyobject: warmup_cosine_scheduler
# ```
#
# We check that our function, the library's function and the library's scheduler give the same
# learning rate at every step, and compare the schedule with three others: a constant rate,
# step decay (divide by 10 at fixed steps, PyTorch's `MultiStepLR`), and plain cosine decay
# (`CosineAnnealingLR`).

# %%
T = pick(smoke=100, book=1000)
W, peak, floor_ratio = T // 10, 3e-4, 0.1
library_lrs = [warmup_cosine(t, warmup_steps=W, total_steps=T, max_lr=peak, min_lr=floor_ratio * peak) for t in range(T)]
assert all(math.isclose(a, my_warmup_cosine(t, W, T, peak, floor_ratio * peak), rel_tol=1e-12) for t, a in enumerate(library_lrs))


def scheduler_lrs(make_scheduler) -> list[float]:
    """Learning rate of each of T optimizer steps under a PyTorch scheduler."""
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(T):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


schedules = {
    "constant": scheduler_lrs(lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
    f"step decay (÷10 at {T // 2}, {4 * T // 5})": scheduler_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[T // 2, 4 * T // 5], gamma=0.1)),
    "cosine": scheduler_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=floor_ratio * peak)),
    "warm-up + cosine (dlbook)": scheduler_lrs(lambda o: warmup_cosine_scheduler(o, warmup_steps=W, total_steps=T, min_lr_ratio=floor_ratio)),
}
sched_err = max(abs(a - b) / b for a, b in zip(schedules["warm-up + cosine (dlbook)"], library_lrs, strict=True))
assert sched_err < 1e-12
glue("s2_4_sched_err", sched_err, ".0e")

fig, ax = plt.subplots(figsize=(7, 3.3))
for name, lrs in schedules.items():
    ax.plot(lrs, label=name, lw=2 if "dlbook" in name else 1.2)
ax.set(xlabel="optimizer step", ylabel="learning rate", title=f"Schedules for a {T}-step run")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The scheduler and the function agree to a relative error of {glue}`s2_4_sched_err`. To use
# the schedule, create the scheduler after the optimizer and call `scheduler.step()` after every
# `optimizer.step()`, as the library's `Trainer` does.
#
# ## Summary
#
# * On a quadratic, gradient descent converges at rate $(\kappa-1)/(\kappa+1)$: the condition
#   number sets the pace, because the steepest direction caps the learning rate.
# * Momentum averages gradients over time; PyTorch's form $v \leftarrow \mu v + g$, $\theta
#   \leftarrow \theta - \eta v$ equals the heavy ball and, for a constant learning rate,
#   Sutskever's form; tuned, it needs about $\sqrt\kappa$ instead of $\kappa$ steps.
# * RMSProp divides by a running RMS of the gradient; Adam adds momentum and bias correction;
#   AdamW applies weight decay to the weights directly instead of through Adam's normalization.
# * Each rule is a few lines, and ours follow `torch.optim` to rounding error.
# * Large models train with a linear warm-up followed by cosine decay to a floor,
#   `dlbook.schedules.warmup_cosine_scheduler`.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-2-4-1
# ```
# With `nesterov=True`, PyTorch's SGD computes the velocity as before, $v_{t+1} = \mu v_t +
# g_t$, but steps along $g_t + \mu v_{t+1}$ instead of $v_{t+1}$: a look-ahead in the spirit of
# Nesterov's accelerated gradient as written by {cite:t}`sutskever2013importance`. Add it to our
# `SGD` and check it against `torch.optim.SGD(..., nesterov=True)`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-4-1
# :class: dropdown
# ```
# Only the direction of the step changes; the velocity update stays the same.

# %%
class NesterovSGD(SGD):
    def update(self, p, g, state):
        state["v"] = g.clone() if "v" not in state else self.momentum * state["v"] + g
        p -= self.lr * (g + self.momentum * state["v"])


theta_a = torch.tensor([-1.2, 1.0], dtype=dtype, requires_grad=True)
theta_b = theta_a.detach().clone().requires_grad_()
ours, theirs = NesterovSGD([theta_a], lr=1e-3, momentum=0.9), torch.optim.SGD([theta_b], lr=1e-3, momentum=0.9, nesterov=True)
nesterov_steps = pick(smoke=20, book=200)
for _ in range(nesterov_steps):
    for th, opt in ((theta_a, ours), (theta_b, theirs)):
        opt.zero_grad()
        rosenbrock(th).backward()
        opt.step()
torch.testing.assert_close(theta_a, theta_b, rtol=1e-10, atol=1e-12)
print(f"Nesterov SGD after {nesterov_steps} steps:", theta_a.tolist())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-4-2
# ```
# Show that Adam's first step has size $\eta$ (up to $\epsilon$) in every coordinate, whatever
# the gradient's scale. How large would it be without the bias correction, with the default
# $\beta$s?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-4-2
# :class: dropdown
# ```
# After one step $m_1 = (1-\beta_1)g$ and $v_1 = (1-\beta_2)g^2$, so $\hat m_1 = g$ and
# $\hat v_1 = g^2$: the step is $\eta\, g/(|g| + \epsilon) \approx \eta\,\operatorname{sign}(g)$.
# Without correction it is $\eta\,(1-\beta_1)/\sqrt{1-\beta_2} = \eta \cdot 0.1/\sqrt{0.001}
# \approx 3.16\,\eta$: too large, in every coordinate at once.

# %%
lr = 1e-3
g = torch.tensor([1e-4, -0.5, 30.0, 2e3], dtype=dtype)
p = torch.zeros(4, dtype=dtype, requires_grad=True)
opt = torch.optim.Adam([p], lr=lr)
p.grad = g.clone()
opt.step()
print("first Adam step / lr:", (p.detach() / lr).tolist())
torch.testing.assert_close(p.detach().abs(), torch.full((4,), lr, dtype=dtype), rtol=1e-3, atol=0)
uncorrected = lr * (0.1 * g) / ((0.001 * g * g).sqrt() + 1e-8)
assert torch.allclose(uncorrected.abs() / lr, torch.full((4,), 0.1 / math.sqrt(0.001), dtype=dtype), rtol=1e-2)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-4-3
# ```
# Take two weights, $\theta = 1$ and $\theta = 100$, whose loss gradient is zero, so that only
# weight decay acts on them. Run 10 steps of Adam with L2 weight decay and of AdamW, both with
# $\lambda = 0.1$ and $\eta = 0.01$. How much does each weight shrink?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-4-3
# :class: dropdown
# ```
# With L2, Adam's gradient is $\lambda\theta$ alone, and Adam normalises it to a step of about
# $\eta$ whatever its size: both weights lose about $10\eta = 0.1$, the decay no longer
# depends on $\theta$ or even on $\lambda$. AdamW shrinks each by the factor
# $(1-\eta\lambda)^{10}$, proportionally to its size, as weight decay intends.

# %%
for cls, name in ((torch.optim.Adam, "Adam + L2"), (torch.optim.AdamW, "AdamW")):
    w = torch.tensor([1.0, 100.0], dtype=dtype, requires_grad=True)
    opt = cls([w], lr=0.01, weight_decay=0.1)
    for _ in range(10):
        w.grad = torch.zeros_like(w)
        opt.step()
    print(f"{name:10s}: {w.tolist()}")
    if cls is torch.optim.Adam:
        torch.testing.assert_close(w.detach(), torch.tensor([0.9, 99.9], dtype=dtype), rtol=0, atol=1e-3)
    else:
        torch.testing.assert_close(w.detach(), torch.tensor([1.0, 100.0], dtype=dtype) * (1 - 0.01 * 0.1) ** 10)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-4-4
# ```
# Compare one RMSProp step with $\epsilon = 10^{-8}$ outside the square root (PyTorch) and
# inside it, $g/\sqrt{s + \epsilon}$, for a parameter whose gradients are all $10^{-6}$, and for
# one whose gradients are all $1$.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-4-4
# :class: dropdown
# ```
# For a constant gradient $g$, after the first step $s = (1-\alpha)g^2$. With $g = 1$ the two
# placements agree to better than one part in $10^6$. With $g = 10^{-6}$, $s = 10^{-14}$: outside, $\sqrt s +
# \epsilon \approx 1.1\times10^{-7}$ and the step is about $9\eta$; inside, $\sqrt{s + \epsilon}
# \approx 10^{-4}$ and the step is about $0.01\eta$, nearly a thousand times smaller. The "small" constant
# decides how parameters with tiny gradients move.

# %%
alpha, eps, lr = 0.99, 1e-8, 1e-3
ratio = {}
for g in (1e-6, 1.0):
    s = (1 - alpha) * g * g
    outside, inside = lr * g / (math.sqrt(s) + eps), lr * g / math.sqrt(s + eps)
    print(f"g = {g:g}: step outside {outside:.3e}, inside {inside:.3e}")
    p = torch.zeros(1, dtype=dtype, requires_grad=True)
    opt = torch.optim.RMSprop([p], lr=lr, alpha=alpha, eps=eps)
    p.grad = torch.full((1,), g, dtype=dtype)
    opt.step()
    assert math.isclose(-p.item(), outside, rel_tol=1e-9)  # PyTorch: eps outside
    ratio[g] = outside / inside
assert ratio[1.0] < 1 + 1e-6 and ratio[1e-6] > 500

# %% [markdown]
# ```{solution-end}
# ```
