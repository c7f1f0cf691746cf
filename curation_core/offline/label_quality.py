"""Likely label errors of a detection data set, from out-of-sample predictions.

In the spirit of cleanlab's object-detection scores (ObjectLab, Tkachenko et al., arXiv 2309.00832)
and FiftyOne's mistakenness: a detector that did not see an image's labels during training predicts
it, and where its confident predictions disagree with the labels, the labels are suspect. Four kinds
of error, each scored in [0, 1], **higher = more likely an error** (cleanlab's scores run the other way):

- ``missing`` (per prediction, and per image as the maximum): a confident prediction that matches no
  annotation, ``m(d) = q(d) * (1 - min(1, IoU_max(d) / IOU_MATCH))``, with ``IoU_max`` the largest
  IoU with any annotation of the image (any class; against a crowd box the intersection over the
  prediction's area);
- ``wrong_class`` (per annotation ``a`` of class ``c``): ``max(0, max q(d) - max q(d'))`` over the
  predictions ``d`` of another class and ``d'`` of class ``c`` with ``IoU(., a) >= IOU_MATCH``;
- ``badly_placed``: a confident same-class prediction near the box but not on it,
  ``max(0, max q(d) - max q(d) * IoU(d, a))`` over the same-class predictions with
  ``IoU(d, a) >= IOU_NEAR`` (the first maximum) and over all same-class predictions (the second);
- ``spurious``: nothing the detector sees supports the box,
  ``1 - max q(d) * min(1, IoU(d, a) / IOU_SUPPORT)`` over the predictions of any class (a confident
  prediction overlapping the box by ``IOU_SUPPORT`` says an object is there: the box is then at
  worst badly placed, not spurious).

``q(d)`` is the prediction's calibrated confidence: the precision of the detector's class-``c``
predictions at that score, fitted on the data itself (each prediction is a hit when it matches an
annotation of its class at IoU >= ``IOU_MATCH``, one-to-one by descending score, as COCO does)
by isotonic regression of hit on score (``scipy.optimize.isotonic_regression``), so that 0.3 from
one class and 0.3 from another mean the same and a detector's uncalibrated scores do not matter.
Classes with fewer than ``MIN_CALIBRATION`` predictions use the fit over all classes.

An annotation's score is the largest of its three, its kind the argmax; an image's score is the
largest of its missing score and its annotations' scores. Crowd annotations are never scored. The
predictions must be out-of-sample (k-fold or a held-out half): predictions of a model trained on
these labels reproduce their errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset, boxes_xywh
from curation_core.matching import bbox_iou

#: IoU at which a prediction explains an annotation (COCO's loosest threshold).
IOU_MATCH = 0.5
#: IoU above which a same-class prediction is "near" an annotation (badly placed boxes).
IOU_NEAR = 0.1
#: IoU from which a prediction fully supports that an object lies under an annotation (spurious boxes).
IOU_SUPPORT = 0.3
#: Fewest predictions of a class for a calibration of its own.
MIN_CALIBRATION = 20
#: The kinds, in the order of ties (the first wins).
ANNOTATION_KINDS = ("wrong_class", "badly_placed", "spurious")
KINDS = ("missing", *ANNOTATION_KINDS)


@dataclass(frozen=True)
class AnnotationScore:
    """Scores of one annotation: ``score`` = max of ``kind_scores``, ``kind`` its argmax; ``evidence``:
    the category id of the most confident other-class prediction on it (``None`` if none)."""

    annotation_id: int
    image_id: int
    category_id: int
    score: float
    kind: str
    kind_scores: dict[str, float]
    suggested_category_id: int | None


@dataclass(frozen=True)
class ImageScore:
    """Scores of one image: ``score`` = max of ``kind_scores`` (the missing score and, per annotation
    kind, the largest annotation score of that kind); ``kind`` its argmax."""

    image_id: int
    score: float
    kind: str
    kind_scores: dict[str, float]
    num_annotations: int


@dataclass(frozen=True)
class LabelQualityReport:
    """Everything ``find_label_errors`` computed.

    Attributes
    ----------
    images : one per image of the data set, in file order.
    annotations : one per non-crowd annotation, in file order.
    predictions_in : the predictions as given; ``prediction_missing`` float (P,) their missing-box
        scores and ``prediction_confidence`` float (P,) their calibrated confidences ``q``.
    """

    images: tuple[ImageScore, ...]
    annotations: tuple[AnnotationScore, ...]
    predictions_in: tuple[dict[str, Any], ...]
    prediction_missing: np.ndarray
    prediction_confidence: np.ndarray
    calibration: dict[int, dict[str, Any]] = field(default_factory=dict)

    def ranked_images(self, kind: str | None = None) -> list[ImageScore]:
        """Images by descending score (of ``kind`` if given), ties by image id."""
        key = (lambda i: i.score) if kind is None else (lambda i: i.kind_scores[kind])
        return sorted(self.images, key=lambda i: (-key(i), i.image_id))

    def ranked_annotations(self, kind: str | None = None) -> list[AnnotationScore]:
        """Annotations by descending score (of ``kind`` if given), ties by annotation id."""
        key = (lambda a: a.score) if kind is None else (lambda a: a.kind_scores[kind])
        return sorted(self.annotations, key=lambda a: (-key(a), a.annotation_id))

    def missing_boxes(self, *, min_score: float = 0.5) -> list[dict[str, Any]]:
        """Predictions with a missing-box score >= ``min_score``, as COCO results with ``"missing_score"``,
        by descending score: candidate boxes for an annotator."""
        picks = np.flatnonzero(self.prediction_missing >= min_score)
        out = [{**self.predictions_in[i], "missing_score": float(self.prediction_missing[i])} for i in picks]
        return sorted(out, key=lambda d: -d["missing_score"])


def calibrate(scores: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) fit of ``hits`` (0/1) on ``scores``: the knots ``(x, y)``, x ascending.

    ``np.interp(s, x, y)`` is then the calibrated precision at score ``s`` (constant beyond the ends).
    """
    from scipy.optimize import isotonic_regression

    order = np.argsort(scores, kind="stable")
    x, y = np.asarray(scores, dtype=np.float64)[order], np.asarray(hits, dtype=np.float64)[order]
    if x.size == 0:
        return np.zeros(1), np.zeros(1)
    fit = isotonic_regression(y, increasing=True).x
    return x, fit


