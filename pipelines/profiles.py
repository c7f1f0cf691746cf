"""The parameters of a pipeline run: one profile (smoke, demo, full), a seed, and ``key=value`` overrides.

A profile gives every step its parameters: ``data`` (``components.data.prepare_data``), ``balance``
(``components.balance``: repeat-factor threshold, near-duplicate threshold on the teacher's features),
one training config per model (``teacher``, ``student``, ``student_curated``: complete ``detcurate
train`` configs as dicts, made from ``configs/demo_*.yaml``; both students train on the balance step's
manifest), ``robustness`` (the missing-label grid: ``modes``, ``losses``, ``drop_fraction``,
``corruption_seed`` and ``training``, nested training-config changes on top of the student's config),
``active_learning`` (the simulated box-level rounds of ``curation_core.active.config`` on the data step's
training set: ``level``, ``measure``, ``initial_images``, ``rounds``, ``budget``, ``initial_iters``,
``round_iters``, the pool's and the annotator's thresholds, ``seed`` and ``training``, changes on top of
the student's config as for the grid), ``label_quality`` (``threshold``: the score from which an image or
annotation counts as flagged, ``top``: rows per ranking in the report), ``promotion`` (``metric``,
``min_improvement``) and ``register_prefix``: the teacher is registered as
``<prefix>-teacher`` (alias ``teacher``), both students as versions of ``<prefix>-student``, whose
alias ``champion`` the promotion step moves. The same dict is what the DVC stages, the Kubeflow
pipeline and the Airflow DAG receive, so every runner trains exactly the same thing. ``seed`` replaces
every seed (data, models, robustness cells, active-learning rounds).

Light on purpose (PyYAML only at import): the Airflow DAG file imports this module while it is parsed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curation_core.errors import ConfigError

PROFILES = ("smoke", "demo", "full")
#: The models of a run, in training order, and the registry alias each evaluated model gets.
MODELS = ("teacher", "student", "student_curated")
#: Registered model of each model (``<register_prefix>-<name>``): both students are versions of one.
REGISTERED = {"teacher": "teacher", "student": "student", "student_curated": "student"}
#: Alias set when a model is registered (the students' ``champion`` is moved by promotion only).
ALIASES: dict[str, str | None] = {"teacher": "teacher", "student": None, "student_curated": None}
#: Models the promotion step compares with the champion, in this order.
CANDIDATES = ("student", "student_curated")
#: Which demo config each model starts from.
BASE_CONFIGS = {"teacher": "demo_teacher.yaml", "student": "demo_student.yaml",
                "student_curated": "demo_student_detgain.yaml"}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: Parameters of the steps other than training, before a profile's changes. The robustness grid's
#: ``training`` changes are dotted training-config keys here (nested in the parameters).
_BALANCE = {"threshold": 0.3, "near_threshold": 0.0005}
_ROBUSTNESS = {"modes": ["normal", "hard"], "losses": ["focal", "brl"], "drop_fraction": 0.5, "corruption_seed": 0,
               "training": {"model.detector": "retinanet", "optim.lr": 0.004, "train.eval_every": 0}}
_PROMOTION = {"metric": "eval/AP", "min_improvement": 0.0}
#: The rounds of ``configs/active_learning_demo.yaml`` (RetinaNet, so that noisy labels are dampened).
_ACTIVE_LEARNING = {"level": "box", "measure": "uncertainty", "initial_images": 100, "rounds": 3, "budget": 150,
                    "initial_iters": 400, "round_iters": 150, "retrain": "finetune", "pool_score_thresh": 0.05,
                    "pool_nms_iou": 0.5, "pool_max_per_image": 30, "noisy_score_thresh": 0.3,
                    "unverified_weight": 0.5, "match_iou": 0.5,
                    "training": {"model.detector": "retinanet", "optim.lr": 0.004, "schedule.warmup_iters": 20,
                                 "train.checkpoint_every": 100}}
_LABEL_QUALITY = {"threshold": 0.5, "top": 10}
#: Parameter sections whose keys a ``--set`` may add (training configs, checked by ``check``).
_OPEN_SECTIONS = (*((m,) for m in MODELS), ("robustness", "training"), ("active_learning", "training"))

#: Changes of each profile to the demo configs (dotted keys; ``*`` applies to every model;
#: ``robustness``, ``active_learning``: changes of the section, its ``training`` changes added to the defaults').
_PROFILE_CHANGES: dict[str, dict[str, Any]] = {
    # a few iterations on ~100 images at 64 px: the whole graph in about a minute on 2 CPU cores
    "smoke": {
        "data": {"train": 96, "val": 32, "size": 64, "imbalance": 4.0, "max_objects": 6},
        "*": {"model.min_size": 64, "model.max_size": 64, "schedule.max_iter": 6, "schedule.warmup_iters": 2,
              "train.batch_size": 8, "train.eval_every": 3, "train.checkpoint_every": 3,
              "train.eval_batch_size": 16, "train.num_threads": 1},
        "student_curated": {"curation.super_batch": 16, "curation.warmup_iters": 2, "curation.window": 200},
        "robustness": {"modes": ["normal", "hard"], "losses": ["focal", "brl"],
                       "training": {"schedule.max_iter": 4, "schedule.warmup_iters": 2, "train.checkpoint_every": 2}},
        # two query rounds of 10 boxes; a pool threshold of 0: a detector of 4 iterations scores below 0.05
        "active_learning": {"initial_images": 16, "rounds": 2, "budget": 10, "initial_iters": 4, "round_iters": 2,
                            "pool_score_thresh": 0.0,
                            "training": {"schedule.warmup_iters": 2, "train.checkpoint_every": 2}},
    },
    # `detcurate demo`: every step in under 15 minutes on 2 idle CPU cores (README, "Running the pipeline")
    "demo": {
        "data": {"train": 1200, "val": 300, "size": 128, "imbalance": 10.0, "max_objects": 20},
        "*": {"schedule.max_iter": 400, "train.eval_every": 100, "train.checkpoint_every": 100},
        "robustness": {"training": {"schedule.max_iter": 100, "schedule.warmup_iters": 20,
                                    "train.checkpoint_every": 50}},
        # 200 RetinaNet iterations in all, as long as two robustness cells; a detector of 100 iterations is
        # not confident yet, so the pool takes its detections from a score of 0.01
        "active_learning": {"rounds": 2, "budget": 100, "initial_iters": 100, "round_iters": 50,
                            "pool_score_thresh": 0.01, "training": {"train.checkpoint_every": 50}},
    },
    # a longer schedule on more data, on a GPU when the node has one
    "full": {
        "data": {"train": 4800, "val": 600, "size": 128, "imbalance": 10.0, "max_objects": 20},
        "*": {"schedule.max_iter": 3200, "train.device": "auto", "train.eval_every": 400,
              "train.checkpoint_every": 400, "optim.lr": 0.004},
        "teacher": {"model.backbone": "small"},
        "robustness": {"modes": ["normal", "easy", "hard", "extreme", "drop-per-category"],
                       "training": {"schedule.max_iter": 1600, "train.device": "auto", "train.checkpoint_every": 400}},
        "active_learning": {"initial_images": 400, "rounds": 4, "budget": 300, "initial_iters": 1600, "round_iters": 400,
                            "training": {"train.checkpoint_every": 400}},
    },
}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def pipeline_params(profile: str, *, seed: int = 0, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The parameters of every step for ``profile`` and ``seed``, with ``overrides`` applied.

    ``overrides``: ``key=value`` with a dotted key into the result (``teacher.schedule.max_iter=10``,
    ``data.train=200``); values are parsed as YAML. Raises ``ConfigError`` for an unknown profile, a
    malformed override or a key that does not exist (the configs themselves are checked by ``check``).
    """
    if profile not in PROFILES:
        raise ConfigError(f"--profile: invalid value {profile!r}; valid choices: {', '.join(PROFILES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed: expects an integer >= 0; got {seed!r}")
    changes = _PROFILE_CHANGES[profile]
    params: dict[str, Any] = {"profile": profile, "seed": seed, "register_prefix": f"detcurate-{profile}",
                              "data": {"source": "synth", **changes["data"], "seed": seed, "path": "data/synth"},
                              "balance": dict(_BALANCE), "promotion": dict(_PROMOTION),
                              "robustness": {**_with_training(_ROBUSTNESS, changes.get("robustness", {}), profile),
                                             "seeds": [seed]},
                              "active_learning": {**_with_training(_ACTIVE_LEARNING, changes.get("active_learning", {}),
                                                                   profile), "seed": seed},
                              "label_quality": dict(_LABEL_QUALITY)}
    for model in MODELS:
        config = _load_yaml(CONFIG_DIR / BASE_CONFIGS[model])
        for key, value in {**changes.get("*", {}), **changes.get(model, {}), "train.seed": seed}.items():
            _set(config, key.split("."), value, where=f"profile {profile}", create=True)
        config.get("curation", {}).pop("teacher", None)  # the run's own teacher step (set by the pipeline)
        params[model] = config
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not _KEY.match(key):
            raise ConfigError(f"--set: expects key=value with a dotted key (e.g. teacher.schedule.max_iter=10); "
                              f"got {item!r}")
        _set(params, key.split("."), _parse(raw, item), where="--set", create=False)
    return params


