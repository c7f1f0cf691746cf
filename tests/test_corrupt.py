"""Annotation corruption: exact BRL counts, per-category drops, noisy modes, bookkeeping, seeds, errors, CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components.corrupt import corrupt_coco, default_report_path
from curation_core.coco import dataset_from_dict, load_coco
from curation_core.corrupt import (
    BRL_MODES,
    BRL_VOC0712_DROPPED,
    CORRUPTION_MODES,
    brl_drop_count,
    corrupt_annotations,
    exact_count,
    missing_label_fractions,
)
from curation_core.errors import CocoValidationError, ConfigError
from pipelines.cli import main
from pipelines.cli.corrupt import MODES as CLI_MODES

#: Parameters that make each mode do something.
PARAMS: dict[str, dict[str, float]] = {
    "easy": {}, "hard": {}, "extreme": {}, "drop-per-category": {"fraction": 0.5},
    "spurious": {"fraction": 0.3}, "jitter": {"amount": 0.2}, "swap": {"fraction": 0.25},
}


def _fixed(counts: list[int], *, crowd_on: tuple[int, ...] = ()) -> dict[str, Any]:
    """One 100x80 image per entry of ``counts`` (image id = index + 1), plus one crowd box on ``crowd_on``."""
    images = [{"id": i + 1, "width": 100, "height": 80, "file_name": f"{i + 1}.png"} for i in range(len(counts))]
    annotations: list[dict[str, Any]] = []
    for i, n in enumerate(counts):
        for j in range(n):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1 + j % 3,
                                "bbox": [5.0 + j, 5.0, 20.0, 10.0], "iscrowd": 0})
    for image_id in crowd_on:
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                            "bbox": [0.0, 0.0, 50.0, 40.0], "iscrowd": 1})
    return {"info": {"description": "fixture"}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}


def _random(seed: int, n_images: int = 60, *, n_categories: int = 5) -> dict[str, Any]:
    """Random set with a VOC-like objects-per-image distribution (1 + Poisson(1.5)), some empty and crowd."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        width, height = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        image_id = int(rng.integers(1, 10**6)) * 1000 + i  # unique, unordered
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{i}.png"})
        n = 0 if rng.random() < 0.1 else 1 + int(rng.poisson(1.5))
        for _ in range(n):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append({"image_id": image_id, "category_id": 10 + int(rng.integers(n_categories)),
                                "bbox": [x, y, w, h], "iscrowd": int(rng.random() < 0.05)})
    ids = rng.permutation(np.arange(1, len(annotations) + 1) * 7)
    for ann, aid in zip(annotations, ids, strict=True):
        ann["id"] = int(aid)
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 10 + c, "name": f"k{c}"} for c in range(n_categories)]}


def _run(raw: dict[str, Any], mode: str, seed: int = 0, **kwargs: float) -> tuple[dict[int, dict], Any]:
    result = corrupt_annotations(dataset_from_dict(raw), mode=mode, seed=seed, **kwargs)
    return {a["id"]: a for a in result.dataset.annotations}, result


def _remaining_per_image(out: dict[int, dict]) -> Counter:
    return Counter(a["image_id"] for a in out.values() if not a["iscrowd"])


# ----------------------------------------------------------------------------------------------
# Missing labels


@pytest.mark.parametrize(("mode", "expected"), [
    ("easy", [0, 1, 1, 2, 4]),
    ("hard", [0, 1, 1, 2, 3]),
    ("extreme", [0, 1, 1, 1, 1]),
])
def test_brl_modes_leave_exact_counts_per_image(mode: str, expected: list[int]) -> None:
    raw = _fixed([0, 1, 2, 3, 5], crowd_on=(1, 2, 5))
    for seed in range(5):
        out, result = _run(raw, mode, seed)
        remaining = _remaining_per_image(out)
        assert [remaining[i] for i in range(1, 6)] == expected
        assert sum(1 for a in out.values() if a["iscrowd"]) == 3
        assert result.n_before == 11 and result.n_crowd == 3
        assert len(result.removed_ids) == 11 - sum(expected)
        assert result.images_affected == sum(1 for n, e in zip([0, 1, 2, 3, 5], expected, strict=True) if n != e)


