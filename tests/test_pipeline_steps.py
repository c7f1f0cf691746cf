"""Pipeline steps: outputs published whole, idempotent re-runs, one-line errors for bad parameters, data versions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.staging import DONE_NAME, finished, scratch_dir, scratch_output, staged_output, staging_dir
from curation_core.errors import ConfigError
from pipelines.profiles import check, pipeline_params

ROOT = Path(__file__).resolve().parents[1]
DETCURATE = [sys.executable, "-c", "from pipelines.cli import main; main()"]


def test_staged_output_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "step"
    with pytest.raises(RuntimeError), staged_output(out, step="s", fingerprint={"a": 1}, result={}) as stage:
        (stage / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert not out.exists() and (staging_dir(out) / "half.txt").is_file()  # kept for the next run to continue
    result: dict = {}
    with staged_output(out, step="s", fingerprint={"a": 1}, result=result) as stage:
        assert (stage / "half.txt").read_text() == "half"  # same parameters: continued
        (stage / "full.txt").write_text("full")
        result["n"] = 2
    assert sorted(p.name for p in out.iterdir()) == sorted([DONE_NAME, "full.txt", "half.txt"])
    assert not staging_dir(out).exists()
    assert finished(out, {"a": 1})["result"] == {"n": 2} and finished(out, {"a": 2}) is None
    with pytest.raises(RuntimeError), staged_output(out, step="s", fingerprint={"a": 2}, result={}) as stage:
        assert not (stage / "half.txt").exists()  # other parameters: a clean start
        raise RuntimeError
    assert (out / "full.txt").is_file()  # the finished output of {"a": 1} is untouched


def test_a_retry_in_a_new_output_folder_resumes_from_the_scratch_of_its_key(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.tracking_hook
    from components.train import train_model
    from curation_core.engine.hooks import Hook
    from pipelines.steps import run_step, train_step

    class Attempt(Hook):
        """Records the iteration the run starts at (after a checkpoint is restored); kills it after step ``kill_at``."""

        def __init__(self, kill_at: int | None = None) -> None:
            self.kill_at, self.started_at = kill_at, None

        def before_train(self) -> None:
            self.started_at = self.trainer.iter

        def after_step(self) -> None:
            if self.trainer.iter == self.kill_at:
                raise RuntimeError("killed")

    params = pipeline_params("smoke", overrides=["data.train=16", "data.val=8", "teacher.train.eval_every=0"])
    assert (params["teacher"]["train"]["checkpoint_every"], params["teacher"]["schedule"]["max_iter"]) == (3, 6)
    run_step("data", params, tmp_path, track=False)
    root, key = tmp_path / "pvc" / "scratch", ("run-1", "train")
    first, second = Attempt(kill_at=4), Attempt()
    pod1, pod2 = tmp_path / "pod1" / "model", tmp_path / "pod2" / "model"  # each attempt: a fresh output path
    with pytest.raises(RuntimeError, match="killed"), scratch_output(pod1, root=root, key=key) as out:
        train_model(params["teacher"], out, data_dir=tmp_path / "data", hooks=[first])
    assert out == scratch_dir(root, key) / "model" and (staging_dir(out) / "checkpoint.pt").is_file()
    assert not pod1.exists() and not staging_dir(pod1).exists()  # the killed attempt published nothing
    tagged: list[dict[str, str]] = []  # the MLflow run's tags (tracking itself is tested elsewhere)
    monkeypatch.setattr(pipelines.tracking_hook, "training_hooks",
                        lambda config, *, run_name, tags: tagged.append(dict(tags)) or [second])
    with scratch_output(pod2, root=root, key=key) as out:
        result = train_step("teacher", params, out, data_dir=tmp_path / "data", track=True, published_dir=pod2)
    assert (first.started_at, second.started_at, result["iterations"]) == (0, 3, 6)  # resumed at its checkpoint
    assert {p.name for p in pod2.iterdir()} >= {"checkpoint.pt", "metrics.json", "config.yaml", DONE_NAME}
    record = json.loads((pod2 / DONE_NAME).read_text())
    assert record["result"]["iterations"] == 6
    # the record and the run name where the output is, not the scratch folder that is deleted
    assert record["result"]["checkpoint"] == str(pod2 / "checkpoint.pt")
    assert str(root) not in (pod2 / DONE_NAME).read_text() and str(out) in json.dumps(result)
    assert tagged == [{"detcurate.output_dir": str(pod2.resolve())}]
    assert not staging_dir(pod2).exists() and list(root.iterdir()) == []  # published whole; the scratch cleaned


def test_scratch_is_per_key_and_absent_without_a_root(tmp_path: Path) -> None:
    root = tmp_path / "scratch"

    def attempt(out_dir: Path, key: tuple[str, ...], *, fail: bool) -> bool:
        """A step that resumes: True when it found the first attempt's marker."""
        with scratch_output(out_dir, root=root, key=key) as out, \
                staged_output(out, step="s", fingerprint={"a": 1}, result={}) as stage:
            found = (stage / "half.txt").is_file()
            (stage / "half.txt").write_text("half")
            if fail:
                raise RuntimeError("killed")
        return found

    with pytest.raises(RuntimeError):
        attempt(tmp_path / "a1" / "out", ("run-1", "train"), fail=True)
    assert not attempt(tmp_path / "b1" / "out", ("run-2", "train"), fail=False)  # another run
    assert not attempt(tmp_path / "c1" / "out", ("run-1", "train-student"), fail=False)  # another task
    assert attempt(tmp_path / "a2" / "out", ("run-1", "train"), fail=False)  # the retry of the first
    assert list(root.iterdir()) == [] and (tmp_path / "a2" / "out" / "half.txt").is_file()
    with scratch_output(tmp_path / "here", root="", key=("{{$.pipeline_job_uuid}}",)) as out:
        assert out == tmp_path / "here"  # no root: the output folder itself, the key unread
    assert list(root.iterdir()) == []
    for bad, shown in ((("{{$.pipeline_job_uuid}}", "train"), "'{{$.pipeline_job_uuid}}' at part 0"),
                       (("run-1", ".."), "'..' at part 1"), (("run-1", "a/b"), "'a/b' at part 1"), ((), "got ()")):
        with pytest.raises(ConfigError, match=re.escape(shown)) as caught, \
                scratch_output(tmp_path / "x", root=root, key=bad):
            pass
        assert "\n" not in str(caught.value) and not (tmp_path / "x").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.model.backbone=huge"], "teacher: model.backbone: invalid value 'huge'"),
    (["data.train=0"], "SynthConfig(train=) expects an integer >= 1; got 0"),
    (["student.train.batch_size=many"], "student: train.batch_size"),
    (["nosuch.key=1"], "--set: nosuch: not a section"),
    (["data.trian=5"], "--set: data.trian: unknown key"),
    (["teacher"], "--set: expects key=value"),
    (["robustness.losses=[focal, nope]"], "smoke profile, robustness: losses.1: Input should be 'focal' or 'brl'"),
    (["robustness.modes=[]"], "smoke profile, robustness: modes: "),
    (["robustness.training.schedule.max_iter=0"], "smoke profile, robustness: schedule.max_iter"),
    (["robustness.training.model.backbone=huge"], "smoke profile, robustness: model.backbone: invalid value 'huge'"),
    (["robustness.trainig.x=1"], "--set: robustness.trainig: not a section"),
    (["balance.near_threshold=-0.1"], "smoke profile, balance: near_threshold: expects a number >= 0.0; got -0.1"),
    (["promotion.min_improvement=x"], "smoke profile, promotion: min_improvement: expects a number"),
    (["active_learning.rounds=-1"], "smoke profile, active_learning: rounds: Input should be greater than or equal to 0"),
    (["active_learning.level=pixel"], "smoke profile, active_learning: level: invalid value 'pixel'; valid choices: box, "),
    (["active_learning.measure=detgain"], "smoke profile, active_learning: measure: detgain needs a teacher checkpoint"),
    (["active_learning.measure=coreset"], "smoke profile, active_learning: measure: box-level coreset needs RoI features"),
    (["active_learning.training.model.detector=faster_rcnn"], "smoke profile, active_learning: noisy_score_thresh: "),
    (["active_learning.training.optim.lr=-1"], "smoke profile, active_learning: optim.lr: Input should be greater than 0"),
    (["active_learning.budgte=5"], "--set: active_learning.budgte: unknown key; valid keys: budget, "),
    (["label_quality.threshold=1.5"], "smoke profile, label_quality: threshold: expects a number in [0, 1]; got 1.5"),
    (["label_quality.top=0"], "smoke profile, label_quality: top: expects an integer >= 1; got 0"),
])
def test_a_bad_parameter_fails_before_any_step(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check(pipeline_params("smoke", overrides=overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_profiles_give_every_model_a_complete_config() -> None:
    params = pipeline_params("smoke", seed=3, overrides=["teacher.schedule.max_iter=4"])
    check(params)
    assert params["data"]["seed"] == 3 and {params[m]["train"]["seed"] for m in ("teacher", "student")} == {3}
    assert params["teacher"]["schedule"]["max_iter"] == 4 and params["student"]["schedule"]["max_iter"] == 6
    assert params["student_curated"]["curation"]["method"] == "detgain"
    assert "teacher" not in params["student_curated"]["curation"]  # the run's own teacher step
    with pytest.raises(ConfigError, match="--profile: invalid value 'huge'; valid choices: smoke, demo, full"):
        pipeline_params("huge")


def test_profiles_size_the_robustness_grid_and_the_other_steps() -> None:
    from pipelines.profiles import robustness_grid

    for profile, modes in (("smoke", 2), ("demo", 2), ("full", 5)):
        params = pipeline_params(profile, seed=4)
        grid = robustness_grid(params, base_config="base.yaml")
        assert len(grid["modes"]) == modes and grid["losses"] == ["focal", "brl"] and grid["seeds"] == [4]
        assert grid["base"] == {"config": "base.yaml", "overrides": grid["base"]["overrides"]}
        assert grid["base"]["overrides"]["model.detector"] == "retinanet"
        assert grid["base"]["overrides"]["train.eval_every"] == 0  # one evaluation per cell, at its end
        assert params["balance"]["threshold"] == 0.3 and params["promotion"]["metric"] == "eval/AP"
    demo = pipeline_params("demo")
    assert demo["student_curated"]["schedule"]["max_iter"] == demo["student"]["schedule"]["max_iter"] == 400
    for profile, rounds, iterations in (("smoke", 2, 4 + 2 * 2), ("demo", 2, 100 + 2 * 50), ("full", 4, 1600 + 4 * 400)):
        section = pipeline_params(profile, seed=4)["active_learning"]
        assert (section["rounds"], section["initial_iters"] + section["rounds"] * section["round_iters"]) == (
            rounds, iterations)
        assert section["seed"] == 4 and section["training"]["model"]["detector"] == "retinanet"  # noisy labels dampened
        assert pipeline_params(profile)["label_quality"] == {"threshold": 0.5, "top": 10}
    changed = pipeline_params("smoke", overrides=["robustness.training.schedule.max_iter=9", "robustness.seeds=[0, 1]"])
    check(changed)
    assert robustness_grid(changed, base_config="b")["base"]["overrides"]["schedule.max_iter"] == 9
    assert changed["robustness"]["seeds"] == [0, 1]


def test_dvc_stages_follow_the_graph(tmp_path: Path) -> None:
    from pipelines.dvc_runner import dvc_stages
    from pipelines.steps import GRAPH, layout

    stages = dvc_stages(tmp_path)
    assert list(stages) == list(GRAPH)
    where = {name: path.relative_to(tmp_path).as_posix() for name, path in layout(tmp_path).items()}
    for name, inputs in GRAPH.items():
        assert stages[name]["deps"] == sorted(where[i] for i in inputs), name
        assert stages[name]["outs"] == [{where[name]: {"cache": False}}]
    assert stages["train_student"]["deps"] == ["balance", "data"]  # trains on the manifest
    assert {"robustness", "student"} <= set(stages["robustness"]["params"])
    assert "promotion" in stages["promote"]["params"] and "balance" in stages["balance"]["params"]
    assert {"active_learning", "student"} <= set(stages["active_learning"]["params"])
    assert stages["active_learning"]["deps"] == ["data"] and stages["label_quality"]["deps"] == ["data", "models/teacher"]
    assert "label_quality" in stages["label_quality"]["params"]
    assert {"active_learning", "label_quality"} <= set(stages["report"]["deps"])
    order = list(GRAPH)
    assert order[-1] == "promote" and all(order.index(i) < order.index(n) for n, ins in GRAPH.items() for i in ins)


def test_promotion_without_tracking_says_so_and_a_missing_registration_is_named(tmp_path: Path) -> None:
    from curation_core.errors import DataError
    from pipelines.steps import PROMOTION_NAME, promote_step

    params = pipeline_params("smoke")
    evals = {"student": tmp_path / "eval_s", "student_curated": tmp_path / "eval_c"}
    result = promote_step(params, evals, tmp_path / "promotion", data_dir=tmp_path / "data", track=False)
    assert result == {"tracked": False, "decisions": [], "champion": None}
    assert json.loads((tmp_path / "promotion" / PROMOTION_NAME).read_text()) == result
    with pytest.raises(DataError, match=r"eval_s/registration.json: <file>: model 'student' was not registered") as caught:
        promote_step(params, evals, tmp_path / "promotion2", data_dir=tmp_path / "data", track=True)
    assert "\n" not in str(caught.value) and not (tmp_path / "promotion2").exists()


def test_cli_bad_parameter_is_one_line_exit_2_and_nothing_runs(tmp_path: Path) -> None:
    out = subprocess.run([*DETCURATE, "pipeline", "run", "--runner", "kfp-local", "--profile", "smoke", "--no-track",
                          "--out", str(tmp_path / "run"), "--set", "student.optim.lr=-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "student: optim.lr" in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()


def test_unreachable_mlflow_server_is_one_line_naming_the_url(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    out = subprocess.run([*DETCURATE, "pipeline", "run", "--runner", "airflow", "--profile", "smoke",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in out.stderr
    assert not (tmp_path / "run").exists()


def _tiny_params() -> dict:
    return pipeline_params("smoke", overrides=["data.train=16", "data.val=8", "teacher.schedule.max_iter=400",
                                               "teacher.train.eval_every=0", "teacher.train.checkpoint_every=2"])


@pytest.mark.slow
def test_a_training_step_killed_halfway_leaves_no_output_and_a_rerun_finishes(tmp_path: Path) -> None:
    from pipelines.steps import layout, run_step

    params = _tiny_params()
    run_step("data", params, tmp_path, track=False)
    (tmp_path / "params.json").write_text(json.dumps(params))
    command = [*DETCURATE, "pipeline", "step", "train_teacher", "--params", str(tmp_path / "params.json"),
               "--workdir", str(tmp_path), "--no-track"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    model = layout(tmp_path)["train_teacher"]
    deadline = time.monotonic() + 180
    while not (staging_dir(model) / "checkpoint.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.communicate(timeout=60)
    assert not model.exists() and (staging_dir(model) / "checkpoint.pt").is_file()
    params["teacher"]["schedule"]["max_iter"] = 6  # a shorter schedule is another config: a clean start
    (tmp_path / "params.json").write_text(json.dumps(params))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not staging_dir(model).exists()
    record = json.loads((model / DONE_NAME).read_text())
    assert record["result"]["iterations"] == 6 and (model / "checkpoint.pt").is_file()
    stamp = (model / "checkpoint.pt").stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # finished: reused, not retrained
    assert again.returncode == 0 and json.loads((model / DONE_NAME).read_text()) == record
    assert (model / "checkpoint.pt").stat().st_mtime_ns == stamp


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_data_rev_reads_the_data_of_that_revision(tmp_path: Path) -> None:
    from pipelines.steps import data_step

    repo = tmp_path / "repo"
    images = repo / "data" / "synth"
    subprocess.run([sys.executable, "-c", "from pipelines.cli import main; main()", "data", "synth", "--out",
                    str(images), "--train", "4", "--val", "2", "--size", "32", "--seed", "1"], check=True,
                   capture_output=True)
    _git("init", "-q", cwd=repo)
    _git("config", "user.email", "t@example.com", cwd=repo)
    _git("config", "user.name", "t", cwd=repo)
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "add", "-q", "data/synth"], cwd=repo, check=True)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "v1", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo)
    first_train = json.loads((images / "train" / "annotations.json").read_text())
    ann = images / "train" / "annotations.json"
    changed = {**first_train, "annotations": first_train["annotations"][:1]}
    ann.write_text(json.dumps(changed))
    subprocess.run([dvc, "add", "-q", "data/synth"], cwd=repo, check=True)
    _git("commit", "-q", "-am", "v2", cwd=repo)
    params = pipeline_params("smoke")
    summary = data_step(params, tmp_path / "at_v1", data_rev=first, repo=repo)
    assert summary["train"] == {"images": 4, "annotations": len(first_train["annotations"])}
    assert json.loads((tmp_path / "at_v1" / "train" / "annotations.json").read_text()) == first_train
    assert data_step(params, tmp_path / "at_v2", data_rev="HEAD", repo=repo)["train"]["annotations"] == 1
    with pytest.raises(ConfigError, match=r"--data-rev no-such-rev: cannot read data/synth at that revision"):
        data_step(params, tmp_path / "bad", data_rev="no-such-rev", repo=repo)
    assert not (tmp_path / "bad").exists()


def test_run_tags_carry_the_data_revision() -> None:
    from pipelines.steps import run_tags

    tags = run_tags(pipeline_params("smoke", seed=2), pipeline_run="r1", data_rev="v1.0")
    assert tags == {"detcurate.profile": "smoke", "detcurate.seed": "2", "detcurate.pipeline_run": "r1",
                    "detcurate.data_rev": "v1.0"}


@pytest.mark.slow
def test_active_learning_and_label_quality_steps_on_the_smoke_data(tmp_path: Path) -> None:
    from pipelines.steps import layout, report_step, run_step

    params = pipeline_params("smoke", overrides=["teacher.schedule.max_iter=3", "teacher.train.eval_every=0"])
    check(params)
    where = layout(tmp_path)
    for step in ("data", "train_teacher"):
        run_step(step, params, tmp_path, track=False)
    rounds = run_step("active_learning", params, tmp_path, track=False)
    assert (rounds["level"], rounds["measure"]) == ("box", "uncertainty")
    assert [r["round"] for r in rounds["rounds"]] == [0, 1, 2] and rounds["final"] == rounds["rounds"][-1]
    boxes = [r["boxes"] for r in rounds["rounds"]]
    assert boxes[1] - boxes[0] == boxes[2] - boxes[1] == params["active_learning"]["budget"]  # one per queried box
    assert all(0 <= r["AP"] <= 1 for r in rounds["rounds"])
    assert (where["active_learning"] / "curve.md").read_text().count("\n| ") == 1 + 3  # header, a row per round
    quality = run_step("label_quality", params, tmp_path, track=False)
    assert (quality["protocol"], quality["out_of_sample"], quality["images"]) == ("in-sample", False, 96)
    assert set(quality["flagged_images"]) == {"missing", "wrong_class", "badly_placed", "spurious"}
    assert "IN-SAMPLE" in (where["label_quality"] / "report.md").read_text()
    assert json.loads((where["label_quality"] / "predictions.json").read_text())["protocol"] == "in-sample"
    stamp = (where["active_learning"] / "curve.json").stat().st_mtime_ns
    assert run_step("active_learning", params, tmp_path, track=False) == rounds  # finished: reused
    assert (where["active_learning"] / "curve.json").stat().st_mtime_ns == stamp
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"stats": [0.1] * 12}))
    report_step(params, {"teacher": evaluation}, {}, tmp_path / "report", active_learning_dir=where["active_learning"],
                label_quality_dir=where["label_quality"], track=False)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["active_learning"] == rounds and metrics["label_quality"] == quality
    page = (tmp_path / "report" / "html" / "report.html").read_text()
    assert "<h2>Active learning</h2>" in page and "<h2>Label quality</h2>" in page and "IN-SAMPLE" in page
