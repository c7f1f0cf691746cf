"""COCO detection data: load, validate every record, save atomically.

Boxes follow COCO: ``bbox = [x, y, w, h]`` in absolute pixels, top-left origin. Optional annotation
fields are normalised on load: a missing ``iscrowd`` or ``ignore`` becomes 0 and a missing ``area``
becomes ``w * h``. Note that pycocotools' box evaluation overwrites ``ignore`` with ``iscrowd``; the
evaluation in this package follows pycocotools exactly, so ``ignore`` is carried through the data
model (and by the training engine) but does not change mAP. The optional ``unverified`` flag (0 or 1,
validated, kept as written; absent means 0) marks a box not yet confirmed, which training dampens.
The optional image flag ``incomplete`` (0 or 1, validated, kept as written; absent means 0) says that
the image's boxes are not all of its objects: training then takes no background loss on it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from curation_core.errors import CocoValidationError, DataError, Problem
from curation_core.io import write_json_atomic
from curation_core.progress import ProgressFn, track

#: Default tolerance, in pixels, by which a box may extend beyond its image before it is an error.
BOX_TOLERANCE_PX = 1.0
#: Problems collected before validation stops counting (the file is still rejected).
MAX_PROBLEMS = 1000


@dataclass(frozen=True)
class CocoDataset:
    """A validated COCO detection data set.

    Attributes
    ----------
    images, annotations, categories : list of dict
        The records, in file order. Annotations always carry ``area``, ``iscrowd`` and ``ignore``.
    extra : dict
        Other top-level keys (``info``, ``licenses``, ...), written back unchanged by ``save_coco``.
    source : str
        Path the data set was read from ("<memory>" otherwise); used in error messages.
    """

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @cached_property
    def image_index(self) -> dict[int, dict[str, Any]]:
        """Image id -> image record."""
        return {img["id"]: img for img in self.images}

    @cached_property
    def category_ids(self) -> list[int]:
        """Category ids in file order."""
        return [cat["id"] for cat in self.categories]

    @cached_property
    def annotations_by_image(self) -> dict[int, list[dict[str, Any]]]:
        """Image id -> its annotations (file order); every image has an entry, possibly empty."""
        out: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in self.images}
        for ann in self.annotations:
            out[ann["image_id"]].append(ann)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The data set as a COCO JSON object."""
        return {**self.extra, "images": self.images, "annotations": self.annotations, "categories": self.categories}

    def to_pycocotools(self) -> Any:
        """A ``pycocotools.coco.COCO`` object over copies of these records (no file is read).

        The annotations are copied because ``COCOeval`` writes ``ignore``/``_ignore`` into them.
        """
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = {**self.to_dict(), "annotations": [dict(a) for a in self.annotations]}
        _quiet(coco.createIndex)
        return coco


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with its stdout silenced (pycocotools prints progress)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Reading


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file, turning I/O and syntax errors into one-line ``DataError``s."""
    p = Path(path)
    try:
        with open(p, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{p}: <file>: file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{p}: <file>: is a directory, expected a JSON file") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: <file>: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: <file>: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{p}: <file>: cannot be read ({exc.strerror})") from None


def load_coco(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    box_tolerance: float = BOX_TOLERANCE_PX,
    progress: ProgressFn | None = None,
) -> CocoDataset:
    """Load and validate a COCO detection file.

    Parameters
    ----------
    path : path of the JSON file.
    image_root : when given, every image file is checked to exist, decode and match its recorded size.
    box_tolerance : pixels by which a box may extend beyond its image.

    Raises
    ------
    DataError
        The file cannot be read or parsed.
    CocoValidationError
        One or more records are invalid; ``.problems`` lists them.
    """
    raw = read_json(path)
    problems = validate_coco(raw, file=str(path), image_root=image_root, box_tolerance=box_tolerance, progress=progress)
    if problems:
        raise CocoValidationError(problems, truncated=len(problems) >= MAX_PROBLEMS)
    return _normalise(raw, source=str(path))


def dataset_from_dict(raw: Any, *, source: str = "<memory>", box_tolerance: float = BOX_TOLERANCE_PX) -> CocoDataset:
    """Validate an in-memory COCO object and return it as a ``CocoDataset`` (raises like ``load_coco``)."""
    problems = validate_coco(raw, file=source, box_tolerance=box_tolerance)
    if problems:
        raise CocoValidationError(problems, truncated=len(problems) >= MAX_PROBLEMS)
    copy = {**raw, "annotations": [dict(a) for a in raw["annotations"]]}  # never mutate the caller's records
    return _normalise(copy, source=source)


def _normalise(raw: dict[str, Any], *, source: str) -> CocoDataset:
    for ann in raw["annotations"]:
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        ann.setdefault("ignore", 0)
    extra = {k: v for k, v in raw.items() if k not in ("images", "annotations", "categories")}
    return CocoDataset(
        images=raw["images"], annotations=raw["annotations"], categories=raw["categories"], extra=extra, source=source
    )


def save_coco(dataset: CocoDataset, path: str | os.PathLike[str]) -> None:
    """Write ``dataset`` as COCO JSON, atomically."""
    write_json_atomic(path, dataset.to_dict())


# ----------------------------------------------------------------------------------------------
# Validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Collector:
    """Accumulates problems up to ``MAX_PROBLEMS``."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    @property
    def full(self) -> bool:
        return len(self.problems) >= MAX_PROBLEMS

    def add(self, record: str, message: str) -> None:
        if not self.full:
            self.problems.append(Problem(self.file, record, message))


