# %% [markdown]
# # Pruning and distillation
#
# A fine-tuned model is usually bigger than its task needs. The MiniLM classifier of
# {doc}`../05_finetuning/03_classification` spends {glue}`s6_5_teacher_params` million
# parameters on telling eight Reuters topics apart; on a phone, on a server that answers
# thousands of requests a second, or on a 2-core laptop, every one of them costs memory and
# time. The previous section made each
# weight cheaper (fewer bits); this one makes the model have **fewer weights**, in two ways:
#
# 1. **Pruning** removes weights from the trained model: single weights of small magnitude
#    (*unstructured*), followed by a short fine-tune to recover what was lost
#    {cite:p}`han2015learning`, or whole attention heads and feed-forward channels
#    (*structured*; Michel et al. removed attention heads at test time, without retraining,
#    and found many of them dispensable {cite:p}`michel2019sixteen`).
# 2. **Knowledge distillation** {cite:p}`hinton2015distilling` trains a new, much smaller
#    *student* to imitate the big model's (the *teacher's*) output distribution, not just the
#    labels. MiniLM itself is a distilled student: it learned to imitate a larger teacher's
#    self-attention {cite:p}`wang2020minilm`.

# %%
import copy
import time
import warnings
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from dlbook import checks_enabled, pick, seed_everything
from dlbook.book import glue
from dlbook.distill import BagOfTokens, cached_teacher_logits, distillation_loss, train_student
from dlbook.finetune import (
    TrainConfig,
    accuracy,
    encode_texts,
    finetuned_r8_classifier,
    freeze,
    predict,
    r8_documents,
    train_classifier,
)
from dlbook.nn.transformer import FeedForward
from dlbook.prune import (
    head_scores,
    linear_layers,
    magnitude_prune,
    mlp_channel_scores,
    prune_heads,
    prune_mlp_channels,
    prune_structured,
    sparsity,
)

_ = seed_everything(0)
start_time = time.perf_counter()
teacher_run = finetuned_r8_classifier("top", progress=False)
teacher, tok = teacher_run.model, teacher_run.tokenizer
docs = r8_documents(teacher_run.config)
classes = teacher_run.classes
# Every MiniLM forward pass in this section reads the first MAX_LEN tokens of a document and
# the pruning curve uses the first N_EVAL test documents: sizes that fit a CPU's time budget.
MAX_LEN = pick(smoke=24, book=64)
N_EVAL = pick(smoke=16, book=128)
eval_ids = encode_texts(tok, docs["test"].texts[:N_EVAL], MAX_LEN)
eval_y = docs["test"].labels[:N_EVAL]


def eval_accuracy(model: torch.nn.Module) -> float:
    """Test accuracy of a classifier on the evaluation subset."""
    return accuracy(predict(model, eval_ids, pad_value=tok.pad_id).argmax(-1), eval_y)


base_acc = eval_accuracy(teacher)
n_encoder = sum(m.weight.numel() for m in linear_layers(teacher.encoder))
print(f"teacher: {teacher_run.config.method} fine-tune, accuracy {base_acc:.1%} on "
      f"{N_EVAL} test documents cut to {MAX_LEN} tokens")
glue("s6_5_max_len", MAX_LEN)
glue("s6_5_n_eval", N_EVAL)
glue("s6_5_base_acc", base_acc, ".1%")
assert teacher_run.config.method == "top" and teacher_run.config.top_k == 2
glue("s6_5_n_linear", n_encoder / 1e6, ".1f")

# %% [markdown]
# The teacher is the classifier whose top two layers were fine-tuned in section 5.3; on the
# first {glue}`s6_5_n_eval` test documents, cut to {glue}`s6_5_max_len` tokens, it is right
# {glue}`s6_5_base_acc` of the time. Its encoder's linear layers (attention and feed-forward,
# what pruning targets; the embeddings are a table look-up and cost no arithmetic) hold
# {glue}`s6_5_n_linear` M weights.
#
# ## Unstructured magnitude pruning
#
# The oldest and simplest criterion: a weight close to zero contributes little to its
# layer's output, so set it to exactly zero. Given a target sparsity $s$, rank the $N$ weights
# by $|w|$ and zero the $\mathrm{round}(sN)$ smallest. Two choices remain: rank within each
# layer (every layer loses the share $s$), or **globally** over all layers (layers whose
# weights are small lose more). The zeros are kept by a 0/1 mask $m$: the layer computes with
# $w \odot m$, and the mask stays applied during any later training, so a pruned weight
# stays pruned.
#
# By hand, for one layer:

