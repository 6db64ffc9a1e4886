"""A small VGG-style CNN for CPU demos and tests (``adaptreid demo``).

Four blocks of two 3x3 conv-BN-ReLU layers (16, 32, 64, 128 channels), 2x2 max-pooling
between blocks: about 0.29 M parameters and 40 MFLOPs per 64x32 image, so that training from
scratch on the built-in synthetic data takes a minute on two CPU cores. It is not a paper
backbone; use ``resnet50_ibn_a`` (MSPLR) or ``resnet50`` + ``pcb`` (PAST) for real work.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .build import BACKBONES

__all__ = ["SmallCNN", "small_cnn"]


def _block(cin: int, cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Image ``(N, 3, H, W)`` -> feature map ``(N, 128, H / s, W / s)``, s = 8 (or 4 with
    ``last_stride=1``, which drops the last pooling, as ResNet's last stride does)."""

    def __init__(self, last_stride: Literal[1, 2] = 2, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        blocks: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            if i > 0 and not (i == len(widths) - 1 and last_stride == 1):
                blocks.append(nn.MaxPool2d(2))
            blocks.append(_block(cin, w))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


@BACKBONES.register("small_cnn", "smallcnn")
def small_cnn(last_stride: Literal[1, 2] = 2) -> SmallCNN:
    """The demo backbone (see the module docstring)."""
    return SmallCNN(last_stride)
