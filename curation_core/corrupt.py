"""Annotation corruption protocols: missing labels and noisy labels, seeded and order independent.

Missing-label protocols of the Background Recalibration Loss paper (Zhang et al., arXiv 2002.05274):

- ``easy``: remove one annotation from every image that has at least two;
- ``hard``: remove ``floor(n / 2)`` of the ``n`` annotations of every image that has at least two;
- ``extreme``: keep exactly one annotation of every image that has at least one;
- ``drop-per-category``: remove ``round(P * n_c)`` of the ``n_c`` annotations of every category
  (``P = 0.5`` is the "COCO-50%" setting).

Noisy-label modes:

- ``spurious``: add ``round(P * n)`` false boxes, each on an image drawn uniformly, with a category
  drawn uniformly and the relative size (w / image width, h / image height) of a real box drawn
  uniformly, placed uniformly inside the image; new ids above every existing id, ``iscrowd = 0``,
  ``area = w * h``.
- ``jitter``: with ``u1..u4 ~ U(-R, R)`` per box, the centre moves by ``(u1 * w, u2 * h)`` and the size
  becomes ``(w * exp(u3), h * exp(u4))``; the size is clipped to [1, image size] pixels and the box is
  shifted (not cut) to lie inside the image. For a box that lay inside its image and is at least
  ``exp(R)`` pixels wide, ``w' / w`` lies in ``[exp(-R), exp(R)]`` and the centre moves by at most
  ``max(R, (exp(R) - 1) / 2) * w`` (likewise for h). ``area`` is scaled by the box-area ratio;
  ``segmentation`` is left as it is.
- ``swap``: ``round(P * n)`` annotations drawn uniformly get a class drawn uniformly from the other
  categories.

Conventions shared by every mode:

- Crowd annotations (``iscrowd == 1``) are never removed or changed and are not counted: "the
  annotations of an image" and every ``n`` above mean its non-crowd annotations; the report counts
  non-crowd annotations only.
- Counts ``round(P * n)`` use round-half-to-even on the exact decimal value of ``P`` as written
  (``P = 0.5`` gives 2 of 3, 2 of 5 and 4 of 7 annotations), so they do not depend on binary
  floating-point error (``0.07 * 150`` is ``10.500000000000002`` in floating point; the count is 10).
- Randomness is drawn from ``numpy.random.SeedSequence([seed, stream, key])``. The per-image modes
  use one stream per image (key = image id), ``drop-per-category`` one per category (key = category
  id), and the other modes one stream over the records sorted by id. The result therefore depends on
  the seed and the ids, never on the order of the records in the file, and (for the per-image modes)
  the draw of one image does not depend on which other images are present.
- Input records are never mutated; the output keeps images, categories and every other top-level key.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset
from curation_core.errors import ConfigError

#: Every corruption mode, in the order the command line lists them.
CORRUPTION_MODES = ("easy", "hard", "extreme", "drop-per-category", "spurious", "jitter", "swap")
#: Modes that take ``fraction`` (and require it).
FRACTION_MODES = frozenset({"drop-per-category", "spurious", "swap"})
#: Modes that take ``amount`` (and require it).
AMOUNT_MODES = frozenset({"jitter"})
#: Missing-label modes of the BRL paper.
BRL_MODES = ("easy", "hard", "extreme")
#: Fraction of annotations the BRL paper reports as dropped on PASCAL VOC07+12 trainval.
BRL_VOC0712_DROPPED = {"easy": 0.206, "hard": 0.390, "extreme": 0.6495}
#: Fixed stream numbers, so that adding a mode never changes the draws of another one.
_STREAMS = {"easy": 1, "hard": 2, "extreme": 3, "drop-per-category": 4, "spurious": 5, "jitter": 6, "swap": 7}


@dataclass(frozen=True)
class CategoryChange:
    """Per-category bookkeeping of one corruption (non-crowd annotations only).

    ``changed`` counts annotations originally of this category whose box (``jitter``) or class
    (``swap``) changed; ``relabelled_out`` / ``relabelled_in`` count the class changes away from and
    into this category, so that ``after == before - removed + added - relabelled_out + relabelled_in``.
    """

    category_id: int
    name: str
    before: int
    after: int
    removed: int
    added: int
    changed: int
    relabelled_out: int
    relabelled_in: int


@dataclass(frozen=True)
class CorruptionResult:
    """The corrupted data set and what changed.

    Attributes
    ----------
    dataset : the corrupted data set (same images, categories and extra keys).
    mode, seed, fraction, amount : the parameters used (``None`` for unused ones).
    per_category : one entry per category, in category file order.
    removed_ids, added_ids, changed_ids : annotation ids, ascending.
    n_before, n_after : non-crowd annotations before and after.
    n_crowd : crowd annotations (identical before and after).
    n_images, images_affected : images in the set, and those with at least one annotation removed,
        added or changed.
    """

    dataset: CocoDataset
    mode: str
    seed: int
    fraction: float | None
    amount: float | None
    per_category: tuple[CategoryChange, ...]
    removed_ids: tuple[int, ...]
    added_ids: tuple[int, ...]
    changed_ids: tuple[int, ...]
    n_before: int
    n_after: int
    n_crowd: int
    n_images: int
    images_affected: int

    @property
    def fraction_removed(self) -> float:
        """Removed / non-crowd annotations before (0.0 for a set without annotations)."""
        return len(self.removed_ids) / self.n_before if self.n_before else 0.0

    @property
    def fraction_changed(self) -> float:
        """Changed / non-crowd annotations before (0.0 for a set without annotations)."""
        return len(self.changed_ids) / self.n_before if self.n_before else 0.0

    @property
    def fraction_added(self) -> float:
        """Added / non-crowd annotations before (0.0 for a set without annotations)."""
        return len(self.added_ids) / self.n_before if self.n_before else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (parameters, overall and per-category counts, affected ids)."""
        return {
            "mode": self.mode,
            "parameters": {"fraction": self.fraction, "amount": self.amount},
            "seed": self.seed,
            "overall": {
                "before": self.n_before, "after": self.n_after, "crowd": self.n_crowd,
                "removed": len(self.removed_ids), "added": len(self.added_ids), "changed": len(self.changed_ids),
                "fraction_removed": self.fraction_removed, "fraction_added": self.fraction_added,
                "fraction_changed": self.fraction_changed,
                "images": self.n_images, "images_affected": self.images_affected,
            },
            "per_category": {str(c.category_id): _category_dict(c) for c in self.per_category},
            "removed_ids": list(self.removed_ids),
            "added_ids": list(self.added_ids),
            "changed_ids": list(self.changed_ids),
        }


