"""Sampling ablation: Libra R-CNN and PISA on Faster R-CNN (and PISA on RetinaNet), val AP and overhead.

    python benchmarks/bench_sampling.py                      # the CPU profile (resumable by cell)
    python benchmarks/bench_sampling.py --only faster_rcnn:baseline,faster_rcnn:all --seeds 0
    python benchmarks/bench_sampling.py --profile smoke      # seconds: the test's profile
    python benchmarks/bench_sampling.py --report-only        # tables of what is finished

Grid (``VARIANTS``): Faster R-CNN baseline (random RoI sampling, torchvision's), each part alone
(Libra IoU-balanced negatives, Libra instance-balanced positives, ISR-P, ISR-N, CARL) and all five;
RetinaNet baseline and PISA (ISR-P with CARL: ``model.pisa`` switches them together for RetinaNet).
Every cell is one training run from scratch with the same data, schedule and seed set, only
``model.sampler`` / ``model.libra`` / ``model.pisa`` / ``model.pisa_parts`` differ; the val AP is
measured once at the end. A finished cell is written to the result file at once and never retrained; a
killed cell resumes from its checkpoint.

Two measurements besides the grid, each a cell of its own:

- ``overhead``: training images/s of every variant against its plain detector, side by side in one
  process (the same batches, variants interleaved round-robin, the median of the rounds; every round
  builds each variant afresh from the same seed and times full training steps at learning rate 0, so
  every variant has the same weights and inputs); time is the process's CPU time (one thread), so
  other work on a shared machine hardly enters, and images/s are those of one idle core;
- ``histogram``: the IoU histogram of the negatives the RoI heads draw with random sampling, Libra
  with bins over the negatives' own IoU range, and Libra with mmdetection's range (to the largest
  IoU of any proposal: mmdetection issue 5323), on the RPN proposals of a trained baseline model.

Results: ``benchmarks/results/sampling.json`` (``{"profile", "cells": [{"detector", "variant", "seed",
"AP", "AP50", "AP75", "images_per_s", "wall_s"}, ...], "overhead": [...], "histogram": {...}}``) and
``sampling.md`` (mean and spread over seeds, difference to the baseline, overhead, histogram) and
``sampling_iou.png`` (the histogram).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DETCURATE = str(Path(sys.executable).parent / "detcurate")
#: Seed of the benchmark's synthetic data set.
DATA_SEED = 2027


@dataclass(frozen=True)
class Profile:
    """Scale of the benchmark, fixed before any result was seen."""

    train_images: int
    val_images: int
    iterations: int
    batch_size: int
    backbone: str = "nano"
    size: int = 128
    warmup_iters: int = 20
    overhead_steps: int = 3  # training steps per variant per round
    overhead_rounds: int = 7
    histogram_images: int = 32


PROFILES = {
    # One CPU core for the grid (21 Faster R-CNN + 6 RetinaNet cells) in about an hour of an idle core:
    # Faster R-CNN nano trains at about 10 images/s on one core at 128 px (its cost is RoIAlign's
    # backward over 256 RoIs per image), so 150 iterations of 8 images (one epoch of the 1,200) take
    # about 2 minutes a cell. Chosen from that cost alone, before any AP was seen. A short schedule:
    # expect small APs and differences within the seed spread.
    "cpu": Profile(train_images=1200, val_images=200, iterations=150, batch_size=8),
    # A GPU: the tiny backbone, 20 epochs of 6,000 images.
    "gpu": Profile(train_images=6000, val_images=500, iterations=7500, batch_size=16, backbone="tiny",
                   warmup_iters=200, overhead_steps=10, overhead_rounds=5, histogram_images=128),
    # seconds, for tests/test_bench_sampling.py
    "smoke": Profile(train_images=6, val_images=3, iterations=2, batch_size=2, size=64, warmup_iters=1,
                     overhead_steps=1, overhead_rounds=2, histogram_images=2),
}

#: (detector, variant) -> model section overrides. RetinaNet's PISA has no per-part switch.
VARIANTS: dict[tuple[str, str], dict[str, Any]] = {
    ("faster_rcnn", "baseline"): {},
    ("faster_rcnn", "libra_neg"): {"sampler": "libra", "libra": {"balanced_positives": False}},
    ("faster_rcnn", "libra_pos"): {"sampler": "libra", "libra": {"bins": 1}},
    ("faster_rcnn", "isr_p"): {"pisa": True, "pisa_parts": ["isr_p"]},
    ("faster_rcnn", "isr_n"): {"pisa": True, "pisa_parts": ["isr_n"]},
    ("faster_rcnn", "carl"): {"pisa": True, "pisa_parts": ["carl"]},
    ("faster_rcnn", "all"): {"sampler": "libra", "pisa": True},
    ("retinanet", "baseline"): {},
    ("retinanet", "pisa"): {"pisa": True},
}
#: IoU histogram bins of the sampled negatives (the RoI heads' background threshold is 0.5).
HISTOGRAM_EDGES = np.linspace(0.0, 0.5, 11)


# ----------------------------------------------------------------------------------------------
# Configurations


def data_folder(work: Path, profile: Profile) -> Path:
    folder = work / "data"
    if not (folder / "synth.json").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([DETCURATE, "data", "synth", "--out", str(folder), "--train", str(profile.train_images),
                        "--val", str(profile.val_images), "--size", str(profile.size), "--seed", str(DATA_SEED)],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return folder


def model_section(profile: Profile, detector: str, variant: str) -> dict[str, Any]:
    return {"detector": detector, "backbone": profile.backbone, "min_size": profile.size, "max_size": profile.size,
            **VARIANTS[(detector, variant)]}


def config_dict(work: Path, profile: Profile, detector: str, variant: str, seed: int) -> dict[str, Any]:
    """The demo student's recipe (AdamW, flips, cosine) at this profile's scale."""
    data = data_folder(work, profile)
    return {
        "model": model_section(profile, detector, variant),
        "data": {"train_annotations": str(data / "train" / "annotations.json"), "train_images": str(data / "train" / "images"),
                 "val_annotations": str(data / "val" / "annotations.json"), "val_images": str(data / "val" / "images")},
        "augment": {"hflip": 0.5},
        "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.05, "clip_grad_norm": 10.0},
        "schedule": {"max_iter": profile.iterations, "policy": "cosine", "warmup_iters": profile.warmup_iters},
        "train": {"output_dir": str(work / "runs" / f"{detector}_{variant}_s{seed}"), "batch_size": profile.batch_size,
                  "seed": seed, "device": "cpu", "num_threads": 1, "checkpoint_every": 25, "eval_batch_size": 16},
    }


# ----------------------------------------------------------------------------------------------
# Cells


def train_cell(work: Path, profile: Profile, detector: str, variant: str, seed: int) -> dict[str, Any]:
    """Train one cell (resuming its checkpoint if there is one) and return its row."""
    from curation_core.engine.config import config_from_dict
    from curation_core.engine.trainer import train

    config = config_from_dict(config_dict(work, profile, detector, variant, seed))
    start = time.perf_counter()
    result = train(config, resume=True)
    named = result.final_stats.named() if result.final_stats is not None else {}
    return {"detector": detector, "variant": variant, "seed": seed, "AP": named.get("AP", math.nan),
            "AP50": named.get("AP50", math.nan), "AP75": named.get("AP75", math.nan),
            "images_per_s": result.images_per_s, "wall_s": round(time.perf_counter() - start, 1)}


def measure_overhead(work: Path, profile: Profile, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Training images/s of each variant and its ratio to its detector's baseline, side by side."""
    import torch

    from curation_core.coco import load_coco
    from curation_core.engine.config import AugmentConfig, ModelConfig
    from curation_core.engine.data import DetectionDataset, TrainTransform, collate
    from curation_core.engine.models import build_detector

    torch.set_num_threads(1)
    data = data_folder(work, profile)
    gt = load_coco(data / "train" / "annotations.json")
    categories = [c["id"] for c in gt.categories]
    transform = TrainTransform(AugmentConfig(hflip=0.5), profile.size, profile.size)
    dataset = DetectionDataset(gt, data / "train" / "images", category_ids=categories, transform=transform)
    b = profile.batch_size
    batches = [collate([dataset[(j % len(dataset), j)] for j in range(k * b, (k + 1) * b)])
               for k in range(profile.overhead_steps)]
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    for r in range(profile.overhead_rounds):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate the order every round
            # A fresh model every round, from the same seed (so the same weights).
            torch.manual_seed(0)
            model = build_detector(ModelConfig(**model_section(profile, *key)), num_categories=len(categories)).train()
            # lr 0: the step costs what a training step costs, and every variant keeps the same weights.
            optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
            _steps(model, optimizer, batches[:1])  # warm-up: first-call allocations
            start = time.process_time()  # CPU time of this one-thread process: other load barely counts
            _steps(model, optimizer, batches)
            seconds[key].append(time.process_time() - start)
    rate = {key: profile.overhead_steps * b / float(np.median(s)) for key, s in seconds.items()}
    return [{"detector": d, "variant": v, "images_per_s": rate[(d, v)],
             "ratio": rate[(d, v)] / rate[(d, "baseline")] if (d, "baseline") in rate else math.nan}
            for d, v in keys]


