"""Model export (dlbook.export): torch.export and ONNX (Runtime) against the eager classifier."""

from __future__ import annotations

import pytest
import torch

from dlbook.checkpoint import CheckpointError
from dlbook.data.optional import MissingDependencyError
from dlbook.export import (
    export_classifier,
    load_exported,
    onnx_logits,
    onnx_session,
    save_exported,
    to_onnx,
)
from dlbook.finetune import SequenceClassifier
from dlbook.nn.transformer import TransformerEncoder, TransformerEncoderConfig

V, BLOCK, K = 50, 24, 4


@pytest.fixture(scope="module")
def classifier() -> SequenceClassifier:
    """A small BERT-layout classifier (post-norm, token types, embedding norm: MiniLM's
    layout), random weights."""
    torch.manual_seed(0)
    encoder = TransformerEncoder(TransformerEncoderConfig(
        vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32, head=False,
        norm_first=False, type_vocab_size=2, emb_norm=True, norm_eps=1e-12, dropout=0.1,
    ))
    return SequenceClassifier(encoder, K, dropout=0.1).eval()


def batch(b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    return ids, torch.arange(t)[None, :] < lengths[:, None]


@pytest.fixture(scope="module")
def program(classifier):
    ids, mask = batch(3, 18, seed=1)
    # a strided slice as the example: the export must not tie the length to its stride
    ids, mask = ids[:, :9], mask[:, :9]
    assert not ids.is_contiguous()
    return export_classifier(classifier.train(), ids, mask)  # traced in eval mode anyway


@pytest.fixture(scope="module")
def onnx_path(program, tmp_path_factory):
    return to_onnx(program, tmp_path_factory.mktemp("onnx") / "classifier.onnx")


# Shapes other than the example's (3, 9): dynamic batch and sequence really work.
SHAPES = [(5, 13), (1, 1), (2, BLOCK)]


def test_exported_program_equals_eager_on_new_shapes(classifier, program, tmp_path):
    assert classifier.training  # export_classifier restored the mode it found
    classifier.eval()
    exported = program.module()
    for b, t in SHAPES:
        ids, mask = batch(b, t, seed=b * t)
        with torch.no_grad():
            torch.testing.assert_close(exported(ids, mask), classifier(ids, mask),
                                       atol=1e-5, rtol=1e-5)
    path = save_exported(program, tmp_path / "c.pt2")
    ids, mask = batch(4, 7, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(path).module()(ids, mask),
                                   classifier(ids, mask), atol=1e-5, rtol=1e-5)


def test_onnx_runtime_equals_eager_on_new_shapes(classifier, onnx_path):
    classifier.eval()
    session = onnx_session(onnx_path)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    for b, t in SHAPES:
        ids, mask = batch(b, t, seed=10 + b * t)
        with torch.no_grad():
            eager = classifier(ids, mask)
        got = onnx_logits(session, ids, mask)
        assert got.shape == (b, K)
        torch.testing.assert_close(got, eager, atol=1e-4, rtol=1e-4)
    ids, _ = batch(2, 6, seed=5)  # a path instead of a session; no mask = all real; 0/1 mask
    with torch.no_grad():
        eager = classifier(ids)
    torch.testing.assert_close(onnx_logits(onnx_path, ids), eager, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(onnx_logits(session, ids, torch.ones(2, 6, dtype=torch.int64)),
                               eager, atol=1e-4, rtol=1e-4)


def test_export_errors(classifier, onnx_path, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="at least 2 rows and 2 tokens"):
        export_classifier(classifier, torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size=24"):
        export_classifier(classifier, torch.zeros(2, BLOCK + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        export_classifier(classifier, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="mask must have the shape"):
        onnx_logits(onnx_path, torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4).bool())
    with pytest.raises(ValueError, match="needs example_ids"):
        to_onnx(classifier, tmp_path / "x.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(onnx_path.read_bytes()[:200])  # a truncated download
    with pytest.raises(CheckpointError, match="not a valid ONNX model"):
        onnx_session(bad)
    with pytest.raises(CheckpointError, match="no ONNX model"):
        onnx_session(tmp_path / "missing.onnx")
    with pytest.raises(CheckpointError, match="not a readable exported program"):
        load_exported(bad)
    import sys  # a missing onnxruntime: a clear error naming the pip install

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        onnx_session(onnx_path)