def _hits(gt: CocoDataset, per_image: dict[int, list[int]], detections: Sequence[dict[str, Any]]) -> np.ndarray:
    """1 where a prediction matches a same-class, not yet matched annotation at IoU >= IOU_MATCH
    (greedy by descending score within each image and class), else 0."""
    hits = np.zeros(len(detections), dtype=np.float64)
    for image_id, indices in per_image.items():
        anns = [a for a in gt.annotations_by_image[image_id] if not a["iscrowd"]]
        for cid in {detections[i]["category_id"] for i in indices}:
            mine = sorted((i for i in indices if detections[i]["category_id"] == cid),
                          key=lambda i: -detections[i]["score"])
            targets = [a for a in anns if a["category_id"] == cid]
            if not targets:
                continue
            iou = bbox_iou(boxes_xywh([detections[i] for i in mine]), boxes_xywh(targets), np.zeros(len(targets)))
            free = np.ones(len(targets), dtype=bool)
            for row, i in enumerate(mine):
                cand = np.where(free & (iou[row] >= IOU_MATCH), iou[row], -1.0)
                if cand.max(initial=-1.0) >= IOU_MATCH:
                    free[int(np.argmax(cand))] = False
                    hits[i] = 1.0
    return hits


def calibrated_confidence(gt: CocoDataset, detections: Sequence[dict[str, Any]],
                          per_image: dict[int, list[int]]) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """``q`` of every prediction (module docstring), float (P,), and per class the fit's summary."""
    scores = np.asarray([d["score"] for d in detections], dtype=np.float64)
    classes = np.asarray([d["category_id"] for d in detections], dtype=np.int64)
    hits = _hits(gt, per_image, detections)
    q = np.zeros(len(detections))
    pooled = calibrate(scores, hits)
    summary: dict[int, dict[str, Any]] = {}
    for cid in gt.category_ids:
        mask = classes == cid
        own = int(mask.sum()) >= MIN_CALIBRATION
        x, y = calibrate(scores[mask], hits[mask]) if own else pooled
        q[mask] = np.interp(scores[mask], x, y)
        summary[cid] = {"predictions": int(mask.sum()), "hits": int(hits[mask].sum()), "own_fit": own}
    return q, summary


