"""Progress reporting for long measurements: a small bar on stderr, or a callback (stdlib only).

``progress=True`` draws ``label  stage  [####....]  41%  12.3s`` in place on a terminal and writes one
line per stage otherwise (logs stay readable); ``False`` is silent; a callable receives
``(done, total, stage)`` after every step, and ``(total, total, "done")`` at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from splitdnn.errors import ConfigError

__all__ = ["Progress", "ProgressArg", "StderrBar"]

#: ``progress`` argument: True draws a bar on stderr, False is silent, a callable gets
#: ``(done, total, stage)``.
ProgressArg = bool | Callable[[int, int, str], None]


class Progress:
    """Counts work over named stages and reports it to a bar on stderr or a callback."""

    def __init__(self, progress: ProgressArg, *, label: str, stages: Mapping[str, int]) -> None:
        self.total = sum(stages.values())
        self.done = 0
        self.current = ""
        self.sink: Callable[[int, int, str], None] | None
        if progress is True:
            self.sink = StderrBar(label)
        elif progress is False or progress is None:
            self.sink = None
        elif callable(progress):
            self.sink = progress
        else:
            raise ConfigError(
                f"progress must be True, False or a callable(done, total, stage), found {progress!r}"
            )

    def stage(self, name: str) -> None:
        self.current = name
        self._emit()

    def advance(self, k: int = 1) -> None:
        self.done = min(self.total, self.done + k)
        self._emit()

    def close(self) -> None:
        self.done = self.total
        self.current = "done"
        self._emit()
        if isinstance(self.sink, StderrBar):
            self.sink.finish()

    def _emit(self) -> None:
        if self.sink is not None:
            self.sink(self.done, self.total, self.current)


class StderrBar:
    """``profile resnet50  nodes    [########............]  41%  12.3s`` redrawn in place on a
    terminal (at most 10 times a second); one line per stage when stderr is not a terminal."""

    width = 24

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.last_stage = ""

    @property
    def stream(self) -> TextIO:
        return sys.stderr  # looked up late so redirection (pytest's capture too) is honoured

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        elapsed = now - self.started
        stream = self.stream
        if not _isatty(stream):
            if stage != self.last_stage:
                self.last_stage = stage
                stream.write(f"{self.label}: {stage} ({elapsed:.1f}s)\n")
                stream.flush()
            return
        if stage == self.last_stage and done < total and now - self.last_draw < 0.1:
            return
        self.last_stage, self.last_draw = stage, now
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        stream.write(f"\r{self.label}  {stage:<8} [{bar}] {frac * 100:3.0f}%  {elapsed:.1f}s")
        stream.flush()

    def finish(self) -> None:
        if _isatty(self.stream):
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
