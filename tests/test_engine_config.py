"""Training configuration: YAML + overrides, one-line errors naming the field and the valid choices."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from curation_core.engine.config import (
    BackboneName,
    DetectorName,
    TrainConfig,
    _section_type,
    config_from_dict,
    load_config,
    save_config,
)
from curation_core.errors import ConfigError

MINIMAL = {
    "model": {"detector": "fcos", "backbone": "tiny", "min_size": 128, "max_size": 128},
    "data": {"train_annotations": "train.json", "train_images": "images"},
    "optim": {"lr": 0.01},
    "schedule": {"max_iter": 10},
    "train": {"output_dir": "out", "batch_size": 2},
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    return path


def test_minimal_config_gets_documented_defaults(config_file: Path) -> None:
    config = load_config(config_file)
    assert config.model.detector == "fcos" and config.model.fpn_levels == "auto"
    assert config.optim.name == "sgd" and config.optim.momentum == 0.9
    assert config.schedule.policy == "cosine" and config.augment.scale_range == (1.0, 1.0)
    assert config.train.device == "auto" and config.train.amp == "none" and config.data.val_annotations is None


def test_overrides_are_parsed_as_yaml_values(config_file: Path) -> None:
    config = load_config(config_file, ["optim.lr=0.05", "augment.scale_range=[0.8, 1.25]", "train.amp=bf16",
                                       "data.val_annotations=v.json", "data.val_images=v", "schedule.steps=[4, 8]",
                                       "train.deterministic=true", "model.fpn_channels=null"])
    assert config.optim.lr == 0.05 and config.augment.scale_range == (0.8, 1.25)
    assert config.train.amp == "bf16" and config.train.deterministic is True
    assert config.schedule.steps == (4, 8) and config.model.fpn_channels is None
    assert config.data.val_annotations == "v.json"


def test_flat_params_are_dotted_scalars(config_file: Path) -> None:
    params = load_config(config_file).flat_params()
    assert params["optim.lr"] == 0.01 and params["model.detector"] == "fcos"
    assert params["augment.scale_range"] == "1.0,1.0" and params["data.val_images"] == "none"
    assert all(isinstance(v, str | int | float | bool) for v in params.values())
    assert params["model.loss"] == "focal" and params["model.brl.t"] == 0.5  # nested sections: dotted leaves

    def leaves(section: type[BaseModel]) -> int:
        return sum(leaves(sub) if (sub := _section_type(field.annotation)) is not None else 1
                   for field in section.model_fields.values())

    assert len(params) == leaves(TrainConfig)


def test_save_then_load_round_trips(config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file, ["augment.scale_range=[0.5, 2]", "model.anchor_sizes=[8, 16, 32, 64, 128]"])
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_literal_choices_match_the_factories() -> None:
    from curation_core.engine.backbones import BACKBONE_NAMES
    from curation_core.engine.models import DETECTORS

    assert set(get_args(DetectorName)) == set(DETECTORS)
    assert set(get_args(BackboneName)) == set(BACKBONE_NAMES)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.detector=yolo"], r"model\.detector: invalid value 'yolo'; valid choices: fcos, retinanet, faster_rcnn$"),
    (["model.backbone=vgg"], r"valid choices: nano, tiny, small, resnet18, resnet50, resnet101, resnet152$"),
    (["train.amp=fp8"], r"train\.amp: invalid value 'fp8'; valid choices: none, fp16, bf16"),
    (["optim.lr=abc"], r"optim\.lr: Input should be a valid number.*; got 'abc'"),
    (["optim.lr=-1"], r"optim\.lr: Input should be greater than 0; got -1"),
    (["train.batch_size=1.5"], r"train\.batch_size: Input should be a valid integer; got 1\.5"),
    (["train.batch_size=true"], r"train\.batch_size: Input should be a valid integer; got True"),
    (["train.deterministic=1"], r"train\.deterministic: Input should be a valid boolean; got 1"),
    (["train.device=gpu"], r"train: device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
    (["schedule.steps=[8, 4]"], r"schedule: steps must be increasing iterations in \(0, max_iter=10\)"),
    (["schedule.warmup_iters=11"], r"schedule: warmup_iters \(11\) must be <= max_iter \(10\)"),
    (["augment.scale_range=[1.2, 0.8]"], r"augment: scale_range must satisfy 0 < lo <= hi"),
    (["model.max_size=64"], r"model: max_size \(64\) must be >= min_size \(128\)"),
    (["model.anchor_sizes=[8, 16]"], r"anchor_sizes must be 5 positive numbers"),
    (["data.val_images=v"], r"data: val_annotations and val_images must be given together"),
])
def test_invalid_values_name_the_field(config_file: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(config_file, overrides)
    assert str(info.value).startswith(f"{config_file}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.detctor=fcos"], r"--set model\.detctor: unknown field 'detctor' in model; valid fields: detector, backbone"),
    (["modle.detector=fcos"], r"unknown field 'modle' in the top level; valid fields: model, data, augment, optim"),
    (["optim.lr.x=1"], r"--set optim\.lr\.x: optim\.lr is a value, not a section"),
    (["optim=1"], r"--set optim: is a whole section; set one of its fields \(name, lr,"),
    (["optim.lr"], r"--set 'optim\.lr': expected key\.sub=value"),
])
def test_bad_overrides_are_rejected(config_file: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, overrides)


def test_one_stage_loss_fields(config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file, ["model.detector=retinanet", "model.loss=brl", "model.brl.t=0.3",
                                       "model.unverified_weight=0.25"])
    assert config.model.loss == "brl" and config.model.brl.t == 0.3 and config.model.brl.weight == 0.1
    assert config.model.unverified_weight == 0.25
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    assert load_config(config_file).model.loss == "focal"  # left out: the one-stage default
    faster = load_config(config_file, ["model.detector=faster_rcnn"])
    assert faster.model.loss is None and faster.model.brl.t == 0.5
    save_config(faster, tmp_path / "faster.yaml")
    assert load_config(tmp_path / "faster.yaml") == faster


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.loss=ce"], r"model\.loss: invalid value 'ce'; valid choices: focal, brl$"),
    (["model.detector=faster_rcnn", "model.loss=focal"],
     r"model: loss applies to the one-stage detectors \(fcos, retinanet\); faster_rcnn takes null; got 'focal'$"),
    (["model.loss=brl"], r"model: loss 'brl' splits anchors by IoU and applies to retinanet only; got detector fcos$"),
    (["model.detector=retinanet", "model.brl.t=0.2"],
     r"model: brl applies to loss 'brl' only; set loss: brl or leave brl at its defaults$"),
    (["model.detector=retinanet", "model.loss=brl", "model.brl.neg_iou=0.6"],
     r"model\.brl: IoU thresholds must satisfy confusion_iou <= neg_iou <= pos_iou; got 0\.1, 0\.6, 0\.5$"),
    (["model.detector=retinanet", "model.loss=brl", "model.brl.t=1.5"],
     r"model\.brl\.t: Input should be less than or equal to 1; got 1\.5$"),
    (["model.detector=retinanet", "model.loss=brl", "model.brl.weight=-1"],
     r"model\.brl\.weight: Input should be greater than or equal to 0; got -1$"),
    (["model.detector=retinanet", "model.loss=brl", "model.brl.tt=1"],
     r"--set model\.brl\.tt: unknown field 'tt' in model\.brl; valid fields: t, weight, pos_iou, neg_iou, confusion_iou$"),
    (["model.unverified_weight=2"], r"model\.unverified_weight: Input should be less than or equal to 1; got 2$"),
    (["model.detector=faster_rcnn", "model.unverified_weight=0.3"],
     r"model: unverified_weight applies to fcos, retinanet; faster_rcnn does not read it \(leave it at 0\.5\)$"),
])
def test_one_stage_loss_errors(config_file: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(config_file, overrides)
    assert "\n" not in str(info.value)


def test_unknown_field_in_the_brl_section_lists_the_valid_ones(tmp_path: Path) -> None:
    raw = yaml.safe_load(yaml.safe_dump(MINIMAL))
    raw["model"].update({"detector": "retinanet", "loss": "brl", "brl": {"thresh": 0.5}})
    with pytest.raises(ConfigError, match=r"model\.brl\.thresh: unknown field; valid fields: t, weight, pos_iou"):
        config_from_dict(raw)


def test_missing_and_unknown_fields_in_the_file(tmp_path: Path) -> None:
    raw = yaml.safe_load(yaml.safe_dump(MINIMAL))
    del raw["optim"]["lr"]
    raw["train"]["batchsize"] = 4
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"bad\.yaml: optim\.lr: missing required field \(and 1 more problems\)"):
        load_config(path)
    del raw["train"]["batchsize"]
    raw["optim"]["lr"] = 0.1
    raw["train"]["bach_size"] = 4
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train\.bach_size: unknown field; valid fields: output_dir, batch_size, seed"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"<memory>: schedule: missing required field"):
        config_from_dict({k: v for k, v in MINIMAL.items() if k != "schedule"})


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: <file>: file does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: <file>: malformed YAML at line \d+ column \d+"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"top level must be a mapping of sections; got list"):
        load_config(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model: missing required field"):
        load_config(bad)


def test_configs_shipped_with_the_project_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    # robustness_*.yaml are robustness-grid files (curation_core.robustness.config), active_learning_*.yaml
    # active-learning runs (curation_core.active.config), not training configs.
    files = sorted(f for f in root.glob("*.yaml") if not f.name.startswith(("robustness_", "active_learning_")))
    assert {f.name for f in files} >= {"demo_teacher.yaml", "demo_student.yaml", "fcos_r50.yaml",
                                       "faster_rcnn_r50.yaml", "retinanet_r50.yaml"}
    configs = {f.stem: load_config(f) for f in files}
    teacher, student = configs["demo_teacher"], configs["demo_student"]
    # Teacher and student differ in the backbone (and the output folder) only.
    assert teacher.model.backbone == "tiny" and student.model.backbone == "nano"
    assert teacher.model.model_copy(update={"backbone": "nano"}) == student.model
    assert teacher.schedule == student.schedule and teacher.optim == student.optim and teacher.data == student.data
    assert teacher.model.min_size == 128 and teacher.train.device == "cpu"
    for name in ("fcos_r50", "faster_rcnn_r50", "retinanet_r50"):
        assert configs[name].model.backbone == "resnet50" and configs[name].train.amp != "none"
