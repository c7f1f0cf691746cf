"""Uniform closed form against its own model, the empirical estimator against exact, and the dispatch."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import spearmanr
from test_detgain_reference import matches_of, random_case

from curation_core.detgain import (
    DetGainState,
    StateConfig,
    detgain,
    learnability,
    leave_one_out_detgain,
    leave_one_out_learnability,
    uniform_fp_gain,
    uniform_tp_gain,
)
from curation_core.detgain import scoring as scoring_module
from curation_core.detgain.empirical import ScoreHistogram, empirical_tables, histogram_counts
from curation_core.detgain.envelope import envelope_gains
from curation_core.detgain.exact import build_exact_index
from curation_core.detgain.records import select_images, table_from_matches
from curation_core.detgain.synthetic import synthetic_coco, synthetic_matches

CASES = [(50, 50, 0.1), (50, 50, 0.9), (200, 100, 0.5), (10, 300, 0.7), (300, 5, 0.3), (1, 0, 0.5), (0, 7, 0.4)]


@pytest.mark.parametrize(("t", "f", "s"), CASES)
def test_closed_form_equals_quadrature_of_its_model(t: int, f: int, s: float) -> None:
    """Mean-field model: T(1-u) TPs and F(1-u) FPs above u; integrate the shift of the TPs below s."""
    a, n = t + f, 3.0
    # Precision of a TP at score u is T(1-u) / A(1-u) before; a new det above makes it (tp+1)/(a+1) or tp/(a+1).
    tp_shift = integrate.quad(lambda u: t * (f * (1 - u)) / (a * (1 - u) * (a * (1 - u) + 1)) if a else 0.0, 0, s,
                              epsabs=1e-13, epsrel=1e-12)[0]
    fp_shift = integrate.quad(lambda u: t * (t * (1 - u)) / (a * (1 - u) * (a * (1 - u) + 1)) if a else 0.0, 0, s,
                              epsabs=1e-13, epsrel=1e-12)[0]
    own = (t * (1 - s) + 1) / (a * (1 - s) + 1)
    assert uniform_tp_gain(t, f, n, s) == pytest.approx((own + tp_shift) / n, rel=1e-10, abs=1e-14)
    assert uniform_fp_gain(t, f, n, s) == pytest.approx(-fp_shift / n, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize(("t", "f"), [(200, 100), (300, 300)])
def test_closed_form_matches_monte_carlo_of_uniform_scores(t: int, f: int) -> None:
    """Expected change of the mean precision at the TPs when T TPs and F FPs have iid U(0,1) scores."""
    rng = np.random.default_rng(0)
    draws, a = 3000, t + f
    scores = rng.random((draws, a))
    is_tp = np.arange(a) < t
    order = np.argsort(-scores, axis=1)
    tp_sorted, sc_sorted = is_tp[order], np.take_along_axis(scores, order, axis=1)
    ct, ca = np.cumsum(tp_sorted, axis=1), np.arange(1, a + 1)
    base = (tp_sorted * ct / ca).sum(axis=1)
    for s in (0.1, 0.5, 0.9):
        below = sc_sorted < s
        for new_tp, formula in ((True, uniform_tp_gain), (False, uniform_fp_gain)):
            after = (tp_sorted * (ct + (below & new_tp)) / (ca + below)).sum(axis=1)
            if new_tp:
                after += ((tp_sorted & ~below).sum(axis=1) + 1) / ((~below).sum(axis=1) + 1)
            change = after - base
            se = change.std() / np.sqrt(draws)
            # The closed form is the mean-field limit: within 1% (plus sampling error) at these sizes.
            assert abs(formula(t, f, 1, s) - change.mean()) < 0.01 * abs(change.mean()) + 4 * se


def test_closed_form_degenerate_cases() -> None:
    assert uniform_tp_gain(0, 0, 4, 0.3) == pytest.approx(0.25)  # A = 0: own precision 1
    assert uniform_fp_gain(0, 0, 4, 0.3) == 0.0
    assert uniform_fp_gain(0, 5, 4, 0.3) == 0.0  # no TP to lower
    assert uniform_tp_gain(3, 2, 0, 0.3) == 0.0 and uniform_fp_gain(3, 2, 0, 0.3) == 0.0  # no ground truth
    assert uniform_tp_gain(3, 2, 1, 1.7) == uniform_tp_gain(3, 2, 1, 1.0)  # clipped to [0, 1]
    assert uniform_tp_gain(3, 2, 1, -1.0) == uniform_tp_gain(3, 2, 1, 0.0)
    grid = uniform_tp_gain(np.array([[1.0], [5.0]]), 2.0, 3.0, np.linspace(0, 1, 4))
    assert grid.shape == (2, 4) and np.all(np.diff(grid, axis=1) >= 0)


def _simulated(seed: int, n_images: int = 150):
    gt, dets = synthetic_coco(seed, n_images=n_images, n_categories=6)
    return matches_of(gt, dets)


def test_empirical_ranks_closer_to_exact_than_uniform() -> None:
    for seed in range(2):
        m = _simulated(seed)
        exact = leave_one_out_detgain(m, estimator="exact")
        rho_u = spearmanr(leave_one_out_detgain(m, estimator="uniform"), exact).statistic
        rho_e = spearmanr(leave_one_out_detgain(m, estimator="empirical"), exact).statistic
        assert rho_e > 0.93 and rho_e > rho_u + 0.1, (rho_e, rho_u)


def test_empirical_histogram_ap_is_close_to_pycocotools() -> None:
    m = _simulated(3, n_images=300)
    table = table_from_matches(m)
    tables = empirical_tables(ScoreHistogram(table.category_ids, *histogram_counts(table, 1024)))
    exact = build_exact_index(table)
    assert np.nanmean(tables.ap) == pytest.approx(exact.mean_ap, abs=0.02)


@pytest.mark.parametrize("estimator", ["uniform", "empirical"])
def test_chunked_scoring_matches_whole(monkeypatch: pytest.MonkeyPatch, estimator: str) -> None:
    m = _simulated(4, n_images=60)
    whole = leave_one_out_detgain(m, estimator=estimator)
    online = detgain(DetGainState.from_matches(m), m, estimator=estimator)
    monkeypatch.setattr(scoring_module, "CHUNK_DETECTIONS", 50)
    np.testing.assert_allclose(leave_one_out_detgain(m, estimator=estimator), whole, rtol=0, atol=1e-15)
    np.testing.assert_allclose(detgain(DetGainState.from_matches(m), m, estimator=estimator), online, atol=1e-15)


@pytest.mark.parametrize("estimator", ["uniform", "empirical"])
def test_estimators_with_unseen_categories_and_decay(estimator: str) -> None:
    d = synthetic_matches(0, n_images=50, n_categories=4, dets_per_image=20)
    new = synthetic_matches(1, n_images=8, n_categories=7, dets_per_image=20, first_image_id=1000)
    state = DetGainState.from_matches(d, config=StateConfig(decay=0.9))
    state.update(d)
    gains = detgain(state, new, estimator=estimator)
    assert gains.shape == (8,) and np.isfinite(gains).all()


def test_leave_one_out_of_an_empty_result_set() -> None:
    gt, _ = random_case(0)
    m = matches_of(gt, [])
    for estimator in ("exact", "uniform", "empirical"):
        deltas = leave_one_out_detgain(m, estimator=estimator)
        assert deltas.shape == (len(gt["images"]),) and np.all(deltas == 0.0)


def test_learnability_is_teacher_minus_student_and_ranks() -> None:
    gt, dets = random_case(2)
    rng = np.random.default_rng(0)
    student = [dict(d, score=float(rng.random())) for d in dets]  # same boxes, scrambled confidence
    t, s = matches_of(gt, dets), matches_of(gt, student)
    scores = leave_one_out_learnability(t, s, estimator="exact")
    np.testing.assert_allclose(scores.learnability, scores.delta_teacher - scores.delta_student)
    ranked = scores.ranked()
    assert np.all(np.diff(ranked.learnability) <= 0)
    online = learnability(DetGainState.from_matches(t), DetGainState.from_matches(s), t, s, estimator="uniform")
    assert online.image_ids.tolist() == t.image_ids.tolist()


def test_errors_name_the_argument_and_the_bad_value() -> None:
    gt, dets = random_case(1)
    m = matches_of(gt, dets)
    state = DetGainState.from_matches(m)
    # Online scoring also takes 'envelope'; leave-one-out does not (it has no DetGainState to read).
    with pytest.raises(ValueError, match=r"detgain\(estimator=\) expects one of 'exact', 'uniform', 'empirical', "
                                         r"'envelope'; got 'exct'"):
        detgain(state, m, estimator="exct")
    with pytest.raises(ValueError, match=r"leave_one_out_detgain\(estimator=\) expects one of 'exact', 'uniform', "
                                         r"'empirical'; got 'envelope'"):
        leave_one_out_detgain(m, estimator="envelope")
    with pytest.raises(ValueError, match=r"leave_one_out_detgain\(estimator=\) expects one of .*; got 'fast'"):
        leave_one_out_detgain(m, estimator="fast")
    other = synthetic_matches(0, n_images=3, n_categories=2, iou_thresholds=np.array([0.5, 0.75]))
    with pytest.raises(ValueError, match=r"detgain\(matches=\) expects the state's IoU thresholds"):
        detgain(state, other)
    with pytest.raises(ValueError, match=r"expects teacher and student matches of the same images"):
        leave_one_out_learnability(m, synthetic_matches(0, n_images=3, n_categories=2))
    with pytest.raises(ValueError, match=r"detgain\(matches=\) expects a DatasetMatches; got dict"):
        detgain(state, {"image_ids": 1})


# ----------------------------------------------------------------------------------------------
# Envelope estimator: pycocotools' sampled AP change read from D's envelope (detgain.envelope)


def _split_case(seed: int, n_images: int = 240, n_batch: int = 80, n_categories: int = 6, **kwargs: Any):
    """A random COCO case cut into D (a state) and the matches of the other images (a super-batch)."""
    gt, dets = synthetic_coco(seed, n_images=n_images, n_categories=n_categories, **kwargs)
    batch_ids = set(range(n_images - n_batch + 1, n_images + 1))
    d_gt, b_gt = ({**gt, "images": [im for im in gt["images"] if (im["id"] in batch_ids) == side],
                   "annotations": [a for a in gt["annotations"] if (a["image_id"] in batch_ids) == side]}
                  for side in (False, True))
    state = DetGainState.from_matches(matches_of(d_gt, [d for d in dets if d["image_id"] not in batch_ids]))
    return state, matches_of(b_gt, [d for d in dets if d["image_id"] in batch_ids])


def _without_detections(m):
    none = np.zeros(0, dtype=np.int64)
    return dataclasses.replace(m, det_image=none, det_category=none, det_score=np.zeros(0), det_rank=none,
                               det_true_positive=m.det_true_positive[none], det_ignored=m.det_ignored[none])


def _top(values: np.ndarray, k: int = 16) -> set[int]:
    return set(np.lexsort((np.arange(values.size), -values))[:k].tolist())


@pytest.mark.parametrize("seed", range(3))
def test_envelope_is_exact_for_images_with_only_ground_truth(seed: int) -> None:
    """No detection of x: only the recall denominator moves, which the envelope reads exactly."""
    state, batch = _split_case(seed, n_images=120, n_batch=30)
    gt_only = _without_detections(batch)
    np.testing.assert_allclose(detgain(state, gt_only, estimator="envelope"),
                               detgain(state, gt_only, estimator="exact"), rtol=0, atol=1e-12)


def test_envelope_hand_computed() -> None:
    """D: TP 0.9, FP 0.8, TP 0.7 of 2 boxes; x: one box found last (score 0.1). IoU 1: every threshold alike.

    D + x: precisions 1, 2/3, 3/4 at the TPs, envelope 1, 3/4, 3/4; with 3 boxes the recall samples read
    TP 1 for r = 0..33, TP 2 for r = 34..66, TP 3 for r = 67..100: AP = (34 + 33 * 3/4 + 34 * 3/4) / 101.
    D: envelope 1, 2/3; with 2 boxes r = 0..50 read TP 1 and r = 51..100 TP 2: AP = (51 + 50 * 2/3) / 101.
    """
    box, other = [0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 10.0, 10.0]
    images = [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in (1, 2)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 100.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": other, "area": 100.0, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": box, "area": 100.0, "iscrowd": 0}]
    cats = [{"id": 1, "name": "a"}]
    d_dets = [{"image_id": 1, "category_id": 1, "bbox": box, "score": 0.9},
              {"image_id": 1, "category_id": 1, "bbox": [50.0, 0.0, 10.0, 10.0], "score": 0.8},
              {"image_id": 1, "category_id": 1, "bbox": other, "score": 0.7}]
    state = DetGainState.from_matches(matches_of({"images": images[:1], "annotations": anns[:2], "categories": cats},
                                                 d_dets))
    x = matches_of({"images": images[1:], "annotations": anns[2:], "categories": cats},
                   [{"image_id": 2, "category_id": 1, "bbox": box, "score": 0.1}])
    expected = (34 + 67 * 0.75) / 101 - (51 + 50 * 2 / 3) / 101
    assert detgain(state, x, estimator="exact")[0] == pytest.approx(expected, abs=1e-12)
    assert detgain(state, x, estimator="envelope")[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_envelope_ranks_a_super_batch_like_exact(seed: int) -> None:
    """Randomized detectors (ties included): close to exact in value, rank and top 16 of 80."""
    state, batch = _split_case(10 + seed, n_images=400, false_per_image=12.0)
    exact = detgain(state, batch, estimator="exact")
    envelope = detgain(state, batch, estimator="envelope")
    assert spearmanr(envelope, exact).statistic > 0.98
    assert len(_top(envelope) & _top(exact)) >= 14
    assert np.abs(envelope - exact).max() < 0.05 * np.abs(exact).max()


def test_envelope_agrees_with_exact_under_tied_scores() -> None:
    """Scores on 5 levels: the insertion positions follow exact's tie rule (image id, then rank)."""
    from curation_core.detgain import envelope as envelope_module
    from curation_core.detgain import exact as exact_module

    gt, dets = random_case(5, n_images=40, n_categories=3, tie_levels=5)
    ids = sorted(im["id"] for im in gt["images"])
    d_ids = set(ids[::2])
    part = [{**gt, "images": [im for im in gt["images"] if (im["id"] in d_ids) == side],
             "annotations": [a for a in gt["annotations"] if (a["image_id"] in d_ids) == side]} for side in (True, False)]
    state = DetGainState.from_matches(matches_of(part[0], [d for d in dets if d["image_id"] in d_ids]))
    batch = table_from_matches(matches_of(part[1], [d for d in dets if d["image_id"] not in d_ids]))
    index, exact_index = state.envelope_index(), state.exact_index()
    args = (batch.det_category, batch.det_score, batch.image_ids[batch.det_image])
    order = np.argsort(batch.det_category, kind="stable")
    got = envelope_module._insert_positions(index, *(a[order] for a in args))
    want = exact_module._insert_positions(exact_index, batch.det_category[order], -batch.det_score[order],
                                          args[2][order])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(index.ap, exact_index.ap, rtol=0, atol=1e-12)


