"""Dynamic batching of ``act`` requests in front of one policy runtime, and weight swaps between batches.

One worker thread owns the runtime: it takes the oldest request, gathers the requests that are
already queued (and waits up to ``max_wait_ms`` for clients that have been active recently but are
not in the batch yet), runs ``runtime.infer`` once per group of equal sampling options, and hands
each request its own answer through its callback. Weight swaps queued with :meth:`Batcher.swap`
run in the same thread *between* batches, so every reply comes from exactly one version.

A single client never waits: the batcher waits only for other clients it has seen within
``active_window_s``, so batching costs a lone robot nothing.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vla_robot.serving.protocol import ActOptions

__all__ = ["Batcher", "Job", "ServerStats"]


@dataclass
class Job:
    """One ``act`` request waiting for the model. ``done(outcome)`` gets a result or an error."""

    obs: dict
    options: ActOptions
    done: Callable[[dict], None]
    client: Any = None
    t_received: float = field(default_factory=time.monotonic)
    request_id: int | None = None
    t_queued: float = 0.0


@dataclass
class _Swap:
    state: Any
    version: int
    delta: bool
    lora_base: str | None = None  # a LoRA adapter push on this base (runtime.load_weights)
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class ServerStats:
    """Counters and recent latencies, safe to update from several threads."""

    def __init__(self, window: int = 2048):
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.requests: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.batch_sizes: collections.Counter = collections.Counter()
        self.latency_ms: collections.deque = collections.deque(maxlen=window)
        self.model_ms: collections.deque = collections.deque(maxlen=window)
        self.swaps = 0
        self.swaps_rejected = 0

    def count(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def batch(self, size: int, model_ms: float) -> None:
        with self._lock:
            self.batch_sizes[size] += 1
            self.model_ms.append(model_ms)

    def latency(self, ms: float) -> None:
        with self._lock:
            self.latency_ms.append(ms)

    def swapped(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.swaps += 1
            else:
                self.swaps_rejected += 1

    def snapshot(self) -> dict:
        with self._lock:
            lat = np.asarray(self.latency_ms, dtype=np.float64)
            mod = np.asarray(self.model_ms, dtype=np.float64)

            def pct(a: np.ndarray) -> dict:
                if a.size == 0:
                    return {"p50": None, "p90": None, "p99": None, "n": 0}
                p50, p90, p99 = np.percentile(a, [50, 90, 99])
                return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "n": int(a.size)}

            return {
                "uptime_s": time.monotonic() - self.started,
                "requests": dict(self.requests),
                "errors": dict(self.errors),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "latency_ms": pct(lat),
                "model_ms": pct(mod),
                "swaps": self.swaps,
                "swaps_rejected": self.swaps_rejected,
            }


class Batcher:
    """Runs ``runtime.infer`` on batches of queued :class:`Job` s in its own thread."""

    def __init__(
        self,
        runtime: Any,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        active_window_s: float = 1.0,
        stats: ServerStats | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.runtime = runtime
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1e3
        self.max_queue = int(max_queue)
        self.active_window_s = float(active_window_s)
        self.stats = stats or ServerStats()
        self._jobs: queue.Queue = queue.Queue()
        self._swaps: queue.Queue = queue.Queue()
        self._last_seen: dict[Any, float] = {}
        self._seen_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- producer side (any thread) --------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return self._jobs.qsize()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; ``False`` (and nothing queued) when the queue is full or the batcher stopped."""
        if self._stop.is_set() or self._jobs.qsize() >= self.max_queue:
            return False
        job.t_queued = time.monotonic()
        with self._seen_lock:
            self._last_seen[job.client] = job.t_queued
        self._jobs.put(job)
        return True

    def swap(self, state: Any, version: int, delta: bool = False, timeout_s: float | None = None,
             lora_base: str | None = None) -> None:
        """Load new weights (``delta``: added to the current ones) between two batches; wait until they
        serve. Raises what ``runtime.load_weights`` raised if refused; the old version keeps serving."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the batcher is not running; start the server before pushing weights")
        s = _Swap(state, int(version), bool(delta), lora_base)
        self._swaps.put(s)
        self._jobs.put(None)  # wake the worker
        if not s.finished.wait(timeout_s):
            raise TimeoutError(f"weights version {version} were not applied within {timeout_s} s")
        if s.error is not None:
            raise s.error

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="policy-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)
        # whoever is still waiting gets an answer
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.done(_error("unavailable", "the policy server is shutting down"))
        while True:
            try:
                s = self._swaps.get_nowait()
            except queue.Empty:
                break
            s.error = RuntimeError("the policy server is shutting down")
            s.finished.set()

    # --- worker ----------------------------------------------------------------------------------------

    def _active_clients(self, now: float) -> set:
        with self._seen_lock:
            stale = [c for c, t in self._last_seen.items() if now - t > self.active_window_s]
            for c in stale:
                del self._last_seen[c]
            return set(self._last_seen)

    def _gather(self, first: Job) -> list[Job]:
        batch = [first]
        deadline = first.t_queued + self.max_wait_s
        while len(batch) < self.max_batch and not self._stop.is_set():
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                now = time.monotonic()
                waiting_for = self._active_clients(now) - {j.client for j in batch}
                if not waiting_for or now >= deadline or self._swaps.qsize():
                    break
                try:
                    job = self._jobs.get(timeout=deadline - now)
                except queue.Empty:
                    break
            if job is None:  # a wake-up for a swap: run what we have, then swap
                if self._swaps.qsize() or self._stop.is_set():
                    break
                continue
            batch.append(job)
        return batch

    def _apply_swaps(self) -> None:
        while True:
            try:
                s = self._swaps.get_nowait()
            except queue.Empty:
                return
            try:
                current = int(getattr(self.runtime, "version", 0))
                if s.version <= current:
                    raise ValueError(f"weights version {s.version} is not newer than the serving version {current}")
                if s.lora_base is not None:
                    self.runtime.load_weights(s.state, s.version, lora_base=s.lora_base)
                elif s.delta:
                    self.runtime.load_weights(s.state, s.version, delta=True)
                else:
                    self.runtime.load_weights(s.state, s.version)
                if int(getattr(self.runtime, "version", s.version)) != s.version:
                    raise RuntimeError(f"runtime.load_weights did not set version {s.version}")
                self.stats.swapped(True)
            except BaseException as e:  # noqa: BLE001 - reported to the publisher; serving goes on
                s.error = e
                self.stats.swapped(False)
            finally:
                s.state = None
                s.finished.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._apply_swaps()
            try:
                first = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            if first is None:
                continue
            batch = self._gather(first)
            self._apply_swaps()  # a swap that came in while gathering serves this batch already
            groups: dict[tuple, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.options.key(), []).append(job)
            for jobs in groups.values():
                self._infer(jobs, len(batch))

    def _infer(self, jobs: list[Job], batch_size: int) -> None:
        opts = jobs[0].options
        t0 = time.monotonic()
        try:
            results = self._call(jobs, opts)
        except Exception:  # noqa: BLE001
            if len(jobs) > 1:  # find the request that broke the batch; the others still get answers
                for job in jobs:
                    self._infer([job], batch_size)
                return
            results = [self._failure()]
        model_ms = (time.monotonic() - t0) * 1e3
        self.stats.batch(len(jobs), model_ms)
        for job, res in zip(jobs, results):
            if "code" in res:
                job.done(res)
                continue
            res["timings"] = {
                "queue_ms": (t0 - job.t_queued) * 1e3,
                "model_ms": model_ms,
                "batch_size": batch_size,
            }
            job.done(res)

    def _call(self, jobs: list[Job], opts: ActOptions) -> list[dict]:
        kwargs: dict[str, Any] = {"mode": opts.mode, "return_tokens": opts.return_tokens}
        if opts.mode == "sample":
            kwargs["temperature"] = opts.temperature
            if any(j.options.seed is not None for j in jobs):
                kwargs["seeds"] = [j.options.seed for j in jobs]
        results = self.runtime.infer([j.obs for j in jobs], **kwargs)
        if len(results) != len(jobs):
            raise RuntimeError(f"runtime.infer returned {len(results)} results for {len(jobs)} observations")
        return [dict(r) for r in results]

    @staticmethod
    def _failure() -> dict:
        import sys

        e = sys.exc_info()[1]
        if isinstance(e, ValueError):
            return _error("bad_request", f"the policy rejected the observation: {e}")
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return _error("internal", f"the model failed on this request ({tb}); the server keeps serving")


def _error(code: str, message: str) -> dict:
    return {"code": code, "message": message}
