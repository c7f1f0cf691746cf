"""The robustness-grid configuration: one YAML file, validated before any training starts.

Fields (unknown fields are errors that list the valid ones)::

    base:                       # the training recipe every cell starts from
      config: configs/X.yaml    # a training config (curation_core.engine.config)
      overrides:                # dotted training-config fields set on top of it (value: any YAML value)
        model.detector: retinanet
    train_annotations, train_images   # the clean training set to corrupt (default: the base config's)
    val_annotations, val_images       # the clean validation set every cell is evaluated on (default: base's)
    modes: [normal, easy, hard, extreme, drop-per-category]
    drop_fraction: 0.5                # P of drop-per-category (COCO-50 % is 0.5)
    corruption_seed: 0                # one corrupted training set per mode, shared by every cell
    losses: [focal, brl]              # model.loss of the one-stage detectors
    loss_overrides: {brl: {...}}      # extra training-config fields per loss (the BRL parameters)
    curations: [none]                 # curation.method of each cell
    curation_overrides: {detgain: {curation.teacher: ..., ...}}
    seeds: [0, 1, 2]                  # train.seed of each cell

``build_cells`` turns it into the ordered cell list and every cell's validated ``TrainConfig``; any bad
override, a loss the engine does not have, or a method missing its teacher is a one-line
``ConfigError`` naming the robustness file and the cell.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from curation_core.engine.config import (
    CurationMethod,
    ModelConfig,
    TrainConfig,
    load_config,
    read_yaml_mapping,
)
from curation_core.errors import ConfigError

#: Training-set modes in the order of the BRL paper's table; ``normal`` is the clean training set.
MODES = ("normal", "easy", "hard", "extreme", "drop-per-category")
#: One-stage classification losses the grid compares.
LOSSES = ("focal", "brl")
Mode = Literal["normal", "easy", "hard", "extreme", "drop-per-category"]
Loss = Literal["focal", "brl"]
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
#: Overrides: dotted training-config field -> value (``{"schedule.max_iter": 400}``).
Overrides = dict[str, Any]
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseTraining(_Strict):
    """The training recipe: a training config file plus dotted overrides."""

    config: str = Field(description="path of a training config (configs/*.yaml)")
    overrides: Overrides = Field(default_factory=dict, description="dotted training-config field -> value")

    @field_validator("overrides")
    @classmethod
    def _keys(cls, value: Overrides) -> Overrides:
        return _check_keys(value)


class RobustnessConfig(_Strict):
    """A missing-label robustness grid (see the module docstring)."""

    base: BaseTraining
    train_annotations: str | None = Field(None, description="clean training COCO JSON (default: the base config's)")
    train_images: str | None = Field(None, description="its image folder (default: the base config's)")
    val_annotations: str | None = Field(None, description="clean validation COCO JSON (default: the base config's)")
    val_images: str | None = Field(None, description="its image folder (default: the base config's)")
    modes: tuple[Mode, ...] = Field(MODES, min_length=1, description="training-set modes")
    drop_fraction: Float = Field(0.5, gt=0.0, lt=1.0, description="P of drop-per-category")
    corruption_seed: Int = Field(0, ge=0, description="seed of the corruption (one training set per mode)")
    losses: tuple[Loss, ...] = Field(("focal",), min_length=1, description="classification losses")
    loss_overrides: dict[Loss, Overrides] = Field(default_factory=dict, description="loss -> training overrides")
    curations: tuple[CurationMethod, ...] = Field(("none",), min_length=1, description="curation methods")
    curation_overrides: dict[CurationMethod, Overrides] = Field(
        default_factory=dict, description="curation method -> training overrides")
    seeds: tuple[Int, ...] = Field((0, 1, 2), min_length=1, description="training seeds")

    @field_validator("loss_overrides", "curation_overrides")
    @classmethod
    def _nested_keys(cls, value: dict[str, Overrides]) -> dict[str, Overrides]:
        for overrides in value.values():
            _check_keys(overrides)
        return value

    @model_validator(mode="after")
    def _check(self) -> RobustnessConfig:
        for name, values in (("modes", self.modes), ("losses", self.losses), ("curations", self.curations),
                             ("seeds", self.seeds)):
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"{name} must not repeat a value; got {', '.join(repeated)} twice")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0; got {list(self.seeds)}")
        for field, chosen in (("loss_overrides", self.losses), ("curation_overrides", self.curations)):
            unused = [k for k in getattr(self, field) if k not in chosen]
            if unused:
                raise ValueError(f"{field} names {', '.join(unused)}, which the grid does not run "
                                 f"(chosen: {', '.join(chosen)})")
        return self


def _check_keys(overrides: Overrides) -> Overrides:
    bad = [k for k in overrides if not _KEY.match(k)]
    if bad:
        raise ValueError(f"override keys are dotted training-config fields (e.g. schedule.max_iter); got {bad[0]!r}")
    return overrides


@dataclass(frozen=True)
class Cell:
    """One training run of the grid. ``name`` is also its folder under ``OUT/cells``."""

    mode: str
    loss: str
    curation: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.mode}__{self.loss}__{self.curation}__seed{self.seed}"

    def key(self) -> dict[str, Any]:
        return {"mode": self.mode, "loss": self.loss, "curation": self.curation, "seed": self.seed}


def cell_list(config: RobustnessConfig) -> list[Cell]:
    """Every cell, seed by seed: all cells of the first seed (each loss in turn, every mode) come first,
    so that a partial run already holds whole tables, and the losses listed first run first."""
    return [Cell(mode, loss, curation, seed) for seed in config.seeds for loss in config.losses
            for curation in config.curations for mode in config.modes]


# ----------------------------------------------------------------------------------------------
# Reading


def load_robustness_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RobustnessConfig:
    """Read and validate a robustness YAML file; ``overrides`` are ``FIELD=VALUE`` strings for top-level
    fields (``losses=[focal]``) or training-config overrides (``base.overrides.schedule.max_iter=100``).

    Raises
    ------
    ConfigError
        One line ``"<file>: <field>: <problem>"`` (unknown fields list the valid ones).
    """
    source = str(path)
    raw = read_yaml_mapping(path)
    for item in overrides:
        _apply_override(raw, item)
    try:
        return RobustnessConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """``FIELD=VALUE`` sets a top-level field; ``base.overrides.SECTION.FIELD=VALUE`` a training-config
    override (values are YAML: ``seeds=[0, 1]``, ``base.overrides.schedule.max_iter=100``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    training = key.removeprefix("base.overrides.")
    if sep and training != key and _KEY.match(training):
        base = raw.get("base")
        if not isinstance(base, dict):
            raise ConfigError(f"--set {key}: the file has no base section to override")
        base["overrides"] = {**(base.get("overrides") or {}), training: value}
    elif sep and key in RobustnessConfig.model_fields:
        raw[key] = value
    else:
        raise ConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                          f"{', '.join(RobustnessConfig.model_fields)}, or base.overrides.SECTION.FIELD=VALUE")


