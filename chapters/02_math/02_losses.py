# %% [markdown]
# # Losses and their gradients
#
# A network learns only what its loss asks for, and only through the loss's gradient. The
# loss turns "the prediction is wrong" into a number, and its derivative with respect to the
# network's output is the first signal that back-propagation ({doc}`03_backprop`) carries
# through every layer. A loss with a badly behaved gradient (one that vanishes when the model is
# confidently wrong, or one that overflows to `inf`) stalls or wrecks training, however good the
# network.
#
# This section derives the three losses behind almost every model in this book from one idea,
# the likelihood of the data: the **mean squared error** for real-valued targets, **binary
# cross-entropy** for yes/no targets and **categorical cross-entropy** for one class out of
# many. For each we derive the gradient with respect to the model's raw output, check it three
# ways (against PyTorch's autograd, against finite differences with `torch.autograd.gradcheck`,
# and the loss itself against PyTorch's `torch.nn.functional`), and see how to compute it without
# overflow.

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F

from dlbook import get_device, pick, seed_everything
from dlbook.book import glue

seed_everything(0)
print("device available:", get_device())
# The checks below are on small tensors; we run them on the CPU in float64, the precision
# finite-difference checks need, and use float32 only to show overflow.
DT = torch.float64
batch, classes = pick(smoke=4, book=16), 5
# Every assert in this section is an identity, so all of them hold in every profile.

# %% [markdown]
# ## Three ways to check a derivative
#
# For every loss $\ell(z, y)$ below we write the gradient $\partial \ell / \partial z$ by hand
# as a function `grad(z, y)`. To test it we wrap the pair (loss, hand-written gradient) in a
# `torch.autograd.Function`: its `forward` computes the loss and its `backward` returns our
# formula instead of letting autograd differentiate. Then:
#
# 1. we compare our formula with the gradient autograd computes from the plain loss;
# 2. `torch.autograd.gradcheck` compares our `backward` with **finite differences**,
#    $\partial\ell/\partial z_j \approx \big(\ell(z + \epsilon e_j) - \ell(z - \epsilon e_j)\big)/(2\epsilon)$,
#    an estimate that uses no calculus at all. It needs float64: in float32 the rounding error
#    of the difference quotient is of the same order as what it measures;
# 3. we compare the loss itself with PyTorch's implementation.

# %%
def with_hand_gradient(loss, grad):
    """Return f(z, y) = loss(z, y) whose backward pass is grad(z, y), not autograd's."""

    class HandGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, y):
            ctx.save_for_backward(z, y)
            return loss(z, y)

        @staticmethod
        def backward(ctx, grad_out):
            z, y = ctx.saved_tensors
            return grad_out * grad(z, y), None

    return HandGradient.apply


