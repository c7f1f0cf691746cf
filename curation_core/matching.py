"""Detection-to-ground-truth matching per image and category, bit for bit pycocotools' ``evaluateImg``.

The rules reproduced (``COCOeval`` with ``iouType="bbox"``):

1. A ground-truth box is *ignored* when it is a crowd (``_prepare`` overwrites ``ignore`` with
   ``iscrowd``) or its ``area`` field lies outside the area range (``area < lo or area > hi``).
2. Detections are sorted by descending score with a stable sort (ties keep input order) and cut to
   ``max_dets``.
3. IoU is maskApi's ``bbIou`` in float64, same operation order: ``w = min(x1+w1, x2+w2) - max(x1, x2)``,
   ``inter = w * h``, ``union = area_det + area_gt - inter``; for a crowd box ``union = area_det``.
4. Per IoU threshold ``t``, detections in rank order take the ground truth with the highest IoU that is
   ``>= min(t, 1 - 1e-10)`` among those still free (a crowd box is never used up). Regular boxes win
   over ignored ones: an ignored box is only taken when no regular box qualifies. Equal IoUs go to the
   later box in input order (pycocotools scans with ``>=``).
5. A detection matched to an ignored box is ignored; an unmatched detection whose area ``w * h`` (as
   ``COCO.loadRes`` computes it) lies outside the area range is ignored too.

The greedy step runs over detection *rank* (at most ``max_dets`` steps) on padded ``(pairs, T, G)``
arrays covering every (image, category) pair at once; pairs are bucketed by their number of ground-truth
boxes to limit padding, and sorted by their number of detections so that step ``r`` only touches the
pairs that still have an ``r``-th detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from curation_core.coco import CocoDataset
from curation_core.errors import DataError
from curation_core.evaluation import COCO_AREA_RANGES, COCO_IOU_THRESHOLDS

#: Index meaning "no match" in the index arrays of ``ImageMatch``.
UNMATCHED: int = -1
#: Recall thresholds 0:0.01:1 of pycocotools' ``accumulate``, computed as it does (bitwise the same).
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass(frozen=True)
class ImageMatch:
    """Matching of one image and one category at every IoU threshold (pycocotools ``evaluateImg``).

    Attributes
    ----------
    det_order : (D,) int64, indices into the input detections in pycocotools order (score descending,
        ties in input order), cut to ``max_dets``.
    det_scores : (D,) float64, scores in that order.
    det_matched_gt : (T, D) int64, index into the input ground-truth list, ``UNMATCHED`` if none.
    det_ignored : (T, D) bool, pycocotools ``dtIgnore``.
    gt_ignored : (G,) bool, input ground-truth order, pycocotools ``gtIgnore``.
    gt_matched : (T, G) bool, input ground-truth order.
    """

    det_order: np.ndarray
    det_scores: np.ndarray
    det_matched_gt: np.ndarray
    det_ignored: np.ndarray
    gt_ignored: np.ndarray
    gt_matched: np.ndarray

    @property
    def true_positive(self) -> np.ndarray:
        """(T, D) bool: matched and not ignored."""
        return (self.det_matched_gt != UNMATCHED) & ~self.det_ignored

    @property
    def false_positive(self) -> np.ndarray:
        """(T, D) bool: unmatched and not ignored."""
        return (self.det_matched_gt == UNMATCHED) & ~self.det_ignored


@dataclass(frozen=True)
class DatasetMatches:
    """Every kept detection of a data set with its match status; rows ordered by (category, image, rank).

    Attributes
    ----------
    image_ids : (N,) int64, ascending (pycocotools' ``imgIds``).
    category_ids : (K,) int64, ascending.
    iou_thresholds : (T,) float64.
    det_image, det_category : (M,) int64, indices into ``image_ids`` / ``category_ids``.
    det_score : (M,) float64, higher = more confident.
    det_rank : (M,) int64, rank within its (image, category) in pycocotools order (0 = highest score).
    det_true_positive, det_ignored : (M, T) bool; a false positive is ``~tp & ~ignored``.
    gt_count : (N, K) int64, number of non-ignored ground-truth boxes (pycocotools ``npig`` terms).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    iou_thresholds: np.ndarray
    det_image: np.ndarray
    det_category: np.ndarray
    det_score: np.ndarray
    det_rank: np.ndarray
    det_true_positive: np.ndarray
    det_ignored: np.ndarray
    gt_count: np.ndarray


@dataclass(frozen=True)
class _Grouped:
    """Flat matching result of many pairs; element arrays are in (pair, rank) / (pair, input) order."""

    gt_order: np.ndarray  # (Gt,) input index of each gt, grouped by pair (input order within a pair)
    gt_offsets: np.ndarray  # (P + 1,)
    gt_ignored: np.ndarray  # (Gt,) bool
    gt_matched: np.ndarray  # (Gt, T) bool
    det_keep: np.ndarray  # (Dt,) input index of each kept detection, grouped by pair, by rank
    det_offsets: np.ndarray  # (P + 1,)
    det_matched_gt: np.ndarray  # (Dt, T) int64 index within the pair's gt segment, UNMATCHED if none
    det_ignored: np.ndarray  # (Dt, T) bool


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Segment start offsets, shape (len(counts) + 1,), from per-segment counts."""
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _match_grouped(
    gt_boxes: np.ndarray,
    gt_crowd: np.ndarray,
    gt_area: np.ndarray,
    gt_pair: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_pair: np.ndarray,
    n_pairs: int,
    thresholds: np.ndarray,
    area_range: tuple[float, float],
    max_dets: int,
) -> _Grouped:
    """Match every pair; inputs are flat per-element arrays with the pair index of each element."""
    lo, hi = area_range
    gt_order = np.argsort(gt_pair, kind="stable")
    gt_offsets = _offsets(np.bincount(gt_pair, minlength=n_pairs))
    by_score = np.argsort(-det_scores, kind="stable")  # pycocotools: argsort(-score, kind="mergesort")
    det_sorted = by_score[np.argsort(det_pair[by_score], kind="stable")]
    det_counts = np.bincount(det_pair, minlength=n_pairs)
    rank = np.arange(det_sorted.size) - np.repeat(_offsets(det_counts)[:-1], det_counts)
    det_keep = det_sorted[rank < max_dets]
    det_offsets = _offsets(np.minimum(det_counts, max_dets))

    g_boxes, g_crowd, g_area = gt_boxes[gt_order], gt_crowd[gt_order], gt_area[gt_order]
    g_ignored = g_crowd | (g_area < lo) | (g_area > hi)
    d_boxes = det_boxes[det_keep]
    d_area = d_boxes[:, 2] * d_boxes[:, 3]  # COCO.loadRes: area = w * h
    n_t = thresholds.size
    res = _Grouped(gt_order, gt_offsets, g_ignored, np.zeros((g_boxes.shape[0], n_t), dtype=bool), det_keep,
                   det_offsets, np.full((det_keep.size, n_t), UNMATCHED, dtype=np.int64),
                   np.zeros((det_keep.size, n_t), dtype=bool))
    n_gt, n_det = np.diff(gt_offsets), np.diff(det_offsets)
    active = np.flatnonzero((n_gt > 0) & (n_det > 0))
    # Bucket by the next power of two of the gt count (padding below 2x); within a bucket, most
    # detections first, so that rank r only touches a prefix of the pairs.
    bucket = np.ceil(np.log2(n_gt[active])).astype(np.int64) if active.size else active
    for b in np.unique(bucket):
        pairs = active[bucket == b]
        _greedy(pairs[np.argsort(-n_det[pairs], kind="stable")], res, g_boxes, g_crowd, d_boxes, thresholds)
    res.det_ignored[:] |= (res.det_matched_gt == UNMATCHED) & ((d_area < lo) | (d_area > hi))[:, None]
    return res


def _greedy(pairs: np.ndarray, res: _Grouped, g_boxes: np.ndarray, g_crowd: np.ndarray, d_boxes: np.ndarray,
            thresholds: np.ndarray) -> None:
    """Greedy matching of ``pairs`` (sorted by detection count, descending), written into ``res``."""
    n_gt = res.gt_offsets[pairs + 1] - res.gt_offsets[pairs]
    counts = res.det_offsets[pairs + 1] - res.det_offsets[pairs]
    width = int(n_gt.max())
    col = np.arange(width)
    valid = col < n_gt[:, None]  # (P, G)
    gidx = np.where(valid, res.gt_offsets[pairs][:, None] + col, 0)
    gx, gy, gw, gh = (g_boxes[gidx, j] for j in range(4))
    gx2, gy2, g_area = gw + gx, gh + gy, gw * gh  # maskApi: G[2]+G[0], G[2]*G[3]
    crowd, ignored = g_crowd[gidx] & valid, res.gt_ignored[gidx]
    taken = np.zeros((pairs.size, thresholds.size, width), dtype=bool)  # pycocotools: gtm > 0
    thr = np.minimum(thresholds, 1 - 1e-10)[:, None]  # (T, 1), pycocotools' initial best IoU
    first = res.det_offsets[pairs]
    for r in range(int(counts[0])):
        n = int(np.searchsorted(-counts, -r, side="left"))  # pairs with more than r detections
        d = first[:n] + r
        iou = _bb_iou(d_boxes[d], gx[:n], gy[:n], gx2[:n], gy2[:n], g_area[:n], crowd[:n])  # (n, G)
        free = valid[:n, None, :] & (~taken[:n] | crowd[:n, None, :])
        ok = free & (iou[:, None, :] >= thr)  # (n, T, G)
        regular = ok & ~ignored[:n, None, :]
        cand = np.where(regular.any(axis=2, keepdims=True), regular, ok)  # ignored gt only as a fallback
        vals = np.where(cand, iou[:, None, :], -1.0)
        hit = cand & (vals == vals.max(axis=2, keepdims=True))
        matched = hit.any(axis=2)  # (n, T)
        last = width - 1 - np.argmax(hit[:, :, ::-1], axis=2)  # equal IoUs: the later gt
        pi, ti = np.nonzero(matched)
        taken[pi, ti, last[pi, ti]] = True
        res.det_matched_gt[d] = np.where(matched, last, UNMATCHED)
        res.det_ignored[d] = matched & np.take_along_axis(ignored[:n], last, axis=1)
    res.gt_matched[gidx[valid]] = taken.transpose(0, 2, 1)[valid]


def _bb_iou(
    det: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    gx2: np.ndarray,
    gy2: np.ndarray,
    g_area: np.ndarray,
    crowd: np.ndarray,
) -> np.ndarray:
    """maskApi ``bbIou`` of one detection per row (n, 4 xywh) against padded gt rows (n, G)."""
    dx, dy, dw, dh = (det[:, j : j + 1] for j in range(4))
    d_area = dw * dh
    w = np.minimum(dw + dx, gx2) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gy2) - np.maximum(dy, gy)
    inter = w * h
    union = np.where(crowd, d_area, d_area + g_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


# ----------------------------------------------------------------------------------------------
# Public entry points


def bbox_iou(det_boxes: ArrayLike, gt_boxes: ArrayLike, gt_iscrowd: ArrayLike) -> np.ndarray:
    """IoU of every detection with every ground-truth box, bitwise equal to ``pycocotools.mask.iou``.

    Parameters
    ----------
    det_boxes : (D, 4) xywh, absolute pixels.
    gt_boxes : (G, 4) xywh, absolute pixels.
    gt_iscrowd : (G,) bool or 0/1; against a crowd box the IoU is ``intersection / area(det)``.

    Returns
    -------
    (D, G) float64 in [0, 1]; 0 where the boxes do not overlap.
    """
    det = _array("bbox_iou", "det_boxes", det_boxes, None, (-1, 4), np.float64)
    gtb = _array("bbox_iou", "gt_boxes", gt_boxes, None, (-1, 4), np.float64)
    crowd = _array("bbox_iou", "gt_iscrowd", gt_iscrowd, None, (gtb.shape[0],), bool)
    gx, gy, gw, gh = (gtb[None, :, j] for j in range(4))
    return _bb_iou(det, gx, gy, gw + gx, gh + gy, gw * gh, crowd[None, :]).reshape(det.shape[0], gtb.shape[0])


def _check_options(fn: str, iou_thresholds: ArrayLike, area_range: Any, max_dets: Any) -> tuple[np.ndarray, tuple[float, float]]:
    thr = np.asarray(iou_thresholds, dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0 or not np.isfinite(thr).all():
        raise ValueError(f"{fn}(iou_thresholds=) expects a non-empty 1-D array of finite numbers; got {iou_thresholds!r}.")
    rng = tuple(float(v) for v in np.asarray(area_range, dtype=np.float64).ravel())
    if len(rng) != 2 or not rng[0] <= rng[1]:
        raise ValueError(f"{fn}(area_range=) expects (lo, hi) with lo <= hi in pixels^2; got {area_range!r}.")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int | np.integer) or max_dets < 1:
        raise ValueError(f"{fn}(max_dets=) expects a positive integer; got {max_dets!r}.")
    return thr, (rng[0], rng[1])


def _array(fn: str, name: str, value: ArrayLike, index: int | None, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.size == 0:
        arr = arr.reshape((0, *shape[1:]))
    if arr.ndim != len(shape) or any(s >= 0 and s != a for s, a in zip(shape, arr.shape, strict=True)):
        where = "" if index is None else f" at pair {index}"
        want = "(N, 4) xywh" if len(shape) == 2 else f"({'N' if shape[0] < 0 else shape[0]},)"
        raise ValueError(f"{fn}({name}=) expects shape {want}; got {arr.shape}{where}.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        where = "" if index is None else f" at pair {index}"
        raise ValueError(f"{fn}({name}=) expects finite numbers; got a NaN or infinity{where}.")
    return arr


def match_images(
    gt_boxes: Sequence[ArrayLike],
    gt_iscrowd: Sequence[ArrayLike],
    gt_area: Sequence[ArrayLike],
    det_boxes: Sequence[ArrayLike],
    det_scores: Sequence[ArrayLike],
    *,
    iou_thresholds: ArrayLike = COCO_IOU_THRESHOLDS,
    area_range: tuple[float, float] = COCO_AREA_RANGES["all"],
    max_dets: int = 100,
) -> list[ImageMatch]:
    """Match many (image, category) pairs at once; entry ``i`` of every sequence belongs to pair ``i``.

    Parameters are those of ``match_image``, one per pair. Returns one ``ImageMatch`` per pair, in order.
    """
    fn = "match_images"
    thr, rng = _check_options(fn, iou_thresholds, area_range, max_dets)
    n_pairs = len(gt_boxes)
    lengths = {len(gt_iscrowd), len(gt_area), len(det_boxes), len(det_scores)}
    if lengths != {n_pairs}:
        raise ValueError(f"{fn}() expects sequences of equal length (one entry per pair); got lengths "
                         f"{[len(s) for s in (gt_boxes, gt_iscrowd, gt_area, det_boxes, det_scores)]}.")
    gb, gc, ga, db, ds = [], [], [], [], []
    for i in range(n_pairs):
        gb.append(_array(fn, "gt_boxes", gt_boxes[i], i, (-1, 4), np.float64))
        gc.append(_array(fn, "gt_iscrowd", gt_iscrowd[i], i, (gb[-1].shape[0],), bool))
        ga.append(_array(fn, "gt_area", gt_area[i], i, (gb[-1].shape[0],), np.float64))
        db.append(_array(fn, "det_boxes", det_boxes[i], i, (-1, 4), np.float64))
        ds.append(_array(fn, "det_scores", det_scores[i], i, (db[-1].shape[0],), np.float64))
    n_g = np.array([len(a) for a in gb], dtype=np.int64)
    n_d = np.array([len(a) for a in db], dtype=np.int64)
    res = _match_grouped(
        np.concatenate(gb or [np.zeros((0, 4))]), np.concatenate(gc or [np.zeros(0, bool)]),
        np.concatenate(ga or [np.zeros(0)]), np.repeat(np.arange(n_pairs), n_g),
        np.concatenate(db or [np.zeros((0, 4))]), np.concatenate(ds or [np.zeros(0)]),
        np.repeat(np.arange(n_pairs), n_d), n_pairs, thr, rng, max_dets,
    )
    return _split(res, ds, np.concatenate([[0], np.cumsum(n_d)]))


def _split(res: _Grouped, scores: list[np.ndarray], det_input_offsets: np.ndarray) -> list[ImageMatch]:
    """Cut the flat result of ``match_images`` (pairs given in order) into one ``ImageMatch`` per pair."""
    for arr in (res.gt_ignored, res.gt_matched, res.det_keep, res.det_matched_gt, res.det_ignored):
        arr.setflags(write=False)
    out = []
    for p in range(len(scores)):
        gs, ge = res.gt_offsets[p], res.gt_offsets[p + 1]
        ds, de = res.det_offsets[p], res.det_offsets[p + 1]
        order = res.det_keep[ds:de] - det_input_offsets[p]
        order.setflags(write=False)
        det_scores = scores[p][order]
        det_scores.setflags(write=False)
        out.append(ImageMatch(
            det_order=order, det_scores=det_scores, det_matched_gt=res.det_matched_gt[ds:de].T,
            det_ignored=res.det_ignored[ds:de].T, gt_ignored=res.gt_ignored[gs:ge], gt_matched=res.gt_matched[gs:ge].T,
        ))
    return out


def match_image(
    gt_boxes: ArrayLike,
    gt_iscrowd: ArrayLike,
    gt_area: ArrayLike,
    det_boxes: ArrayLike,
    det_scores: ArrayLike,
    *,
    iou_thresholds: ArrayLike = COCO_IOU_THRESHOLDS,
    area_range: tuple[float, float] = COCO_AREA_RANGES["all"],
    max_dets: int = 100,
) -> ImageMatch:
    """Match the detections of one image and one category to its ground truth, as pycocotools does.

    Parameters
    ----------
    gt_boxes : (G, 4) float, xywh in absolute pixels.
    gt_iscrowd : (G,) bool or 0/1; crowd boxes are ignored and may absorb any number of detections.
    gt_area : (G,) float, the annotations' ``area`` field (pixels^2), used for the area range only.
    det_boxes : (D, 4) float, xywh in absolute pixels; their area range test uses ``w * h``.
    det_scores : (D,) float, higher = more confident.
    iou_thresholds : (T,) IoU thresholds (default 0.50:0.05:0.95).
    area_range : (lo, hi) in pixels^2, inclusive (default pycocotools' "all").
    max_dets : detections kept per image and category, highest scores first.

    Returns
    -------
    ImageMatch. Where pycocotools returns ``None`` (no ground truth and no detection), the result has
    ``G = D = 0``.
    """
    return match_images([gt_boxes], [gt_iscrowd], [gt_area], [det_boxes], [det_scores],
                        iou_thresholds=iou_thresholds, area_range=area_range, max_dets=max_dets)[0]


def match_dataset(
    gt: CocoDataset,
    detections: list[dict[str, Any]],
    *,
    iou_thresholds: ArrayLike = COCO_IOU_THRESHOLDS,
    area_range: tuple[float, float] = COCO_AREA_RANGES["all"],
    max_dets: int = 100,
) -> DatasetMatches:
    """Match COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) against ``gt``.

    Every image and category of ``gt`` takes part, as in ``COCOeval`` (``imgIds``/``catIds`` sorted).
    ``detections`` must be validated already (``coco.load_detections``); an unknown image or category id
    still raises ``DataError``.
    """
    thr, rng = _check_options("match_dataset", iou_thresholds, area_range, max_dets)
    image_ids = np.unique(np.array([img["id"] for img in gt.images], dtype=np.int64))
    category_ids = np.unique(np.array(gt.category_ids, dtype=np.int64))
    n_img, n_cat = image_ids.size, category_ids.size
    anns = gt.annotations
    g_img = _index_of(image_ids, anns, "image_id", f"{gt.source}: annotation")
    g_cat = _index_of(category_ids, anns, "category_id", f"{gt.source}: annotation")
    d_img = _index_of(image_ids, detections, "image_id", "<detections>: detection")
    d_cat = _index_of(category_ids, detections, "category_id", "<detections>: detection")
    g_key, d_key = g_cat * n_img + g_img, d_cat * n_img + d_img  # category-major: rows come out by (cat, img)
    keys, inverse = np.unique(np.concatenate([g_key, d_key]), return_inverse=True)
    scores = _column(detections, "score", np.float64)
    res = _match_grouped(
        _boxes(anns), _column(anns, "iscrowd", bool), _column(anns, "area", np.float64), inverse[: len(anns)],
        _boxes(detections), scores, inverse[len(anns):], keys.size, thr, rng, max_dets,
    )
    n_kept = np.diff(res.det_offsets)
    gt_key = np.repeat(keys, np.diff(res.gt_offsets))
    gt_count = np.bincount(gt_key[~res.gt_ignored], minlength=n_img * n_cat).astype(np.int64)
    arrays = dict(
        image_ids=image_ids, category_ids=category_ids, iou_thresholds=thr.copy(),
        det_image=d_img[res.det_keep], det_category=d_cat[res.det_keep], det_score=scores[res.det_keep],
        det_rank=np.arange(res.det_keep.size) - np.repeat(res.det_offsets[:-1], n_kept),
        det_true_positive=(res.det_matched_gt != UNMATCHED) & ~res.det_ignored, det_ignored=res.det_ignored,
        gt_count=gt_count.reshape(n_cat, n_img).T.copy(),
    )
    for arr in arrays.values():
        arr.setflags(write=False)
    return DatasetMatches(**arrays)


def _boxes(records: list[dict[str, Any]]) -> np.ndarray:
    if not records:
        return np.zeros((0, 4), dtype=np.float64)
    return np.array([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4)


def _column(records: list[dict[str, Any]], key: str, dtype: Any) -> np.ndarray:
    return np.fromiter((r[key] for r in records), dtype, len(records))


def _index_of(sorted_ids: np.ndarray, records: list[dict[str, Any]], key: str, where: str) -> np.ndarray:
    """Position in ``sorted_ids`` of every record's ``key``; a value not present raises ``DataError``."""
    values = _column(records, key, np.int64)
    pos = np.searchsorted(sorted_ids, values)
    found = np.zeros(values.size, dtype=bool)
    inside = pos < sorted_ids.size
    found[inside] = sorted_ids[pos[inside]] == values[inside]
    bad = np.flatnonzero(~found)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where} [{i}]: {key} {int(values[i])} does not exist in the ground truth")
    return pos.astype(np.int64)


