"""Data versions: two versions of a data folder in a temporary git + DVC repository; a training run on
the older one is reproduced from ``pipelines.data_versions.fetch_data`` (``dvc.api.DVCFileSystem``)
while the workspace holds the newer one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dvc")

from engine_fixtures import make_shapes_coco, tiny_config_dict  # noqa: E402

from curation_core.errors import ConfigError  # noqa: E402

BIN = Path(sys.executable).parent


def _run(*args, cwd):
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}: {done.stderr[-2000:]}"
    return done.stdout


def _commit_version(repo: Path, seed: int, tag: str) -> str:
    folder = repo / "data" / "shapes"
    if folder.exists():
        shutil.rmtree(folder)
    make_shapes_coco(folder, split="train", num_images=6, seed=seed)
    make_shapes_coco(folder, split="val", num_images=3, seed=seed + 100, crowd=False)
    _run(BIN / "dvc", "add", "data/shapes", cwd=repo)
    _run("git", "add", "data/shapes.dvc", "data/.gitignore", cwd=repo)
    _run("git", "commit", "-q", "-m", f"data {tag}", cwd=repo)
    _run("git", "tag", tag, cwd=repo)
    return yaml.safe_load((repo / "data" / "shapes.dvc").read_text())["outs"][0]["md5"]


def _train(data: Path, out: Path) -> dict:
    from curation_core.engine.config import config_from_dict
    from curation_core.engine.trainer import train

    raw = tiny_config_dict(out.parent / "unused", max_iter=2)
    raw["data"] = {"train_annotations": str(data / "train.json"), "train_images": str(data / "images"),
                   "val_annotations": str(data / "val.json"), "val_images": str(data / "images")}
    raw["train"]["output_dir"] = str(out)
    train(config_from_dict(raw))
    from curation_core.engine.checkpoint import load_checkpoint

    metrics = json.loads((out / "metrics.json").read_text())
    timeless = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in metrics["history"]]
    return {"history": timeless, "weights": load_checkpoint(out / "checkpoint.pt")["model"]}


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def _one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_run_on_the_older_data_version_is_reproduced(tmp_path, _one_torch_thread):
    """Three tiny trainings and two DVC commits: about 45 s on the 2-core machine while it was shared."""
    from pipelines.data_versions import fetch_data
    from pipelines.tracking import dataset_version

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    _run("git", "init", "-q", cwd=repo)
    _run("git", "config", "user.email", "ci@example.com", cwd=repo)
    _run("git", "config", "user.name", "ci", cwd=repo)
    _run(BIN / "dvc", "init", "-q", cwd=repo)
    _run("git", "commit", "-q", "-m", "dvc init", cwd=repo)

    v1 = _commit_version(repo, seed=0, tag="v1")
    original = _train(repo / "data" / "shapes", tmp_path / "run_v1")
    v2 = _commit_version(repo, seed=5, tag="v2")
    assert v1 != v2 and dataset_version(repo / "data" / "shapes") == v2  # the workspace holds v2

    fetched = fetch_data("v1", "data/shapes", tmp_path / "fetched", repo=repo)
    assert dataset_version(fetched) == v1  # byte for byte the older version, by DVC's own hash
    assert dataset_version(repo / "data" / "shapes") == v2  # and the workspace is untouched
    reproduced = _train(fetched, tmp_path / "run_v1_again")
    assert _same_weights(reproduced["weights"], original["weights"])  # bit for bit the same training
    assert reproduced["history"] == original["history"]
    newer = _train(repo / "data" / "shapes", tmp_path / "run_v2")
    assert not _same_weights(newer["weights"], original["weights"])

    with pytest.raises(ConfigError, match="--data-rev nosuchrev"):
        fetch_data("nosuchrev", "data/shapes", tmp_path / "bad", repo=repo)
    with pytest.raises(ConfigError, match="data/absent"):
        fetch_data("v1", "data/absent", tmp_path / "bad", repo=repo)
    assert not (tmp_path / "bad").exists()
