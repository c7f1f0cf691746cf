"""``detcurate train`` / ``evaluate`` end to end: exact resume, a real kill, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from engine_fixtures import tiny_config_dict

DETCURATE = [sys.executable, "-c", "from pipelines.cli import main; main()"]


def _write_config(tmp_path: Path, name: str = "config.yaml", **options: object) -> Path:
    raw = tiny_config_dict(tmp_path, **options)  # type: ignore[arg-type]
    raw["train"]["num_threads"] = 1
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DETCURATE, *args], capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]


def test_resume_continues_exactly(tmp_path: Path) -> None:
    from curation_core.engine.config import config_from_dict
    from curation_core.engine.hooks import Hook
    from curation_core.engine.trainer import TrainingInterrupted, train

    class StopAt(Hook):
        def after_step(self) -> None:
            if self.trainer.iter == 2:
                self.trainer.request_stop()

    base = tiny_config_dict(tmp_path, max_iter=4, val=False)
    base["train"]["deterministic"] = True
    straight = train(config_from_dict({**base, "train": {**base["train"], "output_dir": str(tmp_path / "a")}}))
    second = config_from_dict({**base, "train": {**base["train"], "output_dir": str(tmp_path / "b")}})
    with pytest.raises(TrainingInterrupted, match="at iteration 2/4"):
        train(second, hooks=[StopAt()])
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["iteration"] == 2
    resumed = train(second, resume=True)
    assert resumed.iterations == straight.iterations == 4
    a = torch.load(straight.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    config = _write_config(tmp_path, max_iter=400, val=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([*DETCURATE, "train", "--config", str(config), "--no-track", "--set", "train.checkpoint_every=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 180
    while not (run_dir / "config.yaml").is_file() and time.monotonic() < deadline:  # training has started
        time.sleep(0.5)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "continue with --resume" in err and "Traceback" not in err
    stopped_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"]
    assert 0 < stopped_at < 400
    done = subprocess.run([*DETCURATE, "train", "--config", str(config), "--no-track", "--resume",
                           "--set", "schedule.max_iter=" + str(stopped_at + 3)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] == stopped_at + 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.backbone=huge", "model.backbone: invalid value 'huge'; valid choices: nano, tiny, small, resnet18"),
        ("model.detector=yolo", "model.detector"),
        ("train.batch_size=many", "train.batch_size"),
        ("optim.momentum_typo=0.9", "optim.momentum_typo"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path: Path, override: str, message: str) -> None:
    config = _write_config(tmp_path, val=False)
    out = _run(["train", "--config", str(config), "--no-track", "--set", override])
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "run").exists()


def test_missing_config_key_and_empty_training_set(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path, val=False)
    del raw["data"]["train_annotations"]
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = _run(["train", "--config", str(path), "--no-track"])
    assert out.returncode == 2 and "data.train_annotations" in out.stderr and out.stderr.count("\n") == 1
    raw = tiny_config_dict(tmp_path, val=False)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    raw["data"]["train_annotations"] = str(empty)
    path.write_text(yaml.safe_dump(raw))
    out = _run(["train", "--config", str(path), "--no-track"])
    assert out.returncode == 2 and "the training set has no images" in out.stderr, out.stderr


def test_checkpoint_errors_are_one_line(tmp_path: Path) -> None:
    config = _write_config(tmp_path, max_iter=1)
    assert _run(["train", "--config", str(config), "--no-track"]).returncode == 0
    raw = yaml.safe_load(config.read_text())
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    val = ["--annotations", raw["data"]["val_annotations"], "--images", raw["data"]["val_images"], "--no-track"]
    ok = _run(["evaluate", "--checkpoint", str(checkpoint), *val, "--out", str(tmp_path / "report.json")])
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["stats"]) == 12
    # a second training into the same folder must not overwrite it
    again = _run(["train", "--config", str(config), "--no-track"])
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    out = _run(["evaluate", "--checkpoint", str(truncated), *val])
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    # a data set whose categories differ from the checkpoint's
    other = json.loads(Path(raw["data"]["val_annotations"]).read_text())
    other["categories"] = [{"id": 3, "name": "disc"}, {"id": 5, "name": "square"}, {"id": 9, "name": "hexagon"}]
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    out = _run(["evaluate", "--checkpoint", str(checkpoint), "--annotations", str(other_path),
                "--images", raw["data"]["val_images"], "--no-track", "--out", str(tmp_path / "other_report.json")])
    assert out.returncode == 2 and "categor" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "other_report.json").exists()
