"""Inference with trained detectors: load a checkpoint, detect, evaluate on a COCO data set.

Detections are ``{"boxes": (N, 4) float32 xyxy in absolute pixels of the input image, "scores": (N,)
float32 in [0, 1] (higher = more confident), "labels": (N,) int64 category ids}``, at most
``model.detections_per_img`` per image, scores at least ``model.score_thresh``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from curation_core.coco import CocoDataset, load_coco
from curation_core.engine.checkpoint import check_same_categories, load_checkpoint
from curation_core.engine.config import TrainConfig, config_from_dict
from curation_core.engine.data import DetectionDataset, make_loader, to_tensor
from curation_core.engine.models import build_detector
from curation_core.errors import CheckpointError, ConfigError
from curation_core.evaluation import CocoStats, evaluate_detections
from curation_core.progress import ProgressFn, track

_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; ``ConfigError`` for cuda on a machine without it."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r} requested but CUDA is not available on this machine")
    return device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on CUDA for ``amp`` in {"fp16", "bf16"}; a no-op on CPU or for "none"."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=_AMP_DTYPES[amp])


def detect_batches(model: nn.Module, batches: Iterator[tuple[list[torch.Tensor], list[Any]]], *,
                   device: torch.device, amp: str = "none") -> Iterator[tuple[list[dict[str, torch.Tensor]], list[Any]]]:
    """Run ``model`` (switched to eval mode) over ``(images, extra)`` batches; yield (outputs on CPU, extra).

    The caller restores ``model.train()`` if it needs to.
    """
    model.eval()
    with torch.inference_mode():
        for images, extra in batches:
            with autocast(device, amp):
                outputs = model([image.to(device, non_blocking=True) for image in images])
            yield [{k: v.float().cpu() if k != "labels" else v.cpu() for k, v in out.items()} for out in outputs], extra


def coco_results(outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int],
                 category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO results records (bbox xywh, absolute pixels) of model outputs with labels 1..K."""
    lookup = np.asarray([0, *category_ids], dtype=np.int64)
    records: list[dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].numpy().astype(np.float64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for box, score, label in zip(xywh.tolist(), out["scores"].tolist(), lookup[out["labels"].numpy()].tolist(),
                                     strict=True):
            records.append({"image_id": int(image_id), "category_id": int(label), "bbox": box, "score": float(score)})
    return records


def run_on_dataset(model: nn.Module, gt: CocoDataset, image_root: str | os.PathLike[str], *,
                   category_ids: Sequence[int], device: torch.device, amp: str = "none", batch_size: int = 8,
                   num_workers: int = 0, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """COCO results of ``model`` (labels 1..K for ``category_ids``) on every image of ``gt``."""
    dataset = DetectionDataset(gt, image_root, category_ids=category_ids)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers, seed=0,
                         pin_memory=device.type == "cuda")
    batches = ((images, [int(t["image_id"]) for t in targets]) for images, targets in loader)
    records: list[dict[str, Any]] = []
    outputs = detect_batches(model, batches, device=device, amp=amp)
    for outs, image_ids in track(progress, outputs, total=len(loader), description="detecting"):
        records.extend(coco_results(outs, image_ids, category_ids))
    return records


@dataclass
class LoadedDetector:
    """A trained detector ready for inference (``model`` is in eval mode on ``device``)."""

    model: nn.Module
    config: TrainConfig
    category_ids: list[int]
    category_names: list[str]
    device: torch.device
    checkpoint_path: Path

    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detect objects in RGB images, each uint8 (H, W, 3) of any size.

        Returns one dict per image (see the module docstring); ``labels`` are category ids.
        """
        tensors = []
        for index, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
                shape = getattr(image, "shape", None)
                dtype = getattr(image, "dtype", type(image).__name__)
                raise ValueError(f"LoadedDetector.predict(images=) expects uint8 (H, W, 3) RGB arrays; "
                                 f"got {dtype} of shape {shape} at image {index}.")
            tensors.append(to_tensor(image))
        if not tensors:
            return []
        lookup = np.asarray([0, *self.category_ids], dtype=np.int64)
        (outputs, _), = detect_batches(self.model, iter([(tensors, None)]), device=self.device,
                                       amp=self.config.train.amp)
        return [{"boxes": out["boxes"].numpy().astype(np.float32), "scores": out["scores"].numpy().astype(np.float32),
                 "labels": lookup[out["labels"].numpy()]} for out in outputs]


def load_detector(checkpoint_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedDetector:
    """Rebuild the detector of a checkpoint with its weights, in eval mode on ``device``.

    Raises ``CheckpointError`` for a corrupt, foreign or inconsistent checkpoint.
    """
    path = Path(checkpoint_path)
    checkpoint = load_checkpoint(path)
    try:
        config = config_from_dict(checkpoint["config"], source=f"{path} (stored config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    category_ids = [int(c) for c in checkpoint["category_ids"]]
    model = build_detector(config.model, num_categories=len(category_ids))
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not fit model {checkpoint['model_name']} ({first})") from None
    target = resolve_device(device)
    model.to(target).eval()
    return LoadedDetector(model=model, config=config, category_ids=category_ids,
                          category_names=[str(n) for n in checkpoint["category_names"]], device=target,
                          checkpoint_path=path)


def predict_dataset(detector: LoadedDetector, gt: CocoDataset, image_root: str | os.PathLike[str], *,
                    batch_size: int = 8, num_workers: int = 0, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """COCO results (image_id, category_id, bbox xywh absolute pixels, score) for every image of ``gt``.

    Raises ``CheckpointError`` when ``gt``'s categories differ from the detector's.
    """
    check_same_categories({"category_ids": detector.category_ids, "category_names": detector.category_names},
                          gt.categories, source=gt.source, checkpoint_path=str(detector.checkpoint_path))
    return run_on_dataset(detector.model, gt, image_root, category_ids=detector.category_ids, device=detector.device,
                          amp=detector.config.train.amp, batch_size=batch_size, num_workers=num_workers,
                          progress=progress)


def evaluate_checkpoint(checkpoint_path: str | os.PathLike[str], annotations: str | os.PathLike[str],
                        image_root: str | os.PathLike[str], *, batch_size: int = 8, device: str = "cpu",
                        num_workers: int = 0, progress: ProgressFn | None = None) -> tuple[CocoStats, list[dict[str, Any]]]:
    """COCO box statistics of a checkpoint on a data set, and its detections (COCO results)."""
    detector = load_detector(checkpoint_path, device=device)
    gt = load_coco(annotations)
    detections = predict_dataset(detector, gt, image_root, batch_size=batch_size, num_workers=num_workers,
                                 progress=progress)
    return evaluate_detections(gt, detections), detections
