"""Chunk executors: turn action chunks [H, D] into one joint target per control tick.

All three keep one interface (:class:`ChunkExecutor`) and are picked by ``ExecutorConfig.kind``:

- ``open_loop`` — OpenVLA-OFT's way: execute the first K actions of a chunk from its arrival, then
  ask again; the arm waits (holds) while the server thinks.
- ``temporal_ensemble`` — ACT's: every chunk covering a tick votes with weight ``exp(-m·i)``
  (i = 0 the oldest); asks for a chunk whenever a new tick has begun.
- ``async`` — asks for the next chunk while the current one still runs (when at most
  ``request_threshold`` actions are left, raised to the measured latency with a margin when
  adaptive; several requests in flight when the latency needs it), drops the actions of a new
  chunk whose time has passed (action i of a chunk is meant for ``obs_time + i·dt``), and fades
  the seam (old plan − new chunk at arrival) out over ``blend_steps`` ticks while already
  following the new chunk. A chunk that arrives entirely in the past is discarded: the arm holds
  rather than jumps.

Times are seconds on one monotonic clock; ``step(now)`` is a pure function of ``now`` and the chunks
added so far, so calling it twice in a tick gives the same action.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from vla_robot.control.config import ControlConfig, ExecutorConfig


@dataclass
class ExecutorStep:
    """One tick's output: the action (None = nothing to execute, hold) and where it came from."""

    action: Optional[np.ndarray]
    chunk_seq: Optional[int] = None  # sequence number (from add_chunk) of the newest contributing chunk
    index: Optional[int] = None  # index of the action within that chunk
    blended: bool = False  # mixed from several chunks
    reason: str = ""  # why there is no action


@dataclass
class ExecutorStats:
    chunks: int = 0  # chunks accepted
    stale_chunks: int = 0  # chunks discarded: entirely in the past on arrival, or older than the current
    dropped_actions: int = 0  # actions of accepted chunks skipped because their time had passed
    latencies: deque = field(default_factory=lambda: deque(maxlen=16))  # now - obs_time at arrival

    def as_dict(self) -> dict:
        lat = list(self.latencies)
        return {
            "chunks": self.chunks,
            "stale_chunks": self.stale_chunks,
            "dropped_actions": self.dropped_actions,
            "latency_s_max": max(lat) if lat else None,
        }


@dataclass
class _Chunk:
    seq: int
    actions: np.ndarray  # [H, D] float64
    t0: float  # time of action 0

    def index(self, now: float, dt: float) -> int:
        return int(math.floor((now - self.t0) / dt + 0.5 + 1e-9))

    @property
    def horizon(self) -> int:
        return self.actions.shape[0]


class ChunkExecutor(ABC):
    """Common bookkeeping: chunk validation, sequence numbers, stats."""

    kind = "base"

    def __init__(self, config: ExecutorConfig, dt: float) -> None:
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number of seconds > 0, got {dt!r}")
        config.validate()
        self.config = config
        self.dt = float(dt)
        self.action_dim: Optional[int] = None
        self.reset()

    def reset(self) -> None:
        """Forget every chunk (new episode, or after a hold). Stats and the latency estimate stay."""
        self._seq = getattr(self, "_seq", 0)
        if not hasattr(self, "stats"):
            self.stats = ExecutorStats()

    def _check(self, chunk, obs_time: float, now: float) -> np.ndarray:
        try:
            arr = np.asarray(chunk, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"chunk must be a [H, D] array of numbers, got {type(chunk).__name__} ({e})") from None
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"chunk must have shape [H, D] with H, D >= 1, got {arr.shape}")
        if self.action_dim is None:
            self.action_dim = arr.shape[1]
        elif arr.shape[1] != self.action_dim:
            raise ValueError(f"chunk has {arr.shape[1]} action dims, expected {self.action_dim} (one per joint)")
        for name, t in (("obs_time", obs_time), ("now", now)):
            if not (isinstance(t, (int, float, np.floating)) and math.isfinite(t)):
                raise ValueError(f"{name} must be a finite time in seconds, got {t!r}")
        self._seq += 1
        return arr

    @property
    def max_in_flight(self) -> int:
        """How many requests the caller may keep in flight for this executor."""
        return 1

    @abstractmethod
    def needs_chunk(self, now: float, pending: Sequence[float] = ()) -> bool:
        """Whether to request a new chunk now; ``pending``: observation times of requests in flight."""

    @abstractmethod
    def add_chunk(self, chunk, obs_time: float, now: float) -> int:
        """Take a chunk [H, D] computed from the observation stamped ``obs_time``; returns its sequence number."""

    @abstractmethod
    def step(self, now: float) -> ExecutorStep:
        """The action for the tick at ``now`` (and its origin)."""

    def action(self, now: float) -> Optional[np.ndarray]:
        """The action for the tick at ``now``, or None when there is nothing to execute (hold)."""
        return self.step(now).action

    @abstractmethod
    def actions_left(self, now: float) -> int:
        """Actions of the current plan after the tick at ``now``."""