def _describe(exc: ValidationError, source: str) -> str:
    return describe_grid_error(exc, source, RobustnessConfig)


def describe_grid_error(exc: ValidationError, source: str, top: type[BaseModel]) -> str:
    """One line ``"<file>: <field>: <problem>"`` for a config file whose ``base:`` section is ``BaseTraining``
    and whose other fields are those of ``top`` (robustness grids, active-learning runs)."""
    first = exc.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    kind = first["type"]
    if kind == "extra_forbidden":
        model: type[BaseModel] = BaseTraining if loc[:1] == ["base"] else top
        problem = f"unknown field; valid fields: {', '.join(model.model_fields)}"
    elif kind == "missing":
        problem = "missing required field"
    elif kind == "literal_error":
        choices = ", ".join(re.findall(r"'([^']*)'", first.get("ctx", {}).get("expected", "")))
        problem = f"invalid value {first['input']!r}; valid choices: {choices}"
    else:
        shown = first.get("input")
        got = "" if isinstance(shown, dict) or kind == "value_error" else f"; got {shown!r}"
        problem = f"{first['msg'].removeprefix('Value error, ')}{got}"
    return f"{source}: {'.'.join(loc) or '<top level>'}: {problem}"


# ----------------------------------------------------------------------------------------------
# Cells -> training configs


@dataclass(frozen=True)
class DataPaths:
    """The clean sets the grid reads, resolved against the base training config."""

    train_annotations: str
    train_images: str
    val_annotations: str
    val_images: str


def data_paths(config: RobustnessConfig, *, source: str = "<robustness config>") -> DataPaths:
    """The clean training and validation sets: the robustness file's fields, else the base config's."""
    base = load_config(config.base.config, _as_strings(config.base.overrides)).data
    val_annotations = config.val_annotations or base.val_annotations
    val_images = config.val_images or base.val_images
    if val_annotations is None or val_images is None:
        raise ConfigError(f"{source}: val_annotations: the grid evaluates every cell on a clean validation set; "
                          f"give val_annotations and val_images (the base config has none)")
    return DataPaths(config.train_annotations or base.train_annotations, config.train_images or base.train_images,
                     val_annotations, val_images)


def engine_has_loss_field() -> bool:
    """Whether this engine's ``model`` section selects the one-stage loss (``model.loss``)."""
    return "loss" in ModelConfig.model_fields


def cell_training_config(config: RobustnessConfig, cell: Cell, *, train_annotations: str, data: DataPaths,
                         output_dir: str | os.PathLike[str], source: str = "<robustness config>") -> TrainConfig:
    """The validated training config of ``cell``: base config + base overrides + the cell's data, loss,
    curation, seed and output folder (later entries win)."""
    where = f"{source}: cell {cell.name}"
    if not engine_has_loss_field() and cell.loss != "focal":
        raise ConfigError(f"{where}: losses: {cell.loss!r} is not available in this training engine "
                          f"(model has no field 'loss'); valid choices: focal")
    overrides: dict[str, Any] = dict(config.base.overrides)
    overrides.update({"data.train_annotations": train_annotations, "data.train_images": data.train_images,
                      "data.val_annotations": data.val_annotations, "data.val_images": data.val_images})
    if engine_has_loss_field():
        overrides["model.loss"] = cell.loss
    overrides.update(config.loss_overrides.get(cell.loss, {}))  # type: ignore[call-overload]
    overrides["curation.method"] = cell.curation
    overrides.update(config.curation_overrides.get(cell.curation, {}))  # type: ignore[call-overload]
    overrides.update({"train.seed": cell.seed, "train.output_dir": str(output_dir)})
    try:
        train_config = load_config(config.base.config, _as_strings(overrides))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if train_config.model.detector == "faster_rcnn":
        raise ConfigError(f"{where}: base: model.detector 'faster_rcnn' has no one-stage loss to compare; "
                          f"valid choices: retinanet, fcos")
    return train_config


def _as_strings(overrides: Mapping[str, Any]) -> list[str]:
    """``key=value`` strings for ``load_config`` (JSON is YAML, so every value reads back as given)."""
    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
