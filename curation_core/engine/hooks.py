"""Training-loop extension points.

A hook sees the trainer through ``self.trainer`` (a weak proxy set before ``before_train``), so a
hook never keeps a finished trainer, its model and its data alive. Readable trainer attributes:
``config``, ``iter`` (finished steps, 1-based after the first step), ``max_iter``, ``model``,
``optimizer``, ``output_dir`` (Path), ``last_metrics``, ``category_ids``, ``category_names``,
``device`` and, after training, ``result``. ``trainer.request_stop()`` asks the loop to write a
checkpoint and stop after the current step (as SIGINT/SIGTERM do).

Call order: ``before_train``; per step ``before_step``, ``filter_batch``, the optimisation step,
``after_step``; then, when due, ``before_eval``/``after_eval`` and ``after_checkpoint``; at the end
``after_train``. When the run stops early (``TrainingInterrupted`` after SIGINT/SIGTERM or
``request_stop``) or fails (any exception, including one raised by a hook), ``on_exception`` is called
instead of ``after_train``, then the exception propagates.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from curation_core.evaluation import CocoStats

if TYPE_CHECKING:
    from curation_core.engine.trainer import Trainer


class Hook:
    """Base class: every method does nothing.

    Cost rule: ``before_step``, ``filter_batch`` and ``after_step`` must take negligible time compared
    with a training step, unless they do their work only every N iterations (then document N).
    The other methods run once per evaluation, checkpoint or run and may take longer.
    """

    trainer: weakref.ProxyType[Trainer]

    def before_train(self) -> None:
        """Called once, after the model, optimizer and data are ready (and a checkpoint resumed)."""

    def filter_batch(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """Return the batch to train on (default: unchanged). Images are on the training device.

        Online data curation plugs in here: it may drop images, drop or reweight boxes. Must not
        return an empty batch.
        """
        return images, targets

    def before_step(self) -> None:
        """Called before the batch of step ``trainer.iter + 1`` is fetched."""

    def after_step(self) -> None:
        """Called after each step; ``trainer.last_metrics`` holds its loss terms, "loss", "lr",
        "images_per_s" and "data_time_frac" (time waiting for data / step time)."""

    def before_eval(self) -> None:
        """Called before each evaluation on the validation set."""

    def after_eval(self, stats: CocoStats) -> None:
        """Called after each evaluation (periodic and final) with its COCO statistics."""

    def after_checkpoint(self, path: Path) -> None:
        """Called after a checkpoint was written (atomically) to ``path``."""

    def after_train(self) -> None:
        """Called once after the last step and the final evaluation; ``trainer.result`` is set."""

    def on_exception(self, error: BaseException) -> None:
        """Called once when the run ends with ``error`` (interrupted or failed) instead of ``after_train``.

        ``trainer.iter`` holds the finished steps. An exception raised here is ignored, so that the
        original error is what the caller sees.
        """
