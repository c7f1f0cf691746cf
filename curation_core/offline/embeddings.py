"""Image embeddings for deduplication and diversity: a trained detector's backbone, or its detections.

``backbone_embeddings``: each image goes through the detector's own input transform (normalisation
and resize to the model size) and its backbone + FPN; every FPN level is global-average-pooled and
the levels are concatenated, then L2-normalised: float32 (N, levels x channels). A detector trained on
the data sees what matters for it (objects, not colours of the background), which is why it is the
embedding of choice for near-duplicates and core-sets.

``detection_embeddings``: when only predictions are at hand, a per-image signature of the detections:
for each category, the largest score and the sum of scores (both in [0, 1] after the division by the
largest sum), L2-normalised: float64 (N, 2K). Coarser: images with the same objects in other places
are close.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset
from curation_core.progress import ProgressFn, track


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit L2 norm (rows of zeros stay zero); a new array."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def backbone_embeddings(detector: Any, dataset: CocoDataset, image_root: str | os.PathLike[str], *,
                        batch_size: int = 16, progress: ProgressFn | None = None) -> np.ndarray:
    """Global-average-pooled FPN features of every image of ``dataset`` (file order), float32 (N, D).

    Parameters
    ----------
    detector : ``curation_core.engine.predict.LoadedDetector`` (a torchvision detector with
        ``transform`` and ``backbone``), in eval mode.
    image_root : folder the ``file_name`` fields are relative to.
    """
    import torch

    from curation_core.engine.data import load_image, to_tensor

    model, device = detector.model, detector.device
    rows: list[np.ndarray] = []
    starts = range(0, len(dataset.images), batch_size)
    with torch.inference_mode():
        for start in track(progress, starts, total=len(starts), description="embeddings"):
            records = dataset.images[start:start + batch_size]
            images = [to_tensor(load_image(os.path.join(image_root, r["file_name"]))).to(device) for r in records]
            batch, _ = model.transform(images)
            features = model.backbone(batch.tensors)
            pooled = [level.float().mean(dim=(2, 3)) for level in features.values()]  # (B, C) per FPN level
            rows.append(torch.cat(pooled, dim=1).cpu().numpy())
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return l2_normalise(np.concatenate(rows).astype(np.float32))


def detection_embeddings(dataset: CocoDataset, detections: Sequence[dict[str, Any]]) -> np.ndarray:
    """Per-image detection signature (module docstring), float64 (N, 2K) in image file order."""
    row = {img["id"]: i for i, img in enumerate(dataset.images)}
    column = {cid: j for j, cid in enumerate(dataset.category_ids)}
    k = len(column)
    out = np.zeros((len(dataset.images), 2 * k), dtype=np.float64)
    for det in detections:
        i, j, s = row[det["image_id"]], column[det["category_id"]], float(det["score"])
        out[i, j] = max(out[i, j], s)
        out[i, k + j] += s
    if k and out[:, k:].max(initial=0.0) > 0:
        out[:, k:] /= out[:, k:].max()
    return l2_normalise(out)
