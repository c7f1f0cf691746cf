"""Duplicate images: exact (same decoded pixels) and near (embedding distance below a threshold).

Exact duplicates are found by the SHA-256 of the **decoded pixels** (uint8 RGB array with its shape),
not of the file bytes: the same picture saved twice as PNG with other compression settings, or as PNG
and as lossless WebP, is one image; a JPEG re-encoding changes pixels and is a near-duplicate.

Near-duplicates: images whose embeddings (``curation_core.offline.embeddings``, L2-normalised) lie
within cosine distance ``threshold`` (``1 - cos``) of each other, linked transitively (connected
components of the "closer than threshold" graph, found with ``scipy.spatial.cKDTree.query_pairs`` at
the equivalent Euclidean radius ``sqrt(2 * threshold)``).

In every group one image is kept: the one with the most annotations (ties: the lowest image id);
the others are reported as duplicates of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def pixel_hash(image: np.ndarray) -> str:
    """SHA-256 (hex) of a decoded image: its shape, dtype and pixel bytes (C order)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Duplicate:
    """Image ``index`` duplicates the kept image ``of`` (indices into the input); ``distance``: cosine
    distance of their embeddings (0.0 for exact duplicates)."""

    index: int
    of: int
    distance: float


def _keep_order(n: int, priority: Sequence[float] | None) -> np.ndarray:
    """Rank of each index as the group's keeper: higher priority first, then lower index."""
    p = np.zeros(n) if priority is None else np.asarray(priority, dtype=np.float64)
    order = np.lexsort((np.arange(n), -p))  # by -priority, then index
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def exact_duplicates(hashes: Sequence[str], *, priority: Sequence[float] | None = None) -> list[Duplicate]:
    """Duplicates among images given by their ``pixel_hash`` (input order), sorted by index.

    ``priority`` (e.g. annotation counts): the image of a group with the highest one is kept (ties: lowest index).
    """
    rank = _keep_order(len(hashes), priority)
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        groups.setdefault(h, []).append(i)
    out = []
    for members in groups.values():
        keeper = min(members, key=lambda i: rank[i])
        out.extend(Duplicate(index=i, of=keeper, distance=0.0) for i in members if i != keeper)
    return sorted(out, key=lambda d: d.index)


def near_duplicates(embeddings: np.ndarray, *, threshold: float,
                    priority: Sequence[float] | None = None) -> list[Duplicate]:
    """Near-duplicates among L2-normalised ``embeddings`` float (N, D) (module docstring), sorted by index.

    Parameters
    ----------
    threshold : cosine distance in [0, 2]; pairs at most this far apart are duplicates.
    priority : as in ``exact_duplicates``.

    ``distance`` of a result is its cosine distance to the kept image of its group (which may exceed
    ``threshold`` for a transitive link).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"near_duplicates(embeddings=) expects a 2-d array (N, D); got shape {x.shape}.")
    if not 0.0 <= threshold <= 2.0:
        raise ValueError(f"near_duplicates(threshold=) expects a cosine distance in [0, 2]; got {threshold!r}.")
    n = x.shape[0]
    if n < 2:
        return []
    pairs = cKDTree(x).query_pairs(r=float(np.sqrt(2.0 * threshold)) + 1e-12, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else \
        coo_matrix((n, n))
    _, component = connected_components(graph, directed=False)
    rank = _keep_order(n, priority)
    keeper: dict[int, int] = {}
    for i in range(n):
        c = int(component[i])
        if c not in keeper or rank[i] < rank[keeper[c]]:
            keeper[c] = i
    out = []
    for i in range(n):
        k = keeper[int(component[i])]
        if k != i:
            out.append(Duplicate(index=i, of=k, distance=float(1.0 - x[i] @ x[k])))
    return out