# %%
layer = teacher.encoder.blocks[0].mlp.c_fc
w = layer.weight.detach()
k = round(0.5 * w.numel())
threshold = w.abs().flatten().kthvalue(k).values
hand_mask = w.abs() > threshold  # the k smallest |w| (no ties in trained float weights)
one = copy.deepcopy(layer)
magnitude_prune(one, 0.5, layers=[one])
assert torch.equal(one.weight != 0, hand_mask)
assert sparsity(one, [one]) == k / w.numel()
print(f"{type(one.parametrizations.weight[0]).__name__} parametrization, "
      f"{sparsity(one, [one]):.1%} zeros, threshold |w| = {threshold:.4f}")

# %% [markdown]
# `dlbook.prune.magnitude_prune` does the same over a list of layers (by default every linear
# layer of a model except the classifier's head) and registers the mask with
# `torch.nn.utils.parametrize`, so `layer.weight` *is* `original * mask` on every access:
#
# ```{literalinclude} ../../dlbook/prune.py
# :pyobject: magnitude_prune
# ```
#
# Now the accuracy of the whole classifier as the global sparsity of its encoder grows:

# %%
levels = [0.0, 0.3, 0.5, 0.7, 0.9]
curve = {}
for s in levels:
    pruned = copy.deepcopy(teacher)
    if s:
        magnitude_prune(pruned.encoder, s)
    assert abs(sparsity(pruned.encoder) - s) < 1e-6  # exactly the share asked for
    curve[s] = eval_accuracy(pruned)
    print(f"sparsity {s:4.0%}: accuracy {curve[s]:.1%}")
for s in levels[1:]:
    glue(f"s6_5_acc_{round(s * 100)}", curve[s], ".1%")
high = levels[-1]
glue("s6_5_high", high, ".0%")
if checks_enabled():
    assert curve[0.3] >= base_acc - 0.05  # the smallest 30 % hardly matter
    assert curve[high] < curve[0.3] - 0.1  # at the highest level, accuracy breaks down

# %% [markdown]
# Zeroing the smallest 30 % of the weights leaves the accuracy at {glue}`s6_5_acc_30`; at 50 %
# it is {glue}`s6_5_acc_50` and at 70 % {glue}`s6_5_acc_70`, and at {glue}`s6_5_high` it has
# fallen to {glue}`s6_5_acc_90` (the curve is plotted below, with the recovered point).
#
# ### Recovery by fine-tuning
#
# The surviving weights were trained in the company of the removed ones. A few steps of
# fine-tuning with the masks in place let them compensate. The gradient reaches the
# `original` tensor behind each mask, but the forward pass multiplies by the mask, so the
# pruned entries get zero gradient and stay zero whatever the optimizer does.

# %%
recovered = copy.deepcopy(teacher)
magnitude_prune(recovered.encoder, high)
freeze(recovered, ".*")  # every parameter trains (the masks are buffers, not parameters)
train_docs = docs["train"]
N_RECOVER = pick(smoke=16, book=128)
recover_ids = encode_texts(tok, train_docs.texts[:N_RECOVER], MAX_LEN)
recover_cfg = TrainConfig(steps=pick(smoke=1, book=8), batch_size=16, lr=1e-3,
                          weight_decay=0.0, warmup_frac=0.0, seed=0)
t0 = time.perf_counter()
result = train_classifier(recovered, recover_ids, train_docs.labels[:N_RECOVER], recover_cfg,
                          pad_value=tok.pad_id, progress=False)
recover_s = time.perf_counter() - t0
recovered_acc = eval_accuracy(recovered)
assert abs(sparsity(recovered.encoder) - high) < 1e-6  # the masks held
print(f"after {recover_cfg.steps} steps ({recover_s:.0f} s): accuracy {recovered_acc:.1%} "
      f"(pruned: {curve[high]:.1%}, sparsity still {sparsity(recovered.encoder):.1%})")
