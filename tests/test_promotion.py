"""Registry promotion and ``detcurate models`` against a real sqlite MLflow registry."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlflow")

from curation_core.errors import ConfigError  # noqa: E402
from pipelines import promotion  # noqa: E402
from pipelines.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def _shared_db(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def client(_shared_db, monkeypatch, request, tmp_path):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", _shared_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    monkeypatch.chdir(tmp_path)
    return MlflowClient(tracking_uri=_shared_db)


def _version(client, name, ap, data_version="a1.dir", metric="eval/AP"):
    """A model version logged from a real run whose ``metric`` is ``ap`` (no model files: promotion
    reads only the run and the tags)."""
    from pipelines.tracking import experiment_id

    run = client.create_run(experiment_id(client))
    client.log_metric(run.info.run_id, metric, ap)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                          tags={"dataset.version": data_version})
    return str(version.version)


def _champion(client, name):
    return str(client.get_registered_model(name).aliases.get("champion"))


def test_first_version_becomes_champion(client):
    v1 = _version(client, "first", 0.30)
    decision = promotion.promote("first")
    assert decision.promoted and decision.champion_version is None and decision.champion_value is None
    assert _champion(client, "first") == v1
    tags = client.get_model_version("first", v1).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.candidate_value"] == "0.3"


def test_better_version_takes_champion_with_both_numbers_recorded(client):
    v1 = _version(client, "better", 0.30)
    promotion.promote("better", v1)
    v2 = _version(client, "better", 0.35)
    decision = promotion.promote("better", v2)
    assert decision.promoted and decision.champion_version == v1
    assert (decision.candidate_value, decision.champion_value) == (0.35, 0.30)
    assert _champion(client, "better") == v2
    tags = client.get_model_version("better", v2).tags
    assert tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.candidate_value"]) == 0.35 and float(tags["promotion.champion_value"]) == 0.30
    assert tags["promotion.champion_version"] == v1 and tags["promotion.data_version"] == "a1.dir"


@pytest.mark.parametrize("ap", [0.25, 0.30])
def test_worse_or_equal_version_leaves_champion(client, ap):
    name = f"keep-{ap}"
    v1 = _version(client, name, 0.30)
    promotion.promote(name, v1)
    v2 = _version(client, name, ap)
    decision = promotion.promote(name, v2)
    assert not decision.promoted and _champion(client, name) == v1
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "kept" and float(tags["promotion.champion_value"]) == 0.30
    assert "promotion.decision" in client.get_model_version(name, v1).tags  # its own, from its promotion


def test_min_improvement(client):
    v1 = _version(client, "margin", 0.30)
    promotion.promote("margin", v1)
    v2 = _version(client, "margin", 0.305)
    assert not promotion.promote("margin", v2, min_improvement=0.01).promoted
    assert promotion.promote("margin", v2, min_improvement=0.001).promoted


def test_other_data_version_is_evaluated_again_never_compared_across(client):
    v1 = _version(client, "rev", 0.90, data_version="old.dir")
    promotion.promote("rev", v1)
    v2 = _version(client, "rev", 0.40, data_version="new.dir")
    with pytest.raises(ConfigError, match=r"evaluated on data version old.dir, the candidate on new.dir"):
        promotion.promote("rev", v2)
    assert _champion(client, "rev") == v1
    calls = []

    def evaluate(model_version, data_version):
        calls.append((str(model_version.version), data_version))
        return 0.35

    decision = promotion.promote("rev", v2, evaluate=evaluate)
    assert calls == [(v1, "new.dir")]
    assert decision.promoted and decision.champion_value == 0.35 and _champion(client, "rev") == v2


def test_bad_input_is_one_clear_error(client):
    with pytest.raises(ConfigError, match="'absent': no such registered model"):
        promotion.promote("absent")
    v1 = _version(client, "nometric", 0.3, metric="val/AP")
    with pytest.raises(ConfigError, match=r"has no metric 'eval/AP' \(it has: val/AP\)"):
        promotion.promote("nometric", v1)
    with pytest.raises(ConfigError, match="no version 7"):
        promotion.promote("nometric", 7)


def test_reserved_alias_names(client):
    """MLflow 3 reserves 'latest' and 'v<N>' (checked here: it refuses them), so they are refused first."""
    from mlflow.exceptions import MlflowException

    v1 = _version(client, "aliases", 0.3)
    for alias in ("latest", "LATEST", "v2"):
        with pytest.raises(MlflowException, match="reserved"):
            client.set_registered_model_alias("aliases", alias, v1)
        with pytest.raises(ConfigError, match="reserved"):
            promotion.promote("aliases", v1, alias=alias)
    assert promotion.check_alias("champion") == "champion" and promotion.check_alias("teacher-2") == "teacher-2"


def test_listing_has_the_aliases_that_search_results_lack(client):
    v1 = _version(client, "listed", 0.30, data_version="d1.dir")
    promotion.promote("listed", v1)
    client.set_registered_model_alias("listed", "teacher", v1)
    v2 = _version(client, "listed", 0.20, data_version="d1.dir")
    promotion.promote("listed", v2)
    # What the listing must not rely on: aliases of search results (empty in MLflow 3.17).
    searched = {str(v.version): list(v.aliases) for v in client.search_model_versions("name='listed'")}
    exact = {v: list(client.get_model_version("listed", v).aliases) for v in (v1, v2)}
    assert sorted(exact[v1]) == ["champion", "teacher"] and exact[v2] == []
    rows = promotion.list_versions(["listed"])
    assert [(r["version"], r["aliases"], r["decision"]) for r in rows] == \
        [(v2, [], "kept"), (v1, ["champion", "teacher"], "promoted")]
    assert rows[1]["metrics"] == {"eval/AP": 0.30} and rows[1]["data_version"] == "d1.dir"
    assert searched.keys() == exact.keys()


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_models_command(client, capsys):
    v1 = _version(client, "cli-model", 0.30)
    code, out, _ = _cli(["models", "promote", "cli-model", "--json"], capsys)
    assert code == 0 and json.loads(out)["promoted"] is True
    _version(client, "cli-model", 0.10)
    code, out, _ = _cli(["models", "promote", "cli-model"], capsys)
    assert code == 0 and f"champion stays at version {v1}" in out
    code, out, _ = _cli(["models", "--name", "cli-model", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["aliases"] for r in rows] == [[], ["champion"]]
    code, out, _ = _cli(["models", "--name", "cli-model"], capsys)
    assert code == 0 and out.startswith("Registered models")
    code, _, err = _cli(["models", "promote", "no-such-model"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no-such-model" in err
    code, _, err = _cli(["models", "promote", "cli-model", "--annotations", "a.json"], capsys)
    assert code == 2 and "give both or neither" in err


def test_models_table_in_a_pipe_is_whole(client, capsys):
    """Into a pipe (captured stdout, not a terminal) the 8-column table keeps every header and every
    value whole, the full data version included, each row on one line, though wider than 80 columns."""
    name = "a-registered-model-with-a-rather-long-name"
    data_version = "0123456789abcdef0123456789abcdef.dir"
    v1 = _version(client, name, 0.31234, data_version=data_version)
    run_id = client.get_model_version(name, v1).run_id
    client.log_metric(run_id, "eval/AP50", 0.55)
    client.log_metric(run_id, "val/AP", 0.29)
    promotion.promote(name, v1)
    client.set_registered_model_alias(name, "teacher", v1)
    v2 = _version(client, name, 0.2, data_version=data_version)
    promotion.promote(name, v2)
    code, out, _ = _cli(["models", "--name", name], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "Registered models" and max(map(len, lines)) > 80
    header = next(line for line in lines if "model" in line and "version" in line)
    for column in ["model", "version", "aliases", "data version", *promotion.LIST_METRICS, "promotion"]:
        assert f" {column} " in header, column
    assert "…" not in out
    row1 = next(line for line in lines if f" {v1} " in line and name in line)
    for value in (name, "champion,teacher", data_version, "0.3123", "0.5500", "0.2900", "promoted"):
        assert f" {value} " in row1, value
    row2 = next(line for line in lines if f" {v2} " in line and name in line)
    assert all(f" {value} " in row2 for value in (name, data_version, "0.2000", "kept"))


def test_promote_command_waits_for_the_lock_then_fails_in_one_line(client, capsys):
    from pipelines.promotion_lock import promotion_lock

    v1 = _version(client, "locked", 0.3)
    with promotion_lock(client.tracking_uri, "locked") as held:
        code, _, err = _cli(["models", "promote", "locked", "--lock-timeout", "0.2"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"promotion of model 'locked': {held.describe()} not obtained within 0.2 s" in err
    assert "promotion.decision" not in client.get_model_version("locked", v1).tags
    code, out, _ = _cli(["models", "promote", "locked", "--lock-timeout", "0.2", "--json"], capsys)
    assert code == 0 and json.loads(out)["promoted"] and _champion(client, "locked") == v1


@pytest.mark.slow
def test_promotion_reevaluates_a_real_champion_on_the_new_data(client, capsys, tmp_path):
    """Real checkpoints through the real commands: the champion was evaluated on data version A, the
    candidate (the same checkpoint) on B; promote evaluates the champion on B, finds the same AP and
    keeps it. About 15 s on an idle machine (35 s on a loaded one)."""
    import torch
    from engine_fixtures import make_shapes_coco, tiny_training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result, _ = tiny_training(tmp_path / "train", max_iter=2)
        ann_a, images = make_shapes_coco(tmp_path / "a", split="val", num_images=4, seed=1, crowd=False)
        ann_b, images_b = make_shapes_coco(tmp_path / "b", split="val", num_images=4, seed=2, crowd=False)
        ckpt = str(result.checkpoint)
        evaluate = ["evaluate", "--checkpoint", ckpt, "--register-as", "real"]
        assert _cli([*evaluate, "--annotations", str(ann_a), "--images", str(images)], capsys)[0] == 0
        assert _cli([*evaluate, "--annotations", str(ann_b), "--images", str(images_b), "--alias", ""], capsys)[0] == 0
        rows = promotion.list_versions(["real"])
        assert [r["aliases"] for r in rows] == [[], ["champion"]] and rows[0]["data_version"] != rows[1]["data_version"]
        code, _, err = _cli(["models", "promote", "real", "--annotations", str(ann_a), "--images", str(images)], capsys)
        assert code == 2 and "give the candidate's validation data" in err
        code, out, _ = _cli(["models", "promote", "real", "--annotations", str(ann_b), "--images", str(images_b),
                             "--json"], capsys)
    finally:
        torch.set_num_threads(threads)
    decision = json.loads(out)
    assert code == 0 and not decision["promoted"] and decision["champion_version"] == "1"
    assert decision["champion_value"] == decision["candidate_value"] == rows[0]["metrics"]["eval/AP"]
    assert _champion(client, "real") == "1"
