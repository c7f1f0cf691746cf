"""Learning parity: the training engine against a plain PyTorch loop on the same configuration.

Both loops train the detector of one config (``build_detector`` on its ``model`` section after
``torch.manual_seed(seed)``, so both start from the same weights) with the same optimizer, learning-rate
schedule, gradient clipping, batch size and iterations, and are evaluated the same way
(``run_on_dataset`` + ``evaluate_detections``: pycocotools AP on the validation set) at the same
iterations:

- ``engine``: ``curation_core.engine.trainer.train`` on ``load_config(config, overrides)`` with no hooks
  (what ``detcurate train --no-track`` runs);
- ``plain``: the loop written out below with nothing from the engine but the model factory: its own COCO
  reading and PIL decoding, horizontal flips, shuffled epochs (``DataLoader(shuffle=True)``), AdamW or
  SGD over decay / no-decay parameter groups, ``LambdaLR`` warm-up + cosine (or step), ``clip_grad_norm_``;
- ``plain-edata``: the plain loop fed by the engine's data pipeline (``DetectionDataset``,
  ``TrainTransform``, ``TrainBatchSampler``): the engine's batches exactly, so that a difference between
  ``engine`` and ``plain`` can be split into the loop's part and the data stream's part.

``engine`` and ``plain`` draw different data orders and flips, so they agree within seed noise, not
bitwise: compare means over ``--seeds``. Runs that change something (``--label NAME`` with ``--set
key=value`` on the config, ``--model-attr name=value`` on the built plain model, another ``--data``) are
recorded in the result's ``diagnosis`` list instead of ``rows``. ``--extras`` adds evaluation-only diagnostics of the final model:
AP at lower score thresholds, class-agnostic AP, AP on the first 300 training images, and (FCOS) how many
ground-truth boxes of those images get no positive location from the label assignment.

Every finished run is written to ``--out`` at once; a re-run with the same arguments skips it (resumable).
Training uses ``--threads`` CPU threads (default 1).

    python benchmarks/bench_engine_parity.py [--config configs/demo_student.yaml] [--iterations 800]
        [--seeds 0 1] [--eval-every 200] [--data DIR] [--loops engine plain plain-edata] [--label NAME]
        [--set key=value ...] [--model-attr name=value ...] [--extras] [--threads 1] [--quick]
        [--out benchmarks/results/engine_parity.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.coco import CocoDataset, load_coco  # noqa: E402
from curation_core.engine.config import TrainConfig, load_config  # noqa: E402
from curation_core.engine.models import build_detector  # noqa: E402
from curation_core.engine.predict import run_on_dataset  # noqa: E402
from curation_core.evaluation import evaluate_detections  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "engine_parity.json"
#: Statistics kept in each evaluation of the history.
KEPT_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
#: Training images evaluated by ``--extras`` (the overfitting check).
TRAIN_SUBSET = 300
#: Score thresholds tried by ``--extras`` besides the config's.
EXTRA_SCORE_THRESHOLDS = (0.01, 0.001)
#: The smoke profile: iterations, and training / validation images (annotation subsets).
QUICK = {"iterations": 4, "train": 64, "val": 16}
#: Loop kinds (see the module docstring).
LOOPS = ("engine", "plain", "plain-edata")


@dataclass(frozen=True)
class DataPaths:
    """COCO annotation files and image folders of a training and a validation set."""

    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path

    @classmethod
    def of_synth(cls, root: Path) -> DataPaths:
        """The layout of ``detcurate data synth --out ROOT``."""
        return cls(root / "train" / "annotations.json", root / "train" / "images",
                   root / "val" / "annotations.json", root / "val" / "images")

    def overrides(self) -> list[str]:
        return [f"data.train_annotations={self.train_annotations}", f"data.train_images={self.train_images}",
                f"data.val_annotations={self.val_annotations}", f"data.val_images={self.val_images}"]


@dataclass(frozen=True)
class RunSpec:
    """One training run: which loop, on which config, data and seed, for how long."""

    loop: str
    label: str
    config_path: Path
    overrides: tuple[str, ...]
    model_attrs: tuple[str, ...]
    data: DataPaths
    data_name: str
    seed: int
    iterations: int
    eval_every: int
    threads: int
    extras: bool

    @property
    def key(self) -> str:
        """Identifies the run in the result file (``--extras`` aside: see ``is_done``)."""
        return json.dumps([self.loop, self.label, str(self.config_path.resolve()), list(self.overrides),
                           list(self.model_attrs), self.data_name, self.seed, self.iterations, self.eval_every])

    def is_done(self, runs: Sequence[dict[str, Any]]) -> bool:
        """Whether ``runs`` holds this run (with its extras, when they are asked for)."""
        return any(run["key"] == self.key and (not self.extras or run.get("extras") is not None) for run in runs)

    def config(self, output_dir: Path) -> TrainConfig:
        return load_config(self.config_path, [
            *self.data.overrides(), f"schedule.max_iter={self.iterations}", f"train.seed={self.seed}",
            f"train.eval_every={self.eval_every}", f"train.num_threads={self.threads}",
            f"train.output_dir={output_dir}", *self.overrides,
        ])


# ----------------------------------------------------------------------------------------------
# Evaluation (shared by both loops)


def evaluate(model: torch.nn.Module, gt: CocoDataset, images: Path, config: TrainConfig) -> dict[str, Any]:
    """``KEPT_STATS`` of ``model`` on ``gt`` (pycocotools), plus the per-category AP by name."""
    detections = run_on_dataset(model, gt, images, category_ids=gt.category_ids, device=torch.device("cpu"),
                                batch_size=config.train.eval_batch_size)
    model.train()
    stats = evaluate_detections(gt, detections)
    named = stats.named()
    per_category = stats.as_dict().get("per_category_ap_by_name", {})
    return {**{k: named[k] for k in KEPT_STATS}, "detections": len(detections), "per_category_ap": per_category}


def extra_evaluations(model: torch.nn.Module, data: DataPaths, config: TrainConfig) -> dict[str, Any]:
    """Evaluation-only diagnostics of a trained model (no training): lower score thresholds, class-agnostic
    AP (every category merged into one, per-class NMS kept) and AP on the first ``TRAIN_SUBSET`` training
    images. Values are ``{"AP", "AP50", ...}`` dicts."""
    val = load_coco(data.val_annotations)
    out: dict[str, Any] = {}
    threshold = getattr(model, "score_thresh", None)
    for value in EXTRA_SCORE_THRESHOLDS if threshold is not None else ():
        model.score_thresh = value
        out[f"score_thresh={value}"] = _strip(evaluate(model, val, data.val_images, config))
    if threshold is not None:
        model.score_thresh = threshold
    detections = run_on_dataset(model, val, data.val_images, category_ids=val.category_ids,
                                device=torch.device("cpu"), batch_size=config.train.eval_batch_size)
    model.train()
    first = val.category_ids[0]
    agnostic_gt = CocoDataset(images=val.images, annotations=[{**a, "category_id": first} for a in val.annotations],
                              categories=val.categories[:1])
    agnostic = evaluate_detections(agnostic_gt, [{**d, "category_id": first} for d in detections]).named()
    out["class_agnostic"] = {k: agnostic[k] for k in KEPT_STATS}
    train = load_coco(data.train_annotations)
    subset_ids = {image["id"] for image in train.images[:TRAIN_SUBSET]}
    subset = CocoDataset(images=train.images[:TRAIN_SUBSET], categories=train.categories,
                         annotations=[a for a in train.annotations if a["image_id"] in subset_ids])
    out[f"train_first_{TRAIN_SUBSET}"] = _strip(evaluate(model, subset, data.train_images, config))
    if config.model.detector == "fcos":
        out["assignment"] = fcos_assignment(config, subset, data.train_images)
    return out


def fcos_assignment(config: TrainConfig, gt: CocoDataset, images: Path) -> dict[str, Any]:
    """How FCOS's label assignment (torchvision's: centre sampling, inside the box, regression range of the
    level, smallest box wins) covers the ground truth of ``gt`` at the model input size: the fraction of boxes
    with no positive location (all, COCO-small, medium), the mean number of positives per box, and the share
    of positives per level stride. Uses a fresh model (the assignment does not depend on the weights)."""
    from curation_core.engine.data import DetectionDataset

    with torch.random.fork_rng():
        model = build_detector(config.model, num_categories=len(gt.category_ids))
    model.eval()  # no BatchNorm statistics are touched; the transform then resizes as at test time
    captured: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    original = model.head.compute_loss

    def capture(targets, head_outputs, anchors, matched_idxs):  # noqa: ANN001, ANN202
        captured.append((anchors, matched_idxs))
        return original(targets, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = capture
    dataset = DetectionDataset(gt, images, category_ids=gt.category_ids)
    areas, positives, strides = [], [], []
    with torch.no_grad():
        for start in range(0, len(dataset), config.train.eval_batch_size):
            # Batches, not single images: GroupNorm refuses one value per group (1x1 P7 of a 128 px image).
            batch = [dataset[i] for i in range(start, min(start + config.train.eval_batch_size, len(dataset)))]
            images_t, targets_t = model.transform([b[0] for b in batch], [b[1] for b in batch])
            features = list(model.backbone(images_t.tensors).values())
            anchors = model.anchor_generator(images_t, features)
            per_level = [f.size(2) * f.size(3) for f in features]
            model.compute_loss(targets_t, model.head(features), anchors, per_level)
            for anchor, matched, target in zip(anchors, captured.pop()[1], targets_t, strict=True):
                boxes = target["boxes"]
                areas.append((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
                positives.append(torch.bincount(matched[matched >= 0], minlength=len(boxes)))
                strides.append(anchor[matched >= 0, 2] - anchor[matched >= 0, 0])
    area, count, stride = torch.cat(areas), torch.cat(positives), torch.cat(strides)
    small, medium = area < 32.0**2, (area >= 32.0**2) & (area < 96.0**2)
    levels = {str(int(s)): float((stride == s).float().mean()) for s in torch.unique(stride)}
    return {"boxes": len(area), "no_positive": float((count == 0).float().mean()),
            "no_positive_small": float((count[small] == 0).float().mean()) if small.any() else None,
            "no_positive_medium": float((count[medium] == 0).float().mean()) if medium.any() else None,
            "mean_positives": float(count.float().mean()), "positives_by_stride": levels}


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in KEPT_STATS}


# ----------------------------------------------------------------------------------------------
# The plain loop


class PlainCocoImages(torch.utils.data.Dataset):
    """A COCO training set read with ``json`` and PIL: (image float32 (3, H, W) in [0, 1], target with
    ``boxes`` float32 (N, 4) xyxy absolute pixels and ``labels`` int64 1..K in file order of categories).
    Horizontal flips with probability ``hflip`` are drawn from one seeded generator (single process)."""

    def __init__(self, annotations: Path, images: Path, *, hflip: float, seed: int) -> None:
        raw = json.loads(annotations.read_text(encoding="utf-8"))
        labels = {c["id"]: index + 1 for index, c in enumerate(raw["categories"])}
        by_image: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in raw["images"]}
        for ann in raw["annotations"]:
            if not ann.get("iscrowd", 0) and ann["bbox"][2] > 0 and ann["bbox"][3] > 0:
                by_image[ann["image_id"]].append(ann)
        self.items = []
        for image in raw["images"]:
            anns = by_image[image["id"]]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
            self.items.append((images / image["file_name"], boxes, torch.tensor([labels[a["category_id"]] for a in anns],
                                                                                 dtype=torch.int64)))
        self.hflip = hflip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from PIL import Image
        from torchvision.transforms.functional import to_tensor

        path, boxes, labels = self.items[index]
        with Image.open(path) as handle:
            image = to_tensor(handle.convert("RGB"))
        if float(torch.rand((), generator=self.generator)) < self.hflip:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels}


def lr_factor(iteration: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate for the step after ``iteration`` steps: linear warm-up from
    ``warmup_factor``, times cosine to ``min_lr_factor`` (or ``gamma`` per passed step)."""
    s = config.schedule
    if s.policy == "cosine":
        decay = s.min_lr_factor + (1.0 - s.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * iteration / s.max_iter))
    else:
        decay = s.gamma ** sum(step <= iteration for step in s.steps)
    warm = s.warmup_factor + (1.0 - s.warmup_factor) * iteration / s.warmup_iters if iteration < s.warmup_iters else 1.0
    return decay * warm


