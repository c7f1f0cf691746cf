"""match_targets and per_image_ap: hand-computed fixtures, parity with match_dataset and pycocotools, errors.

The randomized super-batches hold views of a few base images (each base image occurs up to three
times, under different stream positions), crowd / ignore regions, duplicate boxes (IoU ties), score
ties, more detections than ``max_dets``, images without targets or without detections, and a mix of
numpy arrays and float32 / float64 tensors.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import fields
from typing import Any

import numpy as np
import pytest
import torch

from curation_core.coco import dataset_from_dict
from curation_core.evaluation import COCO_AREA_RANGES
from curation_core.matching import DatasetMatches, average_precision_from_matches, match_dataset
from curation_core.target_matching import match_targets, per_image_ap

Batch = tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]


def _random_batch(rng: np.random.Generator, *, n_base: int, n_views: int, n_categories: int, max_dets: int) -> Batch:
    """Targets, detections and ascending keys of ``n_views`` views of ``n_base`` base images."""
    bases = [_random_target(rng, n_categories) for _ in range(n_base)]
    base_of = np.concatenate([np.arange(n_base), rng.integers(0, n_base, n_views - n_base)])  # duplicates
    keys = np.cumsum(rng.integers(1, 1000, n_views)) + 10**12  # stream positions: ascending, with gaps
    targets, detections = [], []
    for v in rng.permutation(base_of):
        boxes, labels, ignore = bases[v]
        targets.append(_as_inputs(rng, boxes=boxes, labels=labels, ignore=ignore))
        d_boxes, d_labels = _random_detections(rng, boxes, labels, n_categories, max_dets)
        scores = np.round(rng.random(len(d_boxes)), int(rng.integers(1, 3)))  # coarse scores: ties
        detections.append(_as_inputs(rng, boxes=d_boxes, labels=d_labels, scores=scores))
    return targets, detections, keys


def _random_target(rng: np.random.Generator, n_categories: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = 0 if rng.random() < 0.15 else int(rng.integers(1, 12))
    wh = np.exp(rng.uniform(np.log(4), np.log(160), (n, 2)))
    xy = np.clip(rng.uniform(20, 300, (1, 2)) + rng.normal(0, 40, (n, 2)), 0, 400)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    boxes = np.round(boxes) if rng.random() < 0.5 else np.round(boxes, 2)  # integers give exact IoUs
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    dup = rng.random(n) < 0.15
    boxes[1:][dup[1:]] = boxes[:-1][dup[1:]]
    labels = rng.integers(1, n_categories + 1, n)
    labels[1:][dup[1:]] = labels[:-1][dup[1:]]
    ignore = rng.random(n) < (0.9 if rng.random() < 0.05 else 0.15)  # some images with only ignored boxes
    return boxes, labels, ignore


def _random_detections(rng: np.random.Generator, gt: np.ndarray, labels: np.ndarray, n_categories: int,
                       max_dets: int) -> tuple[np.ndarray, np.ndarray]:
    n = 0 if rng.random() < 0.1 else int(rng.integers(0, 25 if rng.random() < 0.9 else 3 * max_dets + 2))
    out, lab = np.empty((n, 4)), rng.integers(1, n_categories + 1, n)
    for k in range(n):
        u = rng.random()
        if len(gt) and u < 0.7:
            g = int(rng.integers(len(gt)))
            size = np.r_[gt[g, 2:] - gt[g, :2], gt[g, 2:] - gt[g, :2]]
            out[k] = np.round(gt[g] + rng.normal(0, rng.choice([0.0, 0.03, 0.1, 0.25]), 4) * size, rng.choice([0, 1, 2]))
            lab[k] = labels[g] if rng.random() < 0.85 else lab[k]
        elif k and u < 0.8:
            out[k], lab[k] = out[k - 1], lab[k - 1]
        else:
            xy = rng.uniform(0, 400, 2)
            out[k] = np.r_[xy, xy + rng.uniform(0, 120, 2)]
        out[k, 2:] = np.maximum(out[k, 2:], out[k, :2])  # zero-width detections are legal
    return out, lab


def _as_inputs(rng: np.random.Generator, **arrays: np.ndarray) -> dict[str, Any]:
    """The arrays as numpy, float32 tensors or float64 tensors; an all-False ``ignore`` is sometimes left out."""
    kind = rng.integers(3)
    out: dict[str, Any] = {"image_id": -7}  # other keys are ignored
    for name, arr in arrays.items():
        if name == "ignore" and not arr.any() and rng.random() < 0.5:
            continue
        if kind == 0:
            out[name] = arr.copy()
        elif name in ("boxes", "scores"):
            out[name] = torch.tensor(arr, dtype=torch.float32 if kind == 1 else torch.float64)
        else:
            out[name] = torch.tensor(arr)
    return out


def _np(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _coco(batch: Batch, category_ids: list[int]) -> tuple[dict, list[dict]]:
    """The equivalent COCO data set: image id = key, bbox xywh, area = w * h, iscrowd = ignore."""
    targets, detections, keys = batch
    images = [{"id": int(k), "width": 10_000, "height": 10_000, "file_name": f"{k}.jpg"} for k in keys]
    anns: list[dict] = []
    dets: list[dict] = []
    for key, t, d in zip(keys, targets, detections, strict=True):
        ignore = _np(t.get("ignore", np.zeros(len(t["labels"]), bool)))
        for box, label, crowd in zip(_xywh(t["boxes"]), _np(t["labels"]), ignore, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": int(key), "category_id": category_ids[label - 1],
                         "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": int(crowd)})
        for box, label, score in zip(_xywh(d["boxes"]), _np(d["labels"]), _np(d["scores"]), strict=True):
            dets.append({"image_id": int(key), "category_id": category_ids[label - 1], "bbox": box.tolist(),
                         "score": float(score)})
    categories = [{"id": c, "name": f"c{c}"} for c in category_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _xywh(boxes: Any) -> np.ndarray:
    b = _np(boxes).astype(np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def _assert_matches_equal(ours: DatasetMatches, ref: DatasetMatches) -> None:
    for f in fields(DatasetMatches):
        a, b = getattr(ours, f.name), getattr(ref, f.name)
        assert a.dtype == b.dtype and a.shape == b.shape, f.name
        assert np.array_equal(a, b), f.name


# ----------------------------------------------------------------------------------------------
# Hand-computed fixtures


def _target(boxes: list, labels: list, ignore: list | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4), "labels": np.array(labels, dtype=np.int64)}
    if ignore is not None:
        out["ignore"] = np.array(ignore, dtype=bool)
    return out


def _dets(boxes: list, labels: list, scores: list) -> dict[str, Any]:
    return {**_target(boxes, labels), "scores": np.array(scores, dtype=np.float64)}


def test_labels_map_to_unsorted_category_ids_and_keys_become_image_ids() -> None:
    targets = [_target([[0, 0, 10, 10], [20, 20, 30, 40]], [1, 2]), _target([], [])]
    dets = [_dets([[0, 0, 10, 10], [20, 20, 30, 40]], [1, 3], [0.9, 0.8]), _dets([[1, 1, 5, 5]], [3], [0.4])]
    m = match_targets(targets, dets, keys=[7, 1001], category_ids=[9, 3, 5])
    assert m.image_ids.tolist() == [7, 1001] and m.category_ids.tolist() == [3, 5, 9]
    # label 1 -> id 9 (index 2), label 2 -> id 3 (index 0), label 3 -> id 5 (index 1)
    assert m.gt_count.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert m.det_category.tolist() == [1, 1, 2] and m.det_image.tolist() == [0, 1, 0]  # category-major rows
    assert m.det_true_positive[:, 0].tolist() == [False, False, True]  # rows = detections; the box of label 2 came as label 3
    assert not m.det_score.flags.writeable


def test_an_ignored_box_absorbs_detections_and_is_not_counted() -> None:
    targets = [_target([[0, 0, 100, 100], [200, 200, 210, 210]], [1, 1], [True, False])]
    dets = [_dets([[10, 10, 30, 30], [50, 50, 70, 70], [200, 200, 210, 210]], [1, 1, 1], [0.9, 0.8, 0.7])]
    m = match_targets(targets, dets, keys=[0], category_ids=[1])
    assert m.gt_count.tolist() == [[1]]
    assert m.det_ignored[:2].all()  # inside the crowd: IoU = inter / area(det)
    assert m.det_true_positive[2].all() and not m.det_ignored[2].any()
    assert per_image_ap(m) == pytest.approx([1.0], abs=1e-12)  # precision 1 / (1 + eps), as pycocotools


def test_per_image_ap_by_hand() -> None:
    box = [[10, 10, 50, 50]]
    targets = [_target(box, [1]), _target(box, [1]), _target([], []), _target(box, [1], [True]), _target(box, [2])]
    dets = [
        _dets(box, [1], [0.9]),  # one TP: AP 1
        _dets([[100, 100, 120, 120], *box], [1, 1], [0.9, 0.5]),  # FP above the TP: precision 1/2 at recall 1
        _dets(box, [1], [0.9]),  # no ground truth: pycocotools' -1
        _dets(box, [1], [0.9]),  # only an ignored box: -1 too
        _dets(box, [1], [0.9]),  # ground truth of category 2, detected as 1: AP 0 (category 1 does not count)
    ]
    ap = per_image_ap(match_targets(targets, dets, keys=np.arange(5), category_ids=[1, 2]))
    assert ap[[0, 1, 4]] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert np.isnan(ap[[2, 3]]).all()


def test_empty_batches() -> None:
    m = match_targets([], [], keys=np.zeros(0, np.int64), category_ids=[4, 2])
    assert m.gt_count.shape == (0, 2) and m.det_true_positive.shape == (0, 10)
    assert per_image_ap(m).shape == (0,)
    targets = [_target([], []), {"boxes": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    dets = [_dets([], [], []), _dets([], [], [])]
    m = match_targets(targets, dets, keys=[3, 4], category_ids=[])
    assert m.gt_count.shape == (2, 0) and m.det_score.shape == (0,)
    assert np.isnan(per_image_ap(m)).all()


def test_inputs_are_not_modified() -> None:
    targets, dets, keys = _random_batch(np.random.default_rng(3), n_base=10, n_views=14, n_categories=3, max_dets=5)
    before = [{k: _np(v).copy() for k, v in d.items() if k != "image_id"} for d in targets + dets]
    match_targets(targets, dets, keys=keys, category_ids=[1, 2, 3], max_dets=5)
    after = [{k: _np(v) for k, v in d.items() if k != "image_id"} for d in targets + dets]
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(before, after, strict=True) for k in a)


# ----------------------------------------------------------------------------------------------
# Parity with match_dataset on the equivalent COCO data set


PARITY_CASES = [  # seed, base images, views, category ids, max_dets, area range
    (0, 90, 150, [9, 3, 5], 100, COCO_AREA_RANGES["all"]),
    (1, 80, 130, [17, 2, 40, 8, 11, 5], 5, COCO_AREA_RANGES["all"]),
    (2, 70, 120, [4, 1, 3, 2], 100, COCO_AREA_RANGES["medium"]),
    (3, 50, 80, [6, 7], 1, (500.0, 5000.0)),
]


@pytest.mark.parametrize(("seed", "n_base", "n_views", "category_ids", "max_dets", "area"), PARITY_CASES)
def test_match_targets_equals_match_dataset(seed: int, n_base: int, n_views: int, category_ids: list[int],
                                            max_dets: int, area: tuple[float, float]) -> None:
    batch = _random_batch(np.random.default_rng(seed), n_base=n_base, n_views=n_views,
                          n_categories=len(category_ids), max_dets=max_dets)
    gt_dict, dets = _coco(batch, category_ids)
    ref = match_dataset(dataset_from_dict(gt_dict), dets, area_range=area, max_dets=max_dets)
    targets, detections, keys = batch
    ours = match_targets(targets, detections, keys=keys, category_ids=category_ids, area_range=area,
                         max_dets=max_dets)
    _assert_matches_equal(ours, ref)
    assert ref.det_ignored.any() and ref.det_true_positive.any() and (ref.gt_count.sum(axis=1) == 0).any()


# ----------------------------------------------------------------------------------------------
# per_image_ap against COCOeval on single images


def _single_image_stats0(gt_dict: dict, dets: list[dict], image_id: int) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [img for img in gt_dict["images"] if img["id"] == image_id],
            "annotations": [dict(a) for a in gt_dict["annotations"] if a["image_id"] == image_id],
            "categories": gt_dict["categories"],
        }
        coco_gt.createIndex()
        own = [dict(d) for d in dets if d["image_id"] == image_id]
        ev = COCOeval(coco_gt, coco_gt.loadRes(own) if own else COCO(), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


@pytest.mark.parametrize("seed", [4, 5])
def test_per_image_ap_equals_cocoeval_on_each_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    category_ids = [8, 2, 5, 3]
    batch = _random_batch(rng, n_base=60, n_views=80, n_categories=len(category_ids), max_dets=100)
    gt_dict, dets = _coco(batch, category_ids)
    targets, detections, keys = batch
    ap = per_image_ap(match_targets(targets, detections, keys=keys, category_ids=category_ids))
    without = np.flatnonzero(np.isnan(ap))
    chosen = np.concatenate([without[:3], rng.choice(np.flatnonzero(~np.isnan(ap)), 12, replace=False)])
    assert without.size >= 2 and ((0 < ap) & (ap < 1)).sum() > 10
    for i in chosen:
        expected = _single_image_stats0(gt_dict, dets, int(keys[i]))
        if expected == -1.0:
            assert np.isnan(ap[i]), i
        else:
            assert abs(ap[i] - expected) <= 1e-12, (i, ap[i], expected)


def test_per_image_ap_equals_average_precision_of_each_image_alone() -> None:
    category_ids = [5, 1, 9]
    targets, detections, keys = _random_batch(np.random.default_rng(6), n_base=40, n_views=60,
                                              n_categories=3, max_dets=4)
    ap = per_image_ap(match_targets(targets, detections, keys=keys, category_ids=category_ids, max_dets=4))
    for i in range(len(keys)):
        alone = average_precision_from_matches(
            match_targets(targets[i : i + 1], detections[i : i + 1], keys=keys[i : i + 1],
                          category_ids=category_ids, max_dets=4))
        if np.isnan(alone).all():
            assert np.isnan(ap[i])
        else:
            assert abs(ap[i] - np.nanmean(alone)) <= 1e-12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_same_matches() -> None:
    targets, detections, keys = _random_batch(np.random.default_rng(7), n_base=30, n_views=40, n_categories=3,
                                              max_dets=100)
    cuda = [[{k: torch.as_tensor(v).cuda() for k, v in d.items() if k != "image_id"} for d in side]
            for side in (targets, detections)]
    ref = match_targets(targets, detections, keys=keys, category_ids=[1, 2, 3])
    _assert_matches_equal(match_targets(*cuda, keys=torch.as_tensor(keys).cuda(), category_ids=[1, 2, 3]), ref)


# ----------------------------------------------------------------------------------------------
# Errors


def _valid() -> dict[str, Any]:
    return {
        "targets": [_target([[0, 0, 4, 4]], [1]), _target([[0, 0, 4, 4], [1, 1, 3, 3]], [1, 2], [False, True])],
        "detections": [_dets([[0, 0, 4, 4]], [1], [0.5]), _dets([[0, 0, 4, 4]], [3], [0.5])],
        "keys": [10, 20],
        "category_ids": [9, 3, 5],
    }


def _with(side: str, image: int, **values: Any) -> dict[str, Any]:
    args = _valid()
    args[side][image] = {**args[side][image], **values}
    return args


ERROR_CASES = [
    ({**_valid(), "detections": [_dets([], [], [])]},
     r"^match_targets\(detections=\) expects one mapping per image \(len\(targets\) = 2\); got 1\.$"),
    ({**_valid(), "keys": [20, 20]},
     r"^match_targets\(keys=\) expects strictly ascending, distinct stream positions; got 20 after 20 at image 1\.$"),
    ({**_valid(), "keys": [30, 20]}, r"keys=\) expects strictly ascending.*got 20 after 30 at image 1\.$"),
    ({**_valid(), "keys": [1, 2, 3]}, r"keys=\) expects \(2,\) integers, one stream position per image; got int64 of shape \(3,\)"),
    ({**_valid(), "keys": [1.0, 2.0]}, r"keys=\) expects \(2,\) integers.*got float64"),
    ({**_valid(), "category_ids": [9, 3, 9]}, r"category_ids=\) expects distinct ids; got 9 2 times\.$"),
    ({**_valid(), "iou_thresholds": []}, r"^match_targets\(iou_thresholds=\) expects a non-empty 1-D array"),
    ({**_valid(), "max_dets": 0}, r"^match_targets\(max_dets=\) expects a positive integer; got 0\.$"),
    (_with("targets", 1, labels=np.array([1, 4])),
     r"^match_targets\(targets=\) expects 'labels' in 1\.\.3 \(K = len\(category_ids\)\); got 4 at image 1, box 1\.$"),
    (_with("detections", 1, labels=np.array([0])), r"detections=\) expects 'labels' in 1\.\.3.*got 0 at image 1, box 0\.$"),
    (_with("targets", 1, labels=np.array([1.0, 2.0])), r"targets=\) expects 'labels' of an integer dtype; got float64 at image 1\.$"),
    (_with("targets", 1, labels=np.array([1])), r"targets=\) expects 'labels' of shape \(2,\), one per box; got \(1,\) at image 1\.$"),
    (_with("targets", 0, boxes=np.zeros((1, 3))), r"targets=\) expects 'boxes' of shape \(n, 4\) xyxy; got \(1, 3\) at image 0\.$"),
    (_with("detections", 0, boxes=torch.zeros(4)), r"detections=\) expects 'boxes' of shape \(n, 4\) xyxy; got \(4,\) at image 0\.$"),
    (_with("detections", 1, boxes=np.array([[0, 0, np.nan, 4]])), r"detections=\) expects 'boxes' with finite coordinates; got \[0\.0, 0\.0, nan, 4\.0\] at image 1, box 0\.$"),
    (_with("targets", 1, boxes=np.array([[0, 0, 4, 4], [3, 1, 2, 3]])), r"targets=\) expects 'boxes' with x1 <= x2 and y1 <= y2 \(xyxy\); got \[3\.0, 1\.0, 2\.0, 3\.0\] at image 1, box 1\.$"),
    (_with("detections", 0, scores=torch.tensor([float("inf")])), r"detections=\) expects 'scores' with finite values; got inf at image 0, box 0\.$"),
    (_with("detections", 0, scores=np.array([0.5, 0.4])), r"detections=\) expects 'scores' of shape \(1,\), one per box; got \(2,\) at image 0\.$"),
    (_with("targets", 1, ignore=np.array([0, 2])), r"targets=\) expects 'ignore' of bool or 0/1 values; got 2 at image 1, box 1\.$"),
    (_with("targets", 1, ignore=np.array([0.0, 1.0])), r"targets=\) expects 'ignore' of a bool or integer dtype; got float64 at image 1\.$"),
    ({**_valid(), "detections": [_dets([], [], []), {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}]},
     r"detections=\) expects the key 'scores'; got keys \['boxes', 'labels'\] at image 1\.$"),
    ({**_valid(), "targets": [_target([], []), np.zeros((1, 4))]}, r"targets=\) expects a mapping per image; got ndarray at image 1\.$"),
]


@pytest.mark.parametrize(("args", "match"), ERROR_CASES)
def test_bad_input_raises_one_line_value_error(args: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        match_targets(args.pop("targets"), args.pop("detections"), **args)
