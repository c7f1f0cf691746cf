"""Throughput of the synthetic data set on one CPU core: images/s at 128 and 256 px.

Stages, side by side, on the same images: rendering only (``render_image``), rendering + PNG
encoding, the full ``generate_split`` into an empty folder (render, encode, atomic write of every PNG,
annotation file) and again into the filled folder (resume: nothing to write). The process pins itself
to one core (``--core``, like ``taskset -c 0``); writer threads share that core. Each row is the best
of ``--repeats`` runs; wall-clock and CPU-time rates are both reported (on a shared machine the wall
rate also measures the other processes).

    python benchmarks/bench_synth.py [--images 1000] [--repeats 3] [--core 0] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.synth import SynthConfig, encode_png, generate_split, image_rng, render_image  # noqa: E402


def _best_of(repeats: int, fn) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` calls ``fn(r)`` (least disturbed by other processes)."""
    best = (math.inf, math.inf)
    for r in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn(r)
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def measure(size: int, n_images: int, repeats: int, workdir: Path) -> list[dict]:
    """Rows for one image size: stage, images, seconds, images/s (wall and CPU)."""
    config = SynthConfig(size=size)

    def render(_: int) -> None:
        for i in range(n_images):
            render_image(config, image_rng(config.seed, "train", i))

    def render_encode(_: int) -> None:
        for i in range(n_images):
            encode_png(render_image(config, image_rng(config.seed, "train", i)).image)

    def generate(r: int) -> None:  # a fresh folder each time: every PNG is written
        generate_split(workdir / f"s{size}-{r}", "train", n_images, config)

    def regenerate(r: int) -> None:  # the folder of the first run: every PNG exists with the same bytes
        generate_split(workdir / f"s{size}-0", "train", n_images, config)

    stages = (("render", render), ("render+encode", render_encode), ("render+encode+write", generate),
              ("rerun (resume: no writes)", regenerate))
    rows = []
    for stage, fn in stages:
        wall, cpu = _best_of(repeats, fn)
        rows.append({"size": size, "stage": stage, "images": n_images, "seconds": wall,
                     "images_per_s": n_images / wall, "cpu_images_per_s": n_images / max(cpu, 1e-9)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images per size and stage")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: do not pin)")
    parser.add_argument("--quick", action="store_true", help="100 images per size and stage")
    parser.add_argument("--out", default="benchmarks/results/synth.json")
    args = parser.parse_args(argv)
    n_images, repeats = (100, 1) if args.quick else (args.images, args.repeats)
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    with tempfile.TemporaryDirectory() as tmp:
        render_image(SynthConfig(), image_rng(0, "val", 0))  # warm-up: imports, caches
        rows = [row for size in args.sizes for row in measure(size, n_images, repeats, Path(tmp))]
    print_rows(f"Synthetic data set throughput on one core ({n_images} images per row, best of {repeats})", rows)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    write_result(args.out, "synth", rows, pinned_core=args.core, repeats=repeats, load_average=load)


if __name__ == "__main__":
    main()
