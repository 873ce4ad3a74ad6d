# %% [markdown]
# # What this book builds
#
# A large language model is not one algorithm but a pipeline. Raw data is collected and cleaned;
# it is turned into numbers a network can read; a network is designed; it is **pretrained** on a
# large amount of unlabelled data with a *self-supervised* objective (predict the next word, or
# a hidden part of the input); it is **fine-tuned** on a small labelled set for the task people
# care about; it is evaluated honestly; and it is deployed, saved and loaded and run where it is
# needed. This book builds every stage from scratch, in PyTorch {cite:p}`paszke2019pytorch`,
# version 2 {cite:p}`ansel2024pytorch2`.
#
# This first section runs the whole pipeline in miniature, on one page, so that
# you have seen every stage once before the book takes each apart. The task is small but real:
# recognising handwritten digits. The shape of the pipeline is the one a GPT goes through.

# %%
import time
from pathlib import Path
from tempfile import mkdtemp

import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from dlbook import checks_enabled, get_device, pick, seed_everything
from dlbook.bench import seconds_per_call
from dlbook.book import glue
from dlbook.checkpoint import load_model, save_model
from dlbook.data import load_digits
from dlbook.nn import MLP, MODELS, MLPConfig
from dlbook.plot import flow_diagram
from dlbook.train import Trainer, accuracy

device = get_device()
steps = ["data", "preprocessing", "model design", "pretraining", "fine-tuning", "evaluation",
         "deployment"]
where = ["Part 4 (corpora)", "Part 4 (tokenizers)", "Parts 1 and 3", "Part 4", "Part 5",
         "every part", "Part 6"]
flow_diagram(steps, where)
plt.show()

# %% [markdown]
# ## 1. Data
#
# A language model's data is text, billions of words of it. Ours is the 1,797 handwritten
# digits that scikit-learn ships {cite:p}`alpaydin1998digits`: 8×8 grey-scale images. As in
# language modelling, we pretend most of them come **without labels**: we may look at the
# images, but only a handful of labels per class are "paid for".

# %%
splits = load_digits(seed=0)
images, labels = splits.train.tensors
glue("s1_1_n_images", len(images))
print(images.shape, labels.shape)

# %% [markdown]
# ## 2. Preprocessing
#
# Networks read vectors of numbers. For text this is the job of a tokenizer, which maps strings
# to integer ids (Part 4 writes one). For images it is simpler: each pixel intensity (0–16) is
# scaled to $[0, 1]$ and the 8×8 grid is flattened to 64 numbers; `load_digits` has done both,
# and split the data into training, validation and test sets. From the {glue}`s1_1_n_images`
# training images we keep, for fine-tuning, a few labelled examples per class:

# %%
labels_per_class = 5


def labelled_subset(seed: int) -> TensorDataset:
    """`labels_per_class` random training images of each digit, with their labels."""
    g = torch.Generator().manual_seed(seed)
    idx = []
    for digit in range(10):
        of_digit = torch.nonzero(labels == digit).flatten()
        idx.append(of_digit[torch.randperm(len(of_digit), generator=g)[:labels_per_class]])
    idx = torch.cat(idx)
    return TensorDataset(images[idx], labels[idx])


glue("s1_1_n_labels", 10 * labels_per_class)
print(len(labelled_subset(0)), "labelled images")

# %% [markdown]
# ## 3. Model design
#
# The model is a multilayer perceptron (section {doc}`03_mlp`): 64 inputs, two hidden layers
# of 128 and 64 units with the GELU activation, and an output layer. The hidden layers are the
# part that learns to *represent* an image; the output layer reads the representation out. For
# pretraining the output layer has 64 units (it reconstructs the image), for fine-tuning 10
# (one score per digit). The two share everything but that last layer, as a GPT's pretrained
# body is shared by the tasks it is fine-tuned for.

# %%
body = {"in_features": 64, "hidden": [128, 64], "activation": "gelu"}
pretrain_config = MLPConfig(**body, out_features=64)
classifier_config = MLPConfig(**body, out_features=10)
print(MLP(classifier_config))

# %% [markdown]
# ## 4. Pretraining, self-supervised
#
# A GPT is pretrained to predict the next token of a text, a task whose "labels" come free with
# the data. Our images get a task of the same kind, that of a *denoising autoencoder* with
# masking noise {cite:p}`vincent2008extracting`: hide a random 40 % of the pixels (set them to
# zero) and train the network to fill in the whole image. It is a cousin of BERT's masked
# language modelling {cite:p}`devlin2019bert`, which replaces hidden tokens by a special mask
# token and is scored on the hidden tokens only; we score every pixel. Minimising the squared
# error of the reconstruction on *all* training images, no labels used, forces the hidden layers
# to learn what digits look like: strokes, loops, their typical positions.

# %%
class MaskedImages(Dataset):
    """Item i: (image with a random 40 % of pixels zeroed (64,), original image (64,))."""

    def __init__(self, images: torch.Tensor, mask_fraction: float = 0.4) -> None:
        self.images, self.mask_fraction = images, mask_fraction

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.rand(64) < self.mask_fraction
        return self.images[i].masked_fill(hidden, 0.0), self.images[i]