def test_brl_drop_count_and_fractions() -> None:
    assert [brl_drop_count(n, "easy") for n in range(6)] == [0, 0, 1, 1, 1, 1]
    assert [brl_drop_count(n, "hard") for n in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [brl_drop_count(n, "extreme") for n in range(6)] == [0, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"brl_drop_count\(mode=\) expects one of easy, hard, extreme; got 'swap'"):
        brl_drop_count(3, "swap")
    raw = _fixed([0, 1, 2, 3, 5], crowd_on=(2,))
    assert missing_label_fractions(dataset_from_dict(raw)) == {"easy": 3 / 11, "hard": 4 / 11, "extreme": 7 / 11}
    raw = _random(3, 200)
    fractions = missing_label_fractions(dataset_from_dict(raw))
    for mode in BRL_MODES:
        assert _run(raw, mode, seed=9)[1].fraction_removed == pytest.approx(fractions[mode], abs=0)
    assert set(BRL_VOC0712_DROPPED) == set(BRL_MODES)


def test_exact_count_rounds_half_to_even_on_the_written_decimal() -> None:
    assert [exact_count(0.5, n) for n in (0, 1, 2, 3, 4, 5, 7)] == [0, 0, 1, 2, 2, 2, 4]
    assert exact_count(0.3, 5) == 2  # 1.5 -> 2
    assert exact_count(0.07, 150) == 10  # 10.5 -> 10, although 0.07 * 150 == 10.500000000000002 in floating point
    assert exact_count(0.35, 90) == 32  # 31.5 -> 32, although 0.35 * 90 == 31.499999999999996
    assert exact_count(0.1, 25) == 2  # 2.5 -> 2
    assert exact_count(0.0, 9) == 0 and exact_count(1.0, 9) == 9 and exact_count(1, 9) == 9


def test_drop_per_category_removes_exact_count_of_every_category() -> None:
    sizes = {1: 0, 2: 1, 3: 2, 4: 3, 5: 5, 6: 10}
    images = [{"id": i, "width": 50, "height": 50, "file_name": f"{i}.png"} for i in range(1, 5)]
    annotations = []
    for cid, n in sizes.items():
        for j in range(n):
            annotations.append({"id": len(annotations) + 1, "image_id": 1 + j % 4, "category_id": cid,
                                "bbox": [1, 1, 10, 10]})
    annotations.append({"id": 999, "image_id": 1, "category_id": 6, "bbox": [1, 1, 5, 5], "iscrowd": 1})
    raw = {"images": images, "annotations": annotations,
           "categories": [{"id": c, "name": f"c{c}"} for c in sizes]}
    for fraction in (0.0, 0.3, 0.5, 0.75, 1.0):
        out, result = _run(raw, "drop-per-category", seed=4, fraction=fraction)
        after = Counter(a["category_id"] for a in out.values() if not a["iscrowd"])
        for change in result.per_category:
            n = sizes[change.category_id]
            assert change.removed == exact_count(fraction, n) == n - after[change.category_id]
            assert (change.before, change.after) == (n, after[change.category_id])
        assert 999 in out
    expected_half = {1: 0, 2: 0, 3: 1, 4: 2, 5: 2, 6: 5}  # round half to even
    _, result = _run(raw, "drop-per-category", seed=4, fraction=0.5)
    assert {c.category_id: c.removed for c in result.per_category} == expected_half


# ----------------------------------------------------------------------------------------------
# Bookkeeping, determinism, order independence, crowd


def _file_difference(before: dict[str, Any], after: dict[str, Any]) -> tuple[set, set, set]:
    old = {a["id"]: a for a in before["annotations"]}
    new = {a["id"]: a for a in after["annotations"]}
    changed = {i for i in old.keys() & new.keys()
               if old[i]["bbox"] != new[i]["bbox"] or old[i]["category_id"] != new[i]["category_id"]}
    return old.keys() - new.keys(), new.keys() - old.keys(), changed


@pytest.mark.parametrize("mode", CORRUPTION_MODES)
def test_report_matches_the_written_file(mode: str, tmp_path: Path) -> None:
    raw = _random(11, 80)
    src, dst = tmp_path / "in.json", tmp_path / "sub" / "out.json"
    src.write_text(json.dumps(raw))
    result = corrupt_coco(src, dst, mode=mode, seed=5, **PARAMS[mode])
    written = json.loads(dst.read_text())
    report = json.loads(default_report_path(dst).read_text())
    load_coco(dst, box_tolerance=0.0)
    removed, added, changed = _file_difference(raw, written)
    assert (set(report["removed_ids"]), set(report["added_ids"]), set(report["changed_ids"])) == (removed, added, changed)
    assert removed or added or changed
    overall = report["overall"]
    plain_before = sum(1 for a in raw["annotations"] if not a["iscrowd"])
    assert overall["before"] == plain_before == result.n_before
    assert overall["after"] == sum(1 for a in written["annotations"] if not a["iscrowd"])
    assert overall["fraction_removed"] == len(removed) / plain_before
    assert overall["fraction_added"] == len(added) / plain_before
    assert overall["fraction_changed"] == len(changed) / plain_before
    touched = {a["image_id"] for a in raw["annotations"] if a["id"] in removed | changed}
    touched |= {a["image_id"] for a in written["annotations"] if a["id"] in added}
    assert overall["images_affected"] == len(touched) and overall["images"] == len(raw["images"])
    assert (report["mode"], report["seed"], report["input"], report["output"]) == (mode, 5, str(src), str(dst))
    assert report["parameters"] == {"fraction": PARAMS[mode].get("fraction"), "amount": PARAMS[mode].get("amount")}
    for cid, row in report["per_category"].items():
        assert row["after"] == row["before"] - row["removed"] + row["added"] - row["relabelled_out"] + row["relabelled_in"]
        assert row["before"] == sum(1 for a in raw["annotations"] if a["category_id"] == int(cid) and not a["iscrowd"])
    assert sum(r["removed"] for r in report["per_category"].values()) == len(removed)
    assert sum(r["changed"] for r in report["per_category"].values()) == len(changed)
    assert {k: written[k] for k in ("images", "categories")} == {k: raw[k] for k in ("images", "categories")}


def test_extra_keys_and_unchanged_records_are_preserved(tmp_path: Path) -> None:
    raw = _fixed([2, 3], crowd_on=(1,))
    raw["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5, 6]]
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(raw))
    corrupt_coco(src, dst, mode="swap", seed=0, fraction=0.0, report_path=tmp_path / "r.json")
    written = json.loads(dst.read_text())
    assert written["info"] == raw["info"] and written["licenses"] == []
    assert written["annotations"][0]["segmentation"] == [[1, 2, 3, 4, 5, 6]]
    assert [a["id"] for a in written["annotations"]] == [a["id"] for a in raw["annotations"]]
    assert (tmp_path / "r.json").exists() and not default_report_path(dst).exists()


@pytest.mark.parametrize("mode", CORRUPTION_MODES)
def test_deterministic_for_a_seed_and_different_across_seeds(mode: str) -> None:
    raw = _random(21, 80)
    first, a = _run(raw, mode, 1, **PARAMS[mode])
    again, b = _run(raw, mode, 1, **PARAMS[mode])
    other, c = _run(raw, mode, 2, **PARAMS[mode])
    assert first == again and a.as_dict() == b.as_dict()
    assert first != other


@pytest.mark.parametrize("mode", CORRUPTION_MODES)
def test_result_does_not_depend_on_record_order(mode: str) -> None:
    raw = _random(31, 80)
    shuffled = dict(raw)
    rng = np.random.default_rng(0)
    for key in ("images", "annotations", "categories"):
        shuffled[key] = [raw[key][i] for i in rng.permutation(len(raw[key]))]
    out, result = _run(raw, mode, 3, **PARAMS[mode])
    out_shuffled, result_shuffled = _run(shuffled, mode, 3, **PARAMS[mode])
    assert out == out_shuffled
    assert result.removed_ids == result_shuffled.removed_ids
    assert result.changed_ids == result_shuffled.changed_ids and result.added_ids == result_shuffled.added_ids


def test_per_image_draws_do_not_depend_on_other_images() -> None:
    raw = _random(41, 60)
    kept_images = {img["id"] for img in raw["images"][::2]}
    subset = {**raw, "images": [img for img in raw["images"] if img["id"] in kept_images],
              "annotations": [a for a in raw["annotations"] if a["image_id"] in kept_images]}
    for mode in BRL_MODES:
        full = set(_run(raw, mode, 8)[1].removed_ids)
        part = set(_run(subset, mode, 8)[1].removed_ids)
        assert part == {a["id"] for a in subset["annotations"] if a["id"] in full}


@pytest.mark.parametrize("mode", CORRUPTION_MODES)
def test_crowd_annotations_are_untouched_and_input_not_mutated(mode: str) -> None:
    raw = _random(51, 80)
    crowd = {a["id"]: dict(a) for a in raw["annotations"] if a["iscrowd"]}
    assert crowd
    dataset = dataset_from_dict(raw)
    snapshot = json.dumps(dataset.to_dict())
    heavy = {"fraction": 1.0} if "fraction" in PARAMS[mode] else PARAMS[mode]
    result = corrupt_annotations(dataset, mode=mode, seed=0, **heavy)
    out = {a["id"]: a for a in result.dataset.annotations}
    for aid, ann in crowd.items():
        assert {k: out[aid][k] for k in ann} == ann
    assert not set(crowd) & (set(result.removed_ids) | set(result.changed_ids))
    assert json.dumps(dataset.to_dict()) == snapshot


@pytest.mark.parametrize("mode", CORRUPTION_MODES)
def test_set_without_annotations(mode: str) -> None:
    raw = {"images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.png"}], "annotations": [],
           "categories": [{"id": 1, "name": "a"}]}
    out, result = _run(raw, mode, **PARAMS[mode])
    assert out == {} and result.n_before == 0 and result.fraction_removed == 0.0 and result.images_affected == 0


