"""The active-learning configuration: one YAML file, validated before any training starts.

Fields (unknown fields are errors that list the valid ones)::

    base:                         # the detector recipe of every round
      config: configs/X.yaml      # a training config (curation_core.engine.config)
      overrides: {optim.lr: 0.004}
    train_annotations, train_images   # the fully annotated pool: the simulated annotator's ground truth
    val_annotations, val_images       # where each round's detector is evaluated (default: the base's)
    level: box                    # box (fine-grained querying) or image (whole images, the baseline)
    measure: uncertainty          # box: random, uncertainty, coreset, detgain; image: random, uncertainty, coreset
    teacher: null                 # detgain: the teacher's checkpoint
    seed: 0                       # initial set, random picks, training seed
    initial_images: 40            # the random, fully labelled start
    rounds: 4                     # query rounds after the initial detector
    budget: 100                   # boxes labelled per round (box: K queries; image: GT boxes of the images)
    initial_iters: 400            # training iterations of the initial detector (from scratch)
    round_iters: 150              # training iterations of each later round
    retrain: finetune             # finetune (from the previous round's weights) or scratch
    pool_score_thresh: 0.05       # the pool: detections above this score (high recall) ...
    pool_nms_iou: 0.5             # ... merged class-agnostically (one candidate per object) ...
    pool_max_per_image: 30        # ... at most this many per image
    noisy_score_thresh: 0.3       # unverified predicted boxes kept as noisy labels (box level; null: none)
    unverified_weight: 0.5        # lambda_d: the loss weight of the noisy labels
    match_iou: 0.5                # the annotator snaps a box to its best ground truth at IoU >= this
    partial_background: loss      # box level: images joined through box queries train their background
                                  # as negatives (loss, the paper's) or not at all (ignore: "incomplete": 1)

Round ``r`` trains ``base`` with ``schedule.max_iter`` = ``initial_iters`` (``r = 0``) or
``round_iters``, ``train.seed`` = ``seed`` and ``model.unverified_weight`` = ``unverified_weight``.

``partial_background``: an image that joins the labelled set through a verified box keeps its other
objects unlabelled, so with ``loss`` the detector learns to call them background (missing labels).
``ignore`` writes those images with ``"incomplete": 1`` in the round's training set, and the
one-stage losses then give their negatives no classification loss (``curation_core.losses.weights``);
fully labelled images (round 0, image-level picks) are unchanged. It needs a one-stage detector.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from curation_core.engine.config import TrainConfig, load_config, read_yaml_mapping
from curation_core.errors import ConfigError
from curation_core.robustness.config import BaseTraining, describe_grid_error

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
#: Query levels: single boxes (Desai & Balasubramanian, CVPRW 2020) or whole images (the baseline).
LEVELS = ("box", "image")
#: Informativeness measures per level (``curation_core.active.measures``).
MEASURES = {"box": ("random", "uncertainty", "coreset", "detgain"), "image": ("random", "uncertainty", "coreset")}
Level = Literal["box", "image"]
Measure = Literal["random", "uncertainty", "coreset", "detgain"]
#: What the background of a partly labelled (box-joined) image trains: negatives, or nothing.
PartialBackground = Literal["loss", "ignore"]


class ActiveLearningConfig(BaseModel):
    """A simulated active-learning run (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: BaseTraining
    train_annotations: str = Field(description="fully annotated pool (COCO JSON): the simulated annotator's truth")
    train_images: str = Field(description="image folder of the pool")
    val_annotations: str | None = Field(None, description="validation COCO JSON (default: the base config's)")
    val_images: str | None = Field(None, description="its image folder (default: the base config's)")
    level: Level = Field("box", description="query boxes (box) or whole images (image)")
    measure: Measure = Field("uncertainty", description="informativeness measure")
    teacher: str | None = Field(None, description="measure detgain: the teacher detector's checkpoint")
    seed: Int = Field(0, ge=0, description="initial set, random picks and training seed")
    initial_images: Int = Field(40, ge=1, description="random, fully labelled images of the initial detector")
    rounds: Int = Field(4, ge=0, description="query rounds after the initial detector")
    budget: Int = Field(100, ge=1, description="boxes labelled per round")
    initial_iters: Int = Field(400, ge=1, description="training iterations of the initial detector")
    round_iters: Int = Field(150, ge=1, description="training iterations of each later round")
    retrain: Literal["finetune", "scratch"] = Field("finetune", description="start each round from the previous "
                                                                            "weights or from scratch")
    pool_score_thresh: Float = Field(0.05, ge=0.0, le=1.0, description="detections above this score form the pool")
    pool_nms_iou: Float = Field(0.5, gt=0.0, le=1.0, description="class-agnostic NMS IoU merging pool boxes")
    pool_max_per_image: Int = Field(30, ge=1, description="most pool boxes per image")
    noisy_score_thresh: Float | None = Field(0.3, ge=0.0, le=1.0, description="box level: unverified predictions "
                                              "above this score are noisy labels (null: none)")
    unverified_weight: Float = Field(0.5, ge=0.0, le=1.0, description="lambda_d: loss weight of noisy labels")
    match_iou: Float = Field(0.5, gt=0.0, le=1.0, description="annotator: IoU to snap a box to its ground truth")
    partial_background: PartialBackground = Field(
        "loss", description="box level: background of images joined through box queries is trained as negative "
                            "(loss) or takes no loss (ignore: written with \"incomplete\": 1)")

    @model_validator(mode="after")
    def _check(self) -> ActiveLearningConfig:
        if (self.val_annotations is None) != (self.val_images is None):
            raise ValueError("val_annotations and val_images must be given together (or both left out)")
        if self.measure not in MEASURES[self.level]:
            raise ValueError(f"measure {self.measure!r} is not an {self.level}-level measure; valid choices: "
                             f"{', '.join(MEASURES[self.level])}")
        if (self.measure == "detgain") != (self.teacher is not None):
            raise ValueError(f"teacher is needed by measure detgain, and by it only; got measure {self.measure!r} "
                             f"with teacher {self.teacher!r}")
        if self.partial_background != "loss" and self.level != "box":
            raise ValueError(f"partial_background {self.partial_background!r} applies to level box (image-level "
                             f"picks are fully labelled); got level {self.level!r}")
        if self.noisy_score_thresh is not None and self.noisy_score_thresh < self.pool_score_thresh:
            raise ValueError(f"noisy_score_thresh ({self.noisy_score_thresh}) must be >= pool_score_thresh "
                             f"({self.pool_score_thresh}): noisy labels are pool boxes")
        return self


def load_active_learning_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ActiveLearningConfig:
    """Read and validate an active-learning YAML file; ``overrides`` are top-level ``FIELD=VALUE`` strings.

    Raises
    ------
    ConfigError
        One line ``"<file>: <field>: <problem>"`` (unknown fields list the valid ones).
    """
    source = str(path)
    raw = read_yaml_mapping(path)
    for item in overrides:
        _apply_override(raw, item)
    return active_learning_config_from_dict(raw, source=source)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """``FIELD=VALUE`` sets a top-level field; ``base.overrides.SECTION.FIELD=VALUE`` a training-config override."""
    key, sep, text = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    training = key.removeprefix("base.overrides.")
    if sep and training != key and "." in training:
        base = raw.get("base")
        if not isinstance(base, dict):
            raise ConfigError(f"--set {key}: the file has no base section to override")
        base["overrides"] = {**(base.get("overrides") or {}), training: value}
    elif sep and key in ActiveLearningConfig.model_fields:
        raw[key] = value
    else:
        raise ConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                          f"{', '.join(ActiveLearningConfig.model_fields)}, or base.overrides.SECTION.FIELD=VALUE")


