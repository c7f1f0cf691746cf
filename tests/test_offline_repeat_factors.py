"""Repeat factors (LVIS): a hand-computed three-image case, randomized cases against the formula, rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curation_core.coco import dataset_from_dict
from curation_core.offline.repeat_factors import (
    category_frequencies,
    category_repeat_factors,
    image_repeat_factors,
    stochastic_round,
)

CATEGORIES = [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}, {"id": 3, "name": "crowd-only"}]


def _ann(i: int, image_id: int, category_id: int, *, crowd: int = 0) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": [1, 1, 4, 4], "iscrowd": crowd}


def _three_images():
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in (10, 11, 12)]
    annotations = [_ann(1, 10, 1), _ann(2, 10, 2), _ann(3, 10, 1), _ann(4, 11, 1), _ann(5, 11, 3, crowd=1)]
    return dataset_from_dict({"images": images, "annotations": annotations, "categories": CATEGORIES})


def test_three_images_by_hand() -> None:
    # image 10: common x2 + rare; image 11: common (+ a crowd box of category 3, not counted); image 12: no boxes.
    ds = _three_images()
    assert category_frequencies(ds) == {1: 2 / 3, 2: 1 / 3}  # category 3 only as a crowd: absent
    t = 0.9
    # r(common) = sqrt(0.9 / (2/3)) = sqrt(1.35); r(rare) = sqrt(0.9 / (1/3)) = sqrt(2.7)
    assert category_repeat_factors(ds, threshold=t) == pytest.approx({1: math.sqrt(1.35), 2: math.sqrt(2.7)})
    np.testing.assert_allclose(image_repeat_factors(ds, threshold=t), [math.sqrt(2.7), math.sqrt(1.35), 1.0])
    # t below every frequency: no category is repeated
    np.testing.assert_array_equal(image_repeat_factors(ds, threshold=0.3), [1.0, 1.0, 1.0])


def test_random_cases_match_the_formula() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        images = [{"id": 100 + i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in range(n)]
        anns, present = [], []
        for img in images:
            cats = {int(c) for c in rng.integers(1, k + 1, size=int(rng.integers(0, 4)))}
            present.append(cats)
            for c in sorted(cats):
                anns.append(_ann(len(anns) + 1, img["id"], c))
        cats = [{"id": c, "name": str(c)} for c in range(1, k + 1)]
        ds = dataset_from_dict({"images": images, "annotations": anns, "categories": cats})
        t = float(rng.uniform(0.01, 1.0))
        f = {c: sum(c in p for p in present) / n for c in range(1, k + 1)}
        expected = [max([max(1.0, math.sqrt(t / f[c])) for c in p], default=1.0) for p in present]
        np.testing.assert_allclose(image_repeat_factors(ds, threshold=t), expected, rtol=1e-12)


def test_stochastic_round_has_the_weights_as_expectation() -> None:
    w = np.array([0.0, 1.0, 2.3, 0.5, 4.0])
    draws = np.stack([stochastic_round(w, np.random.default_rng(s)) for s in range(4000)])
    assert set(np.unique(draws[:, 2])) == {2, 3} and set(np.unique(draws[:, 0])) == {0}
    np.testing.assert_array_equal(draws[:, [1, 4]], np.broadcast_to([1, 4], (4000, 2)))
    np.testing.assert_allclose(draws.mean(axis=0), w, atol=0.03)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, "0.5"])
def test_bad_threshold(threshold) -> None:
    with pytest.raises(ValueError, match=r"category_repeat_factors\(threshold=\) expects a number in \(0, 1\]"):
        category_repeat_factors(_three_images(), threshold=threshold)


def test_stochastic_round_rejects_negative_weights() -> None:
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        stochastic_round(np.array([1.0, -0.5]), np.random.default_rng(0))
