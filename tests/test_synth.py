"""The synthetic data set: deterministic bytes, valid COCO, the promised statistics, clean errors."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.synth import synthesize
from curation_core import synth_shapes as shapes
from curation_core.coco import load_coco
from curation_core.errors import ConfigError
from curation_core.synth import (
    CATEGORIES,
    LARGE_AREA,
    MIN_VISIBLE_FRACTION,
    SMALL_AREA,
    SynthConfig,
    encode_png,
    generate_dataset,
    generate_split,
    image_rng,
    render_image,
)
from pipelines.cli import main

SMALL = {"train": 10, "val": 4, "size": 64, "seed": 3, "imbalance": 10.0}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _render(n: int, **overrides) -> list:
    config = SynthConfig(**overrides)
    return [render_image(config, image_rng(config.seed, "train", i)) for i in range(n)]


@pytest.fixture(scope="module")
def sample() -> list:
    """400 images of the default configuration (128 px, imbalance 10)."""
    return _render(400)


@pytest.fixture(scope="module")
def balanced() -> list:
    """300 images with equally frequent classes."""
    return _render(300, size=96, imbalance=1.0)


# ----------------------------------------------------------------------------------------------
# Files


def test_same_arguments_give_the_same_bytes(tmp_path: Path) -> None:
    first = synthesize(tmp_path / "a", **SMALL)
    synthesize(tmp_path / "b", **SMALL)
    hashes_a, hashes_b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert hashes_a == hashes_b
    assert len([k for k in hashes_a if k.endswith(".png")]) == 14
    assert {"synth.json", "train/annotations.json", "val/annotations.json"} <= set(hashes_a)
    assert first["files"]["train"] == {"written": 10, "unchanged": 0, "removed": 0}
    synthesize(tmp_path / "c", **{**SMALL, "seed": 4})
    hashes_c = _hashes(tmp_path / "c")
    assert all(hashes_c[k] != hashes_a[k] for k in hashes_a if k.endswith(".png"))


def test_an_image_depends_on_seed_split_and_index_only(tmp_path: Path) -> None:
    synthesize(tmp_path / "few", **{**SMALL, "train": 3})
    synthesize(tmp_path / "many", **SMALL)
    few, many = _hashes(tmp_path / "few"), _hashes(tmp_path / "many")
    for i in (1, 2, 3):
        assert few[f"train/images/{i:06d}.png"] == many[f"train/images/{i:06d}.png"]
    assert few["val/images/000001.png"] != few["train/images/000001.png"]


def test_rerun_resumes_and_removes_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "d"
    synthesize(out, **SMALL)
    reference = _hashes(out)
    images = out / "train" / "images"
    (images / "000002.png").unlink()
    (images / "000005.png").write_bytes(b"truncated")
    (images / "000077.png").write_bytes(b"from a larger earlier run")
    (images / ".000003.png.abc.tmp").write_bytes(b"left by a killed write")
    (out / "val" / "annotations.json").unlink()
    summary = synthesize(out, **SMALL)
    assert summary["files"]["train"] == {"written": 2, "unchanged": 8, "removed": 2}
    assert summary["files"]["val"] == {"written": 0, "unchanged": 4, "removed": 0}
    assert _hashes(out) == reference


def test_annotation_files_are_valid_coco_with_their_images(tmp_path: Path) -> None:
    config = SynthConfig(train=40, val=10, size=128, seed=1)
    summary = generate_dataset(tmp_path, config)
    for split, n in (("train", 40), ("val", 10)):
        dataset = load_coco(tmp_path / split / "annotations.json", image_root=tmp_path / split / "images",
                            box_tolerance=0.0)
        assert len(dataset.images) == n
        assert [c["name"] for c in dataset.categories] == list(CATEGORIES)
        assert all(img["file_name"] == f"{img['id']:06d}.png" for img in dataset.images)
        for ann in dataset.annotations:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
        written = json.loads((tmp_path / "synth.json").read_text())["splits"][split]
        assert written == summary["splits"][split]
        assert written["annotations"] == len(dataset.annotations)
        assert sum(written["per_category"].values()) == len(dataset.annotations)
        assert sum(written["area_ranges"].values()) == len(dataset.annotations)


@pytest.mark.parametrize("shape", [(64, 64, 3), (33, 70, 3), (1, 1, 3)])
def test_png_encoder_round_trips(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(image))) as decoded:
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), image)


# ----------------------------------------------------------------------------------------------
# Statistics of the rendered images


def test_every_class_occurs_with_the_requested_imbalance(sample: list) -> None:
    counts = np.bincount([a["category_id"] for r in sample for a in r.annotations], minlength=len(CATEGORIES) + 1)[1:]
    assert counts.min() > 0
    expected = SynthConfig().class_probabilities
    freq = counts / counts.sum()
    assert np.all(np.abs(freq - expected) < 4 * np.sqrt(expected * (1 - expected) / counts.sum()) + 0.01), freq
    assert 10.0 / 1.6 < counts[0] / counts[-1] < 10.0 * 1.6


def test_uniform_imbalance_gives_similar_counts(balanced: list) -> None:
    counts = np.bincount([a["category_id"] for r in balanced for a in r.annotations], minlength=len(CATEGORIES) + 1)[1:]
    assert counts.max() / counts.min() < 1.6, counts


def test_small_medium_and_large_objects_occur(sample: list) -> None:
    areas = np.array([a["area"] for r in sample for a in r.annotations])
    small, large = np.mean(areas < SMALL_AREA), np.mean(areas >= LARGE_AREA)
    assert 0.35 < small < 0.75 and 0.005 < large < 0.1 and 1.0 - small - large > 0.2


def test_background_only_images_and_a_heavy_tail(sample: list) -> None:
    per_image = np.array([len(r.annotations) for r in sample])
    assert 0.04 < np.mean(per_image == 0) < 0.13
    assert per_image.max() >= 12 and 2.5 < per_image.mean() < 5.0


def test_occlusion_leaves_every_object_at_least_half_visible(sample: list) -> None:
    for r in sample:
        size = r.image.shape[0]
        for i, ann in enumerate(r.annotations, start=1):
            visible = r.labels == i
            assert ann["area"] == np.count_nonzero(visible)
            assert ann["area"] >= MIN_VISIBLE_FRACTION * ann["drawn_area"]
            x, y, w, h = (int(v) for v in ann["bbox"])
            assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
            rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
            assert x <= cols[0] and cols[-1] < x + w and y <= rows[0] and rows[-1] < y + h
            if ann["area"] == ann["drawn_area"]:  # not occluded: the box is tight on the visible pixels
                assert [x, y, w, h] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
    occluded = sum(a["area"] < a["drawn_area"] for r in sample for a in r.annotations)
    assert occluded > 50  # occlusion does happen


def test_clutter_is_present_and_unannotated(sample: list) -> None:
    kinds = [c["kind"] for r in sample for c in r.clutter]
    assert len(kinds) > 0.8 * len(sample) and set(kinds) == set(shapes.CLUTTER)
    visible = sum(np.count_nonzero(r.labels < 0) > 0 for r in sample)
    assert visible > 0.5 * len(sample)


def test_colour_carries_no_class_information(balanced: list) -> None:
    """Per-object mean RGB: class means all near the middle grey, nearest class mean at chance level."""
    colours, classes = [], []
    for r in balanced:
        for i, ann in enumerate(r.annotations, start=1):
            colours.append(r.image[r.labels == i].mean(axis=0))
            classes.append(ann["category_id"] - 1)
    colours, classes = np.array(colours), np.array(classes)
    means = np.array([colours[classes == k].mean(axis=0) for k in range(len(CATEGORIES))])
    assert np.abs(means - 127.5).max() < 20, means.round(1)
    assert colours.std(axis=0).min() > 50  # colours do vary a lot within every class
    half = len(colours) // 2
    fit = np.array([colours[:half][classes[:half] == k].mean(axis=0) for k in range(len(CATEGORIES))])
    guess = np.argmin(((colours[half:, None, :] - fit[None]) ** 2).sum(-1), axis=1)
    assert np.mean(guess == classes[half:]) < 0.2  # chance is 1/8


@pytest.mark.parametrize("sampler", [shapes.disc, shapes.square, shapes.triangle, shapes.ring, shapes.cross,
                                     shapes.star, *shapes.CLUTTER.values()])
def test_shape_masks_have_their_stated_area(sampler) -> None:
    """Pixel count at radius 300 px matches ``unit_area`` (to 2 %: edge pixels); nothing lies outside the unit disc."""
    rng = np.random.default_rng(7)
    grid = (np.arange(-330, 330, dtype=np.float32) + 0.5) / 300.0
    u, v = grid[None, :], grid[:, None]
    for _ in range(3):
        shape = sampler(rng)
        mask = shape.mask(u, v)
        assert not np.any(mask & (u * u + v * v > 1.0)), shape.kind
        assert math.isclose(np.count_nonzero(mask) / 300.0**2, shape.unit_area, rel_tol=0.02), shape.kind


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(("field", "value", "match"), [
    ("train", 0, r"SynthConfig\(train=\) expects an integer >= 1; got 0"),
    ("val", -3, r"SynthConfig\(val=\) expects an integer >= 1; got -3"),
    ("train", 2.5, r"SynthConfig\(train=\) expects an integer >= 1; got 2.5"),
    ("size", 31, r"SynthConfig\(size=\) expects an integer in \[32, 4096\]; got 31"),
    ("size", 0, r"SynthConfig\(size=\) expects an integer in \[32, 4096\]; got 0"),
    ("imbalance", 0.5, r"SynthConfig\(imbalance=\) expects a number >= 1; got 0.5"),
    ("imbalance", float("nan"), r"SynthConfig\(imbalance=\) expects a number >= 1; got nan"),
    ("seed", -1, r"SynthConfig\(seed=\) expects an integer >= 0; got -1"),
    ("max_objects", -1, r"SynthConfig\(max_objects=\) expects an integer in \[0, 1000\]; got -1"),
    ("empty_fraction", 1.5, r"SynthConfig\(empty_fraction=\) expects a number in \[0, 1\]; got 1.5"),
])
def test_bad_parameters_raise_config_error(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SynthConfig(**{field: value})


def test_bad_split_arguments_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"generate_split\(split=\) expects one of \['test', 'train', 'val'\]"):
        generate_split(tmp_path, "holdout", 3, SynthConfig())
    with pytest.raises(ConfigError, match=r"generate_split\(n_images=\) expects an integer >= 1; got 0"):
        generate_split(tmp_path, "train", 0, SynthConfig())


def test_cli_writes_a_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", str(out), "--train", "4", "--val", "2", "--size", "64", "--seed", "5"])
    assert exit_info.value.code == 0
    assert "solid_disc" in capsys.readouterr().out
    assert len(list((out / "train" / "images").glob("*.png"))) == 4
    assert json.loads((out / "synth.json").read_text())["config"]["seed"] == 5


@pytest.mark.parametrize(("argv", "match"), [
    (["--size", "16"], "error: SynthConfig(size=) expects an integer in [32, 4096]; got 16."),
    (["--train", "0"], "error: SynthConfig(train=) expects an integer >= 1; got 0."),
    (["--imbalance", "0.2"], "error: SynthConfig(imbalance=) expects a number >= 1; got 0.2."),
])
def test_cli_exits_2_on_bad_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                       match: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", str(tmp_path / "x"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == match
    assert not (tmp_path / "x").exists()
