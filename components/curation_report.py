"""Pipeline step: what did online curation pick? Statistics and figures from a run's ``selections.csv``.

Inputs: the selection log a curated training run writes (``curation_core.engine.selection_log``: one row
per scored image, ``iteration, position, image_id, score, picked, method``; score: higher = more useful)
and the COCO annotations of the training set it drew from. Outputs, written atomically into ``out_dir``:

- ``curation_stats.json``: the numbers below (undefined values, e.g. the box shares of a selection that
  holds no box, are ``null``);
- ``curation_scores.png``: ECDFs of picked against rejected scores, overall and per third of training;
- ``curation_categories.png``: each category's share of the boxes of picked images against its share in
  the data set (and among scored images), and the share of background-only images.

Conventions. Counts over rows count every pick: an image picked three times weighs three times, as it
was trained on three times. A background-only image has no non-crowd annotation; category shares count
non-crowd boxes only. An epoch-equivalent is ``len(train set)`` consecutive picks. The thirds of training
are the scoring events (distinct ``iteration`` values) split into three contiguous groups of nearly equal
size (``numpy.array_split``; the first groups take the extra events). Score quantiles use numpy's default
(linear) interpolation. Row ``n`` in error messages is line ``n + 1`` of the CSV (line 1 is the header).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset, load_coco
from curation_core.engine.selection_log import COLUMNS
from curation_core.errors import DataError
from curation_core.io import write_bytes_atomic, write_json_atomic
from curation_core.matching import bbox_iou

STATS_NAME = "curation_stats.json"
SCORES_FIGURE = "curation_scores.png"
CATEGORIES_FIGURE = "curation_categories.png"
STAGE_NAMES = ("first", "middle", "last")
#: IoU at which a training box counts as the same object as a clean box of the same category.
LABEL_MATCH_IOU = 0.5
#: Score quantiles reported for picked and rejected rows.
QUANTILES = {"q10": 0.10, "q25": 0.25, "median": 0.50, "q75": 0.75, "q90": 0.90}
DPI = 110


@dataclass(frozen=True)
class SelectionRows:
    """The selection log as columns, in training order (stable sort by ``iteration``); shape (R,) each."""

    iteration: np.ndarray  # int64, >= 1
    position: np.ndarray  # int64, >= 0
    image_id: np.ndarray  # int64
    score: np.ndarray  # float64, finite
    picked: np.ndarray  # bool
    methods: tuple[str, ...]  # distinct values of ``method``, in order of appearance


def read_selection_log(path: str | os.PathLike[str], *, dataset: CocoDataset | None = None) -> SelectionRows:
    """Read and validate ``selections.csv``; with ``dataset`` every row's image must be one of its images.

    Raises ``DataError`` naming the file, the row and the problem: file missing or unreadable, columns
    missing, a bad value, an unknown image, no rows, no picked row.
    """
    source = Path(path)
    try:
        with source.open(newline="", encoding="utf-8") as handle:
            values = _parse_rows(source, csv.reader(handle))
    except FileNotFoundError:
        raise DataError(f"{source}: <file>: file does not exist (a curated training run writes it)") from None
    except IsADirectoryError:
        raise DataError(f"{source}: <file>: is a directory, expected a CSV file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: <file>: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{source}: <file>: cannot be read ({exc.strerror})") from None
    if not values:
        raise DataError(f"{source}: <file>: no rows after the header (the run scored no super-batch)")
    iteration, position, image_id, score, picked, method, line = (list(c) for c in zip(*values, strict=True))
    if dataset is not None:
        known = dataset.image_index
        unknown = next((i for i, v in enumerate(image_id) if v not in known), None)
        if unknown is not None:
            raise DataError(f"{source}: row {line[unknown]}: image_id {image_id[unknown]} is not an image of "
                            f"{dataset.source}")
    if not any(picked):
        raise DataError(f"{source}: <file>: no row has picked=1")
    order = np.argsort(np.asarray(iteration, dtype=np.int64), kind="stable")
    return SelectionRows(iteration=np.asarray(iteration, dtype=np.int64)[order],
                         position=np.asarray(position, dtype=np.int64)[order],
                         image_id=np.asarray(image_id, dtype=np.int64)[order],
                         score=np.asarray(score, dtype=np.float64)[order],
                         picked=np.asarray(picked, dtype=bool)[order], methods=tuple(dict.fromkeys(method)))


def _parse_rows(source: Path, reader: Any) -> list[tuple[Any, ...]]:
    """``(iteration, position, image_id, score, picked, method, row)`` per data row."""
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{source}: <file>: empty file; expected the header {','.join(COLUMNS)}")
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise DataError(f"{source}: header: missing column(s) {', '.join(map(repr, missing))}; expected "
                            f"{', '.join(COLUMNS)}")
        where = [header.index(name) for name in COLUMNS]
        out = []
        for fields in reader:
            row = reader.line_num - 1
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise DataError(f"{source}: row {row}: expected {len(header)} fields; got {len(fields)}")
            out.append((*_parse_fields([fields[i] for i in where], f"{source}: row {row}"), row))
    except csv.Error as exc:
        raise DataError(f"{source}: row {reader.line_num - 1}: malformed CSV ({exc})") from None
    return out


def _parse_fields(fields: list[str], where: str) -> tuple[int, int, int, float, bool, str]:
    iteration, position, image_id, score, picked, method = (f.strip() for f in fields)
    ints = []
    for name, text, low in (("iteration", iteration, 1), ("position", position, 0), ("image_id", image_id, None)):
        try:
            value = int(text)
        except ValueError:
            raise DataError(f"{where}: {name!r} must be an integer; got {text!r}") from None
        if low is not None and value < low:
            raise DataError(f"{where}: {name!r} must be >= {low}; got {value}")
        ints.append(value)
    try:
        value = float(score)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: 'score' must be a finite number; got {score!r}")
    if picked not in ("0", "1"):
        raise DataError(f"{where}: 'picked' must be 0 or 1; got {picked!r}")
    if not method:
        raise DataError(f"{where}: 'method' must not be empty")
    return ints[0], ints[1], ints[2], value, picked == "1", method


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def box_counts(dataset: CocoDataset) -> tuple[dict[int, int], np.ndarray]:
    """Image id -> row, and the non-crowd box count per (image row, category in file order), int64 (N, K)."""
    rows = {img["id"]: i for i, img in enumerate(dataset.images)}
    column = {cat_id: j for j, cat_id in enumerate(dataset.category_ids)}
    counts = np.zeros((len(rows), len(column)), dtype=np.int64)
    for ann in dataset.annotations:
        if not ann["iscrowd"]:
            counts[rows[ann["image_id"]], column[ann["category_id"]]] += 1
    return rows, counts


def selection_stats(rows: SelectionRows, dataset: CocoDataset) -> dict[str, Any]:
    """The statistics of ``curation_stats.json`` (conventions in the module docstring); NaN where undefined.

    Keys: ``methods``; ``train_images`` (N); ``scoring_events``; ``iterations`` (first, last);
    ``rows`` (scored, picked, rejected); ``distinct_images`` (scored, picked, and each as a fraction of
    N); ``picks_per_image`` (max and mean over the images picked at least once, never_picked);
    ``epoch_equivalents`` (per block of N picks: picks, distinct_images, complete);
    ``background_share`` (picked rows, scored rows, data set images); ``categories`` (per category in
    file order: id, name, ``{picked,scored,dataset}_share`` of non-crowd boxes and ``_boxes`` counts);
    ``boxes_per_image`` (mean non-crowd boxes of picked rows, rejected rows, data set images);
    ``pick_rate_by_boxes`` (per box count of the scored rows: boxes, scored, picked, rate); ``scores``
    (picked, rejected: count, mean, min, q10, q25, median, q75, q90, max); ``stages`` (first,
    middle, last third: iterations, scoring_events, picked_rows, distinct_images (and as a fraction of
    N), background_share_picked, mean_picked_score, mean_rejected_score).
    """
    index, counts = box_counts(dataset)
    image_row = np.array([index[i] for i in rows.image_id.tolist()], dtype=np.int64)
    n_boxes = counts.sum(axis=1)
    background = n_boxes == 0
    n_images, picked = len(index), rows.picked
    picked_ids = rows.image_id[picked]
    repeats = np.unique(picked_ids, return_counts=True)[1]
    shares = {name: _box_shares(counts[r]) for name, r in
              (("picked", image_row[picked]), ("scored", image_row), ("dataset", np.arange(n_images)))}
    return {
        "methods": list(rows.methods),
        "train_images": n_images,
        "scoring_events": int(np.unique(rows.iteration).size),
        "iterations": {"first": int(rows.iteration[0]), "last": int(rows.iteration[-1])},
        "rows": {"scored": int(picked.size), "picked": int(picked.sum()), "rejected": int((~picked).sum())},
        "distinct_images": {"scored": int(np.unique(rows.image_id).size), "picked": int(repeats.size),
                            "scored_frac": np.unique(rows.image_id).size / n_images,
                            "picked_frac": repeats.size / n_images},
        "picks_per_image": {"max": int(repeats.max()), "mean": float(repeats.mean()),
                            "never_picked": n_images - int(repeats.size)},
        "epoch_equivalents": _epoch_equivalents(picked_ids, n_images),
        "background_share": {"picked": _mean(background[image_row[picked]]), "scored": _mean(background[image_row]),
                             "dataset": _mean(background)},
        "categories": [
            {"id": cat["id"], "name": cat["name"],
             **{f"{name}_share": float(share[j]) for name, (share, _) in shares.items()},
             **{f"{name}_boxes": int(total[j]) for name, (_, total) in shares.items()}}
            for j, cat in enumerate(dataset.categories)],
        "boxes_per_image": {"picked": _mean(n_boxes[image_row[picked]]), "rejected": _mean(n_boxes[image_row[~picked]]),
                            "dataset": _mean(n_boxes)},
        "pick_rate_by_boxes": _pick_rate_by_boxes(n_boxes[image_row], picked),
        "scores": {"picked": _score_summary(rows.score[picked]), "rejected": _score_summary(rows.score[~picked])},
        "stages": _stages(rows, image_row, background, n_images),
    }


def label_errors(dataset: CocoDataset, clean: CocoDataset, *, clean_source: str = "<clean>") -> tuple[np.ndarray, np.ndarray]:
    """Per image row of ``dataset`` (the training labels) against ``clean`` (the same images' true labels):
    ``(missing, wrong)``, int64 (N,) each.

    A training box and a clean box of the same image are the same object when they have the same category
    and IoU >= ``LABEL_MATCH_IOU``, matched one to one, greedily by decreasing IoU (ties: training box,
    then clean box, in file order). ``missing``: clean boxes left unmatched (a dropped label, or one moved
    or relabelled beyond recognition); ``wrong``: training boxes left unmatched (spurious, wrong class,
    badly placed). Crowd boxes are left out on both sides. ``DataError`` if the image ids differ.
    """
    ids, clean_ids = [img["id"] for img in dataset.images], {img["id"] for img in clean.images}
    stray = next((i for i in ids if i not in clean_ids), None)
    if stray is None and len(clean_ids) != len(ids):
        stray = next(i for i in sorted(clean_ids) if i not in set(ids))
    if stray is not None:
        raise DataError(f"{clean_source}: image {stray}: the clean annotations must hold the same images as the "
                        f"training annotations ({len(clean_ids)} against {len(ids)} images)")
    mine, truth = dataset.annotations_by_image, clean.annotations_by_image
    missing, wrong = np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=np.int64)
    for row, image_id in enumerate(ids):
        a = [x for x in mine.get(image_id, []) if not x["iscrowd"]]
        b = [x for x in truth.get(image_id, []) if not x["iscrowd"]]
        matched = _greedy_matches(a, b)
        missing[row], wrong[row] = len(b) - matched, len(a) - matched
    return missing, wrong


def _greedy_matches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int:
    if not a or not b:
        return 0
    iou = bbox_iou([x["bbox"] for x in a], [x["bbox"] for x in b], np.zeros(len(b), dtype=bool))
    same = np.array([x["category_id"] for x in a])[:, None] == np.array([x["category_id"] for x in b])[None, :]
    iou = np.where(same, iou, -1.0)
    pairs = np.argwhere(iou >= LABEL_MATCH_IOU)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -iou[pairs[:, 0], pairs[:, 1]]))
    used_a, used_b, matched = set(), set(), 0
    for i, j in pairs[order]:
        if i not in used_a and j not in used_b:
            used_a.add(int(i))
            used_b.add(int(j))
            matched += 1
    return matched


def label_error_stats(rows: SelectionRows, dataset: CocoDataset, clean: CocoDataset, *,
                      clean_source: str = "<clean>") -> dict[str, Any]:
    """``label_errors`` of ``curation_stats.json``: mean missing and wrong boxes per picked row, rejected row
    and data set image, the share of wrong boxes among the boxes of picked rows, rejected rows and the data
    set, and the pick rate by the number of label errors (missing + wrong) of the scored rows."""
    missing, wrong = label_errors(dataset, clean, clean_source=clean_source)
    index = {img["id"]: i for i, img in enumerate(dataset.images)}
    image_row = np.array([index[i] for i in rows.image_id.tolist()], dtype=np.int64)
    boxes = box_counts(dataset)[1].sum(axis=1)
    groups = (("picked", image_row[rows.picked]), ("rejected", image_row[~rows.picked]),
              ("dataset", np.arange(len(index))))

    def share(r: np.ndarray) -> float:
        total = int(boxes[r].sum())
        return float(wrong[r].sum() / total) if total else math.nan

    errors = missing + wrong
    return {"match_iou": LABEL_MATCH_IOU,
            "missing_per_image": {name: _mean(missing[r]) for name, r in groups},
            "wrong_per_image": {name: _mean(wrong[r]) for name, r in groups},
            "wrong_box_share": {name: share(r) for name, r in groups},
            "pick_rate_by_errors": [{"errors": e["boxes"], **{k: v for k, v in e.items() if k != "boxes"}}
                                    for e in _pick_rate_by_boxes(errors[image_row], rows.picked)]}


def _box_shares(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per category: share of all boxes (NaN when there is none) and the box count, for rows of ``counts``."""
    total = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / total.sum(), total


def _pick_rate_by_boxes(boxes: np.ndarray, picked: np.ndarray) -> list[dict[str, Any]]:
    """Per box count among the scored rows: how many rows were scored and picked, and the picked fraction."""
    return [{"boxes": int(n), "scored": int((boxes == n).sum()), "picked": int(picked[boxes == n].sum()),
             "rate": float(picked[boxes == n].mean())} for n in np.unique(boxes)]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def _score_summary(scores: np.ndarray) -> dict[str, Any]:
    if not scores.size:
        return {"count": 0, "mean": math.nan, "min": math.nan, **dict.fromkeys(QUANTILES, math.nan), "max": math.nan}
    quantiles = np.quantile(scores, list(QUANTILES.values()))
    return {"count": int(scores.size), "mean": float(scores.mean()), "min": float(scores.min()),
            **{name: float(q) for name, q in zip(QUANTILES, quantiles, strict=True)}, "max": float(scores.max())}


def _epoch_equivalents(picked_ids: np.ndarray, n_images: int) -> list[dict[str, Any]]:
    """Distinct images in each block of ``n_images`` consecutive picks (the last block may be partial)."""
    return [{"epoch": k + 1, "picks": int(block.size), "distinct_images": int(np.unique(block).size),
             "complete": block.size == n_images}
            for k, block in enumerate(np.split(picked_ids, range(n_images, picked_ids.size, n_images)))]


def _stages(rows: SelectionRows, image_row: np.ndarray, background: np.ndarray, n_images: int) -> list[dict[str, Any]]:
    events = np.unique(rows.iteration)
    out = []
    for name, group in zip(STAGE_NAMES, np.array_split(events, len(STAGE_NAMES)), strict=True):
        inside = np.isin(rows.iteration, group)
        picked, rejected = inside & rows.picked, inside & ~rows.picked
        distinct = int(np.unique(rows.image_id[picked]).size)
        out.append({"stage": name, "first_iteration": int(group[0]) if group.size else None,
                    "last_iteration": int(group[-1]) if group.size else None, "scoring_events": int(group.size),
                    "picked_rows": int(picked.sum()), "distinct_images": distinct,
                    "distinct_images_frac": distinct / n_images,
                    "background_share_picked": _mean(background[image_row[picked]]),
                    "mean_picked_score": _mean(rows.score[picked]), "mean_rejected_score": _mean(rows.score[rejected])})
    return out


def _json_ready(value: Any) -> Any:
    """NaN -> None (strict JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {key: _json_ready(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def curation_report(selections_csv: str | os.PathLike[str], annotations_json: str | os.PathLike[str], *,
                    out_dir: str | os.PathLike[str],
                    clean_annotations: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Statistics and figures of what a curated run picked, written into ``out_dir`` (created if absent).

    ``clean_annotations``: the true labels of the same training images, when the run trained on noisy
    ones (e.g. from ``detcurate data corrupt``); adds ``label_errors`` (``label_error_stats``): does the
    selection avoid the images whose labels are wrong?

    Returns the content of ``curation_stats.json`` (NaN as ``None``) plus ``"files"``: the three paths
    written. Bad input is a one-line ``DataError`` (or ``CocoValidationError``) naming the file and the
    row; then nothing is written. Everything is computed and drawn before the first file is written.
    """
    dataset = load_coco(annotations_json)
    rows = read_selection_log(selections_csv, dataset=dataset)
    extra: dict[str, Any] = {}
    if clean_annotations is not None:
        extra = {"clean_annotations": str(clean_annotations),
                 "label_errors": label_error_stats(rows, dataset, load_coco(clean_annotations),
                                                   clean_source=str(clean_annotations))}
    stats = _json_ready({"selections": str(selections_csv), "annotations": str(annotations_json),
                         **selection_stats(rows, dataset), **extra})
    scores_png = _scores_figure(rows, title=f"{Path(selections_csv).parent.name}: {', '.join(rows.methods)}")
    categories_png = _categories_figure(stats)
    out = Path(out_dir)
    files = {"stats": out / STATS_NAME, "scores_figure": out / SCORES_FIGURE, "categories_figure": out / CATEGORIES_FIGURE}
    write_json_atomic(files["stats"], stats, indent=2)
    write_bytes_atomic(files["scores_figure"], scores_png)
    write_bytes_atomic(files["categories_figure"], categories_png)
    return {**stats, "files": {key: str(path) for key, path in files.items()}}


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(figure)
    return buffer.getvalue()


def _scores_figure(rows: SelectionRows, *, title: str) -> bytes:
    """ECDFs of picked and rejected scores: all of training, then each third."""
    plt = _pyplot()
    events = np.unique(rows.iteration)
    panels = [("all of training", np.ones(rows.picked.size, dtype=bool))]
    panels += [(f"{name} third", np.isin(rows.iteration, group))
               for name, group in zip(STAGE_NAMES, np.array_split(events, len(STAGE_NAMES)), strict=True)]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), sharex=True, sharey=True,
                                squeeze=False)
    for axis, (label, inside) in zip(axes[0], panels, strict=True):
        for name, mask, colour in (("picked", rows.picked, "tab:blue"), ("rejected", ~rows.picked, "tab:gray")):
            scores = np.sort(rows.score[inside & mask])
            if scores.size:  # the ECDF rises from 0 at the lowest score to 1 at the highest
                axis.step(np.r_[scores[0], scores], np.arange(scores.size + 1) / scores.size, where="post",
                          color=colour, label=f"{name} (n={scores.size})")
        axis.set_title(label)
        axis.set_xlabel("score (higher = more useful)")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, "no scoring event", ha="center", va="center", transform=axis.transAxes)
    axes[0][0].set_ylabel("fraction of rows <= score")
    axes[0][0].set_ylim(0.0, 1.02)
    figure.suptitle(title)
    return _png(figure)


