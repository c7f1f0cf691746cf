"""Exact DetGain equals pycocotools brute force: mAP(D + {x}) - mAP(D), and mAP(all) - mAP(all but x)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_detgain_reference import matches_of, pycocotools_map, random_case

from curation_core.detgain import DetGainState, detgain, leave_one_out_detgain
from curation_core.detgain import exact as exact_module
from curation_core.detgain.exact import build_exact_index
from curation_core.detgain.interpolation import (
    RangeMax,
    first_reaching_rank,
    precision_at,
    sampled_average_precision,
)
from curation_core.detgain.records import table_from_matches
from curation_core.matching import COCO_RECALL_THRESHOLDS, average_precision_from_matches


def _subset(gt: dict[str, Any], ids: set[int], categories: set[int] | None = None) -> dict[str, Any]:
    """The ground truth of the images ``ids`` (and, if given, only the categories ``categories``)."""
    keep_cat = categories if categories is not None else {c["id"] for c in gt["categories"]}
    return {"images": [im for im in gt["images"] if im["id"] in ids],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in ids and a["category_id"] in keep_cat],
            "categories": [c for c in gt["categories"] if c["id"] in keep_cat]}


@pytest.mark.parametrize("seed", range(8))
def test_leave_one_out_equals_pycocotools_brute_force(seed: int) -> None:
    gt, dets = random_case(seed, tie_levels=4 if seed % 2 else None, n_categories=3 + seed % 3)
    deltas = leave_one_out_detgain(matches_of(gt, dets), estimator="exact")
    ids = sorted(im["id"] for im in gt["images"])
    full = pycocotools_map(gt, dets)
    brute = [full - pycocotools_map(gt, dets, [i for i in ids if i != x]) for x in ids]
    np.testing.assert_allclose(deltas, brute, rtol=0, atol=1e-9)
    assert np.any(np.abs(deltas) > 1e-4)  # the case is not trivial


@pytest.mark.parametrize("seed", range(6))
def test_insert_equals_brute_force_with_unseen_categories(seed: int) -> None:
    """D lacks a category that the new images bring, and the new images lack some of D's."""
    gt, dets = random_case(100 + seed, n_images=14, n_categories=5, tie_levels=3 if seed % 2 else None)
    rng = np.random.default_rng(seed)
    ids = sorted(im["id"] for im in gt["images"])
    batch_ids = set(rng.choice(ids, 5, replace=False).tolist())
    d_ids = set(ids) - batch_ids
    d_cats = {1, 2, 3}  # categories 4 and 5 are unseen in D (their D boxes and detections are dropped)
    gt_d = _subset(gt, d_ids, d_cats)
    dets_d = [d for d in dets if d["image_id"] in d_ids and d["category_id"] in d_cats]
    dets_b = [d for d in dets if d["image_id"] in batch_ids]
    state = DetGainState.from_matches(matches_of(gt_d, dets_d))
    gains = detgain(state, matches_of(_subset(gt, batch_ids), dets_b), estimator="exact")
    brute_gt = {"images": gt["images"], "categories": gt["categories"],
                "annotations": gt_d["annotations"] + _subset(gt, batch_ids)["annotations"]}
    base = pycocotools_map(brute_gt, dets_d, sorted(d_ids))
    brute = [pycocotools_map(brute_gt, dets_d + dets_b, sorted(d_ids | {x})) - base for x in sorted(batch_ids)]
    np.testing.assert_allclose(gains, brute, rtol=0, atol=1e-9)


def test_insert_across_several_updates_and_duplicate_ids() -> None:
    """A state fed in three updates scores like one built at once; an id already in D ranks after D's."""
    gt, dets = random_case(7, n_images=15, tie_levels=4)
    ids = sorted(im["id"] for im in gt["images"])
    parts = [set(ids[0:4]), set(ids[4:9]), set(ids[9:12])]
    state = DetGainState(np.linspace(0.5, 0.95, 10))
    for part in parts:
        state.update(matches_of(_subset(gt, part), [d for d in dets if d["image_id"] in part]))
    new = set(ids[12:])
    d_ids = sorted(set().union(*parts))
    gains = detgain(state, matches_of(_subset(gt, new), [d for d in dets if d["image_id"] in new]), estimator="exact")
    base = pycocotools_map(gt, dets, d_ids)
    np.testing.assert_allclose(gains, [pycocotools_map(gt, dets, d_ids + [x]) - base for x in sorted(new)], atol=1e-9)
    # The same image again: D + a second copy of it.
    again = {ids[0]}
    twice = detgain(state, matches_of(_subset(gt, again), [d for d in dets if d["image_id"] in again]))
    once = leave_one_out_detgain(matches_of(_subset(gt, set(d_ids)), [d for d in dets if d["image_id"] in d_ids]))
    assert np.isfinite(twice).all() and np.isfinite(once).all()


