"""Empty inputs across the library: images without boxes, no predictions, classes absent from the ground truth.

Each case is a legal input with a documented result; none may crash or silently change the meaning of
the numbers. Where pycocotools defines the result, it is the reference.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from curation_core.coco import dataset_from_dict
from curation_core.corrupt import corrupt_annotations, missing_label_fractions
from curation_core.detgain import leave_one_out_learnability, select_top
from curation_core.evaluation import evaluate_detections
from curation_core.matching import average_precision_from_matches, match_dataset, match_image


def _gt(annotations: list[dict]) -> dict:
    return {
        "images": [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in (1, 2, 3)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "star"}, {"id": 5, "name": "ring"}],
    }


BOXES = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]},
    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 30, 10, 12]},
    {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 40, 15, 15]},
]
DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [3, 2, 20, 19], "score": 0.9},
    {"image_id": 1, "category_id": 5, "bbox": [30, 30, 10, 12], "score": 0.8},  # class without ground truth
    {"image_id": 3, "category_id": 2, "bbox": [1, 1, 10, 10], "score": 0.7},  # image without boxes
    {"image_id": 2, "category_id": 1, "bbox": [5, 41, 15, 15], "score": 0.4},
]


def _pycocotools_stats(raw: dict, dets: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {**raw, "annotations": [dict(a, area=a["bbox"][2] * a["bbox"][3], iscrowd=0) for a in raw["annotations"]]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_no_annotations_at_all_is_a_valid_data_set() -> None:
    ds = dataset_from_dict(_gt([]))
    assert ds.annotations_by_image == {1: [], 2: [], 3: []}
    result = evaluate_detections(ds, DETS)
    assert result.stats == tuple([-1.0] * 12)  # pycocotools: no ground truth anywhere -> -1
    assert all(np.isnan(v) for v in result.per_category_ap.values())
    assert missing_label_fractions(ds) == {"easy": 0.0, "hard": 0.0, "extreme": 0.0}


def test_no_predictions_gives_zero_not_an_error() -> None:
    ds = dataset_from_dict(_gt(BOXES))
    result = evaluate_detections(ds, [])
    assert result.stats[:3] == (0.0, 0.0, 0.0)
    assert result.num_detections == 0
    matches = match_dataset(ds, [])
    assert matches.det_score.shape == (0,) and matches.det_true_positive.shape == (0, 10)
    assert matches.gt_count.sum() == 3
    ap = average_precision_from_matches(matches)
    assert np.array_equal(np.isnan(ap[:, 0]), [False, False, True])  # ring has no ground truth: excluded
    assert np.all(ap[:2] == 0.0)


def test_images_without_boxes_and_classes_without_ground_truth_match_pycocotools() -> None:
    raw = _gt(BOXES)
    ds = dataset_from_dict(raw)
    result = evaluate_detections(ds, DETS)
    assert np.array_equal(np.asarray(result.stats), _pycocotools_stats(raw, DETS))
    assert np.isnan(result.per_category_ap[5]) and result.per_category_ap[2] == 0.0
    matches = match_dataset(ds, DETS)
    # the ring detection and the star detection on image 3 are false positives at every threshold
    fp = ~matches.det_true_positive & ~matches.det_ignored
    assert fp.sum(axis=1).tolist().count(10) >= 2
    assert float(np.nanmean(average_precision_from_matches(matches))) == pytest.approx(result.stats[0], abs=1e-12)


def test_empty_image_match_is_empty() -> None:
    empty = match_image(np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0), np.zeros((0, 4)), np.zeros(0))
    assert empty.det_order.shape == (0,) and empty.gt_matched.shape == (10, 0)
    only_gt = match_image(np.array([[0.0, 0, 5, 5]]), np.zeros(1, bool), np.array([25.0]), np.zeros((0, 4)), np.zeros(0))
    assert only_gt.gt_matched.shape == (10, 1) and not only_gt.gt_matched.any()


def test_detgain_with_no_student_predictions() -> None:
    ds = dataset_from_dict(_gt(BOXES))
    teacher = match_dataset(ds, DETS)
    student = match_dataset(ds, [])
    result = leave_one_out_learnability(teacher, student, estimator="exact")
    assert result.image_ids.tolist() == [1, 2, 3]
    # The student's mAP is 0 with or without any image: its DetGain is 0 everywhere.
    assert np.all(result.delta_student == 0.0)
    assert np.allclose(result.learnability, result.delta_teacher)


def test_corruption_of_images_without_boxes_changes_nothing() -> None:
    ds = dataset_from_dict(_gt([]))
    for mode in ("easy", "hard", "extreme"):
        out = corrupt_annotations(ds, mode=mode, seed=0)
        assert out.dataset.annotations == [] and out.n_before == 0 and out.fraction_removed == 0.0


def test_selection_from_an_empty_super_batch() -> None:
    picked = select_top(np.zeros(0), 0)
    assert picked.indices.shape == (0,)
