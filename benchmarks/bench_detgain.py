"""DetGain estimators: rank agreement with exact DetGain, and scoring speed on CPU.

(a) Agreement. Leave-one-out DetGain (D = all other images) of every image of randomized detector
    outputs (``detgain.synthetic.synthetic_coco``, boxes matched like real files; set ``sN/seed``), by
    the exact, uniform and empirical estimators. Columns: ``rho_u`` / ``rho_e`` Spearman's rho of
    uniform / empirical against exact; ``top_u`` / ``top_e`` the fraction of the exact top 16 of random
    super-batches of 80 (the paper's selection) that the estimator also keeps; for sets up to
    ``--smooth-limit`` images, ``ceil`` the rho of the exact *non-interpolated* AP change against exact
    (the ceiling of any estimator that, like both closed forms, ignores the 101-point recall sampling)
    and ``e~noint`` the rho of empirical against that non-interpolated change.
    ``--predictions GT.json DT.json`` (repeatable) adds real predictions. (The envelope estimator is
    online only and takes no part in (a).)
(b) Speed. A global state built from ``--state-dets`` detections (100 per image, 80 categories, 10 IoU
    thresholds, ``synthetic_matches``) scores super-batches of 80 images x 100 detections; medians of
    repeated runs, per model (one ``detgain`` call); ``index_s`` / ``envelope_index_s`` the one-off
    cost of the exact / envelope index (rebuilt after every state update). pycocotools brute force
    (``COCOeval`` on D + {x}) is timed on subsets of D and extrapolated linearly in the number of
    detections (stated as such in the output). Also: scaling with |D| and with detections per image,
    and the throughput of the leave-one-out CLI computation.

(c) Online agreement on real predictions (``--online GT.json TEACHER_DT.json STUDENT_DT.json``,
    repeatable): the setting of curated training. D = ``--window`` random images of the file, each model
    against its own ``DetGainState`` of them; ``--batches`` random super-batches of 80 other images. Per
    estimator: mean over super-batches of Spearman's rho and of the top-16-of-80 overlap with exact, for
    the learnability (``*_learn``) and for the teacher's DetGain alone (``*_teacher``: the estimator's
    own error, without the cancellation in the difference); ``ms_learn`` the median time of one
    learnability call (both models, indexes built); ``update_ms`` one state update of 80 images and
    ``exact_index_ms`` / ``envelope_index_ms`` the index rebuilt after it (per model). The row
    ``noninterpolated`` is the exact change of the *non-interpolated* mAP (brute force): the ceiling of
    any estimator that, like the closed forms, ignores the 101-point recall sampling.

    python benchmarks/bench_detgain.py [--quick] [--out benchmarks/results/detgain.json]
    python benchmarks/bench_detgain.py --online-only --online GT T S [--online GT T2 S2]   # (c) alone
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.coco import dataset_from_dict, load_coco, load_detections  # noqa: E402
from curation_core.detgain import (  # noqa: E402
    DetGainState,
    StateConfig,
    detgain,
    learnability,
    leave_one_out_detgain,
)
from curation_core.detgain.records import DetectionTable, table_from_matches, vocabulary_index  # noqa: E402
from curation_core.detgain.scoring import ONLINE_ESTIMATORS  # noqa: E402
from curation_core.detgain.synthetic import synthetic_coco, synthetic_matches  # noqa: E402
from curation_core.matching import DatasetMatches, match_dataset  # noqa: E402

SUPER_BATCH, KEEP = 80, 16
#: The online section's extra row: the exact change of the non-interpolated mAP, by brute force.
NONINTERPOLATED = "noninterpolated"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _top_overlap(est: np.ndarray, exact: np.ndarray, rng: np.random.Generator, trials: int = 200) -> float:
    """Mean fraction of the exact top 16 of a random super-batch of 80 that the estimator also keeps."""
    n = exact.size
    if n < SUPER_BATCH:
        return float("nan")
    hits = 0
    for _ in range(trials):
        idx = rng.choice(n, SUPER_BATCH, replace=False)
        top_e = set(idx[np.lexsort((idx, -exact[idx]))[:KEEP]].tolist())
        top_x = set(idx[np.lexsort((idx, -est[idx]))[:KEEP]].tolist())
        hits += len(top_e & top_x)
    return hits / (trials * KEEP)


class _NonInterpolated:
    """Exact non-interpolated mAP (mean over categories and IoU thresholds of the mean precision at the true
    positives, divided by the ground truth) of any subset of a table's images, by brute force."""

    def __init__(self, table: DetectionTable) -> None:
        self.table = table
        self.n_gt_img = np.zeros((table.num_images, table.category_ids.size))
        np.add.at(self.n_gt_img, (table.gt_image, table.gt_category), table.gt_count)
        self.fp = table.false_positive()
        self.by_category = [np.flatnonzero(table.det_category == c) for c in range(table.category_ids.size)]

    def category_ap(self, c: int, images: np.ndarray) -> float:
        """AP of category ``c`` over the images where the (N,) bool mask ``images`` is set (NaN: no ground truth)."""
        t = self.table
        n = self.n_gt_img[images, c].sum()
        if n <= 0:
            return float("nan")
        sel = self.by_category[c]
        sel = sel[images[t.det_image[sel]]]
        o = sel[np.lexsort((t.det_rank[sel], t.det_image[sel], -t.det_score[sel]))]
        tp, fp = t.det_true_positive[o], self.fp[o]
        ct = np.cumsum(tp, axis=0)
        prec = ct / np.maximum(ct + np.cumsum(fp, axis=0), 1)
        return float(((prec * tp).sum(axis=0) / n).mean())

    def touched(self, i: int) -> set[int]:
        """Categories image row ``i`` has detections or ground truth of."""
        t = self.table
        return set(t.det_category[t.det_image == i].tolist()) | set(np.flatnonzero(self.n_gt_img[i]).tolist())

    def changes(self, base_images: np.ndarray, rows: np.ndarray, *, add: bool) -> np.ndarray:
        """mAP(base + {x}) - mAP(base) for every row x of ``rows`` (``add``), else mAP(base) - mAP(base - {x})."""
        n_cat = self.table.category_ids.size
        base = np.array([self.category_ap(c, base_images) for c in range(n_cat)])
        full = np.nanmean(base) if np.isfinite(base).any() else 0.0
        out = np.zeros(rows.size)
        for k, i in enumerate(rows):
            images = base_images.copy()
            images[i] = add
            new = base.copy()
            for c in self.touched(int(i)):
                new[c] = self.category_ap(c, images)
            other = np.nanmean(new) if np.isfinite(new).any() else 0.0
            out[k] = other - full if add else full - other
        return out


