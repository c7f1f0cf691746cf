"""Label-quality scores: planted errors rank first, properties of the scores, the command's files and errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from curation_core.coco import dataset_from_dict
from curation_core.offline.label_quality import calibrate, find_label_errors
from pipelines.cli import cli, main
from pipelines.cli.quality import quality_cmd

CATS = [{"id": 1, "name": "disc"}, {"id": 2, "name": "star"}]


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.commands, "quality", quality_cmd)


def _case():
    """Ten images of 100 px with one object each and a confident correct prediction, plus planted errors:
    image 7 has an unannotated object (missing), image 8's box has the wrong class, image 9's box is
    shifted off its object, image 10's box lies where nothing is; low-score clutter everywhere."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(1, 11)]
    anns, dets = [], []
    for i in range(1, 11):
        obj = [10.0 + i, 10.0, 30.0, 30.0]
        label = {8: 2, 9: 1}.get(i, 1)
        box = {9: [obj[0] + 8, obj[1] + 8, 30.0, 30.0], 10: [60.0, 60.0, 20.0, 20.0]}.get(i, obj)
        anns.append({"id": 100 + i, "image_id": i, "category_id": label, "bbox": box, "iscrowd": 0})
        if i != 10:
            dets.append({"image_id": i, "category_id": 1, "bbox": obj, "score": 0.9})
        dets.append({"image_id": i, "category_id": 2, "bbox": [70.0, 5.0, 10.0, 10.0], "score": 0.1})
    dets.append({"image_id": 7, "category_id": 2, "bbox": [55.0, 55.0, 30.0, 30.0], "score": 0.9})
    return dataset_from_dict({"images": images, "annotations": anns, "categories": CATS}), dets


def test_planted_errors_rank_first() -> None:
    gt, dets = _case()
    report = find_label_errors(gt, dets)
    assert report.ranked_images("missing")[0].image_id == 7
    wrong = report.ranked_annotations("wrong_class")[0]
    assert (wrong.annotation_id, wrong.kind, wrong.suggested_category_id) == (108, "wrong_class", 1)
    assert report.ranked_annotations("badly_placed")[0].annotation_id == 109
    assert report.ranked_annotations("spurious")[0].annotation_id == 110
    kinds = {i.image_id: i.kind for i in report.images}
    assert (kinds[7], kinds[8], kinds[9], kinds[10]) == ("missing", "wrong_class", "badly_placed", "spurious")
    clean = [i.score for i in report.images if i.image_id <= 6]
    assert max(clean) < min(i.score for i in report.images if i.image_id >= 7)
    missing = report.missing_boxes(min_score=0.5)
    assert [(d["image_id"], d["bbox"]) for d in missing] == [(7, [55.0, 55.0, 30.0, 30.0])]


def test_calibration_is_monotone_and_scale_free() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    hits = (rng.random(300) < scores).astype(float)
    x, y = calibrate(scores, hits)
    assert np.all(np.diff(y) >= -1e-12) and 0 <= y.min() and y.max() <= 1
    # a monotone transform of the scores leaves every calibrated value unchanged
    x2, y2 = calibrate(scores ** 3, hits)
    np.testing.assert_allclose(np.interp(scores ** 3, x2, y2), np.interp(scores, x, y))


def test_an_unmatched_confident_prediction_never_lowers_the_missing_score() -> None:
    rng = np.random.default_rng(1)
    gt, dets = _case()
    base = {i.image_id: i.kind_scores["missing"] for i in find_label_errors(gt, dets).images}
    for _ in range(5):
        image = int(rng.integers(1, 7))
        extra = dets + [{"image_id": image, "category_id": 1, "bbox": [60.0, 60.0, 20.0, 20.0], "score": 0.95}]
        after = {i.image_id: i.kind_scores["missing"] for i in find_label_errors(gt, extra).images}
        assert after[image] >= base[image] and after[image] > 0.5


def test_no_predictions_and_crowds() -> None:
    gt, _ = _case()
    report = find_label_errors(gt, [])
    assert all(a.kind == "spurious" and a.score == 1.0 for a in report.annotations)
    assert all(i.kind_scores["missing"] == 0.0 for i in report.images)


def _write(tmp_path: Path, obj, name: str) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code)


def test_command_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, dets = _case()
    ann = _write(tmp_path, gt.to_dict(), "gt.json")
    pred = _write(tmp_path, {"protocol": "k-fold", "folds": 2, "detections": dets}, "dt.json")
    assert _run(["quality", "--annotations", str(ann), "--predictions", str(pred), "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "k-fold: out-of-sample" in out
    rows = list(csv.DictReader((tmp_path / "q" / "images.csv").open()))
    assert [r["image_id"] for r in rows[:4]] and {r["image_id"] for r in rows[:4]} == {"7", "8", "9", "10"}
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["protocol"] == "k-fold" and summary["out_of_sample"] is True and summary["missing_boxes"] == 1
    assert "out-of-sample, 2-fold" in (tmp_path / "q" / "report.md").read_text()
    plain = _write(tmp_path, dets, "plain.json")
    assert _run(["quality", "--annotations", str(ann), "--predictions", str(plain), "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["protocol"] == "unknown"
    assert "NOT known to be out-of-sample" in capsys.readouterr().out


def test_bad_input_is_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, dets = _case()
    ann = _write(tmp_path, gt.to_dict(), "gt.json")
    unknown = _write(tmp_path, dets + [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}], "u.json")
    assert _run(["quality", "--annotations", str(ann), "--predictions", str(unknown), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image_id 999 does not exist in the ground truth" in err
    assert not (tmp_path / "q").exists()
    wrapped = _write(tmp_path, {"protocol": "k-fold", "detections": dets}, "w.json")
    assert _run(["quality", "--annotations", str(ann), "--predictions", str(wrapped), "--protocol", "in-sample",
                 "--out", str(tmp_path / "q")]) == 2
    assert "--protocol in-sample contradicts" in capsys.readouterr().err
    bad = _write(tmp_path, {"detections": dets}, "b.json")
    assert _run(["quality", "--annotations", str(ann), "--predictions", str(bad), "--out", str(tmp_path / "q")]) == 2
    assert "needs \"protocol\"" in capsys.readouterr().err
