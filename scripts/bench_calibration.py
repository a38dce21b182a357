"""Benchmark: how well do profiled per-node times predict measured head and tail times?

For every zoo model (default input shape, batch 1) this profiles the model, then measures the head
and the tail of EVERY chain cut directly (``splitdnn.profiler.measure_cuts``, tail on the head's real
outputs) and compares them with two predictions:

* calibrated: the profile's ``calibrated_ms`` (head = prefix sum, tail = the rest), which is what the
  solver adds up;
* uncalibrated: the sum of isolated per-node medians (what a naive layer-wise profiler predicts).

It prints one Markdown table per model and a summary, including the wall time profiling took.

    python scripts/bench_calibration.py --models alexnet --repeats 3
    python scripts/bench_calibration.py --threads 1 --json calib.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from splitdnn import graph
from splitdnn.calibrate import CALIBRATION_METHODS, prediction_errors, split_prediction
from splitdnn.errors import SplitDNNError
from splitdnn.models.registry import ZOO, build_zoo_model, default_input_shape
from splitdnn.profiler import CutTiming, measure_cuts, profile_model_run
from splitdnn.schema import Profile, to_dict


def _errors(
    profile: Profile, timings: list[CutTiming], *, calibrated: bool, scale: float = 1.0
) -> dict[str, float]:
    """Prediction errors; ``scale`` multiplies every prediction (drift correction)."""
    heads_p, heads_m, tails_p, tails_m = [], [], [], []
    for t in timings:
        h, tl = split_prediction(profile, t.cut, calibrated=calibrated)
        h, tl = h * scale, tl * scale
        heads_p.append(h)
        heads_m.append(t.head.median_ms)
        tails_p.append(tl)
        tails_m.append(t.tail.median_ms)
    head_mape, head_max, _ = prediction_errors(heads_p, heads_m)
    tail_mape, tail_max, _ = prediction_errors(tails_p, tails_m)
    _, _, median_abs = prediction_errors(heads_p + tails_p, heads_m + tails_m)
    return {
        "cuts": len(timings),
        "head_mape_pct": head_mape,
        "tail_mape_pct": tail_mape,
        "max_abs_error_ms": max(head_max, tail_max),
        "median_abs_error_ms": median_abs,
    }


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    shape = (args.batch, *ZOO[name].test_input_shape) if args.small else default_input_shape(name, args.batch)
    kwargs = dict(ZOO[name].test_kwargs) if args.small else {}
    model = build_zoo_model(name, **kwargs)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    traced = graph.trace(model, (example,), name=name)
    started = time.perf_counter()
    run = profile_model_run(
        traced,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        segments=args.segments,
        calibration=args.calibration,
        progress=not args.quiet,
    )
    wall_s = time.perf_counter() - started
    profile = run.profile
    compute = [n.name for n in traced.compute_nodes()]
    # the last compute node's "cut" is the whole model with an empty tail: nothing to predict
    cuts = [c for c in graph.chain_cuts(traced) if c in compute and c != compute[-1]]
    # the whole model is measured in the same rounds, so drift since profiling shows
    *timings, whole = measure_cuts(
        traced,
        [*cuts, compute[-1]],
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        progress=not args.quiet,
    )
    fitted = {a.cut for a in run.anchors}
    held_out = [t for t in timings if t.cut not in fitted]
    # the machine's speed drifts between profiling and checking (shared cores, turbo): the fused
    # model measured in both shows by how much; scaling predictions by it separates that drift
    # from the error of the prediction method itself
    drift = whole.head.median_ms / profile.total.median_ms if profile.total.median_ms > 0 else 1.0
    return {
        "model": name,
        "input_shape": list(shape),
        "compute_nodes": len(compute),
        "chain_cuts": len(cuts),
        "profile_wall_s": wall_s,
        "fused_ms": profile.total.median_ms,
        "fused_again_ms": whole.head.median_ms,
        "threads": profile.machine.threads,
        "calibration": to_dict(profile.calibration),
        "calibrated_all": _errors(profile, timings, calibrated=True),
        "calibrated_held_out": _errors(profile, held_out, calibrated=True),
        "uncalibrated_all": _errors(profile, timings, calibrated=False),
        "drift": drift,
        "calibrated_drift_corrected": _errors(profile, timings, calibrated=True, scale=drift),
        "uncalibrated_drift_corrected": _errors(profile, timings, calibrated=False, scale=drift),
        "per_cut": [
            {
                "cut": t.cut,
                "head_ms": t.head.median_ms,
                "tail_ms": t.tail.median_ms,
                "fitted": t.cut in fitted,
                "pred_head_ms": split_prediction(profile, t.cut)[0],
                "pred_tail_ms": split_prediction(profile, t.cut)[1],
                "uncal_head_ms": split_prediction(profile, t.cut, calibrated=False)[0],
                "uncal_tail_ms": split_prediction(profile, t.cut, calibrated=False)[1],
            }
            for t in timings
        ],
    }


def _table(result: dict[str, Any], per_cut: bool) -> str:
    cal = result["calibration"]
    lines = [
        f"### {result['model']} {tuple(result['input_shape'])}: fused {result['fused_ms']:.2f} ms "
        f"(again while checking: {result['fused_again_ms']:.2f} ms), "
        f"{result['threads']} thread(s), profiled in {result['profile_wall_s']:.1f} s "
        f"({cal['method']}, {cal['segments']} segments; profile's own check: {cal['cuts_checked']} cuts, "
        f"MAPE {cal['mape_pct']:.1f}%)",
        "",
        "| prediction | cuts | head MAPE % | tail MAPE % | max abs err ms | median abs err ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("calibrated_all", "calibrated, every chain cut"),
        ("calibrated_held_out", "calibrated, cuts not used to fit"),
        ("uncalibrated_all", "uncalibrated (sum of isolated), every chain cut"),
        ("calibrated_drift_corrected", f"calibrated, drift-corrected (x{result['drift']:.3f})"),
        ("uncalibrated_drift_corrected", "uncalibrated, drift-corrected"),
    ):
        e = result[key]
        lines.append(
            f"| {label} | {e['cuts']} | {e['head_mape_pct']:.1f} | {e['tail_mape_pct']:.1f} | "
            f"{e['max_abs_error_ms']:.3f} | {e['median_abs_error_ms']:.3f} |"
        )
    if per_cut:
        lines += [
            "",
            "| cut | fitted | head ms | pred | uncal | tail ms | pred | uncal |",
            "| --- | :---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in result["per_cut"]:
            lines.append(
                f"| {c['cut']} | {'x' if c['fitted'] else ''} | "
                f"{c['head_ms']:.3f} | {c['pred_head_ms']:.3f} | "
                f"{c['uncal_head_ms']:.3f} | {c['tail_ms']:.3f} | {c['pred_tail_ms']:.3f} | "
                f"{c['uncal_tail_ms']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--calibration", choices=CALIBRATION_METHODS, default=CALIBRATION_METHODS[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--small", action="store_true", help="use each model's small test input instead")
    ap.add_argument("--per-cut", action="store_true", help="also print every cut's times")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    args = ap.parse_args(argv)

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in ZOO]
    if unknown:
        print(f"unknown model(s) {unknown}; zoo: {', '.join(ZOO)}", file=sys.stderr)
        return 2
    results = []
    try:
        for name in names:
            result = bench_model(name, args)
            results.append(result)
            print(_table(result, args.per_cut) + "\n", flush=True)
    except SplitDNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if len(results) > 1:
        print("| model | profile s | fused ms | cal head/tail MAPE % | uncal head/tail MAPE % |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in results:
            c, u = r["calibrated_all"], r["uncalibrated_all"]
            print(
                f"| {r['model']} | {r['profile_wall_s']:.1f} | {r['fused_ms']:.2f} | "
                f"{c['head_mape_pct']:.1f} / {c['tail_mape_pct']:.1f} | "
                f"{u['head_mape_pct']:.1f} / {u['tail_mape_pct']:.1f} |"
            )
    if args.json:
        meta = {"torch": torch.__version__, "argv": sys.argv[1:], "results": results}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
