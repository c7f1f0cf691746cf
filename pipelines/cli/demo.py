"""``detcurate demo``: the pipeline's demo profile end to end, and where its results are.

``detcurate demo`` is ``detcurate pipeline run --runner dvc --profile demo`` (folder
``outputs/pipeline/dvc-demo``): data, teacher, balancing, label quality, plain and DetGain-curated
student, robustness grid, active learning, evaluation and registration, HTML report, promotion of the
better student to ``champion``; then it prints where the report, the champion model and the MLflow UI
are. ``--project-stages`` runs the project's own ``dvc.yaml`` instead and prints its models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from curation_core.errors import ConfigError
from pipelines.cli import ui

#: Reports written by the ``evaluate`` stage of dvc.yaml, one per demo model, and their registry aliases.
DEMO_REPORTS = {"teacher": Path("reports/teacher.json"), "student": Path("reports/student.json"),
                "student_detgain": Path("reports/student_detgain.json")}
DEMO_ALIASES = {"teacher": "teacher", "student": "champion", "student_detgain": "champion"}
#: Figure written by the ``report`` stage: validation AP over training iterations of both models.
DEMO_FIGURE = Path("reports/training_curves.png")


def _project_root() -> Path:
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise ConfigError(f"detcurate demo expects to run inside the project (a folder with dvc.yaml); got {here}")


def _dvc_executable() -> str:
    beside = Path(sys.executable).parent / "dvc"  # the dvc of this environment first
    found = str(beside) if beside.exists() else shutil.which("dvc")
    if not found:
        raise ConfigError("detcurate demo needs DVC: pip install 'detcurate[tracking]'")
    return found


@click.command("demo")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the data and of every model.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change one parameter of the demo profile, e.g. teacher.schedule.max_iter=200 (repeatable).")
@click.option("--out", "workdir", type=click.Path(path_type=Path),
              help="Run folder (default outputs/pipeline/dvc-demo).")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow, register or promote the models.")
@click.option("--project-stages", is_flag=True, help="Run the project's dvc.yaml (dvc repro) instead of the pipeline.")
@click.option("--force", is_flag=True, help="With --project-stages: re-run every stage (dvc repro --force).")
def demo_cmd(seed: int, overrides: tuple[str, ...], workdir: Path | None, no_track: bool, project_stages: bool,
             force: bool) -> None:
    """Run the demo pipeline: synthetic data, a teacher, balancing, label quality, a plain and a curated
    student, the missing-label robustness grid, active learning, evaluation, registry, the HTML report,
    promotion to champion.

    About 15 minutes on 2 CPU cores. The DVC stages of the run folder re-run only what changed, so a
    second run is quick; a stopped run continues where it stopped. Runs are tracked in MLflow
    (mlflow.db, or $MLFLOW_TRACKING_URI).
    """
    if not project_stages:
        from pipelines.cli.pipeline import run_pipeline

        run_pipeline("dvc", "demo", seed=seed, overrides=overrides, workdir=workdir, track=not no_track)
        return
    root = _project_root()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stages call `detcurate`
    command = [_dvc_executable(), "repro", *(["--force"] if force else [])]
    ui.stderr.print(f"[bold]running[/bold] {' '.join(command[1:])} in {root}")
    completed = subprocess.run(["dvc", *command[1:]], cwd=root, env=env, check=False, executable=command[0])
    if completed.returncode != 0:
        raise click.ClickException(f"the demo pipeline failed (dvc repro exited {completed.returncode}); see above")
    _print_summary(root)


def _print_summary(root: Path) -> None:
    from curation_core.evaluation import COCO_STAT_NAMES

    reports = {name: json.loads((root / path).read_text()) for name, path in DEMO_REPORTS.items() if (root / path).is_file()}
    if not reports:
        ui.stderr.print("no evaluation reports were written")
        return
    names = list(reports)
    rows = [[stat, *(float(reports[n]["stats"][i]) for n in names)] for i, stat in enumerate(COCO_STAT_NAMES)]
    ui.print_table("Demo models on the synthetic validation set (pycocotools)", ["statistic", *names], rows)
    if {"student", "student_detgain"} <= set(reports):
        plain, curated = (float(reports[n]["stats"][0]) for n in ("student", "student_detgain"))
        change = f"{100 * (curated / plain - 1):+.1f} %" if plain > 0 else "n/a"
        ui.stdout.print(f"DetGain-curated student vs plain student: AP {curated:.4f} vs {plain:.4f} ({change}, one seed)")
    if (root / DEMO_FIGURE).is_file():
        ui.stdout.print(f"Validation AP over training iterations: {DEMO_FIGURE}")
    ui.stdout.print(
        "Models registered in MLflow: "
        + ", ".join(f"models:/detcurate-demo-{n}@{DEMO_ALIASES.get(n, 'champion')}" for n in names)
        + ". Browse runs with: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
    )
