"""The rounds of simulated active learning: box-level (fine-grained) or image-level querying.

Following Desai & Balasubramanian, "Towards Fine-grained Sampling for Active Learning in Object
Detection" (CVPRW 2020):

1. round 0: a detector is trained on ``initial_images`` random images, fully labelled;
2. each later round predicts the images still open to queries at a low score threshold (the box pool,
   ``curation_core.active.pool``), picks ``budget`` boxes by a measure (``curation_core.active.measures``)
   and has the simulated annotator answer them (``curation_core.active.annotator``);
3. an image with at least one verified box joins the labelled set; its other predicted boxes above
   ``noisy_score_thresh`` join it as noisy labels (COCO ``"unverified": 1``), which the losses weigh by
   lambda_d (``model.unverified_weight``, the paper's dampened loss), and they stay in the pool for
   later rounds (refreshed from each round's detector); boxes answered background leave the pool and
   are no label. Its unqueried objects are unlabelled: with ``partial_background: loss`` (the paper's)
   the detector trains them as background; with ``ignore`` the image is written with
   ``"incomplete": 1``, and its negatives take no classification loss;
4. the detector is retrained (fine-tuned from the previous round, or from scratch), evaluated on the
   validation set, and the next round starts.

Image-level querying runs in the same loop: whole images are picked and fully labelled. Annotation
cost is counted in boxes: the ground-truth boxes of fully labelled images, one per box query (also
when the answer is background, or an object already labelled).

Output folder: ``round_R/`` per round (``labels.json``: the COCO training set of the round, with
``plan.json`` the labelling state it was made from, written before training; then the engine's
``checkpoint.pt``, ``config.yaml`` and ``metrics.json``) and ``state.json`` (written after every
completed round: the labelling state, the cost and the curve ``points`` of ``[boxes, AP]``). A killed
run continues at the last completed round: a round with a ``plan.json`` keeps its picks, and its
training resumes from its checkpoint. A folder continues only the configuration it was made with
(every field but ``rounds``; round 0 only ``ROUND0_FIELDS``); a field missing from a saved
configuration, written before the field existed, counts as its default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation_core.active.annotator import annotate_boxes, gt_boxes, pairwise_iou
from curation_core.active.config import ActiveLearningConfig, round_training_config
from curation_core.active.measures import fill_budget, pick_boxes, rank_images
from curation_core.active.pool import BoxPool, build_pool
from curation_core.coco import CocoDataset, dataset_from_dict, load_coco, read_json
from curation_core.engine.hooks import Hook
from curation_core.errors import ConfigError, DataError
from curation_core.io import write_json_atomic
from curation_core.progress import ProgressFn

STATE_NAME = "state.json"
PLAN_NAME = "plan.json"
LABELS_NAME = "labels.json"
#: Version of ``state.json`` and ``plan.json``.
STATE_VERSION = 1
#: The fields round 0 depends on: a round-0 folder may be shared by runs that differ only in the others
#: (the benchmark trains one initial detector per seed for every level, measure and partial_background:
#: round 0's images are fully labelled, so partial_background does not change it).
ROUND0_FIELDS = ("base", "train_annotations", "train_images", "val_annotations", "val_images", "seed",
                 "initial_images", "initial_iters", "unverified_weight")


@dataclass
class LabelState:
    """What the annotator has said so far.

    ``full``: fully labelled images; ``verified``: image id -> verified boxes (``box`` xyxy,
    ``category_id``, ``gt_id``); ``background``: image id -> boxes answered background (xyxy);
    ``noisy``: image id -> unverified predicted boxes kept as noisy labels (``box``, ``category_id``,
    ``score``); ``cost``: boxes labelled so far.
    """

    full: list[int] = field(default_factory=list)
    verified: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    background: dict[int, list[list[float]]] = field(default_factory=dict)
    noisy: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    cost: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"full": sorted(self.full), "verified": {str(k): v for k, v in sorted(self.verified.items())},
                "background": {str(k): v for k, v in sorted(self.background.items())},
                "noisy": {str(k): v for k, v in sorted(self.noisy.items())}, "cost": self.cost}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LabelState:
        return cls(full=[int(i) for i in raw["full"]], verified={int(k): v for k, v in raw["verified"].items()},
                   background={int(k): v for k, v in raw["background"].items()},
                   noisy={int(k): v for k, v in raw["noisy"].items()}, cost=int(raw["cost"]))

    def answered(self, image_id: int) -> np.ndarray:
        """(n, 4) xyxy boxes of ``image_id`` the annotator has answered (verified or background)."""
        boxes = [v["box"] for v in self.verified.get(image_id, [])] + self.background.get(image_id, [])
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def labelled_images(self) -> list[int]:
        return sorted(set(self.full) | {i for i, v in self.verified.items() if v})


@dataclass(frozen=True)
class ActiveLearningResult:
    """A finished run: ``points`` ``[[boxes, AP], ...]`` (one per round), and per round its details."""

    out_dir: Path
    points: list[list[float]]
    rounds: list[dict[str, Any]]


class _InitFrom(Hook):
    """Fine-tuning: a new round starts from the previous round's weights (not when it resumes)."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint

    def before_train(self) -> None:
        from curation_core.engine.checkpoint import load_checkpoint

        if self.trainer.iter == 0:
            self.trainer.model.load_state_dict(load_checkpoint(self.checkpoint)["model"])


