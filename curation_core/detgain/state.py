"""Running statistics of a model's predictions on a set D: what every DetGain estimator reads.

One ``DetGainState`` per model (teacher, student). It holds a *bank* of matched predictions, one chunk
per ``update``, and derives from it, lazily and cached until the next update:

- per category and IoU threshold, weighted TP / FP score histograms and ground-truth counts (uniform
  and empirical estimators), maintained incrementally;
- the exact index of ``exact.build_exact_index`` over every banked detection (exact estimator).

Memory stays bounded by configuration (``StateConfig``): a FIFO window of the most recent images, an
exponential decay of older updates (updates whose weight fell below ``min_weight`` are dropped), both,
or neither (keep everything: the teacher's state over the whole training set, built once). Categories
are an open vocabulary: an update may bring categories the state has never seen.

Images seen twice (the same id in two updates) are kept as two images; among equal scores the earlier
one ranks first. Exact DetGain needs equal weights, so it refuses a decayed state.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from curation_core.detgain.empirical import (
    DEFAULT_NUM_BINS,
    EmpiricalTables,
    ScoreHistogram,
    empirical_tables,
    histogram_counts,
)
from curation_core.detgain.envelope import EnvelopeIndex, build_envelope_index
from curation_core.detgain.exact import ExactIndex, build_exact_index
from curation_core.detgain.records import DetectionTable, concat_tables, select_images, table_from_matches
from curation_core.errors import ConfigError, DataError
from curation_core.io import write_bytes_atomic

#: Identifies a saved state file; bump the version when the layout changes.
STATE_FORMAT = "detcurate-detgain-state"
STATE_VERSION = 1
#: Weighted counts closer to 0 than this after an eviction are rounding residue, set to 0.
_RESIDUE = 1e-9


@dataclass(frozen=True)
class StateConfig:
    """How a ``DetGainState`` forgets, and its histogram resolution.

    Attributes
    ----------
    window : keep only the most recent ``window`` images (FIFO); None keeps every image.
    decay : at each update, multiply the weight of everything seen so far by ``decay`` in (0, 1);
        None: no decay.
    min_weight : with ``decay``, updates whose weight ``decay ** age`` fell below this are dropped, so
        at most ``max_updates_kept`` updates stay in memory. Must lie in (0, 1).
    num_bins : score histogram bins over [0, 1] (empirical estimator).
    """

    window: int | None = None
    decay: float | None = None
    min_weight: float = 1e-3
    num_bins: int = DEFAULT_NUM_BINS

    def __post_init__(self) -> None:
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int)
                                        or self.window < 1):
            raise ConfigError(f"StateConfig(window=) expects a positive integer or None; got {self.window!r}.")
        if self.decay is not None and not (isinstance(self.decay, int | float) and 0.0 < self.decay < 1.0):
            raise ConfigError(f"StateConfig(decay=) expects a number in (0, 1) or None; got {self.decay!r}.")
        if not (isinstance(self.min_weight, int | float) and 0.0 < self.min_weight < 1.0):
            raise ConfigError(f"StateConfig(min_weight=) expects a number in (0, 1); got {self.min_weight!r}.")
        if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int) or not 1 <= self.num_bins <= 1 << 16:
            raise ConfigError(f"StateConfig(num_bins=) expects an integer in [1, 65536]; got {self.num_bins!r}.")

    @property
    def max_updates_kept(self) -> int | None:
        """Updates kept under decay (``ceil(log(min_weight) / log(decay))``); None without decay."""
        if self.decay is None:
            return None
        return math.ceil(math.log(self.min_weight) / math.log(self.decay))


@dataclass(frozen=True)
class _Chunk:
    step: int
    table: DetectionTable


class DetGainState:
    """Statistics of one model's matched predictions on the set D (see the module docstring).

    Parameters
    ----------
    iou_thresholds : (T,) IoU thresholds of every update (``DatasetMatches.iou_thresholds``).
    config : forgetting and histogram resolution.
    """

    def __init__(self, iou_thresholds: np.ndarray, *, config: StateConfig | None = None) -> None:
        thr = np.asarray(iou_thresholds, dtype=np.float64)
        if thr.ndim != 1 or thr.size == 0:
            raise ValueError(f"DetGainState(iou_thresholds=) expects a non-empty 1-D array; got shape {thr.shape}.")
        self.config = config or StateConfig()
        self.iou_thresholds = thr
        self._vocab = np.zeros(0, dtype=np.int64)
        self._chunks: deque[_Chunk] = deque()
        self._step = 0
        b, t = self.config.num_bins, thr.size
        self._tp = np.zeros((0, b, t))
        self._fp = np.zeros((0, b, t))
        self._gt = np.zeros(0)
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------
    # Construction and updates

    @classmethod
    def from_matches(cls, matches: Any, *, config: StateConfig | None = None) -> DetGainState:
        """A state holding the images of ``matches`` (a ``DatasetMatches``) as its first update."""
        state = cls(matches.iou_thresholds, config=config)
        state.update(matches)
        return state

    @classmethod
    def from_predictions(cls, gt: Any, detections: list[dict[str, Any]], *,
                         config: StateConfig | None = None) -> DetGainState:
        """Match COCO results against ``gt`` (``matching.match_dataset``) and build a state from them."""
        from curation_core.matching import match_dataset

        return cls.from_matches(match_dataset(gt, detections), config=config)

    def update(self, matches: Any) -> None:
        """Add the images of ``matches`` as the newest update, then forget as configured."""
        table = table_from_matches(matches, fn="DetGainState.update")
        if not np.array_equal(table.iou_thresholds, self.iou_thresholds):
            raise ValueError(f"DetGainState.update(matches=) expects IoU thresholds {self.iou_thresholds.tolist()}; "
                             f"got {table.iou_thresholds.tolist()}.")
        self._grow_vocabulary(table.category_ids)
        if self.config.decay is not None:
            for arr in (self._tp, self._fp, self._gt):
                arr *= self.config.decay
        self._step += 1
        self._add(table, 1.0)
        self._chunks.append(_Chunk(self._step, table))
        self._forget()
        self._cache.clear()

    def _grow_vocabulary(self, category_ids: np.ndarray) -> None:
        vocab = np.union1d(self._vocab, category_ids).astype(np.int64)
        if vocab.size == self._vocab.size:
            return
        rows = np.searchsorted(vocab, self._vocab)
        for name in ("_tp", "_fp", "_gt"):
            old = getattr(self, name)
            new = np.zeros((vocab.size, *old.shape[1:]))
            new[rows] = old
            setattr(self, name, new)
        self._vocab = vocab

    def _add(self, table: DetectionTable, weight: float) -> None:
        tp, fp, gt = histogram_counts(table, self.config.num_bins, np.full(table.num_images, weight), self._vocab)
        self._tp += tp
        self._fp += fp
        self._gt += gt

    def _weight(self, chunk: _Chunk) -> float:
        return 1.0 if self.config.decay is None else float(self.config.decay ** (self._step - chunk.step))

    def _forget(self) -> None:
        evicted = False
        if self.config.decay is not None:
            while self._chunks and self._weight(self._chunks[0]) < self.config.min_weight:
                chunk = self._chunks.popleft()
                self._add(chunk.table, -self._weight(chunk))
                evicted = True
        if self.config.window is not None:
            excess = self.num_images - self.config.window
            while excess > 0:
                chunk = self._chunks.popleft()
                n = chunk.table.num_images
                # Oldest first: within an update, images leave in id order.
                drop = min(excess, n)
                self._add(select_images(chunk.table, np.arange(drop)), -self._weight(chunk))
                if drop < n:
                    self._chunks.appendleft(_Chunk(chunk.step, select_images(chunk.table, np.arange(drop, n))))
                excess -= drop
                evicted = True
        if evicted:
            for arr in (self._tp, self._fp, self._gt):
                arr[np.abs(arr) < _RESIDUE] = 0.0

    # ------------------------------------------------------------------------------------------
    # Read access

    @property
    def category_ids(self) -> np.ndarray:
        """(K,) int64 every category seen, ascending."""
        return self._vocab

    @property
    def num_images(self) -> int:
        return sum(c.table.num_images for c in self._chunks)

    @property
    def num_detections(self) -> int:
        return sum(c.table.num_detections for c in self._chunks)

    @property
    def num_updates(self) -> int:
        """Updates applied since the state was created (evicted ones included)."""
        return self._step

    def image_weights(self) -> np.ndarray:
        """(num_images,) float64 weight of every banked image, oldest update first."""
        return np.concatenate([np.zeros(0)] + [np.full(c.table.num_images, self._weight(c)) for c in self._chunks])

    def num_gt(self) -> np.ndarray:
        """(K,) float64 weighted non-ignored ground-truth boxes per category."""
        return self._gt.copy()

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, T) float64 weighted true and false positives per (category, IoU threshold) (cached)."""
        if "totals" not in self._cache:
            self._cache["totals"] = (np.maximum(self._tp.sum(axis=1), 0.0), np.maximum(self._fp.sum(axis=1), 0.0))
        return self._cache["totals"]

    def histogram(self) -> ScoreHistogram:
        """Weighted score histograms of the banked predictions."""
        return ScoreHistogram(self._vocab, self._tp.copy(), self._fp.copy(), self._gt.copy())

    def empirical_tables(self) -> EmpiricalTables:
        """Lookup tables of the empirical estimator (cached until the next update)."""
        if "empirical" not in self._cache:
            self._cache["empirical"] = empirical_tables(ScoreHistogram(self._vocab, self._tp, self._fp, self._gt))
        return self._cache["empirical"]

    def table(self) -> DetectionTable:
        """Every banked image in one ``DetectionTable`` (tie order), ignoring weights."""
        if "table" not in self._cache:
            self._cache["table"] = concat_tables([c.table for c in self._chunks], self._vocab, self.iou_thresholds)
        return self._cache["table"]

    def exact_index(self) -> ExactIndex:
        """Index of the exact estimator; refuses a decayed state.

        Built from the whole bank in O(M log M) (about 0.5 s for a million detections) and cached until
        the next update: exact scoring suits a fixed state (the teacher's) or a small window.
        """
        if self.config.decay is not None:
            raise ValueError("exact DetGain needs equal image weights; this state decays "
                             f"(StateConfig.decay={self.config.decay}): use estimator='empirical' or 'uniform'.")
        if "exact" not in self._cache:
            self._cache["exact"] = build_exact_index(self.table())
        return self._cache["exact"]

    def envelope_index(self) -> EnvelopeIndex:
        """Index of the envelope estimator (one sort of the bank, cached until the next update); refuses
        a decayed state, as ``exact_index`` does."""
        if self.config.decay is not None:
            raise ValueError("envelope DetGain needs equal image weights; this state decays "
                             f"(StateConfig.decay={self.config.decay}): use estimator='empirical' or 'uniform'.")
        if "envelope" not in self._cache:
            self._cache["envelope"] = build_envelope_index(self.table())
        return self._cache["envelope"]

    # ------------------------------------------------------------------------------------------
    # Persistence

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the configuration and the bank as ``.npz``, atomically (histograms are rebuilt on load)."""
        write_bytes_atomic(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The ``.npz`` content ``save`` writes (for embedding a state in a training checkpoint)."""
        table = concat_tables([c.table for c in self._chunks], self._vocab, self.iou_thresholds)
        # concat_tables sorts images by id; keep each image's update step alongside.
        steps = np.concatenate([np.zeros(0, np.int64)] + [np.full(c.table.num_images, c.step) for c in self._chunks])
        ids = np.concatenate([np.zeros(0, np.int64)] + [c.table.image_ids for c in self._chunks])
        seq = np.concatenate([np.zeros(0, np.int64)] + [np.full(c.table.num_images, i) for i, c in enumerate(self._chunks)])
        meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "config": asdict(self.config), "step": self._step}
        arrays = {name: getattr(table, name) for name in DetectionTable.__dataclass_fields__}
        arrays["image_step"] = steps[np.lexsort((seq, ids))]
        buffer = io.BytesIO()
        np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DetGainState:
        """Read a state written by ``save``; raises ``DataError`` for a missing or foreign file."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise DataError(f"{path}: <file>: file does not exist") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: <file>: not a DetGain state file ({exc})") from None
        return cls._from_arrays(arrays, path)

    @classmethod
    def from_bytes(cls, content: bytes, *, source: str = "<bytes>") -> DetGainState:
        """A state from ``to_bytes`` output; ``DataError`` naming ``source`` if it is not one."""
        try:
            with np.load(io.BytesIO(content), allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{source}: <file>: not a DetGain state ({exc})") from None
        return cls._from_arrays(arrays, source)

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], path: Any) -> DetGainState:
        try:
            meta = json.loads(str(arrays.pop("meta")))
            ok = meta.get("format") == STATE_FORMAT and meta.get("version") == STATE_VERSION
        except (KeyError, ValueError, AttributeError):
            ok = False
        needed = set(DetectionTable.__dataclass_fields__) | {"image_step"}
        if not ok or not needed <= set(arrays):
            raise DataError(f"{path}: <file>: not a DetGain state file of version {STATE_VERSION} "
                            f"(missing {sorted(needed - set(arrays)) or 'format header'})")
        config = StateConfig(**meta["config"])
        table = DetectionTable(**{name: arrays[name] for name in DetectionTable.__dataclass_fields__})
        state = cls(table.iou_thresholds, config=config)
        state._vocab = table.category_ids.astype(np.int64)
        state._step = int(meta["step"])
        n_k, b, n_t = state._vocab.size, config.num_bins, table.iou_thresholds.size
        state._tp, state._fp, state._gt = np.zeros((n_k, b, n_t)), np.zeros((n_k, b, n_t)), np.zeros(n_k)
        step = arrays["image_step"]
        for s in np.unique(step):
            chunk = _Chunk(int(s), select_images(table, np.flatnonzero(step == s)))
            state._chunks.append(chunk)
            state._add(chunk.table, state._weight(chunk))
        return state
