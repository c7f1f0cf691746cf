"""COCO data layer: every validation rule, atomic save, CLI exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation_core.coco import (
    MAX_PROBLEMS,
    dataset_from_dict,
    load_coco,
    load_detections,
    read_json,
    save_coco,
    validate_coco,
)
from curation_core.errors import CocoValidationError, DataError
from pipelines.cli import main


def _valid() -> dict:
    return {
        "info": {"description": "fixture"},
        "images": [
            {"id": 1, "width": 40, "height": 30, "file_name": "a.png"},
            {"id": 2, "width": 20, "height": 20, "file_name": "b.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 5.0], "area": 50.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 40, 30]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 5, 5], "iscrowd": 1, "ignore": 1},
        ],
        "categories": [{"id": 3, "name": "disc"}, {"id": 7, "name": "star"}],
    }


def _messages(raw: object, **kwargs: object) -> list[str]:
    return [str(p) for p in validate_coco(raw, file="f.json", **kwargs)]  # type: ignore[arg-type]


def test_valid_file_has_no_problems_and_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(_valid()))
    ds = load_coco(path)
    assert [a["area"] for a in ds.annotations] == [50.0, 1200.0, 25.0]
    assert [a["iscrowd"] for a in ds.annotations] == [0, 0, 1]
    assert [a["ignore"] for a in ds.annotations] == [0, 0, 1]
    assert ds.extra == {"info": {"description": "fixture"}}
    assert ds.annotations_by_image == {1: ds.annotations[:2], 2: ds.annotations[2:]}
    assert ds.category_ids == [3, 7]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("images"), "<file>: missing top-level key 'images'"),
        (lambda d: d.__setitem__("annotations", {}), "top-level 'annotations' must be a list; got dict"),
        (lambda d: d["images"].append({"id": 1, "width": 5, "height": 5, "file_name": "c.png"}),
         "image id=1 (images[2]): duplicate image id 1"),
        (lambda d: d["images"][0].pop("width"), "image id=1 (images[0]): missing key 'width'"),
        (lambda d: d["images"][0].__setitem__("height", 0), "image id=1 (images[0]): non-positive height 0"),
        (lambda d: d["images"][0].__setitem__("width", 12.5), "'width' must be an integer; got 12.5"),
        (lambda d: d["images"][1].__setitem__("id", "2"), "images[1]: 'id' must be an integer; got '2'"),
        (lambda d: d["images"][0].__setitem__("file_name", ""), "'file_name' must be a non-empty string"),
        (lambda d: d["images"].append("x"), "images[2]: must be an object; got str"),
        (lambda d: d["categories"].append({"id": 3, "name": "other"}), "categories[2]): duplicate category id 3"),
        (lambda d: d["categories"].append({"id": 9, "name": "disc"}), "duplicate category name 'disc'"),
        (lambda d: d["categories"][0].pop("name"), "category id=3 (categories[0]): missing key 'name'"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id=1 (annotations[3]): duplicate annotation id 1"),
        (lambda d: d["annotations"][0].pop("bbox"), "annotation id=1 (annotations[0]): missing key 'bbox'"),
        (lambda d: [d["annotations"][0].pop(k) for k in ("bbox", "image_id")], "missing keys 'image_id', 'bbox'"),
        (lambda d: d["annotations"][0].__setitem__("id", 0), "annotation id must be positive"),
        (lambda d: d["annotations"][0].__setitem__("id", True), "'id' must be an integer; got True"),
        (lambda d: d["annotations"][0].__setitem__("image_id", 99), "image_id 99 does not exist in images"),
        (lambda d: d["annotations"][0].__setitem__("category_id", 4), "unknown category_id 4 (known: 3, 7)"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), "'bbox' must be a list of 4 finite numbers"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, float("nan"), 3]), "'bbox' must be a list of 4 finite"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, "3", 4]), "'bbox' must be a list of 4 finite"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 0, 4]), "has non-positive width/height"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 5, -4]), "has non-positive width/height"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [35, 2, 7, 4]), "extends beyond its image (40x30) by more than 1 px"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [-1.5, 2, 7, 4]), "extends beyond its image"),
        (lambda d: d["annotations"][0].__setitem__("iscrowd", 2), "'iscrowd' must be 0 or 1; got 2"),
        (lambda d: d["annotations"][0].__setitem__("ignore", 0.5), "'ignore' must be 0 or 1; got 0.5"),
        (lambda d: d["annotations"][0].__setitem__("area", -1), "negative area -1"),
        (lambda d: d["annotations"][0].__setitem__("area", "big"), "'area' must be a finite number"),
    ],
)
def test_each_rule_is_reported_with_file_and_record(mutate, expected: str) -> None:
    raw = _valid()
    mutate(raw)
    messages = _messages(raw)
    assert any(expected in m for m in messages), messages
    assert all(m.startswith("f.json: ") for m in messages)


def test_tolerance_allows_small_overhang() -> None:
    raw = _valid()
    raw["annotations"][0]["bbox"] = [-0.9, 0, 40.8, 30.5]
    assert _messages(raw) == []
    assert _messages(raw, box_tolerance=0.0)


def test_every_record_is_checked_not_only_the_first() -> None:
    raw = _valid()
    for ann in raw["annotations"]:
        ann["category_id"] = 42
    messages = _messages(raw)
    assert len(messages) == 3
    assert [m.split(": ")[1] for m in messages] == [
        "annotation id=1 (annotations[0])",
        "annotation id=2 (annotations[1])",
        "annotation id=3 (annotations[2])",
    ]


def test_problem_collection_is_bounded() -> None:
    raw = _valid()
    raw["annotations"] = [
        {"id": i + 1, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]} for i in range(MAX_PROBLEMS + 10)
    ]
    assert len(validate_coco(raw, file="f.json")) == MAX_PROBLEMS
    with pytest.raises(CocoValidationError, match=r"and 999\+ more problems"):
        dataset_from_dict(raw, source="f.json")


def test_top_level_not_an_object() -> None:
    assert _messages([1, 2]) == ["f.json: <file>: top level must be a JSON object with images/annotations/categories; got list"]


def test_read_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.json: <file>: file does not exist"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match=r"bad\.json: <file>: malformed JSON at line 1 column 13"):
        read_json(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match=r"bin\.json: <file>: "):
        read_json(binary)
    with pytest.raises(DataError, match="is a directory"):
        read_json(tmp_path)


def _write_images(root: Path, raw: dict) -> None:
    root.mkdir(exist_ok=True)
    for img in raw["images"]:
        Image.fromarray(np.zeros((img["height"], img["width"], 3), np.uint8)).save(root / img["file_name"])


def test_image_files_checked_when_root_given(tmp_path: Path) -> None:
    raw = _valid()
    root = tmp_path / "images"
    _write_images(root, raw)
    assert _messages(raw, image_root=root) == []
    (root / "b.png").unlink()
    Image.fromarray(np.zeros((31, 40, 3), np.uint8)).save(root / "a.png")
    messages = _messages(raw, image_root=root)
    assert any("image id=1: image file" in m and "is 40x31 but the record says 40x30" in m for m in messages), messages
    assert any("image id=2: image file" in m and "b.png does not exist" in m for m in messages), messages
    data = (root / "a.png").read_bytes()
    (root / "b.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    messages = _messages(raw, image_root=root)
    assert any("b.png cannot be decoded" in m for m in messages), messages
    (root / "b.png").write_bytes(b"not an image")
    assert any("b.png cannot be decoded" in m for m in _messages(raw, image_root=root))


def test_dataset_from_dict_does_not_mutate_input() -> None:
    raw = _valid()
    before = copy.deepcopy(raw)
    ds = dataset_from_dict(raw)
    assert raw == before
    assert ds.annotations[1]["area"] == 1200.0


def test_save_roundtrip_and_atomicity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = dataset_from_dict(_valid())
    out = tmp_path / "out" / "ann.json"
    save_coco(ds, out)
    again = load_coco(out)
    assert again.to_dict() == ds.to_dict()
    # A failure while writing leaves the previous file intact and no temporary file behind.
    original = out.read_bytes()

    def boom(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(OSError, match="No space left"):
        save_coco(ds, out)
    assert out.read_bytes() == original
    assert sorted(p.name for p in out.parent.iterdir()) == ["ann.json"]


def test_load_detections_checks_every_record(tmp_path: Path) -> None:
    gt = dataset_from_dict(_valid(), source="gt.json")
    dets = [
        {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 5, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 1, "category_id": 8, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3], "score": 0.5},
        {"image_id": 1, "category_id": 3, "bbox": [1, 2, -3, 4], "score": 0.5},
        {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": "high"},
        {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]},
    ]
    path = tmp_path / "dt.json"
    path.write_text(json.dumps(dets))
    with pytest.raises(CocoValidationError) as info:
        load_detections(path, gt)
    messages = [str(p) for p in info.value.problems]
    assert messages == [
        f"{path}: detection [1]: image_id 5 does not exist in the ground truth gt.json",
        f"{path}: detection [2]: unknown category_id 8 (known: 3, 7)",
        f"{path}: detection [3]: 'bbox' must be a list of 4 finite numbers [x, y, w, h]; got [1, 2, 3]",
        f"{path}: detection [4]: bbox [1, 2, -3, 4] has negative width/height",
        f"{path}: detection [5]: 'score' must be a finite number; got 'high'",
        f"{path}: detection [6]: missing key 'score'",
    ]
    path.write_text('{"image_id": 1}')
    with pytest.raises(CocoValidationError, match="a results file must be a JSON list"):
        load_detections(path, gt)


def test_cli_validate_prints_all_problems_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _valid()
    raw["annotations"][0]["category_id"] = 11
    raw["annotations"][2]["bbox"] = [0, 0, 0, 1]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"error: {path}: annotation id=1 (annotations[0]): unknown category_id 11 (known: 3, 7)"
    assert err[1] == f"error: {path}: annotation id=3 (annotations[2]): bbox [0, 0, 0, 1] has non-positive width/height"
    assert err[2] == f"{path}: INVALID (2 problems)"
    assert "Traceback" not in "\n".join(err)


def test_cli_validate_ok_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_valid()))
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", str(path)])
    assert info.value.code == 0
    assert "OK (2 images, 3 annotations, 2 categories)" in capsys.readouterr().out
    raw = _valid()
    for ann in raw["annotations"]:
        ann["category_id"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", str(path), "--limit", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "... and 2 more problems" in err and err.count("unknown category_id 99") == 1


def test_cli_bad_input_is_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(SystemExit) as info:
        main(["eval", "--gt", str(path), "--dt", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: <file>: malformed JSON")
