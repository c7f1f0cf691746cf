"""``detcurate pipeline``: the whole pipeline with one entry point, whichever runner runs it.

``run --runner dvc|kfp-local|airflow --profile smoke|demo|full [--seed S] [--data-rev REV]`` runs the
graph of ``pipelines.steps`` here; the same profile and seed give the same ``report/metrics.json``
whichever runner ran it. ``compile`` writes the Kubeflow package, ``submit`` sends it to a Kubeflow
host, ``step`` runs one step (what the DVC stages and the Kubernetes pods call).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from curation_core.errors import ConfigError
from pipelines.cli import ui

RUNNERS = ("dvc", "kfp-local", "airflow")
_PROFILE = click.option("--profile", default="smoke", show_default=True, type=click.Choice(["smoke", "demo", "full"]),
                        help="Parameters of every step: smoke (a minute), demo (the README's demo), full.")
_SEED = click.option("--seed", default=0, show_default=True, type=int, help="Seed of the data and of every model.")
_SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                    help="Change one parameter of the profile, e.g. teacher.schedule.max_iter=10 (repeatable).")


def _params(profile: str, seed: int, overrides: tuple[str, ...]) -> dict[str, Any]:
    from pipelines.profiles import check, pipeline_params

    params = pipeline_params(profile, seed=seed, overrides=overrides)
    check(params)  # every step's parameters, before any step runs
    return params


@click.group("pipeline")
def pipeline() -> None:
    """Run the pipeline (data, teacher, balancing, label quality, plain and curated student, robustness,
    active learning, evaluation, registration, report, promotion to champion).

    \b
    detcurate pipeline run --runner dvc|kfp-local|airflow --profile smoke|demo|full [--data-rev REV]
    detcurate pipeline compile --out pipeline.yaml     (the Kubeflow Pipelines package)
    detcurate pipeline submit --host URL               (run it on a Kubeflow cluster)
    """


@pipeline.command("run")
@click.option("--runner", required=True, type=click.Choice(RUNNERS),
              help="dvc (dvc repro of generated stages), kfp-local (kfp.local subprocesses), airflow (dag.test()).")
@_PROFILE
@_SEED
@click.option("--data-rev", metavar="REV", help="Git revision of the project whose DVC-tracked data/synth to use.")
@_SET
@click.option("--out", "workdir", type=click.Path(path_type=Path),
              help="Run folder (default outputs/pipeline/RUNNER-PROFILE); report/metrics.json is the result.")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow, register or promote the models.")
def run_cmd(runner: str, profile: str, seed: int, data_rev: str | None, overrides: tuple[str, ...],
            workdir: Path | None, no_track: bool) -> None:
    """Run the whole pipeline here with one runner; print the COCO AP of every model, the report, the
    champion model and the MLflow UI command.

    Every parameter is checked, and the MLflow server asked, before any step runs. Steps publish
    their outputs whole; a run that was stopped continues where it stopped when started again.
    """
    run_pipeline(runner, profile, seed=seed, data_rev=data_rev, overrides=overrides, workdir=workdir, track=not no_track)


def run_pipeline(runner: str, profile: str, *, seed: int = 0, data_rev: str | None = None,
                 overrides: tuple[str, ...] = (), workdir: Path | None = None, track: bool = True) -> Path:
    """Check the parameters (and the MLflow server), run the graph with ``runner``, print the summary;
    return the run folder (``report/``, ``promotion/``)."""
    params = _params(profile, seed, overrides)
    uri = None
    if track:
        from pipelines.tracking import check_tracking_server, tracking_uri

        uri = tracking_uri()
        check_tracking_server(uri)
    root = (workdir or Path("outputs/pipeline") / f"{runner}-{profile}").resolve()
    pipeline_run = f"{runner}-{profile}-{time.strftime('%Y%m%dT%H%M%S')}"
    start = time.monotonic()
    if runner == "dvc":
        from pipelines.dvc_runner import run_dvc

        run_dvc(params, root, data_rev=data_rev, track=track, pipeline_run=pipeline_run)
    elif runner == "kfp-local":
        from pipelines.kfp.runner import run_local

        run_local(params, root, data_rev=data_rev, track=track, pipeline_run=pipeline_run)
    else:
        from pipelines.airflow.local_run import run_dag_test

        conf = {"profile": profile, "seed": seed, "overrides": list(overrides), "data_rev": data_rev or "",
                "mode": "local", "workdir": str(root / "run"), "track": track}
        run_dag_test(conf, root / "airflow_home")
        for step in ("report", "promotion"):
            _publish(root / "run" / step, root / step)
    print_summary(root, f"{runner}, {profile} profile, seed {seed}, {time.monotonic() - start:.0f} s", tracking=uri)
    return root


def _publish(report: Path, target: Path) -> None:
    import shutil

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(report, target)


def print_summary(root: Path, title: str, *, tracking: str | None) -> None:
    """The models' AP, the robustness cells, where the report is, the champion and the MLflow UI command."""
    metrics = root / "report" / "metrics.json"
    content = json.loads(metrics.read_text(encoding="utf-8"))
    rows = [(name, entry["named"]["AP"], entry["named"]["AP50"]) for name, entry in content["models"].items()]
    ui.print_table(f"Pipeline run ({title})", ["model", "AP", "AP50"], rows)
    cells = (content.get("robustness") or {}).get("cells", [])
    if cells:
        ui.print_table("Missing-label robustness (clean validation set)", ["mode", "loss", "seed", "AP", "AP50"],
                       [(c["mode"], c["loss"], c["seed"], c["AP"], c["AP50"]) for c in cells])
    say = lambda text: ui.stdout.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"metrics: {metrics}")
    report = root / "report" / "html" / "report.html"
    if report.is_file():
        say(f"report: {report}")
    promotion = root / "promotion" / "promotion.json"
    if promotion.is_file():
        result = json.loads(promotion.read_text(encoding="utf-8"))
        for d in result["decisions"]:
            say(f"promotion of {d['model']} ({d['name']} version {d['candidate_version']}): "
                f"{'promoted' if d['promoted'] else 'kept the champion'}, {d['reason']}")
        champion = result.get("champion")
        if champion:
            say(f"champion: {champion['uri']} (version {champion['version']}, the {champion['model']} model, "
                f"{result['decisions'][-1]['metric']} {champion['value']:.4f})")
    if tracking:
        say(f"MLflow UI: {mlflow_ui_command(tracking)}")


