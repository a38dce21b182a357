"""The runtime subcommands of the `splitdnn` command line: ``serve``, ``run``, ``demo`` and ``bench``.

Kept apart from :mod:`splitdnn.cli` so the planning commands never import grpc. Each handler only
parses arguments into the library's own objects (:class:`~splitdnn.runtime.server.ServerConfig`,
:class:`~splitdnn.runtime.client.SplitClient`, :func:`~splitdnn.runtime.demo.run_demo`) and prints.

Secrets never go on the command line (where ``ps`` shows them): the bearer token comes from
``--token-file`` or the ``SPLITDNN_TOKEN`` environment variable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from splitdnn.errors import ConfigError
from splitdnn.schema import load_profile

TOKEN_ENV = "SPLITDNN_TOKEN"

Parse = Callable[[str], Any]
MAX_THREADS = 1024  # torch's own limit is lower than it checks for: 100000 threads segfault


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token from ``--token-file`` (first line) or ``$SPLITDNN_TOKEN``; None for neither."""
    if args.token_file:
        try:
            with Path(args.token_file).open("rb") as f:
                text = f.read(1 << 16).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the token file {args.token_file!r}: {getattr(exc, 'strerror', None) or exc}; "
                "give a readable text file holding the token on its first line"
            ) from exc
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ConfigError(f"the token file {args.token_file!r} is empty; put the token on its first line")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def check_output_file(text: str, what: str, suffixes: Sequence[str] = ()) -> Path:
    """``text`` as a file to write, checked before any work is done (ConfigError otherwise)."""
    path = Path(text)
    if not text or path.is_dir():
        raise ConfigError(f"{what} must be a file path, found {text!r}; name a file to write")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {what} {text!r}: folder {str(path.parent)!r} does not exist")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(
            f"{what} {text!r} must end in {' or '.join(suffixes)} (the format follows the name)"
        )
    return path


def _name_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=FILE (e.g. resnet18=profiles/srv.json), found {text!r}"
        )
    return name, path


def _security_args(p: argparse.ArgumentParser, *, server: bool) -> None:
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"bearer token on the first line of FILE (default: ${TOKEN_ENV} if set; none otherwise)",
    )
    if server:
        p.add_argument("--tls-cert", metavar="PEM", help="server certificate chain: serve TLS")
        p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
        p.add_argument("--tls-client-ca", metavar="PEM", help="CA of client certificates: require mutual TLS")
    else:
        p.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
        p.add_argument(
            "--tls-ca", metavar="PEM", help="CA that signed the server's certificate (implies --tls)"
        )
        p.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS")
        p.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key")
        p.add_argument("--tls-server-name", metavar="NAME", help="expected name in the server's certificate")


# --------------------------------------------------------------------------------------------------
# serve


def malloc_arg(p: argparse.ArgumentParser) -> None:
    """``--malloc-defaults``: the opt-out of :func:`splitdnn.runtime.memory.keep_freed_memory`."""
    p.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (default: keep freed tensor-sized buffers "
        "mapped for reuse, which saves page faults on every MB-sized request; see splitdnn.runtime.memory)",
    )


def _per_model(flag: str, pairs: Sequence[tuple[str, str]], models: Sequence[str]) -> dict[str, str]:
    """``MODEL=FILE`` pairs as a dict, each naming a served model once."""
    out: dict[str, str] = {}
    for name, path in pairs:
        if name not in models:
            raise ConfigError(f"{flag} names {name!r}, which is not among the served models {list(models)}")
        if name in out:
            raise ConfigError(f"{flag} gives {name!r} twice ({out[name]!r} and {path!r}); keep one")
        out[name] = path
    return out


