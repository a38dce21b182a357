"""Pure arithmetic of profiling: latency statistics, fitting node times to measured segments, errors.

stdlib only, so the solver and reports can use it without torch. The profiler measures; this module
decides what the measurements mean.

Calibration ("segment" methods). Per-node times measured in isolation never add up to a fused run:
a node timed alone on a hot cache, with its Python dispatch overhead, is not the same node inside
the model. So the profiler also measures a few *anchored heads*: the topological prefix of the first
``p`` compute nodes run as one piece. Positions are counts of compute nodes in topological order:
anchor ``p`` holds the nodes ``[0, p)``; the full model is anchor ``n``. :func:`fit_prefix` turns the
measured times into a non-decreasing prefix curve ``P(p)`` with ``P(n) = fused total``, and
:func:`distribute` spreads each segment ``P(p_j) - P(p_{j-1})`` over its nodes in proportion to their
isolated times. Then the calibrated times of any anchored head sum to ``P(p_j)`` exactly, and all of
them sum to the fused total.

Two fits of ``P(p_j)`` are offered (``CALIBRATION_METHODS``):

``segment-prefix``
    ``P(p) = head(p)``: anchored heads are predicted exactly; a tail is predicted as
    ``total - head``, so any per-piece overhead (``head + tail - total``) lands on tails.
``segment-head-tail``
    least squares over the head AND the tail measured at each anchor: the two equations
    ``P = head(p)`` and ``total - P = tail(p)`` give ``P = (head(p) + total - tail(p)) / 2``, which
    splits that overhead evenly between head and tail predictions. It costs one more piece timing
    per anchor.

``segment-direct`` (the default)
    every segment ``(p_{j-1}, p_j]`` is run as its own piece on its real inputs and timed directly;
    ``P`` is the running sum of the segment times, scaled so that ``P(n)`` is the fused total (which
    spreads the per-piece overhead, ``sum of segments - total``, in proportion). A segment's time is
    measured, not the difference of two large noisy prefix times, so short tails (a classifier
    after a long backbone) are predicted from their own measurement instead of ``total - head``,
    where the prefix fits clamp them to almost nothing. It is also cheaper: the segments together
    cost about one model run per repeat, where the prefixes cost about ``segments / 2``.

Measured (one shared 2-core CPU, 1 thread, batch 1, every chain cut of AlexNet, ResNet-18 and
MobileNetV2 timed once and both fits evaluated on the same numbers, 2-fold over alternate cuts):
both fits cut the MAPE of summing isolated times from 12-55% to 1-10% on heads and 4-27% on tails;
head-tail lowered tail MAPE and the max error in most folds but raised head MAPE, for a tie on the
mean. ``python scripts/bench_calibration.py`` over every chain cut of the zoo then showed where the
prefix fits fail: the tails at the end of VGG-16 and ResNet-18 (a few ms of classifier after
hundreds of ms of backbone) were predicted as ~0 ms, MAPE 22% and 146% on tails, worse than summing
isolated times. That is why ``segment-direct`` replaced ``segment-prefix`` as the default; the
results in ``docs/benchmarks.md`` compare it with the uncalibrated sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

from splitdnn.errors import ConfigError
from splitdnn.schema import Calibration, LatencyStats, Profile

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CHECK_CAP",
    "choose_positions",
    "distribute",
    "fit_prefix",
    "isotonic",
    "latency_stats",
    "noise_note",
    "percentile",
    "prediction_errors",
    "segment_prefix",
    "split_prediction",
]

CALIBRATION_METHODS = ("segment-direct", "segment-prefix", "segment-head-tail")

#: held-out chain cuts checked by default: enough for a stable error figure, few enough that the
#: check (a head and a tail per cut, about one model run each) does not dominate profiling time:
#: ResNet-50 at batch 1 on one busy CPU thread profiles in about half a minute.
DEFAULT_CHECK_CAP = 8

#: a fused run whose p90 exceeds its p10 by this factor, or held-out head/tail predictions that
#: miss by more than this fraction of the whole model's time (median), mean the machine was busy
#: while profiling (another process, more torch threads than free cores). Relative to the whole
#: model, not to each piece: a 50 us head missed by 100% is noise nobody needs to hear about.
NOISY_SPREAD = 1.5
NOISY_MISS = 0.1


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile (0..1) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    x = q * (len(sorted_values) - 1)
    lo = math.floor(x)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = x - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def latency_stats(samples_s: Sequence[float], *, factor: float = 1.0) -> LatencyStats:
    """Median, p10 and p90 in milliseconds of timings given in seconds, multiplied by ``factor``."""
    if not samples_s:
        return LatencyStats.zero()
    ms = sorted(max(0.0, s) * 1e3 * factor for s in samples_s)
    p10, med, p90 = percentile(ms, 0.1), percentile(ms, 0.5), percentile(ms, 0.9)
    # float rounding of the interpolation must not break p10 <= median <= p90
    p10 = min(p10, med)
    p90 = max(p90, med)
    return LatencyStats(median_ms=med, p10_ms=p10, p90_ms=p90, repeats=len(ms))


def isotonic(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool-adjacent-violators, equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    out: list[float] = []
    for mean, count in blocks:
        out.extend([mean] * int(count))
    return out


def fit_prefix(
    head_ms: Sequence[float],
    total_ms: float,
    *,
    tail_ms: Sequence[float] | None = None,
    method: str = "segment-prefix",
) -> list[float]:
    """Prefix times ``P`` at the interior anchors (in position order), non-decreasing, within
    ``[0, total_ms]``; the full model's ``P = total_ms`` is implied and not returned."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method must be one of {CALIBRATION_METHODS}, found {method!r}")
    if method == "segment-head-tail":
        if tail_ms is None or len(tail_ms) != len(head_ms):
            raise ConfigError("segment-head-tail calibration needs one tail time per anchored head")
        targets = [(h + total_ms - t) / 2.0 for h, t in zip(head_ms, tail_ms, strict=True)]
    else:
        targets = list(head_ms)
    clamped = [min(max(t, 0.0), total_ms) for t in targets]
    # every value is <= total_ms, so the fixed end point never needs pooling
    return isotonic(clamped)


