"""Frozen records shared by every layer: profiles, links, plans, and their JSON form (stdlib only).

Units are in the names: ``_ms`` milliseconds, ``_bytes`` bytes, ``_mbps`` megabits (10**6 bits) per
second, ``_j`` joules, ``_w`` watts. Every time stored in a :class:`Profile` is the time *as the
profiled device would see it*: when a profile was taken with a device-emulation ``slowdown`` factor,
its times already include that factor, and ``Profile.slowdown`` records it.

The JSON form is the dataclasses' fields, written with sorted keys and an indent so committed files
diff cleanly. Reading is strict: every field is type-checked, unknown fields are refused, and the
error names the path of the offending value (``nodes[3].latency.median_ms``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from splitdnn.errors import ConfigError, ProfileError, ProfileMismatchError

__all__ = [
    "PROFILE_SCHEMA_VERSION",
    "BoundaryTensor",
    "Calibration",
    "CodecResult",
    "CostBreakdown",
    "LatencyStats",
    "Link",
    "MachineInfo",
    "NodeProfile",
    "Plan",
    "PowerModel",
    "Profile",
    "TensorMeta",
    "check_same_model",
    "from_dict",
    "load_profile",
    "profile_from_json",
    "profile_to_json",
    "save_profile",
    "to_dict",
]

PROFILE_SCHEMA_VERSION = 1
#: field metadata key: :func:`to_dict` leaves the field out while it holds its default (a field
#: added after a schema shipped, so that earlier readers, which refuse unknown fields, still read
#: every record that does not use it)
OMIT_DEFAULT = "splitdnn.omit_default"

#: fx node kinds. ``placeholder`` nodes are the model's inputs (they live on the device),
#: ``get_attr`` nodes are parameters/buffers (free, replicated into every piece that reads them),
#: ``output`` is the graph's single sink; the rest are compute nodes.
NODE_OPS = ("placeholder", "get_attr", "call_module", "call_function", "call_method", "output")
COMPUTE_OPS = ("call_module", "call_function", "call_method")


# --------------------------------------------------------------------------------------------------
# profiles


@dataclass(frozen=True)
class LatencyStats:
    """Latency of repeated timed runs after warm-up."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int  # timed runs the statistics come from

    def __post_init__(self) -> None:
        for name in ("median_ms", "p10_ms", "p90_ms"):
            _check_finite_nonneg(name, getattr(self, name))
        if not self.p10_ms <= self.median_ms <= self.p90_ms:
            raise ProfileError(
                f"latency statistics out of order: expected p10_ms <= median_ms <= p90_ms, found "
                f"{self.p10_ms} / {self.median_ms} / {self.p90_ms}"
            )
        if self.repeats < 0:
            raise ProfileError(f"repeats must be >= 0, found {self.repeats}")

    def scaled(self, factor: float) -> LatencyStats:
        return LatencyStats(self.median_ms * factor, self.p10_ms * factor, self.p90_ms * factor, self.repeats)

    @classmethod
    def zero(cls) -> LatencyStats:
        return cls(0.0, 0.0, 0.0, 0)


@dataclass(frozen=True)
class TensorMeta:
    """One tensor a node produces (a node producing a tuple has several)."""

    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix: "float32", "int64", ...
    nbytes: int


@dataclass(frozen=True)
class CodecResult:
    """One codec measured on a node's real value (a single floating tensor) on one machine.

    Times include the profile's ``slowdown`` like every other time in it. Errors compare the decoded
    array with the original: ``max_abs_error``, ``rel_mse`` (mean squared error / mean square of the
    original; 0 for an all-zero original decoded exactly) and ``cosine`` similarity (1 = same direction;
    1.0 when both are all zero).
    """

    spec: str  # codec chain as splitdnn.codec.encode takes it: "raw", "zstd", "int8+zstd", ...
    wire_bytes: int  # bytes of the whole frame (header included)
    encode_ms: float  # median time to encode, on the profiled machine
    decode_ms: float  # median time to decode, on the profiled machine
    max_abs_error: float
    rel_mse: float
    cosine: float

    def __post_init__(self) -> None:
        if not self.spec:
            raise ProfileError("codec result: spec must be a non-empty codec chain")
        if self.wire_bytes < 0:
            raise ProfileError(f"codec {self.spec!r}: wire_bytes must be >= 0, found {self.wire_bytes}")
        for name in ("encode_ms", "decode_ms", "max_abs_error", "rel_mse"):
            _check_finite_nonneg(f"codec {self.spec!r} {name}", getattr(self, name))
        if not (math.isfinite(self.cosine) and -1.0 - 1e-6 <= self.cosine <= 1.0 + 1e-6):
            raise ProfileError(f"codec {self.spec!r}: cosine must be in [-1, 1], found {self.cosine}")


