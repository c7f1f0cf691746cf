"""DetGainState: FIFO and decay bounds, open vocabulary, npz round trip, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation_core.detgain import DetGainState, StateConfig, detgain
from curation_core.detgain.empirical import histogram_counts
from curation_core.detgain.records import concat_tables, select_images, table_from_matches
from curation_core.detgain.synthetic import synthetic_matches
from curation_core.errors import ConfigError, DataError


def _update(i: int, *, n_images: int = 10, n_categories: int = 5) -> object:
    return synthetic_matches(i, n_images=n_images, n_categories=n_categories, dets_per_image=12,
                             first_image_id=1 + 100 * i)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": 0}, r"StateConfig\(window=\) expects a positive integer or None; got 0"),
    ({"window": True}, r"StateConfig\(window=\) expects a positive integer or None; got True"),
    ({"decay": 1.0}, r"StateConfig\(decay=\) expects a number in \(0, 1\) or None; got 1.0"),
    ({"decay": 0}, r"StateConfig\(decay=\) expects a number in \(0, 1\) or None; got 0"),
    ({"min_weight": 0.0}, r"StateConfig\(min_weight=\) expects a number in \(0, 1\); got 0.0"),
    ({"num_bins": 0}, r"StateConfig\(num_bins=\) expects an integer in \[1, 65536\]; got 0"),
])
def test_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StateConfig(**kwargs)


def test_fifo_window_keeps_exactly_the_most_recent_images() -> None:
    state = DetGainState(np.linspace(0.5, 0.95, 10), config=StateConfig(window=25))
    updates = [_update(i) for i in range(5)]
    for u in updates:
        state.update(u)
        assert state.num_images <= 25
    assert state.num_images == 25
    # The last 25 images: 5 of update 2, all of updates 3 and 4.
    tables = [table_from_matches(u) for u in updates]
    kept = concat_tables(tables[2:], state.category_ids, state.iou_thresholds)
    kept_ids = kept.image_ids[5:]
    assert state.table().image_ids.tolist() == sorted(kept_ids.tolist())
    last = select_images(kept, np.arange(5, kept.num_images))
    tp, _, gt = histogram_counts(last, 1024, vocabulary=state.category_ids)
    np.testing.assert_array_equal(state.histogram().tp, tp)
    np.testing.assert_array_equal(state.num_gt(), gt)
    probe = _update(9)
    full = DetGainState.from_matches(updates[4])
    assert not np.allclose(detgain(state, probe), detgain(full, probe))  # older images still count


def test_decay_weights_and_bound() -> None:
    config = StateConfig(decay=0.5, min_weight=0.1)
    assert config.max_updates_kept == 4
    state = DetGainState(np.linspace(0.5, 0.95, 10), config=config)
    updates = [_update(i) for i in range(7)]
    for u in updates:
        state.update(u)
        assert state.num_images <= 4 * 10
    weights = state.image_weights()
    assert sorted(set(weights.tolist())) == [0.125, 0.25, 0.5, 1.0]
    expected = sum(0.5 ** (6 - i) * histogram_counts(table_from_matches(updates[i]), 1024, vocabulary=state.category_ids)[0]
                   for i in range(3, 7))
    np.testing.assert_allclose(state.histogram().tp, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"exact DetGain needs equal image weights; this state decays"):
        detgain(state, updates[0], estimator="exact")


def test_window_and_decay_together() -> None:
    state = DetGainState(np.linspace(0.5, 0.95, 10), config=StateConfig(window=15, decay=0.9))
    for i in range(4):
        state.update(_update(i))
    assert state.num_images == 15
    assert state.image_weights().tolist() == [0.9] * 5 + [1.0] * 10


def test_vocabulary_grows_with_new_categories() -> None:
    state = DetGainState.from_matches(_update(0, n_categories=3))
    before = state.histogram().tp.copy()
    state.update(_update(1, n_categories=6))
    assert state.category_ids.tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(state.histogram().tp[:3] - before, histogram_counts(
        table_from_matches(_update(1, n_categories=6)), 1024)[0][:3])


def test_save_load_round_trip(tmp_path: Path) -> None:
    state = DetGainState(np.linspace(0.5, 0.95, 10), config=StateConfig(window=35, decay=0.8, num_bins=64))
    for i in range(5):
        state.update(_update(i, n_categories=3 + i))
    path = tmp_path / "teacher.npz"
    state.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.npz"]  # no temporary file left behind
    loaded = DetGainState.load(path)
    assert loaded.config == state.config and loaded.num_updates == 5 and loaded.num_images == 35
    np.testing.assert_array_equal(loaded.category_ids, state.category_ids)
    np.testing.assert_allclose(loaded.histogram().tp, state.histogram().tp, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(loaded.image_weights(), state.image_weights())
    probe = _update(7, n_categories=8)
    for estimator in ("uniform", "empirical"):
        np.testing.assert_allclose(detgain(loaded, probe, estimator=estimator),
                                   detgain(state, probe, estimator=estimator), rtol=1e-9, atol=1e-12)
    loaded.update(probe)
    state.update(probe)
    np.testing.assert_allclose(loaded.histogram().fp, state.histogram().fp, rtol=1e-12, atol=1e-12)


def test_exact_state_round_trip(tmp_path: Path) -> None:
    state = DetGainState.from_matches(_update(0))
    state.update(_update(1))
    state.save(tmp_path / "s.npz")
    probe = _update(3)
    np.testing.assert_array_equal(detgain(DetGainState.load(tmp_path / "s.npz"), probe), detgain(state, probe))
    empty = DetGainState(np.linspace(0.5, 0.95, 10))
    empty.save(tmp_path / "empty.npz")
    assert DetGainState.load(tmp_path / "empty.npz").num_images == 0


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing.npz: <file>: file does not exist"):
        DetGainState.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad.npz: <file>: not a DetGain state file"):
        DetGainState.load(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    with pytest.raises(DataError, match=r"foreign.npz: <file>: not a DetGain state file of version 1"):
        DetGainState.load(foreign)


def test_update_errors() -> None:
    state = DetGainState(np.linspace(0.5, 0.95, 10))
    other = synthetic_matches(0, n_images=3, n_categories=2, iou_thresholds=np.array([0.5]))
    with pytest.raises(ValueError, match=r"DetGainState.update\(matches=\) expects IoU thresholds"):
        state.update(other)
    with pytest.raises(ValueError, match=r"DetGainState\(iou_thresholds=\) expects a non-empty 1-D array"):
        DetGainState(np.zeros(0))