def run_active_learning(config: ActiveLearningConfig, out_dir: str | os.PathLike[str], *,
                        source: str = "<active-learning config>", progress: ProgressFn | None = None,
                        hooks: Callable[[int], Sequence[Hook]] | None = None,
                        on_round: Callable[[dict[str, Any]], None] | None = None) -> ActiveLearningResult:
    """Run (or continue) the rounds of ``config`` in ``out_dir`` (module docstring).

    ``hooks(round)`` gives extra training hooks of a round; ``on_round(record)`` is called after every
    completed round with ``{"round", "boxes", "AP", "AP50", "images", "verified", "noisy", ...}``.

    Raises
    ------
    ConfigError
        ``out_dir`` holds a run of another configuration.
    DataError, CheckpointError
        Unreadable data or checkpoints (one line).
    """
    out = Path(out_dir)
    gt = load_coco(config.train_annotations)
    if not gt.images:
        raise DataError(f"{config.train_annotations}: <file>: the pool has no images")
    state, rounds = _load_state(config, out, source)
    for r in range(len(rounds), config.rounds + 1):
        round_dir = out / f"round_{r}"
        plan_path = round_dir / PLAN_NAME
        if plan_path.is_file():
            plan = read_json(plan_path)
            _check_same(config, plan.get("config"), ROUND0_FIELDS if r == 0 else None, where=plan_path, source=source)
            state, details = LabelState.from_dict(plan["state"]), plan["details"]
        else:
            state, details = (_initial_state(config, gt) if r == 0 else
                              _query_round(config, gt, state, out / f"round_{r - 1}", r, progress))
            write_labels(gt, state, round_dir / LABELS_NAME, incomplete=config.partial_background == "ignore")
            write_json_atomic(plan_path, {"version": STATE_VERSION, "round": r, "config": config.model_dump(mode="json"),
                                          "state": state.to_dict(), "details": details}, indent=1)
        stats = _train_round(config, r, round_dir, out, source, progress, list(hooks(r)) if hooks else [])
        record = {"round": r, "boxes": state.cost, "AP": stats["AP"], "AP50": stats["AP50"],
                  "images": len(state.labelled_images()), **details}
        rounds.append(record)
        write_json_atomic(out / STATE_NAME, {"version": STATE_VERSION, "config": config.model_dump(mode="json"),
                                             "state": state.to_dict(), "rounds": rounds}, indent=1)
        if on_round is not None:
            on_round(record)
    return ActiveLearningResult(out, [[r["boxes"], r["AP"]] for r in rounds], rounds)


def _load_state(config: ActiveLearningConfig, out: Path, source: str) -> tuple[LabelState, list[dict[str, Any]]]:
    path = out / STATE_NAME
    if not path.is_file():
        return LabelState(), []
    saved = read_json(path)
    _check_same(config, saved.get("config"), None, where=path, source=source)
    rounds = list(saved["rounds"])[: config.rounds + 1]
    return LabelState.from_dict(saved["state"]), rounds


