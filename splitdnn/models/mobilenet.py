"""MobileNetV2: inverted residual DAG with torchvision's module names and parameter shapes.

Layout as in torchvision: ``features.0`` is the conv-bn-relu6 stem (``features.0.0`` conv,
``features.0.1`` bn), ``features.1`` ... ``features.17`` are inverted residual blocks whose layers live
in ``features.N.conv.M``, ``features.18`` is the 1x1 conv to 1280 channels, ``classifier.1`` the linear
layer. Any input of at least 32x32 works.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from splitdnn.errors import ConfigError
from splitdnn.models.classic import init_weights

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias), batch norm, ReLU6; children 0, 1, 2 as in torchvision's Conv2dNormActivation."""

    def __init__(
        self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(),
        )
        self.out_channels = out_planes


class InvertedResidual(nn.Module):
    """1x1 expand (when t > 1), 3x3 depthwise, 1x1 linear projection; a skip when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"inverted residual stride must be 1 or 2, found {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # use_res_connect is fixed at construction, so this branch is not data-dependent (fx-safe).
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# t: expansion factor, c: output channels, n: repeats, s: stride of the first repeat.
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) as torchvision builds it."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in _SETTINGS:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        init_weights(self)  # kaiming's default leaky_relu gain with a=0 equals relu's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1280, H/32, W/32)
        x = F.adaptive_avg_pool2d(x, (1, 1))  # (B, 1280, 1, 1)
        x = torch.flatten(x, 1)  # (B, 1280)
        return self.classifier(x)  # (B, num_classes)


def mobilenet_v2(
    num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNetV2 (3,504,872 parameters with 1000 classes and width 1.0)."""
    return MobileNetV2(num_classes, width_mult, round_nearest, dropout)
