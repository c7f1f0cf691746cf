"""Online curation benchmark: final val AP of a student trained on curated batches, against plain training.

    python benchmarks/bench_curation.py                          # the CPU profile (resumable, runs in parts)
    python benchmarks/bench_curation.py --only clean:plain,clean:detgain-empirical --seeds 0,1,2
    python benchmarks/bench_curation.py --profile smoke          # seconds: the test's profile
    python benchmarks/bench_curation.py --report-only            # table and plots of what is finished

Every run is ``detcurate train`` in a subprocess (one torch thread each, ``--jobs`` at a time) on the
benchmark's own synthetic data set (seed ``DATA_SEED``, never used for choosing settings: that is what
``--data-seed`` of a development run is for). Same student, same gradient steps, same optimizer and
schedule for every method; only the batches differ. Each finished run is appended to the result file
at once; a re-run does only what is missing (a run whose output folder has a checkpoint is resumed).

Results: ``benchmarks/results/curation.json`` ``{"runs": [{"setting", "method", "estimator", "seed",
"iterations", "final_AP", "final_AP50", "wall_s", "history": [[iteration, AP], ...]}, ...], "profile": ...}``,
``curation.md`` (mean and spread over seeds, AP at equal wall-clock time, time to reach plain's final AP)
and ``curation_ap.png`` (AP over iterations per method, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DETCURATE = str(Path(sys.executable).parent / "detcurate")
#: Seed of the benchmark's data set (settings are chosen on other seeds).
DATA_SEED = 2026
#: Seeds a teacher is trained with, in order, until one run succeeds.
TEACHER_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Profile:
    """Scale of a benchmark, fixed before any method's result is seen."""

    train_images: int
    val_images: int
    iterations: int
    eval_every: int
    teacher_iterations: int
    super_batch: int
    batch_size: int = 16
    student: str = "nano"
    teacher: str = "tiny"
    weak_teacher_iterations: int = 0
    extra: tuple[str, ...] = ()


PROFILES = {
    # 2 CPU cores. Scale fixed by plain training's learning curve on the development set (seed 1, 3,000
    # images, demo student recipe): val AP 0.029 after a 600-iteration schedule, 0.052 / 0.098 / 0.127 /
    # 0.130 at 600 / 1,200 / 1,800 / 2,400 iterations of a 2,400-iteration one. So 2,400 iterations is past
    # the start of the curve (600 is not: 22 % of 4x). Cost: about 10 (plain) to 25 (curated) core-minutes
    # per run on an idle machine, so run it in parts (`--only`); every finished run is kept.
    "cpu": Profile(train_images=3000, val_images=300, iterations=2400, eval_every=600, teacher_iterations=2400,
                   super_batch=32, weak_teacher_iterations=800),
    # development runs (choosing settings on another data seed) and this machine's first pass.
    "dev": Profile(train_images=3000, val_images=300, iterations=600, eval_every=150, teacher_iterations=800,
                   super_batch=32, weak_teacher_iterations=400),
    # a GPU: the demo's scale times ten.
    "gpu": Profile(train_images=12000, val_images=1000, iterations=4000, eval_every=500, teacher_iterations=12000,
                   super_batch=80, student="tiny", teacher="small", weak_teacher_iterations=3000),
    # seconds, for tests/test_bench_curation.py
    "smoke": Profile(train_images=24, val_images=8, iterations=4, eval_every=2, teacher_iterations=4, super_batch=8,
                     batch_size=4, extra=("model.min_size=64", "model.max_size=64", "schedule.warmup_iters=1")),
}