def _noninterpolated_loo(matches: Any) -> np.ndarray:
    """Exact leave-one-out change of the *non-interpolated* mAP (mean precision at the TPs / npig)."""
    table = table_from_matches(matches)
    rows = np.arange(table.num_images)
    return _NonInterpolated(table).changes(np.ones(table.num_images, dtype=bool), rows, add=False)


class _NonInterpolatedInsert:
    """Exact change of the *non-interpolated* mAP when one image is added alone to a fixed set D.

    D's detections are sorted once per category; an image's detections are merged into that order (no
    re-sort), so each addition costs one pass over D's detections of the categories it touches. Ties
    between D and the image rank D first (the image is new: a higher id).
    """

    def __init__(self, d: DetectionTable) -> None:
        self.category_ids, n_cat = d.category_ids, d.category_ids.size
        self.num_gt = d.num_gt().astype(np.float64)
        fp = d.false_positive()
        self.sorted = []
        for c in range(n_cat):
            sel = np.flatnonzero(d.det_category == c)
            o = sel[np.lexsort((d.det_rank[sel], d.det_image[sel], -d.det_score[sel]))]
            self.sorted.append((-d.det_score[o], d.det_true_positive[o].astype(np.float64), fp[o].astype(np.float64)))
        self.base = np.array([self._ap(c, np.zeros(0), np.zeros((0, d.iou_thresholds.size)),
                                       np.zeros((0, d.iou_thresholds.size)), 0.0) for c in range(n_cat)])

    def _ap(self, c: int, neg_score: np.ndarray, tp: np.ndarray, fp: np.ndarray, new_gt: float) -> float:
        n = self.num_gt[c] + new_gt
        if n <= 0:
            return float("nan")
        d_neg, d_tp, d_fp = self.sorted[c]
        if neg_score.size:  # merge: the image's detections after D's of equal score
            o = np.argsort(neg_score, kind="stable")
            neg_score, tp, fp = neg_score[o], tp[o], fp[o]
            at = np.searchsorted(d_neg, neg_score, side="right")
            d_tp, d_fp = np.insert(d_tp, at, tp, axis=0), np.insert(d_fp, at, fp, axis=0)
        ct = np.cumsum(d_tp, axis=0)
        prec = ct / np.maximum(ct + np.cumsum(d_fp, axis=0), 1.0)
        return float(((prec * d_tp).sum(axis=0) / n).mean())

    def changes(self, batch: DetectionTable) -> np.ndarray:
        """(N,) mAP(D + {x}) - mAP(D) for every image x of ``batch``."""
        rows = vocabulary_index(self.category_ids, batch.category_ids)
        if np.any(rows == self.category_ids.size):
            raise ValueError(f"_NonInterpolatedInsert.changes(batch=) expects categories of D; got "
                             f"{batch.category_ids[rows == self.category_ids.size].tolist()} unknown to D.")
        full = np.nanmean(self.base) if np.isfinite(self.base).any() else 0.0
        fp = batch.false_positive()
        out = np.zeros(batch.num_images)
        for i in range(batch.num_images):
            new = self.base.copy()
            det = np.flatnonzero(batch.det_image == i)
            gt = batch.gt_image == i
            for k in set(batch.det_category[det].tolist()) | set(batch.gt_category[gt].tolist()):
                mine = det[batch.det_category[det] == k]
                new_gt = float(batch.gt_count[gt & (batch.gt_category == k)].sum())
                new[rows[k]] = self._ap(int(rows[k]), -batch.det_score[mine], batch.det_true_positive[mine].astype(float),
                                        fp[mine].astype(float), new_gt)
            out[i] = (np.nanmean(new) if np.isfinite(new).any() else 0.0) - full
        return out


