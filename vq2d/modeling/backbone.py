"""ResNet (18/50/101) + FPN backbone built from torchvision parts.

The module tree is torchvision's ``BackboneWithFPN``: ``body`` (conv1, bn1, layer1..layer4)
and ``fpn`` (inner_blocks, layer_blocks, LastLevelMaxPool), so torchvision detector and
ImageNet state dicts load by name. Output: an ordered dict of 5 maps with ``out_channels``
channels, keys ``"0"``..``"3"`` = P2..P5 (strides 4, 8, 16, 32) and ``"pool"`` = P6
(stride 64).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

RESNETS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
# Blocks per stage and block type of each depth (torchvision's ResNet definitions).
STAGES = {18: ([2, 2, 2, 2], resnet.BasicBlock), 34: ([3, 4, 6, 3], resnet.BasicBlock),
          50: ([3, 4, 6, 3], resnet.Bottleneck), 101: ([3, 4, 23, 3], resnet.Bottleneck)}
TORCHVISION_WIDTH = 64  # channels of the stem / layer1 in every torchvision ResNet
# Name of the P3 map in the FPN output and its stride (the siamese head reads P3 only).
P3_KEY = "1"
P3_STRIDE = 8
# Parts of the ResNet trunk, from the top; ``trainable_layers=k`` trains the first k.
_TRUNK_PARTS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def move_stride_to_1x1(trunk: resnet.ResNet) -> None:
    """Put each stage's stride on the first 1x1 conv of its bottlenecks (detectron2 / MSRA style).

    torchvision puts the stride on the 3x3 conv (``conv2``); detectron2 checkpoints were trained
    with it on the 1x1 ``conv1``. Output shapes do not change.
    """
    for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        for block in stage:
            if not isinstance(block, resnet.Bottleneck):
                raise ValueError("stride_in_1x1 applies to bottleneck ResNets (depth 50/101)")
            stride = block.conv2.stride
            if stride != (1, 1):
                block.conv1.stride, block.conv2.stride = stride, (1, 1)


def freeze_trunk_layers(trunk: nn.Module, trainable_layers: int) -> None:
    """Set ``requires_grad=False`` on all trunk parameters except the top ``trainable_layers``
    parts (0 = all frozen, 3 = layer2..layer4 trained as detectron2's FREEZE_AT=2, 5 = all)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    train = list(_TRUNK_PARTS[:trainable_layers])
    if trainable_layers == 5:
        train.append("bn1")
    for name, param in trunk.named_parameters():
        if not any(name.startswith(part) for part in train):
            param.requires_grad_(False)


class NarrowResNet(nn.Module):
    """A torchvision-layout ResNet trunk (conv1, bn1, relu, maxpool, layer1..layer4) with
    ``width`` stem channels instead of 64; stage s has ``width * 2**s`` (x4 for bottlenecks).

    Same module names as torchvision's ``ResNet`` (``fc`` and ``avgpool`` left out: the FPN
    never reads them), so ``width=64`` state dicts load by name. A narrow trunk costs about
    ``(width / 64)**2`` of the FLOPs: the from-scratch tiny preset trains several times more
    iterations per minute on a CPU (docs/vq2d.md#training).
    """

    def __init__(self, depth: int, width: int, norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        layers, block = STAGES[depth]
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for index, blocks in enumerate(layers):
            setattr(self, f"layer{index + 1}", self._make_layer(block, width * 2**index, blocks,
                                                                stride=1 if index == 0 else 2, norm_layer=norm_layer))
        for m in self.modules():  # torchvision's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int, norm_layer) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(resnet.conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        modules = [block(self.inplanes, planes, stride, downsample, norm_layer=norm_layer)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes, norm_layer=norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*modules)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` built as ``norm_layer(num_channels)``, with ``groups`` groups (fewer
    when the channels do not divide: the largest divisor of the channels below ``groups``)."""

    def __init__(self, num_channels: int, groups: int = 8):
        super().__init__(max(g for g in range(1, groups + 1) if num_channels % g == 0), num_channels)


def norm_layer_of(frozen_bn: bool, group_norm: int) -> Callable[[int], nn.Module]:
    """The trunk's normalisation: GroupNorm with ``group_norm`` groups when > 0 (statistics of
    each image alone: the same in training and inference, and for crops and frames), else
    FrozenBatchNorm2d or BatchNorm2d."""
    if group_norm < 0:
        raise ValueError(f"group_norm must be >= 0, got {group_norm}")
    if group_norm:
        return functools.partial(GroupNorm, groups=int(group_norm))
    return FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d


def build_resnet_fpn_backbone(
    *,
    depth: int = 50,
    out_channels: int = 256,
    trainable_layers: int = 3,
    stride_in_1x1: bool = False,
    frozen_bn: bool = True,
    width: int = TORCHVISION_WIDTH,
    group_norm: int = 0,
) -> BackboneWithFPN:
    """ResNet-``depth`` + FPN with random init (pretrained weights: vq2d.modeling.weights).

    Args:
        depth: 18, 34, 50 or 101.
        out_channels: FPN channels (256 in the paper).
        trainable_layers: trunk parts left trainable, from the top (see freeze_trunk_layers).
        stride_in_1x1: detectron2-style stride placement (bottleneck ResNets only).
        frozen_bn: FrozenBatchNorm2d (statistics and affine fixed) instead of BatchNorm2d.
        width: stem channels (64: torchvision's ResNet; less: a narrow trunk, see NarrowResNet).
        group_norm: > 0: GroupNorm with that many groups instead of BatchNorm (``frozen_bn`` ignored).
    Returns:
        module mapping images ``[N, 3, H, W]`` to ``{"0": [N, C, H/4, W/4], ..., "pool": [N, C, H/64, W/64]}``.
    """
    if depth not in RESNETS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNETS)}, got {depth}")
    norm_layer = norm_layer_of(frozen_bn, group_norm)
    if width < 1:
        raise ValueError(f"ResNet width must be positive, got {width}")
    if width == TORCHVISION_WIDTH:
        trunk = RESNETS[depth](weights=None, norm_layer=norm_layer)
    else:
        trunk = NarrowResNet(depth, width, norm_layer)
    if stride_in_1x1:
        move_stride_to_1x1(trunk)
    freeze_trunk_layers(trunk, trainable_layers)
    stage_channels = trunk.inplanes // 8  # channels of layer1's output
    return BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[stage_channels * 2**i for i in range(4)],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )
