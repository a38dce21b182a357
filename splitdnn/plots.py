"""Plots of sweeps (matplotlib, an optional extra: ``pip install splitdnn[plot]``)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from splitdnn.errors import ConfigError

__all__ = ["plot_sweep", "save_figure"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "plotting needs matplotlib, which is not installed; run `pip install 'splitdnn[plot]'` "
            "or drop --plot"
        ) from exc
    return plt


def plot_sweep(points: Sequence[Any], path: str | Path, *, title: str = "") -> None:
    """Latency against uplink bandwidth for the chosen plan, edge-only and cloud-only.

    Each change of the chosen cut is marked and labelled with the cut's boundary nodes.
    """
    if not points:
        raise ConfigError("nothing to plot: the sweep has no points")
    plt = _pyplot()
    x = [pt.uplink_mbps for pt in points]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(x, [pt.edge_only.cost.total_ms for pt in points], "--", label="edge-only", color="tab:green")
    ax.plot(x, [pt.cloud_only.cost.total_ms for pt in points], "--", label="cloud-only", color="tab:red")
    ax.plot(x, [pt.plan.cost.total_ms for pt in points], "-o", ms=3, label="splitdnn plan", color="tab:blue")
    previous = None
    for pt in points:
        cut = (
            tuple(pt.plan.boundary_nodes)
            if pt.plan.strategy not in ("edge-only", "cloud-only")
            else (pt.plan.strategy,)
        )
        if cut != previous:
            label = ", ".join(cut[:2]) + ("…" if len(cut) > 2 else "")
            ax.annotate(
                label,
                (pt.uplink_mbps, pt.plan.cost.total_ms),
                textcoords="offset points",
                xytext=(4, 8),
                fontsize=7,
                rotation=30,
                color="tab:blue",
            )
            ax.plot([pt.uplink_mbps], [pt.plan.cost.total_ms], "v", color="black", ms=6)
            previous = cut
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("uplink bandwidth (Mbit/s)")
    ax.set_ylabel("predicted latency (ms)")
    slowdown = points[0].plan.slowdown
    title = title or "latency against bandwidth"
    if slowdown != 1.0 and "slowdown" not in title:
        title += f" (device emulated: slowdown x{slowdown:g})"
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, plt, Path(path), dpi=120)


def save_figure(fig: Any, plt: Any, path: Path, *, dpi: int, hint: str = "") -> None:
    """Write ``fig`` to ``path`` and close it; a path that cannot be written is a ConfigError."""
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise ConfigError(f"cannot write plot {str(path)!r}: {exc}{hint}") from exc
    finally:
        plt.close(fig)
