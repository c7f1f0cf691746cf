"""``detcurate score``: CSV format, exact values against pycocotools, table output, exit 2 on bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_detgain_reference import pycocotools_map, random_case

from components.score import CSV_COLUMNS, score_images
from curation_core.errors import ConfigError
from pipelines.cli import cli, main
from pipelines.cli.score import score_cmd


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure ``score`` is reachable from the root group (however the root registers it)."""
    monkeypatch.setitem(cli.commands, "score", score_cmd)


def _files(tmp_path: Path, seed: int = 4) -> tuple[Path, Path, Path, dict[str, Any], list[dict[str, Any]]]:
    gt, teacher = random_case(seed, tie_levels=5)
    rng = np.random.default_rng(seed)
    student = [dict(d, score=float(np.round(rng.random(), 1))) for d in teacher]
    paths = []
    for name, obj in (("gt", gt), ("teacher", teacher), ("student", student)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(obj))
        paths.append(path)
    return paths[0], paths[1], paths[2], gt, teacher


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code)


def test_csv_has_every_image_sorted_and_exact_values(tmp_path: Path) -> None:
    gt_path, t_path, s_path, gt, teacher = _files(tmp_path)
    out = tmp_path / "scores.csv"
    assert _run(["score", "--gt", str(gt_path), "--teacher-dt", str(t_path), "--student-dt", str(s_path),
                 "--out", str(out)]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    body = [(int(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in rows[1:]]
    assert sorted(r[0] for r in body) == sorted(im["id"] for im in gt["images"])
    keys = [(-r[3], r[0]) for r in body]
    assert keys == sorted(keys)  # learnability descending, ties by image id
    for _, d_t, d_s, learn in body:
        assert learn == d_t - d_s
    ids = sorted(im["id"] for im in gt["images"])
    full = pycocotools_map(gt, teacher)
    teacher_delta = {r[0]: r[1] for r in body}
    for x in ids[:6]:
        brute = full - pycocotools_map(gt, teacher, [i for i in ids if i != x])
        assert abs(teacher_delta[x] - brute) < 1e-9


@pytest.mark.parametrize("estimator", ["uniform", "empirical"])
def test_other_estimators_and_printed_table(tmp_path: Path, capsys: pytest.CaptureFixture[str], estimator: str) -> None:
    gt_path, t_path, s_path, gt, _ = _files(tmp_path, seed=6)
    assert _run(["score", "--gt", str(gt_path), "--teacher-dt", str(t_path), "--student-dt", str(s_path),
                 "--estimator", estimator, "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert f"estimator {estimator}" in out and "top 5 of" in out and "learnability" in out
    summary = score_images(gt_path, t_path, s_path, estimator=estimator)
    assert summary.num_images == len(gt["images"]) and summary.out_csv is None


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, t_path, s_path, _, teacher = _files(tmp_path)
    out = tmp_path / "scores.csv"
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    bad_cat = tmp_path / "bad_cat.json"
    bad_cat.write_text(json.dumps([dict(teacher[0], category_id=77)]))
    cases = [
        (["--gt", str(broken), "--teacher-dt", str(t_path), "--student-dt", str(s_path)], "malformed JSON"),
        (["--gt", str(gt_path), "--teacher-dt", str(bad_cat), "--student-dt", str(s_path)], "unknown category_id 77"),
        (["--gt", str(gt_path), "--teacher-dt", str(t_path), "--student-dt", str(tmp_path / "nope.json")],
         "file does not exist"),
    ]
    for args, message in cases:
        assert _run(["score", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        assert not out.exists()
    assert _run(["score", "--gt", str(gt_path), "--teacher-dt", str(t_path), "--student-dt", str(s_path),
                 "--estimator", "fast"]) == 2
    assert "Invalid value for '--estimator'" in capsys.readouterr().err


def test_component_rejects_unknown_estimator_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"score_images\(estimator=\) expects one of exact, uniform, empirical; got 'x'"):
        score_images(tmp_path / "missing.json", tmp_path / "a.json", tmp_path / "b.json", estimator="x")