def find_label_errors(gt: CocoDataset, detections: Sequence[dict[str, Any]]) -> LabelQualityReport:
    """Score every image and annotation of ``gt`` for likely label errors (see the module docstring).

    Parameters
    ----------
    gt : the labels to check (validated COCO; boxes xywh, absolute pixels).
    detections : out-of-sample COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``)
        of images of ``gt`` (``curation_core.coco.validate_detections`` checks them).
    """
    per_image: dict[int, list[int]] = {img["id"]: [] for img in gt.images}
    for i, d in enumerate(detections):
        per_image[d["image_id"]].append(i)
    q, summary = calibrated_confidence(gt, detections, per_image)
    missing = np.zeros(len(detections))
    images, annotations = [], []
    for img in gt.images:
        idx = per_image[img["id"]]
        anns = gt.annotations_by_image[img["id"]]
        scored = _score_image(anns, [detections[i] for i in idx], q[idx])
        missing[idx] = scored[0]
        annotations += scored[1]
        kind_scores = {"missing": float(scored[0].max(initial=0.0))}
        for kind in ANNOTATION_KINDS:
            kind_scores[kind] = max((a.kind_scores[kind] for a in scored[1]), default=0.0)
        kind = max(KINDS, key=lambda k: kind_scores[k])  # first of KINDS on ties
        images.append(ImageScore(image_id=img["id"], score=kind_scores[kind], kind=kind, kind_scores=kind_scores,
                                 num_annotations=len(scored[1])))
    return LabelQualityReport(images=tuple(images), annotations=tuple(annotations),
                              predictions_in=tuple(detections), prediction_missing=missing,
                              prediction_confidence=q, calibration=summary)


def _score_image(anns: list[dict[str, Any]], dets: list[dict[str, Any]],
                 q: np.ndarray) -> tuple[np.ndarray, list[AnnotationScore]]:
    """(missing score per prediction (P,), scores of the non-crowd annotations) of one image."""
    crowd = np.asarray([bool(a["iscrowd"]) for a in anns])
    iou = bbox_iou(boxes_xywh(dets), boxes_xywh(anns), crowd)  # (P, A)
    best = iou.max(axis=1, initial=0.0)
    missing = q * (1.0 - np.minimum(1.0, best / IOU_MATCH))
    det_class = np.asarray([d["category_id"] for d in dets], dtype=np.int64)
    out = []
    for j, ann in enumerate(anns):
        if ann["iscrowd"]:
            continue
        col, same = iou[:, j], det_class == ann["category_id"]
        on_box = col >= IOU_MATCH
        other = np.where(on_box & ~same, q, 0.0)
        wrong = max(0.0, other.max(initial=0.0) - np.where(on_box & same, q, 0.0).max(initial=0.0))
        near = np.where(same & (col >= IOU_NEAR), q, 0.0).max(initial=0.0)
        placed = max(0.0, near - np.where(same, q * col, 0.0).max(initial=0.0))
        support = (q * np.minimum(1.0, col / IOU_SUPPORT)).max(initial=0.0)
        scores = {"wrong_class": float(wrong), "badly_placed": float(placed), "spurious": float(1.0 - support)}
        kind = max(ANNOTATION_KINDS, key=lambda k: scores[k])
        suggested = int(det_class[int(np.argmax(other))]) if other.max(initial=0.0) > 0 else None
        out.append(AnnotationScore(annotation_id=ann["id"], image_id=ann["image_id"], category_id=ann["category_id"],
                                   score=scores[kind], kind=kind, kind_scores=scores, suggested_category_id=suggested))
    return missing, out