def segment_prefix(segment_ms: Sequence[float], total_ms: float) -> list[float]:
    """Prefix times ``P`` at every anchor (the last is the full model, ``P = total_ms``) from directly
    measured segment times, scaled so that they add up to the fused total."""
    if not segment_ms:
        raise ValueError("at least one segment time is required")
    seg = [max(0.0, s) for s in segment_ms]
    whole = sum(seg)
    scale = total_ms / whole if whole > 0 else 0.0
    out, run = [], 0.0
    for s in seg:
        run += s * scale
        out.append(min(run, total_ms))
    out[-1] = total_ms
    return out


def distribute(
    isolated_ms: Sequence[float], positions: Sequence[int], prefix_ms: Sequence[float]
) -> list[float]:
    """Calibrated time of each compute node.

    ``positions`` are increasing anchor positions ending with ``len(isolated_ms)``; ``prefix_ms`` the
    fitted prefix time at each (non-decreasing). Segment ``(p_{j-1}, p_j]`` gets ``P_j - P_{j-1}``,
    shared in proportion to its nodes' isolated times (equally when they are all zero).
    """
    n = len(isolated_ms)
    if not positions or positions[-1] != n:
        raise ValueError(f"anchor positions must end with the full model ({n}), found {list(positions)}")
    if len(positions) != len(prefix_ms):
        raise ValueError("one prefix time per anchor position is required")
    out = [0.0] * n
    prev_p, prev_t = 0, 0.0
    for p, t in zip(positions, prefix_ms, strict=True):
        if p <= prev_p:
            raise ValueError(f"anchor positions must increase, found {list(positions)}")
        seg = max(0.0, t - prev_t)
        weights = [max(0.0, w) for w in isolated_ms[prev_p:p]]
        wsum = sum(weights)
        for i, w in enumerate(weights):
            out[prev_p + i] = seg * (w / wsum if wsum > 0 else 1.0 / len(weights))
        prev_p, prev_t = p, max(prev_t, t)
    return out


