"""Deduplication on planted duplicates: exact (pixel hash) and near (embedding distance)."""

from __future__ import annotations

import numpy as np
import pytest

from curation_core.offline.dedup import exact_duplicates, near_duplicates, pixel_hash
from curation_core.offline.embeddings import detection_embeddings, l2_normalise


def test_pixel_hash_sees_pixels_not_files(tmp_path) -> None:
    from PIL import Image

    from curation_core.engine.data import load_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png", compress_level=1)
    Image.fromarray(image).save(tmp_path / "b.png", compress_level=9)
    other = image.copy()
    other[0, 0, 0] ^= 1
    Image.fromarray(other).save(tmp_path / "c.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    a, b, c = (pixel_hash(load_image(tmp_path / f"{n}.png")) for n in "abc")
    assert a == b != c
    assert pixel_hash(image) != pixel_hash(image.reshape(16, 48, 1))  # same bytes, other shape


def test_exact_duplicates_keep_the_best_annotated() -> None:
    hashes = ["x", "y", "x", "z", "x", "y"]
    found = exact_duplicates(hashes, priority=[0, 1, 3, 0, 3, 1])
    # group x = {0, 2, 4}: 2 and 4 tie on 3 annotations, the lower index 2 is kept; group y = {1, 5}: 1 kept
    assert [(d.index, d.of) for d in found] == [(0, 2), (4, 2), (5, 1)]
    assert exact_duplicates(["a", "b"]) == []


def test_near_duplicates_find_planted_pairs_transitively() -> None:
    rng = np.random.default_rng(0)
    base = l2_normalise(rng.normal(size=(10, 32)))
    planted = l2_normalise(base[[3, 7]] + 0.01 * rng.normal(size=(2, 32)))  # 10 ~ 3, 11 ~ 7
    chain = l2_normalise(planted[:1] + 0.01 * rng.normal(size=(1, 32)))  # 12 ~ 10 ~ 3
    x = np.concatenate([base, planted, chain])
    found = near_duplicates(x, threshold=0.01)
    assert sorted((d.index, d.of) for d in found) == [(10, 3), (11, 7), (12, 3)]
    assert all(0.0 <= d.distance < 0.01 for d in found)
    assert near_duplicates(x, threshold=0.0) == []
    # brute force: every pair within the threshold is in one group
    cos = 1 - x @ x.T
    close = {(i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if cos[i, j] <= 0.01}
    group = {d.index: d.of for d in found}
    assert all(group.get(i, i) == group.get(j, j) for i, j in close)


def test_near_duplicates_bad_threshold() -> None:
    with pytest.raises(ValueError, match=r"near_duplicates\(threshold=\) expects a cosine distance in \[0, 2\]"):
        near_duplicates(np.eye(3), threshold=3.0)


def test_detection_embeddings_of_identical_detections_coincide() -> None:
    from curation_core.coco import dataset_from_dict

    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in (1, 2, 3)]
    ds = dataset_from_dict({"images": images, "annotations": [], "categories": [{"id": 5, "name": "a"},
                                                                                 {"id": 6, "name": "b"}]})
    dets = [{"image_id": i, "category_id": c, "bbox": [0, 0, 2, 2], "score": s}
            for i, c, s in [(1, 5, 0.9), (2, 5, 0.9), (3, 6, 0.4)]]
    e = detection_embeddings(ds, dets)
    assert e.shape == (3, 4)
    np.testing.assert_allclose(e[0], e[1])
    assert [(d.index, d.of) for d in near_duplicates(e, threshold=1e-9)] == [(1, 0)]
