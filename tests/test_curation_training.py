"""Curated training end to end: every method trains, the three detectors, exact resume, bad configs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from engine_fixtures import stop_at, tiny_config_dict, with_sections

from components.train import train_config
from curation_core.engine.checkpoint import load_checkpoint
from curation_core.engine.config import config_from_dict
from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import TrainingInterrupted, train
from curation_core.errors import CheckpointError, ConfigError

_with = with_sections
StopAt = stop_at


class Batches(Hook):
    """Records the image ids and stream positions each step trains on."""

    def __init__(self) -> None:
        self.steps: list[list[tuple[int, int]]] = []

    def filter_batch(self, images, targets):  # noqa: ANN001, ANN201
        self.steps.append([(int(t["image_id"]), int(t["position"])) for t in targets])
        return images, targets


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A teacher checkpoint per detector, trained 2 steps on the tiny shapes set."""
    out = {}
    for detector in ("fcos", "retinanet", "faster_rcnn"):
        root = tmp_path_factory.mktemp(f"teacher_{detector}")
        raw = tiny_config_dict(root, val=False, detector=detector, max_iter=2, output="teacher")
        out[detector] = train(config_from_dict(raw)).checkpoint
    return out


def _curated(tmp_path: Path, teacher: Path | None, *, detector: str = "fcos", max_iter: int = 3,
             **curation: Any) -> dict[str, Any]:
    raw = tiny_config_dict(tmp_path, val=False, detector=detector, max_iter=max_iter)
    section = {"super_batch": 6, **curation}
    if teacher is not None:
        section["teacher"] = str(teacher)
    return _with(raw, curation=section, train={"deterministic": True, "checkpoint_every": 1})


def _log(run: Path) -> list[dict[str, str]]:
    with (run / "selections.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", ["uniform", "loss", "loss_learnability", "image_ap", "detgain"])
def test_every_method_trains_on_b_of_each_super_batch_and_logs_its_choice(tmp_path: Path, teachers: dict[str, Path],
                                                                          method: str) -> None:
    config = config_from_dict(_curated(tmp_path, teachers["fcos"], method=method))
    recorder = Batches()
    result = train_config(config, hooks=[recorder])
    assert result.iterations == 3 and all(len(step) == 2 for step in recorder.steps)
    rows = _log(result.output_dir)
    assert len(rows) == 3 * 6 and {r["method"] for r in rows} == {method}
    for step, trained in enumerate(recorder.steps, start=1):
        scored = [r for r in rows if int(r["iteration"]) == step]
        assert [int(r["position"]) for r in scored] == list(range((step - 1) * 6, step * 6))  # stream positions
        picked = {(int(r["image_id"]), int(r["position"])) for r in scored if r["picked"] == "1"}
        assert picked == set(trained)
        if method != "detgain" or step > 1:  # (DetGain's first super-batch only fills the states)
            best = max(float(r["score"]) for r in scored)
            assert any(float(r["score"]) == best for r in scored if r["picked"] == "1")
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint["curation"]["pending"] == [] and checkpoint["config"]["curation"]["method"] == method
    assert result.scored_images_per_s > 0 and result.images_per_s > 0


@pytest.mark.parametrize("detector", ["retinanet", "faster_rcnn"])
@pytest.mark.parametrize("method", ["loss_learnability", "detgain"])
def test_the_other_detectors_train_curated(tmp_path: Path, teachers: dict[str, Path], detector: str, method: str) -> None:
    config = config_from_dict(_curated(tmp_path, teachers[detector], detector=detector, method=method, max_iter=2))
    result = train_config(config)
    assert result.iterations == 2 and len(_log(result.output_dir)) == 12


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    sa, sb = ca["curation"]["selector"], cb["curation"]["selector"]
    assert sa["events"] == sb["events"] and sa["selector"].keys() == sb["selector"].keys()
    for key in sa["selector"]:
        assert torch.equal(sa["selector"][key], sb["selector"][key]), key
    assert ca["curation"]["pending"] == cb["curation"]["pending"]
    assert _log(a) == _log(b)


@pytest.mark.parametrize(("options", "stop"), [
    ({"method": "detgain", "estimator": "empirical"}, 2),
    ({"method": "detgain", "estimator": "exact", "score_every": 2, "super_batch": 8}, 3),  # stop inside an event
    ({"method": "loss", "rule": "sample", "temperature": 0.5, "warmup_iters": 1}, 2),
])
def test_stop_and_resume_continues_bit_for_bit(tmp_path: Path, teachers: dict[str, Path], options: dict[str, Any],
                                               stop: int) -> None:
    raw = _curated(tmp_path, teachers["fcos"], max_iter=4, **options)
    straight = train_config(config_from_dict(_with(raw, train={"output_dir": str(tmp_path / "a")})))
    config = config_from_dict(_with(raw, train={"output_dir": str(tmp_path / "b")}))
    with pytest.raises(TrainingInterrupted):
        train_config(config, hooks=[StopAt(stop)])
    rows = _log(tmp_path / "b")
    assert max(int(r["iteration"]) for r in rows) <= stop
    train_config(config, resume=True)
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    assert straight.iterations == 4