def plain_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights (ndim > 1) only; norm parameters and biases get ``weight_decay_norm``."""
    o = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": o.weight_decay_norm}]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)


def _endless(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:  # e.g. fewer training images than one batch with drop_last: never loop on nothing
            raise ValueError(f"plain loop: the training loader yields no batch (batch size "
                             f"{loader.batch_size}, {len(loader.dataset)} images).")


def check_plain_supports(config: TrainConfig) -> None:
    """The plain loop implements flips only: refuse configs it would silently train differently."""
    a = config.augment
    if tuple(a.scale_range) != (1.0, 1.0) or a.brightness or a.contrast or a.saturation:
        raise ValueError(f"plain loop implements augment.hflip only; got scale_range={list(a.scale_range)}, "
                         f"brightness={a.brightness}, contrast={a.contrast}, saturation={a.saturation}.")
    if config.train.device not in ("cpu", "auto") or config.data.num_workers:
        raise ValueError(f"plain loop runs on the CPU without workers; got train.device={config.train.device!r}, "
                         f"data.num_workers={config.data.num_workers}.")


def _set_model_attrs(model: torch.nn.Module, attrs: Sequence[str]) -> None:
    for item in attrs:
        name, _, text = item.partition("=")
        if not hasattr(model, name):
            raise ValueError(f"--model-attr {item!r}: the model has no attribute {name!r}.")
        setattr(model, name, type(getattr(model, name))(text))


def plain_batches(spec: RunSpec, config: TrainConfig) -> Iterator[Any]:
    """Endless shuffled epochs of ``PlainCocoImages`` (last incomplete batch of an epoch dropped)."""
    check_plain_supports(config)
    dataset = PlainCocoImages(spec.data.train_annotations, spec.data.train_images, hflip=config.augment.hflip,
                              seed=spec.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=lambda batch: tuple(zip(*batch, strict=True)),
                                         generator=torch.Generator().manual_seed(spec.seed))
    return _endless(loader)


def engine_batches(spec: RunSpec, config: TrainConfig) -> Iterator[Any]:
    """The engine's batches for iterations 0 .. ``spec.iterations - 1`` (as ``Trainer._setup`` builds them)."""
    from curation_core.engine.data import DetectionDataset, TrainBatchSampler, TrainTransform, make_loader

    train_gt = load_coco(spec.data.train_annotations)
    transform = TrainTransform(config.augment, config.model.min_size, config.model.max_size)
    dataset = DetectionDataset(train_gt, spec.data.train_images, category_ids=train_gt.category_ids,
                               transform=transform, seed=spec.seed)
    sampler = TrainBatchSampler(len(dataset), config.train.batch_size, seed=spec.seed, start=0, stop=spec.iterations)
    return iter(make_loader(dataset, batch_sampler=sampler, num_workers=0, seed=spec.seed, pin_memory=False))


