"""Checkpoints (verified loading) and inference: load_detector, predict, predict_dataset, evaluation."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fixtures import tiny_config_dict

from components.evaluate_model import evaluate_model
from curation_core.coco import load_coco, load_detections
from curation_core.engine.checkpoint import FORMAT_NAME, load_checkpoint, save_checkpoint
from curation_core.engine.config import config_from_dict
from curation_core.engine.data import load_image
from curation_core.engine.predict import evaluate_checkpoint, load_detector, predict_dataset
from curation_core.engine.trainer import train
from curation_core.errors import CheckpointError
from curation_core.evaluation import evaluate_detections


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("trained")
    raw = tiny_config_dict(tmp, max_iter=2)
    result = train(config_from_dict(raw))
    return result, raw


def test_checkpoint_holds_everything_needed_to_resume(trained) -> None:
    result, raw = trained
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint["format"] == FORMAT_NAME and checkpoint["format_version"] == 1
    assert checkpoint["model_name"] == "fcos/tiny" and checkpoint["iteration"] == 2
    assert checkpoint["category_ids"] == [3, 5, 9] and checkpoint["category_names"] == ["disc", "square", "triangle"]
    assert checkpoint["sampler"] == {"seed": 0, "batch_size": 2, "num_samples": 8, "next_batch": 2}
    assert checkpoint["config"] == config_from_dict(raw).to_dict()
    assert {"optimizer", "scaler", "scheduler", "rng", "history"} <= set(checkpoint)


def test_truncated_corrupt_and_foreign_files_are_refused(trained, tmp_path: Path) -> None:
    result, _ = trained
    data = result.checkpoint.read_bytes()
    for name, content in (("truncated.pt", data[: len(data) // 2]), ("tail.pt", data[:-100]),
                          ("garbage.pt", b"\x00" * 64), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name}: corrupt, truncated or not a safe checkpoint \("):
            load_checkpoint(tmp_path / name)
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match=r"state_dict\.pt: not a DetCurate checkpoint"):
        load_checkpoint(tmp_path / "state_dict.pt")
    (tmp_path / "code.pt").write_bytes(pickle.dumps(Path("x")))  # a pickle that would construct a class
    with pytest.raises(CheckpointError, match=r"code\.pt: corrupt, truncated or not a safe checkpoint"):
        load_checkpoint(tmp_path / "code.pt")
    payload = load_checkpoint(result.checkpoint)
    save_checkpoint(tmp_path / "future.pt", {**payload, "format_version": 99})
    with pytest.raises(CheckpointError, match=r"checkpoint format version 99; this version of DetCurate reads version 1"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"format": FORMAT_NAME, "format_version": 1, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt: checkpoint lacks model_name, iteration, config"):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint file does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_of_another_model_are_refused(trained, tmp_path: Path) -> None:
    result, _ = trained
    payload = load_checkpoint(result.checkpoint)
    payload["config"]["model"]["backbone"] = "small"  # claims another backbone than its weights
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: weights do not fit model fcos/tiny"):
        load_detector(tmp_path / "mismatch.pt")
    payload["config"]["model"]["detector"] = "yolo"
    torch.save(payload, tmp_path / "badconfig.pt")
    with pytest.raises(CheckpointError, match=r"badconfig\.pt \(stored config\): model\.detector: invalid value 'yolo'"):
        load_detector(tmp_path / "badconfig.pt")


def test_predict_returns_boxes_scores_and_category_ids(trained) -> None:
    result, raw = trained
    detector = load_detector(result.checkpoint)
    assert not detector.model.training and detector.category_ids == [3, 5, 9]
    image = load_image(Path(raw["data"]["val_images"]) / "val_0.png")
    outputs = detector.predict([image, np.zeros((30, 50, 3), dtype=np.uint8)])
    assert len(outputs) == 2
    for out, (height, width) in zip(outputs, [(64, 64), (30, 50)], strict=True):
        assert out["boxes"].dtype == np.float32 and out["boxes"].shape[1] == 4
        assert out["scores"].shape == out["labels"].shape == (len(out["boxes"]),)
        assert set(out["labels"].tolist()) <= {3, 5, 9}
        assert (out["boxes"][:, 2] <= width + 1e-3).all() and (out["boxes"][:, 3] <= height + 1e-3).all()
        assert (np.diff(out["scores"]) <= 1e-6).all()  # sorted by score, highest first
    assert detector.predict([]) == []
    with pytest.raises(ValueError, match=r"expects uint8 \(H, W, 3\) RGB arrays; got float64 of shape \(4, 4, 3\) at image 1"):
        detector.predict([image, np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match=r"got uint8 of shape \(4, 4\) at image 0"):
        detector.predict([np.zeros((4, 4), dtype=np.uint8)])


def test_dataset_predictions_are_valid_coco_results_and_match_the_trainer(trained, tmp_path: Path) -> None:
    result, raw = trained
    gt = load_coco(raw["data"]["val_annotations"])
    detector = load_detector(result.checkpoint)
    detections = predict_dataset(detector, gt, raw["data"]["val_images"], batch_size=3)
    (tmp_path / "dt.json").write_text(json.dumps(detections))
    assert load_detections(tmp_path / "dt.json", gt) == detections  # validated records
    stats, again = evaluate_checkpoint(result.checkpoint, raw["data"]["val_annotations"], raw["data"]["val_images"],
                                       batch_size=3)
    assert again == detections and stats == evaluate_detections(gt, detections)
    assert stats.stats == pytest.approx(result.final_stats.stats)  # the trainer's final evaluation


def test_evaluate_model_writes_the_report_atomically(trained, tmp_path: Path) -> None:
    result, raw = trained
    stats = evaluate_model(str(result.checkpoint), raw["data"]["val_annotations"], raw["data"]["val_images"],
                           out_json=str(tmp_path / "r" / "report.json"), detections_json=str(tmp_path / "dt.json"))
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["stats"] == list(stats.stats) and report["checkpoint"] == str(result.checkpoint)
    assert isinstance(json.loads((tmp_path / "dt.json").read_text()), list)


def test_evaluation_on_other_categories_is_refused(trained, tmp_path: Path) -> None:
    result, raw = trained
    coco = json.loads(Path(raw["data"]["val_annotations"]).read_text())
    coco["categories"].append({"id": 11, "name": "star"})
    path = tmp_path / "more.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(CheckpointError, match=r"more\.json: categories differ from those of checkpoint .*only in the "
                                              r"checkpoint: \[\]; only in the data: \[\(11, 'star'\)\]"):
        evaluate_checkpoint(result.checkpoint, path, raw["data"]["val_images"])
    assert not (tmp_path / "report.json").exists()