def _check_same(config: ActiveLearningConfig, saved: dict[str, Any] | None, fields: Sequence[str] | None, *,
                where: Path, source: str) -> None:
    """``ConfigError`` naming the first field (of ``fields``; default all but ``rounds``, which a run may
    extend) in which ``config`` differs from the saved configuration (files without one pass)."""
    mine = config.model_dump(mode="json")
    if saved is None:
        return
    names = fields if fields is not None else [k for k in mine if k != "rounds"]
    defaults = {k: f.default for k, f in ActiveLearningConfig.model_fields.items() if not f.is_required()}
    # A field the saved file lacks predates it: that run had the field's default (behaviour unchanged).
    theirs = {k: saved.get(k, defaults.get(k)) for k in names}
    diff = next((k for k in names if theirs[k] != mine[k]), None)
    if diff is not None:
        raise ConfigError(f"{source}: {diff}: {where.parent} holds a run of another configuration ({diff} is "
                          f"{theirs[diff]!r} there); choose another --out")


def _initial_state(config: ActiveLearningConfig, gt: CocoDataset) -> tuple[LabelState, dict[str, Any]]:
    ids = sorted(int(img["id"]) for img in gt.images)
    rng = np.random.default_rng([config.seed, 0])
    chosen = sorted(int(i) for i in rng.choice(ids, size=min(config.initial_images, len(ids)), replace=False))
    cost = sum(len(gt_boxes(gt.annotations_by_image[i])[1]) for i in chosen)
    return LabelState(full=chosen, cost=cost), {"queried": 0, "objects": cost, "background": 0, "duplicates": 0,
                                                "pool": 0}


def _query_round(config: ActiveLearningConfig, gt: CocoDataset, previous: LabelState, previous_dir: Path, r: int,
                 progress: ProgressFn | None) -> tuple[LabelState, dict[str, Any]]:
    from curation_core.engine.predict import load_detector, predict_dataset

    state = LabelState.from_dict(previous.to_dict())  # a copy
    full = set(state.full)
    open_ids = [int(img["id"]) for img in gt.images if int(img["id"]) not in full]
    detector = load_detector(previous_dir / "checkpoint.pt", device=_device(config))
    _set_thresholds(detector.model, config.pool_score_thresh, config.pool_max_per_image * 4)
    subset = _subset(gt, open_ids)
    detections = predict_dataset(detector, subset, config.train_images, progress=progress) if open_ids else []
    answered = {i: state.answered(i) for i in open_ids}
    pool = build_pool(detections, open_ids, score_thresh=config.pool_score_thresh, nms_iou=config.pool_nms_iou,
                      max_per_image=config.pool_max_per_image, answered=answered, answered_iou=config.match_iou,
                      known_image_ids=[int(img["id"]) for img in gt.images])
    rng = np.random.default_rng([config.seed, r])
    if config.level == "image":
        return _query_images(config, gt, state, pool, open_ids, detector, rng)
    features = labelled = learnability = None
    if config.measure == "coreset":
        features, labelled = _box_features(detector, gt, config.train_images, pool, state)
    if config.measure == "detgain":
        learnability = _learnability(config, gt, state, detector, pool, progress)
    picks = pick_boxes(pool, config.measure, config.budget, rng=rng, features=features, labelled_features=labelled,
                       learnability=learnability)
    details = _annotate(config, gt, state, pool, picks)
    _refresh_noisy(config, state, pool, picks)
    return state, {**details, "pool": len(pool)}


def _query_images(config: ActiveLearningConfig, gt: CocoDataset, state: LabelState, pool: BoxPool,
                  open_ids: list[int], detector: Any, rng: np.random.Generator) -> tuple[LabelState, dict[str, Any]]:
    embeddings = labelled = None
    if config.measure == "coreset":
        from curation_core.offline.embeddings import backbone_embeddings

        everything = backbone_embeddings(detector, _subset(gt, open_ids + state.full), config.train_images)
        embeddings, labelled = everything[: len(open_ids)], everything[len(open_ids):]
    order = rank_images(config.measure, open_ids, rng=rng, pool=pool, embeddings=embeddings,
                        labelled_embeddings=labelled)
    costs = [len(gt_boxes(gt.annotations_by_image[i])[1]) for i in open_ids]
    chosen = fill_budget(order, costs, config.budget)
    spent = sum(costs[i] for i in chosen)
    state.full = sorted(set(state.full) | {open_ids[i] for i in chosen})
    state.cost += spent
    return state, {"queried": len(chosen), "objects": spent, "background": 0, "duplicates": 0, "pool": len(pool)}


