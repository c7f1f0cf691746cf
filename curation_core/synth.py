"""A synthetic COCO detection data set whose classes differ by shape and texture, never by colour.

Eight classes (``CATEGORIES``, ids 1..8): solid and dotted discs, striped and checkered squares
(texture tells each pair apart), triangles, rings, crosses and five-point stars (shape tells them
apart; their fill is a random texture, a nuisance). Every colour is random per object. Images have a
smooth gradient background with noise, 0 to ``max_objects`` objects at COCO small, medium and large
sizes, partial occlusion (every annotated object keeps at least ``MIN_VISIBLE_FRACTION`` of its drawn
pixels) and unannotated clutter (blobs, segments, arcs, half discs, elongated ellipses and rectangles,
noise patches) that looks like no class.

Class frequencies are long-tailed: class ``k`` (0-based, ``CATEGORIES`` order) is drawn with
probability proportional to ``R ** (-k / (K - 1))``, so the most frequent class is ``R`` times as
frequent as the least. The order puts the texture twin of a frequent class (dotted disc, checkered
square) in the tail.

Every image has its own generator, ``SeedSequence(seed, spawn_key=(split key, image index))``, so an
image depends on the seed, split and index only, and the output is identical byte for byte.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from curation_core import synth_shapes as shapes
from curation_core.errors import ConfigError
from curation_core.io import write_bytes_atomic, write_json_atomic
from curation_core.progress import ProgressFn, track

#: Class names, ids 1..K in this order; class k has relative frequency imbalance ** (-k / (K - 1)).
CATEGORIES = ("solid_disc", "striped_square", "triangle", "cross", "ring", "star", "checkered_square", "dotted_disc")
_CLASS_SHAPES = {
    "solid_disc": shapes.with_texture(shapes.disc, "solid"),
    "striped_square": shapes.with_texture(shapes.square, "stripes"),
    "triangle": shapes.triangle,
    "cross": shapes.cross,
    "ring": shapes.ring,
    "star": shapes.star,
    "checkered_square": shapes.with_texture(shapes.square, "checks"),
    "dotted_disc": shapes.with_texture(shapes.disc, "dots"),
}
#: Every annotated object keeps at least this fraction of its drawn pixels visible.
MIN_VISIBLE_FRACTION = shapes.MIN_VISIBLE_FRACTION
#: Smallest target object area in pixels (7 x 7).
MIN_AREA_PX = 49.0
#: Largest target object area as a fraction of the image area. Above about 0.6 a shape fits only when
#: truncated by the image border; this keeps COCO-large objects (>= 96**2 px) present, if rare, at 128 px.
MAX_AREA_FRACTION = 1.5
#: Largest target area of a clutter shape, as a fraction of the image area (clutter stays secondary).
CLUTTER_AREA_FRACTION = 0.2
#: Largest radius (of the circle around a shape) as a fraction of the image side.
MAX_RADIUS_FRACTION = 0.8
#: Standard deviation of the noise added to log(radius) to get the drawing order.
ORDER_JITTER = 1.0
#: Images with more objects than this have proportionally smaller objects (they must fit).
CROWD_FREE_OBJECTS = 4
#: Shape of the negative binomial of the number of objects beyond the first (a heavy-ish tail).
COUNT_DISPERSION = 1.2
#: COCO area ranges (pixels): small < 32**2 <= medium < 96**2 <= large.
SMALL_AREA, LARGE_AREA = 32.0**2, 96.0**2
#: Split names and their seed keys.
SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}
#: Threads writing PNGs (each atomic write waits on an fsync; the waits overlap, the CPU work does not).
WRITER_THREADS = 4
#: Increment when the same seed would give different images.
GENERATOR_VERSION = 1
_CLUTTER_KINDS = tuple(shapes.CLUTTER)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic data set (see the module docstring).

    ``train``/``val`` are image counts, ``size`` the side of the square images in pixels,
    ``imbalance`` the most/least frequent class ratio R >= 1, ``mean_objects`` the mean number of
    objects of a non-empty image before placement failures, ``empty_fraction`` the probability of an
    image without objects, ``mean_clutter`` the mean number of clutter shapes per image.
    """

    train: int = 1200
    val: int = 300
    size: int = 128
    seed: int = 0
    imbalance: float = 10.0
    max_objects: int = 20
    mean_objects: float = 4.0
    empty_fraction: float = 0.08
    mean_clutter: float = 1.5

    def __post_init__(self) -> None:
        checks = [
            ("train", _is_int(self.train) and self.train >= 1, "an integer >= 1"),
            ("val", _is_int(self.val) and self.val >= 1, "an integer >= 1"),
            ("size", _is_int(self.size) and 32 <= self.size <= 4096, "an integer in [32, 4096]"),
            ("seed", _is_int(self.seed) and self.seed >= 0, "an integer >= 0"),
            ("imbalance", _finite(self.imbalance) and self.imbalance >= 1.0, "a number >= 1"),
            ("max_objects", _is_int(self.max_objects) and 0 <= self.max_objects <= 1000, "an integer in [0, 1000]"),
            ("mean_objects", _finite(self.mean_objects) and self.mean_objects >= 1.0, "a number >= 1"),
            ("empty_fraction", _finite(self.empty_fraction) and 0.0 <= self.empty_fraction <= 1.0, "a number in [0, 1]"),
            ("mean_clutter", _finite(self.mean_clutter) and 0.0 <= self.mean_clutter <= 100.0, "a number in [0, 100]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"SynthConfig({name}=) expects {expected}; got {getattr(self, name)!r}.")

    @cached_property
    def class_probabilities(self) -> np.ndarray:
        """float64 (K,): p_k proportional to imbalance ** (-k / (K - 1)), summing to 1."""
        k = np.arange(len(CATEGORIES), dtype=np.float64)
        weights = float(self.imbalance) ** (-k / (len(CATEGORIES) - 1))
        return weights / weights.sum()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SynthImage:
    """One rendered image and what is in it.

    Attributes
    ----------
    image : uint8 (H, W, 3), RGB.
    annotations : list of dict
        One per object, in drawing order: ``category_id`` (1..K), ``bbox`` (xywh, absolute pixels, the
        tight box of the object's whole drawn mask inside the image, occluded parts included), ``area``
        (visible pixel count) and ``drawn_area`` (pixel count when drawn, before later occlusion).
    clutter : list of dict
        Unannotated shapes: ``kind`` (a key of ``synth_shapes.CLUTTER``) and ``bbox`` as above.
    labels : int32 (H, W)
        Which shape each pixel shows: 0 background, ``i + 1`` for ``annotations[i]``, ``-(j + 1)`` for
        ``clutter[j]``.
    """

    image: np.ndarray
    annotations: list[dict[str, Any]]
    clutter: list[dict[str, Any]]
    labels: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class _Item:
    """A shape to draw: ``kind`` is a class name or a clutter kind, ``texture`` an index in ``TEXTURES``."""

    kind: str
    shape: shapes.Shape
    radius: float
    texture: int


def _sample_item(category: str | None, max_area: float, size: int, rng: np.random.Generator) -> _Item:
    """An object of ``category``, or a clutter shape when None, with a log-uniform target area in px."""
    if category is None:
        kind = _CLUTTER_KINDS[int(rng.integers(len(_CLUTTER_KINDS)))]
        shape = shapes.CLUTTER[kind](rng)
    else:
        kind, shape = category, _CLASS_SHAPES[category](rng)
    area = math.exp(rng.uniform(math.log(MIN_AREA_PX), math.log(max(max_area, 2.0 * MIN_AREA_PX))))
    radius = min(math.sqrt(area / shape.unit_area), MAX_RADIUS_FRACTION * size)
    texture = shape.texture if shape.texture is not None else int(rng.integers(len(shapes.TEXTURES)))
    return _Item(kind, shape, radius, shapes.SOLID if kind in ("segment", "arc") else texture)


def render_image(config: SynthConfig, rng: np.random.Generator) -> SynthImage:
    """Render one ``config.size`` x ``config.size`` image with its annotations (see ``SynthImage``).

    Shapes are drawn in painter's order with noise (larger ones tend to lie behind); a shape whose
    placement fails ``PLACEMENT_TRIES`` times is left out, so images hold somewhat fewer objects than drawn.
    """
    size = config.size
    n_objects = 0
    if rng.uniform() >= config.empty_fraction and config.max_objects > 0:
        p = COUNT_DISPERSION / (COUNT_DISPERSION + config.mean_objects - 1.0)
        n_objects = min(config.max_objects, 1 + int(rng.negative_binomial(COUNT_DISPERSION, p)))
    n_clutter = int(rng.poisson(config.mean_clutter))
    classes = rng.choice(len(CATEGORIES), n_objects, p=config.class_probabilities)
    canvas = shapes.Canvas(shapes.background(size, rng), n_objects)
    max_area = MAX_AREA_FRACTION * size * size / max(1.0, n_objects / CROWD_FREE_OBJECTS)
    items = [_sample_item(CATEGORIES[k], max_area, size, rng) for k in classes]
    items += [_sample_item(None, CLUTTER_AREA_FRACTION * size * size, size, rng) for _ in range(n_clutter)]
    keys = np.log([item.radius for item in items]) + rng.normal(0.0, ORDER_JITTER, len(items))
    annotations: list[dict[str, Any]] = []
    clutter: list[dict[str, Any]] = []
    for index in np.argsort(-keys, kind="stable").tolist():
        item, annotated = items[index], index < n_objects
        spot = canvas.place(item.shape, item.radius, rng, annotated=annotated)
        if spot is None:
            continue
        pixels = shapes.fill_colours(canvas, spot, kind=item.kind, texture=item.texture, radius=item.radius, rng=rng)
        if annotated:
            box = canvas.paint(spot, pixels, len(annotations) + 1)
            annotations.append({"category_id": int(classes[index]) + 1, "bbox": box})
        else:
            box = canvas.paint(spot, pixels, -(len(clutter) + 1))
            clutter.append({"kind": item.kind, "bbox": box})
    for i, ann in enumerate(annotations, start=1):
        ann["area"], ann["drawn_area"] = int(canvas.visible[i]), int(canvas.drawn[i])
    image = shapes.add_noise(canvas.rgb, rng)
    return SynthImage(image=image, annotations=annotations, clutter=clutter, labels=canvas.labels)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` (0-based) of ``split``: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_KEYS[split], index)))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) RGB image: filter "Sub" on every row, Huffman-only deflate.

    A fixed, minimal encoder: the same pixels always give the same bytes (no metadata, no adaptive
    choice), and it is about five times faster than Pillow's adaptive filtering at level 1 on these
    noisy images, with smaller files.
    """
    height, width, _ = image.shape
    raw = np.empty((height, width * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type Sub: each byte minus the same byte of the pixel to its left, mod 256
    raw[:, 1:4] = image[:, 0]
    np.subtract(image[:, 1:].reshape(height, -1), image[:, :-1].reshape(height, -1), out=raw[:, 4:])
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = deflate.compress(raw.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


# ----------------------------------------------------------------------------------------------
# Writing a data set


def category_records() -> list[dict[str, Any]]:
    """COCO ``categories``: ids 1..K in ``CATEGORIES`` order."""
    return [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES, start=1)]


def generate_split(
    out_dir: str | os.PathLike[str],
    split: str,
    n_images: int,
    config: SynthConfig,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write ``n_images`` images of ``split`` to OUT/split/images/NNNNNN.png, then OUT/split/annotations.json.

    Resuming: every image is rendered again (it depends on seed, split and index only) and its PNG is
    written, atomically, only when the file is missing or differs, so an interrupted run continues
    where it stopped and a finished one is left untouched. PNGs of higher indices left by a larger
    earlier run are removed. The annotation file is written last, atomically: when it exists, its
    images are complete. Returns the split summary (see ``summarize_split``) with a ``files`` entry
    (PNGs ``written``, ``unchanged``, ``removed``).
    """
    if split not in SPLIT_KEYS:
        raise ConfigError(f"generate_split(split=) expects one of {sorted(SPLIT_KEYS)}; got {split!r}.")
    if not _is_int(n_images) or n_images < 1:
        raise ConfigError(f"generate_split(n_images=) expects an integer >= 1; got {n_images!r}.")
    images_dir, annotations_path = Path(out_dir) / split / "images", Path(out_dir) / split / "annotations.json"
    annotations_path.unlink(missing_ok=True)  # an interrupted run must not leave the old file looking complete
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, clutter = [], [], 0
    with _BackgroundWriter() as writer:
        for index in track(progress, range(n_images), total=n_images, description=f"rendering {split}"):
            image_id = index + 1
            rendered = render_image(config, image_rng(config.seed, split, index))
            name = f"{image_id:06d}.png"
            writer.submit(images_dir / name, encode_png(rendered.image))
            images.append({"id": image_id, "file_name": name, "width": config.size, "height": config.size})
            for ann in rendered.annotations:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ann["category_id"],
                                    "bbox": ann["bbox"], "area": float(ann["area"]), "iscrowd": 0})
            clutter += len(rendered.clutter)
    written, removed = writer.written, _remove_stale(images_dir, n_images)
    info = {"description": "DetCurate synthetic shapes", "version": GENERATOR_VERSION, "split": split,
            "config": config.to_dict()}
    coco = {"info": info, "images": images, "annotations": annotations, "categories": category_records()}
    write_json_atomic(annotations_path, coco)
    summary = summarize_split(coco, clutter=clutter)
    summary["files"] = {"written": written, "unchanged": n_images - written, "removed": removed}
    return summary


def summarize_split(coco: dict[str, Any], *, clutter: int) -> dict[str, Any]:
    """Counts of a COCO object: images, annotations, empty images, clutter, per category, per COCO area range."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_category = dict.fromkeys(names.values(), 0)
    for ann in coco["annotations"]:
        per_category[names[ann["category_id"]]] += 1
    areas = np.array([ann["area"] for ann in coco["annotations"]], dtype=np.float64)
    per_image = np.bincount([ann["image_id"] for ann in coco["annotations"]], minlength=len(coco["images"]) + 1)[1:]
    return {
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "empty_images": int(np.count_nonzero(per_image == 0)),
        "max_objects_per_image": int(per_image.max(initial=0)),
        "clutter": clutter,
        "per_category": per_category,
        "area_ranges": {"small": int(np.count_nonzero(areas < SMALL_AREA)),
                        "medium": int(np.count_nonzero((areas >= SMALL_AREA) & (areas < LARGE_AREA))),
                        "large": int(np.count_nonzero(areas >= LARGE_AREA))},
    }


def generate_dataset(out_dir: str | os.PathLike[str], config: SynthConfig, *,
                     progress: ProgressFn | None = None) -> dict[str, Any]:
    """Write the train and val splits (``generate_split``), then OUT/synth.json, atomically.

    synth.json holds the generator version, the configuration, the categories and, per split, the
    summary of ``summarize_split`` (same bytes for the same configuration). The returned dict is that
    content plus, per split, the ``files`` counts of this run.
    """
    (Path(out_dir) / "synth.json").unlink(missing_ok=True)
    splits = {split: generate_split(out_dir, split, n, config, progress=progress)
              for split, n in (("train", config.train), ("val", config.val))}
    content = {"generator": "detcurate synth", "version": GENERATOR_VERSION, "config": config.to_dict(),
               "categories": category_records(),
               "splits": {name: {k: v for k, v in s.items() if k != "files"} for name, s in splits.items()}}
    write_json_atomic(Path(out_dir) / "synth.json", content, indent=2)
    return {**content, "files": {name: s["files"] for name, s in splits.items()}}


class _BackgroundWriter:
    """Writes files on ``WRITER_THREADS`` threads, so that the fsync of each atomic write overlaps rendering.

    At most ``2 * WRITER_THREADS`` writes are pending; leaving the ``with`` block waits for all of them
    and raises the first write error. ``written`` counts the files whose bytes changed. Each write is
    atomic, so the files are complete whatever order the threads finish in.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="synth-write")
        self._pending: deque[Future[bool]] = deque()
        self.written = 0

    def submit(self, path: Path, data: bytes) -> None:
        while len(self._pending) >= 2 * WRITER_THREADS:
            self.written += self._pending.popleft().result()
        self._pending.append(self._pool.submit(_write_if_changed, path, data))

    def __enter__(self) -> _BackgroundWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            while exc_type is None and self._pending:  # on error, let the pending writes finish unread
                self.written += self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless the file already holds exactly these bytes."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_bytes_atomic(path, data)
    return True


_PNG_NAME = re.compile(r"(\d{6,})\.png")
_TEMP_NAME = re.compile(r"\.\d{6,}\.png\..*\.tmp")  # left by a killed atomic write


def _remove_stale(images_dir: Path, n_images: int) -> int:
    """Remove NNNNNN.png files numbered above ``n_images`` and leftover temporary files; return the count."""
    removed = 0
    for path in images_dir.iterdir():
        match = _PNG_NAME.fullmatch(path.name)
        if (match and int(match.group(1)) > n_images) or _TEMP_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
