# %% [markdown]
# # Convolutions
#
# A grey image of $28 \times 28$ pixels is a vector of 784 numbers, and the MLP of
# {doc}`../01_basics/03_mlp` treats it as one: every hidden unit has its own weight for every
# pixel. That ignores two facts about images. Nearby pixels belong together (an edge is a
# property of a small neighbourhood), and a pattern means the same thing wherever it sits (a
# stroke is a stroke in the top left corner and in the centre). A *convolution* builds both
# facts into the layer: each output looks only at a small window of the input, and every window
# is weighed with the *same* small kernel. The result has far fewer parameters than a dense
# layer and shifts along with its input. Convolutional networks trained with back-propagation
# read handwritten digits and cheques in the 1990s {cite:p}`lecun1998gradient` and are still
# the backbone of most vision models.
#
# This section defines the operation precisely, writes it twice by hand (with loops, and as a
# matrix product) and checks both against PyTorch, applies hand-made kernels to a photograph,
# and derives the sizes and receptive fields that later sections rely on.

# %%

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import signal
from sklearn.datasets import load_sample_images
from torch import nn
from torch.nn import functional as F

from dlbook import checks_enabled, pick, seed_everything
from dlbook.bench import seconds_per_call
from dlbook.book import glue
from dlbook.nn.cnn import out_size as library_out_size  # LeNet's sizes use it

seed_everything(0)
torch.set_default_dtype(torch.float64)  # exact comparisons; the layers work the same in float32

# %% [markdown]
# ## Convolution and cross-correlation
#
# For two sequences $x$ and $w$, the discrete **convolution** is
#
# $$
# (x * w)[i] = \sum_{m} x[m]\, w[i - m],
# $$ (eq-conv1d)
#
# the sum running over every $m$ where both factors are defined. The kernel is read
# *backwards* as it slides over $x$. The **cross-correlation** reads it forwards:
#
# $$
# (x \star w)[i] = \sum_{m=0}^{k-1} x[i + m]\, w[m],
# $$ (eq-xcorr1d)
#
# for a kernel of length $k$. In two dimensions, with an image $X$ and a $k_h \times k_w$
# kernel $K$, the "valid" cross-correlation (only windows that lie inside the image) is
#
# $$
# (X \star K)[i, j] = \sum_{a=0}^{k_h-1} \sum_{b=0}^{k_w-1} X[i + a,\, j + b]\, K[a, b].
# $$ (eq-xcorr2d)
#
# Substituting $a' = k_h - 1 - a$, $b' = k_w - 1 - b$ in the convolution sum shows that a
# convolution is a cross-correlation with the kernel flipped in both directions,
# $X * K = X \star \operatorname{flip}(K)$ with
# $\operatorname{flip}(K)[a, b] = K[k_h - 1 - a,\, k_w - 1 - b]$.
#
# **The "convolution" layers of deep-learning libraries compute cross-correlation**
# {eq}`eq-xcorr2d`, without the flip. Since the kernel is learnt, the difference does not
# matter: a network that needed the flipped kernel simply learns it. It matters only when a
# kernel is designed by hand, as in the filters below, or when results are compared with
# signal-processing code. Let us check all of this against NumPy and SciPy, which implement
# the textbook definitions.

# %%
x1 = torch.randn(12)
w1 = torch.randn(4)
k = len(w1)
conv_hand = torch.stack(
    [
        sum(x1[m] * w1[i - m] for m in range(len(x1)) if 0 <= i - m < k)
        for i in range(len(x1) + k - 1)
    ]
)
xcorr_hand = torch.stack([sum(x1[i + m] * w1[m] for m in range(k)) for i in range(len(x1) - k + 1)])
assert np.allclose(conv_hand, np.convolve(x1, w1, mode="full"))  # eq-conv1d
assert np.allclose(xcorr_hand, np.correlate(x1, w1, mode="valid"))  # eq-xcorr1d
# PyTorch's conv1d is the cross-correlation; with the flipped kernel it is the convolution.
torch_1d = F.conv1d(x1.view(1, 1, -1), w1.view(1, 1, -1)).flatten()
assert torch.allclose(torch_1d, xcorr_hand)
assert np.allclose(F.conv1d(x1.view(1, 1, -1), w1.flip(0).view(1, 1, -1)).flatten(),
                   np.convolve(x1, w1, mode="valid"))