def _annotate(config: ActiveLearningConfig, gt: CocoDataset, state: LabelState, pool: BoxPool,
              picks: np.ndarray) -> dict[str, Any]:
    objects = background = duplicates = 0
    for image_id in sorted({int(pool.image_ids[p]) for p in picks}):
        rows = [int(p) for p in picks if int(pool.image_ids[p]) == image_id]
        answers = annotate_boxes(pool.boxes[rows], gt.annotations_by_image[image_id], match_iou=config.match_iou)
        verified = state.verified.setdefault(image_id, [])
        for answer in answers:
            if not answer.is_object:
                state.background.setdefault(image_id, []).append([float(v) for v in answer.box])
                background += 1
            elif any(v["gt_id"] == answer.gt_id for v in verified):
                duplicates += 1  # a second query of an object already labelled: paid, adds nothing
            else:
                verified.append({"box": [float(v) for v in answer.box], "category_id": answer.category_id,
                                 "gt_id": answer.gt_id})
                objects += 1
        if not verified:
            del state.verified[image_id]
    state.cost += len(picks)
    return {"queried": int(len(picks)), "objects": objects, "background": background, "duplicates": duplicates}


def _refresh_noisy(config: ActiveLearningConfig, state: LabelState, pool: BoxPool, picks: np.ndarray) -> None:
    """Noisy labels of every box-level labelled image: its current unanswered pool boxes above the threshold."""
    picked = set(int(p) for p in picks)
    state.noisy = {}
    if config.noisy_score_thresh is None:
        return
    for image_id in state.verified:
        answered = state.answered(image_id)
        rows = [int(i) for i in pool.rows_of(image_id)
                if int(i) not in picked and pool.scores[i] >= config.noisy_score_thresh]
        if rows and len(answered):
            rows = [i for i, keep in zip(rows, pairwise_iou(pool.boxes[rows], answered).max(axis=1) < config.match_iou,
                                         strict=True) if keep]
        if rows:
            state.noisy[image_id] = [{"box": [float(v) for v in pool.boxes[i]], "category_id": int(pool.category_ids[i]),
                                      "score": float(pool.scores[i])} for i in rows]


def _learnability(config: ActiveLearningConfig, gt: CocoDataset, state: LabelState, student: Any, pool: BoxPool,
                  progress: ProgressFn | None) -> np.ndarray:
    """DetGain learnability of the pool boxes; D of each model: its detections on the fully labelled images."""
    from curation_core.active.measures import box_learnability, detection_counts, teacher_box_scores
    from curation_core.engine.predict import load_detector, predict_dataset
    from curation_core.matching import match_dataset

    assert config.teacher is not None  # the config requires it for detgain
    teacher = load_detector(config.teacher, device=_device(config))
    _set_thresholds(teacher.model, config.pool_score_thresh, config.pool_max_per_image * 4)
    labelled = _subset(gt, state.full)
    counts = {name: detection_counts(match_dataset(labelled, predict_dataset(model, labelled, config.train_images,
                                                                              progress=progress)))
              for name, model in (("teacher", teacher), ("student", student))}
    pooled = _subset(gt, sorted(set(pool.image_ids.tolist())))
    teacher_scores = teacher_box_scores(pool, predict_dataset(teacher, pooled, config.train_images, progress=progress))
    return box_learnability(pool, teacher_scores=teacher_scores, teacher_counts=counts["teacher"],
                            student_counts=counts["student"])