glue("s6_5_recover_steps", recover_cfg.steps)
glue("s6_5_recover_docs", recover_cfg.steps * recover_cfg.batch_size)
glue("s6_5_recovered_acc", recovered_acc, ".1%")
glue("s6_5_recover_gain", 100 * (recovered_acc - curve[high]), ".1f")
glue("s6_5_recover_s", recover_s, ".0f")
if checks_enabled():
    assert recovered_acc > curve[high] + 0.05

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([100 * s for s in levels], [100 * curve[s] for s in levels], "o-",
        label="magnitude pruning (global)")
ax.plot([100 * high], [100 * recovered_acc], "s", color="C2",
        label=f"after {recover_cfg.steps} recovery steps")
ax.axhline(100 * base_acc, color="gray", ls=":", label="unpruned")
ax.set(xlabel="sparsity of the encoder's linear layers (%)", ylabel="test accuracy (%)",
       title=f"R8, {N_EVAL} test documents")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# {glue}`s6_5_recover_steps` steps on {glue}`s6_5_recover_docs` training documents
# ({glue}`s6_5_recover_s` s here) bring the {glue}`s6_5_high`-sparse model back to
# {glue}`s6_5_recovered_acc`, {glue}`s6_5_recover_gain` points more than right after pruning,
# and the sparsity is exactly what it was (asserted). The learning rate, 10⁻³, is high for
# fine-tuning: the pruned network is far from a good solution and needs large steps (at
# low sparsity, where little was lost, one would use a smaller one). Mind the error bars
# too: each point of the curve is measured on {glue}`s6_5_n_eval` documents.
#
# What did the {glue}`s6_5_high` zeros buy? Nothing yet: the matrices have their old shapes
# and a dense matrix product multiplies by zero as fast as by anything else. Saving memory
# needs a sparse storage format (indices cost bits too), and saving time needs sparse kernels
# or a hardware pattern such as 2:4 sparsity (two zeros in every four weights), for which
# recent GPUs have sparse matrix units. The first exercise below measures this.
#
# ## Structured pruning: remove heads and channels
#
# Structured pruning removes whole rows and columns, so the matrices shrink and the model
# really does less work. Two units of a Transformer block are natural:
#
# * an **attention head** $h$: its rows of $W_Q$, $W_K$, $W_V$ (in `c_attn`) and its $D$
#   columns of the output projection $W_O$ (`c_proj`), since the head's output enters the
#   block only as $W_O^h\,\mathrm{head}_h$;
# * a **feed-forward channel** $j$: row $j$ of the first matrix (`c_fc`) and column $j$ of the
#   second (`c_proj`).
#
# The criterion here is a weight norm: a head is scored by
# $\|W_V^h\|_F\,\|W_O^h\|_F$, an upper bound on the gain of its value-to-output path, and a
# channel by $\|w^{\text{fc}}_j\|\,\|w^{\text{proj}}_{:,j}\|$. (Michel et al. rank heads by
# the loss's sensitivity to them, which needs gradients on data; norms need nothing.)
# Removing a head must give exactly what zeroing its output columns gives:

# %%
block = teacher.encoder.blocks[0]
scores = head_scores(block.attn)
drop = scores.argsort()[:3].tolist()
D = block.attn.head_dim
zeroed = copy.deepcopy(block.attn)
with torch.no_grad():
    for h in drop:
        zeroed.c_proj.weight[:, h * D:(h + 1) * D] = 0
small = prune_heads(block.attn, drop)
x = torch.randn(2, 10, block.attn.n_embd)
mask = torch.ones(2, 10, dtype=torch.bool)
mask[1, 7:] = False
with torch.no_grad():
    torch.testing.assert_close(small(x, mask), zeroed(x, mask), atol=1e-5, rtol=1e-5)
assert small.c_attn.weight.shape == (3 * 9 * D, 384) and small.c_proj.weight.shape == (384, 9 * D)
ff = copy.deepcopy(block.mlp)
channels = mlp_channel_scores(ff).argsort()[:384].tolist()
ff_zeroed = copy.deepcopy(ff)
with torch.no_grad():
    ff_zeroed.c_proj.weight[:, channels] = 0
prune_mlp_channels(ff, channels)
assert isinstance(ff, FeedForward) and ff.c_fc.weight.shape == (1536 - 384, 384)
with torch.no_grad():
    torch.testing.assert_close(ff(x), ff_zeroed(x), atol=1e-5, rtol=1e-5)