def check_gradient(loss, grad, z, y):
    """Assert grad(z, y) == autograd of loss, and == finite differences (gradcheck)."""
    z = z.detach().to(DT).requires_grad_()
    (auto,) = torch.autograd.grad(loss(z, y), z)
    torch.testing.assert_close(grad(z.detach(), y), auto, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(with_hand_gradient(loss, grad), (z, y), eps=1e-6, atol=1e-7)
    return auto


# %% [markdown]
# ## Mean squared error, from a Gaussian likelihood
#
# Suppose the model outputs a prediction $\hat y_i$ and we believe the target is the prediction
# plus Gaussian noise, $y_i \sim \mathcal{N}(\hat y_i, \sigma^2)$ with a fixed $\sigma$. The
# probability density of the observed targets, the **likelihood**, is
# $\prod_i \frac{1}{\sqrt{2\pi}\sigma}\exp\!\big(-\frac{(y_i - \hat y_i)^2}{2\sigma^2}\big)$.
# Training by **maximum likelihood** picks the parameters that make the data most probable;
# equivalently, it minimizes the average negative log-likelihood,
#
# $$
# -\frac1n\sum_{i=1}^n \log p(y_i \mid \hat y_i) = \frac{1}{2\sigma^2}\cdot\frac1n\sum_{i=1}^n (\hat y_i - y_i)^2 + \log(\sqrt{2\pi}\sigma),
# $$
#
# which, up to a positive factor and a constant that do not move the minimum, is the MSE
# $L = \frac1n\sum_i (\hat y_i - y_i)^2$ of {doc}`01_linear_regression` {cite:p}`bishop2006pattern`.
# Its gradient with respect to each prediction is
#
# $$
# \frac{\partial L}{\partial \hat y_i} = \frac{2}{n}(\hat y_i - y_i).
# $$ (eq-mse-grad-pred)
#
# PyTorch's `F.mse_loss` averages over *all* elements by default (`reduction="mean"`); with
# `reduction="sum"` it drops the $\frac1n$, and with `"none"` it returns the per-element squares.

# %%
def mse(pred, target):
    return ((pred - target) ** 2).mean()


def mse_grad(pred, target):
    return 2 / pred.numel() * (pred - target)


pred, target = torch.randn(batch, 3, dtype=DT), torch.randn(batch, 3, dtype=DT)
torch.testing.assert_close(mse(pred, target), F.mse_loss(pred, target))
torch.testing.assert_close(((pred - target) ** 2).sum(), F.mse_loss(pred, target, reduction="sum"))
torch.testing.assert_close((pred - target) ** 2, F.mse_loss(pred, target, reduction="none"))
check_gradient(mse, mse_grad, pred, target)
print("MSE: loss == F.mse_loss, gradient == autograd == finite differences")

# %% [markdown]
# ## Binary cross-entropy, from a Bernoulli likelihood
#
# For a yes/no target $y \in \{0, 1\}$ the model outputs a probability $p = P(y = 1)$, and the
# Bernoulli distribution gives the likelihood of the observed label in one formula:
# $P(y) = p^{y}(1 - p)^{1 - y}$ (which is $p$ when $y = 1$ and $1 - p$ when $y = 0$). The
# negative log-likelihood of one example is the **binary cross-entropy** (BCE)
#
# $$
# \ell(p, y) = -\big[\, y \log p + (1 - y)\log(1 - p) \,\big].
# $$ (eq-bce)
#
# A network does not output a probability directly; its last layer outputs a real number $z$,
# the **logit**, which the **sigmoid** $\sigma(z) = 1/(1 + e^{-z})$ squashes into $(0, 1)$:
# $p = \sigma(z)$. Two facts about the sigmoid do all the work:
#
# $$
# 1 - \sigma(z) = \sigma(-z), \qquad \sigma'(z) = \sigma(z)\big(1 - \sigma(z)\big).
# $$
#
# (The first: $1 - \frac{1}{1+e^{-z}} = \frac{e^{-z}}{1 + e^{-z}} = \frac{1}{e^{z} + 1}$. The
# second: differentiate $(1 + e^{-z})^{-1}$ to get $\frac{e^{-z}}{(1 + e^{-z})^2} = \sigma(z)\sigma(-z)$.)
# Substituting $p = \sigma(z)$ into {eq}`eq-bce` and using $-\log\sigma(z) = \log(1 + e^{-z})$
# and $-\log(1 - \sigma(z)) = \log(1 + e^{z})$:
#
# $$
# \ell(z, y) = y\log(1 + e^{-z}) + (1 - y)\log(1 + e^{z}) = \log(1 + e^{z}) - y z ,
# $$ (eq-bce-logits)
#
# where the last step uses $\log(1 + e^{-z}) = \log(1 + e^{z}) - z$. The function
# $\operatorname{softplus}(z) = \log(1 + e^{z})$ has derivative
# $\frac{e^{z}}{1 + e^{z}} = \sigma(z)$, so
#
# $$
# \frac{\partial \ell}{\partial z} = \sigma(z) - y .
# $$ (eq-bce-grad)
#
# The gradient is the prediction minus the target, bounded in $(-1, 1)$, and largest when the
# model is confidently wrong. Averaged over a batch of $n$ examples, each gradient gets a factor $\frac1n$.
#
# ### Why "with logits" is the stable form
#
# Computing {eq}`eq-bce` literally, first $p = \sigma(z)$ and then $\log(1 - p)$, fails for a
# confident logit: in float32, $\sigma(20)$ rounds to exactly $1$, so $\log(1 - p) = -\infty$.
# Equation {eq}`eq-bce-logits` never forms $p$. It still needs care, since $e^{z}$ overflows for
# $z > 88$ in float32; the standard rewriting is
# $\log(1 + e^{z}) = \max(z, 0) + \log(1 + e^{-|z|})$, whose exponential never exceeds 1
# (`torch.log1p` keeps the small term accurate). This is what
# `F.binary_cross_entropy_with_logits` computes; `F.binary_cross_entropy`, which takes
# probabilities, cannot avoid the problem and clamps the logarithm at $-100$ instead.

# %%
def bce_with_logits(z, y):
    """Mean of (eq-bce-logits), computed stably."""
    return (z.clamp(min=0) - y * z + torch.log1p(torch.exp(-z.abs()))).mean()


def bce_grad(z, y):
    return (torch.sigmoid(z) - y) / z.numel()


z = torch.randn(batch, dtype=DT) * 3
yb = torch.randint(0, 2, (batch,)).to(DT)
torch.testing.assert_close(bce_with_logits(z, yb), F.binary_cross_entropy_with_logits(z, yb))
torch.testing.assert_close(bce_with_logits(z, yb), F.binary_cross_entropy(torch.sigmoid(z), yb))
check_gradient(bce_with_logits, bce_grad, z, yb)

# The naive form breaks on a confident mistake; the stable one gives the exact answer.
z_big = torch.tensor([20.0, 100.0, -100.0])  # float32 logits
y_big = torch.tensor([0.0, 0.0, 1.0])  # all three are confidently wrong
p_big = torch.sigmoid(z_big)
naive = -(y_big * torch.log(p_big) + (1 - y_big) * torch.log(1 - p_big))
stable = torch.stack([bce_with_logits(zi, yi) for zi, yi in zip(z_big, y_big, strict=True)])
exact = torch.tensor([20 + math.log1p(math.exp(-20)), 100.0, 100.0])  # softplus(z) - y z
print("naive BCE:", naive.tolist(), "\nstable BCE:", stable.tolist())
assert torch.isinf(naive).all()
torch.testing.assert_close(stable, exact)
torch.testing.assert_close(F.binary_cross_entropy_with_logits(z_big, y_big, reduction="none"), exact)
glue("s2_2_naive_bce", str(naive[0].item()))

# %% [markdown]
# The naive formula returns {glue}`s2_2_naive_bce` for a logit of 20 with label 0; the true loss
# is $\operatorname{softplus}(20) \approx 20$, which the stable form returns. An infinite loss
# yields an infinite or `nan` gradient, and one such example in a batch destroys the update.
#
# ## Softmax and the log-sum-exp trick
#
# With $K$ classes the last layer outputs a vector of $K$ logits $z \in \mathbb{R}^K$, and the
# **softmax** turns it into a probability distribution:
#
# $$
# \operatorname{softmax}(z)_k = p_k = \frac{e^{z_k}}{\sum_{j=1}^{K} e^{z_j}} .
# $$ (eq-softmax)
#
# Every $p_k$ is positive and they sum to 1. Adding the same constant $c$ to every logit
# changes nothing, because $e^{c}$ cancels between numerator and denominator:
# $\operatorname{softmax}(z - c) = \operatorname{softmax}(z)$. Taken literally,
# {eq}`eq-softmax` overflows: $e^{1000}$ is `inf` in any floating-point format, and
# $\infty/\infty$ is `nan`. Choosing $c = m = \max_j z_j$ makes the largest exponent
# $e^{0} = 1$, so nothing overflows and at least one term of the sum is 1, so nothing
# underflows to $0/0$ either. The logarithm of the denominator, the **log-sum-exp**, gets the
# same treatment:
#
# $$
# \operatorname{LSE}(z) = \log\sum_{j} e^{z_j} = m + \log\sum_j e^{z_j - m},
# $$ (eq-lse)
#
# and the logarithm of a softmax probability is $\log p_k = z_k - \operatorname{LSE}(z)$,
# computed without forming $p_k$ (as $(z_k - m) - \log\sum_j e^{z_j - m}$, which avoids
# subtracting two large, nearly equal numbers).

# %%
def softmax_naive(z):
    return torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)