# ----------------------------------------------------------------------------------------------
# Noisy labels


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_spurious_boxes_are_valid_new_and_counted(fraction: float) -> None:
    raw = _random(61, 80)
    out, result = _run(raw, "spurious", 7, fraction=fraction)
    n = result.n_before
    assert len(result.added_ids) == exact_count(fraction, n) == result.n_after - n
    assert min(result.added_ids, default=math.inf) > max(a["id"] for a in raw["annotations"])
    dataset_from_dict(result.dataset.to_dict(), box_tolerance=0.0)  # raises on any invalid record
    sizes = {img["id"]: (img["width"], img["height"]) for img in raw["images"]}
    for aid in result.added_ids:
        ann = out[aid]
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height and w >= 1 and h >= 1
        assert ann["iscrowd"] == 0 and ann["area"] == w * h
    if fraction == 1.0:
        categories = Counter(out[aid]["category_id"] for aid in result.added_ids)
        assert set(categories) == {c["id"] for c in raw["categories"]}


@pytest.mark.parametrize("amount", [0.05, 0.2, 0.5])
def test_jitter_keeps_boxes_valid_inside_and_within_the_stated_amount(amount: float) -> None:
    raw = _random(71, 120)
    for ann in raw["annotations"]:  # every box at least exp(amount) px so that the 1 px floor never binds
        ann["bbox"][2], ann["bbox"][3] = max(ann["bbox"][2], 2.0), max(ann["bbox"][3], 2.0)
    out, result = _run(raw, "jitter", 2, amount=amount)
    sizes = {img["id"]: (img["width"], img["height"]) for img in raw["images"]}
    plain = [a for a in raw["annotations"] if not a["iscrowd"]]
    assert len(result.changed_ids) == len(plain)
    centre_bound = max(amount, (math.exp(amount) - 1) / 2)
    eps = 1e-9
    for old in plain:
        new = out[old["id"]]
        x, y, w, h = new["bbox"]
        width, height = sizes[old["image_id"]]
        assert -eps <= x and -eps <= y and x + w <= width + eps and y + h <= height + eps
        assert w >= 1 and h >= 1
        ox, oy, ow, oh = old["bbox"]
        for size, osize, limit in ((w, ow, width), (h, oh, height)):
            assert math.exp(-amount) - eps <= size / osize <= math.exp(amount) + eps or size == limit
        assert abs((x + w / 2) - (ox + ow / 2)) <= centre_bound * ow + eps
        assert abs((y + h / 2) - (oy + oh / 2)) <= centre_bound * oh + eps
        assert new["area"] == pytest.approx(w * h)
        assert new["category_id"] == old["category_id"]
    dataset_from_dict(result.dataset.to_dict(), box_tolerance=0.0)
    assert _run(raw, "jitter", 2, amount=0.0)[1].changed_ids == ()