print(f"heads removed from block 0: {drop}; c_attn {tuple(small.c_attn.weight.shape)}, "
      f"c_proj {tuple(small.c_proj.weight.shape)}; c_fc {tuple(ff.c_fc.weight.shape)}")

# %% [markdown]
# `prune_structured` does this in every block: it removes the lowest-scoring quarter of the
# heads (3 of 12) and of the feed-forward channels in each layer.

# %%
HEAD_FRAC, CHANNEL_FRAC = 0.25, 0.25
slim = copy.deepcopy(teacher)
removed = prune_structured(slim.encoder.blocks, HEAD_FRAC, CHANNEL_FRAC)
assert all(len(h) == 3 for h in removed["heads"])
assert all(b.mlp.c_fc.out_features == 1152 for b in slim.encoder.blocks)
n_params = {"teacher": sum(p.numel() for p in teacher.parameters()),
            "slim": sum(p.numel() for p in slim.parameters())}
n_linear_slim = sum(m.weight.numel() for m in linear_layers(slim.encoder))
assert n_linear_slim == round(0.75 * n_encoder)  # a quarter of every matrix is gone
assert slim.encoder.wte.weight.numel() > n_params["slim"] / 2  # the embedding table dominates
slim_acc = eval_accuracy(slim)


def ms_per_doc(model: torch.nn.Module, ids: list[list[int]], repeat: int = 3) -> float:
    """Best-of-``repeat`` wall time of predicting ``ids``, in ms per document."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        predict(model, ids, pad_value=tok.pad_id)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(ids)


timing_ids = eval_ids[: pick(smoke=8, book=16)]
ms = {"teacher": ms_per_doc(teacher, timing_ids), "slim": ms_per_doc(slim, timing_ids)}
print(f"structured: accuracy {slim_acc:.1%}, {n_params['slim'] / 1e6:.1f} M parameters "
      f"(from {n_params['teacher'] / 1e6:.1f} M), {ms['slim']:.1f} ms/doc "
      f"(unpruned {ms['teacher']:.1f} ms/doc)")
glue("s6_5_slim_acc", slim_acc, ".1%")
glue("s6_5_slim_params", n_params["slim"] / 1e6, ".1f")
glue("s6_5_teacher_params", n_params["teacher"] / 1e6, ".1f")
glue("s6_5_slim_ms", ms["slim"], ".1f")
glue("s6_5_teacher_ms", ms["teacher"], ".1f")
if checks_enabled():
    assert slim_acc < base_acc  # "gives up some accuracy", said below

# %% [markdown]
# With a quarter of the heads and channels of every layer gone (the linear layers are
# exactly 25 % smaller, asserted), the model has {glue}`s6_5_slim_params` M parameters instead
# of {glue}`s6_5_teacher_params` M (most of the rest is the embedding table), classifies at
# {glue}`s6_5_slim_acc` before any recovery, and takes {glue}`s6_5_slim_ms` ms per document
# against {glue}`s6_5_teacher_ms` ms unpruned, measured on this machine for
# {glue}`s6_5_max_len`-token documents. Structured pruning gives up some accuracy for less
# arithmetic; the same recovery fine-tune as above applies.
#
# ## Knowledge distillation
#
# Pruning starts from the big model. Distillation starts from a small one and lets the big
# model teach it. The teacher's output distribution carries more than its top answer: that a
# document about *crude* oil prices may be a little *trade* and not at all *earn* is
# information the one-hot label throws away. To expose it, both distributions are softened with a
# **temperature** $T$:
#
# $$p_i = \frac{e^{v_i/T}}{\sum_j e^{v_j/T}}\ (\text{teacher logits } v), \qquad
#   q_i = \frac{e^{z_i/T}}{\sum_j e^{z_j/T}}\ (\text{student logits } z),$$
#
# and the student minimises
#
# $$\mathcal{L} = \alpha\,T^2\,\mathrm{KL}(p\,\|\,q) + (1-\alpha)\,\mathrm{CE}(z, y).$$
#
# **Where $T^2$ comes from.** $\mathrm{KL}(p\|q) = \sum_i p_i \log p_i - \sum_i p_i \log q_i$
# and $\partial \log q_i / \partial z_k = (\delta_{ik} - q_k)/T$, so
#
# $$\frac{\partial\,\mathrm{KL}}{\partial z_k} = -\sum_i p_i\,\frac{\delta_{ik} - q_k}{T}
#   = \frac{q_k - p_k}{T}.$$
#
# For $T$ large compared with the logits, $e^{x/T} \approx 1 + x/T$, so with $K$ classes
# $q_k \approx (1 + z_k/T)/(K + \sum_j z_j/T)$; if the logits of each model have zero mean
# (a softmax ignores a shift, so we may assume it)
# $q_k - p_k \approx (z_k - v_k)/(K T)$ and
#
# $$\frac{\partial\,\mathrm{KL}}{\partial z_k} \approx \frac{z_k - v_k}{K\,T^2}.$$
#
# The soft term's gradient shrinks as $1/T^2$; multiplying it by $T^2$ keeps its weight
# against the hard term the same whatever temperature one picks. Check both statements
# with autograd:

# %%
gen = torch.Generator().manual_seed(0)
z = torch.randn(8, generator=gen)
v = 3 * torch.randn(8, generator=gen)
z, v = z - z.mean(), v - v.mean()  # zero-mean logits (a softmax ignores a shift)
# The loss written out for a batch of 4 examples, against the library's.
zb, vb, yb = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen), torch.arange(4)
T, alpha = 3.0, 0.6
p_t, q_t = F.softmax(vb / T, -1), F.softmax(zb / T, -1)
by_hand = (alpha * T**2 * (p_t * (p_t.log() - q_t.log())).sum(-1).mean()
           + (1 - alpha) * -F.log_softmax(zb, -1)[torch.arange(4), yb].mean())
torch.testing.assert_close(distillation_loss(zb, vb, yb, T=T, alpha=alpha), by_hand)
for T in (1.0, 2.0, 5.0):
    zz = z.clone().requires_grad_()
    kl = distillation_loss(zz[None], v[None], None, T=T, alpha=1.0) / T**2  # KL(p || q)
    kl.backward()
    exact = (F.softmax(z / T, -1) - F.softmax(v / T, -1)) / T
    torch.testing.assert_close(zz.grad, exact, atol=1e-6, rtol=1e-5)
temps = np.geomspace(1, 100, 12)
grad_norm, grad_norm_t2 = [], []
for T in temps:
    zz = z.clone().requires_grad_()
    (distillation_loss(zz[None], v[None], None, T=float(T), alpha=1.0)).backward()
    grad_norm_t2.append(zz.grad.norm().item())
    grad_norm.append(zz.grad.norm().item() / T**2)
exact_large = zz.grad / temps[-1] ** 2  # the exact gradient of KL at the largest T
large = (z - v) / (len(z) * temps[-1] ** 2)
approx_err = (exact_large - large).norm() / large.norm()  # relative error of the vector
assert approx_err < 0.02, approx_err  # the large-T formula
assert grad_norm[-1] / grad_norm[-3] < 0.6  # without T², the gradient keeps shrinking ...
assert abs(grad_norm_t2[-1] / grad_norm_t2[-3] - 1) < 0.05  # ... with T², it levels off
glue("s6_5_approx_err", 100 * approx_err.item(), ".1f")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(temps, grad_norm, "o-", label=r"$\|\partial\,\mathrm{KL}/\partial z\|$")
ax.loglog(temps, grad_norm_t2, "s-", label=r"$\|\partial\,(T^2\,\mathrm{KL})/\partial z\|$")
ax.loglog(temps, np.linalg.norm((z - v).numpy()) / (len(z) * temps**2), "k:",
          label=r"$\|z - v\| / (K T^2)$")
ax.set(xlabel="temperature $T$", ylabel="gradient norm", title="the soft term's gradient")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Autograd agrees with $(q - p)/T$ at every temperature tried (asserted), at $T = 100$ the
# approximation $(z - v)/(K T^2)$ is within {glue}`s6_5_approx_err` % of the exact gradient,
# and with the $T^2$ factor the gradient's size levels off instead of falling as $1/T^2$.
#
# `dlbook.distill.distillation_loss` is the loss above:
#
# ```{literalinclude} ../../dlbook/distill.py
# :pyobject: distillation_loss
# ```
#
# ### A tiny student
#
# The student is deliberately simple: the mean of learned token embeddings and a linear layer
# (`dlbook.distill.BagOfTokens`, a "bag of words" over MiniLM's WordPiece tokens). It has no
# attention, no layers, and only an embedding for the tokens seen in its training documents
# (all others share one "unknown" row). The teacher's logits on the training documents are
# computed once and cached, so a second run of this page skips them.

# %%
N_TRANSFER = pick(smoke=48, book=400)
STUDENT_LEN = pick(smoke=32, book=128)


@dataclass
class TeacherLogitsConfig:
    """What determines the cached teacher logits."""

    teacher_dir: str
    n_docs: int
    max_len: int


transfer_ids = encode_texts(tok, train_docs.texts[:N_TRANSFER], MAX_LEN)
teacher_logits, computed_now = cached_teacher_logits(
    "r8-teacher-logits",
    TeacherLogitsConfig(teacher_run.directory.name, N_TRANSFER, MAX_LEN),
    lambda: predict(teacher, transfer_ids, pad_value=tok.pad_id),
)
y_train = train_docs.labels[:N_TRANSFER]
student_train = encode_texts(tok, train_docs.texts[:N_TRANSFER], STUDENT_LEN)
seen = torch.unique(torch.tensor([i for ids in student_train for i in ids]))
vocab_map = torch.zeros(len(tok.vocab) if hasattr(tok, "vocab") else 30522, dtype=torch.long)
vocab_map[seen] = torch.arange(1, len(seen) + 1)  # 0: every token never seen in training


def to_student(ids: list[list[int]]) -> list[list[int]]:
    """WordPiece ids → the student's vocabulary."""
    return [vocab_map[torch.tensor(x)].tolist() for x in ids]


