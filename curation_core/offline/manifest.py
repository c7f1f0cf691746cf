"""The curation manifest: per-image sampling weight, keep/drop and the reasons, for one data set.

A manifest never rewrites the data set; training reads it through ``data.manifest`` and draws image
``i`` with expected count ``weight_i`` per epoch (``curation_core.engine.data.TrainBatchSampler``).
Format (JSON, ``FORMAT`` / ``VERSION``)::

    {"format": "detcurate-curation-manifest", "version": 1,
     "dataset": {"source": "data/train.json", "images_sha256": "...", "num_images": 1200},
     "parameters": {...how it was made...},
     "summary": {...counts...},
     "images": [{"image_id": 1, "file_name": "000001.png", "weight": 1.41, "keep": true,
                 "reasons": ["repeat factor 1.41 from category 'star' (f = 0.05)"]}, ...]}

``weight`` is 0 exactly for dropped images (``keep: false``) and >= 0 otherwise. The data-set identity
``images_sha256`` is the SHA-256 of the image records (id, file_name, width, height, sorted by id),
so a manifest made for another data set (or another version of it) is refused with one line, whatever
the file is called; the annotations may change (a relabelled set keeps its manifest).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset, read_json
from curation_core.errors import DataError
from curation_core.io import write_json_atomic

FORMAT = "detcurate-curation-manifest"
VERSION = 1


def dataset_identity(dataset: CocoDataset) -> str:
    """SHA-256 (hex) of the image records ``(id, file_name, width, height)`` sorted by id."""
    records = sorted((img["id"], img["file_name"], img["width"], img["height"]) for img in dataset.images)
    return hashlib.sha256(json.dumps(records, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ImageEntry:
    """One image of a manifest: ``weight`` (expected draws per epoch), ``keep``, and why."""

    image_id: int
    file_name: str
    weight: float
    keep: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "file_name": self.file_name, "weight": self.weight, "keep": self.keep,
                "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Manifest:
    """A curation manifest (see the module docstring); ``entries`` follow the data set's image order."""

    identity: str
    num_images: int
    source: str
    entries: tuple[ImageEntry, ...]
    parameters: dict[str, Any]
    summary: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION,
                "dataset": {"source": self.source, "images_sha256": self.identity, "num_images": self.num_images},
                "parameters": self.parameters, "summary": self.summary,
                "images": [e.as_dict() for e in self.entries]}

    def weights_for(self, dataset: CocoDataset) -> np.ndarray:
        """float64 (N,) sampling weights in the order of ``dataset.images``.

        Raises ``DataError`` when the manifest was made for another data set.
        """
        check_same_dataset(self, dataset)
        weight = {e.image_id: e.weight for e in self.entries}
        return np.asarray([weight[img["id"]] for img in dataset.images], dtype=np.float64)

    @property
    def digest(self) -> str:
        """SHA-256 of the weights by image id: equal for two manifests that sample the same way."""
        pairs = sorted((e.image_id, e.weight) for e in self.entries)
        return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def build_manifest(dataset: CocoDataset, weights: np.ndarray, reasons: list[list[str]], *,
                   parameters: dict[str, Any], summary: dict[str, Any]) -> Manifest:
    """A manifest for ``dataset``: ``weights`` float (N,) >= 0 in image order (0 = dropped), one list of
    reasons per image."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(dataset.images),) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"build_manifest(weights=) expects {len(dataset.images)} finite numbers >= 0; got shape "
                         f"{w.shape}.")
    if len(reasons) != len(dataset.images):
        raise ValueError(f"build_manifest(reasons=) expects {len(dataset.images)} lists; got {len(reasons)}.")
    entries = tuple(ImageEntry(image_id=int(img["id"]), file_name=str(img["file_name"]), weight=float(wi),
                               keep=bool(wi > 0), reasons=tuple(r))
                    for img, wi, r in zip(dataset.images, w.tolist(), reasons, strict=True))
    return Manifest(identity=dataset_identity(dataset), num_images=len(dataset.images), source=dataset.source,
                    entries=entries, parameters=dict(parameters), summary=dict(summary))


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> None:
    """Write ``manifest`` as indented JSON, atomically."""
    write_json_atomic(path, manifest.as_dict(), indent=1)


def check_same_dataset(manifest: Manifest, dataset: CocoDataset) -> None:
    """``DataError`` (one line) unless ``manifest`` was made for ``dataset``'s images."""
    if manifest.identity != dataset_identity(dataset):
        raise DataError(f"{manifest.source}: <manifest>: made for another data set (images sha256 "
                        f"{manifest.identity[:12]}, {manifest.num_images} images), not for {dataset.source} "
                        f"(sha256 {dataset_identity(dataset)[:12]}, {len(dataset.images)} images); "
                        f"run detcurate balance on {dataset.source}")
    listed = {e.image_id for e in manifest.entries}
    missing = [img["id"] for img in dataset.images if img["id"] not in listed]
    extra = sorted(listed - set(dataset.image_index))
    if missing or extra:
        first = f"image id={missing[0]}: not listed" if missing else f"image id={extra[0]}: not in {dataset.source}"
        raise DataError(f"{manifest.source}: {first} ({len(missing)} images missing, {len(extra)} unknown)")


