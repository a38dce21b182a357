#!/usr/bin/env python3
"""Measure splitdnn with the tail on a CUDA GPU: the GPU profile, and split inference through the server.

Needs CUDA; ``scripts/device_check.sh`` runs it on a lent GPU machine. For each ``--models`` entry
(at the zoo's default input size):

1. ``profile_model(device="cuda")``: the fused whole model's median, and the calibration's held-out
   error (chain cuts' heads and tails predicted from per-node times against measured), i.e. how
   well per-node GPU times, each synchronised, add up to what a fused run takes.
2. An in-process ``TailServer`` on the GPU publishing that profile, and a ``SplitClient`` on the
   CPU over 127.0.0.1 (no shaping, raw tensors), forced to cloud-only and to the middle chain cut:
   ``--requests`` requests each after ``--warmup``. Per request: the client's wall time, the
   server's reported compute (the tail with the copies to and from the GPU and the synchronisation
   included) and the rest (head, network, parsing). Beside it, the same tail run in this process on
   the GPU (the input copied up, the output copied back), timed the same way three ways: back to
   back; after an idle sleep as long as the plan's median rest (the GPU waits that long between a
   client's requests); and right after the head has run on the CPU, as a client's request follows
   it. Where the server's compute exceeds the back-to-back tail, these say whether the idle GPU or
   the CPU work before each request accounts for it.
3. Each split output against the CPU model: relative L2 error (TF32 kernels do not reproduce the
   CPU's sums bit for bit).

Reported as medians [p10-p90] in ms, in a table and in ``--json``. Exit 1 if any model failed.

    python scripts/bench_cuda.py [--models resnet18 mobilenet_v2 vgg16 vit_tiny] [--requests 30]
        [--warmup 5] [--repeats 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from splitdnn import graph
from splitdnn.models.registry import ZOO, build_zoo_model, default_input_shape


def _spread(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
    }


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def measure_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from splitdnn.profiler import profile_model
    from splitdnn.runtime.client import SplitClient
    from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer
    from splitdnn.schema import Link

    torch.manual_seed(0)
    module = build_zoo_model(name, **(ZOO[name].test_kwargs if args.test_input else {})).eval()
    shape = (1, *ZOO[name].test_input_shape) if args.test_input else default_input_shape(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    traced = graph.trace(module, x, name=name)
    with torch.inference_mode():
        ref = traced.module(x)
    t = time.perf_counter()
    gpu_traced = copy.deepcopy(traced)  # the server moves its own copy; the client's stays on the CPU
    gpu_traced.module.to(args.device)
    gpu_profile = profile_model(
        gpu_traced, device=args.device, warmup=3, repeats=args.repeats, codecs=("raw", "zstd"), progress=False
    )
    profile_s = time.perf_counter() - t
    cpu_profile = profile_model(
        traced, warmup=1, repeats=2, segments=4, check_cuts=0, codecs=("raw",), progress=False
    )
    cal = gpu_profile.calibration
    out: dict[str, Any] = {
        "model": name,
        "input_shape": list(x.shape),
        "gpu_profile": {
            "seconds": round(profile_s, 1),
            "fused_ms": gpu_profile.total.median_ms,
            "sum_of_nodes_ms": sum(n.calibrated_ms for n in gpu_profile.compute_nodes),
            "calibration": {
                "method": cal.method,
                "cuts_checked": cal.cuts_checked,
                "mape_pct": cal.mape_pct,
                "max_abs_error_ms": cal.max_abs_error_ms,
            },
        },  # fmt: skip
        "cpu_fused_ms": cpu_profile.total.median_ms,
        "cpu_threads": torch.get_num_threads(),
        "plans": [],
    }
    cuts = graph.chain_cuts(traced)
    spec = ModelSpec(name, module=copy.deepcopy(module), input_shapes=(tuple(x.shape),))
    config = ServerConfig(models=(spec,), device=args.device, profiles={name: gpu_profile}, max_batch_size=1)
    with TailServer(config) as server:
        served = server.served_model(name)
        for force in ("cloud", cuts[len(cuts) // 2]):
            with SplitClient(
                server.address, traced, device_profile=cpu_profile, link=Link(10_000.0, rtt_ms=0.05),
                codecs=["raw"], force_boundary=force, probe_interval_s=None, fallback_local=False,
            ) as client:  # fmt: skip
                for _ in range(args.warmup):
                    client.infer(x)
                walls, computes, errs = [], [], []
                for _ in range(args.requests):
                    y = client.infer(x)
                    b = client.last_breakdown
                    if b is None or b.local:  # not with fallback_local=False; a check, not an assert
                        raise RuntimeError(f"{name} {force}: the request did not run remotely ({b})")
                    walls.append(b.total_ms)
                    computes.append(b.server_compute_ms)
                    errs.append(_rel_err(y, ref))
                boundary = b.boundary
            rest = [w - c for w, c in zip(walls, computes, strict=True)]
            gap_s = float(np.median(rest)) / 1e3
            local = _local_tail_ms(served, traced, x, force, args)
            idle = _local_tail_ms(served, traced, x, force, args, gap_s=gap_s)
            after_head = _local_tail_ms(served, traced, x, force, args, head_first=True)
            out["plans"].append(
                {"force": force, "boundary": list(boundary), "bytes_sent": b.bytes_sent,
                 "wall_ms": _spread(walls), "server_compute_ms": _spread(computes),
                 "rest_ms": _spread(rest), "local_gpu_tail_ms": _spread(local),
                 "local_gpu_tail_after_idle_ms": _spread(idle),
                 "local_gpu_tail_after_head_ms": _spread(after_head), "max_rel_err": max(errs)}
            )  # fmt: skip
    return out


def _local_tail_ms(
    served: graph.TracedModel,
    traced: graph.TracedModel,
    x: torch.Tensor,
    force: str,
    args: argparse.Namespace,
    *,
    gap_s: float = 0.0,
    head_first: bool = False,
) -> list[float]:
    """The tail after ``force`` run here on the GPU: inputs copied up, output back, synchronised (ms).

    ``gap_s``: sleep that long (the GPU idle) before each run; ``head_first``: run the head on the
    CPU before each run (untimed), as a client does before its request."""
    model_inputs = {n.name: x for n in traced.nodes if n.op == "placeholder"}  # the zoo's: one
    if force == "cloud":

        def head(values: dict[str, Any]) -> dict[str, Any]:
            return values

        def run(values: dict[str, Any]) -> Any:
            return served.module(*values.values())
    else:
        head, run = graph.head_tail(traced, force)[0], graph.head_tail(served, force)[1]
    samples = []
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        inputs = head(model_inputs)
        for i in range(args.warmup + args.requests):
            if head_first:
                inputs = head(model_inputs)
            sync()
            if gap_s > 0:
                time.sleep(gap_s)
            t = time.perf_counter()
            moved = {k: v.to(args.device, non_blocking=True) for k, v in inputs.items()}
            y = run(moved)
            torch.utils._pytree.tree_leaves(y)[0].cpu()
            if i >= args.warmup:
                samples.append((time.perf_counter() - t) * 1e3)
    return samples


def to_table(results: list[dict[str, Any]]) -> str:
    def q(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} [{s['p10']:.2f}–{s['p90']:.2f}]"

    lines = [
        "| model | GPU fused ms | GPU calibration MAPE | CPU fused ms | plan | sent B | wall ms "
        "| server compute ms | rest ms | local GPU tail ms | after idle ms | after head ms | max rel err |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'].splitlines()[-1]} |")
            continue
        g = r["gpu_profile"]
        for p in r["plans"]:
            lines.append(
                f"| {r['model']} | {g['fused_ms']:.2f} | {g['calibration']['mape_pct']:.1f} % | "
                f"{r['cpu_fused_ms']:.1f} | {p['force']} | {p['bytes_sent']:,} | {q(p['wall_ms'])} | "
                f"{q(p['server_compute_ms'])} | {q(p['rest_ms'])} | {q(p['local_gpu_tail_ms'])} | "
                f"{q(p['local_gpu_tail_after_idle_ms'])} | {q(p['local_gpu_tail_after_head_ms'])} | "
                f"{p['max_rel_err']:.1e} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "vgg16", "vit_tiny"])
    p.add_argument("--requests", type=int, default=30, help="timed requests per plan (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first (default 5)")
    p.add_argument("--repeats", type=int, default=10, help="GPU profile repeats (default 10)")
    p.add_argument(
        "--device", default="cuda", help="the server's device (default cuda; cpu checks the script)"
    )
    p.add_argument("--test-input", action="store_true", help="the zoo's small test input (quick checks)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in ZOO]
    if unknown:
        p.error(f"expected zoo models among {', '.join(sorted(ZOO))}, found {', '.join(unknown)}")
    for name in ("requests", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, found {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, found {args.warmup}")
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", args.device):
        p.error(f"--device must be cpu, cuda or cuda:N, found {args.device!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "bench_cuda.py: torch.cuda.is_available() is False; run it on a machine with a GPU",
            file=sys.stderr,
        )
        return 2
    results = []
    for name in args.models:
        t = time.perf_counter()
        try:
            results.append(measure_model(name, args))
        except Exception:  # one model's failure is reported and the others still run
            results.append({"model": name, "error": traceback.format_exc()})
            print(results[-1]["error"], file=sys.stderr)
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    from splitdnn._measure import git_state

    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "no GPU (--device cpu)"
    env = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "args": vars(args),
           "code": git_state()}  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)
    print(f"{env['gpu']}, torch {env['torch']} (CUDA {env['cuda']})")
    print(to_table(results))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