def average_precision_from_matches(matches: DatasetMatches) -> np.ndarray:
    """Per-category, per-threshold AP exactly as pycocotools' ``accumulate`` (101-point interpolation).

    For each category the detections of all images (ascending image id, each in rank order) are sorted
    by descending score with a stable sort; cumulative TP / FP counts give recall ``tp / npig`` and
    precision ``tp / (tp + fp + eps)``; precision is made non-increasing from the right and read at the
    first recall ``>= r`` for ``r`` in 0:0.01:1 (0 beyond the reached recall); AP is the mean of the 101.

    Returns
    -------
    (K, T) float64, rows in ``matches.category_ids`` order. NaN for a category without a non-ignored
    ground-truth box (pycocotools' -1, excluded from its mean): mAP is ``np.nanmean`` of the result.
    """
    n_cat, n_t = matches.category_ids.size, matches.iou_thresholds.size
    npig = matches.gt_count.sum(axis=0)
    bounds = np.searchsorted(matches.det_category, np.arange(n_cat + 1), side="left")
    out = np.full((n_cat, n_t), np.nan)
    for k in np.flatnonzero(npig > 0):
        s, e = bounds[k], bounds[k + 1]
        order = np.argsort(-matches.det_score[s:e], kind="stable")
        tps = matches.det_true_positive[s:e][order]
        fps = ~tps & ~matches.det_ignored[s:e][order]
        tp_sum = np.cumsum(tps, axis=0).astype(float)
        fp_sum = np.cumsum(fps, axis=0).astype(float)
        recall = tp_sum / npig[k]
        precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]  # envelope from the right
        for t in range(n_t):
            idx = np.searchsorted(recall[:, t], COCO_RECALL_THRESHOLDS, side="left")
            q = np.zeros(COCO_RECALL_THRESHOLDS.size)
            reached = idx < e - s
            q[reached] = precision[idx[reached], t]
            out[k, t] = q.mean()
    return out