X = torch.randn(9, 11)
K = torch.randn(3, 4)
torch_2d = F.conv2d(X[None, None], K[None, None])[0, 0]
assert np.allclose(torch_2d, signal.correlate2d(X, K, mode="valid"))  # eq-xcorr2d
assert np.allclose(F.conv2d(X[None, None], K.flip(0, 1)[None, None])[0, 0],
                   signal.convolve2d(X, K, mode="valid"))  # X * K = X ⋆ flip(K)
assert not np.allclose(torch_2d, signal.convolve2d(X, K, mode="valid"))  # the flip matters
print("F.conv2d == scipy.signal.correlate2d; with the flipped kernel == convolve2d")

# %% [markdown]
# ## The convolution layer
#
# A layer works on a batch of images with several channels (three colours, or the many
# feature maps of a previous layer). Its input is a tensor $X$ of shape
# $(N, C_\text{in}, H, W)$, its weight $W$ has shape $(C_\text{out}, C_\text{in}, k_h, k_w)$
# (one $C_\text{in} \times k_h \times k_w$ kernel per output channel) and its bias $b$ has
# $C_\text{out}$ entries. Three settings change where the windows are taken:
#
# * **padding** $p$: the input is surrounded by $p$ rows and columns of zeros, giving
#   $X_p$, so that windows can be centred on border pixels;
# * **stride** $s$: the window moves $s$ pixels at a time, so the output is about $s$ times
#   smaller;
# * **dilation** $d$: the kernel taps are $d$ pixels apart, so a $3 \times 3$ kernel with
#   $d = 2$ spans a $5 \times 5$ window with holes.
#
# The layer computes
#
# $$
# Y[n, o, i, j] = b_o + \sum_{c=0}^{C_\text{in}-1} \sum_{a=0}^{k_h-1} \sum_{b=0}^{k_w-1}
#   W[o, c, a, b]\; X_p[n,\, c,\, s\,i + d\,a,\, s\,j + d\,b].
# $$ (eq-conv-layer)
#
# **Output size.** Along one axis of length $n$ the window at output position $i$ starts at
# $s\,i$ and its last tap sits at $s\,i + d(k-1)$. It must stay inside the padded length
# $n + 2p$, so $s\,i + d(k-1) \le n + 2p - 1$, and the largest valid $i$ is
# $\lfloor (n + 2p - d(k-1) - 1)/s \rfloor$. Counting from $i = 0$,
#
# $$
# n_\text{out} = \left\lfloor \frac{n + 2p - d(k-1) - 1}{s} \right\rfloor + 1 .
# $$ (eq-out-size)
#
# With $s = d = 1$ and $p = (k-1)/2$ for odd $k$ this gives $n_\text{out} = n$ ("same"
# padding). We check the formula against `F.conv2d` on a grid of settings.

