"""Checkpoints written before a config field existed compare equal to its default; real changes do not."""

import pytest

from curation_core.engine.checkpoint import check_same_model, check_same_section
from curation_core.engine.config import AugmentConfig, ModelConfig
from curation_core.errors import CheckpointError


def _model(**extra):
    return ModelConfig(detector="retinanet", backbone="nano", min_size=128, max_size=128, **extra).model_dump(
        mode="json")


def test_model_section_without_fields_added_since_is_the_same_model():
    current = _model()
    old = {k: v for k, v in current.items() if k not in ("loss", "brl", "unverified_weight", "sampler", "libra",
                                                          "pisa", "pisa_parts")}
    assert old != current  # the saved section really lacks fields
    check_same_model({"config": {"model": old}, "model_name": "retinanet/nano"}, current, source="ckpt.pt")


def test_model_section_with_another_value_is_refused():
    current = _model()
    changed = dict(current, min_size=256)
    with pytest.raises(CheckpointError, match="min_size=256"):
        check_same_model({"config": {"model": changed}, "model_name": "retinanet/nano"}, current, source="ckpt.pt")


def test_section_without_fields_added_since_and_a_changed_one():
    current = AugmentConfig().model_dump(mode="json")
    old = {k: v for k, v in current.items() if k != "copy_paste_max"}
    check_same_section({"config": {"augment": old}}, "augment", current, source="ckpt.pt")
    with pytest.raises(CheckpointError, match="augment.hflip"):
        check_same_section({"config": {"augment": dict(old, hflip=0.0)}}, "augment", current, source="ckpt.pt")
