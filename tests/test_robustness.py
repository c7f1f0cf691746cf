"""The missing-label robustness grid: cell order, resume after a kill, the JSON schema, aggregation,
one-line configuration errors before any training, and the DVC stage."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from engine_fixtures import stop_at, tiny_config_dict

from curation_core.errors import ConfigError
from curation_core.robustness.config import Cell, RobustnessConfig, cell_list, load_robustness_config
from curation_core.robustness.report import aggregate, markdown_report, mean_sd_se, paired_differences

ROOT = Path(__file__).resolve().parents[1]
CELL_FIELDS = {"mode", "loss", "curation", "seed", "AP", "AP50", "AP75"}


def _base_config(tmp_path: Path, *, max_iter: int = 3) -> Path:
    raw = tiny_config_dict(tmp_path, detector="retinanet", max_iter=max_iter, num_images=8)
    raw["model"]["backbone"] = "nano"
    raw["augment"] = {"hflip": 0.5}
    raw["train"].update(num_threads=1, output_dir=str(tmp_path / "unused"))
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _grid_file(tmp_path: Path, **fields: object) -> Path:
    raw: dict[str, object] = {"base": {"config": str(_base_config(tmp_path))}, "modes": ["normal", "extreme"],
                              "losses": ["focal"], "seeds": [0]}
    raw.update(fields)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------------------------
# Cells


def test_cell_order_puts_every_cell_of_the_first_seed_and_loss_first() -> None:
    config = RobustnessConfig.model_validate({"base": {"config": "x.yaml"}, "modes": ["normal", "easy"],
                                              "losses": ["focal", "brl"], "seeds": [3, 1]})
    names = [c.name for c in cell_list(config)]
    assert names == ["normal__focal__none__seed3", "easy__focal__none__seed3", "normal__brl__none__seed3",
                     "easy__brl__none__seed3", "normal__focal__none__seed1", "easy__focal__none__seed1",
                     "normal__brl__none__seed1", "easy__brl__none__seed1"]
    full = RobustnessConfig.model_validate({"base": {"config": "x.yaml"}, "losses": ["focal", "brl"],
                                            "curations": ["none", "uniform"]})
    assert len(cell_list(full)) == 5 * 2 * 2 * 3
    assert len(set(cell_list(full))) == 60


# ----------------------------------------------------------------------------------------------
# Aggregation


def test_mean_sd_se_on_hand_values() -> None:
    stat = mean_sd_se([0.1, 0.2, 0.3])
    assert stat["n"] == 3
    assert stat["mean"] == pytest.approx(0.2)
    assert stat["sd"] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert stat["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert mean_sd_se([0.4]) == {"n": 1, "mean": 0.4, "sd": None, "se": None}
    with pytest.raises(ValueError, match="at least one value"):
        mean_sd_se([])
    with pytest.raises(ValueError, match="finite numbers; got nan"):
        mean_sd_se([0.1, float("nan")])


def test_mean_sd_se_against_the_standard_library_on_random_values() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        values = list(rng.uniform(0, 1, size=int(rng.integers(2, 12))))
        stat = mean_sd_se(values)
        assert stat["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert stat["sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert stat["se"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(len(values)), abs=1e-12)


def _cells(values: dict[tuple[str, str, int], float]) -> list[dict[str, object]]:
    return [{"mode": m, "loss": loss, "curation": "none", "seed": s, "AP": v, "AP50": 2 * v, "AP75": v / 2}
            for (m, loss, s), v in values.items()]


def test_aggregate_and_paired_differences_on_hand_values() -> None:
    cells = _cells({("extreme", "focal", 0): 0.20, ("extreme", "focal", 1): 0.30, ("extreme", "brl", 0): 0.26,
                    ("extreme", "brl", 1): 0.32, ("extreme", "brl", 2): 0.50, ("normal", "focal", 0): 0.40})
    rows = {(r["mode"], r["loss"]): r for r in aggregate(cells)}
    assert list(rows) == [("extreme", "focal"), ("extreme", "brl"), ("normal", "focal")]
    assert rows[("extreme", "focal")]["AP"]["mean"] == pytest.approx(0.25)
    assert rows[("extreme", "focal")]["AP"]["sd"] == pytest.approx(math.sqrt(0.005))
    assert rows[("extreme", "focal")]["AP50"]["mean"] == pytest.approx(0.50)
    assert rows[("extreme", "brl")]["seeds"] == [0, 1, 2]
    assert rows[("extreme", "brl")]["AP"]["mean"] == pytest.approx(1.08 / 3)
    assert rows[("normal", "focal")]["AP"]["sd"] is None
    diffs = paired_differences(cells)
    assert len(diffs) == 1  # normal has no brl cell
    # seed 2 has no focal partner: d = (0.06, 0.02), mean 0.04, sd sqrt(0.0008) = 0.0283, se 0.02
    assert diffs[0]["seeds"] == [0, 1]
    assert diffs[0]["AP"]["mean"] == pytest.approx(0.04)
    assert diffs[0]["AP"]["se"] == pytest.approx(0.02)
    assert diffs[0]["AP75"]["mean"] == pytest.approx(0.02)
    table = markdown_report(cells, {"extreme": {"dropped_fraction": 0.73}}, total_cells=8)
    assert "| extreme | 73.0% | focal | none | 2 | 0.2500 ± 0.0707 | 0.5000 ± 0.1414 | 0.1250 ± 0.0354 |" in table
    assert "| extreme | none | 2 | +0.0400 ± 0.0200 | +0.0800 ± 0.0400 | +0.0200 ± 0.0100 |" in table
    assert "6 of 8 cells" in table


# ----------------------------------------------------------------------------------------------
# Running and resuming


def _recorder(trained: list[tuple[str, int]], *, stop: tuple[str, int] | None = None):  # noqa: ANN202
    from curation_core.engine.hooks import Hook

    class Record(Hook):
        def __init__(self, cell: Cell) -> None:
            self.cell = cell

        def before_train(self) -> None:
            trained.append((self.cell.name, self.trainer.iter))

    def hooks(cell: Cell) -> list[Hook]:
        out: list[Hook] = [Record(cell)]
        if stop is not None and cell.name == stop[0]:
            out.append(stop_at(stop[1]))
        return out

    return hooks


def test_a_killed_grid_resumes_at_the_next_cell_and_never_retrains_a_finished_one(tmp_path: Path) -> None:
    from curation_core.engine.trainer import TrainingInterrupted
    from curation_core.robustness.runner import run_robustness

    grid = _grid_file(tmp_path)
    out = tmp_path / "out"
    config = load_robustness_config(grid)
    trained: list[tuple[str, int]] = []
    with pytest.raises(TrainingInterrupted, match="at iteration 2/3"):
        run_robustness(config, out, cell_hooks=_recorder(trained, stop=("extreme__focal__none__seed0", 2)))
    assert trained == [("normal__focal__none__seed0", 0), ("extreme__focal__none__seed0", 0)]
    first = out / "cells" / "normal__focal__none__seed0" / "result.json"
    assert first.is_file()
    assert not (out / "cells" / "extreme__focal__none__seed0" / "result.json").exists()
    partial = json.loads((out / "robustness.json").read_text())
    assert [c["mode"] for c in partial["cells"]] == ["normal"]
    assert partial["progress"] == {"cells_done": 1, "cells_total": 2}
    stamp = first.stat().st_mtime_ns

    trained.clear()
    result = run_robustness(config, out, cell_hooks=_recorder(trained))
    assert trained == [("extreme__focal__none__seed0", 2)]  # resumed from its own checkpoint at iteration 2
    assert first.stat().st_mtime_ns == stamp
    assert result.complete

    report = json.loads((out / "robustness.json").read_text())
    assert [set(c) for c in report["cells"]] == [CELL_FIELDS, CELL_FIELDS]
    assert [(c["mode"], c["loss"], c["curation"], c["seed"]) for c in report["cells"]] == [
        ("normal", "focal", "none", 0), ("extreme", "focal", "none", 0)]
    for cell in report["cells"]:
        assert all(isinstance(cell[m], float) and 0.0 <= cell[m] <= 1.0 for m in ("AP", "AP50", "AP75"))
    sets = report["training_sets"]
    clean = json.loads(Path(sets["normal"]["annotations"]).read_text())
    n = sum(1 for a in clean["annotations"] if not a["iscrowd"])
    per_image = [sum(1 for a in clean["annotations"] if a["image_id"] == i["id"] and not a["iscrowd"])
                 for i in clean["images"]]
    assert sets["normal"]["dropped_fraction"] == 0.0
    assert sets["extreme"]["dropped_fraction"] == pytest.approx(sum(max(k - 1, 0) for k in per_image) / n)
    assert (out / "robustness.md").read_text().startswith("## Missing-label robustness")
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    trained.clear()
    run_robustness(config, out, cell_hooks=_recorder(trained))  # all done: nothing trains
    assert trained == []
    with pytest.raises(ConfigError, match=r"cell normal__focal__none__seed0: finished with another "
                                          r"schedule.max_iter \(3, now 4\)"):
        changed = load_robustness_config(grid).model_copy(
            update={"base": config.base.model_copy(update={"overrides": {"schedule.max_iter": 4}})})
        run_robustness(changed, out)


def test_a_half_trained_cell_of_another_recipe_or_a_refused_checkpoint_restarts_cleanly(tmp_path: Path) -> None:
    from curation_core.robustness.runner import run_robustness

    config = load_robustness_config(_grid_file(tmp_path, modes=["normal"]))
    stale = tmp_path / "out" / "cells" / "normal__focal__none__seed0"
    stale.mkdir(parents=True)
    (stale / "cell.json").write_text(json.dumps({"training": {"schedule": {"max_iter": 99}}}))
    (stale / "checkpoint.pt").write_bytes(b"from another recipe")
    trained: list[tuple[str, int]] = []
    result = run_robustness(config, tmp_path / "out", cell_hooks=_recorder(trained))
    assert trained == [("normal__focal__none__seed0", 0)]
    assert result.complete and json.loads((stale / "result.json").read_text())["result"]["iterations"] == 3
    # same recipe, but a checkpoint the engine refuses (corrupt, or of another engine version): restart too
    (stale / "result.json").unlink()
    (stale / "checkpoint.pt").write_bytes(b"truncated")
    trained.clear()
    assert run_robustness(config, tmp_path / "out", cell_hooks=_recorder(trained)).complete
    assert trained == [("normal__focal__none__seed0", 0)]


@pytest.mark.slow
def test_a_detgain_curated_cell_trains_with_a_teacher_checkpoint(tmp_path: Path) -> None:
    from curation_core.engine.config import load_config
    from curation_core.engine.trainer import train
    from curation_core.robustness.runner import run_robustness

    base = _base_config(tmp_path)
    teacher = train(load_config(base, ["schedule.max_iter=1", f"train.output_dir={tmp_path / 'teacher'}"]))
    grid = _grid_file(tmp_path, modes=["extreme"], curations=["detgain"],
                      curation_overrides={"detgain": {"curation.teacher": str(teacher.checkpoint),
                                                      "curation.super_batch": 4}})
    result = run_robustness(load_robustness_config(grid), tmp_path / "out")
    assert [(c["mode"], c["curation"]) for c in result.cells] == [("extreme", "detgain")]
    cell = tmp_path / "out" / "cells" / "extreme__focal__detgain__seed0"
    assert len((cell / "selections.csv").read_text().splitlines()) == 1 + 3 * 4  # 3 steps, 4 images scored each


# ----------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing trained


@pytest.mark.parametrize(("fields", "message"), [
    ({"mode": ["easy"]}, r"grid.yaml: mode: unknown field; valid fields: base, train_annotations, "),
    ({"modes": ["easy", "medium"]}, r"grid.yaml: modes.1: invalid value 'medium'; valid choices: normal, easy, hard, "
                                    r"extreme, drop-per-category"),
    ({"losses": ["ce"]}, r"grid.yaml: losses.0: invalid value 'ce'; valid choices: focal, brl"),
    ({"seeds": [0, 0]}, r"grid.yaml: <top level>: seeds must not repeat a value; got 0 twice"),
    ({"drop_fraction": 1.5}, r"grid.yaml: drop_fraction: Input should be less than 1"),
    ({"loss_overrides": {"brl": {"model.brl.weight": 0.2}}}, r"loss_overrides names brl, which the grid does not run"),
    ({"base": {"config": "nowhere.yaml"}}, r"nowhere.yaml: <file>: file does not exist"),
    ({"base": {"config": str(ROOT / "configs" / "demo_student.yaml"), "overrides": {"schedule.max_itr": 5}}},
     r"--set schedule.max_itr: unknown field 'max_itr' in schedule; valid fields: max_iter, "),
    ({"curations": ["detgain"]}, r"cell normal__focal__detgain__seed0: .*curation: method 'detgain' needs a teacher"),
])
def test_bad_configs_are_one_line_errors_with_exit_2_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, object], message: str) -> None:
    from pipelines.cli import main

    grid = _grid_file(tmp_path, **fields)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["robustness", "--config", str(grid), "--out", str(out), "--no-track"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]
    assert not (out / "cells").exists()


def test_a_loss_of_another_detector_and_a_bad_set_are_refused(tmp_path: Path) -> None:
    from curation_core.robustness.runner import run_robustness

    with pytest.raises(ConfigError, match=r"--set 'folds=3': expected FIELD=VALUE with FIELD one of base, "):
        load_robustness_config(_grid_file(tmp_path), ["folds=3"])
    config = load_robustness_config(_grid_file(tmp_path), ["losses=[brl]"])
    assert config.losses == ("brl",)
    fcos = config.model_copy(update={"base": config.base.model_copy(update={"overrides": {"model.detector": "fcos"}})})
    with pytest.raises(ConfigError, match=r"cell normal__brl__none__seed0: .*loss 'brl' .* applies to retinanet only"):
        run_robustness(fcos, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Shipped configs and the DVC stage


@pytest.mark.parametrize("name", ["robustness_demo.yaml", "robustness_cpu.yaml"])
def test_shipped_configs_validate_into_every_cell(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from curation_core.robustness.config import cell_training_config, data_paths

    monkeypatch.chdir(ROOT)  # their paths are relative to the project root

    config = load_robustness_config(ROOT / "configs" / name)
    assert config.modes == ("normal", "easy", "hard", "extreme", "drop-per-category")
    assert config.losses == ("focal", "brl") and config.drop_fraction == 0.5
    assert len(config.seeds) >= 3 if name == "robustness_cpu.yaml" else len(config.seeds) >= 1
    data = data_paths(config)
    for cell in cell_list(config):
        trained = cell_training_config(config, cell, train_annotations=data.train_annotations, data=data,
                                       output_dir="unused")
        assert trained.model.detector == "retinanet"
        assert trained.model.loss == cell.loss and trained.train.seed == cell.seed


def test_dvc_stage_runs_the_demo_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from pipelines.cli import cli

    monkeypatch.chdir(ROOT)

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["robustness"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cmd = stage["cmd"]
    for name, value in params["robustness"].items():
        cmd = cmd.replace(f"${{robustness.{name}}}", str(value))
    args = shlex.split(cmd.replace("${seed}", str(params["seed"])))
    assert args[:2] == ["detcurate", "robustness"]
    context = cli.commands["robustness"].make_context("robustness", args[2:])
    assert context.params["config_path"] == Path("configs/robustness_demo.yaml")
    assert stage["outs"] == [str(context.params["out_dir"])]
    assert {"configs/robustness_demo.yaml", "data/synth", "curation_core/robustness", "components/robustness.py",
            "curation_core/corrupt.py", "curation_core/engine"} <= set(stage["deps"])
    config = load_robustness_config(ROOT / "configs" / "robustness_demo.yaml", context.params["overrides"])
    assert config.base.overrides["schedule.max_iter"] == params["robustness"]["iterations"]
    assert config.seeds == (params["seed"],)


@pytest.mark.slow  # about 30 s: creating the MLflow sqlite store dominates
def test_a_finished_grid_is_logged_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from curation_core.io import write_json_atomic
    from curation_core.robustness.report import plot_robustness
    from curation_core.robustness.runner import RobustnessResult
    from pipelines.tracking import log_robustness, mlflow_client

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cells = _cells({("extreme", "focal", 0): 0.20, ("extreme", "focal", 1): 0.30, ("extreme", "brl", 0): 0.26,
                    ("extreme", "brl", 1): 0.32})
    sets = {"extreme": {"dropped_fraction": 0.73}}
    grid = _grid_file(tmp_path, modes=["extreme"], losses=["focal", "brl"], seeds=[0, 1])
    out = tmp_path / "out"
    write_json_atomic(out / "robustness.json", {"cells": cells, "training_sets": sets, "summary": aggregate(cells),
                                                "brl_minus_focal": paired_differences(cells),
                                                "config": load_robustness_config(grid).model_dump(mode="json")})
    (out / "robustness.md").write_text(markdown_report(cells, sets))
    plot_robustness(cells, sets, out / "robustness.png", modes=["extreme"])
    result = RobustnessResult([dict(c) for c in cells], 4, {}, out / "robustness.json", out / "robustness.md",
                              out / "robustness.png")
    run_id = log_robustness(result, str(grid))
    client = mlflow_client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["robustness.losses"] == "focal,brl"
    assert run.data.metrics["robustness/extreme/focal/none/AP"] == pytest.approx(0.25)
    assert run.data.metrics["robustness/extreme/brl_minus_focal/none/AP"] == pytest.approx(0.04)
    assert run.data.metrics["robustness/extreme/dropped_fraction"] == pytest.approx(0.73)
    assert sorted(a.path for a in client.list_artifacts(run_id, "robustness")) == [
        "robustness/grid.yaml", "robustness/robustness.json", "robustness/robustness.md", "robustness/robustness.png"]