def active_learning_config_from_dict(raw: dict[str, Any], *, source: str = "<memory>") -> ActiveLearningConfig:
    """Validate a configuration given as a dict; the base training config is checked too."""
    try:
        config = ActiveLearningConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    if config.teacher is not None and not Path(config.teacher).is_file():
        raise ConfigError(f"{source}: teacher: checkpoint {config.teacher} does not exist")
    for round_index in range(min(config.rounds, 1) + 1):  # round 0 and the later rounds differ in length
        round_training_config(config, round_index=round_index, output_dir="<check>",
                              train_annotations=config.train_annotations, source=source)
    return config


def round_overrides(config: ActiveLearningConfig, *, round_index: int, output_dir: str | os.PathLike[str],
                    train_annotations: str) -> dict[str, Any]:
    """The dotted training-config changes of one round: ``base.overrides``, then the round's data, length
    (``initial_iters`` for round 0, else ``round_iters``), seed, output folder and loss weight of noisy labels."""
    overrides: dict[str, Any] = dict(config.base.overrides)
    overrides.update({"data.train_annotations": train_annotations, "data.train_images": config.train_images,
                      "schedule.max_iter": config.initial_iters if round_index == 0 else config.round_iters,
                      "train.seed": config.seed, "train.output_dir": str(output_dir),
                      "train.eval_every": 0, "model.unverified_weight": config.unverified_weight,
                      "data.manifest": None})
    if config.val_annotations is not None:
        overrides.update({"data.val_annotations": config.val_annotations, "data.val_images": config.val_images})
    return overrides