#: Augmentations: standard = the demo's flips; strong = the preset's defaults; mild = the strong preset
#: with half its geometric and colour range (chosen on the development data set, seed 1).
AUGMENTS: dict[str, dict[str, Any]] = {
    "standard": {"preset": "standard"},
    "strong": {"preset": "strong"},
    "mild": {"preset": "strong", "scale_range": "[0.75,1.25]", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2,
             "hue": 0.0, "translate": 0.05, "noise_std": 0.01},
}
#: Method variants: name -> (curation overrides, augmentation). Curated variants use strong augmentation,
#: as in the paper; the "-std" / "-mild" ones isolate the augmentation's part.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "plain": ({"method": "none"}, "standard"),
    "strong": ({"method": "none"}, "strong"),
    "mild": ({"method": "none"}, "mild"),
    "uniform": ({"method": "uniform"}, "strong"),
    "loss": ({"method": "loss"}, "strong"),
    "loss_learnability": ({"method": "loss_learnability"}, "strong"),
    "image_ap": ({"method": "image_ap"}, "strong"),
    "detgain-uniform": ({"method": "detgain", "estimator": "uniform"}, "strong"),
    "detgain-empirical": ({"method": "detgain", "estimator": "empirical"}, "strong"),
    "detgain-exact": ({"method": "detgain", "estimator": "exact"}, "strong"),
    "detgain-envelope": ({"method": "detgain", "estimator": "envelope"}, "strong"),
    "uniform-std": ({"method": "uniform"}, "standard"),
    "loss-std": ({"method": "loss"}, "standard"),
    "loss_learnability-std": ({"method": "loss_learnability"}, "standard"),
    "image_ap-std": ({"method": "image_ap"}, "standard"),
    "detgain-empirical-std": ({"method": "detgain", "estimator": "empirical"}, "standard"),
    "detgain-uniform-std": ({"method": "detgain", "estimator": "uniform"}, "standard"),
    "detgain-exact-std": ({"method": "detgain", "estimator": "exact"}, "standard"),
    # the cost control that brings a curated step to under 2x a plain one (bench_curation_cost.py): the
    # teacher's detections computed once per image and flipped with the view, instead of a teacher
    # forward per scored view; its effect on final AP against detgain-uniform-std
    "detgain-uniform-cache-std": ({"method": "detgain", "estimator": "uniform", "teacher_cache": True},
                                  "standard"),
    # the other two cost controls, on top of the teacher cache (the cheapest curated step): a super-batch
    # twice the profile's (``super_batch_factor``: B = 64 of the cpu profile, b = 16 kept, 4x the scoring of
    # a plain step's images), and the same super-batch scored every 2nd step with 2b kept from it (the
    # scoring cost per step of B = 32); their effect on final AP against detgain-uniform-cache-std
    "detgain-uniform-cache-b2x-std": ({"method": "detgain", "estimator": "uniform", "teacher_cache": True,
                                       "super_batch_factor": 2}, "standard"),
    "detgain-uniform-cache-b2x-every2-std": ({"method": "detgain", "estimator": "uniform", "teacher_cache": True,
                                              "super_batch_factor": 2, "score_every": 2}, "standard"),
    # curated for the first quarter of the schedule, plain after it (``stop_fraction`` -> ``curation.stop_iter``):
    # 600 of the cpu profile's 2,400 iterations, the length at which DetGain led plain training on the
    # development data set (a 600-iteration schedule, README); one value, not tuned
    "detgain-empirical-early-std": ({"method": "detgain", "estimator": "empirical", "stop_fraction": 0.25},
                                    "standard"),
    "uniform-mild": ({"method": "uniform"}, "mild"),
    "detgain-empirical-mild": ({"method": "detgain", "estimator": "empirical"}, "mild"),
}
#: The uniform-selection reference of each augmentation (same super-batches, random choice).
UNIFORM_OF = {"standard": "uniform-std", "strong": "uniform", "mild": "uniform-mild"}
#: (setting, variant) pairs of the full benchmark, in the order they run.
CLEAN = [("clean", v) for v in VARIANTS if not v.endswith(("-std", "-mild")) and v != "mild"]
NOISY = [("noisy", v) for v in ("plain", "uniform", "loss_learnability", "detgain-empirical")]
TEACHERS = [("weak-teacher", "detgain-empirical"), ("weak-teacher", "detgain-empirical-std")]


