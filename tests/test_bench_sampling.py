"""The sampling benchmark runs end to end in its smoke profile, writes what it claims and resumes by cell."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_sampling(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_sampling", None)
    import bench_sampling

    return bench_sampling


@pytest.mark.slow
def test_bench_sampling_smoke_profile_writes_cells_overhead_histogram_and_resumes(
        tmp_path: Path, bench_sampling, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    out = tmp_path / "sampling.json"
    args = ["--profile", "smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--seeds", "0",
            "--only", "faster_rcnn:baseline,faster_rcnn:all,retinanet:pisa"]
    bench_sampling.main(args)
    result = json.loads(out.read_text())
    cells = {(c["detector"], c["variant"]): c for c in result["cells"]}
    assert set(cells) == {("faster_rcnn", "baseline"), ("faster_rcnn", "all"), ("retinanet", "pisa")}
    for cell in cells.values():
        assert 0.0 <= cell["AP"] <= 1.0 and cell["images_per_s"] > 0 and cell["seed"] == 0
    overhead = {(r["detector"], r["variant"]): r for r in result["overhead"]}
    assert set(overhead) == set(bench_sampling.VARIANTS)
    assert overhead[("faster_rcnn", "baseline")]["ratio"] == 1.0 and overhead[("retinanet", "pisa")]["ratio"] > 0
    hist = result["histogram"]
    assert hist["trained_model"] is True and len(hist["edges"]) == len(hist["random"]) + 1
    # Each sampler draws the same number of negatives, at most the pool.
    assert sum(hist["random"]) == sum(hist["libra"]) == sum(hist["libra_mmdet"]) <= sum(hist["pool"])
    text = out.with_suffix(".md").read_text()
    assert "| faster_rcnn | all | 1 |" in text and "libra_mmdet" in text
    assert out.with_name("sampling_iou.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    bench_sampling.main(args)  # everything is done: nothing is trained again
    assert "0 cells to do (3 done)" in capsys.readouterr().out


def test_summary_reports_mean_spread_and_paired_difference(bench_sampling) -> None:  # noqa: ANN001
    cells = [{"detector": "faster_rcnn", "variant": v, "seed": s, "AP": ap, "AP50": 2 * ap, "AP75": ap / 2}
             for v, aps in (("baseline", (0.10, 0.12, 0.14)), ("carl", (0.11, 0.12, 0.17))) for s, ap in enumerate(aps)]
    rows = {r["variant"]: r for r in bench_sampling.summarize(cells)}
    assert rows["baseline"]["AP mean"] == pytest.approx(0.12) and rows["baseline"]["AP sd"] == pytest.approx(0.02)
    # Paired differences 0.01, 0.00, 0.03: mean 0.04 / 3, sd sqrt(((-1/3)^2 + (4/3)^2 + (5/3)^2) / 2) * 0.01.
    assert rows["carl"]["dAP mean"] == pytest.approx(0.04 / 3)
    assert rows["carl"]["dAP sd"] == pytest.approx(0.01 * (42 / 18) ** 0.5)
    assert rows["baseline"]["dAP mean"] == 0.0
