# %% [markdown]
# # Linear regression, three ways
#
# Every training run in this book minimizes a loss by following its gradient. Before we do that
# for networks with millions of parameters, we do it for a model with two, where every step can
# be written down and checked: a straight line fitted to real data by least squares. Linear
# regression is the one model whose loss has a minimum we can compute in closed form, so it is
# the place to see that gradient descent really goes where the mathematics says it should, how
# fast, and what happens when the learning rate is too large.
#
# This section derives the gradient of the mean squared error by hand and checks it against
# PyTorch's autograd, then fits the line three ways: (a) by solving the **normal equations**,
# (b) by gradient descent written by hand, and (c) by autograd with `torch.optim.SGD`, the way
# {doc}`../01_basics/04_training_loop` trains networks. The three answers agree. Finally we
# derive the largest learning rate for which gradient descent converges and watch it diverge
# just above that bound.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue

seed_everything(0)
print("device available:", get_device())
# Two parameters and 442 examples: a GPU would not help. We compute in float64 on the CPU so
# that identities (hand-written == autograd == closed form) hold to ~1e-10.
DT = torch.float64

# %% [markdown]
# ## The data and the model
#
# scikit-learn's diabetes data set {cite:p}`efron2004least,pedregosa2011scikit` describes
# $n = 442$ patients by ten baseline measurements; the target $y$ is a measure of how far the
# disease has progressed one year later. We predict $y$ from one feature, the body-mass index
# (BMI, in kg/m²). We rescale BMI to $[0, 1]$ (*min–max scaling*): $x = (\text{BMI} -
# \min)/(\max - \min)$. This keeps the numbers in a range where a learning rate near 1 makes
# sense; later in the section we will see how much the choice of scaling matters.
#
# The model is a straight line with a slope $w$ and an intercept $b$,
#
# $$
# \hat y_i = w x_i + b, \qquad i = 1, \dots, n,
# $$
#
# and the loss is the **mean squared error** (MSE), the average squared distance between
# prediction and target:
#
# $$
# L(w, b) = \frac{1}{n} \sum_{i=1}^{n} (\hat y_i - y_i)^2 .
# $$ (eq-mse)

# %%
data = load_diabetes(scaled=False)
bmi = torch.tensor(data.data[:, data.feature_names.index("bmi")], dtype=DT)
y = torch.tensor(data.target, dtype=DT)
n = len(y)
x = (bmi - bmi.min()) / (bmi.max() - bmi.min())
assert n == 442 and x.min() == 0 and x.max() == 1
print(f"n = {n}, BMI from {bmi.min():.1f} to {bmi.max():.1f} kg/m², y from {y.min():.0f} to {y.max():.0f}")


def mse(w, b):
    """The loss (eq-mse); w and b are scalars or tensors that broadcast against x."""
    return ((w * x + b - y) ** 2).mean()


# %% [markdown]
# ## The gradient, step by step
#
# Write the residual of example $i$ as $r_i = \hat y_i - y_i = w x_i + b - y_i$. The loss is
# $L = \frac1n \sum_i r_i^2$, and by the chain rule
#
# $$
# \frac{\partial L}{\partial w} = \frac{1}{n}\sum_{i=1}^n 2 r_i \frac{\partial r_i}{\partial w},
# \qquad
# \frac{\partial L}{\partial b} = \frac{1}{n}\sum_{i=1}^n 2 r_i \frac{\partial r_i}{\partial b}.
# $$
#
# Since $\partial r_i / \partial w = x_i$ and $\partial r_i / \partial b = 1$,
#
# $$
# \frac{\partial L}{\partial w} = \frac{2}{n}\sum_{i=1}^n (\hat y_i - y_i)\, x_i ,
# \qquad
# \frac{\partial L}{\partial b} = \frac{2}{n}\sum_{i=1}^n (\hat y_i - y_i) .
# $$ (eq-mse-grad)
#
# Two details are easy to get wrong. The sign: the residual is *prediction minus target*, so
# when the line is too high ($r_i > 0$ for all $i$) the gradient $\partial L/\partial b$ is positive, and a step *against* the
# gradient lowers the line. And the factor $\frac{2}{n}$: it comes from the mean, and dropping
# it multiplies the gradient by $n/2$, which changes which learning rates work (Exercise
# {ref}`4 <ex-2-1-4>`).
#
# It is convenient to stack the parameters into $\theta = (w, b)^\top$ and the inputs into
# the **design matrix** $X \in \mathbb{R}^{n \times 2}$ whose row $i$ is $(x_i, 1)$. Then
# $\hat y = X\theta$, $L(\theta) = \frac1n \lVert X\theta - y \rVert^2$, and
# {eq}`eq-mse-grad` reads
#
# $$
# \nabla L(\theta) = \frac{2}{n} X^\top (X\theta - y).
# $$ (eq-mse-grad-matrix)
#
# We check both forms against autograd at a random point.

