"""``detcurate data synth``: write the built-in synthetic COCO detection data set."""

from __future__ import annotations

import time
from pathlib import Path

import click

from pipelines.cli import ui


@click.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder: train/ and val/ (images/*.png, annotations.json) and synth.json.")
@click.option("--train", type=int, default=1200, show_default=True, help="Number of training images.")
@click.option("--val", type=int, default=300, show_default=True, help="Number of validation images.")
@click.option("--size", type=int, default=128, show_default=True, help="Side of the square images in pixels (>= 32).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; the same arguments give the same files byte for byte.")
@click.option("--imbalance", type=float, default=10.0, show_default=True,
              help="Ratio R >= 1 of the most to the least frequent class (class k has weight R^(-k/(K-1))).")
@click.option("--max-objects", type=int, default=20, show_default=True, help="Most annotated objects per image.")
def synth_cmd(out_dir: Path, train: int, val: int, size: int, seed: int, imbalance: float, max_objects: int) -> None:
    """Write a synthetic COCO data set of shapes told apart by outline and texture, never by colour.

    \b
    Eight classes (discs, squares, triangles, rings, crosses, stars; solid vs dotted discs and striped
    vs checkered squares differ only by texture), random colours, small/medium/large objects, partial
    occlusion, unannotated clutter, about 8% background-only images and long-tailed class frequencies.
    Running it again into the same folder resumes: images are rendered again and only missing or
    different PNGs are written; the annotation files and synth.json are written last.
    """
    from components.synth import synthesize

    start = time.perf_counter()
    summary = synthesize(out_dir, train=train, val=val, size=size, seed=seed, imbalance=imbalance,
                         max_objects=max_objects, progress=ui.progress_bar)
    seconds = time.perf_counter() - start
    splits = summary["splits"]
    rows = [[name, splits["train"]["per_category"][name], splits["val"]["per_category"][name]]
            for name in splits["train"]["per_category"]]
    rows.append(["all objects", splits["train"]["annotations"], splits["val"]["annotations"]])
    rows += [[f"{r} objects", splits["train"]["area_ranges"][r], splits["val"]["area_ranges"][r]]
             for r in ("small", "medium", "large")]
    rows += [[key.replace("_", " "), splits["train"][key], splits["val"][key]]
             for key in ("images", "empty_images", "max_objects_per_image", "clutter")]
    ui.print_table(f"synthetic data set {out_dir} (size {size}, seed {seed}, imbalance {imbalance:g})",
                   ["category", "train", "val"], rows)
    files = summary["files"]
    written = sum(f["written"] for f in files.values())
    n_images = train + val
    click.echo(f"{n_images} images in {seconds:.1f} s ({n_images / max(seconds, 1e-9):.0f} images/s); "
               f"{written} PNGs written, {n_images - written} unchanged, "
               f"{sum(f['removed'] for f in files.values())} stale removed; wrote {out_dir / 'synth.json'}")
