"""``detcurate data corrupt``: missing-label (BRL easy/hard/extreme, per-category drop) and noisy-label copies."""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli import ui

#: Same names as ``curation_core.corrupt.CORRUPTION_MODES`` (kept literal so that --help imports nothing heavy).
MODES = ("easy", "hard", "extreme", "drop-per-category", "spurious", "jitter", "swap")


@click.command("corrupt")
@click.option("--in", "in_path", required=True, type=click.Path(path_type=Path), help="Input COCO JSON.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Corrupted COCO JSON to write (atomically).")
@click.option("--mode", required=True, type=click.Choice(MODES),
              help="easy: drop 1 box of images with >= 2; hard: drop floor(n/2) of images with >= 2; extreme: keep "
                   "1 box per image; drop-per-category: drop round(P*n_c) per category; spurious: add round(P*n) "
                   "false boxes; jitter: perturb every box by relative noise R; swap: relabel round(P*n) boxes.")
@click.option("--seed", required=True, type=click.IntRange(min=0), help="Random seed (results do not depend on record order).")
@click.option("--fraction", type=float, default=None,
              help="P in [0, 1]; required by drop-per-category, spurious and swap, refused by the other modes.")
@click.option("--amount", type=float, default=None, help="R >= 0, relative box noise; required by jitter only.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON report to write [default: OUT with suffix .report.json].")
def corrupt_cmd(in_path: Path, out_path: Path, mode: str, seed: int, fraction: float | None, amount: float | None,
                report_path: Path | None) -> None:
    """Write a copy of a COCO file with removed, added, moved or relabelled annotations, plus a report.

    \b
    Crowd annotations (iscrowd=1) are never touched and never counted. Counts round(P*n) round half to
    even. The per-category table and the report give before/after/removed/added/changed counts.
    """
    from components.corrupt import corrupt_coco, default_report_path
    from curation_core.corrupt import BRL_VOC0712_DROPPED

    result = corrupt_coco(in_path, out_path, mode=mode, seed=seed, fraction=fraction, amount=amount,
                          report_path=report_path)
    columns = ["category", "before", "after", "removed", "added", "changed"]
    if mode == "swap":  # "changed" counts the boxes relabelled away from the category
        columns.append("swapped in")
    rows = [[c.name, c.before, c.after, c.removed, c.added, c.changed, c.relabelled_in][: len(columns)]
            for c in result.per_category]
    rows.append(["all", result.n_before, result.n_after, len(result.removed_ids), len(result.added_ids),
                 len(result.changed_ids), len(result.changed_ids)][: len(columns)])
    ui.print_table(f"{mode} corruption of {in_path} (seed {seed})", columns, rows)
    click.echo(f"removed {len(result.removed_ids)} of {result.n_before} annotations ({result.fraction_removed:.2%}), "
               f"added {len(result.added_ids)} ({result.fraction_added:.2%}), "
               f"changed {len(result.changed_ids)} ({result.fraction_changed:.2%}); "
               f"{result.images_affected} of {result.n_images} images affected; {result.n_crowd} crowd kept")
    if mode in BRL_VOC0712_DROPPED:
        click.echo(f"dropped fraction {result.fraction_removed:.2%} "
                   f"(the BRL paper reports {BRL_VOC0712_DROPPED[mode]:.2%} for '{mode}' on VOC07+12)")
    click.echo(f"wrote {out_path} and {report_path or default_report_path(out_path)}")