@dataclass(frozen=True)
class NodeProfile:
    """One fx node of the traced model, as measured on one machine."""

    name: str  # fx node name, the key of everything (never a list position)
    op: str  # one of NODE_OPS
    target: str  # module path, function or method name
    inputs: tuple[str, ...]  # names of the nodes whose values this node reads, in first-use order
    outputs: tuple[TensorMeta, ...]  # every tensor in the node's value (flattened)
    output_bytes: int  # bytes of the node's value: what crossing a cut right after it costs raw
    param_bytes: int  # bytes of parameters and buffers the node owns (call_module nodes)
    latency: LatencyStats  # the node timed alone, on its recorded inputs
    calibrated_ms: float  # the node's share of measured segment times; what the solver adds up
    # codecs measured on the node's real value (candidate boundary tensors only; () = not measured)
    codecs: tuple[CodecResult, ...] = ()

    def __post_init__(self) -> None:
        if self.op not in NODE_OPS:
            raise ProfileError(f"node {self.name!r}: op must be one of {NODE_OPS}, found {self.op!r}")
        if self.op in ("placeholder", "get_attr") and self.inputs:  # the solver reads no edges into them
            raise ProfileError(
                f"node {self.name!r} is a {self.op} but reads {list(self.inputs)[:4]}; model inputs and "
                f"parameters read no other node (is the profile edited by hand?)"
            )
        if self.output_bytes < 0 or self.param_bytes < 0:
            raise ProfileError(f"node {self.name!r}: byte counts must be >= 0")
        _check_finite_nonneg(f"node {self.name!r} calibrated_ms", self.calibrated_ms)
        specs = [c.spec for c in self.codecs]
        if len(set(specs)) != len(specs):
            raise ProfileError(f"node {self.name!r}: a codec is listed twice in {specs}")

    def codec(self, spec: str) -> CodecResult | None:
        """The measurement of codec ``spec`` on this node's value, or None."""
        for c in self.codecs:
            if c.spec == spec:
                return c
        return None

    @property
    def is_compute(self) -> bool:
        return self.op in COMPUTE_OPS


@dataclass(frozen=True)
class MachineInfo:
    """The machine and runtime a profile was measured on."""

    hostname: str
    platform: str  # e.g. "Linux-6.1-x86_64"
    processor: str  # CPU model string
    cpu_count: int  # logical CPUs of the machine
    threads: int  # torch intra-op threads used while profiling
    device: str  # "cpu" or "cuda"
    accelerator: str  # GPU name, or "" on CPU
    python: str
    torch: str


@dataclass(frozen=True)
class Calibration:
    """How per-node times were fitted to measured contiguous segments, and how well they predict.

    ``method`` names the procedure. The error fields compare predicted against measured head and tail
    times over ``cuts_checked`` chain cuts that were measured but not used to fit.
    """

    method: str
    segments: int  # contiguous segments measured and used to fit
    cuts_checked: int
    mape_pct: float  # mean absolute percentage error over the checked head and tail times
    max_abs_error_ms: float
    median_abs_error_ms: float


