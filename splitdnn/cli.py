"""The `splitdnn` command line: a thin layer of argument parsing over the library.

Every subcommand is ``main(argv) -> exit code``; errors splitdnn raises on purpose print one line on
stderr (``splitdnn: error: ...``) and exit 1, argument errors exit 2, and no traceback is shown.
Torch is imported only by the subcommands that need it (``profile``, and ``serve``, ``run`` and
``demo`` in :mod:`splitdnn._cli_runtime`, which alone import grpc), so ``solve`` and ``sweep`` start
fast and work on a machine without torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from splitdnn._cli_runtime import MAX_THREADS, check_output_file
from splitdnn.calibrate import CALIBRATION_METHODS
from splitdnn.errors import ConfigError, SplitDNNError
from splitdnn.schema import Link, PowerModel, load_profile

__all__ = ["main"]

PROG = "splitdnn"


# --------------------------------------------------------------------------------------------------
# argument helpers


def _shape(text: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a shape such as 1,3,224,224 (batch first), found {text!r}"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dimensions such as 1,3,224,224, found {text!r}")
    return dims


_MAX_NUMBER = 1e9  # no option means anything above this (Mbit/s, ms, MiB, W, a slowdown, ...)


def _number(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not ((value >= 0 if allow_zero else value > 0) and value <= _MAX_NUMBER):
        wanted = "a number >= 0" if allow_zero else "a positive number"
        raise argparse.ArgumentTypeError(f"expected {wanted} up to {_MAX_NUMBER:g}, found {text!r}")
    return value


def _count(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in lo..hi."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, found {text!r}")
        return value

    return parse


_threads = _count(1, MAX_THREADS)


def _positive(text: str) -> float:
    return _number(text, allow_zero=False)


def _nonneg(text: str) -> float:
    return _number(text, allow_zero=True)


_MIN_MBPS = 1e-6  # 1 bit/s: slower gives times no float holds (--json printed Infinity)


def _mbps(text: str) -> float:
    value = _positive(text)
    if value < _MIN_MBPS:
        raise argparse.ArgumentTypeError(
            f"expected a bandwidth of at least {_MIN_MBPS:g} Mbit/s, found {text!r}"
        )
    return value


def _mbps_or_zero(text: str) -> float:
    return 0.0 if _nonneg(text) == 0 else _mbps(text)


def _json_text(value: Any) -> str:
    """Strict JSON: a non-finite number (a zero-time profile's throughput) as null, never Infinity."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=1, sort_keys=True, allow_nan=False)


def _range(text: str) -> tuple[float, float]:
    lo_text, sep, hi_text = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"expected a range LOW:HIGH in Mbit/s such as 0.1:1000, found {text!r}"
        )
    lo, hi = _mbps(lo_text), _mbps(hi_text)
    if hi < lo:
        raise argparse.ArgumentTypeError(f"range {text!r} ends below its start; write LOW:HIGH")
    return lo, hi


