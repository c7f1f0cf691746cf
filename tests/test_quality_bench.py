"""The label-quality benchmark's smoke profile: both methods scored on the same 2-fold predictions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("cleanlab")
    sys.path.insert(0, str(BENCHMARKS))
    import bench_label_quality

    return bench_label_quality


def test_metrics_by_hand(bench) -> None:
    scores, positive = np.array([0.9, 0.8, 0.8, 0.1]), np.array([True, False, True, False])
    # pairs (pos, neg): (0.9, 0.8) win, (0.9, 0.1) win, (0.8, 0.8) tie, (0.8, 0.1) win -> 3.5 / 4
    assert bench.auroc(scores, positive) == pytest.approx(0.875)
    assert bench.precision_at(scores, positive, 2) == 0.5 and bench.precision_at(scores, positive, 1) == 1.0
    assert bench.auroc(scores, np.zeros(4, bool)) is None


def test_mixed_scenario_knows_its_corrupted_records(bench) -> None:
    from curation_core.coco import dataset_from_dict

    images = [{"id": i, "file_name": f"{i}.png", "width": 50, "height": 50} for i in range(1, 21)]
    anns = [{"id": 10 * i + k, "image_id": i, "category_id": 1 + k % 2, "bbox": [5.0 + 10 * k, 5.0, 8.0, 8.0]}
            for i in range(1, 21) for k in range(3)]
    clean = dataset_from_dict({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]})
    corrupted, kinds = bench.corrupt_mixed(clean, bench.PROFILES["cpu"], 0)
    sets = [set(v) for v in kinds.values()]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])  # disjoint
    after = {a["id"]: a for a in corrupted.annotations}
    before = {a["id"]: a for a in clean.annotations}
    assert all(i not in after for i in kinds["missing"]) and all(i not in before for i in kinds["spurious"])
    assert all(after[i]["category_id"] != before[i]["category_id"] for i in kinds["wrong_class"])
    assert all(after[i]["bbox"] != before[i]["bbox"] for i in kinds["badly_placed"])
    untouched = set(before) - set().union(*sets)
    assert all(after[i] == {**before[i]} for i in untouched)


@pytest.mark.slow
def test_smoke_profile_writes_both_methods(bench, tmp_path: Path) -> None:
    out = tmp_path / "lq.json"
    bench.main(["--profile", "smoke", "--work", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["scenarios"]["mixed"]["rows"]
    assert {r["method"] for r in rows} == {"detcurate", "cleanlab", "cleanlab-calibrated"}
    assert {(r["unit"], r["kind"]) for r in rows} >= {("image", "missing"), ("annotation", "wrong_class"),
                                                      ("annotation", "badly_placed"), ("image", "any")}
    assert all(r["auroc"] is None or 0.0 <= r["auroc"] <= 1.0 for r in rows)
    assert result["scenarios"]["mixed"]["out_of_sample"] == {"protocol": "k-fold", "folds": 2}
    assert "| unit | kind |" in out.with_suffix(".md").read_text()
