"""The results of `splitdnn bench` as a JSON document, a Markdown report and PNG plots.

The JSON document is an interface other tools read (issue 5): a top-level ``records`` list with one
record per cell and strategy holding at least ``model``, ``uplink_mbps``, ``strategy`` (the chosen
plan is ``splitdnn``), ``predicted_ms``, ``measured_ms`` and ``regret``, and a top-level ``mape`` (percent,
the splitdnn strategy's prediction against its measurement across measured cells). Records that
were not measured say ``measured: false`` with ``measured_ms: null`` and a ``note``; they are left out
of MAPE, regret and the goals, and the document counts them (``excluded``).

Definitions (latencies are medians of the timed requests, in ms):

- ``measured_ms``: the strategy's own run; ``error_pct`` = 100 (predicted - measured) / measured; MAPE =
  the mean of ``|error_pct|``.
- ``cut_ms``: the median of every run of the same cut in the cell pooled (``bench.pool_cuts``: a
  baseline, splitdnn's choice and an oracle candidate are often the very same plan); for a run whose
  client switched plans (``switches`` > 0, the plan shown is its last) its own median. Regret and speed-up
  compare cuts with it, so that running one plan twice does not read as a difference between plans.
- ``regret`` = ``cut_ms`` / the oracle's (the measured cut with the lowest pooled median), so it is >= 1
  and 1 means no measured cut beat the one chosen.
- ``speedup_vs_best_baseline`` = the fastest baseline's ``cut_ms`` (edge-only, cloud-raw, cloud-lossless;
  its prediction when it was not run, flagged by ``baseline_predicted``) / ``cut_ms``; < 1 = slower.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from splitdnn._measure import git_state
from splitdnn.errors import ConfigError
from splitdnn.plots import save_figure
from splitdnn.report import format_bytes, format_table
from splitdnn.runtime.bench import BenchConfig, CellResult, CutRun, StrategyRun, cut_key, pool_cuts
from splitdnn.runtime.bench_measure import Timing
from splitdnn.runtime.shaper import BURST_S, LINK_NAME, MIN_BURST_BYTES

__all__ = [
    "GOALS",
    "SCHEMA",
    "bench_document",
    "format_markdown",
    "plot_change",
    "plot_grid",
    "write_results",
]

SCHEMA = "splitdnn.bench/1"
#: The issue's goals (benchmarks, not tests).
GOALS = {
    "max_regret": 1.05,  # regret <= 1.05 in every cell
    "max_mape_pct": 10.0,  # cost-model error of the splitdnn plan
    "min_speedup_vs_best_baseline": 1 / 1.05,  # never more than 5 % slower than the best baseline
    "max_replan_s": 1.0,  # after a bandwidth step, the first request on the new plan within 1 s
}
_BASELINES = ("edge-only", "cloud-raw", "cloud-lossless")


def _num(x: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return None if x is None or not math.isfinite(x) else float(x)


def _record(cell: CellResult, strategy: str, config: BenchConfig, link_name: str) -> dict[str, Any]:
    run = cell.runs[strategy]
    t = run.timing
    rec: dict[str, Any] = {
        "model": cell.model,
        "input_shape": list(config.shape_of(cell.model)),
        "slowdown": cell.slowdown,
        "uplink_mbps": cell.uplink_mbps,
        "rtt_ms": config.rtt_ms,
        "link": link_name,
        "strategy": strategy,
        "plan": run.plan,
        "cut": list(run.cut),
        "codecs": list(run.codecs),
        "measured": t.measured,
        "predicted_ms": _num(run.predicted_ms),
        "measured_ms": _num(t.median_ms) if t.measured else None,
        "p90_ms": _num(t.p90_ms) if t.measured else None,
        "samples_ms": [round(s, 3) for s in t.samples_ms],
        "bytes_sent": t.median_bytes_sent if t.measured else None,
        "fallbacks": t.local_runs,
        "note": run.note,
        # the cell's profiles were rescaled by these to a whole-model run just before it (drift)
        "profile_scale_device": round(cell.profile_scale[0], 4),
        "profile_scale_server": round(cell.profile_scale[1], 4),
    }
    parts = t.parts()
    if parts:  # where the requests' time went, against the client's plan when it started
        rec["parts_ms"] = {
            name: {"measured": round(measured, 3), "predicted": round(predicted, 3)}
            for name, measured, predicted in parts
        }
    if strategy == "splitdnn":
        best = cell.runs["oracle"]
        # the oracle's winner runs the very cut splitdnn ran: any regret is then run-to-run noise
        # (codecs included: the same cut with another codec is another choice, not noise)
        rec["same_cut_as_oracle"] = cut_key(best.plan, best.cut, best.codecs) == cut_key(
            run.plan, run.cut, run.codecs
        )
        rec["switches"] = run.switches
        rec["estimate_mbps"] = _num(run.estimate_mbps)
        rec["predicted_live_ms"] = (
            _num(statistics.median(t.predicted_live_ms)) if t.predicted_live_ms else None
        )
    if strategy == "oracle":
        rec["source"] = run.source
        candidates = [c for c in cell.cuts if not c.label.startswith("rematch:")]
        rec["candidates"] = len(candidates)
        rec["candidates_measured"] = sum(1 for c in candidates if c.timing is not None and c.timing.measured)
        rematched = [c.label for c in cell.cuts if c.label.startswith("rematch:")]
        rec["rematch"] = [label.removeprefix("rematch:") for label in rematched]
    measured = rec["measured_ms"]
    pred = rec["predicted_ms"]
    rec["error_pct"] = 100.0 * (pred - measured) / measured if measured and pred is not None else None
    # regret and speed-up compare cuts: each cut's runs in the cell pooled (bench.pool_cuts)
    pooled = pool_cuts(tuple(cell.runs.values()), cell.cuts)

    def cut_ms(r: StrategyRun) -> float | None:
        if not r.timing.measured:
            return None
        if r.switches:  # its samples span several cuts: its own median, not a pool
            return r.timing.median_ms
        samples = pooled.get(cut_key(r.plan, r.cut, r.codecs))
        return Timing(0.0, samples).median_ms if samples else None

    mine = cut_ms(run) if strategy != "oracle" else rec["measured_ms"]
    rec["cut_ms"] = _num(mine) if mine is not None else None
    oracle = cell.runs["oracle"].timing
    rec["regret"] = mine / oracle.median_ms if mine and oracle.measured else None
    bases = [(cell.runs[b].timing, cut_ms(cell.runs[b])) for b in _BASELINES]
    values = [c if c is not None else t.value_ms for t, c in bases]
    best_base = min(values)
    rec["best_baseline_ms"] = _num(best_base)
    rec["baseline_predicted"] = any(
        not t.measured and v == best_base for (t, _), v in zip(bases, values, strict=True)
    )
    rec["speedup_vs_best_baseline"] = best_base / mine if mine else None
    return rec


def _cut_record(cell: CellResult, cut: CutRun) -> dict[str, Any]:
    t = cut.timing
    ok = t is not None and t.measured
    return {
        "model": cell.model,
        "slowdown": cell.slowdown,
        "uplink_mbps": cell.uplink_mbps,
        "label": cut.label,
        "kind": cut.kind,
        "cut": list(cut.cut),
        "codecs": list(cut.codecs),
        "predicted_ms": _num(cut.predicted_ms),
        "measured": ok,
        "measured_ms": _num(t.median_ms) if ok and t is not None else None,
        "p90_ms": _num(t.p90_ms) if ok and t is not None else None,
        "bytes_sent": t.median_bytes_sent if ok and t is not None else None,
        # every timing: with the other runs of the same cut (records' samples_ms) they give the pooled
        # medians that regret is computed from, so it can be recomputed from this file alone
        "samples_ms": [round(v, 3) for v in t.samples_ms] if ok and t is not None else [],
        "note": cut.note,
    }


def _mape(records: Sequence[Mapping[str, Any]]) -> float | None:
    errs = [abs(r["error_pct"]) for r in records if r["error_pct"] is not None]
    return statistics.fmean(errs) if errs else None


def _code_state() -> dict[str, Any]:
    """The splitdnn measured: its version, and its checkout's git state (``_measure.git_state``)."""
    import splitdnn

    return {"splitdnn": splitdnn.__version__, **git_state()}


