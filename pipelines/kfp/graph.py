"""The pipeline as a Kubeflow Pipelines graph: lightweight Python components, one per step.

Every component runs in the project's image (``KfpOptions.image``: the containers build it) and calls
one function of ``pipelines.steps``, as the DVC stages and the Airflow tasks do; so the component
bodies hold no step logic. Artifacts are typed: the data set is a ``Dataset``, each trained model a
``Model`` (with its COCO statistics as ``Metrics``), the curation manifest and the robustness grid an
``Artifact`` folder plus ``Metrics``, the active-learning rounds and the label-quality report an
``Artifact`` folder plus ``Markdown`` (the curve's table, the report) and ``Metrics`` (the final AP and
boxes labelled, the flagged counts), each evaluation an ``Artifact`` plus ``Metrics``, the report
``Markdown``, ``HTML``, ``Metrics`` and an ``Artifact`` folder (metrics.json, report.md, figure, html/),
and the registry's promotion decisions an ``Artifact`` plus ``Metrics``.

Every step's parameters are pipeline parameters (defaults: the profile compiled in; JSON strings, since
KFP's dict parameters turn integers into floats); training steps
(teacher, students, robustness grid, active learning) request GPUs, CPU and memory, are retried and never
cached; the deterministic steps (data, label quality, report) are cached (balance, evaluation and
promotion are not: they log, register and promote in MLflow). Node selectors, tolerations and a PVC
(``KfpOptions.pvc_name``, mounted on every task) come from kfp-kubernetes. An exit handler records the run's final state in
MLflow (``pipelines.tracking.record_pipeline_status``).

A retried task runs in a fresh pod whose output artifact folder is new and empty. With a PVC, each
training component therefore works in ``<pvc_mount>/scratch/<run id>/<step>``
(``components.staging.scratch_output``; the run id is ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``, the step
its name in ``pipelines.steps.TRAINING_STEPS``): a retry resumes from the checkpoint its failed attempt
left there, and the finished folder is copied onto the output artifact whole. Without a PVC a retry
starts its step again from the beginning (iteration 0).
"""


import json
from dataclasses import dataclass, field
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from pipelines.profiles import CANDIDATES, MODELS

PIPELINE_NAME = "detcurate"
#: Folder of the training tasks' work in progress on the PVC (``<pvc_mount>/scratch/<run id>/<step>``).
SCRATCH_DIR = "scratch"


@dataclass(frozen=True)
class KfpOptions:
    """Compile-time settings of the graph (what a cluster needs; the runtime parameters are separate).

    Parameters
    ----------
    image : container image of every component (the project installed in it, kfp included).
    gpus : GPUs per training step (0: CPU-only training); ``gpu_type`` is the resource name.
    train_cpu, train_memory, cpu, memory : requests of the training steps and of the other steps.
    node_selector : label -> value, for the training steps (e.g. a GPU node pool).
    tolerations : kfp-kubernetes ``add_toleration`` keyword sets, for the training steps.
    retries : retries of a training step.
    pvc_name, pvc_mount : an existing PersistentVolumeClaim mounted on every task at ``pvc_mount``
        (kfp-kubernetes), e.g. the volume behind a ``pipeline_root`` of ``file://`` URIs or a shared
        data folder; the training tasks keep their work in progress in ``<pvc_mount>/scratch`` so that a
        retry resumes it (the folder of a task whose retries all failed stays: delete
        ``<pvc_mount>/scratch/<run id>`` when done with that run). Empty ``pvc_name``: no volume, and a
        retried training task starts again from iteration 0.
    pipeline_root : where artifacts go (empty: the Kubeflow installation's default object store).
    """

    image: str = "detcurate:latest"
    gpus: int = 1
    gpu_type: str = "nvidia.com/gpu"
    train_cpu: str = "4"
    train_memory: str = "16G"
    cpu: str = "1"
    memory: str = "4G"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ({"key": "nvidia.com/gpu", "operator": "Exists",
                                                "effect": "NoSchedule"},)
    retries: int = 2
    pvc_name: str = ""
    pvc_mount: str = "/detcurate"
    pipeline_root: str = ""