def test_a_log_beyond_the_checkpoint_is_cut_on_resume(tmp_path: Path, teachers: dict[str, Path]) -> None:
    raw = _with(_curated(tmp_path, teachers["fcos"], max_iter=3, method="uniform"), train={"checkpoint_every": 0})
    config = config_from_dict(raw)
    with pytest.raises(TrainingInterrupted):
        train_config(config, hooks=[StopAt(2)])
    log = tmp_path / "run" / "selections.csv"
    with log.open("a") as handle:  # rows of a step after the checkpoint, as a killed run may leave
        handle.write("3,99,100,0.5,1,uniform\n")
    result = train_config(config, resume=True)
    rows = _log(result.output_dir)
    assert [int(r["iteration"]) for r in rows].count(3) == 6 and "99" not in [r["position"] for r in rows]


@pytest.mark.parametrize(("section", "change", "message"), [
    ("curation", {"super_batch": 8}, r"curation\.super_batch=6 \(config: 8\).*resuming would mix two recipes"),
    ("augment", {"hflip": 0.0}, r"augment\.hflip=0\.5 \(config: 0\.0\)"),
    ("optim", {"lr": 0.5}, r"optim\.lr=0\.01 \(config: 0\.5\)"),
])
def test_resuming_with_another_recipe_is_refused(tmp_path: Path, teachers: dict[str, Path], section: str,
                                                 change: dict[str, Any], message: str) -> None:
    raw = _curated(tmp_path, teachers["fcos"], max_iter=2, method="uniform")
    with pytest.raises(TrainingInterrupted):
        train_config(config_from_dict(raw), hooks=[StopAt(1)])
    with pytest.raises(CheckpointError, match=message):
        train_config(config_from_dict(_with(raw, **{section: change})), resume=True)


def test_selection_changes_what_is_trained_but_not_the_steps(tmp_path: Path, teachers: dict[str, Path]) -> None:
    plain, curated = Batches(), Batches()
    train_config(config_from_dict(_with(tiny_config_dict(tmp_path / "p", val=False, max_iter=3),
                                        train={"output_dir": str(tmp_path / "plain")})), hooks=[plain])
    train_config(config_from_dict(_curated(tmp_path / "c", teachers["fcos"], method="loss")), hooks=[curated])
    assert [len(s) for s in plain.steps] == [len(s) for s in curated.steps] == [2, 2, 2]
    assert plain.steps[0] == [(int(i), p) for i, p in plain.steps[0]]


def test_selection_stops_after_stop_iter(tmp_path: Path, teachers: dict[str, Path]) -> None:
    recorder = Batches()
    result = train_config(config_from_dict(_curated(tmp_path, teachers["fcos"], method="detgain", max_iter=4,
                                                    warmup_iters=1, stop_iter=3)), hooks=[recorder])
    rows = _log(result.output_dir)
    assert sorted({int(r["iteration"]) for r in rows}) == [2, 3]  # step 1 warm-up, 4 after the stop: unscored
    for step in (1, 4):  # plain steps train on the first b images of their super-batch
        assert [p for _, p in recorder.steps[step - 1]] == [(step - 1) * 6, (step - 1) * 6 + 1]
    for step in (2, 3):
        picked = {(int(r["image_id"]), int(r["position"])) for r in rows if int(r["iteration"]) == step
                  and r["picked"] == "1"}
        assert picked == set(recorder.steps[step - 1])


