"""Informativeness measures of active learning, at box level and at image level.

Box level (Desai & Balasubramanian, "Towards Fine-grained Sampling for Active Learning in Object
Detection", CVPRW 2020): each round the ``k`` most informative boxes of the pool are queried.

- ``random``: ``k`` boxes uniformly at random (seeded);
- ``uncertainty``: classification uncertainty ``1 - max_c p(c | box)``, highest first (the pool's
  score is the largest class probability, ``curation_core.active.pool``);
- ``coreset``: k-center greedy (Sener & Savarese, arXiv 1708.00489) on box features, the labelled
  boxes' features as the initial centres. The paper uses RoI features of Faster R-CNN and has no
  box-level core-set for RetinaNet (a one-stage detector has no per-box feature); so here too.
- ``detgain`` (beyond the paper): the box's learnability in the sense of DetGain (Sun et al., arXiv
  2511.14197), its expected marginal contribution to the dataset-level mAP of a teacher minus that of
  the student. Under model m with running set D_m (m's detections on the fully labelled images: true
  and false positives per category and IoU threshold, and the ground-truth counts), a box of class c
  and score s adds ``tp_gain(s)`` if it is an object and ``fp_gain(s)`` (<= 0) if not (the closed
  forms of ``curation_core.detgain.uniform``, averaged over the IoU thresholds). Its label is what the
  annotator would say, unknown before the query, so each model's gain is the expectation with the
  model's own probability that the box is an object: ``p tp_gain(p) + (1 - p) fp_gain(p)``, with p the
  student's score for the student and, for the teacher, the score of the teacher's best detection of
  the same class at IoU >= 0.5 with the box (0 when it has none). High learnability: boxes the teacher
  is confident about and the student is not.

Image level (the baselines, in the same framework): whole images are queried and fully annotated,
``random``; mean ``uncertainty`` of the image's pool boxes (an image without pool boxes scores 0);
``coreset`` on image features (pooled FPN features, ``curation_core.offline.embeddings``), the labelled
images as the initial centres. Images are taken in order until their ground-truth boxes reach the
round's box budget (the cost of an image is its number of boxes).

Scores follow "higher = query first". The k-center greedy is ``curation_core.offline.diversity``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation_core.active.annotator import pairwise_iou
from curation_core.active.pool import BoxPool, xywh_to_xyxy
from curation_core.offline.diversity import k_center_greedy

BOX_MEASURES = ("random", "uncertainty", "coreset", "detgain")
IMAGE_MEASURES = ("random", "uncertainty", "coreset")


def box_uncertainty(pool: BoxPool) -> np.ndarray:
    """``1 - max class probability`` per pool box, float64 (P,) in [0, 1] (higher = more uncertain)."""
    return 1.0 - np.asarray(pool.scores, dtype=np.float64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``min(k, n)`` largest scores, largest first; ties go to the lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    if k < 0:
        raise ValueError(f"top_k(k=) expects an integer >= 0; got {k}.")
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)


def pick_boxes(pool: BoxPool, measure: str, k: int, *, rng: np.random.Generator,
               features: np.ndarray | None = None, labelled_features: np.ndarray | None = None,
               learnability: np.ndarray | None = None) -> np.ndarray:
    """Rows of the ``min(k, len(pool))`` pool boxes to query, in pick order.

    Parameters
    ----------
    measure : random, uncertainty or coreset.
    features : coreset: (P, D) features of the pool boxes.
    labelled_features : coreset: (L, D) features of the boxes already labelled (initial centres).
    learnability : detgain: (P,) ``box_learnability`` of the pool boxes.
    """
    if measure == "random":
        return rng.permutation(len(pool))[:k].astype(np.int64)
    if measure == "uncertainty":
        return top_k(box_uncertainty(pool), k)
    if measure == "coreset":
        if features is None or len(features) != len(pool):
            raise ValueError(f"pick_boxes(features=) expects ({len(pool)}, D) box features for coreset; got "
                             f"{None if features is None else np.shape(features)}.")
        return coreset_order(features, labelled_features, k)
    if measure == "detgain":
        if learnability is None or len(learnability) != len(pool):
            raise ValueError(f"pick_boxes(learnability=) expects ({len(pool)},) values for detgain; got "
                             f"{None if learnability is None else np.shape(learnability)}.")
        return top_k(learnability, k)
    raise ValueError(f"pick_boxes(measure=) expects one of {', '.join(BOX_MEASURES)}; got {measure!r}.")


def coreset_order(candidates: np.ndarray, labelled: np.ndarray | None, k: int) -> np.ndarray:
    """k-center greedy picks among ``candidates`` (n, D) with ``labelled`` (L, D) as initial centres."""
    candidates = np.asarray(candidates, dtype=np.float64)
    if labelled is None or len(labelled) == 0:
        return k_center_greedy(candidates, k)
    both = np.concatenate([np.asarray(labelled, dtype=np.float64).reshape(-1, candidates.shape[1]), candidates])
    picks = k_center_greedy(both, k, initial=range(len(labelled)))
    return (picks - len(labelled)).astype(np.int64)


def image_uncertainty(pool: BoxPool, image_ids: Sequence[int]) -> np.ndarray:
    """Mean ``1 - max class probability`` of each image's pool boxes, (N,) float64; 0 without boxes."""
    total: dict[int, float] = {}
    count: dict[int, int] = {}
    for image_id, u in zip(pool.image_ids.tolist(), box_uncertainty(pool).tolist(), strict=True):
        total[image_id] = total.get(image_id, 0.0) + u
        count[image_id] = count.get(image_id, 0) + 1
    return np.asarray([total.get(int(i), 0.0) / count[int(i)] if int(i) in count else 0.0 for i in image_ids])


