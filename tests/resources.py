"""What a long run must not grow: the process's threads, file descriptors, objects and memory."""

from __future__ import annotations

import gc
import linecache
import os
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


@dataclass
class Growth:
    """What the block under :func:`growth` added: ``more`` per resource, ``held`` bytes it allocated
    (tracemalloc) and still holds at its end."""

    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    more: dict[str, float] = field(default_factory=dict)
    held: int = 0


@contextmanager
def growth() -> Iterator[Growth]:
    """Measure what the block leaves behind; filled in when the block ends without an error."""
    g = Growth(before=process_resources())
    tracemalloc.start()
    try:
        yield g
        gc.collect()
        g.held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    g.after = process_resources()
    g.more = {k: g.after[k] - g.before[k] for k in g.before}


def fx_sources() -> int:
    """Generated forwards whose source torch.fx still keeps (in ``linecache``), after a collection."""
    gc.collect()
    return sum(1 for key in linecache.cache if key.startswith("<eval_with_key>"))
