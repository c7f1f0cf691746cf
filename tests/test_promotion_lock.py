"""The promotion lock (``pipelines.promotion_lock``) and promotions of one model at the same moment.

Several processes (spawned) promote different candidate versions of one registered model at once, on
a SQLite registry and on a PostgreSQL one; the decisions they record must be those of some serial
order, and ``champion`` must end at the best model. The PostgreSQL tests are skipped, with the reason,
where no PostgreSQL answers on 127.0.0.1:5432 (trust authentication, as in tests/test_infra_mlflow.py);
each uses a database of its own, dropped afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import queue
import re
import time
import uuid
import warnings
from dataclasses import asdict

import numpy as np
import pytest

pytest.importorskip("mlflow")

from curation_core.errors import ConfigError  # noqa: E402
from pipelines import promotion_lock  # noqa: E402
from pipelines.promotion_lock import LOCK_ENV, lock_key, lock_target  # noqa: E402

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Processes promoting at once.
PROMOTERS = 4


@functools.cache
def _postgres_answers() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(dbname="test", connect_timeout=3, **PG):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL at {PG['host']}:{PG['port']} ({str(exc).strip().splitlines()[0]})"


@pytest.fixture
def postgres():
    """Skips the test, with the reason, where PostgreSQL does not answer (asked once, when first needed)."""
    reason = _postgres_answers()
    if reason:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_lock_env(monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)
    monkeypatch.setattr(promotion_lock, "_warned", set())


# --------------------------------------------------------------------------------------------------
# Where the lock lives
# --------------------------------------------------------------------------------------------------


def test_key_is_sha256_of_database_and_name_as_signed_64_bits():
    digest = hashlib.sha256(b"test\x00student").digest()
    assert lock_key("test", "student") == int.from_bytes(digest[:8], "big", signed=True)
    keys = [lock_key(db, name) for db in ("a", "b") for name in ("m", "n", "m\x00")]
    assert len(set(keys)) == len(keys) and all(-(2**63) <= k < 2**63 for k in keys)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_postgresql_store_locks_in_its_database(scheme):
    target = lock_target(f"{scheme}://mlflow:secret@db.example:5432/registry", "student")
    assert target.kind == "postgresql" and target.key == lock_key("registry", "student")
    assert target.describe() == (f"PostgreSQL advisory lock {target.key} in "
                                 f"{scheme}://mlflow:***@db.example:5432/registry")
    assert "secret" not in repr(target)


def test_sqlite_and_file_stores_lock_a_file_beside_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = lock_target(f"sqlite:///{tmp_path}/reg/mlflow.db", "my model/2")
    relative = lock_target("sqlite:///reg/mlflow.db", "my model/2")
    assert absolute == relative and absolute.kind == "file"
    assert os.path.dirname(absolute.location) == str(tmp_path / "reg" / "mlflow.db.locks")
    assert os.path.basename(absolute.location).startswith("promotion.my_model_2.")
    assert lock_target(f"sqlite:///{tmp_path}/reg/mlflow.db", "other") != absolute  # one lock per model
    store = lock_target((tmp_path / "mlruns").as_uri(), "m")
    assert store == lock_target("mlruns", "m") and store.location.startswith(str(tmp_path / "mlruns.locks") + "/")
    assert lock_target("sqlite://", "m") is None and lock_target("sqlite:///:memory:", "m") is None


def test_tracking_server_uses_the_environment_variable(tmp_path, monkeypatch):
    assert lock_target("http://127.0.0.1:5000", "m") is None
    monkeypatch.setenv(LOCK_ENV, "postgresql://postgres@127.0.0.1/locks")
    target = lock_target("https://mlflow.example", "m")
    assert target.kind == "postgresql" and target.key == lock_key("locks", "m")
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "promotions.lock"))
    assert lock_target("http://127.0.0.1:5000", "m").location == str(tmp_path / "promotions.lock")
    # A store the client locks itself ignores the variable: every client of it agrees on its lock.
    assert lock_target(f"sqlite:///{tmp_path}/mlflow.db", "m").location.startswith(f"{tmp_path}/mlflow.db.locks/")


def test_tracking_server_without_a_lock_warns_once():
    with pytest.warns(RuntimeWarning, match=rf"http://127.0.0.1:5000 are not serialised.*set {LOCK_ENV}"):
        with promotion_lock.promotion_lock("http://127.0.0.1:5000", "m") as target:
            assert target is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with promotion_lock.promotion_lock("http://127.0.0.1:5000", "other"):
            pass


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf")])
def test_timeout_must_be_seconds(timeout, tmp_path):
    with pytest.raises(ConfigError, match=r"promotion_lock\(timeout=\) expects a finite number of seconds >= 0"):
        with promotion_lock.promotion_lock(f"sqlite:///{tmp_path}/mlflow.db", "m", timeout=timeout):
            pass


# --------------------------------------------------------------------------------------------------
# The lock excludes
# --------------------------------------------------------------------------------------------------


def _assert_excludes(uri: str, name: str) -> None:
    """While one holder has the lock of ``name``, a second acquirer times out; other models are free."""
    with promotion_lock.promotion_lock(uri, name, timeout=1) as held:
        with pytest.raises(ConfigError, match=rf"promotion of model '{name}': .* not obtained within 0.2 s"):
            with promotion_lock.promotion_lock(uri, name, timeout=0.2):
                pass
        with pytest.raises(ConfigError, match=re.escape(held.describe())):
            with promotion_lock.promotion_lock(uri, name, timeout=0):
                pass
        with promotion_lock.promotion_lock(uri, f"{name}-other", timeout=0.2):
            pass
    with promotion_lock.promotion_lock(uri, name, timeout=0.2):
        pass


def test_file_lock_excludes_a_second_holder(tmp_path):
    _assert_excludes(f"sqlite:///{tmp_path}/mlflow.db", "student")


def test_advisory_lock_excludes_a_second_session(postgres):
    import psycopg

    names = (f"student-{uuid.uuid4().hex[:8]}-{i}" for i in range(100))
    name = next(n for n in names if lock_key("test", n) < 0)  # a negative key: both halves of it must round-trip
    _assert_excludes(PG_URL, name)
    key = lock_key("test", name)
    with promotion_lock.promotion_lock(PG_URL, name), psycopg.connect(dbname="test", **PG) as conn:
        # pg_locks shows a 64-bit advisory key as its high (classid) and low (objid) 32 bits.
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                            "objsubid = 1 AND classid::bigint = %s AND objid::bigint = %s",
                            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
    assert held == (1,)


def test_tracking_server_with_a_postgresql_lock_excludes(postgres, monkeypatch):
    monkeypatch.setenv(LOCK_ENV, PG_URL)
    _assert_excludes("http://127.0.0.1:5000", f"served-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_killed_holder_frees_the_lock(store, tmp_path, request):
    """The lock of a promotion killed mid-way (SIGKILL: no clean-up runs) is free at once: the kernel
    drops a dead process's file locks, PostgreSQL the session locks of a closed connection."""
    import subprocess
    import sys

    if store == "postgresql":
        request.getfixturevalue("postgres")
    uri = f"sqlite:///{tmp_path}/mlflow.db" if store == "sqlite" else PG_URL
    name = f"killed-{uuid.uuid4().hex[:8]}"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from pipelines.promotion_lock import promotion_lock\n"
                               f"with promotion_lock({uri!r}, {name!r}):\n"
                               "    print('held', flush=True); time.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="not obtained within 0.2 s"):
            with promotion_lock.promotion_lock(uri, name, timeout=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
    with promotion_lock.promotion_lock(uri, name, timeout=5):
        pass


def test_unreachable_lock_database_is_one_clear_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"promotion of model 'm': PostgreSQL advisory lock .* in "
                                          rf"postgresql://postgres:\*\*\*@127.0.0.1:{port}/x unreachable"):
        with promotion_lock.promotion_lock(f"postgresql://postgres:pw@127.0.0.1:{port}/x", "m"):
            pass


