"""Measures a traced model on this machine and returns its :class:`~splitdnn.schema.Profile` (torch).

What is measured, in order (a progress bar on stderr shows each stage):

1. ``record``: one run through a :class:`torch.fx.Interpreter` keeps every node's real input and
   output values; sizes and dtypes of every produced tensor come from it.
2. ``nodes``: every compute node is timed alone on its recorded inputs (warm-up, then ``repeats``
   timed calls) -> ``NodeProfile.latency``.
3. ``anchors``: a few topological prefixes ("anchored heads", chain cuts preferred) and the whole
   model are timed as fused pieces, round-robin so that load changes on a shared machine hit all of
   them alike. The per-node times are fitted to them (:mod:`splitdnn.calibrate`) -> ``calibrated_ms``.
4. ``codecs``: every candidate boundary tensor's real value (copied as numpy float32 on the CPU
   the moment its node produced it, before any in-place node can overwrite it) is encoded and decoded
   with each codec of ``codecs`` -> ``NodeProfile.codecs`` (:mod:`splitdnn.codec`); then the encode
   is timed again where the edge client runs it, inside a run of the model right after the node
   produced the value (its copy to a contiguous CPU array included), and that time is the one kept:
   on caches the model just filled, an encode costs more than on an array just encoded (1 thread,
   ``shuffle+zstd``: AlexNet's 256x6x6 pooled output 0.15 ms back to back, 0.53 ms inside a run;
   ViT-Ti's 192x14x14 patch embedding 0.34 / 0.72 ms; a transposed value's ``raw`` 0.02 / 0.09 ms,
   the copy to contiguous memory; MiB-sized tensors alike either way). ``codec_nodes``
   says which nodes are candidates: ``"all"`` (default: the placeholders and every compute node),
   ``"chain"`` (the placeholders and the chain cuts), or a list of node names; only values that
   are a single float32 tensor are measured. Encode and decode times are medians of
   ``codec_repeats`` runs (the encode's: of that many model runs per codec; default 1: a boundary
   tensor is encoded once per request, cold; numpy and single-threaded zstd), multiplied by
   ``slowdown`` like every time in the profile: the device's profile prices the encode and the
   server's the decode. ``codecs=()`` measures nothing.
5. ``check``: chain cuts *not* used in the fit are timed as head and tail pieces (the tail on the
   head's real outputs) and compared with the calibrated prediction -> ``Profile.calibration``.

Every stored time is multiplied by the device-emulation ``slowdown`` factor. Timing runs under
``torch.inference_mode`` with the model in eval mode; the model's mode, device and the torch thread
count are restored afterwards. ``timer`` is injectable (seconds, like :func:`time.perf_counter`) so
tests can drive the whole procedure with a virtual clock.

Device emulation: an emulated device (``slowdown`` f > 1) pads each piece of work with a sleep of
(f - 1) x that work (``SplitClient(emulate_slowdown=f)``), so its every request starts on a core that
has just idled for most of the last one. On some hosts that computes markedly slower than back to
back (measured in ``docs/benchmarks.md``, "An emulated device after its padding's idle"). With
``emulated_idle`` an emulated profile first times the whole model
alternately back to back and after the idle its padding leaves (``idle`` stage,
:data:`IDLE_MIN_ROUNDS` rounds at least) and multiplies every compute time it stores (nodes,
anchors, checks, ``total``; not the codecs' times: the encode follows the head back to back) by the
median of the rounds' ratios, ``idle_factor``, which it records. Off by default: against real
requests it priced edge-only better but heads worse (a short head idles less than the whole model),
and its mean error was no better; timing every fused piece after its own idle instead priced heads
higher still (the same docs section has the numbers).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from splitdnn import codec as _codec
from splitdnn import graph
from splitdnn._measure import (
    SCALAR_BYTES,
    Session,
    Timer,
    check_cuda_index,
    cpu_model,
    cuttable,
    node_callable,
    output_name,
    param_bytes,
    prepare_cut,
    prepare_segment,
    record_values,
    session,
    target_str,
    tensor_metas,
    time_after_idle,
    time_each,
    time_encodes_in_run,
)
from splitdnn.calibrate import (
    CALIBRATION_METHODS,
    DEFAULT_CHECK_CAP,
    choose_positions,
    distribute,
    fit_prefix,
    latency_stats,
    noise_note,
    prediction_errors,
    segment_prefix,
)
from splitdnn.codec._measure import check_specs as check_codec_specs
from splitdnn.errors import CodecError, ConfigError
from splitdnn.progress import Progress, ProgressArg
from splitdnn.schema import (
    PROFILE_SCHEMA_VERSION,
    Calibration,
    CodecResult,
    LatencyStats,
    MachineInfo,
    NodeProfile,
    Profile,
)

__all__ = [
    "SCALAR_BYTES",
    "CODEC_NODE_POLICIES",
    "DEFAULT_CODECS",
    "CutTiming",
    "ProfileRun",
    "ProgressArg",
    "Timer",
    "check_slowdown",
    "machine_info",
    "measure_cuts",
    "profile",
    "profile_model",
    "profile_model_run",
    "tensor_metas",
]

#: rounds of the ``idle`` stage at least (each one back-to-back run, the padding's sleep and one
#: run after it): few repeats gave a single burst of load the factor
IDLE_MIN_ROUNDS = 5
#: the rounds' ratios spread over more than this share of the factor (lowest to highest; from 10
#: rounds on, the extremes' neighbours): warn
IDLE_SPREAD = 0.3


DEFAULT_CODECS = _codec.DEFAULT_CODECS
CODEC_NODE_POLICIES = ("all", "chain")


@dataclass(frozen=True)
class CutTiming:
    """Measured times of the two pieces of one cut (slowdown applied)."""

    cut: str  # last compute node of the head; the head is the topological prefix through it
    position: int  # compute nodes in the head
    head: LatencyStats
    tail: LatencyStats  # zero (repeats 0) when the tail was not measured or is empty


@dataclass(frozen=True)
class ProfileRun:
    """A profile and the raw measurements behind its calibration (for tests and reports)."""

    profile: Profile
    # the fitted measurements in position order, one per anchor: the head through the anchor for the
    # prefix methods (the last is the whole model); for segment-direct, ``head`` holds the time of
    # the segment that ends at the anchor
    anchors: tuple[CutTiming, ...]
    fitted_prefix_ms: tuple[float, ...]  # the fitted prefix time at each anchor (sum of calibrated_ms)
    checks: tuple[CutTiming, ...]  # held-out chain cuts measured to compute the calibration error
    wall_s: float  # wall-clock seconds the profiling took


# --------------------------------------------------------------------------------------------------
# public entry points


def profile_model(
    traced: graph.TracedModel,
    *,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    slowdown: float = 1.0,
    segments: int = 16,
    check_cuts: int | None = None,
    calibration: str = "segment-direct",
    progress: ProgressArg = True,
    notes: str = "",
    codecs: Sequence[str] | None = None,
    codec_nodes: str | Sequence[str] = "all",
    codec_repeats: int = 1,
    timer: Timer = time.perf_counter,
    emulated_idle: bool = False,
) -> Profile:
    """Profile ``traced`` on this machine; see the module docstring for what is measured.

    ``segments`` caps the fused pieces the calibration fits (the whole model included);
    ``check_cuts`` is how many held-out chain cuts measure its error (default: up to
    ``DEFAULT_CHECK_CAP``, at most half the chain cuts; 0 skips the check and fits on every chain cut).
    ``codecs`` (default :data:`DEFAULT_CODECS`; ``()`` for none), ``codec_nodes`` and
    ``codec_repeats`` choose what the ``codecs`` stage measures (module docstring).
    ``emulated_idle`` (needs ``slowdown`` > 1; off by default) measures how much slower the model
    computes after the idle the emulation pads its work with, and prices every compute time so
    (module docstring, "Device emulation"; ``Profile.idle_factor``).
    """
    return profile_model_run(
        traced,
        device=device,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        slowdown=slowdown,
        segments=segments,
        check_cuts=check_cuts,
        calibration=calibration,
        progress=progress,
        notes=notes,
        codecs=codecs,
        codec_nodes=codec_nodes,
        codec_repeats=codec_repeats,
        timer=timer,
        emulated_idle=emulated_idle,
    ).profile


def profile_model_run(
    traced: graph.TracedModel,
    *,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    slowdown: float = 1.0,
    segments: int = 16,
    check_cuts: int | None = None,
    calibration: str = "segment-direct",
    progress: ProgressArg = True,
    notes: str = "",
    codecs: Sequence[str] | None = None,
    codec_nodes: str | Sequence[str] = "all",
    codec_repeats: int = 1,
    timer: Timer = time.perf_counter,
    emulated_idle: bool = False,
) -> ProfileRun:
    """:func:`profile_model`, also returning the anchor and check measurements behind the fit."""
    _check_options(device=device, threads=threads, warmup=warmup, repeats=repeats, slowdown=slowdown)
    idle = _emulated_idle(emulated_idle, slowdown)
    idle_rounds = max(repeats, IDLE_MIN_ROUNDS)
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ConfigError(f"segments must be an integer >= 1 (the whole model is one), found {segments!r}")
    if check_cuts is not None and (
        isinstance(check_cuts, bool) or not isinstance(check_cuts, int) or check_cuts < 0
    ):
        raise ConfigError(f"check_cuts must be None (default) or an integer >= 0, found {check_cuts!r}")
    if calibration not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration must be one of {CALIBRATION_METHODS}, found {calibration!r}")

    specs = tuple(DEFAULT_CODECS if codecs is None else codecs)
    if isinstance(codecs, str) or not all(isinstance(c, str) for c in specs):
        raise ConfigError(
            f"codecs must be a sequence of codec specs such as ('raw', 'int8+zstd'), found {codecs!r}"
        )
    check_codec_specs(specs)
    if isinstance(codec_repeats, bool) or not isinstance(codec_repeats, int) or codec_repeats < 1:
        raise ConfigError(f"codec_repeats must be an integer >= 1, found {codec_repeats!r}")

    started = time.perf_counter()
    compute = [n.name for n in traced.compute_nodes()]
    n = len(compute)
    if n == 0:
        raise ConfigError(f"model {traced.name!r} has no compute nodes: there is nothing to profile")
    pos_of = {name: i + 1 for i, name in enumerate(compute)}  # cut after node -> compute nodes in head
    chain = [c for c in graph.chain_cuts(traced) if c in pos_of]
    anchor_pos, check_pos = choose_positions(
        n,
        [pos_of[c] for c in chain],
        segments=segments,
        check_cap=DEFAULT_CHECK_CAP if check_cuts is None else check_cuts,
        valid=lambda p: cuttable(traced, compute, p),
    )
    with_tails = calibration == "segment-head-tail"
    candidates = _codec_candidates(traced, codec_nodes, chain) if specs else set()
    bar = Progress(
        progress,
        label=f"profile {traced.name}",
        stages={
            "record": 1,
            **({"idle": idle_rounds} if idle else {}),
            "nodes": n,
            "anchors": repeats + 1,
            **({"codecs": len(candidates) + 1} if candidates else {}),
            **({"check": repeats + 1} if check_pos else {}),
        },
    )
    factor = float(slowdown)  # codec times; compute times also carry idle_factor
    idle_factor = 1.0
    with session(traced, device=device, threads=threads) as s:
        bar.stage("record")
        snapshots: dict[str, Any] = {}

        def keep(name: str, value: Any) -> None:
            if name in candidates and _is_float32_tensor(value):
                snapshots[name] = value.detach().to("cpu", copy=True).numpy()

        record, result = record_values(traced.module, s.inputs, keep)
        # sizes now: a later in-place node may overwrite a recorded value (never its shape)
        metas = {name: tensor_metas(value[2]) for name, value in record.items()}
        metas[output_name(traced)] = tensor_metas(result)
        bar.advance()

        if idle:
            bar.stage("idle")
            whole = prepare_cut(traced, compute, n, s.inputs).head
            back, after = time_after_idle(
                whole, padding=factor - 1, warmup=warmup, repeats=idle_rounds, timer=timer,
                sync=s.sync, tick=bar.advance,
            )  # fmt: skip
            del whole
            idle_factor, idle_note = _idle_factor(back, after)
            if idle_note:
                warnings.warn(f"profile of {traced.name!r}: {idle_note}", RuntimeWarning, stacklevel=2)
        compute_factor = factor * idle_factor

        bar.stage("nodes")
        fx_nodes = {node.name: node for node in traced.module.graph.nodes}
        isolated: dict[str, LatencyStats] = {}
        for name in compute:
            fn = node_callable(traced.module, fx_nodes[name], *record[name][:2])
            (node_samples,) = time_each([fn], warmup=warmup, repeats=repeats, timer=timer, sync=s.sync)
            isolated[name] = latency_stats(node_samples, factor=compute_factor)
            bar.advance()
        del record, result  # every activation of the model; pieces below prepare their own

        bar.stage("anchors")
        if calibration == "segment-direct":
            # every segment between consecutive anchors as its own piece, plus the fused model
            bounds = [0, *anchor_pos]
            fns = [prepare_segment(traced, compute, a, b, s.inputs) for a, b in pairwise(bounds)]
            fns.append(prepare_cut(traced, compute, n, s.inputs).head)
        else:
            cuts = [prepare_cut(traced, compute, p, s.inputs) for p in anchor_pos]
            fns = [c.head for c in cuts] + ([c.tail for c in cuts[:-1] if c.tail] if with_tails else [])
        samples = time_each(fns, warmup=warmup, repeats=repeats, timer=timer, sync=s.sync, tick=bar.advance)
        del fns  # their prepared activations
        stats = [latency_stats(x, factor=compute_factor) for x in samples]
        if calibration == "segment-direct":
            heads, tails, total = stats[:-1], [], stats[-1]
            prefix_ms = segment_prefix([h.median_ms for h in heads], total.median_ms)
        else:
            heads, tails = stats[: len(anchor_pos)], stats[len(anchor_pos) :]
            total = heads[-1]
            fitted = fit_prefix(
                [h.median_ms for h in heads[:-1]],
                total.median_ms,
                tail_ms=[t.median_ms for t in tails] if with_tails else None,
                method=calibration,
            )
            prefix_ms = [*fitted, total.median_ms]
        calibrated = distribute([isolated[c].median_ms for c in compute], anchor_pos, prefix_ms)

        codec_results: dict[str, tuple[CodecResult, ...]] = {}
        if candidates:
            bar.stage("codecs")
            for gnode in [c for c in traced.nodes if c.name in candidates]:
                arr = snapshots.pop(gnode.name, None)
                if arr is not None:
                    codec_results[gnode.name] = _codec.measure(
                        arr, specs, repeats=codec_repeats, factor=factor, timer=timer
                    )
                bar.advance()
            in_run = time_encodes_in_run(
                traced.module, s.inputs, list(codec_results), {spec: _encoder(spec) for spec in specs},
                repeats=codec_repeats, timer=timer, sync=s.sync,
            )  # fmt: skip
            codec_results = {
                name: tuple(_encode_in_run(r, in_run.get((name, r.spec)), factor) for r in results)
                for name, results in codec_results.items()
            }
            bar.advance()
        snapshots.clear()

        checks: list[CutTiming] = []
        if check_pos:
            bar.stage("check")
            checks = _measure_positions(
                traced, compute, check_pos, s, warmup=warmup, repeats=repeats,
                factor=compute_factor, timer=timer, tick=bar.advance,
            )  # fmt: skip
        machine = machine_info(device=str(s.device), threads=torch.get_num_threads())
        params = param_bytes(traced.module)
    bar.close()

    anchors = tuple(
        CutTiming(
            cut=compute[p - 1],
            position=p,
            head=h,
            tail=tails[i] if with_tails and i < len(tails) else LatencyStats.zero(),
        )
        for i, (p, h) in enumerate(zip(anchor_pos, heads, strict=True))
    )
    cal_of = dict(zip(compute, calibrated, strict=True))
    predicted, measured = [], []
    for c in checks:
        head_pred = sum(calibrated[: c.position])
        predicted += [head_pred, total.median_ms - head_pred]
        measured += [c.head.median_ms, c.tail.median_ms]
    mape, max_err, med_err = prediction_errors(predicted, measured)

    nodes = tuple(
        NodeProfile(
            name=gnode.name,
            op=gnode.op,
            target=target_str(gnode.target),
            inputs=tuple(gnode.inputs),
            outputs=metas[gnode.name],
            output_bytes=sum(m.nbytes for m in metas[gnode.name]),
            param_bytes=params.get(gnode.name, 0),
            latency=isolated.get(gnode.name, LatencyStats.zero()),
            calibrated_ms=cal_of.get(gnode.name, 0.0),
            codecs=codec_results.get(gnode.name, ()),
        )
        for gnode in traced.nodes
    )
    calib = Calibration(
        method=calibration,
        segments=len(anchor_pos),
        cuts_checked=len(checks),
        mape_pct=mape,
        max_abs_error_ms=max_err,
        median_abs_error_ms=med_err,
    )
    note = noise_note(total, calib)
    if note:
        warnings.warn(f"profile of {traced.name!r}: {note}", RuntimeWarning, stacklevel=2)
    input_shapes = tuple(tuple(int(d) for d in shape) for shape in traced.input_shapes)
    prof = Profile(
        schema_version=PROFILE_SCHEMA_VERSION,
        model=traced.name,
        fingerprint=traced.fingerprint,
        input_shapes=input_shapes,
        batch_size=input_shapes[0][0] if input_shapes and input_shapes[0] else 1,
        machine=machine,
        slowdown=factor,
        warmup=warmup,
        repeats=repeats,
        total=total,
        calibration=calib,
        nodes=nodes,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
        idle_factor=idle_factor,
    )
    return ProfileRun(
        profile=prof,
        anchors=anchors,
        fitted_prefix_ms=tuple(prefix_ms),
        checks=tuple(checks),
        wall_s=time.perf_counter() - started,
    )


def measure_cuts(
    traced: graph.TracedModel,
    cuts: Sequence[str],
    *,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    slowdown: float = 1.0,
    progress: ProgressArg = True,
    timer: Timer = time.perf_counter,
) -> list[CutTiming]:
    """Measure head and tail of each cut (a compute node name; the head is the topological prefix
    through it), with the same method the profiler checks its calibration with.

    Heads and tails are timed round-robin; each tail runs on its head's real outputs. A cut after
    the last compute node has the whole model as head and an empty tail (0 ms). Times are back to
    back times ``slowdown``: no idle factor is measured here (compare with a profile made without
    ``emulated_idle``, or divide a profile's compute times by its ``idle_factor``).
    """
    _check_options(device=device, threads=threads, warmup=warmup, repeats=repeats, slowdown=slowdown)
    compute = [n.name for n in traced.compute_nodes()]
    pos_of = {name: i + 1 for i, name in enumerate(compute)}
    unknown = [c for c in cuts if c not in pos_of]
    if unknown:
        raise ConfigError(
            f"cannot measure cuts {unknown}: they are not compute nodes of model {traced.name!r} "
            f"(compute nodes: {', '.join(compute[:8])}{', ...' if len(compute) > 8 else ''})"
        )
    bar = Progress(progress, label=f"measure {traced.name}", stages={"cuts": repeats + 1})
    with session(traced, device=device, threads=threads) as s:
        bar.stage("cuts")
        out = _measure_positions(
            traced, compute, [pos_of[c] for c in cuts], s, warmup=warmup, repeats=repeats,
            factor=float(slowdown), timer=timer, tick=bar.advance,
        )  # fmt: skip
    bar.close()
    return out


def profile(
    model: str | nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    name: str | None = None,
    seed: int = 0,
    **options: Any,
) -> Profile:
    """Trace and profile a model on a random input of ``input_shape`` (batch first).

    ``model`` is a module or a spec :func:`splitdnn.models.load_model` understands (a zoo name,
    ``package.module:callable``, ``torchvision:name``). For a zoo name ``input_shape`` defaults to
    the literature's input at batch 1. ``options`` are those of :func:`profile_model`.
    """
    if isinstance(model, str):
        from splitdnn.models import ZOO, default_input_shape, load_model

        module, display = load_model(model)
        if input_shape is None:
            if model.strip() not in ZOO:
                raise ConfigError(
                    f"profile({model!r}): input_shape (batch first) is required for a model outside the zoo"
                )
            input_shape = default_input_shape(model.strip())
        name = name or display
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise ConfigError(
                "profile(module, input_shape): input_shape (batch first) is required for a module"
            )
        module = model
        name = name or type(model).__name__
    else:
        raise ConfigError(
            f"model must be a torch.nn.Module or a model spec such as 'resnet18', "
            f"found {type(model).__name__}"
        )
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ConfigError(f"input_shape must be positive integers, batch first, found {shape}")
    traced = graph.trace(module, graph.example_inputs(module, [shape], seed=seed), name=name)
    return profile_model(traced, **options)


def machine_info(*, device: str = "cpu", threads: int | None = None) -> MachineInfo:
    """Describe this machine and runtime (CPU model, threads, accelerator, versions)."""
    dev = torch.device(device)
    accelerator = ""
    if dev.type == "cuda" and torch.cuda.is_available():
        accelerator = torch.cuda.get_device_name(dev)
    return MachineInfo(
        hostname=platform.node(),
        platform=platform.platform(),
        processor=cpu_model(),
        cpu_count=os.cpu_count() or 1,
        threads=threads if threads is not None else torch.get_num_threads(),
        device=dev.type,
        accelerator=accelerator,
        python=platform.python_version(),
        torch=torch.__version__,
    )


# --------------------------------------------------------------------------------------------------
# options and the measuring session


def _check_options(*, device: str, threads: int | None, warmup: int, repeats: int, slowdown: float) -> None:
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', found {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was requested but torch.cuda.is_available() is False (torch "
            f"{torch.__version__}); profile on device='cpu' or install a CUDA build of torch"
        )
    check_cuda_index(device, torch.device(device))
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            f"threads must be None (keep torch's setting) or an integer >= 1, found {threads!r}"
        )
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1 (timed runs per measurement), found {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0 (untimed runs first), found {warmup!r}")
    check_slowdown(slowdown)


def _idle_factor(back: Sequence[float], after: Sequence[float]) -> tuple[float, str]:
    """The idle factor of paired samples (the median of the rounds' ratios: a burst of load that
    hits one sample moves one ratio, not the factor), and a warning when the ratios spread widely;
    ``(1.0, "")`` when the clock read no time (a model too quick for it: nothing to price)."""
    ratios = sorted(a / b for b, a in zip(back, after, strict=True) if a > 0 and b > 0)
    if not ratios:
        return 1.0, ""
    factor = statistics.median(ratios)
    lo, hi = ratios[len(ratios) // 10], ratios[-1 - len(ratios) // 10]
    if hi - lo > IDLE_SPREAD * factor:
        return factor, (
            f"the whole model's slowdown after its padding's idle varied from x{lo:.2f} to x{hi:.2f} "
            f"over {len(ratios)} rounds (x{factor:.2f} kept, the median); the machine may be busy. "
            f"Profile on a quieter machine, with more repeats, or without emulated_idle "
            f"(splitdnn profile without --idle-factor) to price compute as timed back to back"
        )
    return factor, ""


def _emulated_idle(emulated_idle: object, slowdown: float) -> bool:
    """Whether the idle factor is measured (module docstring)."""
    if not isinstance(emulated_idle, bool):
        raise ConfigError(f"emulated_idle must be True or False, found {emulated_idle!r}")
    if emulated_idle and slowdown <= 1.0:
        raise ConfigError(
            "emulated_idle=True needs a device emulation (slowdown > 1): without one no work is padded "
            "with idle; pass a slowdown, or leave emulated_idle off"
        )
    return emulated_idle


def check_slowdown(slowdown: object) -> None:
    """A device-emulation factor: finite and >= 1 (ConfigError otherwise)."""
    if (
        isinstance(slowdown, bool)
        or not isinstance(slowdown, (int, float))
        or not math.isfinite(slowdown)
        or slowdown < 1
    ):
        raise ConfigError(
            f"slowdown must be a finite factor >= 1 (1 = no device emulation; 4 = a device 4x slower "
            f"than this machine), found {slowdown!r}"
        )


def _encoder(spec: str) -> Callable[[Any], None]:
    """The edge client's send step for one float32 boundary value: to a contiguous CPU array, encode."""

    def encode(value: Any) -> None:
        if not _is_float32_tensor(value):
            raise CodecError(f"expected a float32 tensor, found {type(value).__name__}")
        _codec.encode(value.detach().to("cpu").contiguous().numpy(), spec)

    return encode


def _encode_in_run(result: CodecResult, seconds: list[float] | None, factor: float) -> CodecResult:
    """``result`` with its encode time measured inside a model run (median), where there is one."""
    if not seconds:
        return result
    return dataclasses.replace(result, encode_ms=max(0.0, statistics.median(seconds) * 1e3 * factor))


def _is_float32_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32 and not value.is_sparse


def _codec_candidates(
    traced: graph.TracedModel, policy: str | Sequence[str], chain: Sequence[str]
) -> set[str]:
    """Names of the nodes whose values the ``codecs`` stage measures (float32 is checked later)."""
    placeholders = {n.name for n in traced.nodes if n.op == "placeholder"}
    if policy == "all":
        return placeholders | {n.name for n in traced.compute_nodes()}
    if policy == "chain":
        return placeholders | set(chain)
    if isinstance(policy, str) or not all(isinstance(x, str) for x in policy):
        raise ConfigError(
            f"codec_nodes must be one of {CODEC_NODE_POLICIES} or a list of node names, found {policy!r}"
        )
    known = {n.name for n in traced.nodes}
    unknown = sorted(set(policy) - known)
    if unknown:
        raise ConfigError(f"codec_nodes names nodes that model {traced.name!r} does not have: {unknown}")
    return set(policy)


def _measure_positions(
    traced: graph.TracedModel,
    compute: Sequence[str],
    positions: Sequence[int],
    s: Session,
    *,
    warmup: int,
    repeats: int,
    factor: float,
    timer: Timer,
    tick: Callable[[], None] | None,
) -> list[CutTiming]:
    cuts = [prepare_cut(traced, compute, p, s.inputs) for p in positions]
    fns: list[Callable[[], Any]] = []
    for c in cuts:
        fns.append(c.head)
        if c.tail is not None:
            fns.append(c.tail)
    samples = iter(time_each(fns, warmup=warmup, repeats=repeats, timer=timer, sync=s.sync, tick=tick))
    out = []
    for c in cuts:
        head = latency_stats(next(samples), factor=factor)
        tail = latency_stats(next(samples), factor=factor) if c.tail is not None else LatencyStats.zero()
        out.append(CutTiming(cut=compute[c.position - 1], position=c.position, head=head, tail=tail))
    return out


# --------------------------------------------------------------------------------------------------
# sizes and machine description


# --------------------------------------------------------------------------------------------------
# progress
