"""The HTML/Markdown report: sections from result files, whole-or-nothing output, and a real browser.

The browser test loads the report in headless Chromium (Debian's ``chromium``; ``.ci/run`` installs
it where missing), reads back from the page whether every image decoded (a script added to a copy of
the page writes each image's state into the DOM, which ``--dump-dom`` prints), and takes a screenshot.
Skipped, with the reason, where Chromium is absent.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from components import html_report
from curation_core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _png(path: Path, colour: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(3, 2))
    axis.plot([0, 1, 2], [0.1, 0.3, 0.2], color=colour)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=60)
    plt.close(figure)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "curation.md").write_text("# Curation\n\n| variant | AP |\n|---|---|\n| plain | 0.0365 |\n| detgain | 0.0406 |\n")
    _png(folder / "curation_ap.png", "red")
    (folder / "robustness.md").write_text("| mode | loss | AP |\n|---|---|---|\n| easy | brl | 0.05 |\n")
    _png(folder / "robustness.png", "blue")
    (folder / "synth.json").write_text(json.dumps({"benchmark": "synth", "time": "2026-11-23", "machine": {"cpus": 2},
                                                   "rows": [{"size": 128, "images_per_s": 340.123456}]}))
    (folder / "notes.json").write_text(json.dumps({"no": "rows"}))
    return folder


def test_sections_order_and_content(results, tmp_path):
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "report.md").write_text("| model | AP |\n|---|---|\n| student | 0.04 |\n")
    _png(pipeline / "training_curves.png", "green")
    sections = html_report.collect_sections(results, pipeline_dir=pipeline)
    assert [s.key for s in sections] == ["pipeline", "curation", "robustness", "synth"]
    assert [p.name for p in sections[1].figures] == ["curation_ap.png"]
    assert sections[1].markdown.startswith("| variant")  # the file's own title gives way to the heading
    assert "| 128 | 340.1 |" in sections[3].markdown and sections[3].heading == "Benchmark: Synth"

    paths = html_report.write_report(tmp_path / "out", results_dir=results, pipeline_dir=pipeline, title="T")
    page = paths["html"].read_text()
    assert page.count("<img ") == 3 and page.count("<table>") == 4 and "<td>detgain</td>" in page
    markdown = paths["markdown"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 3 and all((paths["markdown"].parent / link).is_file() for link in links)


def test_nothing_to_report_or_bad_files_are_one_line_errors(tmp_path, results):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no Markdown tables, JSON rows or PNG figures"):
        html_report.collect_sections(empty)
    with pytest.raises(DataError, match="results folder does not exist"):
        html_report.collect_sections(tmp_path / "absent")
    (results / "broken.json").write_text("{")
    with pytest.raises(DataError, match=r"broken.json: <file>: not a readable JSON result"):
        html_report.collect_sections(results)


def test_a_failed_report_leaves_the_previous_one_whole(results, tmp_path):
    out = tmp_path / "out"
    first = html_report.write_report(out, results_dir=results)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (results / "zz_late.png").write_bytes(b"not a png")  # read after report.html is written
    with pytest.raises(DataError, match="zz_late.png: <file>: not a PNG image"):
        html_report.write_report(out, results_dir=results)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "results"]  # no staging folder left
    assert first["html"].is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_PROBE = """<script>
window.addEventListener('load', () => {
  const states = Array.from(document.images).map(img => ({alt: img.alt, complete: img.complete,
    width: img.naturalWidth, height: img.naturalHeight}));
  document.body.setAttribute('data-image-states', JSON.stringify(states));
});
</script></body>"""


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    """The report of the repository's own benchmark results in a real browser: every image decodes
    (checked from the page), and a screenshot is taken (tests write it to the test's folder). About 10 s."""
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not installed (apt-get install -y chromium; .ci/run does it)")
    paths = html_report.write_report(tmp_path / "report", results_dir=ROOT / "benchmarks" / "results")
    page = paths["html"].read_text()
    expected = page.count("<img ")
    assert expected >= 1
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE, 1))
    profile = tmp_path / "profile"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'data-image-states="([^"]*)"', dom.stdout)
    assert match, "the page's load handler did not run"
    import html as html_module

    states = json.loads(html_module.unescape(match.group(1)))
    assert len(states) == expected
    broken = [s["alt"] for s in states if not (s["complete"] and s["width"] > 0 and s["height"] > 0)]
    assert not broken, f"images that did not render: {broken}"
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([*common, "--window-size=1280,2400", f"--screenshot={screenshot}", paths["html"].as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000


def test_report_command_writes_and_logs_to_mlflow(results, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from pipelines.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "report-test")
    with pytest.raises(SystemExit) as done:
        main(["report-html", "--out", str(tmp_path / "out"), "--results", str(results)])
    assert done.value.code == 0, capsys.readouterr().err
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("report-test").experiment_id])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged
    assert run.info.status == "FINISHED"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["report-html", "--out", str(tmp_path / "out2"), "--results", str(tmp_path / "absent"), "--no-track"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "absent" in err


def test_relative_images_of_a_results_table_are_left_to_the_embedded_figures(results, tmp_path):
    (results / "robustness.md").write_text("| mode | AP |\n|---|---|\n| easy | 0.05 |\n\n![curves](robustness.png)\n"
                                           "![remote](https://example.org/x.png)\n")
    page = html_report.write_report(tmp_path / "out", results_dir=results)["html"].read_text()
    assert 'src="robustness.png"' not in page and 'alt="curves"' not in page
    assert "https://example.org/x.png" in page  # an absolute link is the author's choice: kept
    assert page.count("data:image/png;base64,") == 2  # both figures of the folder, embedded