def test_jitter_of_tiny_and_edge_boxes_stays_valid() -> None:
    raw = {"images": [{"id": 1, "width": 3, "height": 2, "file_name": "a.png"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0.2, 0.1]},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 3, 2]}],
           "categories": [{"id": 1, "name": "a"}]}
    for seed in range(20):
        out, _ = _run(raw, "jitter", seed, amount=3.0)
        for ann in out.values():
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 3 and y + h <= 2 and w >= 1 and h >= 1


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 1.0])
def test_swap_changes_exactly_the_requested_number_never_to_the_same_class(fraction: float) -> None:
    raw = _random(81, 100, n_categories=3)
    out, result = _run(raw, "swap", 6, fraction=fraction)
    old = {a["id"]: a for a in raw["annotations"]}
    moved = [aid for aid, a in out.items() if a["category_id"] != old[aid]["category_id"]]
    assert len(moved) == len(result.changed_ids) == exact_count(fraction, result.n_before)
    assert set(moved) == set(result.changed_ids)
    assert all(out[aid]["bbox"] == old[aid]["bbox"] for aid in out)
    assert sum(c.relabelled_in for c in result.per_category) == len(moved)
    if fraction == 1.0:  # the new class is uniform over the two others: each gets about half
        for cid in (10, 11, 12):
            targets = Counter(out[aid]["category_id"] for aid in moved if old[aid]["category_id"] == cid)
            assert len(targets) == 2 and min(targets.values()) >= 0.25 * sum(targets.values())


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(("mode", "kwargs", "match"), [
    ("drop", {}, r"corrupt_annotations\(mode=\) expects one of easy, hard, extreme, drop-per-category, spurious, "
                 r"jitter, swap; got 'drop'"),
    ("easy", {"seed": -1}, r"corrupt_annotations\(seed=\) expects a non-negative integer; got -1"),
    ("easy", {"seed": 1.5}, r"seed=\) expects a non-negative integer; got 1.5"),
    ("drop-per-category", {}, r"corrupt_annotations\(fraction=\) is required by mode 'drop-per-category'; got none"),
    ("spurious", {"fraction": -0.1}, r"corrupt_annotations\(fraction=\) expects a number \[0, 1\]; got -0.1"),
    ("swap", {"fraction": 1.5}, r"fraction=\) expects a number \[0, 1\]; got 1.5"),
    ("swap", {"fraction": math.nan}, r"fraction=\) expects a number \[0, 1\]; got nan"),
    ("easy", {"fraction": 0.5}, r"fraction=\) is only used by modes drop-per-category, spurious, swap; got 0.5 "
                                r"with mode 'easy'"),
    ("swap", {"fraction": 0.5, "amount": 0.1}, r"amount=\) is only used by mode jitter; got 0.1 with mode 'swap'"),
    ("jitter", {}, r"amount=\) is required by mode 'jitter'; got none"),
    ("jitter", {"amount": -0.5}, r"amount=\) expects a number >= 0; got -0.5"),
    ("jitter", {"amount": math.inf}, r"amount=\) expects a number >= 0; got inf"),
])
def test_invalid_options_are_one_line_config_errors(mode: str, kwargs: dict[str, Any], match: str,
                                                     tmp_path: Path) -> None:
    kwargs = {"seed": 0, **kwargs}
    dataset = dataset_from_dict(_fixed([2, 3]))
    with pytest.raises(ConfigError, match=match) as info:
        corrupt_annotations(dataset, mode=mode, **kwargs)
    assert "\n" not in str(info.value)
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(_fixed([2, 3])))
    with pytest.raises(ConfigError, match=match):
        corrupt_coco(src, dst, mode=mode, **kwargs)
    assert not dst.exists() and not default_report_path(dst).exists()


