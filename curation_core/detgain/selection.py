"""Keep b of a super-batch of B scored images (Sun et al., arXiv 2511.14197: B = 80, b = 16).

Two rules:

- ``"top"``: the b highest learnability scores; ties go to the lower index (deterministic).
- ``"sample"``: b draws without replacement from ``softmax(score / temperature)``, via the Gumbel-top-k
  trick (``argsort(score / temperature + Gumbel noise)`` is exactly sequential sampling without
  replacement, Plackett-Luce). ``temperature -> 0`` gives ``"top"``, ``temperature -> inf`` a uniform
  draw. Randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

#: Valid values of ``method=``.
SELECTION_METHODS: tuple[str, ...] = ("top", "sample")


@dataclass(frozen=True)
class Selection:
    """The kept images of a super-batch.

    Attributes
    ----------
    indices : (b,) int64 positions in the super-batch, best first ("top") or in draw order ("sample").
    scores : (b,) float64 their scores.
    """

    indices: np.ndarray
    scores: np.ndarray


def _check(fn: str, scores: ArrayLike, b: int) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{fn}(scores=) expects a 1-D array of B scores; got shape {arr.shape}.")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{fn}(scores=) expects finite numbers; got {arr[bad[0]]} at index {int(bad[0])}.")
    if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 0:
        raise ValueError(f"{fn}(b=) expects a non-negative integer; got {b!r}.")
    return arr


def _ranked(keys: np.ndarray, b: int) -> np.ndarray:
    """Indices of the b largest keys; equal keys by ascending index."""
    return np.lexsort((np.arange(keys.size), -keys))[:b].astype(np.int64)


def select_top(scores: ArrayLike, b: int) -> Selection:
    """The b highest scores of a super-batch (higher = more useful); ties by lower index first.

    Returns exactly ``min(b, B)`` images: a short last super-batch is kept whole.
    """
    arr = _check("select_top", scores, b)
    idx = _ranked(arr, b)
    return Selection(indices=idx, scores=arr[idx])


def select_sampled(scores: ArrayLike, b: int, *, temperature: float, rng: np.random.Generator) -> Selection:
    """``min(b, B)`` images drawn without replacement with probabilities ``softmax(scores / temperature)``."""
    arr = _check("select_sampled", scores, b)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
            temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"select_sampled(temperature=) expects a positive finite number; got {temperature!r}.")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"select_sampled(rng=) expects a numpy.random.Generator; got {type(rng).__name__}.")
    if arr.size == 0:
        return Selection(indices=np.zeros(0, np.int64), scores=arr)
    with np.errstate(over="ignore"):
        logits = (arr - arr.max()) / temperature  # <= 0; -inf only where the gap is astronomically large
    keys = logits + rng.gumbel(size=arr.size)
    idx = _ranked(keys, b)
    return Selection(indices=idx, scores=arr[idx])


def select_batch(scores: ArrayLike, b: int, *, method: str = "top", temperature: float = 1.0,
                 rng: np.random.Generator | None = None) -> Selection:
    """Keep b of B scored images with ``method`` ``"top"`` or ``"sample"`` (which needs ``rng``)."""
    if method == "top":
        return select_top(scores, b)
    if method == "sample":
        if rng is None:
            raise ValueError("select_batch(rng=) expects a numpy.random.Generator when method='sample'; got None.")
        return select_sampled(scores, b, temperature=temperature, rng=rng)
    raise ValueError(f"select_batch(method=) expects one of {', '.join(map(repr, SELECTION_METHODS))}; got {method!r}.")
