#!/usr/bin/env python3
"""Top-1 accuracy of split inference on scikit-learn's digits, for every chain cut x every codec spec.

Trains the small digits CNN of :mod:`splitdnn.digits` (a few seconds, one CPU, fixed seed, fixed
stratified split: 1,347 train / 450 test images), then for every chain cut of the traced model (and
the input itself, ``<input>`` = cloud-only) and every codec spec: runs the head on the test set,
encodes each sample's boundary tensor as one frame (batch 1, frame header included), decodes it, runs
the tail and scores top-1 against the labels. Columns:

- ``top-1`` and ``loss``: accuracy, and its drop against the uncompressed model, in percentage points
  (one test image = 0.22 points);
- ``wire B``: mean frame bytes per sample; ``fp32 B``: the boundary values as raw fp32 (4 B each);
- ``reduction``: fp32 B / wire B; ``bits/value``: 8 * wire B / boundary values;
- ``rel MSE``: the codec's relative mean squared error on the boundary values (sum of squared errors /
  sum of squares over the test set), the figure ``splitdnn solve --max-error`` budgets.

The JSON (``--json``) is also an accuracy table for ``splitdnn solve/sweep --accuracy-table FILE
--max-accuracy-loss POINTS``: it names the model (``model_name``, ``fingerprint``: graph structure and
parameter shapes, the same for every seed) and the input node that the cut ``<input>`` sends; the
solver allows a codec at a node only if its loss there (worst over the seeds) is within the budget.

Headline (issue 3): the best reduction against raw fp32 of the boundary tensor with a top-1 loss of at
most ``--max-loss`` points (default 1.0); goal >= 8x, stretch >= 16x. With several ``--seeds`` each
seed trains its own model on the same split; the combined headline is the (cut, spec) whose loss stays
within the budget on every seed, ranked by its smallest reduction over the seeds.

    python scripts/bench_accuracy.py [--seeds 0,1,2] [--epochs 12] [--specs raw,zstd,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from splitdnn.digits import (  # noqa: E402
    digits_chain_cuts,
    evaluate_split,
    trace_digits_model,
    train_digits_model,
)

SPECS = [
    "raw", "zstd", "fp16+zstd", "bf16+zstd", "int8+zstd", "int8c+zstd", "int4+zstd", "int4:aciq+zstd",
    "int2+zstd", "int2:aciq+zstd",
]  # fmt: skip
INPUT = "<input>"
GOAL, STRETCH = 8.0, 16.0


def run_seed(seed: int, epochs: int, specs: list[str], with_input: bool) -> dict:
    t0 = time.perf_counter()
    model, x, y = train_digits_model(seed=seed, epochs=epochs, threads=torch.get_num_threads())
    train_s = time.perf_counter() - t0
    traced = trace_digits_model(model)
    with torch.inference_mode():
        base = evaluate_split(traced, x, y, None, None)
    cuts: list[str | None] = ([None] if with_input else []) + list(digits_chain_cuts(traced))
    rows = []
    for cut in cuts:
        shape = None
        for spec in specs:
            r = evaluate_split(traced, x, y, cut, spec)
            if shape is None:
                shape = [r.values_per_sample]
            rows.append(
                {
                    "cut": INPUT if cut is None else cut,
                    "spec": spec,
                    "values": r.values_per_sample,
                    "top1": r.accuracy,
                    "correct": r.correct,
                    "loss_pts": 100.0 * (base.accuracy - r.accuracy),
                    "wire_bytes": r.wire_bytes_per_sample,
                    "fp32_bytes": r.raw_bytes_per_sample,
                    "reduction": r.reduction,
                    "bits_per_value": r.bits_per_value,
                    "rel_mse": r.rel_mse,
                    "identical_logits": bool(torch.equal(r.logits, base.logits)),
                }
            )
    return {
        "seed": seed,
        "model_name": traced.name,
        "fingerprint": traced.fingerprint,
        "input_node": next(n.name for n in traced.nodes if n.op == "placeholder"),
        "train_s": train_s,
        "test_samples": base.samples,
        "baseline_top1": base.accuracy,
        "rows": rows,
    }


def headline(rows: list[dict], max_loss: float, include_input: bool = False) -> dict | None:
    ok = [r for r in rows if r["loss_pts"] <= max_loss + 1e-9 and (include_input or r["cut"] != INPUT)]
    return max(ok, key=lambda r: r["reduction"]) if ok else None


def combined(seeds: list[dict], max_loss: float) -> dict | None:
    by_key: dict[tuple[str, str], list[dict]] = {}
    for s in seeds:
        for r in s["rows"]:
            if r["cut"] != INPUT:
                by_key.setdefault((r["cut"], r["spec"]), []).append(r)
    best = None
    for (cut, spec), rs in by_key.items():
        if len(rs) == len(seeds) and all(r["loss_pts"] <= max_loss + 1e-9 for r in rs):
            cand = {
                "cut": cut,
                "spec": spec,
                "min_reduction": min(r["reduction"] for r in rs),
                "max_bits_per_value": max(r["bits_per_value"] for r in rs),
                "max_loss_pts": max(r["loss_pts"] for r in rs),
            }
            if best is None or cand["min_reduction"] > best["min_reduction"]:
                best = cand
    return best


def markdown(seed: dict) -> str:
    lines = [
        f"Seed {seed['seed']}: uncompressed top-1 {100 * seed['baseline_top1']:.2f}% on "
        f"{seed['test_samples']} test images (trained in {seed['train_s']:.1f} s).",
        "",
        "| cut | values | spec | top-1 % | loss (pts) | wire B | fp32 B | reduction | bits/value | rel MSE |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in seed["rows"]:
        lines.append(
            f"| {r['cut']} | {r['values']} | {r['spec']} | {100 * r['top1']:.2f} | {r['loss_pts']:+.2f} | "
            f"{r['wire_bytes']:.1f} | {r['fp32_bytes']} | {r['reduction']:.2f}x | "
            f"{r['bits_per_value']:.2f} | {r['rel_mse']:.2g} |"
        )
    return "\n".join(lines)


def describe_best(best: dict | None, max_loss: float) -> str:
    if best is None:
        return f"no (cut, spec) within {max_loss} points"
    ratio = best["reduction"]
    verdict = "stretch met" if ratio >= STRETCH else "goal met" if ratio >= GOAL else "goal missed"
    return (
        f"{best['reduction']:.2f}x ({best['bits_per_value']:.2f} bits/value, {best['wire_bytes']:.1f} B "
        f"vs {best['fp32_bytes']} B fp32) at cut {best['cut']} with {best['spec']}, loss "
        f"{best['loss_pts']:+.2f} pts; {verdict} (goal >= {GOAL:g}x, stretch >= {STRETCH:g}x)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--specs", default=",".join(SPECS), help="comma-separated codec specs")
    ap.add_argument("--max-loss", type=float, default=1.0, help="top-1 loss budget, percentage points")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-input", action="store_true", help="skip the cloud-only rows (<input>)")
    ap.add_argument("--json", type=Path, help="write the results to this file")
    args = ap.parse_args(argv)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace) -> int:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]

    print(
        f"# Digits: top-1 accuracy and wire size per chain cut and codec\n\n"
        f"`python scripts/bench_accuracy.py {' '.join(sys.argv[1:])}`".rstrip()
        + f"\n\ntorch {torch.__version__} ({args.threads} thread(s)), {args.epochs} epochs, seeds {seeds}; "
        "one frame per test image (batch 1, header included); loss in percentage points against the "
        "uncompressed model (negative: a gain); reduction = raw fp32 bytes of the boundary / wire bytes.\n"
    )
    results = [run_seed(s, args.epochs, specs, not args.no_input) for s in seeds]
    out: dict = {
        "format": "splitdnn.accuracy-table/1",
        "model_name": results[0]["model_name"],  # what `splitdnn solve --accuracy-table` checks
        "fingerprint": results[0]["fingerprint"],  # the same on every seed: structure, not weights
        "input_node": results[0]["input_node"],  # the cut "<input>" sends this node's value
        "setup": {
            "model": "DigitsCNN (splitdnn.digits)",
            "epochs": args.epochs,
            "specs": specs,
            "max_loss_pts": args.max_loss,
            "framing": "one frame per sample (batch 1), header included",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "seeds": results,
    }
    for res in results:
        print(markdown(res))
        print()
        best = headline(res["rows"], args.max_loss)
        res["headline"] = best
        print(
            f"**Headline, seed {res['seed']}** (loss <= {args.max_loss} pts): "
            f"{describe_best(best, args.max_loss)}"
        )
        lossless_best = headline(res["rows"], 0.0)
        res["headline_no_loss"] = lossless_best
        print(f"  without any top-1 loss: {describe_best(lossless_best, 0.0)}")
        print()
    if len(results) > 1:
        comb = combined(results, args.max_loss)
        out["headline_all_seeds"] = comb
        if comb is None:
            print(f"**Headline over seeds {seeds}**: no (cut, spec) within {args.max_loss} pts on every seed")
        else:
            print(
                f"**Headline over seeds {seeds}** (loss <= {args.max_loss} pts on every seed): "
                f"{comb['min_reduction']:.2f}x minimum ({comb['max_bits_per_value']:.2f} bits/value "
                f"at most) at cut {comb['cut']} with {comb['spec']}, "
                f"worst loss {comb['max_loss_pts']:+.2f} pts"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
