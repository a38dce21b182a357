"""Tiny YOLOv2 (VOC): the darknet conv-bn-leaky stack the split-computing literature uses as a detector.

The layer sizes follow darknet's ``yolov2-tiny-voc.cfg``: six 3x3 conv-bn-leaky(0.1) layers of 16 ... 512
filters, each followed by a 2x2 max pool (stride 2 for the first five; the sixth has stride 1 and pads
right/bottom by one, as darknet does, so 13x13 stays 13x13), two 3x3 convs of 1024 filters, and a 1x1
conv with bias to ``num_anchors * (5 + num_classes)`` channels. It is a plain chain: every node feeds
exactly the next one.

Input (B, 3, 416, 416) gives (B, 125, 13, 13) for VOC (5 anchors x (4 box + 1 objectness + 20 classes)),
channels-first like every torch detector head: channel ``a * (5 + num_classes) + k`` is value ``k`` of
anchor ``a`` in the cell. Any input whose side is a multiple of 32 works (64x64 gives a 2x2 grid).
torchvision has no YOLO, so the names are ours: ``features.conv1.{conv,bn,act}``, ``features.pool1``,
..., ``head``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["VOC_ANCHORS", "TinyYOLOv2", "tiny_yolov2"]

#: yolov2-tiny-voc anchor (width, height) pairs, in grid cells; what a decoder of the output needs.
VOC_ANCHORS: tuple[tuple[float, float], ...] = (
    (1.08, 1.19),
    (3.42, 4.41),
    (6.63, 11.38),
    (9.42, 5.11),
    (16.62, 10.52),
)


def _conv_bn_leaky(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            act=nn.LeakyReLU(0.1),
        )
    )


def _same_maxpool_stride1() -> nn.Sequential:
    # darknet's size-2 stride-1 max pool keeps the grid size; padding the right and bottom edge by
    # replication gives the same maxima as darknet's skipping of out-of-range cells.
    return nn.Sequential(
        OrderedDict(pad=nn.ReplicationPad2d((0, 1, 0, 1)), pool=nn.MaxPool2d(kernel_size=2, stride=1))
    )


class TinyYOLOv2(nn.Module):
    """Tiny YOLOv2: 9 convolutions, 6 max pools; output (B, A * (5 + C), H / 32, W / 32)."""

    def __init__(self, num_classes: int = 20, num_anchors: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        widths = (16, 32, 64, 128, 256, 512)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for i, width in enumerate(widths, start=1):
            layers[f"conv{i}"] = _conv_bn_leaky(in_channels, width)
            layers[f"pool{i}"] = nn.MaxPool2d(kernel_size=2, stride=2) if i < 6 else _same_maxpool_stride1()
            in_channels = width
        layers["conv7"] = _conv_bn_leaky(512, 1024)
        layers["conv8"] = _conv_bn_leaky(1024, 1024)
        self.features = nn.Sequential(layers)
        self.head = nn.Conv2d(1024, num_anchors * (5 + num_classes), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1024, H/32, W/32)
        return self.head(x)  # (B, A * (5 + C), H/32, W/32)


def tiny_yolov2(num_classes: int = 20, num_anchors: int = 5) -> TinyYOLOv2:
    """Tiny YOLOv2 for VOC by default (20 classes, 5 anchors: 125 output channels)."""
    return TinyYOLOv2(num_classes=num_classes, num_anchors=num_anchors)