def _serve_shapes(
    items: Sequence[tuple[str, tuple[int, ...]]], models: Sequence[str]
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``--input-shape [MODEL=]SHAPE`` items (MODEL "" when not given) as each served model's example
    input shapes, one per input in order. One without MODEL= is for every model given none with it."""
    named: dict[str, list[tuple[int, ...]]] = {}
    plain: list[tuple[int, ...]] = []
    for model, dims in items:
        if model and model not in models:
            raise ConfigError(
                f"--input-shape {model}={','.join(map(str, dims))}: {model!r} is not among the served "
                f"models {list(models)}"
            )
        (named.setdefault(model, []) if model else plain).append(dims)
    out = {m: tuple(v) for m, v in named.items()}
    if plain:
        out.update({m: tuple(plain) for m in models if m not in named})
    return out


def _serve_kwargs(items: Sequence[str], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--kwarg [MODEL=]KEY=VALUE`` items as each served model's builder keyword arguments.

    The MODEL prefix is recognised by being one of the served models; without it, the item is for the
    only served model (with several, the prefix is required).
    """
    from splitdnn.models import parse_kwargs

    per_model: dict[str, list[str]] = {}
    for item in items:
        model, sep, rest = item.partition("=")
        if sep and model in models:
            per_model.setdefault(model, []).append(rest)
        elif len(models) == 1:
            per_model.setdefault(models[0], []).append(item)
        else:
            raise ConfigError(
                f"--kwarg {item!r}: with several models served, name the model it is for, "
                f"MODEL=KEY=VALUE with MODEL one of {list(models)}"
            )
    return {m: parse_kwargs(kv) for m, kv in per_model.items()}


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the tail of every named model until SIGTERM / SIGINT (graceful: in-flight requests finish)."""
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

    duplicates = sorted({m for m in args.models if args.models.count(m) > 1})
    if duplicates:
        raise ConfigError(f"{duplicates} named more than once; serve each model once")
    weights = _per_model("--weights", args.weights or [], args.models)
    profiles = {
        name: load_profile(path)
        for name, path in _per_model("--profile", args.profile or [], args.models).items()
    }
    shapes = _serve_shapes(args.input_shape or [], args.models)
    kwargs = _serve_kwargs(args.kwarg or [], args.models)
    specs = tuple(
        ModelSpec(m, weights=weights.get(m), kwargs=kwargs.get(m, {}), input_shapes=shapes.get(m))
        if (m in weights or m in kwargs or m in shapes)
        else m
        for m in args.models
    )
    config = ServerConfig(
        models=specs,
        host=args.host,
        port=args.port,
        device=args.device,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_message_bytes=int(args.max_message_mib * (1 << 20)),
        max_concurrency=args.max_concurrency,
        token=_token(args),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        profiles=profiles,
        grace_s=args.grace_s,
        drain_s=args.drain_s,
        receive_timeout_s=args.receive_timeout_s,
        max_receiving_per_peer=args.max_receiving_per_peer,
        max_streams=args.max_streams,
        stream_idle_timeout_s=args.stream_idle_timeout_s,
        max_streams_per_peer=args.max_streams_per_peer,
        max_decoded_bytes=int(args.max_decoded_mib * (1 << 20)),
        max_inflight_bytes=None if args.max_inflight_mib is None else int(args.max_inflight_mib * (1 << 20)),
        tail_cache_size=args.tail_cache_size,
        keep_freed_memory=not args.malloc_defaults,
        profile_at_start=args.self_profile,
    )
    unprofiled = [m for m in args.models if m not in profiles]
    if args.self_profile and unprofiled:
        print(
            f"profiling {', '.join(unprofiled)} on {args.device} before serving, so that clients plan with "
            f"this server's speed (seconds per model; --profile MODEL=FILE or --no-self-profile skips it)",
            file=sys.stderr,
            flush=True,
        )
    with TailServer(config) as server:
        secure = "TLS" if args.tls_cert else "plaintext"
        if args.tls_client_ca:
            secure = "mutual TLS"
        auth = "bearer token required" if config.token else "no token"
        print(
            f"serving {', '.join(server.model_names)} on {server.address} ({secure}, {auth}, device "
            f"{args.device}, batches up to {args.max_batch_size} within {args.max_queue_delay_ms:g} ms)",
            flush=True,
        )
        if server.metrics_address:
            print(f"metrics: http://{server.metrics_address}/metrics", flush=True)
        for name in server.model_names:
            prof = server.profile(name)
            where = "given" if name in profiles else "measured at start"
            print(f"profile of {name}: {prof.describe()} ({where})" if prof else
                  f"profile of {name}: none; clients estimate this server's speed", flush=True)  # fmt: skip
        for name, why in server.never_batched().items():  # none when max_batch_size is 1: not checked
            print(f"{name}: requests never batched together: {why}", flush=True)
        server.serve_forever()
    print("stopped", flush=True)
    _exit_past_cancelled_requests()
    return 0


def _exit_past_cancelled_requests() -> None:
    """Exit now if requests cancelled at the end of the grace period are still computing.

    gRPC cancels them for their clients, but their handler threads run the model to the end, and
    Python joins those threads at exit: a stopped server would outlive its grace by a model's run (a
    large batch: seconds). Nothing is left to answer, so the process exits without waiting.
    """
    import logging
    import threading
    import time

    from splitdnn.runtime.server import RPC_THREAD_PREFIX

    end = time.monotonic() + 0.5  # idle handler threads end at once: give them a moment
    busy = [t for t in threading.enumerate() if t.name.startswith(RPC_THREAD_PREFIX)]
    for t in busy:
        t.join(max(0.0, end - time.monotonic()))
    busy = [t for t in busy if t.is_alive()]
    if busy:
        print(
            f"{len(busy)} request(s) cancelled at the end of the grace period still computing: not "
            f"waiting for them",
            file=sys.stderr,
            flush=True,
        )
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)


# --------------------------------------------------------------------------------------------------
# run


def _read_input(path: str | None, shape: Sequence[int]) -> Any:
    """The input tensor: a ``.npy`` file (loaded without pickle) or seeded random values of ``shape``."""
    import numpy as np
    import torch

    if path is None:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(
            f"cannot read the input {path!r} as a .npy array ({exc}); save it with numpy.save"
        ) from exc
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise ConfigError(f"the input {path!r} is an .npz archive; save one array with numpy.save")
    want = tuple(shape)
    if array.dtype.kind != "f" or array.dtype.itemsize != 4:
        raise ConfigError(
            f"the input {path!r} holds {array.dtype} values; the model takes float32 (save it with "
            f"x.astype(numpy.float32))"
        )
    if array.ndim != len(want) or array.shape[1:] != want[1:] or array.shape[0] < 1:
        raise ConfigError(
            f"the input {path!r} has shape {list(array.shape)}; the model was traced for {list(want)} "
            f"(any batch size >= 1 first); pass --input-shape to match it"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def cmd_run(args: argparse.Namespace) -> int:
    """Split inference through a running ``splitdnn serve``: plan, run, report each request's breakdown."""
    from splitdnn.models import default_input_shape, parse_kwargs
    from splitdnn.runtime.client import SplitClient, format_breakdown
    from splitdnn.schema import Link

    if args.requests < 1:
        raise ConfigError(f"--requests must be at least 1, found {args.requests}")
    kwargs = parse_kwargs(args.kwarg or [])
    # a zoo model at the size its kwargs give it (e.g. image_size=32), as the server traces it; a
    # model outside the zoo is refused here without --input-shape
    shape = args.input_shape or default_input_shape(args.model, kwargs=kwargs)
    x = _read_input(args.input, shape)  # before the client connects and profiles: fail fast
    if args.output is not None:
        check_output_file(args.output, "--output")
    tls = bool(args.tls or args.tls_ca or args.tls_cert)
    if not args.malloc_defaults:
        from splitdnn.runtime.memory import keep_freed_memory

        keep_freed_memory()
    model: Any = args.model
    name = None  # the client names a model given by spec as the server does
    if args.weights is not None or args.kwarg:
        from splitdnn.models import load_model

        model, name = load_model(args.model, kwargs=kwargs, weights=args.weights)
    client = SplitClient(
        args.server,
        model,
        model_name=name,
        input_shape=shape,
        device_profile=load_profile(args.device_profile) if args.device_profile else None,
        link=Link(uplink_mbps=args.uplink_mbps, rtt_ms=args.rtt_ms),
        max_error=args.max_error,
        accuracy_table=args.accuracy_table,
        max_accuracy_loss=args.max_accuracy_loss,
        probe_interval_s=None if args.no_probe else 5.0,
        deadline_probe_interval_s=None if args.no_probe else 0.25,
        server_pace=not args.no_server_pace,
        probe_edge_interval_s=args.probe_interval_s,
        token=_token(args),
        tls=tls,
        root_cert=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        timeout_s=args.timeout_s,
        fallback_local=not args.no_fallback,
        privacy_floor=args.privacy_floor,
        stream=args.stream,
        emulate_slowdown=args.slowdown,
        threads=args.threads,
        force_boundary=args.force,
    )
    with client:
        x = x.to(client.traced.example_inputs[0].dtype)  # a float16 / bfloat16 model: its own precision
        if not args.json:
            print(client.describe(), flush=True)
        rows = []
        y = None
        for i in range(args.requests):
            y = client.infer(x, deadline_ms=args.deadline_ms)
            b = client.last_breakdown
            assert b is not None
            rows.append(b)
            if not args.json:
                print(f"#{i + 1}: {format_breakdown(b)}", flush=True)
        summary = _summary(y)
        if args.output is not None:
            _save_output(args.output, y)
        totals = [b.total_ms for b in rows]
        if args.json:
            doc = {
                "model": args.model,
                "server": args.server,
                "server_profile": client.server_profile_source,
                "output": summary,
                "median_ms": statistics.median(totals),
                "requests": [
                    b.__dict__
                    | {"boundary": list(b.boundary), "codecs": list(b.codecs)}
                    | ({"deadline_missed": b.deadline_missed} if b.deadline_ms is not None else {})
                    for b in rows
                ],
            }
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            missed = sum(b.deadline_missed for b in rows)
            deadline = f"; {missed} missed the {args.deadline_ms:g} ms deadline" if args.deadline_ms else ""
            print(
                f"median {statistics.median(totals):.1f} ms over {len(totals)} request(s){deadline}; "
                f"output {summary}"
            )
    return 0


