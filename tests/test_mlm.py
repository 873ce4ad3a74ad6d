"""Tests for dlbook.data.mlm: BERT's 80/10/10 masking rule."""

from __future__ import annotations

import pytest
import torch

from dlbook.data.mlm import mask_tokens
from dlbook.nn.losses import IGNORE_INDEX


def test_masking_statistics_follow_the_80_10_10_rule():
    g = torch.Generator().manual_seed(0)
    vocab, mask_id = 1000, 4
    ids = torch.randint(10, vocab, (200, 500), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    inputs, targets = mask_tokens(ids, mask_id=mask_id, vocab_size=vocab, special_ids=(2, 3),
                                  generator=g)
    chosen = targets != IGNORE_INDEX
    n = chosen.sum().item()
    assert abs(n / (200 * 498) - 0.15) < 0.005  # 15 % of the ordinary tokens
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens never chosen
    assert torch.equal(targets[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs[chosen] == mask_id).sum().item() / n
    same = (inputs[chosen] == ids[chosen]).sum().item() / n
    other = 1 - masked - same
    assert abs(masked - 0.8) < 0.01 and abs(same - 0.1) < 0.01 and abs(other - 0.1) < 0.01
    # the random replacements are spread over the vocabulary
    replaced = inputs[chosen & (inputs != mask_id) & (inputs != ids)]
    assert replaced.unique().numel() > 500


def test_masking_is_reproducible_and_leaves_input_alone():
    ids = torch.randint(5, 50, (4, 30))
    before = ids.clone()
    a = mask_tokens(ids, mask_id=1, vocab_size=50, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, mask_id=1, vocab_size=50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(ids, before)
    everything = mask_tokens(ids, mask_id=1, vocab_size=50, p=1.0)[1]
    assert torch.equal(everything, ids)


def test_bad_arguments():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="p must be"):
        mask_tokens(ids, mask_id=1, vocab_size=5, p=0.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mask_tokens(ids, mask_id=5, vocab_size=5)