def choose_positions(
    n: int,
    chain_positions: Sequence[int],
    *,
    segments: int,
    check_cap: int,
    valid: Callable[[int], bool] | None = None,
) -> tuple[list[int], list[int]]:
    """Pick anchor positions (fit) and check positions (held out) among ``1..n``.

    Chain cuts are preferred for anchors; up to ``check_cap`` chain cuts (at most half of them, at
    least one when there are any and ``check_cap > 0``) are held out to measure the error. Large gaps
    between anchors (a stretch of a DAG without chain cuts) are then filled with plain topological
    prefixes, never with a held-out position. ``valid(p)`` says whether the prefix of ``p`` nodes can
    be cut at all (a plan must not separate an in-place update from a reader); chain positions it
    refuses are dropped. Returns ``(anchors ending with n, checks)``, both sorted.
    """
    if segments < 1:
        raise ConfigError(f"segments must be >= 1, found {segments}")
    ok = valid or (lambda p: True)
    chain = sorted({p for p in chain_positions if 1 <= p < n and ok(p)})
    budget = segments - 1  # interior anchors; the full model is always the last one
    n_check = min(check_cap, math.ceil(len(chain) / 2)) if check_cap > 0 else 0
    n_anchor = min(budget, len(chain) - n_check)
    anchors = _spread(chain, n_anchor)
    rest = [p for p in chain if p not in set(anchors)]
    checks = _spread(rest, min(n_check, len(rest)))
    blocked = set(anchors) | set(checks)
    unfillable: set[tuple[int, int]] = set()
    while len(anchors) < budget:
        edges = [0, *sorted(anchors), n]
        gaps = [(b - a, a, b) for a, b in pairwise(edges) if (a, b) not in unfillable and b - a >= 2]
        if not gaps:
            break
        _, a, b = max(gaps)
        mid = (a + b) / 2
        candidates = sorted((p for p in range(a + 1, b) if p not in blocked), key=lambda p: (abs(p - mid), p))
        pick = next((p for p in candidates if ok(p)), None)
        if pick is None:
            unfillable.add((a, b))
            continue
        anchors.append(pick)
        blocked.add(pick)
    return sorted({*anchors, n}), sorted(checks)


def _spread(items: Sequence[int], k: int) -> list[int]:
    """``k`` items spread evenly over the sorted ``items``."""
    if k <= 0:
        return []
    if k >= len(items):
        return list(items)
    m = len(items)
    idx = sorted({min(m - 1, int((i + 0.5) * m / k)) for i in range(k)})
    return [items[i] for i in idx]


def prediction_errors(
    predicted_ms: Sequence[float], measured_ms: Sequence[float]
) -> tuple[float, float, float]:
    """``(mape_pct, max_abs_error_ms, median_abs_error_ms)``; zeros when there is nothing to compare.

    Measurements of 0 ms count in the absolute errors but not in the percentage.
    """
    if len(predicted_ms) != len(measured_ms):
        raise ValueError("one prediction per measurement is required")
    if not predicted_ms:
        return 0.0, 0.0, 0.0
    abs_err = [abs(p - m) for p, m in zip(predicted_ms, measured_ms, strict=True)]
    pct = [e / m * 100.0 for e, m in zip(abs_err, measured_ms, strict=True) if m > 0]
    mape = sum(pct) / len(pct) if pct else 0.0
    return mape, max(abs_err), percentile(sorted(abs_err), 0.5)


def split_prediction(profile: Profile, cut_after: str, *, calibrated: bool = True) -> tuple[float, float]:
    """Predicted ``(head_ms, tail_ms)`` of the cut after compute node ``cut_after``.

    The head is the topological prefix of compute nodes up to and including ``cut_after``. With
    ``calibrated=False`` the isolated medians are added up instead (what a naive profiler predicts).
    """
    compute = profile.compute_nodes
    names = [c.name for c in compute]
    if cut_after not in names:
        raise ConfigError(f"{cut_after!r} is not a compute node of profile {profile.model!r}")
    k = names.index(cut_after) + 1
    times = [c.calibrated_ms if calibrated else c.latency.median_ms for c in compute]
    return sum(times[:k]), sum(times[k:])


def noise_note(total: LatencyStats, calibration: Calibration) -> str:
    """A one-line warning when the measurements look unreliable, else ``""``."""
    problems = []
    if total.repeats >= 3 and total.p90_ms > NOISY_SPREAD * total.p10_ms:
        problems.append(f"the whole model took {total.p10_ms:.3g}-{total.p90_ms:.3g} ms (p10-p90)")
    if calibration.cuts_checked and calibration.median_abs_error_ms > NOISY_MISS * total.median_ms:
        problems.append(
            f"predicted head/tail times missed the measured ones by {calibration.median_abs_error_ms:.3g} "
            f"ms (median over {calibration.cuts_checked} held-out cuts; MAPE {calibration.mape_pct:.0f}%) "
            f"on a model that takes {total.median_ms:.3g} ms"
        )
    if not problems:
        return ""
    return (
        "timings look unreliable: " + "; ".join(problems) + ". The machine may be busy or have fewer "
        "free cores than torch threads; profile on an idle machine, with fewer threads, or more repeats"
    )
