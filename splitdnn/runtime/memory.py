"""Keep freed buffers mapped: glibc malloc thresholds for processes that move MB-sized tensors.

Every split request allocates and frees a few buffers the size of its tensors: the message bytes gRPC
hands over, the tail's output, the response being serialized (and on the client the request and the
answer). With glibc's defaults such a buffer is often served by a fresh ``mmap`` and given back to the
kernel when freed, or sits at the top of a heap that is trimmed, so the next request's buffer faults its
pages in again, zero-filled: about 725 minor page faults per 1 MiB request in the client and,
depending on the heap's history, as many in the server (``scripts/bench_runtime.py`` counts them per
call). In five A/B runs where the defaults faulted, the 1 MiB call took 31-41 % less wall time with
this module's setting (``docs/benchmarks.md``).

:func:`keep_freed_memory` sets two process-wide ``mallopt`` thresholds so such buffers stay mapped and
are reused: allocations below ``mmap_threshold`` come from the heap (not one ``mmap`` each), and a heap
keeps up to ``trim_threshold`` of free memory at its top instead of returning it. The cost is memory:
the process keeps its peak heap rather than shrinking after a burst (per malloc arena, at most
``trim_threshold`` more than it uses). Every :class:`~splitdnn.runtime.server.TailServer`
calls it at start unless ``ServerConfig(keep_freed_memory=False)`` (``splitdnn serve --malloc-defaults``),
``splitdnn run`` calls it for the client, and ``splitdnn profile``, ``demo`` and ``bench`` before they
profile: a profile should be measured in the regime the model then runs in (whole-model VGG-16, one
thread, ran 4-9 % faster with it in three alternated rounds: its early 12.8 MB activations no longer
fault in; ResNet-18, MobileNetV2 and AlexNet were within noise). An application embedding
:class:`~splitdnn.runtime.client.SplitClient` decides for its own process.

Only glibc has these knobs: elsewhere (macOS, musl, Windows) it does nothing and says so. Settings the
user made through the environment (``MALLOC_*_`` variables, ``GLIBC_TUNABLES`` with ``glibc.malloc.``)
win: then it leaves malloc alone too.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass

from splitdnn.errors import ConfigError

__all__ = ["MAX_MMAP_THRESHOLD", "MallocSetting", "keep_freed_memory"]

log = logging.getLogger(__name__)

# glibc refuses an mmap threshold above half its largest heap (HEAP_MAX_SIZE / 2: 32 MiB with 64-bit pointers)
MAX_MMAP_THRESHOLD = 32 << 20 if sys.maxsize > 2**32 else 512 << 10
_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_lock = threading.Lock()


@dataclass(frozen=True)
class MallocSetting:
    """What :func:`keep_freed_memory` did: ``applied``, or ``reason`` why not."""

    applied: bool
    reason: str  # "" when applied
    mmap_threshold: int = 0
    trim_threshold: int = 0

    def __bool__(self) -> bool:
        return self.applied


def keep_freed_memory(
    mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 64 << 20
) -> MallocSetting:
    """Make glibc's malloc keep freed buffers up to these sizes mapped, for reuse (process-wide).

    ``mmap_threshold``: allocations at least this large get their own ``mmap`` (and ``munmap`` when
    freed); 1 .. :data:`MAX_MMAP_THRESHOLD` bytes, default the maximum. ``trim_threshold``: free memory
    at the top of a heap beyond this is given back to the kernel; at least ``mmap_threshold``, default
    64 MiB. Safe to call again (the last call's values hold). Returns a :class:`MallocSetting`, true
    when applied; false, with the reason, where malloc is not glibc's or the environment already sets
    malloc's thresholds.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive number of bytes, found {value!r}")
    if mmap_threshold > MAX_MMAP_THRESHOLD:
        raise ConfigError(
            f"mmap_threshold must be at most {MAX_MMAP_THRESHOLD} bytes (glibc's limit), found "
            f"{mmap_threshold}; larger buffers are always mapped on their own"
        )
    if trim_threshold < mmap_threshold:
        raise ConfigError(
            f"trim_threshold ({trim_threshold}) must be at least mmap_threshold ({mmap_threshold}), or "
            f"freed heap buffers of that size are still given back to the kernel"
        )
    env = [n for n in _ENV if n in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        env.append("GLIBC_TUNABLES")
    if env:
        return _not_applied(f"the environment sets malloc's behaviour ({', '.join(env)}); left as set")
    libc = _glibc()
    if libc is None:
        return _not_applied("this process's C library is not glibc (no mallopt thresholds)")
    with _lock:
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    if not ok:
        return _not_applied(
            f"glibc's mallopt refused mmap_threshold={mmap_threshold}, trim_threshold={trim_threshold}"
        )
    log.debug(
        "malloc keeps freed buffers: mmap threshold %d, trim threshold %d", mmap_threshold, trim_threshold
    )
    return MallocSetting(True, "", mmap_threshold, trim_threshold)


def _not_applied(reason: str) -> MallocSetting:
    log.debug("malloc thresholds not set: %s", reason)
    return MallocSetting(False, reason)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it (musl's mallopt does nothing)
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return libc