def _with_training(defaults: dict[str, Any], change: dict[str, Any], profile: str) -> dict[str, Any]:
    """A section of ``defaults`` with a profile's ``change``; its dotted ``training`` keys nested."""
    section = {**copy.deepcopy(defaults), **{k: v for k, v in change.items() if k != "training"}}
    training: dict[str, Any] = {}
    for key, value in {**defaults["training"], **change.get("training", {})}.items():
        _set(training, key.split("."), value, where=f"profile {profile}", create=True)
    section["training"] = training
    return section


def robustness_grid(params: dict[str, Any], *, base_config: str) -> dict[str, Any]:
    """The robustness YAML (``curation_core.robustness.config``) of the run: the grid of
    ``params["robustness"]`` on ``base_config`` (the student's config, written by the step) with the
    grid's ``training`` changes as dotted overrides."""
    grid = params["robustness"]
    return {"base": {"config": base_config, "overrides": dict(_flatten(grid["training"]))},
            **{k: grid[k] for k in ("modes", "losses", "drop_fraction", "corruption_seed", "seeds")}}


def active_learning_config(params: Mapping[str, Any], *, base_config: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The active-learning YAML (``curation_core.active.config``) of the run: ``params["active_learning"]``
    on ``base_config`` (the student's config, written by the step) with the section's ``training`` changes
    as dotted overrides; ``data``: the data step's ``train_annotations``, ``train_images`` (the pool) and
    ``val_annotations``, ``val_images`` (each round's evaluation)."""
    section = params["active_learning"]
    return {"base": {"config": base_config, "overrides": dict(_flatten(section["training"]))},
            **{k: data[k] for k in ("train_annotations", "train_images", "val_annotations", "val_images")},
            **{k: v for k, v in section.items() if k != "training"}}


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in tree.items():
        items += _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return items


def check(params: dict[str, Any]) -> None:
    """Validate every step's parameters before any step runs (``ConfigError``/``DataError``: one line).

    Training configs are validated as ``detcurate train`` validates them (with the run's data paths
    filled in later); synthesis parameters as ``detcurate data synth`` does.
    """
    from curation_core.engine.config import config_from_dict
    from curation_core.synth import SynthConfig

    data = params.get("data", {})
    if data.get("source", "synth") == "synth":
        SynthConfig(**{k: data[k] for k in ("train", "val", "size", "seed", "imbalance", "max_objects")})
    for model in MODELS:
        raw = copy.deepcopy(params[model])
        raw.setdefault("train", {})["output_dir"] = f"runs/{model}"
        if model == "student_curated" and raw.get("curation", {}).get("method", "none") != "none":
            raw["curation"]["teacher"] = "teacher-step-checkpoint.pt"  # the pipeline's teacher step
        config_from_dict(raw, source=f"{params['profile']} profile, {model}")
    _check_robustness(params)
    _check_active_learning(params)
    _check_steps(params)


def _check_robustness(params: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from curation_core.engine.config import config_from_dict
    from curation_core.robustness.config import RobustnessConfig

    where = f"{params['profile']} profile, robustness"
    grid = robustness_grid(params, base_config="<the student's config>")
    try:
        RobustnessConfig.model_validate(grid)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "<grid>"
        raise ConfigError(f"{where}: {field}: {first['msg']}") from None
    raw = copy.deepcopy(params["student"])
    for key, value in grid["base"]["overrides"].items():
        _set(raw, key.split("."), value, where=where, create=True)
    raw.setdefault("train", {})["output_dir"] = "runs/robustness"
    raw.setdefault("model", {})["loss"] = grid["losses"][0]
    config_from_dict(raw, source=where)


def _check_active_learning(params: dict[str, Any]) -> None:
    """The rounds as ``curation_core.active.config`` validates them, on the student's config (the data
    step's paths filled in later); measure ``detgain`` is refused: the step does not read the teacher."""
    from pydantic import ValidationError

    from curation_core.active.config import (
        MEASURES,
        ActiveLearningConfig,
        check_round_config,
        round_overrides,
    )
    from curation_core.engine.config import config_from_dict
    from curation_core.robustness.config import describe_grid_error

    where = f"{params['profile']} profile, active_learning"
    section = params["active_learning"]
    if section.get("measure") == "detgain":
        valid = ", ".join(m for m in MEASURES.get(section.get("level"), MEASURES["box"]) if m != "detgain")
        raise ConfigError(f"{where}: measure: detgain needs a teacher checkpoint, and this step reads only the "
                          f"data step; valid choices: {valid}")
    data = {k: f"<data step>/{k}" for k in ("train_annotations", "train_images", "val_annotations", "val_images")}
    try:
        config = ActiveLearningConfig.model_validate(active_learning_config(params, base_config="<the student's config>",
                                                                            data=data))
    except ValidationError as exc:
        raise ConfigError(describe_grid_error(exc, where, ActiveLearningConfig)) from None
    for round_index in range(min(config.rounds, 1) + 1):  # round 0 and the later rounds differ in length
        raw = copy.deepcopy(params["student"])
        for key, value in round_overrides(config, round_index=round_index, output_dir="runs/active_learning",
                                          train_annotations=config.train_annotations).items():
            _set(raw, key.split("."), value, where=where, create=True)
        check_round_config(config, config_from_dict(raw, source=where), source=where)


def _check_steps(params: dict[str, Any]) -> None:
    for section, key, low in (("balance", "threshold", 0.0), ("balance", "near_threshold", 0.0),
                              ("promotion", "min_improvement", 0.0)):
        value = params[section][key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            raise ConfigError(f"{params['profile']} profile, {section}: {key}: expects a number >= {low}; got {value!r}")
    metric = params["promotion"]["metric"]
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{params['profile']} profile, promotion: metric: expects a metric name (eval/AP); got {metric!r}")
    quality = params["label_quality"]
    threshold, top = quality["threshold"], quality["top"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ConfigError(f"{params['profile']} profile, label_quality: threshold: expects a number in [0, 1]; "
                          f"got {threshold!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"{params['profile']} profile, label_quality: top: expects an integer >= 1; got {top!r}")


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: <file>: cannot read the base config of the pipeline ({exc.strerror})") from None


def _parse(raw: str, item: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set: value of {item!r} is not valid YAML") from None


def _set(tree: dict[str, Any], keys: list[str], value: Any, *, where: str, create: bool) -> None:
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None and create:
            child = node[key] = {}
        if not isinstance(child, dict):
            valid = ", ".join(sorted(k for k, v in node.items() if isinstance(v, dict)))
            raise ConfigError(f"{where}: {'.'.join(keys[:depth + 1])}: not a section; valid sections: {valid}")
        node = child
    open_section = any(tuple(keys[:len(s)]) == s for s in _OPEN_SECTIONS)  # configs: checked by check()
    if not create and keys[-1] not in node and not open_section:
        raise ConfigError(f"{where}: {'.'.join(keys)}: unknown key; valid keys: {', '.join(sorted(node))}")
    node[keys[-1]] = value