def _machine() -> dict[str, Any]:
    from splitdnn.profiler import machine_info

    m = machine_info()
    info: dict[str, Any] = {
        "cpus": m.cpu_count,
        "cpu_model": m.processor,
        "hostname": m.hostname,
        "python": m.python,
        "torch": m.torch,
    }
    try:
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        pass
    return info


def _link_parameters(link: str) -> dict[str, Any]:
    """The emulated link's fixed settings (its bucket depth; the kernel's queue for netns)."""
    params: dict[str, Any] = {"rtt": "half added each way by a delay line (ShapedLink)"}
    if link == "netns":  # the shaper only delays there: the kernel's tbf shapes
        params["burst"] = "5 ms of traffic, at least 3028 bytes (tc tbf, scripts/netns_link.sh)"
        params["tbf"] = (
            "tc tbf on each veth end, its queue SDNN_TBF_LATENCY_MS deep (default 400 ms), as "
            "scripts/netns_link.sh sets it up (its header)"
        )
    else:
        params["burst"] = f"{BURST_S * 1e3:g} ms of traffic, at least {MIN_BURST_BYTES} bytes"
    return params


def bench_document(
    cells: Sequence[CellResult],
    config: BenchConfig,
    *,
    change: Mapping[str, Any] | None = None,
    command: str = "",
    started_utc: str | None = None,
) -> dict[str, Any]:
    """The JSON document of a run (module docstring): settings, records, cuts, MAPE, goals, and
    what was run where (the code's git state, the machine, when: ``started_utc``, and now)."""
    link_name = LINK_NAME if config.link == "shaper" else "veth + tc tbf (netns)"
    strategies = ("edge-only", "cloud-raw", "cloud-lossless", "splitdnn", "oracle")
    records = [_record(c, s, config, config.link) for c in cells for s in strategies]
    cuts = [_cut_record(c, k) for c in cells for k in c.cuts]
    by = {s: [r for r in records if r["strategy"] == s] for s in strategies}
    mine = by["splitdnn"]
    regrets = [r["regret"] for r in mine if r["regret"] is not None]
    speedups = [r["speedup_vs_best_baseline"] for r in mine if r["speedup_vs_best_baseline"] is not None]
    mape = _mape(mine)
    goals: dict[str, Any] = {
        "regret": {
            "goal": f"<= {GOALS['max_regret']}",
            "worst": _num(max(regrets)) if regrets else None,
            "cells_over": sum(1 for r in regrets if r > GOALS["max_regret"]),
            # of those, cells where the oracle's winner is splitdnn's own cut, measured again: noise
            "cells_over_same_cut": sum(
                1
                for r in mine
                if r["regret"] is not None and r["regret"] > GOALS["max_regret"] and r["same_cut_as_oracle"]
            ),  # fmt: skip
            "cells": len(regrets),
            "met": max(regrets) <= GOALS["max_regret"] if regrets else None,
        },
        "mape": {
            "goal": f"<= {GOALS['max_mape_pct']:g} %",
            "value_pct": _num(mape),
            "met": mape <= GOALS["max_mape_pct"] if mape is not None else None,
        },
        "vs_best_baseline": {
            "goal": "never more than 5 % slower than the best baseline",
            "worst_speedup": _num(min(speedups)) if speedups else None,
            "cells_slower": sum(1 for s in speedups if s < GOALS["min_speedup_vs_best_baseline"]),
            "cells": len(speedups),
            "met": min(speedups) >= GOALS["min_speedup_vs_best_baseline"] if speedups else None,
        },
    }
    if change is not None:
        goals["replan"] = change.get("goal", {})
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command,
        "settings": {
            "models": list(config.models),
            "input_shapes": {m: list(config.shape_of(m)) for m in config.models},
            "uplinks_mbps": list(config.uplinks_mbps),
            "downlink": config.downlink_text,
            "downlink_factor": config.downlink_factor,
            "rtt_ms": config.rtt_ms,
            "slowdowns": list(config.slowdowns),
            "device": f"emulated: {config.device_threads} thread(s), device compute padded with sleep to "
            f"slowdown x its measured work ("
            + ("the computing thread's CPU time" if config.device_threads == 1 else "wall time")
            + "; the device profile is timed the same way)",
            "server": f"{config.server_threads or 'default'} thread(s), same machine, not emulated",
            "link": link_name,
            "requests": config.requests,
            "warmup": config.warmup,
            "budget_s": config.budget_s,
            "max_error": config.max_error,
            "codecs": list(config.codecs),
            "oracle_prune": config.oracle_prune,
            "oracle_max_cuts": config.oracle_max_cuts,
            "refresh_runs": config.refresh_runs,
            "refresh_pool": config.refresh_pool,
            "server_pace": config.server_pace,
            "profile_repeats": config.profile_repeats,
            "dag_points": config.dag_points,
            "device_threads": config.device_threads,
            "server_threads": config.server_threads,
            "link_parameters": _link_parameters(config.link),
            "input": "seeded random fp32 (torch.randn): lossless codecs gain little on it",
        },
        "machine": _machine(),
        "code": _code_state(),
        "started_utc": started_utc,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile_notes": sorted({n for c in cells for n in c.notes}),
        "records": records,
        "mape": _num(mape),
        "mape_by_strategy": {s: _num(_mape(rs)) for s, rs in by.items()},
        "excluded": {s: sum(1 for r in rs if not r["measured"]) for s, rs in by.items()},
        "goals": goals,
        "cuts": cuts,
    }
    if change is not None:
        doc["change"] = dict(change)
    return doc


