"""The pipeline's steps with their tracking, as every runner calls them (DVC stage, Kubeflow component,
Airflow task, ``detcurate pipeline step``).

Each function calls one ``components`` step and adds what only the orchestration layer may do: MLflow
(the training hook, evaluation runs, registration), the data version of ``--data-rev`` and the run's
tags. The graph, in the same order everywhere::

    data -> train_teacher -> train_student_curated --+
        \\-> train_student ----------------------------+-> evaluate_<model> (and register) -> report
                                                      (+ robustness when the profile has it)

``run_step(name, params, workdir)`` runs one step of the graph with the folder layout of ``layout``
(DVC and Airflow); the Kubeflow components call the step functions with their artifact paths.
Heavy imports (torch, MLflow, DVC) happen inside the functions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curation_core.errors import ConfigError
from pipelines.profiles import ALIASES, MODELS

#: Steps in a valid execution order, each with the steps it reads.
GRAPH: dict[str, tuple[str, ...]] = {
    "data": (),
    "train_teacher": ("data",),
    "train_student": ("data",),
    "train_student_curated": ("data", "train_teacher"),
    **{f"evaluate_{m}": ("data", f"train_{m}") for m in MODELS},
    "report": tuple(f"evaluate_{m}" for m in MODELS) + tuple(f"train_{m}" for m in MODELS),
}
#: The steps that train (GPU requests, retries, no caching).
TRAINING_STEPS = tuple(f"train_{m}" for m in MODELS)


def layout(workdir: str | os.PathLike[str]) -> dict[str, Path]:
    """Output folder of every step of a run in ``workdir`` (``report/metrics.json`` is the run's metrics)."""
    root = Path(workdir)
    return {"data": root / "data", **{f"train_{m}": root / "models" / m for m in MODELS},
            **{f"evaluate_{m}": root / "eval" / m for m in MODELS}, "report": root / "report"}


def run_tags(params: Mapping[str, Any], *, pipeline_run: str = "", data_rev: str | None = None) -> dict[str, str]:
    """Tags of every MLflow run of a pipeline run: profile, seed, pipeline run id, data revision."""
    tags = {"detcurate.profile": str(params["profile"]), "detcurate.seed": str(params["seed"])}
    if pipeline_run:
        tags["detcurate.pipeline_run"] = pipeline_run
    if data_rev:
        tags["detcurate.data_rev"] = data_rev
    return tags


def data_step(params: Mapping[str, Any], out_dir: str | os.PathLike[str], *, data_rev: str | None = None,
              repo: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The run's data set (``components.data``): synthesised, a user's COCO folder, or ``params.data.path``
    of the DVC project ``repo`` (default: this project) at git revision ``data_rev``."""
    from components.data import prepare_data

    data = dict(params["data"])
    source = data.get("source", "synth")
    fetched = None
    if data_rev:
        from pipelines.data_versions import fetch_data
        from pipelines.tracking import project_root

        fetched = fetch_data(data_rev, data.get("path", "data/synth"), Path(out_dir).with_name(f".{Path(out_dir).name}.rev"),
                             repo=repo or project_root(Path(__file__).parent))
        source = str(fetched)
    try:
        return prepare_data(out_dir, source=source, **{k: data[k] for k in ("train", "val", "size", "seed", "imbalance",
                                                                              "max_objects") if k in data})
    finally:
        if fetched is not None:
            shutil.rmtree(fetched, ignore_errors=True)


def train_step(model: str, params: Mapping[str, Any], out_dir: str | os.PathLike[str], *,
               data_dir: str | os.PathLike[str], teacher_dir: str | os.PathLike[str] | None = None, track: bool = True,
               tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train ``model`` (``teacher``, ``student``, ``student_curated``) with ``components.train.train_model``.

    The curated student reads the teacher step's checkpoint from ``teacher_dir``. With ``track`` the
    run is logged to MLflow (``pipelines.tracking_hook``) under ``<register_prefix>-<model>``.
    """
    from components.train import train_model

    _check_model(model)
    teacher = None
    if model == "student_curated" and params[model].get("curation", {}).get("method", "none") != "none":
        if teacher_dir is None:
            raise ConfigError("train_student_curated: needs the teacher step's output (teacher_dir)")
        teacher = Path(teacher_dir) / "checkpoint.pt"
    hooks: Any = ()
    if track:
        from pipelines.tracking_hook import training_hooks

        run_tags = {**(tags or {}), "detcurate.output_dir": str(Path(out_dir).resolve())}
        hooks = lambda config: training_hooks(config, run_name=f"{params['register_prefix']}-{model}",  # noqa: E731
                                              tags=run_tags)
    return train_model(params[model], out_dir, data_dir=data_dir, teacher=teacher, hooks=hooks)


def evaluate_step(model: str, params: Mapping[str, Any], model_dir: str | os.PathLike[str],
                  data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, track: bool = True,
                  register: bool = True, tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Evaluate a trained model on the validation set; with ``track`` log the evaluation to MLflow and
    (``register``) register the checkpoint as ``<register_prefix>-<model>`` with the alias of ``ALIASES``.

    A finished evaluation output is reused and not logged a second time (idempotent re-runs).
    """
    from components.evaluate_model import EVAL_REPORT, evaluate_trained
    from components.staging import DONE_NAME

    _check_model(model)
    reused = (Path(out_dir) / DONE_NAME).is_file()
    report = evaluate_trained(model_dir, data_dir, out_dir)
    if track and not reused:
        from components.data import data_paths
        from curation_core.evaluation import CocoStats
        from pipelines.registry import registrar
        from pipelines.tracking import log_evaluation

        checkpoint = Path(model_dir) / "checkpoint.pt"
        name = f"{params['register_prefix']}-{model}"
        per_category = {int(k): (float("nan") if v is None else float(v))
                        for k, v in report.get("per_category_ap", {}).items()}
        names = dict(zip(per_category, report.get("per_category_ap_by_name", {}), strict=False))
        stats = CocoStats(stats=tuple(float(v) for v in report["stats"]), per_category_ap=per_category,
                          num_images=int(report["num_images"]), num_detections=int(report["num_detections"]),
                          category_names=names)
        paths = data_paths(data_dir)
        log_evaluation(stats, checkpoint=checkpoint, report_path=Path(out_dir) / EVAL_REPORT, run_name=f"evaluate {name}",
                       data_paths=[paths["val_annotations"], paths["val_images"]], tags=tags,
                       register=registrar(name, checkpoint, alias=ALIASES[model]) if register else None)
    return report


def report_step(params: Mapping[str, Any], evaluations: Mapping[str, str | os.PathLike[str]],
                histories: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                data_dir: str | os.PathLike[str] | None = None, data_rev: str | None = None) -> dict[str, Any]:
    """The run's report (``components.pipeline_report``): ``metrics.json``, ``report.md``, the figure.

    ``metrics.json`` holds the profile, the seed, the data revision and the DVC hash of the data folder,
    and every model's COCO statistics: nothing that depends on the runner.
    """
    from components.pipeline_report import pipeline_report

    extra: dict[str, Any] = {"profile": params["profile"], "seed": params["seed"], "data_rev": data_rev or None}
    if data_dir is not None:
        from pipelines.tracking import dataset_version

        extra["dataset_version"] = dataset_version(Path(data_dir) / "train") + " " + dataset_version(Path(data_dir) / "val")
    return pipeline_report(evaluations, out_dir, histories=histories, extra=extra,
                           title=f"DetCurate pipeline, {params['profile']} profile, seed {params['seed']}")


def record_status(pipeline_run: str, status: str, *, tags: Mapping[str, str] | None = None, message: str = "",
                  track: bool = True) -> str | None:
    """Record a pipeline run's final status in MLflow (``pipelines.tracking.record_pipeline_status``)."""
    if not track:
        return None
    from pipelines.tracking import record_pipeline_status

    return record_pipeline_status(pipeline_run, status, tags=tags, message=message)


def run_step(name: str, params: Mapping[str, Any], workdir: str | os.PathLike[str], *, data_rev: str | None = None,
             track: bool = True, pipeline_run: str = "", repo: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run step ``name`` of ``GRAPH`` on the folders of ``layout(workdir)`` (its inputs must be finished)."""
    if name not in GRAPH:
        raise ConfigError(f"pipeline step: invalid value {name!r}; valid choices: {', '.join(GRAPH)}")
    where = layout(workdir)
    tags = run_tags(params, pipeline_run=pipeline_run, data_rev=data_rev)
    if name == "data":
        return data_step(params, where["data"], data_rev=data_rev, repo=repo)
    if name.startswith("train_"):
        model = name.removeprefix("train_")
        return train_step(model, params, where[name], data_dir=where["data"], teacher_dir=where["train_teacher"],
                          track=track, tags=tags)
    if name.startswith("evaluate_"):
        model = name.removeprefix("evaluate_")
        return evaluate_step(model, params, where[f"train_{model}"], where["data"], where[name], track=track, tags=tags)
    return report_step(params, {m: where[f"evaluate_{m}"] / "eval.json" for m in MODELS},
                       {m: where[f"train_{m}"] / "metrics.json" for m in MODELS}, where["report"],
                       data_dir=where["data"], data_rev=data_rev)


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ConfigError(f"pipeline model: invalid value {model!r}; valid choices: {', '.join(MODELS)}")
