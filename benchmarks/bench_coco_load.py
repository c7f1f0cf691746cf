"""Load time of a large COCO file: json parsing, validation of every record, normalisation.

Writes a COCO file with ``--annotations`` boxes (default 1,000,000) over 80 categories, then times
``curation_core.coco.load_coco`` (parse + validate + normalise) and, side by side, pycocotools'
``COCO(path)`` (parse + index, no validation).

    python benchmarks/bench_coco_load.py [--annotations 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.coco import load_coco, read_json, validate_coco  # noqa: E402


def make_coco(n_annotations: int, *, n_categories: int = 80, per_image: int = 7, seed: int = 0) -> dict:
    """A valid COCO object with ``n_annotations`` random boxes, ``per_image`` per 640x480 image on average."""
    rng = np.random.default_rng(seed)
    n_images = max(1, n_annotations // per_image)
    image_of = np.sort(rng.integers(1, n_images + 1, n_annotations))
    wh = rng.uniform(1, 200, (n_annotations, 2)).round(2)
    xy = (rng.uniform(0, 1, (n_annotations, 2)) * (np.array([640.0, 480.0]) - wh)).round(2)
    cats = rng.integers(1, n_categories + 1, n_annotations)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i:08d}.jpg"} for i in range(1, n_images + 1)]
    annotations = [
        {"id": k + 1, "image_id": int(image_of[k]), "category_id": int(cats[k]),
         "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
         "area": float(round(wh[k, 0] * wh[k, 1], 2)), "iscrowd": 0}
        for k in range(n_annotations)
    ]
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, n_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 annotations")
    parser.add_argument("--out", default="benchmarks/results/coco_load.json")
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else args.annotations
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.json"
        path.write_text(json.dumps(make_coco(n)))
        size_mb = path.stat().st_size / 1e6
        t_parse, raw = _timed(read_json, path)
        t_validate, problems = _timed(validate_coco, raw, file=str(path))
        if problems:
            raise SystemExit(f"generated file is invalid: {problems[0]}")
        del raw
        t_load, ds = _timed(load_coco, path)
        n_loaded = len(ds.annotations)
        del ds
        import contextlib
        import io

        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            t_pycoco, _ = _timed(COCO, str(path))
    rows = [
        {"step": "json parse", "seconds": t_parse},
        {"step": "validate every record", "seconds": t_validate},
        {"step": "load_coco (parse+validate+normalise)", "seconds": t_load},
        {"step": "pycocotools COCO(path) (parse+index)", "seconds": t_pycoco},
    ]
    print_rows(f"Loading {n_loaded:,} annotations ({size_mb:.0f} MB)", rows)
    write_result(args.out, "coco_load", rows, annotations=n_loaded, file_mb=size_mb)


if __name__ == "__main__":
    main()
