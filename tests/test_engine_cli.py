"""``detcurate train`` / ``evaluate`` as processes: a real SIGTERM, resume, one-line errors with exit 2."""

from __future__ import annotations

import json
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


def _config(tmp_path: Path, **train: object) -> Path:
    raw = tiny_config_dict(tmp_path, max_iter=20, val=False)
    raw["train"].update({"num_threads": 1, **train})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DETCURATE, *args], capture_output=True, text=True, timeout=300)


def test_sigterm_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    config = _config(tmp_path, checkpoint_every=3)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    proc = subprocess.Popen([*DETCURATE, "train", "--config", str(config), "--no-track"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "stopped by SIGTERM at iteration" in lines[0] and "--resume" in lines[0], err
    stopped_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert f"at iteration {stopped_at}/20;" in lines[0] and 3 <= stopped_at < 20
    again = _run("train", "--config", str(config), "--no-track")  # without --resume: refused, nothing touched
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr
    assert torch.load(checkpoint, weights_only=True)["iteration"] == stopped_at
    resumed = _run("train", "--config", str(config), "--no-track", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 20
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["iterations"] == 20


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the command line in this process; return (exit status, stderr)."""
    from pipelines.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "model.detector=yolo"], r"model\.detector: invalid value 'yolo'; valid choices: fcos, retinanet, faster_rcnn"),
    (["--set", "optim.lr=fast"], r"optim\.lr: Input should be a valid number"),
    (["--set", "train.nope=1"], r"--set train\.nope: unknown field 'nope' in train; valid fields"),
    (["--set", "data.train_annotations=missing.json"], r"missing\.json: <file>: file does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                          message: str) -> None:
    import re

    status, err = _main(capsys, "train", "--config", str(_config(tmp_path)), "--no-track", *args)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_evaluate_writes_a_report_and_refuses_a_corrupt_checkpoint(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from engine_fixtures import tiny_training

    result, config = tiny_training(tmp_path, max_iter=1)
    data = ["--annotations", config.data.val_annotations, "--images", config.data.val_images, "--no-track"]
    status, err = _main(capsys, "evaluate", "--checkpoint", str(result.checkpoint), "--out",
                        str(tmp_path / "report.json"), *data)
    assert status == 0, err
    assert len(json.loads((tmp_path / "report.json").read_text())["stats"]) == 12
    result.checkpoint.write_bytes(result.checkpoint.read_bytes()[:1000])
    status, err = _main(capsys, "evaluate", "--checkpoint", str(result.checkpoint), "--out",
                        str(tmp_path / "report2.json"), *data)
    assert status == 2 and err.count("\n") == 1 and "corrupt, truncated or not a safe checkpoint" in err
    assert not (tmp_path / "report2.json").exists()
