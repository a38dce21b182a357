#!/usr/bin/env python3
"""Time the tail server's ModelInfer handler in-process, without gRPC, beside the benchmark's bound.

``bench_runtime.py --wire`` measures whole calls, where the gRPC transport and the client's copies
take most of the time and the machine's noise moves the ratio by a few hundredths between runs. This
probe takes the transport away: it calls the handler ``TailServer`` registers for ModelInfer
directly with the wire client's request bytes (a context object that answers as a live call with no
deadline), and, in the same loop, the bench's bound (a handler that views the tensor at the
message's end, runs ``x * 1`` under inference mode and joins a prebuilt header) and two of the
bound's own parts: ``x * 1`` alone and the join alone. The variants alternate in a fresh random
order each repeat, over a pool of distinct requests (larger than the caches, as on a server where
every request is new bytes).

What is left between ModelInfer and the bound is splitdnn's server code per request: the request's
read and checks, the batcher, the lease, the metrics and the answer's fields. Run with one torch
thread, as the benchmark's server::

    .venv/bin/python scripts/probe_handler.py            # 1 MiB, 3000 repeats: about 15 s
    .venv/bin/python scripts/probe_handler.py --bytes 65536 --repeats 5000
    .venv/bin/python scripts/probe_handler.py --thrash-mib 64 --repeats 1500

In this loop the server's code and objects stay in the CPU's caches from one call to the next. In a
served process they do not: each request's megabytes go through the caches of both processes
(gRPC's copies, the kernel's, the tail's output, the answer's join) before the next request's
handler runs. ``--thrash-mib N`` copies N MiB between two buffers of the probe's own before each
timed call, which evicts the last call's traces as a served request's traffic does; the handler's
Python then costs several times what it does warm (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_runtime as bench  # noqa: E402  (the bound, the identity tail and the shapes)


class _LiveCall:
    """The handler's view of a call: active, no deadline; an abort is the probe's failure."""

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"the handler refused the probe's request: {code}: {message}")


def add_probe_options(ap: argparse.ArgumentParser, *, repeats: int, warmup: int, thrash_in: str) -> None:
    """The options every probe takes (this one and ``probe_client.py``): the tensor's size, the
    repeats, torch's threads, the seed and the MiB copied ``thrash_in`` (where in a repeat) to evict
    the caches; checked by :func:`check_probe_options`."""
    ap.add_argument("--bytes", type=int, default=1 << 20, help="the tensor's size (a multiple of 4096)")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--thrash-mib", type=int, default=0,
        help=f"MiB copied {thrash_in}, evicting the caches as a served request's traffic does",
    )  # fmt: skip
    ap.set_defaults(thrash_in=thrash_in)  # for check_probe_options' message


def check_probe_options(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.bytes <= 0 or args.bytes % 4096:
        ap.error(f"--bytes must be a positive multiple of 4096, found {args.bytes}")
    if args.repeats < 10 or args.warmup < 0:
        ap.error(f"--repeats must be >= 10 and --warmup >= 0, found {args.repeats} and {args.warmup}")
    if not 0 <= args.thrash_mib <= 4096:
        ap.error(f"--thrash-mib must be 0..4096 (MiB copied {args.thrash_in}), found {args.thrash_mib}")


def print_spreads(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Print each variant's median, p10 and p90 in µs (``times`` in s, in the order given) and return them."""
    print(f"{'variant':<14}{'median us':>11}{'p10':>9}{'p90':>9}")
    spread = {label: bench._spread(ts, scale=1e6) for label, ts in times.items()}
    for label, us in spread.items():
        print(f"{label:<14}{us['median']:>11.1f}{us['p10']:>9.1f}{us['p90']:>9.1f}")
    return spread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_options(ap, repeats=3000, warmup=300, thrash_in="before each call")
    ap.add_argument("--pool-mib", type=int, default=256, help="distinct requests' total size")
    args = ap.parse_args(argv)
    check_probe_options(ap, args)
    nbytes = args.bytes

    import torch

    from splitdnn.runtime import serde
    from splitdnn.runtime._servicers import InferenceServicer
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    shape = bench.shape_of(nbytes)
    name = f"identity_{nbytes}"
    spec = ModelSpec("identity", name=name, module=bench._identity_class()(), input_shapes=(shape,))
    server = TailServer(ServerConfig(models=(spec,), keep_freed_memory=True)).start()
    try:
        fingerprint = server.served_model(name).fingerprint
        handler = InferenceServicer(server).ModelInfer
        bound = bench._bound(nbytes)
        call = _LiveCall()
        rng = np.random.default_rng(args.seed)
        x = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0.0)
        encoder, ids = serde.RequestEncoder(), serde.RequestIds()
        pool = [
            encoder.encode(name, {"x": x}, fingerprint=fingerprint, request_id=ids.next())
            for _ in range(max(2, (args.pool_mib << 20) // nbytes))
        ]
        header = bytes(160)  # about the answer's small fields

        tail_only = bench._bound_tail(nbytes)  # the bound's own x * 1, alone
        for label, answer in (("ModelInfer", handler), ("bound", bound)):  # both answer x * 1, or no timing
            got = serde.decode_infer_response(answer(pool[0], call), max_decoded_bytes=2 * nbytes)
            if not np.array_equal(got.outputs["output"], x):
                raise RuntimeError(f"{label} did not answer the request's tensor times one")
        outputs = [tail_only(r) for r in pool[:8]]  # the join's sources: a few outputs, like the tail's

        variants: dict[str, Callable[[int], Any]] = {
            "ModelInfer": lambda i: handler(pool[i % len(pool)], call),
            "bound": lambda i: bound(pool[i % len(pool)], call),
            "x * 1 alone": lambda i: tail_only(pool[i % len(pool)]),
            "join alone": lambda i: b"".join((header, outputs[i % len(outputs)].numpy().data)),
        }
        labels = list(variants)
        times: dict[str, list[float]] = {k: [] for k in labels}
        thrash = np.ones(args.thrash_mib << 20, dtype=np.uint8)  # (0 bytes: nothing copied)
        thrashed = np.empty_like(thrash)
        for i in range(args.warmup + args.repeats):
            for k in rng.permutation(len(labels)):
                label = labels[k]
                if thrash.size:
                    np.copyto(thrashed, thrash)
                t0 = time.perf_counter()
                variants[label](i)
                if i >= args.warmup:
                    times[label].append(time.perf_counter() - t0)
    finally:
        server.stop(0)

    print(
        f"{nbytes} bytes, {args.repeats} repeats after {args.warmup} of warm-up, "
        f"{len(pool)} distinct requests, torch threads {args.threads}, "
        f"{args.thrash_mib} MiB copied before each call"
    )
    spread = print_spreads(times)
    extra = spread["ModelInfer"]["median"] - spread["bound"]["median"]
    print(f"ModelInfer - bound: {extra:.1f} us (splitdnn's server code per request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
