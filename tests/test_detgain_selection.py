"""Keeping b of B images: exactly b, deterministic ties, softmax sampling and its temperature limits."""

from __future__ import annotations

import numpy as np
import pytest

from curation_core.detgain import select_batch, select_sampled, select_top


def test_top_b_returns_exactly_b_best_with_ties_to_the_lower_index() -> None:
    sel = select_top([1.0, 3.0, 3.0, 2.0, 3.0], 2)
    assert sel.indices.tolist() == [1, 2] and sel.scores.tolist() == [3.0, 3.0]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=80)
    sel = select_top(scores, 16)
    assert sel.indices.size == 16 and len(set(sel.indices.tolist())) == 16
    assert sel.indices.tolist() == np.argsort(-scores, kind="stable")[:16].tolist()
    assert select_top(scores, 80).indices.size == 80


def test_sampling_is_reproducible_and_returns_b_distinct() -> None:
    scores = np.random.default_rng(1).normal(size=80)
    a = select_sampled(scores, 16, temperature=0.5, rng=np.random.default_rng(7))
    b = select_sampled(scores, 16, temperature=0.5, rng=np.random.default_rng(7))
    assert a.indices.tolist() == b.indices.tolist()
    assert len(set(a.indices.tolist())) == 16
    np.testing.assert_array_equal(a.scores, scores[a.indices])


def test_zero_temperature_limit_is_top_b() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(size=80) * 1e-3  # small gaps, still distinct
    top = select_top(scores, 16).indices
    for seed in range(5):
        sel = select_sampled(scores, 16, temperature=1e-12, rng=np.random.default_rng(seed))
        assert sel.indices.tolist() == top.tolist()


def test_infinite_temperature_limit_is_uniform() -> None:
    scores = np.arange(10, dtype=float)
    rng = np.random.default_rng(3)
    counts = np.zeros(10)
    draws = 4000
    for _ in range(draws):
        counts[select_sampled(scores, 3, temperature=1e9, rng=rng).indices] += 1
    # Each index is kept with probability 3/10; binomial standard error ~ 0.007.
    np.testing.assert_allclose(counts / draws, 0.3, atol=0.03)


def test_first_draw_follows_softmax() -> None:
    scores = np.array([0.0, 1.0, 2.0])
    rng = np.random.default_rng(4)
    draws = 20000
    first = np.bincount([select_sampled(scores, 1, temperature=1.0, rng=rng).indices[0] for _ in range(draws)],
                        minlength=3) / draws
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(first, expected, atol=0.015)


def test_dispatch_and_errors() -> None:
    assert select_batch([3.0, 1.0, 2.0], 2).indices.tolist() == [0, 2]
    assert select_batch([3.0, 1.0, 2.0], 2, method="sample", temperature=1e-9,
                        rng=np.random.default_rng(0)).indices.tolist() == [0, 2]
    # exactly min(available, requested): a short last super-batch is kept whole
    assert select_top([1.0, 2.0, 3.0], 4).indices.tolist() == [2, 1, 0]
    assert select_top([1.0, 2.0, 3.0], 0).indices.tolist() == []
    assert sorted(select_sampled([1.0, 2.0], 5, temperature=1.0, rng=np.random.default_rng(1)).indices.tolist()) == [0, 1]
    with pytest.raises(ValueError, match=r"select_top\(b=\) expects a non-negative integer; got -1"):
        select_top([1.0, 2.0, 3.0], -1)
    with pytest.raises(ValueError, match=r"select_top\(b=\) expects a non-negative integer; got True"):
        select_top([1.0, 2.0], True)
    with pytest.raises(ValueError, match=r"select_top\(scores=\) expects finite numbers; got nan at index 1"):
        select_top([1.0, float("nan")], 1)
    with pytest.raises(ValueError, match=r"select_top\(scores=\) expects a 1-D array of B scores; got shape \(1, 2\)"):
        select_top([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match=r"select_sampled\(temperature=\) expects a positive finite number; got 0"):
        select_sampled([1.0, 2.0], 1, temperature=0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"select_sampled\(temperature=\) expects a positive finite number; got inf"):
        select_sampled([1.0, 2.0], 1, temperature=float("inf"), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"select_sampled\(rng=\) expects a numpy.random.Generator; got int"):
        select_sampled([1.0, 2.0], 1, temperature=1.0, rng=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"select_batch\(rng=\) expects a numpy.random.Generator when method='sample'"):
        select_batch([1.0, 2.0], 1, method="sample")
    with pytest.raises(ValueError, match=r"select_batch\(method=\) expects one of 'top', 'sample'; got 'best'"):
        select_batch([1.0, 2.0], 1, method="best")