student_train = to_student(student_train)
test_all = docs["test"]
student_test = to_student(encode_texts(tok, test_all.texts, STUDENT_LEN))
SEEDS = pick(smoke=[0, 1], book=[0, 1, 2, 3])
STEPS = pick(smoke=20, book=300)
T_KD, ALPHA = 4.0, 0.5
acc = {"labels": [], "distilled": []}
for seed in SEEDS:
    for kind in acc:
        torch.manual_seed(seed)
        student = BagOfTokens(len(seen) + 1, len(classes), dim=64)
        train_student(student, student_train, y_train,
                      None if kind == "labels" else teacher_logits, T=T_KD, alpha=ALPHA,
                      steps=STEPS, batch_size=32, lr=1e-2, seed=seed)
        pred = predict(student, student_test, pad_value=0).argmax(-1)
        acc[kind].append(accuracy(pred, test_all.labels))
mean = {k: float(np.mean(a)) for k, a in acc.items()}
se = {k: float(np.std(a, ddof=1) / np.sqrt(len(a))) for k, a in acc.items()}
diff = np.array(acc["distilled"]) - np.array(acc["labels"])  # paired: same seed, same batches
diff_mean, diff_se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
print({k: f"{mean[k]:.2%} ± {se[k]:.2%}" for k in acc},
      f"difference {diff_mean:+.2%} ± {diff_se:.2%}")

