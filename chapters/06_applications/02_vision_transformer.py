# %% [markdown]
# # Transformers for vision
#
# The Transformer of Part 3 reads a sequence of tokens. An image is not a sequence, but it can
# be made into one: cut it into square patches, flatten each patch and map it linearly to a
# token. That is the whole idea of the *Vision Transformer* (ViT) of
# {cite:t}`dosovitskiy2021image`, "An Image is Worth 16x16 Words": no convolutions after the
# first layer, the same encoder blocks as a text model, and a class token whose final state is
# classified. Given enough data (their best models were pre-trained on hundreds of millions of
# images) it matched the best convolutional networks; on small data sets it needs more help
# (augmentation, regularisation, distillation, as in DeiT {cite:p}`touvron2021training`).
#
# Here we build a ViT from the library's encoder blocks of {doc}`../03_architectures/05_transformer`,
# train it on the 5,000 MNIST digits of {doc}`../03_architectures/02_cnns`, compare it with the
# LeNet of that section at the same parameter count and the same number of epochs, look at
# where its class token attends, and measure what the patch size and shift augmentation do.

# %%
import time

import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.book import glue
from dlbook.data.augment import RandomShift
from dlbook.data.mnist import load_mnist_subset
from dlbook.nn import LeNet, LeNetConfig
from dlbook.nn.vit import (
    PatchEmbedding,
    VisionTransformer,
    ViTConfig,
    attention_rollout,
    patchify,
)
from dlbook.train import Trainer, accuracy

seed_everything(0)
device = get_device()
splits = load_mnist_subset(seed=0)
x_train, y_train = splits.train.tensors
x_test, y_test = splits.test.tensors

# %% [markdown]
# ## Patches as tokens
#
# Let an image $x \in \mathbb{R}^{C_\text{in} \times H \times W}$ and a patch side $P$ that
# divides $H$ and $W$. Patch $n = i \cdot (W/P) + j$ is the block of rows $iP, \dots, iP+P-1$
# and columns $jP, \dots, jP+P-1$, flattened to a vector $p_n \in \mathbb{R}^{C_\text{in}P^2}$;
# there are $N = HW/P^2$ of them. Each becomes a token of width $C$:
#
# $$
# e_n = E\, p_n + b, \qquad E \in \mathbb{R}^{C \times C_\text{in} P^2}.
# $$ (eq-patch-embed)
#
# The same computation is a convolution with $C$ kernels of size $P \times P$ and stride $P$:
# each kernel visits every patch once, without overlap, and its weight tensor
# $(C, C_\text{in}, P, P)$ reshaped to $(C, C_\text{in}P^2)$ is $E$. That is how ViT
# implementations write it. A $28 \times 28$ digit with $P = 4$ gives $N = 49$ tokens, with
# $P = 7$ only 16. We cut patches with reshapes, check them against slicing the image, and check
# that {eq}`eq-patch-embed` equals the strided convolution of the library's `PatchEmbedding`.

