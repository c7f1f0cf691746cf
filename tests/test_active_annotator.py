"""The simulated annotator of box-level active learning: snap at IoU >= 0.5, else background; ties."""

from __future__ import annotations

import numpy as np
import pytest

from curation_core.active.annotator import annotate_boxes, pairwise_iou


def _ann(ann_id: int, category_id: int, xywh: list[float], **extra: int) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": category_id, "bbox": xywh, **extra}


GT = [_ann(11, 3, [0, 0, 10, 10]), _ann(12, 5, [20, 20, 10, 10])]


def test_a_box_at_iou_one_half_snaps_to_the_ground_truth_and_takes_its_class() -> None:
    # [0, 0, 10, 5] inside [0, 0, 10, 10]: IoU = 50 / 100 = 0.5 exactly.
    (answer,) = annotate_boxes(np.array([[0.0, 0.0, 10.0, 5.0]]), GT)
    assert answer.is_object and answer.category_id == 3 and answer.gt_id == 11
    assert answer.iou == pytest.approx(0.5)
    np.testing.assert_array_equal(answer.box, [0, 0, 10, 10])


def test_a_box_below_one_half_is_background_with_its_coordinates_unchanged() -> None:
    query = np.array([[0.0, 0.0, 10.0, 4.9]])  # IoU 0.49
    (answer,) = annotate_boxes(query, GT)
    assert not answer.is_object and answer.category_id is None and answer.gt_id is None
    assert answer.iou == pytest.approx(0.49)
    np.testing.assert_array_equal(answer.box, query[0])


def test_the_ground_truth_of_largest_iou_wins_and_ties_go_to_the_first_listed() -> None:
    gt = [_ann(21, 3, [0, 0, 10, 10]), _ann(22, 5, [2, 0, 10, 10]), _ann(23, 9, [0, 0, 10, 10])]
    # [1, 0, 11, 10]: IoU 90/110 with 21 and 23, 90/110 with 22 as well: a three-way tie -> 21.
    (tie,) = annotate_boxes(np.array([[1.0, 0.0, 11.0, 10.0]]), gt)
    assert tie.gt_id == 21 and tie.category_id == 3
    # [2, 0, 12, 10] equals box 22: IoU 1 beats 0.667 of the others.
    (best,) = annotate_boxes(np.array([[2.0, 0.0, 12.0, 10.0]]), gt)
    assert best.gt_id == 22 and best.category_id == 5 and best.iou == pytest.approx(1.0)


def test_crowds_are_never_targets_and_an_image_without_boxes_answers_background() -> None:
    crowd = [_ann(31, 3, [0, 0, 10, 10], iscrowd=1)]
    (answer,) = annotate_boxes(np.array([[0.0, 0.0, 10.0, 10.0]]), crowd)
    assert not answer.is_object and answer.iou == 0.0
    assert not annotate_boxes(np.array([[0.0, 0.0, 5.0, 5.0]]), [])[0].is_object
    assert annotate_boxes(np.zeros((0, 4)), GT) == []


def test_several_queries_are_answered_independently() -> None:
    answers = annotate_boxes(np.array([[19.0, 19.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 9.0, 9.0]]), GT)
    assert [a.gt_id for a in answers] == [12, None, 11]


def test_bad_threshold_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"annotate_boxes\(match_iou=\) expects a value in \(0, 1\]; got 0"):
        annotate_boxes(np.zeros((1, 4)), GT, match_iou=0.0)


def test_pairwise_iou_against_a_direct_formula_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(2, 12, 2))
    wh = rng.uniform(0, 30, size=(2, 12, 2))
    a, b = np.concatenate([xy[0], xy[0] + wh[0]], 1), np.concatenate([xy[1], xy[1] + wh[1]], 1)
    iou = pairwise_iou(a, b)
    for i in range(12):
        for j in range(12):
            w = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            h = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            union = np.prod(wh[0, i]) + np.prod(wh[1, j]) - w * h
            assert iou[i, j] == pytest.approx(w * h / union, abs=1e-12)