# %% [markdown]
# Same seeds, same batches, same steps; the only difference is the loss. The table puts the
# three models side by side (the teacher's accuracy is that of section 5.3 on all test
# documents at its full {glue}`s6_5_teacher_len` tokens; time per document measured here, on one batch, for
# documents of the students' length {glue}`s6_5_student_len`):

# %%
n_student = sum(p.numel() for p in student.parameters())
full_ids = encode_texts(tok, test_all.texts[:len(timing_ids)], STUDENT_LEN)
rows = {
    "teacher (MiniLM, top-2 fine-tune)": (
        n_params["teacher"], teacher_run.metrics["test_accuracy"], float("nan"),
        ms_per_doc(teacher, full_ids)),
    "student, labels only": (n_student, mean["labels"], se["labels"],
                             ms_per_doc(student, to_student(full_ids))),
    f"student, distilled (T={T_KD:g}, α={ALPHA:g})": (
        n_student, mean["distilled"], se["distilled"], ms_per_doc(student, to_student(full_ids))),
}
table = pd.DataFrame(
    [{"model": name, "parameters (M)": p / 1e6, "MB (fp32)": 4 * p / 1e6,
      "test accuracy": a, "± s.e.": s, "ms / document": t}
     for name, (p, a, s, t) in rows.items()]).set_index("model")