def build_components(image: str) -> dict[str, Any]:
    """The components of the graph, each running in ``image``."""

    @dsl.component(base_image=image)
    def data(data_params: str, profile: str, seed: int, register_prefix: str, data_rev: str,
             dataset: Output[Dataset]):
        """Synthesise or ingest the data set (``pipelines.steps.data_step``)."""
        import json

        from pipelines.steps import data_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix, "data": json.loads(data_params)}
        dataset.metadata.update(data_step(params, dataset.path, data_rev=data_rev or None))

    @dsl.component(base_image=image)
    def train(model_name: str, config: str, profile: str, seed: int, register_prefix: str, data_rev: str,
              track: bool, pipeline_run: str, dataset: Input[Dataset], model: Output[Model],
              metrics: Output[Metrics], scratch_root: str = "", run_id: str = "", step: str = ""):
        """Train one model from scratch (``pipelines.steps.train_step``)."""
        import json

        from components.staging import scratch_output
        from pipelines.steps import run_tags, train_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix, model_name: json.loads(config)}
        with scratch_output(model.path, root=scratch_root, key=(run_id, step)) as out:
            result = train_step(model_name, params, out, data_dir=dataset.path, track=track,
                                tags=run_tags(params, pipeline_run=pipeline_run, data_rev=data_rev or None),
                                published_dir=model.path)
        for key, value in (result["final"] or {}).items():
            metrics.log_metric(key, value)
        model.metadata.update({"iterations": result["iterations"], "model": model_name})

    @dsl.component(base_image=image)
    def balance(balance_params: str, profile: str, seed: int, register_prefix: str, track: bool,
                dataset: Input[Dataset], teacher: Input[Model], manifest: Output[Artifact], metrics: Output[Metrics]):
        """The training set's curation manifest, from the teacher's features (``pipelines.steps.balance_step``)."""
        import json

        from pipelines.steps import balance_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix,
                  "balance": json.loads(balance_params)}
        summary = balance_step(params, manifest.path, data_dir=dataset.path, teacher_dir=teacher.path, track=track)
        for key, value in summary.items():
            metrics.log_metric(key, value)

    @dsl.component(base_image=image)
    def train_student(model_name: str, config: str, profile: str, seed: int, register_prefix: str, data_rev: str,
                      track: bool, pipeline_run: str, dataset: Input[Dataset], manifest: Input[Artifact],
                      model: Output[Model], metrics: Output[Metrics], scratch_root: str = "", run_id: str = "",
                      step: str = ""):
        """Train the plain student on the balanced stream (``pipelines.steps.train_step``)."""
        import json

        from components.staging import scratch_output
        from pipelines.steps import run_tags, train_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix, model_name: json.loads(config)}
        with scratch_output(model.path, root=scratch_root, key=(run_id, step)) as out:
            result = train_step(model_name, params, out, data_dir=dataset.path, balance_dir=manifest.path, track=track,
                                tags=run_tags(params, pipeline_run=pipeline_run, data_rev=data_rev or None),
                                published_dir=model.path)
        for key, value in (result["final"] or {}).items():
            metrics.log_metric(key, value)
        model.metadata.update({"iterations": result["iterations"], "model": model_name})

    @dsl.component(base_image=image)
    def train_curated(model_name: str, config: str, profile: str, seed: int, register_prefix: str, data_rev: str,
                      track: bool, pipeline_run: str, dataset: Input[Dataset], teacher: Input[Model],
                      manifest: Input[Artifact], model: Output[Model], metrics: Output[Metrics],
                      scratch_root: str = "", run_id: str = "", step: str = ""):
        """Train the student on batches the teacher curates online, on the balanced stream
        (``pipelines.steps.train_step``)."""
        import json

        from components.staging import scratch_output
        from pipelines.steps import run_tags, train_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix, model_name: json.loads(config)}
        with scratch_output(model.path, root=scratch_root, key=(run_id, step)) as out:
            result = train_step(model_name, params, out, data_dir=dataset.path, teacher_dir=teacher.path,
                                balance_dir=manifest.path, track=track,
                                tags=run_tags(params, pipeline_run=pipeline_run, data_rev=data_rev or None),
                                published_dir=model.path)
        for key, value in (result["final"] or {}).items():
            metrics.log_metric(key, value)
        model.metadata.update({"iterations": result["iterations"], "model": model_name})

    @dsl.component(base_image=image)
    def robustness(robustness_params: str, student_config: str, profile: str, seed: int, register_prefix: str,
                   track: bool, dataset: Input[Dataset], grid: Output[Artifact], metrics: Output[Metrics],
                   scratch_root: str = "", run_id: str = "", step: str = ""):
        """The missing-label robustness grid on the student's recipe (``pipelines.steps.robustness_step``)."""
        import json

        from components.staging import scratch_output
        from pipelines.steps import robustness_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix,
                  "robustness": json.loads(robustness_params), "student": json.loads(student_config)}
        with scratch_output(grid.path, root=scratch_root, key=(run_id, step)) as out:
            summary = robustness_step(params, out, data_dir=dataset.path, track=track)
        for cell in summary["cells"]:
            metrics.log_metric(f"{cell['mode']}/{cell['loss']}/{cell['curation']}/seed{cell['seed']}/AP", cell["AP"])

    @dsl.component(base_image=image)
    def active_learning(active_learning_params: str, student_config: str, profile: str, seed: int, register_prefix: str,
                        track: bool, dataset: Input[Dataset], rounds: Output[Artifact], markdown: Output[Markdown],
                        metrics: Output[Metrics], scratch_root: str = "", run_id: str = "", step: str = ""):
        """Simulated box-level active learning on the student's recipe (``pipelines.steps.active_learning_step``)."""
        import json
        import shutil
        from pathlib import Path

        from components.active_learning import CURVE_TABLE
        from components.staging import scratch_output
        from pipelines.steps import active_learning_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix,
                  "active_learning": json.loads(active_learning_params), "student": json.loads(student_config)}
        with scratch_output(rounds.path, root=scratch_root, key=(run_id, step)) as out:
            summary = active_learning_step(params, out, data_dir=dataset.path, track=track)
        shutil.copyfile(Path(rounds.path) / CURVE_TABLE, markdown.path)
        for key in ("AP", "AP50", "boxes", "images"):
            metrics.log_metric(f"final/{key}", summary["final"][key])

    @dsl.component(base_image=image)
    def label_quality(label_quality_params: str, profile: str, seed: int, register_prefix: str,
                      dataset: Input[Dataset], teacher: Input[Model], report_dir: Output[Artifact],
                      markdown: Output[Markdown], metrics: Output[Metrics]):
        """Likely label errors of the training set, from the teacher's in-sample predictions
        (``pipelines.steps.label_quality_step``)."""
        import json
        import shutil
        from pathlib import Path

        from components.quality import REPORT_NAME
        from pipelines.steps import label_quality_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix,
                  "label_quality": json.loads(label_quality_params)}
        summary = label_quality_step(params, report_dir.path, data_dir=dataset.path, teacher_dir=teacher.path)
        shutil.copyfile(Path(report_dir.path) / REPORT_NAME, markdown.path)
        for group in ("flagged_images", "flagged_annotations"):
            for kind, count in summary[group].items():
                metrics.log_metric(f"{group}/{kind}", count)
        metrics.log_metric("missing_boxes", summary["missing_boxes"])

    @dsl.component(base_image=image)
    def evaluate(model_name: str, profile: str, seed: int, register_prefix: str, data_rev: str, track: bool,
                 pipeline_run: str, dataset: Input[Dataset], model: Input[Model], evaluation: Output[Artifact],
                 metrics: Output[Metrics]):
        """Evaluate on the validation set, log to MLflow and register (``pipelines.steps.evaluate_step``)."""
        from pipelines.steps import evaluate_step, run_tags

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix}
        report = evaluate_step(model_name, params, model.path, dataset.path, evaluation.path, track=track,
                               tags=run_tags(params, pipeline_run=pipeline_run, data_rev=data_rev or None))
        for key, value in zip(report["names"], report["stats"], strict=True):
            metrics.log_metric(key, value)

    @dsl.component(base_image=image)
    def report(profile: str, seed: int, register_prefix: str, data_rev: str, track: bool, publish_dir: str,
               dataset: Input[Dataset], balance: Input[Artifact], robustness: Input[Artifact],
               active_learning: Input[Artifact], label_quality: Input[Artifact], teacher_eval: Input[Artifact], student_eval: Input[Artifact], student_curated_eval: Input[Artifact],
               teacher_model: Input[Model], student_model: Input[Model], student_curated_model: Input[Model],
               report_dir: Output[Artifact], markdown: Output[Markdown], html: Output[HTML], metrics: Output[Metrics]):
        """The run's report (``pipelines.steps.report_step``); ``publish_dir``: also copied there."""
        import shutil
        from pathlib import Path

        from pipelines.steps import report_step

        evals = {"teacher": teacher_eval, "student": student_eval, "student_curated": student_curated_eval}
        models = {"teacher": teacher_model, "student": student_model, "student_curated": student_curated_model}
        content = report_step({"profile": profile, "seed": seed, "register_prefix": register_prefix},
                              {m: Path(a.path) / "eval.json" for m, a in evals.items()},
                              {m: Path(a.path) / "metrics.json" for m, a in models.items()}, report_dir.path,
                              data_dir=dataset.path, balance_dir=balance.path, robustness_dir=robustness.path,
                              active_learning_dir=active_learning.path, label_quality_dir=label_quality.path,
                              data_rev=data_rev or None, track=track)
        shutil.copyfile(Path(report_dir.path) / "report.md", markdown.path)
        shutil.copyfile(Path(report_dir.path) / "html" / "report.html", html.path)
        for name, entry in content["models"].items():
            metrics.log_metric(f"{name}/AP", entry["named"]["AP"])
            metrics.log_metric(f"{name}/AP50", entry["named"]["AP50"])
        metrics.log_metric("active_learning/AP", content["active_learning"]["final"]["AP"])
        metrics.log_metric("active_learning/boxes", content["active_learning"]["final"]["boxes"])
        for kind, count in content["label_quality"]["flagged_images"].items():
            metrics.log_metric(f"label_quality/flagged_images/{kind}", count)
        if publish_dir:
            shutil.copytree(report_dir.path, Path(publish_dir) / "report", dirs_exist_ok=True)

    @dsl.component(base_image=image)
    def promote(promotion_params: str, profile: str, seed: int, register_prefix: str, track: bool, publish_dir: str,
                dataset: Input[Dataset], student_eval: Input[Artifact], student_curated_eval: Input[Artifact],
                promotion: Output[Artifact], metrics: Output[Metrics]):
        """Move ``champion`` to a new student only if it is better (``pipelines.steps.promote_step``)."""
        import json
        import shutil
        from pathlib import Path

        from pipelines.steps import promote_step

        params = {"profile": profile, "seed": seed, "register_prefix": register_prefix,
                  "promotion": json.loads(promotion_params)}
        result = promote_step(params, {"student": student_eval.path, "student_curated": student_curated_eval.path},
                              promotion.path, data_dir=dataset.path, track=track)
        for decision in result["decisions"]:
            metrics.log_metric(f"{decision['model']}/promoted", float(decision["promoted"]))
            metrics.log_metric(f"{decision['model']}/{decision['metric']}", decision["candidate_value"])
        if publish_dir:
            shutil.copytree(promotion.path, Path(publish_dir) / "promotion", dirs_exist_ok=True)

    @dsl.component(base_image=image)
    def record_status(pipeline_run: str, profile: str, seed: int, data_rev: str, track: bool,
                      status: dsl.PipelineTaskFinalStatus):
        """Exit handler: the run's final state in MLflow (``pipelines.steps.record_status``)."""
        from pipelines.steps import record_status as record
        from pipelines.steps import run_tags

        tags = run_tags({"profile": profile, "seed": seed}, data_rev=data_rev or None)
        tags["detcurate.kfp_job"] = status.pipeline_job_resource_name
        record(pipeline_run or status.pipeline_job_resource_name, status.state, tags=tags,
               message=str(status.error_message or ""), track=track)

    return {"data": data, "train": train, "balance": balance, "train_student": train_student,
            "train_curated": train_curated, "robustness": robustness, "active_learning": active_learning,
            "label_quality": label_quality, "evaluate": evaluate, "report": report,
            "promote": promote, "record_status": record_status}


