"""COCO data for torchvision detectors: data set, augmentations, collate, resumable batch sampler.

A training sample is ``(image, target)``: ``image`` float32 (3, H, W) RGB in [0, 1]; ``target`` holds
``boxes`` float32 (N, 4) xyxy in absolute pixels of the returned image, ``labels`` int64 (N,) in
1..K, ``ann_ids`` int64 (N,), ``image_id`` int64 () and, for training samples, ``position`` int64 ()
(the sample's position in the stream, below) and, when the augmented view is an axis-aligned
resize/crop/flip of the stored image, ``view`` float64 (4,) (``make_view``). Images without boxes give ``boxes`` of shape
(0, 4), which torchvision's detectors accept as all-background images. Crowd annotations
(``iscrowd=1``) are never training targets; annotations with ``ignore=1`` are, and their flag is
kept in ``target["ignore"]`` (bool (N,)): the losses train them as ignored regions. Likewise
``"unverified": 1`` (a box not yet confirmed) is kept in ``target["unverified"]`` (bool (N,)), which
the losses dampen (``model.unverified_weight``). An image record with ``"incomplete": 1`` (its boxes
are not all of its objects) gives ``target["incomplete"]`` True (bool (), False otherwise): the one-stage
losses then train none of its background as negative (``curation_core.losses.weights``).

Determinism: the batch for iteration ``i`` depends only on (seed, i). Sample ``g = i * batch_size + j``
of the infinite stream is position ``g mod n`` of epoch ``g // n``, whose order is a permutation drawn
from ``(seed, epoch)``; its augmentation parameters are drawn from ``(seed, g)``. So resuming at
iteration ``i`` continues the same stream, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import bisect
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from curation_core.coco import CocoDataset
from curation_core.engine.config import AugmentConfig
from curation_core.errors import DataError

#: Seed-sequence domains, so that data order and augmentations never share a random stream.
_ORDER_DOMAIN = 0
_AUGMENT_DOMAIN = 1
_REPEAT_DOMAIN = 2  # stochastic rounding of per-image sampling weights (data.manifest)
#: Boxes narrower or lower than this (pixels) after clipping to the image are dropped (degenerate).
MIN_BOX_SIDE = 1e-2
#: Image-level keys of a target; every other tensor with a first dimension holds one row per box.
IMAGE_KEYS = frozenset({"image_id", "position", "view", "incomplete"})

Target = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Images, labels, targets


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file as uint8 (H, W, 3) RGB; ``DataError`` naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            return np.array(handle.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: <file>: image file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: <file>: image cannot be decoded ({type(exc).__name__}: {exc})") from None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]; ``image`` is never modified (read-only arrays work)."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # torch.from_numpy warns on read-only memory; the float copy below is new anyway
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32).div_(255.0)


def label_map(category_ids: Sequence[int]) -> dict[int, int]:
    """Category id -> training label ``1 + position`` (0 is background)."""
    return {int(cid): index + 1 for index, cid in enumerate(category_ids)}


def build_target(annotations: Sequence[dict[str, Any]], labels: dict[int, int], *, image_id: int,
                 width: float, height: float, incomplete: bool = False) -> Target:
    """Training target of one image from its COCO annotations (xywh -> xyxy, clipped, crowds left out);
    ``incomplete``: the image record's flag (its boxes are not all of its objects)."""
    kept = [a for a in annotations if not a.get("iscrowd", 0)]
    if kept:
        xywh = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    else:
        boxes = torch.zeros((0, 4), dtype=torch.float32)
    target = {
        "boxes": boxes,
        "labels": torch.tensor([labels[a["category_id"]] for a in kept], dtype=torch.int64),
        "ann_ids": torch.tensor([a["id"] for a in kept], dtype=torch.int64),
        "ignore": torch.tensor([bool(a.get("ignore", 0)) for a in kept], dtype=torch.bool),
        "unverified": torch.tensor([bool(a.get("unverified", 0)) for a in kept], dtype=torch.bool),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "incomplete": torch.tensor(bool(incomplete), dtype=torch.bool),
    }
    return clip_target(target, width=width, height=height)


