"""What the edge client decides once, at construction (torch; no grpc): its model, its profiles, checks.

Split out of :mod:`splitdnn.runtime.client`, whose constructor calls these: resolving the ``model``
argument into a traced model, checking what GetModelInfo says against it (the structure by the
fingerprint, the values by the weights digest), choosing the server profile to plan with, profiling the
device when no profile is given, and validating the numeric arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from splitdnn import graph
from splitdnn.errors import ConfigError, ModelMismatchError
from splitdnn.runtime.planner import scale_profile
from splitdnn.runtime.serde import ModelInfoData
from splitdnn.schema import Profile

__all__ = [
    "SERVER_OWN_PROFILE",
    "check_int",
    "check_model_info",
    "check_number",
    "choose_server_profile",
    "profile_device",
    "resolve_model",
]


def check_number(what: str, value: object, *, low: float, unit: str) -> None:
    """ConfigError unless ``value`` is a finite number >= ``low`` (> 0 when ``low`` is 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < low if low else value <= 0):  # type: ignore[operator]
        bound = f">= {low:g}" if low else "> 0"
        raise ConfigError(f"{what} must be a finite {unit} {bound}, found {value!r}")


_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def check_address(address: str) -> None:
    """``host:port`` with a port 1..65535, or a gRPC target with a scheme (ConfigError otherwise)."""
    if address.startswith(_TARGET_SCHEMES):
        return
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"address must be host:port with a port 1..65535 (or a gRPC target such as "
            f"ipv4:10.0.0.1:8001,10.0.0.2:8001 or dns:///tails.example:8001), found {address!r}"
        )


def check_int(what: str, value: object, low: int, high: int | None = None) -> None:
    """ConfigError unless ``value`` is an integer in ``low..high`` (no upper bound when None)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
        wanted = f"{low}..{high}" if high else f">= {low}"
        raise ConfigError(f"{what} must be an integer {wanted}, found {value!r}")


def resolve_model(
    model: Any, input_shape: Sequence[int] | None, name: str | None = None
) -> graph.TracedModel:
    """The traced model for the client's ``model`` argument (zoo name / spec, module or traced), named
    ``name`` when a module is given (default: its class name)."""
    if isinstance(model, graph.TracedModel):
        return model
    from splitdnn.models import ZOO, default_input_shape, load_model

    if isinstance(model, str):
        spec = model
        module, name = load_model(spec)
        if input_shape is None and spec in ZOO:
            input_shape = default_input_shape(spec)
    elif isinstance(model, nn.Module):
        module = model.eval()
        name = name or type(model).__name__.lower()
    else:
        raise ConfigError(
            f"model must be a zoo name or 'module:callable' spec, an nn.Module or a traced model, "
            f"found {type(model).__name__}"
        )
    if input_shape is None:
        raise ConfigError(
            f"model {name!r} is not in the zoo, so its input shape is unknown; pass input_shape, "
            f"e.g. (1, 3, 224, 224)"
        )
    shape = tuple(int(d) for d in input_shape)
    return graph.trace(module, graph.example_inputs(module, [shape]), name=name)


def check_model_info(info: ModelInfoData, traced: graph.TracedModel, weights: str, address: str) -> None:
    """ModelMismatchError unless the server serves ``traced``'s structure with the same weights.

    A server that publishes no weights digest (older than it) is trusted on the fingerprint alone.
    """
    if info.fingerprint != traced.fingerprint:
        raise ModelMismatchError(
            f"the server at {address} serves model {info.name!r} with fingerprint "
            f"{info.fingerprint[:12]}, the client traced {traced.name!r} with "
            f"{traced.fingerprint[:12]}; use the same model on both sides",
            code="FAILED_PRECONDITION",
        )
    if info.weights and info.weights != weights:
        raise ModelMismatchError(
            f"the server at {address} computes {info.name!r} with weights {info.weights[:12]!r}, the "
            f"client with {weights[:12]!r} (same architecture, different parameter values: a split "
            f"would compute garbage); load the same weights file on both ends",
            code="FAILED_PRECONDITION",
        )


#: ``SplitClient.server_profile_source`` when the client plans with the server's own profile
SERVER_OWN_PROFILE = "the server's (GetModelInfo)"


def choose_server_profile(
    given: Profile | None, fetched: Profile | None, device: Profile, speedup: float | None
) -> tuple[Profile, str, list[str]]:
    """``(profile, where it came from, notes)``: the given one, else the server's own when it is for
    the device's input shapes, else the device profile divided by ``speedup`` (default: the device's
    emulation factor, i.e. "this machine, not emulated")."""
    if given is not None:
        return given, "given", []
    if fetched is not None and fetched.input_shapes == device.input_shapes:
        return fetched, SERVER_OWN_PROFILE, []
    notes = []
    if fetched is not None:
        notes.append(
            f"the server's profile is for input shapes {list(fetched.input_shapes)}, the device's "
            f"for {list(device.input_shapes)}: not used"
        )
    factor = speedup if speedup is not None else device.slowdown
    source = f"estimated: the device profile / {factor:g}"
    return scale_profile(device, factor), source, [*notes, f"server profile {source}"]


#: the codecs a client's quick profile measures when the caller names none
QUICK_PROFILE_CODECS = ("raw", "zstd", "int8+zstd")


def profile_device(
    traced: graph.TracedModel,
    threads: int | None,
    slowdown: float,
    repeats: int,
    codecs: Sequence[str] | None = None,
) -> Profile:
    """A quick profile of this machine (emulating ``slowdown``), measuring the codecs the client may
    use (``codecs``; None: :data:`QUICK_PROFILE_CODECS`)."""
    from splitdnn.profiler import profile_model
    from splitdnn.runtime._client_request import emulation_clock

    return profile_model(
        traced, threads=threads, slowdown=slowdown, warmup=1, repeats=repeats, progress=False,
        codec_nodes="chain", timer=emulation_clock(threads, slowdown),
        codecs=QUICK_PROFILE_CODECS if codecs is None else tuple(dict.fromkeys(("raw", *codecs))),
    )  # fmt: skip