def _power(text: str) -> PowerModel:
    try:
        compute, radio, idle = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected COMPUTE_W,RADIO_W,IDLE_W such as 2.0,1.0,0.3, found {text!r}"
        ) from None
    try:
        return PowerModel(compute, radio, idle)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-profile", required=True, metavar="FILE", help="profile measured on the device")
    p.add_argument("--server-profile", required=True, metavar="FILE", help="profile measured on the server")
    p.add_argument(
        "--edge-profile",
        metavar="FILE",
        help="profile of an edge server between device and cloud: makes a three-tier plan",
    )
    p.add_argument("--rtt-ms", type=_nonneg, default=0.0, help="round-trip time of the uplink (ms)")
    p.add_argument("--downlink-mbps", type=_mbps_or_zero, default=0.0, help="downlink (0 = same as uplink)")
    p.add_argument(
        "--backhaul-mbps",
        type=_mbps,
        default=None,
        help="edge server -> cloud bandwidth for three-tier plans (default 1000; needs --edge-profile)",
    )
    p.add_argument("--backhaul-rtt-ms", type=_nonneg, default=None, help="(default 0; needs --edge-profile)")
    p.add_argument("--objective", choices=("latency", "energy", "throughput"), default="latency")
    p.add_argument(
        "--power",
        type=_power,
        default=PowerModel(),
        metavar="C,R,I",
        help="device power in watts while computing, sending and idle (default 2.0,1.0,0.3)",
    )
    p.add_argument(
        "--max-device-memory-mb",
        type=_positive,
        metavar="MiB",
        help="cap on the head's memory on the device, in MiB (2**20 bytes)",
    )
    p.add_argument(
        "--keep-input-on-device",
        action="store_true",
        help="privacy floor: the raw input never leaves the device",
    )
    p.add_argument(
        "--device-min-nodes",
        type=int,
        default=0,
        metavar="K",
        help="privacy floor: the first K compute nodes run on the device",
    )
    p.add_argument(
        "--codecs",
        metavar="LIST",
        help="codecs the plan may use for boundary tensors, e.g. zstd,int8+zstd (default: every codec "
        "measured in the profiles; 'raw' or 'none' sends raw tensors, the plans without codecs); a lossy "
        "codec named here needs a --max-error that admits it",
    )
    p.add_argument(
        "--max-error",
        type=_nonneg,
        default=None,
        metavar="X",
        help="error budget: only codecs whose measured error (--error-metric) is <= X; the default 0 "
        "allows lossless codecs only (no error budget with --max-accuracy-loss), e.g. 1e-3 (relative "
        "MSE) admits int8",
    )
    p.add_argument(
        "--error-metric",
        choices=("rel_mse", "max_abs", "cosine"),
        default="rel_mse",
        help="what --max-error bounds: relative MSE (default), max abs error, or 1 - cosine similarity",
    )
    p.add_argument(
        "--accuracy-table",
        metavar="FILE",
        help="measured top-1 loss per cut node and codec (the JSON of scripts/bench_accuracy.py) for "
        "--max-accuracy-loss; it must be measured on the profiles' model",
    )
    p.add_argument(
        "--max-accuracy-loss",
        type=_nonneg,
        metavar="POINTS",
        help="accuracy-loss budget: a lossy codec may carry a boundary tensor only if its measured top-1 "
        "loss at that node (worst over the table's seeds) is <= POINTS percentage points",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


# --------------------------------------------------------------------------------------------------
# subcommands


def _load_profiles(args: argparse.Namespace) -> list:
    from splitdnn import codec
    from splitdnn.schema import check_same_model

    paths = [args.device_profile] + ([args.edge_profile] if args.edge_profile else []) + [args.server_profile]
    profiles = [load_profile(p) for p in paths]
    check_same_model(profiles)
    codec.check_profile_codecs(profiles)
    return profiles


def _links(args: argparse.Namespace, uplink_mbps: float) -> list[Link]:
    links = [Link(uplink_mbps, args.downlink_mbps, args.rtt_ms)]
    if args.edge_profile:
        mbps = 1000.0 if args.backhaul_mbps is None else args.backhaul_mbps
        links.append(Link(mbps, 0.0, args.backhaul_rtt_ms or 0.0))
    elif args.backhaul_mbps is not None or args.backhaul_rtt_ms is not None:  # silently unused before
        raise ConfigError(
            "--backhaul-mbps and --backhaul-rtt-ms describe the edge server's link to the cloud: "
            "give --edge-profile too (a three-tier plan), or leave them out"
        )
    return links


def _constraints(args: argparse.Namespace):  # -> solver.Constraints
    from splitdnn.solver import Constraints

    if args.device_min_nodes < 0:
        raise ConfigError(f"--device-min-nodes must be >= 0, found {args.device_min_nodes}")
    cap = None if args.max_device_memory_mb is None else int(args.max_device_memory_mb * 2**20)
    return Constraints(
        device_memory_bytes=cap,
        keep_input_on_device=args.keep_input_on_device,
        device_min_nodes=args.device_min_nodes,
    )


def _max_error(args: argparse.Namespace) -> float | None:
    """--max-error as given; unset: 0 (lossless only), or no error budget under an accuracy budget."""
    if args.max_error is not None:
        return float(args.max_error)
    return None if args.max_accuracy_loss is not None else 0.0


def _codec_options(args: argparse.Namespace, profiles: Sequence) -> dict:
    """``allowed``, ``max_error``, ``metric`` (and the accuracy budget) for
    :func:`splitdnn.solver.codec_tensor_cost`, or ``{}`` when no codec can be used (raw tensors: the
    fast path, exactly the plans without codecs)."""
    from splitdnn.solver import load_accuracy_table, measured_codecs, unusable_codecs

    if (args.accuracy_table is None) != (args.max_accuracy_loss is None):
        raise ConfigError(
            "--accuracy-table and --max-accuracy-loss go together: the table of measured top-1 loss "
            "(scripts/bench_accuracy.py --json) and the budget in points"
        )
    measured = measured_codecs(profiles)
    if args.codecs is None:
        allowed = tuple(c for c in measured if c != "raw")
    else:
        names = [c.strip() for c in args.codecs.split(",") if c.strip()]
        if not names:
            raise ConfigError("--codecs needs a list such as zstd,int8+zstd (or raw / none)")
        if "none" in names and len(names) > 1:
            raise ConfigError(f"--codecs {args.codecs}: 'none' means raw tensors only; give it alone")
        allowed = tuple(c for c in names if c not in ("raw", "none"))
        unusable = unusable_codecs(profiles, allowed, max_error=_max_error(args), metric=args.error_metric)
        if unusable:
            zero = (
                " (unset, --max-error is 0: lossless codecs only)"
                if args.max_error is None and args.max_accuracy_loss is None
                else ""
            )
            raise ConfigError(
                f"--codecs: {'; '.join(unusable)}{zero}; no plan could use such a codec. Measured in the "
                f"profiles: {', '.join(measured) or 'none'} (`splitdnn profile --codecs ...` measures "
                f"more); raise --max-error (--error-metric {args.error_metric}) for a lossy one, or leave "
                f"it out of --codecs"
            )
    accuracy = {}
    if args.accuracy_table is not None:
        table = load_accuracy_table(args.accuracy_table)
        table.check_profiles(profiles)
        accuracy = {"accuracy": table, "max_accuracy_loss": args.max_accuracy_loss}
    if not allowed:
        return {}
    return {"allowed": allowed, "max_error": _max_error(args), "metric": args.error_metric, **accuracy}


def _codec_notes(plan, profiles: Sequence, links: Sequence[Link], opts: dict) -> dict[str, str]:
    """Why each boundary tensor is sent with its codec, one phrase per tensor."""
    from splitdnn.report import format_bytes
    from splitdnn.solver import TensorHop, explain_codec

    label = {"rel_mse": "rel MSE", "max_abs": "max abs error", "cosine": "1 - cosine"}
    notes = {}
    for b in plan.boundary:
        if not opts:
            notes[b.node] = "raw: no codec allowed or measured"
            continue
        i = b.src_tier
        hop = TensorHop(b.node, b.nbytes, i, links[i], profiles[i], profiles[i + 1])
        why = explain_codec(hop, **opts)
        if why.codec == "raw":
            measured = bool(profiles[i].node(b.node).codecs)
            notes[b.node] = (
                f"raw: no allowed codec within the budget is faster ({why.candidates - 1} compared)"
                if measured
                else "raw: no codec measured on this tensor"
            )
            continue
        budget = "no error budget" if why.max_error is None else f"within budget {why.max_error:.3g}"
        if why.max_accuracy_loss_pts is not None:
            loss = "lossless" if why.accuracy_loss_pts is None else f"{why.accuracy_loss_pts:+.2f} pts"
            budget += (
                f", chosen under the accuracy budget {why.max_accuracy_loss_pts:g} pts "
                f"(measured top-1 loss here: {loss})"
            )
        notes[b.node] = (
            f"{why.codec}: {format_bytes(why.wire_bytes)}, {label[why.metric]} {why.error:.2g} {budget}; "
            f"cheapest of {why.candidates} (encode + transfer + decode {why.cost_ms:.2f} ms)"
        )
    return notes


def _accuracy_json(plan, opts: dict) -> dict | None:
    """The accuracy budget and the measured loss of each boundary tensor's codec, for --json."""
    table = opts.get("accuracy")
    if table is None:
        return None
    return {
        "table": table.source,
        "model": table.model,
        "fingerprint": table.fingerprint,
        "seeds": table.seeds,
        "max_accuracy_loss_pts": opts["max_accuracy_loss"],
        "loss_pts": {b.node: _loss(table, b.node, b.codec) for b in plan.boundary},
    }


def _loss(table, node: str, spec: str) -> float | None:
    """Measured top-1 loss of ``spec`` at ``node``; 0 for a lossless codec the table lacks."""
    from splitdnn.solver import is_lossless

    loss = table.loss(node, spec)
    return 0.0 if loss is None and is_lossless(spec) else loss


def cmd_solve(args: argparse.Namespace) -> int:
    from splitdnn import report, solver

    profiles = _load_profiles(args)
    links = _links(args, args.uplink_mbps)
    opts = _codec_options(args, profiles)
    cost = solver.codec_tensor_cost(profiles, **opts) if opts else None
    kw = dict(objective=args.objective, power=args.power, constraints=_constraints(args), tensor_cost=cost)
    plan = solver.solve(profiles, links, **kw)
    base = dict(objective=args.objective, power=args.power, tensor_cost=cost)
    edge = solver.edge_only(profiles, links, **base)
    cloud = solver.cloud_only(profiles, links, **base)
    notes = _codec_notes(plan, profiles, links, opts)
    if args.json:
        out = report.plan_json(plan, edge, cloud)
        out["profiles"] = [p.describe() for p in profiles]
        out["codec_notes"] = notes
        out["max_error"] = _max_error(args)
        out["error_metric"] = args.error_metric
        out["accuracy_budget"] = _accuracy_json(plan, opts)
        print(_json_text(out))
    else:
        print(report.format_plan(plan, edge, cloud, profiles, codec_notes=notes))
    return 0


def _sweep_values(lo: float, hi: float, points: int, log: bool) -> list[float]:
    if points < 1:
        raise ConfigError(f"--points must be >= 1, found {points}")
    if points == 1 or lo == hi:
        return [lo]
    if log:
        a, b = math.log10(lo), math.log10(hi)
        return [10 ** (a + (b - a) * i / (points - 1)) for i in range(points)]
    return [lo + (hi - lo) * i / (points - 1) for i in range(points)]


def cmd_sweep(args: argparse.Namespace) -> int:
    from splitdnn import report, solver

    if args.plot is not None:
        check_output_file(args.plot, "--plot", (".png", ".pdf", ".svg"))
    profiles = _load_profiles(args)
    lo, hi = args.uplink_mbps
    values = _sweep_values(lo, hi, args.points, not args.linear)
    opts = _codec_options(args, profiles)
    points = solver.sweep(
        profiles,
        values,
        rtt_ms=args.rtt_ms,
        downlink_mbps=args.downlink_mbps,
        objective=args.objective,
        power=args.power,
        constraints=_constraints(args),
        upper_links=_links(args, values[0])[1:],
        tensor_cost=solver.codec_tensor_cost(profiles, **opts) if opts else None,
    )
    if args.plot:
        from splitdnn.plots import plot_sweep

        plot_sweep(points, args.plot, title=profiles[0].describe())
    if args.json:
        out = report.sweep_json(points)
        out["profiles"] = [p.describe() for p in profiles]
        out["max_error"] = _max_error(args)
        out["error_metric"] = args.error_metric
        if opts.get("accuracy") is not None:
            out["accuracy_budget"] = [_accuracy_json(p.plan, opts) for p in points]
        print(_json_text(out))
    else:
        for p in profiles:
            print(f"profile: {p.describe()}")
        if opts.get("accuracy") is not None:
            print(
                f"codecs chosen under the accuracy budget {opts['max_accuracy_loss']:g} top-1 points "
                f"(measured in {opts['accuracy'].source})"
            )
        print(report.sweep_table(points))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _input_shape(model_spec: str, given: Sequence[tuple[int, ...]] | None, batch: int | None):
    from splitdnn.models import ZOO, default_input_shape

    if given:
        shapes = list(given)
        if batch is not None:
            shapes = [(batch, *s[1:]) for s in shapes]
        return shapes
    if model_spec in ZOO:
        return [default_input_shape(model_spec, batch or 1)]
    raise ConfigError(
        f"model {model_spec!r} is not in the zoo, so its input shape is unknown; "
        f"pass --input-shape, e.g. --input-shape 1,3,224,224"
    )


def _trace(args: argparse.Namespace):
    from splitdnn.graph import example_inputs, trace
    from splitdnn.models import load_model, parse_kwargs

    model, name = load_model(args.model, kwargs=parse_kwargs(args.kwarg or []), weights=args.weights)
    shapes = _input_shape(args.model, args.input_shape, args.batch_size)
    return trace(model, example_inputs(model, shapes), name=name)


def cmd_profile(args: argparse.Namespace) -> int:
    from splitdnn.codec import parse_codec_list
    from splitdnn.profiler import profile_model
    from splitdnn.schema import save_profile

    if not args.malloc_defaults:  # measure in the allocator regime `serve` and `run` compute in
        from splitdnn.runtime.memory import keep_freed_memory

        keep_freed_memory()
    out = check_output_file(args.out, "--out")  # before minutes of profiling, not after
    if args.idle_factor and args.slowdown == 1.0:
        raise ConfigError(
            "--idle-factor measures an emulated device's slowdown after the idle its padding leaves; "
            "without an emulation nothing is padded: pass --slowdown F > 1 with it, or leave it out"
        )
    traced = _trace(args)
    prof = profile_model(
        traced,
        device=args.device,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        slowdown=args.slowdown,
        calibration=args.calibration,
        codecs=parse_codec_list(args.codecs) if args.codecs is not None else None,
        codec_nodes=args.codec_nodes,
        progress=not args.quiet,
        emulated_idle=args.idle_factor,
    )
    save_profile(prof, out)
    cal = prof.calibration
    print(prof.describe())
    print(
        f"{len(prof.compute_nodes)} compute nodes; calibration ({cal.method}, {cal.segments} segments): "
        f"head/tail MAPE {cal.mape_pct:.1f}% over {cal.cuts_checked} held-out cuts; written to {out}"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from splitdnn.models import ZOO
    from splitdnn.report import format_table

    rows = [
        [name, e.kind, "x".join(map(str, e.input_shape)), e.description] for name, e in sorted(ZOO.items())
    ]
    print(format_table(["name", "graph", "input", "description"], rows))
    return 0


# --------------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Split computing: profile a network layer by layer, solve the optimal device/server cut.",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="log records shown on stderr (default warning; info: also what a server does, such as "
        "serving and profiling at start; debug: also every request it refuses, with status and reason, "
        "gRPC's own log lines (TLS handshakes, connections), and tracebacks of unexpected errors)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("models", help="list the built-in model zoo")
    p.set_defaults(func=cmd_models)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--batch-size",
            type=_count(1, 1 << 20),
            metavar="B",
            help="batch size (overrides the shape's first dim)",
        )
        p.add_argument("--threads", type=_threads, metavar="N", help="torch intra-op threads while profiling")
        p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default 10)")
        p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("profile", help="measure a model node by node on this machine")
    p.add_argument("model", help="zoo name, package.module:callable, or torchvision:NAME")
    p.add_argument(
        "--input-shape",
        type=_shape,
        action="append",
        metavar="SHAPE",
        help="input shape, batch first (1,3,224,224); repeat for several inputs",
    )
    p.add_argument("--kwarg", action="append", metavar="KEY=VALUE", help="keyword argument for the model")
    p.add_argument("--weights", metavar="FILE", help="weights: .safetensors or a torch state_dict file")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--slowdown",
        type=float,
        default=1.0,
        metavar="F",
        help="device emulation: multiply every time by F >= 1 (recorded in the profile)",
    )
    p.add_argument(
        "--idle-factor",
        action="store_true",
        help="with --slowdown: also measure how much slower the model runs after the idle the "
        "emulation pads its work with, and price every compute time so (the profile's idle_factor; "
        "off by default: docs/benchmarks.md)",
    )
    p.add_argument(
        "--calibration",
        choices=CALIBRATION_METHODS,
        default=CALIBRATION_METHODS[0],
        help="how per-node times are fitted to measured segments (default %(default)s)",
    )
    p.add_argument(
        "--codecs",
        metavar="LIST",
        help="codecs to measure on each candidate boundary tensor (default raw,zstd,fp16+zstd,"
        "int8+zstd,int4+zstd; 'none' measures none)",
    )
    p.add_argument(
        "--codec-nodes",
        choices=("all", "chain"),
        default="all",
        help="which float32 values get codec measurements: the inputs and every compute node (all, "
        "default) or the inputs and the chain cuts (chain)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the profile (JSON)")
    model_args(p)
    from splitdnn._cli_runtime import malloc_arg

    malloc_arg(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("solve", help="the optimal plan for one link, beside edge-only and cloud-only")
    _add_plan_options(p)
    p.add_argument("--uplink-mbps", type=_mbps, required=True, metavar="X")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("sweep", help="the optimal plan and the baselines over a range of bandwidths")
    _add_plan_options(p)
    p.add_argument("--uplink-mbps", type=_range, required=True, metavar="LOW:HIGH")
    p.add_argument(
        "--points", type=_count(1, 10_000), default=13,
        help="bandwidths in the range (default 13; 1: LOW alone)",
    )  # fmt: skip
    p.add_argument("--linear", action="store_true", help="space points linearly (default: logarithmically)")
    p.add_argument("--plot", metavar="PNG", help="plot latency against bandwidth (needs matplotlib)")
    p.set_defaults(func=cmd_sweep)

    from splitdnn import _cli_runtime

    _cli_runtime.add_commands(
        sub, positive=_positive, nonneg=_nonneg, shape=_shape, count=_count, uplinks=report_uplinks()
    )
    return parser


def report_uplinks() -> tuple[float, ...]:
    from splitdnn.report import STANDARD_UPLINKS_MBPS

    return STANDARD_UPLINKS_MBPS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level != "warning":  # else as without the flag: warnings and errors, message only
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    if args.log_level != "debug":  # gRPC's own log lines; splitdnn says what went wrong itself
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        return int(args.func(args))
    except SplitDNNError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (Exception, SystemExit) as exc:  # an input splitdnn does not check yet, or a bug: one line
        if isinstance(exc, SystemExit) and (exc.code is None or isinstance(exc.code, int)):
            raise  # argparse's usage errors and explicit exits keep their status
        if args.log_level == "debug":
            raise
        what = " ".join(str(exc).split())[:300] or "no message"
        print(
            f"{PROG}: error: unexpected {type(exc).__name__}: {what} (an input splitdnn does not check "
            f"yet, or a bug; `splitdnn --log-level debug ...` shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