glue("s6_5_table", table.style.format(
    {"parameters (M)": "{:.2f}", "MB (fp32)": "{:.1f}", "test accuracy": "{:.1%}",
     "± s.e.": "{:.1%}", "ms / document": "{:.2f}"}, na_rep="—"))
print(table.to_string(float_format=lambda x: f"{x:.4f}"))
glue("s6_5_student_len", STUDENT_LEN)
glue("s6_5_teacher_len", teacher_run.config.max_len)
glue("s6_5_n_transfer", N_TRANSFER)
glue("s6_5_n_seeds", len(SEEDS))
glue("s6_5_student_share", n_student / n_params["teacher"], ".1%")
glue("s6_5_labels_acc", mean["labels"], ".1%")
glue("s6_5_distilled_acc", mean["distilled"], ".1%")
glue("s6_5_diff", 100 * diff_mean, "+.1f")
glue("s6_5_diff_se", 100 * diff_se, ".1f")
glue("s6_5_teacher_acc", teacher_run.metrics["test_accuracy"], ".1%")
glue("s6_5_teacher_train_acc", accuracy(teacher_logits.argmax(-1), y_train), ".1%")
# A paired t-test over the seeds: t = mean / standard error, with len(SEEDS) - 1 degrees of
# freedom (with a handful of seeds, two standard errors are not yet significant).
if diff_se > 0:
    p_value = float(2 * stats.t.sf(abs(diff_mean / diff_se), len(diff) - 1))
else:
    p_value = 1.0 if diff_mean == 0 else 0.0
if p_value >= 0.05:
    verdict = "not significant at the 5 % level: within noise"
elif diff_mean > 0:
    verdict = "significant at the 5 % level: a real, if small, gain"
else:
    verdict = "significant at the 5 % level: here distillation hurt"
glue("s6_5_p_value", p_value, ".2f")
glue("s6_5_verdict", verdict)
student_gap = teacher_run.metrics["test_accuracy"] - max(mean.values())
glue("s6_5_student_gap", 100 * student_gap, ".1f")
assert n_student < 0.05 * n_params["teacher"]
if checks_enabled():
    assert mean["labels"] > 0.8 and mean["distilled"] > 0.8
    assert teacher_run.metrics["test_accuracy"] > max(mean.values())

# %% [markdown]
# ```{glue:figure} s6_5_table
# :name: tab-6-5-distill
#
# Teacher and students on Reuters R8. Students: {glue}`s6_5_n_transfer` training documents,
# {glue}`s6_5_n_seeds` seeds each, mean test accuracy on all test documents ± its standard
# error; time per document on this machine (one batch, best of three).
# ```
#
# The student has {glue}`s6_5_student_share` of the teacher's parameters. Trained on labels
# alone it reaches {glue}`s6_5_labels_acc`; distilled, {glue}`s6_5_distilled_acc`
# (the teacher: {glue}`s6_5_teacher_acc`). The paired difference over seeds is
# {glue}`s6_5_diff` ± {glue}`s6_5_diff_se` points (paired t-test over the seeds:
# p = {glue}`s6_5_p_value`), {glue}`s6_5_verdict`. The teacher agrees
# with the labels on {glue}`s6_5_teacher_train_acc` of the student's training documents (it
# read them cut to {glue}`s6_5_max_len` tokens), so its soft targets carry little that the
# labels do not, besides which topics resemble which, and some of its errors. Distillation
# pays most where labels are scarce and text is not: the teacher can label any number of
# unlabelled documents (the last exercise below), and the student learns from all of them.

# %%
elapsed = time.perf_counter() - start_time
glue("s6_5_elapsed", elapsed, ".0f")
print(f"section ran in {elapsed:.0f} s (teacher logits computed now: {computed_now})")