def test_chunked_evaluation_matches_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    gt, dets = random_case(11, n_images=20, tie_levels=6)
    m = matches_of(gt, dets)
    whole = leave_one_out_detgain(m)
    monkeypatch.setattr(exact_module, "CHUNK_ELEMENTS", 7)
    np.testing.assert_array_equal(leave_one_out_detgain(m), whole)


def test_only_ground_truth_of_a_category_and_empty_sets() -> None:
    """Removing the image holding a category's only box drops the category from the mean."""
    gt, dets = random_case(3)
    m = matches_of(gt, dets)
    lonely = max(c["id"] for c in gt["categories"])
    holder = [a["image_id"] for a in gt["annotations"] if a["category_id"] == lonely]
    assert len(holder) == 1
    ids = sorted(im["id"] for im in gt["images"])
    deltas = leave_one_out_detgain(m)
    x = ids.index(holder[0])
    assert deltas[x] == pytest.approx(pycocotools_map(gt, dets) - pycocotools_map(gt, dets, [i for i in ids if i != holder[0]]), abs=1e-12)
    # A set of one image: D is empty, its mAP counts as 0, so the gain is the image's own mAP.
    one = {ids[1]}
    single = leave_one_out_detgain(matches_of(_subset(gt, one), [d for d in dets if d["image_id"] in one]))
    assert single[0] == pytest.approx(pycocotools_map(_subset(gt, one), [d for d in dets if d["image_id"] in one]))


def test_order_of_records_does_not_matter() -> None:
    gt, dets = random_case(5, tie_levels=3)
    rng = np.random.default_rng(0)
    reference = dict(zip(sorted(im["id"] for im in gt["images"]), leave_one_out_detgain(matches_of(gt, dets)), strict=True))
    shuffled = dict(gt, images=[gt["images"][i] for i in rng.permutation(len(gt["images"]))])
    # Shuffle across images, keeping each image's own detection order (pycocotools' within-image tie rule).
    slots = rng.permutation(len(dets))
    by_image: dict[int, list[dict[str, Any]]] = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    owner = [dets[i]["image_id"] for i in slots]
    mixed = [by_image[o].pop(0) for o in owner]
    deltas = leave_one_out_detgain(matches_of(shuffled, mixed))
    ids = sorted(im["id"] for im in gt["images"])
    np.testing.assert_allclose(deltas, [reference[i] for i in ids], atol=1e-15)


def _probe_case(score: float, *, with_gt: bool = True, with_det: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A fixed D (random_case 9) plus image 999 with one box of category 1 and one detection on it."""
    gt, dets = random_case(9)
    gt = dict(gt, images=gt["images"] + [{"id": 999, "width": 64, "height": 64, "file_name": "x.png"}])
    box = [10.0, 10.0, 20.0, 20.0]
    if with_gt:
        gt["annotations"] = gt["annotations"] + [{"id": 10_000, "image_id": 999, "category_id": 1, "bbox": box,
                                                  "area": 400.0, "iscrowd": 0}]
    if with_det:
        dets = dets + [{"image_id": 999, "category_id": 1, "bbox": box, "score": score}]
    return gt, dets


def _gain_of_probe(estimator: str, **kwargs: Any) -> list[float]:
    out = []
    for score in np.linspace(0.0, 1.0, 11):
        gt, dets = _probe_case(float(score), **kwargs)
        d_ids = {im["id"] for im in gt["images"]} - {999}
        state = DetGainState.from_matches(matches_of(_subset(gt, d_ids), [d for d in dets if d["image_id"] != 999]))
        probe = matches_of(_subset(gt, {999}), [d for d in dets if d["image_id"] == 999])
        out.append(float(detgain(state, probe, estimator=estimator)[0]))
    return out


@pytest.mark.parametrize("estimator", ["exact", "uniform", "empirical"])
def test_a_higher_scored_true_positive_helps_at_least_as_much(estimator: str) -> None:
    gains = _gain_of_probe(estimator)
    assert np.all(np.diff(gains) >= -1e-12), gains


@pytest.mark.parametrize("estimator", ["exact", "uniform", "empirical"])
def test_a_false_positive_never_helps(estimator: str) -> None:
    gains = _gain_of_probe(estimator, with_gt=False)
    assert max(gains) <= 1e-15 and min(gains) < 0


@pytest.mark.parametrize("estimator", ["exact", "empirical"])
def test_ground_truth_without_detections_lowers_map(estimator: str) -> None:
    gains = _gain_of_probe(estimator, with_det=False)
    assert max(gains) < 0


def test_uniform_ignores_missed_ground_truth() -> None:
    """The paper's closed form has no term for the recall denominator: a missed box changes nothing."""
    assert _gain_of_probe("uniform", with_det=False) == [0.0] * 11


def test_index_ap_is_pycocotools_ap() -> None:
    for seed in range(4):
        gt, dets = random_case(seed, tie_levels=3)
        m = matches_of(gt, dets)
        index = build_exact_index(table_from_matches(m))
        np.testing.assert_allclose(index.ap, average_precision_from_matches(m), rtol=0, atol=1e-15)
        assert index.mean_ap == pytest.approx(pycocotools_map(gt, dets), abs=1e-12)


def test_first_reaching_rank_is_pycocotools_searchsorted() -> None:
    for n in [1, 2, 3, 7, 10, 33, 99, 100, 101, 250, 1000, 4097]:
        k = np.arange(1, n + 1)
        expected = np.searchsorted(k / n, COCO_RECALL_THRESHOLDS, side="left") + 1
        np.testing.assert_array_equal(first_reaching_rank(np.array([n]))[0], expected)
    with pytest.raises(ValueError, match=r"first_reaching_rank\(num_gt=\) expects positive counts; got 0"):
        first_reaching_rank(np.array([0, 3]))


def test_sampled_average_precision_hand_computed() -> None:
    # Two sequences: TP, FP, TP with 2 boxes; and no TP with 4 boxes.
    p = precision_at(np.array([1, 2]), np.array([0, 1]))  # 1, 2/3
    ap = sampled_average_precision(p, np.array([2, 0]), np.array([2, 4]))
    # recall 0.5 reached at the first TP (51 points at precision 1), the rest at 2/3.
    assert ap[0] == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101)
    assert ap[1] == 0.0


