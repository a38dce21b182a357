#!/usr/bin/env python3
"""How well an emulated device's profile predicts its requests: timed back to back only, against
priced with the measured slowdown after the idle the emulation's padding leaves
(``profile_model(emulated_idle=...)``, ``Profile.idle_factor``).

An emulated device (``SplitClient(emulate_slowdown=f)``) pads each piece of work with (f - 1) x that
work of sleep, so each request starts on a core that has idled for most of the last one. For each
round and each of the two profile kinds (their order alternates by round), this script profiles
the device (``--threads``, ``--slowdown``, ``--profile-repeats``; the emulation clock the client
uses), then runs ``--requests`` emulated requests after one warm-up through a real
:class:`SplitClient` and an in-process tail server (no shaped link: only the device side is
compared) for each plan: edge-only, and a cut at each ``--fractions`` of the chain. Per plan it
compares the profile's predicted device time (``plan.cost.device_ms``: the head, or the whole model)
with the measured emulated head time (``Breakdown.head_ms``, median); ``error %`` is
100 (predicted - measured) / measured.

    python scripts/bench_emulated_idle.py [--models resnet18] [--slowdown 8] [--threads 1]
        [--fractions 0.33] [--profile-repeats 3] [--requests 6] [--rounds 2] [--json FILE] [--md FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from splitdnn import graph
from splitdnn._measure import git_state
from splitdnn.errors import SplitDNNError
from splitdnn.models.registry import ZOO, build_zoo_model, default_input_shape
from splitdnn.profiler import machine_info, profile_model
from splitdnn.runtime._client_report import run_requests
from splitdnn.runtime._client_request import emulation_clock
from splitdnn.runtime.client import SplitClient
from splitdnn.runtime.memory import keep_freed_memory
from splitdnn.runtime.server import ModelSpec, ServerConfig, TailServer

MODES = (("back to back", False), ("x idle factor", True))


def measure_model(model: str, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    module = build_zoo_model(model).eval()
    x = torch.randn(default_input_shape(model), generator=torch.Generator().manual_seed(0))
    traced = graph.trace(module, x, name=model)
    plans = ["edge", *graph.chain_cuts_at(traced, args.fractions)]
    clock = emulation_clock(args.threads, args.slowdown)
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    config = ServerConfig(models=(ModelSpec(model, module=module, input_shapes=(tuple(x.shape),)),), port=0)
    with TailServer(config) as server:
        for r in range(args.rounds):
            for label, idle in MODES if r % 2 == 0 else MODES[::-1]:
                t0 = time.perf_counter()
                prof = profile_model(
                    traced, threads=args.threads, slowdown=args.slowdown, warmup=1,
                    repeats=args.profile_repeats, codecs=("raw",), codec_nodes="chain", progress=False,
                    timer=clock, emulated_idle=idle,
                )  # fmt: skip
                profile_s = time.perf_counter() - t0
                for plan in plans:
                    client = SplitClient(
                        server.address, traced, model_name=model, device_profile=prof, threads=args.threads,
                        emulate_slowdown=args.slowdown, force_boundary=plan, codecs=["raw"],
                        fallback_local=False, timeout_s=60.0,
                    )  # fmt: skip
                    try:
                        predicted = client.plan.cost.device_ms
                        # one warm-up request, then the timed ones
                        heads = [b.head_ms for b in run_requests(client, 1 + args.requests)[1:]]
                    finally:
                        client.close()
                    keep = rows.setdefault(
                        (plan, label), {"predicted": [], "measured": [], "profile_s": [], "idle_factor": []}
                    )
                    keep["idle_factor"].append(prof.idle_factor)
                    keep["predicted"].append(predicted)
                    keep["measured"].append(statistics.median(heads))
                    keep["profile_s"].append(profile_s)
                    err = _error_pct(predicted, keep["measured"][-1])
                    say(
                        f"  {model} round {r + 1} {label}: {plan}: predicted {predicted:.1f} ms, measured "
                        f"{keep['measured'][-1]:.1f} ms ({err:+.1f} %); profile took {profile_s:.1f} s"
                    )
    return {
        "model": model,
        "plans": [
            {
                "plan": plan,
                "profile": label,
                "predicted_ms": [round(v, 2) for v in d["predicted"]],
                "measured_ms": [round(v, 2) for v in d["measured"]],
                "error_pct": [
                    round(_error_pct(p, m), 1) for p, m in zip(d["predicted"], d["measured"], strict=True)
                ],
                "profile_s": [round(v, 1) for v in d["profile_s"]],
                "idle_factor": [round(v, 3) for v in d["idle_factor"]],
            }
            for (plan, label), d in rows.items()
        ],
    }


def _error_pct(predicted: float, measured: float) -> float:
    return 100.0 * (predicted - measured) / measured


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Emulated device: predicted against measured device time ({result['created_utc']})",
        "",
        f"`{result['command']}` on {result['machine']['processor']} ({result['machine']['cpu_count']} "
        f"CPUs); device: {s['threads']} thread(s), slowdown x{s['slowdown']:g}; profile repeats "
        f"{s['profile_repeats']}; {s['requests']} requests per plan after 1 warm-up; {s['rounds']} "
        f"round(s), the two profile kinds alternated. Error = 100 (predicted - measured) / measured, "
        f"one value per round.",
        "",
        "| model | plan | profile | idle factor | predicted ms | measured ms | error % | profiling s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in result["models"]:
        for p in sorted(m["plans"], key=lambda p: (p["plan"] != "edge", p["plan"], p["profile"])):
            lines.append(
                f"| {m['model']} | {'edge-only' if p['plan'] == 'edge' else 'head to ' + p['plan']} | "
                f"{p['profile']} | {' / '.join(f'{v:.2f}' for v in p['idle_factor'])} | "
                f"{' / '.join(f'{v:.0f}' for v in p['predicted_ms'])} | "
                f"{' / '.join(f'{v:.0f}' for v in p['measured_ms'])} | "
                f"{' / '.join(f'{v:+.1f}' for v in p['error_pct'])} | "
                f"{' / '.join(f'{v:.1f}' for v in p['profile_s'])} |"
            )
    return "\n".join(lines) + "\n"


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions such as 0.25,0.5, found {text!r}") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must lie strictly between 0 and 1, found {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18"], choices=sorted(ZOO), metavar="MODEL")
    p.add_argument("--slowdown", type=float, default=8.0, help="device emulation factor (> 1; default 8)")
    p.add_argument("--threads", type=_positive_int, default=1, help="device threads (default 1)")
    p.add_argument("--fractions", type=_fractions, default=[0.33], help="cuts at these chain fractions")
    p.add_argument("--profile-repeats", type=_positive_int, default=3, help="profile repeats (default 3)")
    p.add_argument("--requests", type=_positive_int, default=6, help="timed requests per plan (default 6)")
    p.add_argument("--rounds", type=_positive_int, default=2, help="rounds of both profile kinds (default 2)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--md", type=Path, help="write the table here")
    args = p.parse_args(argv)
    if not args.slowdown > 1:
        p.error(f"--slowdown must be > 1 (an emulated device), found {args.slowdown:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # the allocator regime the runtime computes in
    code = git_state()  # now: a commit made while it runs is not the code it ran
    command = "python scripts/bench_emulated_idle.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        models = [measure_model(m, args, say) for m in args.models]
    except SplitDNNError as exc:
        print(f"bench_emulated_idle: {exc}", file=sys.stderr)
        return 1
    result = {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command.strip(),
        "machine": vars(machine_info(threads=args.threads)),
        "code": code,  # the commit (and local changes) the numbers come from
        "settings": {
            "slowdown": args.slowdown,
            "threads": args.threads,
            "fractions": args.fractions,
            "profile_repeats": args.profile_repeats,
            "requests": args.requests,
            "rounds": args.rounds,
        },
        "models": models,
    }
    md = to_markdown(result)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
