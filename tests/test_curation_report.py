"""What did curation pick? ``components/curation_report.py``, ``detcurate curation-report`` and the MLflow hook.

The fixture: 5 training images, 2 categories, and a log of 3 scoring events of 4 images (2 picked each),
so that every number below is worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from components.curation_report import curation_report, label_errors, read_selection_log
from curation_core.coco import CocoDataset, dataset_from_dict
from curation_core.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "iteration,position,image_id,score,picked,method"
OUTPUTS = ("curation_stats.json", "curation_scores.png", "curation_categories.png")

# Non-crowd boxes: image 10: 2 cat; 11: 1 dog; 12: 1 cat (its dog is a crowd); 13: none; 14: a crowd cat only.
# Background-only: 13 and 14 -> 2/5 of the data set. Boxes in the data set: cat 3, dog 1 -> 0.75 / 0.25.
COCO = {
    "images": [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in (10, 11, 12, 13, 14)],
    "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [0, 0, 4, 4]},
        {"id": 2, "image_id": 10, "category_id": 1, "bbox": [5, 5, 4, 4]},
        {"id": 3, "image_id": 11, "category_id": 7, "bbox": [1, 1, 8, 8]},
        {"id": 4, "image_id": 12, "category_id": 1, "bbox": [2, 2, 6, 6]},
        {"id": 5, "image_id": 12, "category_id": 7, "bbox": [0, 0, 20, 20], "iscrowd": 1},
        {"id": 6, "image_id": 14, "category_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1},
    ],
}

# (iteration, image_id, score, picked), positions 0..11 in this order.
EVENTS = [
    [(1, 10, 4.0, 1), (1, 11, 3.0, 1), (1, 13, 1.0, 0), (1, 12, 0.5, 0)],
    [(2, 10, 2.5, 1), (2, 13, 2.0, 1), (2, 14, 0.0, 0), (2, 11, 1.5, 0)],
    [(3, 12, 3.5, 1), (3, 10, 2.0, 1), (3, 11, -1.0, 0), (3, 14, 0.5, 0)],
]


def _lines(events: list[list[tuple]] = EVENTS) -> list[str]:
    rows, position = [], 0
    for event in events:
        for iteration, image_id, score, picked in event:
            rows.append(f"{iteration},{position},{image_id},{score:g},{picked},uniform")
            position += 1
    return rows


def _write(tmp_path: Path, lines: list[str] | None = None, *, header: str = HEADER) -> tuple[Path, Path]:
    annotations = tmp_path / "data" / "annotations.json"
    annotations.parent.mkdir(parents=True, exist_ok=True)
    annotations.write_text(json.dumps(COCO))
    selections = tmp_path / "run" / "selections.csv"
    selections.parent.mkdir(parents=True, exist_ok=True)
    selections.write_text("\n".join([header, *(_lines() if lines is None else lines)]) + "\n")
    return selections, annotations


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from pipelines.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


# ------------------------------------------------------------------------------------------------
# Statistics, by hand


def test_every_number_matches_the_hand_count(tmp_path: Path) -> None:
    selections, annotations = _write(tmp_path)
    stats = curation_report(selections, annotations, out_dir=tmp_path / "out")
    assert stats["methods"] == ["uniform"] and stats["train_images"] == 5
    assert stats["scoring_events"] == 3 and stats["iterations"] == {"first": 1, "last": 3}
    assert stats["rows"] == {"scored": 12, "picked": 6, "rejected": 6}
    # picked in order: 10, 11 | 10, 13 | 12, 10 -> 4 distinct of 5; image 10 three times, 14 never
    assert stats["distinct_images"] == {"scored": 5, "picked": 4, "scored_frac": 1.0, "picked_frac": 0.8}
    assert stats["picks_per_image"] == {"max": 3, "mean": 1.5, "never_picked": 1}
    # an epoch-equivalent is 5 picks: [10, 11, 10, 13, 12] has 4 distinct, then [10] (partial)
    assert stats["epoch_equivalents"] == [{"epoch": 1, "picks": 5, "distinct_images": 4, "complete": True},
                                          {"epoch": 2, "picks": 1, "distinct_images": 1, "complete": False}]
    # background rows: picked 13 once of 6; scored 13 twice and 14 twice of 12; data set 2 of 5
    assert stats["background_share"] == {"picked": 1 / 6, "scored": 4 / 12, "dataset": 0.4}
    # picked boxes: 3 x image 10 (6 cat) + 12 (1 cat) + 11 (1 dog); scored: 3 x 10 + 2 x 12 = 8 cat, 3 x 11 = 3 dog
    assert stats["categories"] == [
        {"id": 1, "name": "cat", "picked_share": 7 / 8, "scored_share": 8 / 11, "dataset_share": 0.75,
         "picked_boxes": 7, "scored_boxes": 8, "dataset_boxes": 3},
        {"id": 7, "name": "dog", "picked_share": 1 / 8, "scored_share": 3 / 11, "dataset_share": 0.25,
         "picked_boxes": 1, "scored_boxes": 3, "dataset_boxes": 1},
    ]
    # non-crowd boxes per row: picked 10, 11, 10, 13, 12, 10 -> 2+1+2+0+1+2 = 8 / 6; rejected 13, 12, 14, 11,
    # 11, 14 -> 0+1+0+1+1+0 = 3 / 6; data set 2, 1, 1, 0, 0 -> 4 / 5
    assert stats["boxes_per_image"] == {"picked": 8 / 6, "rejected": 3 / 6, "dataset": 0.8}
    # scored rows by box count: 0 boxes: 13, 14, 13, 14 (13 picked once); 1: 11, 12, 11, 12, 11 (11 and 12
    # picked once each); 2: image 10 three times, all picked
    assert stats["pick_rate_by_boxes"] == [{"boxes": 0, "scored": 4, "picked": 1, "rate": 0.25},
                                           {"boxes": 1, "scored": 5, "picked": 2, "rate": 0.4},
                                           {"boxes": 2, "scored": 3, "picked": 3, "rate": 1.0}]
    # picked scores sorted 2, 2, 2.5, 3, 3.5, 4; rejected -1, 0, 0.5, 0.5, 1, 1.5 (linear quantiles over 5 gaps)
    assert stats["scores"]["picked"] == {"count": 6, "mean": 17 / 6, "min": 2.0, "q10": 2.0, "q25": 2.125,
                                         "median": 2.75, "q75": 3.375, "q90": 3.75, "max": 4.0}
    assert stats["scores"]["rejected"] == {"count": 6, "mean": 2.5 / 6, "min": -1.0, "q10": -0.5, "q25": 0.125,
                                           "median": 0.5, "q75": 0.875, "q90": 1.25, "max": 1.5}
    # one scoring event per third
    assert stats["stages"] == [
        {"stage": "first", "first_iteration": 1, "last_iteration": 1, "scoring_events": 1, "picked_rows": 2,
         "distinct_images": 2, "distinct_images_frac": 0.4, "background_share_picked": 0.0,
         "mean_picked_score": 3.5, "mean_rejected_score": 0.75},
        {"stage": "middle", "first_iteration": 2, "last_iteration": 2, "scoring_events": 1, "picked_rows": 2,
         "distinct_images": 2, "distinct_images_frac": 0.4, "background_share_picked": 0.5,
         "mean_picked_score": 2.25, "mean_rejected_score": 0.75},
        {"stage": "last", "first_iteration": 3, "last_iteration": 3, "scoring_events": 1, "picked_rows": 2,
         "distinct_images": 2, "distinct_images_frac": 0.4, "background_share_picked": 0.0,
         "mean_picked_score": 2.75, "mean_rejected_score": -0.25},
    ]


def test_outputs_are_the_stats_json_and_two_pngs(tmp_path: Path) -> None:
    selections, annotations = _write(tmp_path)
    out = tmp_path / "out" / "nested"
    stats = curation_report(selections, annotations, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary files left
    assert stats["files"] == {"stats": str(out / OUTPUTS[0]), "scores_figure": str(out / OUTPUTS[1]),
                              "categories_figure": str(out / OUTPUTS[2])}
    written = json.loads((out / "curation_stats.json").read_text())
    assert written == {key: value for key, value in stats.items() if key != "files"}
    assert written["selections"] == str(selections) and written["annotations"] == str(annotations)
    for name in OUTPUTS[1:]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > height > 100


def test_rows_are_taken_in_iteration_order_and_thirds_split_events(tmp_path: Path) -> None:
    # The same three events written last first give the same statistics (a stable sort by iteration).
    selections, annotations = _write(tmp_path, _lines(EVENTS)[8:] + _lines(EVENTS)[4:8] + _lines(EVENTS)[:4])
    reversed_stats = curation_report(selections, annotations, out_dir=tmp_path / "a")
    selections, annotations = _write(tmp_path)
    stats = curation_report(selections, annotations, out_dir=tmp_path / "b")
    assert {k: v for k, v in reversed_stats.items() if k != "files"} == {k: v for k, v in stats.items() if k != "files"}
    # Four events split 2 / 1 / 1 into thirds; two events leave the last third empty (null values).
    fourth = [(4, 14, 9.0, 1), (4, 13, 8.0, 1), (4, 10, 0.0, 0), (4, 11, 0.0, 0)]
    selections, annotations = _write(tmp_path, _lines([*EVENTS, fourth]))
    stages = curation_report(selections, annotations, out_dir=tmp_path / "c")["stages"]
    spans = [(s["first_iteration"], s["last_iteration"], s["scoring_events"]) for s in stages]
    assert spans == [(1, 2, 2), (3, 3, 1), (4, 4, 1)]
    assert stages[0]["distinct_images"] == 3 and stages[0]["background_share_picked"] == 0.25
    assert stages[2]["background_share_picked"] == 1.0 and stages[2]["mean_picked_score"] == 8.5
    selections, annotations = _write(tmp_path, _lines(EVENTS[:2]))
    stages = curation_report(selections, annotations, out_dir=tmp_path / "d")["stages"]
    assert stages[2] == {"stage": "last", "first_iteration": None, "last_iteration": None, "scoring_events": 0,
                         "picked_rows": 0, "distinct_images": 0, "distinct_images_frac": 0.0,
                         "background_share_picked": None, "mean_picked_score": None, "mean_rejected_score": None}


def test_undefined_values_are_null_in_the_json(tmp_path: Path) -> None:
    # Only background images picked, nothing rejected: no picked box, no rejected score.
    selections, annotations = _write(tmp_path, ["1,0,13,0.5,1,uniform", "1,1,14,0.25,1,uniform"])
    out = tmp_path / "out"
    stats = curation_report(selections, annotations, out_dir=out)
    assert stats["background_share"]["picked"] == 1.0
    assert [c["picked_share"] for c in stats["categories"]] == [None, None]
    assert stats["scores"]["rejected"]["count"] == 0 and stats["scores"]["rejected"]["mean"] is None
    assert "NaN" not in (out / "curation_stats.json").read_text()
    assert json.loads((out / "curation_stats.json").read_text())["scores"]["rejected"]["median"] is None


def test_the_real_selection_log_format_is_read(tmp_path: Path) -> None:
    import numpy as np

    from curation_core.engine.selection_log import SelectionLog

    path = tmp_path / "selections.csv"
    log = SelectionLog(path, "loss")
    log.add(5, np.array([0, 1, 2]), np.array([10, 12, 10]), np.array([0.123456789, 2e-7, 3.0]),
            np.array([True, False, True]))
    log.flush()
    rows = read_selection_log(path)
    assert rows.iteration.tolist() == [5, 5, 5] and rows.image_id.tolist() == [10, 12, 10]
    assert rows.score.tolist() == [0.123457, 2e-7, 3.0] and rows.picked.tolist() == [True, False, True]
    assert rows.methods == ("loss",)


# ------------------------------------------------------------------------------------------------
# Bad input: one line naming the file, the row and the problem; nothing written


BAD_LOGS = [
    (None, None, r"<file>: file does not exist"),
    ("", None, r"<file>: empty file; expected the header iteration,position,image_id,score,picked,method"),
    ("iteration,position,image_id,picked,method", ["1,0,10,1,uniform"], r"header: missing column\(s\) 'score'; expected"),
    (HEADER, [], r"<file>: no rows after the header"),
    (HEADER, ["1,0,10,0.5,1,uniform", "x,1,11,0.5,0,uniform"], r"row 2: 'iteration' must be an integer; got 'x'"),
    (HEADER, ["0,0,10,0.5,1,uniform"], r"row 1: 'iteration' must be >= 1; got 0"),
    (HEADER, ["1,-1,10,0.5,1,uniform"], r"row 1: 'position' must be >= 0; got -1"),
    (HEADER, ["1,0,10.5,0.5,1,uniform"], r"row 1: 'image_id' must be an integer; got '10\.5'"),
    (HEADER, ["1,0,10,nan,1,uniform"], r"row 1: 'score' must be a finite number; got 'nan'"),
    (HEADER, ["1,0,10,high,1,uniform"], r"row 1: 'score' must be a finite number; got 'high'"),
    (HEADER, ["1,0,10,0.5,yes,uniform"], r"row 1: 'picked' must be 0 or 1; got 'yes'"),
    (HEADER, ["1,0,10,0.5,1,"], r"row 1: 'method' must not be empty"),
    (HEADER, ["1,0,10,0.5,1,uniform", "1,1,11,0.5,0,uniform", "1,2,12,0.5"], r"row 3: expected 6 fields; got 4"),
    (HEADER, ["1,0,10,0.5,1,uniform", "1,1,99,0.5,0,uniform"], r"row 2: image_id 99 is not an image of .*annotations\.json$"),
    (HEADER, ["1,0,10,0.5,0,uniform", "1,1,11,0.5,0,uniform"], r"<file>: no row has picked=1"),
    (HEADER, ["1,0,10,0.5,1,uniform", f"1,1,11,0.5,0,{'x' * 200_000}"], r"row 2: malformed CSV \(field larger than"),
]


@pytest.mark.parametrize(("header", "lines", "message"), BAD_LOGS, ids=[m[:40] for _, _, m in BAD_LOGS])
def test_bad_logs_are_one_line_errors_naming_file_and_row(tmp_path: Path, header: str | None, lines: list[str] | None,
                                                          message: str) -> None:
    selections, annotations = _write(tmp_path, lines, header=header or "")
    if header is None:
        selections.unlink()
    elif header == "":
        selections.write_text("")
    with pytest.raises(DataError, match=rf"^{re.escape(str(selections))}: {message}") as info:
        curation_report(selections, annotations, out_dir=tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unreadable_inputs_are_named(tmp_path: Path) -> None:
    selections, annotations = _write(tmp_path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'run'))}: <file>: is a directory"):
        curation_report(selections.parent, annotations, out_dir=tmp_path / "out")
    selections.write_bytes(HEADER.encode() + b"\n1,0,10,0.5,1,\xff\n")
    with pytest.raises(DataError, match=r"selections\.csv: <file>: not UTF-8 text"):
        curation_report(selections, annotations, out_dir=tmp_path / "out")
    with pytest.raises(DataError, match=r"missing\.json: <file>: file does not exist"):
        curation_report(selections, tmp_path / "missing.json", out_dir=tmp_path / "out")
    annotations.write_text(json.dumps({**COCO, "annotations": [{**COCO["annotations"][0], "category_id": 2}]}))
    with pytest.raises(DataError, match=r"annotations\.json: annotation id=1 .*: unknown category_id 2"):
        curation_report(selections, annotations, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_error_leaves_earlier_outputs_untouched(tmp_path: Path) -> None:
    selections, annotations = _write(tmp_path)
    out = tmp_path / "out"
    curation_report(selections, annotations, out_dir=out)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    selections.write_text(HEADER + "\n1,0,99,0.5,1,uniform\n")
    with pytest.raises(DataError, match=r"image_id 99"):
        curation_report(selections, annotations, out_dir=out)
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


# ------------------------------------------------------------------------------------------------
# The command


def test_curation_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    selections, annotations = _write(tmp_path)
    out = tmp_path / "out"
    status, stdout, err = _main(capsys, "curation-report", "--selections", str(selections),
                                "--annotations", str(annotations), "--out", str(out))
    assert status == 0, err
    assert [line for line in stdout.splitlines() if line.startswith("wrote ")] == [f"wrote {out / n}" for n in OUTPUTS]
    text = " ".join(stdout.split())
    assert "4 of 5 (80.0%)" in text and "3 / 1.50" in text and "12 / 6" in text
    assert "0.1667" in text and "0.4000" in text and "2.833" in text  # background picked / data, mean picked score
    assert "1.33 / 0.50 / 0.80" in text  # boxes per image: picked / rejected / data set
    assert all((out / name).is_file() for name in OUTPUTS)


@pytest.mark.parametrize(("lines", "missing", "message"), [
    (None, "selections", r"selections\.csv: <file>: file does not exist"),
    (None, "annotations", r"annotations\.json: <file>: file does not exist"),
    (["1,0,10,0.5,1,uniform", "1,1,77,0.5,0,uniform"], None, r"selections\.csv: row 2: image_id 77 is not an image"),
    ([], None, r"selections\.csv: <file>: no rows after the header"),
])
def test_curation_report_command_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  lines: list[str] | None, missing: str | None,
                                                                  message: str) -> None:
    selections, annotations = _write(tmp_path, lines)
    {"selections": selections, "annotations": annotations}.get(missing, tmp_path / "none").unlink(missing_ok=True)
    status, _, err = _main(capsys, "curation-report", "--selections", str(selections),
                           "--annotations", str(annotations), "--out", str(tmp_path / "out"))
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_curation_report_command_through_click(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipelines.cli import cli

    selections, annotations = _write(tmp_path)
    result = CliRunner().invoke(cli, ["curation-report", "--selections", str(selections), "--annotations",
                                      str(annotations), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "distinct images picked" in result.output


# ------------------------------------------------------------------------------------------------
# The MLflow training hook


@pytest.fixture(scope="module")
def _shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One database for the module: creating MLflow's schema costs seconds per database.
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def mlflow_uri(_shared_db: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """The module's database, and an experiment of the test's own (so runs never mix)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _shared_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    return _shared_db