def _steps(model: Any, optimizer: Any, batches: list[Any]) -> None:
    for images, targets in batches:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def sampled_iou_histogram(work: Path, profile: Profile) -> dict[str, Any]:
    """Histogram of the IoUs of the negatives drawn by random and Libra sampling (both bin ranges)."""
    import torch

    from curation_core.coco import load_coco
    from curation_core.engine.checkpoint import load_checkpoint
    from curation_core.engine.config import AugmentConfig, ModelConfig
    from curation_core.engine.data import DetectionDataset, TrainTransform, collate
    from curation_core.engine.models import build_detector
    from curation_core.losses.per_image import _batch_images
    from curation_core.losses.per_image_rcnn import _proposals, _rpn_pass
    from curation_core.samplers.ignore import split_ignored
    from curation_core.samplers.libra import sample_iou_balanced

    torch.set_num_threads(1)
    data = data_folder(work, profile)
    gt = load_coco(data / "train" / "annotations.json")
    categories = [c["id"] for c in gt.categories]
    model = build_detector(ModelConfig(**model_section(profile, "faster_rcnn", "baseline")), num_categories=len(categories))
    checkpoint = work / "runs" / "faster_rcnn_baseline_s0" / "checkpoint.pt"
    trained = checkpoint.is_file()
    if trained:
        model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.eval()
    dataset = DetectionDataset(gt, data / "train" / "images", category_ids=categories,
                               transform=TrainTransform(AugmentConfig(hflip=0.0), profile.size, profile.size))
    images, targets = collate([dataset[(i, i)] for i in range(min(profile.histogram_images, len(dataset)))])
    heads = model.roi_heads
    budget, fraction = heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction
    generator = torch.Generator().manual_seed(0)
    counts = {name: np.zeros(len(HISTOGRAM_EDGES) - 1, dtype=int) for name in ("pool", "random", "libra", "libra_mmdet")}
    with torch.no_grad():
        batch = _batch_images(model.transform, images)
        features = model.backbone(batch.tensors)
        proposals = _proposals(model, _rpn_pass(model, batch, features), batch, training=True)
    for proposals_i, target in zip(proposals, targets, strict=True):
        boxes, classes, _ = split_ignored(target)
        candidates = torch.cat([proposals_i, boxes])
        _, labels, ious = heads._match(candidates, boxes, classes)
        negative = torch.where(labels == 0)[0]
        num_neg = min(len(negative), budget - min(int((labels > 0).sum()), int(budget * fraction)))
        neg_ious = ious[negative]
        max_iou = float(ious.max()) if len(ious) else 0.0
        picks = {"pool": torch.arange(len(negative)),
                 "random": torch.randperm(len(negative), generator=generator)[:num_neg],
                 "libra": sample_iou_balanced(neg_ious, num_neg, generator=generator),
                 "libra_mmdet": sample_iou_balanced(neg_ious, num_neg, generator=generator, bin_range="mmdetection",
                                                    max_iou=max_iou)}
        for name, pick in picks.items():
            counts[name] += np.histogram(neg_ious[pick].numpy(), bins=HISTOGRAM_EDGES)[0]
    return {"edges": HISTOGRAM_EDGES.round(3).tolist(), "trained_model": trained, "images": len(images),
            **{name: c.tolist() for name, c in counts.items()}}