def mlflow_ui_command(uri: str) -> str:
    """The command that shows the runs of tracking URI ``uri`` (a server's address is its own UI)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    import sys

    mlflow = Path(sys.executable).with_name("mlflow")
    try:
        shown = str(mlflow.relative_to(Path.cwd()))
    except ValueError:
        shown = str(mlflow)
    return f"{shown} ui --backend-store-uri {uri}"


@pipeline.command("step")
@click.argument("name")
@click.option("--params", "params_file", type=click.Path(path_type=Path), help="YAML/JSON file of the run's parameters.")
@click.option("--params-json", help="The run's parameters as one JSON object (instead of --params).")
@click.option("--workdir", required=True, type=click.Path(path_type=Path), help="Run folder holding every step's output.")
@click.option("--data-rev", metavar="REV", help="Git revision of the data (default: data_rev of the parameters).")
@click.option("--pipeline-run", default=None, help="Id of the pipeline run (tag of the MLflow runs).")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow or register the models.")
def step_cmd(name: str, params_file: Path | None, params_json: str | None, workdir: Path, data_rev: str | None,
             pipeline_run: str | None, no_track: bool) -> None:
    """Run one step of the pipeline graph (data, train_teacher, ..., report) in a run folder.

    What the generated DVC stages and the Kubernetes pods of the Airflow DAG call; its inputs are the
    outputs of the steps before it in the same run folder.
    """
    import yaml

    from pipelines.dvc_runner import ENV_PIPELINE_RUN, ENV_TRACK
    from pipelines.steps import run_step

    if (params_file is None) == (params_json is None):
        raise ConfigError("detcurate pipeline step: expects exactly one of --params FILE and --params-json JSON")
    try:
        params = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file else json.loads(params_json)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{params_file or '--params-json'}: <file>: not readable parameters ({exc})") from None
    rev = data_rev or params.pop("data_rev", "") or None
    track = not no_track and os.environ.get(ENV_TRACK, "1") != "0"
    from curation_core.engine.trainer import TrainingInterrupted

    try:
        run_step(name, params, workdir, data_rev=rev, track=track,
                 pipeline_run=pipeline_run or os.environ.get(ENV_PIPELINE_RUN, ""))
    except TrainingInterrupted as stop:
        import sys

        cause = f"signal {stop.signum}" if stop.signum else "a stop request"
        click.echo(f"detcurate pipeline step {name}: stopped by {cause} at iteration {stop.iteration}/{stop.max_iter} "
                   f"(checkpoint written in {stop.checkpoint.parent}); run the pipeline again to continue", err=True)
        sys.exit(stop.exit_code)
    ui.stderr.print(f"step {name} done", markup=False, highlight=False)


@pipeline.command("compile")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Write the IR YAML package here.")
@_PROFILE
@_SEED
@_SET
@click.option("--image", default="detcurate:latest", show_default=True, help="Image every component runs in.")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(0), help="GPUs per training step.")
@click.option("--node-selector", multiple=True, metavar="LABEL=VALUE", help="Node label for the training steps (repeatable).")
@click.option("--pvc", default="", help="Existing PersistentVolumeClaim mounted on every step at /detcurate.")
@click.option("--pipeline-root", default="", help="Artifact root (empty: the cluster's default).")
def compile_cmd(out: Path, profile: str, seed: int, overrides: tuple[str, ...], image: str, gpus: int,
                node_selector: tuple[str, ...], pvc: str, pipeline_root: str) -> None:
    """Compile the Kubeflow Pipelines package (IR YAML) of a profile: its defaults are the profile's values."""
    from pipelines.kfp.graph import KfpOptions
    from pipelines.kfp.runner import compile_pipeline

    selectors = {}
    for item in node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--node-selector: expects LABEL=VALUE; got {item!r}")
        selectors[key] = value
    options = KfpOptions(image=image, gpus=gpus, node_selector=selectors, pvc_name=pvc, pipeline_root=pipeline_root)
    path = compile_pipeline(out, _params(profile, seed, overrides), options)
    ui.stdout.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


