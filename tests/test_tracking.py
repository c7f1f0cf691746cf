"""MLflow tracking: URIs, DVC data set hashes, and runs logged then read back with ``MlflowClient``."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("mlflow")

from engine_fixtures import tiny_training  # noqa: E402

from curation_core.errors import DataError  # noqa: E402
from curation_core.evaluation import COCO_STAT_NAMES, CocoStats  # noqa: E402
from pipelines import tracking  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine torch's spinning
    worker threads make each step of them 10 to 100 times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def _shared_db(tmp_path_factory):
    # One database per module: creating MLflow's schema costs a second or more per database.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def mlflow_uri(_shared_db, monkeypatch, request):
    """The module's database, and an experiment of the test's own (so runs never mix)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _shared_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    return _shared_db


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_paths(client, run_id, path=None):
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(_artifact_paths(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


# ------------------------------------------------------------------------------------------------
# URIs and project root


def test_tracking_uri_honours_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


def test_tracking_uri_defaults_to_sqlite_in_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(nested)
    assert tracking.project_root() == tmp_path.resolve()
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "  ")  # blank counts as unset
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_project_root_falls_back_to_the_start_folder(tmp_path):
    start = tmp_path / "nowhere"
    start.mkdir()
    if any((p / m).is_file() for p in (start, *start.parents) for m in tracking.PROJECT_MARKERS):
        pytest.skip("a parent of the temporary folder holds a project marker")
    assert tracking.project_root(start) == start.resolve()


def test_experiment_artifacts_live_beside_the_sqlite_database(mlflow_uri):
    client = _client(mlflow_uri)
    exp_id = tracking.experiment_id(client)
    assert tracking.experiment_id(client) == exp_id  # found, not created twice
    experiment = client.get_experiment(exp_id)
    assert experiment.name == "test_experiment_artifacts_live_beside_the_sqlite_database"
    database = Path(mlflow_uri.removeprefix("sqlite:///"))
    assert experiment.artifact_location == (database.parent / "mlartifacts").as_uri()


# ------------------------------------------------------------------------------------------------
# Data set version = DVC's hash


def _make_tree(root: Path, rng: np.random.Generator) -> None:
    files = {
        "train.json": b'{"images": []}\n',
        "val.json": b"{}",
        "images/train/000001.png": rng.bytes(5000),
        "images/train/000002.png": rng.bytes(70_000),
        "images/val/a b \u00e9.png": rng.bytes(10),
        "images/Z/crlf.txt": b"line\r\nline\r\n",  # DVC 3 hashes bytes, no CRLF normalisation
        "empty.bin": b"",
    }
    for relpath, data in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "images" / "no_files_here").mkdir()


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, check=True, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dataset_version_equals_the_hash_dvc_records(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc("init", "-q", cwd=repo)
    _make_tree(repo / "data", np.random.default_rng(0))
    (repo / "single.bin").write_bytes(np.random.default_rng(1).bytes(3000))
    _dvc("add", "-q", "data", "single.bin", cwd=repo)
    recorded = {
        name: yaml.safe_load((repo / f"{name}.dvc").read_text())["outs"][0]["md5"] for name in ("data", "single.bin")
    }
    assert recorded["data"].endswith(".dir")
    assert tracking.dataset_version(repo / "data") == recorded["data"]
    assert tracking.dataset_version(repo / "single.bin") == recorded["single.bin"]


def test_dataset_version_follows_content_and_names(tmp_path):
    _make_tree(tmp_path / "d", np.random.default_rng(0))
    base = tracking.dataset_version(tmp_path / "d")
    assert tracking.dataset_version(tmp_path / "d") == base
    shutil.copytree(tmp_path / "d", tmp_path / "copy")
    assert tracking.dataset_version(tmp_path / "copy") == base  # location-independent
    (tmp_path / "copy" / "images" / "more_empty").mkdir()
    assert tracking.dataset_version(tmp_path / "copy") == base  # empty folders do not count
    (tmp_path / "copy" / "val.json").write_bytes(b"{ }")
    assert tracking.dataset_version(tmp_path / "copy") != base
    (tmp_path / "copy" / "val.json").write_bytes(b"{}")
    (tmp_path / "copy" / "val.json").rename(tmp_path / "copy" / "val2.json")
    assert tracking.dataset_version(tmp_path / "copy") != base


def test_dataset_version_rejects_missing_paths(tmp_path):
    with pytest.raises(DataError, match=r"dataset_version\(path=\) expects an existing file or directory; got .*nope"):
        tracking.dataset_version(tmp_path / "nope")


def test_dataset_tags_name_the_common_folder(tmp_path):
    _make_tree(tmp_path / "d", np.random.default_rng(0))
    tags = tracking.dataset_tags([tmp_path / "d" / "train.json", tmp_path / "d" / "images" / "train",
                                  tmp_path / "d" / "val.json", tmp_path / "d" / "images" / "val"])
    assert tags == {"dataset.path": str((tmp_path / "d").resolve()),
                    "dataset.version": tracking.dataset_version(tmp_path / "d")}
    assert tracking.dataset_tags([]) == {}


# ------------------------------------------------------------------------------------------------
# Metrics


def _stats(values, per_category):
    return CocoStats(stats=tuple(values), per_category_ap=per_category, num_images=3, num_detections=7)


def test_coco_metrics_leave_out_undefined_values():
    values = [0.5, 0.75, -1.0, -1.0, 0.25, 0.6, 0.1, 0.2, 0.3, -1.0, 0.4, 0.7]
    metrics = tracking.coco_metrics(_stats(values, {1: 0.5, 2: math.nan, 7: 0.0}), prefix="val",
                                    category_names={1: "solid disc", 2: "ring", 7: "a:b"})
    expected = {f"val/{n}": v for n, v in zip(COCO_STAT_NAMES, values, strict=True) if v >= 0}
    expected |= {"val/AP_per_category/solid disc": 0.5, "val/AP_per_category/a_b": 0.0}
    assert metrics == expected


def test_log_evaluation_round_trip(mlflow_uri, tmp_path):
    data = tmp_path / "data"
    _make_tree(data, np.random.default_rng(3))
    checkpoint = tmp_path / "ckpt" / "model_final.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"stats": [0.5] * 12}))
    values = [0.5, 0.75, 0.4, -1.0, 0.25, 0.6, 0.1, 0.2, 0.3, -1.0, 0.4, 0.7]
    run_id = tracking.log_evaluation(
        _stats(values, {1: 0.5, 2: math.nan}), checkpoint=checkpoint, report_path=report, run_name="eval-test",
        params={"score_threshold": 0.05}, data_paths=[data / "val.json", data / "images" / "val"],
        category_names={1: "disc", 2: "ring"},
    )
    client = _client(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "eval-test"
    assert run.data.params == {"checkpoint": str(checkpoint.resolve()), "score_threshold": "0.05"}
    assert run.data.metrics == {**{f"eval/{n}": v for n, v in zip(COCO_STAT_NAMES, values, strict=True) if v >= 0},
                                "eval/AP_per_category/disc": 0.5}
    assert run.data.tags["dataset.version"] == tracking.dataset_version(data)
    assert _artifact_paths(client, run_id) == ["checkpoint/model_final.pt", "report/report.json"]
    local = client.download_artifacts(run_id, "report/report.json", str(tmp_path / "dl"))
    assert Path(local).read_text() == report.read_text()


def test_log_evaluation_marks_the_run_failed_when_logging_fails(mlflow_uri, tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    with pytest.raises(OSError):
        tracking.log_evaluation(_stats([0.1] * 12, {}), checkpoint=checkpoint, report_path=tmp_path / "missing.json")
    client = _client(mlflow_uri)
    runs = client.search_runs([tracking.experiment_id(client)])
    assert [r.info.status for r in runs] == ["FAILED"]


# ------------------------------------------------------------------------------------------------
# A real training run


def test_training_run_is_logged(mlflow_uri, tmp_path):
    from mlflow import MlflowClient

    hook = tracking.MLflowHook(run_name="tiny", log_every=2, register_as="tiny-trained")
    result, config = tiny_training(tmp_path, hooks=[hook])
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(hook.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # registration reused the training run
    # every config field, plus the registered model's default inference device (logged by MLflow)
    assert run.data.params == {**{key: str(value) for key, value in config.flat_params().items()},
                               "predict_device": "cpu"}
    loss = client.get_metric_history(hook.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, result.iterations + 1))
    assert all(math.isfinite(m.value) for m in loss)
    named = result.final_stats.named()
    for name in COCO_STAT_NAMES:
        if named[name] >= 0:
            assert run.data.metrics[f"val/{name}"] == pytest.approx(named[name])
    data_root = Path(os.path.commonpath([Path(p).resolve() for p in tracking.training_data_paths(config)]))
    assert run.data.tags["dataset.version"] == tracking.dataset_version(data_root)
    artifacts = _artifact_paths(client, hook.run_id)
    assert f"checkpoint/{result.checkpoint.name}" in artifacts
    assert f"config/{result.config_path.name}" in artifacts
    assert "report/metrics.json" in artifacts
    report = json.loads(Path(client.download_artifacts(hook.run_id, "report/metrics.json", str(tmp_path / "dl"))).read_text())
    assert report["iterations"] == result.iterations
    assert report["final"] == pytest.approx(result.final_stats.named())
    assert "report/training_curves.png" in artifacts
    figure = Path(client.download_artifacts(hook.run_id, "report/training_curves.png", str(tmp_path / "dl")))
    assert figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    version = client.get_model_version_by_alias("tiny-trained", "champion")
    assert version.run_id == hook.run_id == hook.model_version.run_id
    assert version.tags["dataset.version"] == run.data.tags["dataset.version"]


@pytest.mark.parametrize(("stop", "status"), [("request", "KILLED"), ("raise", "FAILED")])
def test_a_run_that_ends_early_is_closed_killed_or_failed(mlflow_uri, tmp_path, stop, status):
    from mlflow import MlflowClient

    from curation_core.engine.hooks import Hook
    from curation_core.engine.trainer import TrainingInterrupted

    class StopAfterFirstStep(Hook):
        def after_step(self) -> None:
            if stop == "request":
                self.trainer.request_stop()
            else:
                raise ArithmeticError("a hook failed")

    hook = tracking.MLflowHook(run_name="early", log_every=100, register_as="never-registered")
    with pytest.raises(TrainingInterrupted if stop == "request" else ArithmeticError):
        tiny_training(tmp_path, hooks=[hook, StopAfterFirstStep()], max_iter=3)
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(hook.run_id)
    assert run.info.status == status and run.info.end_time is not None
    assert [m.step for m in client.get_metric_history(hook.run_id, "train/loss")] == [1]  # the buffer was flushed
    assert "never-registered" not in [m.name for m in client.search_registered_models()]


def test_training_hooks_name_the_run_after_the_output_folder(tmp_path):
    from engine_fixtures import tiny_config_dict

    from curation_core.engine.config import config_from_dict

    config = config_from_dict(tiny_config_dict(tmp_path, output="exp_7"))
    (hook,) = tracking.training_hooks(config, register_as="m")
    assert isinstance(hook, tracking.MLflowHook)
    assert (hook.run_name, hook.register_as, hook.alias) == ("exp_7", "m", "champion")
    (hook,) = tracking.training_hooks(config, run_name="named")
    assert (hook.run_name, hook.register_as) == ("named", None)


def test_hook_rejects_a_bad_log_interval():
    with pytest.raises(ValueError, match=r"MLflowHook\(log_every=\) expects an integer >= 1; got 0"):
        tracking.MLflowHook(log_every=0)


# ------------------------------------------------------------------------------------------------
# A real tracking server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout} s")


@pytest.mark.slow
def test_run_logged_through_a_tracking_server(tmp_path, monkeypatch):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_healthy(url, proc, timeout=150)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        report = tmp_path / "report.json"
        report.write_text('{"stats": []}')
        checkpoint = tmp_path / "model.pt"
        checkpoint.write_bytes(b"\x00weights")
        run_id = tracking.log_evaluation(_stats([0.3] * 12, {1: 0.3}), checkpoint=checkpoint, report_path=report,
                                         run_name="via-server", params={"k": 1})
        client = _client(url)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"checkpoint": str(checkpoint.resolve()), "k": "1"}
        assert run.data.metrics["eval/AP"] == pytest.approx(0.3)
        assert _artifact_paths(client, run_id) == ["checkpoint/model.pt", "report/report.json"]
        # The server stored the artifacts itself (proxied), not the client.
        stored = sorted(p.name for p in (tmp_path / "server-artifacts").rglob("*") if p.is_file())
        assert stored == ["model.pt", "report.json"]
        assert Path(client.download_artifacts(run_id, "checkpoint/model.pt", str(tmp_path / "dl"))).read_bytes() == \
            checkpoint.read_bytes()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