# --------------------------------------------------------------------------------------------------
# Promotions at the same moment
# --------------------------------------------------------------------------------------------------


def _promote_at_once(uri: str, name: str, version: str, barrier, results) -> None:
    """Child process: open the store, wait for the others, promote ``version``, report the decision."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        from pipelines import promotion
        from pipelines.tracking import mlflow_client

        mlflow_client().get_registered_model(name)  # the store is open before the start: the promotions overlap
        barrier.wait(timeout=120)
        results.put(asdict(promotion.promote(name, version, lock_timeout=60)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test with it
        barrier.abort()
        results.put({"candidate_version": version, "error": f"{type(exc).__name__}: {exc}"})


def _register(client, name: str, value: float) -> str:
    from pipelines.tracking import experiment_id

    run = client.create_run(experiment_id(client))
    client.log_metric(run.info.run_id, "eval/AP", value)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                          tags={"dataset.version": "val.dir"})
    return str(version.version)


def _assert_serial(decisions: list[dict], values: dict[str, float], first: str) -> str:
    """``decisions`` are those of some serial order starting with ``first`` as champion; returns the
    champion after them.

    Serial means: the promoted decisions form one chain (each moved the alias away from the candidate
    of the previous one; two that moved it away from the same holder are a lost update), every decision
    saw a holder of that chain with its true value, and compared correctly.
    """
    promoted = {d["champion_version"]: d["candidate_version"] for d in decisions if d["promoted"]}
    assert len(promoted) == sum(d["promoted"] for d in decisions), f"two promotions read the same holder: {decisions}"
    chain = [first]
    while chain[-1] in promoted:
        chain.append(promoted[chain[-1]])
    assert len(chain) == len(promoted) + 1, f"promotions not on one chain from {first}: {decisions}"
    for d in decisions:
        assert d["champion_version"] in chain and d["champion_value"] == values[d["champion_version"]], d
        assert d["candidate_value"] == values[d["candidate_version"]], d
        assert d["promoted"] == (d["candidate_value"] > d["champion_value"]), d
    return chain[-1]


def _collect(results, workers, *, timeout: float) -> list[dict]:
    """One result per worker; stops early (and fails) when the workers died without one."""
    returned: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(returned) < len(workers) and time.monotonic() < deadline:
        try:
            returned.append(results.get(timeout=1))
        except queue.Empty:
            if not any(worker.is_alive() for worker in workers):
                break
    assert len(returned) == len(workers), f"exit codes {[w.exitcode for w in workers]}, results {returned}"
    return returned


def _race(uri: str, seed: int) -> None:
    """``PROMOTERS`` spawned processes promote one candidate each, at once, on the registry at ``uri``."""
    from mlflow import MlflowClient

    from pipelines import promotion

    client = MlflowClient(tracking_uri=uri)
    name = f"race-{seed}"
    client.create_registered_model(name)
    rng = np.random.default_rng(seed)
    first = _register(client, name, 0.5)
    assert promotion.promote(name, first).promoted
    # Three candidates better than the champion and one worse, registered in random order.
    drawn = [*np.round(np.sort(rng.uniform(0.51, 0.95, PROMOTERS - 1)), 4), round(float(rng.uniform(0.05, 0.49)), 4)]
    values = {first: 0.5} | {_register(client, name, float(v)): float(v) for v in rng.permutation(drawn)}
    candidates = [v for v in values if v != first]
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROMOTERS), context.Queue()
    workers = [context.Process(target=_promote_at_once, args=(uri, name, v, barrier, results)) for v in candidates]
    for worker in workers:
        worker.start()
    try:
        returned = _collect(results, workers, timeout=180)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert not [r for r in returned if "error" in r], returned
    print(f"{PROMOTERS} promotions at once: {time.monotonic() - started:.1f} s, spawning included")
    # What the registry recorded (the promotion.* tags), checked against what each process was told.
    recorded = []
    for version in candidates:
        tags = client.get_model_version(name, version).tags
        recorded.append({"candidate_version": version, "champion_version": tags["promotion.champion_version"],
                         "champion_value": float(tags["promotion.champion_value"]),
                         "candidate_value": float(tags["promotion.candidate_value"]),
                         "promoted": tags["promotion.decision"] == "promoted"})
    assert sorted(recorded, key=lambda d: d["candidate_version"]) == sorted(
        ({k: r[k] for k in recorded[0]} for r in returned), key=lambda d: d["candidate_version"])
    last = _assert_serial(recorded, values, first)
    best = max(values, key=values.__getitem__)
    assert last == best and str(client.get_registered_model(name).aliases["champion"]) == best, (values, recorded)


def test_simultaneous_promotions_on_sqlite_are_serial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    (tmp_path / "registry").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _race(uri, seed=0)
    assert [p.name for p in (tmp_path / "registry" / "mlflow.db.locks").iterdir()] == \
        [os.path.basename(lock_target(uri, "race-0").location)]


def test_simultaneous_promotions_on_postgresql_are_serial(postgres, tmp_path, monkeypatch):
    import psycopg

    monkeypatch.chdir(tmp_path)
    database = f"detcurate_promotion_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname="test", autocommit=True, **PG) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    uri = f"postgresql://postgres@127.0.0.1:5432/{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        _race(uri, seed=1)
    finally:
        with psycopg.connect(dbname="test", autocommit=True, **PG) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