seed_everything(0)
pretrained = MLP(pretrain_config)
pretrainer = Trainer(pretrained, torch.optim.AdamW(pretrained.parameters(), lr=2e-3),
                     F.mse_loss, device=device, progress=False)
start = time.perf_counter()
pretrainer.fit(MaskedImages(images), epochs=pick(smoke=1, book=40), batch_size=64)
glue("s1_1_pretrain_seconds", time.perf_counter() - start, ".1f")
glue("s1_1_pretrain_loss", pretrainer.history.last["train_loss"], ".4f")

masked, original = MaskedImages(splits.test.tensors[0][:6])[range(6)]
with torch.no_grad():
    filled = pretrained.cpu()(masked)
fig, axes = plt.subplots(3, 6, figsize=(7, 3.6))
for col in range(6):
    for row, (picture, name) in enumerate([(masked, "input"), (filled, "filled in"),
                                           (original, "original")]):
        axes[row, col].imshow(picture[col].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[row, col].axis("off")
        if col == 0:
            axes[row, col].set_title(name, fontsize=9, loc="left")
fig.suptitle("Pretraining task on test images: fill in the hidden pixels", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# Pretraining took {glue}`s1_1_pretrain_seconds` s and reached a reconstruction error of
# {glue}`s1_1_pretrain_loss` (mean squared error per pixel). The network has never seen a
# label, yet it fills in plausible strokes.
#
# ## 5. Fine-tuning
#
# Now the task we care about: classify digits from only {glue}`s1_1_n_labels` labelled images.
# We build the classifier, copy the pretrained hidden layers into it, and train the whole
# network on the small labelled set. As a control, the same classifier is trained from random
# weights on the same images. To see past the luck of which images were labelled, both are
# repeated on three different labelled subsets.

# %%
def fine_tune(seed: int, from_pretrained: bool) -> MLP:
    seed_everything(seed)
    model = MLP(classifier_config)
    if from_pretrained:
        body_weights = {k: v for k, v in pretrained.state_dict().items()
                        if not k.startswith("net.4")}  # everything but the output layer
        model.load_state_dict(body_weights, strict=False)
    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2),
                      device=device, progress=False)
    trainer.fit(labelled_subset(seed), epochs=pick(smoke=2, book=100), batch_size=16)
    return model

# %% [markdown]
# ## 6. Evaluation
#
# Both kinds of model are scored on the same held-out test images, never used for training or
# for any choice.

# %%
def test_accuracy(model: MLP) -> float:
    model.eval()
    x, y = (t.to(device) for t in splits.test.tensors)
    with torch.no_grad():
        return accuracy(model.to(device)(x), y).item()


seeds = range(pick(smoke=1, book=3))
results = {kind: [test_accuracy(fine_tune(s, kind == "pretrained")) for s in seeds]
           for kind in ("from scratch", "pretrained")}
mean = {kind: sum(v) / len(v) for kind, v in results.items()}
for kind, accs in results.items():
    print(f"{kind:>12}: " + "  ".join(f"{a:.3f}" for a in accs) + f"   mean {mean[kind]:.3f}")
glue("s1_1_acc_scratch", mean["from scratch"], ".3f")
glue("s1_1_acc_pretrained", mean["pretrained"], ".3f")
if checks_enabled():
    assert mean["pretrained"] > mean["from scratch"], mean

plt.figure(figsize=(4.5, 3))
plt.bar(list(mean), list(mean.values()), color=["0.6", "tab:blue"])
for kind, accs in results.items():
    plt.scatter([kind] * len(accs), accs, color="black", zorder=3, s=12)
plt.ylabel("test accuracy")
plt.ylim(0.5, 1.0)
plt.title(f"{10 * labels_per_class} labels: the value of pretraining")
plt.show()

# %% [markdown]
# With only {glue}`s1_1_n_labels` labels, the network trained from scratch reaches a mean test
# accuracy of {glue}`s1_1_acc_scratch`; the pretrained one reaches {glue}`s1_1_acc_pretrained`.
# What it learnt from unlabelled images carried over to the labelled task. This is, in
# miniature, why language models are pretrained on large unlabelled corpora before being
# fine-tuned on small labelled ones. (With all labels, both reach about the same accuracy: see
# the exercises.)
#
# ## 7. Deployment
#
# A deployed model is a file and a few lines that load it. `save_model` writes the weights in
# the safetensors format and the architecture as JSON; `load_model` rebuilds the network and
# refuses files that do not fit it (section {doc}`05_library`). Part 6 makes models smaller and
# faster; here we just measure how fast one image is classified on this machine.

# %%
final = fine_tune(0, from_pretrained=True)
folder = save_model(final, Path(mkdtemp()) / "digit-classifier")
deployed = load_model(folder, MODELS)


