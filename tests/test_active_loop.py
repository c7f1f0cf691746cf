"""The active-learning rounds: noisy labels reach the dampened loss, resume after an interrupted round,
bad configurations are one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from curation_core.active.config import active_learning_config_from_dict
from curation_core.active.loop import LabelState, run_active_learning, write_labels
from curation_core.coco import load_coco
from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import TrainingInterrupted
from curation_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curation_core.synth import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("al_data")
    generate_dataset(out, SynthConfig(train=16, val=4, size=64, seed=1))
    return out


def _raw(data: Path, **fields: object) -> dict:
    raw = {"base": {"config": str(ROOT / "configs" / "demo_student.yaml"), "overrides": {
               "model.detector": "retinanet", "model.min_size": 64, "model.max_size": 64, "train.batch_size": 4,
               "schedule.warmup_iters": 1, "train.num_threads": 1, "train.checkpoint_every": 1}},
           "train_annotations": str(data / "train" / "annotations.json"), "train_images": str(data / "train" / "images"),
           "val_annotations": str(data / "val" / "annotations.json"), "val_images": str(data / "val" / "images"),
           "initial_images": 6, "rounds": 1, "budget": 4, "initial_iters": 2, "round_iters": 2,
           "pool_score_thresh": 0.0, "noisy_score_thresh": 0.0}
    return {**raw, **fields}


def test_noisy_labels_are_flagged_unverified_and_dampen_the_loss(data: Path, tmp_path: Path) -> None:
    from curation_core.engine.config import load_config
    from curation_core.engine.data import DetectionDataset
    from curation_core.engine.models import build_detector

    gt = load_coco(data / "train" / "annotations.json")
    image = next(img for img in gt.images if gt.annotations_by_image[img["id"]])
    first = gt.annotations_by_image[image["id"]][0]
    x, y, w, h = first["bbox"]
    state = LabelState(verified={image["id"]: [{"box": [x, y, x + w, y + h], "category_id": first["category_id"],
                                                "gt_id": first["id"]}]},
                       noisy={image["id"]: [{"box": [1.0, 2.0, 30.0, 40.0], "category_id": gt.category_ids[0],
                                             "score": 0.4}]}, cost=1)
    write_labels(gt, state, tmp_path / "labels.json")
    labels = load_coco(tmp_path / "labels.json")
    assert [img["id"] for img in labels.images] == [image["id"]]
    dataset = DetectionDataset(labels, data / "train" / "images", category_ids=gt.category_ids)
    _, target = dataset[0]
    by_id = {a["id"]: a for a in labels.annotations}
    # ann_ids map the training boxes back to their records: the noisy one carries "unverified": 1
    assert [bool(by_id[int(i)].get("unverified", 0)) for i in target["ann_ids"]] == target["unverified"].tolist()
    assert target["unverified"].tolist() == [False, True]

    only_noisy = {k: (v[1:] if v.ndim and k not in ("image_id", "position", "view") else v) for k, v in target.items()}
    losses = {}
    for weight in (1.0, 0.5):
        model_config = load_config(ROOT / "configs" / "demo_student.yaml",
                                   ["model.detector=retinanet", "model.min_size=64", "model.max_size=64",
                                    f"model.unverified_weight={weight}"]).model
        torch.manual_seed(0)
        model = build_detector(model_config, num_categories=len(gt.category_ids)).train()
        losses[weight] = {k: float(v.detach()) for k, v in model([dataset[0][0]], [only_noisy]).items()}
    # one noisy box: its anchors' regression loss scales by lambda_d (the normaliser is not weighted)
    assert losses[0.5]["bbox_regression"] == pytest.approx(0.5 * losses[1.0]["bbox_regression"], rel=1e-5)
    assert losses[0.5]["classification"] < losses[1.0]["classification"]


class _StopAfterOneStep(Hook):
    def after_step(self) -> None:
        if self.trainer.iter == 1:
            self.trainer.request_stop()


@pytest.mark.slow
def test_a_run_interrupted_inside_a_round_resumes_to_the_same_result(data: Path, tmp_path: Path) -> None:
    config = active_learning_config_from_dict(_raw(data))
    whole = run_active_learning(config, tmp_path / "a")
    assert [r["round"] for r in whole.rounds] == [0, 1]
    first, second = whole.rounds
    assert second["boxes"] == first["boxes"] + second["queried"] and second["queried"] == 4
    assert second["objects"] + second["background"] + second["duplicates"] == 4

    shutil.copytree(tmp_path / "a" / "round_0", tmp_path / "b" / "round_0")  # the same initial detector
    with pytest.raises(TrainingInterrupted):
        run_active_learning(config, tmp_path / "b", hooks=lambda r: [_StopAfterOneStep()] if r == 1 else [])
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0]  # round 1 did not complete
    resumed = run_active_learning(config, tmp_path / "b")
    assert resumed.points == whole.points
    plans = [json.loads((tmp_path / run / "round_1" / "plan.json").read_text()) for run in ("a", "b")]
    assert plans[0] == plans[1]
    weights = [torch.load(tmp_path / run / "round_1" / "checkpoint.pt", weights_only=False)["model"] for run in "ab"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    # a folder of another configuration is refused, naming the field
    with pytest.raises(ConfigError, match=r"budget: .* holds a run of another configuration"):
        run_active_learning(active_learning_config_from_dict(_raw(data, budget=5)), tmp_path / "a")
    # box DetGain: the learnability of the pool boxes under a teacher (here the initial detector itself)
    shutil.copytree(tmp_path / "a" / "round_0", tmp_path / "d" / "round_0")
    teacher = str(tmp_path / "a" / "round_0" / "checkpoint.pt")
    detgain = run_active_learning(active_learning_config_from_dict(_raw(data, measure="detgain", teacher=teacher)),
                                  tmp_path / "d")
    assert detgain.rounds[1]["queried"] == min(4, detgain.rounds[1]["pool"])
    # a round-0 folder serves runs that differ in what round 0 does not depend on, not in the rest
    shutil.copytree(tmp_path / "a" / "round_0", tmp_path / "c" / "round_0")
    with pytest.raises(ConfigError, match=r"seed: .*round_0 holds a run of another configuration \(seed is 0 there\)"):
        run_active_learning(active_learning_config_from_dict(_raw(data, seed=1)), tmp_path / "c")


def test_write_labels_flags_only_box_joined_images_incomplete(data: Path, tmp_path: Path) -> None:
    gt = load_coco(data / "train" / "annotations.json")
    with_boxes = [img["id"] for img in gt.images if gt.annotations_by_image[img["id"]]]
    full, joined = with_boxes[:2], with_boxes[2:4]
    verified = {}
    for image_id in joined:
        first = gt.annotations_by_image[image_id][0]
        x, y, w, h = first["bbox"]
        verified[image_id] = [{"box": [x, y, x + w, y + h], "category_id": first["category_id"], "gt_id": first["id"]}]
    state = LabelState(full=full, verified=verified, cost=5)
    flags = {}
    for incomplete in (False, True):
        write_labels(gt, state, tmp_path / f"{incomplete}.json", incomplete=incomplete)
        labels = load_coco(tmp_path / f"{incomplete}.json")
        flags[incomplete] = {img["id"]: img.get("incomplete") for img in labels.images}
    assert set(flags[False]) == set(flags[True]) == set(full) | set(joined)
    assert set(flags[False].values()) == {None}  # partial_background: loss writes the records as they are
    assert flags[True] == {**{i: None for i in full}, **{i: 1 for i in joined}}
    assert all("incomplete" not in img for img in gt.images)  # the pool's records are not modified


def test_ignore_writes_box_joined_images_incomplete_and_identifies_its_run(data: Path, tmp_path: Path) -> None:
    # match_iou 0.05: the untrained detector's random pool boxes then hit objects, so images join
    ignore = active_learning_config_from_dict(_raw(data, partial_background="ignore", match_iou=0.05))
    result = run_active_learning(ignore, tmp_path / "a")
    round0 = json.loads((tmp_path / "a" / "round_0" / "labels.json").read_text())
    round1 = json.loads((tmp_path / "a" / "round_1" / "labels.json").read_text())
    initial = {img["id"] for img in round0["images"]}
    assert all("incomplete" not in img for img in round0["images"])
    joined = {img["id"] for img in round1["images"]} - initial
    assert result.rounds[1]["objects"] > 0 and joined
    assert {img["id"] for img in round1["images"] if img.get("incomplete") == 1} == joined
    assert all("incomplete" not in img for img in round1["images"] if img["id"] in initial)
    plan = json.loads((tmp_path / "a" / "round_1" / "plan.json").read_text())
    assert plan["config"]["partial_background"] == "ignore"
    # the field identifies a run, not its round 0: the same round-0 folder serves a loss run
    loss = active_learning_config_from_dict(_raw(data, partial_background="loss", match_iou=0.05, rounds=0))
    with pytest.raises(ConfigError, match=r"partial_background: .* holds a run of another configuration "
                                          r"\(partial_background is 'ignore' there\)"):
        run_active_learning(loss, tmp_path / "a")
    shutil.copytree(tmp_path / "a" / "round_0", tmp_path / "b" / "round_0")
    assert run_active_learning(loss, tmp_path / "b").points == result.points[:1]
    # a state written before the field existed is a run of its default, loss
    state_path = tmp_path / "b" / "state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["partial_background"]
    state_path.write_text(json.dumps(state))
    assert run_active_learning(loss, tmp_path / "b").points == result.points[:1]
    with pytest.raises(ConfigError, match=r"\(partial_background is 'loss' there\)"):
        run_active_learning(active_learning_config_from_dict(_raw(data, partial_background="ignore", match_iou=0.05,
                                                                  rounds=0)), tmp_path / "b")


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": 1}, r"colour: unknown field; valid fields: base, train_annotations, .*match_iou"),
    ({"level": "diagonal"}, r"level: invalid value 'diagonal'; valid choices: box, image"),
    ({"budget": 0}, r"budget: Input should be greater than or equal to 1; got 0"),
    ({"measure": "coreset"}, r"measure: box-level coreset needs RoI features \(model.detector faster_rcnn\)"),
    ({"overrides": {"model.detector": "faster_rcnn"}}, r"noisy_score_thresh: faster_rcnn does not dampen unverified"),
    ({"measure": "detgain"}, r"teacher is needed by measure detgain, and by it only"),
    ({"partial_background": "drop"}, r"partial_background: invalid value 'drop'; valid choices: loss, ignore"),
    ({"partial_background": "ignore", "level": "image"}, r"partial_background 'ignore' applies to level box"),
    ({"partial_background": "ignore", "noisy_score_thresh": None, "overrides": {"model.detector": "faster_rcnn"}},
     r"partial_background: faster_rcnn has no loss for incomplete images"),
    ({"level": "image", "measure": "detgain"}, r"measure 'detgain' is not an image-level measure; valid choices: "
                                               r"random, uncertainty, coreset"),
    ({"measure": "detgain", "teacher": "/nonexistent/teacher.pt"}, r"teacher: checkpoint /nonexistent/teacher.pt "
                                                                   r"does not exist"),
    # round 0 (4 iterations) is valid, the later rounds (2 iterations) are not: checked before training
    ({"initial_iters": 4, "overrides": {"schedule.warmup_iters": 3}},
     r"base: .*demo_student.yaml: schedule: warmup_iters \(3\) must be <= max_iter \(2\)"),
])
def test_bad_configs_are_one_line_errors_with_exit_status_2(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           change: dict, message: str) -> None:
    import yaml

    from pipelines.cli import main

    path = tmp_path / "al.yaml"
    raw = _raw(data, **{k: v for k, v in change.items() if k != "overrides"})
    raw["base"]["overrides"].update(change.get("overrides", {}))
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as stop:
        main(["active-learning", "--config", str(path), "--out", str(tmp_path / "out"), "--no-track"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_box_coreset_queries_by_faster_rcnn_roi_features(data: Path, tmp_path: Path) -> None:
    from curation_core.active.pool import roi_features
    from curation_core.engine.data import load_image, to_tensor
    from curation_core.engine.predict import load_detector

    raw = _raw(data, measure="coreset", noisy_score_thresh=None)
    raw["base"]["overrides"]["model.detector"] = "faster_rcnn"
    result = run_active_learning(active_learning_config_from_dict(raw), tmp_path / "run")
    second = result.rounds[1]
    assert second["queried"] == min(4, second["pool"]) and second["boxes"] == result.rounds[0]["boxes"] + second["queried"]
    plan = json.loads((tmp_path / "run" / "round_1" / "plan.json").read_text())
    assert plan["state"]["noisy"] == {}  # noisy_score_thresh: null
    detector = load_detector(tmp_path / "run" / "round_0" / "checkpoint.pt")
    gt = load_coco(data / "train" / "annotations.json")
    image = to_tensor(load_image(data / "train" / "images" / gt.images[0]["file_name"]))
    boxes = torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 50.0, 60.0], [2.0, 3.0, 30.0, 40.0]]).numpy()
    (features,) = roi_features(detector.model, [image], [boxes], device=detector.device)
    assert features.shape[0] == 3 and features.shape[1] > 0
    assert (features[0] == features[2]).all() and not (features[0] == features[1]).all()


@pytest.mark.slow  # creating an MLflow sqlite store takes most of its time
def test_the_curve_is_logged_to_mlflow_one_step_per_round(data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from components.active_learning import ActiveLearningSummary
    from pipelines.tracking import log_active_learning, mlflow_client

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    curve = tmp_path / "curve.json"
    curve.write_text("{}")
    rounds = [{"round": 0, "boxes": 30, "AP": 0.1, "AP50": 0.2, "images": 6, "queried": 0, "background": 0},
              {"round": 1, "boxes": 34, "AP": 0.15, "AP50": 0.3, "images": 8, "queried": 4, "background": 1}]
    config = active_learning_config_from_dict(_raw(data))
    config_file = tmp_path / "al.yaml"
    config_file.write_text("{}")
    run_id = log_active_learning(ActiveLearningSummary(config, curve, [[30, 0.1], [34, 0.15]], rounds), config_file)
    client = mlflow_client()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "active_learning/AP")] == [(30, 0.1), (34, 0.15)]
    assert [m.value for m in client.get_metric_history(run_id, "active_learning/queried")] == [0, 4]
    run = client.get_run(run_id)
    assert run.data.params["active_learning.level"] == "box" and run.info.status == "FINISHED"


def test_the_shipped_config_and_the_dvc_stage_are_valid() -> None:
    import shlex

    import yaml

    from curation_core.active.config import load_active_learning_config

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["active_learning"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cmd = re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(params, m.group(1))), stage["cmd"])
    args = shlex.split(cmd)
    overrides = [value for flag, value in zip(args, args[1:], strict=False) if flag == "--set"]
    config = load_active_learning_config(ROOT / args[args.index("--config") + 1], overrides)
    assert config.level == params["active_learning"]["level"] and config.rounds == params["active_learning"]["rounds"]
    assert config.train_annotations.startswith("data/synth") and config.val_images.startswith("data/synth")
    assert args[args.index("--out") + 1] in stage["outs"]


def _lookup(tree: dict, dotted: str) -> object:
    for part in dotted.split("."):
        tree = tree[part]
    return tree
