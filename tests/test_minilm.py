"""Tests for dlbook.hub.minilm and dlbook.embed: MiniLM in the library's encoder, checked against
transformers' BertModel."""

from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from dlbook.checkpoint import CheckpointError
from dlbook.embed import mean_pool, sentence_embeddings
from dlbook.hub import load
from dlbook.hub.minilm import model_dir
from dlbook.nn.transformer import TransformerEncoder

TEXTS = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "In the beginning God created the heaven and the earth.",
    "",
    "Héllo wörld, 日本語 😀 — a longer sentence, so that the others in the batch are padded a lot.",
]


@functools.cache
def minilm():
    return load("minilm-l6")


@functools.cache
def reference_model():
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel.from_pretrained(str(model_dir()), local_files_only=True).eval()


def reference_hidden(enc):
    with torch.no_grad():
        return reference_model()(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"].long(),
            token_type_ids=enc["token_type_ids"],
        ).last_hidden_state


def reference_embeddings(tokenizer, texts):
    enc = tokenizer.batch(texts)
    hidden = reference_hidden(enc)
    mask = enc["attention_mask"].float()[..., None]
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1), enc


def test_architecture_read_from_config():
    model, tokenizer = minilm()
    c = model.config
    assert isinstance(model, TransformerEncoder) and not model.training
    assert (c.n_layer, c.n_head, c.n_embd, c.mlp_hidden, c.block_size) == (6, 12, 384, 1536, 512)
    assert (c.vocab_size, c.type_vocab_size, c.norm_eps, c.norm_first) == (30522, 2, 1e-12, False)
    assert tokenizer.vocab_size == c.vocab_size and tokenizer.model_max_length == 512
    assert sum(p.numel() for p in model.parameters()) == 22_565_376  # BertModel minus the pooler


def test_sentence_embeddings_equal_transformers_with_padding():
    model, tokenizer = minilm()
    expected, enc = reference_embeddings(tokenizer, TEXTS)
    assert not enc["attention_mask"].all()  # the batch really is padded
    ours = sentence_embeddings(model, tokenizer, TEXTS, batch_size=3)  # batches of mixed length
    assert ours.shape == (len(TEXTS), 384)
    assert (ours - expected).abs().max().item() <= 1e-5
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(TEXTS)))
    # hidden states too, not only their pooled summary
    ref_hidden = reference_hidden(enc)
    with torch.no_grad():
        hidden = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    real = enc["attention_mask"]
    assert (hidden[real] - ref_hidden[real]).abs().max().item() <= 1e-4


def test_paraphrases_are_closer_than_unrelated_sentences():
    model, tokenizer = minilm()
    e = sentence_embeddings(model, tokenizer, TEXTS[:3])
    assert e[0] @ e[1] > 0.5 > e[0] @ e[2]


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    torch.testing.assert_close(mean_pool(hidden, mask)[0], hidden[0, :2].mean(0))
    with pytest.raises(ValueError, match="does not fit"):
        mean_pool(hidden, mask[:, :3])


def test_too_long_text_is_refused_or_truncated():
    model, tokenizer = minilm()
    long = "word " * 600
    with pytest.raises(ValueError, match="truncate=True"):
        sentence_embeddings(model, tokenizer, ["short", long])
    e = sentence_embeddings(model, tokenizer, ["short", long], truncate=True)
    prefix = " ".join(["word"] * 510)  # 510 words + [CLS] + [SEP] = 512 positions
    torch.testing.assert_close(e[1], sentence_embeddings(model, tokenizer, [prefix])[0])
    with pytest.raises(ValueError, match="at least one"):
        sentence_embeddings(model, tokenizer, [])
    with pytest.raises(TypeError):
        sentence_embeddings(model, tokenizer, "one string")


def copy_model(tmp_path, weights: bool = False):
    """A copy of the model folder; the weights file is linked unless ``weights`` (to change)."""
    folder = tmp_path / "bert"
    folder.mkdir()
    for name in ("config.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(model_dir() / name, folder)
    if weights:
        shutil.copy(model_dir() / "model.safetensors", folder)
    else:
        (folder / "model.safetensors").symlink_to(model_dir() / "model.safetensors")
    return folder


def test_missing_and_damaged_files(tmp_path):
    folder = copy_model(tmp_path)
    (folder / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match="vocab.txt"):
        load("minilm-l6", directory=folder)
    shutil.copy(model_dir() / "vocab.txt", folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load("minilm-l6", directory=folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        load("minilm-l6", directory=folder)
    with pytest.raises(CheckpointError, match="no config.json"):
        load("minilm-l6", directory=tmp_path)


def test_wrong_shapes_and_missing_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_model(tmp_path, weights=True)
    state = load_file(folder / "model.safetensors")
    bad = dict(state)
    bad["encoder.layer.3.intermediate.dense.weight"] = torch.zeros(1024, 384)
    save_file(bad, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.3\.intermediate.*\(1024, 384\)"):
        load("minilm-l6", directory=folder)
    del state["encoder.layer.5.attention.self.key.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks the tensor 'encoder\.layer\.5\.attention"):
        load("minilm-l6", directory=folder)


def test_non_bert_configs_are_refused(tmp_path):
    folder = copy_model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for change, message in (({"model_type": "gpt2", "architectures": ["GPT2Model"]}, "BERT"),
                            ({"hidden_act": "relu"}, "GELU"),
                            ({"position_embedding_type": "relative_key"}, "absolute")):
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            load("minilm-l6", directory=folder)
    del config["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_size"):
        load("minilm-l6", directory=folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load("minilm-l6", directory=folder)


def test_dtype_and_device_options():
    model, _ = load("minilm-l6", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"