def run_plain(spec: RunSpec) -> dict[str, Any]:
    """Train with the plain loop; history of evaluations every ``eval_every`` iterations and at the end."""
    config = spec.config(Path(tempfile.gettempdir()) / "unused")
    val = load_coco(spec.data.val_annotations)
    train_ids = [c["id"] for c in json.loads(spec.data.train_annotations.read_text(encoding="utf-8"))["categories"]]
    if train_ids != val.category_ids:  # labels 1..K follow the training file's order; evaluation uses the val's
        raise ValueError(f"plain loop expects the same category order in both sets; got {train_ids} (train) and "
                         f"{val.category_ids} (val).")
    batches = engine_batches(spec, config) if spec.loop == "plain-edata" else plain_batches(spec, config)
    torch.manual_seed(spec.seed)
    model = build_detector(config.model, num_categories=len(val.category_ids))
    _set_model_attrs(model, spec.model_attrs)
    model.train()
    optimizer = plain_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, config))
    history, step_seconds, images_seen = [], 0.0, 0
    for iteration in range(1, spec.iterations + 1):
        start = time.perf_counter()
        images, targets = next(batches)
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        step_seconds += time.perf_counter() - start
        images_seen += len(images)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"plain loop: loss became non-finite at iteration {iteration}")
        if iteration % spec.eval_every == 0 or iteration == spec.iterations:
            history.append({"iteration": iteration, **evaluate(model, val, spec.data.val_images, config)})
    extras = extra_evaluations(model, spec.data, config) if spec.extras else None
    return {"history": history, "images_per_s": images_seen / step_seconds, "extras": extras}