# --------------------------------------------------------------------------------------------------
# Markdown


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def format_markdown(doc: Mapping[str, Any]) -> str:
    """A Markdown report: settings, goals, then one table per model and slowdown."""
    s = doc["settings"]
    lines = [
        "# splitdnn bench results",
        "",
        f"Link: {s['link']}, RTT {s['rtt_ms']:g} ms, downlink {s.get('downlink', 'same as uplink')}. "
        f"Device: {s['device']}. "
        f"Server: {s['server']}. {s['requests']} timed request(s) after {s['warmup']} warm-up per strategy "
        f"and cell; budget {s['budget_s']:g} s per strategy. Input: {s['input']}.",
        "",
    ]
    if doc.get("command"):
        lines += ["Command:", "", "```", doc["command"], "```", ""]
    g = doc["goals"]
    lines += ["## Goals", ""]
    rows = [
        ["regret <= 1.05 in every cell", _verdict(g["regret"]["met"]),
         f"worst {_f(g['regret']['worst'], 3)}; "
         f"{g['regret']['cells_over']}/{g['regret']['cells']} cells over "
         f"({g['regret']['cells_over_same_cut']} of them on the oracle's own cut: noise)"],
        ["cost-model MAPE <= 10 % (splitdnn plan)", _verdict(g["mape"]["met"]),
         f"{_f(g['mape']['value_pct'], 1)} %"],
        ["never > 5 % slower than the best baseline", _verdict(g["vs_best_baseline"]["met"]),
         f"worst speed-up x{_f(g['vs_best_baseline']['worst_speedup'], 3)}; "
         f"{g['vs_best_baseline']['cells_slower']}/{g['vs_best_baseline']['cells']} cells slower"],
    ]  # fmt: skip
    if "replan" in g and g["replan"]:
        r = g["replan"]
        rows.append(["re-plan <= 1 s after a step, zero failures", _verdict(r.get("met")), r.get("text", "")])
    lines += [format_table(["goal", "met", "found"], rows), ""]
    for note in doc.get("profile_notes", []):
        lines += [f"Profile note: {note}", ""]
    scales = {(r["model"], r["slowdown"], r["uplink_mbps"]): r for r in doc["records"]}.values()
    dev = [r["profile_scale_device"] for r in scales if "profile_scale_device" in r]
    srv = [r["profile_scale_server"] for r in scales if "profile_scale_server" in r]
    if dev and srv and (min(dev + srv) != 1.0 or max(dev + srv) != 1.0):
        lines += [
            f"Machine drift: before each cell both profiles were rescaled to a fresh whole-model run "
            f"(the median over the model's last {doc['settings'].get('refresh_pool', 1)} refreshes); "
            f"device factors {min(dev):.2f}–{max(dev):.2f}, server {min(srv):.2f}–{max(srv):.2f} "
            f"(`profile_scale_device` / `profile_scale_server` per record).",
            "",
        ]
    mbs = doc["mape_by_strategy"]
    lines += [
        "MAPE by strategy (%): " + ", ".join(f"{k} {_f(v, 1)}" for k, v in mbs.items()) + ". Not measured "
        "(over the time budget; excluded from MAPE and regret): "
        + ", ".join(f"{k} {v}" for k, v in doc["excluded"].items()) + ".",
        "",
    ]  # fmt: skip
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for r in doc["records"]:
        groups.setdefault((r["model"], r["slowdown"]), []).append(r)
    for (model, slowdown), recs in groups.items():
        lines += [f"## {model} {recs[0]['input_shape']}, device slowdown x{slowdown:g}", ""]
        table = []
        for r in recs:
            measured = (
                f"{_ms(r['measured_ms'])} [{_ms(r['p90_ms'])}] n={len(r['samples_ms'])}"
                if r["measured"] else "not run"
            )  # fmt: skip
            cut = ", ".join(r["cut"][:2]) + (f" (+{len(r['cut']) - 2})" if len(r["cut"]) > 2 else "")
            if r["strategy"] == "oracle" and r.get("source"):
                cut = f"{cut or r['plan']} ({r['source']})"
            sp = r["speedup_vs_best_baseline"]
            codec = ",".join(sorted(set(r["codecs"]))) or "-"
            vs = "-" if sp is None else f"x{sp:.2f}" + (" (pred)" if r["baseline_predicted"] else "")
            plan = r["plan"] + ("*" if r.get("switches") else "")
            table.append([
                f"{r['uplink_mbps']:g}", r["strategy"], plan, cut or "-", codec,
                format_bytes(r["bytes_sent"]) if r["bytes_sent"] else "-", _ms(r["predicted_ms"]), measured,
                "-" if r["error_pct"] is None else f"{r['error_pct']:+.0f}%",
                _f(r["regret"], 3), vs,
            ])  # fmt: skip
        lines += [
            format_table(
                [
                    "Mbit/s",
                    "strategy",
                    "plan",
                    "cut after",
                    "codec",
                    "sent",
                    "predicted ms",
                    "measured ms median [p90]",
                    "error",
                    "regret",
                    "vs best baseline",
                ],
                table,
            ),  # fmt: skip
            "",
        ]
    lines.append(
        "measured = the strategy's own run. * = the client switched plans during the cell: its samples "
        "span cuts, the plan shown is its last, and its regret and speed-up use its own median. "
        "regret = the median of every run of the chosen cut in the cell (pooled) / the best pooled cut "
        "(the oracle), so >= 1. vs best baseline = the fastest baseline's pooled median / the chosen "
        "cut's; (pred) = that baseline was not run and its prediction stands in. Not run = one request "
        "predicted over the budget."
    )
    if "change" in doc:
        lines += ["", format_change_markdown(doc["change"])]
    return "\n".join(lines) + "\n"