@dataclass(frozen=True)
class Profile:
    """Everything the solver needs to know about one model on one machine."""

    schema_version: int
    model: str  # zoo name or the user's model spec
    fingerprint: str  # graph structure + parameter shapes; see splitdnn.graph.fingerprint
    input_shapes: tuple[tuple[int, ...], ...]  # one per placeholder, batch dimension included
    batch_size: int
    machine: MachineInfo
    slowdown: float  # device-emulation factor already applied to every time below (1.0 = none)
    warmup: int
    repeats: int
    total: LatencyStats  # the whole model run as one fused forward pass
    calibration: Calibration
    nodes: tuple[NodeProfile, ...]  # in topological (fx graph) order
    created_utc: str  # ISO 8601
    notes: str = ""
    #: how much slower the whole model computed after the idle the device emulation pads its work
    #: with than back to back (the median of paired rounds); every compute time above already
    #: includes it, as they include ``slowdown`` (``profile_model(emulated_idle=...)``). Written
    #: only when not 1: readers from before it refuse it (unknown field), so they read every
    #: profile but those made with ``emulated_idle`` (``splitdnn profile --idle-factor``)
    idle_factor: float = dataclasses.field(default=1.0, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        if self.schema_version != PROFILE_SCHEMA_VERSION:
            raise ProfileMismatchError(
                f"profile schema_version {self.schema_version} is not supported: this splitdnn reads "
                f"version {PROFILE_SCHEMA_VERSION}; re-run `splitdnn profile` to regenerate it"
            )
        if not (self.slowdown >= 1.0 and math.isfinite(self.slowdown)):
            raise ProfileError(f"slowdown must be a finite factor >= 1, found {self.slowdown}")
        if not (self.idle_factor > 0 and math.isfinite(self.idle_factor)):
            raise ProfileError(f"idle_factor must be a finite factor > 0, found {self.idle_factor}")
        if self.idle_factor != 1.0 and self.slowdown == 1.0:
            raise ProfileError(
                f"idle_factor {self.idle_factor} without a device emulation (slowdown 1): only an emulated "
                f"device pads its work with idle; remove idle_factor, or set the slowdown it was measured at"
            )
        if self.batch_size < 1:
            raise ProfileError(f"batch_size must be >= 1, found {self.batch_size}")
        placeholders = sum(n.op == "placeholder" for n in self.nodes)
        if len(self.input_shapes) != placeholders or any(
            not shape or any(d < 1 for d in shape) for shape in self.input_shapes
        ):
            raise ProfileError(
                f"input_shapes must hold one shape of dimensions >= 1 per placeholder node ({placeholders}), "
                f"found {[list(t) for t in self.input_shapes]}"
            )
        names: set[str] = set()
        for node in self.nodes:
            if node.name in names:
                raise ProfileError(f"node {node.name!r} appears twice in the profile")
            for src in node.inputs:
                if src not in names:
                    raise ProfileError(
                        f"node {node.name!r} reads {src!r}, which is not an earlier node: nodes must "
                        f"be in topological order and edges must name existing nodes"
                    )
            names.add(node.name)
        outputs = [n for n in self.nodes if n.op == "output"]
        if len(outputs) != 1:
            raise ProfileError(f"a profile needs exactly one output node, found {len(outputs)}")
        if not any(n.op == "placeholder" for n in self.nodes):
            raise ProfileError("a profile needs at least one placeholder (input) node")

    def node(self, name: str) -> NodeProfile:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def compute_nodes(self) -> tuple[NodeProfile, ...]:
        return tuple(n for n in self.nodes if n.is_compute)

    def describe(self) -> str:
        """One line: what was measured where; always shows the emulation factor."""
        m = self.machine
        where = m.accelerator or m.processor or m.platform
        emu = f", emulated device slowdown x{self.slowdown:g}" if self.slowdown != 1.0 else ""
        emu += f", x{self.idle_factor:.2f} after its padding's idle" if self.idle_factor != 1.0 else ""
        return (
            f"{self.model} batch {self.batch_size} on {m.device} ({where}), {m.threads} thread(s){emu}: "
            f"{self.total.median_ms:.2f} ms fused"
        )


# --------------------------------------------------------------------------------------------------
# links, power, plans


@dataclass(frozen=True)
class Link:
    """A network hop between two tiers. Bandwidths in Mbit/s (10**6 bits per second)."""

    uplink_mbps: float
    downlink_mbps: float = 0.0  # 0 means "same as uplink"
    rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (self.uplink_mbps > 0 and math.isfinite(self.uplink_mbps)):
            raise ConfigError(f"uplink_mbps must be a positive number, found {self.uplink_mbps}")
        if not (self.downlink_mbps >= 0 and math.isfinite(self.downlink_mbps)):
            raise ConfigError(f"downlink_mbps must be >= 0 (0 = same as uplink), found {self.downlink_mbps}")
        if not (self.rtt_ms >= 0 and math.isfinite(self.rtt_ms)):
            raise ConfigError(f"rtt_ms must be >= 0, found {self.rtt_ms}")

    @property
    def effective_downlink_mbps(self) -> float:
        return self.downlink_mbps or self.uplink_mbps

    def uplink_ms(self, nbytes: float) -> float:
        """Milliseconds to send ``nbytes`` up this link (serialisation time, no RTT)."""
        return nbytes * 8.0 / (self.uplink_mbps * 1e6) * 1e3

    def downlink_ms(self, nbytes: float) -> float:
        return nbytes * 8.0 / (self.effective_downlink_mbps * 1e6) * 1e3


@dataclass(frozen=True)
class PowerModel:
    """Device power figures (inputs, as in Neurosurgeon): watts while computing, sending, waiting."""

    compute_w: float = 2.0
    radio_w: float = 1.0
    idle_w: float = 0.3

    def __post_init__(self) -> None:
        for name in ("compute_w", "radio_w", "idle_w"):
            _check_finite_nonneg(name, getattr(self, name), error=ConfigError)


@dataclass(frozen=True)
class BoundaryTensor:
    """A node's value that is produced on one tier and read on a later one."""

    node: str  # producer's fx node name
    nbytes: int  # raw size
    wire_bytes: int  # size on the wire after the codec
    src_tier: int
    dst_tier: int  # highest tier that reads it; the value is relayed through the tiers between
    codec: str = "raw"


@dataclass(frozen=True)
class CostBreakdown:
    """Predicted cost of a plan. Tuples are indexed by tier (compute) or by link (tier i -> i+1)."""

    compute_ms: tuple[float, ...]  # per tier
    encode_ms: float
    transfer_ms: tuple[float, ...]  # per link, uplink serialisation of the boundary bytes
    rtt_ms: tuple[float, ...]  # per link actually used
    decode_ms: float
    result_ms: float  # sending the model's output back down to the device
    total_ms: float  # end-to-end latency of one request
    device_energy_j: float
    throughput_rps: float  # streaming: 1 / slowest pipeline stage

    @property
    def device_ms(self) -> float:
        return self.compute_ms[0]

    @property
    def server_ms(self) -> float:
        return sum(self.compute_ms[1:])


@dataclass(frozen=True)
class Plan:
    """An assignment of every compute node to a tier (0 = device), monotone along edges."""

    model: str
    fingerprint: str
    num_tiers: int
    tiers: Mapping[str, int]  # compute node name -> tier; placeholders are always tier 0
    boundary: tuple[BoundaryTensor, ...]
    cost: CostBreakdown
    objective: str  # "latency", "energy" or "throughput"
    strategy: str  # "split", "edge-only", "cloud-only", "three-tier", ...
    exact: bool  # True when the solver proved this plan optimal for the objective
    slowdown: float = 1.0  # device emulation factor of the device profile, shown with every result

    @property
    def boundary_nodes(self) -> tuple[str, ...]:
        return tuple(b.node for b in self.boundary)

    @property
    def boundary_bytes(self) -> int:
        return sum(b.wire_bytes for b in self.boundary)

    def head(self) -> tuple[str, ...]:
        """Compute nodes on the device (tier 0)."""
        return tuple(n for n, t in self.tiers.items() if t == 0)


# --------------------------------------------------------------------------------------------------
# dict / JSON conversion


T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Convert a record (and everything inside it) to plain JSON-ready Python values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get(OMIT_DEFAULT) and getattr(obj, f.name) == f.default)
        }
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type[T], data: Any, *, path: str = "", error: type[Exception] = ProfileError) -> T:
    """Build ``cls`` from plain values, checking every field's type; unknown fields are refused."""
    return _decode(cls, data, path or cls.__name__, error)


