"""The curation manifest: format, data-set identity, and the weighted training stream that reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation_core.coco import dataset_from_dict
from curation_core.engine.data import TrainBatchSampler
from curation_core.errors import CheckpointError, DataError
from curation_core.offline.manifest import build_manifest, load_manifest, save_manifest


def _dataset(n: int = 4, *, first_id: int = 1):
    images = [{"id": first_id + i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(n)]
    return dataset_from_dict({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]},
                             source=f"set{first_id}.json")


def test_round_trip_and_identity(tmp_path) -> None:
    ds = _dataset()
    m = build_manifest(ds, np.array([0.0, 1.0, 2.5, 0.5]), [["duplicate of image 2"], [], ["rare"], []],
                       parameters={"threshold": 0.5}, summary={"kept": 3})
    save_manifest(m, tmp_path / "m.json")
    back = load_manifest(tmp_path / "m.json", ds)
    assert [e.keep for e in back.entries] == [False, True, True, True]
    np.testing.assert_array_equal(back.weights_for(ds), [0.0, 1.0, 2.5, 0.5])
    assert back.digest == m.digest and back.entries[0].reasons == ("duplicate of image 2",)
    with pytest.raises(DataError, match=r"^\S*m\.json: <manifest>: made for another data set .* not for set9\.json"):
        load_manifest(tmp_path / "m.json", _dataset(first_id=9))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda raw: raw.update(format="x"), r"<file>: not a curation manifest"),
    (lambda raw: raw["images"][1].update(weight=-1), r"image id=2: weight must be a finite number >= 0"),
    (lambda raw: raw["images"][1].update(keep=False), r"image id=2: keep must be true exactly when weight > 0"),
    (lambda raw: raw["images"].append(dict(raw["images"][0])), r"image id=1: listed more than once"),
    (lambda raw: [r.update(weight=0, keep=False) for r in raw["images"]], r"every image has weight 0"),
])
def test_malformed_manifests_are_one_line_errors(tmp_path, edit, message) -> None:
    ds = _dataset()
    save_manifest(build_manifest(ds, np.ones(4), [[]] * 4, parameters={}, summary={}), tmp_path / "m.json")
    raw = json.loads((tmp_path / "m.json").read_text())
    edit(raw)
    raw["dataset"]["num_images"] = len(raw["images"])
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=message) as info:
        load_manifest(tmp_path / "m.json", ds)
    assert "\n" not in str(info.value)


def test_unweighted_stream_is_unchanged() -> None:
    """Without weights every epoch is the permutation of (seed, 0, epoch), as before manifests existed."""
    sampler = TrainBatchSampler(5, 3, seed=7, start=0, stop=6)
    flat = [k for batch in sampler for k in batch]
    expected = np.concatenate([np.random.default_rng([7, 0, e]).permutation(5) for e in range(4)])[:18]
    assert [i for i, _ in flat] == expected.tolist() and [p for _, p in flat] == list(range(18))


def test_weights_set_the_sampling_frequencies() -> None:
    weights = np.array([0.0, 1.0, 2.5, 0.5, 1.0])
    sampler = TrainBatchSampler(5, 4, seed=3, start=0, stop=5000, weights=weights)
    drawn = np.array([i for batch in sampler for i, _ in batch])
    counts = np.bincount(drawn, minlength=5)
    assert counts[0] == 0  # dropped: never drawn
    frequency = counts / counts.sum()
    np.testing.assert_allclose(frequency, weights / weights.sum(), atol=0.01)
    # per epoch: each index appears floor(w) or ceil(w) times
    for epoch in range(20):
        per = np.bincount(sampler.order(epoch), minlength=5)
        assert np.all((per == np.floor(weights)) | (per == np.ceil(weights)))


def test_weighted_stream_is_a_function_of_seed_and_iteration() -> None:
    weights = np.array([0.2, 1.0, 3.7])
    full = list(TrainBatchSampler(3, 2, seed=1, start=0, stop=60, weights=weights))
    resumed = list(TrainBatchSampler(3, 2, seed=1, start=37, stop=60, weights=weights))
    assert resumed == full[37:]
    assert list(TrainBatchSampler(3, 2, seed=1, start=0, stop=60, weights=weights)) == full
    assert list(TrainBatchSampler(3, 2, seed=2, start=0, stop=60, weights=weights)) != full
    assert [p for b in full for _, p in b] == list(range(120))


def test_bad_weights() -> None:
    with pytest.raises(ValueError, match=r"TrainBatchSampler\(weights=\) expects 3 finite numbers >= 0, not all 0"):
        TrainBatchSampler(3, 2, seed=0, start=0, stop=1, weights=np.zeros(3))


@pytest.mark.slow
def test_training_reads_the_manifest(tmp_path) -> None:
    """data.manifest: dropped images never reach a step; the checkpoint refuses another manifest."""
    from engine_fixtures import tiny_config_dict, with_sections

    from curation_core.coco import load_coco
    from curation_core.engine.config import config_from_dict
    from curation_core.engine.hooks import Hook
    from curation_core.engine.trainer import train

    raw = tiny_config_dict(tmp_path, val=False, max_iter=4)
    gt = load_coco(raw["data"]["train_annotations"])
    weights = np.zeros(len(gt.images))
    weights[[1, 4]] = [1.0, 2.0]
    save_manifest(build_manifest(gt, weights, [[]] * len(gt.images), parameters={}, summary={}), tmp_path / "m.json")
    seen: list[int] = []

    class Record(Hook):
        def filter_batch(self, images, targets):
            seen.extend(int(t["image_id"]) for t in targets)
            return images, targets

    config = config_from_dict(with_sections(raw, data={"manifest": str(tmp_path / "m.json")}))
    train(config, hooks=[Record()])
    assert len(seen) == 8 and set(seen) <= {gt.images[1]["id"], gt.images[4]["id"]}
    other = weights.copy()
    other[2] = 1.0
    save_manifest(build_manifest(gt, other, [[]] * len(gt.images), parameters={}, summary={}), tmp_path / "m.json")
    longer = config_from_dict(with_sections(raw, data={"manifest": str(tmp_path / "m.json")},
                                            schedule={"max_iter": 6, "warmup_iters": 1}))
    with pytest.raises(CheckpointError, match="resuming would change the data order"):
        train(longer, resume=True)
    bad = config_from_dict(with_sections(raw, data={"manifest": str(tmp_path / "nope.json")},
                                         train={**raw["train"], "output_dir": str(tmp_path / "other")}))
    with pytest.raises(DataError, match=r"nope\.json: <file>: file does not exist"):
        train(bad)
