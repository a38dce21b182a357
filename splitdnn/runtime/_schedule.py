"""Bandwidth schedules for :class:`~splitdnn.runtime.shaper.ShapedLink`: steps and trace files.

A :class:`RateSchedule` is a list of ``(time_s, uplink_mbps)`` steps, built from a list, from
:meth:`RateSchedule.step` (one change) or from a trace file (``time_s,mbps`` CSV); :meth:`RateSchedule.play`
applies it to a running link from a background thread (:class:`SchedulePlayer`). Import these names from
:mod:`splitdnn.runtime.shaper`; they live here to keep that module to the link itself.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from splitdnn.errors import ConfigError

if TYPE_CHECKING:
    from splitdnn.runtime.shaper import ShapedLink

log = logging.getLogger("splitdnn.runtime.shaper")


def _check_rate(name: str, value: object) -> float:
    """A finite, positive rate in Mbit/s, or a ConfigError saying what was found and what to pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{name} must be a number of Mbit/s (e.g. 5.85), found {value!r} of type {type(value).__name__}"
        )
    rate = float(value)
    if not math.isfinite(rate) or rate <= 0.0:
        raise ConfigError(
            f"{name} must be a finite rate > 0 Mbit/s (1 Mbit/s = 1e6 bit/s), found {value!r}; "
            "pass e.g. 0.13 (CAT1), 1.1 (3G), 5.85 (4G) or 18.88 (Wi-Fi)"
        )
    return rate


