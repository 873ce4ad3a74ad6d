"""Tests of dlbook.artifacts: the cache key, the generic cache of trained runs, and the book's
own pretrained character-level GPT (trained on first use, reloaded, retrained when damaged).

The conftest points ``DLBOOK_CACHE`` at a fresh temporary directory for every test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbook.artifacts import (
    cached_record_run,
    cached_run,
    config_key,
    kjv_config,
    kjv_tokens,
    pretrained_kjv_gpt,
    pretrained_kjv_run,
    run_directory,
)
from dlbook.checkpoint import CheckpointError, read_json
from dlbook.config import cache_dir
from dlbook.data.text import load_kjv
from dlbook.pretrain import PretrainConfig

TINY = PretrainConfig(
    n_layer=1, n_head=2, n_embd=16, block_size=16, corpus_chars=20_000, batch_size=4,
    max_steps=8, warmup_steps=2, eval_interval=4, eval_batches=1,
)


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
    with pytest.raises(ValueError, match="dataclass"):
        config_key({"n_layer": 1})
    with pytest.raises(ValueError):
        kjv_config("huge")


@dataclasses.dataclass(frozen=True)
class Recipe:
    size: int = 3


def test_cached_run_builds_once_and_rebuilds_damaged_entries():
    """The generic mechanism, with a run that writes one file."""
    calls: list[Path] = []

    def build(directory: Path) -> list[int]:
        calls.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "values.json").write_text(json.dumps(list(range(3))))
        return list(range(3))

    def load(directory: Path) -> list[int]:
        return read_json(directory / "values.json", "no values")

    first, built = cached_run("toy", Recipe(), build, load)
    assert built and first == [0, 1, 2] and len(calls) == 1
    again, built = cached_run("toy", Recipe(), build, load)
    assert not built and again == first and len(calls) == 1  # loaded, not rebuilt
    assert run_directory("toy", Recipe()) == calls[0]
    assert run_directory("toy", Recipe(size=4)) != calls[0]
    (calls[0] / "values.json").write_text("{broken")
    with pytest.warns(UserWarning, match="cached toy unusable, retraining"):
        _, built = cached_run("toy", Recipe(), build, load)
    assert built and len(calls) == 2
    (calls[0] / "run.json").unlink()  # an interrupted build leaves no marker
    with pytest.warns(UserWarning, match="no finished run"):
        _, built = cached_run("toy", Recipe(), build, load)
    assert built
    _, built = cached_run("toy", Recipe(), build, load, retrain=True)
    assert built and len(calls) == 4
    with pytest.raises(ValueError, match="run name"):
        run_directory("../escape", Recipe())


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


@pytest.mark.parametrize(
    "damage",
    [
        {"n_head": "two"},  # a TypeError/ValueError inside the config class
        {"rope": "false"},  # would have switched RoPE on before configs were validated
        {"n_embd": 17},  # n_embd % n_head != 0: ValueError from the cross-field check
        {"unknown_field": 1},  # TypeError: unexpected keyword
    ],
)
def test_bad_config_values_in_the_cache_are_retrained(damage):
    first = pretrained_kjv_run(config=TINY)
    path = first.directory / "config.json"
    meta = json.loads(path.read_text())
    meta["config"].update(damage)
    path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="config does not fit GPT"):
        again = pretrained_kjv_run(config=TINY)
    assert again.trained_now and _same_weights(again.model, first.model)


def test_newer_model_format_is_refused_and_retrained():
    first = pretrained_kjv_run(config=TINY)
    path = first.directory / "config.json"
    meta = json.loads(path.read_text())
    meta["format_version"] = 99
    path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="format version 99"):
        assert pretrained_kjv_run(config=TINY).trained_now
    with pytest.raises(CheckpointError, match="format version 99"):
        from dlbook.checkpoint import read_model_config

        path.write_text(json.dumps(meta))
        read_model_config(first.directory)


def test_pretrained_kjv_gpt_smoke_profile():
    model, tok = pretrained_kjv_gpt("smoke")
    assert not model.training and model.config.vocab_size == tok.vocab_size
    ids = tok.encode("In the beginning")[None]
    out = model.generate(ids, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, ids.shape[1] + 5)
    with pytest.raises(ValueError, match="not in the tokenizer"):
        tok.encode("In the beginning \u00e9")


@dataclasses.dataclass
class _RecordConfig:
    lr: float = 0.1


def test_cached_record_run_trains_once_and_rebuilds_a_run_that_lost_its_adapter():
    calls = []

    def fine_tune(adapter: Path) -> dict:
        calls.append(adapter)
        adapter.write_bytes(b"weights")
        return {"loss": 0.5 + len(calls)}

    record, adapter, built = cached_record_run("tiny-adapter", _RecordConfig(), fine_tune)
    assert built and record == {"loss": 1.5} and adapter.read_bytes() == b"weights"
    assert read_json(adapter.parent / "metrics.json") == record
    again, adapter_again, built = cached_record_run("tiny-adapter", _RecordConfig(), fine_tune)
    assert (again, adapter_again, built) == (record, adapter, False) and len(calls) == 1
    adapter.unlink()  # a damaged entry is reported and trained again, not half-loaded
    with pytest.warns(UserWarning, match="adapter.safetensors"):
        rebuilt, _, built = cached_record_run("tiny-adapter", _RecordConfig(), fine_tune)
    assert built and rebuilt == {"loss": 2.5} and len(calls) == 2


def test_cached_record_run_without_adapter_keeps_only_the_record():
    def fine_tune(adapter):
        assert adapter is None
        return {"accuracy": 0.9}

    record, adapter, built = cached_record_run("tiny-full", _RecordConfig(), fine_tune,
                                               adapter=False)
    assert (record, adapter, built) == ({"accuracy": 0.9}, None, True)
    assert cached_record_run("tiny-full", _RecordConfig(), fine_tune, adapter=False)[2] is False
