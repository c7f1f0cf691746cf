"""Engine data: targets from COCO records, box geometry under augmentation, the resumable sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fixtures import make_shapes_coco

from curation_core.coco import dataset_from_dict, load_coco
from curation_core.engine.config import AugmentConfig
from curation_core.engine.data import (
    DetectionDataset,
    TrainBatchSampler,
    TrainTransform,
    build_target,
    collate,
    hflip_boxes,
    label_map,
    load_image,
    make_loader,
    resize_scale,
    scale_boxes,
    to_tensor,
)
from curation_core.errors import DataError


def test_to_tensor_scales_and_accepts_read_only_arrays() -> None:
    import warnings

    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    frozen = image.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on read-only numpy memory
        tensor = to_tensor(frozen)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    assert torch.equal(tensor, torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
    tensor.mul_(0)  # the result owns its memory
    assert np.array_equal(frozen, image)


def test_label_map_is_position_plus_one() -> None:
    assert label_map([3, 5, 9]) == {3: 1, 5: 2, 9: 3}


def test_build_target_converts_boxes_and_leaves_crowds_out() -> None:
    anns = [
        {"id": 7, "category_id": 5, "bbox": [10.0, 20.0, 30.0, 40.0], "iscrowd": 0, "ignore": 1},
        {"id": 8, "category_id": 3, "bbox": [0.0, 0.0, 5.0, 5.0], "iscrowd": 1},
        {"id": 9, "category_id": 9, "bbox": [60.0, 50.0, 10.0, 20.0], "iscrowd": 0},  # reaches beyond 64x64: clipped
    ]
    target = build_target(anns, label_map([3, 5, 9]), image_id=4, width=64, height=64)
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 20.0, 40.0, 60.0], [60.0, 50.0, 64.0, 64.0]]))
    assert target["labels"].tolist() == [2, 3] and target["ann_ids"].tolist() == [7, 9]
    assert target["ignore"].tolist() == [True, False] and int(target["image_id"]) == 4
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64


def test_image_without_boxes_gives_empty_target_of_shape_0_4() -> None:
    target = build_target([], {1: 1}, image_id=1, width=10, height=10)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    crowd_only = build_target([{"id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 1}], {1: 1},
                              image_id=1, width=10, height=10)
    assert crowd_only["boxes"].shape == (0, 4)


def test_degenerate_boxes_after_clipping_are_dropped() -> None:
    anns = [{"id": 1, "category_id": 1, "bbox": [-1.0, 2.0, 0.5, 3.0]}]  # x in [-1, -0.5]: outside the image
    assert build_target(anns, {1: 1}, image_id=1, width=10, height=10)["boxes"].shape == (0, 4)


def test_hflip_and_scale_of_boxes() -> None:
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
    assert torch.equal(hflip_boxes(boxes, 100.0), torch.tensor([[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]]))
    assert torch.equal(hflip_boxes(hflip_boxes(boxes, 100.0), 100.0), boxes)
    assert torch.equal(scale_boxes(boxes, 0.5, 2.0), torch.tensor([[5.0, 10.0, 15.0, 50.0], [0.0, 0.0, 50.0, 100.0]]))
    assert resize_scale(480, 640, min_size=800, max_size=1333) == pytest.approx(800 / 480)
    assert resize_scale(100, 1000, min_size=800, max_size=1333) == pytest.approx(1.333)


@pytest.mark.parametrize("seed", range(6))
def test_transform_keeps_boxes_on_their_objects(seed: int) -> None:
    # A bright rectangle on black: after flip + scale jitter + photometric jitter the target box must
    # still be the bounding box of the bright pixels (within a pixel of resampling).
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    x1, y1 = int(rng.integers(x0 + 8, width)), int(rng.integers(y0 + 8, height))
    image = torch.zeros(3, height, width)
    image[:, y0:y1, x0:x1] = 0.8
    target = build_target([{"id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]}], {1: 1}, image_id=1,
                          width=width, height=height)
    augment = AugmentConfig(hflip=0.5, scale_range=(0.6, 1.6), brightness=0.2, contrast=0.2, saturation=0.2)
    out, out_target = TrainTransform(augment, min_size=64, max_size=128)(image, target, np.random.default_rng(seed))
    ys, xs = torch.nonzero(out.mean(0) > out.mean(0).max() / 2, as_tuple=True)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert torch.allclose(out_target["boxes"][0], found, atol=1.01)
    scale = resize_scale(height, width, min_size=64, max_size=128)
    assert 0.6 * scale - 0.05 <= out.shape[-1] / width <= 1.6 * scale + 0.05


def test_transform_flips_half_the_time_and_is_a_function_of_the_generator() -> None:
    image = torch.rand(3, 32, 48)
    target = build_target([{"id": 1, "category_id": 1, "bbox": [2, 3, 10, 12]}], {1: 1}, image_id=1, width=48, height=32)
    transform = TrainTransform(AugmentConfig(hflip=0.5), min_size=32, max_size=48)
    flipped = [bool(transform(image, target, np.random.default_rng(s))[1]["boxes"][0, 0] > 24) for s in range(200)]
    assert 70 < sum(flipped) < 130
    a = transform(image, target, np.random.default_rng(5))
    b = transform(image, target, np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_identity_transform_leaves_image_and_boxes() -> None:
    image = torch.rand(3, 32, 48)
    target = build_target([{"id": 1, "category_id": 1, "bbox": [2, 3, 10, 12]}], {1: 1}, image_id=1, width=48, height=32)
    out, out_target = TrainTransform(AugmentConfig(hflip=0.0), min_size=32, max_size=48)(image, target,
                                                                                         np.random.default_rng(0))
    assert torch.equal(out, image) and torch.equal(out_target["boxes"], target["boxes"])


def test_sampler_is_seeded_resumable_and_covers_every_epoch() -> None:
    full = list(TrainBatchSampler(10, 4, seed=3, start=0, stop=9))
    assert len(full) == 9 and all(len(batch) == 4 for batch in full)
    stream = [key for batch in full for key in batch]
    assert [position for _, position in stream] == list(range(36))
    for epoch in range(3):  # each epoch is a permutation of all samples
        assert sorted(index for index, _ in stream[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert list(TrainBatchSampler(10, 4, seed=3, start=5, stop=9)) == full[5:]
    assert [i for i, _ in stream[:10]] != [i for i, _ in
                                            [k for b in TrainBatchSampler(10, 4, seed=4, start=0, stop=3) for k in b][:10]]
    with pytest.raises(ValueError, match=r"TrainBatchSampler\(num_samples=\) expects an integer >= 1; got 0"):
        TrainBatchSampler(0, 4, seed=0, start=0, stop=1)
    with pytest.raises(ValueError, match=r"expects 0 <= start <= stop; got 3, 2"):
        TrainBatchSampler(5, 4, seed=0, start=3, stop=2)


@pytest.fixture
def shapes(tmp_path: Path):
    path, images = make_shapes_coco(tmp_path, num_images=6, size=64)
    return load_coco(path), images


def test_dataset_samples_and_collate(shapes) -> None:
    gt, images = shapes
    dataset = DetectionDataset(gt, images, category_ids=[3, 5, 9])
    assert len(dataset) == 6
    image, target = dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0.0 <= float(image.min()) <= 1.0
    anns = [a for a in gt.annotations_by_image[gt.images[0]["id"]] if not a["iscrowd"]]
    assert target["boxes"].shape == (len(anns), 4)
    batch_images, batch_targets = collate([dataset[0], dataset[1]])
    assert len(batch_images) == 2 and len(batch_targets) == 2
    # Augmented samples depend on the stream position only.
    augmented = DetectionDataset(gt, images, category_ids=[3, 5, 9], seed=1,
                                 transform=TrainTransform(AugmentConfig(scale_range=(0.5, 1.5)), 64, 64))
    assert torch.equal(augmented[(2, 17)][0], augmented[(2, 17)][0])
    assert augmented[(2, 17)][0].shape != augmented[(2, 18)][0].shape or not torch.equal(augmented[(2, 17)][0],
                                                                                          augmented[(2, 18)][0])


def test_loader_with_a_worker_gives_the_same_batches(shapes) -> None:
    gt, images = shapes
    dataset = DetectionDataset(gt, images, category_ids=[3, 5, 9], seed=2,
                               transform=TrainTransform(AugmentConfig(scale_range=(0.8, 1.2), brightness=0.3), 64, 64))
    batches = []
    for workers in (0, 1):
        loader = make_loader(dataset, batch_sampler=TrainBatchSampler(6, 4, seed=0, start=1, stop=3),
                             num_workers=workers, seed=0, pin_memory=False)
        batches.append([(imgs, tgts) for imgs, tgts in loader])
    for (imgs_a, tgts_a), (imgs_b, tgts_b) in zip(*batches, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(imgs_a, imgs_b, strict=True))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(tgts_a, tgts_b, strict=True))


def test_bad_images_and_categories_are_one_line_errors(shapes, tmp_path: Path) -> None:
    gt, images = shapes
    with pytest.raises(DataError, match=r"category ids \[9\] are not among the model's categories \[3, 5\]"):
        DetectionDataset(gt, images, category_ids=[3, 5])
    (images / gt.images[1]["file_name"]).write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"train_1\.png: <file>: image cannot be decoded"):
        DetectionDataset(gt, images, category_ids=[3, 5, 9])[1]
    with pytest.raises(DataError, match=r"missing\.png: <file>: image file does not exist"):
        load_image(tmp_path / "missing.png")
    raw = json.loads(Path(gt.source).read_text())
    raw["images"][0]["width"] = 63
    raw["annotations"] = []
    wrong = dataset_from_dict(raw)
    with pytest.raises(DataError, match=r"image id=100: is 64x64 but the record says 63x64"):
        DetectionDataset(wrong, images, category_ids=[3, 5, 9])[0]
