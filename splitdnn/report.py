"""Plain-text and JSON views of plans and sweeps, shared by the CLI and scripts (torch-free)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from splitdnn.schema import Plan, Profile, to_dict

__all__ = [
    "STANDARD_UPLINKS_MBPS",
    "format_bytes",
    "format_plan",
    "format_table",
    "plan_json",
    "sweep_json",
    "sweep_table",
]

#: The DADS paper's uplink settings: CAT1, 3G, 4G, Wi-Fi (Mbit/s).
STANDARD_UPLINKS_MBPS = (0.13, 1.1, 5.85, 18.88)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def _boundary_text(plan: Plan, limit: int = 4) -> str:
    if not plan.boundary:
        return "-"
    names = [b.node for b in plan.boundary]
    text = ", ".join(names[:limit])
    return text + (f" (+{len(names) - limit})" if len(names) > limit else "")


def _objective_value(plan: Plan) -> float:
    if plan.objective == "energy":
        return plan.cost.device_energy_j
    if plan.objective == "throughput":
        return plan.cost.throughput_rps
    return plan.cost.total_ms


def _speedup(plan: Plan, *baselines: Plan) -> float:
    """How much better the plan is than the best baseline under its objective (>1 = better)."""
    best = [_objective_value(b) for b in baselines]
    mine = _objective_value(plan)
    if plan.objective == "throughput":
        return mine / max(best) if max(best) > 0 else math.inf
    return min(best) / mine if mine > 0 else math.inf


def format_plan(
    plan: Plan,
    edge_only: Plan,
    cloud_only: Plan,
    profiles: Sequence[Profile] = (),
    *,
    codec_notes: Mapping[str, str] | None = None,
) -> str:
    """A human-readable account of one plan beside its two baselines; ``codec_notes`` says, per
    boundary tensor, why its codec was chosen."""
    c = plan.cost
    lines = []
    for p in profiles:
        lines.append(f"profile: {p.describe()}")
    if plan.slowdown != 1.0:
        lines.append(f"device emulation: head compute slowed down x{plan.slowdown:g}")
    lines.append(
        f"plan: {plan.strategy} ({plan.objective}{'' if plan.exact else ', not proven optimal'}), "
        f"{sum(1 for t in plan.tiers.values() if t == 0)}/{len(plan.tiers)} compute nodes on the device"
    )
    if plan.boundary:
        lines.append("boundary tensors:")
        for b in plan.boundary:
            lines.append(
                f"  {b.node}: {format_bytes(b.nbytes)} raw, {format_bytes(b.wire_bytes)} on the wire "
                f"({b.codec}), tier {b.src_tier} -> {b.dst_tier}"
            )
            if codec_notes and b.node in codec_notes:
                lines.append(f"    codec {codec_notes[b.node]}")
    else:
        lines.append("boundary tensors: none (everything runs on the device)")
    tiers = " + ".join(f"{ms:.2f}" for ms in c.compute_ms)
    lines.append(
        f"predicted: {c.total_ms:.2f} ms = compute [{tiers}] + transfer {sum(c.transfer_ms):.2f} "
        f"+ rtt {sum(c.rtt_ms):.2f} + encode/decode {c.encode_ms + c.decode_ms:.2f} "
        f"+ result {c.result_ms:.2f}; device energy {c.device_energy_j * 1e3:.1f} mJ; "
        f"throughput {c.throughput_rps:.1f} req/s"
    )
    lines.append(
        f"edge-only: {edge_only.cost.total_ms:.2f} ms, cloud-only: {cloud_only.cost.total_ms:.2f} ms; "
        f"speed-up vs best baseline x{_speedup(plan, edge_only, cloud_only):.2f} ({plan.objective})"
    )
    return "\n".join(lines)


def plan_json(plan: Plan, edge_only: Plan | None = None, cloud_only: Plan | None = None) -> dict[str, Any]:
    """One JSON object: the stable top-level keys other tools rely on, then the full plan."""
    out: dict[str, Any] = {
        "model": plan.model,
        "objective": plan.objective,
        "strategy": plan.strategy,
        "exact": plan.exact,
        "slowdown": plan.slowdown,
        "boundary": list(plan.boundary_nodes),
        "boundary_bytes": plan.boundary_bytes,
        "codecs": {b.node: b.codec for b in plan.boundary},
        "predicted_ms": plan.cost.total_ms,
        "device_energy_j": plan.cost.device_energy_j,
        "throughput_rps": plan.cost.throughput_rps,
        "plan": to_dict(plan),
    }
    if edge_only is not None and cloud_only is not None:
        out["edge_only_ms"] = edge_only.cost.total_ms
        out["cloud_only_ms"] = cloud_only.cost.total_ms
        out["speedup_vs_best_baseline"] = _speedup(plan, edge_only, cloud_only)
    return out


def sweep_table(points: Sequence[Any]) -> str:
    """Table of a sweep: one row per bandwidth with the chosen cut and the baselines."""
    rows = []
    for pt in points:
        plan = pt.plan
        rows.append(
            [
                f"{pt.uplink_mbps:g}",
                plan.strategy,
                _boundary_text(plan),
                format_bytes(plan.boundary_bytes) if plan.boundary else "-",
                ",".join(sorted({b.codec for b in plan.boundary})) or "-",
                f"{plan.cost.total_ms:.2f}",
                f"{pt.edge_only.cost.total_ms:.2f}",
                f"{pt.cloud_only.cost.total_ms:.2f}",
                f"x{_speedup(plan, pt.edge_only, pt.cloud_only):.2f}",
            ]
        )
    return format_table(
        [
            "uplink Mbit/s",
            "strategy",
            "cut after",
            "bytes sent",
            "codec",
            "predicted ms",
            "edge-only ms",
            "cloud-only ms",
            "speed-up",
        ],
        rows,
    )


def sweep_json(points: Sequence[Any]) -> dict[str, Any]:
    return {
        "points": [
            {
                "uplink_mbps": pt.uplink_mbps,
                **{k: v for k, v in plan_json(pt.plan, pt.edge_only, pt.cloud_only).items() if k != "plan"},
                "tiers": dict(pt.plan.tiers),
            }
            for pt in points
        ]
    }