# ----------------------------------------------------------------------------------------------
# The engine


def run_engine(spec: RunSpec) -> dict[str, Any]:
    """Train with ``curation_core.engine.trainer.train`` (no hooks); history as the trainer recorded it."""
    from curation_core.engine.predict import load_detector
    from curation_core.engine.trainer import train

    if spec.model_attrs:
        raise ValueError("--model-attr applies to the plain loop only (the engine builds its own model)")
    workdir = Path(tempfile.mkdtemp(prefix="engine_parity_"))
    try:
        config = spec.config(workdir / "run")
        result = train(config)
        history = [{"iteration": h["iteration"], **{k: h[k] for k in KEPT_STATS}} for h in result.history]
        if result.final_stats is not None:
            history[-1]["per_category_ap"] = result.final_stats.as_dict().get("per_category_ap_by_name", {})
        extras = None
        if spec.extras:
            extras = extra_evaluations(load_detector(result.checkpoint).model, spec.data, config)
        return {"history": history, "images_per_s": result.images_per_s, "extras": extras}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_one(spec: RunSpec) -> dict[str, Any]:
    """One run as a result row (``key``, settings, ``history``, ``wall_s``, ``images_per_s``, ``extras``).

    ``cpu_s`` (CPU time of this process over the whole run, evaluations included) is the speed figure to
    compare when the machine is shared: wall-clock ``images_per_s`` drops with the load, CPU time much less."""
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        outcome = run_engine(spec) if spec.loop == "engine" else run_plain(spec)
    finally:
        torch.set_num_threads(threads)
    return {"key": spec.key, "label": spec.label, "loop": spec.loop, "seed": spec.seed, "iterations": spec.iterations,
            "config": _shown(spec.config_path), "overrides": list(spec.overrides), "model_attrs": list(spec.model_attrs),
            "data": spec.data_name, "threads": spec.threads,
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start, **outcome}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------
# Result file, tables, command line


