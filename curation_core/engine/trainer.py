"""The training loop: ``train(config)`` trains a detector from scratch or resumes a stopped run.

Output folder (``train.output_dir``): ``config.yaml`` (the resolved configuration), ``checkpoint.pt``
(written atomically every ``checkpoint_every`` iterations, on SIGINT/SIGTERM and at the end) and
``metrics.json`` (final COCO statistics and the evaluation history, at the end).

Policy for an existing output folder: a folder that already holds ``checkpoint.pt`` is never
overwritten by a new run; ``resume=True`` continues it (and starts a new run when there is no
checkpoint yet, so that a retried job can always pass ``resume=True``), otherwise ``ConfigError``.

Resuming continues exactly where the run stopped: weights, optimizer and ``GradScaler`` state, the
iteration (which fixes the learning rate and the position in the seeded data stream) and the torch
random generators are restored, so ``k`` steps + resume to ``K`` equals ``K`` uninterrupted steps
(bitwise on CPU, with ``num_workers`` and ``deterministic`` as in the original run).

SIGINT/SIGTERM: the current step finishes, the checkpoint is written, and ``TrainingInterrupted``
is raised (a second signal interrupts at once with ``KeyboardInterrupt``).

Online curation (``curation.method`` other than ``none``): a ``BatchSelector`` (``curation_core.curation``,
handed in by the caller, since the engine does not import it) is a first-class part of the step. Every
``curation.score_every`` steps the loader yields a super-batch of ``curation.super_batch`` images; the
selector keeps ``score_every * batch_size`` of them, trained on ``batch_size`` per step. Its state, the
kept images not trained on yet and the selection log (``selections.csv``) are part of the checkpoint, so
a resumed run continues bit for bit; resuming with another ``curation``, ``augment`` or ``optim`` section
is refused.

Distributed (``torchrun``, ``WORLD_SIZE`` > 1): the trainer joins the process group (nccl on CUDA, gloo
on the CPU), wraps the model in ``DistributedDataParallel`` for the training step, and every rank trains
on its strided share of the step's images (with curation: of the kept images, chosen identically on every
rank, see ``curation_core.curation.distributed``). Only rank 0 evaluates and writes checkpoints and the
selection log; each rank's torch generator state is gathered into the checkpoint. Hooks run on every
rank (``trainer.rank`` tells them which); the command line adds its progress and MLflow hooks on rank 0.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from curation_core.coco import CocoDataset, load_coco
from curation_core.engine.augment import copy_paste_batch
from curation_core.engine.checkpoint import (
    CHECKPOINT_NAME,
    check_same_categories,
    check_same_model,
    check_same_section,
    load_checkpoint,
    model_name,
    save_checkpoint,
)
from curation_core.engine.config import TrainConfig, save_config
from curation_core.engine.data import DetectionDataset, TrainBatchSampler, TrainTransform, make_loader
from curation_core.engine.hooks import Hook
from curation_core.engine.models import build_detector
from curation_core.engine.optim import build_optimizer, lr_at, set_lr
from curation_core.engine.predict import autocast, resolve_device, run_on_dataset
from curation_core.engine.selection_log import LOG_NAME, SelectionLog
from curation_core.errors import CheckpointError, ConfigError, DataError, DetCurateError
from curation_core.evaluation import CocoStats, evaluate_detections
from curation_core.io import write_json_atomic
from curation_core.progress import ProgressFn, track

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. ``history``: one dict per evaluation, ``{"iteration", "AP", ...}``.
    ``images_per_s``: training images per second of step time over the steps of this process;
    ``scored_images_per_s``: images scored by the batch selector per second of step time (NaN without)."""

    output_dir: Path
    checkpoint: Path
    config_path: Path
    iterations: int
    final_stats: CocoStats | None
    history: list[dict[str, Any]] = field(default_factory=list)
    images_per_s: float = float("nan")
    scored_images_per_s: float = float("nan")


class TrainingInterrupted(Exception):  # noqa: N818 - a normal way for a run to end, not an error
    """The run stopped early (signal or ``request_stop``) after writing ``checkpoint``."""

    def __init__(self, *, signum: int | None, iteration: int, max_iter: int, checkpoint: Path) -> None:
        self.signum, self.iteration, self.max_iter, self.checkpoint = signum, iteration, max_iter, checkpoint
        #: Conventional shell status: 128 + signal number (130 for SIGINT, 143 for SIGTERM), else 1.
        self.exit_code = 128 + signum if signum else 1
        cause = signal.Signals(signum).name if signum else "a stop request"
        super().__init__(f"stopped by {cause} at iteration {iteration}/{max_iter}; checkpoint written to "
                         f"{checkpoint}; continue with --resume")


