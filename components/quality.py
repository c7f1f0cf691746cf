"""Pipeline step: the label-quality report of a COCO data set from out-of-sample predictions.

Reads the annotations and the predictions, calls ``curation_core.offline.label_quality.find_label_errors``
once, and writes into ``out_dir`` (each file atomically):

- ``images.csv``: ``image_id,score,kind,missing,wrong_class,badly_placed,spurious,num_annotations``,
  by descending score (higher = more likely an error);
- ``annotations.csv``: ``annotation_id,image_id,category_id,score,kind,wrong_class,badly_placed,spurious,
  suggested_category_id``, by descending score;
- ``missing_boxes.json``: predictions that look like missing annotations (COCO results + ``missing_score``);
- ``summary.json`` and ``report.md``: counts per kind, the top of each ranking, and the protocol the
  predictions came from.

Predictions file: a COCO results list, or ``{"protocol": "k-fold" | "held-out" | "in-sample",
"folds": K, "detections": [...]}`` (what the benchmark and a k-fold run write). ``protocol=`` says
the same from the command line; a value contradicting the file is an error. In-sample predictions
(a model trained on these very labels) are accepted with a warning in the report: they reproduce
the label errors they should expose.

``label_quality_of_model`` is the pipeline's form: it predicts the data set with a trained checkpoint
first (``predictions.json`` in ``out_dir``), its caller stating the protocol.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation_core.coco import load_coco, read_json, validate_detections
from curation_core.errors import CocoValidationError, ConfigError, DataError
from curation_core.io import atomic_write, write_json_atomic
from curation_core.offline.label_quality import ANNOTATION_KINDS, KINDS, LabelQualityReport, find_label_errors

#: Where the predictions came from; ``unknown`` when neither the file nor the caller says.
PROTOCOLS = ("k-fold", "held-out", "in-sample", "unknown")
OUT_OF_SAMPLE = frozenset({"k-fold", "held-out"})
#: Files of ``out_dir`` besides the report's: the predictions of ``label_quality_of_model``, the summary.
PREDICTIONS_NAME = "predictions.json"
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"


@dataclass(frozen=True)
class QualitySummary:
    """What ``label_quality_report`` wrote: the folder, the protocol, counts of images/annotations
    flagged (score >= ``threshold``) per kind, and the report itself."""

    out_dir: Path
    protocol: str
    folds: int | None
    num_images: int
    num_annotations: int
    num_predictions: int
    flagged_images: dict[str, int]
    flagged_annotations: dict[str, int]
    report: LabelQualityReport


def read_predictions(path: str | os.PathLike[str], gt: Any, *, protocol: str | None = None
                     ) -> tuple[list[dict[str, Any]], str, int | None]:
    """(detections, protocol, folds) of a predictions file (module docstring); validated against ``gt``."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"read_predictions(protocol=) expects one of {', '.join(PROTOCOLS)}; got {protocol!r}.")
    raw = read_json(path)
    folds = None
    if isinstance(raw, dict):
        stated = raw.get("protocol")
        if stated not in PROTOCOLS[:-1] or "detections" not in raw:
            raise DataError(f"{path}: <file>: a wrapped predictions file needs \"protocol\" (one of "
                            f"{', '.join(PROTOCOLS[:-1])}) and \"detections\"; got keys {sorted(raw)}")
        if protocol not in (None, "unknown", stated):
            raise ConfigError(f"--protocol {protocol} contradicts {path}, which says {stated!r}")
        protocol, folds, raw = stated, raw.get("folds"), raw["detections"]
    problems = validate_detections(raw, gt, file=str(path))
    if problems:
        raise CocoValidationError(problems)
    return raw, protocol or "unknown", folds


def label_quality_report(annotations: str | os.PathLike[str], predictions: str | os.PathLike[str],
                         out_dir: str | os.PathLike[str], *, protocol: str | None = None, threshold: float = 0.5,
                         top: int = 20) -> QualitySummary:
    """Write the label-quality report of ``annotations`` into ``out_dir`` (see the module docstring).

    ``threshold``: the score from which an image or annotation counts as flagged (and a prediction
    is listed in ``missing_boxes.json``). Raises ``DataError``/``CocoValidationError`` for unreadable
    or invalid inputs (predictions of images not in the annotations included) and ``ConfigError``
    for bad options; nothing is written then.
    """
    _check_threshold("label_quality_report", threshold)
    gt = load_coco(annotations)
    detections, protocol, folds = read_predictions(predictions, gt, protocol=protocol)
    report = find_label_errors(gt, detections)
    out = Path(out_dir)
    flagged_images = {k: sum(i.kind == k and i.score >= threshold for i in report.images) for k in KINDS}
    flagged_anns = {k: sum(a.kind == k and a.score >= threshold for a in report.annotations) for k in ANNOTATION_KINDS}
    summary = QualitySummary(out_dir=out, protocol=protocol, folds=folds, num_images=len(report.images),
                             num_annotations=len(report.annotations), num_predictions=len(detections),
                             flagged_images=flagged_images, flagged_annotations=flagged_anns, report=report)
    _write_csvs(out, report)
    write_json_atomic(out / "missing_boxes.json", report.missing_boxes(min_score=threshold), indent=1)
    write_json_atomic(out / SUMMARY_NAME, _summary_dict(summary, annotations, predictions, threshold), indent=2)
    with atomic_write(out / REPORT_NAME) as handle:
        handle.write(_markdown(summary, annotations, predictions, threshold, top))
    return summary


