"""k-center greedy: against a brute-force greedy and the optimal covering radius on small inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curation_core.offline.diversity import covering_radius, k_center_greedy


def _reference_greedy(x: np.ndarray, k: int, initial: list[int]) -> list[int]:
    """Recompute every distance from scratch at every step (no running minimum)."""
    chosen, picks = list(initial), []
    while len(picks) < min(k, len(x) - len(initial)):
        if not chosen:
            new = int(np.argmin([np.linalg.norm(p - x.mean(axis=0)) for p in x]))
        else:
            d = [-np.inf if i in chosen else min(np.linalg.norm(x[i] - x[c]) for c in chosen) for i in range(len(x))]
            new = int(np.argmax(d))
        chosen.append(new)
        picks.append(new)
    return picks


def test_matches_brute_force_and_is_a_two_approximation() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        n, d, k = int(rng.integers(3, 10)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        x = rng.normal(size=(n, d))
        initial = [int(i) for i in rng.choice(n, size=int(trial % 3 == 0), replace=False)]
        picks = k_center_greedy(x, k, initial=initial)
        assert picks.tolist() == _reference_greedy(x, k, initial)
        assert len(set(picks.tolist()) | set(initial)) == len(picks) + len(initial)
        if not initial:
            optimal = min(covering_radius(x, list(c)) for c in itertools.combinations(range(n), min(k, n)))
            assert covering_radius(x, picks.tolist()) <= 2 * optimal + 1e-12


def test_clusters_get_one_centre_each() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.normal(size=(20, 2)) for c in centres])
    picks = k_center_greedy(x, 3)
    assert sorted(int(p) // 20 for p in picks) == [0, 1, 2]


def test_budget_larger_than_the_pool_and_zero() -> None:
    x = np.eye(3)
    assert sorted(k_center_greedy(x, 10).tolist()) == [0, 1, 2]
    assert k_center_greedy(x, 10, initial=[1]).tolist() and 1 not in k_center_greedy(x, 10, initial=[1]).tolist()
    assert k_center_greedy(x, 0).size == 0


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"k_center_greedy\(budget=\) expects an integer >= 0; got -1"):
        k_center_greedy(np.eye(2), -1)
    with pytest.raises(ValueError, match=r"k_center_greedy\(initial=\) expects indices in \[0, 2\)"):
        k_center_greedy(np.eye(2), 1, initial=[5])
