"""benchmarks/bench_chance.py: random detections sit near AP 0, the ground truth at AP 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from curation_core.coco import load_coco
from curation_core.synth import SynthConfig, generate_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench_chance(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_chance", None)
    import bench_chance

    return bench_chance


def test_floor_and_ceiling_on_a_synthetic_set(tmp_path: Path, bench_chance, capsys: pytest.CaptureFixture[str]) -> None:
    generate_dataset(tmp_path / "data", SynthConfig(size=64, train=1, val=24, seed=3))
    annotations = tmp_path / "data" / "val" / "annotations.json"
    out = tmp_path / "chance.json"
    bench_chance.main(["--annotations", str(annotations), "--per-image", "20", "--repeats", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    random, truth = rows
    assert truth["AP"] == pytest.approx(1.0) and truth["AP50"] == pytest.approx(1.0)
    assert 0.0 <= random["AP"] < 0.05 and random["AP"] <= random["AP50"] < 0.2
    assert random["seeds"] == 2 and random["AP std"] >= 0.0
    assert "COCO AP floor and ceiling" in capsys.readouterr().out


def test_random_detections_fit_their_images_and_use_known_categories(tmp_path: Path, bench_chance) -> None:
    generate_dataset(tmp_path / "data", SynthConfig(size=64, train=1, val=10, seed=4))
    gt = load_coco(tmp_path / "data" / "val" / "annotations.json")
    dets = bench_chance.random_detections(gt, per_image=7, rng=np.random.default_rng(0))
    assert len(dets) == 7 * len(gt.images)
    sizes = {image["id"]: (image["width"], image["height"]) for image in gt.images}
    for det in dets:
        x, y, w, h = det["bbox"]
        width, height = sizes[det["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width + 1e-9 and y + h <= height + 1e-9
        assert det["category_id"] in gt.category_ids and 0.0 <= det["score"] <= 1.0
    again = bench_chance.random_detections(gt, per_image=7, rng=np.random.default_rng(0))
    assert again == dets  # a seed gives one outcome