@functools.cache
def _record_fields(tp: type) -> dict[str, tuple[Any, bool]]:
    """Each field of record type ``tp``: its type (annotations resolved) and whether it has a default.

    Resolving the annotations (``get_type_hints``) compiles each one; once per type, not per record,
    it was most of the time of loading a profile of a few thousand records.
    """
    hints = get_type_hints(tp)
    return {
        f.name: (
            hints[f.name],
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
        )
        for f in dataclasses.fields(tp)
    }


def _decode(tp: Any, value: Any, path: str, error: type[Exception]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise error(f"{path}: expected an object, found {_kind(value)}")
        fields = _record_fields(tp)  # type: ignore[arg-type]  # a dataclass type here
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise error(f"{path}: unknown field(s) {unknown}; expected only {sorted(fields)}")
        kwargs = {}
        for name, (field_type, has_default) in fields.items():
            if name not in value:
                if has_default:
                    continue
                raise error(f"{path}: missing field {name!r}")
            kwargs[name] = _decode(field_type, value[name], f"{path}.{name}", error)
        try:
            return tp(**kwargs)  # type: ignore[operator]  # tp is a dataclass type here
        except (ProfileError, ConfigError) as exc:
            raise error(f"{path}: {exc}") from exc
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise error(f"{path}: expected a list, found {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{path}[{i}]", error) for i, v in enumerate(value))
        if len(args) != len(value):
            raise error(f"{path}: expected {len(args)} items, found {len(value)}")
        return tuple(
            _decode(a, v, f"{path}[{i}]", error) for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin in (Mapping, dict, typing.Mapping) or tp is dict:
        key_t, val_t = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise error(f"{path}: expected an object, found {_kind(value)}")
        return {
            _decode(key_t, k, f"{path}<key>", error): _decode(val_t, v, f"{path}[{k!r}]", error)
            for k, v in value.items()
        }
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _decode(arg, value, path, error)
            except error:
                continue
        raise error(f"{path}: {_kind(value)} matches none of {get_args(tp)}")
    if tp is type(None):
        if value is not None:
            raise error(f"{path}: expected null, found {_kind(value)}")
        return None
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise error(f"{path}: expected true or false, found {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{path}: expected an integer, found {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{path}: expected a number, found {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer literal too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise error(f"{path}: expected a finite number, found {_kind(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise error(f"{path}: expected a string, found {_kind(value)}")
        return value
    raise TypeError(f"schema: cannot decode type {tp!r} at {path}")  # a bug in a record definition


def _kind(value: Any) -> str:
    text = json.dumps(value)[:40] if _jsonable(value) else repr(value)[:40]
    return f"{type(value).__name__} {text}"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_finite_nonneg(name: str, value: float, *, error: type[Exception] = ProfileError) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise error(f"{name} must be a finite number >= 0, found {value!r}")


# --------------------------------------------------------------------------------------------------
# profile files


def profile_to_json(profile: Profile) -> str:
    return json.dumps(to_dict(profile), indent=1, sort_keys=True) + "\n"


def profile_from_json(text: str, *, source: str = "profile") -> Profile:
    try:
        data = json.loads(text)
    except ValueError as exc:  # not JSON, or an integer literal of thousands of digits
        raise ProfileError(
            f"{source} is not valid JSON ({exc}); expected a file written by `splitdnn profile`"
        ) from exc
    except RecursionError:  # brackets nested thousands deep: no profile is
        raise ProfileError(
            f"{source} nests JSON arrays or objects too deeply to be a profile; expected a file "
            f"written by `splitdnn profile`"
        ) from None
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a JSON object, found {_kind(data)}")
    version = data.get("schema_version")
    if version == str(PROFILE_SCHEMA_VERSION):  # '1' for 1: a hand edit, not another version
        raise ProfileError(
            f"{source}: schema_version must be the integer {version}, found the string {version!r}"
        )
    if version != PROFILE_SCHEMA_VERSION:
        raise ProfileMismatchError(
            f"{source} has schema_version {version!r}, this splitdnn reads version "
            f"{PROFILE_SCHEMA_VERSION}; regenerate it with `splitdnn profile`"
        )
    return from_dict(Profile, data, path=source)


def save_profile(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(profile_to_json(profile), encoding="utf-8")


_MAX_PROFILE_BYTES = 256 << 20  # the largest profile file read (ResNet-50's is ~0.3 MB)


def _read_text_capped(path: Path, limit: int, what: str) -> str:
    """A UTF-8 text file of at most ``limit`` bytes; ValueError if longer (``/dev/zero`` ends too)."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"the {what} is larger than {limit} bytes; is it the right file?")
    return data.decode("utf-8")


def load_profile(
    path: str | Path,
    *,
    fingerprint: str | None = None,
    input_shapes: tuple[tuple[int, ...], ...] | None = None,
) -> Profile:
    """Read and validate a profile; with ``fingerprint``, refuse a profile of another model."""
    p = Path(path)
    try:
        text = _read_text_capped(p, _MAX_PROFILE_BYTES, "profile")
    except FileNotFoundError as exc:
        raise ProfileError(f"profile {str(p)!r} does not exist; create one with `splitdnn profile`") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProfileError(f"profile {str(p)!r} cannot be read: {exc}") from exc
    profile = profile_from_json(text, source=str(p))
    if fingerprint is not None and profile.fingerprint != fingerprint:
        raise ProfileMismatchError(
            f"profile {str(p)!r} is of model {profile.model!r} (fingerprint {profile.fingerprint[:12]}), "
            f"expected fingerprint {fingerprint[:12]}; profile this model with `splitdnn profile`"
        )
    if input_shapes is not None and tuple(map(tuple, input_shapes)) != profile.input_shapes:
        raise ProfileMismatchError(
            f"profile {str(p)!r} was measured for input shapes {list(profile.input_shapes)}, "
            f"expected {[list(s) for s in input_shapes]}"
        )
    return profile


def check_same_model(profiles: typing.Sequence[Profile]) -> None:
    """Refuse to combine profiles of different models or input shapes (device vs server profile)."""
    first = profiles[0]
    for other in profiles[1:]:
        if other.fingerprint != first.fingerprint:
            raise ProfileMismatchError(
                f"profiles describe different models: {first.model!r} (fingerprint "
                f"{first.fingerprint[:12]}) and {other.model!r} ({other.fingerprint[:12]}); "
                f"profile the same model on both machines"
            )
        if other.input_shapes != first.input_shapes:
            raise ProfileMismatchError(
                f"profiles of {first.model!r} were measured for different input shapes: "
                f"{list(first.input_shapes)} and {list(other.input_shapes)}"
            )