# %% [markdown]
# ## Summary
#
# * Unstructured magnitude pruning zeroes the smallest weights through a mask that stays
#   applied during training; the encoder keeps {glue}`s6_5_acc_30` accuracy at 30 % sparsity
#   and falls to {glue}`s6_5_acc_90` at {glue}`s6_5_high`, where {glue}`s6_5_recover_steps` fine-tuning steps
#   recover {glue}`s6_5_recover_gain` points. Zeros in dense matrices save neither memory nor
#   time by themselves.
# * Structured pruning removes whole heads and feed-forward channels; the matrices shrink,
#   and the model computes exactly what it did with those units zeroed (asserted).
# * Distillation trains a small student on the teacher's temperature-softened outputs; the
#   $T^2$ factor keeps the soft term's gradient on a fixed scale (derived and checked with
#   autograd). A bag-of-tokens student with {glue}`s6_5_student_share` of the teacher's
#   parameters gets within {glue}`s6_5_student_gap` points of it ({numref}`tab-6-5-distill`).
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-6-5-1
# ```
# Why does unstructured sparsity not speed up a dense matrix product? Time `x @ W.T` for a
# MiniLM-sized feed-forward matrix that is dense and that is 90 % zeros, and the same product
# with `W` stored as a sparse CSR tensor.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-5-1
# :class: dropdown
# ```
# The dense kernel performs every multiply-add whatever the values; only a sparse format
# skips zeros, and it pays for indices (here as many as values) and irregular memory access,
# so whether it wins depends on the sparsity, the shapes and the kernel. The timings are
# this machine's:

# %%
W = torch.randn(1536, 384)
W90 = W * (torch.rand_like(W) > 0.9)
with warnings.catch_warnings():  # sparse CSR support is marked "beta" in PyTorch
    warnings.simplefilter("ignore", UserWarning)
    W_csr = W90.to_sparse_csr()
xb = torch.randn(64 * MAX_LEN, 384)


def best_ms(fn, repeat: int = 5) -> float:
    """Best wall time of ``fn()`` in ms."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


dense_ms, zeros_ms = best_ms(lambda: xb @ W.T), best_ms(lambda: xb @ W90.T)
csr_ms = best_ms(lambda: (W_csr @ xb.T).T)
torch.testing.assert_close((W_csr @ xb.T).T, xb @ W90.T, atol=1e-3, rtol=1e-4)
print(f"dense {dense_ms:.2f} ms, dense with 90 % zeros {zeros_ms:.2f} ms, CSR {csr_ms:.2f} ms; "
      f"CSR stores {W_csr.values().numel() + W_csr.col_indices().numel():,} numbers "
      f"for {int((W90 != 0).sum()):,} non-zeros")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-6-5-2
# ```
# Han et al. prune *iteratively*: prune a little, fine-tune, prune more. Show that
# `magnitude_prune` supports such a schedule: pruning to 40 % and then to 60 % leaves exactly
# 60 % zeros, and every weight zeroed in the first round is still zero.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-5-2
# :class: dropdown
# ```
# A second call ranks the current (masked) weights; the zeros of the first round are the
# smallest of all, so they stay pruned and count towards the new target.

# %%
model = copy.deepcopy(teacher)
magnitude_prune(model.encoder, 0.4)
first = [m.weight == 0 for m in linear_layers(model.encoder)]
magnitude_prune(model.encoder, 0.6)
assert abs(sparsity(model.encoder) - 0.6) < 1e-6
assert all(bool((m.weight[f] == 0).all())
           for m, f in zip(linear_layers(model.encoder), first, strict=True))
print(f"sparsity after two rounds: {sparsity(model.encoder):.1%}")

# %% [markdown]
# In a real schedule a few recovery steps (as above) go between the rounds.
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-6-5-3
# ```
# Distillation needs no labels for its soft term: the teacher can label any text. Train the
# student with $\alpha = 1$ (teacher only) on the same documents. How close does it get to
# the student trained on the true labels?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-6-5-3
# :class: dropdown
# ```
# With $\alpha = 1$ the labels are never read; the student learns the teacher's function,
# errors included. On any unlabelled text (more documents of the same kind), or with
# another teacher (SmolLM2's zero-shot answers, which need no labelled data at all), the same
# code applies.

# %%
torch.manual_seed(0)
student_t = BagOfTokens(len(seen) + 1, len(classes), dim=64)
train_student(student_t, student_train, y_train, teacher_logits, T=T_KD, alpha=1.0,
              steps=STEPS, batch_size=32, lr=1e-2, seed=0)
acc_t = accuracy(predict(student_t, student_test, pad_value=0).argmax(-1), test_all.labels)
print(f"teacher only: {acc_t:.1%}; labels only (seed 0): {acc['labels'][0]:.1%}")
if checks_enabled():
    assert acc_t > 0.8

# %% [markdown]
# ```{solution-end}
# ```