@dataclass
class Bench:
    profile: Profile
    work: Path
    out: Path
    seeds: list[int]
    jobs: int
    data_seed: int = DATA_SEED
    runs: list[dict[str, Any]] = field(default_factory=list)

    # -- data and teachers -------------------------------------------------------------------------
    def data(self) -> Path:
        folder = self.work / "data"
        if not (folder / "synth.json").is_file():
            _run([DETCURATE, "data", "synth", "--out", str(folder), "--train", str(self.profile.train_images),
                  "--val", str(self.profile.val_images), "--size", "128", "--seed", str(self.data_seed)])
        return folder

    def noisy_annotations(self) -> Path:
        """The training set with spurious (10 %), jittered (0.1), swapped (10 %) and hard-missing boxes."""
        src, out = self.data() / "train" / "annotations.json", self.work / "noisy" / "train.json"
        if out.is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        steps = [("hard", []), ("spurious", ["--fraction", "0.1"]), ("jitter", ["--amount", "0.1"]),
                 ("swap", ["--fraction", "0.1"])]
        current = src
        for i, (mode, extra) in enumerate(steps):
            target = out if i == len(steps) - 1 else out.parent / f"step{i}_{mode}.json"
            _run([DETCURATE, "data", "corrupt", "--in", str(current), "--out", str(target), "--mode", mode,
                  "--seed", str(self.data_seed + i), *extra])
            current = target
        return out

    def teacher(self, iterations: int, *, noisy: bool = False) -> Path:
        """The teacher checkpoint, trained once. The noisy setting's teacher learns from the same corrupted
        labels as its students: a user has no clean training labels to give it. A teacher run that fails
        (e.g. FCOS's dead regression head, which the trainer stops at once) is moved aside and trained again
        with the next seed; the seed used is in the teacher's ``config.yaml``."""
        run = self.work / f"teacher_{self.profile.teacher}_{iterations}{'_noisy' if noisy else ''}"
        checkpoint, metrics = run / "checkpoint.pt", run / "metrics.json"
        annotations = self.noisy_annotations() if noisy else self.data() / "train" / "annotations.json"
        for seed in TEACHER_SEEDS:
            if metrics.is_file():
                return checkpoint
            p = self.profile
            overrides = self._common(seed=seed, output=run, annotations=annotations) + [
                f"model.backbone={p.teacher}", f"schedule.max_iter={iterations}", f"train.eval_every={iterations}",
                "train.num_threads=1"]
            try:
                _run([DETCURATE, "train", "--config", str(ROOT / "configs" / "demo_student.yaml"), "--no-track",
                      "--resume", *sum((["--set", o] for o in overrides), [])], log=run.parent / f"{run.name}.log")
            except subprocess.CalledProcessError:
                failed = run.with_name(f"{run.name}_failed_seed{seed}")
                print(f"teacher {run.name} seed {seed} failed (see {run.name}.log); moved to {failed.name}", flush=True)
                run.rename(failed)
        if not metrics.is_file():
            raise RuntimeError(f"teacher {run.name}: training failed with seeds {TEACHER_SEEDS}")
        return checkpoint

    # -- runs --------------------------------------------------------------------------------------
    def _common(self, *, seed: int, output: Path, annotations: Path) -> list[str]:
        p, data = self.profile, self.data()
        return [f"data.train_annotations={annotations}", f"data.train_images={data / 'train' / 'images'}",
                f"data.val_annotations={data / 'val' / 'annotations.json'}", f"data.val_images={data / 'val' / 'images'}",
                f"train.output_dir={output}", f"train.seed={seed}", f"train.batch_size={p.batch_size}",
                f"model.backbone={p.student}", f"schedule.max_iter={p.iterations}", f"train.eval_every={p.eval_every}",
                "train.checkpoint_every=100", "train.num_threads=1", *p.extra]

    def run_overrides(self, setting: str, variant: str, seed: int, output: Path) -> list[str]:
        curation, augment = VARIANTS[variant]
        noisy = setting == "noisy"
        annotations = self.noisy_annotations() if noisy else self.data() / "train" / "annotations.json"
        overrides = self._common(seed=seed, output=output, annotations=annotations)
        overrides += [f"augment.{k}={v}" for k, v in AUGMENTS[augment].items()]
        derived = ("stop_fraction", "super_batch_factor")  # turned into training keys below
        overrides += [f"curation.{k}={v}" for k, v in curation.items() if k not in derived]
        if "stop_fraction" in curation:
            overrides.append(f"curation.stop_iter={round(curation['stop_fraction'] * self.profile.iterations)}")
        if curation["method"] != "none":
            overrides.append(f"curation.super_batch={self.profile.super_batch * curation.get('super_batch_factor', 1)}")
        if curation["method"] in ("loss_learnability", "image_ap", "detgain"):
            weak = setting == "weak-teacher"
            iterations = self.profile.weak_teacher_iterations if weak else self.profile.teacher_iterations
            overrides.append(f"curation.teacher={self.teacher(iterations, noisy=noisy)}")
        return overrides

    def key(self, setting: str, variant: str, seed: int) -> tuple[str, str, int]:
        return setting, variant, seed

    def done(self) -> set[tuple[str, str, int]]:
        return {(r["setting"], r["variant"], r["seed"]) for r in self.runs}

    def one(self, setting: str, variant: str, seed: int) -> dict[str, Any]:
        output = self.work / "runs" / f"{setting}_{variant}_s{seed}"
        overrides = self.run_overrides(setting, variant, seed, output)
        start = time.perf_counter()
        _run([DETCURATE, "train", "--config", str(ROOT / "configs" / "demo_student.yaml"), "--no-track", "--resume",
              *sum((["--set", o] for o in overrides), [])], log=output.parent / f"{output.name}.log")
        wall = time.perf_counter() - start
        metrics = json.loads((output / "metrics.json").read_text())
        curation, _ = VARIANTS[variant]
        teacher = next((Path(o.split("=", 1)[1]).parent.name for o in overrides if o.startswith("curation.teacher=")),
                       None)
        return {"setting": setting, "variant": variant, "method": curation["method"],
                "estimator": curation.get("estimator"), "teacher": teacher, "seed": seed, "iterations": metrics["iterations"],
                "final_AP": metrics["final"]["AP"], "final_AP50": metrics["final"]["AP50"],
                "wall_s": round(wall, 1),
                "train_s": metrics["history"][-1].get("train_seconds") if metrics["history"] else None, "images_per_s": metrics.get("images_per_s"),
                "scored_images_per_s": metrics.get("scored_images_per_s"),
                "history": [[h["iteration"], h["AP"]] for h in metrics["history"]],
                "history_train_s": [h.get("train_seconds") for h in metrics["history"]]}

    def run_all(self, pairs: list[tuple[str, str]]) -> None:
        todo = [(s, v, seed) for seed in self.seeds for s, v in pairs if (s, v, seed) not in self.done()]
        print(f"{len(todo)} runs to do ({len(self.done())} done)", flush=True)
        if any(VARIANTS[v][0]["method"] in ("loss_learnability", "image_ap", "detgain") and s == "clean"
               for s, v, _ in todo):
            self.teacher(self.profile.teacher_iterations)  # once, before the parallel runs need it
        if any(s == "weak-teacher" for s, _, _ in todo):
            self.teacher(self.profile.weak_teacher_iterations)
        if any(s == "noisy" for s, _, _ in todo):
            self.noisy_annotations()
            if any(s == "noisy" and VARIANTS[v][0]["method"] in ("loss_learnability", "image_ap", "detgain")
                   for s, v, _ in todo):
                self.teacher(self.profile.teacher_iterations, noisy=True)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for row in pool.map(lambda job: self._safe(*job), todo):
                if row is not None:
                    self.runs.append(row)
                    self.save()
                    print(f"done {row['setting']} {row['variant']} seed {row['seed']}: AP {row['final_AP']:.4f} "
                          f"({row['wall_s']:.0f} s)", flush=True)

    def _safe(self, setting: str, variant: str, seed: int) -> dict[str, Any] | None:
        try:
            return self.one(setting, variant, seed)
        except subprocess.CalledProcessError as exc:
            print(f"FAILED {setting} {variant} seed {seed}: exit {exc.returncode} (see the run's .log)", flush=True)
            return None

    # -- results -----------------------------------------------------------------------------------
    def load(self) -> None:
        if self.out.is_file():
            payload = json.loads(self.out.read_text())
            if payload.get("profile", {}).get("name") == self.profile_name:
                self.runs = payload["runs"]

    @property
    def profile_name(self) -> str:
        return next(name for name, p in PROFILES.items() if p == self.profile)

    def save(self) -> None:
        """Write every finished run, merged with what another process running parts of the benchmark wrote."""
        from curation_core.io import write_json_atomic

        mine = {(r["setting"], r["variant"], r["seed"]) for r in self.runs}
        if self.out.is_file():
            payload = json.loads(self.out.read_text())
            if payload.get("profile", {}).get("name") == self.profile_name:
                self.runs += [r for r in payload["runs"] if (r["setting"], r["variant"], r["seed"]) not in mine]
        profile = {"name": self.profile_name, **self.profile.__dict__, "data_seed": self.data_seed}
        write_json_atomic(self.out, {"benchmark": "curation", "machine": machine_info(), "profile": profile,
                                     "runs": sorted(self.runs, key=lambda r: (r["setting"], r["variant"], r["seed"]))},
                          indent=2)


