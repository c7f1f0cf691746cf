"""``detcurate eval`` reports exactly pycocotools' numbers, and rejects bad results files in one line."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from curation_core.evaluation import COCO_STAT_NAMES
from pipelines.cli import main


def _random_files(tmp_path: Path, seed: int, *, n_images: int = 40, n_categories: int = 5) -> tuple[Path, Path, dict]:
    """GT and results files; one category has no ground truth, some images have no detection."""
    rng = np.random.default_rng(seed)
    image_ids = [int(i) for i in rng.choice(np.arange(1, 1000), n_images, replace=False)]
    cat_ids = [int(c) for c in rng.choice(np.arange(1, 100), n_categories, replace=False)]
    anns: list[dict] = []
    dets: list[dict] = []
    for img in image_ids:
        no_dets = rng.random() < 0.2
        for cat in cat_ids[1:]:  # cat_ids[0] never has ground truth
            boxes = []
            for _ in range(int(rng.integers(0, 5))):
                w, h = np.round(np.exp(rng.uniform(np.log(4), np.log(200), 2)), 1)
                x, y = np.round(rng.uniform(0, [640 - w, 480 - h]), 1)
                boxes.append([float(x), float(y), float(w), float(h)])
                anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": boxes[-1],
                             "area": float(np.round(w * h * rng.uniform(0.6, 1.0), 2)), "iscrowd": int(rng.random() < 0.1)})
            if no_dets:
                continue
            for _ in range(int(rng.integers(0, 8))):
                if boxes and rng.random() < 0.7:
                    g = np.array(boxes[int(rng.integers(len(boxes)))])
                    b = g + rng.normal(0, 0.1, 4) * np.r_[g[2:], g[2:]]
                else:
                    b = np.r_[rng.uniform(0, 500, 2), rng.uniform(4, 140, 2)]
                b[2:] = np.maximum(b[2:], 1.0)
                dets.append({"image_id": img, "category_id": int(rng.choice(cat_ids)), "bbox": np.round(b, 2).tolist(),
                             "score": float(np.round(rng.random(), 2))})
    gt = {"images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in image_ids],
          "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dets))
    return gt_path, dt_path, gt


def _reference(gt_path: Path, dt_path: Path) -> Any:
    """pycocotools reading the same files itself."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(dt_path)), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_eval_json_equals_pycocotools_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int) -> None:
    gt_path, dt_path, gt = _random_files(tmp_path, seed)
    ref = _reference(gt_path, dt_path)
    code, out, err = _run(capsys, "eval", "--gt", str(gt_path), "--dt", str(dt_path), "--json", "--out", str(tmp_path / "r.json"))
    assert code == 0, err
    report = json.loads(out)
    assert report["stats"] == [float(s) for s in ref.stats]  # exact, not approximate
    assert report["names"] == list(COCO_STAT_NAMES)
    precision = ref.eval["precision"][:, :, :, 0, -1]
    for k, cat in enumerate(ref.params.catIds):
        values = precision[:, :, k]
        expected = float(np.mean(values[values > -1])) if (values > -1).any() else None
        assert report["per_category_ap"][str(cat)] == expected
        name = next(c["name"] for c in gt["categories"] if c["id"] == cat)
        assert report["per_category_ap_by_name"][name] == expected
    assert report["per_category_ap"][str(gt["categories"][0]["id"])] is None  # the category without ground truth
    assert len(report["per_category_ap_by_name"]) == len(gt["categories"])
    assert json.loads((tmp_path / "r.json").read_text()) == report


def test_eval_of_an_empty_results_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, dt_path, gt = _random_files(tmp_path, 7)
    dt_path.write_text("[]")
    code, out, err = _run(capsys, "eval", "--gt", str(gt_path), "--dt", str(dt_path), "--json")
    assert code == 0, err
    # pycocotools cannot load an empty list; for a result set without detections it gives 0 for every
    # statistic whose area range holds ground truth, -1 for the others. Here every range holds some.
    areas = [a["area"] for a in gt["annotations"] if not a["iscrowd"]]
    assert min(areas) < 32**2 and any(32**2 <= a <= 96**2 for a in areas) and max(areas) > 96**2
    assert json.loads(out)["stats"] == [0.0] * 12


def test_eval_without_detections_and_only_small_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = {"images": [{"id": 1, "width": 50, "height": 50, "file_name": "a.jpg"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text("[]")
    code, out, _ = _run(capsys, "eval", "--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json"), "--json")
    assert code == 0
    stats = dict(zip(COCO_STAT_NAMES, json.loads(out)["stats"], strict=True))
    assert stats == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": -1.0, "APl": -1.0,
                     "AR1": 0.0, "AR10": 0.0, "AR100": 0.0, "ARs": 0.0, "ARm": -1.0, "ARl": -1.0}


def test_eval_prints_a_table_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, dt_path, _ = _random_files(tmp_path, 4, n_images=5)
    code, out, _ = _run(capsys, "eval", "--gt", str(gt_path), "--dt", str(dt_path))
    assert code == 0
    assert "AP50" in out and "no ground truth" in out


GOOD = {"image_id": 0, "category_id": 0, "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.5}


@pytest.mark.parametrize(
    ("content", "record", "message"),
    [
        ([GOOD, {**GOOD, "image_id": 123456}], "detection [1]", "image_id 123456 does not exist in the ground truth"),
        ([{**GOOD, "category_id": 777}], "detection [0]", "unknown category_id 777"),
        ('[{"image_id": 1,', "<file>", "malformed JSON at line 1"),
        ([GOOD, GOOD, {**GOOD, "bbox": [1, 2, 3]}], "detection [2]", "'bbox' must be a list of 4 finite numbers"),
        ([{**GOOD, "score": "high"}], "detection [0]", "'score' must be a finite number; got 'high'"),
    ],
    ids=["unknown-image", "unknown-category", "malformed-json", "bbox-3-numbers", "non-numeric-score"],
)
def test_bad_results_files_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any,
                                                record: str, message: str) -> None:
    gt_path, dt_path, gt = _random_files(tmp_path, 5, n_images=3)
    if isinstance(content, list):
        first_image, first_cat = gt["images"][0]["id"], gt["categories"][0]["id"]
        content = [{**d, "image_id": first_image if d["image_id"] == 0 else d["image_id"],
                    "category_id": first_cat if d["category_id"] == 0 else d["category_id"]} for d in content]
        dt_path.write_text(json.dumps(content))
    else:
        dt_path.write_text(content)
    report = tmp_path / "report.json"
    code, out, err = _run(capsys, "eval", "--gt", str(gt_path), "--dt", str(dt_path), "--json", "--out", str(report))
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"error: {dt_path}: {record}: ")
    assert message in err
    assert not report.exists()


def test_evaluation_leaves_the_ground_truth_untouched(tmp_path: Path) -> None:
    import copy

    from curation_core.coco import load_coco, load_detections
    from curation_core.evaluation import evaluate_detections

    gt_path, dt_path, _ = _random_files(tmp_path, 8, n_images=6)
    gt = load_coco(gt_path)
    gt.annotations[0]["ignore"] = 1  # pycocotools overwrites 'ignore' with 'iscrowd' in the dicts it is given
    before = copy.deepcopy(gt.annotations)
    detections = load_detections(dt_path, gt)
    detections_before = copy.deepcopy(detections)
    evaluate_detections(gt, detections)
    assert gt.annotations == before
    assert detections == detections_before