def _artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:  # noqa: ANN001
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(_artifact_paths(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


def _fake_trainer(tmp_path: Path, lines: list[str] | None) -> SimpleNamespace:
    """What ``MLflowHook`` reads of a trainer: a finished run folder with a checkpoint, a config and the log."""
    from curation_core.engine.trainer import TrainResult

    selections, annotations = _write(tmp_path, lines)
    output_dir = selections.parent
    (output_dir / "checkpoint.pt").write_bytes(b"weights")
    (output_dir / "config.yaml").write_text("curation: {method: uniform}\n")
    data = SimpleNamespace(train_annotations=str(annotations), train_images=None, val_annotations=None, val_images=None)
    config = SimpleNamespace(data=data, flat_params=lambda: {"curation.method": "uniform", "curation.super_batch": 4})
    result = TrainResult(output_dir=output_dir, checkpoint=output_dir / "checkpoint.pt",
                         config_path=output_dir / "config.yaml", iterations=3, final_stats=None, images_per_s=10.0)
    return SimpleNamespace(config=config, output_dir=output_dir, result=result, iter=3, last_metrics={})


def _run_hook(trainer: SimpleNamespace):  # noqa: ANN202
    from pipelines.tracking import MLflowHook

    hook = MLflowHook(run_name="curated")
    hook.trainer = trainer
    hook.before_train()
    hook.after_train()
    return hook


def test_hook_logs_the_curation_report_of_a_curated_run(mlflow_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    hook = _run_hook(_fake_trainer(tmp_path, None))
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(hook.run_id)
    assert run.info.status == "FINISHED"
    assert _artifact_paths(client, hook.run_id) == [
        "checkpoint/checkpoint.pt", "config/config.yaml", "curation/curation_categories.png",
        "curation/curation_scores.png", "curation/curation_stats.json", "curation/selections.csv"]
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("curation/")}
    assert metrics == {"curation/distinct_images_frac": 0.8, "curation/background_share_picked": pytest.approx(1 / 6),
                       "curation/background_share_dataset": 0.4, "curation/picks_per_image_max": 3.0,
                       "curation/boxes_per_image_picked": pytest.approx(8 / 6),
                       "curation/boxes_per_image_rejected": pytest.approx(3 / 6),
                       "curation/score_picked_mean": pytest.approx(17 / 6),
                       "curation/score_rejected_mean": pytest.approx(2.5 / 6)}
    assert [m.step for m in client.get_metric_history(hook.run_id, "curation/distinct_images_frac")] == [3]
    stats = json.loads(Path(client.download_artifacts(hook.run_id, "curation/curation_stats.json",
                                                      str(tmp_path / "dl"))).read_text())
    assert stats["distinct_images"]["picked"] == 4 and stats["rows"]["scored"] == 12
    figure = Path(client.download_artifacts(hook.run_id, "curation/curation_scores.png", str(tmp_path / "dl")))
    assert figure.read_bytes().startswith(PNG_MAGIC)
    assert "detcurate.curation_report_error" not in run.data.tags


def test_a_bad_log_is_a_warning_not_a_failed_run(mlflow_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    trainer = _fake_trainer(tmp_path, ["1,0,10,0.5,1,uniform", "1,1,99,0.5,0,uniform"])
    with pytest.warns(RuntimeWarning, match=r"curation report of .*selections\.csv not logged: DataError: "
                                            r".*row 2: image_id 99 is not an image"):
        hook = _run_hook(trainer)
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(hook.run_id)
    assert run.info.status == "FINISHED"
    assert "train/images_per_s_mean" in run.data.metrics  # the rest of after_train ran
    assert not [k for k in run.data.metrics if k.startswith("curation/")]
    assert _artifact_paths(client, hook.run_id) == ["checkpoint/checkpoint.pt", "config/config.yaml",
                                                    "curation/selections.csv"]
    assert "image_id 99" in run.data.tags["detcurate.curation_report_error"]


def test_a_plain_run_logs_no_curation(mlflow_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    trainer = _fake_trainer(tmp_path, None)
    (trainer.output_dir / "selections.csv").unlink()
    hook = _run_hook(trainer)
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert _artifact_paths(client, hook.run_id) == ["checkpoint/checkpoint.pt", "config/config.yaml"]
    assert not [k for k in client.get_run(hook.run_id).data.metrics if k.startswith("curation/")]


def test_a_curated_training_run_logs_its_selections(mlflow_uri: str, tmp_path: Path) -> None:
    import torch
    from engine_fixtures import tiny_config_dict
    from mlflow import MlflowClient

    from components.train import train_config
    from curation_core.engine.config import config_from_dict
    from pipelines.tracking import MLflowHook

    raw = tiny_config_dict(tmp_path, val=False, max_iter=2)
    config = config_from_dict({**raw, "curation": {"method": "uniform", "super_batch": 4}})
    hook = MLflowHook(run_name="curated-tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy machine: one thread is fastest
    try:
        result = train_config(config, hooks=[hook])
    finally:
        torch.set_num_threads(threads)
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(hook.run_id)
    assert run.info.status == "FINISHED"
    assert {"curation/selections.csv", "curation/curation_stats.json", "curation/curation_scores.png",
            "curation/curation_categories.png"} <= set(_artifact_paths(client, hook.run_id))
    with (result.output_dir / "selections.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 4 and sum(int(r["picked"]) for r in rows) == 2 * 2  # 2 events of B=4, b=2
    picked = {int(r["image_id"]) for r in rows if r["picked"] == "1"}
    assert run.data.metrics["curation/distinct_images_frac"] == pytest.approx(len(picked) / 8)


# ------------------------------------------------------------------------------------------------
# Label errors against the clean labels (a run trained on noisy ones)


def _dataset(annotations: list[dict], images: tuple[int, ...] = (1, 2)) -> CocoDataset:
    raw = {"images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in images],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
           "annotations": [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)]}
    return dataset_from_dict(raw, source="<test>")


def test_label_errors_by_hand() -> None:
    clean = _dataset([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                      {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]},
                      {"image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10]},
                      {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20]},
                      {"image_id": 2, "category_id": 1, "bbox": [30, 30, 20, 20]}])
    noisy = _dataset([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},     # jittered: IoU 0.68, right
                      {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},   # swapped class: 1 wrong, 1 missing
                      # the third cat of image 1 is dropped: 1 missing
                      {"image_id": 1, "category_id": 2, "bbox": [50, 0, 8, 8]},      # spurious: 1 wrong
                      {"image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20]},   # moved: IoU 0.14 with both: 1 wrong
                      {"image_id": 2, "category_id": 1, "bbox": [31, 31, 20, 20]},   # right
                      {"image_id": 2, "category_id": 1, "bbox": [0, 0, 64, 64], "iscrowd": 1}])  # crowd: not counted
    missing, wrong = label_errors(noisy, clean)
    assert missing.tolist() == [2, 1] and wrong.tolist() == [2, 1]
    assert [m.tolist() for m in label_errors(clean, clean)] == [[0, 0], [0, 0]]
    # one to one: two copies of one box match it once; the copy is wrong
    twice = _dataset([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}] * 2, images=(1,))
    once = _dataset([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}], images=(1,))
    assert [m.tolist() for m in label_errors(twice, once)] == [[0], [1]]
    with pytest.raises(DataError, match=r"^clean\.json: image 2: the clean annotations must hold the same images"):
        label_errors(noisy, _dataset([], images=(1, 3)), clean_source="clean.json")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_errors_count_what_the_corruption_changed(seed: int) -> None:
    """Randomized: boxes of a generated set, corrupted by ``detcurate data corrupt``'s modes one at a time."""
    from curation_core.corrupt import corrupt_annotations

    rng = np.random.default_rng(seed)
    annotations = []
    for image in range(1, 41):  # 0-6 boxes per image on a grid, so that no two boxes overlap
        cells = rng.choice(16, size=rng.integers(0, 7), replace=False)
        annotations += [{"image_id": image, "category_id": int(rng.integers(1, 3)),
                         "bbox": [float(16 * (c % 4)) + 1, float(16 * (c // 4)) + 1, 12.0, 12.0]} for c in cells]
    clean = _dataset(annotations, images=tuple(range(1, 41)))
    dropped = corrupt_annotations(clean, mode="drop-per-category", fraction=0.3, seed=seed)
    missing, wrong = label_errors(dropped.dataset, clean)
    assert missing.sum() == len(dropped.removed_ids) and wrong.sum() == 0
    swapped = corrupt_annotations(clean, mode="swap", fraction=0.3, seed=seed)
    missing, wrong = label_errors(swapped.dataset, clean)
    assert missing.sum() == wrong.sum() == len(swapped.changed_ids) > 0
    jittered = corrupt_annotations(clean, mode="jitter", amount=0.05, seed=seed)
    assert [m.sum() for m in label_errors(jittered.dataset, clean)] == [0, 0]  # small jitter: still the object
    spurious = corrupt_annotations(clean, mode="spurious", fraction=0.3, seed=seed)
    missing, wrong = label_errors(spurious.dataset, clean)
    assert missing.sum() == 0 and wrong.sum() <= len(spurious.added_ids)  # an added box can land on an object


def test_report_with_clean_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    selections, annotations = _write(tmp_path)
    clean = json.loads(annotations.read_text())
    clean["annotations"] = [a for a in clean["annotations"] if a["id"] != 3]  # image 11's dog is spurious
    clean["annotations"].append({"id": 9, "image_id": 13, "category_id": 7, "bbox": [1, 1, 8, 8]})  # 13 misses one
    clean_path = tmp_path / "clean.json"
    clean_path.write_text(json.dumps(clean))
    stats = curation_report(selections, annotations, out_dir=tmp_path / "out", clean_annotations=clean_path)
    errors = stats["label_errors"]
    # picked rows: 10, 11, 10, 13, 12, 10 -> wrong 0+1+0+0+0+0, missing 0+0+0+1+0+0; boxes 2+1+2+0+1+2 = 8
    assert errors["wrong_per_image"]["picked"] == pytest.approx(1 / 6)
    assert errors["missing_per_image"]["picked"] == pytest.approx(1 / 6)
    assert errors["wrong_box_share"]["picked"] == pytest.approx(1 / 8)
    # rejected rows: 13, 12, 14, 11, 11, 14 -> wrong 0+0+0+1+1+0, missing 1+0+0+0+0+0; boxes 0+1+0+1+1+0 = 3
    assert errors["wrong_per_image"]["rejected"] == pytest.approx(2 / 6)
    assert errors["wrong_box_share"]["rejected"] == pytest.approx(2 / 3)
    assert errors["wrong_box_share"]["dataset"] == pytest.approx(1 / 4)
    # scored rows by errors: 0 errors: 10 x3, 12 x2, 14 x2 (7 rows, 4 picked); 1 error: 11 x3, 13 x2 (2 picked)
    assert errors["pick_rate_by_errors"] == [{"errors": 0, "scored": 7, "picked": 4, "rate": pytest.approx(4 / 7)},
                                             {"errors": 1, "scored": 5, "picked": 2, "rate": pytest.approx(2 / 5)}]
    saved = json.loads((tmp_path / "out" / "curation_stats.json").read_text())
    assert saved["label_errors"]["wrong_box_share"]["picked"] == pytest.approx(1 / 8)
    code, out, _ = _main(capsys, "curation-report", "--selections", str(selections), "--annotations",
                         str(annotations), "--out", str(tmp_path / "cli"), "--clean-annotations", str(clean_path))
    assert code == 0 and re.search(r"wrong share of boxes: picked / rejected / data set\s*│\s*0\.125 / 0\.667 / 0\.250",
                                   out)