def load_manifest(path: str | os.PathLike[str], dataset: CocoDataset | None = None) -> Manifest:
    """Read and validate a manifest; with ``dataset``, also check that it was made for it.

    Raises ``DataError`` naming the file and the record for a malformed file, a record with a bad
    weight, duplicate or missing images, or a manifest of another data set.
    """
    raw = read_json(path)
    where = str(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{where}: <file>: not a curation manifest (expected \"format\": \"{FORMAT}\")")
    if raw.get("version") != VERSION:
        raise DataError(f"{where}: <file>: manifest version {raw.get('version')!r} is not supported (expected {VERSION})")
    info, images = raw.get("dataset"), raw.get("images")
    if not isinstance(info, dict) or not isinstance(info.get("images_sha256"), str) or not isinstance(images, list):
        raise DataError(f"{where}: <file>: a manifest needs \"dataset\": {{\"images_sha256\": ...}} and an \"images\" list")
    entries = tuple(_entry(rec, i, where) for i, rec in enumerate(images))
    ids = [e.image_id for e in entries]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{where}: image id={dup}: listed more than once")
    if info.get("num_images") != len(entries):
        raise DataError(f"{where}: <file>: dataset.num_images is {info.get('num_images')!r} but {len(entries)} images are listed")
    manifest = Manifest(identity=info["images_sha256"], num_images=len(entries), source=where, entries=entries,
                        parameters=dict(raw.get("parameters") or {}), summary=dict(raw.get("summary") or {}))
    if dataset is not None:
        check_same_dataset(manifest, dataset)
    if not any(e.weight > 0 for e in entries):
        raise DataError(f"{where}: <file>: every image has weight 0: nothing would be trained on")
    return manifest


def _entry(rec: Any, index: int, where: str) -> ImageEntry:
    if not isinstance(rec, dict) or not isinstance(rec.get("image_id"), int) or isinstance(rec.get("image_id"), bool):
        raise DataError(f"{where}: images[{index}]: must be an object with an integer image_id")
    name = f"image id={rec['image_id']}"
    weight, keep = rec.get("weight"), rec.get("keep")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise DataError(f"{where}: {name}: weight must be a finite number >= 0; got {weight!r}")
    if not isinstance(keep, bool) or keep != (weight > 0):
        raise DataError(f"{where}: {name}: keep must be true exactly when weight > 0; got keep={keep!r}, weight={weight!r}")
    reasons = rec.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise DataError(f"{where}: {name}: reasons must be a list of strings")
    return ImageEntry(image_id=rec["image_id"], file_name=str(rec.get("file_name", "")), weight=float(weight),
                      keep=keep, reasons=tuple(reasons))