def _categories_figure(stats: dict[str, Any]) -> bytes:
    """Grouped bars: category shares of boxes (data set, scored, picked), and the background-only share."""
    plt = _pyplot()
    categories = stats["categories"]
    groups = (("data set", "dataset", "tab:gray"), ("scored", "scored", "tab:orange"), ("picked", "picked", "tab:blue"))
    bars_width = min(max(4.5, 0.5 * len(categories) + 1.0), 27.0)  # inches; the background panel gets 2.4
    figure, (boxes, background) = plt.subplots(1, 2, figsize=(bars_width + 2.4, 3.8),
                                               gridspec_kw={"width_ratios": [bars_width, 2.4]})
    x = np.arange(len(categories))
    for k, (label, key, colour) in enumerate(groups):
        shares = [np.nan if c[f"{key}_share"] is None else c[f"{key}_share"] for c in categories]
        boxes.bar(x + (k - 1) * 0.27, shares, width=0.27, label=label, color=colour)
        value = stats["background_share"][key]
        background.bar(k, np.nan if value is None else value, width=0.8, color=colour)
    boxes.set_xticks(x, [c["name"] for c in categories], rotation=45 if len(categories) > 8 else 0, ha="right"
                     if len(categories) > 8 else "center")
    boxes.set_ylabel("share of non-crowd boxes")
    boxes.set_title("category share of boxes")
    highest = max([c[f"{g[1]}_share"] or 0.0 for c in categories for g in groups] + [0.0])
    boxes.set_ylim(0.0, 1.25 * highest if highest > 0 else 1.0)  # room for the legend
    boxes.legend(fontsize="small", ncols=3, loc="upper left")
    background.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=30, ha="right")
    background.set_ylabel("share of images without a box")
    background.set_title("background-only")
    for axis in (boxes, background):
        axis.grid(axis="y", alpha=0.3)
    return _png(figure)