def label_quality_of_model(checkpoint: str | os.PathLike[str], annotations: str | os.PathLike[str],
                           images: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, protocol: str,
                           threshold: float = 0.5, top: int = 20, batch_size: int = 8,
                           device: str = "cpu") -> QualitySummary:
    """The label-quality report of ``annotations`` from the detections of the trained ``checkpoint``.

    Parameters
    ----------
    protocol : how the checkpoint's model relates to these labels (``k-fold``, ``held-out`` or
        ``in-sample``: trained on them, and the report then says its scores are unreliable).
    threshold, top : as for ``label_quality_report``.
    batch_size, device : of the prediction of every image of ``annotations`` (in ``images``).

    ``out_dir`` gets ``predictions.json`` (``{"protocol", "detections"}``, COCO results, xywh absolute
    pixels) beside the files of ``label_quality_report``. Raises ``ConfigError`` for a bad option
    before anything runs, ``CheckpointError`` for a checkpoint of other categories.
    """
    if protocol not in PROTOCOLS[:-1]:
        raise ConfigError(f"label_quality_of_model(protocol=) expects one of {', '.join(PROTOCOLS[:-1])}; "
                          f"got {protocol!r}.")
    _check_threshold("label_quality_of_model", threshold)
    from curation_core.engine.predict import load_detector, predict_dataset

    detector = load_detector(checkpoint, device=device)
    detections = predict_dataset(detector, load_coco(annotations), images, batch_size=batch_size)
    predictions = Path(out_dir) / PREDICTIONS_NAME
    write_json_atomic(predictions, {"protocol": protocol, "detections": detections})
    return label_quality_report(annotations, predictions, out_dir, threshold=threshold, top=top)


def _check_threshold(function: str, threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{function}(threshold=) expects a number in [0, 1]; got {threshold!r}.")


def _write_csvs(out: Path, report: LabelQualityReport) -> None:
    with atomic_write(out / "images.csv") as handle:
        handle.write("image_id,score,kind," + ",".join(KINDS) + ",num_annotations\n")
        for i in report.ranked_images():
            values = ",".join(f"{i.kind_scores[k]:.6g}" for k in KINDS)
            handle.write(f"{i.image_id},{i.score:.6g},{i.kind},{values},{i.num_annotations}\n")
    with atomic_write(out / "annotations.csv") as handle:
        handle.write("annotation_id,image_id,category_id,score,kind," + ",".join(ANNOTATION_KINDS)
                     + ",suggested_category_id\n")
        for a in report.ranked_annotations():
            values = ",".join(f"{a.kind_scores[k]:.6g}" for k in ANNOTATION_KINDS)
            suggested = "" if a.suggested_category_id is None else a.suggested_category_id
            handle.write(f"{a.annotation_id},{a.image_id},{a.category_id},{a.score:.6g},{a.kind},{values},{suggested}\n")


def _protocol_note(summary: QualitySummary) -> str:
    if summary.protocol == "k-fold":
        return f"out-of-sample, {summary.folds or 'k'}-fold cross-prediction"
    if summary.protocol == "held-out":
        return "out-of-sample, predicted by a model trained on a held-out part"
    if summary.protocol == "in-sample":
        return "IN-SAMPLE: the model was trained on these labels, so it reproduces their errors; scores are unreliable"
    return "unknown: say --protocol k-fold|held-out (or wrap the file); in-sample predictions reproduce label errors"


def _shown(path: Any, out_dir: Path) -> str:
    """``path`` as the report shows it: its name when it lies in the report's folder (which may be a
    staging folder renamed afterwards), else as given."""
    return Path(path).name if Path(path).resolve().parent == out_dir.resolve() else str(path)


def _summary_dict(summary: QualitySummary, annotations: Any, predictions: Any, threshold: float) -> dict[str, Any]:
    return {"annotations": str(annotations), "predictions": _shown(predictions, summary.out_dir),
            "protocol": summary.protocol, "folds": summary.folds, "out_of_sample": summary.protocol in OUT_OF_SAMPLE,
            "protocol_note": _protocol_note(summary), "threshold": threshold, "images": summary.num_images,
            "scored_annotations": summary.num_annotations, "predictions_count": summary.num_predictions,
            "flagged_images": summary.flagged_images, "flagged_annotations": summary.flagged_annotations,
            "missing_boxes": len(summary.report.missing_boxes(min_score=threshold))}


def _markdown(summary: QualitySummary, annotations: Any, predictions: Any, threshold: float, top: int) -> str:
    r = summary.report
    lines = ["# Label-quality report", "", f"- annotations: `{annotations}`",
             f"- predictions: `{_shown(predictions, summary.out_dir)}` "
             f"({summary.num_predictions} detections)", f"- predictions were: **{_protocol_note(summary)}**",
             f"- scores in [0, 1], higher = more likely a label error; flagged from {threshold}", "",
             "| kind | flagged images | flagged annotations |", "|---|---|---|"]
    for k in KINDS:
        lines.append(f"| {k} | {summary.flagged_images[k]} | {summary.flagged_annotations.get(k, '-')} |")
    lines += ["", f"## Top {top} images", "", "| image_id | score | kind | " + " | ".join(KINDS) + " |",
              "|---" * (3 + len(KINDS)) + "|"]
    for i in r.ranked_images()[:top]:
        lines.append(f"| {i.image_id} | {i.score:.3f} | {i.kind} | "
                     + " | ".join(f"{i.kind_scores[k]:.3f}" for k in KINDS) + " |")
    lines += ["", f"## Top {top} annotations", "", "| annotation_id | image_id | category_id | score | kind | "
              "suggested category |", "|---|---|---|---|---|---|"]
    for a in r.ranked_annotations()[:top]:
        lines.append(f"| {a.annotation_id} | {a.image_id} | {a.category_id} | {a.score:.3f} | {a.kind} | "
                     f"{'' if a.suggested_category_id is None else a.suggested_category_id} |")
    return "\n".join(lines) + "\n"