# %%
def out_size(n: int, k: int, p: int = 0, s: int = 1, d: int = 1) -> int:
    """Length of a convolution's output along one axis, eq-out-size."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


assert out_size(28, 5, p=2) == library_out_size(28, 5, p=2) == 28  # the library's, same rule
n_checked = 0
for n in (5, 8, 13, 28):
    for k in (1, 2, 3, 5):
        for p in (0, 1, 2):
            for s in (1, 2, 3):
                for d in (1, 2, 3):
                    if n + 2 * p < d * (k - 1) + 1:
                        continue  # the kernel does not fit even once
                    y = F.conv2d(torch.zeros(1, 1, n, n + 3), torch.zeros(1, 1, k, k),
                                 stride=s, padding=p, dilation=d)
                    assert y.shape[-2:] == (out_size(n, k, p, s, d), out_size(n + 3, k, p, s, d))
                    assert out_size(n, k, p, s, d) == library_out_size(n, k, p, s, d)
                    n_checked += 1
glue("s3_1_n_size_checks", n_checked)
print(f"output-size formula matches F.conv2d for {n_checked} settings")

# %% [markdown]
# The formula held for all {glue}`s3_1_n_size_checks` settings of input size, kernel size,
# padding, stride and dilation, on non-square inputs.
#
# ### A convolution with loops
#
# The most direct implementation of {eq}`eq-conv-layer` loops over the output positions and,
# at each, multiplies a window of the padded input with the kernel. Slicing with a step of
# $d$ picks the dilated taps.

# %%
def conv2d_loops(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """eq-conv-layer with explicit loops. x (N, C_in, H, W), weight (C_out, C_in, kh, kw)."""
    n_batch, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    s, d = stride, dilation
    xp = F.pad(x, (padding, padding, padding, padding))  # zeros around H and W
    oh, ow = out_size(h, kh, padding, s, d), out_size(w, kw, padding, s, d)
    rows = []
    for nb in range(n_batch):
        for o in range(c_out):
            for i in range(oh):
                for j in range(ow):
                    window = xp[nb, :, s * i : s * i + d * (kh - 1) + 1 : d,
                                s * j : s * j + d * (kw - 1) + 1 : d]  # (C_in, kh, kw)
                    value = (window * weight[o]).sum()
                    rows.append(value + (bias[o] if bias is not None else 0.0))
    return torch.stack(rows).view(n_batch, c_out, oh, ow)


def parity(fn, ref, x, weight, bias, **kw):
    """Largest output and gradient differences between fn and ref on the same inputs."""
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    others = [t.clone().requires_grad_() for t in (x, weight, bias)]
    y1, y2 = fn(*leaves, **kw), ref(*others, **kw)
    g = torch.randn_like(y1)  # a random upstream gradient tests every output
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    grads = [(a.grad - b.grad).abs().max().item() for a, b in zip(leaves, others, strict=True)]
    return (y1 - y2).abs().max().item(), max(grads)


x = torch.randn(2, 3, 9, 10)
weight = torch.randn(4, 3, 3, 3)
bias = torch.randn(4)
for settings in ({}, {"padding": 1}, {"stride": 2, "padding": 1}, {"dilation": 2, "padding": 2}):
    err_out, err_grad = parity(conv2d_loops, F.conv2d, x, weight, bias, **settings)
    assert err_out < 1e-10 and err_grad < 1e-10, settings
    print(f"loops vs F.conv2d {settings}: output err {err_out:.1e}, gradient err {err_grad:.1e}")

# %% [markdown]
# The outputs *and* the gradients with respect to input, weight and bias agree to round-off.
# But four nested Python loops are slow. The standard fix is to turn the convolution into one
# matrix product.
#
# ### A convolution as a matrix product (im2col)
#
# Collect every window of the padded input as a column: for output position $(i, j)$ the
# column holds the $C_\text{in} k_h k_w$ numbers $X_p[n, c, s i + d a, s j + d b]$. This
# "image to columns" step (*im2col*) gives, per image, a matrix $U$ of shape
# $(C_\text{in} k_h k_w,\ n_\text{out,h}\, n_\text{out,w})$. Reshaping the weight to a
# $(C_\text{out},\ C_\text{in} k_h k_w)$ matrix $\bar W$ turns {eq}`eq-conv-layer` into
#
# $$
# Y = \bar W\, U + b \mathbf{1}^\top ,
# $$ (eq-im2col)
#
# a single matrix product that BLAS libraries run fast. PyTorch's `F.unfold` performs the
# im2col step (with the same padding, stride and dilation arguments).

# %%
def conv2d_unfold(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """eq-im2col. x (N, C_in, H, W), weight (C_out, C_in, kh, kw) -> (N, C_out, oh, ow)."""
    n_batch, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    y = weight.view(c_out, -1) @ cols  # (C_out, C_in*kh*kw) @ (N, C_in*kh*kw, L) -> (N, C_out, L)
    if bias is not None:
        y = y + bias.view(1, c_out, 1)
    oh = out_size(h, kh, padding, stride, dilation)
    ow = out_size(w, kw, padding, stride, dilation)
    return y.view(n_batch, c_out, oh, ow)


gen = torch.Generator().manual_seed(1)
worst = 0.0
for _ in range(pick(smoke=5, book=40)):
    c_in, c_out = (int(v) for v in torch.randint(1, 5, (2,), generator=gen))
    kh, kw = (int(v) for v in torch.randint(1, 5, (2,), generator=gen))
    s, d, p = (int(v) for v in torch.randint(1, 4, (3,), generator=gen))
    h, w = d * (max(kh, kw) - 1) + 1 + int(torch.randint(0, 8, (1,), generator=gen)), 12
    xt = torch.randn(3, c_in, h, w, generator=gen)
    wt, bt = torch.randn(c_out, c_in, kh, kw, generator=gen), torch.randn(c_out, generator=gen)
    errs = parity(conv2d_unfold, F.conv2d, xt, wt, bt, stride=s, padding=p - 1, dilation=d)
    worst = max(worst, *errs)
assert worst < 1e-10
print(f"unfold conv vs F.conv2d on random settings: worst output/gradient error {worst:.1e}")

# %% [markdown]
# On random channel counts, kernel shapes, strides, paddings and dilations, the im2col
# version agrees with `F.conv2d` in outputs and gradients. A layer is the same function with
# its weight and bias as parameters. We write one, copy the weights of PyTorch's `nn.Conv2d`
# into it and compare once more, now in float32, the precision networks train in, and time
# the three implementations.

# %%
class Conv2dFromScratch(nn.Module):
    """A convolution layer on top of conv2d_unfold; same parameters as nn.Conv2d."""

    def __init__(self, c_in, c_out, k, stride=1, padding=0, dilation=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k) / (c_in * k * k) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.settings = {"stride": stride, "padding": padding, "dilation": dilation}

    def forward(self, x):
        return conv2d_unfold(x, self.weight, self.bias, **self.settings)


torch.set_default_dtype(torch.float32)
ours = Conv2dFromScratch(3, 8, 3, stride=2, padding=1)
theirs = nn.Conv2d(3, 8, 3, stride=2, padding=1)
with torch.no_grad():
    ours.weight.copy_(theirs.weight)
    ours.bias.copy_(theirs.bias)
xb = torch.randn(4, 3, 32, 32, requires_grad=True)
xb2 = xb.detach().clone().requires_grad_()
y_ours, y_theirs = ours(xb), theirs(xb2)
g = torch.randn_like(y_ours)
(y_ours * g).sum().backward()
(y_theirs * g).sum().backward()
assert torch.allclose(y_ours, y_theirs, atol=1e-5)
assert torch.allclose(xb.grad, xb2.grad, atol=1e-5)
assert torch.allclose(ours.weight.grad, theirs.weight.grad, atol=1e-4)
assert torch.allclose(ours.bias.grad, theirs.bias.grad, atol=1e-4)


xs, ws, bs = torch.randn(1, 3, 16, 16), torch.randn(8, 3, 3, 3), torch.randn(8)
threads = torch.get_num_threads()
torch.set_num_threads(1)  # time the algorithms, not the scheduling of threads on tiny inputs
with torch.no_grad():
    t_loops = seconds_per_call(
        lambda: conv2d_loops(xs, ws, bs, padding=1), repeats=1, warmup=0, stat="min"
    )
    t_unfold = seconds_per_call(
        lambda: conv2d_unfold(xs, ws, bs, padding=1), repeats=25, warmup=0, stat="min"
    )
    t_torch = seconds_per_call(
        lambda: F.conv2d(xs, ws, bs, padding=1), repeats=25, warmup=0, stat="min"
    )
torch.set_num_threads(threads)
glue("s3_1_t_loops", 1e3 * t_loops, ".0f")
glue("s3_1_t_unfold", 1e6 * t_unfold, ".0f")
glue("s3_1_t_torch", 1e6 * t_torch, ".0f")
if checks_enabled():
    assert t_unfold < t_loops / 10
print(f"loops {1e3 * t_loops:.0f} ms, unfold {1e6 * t_unfold:.0f} µs, F.conv2d {1e6 * t_torch:.0f} µs")

# %% [markdown]
# The from-scratch layer and `nn.Conv2d` agree in outputs and in the gradients of the
# input, weight and bias. On one $3 \times 16 \times 16$ image with 8 output channels the loop
# version took {glue}`s3_1_t_loops` ms, the im2col version {glue}`s3_1_t_unfold` µs and
# `F.conv2d` {glue}`s3_1_t_torch` µs (best of 25 runs on one CPU thread of the machine that
# built this page).
# PyTorch's CPU convolution also reshapes the problem into matrix products, with more care
# for memory layout; on a GPU cuDNN picks among several algorithms.
#
# **Parameters.** A layer has $C_\text{out} C_\text{in} k_h k_w + C_\text{out}$ parameters,
# independent of the image size. A dense layer that maps the same input to the same output
# needs one weight per (input value, output value) pair.

# %%
def conv_params(c_in: int, c_out: int, kh: int, kw: int, bias: bool = True) -> int:
    return c_out * c_in * kh * kw + (c_out if bias else 0)


for c_in, c_out, kk in ((1, 6, 5), (3, 64, 3), (64, 128, 3), (16, 32, 1)):
    layer = nn.Conv2d(c_in, c_out, kk)
    assert sum(t.numel() for t in layer.parameters()) == conv_params(c_in, c_out, kk, kk)
n_conv = conv_params(1, 6, 5, 5)
n_dense = (1 * 28 * 28) * (6 * 28 * 28) + 6 * 28 * 28  # same input and output sizes, "same" padding
glue("s3_1_conv_params", n_conv, ",")
glue("s3_1_dense_params", n_dense, ",")
print(n_conv, n_dense)

# %% [markdown]
# The first layer of LeNet, six $5 \times 5$ kernels, has {glue}`s3_1_conv_params` parameters
# whatever the image size (LeNet-5 applies it to a $32 \times 32$ image; here we take a
# $28 \times 28$ image with "same" padding); a dense layer from the 784 pixels to the same
# $6 \times 28 \times 28$ outputs would have {glue}`s3_1_dense_params`.
#
# ## Hand-made filters on a photograph
#
# Before kernels were learnt, they were designed. Three classics, applied as the
# cross-correlation {eq}`eq-xcorr2d` with "same" padding:
#
# * **Sobel** kernels estimate the horizontal and vertical derivatives of brightness,
#   $G_x = \begin{pmatrix} -1 & 0 & 1 \\ -2 & 0 & 2 \\ -1 & 0 & 1 \end{pmatrix}$ and
#   $G_y = G_x^\top$; the *edge magnitude* is $\sqrt{(X \star G_x)^2 + (X \star G_y)^2}$.
#   Each Sobel kernel sums to zero, so flat regions map to zero.
# * A **Gaussian blur** averages a neighbourhood with weights
#   $K[a, b] \propto \exp(-(a^2 + b^2) / 2\sigma^2)$ for $a, b$ measured from the centre,
#   normalised to sum to one so that brightness is kept.
# * **Sharpening**, $\begin{pmatrix} 0 & -1 & 0 \\ -1 & 5 & -1 \\ 0 & -1 & 0 \end{pmatrix}$,
#   adds to each pixel its difference from its four neighbours (the negative discrete
#   Laplacian), which makes edges steeper. It also sums to one.
#
# The photo is `china.jpg`, which scikit-learn ships with its sample images, turned grey with
# the usual luma weights $0.299 R + 0.587 G + 0.114 B$.

# %%
photo = load_sample_images().images[0]  # china.jpg, (427, 640, 3) uint8
grey = torch.from_numpy(photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
grey = (grey / 255.0)[None, None]  # (1, 1, 427, 640) in [0, 1]

sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
sobel_y = sobel_x.T
r = torch.arange(-3, 4, dtype=torch.float32)
gauss = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
gauss = gauss / gauss.sum()
sharpen = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]])


def apply(img, kernel):
    """Cross-correlate a (1, 1, H, W) image with a 2-D kernel, 'same' size (edge replicated)."""
    kh, kw = kernel.shape
    padded = F.pad(img, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    return F.conv2d(padded, kernel[None, None])


gx, gy = apply(grey, sobel_x), apply(grey, sobel_y)
edges = torch.sqrt(gx**2 + gy**2)
blurred, sharpened = apply(grey, gauss), apply(grey, sharpen)
laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def detail(img):
    """Mean squared Laplacian response: how much fine detail an image has."""
    return apply(img, laplacian).pow(2).mean().item()


flat = torch.full((1, 1, 20, 20), 0.7)
assert apply(flat, sobel_x).abs().max() < 1e-6 and apply(flat, sobel_y).abs().max() < 1e-6
assert torch.allclose(apply(flat, gauss), flat) and torch.allclose(apply(flat, sharpen), flat)
assert abs(blurred.mean() - grey.mean()) < 1e-3  # brightness is kept
assert detail(blurred) < detail(grey) < detail(sharpened)
glue("s3_1_detail_blur", detail(blurred) / detail(grey), ".1%")
glue("s3_1_detail_sharp", detail(sharpened) / detail(grey), ".1f")

fig, axes = plt.subplots(2, 3, figsize=(12, 6.2))
shown = [(grey, "grey photo"), (gx, "Sobel $G_x$ (vertical edges)"),
         (gy, "Sobel $G_y$ (horizontal edges)"), (edges, "edge magnitude"),
         (blurred, r"Gaussian blur, $\sigma = 1.5$"), (sharpened, "sharpened")]
for ax, (img, title) in zip(axes.flat, shown, strict=True):
    a = img[0, 0].numpy()
    if title.startswith("Sobel"):
        lim = np.abs(a).max() / 2
        ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim)
    else:
        ax.imshow(a, cmap="gray", vmin=0, vmax=a.max() if title == "edge magnitude" else 1)
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# The Sobel responses are signed: red where brightness grows to the right (or downwards),
# blue where it falls; their magnitude outlines the pagoda and the tree branches. Measured by
# the mean squared Laplacian, blurring leaves {glue}`s3_1_detail_blur` of the photo's fine
# detail and sharpening multiplies it by {glue}`s3_1_detail_sharp`. A convolutional network
# learns kernels like these (and many that no one would design) from data; the next section
# shows what its first layer learns.
#
# ## Pooling
#
# A *pooling* layer summarises each window of each channel by one number, with no
# parameters. **Max pooling** keeps the largest value and **average pooling** the mean:
#
# $$
# \begin{aligned}
# Y_\text{max}[n, c, i, j] &= \max_{0 \le a, b < k} X_p[n, c, s i + a, s j + b], \\
# Y_\text{avg}[n, c, i, j] &= \frac{1}{k^2} \sum_{a, b = 0}^{k-1} X_p[n, c, s i + a, s j + b].
# \end{aligned}
# $$ (eq-pool)
#
# The output size is again {eq}`eq-out-size`. With $k = s = 2$, pooling halves the
# resolution, so later layers see a larger part of the image for the same cost, and small
# shifts of a feature inside a window do not change a max-pooled output. For max pooling,
# PyTorch pads with $-\infty$ (padding never wins); for average pooling it pads with zeros
# and, by default, still divides by $k^2$. Both are im2col followed by a reduction over each
# column, one channel at a time.

# %%
def pool2d(x, k, stride=None, padding=0, op="max"):
    """eq-pool. x (N, C, H, W) -> (N, C, oh, ow)."""
    stride = stride or k
    n_batch, c, h, w = x.shape
    fill = -torch.inf if op == "max" else 0.0
    xp = F.pad(x, (padding,) * 4, value=fill).reshape(n_batch * c, 1, h + 2 * padding, -1)
    cols = F.unfold(xp, k, stride=stride)  # (N*C, k*k, L)
    y = cols.amax(dim=1) if op == "max" else cols.mean(dim=1)
    return y.view(n_batch, c, out_size(h, k, padding, stride), out_size(w, k, padding, stride))


xq = torch.randn(2, 3, 11, 12, requires_grad=True)
for k, s, p in ((2, 2, 0), (3, 2, 1), (3, 1, 1), (4, 3, 2)):
    for op, ref in (("max", F.max_pool2d), ("avg", F.avg_pool2d)):
        ours_y = pool2d(xq, k, s, p, op)
        theirs_y = ref(xq, k, s, p)
        assert torch.allclose(ours_y, theirs_y, atol=1e-6), (k, s, p, op)
        g = torch.randn_like(ours_y)
        (g_ours,) = torch.autograd.grad((ours_y * g).sum(), xq)
        (g_theirs,) = torch.autograd.grad((theirs_y * g).sum(), xq)
        assert torch.allclose(g_ours, g_theirs, atol=1e-6), (k, s, p, op)
print("hand max/avg pooling == F.max_pool2d / F.avg_pool2d (outputs and gradients)")

# %% [markdown]
# The gradient of max pooling flows only to the winning input of each window; that of
# average pooling spreads evenly, $1/k^2$ to each. Both match PyTorch.
#
# ## Receptive fields
#
# The **receptive field** of an output unit is the set of input pixels that can influence
# it. One $k \times k$ convolution sees $k \times k$ pixels. Stacking layers grows the field:
# let $r_\ell$ be its width after layer $\ell$ and $j_\ell = s_1 s_2 \cdots s_\ell$ the
# distance, in input pixels, between neighbouring units of layer $\ell$ (the *jump*), with
# $r_0 = j_0 = 1$. Layer $\ell$ combines units that lie $d_\ell$ apart over $k_\ell$ taps,
# i.e. $d_\ell (k_\ell - 1)$ steps of $j_{\ell-1}$ input pixels each, so
#
# $$
# r_\ell = r_{\ell-1} + d_\ell (k_\ell - 1)\, j_{\ell-1}, \qquad j_\ell = j_{\ell-1}\, s_\ell .
# $$ (eq-rf)
#
# With $3 \times 3$ kernels and stride 1, the field grows by 2 per layer; with a stride or
# a pooling step it grows by twice as much in every later layer, and with dilations
# $1, 2, 4, \ldots$ it doubles per layer. We measure the field directly: make a stack of
# linear layers with all-positive weights, back-propagate from the centre output unit, and
# count the input pixels that receive a non-zero gradient.

# %%
def receptive_field(layers):
    """eq-rf for a list of (k, s, d)."""
    r, j = 1, 1
    fields = []
    for k, s, d in layers:
        r, j = r + d * (k - 1) * j, j * s
        fields.append(r)
    return fields


def measured_field(layers, size=96):
    """Width of the input region that reaches the centre output unit (positive weights)."""
    x = torch.ones(1, 1, size, size, requires_grad=True)
    y = x
    for k, s, d in layers:
        y = F.conv2d(y, torch.ones(1, 1, k, k), stride=s, dilation=d)
    h, w = y.shape[-2:]
    (g,) = torch.autograd.grad(y[0, 0, h // 2, w // 2], x)
    cols = torch.nonzero(g[0, 0].sum(dim=0))
    return int(cols.max() - cols.min() + 1)


depth = 6
designs = {
    "3×3, stride 1": [(3, 1, 1)] * depth,
    "3×3, stride 2 every 2nd layer": [(3, 2 if i % 2 else 1, 1) for i in range(depth)],
    "3×3, dilation 1, 2, 4, …": [(3, 1, 2**i) for i in range(depth)],
}
fig, ax = plt.subplots(figsize=(6, 3.4))
for name, layers in designs.items():
    predicted = receptive_field(layers)
    measured = [measured_field(layers[: i + 1], size=160) for i in range(depth)]
    assert predicted == measured, (name, predicted, measured)
    ax.plot(range(1, depth + 1), predicted, marker="o", label=name)
ax.set(xlabel="layers", ylabel="receptive field (pixels)", yscale="log")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
glue("s3_1_rf_plain", receptive_field(designs["3×3, stride 1"])[-1])
glue("s3_1_rf_dilated", receptive_field(designs["3×3, dilation 1, 2, 4, …"])[-1])

# %% [markdown]
# Formula {eq}`eq-rf` and the gradient measurement agree for every layer of the three
# designs. After six $3 \times 3$ layers the plain stack sees {glue}`s3_1_rf_plain` pixels,
# the dilated one {glue}`s3_1_rf_dilated`. A classifier's last layer must see the whole
# object, which is why image networks downsample (stride or pooling) as they go deeper.
#
# ## Summary
#
# * Deep-learning "convolutions" compute the cross-correlation {eq}`eq-xcorr2d`; a true
#   convolution is the same with the kernel flipped. For learnt kernels the difference does
#   not matter.
# * A layer slides $C_\text{out}$ kernels of shape $C_\text{in} \times k_h \times k_w$ over
#   a padded input with stride $s$ and dilation $d$ {eq}`eq-conv-layer`; each axis has
#   $\lfloor (n + 2p - d(k-1) - 1)/s \rfloor + 1$ outputs.
# * im2col (`F.unfold`) turns a convolution into one matrix product; our loop and im2col
#   versions match `F.conv2d` in outputs and gradients.
# * A convolution has $C_\text{out} C_\text{in} k_h k_w + C_\text{out}$ parameters, however
#   large the image. Pooling has none; it shrinks feature maps.
# * The receptive field grows linearly with depth for stride-1 layers and much faster with
#   strides, pooling or dilation {eq}`eq-rf`.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-3-1-1
# ```
# LeNet's second convolution ($5 \times 5$, no padding, stride 1) receives $6 \times 14
# \times 14$ feature maps and is followed by $2 \times 2$ max pooling with stride 2. What is
# the spatial size after the convolution and after the pooling? Check with PyTorch.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-1-1
# :class: dropdown
# ```
# By {eq}`eq-out-size`, the convolution gives $\lfloor (14 - 4 - 1)/1 \rfloor + 1 = 10$ and
# the pooling $\lfloor (10 - 1 - 1)/2 \rfloor + 1 = 5$, so $16 \times 5 \times 5 = 400$
# features reach the dense layers.

# %%
h1 = out_size(14, 5)
h2 = out_size(h1, 2, s=2)
y = F.max_pool2d(nn.Conv2d(6, 16, 5)(torch.randn(1, 6, 14, 14)), 2)
assert (h1, h2) == (10, 5) and y.shape == (1, 16, 5, 5)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-1-2
# ```
# A convolution is *translation equivariant*: shifting the input shifts the output by the
# same amount. Verify this numerically for a stride-1 convolution with circular padding
# (so that nothing falls off the border), and show that it fails with stride 2 for a shift
# of one pixel.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-1-2
# :class: dropdown
# ```
# With stride 1, every window of the shifted input is a window of the original input, moved;
# with stride 2 a one-pixel shift moves the windows between the sampled positions.

# %%
conv = nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
img = torch.randn(1, 1, 16, 16)

def shift(t, dy=1, dx=3):
    return torch.roll(t, shifts=(dy, dx), dims=(2, 3))


assert torch.allclose(conv(shift(img)), shift(conv(img)), atol=1e-6)
conv2 = nn.Conv2d(1, 4, 3, stride=2, padding=1, padding_mode="circular")
assert not torch.allclose(conv2(shift(img, 0, 1)), shift(conv2(img), 0, 1), atol=1e-3)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-1-3
# ```
# Show that a $1 \times 1$ convolution is a linear layer applied to the channel vector of
# every pixel: write it with `torch.einsum` and compare with `nn.Conv2d(c_in, c_out, 1)`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-1-3
# :class: dropdown
# ```
# With $k_h = k_w = 1$, {eq}`eq-conv-layer` becomes
# $Y[n, o, i, j] = b_o + \sum_c W[o, c]\, X[n, c, i, j]$.

# %%
pointwise = nn.Conv2d(5, 7, 1)
xp1 = torch.randn(2, 5, 6, 6)
by_einsum = torch.einsum("oc,nchw->nohw", pointwise.weight[:, :, 0, 0], xp1)
by_einsum = by_einsum + pointwise.bias.view(1, -1, 1, 1)
assert torch.allclose(pointwise(xp1), by_einsum, atol=1e-6)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-1-4
# ```
# The gradient of a convolution with respect to its input is itself a convolution-like
# operation: the *transposed convolution* with the same weight. Check that
# `F.conv_transpose2d(g, W, stride=s, padding=p)` equals the input gradient that autograd
# computes for $\sum Y \odot g$, with stride 2 and padding 1 on a $9 \times 9$ input.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-1-4
# :class: dropdown
# ```
# Each input pixel receives $W[o, c, a, b]\, g[n, o, i, j]$ from every output $(i, j)$ whose
# window contains it at tap $(a, b)$; summing these contributions is exactly what the
# transposed convolution computes.

# %%
xg = torch.randn(2, 3, 9, 9, requires_grad=True)
wg = torch.randn(4, 3, 3, 3)
yg = F.conv2d(xg, wg, stride=2, padding=1)
gout = torch.randn_like(yg)
(gin,) = torch.autograd.grad((yg * gout).sum(), xg)
assert torch.allclose(F.conv_transpose2d(gout, wg, stride=2, padding=1), gin, atol=1e-5)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-3-1-5
# ```
# The Gaussian kernel above is *separable*: it is the outer product $K = u u^\top$ of a 1-D
# Gaussian $u$. Show that blurring with a $1 \times 7$ kernel and then a $7 \times 1$
# kernel gives the same image as the $7 \times 7$ kernel, and count the multiplications per
# pixel in each case.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-3-1-5
# :class: dropdown
# ```
# $\sum_{a,b} X[i+a, j+b]\, u_a u_b = \sum_a u_a \sum_b u_b X[i+a, j+b]$: first a row
# filter, then a column filter. That takes $7 + 7 = 14$ multiplications per pixel instead of
# $49$.

# %%
u = torch.exp(-(r**2) / (2 * 1.5**2))
u = u / u.sum()
assert torch.allclose(torch.outer(u, u), gauss, atol=1e-7)
two_pass = apply(apply(grey, u[None, :]), u[:, None])
assert torch.allclose(two_pass, blurred, atol=1e-5)

# %% [markdown]
# ```{solution-end}
# ```
