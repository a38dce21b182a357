"""The settings of `splitdnn bench` (:class:`BenchConfig`), validated on construction; torch-free."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from splitdnn.errors import ConfigError
from splitdnn.runtime._schedule import check_downlink_factor
from splitdnn.schema import Link

__all__ = [
    "BASELINES",
    "BENCH_UPLINKS_MBPS",
    "LINKS",
    "LOSSLESS_CODECS",
    "LOSSY_CODECS",
    "STRATEGIES",
    "BenchConfig",
]

#: The DADS paper's uplinks (CAT1, 3G, 4G, Wi-Fi) plus a fast LAN, Mbit/s.
BENCH_UPLINKS_MBPS: tuple[float, ...] = (0.13, 1.1, 5.85, 18.88, 100.0)
#: The trivial baselines every speed-up is quoted against (DESIGN section 7).
BASELINES: tuple[str, ...] = ("edge-only", "cloud-raw", "cloud-lossless")
STRATEGIES: tuple[str, ...] = (*BASELINES, "splitdnn", "oracle")
LINKS = ("shaper", "netns")
#: Lossless codecs profiled for the baselines and the lossless plans (raw is always allowed).
LOSSLESS_CODECS: tuple[str, ...] = ("raw", "zstd", "shuffle+zstd")
LOSSY_CODECS: tuple[str, ...] = ("fp16+zstd", "int8+zstd", "int4+zstd")


def _positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, found {value!r}")
    return value


def _positive_floats(name: str, values: object, example: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{name} must be a non-empty list of numbers such as {example}, found {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must hold finite numbers > 0 (e.g. {example}), found {v!r}")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} has duplicates: {out}; list each value once")
    return tuple(out)


MAX_RTT_MS = 10_000.0  # the longest round trip a bench emulates


@dataclass(frozen=True)
class BenchConfig:
    """What :func:`run_bench` measures and how; validated on construction (ConfigError)."""

    models: tuple[str, ...] = ("resnet18",)  # zoo names
    uplinks_mbps: tuple[float, ...] = BENCH_UPLINKS_MBPS  # Mbit/s
    downlink_factor: float | None = None  # downlink = this x the uplink; None: the same as the uplink
    slowdowns: tuple[float, ...] = (8.0,)  # device emulation factors (>= 1): sleep pads device compute
    requests: int = 5  # timed requests per strategy and cell
    warmup: int = 1  # untimed requests first
    rtt_ms: float = 20.0  # added by the application (the shaper; netem is not available)
    input_shape: tuple[int, ...] | None = None  # batch first, for every model (None: each zoo input)
    max_error: float = 0.0  # codec budget of the splitdnn plan (rel MSE; 0 = lossless)
    device_threads: int = 1  # torch threads of the emulated device
    server_threads: int | None = None  # None: torch's default
    profile_repeats: int = 3  # timed runs per profiling measurement
    budget_s: float = 8.0  # seconds one strategy (or one oracle cut) may take in one cell
    oracle_prune: float = 1.5  # oracle runs cuts predicted within this factor of the best prediction
    oracle_max_cuts: int = 12  # and at most this many of them (best predicted first)
    dag_points: int = 25  # bandwidths (log-spaced, 0.1-1000 Mbit/s) searched for DAG cuts
    link: str = "shaper"  # "shaper" (in-process token bucket) or "netns" (veth + tbf, root)
    # before each cell, re-time the whole model on device and server and rescale both profiles to it
    refresh_runs: int = 5  # timed runs of each (0: never refresh; the profiles of the run's start)
    refresh_pool: int = 3  # factors: medians over the samples of this many recent refreshes (DriftTracker)
    # the splitdnn client prices the server at its measured pace (SplitClient(server_pace=)); off by
    # default: a cell's server serves nothing else, and its predictions then test the cost model alone
    # (a busy server is scripts/bench_server_pace.py's)
    server_pace: bool = False

    def __post_init__(self) -> None:
        from splitdnn.models import ZOO

        if isinstance(self.models, str) or not self.models:
            raise ConfigError(f"models must be a non-empty list of zoo names, found {self.models!r}")
        unknown = [m for m in self.models if m not in ZOO]
        if unknown:
            raise ConfigError(
                f"bench runs zoo models; expected names among {', '.join(sorted(ZOO))}, found {unknown}"
            )
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models has duplicates: {list(self.models)}; list each model once")
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(
            self, "uplinks_mbps", _positive_floats("uplinks_mbps", self.uplinks_mbps, "(0.13, 5.85)")
        )
        slowdowns = _positive_floats("slowdowns", self.slowdowns, "(1, 8)")
        if any(s < 1 for s in slowdowns):
            raise ConfigError(f"slowdowns must be factors >= 1 (1 = no emulation), found {list(slowdowns)}")
        object.__setattr__(self, "slowdowns", slowdowns)
        _positive_int("requests", self.requests)
        _positive_int("warmup", self.warmup, minimum=0)
        _positive_int("device_threads", self.device_threads)
        _positive_int("profile_repeats", self.profile_repeats)
        _positive_int("oracle_max_cuts", self.oracle_max_cuts)
        _positive_int("dag_points", self.dag_points, minimum=2)
        _positive_int("refresh_runs", self.refresh_runs, minimum=0)
        _positive_int("refresh_pool", self.refresh_pool)
        if not isinstance(self.server_pace, bool):
            raise ConfigError(f"server_pace must be True or False, found {self.server_pace!r}")
        if self.server_threads is not None:
            _positive_int("server_threads", self.server_threads)
        for name, value, low in (
            ("rtt_ms", self.rtt_ms, 0.0),
            ("max_error", self.max_error, 0.0),
            ("budget_s", self.budget_s, 1e-9),
            ("oracle_prune", self.oracle_prune, 1.0),
        ):
            ok = not isinstance(value, bool) and isinstance(value, (int, float))
            if not ok or not (value >= low) or (name != "oracle_prune" and not math.isfinite(value)):
                raise ConfigError(f"{name} must be a number >= {low:g}, found {value!r}")
        if self.downlink_factor is not None:
            check_downlink_factor(self.downlink_factor)
        if self.rtt_ms > MAX_RTT_MS:  # a typo (1e9) made every request wait for ever, silently
            raise ConfigError(
                f"rtt_ms must be at most {MAX_RTT_MS:g} (10 s; a geostationary satellite is ~600), found "
                f"{self.rtt_ms!r}"
            )
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if len(shape) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
                raise ConfigError(
                    f"input_shape must be batch first with positive integer sizes, e.g. (1, 3, 64, 64), "
                    f"found {self.input_shape!r}"
                )
            object.__setattr__(self, "input_shape", shape)
        if self.link not in LINKS:
            raise ConfigError(f"link must be one of {', '.join(LINKS)}, found {self.link!r}")

    @property
    def codecs(self) -> tuple[str, ...]:
        """The codecs profiled: lossless ones, plus the lossy ones when there is an error budget."""
        return LOSSLESS_CODECS + (LOSSY_CODECS if self.max_error > 0 else ())

    def downlink_of(self, uplink_mbps: float) -> float:
        """The downlink rate that goes with ``uplink_mbps``."""
        return uplink_mbps if self.downlink_factor is None else uplink_mbps * self.downlink_factor

    @property
    def downlink_text(self) -> str:
        """How the downlink follows the uplink, as the results say it."""
        return "same as uplink" if self.downlink_factor is None else f"{self.downlink_factor:g} x uplink"

    def link_at(self, uplink_mbps: float) -> Link:
        """The nominal link of a cell at ``uplink_mbps``: its downlink and the RTT."""
        return Link(uplink_mbps, downlink_mbps=self.downlink_of(uplink_mbps), rtt_ms=self.rtt_ms)

    def shape_of(self, model: str) -> tuple[int, ...]:
        from splitdnn.models import default_input_shape

        return self.input_shape if self.input_shape is not None else default_input_shape(model)