def test_bad_curation_configs_are_one_line_errors(tmp_path: Path, teachers: dict[str, Path]) -> None:
    raw = tiny_config_dict(tmp_path, val=False)
    cases = [
        ({"method": "best"}, r"curation\.method: invalid value 'best'; valid choices: none, uniform, loss, "
                             r"loss_learnability, image_ap, detgain"),
        ({"method": "detgain"}, r"curation: method 'detgain' needs a teacher"),
        ({"method": "loss", "super_batch": 1}, r"curation\.super_batch \(1\) must be >= train\.batch_size"),
        ({"method": "detgain", "teacher": "t.pt", "estimator": "exact", "decay": 0.9}, r"exact' needs equal image weights"),
        ({"estimator": "median"}, r"curation\.estimator: invalid value 'median'; valid choices: exact, uniform, empirical, envelope"),
        ({"rule": "best"}, r"curation\.rule: invalid value 'best'; valid choices: top, sample"),
        ({"warmup_iters": 5, "stop_iter": 5}, r"curation: stop_iter \(5\) must be > warmup_iters \(5\)"),
        ({"stop_iter": 0}, r"curation\.stop_iter"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(_with(raw, curation=section))
    with pytest.raises(ConfigError, match=r"needs a batch selector"):
        train(config_from_dict(_curated(tmp_path, teachers["fcos"], method="uniform")))
    with pytest.raises(ConfigError, match=r"models:/demo@teacher is a model registry URI; it needs MLflow"):
        train_config(config_from_dict(_with(_curated(tmp_path, None, method="detgain"),
                                                curation={"teacher": "models:/demo@teacher"})))


def test_a_teacher_of_other_categories_is_refused(tmp_path: Path, teachers: dict[str, Path]) -> None:
    import json

    raw = _curated(tmp_path, teachers["fcos"], method="detgain")
    path = Path(raw["data"]["train_annotations"])
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "ball"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"curation.teacher .*categories differ"):
        train_config(config_from_dict(raw))
    with pytest.raises(CheckpointError, match=r"does not exist"):
        train_config(config_from_dict(_with(raw, curation={"teacher": str(tmp_path / "missing.pt")})))


def test_student_batchnorm_modes_leave_the_buffers_alone() -> None:
    from curation_core.curation.curator import scoring_mode
    from curation_core.engine.config import ModelConfig
    from curation_core.engine.models import build_detector

    model = build_detector(ModelConfig(detector="fcos", backbone="nano", min_size=64, max_size=64), num_categories=3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    outs = {}
    for mode in ("eval", "batch"):
        with scoring_mode(model, mode), torch.no_grad():
            outs[mode] = model(images)
        assert model.training
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), (mode, key)
    assert not np.allclose(outs["eval"][0]["scores"][:5].numpy(), outs["batch"][0]["scores"][:5].numpy()) or \
        outs["eval"][0]["scores"].numel() != outs["batch"][0]["scores"].numel()


def test_map_detections_moves_clips_and_drops_boxes() -> None:
    from curation_core.curation.curator import map_detections
    from curation_core.engine.data import flip_view, make_view

    dets = {"boxes": torch.tensor([[10.0, 10, 30, 20], [60, 0, 64, 8]]), "scores": torch.tensor([0.9, 0.5]),
            "labels": torch.tensor([1, 2])}
    view = flip_view(make_view(2.0, 2.0, -40.0, 0.0), 64.0)  # zoom x2, shift 40 px left, then mirror a 64 px view
    out = map_detections(dets, view, width=64, height=64)
    # box 0: x 10..30 -> -20..20 -> clipped 0..20 -> mirrored 44..64; y 20..40. Box 1: x 80..88, outside
    torch.testing.assert_close(out["boxes"], torch.tensor([[44.0, 20, 64, 40]]))
    assert out["labels"].tolist() == [1] and out["scores"].tolist() == [pytest.approx(0.9)]


def test_the_teacher_cache_serves_identity_views_exactly_and_is_used(tmp_path: Path, teachers: dict[str, Path]) -> None:
    from curation_core.curation.curator import build_curator
    from curation_core.engine.data import DetectionDataset, TrainTransform, collate

    raw = _with(_curated(tmp_path, teachers["fcos"], method="detgain", teacher_cache=True),
                augment={"hflip": 0.0, "scale_range": [1.0, 1.0], "brightness": 0.0, "contrast": 0.0, "saturation": 0.0})
    config = config_from_dict(raw)
    from curation_core.coco import load_coco

    gt = load_coco(config.data.train_annotations)
    ids, names = [c["id"] for c in gt.categories], [c["name"] for c in gt.categories]
    cached = build_curator(config, ids, names, torch.device("cpu"))
    direct = build_curator(config_from_dict(_with(raw, curation={"teacher_cache": False})), ids, names,
                           torch.device("cpu"))
    assert cached.teacher_cache is not None and direct.teacher_cache is None and len(cached.teacher_cache) == 8
    transform = TrainTransform(config.augment, config.model.min_size, config.model.max_size)
    dataset = DetectionDataset(gt, config.data.train_images, category_ids=ids, transform=transform)
    images, targets = collate([dataset[(i, 10 + i)] for i in range(6)])
    student = cached.teacher  # any model: only the teacher's outputs are compared
    out_cached, seconds = cached._forward(student, images, targets)
    out_direct, _ = direct._forward(student, images, targets)
    for a, b in zip(out_cached["teacher_detections"], out_direct["teacher_detections"], strict=True):
        assert a["labels"].tolist() == b["labels"].tolist()
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match=r"teacher_cache applies to the teacher's detections"):
        config_from_dict(_with(raw, curation={"method": "loss_learnability"}))