def test_envelope_scores_each_image_alone() -> None:
    """An image's score does not depend on the other images of its super-batch."""
    state, batch = _split_case(3, n_images=100, n_batch=20)
    whole = detgain(state, batch, estimator="envelope")
    for i in (0, 7, 19):
        alone = select_images(table_from_matches(batch), np.array([i]))
        np.testing.assert_allclose(envelope_gains(state.envelope_index(), alone), whole[i:i + 1], atol=1e-15)


def test_envelope_edge_cases() -> None:
    d = synthetic_matches(0, n_images=30, n_categories=3, dets_per_image=10)
    new = synthetic_matches(1, n_images=6, n_categories=5, dets_per_image=10, first_image_id=1000)
    state = DetGainState.from_matches(d)
    gains = detgain(state, new, estimator="envelope")  # categories 4 and 5 are unseen in D
    np.testing.assert_allclose(gains, detgain(state, new, estimator="exact"), atol=0.05 * np.abs(gains).max())
    empty = synthetic_matches(2, n_images=4, n_categories=3, dets_per_image=0, boxes_per_image=0.0,
                              first_image_id=2000)
    assert np.all(detgain(state, empty, estimator="envelope") == 0.0)
    nothing = DetGainState.from_matches(synthetic_matches(3, n_images=5, n_categories=3, dets_per_image=0,
                                                          boxes_per_image=0.0))
    np.testing.assert_allclose(detgain(nothing, new, estimator="envelope"), detgain(nothing, new, estimator="exact"),
                               atol=1e-12)  # D without any box or detection: x's own mAP
    decayed = DetGainState.from_matches(d, config=StateConfig(decay=0.9))
    with pytest.raises(ValueError, match=r"envelope DetGain needs equal image weights; .*decay=0.9"):
        detgain(decayed, new, estimator="envelope")


def test_envelope_learnability_follows_exact_when_models_differ() -> None:
    """Teacher and student of different quality: the top 16 of 80 by learnability mostly agree."""
    gt, dets = synthetic_coco(21, n_images=400, n_categories=6)
    rng = np.random.default_rng(0)
    student = [dict(d, score=float(np.clip(d["score"] + rng.normal(0, 0.15), 0, 1))) for d in dets]
    batch_ids = set(range(321, 401))
    split = [{**gt, "images": [im for im in gt["images"] if (im["id"] in batch_ids) == side],
              "annotations": [a for a in gt["annotations"] if (a["image_id"] in batch_ids) == side]} for side in (False, True)]
    states = [DetGainState.from_matches(matches_of(split[0], [d for d in ds if d["image_id"] not in batch_ids]))
              for ds in (dets, student)]
    t, s = (matches_of(split[1], [d for d in ds if d["image_id"] in batch_ids]) for ds in (dets, student))
    exact = learnability(*states, t, s, estimator="exact").learnability
    envelope = learnability(*states, t, s, estimator="envelope").learnability
    assert spearmanr(envelope, exact).statistic > 0.95
    assert len(_top(envelope) & _top(exact)) >= 13
