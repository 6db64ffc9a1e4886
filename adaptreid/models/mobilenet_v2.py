"""MobileNetV2 (width 1.0) feature extractor with torchvision's ``features.*`` key layout.

``features.0`` is conv-BN-ReLU6 (``features.0.0.weight``, ``features.0.1.*``); ``features.1`` ..
``features.17`` are inverted-residual blocks (``features.N.conv.*``); ``features.18`` is the final
1x1 conv-BN-ReLU6 to 1280 channels. There is no ``classifier``; ``forward`` returns the feature
map. ``last_stride=2`` (default) is torchvision's network (output stride 32); ``last_stride=1``
makes the last stride-2 stage (``features.14``, 160 channels) stride 1 (output stride 16), the
re-ID "last stride" trick. The key set does not depend on ``last_stride``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..errors import ConfigError
from .build import BACKBONES

__all__ = ["ConvBNReLU", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion t, output channels c, repeats n, first stride s): the paper's Table 2.
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU6, as submodules ``0``, ``1``, ``2``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when t == 1) -> depthwise 3x3 -> linear project (1x1) -> BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.stride = stride
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 width 1.0, 1280 output channels."""

    def __init__(self, last_stride: Literal[1, 2] = 2) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ConfigError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.last_stride = int(last_stride)
        last_s2 = max(i for i, s in enumerate(_SETTINGS) if s[3] == 2)
        cin = 32
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for i, (t, c, n, s) in enumerate(_SETTINGS):
            if i == last_s2:
                s = self.last_stride
            for j in range(n):
                features.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        self.out_channels = 1280
        features.append(ConvBNReLU(cin, self.out_channels, kernel_size=1))
        self.features = nn.Sequential(*features)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


@BACKBONES.register("mobilenet_v2", "mobilenetv2", "mobilenet-v2")
def mobilenet_v2(last_stride: Literal[1, 2] = 2) -> MobileNetV2:
    """MobileNetV2 (width 1.0); ``last_stride=1`` for output stride 16."""
    return MobileNetV2(last_stride)