class OpenLoopExecutor(ChunkExecutor):
    kind = "open_loop"

    def reset(self) -> None:
        super().reset()
        self._cur: Optional[_Chunk] = None

    def _k(self, chunk: _Chunk) -> int:
        k = self.config.open_loop_steps
        return chunk.horizon if k == 0 else min(k, chunk.horizon)

    def actions_left(self, now: float) -> int:
        if self._cur is None:
            return 0
        return max(0, self._k(self._cur) - 1 - self._cur.index(now, self.dt))

    def needs_chunk(self, now: float, pending: Sequence[float] = ()) -> bool:
        if pending:
            return False
        return self._cur is None or self._cur.index(now, self.dt) >= self._k(self._cur)

    def add_chunk(self, chunk, obs_time: float, now: float) -> int:
        arr = self._check(chunk, obs_time, now)
        # executed from its arrival, whatever the observation's age (that is what open loop means)
        self._cur = _Chunk(self._seq, arr, float(now))
        self.stats.chunks += 1
        self.stats.latencies.append(now - obs_time)
        return self._seq

    def step(self, now: float) -> ExecutorStep:
        if self._cur is None:
            return ExecutorStep(None, reason="waiting for the first chunk")
        i = max(0, self._cur.index(now, self.dt))
        if i >= self._k(self._cur):
            return ExecutorStep(None, reason="open-loop chunk done, waiting for the next")
        return ExecutorStep(self._cur.actions[i].copy(), self._cur.seq, i)


class TemporalEnsembleExecutor(ChunkExecutor):
    kind = "temporal_ensemble"

    def reset(self) -> None:
        super().reset()
        self._chunks: list[_Chunk] = []

    def _prune(self, now: float) -> None:
        self._chunks = [c for c in self._chunks if c.index(now, self.dt) < c.horizon]

    def actions_left(self, now: float) -> int:
        return max((c.horizon - 1 - c.index(now, self.dt) for c in self._chunks), default=0)

    def needs_chunk(self, now: float, pending: Sequence[float] = ()) -> bool:
        # ACT queries every tick: whenever the newest chunk was computed before this tick began
        if pending:
            return False
        return not self._chunks or now - self._chunks[-1].t0 >= self.dt / 2

    def add_chunk(self, chunk, obs_time: float, now: float) -> int:
        arr = self._check(chunk, obs_time, now)
        if self._chunks and obs_time < self._chunks[-1].t0:
            self.stats.stale_chunks += 1  # arrived out of order: the newest stays newest
            return self._seq
        c = _Chunk(self._seq, arr, float(obs_time))
        if c.index(now, self.dt) >= c.horizon:
            self.stats.stale_chunks += 1
            return self._seq
        self._chunks.append(c)
        self.stats.chunks += 1
        self.stats.latencies.append(now - obs_time)
        self._prune(now)
        return self._seq

    def step(self, now: float) -> ExecutorStep:
        self._prune(now)
        rows, weights, newest = [], [], None
        for rank, c in enumerate(self._chunks):  # oldest first: w_0 = 1 for the oldest (ACT)
            i = c.index(now, self.dt)
            if 0 <= i < c.horizon:
                weights.append(math.exp(-self.config.ensemble_decay * len(rows)))
                rows.append(c.actions[i])
                newest = (c.seq, i)
        if not rows:
            return ExecutorStep(None, reason="no chunk covers this tick")
        w = np.asarray(weights)
        action = (np.asarray(rows) * w[:, None]).sum(axis=0) / w.sum()
        return ExecutorStep(action, newest[0], newest[1], blended=len(rows) > 1)


@dataclass
class _Plan:
    """A chunk plus the offset that carries the previous plan's value into it at arrival.

    ``value(t) = chunk(t) + (1 − α)·offset`` with α rising from 1/(B+1) at arrival to 1 after B
    ticks: the seam disagreement fades out while the arm already moves with the new chunk, so the
    step between two ticks never exceeds the chunk's own step plus |offset|/(B+1).
    """

    chunk: _Chunk
    start: float  # arrival time: blending starts here
    offset: Optional[np.ndarray]  # previous value − new chunk at arrival (None: nothing to blend from)