def _first_tensor(y: Any) -> Any:
    """The first tensor of a structured output (tuple, list, dict), or ``y`` itself."""
    import torch
    from torch.utils import _pytree as pytree

    return next((leaf for leaf in pytree.tree_leaves(y) if isinstance(leaf, torch.Tensor)), y)


def _save_output(path: str, y: Any) -> None:
    """Write the last output in ``.npy`` format to exactly ``path`` (of a tuple or dict output, its
    first tensor)."""
    import numpy as np

    first = _first_tensor(y)
    try:
        with open(path, "wb") as f:  # np.save(name) would append ".npy" to any other name
            np.save(f, first.detach().cpu().numpy(), allow_pickle=False)
    except OSError as exc:
        raise ConfigError(f"cannot write the output to {path!r}: {exc.strerror or exc}") from exc


def _summary(y: Any) -> dict[str, Any]:
    """A short description of a model output: shape and, for a score vector, the top classes."""
    import torch

    y = _first_tensor(y)
    if not isinstance(y, torch.Tensor):
        return {"type": type(y).__name__}
    out: dict[str, Any] = {"shape": list(y.shape), "dtype": str(y.dtype).removeprefix("torch.")}
    if y.ndim == 2 and y.shape[0] == 1 and y.is_floating_point():
        k = min(3, y.shape[1])
        top = torch.topk(y[0], k)
        out["top"] = [int(i) for i in top.indices]
    return out


