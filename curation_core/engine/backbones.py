"""Backbones with a feature pyramid (FPN), always randomly initialised (no weights are downloaded).

Two families:

- ``nano``, ``tiny`` and ``small``: five-stage CNNs for CPU training at low resolution (128 px images).
  Each stage halves the resolution with a strided 3x3 convolution, then refines with residual basic
  blocks. ``nano`` has widths 8-64 and an FPN of 32 channels; ``tiny`` widths 16-128, both with one
  block in the last three stages; ``small`` has widths 32-256 and two blocks in the last three stages
  (about 8x the backbone compute of ``tiny``). ``tiny`` and ``small`` have an FPN of 64 channels. The FPN
  width is also the width of the detector head, which dominates the compute of ``nano`` and ``tiny``.
- ``resnet18/50/101/152``: torchvision's ResNets (``weights=None``), for GPU runs.

Both return an ``OrderedDict`` of FPN levels with strides 8, 16, 32, 64, 128 (``levels="p3p7"``:
RetinaNet, FCOS on ResNets; P6/P7 come from P5) or 4, 8, 16, 32, 64 (``levels="p2p6"``: Faster R-CNN, and
every detector on the small backbones; P6 is a
max-pool of P5), as torchvision's detectors expect.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

NormLayer = Callable[[int], nn.Module]
Levels = Literal["p3p7", "p2p6"]


@dataclass(frozen=True)
class SmallCNNSpec:
    """Widths and residual block counts of the five stages (strides 2, 4, 8, 16, 32), and the default
    FPN width (``model.fpn_channels`` overrides it)."""

    widths: tuple[int, int, int, int, int]
    blocks: tuple[int, int, int, int, int]
    fpn_channels: int


#: The CPU backbones, smallest first.
SMALL_CNNS: dict[str, SmallCNNSpec] = {
    "nano": SmallCNNSpec(widths=(8, 16, 32, 48, 64), blocks=(0, 0, 1, 1, 1), fpn_channels=32),
    "tiny": SmallCNNSpec(widths=(16, 32, 64, 96, 128), blocks=(0, 0, 1, 1, 1), fpn_channels=64),
    "small": SmallCNNSpec(widths=(32, 64, 128, 192, 256), blocks=(0, 1, 2, 2, 2), fpn_channels=64),
}
#: ResNet depth by name; FPN width 256 unless configured.
RESNETS: dict[str, str] = {"resnet18": "resnet18", "resnet50": "resnet50", "resnet101": "resnet101",
                           "resnet152": "resnet152"}
#: Every backbone name, in the order error messages list them.
BACKBONE_NAMES: tuple[str, ...] = (*SMALL_CNNS, *RESNETS)
#: Default FPN width of the ResNets.
RESNET_FPN_CHANNELS = 256


def norm_layer(kind: str) -> NormLayer:
    """``"batch"`` -> BatchNorm2d; ``"group"`` -> GroupNorm with 32 groups (fewer when channels < 32 * 4)."""
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return _group_norm
    raise ValueError(f"norm_layer(kind=) expects 'batch' or 'group'; got {kind!r}.")


def _group_norm(channels: int) -> nn.Module:
    groups = 32
    while channels % groups or channels // groups < 4 and groups > 1:  # at least 4 channels per group
        groups //= 2
    return nn.GroupNorm(groups, channels)


def is_small(name: str) -> bool:
    """True for the CPU backbones (``nano``, ``tiny``, ``small``)."""
    return name in SMALL_CNNS


def build_backbone(name: str, *, levels: Levels, norm: str = "batch", fpn_channels: int | None = None) -> BackboneWithFPN:
    """A randomly initialised backbone + FPN; ``.out_channels`` is the FPN width.

    Raises ``ValueError`` listing the valid names for an unknown ``name`` or ``levels``.
    """
    if levels not in ("p3p7", "p2p6"):
        raise ValueError(f"build_backbone(levels=) expects 'p3p7' or 'p2p6'; got {levels!r}.")
    layer = norm_layer(norm)
    if name in SMALL_CNNS:
        body: nn.Module = SmallCNN(SMALL_CNNS[name], norm=layer)
        widths = SMALL_CNNS[name].widths
        stage_names = ["stage1", "stage2", "stage3", "stage4", "stage5"]
        out = fpn_channels or SMALL_CNNS[name].fpn_channels
    elif name in RESNETS:
        import torchvision

        body = getattr(torchvision.models, RESNETS[name])(weights=None, norm_layer=layer, zero_init_residual=True)
        expansion = 1 if name == "resnet18" else 4
        widths = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)
        stage_names = ["stem", "layer1", "layer2", "layer3", "layer4"]
        out = fpn_channels or RESNET_FPN_CHANNELS
    else:
        raise ValueError(f"build_backbone(name=) expects one of {', '.join(BACKBONE_NAMES)}; got {name!r}.")
    # Stages 2..5 (strides 4..32) feed the FPN for P2-P6, stages 3..5 (strides 8..32) for P3-P7.
    first = 1 if levels == "p2p6" else 2
    return_layers = {stage_names[i]: str(k) for k, i in enumerate(range(first, 5))}
    extra: ExtraFPNBlock = LastLevelMaxPool() if levels == "p2p6" else LastLevelP6P7(out, out)
    return BackboneWithFPN(body, return_layers, [widths[i] for i in range(first, 5)], out, extra_blocks=extra)


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, *, stride: int, norm: NormLayer) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut; the last norm starts at zero (identity block)."""

    def __init__(self, channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv1 = _ConvNormAct(channels, channels, stride=1, norm=norm)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = norm(channels)
        nn.init.zeros_(self.norm2.weight)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.act(x + self.norm2(self.conv2(self.conv1(x))))


class SmallCNN(nn.Module):
    """Five stages ``stage1..stage5`` with strides 2..32 (children in forward order, as
    ``IntermediateLayerGetter`` requires)."""

    def __init__(self, spec: SmallCNNSpec, *, norm: NormLayer) -> None:
        super().__init__()
        cin = 3
        for i, (width, blocks) in enumerate(zip(spec.widths, spec.blocks, strict=True), start=1):
            layers: list[nn.Module] = [_ConvNormAct(cin, width, stride=2, norm=norm)]
            layers += [_BasicBlock(width, norm) for _ in range(blocks)]
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            cin = width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # noqa: ANN001, ANN201
        out = OrderedDict()
        for name, stage in self.named_children():
            x = stage(x)
            out[name] = x
        return out
