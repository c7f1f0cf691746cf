"""Tiny COCO data sets of drawn shapes and tiny training configurations, shared by the engine tests.

``make_shapes_coco`` draws discs, squares and triangles (three categories with non-contiguous ids
3, 5, 9) on noisy backgrounds with PIL; some images have no objects and one annotation is a crowd.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

#: Category ids are deliberately not 1..K, to exercise the label mapping.
SHAPE_CATEGORIES = [{"id": 3, "name": "disc"}, {"id": 5, "name": "square"}, {"id": 9, "name": "triangle"}]


def _draw(size: int, rng: np.random.Generator) -> tuple[Any, list[tuple[int, list[float]]]]:
    from PIL import Image, ImageDraw

    noise = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise + np.uint8(rng.integers(0, 80)))
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(int(rng.integers(0, 4))):
        side = float(rng.uniform(0.2, 0.45) * size)
        x0, y0 = (float(v) for v in rng.uniform(0, size - side, size=2))
        kind = int(rng.integers(0, 3))
        colour = tuple(int(c) for c in rng.integers(150, 256, size=3))
        box = [x0, y0, x0 + side, y0 + side]
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=colour)
        objects.append((SHAPE_CATEGORIES[kind]["id"], [round(x0, 2), round(y0, 2), round(side, 2), round(side, 2)]))
    return image, objects


def make_shapes_coco(root: Path, *, split: str = "train", num_images: int = 12, size: int = 64, seed: int = 0,
                     crowd: bool = True) -> tuple[Path, Path]:
    """Write ``root/<split>.json`` and ``root/images/<split>_<i>.png``; return (annotations, image folder)."""
    rng = np.random.default_rng([seed, len(split)])
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, objects = _draw(size, rng)
        name = f"{split}_{i}.png"
        image.save(image_dir / name)
        images.append({"id": 100 + i, "file_name": name, "width": size, "height": size})
        for category_id, bbox in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": category_id,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    if crowd and annotations:
        annotations[0]["iscrowd"] = 1
    path = root / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": SHAPE_CATEGORIES}))
    return path, image_dir


def tiny_config_dict(tmp_path: Path, *, val: bool = True, detector: str = "fcos", max_iter: int = 3,
                     output: str = "run", num_images: int = 8) -> dict[str, Any]:
    """A training configuration over a fresh 64 px shapes data set under ``tmp_path / "data"``."""
    data_root = tmp_path / "data"
    train_json, images = make_shapes_coco(data_root, split="train", num_images=num_images)
    data: dict[str, Any] = {"train_annotations": str(train_json), "train_images": str(images)}
    if val:
        val_json, _ = make_shapes_coco(data_root, split="val", num_images=4, seed=1, crowd=False)
        data.update(val_annotations=str(val_json), val_images=str(images))
    return {
        "model": {"detector": detector, "backbone": "tiny", "min_size": 64, "max_size": 64},
        "data": data,
        "augment": {"hflip": 0.5, "scale_range": [0.8, 1.2], "brightness": 0.2, "contrast": 0.2, "saturation": 0.2},
        "optim": {"name": "sgd", "lr": 0.01, "clip_grad_norm": 10.0},
        "schedule": {"max_iter": max_iter, "warmup_iters": 1},
        "train": {"output_dir": str(tmp_path / output), "batch_size": 2, "device": "cpu", "seed": 0,
                  "eval_batch_size": 4},
    }


def tiny_training(tmp_path: Path, *, hooks=(), max_iter: int = 3, **options: Any):  # noqa: ANN001, ANN201
    """Train the tiny FCOS for ``max_iter`` steps with a validation set; return ``(TrainResult, TrainConfig)``."""
    from curation_core.engine.config import config_from_dict
    from curation_core.engine.trainer import train

    config = config_from_dict(tiny_config_dict(tmp_path, max_iter=max_iter, **options))
    return train(config, hooks=hooks), config


def with_sections(raw: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the fields of ``sections`` merged into its sections (a new dict; ``raw`` is kept)."""
    return {**raw, **{name: {**raw.get(name, {}), **values} for name, values in sections.items()}}


def stop_at(iteration: int):  # noqa: ANN201
    """A hook that asks the trainer to stop (checkpoint, then ``TrainingInterrupted``) after ``iteration``."""
    from curation_core.engine.hooks import Hook

    class StopAt(Hook):
        def after_step(self) -> None:
            if self.trainer.iter == iteration:
                self.trainer.request_stop()

    return StopAt()
