"""Selection methods on hand-made model outputs: what each one scores, keeps, and remembers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curation_core.curation.base import ScoredBatch, finite_scores
from curation_core.curation.curator import OnlineCurator
from curation_core.curation.detgain import DetGainSelector, concat_matches
from curation_core.curation.image_ap import ImageAPSelector
from curation_core.curation.loss import LossLearnabilitySelector, LossSelector
from curation_core.curation.methods import SELECTORS, build_selector
from curation_core.curation.uniform import UniformSelector
from curation_core.detgain.scoring import learnability
from curation_core.detgain.state import DetGainState, StateConfig
from curation_core.engine.config import CurationConfig
from curation_core.evaluation import COCO_IOU_THRESHOLDS
from curation_core.target_matching import match_targets

CATEGORIES = [7, 3]


def _target(*boxes: tuple[float, float, float, float, int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor([b[:4] for b in boxes], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([b[4] for b in boxes], dtype=torch.int64)}


def _dets(*boxes: tuple[float, float, float, float, int, float]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor([b[:4] for b in boxes], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([b[4] for b in boxes], dtype=torch.int64),
            "scores": torch.tensor([b[5] for b in boxes], dtype=torch.float32)}


def _batch(n: int = 3, **outputs) -> ScoredBatch:  # noqa: ANN003
    return ScoredBatch(keys=np.arange(10, 10 + n, dtype=np.int64), image_ids=np.arange(n, dtype=np.int64),
                       targets=outputs.pop("targets", [_target() for _ in range(n)]), category_ids=CATEGORIES,
                       rng=np.random.default_rng(0), **outputs)


def test_loss_scores_are_the_student_losses_and_learnability_subtracts_the_teacher() -> None:
    s, t = np.array([3.0, 1.0, 2.0]), np.array([2.5, 0.1, 0.5])
    scores, _ = LossSelector().score(_batch(student_losses=s))
    assert scores.tolist() == [3.0, 1.0, 2.0]
    scores, _ = LossLearnabilitySelector().score(_batch(student_losses=s, teacher_losses=t))
    np.testing.assert_allclose(scores, [0.5, 0.9, 1.5])
    assert LossSelector.needs.student_losses and not LossSelector.needs.teacher
    assert LossLearnabilitySelector.needs.teacher_losses


def test_image_ap_is_teacher_minus_student_ap_of_each_image_alone() -> None:
    targets = [_target((0, 0, 10, 10, 1)), _target((0, 0, 10, 10, 2), (20, 20, 40, 40, 1)), _target()]
    teacher = [_dets((0, 0, 10, 10, 1, 0.9)), _dets((0, 0, 10, 10, 2, 0.9), (20, 20, 40, 40, 1, 0.8)),
               _dets((5, 5, 9, 9, 1, 0.9))]
    # student: misses image 0, finds one of two classes in image 1, a false positive on the empty image
    student = [_dets(), _dets((0, 0, 10, 10, 2, 0.9)), _dets((5, 5, 9, 9, 1, 0.9))]
    scores, _ = ImageAPSelector().score(_batch(targets=targets, teacher_detections=teacher, student_detections=student))
    # image 0: 1 - 0; image 1: mean over its 2 categories 1 - (1 + 0) / 2; image 2: no ground truth -> 0
    np.testing.assert_allclose(scores, [1.0, 0.5, 0.0])


def test_uniform_keeps_a_uniform_subset_and_does_not_depend_on_the_share() -> None:
    scores, _ = UniformSelector().score(_batch(n=6))
    assert scores.shape == (6,) and np.all((scores >= 0) & (scores < 1))
    whole = UniformSelector().score(ScoredBatch(keys=np.arange(6), image_ids=np.arange(6), targets=[_target()] * 6,
                                                category_ids=CATEGORIES, rng=np.random.default_rng(5)))[0]
    part = UniformSelector().score(ScoredBatch(keys=np.arange(3, 6), image_ids=np.arange(3), targets=[_target()] * 3,
                                               category_ids=CATEGORIES, rng=np.random.default_rng(5), offset=3, total=6))[0]
    np.testing.assert_array_equal(whole[3:], part)
    # over many steps every image is kept about b / B of the time
    counts = np.zeros(8)
    for step in range(2000):
        s = np.random.default_rng([0, step]).random(8)
        counts[np.argsort(-s)[:2]] += 1
    assert np.all(np.abs(counts / 2000 - 0.25) < 0.04)


def _random_outputs(rng: np.random.Generator, n: int) -> tuple[list, list, list]:
    targets, teacher, student = [], [], []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, size=(k, 2))
        wh = rng.uniform(8, 40, size=(k, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(1, 3, size=k)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
        for out, noise in ((teacher, 1.0), (student, 6.0)):
            extra = int(rng.integers(0, 3))
            det = np.concatenate([boxes + rng.normal(0, noise, boxes.shape), rng.uniform(0, 100, (extra, 4))])
            det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
            out.append({"boxes": torch.tensor(det, dtype=torch.float32),
                        "labels": torch.tensor(np.concatenate([labels, rng.integers(1, 3, extra)])),
                        "scores": torch.tensor(rng.uniform(0.05, 1, k + extra), dtype=torch.float32)})
    return targets, teacher, student


@pytest.mark.parametrize("estimator", ["exact", "uniform", "empirical"])
def test_detgain_scores_learnability_against_the_states_and_folds_in_every_scored_image(estimator: str) -> None:
    rng = np.random.default_rng(3)
    selector = DetGainSelector(estimator=estimator, window=50, decay=None)
    ref_t = DetGainState(COCO_IOU_THRESHOLDS, config=StateConfig(window=50))
    ref_s = DetGainState(COCO_IOU_THRESHOLDS, config=StateConfig(window=50))
    for step in range(4):
        targets, teacher, student = _random_outputs(rng, 12)
        keys = np.arange(step * 12, step * 12 + 12)
        batch = ScoredBatch(keys=keys, image_ids=keys % 7, targets=targets, category_ids=CATEGORIES,
                            rng=np.random.default_rng(step), teacher_detections=teacher, student_detections=student)
        scores, payload = selector.score(batch)
        m_t = match_targets(targets, teacher, keys=keys, category_ids=CATEGORIES)
        m_s = match_targets(targets, student, keys=keys, category_ids=CATEGORIES)
        if step == 0:
            assert scores.tolist() == [0.0] * 12  # empty D: nothing to compare with
        else:
            expected = learnability(ref_t, ref_s, m_t, m_s, estimator=estimator).learnability
            np.testing.assert_array_equal(scores, expected)
            assert np.ptp(scores) > 0
        selector.update([payload])
        ref_t.update(m_t)
        ref_s.update(m_s)
        assert selector.teacher_state.num_images == min(50, 12 * (step + 1))


def test_detgain_state_dict_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(4)
    a = DetGainSelector(estimator="empirical", window=30, decay=None)
    batches = []
    for step in range(5):
        targets, teacher, student = _random_outputs(rng, 10)
        keys = np.arange(step * 10, step * 10 + 10)
        batches.append(ScoredBatch(keys=keys, image_ids=keys, targets=targets, category_ids=CATEGORIES,
                                   rng=np.random.default_rng(step), teacher_detections=teacher,
                                   student_detections=student))
    for batch in batches[:3]:
        a.update([a.score(batch)[1]])
    b = DetGainSelector(estimator="empirical", window=30, decay=None)
    b.load_state_dict(a.state_dict())
    for batch in batches[3:]:
        sa, pa = a.score(batch)
        sb, pb = b.score(batch)
        np.testing.assert_array_equal(sa, sb)
        a.update([pa])
        b.update([pb])


def test_concat_matches_equals_matching_the_whole_batch() -> None:
    rng = np.random.default_rng(5)
    targets, teacher, _ = _random_outputs(rng, 9)
    keys = np.arange(100, 109)
    whole = match_targets(targets, teacher, keys=keys, category_ids=CATEGORIES)
    parts = [match_targets(targets[s], teacher[s], keys=keys[s], category_ids=CATEGORIES)
             for s in (slice(0, 4), slice(4, 9))]
    joined = concat_matches(parts)
    for name in whole.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name), err_msg=name)
    with pytest.raises(ValueError, match="disjoint, ascending"):
        concat_matches(parts[::-1])


def test_top_rule_keeps_the_highest_scores_and_sample_rule_is_seeded() -> None:
    outputs = {"student_losses": np.array([0.1, 5.0, 3.0, 4.0, 0.2])}
    top = OnlineCurator(CurationConfig(method="loss"), teacher=None, category_ids=CATEGORIES, device=torch.device("cpu"))
    choice = top.decide(np.arange(5), np.arange(5), [_target()] * 5, outputs, count=2, event=0)
    assert choice.indices.tolist() == [1, 3] and choice.picked.tolist() == [False, True, False, True, False]
    sample = OnlineCurator(CurationConfig(method="loss", rule="sample", temperature=0.5), teacher=None,
                           category_ids=CATEGORIES, device=torch.device("cpu"))
    first = [sample.decide(np.arange(5), np.arange(5), [_target()] * 5, outputs, count=2, event=e).indices.tolist()
             for e in range(30)]
    again = [sample.decide(np.arange(5), np.arange(5), [_target()] * 5, outputs, count=2, event=e).indices.tolist()
             for e in range(30)]
    assert first == again and len({tuple(f) for f in first}) > 1  # seeded by the event, and random
    assert sum(1 in f for f in first) > sum(0 in f for f in first)  # the high-loss image is kept more often


def test_bad_scores_and_unknown_methods_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"loss selector produced a non-finite score inf at super-batch index 1"):
        finite_scores("loss", np.array([0.0, np.inf]))
    assert finite_scores("x", np.array([np.nan, 1.0])).tolist() == [0.0, 1.0]

    class Fake:
        method = "best"

    with pytest.raises(ValueError, match=r"expects one of uniform, loss, loss_learnability, image_ap, detgain; got 'best'"):
        build_selector(Fake())
    assert set(SELECTORS) == {"uniform", "loss", "loss_learnability", "image_ap", "detgain"}
    with pytest.raises(ValueError, match=r"expects a teacher model for method 'detgain'"):
        OnlineCurator(CurationConfig(method="detgain", teacher="t.pt"), teacher=None, category_ids=CATEGORIES,
                      device=torch.device("cpu"))