def build_pipeline(params: dict[str, Any], options: KfpOptions | None = None) -> Any:
    """The pipeline function for the parameters ``params`` of ``pipelines.profiles.pipeline_params``
    (the defaults of its pipeline parameters) and ``options``."""
    opts = options or KfpOptions()
    ops = build_components(opts.image)

    @dsl.pipeline(name=PIPELINE_NAME, pipeline_root=opts.pipeline_root or None,
                  description="DetCurate: data, teacher, balancing, label quality, plain and curated student, "
                              "robustness, active learning, evaluation and registration, report, registry promotion")
    def detcurate(data_params: str = _json(params["data"]), balance_params: str = _json(params["balance"]),
                  teacher_config: str = _json(params["teacher"]), student_config: str = _json(params["student"]),
                  student_curated_config: str = _json(params["student_curated"]),
                  robustness_params: str = _json(params["robustness"]),
                  active_learning_params: str = _json(params["active_learning"]),
                  label_quality_params: str = _json(params["label_quality"]),
                  promotion_params: str = _json(params["promotion"]),
                  profile: str = params["profile"], seed: int = params["seed"],
                  register_prefix: str = params["register_prefix"], data_rev: str = "", track: bool = True,
                  pipeline_run: str = "", publish_dir: str = ""):
        common = {"profile": profile, "seed": seed, "data_rev": data_rev}
        tracked = {**common, "register_prefix": register_prefix, "track": track, "pipeline_run": pipeline_run}
        light = {"profile": profile, "seed": seed, "register_prefix": register_prefix, "track": track}
        exit_task = ops["record_status"](pipeline_run=pipeline_run, profile=profile, seed=seed, data_rev=data_rev,
                                         track=track)
        _light(exit_task, opts, cache=False)
        with dsl.ExitHandler(exit_task, name="detcurate-run"):
            data = ops["data"](data_params=data_params, register_prefix=register_prefix, **common)
            _light(data, opts, cache=True).set_display_name("data")
            dataset = data.outputs["dataset"]
            configs = {"teacher": teacher_config, "student": student_config, "student_curated": student_curated_config}
            models: dict[str, Any] = {}
            teacher = ops["train"](model_name="teacher", config=configs["teacher"], dataset=dataset, **tracked,
                                   **_scratch(opts, "train_teacher"))
            models["teacher"] = _training(teacher, opts).set_display_name("train teacher")
            balanced = ops["balance"](balance_params=balance_params, dataset=dataset,
                                      teacher=teacher.outputs["model"], **light)
            _light(balanced, opts, cache=False).set_display_name("balance")
            manifest = balanced.outputs["manifest"]
            student = ops["train_student"](model_name="student", config=configs["student"], dataset=dataset,
                                           manifest=manifest, **tracked, **_scratch(opts, "train_student"))
            models["student"] = _training(student, opts).set_display_name("train student")
            curated = ops["train_curated"](model_name="student_curated", config=configs["student_curated"],
                                           dataset=dataset, teacher=teacher.outputs["model"], manifest=manifest,
                                           **tracked, **_scratch(opts, "train_student_curated"))
            models["student_curated"] = _training(curated, opts).set_display_name("train student_curated")
            grid = ops["robustness"](robustness_params=robustness_params, student_config=student_config,
                                     dataset=dataset, **light, **_scratch(opts, "robustness"))
            _training(grid, opts).set_display_name("robustness")
            rounds = ops["active_learning"](active_learning_params=active_learning_params, student_config=student_config,
                                            dataset=dataset, **light, **_scratch(opts, "active_learning"))
            _training(rounds, opts).set_display_name("active learning")
            quality = ops["label_quality"](label_quality_params=label_quality_params, dataset=dataset,
                                           teacher=teacher.outputs["model"], profile=profile, seed=seed,
                                           register_prefix=register_prefix)
            _light(quality, opts, cache=True).set_display_name("label quality")
            evals = {}
            for name in MODELS:
                task = ops["evaluate"](model_name=name, dataset=dataset, model=models[name].outputs["model"], **tracked)
                evals[name] = _light(task, opts, cache=False).set_display_name(f"evaluate {name}")
            final = ops["report"](publish_dir=publish_dir, dataset=dataset, balance=manifest,
                                  robustness=grid.outputs["grid"], active_learning=rounds.outputs["rounds"],
                                  label_quality=quality.outputs["report_dir"], register_prefix=register_prefix, track=track,
                                  **{f"{m}_eval": evals[m].outputs["evaluation"] for m in MODELS},
                                  **{f"{m}_model": models[m].outputs["model"] for m in MODELS}, **common)
            _light(final, opts, cache=True).set_display_name("report")
            promoted = ops["promote"](promotion_params=promotion_params, publish_dir=publish_dir, dataset=dataset,
                                      **{f"{m}_eval": evals[m].outputs["evaluation"] for m in CANDIDATES}, **light)
            _light(promoted.after(final), opts, cache=False).set_display_name("promote")

    return detcurate


