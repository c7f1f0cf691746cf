"""Cost of a curated training step as a ratio of a plain step, split into its parts, side by side.

    python benchmarks/bench_curation_cost.py --teacher TEACHER.pt --data DATA_DIR [--steps 30] [--threads 2]
    python benchmarks/bench_curation_cost.py --quick ...        # a few steps (smoke test)

Every variant trains the same student for ``--warmup`` + ``--steps`` steps in this process, one after the
other (so the ratios are measured side by side on the same machine state); the first ``--warmup`` steps
are not counted. Per variant: seconds per step, its ratio to the plain step, and the shares of the step
spent loading/augmenting data, in the teacher's and the student's forward passes, in scoring (method,
state update, rule) and in the training step itself (forward, backward, optimizer). Trained images/s and
scored images/s are counted separately. Cost controls measured: a smaller super-batch, scoring every k-th
step (``curation.score_every``: one super-batch scored per k steps, k * b kept), and loss-only scoring
(no post-processing of detections).

Besides wall time, each counted step's CPU time of this process (``time.process_time`` from the
step's start to its end) gives ``cpu_s_per_step`` and ``cpu_ratio_to_plain``. With ``--threads 1`` on an idle
machine the two agree; on a machine shared with other jobs the wall time of a variant depends on what
the others do while it runs, its CPU time much less, so the CPU ratios are the ones to compare there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: name -> (augment preset, curation overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("standard", {"method": "none"}),
    "plain strong aug": ("strong", {"method": "none"}),
    "uniform B=80": ("strong", {"method": "uniform", "super_batch": 80}),
    "detgain B=80": ("strong", {"method": "detgain", "super_batch": 80}),
    "detgain B=48": ("strong", {"method": "detgain", "super_batch": 48}),
    "detgain B=32": ("strong", {"method": "detgain", "super_batch": 32}),
    "detgain B=80 every 2": ("strong", {"method": "detgain", "super_batch": 80, "score_every": 2}),
    "detgain B=80 every 4": ("strong", {"method": "detgain", "super_batch": 80, "score_every": 4}),
    "detgain B=48 every 3": ("strong", {"method": "detgain", "super_batch": 48, "score_every": 3}),
    "detgain B=48 teacher cache": ("strong", {"method": "detgain", "super_batch": 48, "teacher_cache": True}),
    "detgain B=32 flips": ("standard", {"method": "detgain", "super_batch": 32}),
    "detgain B=32 flips teacher cache": ("standard", {"method": "detgain", "super_batch": 32, "teacher_cache": True}),
    "uniform B=32 flips": ("standard", {"method": "uniform", "super_batch": 32}),
    "loss_learnability B=80": ("strong", {"method": "loss_learnability", "super_batch": 80}),
    "loss B=80": ("strong", {"method": "loss", "super_batch": 80}),
}
PARTS = ("data", "teacher", "student", "scoring", "train")


def measure(name: str, *, data: Path, teacher: Path, steps: int, warmup: int, threads: int,
            config_path: Path) -> dict[str, Any]:
    from components.train import train_config
    from curation_core.engine.config import load_config
    from curation_core.engine.hooks import Hook

    preset, curation = VARIANTS[name]

    class Record(Hook):
        rows: list[dict[str, float]] = []
        started = 0.0

        def before_step(self) -> None:
            self.started = time.process_time()

        def after_step(self) -> None:
            m = self.trainer.last_metrics
            self.rows.append({**m, "step_s": self.trainer.config.train.batch_size / m["images_per_s"],
                              "cpu_s": time.process_time() - self.started})

    record = Record()
    record.rows = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"data.train_annotations={data / 'train' / 'annotations.json'}",
                     f"data.train_images={data / 'train' / 'images'}", "data.val_annotations=null",
                     "data.val_images=null", f"train.output_dir={tmp}/run", f"train.num_threads={threads}",
                     f"schedule.max_iter={warmup + steps}", "schedule.warmup_iters=1", "train.eval_every=0",
                     "train.checkpoint_every=0", f"augment.preset={preset}",
                     *(f"curation.{k}={v}" for k, v in curation.items())]
        if curation["method"] in ("detgain", "loss_learnability", "image_ap"):
            overrides.append(f"curation.teacher={teacher}")
        config = load_config(config_path, overrides)
        train_config(config, hooks=[record])
    rows = record.rows[warmup:]
    batch = config.train.batch_size
    per_step = [r["step_s"] for r in rows]
    total = sum(per_step)
    shares = {part: sum(r.get(f"time_frac/{part}", 0.0) * s for r, s in zip(rows, per_step, strict=True)) / total
              for part in PARTS}
    if curation["method"] == "none":
        shares = {"data": sum(r["data_time_frac"] * s for r, s in zip(rows, per_step, strict=True)) / total,
                  "teacher": 0.0, "student": 0.0, "scoring": 0.0}
        shares["train"] = 1.0 - shares["data"]
    scored = curation.get("super_batch", 0) / curation.get("score_every", 1) if curation["method"] != "none" else 0
    return {"variant": name, "s_per_step": total / len(rows), "median_s": statistics.median(per_step),
            "cpu_s_per_step": statistics.fmean(r["cpu_s"] for r in rows),
            **{f"{p}_share": shares[p] for p in PARTS}, "trained_img_s": batch * len(rows) / total,
            "scored_img_s": scored * len(rows) / total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of `detcurate data synth` (train/)")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint (same categories)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_student.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up, three variants")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "curation_cost.json")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    if args.quick:
        args.steps, args.warmup, names = 3, 1, ["plain", "uniform B=80", "detgain B=32 every 2"]
        VARIANTS["detgain B=32 every 2"] = ("strong", {"method": "detgain", "super_batch": 32, "score_every": 2})
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; valid: {', '.join(VARIANTS)}")
    rows = []
    for name in names:
        rows.append(measure(name, data=args.data, teacher=args.teacher, steps=args.steps, warmup=args.warmup,
                            threads=args.threads, config_path=args.config))
        base = rows[0]["s_per_step"]
        for row in rows:
            row["ratio_to_plain"] = row["s_per_step"] / base
            row["cpu_ratio_to_plain"] = row["cpu_s_per_step"] / rows[0]["cpu_s_per_step"]
        write_result(args.out, "curation_cost", rows, steps=args.steps, warmup=args.warmup, threads=args.threads)
        print(f"{name}: {rows[-1]['s_per_step']:.3f} s/step", flush=True)
    print_rows("Curated step cost (ratio to the plain step of the same run)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
