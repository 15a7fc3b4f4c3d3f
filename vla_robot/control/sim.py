"""Simulated time, policy server and arm for exercising the control loop without hardware.

Used by the tests and by ``benchmarks/chunking.py``: a :class:`SimServer` is an
:class:`~vla_robot.policy.interface.AsyncPolicy` like ``vla_robot.serving.PolicyClient``
(``infer``, ``submit``/``poll``/``cancel``) and answers after a latency drawn
from a :class:`Latency` model (fixed, jittery, occasional stalls), on a :class:`SimClock`; a
:class:`PathPolicy` plays a scripted joint path from wherever the arm is (a closed-loop policy that
disagrees a little from chunk to chunk, as learned ones do); a :class:`SimArm` tracks its targets
with a first-order lag.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from vla_robot.control.limits import as_vector
from vla_robot.policy.interface import check_infer_args


class SimClock:
    """A clock that only moves when told to (callable like ``time.monotonic``)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError(f"time cannot go backwards (dt={dt})")
        self.t += dt

    def sleep(self, dt: float) -> None:
        self.advance(max(0.0, dt))


@dataclass
class Latency:
    """Server latency in seconds: ``base`` (+ lognormal jitter of spread ``jitter``) or, with
    probability ``stall_p``, a stall of ``stall_s``."""

    base: float
    jitter: float = 0.0
    stall_p: float = 0.0
    stall_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.jitter >= 0 and 0 <= self.stall_p <= 1 and self.stall_s >= 0):
            raise ValueError(f"latency parameters must be >= 0 (stall_p in [0, 1]), got {self}")

    def sample(self, rng: np.random.Generator) -> float:
        if self.stall_p and rng.random() < self.stall_p:
            return self.stall_s
        if self.jitter:
            return float(self.base * rng.lognormal(0.0, self.jitter))
        return self.base


class PathPolicy:
    """Chunks that follow ``path`` [N, D] from the waypoint nearest the observed state.

    Each chunk gets its own random offset of scale ``noise`` (ramped in over the chunk), so
    consecutive chunks disagree at their seams the way a learned policy's do.
    """

    def __init__(self, path, horizon: int, noise: float = 0.0, seed: int = 0) -> None:
        self.path = np.asarray(path, dtype=np.float64)
        if self.path.ndim != 2 or len(self.path) < 2:
            raise ValueError(f"path must be [N >= 2, D] waypoints, got shape {self.path.shape}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = int(horizon)
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.progress = 0

    def reset(self) -> None:
        self.progress = 0

    def chunk(self, state) -> np.ndarray:
        q = np.asarray(state, dtype=np.float64)
        window = self.path[self.progress : self.progress + 4 * self.horizon]
        self.progress += int(np.argmin(np.linalg.norm(window - q, axis=1)))
        idx = np.minimum(np.arange(self.progress + 1, self.progress + 1 + self.horizon), len(self.path) - 1)
        actions = self.path[idx].copy()
        if self.noise:
            offset = self.rng.normal(0.0, self.noise, size=self.path.shape[1])
            ramp = np.linspace(0.5, 1.0, self.horizon)[:, None]
            actions += ramp * offset
        return actions.astype(np.float32)

    def done(self, state, tol: float) -> bool:
        return bool(np.all(np.abs(np.asarray(state) - self.path[-1]) <= tol)) and self.progress >= len(self.path) - 2


class SimServer:
    """A policy server with latency on a :class:`SimClock`, as an ``AsyncPolicy``.

    ``policy(observation) -> actions [H, D]`` (deterministic: sampling options and seeds change
    nothing; replies carry no tokens). Concurrent requests are served side by side, as the
    batching server does (``serial=True``: one at a time, each waiting for the previous one).
    ``stalled`` makes it stop answering.
    """

    def __init__(
        self, clock: SimClock, policy: Callable[[dict], np.ndarray], latency: Latency, seed: int = 0, serial: bool = False
    ) -> None:
        self.clock = clock
        self.policy = policy
        self.latency = latency
        self.rng = np.random.default_rng(seed)
        self.stalled = False
        self._ids = itertools.count(1)
        self._jobs: dict[int, tuple[float, dict]] = {}
        self._busy_until = -math.inf
        self.serial = serial
        self.latencies: list[float] = []

    def submit(self, observation: dict, **options) -> int:
        rid = next(self._ids)
        start = max(self.clock(), self._busy_until) if self.serial else self.clock()
        ready = start + self.latency.sample(self.rng)
        self._busy_until = ready
        self.latencies.append(ready - self.clock())
        reply = {"actions": np.asarray(self.policy(observation), dtype=np.float32), "tokens": None, "logprobs": None,
                 "version": 0, "request_id": rid}
        self._jobs[rid] = (ready, reply)
        return rid

    def poll(self, request_id: int) -> Optional[dict]:
        if request_id not in self._jobs:
            raise KeyError(f"unknown request id {request_id}")
        ready, reply = self._jobs[request_id]
        if self.stalled or self.clock() < ready - 1e-9:  # (tolerant of float tick arithmetic)
            return None
        del self._jobs[request_id]
        return reply

    def cancel(self, request_id: int) -> None:
        self._jobs.pop(request_id, None)

    def infer(self, observations, *, mode: str = "greedy", temperature: float | None = None,
              return_tokens: bool = False, seeds=None) -> list[dict]:
        """Blocking: the simulated time passes while the server thinks (until the last reply is ready)."""
        if self.stalled:
            raise TimeoutError("SimServer is stalled: a blocking infer would never return")
        ids = [self.submit(o) for o in check_infer_args(observations, seeds, mode)]
        ready = max((self._jobs[rid][0] for rid in ids), default=self.clock())
        self.clock.advance(max(0.0, ready - self.clock()))
        return [self.poll(rid) for rid in ids]


class SimArm:
    """Joint positions following their targets with a first-order lag of time constant ``tau``."""

    def __init__(self, q0, tau: float = 0.05) -> None:
        self.q = as_vector(q0, None, "q0").copy()
        self.tau = float(tau)

    def step(self, target, dt: float) -> np.ndarray:
        a = 1.0 if self.tau <= 0 else 1.0 - math.exp(-dt / self.tau)
        self.q = self.q + a * (np.asarray(target, dtype=np.float64) - self.q)
        return self.q.copy()