def rank_images(measure: str, image_ids: Sequence[int], *, rng: np.random.Generator, pool: BoxPool | None = None,
                embeddings: np.ndarray | None = None, labelled_embeddings: np.ndarray | None = None) -> np.ndarray:
    """Positions into ``image_ids`` (candidate images), most informative first (every candidate once).

    ``uncertainty`` needs the ``pool``; ``coreset`` the candidates' ``embeddings`` (N, D) and the
    labelled images' ``labelled_embeddings`` (L, D).
    """
    n = len(image_ids)
    if measure == "random":
        return rng.permutation(n).astype(np.int64)
    if measure == "uncertainty":
        if pool is None:
            raise ValueError("rank_images(pool=) expects the box pool for measure 'uncertainty'; got None.")
        return top_k(image_uncertainty(pool, image_ids), n)
    if measure == "coreset":
        if embeddings is None or len(embeddings) != n:
            raise ValueError(f"rank_images(embeddings=) expects ({n}, D) image embeddings for coreset; got "
                             f"{None if embeddings is None else np.shape(embeddings)}.")
        return coreset_order(embeddings, labelled_embeddings, n)
    raise ValueError(f"rank_images(measure=) expects one of {', '.join(IMAGE_MEASURES)}; got {measure!r}.")


def fill_budget(order: Sequence[int], costs: Sequence[int], budget: int) -> list[int]:
    """The first items of ``order`` whose costs sum to at least ``budget`` (all of them if they do not).

    The last item may overshoot the budget: an image is annotated whole. Items of cost 0 (images
    without boxes) are taken when their turn comes, at no cost.
    """
    if budget < 0:
        raise ValueError(f"fill_budget(budget=) expects an integer >= 0; got {budget}.")
    chosen, spent = [], 0
    for item in order:
        if spent >= budget:
            break
        chosen.append(int(item))
        spent += int(costs[int(item)])
    return chosen


@dataclass(frozen=True)
class DetectionCounts:
    """A model's running set D: its detections on labelled images, per category and IoU threshold.

    ``category_ids`` (K,) ascending; ``tp``, ``fp`` float64 (K, T): true and false positives;
    ``num_gt`` float64 (K,): non-ignored ground-truth boxes.
    """

    category_ids: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_gt: np.ndarray


def detection_counts(matches: Any) -> DetectionCounts:
    """``DetectionCounts`` of a ``curation_core.matching.DatasetMatches`` (``match_dataset``)."""
    from curation_core.detgain.records import table_from_matches

    table = table_from_matches(matches, fn="detection_counts")
    shape = (table.category_ids.size, table.iou_thresholds.size)
    tp, fp = np.zeros(shape), np.zeros(shape)
    np.add.at(tp, table.det_category, table.det_true_positive.astype(np.float64))
    np.add.at(fp, table.det_category, table.false_positive().astype(np.float64))
    return DetectionCounts(table.category_ids.copy(), tp, fp, table.num_gt().astype(np.float64))


def expected_box_gain(prob: np.ndarray, category_ids: np.ndarray, counts: DetectionCounts) -> np.ndarray:
    """``p tp_gain(p) + (1 - p) fp_gain(p)`` per box (mean over IoU thresholds), float64 (P,).

    ``prob`` (P,) in [0, 1]: the model's probability that the box is an object, also its score in D's
    ranking. A class absent from D's ground truth gains 0 (it is not in D's mAP).
    """
    from curation_core.detgain.uniform import uniform_fp_gain, uniform_tp_gain

    prob = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    index = {int(c): i for i, c in enumerate(counts.category_ids.tolist())}
    rows = np.asarray([index.get(int(c), -1) for c in np.asarray(category_ids).tolist()], dtype=np.int64)
    known = rows >= 0
    out = np.zeros(len(prob))
    if not known.any():
        return out
    r, p = rows[known], prob[known][:, None]
    t, f, n = counts.tp[r], counts.fp[r], counts.num_gt[r][:, None]
    out[known] = (p * uniform_tp_gain(t, f, n, p) + (1.0 - p) * uniform_fp_gain(t, f, n, p)).mean(axis=1)
    return out


def teacher_box_scores(pool: BoxPool, teacher_detections: Sequence[dict[str, Any]], *, iou: float = 0.5) -> np.ndarray:
    """Per pool box, the largest score of a teacher detection of its class with IoU >= ``iou`` (0 if none)."""
    out = np.zeros(len(pool))
    by_image: dict[int, list[dict[str, Any]]] = {}
    for det in teacher_detections:
        by_image.setdefault(int(det["image_id"]), []).append(det)
    for image_id in np.unique(pool.image_ids).tolist():
        dets = by_image.get(image_id, [])
        rows = pool.rows_of(image_id)
        if not dets:
            continue
        overlap = pairwise_iou(pool.boxes[rows], xywh_to_xyxy(np.asarray([d["bbox"] for d in dets])))
        same = pool.category_ids[rows][:, None] == np.asarray([int(d["category_id"]) for d in dets])[None, :]
        scores = np.asarray([float(d["score"]) for d in dets])[None, :]
        out[rows] = np.where((overlap >= iou) & same, scores, 0.0).max(axis=1)
    return out


def box_learnability(pool: BoxPool, *, teacher_scores: np.ndarray, teacher_counts: DetectionCounts,
                     student_counts: DetectionCounts) -> np.ndarray:
    """DetGain learnability of each pool box (module docstring), float64 (P,); higher = query first."""
    teacher = expected_box_gain(teacher_scores, pool.category_ids, teacher_counts)
    return teacher - expected_box_gain(pool.scores, pool.category_ids, student_counts)