def _category_dict(change: CategoryChange) -> dict[str, Any]:
    return {k: v for k, v in vars(change).items() if k != "category_id"}


# ----------------------------------------------------------------------------------------------
# Options


def check_corruption_options(mode: str, *, seed: int, fraction: float | None = None,
                             amount: float | None = None) -> None:
    """Raise a one-line ``ConfigError`` unless the options form a valid corruption request.

    ``mode`` must be one of ``CORRUPTION_MODES``; ``seed`` a non-negative integer; ``fraction`` a number
    in [0, 1], required by and only allowed for ``FRACTION_MODES``; ``amount`` a finite number >= 0,
    required by and only allowed for ``AMOUNT_MODES``.
    """
    if mode not in CORRUPTION_MODES:
        raise ConfigError(f"corrupt_annotations(mode=) expects one of {', '.join(CORRUPTION_MODES)}; got {mode!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"corrupt_annotations(seed=) expects a non-negative integer; got {seed!r}.")
    _check_parameter("fraction", fraction, mode, FRACTION_MODES, upper=1.0)
    _check_parameter("amount", amount, mode, AMOUNT_MODES, upper=math.inf)


def _check_parameter(name: str, value: float | None, mode: str, modes: frozenset[str], *, upper: float) -> None:
    if mode in modes and value is None:
        raise ConfigError(f"corrupt_annotations({name}=) is required by mode {mode!r}; got none.")
    if mode not in modes and value is not None:
        users = ", ".join(m for m in CORRUPTION_MODES if m in modes)
        plural = "s" if len(modes) > 1 else ""
        raise ConfigError(f"corrupt_annotations({name}=) is only used by mode{plural} {users}; got {value!r} "
                          f"with mode {mode!r}.")
    if value is None:
        return
    bound = "[0, 1]" if upper == 1.0 else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0.0 <= value <= upper:
        raise ConfigError(f"corrupt_annotations({name}=) expects a number {bound}; got {value!r}.")


def exact_count(fraction: float, n: int) -> int:
    """``round(fraction * n)``, half to even, on the decimal value of ``fraction`` as written."""
    return round(Fraction(repr(float(fraction))) * n)


# ----------------------------------------------------------------------------------------------
# Entry point


def corrupt_annotations(dataset: CocoDataset, *, mode: str, seed: int, fraction: float | None = None,
                        amount: float | None = None) -> CorruptionResult:
    """Corrupt the annotations of ``dataset`` following ``mode``; see the module docstring.

    Parameters
    ----------
    dataset : a validated data set (boxes xywh, absolute pixels); never mutated.
    mode : one of ``CORRUPTION_MODES``.
    seed : non-negative integer; the result is a function of (seed, record ids), not of record order.
    fraction : in [0, 1]; the fraction of annotations to drop per category, add or relabel.
    amount : >= 0; the relative box noise ``R`` of ``jitter``.

    Raises
    ------
    ConfigError
        Invalid options, or ``swap`` with a positive count on a set with fewer than two categories.
    """
    check_corruption_options(mode, seed=seed, fraction=fraction, amount=amount)
    seed = int(seed)
    plain = sorted((a for a in dataset.annotations if not a["iscrowd"]), key=lambda a: a["id"])
    removed: set[int] = set()
    replaced: dict[int, dict[str, Any]] = {}
    added: list[dict[str, Any]] = []
    if mode in BRL_MODES:
        removed = _drop_per_image(plain, mode, seed)
    elif mode == "drop-per-category":
        removed = _drop_per_category(plain, fraction, seed)  # type: ignore[arg-type]
    elif mode == "spurious":
        added = _spurious(dataset, plain, exact_count(fraction, len(plain)), seed)  # type: ignore[arg-type]
    elif mode == "jitter":
        replaced = _jitter(dataset, plain, amount, seed)  # type: ignore[arg-type]
    else:
        replaced = _swap(dataset, plain, exact_count(fraction, len(plain)), seed)  # type: ignore[arg-type]
    annotations = [dict(replaced.get(a["id"], a)) for a in dataset.annotations if a["id"] not in removed]
    annotations.extend(added)
    out = CocoDataset(images=dataset.images, annotations=annotations, categories=dataset.categories,
                      extra=dataset.extra, source=dataset.source)
    return _summarise(dataset, out, plain, removed, replaced, added, mode=mode, seed=seed,
                      fraction=fraction, amount=amount)


def _rng(seed: int, mode: str, key: int | None = None) -> np.random.Generator:
    entropy = [seed, _STREAMS[mode]] + ([] if key is None else [2 * key if key >= 0 else -2 * key - 1])
    return np.random.default_rng(np.random.SeedSequence(entropy))


# ----------------------------------------------------------------------------------------------
# Missing labels


def brl_drop_count(n: int, mode: str) -> int:
    """Annotations the BRL ``mode`` removes from an image with ``n`` non-crowd annotations."""
    if mode == "easy":
        return 1 if n >= 2 else 0
    if mode == "hard":
        return n // 2 if n >= 2 else 0
    if mode == "extreme":
        return max(n - 1, 0)
    raise ValueError(f"brl_drop_count(mode=) expects one of {', '.join(BRL_MODES)}; got {mode!r}.")


def missing_label_fractions(dataset: CocoDataset) -> dict[str, float]:
    """Fraction of non-crowd annotations each BRL mode removes from ``dataset`` (no randomness involved).

    The BRL paper reports 20.6% / 39.0% / 64.95% on VOC07+12 (``BRL_VOC0712_DROPPED``).
    """
    per_image = Counter(a["image_id"] for a in dataset.annotations if not a["iscrowd"])
    total = sum(per_image.values())
    return {mode: (sum(brl_drop_count(n, mode) for n in per_image.values()) / total if total else 0.0)
            for mode in BRL_MODES}


def _drop_per_image(plain: list[dict[str, Any]], mode: str, seed: int) -> set[int]:
    by_image: dict[int, list[int]] = {}
    for ann in plain:  # sorted by annotation id
        by_image.setdefault(ann["image_id"], []).append(ann["id"])
    removed: set[int] = set()
    for image_id, ids in by_image.items():
        k = brl_drop_count(len(ids), mode)
        if k:
            picks = _rng(seed, mode, image_id).choice(len(ids), size=k, replace=False)
            removed.update(ids[i] for i in picks)
    return removed


def _drop_per_category(plain: list[dict[str, Any]], fraction: float, seed: int) -> set[int]:
    by_category: dict[int, list[int]] = {}
    for ann in plain:
        by_category.setdefault(ann["category_id"], []).append(ann["id"])
    removed: set[int] = set()
    for category_id, ids in by_category.items():
        k = exact_count(fraction, len(ids))
        if k:
            picks = _rng(seed, "drop-per-category", category_id).choice(len(ids), size=k, replace=False)
            removed.update(ids[i] for i in picks)
    return removed


# ----------------------------------------------------------------------------------------------
# Noisy labels


def _spurious(dataset: CocoDataset, plain: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` false boxes (module docstring), ids above every existing id."""
    if count == 0:
        return []
    rng = _rng(seed, "spurious")
    images = sorted(dataset.images, key=lambda img: img["id"])
    category_ids = sorted(dataset.category_ids)
    image_size = {img["id"]: (img["width"], img["height"]) for img in images}
    # Relative sizes of the real boxes, (N, 2): w / image width, h / image height.
    rel = np.asarray([a["bbox"][2:] for a in plain], dtype=np.float64)
    rel /= np.asarray([image_size[a["image_id"]] for a in plain], dtype=np.float64)
    next_id = max((a["id"] for a in dataset.annotations), default=0) + 1
    img_idx = rng.integers(len(images), size=count)
    cat_idx = rng.integers(len(category_ids), size=count)
    box_idx = rng.integers(len(plain), size=count)
    offsets = rng.random((count, 2))
    limits = np.asarray([image_size[img["id"]] for img in images], dtype=np.float64)[img_idx]  # (count, 2)
    size = np.clip(rel[box_idx] * limits, 1.0, limits)
    boxes = np.concatenate([offsets * (limits - size), size], axis=1).tolist()  # (count, 4) xywh
    return [{"id": next_id + i, "image_id": images[k]["id"], "category_id": category_ids[c], "bbox": box,
             "area": box[2] * box[3], "iscrowd": 0, "ignore": 0}
            for i, (k, c, box) in enumerate(zip(img_idx.tolist(), cat_idx.tolist(), boxes, strict=True))]


def _jitter(dataset: CocoDataset, plain: list[dict[str, Any]], amount: float,
            seed: int) -> dict[int, dict[str, Any]]:
    """Perturbed copies (module docstring) of ``plain`` (sorted by id), keyed by id; unchanged boxes omitted."""
    if amount == 0 or not plain:
        return {}
    rng = _rng(seed, "jitter")
    noise = rng.uniform(-amount, amount, size=(len(plain), 4))
    boxes = np.asarray([a["bbox"] for a in plain], dtype=np.float64)  # (N, 4) xywh
    image_size = {img["id"]: (img["width"], img["height"]) for img in dataset.images}
    limits = np.asarray([image_size[a["image_id"]] for a in plain], dtype=np.float64)  # (N, 2)
    size = boxes[:, 2:] * np.exp(noise[:, 2:])
    size = np.clip(size, 1.0, limits)
    centre = boxes[:, :2] + boxes[:, 2:] / 2 + noise[:, :2] * boxes[:, 2:]
    corner = np.clip(centre - size / 2, 0.0, limits - size)
    new = np.concatenate([corner, size], axis=1)
    ratio = (new[:, 2] * new[:, 3]) / (boxes[:, 2] * boxes[:, 3])
    moved = np.flatnonzero(np.any(new != boxes, axis=1)).tolist()
    new_boxes, ratios = new.tolist(), ratio.tolist()
    return {plain[i]["id"]: {**plain[i], "bbox": new_boxes[i], "area": float(plain[i]["area"] * ratios[i])}
            for i in moved}


def _swap(dataset: CocoDataset, plain: list[dict[str, Any]], count: int, seed: int) -> dict[int, dict[str, Any]]:
    """``count`` annotations, drawn uniformly, get a class drawn uniformly from the other categories."""
    if count == 0:
        return {}
    category_ids = sorted(dataset.category_ids)
    if len(category_ids) < 2:
        raise ConfigError(f"corrupt_annotations(mode='swap') needs at least two categories; "
                          f"{dataset.source} has {len(category_ids)}.")
    rng = _rng(seed, "swap")
    picks = np.sort(rng.choice(len(plain), size=count, replace=False))
    shifts = rng.integers(1, len(category_ids), size=count)  # never 0: never the same class
    position = {cid: i for i, cid in enumerate(category_ids)}
    out: dict[int, dict[str, Any]] = {}
    for index, shift in zip(picks, shifts, strict=True):
        ann = plain[index]
        new_cid = category_ids[(position[ann["category_id"]] + shift) % len(category_ids)]
        out[ann["id"]] = {**ann, "category_id": new_cid}
    return out


# ----------------------------------------------------------------------------------------------
# Bookkeeping


def _summarise(before: CocoDataset, after: CocoDataset, plain: list[dict[str, Any]], removed: set[int],
               replaced: dict[int, dict[str, Any]], added: list[dict[str, Any]], **params: Any) -> CorruptionResult:
    category_of = {a["id"]: a["category_id"] for a in plain}
    count_before = Counter(a["category_id"] for a in plain)
    count_after = Counter(a["category_id"] for a in after.annotations if not a["iscrowd"])
    lost = Counter(category_of[i] for i in removed)
    gained = Counter(a["category_id"] for a in added)
    changed = Counter(category_of[i] for i in replaced)
    moved = [(category_of[i], a["category_id"]) for i, a in replaced.items() if a["category_id"] != category_of[i]]
    moved_out, moved_in = Counter(src for src, _ in moved), Counter(dst for _, dst in moved)
    per_category = tuple(
        CategoryChange(category_id=c["id"], name=c["name"], before=count_before[c["id"]], after=count_after[c["id"]],
                       removed=lost[c["id"]], added=gained[c["id"]], changed=changed[c["id"]],
                       relabelled_out=moved_out[c["id"]], relabelled_in=moved_in[c["id"]])
        for c in before.categories
    )
    image_of = {a["id"]: a["image_id"] for a in plain}
    touched = {image_of[i] for i in removed} | {image_of[i] for i in replaced} | {a["image_id"] for a in added}
    return CorruptionResult(
        dataset=after, per_category=per_category, removed_ids=tuple(sorted(removed)),
        added_ids=tuple(a["id"] for a in added), changed_ids=tuple(sorted(replaced)),
        n_before=len(plain), n_after=sum(count_after.values()), n_crowd=len(before.annotations) - len(plain),
        n_images=len(before.images), images_affected=len(touched), **params,
    )