def predict_digit(image: torch.Tensor) -> int:
    """Classify one flattened 8×8 image (64,) with pixel values in [0, 1]."""
    with torch.inference_mode():
        return int(deployed(image.unsqueeze(0)).argmax())


x_test, y_test = splits.test.tensors
predictions = [predict_digit(x) for x in x_test]
final.eval()
with torch.no_grad():
    assert predictions == final.cpu()(x_test).argmax(dim=1).tolist()  # the file holds the same model

start = time.perf_counter()
for x in x_test[:200]:
    predict_digit(x)
latency_us = (time.perf_counter() - start) / 200 * 1e6
print(sorted(p.name for p in folder.iterdir()), f"{latency_us:.0f} µs per image")
glue("s1_1_latency", latency_us, ".0f")

# %% [markdown]
# The reloaded model makes exactly the predictions of the trained one and classifies an image in
# about {glue}`s1_1_latency` µs on this machine's CPU, one image at a time.
#
# ## The rest of the book
#
# Each stage above grows into a part of the book:
#
# * **Part 1, Basics**: PyTorch 2 itself ({doc}`02_pytorch`), the neuron and the MLP
#   ({doc}`03_mlp`), the training loop ({doc}`04_training_loop`) and the library that keeps it
#   ({doc}`05_library`).
# * **Part 2, The mathematics of learning**: losses, gradients, backpropagation and optimizers
#   derived and checked against PyTorch, from {doc}`../02_math/01_linear_regression` on.
# * **Part 3, Architectures**: convolutional ({doc}`../03_architectures/01_convolutions`) and
#   recurrent networks, attention and the Transformer {cite:p}`vaswani2017attention`
#   ({doc}`../03_architectures/05_transformer`).
# * **Part 4, Pretraining**: a tokenizer ({doc}`../04_pretraining/01_tokenization`), a GPT
#   pretrained on the King James Bible ({doc}`../04_pretraining/03_pretraining`), decoding, and
#   how to train efficiently on one GPU or many, with scaling laws in miniature
#   {cite:p}`kaplan2020scaling,hoffmann2022training`.
# * **Parts 5 and 6, Fine-tuning and applications** (not yet written): adapting pretrained
#   models to tasks, compressing and deploying them.
#
# ## Summary
#
# * Building a large model is a pipeline: data, preprocessing, model design, pretraining,
#   fine-tuning, evaluation, deployment.
# * Self-supervised pretraining learns from unlabelled data by predicting hidden parts of the
#   input; the learnt representation helps when labels are few.
# * A model is deployed as a weights file plus a config, loaded with checks, and measured.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-1-1-1
# ```
# Repeat the comparison with *all* labelled training images instead of five per class. Does
# pretraining still help?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-1-1
# :class: dropdown
# ```
# With about a hundred labels per class both models reach similar accuracy: the labelled data
# alone now suffice to learn good features, and pretraining's head start matters little. Its
# value is largest when labels are scarce.

# %%
def full_label_accuracy(from_pretrained: bool) -> float:
    seed_everything(0)
    model = MLP(classifier_config)
    if from_pretrained:
        model.load_state_dict({k: v for k, v in pretrained.state_dict().items()
                               if not k.startswith("net.4")}, strict=False)
    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-3), device=device,
                      progress=False)
    trainer.fit(splits.train, epochs=pick(smoke=1, book=20), batch_size=32)
    return test_accuracy(model)


full_scratch, full_pre = full_label_accuracy(False), full_label_accuracy(True)
print(f"all labels: from scratch {full_scratch:.3f}, pretrained {full_pre:.3f}")
if checks_enabled():
    assert abs(full_pre - full_scratch) < 0.03

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-1-2
# ```
# In the pretraining task, what would go wrong if we hid *no* pixels, and asked the network to
# reproduce its input?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-1-2
# :class: dropdown
# ```
# With nothing hidden, the network can solve the task by copying its input through (its hidden
# layers are wide enough to carry all 64 numbers). It then needs to learn nothing about what
# digits look like. Hiding part of the input makes the task require knowledge of the data, which
# is what makes the learnt representation useful; next-token prediction works the same way,
# since the next token is always hidden.
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-1-1-3
# ```
# `predict_digit` classifies one image per call. Classify the whole test set in one batched
# call and compare the time per image.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-1-3
# :class: dropdown
# ```
# One call on a batch amortises Python and framework overhead over all images and lets the
# matrix multiplications use the CPU's vector units fully, so the time per image drops many
# times over (the code prints the factor and checks that it is at least ten). Serving systems
# batch requests for the same reason.

# %%
with torch.inference_mode():
    batched = deployed(x_test).argmax(dim=1)
    # One call is over in well under a millisecond: time the median of several, after a warm-up.
    batched_us = seconds_per_call(lambda: deployed(x_test), repeats=7) / len(x_test) * 1e6
print(f"one at a time: {latency_us:.1f} µs per image; batched: {batched_us:.2f} µs per image")
assert batched.tolist() == predictions
if checks_enabled():
    assert batched_us < latency_us / 10

# %% [markdown]
# ```{solution-end}
# ```