def round_training_config(config: ActiveLearningConfig, *, round_index: int, output_dir: str | os.PathLike[str],
                          train_annotations: str, source: str = "<active-learning config>") -> TrainConfig:
    """The validated training config of one round (base + overrides + the round's data, length, seed)."""
    overrides = round_overrides(config, round_index=round_index, output_dir=output_dir,
                                train_annotations=train_annotations)
    try:
        train_config = load_config(config.base.config, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    except ConfigError as exc:
        raise ConfigError(f"{source}: base: {exc}") from None
    check_round_config(config, train_config, source=source)
    return train_config


def check_round_config(config: ActiveLearningConfig, train_config: TrainConfig, *,
                       source: str = "<active-learning config>") -> None:
    """What the rounds need of their training config: a validation set, no online curation, and a
    detector that supports the level's noisy labels, ``partial_background`` and the measure.
    ``ConfigError``, one line naming the field."""
    if train_config.data.val_annotations is None:
        raise ConfigError(f"{source}: val_annotations: every round is evaluated on a validation set; give "
                          f"val_annotations and val_images (the base config has none)")
    if train_config.curation.method != "none":
        raise ConfigError(f"{source}: base: curation.method must be none (rounds train on their labelled set); "
                          f"got {train_config.curation.method!r}")
    if config.level == "box" and config.noisy_score_thresh is not None and train_config.model.detector == "faster_rcnn":
        raise ConfigError(f"{source}: noisy_score_thresh: faster_rcnn does not dampen unverified boxes "
                          f"(model.unverified_weight applies to retinanet and fcos); set noisy_score_thresh: null "
                          f"(no noisy labels) or use retinanet or fcos")
    if config.partial_background == "ignore" and train_config.model.detector == "faster_rcnn":
        raise ConfigError(f"{source}: partial_background: faster_rcnn has no loss for incomplete images (their "
                          f"background is sampled as negative); set partial_background: loss or use retinanet or "
                          f"fcos")
    if config.level == "box" and config.measure == "coreset" and train_config.model.detector != "faster_rcnn":
        raise ConfigError(f"{source}: measure: box-level coreset needs RoI features (model.detector faster_rcnn); "
                          f"{train_config.model.detector} has none (as in Desai & Balasubramanian); valid "
                          f"choices: random, uncertainty")


def _describe(exc: ValidationError, source: str) -> str:
    return describe_grid_error(exc, source, ActiveLearningConfig)