def _run(cmd: list[str], *, log: Path | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if log is None:
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, variant): mean, standard deviation and standard error of final AP over seeds, the gain
    over plain training, and the speed columns (``_to_target``, ``_ap_at``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["setting"], r["variant"]), []).append(r)
    plain_runs = {s: rs for (s, v), rs in groups.items() if v == "plain"}
    plain_runs.setdefault("weak-teacher", plain_runs.get("clean", []))
    rows = []
    for (setting, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], list(VARIANTS).index(kv[0][1]))):
        ap = np.array([r["final_AP"] for r in rs])
        sd = float(ap.std(ddof=1)) if ap.size > 1 else math.nan
        base_runs = plain_runs.get(setting, [])
        base = float(np.mean([r["final_AP"] for r in base_runs])) if base_runs else math.nan
        base_s = float(np.mean([_train_s(r) for r in base_runs])) if base_runs else math.nan
        hits = [_to_target(r, base) for r in rs]
        reference = UNIFORM_OF[VARIANTS[variant][1]]
        uniform_runs = groups.get(("clean" if setting == "weak-teacher" else setting, reference), [])
        vs_plain, vs_uniform = _paired(rs, base_runs), _paired(rs, uniform_runs if variant != reference else [])
        rows.append({"setting": setting, "variant": variant, "seeds": int(ap.size), "AP mean": float(ap.mean()),
                     "AP sd": sd, "AP se": sd / math.sqrt(ap.size) if ap.size > 1 else math.nan,
                     "AP50 mean": float(np.mean([r["final_AP50"] for r in rs])),
                     "vs plain %": 100.0 * (ap.mean() / base - 1.0) if base and math.isfinite(base) else math.nan,
                     "paired vs plain": vs_plain[0], "paired vs plain se": vs_plain[1],
                     "paired vs uniform": vs_uniform[0], "paired vs uniform se": vs_uniform[1],
                     "train s": float(np.mean([_train_s(r) for r in rs])),
                     "AP at plain's time": float(np.mean([_ap_at(r, base_s) for r in rs])),
                     "reach plain AP": f"{sum(math.isfinite(h[0]) for h in hits)}/{len(hits)}",
                     "iters to plain AP": _nanmean([h[0] for h in hits]),
                     "time to plain AP": _nanmean([h[1] for h in hits]) / base_s if base_s else math.nan})
    return rows


