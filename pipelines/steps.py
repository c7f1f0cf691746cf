r"""The pipeline's steps with their tracking, as every runner calls them (DVC stage, Kubeflow component,
Airflow task, ``detcurate pipeline step``).

Each function calls one ``components`` step and adds what only the orchestration layer may do: MLflow
(the training hook, evaluation runs, registration, promotion), the data version of ``--data-rev`` and
the run's tags. The graph, in the same order everywhere::

    data -> train_teacher -> balance -> train_student ---------+-> evaluate_<model> (and register)
      |          |\-------------------> train_student_curated -+            |
      |          \--> label_quality ------------------------------------+   |
      |-> robustness ---------------------------------------------------+   |
      \-> active_learning ----------------------------------------------+---+-> report -> promote

``balance`` writes the curation manifest both students train on (``data.manifest``); ``label_quality``
ranks likely label errors of the training set from the teacher's (in-sample) predictions of it;
``robustness`` is the missing-label grid of ``params["robustness"]`` on the student's recipe;
``active_learning`` the simulated box-level rounds of ``params["active_learning"]`` on the same recipe,
the training set as the pool; ``report`` writes the run's ``metrics.json`` and its HTML report;
``promote`` compares the two new students with the model holding ``champion`` on the same validation
data version (``pipelines.promotion``), one after the other.

``run_step(name, params, workdir)`` runs one step of the graph with the folder layout of ``layout``
(DVC and Airflow); the Kubeflow components call the step functions with their artifact paths, except
that with a PVC the training steps (``TRAINING_STEPS``) get a folder on it, which a retried pod finds
again (``components.staging.scratch_output``); without a PVC a retried training task starts again.
Heavy imports (torch, MLflow, DVC) happen inside the functions.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curation_core.errors import ConfigError, DataError
from pipelines.profiles import ALIASES, CANDIDATES, MODELS, REGISTERED

STUDENTS = ("student", "student_curated")
#: Steps in a valid execution order, each with the steps it reads.
GRAPH: dict[str, tuple[str, ...]] = {
    "data": (),
    "train_teacher": ("data",),
    "balance": ("data", "train_teacher"),
    "label_quality": ("data", "train_teacher"),
    "train_student": ("data", "balance"),
    "train_student_curated": ("data", "train_teacher", "balance"),
    "robustness": ("data",),
    "active_learning": ("data",),
    **{f"evaluate_{m}": ("data", f"train_{m}") for m in MODELS},
    "report": ("data", "balance", "robustness", "active_learning", "label_quality", *(f"evaluate_{m}" for m in MODELS),
               *(f"train_{m}" for m in MODELS)),
    "promote": ("data", *(f"evaluate_{m}" for m in CANDIDATES), "report"),
}
#: The steps that train (GPU requests, retries, no caching; on Kubeflow with a PVC, a scratch folder each
#: that a retry resumes).
TRAINING_STEPS = (*(f"train_{m}" for m in MODELS), "robustness", "active_learning")
#: How the label-quality step's predictions were made: by the teacher, trained on the labels it checks.
LABEL_QUALITY_PROTOCOL = "in-sample"
#: File names inside the step outputs.
MANIFEST_NAME = "manifest.json"
REGISTRATION_NAME = "registration.json"
PROMOTION_NAME = "promotion.json"


def layout(workdir: str | os.PathLike[str]) -> dict[str, Path]:
    """Output folder of every step of a run in ``workdir`` (``report/metrics.json`` is the run's metrics,
    ``report/html/report.html`` its report, ``promotion/promotion.json`` the registry's decisions)."""
    root = Path(workdir)
    return {"data": root / "data", "balance": root / "balance", "robustness": root / "robustness",
            "active_learning": root / "active_learning", "label_quality": root / "label_quality",
            **{f"train_{m}": root / "models" / m for m in MODELS},
            **{f"evaluate_{m}": root / "eval" / m for m in MODELS}, "report": root / "report",
            "promote": root / "promotion"}


def registered_name(params: Mapping[str, Any], model: str) -> str:
    """The registered model of ``model``: ``<register_prefix>-teacher`` or ``<register_prefix>-student``."""
    return f"{params['register_prefix']}-{REGISTERED[model]}"


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
               data_dir: str | os.PathLike[str], teacher_dir: str | os.PathLike[str] | None = None,
               balance_dir: str | os.PathLike[str] | None = None, track: bool = True,
               tags: Mapping[str, str] | None = None,
               published_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train ``model`` (``teacher``, ``student``, ``student_curated``) with ``components.train.train_model``.

    The curated student reads the teacher step's checkpoint from ``teacher_dir``; the students train on
    the balance step's manifest in ``balance_dir`` (``data.manifest``; None: every image once per
    epoch). With ``track`` the run is logged to MLflow (``pipelines.tracking_hook``) under
    ``<register_prefix>-<model>``, tagged ``detcurate.output_dir`` with ``published_dir``: where the output
    ends up when ``out_dir`` is a scratch folder that is copied there and deleted (default ``out_dir``).
    """
    from components.train import train_model

    _check_model(model)
    teacher = None
    if model == "student_curated" and params[model].get("curation", {}).get("method", "none") != "none":
        if teacher_dir is None:
            raise ConfigError("train_student_curated: needs the teacher step's output (teacher_dir)")
        teacher = Path(teacher_dir) / "checkpoint.pt"
    manifest = Path(balance_dir) / MANIFEST_NAME if balance_dir is not None and model in STUDENTS else None
    hooks: Any = ()
    if track:
        from pipelines.tracking_hook import training_hooks

        run_tags = {**(tags or {}), "detcurate.output_dir": str(Path(published_dir or out_dir).resolve())}
        hooks = lambda config: training_hooks(config, run_name=f"{params['register_prefix']}-{model}",  # noqa: E731
                                              tags=run_tags)
    return train_model(params[model], out_dir, data_dir=data_dir, teacher=teacher, manifest=manifest, hooks=hooks)


def balance_step(params: Mapping[str, Any], out_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str],
                 teacher_dir: str | os.PathLike[str], track: bool = True) -> dict[str, Any]:
    """The training set's curation manifest (``components.balance``): LVIS repeat factors at
    ``balance.threshold``, exact duplicates, and near duplicates at ``balance.near_threshold`` (cosine
    distance of the teacher's pooled FPN features; 0: none, and the teacher is not read).

    ``out_dir`` (published whole) gets ``manifest.json`` with its report (``manifest.md``, two figures);
    with ``track`` they are logged to MLflow. Returns the manifest's summary.
    """
    from components.balance import balance_training_set
    from components.data import data_paths
    from components.staging import finished, staged_output

    settings = dict(params["balance"])
    near = float(settings["near_threshold"])
    checkpoint = Path(teacher_dir) / "checkpoint.pt" if near > 0 else None
    fingerprint = {"balance": settings, "data": str(Path(data_dir).resolve()), "data_step": _fingerprint(data_dir),
                   "teacher_step": _fingerprint(teacher_dir) if checkpoint else None}
    done = finished(out_dir, fingerprint)
    if done is not None:
        return done["result"]
    paths = data_paths(data_dir)
    result: dict[str, Any] = {}
    with staged_output(out_dir, step="balance", fingerprint=fingerprint, result=result) as stage:
        summary = balance_training_set(paths["train_annotations"], stage / MANIFEST_NAME, images=paths["train_images"],
                                       checkpoint=checkpoint, threshold=float(settings["threshold"]), near_threshold=near)
        result.update({k: summary.manifest.summary[k] for k in ("images", "kept", "dropped", "repeated",
                                                                "expected_images_per_epoch")})
        if track:
            from pipelines.tracking import log_curation_manifest

            log_curation_manifest(summary, paths["train_annotations"], run_name=f"{params['register_prefix']}-balance")
    return result


def robustness_step(params: Mapping[str, Any], out_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str],
                    track: bool = True) -> dict[str, Any]:
    """The missing-label robustness grid of ``params["robustness"]`` (``components.robustness``) on the
    student's recipe, trained and evaluated on the run's data.

    ``out_dir`` (published whole) gets ``robustness.json``, ``.md``, ``.png``, the grid's YAML
    (``robustness.yaml``, with its base config ``base_config.yaml``) and the cells' folders; a step
    killed halfway resumes at its first unfinished cell. Returns the per-cell and summary rows.
    """
    import yaml

    from components.data import data_paths
    from components.robustness import robustness_grid as run_grid
    from components.staging import finished, staged_output
    from pipelines.profiles import robustness_grid

    fingerprint = _recipe_fingerprint(params, "robustness", data_dir)
    done = finished(out_dir, fingerprint)
    if done is not None:
        return done["result"]
    paths = data_paths(data_dir)
    result: dict[str, Any] = {}
    with staged_output(out_dir, step="robustness", fingerprint=fingerprint, result=result) as stage:
        grid = {**robustness_grid(params, base_config=_write_base_config(stage, params, paths)), **paths}
        (stage / "robustness.yaml").write_text(yaml.safe_dump(grid, sort_keys=False), encoding="utf-8")
        tracker = None
        if track:
            from pipelines.tracking import log_robustness

            def tracker(finished_grid: Any, config_path: str) -> None:
                log_robustness(finished_grid, config_path, run_name=f"{params['register_prefix']}-robustness")

        grid_result = run_grid(str(stage / "robustness.yaml"), str(stage), tracker=tracker)
        result.update(robustness_summary(grid_result.json_path))
    return result


def _recipe_fingerprint(params: Mapping[str, Any], section: str, data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a step that trains on the student's recipe depends on: its ``section`` of the parameters,
    the student's config and the data step's output."""
    return {section: params[section], "student": params["student"], "data": str(Path(data_dir).resolve()),
            "data_step": _fingerprint(data_dir)}


def _write_base_config(stage: Path, params: Mapping[str, Any], paths: Mapping[str, str]) -> str:
    """Write the student's config on the data step's files to ``stage/base_config.yaml``; its path."""
    import yaml

    base = {**params["student"], "data": {**params["student"].get("data", {}), **paths}}
    path = stage / "base_config.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    return str(path)


def robustness_summary(json_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The numbers of a ``robustness.json`` (no paths, no times): each cell's AP/AP50/AP75 and the
    training sets' dropped fractions."""
    report = json.loads(Path(json_path).read_text(encoding="utf-8"))
    keys = ("mode", "loss", "curation", "seed", "AP", "AP50", "AP75")
    return {"cells": [{k: cell[k] for k in keys} for cell in report["cells"]],
            "dropped_fraction": {mode: info["dropped_fraction"] for mode, info in report["training_sets"].items()}}


def active_learning_step(params: Mapping[str, Any], out_dir: str | os.PathLike[str], *,
                         data_dir: str | os.PathLike[str], track: bool = True) -> dict[str, Any]:
    """Simulated active learning (``components.active_learning``): the rounds of
    ``params["active_learning"]`` on the student's recipe, the data step's training set as the pool and
    its validation set for every round's AP.

    ``out_dir`` (published whole) gets the rounds' folders, ``state.json``, ``curve.json`` and
    ``curve.md``, and the run's YAML (``active_learning.yaml``, with its base config
    ``base_config.yaml``); a step killed halfway resumes at its last completed round. With ``track`` the
    curve is logged to MLflow (``pipelines.tracking.log_active_learning``). Returns
    ``active_learning_summary``.
    """
    import yaml

    from components.active_learning import CURVE_NAME, ActiveLearningSummary, active_learning
    from components.data import data_paths
    from components.staging import finished, staged_output
    from pipelines.profiles import active_learning_config

    fingerprint = _recipe_fingerprint(params, "active_learning", data_dir)
    done = finished(out_dir, fingerprint)
    if done is not None:
        return done["result"]
    paths = data_paths(data_dir)
    result: dict[str, Any] = {}
    with staged_output(out_dir, step="active_learning", fingerprint=fingerprint, result=result) as stage:
        config = active_learning_config(params, base_config=_write_base_config(stage, params, paths), data=paths)
        (stage / "active_learning.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        tracker = None
        if track:
            from pipelines.tracking import log_active_learning

            def tracker(summary: ActiveLearningSummary, config_path: str) -> None:
                log_active_learning(summary, config_path, run_name=f"{params['register_prefix']}-active_learning")

        active_learning(str(stage / "active_learning.yaml"), str(stage), tracker=tracker)
        result.update(active_learning_summary(stage / CURVE_NAME))
    return result


def active_learning_summary(curve_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The numbers of a ``curve.json`` (no paths, no times): level, measure, each round's boxes labelled,
    images, validation AP and AP50, and the last round's as ``final``."""
    curve = json.loads(Path(curve_path).read_text(encoding="utf-8"))
    rounds = [{k: r[k] for k in ("round", "boxes", "images", "AP", "AP50")} for r in curve["rounds"]]
    return {"level": curve["level"], "measure": curve["measure"], "rounds": rounds, "final": rounds[-1]}


def label_quality_step(params: Mapping[str, Any], out_dir: str | os.PathLike[str], *,
                       data_dir: str | os.PathLike[str], teacher_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The label-quality report of the training set (``components.quality.label_quality_of_model``), from
    the teacher's predictions of it, flagged from ``label_quality.threshold``.

    The predictions are in-sample: the code has no k-fold or held-out predictor outside the label-quality
    benchmark (whose 2-fold protocol trains two more detectors), and the teacher trained on these very
    labels, so it tends to reproduce their errors. The report says so (``summary.json``: ``protocol``
    ``in-sample``, ``out_of_sample`` false; ``report.md``: "IN-SAMPLE ... scores are unreliable"): its
    rankings are candidates for review, not error rates.

    ``out_dir`` (published whole) gets ``predictions.json`` and the report's files (``images.csv``,
    ``annotations.csv``, ``missing_boxes.json``, ``summary.json``, ``report.md``). Inference only, so
    deterministic; nothing is logged to MLflow here (the report step carries the counts). Returns
    ``label_quality_summary``.
    """
    from components.data import data_paths
    from components.quality import SUMMARY_NAME, label_quality_of_model
    from components.staging import finished, staged_output

    settings = dict(params["label_quality"])
    fingerprint = {"label_quality": settings, "protocol": LABEL_QUALITY_PROTOCOL, "data": str(Path(data_dir).resolve()),
                   "data_step": _fingerprint(data_dir), "teacher_step": _fingerprint(teacher_dir)}
    done = finished(out_dir, fingerprint)
    if done is not None:
        return done["result"]
    paths = data_paths(data_dir)
    result: dict[str, Any] = {}
    with staged_output(out_dir, step="label_quality", fingerprint=fingerprint, result=result) as stage:
        label_quality_of_model(Path(teacher_dir) / "checkpoint.pt", paths["train_annotations"], paths["train_images"],
                               stage, protocol=LABEL_QUALITY_PROTOCOL, threshold=float(settings["threshold"]),
                               top=int(settings["top"]))
        result.update(label_quality_summary(stage / SUMMARY_NAME))
    return result


def label_quality_summary(json_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The counts of a label-quality ``summary.json`` (no paths): protocol, images, scored annotations,
    predictions, flagged images and annotations per kind, missing boxes."""
    summary = json.loads(Path(json_path).read_text(encoding="utf-8"))
    keys = ("protocol", "out_of_sample", "threshold", "images", "scored_annotations", "predictions_count",
            "flagged_images", "flagged_annotations", "missing_boxes")
    return {k: summary[k] for k in keys}


def evaluate_step(model: str, params: Mapping[str, Any], model_dir: str | os.PathLike[str],
                  data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, track: bool = True,
                  register: bool = True, tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Evaluate a trained model on the validation set; with ``track`` log the evaluation to MLflow and
    (``register``) register the checkpoint as a version of ``registered_name(params, model)`` with the
    alias of ``ALIASES`` (none for the students: ``promote`` moves ``champion``), tagged
    ``detcurate.model``; the version is recorded in ``out_dir/registration.json``.

    A finished evaluation output is reused and not logged a second time (idempotent re-runs).
    """
    from components.evaluate_model import EVAL_REPORT, evaluate_trained
    from components.staging import DONE_NAME

    _check_model(model)
    registration = Path(out_dir) / REGISTRATION_NAME
    reused = (Path(out_dir) / DONE_NAME).is_file() and (registration.is_file() or not register)
    report = evaluate_trained(model_dir, data_dir, out_dir)
    if track and not reused:
        from components.data import data_paths
        from curation_core.evaluation import CocoStats
        from curation_core.io import write_json_atomic
        from pipelines.registry import register_checkpoint
        from pipelines.tracking import log_evaluation

        checkpoint = Path(model_dir) / "checkpoint.pt"
        name = registered_name(params, model)
        per_category = {int(k): (float("nan") if v is None else float(v))
                        for k, v in report.get("per_category_ap", {}).items()}
        names = dict(zip(per_category, report.get("per_category_ap_by_name", {}), strict=False))
        stats = CocoStats(stats=tuple(float(v) for v in report["stats"]), per_category_ap=per_category,
                          num_images=int(report["num_images"]), num_detections=int(report["num_detections"]),
                          category_names=names)
        paths = data_paths(data_dir)
        record: dict[str, str] = {}

        def register_model(run_id: str, run_tags: dict[str, str]) -> None:
            version = register_checkpoint(checkpoint, name, alias=ALIASES[model], run_id=run_id,
                                          tags={**run_tags, "detcurate.model": model})
            record.update({"name": name, "version": str(version.version), "run_id": run_id, "model": model,
                           "data_version": run_tags.get("dataset.version", "")})

        log_evaluation(stats, checkpoint=checkpoint, report_path=Path(out_dir) / EVAL_REPORT,
                       run_name=f"evaluate {params['register_prefix']}-{model}",
                       data_paths=[paths["val_annotations"], paths["val_images"]], tags=tags,
                       register=register_model if register else None)
        if record:
            write_json_atomic(registration, record, indent=2)
    return report


def report_step(params: Mapping[str, Any], evaluations: Mapping[str, str | os.PathLike[str]],
                histories: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                data_dir: str | os.PathLike[str] | None = None, balance_dir: str | os.PathLike[str] | None = None,
                robustness_dir: str | os.PathLike[str] | None = None,
                active_learning_dir: str | os.PathLike[str] | None = None,
                label_quality_dir: str | os.PathLike[str] | None = None, data_rev: str | None = None,
                track: bool = True) -> dict[str, Any]:
    """The run's report (``components.pipeline_report``): ``metrics.json``, ``report.md``, the figure,
    and ``html/report.html`` (``components.html_report``) with the balance, robustness, active-learning
    and label-quality sections.

    ``metrics.json`` holds the profile, the seed, the data revision and the DVC hash of the data folder,
    every model's COCO statistics, the manifest's summary, every robustness cell's AP, the active-learning
    curve (``active_learning_summary``: each round's boxes labelled and AP, the final round) and the
    label-quality counts (``label_quality_summary``): nothing that depends on the runner. With ``track``
    the HTML report is logged to MLflow.
    """
    from components.pipeline_report import HTML_DIR, pipeline_report

    extra: dict[str, Any] = {"profile": params["profile"], "seed": params["seed"], "data_rev": data_rev or None}
    if data_dir is not None:
        from pipelines.tracking import dataset_version

        extra["dataset_version"] = dataset_version(Path(data_dir) / "train") + " " + dataset_version(Path(data_dir) / "val")
    sections: dict[str, Path] = {}
    if balance_dir is not None:
        extra["balance"] = _step_result(balance_dir, "balance")
        sections.update({"balance.md": Path(balance_dir) / "manifest.md",
                         "balance_classes.png": Path(balance_dir) / "manifest_classes.png",
                         "balance_weights.png": Path(balance_dir) / "manifest_weights.png"})
    if robustness_dir is not None:
        extra["robustness"] = robustness_summary(Path(robustness_dir) / "robustness.json")
        sections.update({f"robustness.{ext}": Path(robustness_dir) / f"robustness.{ext}" for ext in ("md", "png")})
    if active_learning_dir is not None:
        from components.active_learning import CURVE_NAME, CURVE_TABLE

        extra["active_learning"] = active_learning_summary(Path(active_learning_dir) / CURVE_NAME)
        sections["active_learning.md"] = Path(active_learning_dir) / CURVE_TABLE
    if label_quality_dir is not None:
        from components.quality import REPORT_NAME, SUMMARY_NAME

        extra["label_quality"] = label_quality_summary(Path(label_quality_dir) / SUMMARY_NAME)
        sections["label_quality.md"] = Path(label_quality_dir) / REPORT_NAME
    title = f"DetCurate pipeline, {params['profile']} profile, seed {params['seed']}"
    content = pipeline_report(evaluations, out_dir, histories=histories, extra=extra, title=title, sections=sections)
    if track:
        from pipelines.tracking import log_report

        log_report(Path(out_dir) / HTML_DIR, run_name=f"{params['register_prefix']}-report")
    return content


def promote_step(params: Mapping[str, Any], evaluations: Mapping[str, str | os.PathLike[str]],
                 out_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str], track: bool = True) -> dict[str, Any]:
    """Registry promotion, the run's last step: each new student of ``CANDIDATES`` (in that order) takes
    ``champion`` of its registered model only if it beats the holder on ``promotion.metric`` on the same
    validation data version (a champion evaluated on other data is evaluated again on this run's).

    ``out_dir`` (published whole) gets ``promotion.json``: every decision (both numbers, the reason) and
    the champion after them (``models:/NAME@champion``). Without ``track`` nothing was registered and
    the file says so.
    """
    from components.staging import finished, staged_output
    from curation_core.io import write_json_atomic

    registrations = {m: _registration(Path(evaluations[m]), m) if track else None for m in CANDIDATES}
    fingerprint = {"promotion": dict(params["promotion"]), "registrations": registrations}
    done = finished(out_dir, fingerprint)
    if done is not None:
        return done["result"]
    result: dict[str, Any] = {"tracked": track, "decisions": [], "champion": None}
    if track:
        result.update(_promote(params, registrations, data_dir))
    with staged_output(out_dir, step="promote", fingerprint=fingerprint, result={}) as stage:
        write_json_atomic(stage / PROMOTION_NAME, result, indent=2)
    return result


def _promote(params: Mapping[str, Any], registrations: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    from dataclasses import asdict

    from pipelines.promotion import CHAMPION, promote
    from pipelines.tracking import mlflow_client

    settings = params["promotion"]
    evaluate = _evaluator(settings["metric"], data_dir)
    decisions = []
    for model, reg in registrations.items():
        decision = promote(reg["name"], reg["version"], metric=settings["metric"],
                           min_improvement=float(settings["min_improvement"]), evaluate=evaluate)
        decisions.append({"model": model, **asdict(decision)})
    name = registered_name(params, CANDIDATES[0])
    client = mlflow_client()
    holder = str(client.get_registered_model(name).aliases[CHAMPION])
    version = client.get_model_version(name, holder)
    champion = {"name": name, "version": holder, "uri": f"models:/{name}@{CHAMPION}",
                "model": version.tags.get("detcurate.model", ""),
                "value": next((d["candidate_value"] for d in decisions if d["candidate_version"] == holder),
                              decisions[-1]["champion_value"])}
    return {"decisions": decisions, "champion": champion}


def _evaluator(metric: str, data_dir: str | os.PathLike[str]) -> Any:
    """``promote``'s ``evaluate``: a champion registered from another data version, scored on this run's
    validation data (the candidate's data version, so the numbers compare)."""
    from curation_core.evaluation import COCO_STAT_NAMES

    stat = metric.rpartition("/")[2]
    if stat not in COCO_STAT_NAMES:
        return None  # not a COCO statistic: a champion on other data is a ConfigError in promote()

    def evaluate(model_version: Any, data_version: str) -> float:
        from components.data import data_paths
        from components.evaluate_model import evaluate_model
        from pipelines.registry import resolve_checkpoint

        paths = data_paths(data_dir)
        checkpoint = resolve_checkpoint(f"models:/{model_version.name}/{model_version.version}")
        return evaluate_model(str(checkpoint), paths["val_annotations"], paths["val_images"]).named()[stat]

    return evaluate


def _registration(eval_dir: Path, model: str) -> dict[str, str]:
    path = eval_dir / REGISTRATION_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: <file>: model {model!r} was not registered by its evaluate step "
                        f"(a run without tracking has nothing to promote)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: <file>: not a readable registration record ({exc})") from None


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
    if name == "balance":
        return balance_step(params, where[name], data_dir=where["data"], teacher_dir=where["train_teacher"], track=track)
    if name == "robustness":
        return robustness_step(params, where[name], data_dir=where["data"], track=track)
    if name == "active_learning":
        return active_learning_step(params, where[name], data_dir=where["data"], track=track)
    if name == "label_quality":
        return label_quality_step(params, where[name], data_dir=where["data"], teacher_dir=where["train_teacher"])
    if name.startswith("train_"):
        model = name.removeprefix("train_")
        return train_step(model, params, where[name], data_dir=where["data"], teacher_dir=where["train_teacher"],
                          balance_dir=where["balance"], track=track, tags=tags)
    if name.startswith("evaluate_"):
        model = name.removeprefix("evaluate_")
        return evaluate_step(model, params, where[f"train_{model}"], where["data"], where[name], track=track, tags=tags)
    if name == "promote":
        return promote_step(params, {m: where[f"evaluate_{m}"] for m in CANDIDATES}, where[name],
                            data_dir=where["data"], track=track)
    return report_step(params, {m: where[f"evaluate_{m}"] / "eval.json" for m in MODELS},
                       {m: where[f"train_{m}"] / "metrics.json" for m in MODELS}, where["report"],
                       data_dir=where["data"], balance_dir=where["balance"], robustness_dir=where["robustness"],
                       active_learning_dir=where["active_learning"], label_quality_dir=where["label_quality"],
                       data_rev=data_rev, track=track)


def _fingerprint(folder: str | os.PathLike[str]) -> Any:
    """The ``step.json`` fingerprint of an upstream step's output (its parameters), or None."""
    done = Path(folder) / "step.json"
    return json.loads(done.read_text(encoding="utf-8")).get("fingerprint") if done.is_file() else None


def _step_result(folder: str | os.PathLike[str], step: str) -> dict[str, Any]:
    done = Path(folder) / "step.json"
    try:
        return json.loads(done.read_text(encoding="utf-8"))["result"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{done}: <file>: the {step} step has not finished ({exc})") from None


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ConfigError(f"pipeline model: invalid value {model!r}; valid choices: {', '.join(MODELS)}")
