"""The training benchmark runs end to end and reports what it claims (a smoke run, no timing asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_train_writes_one_row_per_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_train", None)
    import bench_train

    out = tmp_path / "train.json"
    configs = [BENCHMARKS.parent / "configs" / "demo_student.yaml", BENCHMARKS.parent / "configs" / "demo_teacher.yaml"]
    bench_train.main(["--iters", "3", "--warmup", "1", "--train-images", "16", "--val-images", "5",
                      "--data", str(tmp_path / "data"), "--out", str(out),
                      *(arg for c in configs for arg in ("--config", str(c))), "--set", "train.batch_size=2"])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train" and result["iters"] == 3 and result["warmup"] == 1
    rows = result["rows"]
    assert [r["config"] for r in rows] == ["demo_student.yaml", "demo_teacher.yaml"]
    assert [r["model"] for r in rows] == ["fcos/nano", "fcos/tiny"]
    for row in rows:
        assert row["steps"] == 2 and row["batch"] == 2 and row["train img/s"] > 0 and row["infer img/s"] > 0
        assert 0.0 <= row["data wait %"] <= 100.0
    assert "Training / inference throughput" in capsys.readouterr().out