@pipeline.command("submit")
@click.option("--host", required=True, help="URL of the Kubeflow Pipelines API, e.g. http://ml-pipeline.kubeflow:8888.")
@click.option("--package", type=click.Path(path_type=Path), help="A compiled package (default: compile the profile).")
@_PROFILE
@_SEED
@_SET
@click.option("--image", default="detcurate:latest", show_default=True, help="Image of the components (when compiling).")
@click.option("--data-rev", default="", help="Git revision of the data (pipeline parameter data_rev).")
@click.option("--run-name", default=None, help="Name of the Kubeflow run (default: detcurate-PROFILE-TIME).")
@click.option("--experiment", default="detcurate", show_default=True, help="Kubeflow experiment of the run.")
def submit_cmd(host: str, package: Path | None, profile: str, seed: int, overrides: tuple[str, ...], image: str,
               data_rev: str, run_name: str | None, experiment: str) -> None:
    """Submit the pipeline to a Kubeflow Pipelines host as a run (an unreachable host is a one-line error)."""
    import tempfile

    from pipelines.kfp.graph import KfpOptions
    from pipelines.kfp.runner import check_host, compile_pipeline, submit

    check_host(host)
    name = run_name or f"detcurate-{profile}-{time.strftime('%Y%m%dT%H%M%S')}"
    with tempfile.TemporaryDirectory() as tmp:
        if package is None:
            package = compile_pipeline(Path(tmp) / "pipeline.yaml", _params(profile, seed, overrides), KfpOptions(image=image))
        elif not package.is_file():
            raise ConfigError(f"{package}: <file>: package does not exist (detcurate pipeline compile --out {package})")
        result = submit(host, package, arguments={"data_rev": data_rev, "pipeline_run": name}, run_name=name,
                        experiment=experiment)
    ui.stdout.print(f"submitted run {result['run_id']}: {result['url']}", markup=False, highlight=False, soft_wrap=True)
