"""Selection across DDP ranks: each rank scores its share, every rank computes the same global choice.

Every rank loads the whole super-batch (the same stream positions: the data stream is a function of
(seed, step)), forwards only its contiguous share ``share(B)`` through the teacher and the student,
and ``gather_scores`` collects the scores and the state payloads of all ranks in rank order. So the
global scores, the top-b (or sampled) selection and the DetGain states are identical on every rank and
equal to those of one process scoring all B images (``tests/test_curation_distributed.py``). Each rank
then trains on its share of the kept images (``train_share``); DDP averages the gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Communicator:
    """Single process: the share is everything and gathering returns the local values."""

    rank: int = 0
    world_size: int = 1

    def share(self, n: int) -> slice:
        """The contiguous block of ``range(n)`` this rank scores (blocks differ by at most one)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def train_share(self, indices: np.ndarray) -> np.ndarray:
        """This rank's part of the kept images (strided, so every rank trains on about b / world)."""
        return indices[self.rank::self.world_size]

    def gather_scores(self, scores: np.ndarray, payload: Any) -> tuple[np.ndarray, Sequence[Any]]:
        """(global scores in super-batch order, the payloads of every rank in rank order)."""
        return scores, [payload]


class SingleProcess(Communicator):
    """The default: no process group."""


class TorchDistributed(Communicator):
    """``torch.distributed`` (any backend; gloo on CPU) with the default process group initialised."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchDistributed() expects an initialised torch.distributed process group; "
                               "start the run with torchrun.")
        self._dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def gather_scores(self, scores: np.ndarray, payload: Any) -> tuple[np.ndarray, Sequence[Any]]:
        gathered: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(gathered, (np.asarray(scores, dtype=np.float64), payload))
        return np.concatenate([g[0] for g in gathered]), [g[1] for g in gathered]


def communicator() -> Communicator:
    """``TorchDistributed`` inside an initialised process group, else ``SingleProcess``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributed()
    return SingleProcess()