# --------------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's main job: real split inference through a local tail service and a shaped link."""
    from splitdnn.runtime.demo import run_demo
    from splitdnn.runtime.memory import keep_freed_memory

    keep_freed_memory()  # before profiling: its in-process server sets it anyway, for the whole process
    run_demo(
        args.model,
        tuple(args.uplink_mbps),
        slowdown=args.slowdown,
        progress=not args.quiet,
        server_pace=not args.no_server_pace,
        **_measurement_kwargs(args),
        out=sys.stdout,
    )
    return 0


# --------------------------------------------------------------------------------------------------
# bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Measured partition experiments: the grid and/or a bandwidth-change run; results into --out-dir."""
    from splitdnn.runtime.bench import BenchConfig, CellResult, run_bench
    from splitdnn.runtime.bench_report import bench_document, format_markdown, write_results

    if args.no_grid and not args.change:
        raise ConfigError("--no-grid leaves nothing to run; give --change SCHEDULE or drop --no-grid")
    _check_writable_dir(Path(args.out_dir))  # before minutes of measurements, not after them
    from splitdnn.runtime.memory import keep_freed_memory

    keep_freed_memory()  # before profiling: its in-process server sets it anyway, for the whole process
    import datetime

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    config = BenchConfig(
        models=tuple(args.models),
        uplinks_mbps=tuple(args.uplink_mbps),
        downlink_factor=args.downlink_factor,
        slowdowns=tuple(args.slowdown),
        oracle_prune=args.oracle_prune,
        oracle_max_cuts=args.oracle_max_cuts,
        refresh_runs=args.refresh_runs,
        refresh_pool=args.refresh_pool,
        link=args.link,
        server_pace=args.server_pace,
        **_measurement_kwargs(args),
    )
    change = None
    if args.change:
        from splitdnn.runtime.bench_change import parse_schedule

        schedule = parse_schedule(args.change)  # checked before the grid spends minutes
    partial = Path(args.out_dir) / PARTIAL_RESULTS
    partial.unlink(missing_ok=True)

    def keep(cell: CellResult) -> None:  # each cell as soon as it is measured: an interrupt loses none
        from splitdnn.runtime.bench_netns import cell_to_dict

        with partial.open("a", encoding="utf-8") as f:
            f.write(json.dumps(cell_to_dict(cell)) + "\n")

    with _sigterm_interrupts():  # a batch scheduler's SIGTERM cleans up as Ctrl-C does (namespaces, servers)
        try:
            cells = []
            if not args.no_grid:
                cells = run_bench(config, progress=not args.quiet, out=sys.stdout, on_cell=keep)
        except KeyboardInterrupt:
            if partial.exists():
                print(
                    f"interrupted: the cells measured so far are in {partial} (one JSON per line)",
                    file=sys.stderr,
                )
            raise
        if args.change:
            from splitdnn.runtime.bench_change import run_change

            change = run_change(
                config.models[0], schedule, duration_s=args.change_duration_s,
                slowdown=config.slowdowns[0], rtt_ms=config.rtt_ms, downlink_factor=config.downlink_factor,
                input_shape=config.input_shape,
                max_error=config.max_error, device_threads=config.device_threads,
                server_threads=config.server_threads, profile_repeats=config.profile_repeats,
                server_pace=config.server_pace, progress=not args.quiet, out=sys.stdout,
            )  # fmt: skip
    command = _bench_command(args)
    doc = bench_document(cells, config, change=change, command=command, started_utc=started)
    paths = write_results(doc, args.out_dir, plots=not args.no_plots)
    partial.unlink(missing_ok=True)  # all of it is in bench.json now
    print(format_markdown(doc), flush=True)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0