# ----------------------------------------------------------------------------------------------
# Results


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (detector, variant): mean and sample standard deviation over seeds, and the mean paired
    difference to the baseline of the same seeds with its standard deviation."""
    rows = []
    for detector, variant in VARIANTS:
        rs = sorted((c for c in cells if c["detector"] == detector and c["variant"] == variant), key=lambda c: c["seed"])
        if not rs:
            continue
        base = {c["seed"]: c for c in cells if c["detector"] == detector and c["variant"] == "baseline"}
        row: dict[str, Any] = {"detector": detector, "variant": variant, "seeds": len(rs)}
        for metric in ("AP", "AP50", "AP75"):
            values = np.array([c[metric] for c in rs], dtype=float)
            row[f"{metric} mean"] = float(values.mean())
            row[f"{metric} sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        diffs = np.array([c["AP"] - base[c["seed"]]["AP"] for c in rs if c["seed"] in base], dtype=float)
        row["dAP mean"] = float(diffs.mean()) if len(diffs) else math.nan
        row["dAP sd"] = float(diffs.std(ddof=1)) if len(diffs) > 1 else math.nan
        rows.append(row)
    return rows


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    from curation_core.io import atomic_write

    rows = summarize(payload["cells"])
    head = ["detector", "variant", "seeds", "AP mean", "AP sd", "AP50 mean", "AP50 sd", "AP75 mean", "dAP mean", "dAP sd"]
    lines = [f"Profile `{payload['profile']['name']}`: {payload['profile']}", "",
             "Val AP at the end of training, mean and sample sd over seeds; dAP: paired difference to the "
             "baseline of the same seed (mean, sd).", "", _table(head, rows)]
    if payload.get("overhead"):
        lines += ["", "Training speed: images per second of the process's CPU time (one thread), every variant "
                  "side by side in one process on the same batches, median of the rounds; ratio to the detector's "
                  "baseline (1.0 = no overhead; the round-to-round spread is a few per cent):", "", _table(["detector", "variant", "images_per_s", "ratio"], payload["overhead"])]
    hist = payload.get("histogram")
    if hist:
        edges = hist["edges"]
        names = [n for n in ("pool", "random", "libra", "libra_mmdet") if n in hist]
        hrows = [{"IoU bin": f"[{edges[i]:.2f}, {edges[i + 1]:.2f})", **{n: hist[n][i] for n in names}}
                 for i in range(len(edges) - 1)]
        model = "a trained baseline (seed 0)" if hist["trained_model"] else "an untrained model"
        lines += ["", f"IoU of the sampled RoI negatives ({hist['images']} images, RPN proposals of {model}); pool: "
                  "all candidate negatives; libra: bins over the negatives' range; libra_mmdet: mmdetection's range:",
                  "", _table(["IoU bin", *names], hrows)]
    with atomic_write(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _table(head: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[h]:.4g}" if isinstance(r[h], float) else str(r[h]) for h in head) + " |")
    return "\n".join(lines)


def plot_histogram(path: Path, hist: dict[str, Any]) -> None:
    """Bars of the sampled negatives' IoU histogram, one group per bin, one bar per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curation_core.io import atomic_write

    edges = np.array(hist["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, (edges[1] - edges[0]) / 4
    labels = {"random": "random", "libra": "Libra, bins over the negatives' range",
              "libra_mmdet": "Libra, mmdetection's range (to max IoU of all proposals)"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, label) in enumerate(labels.items()):
        share = np.array(hist[name], dtype=float) / max(1, sum(hist[name]))
        ax.bar(centres + (k - 1) * width, share, width=width, label=label)
    ax.set_xlabel("IoU of the sampled negative with its best ground-truth box")
    ax.set_ylabel("fraction of the sampled negatives (log scale)")
    ax.set_yscale("log")
    ax.set_title(f"RoI negatives drawn per sampler ({hist['images']} images)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


class Results:
    """The result file: cells, overhead and histogram, rewritten atomically after every cell."""

    def __init__(self, path: Path, profile_name: str, profile: Profile) -> None:
        self.path = path
        self.payload: dict[str, Any] = {"benchmark": "sampling", "profile": {"name": profile_name, **asdict(profile),
                                                                             "data_seed": DATA_SEED}, "cells": []}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("profile", {}).get("name") == profile_name:
                self.payload.update({k: old[k] for k in ("cells", "overhead", "histogram") if k in old})

    def done(self) -> set[tuple[str, str, int]]:
        return {(c["detector"], c["variant"], c["seed"]) for c in self.payload["cells"]}

    def save(self) -> None:
        from curation_core.io import write_json_atomic

        if self.path.is_file():  # keep cells another process of the same profile wrote meanwhile
            old = json.loads(self.path.read_text())
            if old.get("profile", {}).get("name") == self.payload["profile"]["name"]:
                mine = self.done()
                self.payload["cells"] += [c for c in old.get("cells", [])
                                          if (c["detector"], c["variant"], c["seed"]) not in mine]
        self.payload["machine"] = machine_info()
        self.payload["cells"].sort(key=lambda c: (list(VARIANTS).index((c["detector"], c["variant"])), c["seed"]))
        write_json_atomic(self.path, self.payload, indent=2)
        write_markdown(self.path.with_suffix(".md"), self.payload)
        if self.payload.get("histogram"):
            plot_histogram(self.path.with_name(self.path.stem + "_iou.png"), self.payload["histogram"])


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "sampling")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sampling.json")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="", help="comma-separated detector:variant pairs (default: all)")
    parser.add_argument("--skip-overhead", action="store_true", help="do not measure the overhead cell")
    parser.add_argument("--redo-overhead", action="store_true", help="measure the overhead cell again")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    console = Console()
    profile = PROFILES[args.profile]
    keys = list(VARIANTS)
    if args.only:
        keys = [tuple(p.split(":", 1)) for p in args.only.split(",")]  # type: ignore[misc]
        unknown = [k for k in keys if k not in VARIANTS]
        if unknown:
            parser.error(f"--only: unknown pairs {unknown}; valid: {', '.join(':'.join(k) for k in VARIANTS)}")
    results = Results(args.out, args.profile, profile)
    if not args.report_only:
        if ("overhead" not in results.payload or args.redo_overhead) and not args.skip_overhead:
            console.print("overhead: every variant side by side", highlight=False)
            results.payload["overhead"] = measure_overhead(args.work, profile, list(VARIANTS))
            results.save()
        todo = [(d, v, s) for s in (int(x) for x in args.seeds.split(",")) for d, v in keys
                if (d, v, s) not in results.done()]
        console.print(f"{len(todo)} cells to do ({len(results.done())} done)", highlight=False)
        for i, (detector, variant, seed) in enumerate(todo, 1):
            row = train_cell(args.work, profile, detector, variant, seed)
            results.payload["cells"].append(row)
            results.save()
            console.print(f"[{i}/{len(todo)}] {detector} {variant} seed {seed}: AP {row['AP']:.4f} "
                          f"({row['wall_s']:.0f} s)", highlight=False)
        if ("faster_rcnn", "baseline", 0) in results.done() and not results.payload.get("histogram", {}).get(
                "trained_model"):
            results.payload["histogram"] = sampled_iou_histogram(args.work, profile)
        elif "histogram" not in results.payload:
            results.payload["histogram"] = sampled_iou_histogram(args.work, profile)
    results.save()
    print_rows(f"Sampling ablation, profile {args.profile} (val AP over seeds)", summarize(results.payload["cells"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
