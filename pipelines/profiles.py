"""The parameters of a pipeline run: one profile (smoke, demo, full), a seed, and ``key=value`` overrides.

A profile gives every step its parameters: ``data`` (``components.data.prepare_data``), one training
config per model (``teacher``, ``student``, ``student_curated``: complete ``detcurate train`` configs
as dicts, made from ``configs/demo_*.yaml``) and ``register_prefix`` (registered models are
``<prefix>-<model>``). The same dict is what the DVC stages, the Kubeflow pipeline and the Airflow DAG
receive, so every runner trains exactly the same thing. ``seed`` replaces every seed (data, models).

Light on purpose (PyYAML only at import): the Airflow DAG file imports this module while it is parsed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curation_core.errors import ConfigError

PROFILES = ("smoke", "demo", "full")
#: The models of a run, in training order, and the registry alias each evaluated model gets.
MODELS = ("teacher", "student", "student_curated")
ALIASES = {"teacher": "teacher", "student": "champion", "student_curated": "champion"}
#: Which demo config each model starts from.
BASE_CONFIGS = {"teacher": "demo_teacher.yaml", "student": "demo_student.yaml",
                "student_curated": "demo_student_detgain.yaml"}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: Changes of each profile to the demo configs (dotted keys; ``*`` applies to every model).
_PROFILE_CHANGES: dict[str, dict[str, Any]] = {
    # a few iterations on ~100 images at 64 px: the whole graph in about a minute on 2 CPU cores
    "smoke": {
        "data": {"train": 96, "val": 32, "size": 64, "imbalance": 4.0, "max_objects": 6},
        "*": {"model.min_size": 64, "model.max_size": 64, "schedule.max_iter": 6, "schedule.warmup_iters": 2,
              "train.batch_size": 8, "train.eval_every": 3, "train.checkpoint_every": 3,
              "train.eval_batch_size": 16, "train.num_threads": 1},
        "student_curated": {"curation.super_batch": 16, "curation.warmup_iters": 2, "curation.window": 200},
    },
    # the demo of dvc.yaml / params.yaml (about 8 minutes for teacher and student on 2 CPU cores)
    "demo": {"data": {"train": 1200, "val": 300, "size": 128, "imbalance": 10.0, "max_objects": 20}},
    # a longer schedule on more data, on a GPU when the node has one
    "full": {
        "data": {"train": 4800, "val": 600, "size": 128, "imbalance": 10.0, "max_objects": 20},
        "*": {"schedule.max_iter": 3200, "train.device": "auto", "train.eval_every": 400,
              "train.checkpoint_every": 400, "optim.lr": 0.004},
        "teacher": {"model.backbone": "small"},
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
                              "data": {"source": "synth", **changes["data"], "seed": seed, "path": "data/synth"}}
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
    if not create and keys[-1] not in node and keys[0] not in MODELS:  # configs: checked by check()
        raise ConfigError(f"{where}: {'.'.join(keys)}: unknown key; valid keys: {', '.join(sorted(node))}")
    node[keys[-1]] = value
