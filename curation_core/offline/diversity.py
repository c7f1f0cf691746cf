"""A diversity subset for a budget: k-center greedy core-set (Sener & Savarese, arXiv 1708.00489).

Greedy 2-approximation of the k-center problem: repeatedly add the point farthest (Euclidean) from
the points chosen so far, so that every point ends close to a chosen one. With ``r*`` the smallest
covering radius of any ``k`` centres, the greedy radius is at most ``2 r*`` (Gonzalez 1985).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def k_center_greedy(embeddings: np.ndarray, budget: int, *, initial: Sequence[int] = ()) -> np.ndarray:
    """Indices of ``budget`` points of ``embeddings`` float (N, D), in the order they were chosen.

    Parameters
    ----------
    budget : how many to choose, ``0 <= budget``; ``min(budget, N - len(initial))`` are returned.
    initial : indices already chosen (e.g. the labelled set); never returned, but covered points.
        Without them the first point is the one nearest the mean of all points.

    Ties (equal distances) go to the lowest index, so the result depends on the order of the rows
    only through ties.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"k_center_greedy(embeddings=) expects a 2-d array (N, D); got shape {x.shape}.")
    if budget < 0:
        raise ValueError(f"k_center_greedy(budget=) expects an integer >= 0; got {budget}.")
    n = x.shape[0]
    chosen = [int(i) for i in initial]
    if any(not 0 <= i < n for i in chosen):
        raise ValueError(f"k_center_greedy(initial=) expects indices in [0, {n}); got {sorted(chosen)[:5]}.")
    count = min(budget, n - len(set(chosen)))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    nearest = np.full(n, np.inf)  # distance of every point to the chosen set
    for c in chosen:
        nearest = np.minimum(nearest, np.linalg.norm(x - x[c], axis=1))
    nearest[chosen] = -np.inf
    picks: list[int] = []
    while len(picks) < count:
        if not chosen and not picks:
            new = int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))
        else:
            new = int(np.argmax(nearest))  # the farthest point; the first maximum: lowest index on ties
        picks.append(new)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[new], axis=1))
        nearest[new] = -np.inf
    return np.asarray(picks, dtype=np.int64)


def covering_radius(embeddings: np.ndarray, centres: Sequence[int]) -> float:
    """Largest distance from a point of ``embeddings`` (N, D) to its nearest centre (inf without centres)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(centres) == 0:
        return float("inf")
    return float(np.max(np.min(np.linalg.norm(x[:, None, :] - x[None, list(centres), :], axis=2), axis=1)))