def _json(value: Any) -> str:
    """A step's parameters as a JSON string: KFP's dict parameters are protobuf Structs, whose numbers
    all come back as floats (``train: 96`` -> ``96.0``), which the strict configs refuse."""
    return json.dumps(value, sort_keys=True)


def _scratch(opts: KfpOptions, step: str) -> dict[str, str]:
    """The scratch arguments of the training task of ``step`` (a name of ``pipelines.steps.TRAINING_STEPS``).

    With a PVC: the root ``<pvc_mount>/scratch`` and the key (run id, step). The run id is
    ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` (``{{$.pipeline_job_uuid}}``), which the driver replaces by the
    run's UUID: the same in every attempt of a task, another in every run. It is an argument of its own,
    since the driver replaces only a constant that is exactly the placeholder. The step is a constant,
    unique in the graph: ``{{$.pipeline_task_name}}`` resolves to the display name ("train teacher") in
    some backend versions and to the task's key in others, and ``{{$.pipeline_task_uuid}}`` to the
    enclosing DAG's execution, which sibling tasks share. Without a PVC: no arguments (the components'
    defaults: no scratch).
    """
    if not opts.pvc_name:
        return {}
    return {"scratch_root": f"{opts.pvc_mount.rstrip('/')}/{SCRATCH_DIR}", "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "step": step}


def _training(task: Any, opts: KfpOptions) -> Any:
    task.set_cpu_request(opts.train_cpu).set_memory_request(opts.train_memory)
    if opts.gpus:
        task.set_accelerator_type(opts.gpu_type).set_accelerator_limit(opts.gpus)
    task.set_retry(num_retries=opts.retries, backoff_duration="60s", backoff_factor=2.0)
    task.set_caching_options(False)  # GPU training is not bitwise deterministic: never reuse a result
    for key, value in opts.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in opts.tolerations:
        kubernetes.add_toleration(task, **toleration)
    _mount(task, opts)
    return task


def _light(task: Any, opts: KfpOptions, *, cache: bool) -> Any:
    task.set_cpu_request(opts.cpu).set_memory_request(opts.memory)
    task.set_caching_options(cache)
    _mount(task, opts)
    return task


def _mount(task: Any, opts: KfpOptions) -> None:
    if opts.pvc_name:
        kubernetes.mount_pvc(task, pvc_name=opts.pvc_name, mount_path=opts.pvc_mount)