# %%
def patches_by_hand(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C_in, H, W) -> (B, N, C_in * p * p), patches row by row, by slicing."""
    b, c, h, w = images.shape
    out = [images[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(b, -1)
           for i in range(h // p) for j in range(w // p)]
    return torch.stack(out, dim=1)


images = x_train[:8]
for p in (4, 7):
    assert torch.equal(patchify(images, p), patches_by_hand(images, p))
    assert patchify(images, p).shape == (8, (28 // p) ** 2, p * p)

embed = PatchEmbedding(in_channels=1, n_embd=48, patch_size=4)
E = embed.proj.weight.reshape(48, -1)  # (C, C_in P^2)
by_hand = patchify(images, 4) @ E.T + embed.proj.bias  # eq-patch-embed
embed_err = (embed(images) - by_hand).abs().max().item()
assert embed(images).shape == (8, 49, 48) and embed_err < 1e-5
glue("s6_2_embed_err", embed_err, ".1e")
for bad in (x_train[:2, :, :27, :27], x_train[:2].expand(2, 3, 28, 28)):
    try:
        embed(bad)
        raise AssertionError("bad images were accepted")
    except ValueError as e:
        print("ValueError:", e)

fig, axes = plt.subplots(1, 3, figsize=(8, 2.8), gridspec_kw={"width_ratios": [1, 1, 2.2]})
axes[0].imshow(images[0, 0], cmap="gray_r")
axes[0].set_title("a digit, 28×28")
axes[1].imshow(images[0, 0], cmap="gray_r")
for k in range(1, 7):  # the borders of the patches of P = 4
    axes[1].axhline(4 * k - 0.5, color="tab:red", lw=0.8)
    axes[1].axvline(4 * k - 0.5, color="tab:red", lw=0.8)
axes[1].set_title("its 49 patches (P = 4)")
axes[2].imshow(patchify(images[:1], 4)[0].T, cmap="gray_r", aspect="auto")
axes[2].set(title="the tokens before embedding", xlabel="patch n", ylabel="pixel in patch")
for ax in axes[:2]:
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# The reshaped patches equal the sliced ones, and the convolution equals
# {eq}`eq-patch-embed` up to float32 round-off (largest difference
# {glue}`s6_2_embed_err`). Images whose size the patch side does not divide, or with the wrong
# number of channels, are refused with a `ValueError` instead of silently dropping border
# pixels.
#
# ## The model
#
# The encoder gets $N + 1$ tokens: a learned *class token* $c$ in front of the patch tokens,
# and a learned position embedding $\mathrm{pos}_n$ added to each (attention itself does not
# know where a patch came from). Then $L$ pre-norm blocks of {doc}`../03_architectures/05_transformer`,
# a final layer norm and a linear head on the class token:
#
# $$
# \begin{aligned}
# z^{(0)} &= [\,c;\ e_1;\ \dots;\ e_N\,] + [\,\mathrm{pos}_0;\ \dots;\ \mathrm{pos}_N\,],\\
# u^{(l)} &= z^{(l-1)} + \operatorname{MHA}\big(\operatorname{LN}(z^{(l-1)})\big), \qquad
# z^{(l)} = u^{(l)} + \operatorname{MLP}\big(\operatorname{LN}(u^{(l)})\big),\\
# \text{logits} &= W_\text{head}\, \operatorname{LN}\big(z^{(L)}_0\big) + b_\text{head}.
# \end{aligned}
# $$ (eq-vit)
#
# Attention is bidirectional: every token, the class token included, attends to all $N + 1$.
# The class token holds no pixel of its own; whatever the head reads from it, it gathered by
# attention. We write {eq}`eq-vit` out, with multi-head attention computed from its softmax
# rather than PyTorch's fused kernel, give it the weights of the library's `VisionTransformer`,
# and compare outputs and the attention weights of every layer.

# %%
def vit_by_hand(model: VisionTransformer, images: torch.Tensor):
    """eq-vit with the model's weights. Returns logits (B, classes) and the attention weights
    of every layer, (L, B, H, N + 1, N + 1)."""
    cfg = model.config
    p = cfg.patch_size
    E = model.patch_embed.proj.weight.reshape(cfg.n_embd, -1)
    tokens = patchify(images, p) @ E.T + model.patch_embed.proj.bias  # (B, N, C)
    cls = model.cls_token.expand(len(images), 1, cfg.n_embd)
    z = torch.cat([cls, tokens], dim=1) + model.pos_embed  # (B, N + 1, C)
    b, t, c = z.shape
    h, d = cfg.n_head, cfg.n_embd // cfg.n_head
    weights = []
    for blk in model.blocks:
        a = F.layer_norm(z, (c,), blk.norm1.weight, blk.norm1.bias)
        q, k, v = (a @ blk.attn.c_attn.weight.T + blk.attn.c_attn.bias).split(c, dim=-1)
        q, k, v = (m.view(b, t, h, d).transpose(1, 2) for m in (q, k, v))  # (B, H, T, D)
        w = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)  # (B, H, T, T)
        weights.append(w)
        heads = (w @ v).transpose(1, 2).reshape(b, t, c)
        u = z + heads @ blk.attn.c_proj.weight.T + blk.attn.c_proj.bias
        m = F.layer_norm(u, (c,), blk.norm2.weight, blk.norm2.bias)
        m = F.gelu(m @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias)
        z = u + m @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
    cls_out = F.layer_norm(z[:, 0], (c,), model.ln_f.weight, model.ln_f.bias)
    return cls_out @ model.head.weight.T + model.head.bias, torch.stack(weights)


def vit_config(patch_size: int) -> ViTConfig:
    """The ViT of this section: about as many parameters as LeNet (book profile)."""
    return ViTConfig(patch_size=patch_size, n_layer=pick(smoke=2, book=3), n_head=4,
                     n_embd=pick(smoke=32, book=48), mlp_hidden=pick(smoke=64, book=96))


vit = VisionTransformer(vit_config(4)).eval()
with torch.no_grad():
    logits_hand, maps_hand = vit_by_hand(vit, images)
    logits = vit(images)
    maps = vit.attention_maps(images)
vit_err = (logits - logits_hand).abs().max().item()
assert logits.shape == (8, 10) and maps.shape == (vit.config.n_layer, 8, 4, 50, 50)
assert vit_err < 1e-5 and torch.allclose(maps, maps_hand, atol=1e-6)
assert torch.allclose(maps.sum(-1), torch.ones(()))  # every row is a distribution
glue("s6_2_vit_err", vit_err, ".1e")
try:
    vit(F.pad(images, (2, 2, 2, 2)))  # 32×32: divisible by 4, but not the size it was built for
    raise AssertionError("32×32 images were accepted")
except ValueError as e:
    print("ValueError:", e)
print({name: tuple(t.shape) for name, t in vit.named_parameters() if "blocks" not in name})

# %% [markdown]
# The written-out ViT and the library's agree (largest logit difference {glue}`s6_2_vit_err`),
# and so do the attention weights of every layer, which the library recomputes from the same
# queries and keys (`MultiHeadAttention.attention_weights`) because the fused kernel of the
# forward pass never forms them. A model built for $28 \times 28$ images refuses $32 \times 32$
# ones: its position table has one row per patch of the size it was built for.
#
# ```{literalinclude} ../../dlbook/nn/vit.py
# :pyobject: VisionTransformer
# ```
#
# ## Training: a ViT against a CNN
#
# We train the ViT with patches of 4 pixels and, as the CNN baseline, the LeNet of
# {doc}`../03_architectures/02_cnns`, with the recipe of that section (AdamW with a one-cycle
# schedule, batches of 64) and the same number of epochs, both on the plain training images
# (what shift augmentation does comes below). The ViT gets a larger weight decay, as is usual
# for Transformers. Both are sized to about the same number of parameters.

# %%
n_train = pick(smoke=128, book=len(x_train))
train_plain = TensorDataset(x_train[:n_train], y_train[:n_train])
train_shift = RandomShift(train_plain, max_shift=2)
epochs = pick(smoke=1, book=4)
# the smoke test evaluates on 100 images only; the book on the full splits
val_data, test_data = (TensorDataset(*(t[:pick(smoke=100, book=len(t))] for t in d.tensors))
                       for d in (splits.val, splits.test))
n_test = len(test_data)
glue("s6_2_n_train", n_train, ",")
glue("s6_2_n_test", n_test, ",")


def train(model, data, weight_decay, lr=3e-3, seed=0):
    """AdamW + one-cycle for `epochs` epochs; returns test accuracy, seconds per epoch and
    the trainer."""
    seed_everything(seed)
    steps = epochs * -(-len(data) // 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    trainer = Trainer(model, optimizer, scheduler=schedule, metrics={"accuracy": accuracy},
                      device=device, seed=seed, progress=False)
    start = time.perf_counter()
    trainer.fit(data, val_data, epochs=epochs, batch_size=64)
    seconds = (time.perf_counter() - start) / epochs
    return trainer.evaluate(test_data)["accuracy"], seconds, trainer


seed_everything(0)
vit = VisionTransformer(vit_config(4))
lenet = LeNet(LeNetConfig())
n_vit = sum(p.numel() for p in vit.parameters())
n_lenet = sum(p.numel() for p in lenet.parameters())
acc_vit, sec_vit, trainer_vit = train(vit, train_plain, weight_decay=0.05)
acc_lenet, sec_lenet, trainer_lenet = train(lenet, train_plain, weight_decay=5e-4)
print(f"ViT   {n_vit:,} parameters: test accuracy {acc_vit:.3f}, {sec_vit:.1f} s per epoch")
print(f"LeNet {n_lenet:,} parameters: test accuracy {acc_lenet:.3f}, {sec_lenet:.1f} s per epoch")

fig, ax = plt.subplots(figsize=(5.5, 3.2))
for name, tr in (("ViT, P = 4", trainer_vit), ("LeNet", trainer_lenet)):
    ax.plot(range(1, epochs + 1), tr.history["val_accuracy"], marker="o", label=name)
ax.set(xlabel="epoch", ylabel="validation accuracy", title="same data, same epochs")
ax.legend()
plt.show()

glue("s6_2_epochs", epochs)
glue("s6_2_params_vit", n_vit, ",")
glue("s6_2_params_lenet", n_lenet, ",")
glue("s6_2_acc_vit", acc_vit, ".3f")
glue("s6_2_acc_lenet", acc_lenet, ".3f")
glue("s6_2_sec_vit", sec_vit, ".1f")
glue("s6_2_sec_lenet", sec_lenet, ".1f")
if checks_enabled():
    assert 0.8 < n_vit / n_lenet < 1.25  # a similar parameter budget
    assert acc_vit > 0.6, acc_vit  # it learns: far above the 0.1 of guessing
    assert acc_lenet > acc_vit, (acc_lenet, acc_vit)  # the CNN wins on this small training set

# %% [markdown]
# After {glue}`s6_2_epochs` epochs on the {glue}`s6_2_n_train` training digits, on the
# {glue}`s6_2_n_test` test digits:
#
# | | parameters | test accuracy | seconds per epoch |
# |---|---|---|---|
# | ViT, $P = 4$ | {glue}`s6_2_params_vit` | {glue}`s6_2_acc_vit` | {glue}`s6_2_sec_vit` |
# | LeNet | {glue}`s6_2_params_lenet` | {glue}`s6_2_acc_lenet` | {glue}`s6_2_sec_lenet` |
#
# (Seconds per epoch include the validation pass, measured on the machine that built this
# page, which may have been busy with other work.) With the same parameter budget and the same
# epochs, the CNN is ahead. A convolution assumes what is true of images, that nearby pixels
# belong together and that a pattern means the same wherever it appears; the ViT must learn
# both from the data (its only such assumption is the cut into patches), and
# {glue}`s6_2_n_train` digits and a few epochs are not much to learn them from. This is the finding of
# {cite:t}`dosovitskiy2021image` at a much larger scale: trained on ImageNet alone their ViTs
# trailed ResNets, and overtook them only after pre-training on far larger collections.
#
# ## Where the class token looks
#
# The class token's row of an attention map is a distribution over the $N + 1$ tokens: how
# much of each token's value it takes in. Averaged over heads and reshaped to the
# $7 \times 7$ grid of patches, the last layer's row shows where the class token looks just
# before the head reads it. That row ignores what earlier layers already mixed into each
# token. *Attention rollout* {cite:p}`abnar2020quantifying` follows the mixing through all
# layers: it averages each layer's map $A_l$ over heads, adds the identity for the residual
# connection and renormalises, $\tilde A_l = \tfrac12(\bar A_l + I)$, and multiplies the
# layers, $R = \tilde A_L \cdots \tilde A_1$. Row 0 of $R$ is the class token's rollout.

# %%
vit.eval()
sample = x_test[:6].to(device)
with torch.no_grad():
    maps = vit.attention_maps(sample).cpu()  # (L, B, H, 50, 50)
    pred = vit(sample).argmax(1).cpu()
last_cls = maps[-1, :, :, 0, 1:].mean(1)  # (B, 49): the class token over the patches
rollout = attention_rollout(maps)
# rollout by hand: one layer at a time, with an explicit identity
r = torch.eye(50).expand(len(sample), 50, 50)
for layer in maps:
    r = (0.5 * layer.mean(1) + 0.5 * torch.eye(50)) @ r
assert torch.allclose(rollout, r, atol=1e-6)
assert torch.allclose(rollout.sum(-1), torch.ones(()), atol=1e-5)
side = 28 // vit.config.patch_size
fig, axes = plt.subplots(3, len(sample), figsize=(1.6 * len(sample), 5))
for i in range(len(sample)):
    axes[0, i].imshow(sample[i, 0].cpu(), cmap="gray_r")
    axes[0, i].set_title(f"{y_test[i].item()} → {pred[i].item()}", fontsize=9)
    axes[1, i].imshow(last_cls[i].view(side, side), cmap="magma")
    axes[2, i].imshow(rollout[i, 0, 1:].view(side, side), cmap="magma")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel("last layer")
axes[2, 0].set_ylabel("rollout")
fig.suptitle("class-token attention over the 7×7 patches (true → predicted)")
fig.tight_layout()
plt.show()

# how much of the class token's last-layer attention lands on patches that hold ink
n_ink = pick(smoke=50, book=200)
ink = patchify(x_test[:n_ink], vit.config.patch_size).amax(-1) > 0.1  # (n_ink, N)
with torch.no_grad():
    cls_att = vit.attention_maps(x_test[:n_ink].to(device))[-1, :, :, 0, 1:].mean(1).cpu()
on_ink = (cls_att * ink).sum(1).mean().item() / cls_att.sum(1).mean().item()
ink_share = ink.float().mean().item()
glue("s6_2_n_ink", n_ink)
glue("s6_2_on_ink", on_ink, ".2f")
glue("s6_2_ink_share", ink_share, ".2f")
if checks_enabled():
    assert on_ink > ink_share + 0.1, (on_ink, ink_share)  # well above the ink patches' share

# %% [markdown]
# Row by row: the test digit (with the true and the predicted class), the class token's
# last-layer attention over the patches, and its rollout. One number summarises the maps: over
# {glue}`s6_2_n_ink` test digits, patches containing ink are a fraction
# {glue}`s6_2_ink_share` of all patches and receive a fraction {glue}`s6_2_on_ink` of the
# class token's last-layer attention to patches: well above the share a class token that
# ignored where the ink is would give them. Such maps show where information flowed, not why the
# model decided: attention weights are one factor of what a layer computes, next to the
# values they weigh and everything the MLPs do.
#
# ## Patch size and augmentation
#
# Two choices matter most for a small ViT: the patch side, which sets the number of tokens
# (49 for $P = 4$, 16 for $P = 7$) and so the cost of attention, and the augmentation. Next to
# the ViT above ($P = 4$, no augmentation) we train one with $P = 7$, and one with $P = 7$ on
# images shifted at random by up to two pixels each time they are drawn
# (`dlbook.data.augment.RandomShift`, as in {doc}`../03_architectures/02_cnns`), with the
# same recipe and epochs. (The fourth combination is left out to keep the page's run short.)
# With $n$ = {glue}`s6_2_n_test` test digits, an accuracy near $a$ has a standard error of
# $\sqrt{a(1-a)/n}$, about {glue}`s6_2_se` here. The difference of two such independent
# accuracies has a standard error $\sqrt{\mathrm{se}_1^2 + \mathrm{se}_2^2}$, about
# {glue}`s6_2_se_diff`; a different seed moves the numbers too, so differences of a few
# of these standard errors are what this experiment can resolve.

# %%
def std_err(a: float) -> float:
    """Standard error of an accuracy ``a`` measured on the ``n_test`` test digits."""
    return (a * (1 - a) / n_test) ** 0.5


grid = {(4, False): (acc_vit, sec_vit)}
for p, shift in ((7, False), (7, True)):
    seed_everything(0)
    model = VisionTransformer(vit_config(p))
    acc, sec, _ = train(model, train_shift if shift else train_plain, weight_decay=0.05)
    grid[(p, shift)] = (acc, sec)
    print(f"P = {p}, shifts {shift}: test accuracy {acc:.3f}, {sec:.1f} s per epoch")
se = std_err(acc_vit)
glue("s6_2_se", se, ".3f")
for (p, shift), (acc, sec) in grid.items():
    tag = f"p{p}_{'shift' if shift else 'plain'}"
    glue(f"s6_2_acc_{tag}", acc, ".3f")
    glue(f"s6_2_sec_{tag}", sec, ".1f")

fig, ax = plt.subplots(figsize=(5.5, 3.2))
labels = ["P = 4\nno augmentation", "P = 7\nno augmentation", "P = 7\nshifts ±2"]
keys = ((4, False), (7, False), (7, True))
ax.bar(labels, [grid[k][0] for k in keys], yerr=[2 * std_err(grid[k][0]) for k in keys],
       capsize=4, color=["tab:blue", "tab:orange", "tab:green"])
ax.axhline(acc_lenet, color="gray", ls="--", label="LeNet, no augmentation")
ax.set(ylabel="test accuracy", title="ViT: patch size and augmentation (±2 s.e.)")
ax.legend(loc="lower right")
plt.show()
gain_p7 = grid[(7, False)][0] - grid[(4, False)][0]
loss_shift = grid[(7, False)][0] - grid[(7, True)][0]
# standard errors of the two differences: sqrt(se_1^2 + se_2^2)
se_gain = (std_err(grid[(7, False)][0]) ** 2 + std_err(grid[(4, False)][0]) ** 2) ** 0.5
se_loss = (std_err(grid[(7, False)][0]) ** 2 + std_err(grid[(7, True)][0]) ** 2) ** 0.5
se_diff = max(se_gain, se_loss)
glue("s6_2_gain_p7", gain_p7, ".3f")
glue("s6_2_loss_shift", loss_shift, ".3f")
glue("s6_2_se_diff", se_diff, ".3f")
if checks_enabled():  # both differences are several standard errors, in this 4-epoch run
    assert gain_p7 > 3 * se_gain and loss_shift > 3 * se_loss, (gain_p7, loss_shift, se_diff)
n_tokens = {p: VisionTransformer(vit_config(p)).pos_embed.shape[1] for p in (4, 7)}
assert n_tokens == {4: 50, 7: 17} and (n_tokens[4] / n_tokens[7]) ** 2 > 8

# %% [markdown]
# | ViT | test accuracy | seconds per epoch |
# |---|---|---|
# | $P = 4$, no augmentation | {glue}`s6_2_acc_p4_plain` | {glue}`s6_2_sec_p4_plain` |
# | $P = 7$, no augmentation | {glue}`s6_2_acc_p7_plain` | {glue}`s6_2_sec_p7_plain` |
# | $P = 7$, shifts of up to 2 pixels | {glue}`s6_2_acc_p7_shift` | {glue}`s6_2_sec_p7_shift` |
#
# Read the differences against their standard error of about {glue}`s6_2_se_diff`: from one
# seed and {glue}`s6_2_epochs` epochs, a difference of one or two such standard errors is
# noise, and only a larger one is a finding. Both differences here are larger than three
# standard errors of a difference: the coarser patches gained {glue}`s6_2_gain_p7` in accuracy, and the shifts cost
# {glue}`s6_2_loss_shift`. Both are findings about a short run on few images, not about ViTs
# in general: 16 tokens of 49 pixels are fewer and richer things to relate, which a small
# model may learn faster, and shifted images are a harder task, which slows early learning
# whatever it does for generalisation later. What holds by construction is the cost of attention: 17 tokens
# (16 patches and the class token) instead of 50 make each attention map more than eight times
# smaller. The measured seconds per epoch also contain everything that does not shrink with
# the token count (the MLPs shrink only threefold, the data loading not at all) and, on a
# shared machine, the noise of other work.
# Whether the shifts pay off after longer training would take longer runs and several seeds
# to tell. DeiT {cite:p}`touvron2021training` made ViTs competitive when trained
# on ImageNet alone largely through heavy augmentation and regularisation (and distillation
# from a CNN teacher).
#
# ## Summary
#
# * A ViT cuts an image into $P \times P$ patches, embeds each linearly (a strided
#   convolution, equal to reshaping plus a linear map), prepends a class token, adds learned
#   positions and runs the library's pre-norm encoder blocks; the head reads the class token.
# * Our written-out ViT equals the library's `VisionTransformer` in logits and in every
#   layer's attention weights.
# * On {glue}`s6_2_n_train` MNIST digits, at the same parameter count and epochs, LeNet
#   ({glue}`s6_2_acc_lenet`) beat the ViT ({glue}`s6_2_acc_vit`): without a convolution's
#   built-in locality, the Transformer has more to learn from the same few images.
# * The class token's attention can be read from every layer and plotted over the patches;
#   rollout follows it through all layers, counting the residual connections. Such maps show
#   where information flowed, not why the model decided.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-6-2-1
# ```
# Count the ViT's parameters in closed form as a function of the patch side $P$, the number
# of patches $N$, the width $C$, the depth $L$, the feed-forward width $F$ and the number of
# classes $K$ (grey images), and check it against the model. How does the count change from
# $P = 4$ to $P = 7$?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-2-1
# :class: dropdown
# ```
# Patch embedding $P^2 C + C$; class token $C$; positions $(N + 1) C$. Each block: two norms
# $4C$, attention $4C^2 + 4C$, MLP $2CF + F + C$. Final norm $2C$ and head $CK + K$. From
# $P = 4$ to $P = 7$ the patch embedding grows ($49C$ instead of $16C$) but the position table
# shrinks (17 rows instead of 50); the blocks do not change. For $28 \times 28$ images the two
# cancel exactly, $16 + 50 = 49 + 17$: both ViTs of this section have the same count.

# %%
def vit_params(P: int, N: int, C: int, L: int, F: int, K: int) -> int:
    """Parameters of a ViT for grey images."""
    block = 4 * C + 4 * C * C + 4 * C + 2 * C * F + F + C
    return P * P * C + C + C + (N + 1) * C + L * block + 2 * C + C * K + K


for p in (4, 7):
    cfg = vit_config(p)
    model = VisionTransformer(cfg)
    assert vit_params(p, cfg.n_patches, cfg.n_embd, cfg.n_layer, cfg.mlp_hidden, 10) == sum(
        t.numel() for t in model.parameters())
    print(p, vit_params(p, cfg.n_patches, cfg.n_embd, cfg.n_layer, cfg.mlp_hidden, 10))
assert sum(t.numel() for t in VisionTransformer(vit_config(4)).parameters()) == sum(
    t.numel() for t in VisionTransformer(vit_config(7)).parameters())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-6-2-2
# ```
# Show that without position embeddings a ViT cannot tell where a patch is: set `pos_embed`
# to zero and check that shuffling the patches of an image leaves the logits unchanged.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-2-2
# :class: dropdown
# ```
# Attention and the MLP treat the tokens as a set: permuting the patch tokens permutes the
# rows of every layer's output, and the class token's output does not change. We shuffle the
# $4 \times 4$ patches of the image itself, so that the model's own patch embedding sees them.

# %%
model = VisionTransformer(vit_config(4)).eval()
with torch.no_grad():
    model.pos_embed.zero_()
perm = torch.randperm(49)
img = x_test[:4]
blocks = img.reshape(4, 1, 7, 4, 7, 4).permute(0, 1, 2, 4, 3, 5).reshape(4, 1, 49, 4, 4)
shuffled = blocks[:, :, perm].reshape(4, 1, 7, 7, 4, 4).permute(0, 1, 2, 4, 3, 5)
shuffled = shuffled.reshape(4, 1, 28, 28)
assert torch.equal(patchify(shuffled, 4), patchify(img, 4)[:, perm])
with torch.no_grad():
    diff = (model(img) - model(shuffled)).abs().max().item()
assert diff < 1e-5
print(f"largest logit change after shuffling the patches: {diff:.1e}")

# %% [markdown]
# ```{solution-end}
# ```