def _change_downlink(change: Mapping[str, Any]) -> str:
    """How the change run's downlink followed its uplink (records before the factor: the same)."""
    factor = change.get("downlink_factor")
    return "uplink" if factor is None else f"{factor:g} x uplink"


def format_change_markdown(change: Mapping[str, Any]) -> str:
    """The bandwidth-change run: the schedule, per step the re-plan delay, failures."""
    lines = [
        f"## Bandwidth change: {change['model']} x{change['slowdown']:g}, schedule {change['schedule']}",
        "",
        f"{change['requests']} request(s) back to back over {change['duration_s']:.1f} s, through the "
        f"{change.get('link', LINK_NAME)} with downlink = "
        f"{_change_downlink(change)} (whatever the grid's --link); "
        f"{change['failures']} failed, {change['fallbacks']} finished locally (fallback); "
        f"{change['switches']} plan switch(es).",
        "",
    ]
    rows = []
    for st in change["steps"]:
        rows.append([
            f"{st['at_s']:.2f}", f"{st['from_mbps']:g} -> {st['to_mbps']:g}", st["target_plan"],
            "-" if st["replan_s"] is None else f"{st['replan_s']:.2f}",
            "-" if st.get("exact_replan_s") is None else f"{st['exact_replan_s']:.2f}",
            "-" if st["first_request_s"] is None else f"{st['first_request_s']:.2f}", st["note"],
        ])  # fmt: skip
    header = ["step at s", "Mbit/s", "plan for the new rate", "re-plan s", "to that plan s"]
    lines.append(format_table([*header, "1st request done s", "note"], rows))
    lines += [
        "",
        "Re-plan: the first request on the plan for the new rate or on one the client's profiles price "
        "within its hysteresis margin of it there (the client does not switch between those); "
        "'to that plan': on the solver's plan itself.",
    ]
    return "\n".join(lines)


