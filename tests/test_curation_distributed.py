"""Selection under DDP: 2 CPU processes (gloo), each scoring half of every super-batch, choose exactly what
one process scoring all of it chooses, and keep DetGain states identical to it."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from curation_core.curation.curator import OnlineCurator
from curation_core.curation.distributed import SingleProcess, TorchDistributed
from curation_core.engine.config import CurationConfig

B, COUNT, EVENTS = 10, 4, 5
CATEGORIES = [4, 2, 8]


def _outputs(event: int) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Targets and both models' outputs for the B images of super-batch ``event`` (a pure function of it)."""
    rng = np.random.default_rng([11, event])
    targets, teacher, student = [], [], []
    for _ in range(B):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(6, 30, (k, 2))], axis=1)
        labels = rng.integers(1, 4, k)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
        for out, noise in ((teacher, 1.0), (student, 5.0)):
            extra = int(rng.integers(0, 3))
            det = np.concatenate([boxes + rng.normal(0, noise, boxes.shape), rng.uniform(0, 80, (extra, 4))])
            det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
            out.append({"boxes": torch.tensor(det, dtype=torch.float32),
                        "labels": torch.tensor(np.concatenate([labels, rng.integers(1, 4, extra)])),
                        "scores": torch.tensor(rng.uniform(0.05, 1, k + extra), dtype=torch.float32)})
    losses = {"student_losses": rng.uniform(0, 3, B), "teacher_losses": rng.uniform(0, 2, B)}
    return targets, {"teacher_detections": teacher, "student_detections": student, **losses}


def _config(method: str) -> CurationConfig:
    extra = {"teacher": "teacher.pt"} if method in ("detgain", "loss_learnability") else {}
    return CurationConfig(method=method, estimator="empirical", window=25, rule="sample", temperature=0.1, **extra)


METHODS = ("detgain", "loss_learnability", "uniform")


def _run(curator: OnlineCurator) -> dict[str, Any]:
    """Choices of every event and the final states, for the part of each super-batch this rank scores."""
    chosen, scores = [], []
    needs = curator.selector.needs
    wanted = {"student_losses": needs.student_losses, "teacher_losses": needs.teacher_losses,
              "student_detections": needs.student_detections, "teacher_detections": needs.teacher_detections}
    for event in range(EVENTS):
        targets, outputs = _outputs(event)
        share = curator.comm.share(B)
        part = {k: v[share] for k, v in outputs.items() if wanted[k]}
        keys = np.arange(event * B, (event + 1) * B, dtype=np.int64)
        choice = curator.decide(keys, keys % 7, targets[share], part, count=COUNT, event=event)
        chosen.append(choice.indices.tolist())
        scores.append(choice.scores.tolist())
    states = {}
    for name in ("teacher_state", "student_state"):
        state = getattr(curator.selector, name, None)
        if state is not None:
            hist, table = state.histogram(), state.table()
            states[name] = {"tp": hist.tp, "fp": hist.fp, "gt": hist.num_gt, "ids": table.image_ids,
                            "scores": table.det_score}
    return {"chosen": chosen, "scores": scores, "states": states}


def _curator(method: str, communicator: Any) -> OnlineCurator:
    return OnlineCurator(_config(method), teacher=torch.nn.Identity(), category_ids=CATEGORIES,
                         device=torch.device("cpu"), seed=3, communicator=communicator)


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {method: _run(_curator(method, TorchDistributed())) for method in METHODS}
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_gloo_ranks_choose_and_remember_what_one_process_does(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    for method in METHODS:
        single = _run(_curator(method, SingleProcess()))
        for result in (r[method] for r in ranks):
            assert result["chosen"] == single["chosen"], method
            np.testing.assert_array_equal(np.array(result["scores"]), np.array(single["scores"]), err_msg=method)
            assert result["states"].keys() == single["states"].keys()
            for name, state in single["states"].items():
                for key, value in state.items():
                    np.testing.assert_array_equal(result["states"][name][key], value, err_msg=f"{name}.{key}")
        assert len({tuple(c) for c in single["chosen"]}) > 1, method
    detgain = _run(_curator("detgain", SingleProcess()))
    assert detgain["states"]["teacher_state"]["ids"].size == 25  # the window, filled from both ranks' shares


def test_shares_cover_the_super_batch_and_training_shares_split_the_choice() -> None:
    class Rank(SingleProcess):
        def __init__(self, rank: int, world: int) -> None:
            self.rank, self.world_size = rank, world

    for world in (1, 2, 3):
        shares = [Rank(r, world).share(10) for r in range(world)]
        assert sum((list(range(10))[s] for s in shares), []) == list(range(10))
        chosen = np.arange(8)
        parts = [Rank(r, world).train_share(chosen) for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(8))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _train_worker(rank: int, port: int, raw: dict[str, Any], out: str) -> None:
    import os

    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    from components.train import train_config
    from curation_core.engine.config import config_from_dict
    from curation_core.engine.hooks import Hook

    class Record(Hook):
        def __init__(self) -> None:
            self.trained: list[list[int]] = []

        def filter_batch(self, images, targets):  # noqa: ANN001, ANN201
            self.trained.append([int(t["position"]) for t in targets])
            return images, targets

        def after_train(self) -> None:
            weights = torch.cat([p.detach().flatten() for p in self.trainer.model.parameters()])
            Path(out, f"train{rank}.pkl").write_bytes(pickle.dumps({"trained": self.trained, "weights": weights}))

    try:
        train_config(config_from_dict(raw), hooks=[Record()])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_curated_run_on_two_gloo_ranks_trains_in_step_and_writes_once(tmp_path: Path) -> None:
    from engine_fixtures import tiny_config_dict

    from curation_core.engine.checkpoint import load_checkpoint

    raw = tiny_config_dict(tmp_path, val=False, max_iter=2, num_images=8)
    raw["train"].update(batch_size=4, checkpoint_every=1)
    raw["curation"] = {"method": "uniform", "super_batch": 6}
    mp.spawn(_train_worker, args=(_free_port(), raw, str(tmp_path)), nprocs=2, join=True)
    ranks = [pickle.loads((tmp_path / f"train{r}.pkl").read_bytes()) for r in range(2)]
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])  # DDP kept the replicas equal
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["iteration"] == 2 and len(checkpoint["rng"]["ranks"]) == 2
    rows = (tmp_path / "run" / "selections.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 6  # written once, by rank 0
    for step in range(2):
        picked = [int(r.split(",")[1]) for r in rows[1:] if r.split(",")[0] == str(step + 1) and r.split(",")[4] == "1"]
        trained = ranks[0]["trained"][step] + ranks[1]["trained"][step]
        assert sorted(trained) == sorted(picked) and len(ranks[0]["trained"][step]) == 2  # each rank half of b
