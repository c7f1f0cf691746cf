"""Matching of in-memory training targets (torchvision-style dicts) to detections, and per-image AP.

Online data curation scores the augmented views of a super-batch, which exist only in memory: their
ground truth is a target dict per view, not a COCO file, and the same COCO image may occur twice. Views
are identified by their *stream position* (``keys``), which takes the place of the COCO image id.

``match_targets`` returns exactly the ``DatasetMatches`` that ``matching.match_dataset`` gives for the
equivalent COCO data set (image id = key, ``bbox`` = xyxy turned into xywh, ``area = w * h``,
``iscrowd = ignore``), through the same matcher (``matching._match_grouped``). ``per_image_ap`` turns
the matches into pycocotools' mAP (``COCOeval.stats[0]``) of every image evaluated on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from curation_core.evaluation import COCO_AREA_RANGES, COCO_IOU_THRESHOLDS
from curation_core.matching import (
    COCO_RECALL_THRESHOLDS,
    UNMATCHED,
    DatasetMatches,
    _check_options,
    _match_grouped,
)

_FN = "match_targets"


@dataclass(frozen=True)
class _Boxes:
    """The boxes of every image, concatenated in (image, input) order."""

    image: np.ndarray  # (n,) int64, index of the image
    boxes: np.ndarray  # (n, 4) float64, xywh (converted from xyxy)
    category: np.ndarray  # (n,) int64, index into the ascending category ids
    extra: np.ndarray  # (n,) bool ignore flags (targets) or float64 scores (detections)


def match_targets(
    targets: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    *,
    keys: ArrayLike,
    category_ids: ArrayLike,
    iou_thresholds: ArrayLike = COCO_IOU_THRESHOLDS,
    area_range: tuple[float, float] = COCO_AREA_RANGES["all"],
    max_dets: int = 100,
) -> DatasetMatches:
    """Match the detections of N in-memory images to their targets, bit for bit as ``COCOeval.evaluateImg``.

    Parameters
    ----------
    targets : N mappings (other keys are ignored):
        ``"boxes"`` (n, 4) float, xyxy in absolute pixels, ``x1 <= x2`` and ``y1 <= y2``;
        ``"labels"`` (n,) int in 1..K, label ``l`` meaning ``category_ids[l - 1]``;
        ``"ignore"`` (n,) bool or 0/1, optional (default all False). An ignored box is an ignored
        region with pycocotools' crowd semantics (``_prepare`` overwrites ``ignore`` with ``iscrowd``):
        IoU against it is ``intersection / area(det)``, it absorbs any number of detections, which are
        then ignored (never a TP, never an FP), and it is not counted in ``gt_count`` (``npig``).
    detections : N mappings: ``"boxes"`` (m, 4) float xyxy, ``"scores"`` (m,) float (higher = more
        confident), ``"labels"`` (m,) int in 1..K. Values may be torch tensors on any device (all of
        one key on one device are copied to the host at once) or numpy arrays.
    keys : (N,) int64, strictly ascending: the stream position of each image, used as its image id.
        Two views of one COCO image are two images with different keys.
    category_ids : (K,) distinct ints, in label order; need not be sorted or contiguous.
    iou_thresholds, area_range, max_dets : as in ``matching.match_image``. The area of a target box is
        ``w * h`` of its box: targets carry no segmentation area, and for box-only annotations (such as
        the synthetic set's) COCO's ``area`` field is that same product.

    Returns
    -------
    DatasetMatches with ``image_ids = keys`` and ``category_ids`` ascending (labels are mapped to that
    order); rows by (category, image, rank), ``gt_count`` (N, K). Images without targets or without
    detections, and N = 0, are legal.

    Raises
    ------
    ValueError
        One line naming the argument and the image index (position in ``targets``): lengths that differ,
        keys not strictly ascending, labels outside 1..K, boxes not (n, 4) or with x2 < x1, non-finite
        values.
    """
    thr, rng = _check_options(_FN, iou_thresholds, area_range, max_dets)
    image_ids, cat_ids, cat_index = _check_ids(targets, detections, keys, category_ids)
    n_img, n_cat = image_ids.size, cat_ids.size
    gt = _read(targets, "targets", "ignore", cat_index)
    det = _read(detections, "detections", "scores", cat_index)
    g_pair, d_pair = gt.category * n_img + gt.image, det.category * n_img + det.image  # category-major
    gw, gh = gt.boxes[:, 2], gt.boxes[:, 3]
    res = _match_grouped(gt.boxes, gt.extra, gw * gh, g_pair, det.boxes, det.extra, d_pair, n_img * n_cat,
                         thr, rng, max_dets)
    kept = d_pair[res.det_keep]
    start = np.repeat(res.det_offsets[:-1], np.diff(res.det_offsets))
    counted = g_pair[res.gt_order][~res.gt_ignored]
    out = DatasetMatches(
        image_ids=image_ids, category_ids=cat_ids, iou_thresholds=thr.copy(),
        det_image=kept % max(n_img, 1), det_category=kept // max(n_img, 1),
        det_score=det.extra[res.det_keep], det_rank=np.arange(kept.size, dtype=np.int64) - start,
        det_true_positive=(res.det_matched_gt != UNMATCHED) & ~res.det_ignored, det_ignored=res.det_ignored,
        gt_count=np.bincount(counted, minlength=n_img * n_cat).astype(np.int64).reshape(n_cat, n_img).T.copy(),
    )
    for arr in vars(out).values():
        arr.setflags(write=False)
    return out


def _check_ids(targets: Sequence[Any], detections: Sequence[Any], keys: ArrayLike,
               category_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated keys (N,), ascending category ids (K,) and, per label - 1, its index among them."""
    n = len(targets)
    if len(detections) != n:
        raise ValueError(f"{_FN}(detections=) expects one mapping per image (len(targets) = {n}); "
                         f"got {len(detections)}.")
    ids = _host(keys)
    if ids.shape != (n,) or (n and ids.dtype.kind not in "iu"):
        raise ValueError(f"{_FN}(keys=) expects ({n},) integers, one stream position per image; "
                         f"got {ids.dtype} of shape {ids.shape}.")
    ids = ids.astype(np.int64)
    bad = np.flatnonzero(np.diff(ids) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise ValueError(f"{_FN}(keys=) expects strictly ascending, distinct stream positions; "
                         f"got {ids[i]} after {ids[i - 1]} at image {i}.")
    cats = _host(category_ids)
    if cats.ndim != 1 or (cats.size and cats.dtype.kind not in "iu"):
        raise ValueError(f"{_FN}(category_ids=) expects a 1-D array of integer ids; "
                         f"got {cats.dtype} of shape {cats.shape}.")
    cats = cats.astype(np.int64)
    ascending, cat_index, count = np.unique(cats, return_inverse=True, return_counts=True)
    if (count > 1).any():
        raise ValueError(f"{_FN}(category_ids=) expects distinct ids; got {ascending[count > 1][0]} "
                         f"{count.max()} times.")
    return ids, ascending, cat_index.reshape(-1).astype(np.int64)


def _read(items: Sequence[Any], arg: str, extra_key: str, cat_index: np.ndarray) -> _Boxes:
    """Validate and concatenate the boxes, labels and ``extra_key`` ("ignore" or "scores") of every image."""
    boxes, counts = _column(items, arg, "boxes", None, "fiu", "double")
    labels, _ = _column(items, arg, "labels", counts, "iu", "long")
    extra, _ = _column(items, arg, extra_key, counts, "fiu" if extra_key == "scores" else "biu",
                       "double" if extra_key == "scores" else "long", default=False if extra_key == "ignore" else None)
    image = np.repeat(np.arange(len(items), dtype=np.int64), counts)
    xyxy = boxes.reshape(-1, 4)
    finite = np.isfinite(xyxy).all(axis=1)
    _first_bad(arg, "boxes", xyxy, ~finite, image, counts, "with finite coordinates")
    _first_bad(arg, "boxes", xyxy, finite & ((xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])), image, counts,
               "with x1 <= x2 and y1 <= y2 (xyxy)")
    _first_bad(arg, "labels", labels, (labels < 1) | (labels > cat_index.size), image, counts,
               f"in 1..{cat_index.size} (K = len(category_ids))")
    if extra_key == "scores":
        _first_bad(arg, "scores", extra, ~np.isfinite(extra), image, counts, "with finite values")
    else:
        _first_bad(arg, "ignore", extra, (extra != 0) & (extra != 1), image, counts, "of bool or 0/1 values")
        extra = extra.astype(bool)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    return _Boxes(image, xywh, cat_index[labels - 1], extra)


def _column(items: Sequence[Any], arg: str, key: str, counts: np.ndarray | None, kinds: str, cast: str, *,
            default: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``items[i][key]`` of every image, shape- and dtype-checked, flattened and concatenated.

    ``counts`` None: the key holds (n, 4) boxes and the per-image n are returned; otherwise (counts[i],).
    A missing key takes ``default`` (error when None). ``cast`` names the tensor method giving the host
    dtype ("double", "long"), applied before the single concatenation.
    """
    values, sizes = [], []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"{_FN}({arg}=) expects a mapping per image; got {type(item).__name__} at image {i}.")
        if key not in item and default is not None:
            values.append(np.full(int(counts[i]), int(default)))  # type: ignore[index]
            continue
        if key not in item:
            raise ValueError(f"{_FN}({arg}=) expects the key {key!r}; got keys {sorted(map(str, item))} at image {i}.")
        value = item[key] if hasattr(item[key], "detach") else np.asarray(item[key])
        shape = tuple(value.shape)
        n = (shape[0] if shape else -1) if counts is None else int(counts[i])
        want = (n, 4) if counts is None else (n,)
        if shape != want and not (n == 0 and 0 in shape):  # any empty array is an image without boxes
            text = "(n, 4) xyxy" if counts is None else f"({n},), one per box"
            raise ValueError(f"{_FN}({arg}=) expects {key!r} of shape {text}; got {shape} at image {i}.")
        if n and _kind(value) not in kinds:
            raise ValueError(f"{_FN}({arg}=) expects {key!r} of {_KIND_NAMES[kinds]} dtype; "
                             f"got {value.dtype} at image {i}.")
        values.append(value)
        sizes.append(max(n, 0))
    return _concat(values, cast), (counts if counts is not None else np.array(sizes, dtype=np.int64))


_KIND_NAMES = {"fiu": "a real", "iu": "an integer", "biu": "a bool or integer"}


def _kind(value: Any) -> str:
    """numpy dtype kind of an array or a tensor ("f", "i", "b", "c"), without importing torch."""
    if not hasattr(value, "detach"):
        return value.dtype.kind
    if value.is_floating_point():
        return "f"
    return "c" if value.is_complex() else "b" if str(value.dtype) == "torch.bool" else "i"


def _host(value: Any) -> np.ndarray:
    """A numpy array from an array-like or a tensor on any device (floats as float64: numpy has no bf16)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return (value.double() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _concat(values: list[Any], cast: str) -> np.ndarray:
    """Flatten and concatenate; tensors of one device are concatenated there (one device-to-host copy)."""
    dtype = np.float64 if cast == "double" else np.int64
    if len(values) > 1 and all(hasattr(v, "detach") for v in values) and len({v.device for v in values}) == 1:
        import torch  # tensors were passed, so torch is installed

        values = [torch.cat([getattr(v.detach().reshape(-1), cast)() for v in values])]
    flat = [_host(v).reshape(-1).astype(dtype) for v in values]
    return np.concatenate(flat) if flat else np.zeros(0, dtype)


def _first_bad(arg: str, key: str, values: np.ndarray, bad: np.ndarray, image: np.ndarray, counts: np.ndarray,
               want: str) -> None:
    """Raise for the first flagged box, with its value, its image index and its index within the image."""
    if not bad.any():
        return
    e = int(np.argmax(bad))
    i = int(image[e])
    raise ValueError(f"{_FN}({arg}=) expects {key!r} {want}; got {values[e].tolist()} at image {i}, "
                     f"box {e - int(counts[:i].sum())}.")


def per_image_ap(matches: DatasetMatches) -> np.ndarray:
    """pycocotools' mAP (``COCOeval.stats[0]`` style) of every image, each evaluated as a data set of its own.

    For image i and each category k with ``gt_count[i, k] > 0``, AP per IoU threshold is pycocotools'
    ``accumulate`` on that single (image, category): cumulative TP / FP over the image's detections in
    rank order (ignored detections count as neither), recall ``tp / npig``, precision
    ``tp / (tp + fp + eps)`` made non-increasing from the right, read at the first recall ``>= r`` for
    the 101 thresholds ``r`` (0 beyond the reached recall) and averaged. The image's value is the mean
    over those categories and the IoU thresholds. Categories without non-ignored ground truth in the
    image do not take part (their detections are not penalised), as in pycocotools. Area range and
    ``max_dets`` are those the matches were made with.

    Returns
    -------
    (N,) float64 in [0, 1], ``matches.image_ids`` order, higher = better detected. NaN for an image
    without non-ignored ground truth (pycocotools reports -1 for such a data set).

    The (image, category) pairs are processed together on arrays padded to the longest detection list
    of their power-of-two bucket of detection counts (padding below 2x); the envelope is a
    ``maximum.accumulate`` along the padded axis.
    """
    n_img = matches.gt_count.shape[0]
    npig = matches.gt_count.T.reshape(-1)  # pair p = category * N + image, the row order of matches
    scored = np.flatnonzero(npig > 0)
    pair = matches.det_category * n_img + matches.det_image
    seg = np.minimum(np.searchsorted(scored, pair), max(scored.size - 1, 0))
    rows = np.flatnonzero(scored[seg] == pair) if scored.size else np.zeros(0, dtype=np.int64)
    seg, rank, tp = seg[rows], matches.det_rank[rows], matches.det_true_positive[rows]
    fp = ~tp & ~matches.det_ignored[rows]
    length = np.bincount(seg, minlength=scored.size)
    bucket = np.ceil(np.log2(np.maximum(length, 1))).astype(np.int64)
    ap = np.zeros((scored.size, matches.iou_thresholds.size))
    local = np.zeros(scored.size, dtype=np.int64)  # position of a pair within its bucket
    for b in np.unique(bucket):
        members = np.flatnonzero(bucket == b)
        local[members] = np.arange(members.size)
        mine = bucket[seg] == b
        ap[members] = _padded_ap(local[seg[mine]], rank[mine], tp[mine], fp[mine], npig[scored[members]],
                                 max(int(length[members].max()), 1))
    image = scored % max(n_img, 1)
    with np.errstate(invalid="ignore"):
        return np.bincount(image, weights=ap.mean(axis=1), minlength=n_img) / np.bincount(image, minlength=n_img)


def _padded_ap(seg: np.ndarray, rank: np.ndarray, tp: np.ndarray, fp: np.ndarray, npig: np.ndarray,
               depth: int) -> np.ndarray:
    """(S, T) AP of S pairs from their rows (pair ``seg``, position ``rank``, (rows, T) TP / FP flags)."""
    shape = (npig.size, depth, tp.shape[1])
    tp_pad, fp_pad = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    tp_pad[seg, rank], fp_pad[seg, rank] = tp, fp
    # Padding after the last detection adds neither TP nor FP: recall stays, precision repeats its last value.
    tp_sum = np.cumsum(tp_pad, axis=1).astype(np.float64)
    fp_sum = np.cumsum(fp_pad, axis=1).astype(np.float64)
    recall = tp_sum / npig[:, None, None]
    precision = np.maximum.accumulate((tp_sum / (fp_sum + tp_sum + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
    # pycocotools reads precision at searchsorted(recall, r, "left"): position j takes the thresholds r
    # with recall[j - 1] < r <= recall[j], i.e. (#r <= recall[j]) - (#r <= recall[j - 1]).
    taken = np.diff(np.searchsorted(COCO_RECALL_THRESHOLDS, recall, side="right"), axis=1, prepend=0)
    return (precision * taken).sum(axis=1) / COCO_RECALL_THRESHOLDS.size