#: the cells of a `splitdnn bench` run so far, one JSON object per line, in --out-dir until bench.json is
#: written (``splitdnn.runtime.bench_netns.cell_from_dict`` reads each back)
PARTIAL_RESULTS = "bench.partial.jsonl"


def _check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and make sure a file can be written in it (ConfigError otherwise)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out-dir {str(path)!r} is a file; name a folder for the results")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".splitdnn-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--out-dir {str(path)!r} cannot hold the results: {exc.strerror or exc}; name a folder "
            f"this user can write"
        ) from exc


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt in the main thread, so that what a Ctrl-C tears down
    (network namespaces, server processes, temporary folders) is torn down for a SIGTERM too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prune_factor(text: str) -> float:
    """A factor >= 1, or ``inf`` (run every candidate)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a factor >= 1 or 'inf' (run every cut), found {text!r}")
    return value


def _exact(value: float) -> str:
    """A number as the shortest text that reads back to it (``:g`` kept 6 digits: 0.1234567 became
    0.123457 in the recorded command)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _bench_command(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every setting spelled out (recorded with the results)."""
    import shlex

    def nums(values: Sequence[float]) -> str:
        return " ".join(_exact(v) for v in values)

    parts = [
        "splitdnn bench",
        f"--models {' '.join(args.models)}",
        f"--uplink-mbps {nums(args.uplink_mbps)}",
        *([f"--downlink-factor {_exact(args.downlink_factor)}"] if args.downlink_factor is not None else []),
        f"--slowdown {nums(args.slowdown)}",
        f"--requests {args.requests} --warmup {args.warmup} --rtt-ms {_exact(args.rtt_ms)}",
        f"--device-threads {args.device_threads}",
        f"--profile-repeats {args.profile_repeats} --budget-s {_exact(args.budget_s)}",
        f"--oracle-prune {_exact(args.oracle_prune)} --oracle-max-cuts {args.oracle_max_cuts}",
        f"--refresh-runs {args.refresh_runs} --refresh-pool {args.refresh_pool}",
        f"--link {args.link}",
    ]
    if args.server_threads:
        parts.append(f"--server-threads {args.server_threads}")
    if args.input_shape:
        parts.append("--input-shape " + ",".join(str(d) for d in args.input_shape))
    if args.max_error:
        parts.append(f"--max-error {_exact(args.max_error)}")
    if args.change:
        parts.append(f"--change {shlex.quote(args.change)}")
        if args.change_duration_s:
            parts.append(f"--change-duration-s {_exact(args.change_duration_s)}")
    if args.no_grid:
        parts.append("--no-grid")
    parts.append(f"--out-dir {shlex.quote(str(args.out_dir))}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# parsers


def _measurement_args(
    p: argparse.ArgumentParser,
    *,
    positive: Parse,
    nonneg: Parse,
    shape: Parse,
    count: Callable[[int, int], Parse],
) -> None:
    """The options `demo` and `bench` share: emulation, repeats, time budget, codec budget."""
    p.add_argument(
        "--device-threads", type=count(1, MAX_THREADS), default=1, help="torch threads of the emulated device"
    )
    p.add_argument("--server-threads", type=count(0, MAX_THREADS), default=0, help="default: torch's default")
    p.add_argument("--rtt-ms", type=nonneg, default=20.0, help="round trip added by the application")
    p.add_argument("--requests", type=int, default=5, help="timed requests per strategy and bandwidth")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests first (default 1)")
    p.add_argument("--input-shape", type=shape, metavar="SHAPE", help="batch first (default: the zoo's)")
    p.add_argument("--profile-repeats", type=int, default=3, help="timed runs per profiling measurement")
    p.add_argument(
        "--budget-s",
        type=positive,
        default=8.0,
        help="seconds one strategy may take at one bandwidth; slower ones run fewer times or are "
        "predicted only, and the results say so (default 8)",
    )
    p.add_argument(
        "--max-error",
        type=nonneg,
        default=0.0,
        help="codec error budget of the chosen plan (relative MSE); default 0 = lossless codecs only",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _measurement_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of run_demo / BenchConfig that _measurement_args parsed."""
    return {
        "requests": args.requests,
        "warmup": args.warmup,
        "rtt_ms": args.rtt_ms,
        "input_shape": args.input_shape,
        "max_error": args.max_error,
        "device_threads": args.device_threads,
        "server_threads": args.server_threads or None,
        "profile_repeats": args.profile_repeats,
        "budget_s": args.budget_s,
    }


def add_commands(
    sub: Any,
    *,
    positive: Parse,
    nonneg: Parse,
    shape: Parse,
    count: Callable[[int, int], Parse],
    uplinks: Sequence[float],
) -> None:
    """Register ``serve``, ``run``, ``demo`` and ``bench`` on the main parser's subparsers."""
    threads = count(1, MAX_THREADS)
    p = sub.add_parser(
        "serve",
        help="serve model tails over gRPC (Open Inference Protocol v2) until SIGTERM",
        description="Serve the full model and the tail of any cut for each MODEL (zoo name or "
        "package.module:callable) over gRPC: the v2 inference protocol, splitdnn.v1, grpc.health.v1.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--port", type=int, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument(
        "--input-shape",
        type=lambda text: (text.rpartition("=")[0], shape(text.rpartition("=")[2])),
        action="append",
        metavar="[MODEL=]SHAPE",
        help="example input shape to trace with, batch first (repeat per input; default: the zoo's). "
        "Needed for module:callable models; requests may use other batch sizes. Without MODEL= it is "
        "for every served model not given one with MODEL=",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=threads, metavar="N", help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--weights",
        type=_name_path,
        action="append",
        metavar="MODEL=FILE",
        help="weights for one served model (safetensors or a torch state dict)",
    )
    p.add_argument(
        "--kwarg",
        action="append",
        metavar="[MODEL=]KEY=VALUE",
        help="keyword argument for a module:callable model's builder, as for `splitdnn profile` "
        "(MODEL= is needed when several models are served)",
    )
    p.add_argument(
        "--profile",
        type=_name_path,
        action="append",
        metavar="MODEL=FILE",
        help="this server's profile of MODEL, given to clients so they plan with its speed",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="dynamic batching: rows per batch (1 = off)")
    p.add_argument("--max-queue-delay-ms", type=nonneg, default=2.0, help="longest wait for batch company")
    p.add_argument("--max-message-mib", type=positive, default=64.0, help="cap on each gRPC message (MiB)")
    p.add_argument(
        "--max-concurrency", type=int, default=64, help="requests in flight before RESOURCE_EXHAUSTED"
    )
    p.add_argument(
        "--metrics-port", type=int, metavar="P", help="Prometheus metrics over HTTP (0: a free port)"
    )
    p.add_argument(
        "--metrics-host", metavar="HOST",
        help="bind address of the metrics endpoint, which has no token or TLS (default: --host)",
    )  # fmt: skip
    p.add_argument(
        "--grace-s", type=nonneg, default=5.0,
        help="on SIGTERM: time in-flight requests get (a second SIGTERM cancels them at once)",
    )  # fmt: skip
    p.add_argument(
        "--drain-s", type=nonneg, default=0.0,
        help="on SIGTERM: time between health NOT_SERVING and refusing new requests, for load balancers "
        "to notice (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--receive-timeout-s", type=positive, default=30.0, metavar="S",
        help="end a call whose request message has not fully arrived S seconds after its handler "
        "started (DEADLINE_EXCEEDED), so stalled or very slow clients do not hold handler threads; at "
        "the default 30 s a 64 MiB message needs 18 Mbit/s (default 30; at least 0.1)",
    )  # fmt: skip
    p.add_argument(
        "--max-receiving-per-peer", type=count(1, 1 << 20), default=None, metavar="N",
        help="at most N calls from one client address may be waiting for their request message at once; "
        "one more is refused at once (RESOURCE_EXHAUSTED), so one stalled client cannot hold every handler "
        "thread (default: no cap; clients behind one NAT or proxy share an address)",
    )  # fmt: skip
    p.add_argument(
        "--max-streams", type=count(0, 1 << 16), default=None, metavar="N",
        help="ModelStreamInfer streams open at once, each holding a handler thread while it is open; one "
        "more is refused (RESOURCE_EXHAUSTED; splitdnn clients then send unary calls). 0: no streams "
        "(default 16, or half of --max-concurrency if less; at most --max-concurrency)",
    )  # fmt: skip
    p.add_argument(
        "--max-streams-per-peer", type=count(1, 1 << 16), default=None, metavar="N",
        help="at most N of those streams from one client address; one more is refused (its requests "
        "then go as unary calls), so one client cannot take every stream (default: no cap; clients "
        "behind one NAT or proxy share an address)",
    )  # fmt: skip
    p.add_argument(
        "--stream-idle-timeout-s", type=positive, default=60.0, metavar="S",
        help="end a stream that sends no request message for S seconds (DEADLINE_EXCEEDED), giving its "
        "handler thread back (default 60; at least 0.1)",
    )  # fmt: skip
    p.add_argument(
        "--tail-cache-size", type=int, default=64, metavar="N",
        help="tails kept per model, one per cut in use (default 64; see splitdnn_tail_builds_total)",
    )  # fmt: skip
    p.add_argument(
        "--max-decoded-mib", type=positive, default=256.0, help="cap on one request's decoded tensors (MiB)"
    )
    p.add_argument(
        "--self-profile", action=argparse.BooleanOptionalAction, default=True,
        help="profile each served model without --profile at start, before serving, and give clients "
        "that profile so they plan with this server's measured speed (default: on; seconds per model)",
    )  # fmt: skip
    p.add_argument(
        "--max-inflight-mib", type=positive, metavar="MIB",
        help="cap on what all requests in flight hold at once, messages and decoded tensors, before "
        "RESOURCE_EXHAUSTED (default: 1024, or one largest request if that is more)",
    )  # fmt: skip
    malloc_arg(p)
    _security_args(p, server=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "run",
        help="split inference through a running server: plan, run, show each request's breakdown",
    )
    p.add_argument("model", metavar="MODEL", help="the model the server serves (zoo name or module:callable)")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of `splitdnn serve`")
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="the weights the server loaded for MODEL (safetensors or state dict)",
    )
    p.add_argument(
        "--kwarg", action="append", metavar="KEY=VALUE", help="keyword argument for a module:callable model"
    )
    p.add_argument("--input", metavar="NPY", help="input array as a .npy file (default: seeded random)")
    p.add_argument("--input-shape", type=shape, metavar="SHAPE", help="input shape, batch first")
    p.add_argument("--requests", type=int, default=5, help="requests to send (default 5)")
    p.add_argument(
        "--uplink-mbps",
        type=positive,
        default=10.0,
        help="initial uplink estimate (default 10); the client's link probes at connect and its own "
        "requests replace it",
    )
    p.add_argument("--rtt-ms", type=nonneg, default=20.0, help="initial round-trip estimate")
    p.add_argument(
        "--max-error",
        type=nonneg,
        default=None,
        help="codec budget, rel MSE (default: 0 = lossless, or none under --max-accuracy-loss)",
    )
    p.add_argument(
        "--accuracy-table",
        metavar="FILE",
        help="measured top-1 loss per cut and codec "
        "(scripts/bench_accuracy.py --json); with --max-accuracy-loss",
    )
    p.add_argument(
        "--max-accuracy-loss",
        type=nonneg,
        metavar="POINTS",
        help="allow lossy codecs whose measured top-1 loss at the cut is within POINTS",
    )
    p.add_argument(
        "--probe-interval-s",
        type=positive,
        default=0.25,
        help="while edge-only, pause between background link probes (default 0.25)",
    )
    p.add_argument(
        "--no-probe", action="store_true",
        help="send nothing in the background: no link probes, and no copies of requests that "
        "--deadline-ms finishes on this device at once (which keep what the client knows of the "
        "server current)",
    )  # fmt: skip
    p.add_argument(
        "--no-server-pace",
        action="store_true",
        help="price the server by its profile alone, not by how fast it answers its requests",
    )
    p.add_argument("--device-profile", metavar="FILE", help="this device's profile (default: profile now)")
    p.add_argument("--force", metavar="CUT", help="fixed plan: edge, cloud or a node name to cut after")
    p.add_argument("--slowdown", type=positive, default=1.0, help="emulate a slower device (pads head time)")
    p.add_argument("--threads", type=threads, metavar="N", help="torch intra-op threads on this device")
    p.add_argument("--timeout-s", type=positive, default=60.0, help="deadline of each request")
    p.add_argument(
        "--deadline-ms", type=positive, metavar="MS",
        help="answer each request within MS ms: after its head a remote request finishes on this "
        "device at once, or once its answer is late, whichever makes MS likelier by the recent "
        "requests (SplitClient.infer's deadline_ms)",
    )  # fmt: skip
    p.add_argument("--no-fallback", action="store_true", help="fail instead of running locally")
    p.add_argument(
        "--stream", action="store_true",
        help="send the requests as messages of one open ModelStreamInfer stream instead of a call each "
        "(unary calls when the server takes no stream)",
    )  # fmt: skip
    p.add_argument("--privacy-floor", action="store_true", help="never send the raw input")
    p.add_argument("--output", metavar="NPY", help="save the last request's output as a .npy file")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    malloc_arg(p)
    _security_args(p, server=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="real split inference at the standard bandwidths: local server, shaped link, emulated device",
    )
    p.add_argument("--model", default="resnet18", help="zoo model (default resnet18)")
    p.add_argument(
        "--slowdown",
        type=positive,
        default=8.0,
        help="emulated device slowdown on top of --device-threads (default 8)",
    )
    p.add_argument("--uplink-mbps", type=positive, nargs="+", default=list(uplinks))
    _measurement_args(p, positive=positive, nonneg=nonneg, shape=shape, count=count)
    p.add_argument(
        "--no-server-pace",
        action="store_true",
        help="the client prices the server by its profile alone, not by how fast it answers",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="measured partition experiments: models x uplinks x slowdowns, every strategy side by side",
        description="Measure edge-only, cloud-only (raw and losslessly compressed), splitdnn's adaptive "
        "plan and an oracle over every candidate cut through the real client and server over a shaped "
        "link; write JSON, Markdown and PNG plots. --change adds a run with the bandwidth changing.",
    )
    p.add_argument("--models", nargs="+", default=["resnet18"], metavar="MODEL", help="zoo models")
    p.add_argument("--uplink-mbps", type=positive, nargs="+", default=[0.13, 1.1, 5.85, 18.88, 100.0])
    p.add_argument(
        "--downlink-factor", type=positive, metavar="F",
        help="downlink = F x uplink in every cell and every --change step (default: the same as the "
        "uplink), e.g. 4 for a link whose answers come back four times faster than requests go",
    )  # fmt: skip
    p.add_argument("--slowdown", type=positive, nargs="+", default=[8.0], help="device slowdowns (>= 1)")
    p.add_argument(
        "--server-pace",
        action="store_true",
        help="the splitdnn client prices the server at its measured pace, as SplitClient does by default "
        "(off here: a cell's server serves nothing else, so its predictions test the cost model alone)",
    )
    _measurement_args(p, positive=positive, nonneg=nonneg, shape=shape, count=count)
    p.add_argument(
        "--oracle-prune",
        type=_prune_factor,
        default=1.5,
        help="the oracle runs cuts predicted within this factor of the best (default 1.5; inf = all)",
    )
    p.add_argument("--oracle-max-cuts", type=int, default=12, help="and at most this many (default 12)")
    p.add_argument(
        "--refresh-runs",
        type=int,
        default=5,
        help="before each cell, time the whole model this often on device and server and rescale both "
        "profiles to it: the machine's speed drifts (default 5; 0: keep the profiles of the start)",
    )
    p.add_argument(
        "--refresh-pool",
        type=int,
        default=3,
        help="rescale by the median over the runs of the model's last N refreshes, so a burst of "
        "load during one refresh does not set its cell's scale alone (default 3; 1: this refresh only)",
    )
    p.add_argument(
        "--link",
        choices=("shaper", "netns"),
        default="shaper",
        help="shaper: in-process token bucket (default); netns: veth pair + tc tbf between namespaces "
        "(root), server in one namespace, client in the other",
    )
    p.add_argument(
        "--change",
        metavar="SCHEDULE",
        help="also run the bandwidth-change experiment on the first model and slowdown: 'step' "
        "(18.88 -> 1.1 at 5 s -> 18.88 at 10 s), BEFORE:AFTER@SECONDS, or a trace CSV (time_s,mbps)",
    )
    p.add_argument("--change-duration-s", type=positive, help="default: the last step + 5 s")
    p.add_argument("--no-grid", action="store_true", help="only the --change run")
    p.add_argument("--out-dir", default="bench-results", help="where bench.json, bench.md, PNGs go")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (no matplotlib needed)")
    p.set_defaults(func=cmd_bench)