class TrainingDivergedError(DetCurateError, FloatingPointError):
    """The loss became NaN or infinite."""


class DeadRegressionHeadError(TrainingDivergedError):
    """FCOS's box regression never started to learn (see ``DeadHeadCheck``)."""


class DeadHeadCheck:
    """Stops an FCOS run whose box regression head is dead, instead of training a useless model to the end.

    torchvision's FCOS passes the regression output through a ReLU. If every output goes negative early
    (it happens for some seeds, in the first few steps), the boxes have zero size, the GIoU loss is 1.0
    exactly and no gradient reaches the head again: classification still learns, the AP stays near 0.
    A live head's GIoU loss falls well below 1 within a few dozen steps (0.5-0.9 by step 25 on the
    synthetic data), a dead one's stays within 0.01 of 1. So if its smallest value over the first
    ``max(MIN_STEPS, warmup_iters + MIN_STEPS // 2)`` steps is still above ``THRESHOLD``, the run stops
    with a one-line error. Checked once per run; a run resumed past that step is not checked again.
    """

    MIN_STEPS = 100
    THRESHOLD = 0.97
    TERM = "bbox_regression"

    def __init__(self, config: TrainConfig) -> None:
        self.enabled = config.model.detector == "fcos"
        self.at = max(self.MIN_STEPS, config.schedule.warmup_iters + self.MIN_STEPS // 2)
        self.smallest = math.inf

    def update(self, iteration: int, losses: dict[str, float]) -> None:
        """``iteration``: the step just done (1-based); ``losses``: its loss terms."""
        if not self.enabled or iteration > self.at or self.TERM not in losses:
            return
        if losses[self.TERM] > 0.0:  # exactly 0: a batch without any object (torchvision divides by max(1, n))
            self.smallest = min(self.smallest, losses[self.TERM])
        if iteration == self.at and math.isfinite(self.smallest) and self.smallest > self.THRESHOLD:
            raise DeadRegressionHeadError(
                f"FCOS box regression head is dead: its GIoU loss stayed at {self.smallest:.3f} or above (1.0 = "
                f"zero-size boxes) for the first {self.at} iterations, so the model would learn to classify but "
                f"never to place boxes; start again with another train.seed or a lower optim.lr")


class _DataStopped(Exception):
    """The data workers ended because the run is being stopped; no step was done."""


class BatchSelector(Protocol):
    """What the trainer needs of an online curator (``curation_core.curation.curator.OnlineCurator``)."""

    def choose(self, student: torch.nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
               *, count: int, event: int) -> Any:
        """Keep ``count`` of the super-batch; the result has ``indices``, ``keys``, ``image_ids``,
        ``scores``, ``picked`` and ``seconds`` (see ``Choice``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


#: Builds the selector once the data and device are ready: (config, category ids, names, device) -> selector.
SelectorFactory = Any


class Trainer:
    """Runs one training job; see ``train``. Attributes readable by hooks are listed in ``hooks``."""

    def __init__(self, config: TrainConfig, *, hooks: Sequence[Hook] = (), resume: bool = False,
                 progress: ProgressFn | None = None, selector_factory: SelectorFactory | None = None) -> None:
        if config.curation.method != "none" and selector_factory is None:
            raise ConfigError(f"curation.method: {config.curation.method!r} needs a batch selector; train through "
                              f"components.train / `detcurate train`, which build it")
        self.config = config
        self.selector_factory = selector_factory
        self.selector: BatchSelector | None = None
        self._pending: list[int] = []  # kept super-batch indices not trained on yet
        self._pool: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]] | None = None
        self._scored_seen = 0
        self._train_seconds = 0.0  # step time of the whole run, resumed parts included
        self.rank, self.world_size = 0, 1
        self.hooks = list(hooks)
        self.resume = resume
        self.progress = progress
        self.output_dir = Path(config.train.output_dir)
        self.checkpoint_path = self.output_dir / CHECKPOINT_NAME
        self.max_iter = config.schedule.max_iter
        self.iter = 0
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.result: TrainResult | None = None
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._images_seen = 0
        self._step_seconds = 0.0
        self._dead_head = DeadHeadCheck(config)

    # ------------------------------------------------------------------------------------------
    # Public

    def request_stop(self, signum: int | None = None) -> None:
        """Stop after the current step: write the checkpoint, then raise ``TrainingInterrupted``."""
        if self._stop_requested and signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self._stop_requested, self._stop_signal = True, signum

    def run(self) -> TrainResult:
        """Set up, train to ``max_iter`` (or stop early), evaluate, write the final checkpoint."""
        with _global_torch_settings(self.config), self._signal_handlers():
            self._setup()
            for hook in self.hooks:
                hook.trainer = weakref.proxy(self)
            try:
                for hook in self.hooks:
                    hook.before_train()
                self._loop()
                final = self._evaluate() if self.val_gt is not None and self.rank == 0 else None
                checkpoint = self._save()
                self.result = TrainResult(output_dir=self.output_dir, checkpoint=checkpoint,
                                          config_path=self.output_dir / CONFIG_NAME, iterations=self.iter,
                                          final_stats=final, history=list(self.history),
                                          images_per_s=self.images_per_s,
                                          scored_images_per_s=self.scored_images_per_s)
                if self.rank == 0:
                    write_json_atomic(self.output_dir / METRICS_NAME, _metrics_report(self.result), indent=2)
                for hook in self.hooks:
                    hook.after_train()
            except BaseException as error:
                for hook in self.hooks:
                    with contextlib.suppress(Exception):  # the original error is the one to report
                        hook.on_exception(error)
                raise
            return self.result

    @property
    def images_per_s(self) -> float:
        """Training images per second of step time (data waiting and selection included) in this process."""
        return self._images_seen / self._step_seconds if self._step_seconds else float("nan")

    @property
    def scored_images_per_s(self) -> float:
        """Images scored by the batch selector per second of step time (NaN without curation)."""
        return self._scored_seen / self._step_seconds if self._step_seconds and self._scored_seen else float("nan")

    # ------------------------------------------------------------------------------------------
    # Set-up

    def _setup(self) -> None:
        config = self.config
        self.device = self._join_process_group(resolve_device(config.train.device))
        existing = self.checkpoint_path.is_file()
        if existing and not self.resume:
            raise ConfigError(f"train.output_dir: {self.output_dir} already holds a checkpoint ({CHECKPOINT_NAME}); "
                              f"pass --resume to continue it, or choose another train.output_dir")
        checkpoint = load_checkpoint(self.checkpoint_path) if existing else None
        self.train_gt, self.val_gt = _load_data(config)
        self.category_ids = list(self.train_gt.category_ids)
        self.category_names = [c["name"] for c in self.train_gt.categories]
        self._manifest_weights, self._manifest_digest = None, None
        if config.data.manifest is not None:  # per-image sampling weights of detcurate balance
            from curation_core.offline.manifest import load_manifest

            manifest = load_manifest(config.data.manifest, self.train_gt)
            self._manifest_weights, self._manifest_digest = manifest.weights_for(self.train_gt), manifest.digest
        torch.manual_seed(config.train.seed)
        self.model = build_detector(config.model, num_categories=len(self.category_ids)).to(self.device)
        self.model.train()
        self._train_model = self.model
        if self.world_size > 1:
            self._train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = build_optimizer(self.model, config.optim)
        use_scaler = self.device.type == "cuda" and config.train.amp == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        if config.curation.method != "none":
            self.selector = self.selector_factory(config, self.category_ids, self.category_names, self.device)
            self.selection_log = SelectionLog(self.output_dir / LOG_NAME, config.curation.method)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.selector is not None and self.rank == 0:
            self.selection_log.truncate_after(self.iter)  # rows beyond the checkpoint (or of a run never saved)
        if self.rank == 0:
            save_config(config, self.output_dir / CONFIG_NAME)
        transform = TrainTransform(config.augment, config.model.min_size, config.model.max_size)
        dataset = DetectionDataset(self.train_gt, config.data.train_images, category_ids=self.category_ids,
                                   transform=transform, seed=config.train.seed)
        draw, every = self._draw_size(), self._score_every()
        sampler = TrainBatchSampler(len(dataset), draw, seed=config.train.seed, start=self.iter // every,
                                    stop=-(-self.max_iter // every), weights=self._manifest_weights)
        self.loader = make_loader(dataset, batch_sampler=sampler, num_workers=config.data.num_workers,
                                  seed=config.train.seed, pin_memory=self.device.type == "cuda")

    def _join_process_group(self, device: torch.device) -> torch.device:
        """Under torchrun: join (or reuse) the default process group; the device of this rank."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return device
        import torch.distributed as dist

        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        return device

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        source = str(self.checkpoint_path)
        check_same_model(checkpoint, self.config.model.model_dump(mode="json"), source=source)
        check_same_categories(checkpoint, self.train_gt.categories, source=self.config.data.train_annotations,
                              checkpoint_path=source)
        for section in ("curation", "augment", "optim"):
            check_same_section(checkpoint, section, self.config.to_dict()[section], source=source)
        expected = self._sampler_state()
        saved = {k: checkpoint.get("sampler", {}).get(k) for k in ("seed", "batch_size", "num_samples", "manifest")}
        if saved != {k: expected.get(k) for k in saved}:
            raise CheckpointError(f"{source}: the run used data stream {saved}, this config gives "
                                  f"{ {k: expected.get(k) for k in saved} }; resuming would change the data order")
        if checkpoint["iteration"] > self.max_iter:
            raise CheckpointError(f"{source}: checkpoint is at iteration {checkpoint['iteration']}, beyond "
                                  f"schedule.max_iter={self.max_iter}")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.iter = int(checkpoint["iteration"])
        self.history = list(checkpoint.get("history", []))
        self._train_seconds = float(checkpoint.get("train_seconds", 0.0))
        if self.selector is not None:
            curation = checkpoint["curation"]
            self.selector.load_state_dict(curation["selector"])
            self._pending = [int(i) for i in curation["pending"]]
        rng = checkpoint["rng"]
        ranks = rng.get("ranks") or []
        torch.set_rng_state(ranks[self.rank] if len(ranks) == self.world_size > 1 else rng["torch"])
        if self.device.type == "cuda" and len(rng.get("cuda", [])) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _sampler_state(self) -> dict[str, Any]:
        state = {"seed": self.config.train.seed, "batch_size": self._draw_size(),
                 "num_samples": len(self.train_gt.images), "next_batch": self.iter // self._score_every()}
        if self._manifest_digest is not None:  # weighted stream (data.manifest): resuming needs the same weights
            state["manifest"] = self._manifest_digest
        return state

    def _draw_size(self) -> int:
        """Images the loader yields per draw: the batch, or the super-batch under curation."""
        return self.config.train.batch_size if self.selector is None else self.config.curation.super_batch

    def _score_every(self) -> int:
        return 1 if self.selector is None else self.config.curation.score_every

    # ------------------------------------------------------------------------------------------
    # Loop

    def _loop(self) -> None:
        train = self.config.train
        steps = range(self.iter, self.max_iter)
        batches = iter(self.loader) if steps else iter(())
        for _ in track(self.progress, steps, total=len(steps), description="training"):
            for hook in self.hooks:
                hook.before_step()
            try:
                self._step(batches)
            except _DataStopped:
                self._interrupt()  # the step did not run; the checkpoint holds the steps done
            for hook in self.hooks:
                hook.after_step()
            if train.eval_every and self.iter % train.eval_every == 0 and self.iter < self.max_iter \
                    and self.val_gt is not None and self.rank == 0:
                self._evaluate()
            if self._stop_requested:
                self._interrupt()
            if train.checkpoint_every and self.iter % train.checkpoint_every == 0 and self.iter < self.max_iter:
                self._save()

    def _interrupt(self) -> None:
        path = self._save()
        raise TrainingInterrupted(signum=self._stop_signal, iteration=self.iter, max_iter=self.max_iter,
                                  checkpoint=path)

    def _draw(self, batches: Iterator[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """The next draw of the loader (batch or super-batch) on the device, copy-pasted if configured."""
        try:
            images, targets = next(batches)
        except RuntimeError:
            if not self._stop_requested:
                raise
            # A SIGTERM sent to the whole process group has also stopped the DataLoader workers.
            raise _DataStopped from None
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        event = self.iter // self._score_every()
        return copy_paste_batch(images, targets, config=self.config.augment, seed=self.config.train.seed,
                                iteration=event)

    def _next_batch(self, batches: Iterator[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], dict[str, float]]:
        """The images to train on at this step, and the seconds spent on data and selection."""
        start = time.perf_counter()
        if self.selector is None:
            images, targets = self._draw(batches)
            share = slice(self.rank, None, self.world_size)
            return images[share], targets[share], {"data": time.perf_counter() - start}
        b = self.config.train.batch_size
        seconds: dict[str, float] = {}
        if self._pool is None or not self._pending:  # a new scoring event (every curation.score_every steps)
            self._pool = self._draw(batches)
            if not self._pending:  # (a run resumed inside an event has its kept images already)
                self._pending = self._select(*self._pool, seconds)
        seconds["data"] = time.perf_counter() - start - sum(seconds.values())
        chosen, self._pending = self._pending[:b], self._pending[b:]
        images, targets = self._pool
        chosen = chosen[self.rank::self.world_size]
        return [images[i] for i in chosen], [targets[i] for i in chosen], seconds

    def _select(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                seconds: dict[str, float]) -> list[int]:
        cur = self.config.curation
        count = self.config.train.batch_size * cur.score_every
        if self.iter < cur.warmup_iters or (cur.stop_iter is not None and self.iter >= cur.stop_iter):
            return list(range(count))  # plain steps: the first images of the (shuffled) super-batch
        assert self.selector is not None
        choice = self.selector.choose(self.model, images, targets, count=count, event=self.iter // cur.score_every)
        self._scored_seen += len(images)
        seconds.update(choice.seconds)
        if self.rank == 0:
            self.selection_log.add(self.iter + 1, choice.keys, choice.image_ids, choice.scores, choice.picked)
        return [int(i) for i in choice.indices]

    def _step(self, batches: Iterator[Any]) -> None:
        start = time.perf_counter()
        images, targets, phases = self._next_batch(batches)
        data_seconds = phases.get("data", 0.0)
        for hook in self.hooks:
            images, targets = hook.filter_batch(images, targets)
        lr = lr_at(self.iter, lr=self.config.optim.lr, schedule=self.config.schedule)
        set_lr(self.optimizer, lr)
        with autocast(self.device, self.config.train.amp):
            losses = self._train_model(images, targets)
        loss = sum(losses.values())
        values = torch.stack([loss.detach(), *(v.detach() for v in losses.values())]).float().tolist()
        if not all(math.isfinite(v) for v in values):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(losses, values[1:], strict=True))
            raise TrainingDivergedError(f"loss became non-finite at iteration {self.iter + 1} ({terms}); lower "
                                        f"optim.lr, lengthen schedule.warmup_iters or set optim.clip_grad_norm")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.optim.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        seconds = time.perf_counter() - start
        self.iter += 1
        self._images_seen += len(images)
        self._step_seconds += seconds
        self._train_seconds += seconds
        self.last_metrics = {**dict(zip(losses, values[1:], strict=True)), "loss": values[0], "lr": lr,
                             "images_per_s": len(images) / seconds, "data_time_frac": data_seconds / seconds}
        self._dead_head.update(self.iter, self.last_metrics)
        if self.selector is not None:
            select_seconds = sum(v for k, v in phases.items() if k != "data")
            self.last_metrics.update({f"time_frac/{k}": v / seconds for k, v in phases.items()})
            self.last_metrics["time_frac/train"] = (seconds - data_seconds - select_seconds) / seconds

    def _evaluate(self) -> CocoStats:
        for hook in self.hooks:
            hook.before_eval()
        config = self.config
        assert self.val_gt is not None and config.data.val_images is not None
        detections = run_on_dataset(self.model, self.val_gt, config.data.val_images, category_ids=self.category_ids,
                                    device=self.device, amp=config.train.amp, batch_size=config.train.eval_batch_size,
                                    num_workers=config.data.num_workers)
        self.model.train()
        stats = evaluate_detections(self.val_gt, detections)
        self.history.append({"iteration": self.iter, "train_seconds": round(self._train_seconds, 3), **stats.named()})
        for hook in self.hooks:
            hook.after_eval(stats)
        return stats

    def _save(self) -> Path:
        rank_rng = self._gather_rng_states()
        if self.rank != 0:  # rank 0 writes the checkpoint and the log for every rank
            return self.checkpoint_path
        payload = {
            "model_name": model_name(self.config.model),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "scheduler": {"policy": self.config.schedule.policy, "iteration": self.iter},
            "iteration": self.iter,
            "sampler": self._sampler_state(),
            "rng": {"torch": torch.get_rng_state(), "ranks": rank_rng,
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "config": self.config.to_dict(),
            "category_ids": self.category_ids,
            "category_names": self.category_names,
            "history": self.history,
            "train_seconds": self._train_seconds,
            "torch_version": str(torch.__version__),  # TorchVersion is not a weights-only type
        }
        if self.selector is not None:
            payload["curation"] = {"selector": self.selector.state_dict(), "pending": list(self._pending)}
            self.selection_log.flush()  # before the checkpoint: the log always covers it
        path = save_checkpoint(self.checkpoint_path, payload)
        for hook in self.hooks:
            hook.after_checkpoint(path)
        return path

    def _gather_rng_states(self) -> list[torch.Tensor]:
        """Every rank's torch generator state, in rank order (empty in a single process)."""
        if self.world_size == 1:
            return []
        import torch.distributed as dist

        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, torch.get_rng_state())
        return states

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        for signum in previous:
            signal.signal(signum, lambda received, frame: self.request_stop(received))
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def train(config: TrainConfig, *, hooks: Sequence[Hook] = (), resume: bool = False,
          progress: ProgressFn | None = None, selector_factory: SelectorFactory | None = None) -> TrainResult:
    """Train the detector described by ``config`` (see the module docstring for outputs and resuming).

    Parameters
    ----------
    hooks : training-loop extensions (``curation_core.engine.hooks.Hook``), called in order.
    resume : continue from ``output_dir/checkpoint.pt`` if it exists.
    progress : wraps the iteration range (e.g. a progress bar); metrics reach hooks, not this.
    selector_factory : ``(config, category_ids, category_names, device) -> BatchSelector`` for ``curation.method`` other
        than none (``curation_core.curation.curator.build_curator``).

    Raises
    ------
    ConfigError, DataError, CheckpointError
        Bad configuration, data or checkpoint (one-line messages); nothing is overwritten.
    TrainingDivergedError
        The loss became non-finite.
    TrainingInterrupted
        SIGINT/SIGTERM or ``request_stop``: the checkpoint was written first.
    """
    return Trainer(config, hooks=hooks, resume=resume, progress=progress, selector_factory=selector_factory).run()


def _load_data(config: TrainConfig) -> tuple[CocoDataset, CocoDataset | None]:
    data = config.data
    image_check = {"image_root": data.train_images} if data.check_images else {}
    train_gt = load_coco(data.train_annotations, **image_check)
    if not train_gt.images:
        raise DataError(f"{data.train_annotations}: <file>: the training set has no images")
    if not train_gt.categories:
        raise DataError(f"{data.train_annotations}: <file>: the training set has no categories")
    incomplete = next((img for img in train_gt.images if img.get("incomplete", 0)), None)
    if incomplete is not None and config.model.detector == "faster_rcnn":
        raise DataError(f"{data.train_annotations}: image id={incomplete['id']}: is flagged incomplete, which "
                        f"faster_rcnn does not train (no background rule for partly labelled images); use fcos "
                        f"or retinanet")
    if data.val_annotations is None:
        return train_gt, None
    val_gt = load_coco(data.val_annotations, **({"image_root": data.val_images} if data.check_images else {}))
    train_cats = [(c["id"], c["name"]) for c in train_gt.categories]
    if sorted(train_cats) != sorted((c["id"], c["name"]) for c in val_gt.categories):
        raise DataError(f"{data.val_annotations}: <file>: categories differ from those of the training set "
                        f"{data.train_annotations}")
    return train_gt, val_gt


@contextlib.contextmanager
def _global_torch_settings(config: TrainConfig) -> Iterator[None]:
    """Apply ``num_threads``/``deterministic`` for the run and restore the previous values afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at first use)
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _metrics_report(result: TrainResult) -> dict[str, Any]:
    final = result.final_stats.named() if result.final_stats is not None else None
    finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no NaN
    return {"iterations": result.iterations, "images_per_s": finite(result.images_per_s),
            "scored_images_per_s": finite(result.scored_images_per_s), "final": final, "history": result.history}
