"""Augmentation presets: standard unchanged, strong geometry/colour/noise, copy-paste between images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from curation_core.engine import data
from curation_core.engine.augment import (
    COPY_PASTE_DOMAIN,
    affine_crop,
    copy_paste,
    copy_paste_batch,
    draw_strong_params,
    strong_transform,
)
from curation_core.engine.config import STRONG_DEFAULTS, AugmentConfig, config_from_dict
from curation_core.engine.data import (
    TrainTransform,
    build_target,
    clip_target,
    hflip_boxes,
    resize_scale,
    scale_boxes,
)
from curation_core.errors import ConfigError

#: Strong geometry only: no colour jitter, no noise, so pixels can be compared with the source.
GEOMETRY_ONLY = {"preset": "strong", "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
                 "noise_std": 0.0}
#: Distinct colours of the objects in ``_squares``, by annotation id.
COLOURS = {10: (1.0, 0.0, 0.0), 11: (0.0, 1.0, 0.0), 12: (0.0, 0.0, 1.0), 13: (1.0, 1.0, 0.0)}


def _target(boxes: list[list[float]], ann_ids: list[int], *, width: float, height: float) -> data.Target:
    """Boxes xyxy with recognisable per-box keys: label = ann_id - 9, ignore = odd ann_id, weight = ann_id / 100."""
    anns = [{"id": i, "category_id": i - 9, "bbox": [x1, y1, x2 - x1, y2 - y1], "ignore": i % 2}
            for i, (x1, y1, x2, y2) in zip(ann_ids, boxes, strict=True)]
    target = build_target(anns, {c: c for c in range(1, 9)}, image_id=7, width=width, height=height)
    target["weight"] = target["ann_ids"].to(torch.float32) / 100  # an extra per-box key
    target["position"] = torch.tensor(42)  # an extra per-image key (scalar)
    return target


def _squares(size: int = 128) -> tuple[torch.Tensor, data.Target]:
    """Black image with four solid squares of the ``COLOURS``, one box each (ann ids 10..13)."""
    boxes = [[8, 8, 40, 40], [80, 10, 120, 50], [12, 70, 52, 118], [70, 76, 118, 116]]
    image = torch.zeros(3, size, size)
    for ann_id, (x1, y1, x2, y2) in zip(COLOURS, boxes, strict=True):
        image[:, y1:y2, x1:x2] = torch.tensor(COLOURS[ann_id])[:, None, None]
    return image, _target(boxes, list(COLOURS), width=size, height=size)


def _assert_keys_follow_boxes(target: data.Target) -> None:
    ids = target["ann_ids"]
    assert torch.equal(target["labels"], ids - 9) and torch.equal(target["ignore"], ids % 2 == 1)
    assert torch.equal(target["weight"], ids.to(torch.float32) / 100)
    assert int(target["image_id"]) == 7 and int(target["position"]) == 42


# ----------------------------------------------------------------------------------------------
# Standard preset: bit-identical to the code before presets existed


def _standard_before_presets(augment, min_size, max_size, image, target, rng):
    """TrainTransform.__call__ as it was before ``preset`` (verbatim), the reference for standard."""
    a = augment
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
    scale = resize_scale(height, width, min_size=min_size, max_size=max_size) * jitter
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) != (height, width):
        image = F.resize(image, [new_h, new_w], antialias=True)
        target = {**target, "boxes": scale_boxes(target["boxes"], new_w / width, new_h / height)}
    if flip:
        image = image.flip(-1)
        target = {**target, "boxes": hflip_boxes(target["boxes"], new_w)}
    return image, clip_target(target, width=new_w, height=new_h)


@pytest.mark.parametrize("augment", [
    AugmentConfig(),
    AugmentConfig(preset="standard", hflip=0.5, scale_range=(0.6, 1.6), brightness=0.2, contrast=0.3, saturation=0.1),
    AugmentConfig(hflip=1.0, scale_range=(0.8, 1.25)),
])
def test_standard_preset_is_bit_identical_to_the_code_before_presets(augment: AugmentConfig) -> None:
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    target = _target([[5, 6, 35, 26], [100, 70, 128, 96]], [10, 11], width=128, height=96)
    for seed in range(6):
        got = TrainTransform(augment, 128, 160)(image, target, np.random.default_rng(seed))
        want = _standard_before_presets(augment, 128, 160, image, target, np.random.default_rng(seed))
        assert torch.equal(got[0], want[0]) and got[1].keys() == want[1].keys() | {"view"}
        assert all(torch.equal(got[1][key], want[1][key]) for key in want[1])


@pytest.mark.parametrize("augment", [
    AugmentConfig(hflip=0.5, scale_range=(0.6, 1.6)),
    AugmentConfig(preset="strong", copy_paste=0.0),
    AugmentConfig(preset="strong", hflip=1.0, scale_range=(1.2, 1.5), translate=0.2, copy_paste=0.0),
])
def test_the_view_maps_stored_boxes_onto_the_augmented_boxes(augment: AugmentConfig) -> None:
    from curation_core.engine.data import map_boxes

    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))
    target = _target([[40, 30, 70, 60], [60, 40, 90, 62]], [10, 11], width=128, height=96)
    for seed in range(8):
        view_image, view_target = TrainTransform(augment, 128, 160)(image, target, np.random.default_rng(seed))
        mapped = clip_target({"boxes": map_boxes(target["boxes"], view_target["view"]), "ann_ids": target["ann_ids"]},
                             width=view_image.shape[-1], height=view_image.shape[-2])
        kept = [int(i) for i in view_target["ann_ids"]]
        rows = [int(i) in kept for i in mapped["ann_ids"]]
        torch.testing.assert_close(mapped["boxes"][rows], view_target["boxes"], atol=1e-4, rtol=0)


def test_rotated_and_pasted_views_have_no_view() -> None:
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    target = _target([[10, 10, 30, 30]], [10], width=64, height=64)
    rotated = TrainTransform(AugmentConfig(preset="strong", rotate=30.0), 64, 64)(image, target, np.random.default_rng(0))
    assert "view" not in rotated[1]
    plain = TrainTransform(AugmentConfig(), 64, 64)
    views = [plain(image, target, np.random.default_rng(i)) for i in range(2)]
    _, pasted = copy_paste([v[0] for v in views], [v[1] for v in views], np.random.default_rng(0), probability=1.0,
                           max_objects=1, min_visible=0.0)
    assert all("view" not in t for t in pasted)


# ----------------------------------------------------------------------------------------------
# Configuration


def test_strong_preset_fills_its_defaults_and_explicit_values_win() -> None:
    strong = AugmentConfig(preset="strong")
    assert {name: getattr(strong, name) for name in STRONG_DEFAULTS} == STRONG_DEFAULTS
    assert strong.hflip == 0.5 and strong.min_visible == 0.3 and strong.copy_paste_max == 3
    assert AugmentConfig(preset="strong", brightness=0.0, scale_range=(1.0, 1.0)).brightness == 0.0
    assert AugmentConfig.model_validate(strong.model_dump(mode="json")) == strong  # what config.yaml reloads
    standard = AugmentConfig()
    assert standard.preset == "standard" and standard.scale_range == (1.0, 1.0) and standard.copy_paste == 0.0


_MINIMAL = {
    "model": {"detector": "fcos", "backbone": "tiny", "min_size": 128, "max_size": 128},
    "data": {"train_annotations": "train.json", "train_images": "images"},
    "optim": {"lr": 0.01}, "schedule": {"max_iter": 10}, "train": {"output_dir": "out", "batch_size": 2},
}


@pytest.mark.parametrize(("augment", "message"), [
    ({"preset": "heavy"}, r"augment\.preset: invalid value 'heavy'; valid choices: standard, strong"),
    ({"preset": "strong", "hue": 0.6}, r"augment\.hue: Input should be less than or equal to 0\.5; got 0\.6"),
    ({"preset": "strong", "translate": -0.1}, r"augment\.translate: Input should be greater than or equal to 0"),
    ({"preset": "strong", "min_visible": 1.5}, r"augment\.min_visible: Input should be less than or equal to 1"),
    ({"preset": "strong", "copy_paste": 2.0}, r"augment\.copy_paste: Input should be less than or equal to 1"),
    ({"preset": "strong", "copy_paste_max": 0}, r"augment\.copy_paste_max: Input should be greater than or equal to 1"),
    ({"preset": "strong", "copy_paste_max": 2.5}, r"augment\.copy_paste_max: Input should be a valid integer"),
    ({"preset": "strong", "noise_std": "0.1"}, r"augment\.noise_std: Input should be a valid number"),
    ({"preset": "strong", "scale_range": [1.5, 0.5]}, r"augment: scale_range must satisfy 0 < lo <= hi"),
    ({"noise_std": 0.1, "copy_paste": 0.5}, r"augment: noise_std, copy_paste apply to preset 'strong' only"),
    ({"min_visible": 0.5}, r"augment: min_visible apply to preset 'strong' only"),
])
def test_invalid_augment_values_name_the_field(augment: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**_MINIMAL, "augment": augment})


# ----------------------------------------------------------------------------------------------
# Strong preset, per image


def test_affine_crop_hand_computed_scale_and_shift() -> None:
    image = torch.zeros(3, 128, 128)
    target = _target([[40, 40, 60, 60], [0, 0, 20, 100], [24, 40, 40, 60]], [10, 11, 12], width=128, height=128)

    def boxes(scale, shift, min_visible=0.3, canvas=(128, 128)):
        return affine_crop(image, target, scale=scale, shift=shift, angle=0.0, canvas=canvas,
                           min_visible=min_visible)[1]

    # zoom x2 about the centre: crop [32, 96) -> canvas; box 11 falls outside; box 12 keeps x in
    # [-16, 16] of [0, 128]: half its area, so it stays at 0.3 and goes at 0.6.
    out = boxes(2.0, (0.0, 0.0))
    assert out["boxes"].tolist() == [[16, 16, 56, 56], [0, 16, 16, 56]] and out["ann_ids"].tolist() == [10, 12]
    assert boxes(2.0, (0.0, 0.0), min_visible=0.6)["ann_ids"].tolist() == [10]
    # zoom x2, then 10 px right and 6 px up: crop left = 64 - (64 + 10) / 2 = 27, top = 64 - (64 - 6) / 2 = 35
    assert boxes(2.0, (10.0, -6.0))["boxes"][0].tolist() == [26, 10, 66, 50]
    # zoom out x0.5: 64 + (40 - 64) / 2 = 52; everything stays inside, padded with black
    out = boxes(0.5, (0.0, 0.0))
    assert out["boxes"].tolist() == [[52, 52, 62, 62], [32, 32, 42, 82], [44, 52, 52, 62]]
    # a 64 px input into a 128 px canvas at scale 2 is a plain resize
    small = _target([[10, 10, 20, 30]], [10], width=64, height=64)
    got = affine_crop(torch.zeros(3, 64, 64), small, scale=2.0, shift=(0.0, 0.0), angle=0.0, canvas=(128, 128),
                      min_visible=0.3)
    assert got[0].shape == (3, 128, 128) and got[1]["boxes"].tolist() == [[20, 20, 40, 60]]


@pytest.mark.parametrize("seed", range(8))
def test_strong_boxes_stay_on_their_objects_and_keys_follow(seed: int) -> None:
    image, target = _squares()
    augment = AugmentConfig(**GEOMETRY_ONLY, translate=0.25, scale_range=(0.5, 2.0), hflip=0.5)
    out, out_target = strong_transform(image, target, np.random.default_rng(seed), augment=augment,
                                       min_size=128, max_size=128)
    assert out.shape == (3, 128, 128)
    boxes = out_target["boxes"]
    assert (boxes >= 0).all() and (boxes <= 128).all()  # (seed 6 zooms and shifts every object out)
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    _assert_keys_follow_boxes(out_target)
    for box, ann_id in zip(boxes.tolist(), out_target["ann_ids"].tolist(), strict=True):
        x1, y1, x2, y2 = round(box[0]) + 1, round(box[1]) + 1, round(box[2]) - 1, round(box[3]) - 1  # off the blurred rim
        if x2 > x1 and y2 > y1:
            mean = out[:, y1:y2, x1:x2].mean(dim=(1, 2))
            assert torch.allclose(mean, torch.tensor(COLOURS[ann_id]), atol=0.05), (ann_id, mean)


def test_strong_output_has_the_model_size_for_any_input() -> None:
    augment = AugmentConfig(preset="strong")
    for seed, (height, width) in enumerate([(128, 128), (64, 64), (100, 150), (200, 90)]):
        image = torch.rand(3, height, width)
        target = _target([[0, 0, width / 2, height / 2]], [10], width=width, height=height)
        out, out_target = TrainTransform(augment, 128, 192)(image, target, np.random.default_rng(seed))
        scale = resize_scale(height, width, min_size=128, max_size=192)
        assert out.shape == (3, round(height * scale), round(width * scale))
        assert out.min() >= 0 and out.max() <= 1 and (out_target["boxes"][:, 2:] <= torch.tensor(out.shape[:0:-1])).all()


def test_rotation_keeps_the_object_inside_its_box() -> None:
    image, target = _squares()
    for angle in (90.0, 20.0):
        out, out_target = affine_crop(image, target, scale=1.0, shift=(0.0, 0.0), angle=angle, canvas=(128, 128),
                                      min_visible=0.3)
        assert out_target["ann_ids"].tolist() == [10, 11, 12, 13]
        for box, ann_id in zip(out_target["boxes"].tolist(), out_target["ann_ids"].tolist(), strict=True):
            x1, y1, x2, y2 = (round(v) for v in box)
            colour = torch.tensor(COLOURS[ann_id])[:, None, None]
            near = ((out - colour).abs().max(dim=0).values < 0.1).float()  # pixels of this object's colour
            assert near[y1:y2, x1:x2].sum() >= 0.97 * near.sum() > 0  # all of the object lies in its box


def test_strong_is_a_function_of_the_generator_and_leaves_torch_rng_alone() -> None:
    image, target = _squares()
    transform = TrainTransform(AugmentConfig(preset="strong"), 128, 128)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = transform(image, target, np.random.default_rng(5))
    b = transform(image, target, np.random.default_rng(5))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    c = transform(image, target, np.random.default_rng(6))
    assert not torch.equal(a[0], c[0])


def test_parameters_are_drawn_in_a_fixed_count_whatever_is_switched_off() -> None:
    all_on, rng_on = AugmentConfig(preset="strong", rotate=10.0), np.random.default_rng(3)
    all_off, rng_off = AugmentConfig(preset="strong", **{k: 0.0 for k in GEOMETRY_ONLY if k != "preset"},
                                     translate=0.0, hflip=0.0), np.random.default_rng(3)
    on, off = draw_strong_params(all_on, rng_on), draw_strong_params(all_off, rng_off)
    assert off.colour == (1.0, 1.0, 1.0, 0.0) and off.shift == (0.0, 0.0) and not off.flip
    assert on.colour != off.colour and on.scale == off.scale  # the same uniform, in the same place
    assert rng_on.uniform() == rng_off.uniform()


def test_gaussian_noise_has_the_configured_std() -> None:
    image = torch.full((3, 128, 128), 0.5)
    target = _target([[10, 10, 50, 50]], [10], width=128, height=128)
    augment = AugmentConfig(**{**GEOMETRY_ONLY, "noise_std": 0.05}, scale_range=(1.0, 1.0), translate=0.0)
    out, _ = strong_transform(image, target, np.random.default_rng(0), augment=augment, min_size=128, max_size=128)
    assert (out - 0.5).std().item() == pytest.approx(0.05, rel=0.03) and abs((out - 0.5).mean().item()) < 0.002


def test_colour_jitter_changes_colours_not_geometry() -> None:
    image, target = _squares()
    augment = AugmentConfig(preset="strong", scale_range=(1.0, 1.0), translate=0.0, hflip=0.0, noise_std=0.0)
    out, out_target = strong_transform(image, target, np.random.default_rng(1), augment=augment, min_size=128,
                                       max_size=128)
    assert torch.equal(out_target["boxes"], target["boxes"]) and not torch.equal(out, image)
    assert out.min() >= 0 and out.max() <= 1


# ----------------------------------------------------------------------------------------------
# Copy-paste


def _random_image(seed: int, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def test_copy_paste_pastes_the_source_crop_and_its_box() -> None:
    empty = _target([], [], width=64, height=64)
    source = _target([[10, 12, 30, 40]], [13], width=64, height=64)
    images, targets = [torch.zeros(3, 64, 64), _random_image(1)], [empty, source]
    out_images, out_targets = copy_paste(images, targets, np.random.default_rng(0), probability=1.0, max_objects=1,
                                         min_visible=0.3)
    pasted = out_targets[0]
    assert pasted["ann_ids"].tolist() == [13] and pasted["labels"].tolist() == [4] and pasted["ignore"].tolist() == [True]
    _assert_keys_follow_boxes(pasted)
    x1, y1, x2, y2 = (int(v) for v in pasted["boxes"][0].tolist())
    assert (x2 - x1, y2 - y1) == (20, 28)
    assert torch.equal(out_images[0][:, y1:y2, x1:x2], images[1][:, 12:40, 10:30])
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert (out_images[0][:, outside] == 0).all()
    assert out_images[1] is images[1] and out_targets[1] is targets[1]  # its only donor has no boxes


def test_copy_paste_drops_occluded_destination_boxes() -> None:
    dest = _target([[10, 10, 20, 20], [0, 0, 64, 64]], [10, 12], width=64, height=64)
    full = _target([[0, 0, 64, 64]], [11], width=64, height=64)  # covers the whole destination
    half = _target([[0, 0, 64, 32]], [13], width=64, height=64)  # covers exactly half of box 12
    images = [_random_image(0), _random_image(1), _random_image(2)]
    _, out = copy_paste(images[:2], [dest, full], np.random.default_rng(0), probability=1.0, max_objects=1,
                        min_visible=0.3)
    assert out[0]["ann_ids"].tolist() == [11] and out[0]["boxes"].tolist() == [[0, 0, 64, 64]]
    for min_visible, kept_12 in ((0.4, True), (0.6, False)):
        _, out = copy_paste([images[0], images[2]], [dest, half], np.random.default_rng(0), probability=1.0,
                            max_objects=1, min_visible=min_visible)
        top = int(out[0]["boxes"][-1, 1])
        covered_10 = max(0, min(20, top + 32) - max(10, top)) / 10  # box 10's rows under the paste
        expected = [10] * (1 - covered_10 >= min_visible) + [12] * kept_12 + [13]
        assert out[0]["ann_ids"].tolist() == expected
        _assert_keys_follow_boxes(out[0])


def test_copy_paste_shrinks_crops_larger_than_the_destination() -> None:
    big = _target([[0, 0, 64, 64]], [11], width=64, height=64)
    images = [torch.zeros(3, 32, 48), _random_image(1)]
    out_images, out = copy_paste(images, [_target([], [], width=48, height=32), big], np.random.default_rng(0),
                                 probability=1.0, max_objects=1, min_visible=0.3)
    x1, y1, x2, y2 = out[0]["boxes"][0].tolist()
    assert (x2 - x1, y2 - y1, y1) == (32, 32, 0)
    assert torch.equal(out_images[0][:, :, int(x1):int(x2)], F.resize(images[1], [32, 32], antialias=True))


def test_copy_paste_does_not_mutate_and_is_deterministic() -> None:
    images = [_random_image(i) for i in range(4)]
    targets = [_target([[4 * i, 8, 4 * i + 20, 30]], [10 + i], width=64, height=64) for i in range(4)]
    saved = [img.clone() for img in images], [{k: v.clone() for k, v in t.items()} for t in targets]
    first = copy_paste(images, targets, np.random.default_rng(3), probability=1.0, max_objects=2, min_visible=0.3)
    again = copy_paste(images, targets, np.random.default_rng(3), probability=1.0, max_objects=2, min_visible=0.3)
    other = copy_paste(images, targets, np.random.default_rng(4), probability=1.0, max_objects=2, min_visible=0.3)
    assert all(torch.equal(a, b) for a, b in zip(images, saved[0], strict=True))
    assert all(t.keys() == s.keys() and all(torch.equal(t[k], s[k]) for k in t) for t, s in zip(targets, saved[1],
                                                                                             strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(first[1], again[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first[0], other[0], strict=True))
    for index, target in enumerate(first[1]):
        _assert_keys_follow_boxes(target)
        pasted = target["ann_ids"][target["ann_ids"] != 10 + index]
        assert 1 <= len(pasted) <= 2 and (10 + index) not in pasted.tolist()  # from other images only


def test_copy_paste_identity_cases() -> None:
    images = [_random_image(0), _random_image(1)]
    targets = [_target([[1, 1, 9, 9]], [10], width=64, height=64), _target([], [], width=64, height=64)]
    empty = [_target([], [], width=64, height=64), _target([], [], width=64, height=64)]
    for batch, probability in (((images, targets), 0.0), ((images[:1], targets[:1]), 1.0), ((images, empty), 1.0)):
        out_images, out_targets = copy_paste(*batch, np.random.default_rng(0), probability=probability,
                                             max_objects=3, min_visible=0.3)
        assert all(a is b for a, b in zip(out_images, batch[0], strict=True))
        assert all(a is b for a, b in zip(out_targets, batch[1], strict=True))
    assert copy_paste([], [], np.random.default_rng(0), probability=1.0, max_objects=1, min_visible=0.3) == ([], [])


def test_copy_paste_batch_is_seeded_by_iteration_and_off_unless_strong() -> None:
    images = [_random_image(i) for i in range(3)]
    targets = [_target([[2, 2, 20, 20]], [10 + i], width=64, height=64) for i in range(3)]
    assert COPY_PASTE_DOMAIN not in (data._ORDER_DOMAIN, data._AUGMENT_DOMAIN)
    for config in (AugmentConfig(), AugmentConfig(preset="strong", copy_paste=0.0)):
        out = copy_paste_batch(images, targets, config=config, seed=1, iteration=5)
        assert all(a is b for a, b in zip(out[0], images, strict=True))
    config = AugmentConfig(preset="strong", copy_paste=1.0, copy_paste_max=2)
    got = copy_paste_batch(images, targets, config=config, seed=1, iteration=5)
    want = copy_paste(images, targets, np.random.default_rng([1, COPY_PASTE_DOMAIN, 5]), probability=1.0,
                      max_objects=2, min_visible=config.min_visible)
    assert all(torch.equal(a, b) for a, b in zip(got[0], want[0], strict=True))
    assert all(torch.equal(a["ann_ids"], b["ann_ids"]) for a, b in zip(got[1], want[1], strict=True))


@pytest.mark.parametrize(("options", "message"), [
    ({"probability": 1.5}, r"copy_paste\(probability=\) expects a number in \[0, 1\]; got 1\.5\."),
    ({"max_objects": 0}, r"copy_paste\(max_objects=\) expects an integer >= 1; got 0\."),
    ({"min_visible": -0.1}, r"copy_paste\(min_visible=\) expects a number in \[0, 1\]; got -0\.1\."),
    ({"images": [torch.zeros(3, 8, 8)]}, r"copy_paste\(images=, targets=\) expects equal lengths; got 1 and 2\."),
    ({"images": [torch.zeros(3, 8, 8), torch.zeros(8, 8)]}, r"expects \(3, H, W\) tensors; got \(8, 8\) at image 1\."),
    ({"targets": "no weight"}, r"expects the same per-box keys in every target .*; got .* at image 1\."),
])
def test_copy_paste_rejects_bad_arguments(options: dict, message: str) -> None:
    targets = [_target([[1, 1, 5, 5]], [10], width=8, height=8) for _ in range(2)]
    if options.pop("targets", None):
        targets[1] = {k: v for k, v in targets[1].items() if k != "weight"}
    arguments = {"images": [torch.zeros(3, 8, 8)] * 2, "targets": targets, "probability": 1.0, "max_objects": 1,
                 "min_visible": 0.3, **options}
    with pytest.raises(ValueError, match=message):
        copy_paste(arguments.pop("images"), arguments.pop("targets"), np.random.default_rng(0), **arguments)
