"""The CPU step image, built for real with buildah, runs a pipeline step (``detcurate data synth``).

Runs with ``DETCURATE_IMAGE_TEST=1`` where buildah is present and we are root (buildah's chroot
isolation); skipped with the reason elsewhere (without the variable: the build takes more than half the
suite's time budget). The base is the local Debian bookworm image of ``infra/images/build-base.sh`` (debootstrap
from Debian's mirror, about 1 minute, kept for the next run); the package index settings of this
machine (``pip config list``: index URLs, find-links, the CA bundle) are handed to the build as build
arguments, read-only volumes and a secret. pip's downloads are cached in
``$DETCURATE_IMAGE_PIP_CACHE`` (default ``~/.cache/detcurate/image-pip``) for the next build.

Slow: the venv holds the pinned CUDA builds of torch (5.5 GB), downloaded by every build here (pip's
cache stayed empty on this machine, on the host as in the build: its package downloads are not kept).
Measured on the 2-core machine: 15.5 minutes (other tests running), 21.5 minutes when heavily loaded;
pip's install step is nearly all of it. The built image and its containers are removed afterwards;
the base image (176 MB) is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/detcurate-base:bookworm"
pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if os.environ.get("DETCURATE_IMAGE_TEST") != "1":
        # 15-20 minutes on 2 cores, nearly all of it pip installing torch into the image: more than half
        # the suite's time budget, so the build is run on request (and before a release), not by default.
        return "builds the 5.5 GB CPU image (15-20 min on 2 cores): set DETCURATE_IMAGE_TEST=1 to run it"
    if shutil.which("buildah") is None:
        return "buildah not installed (apt-get install -y buildah debootstrap)"
    if os.geteuid() != 0:
        return "buildah's chroot isolation needs root here"
    exists = subprocess.run(["buildah", "inspect", "--type", "image", BASE_IMAGE], capture_output=True).returncode == 0
    if not exists and shutil.which("debootstrap") is None:
        return f"no base image {BASE_IMAGE} and no debootstrap to make it (apt-get install -y debootstrap)"
    return None


def _pip_settings() -> dict[str, str]:
    """This machine's pip settings (``pip config list`` of the test's interpreter, then PIP_* variables)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.split(".", 1)[-1].strip()
        settings[name] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "find-links", "cert"):
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            settings[name] = env
    return settings


def _build_args(tag: str, pip_cache: Path) -> list[str]:
    settings = _pip_settings()
    args = ["buildah", "build", "--isolation", "chroot", "--layers=false", "-f", "infra/images/Containerfile",
            "--ignorefile", "infra/images/Containerfile.dockerignore", "--target", "cpu",
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-v", f"{pip_cache}:/pip-cache", "-t", tag]
    folders: set[str] = set()
    for name, arg in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                      ("find-links", "PIP_FIND_LINKS")):
        value = settings.get(name)
        if not value:
            continue
        kept = []
        for location in value.split():
            path = location[len("file://"):] if location.startswith("file://") else location
            if "://" in location and not location.startswith("file://"):
                kept.append(location)
            elif Path(path).is_dir():  # a local mirror: mounted read-only at the same path
                kept.append(location)
                folders.add(str(Path(path).parent if path.endswith("/simple") else Path(path)))
        if kept:
            args += ["--build-arg", f"{arg}={' '.join(kept)}"]
    for folder in sorted(folders):
        args += ["-v", f"{folder}:{folder}:ro"]
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        args += ["--secret", f"id=pip_cert,src={cert}"]
    return [*args, "."]


def _buildah(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)


def test_cpu_image_builds_and_runs_a_pipeline_step(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = subprocess.run(["bash", str(ROOT / "infra" / "images" / "build-base.sh"), BASE_IMAGE],
                          capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr[-3000:]
    pip_cache = Path(os.environ.get("DETCURATE_IMAGE_PIP_CACHE", Path.home() / ".cache" / "detcurate" / "image-pip"))
    pip_cache.mkdir(parents=True, exist_ok=True)
    tag = f"localhost/detcurate-test:{uuid.uuid4().hex[:8]}"
    container = None
    try:
        build = subprocess.run(_build_args(tag, pip_cache), cwd=ROOT, capture_output=True, text=True, timeout=3600)
        assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
        config = json.loads(_buildah("inspect", "--type", "image", tag).stdout)["OCIv1"]["config"]
        assert config["Entrypoint"] == ["detcurate"] and config["User"] == "detcurate"
        assert config["WorkingDir"] == "/work"
        container = _buildah("from", tag).stdout.strip()
        work = tmp_path / "work"
        work.mkdir()
        os.chown(work, 1000, 1000)
        run = _buildah("run", "--isolation", "chroot", "-v", f"{work}:/work", container, "--", "detcurate", "data",
                       "synth", "--out", "/work/synth", "--train", "4", "--val", "2", "--size", "64", "--seed", "0")
        assert run.returncode == 0, run.stderr[-3000:]
        annotations = json.loads((work / "synth" / "train" / "annotations.json").read_text())
        assert len(annotations["images"]) == 4 and len(list((work / "synth" / "train" / "images").glob("*.png"))) == 4
        assert (work / "synth" / "train" / "annotations.json").stat().st_uid == 1000  # written by the non-root user
        probe = _buildah("run", "--isolation", "chroot", container, "--", "python", "-c",
                         "import os, torch, mlflow, psycopg, pipelines.cli; print(os.getuid(), torch.__version__)")
        assert probe.returncode == 0 and probe.stdout.split()[0] == "1000", probe.stderr[-2000:]
    finally:
        if container:
            _buildah("rm", container)
        _buildah("rmi", "--force", tag)
    assert _buildah("inspect", "--type", "image", tag).returncode != 0
