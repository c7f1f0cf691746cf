"""Per-image matching and AP: tiny hand-computed fixtures, then field-by-field parity with pycocotools.

The randomized cases are built to hit every branch of ``COCOeval.evaluateImg``: IoUs straddling the
thresholds (clustered boxes, integer coordinates giving IoUs of exactly 0.5, 0.75, ...), crowds,
ground truth ignored through its ``area`` field, duplicate boxes (IoU ties), score ties, more
detections than ``max_dets``, empty ground truth and empty detections.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from curation_core.coco import dataset_from_dict
from curation_core.errors import DataError
from curation_core.evaluation import COCO_AREA_RANGES, COCO_IOU_THRESHOLDS
from curation_core.matching import (
    UNMATCHED,
    DatasetMatches,
    average_precision_from_matches,
    bbox_iou,
    match_dataset,
    match_image,
    match_images,
)

ALL = COCO_AREA_RANGES["all"]
T = len(COCO_IOU_THRESHOLDS)


def _match(gts: list[tuple[list[float], int, float]], dets: list[tuple[list[float], float]], **kw: Any):
    """match_image on (bbox, iscrowd, area) ground truth and (bbox, score) detections."""
    return match_image(
        [g[0] for g in gts], [g[1] for g in gts], [g[2] for g in gts], [d[0] for d in dets], [d[1] for d in dets], **kw
    )


# ----------------------------------------------------------------------------------------------
# Hand-computed fixtures


def test_one_true_positive_and_one_false_positive() -> None:
    m = _match([([10, 10, 50, 50], 0, 2500.0)], [([200, 200, 10, 10], 0.3), ([10, 10, 50, 50], 0.9)])
    assert m.det_order.tolist() == [1, 0]
    assert m.det_scores.tolist() == [0.9, 0.3]
    assert (m.det_matched_gt == np.array([[0, UNMATCHED]] * T)).all()
    assert m.true_positive.tolist() == [[True, False]] * T
    assert m.false_positive.tolist() == [[False, True]] * T
    assert m.gt_matched.tolist() == [[True]] * T
    assert m.gt_ignored.tolist() == [False]


def test_partial_overlap_is_a_true_positive_only_up_to_its_iou() -> None:
    # gt 10x10, det shifted by 2 px: intersection 80, union 120, IoU = 2/3.
    m = _match([([0, 0, 10, 10], 0, 100.0)], [([2, 0, 10, 10], 0.5)])
    assert m.true_positive[:, 0].tolist() == [t <= 2 / 3 for t in COCO_IOU_THRESHOLDS]


def test_crowd_absorbs_several_detections_which_are_then_ignored() -> None:
    crowd = ([0, 0, 100, 100], 1, 10000.0)
    m = _match([crowd], [([10, 10, 20, 20], 0.9), ([50, 50, 20, 20], 0.8)])
    assert (m.det_matched_gt == 0).all()  # IoU with a crowd = intersection / area(det) = 1
    assert m.det_ignored.all()
    assert not m.true_positive.any() and not m.false_positive.any()
    assert m.gt_ignored.tolist() == [True] and m.gt_matched.all()


def test_a_regular_match_stops_the_search_before_ignored_ground_truth() -> None:
    # Input order: crowd first, regular second; pycocotools sorts ignored ground truth last.
    # IoU(det, regular) = 60/100 = 0.6, IoU(det, crowd) = 1.0: the regular box wins wherever 0.6 passes.
    gts = [([0, 0, 100, 100], 1, 10000.0), ([0, 0, 10, 6], 0, 60.0)]
    m = _match(gts, [([0, 0, 10, 10], 0.9)], iou_thresholds=[0.5, 0.7])
    assert m.det_matched_gt[:, 0].tolist() == [1, 0]
    assert m.true_positive[:, 0].tolist() == [True, False]
    assert m.det_ignored[:, 0].tolist() == [False, True]
    assert m.gt_matched.tolist() == [[False, True], [True, False]]


def test_equal_ious_go_to_the_later_ground_truth() -> None:
    box = [5, 5, 10, 10]
    m = _match([(box, 0, 100.0), (box, 0, 100.0)], [(box, 0.9), (box, 0.8), (box, 0.7)])
    assert m.det_matched_gt[0].tolist() == [1, 0, UNMATCHED]


def test_score_ties_keep_input_order_and_max_dets_cuts() -> None:
    dets = [([0, 0, 5, 5], 0.5), ([0, 0, 5, 5], 0.7), ([0, 0, 5, 5], 0.5), ([0, 0, 5, 5], 0.5)]
    m = _match([], dets, max_dets=3)
    assert m.det_order.tolist() == [1, 0, 2]
    assert m.false_positive.all() and m.det_matched_gt.shape == (T, 3)


def test_area_range_ignores_ground_truth_by_its_area_field_and_unmatched_dets_by_w_times_h() -> None:
    medium = COCO_AREA_RANGES["medium"]
    # The gt box is 40x40 (1600 px^2) but its area field says 500: ignored for "medium".
    gts = [([0, 0, 40, 40], 0, 500.0)]
    dets = [([0, 0, 40, 40], 0.9), ([100, 100, 10, 10], 0.8), ([200, 200, 40, 40], 0.7)]
    m = _match(gts, dets, area_range=medium)
    assert m.gt_ignored.tolist() == [True]
    assert m.det_matched_gt[:, 0].tolist() == [0] * T
    assert m.det_ignored[0].tolist() == [True, True, False]  # matched to ignored; 100 px^2 < 32^2; a real FP
    assert m.false_positive[0].tolist() == [False, False, True]


def test_empty_inputs() -> None:
    none = _match([], [])
    assert none.det_order.shape == (0,) and none.det_matched_gt.shape == (T, 0) and none.gt_matched.shape == (T, 0)
    no_dets = _match([([0, 0, 4, 4], 0, 16.0)], [])
    assert no_dets.gt_matched.shape == (T, 1) and not no_dets.gt_matched.any()
    no_gt = _match([], [([0, 0, 4, 4], 0.5)])
    assert no_gt.false_positive.all()


def test_results_are_read_only() -> None:
    m = _match([([0, 0, 4, 4], 0, 16.0)], [([0, 0, 4, 4], 0.5)])
    with pytest.raises(ValueError, match="read-only"):
        m.det_matched_gt[0, 0] = 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gt_boxes": [[0, 0, 1]]}, r"match_images\(gt_boxes=\) expects shape \(N, 4\) xywh; got \(1, 3\) at pair 0"),
        ({"gt_area": [1.0, 2.0]}, r"match_images\(gt_area=\) expects shape \(1,\); got \(2,\)"),
        ({"det_scores": [float("nan")]}, r"match_images\(det_scores=\) expects finite numbers"),
        ({"iou_thresholds": []}, r"iou_thresholds=\) expects a non-empty 1-D array"),
        ({"area_range": (10.0, 1.0)}, r"area_range=\) expects \(lo, hi\) with lo <= hi"),
        ({"max_dets": 0}, r"max_dets=\) expects a positive integer; got 0"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"gt_boxes": [[0, 0, 4, 4]], "gt_iscrowd": [0], "gt_area": [16.0],
                            "det_boxes": [[0, 0, 4, 4]], "det_scores": [0.5]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        match_image(**args)


def test_match_images_needs_one_entry_per_pair() -> None:
    with pytest.raises(ValueError, match=r"match_images\(\) expects sequences of equal length"):
        match_images([[[0, 0, 1, 1]]], [[0]], [[1.0]], [], [])


def test_bbox_iou_is_bitwise_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    det = np.round(rng.uniform(0, 50, (300, 4)), rng.integers(0, 3))
    det[:20, 2:] = 0.0  # degenerate detections are legal
    gt = np.round(rng.uniform(0, 50, (40, 4)), 1) + [0, 0, 0.5, 0.5]
    crowd = rng.random(40) < 0.3
    ours = bbox_iou(det, gt, crowd)
    ref = mask_utils.iou(det.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist())
    assert ours.dtype == np.float64 and ours.shape == (300, 40)
    assert np.array_equal(ours, ref)  # bitwise, not approximately


# ----------------------------------------------------------------------------------------------
# Randomized data sets and the reference


def _random_dataset(rng: np.random.Generator, *, n_images: int, n_categories: int, max_dets: int) -> tuple[dict, list[dict]]:
    """A COCO data set and a results list whose per-pair cases stress every rule of evaluateImg."""
    image_ids = rng.choice(np.arange(1, 10 * n_images), n_images, replace=False)  # unsorted, with gaps
    cat_ids = rng.choice(np.arange(1, 200), n_categories, replace=False)
    anns: list[dict] = []
    dets: list[dict] = []
    for img in image_ids:
        centres = rng.uniform(20, 400, (rng.integers(1, 4), 2))
        for cat in cat_ids:
            kind = rng.random()
            n_gt = 0 if kind < 0.2 else int(rng.integers(1, 8))
            n_det = 0 if 0.2 <= kind < 0.3 else int(rng.choice([rng.integers(0, 12), rng.integers(max_dets, 2 * max_dets + 3)], p=[0.9, 0.1]))
            boxes = _gt_boxes(rng, centres, n_gt)
            for b in boxes:
                area = float(b[2] * b[3])
                if rng.random() < 0.25:  # an area field that disagrees with the box
                    area = float(rng.choice([1024.0, 9216.0, np.round(np.exp(rng.uniform(0, 10)), 1)]))
                anns.append({"image_id": int(img), "category_id": int(cat), "bbox": b.tolist(), "area": area,
                             "iscrowd": int(rng.random() < 0.15)})
            decimals = int(rng.integers(1, 3))
            for b in _det_boxes(rng, boxes, centres, n_det):
                dets.append({"image_id": int(img), "category_id": int(cat), "bbox": b.tolist(),
                             "score": float(np.round(rng.random(), decimals))})
    order = rng.permutation(len(anns))
    anns = [{**anns[i], "id": k + 1} for k, i in enumerate(order)]
    dets = [dets[i] for i in rng.permutation(len(dets))]
    images = [{"id": int(i), "width": 640, "height": 640, "file_name": f"{i}.jpg"} for i in image_ids]
    categories = [{"id": int(c), "name": f"c{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _gt_boxes(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    wh = np.exp(rng.uniform(np.log(4), np.log(160), (n, 2)))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 15, (n, 2)) - wh / 2
    boxes = np.concatenate([np.clip(xy, 0, 400), wh], axis=1)
    boxes = np.round(boxes, 0) if rng.random() < 0.5 else np.round(boxes, 2)  # integers give exact IoUs
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
    dup = rng.random(n) < 0.15
    boxes[1:][dup[1:]] = boxes[:-1][dup[1:]]  # duplicates: IoU ties
    return boxes


def _det_boxes(rng: np.random.Generator, gts: np.ndarray, centres: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((n, 4))
    for k in range(n):
        u = rng.random()
        if len(gts) and u < 0.6:
            g = gts[rng.integers(len(gts))]
            jitter = rng.normal(0, rng.choice([0.02, 0.08, 0.2]), 4) * np.r_[g[2:], g[2:]]
            out[k] = np.round(g + jitter, rng.choice([0, 1, 2]))
        elif len(gts) and u < 0.7:
            out[k] = gts[rng.integers(len(gts))]
        elif k and u < 0.8:
            out[k] = out[rng.integers(k)]
        else:
            out[k] = _gt_boxes(rng, centres, 1)[0]
        out[k, 2:] = np.maximum(out[k, 2:], 0.0 if rng.random() < 0.02 else 0.5)
    return out


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _pycocotools(gt_dict: dict, dets: list[dict], *, area_ranges: list, max_dets: list[int]) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = {**gt_dict, "annotations": [dict(a) for a in gt_dict["annotations"]]}
    _quiet(coco_gt.createIndex)
    coco_dt = _quiet(coco_gt.loadRes, [dict(d) for d in dets])
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.areaRng = [list(r) for r in area_ranges]
    default = [tuple(r) for r in ev.params.areaRng] == [tuple(r) for r in area_ranges]
    ev.params.areaRngLbl = ev.params.areaRngLbl if default else [str(i) for i in range(len(area_ranges))]
    ev.params.maxDets = list(max_dets)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    return ev


CASES = [  # seed, images, categories, max_dets, area ranges
    (0, 200, 6, 100, [ALL, COCO_AREA_RANGES["small"], COCO_AREA_RANGES["medium"], COCO_AREA_RANGES["large"]]),
    (1, 200, 6, 10, [ALL, (500.0, 4000.0)]),
    (2, 150, 6, 3, [ALL, COCO_AREA_RANGES["medium"]]),
    (3, 150, 5, 1, [ALL, (1024.0, 9216.0)]),
]


@pytest.mark.parametrize(("seed", "n_images", "n_categories", "max_dets", "area_ranges"), CASES)
def test_match_images_equals_evaluate_img(seed: int, n_images: int, n_categories: int, max_dets: int,
                                          area_ranges: list) -> None:
    gt_dict, dets = _random_dataset(np.random.default_rng(seed), n_images=n_images, n_categories=n_categories,
                                    max_dets=max_dets)
    ev = _pycocotools(gt_dict, dets, area_ranges=area_ranges, max_dets=[max_dets])
    anns = gt_dict["annotations"]
    gt_of: dict[tuple[int, int], list[int]] = defaultdict(list)
    det_of: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, a in enumerate(anns):
        gt_of[a["image_id"], a["category_id"]].append(i)
    for j, d in enumerate(dets):
        det_of[d["image_id"], d["category_id"]].append(j)
    keys = [(img, cat) for cat in ev.params.catIds for img in ev.params.imgIds]
    checked = 0
    for a_idx, area in enumerate(area_ranges):
        matches = match_images(
            [[anns[i]["bbox"] for i in gt_of[k]] for k in keys],
            [[anns[i]["iscrowd"] for i in gt_of[k]] for k in keys],
            [[anns[i]["area"] for i in gt_of[k]] for k in keys],
            [[dets[j]["bbox"] for j in det_of[k]] for k in keys],
            [[dets[j]["score"] for j in det_of[k]] for k in keys],
            area_range=area, max_dets=max_dets,
        )
        n_img = len(ev.params.imgIds)
        for p, (key, m) in enumerate(zip(keys, matches, strict=True)):
            k_idx, i_idx = divmod(p, n_img)
            e = ev.evalImgs[(k_idx * len(area_ranges) + a_idx) * n_img + i_idx]
            _assert_same(e, m, [anns[i]["id"] for i in gt_of[key]], [j + 1 for j in det_of[key]])
            checked += e is not None
    assert checked > 1000  # thousands of (image, category, area range) cases per data set


def _assert_same(e: dict | None, m: Any, gt_ids: list[int], det_ids: list[int]) -> None:
    """Every field of one ImageMatch against one evalImgs entry (ids translated to input indices)."""
    if e is None:
        assert not gt_ids and not det_ids
        assert m.det_order.size == 0 and m.gt_ignored.size == 0
        return
    assert [det_ids[i] for i in m.det_order] == e["dtIds"]
    assert m.det_scores.tolist() == e["dtScores"]
    position = {gid: k for k, gid in enumerate(gt_ids)}
    perm = np.array([position[g] for g in e["gtIds"]], dtype=np.int64)  # pycocotools order -> input index
    lookup = {0: UNMATCHED, **{float(g): position[g] for g in gt_ids}}
    expected = np.array([[lookup[float(v)] for v in row] for row in e["dtMatches"]], dtype=np.int64).reshape(T, -1)
    np.testing.assert_array_equal(m.det_matched_gt, expected)
    np.testing.assert_array_equal(m.det_ignored, e["dtIgnore"].astype(bool).reshape(T, -1))
    np.testing.assert_array_equal(m.gt_ignored[perm], np.asarray(e["gtIgnore"], dtype=bool))
    np.testing.assert_array_equal(m.gt_matched[:, perm], (e["gtMatches"] > 0).reshape(T, -1))


# ----------------------------------------------------------------------------------------------
# Whole data sets and AP


DATASET_CASES = [(10, 60, 6), (11, 40, 3), (12, 90, 8)]


@pytest.mark.parametrize(("seed", "n_images", "n_categories"), DATASET_CASES)
def test_match_dataset_and_ap_equal_cocoeval(seed: int, n_images: int, n_categories: int) -> None:
    rng = np.random.default_rng(seed)
    gt_dict, dets = _random_dataset(rng, n_images=n_images, n_categories=n_categories, max_dets=12)
    gt_dict["categories"].append({"id": 999, "name": "absent"})  # a category without ground truth
    gt_dict["images"].append({"id": 99_999, "width": 10, "height": 10, "file_name": "empty.jpg"})
    gt = dataset_from_dict(gt_dict)
    areas = [ALL, COCO_AREA_RANGES["small"], COCO_AREA_RANGES["medium"], COCO_AREA_RANGES["large"]]
    ev = _pycocotools(gt_dict, dets, area_ranges=areas, max_dets=[1, 10, 100])
    for a_idx, area in enumerate(areas):
        for m_idx, max_dets in enumerate([1, 10, 100]):
            matches = match_dataset(gt, dets, area_range=area, max_dets=max_dets)
            if a_idx == 0 and max_dets == 100:
                _assert_rows_equal_eval_imgs(matches, ev)
            ap = average_precision_from_matches(matches)
            ref = ev.eval["precision"][:, :, :, a_idx, m_idx]  # (T, R, K)
            absent = (ref == -1).all(axis=(0, 1))
            assert np.array_equal(np.isnan(ap).all(axis=1), absent)
            np.testing.assert_allclose(ap[~absent], ref[:, :, ~absent].mean(axis=1).T, rtol=0, atol=1e-12)
    _quiet(ev.summarize)
    for stat, area in [(0, ALL), (3, COCO_AREA_RANGES["small"]), (4, COCO_AREA_RANGES["medium"]),
                       (5, COCO_AREA_RANGES["large"])]:
        ap = average_precision_from_matches(match_dataset(gt, dets, area_range=area))
        expected = ev.stats[stat]
        assert (np.nanmean(ap) if not np.isnan(ap).all() else -1.0) == pytest.approx(expected, abs=1e-12)
    ap50 = average_precision_from_matches(match_dataset(gt, dets))[:, 0]
    assert np.nanmean(ap50) == pytest.approx(ev.stats[1], abs=1e-12)


def _assert_rows_equal_eval_imgs(matches: DatasetMatches, ev: Any) -> None:
    assert matches.image_ids.tolist() == [int(i) for i in ev.params.imgIds]
    assert matches.category_ids.tolist() == [int(c) for c in ev.params.catIds]
    n_img, n_areas = len(ev.params.imgIds), len(ev.params.areaRng)
    key = matches.det_category * n_img + matches.det_image
    assert (np.diff(key) >= 0).all()  # rows ordered by (category, image, rank)
    start = np.searchsorted(key, np.arange(n_img * len(ev.params.catIds) + 1))
    for k in range(len(ev.params.catIds)):
        for i in range(n_img):
            e = ev.evalImgs[k * n_areas * n_img + i]
            rows = slice(start[k * n_img + i], start[k * n_img + i + 1])
            if e is None:
                assert rows.start == rows.stop and matches.gt_count[i, k] == 0
                continue
            assert matches.det_rank[rows].tolist() == list(range(len(e["dtIds"])))
            assert matches.det_score[rows].tolist() == e["dtScores"]
            ignored = e["dtIgnore"].astype(bool).reshape(T, -1)
            np.testing.assert_array_equal(matches.det_ignored[rows].T, ignored)
            np.testing.assert_array_equal(matches.det_true_positive[rows].T, (e["dtMatches"] > 0) & ~ignored)
            assert matches.gt_count[i, k] == int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))


def test_match_dataset_without_detections_gives_zero_ap_where_there_is_ground_truth() -> None:
    gt_dict, _ = _random_dataset(np.random.default_rng(5), n_images=10, n_categories=3, max_dets=5)
    gt_dict["categories"].append({"id": 999, "name": "absent"})
    matches = match_dataset(dataset_from_dict(gt_dict), [])
    assert matches.det_true_positive.shape == (0, T)
    ap = average_precision_from_matches(matches)
    has_gt = matches.gt_count.sum(axis=0) > 0
    assert (ap[has_gt] == 0).all() and np.isnan(ap[~has_gt]).all()
    assert not matches.det_score.flags.writeable


def test_removing_a_true_positive_lowers_ap() -> None:
    gt_dict, dets = _random_dataset(np.random.default_rng(6), n_images=30, n_categories=2, max_dets=20)
    gt = dataset_from_dict(gt_dict)
    matches = match_dataset(gt, dets)
    ap = average_precision_from_matches(matches)
    for row in np.flatnonzero(matches.det_true_positive[:, 0])[:5]:
        k = matches.det_category[row]
        pair = (int(matches.image_ids[matches.det_image[row]]), int(matches.category_ids[k]))
        of_pair = [j for j, d in enumerate(dets) if (d["image_id"], d["category_id"]) == pair]
        by_rank = sorted(of_pair, key=lambda j: -dets[j]["score"])  # stable, as pycocotools
        drop = by_rank[matches.det_rank[row]]
        ap_without = average_precision_from_matches(match_dataset(gt, dets[:drop] + dets[drop + 1:]))
        assert ap_without[k, 0] < ap[k, 0]


def test_match_dataset_rejects_unknown_ids() -> None:
    gt = dataset_from_dict({"images": [{"id": 1, "width": 9, "height": 9, "file_name": "a"}],
                            "annotations": [], "categories": [{"id": 3, "name": "x"}]})
    good = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2], "score": 0.5}
    with pytest.raises(DataError, match=r"detection \[1\]: image_id 7 does not exist in the ground truth"):
        match_dataset(gt, [good, {**good, "image_id": 7}])
    with pytest.raises(DataError, match=r"detection \[0\]: category_id 4 does not exist"):
        match_dataset(gt, [{**good, "category_id": 4}])
