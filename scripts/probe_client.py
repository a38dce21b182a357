#!/usr/bin/env python3
"""Time SplitClient.infer's own code in-process, beside the bare wire client, with the network faked.

``bench_runtime.py --wire`` times ``SplitClient.infer`` and the bytes-level wire client (what
SplitClient sends and reads, and nothing else) through a real server, where the transport and the
machine's noise move every figure by more than the client's own code costs. This probe takes them
away: it captures one real answer of a tail server (in this process, stopped before timing), then
gives both clients a stand-in for the call that sleeps ``--nap-ms`` (the network and the server)
and hands back that answer. Both variants make the same request bytes, wait the same and read the
same answer, so what ``SplitClient.infer`` takes over the wire client is its own per-request work:
the input checks, the plan of the moment, the boundary tensors to numpy, the answer's tensors back
to torch (a copy: the answer's bytes are read-only), the link estimate, re-plans within their
budget, and the breakdown. A cloud-only plan with the raw codec, as in the benchmark::

    .venv/bin/python scripts/probe_client.py                    # 1 MiB, 800 repeats: about 10 s
    .venv/bin/python scripts/probe_client.py --thrash-mib 8     # the caches evicted before each answer

A served request's megabytes go through the caches (gRPC's copies, the kernel's) while the client
waits; ``--thrash-mib N`` copies N MiB between two buffers at the end of each stand-in call, so the
client reads its answer with the caches as a real answer leaves them (docs/benchmarks.md, "The
client's own steps").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_runtime as bench  # noqa: E402  (the identity tail and the shapes)
from probe_handler import add_probe_options, check_probe_options, print_spreads  # noqa: E402

#: requests the server answers before the one whose answer is kept: the first builds the tail and
#: reports that time, which would leave the client a network part far under the stand-in's sleep
_CAPTURE_AFTER = 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_options(ap, repeats=800, warmup=50, thrash_in="in each stand-in call")
    ap.add_argument("--nap-ms", type=float, default=2.0, help="the stand-in call's sleep (ms)")
    args = ap.parse_args(argv)
    check_probe_options(ap, args)
    nbytes = args.bytes
    if not 0 <= args.nap_ms <= 1000:
        ap.error(f"--nap-ms must be 0..1000 (the stand-in call's sleep), found {args.nap_ms}")

    import grpc
    import torch

    from splitdnn.graph import trace
    from splitdnn.runtime import serde
    from splitdnn.runtime.client import SplitClient
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

    torch.set_num_threads(args.threads)
    shape = bench.shape_of(nbytes)
    name = f"identity_{nbytes}"
    rng = np.random.default_rng(args.seed)
    x = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0.0)
    spec = ModelSpec("identity", name=name, module=bench._identity_class()(), input_shapes=(shape,))
    encoder, decoder, ids = serde.RequestEncoder(), serde.ResponseDecoder(), serde.RequestIds()
    with TailServer(ServerConfig(models=(spec,), keep_freed_memory=True)) as server:
        fingerprint = server.served_model(name).fingerprint
        traced = trace(bench._identity_class()(), torch.zeros(shape), name=name)
        client = SplitClient(
            server.address, traced, model_name=name, codecs=["raw"], force_boundary="cloud",
            fallback_local=False, profile_repeats=1, probe_interval_s=None, timeout_s=60.0,
        )  # fmt: skip
        with grpc.insecure_channel(server.address, options=bench._channel_options()) as channel:
            call = channel.unary_unary(serde.MODEL_INFER_METHOD)
            for _ in range(_CAPTURE_AFTER + 1):  # the last: a warm server's times, as later requests'
                request = encoder.encode(name, {"x": x}, fingerprint=fingerprint, request_id=ids.next())
                answer = call(request, timeout=60)
    got = decoder.decode(answer, max_decoded_bytes=2 * nbytes).outputs["output"]
    if not np.array_equal(got, x):
        raise RuntimeError("the server did not answer the request's tensor times one")

    thrash = np.ones(args.thrash_mib << 20, dtype=np.uint8)  # (0 bytes: nothing copied)
    thrashed = np.empty_like(thrash)
    nap_s = args.nap_ms / 1e3

    def stand_in(request: bytes, timeout_s: float | None = None) -> bytes:
        time.sleep(nap_s)
        if thrash.size:
            np.copyto(thrashed, thrash)
        return answer  # type: ignore[no-any-return]

    client._send = stand_in  # type: ignore[method-assign]  # the call SplitClient makes, faked
    xt = torch.from_numpy(x)

    def split_client() -> Any:
        y = client.infer(xt)
        if y.shape != shape or client.last_breakdown is None or client.last_breakdown.local:
            raise RuntimeError(f"SplitClient did not run the request remotely: {client.last_breakdown}")
        return y

    def wire_client() -> Any:
        sent = encoder.encode(name, {"x": x}, fingerprint=fingerprint, request_id=ids.next())
        return decoder.decode(stand_in(sent), max_decoded_bytes=2 * nbytes)

    variants = {"SplitClient": split_client, "wire client": wire_client}
    steps = client.estimator.steps
    labels = list(variants)
    times: dict[str, list[float]] = {k: [] for k in labels}
    try:
        for i in range(args.warmup + args.repeats):
            for k in rng.permutation(len(labels)):
                label = labels[k]
                t0 = time.perf_counter()
                variants[label]()
                if i >= args.warmup:
                    times[label].append(time.perf_counter() - t0)
        steps = client.estimator.steps - steps
    finally:
        client.close()

    print(
        f"{nbytes} bytes, {args.repeats} repeats after {args.warmup} of warm-up, torch threads "
        f"{args.threads}, each call {args.nap_ms:g} ms of sleep and {args.thrash_mib} MiB copied; "
        f"the link estimate stepped on {steps} of SplitClient's requests (each a re-plan at once)"
    )
    spread = print_spreads(times)
    extra = spread["SplitClient"]["median"] - spread["wire client"]["median"]
    paired = bench._spread(np.subtract(times["SplitClient"], times["wire client"]), scale=1e6)
    print(
        f"SplitClient - wire client: {extra:.1f} us (SplitClient.infer's own code per request); "
        f"per repeat: median {paired['median']:.1f} [{paired['p10']:.1f} to {paired['p90']:.1f}] us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