# %%
def grad_by_hand(w, b):
    """(eq-mse-grad): returns (dL/dw, dL/db)."""
    r = w * x + b - y
    return 2 / n * (r * x).sum(), 2 / n * r.sum()


X = torch.stack([x, torch.ones_like(x)], dim=1)  # (n, 2) design matrix
w0 = torch.randn((), dtype=DT, requires_grad=True)
b0 = torch.randn((), dtype=DT, requires_grad=True)
mse(w0, b0).backward()
gw, gb = grad_by_hand(w0.detach(), b0.detach())
g_matrix = 2 / n * X.T @ (X @ torch.stack([w0, b0]).detach() - y)
print(f"autograd: ({w0.grad:.6f}, {b0.grad:.6f})   by hand: ({gw:.6f}, {gb:.6f})")
torch.testing.assert_close(torch.stack([gw, gb]), torch.stack([w0.grad, b0.grad]), rtol=1e-12, atol=1e-12)
torch.testing.assert_close(g_matrix, torch.stack([w0.grad, b0.grad]), rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## (a) The closed form: normal equations
#
# $L$ is a quadratic function of $\theta$. Its matrix of second derivatives, the **Hessian**,
# is the derivative of {eq}`eq-mse-grad-matrix`:
#
# $$
# H = \nabla^2 L = \frac{2}{n} X^\top X .
# $$ (eq-hessian)
#
# $H$ does not depend on $\theta$, and it is positive semi-definite, since
# $v^\top H v = \frac2n \lVert X v\rVert^2 \ge 0$: the loss is a convex bowl. It is positive
# definite (a bowl with a single lowest point) as soon as the columns of $X$ are linearly
# independent, that is, as soon as not all $x_i$ are equal. The minimum is where the gradient
# vanishes, $\frac2n X^\top (X\theta^\star - y) = 0$, which gives the **normal equations**
#
# $$
# X^\top X \,\theta^\star = X^\top y .
# $$ (eq-normal)
#
# For one feature the $2\times2$ system can be solved by hand: the second equation says
# $\sum_i (w x_i + b - y_i) = 0$, i.e. $b = \bar y - w \bar x$ (the line passes through the
# mean point), and substituting it into the first gives
#
# $$
# w^\star = \frac{\sum_i (x_i - \bar x)(y_i - \bar y)}{\sum_i (x_i - \bar x)^2},
# \qquad b^\star = \bar y - w^\star \bar x .
# $$
#
# In code we solve {eq}`eq-normal` with `torch.linalg.solve`. In practice one calls
# `torch.linalg.lstsq`, which minimizes $\lVert X\theta - y\rVert$ directly by a QR
# factorization of $X$: forming $X^\top X$ squares the condition number of the problem (defined
# below), which costs accuracy when $X$ is badly conditioned. Here all three agree.

# %%
theta_solve = torch.linalg.solve(X.T @ X, X.T @ y)
theta_lstsq = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
xc, yc = x - x.mean(), y - y.mean()
w_formula = (xc * yc).sum() / (xc**2).sum()
theta_formula = torch.stack([w_formula, y.mean() - w_formula * x.mean()])
torch.testing.assert_close(theta_solve, theta_lstsq, rtol=1e-10, atol=1e-10)
torch.testing.assert_close(theta_solve, theta_formula, rtol=1e-10, atol=1e-10)
theta_star = theta_lstsq
w_star, b_star = theta_star.tolist()
loss_star = mse(w_star, b_star).item()
gw_star, gb_star = grad_by_hand(w_star, b_star)
assert abs(gw_star) < 1e-9 and abs(gb_star) < 1e-9  # the gradient vanishes at the solution
r2 = 1 - loss_star / y.var(correction=0).item()
w_per_bmi = w_star / (bmi.max() - bmi.min()).item()
print(f"w* = {w_star:.3f}, b* = {b_star:.3f}, MSE = {loss_star:.1f}, R² = {r2:.3f}")
glue("s2_1_w", w_star, ".1f")
glue("s2_1_b", b_star, ".1f")
glue("s2_1_w_per_bmi", w_per_bmi, ".2f")
glue("s2_1_mse", loss_star, ".0f")
glue("s2_1_r2", r2, ".2f")

# %% [markdown]
# The fitted line is $\hat y = $ {glue}`s2_1_w` $x +$ {glue}`s2_1_b`: one more kg/m² of BMI goes
# with {glue}`s2_1_w_per_bmi` more units of disease progression. The line explains a fraction
# $R^2 = 1 - L(\theta^\star)/\operatorname{Var}(y) =$ {glue}`s2_1_r2` of the variance of $y$:
# BMI matters, but it is far from the whole story.
#
# ## (b) Gradient descent by hand
#
# **Gradient descent** starts from some $\theta_0$ and repeatedly steps against the gradient,
# with a step size $\eta > 0$ called the **learning rate**:
#
# $$
# \theta_{t+1} = \theta_t - \eta \nabla L(\theta_t).
# $$ (eq-gd)
#
# We start at $\theta_0 = (0, 0)$ and use the gradient {eq}`eq-mse-grad`, nothing else.

# %%
steps = pick(smoke=400, book=3000)
lr = 0.8


def gradient_descent(lr, steps, w=0.0, b=0.0):
    """Run (eq-gd) with the hand-written gradient; return the path, shape (steps + 1, 2)."""
    w, b = torch.tensor(w, dtype=DT), torch.tensor(b, dtype=DT)
    path = [torch.stack([w, b])]
    for _ in range(steps):
        gw, gb = grad_by_hand(w, b)
        w, b = w - lr * gw, b - lr * gb
        path.append(torch.stack([w, b]))
    return torch.stack(path)


path_gd = gradient_descent(lr, steps)
print("gradient descent:", path_gd[-1].tolist(), "  closed form:", theta_star.tolist())

# %% [markdown]
# ## (c) Autograd and `torch.optim.SGD`
#
# The same algorithm, written the way networks are trained: the parameters are tensors that
# require gradients, autograd computes $\nabla L$, and the optimizer applies {eq}`eq-gd`.
# `torch.optim.SGD` without momentum performs exactly `p -= lr * p.grad`, so the two runs
# should agree to rounding error, step for step.

# %%
params = torch.zeros(2, dtype=DT, requires_grad=True)  # (w, b)
opt = torch.optim.SGD([params], lr=lr)
for _ in range(steps):
    opt.zero_grad()
    loss = ((params[0] * x + params[1] - y) ** 2).mean()
    loss.backward()
    opt.step()
theta_sgd = params.detach()
torch.testing.assert_close(theta_sgd, path_gd[-1], rtol=1e-10, atol=1e-10)
print("torch.optim.SGD:", theta_sgd.tolist())
if checks_enabled():  # with enough steps, both reach the closed-form solution
    torch.testing.assert_close(path_gd[-1], theta_star, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(theta_sgd, theta_star, rtol=1e-6, atol=1e-6)

# %% [markdown]
# The three methods agree. The figure shows the data with the fitted line, and the path of
# gradient descent on the **loss surface**: the contour lines join points $(w, b)$ of equal
# loss, and the star is $\theta^\star$.

# %%
def loss_grid(ws, bs):
    """L(w, b) on a grid: ws (A,), bs (B,) -> (B, A)."""
    W, B = torch.meshgrid(ws, bs, indexing="xy")
    return ((W[..., None] * x + B[..., None] - y) ** 2).mean(-1)


ws = torch.linspace(-60, 380, 220, dtype=DT)
bs = torch.linspace(-60, 230, 200, dtype=DT)
Z = loss_grid(ws, bs)
levels = loss_star + np.geomspace(20, 4e4, 16)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
ax1.scatter(bmi, y, s=8, alpha=0.5)
grid = torch.linspace(0, 1, 2, dtype=DT)
ax1.plot(bmi.min() + grid * (bmi.max() - bmi.min()), w_star * grid + b_star, "C3", lw=2, label="least-squares line")
ax1.set(xlabel="BMI (kg/m²)", ylabel="disease progression $y$", title="Data and fit")
ax1.legend()
cs = ax2.contour(ws, bs, Z, levels=levels, cmap="viridis", linewidths=0.8)
shown = path_gd[:200]
ax2.plot(shown[:, 0], shown[:, 1], ".-", color="C1", ms=3, lw=1, label=f"gradient descent, $\\eta={lr}$")
ax2.plot(w_star, b_star, "*", color="C3", ms=14, label=r"$\theta^\star$ (normal equations)")
ax2.set(xlabel="$w$", ylabel="$b$", title="Loss contours and the path of gradient descent")
ax2.legend(loc="upper right", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The contours are long, tilted ellipses: the loss rises steeply across the valley and gently
# along it. Gradient descent overshoots in the steep direction and bounces from wall to wall,
# the bounces die out, and it then moves along the flat floor to $\theta^\star$. The rest of
# the section explains this behaviour, and with it how large the learning rate may be.
#
# ## How large may the learning rate be?
#
# Because $L$ is quadratic, its gradient is linear in $\theta$: subtracting
# $\nabla L(\theta^\star) = 0$ from {eq}`eq-mse-grad-matrix` gives
# $\nabla L(\theta) = H(\theta - \theta^\star)$. Write the error as
# $e_t = \theta_t - \theta^\star$; one step of {eq}`eq-gd` is then
#
# $$
# e_{t+1} = e_t - \eta H e_t = (I - \eta H)\, e_t, \qquad\text{so}\qquad e_t = (I - \eta H)^t e_0 .
# $$
#
# $H$ is symmetric, so it has orthonormal eigenvectors $u_1, u_2$ with eigenvalues
# $\lambda_{\max} \ge \lambda_{\min} > 0$ (the curvatures of the bowl along those directions).
# Along eigenvector $u_k$, the component $c_{t,k} = u_k^\top e_t$ of the error is simply
# multiplied by $1 - \eta\lambda_k$ on every step:
#
# $$
# c_{t,k} = (1 - \eta \lambda_k)^t \, c_{0,k}.
# $$ (eq-gd-modes)
#
# The error shrinks to zero if and only if $|1 - \eta\lambda_k| < 1$ for every $k$ (with a
# nonzero starting component), that is $0 < \eta\lambda_k < 2$. The binding constraint is the
# steepest direction:
#
# $$
# \eta < \eta_{\mathrm{crit}} = \frac{2}{\lambda_{\max}(H)} .
# $$ (eq-eta-crit)
#
# Just below $\eta_{\mathrm{crit}}$ the factor $1 - \eta\lambda_{\max}$ is close to $-1$: the
# error along $u_1$ flips sign every step and shrinks slowly (a zigzag across the valley). Just
# above, it flips sign and *grows*, and the loss explodes geometrically. Meanwhile the flat
# direction shrinks only by $1 - \eta\lambda_{\min} \ge 1 - 2\lambda_{\min}/\lambda_{\max}$
# per step, so the **condition number** $\kappa = \lambda_{\max}/\lambda_{\min}$ sets how
# many steps gradient descent needs: on the order of $\kappa$ of them to shrink the error by a
# constant factor. For a network the Hessian changes from point to point, but the same picture
# holds locally, which is why the learning rate is the first thing to tune
# ({doc}`04_optimizers`).

# %%
H = 2 / n * X.T @ X
torch.testing.assert_close(H, torch.autograd.functional.hessian(lambda t: ((X @ t - y) ** 2).mean(), theta_star))
lam, U = torch.linalg.eigh(H)  # ascending eigenvalues
lam_min, lam_max = lam.tolist()
eta_crit = 2 / lam_max
kappa = lam_max / lam_min
print(f"eigenvalues of H: {lam_min:.4f}, {lam_max:.4f};  eta_crit = {eta_crit:.4f};  kappa = {kappa:.1f}")
glue("s2_1_lam_max", lam_max, ".3f")
glue("s2_1_eta_crit", eta_crit, ".3f")
glue("s2_1_kappa", kappa, ".0f")

# (eq-gd-modes) is an identity: the top component of the error is multiplied by (1 - lr*lam_max)^t
e = path_gd - theta_star
t = 40
torch.testing.assert_close(e[t] @ U[:, 1], (1 - lr * lam_max) ** t * (e[0] @ U[:, 1]), rtol=1e-8, atol=1e-8)
torch.testing.assert_close(e[t] @ U[:, 0], (1 - lr * lam_min) ** t * (e[0] @ U[:, 0]), rtol=1e-8, atol=1e-8)

# %% [markdown]
# For our data $\lambda_{\max}(H) =$ {glue}`s2_1_lam_max`, so gradient descent converges for
# $\eta <$ {glue}`s2_1_eta_crit`, and the condition number is $\kappa =$ {glue}`s2_1_kappa`. The
# run above used $\eta = 0.8$, inside the bound but not far from it. Now we run just below and just above
# it, at $0.95\,\eta_{\mathrm{crit}}$ and $1.05\,\eta_{\mathrm{crit}}$, and at
# $0.5\,\eta_{\mathrm{crit}}$ for comparison.

# %%
div_steps = pick(smoke=300, book=3000)
runs = {f: gradient_descent(f * eta_crit, div_steps) for f in (0.5, 0.95, 1.05)}
losses = {f: ((p @ X.T - y) ** 2).mean(1) for f, p in runs.items()}
below, above = losses[0.95], losses[1.05]
ratio_above = (above[200] / above[0]).item()
print(f"0.95 eta_crit: distance to theta* after {div_steps} steps = {(runs[0.95][-1] - theta_star).norm():.2e}")
print(f"1.05 eta_crit: loss after 200 steps / initial loss = {ratio_above:.2e}")
glue("s2_1_div_ratio", ratio_above, ".1e")
assert ratio_above > 1e6 and above[-1] > above[200]  # above the bound: diverges (|1 - eta*lam_max| = 1.1 per step)
assert below[-1] < below[0] and (runs[0.95][-1] - theta_star).norm() < (runs[0.95][0] - theta_star).norm()
if checks_enabled():  # below the bound: converges to the closed-form solution
    torch.testing.assert_close(runs[0.95][-1], theta_star, rtol=1e-6, atol=1e-6)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
for f, L in losses.items():
    shown = L[:400] - loss_star
    ax1.plot(shown, label=rf"$\eta = {f}\,\eta_{{\mathrm{{crit}}}}$")
ax1.set_yscale("log")
ax1.set(xlabel="step", ylabel=r"$L(\theta_t) - L(\theta^\star)$", title="Below the bound it converges; above it explodes")
ax1.legend()
ax2.contour(ws, bs, Z, levels=levels, cmap="viridis", linewidths=0.8)
for f, color in ((0.95, "C1"), (1.05, "C2")):
    p = runs[f][:16]
    ax2.plot(p[:, 0], p[:, 1], ".-", color=color, ms=4, lw=0.8, label=rf"$\eta = {f}\,\eta_{{\mathrm{{crit}}}}$, 15 steps")
ax2.plot(w_star, b_star, "*", color="C3", ms=14)
ax2.set(xlim=(ws[0], ws[-1]), ylim=(bs[0], bs[-1]), xlabel="$w$", ylabel="$b$", title="Zigzag across the valley")
ax2.legend(loc="upper right", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# At $1.05\,\eta_{\mathrm{crit}}$ the error along the steep direction is multiplied by
# $|1 - 1.05 \cdot 2| = 1.1$ per step; after 200 steps the loss is {glue}`s2_1_div_ratio` times
# its starting value (and still growing, by a factor of about $1.1^2$ per step). At $0.95\,\eta_{\mathrm{crit}}$ the same component shrinks by $0.9$ per
# step and the run converges. At $0.5\,\eta_{\mathrm{crit}}$ the steep direction is solved in a
# single step ($1 - \eta\lambda_{\max} = 0$), but the flat one is slower than at
# $0.95\,\eta_{\mathrm{crit}}$: the largest stable learning rate is also the fastest for the
# slow direction.
#
# ### Scaling the input changes the bowl
#
# The Hessian {eq}`eq-hessian` depends only on the inputs, so the way we scale $x$ decides the
# shape of the bowl. With $\frac1n X^\top X = \begin{pmatrix} \overline{x^2} & \bar x \\ \bar x
# & 1 \end{pmatrix}$, the off-diagonal entry $\bar x$ tilts the ellipses, and a large
# $\overline{x^2}$ stretches them. We compare BMI in kg/m² (mean about 26), our $[0, 1]$
# scaling, and **standardization**, $x = (\text{BMI} - \text{mean})/\text{std}$.

# %%
def condition(feature):
    Xf = torch.stack([feature, torch.ones_like(feature)], dim=1)
    ev = torch.linalg.eigvalsh(2 / n * Xf.T @ Xf)
    return (ev[-1] / ev[0]).item(), 2 / ev[-1].item()


scalings = {"raw BMI (kg/m²)": bmi, "min–max to [0, 1]": x,
            "standardized": (bmi - bmi.mean()) / bmi.std(correction=0)}
table = {name: condition(f) for name, f in scalings.items()}
for name, (k, ec) in table.items():
    print(f"{name:20s}  kappa = {k:10.1f}   eta_crit = {ec:.5f}")
glue("s2_1_kappa_raw", table["raw BMI (kg/m²)"][0], ",.0f")
glue("s2_1_eta_crit_raw", table["raw BMI (kg/m²)"][1], ".4f")
assert abs(table["standardized"][0] - 1) < 1e-9  # standardized: H = 2I, a round bowl
assert table["raw BMI (kg/m²)"][0] > 100 * table["min–max to [0, 1]"][0]

# %% [markdown]
# On raw BMI the condition number is {glue}`s2_1_kappa_raw` and the learning rate must stay
# below {glue}`s2_1_eta_crit_raw`: gradient descent would need tens of thousands of steps. On
# standardized BMI, $\frac1n X^\top X = I$, so $H = 2I$, $\kappa = 1$ and the contours are
# circles; Exercise {ref}`1 <ex-2-1-1>` shows that gradient descent then lands on $\theta^\star$ in
# one step. This is the reason networks are fed standardized inputs, and, one level down, a
# reason for the normalization layers of {doc}`06_stable_training`.
#
# ## Summary
#
# * For $\hat y = wx + b$ and $L = \frac1n\sum_i (\hat y_i - y_i)^2$, the gradient is
#   $\partial L/\partial w = \frac2n\sum_i(\hat y_i - y_i)x_i$ and
#   $\partial L/\partial b = \frac2n\sum_i(\hat y_i - y_i)$, in matrix form
#   $\frac2n X^\top(X\theta - y)$; autograd computes the same numbers.
# * The minimum solves the normal equations $X^\top X\theta = X^\top y$ (use `lstsq`);
#   gradient descent by hand and `torch.optim.SGD` reach the same $\theta^\star$.
# * On a quadratic with Hessian $H$, gradient descent multiplies the error along each
#   eigenvector by $1 - \eta\lambda_k$ per step. It converges if and only if
#   $\eta < 2/\lambda_{\max}(H)$, and its speed is set by the condition number.
# * Scaling the inputs reshapes the loss surface; standardization makes this one perfectly round.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-2-1-1
# ```
# Standardize BMI (mean 0, standard deviation 1, computed with the $\frac1n$ convention).
# Show that $H = 2I$, and that one step of gradient descent with $\eta = \frac12$ from any
# starting point lands exactly on $\theta^\star$. Check it numerically.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-1-1
# :class: dropdown
# ```
# With $\bar x = 0$ and $\overline{x^2} = 1$, $\frac1n X^\top X = I$ and $H = 2I$. Then
# $e_1 = (I - \eta H)e_0 = (1 - 2\eta)e_0 = 0$ for $\eta = \frac12$. The fitted line is the same
# line as before, expressed in the new units of $x$, so its predictions and its loss do not
# change.

# %%
xs = (bmi - bmi.mean()) / bmi.std(correction=0)
Xs = torch.stack([xs, torch.ones_like(xs)], dim=1)
torch.testing.assert_close(2 / n * Xs.T @ Xs, 2 * torch.eye(2, dtype=DT))
theta_s_star = torch.linalg.lstsq(Xs, y.unsqueeze(1)).solution.squeeze(1)
theta0 = torch.randn(2, dtype=DT) * 100
theta1 = theta0 - 0.5 * (2 / n * Xs.T @ (Xs @ theta0 - y))
print("after one step:", theta1.tolist(), "  theta*:", theta_s_star.tolist())
torch.testing.assert_close(theta1, theta_s_star)
torch.testing.assert_close(((Xs @ theta_s_star - y) ** 2).mean().item(), loss_star)  # same line, same loss

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-1-2
# ```
# For a fixed learning rate, the slowest-shrinking mode of the error shrinks by
# $\rho(\eta) = \max_k |1 - \eta\lambda_k|$ per step. Find the $\eta$ that minimizes $\rho$,
# express the best rate in terms of $\kappa$, and check it on our data.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-1-2
# :class: dropdown
# ```
# $|1 - \eta\lambda_{\min}|$ decreases and $|1 - \eta\lambda_{\max}|$ increases with $\eta$
# (once $\eta > 1/\lambda_{\max}$); the maximum is smallest where they are equal,
# $1 - \eta\lambda_{\min} = \eta\lambda_{\max} - 1$, i.e. $\eta^\star = 2/(\lambda_{\min} +
# \lambda_{\max})$, giving $\rho^\star = \frac{\lambda_{\max} - \lambda_{\min}}{\lambda_{\max} +
# \lambda_{\min}} = \frac{\kappa - 1}{\kappa + 1}$. With $\kappa$ large this is close to 1:
# ill-conditioned problems are slow for any learning rate.

# %%
eta_best = 2 / (lam_min + lam_max)
rho_best = (kappa - 1) / (kappa + 1)
p = gradient_descent(eta_best, 60)
err = (p - theta_star).norm(dim=1)
print(f"eta* = {eta_best:.4f}, predicted rate {rho_best:.5f}, measured {err[-1] / err[-2]:.5f}")
torch.testing.assert_close((err[-1] / err[-2]).item(), rho_best, rtol=1e-6, atol=1e-9)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-1-3
# ```
# Fit a linear model on all ten features of the diabetes data by the normal equations (add a
# column of ones for the intercept) and compare the result with scikit-learn's
# `LinearRegression`. How much does the training MSE drop compared with BMI alone?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-1-3
# :class: dropdown
# ```
# Nothing in the derivation used the number of columns: with $X \in \mathbb{R}^{n\times 11}$ the
# normal equations are the same. More features can only lower the *training* MSE (the
# one-feature model is a special case); whether they help on new data is the subject of
# {doc}`05_generalization`.

# %%
X_all = torch.tensor(data.data, dtype=DT)
X_all = (X_all - X_all.mean(0)) / X_all.std(0, correction=0)
X_all1 = torch.cat([X_all, torch.ones(n, 1, dtype=DT)], dim=1)
theta_all = torch.linalg.lstsq(X_all1, y.unsqueeze(1)).solution.squeeze(1)
ref = LinearRegression().fit(X_all.numpy(), y.numpy())
torch.testing.assert_close(theta_all[:-1], torch.tensor(ref.coef_, dtype=DT), rtol=1e-8, atol=1e-8)
torch.testing.assert_close(theta_all[-1].item(), float(ref.intercept_), rtol=1e-8, atol=1e-8)
mse_all = ((X_all1 @ theta_all - y) ** 2).mean().item()
print(f"training MSE: BMI only {loss_star:.0f}, all ten features {mse_all:.0f}")
assert mse_all < loss_star

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-1-4
# ```
# A common slip is to write the gradient as $\sum_i (\hat y_i - y_i)x_i$, without the factor
# $\frac2n$. What does gradient descent with this "gradient" and $\eta = 0.8$ do, and which
# learning rates would work with it?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-1-4
# :class: dropdown
# ```
# The direction is right but the length is $n/2 = 221$ times too large, so the step is that of
# the correct gradient with learning rate $221\eta$. Since $\eta = 0.8$ is already close to
# $\eta_{\mathrm{crit}}$, the run diverges; it works only for $\eta < 2\eta_{\mathrm{crit}}/n$.
# With the mean, the usable learning rate does not depend on the size of the data set (or of
# the mini-batch), which is why losses are averaged, not summed. (With the sign flipped as
# well, $\sum_i (y_i - \hat y_i)x_i$, every step would climb the bowl and diverge for *any*
# $\eta > 0$.)

# %%
def sloppy_gd(lr, steps):
    w, b = 0.0, 0.0
    for _ in range(steps):
        r = w * x + b - y
        w, b = w - lr * (r * x).sum(), b - lr * r.sum()
    return mse(w, b).item()


print(f"eta = 0.8: loss {sloppy_gd(0.8, 30):.3g};  eta = 0.8 * 2/n: loss {sloppy_gd(0.8 * 2 / n, 3000):.6g}")
assert not math.isfinite(sloppy_gd(0.8, 30)) or sloppy_gd(0.8, 30) > 1e10
torch.testing.assert_close(sloppy_gd(0.8 * 2 / n, 40), mse(*gradient_descent(0.8, 40)[-1]).item())

# %% [markdown]
# ```{solution-end}
# ```
