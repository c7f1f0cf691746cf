"""Training and inference throughput of detector configurations, with the time spent waiting for data.

For each configuration: ``--iters`` training steps through the real ``Trainer`` (data loader, augmentations,
hooks, optimiser, AMP as configured; no periodic evaluation), of which the first ``--warmup`` are not
counted; then inference over the validation images (``run_on_dataset``: loader, model, COCO results).
Reported per configuration, side by side in one run:

- train images/s: counted steps' images / counted steps' wall time (data waiting included);
- data wait: time blocked on the data loader / step time, over the counted steps (target < 10 %);
- infer images/s: validation images / wall time of the inference pass (batches of ``eval_batch_size``).

CPU (default): the demo teacher and student (``configs/demo_*.yaml``) on a fresh 128 px synthetic set, with
the thread and worker settings of the configs. GPU (``--device cuda``): FCOS-R50 and Faster R-CNN-R50 at
640 px with bf16 mixed precision (``configs/fcos_r50.yaml``, ``configs/faster_rcnn_r50.yaml``) on a
640 px synthetic set.

    python benchmarks/bench_train.py [--device cpu|cuda] [--iters 60] [--warmup 10] [--data DIR] [--quick]
        [--config FILE ...] [--set key=value ...] [--train-images N] [--val-images N]
        [--out benchmarks/results/train_cpu.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.coco import load_coco  # noqa: E402
from curation_core.engine.config import TrainConfig, load_config  # noqa: E402
from curation_core.engine.hooks import Hook  # noqa: E402
from curation_core.engine.predict import run_on_dataset  # noqa: E402
from curation_core.engine.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"configs": ["configs/demo_teacher.yaml", "configs/demo_student.yaml"], "size": 128, "train": 600,
            "val": 200},
    "cuda": {"configs": ["configs/fcos_r50.yaml", "configs/faster_rcnn_r50.yaml"], "size": 640, "train": 1200,
             "val": 200},
}


class StepTimer(Hook):
    """Sums step time and data-wait time over the steps after the first ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.images = 0
        self.seconds = 0.0
        self.data_seconds = 0.0
        self.steps = 0
        self._start = 0.0

    def before_step(self) -> None:
        self._start = time.perf_counter()

    def after_step(self) -> None:
        if self.trainer.iter <= self.warmup:
            return
        if self.trainer.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._start
        metrics = self.trainer.last_metrics
        images = self.trainer.config.train.batch_size
        inner_step = images / metrics["images_per_s"]  # the trainer's own step time, data fetch included
        self.steps += 1
        self.images += images
        self.seconds += seconds
        self.data_seconds += metrics["data_time_frac"] * inner_step


def synth_data(root: Path, *, size: int, train: int, val: int) -> Path:
    """A synthetic data set under ``root`` (reused when it is already there: generation resumes)."""
    from curation_core.synth import SynthConfig, generate_dataset

    generate_dataset(root, SynthConfig(size=size, train=train, val=val))
    return root


def bench_config(path: Path, overrides: list[str], *, data: Path, workdir: Path, iters: int,
                 warmup: int) -> dict[str, Any]:
    """One row: train and inference throughput of the configuration at ``path``."""
    config = load_config(path, [
        f"data.train_annotations={data / 'train' / 'annotations.json'}",
        f"data.train_images={data / 'train' / 'images'}",
        f"data.val_annotations={data / 'val' / 'annotations.json'}",
        f"data.val_images={data / 'val' / 'images'}",
        f"schedule.max_iter={iters}", f"schedule.warmup_iters={min(warmup, iters)}", "schedule.steps=[]",
        "train.eval_every=0", "train.checkpoint_every=0", f"train.output_dir={workdir / path.stem}",
        *overrides,
    ])
    trainer, timer = _trainer_without_final_eval(config), StepTimer(warmup)
    trainer.hooks.append(timer)
    trainer.run()
    val = load_coco(data / "val" / "annotations.json")
    start = time.perf_counter()
    run_on_dataset(trainer.model, val, data / "val" / "images", category_ids=trainer.category_ids,
                   device=trainer.device, amp=config.train.amp, batch_size=config.train.eval_batch_size,
                   num_workers=config.data.num_workers)
    infer_seconds = time.perf_counter() - start
    return {
        "config": path.name,
        "model": f"{config.model.detector}/{config.model.backbone}",
        "size": config.model.max_size,
        "batch": config.train.batch_size,
        "amp": config.train.amp if trainer.device.type == "cuda" else "none",
        "workers": config.data.num_workers,
        "threads": config.train.num_threads or 0,
        "steps": timer.steps,
        "train img/s": timer.images / timer.seconds,
        "data wait %": 100.0 * timer.data_seconds / timer.seconds,
        "infer img/s": len(val.images) / infer_seconds,
    }


def _trainer_without_final_eval(config: TrainConfig) -> Trainer:
    """A ``Trainer`` whose validation set is loaded for inference timing but not evaluated at the end."""

    class _Trainer(Trainer):
        def _setup(self) -> None:
            super()._setup()
            self.val_gt = None  # the benchmark times inference itself, without the COCO evaluation

    return _Trainer(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--config", action="append", help="configuration file (repeatable; default: the preset's)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override applied to every configuration")
    parser.add_argument("--iters", type=int, default=60, help="training steps per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="first steps not counted")
    parser.add_argument("--data", type=Path, help="synthetic data folder (generated when missing)")
    parser.add_argument("--train-images", type=int, help="synthetic training images (default: the preset's)")
    parser.add_argument("--val-images", type=int, help="synthetic validation images, all timed for inference")
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/train_<device>.json)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 steps (1 not counted) on 32 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.iters, args.warmup = 6, 1
        args.train_images, args.val_images = args.train_images or 32, args.val_images or 8
    if not 0 <= args.warmup < args.iters:
        parser.error("--warmup must be in [0, --iters)")
    preset = PRESETS[args.device]
    configs = [Path(c) for c in (args.config or [REPO / c for c in preset["configs"]])]
    overrides = [f"train.device={args.device}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        data = synth_data(args.data or Path(tmp) / "data", size=preset["size"],
                          train=args.train_images or preset["train"], val=args.val_images or preset["val"])
        rows = [bench_config(path, overrides, data=data, workdir=Path(tmp) / "runs", iters=args.iters,
                             warmup=args.warmup) for path in configs]
    out = args.out or REPO / "benchmarks" / "results" / f"train_{args.device}.json"
    write_result(out, "train", rows, iters=args.iters, warmup=args.warmup, overrides=args.overrides)
    print_rows(f"Training / inference throughput ({args.device}, {args.iters - args.warmup} counted steps)", rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