def clip_target(target: Target, *, width: float, height: float) -> Target:
    """Clip boxes to the image and drop those left narrower or lower than ``MIN_BOX_SIDE`` pixels."""
    boxes = target["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0.0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0.0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
    out = {key: (value[keep] if value.ndim and key not in IMAGE_KEYS else value) for key, value in target.items()}
    out["boxes"] = boxes[keep]
    return out


# ----------------------------------------------------------------------------------------------
# Geometry


def resize_scale(height: int, width: int, *, min_size: int, max_size: int) -> float:
    """torchvision's rule: scale the short side to ``min_size`` unless the long side exceeds ``max_size``."""
    return min(min_size / min(height, width), max_size / max(height, width))


def make_view(sx: float, sy: float, tx: float, ty: float) -> torch.Tensor:
    """float64 (4,) ``[sx, sy, tx, ty]``: an augmented view's box geometry, ``x' = sx x + tx``,
    ``y' = sy y + ty`` from the stored image to the view (``sx < 0``: mirrored). Targets carry it as
    ``target["view"]`` when the view is an axis-aligned resize/crop/flip of the stored image."""
    return torch.tensor([sx, sy, tx, ty], dtype=torch.float64)


def flip_view(view: torch.Tensor, width: float) -> torch.Tensor:
    """The view followed by a horizontal flip of a ``width`` pixels wide image: ``x'' = width - x'``."""
    sx, sy, tx, ty = view.tolist()
    return make_view(-sx, sy, width - tx, ty)


def map_boxes(boxes: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """xyxy boxes (N, 4) of the stored image -> xyxy boxes of the view (``make_view``); not clipped."""
    sx, sy, tx, ty = view.tolist()
    xs = boxes[:, 0::2].double() * sx + tx
    ys = boxes[:, 1::2].double() * sy + ty
    out = torch.stack([xs.min(dim=1).values, ys.min(dim=1).values, xs.max(dim=1).values, ys.max(dim=1).values], 1)
    return out.to(boxes.dtype)


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror xyxy boxes (N, 4) in an image of ``width`` pixels: x1' = W - x2, x2' = W - x1."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def scale_boxes(boxes: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """Multiply xyxy boxes (N, 4) by ``sx`` horizontally and ``sy`` vertically."""
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


@dataclass(frozen=True)
class TrainTransform:
    """The per-image augmentation of ``augment.preset``.

    ``standard``: photometric jitter, resize to the model size times a scale jitter, horizontal flip
    (the output size varies with the jitter). ``strong``: ``engine.augment.strong_transform`` (colour
    jitter, zoom/shift/rotation within a canvas of the model size, flip, noise). ``min_size``/
    ``max_size`` are the model's (``ModelConfig``). Parameters are drawn from ``rng`` in a fixed
    order, so a generator state gives one outcome.
    """

    augment: AugmentConfig
    min_size: int
    max_size: int

    def __call__(self, image: torch.Tensor, target: Target, rng: np.random.Generator) -> tuple[torch.Tensor, Target]:
        if self.augment.preset == "strong":
            from curation_core.engine.augment import strong_transform  # imports this module: not at the top

            return strong_transform(image, target, rng, augment=self.augment, min_size=self.min_size,
                                    max_size=self.max_size)
        from torchvision.transforms.v2 import functional as F

        a = self.augment
        factors = rng.uniform(-1.0, 1.0, size=3) * np.array([a.brightness, a.contrast, a.saturation]) + 1.0
        jitter = float(rng.uniform(*a.scale_range))
        flip = bool(rng.uniform() < a.hflip)
        if a.brightness:
            image = F.adjust_brightness(image, float(factors[0]))
        if a.contrast:
            image = F.adjust_contrast(image, float(factors[1]))
        if a.saturation:
            image = F.adjust_saturation(image, float(factors[2]))
        height, width = image.shape[-2:]
        scale = resize_scale(height, width, min_size=self.min_size, max_size=self.max_size) * jitter
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        view = make_view(new_w / width, new_h / height, 0.0, 0.0)
        if (new_h, new_w) != (height, width):
            image = F.resize(image, [new_h, new_w], antialias=True)
            target = {**target, "boxes": scale_boxes(target["boxes"], new_w / width, new_h / height)}
        if flip:
            image = image.flip(-1)
            target = {**target, "boxes": hflip_boxes(target["boxes"], new_w)}
            view = flip_view(view, new_w)
        return image, clip_target({**target, "view": view}, width=new_w, height=new_h)


# ----------------------------------------------------------------------------------------------
# Data set


class DetectionDataset(Dataset):
    """A COCO data set as torch samples (see the module docstring for the sample format).

    Parameters
    ----------
    dataset : validated COCO data.
    image_root : folder the ``file_name`` fields are relative to.
    category_ids : the label order (label ``i + 1`` is ``category_ids[i]``); every annotation's
        category must be in it.
    transform : training transform; ``None`` returns images as stored (evaluation).
    seed : seeds the per-sample augmentation generators.

    Items are indexed by ``int`` (sample index, no augmentation randomness) or by
    ``(index, stream_position)`` from ``TrainBatchSampler``.
    """

    def __init__(self, dataset: CocoDataset, image_root: str | Path, *, category_ids: Sequence[int],
                 transform: TrainTransform | None = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.image_root = Path(image_root)
        self.labels = label_map(category_ids)
        self.transform = transform
        self.seed = seed
        unknown = sorted({a["category_id"] for a in dataset.annotations} - set(self.labels))
        if unknown:
            raise DataError(f"{dataset.source}: <file>: category ids {unknown} are not among the model's "
                            f"categories {list(category_ids)}")

    def __len__(self) -> int:
        return len(self.dataset.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Target]:
        index, position = (key, None) if isinstance(key, int) else key
        record = self.dataset.images[index]
        image = to_tensor(load_image(self.image_root / record["file_name"]))
        height, width = image.shape[-2:]
        if (width, height) != (record["width"], record["height"]):
            raise DataError(f"{self.image_root / record['file_name']}: image id={record['id']}: is {width}x{height} "
                            f"but the record says {record['width']}x{record['height']}")
        target = build_target(self.dataset.annotations_by_image[record["id"]], self.labels, image_id=record["id"],
                              width=width, height=height, incomplete=bool(record.get("incomplete", 0)))
        if self.transform is not None:
            stream = 0 if position is None else position
            rng = np.random.default_rng([self.seed, _AUGMENT_DOMAIN, stream])
            image, target = self.transform(image, target, rng)
        if position is not None:  # identifies the sample in a super-batch (an image can occur twice)
            target["position"] = torch.tensor(position, dtype=torch.int64)
        return image, target


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """A batch as torchvision expects it: a list of images (sizes may differ) and a list of targets."""
    return [image for image, _ in batch], [target for _, target in batch]


# ----------------------------------------------------------------------------------------------
# Sampling


class TrainBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches ``start .. stop - 1`` of the infinite, seeded sample stream (see the module docstring).

    Yields lists of ``(sample index, stream position)``; ``len`` is ``stop - start``.

    ``weights`` (float (num_samples,), >= 0, from a curation manifest, ``data.manifest``): epoch ``e``
    then holds sample ``k`` ``n_k(e)`` times, ``n_k(e)`` the stochastic rounding of ``weights[k]``
    drawn from ``(seed, e)`` (so ``E[n_k] = weights[k]``; a weight of 0 is never drawn), in an order
    permuted from ``(seed, e)``; epochs have varying lengths and the stream stays a function of
    (seed, iteration). Without ``weights`` every epoch is one permutation of all samples, as before.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, start: int, stop: int,
                 weights: np.ndarray | None = None) -> None:
        if num_samples < 1:
            raise ValueError(f"TrainBatchSampler(num_samples=) expects an integer >= 1; got {num_samples}.")
        if batch_size < 1:
            raise ValueError(f"TrainBatchSampler(batch_size=) expects an integer >= 1; got {batch_size}.")
        if not 0 <= start <= stop:
            raise ValueError(f"TrainBatchSampler(start=, stop=) expects 0 <= start <= stop; got {start}, {stop}.")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (num_samples,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                    or not np.any(weights > 0):
                raise ValueError(f"TrainBatchSampler(weights=) expects {num_samples} finite numbers >= 0, not all 0; "
                                 f"got shape {weights.shape}.")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start, self.stop = start, stop
        self.weights = weights
        self._epoch: int | None = None
        self._order: np.ndarray | None = None
        self._epoch_ends: list[int] = []  # weighted stream: cumulative epoch lengths, extended on demand

    def __len__(self) -> int:
        return self.stop - self.start

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch``: a permutation of ``range(num_samples)``, or with ``weights``
        of each index repeated its stochastically rounded weight."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, _ORDER_DOMAIN, epoch])
            if self.weights is None:
                self._order = rng.permutation(self.num_samples)
            else:
                self._order = rng.permutation(np.repeat(np.arange(self.num_samples), self._counts(epoch)))
            self._epoch = epoch
        assert self._order is not None
        return self._order

    def _counts(self, epoch: int) -> np.ndarray:
        from curation_core.offline.repeat_factors import stochastic_round

        return stochastic_round(self.weights, np.random.default_rng([self.seed, _REPEAT_DOMAIN, epoch]))

    def _locate(self, position: int) -> tuple[int, int]:
        """(epoch, offset) of a stream position."""
        if self.weights is None:
            return divmod(position, self.num_samples)
        while not self._epoch_ends or self._epoch_ends[-1] <= position:
            previous = self._epoch_ends[-1] if self._epoch_ends else 0
            self._epoch_ends.append(previous + int(self._counts(len(self._epoch_ends)).sum()))
        epoch = bisect.bisect_right(self._epoch_ends, position)
        return epoch, position - (self._epoch_ends[epoch - 1] if epoch else 0)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """The keys of the batch of ``iteration`` (0-based)."""
        keys = []
        for position in range(iteration * self.batch_size, (iteration + 1) * self.batch_size):
            epoch, offset = self._locate(position)
            keys.append((int(self.order(epoch)[offset]), position))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            yield self.batch(iteration)


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C (SIGINT, sent to the whole process group) is left to the
    main process, which finishes its step and writes a checkpoint; without this the workers would die
    mid-batch. SIGTERM keeps its default action: the DataLoader stops its workers with it.
    """
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, *, batch_sampler: Sampler | None = None, batch_size: int = 1,
                num_workers: int, seed: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """A DataLoader with ``collate``, persistent workers and its own generator.

    The generator keeps the DataLoader from drawing its worker base seed from the global torch
    generator, which would shift the model's random stream after a resume.
    """
    options: dict[str, Any] = {"batch_sampler": batch_sampler} if batch_sampler is not None else {
        "batch_size": batch_size, "shuffle": False}
    return torch.utils.data.DataLoader(
        dataset, collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0, worker_init_fn=ignore_interrupts_in_worker if num_workers else None,
        generator=torch.Generator().manual_seed(seed), **options,
    )
