"""Box pool and informativeness measures: hand cases, k-center against brute force, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curation_core.active.measures import (
    box_uncertainty,
    coreset_order,
    fill_budget,
    image_uncertainty,
    pick_boxes,
    rank_images,
    top_k,
)
from curation_core.active.pool import BoxPool, build_pool
from curation_core.errors import DataError
from curation_core.offline.diversity import covering_radius


def _det(image_id: int, xywh: list[float], score: float, category_id: int = 3) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": xywh, "score": score}


def _pool(image_ids: list[int], scores: list[float]) -> BoxPool:
    n = len(scores)
    boxes = np.tile([0.0, 0.0, 10.0, 10.0], (n, 1)) + np.arange(n)[:, None] * 20
    return BoxPool(np.asarray(image_ids, dtype=np.int64), boxes, np.asarray(scores), np.full(n, 3, dtype=np.int64))


def test_pool_merges_the_classes_of_one_box_and_keeps_the_best() -> None:
    dets = [_det(1, [0, 0, 10, 10], 0.3, 3), _det(1, [0, 0, 10, 10], 0.6, 5),  # one anchor, two classes
            _det(1, [1, 0, 10, 10], 0.2, 3),  # IoU 0.82 with the first: merged
            _det(1, [40, 40, 10, 10], 0.5, 9), _det(2, [0, 0, 5, 5], 0.01, 3)]  # below the threshold
    pool = build_pool(dets, [1, 2], score_thresh=0.05, nms_iou=0.5)
    assert pool.image_ids.tolist() == [1, 1]
    assert pool.scores.tolist() == [0.6, 0.5] and pool.category_ids.tolist() == [5, 9]
    np.testing.assert_array_equal(pool.boxes[0], [0, 0, 10, 10])


def test_pool_leaves_out_answered_boxes_labelled_images_and_caps_per_image() -> None:
    dets = [_det(1, [0, 0, 10, 10], 0.9), _det(1, [30, 0, 10, 10], 0.8), _det(1, [60, 0, 10, 10], 0.7),
            _det(1, [90, 0, 10, 10], 0.6), _det(7, [0, 0, 10, 10], 0.9)]
    answered = {1: np.array([[0.0, 0.0, 10.0, 9.0]])}  # IoU 0.9 with the first box
    pool = build_pool(dets, [1], answered=answered, max_per_image=2, known_image_ids=[1, 7])
    assert pool.scores.tolist() == [0.8, 0.7]  # image 7 is known but not open: skipped
    assert len(build_pool([], [1])) == 0


def test_predictions_for_an_unknown_image_are_a_one_line_data_error() -> None:
    with pytest.raises(DataError, match=r"^dt\.json: detection \[1\]: image_id 99 is not an image of the data set$"):
        build_pool([_det(1, [0, 0, 5, 5], 0.9), _det(99, [0, 0, 5, 5], 0.9)], [1], source="dt.json")


def test_uncertainty_is_one_minus_the_largest_class_probability() -> None:
    pool = _pool([1, 1, 2], [0.9, 0.4, 0.75])
    np.testing.assert_allclose(box_uncertainty(pool), [0.1, 0.6, 0.25])
    assert pick_boxes(pool, "uncertainty", 2, rng=np.random.default_rng(0)).tolist() == [1, 2]
    # image level: the mean over the image's boxes; an image without pool boxes scores 0
    np.testing.assert_allclose(image_uncertainty(pool, [2, 1, 5]), [0.25, 0.35, 0.0])
    assert rank_images("uncertainty", [2, 1, 5], rng=np.random.default_rng(0), pool=pool).tolist() == [1, 0, 2]


def test_top_k_breaks_ties_by_the_lower_index_and_random_picks_are_seeded() -> None:
    assert top_k(np.array([0.5, 0.9, 0.5, 0.9]), 3).tolist() == [1, 3, 0]
    pool = _pool([1] * 10, [0.5] * 10)
    a = pick_boxes(pool, "random", 4, rng=np.random.default_rng(3))
    assert len(set(a.tolist())) == 4 and a.tolist() == pick_boxes(pool, "random", 4, rng=np.random.default_rng(3)).tolist()
    assert len(pick_boxes(pool, "random", 50, rng=np.random.default_rng(3))) == 10  # min(available, requested)


def test_fill_budget_takes_images_until_their_boxes_reach_the_budget() -> None:
    costs = [3, 0, 5, 2]
    assert fill_budget([2, 1, 0, 3], costs, 6) == [2, 1, 0]  # 5, 5 (an empty image costs nothing), 8 >= 6
    assert fill_budget([3, 0], costs, 100) == [3, 0]
    assert fill_budget([0, 1], costs, 0) == []


def _greedy_reference(x: np.ndarray, labelled: np.ndarray, k: int) -> list[int]:
    """Farthest-point selection written directly (every distance recomputed)."""
    centres = [c for c in labelled]
    picks: list[int] = []
    for _ in range(k):
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i in picks:
                continue
            d = min(np.linalg.norm(x[i] - c) for c in centres + [x[p] for p in picks])
            if d > best_d:
                best, best_d = i, d
        picks.append(best)
    return picks


def test_box_coreset_matches_a_direct_greedy_and_is_within_twice_the_optimal_radius() -> None:
    rng = np.random.default_rng(1)
    for trial in range(5):
        x = rng.normal(size=(9, 3))
        labelled = rng.normal(size=(2, 3))
        k = 3
        order = coreset_order(x, labelled, k)
        assert order.tolist() == _greedy_reference(x, labelled, k), trial
        both = np.concatenate([labelled, x])
        greedy = covering_radius(both, [0, 1, *(order + 2).tolist()])
        optimal = min(covering_radius(both, [0, 1, *(np.array(s) + 2).tolist()])
                      for s in itertools.combinations(range(9), k))
        assert greedy <= 2 * optimal + 1e-12
    pool = _pool([1] * 9, [0.5] * 9)
    assert pick_boxes(pool, "coreset", 3, rng=np.random.default_rng(0), features=x,
                      labelled_features=labelled).tolist() == coreset_order(x, labelled, 3).tolist()


def test_measures_reject_missing_inputs_and_unknown_names() -> None:
    pool = _pool([1, 2], [0.5, 0.5])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"pick_boxes\(features=\) expects \(2, D\) box features for coreset; got None"):
        pick_boxes(pool, "coreset", 1, rng=rng)
    with pytest.raises(ValueError, match=r"pick_boxes\(measure=\) expects one of random, uncertainty, coreset, detgain; got 'x'"):
        pick_boxes(pool, "x", 1, rng=rng)
    with pytest.raises(ValueError, match=r"rank_images\(embeddings=\) expects \(2, D\)"):
        rank_images("coreset", [1, 2], rng=rng)


def test_expected_box_gain_on_a_hand_computed_case() -> None:
    from curation_core.active.measures import DetectionCounts, expected_box_gain

    # D: T = 1, F = 1, N = 2 for category 3 (one IoU threshold); a box of score p = 0.5:
    # tp_gain = (1/2) [(1 * 0.5 + 1) / (2 * 0.5 + 1) + (1 * 1 / 4) ln(3 / 2)], fp_gain = -(1/2)(1/4) ln(3/2),
    # so p tp_gain + (1 - p) fp_gain = 0.5 * 0.75 / 2 = 0.1875 exactly.
    counts = DetectionCounts(np.array([3]), np.array([[1.0]]), np.array([[1.0]]), np.array([2.0]))
    gains = expected_box_gain(np.array([0.5, 0.5, 0.0]), np.array([3, 5, 3]), counts)
    assert gains[0] == pytest.approx(0.1875, abs=1e-12)
    assert gains[1] == 0.0  # category 5 is not in D's mAP
    assert gains[2] == 0.0  # p = 0: a sure false positive at score 0 ranks below all of D and moves nothing


def test_detection_counts_and_teacher_scores_and_learnability() -> None:
    from curation_core.active.measures import box_learnability, detection_counts, teacher_box_scores
    from curation_core.coco import dataset_from_dict
    from curation_core.matching import match_dataset

    gt = dataset_from_dict({"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
                            "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
                            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10]},
                                            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10]}]})
    counts = detection_counts(match_dataset(gt, [_det(1, [0, 0, 10, 10], 0.9), _det(1, [20, 20, 10, 10], 0.8)]))
    assert counts.category_ids.tolist() == [3, 5] and counts.num_gt.tolist() == [2.0, 0.0]
    assert (counts.tp[0] == 1).all() and (counts.fp[0] == 1).all() and not counts.tp[1].any()

    pool = BoxPool(np.array([1, 1, 2]), np.array([[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 10, 10]], dtype=float),
                   np.array([0.5, 0.5, 0.2]), np.array([3, 3, 3]))
    teacher = [_det(1, [0, 0, 10, 9], 0.7), _det(1, [0, 0, 10, 10], 0.95, 5), _det(1, [0, 0, 10, 10], 0.6)]
    # box 0: teacher boxes of its class at IoU 0.9 and 1 -> the larger score; box 1: no overlap; image 2: none
    np.testing.assert_allclose(teacher_box_scores(pool, teacher), [0.7, 0.0, 0.0])
    from curation_core.active.measures import expected_box_gain

    learn = box_learnability(pool, teacher_scores=np.array([0.7, 0.0, 0.0]), teacher_counts=counts,
                             student_counts=counts)
    np.testing.assert_allclose(learn, expected_box_gain(np.array([0.7, 0.0, 0.0]), pool.category_ids, counts)
                               - expected_box_gain(pool.scores, pool.category_ids, counts))
    assert pick_boxes(pool, "detgain", 1, rng=np.random.default_rng(0), learnability=learn).tolist() == [0]
