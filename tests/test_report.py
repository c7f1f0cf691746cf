"""Figures of training runs (components/report.py, ``detcurate report``) and the demo summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from components.report import plot_training_curves, read_history
from curation_core.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(path: Path, aps: list[float], *, iterations: list[int] | None = None) -> Path:
    iterations = iterations or [100 * (i + 1) for i in range(len(aps))]
    history = [{"iteration": it, "AP": ap, "AP50": 2 * ap} for it, ap in zip(iterations, aps, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"iterations": iterations[-1] if iterations else 0, "history": history}))
    return path


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from pipelines.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_history_is_sorted_by_iteration(tmp_path: Path) -> None:
    path = _metrics(tmp_path / "m.json", [0.3, 0.1, 0.2], iterations=[300, 100, 200])
    assert [h["iteration"] for h in read_history(path)] == [100, 200, 300]
    assert [h["AP"] for h in read_history(path)] == [0.1, 0.2, 0.3]


def test_a_figure_is_written_for_several_runs(tmp_path: Path) -> None:
    runs = {"teacher": _metrics(tmp_path / "t.json", [0.1, 0.2]), "student": _metrics(tmp_path / "s.json", [0.05, 0.1])}
    out = plot_training_curves(runs, tmp_path / "figs" / "curves.png", stats=["AP", "AP50"], title="demo")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > height > 100  # two panels side by side
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(("content", "message"), [
    (None, r"metrics file does not exist"),
    ("{not json", r"not a readable JSON metrics file"),
    ('{"history": 3}', r"history: expected a list of evaluations"),
    ('{"history": [{"AP": 0.1}]}', r"history: expected a list of evaluations"),
    ('{"history": []}', r"history: no evaluations"),
])
def test_bad_metrics_files_are_named(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: .*{message}"):
        read_history(path)


def test_a_missing_statistic_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    path = _metrics(tmp_path / "m.json", [0.1])
    with pytest.raises(DataError, match=r"m\.json: history: no numeric 'APs' at iteration 100"):
        plot_training_curves({"a": path}, tmp_path / "out.png", stats=["AP", "APs"])
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(ValueError, match=r"plot_training_curves\(runs=\) expects at least one run"):
        plot_training_curves({}, tmp_path / "out.png")


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, s = _metrics(tmp_path / "t.json", [0.1, 0.2]), _metrics(tmp_path / "s.json", [0.05, 0.1])
    out = tmp_path / "curves.png"
    status, stdout, err = _main(capsys, "report", "--run", f"teacher={t}", "--run", f"student={s}", "--out", str(out))
    assert status == 0, err
    assert out.read_bytes().startswith(PNG_MAGIC) and "wrote" in stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--run", "teacher"], r"--run 'teacher': expected LABEL=PATH/TO/metrics\.json"),
    (["--run", "a=RUN", "--run", "a=RUN"], r"--run: every label must be different"),
    (["--run", "a=RUN", "--stat", "mAP"], r"--stat 'mAP': unknown statistic; valid choices: AP, AP50"),
    (["--run", "a=MISSING"], r"none\.json: <file>: metrics file does not exist"),
])
def test_report_command_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         args: list[str], message: str) -> None:
    run = _metrics(tmp_path / "t.json", [0.1])
    args = [a.replace("RUN", str(run)).replace("MISSING", str(tmp_path / "none.json")) for a in args]
    status, _, err = _main(capsys, "report", *args, "--out", str(tmp_path / "out.png"))
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out.png").exists()


def test_demo_summary_lists_the_models_and_the_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import demo

    for index, path in enumerate(demo.DEMO_REPORTS.values()):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps({"stats": [0.1 * (index + 1)] * 12}))
    (tmp_path / demo.DEMO_FIGURE).write_bytes(PNG_MAGIC)
    demo._print_summary(tmp_path)
    out = " ".join(capsys.readouterr().out.split())
    assert "teacher" in out and "student_detgain" in out and "0.1000" in out and "0.2000" in out and "0.3000" in out
    assert str(demo.DEMO_FIGURE) in out
    assert "models:/detcurate-demo-teacher@teacher" in out and "models:/detcurate-demo-student_detgain@champion" in out
    assert "DetGain-curated student vs plain student: AP 0.3000 vs 0.2000 (+50.0 %, one seed)" in out
