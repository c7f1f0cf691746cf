"""Reference helpers of the DetGain tests (random COCO cases, pycocotools brute force), checked here.

``random_case`` draws small COCO sets with every awkward case DetGain must handle: crowd boxes, images
without ground truth or without detections, categories with detections but no ground truth (and the
reverse), categories whose only ground truth sits in one image, and tied scores across images.
``matches_from_pycocotools`` turns ``COCOeval.evaluateImg`` output into ``DatasetMatches`` arrays: an
independent check of ``curation_core.matching``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest

from curation_core.coco import CocoDataset, dataset_from_dict
from curation_core.matching import DatasetMatches, average_precision_from_matches, match_dataset


def random_case(seed: int, *, n_images: int = 12, n_categories: int = 4, tie_levels: int | None = None,
                max_gt: int = 5, max_dets: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A random COCO ground truth and detections (xywh, absolute pixels) with the awkward cases above.

    ``tie_levels``: round scores to that many distinct values (ties across images); None: continuous.
    """
    rng = np.random.default_rng(seed)
    size = 64
    images = [{"id": int(i), "width": size, "height": size, "file_name": f"{i}.png"}
              for i in rng.choice(np.arange(1, 10 * n_images), n_images, replace=False)]
    cats = [{"id": int(c), "name": f"c{c}"} for c in range(1, n_categories + 1)]
    lonely = n_categories  # its only ground truth sits in one image
    annotations, detections = [], []
    for j, img in enumerate(images):
        n_gt = 0 if j % 5 == 0 else int(rng.integers(0, max_gt + 1))
        for _ in range(n_gt):
            cat = int(rng.integers(1, max(n_categories - 1, 1) + 1)) if n_categories > 2 else 1
            box = _box(rng, size)
            annotations.append({"id": len(annotations) + 1, "image_id": img["id"], "category_id": cat,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.1)})
            if rng.random() < 0.7:  # a detection near the box
                jitter = rng.normal(0, 2.5, 4)
                det = [float(np.clip(box[0] + jitter[0], 0, size - 2)), float(np.clip(box[1] + jitter[1], 0, size - 2)),
                       float(max(box[2] + jitter[2], 1.0)), float(max(box[3] + jitter[3], 1.0))]
                detections.append(_det(img["id"], cat, det, rng, tie_levels))
        if j == 1:
            box = _box(rng, size)
            annotations.append({"id": len(annotations) + 1, "image_id": img["id"], "category_id": lonely,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            detections.append(_det(img["id"], lonely, box, rng, tie_levels))
        if j % 7 != 3:  # some images get no detection at all
            for _ in range(int(rng.integers(0, max_dets + 1))):
                detections.append(_det(img["id"], int(rng.integers(1, n_categories + 1)), _box(rng, size), rng,
                                       tie_levels))
    return {"images": images, "annotations": annotations, "categories": cats}, detections


def _box(rng: np.random.Generator, size: int) -> list[float]:
    w, h = rng.uniform(4, size / 2, 2)
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return [float(x), float(y), float(w), float(h)]


def _det(image_id: int, cat: int, box: list[float], rng: np.random.Generator, tie_levels: int | None) -> dict[str, Any]:
    score = float(rng.random())
    if tie_levels:
        score = float(np.floor(score * tie_levels) / tie_levels)
    return {"image_id": image_id, "category_id": cat, "bbox": [float(v) for v in box], "score": score}


def pycocotools_map(gt: dict[str, Any], detections: list[dict[str, Any]], image_ids: list[int] | None = None) -> float:
    """pycocotools' ``stats[0]`` of the detections on ``image_ids`` (all images by default); -1 -> 0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        keep = set(coco_gt.getImgIds() if image_ids is None else image_ids)
        dets = [dict(d, bbox=list(d["bbox"])) for d in detections if d["image_id"] in keep]
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted(keep)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[0]), 0.0) if ev.stats[0] != -1 else 0.0


def matches_from_pycocotools(gt: dict[str, Any], detections: list[dict[str, Any]]) -> DatasetMatches:
    """``DatasetMatches`` arrays read from ``COCOeval.evaluateImg`` (area "all", 100 detections)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d, bbox=list(d["bbox"])) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
    image_ids = np.array(sorted(coco_gt.getImgIds()), dtype=np.int64)
    cat_ids = np.array(sorted(coco_gt.getCatIds()), dtype=np.int64)
    n_t = len(ev.params.iouThrs)
    rows: dict[str, list[Any]] = {k: [] for k in ("img", "cat", "score", "rank", "tp", "ign")}
    gt_count = np.zeros((image_ids.size, cat_ids.size), dtype=np.int64)
    n_area, n_img = len(ev.params.areaRng), image_ids.size
    for k in range(cat_ids.size):
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0 = all, maxDet 100
            if e is None:
                continue
            gt_count[i, k] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            for r, score in enumerate(e["dtScores"]):
                ign = np.asarray(e["dtIgnore"])[:, r].astype(bool)
                rows["img"].append(i), rows["cat"].append(k), rows["score"].append(score), rows["rank"].append(r)
                rows["tp"].append((np.asarray(e["dtMatches"])[:, r] > 0) & ~ign), rows["ign"].append(ign)
    return DatasetMatches(
        image_ids=image_ids, category_ids=cat_ids, iou_thresholds=np.asarray(ev.params.iouThrs),
        det_image=np.array(rows["img"], dtype=np.int64), det_category=np.array(rows["cat"], dtype=np.int64),
        det_score=np.array(rows["score"], dtype=np.float64), det_rank=np.array(rows["rank"], dtype=np.int64),
        det_true_positive=np.array(rows["tp"], dtype=bool).reshape(-1, n_t),
        det_ignored=np.array(rows["ign"], dtype=bool).reshape(-1, n_t), gt_count=gt_count,
    )


def matches_of(gt: dict[str, Any], detections: list[dict[str, Any]]) -> DatasetMatches:
    """``match_dataset`` of a raw COCO dict (validated on the way)."""
    dataset: CocoDataset = dataset_from_dict(gt)
    return match_dataset(dataset, detections)


@pytest.mark.parametrize("seed", range(6))
def test_pycocotools_helper_agrees_with_match_dataset(seed: int) -> None:
    gt, dets = random_case(seed, tie_levels=5 if seed % 2 else None)
    ours, ref = matches_of(gt, dets), matches_from_pycocotools(gt, dets)
    np.testing.assert_array_equal(ours.gt_count, ref.gt_count)

    def rows(m: DatasetMatches) -> list[tuple[Any, ...]]:
        return sorted(zip(m.det_image.tolist(), m.det_category.tolist(), m.det_rank.tolist(), m.det_score.tolist(),
                          map(tuple, m.det_true_positive.tolist()), map(tuple, m.det_ignored.tolist()), strict=True))

    assert rows(ours) == rows(ref)


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_of_helper_is_pycocotools(seed: int) -> None:
    gt, dets = random_case(seed)
    ap = average_precision_from_matches(matches_from_pycocotools(gt, dets))
    assert np.nanmean(ap) == pytest.approx(pycocotools_map(gt, dets), abs=1e-12)