def logsumexp(z):
    m = z.max(-1, keepdim=True).values
    return (m + torch.log(torch.exp(z - m).sum(-1, keepdim=True))).squeeze(-1)


def log_softmax(z):
    shifted = z - z.max(-1, keepdim=True).values  # largest entry is 0
    return shifted - torch.log(torch.exp(shifted).sum(-1, keepdim=True))


def softmax(z):
    e = torch.exp(z - z.max(-1, keepdim=True).values)  # every entry in (0, 1]
    return e / e.sum(-1, keepdim=True)


big = torch.tensor([1000.0, 1001.0])
e = math.e
expected = torch.tensor([1 / (1 + e), e / (1 + e)])  # = softmax([0, 1])
print("naive softmax([1000, 1001]):", softmax_naive(big).tolist())
print("stable softmax([1000, 1001]):", softmax(big).tolist())
assert torch.isnan(softmax_naive(big)).all()
torch.testing.assert_close(softmax(big), expected)
torch.testing.assert_close(torch.softmax(big, -1), expected)
torch.testing.assert_close(logsumexp(big), torch.tensor(1001 + math.log1p(math.exp(-1))))
zz = torch.randn(batch, classes, dtype=DT) * 4
torch.testing.assert_close(log_softmax(zz), F.log_softmax(zz, dim=-1))
torch.testing.assert_close(logsumexp(zz), torch.logsumexp(zz, dim=-1))
glue("s2_2_naive_softmax", str(softmax_naive(big).tolist()))
glue("s2_2_stable_softmax", "[{:.4f}, {:.4f}]".format(*softmax(big).tolist()))

