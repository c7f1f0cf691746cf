"""The trainer's batch selector: score a super-batch with the teacher and the student, keep the best.

``OnlineCurator.choose`` runs, without gradients and under the training autocast, the forward passes
the method needs (``Needs``) on the B images of a super-batch, scores them, folds them into the method's
state and keeps ``count`` of them by ``curation.rule``. The trainer then trains on the kept images with
its usual loss, optimizer and schedule: only the data changes.

How the student is scored (``curation.student_bn``):

- ``eval`` (default): the student in eval mode, BatchNorm with its running statistics, i.e. exactly the
  model that is evaluated. Early in from-scratch training the running statistics lag the weights.
- ``batch``: BatchNorm normalises with the super-batch's own statistics, as in a training step, while
  the running buffers stay untouched (momentum set to 0 for the pass, ``num_batches_tracked`` restored).

The teacher is always in eval mode. Scoring reads detections with ``curation.score_thresh`` and
``curation.detections_per_img`` (the models' own thresholds are restored afterwards).

Teacher cache (``curation.teacher_cache``, a cost control): the teacher's detections on every stored
training image are computed once when training starts (``teacher_detections_by_image``); a scored
view that is an axis-aligned resize/crop/flip of its stored image (``target["view"]``) gets those boxes
mapped into it and clipped, instead of a teacher forward pass. Views without a ``view`` (rotated, or
with objects pasted in) still run the teacher. The mapped boxes equal what the teacher would output on
the view if it were equivariant to those transforms and blind to photometric jitter, which a CNN only
approximately is: the cache trades that approximation for one teacher pass per image instead of one
per scored view. Teacher losses (``loss_learnability``) always need the forward pass.

Randomness: the generator of a selection is ``default_rng([seed, SELECT_DOMAIN, event])``, a function
of the scoring event, so it needs no state in the checkpoint and is the same on every rank.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from curation_core.curation.base import ScoredBatch, Selector
from curation_core.curation.distributed import Communicator, SingleProcess
from curation_core.curation.methods import build_selector
from curation_core.detgain.selection import select_batch
from curation_core.losses.per_image import score_forward

#: Seed-sequence domain of the selection generator (data order and augmentation use 0 and 1, copy-paste 2).
SELECT_DOMAIN = 3


@dataclass(frozen=True)
class Choice:
    """The outcome of one scoring event.

    Attributes
    ----------
    indices : (count,) int64 positions in the super-batch of the kept images, in selection order.
    keys, image_ids : (B,) int64 stream positions and image ids of the whole super-batch.
    scores : (B,) float64 every image's score (higher = more useful).
    seconds : wall time of "teacher", "student" (forward passes), "scoring" (method, state, rule).
    """

    indices: np.ndarray
    keys: np.ndarray
    image_ids: np.ndarray
    scores: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def picked(self) -> np.ndarray:
        """(B,) bool: kept images."""
        mask = np.zeros(self.keys.size, dtype=bool)
        mask[self.indices] = True
        return mask


@contextlib.contextmanager
def scoring_mode(model: nn.Module, student_bn: str) -> Iterator[None]:
    """Eval mode for a scoring pass; with ``student_bn="batch"`` BatchNorm uses batch statistics and
    leaves its buffers as they were. The previous modes are restored afterwards."""
    was_training = model.training
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if student_bn == "batch" else []
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged, bit for bit
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)


def _detection_holder(model: nn.Module) -> nn.Module:
    """The module holding ``score_thresh`` / ``detections_per_img`` (RoI heads for Faster R-CNN)."""
    return model.roi_heads if hasattr(model, "roi_heads") else model


@contextlib.contextmanager
def detection_settings(model: nn.Module, *, score_thresh: float, detections_per_img: int) -> Iterator[None]:
    """Temporarily set a torchvision detector's score threshold and detections per image."""
    holder = _detection_holder(model)
    saved = holder.score_thresh, holder.detections_per_img
    holder.score_thresh, holder.detections_per_img = score_thresh, detections_per_img
    try:
        yield
    finally:
        holder.score_thresh, holder.detections_per_img = saved


