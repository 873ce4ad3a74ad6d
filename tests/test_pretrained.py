"""Tests for dlbook.pretrained: cache key, pretraining loop, exact resume, cache, errors.

The conftest points ``DLBOOK_CACHE`` at a fresh temporary directory for every test.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from dlbook.checkpoint import CheckpointError
from dlbook.config import cache_dir
from dlbook.data.text import load_kjv
from dlbook.pretrained import (
    PretrainConfig,
    config_key,
    kjv_config,
    kjv_tokens,
    pretrain,
    pretrained_kjv_gpt,
    pretrained_kjv_run,
)

TINY = PretrainConfig(
    n_layer=1, n_head=2, n_embd=16, block_size=16, corpus_chars=20_000, batch_size=4,
    max_steps=8, warmup_steps=2, eval_interval=4, eval_batches=1,
)


def _data(vocab: int = 20, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    stream = (np.arange(n) % vocab + rng.integers(0, 2, n)) % vocab  # learnable pattern
    return stream[: n * 9 // 10], stream[n * 9 // 10 :]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_key_changes_with_every_field():
    base = config_key(TINY)
    assert base == config_key(dataclasses.replace(TINY))
    assert len(base) == 16
    changes = {"n_layer": 2, "lr": 1e-3, "seed": 1, "max_steps": 9, "corpus_chars": None,
               "betas": (0.9, 0.99)}
    keys = {config_key(dataclasses.replace(TINY, **{k: v})) for k, v in changes.items()}
    assert base not in keys and len(keys) == len(changes)
    assert config_key(TINY, "other corpus") != base
    assert config_key(kjv_config("smoke")) != config_key(kjv_config("book"))
    with pytest.raises(ValueError):
        config_key({"n_layer": 1})  # type: ignore[arg-type]


def test_config_validation():
    with pytest.raises(ValueError, match="warmup"):
        PretrainConfig(max_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainConfig(batch_size=0)
    with pytest.raises(ValueError):
        kjv_config("huge")


def test_pretrain_learns_and_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=12, lr=1e-2, eval_interval=4)
    train, val = _data()
    full = pretrain(cfg, train, val, 20, device="cpu")
    assert full.finished and [r["step"] for r in full.history] == [0, 4, 8, 12]
    assert full.history[-1]["val_loss"] < full.history[0]["val_loss"]
    assert abs(full.history[0]["val_loss"] - math.log(20)) < 0.2
    path = tmp_path / "run.pt"
    part = pretrain(cfg, train, val, 20, checkpoint_path=path, stop_after=6, device="cpu")
    assert not part.finished and not _same_weights(part.model, full.model)
    resumed = pretrain(cfg, train, val, 20, checkpoint_path=path, resume=True, device="cpu")
    assert resumed.finished and _same_weights(resumed.model, full.model)  # bit-identical
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]


def test_resume_from_other_config_is_refused(tmp_path):
    train, val = _data()
    path = tmp_path / "run.pt"
    pretrain(TINY, train, val, 20, checkpoint_path=path, stop_after=4, device="cpu")
    other = dataclasses.replace(TINY, lr=1e-2)
    with pytest.raises(CheckpointError, match="different pretraining configuration"):
        pretrain(other, train, val, 20, checkpoint_path=path, resume=True, device="cpu")


def test_pretrain_rejects_bad_data():
    train, val = _data()
    with pytest.raises(ValueError, match="fewer than one window"):
        pretrain(TINY, train[:10], val, 20)
    with pytest.raises(ValueError, match="fewer than one window"):
        pretrain(TINY, train, np.array([], dtype=np.uint8), 20)
    with pytest.raises(ValueError, match="checkpoint_path"):
        pretrain(TINY, train, val, 20, resume=True)


def test_kjv_tokens_memmap_round_trip():
    tok, data = kjv_tokens(TINY)
    assert isinstance(data, np.memmap) and len(data) == TINY.corpus_chars
    assert tok.decode(np.asarray(data[:500]).tolist()) == load_kjv()[:500]
    files = list((cache_dir() / "tokens").glob("*.bin"))
    assert len(files) == 1
    _, again = kjv_tokens(TINY)  # reopened, not rewritten
    assert list((cache_dir() / "tokens").glob("*.bin")) == files
    np.testing.assert_array_equal(np.asarray(again), np.asarray(data))


def test_cached_model_saves_and_reloads_identically():
    first = pretrained_kjv_run(config=TINY)
    assert first.trained_now and first.directory is not None
    second = pretrained_kjv_run(config=TINY)
    assert not second.trained_now
    assert _same_weights(first.model, second.model)
    assert second.history == first.history and second.tokenizer == first.tokenizer
    x = torch.randint(0, first.tokenizer.vocab_size, (2, 8))
    with torch.no_grad():
        assert torch.equal(first.model.eval()(x)[0], second.model(x)[0])
    # a different configuration never loads this model
    other = pretrained_kjv_run(config=dataclasses.replace(TINY, seed=1))
    assert other.trained_now and other.directory != first.directory
    assert not _same_weights(other.model, first.model)


def test_corrupt_cache_is_retrained_with_warning():
    first = pretrained_kjv_run(config=TINY)
    weights = first.directory / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="retraining"):
        again = pretrained_kjv_run(config=TINY)
    assert again.trained_now and _same_weights(again.model, first.model)
    (first.directory / "run.json").write_text("{broken")
    with pytest.warns(UserWarning, match="retraining"):
        pretrained_kjv_run(config=TINY)
    meta = json.loads((first.directory / "run.json").read_text())
    assert meta["config"]["n_embd"] == TINY.n_embd


def test_pretrained_kjv_gpt_smoke_profile():
    model, tok = pretrained_kjv_gpt("smoke")
    assert not model.training and model.config.vocab_size == tok.vocab_size
    ids = tok.encode("In the beginning")[None]
    out = model.generate(ids, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, ids.shape[1] + 5)
    with pytest.raises(ValueError, match="not in the tokenizer"):
        tok.encode("In the beginning \u00e9")