# %% [markdown]
# The naive softmax of $[1000, 1001]$ is {glue}`s2_2_naive_softmax`; the stable one is
# {glue}`s2_2_stable_softmax`, i.e. $\operatorname{softmax}([0, 1])$, as the shift invariance
# says it must be.
#
# ## Categorical cross-entropy
#
# The likelihood of a label $c \in \{1, \dots, K\}$ under the predicted distribution $p$ is
# $p_c$. Writing the target as a **one-hot** vector $y$ ($y_c = 1$, all other entries 0), or
# more generally as any probability vector over the classes, the negative log-likelihood is
# the **cross-entropy** between $y$ and $p$,
#
# $$
# \ell(z, y) = -\sum_{k=1}^{K} y_k \log p_k = \operatorname{LSE}(z) - \sum_k y_k z_k ,
# $$ (eq-ce)
#
# where the second form follows from {eq}`eq-lse` and $\sum_k y_k = 1$. For a one-hot target
# it is $\operatorname{LSE}(z) - z_c$, which is how `F.cross_entropy` computes it from logits
# and class indices.
#
# ### The gradient with respect to the logits
#
# First the **Jacobian** of the softmax, the matrix of $\partial p_i / \partial z_j$. By the
# quotient rule on {eq}`eq-softmax`, with $S = \sum_j e^{z_j}$ and $\partial S/\partial z_j = e^{z_j}$:
#
# $$
# \frac{\partial p_i}{\partial z_j}
# = \frac{\delta_{ij} e^{z_i} S - e^{z_i} e^{z_j}}{S^2}
# = p_i(\delta_{ij} - p_j),
# $$ (eq-softmax-jacobian)
#
# where $\delta_{ij}$ is 1 if $i = j$ and 0 otherwise; as a matrix,
# $J = \operatorname{diag}(p) - p\,p^\top$. Now the chain rule through
# $\ell = -\sum_i y_i \log p_i$, with $\partial \log p_i / \partial z_j = (\delta_{ij} - p_j)$:
#
# $$
# \frac{\partial \ell}{\partial z_j}
# = -\sum_{i} y_i (\delta_{ij} - p_j)
# = -y_j + p_j \sum_i y_i
# = p_j - y_j .
# $$
#
# So, for one example,
#
# $$
# \nabla_z \ell = \operatorname{softmax}(z) - y ,
# $$ (eq-ce-grad)
#
# the same "prediction minus target" as {eq}`eq-bce-grad` and {eq}`eq-mse-grad-pred`. (The
# same result follows from the second form of {eq}`eq-ce` in one line, since
# $\partial \operatorname{LSE}/\partial z_j = p_j$.) With `reduction="mean"` over a batch of $n$
# examples, each row of the gradient is divided by $n$.
#
# We check the Jacobian {eq}`eq-softmax-jacobian` against `torch.autograd.functional.jacobian`,
# the backward pass it implies ($J^\top v = p \odot (v - p^\top v)$, since $J$ is symmetric)
# against finite differences, and the loss and gradient {eq}`eq-ce-grad` as before.

