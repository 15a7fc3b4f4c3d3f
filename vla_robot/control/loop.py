"""Fixed-rate loop on the monotonic clock, with per-tick timing statistics.

Deadlines are ``t0 + k·period`` (absolute), so sleeping late on one tick never shifts the later
ones: no drift over hours. A tick that wakes more than one period late is an overrun; the loop then
skips the deadlines it missed (counted) instead of firing a burst of catch-up ticks.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np


@dataclass
class TickStats:
    ticks: int = 0
    overruns: int = 0  # ticks that woke more than one period after their deadline
    missed: int = 0  # deadlines skipped because of overruns
    late_sum: float = 0.0
    late_max: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=2048))  # lateness of recent ticks (s)

    def add(self, late: float) -> None:
        self.ticks += 1
        self.late_sum += late
        self.late_max = max(self.late_max, late)
        self.recent.append(late)

    def as_dict(self) -> dict:
        recent = np.asarray(self.recent) if self.recent else np.zeros(1)
        return {
            "ticks": self.ticks,
            "overruns": self.overruns,
            "missed": self.missed,
            "jitter_mean_ms": 1e3 * self.late_sum / max(1, self.ticks),
            "jitter_p99_ms": 1e3 * float(np.percentile(recent, 99)),
            "jitter_max_ms": 1e3 * self.late_max,
        }


class RateLoop:
    """``for now in RateLoop(30): ...`` ticks at 30 Hz; or call :meth:`sleep` at the end of each tick.

    ``clock`` and ``sleep`` default to :func:`time.monotonic` and :func:`time.sleep` (injectable for
    simulated time).
    """

    def __init__(
        self,
        hz: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(hz, bool) or not isinstance(hz, (int, float)) or not (math.isfinite(hz) and hz > 0):
            raise ValueError(f"hz must be a finite rate > 0 (ticks per second), got {hz!r}")
        self.hz = float(hz)
        self.period = 1.0 / self.hz
        self._clock = clock
        self._sleep = sleep
        self._t0: Optional[float] = None
        self._k = 0
        self.stats = TickStats()

    def start(self) -> float:
        """Start the schedule now (tick 0); returns the start time."""
        self._t0 = self._clock()
        self._k = 0
        self.stats = TickStats()
        self.stats.add(0.0)
        return self._t0

    @property
    def deadline(self) -> float:
        """The time of the current tick on the schedule."""
        if self._t0 is None:
            raise RuntimeError("RateLoop.start() first")
        return self._t0 + self._k * self.period

    def sleep(self) -> float:
        """Wait for the next tick's deadline; returns the time the tick actually began."""
        if self._t0 is None:
            return self.start()
        self._k += 1
        deadline = self._t0 + self._k * self.period
        now = self._clock()
        if now < deadline:
            self._sleep(deadline - now)
            now = self._clock()
        late = now - deadline
        if late > self.period:
            self.stats.overruns += 1
            k_now = int(math.floor((now - self._t0) / self.period))
            self.stats.missed += k_now - self._k
            self._k = k_now
            late = now - (self._t0 + self._k * self.period)
        self.stats.add(max(0.0, late))
        return now

    def __iter__(self) -> Iterator[float]:
        yield self.start()
        while True:
            yield self.sleep()