def _box_features(detector: Any, gt: CocoDataset, image_root: str, pool: BoxPool,
                  state: LabelState) -> tuple[np.ndarray, np.ndarray]:
    """RoI features of the pool boxes and of the verified boxes (Faster R-CNN)."""
    from curation_core.active.pool import roi_features
    from curation_core.engine.data import load_image, to_tensor

    ids = sorted(set(pool.image_ids.tolist()) | set(state.verified))
    pool_rows: list[np.ndarray] = [np.zeros(0)] * len(pool)
    labelled: list[np.ndarray] = []
    for image_id in ids:
        image = to_tensor(load_image(Path(image_root) / gt.image_index[image_id]["file_name"]))
        rows = pool.rows_of(image_id)
        verified = np.asarray([v["box"] for v in state.verified.get(image_id, [])]).reshape(-1, 4)
        feats = roi_features(detector.model, [image], [np.concatenate([pool.boxes[rows], verified])],
                             device=detector.device)[0]
        for k, row in enumerate(rows):
            pool_rows[int(row)] = feats[k]
        labelled.extend(feats[len(rows):])
    width = feats.shape[1] if ids else 0
    return (np.stack(pool_rows) if len(pool) else np.zeros((0, width)),
            np.stack(labelled) if labelled else np.zeros((0, width)))


def write_labels(gt: CocoDataset, state: LabelState, path: str | os.PathLike[str], *,
                 incomplete: bool = False) -> None:
    """Write the round's COCO training set: fully labelled images with their ground truth, box-level
    images with their verified boxes and their noisy labels (``"unverified": 1``); atomically.

    ``incomplete``: box-level images (not in ``state.full``) are written with ``"incomplete": 1`` (their
    other objects are unlabelled; ``partial_background: ignore``). Fully labelled images never are.
    """
    annotations: list[dict[str, Any]] = []
    full = set(state.full)
    for image_id in state.labelled_images():
        if image_id in full:
            boxes = [(a["bbox"], a["category_id"], 0) for a in gt.annotations_by_image[image_id] if not a["iscrowd"]]
        else:
            boxes = [(_xywh(v["box"]), v["category_id"], 0) for v in state.verified[image_id]]
            boxes += [(_xywh(v["box"]), v["category_id"], 1) for v in state.noisy.get(image_id, [])]
        for bbox, category_id, unverified in boxes:
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(category_id),
                   "bbox": [float(v) for v in bbox], "area": float(bbox[2]) * float(bbox[3]), "iscrowd": 0}
            if unverified:
                ann["unverified"] = 1
            annotations.append(ann)
    keep = set(state.labelled_images())
    images = [({**img, "incomplete": 1} if incomplete and int(img["id"]) not in full else img)
              for img in gt.images if int(img["id"]) in keep]
    write_json_atomic(path, {"images": images, "annotations": annotations, "categories": gt.categories})


def _train_round(config: ActiveLearningConfig, r: int, round_dir: Path, out: Path, source: str,
                 progress: ProgressFn | None, hooks: list[Hook]) -> dict[str, float]:
    from curation_core.engine.trainer import train

    train_config = round_training_config(config, round_index=r, output_dir=round_dir,
                                         train_annotations=str(round_dir / LABELS_NAME), source=source)
    if r > 0 and config.retrain == "finetune":
        hooks = [_InitFrom(out / f"round_{r - 1}" / "checkpoint.pt"), *hooks]
    result = train(train_config, hooks=hooks, resume=True, progress=progress)
    assert result.final_stats is not None  # round_training_config requires a validation set
    return result.final_stats.named()


def _set_thresholds(model: Any, score_thresh: float, detections: int) -> None:
    """Lower the detector's score threshold (high recall) for predicting the pool."""
    holder = model.roi_heads if hasattr(model, "roi_heads") else model
    holder.score_thresh = score_thresh
    holder.detections_per_img = max(int(holder.detections_per_img), detections)


def _device(config: ActiveLearningConfig) -> str:
    from curation_core.engine.config import load_config

    return load_config(config.base.config).train.device if "train.device" not in config.base.overrides \
        else str(config.base.overrides["train.device"])


def _subset(gt: CocoDataset, image_ids: Sequence[int]) -> CocoDataset:
    keep = [int(i) for i in image_ids]
    index = gt.image_index
    return dataset_from_dict({"images": [index[i] for i in keep],
                              "annotations": [a for i in keep for a in gt.annotations_by_image[i]],
                              "categories": gt.categories}, source=gt.source)


def _xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]
