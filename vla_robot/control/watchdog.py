"""Watchdog: decide each tick whether the policy may drive, and latch an e-stop.

Holds (``ok == False``) while the newest observation is older than ``max_observation_age_s``, or a
request has gone ``max_chunk_gap_s`` without any new chunk arriving (the server hangs). The chunk
timer runs only while the controller waits for a chunk, so a long chunk executing undisturbed
never trips it.
The e-stop latch holds until :meth:`reset_estop` is called explicitly; nothing else clears it.
All times are seconds on the caller's monotonic clock.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional

from vla_robot.control.config import WatchdogConfig


def _finite(name: str, t) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"{name} must be a finite time in seconds (monotonic clock), got {t!r}")
    return float(t)


class Watchdog:
    def __init__(self, config: Optional[WatchdogConfig] = None) -> None:
        self.config = config = config or WatchdogConfig()
        config.validate()
        self.holds: Counter = Counter()  # reason kind -> ticks held
        self.last_kind = ""  # kind of the latest check's hold ("" when ok)
        self._estop: Optional[str] = None
        self._last_obs: Optional[float] = None
        self.start(None)

    def start(self, now: Optional[float]) -> None:
        """The policy starts (or resumes) driving at ``now``: it waits for a chunk from here."""
        self._started = None if now is None else _finite("now", now)
        self._last_chunk: Optional[float] = None
        self._waiting_since: Optional[float] = self._started

    def observe(self, stamp: float) -> None:
        """A new observation, captured at ``stamp``, is available."""
        stamp = _finite("stamp", stamp)
        if self._last_obs is None or stamp > self._last_obs:
            self._last_obs = stamp

    def requested(self, now: float) -> None:
        """A chunk was requested at ``now``; the chunk timer runs from the first unanswered request."""
        now = _finite("now", now)
        if self._waiting_since is None:
            self._waiting_since = now

    def chunk_received(self, now: float) -> None:
        self._last_chunk = _finite("now", now)
        self._waiting_since = None

    # --- e-stop latch ------------------------------------------------------------------------
    def estop(self, reason: str = "e-stop requested") -> None:
        """Latch the e-stop; only :meth:`reset_estop` clears it. The first reason is kept."""
        if self._estop is None:
            self._estop = str(reason) or "e-stop requested"

    def reset_estop(self) -> None:
        self._estop = None

    @property
    def estopped(self) -> bool:
        return self._estop is not None

    @property
    def estop_reason(self) -> Optional[str]:
        return self._estop

    # --- the check ---------------------------------------------------------------------------
    def check(self, now: float) -> tuple[bool, str]:
        """``(True, "")`` when the policy may drive at ``now``; else ``(False, why)``."""
        now = _finite("now", now)
        ok, kind, why = self._check(now)
        self.last_kind = kind
        if not ok:
            self.holds[kind] += 1
        return ok, why

    def _check(self, now: float) -> tuple[bool, str, str]:
        cfg = self.config
        if self._estop is not None:
            return False, "estop", f"e-stop latched: {self._estop}"
        if self._started is None:
            return False, "not_started", "watchdog not started (call start(now) when the policy takes over)"
        if self._last_obs is None:
            waited = now - self._started
            if waited > cfg.max_observation_age_s:
                return False, "no_observation", f"no observation for {waited:.3f} s since start (limit {cfg.max_observation_age_s} s)"
        else:
            age = now - self._last_obs
            if age > cfg.max_observation_age_s:
                return False, "stale_observation", f"observation is {age:.3f} s old (limit {cfg.max_observation_age_s} s)"
        if self._waiting_since is not None and now - self._waiting_since > cfg.max_chunk_gap_s:
            gap = now - self._waiting_since
            what = "the request" if self._last_chunk is not None else "start"
            return False, "no_chunk", f"no new chunk for {gap:.3f} s since {what} (limit {cfg.max_chunk_gap_s} s)"
        return True, "", ""
