"""Codec choice per boundary tensor, from the profiles' codec measurements (stdlib only).

:func:`codec_tensor_cost` builds a :data:`~splitdnn.solver.TensorCostFn`: for each tensor hop (a value
crossing link i from tier i to tier i + 1) it prices every allowed codec measured on that node as

    encode_ms (tier i's profile) + uplink_ms(wire_bytes) + decode_ms (tier i + 1's profile)

and keeps the cheapest whose measured error is within the budget. ``raw`` is always a candidate and
costs what it always did (the raw value's bytes, no encode or decode time), so an unmeasured tensor,
an empty allow-list or a zero budget gives exactly the old, uncompressed plans. Because the choice
is a fixed function of the hop, every solver (and the brute-force oracle) optimises the cut *and* the
codecs together: the cut's cost already is the best codec's cost.

Where the receiver's profile lacks a codec's measurement, its decode time is the sender's
measurement (the same machine kind is the common case; the sender's figure is the best estimate).

An accuracy budget (``accuracy=`` an :class:`~splitdnn.solver.AccuracyTable`, ``max_accuracy_loss=``
points of top-1) narrows the candidates further: a lossy codec must have a measured loss within the
budget at that very node (see ``_accuracy``); lossless codecs stay allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from splitdnn.errors import ConfigError
from splitdnn.schema import CodecResult, NodeProfile, Profile
from splitdnn.solver._accuracy import AccuracyTable, check_budget
from splitdnn.solver._problem import TensorCostFn, TensorHop, WireCost, derived

__all__ = [
    "ERROR_METRICS",
    "CodecChoice",
    "codec_tensor_cost",
    "explain_codec",
    "measured_codecs",
    "unusable_codecs",
]

#: what ``max_error`` bounds: relative MSE, max abs error, or cosine distance (1 - cosine)
ERROR_METRICS = ("rel_mse", "max_abs", "cosine")


@dataclass(frozen=True)
class CodecChoice:
    """Why a codec was chosen for one hop (see :func:`explain_codec`)."""

    codec: str
    wire_bytes: int
    cost_ms: float  # encode + uplink + decode
    error: float  # the budgeted metric's measured value (0 for raw)
    metric: str
    max_error: float | None
    candidates: int  # codecs that were within the budget and compared, raw included
    accuracy_loss_pts: float | None = None  # measured top-1 loss of the chosen codec here (accuracy budget)
    max_accuracy_loss_pts: float | None = None  # the accuracy budget, None = none
    accuracy_table: str = ""  # where the accuracy table came from


#: the wire bytes of a hop no allowed codec fits under ``max_wire_bytes``: priced so no plan sends it
OVER_CAP_BYTES = 1 << 50


def error_of(result: CodecResult, metric: str) -> float:
    if metric == "rel_mse":
        return result.rel_mse
    if metric == "max_abs":
        return result.max_abs_error
    if result.max_abs_error == 0.0:  # decoded exactly: the cosine's last bit (0.9999999999999998) is
        return 0.0  # float rounding, and it made lossless codecs lossy under a budget of 0
    return max(0.0, 1.0 - result.cosine)


def measured_codecs(profiles: Sequence[Profile]) -> tuple[str, ...]:
    """Every codec spec measured on any node of any of ``profiles``, in first-seen order."""
    seen: dict[str, None] = {}
    for p in profiles:
        for n in p.nodes:
            for c in n.codecs:
                seen.setdefault(c.spec, None)
    return tuple(seen)


def unusable_codecs(
    profiles: Sequence[Profile], specs: Sequence[str], *, max_error: float | None, metric: str = "rel_mse"
) -> list[str]:
    """Why each of ``specs`` could never be chosen with these profiles, one phrase per such codec.

    A codec is unusable when no node of ``profiles`` measured it, or when every measurement's
    ``metric`` exceeds ``max_error`` (None: no budget). ``raw`` is always usable. The tensor cost
    silently leaves such codecs out, which is what a library caller may want; a user who named the
    codec asked for it, and is told.
    """
    smallest: dict[str, float] = {}
    for p in profiles:
        for n in p.nodes:
            for c in n.codecs:
                smallest[c.spec] = min(error_of(c, metric), smallest.get(c.spec, math.inf))
    why = []
    for spec in dict.fromkeys(specs):
        if spec == "raw":
            continue
        if spec not in smallest:
            why.append(f"{spec} was not measured in the profiles")
        elif max_error is not None and not smallest[spec] <= max_error:
            why.append(
                f"{spec}'s smallest measured {_METRIC_LABEL[metric]} is {smallest[spec]:.3g}, over the "
                f"error budget {max_error:g}"
            )
    return why


#: how each error metric reads in a message
_METRIC_LABEL = {"rel_mse": "relative MSE", "max_abs": "max abs error", "cosine": "1 - cosine"}


def codec_tensor_cost(
    profiles: Sequence[Profile] = (),
    *,
    allowed: Sequence[str] | None = None,
    max_error: float | None = None,
    metric: str = "rel_mse",
    accuracy: AccuracyTable | None = None,
    max_accuracy_loss: float | None = None,
    max_wire_bytes: int | None = None,
) -> TensorCostFn:
    """A tensor cost that picks, per hop, the cheapest allowed codec within the error budget.

    ``allowed``: codec specs that may be used (None = every codec measured in the profiles; ``raw`` is
    always allowed). ``max_error``: budget on ``metric`` (``rel_mse``, ``max_abs`` or ``cosine`` =
    1 - cosine similarity); None = no budget, any measured codec may be chosen. ``accuracy`` and
    ``max_accuracy_loss`` (together): only codecs whose measured top-1 loss at the hop's node is within
    that many points, or lossless ones. The hop's sender and receiver profiles provide the
    measurements, so ``profiles`` is only used to check the options (and that ``accuracy`` was
    measured on their model). ``max_wire_bytes``: only codecs (raw included) whose frame fits, as a
    message size cap demands; a hop nothing fits is priced at :data:`OVER_CAP_BYTES`, so no plan sends it.
    """
    if max_wire_bytes is not None and (
        isinstance(max_wire_bytes, bool) or not isinstance(max_wire_bytes, int) or max_wire_bytes < 0
    ):
        raise ConfigError(f"max_wire_bytes must be an integer >= 0 or None, found {max_wire_bytes!r}")
    if metric not in ERROR_METRICS:
        raise ConfigError(f"unknown error metric {metric!r}; expected one of {', '.join(ERROR_METRICS)}")
    if max_error is not None and (
        isinstance(max_error, bool)
        or not isinstance(max_error, (int, float))
        or not math.isfinite(max_error)
        or max_error < 0
    ):
        raise ConfigError(f"max_error must be a finite number >= 0 or None, found {max_error!r}")
    if isinstance(allowed, str):
        raise ConfigError(f"allowed must be a sequence of codec specs, found the string {allowed!r}")
    allow = None if allowed is None else frozenset(allowed)
    acc = _accuracy_budget(accuracy, max_accuracy_loss)
    if acc is not None and profiles:
        acc[0].check_profiles(profiles)

    # a hop's candidates do not depend on its link: kept per (sender, receiver, node), holding the
    # two profiles so that an id is not reused while its entry lives; dropped whole when full
    memo: dict[tuple[int, int, str], tuple[Profile, Profile, tuple[_Candidate, ...]]] = {}

    def cost(hop: TensorHop) -> WireCost:
        key = (id(hop.sender), id(hop.receiver), hop.node)
        hit = memo.get(key)
        if hit is None or hit[0] is not hop.sender or hit[1] is not hop.receiver:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            hit = (hop.sender, hop.receiver, _candidates(hop, allow, max_error, metric, acc))
            memo[key] = hit
        if max_wire_bytes is None:
            return _cheapest(hop, hit[2])[0]
        fits = tuple(c for c in hit[2] if c[1] <= max_wire_bytes)
        if hop.nbytes <= max_wire_bytes:
            return _cheapest(hop, fits)[0]
        if not fits:
            return WireCost(OVER_CAP_BYTES, 0.0, 0.0, "raw")
        return _cheapest(hop, fits, raw=False)[0]

    return cost


def _accuracy_budget(
    accuracy: AccuracyTable | None, max_accuracy_loss: float | None
) -> tuple[AccuracyTable, float] | None:
    if accuracy is None and max_accuracy_loss is None:
        return None
    if accuracy is None or max_accuracy_loss is None:
        raise ConfigError(
            "an accuracy budget needs both the measured table (accuracy=, --accuracy-table) and the "
            "budget in top-1 points (max_accuracy_loss=, --max-accuracy-loss)"
        )
    if not isinstance(accuracy, AccuracyTable):
        raise ConfigError(f"accuracy must be an AccuracyTable, found {type(accuracy).__name__}")
    return accuracy, check_budget(max_accuracy_loss)


#: (spec, wire_bytes, encode_ms, decode_ms, error): one allowed codec measured on a hop's value
_Candidate = tuple[str, int, float, float, float]

#: hop entries a tensor cost keeps (a few models' nodes) before it drops them all
_MEMO_MAX = 4096


def _candidates(
    hop: TensorHop,
    allow: frozenset[str] | None,
    max_error: float | None,
    metric: str,
    acc: tuple[AccuracyTable, float] | None,
) -> tuple[_Candidate, ...]:
    """The codecs measured on ``hop``'s value that the options allow, in the sender's order (raw aside)."""
    sender = _node(hop.sender, hop.node)
    receiver = _node(hop.receiver, hop.node)
    found: list[_Candidate] = []
    for r in sender.codecs if sender is not None else ():
        if r.spec == "raw" or (allow is not None and r.spec not in allow):
            continue
        err = error_of(r, metric)
        if max_error is not None and err > max_error:
            continue
        if acc is not None and not acc[0].allows(hop.node, r.spec, acc[1]):
            continue
        other = receiver.codec(r.spec) if receiver is not None else None
        dec = other.decode_ms if other is not None else r.decode_ms
        found.append((r.spec, r.wire_bytes, r.encode_ms, dec, err))
    return tuple(found)


def _cheapest(
    hop: TensorHop, candidates: tuple[_Candidate, ...], *, raw: bool = True
) -> tuple[WireCost, float, float]:
    """``(cost, encode + uplink + decode ms, error)`` of the cheapest of raw (unless ``raw`` is False:
    then ``candidates`` must not be empty) and ``candidates``.

    Ties go to fewer bytes, then the smaller error, then the spec's name: a fixed order, so every
    solver sees the same choice.
    """
    uplink_ms = hop.link.uplink_ms
    best_key = (uplink_ms(hop.nbytes), hop.nbytes, 0.0, "raw") if raw else (math.inf, 0, 0.0, "")
    best: _Candidate | None = None
    for c in candidates:
        spec, wire, enc, dec, err = c
        key = (enc + uplink_ms(wire) + dec, wire, err, spec)
        if key < best_key:
            best, best_key = c, key
    if best is None:
        return WireCost(hop.nbytes, 0.0, 0.0, "raw"), best_key[0], 0.0
    return WireCost(best[1], best[2], best[3], best[0]), best_key[0], best[4]


def _node(profile: Profile, name: str) -> NodeProfile | None:
    return derived(profile, "nodes_by_name", lambda p: {n.name: n for n in p.nodes}).get(name)


def explain_codec(
    hop: TensorHop,
    *,
    allowed: Sequence[str] | None = None,
    max_error: float | None = None,
    metric: str = "rel_mse",
    accuracy: AccuracyTable | None = None,
    max_accuracy_loss: float | None = None,
) -> CodecChoice:
    """The choice :func:`codec_tensor_cost` makes for ``hop``, with the figures behind it."""
    allow = None if allowed is None else frozenset(allowed)
    acc = _accuracy_budget(accuracy, max_accuracy_loss)
    candidates = _candidates(hop, allow, max_error, metric, acc)
    best, cost_ms, err = _cheapest(hop, candidates)
    n = len(candidates) + 1  # raw is always compared
    if acc is None:
        return CodecChoice(best.codec, best.wire_bytes, cost_ms, err, metric, max_error, n)
    table, budget = acc
    loss = 0.0 if best.codec == "raw" else table.loss(hop.node, best.codec)
    return CodecChoice(
        best.codec, best.wire_bytes, cost_ms, err, metric, max_error, n, loss, budget, table.source
    )
