"""MLflow for real: ``infra/mlflow/start.sh`` (PostgreSQL backend store, artifact folder, loopback), a
tracked training of the demo student config against it, registration and loading back by alias, and
two trainings logging to the server at the same time.

Skipped, with the reason, where no PostgreSQL answers on 127.0.0.1:5432. Each test session uses a
database of its own (dropped afterwards). 12 minutes measured on the 2-core machine while an image build
shared it (the server took 270 s to answer; about 50 s on an idle machine): expect 3 to 12 minutes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
psycopg = pytest.importorskip("psycopg")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
START_TIMEOUT_S = 300
pytestmark = pytest.mark.slow


def _postgres_answers() -> str | None:
    try:
        with psycopg.connect(dbname="postgres", connect_timeout=3, **PG):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL at {PG['host']}:{PG['port']} ({str(exc).strip().splitlines()[0]})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"infra/mlflow/start.sh exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"MLflow did not answer {url}/health within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = _postgres_answers()
    if reason:
        pytest.skip(reason)
    db = f"detcurate_mlflow_test_{uuid.uuid4().hex[:10]}"
    port = _free_port()
    work = tmp_path_factory.mktemp("mlflow_server")
    log = work / "server.log"
    env = {**os.environ, "DETCURATE_MLFLOW_DB": db, "DETCURATE_MLFLOW_PORT": str(port),
           "DETCURATE_MLFLOW_ARTIFACTS": str(work / "artifacts"), "DETCURATE_MLFLOW_BIN": str(BIN / "mlflow")}
    with open(log, "wb") as out:
        process = subprocess.Popen(["bash", str(ROOT / "infra" / "mlflow" / "start.sh")], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield {"url": url, "db": db, "artifacts": work / "artifacts"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "synth"
    subprocess.run([BIN / "detcurate", "data", "synth", "--out", out, "--train", "16", "--val", "8", "--size", "128",
                    "--seed", "0"], check=True, capture_output=True)
    return out


def _train_command(data: Path, out: Path, *, seed: int, iterations: int = 4, register_as: str | None = None) -> list:
    sets = {"data.train_annotations": data / "train" / "annotations.json", "data.train_images": data / "train" / "images",
            "data.val_annotations": data / "val" / "annotations.json", "data.val_images": data / "val" / "images",
            "schedule.max_iter": iterations, "schedule.warmup_iters": 1, "train.batch_size": 4,
            "train.eval_every": iterations, "train.eval_batch_size": 8, "train.seed": seed, "train.output_dir": out}
    command = [str(BIN / "detcurate"), "train", "--config", str(ROOT / "configs" / "demo_student.yaml")]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command + (["--register-as", register_as] if register_as else [])


def _env(server, experiment: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": server["url"], "MLFLOW_EXPERIMENT_NAME": experiment,
            "OMP_NUM_THREADS": "1"}


def _run_of(client, experiment: str, output_dir: Path):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [run] = [r for r in runs if r.data.tags.get("detcurate.output_dir", "").endswith(output_dir.name)]
    return run


def test_start_script_uses_postgresql(server):
    with psycopg.connect(dbname=server["db"], **PG) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"experiments", "runs", "metrics", "registered_models", "model_versions"} <= tables


def test_tracked_training_registered_and_loaded_back_by_alias(server, data, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from curation_core.engine.predict import load_detector
    from pipelines import registry

    out = tmp_path / "student"
    done = subprocess.run(_train_command(data, out, seed=0, register_as="pg-student"), env=_env(server, "pg-train"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=server["url"])
    run = _run_of(client, "pg-train", out)
    assert run.info.status == "FINISHED" and run.data.params["model.backbone"] == "nano"
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert run.data.metrics["val/AP"] == pytest.approx(final["AP"])
    version = client.get_model_version_by_alias("pg-student", "champion")
    assert version.run_id == run.info.run_id
    # The artifacts went through the server into its artifact folder, not into a local mlruns/.
    assert list(server["artifacts"].rglob("checkpoint.pt"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    model = registry.load_registered("models:/pg-student@champion")
    images = [np.random.default_rng(i).integers(0, 256, size=(128, 128, 3), dtype=np.uint8) for i in range(2)]
    expected = load_detector(out / "checkpoint.pt").predict(images)
    for got, want in zip(model.predict(images), expected, strict=True):
        np.testing.assert_array_equal(got["labels"], want["labels"])
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)


def test_two_trainings_at_once_lose_nothing(server, data, tmp_path):
    from mlflow import MlflowClient

    iterations = 6
    outs = [tmp_path / f"concurrent_{seed}" for seed in (1, 2)]
    procs = [subprocess.Popen(_train_command(data, out, seed=seed, iterations=iterations), env=_env(server, "pg-two"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed, out in zip((1, 2), outs, strict=True)]
    results = [p.communicate(timeout=900) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    client = MlflowClient(tracking_uri=server["url"])
    runs = [_run_of(client, "pg-two", out) for out in outs]
    assert len({r.info.run_id for r in runs}) == 2
    for run, out in zip(runs, outs, strict=True):
        assert run.info.status == "FINISHED"
        assert run.data.params["train.seed"] in ("1", "2") and run.data.params["train.output_dir"] == str(out)
        # every training step of every run is in the store, in order
        for key in ("train/loss", "train/lr"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, iterations + 1)), key
        final = json.loads((out / "metrics.json").read_text())["final"]
        assert run.data.metrics["val/AP"] == pytest.approx(final["AP"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "config", "report"} <= artifacts


def test_unreachable_server_or_database_is_one_line_naming_the_url(data, tmp_path):
    closed = _free_port()
    for uri in (f"http://127.0.0.1:{closed}", f"postgresql://postgres@127.0.0.1:{closed}/detcurate_mlflow"):
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
        started = time.monotonic()
        done = subprocess.run(_train_command(data, tmp_path / "never", seed=0), env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and uri.split("@")[-1].split("/")[0] in lines[0] and "Traceback" not in done.stderr
        assert time.monotonic() - started < 240  # no minutes of client retries
        assert not (tmp_path / "never" / "checkpoint.pt").exists()
