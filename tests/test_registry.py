"""Model registry: a trained checkpoint registered under an alias predicts exactly like the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlflow")

from engine_fixtures import tiny_training  # noqa: E402

from curation_core.engine.predict import load_detector  # noqa: E402
from curation_core.errors import CheckpointError  # noqa: E402
from pipelines import registry  # noqa: E402


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
def checkpoint(tmp_path_factory):
    result, _ = tiny_training(tmp_path_factory.mktemp("train"), max_iter=2)
    return result.checkpoint


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


def _images(seed: int, sizes=((64, 64), (48, 80), (64, 64))):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def _assert_same_detections(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert set(g) == {"boxes", "scores", "labels"}
        np.testing.assert_array_equal(g["labels"], e["labels"])
        np.testing.assert_allclose(g["boxes"], e["boxes"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(g["scores"], e["scores"], rtol=0, atol=1e-6)


def test_registered_model_predicts_like_the_checkpoint(mlflow_uri, checkpoint):
    from mlflow import MlflowClient

    version = registry.register_checkpoint(checkpoint, "tiny-detector", tags={"dataset.version": "abc.dir"})
    assert version.version == "1" or version.version == 1
    assert "champion" in version.aliases and version.tags["dataset.version"] == "abc.dir"
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(version.run_id)
    assert run.info.run_name == "register tiny-detector" and run.info.status == "FINISHED"

    model = registry.load_registered("models:/tiny-detector@champion")
    images = _images(0)
    expected = load_detector(checkpoint).predict(images)
    assert any(len(d["scores"]) for d in expected), "the tiny detector should output some boxes"
    _assert_same_detections(model.predict(images), expected)
    _assert_same_detections(model.predict(np.stack([images[0], images[2]])), [expected[0], expected[2]])
    _assert_same_detections(model.predict(images[1]), [expected[1]])


def test_alias_moves_to_the_newest_version(mlflow_uri, checkpoint):
    from mlflow import MlflowClient

    first = registry.register_checkpoint(checkpoint, "m")
    second = registry.register_checkpoint(checkpoint, "m")
    unaliased = registry.register_checkpoint(checkpoint, "m", alias=None)
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_model_version_by_alias("m", "champion").version == second.version
    assert int(first.version) < int(second.version) < int(unaliased.version)
    assert client.get_model_version("m", unaliased.version).aliases == []


def test_registering_under_an_existing_run(mlflow_uri, checkpoint):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    from pipelines.tracking import experiment_id

    run_id = client.create_run(experiment_id(client), run_name="train").info.run_id
    version = registry.register_checkpoint(checkpoint, "under-run", run_id=run_id)
    assert version.run_id == run_id
    assert len(client.search_runs([experiment_id(client)])) == 1


def test_register_rejects_bad_checkpoints(mlflow_uri, tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint file does not exist"):
        registry.register_checkpoint(tmp_path / "missing.pt", "m")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt: corrupt, truncated or not a safe checkpoint"):
        registry.register_checkpoint(bad, "m")


def test_predict_input_shapes():
    image = np.zeros((5, 6, 3), np.uint8)
    assert len(registry.as_image_list([image, image])) == 2
    assert len(registry.as_image_list(image)) == 1
    assert len(registry.as_image_list(np.zeros((4, 5, 6, 3), np.uint8))) == 4
    with pytest.raises(ValueError, match=r"expects \(H, W, 3\) or \(N, H, W, 3\) arrays; got an array of shape \(5, 6\)"):
        registry.as_image_list(np.zeros((5, 6)))
    with pytest.raises(ValueError, match=r"expects a list of \(H, W, 3\) uint8 arrays; got dict"):
        registry.as_image_list({"image": image})


def test_pip_requirements_are_pinned_and_skip_absent_distributions():
    requirements = registry.pip_requirements(("numpy", "surely-not-installed-dist"))
    assert requirements == [f"numpy=={np.__version__}"]


def test_a_registered_teacher_resolves_to_its_checkpoint_and_curates(mlflow_uri, checkpoint, tmp_path):
    """``curation.teacher: models:/NAME@teacher`` -> the registered checkpoint, used by a curated run."""
    import torch

    from components.train import train_config
    from curation_core.engine.checkpoint import load_checkpoint
    from curation_core.engine.config import config_from_dict, load_config
    from curation_core.errors import ConfigError

    registry.register_checkpoint(checkpoint, "resolve-me", alias="teacher")
    local = registry.resolve_checkpoint("models:/resolve-me@teacher")
    original, resolved = load_checkpoint(checkpoint), load_checkpoint(local)
    assert all(torch.equal(original["model"][k], resolved["model"][k]) for k in original["model"])
    with pytest.raises(ConfigError, match=r"models:/nobody@teacher: cannot be resolved in the model registry"):
        registry.resolve_checkpoint("models:/nobody@teacher")
    raw = load_config(checkpoint.parent / "config.yaml").to_dict()
    raw["train"].update(output_dir=str(tmp_path / "curated"), batch_size=2)
    raw["schedule"].update(max_iter=2)
    raw["curation"] = {"method": "detgain", "teacher": "models:/resolve-me@teacher", "super_batch": 4}
    result = train_config(config_from_dict(raw), resolve_uri=registry.resolve_checkpoint)
    assert result.iterations == 2 and (result.output_dir / "selections.csv").is_file()
