"""Aggregation of the robustness grid over seeds, its Markdown table and its figure.

A cell result is ``{"mode", "loss", "curation", "seed", "AP", "AP50", "AP75"}`` (COCO statistics of
pycocotools on the clean validation set, in [0, 1]). Over the seeds of one (mode, loss, curation):

- mean ``m = sum(x_i) / n``;
- sample standard deviation ``sd = sqrt(sum((x_i - m)^2) / (n - 1))`` (``None`` for n = 1);
- standard error of the mean ``se = sd / sqrt(n)``.

Paired differences (BRL minus focal) take the seeds both losses finished, ``d_i = x_i(brl) - x_i(focal)``,
and report the mean, sd and se of ``d`` the same way: both runs of a seed share the data order and
initialisation, so the paired se is smaller than the two sds would suggest.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curation_core.io import write_bytes_atomic

#: Metrics of every cell, in table order.
METRICS = ("AP", "AP50", "AP75")
#: Keys identifying a cell, in table order.
CELL_KEYS = ("mode", "loss", "curation", "seed")


def mean_sd_se(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "sd", "se"}`` of ``values`` (sd with n - 1; sd and se are None for one value).

    Raises ``ValueError`` for an empty sequence or a non-finite value.
    """
    if not values:
        raise ValueError("mean_sd_se(values=) expects at least one value; got none.")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"mean_sd_se(values=) expects finite numbers; got {bad[0]!r}.")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "se": None}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return {"n": n, "mean": mean, "sd": sd, "se": sd / math.sqrt(n)}


def aggregate(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, loss, curation), in order of first appearance, with ``mean_sd_se`` of each
    metric over its seeds (``{"mode", "loss", "curation", "seeds": [...], "AP": {...}, ...}``)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["mode"], cell["loss"], cell["curation"]), []).append(cell)
    rows = []
    for (mode, loss, curation), members in groups.items():
        row: dict[str, Any] = {"mode": mode, "loss": loss, "curation": curation,
                               "seeds": [c["seed"] for c in members]}
        row.update({m: mean_sd_se([float(c[m]) for c in members]) for m in METRICS})
        rows.append(row)
    return rows


def paired_differences(cells: Sequence[Mapping[str, Any]], *, a: str = "focal", b: str = "brl") -> list[dict[str, Any]]:
    """Per (mode, curation) with both losses on at least one common seed: ``mean_sd_se`` of ``b - a``
    for each metric over the common seeds (``{"mode", "curation", "seeds", "AP": {...}, ...}``)."""
    by_key = {(c["mode"], c["loss"], c["curation"], c["seed"]): c for c in cells}
    order: dict[tuple[str, str], None] = {}
    for cell in cells:
        order.setdefault((cell["mode"], cell["curation"]), None)
    rows = []
    for mode, curation in order:
        seeds = sorted(s for (m, loss, c, s) in by_key if (m, loss, c) == (mode, a, curation)
                       and (mode, b, curation, s) in by_key)
        if not seeds:
            continue
        row: dict[str, Any] = {"mode": mode, "curation": curation, "seeds": seeds}
        for metric in METRICS:
            row[metric] = mean_sd_se([float(by_key[(mode, b, curation, s)][metric]) -
                                      float(by_key[(mode, a, curation, s)][metric]) for s in seeds])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Markdown


def _spread(stat: Mapping[str, Any], *, signed: bool = False) -> str:
    mean = f"{stat['mean']:+.4f}" if signed else f"{stat['mean']:.4f}"
    return mean if stat["sd"] is None else f"{mean} ± {stat['sd']:.4f}"


