"""The training configuration: one YAML file, validated once, then passed around frozen.

Sections (every field is documented on its class; unknown fields are errors):

- ``model``: which detector and backbone, input resolution, detection thresholds.
- ``data``: COCO annotation files and image folders of the training and validation sets.
- ``augment``: training augmentations (flip, scale jitter, photometric).
- ``optim``: optimizer (SGD or AdamW), weight decay, gradient clipping.
- ``schedule``: iterations, linear warm-up, then step or cosine decay.
- ``train``: output folder, batch size, seed, device, mixed precision, checkpoint/eval intervals.
- ``curation``: online batch selection (DetGain and its baselines); ``method: none`` trains on the stream.

``load_config(path, overrides)`` reads the YAML file and applies ``key.sub=value`` overrides on top
(values are parsed as YAML, so ``0.01``, ``true``, ``null`` and ``[0.8, 1.2]`` work). There is no
inheritance between files: what a run used is exactly its file plus its overrides, and the resolved
configuration is written as ``config.yaml`` next to every checkpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from curation_core.errors import ConfigError
from curation_core.io import atomic_write

DetectorName = Literal["fcos", "retinanet", "faster_rcnn"]
BackboneName = Literal["nano", "tiny", "small", "resnet18", "resnet50", "resnet101", "resnet152"]
#: Strict scalars: YAML ``true`` is not the integer 1, and ``"3"`` is not a number.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
#: Device strings accepted by ``train.device``.
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Valid ``model.loss`` values: the classification loss of the one-stage detectors.
LossName = Literal["focal", "brl"]
ONE_STAGE_DETECTORS = ("fcos", "retinanet")
#: Parts of PISA (arXiv 1904.04821): reweighting of positives, of negatives, classification-aware regression.
PisaPart = Literal["isr_p", "isr_n", "carl"]
PISA_PARTS: tuple[PisaPart, ...] = ("isr_p", "isr_n", "carl")
#: Default loss weight of anchors assigned to boxes flagged ``unverified`` (dampened loss).
UNVERIFIED_WEIGHT = 0.5


class BRLConfig(_Section):
    """Background Recalibration Loss (``model.loss: brl``; ``curation_core.losses.brl``, arXiv 2002.05274).

    Anchors are split by their largest IoU with the annotated boxes (ignored ones included): positives
    ``>= pos_iou`` (and each box's best anchors, as RetinaNet does), ignored in ``[neg_iou, pos_iou)``,
    negatives in ``[confusion_iou, neg_iou)`` and confusion anchors below ``confusion_iou``. On confusion
    anchors a foreground probability above ``1 - t`` takes the mirrored positive branch of the focal
    loss, and their whole loss is scaled by ``weight``. ``t: 0`` with ``weight: 1`` is the focal loss.
    """

    t: Float = Field(0.5, ge=0.0, le=1.0, description="confusion anchors: scores above 1 - t take the mirrored branch")
    weight: Float = Field(0.1, ge=0.0, description="weight of the confusion anchors' loss (0.1: the paper's best)")
    pos_iou: Float = Field(0.5, gt=0.0, le=1.0, description="anchors with IoU >= pos_iou are positives")
    neg_iou: Float = Field(0.4, gt=0.0, le=1.0, description="anchors with IoU in [neg_iou, pos_iou) are ignored")
    confusion_iou: Float = Field(0.1, ge=0.0, le=1.0, description="anchors with IoU < confusion_iou are confusion anchors")

    @model_validator(mode="after")
    def _check(self) -> BRLConfig:
        if not self.confusion_iou <= self.neg_iou <= self.pos_iou:
            raise ValueError(f"IoU thresholds must satisfy confusion_iou <= neg_iou <= pos_iou; got "
                             f"{self.confusion_iou}, {self.neg_iou}, {self.pos_iou}")
        return self


class LibraConfig(_Section):
    """Libra R-CNN sampling of the RoI heads (``model.sampler: libra``; ``curation_core.samplers.libra``,
    arXiv 1904.02701): IoU-balanced negatives and instance-balanced positives.

    Negatives are drawn evenly from ``bins`` IoU bins (a short bin is filled at random); with
    ``floor_thr``, a ``floor_fraction`` of them is drawn at random below it. ``bin_range: negatives``
    spans the bins over the negatives' own IoUs; ``mmdetection`` over [floor, largest IoU of any
    proposal], mmdetection's behaviour (its top bin is empty; mmdetection issue 5323).
    """

    bins: Int = Field(3, ge=1, description="IoU bins of the negatives (1: random negatives)")
    floor_thr: Float | None = Field(None, ge=0.0, lt=1.0, description="negatives below this IoU form the floor set (null: none)")
    floor_fraction: Float = Field(0.0, ge=0.0, le=1.0, description="fraction of the negatives drawn from the floor set")
    bin_range: Literal["negatives", "mmdetection"] = Field(
        "negatives", description="bins over the negatives' IoU range, or mmdetection's [floor, max IoU of all proposals]")
    balanced_positives: Bool = Field(True, description="instance-balanced positives (false: random positives)")

    @model_validator(mode="after")
    def _check(self) -> LibraConfig:
        if self.floor_fraction > 0 and self.floor_thr is None:
            raise ValueError(f"floor_fraction ({self.floor_fraction}) needs floor_thr (the floor set's upper IoU)")
        return self


class ModelConfig(_Section):
    """Detector architecture and input resolution.

    ``min_size``/``max_size`` set the resolution the model sees: an image is scaled so that its short
    side is ``min_size`` unless its long side would exceed ``max_size``. Set them to the data's
    resolution (128 for 128 px images); torchvision's 800/1333 would upscale small images sixfold.
    """

    detector: DetectorName = Field(description="fcos (anchor-free), retinanet (one-stage), faster_rcnn (two-stage)")
    backbone: BackboneName = Field(description="nano/tiny/small: CPU-sized CNNs; resnetNN: ResNet; all with an FPN")
    norm: Literal["batch", "group"] = Field("batch", description="normalisation layers of the backbone")
    fpn_levels: Literal["auto", "p3p7", "p2p6"] = Field(
        "auto", description="FPN levels; auto: p2p6 for faster_rcnn, p3p7 for retinanet/fcos (torchvision's)"
    )
    fpn_channels: Int | None = Field(None, ge=16, description="FPN width; null: 32 (nano), 64 (tiny, small) or 256 (ResNet)")
    head_convs: Int | None = Field(
        None, ge=1, le=4, description="conv layers in each tower of the fcos/retinanet head; null: 4 (torchvision's)"
    )
    min_size: Int = Field(800, ge=16, description="short side of the model input, pixels")
    max_size: Int = Field(1333, ge=16, description="upper bound on the long side of the model input, pixels")
    anchor_sizes: tuple[Float, ...] | None = Field(
        None, description="RetinaNet/Faster R-CNN base anchor size per FPN level (5 values); null: by backbone"
    )
    score_thresh: Float = Field(0.05, ge=0.0, le=1.0, description="detections scoring below are dropped")
    detections_per_img: Int = Field(100, ge=1, description="most detections kept per image")
    loss: LossName | None = Field(
        None, description="fcos/retinanet classification loss: focal or brl (retinanet; left out: focal); faster_rcnn: null"
    )
    brl: BRLConfig = Field(BRLConfig(), description="loss brl: thresholds and weight (see BRLConfig)")
    unverified_weight: Float = Field(
        UNVERIFIED_WEIGHT, ge=0.0, le=1.0,
        description="fcos/retinanet: loss weight of anchors assigned to boxes flagged unverified",
    )
    sampler: Literal["random", "libra"] = Field(
        "random", description="faster_rcnn RoI-head sampler: random (torchvision's) or libra (Libra R-CNN)")
    libra: LibraConfig = Field(LibraConfig(), description="sampler libra: IoU bins, floor, positives (see LibraConfig)")
    pisa: Bool = Field(False, description="PISA: ISR-P, ISR-N and CARL (faster_rcnn), ISR-P and CARL (retinanet)")
    pisa_parts: tuple[PisaPart, ...] = Field(
        PISA_PARTS, description="faster_rcnn with pisa: the parts used (ablations), of isr_p, isr_n, carl")

    @model_validator(mode="before")
    @classmethod
    def _default_loss(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("detector") in ONE_STAGE_DETECTORS and "loss" not in data:
            return {**data, "loss": "focal"}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.detector not in ONE_STAGE_DETECTORS and self.loss is not None:
            raise ValueError(f"loss applies to the one-stage detectors ({', '.join(ONE_STAGE_DETECTORS)}); "
                             f"{self.detector} takes null; got {self.loss!r}")
        if self.loss == "brl" and self.detector != "retinanet":
            raise ValueError(f"loss 'brl' splits anchors by IoU and applies to retinanet only; got detector {self.detector}")
        if self.loss != "brl" and self.brl != BRLConfig():
            raise ValueError("brl applies to loss 'brl' only; set loss: brl or leave brl at its defaults")
        if self.detector not in ONE_STAGE_DETECTORS and self.unverified_weight != UNVERIFIED_WEIGHT:
            raise ValueError(f"unverified_weight applies to {', '.join(ONE_STAGE_DETECTORS)}; {self.detector} does "
                             f"not read it (leave it at {UNVERIFIED_WEIGHT})")
        if self.sampler != "random" and self.detector != "faster_rcnn":
            raise ValueError(f"sampler {self.sampler!r} applies to the RoI heads of faster_rcnn; got detector "
                             f"{self.detector} (leave sampler: random)")
        if self.sampler != "libra" and self.libra != LibraConfig():
            raise ValueError("libra applies to sampler 'libra' only; set sampler: libra or leave libra at its defaults")
        if self.pisa and self.detector not in ("faster_rcnn", "retinanet"):
            raise ValueError(f"pisa applies to faster_rcnn and retinanet; got detector {self.detector}")
        if set(self.pisa_parts) != set(PISA_PARTS) and (not self.pisa or self.detector != "faster_rcnn"):
            raise ValueError(f"pisa_parts selects parts of faster_rcnn's PISA and needs pisa: true (retinanet's "
                             f"PISA is ISR-P and CARL together); got {list(self.pisa_parts)} with pisa {self.pisa} "
                             f"and detector {self.detector}")
        if not self.pisa_parts or len(set(self.pisa_parts)) != len(self.pisa_parts):
            raise ValueError(f"pisa_parts must list distinct parts of {', '.join(PISA_PARTS)}; got {list(self.pisa_parts)}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        if self.head_convs is not None and self.detector == "faster_rcnn":
            raise ValueError("head_convs applies to the one-stage heads (fcos, retinanet), not to faster_rcnn")
        if self.anchor_sizes is not None and (len(self.anchor_sizes) != 5 or min(self.anchor_sizes) <= 0):
            raise ValueError(f"anchor_sizes must be 5 positive numbers (one per FPN level); got {list(self.anchor_sizes)}")
        return self


class DataConfig(_Section):
    """Where the COCO data lives. Paths are taken as written (relative to the working directory)."""

    train_annotations: str = Field(description="COCO JSON of the training set")
    train_images: str = Field(description="folder the training set's file_name fields are relative to")
    val_annotations: str | None = Field(None, description="COCO JSON of the validation set (null: no evaluation)")
    val_images: str | None = Field(None, description="image folder of the validation set")
    num_workers: Int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main process)")
    check_images: Bool = Field(False, description="decode every image file once before training (slow)")
    manifest: str | None = Field(
        None, description="curation manifest (detcurate balance): per-image sampling weights; null: each image once per epoch"
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if (self.val_annotations is None) != (self.val_images is None):
            raise ValueError("val_annotations and val_images must be given together (or both null)")
        return self


#: What ``augment.preset: strong`` sets when a field is not given (explicit values win). Sized for
#: small images and from-scratch training: colour jitter as torchvision's ColorJitter(0.4, 0.4, 0.4,
#: 0.05), zoom out and in by 2x within the model-size canvas, shifts of up to a tenth of the canvas,
#: mild noise, and copy-paste on half the images (DetGain, arXiv 2511.14197: selection overfits
#: without strong augmentation). Rotation stays 0: the box of a rotated box is larger than the object.
STRONG_DEFAULTS: dict[str, Any] = {
    "scale_range": (0.5, 1.5), "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.05,
    "translate": 0.1, "rotate": 0.0, "noise_std": 0.03, "copy_paste": 0.5,
}
#: Fields that only the strong preset uses: preset standard requires their defaults (so that a value
#: set there cannot silently go unused).
_STRONG_ONLY = ("hue", "translate", "rotate", "noise_std", "min_visible", "copy_paste", "copy_paste_max")


class AugmentConfig(_Section):
    """Training augmentations; each image draws its own parameters from (seed, stream position).

    ``preset``:

    - ``standard``: photometric jitter (brightness, contrast, saturation), resize to the model size
      times a ``scale_range`` factor (the output size varies), horizontal flip. Field defaults are
      its defaults; the strong-only fields must stay off.
    - ``strong`` (``curation_core.engine.augment``): colour jitter (brightness, contrast, saturation,
      hue, in that fixed order); zoom by a ``scale_range`` factor, shift by up to ``translate`` of the
      canvas and rotate by up to ``rotate`` degrees, all within a canvas of the model size (crop and
      zero pad), dropping boxes with less than ``min_visible`` of their area left; horizontal flip;
      Gaussian noise of ``noise_std``; and copy-paste of objects between the images of a batch
      (``copy_paste`` probability, up to ``copy_paste_max`` objects). Fields not given take the
      values of ``STRONG_DEFAULTS``; the resolved values are what ``config.yaml`` records.
    """

    preset: Literal["standard", "strong"] = Field("standard", description="standard or strong (see the class)")
    hflip: Float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")
    scale_range: tuple[Float, Float] = Field((1.0, 1.0), description="scale jitter: factor on the model size, [lo, hi]")
    brightness: Float = Field(0.0, ge=0.0, lt=1.0, description="brightness factor drawn from [1 - b, 1 + b]")
    contrast: Float = Field(0.0, ge=0.0, lt=1.0, description="contrast factor drawn from [1 - c, 1 + c]")
    saturation: Float = Field(0.0, ge=0.0, lt=1.0, description="saturation factor drawn from [1 - s, 1 + s]")
    hue: Float = Field(0.0, ge=0.0, le=0.5, description="strong: hue shift drawn from [-h, h] (fraction of the circle)")
    translate: Float = Field(0.0, ge=0.0, le=0.5, description="strong: shift drawn from [-t, t] x canvas width/height")
    rotate: Float = Field(0.0, ge=0.0, le=180.0, description="strong: rotation drawn from [-r, r] degrees")
    noise_std: Float = Field(0.0, ge=0.0, le=1.0, description="strong: std of Gaussian pixel noise (pixels in [0, 1])")
    min_visible: Float = Field(
        0.3, ge=0.0, le=1.0, description="strong: a box keeping less than this fraction of its area (crop, paste) is dropped"
    )
    copy_paste: Float = Field(0.0, ge=0.0, le=1.0, description="strong: probability that an image receives pasted objects")
    copy_paste_max: Int = Field(3, ge=1, description="strong: most objects pasted into one image")

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "strong":
            return {**STRONG_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        lo, hi = self.scale_range
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi; got {list(self.scale_range)}")
        if self.preset == "standard":
            fields = type(self).model_fields
            changed = [name for name in _STRONG_ONLY if getattr(self, name) != fields[name].default]
            if changed:
                raise ValueError(f"{', '.join(changed)} apply to preset 'strong' only; set preset: strong or "
                                 f"leave them at their defaults")
        return self


class OptimConfig(_Section):
    """Optimizer. ``lr`` is the peak learning rate, reached at the end of the warm-up."""

    name: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum) or adamw")
    lr: Float = Field(gt=0.0, description="peak learning rate")
    momentum: Float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    betas: tuple[Float, Float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: Float = Field(1e-4, ge=0.0, description="weight decay of conv/linear weights")
    weight_decay_norm: Float = Field(0.0, ge=0.0, description="weight decay of normalisation parameters and biases")
    clip_grad_norm: Float | None = Field(None, gt=0.0, description="clip the global gradient L2 norm (null: off)")


class ScheduleConfig(_Section):
    """Learning rate: linear warm-up from ``lr * warmup_factor`` to ``lr``, then step or cosine decay."""

    max_iter: Int = Field(ge=1, description="training iterations (one batch each)")
    policy: Literal["step", "cosine"] = Field("cosine", description="decay after the warm-up")
    warmup_iters: Int = Field(0, ge=0, description="iterations of linear warm-up")
    warmup_factor: Float = Field(0.001, gt=0.0, le=1.0, description="lr factor at iteration 0")
    steps: tuple[Int, ...] = Field((), description="step policy: iterations where lr is multiplied by gamma")
    gamma: Float = Field(0.1, gt=0.0, le=1.0, description="step policy: decay factor")
    min_lr_factor: Float = Field(0.0, ge=0.0, le=1.0, description="cosine policy: final lr as a fraction of lr")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.warmup_iters > self.max_iter:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) must be <= max_iter ({self.max_iter})")
        if list(self.steps) != sorted(set(self.steps)) or any(not 0 < s < self.max_iter for s in self.steps):
            raise ValueError(f"steps must be increasing iterations in (0, max_iter={self.max_iter}); got {list(self.steps)}")
        return self


class TrainSection(_Section):
    """Run settings. ``checkpoint_every``/``eval_every`` of 0 mean: only at the end."""

    output_dir: str = Field(description="folder of checkpoint.pt, config.yaml and metrics.json")
    batch_size: Int = Field(ge=1, description="images per iteration")
    seed: Int = Field(0, ge=0, description="seeds model initialisation, data order and augmentations")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N")
    amp: Literal["none", "fp16", "bf16"] = Field("none", description="mixed precision on CUDA (ignored on CPU)")
    deterministic: Bool = Field(False, description="deterministic algorithms (bitwise reproducible, slower on GPU)")
    num_threads: Int | None = Field(None, ge=1, description="torch CPU threads (null: torch's default)")
    checkpoint_every: Int = Field(0, ge=0, description="iterations between checkpoints")
    eval_every: Int = Field(0, ge=0, description="iterations between evaluations on the validation set")
    eval_batch_size: Int = Field(8, ge=1, description="images per inference batch during evaluation")

    @model_validator(mode="after")
    def _check(self) -> TrainSection:
        if not _DEVICE_PATTERN.match(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        return self


#: Valid ``curation.method`` values; the methods that need a teacher.
CurationMethod = Literal["none", "uniform", "loss", "loss_learnability", "image_ap", "detgain"]
TEACHER_METHODS = ("loss_learnability", "image_ap", "detgain")


class CurationConfig(_Section):
    """Online batch selection (Sun et al., arXiv 2511.14197): each step scores a super-batch of
    ``super_batch`` images and trains on the ``train.batch_size`` best (``curation_core.curation``).

    ``method``: none (train on the stream), uniform (random b of B), loss (highest student loss),
    loss_learnability (student loss minus teacher loss), image_ap (teacher minus student per-image
    AP), detgain (teacher minus student DetGain against each model's running state of D).
    """

    method: CurationMethod = Field("none", description="selection method (none: plain training)")
    super_batch: Int = Field(80, ge=1, description="images scored per selection (B)")
    estimator: Literal["exact", "uniform", "empirical", "envelope"] = Field(
        "empirical", description="DetGain estimator (envelope: the 101-point interpolation, online only)")
    rule: Literal["top", "sample"] = Field("top", description="top: the b best; sample: softmax(score / temperature)")
    temperature: Float = Field(1.0, gt=0.0, description="rule=sample: softmax temperature in score units")
    normalize_scores: Bool = Field(False, description="rule=sample: z-score the B scores before the softmax")
    teacher: str | None = Field(None, description="teacher checkpoint path or models:/NAME@ALIAS URI")
    score_thresh: Float = Field(0.05, ge=0.0, le=1.0, description="detections below this score are not scored")
    detections_per_img: Int = Field(100, ge=1, description="most detections per image used for scoring")
    window: Int | None = Field(2000, ge=1, description="DetGain state: keep the most recent N images (null: all)")
    decay: Float | None = Field(None, gt=0.0, lt=1.0, description="DetGain state: per-update weight decay (null: none)")
    warmup_iters: Int = Field(0, ge=0, description="plain steps (first b of each super-batch) before selection")
    stop_iter: Int | None = Field(None, ge=1, description="selection ends after this step; the later steps are "
                                  "plain, as in warm-up (null: to the end)")
    student_bn: Literal["eval", "batch"] = Field(
        "eval", description="student BatchNorm while scoring: running statistics (eval) or super-batch statistics")
    score_every: Int = Field(1, ge=1, description="score one super-batch every k steps and keep k*b of it")
    teacher_cache: Bool = Field(False, description="reuse the teacher's detections per image (geometric views)")

    @model_validator(mode="after")
    def _check(self) -> CurationConfig:
        if self.method in TEACHER_METHODS and self.teacher is None:
            raise ValueError(f"method {self.method!r} needs a teacher (curation.teacher: checkpoint or models:/ URI)")
        if self.teacher_cache and self.method not in ("detgain", "image_ap"):
            raise ValueError(f"teacher_cache applies to the teacher's detections (methods detgain, image_ap); "
                             f"method {self.method!r} uses none")
        if self.stop_iter is not None and self.stop_iter <= self.warmup_iters:
            raise ValueError(f"stop_iter ({self.stop_iter}) must be > warmup_iters ({self.warmup_iters}): "
                             f"no step would be curated")
        if self.estimator in ("exact", "envelope") and self.decay is not None:
            raise ValueError(f"estimator {self.estimator!r} needs equal image weights: set decay to null (use window)")
        return self


class TrainConfig(_Section):
    """A complete training run (see the module docstring for the sections)."""

    model: ModelConfig
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig
    schedule: ScheduleConfig
    train: TrainSection
    curation: CurationConfig = CurationConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        cur = self.curation
        if cur.method != "none" and cur.super_batch < self.train.batch_size * cur.score_every:
            raise ValueError(f"curation.super_batch ({cur.super_batch}) must be >= train.batch_size x "
                             f"curation.score_every ({self.train.batch_size} x {cur.score_every})")
        return self

    def flat_params(self) -> dict[str, str | int | float | bool]:
        """Every field under its dotted name (``"optim.lr"``), for logging as run parameters.

        Lists become comma-separated strings and null becomes ``"none"``.
        """
        return dict(_flatten(self.model_dump(mode="json")))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible form (what checkpoints store)."""
        return self.model_dump(mode="json")


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, str | int | float | bool]]:
    out: list[tuple[str, str | int | float | bool]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            out.append((name, ",".join(str(v) for v in value)))
        elif value is None:
            out.append((name, "none"))
        else:
            out.append((name, value))
    return out


# ----------------------------------------------------------------------------------------------
# Reading, overriding, writing


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training configuration and apply ``key.sub=value`` overrides.

    Raises
    ------
    ConfigError
        One line: ``"<file>: <field path>: <problem>; valid choices: ..."`` for a missing, unknown or
        invalid field, an unreadable file or malformed YAML.
    """
    source = str(path)
    raw = read_yaml_mapping(path, empty_ok=True, what="a mapping of sections")
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw, source=source)


def read_yaml_mapping(path: str | os.PathLike[str], *, empty_ok: bool = False, what: str = "a mapping") -> dict[str, Any]:
    """The top-level mapping of a YAML file (config files of training, robustness grids, active learning).

    ``empty_ok``: an empty file is ``{}`` (else an error). Raises ``ConfigError``, one line
    ``"<file>: <file>: <problem>"``: a missing or unreadable file, malformed YAML (with its line and
    column), a top level that is not ``what``.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: <file>: file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: <file>: cannot be read ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: <file>: malformed YAML{where}: {problem}") from None
    if raw is None and empty_ok:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: <file>: top level must be {what}; got {type(raw).__name__}")
    return raw


def config_from_dict(raw: dict[str, Any], *, source: str = "<memory>") -> TrainConfig:
    """Validate a configuration given as nested dicts (raises ``ConfigError`` like ``load_config``)."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write ``config`` as YAML, atomically; ``load_config`` reads it back to an equal config."""
    with atomic_write(path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key.sub=value (e.g. optim.lr=0.01)")
    parts = key.split(".")
    model: type[BaseModel] | None = TrainConfig
    node = raw
    for depth, part in enumerate(parts):
        fields = model.model_fields if model is not None else {}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"--set {key}: unknown field {part!r} in {where}; valid fields: {', '.join(fields)}")
        model = _section_type(fields[part].annotation)
        if depth == len(parts) - 1:
            break
        if model is None:
            raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if model is not None:
        raise ConfigError(f"--set {key}: is a whole section; set one of its fields ({', '.join(model.model_fields)})")
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = text


def _section_type(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _describe(exc: ValidationError, source: str) -> str:
    """One line for the first error of ``exc`` (and how many more there are)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    path = ".".join(loc) or "<top level>"
    kind = first["type"]
    if kind == "missing":
        problem = "missing required field"
    elif kind == "extra_forbidden":
        problem = f"unknown field; valid fields: {', '.join(_fields_at(loc[:-1]))}"
    elif kind == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        choices = ", ".join(re.findall(r"'([^']*)'", expected)) or expected
        problem = f"invalid value {first['input']!r}; valid choices: {choices}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        shown = first.get("input")
        got = "" if isinstance(shown, dict) or kind == "value_error" else f"; got {shown!r}"
        problem = f"{message}{got}"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{source}: {path}: {problem}{more}"


def _fields_at(loc: Sequence[str]) -> list[str]:
    model: type[BaseModel] | None = TrainConfig
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        model = _section_type(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []
