"""benchmarks/bench_detgain_boxes.py: DetGain learnability by box count, picks of each score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from curation_core.coco import dataset_from_dict
from curation_core.detgain.synthetic import synthetic_coco
from curation_core.matching import match_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_detgain_boxes", None)
    import bench_detgain_boxes

    return bench_detgain_boxes


def _student(detections: list[dict], seed: int) -> list[dict]:
    """A weaker model on the same images: a random half of the detections, scores shuffled by noise."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(detections)) < 0.5
    noise = rng.uniform(0.0, 0.5, len(detections))
    return [{**d, "score": float(np.clip(d["score"] - n, 0.01, 1.0))}
            for d, k, n in zip(detections, keep, noise, strict=True) if k]


def test_scores_and_picks_on_randomized_predictions(bench) -> None:
    gt, teacher_dets = synthetic_coco(7, n_images=160, recall=0.9)
    student_dets = _student(teacher_dets, 1)
    dataset = dataset_from_dict(gt, source="synthetic")
    teacher, student = match_dataset(dataset, teacher_dets), match_dataset(dataset, student_dets)
    cols = bench.box_count_scores(teacher, student, window=100, batches=12, seed=0)

    scored = 12 * bench.SUPER_BATCH
    assert all(v.size == scored for v in cols.values())
    for key in ("pick_learn", "pick_per_box", "pick_z", "pick_image_ap"):
        per_batch = cols[key].reshape(12, bench.SUPER_BATCH).sum(axis=1)
        np.testing.assert_array_equal(per_batch, np.full(12, bench.KEEP))
    np.testing.assert_allclose(cols["per_box"], cols["learn_empirical"] / np.maximum(cols["boxes"], 1))
    np.testing.assert_allclose(cols["learn_empirical"], cols["delta_teacher"] - cols["delta_student"])
    # the top rule: every picked image scores at least as high as every rejected one of its super-batch
    learn, picks = cols["learn_empirical"].reshape(12, -1), cols["pick_learn"].reshape(12, -1).astype(bool)
    assert all(learn[b][picks[b]].min() >= learn[b][~picks[b]].max() for b in range(12))

    rows, overall = bench.summarise("t", cols)
    assert sum(r["images"] for r in rows) == scored
    assert overall["boxes_per_image"] == pytest.approx(cols["boxes"].mean())
    assert overall["rho_learn_exact"] > 0.5  # the empirical estimator follows exact learnability


def test_main_writes_json(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, teacher_dets = synthetic_coco(3, n_images=140, recall=0.9)
    student_dets = _student(teacher_dets, 2)
    paths = [tmp_path / "gt.json", tmp_path / "t.json", tmp_path / "s.json"]
    for path, payload in zip(paths, (gt, teacher_dets, student_dets), strict=True):
        path.write_text(json.dumps(payload))
    out = tmp_path / "boxes.json"
    bench.main(["--online", *map(str, paths), "--window", "80", "--batches", "5", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "detgain_boxes"
    assert payload["overall"][0]["scored"] == 5 * bench.SUPER_BATCH
    assert "DetGain by box count" in capsys.readouterr().out
