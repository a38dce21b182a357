"""Measure codecs on one real array: wire bytes, encode/decode time, errors (numpy, no torch)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from splitdnn.codec._frame import decode, encode, parse_spec
from splitdnn.errors import CodecError, ConfigError, ProfileError
from splitdnn.schema import CodecResult, Profile

__all__ = ["DEFAULT_CODECS", "check_profile_codecs", "measure", "parse_codec_list"]

#: what the profiler measures by default on every candidate boundary tensor
DEFAULT_CODECS = ("raw", "zstd", "fp16+zstd", "int8+zstd", "int4+zstd")


def parse_codec_list(text: str) -> tuple[str, ...]:
    """``"raw,zstd,int8+zstd"`` -> a tuple of specs; ``"none"`` or ``""`` -> ``()``.

    Every spec is checked by encoding a tiny array, so a typo fails here, not in the middle of a run.
    """
    text = text.strip()
    if text in ("", "none"):
        return ()
    specs = tuple(s.strip() for s in text.split(","))
    if any(not s for s in specs):
        raise ConfigError(f"codec list {text!r} has an empty entry; write e.g. raw,zstd,int8+zstd")
    check_specs(specs)
    return specs


def check_specs(specs: Sequence[str]) -> None:
    """Refuse unknown or malformed codec specs (and duplicates) with a :class:`ConfigError`."""
    probe = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(2, 4)
    for spec in specs:
        try:
            encode(probe, spec)
        except CodecError as exc:
            raise ConfigError(f"codec {spec!r} cannot be used: {exc}") from exc
    if len(set(specs)) != len(specs):
        raise ConfigError(f"codec list {list(specs)} names a codec twice")


def check_profile_codecs(profiles: Sequence[Profile]) -> None:
    """ProfileError when a profile lists a codec this splitdnn cannot use: a plan would choose it, and
    the first request would fail to encode (a profile edited by hand, or from a build with more codecs)."""
    seen: set[str] = set()
    for p in profiles:
        for n in p.nodes:
            for c in n.codecs:
                if c.spec in seen:
                    continue
                seen.add(c.spec)
                try:
                    parse_spec(c.spec)
                except CodecError as exc:
                    raise ProfileError(
                        f"profile of {p.model!r} lists codec {c.spec!r} on node {n.name!r}, which this "
                        f"splitdnn cannot use ({exc}); measure the profile again with `splitdnn profile`"
                    ) from exc


def measure(
    array: np.ndarray,
    specs: Sequence[str],
    *,
    repeats: int = 1,
    factor: float = 1.0,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[CodecResult, ...]:
    """Each codec of ``specs`` on ``array``: frame bytes, median encode and decode time over
    ``repeats`` runs (the first included: a boundary activation is produced once and sent once, so a
    cold run is the realistic one), both multiplied by ``factor`` (the profile's slowdown), and the
    decoded array's errors against ``array``.

    A codec that refuses the array (fp16 on values beyond its range, integer codecs on NaN/inf) is
    left out; an array with NaN or inf gets no results at all (its errors would mean nothing).
    """
    orig = np.ascontiguousarray(array)
    orig64 = orig.astype(np.float64).ravel()
    if not bool(np.isfinite(orig64).all()):
        return ()
    power = float(np.dot(orig64, orig64))
    cap = max(orig.nbytes, 4 * orig.size)  # its own size (lossy codecs give float32), not the default
    out = []
    for spec in specs:
        enc: list[float] = []
        dec: list[float] = []
        try:
            for _ in range(max(1, repeats)):
                t0 = timer()
                frame = encode(orig, spec)
                t1 = timer()
                decoded = decode(frame, max_decoded_bytes=cap)
                t2 = timer()
                enc.append(t1 - t0)
                dec.append(t2 - t1)
        except CodecError:
            continue
        d64 = decoded.astype(np.float64).ravel()
        diff = d64 - orig64
        sq = float(np.dot(diff, diff))
        max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
        if power > 0:
            rel_mse = sq / power
            dn = float(np.dot(d64, d64))
            cosine = float(np.dot(d64, orig64)) / (power**0.5 * dn**0.5) if dn > 0 else 0.0
        elif sq == 0:
            rel_mse, cosine = 0.0, 1.0
        else:
            continue  # an all-zero tensor decoded to something else: no finite relative error
        out.append(
            CodecResult(
                spec=spec,
                wire_bytes=len(frame),
                encode_ms=max(0.0, _median(enc) * 1e3 * factor),
                decode_ms=max(0.0, _median(dec) * 1e3 * factor),
                max_abs_error=max_abs,
                rel_mse=rel_mse,
                cosine=min(1.0, max(-1.0, cosine)),
            )
        )
    return tuple(out)


def _median(xs: list[float]) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2