def _f(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _verdict(met: object) -> str:
    return "yes" if met is True else "no" if met is False else "-"


# --------------------------------------------------------------------------------------------------
# plots


_STYLE = {
    "edge-only": ("tab:green", "--"),
    "cloud-raw": ("tab:red", "--"),
    "cloud-lossless": ("tab:orange", "--"),
    "splitdnn": ("tab:blue", "-"),
    "oracle": ("black", ":"),
}


def plot_grid(doc: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """One PNG per model and slowdown: measured latency against uplink per strategy (log-log).

    Filled markers are measured medians (bars to p90); hollow ones are predictions of cells not run.
    """
    from splitdnn.plots import _pyplot

    plt = _pyplot()
    out = Path(out_dir)
    paths = []
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for r in doc["records"]:
        groups.setdefault((r["model"], r["slowdown"]), []).append(r)
    for (model, slowdown), recs in groups.items():
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for strategy, (color, style) in _STYLE.items():
            rs = sorted((r for r in recs if r["strategy"] == strategy), key=lambda r: r["uplink_mbps"])
            xs = [r["uplink_mbps"] for r in rs if r["measured"]]
            ys = [r["measured_ms"] for r in rs if r["measured"]]
            err = [r["p90_ms"] - r["measured_ms"] for r in rs if r["measured"]]
            if xs:
                ax.errorbar(xs, ys, yerr=[[0] * len(err), err], fmt="o" + style, color=color, ms=4,
                            capsize=2, label=strategy)  # fmt: skip
            px = [r["uplink_mbps"] for r in rs if not r["measured"] and r["predicted_ms"]]
            py = [r["predicted_ms"] for r in rs if not r["measured"] and r["predicted_ms"]]
            if px:
                ax.plot(px, py, "o", mfc="none", color=color, label=f"{strategy} (predicted, not run)")
        mine = sorted((r for r in recs if r["strategy"] == "splitdnn"), key=lambda r: r["uplink_mbps"])
        ax.plot([r["uplink_mbps"] for r in mine], [r["predicted_ms"] for r in mine], "x", color="tab:blue",
                alpha=0.6, label="splitdnn predicted")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("uplink bandwidth (Mbit/s)")
        ax.set_ylabel("end-to-end latency (ms), median, bar to p90")
        ax.set_title(
            f"{model} {recs[0]['input_shape']}: measured through the real client and server\n"
            f"device emulated (slowdown x{slowdown:g}), link: {doc['settings']['link']}",
            fontsize=9,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"bench_{model}_x{slowdown:g}.png"
        _save(fig, plt, path)
        paths.append(path)
    return paths


def plot_change(change: Mapping[str, Any], path: str | Path) -> Path:
    """Latency of each request over time, coloured by its cut, with the uplink rate and the steps."""
    from splitdnn.plots import _pyplot

    plt = _pyplot()
    reqs = change["records"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    labels = sorted({r["cut_label"] for r in reqs})
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        rs = [r for r in reqs if r["cut_label"] == label and r["ok"]]
        ax.plot([r["start_s"] for r in rs], [r["latency_ms"] for r in rs], "o", ms=3, color=cmap(i % 10),
                label=label[:40])  # fmt: skip
        ax2.plot([r["start_s"] for r in rs], [i] * len(rs), "|", color=cmap(i % 10), ms=10)
    bad = [r for r in reqs if not r["ok"]]
    if bad:
        ax.plot([r["start_s"] for r in bad], [r["latency_ms"] for r in bad], "x", color="red", label="failed")
    for st in change["steps"]:
        for a in (ax, ax2):
            a.axvline(st["at_s"], color="grey", ls="--", lw=1)
        if st["replan_s"] is not None:
            ax.axvline(st["at_s"] + st["replan_s"], color="tab:purple", ls=":", lw=1)
    rate = ax.twinx()
    times = [s["at_s"] for s in change["schedule_steps"]] + [change["duration_s"]]
    mbps = [s["mbps"] for s in change["schedule_steps"]]
    rate.step(times, [*mbps, mbps[-1]], where="post", color="grey", alpha=0.5)
    rate.set_yscale("log")
    rate.set_ylabel("uplink Mbit/s (grey)")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7, loc="upper left")
    ax2.set_yticks(range(len(labels)), [lb[:24] for lb in labels], fontsize=6)
    ax2.set_xlabel("time since start (s); dashed: bandwidth step, dotted: first request on the new plan")
    ax.set_title(
        f"{change['model']} x{change['slowdown']:g}: per-request latency and cut over a bandwidth change "
        f"({change['schedule']})",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, plt, Path(path))
    return Path(path)


def _save(fig: Any, plt: Any, path: Path) -> None:
    save_figure(fig, plt, path, dpi=110, hint="; choose a writable --out-dir")


def write_results(doc: Mapping[str, Any], out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``bench.json``, ``bench.md`` and the plots into ``out_dir`` (created); return the paths."""
    import json

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "bench.json", out / "bench.md"]
        paths[0].write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        paths[1].write_text(format_markdown(doc), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write results to {str(out)!r}: {exc}; choose a writable --out-dir"
        ) from exc
    if plots:
        # the plots of an earlier run in this folder (other models, a change run) would pass for this one's
        for stale in [*out.glob("bench_*_x*.png"), out / "change.png"]:
            stale.unlink(missing_ok=True)
        if doc["records"]:
            paths += plot_grid(doc, out)
        if "change" in doc:
            paths.append(plot_change(doc["change"], out / "change.png"))
    return paths