def markdown_report(cells: Sequence[Mapping[str, Any]], training_sets: Mapping[str, Mapping[str, Any]], *,
                    total_cells: int | None = None, title: str = "Missing-label robustness") -> str:
    """The Markdown report: per (mode, loss, curation) mean ± sd over seeds of AP, AP50 and AP75 (n seeds),
    the dropped fraction of each mode, and the paired BRL - focal differences (mean ± se)."""
    summary = aggregate(cells)
    lines = [f"## {title}", ""]
    done = f"{len(cells)} of {total_cells} cells" if total_cells is not None else f"{len(cells)} cells"
    lines += [f"Clean validation set, pycocotools; mean ± sample sd over seeds ({done} finished).", ""]
    lines += ["| mode | dropped | loss | curation | seeds | AP | AP50 | AP75 |", "|---|---|---|---|---|---|---|---|"]
    for row in summary:
        dropped = training_sets.get(row["mode"], {}).get("dropped_fraction")
        shown = f"{dropped:.1%}" if isinstance(dropped, float) else "?"
        lines.append(f"| {row['mode']} | {shown} | {row['loss']} | {row['curation']} | {len(row['seeds'])} | "
                     + " | ".join(_spread(row[m]) for m in METRICS) + " |")
    diffs = paired_differences(cells)
    if diffs:
        lines += ["", "BRL minus focal, paired by seed (mean ± se of the difference):", "",
                  "| mode | curation | seeds | ΔAP | ΔAP50 | ΔAP75 |", "|---|---|---|---|---|---|"]
        for row in diffs:
            cols = []
            for m in METRICS:
                stat = row[m]
                cols.append(f"{stat['mean']:+.4f}" if stat["se"] is None else f"{stat['mean']:+.4f} ± {stat['se']:.4f}")
            lines.append(f"| {row['mode']} | {row['curation']} | {len(row['seeds'])} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Figure


def plot_robustness(cells: Sequence[Mapping[str, Any]], training_sets: Mapping[str, Mapping[str, Any]],
                    out_png: str | Path, *, modes: Sequence[str], title: str = "Missing-label robustness") -> Path:
    """AP, AP50 and AP75 (one panel each) against the training-set mode, one line per (loss, curation):
    the mean over seeds with sd error bars, and every seed as a dot. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot as plt

    summary = aggregate(cells)
    shown_modes = list(modes)  # every mode of the grid, finished or not, so that partial figures line up
    labels = []
    for m in shown_modes:
        dropped = training_sets.get(m, {}).get("dropped_fraction")
        name = m.replace("drop-per-category", "per\ncategory")
        labels.append(f"{name}\n{dropped:.0%}" if isinstance(dropped, float) else name)
    variants = list(dict.fromkeys((r["loss"], r["curation"]) for r in summary))
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4.6 * len(METRICS), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], METRICS, strict=True):
        for k, (loss, curation) in enumerate(variants):
            rows = {r["mode"]: r for r in summary if (r["loss"], r["curation"]) == (loss, curation)}
            xs = [i + 0.08 * (k - (len(variants) - 1) / 2) for i, m in enumerate(shown_modes) if m in rows]
            present = [m for m in shown_modes if m in rows]
            means = [rows[m][metric]["mean"] for m in present]
            sds = [rows[m][metric]["sd"] or 0.0 for m in present]
            label = loss if len(set(v[1] for v in variants)) == 1 else f"{loss}, {curation}"
            line = axis.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=label)
            for x, m in zip(xs, present, strict=True):
                seeds = [float(c[metric]) for c in cells
                         if (c["mode"], c["loss"], c["curation"]) == (m, loss, curation)]
                axis.scatter([x] * len(seeds), seeds, s=8, alpha=0.4, color=line[0].get_color())
        axis.set_xticks(range(len(shown_modes)), labels, fontsize=8)
        axis.set_ylabel(f"val {metric}")
        top = max([float(c[metric]) for c in cells] + [r[metric]["mean"] + (r[metric]["sd"] or 0.0) for r in summary])
        axis.set_ylim(0.0, 1.15 * top if top > 0 else 1.0)
        axis.set_xlim(-0.5, len(shown_modes) - 0.5)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{title} (training-set mode, dropped fraction)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(out_png, buffer.getvalue())
    return Path(out_png)