# %%
zv = torch.randn(classes, dtype=DT)
p = softmax(zv)
J_hand = torch.diag(p) - torch.outer(p, p)
torch.testing.assert_close(J_hand, torch.autograd.functional.jacobian(softmax, zv))


class Softmax(torch.autograd.Function):
    """Softmax over the last dimension with the hand-derived backward pass J^T v."""

    @staticmethod
    def forward(ctx, z):
        p = softmax(z)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, v):
        (p,) = ctx.saved_tensors
        return p * (v - (v * p).sum(-1, keepdim=True))


assert torch.autograd.gradcheck(Softmax.apply, (zz.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


def cross_entropy(z, target_probs):
    """Mean over the batch of (eq-ce); z (n, K) logits, target_probs (n, K) rows summing to 1."""
    return -(target_probs * log_softmax(z)).sum(-1).mean()  # -sum_k q_k log p_k, log p_k computed stably


def cross_entropy_grad(z, target_probs):
    return (softmax(z) - target_probs) / z.shape[0]


labels = torch.randint(0, classes, (batch,))
onehot = F.one_hot(labels, classes).to(DT)
torch.testing.assert_close(cross_entropy(zz, onehot), F.cross_entropy(zz, labels))
torch.testing.assert_close(cross_entropy(zz, onehot) * batch, F.cross_entropy(zz, labels, reduction="sum"))
torch.testing.assert_close(logsumexp(zz) - zz.gather(1, labels[:, None]).squeeze(1),
                           F.cross_entropy(zz, labels, reduction="none"))
grad_ce = check_gradient(cross_entropy, cross_entropy_grad, zz, onehot)
torch.testing.assert_close(grad_ce.sum(-1), torch.zeros(batch, dtype=DT))  # each row sums to 0
print("cross-entropy: loss == F.cross_entropy, gradient softmax(z) - y == autograd == finite differences")

# %% [markdown]
# ### Soft targets and label smoothing
#
# Equation {eq}`eq-ce` never needed $y$ to be one-hot. **Label smoothing**
# {cite:p}`szegedy2016rethinking` trains against the mixture $q = (1 - \varepsilon)\,y +
# \varepsilon/K$ of the one-hot target and the uniform distribution, so that the model is not
# pushed to make its logits ever larger to reach $p_c = 1$. By {eq}`eq-ce-grad` the gradient is
# $\operatorname{softmax}(z) - q$, which vanishes at $p = q$, at finite logits.
# `F.cross_entropy(..., label_smoothing=ε)` is exactly our loss with target $q$, and
# `F.cross_entropy` also accepts probability targets directly.

# %%
eps = 0.1
q = (1 - eps) * onehot + eps / classes
torch.testing.assert_close(cross_entropy(zz, q), F.cross_entropy(zz, labels, label_smoothing=eps))
torch.testing.assert_close(cross_entropy(zz, q), F.cross_entropy(zz, q))  # probability targets
check_gradient(cross_entropy, cross_entropy_grad, zz, q)
# overflow-safe: logits far beyond exp's range give the exact answer
z_huge = torch.tensor([[1000.0, 1001.0, -1000.0]])
torch.testing.assert_close(F.cross_entropy(z_huge, torch.tensor([0])), torch.tensor(1 + math.log1p(math.exp(-1))))
torch.testing.assert_close(cross_entropy(z_huge, torch.tensor([[1.0, 0.0, 0.0]])), F.cross_entropy(z_huge, torch.tensor([0])))

# %% [markdown]
# ## Why cross-entropy for classification
#
# One could train a classifier with the squared error between the predicted probability and the
# one-hot target instead. Consider one example of class $c$ with predicted probability
# $p = p_c$ for the true class, in the binary case $p = \sigma(z)$. The two losses are
#
# $$
# \ell_{\mathrm{CE}} = -\log p, \qquad \ell_{\mathrm{SE}} = (1 - p)^2 ,
# $$
#
# and their derivatives with respect to the logit $z$ (by $\sigma' = \sigma(1 - \sigma)$) are
#
# $$
# \frac{\partial \ell_{\mathrm{CE}}}{\partial z} = p - 1, \qquad
# \frac{\partial \ell_{\mathrm{SE}}}{\partial z} = -2(1 - p)\,p\,(1 - p) = -2p(1 - p)^2 .
# $$
#
# When the model is confidently wrong ($p \to 0$), cross-entropy grows without bound and its
# gradient tends to $-1$, the strongest push it ever gives. The squared error stays below 1,
# and its gradient tends to **zero**, because the sigmoid is flat there: the model learns least
# from the examples it gets most wrong.

# %%
pp = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=DT)
zt = torch.logit(pp).requires_grad_()
ce_loss = -F.logsigmoid(zt)  # -log sigma(z), label 1
se_loss = (1 - torch.sigmoid(zt)) ** 2
(g_ce,) = torch.autograd.grad(ce_loss.sum(), zt)
(g_se,) = torch.autograd.grad(se_loss.sum(), zt)
torch.testing.assert_close(g_ce, pp - 1)
torch.testing.assert_close(g_se, -2 * pp * (1 - pp) ** 2)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(pp, ce_loss.detach(), label=r"cross-entropy $-\log p$")
ax1.plot(pp, se_loss.detach(), label=r"squared error $(1-p)^2$")
ax1.set(xlabel="predicted probability $p$ of the true class", ylabel="loss", title="Loss of one example", ylim=(0, 7))
ax1.legend()
ax2.plot(pp, g_ce.abs(), label=r"cross-entropy: $|p - 1|$")
ax2.plot(pp, g_se.abs(), label=r"squared error: $2p(1-p)^2$")
ax2.set(xlabel="predicted probability $p$ of the true class", ylabel=r"$|\partial \ell / \partial z|$",
        title="Size of the gradient with respect to the logit")
ax2.legend()
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

i = 0  # p = 0.001: a confident mistake
glue("s2_2_ce_at_1e3", ce_loss[i].item(), ".2f")
glue("s2_2_se_at_1e3", se_loss[i].item(), ".3f")
glue("s2_2_gce_at_1e3", g_ce[i].abs().item(), ".3f")
glue("s2_2_gse_at_1e3", g_se[i].abs().item(), ".4f")
assert ce_loss[i] > 6.9 and se_loss[i] < 1
assert g_ce[i].abs() > 200 * g_se[i].abs()

# %% [markdown]
# At $p = 0.001$ the cross-entropy is {glue}`s2_2_ce_at_1e3` against a squared error of
# {glue}`s2_2_se_at_1e3`, and the gradient with respect to the logit is
# {glue}`s2_2_gce_at_1e3` against {glue}`s2_2_gse_at_1e3`, five hundred times weaker. Both
# losses are minimized, in expectation over the labels, by predicting the true class
# probabilities; they differ in how hard they push when the prediction is far from them, and
# cross-entropy is in addition the maximum-likelihood loss of the categorical model.
#
# ## Summary
#
# * MSE, binary and categorical cross-entropy are negative log-likelihoods of a Gaussian,
#   a Bernoulli and a categorical model of the target.
# * With respect to the model's raw output, all three have the gradient "prediction minus
#   target": $\frac2n(\hat y - y)$, $\sigma(z) - y$ and $\operatorname{softmax}(z) - y$ (per
#   example, before averaging).
# * The softmax Jacobian is $\operatorname{diag}(p) - pp^\top$.
# * Compute losses from logits: $\log(1 + e^{z}) = \max(z, 0) + \log(1 + e^{-|z|})$ and
#   $\operatorname{LSE}(z) = m + \log\sum_j e^{z_j - m}$ never overflow. In PyTorch, use
#   `F.binary_cross_entropy_with_logits` and `F.cross_entropy` on logits, never
#   `log(softmax(z))` or `sigmoid` followed by `F.binary_cross_entropy`.
# * Cross-entropy punishes confident mistakes hard and keeps a strong gradient for them; squared
#   error on probabilities does neither.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-2-2-1
# ```
# Show that binary cross-entropy with logit $z$ is categorical cross-entropy with the two logits
# $(0, z)$, and check it with `F.cross_entropy`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-2-1
# :class: dropdown
# ```
# $\operatorname{softmax}(0, z)_2 = \frac{e^{z}}{1 + e^{z}} = \sigma(z)$ and
# $\operatorname{softmax}(0, z)_1 = 1 - \sigma(z)$, so the two models give the same probabilities
# and the same negative log-likelihood. A sigmoid output is a two-class softmax with one logit
# pinned at zero.

# %%
zb = torch.randn(batch, dtype=DT) * 3
yl = torch.randint(0, 2, (batch,))
two_logits = torch.stack([torch.zeros_like(zb), zb], dim=1)
torch.testing.assert_close(F.cross_entropy(two_logits, yl), F.binary_cross_entropy_with_logits(zb, yl.to(DT)))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-2-2
# ```
# Why does each row of the gradient $\operatorname{softmax}(z) - y$ sum to zero? Relate it to
# the shift invariance of the softmax.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-2-2
# :class: dropdown
# ```
# Both $p$ and $y$ sum to 1, so $\sum_j (p_j - y_j) = 0$. Equivalently: adding $c$ to every
# logit does not change the loss, so the derivative of the loss along the direction
# $(1, \dots, 1)$ is zero, and that derivative is exactly the sum of the gradient's entries.
# The same holds for the softmax Jacobian: $J\mathbf{1} = p - p(p^\top\mathbf{1}) = 0$.

# %%
torch.testing.assert_close(J_hand @ torch.ones(classes, dtype=DT), torch.zeros(classes, dtype=DT))
shift = 7.3
torch.testing.assert_close(F.cross_entropy(zz + shift, labels), F.cross_entropy(zz, labels))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-2-3
# ```
# Compute `torch.log(torch.softmax(z, -1))` and `F.log_softmax(z, -1)` for
# $z = (0, -200)$ in float32. Explain the difference.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-2-3
# :class: dropdown
# ```
# $p_2 = e^{-200}/(1 + e^{-200}) \approx e^{-200} \approx 10^{-87}$, below the smallest positive
# float32 (about $10^{-45}$), so the softmax rounds it to 0 and its logarithm is $-\infty$. The
# log-softmax computes $z_2 - \operatorname{LSE}(z) = -200 - \log(1 + e^{-200}) \approx -200$
# directly and never forms the tiny probability. A cross-entropy built from `log(softmax(z))`
# would return `inf` for such an example.

# %%
zs = torch.tensor([0.0, -200.0])
print(torch.log(torch.softmax(zs, -1)), F.log_softmax(zs, -1))
assert torch.isinf(torch.log(torch.softmax(zs, -1))[1])
torch.testing.assert_close(F.log_softmax(zs, -1), torch.tensor([0.0, -200.0]))
torch.testing.assert_close(log_softmax(zs), F.log_softmax(zs, -1))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-2-2-4
# ```
# With label smoothing $\varepsilon$ and $K$ classes, find the logits that minimize the loss for
# an example of class $c$, the gap $z_c - z_k$ between the true class and any other, and the
# minimal value of the loss. Check them with `F.cross_entropy`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-2-2-4
# :class: dropdown
# ```
# The gradient $\operatorname{softmax}(z) - q$ vanishes where $p = q$, e.g. at $z = \log q$
# (any shift of it is equivalent). The gap is
# $z_c - z_k = \log\frac{1 - \varepsilon + \varepsilon/K}{\varepsilon/K}$, finite, whereas
# without smoothing the loss only approaches its infimum 0 as the gap goes to infinity. At the
# minimum the loss equals $-\sum_k q_k \log q_k$, the entropy of $q$, and not 0.

# %%
K, c = classes, 2
target_q = torch.full((K,), eps / K, dtype=DT)
target_q[c] += 1 - eps
z_opt = torch.log(target_q).requires_grad_()
loss_opt = F.cross_entropy(z_opt[None], torch.tensor([c]), label_smoothing=eps)
loss_opt.backward()
gap = math.log((1 - eps + eps / K) / (eps / K))
print(f"gap {gap:.3f}, minimal loss {loss_opt.item():.4f}, gradient norm {z_opt.grad.norm():.1e}")
torch.testing.assert_close(z_opt.grad, torch.zeros(K, dtype=DT), atol=1e-12, rtol=0)
torch.testing.assert_close((z_opt[c] - z_opt[0]).item(), gap)
torch.testing.assert_close(loss_opt, -(target_q * torch.log(target_q)).sum())
assert F.cross_entropy((z_opt.detach() * 1.5)[None], torch.tensor([c]), label_smoothing=eps) > loss_opt

# %% [markdown]
# ```{solution-end}
# ```
