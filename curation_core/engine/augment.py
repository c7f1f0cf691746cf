"""The ``strong`` augmentation preset, and copy-paste of objects between the images of a batch.

Online data curation trains on the b best of a super-batch of B images; DetGain (Sun et al.,
arXiv 2511.14197) found that selection overfits without strong augmentation. ``strong_transform`` is
what ``TrainTransform`` runs for ``augment.preset: strong`` (per image, in the data loader);
``copy_paste_batch`` runs on a whole (super-)batch in the trainer, after collation.

Images are float32 (3, H, W) RGB in [0, 1]; targets are dicts as ``engine.data`` builds them:
``boxes`` float32 (N, 4) xyxy in absolute pixels of the image, and per-box tensors whose first dim
is N (``labels``, ``ann_ids``, ``ignore``, ...), filtered together whenever a box is dropped.

Determinism: every random parameter is drawn from the ``numpy.random.Generator`` passed in, in a
fixed order (never from torch's global generator), so an output is a pure function of the inputs and
the generator state. The geometry is torchvision.transforms.v2.functional on ``tv_tensors.BoundingBoxes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from curation_core.engine.config import AugmentConfig
from curation_core.engine.data import (
    IMAGE_KEYS,
    Target,
    clip_target,
    flip_view,
    hflip_boxes,
    make_view,
    resize_scale,
    scale_boxes,
)

#: Seed-sequence domain of copy-paste, distinct from data.py's order (0) and augmentation (1) domains.
COPY_PASTE_DOMAIN = 2
#: Keys of a target that are never per-box, whatever their shape.
_IMAGE_KEYS = IMAGE_KEYS


# ----------------------------------------------------------------------------------------------
# Per-box keys


def per_box_keys(target: Target) -> list[str]:
    """Keys of ``target`` holding one row per box: a tensor whose first dim is ``len(target["boxes"])``.

    This is ``clip_target``'s rule (every non-scalar tensor but ``image_id`` is filtered with the boxes),
    restricted to tensors that have one row per box, so ``boxes`` itself is always among them.
    """
    count = len(target["boxes"])
    return [key for key, value in target.items()
            if key not in _IMAGE_KEYS and value.ndim >= 1 and value.shape[0] == count]


def select_boxes(target: Target, keep: torch.Tensor) -> Target:
    """The target with only the boxes where ``keep`` (bool (N,)) is True; every per-box key follows."""
    keys = set(per_box_keys(target))
    return {key: (value[keep] if key in keys else value) for key, value in target.items()}


def visible_fraction(boxes: torch.Tensor, *, width: float, height: float) -> torch.Tensor:
    """float32 (N,): the fraction of each xyxy box's area (N, 4) inside the image [0, width] x [0, height].

    Boxes of zero area give 0.
    """
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    inside_w = (boxes[:, 2].clamp(0, width) - boxes[:, 0].clamp(0, width)).clamp_min(0)
    inside_h = (boxes[:, 3].clamp(0, height) - boxes[:, 1].clamp(0, height)).clamp_min(0)
    return torch.where(area > 0, inside_w * inside_h / area.clamp_min(1e-12), torch.zeros_like(area))


# ----------------------------------------------------------------------------------------------
# The strong preset


@dataclass(frozen=True)
class StrongParams:
    """One image's draw of the strong preset.

    ``colour``: brightness, contrast and saturation factors (1 = unchanged) and the hue shift
    (fraction of the hue circle, 0 = unchanged). ``scale``: zoom factor on the model size (> 1 zooms
    in). ``shift``: translation as a fraction of the canvas width and height. ``angle``: degrees,
    counter-clockwise. ``flip``: horizontal flip.
    """

    colour: tuple[float, float, float, float]
    scale: float
    shift: tuple[float, float]
    angle: float
    flip: bool


def draw_strong_params(augment: AugmentConfig, rng: np.random.Generator) -> StrongParams:
    """Draw ``StrongParams`` from ``rng``: always 9 uniforms in this order, whatever is switched off.

    colour (4, each in [-1, 1] times brightness, contrast, saturation, hue), scale (``scale_range``),
    shift (2, in [-1, 1] times ``translate``), angle ([-1, 1] times ``rotate``), flip (< ``hflip``).
    """
    colour = rng.uniform(-1.0, 1.0, size=4) * np.array([augment.brightness, augment.contrast,
                                                        augment.saturation, augment.hue])
    scale = float(rng.uniform(*augment.scale_range))
    shift = rng.uniform(-1.0, 1.0, size=2) * augment.translate
    angle = float(rng.uniform(-1.0, 1.0)) * augment.rotate
    flip = bool(rng.uniform() < augment.hflip)
    return StrongParams(colour=(1.0 + float(colour[0]), 1.0 + float(colour[1]), 1.0 + float(colour[2]),
                                float(colour[3])), scale=scale, shift=(float(shift[0]), float(shift[1])),
                        angle=angle, flip=flip)


def jitter_colour(image: torch.Tensor, colour: tuple[float, float, float, float]) -> torch.Tensor:
    """Brightness, contrast, saturation factors then hue shift, in that fixed order; identities are skipped.

    A fixed order (torchvision's ColorJitter permutes) keeps the draw count and the code simple; with
    factors near 1 the order matters little.
    """
    brightness, contrast, saturation, hue = colour
    if brightness != 1.0:
        image = F.adjust_brightness(image, brightness)
    if contrast != 1.0:
        image = F.adjust_contrast(image, contrast)
    if saturation != 1.0:
        image = F.adjust_saturation(image, saturation)
    if hue != 0.0:
        image = F.adjust_hue(image, hue)
    return image


def affine_crop(image: torch.Tensor, target: Target, *, scale: float, shift: tuple[float, float],
                angle: float, canvas: tuple[int, int], min_visible: float) -> tuple[torch.Tensor, Target]:
    """Zoom, shift and rotate ``image`` into a canvas of fixed size, with its boxes.

    Parameters
    ----------
    image : float (3, H, W) in [0, 1].
    target : ``boxes`` xyxy absolute pixels of ``image`` and per-box keys.
    scale : canvas pixels per input pixel (> 0). The crop of the input that fills the canvas is
        rounded to whole pixels, so the applied scale is ``canvas / round(canvas / scale)``.
    shift : (dx, dy) canvas pixels: the input centre lands at the canvas centre plus ``shift``.
    angle : degrees counter-clockwise about the canvas centre (0: none); a rotated box becomes the
        box around its rotated corners.
    canvas : (height, width) of the output; what falls outside is cropped, empty area is 0 (black).
    min_visible : boxes keeping less than this fraction of their (transformed) area in the canvas
        are dropped, then ``clip_target`` clips the rest and drops degenerate ones.

    Returns
    -------
    image float (3, *canvas), target with boxes in canvas pixels and per-box keys filtered alike.
    """
    out_h, out_w = canvas
    height, width = image.shape[-2:]
    crop_w, crop_h = max(1, round(out_w / scale)), max(1, round(out_h / scale))
    left = round(width / 2 - (out_w / 2 + shift[0]) * crop_w / out_w)
    top = round(height / 2 - (out_h / 2 + shift[1]) * crop_h / out_h)
    image = F.resized_crop(image, top, left, crop_h, crop_w, [out_h, out_w], antialias=True)
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width), clamping_mode=None)
    boxes = F.resized_crop(boxes, top, left, crop_h, crop_w, [out_h, out_w])
    if angle:
        image = F.rotate(image, angle, interpolation=InterpolationMode.BILINEAR)
        boxes = F.rotate(boxes, angle)
    boxes = boxes.as_subclass(torch.Tensor)
    keep = visible_fraction(boxes, width=out_w, height=out_h) >= min_visible
    target = {key: value for key, value in target.items() if key != "view"}
    if not angle:  # axis-aligned: x' = (x - left) * out_w / crop_w (torchvision's resized_crop of boxes)
        target["view"] = make_view(out_w / crop_w, out_h / crop_h, -left * out_w / crop_w, -top * out_h / crop_h)
    return image, clip_target(select_boxes({**target, "boxes": boxes}, keep), width=out_w, height=out_h)


def strong_transform(image: torch.Tensor, target: Target, rng: np.random.Generator, *, augment: AugmentConfig,
                     min_size: int, max_size: int) -> tuple[torch.Tensor, Target]:
    """The per-image part of ``augment.preset: strong``.

    Colour jitter (``jitter_colour``), zoom/shift/rotation into a canvas of the model size
    (``affine_crop``: the image resized by ``resize_scale``, so a batch is never padded beyond it),
    horizontal flip, Gaussian noise of ``augment.noise_std`` (clamped to [0, 1]). Parameters come from
    ``draw_strong_params``, then the noise (3 x canvas normals, drawn only when ``noise_std > 0``).

    Parameters
    ----------
    image : float32 (3, H, W) RGB in [0, 1].
    target : ``boxes`` float32 (N, 4) xyxy absolute pixels, per-box keys, ``image_id``.
    rng : the only source of randomness.
    augment, min_size, max_size : the ``augment`` section and the model's resolution.

    Returns
    -------
    image float32 (3, round(H * s), round(W * s)) with ``s = resize_scale(H, W)``, and its target.
    """
    params = draw_strong_params(augment, rng)
    image = jitter_colour(image, params.colour)
    height, width = image.shape[-2:]
    base = resize_scale(height, width, min_size=min_size, max_size=max_size)
    out_h, out_w = max(1, round(height * base)), max(1, round(width * base))
    image, target = affine_crop(image, target, scale=base * params.scale, angle=params.angle,
                                shift=(params.shift[0] * out_w, params.shift[1] * out_h),
                                canvas=(out_h, out_w), min_visible=augment.min_visible)
    if params.flip:
        image = image.flip(-1)
        target = {**target, "boxes": hflip_boxes(target["boxes"], out_w)}
        if "view" in target:
            target["view"] = flip_view(target["view"], out_w)
    if augment.noise_std:
        noise = torch.from_numpy(rng.standard_normal(size=tuple(image.shape), dtype=np.float32))
        image = (image + augment.noise_std * noise).clamp_(0.0, 1.0)
    return image, target


# ----------------------------------------------------------------------------------------------
# Copy-paste


@dataclass(frozen=True)
class _Crop:
    """An object cut out of its image: pixels (3, h, w), its box (1, 4) in crop pixels, its per-box rows."""

    pixels: torch.Tensor
    fields: Target


def _cut(image: torch.Tensor, target: Target, index: int) -> _Crop:
    """The whole-pixel rectangle around box ``index`` (the box keeps its sub-pixel position in it)."""
    x1, y1, x2, y2 = target["boxes"][index].tolist()
    height, width = image.shape[-2:]
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = max(left + 1, min(width, math.ceil(x2))), max(top + 1, min(height, math.ceil(y2)))
    fields = {key: target[key][index:index + 1] for key in per_box_keys(target)}
    fields["boxes"] = fields["boxes"] - fields["boxes"].new_tensor([left, top, left, top])
    return _Crop(pixels=image[:, top:bottom, left:right], fields=fields)


def _covered_fraction(boxes: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """float (N,): the fraction of each xyxy box's area (N, 4) over pixels where ``covered`` (H, W) is 1.

    Exact for whole-pixel coverage: the overlap of box n with pixel (i, j) is ``wy[n, i] * wx[n, j]``.
    """
    height, width = covered.shape
    xs, ys = torch.arange(width, dtype=boxes.dtype), torch.arange(height, dtype=boxes.dtype)
    wx = (torch.minimum(xs + 1, boxes[:, 2:3]) - torch.maximum(xs, boxes[:, 0:1])).clamp_min(0)  # (N, W)
    wy = (torch.minimum(ys + 1, boxes[:, 3:4]) - torch.maximum(ys, boxes[:, 1:2])).clamp_min(0)  # (N, H)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1e-12)
    return torch.einsum("nh,hw,nw->n", wy, covered.to(boxes.dtype), wx) / area


def _visible_after_pastes(boxes: torch.Tensor, rects: Sequence[tuple[int, int, int, int]],
                          height: int, width: int) -> torch.Tensor:
    """float (N,): visible fraction of each box, the last ``len(rects)`` boxes being the pasted ones.

    A box is hidden by every rectangle (left, top, right, bottom) pasted after it; the destination's
    own boxes (the first ``N - len(rects)``) by all of them.
    """
    covered = torch.zeros(height, width)
    visible = torch.ones(len(boxes), dtype=boxes.dtype)
    first_pasted = len(boxes) - len(rects)
    for k in range(len(rects) - 1, -1, -1):
        row = first_pasted + k
        visible[row] = 1.0 - _covered_fraction(boxes[row:row + 1], covered)[0]
        left, top, right, bottom = rects[k]
        covered[top:bottom, left:right] = 1.0
    if first_pasted:
        visible[:first_pasted] = 1.0 - _covered_fraction(boxes[:first_pasted], covered)
    return visible


def paste_objects(image: torch.Tensor, target: Target, crops: Sequence[_Crop], rng: np.random.Generator, *,
                  min_visible: float) -> tuple[torch.Tensor, Target]:
    """Paste ``crops`` into a copy of ``image`` at random positions, in order (later ones on top).

    A crop larger than the image is shrunk (aspect kept) to fit. Draws (top, left) per crop from
    ``rng``. Boxes (old and pasted) with less than ``min_visible`` of their area left uncovered by
    later crops are dropped; per-box keys follow.
    """
    out = image.clone()
    height, width = image.shape[-2:]
    rects, rows = [], []
    for crop in crops:
        pixels, fields = crop.pixels, dict(crop.fields)
        h, w = pixels.shape[-2:]
        factor = min(1.0, height / h, width / w)
        if factor < 1.0:
            new_h, new_w = max(1, math.floor(h * factor)), max(1, math.floor(w * factor))
            pixels = F.resize(pixels, [new_h, new_w], antialias=True)
            fields["boxes"] = scale_boxes(fields["boxes"], new_w / w, new_h / h)
            h, w = new_h, new_w
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out[:, top:top + h, left:left + w] = pixels
        fields["boxes"] = fields["boxes"] + fields["boxes"].new_tensor([left, top, left, top])
        rects.append((left, top, left + w, top + h))
        rows.append(fields)
    merged = {**target, **{key: torch.cat([target[key], *(row[key] for row in rows)]) for key in per_box_keys(target)}}
    keep = _visible_after_pastes(merged["boxes"], rects, height, width) >= min_visible
    return out, clip_target(select_boxes(merged, keep), width=width, height=height)


def _check_batch(images: Sequence[torch.Tensor], targets: Sequence[Target], probability: float,
                 max_objects: int, min_visible: float) -> None:
    if len(images) != len(targets):
        raise ValueError(f"copy_paste(images=, targets=) expects equal lengths; got {len(images)} and {len(targets)}.")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"copy_paste(probability=) expects a number in [0, 1]; got {probability}.")
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
        raise ValueError(f"copy_paste(max_objects=) expects an integer >= 1; got {max_objects!r}.")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"copy_paste(min_visible=) expects a number in [0, 1]; got {min_visible}.")
    keys = sorted(per_box_keys(targets[0])) if targets else []
    for index, (image, target) in enumerate(zip(images, targets, strict=True)):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"copy_paste(images=) expects (3, H, W) tensors; got {tuple(image.shape)} at image {index}.")
        if sorted(per_box_keys(target)) != keys:
            raise ValueError(f"copy_paste(targets=) expects the same per-box keys in every target ({keys}); "
                             f"got {sorted(per_box_keys(target))} at image {index}.")


def copy_paste(images: Sequence[torch.Tensor], targets: Sequence[Target], rng: np.random.Generator, *,
               probability: float, max_objects: int, min_visible: float) -> tuple[list[torch.Tensor], list[Target]]:
    """Paste objects cut from the other images of a batch into each image.

    For each image in order: with ``probability`` (one uniform draw), paste ``k`` objects, ``k``
    uniform in 1..``max_objects`` (capped at the number available), drawn without replacement from
    the boxes of the OTHER images (as given, not as pasted into). A crop is the whole-pixel rectangle
    around the box, background included (other objects inside it stay unlabelled); it is placed at a
    uniform position and shrunk only if larger than the destination. Its box and every per-box key
    are appended to the destination target, ``ann_ids`` included: a pasted box keeps its source
    annotation id, so an id may occur in two images of the batch. Boxes left with less than
    ``min_visible`` of their area visible are removed with their per-box keys.

    Parameters
    ----------
    images : float (3, H, W) in [0, 1], sizes may differ.
    targets : ``boxes`` (N, 4) xyxy absolute pixels and per-box keys (the same keys in every target).
    rng : the only source of randomness; a state gives one outcome.
    probability : in [0, 1]; 0 returns the batch unchanged.
    max_objects : >= 1.
    min_visible : in [0, 1].

    Returns
    -------
    New lists. Changed images are new tensors and changed targets new dicts; unchanged ones are the
    inputs' objects (never modified). Images without boxes can receive objects but give none; a batch
    of one image is returned unchanged.
    """
    _check_batch(images, targets, probability, max_objects, min_visible)
    out_images, out_targets = list(images), list(targets)
    if len(images) < 2 or probability == 0.0:
        return out_images, out_targets
    for index in range(len(images)):
        if rng.uniform() >= probability:
            continue
        pool = [(src, box) for src, t in enumerate(targets) if src != index for box in range(len(t["boxes"]))]
        if not pool:
            continue
        count = min(int(rng.integers(1, max_objects + 1)), len(pool))
        picks = [pool[int(p)] for p in rng.choice(len(pool), size=count, replace=False)]
        crops = [_cut(images[src], targets[src], box) for src, box in picks]
        out_images[index], pasted = paste_objects(images[index], targets[index], crops, rng, min_visible=min_visible)
        # the view no longer shows only the stored image: no "view" (a cached detection would miss the pastes)
        out_targets[index] = {key: value for key, value in pasted.items() if key != "view"}
    return out_images, out_targets


def copy_paste_batch(images: Sequence[torch.Tensor], targets: Sequence[Target], *, config: AugmentConfig,
                     seed: int, iteration: int) -> tuple[list[torch.Tensor], list[Target]]:
    """``copy_paste`` of one training (super-)batch, seeded by ``(seed, COPY_PASTE_DOMAIN, iteration)``.

    Uses ``config.copy_paste`` (probability), ``copy_paste_max`` and ``min_visible``; returns the batch
    unchanged (as new lists) for preset ``standard`` or ``copy_paste == 0``.
    """
    if config.preset != "strong" or config.copy_paste == 0.0:
        return list(images), list(targets)
    rng = np.random.default_rng([seed, COPY_PASTE_DOMAIN, iteration])
    return copy_paste(images, targets, rng, probability=config.copy_paste, max_objects=config.copy_paste_max,
                      min_visible=config.min_visible)
