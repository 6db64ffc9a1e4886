"""ResNet and IBN-Net-a backbones in plain PyTorch.

State-dict keys are exactly torchvision's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ``layer1.0.downsample.1.*``, ...) so torchvision ImageNet files
load unchanged; the IBN-Net-a variants name their IBN layers ``layerX.Y.bn1.IN.*`` /
``layerX.Y.bn1.BN.*`` like the official XingangPan/IBN-Net release. Backbones have **no** ``fc``:
``forward`` returns the last feature map ``(N, out_channels, H, W)``; a checkpoint's ``fc.*`` keys
are reported by :func:`adaptreid.models.load_pretrained` as unused classifier keys.

``last_stride=1`` runs ``layer4`` at stride 1 (output stride 16 instead of 32), the usual re-ID
choice: twice the spatial resolution of the final map for almost no extra cost.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .build import BACKBONES

__all__ = [
    "IBN",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet50_ibn_a",
    "resnet101_ibn_a",
]


class IBN(nn.Module):
    """Instance-Batch Normalisation (IBN-Net, Pan et al. ECCV 2018).

    The first ``int(planes * ratio)`` channels are instance-normalised (affine), the rest
    batch-normalised. Submodule names ``IN`` and ``BN`` match the official weight files.
    """

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ConfigError(f"IBN ratio must be in (0, 1), got {ratio}")
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        ibn: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, as torchvision's "ResNet v1.5") -> 1x1, expansion 4."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        ibn: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet feature extractor (no global pooling, no ``fc``).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        last_stride: stride of ``layer4`` (1 or 2).
        ibn_a: use IBN-a (``bn1`` of every block in ``layer1``..``layer3`` is :class:`IBN`).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        last_stride: Literal[1, 2] = 2,
        ibn_a: bool = False,
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ConfigError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.last_stride = int(last_stride)
        self.ibn_a = ibn_a
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, ibn_a)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, ibn_a)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, ibn_a)
        self.layer4 = self._make_layer(block, 512, layers[3], self.last_stride, False)
        self.out_channels = 512 * block.expansion
        self._init_weights()

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        ibn: bool,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, ibn)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, ibn=ibn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


@BACKBONES.register("resnet18", "r18")
def resnet18(last_stride: Literal[1, 2] = 2) -> ResNet:
    """ResNet-18 (512 output channels)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), last_stride)


@BACKBONES.register("resnet34", "r34")
def resnet34(last_stride: Literal[1, 2] = 2) -> ResNet:
    """ResNet-34 (512 output channels)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), last_stride)


@BACKBONES.register("resnet50", "r50")
def resnet50(last_stride: Literal[1, 2] = 1) -> ResNet:
    """ResNet-50 (2048 output channels); layer4 stride 1 by default, as in re-ID."""
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride)


@BACKBONES.register("resnet101", "r101")
def resnet101(last_stride: Literal[1, 2] = 1) -> ResNet:
    """ResNet-101 (2048 output channels)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), last_stride)


@BACKBONES.register("resnet50_ibn_a", "resnet50-ibn-a", "r50_ibn_a", "ibn_a", "ibn")
def resnet50_ibn_a(last_stride: Literal[1, 2] = 1) -> ResNet:
    """IBN-Net50-a: ResNet-50 with IBN in ``bn1`` of every block of layer1..layer3."""
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride, ibn_a=True)


@BACKBONES.register("resnet101_ibn_a", "resnet101-ibn-a", "r101_ibn_a")
def resnet101_ibn_a(last_stride: Literal[1, 2] = 1) -> ResNet:
    """IBN-Net101-a."""
    return ResNet(Bottleneck, (3, 4, 23, 3), last_stride, ibn_a=True)
