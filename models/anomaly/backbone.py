"""Plain-torch ResNet / WideResNet feature backbone for PatchCore and the Reverse Distillation
teacher.

The modules are laid out so that ``state_dict()`` has exactly torchvision's key names and
shapes (``conv1``, ``bn1``, ``layer1..4.{i}.conv1/bn1/conv2/bn2[/conv3/bn3]``,
``layer{n}.0.downsample.0/1``, ``fc``). timm's ResNets use the same names, so weight files of
either library load strictly (see :func:`load_backbone_weights`).

Supported architectures (torchvision's definitions):

* ``resnet18`` / ``resnet34``: BasicBlock, [2,2,2,2] / [3,4,6,3].
* ``resnet50``: Bottleneck, [3,4,6,3], bottleneck width = planes.
* ``wide_resnet50_2``: Bottleneck, [3,4,6,3], bottleneck width = 2 x planes
  (``width_per_group=128``); the stride sits on the 3x3 conv (torchvision "ResNet V1.5").
* ``tiny``: the resnet18 layout with a base width of 16 instead of 64 (``width`` option);
  used by the ``tiny`` model profile with seeded random weights.

Feature extraction (:meth:`ResNet.extract`: ``layer1`` to ``layer3``) stops after ``layer3``;
``layer4`` and ``fc`` exist only so that a full torchvision/timm checkpoint loads strictly.

Random weights (``weights=None``) follow torchvision's initialisation: Kaiming-normal
(fan_out, ReLU) convolutions, BatchNorm weight 1 / bias 0 / running stats (0, 1), so
BatchNorm is the identity in eval mode. They are drawn from a CPU ``torch.Generator`` seeded
with ``seed`` (deviation: torchvision draws from the global RNG) so that the same seed gives
the same network on every machine and device; :func:`weights_fingerprint` then identifies it.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "BackboneWeightsError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResNet",
    "build_backbone",
    "load_backbone_weights",
    "read_state_dict",
    "weights_fingerprint",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneWeightsError(ValueError):
    """A weight file does not match the architecture (names the offending keys)."""


@dataclass(frozen=True)
class ArchSpec:
    block: str  # "basic" | "bottleneck"
    layers: tuple[int, int, int, int]
    width: int = 64  # base width (stem channels, layer1 planes)
    width_per_group: int = 64  # bottleneck width = planes * width_per_group / 64


ARCHITECTURES: dict[str, ArchSpec] = {
    "resnet18": ArchSpec("basic", (2, 2, 2, 2)),
    "resnet34": ArchSpec("basic", (3, 4, 6, 3)),
    "resnet50": ArchSpec("bottleneck", (3, 4, 6, 3)),
    "wide_resnet50_2": ArchSpec("bottleneck", (3, 4, 6, 3), width_per_group=128),
    "tiny": ArchSpec("basic", (2, 2, 2, 2), width=16),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, width_per_group: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, width_per_group: int = 64) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0))
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)  # stride on the 3x3 conv (V1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-compatible ResNet; :meth:`extract` returns ``layer1``..``layer3`` maps."""

    def __init__(self, arch: str = "resnet18", width: int | None = None,
                 num_classes: int = 1000) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(ARCHITECTURES)}")
        spec = ARCHITECTURES[arch]
        base = int(width or spec.width)
        if base < 4:
            raise ValueError("backbone width must be >= 4")
        block = BasicBlock if spec.block == "basic" else Bottleneck
        self.arch = arch
        self.base_width = base
        #: where the weights came from: "random:seed=N", "file:NAME", "state_dict" (set by
        #: build_backbone; None for a bare ResNet())
        self.weights_source: str | None = None
        self._fingerprint: str | None = None
        self._block = block
        self._wpg = spec.width_per_group
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(base, spec.layers[0], 1)
        self.layer2 = self._make_layer(base * 2, spec.layers[1], 2)
        self.layer3 = self._make_layer(base * 4, spec.layers[2], 2)
        self.layer4 = self._make_layer(base * 8, spec.layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(base * 8 * block.expansion, num_classes)
        # ImageNet normalisation as non-persistent buffers: not part of the state_dict.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        #: channels of every extractable layer; ``feature_channels``: PatchCore's two
        self.layer_channels = {f"layer{i + 1}": base * 2 ** i * block.expansion for i in range(3)}
        self.feature_channels = {name: self.layer_channels[name] for name in ("layer2", "layer3")}
        self.expansion = block.expansion
        self.width_per_group = spec.width_per_group
        self.block_counts = spec.layers

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        block = self._block
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self._wpg)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, None, self._wpg))
        return nn.Sequential(*layers)

    def init_random(self, seed: int = 0) -> "ResNet":
        """torchvision's initialisation, drawn from a generator seeded with ``seed``."""
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    # kaiming_normal_(mode="fan_out", nonlinearity="relu")
                    fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                    std = math.sqrt(2.0 / fan_out)
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
                    m.num_batches_tracked.zero_()
                elif isinstance(m, nn.Linear):
                    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
                    bound = 1.0 / math.sqrt(m.in_features)
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 2 * bound - bound)
        self._fingerprint = None
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> ImageNet-normalised."""
        return (images - self.pixel_mean) / self.pixel_std

    def extract(self, images: torch.Tensor,
                layers: tuple[str, ...] = ("layer2", "layer3")) -> dict[str, torch.Tensor]:
        """Feature maps of ``layers`` (default PatchCore's ``layer2``, stride 8, and ``layer3``,
        stride 16; Reverse Distillation adds ``layer1``, stride 4), in that order.

        ``images`` are RGB in [0, 1]; ImageNet normalisation happens here. Nothing after
        ``layer3`` is evaluated (``layer4`` and the head exist for strict weight loading).
        """
        unknown = [name for name in layers if name not in self.layer_channels]
        if unknown:
            raise ValueError(f"layers must be among {sorted(self.layer_channels)}, got {unknown}")
        x = self.normalize(images)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        x = self.layer1(x)
        out["layer1"] = x
        if "layer2" in layers or "layer3" in layers:
            x = self.layer2(x)
            out["layer2"] = x
            if "layer3" in layers:
                out["layer3"] = self.layer3(x)
        return {name: out[name] for name in layers}

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # classifier, for completeness
        x = self.extract(images)["layer3"]
        x = self.avgpool(self.layer4(x))
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------------- weights


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read a torchvision- or timm-format state_dict.

    ``.safetensors`` files via safetensors; anything else (``.pth``, ``.pt``, ``.bin``) via
    ``torch.load(weights_only=True)``. A checkpoint that wraps the weights in ``state_dict``
    or ``model`` is unwrapped and a ``module.`` prefix (DataParallel) is stripped.
    """
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise BackboneWeightsError(f"backbone weight file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:  # pickle with non-tensor objects, corrupt file
                raise BackboneWeightsError(f"cannot read backbone weights {path.name}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = dict(sd[wrapper])
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BackboneWeightsError(f"non-tensor entries in backbone weights: {bad[:5]}")
    return sd


def _fmt(keys: list[str], limit: int = 12) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_backbone_weights(model: ResNet, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> ResNet:
    """Load weights strictly: every key present, no extra key, every shape equal.

    The one tolerance: BatchNorm ``num_batches_tracked`` counters may be absent (older
    torchvision files and some timm exports omit them; they do not affect inference).
    Raises :class:`BackboneWeightsError` naming missing, unexpected and mismatched keys.
    """
    sd = read_state_dict(source)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} != model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"backbone weights do not match {model.arch} (width {model.base_width})"]
        if mismatched:
            parts.append(f"shape mismatch: {_fmt(mismatched)}")
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        raise BackboneWeightsError("; ".join(parts))
    with torch.no_grad():
        for k, t in expected.items():
            if k in sd:
                t.copy_(sd[k].to(dtype=t.dtype))
    model._fingerprint = None  # weights changed
    return model


def weights_fingerprint(model: nn.Module, cache: bool = True) -> str:
    """sha256 over the state_dict (sorted keys, float32 little-endian bytes).

    Independent of the file format the weights came from; identifies the exact backbone a
    memory bank was built with. Cached on the module (backbones are frozen) unless
    ``cache=False``.
    """
    cached = getattr(model, "_fingerprint", None)
    if cache and cached:
        return cached
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        if k.endswith("num_batches_tracked"):
            continue
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()
    if cache:
        model._fingerprint = digest
    return digest


def build_backbone(arch: str = "wide_resnet50_2", *, width: int | None = None,
                   weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                   seed: int = 0, device: str | torch.device | None = None) -> ResNet:
    """Build a backbone in eval mode with gradients off.

    ``weights=None`` gives seeded random weights (the ``tiny`` profile, or full-size random
    networks for benchmarks); otherwise the file/state_dict is loaded strictly.
    """
    model = ResNet(arch, width=width)
    if weights is None:
        model.init_random(seed)
        model.weights_source = f"random:seed={int(seed)}"
    else:
        load_backbone_weights(model, weights)
        model.weights_source = (f"file:{Path(weights).name}" if isinstance(weights, (str, os.PathLike))
                                else "state_dict")
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model