def _agreement(name: str, matches: Any, smooth: bool, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    exact = leave_one_out_detgain(matches, estimator="exact")
    t_exact = time.perf_counter() - start
    uni = leave_one_out_detgain(matches, estimator="uniform")
    emp = leave_one_out_detgain(matches, estimator="empirical")
    rng = np.random.default_rng(seed)
    row: dict[str, Any] = {
        "set": name, "imgs": int(matches.image_ids.size), "dets": int(matches.det_score.size),
        "rho_u": _spearman(uni, exact), "rho_e": _spearman(emp, exact),
        "top_u": _top_overlap(uni, exact, rng), "top_e": _top_overlap(emp, exact, rng),
        "ceil": float("nan"), "e~noint": float("nan"), "exact_s": t_exact,
    }
    if smooth:  # ceil: rho(exact non-interpolated change, exact); e~noint: rho(empirical, that change)
        ni = _noninterpolated_loo(matches)
        row["ceil"] = _spearman(ni, exact)
        row["e~noint"] = _spearman(emp, ni)
    return row


def agreement(sizes: list[int], seeds: list[int], smooth_limit: int, predictions: list[list[str]]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        for seed in seeds:
            gt, dets = synthetic_coco(seed, n_images=n, n_categories=10)
            m = match_dataset(dataset_from_dict(gt), dets)
            rows.append(_agreement(f"s{n}/{seed}", m, n <= smooth_limit, seed))
    for gt_path, dt_path in predictions:
        gt = load_coco(gt_path)
        m = match_dataset(gt, load_detections(dt_path, gt))
        rows.append(_agreement(f"{dt_path}", m, m.image_ids.size <= smooth_limit, 0))
    return rows


def subset_matches(m: DatasetMatches, rows: np.ndarray) -> DatasetMatches:
    """The images ``rows`` (ascending int64) of ``m``, renumbered, rows still in (category, image, rank) order."""
    new_row = np.full(m.image_ids.size, -1, dtype=np.int64)
    new_row[rows] = np.arange(rows.size)
    keep = np.flatnonzero(new_row[m.det_image] >= 0)
    return DatasetMatches(
        image_ids=m.image_ids[rows], category_ids=m.category_ids, iou_thresholds=m.iou_thresholds,
        det_image=new_row[m.det_image[keep]], det_category=m.det_category[keep], det_score=m.det_score[keep],
        det_rank=m.det_rank[keep], det_true_positive=m.det_true_positive[keep], det_ignored=m.det_ignored[keep],
        gt_count=m.gt_count[rows],
    )


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _batch_agreement(scores: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(rho, top-16 overlap) of every estimator's scores of one super-batch against exact's."""
    exact = scores["exact"]
    idx = np.arange(exact.size)
    top_x = set(np.lexsort((idx, -exact))[:KEEP].tolist())
    out = {}
    for name, est in scores.items():
        top_e = set(np.lexsort((idx, -est))[:KEEP].tolist())
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = _spearman(est, exact) if np.ptp(est) > 0 and np.ptp(exact) > 0 else float("nan")
        out[name] = (rho, len(top_e & top_x) / KEEP)
    return out


def online_agreement(name: str, teacher: DatasetMatches, student: DatasetMatches, *, window: int,
                     batches: int, seed: int) -> list[dict[str, Any]]:
    """Online setting of training: D = ``window`` random images, super-batches of 80 other images.

    Columns: see the module docstring, (c).
    """
    rng = np.random.default_rng(seed)
    n = teacher.image_ids.size
    if n < window + SUPER_BATCH:
        raise ValueError(f"online_agreement() expects at least window + {SUPER_BATCH} = {window + SUPER_BATCH} "
                         f"images; got {n}.")
    perm = rng.permutation(n)
    d_rows, pool = np.sort(perm[:window]), perm[window:]
    config = StateConfig(window=window)
    states = {role: DetGainState.from_matches(subset_matches(m, d_rows), config=config)
              for role, m in (("teacher", teacher), ("student", student))}
    for state in states.values():  # the indexes are built once per update, outside the timed scoring
        state.exact_index()
        state.envelope_index()
    ceiling = {role: _NonInterpolatedInsert(state.table()) for role, state in states.items()}
    agree: dict[str, dict[str, list[tuple[float, float]]]] = {"learn": {}, "teacher": {}}
    times: dict[str, list[float]] = {e: [] for e in (*ONLINE_ESTIMATORS, NONINTERPOLATED)}
    for _ in range(batches):
        rows = np.sort(rng.choice(pool, SUPER_BATCH, replace=False))
        bt, bs = subset_matches(teacher, rows), subset_matches(student, rows)
        learn, single = {}, {}
        for estimator in ONLINE_ESTIMATORS:
            start = time.perf_counter()
            scores = learnability(states["teacher"], states["student"], bt, bs, estimator=estimator)
            times[estimator].append(time.perf_counter() - start)
            learn[estimator], single[estimator] = scores.learnability, scores.delta_teacher
        start = time.perf_counter()  # the ceiling of the closed forms: the exact non-interpolated change
        delta_t, delta_s = (ceiling[r].changes(table_from_matches(b)) for r, b in (("teacher", bt), ("student", bs)))
        times[NONINTERPOLATED].append(time.perf_counter() - start)
        learn[NONINTERPOLATED], single[NONINTERPOLATED] = delta_t - delta_s, delta_t
        for key, scores_of in (("learn", learn), ("teacher", single)):
            for estimator, pair in _batch_agreement(scores_of).items():
                agree[key].setdefault(estimator, []).append(pair)
    update = _update_cost(teacher, d_rows, pool, config, rng)
    rows_out = []
    for estimator in (*ONLINE_ESTIMATORS, NONINTERPOLATED):
        learn_pairs, single_pairs = np.array(agree["learn"][estimator]), np.array(agree["teacher"][estimator])
        rows_out.append({
            "set": name, "estimator": estimator, "D_imgs": window,
            "D_dets": states["teacher"].num_detections, "batches": batches,
            "rho_learn": _nanmean(learn_pairs[:, 0]), "top16_learn": float(learn_pairs[:, 1].mean()),
            "rho_teacher": _nanmean(single_pairs[:, 0]), "top16_teacher": float(single_pairs[:, 1].mean()),
            "ms_learn": 1000.0 * float(np.median(times[estimator])), **update,
        })
    return rows_out


def _update_cost(m: DatasetMatches, d_rows: np.ndarray, pool: np.ndarray, config: StateConfig,
                 rng: np.random.Generator, updates: int = 10) -> dict[str, float]:
    """Median ms of ``update`` with 80 new images (the window slides) and of rebuilding each index after it."""
    state = DetGainState.from_matches(subset_matches(m, d_rows), config=config)
    times: dict[str, list[float]] = {"update_ms": [], "exact_index_ms": [], "envelope_index_ms": []}
    for _ in range(updates):
        batch = subset_matches(m, np.sort(rng.choice(pool, SUPER_BATCH, replace=False)))
        for key, fn in (("update_ms", lambda b=batch: state.update(b)), ("exact_index_ms", state.exact_index),
                        ("envelope_index_ms", state.envelope_index)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: 1000.0 * float(np.median(values)) for key, values in times.items()}


def online(triples: list[list[str]], window: int, batches: int) -> list[dict[str, Any]]:
    rows = []
    for gt_path, teacher_path, student_path in triples:
        gt = load_coco(gt_path)
        teacher = match_dataset(gt, load_detections(teacher_path, gt))
        student = match_dataset(gt, load_detections(student_path, gt))
        rows += online_agreement(f"{Path(teacher_path).stem}-{Path(student_path).stem}", teacher, student,
                                 window=window, batches=batches, seed=0)
    return rows


def _median_ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _state(n_dets: int) -> tuple[DetGainState, float]:
    d = synthetic_matches(0, n_images=n_dets // 100, n_categories=80, dets_per_image=100)
    start = time.perf_counter()
    state = DetGainState.from_matches(d)
    return state, time.perf_counter() - start


def speed(state_sizes: list[int], per_image: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    batch = synthetic_matches(1, n_images=SUPER_BATCH, n_categories=80, dets_per_image=100, first_image_id=10**7)
    for n_dets in state_sizes:
        state, t_build = _state(n_dets)
        start = time.perf_counter()
        state.exact_index()
        t_index = time.perf_counter() - start
        start = time.perf_counter()
        state.envelope_index()
        t_envelope = time.perf_counter() - start
        rows.append({
            "D_dets": n_dets, "per_img": 100, "build_s": t_build, "index_s": t_index, "envelope_index_s": t_envelope,
            "uniform_ms": _median_ms(lambda s=state: detgain(s, batch, estimator="uniform"), repeats),
            "empirical_ms": _median_ms(lambda s=state: detgain(s, batch, estimator="empirical"), repeats),
            "envelope_ms": _median_ms(lambda s=state: detgain(s, batch, estimator="envelope"), repeats),
            "exact_ms": _median_ms(lambda s=state: detgain(s, batch, estimator="exact"), max(3, repeats // 10)),
        })
    for k in per_image:
        if k == 100:
            continue
        b = synthetic_matches(2, n_images=SUPER_BATCH, n_categories=80, dets_per_image=k, first_image_id=10**7)
        rows.append({
            "D_dets": state_sizes[-1], "per_img": k, "build_s": float("nan"), "index_s": float("nan"),
            "envelope_index_s": float("nan"),
            "uniform_ms": _median_ms(lambda b=b: detgain(state, b, estimator="uniform"), repeats),
            "empirical_ms": _median_ms(lambda b=b: detgain(state, b, estimator="empirical"), repeats),
            "envelope_ms": _median_ms(lambda b=b: detgain(state, b, estimator="envelope"), repeats),
            "exact_ms": _median_ms(lambda b=b: detgain(state, b, estimator="exact"), max(3, repeats // 10)),
        })
    return rows


def brute_force(image_counts: list[int]) -> list[dict[str, Any]]:
    """pycocotools on D + {x} (evaluate + accumulate + summarize; and accumulate alone) at several |D|."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rows = []
    for n in image_counts:
        gt, dets = synthetic_coco(5, n_images=n, n_categories=80, boxes_per_image=7.0, false_per_image=94.0)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dets)
            start = time.perf_counter()
            ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
            ev.evaluate()
            t_eval = time.perf_counter() - start
            start = time.perf_counter()
            ev.accumulate()
            t_acc = time.perf_counter() - start
            ev.summarize()
        rows.append({"images": n, "detections": len(dets), "full_eval_s": t_eval + t_acc, "accumulate_s": t_acc})
    return rows


def extrapolate(rows: list[dict[str, Any]], key: str, n_dets: int) -> float:
    """Least-squares line through (detections, seconds), evaluated at ``n_dets``."""
    x = np.array([r["detections"] for r in rows], dtype=float)
    y = np.array([r[key] for r in rows], dtype=float)
    slope, intercept = np.polyfit(x, y, 1) if x.size > 1 else (y[0] / x[0], 0.0)
    return float(slope * n_dets + intercept)


def loo_throughput(n_images: int) -> dict[str, Any]:
    m = synthetic_matches(3, n_images=n_images, n_categories=80, dets_per_image=100)
    out: dict[str, Any] = {"images": n_images, "detections": int(m.det_score.size)}  # seconds below
    for estimator in ("exact", "uniform", "empirical"):
        start = time.perf_counter()
        leave_one_out_detgain(m, estimator=estimator)
        out[f"{estimator}_s"] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--out", default="benchmarks/results/detgain.json")
    parser.add_argument("--state-dets", type=int, default=1_000_000)
    parser.add_argument("--smooth-limit", type=int, default=3000, help="largest set for the non-interpolated ceiling")
    parser.add_argument("--predictions", nargs=2, action="append", default=[], metavar=("GT", "DT"),
                        help="also measure agreement on these real predictions (repeatable)")
    parser.add_argument("--online", nargs=3, action="append", default=[], metavar=("GT", "TEACHER_DT", "STUDENT_DT"),
                        help="online agreement on these real predictions of both models (repeatable)")
    parser.add_argument("--window", type=int, default=2000, help="images of D in the online setting")
    parser.add_argument("--batches", type=int, default=50, help="super-batches of 80 in the online setting")
    parser.add_argument("--online-note", default="", help="where the online predictions come from (kept in --out)")
    parser.add_argument("--online-only", action="store_true",
                        help="run only the online section; replace its rows in --out, keep the other sections")
    args = parser.parse_args(argv)
    online_rows = online(args.online, args.window, args.batches)
    if online_rows:
        print_rows(f"(c) online: D = {args.window} images, {args.batches} super-batches of {SUPER_BATCH}, top {KEEP}",
                   online_rows)
    if args.online_only:
        _replace_online(args.out, online_rows, args.online, args.online_note)
        return
    if args.quick:
        sizes, seeds, states, per_image, brute, loo_n, repeats = [200], [0], [100_000], [100], [50, 100], 500, 20
    else:
        sizes, seeds = [300, 1000, 3000], [0, 1, 2]
        states, per_image = [100_000, 300_000, args.state_dets], [25, 50, 100, 200]
        brute, loo_n, repeats = [100, 300, 1000], 5000, 100
    load_before = os.getloadavg()
    agree = agreement(sizes, seeds, args.smooth_limit, args.predictions)
    print_rows("(a) rank agreement with exact leave-one-out DetGain", agree)
    speed_rows = speed(states, per_image, repeats)
    print_rows(f"(b) scoring a super-batch of {SUPER_BATCH} images (ms, median)", speed_rows)
    brute_rows = brute_force(brute)
    print_rows("pycocotools brute force on D + {x} (measured)", brute_rows)
    largest = speed_rows[len(states) - 1]
    n_state = largest["D_dets"]
    per_image_brute = extrapolate(brute_rows, "full_eval_s", n_state)
    per_image_acc = extrapolate(brute_rows, "accumulate_s", n_state)
    summary = {
        "state_dets": n_state,
        "brute_force_per_image_s_extrapolated": per_image_brute,
        "brute_force_accumulate_only_per_image_s_extrapolated": per_image_acc,
        "brute_force_per_super_batch_s_extrapolated": SUPER_BATCH * per_image_brute,
        "exact_per_super_batch_s": largest["exact_ms"] / 1000.0,
        "exact_speedup_vs_brute_force": SUPER_BATCH * per_image_brute / (largest["exact_ms"] / 1000.0),
        "exact_speedup_vs_accumulate_only": SUPER_BATCH * per_image_acc / (largest["exact_ms"] / 1000.0),
        "note": "brute force timed on the subsets listed and extrapolated linearly in detections",
    }
    print_rows("exact vs pycocotools brute force (extrapolated to the state size)",
               [{"quantity": k, "value": v} for k, v in summary.items()])
    loo = loo_throughput(loo_n)
    loo["brute_s_extrap"] = loo_n * extrapolate(brute_rows, "full_eval_s", loo["detections"])
    print_rows("leave-one-out over a whole file (what `detcurate score` computes), seconds", [loo])
    write_result(args.out, "detgain", agree, speed=speed_rows, brute_force=brute_rows, summary=summary,
                 leave_one_out=loo, load_average_before=load_before, load_average_after=os.getloadavg(),
                 real_predictions="none given" if not args.predictions else [p[1] for p in args.predictions],
                 online=online_rows, online_predictions=args.online, online_note=args.online_note)


def _replace_online(path: str, rows: list[dict[str, Any]], triples: list[list[str]], note: str) -> None:
    """Rewrite the online section of an existing result file (or write a file with only that section)."""
    from curation_core.io import write_json_atomic

    payload = json.loads(Path(path).read_text()) if Path(path).exists() else {"benchmark": "detgain", "rows": []}
    payload.update(online=rows, online_predictions=triples, online_note=note,
                   online_time=time.strftime("%Y-%m-%dT%H:%M:%S"), online_load_average=os.getloadavg())
    write_json_atomic(path, payload, indent=2)


if __name__ == "__main__":
    main()