def test_range_max_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(300)
    table = RangeMax.build(values, 300)
    lo = rng.integers(0, 299, 500)
    hi = lo + rng.integers(1, 300 - lo + 1)
    np.testing.assert_array_equal(table.query(lo, hi), [values[a:b].max() for a, b in zip(lo, hi, strict=True)])


def test_prefix_reuse_equals_explicit_sequences() -> None:
    """A sequence given as (unchanged head from a base array) + (explicit tail) has the same AP."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 250, 40)
    num_gt = lengths + rng.integers(1, 300, 40)
    full = [precision_at(np.arange(1, n + 1), np.cumsum(rng.integers(0, 3, n))) for n in lengths]
    head = np.array([rng.integers(0, n + 1) for n in lengths])
    base = np.concatenate([np.zeros(0)] + full)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tail = np.concatenate([np.zeros(0)] + [f[h:] for f, h in zip(full, head, strict=True)])
    with_prefix = sampled_average_precision(tail, lengths - head, num_gt,
                                            prefix=(RangeMax.build(base, int(lengths.max())), starts, head))
    np.testing.assert_allclose(with_prefix, sampled_average_precision(base, lengths, num_gt), rtol=0, atol=1e-15)


def test_long_sequences_against_brute_force() -> None:
    """Categories with hundreds of boxes: fewer sampled ranks than true positives, long unchanged heads."""
    from curation_core.detgain.synthetic import synthetic_coco

    gt, dets = synthetic_coco(0, n_images=160, n_categories=2, boxes_per_image=4.0, false_per_image=3.0)
    for d in dets[::7]:
        d["score"] = round(d["score"], 2)  # some ties across images
    m = matches_of(gt, dets)
    assert m.gt_count.sum(axis=0).min() > 150
    deltas = leave_one_out_detgain(m)
    ids = sorted(im["id"] for im in gt["images"])
    full = pycocotools_map(gt, dets)
    for i in np.random.default_rng(0).choice(len(ids), 5, replace=False):
        brute = full - pycocotools_map(gt, dets, ids[:i] + ids[i + 1:])
        assert abs(deltas[i] - brute) < 1e-9
    new = set(ids[-4:])
    state = DetGainState.from_matches(matches_of(_subset(gt, set(ids) - new), [d for d in dets if d["image_id"] not in new]))
    gains = detgain(state, matches_of(_subset(gt, new), [d for d in dets if d["image_id"] in new]))
    base = pycocotools_map(gt, dets, ids[:-4])
    for x, gain in zip(ids[-4:], gains, strict=True):
        assert abs(gain - (pycocotools_map(gt, dets, ids[:-4] + [x]) - base)) < 1e-9
