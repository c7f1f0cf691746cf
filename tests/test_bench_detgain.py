"""benchmarks/bench_detgain.py: the non-interpolated ceiling of the online section."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from curation_core.coco import dataset_from_dict
from curation_core.detgain import DetGainState, detgain
from curation_core.detgain.records import table_from_matches
from curation_core.detgain.synthetic import synthetic_coco
from curation_core.matching import match_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_detgain", None)
    import bench_detgain

    return bench_detgain


def _split(seed: int, n_images: int, n_d: int):
    """Matches of a random detector on D (the first ``n_d`` images) and on the other images."""
    gt, dets = synthetic_coco(seed, n_images=n_images, n_categories=5)
    matches = match_dataset(dataset_from_dict(gt, source="synthetic"), dets)
    return matches, np.arange(n_d), np.arange(n_d, n_images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_insertion_ceiling_equals_a_re_sorting_brute_force(bench, seed: int) -> None:
    matches, d_rows, new_rows = _split(seed, 90, 60)
    state = DetGainState.from_matches(bench.subset_matches(matches, d_rows))
    merged = bench._NonInterpolatedInsert(state.table()).changes(table_from_matches(bench.subset_matches(matches,
                                                                                                         new_rows)))
    whole = table_from_matches(matches)  # D and the new images in one table, each new image switched on alone
    in_d = np.isin(whole.image_ids, matches.image_ids[d_rows])
    resorted = bench._NonInterpolated(whole).changes(in_d, np.flatnonzero(~in_d), add=True)
    np.testing.assert_allclose(merged, resorted, atol=1e-12)
    assert np.ptp(merged) > 0
    # the empirical estimator models this very quantity: it ranks the images nearly alike
    empirical = detgain(state, bench.subset_matches(matches, new_rows), estimator="empirical")
    assert spearmanr(empirical, merged).statistic > 0.95


def test_insertion_ceiling_hand_computed(bench) -> None:
    box = {"iscrowd": 0, "category_id": 1}
    gt = {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2)],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{**box, "id": 1, "image_id": 1, "bbox": [0, 0, 20, 20], "area": 400},
                          {**box, "id": 2, "image_id": 1, "bbox": [50, 50, 20, 20], "area": 400},
                          {**box, "id": 3, "image_id": 2, "bbox": [10, 10, 30, 30], "area": 900}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},  # TP
            {"image_id": 1, "category_id": 1, "bbox": [80, 0, 10, 10], "score": 0.8},  # FP
            {"image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.85}]  # TP of the new image
    matches = match_dataset(dataset_from_dict(gt, source="hand"), dets)
    state = DetGainState.from_matches(bench.subset_matches(matches, np.array([0])))
    change = bench._NonInterpolatedInsert(state.table()).changes(
        table_from_matches(bench.subset_matches(matches, np.array([1]))))
    # D: precision 1 at its one TP over 2 boxes = 1/2; D + x: TPs at precision 1 and 1 over 3 boxes = 2/3
    np.testing.assert_allclose(change, [2 / 3 - 1 / 2])