def _record_name(kind: str, index: int, rec: Any) -> str:
    """``"annotation id=17 (annotations[16])"``, or ``"annotations[16]"`` when the record has no integer id."""
    plural = "categories" if kind == "category" else f"{kind}s"
    if isinstance(rec, dict) and _is_int(rec.get("id")):
        return f"{kind} id={rec['id']} ({plural}[{index}])"
    return f"{plural}[{index}]"


def validate_coco(
    raw: Any,
    *,
    file: str,
    image_root: str | os.PathLike[str] | None = None,
    box_tolerance: float = BOX_TOLERANCE_PX,
    progress: ProgressFn | None = None,
) -> list[Problem]:
    """Check every record of a parsed COCO detection object; return all problems found (file order).

    Checks: top-level structure, missing keys, wrong types, duplicate ids, non-positive image or box
    width/height, boxes beyond the image by more than ``box_tolerance`` pixels, unknown ``category_id``,
    annotations of missing images, non-positive annotation ids (pycocotools reads id 0 as "unmatched"),
    ``iscrowd``/``ignore``/``unverified`` and the image's ``incomplete`` outside {0, 1}, negative
    ``area``; with ``image_root``, image files that do not exist, cannot be decoded, or whose size
    differs from the record. Collection stops after ``MAX_PROBLEMS`` problems.
    """
    out = _Collector(file)
    if not isinstance(raw, dict):
        out.add("<file>", f"top level must be a JSON object with images/annotations/categories; got {type(raw).__name__}")
        return out.problems
    for key in ("images", "annotations", "categories"):
        if key not in raw:
            out.add("<file>", f"missing top-level key '{key}'")
        elif not isinstance(raw[key], list):
            out.add("<file>", f"top-level '{key}' must be a list; got {type(raw[key]).__name__}")
    if out.problems:
        return out.problems
    categories = _check_categories(raw["categories"], out)
    images = _check_images(raw["images"], out)
    _check_annotations(raw["annotations"], images, categories, box_tolerance, out)
    if image_root is not None and not out.full:
        _check_image_files(raw["images"], Path(image_root), out, progress)
    return out.problems


def _check_categories(records: list[Any], out: _Collector) -> set[int]:
    seen: set[int] = set()
    names: dict[str, int] = {}
    for i, cat in enumerate(records):
        name = _record_name("category", i, cat)
        if not isinstance(cat, dict):
            out.add(name, f"must be an object; got {type(cat).__name__}")
            continue
        cid = cat.get("id")
        if "id" not in cat:
            out.add(name, "missing key 'id'")
        elif not _is_int(cid):
            out.add(name, f"'id' must be an integer; got {cid!r}")
        elif cid in seen:
            out.add(name, f"duplicate category id {cid}")
        else:
            seen.add(cid)
        cname = cat.get("name")
        if "name" not in cat:
            out.add(name, "missing key 'name'")
        elif not isinstance(cname, str) or not cname:
            out.add(name, f"'name' must be a non-empty string; got {cname!r}")
        elif cname in names:
            out.add(name, f"duplicate category name {cname!r} (also category id={names[cname]})")
        else:
            names[cname] = cid if _is_int(cid) else -1
    return seen