def load_previous(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The parity rows, diagnosis rows and notes already in ``path`` (empty when it does not exist)."""
    if not path.is_file():
        return [], [], []
    previous = json.loads(path.read_text(encoding="utf-8"))
    return list(previous.get("rows", [])), list(previous.get("diagnosis", [])), list(previous.get("notes", []))


def table_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One printable row per run: AP at every evaluation, the final AP50 / APs, speed and time."""
    points = sorted({h["iteration"] for run in runs for h in run["history"]})
    rows = []
    for run in runs:
        aps = {h["iteration"]: h["AP"] for h in run["history"]}
        final = run["history"][-1] if run["history"] else {}
        change = " ".join([*run["overrides"], *run["model_attrs"]]) or "-"
        rows.append({"label": run["label"], "loop": run["loop"], "seed": run["seed"], "change": change,
                     **{f"AP@{p}": aps.get(p, "-") for p in points},
                     "AP50": final.get("AP50", "-"), "APs": final.get("APs", "-"), "APm": final.get("APm", "-"),
                     "train img/s": run["images_per_s"], "wall s": run["wall_s"], "cpu s": run.get("cpu_s", "-")})
    return rows


def summary_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread of the final AP per (label, loop, iterations) over seeds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        members = groups.setdefault((run["label"], run["loop"], run["iterations"]), [])
        if all(m["seed"] != run["seed"] for m in members):  # a repeated seed is counted once (the first)
            members.append(run)
    rows = []
    for (label, loop, iterations), members in groups.items():
        finals = torch.tensor([m["history"][-1]["AP"] for m in members], dtype=torch.float64)
        rows.append({"label": label, "loop": loop, "iterations": iterations, "seeds": len(members),
                     "mean AP": float(finals.mean()), "min AP": float(finals.min()), "max AP": float(finals.max()),
                     "mean img/s": sum(m["images_per_s"] for m in members) / len(members)})
    return rows


def quick_data(workdir: Path, data: DataPaths | None) -> DataPaths:
    """The smoke profile's data: the first ``QUICK`` images of ``data`` (annotation subsets written to
    ``workdir``), or a small synthetic set generated there when ``data`` is None."""
    if data is None:
        from curation_core.synth import SynthConfig, generate_dataset

        generate_dataset(workdir / "synth", SynthConfig(train=QUICK["train"], val=QUICK["val"]))
        return DataPaths.of_synth(workdir / "synth")
    files = {}
    for split, source in (("train", data.train_annotations), ("val", data.val_annotations)):
        raw = json.loads(source.read_text(encoding="utf-8"))
        images = raw["images"][: QUICK[split]]
        ids = {image["id"] for image in images}
        files[split] = workdir / f"{split}.json"
        files[split].write_text(json.dumps({**raw, "images": images,
                                            "annotations": [a for a in raw["annotations"] if a["image_id"] in ids]}))
    return DataPaths(files["train"], data.train_images, files["val"], data.val_images)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo_student.yaml")
    parser.add_argument("--iterations", type=int, help="training iterations (default: the config's schedule.max_iter)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-every", type=int, help="iterations between evaluations (default: the config's)")
    parser.add_argument("--data", type=Path, help="folder of `detcurate data synth --out DIR` (default: the config's paths)")
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=["engine", "plain"])
    parser.add_argument("--label", help="record the runs as a diagnosis under this name (default: parity rows)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="config override for both loops (repeatable)")
    parser.add_argument("--model-attr", action="append", default=[], metavar="NAME=VALUE",
                        help="attribute of the built model, plain loop only (e.g. center_sampling_radius=2.5)")
    parser.add_argument("--extras", action="store_true", help="evaluation-only diagnostics of the final models")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while training")
    parser.add_argument("--quick", action="store_true", help=f"smoke profile: {QUICK['iterations']} iterations on "
                        f"{QUICK['train']} training / {QUICK['val']} validation images, one seed")
    parser.add_argument("--out", type=Path, help=f"result JSON (default {_shown(DEFAULT_OUT)}; with --quick a temp file)")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    if args.model_attr and "engine" in args.loops:
        parser.error("--model-attr applies to the plain loop only: add --loops plain")
    return args


def plan(args: argparse.Namespace, data: DataPaths, data_name: str) -> list[RunSpec]:
    """The runs of this invocation, seed-major (so that a stopped invocation leaves whole seeds)."""
    schedule = load_config(args.config, [*data.overrides(), *args.overrides])
    iterations = QUICK["iterations"] if args.quick else args.iterations or schedule.schedule.max_iter
    eval_every = iterations if args.quick else args.eval_every or schedule.train.eval_every or iterations
    label = args.label or ("quick" if args.quick else "parity")
    overrides = list(args.overrides)
    if iterations < schedule.schedule.warmup_iters:  # a short run (--quick) warms up over all of it
        overrides.insert(0, f"schedule.warmup_iters={iterations}")
    return [RunSpec(loop=loop, label=label, config_path=args.config, overrides=tuple(overrides),
                    model_attrs=tuple(args.model_attr), data=data, data_name=data_name, seed=seed, iterations=iterations,
                    eval_every=eval_every, threads=args.threads, extras=args.extras)
            for seed in (args.seeds[:1] if args.quick else args.seeds) for loop in args.loops]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or (Path(tempfile.gettempdir()) / "engine_parity_quick.json" if args.quick else DEFAULT_OUT)
    with tempfile.TemporaryDirectory() as tmp:
        data = DataPaths.of_synth(args.data) if args.data else None
        if args.quick:
            data = quick_data(Path(tmp), data)
        if data is None:
            config = load_config(args.config)
            data = DataPaths(*(Path(p) for p in (config.data.train_annotations, config.data.train_images,
                                                 config.data.val_annotations, config.data.val_images)))
        rows, diagnosis, notes = load_previous(out)
        target = diagnosis if args.label else rows
        data_name = ("quick:" if args.quick else "") + (_shown(args.data) if args.data else
                                                        "synth" if args.quick else _shown(data.train_annotations))
        for spec in plan(args, data, data_name):
            if spec.is_done([*rows, *diagnosis]):
                print(f"skip (already in {out}): {spec.loop} seed {spec.seed} {spec.label}")
                continue
            target.append(run_one(spec))
            write_result(out, "engine_parity", rows, diagnosis=diagnosis, notes=notes)
            print(f"{spec.loop} seed {spec.seed} {spec.label}: AP {target[-1]['history'][-1]['AP']:.4f} "
                  f"({target[-1]['wall_s']:.0f} s)", flush=True)
    if not out.is_file():
        write_result(out, "engine_parity", rows, diagnosis=diagnosis, notes=notes)
    for title, runs in (("Engine vs plain loop", rows), ("Diagnosis", diagnosis)):
        if runs:
            print_rows(f"{title}: val AP (pycocotools) at each evaluation", table_rows(runs))
            print_rows(f"{title}: final AP over seeds", summary_rows(runs))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
