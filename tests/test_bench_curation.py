"""The curation benchmarks run end to end in their smoke profiles and write what they claim (no timing asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_curation(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_curation", None)
    import bench_curation

    return bench_curation


def test_bench_curation_smoke_profile_writes_runs_and_resumes(tmp_path: Path, bench_curation,  # noqa: ANN001
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curation.json"
    args = ["--profile", "smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--seeds", "0", "--jobs", "2",
            "--only", "clean:plain,clean:detgain-empirical,noisy:loss_learnability-std"]
    bench_curation.main(args)
    result = json.loads(out.read_text())
    runs = {(r["setting"], r["variant"]): r for r in result["runs"]}
    assert set(runs) == {("clean", "plain"), ("clean", "detgain-empirical"), ("noisy", "loss_learnability-std")}
    for run in runs.values():
        assert run["iterations"] == 4 and [h[0] for h in run["history"]] == [2, 4]
        assert 0.0 <= run["final_AP"] <= 1.0 and run["wall_s"] > 0
    assert runs[("clean", "detgain-empirical")]["method"] == "detgain"
    assert runs[("clean", "detgain-empirical")]["estimator"] == "empirical"
    assert runs[("clean", "detgain-empirical")]["scored_images_per_s"] > 0
    assert (tmp_path / "work" / "noisy" / "train.json").is_file()
    # the noisy setting's teacher learns from the corrupted labels, the clean one's from the clean labels
    assert runs[("noisy", "loss_learnability-std")]["teacher"] == "teacher_tiny_4_noisy"
    assert runs[("clean", "detgain-empirical")]["teacher"] == "teacher_tiny_4"
    noisy_teacher = yaml.safe_load((tmp_path / "work" / "teacher_tiny_4_noisy" / "config.yaml").read_text())
    assert noisy_teacher["data"]["train_annotations"].endswith("noisy/train.json")
    assert runs[("clean", "plain")]["teacher"] is None
    assert out.with_suffix(".md").read_text().count("| clean |") == 2
    assert out.with_name("curation_ap.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    bench_curation.main(args)  # everything is done: nothing runs again
    assert "0 runs to do (3 done)" in capsys.readouterr().out


def test_summary_reports_mean_spread_and_gain_over_plain(bench_curation) -> None:  # noqa: ANN001
    runs = [{"setting": "clean", "variant": v, "seed": s, "final_AP": ap, "final_AP50": 2 * ap, "wall_s": 10.0,
             "iterations": 4, "history": [[2, ap / 2], [4, ap]]}
            for v, aps in (("plain", (0.10, 0.12)), ("detgain-empirical", (0.12, 0.24)), ("uniform", (0.11, 0.20)))
            for s, ap in enumerate(aps)]
    rows = {r["variant"]: r for r in bench_curation.summarize(runs)}
    assert rows["plain"]["AP mean"] == pytest.approx(0.11) and rows["plain"]["AP sd"] == pytest.approx(0.0141421, rel=1e-4)
    assert rows["detgain-empirical"]["vs plain %"] == pytest.approx(100 * (0.18 / 0.11 - 1))
    # plain's final AP 0.11, AP linear between evaluations: seed 0 (0.06 at 2, 0.12 at 4) at iteration 3.67,
    # seed 1 (0.12 at 2, from 0 at 0) at 1.83; every run takes 10 s, so time follows the iterations
    d = rows["detgain-empirical"]
    assert d["iters to plain AP"] == pytest.approx(((2 + 2 * (0.05 / 0.06)) / 4 + (2 * 0.11 / 0.12) / 4) / 2)
    assert d["time to plain AP"] == pytest.approx(d["iters to plain AP"])
    assert d["AP at plain's time"] == pytest.approx(0.18)  # same step time as plain: the final AP
    assert rows["detgain-empirical"]["AP se"] == pytest.approx(rows["detgain-empirical"]["AP sd"] / 2 ** 0.5)
    # paired by seed: differences 0.02 and 0.12 to plain, 0.01 and 0.04 to uniform (strong augmentation's)
    assert (d["paired vs plain"], d["paired vs plain se"]) == pytest.approx((0.07, 0.05))
    assert (d["paired vs uniform"], d["paired vs uniform se"]) == pytest.approx((0.025, 0.015))
    assert math.isnan(rows["uniform"]["paired vs uniform"]) and rows["uniform"]["paired vs plain"] == pytest.approx(0.045)
    weak = {**runs[2], "setting": "weak-teacher"}  # one seed, compared with the clean runs of seed 0
    row = next(r for r in bench_curation.summarize([*runs, weak]) if r["setting"] == "weak-teacher")
    assert row["paired vs plain"] == pytest.approx(0.02) and math.isnan(row["paired vs plain se"])
    assert row["paired vs uniform"] == pytest.approx(0.01)


def test_bench_curation_cost_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine_fixtures import tiny_config_dict

    from curation_core.engine.config import config_from_dict
    from curation_core.engine.trainer import train

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_curation_cost", None)
    import bench_curation_cost

    raw = tiny_config_dict(tmp_path, val=False, max_iter=1, output="teacher", num_images=12)
    teacher = train(config_from_dict(raw)).checkpoint
    data = tmp_path / "synth"
    (data / "train").mkdir(parents=True)
    (data / "train" / "annotations.json").symlink_to(raw["data"]["train_annotations"])
    (data / "train" / "images").symlink_to(raw["data"]["train_images"])
    config = tmp_path / "student.yaml"
    import yaml

    student = tiny_config_dict(tmp_path / "s", val=False)
    student["train"]["batch_size"] = 16
    config.write_text(yaml.safe_dump(student))
    out = tmp_path / "cost.json"
    bench_curation_cost.main(["--quick", "--data", str(data), "--teacher", str(teacher), "--config", str(config),
                              "--threads", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["plain", "uniform B=80", "detgain B=32 every 2"]
    assert rows[0]["ratio_to_plain"] == 1.0 and rows[0]["teacher_share"] == 0.0
    assert rows[0]["cpu_ratio_to_plain"] == 1.0 and all(r["cpu_s_per_step"] > 0 for r in rows)
    detgain = rows[2]
    assert detgain["teacher_share"] > 0 and detgain["student_share"] > 0 and detgain["scored_img_s"] > 0
    assert sum(detgain[f"{p}_share"] for p in bench_curation_cost.PARTS) == pytest.approx(1.0, abs=1e-6)


def test_bench_engine_parity_quick_runs_both_loops_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    data = tmp_path / "synth"
    subprocess.run([str(Path(sys.executable).parent / "detcurate"), "data", "synth", "--out", str(data), "--train", "40",
                    "--val", "4", "--size", "64", "--seed", "0"], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_engine_parity", None)
    import bench_engine_parity

    out = tmp_path / "parity.json"
    bench_engine_parity.main(["--quick", "--data", str(data), "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["loop"] for r in rows} >= {"engine", "plain"}
    for row in rows:
        assert row["history"] and all(0.0 <= h["AP"] <= 1.0 for h in row["history"])
    before = out.read_text()
    bench_engine_parity.main(["--quick", "--data", str(data), "--out", str(out)])  # finished runs are not redone
    assert json.loads(out.read_text())["rows"] == json.loads(before)["rows"]


def test_cost_control_and_early_variants_reach_the_training_config(tmp_path: Path, bench_curation) -> None:  # noqa: ANN001
    bench = bench_curation.Bench(bench_curation.PROFILES["cpu"], work=tmp_path, out=tmp_path / "c.json", seeds=[0],
                                 jobs=1)
    bench.data = lambda: tmp_path / "data"  # neither data nor teachers are made
    bench.teacher = lambda iterations, noisy=False: tmp_path / f"teacher_{iterations}" / "model.pt"
    cache = bench.run_overrides("clean", "detgain-uniform-cache-std", 0, tmp_path / "run")
    assert "curation.teacher_cache=True" in cache and "curation.estimator=uniform" in cache
    assert "augment.preset=standard" in cache and not any(o.startswith("curation.stop_iter") for o in cache)
    early = bench.run_overrides("clean", "detgain-empirical-early-std", 0, tmp_path / "run")
    assert "curation.stop_iter=600" in early and not any("stop_fraction" in o for o in early)
    pooled = bench.run_overrides("clean", "detgain-uniform-cache-b2x-every2-std", 0, tmp_path / "run")
    assert "curation.super_batch=64" in pooled and "curation.score_every=2" in pooled
    assert "curation.teacher_cache=True" in pooled and not any("factor" in o for o in pooled)
    assert "curation.super_batch=32" in cache and "curation.super_batch=64" in bench.run_overrides(
        "clean", "detgain-uniform-cache-b2x-std", 0, tmp_path / "run")
