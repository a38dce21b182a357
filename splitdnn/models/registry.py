"""The built-in model zoo: one :class:`ZooEntry` per architecture, and the functions that build them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from splitdnn.errors import ConfigError, ModelLoadError
from splitdnn.models.classic import alexnet, vgg16
from splitdnn.models.mobilenet import mobilenet_v2
from splitdnn.models.resnet import resnet18, resnet50
from splitdnn.models.vit import vit_tiny
from splitdnn.models.yolo import tiny_yolov2

__all__ = ["ZOO", "ZooEntry", "build_zoo_model", "default_input_shape", "zoo_names"]

_KINDS = ("chain", "dag")

# Seed of the weight initialisation of every zoo model (see build_zoo_model).
ZOO_SEED = 0


@dataclass(frozen=True)
class ZooEntry:
    """One zoo architecture: how to build it and what input it takes."""

    name: str  # the name users type: "resnet18"
    builder: Callable[..., nn.Module]  # keyword arguments -> a freshly initialised model (train mode)
    input_shape: tuple[int, ...]  # the input the literature measures, without batch: (3, 224, 224)
    kind: str  # "chain" (every node feeds only the next) or "dag" (skips, attention)
    description: str  # one line for listings
    test_input_shape: tuple[int, ...]  # a small input (no batch) that keeps tests fast
    # keyword arguments the model needs to accept test_input_shape (a ViT's image_size); read-only
    test_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # the builder keyword that sets the (square) input side, if the model's input size is fixed
    size_kwarg: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"zoo entry {self.name!r}: kind must be one of {_KINDS}, found {self.kind!r}")
        object.__setattr__(self, "test_kwargs", MappingProxyType(dict(self.test_kwargs)))

    def input_shape_for(self, kwargs: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """The input shape (no batch) of the model built with ``kwargs``."""
        if self.size_kwarg is not None and kwargs and self.size_kwarg in kwargs:
            side = kwargs[self.size_kwarg]
            return (self.input_shape[0], side, side)
        return self.input_shape


_ENTRIES = (
    ZooEntry(
        "alexnet",
        alexnet,
        (3, 224, 224),
        "chain",
        "AlexNet (Krizhevsky 2012), torchvision layout; 61.1M params, 5 conv + 3 fc",
        (3, 64, 64),
    ),
    ZooEntry(
        "vgg16",
        vgg16,
        (3, 224, 224),
        "chain",
        "VGG-16 (Simonyan & Zisserman 2015), torchvision layout; 138.4M params, 13 conv + 3 fc",
        (3, 32, 32),
    ),
    ZooEntry(
        "resnet18",
        resnet18,
        (3, 224, 224),
        "dag",
        "ResNet-18 (He 2016), torchvision layout; 11.7M params, basic residual blocks",
        (3, 32, 32),
    ),
    ZooEntry(
        "resnet50",
        resnet50,
        (3, 224, 224),
        "dag",
        "ResNet-50 v1.5, torchvision layout; 25.6M params, bottleneck residual blocks",
        (3, 32, 32),
    ),
    ZooEntry(
        "mobilenet_v2",
        mobilenet_v2,
        (3, 224, 224),
        "dag",
        "MobileNetV2 (Sandler 2018), torchvision layout; 3.5M params, inverted residual blocks",
        (3, 32, 32),
    ),
    ZooEntry(
        "tiny_yolov2",
        tiny_yolov2,
        (3, 416, 416),
        "chain",
        "Tiny YOLOv2 detector for VOC (darknet layout); 15.9M params, output 13x13 grid x 125 channels",
        (3, 64, 64),
    ),
    ZooEntry(
        "vit_tiny",
        vit_tiny,
        (3, 224, 224),
        "dag",
        "ViT-Ti/16 vision transformer, torchvision ViT names; 5.7M params, 12 layers, hidden 192",
        (3, 32, 32),
        test_kwargs={"image_size": 32},
        size_kwarg="image_size",
    ),
)

#: Every built-in architecture, by name.
ZOO: Mapping[str, ZooEntry] = MappingProxyType({entry.name: entry for entry in _ENTRIES})


def zoo_names() -> list[str]:
    """The names of the built-in models, sorted."""
    return sorted(ZOO)


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown zoo model {name!r}: expected one of {', '.join(zoo_names())}; for your own model "
            f"pass 'package.module:callable'"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def build_zoo_model(name: str, /, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` with ``kwargs`` (e.g. ``num_classes=10``), in eval mode.

    The weights are initialised from a fixed seed (without touching the caller's random state), so
    every process that builds the same zoo model gets the same weights bit for bit: an edge client
    and a tail server that both build ``resnet18`` without a weights file compute the same network.
    """
    entry = _entry(name)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ZOO_SEED)
            model = entry.builder(**kwargs)
    except TypeError as exc:
        accepted = ", ".join(inspect.signature(entry.builder).parameters)
        raise ModelLoadError(
            f"zoo model {name!r} rejected keyword arguments {sorted(kwargs)} ({_first_line(exc)}); it "
            f"accepts: {accepted}"
        ) from exc
    except (ConfigError, ValueError) as exc:
        raise ModelLoadError(f"zoo model {name!r} cannot be built with {kwargs}: {_first_line(exc)}") from exc
    return model.eval()


def default_input_shape(
    name: str, batch_size: int = 1, *, kwargs: Mapping[str, Any] | None = None
) -> tuple[int, ...]:
    """The input shape, batch first, that zoo model ``name`` (built with ``kwargs``) is measured at."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, found {batch_size!r}")
    return (batch_size, *_entry(name).input_shape_for(kwargs))
