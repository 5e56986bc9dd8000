"""The trainable parts of Reverse Distillation: the one-class bottleneck embedding (OCBE) and
the student decoder (de-ResNet), laid out as the official RD4AD code and anomalib
(``components/bottleneck.py``, ``components/de_resnet.py``) lay them out, so state_dict keys
match theirs (``bottleneck.bn_layer.0.conv1.weight``, ``decoder.layer1.0.upsample.0.weight``...).

Widths follow the teacher: with base width ``b`` and block expansion ``e`` the teacher's
``layer1..3`` have ``b e, 2 b e, 4 b e`` channels (WRN50-2: 256, 512, 1024; tiny: 16, 32,
64). The OCBE brings ``layer1`` and ``layer2`` to ``layer3``'s grid (3x3 stride-2 convs),
concatenates the three (``12 b e`` channels) and runs one layer4-like stage (stride 2, ``8 b``
planes: 2048 channels for WRN50-2). The decoder mirrors ``layer3..layer1`` with transposed
2x2 stride-2 convolutions and returns the maps in the teacher's order (layer1, 2, 3 shapes).

Deviations (also in the README):
* anomalib's and RD4AD's OCBE also builds ``conv4``/``bn4``, which forward never uses; they
  are not built here (no dead parameters in the optimizer or the artifact).
* Widths scale with the teacher's base width (anomalib hard-codes 64), so the ``tiny``
  profile (base 16) gets the same classes at a quarter of the width.
* Weights are drawn from a seeded generator (anomalib: the global RNG): Kaiming-normal
  (fan_out, ReLU) for convolutions, BatchNorm 1/0, and PyTorch's default for the transposed
  convolutions (anomalib's init loop skips those too).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..backbone import BasicBlock, Bottleneck, ResNet, _conv1x1, _conv3x3

__all__ = ["DeResNet", "DecoderBasicBlock", "DecoderBottleneck", "OneClassBottleneck", "init_weights"]


class DecoderBasicBlock(nn.Module):
    """BasicBlock run backwards: a 2x2 stride-2 transposed conv where the encoder strides."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, upsample: nn.Module | None = None,
                 width_per_group: int = 64) -> None:
        super().__init__()
        if width_per_group != 64:
            raise ValueError("DecoderBasicBlock supports width_per_group=64 only (as torchvision's BasicBlock)")
        if stride == 2:
            self.conv1 = nn.ConvTranspose2d(inplanes, planes, kernel_size=2, stride=2, bias=False)
        else:
            self.conv1 = _conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DecoderBottleneck(nn.Module):
    """Bottleneck run backwards: the 3x3 conv becomes a 2x2 stride-2 transposed conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, upsample: nn.Module | None = None,
                 width_per_group: int = 64) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0))
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        if stride == 2:
            self.conv2 = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2, bias=False)
        else:
            self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class OneClassBottleneck(nn.Module):
    """OCBE: multi-scale feature fusion (MFF) of the teacher's three maps, then one-class
    embedding (OCE): a layer4-like ResNet stage that compresses them to one map at stride 32."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: int, base_width: int,
                 width_per_group: int = 64) -> None:
        super().__init__()
        e, b = block.expansion, int(base_width)
        self._block, self._wpg = block, int(width_per_group)
        self.conv1 = _conv3x3(b * e, 2 * b * e, 2)  # layer1 -> layer2's grid
        self.bn1 = nn.BatchNorm2d(2 * b * e)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(2 * b * e, 4 * b * e, 2)  # -> layer3's grid
        self.bn2 = nn.BatchNorm2d(4 * b * e)
        self.conv3 = _conv3x3(2 * b * e, 4 * b * e, 2)  # layer2 -> layer3's grid
        self.bn3 = nn.BatchNorm2d(4 * b * e)
        self.bn_layer = self._make_layer(3 * 4 * b * e, 8 * b, blocks)
        self.out_channels = 8 * b * e

    def _make_layer(self, inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        block = self._block
        downsample = nn.Sequential(_conv1x1(inplanes, planes * block.expansion, 2),
                                   nn.BatchNorm2d(planes * block.expansion))
        layers = [block(inplanes, planes, 2, downsample, self._wpg)]
        for _ in range(1, blocks):
            layers.append(block(planes * block.expansion, planes, 1, None, self._wpg))
        return nn.Sequential(*layers)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(features[0]))))))
        f2 = self.relu(self.bn3(self.conv3(features[1])))
        return self.bn_layer(torch.cat([f1, f2, features[2]], dim=1)).contiguous()


class DeResNet(nn.Module):
    """The student decoder: three stride-2 upsampling stages from the OCBE's map back to the
    teacher's ``layer3``, ``layer2`` and ``layer1`` shapes; ``forward`` returns them in the
    teacher's order ``[layer1, layer2, layer3]``. Block counts per stage are the teacher
    layout's first three (``[3, 4, 6]`` for WRN50-2, as RD4AD's ``de_wide_resnet50_2``)."""

    def __init__(self, block: type[DecoderBasicBlock] | type[DecoderBottleneck], layers: tuple[int, ...],
                 base_width: int, width_per_group: int = 64) -> None:
        super().__init__()
        b = int(base_width)
        self._block, self._wpg = block, int(width_per_group)
        self.inplanes = 8 * b * block.expansion
        self.layer1 = self._make_layer(4 * b, layers[0])
        self.layer2 = self._make_layer(2 * b, layers[1])
        self.layer3 = self._make_layer(b, layers[2])

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        block = self._block
        upsample = nn.Sequential(
            nn.ConvTranspose2d(self.inplanes, planes * block.expansion, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, 2, upsample, self._wpg)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, None, self._wpg))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.layer1(x)  # teacher layer3's shape
        b = self.layer2(a)  # layer2's
        c = self.layer3(b)  # layer1's
        return [c, b, a]


def build_student(teacher: ResNet, ocbe_width_per_group: int | None = None) -> tuple[OneClassBottleneck, DeResNet]:
    """OCBE and decoder for ``teacher``'s architecture and width (weights not initialised).

    ``ocbe_width_per_group``: the OCBE blocks' width per group; ``None`` = 64, anomalib's
    choice for every backbone; RD4AD's own code passes the teacher's (128 for WRN50-2)."""
    basic = teacher.expansion == 1
    enc_block = BasicBlock if basic else Bottleneck
    dec_block = DecoderBasicBlock if basic else DecoderBottleneck
    wpg = int(ocbe_width_per_group or 64)
    if basic and wpg != 64:
        raise ValueError("ocbe_width_per_group: BasicBlock backbones support 64 only (leave it unset)")
    # anomalib: OCBE(BasicBlock, 2) for resnet18/34, OCBE(Bottleneck, 3) otherwise
    bottleneck = OneClassBottleneck(enc_block, 2 if basic else 3, teacher.base_width, wpg)
    decoder = DeResNet(dec_block, teacher.block_counts[:3], teacher.base_width, teacher.width_per_group)
    return bottleneck, decoder


def init_weights(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Seeded initialisation in module order: convolutions Kaiming-normal (fan_out, ReLU),
    BatchNorm weight 1 / bias 0 / running stats (0, 1), transposed convolutions PyTorch's
    default (``kaiming_uniform_(a=sqrt(5))``)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
    return module