def check_downlink_factor(value: object) -> float:
    """A positive finite downlink factor (downlink = factor x uplink), or a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(
            f"downlink_factor must be a positive finite number (downlink = factor x uplink) or None "
            f"(the same as the uplink), found {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class RateStep:
    """From ``time_s`` seconds after the schedule starts, the uplink runs at ``uplink_mbps`` Mbit/s."""

    time_s: float  # seconds since the start of the schedule
    uplink_mbps: float  # Mbit/s (1e6 bit/s), client -> server


_StepLike = RateStep | Sequence[float]


class RateSchedule:
    """A step schedule of uplink bandwidth over time: a bandwidth step experiment or a replayed trace.

    Steps are ``(time_s, uplink_mbps)``: the first at time 0 (the schedule defines the rate from its
    start), times strictly increasing, rates finite and > 0. Build one from a list, from
    :meth:`step` (one change) or from a trace file (:meth:`from_csv`), then :meth:`play` it on a link.
    """

    def __init__(self, steps: Iterable[_StepLike], *, source: str = "steps") -> None:
        parsed: list[RateStep] = []
        for index, raw in enumerate(steps):
            where = f"{source} step {index}"
            if isinstance(raw, RateStep):
                time_s, mbps = raw.time_s, raw.uplink_mbps
            else:
                if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) != 2:
                    raise ConfigError(f"{where}: expected a (time_s, uplink_mbps) pair, found {raw!r}")
                time_s, mbps = raw
            parsed.append(self._check_step(where, time_s, mbps, parsed[-1] if parsed else None))
        if not parsed:
            raise ConfigError(f"{source}: expected at least one (time_s, uplink_mbps) step, found none")
        self.steps: tuple[RateStep, ...] = tuple(parsed)
        self.source = source

    @staticmethod
    def _check_step(where: str, time_s: object, mbps: object, previous: RateStep | None) -> RateStep:
        if isinstance(time_s, bool) or not isinstance(time_s, (int, float)) or not math.isfinite(time_s):
            raise ConfigError(f"{where}: time_s must be a finite number of seconds, found {time_s!r}")
        rate = _check_rate(f"{where}: uplink_mbps", mbps)
        if previous is None and time_s != 0:
            raise ConfigError(
                f"{where}: expected the first step at time_s 0 (the schedule sets the rate from its start), "
                f"found {time_s!r}; add a first step (0, <Mbit/s>)"
            )
        if previous is not None and not time_s > previous.time_s:
            raise ConfigError(
                f"{where}: expected time_s > {previous.time_s} (times strictly increasing), "
                f"found {time_s!r}; sort the steps and merge duplicates"
            )
        return RateStep(float(time_s), rate)

    @classmethod
    def step(cls, before_mbps: float, after_mbps: float, at_s: float) -> RateSchedule:
        """A single bandwidth step: ``before_mbps`` until ``at_s`` seconds, ``after_mbps`` after."""
        return cls([(0.0, before_mbps), (at_s, after_mbps)], source="step schedule")

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> RateSchedule:
        """Load a trace file: a ``time_s,mbps`` header, then one ``seconds,Mbit/s`` row per step.

        Strict on purpose (a trace that half-parses gives silently wrong experiments): exactly two
        columns, plain decimal numbers, the header exactly ``time_s,mbps``. Blank lines and lines starting
        with ``#`` (for the trace's provenance) are skipped. Errors name the file and line.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the rate trace {str(p)!r}: {exc}; expected a CSV file time_s,mbps"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"rate trace {str(p)!r} is not UTF-8 text ({exc}); expected a CSV file time_s,mbps"
            ) from exc
        steps: list[RateStep] = []
        header_seen = False
        for lineno, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            where = f"{p}:{lineno}"
            fields = [f.strip() for f in next(csv.reader([stripped]))]
            if not header_seen:
                if fields != ["time_s", "mbps"]:
                    raise ConfigError(
                        f"{where}: expected the header 'time_s,mbps', found {stripped!r}; "
                        "add it as the first line of the trace"
                    )
                header_seen = True
                continue
            if len(fields) != 2:
                raise ConfigError(
                    f"{where}: expected 2 fields 'time_s,mbps', found {len(fields)} in {stripped!r}"
                )
            values: list[float] = []
            for name, field in zip(("time_s", "mbps"), fields, strict=True):
                try:
                    value = float(field)
                except ValueError:
                    raise ConfigError(f"{where}: {name} must be a number, found {field!r}") from None
                if not math.isfinite(value):
                    raise ConfigError(f"{where}: {name} must be finite, found {field!r}")
                values.append(value)
            # Checked here, not only in __init__, so that an error names the file and line.
            steps.append(cls._check_step(where, values[0], values[1], steps[-1] if steps else None))
        if not header_seen:
            raise ConfigError(f"rate trace {str(p)!r} is empty; expected a 'time_s,mbps' header and rows")
        if not steps:
            raise ConfigError(f"rate trace {str(p)!r} has a header but no rows; add at least '0,<Mbit/s>'")
        return cls(steps, source=str(p))

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the schedule as a trace file that :meth:`from_csv` reads back exactly."""
        lines = ["time_s,mbps"] + [f"{s.time_s!r},{s.uplink_mbps!r}" for s in self.steps]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def duration_s(self) -> float:
        """Time of the last step (the schedule holds that rate forever after)."""
        return self.steps[-1].time_s

    def rate_at(self, t_s: float) -> float:
        """The uplink rate in Mbit/s at ``t_s`` seconds after the start."""
        if not math.isfinite(t_s) or t_s < 0:
            raise ConfigError(f"rate_at: expected a time >= 0 seconds, found {t_s!r}")
        rate = self.steps[0].uplink_mbps
        for s in self.steps:
            if s.time_s > t_s:
                break
            rate = s.uplink_mbps
        return rate

    def play(
        self,
        link: ShapedLink,
        *,
        downlink_mbps: float | None = None,
        downlink_factor: float | None = None,
        on_step: Callable[[RateStep], None] | None = None,
    ) -> SchedulePlayer:
        """Replay the schedule on ``link`` in a background thread; returns the started player.

        The downlink: with neither argument it follows the uplink (as in :class:`ShapedLink`);
        ``downlink_mbps`` fixes it; ``downlink_factor`` makes it that many times each step's uplink.
        ``on_step`` is called (in the player thread) after each step is applied, e.g. to log the time of
        a bandwidth change next to per-request latencies.
        """
        if downlink_mbps is not None and downlink_factor is not None:
            raise ConfigError(
                f"give downlink_mbps (a fixed downlink) or downlink_factor (a multiple of each step's "
                f"uplink), not both; found {downlink_mbps!r} and {downlink_factor!r}"
            )
        if downlink_mbps is not None:
            _check_rate("downlink_mbps", downlink_mbps)
        if downlink_factor is not None:
            factor = check_downlink_factor(downlink_factor)
            for step in self.steps:  # every rate it will set, checked before the thread starts
                _check_rate("downlink_factor x uplink_mbps", step.uplink_mbps * factor)
        player = SchedulePlayer(
            self, link, downlink_mbps=downlink_mbps, downlink_factor=downlink_factor, on_step=on_step
        )
        player.start()
        return player

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"RateSchedule({len(self.steps)} steps from {self.source}, {self.duration_s:g} s)"


class SchedulePlayer:
    """Applies a :class:`RateSchedule` to a link on time, in a daemon thread; a context manager.

    Step ``i`` is applied at ``start + time_s`` (monotonic clock, no drift accumulates); :attr:`applied`
    records ``(monotonic time, step)`` for every step applied, so results can mark when the bandwidth
    changed. :meth:`stop` ends it early; :meth:`join` waits for the last step.
    """

    def __init__(
        self,
        schedule: RateSchedule,
        link: ShapedLink,
        *,
        downlink_mbps: float | None = None,
        downlink_factor: float | None = None,
        on_step: Callable[[RateStep], None] | None = None,
    ) -> None:
        self.schedule = schedule
        self.link = link
        self.downlink_mbps = downlink_mbps
        self.downlink_factor = downlink_factor
        self.on_step = on_step
        self.applied: list[tuple[float, RateStep]] = []
        self.started_at: float | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shaper-schedule", daemon=True)

    def start(self) -> SchedulePlayer:
        """Start playing: the first step (time 0) is applied at once."""
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self.started_at is not None
        try:
            for s in self.schedule.steps:
                wait_s = self.started_at + s.time_s - time.monotonic()
                if wait_s > 0 and self._stop.wait(wait_s):
                    return
                if self._stop.is_set():
                    return
                down = self.downlink_mbps
                if self.downlink_factor is not None:
                    down = s.uplink_mbps * self.downlink_factor
                self.link.set_rates(s.uplink_mbps, down)
                self.applied.append((time.monotonic(), s))
                if self.on_step is not None:
                    self.on_step(s)
        except BaseException as exc:  # kept for the caller: a thread cannot raise into it
            self.error = exc
            log.exception("rate schedule %r stopped", self.schedule)

    @property
    def done(self) -> bool:
        """True once every step was applied (or the player was stopped)."""
        return self.started_at is not None and not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the last step is applied (or ``timeout`` seconds)."""
        self._thread.join(timeout)

    def stop(self) -> None:
        """Stop before the remaining steps; the link keeps its current rate."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> SchedulePlayer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
