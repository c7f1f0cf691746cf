"""The active-learning benchmark runs end to end in its smoke profile, writes what it claims and resumes."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
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
    assert "| box | uncertainty | loss | 1 | 1 |" in table and "| objects | background |" in table
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


def test_the_fcos_ignore_profile_is_the_fcos_scale_with_the_partial_background_cells(bench) -> None:  # noqa: ANN001
    from dataclasses import asdict

    fcos, ignore = asdict(bench.PROFILES["fcos"]), asdict(bench.PROFILES["fcos-ignore"])
    assert {k: v for k, v in fcos.items() if k != "cells"} == {k: v for k, v in ignore.items() if k != "cells"}
    cells = bench.PROFILES["fcos-ignore"].cells
    assert [(c.level, c.measure, c.partial_background) for c in cells] == [
        ("box", "detgain", "loss"), ("box", "detgain", "ignore"), ("box", "random", "ignore")]
    assert bench.PROFILES["smoke-ignore"].cells == cells
    # the loss cells keep the folders (and so the work) of the profiles before the option existed
    assert [c.name for c in cells] == ["box__detgain", "box__detgain__ignore", "box__random__ignore"]
    assert len({c.label for c in cells}) == 3 and cells[0].label == "box / detgain"
    assert bench.curve_cell({"level": "box", "measure": "detgain"}) == cells[0]  # records written before it
    assert bench.curve_cell({"level": "box", "measure": "detgain", "partial_background": "ignore"}) == cells[1]


def test_the_frcnn_profile_is_the_fcos_scale_with_valid_faster_rcnn_core_set_cells(tmp_path: Path, bench) -> None:  # noqa: ANN001
    from dataclasses import asdict

    fcos, frcnn = asdict(bench.PROFILES["fcos"]), asdict(bench.PROFILES["frcnn"])
    assert bench.PROFILES["frcnn"].rounds == 2 <= fcos["rounds"]  # fewer rounds of the same size (time)
    scale = ("train_images", "val_images", "size", "initial_images", "initial_iters", "budget",
             "round_iters", "batch_size", "pool_score_thresh", "lr", "match_iou")
    assert {k: frcnn[k] for k in scale} == {k: fcos[k] for k in scale}
    profile = bench.PROFILES["frcnn"]
    assert profile.detector == "faster_rcnn" and profile.noisy_score_thresh is None
    assert ("box", "coreset") in [(c.level, c.measure) for c in profile.cells]
    for cell in profile.cells:  # the loop's own checks accept every cell (faster_rcnn takes no noisy labels)
        config = bench.cell_config(tmp_path, profile, level=cell.level, measure=cell.measure, seed=0, rounds=1)
        assert config.noisy_score_thresh is None and config.measure == cell.measure
    with pytest.raises(Exception, match="noisy_score_thresh"):  # what the null avoids
        bench.cell_config(tmp_path, replace(profile, noisy_score_thresh=0.3), level="box", measure="coreset",
                          seed=0, rounds=1)


def test_the_table_and_plot_tell_the_partial_background_apart(tmp_path: Path, bench) -> None:  # noqa: ANN001
    def curve(partial: str | None, ap: float) -> dict:
        rounds = [{"round": r, "boxes": 10 + 5 * r, "AP": ap + r, "AP50": ap, "images": 3, "queried": 5 * r,
                   "objects": 1, "background": 4, "duplicates": 0, "pool": 9} for r in range(2)]
        record = {"level": "box", "measure": "detgain", "seed": 0, "points": [[r["boxes"], r["AP"]] for r in rounds],
                  "rounds": rounds}
        return record if partial is None else {**record, "partial_background": partial}

    curves = [curve(None, 0.1), curve("ignore", 0.2)]
    rows = bench.summary_rows(curves)
    assert [(r["partial_background"], r["round"], r["AP_mean"]) for r in rows] == [
        ("loss", 0, 0.1), ("loss", 1, 1.1), ("ignore", 0, 0.2), ("ignore", 1, 1.2)]
    out = tmp_path / "al.json"
    bench.write_outputs(out, "fcos-ignore", curves, 1.0)
    table = out.with_suffix(".md").read_text()
    assert "| box | detgain | loss | 1 | 1 | 15 |" in table and "| box | detgain | ignore | 1 | 1 | 15 |" in table
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert json.loads(out.read_text())["scale"]["cells"][1] == {"level": "box", "measure": "detgain",
                                                                "partial_background": "ignore"}


@pytest.mark.slow
def test_smoke_ignore_cells_share_round_0_and_flag_only_their_box_joined_images(tmp_path: Path, bench) -> None:  # noqa: ANN001
    out, work = tmp_path / "active_learning.json", tmp_path / "work"
    bench.main(["--profile", "smoke-ignore", "--work", str(work), "--out", str(out), "--seeds", "0",
                "--no-reference"])
    result = json.loads(out.read_text())
    assert {(c["level"], c["measure"], c["partial_background"]) for c in result["curves"]} == {
        ("box", "detgain", "loss"), ("box", "detgain", "ignore"), ("box", "random", "ignore")}
    assert len({c["points"][0][0] for c in result["curves"]}) == 1  # one initial detector for every cell
    joined = 0
    for name, partial in (("box__detgain", "loss"), ("box__detgain__ignore", "ignore"),
                          ("box__random__ignore", "ignore")):
        cell = work / f"{name}__seed0"
        initial = {img["id"] for img in json.loads((cell / "round_0" / "labels.json").read_text())["images"]}
        images = json.loads((cell / "round_1" / "labels.json").read_text())["images"]
        flagged = {img["id"] for img in images if img.get("incomplete") == 1}
        assert flagged == (({img["id"] for img in images} - initial) if partial == "ignore" else set()), name
        assert json.loads((cell / "state.json").read_text())["config"]["partial_background"] == partial
        joined += len({img["id"] for img in images} - initial)
    assert joined > 0  # some box query found an object, so the flag was exercised
    table = out.with_suffix(".md").read_text()
    assert "| box | detgain | ignore | 1 |" in table and "| box | random | ignore | 1 |" in table