def _paired(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean and standard error over the shared seeds of the final-AP difference ``runs - reference`` (a seed
    draws the same initial weights and stream in both); NaN without shared seeds (se: fewer than two)."""
    ref = {r["seed"]: r["final_AP"] for r in reference}
    diff = np.array([r["final_AP"] - ref[r["seed"]] for r in runs if r["seed"] in ref])
    if not diff.size:
        return math.nan, math.nan
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else math.nan
    return float(diff.mean()), se


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values (over the seeds that reach the target), NaN if none does."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _train_s(run: dict[str, Any]) -> float:
    """Step time of the whole run (evaluations excluded), else its wall time."""
    return float(run.get("train_s") or run["wall_s"])


def _curve(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iterations, training seconds, AP) at the evaluations, starting from (0, 0, 0)."""
    its = np.array([0] + [h[0] for h in run["history"]], dtype=float)
    secs = run.get("history_train_s") or [None] * len(run["history"])
    if any(t is None for t in secs):  # no step times: assume a constant step time
        secs = [it / run["iterations"] * _train_s(run) for it in its[1:]]
    return its, np.array([0.0, *secs]), np.array([0.0] + [h[1] for h in run["history"]])


def _to_target(run: dict[str, Any], target: float) -> tuple[float, float]:
    """(fraction of the iterations, training seconds) at which the AP curve, linear between evaluations,
    first reaches ``target`` (plain training's mean final AP); NaN if it never does."""
    its, secs, ap = _curve(run)
    above = np.flatnonzero(ap >= target) if math.isfinite(target) and target > 0 else np.zeros(0, int)
    if not above.size:
        return math.nan, math.nan
    k = int(above[0])
    frac = (target - ap[k - 1]) / (ap[k] - ap[k - 1]) if k and ap[k] > ap[k - 1] else 1.0
    it = its[k - 1] + frac * (its[k] - its[k - 1])
    return it / run["iterations"], secs[k - 1] + frac * (secs[k] - secs[k - 1])


def _ap_at(run: dict[str, Any], seconds: float) -> float:
    """AP at ``seconds`` of training (linear between evaluations; the final AP beyond the run's end)."""
    _, secs, ap = _curve(run)
    return float(np.interp(seconds, secs, ap)) if math.isfinite(seconds) else math.nan


def write_markdown(path: Path, rows: list[dict[str, Any]], profile: dict[str, Any]) -> None:
    from curation_core.io import atomic_write

    head = ["setting", "variant", "seeds", "AP mean", "AP sd", "AP se", "AP50 mean", "vs plain %", "paired vs plain",
            "paired vs plain se", "paired vs uniform", "paired vs uniform se", "train s", "AP at plain's time",
            "reach plain AP", "iters to plain AP", "time to plain AP"]
    lines = [f"Profile `{profile.get('name')}`: {profile}", "",
             "AP: final val AP over seeds (sd, standard error se). vs plain: relative change of the mean. paired vs "
             "plain / uniform: mean and standard error over the shared seeds of the final-AP difference to plain "
             "training and to uniform selection with the same augmentation (the weak-teacher setting against the "
             "clean runs). train s: "
             "step time (evaluations excluded). AP at plain's time: AP reached after plain training's mean step "
             "time. iters / time to plain AP: fraction of the iterations, and step time as a multiple of plain's, "
             "at which the AP curve (linear between evaluations) first reaches plain's mean final AP, averaged over the "
             "seeds that reach it (reach plain AP: how many do).", "",
             "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[h]:.4g}" if isinstance(r[h], float) else str(r[h]) for h in head) + " |")
    with atomic_write(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def plot(path: Path, runs: list[dict[str, Any]]) -> None:
    """AP over iterations, mean over seeds, one line per (setting, variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curation_core.io import atomic_write

    settings = sorted({r["setting"] for r in runs})
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        for variant in VARIANTS:
            rs = [r for r in runs if r["setting"] == setting and r["variant"] == variant]
            if not rs:
                continue
            its = sorted({it for r in rs for it, _ in r["history"]})
            mean = [np.mean([dict(map(tuple, r["history"])).get(it, np.nan) for r in rs]) for it in its]
            ax.plot(its, mean, marker="o", label=f"{variant} (n={len(rs)})")
        ax.set_title(f"{setting}: val AP, mean over seeds")
        ax.set_xlabel("iteration")
        ax.set_ylabel("AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "curation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "curation.json")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--only", default="", help="comma-separated setting:variant pairs (default: all)")
    parser.add_argument("--data-seed", type=int, default=DATA_SEED, help="another seed = a development data set")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    bench = Bench(PROFILES[args.profile], args.work, args.out, [int(s) for s in args.seeds.split(",")], args.jobs,
                  data_seed=args.data_seed)
    bench.load()
    pairs = CLEAN + NOISY + TEACHERS
    if args.only:
        pairs = [tuple(p.split(":", 1)) for p in args.only.split(",")]  # type: ignore[misc]
        unknown = [p for p in pairs if p[1] not in VARIANTS]
        if unknown:
            parser.error(f"--only: unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    if not args.report_only:
        bench.run_all(pairs)
    rows = summarize(bench.runs)
    if rows:
        profile = {"name": bench.profile_name, **bench.profile.__dict__}
        write_markdown(args.out.with_suffix(".md"), rows, profile)
        plot(args.out.with_name(args.out.stem + "_ap.png"), bench.runs)
    print_rows(f"Online curation, profile {args.profile} (val AP over seeds)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
