"""DetGain estimators: rank agreement with exact DetGain, and scoring speed on CPU.

(a) Agreement. Leave-one-out DetGain (D = all other images) of every image of randomized detector
    outputs (``detgain.synthetic.synthetic_coco``, boxes matched like real files; set ``sN/seed``), by
    the exact, uniform and empirical estimators. Columns: ``rho_u`` / ``rho_e`` Spearman's rho of
    uniform / empirical against exact; ``top_u`` / ``top_e`` the fraction of the exact top 16 of random
    super-batches of 80 (the paper's selection) that the estimator also keeps; for sets up to
    ``--smooth-limit`` images, ``ceil`` the rho of the exact *non-interpolated* AP change against exact
    (the ceiling of any estimator that, like both closed forms, ignores the 101-point recall sampling)
    and ``e~noint`` the rho of empirical against that non-interpolated change.
    ``--predictions GT.json DT.json`` (repeatable) adds real predictions.
(b) Speed. A global state built from ``--state-dets`` detections (100 per image, 80 categories, 10 IoU
    thresholds, ``synthetic_matches``) scores super-batches of 80 images x 100 detections; medians of
    repeated runs. pycocotools brute force (``COCOeval`` on D + {x}) is timed on subsets of D and
    extrapolated linearly in the number of detections (stated as such in the output). Also: scaling with
    |D| and with detections per image, and the throughput of the leave-one-out CLI computation.

    python benchmarks/bench_detgain.py [--quick] [--out benchmarks/results/detgain.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.coco import dataset_from_dict, load_coco, load_detections  # noqa: E402
from curation_core.detgain import DetGainState, detgain, leave_one_out_detgain  # noqa: E402
from curation_core.detgain.records import table_from_matches  # noqa: E402
from curation_core.detgain.synthetic import synthetic_coco, synthetic_matches  # noqa: E402
from curation_core.matching import match_dataset  # noqa: E402

SUPER_BATCH, KEEP = 80, 16


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


def _noninterpolated_loo(matches: Any) -> np.ndarray:
    """Exact leave-one-out change of the *non-interpolated* mAP (mean precision at the TPs / npig)."""
    table = table_from_matches(matches)
    n_gt_img = np.zeros((table.num_images, table.category_ids.size))
    np.add.at(n_gt_img, (table.gt_image, table.gt_category), table.gt_count)
    n_gt = n_gt_img.sum(axis=0)
    fp_all = table.false_positive()

    def cat_ap(c: int, drop: int | None) -> float:
        n = n_gt[c] - (n_gt_img[drop, c] if drop is not None else 0)
        if n <= 0:
            return float("nan")
        sel = np.flatnonzero((table.det_category == c) & (table.det_image != (-1 if drop is None else drop)))
        o = sel[np.lexsort((table.det_rank[sel], table.det_image[sel], -table.det_score[sel]))]
        tp, fp = table.det_true_positive[o], fp_all[o]
        ct = np.cumsum(tp, axis=0)
        prec = ct / np.maximum(ct + np.cumsum(fp, axis=0), 1)
        return float(((prec * tp).sum(axis=0) / n).mean())

    base = np.array([cat_ap(c, None) for c in range(table.category_ids.size)])
    full = np.nanmean(base) if np.isfinite(base).any() else 0.0
    out = np.zeros(table.num_images)
    touched = [set(table.det_category[table.det_image == i].tolist()) | set(np.flatnonzero(n_gt_img[i]).tolist())
               for i in range(table.num_images)]
    for i in range(table.num_images):
        new = base.copy()
        for c in touched[i]:
            new[c] = cat_ap(c, i)
        out[i] = full - (np.nanmean(new) if np.isfinite(new).any() else 0.0)
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
        rows.append({
            "D_dets": n_dets, "per_img": 100, "build_s": t_build, "index_s": t_index,
            "uniform_ms": _median_ms(lambda s=state: detgain(s, batch, estimator="uniform"), repeats),
            "empirical_ms": _median_ms(lambda s=state: detgain(s, batch, estimator="empirical"), repeats),
            "exact_ms": _median_ms(lambda s=state: detgain(s, batch, estimator="exact"), max(3, repeats // 10)),
        })
    for k in per_image:
        if k == 100:
            continue
        b = synthetic_matches(2, n_images=SUPER_BATCH, n_categories=80, dets_per_image=k, first_image_id=10**7)
        rows.append({
            "D_dets": state_sizes[-1], "per_img": k, "build_s": float("nan"), "index_s": float("nan"),
            "uniform_ms": _median_ms(lambda b=b: detgain(state, b, estimator="uniform"), repeats),
            "empirical_ms": _median_ms(lambda b=b: detgain(state, b, estimator="empirical"), repeats),
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
    args = parser.parse_args(argv)
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
                 real_predictions="none given" if not args.predictions else [p[1] for p in args.predictions])


if __name__ == "__main__":
    main()