def test_swap_needs_two_categories_unless_nothing_is_swapped() -> None:
    raw = {"images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.png"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
           "categories": [{"id": 1, "name": "a"}]}
    with pytest.raises(ConfigError, match=r"mode='swap'\) needs at least two categories; <memory> has 1"):
        _run(raw, "swap", fraction=1.0)
    assert _run(raw, "swap", fraction=0.4)[1].changed_ids == ()


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_modes_match_the_core() -> None:
    assert CLI_MODES == CORRUPTION_MODES


def test_cli_writes_file_report_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(_fixed([0, 1, 2, 3, 5], crowd_on=(3,))))
    with pytest.raises(SystemExit) as info:
        main(["data", "corrupt", "--in", str(src), "--out", str(dst), "--mode", "hard", "--seed", "3"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "removed 4 of 11 annotations (36.36%)" in out and "3 of 5 images affected; 1 crowd kept" in out
    assert "the BRL paper reports 39.00% for 'hard'" in out and "c1" in out
    report = json.loads(default_report_path(dst).read_text())
    assert report["overall"]["removed"] == 4 and report["mode"] == "hard"
    assert len(load_coco(dst).annotations) == 12 - 4
    with pytest.raises(SystemExit) as info:
        main(["data", "corrupt", "--in", str(src), "--out", str(dst), "--mode", "swap", "--seed", "0",
              "--fraction", "0.5", "--report", str(tmp_path / "swap.json")])
    assert info.value.code == 0
    assert "swapped in" in capsys.readouterr().out
    assert json.loads((tmp_path / "swap.json").read_text())["overall"]["changed"] == 6  # round(5.5) = 6


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "easy", "--fraction", "0.5"], "error: corrupt_annotations(fraction=) is only used by modes"),
    (["--mode", "swap"], "error: corrupt_annotations(fraction=) is required by mode 'swap'"),
    (["--mode", "swap", "--fraction", "2"], "error: corrupt_annotations(fraction=) expects a number [0, 1]; got 2.0"),
    (["--mode", "jitter", "--amount", "-1"], "error: corrupt_annotations(amount=) expects a number >= 0; got -1.0"),
    (["--mode", "easy", "--amount", "0.1"], "error: corrupt_annotations(amount=) is only used by mode jitter"),
    (["--mode", "nonsense"], "Invalid value for '--mode'"),
    (["--mode", "easy", "--seed", "-4"], "Invalid value for '--seed'"),
])
def test_cli_bad_options_exit_2_and_write_nothing(args: list[str], message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(_fixed([2, 3])))
    seed = [] if "--seed" in args else ["--seed", "0"]
    with pytest.raises(SystemExit) as info:
        main(["data", "corrupt", "--in", str(src), "--out", str(dst), *seed, *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not dst.exists() and not default_report_path(dst).exists()


def test_cli_invalid_input_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _fixed([2, 3])
    raw["annotations"][1]["category_id"] = 42
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(raw))
    with pytest.raises(CocoValidationError, match="unknown category_id 42"):
        corrupt_coco(src, dst, mode="easy", seed=0)
    with pytest.raises(SystemExit) as info:
        main(["data", "corrupt", "--in", str(src), "--out", str(dst), "--mode", "easy", "--seed", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {src}: annotation id=2 (annotations[1]): unknown category_id 42")
    assert not dst.exists() and not default_report_path(dst).exists()
    with pytest.raises(SystemExit) as info:
        main(["data", "corrupt", "--in", str(tmp_path / "missing.json"), "--out", str(dst), "--mode", "easy",
              "--seed", "0"])
    assert info.value.code == 2 and "file does not exist" in capsys.readouterr().err
    assert not dst.exists()
