"""The DVC pipeline (dvc.yaml + params.yaml): structure, valid commands, and re-running only what changed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dvc")

from dvc.repo import Repo  # noqa: E402

from curation_core.engine.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = {"synth", "train_teacher", "train_student", "train_student_detgain", "evaluate@teacher", "evaluate@student",
          "evaluate@student_detgain", "report", "robustness", "balance", "active_learning"}
TRAININGS = ("train_teacher", "train_student", "train_student_detgain")
MODELS = ("teacher", "student", "student_detgain")
#: stage -> the stages it depends on
UPSTREAM = {
    "synth": set(),
    "train_teacher": {"synth"},
    "train_student": {"synth"},
    "train_student_detgain": {"synth", "evaluate@teacher"},  # the teacher comes from the registry
    "evaluate@teacher": {"train_teacher", "synth"},
    "evaluate@student": {"train_student", "synth"},
    "evaluate@student_detgain": {"train_student_detgain", "synth"},
    "report": {"train_teacher", "train_student", "train_student_detgain"},
    "robustness": {"synth"},
    "balance": {"synth", "train_teacher"},
    "active_learning": {"synth"},
}


@pytest.fixture(scope="module")
def stages():
    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph
        found = {stage.addressing: stage for stage in repo.index.stages}
        upstream = {stage.addressing: {dep.addressing for dep in graph.successors(stage)} for stage in graph}
    return found, upstream


def _options(cmd: str) -> dict[str, list[str]]:
    """``--name value`` pairs of a command line (every option of these commands takes a value)."""
    args = shlex.split(cmd)
    out: dict[str, list[str]] = {}
    for flag, value in zip(args, args[1:], strict=False):
        if flag.startswith("--"):
            out.setdefault(flag, []).append(value)
    return out


def test_stages_and_their_order(stages):
    found, upstream = stages
    assert set(found) == STAGES
    assert upstream == UPSTREAM


def test_commands_are_valid_detcurate_invocations(stages):
    import click

    from pipelines.cli import cli

    found, _ = stages
    for name, stage in found.items():
        args = shlex.split(stage.cmd)
        assert args[0] == "detcurate", name
        command, rest = cli, args[1:]
        while isinstance(command, click.Group):  # `detcurate data synth ...`
            assert rest[0] in command.commands, f"{name}: no command {rest[0]!r} in {command.name}"
            command, rest = command.commands[rest[0]], rest[1:]
        command.make_context(command.name, rest)  # raises on unknown, missing or mistyped options


def test_training_overrides_are_valid_config_fields(stages):
    found, _ = stages
    for name in TRAININGS:
        options = _options(found[name].cmd)
        config = load_config(ROOT / options["--config"][0], options["--set"])
        assert config.train.output_dir == f"runs/demo_{name.removeprefix('train_')}"
        # the data the config reads lies inside what the synth stage writes
        for path in (config.data.train_annotations, config.data.train_images, config.data.val_annotations,
                     config.data.val_images):
            assert Path(path).is_relative_to("data/synth"), path


def test_deps_params_and_outs_are_exact(stages):
    found, _ = stages
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, spec in raw["stages"].items():
        body = spec.get("do", spec)
        used = {ref.split(".")[0] for ref in re.findall(r"\$\{([\w.]+)\}", body["cmd"])} - {"item", "key"}
        assert used == set(body.get("params", [])), f"{name}: params used in cmd vs declared"
        assert used <= set(params), name
    for name in TRAININGS:
        stage = found[name]
        options = _options(stage.cmd)
        deps = {str(d.def_path) for d in stage.deps}
        assert {options["--config"][0], "data/synth"} <= deps
        assert [str(o.def_path) for o in stage.outs] == [load_config(ROOT / options["--config"][0],
                                                                      options["--set"]).train.output_dir]
    for model in MODELS:
        stage = found[f"evaluate@{model}"]
        options = _options(stage.cmd)
        deps = [Path(str(d.def_path)) for d in stage.deps]
        for read in ("--checkpoint", "--annotations", "--images"):
            assert any(Path(options[read][0]).is_relative_to(dep) for dep in deps), f"{model}: {read} not a dep"
        (out,) = stage.outs
        assert str(out.def_path) == options["--out"][0] and out.metric and not out.use_cache
        assert options["--register-as"] == [f"detcurate-demo-{model}"]
        assert options["--alias"] == ["teacher" if model == "teacher" else "champion"]
    curated = load_config(ROOT / _options(found["train_student_detgain"].cmd)["--config"][0],
                          _options(found["train_student_detgain"].cmd)["--set"])
    assert curated.curation.method == "detgain" and curated.curation.teacher == "models:/detcurate-demo-teacher@teacher"


def test_report_stage_draws_both_training_histories(stages):
    found, _ = stages
    stage = found["report"]
    options = _options(stage.cmd)
    runs = dict(item.split("=", 1) for item in options["--run"])
    assert runs == {m: f"runs/demo_{m}/metrics.json" for m in MODELS}
    assert set(runs.values()) <= {str(d.def_path) for d in stage.deps}
    (out,) = stage.outs
    assert str(out.def_path) == options["--out"][0] and out.plot and not out.use_cache


def test_plots_read_the_training_histories():
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    (plot,) = raw["plots"]
    (spec,) = plot.values()
    assert spec["x"] == "iteration"
    assert set(spec["y"]) == {f"runs/demo_{m}/metrics.json" for m in MODELS}


def test_repository_is_a_sane_dvc_project():
    assert (ROOT / ".dvc" / ".gitignore").is_file()
    config = (ROOT / ".dvc" / "config").read_text()
    assert "remote" not in config  # no remote that a clone could not reach
    assert re.search(r"analytics\s*=\s*false", config)


# ------------------------------------------------------------------------------------------------
# A tiny copy of the pipeline, run for real


TINY_PARAMS = {
    "seed": 0,
    "data": {"train": 6, "val": 3, "size": 64, "imbalance": 2.0, "max_objects": 3},
    "teacher": {"backbone": "tiny", "iterations": 2, "warmup_iters": 1, "batch_size": 2, "eval_every": 1},
    "student": {"backbone": "tiny", "iterations": 2, "warmup_iters": 1, "batch_size": 2, "eval_every": 1},
    "curated": {"method": "detgain", "estimator": "empirical", "super_batch": 4, "score_every": 1, "warmup_iters": 0},
    "robustness": {"iterations": 2, "warmup_iters": 1, "batch_size": 2},
    "active_learning": {"level": "box", "measure": "uncertainty", "rounds": 1, "budget": 3, "initial_images": 3,
                        "initial_iters": 2, "round_iters": 1, "warmup_iters": 1, "batch_size": 2},
}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{shlex.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _repro(cwd: Path, env: dict[str, str], *, dry: bool = False) -> set[str]:
    """Names of the stages that ``dvc repro`` runs (``--dry``: would run, judging by what changed so far)."""
    out = _run([str(BIN / "dvc"), "repro", *(["--dry"] if dry else [])], cwd, env)
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_repro_reruns_only_downstream_stages(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for relpath in ("dvc.yaml", "configs", "curation_core", "components"):
        source = ROOT / relpath
        if source.is_dir():
            shutil.copytree(source, repo / relpath, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, repo / relpath)
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1"}  # tiny models: a second torch thread only adds contention
    _run(["git", "init", "-q"], repo, env)
    _run([str(BIN / "dvc"), "init", "-q"], repo, env)
    assert _repro(repo, env) == STAGES
    assert _repro(repo, env, dry=True) == set()
    assert (repo / "runs" / "demo_student" / "checkpoint.pt").is_file()
    assert len((repo / "runs" / "demo_student_detgain" / "selections.csv").read_text().splitlines()) == 1 + 2 * 4
    assert yaml.safe_load((repo / "reports" / "student_detgain.json").read_text())["stats"]
    assert yaml.safe_load((repo / "reports" / "teacher.json").read_text())["stats"]
    assert (repo / "reports" / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    assert len(json.loads((repo / "runs" / "robustness_demo" / "robustness.json").read_text())["cells"]) == 10

    def with_param(section: str, key: str, value: object) -> None:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params[section][key] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(params))

    # A dry run lists the stages whose own deps changed; the stages after them run only if an output
    # they read changed, which a real run decides.
    with_param("student", "iterations", 3)  # both students share the student's schedule
    assert _repro(repo, env, dry=True) == {"train_student", "train_student_detgain"}
    assert _repro(repo, env) == {"train_student", "evaluate@student", "train_student_detgain",
                                 "evaluate@student_detgain", "report"}
    with_param("curated", "super_batch", 6)
    assert _repro(repo, env) == {"train_student_detgain", "evaluate@student_detgain", "report"}
    assert _repro(repo, env, dry=True) == set()
    with_param("data", "val", 4)
    assert _repro(repo, env, dry=True) == {"synth"}
    with_param("data", "val", 3)
    assert _repro(repo, env, dry=True) == set()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    for model in MODELS:
        version = client.get_model_version_by_alias(f"detcurate-demo-{model}", "teacher" if model == "teacher" else "champion")
        assert version.run_id