def _check_images(records: list[Any], out: _Collector) -> dict[int, tuple[float, float]]:
    sizes: dict[int, tuple[float, float]] = {}
    for i, img in enumerate(records):
        name = _record_name("image", i, img)
        if not isinstance(img, dict):
            out.add(name, f"must be an object; got {type(img).__name__}")
            continue
        iid = img.get("id")
        if "id" not in img:
            out.add(name, "missing key 'id'")
        elif not _is_int(iid):
            out.add(name, f"'id' must be an integer; got {iid!r}")
        elif iid in sizes:
            out.add(name, f"duplicate image id {iid}")
            iid = None
        else:
            sizes[iid] = (math.inf, math.inf)
        ok = True
        for key in ("width", "height"):
            value = img.get(key)
            if key not in img:
                out.add(name, f"missing key '{key}'")
                ok = False
            elif not _is_int(value):
                out.add(name, f"'{key}' must be an integer; got {value!r}")
                ok = False
            elif value <= 0:
                out.add(name, f"non-positive {key} {value}")
                ok = False
        fname = img.get("file_name")
        if "file_name" not in img:
            out.add(name, "missing key 'file_name'")
        elif not isinstance(fname, str) or not fname:
            out.add(name, f"'file_name' must be a non-empty string; got {fname!r}")
        _check_flags(img, ("incomplete",), name, out)
        if ok and _is_int(iid) and iid in sizes:
            sizes[iid] = (float(img["width"]), float(img["height"]))
    return sizes


def _check_flags(record: dict[str, Any], keys: tuple[str, ...], name: str, out: _Collector) -> None:
    """Optional 0/1 flags of a record."""
    for key in keys:
        if key in record and (record[key] not in (0, 1) or isinstance(record[key], float)):
            out.add(name, f"'{key}' must be 0 or 1; got {record[key]!r}")


_REQUIRED_ANN_KEYS = ("id", "image_id", "category_id", "bbox")