class OnlineCurator:
    """Scores super-batches and keeps the best images (see the module docstring).

    Parameters
    ----------
    config : the ``curation`` section (``CurationConfig``).
    teacher : the fixed teacher (eval mode, on ``device``), or None for methods that need none.
    category_ids : label ``l`` is ``category_ids[l - 1]``.
    device, amp : where and with which autocast the forward passes run (those of training).
    seed : the run's seed (selection generator).
    communicator : DDP gather (default: a single process).
    """

    def __init__(self, config: Any, *, teacher: nn.Module | None, category_ids: Sequence[int], device: torch.device,
                 amp: str = "none", seed: int = 0, communicator: Communicator | None = None,
                 teacher_cache: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
        self.config = config
        self.selector: Selector = build_selector(config)
        if self.selector.needs.teacher and teacher is None:
            raise ValueError(f"OnlineCurator(teacher=) expects a teacher model for method {config.method!r}; got None.")
        self.teacher = teacher.eval() if teacher is not None else None
        self.category_ids = list(category_ids)
        self.device, self.amp, self.seed = device, amp, seed
        self.comm = communicator or SingleProcess()
        self.events = 0
        self.teacher_cache = teacher_cache

    def choose(self, student: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], *,
               count: int, event: int) -> Choice:
        """Score the super-batch ``images``/``targets`` (on ``device``) and keep ``count`` images.

        Under DDP every rank passes the whole super-batch, scores its share ``comm.share(B)`` and gets
        the same global choice.
        """
        keys = np.array([int(t["position"]) for t in targets], dtype=np.int64)
        image_ids = np.array([int(t["image_id"]) for t in targets], dtype=np.int64)
        share = self.comm.share(len(images))
        outputs, seconds = self._forward(student, images[share], targets[share])
        start = time.perf_counter()
        choice = self.decide(keys, image_ids, [{k: v.cpu() for k, v in t.items()} for t in targets[share]], outputs,
                             count=count, event=event)
        seconds["scoring"] = time.perf_counter() - start
        return Choice(indices=choice.indices, keys=keys, image_ids=image_ids, scores=choice.scores, seconds=seconds)

    def decide(self, keys: np.ndarray, image_ids: np.ndarray, share_targets: Sequence[dict[str, torch.Tensor]],
               outputs: dict[str, Any], *, count: int, event: int) -> Choice:
        """The selection from this rank's model outputs: score the share, gather, update, apply the rule.

        ``keys``/``image_ids``: (B,) of the whole super-batch; ``share_targets`` and ``outputs`` (keyword
        arguments of ``ScoredBatch``: ``student_losses``, ``teacher_detections``, ...) cover ``comm.share(B)``.
        """
        rng = np.random.default_rng([self.seed, SELECT_DOMAIN, event])
        share = self.comm.share(keys.size)
        batch = ScoredBatch(keys=keys[share], image_ids=image_ids[share], targets=share_targets,
                            category_ids=self.category_ids, rng=rng, offset=share.start, total=keys.size, **outputs)
        local, payload = self.selector.score(batch)
        scores, payloads = self.comm.gather_scores(local, payload)
        self.selector.update(payloads)
        chosen = select_batch(self._rule_scores(scores), count, method=self.config.rule,
                              temperature=self.config.temperature, rng=rng)
        self.events += 1
        return Choice(indices=chosen.indices, keys=keys, image_ids=image_ids, scores=scores)

    def _rule_scores(self, scores: np.ndarray) -> np.ndarray:
        if self.config.rule == "sample" and self.config.normalize_scores and scores.size > 1:
            spread = scores.std()
            return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)
        return scores

    def _forward(self, student: nn.Module, images: list[torch.Tensor],
                 targets: list[dict[str, torch.Tensor]]) -> tuple[dict[str, Any], dict[str, float]]:
        needs, cfg = self.selector.needs, self.config
        outputs: dict[str, Any] = {}
        seconds = {"teacher": 0.0, "student": 0.0}
        runs = [("student", student, needs.student_losses, needs.student_detections, cfg.student_bn),
                ("teacher", self.teacher, needs.teacher_losses, needs.teacher_detections, "eval")]
        for role, model, want_losses, want_dets, bn in runs:
            if not (want_losses or want_dets):
                continue
            start = time.perf_counter()
            cached = self._cached(images, targets) if role == "teacher" and not want_losses else {}
            todo = [i for i in range(len(images)) if i not in cached]
            out = None
            if todo:
                with scoring_mode(model, bn), detection_settings(model, score_thresh=cfg.score_thresh,
                                                                  detections_per_img=cfg.detections_per_img), \
                        _autocast(self.device, self.amp):
                    out = score_forward(model, [images[i] for i in todo], [targets[i] for i in todo],
                                        losses=want_losses, detections=want_dets)
            if want_losses:
                assert out is not None
                outputs[f"{role}_losses"] = out.losses.detach().double().cpu().numpy()
            if want_dets:
                computed = dict(zip(todo, out.detections if out is not None else [], strict=True))
                outputs[f"{role}_detections"] = [_to_cpu(cached[i] if i in cached else computed[i])
                                                 for i in range(len(images))]
            seconds[role] = time.perf_counter() - start
        return outputs, seconds

    def _cached(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[int, Any]:
        """Teacher detections of the views the cache can serve, mapped into each view (see the docstring)."""
        if self.teacher_cache is None:
            return {}
        out = {}
        for i, (image, target) in enumerate(zip(images, targets, strict=True)):
            stored = self.teacher_cache.get(int(target["image_id"]))
            if stored is not None and "view" in target:
                out[i] = map_detections(stored, target["view"].cpu(), width=image.shape[-1], height=image.shape[-2])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.config.method, "events": self.events, "selector": self.selector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.config.method:
            raise ValueError(f"OnlineCurator.load_state_dict(state=) expects method {self.config.method!r}; "
                             f"got {state.get('method')!r}.")
        self.events = int(state["events"])
        self.selector.load_state_dict(state["selector"])


def _to_cpu(detections: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() if k != "labels" else v.cpu() for k, v in detections.items()}


def map_detections(detections: dict[str, torch.Tensor], view: torch.Tensor, *, width: int,
                   height: int) -> dict[str, torch.Tensor]:
    """Detections on a stored image (xyxy) -> on its view (``engine.data.make_view``), clipped to the
    ``width`` x ``height`` view as the detector clips its own boxes; boxes wholly outside are dropped."""
    from curation_core.engine.data import map_boxes

    boxes = map_boxes(detections["boxes"], view)
    keep = (boxes[:, 2] >= 0) & (boxes[:, 0] <= width) & (boxes[:, 3] >= 0) & (boxes[:, 1] <= height)
    boxes = boxes[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0.0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0.0, height)
    return {"boxes": boxes, "scores": detections["scores"][keep], "labels": detections["labels"][keep]}


def teacher_detections_by_image(teacher: nn.Module, config: Any, category_ids: Sequence[int], device: torch.device,
                                progress: Any = None) -> dict[int, dict[str, torch.Tensor]]:
    """The teacher's detections (labels 1..K, xyxy pixels of the stored image) on every training image,
    with the scoring thresholds of ``config.curation``, for ``teacher_cache``."""
    from curation_core.coco import load_coco
    from curation_core.engine.data import DetectionDataset, make_loader
    from curation_core.engine.predict import detect_batches

    gt = load_coco(config.data.train_annotations)
    dataset = DetectionDataset(gt, config.data.train_images, category_ids=category_ids)
    loader = make_loader(dataset, batch_size=config.train.eval_batch_size, num_workers=config.data.num_workers,
                         seed=0, pin_memory=device.type == "cuda")
    batches = ((images, [int(t["image_id"]) for t in targets]) for images, targets in loader)
    cache: dict[int, dict[str, torch.Tensor]] = {}
    cur = config.curation
    with detection_settings(teacher, score_thresh=cur.score_thresh, detections_per_img=cur.detections_per_img):
        for outputs, ids in detect_batches(teacher, batches, device=device, amp=config.train.amp):
            cache.update(zip(ids, outputs, strict=True))
    teacher.eval()
    return cache


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    from curation_core.engine.predict import autocast

    return autocast(device, amp)


def load_teacher(reference: str, *, category_ids: Sequence[int], category_names: Sequence[str],
                 device: torch.device, resolve_uri: Any = None) -> nn.Module:
    """The teacher detector of ``curation.teacher`` in eval mode on ``device``.

    ``reference`` is a checkpoint path, or a ``models:/NAME@ALIAS`` URI that ``resolve_uri`` (handed in
    by the tracking layer; the core does not import MLflow) turns into a local checkpoint path. Its
    categories must be the student's (ids and names), else ``CheckpointError``.
    """
    from curation_core.engine.checkpoint import check_same_categories
    from curation_core.engine.predict import load_detector
    from curation_core.errors import ConfigError

    path = reference
    if reference.startswith("models:/"):
        if resolve_uri is None:
            raise ConfigError(f"curation.teacher: {reference} is a model registry URI; it needs MLflow (install the "
                              f"tracking extra and run `detcurate train`) or give a checkpoint path")
        path = str(resolve_uri(reference))
    detector = load_detector(path, device=device)
    check_same_categories({"category_ids": detector.category_ids, "category_names": detector.category_names},
                          [{"id": i, "name": n} for i, n in zip(category_ids, category_names, strict=True)],
                          source=f"curation.teacher {reference}", checkpoint_path="the student's training set")
    return detector.model.eval()


def build_curator(config: Any, category_ids: Sequence[int], category_names: Sequence[str], device: torch.device, *,
                  resolve_uri: Any = None) -> OnlineCurator:
    """The ``OnlineCurator`` of a ``TrainConfig`` (teacher loaded if the method needs one), in the
    current process group if there is one."""
    from curation_core.curation.distributed import communicator

    cur = config.curation
    selector_needs = build_selector(cur).needs
    teacher = None
    if selector_needs.teacher:
        teacher = load_teacher(cur.teacher, category_ids=category_ids, category_names=category_names, device=device,
                               resolve_uri=resolve_uri)
    cache = None
    if cur.teacher_cache and selector_needs.teacher_detections:
        cache = teacher_detections_by_image(teacher, config, category_ids, device)
    return OnlineCurator(cur, teacher=teacher, category_ids=category_ids, device=device, amp=config.train.amp,
                         seed=config.train.seed, communicator=communicator(), teacher_cache=cache)
