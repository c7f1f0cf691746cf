"""Uniform closed form against its own model, the empirical estimator against exact, and the dispatch."""

from __future__ import annotations

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
from curation_core.detgain.exact import build_exact_index
from curation_core.detgain.records import table_from_matches
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
    with pytest.raises(ValueError, match=r"detgain\(estimator=\) expects one of 'exact', 'uniform', 'empirical'; got 'exct'"):
        detgain(state, m, estimator="exct")
    with pytest.raises(ValueError, match=r"leave_one_out_detgain\(estimator=\) expects one of .*; got 'fast'"):
        leave_one_out_detgain(m, estimator="fast")
    other = synthetic_matches(0, n_images=3, n_categories=2, iou_thresholds=np.array([0.5, 0.75]))
    with pytest.raises(ValueError, match=r"detgain\(matches=\) expects the state's IoU thresholds"):
        detgain(state, other)
    with pytest.raises(ValueError, match=r"expects teacher and student matches of the same images"):
        leave_one_out_learnability(m, synthetic_matches(0, n_images=3, n_categories=2))
    with pytest.raises(ValueError, match=r"detgain\(matches=\) expects a DatasetMatches; got dict"):
        detgain(state, {"image_ids": 1})
