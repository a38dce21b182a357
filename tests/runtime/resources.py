"""What a long run must not grow: the process's threads, file descriptors, objects and memory."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

HAVE_PROC = Path("/proc/self/fd").is_dir()


def process_resources() -> dict[str, float]:
    """Threads, open file descriptors, gc-tracked objects and resident MiB of this process, after a
    full collection (Linux: reads /proc)."""
    gc.collect()
    status = Path("/proc/self/status").read_text()
    rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return {
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "objects": len(gc.get_objects()),
        "rss_mib": rss_kib / 1024.0,
    }


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}