def _check_annotations(
    records: list[Any],
    images: dict[int, tuple[float, float]],
    categories: set[int],
    tol: float,
    out: _Collector,
) -> None:
    seen: set[int] = set()
    for i, ann in enumerate(records):
        if out.full:
            return
        name = _record_name("annotation", i, ann)
        if not isinstance(ann, dict):
            out.add(name, f"must be an object; got {type(ann).__name__}")
            continue
        missing = [k for k in _REQUIRED_ANN_KEYS if k not in ann]
        if missing:
            out.add(name, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
        aid = ann.get("id")
        if "id" in ann:
            if not _is_int(aid):
                out.add(name, f"'id' must be an integer; got {aid!r}")
            elif aid <= 0:
                out.add(name, f"annotation id must be positive (pycocotools reads 0 as 'unmatched'); got {aid}")
            elif aid in seen:
                out.add(name, f"duplicate annotation id {aid}")
            else:
                seen.add(aid)
        size = _check_ann_refs(ann, name, images, categories, out)
        if "bbox" in ann:
            _check_bbox(ann["bbox"], name, size, tol, out)
        _check_ann_optional(ann, name, out)


def _check_ann_refs(
    ann: dict[str, Any], name: str, images: dict[int, tuple[float, float]], categories: set[int], out: _Collector
) -> tuple[float, float] | None:
    size = None
    iid = ann.get("image_id")
    if "image_id" in ann:
        if not _is_int(iid):
            out.add(name, f"'image_id' must be an integer; got {iid!r}")
        elif iid not in images:
            out.add(name, f"image_id {iid} does not exist in images")
        else:
            size = images[iid]
    cid = ann.get("category_id")
    if "category_id" in ann:
        if not _is_int(cid):
            out.add(name, f"'category_id' must be an integer; got {cid!r}")
        elif cid not in categories:
            out.add(name, f"unknown category_id {cid} (known: {_short_list(sorted(categories))})")
    return size


def _short_list(values: list[int], limit: int = 20) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (", ..." if len(values) > limit else "") if values else "none"


def _check_bbox(bbox: Any, name: str, size: tuple[float, float] | None, tol: float, out: _Collector) -> None:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        out.add(name, f"'bbox' must be a list of 4 finite numbers [x, y, w, h]; got {bbox!r}")
        return
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        out.add(name, f"bbox {bbox} has non-positive width/height")
        return
    if size is None:
        return
    width, height = size
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        out.add(
            name,
            f"bbox {bbox} extends beyond its image ({width:g}x{height:g}) by more than {tol:g} px",
        )


def _check_ann_optional(ann: dict[str, Any], name: str, out: _Collector) -> None:
    _check_flags(ann, ("iscrowd", "ignore", "unverified"), name, out)
    if "area" in ann:
        area = ann["area"]
        if not _is_number(area):
            out.add(name, f"'area' must be a finite number; got {area!r}")
        elif area < 0:
            out.add(name, f"negative area {area}")


def _check_image_files(images: list[Any], root: Path, out: _Collector, progress: ProgressFn | None) -> None:
    from PIL import Image, UnidentifiedImageError

    records = [img for img in images if isinstance(img, dict) and isinstance(img.get("file_name"), str)]
    for img in track(progress, records, total=len(records), description="checking image files"):
        if out.full:
            return
        name = f"image id={img.get('id')!r}"
        path = root / img["file_name"]
        if not path.is_file():
            out.add(name, f"image file {path} does not exist")
            continue
        try:
            with Image.open(path) as handle:
                handle.load()
                actual = handle.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            out.add(name, f"image file {path} cannot be decoded ({type(exc).__name__}: {exc})")
            continue
        expected = (img.get("width"), img.get("height"))
        if actual != expected:
            out.add(name, f"image file {path} is {actual[0]}x{actual[1]} but the record says {expected[0]}x{expected[1]}")


# ----------------------------------------------------------------------------------------------
# Detections (results files)


def load_detections(path: str | os.PathLike[str], gt: CocoDataset) -> list[dict[str, Any]]:
    """Load and validate a COCO results file (a list of ``{image_id, category_id, bbox, score}``).

    Every record is checked: known ``image_id`` and ``category_id`` of ``gt``, ``bbox`` of 4 finite
    numbers with non-negative width/height, finite ``score``. Raises ``CocoValidationError``.
    """
    raw = read_json(path)
    problems = validate_detections(raw, gt, file=str(path))
    if problems:
        raise CocoValidationError(problems, truncated=len(problems) >= MAX_PROBLEMS)
    return raw


def validate_detections(raw: Any, gt: CocoDataset, *, file: str) -> list[Problem]:
    """All problems of a parsed results list against the ground truth ``gt``."""
    out = _Collector(file)
    if not isinstance(raw, list):
        out.add("<file>", f"a results file must be a JSON list of detections; got {type(raw).__name__}")
        return out.problems
    image_ids = gt.image_index
    category_ids = set(gt.category_ids)
    for i, det in enumerate(raw):
        if out.full:
            break
        name = f"detection [{i}]"
        if not isinstance(det, dict):
            out.add(name, f"must be an object; got {type(det).__name__}")
            continue
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            out.add(name, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
            continue
        if not _is_int(det["image_id"]) or det["image_id"] not in image_ids:
            out.add(name, f"image_id {det['image_id']!r} does not exist in the ground truth {gt.source}")
        if not _is_int(det["category_id"]) or det["category_id"] not in category_ids:
            out.add(name, f"unknown category_id {det['category_id']!r} (known: {_short_list(sorted(category_ids))})")
        bbox = det["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            out.add(name, f"'bbox' must be a list of 4 finite numbers [x, y, w, h]; got {bbox!r}")
        elif bbox[2] < 0 or bbox[3] < 0:
            out.add(name, f"bbox {bbox} has negative width/height")
        if not _is_number(det["score"]):
            out.add(name, f"'score' must be a finite number; got {det['score']!r}")
    return out.problems


def iter_image_annotations(dataset: CocoDataset) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Yield ``(image, annotations)`` in image file order."""
    by_image = dataset.annotations_by_image
    for img in dataset.images:
        yield img, by_image[img["id"]]


def boxes_xywh(annotations: list[dict[str, Any]]) -> np.ndarray:
    """Stack the ``bbox`` fields as a float64 array of shape (N, 4), xywh absolute pixels."""
    if not annotations:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray([a["bbox"] for a in annotations], dtype=np.float64)