class AsyncExecutor(ChunkExecutor):
    kind = "async"

    def reset(self) -> None:
        super().reset()
        self._plan: Optional[_Plan] = None
        self._emitted: deque = deque(maxlen=2)  # (time, action) of the latest ticks

    def threshold(self) -> int:
        """Request the next chunk when at most this many actions are left."""
        thr = self.config.request_threshold
        if self.config.adaptive_threshold and self.stats.latencies:
            expected = self.config.latency_margin * max(self.stats.latencies)
            thr = max(thr, math.ceil(expected / self.dt - 1e-6) + 1)
        return thr

    def actions_left(self, now: float) -> int:
        if self._plan is None:
            return 0
        c = self._plan.chunk
        return max(0, c.horizon - 1 - c.index(now, self.dt))

    @property
    def max_in_flight(self) -> int:
        return self.config.max_in_flight

    def needs_chunk(self, now: float, pending: Sequence[float] = ()) -> bool:
        if len(pending) >= self.config.max_in_flight:
            return False
        if self._plan is None:
            # horizon and latency are unknown until the first chunk arrives: keep asking every
            # request_threshold ticks, so a slow server's chunks still tile the start
            spacing = max(1, self.config.request_threshold)
            return not pending or now - max(pending) >= (spacing - 0.5) * self.dt
        if pending and self.stats.latencies:
            # spread the in-flight budget over the latency instead of spending it in a burst
            spacing = math.ceil(max(self.stats.latencies) / self.dt / self.config.max_in_flight - 1e-6)
            if now - max(pending) < (spacing - 0.5) * self.dt:
                return False
        # the plan will be covered up to the end of the newest chunk, arrived or expected
        c = self._plan.chunk
        end = max([c.t0] + [float(t) for t in pending]) + (c.horizon - 1) * self.dt
        left = int(math.floor((end - now) / self.dt + 0.5 + 1e-9))
        return left <= self.threshold()

    def add_chunk(self, chunk, obs_time: float, now: float) -> int:
        arr = self._check(chunk, obs_time, now)
        c = _Chunk(self._seq, arr, float(obs_time))
        i_now = max(0, c.index(now, self.dt))
        self.stats.latencies.append(now - obs_time)
        if (self._plan is not None and obs_time < self._plan.chunk.t0) or i_now >= c.horizon:
            self.stats.stale_chunks += 1  # older than what runs, or wholly in the past: keep the plan
            return self._seq
        self.stats.chunks += 1
        self.stats.dropped_actions += i_now
        # what the arm would have been told now without this chunk: the running plan, or, when it
        # has run out, the last action emitted before now
        old = self._value(self._plan, now)[0] if self._plan is not None else None
        if old is None:
            earlier = [a for t, a in self._emitted if t < now - self.dt / 2]
            old = earlier[-1] if earlier else None
        offset = None if old is None or self.config.blend_steps == 0 else old - arr[i_now]
        self._plan = _Plan(c, float(now), offset)
        return self._seq

    def _value(self, plan: _Plan, now: float) -> tuple[Optional[np.ndarray], bool]:
        c = plan.chunk
        i = max(0, c.index(now, self.dt))
        if i >= c.horizon:
            return None, False
        k = int(math.floor((now - plan.start) / self.dt + 0.5 + 1e-9))
        if plan.offset is None or not 0 <= k < self.config.blend_steps:
            return c.actions[i], False
        alpha = (k + 1) / (self.config.blend_steps + 1)
        return c.actions[i] + (1.0 - alpha) * plan.offset, True

    def step(self, now: float) -> ExecutorStep:
        if self._plan is None:
            return ExecutorStep(None, reason="waiting for the first chunk")
        out, blended = self._value(self._plan, now)
        if out is None:
            return ExecutorStep(None, reason="chunk ran out before the next arrived")
        out = np.array(out, dtype=np.float64)
        if self._emitted and abs(self._emitted[-1][0] - now) < self.dt / 2:
            self._emitted[-1] = (float(now), out.copy())
        elif not self._emitted or now > self._emitted[-1][0]:
            self._emitted.append((float(now), out.copy()))
        c = self._plan.chunk
        return ExecutorStep(out, c.seq, max(0, c.index(now, self.dt)), blended=blended)


EXECUTORS = {cls.kind: cls for cls in (OpenLoopExecutor, TemporalEnsembleExecutor, AsyncExecutor)}


def make_executor(config: ControlConfig) -> ChunkExecutor:
    """The executor named by ``config.executor.kind``, ticking at ``config.control_hz``."""
    if not isinstance(config, ControlConfig):
        raise TypeError(f"make_executor needs a ControlConfig (it carries control_hz), got {type(config).__name__}")
    kind = config.executor.kind
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor kind '{kind}'; expected one of {', '.join(EXECUTORS)}")
    return EXECUTORS[kind](config.executor, config.dt)
