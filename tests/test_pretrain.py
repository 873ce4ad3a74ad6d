"""Tests of dlbook.pretrain: the configuration, the loss, the optimizer, evaluation, and the
pretraining loop (learning, exact resume, refusals).

The conftest points ``DLBOOK_CACHE`` at a fresh temporary directory for every test.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlbook.checkpoint import CheckpointError
from dlbook.data.lm import sample_windows
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.pretrain import (
    IGNORE_INDEX,
    PretrainConfig,
    estimate_loss,
    lm_loss,
    make_optimizer,
    pretrain,
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


def _gpt(vocab: int = 20) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=16))


def test_config_validation():
    with pytest.raises(ValueError, match="warmup"):
        PretrainConfig(max_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        PretrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="val_fraction"):
        PretrainConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="betas"):
        PretrainConfig(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="seed"):
        PretrainConfig(seed=-1)
    with pytest.raises(ValueError, match="max_steps"):
        PretrainConfig(max_steps=10.5)  # type: ignore[arg-type]
    assert PretrainConfig(grad_clip=None, corpus_chars=None, warmup_steps=0).grad_clip is None


def test_lm_loss_and_gpt_forward_share_the_ignore_rule():
    model = _gpt()
    x = torch.randint(0, 20, (3, 16))
    y = torch.randint(0, 20, (3, 16))
    y[0, :5] = IGNORE_INDEX  # e.g. prompt tokens of supervised fine-tuning
    y[2, -3:] = IGNORE_INDEX  # e.g. padding
    logits, loss = model(x, y)
    keep = y != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], y[keep])  # the mean over scored positions only
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(lm_loss((logits, loss), y), expected)
    torch.testing.assert_close(lm_loss(logits, y), expected)
    assert IGNORE_INDEX == -100  # PyTorch's and Hugging Face's default
    with pytest.raises(ValueError, match="targets must have shape"):
        lm_loss(logits, y[:, :-1])
    with pytest.raises(ValueError, match="targets must have shape"):
        model(x, y[:, :-1])


def test_make_optimizer_decays_matrices_only():
    model = _gpt()
    model.ln_f.weight.requires_grad_(False)  # frozen parameters are left out
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids == trainable  # every trainable tensor once: the tied wte/lm_head is not doubled
    assert id(model.ln_f.weight) not in ids and id(model.wte.weight) in ids
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["lr"] == 1e-3
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        make_optimizer(model, 1e-3, 0.1)


def test_estimate_loss_is_fixed_by_seed_and_matches_a_direct_computation():
    model = _gpt()
    train, _ = _data()
    a = estimate_loss(model, train, 16, 4, n_batches=2, seed=5)
    assert not model.training  # left in eval mode, as documented
    assert a == estimate_loss(model, train, 16, 4, n_batches=2, seed=5)
    assert a != estimate_loss(model, train, 16, 4, n_batches=2, seed=6)
    g = torch.Generator().manual_seed(5)
    direct = []
    with torch.no_grad():
        for _ in range(2):
            x, y = sample_windows(train, 16, 4, g)
            direct.append(F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item())
    assert a == pytest.approx(sum(direct) / 2, rel=1e-6)
    assert abs(a - math.log(20)) < 0.2  # an untrained model is close to uniform
    with pytest.raises(ValueError, match="n_batches"):
        estimate_loss(model, train, 16, 4, n_batches=0)


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
    with pytest.raises(ValueError, match="PretrainConfig"):
        pretrain({"n_layer": 1}, train, val, 20)  # type: ignore[arg-type]
