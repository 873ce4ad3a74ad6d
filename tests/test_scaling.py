"""Tests of dlbook.scaling: power-law fits, the compute frontier, token-budget training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook.bench import flops_per_token, matmul_params
from dlbook.nn.gpt import GPT, GPTConfig
from dlbook.scaling import compute_frontier, fit_power_law, train_for_tokens


@pytest.mark.parametrize("seed", range(5))
def test_fit_recovers_exponent_with_noise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    alpha, a = rng.uniform(0.03, 0.6), rng.uniform(0.5, 50)
    x = np.logspace(rng.uniform(0, 5), rng.uniform(8, 14), 20)
    y = a * x**-alpha * np.exp(rng.normal(0, 0.01, x.size))
    fit = fit_power_law(x, y)
    assert abs(fit["alpha"] - alpha) < 0.01
    assert abs(np.log(fit["a"]) - np.log(a)) < 0.15
    assert fit["E"] == 0.0
    assert 0.002 < fit["rms"] < 0.02  # about the noise level


def test_fit_matches_numpy_lstsq_and_is_exact_for_two_points() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.uniform(1, 1e6, 9), rng.uniform(0.5, 5, 9)
    design = np.stack([np.ones(9), np.log(x)], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    fit = fit_power_law(x, y)
    assert fit["alpha"] == pytest.approx(-c1, rel=1e-9)
    assert fit["a"] == pytest.approx(np.exp(c0), rel=1e-9)
    two = fit_power_law([10.0, 1000.0], [2.0, 1.0])
    assert two["alpha"] == pytest.approx(np.log(2) / np.log(100))
    assert two["rms"] < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_fit_with_irreducible_term(seed: int) -> None:
    rng = np.random.default_rng(seed)
    e, a, alpha = rng.uniform(0.5, 2.0), rng.uniform(5, 50), rng.uniform(0.1, 0.3)
    x = np.logspace(2, 10, 25)  # from far above the floor E down to close to it
    y = (e + a * x**-alpha) * np.exp(rng.normal(0, 0.002, x.size))
    fit = fit_power_law(x, y, irreducible=True)
    assert abs(fit["alpha"] - alpha) < 0.1 * alpha
    assert abs(fit["E"] - e) < 0.05 * e
    # The plain fit, forced through a flattening curve, underestimates the exponent.
    assert fit_power_law(x, y)["alpha"] < alpha


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        ([1.0], [1.0], {}, "at least 2"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], {"irreducible": True}, "at least 4"),
        ([1.0, -2.0], [1.0, 2.0], {}, "positive"),
        ([1.0, 2.0], [0.0, 2.0], {}, "positive"),
        ([1.0, np.nan], [1.0, 2.0], {}, "positive"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], {}, "same shape"),
        ([[1.0, 2.0]], [[1.0, 2.0]], {}, "1-D"),
        ([3.0, 3.0], [1.0, 2.0], {}, "equal"),
    ],
)
def test_fit_errors(x: list, y: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, y, **kwargs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(1e-3, 1e9), st.floats(-10, 10), st.integers()), min_size=1,
        max_size=30,
    )
)
def test_frontier_properties(points: list[tuple[float, float, int]]) -> None:
    front = compute_frontier(points)
    assert front  # never empty
    assert all(p in points for p in front)  # a subset of the input items
    cs, ls = [p[0] for p in front], [p[1] for p in front]
    assert all(b > a for a, b in zip(cs, cs[1:], strict=False))  # compute increases
    assert all(b < a for a, b in zip(ls, ls[1:], strict=False))  # loss strictly decreases
    # Brute force: at every point's compute, the best frontier loss so far equals the best
    # loss of all points so far (the frontier is the lower envelope).
    for c, _loss, _ in points:
        beaten = min(q[1] for q in points if q[0] <= c)
        assert min(p[1] for p in front if p[0] <= c) == beaten
    assert front[0][1] == min(q[1] for q in points if q[0] == min(cs))
    assert front[-1][1] == min(q[1] for q in points)


def test_frontier_example_and_errors() -> None:
    pts = [(1.0, 5.0, "a"), (2.0, 4.0, "b"), (3.0, 4.5, "c"), (4.0, 3.0, "d"), (4.0, 2.0, "e")]
    assert compute_frontier(pts) == [pts[0], pts[1], pts[4]]
    with pytest.raises(ValueError, match="at least one"):
        compute_frontier([])
    with pytest.raises(ValueError, match="compute"):
        compute_frontier([(0.0, 1.0)])
    with pytest.raises(ValueError, match="compute"):
        compute_frontier([(1.0, float("nan"))])
    with pytest.raises(ValueError, match=r"\(compute, loss"):
        compute_frontier([(1.0,)])


def test_non_embedding_params_one_definition() -> None:
    """Kaplan's N (GPT.num_params(non_embedding=True)) leaves out both tables; the FLOP count's
    matmul parameters leave out only the position table (the tied token table is the output
    layer's matrix product)."""
    cfg = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg)
    inner = ("blocks", "ln_f")
    expected = sum(p.numel() for n, p in model.named_parameters() if n.startswith(inner))
    assert model.num_params(non_embedding=True) == expected
    assert model.num_params() == expected + 50 * 16 + 8 * 16  # tied head counted once
    assert matmul_params(model) - model.num_params(non_embedding=True) == 50 * 16
    rope = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, rope=True))
    assert rope.num_params(non_embedding=True) == expected  # no position table to leave out
    assert matmul_params(rope) == rope.num_params()


def test_train_for_tokens_small_run() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # A stream with structure: a repeated pattern of 8 symbols with a little noise.
    stream = np.tile(np.arange(8), 400) + (rng.random(3200) < 0.05)
    stream = (stream % 8).astype(np.int64)
    train, val = stream[:2800], stream[2800:]
    cfg = GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add synchronisation on a busy CPU
    try:
        r = train_for_tokens(cfg, 8 * 8 * 20, train, val, batch_size=8, lr=1e-2,
                             eval_batches=3, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert r["steps"] == 20 and r["D"] == 20 * 64
    n = GPT(cfg).num_params(non_embedding=True)
    assert r["N"] == n and r["C"] == 6 * n * r["D"]
    assert r["C_attn"] == flops_per_token(cfg, matmul_params(GPT(cfg))) * r["D"]
    assert r["val_loss"] < np.log(8) - 0.5  # learnt much of the pattern
    with pytest.raises(ValueError, match="tokens"):
        train_for_tokens(cfg, 0, train, val)
    with pytest.raises(ValueError, match="GPT-2 style"):
        train_for_tokens(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16,
                                   rope=True), 64, train, val)
