"""The training loop: exact resume, hooks, evaluation history, output-folder policy, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from engine_fixtures import tiny_config_dict

from curation_core.engine.checkpoint import load_checkpoint
from curation_core.engine.config import ScheduleConfig, config_from_dict, load_config
from curation_core.engine.hooks import Hook
from curation_core.engine.optim import lr_at
from curation_core.engine.trainer import (
    DeadHeadCheck,
    DeadRegressionHeadError,
    TrainingDivergedError,
    TrainingInterrupted,
    train,
)
from curation_core.errors import CheckpointError, ConfigError, DataError


def _with(raw: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    return {**raw, **{name: {**raw.get(name, {}), **values} for name, values in sections.items()}}


class StopAt(Hook):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            self.trainer.request_stop()


@pytest.mark.parametrize("detector", ["fcos", "faster_rcnn"])  # Faster R-CNN samples with the torch generator
def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path: Path, detector: str) -> None:
    raw = _with(tiny_config_dict(tmp_path, val=False, detector=detector, max_iter=4), train={"deterministic": True})
    straight = train(config_from_dict(_with(raw, train={"output_dir": str(tmp_path / "a")})))
    config = config_from_dict(_with(raw, train={"output_dir": str(tmp_path / "b")}))
    with pytest.raises(TrainingInterrupted, match=r"stopped by a stop request at iteration 2/4; checkpoint written"):
        train(config, hooks=[StopAt(2)])
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["iteration"] == 2
    resumed = train(config, resume=True)
    assert straight.iterations == resumed.iterations == 4
    a, b = (load_checkpoint(r.checkpoint) for r in (straight, resumed))
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


class Recorder(Hook):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.metrics: list[dict[str, float]] = []
        self.batch_sizes: list[int] = []

    def before_train(self) -> None:
        self.calls.append("before_train")
        assert self.trainer.category_ids == [3, 5, 9] and self.trainer.category_names == ["disc", "square", "triangle"]

    def before_step(self) -> None:
        self.calls.append("before_step")

    def filter_batch(self, images, targets):  # noqa: ANN001, ANN201
        self.batch_sizes.append(len(images))
        return images[:1], targets[:1]  # train on the first image only

    def after_step(self) -> None:
        self.calls.append(f"after_step {self.trainer.iter}")
        self.metrics.append(dict(self.trainer.last_metrics))

    def before_eval(self) -> None:
        self.calls.append("before_eval")

    def after_eval(self, stats) -> None:  # noqa: ANN001
        self.calls.append(f"after_eval {self.trainer.iter} {len(stats.stats)}")

    def after_checkpoint(self, path: Path) -> None:
        self.calls.append(f"after_checkpoint {load_checkpoint(path)['iteration']}")

    def after_train(self) -> None:
        self.calls.append(f"after_train {self.trainer.result.iterations}")


def test_hooks_see_steps_evaluations_and_checkpoints_in_order(tmp_path: Path) -> None:
    raw = _with(tiny_config_dict(tmp_path, max_iter=4), train={"eval_every": 2, "checkpoint_every": 3})
    hook = Recorder()
    result = train(config_from_dict(raw), hooks=[hook])
    assert hook.calls == [
        "before_train",
        "before_step", "after_step 1", "before_step", "after_step 2", "before_eval", "after_eval 2 12",
        "before_step", "after_step 3", "after_checkpoint 3", "before_step", "after_step 4",
        "before_eval", "after_eval 4 12", "after_checkpoint 4", "after_train 4",
    ]
    assert hook.batch_sizes == [2, 2, 2, 2]
    assert set(hook.metrics[0]) == {"classification", "bbox_regression", "bbox_ctrness", "loss", "lr",
                                    "images_per_s", "data_time_frac"}
    assert all(math.isfinite(v) for m in hook.metrics for v in m.values())
    assert all(0.0 <= m["data_time_frac"] <= 1.0 for m in hook.metrics)
    assert [h["iteration"] for h in result.history] == [2, 4] and result.final_stats is not None
    assert result.history[-1]["AP"] == result.final_stats.stats[0]
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["iterations"] == 4 and report["final"]["AP"] == result.final_stats.stats[0]
    assert load_config(result.config_path) == config_from_dict(raw)


class Failing(Recorder):
    """Records calls like ``Recorder``; raises ``error`` after step ``at`` (or stops the run there)."""

    def __init__(self, at: int, error: BaseException | None) -> None:
        super().__init__()
        self.at, self.error = at, error
        self.seen: list[BaseException] = []

    def after_step(self) -> None:
        super().after_step()
        if self.trainer.iter == self.at:
            if self.error is None:
                self.trainer.request_stop()
            else:
                raise self.error

    def on_exception(self, error: BaseException) -> None:
        self.calls.append(f"on_exception {self.trainer.iter}")
        self.seen.append(error)
        raise RuntimeError("ignored: the original error is the one reported")


@pytest.mark.parametrize("error", [None, ValueError("boom")], ids=["interrupted", "failed"])
def test_on_exception_replaces_after_train_when_a_run_ends_early(tmp_path: Path, error: BaseException | None) -> None:
    config = config_from_dict(tiny_config_dict(tmp_path, val=False, max_iter=4))
    hook, other = Failing(2, error), Failing(99, None)  # the second hook never stops the run itself
    expected = TrainingInterrupted if error is None else ValueError
    with pytest.raises(expected) as info:
        train(config, hooks=[hook, other])
    assert hook.calls[-1] == "on_exception 2" and "after_train" not in " ".join(hook.calls)
    assert hook.seen == [info.value]
    assert other.calls[-1] == "on_exception 2" and other.seen == [info.value]  # the raising hook did not stop it
    assert not any(c.startswith("after_train") for c in other.calls)


def test_a_finished_run_is_never_overwritten(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config_dict(tmp_path, val=False, max_iter=2))
    first = train(config)
    before = first.checkpoint.read_bytes()
    with pytest.raises(ConfigError, match=r"train\.output_dir: .*run already holds a checkpoint \(checkpoint\.pt\); "
                                          r"pass --resume to continue it"):
        train(config)
    assert first.checkpoint.read_bytes() == before
    # --resume of a finished run trains nothing more; resume without a checkpoint starts afresh.
    assert train(config, resume=True).iterations == 2
    fresh = config_from_dict(_with(tiny_config_dict(tmp_path, val=False, max_iter=2), train={"output_dir": str(tmp_path / "new")}))
    assert train(fresh, resume=True).iterations == 2


def test_resume_refuses_another_model_data_stream_or_category_set(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path, val=False, max_iter=2)
    train(config_from_dict(raw))
    with pytest.raises(CheckpointError, match=r"checkpoint is of model fcos/tiny with detector='fcos' \(config: "
                                              r"'retinanet'\); it cannot continue this run"):
        train(config_from_dict(_with(raw, model={"detector": "retinanet"})), resume=True)
    with pytest.raises(CheckpointError, match=r"resuming would change the data order"):
        train(config_from_dict(_with(raw, train={"batch_size": 3})), resume=True)
    with pytest.raises(CheckpointError, match=r"beyond schedule\.max_iter=1"):
        train(config_from_dict(_with(raw, schedule={"max_iter": 1, "warmup_iters": 0})), resume=True)
    ann = Path(raw["data"]["train_annotations"])
    coco = json.loads(ann.read_text())
    coco["categories"][0]["name"] = "circle"
    ann.write_text(json.dumps(coco))
    with pytest.raises(CheckpointError, match=r"categories differ from those of checkpoint .*only in the checkpoint: "
                                              r"\[\(3, 'disc'\)\]; only in the data: \[\(3, 'circle'\)\]"):
        train(config_from_dict(raw), resume=True)


def test_bad_checkpoint_in_the_output_folder_is_reported(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path, val=False, max_iter=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: corrupt, truncated or not a safe checkpoint"):
        train(config_from_dict(raw), resume=True)


def test_empty_training_set_and_mismatched_validation_set(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path, max_iter=2)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DataError, match=r"empty\.json: <file>: the training set has no images"):
        train(config_from_dict(_with(raw, data={"train_annotations": str(empty)})))
    val = json.loads(Path(raw["data"]["val_annotations"]).read_text())
    val["categories"] = val["categories"][:2]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] != 9]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(val))
    with pytest.raises(DataError, match=r"other\.json: <file>: categories differ from those of the training set"):
        train(config_from_dict(_with(raw, data={"val_annotations": str(other)})))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_training_set_of_background_images_only(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path, val=False, max_iter=2)
    coco = json.loads(Path(raw["data"]["train_annotations"]).read_text())
    coco["annotations"] = []
    path = tmp_path / "background.json"
    path.write_text(json.dumps(coco))
    result = train(config_from_dict(_with(raw, data={"train_annotations": str(path)})))
    assert result.iterations == 2 and result.final_stats is None


def test_diverging_loss_is_a_one_line_error(tmp_path: Path) -> None:
    raw = _with(tiny_config_dict(tmp_path, val=False, max_iter=5), optim={"lr": 1e12, "clip_grad_norm": None},
                schedule={"warmup_iters": 0})
    with pytest.raises(TrainingDivergedError, match=r"loss became non-finite at iteration \d; lower optim\.lr|"
                                                    r"loss became non-finite at iteration \d \("):
        train(config_from_dict(raw))


class KillRegressionHead(Hook):
    """Makes every FCOS box regression output negative, so the ReLU after it passes nothing: a dead head."""

    def before_train(self) -> None:
        head = self.trainer.model.head.regression_head
        with torch.no_grad():
            head.bbox_reg.bias.fill_(-1e3)


def test_dead_fcos_regression_head_stops_the_run_with_a_one_line_error(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DeadHeadCheck, "MIN_STEPS", 4)
    raw = _with(tiny_config_dict(tmp_path, val=False, max_iter=8), schedule={"warmup_iters": 1})
    seen: list[int] = []

    class Count(Hook):
        def after_step(self) -> None:
            seen.append(self.trainer.iter)

    with pytest.raises(DeadRegressionHeadError, match=r"^FCOS box regression head is dead: its GIoU loss stayed at "
                                                      r"(1\.000|0\.99\d) or above .* for the first 4 iterations"):
        train(config_from_dict(raw), hooks=[KillRegressionHead(), Count()])
    assert seen == [1, 2, 3]  # stopped at the check, not trained to the end
    assert isinstance(DeadRegressionHeadError("x"), TrainingDivergedError)


def test_dead_head_check_rule(tmp_path: Path) -> None:
    """Only FCOS; the smallest GIoU loss over the first max(MIN_STEPS, warmup + MIN_STEPS / 2) steps decides;
    object-free batches (loss exactly 0) do not count; later steps are not checked."""
    raw = _with(tiny_config_dict(tmp_path, val=False), schedule={"max_iter": 1000, "warmup_iters": 50})
    rng = np.random.default_rng(0)
    config = config_from_dict(raw)
    dead = DeadHeadCheck(config)
    assert dead.at == 100
    values = 1.0 + rng.uniform(-0.006, 0.002, size=100)
    values[rng.choice(100, 5, replace=False)] = 0.0  # batches without objects
    for i, v in enumerate(values[:-1], start=1):
        dead.update(i, {"bbox_regression": float(v)})
    with pytest.raises(DeadRegressionHeadError):
        dead.update(100, {"bbox_regression": float(values[-1])})
    live = DeadHeadCheck(config)
    falling = np.linspace(1.0, 0.55, 100) + rng.uniform(-0.01, 0.01, size=100)
    for i, v in enumerate(falling, start=1):
        live.update(i, {"bbox_regression": float(v)})
    late = DeadHeadCheck(config)
    for i in range(101, 300):  # resumed past the check: never raises
        late.update(i, {"bbox_regression": 1.0})
    retina = DeadHeadCheck(config_from_dict(_with(raw, model={"detector": "retinanet"})))
    for i in range(1, 101):
        retina.update(i, {"bbox_regression": 1.0})


def test_learning_rate_schedule() -> None:
    cosine = ScheduleConfig(max_iter=100, warmup_iters=10, warmup_factor=0.1)
    assert lr_at(0, lr=1.0, schedule=cosine) == pytest.approx(0.1)
    assert lr_at(5, lr=1.0, schedule=cosine) == pytest.approx((0.1 + 0.9 * 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert lr_at(50, lr=1.0, schedule=cosine) == pytest.approx(0.5)
    assert lr_at(100, lr=1.0, schedule=cosine) == pytest.approx(0.0)
    step = ScheduleConfig(max_iter=100, policy="step", steps=(30, 60), gamma=0.1)
    assert [lr_at(i, lr=2.0, schedule=step) for i in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [2.0, 2.0, 0.2, 0.2, 0.02, 0.02])
    floor = ScheduleConfig(max_iter=10, min_lr_factor=0.2)
    assert lr_at(10, lr=1.0, schedule=floor) == pytest.approx(0.2)
