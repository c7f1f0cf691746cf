"""The active-learning benchmark runs end to end in its smoke profile, writes what it claims and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_active_learning", None)
    import bench_active_learning

    return bench_active_learning


@pytest.mark.slow
def test_smoke_profile_writes_the_curves_table_and_plot_and_resumes(tmp_path: Path, bench) -> None:  # noqa: ANN001
    out = tmp_path / "active_learning.json"
    args = ["--profile", "smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--seeds", "0"]
    bench.main(args)
    result = json.loads(out.read_text())
    curves = {(c["level"], c["measure"], c["seed"]): c for c in result["curves"]}
    assert set(curves) == {(level, measure, 0) for level in ("box", "image") for measure in ("random", "uncertainty")}
    profile = bench.PROFILES["smoke"]
    initial = {c["points"][0][0] for c in curves.values()}
    assert len(initial) == 1  # every cell of a seed starts from the same initial detector and labelled set
    for (level, _, _), curve in curves.items():
        assert len(curve["points"]) == profile.rounds + 1
        (b0, ap0), (b1, ap1) = curve["points"]
        assert 0.0 <= ap0 <= 1.0 and 0.0 <= ap1 <= 1.0
        if level == "box":  # one box per query, every pool box open at score threshold 0
            assert b1 - b0 == profile.budget == curve["rounds"][1]["queried"]
        else:  # whole images until their boxes reach the budget
            assert b1 - b0 == curve["rounds"][1]["objects"] and b1 > b0
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    table = out.with_suffix(".md").read_text()
    assert "| box | uncertainty | 1 | 1 |" in table and "| objects | background |" in table
    # the full-supervision reference: every pool image labelled, as many iterations as a cell in all
    (full,) = result["full_supervision"]
    pool = json.loads((tmp_path / "work" / "data" / "train" / "annotations.json").read_text())
    assert full["seed"] == 0 and full["boxes"] == len(pool["annotations"]) and 0.0 <= full["AP"] <= 1.0
    assert "Full supervision (the whole pool" in table and result["teacher_AP"] is None
    stamp = (tmp_path / "work" / "box__random__seed0" / "state.json").stat().st_mtime_ns
    bench.main(args)  # finished cells are not run again
    assert (tmp_path / "work" / "box__random__seed0" / "state.json").stat().st_mtime_ns == stamp
    assert json.loads(out.read_text())["curves"] == result["curves"]


@pytest.mark.slow
def test_detgain_and_coreset_cells_train_a_teacher_on_other_data(tmp_path: Path, bench) -> None:  # noqa: ANN001
    out = tmp_path / "active_learning.json"
    bench.main(["--profile", "smoke-detgain", "--work", str(tmp_path / "work"), "--out", str(out), "--seeds", "0,1",
                "--no-reference", "--jobs", "2"])
    result = json.loads(out.read_text())
    # two seeds side by side, in two processes, share the one teacher; the outputs hold both seeds
    assert {(c["level"], c["measure"], c["seed"]) for c in result["curves"]} == {
        (level, measure, seed) for level, measure in (("box", "detgain"), ("image", "coreset")) for seed in (0, 1)}
    assert result["full_supervision"] == [] and 0.0 <= result["teacher_AP"] <= 1.0
    # the teacher learns from its own data set, never from the pool's labels
    teacher = yaml.safe_load((tmp_path / "work" / "teacher" / "config.yaml").read_text())
    assert "teacher_data" in teacher["data"]["train_annotations"]
    cell = json.loads((tmp_path / "work" / "box__detgain__seed0" / "state.json").read_text())
    assert len(cell["rounds"]) == 2 and cell["rounds"][1]["queried"] == bench.PROFILES["smoke-detgain"].budget
