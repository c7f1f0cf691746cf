"""Pipeline step: offline balancing of a training set into a curation manifest, with its report.

Reads the COCO annotations (and, as given, the images, a checkpoint or predictions), calls
``curation_core.offline.balance.balance_dataset`` once, and writes (each file atomically, the data set
itself never):

- ``MANIFEST.json``: the manifest (``curation_core.offline.manifest``), read by training as ``data.manifest``;
- ``MANIFEST.md``: per category the images holding it, ``f(c)``, ``r(c)`` and the annotations per epoch
  before and after (expected counts under the weights), and the kept/dropped counts by reason;
- ``MANIFEST_classes.png``: annotations per epoch per category, before and after;
- ``MANIFEST_weights.png``: the distribution of the sampling weights of the kept images.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset, load_coco, load_detections
from curation_core.errors import ConfigError
from curation_core.io import atomic_write, write_bytes_atomic
from curation_core.offline.balance import balance_dataset
from curation_core.offline.manifest import Manifest, save_manifest
from curation_core.progress import ProgressFn


@dataclass(frozen=True)
class BalanceSummary:
    """What ``balance_training_set`` wrote: the manifest and its report files."""

    manifest_path: Path
    report_path: Path
    class_figure: Path
    weight_figure: Path
    manifest: Manifest
    per_category: list[dict[str, Any]]


def report_paths(manifest_path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``out/m.json`` -> ``out/m.md``, ``out/m_classes.png``, ``out/m_weights.png``."""
    p = Path(manifest_path)
    return p.with_suffix(".md"), p.with_name(f"{p.stem}_classes.png"), p.with_name(f"{p.stem}_weights.png")


def balance_training_set(annotations: str | os.PathLike[str], out_manifest: str | os.PathLike[str], *,
                         images: str | os.PathLike[str] | None = None, predictions: str | os.PathLike[str] | None = None,
                         checkpoint: str | os.PathLike[str] | None = None, threshold: float = 0.3,
                         near_threshold: float = 0.0, budget: int | None = None, device: str = "cpu",
                         progress: ProgressFn | None = None) -> BalanceSummary:
    """Write the manifest of ``annotations`` and its report (module docstring); see ``balance_dataset``.

    Raises ``ConfigError`` for contradicting options, ``DataError``/``CheckpointError`` for unreadable
    or invalid inputs; nothing is written then.
    """
    if predictions is not None and checkpoint is not None:
        raise ConfigError("balance: give --predictions or --checkpoint (one source of embeddings), not both")
    gt = load_coco(annotations)
    detections = load_detections(predictions, gt) if predictions is not None else None
    detector = None
    if checkpoint is not None:
        from curation_core.engine.predict import load_detector

        detector = load_detector(checkpoint, device=device)
    manifest = balance_dataset(gt, threshold=threshold, image_root=images, detector=detector, detections=detections,
                               near_threshold=near_threshold, budget=budget, progress=progress)
    per_category = category_table(gt, manifest)
    md, classes_png, weights_png = report_paths(out_manifest)
    write_bytes_atomic(classes_png, _class_figure(per_category))
    write_bytes_atomic(weights_png, _weight_figure(manifest))
    with atomic_write(md) as handle:
        handle.write(_markdown(manifest, per_category, Path(out_manifest)))
    save_manifest(manifest, out_manifest)  # last: a manifest on disk always has its report
    return BalanceSummary(manifest_path=Path(out_manifest), report_path=md, class_figure=classes_png,
                          weight_figure=weights_png, manifest=manifest, per_category=per_category)


def category_table(gt: CocoDataset, manifest: Manifest) -> list[dict[str, Any]]:
    """Per category: images holding it, f(c), r(c), annotations per epoch before and after (expected)."""
    weight = {e.image_id: e.weight for e in manifest.entries}
    before, after, images = Counter(), Counter(), Counter()
    for img in gt.images:
        anns = [a for a in gt.annotations_by_image[img["id"]] if not a["iscrowd"]]
        for cid in {a["category_id"] for a in anns}:
            images[cid] += 1
        for a in anns:
            before[a["category_id"]] += 1
            after[a["category_id"]] += weight[img["id"]]
    freq, factor = manifest.summary["category_frequencies"], manifest.summary["category_repeat_factors"]
    total_before, total_after = sum(before.values()) or 1, sum(after.values()) or 1
    return [{"category_id": c["id"], "name": c["name"], "images": images[c["id"]],
             "f": freq.get(str(c["id"])), "r": factor.get(str(c["id"])),
             "annotations_before": before[c["id"]], "annotations_after": round(after[c["id"]], 3),
             "share_before": before[c["id"]] / total_before, "share_after": after[c["id"]] / total_after}
            for c in gt.categories]


def _markdown(manifest: Manifest, rows: list[dict[str, Any]], path: Path) -> str:
    s, p = manifest.summary, manifest.parameters
    reasons = Counter(r.split(" (")[0].split(" of image")[0] for e in manifest.entries for r in e.reasons
                      if not r.startswith("repeat factor"))
    lines = [f"# Curation manifest `{path.name}`", "",
             f"Data set `{manifest.source}` ({s['images']} images, images sha256 `{manifest.identity[:12]}`). "
             f"Repeat-factor threshold t = {p['threshold']}; exact deduplication {'on' if p['exact_dedup'] else 'off'}; "
             f"near-duplicate threshold {p['near_threshold']} ({p['embeddings'] or 'no'} embeddings); "
             f"diversity budget {p['budget']}.", "",
             f"Kept {s['kept']}, dropped {s['dropped']}"
             + ("".join(f"; {n}: {k}" for k, n in sorted(reasons.items())) if reasons else "")
             + f"; repeated (r > 1) {s['repeated']}; expected images per epoch {s['expected_images_per_epoch']:.1f}.",
             "", "| category | images | f(c) | r(c) | annotations / epoch before | after | share before | after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = "-" if r["f"] is None else f"{r['f']:.4f}"
        rc = "-" if r["r"] is None else f"{r['r']:.3f}"
        lines.append(f"| {r['name']} | {r['images']} | {f} | {rc} | {r['annotations_before']} | "
                     f"{r['annotations_after']:.1f} | {r['share_before']:.3f} | {r['share_after']:.3f} |")
    lines += ["", f"![classes]({path.stem}_classes.png) ![weights]({path.stem}_weights.png)", ""]
    return "\n".join(lines)


def _png(figure: Any) -> bytes:
    from matplotlib import pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot as plt

    return plt


def _class_figure(rows: list[dict[str, Any]]) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.5))
    x = np.arange(len(rows))
    axis.bar(x - 0.2, [r["annotations_before"] for r in rows], width=0.4, label="before (once per epoch)")
    axis.bar(x + 0.2, [r["annotations_after"] for r in rows], width=0.4, label="after (expected under the weights)")
    axis.set_xticks(x, [r["name"] for r in rows], rotation=30, ha="right")
    axis.set_ylabel("annotations per epoch")
    axis.legend()
    return _png(figure)


def _weight_figure(manifest: Manifest) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.0, 3.5))
    kept = [e.weight for e in manifest.entries if e.keep]
    axis.hist(kept, bins=20)
    axis.set_xlabel("sampling weight (expected draws per epoch)")
    axis.set_ylabel("kept images")
    axis.set_title(f"{len(kept)} kept, {manifest.num_images - len(kept)} dropped")
    return _png(figure)
