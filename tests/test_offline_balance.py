"""``detcurate balance``: manifest and report on a small data set with planted duplicates; bad input exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from engine_fixtures import make_shapes_coco, tiny_config_dict

from curation_core.coco import load_coco
from curation_core.errors import ConfigError
from curation_core.offline.manifest import load_manifest
from curation_core.offline.repeat_factors import image_repeat_factors
from pipelines.cli import cli, main
from pipelines.cli.balance import balance_cmd


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.commands, "balance", balance_cmd)


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code)


def _with_planted_duplicates(tmp_path: Path) -> tuple[Path, Path, dict]:
    """The shapes set plus image 900, a byte-different copy of image 103 with the same pixels (PNG
    recompressed), and image 901, image 105 with one pixel changed."""
    from PIL import Image

    ann, images = make_shapes_coco(tmp_path / "planted", num_images=10)
    raw = json.loads(ann.read_text())
    for new_id, source, tweak in ((900, 103, False), (901, 105, True)):
        record = next(i for i in raw["images"] if i["id"] == source)
        pixels = np.array(Image.open(images / record["file_name"]).convert("RGB"))
        if tweak:
            pixels[0, 0] = (pixels[0, 0].astype(int) + 7) % 256
        Image.fromarray(pixels).save(images / f"copy_{new_id}.png", compress_level=9 if not tweak else 6)
        raw["images"].append({**record, "id": new_id, "file_name": f"copy_{new_id}.png"})
        raw["annotations"] += [{**a, "id": 10_000 + new_id * 10 + k, "image_id": new_id}
                               for k, a in enumerate(a for a in raw["annotations"] if a["image_id"] == source)]
    ann.write_text(json.dumps(raw))
    return ann, images, raw


def test_balance_writes_manifest_and_report(tmp_path: Path) -> None:
    ann, images, raw = _with_planted_duplicates(tmp_path)
    out = tmp_path / "curation" / "manifest.json"
    assert _run(["balance", "--annotations", str(ann), "--images", str(images), "--out", str(out),
                 "--threshold", "0.6", "--no-track"]) == 0
    gt = load_coco(ann)
    manifest = load_manifest(out, gt)
    entries = {e.image_id: e for e in manifest.entries}
    assert not entries[900].keep and entries[900].reasons[-1] == "exact duplicate of image 103 (same decoded pixels)"
    assert entries[901].keep  # one pixel differs: not an exact duplicate
    factors = dict(zip([i["id"] for i in gt.images], image_repeat_factors(gt, threshold=0.6).tolist(), strict=True))
    assert all(e.weight == pytest.approx(factors[i]) for i, e in entries.items() if e.keep)
    assert any(e.weight > 1 and e.reasons[0].startswith("repeat factor") for e in entries.values())
    for name in ("manifest.md", "manifest_classes.png", "manifest_weights.png"):
        assert (tmp_path / "curation" / name).stat().st_size > 0
    assert "| category | images | f(c) | r(c) |" in (tmp_path / "curation" / "manifest.md").read_text()


@pytest.mark.slow
def test_backbone_embeddings_find_near_duplicates_and_a_budget(tmp_path: Path) -> None:
    from components.balance import balance_training_set
    from curation_core.engine.config import config_from_dict
    from curation_core.engine.trainer import train

    ann, images, _ = _with_planted_duplicates(tmp_path)
    raw = tiny_config_dict(tmp_path, val=False, max_iter=1)
    checkpoint = train(config_from_dict(raw)).checkpoint
    summary = balance_training_set(ann, tmp_path / "m.json", images=images, checkpoint=checkpoint, threshold=0.5,
                                   near_threshold=1e-4, budget=6)
    entries = {e.image_id: e for e in summary.manifest.entries}
    assert "near duplicate of image 105" in " ".join(entries[901].reasons)
    assert sum(e.keep for e in entries.values()) == 6
    assert summary.manifest.parameters["embeddings"] == "backbone"


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images, raw = _with_planted_duplicates(tmp_path)
    bad = tmp_path / "dt.json"
    bad.write_text(json.dumps([{"image_id": 12345, "category_id": 3, "bbox": [0, 0, 4, 4], "score": 0.9}]))
    out = tmp_path / "m.json"
    assert _run(["balance", "--annotations", str(ann), "--predictions", str(bad), "--out", str(out), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image_id 12345 does not exist in the ground truth" in err and not out.exists()
    assert _run(["balance", "--annotations", str(ann), "--budget", "3", "--out", str(out), "--no-track"]) == 2
    assert "balance_dataset(budget=) expects an integer >= 1 and embeddings" in capsys.readouterr().err
    from components.balance import balance_training_set

    with pytest.raises(ConfigError, match=r"balance: give --predictions or --checkpoint"):
        balance_training_set(ann, out, predictions=bad, checkpoint=tmp_path / "c.pt")


def test_training_with_a_manifest_of_another_data_set_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images, _ = _with_planted_duplicates(tmp_path / "a")
    manifest = tmp_path / "a.json"
    assert _run(["balance", "--annotations", str(ann), "--out", str(manifest), "--no-track"]) == 0
    raw = tiny_config_dict(tmp_path / "b", val=False, max_iter=1)
    raw["data"]["manifest"] = str(manifest)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert _run(["train", "--config", str(config), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "made for another data set" in err
    shutil.rmtree(tmp_path / "b" / "run", ignore_errors=True)
