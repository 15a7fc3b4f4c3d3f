"""ChunkController: one control tick from policy client to safe arm command (the node is a shell).

Per tick: take the newest observation stamp; collect a chunk that has arrived; ask the policy for
the next one when the executor wants it (non-blocking ``submit``/``poll`` when the policy is an
:class:`~vla_robot.policy.interface.AsyncPolicy`, else a blocking ``infer([observation])``); take
the executor's action for ``now``; let the watchdog veto
it; pass whatever is sent — policy action, hold, teleop command — through the safety filter; and
return the command with the reason for it. At most ``executor.max_in_flight`` requests are in
flight (one for open_loop and temporal_ensemble).
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from vla_robot.control.config import ControlConfig
from vla_robot.control.executors import make_executor
from vla_robot.control.limits import JointLimits, as_vector
from vla_robot.control.safety import SafetyFilter
from vla_robot.control.trajectory import chunk_to_trajectory
from vla_robot.control.watchdog import Watchdog
from vla_robot.policy.interface import Policy

_REQUEST_OPTIONS = {"mode", "temperature", "return_tokens"}  # the same for every request of a controller


@dataclass
class TickResult:
    """What to send this tick and why."""

    now: float  # the time the command is for
    command: np.ndarray  # safe joint target (after the safety filter)
    source: str  # "policy" | "hold" | "teleop" | "estop"
    reason: str = ""  # why it holds ("" while the policy drives)
    clamps: tuple = ()  # safety stages that changed this command
    raw: Optional[np.ndarray] = None  # the executor's (or teleop's) command before safety
    chunk: Optional[dict] = None  # the reply the action came from (actions, tokens, logprobs, version)
    index: Optional[int] = None  # index of the action within that chunk
    blended: bool = False  # the action mixes several chunks
    requested: bool = False  # a chunk was requested this tick
    received: Optional[dict] = None  # the (last) reply that arrived this tick, if any
    # every reply that arrived this tick (several requests may be in flight), oldest request first,
    # each with the observation it was computed from (see :class:`Arrival`)
    arrivals: tuple = ()
    # the hold (or e-stop) comes from the watchdog: a fault (stale observation, no chunk in time,
    # e-stop), not an executor that is merely waiting for its next chunk
    watchdog_hold: bool = False


@dataclass
class ControllerStats:
    ticks: int = 0
    sources: Counter = field(default_factory=Counter)  # source -> ticks
    holds: Counter = field(default_factory=Counter)  # hold reason (first words) -> ticks
    starved: int = 0  # policy ticks without an action although chunks had been arriving
    requests: int = 0
    replies: int = 0
    errors: int = 0
    timeouts: int = 0
    last_error: str = ""

    def as_dict(self) -> dict:
        return {
            "ticks": self.ticks,
            "sources": dict(self.sources),
            "holds": dict(self.holds),
            "starved": self.starved,
            "requests": self.requests,
            "replies": self.replies,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "last_error": self.last_error,
        }


class Arrival(NamedTuple):
    """A reply with what it answered: the on-policy record needs exactly what the server saw."""

    reply: dict
    obs_time: float  # stamp of the observation
    observation: dict  # the observation as the client sent it (images, state, instruction)
    options: dict  # the request options (mode, temperature, return_tokens)


@dataclass
class _Pending:
    request_id: Any
    obs_time: float
    sent: float
    observation: dict


class ChunkController:
    """Drive an arm from a policy, safely: the chunk executor, watchdog and safety filter wrapped
    around a :class:`~vla_robot.policy.interface.Policy` (openpi's ``ActionChunkBroker``, plus safety).

    ``client``: a ``Policy``. When it also has ``submit``/``poll`` (an ``AsyncPolicy``: the ZMQ
    client, the simulated server) requests never block a tick: up to ``executor.max_in_flight``
    are in flight and ``cancel`` drops the ones no longer wanted. Otherwise (the in-process
    runtime) each request is a blocking ``client.infer([observation], **request_options)[0]`` and
    ``clock`` is re-read after it, since the command goes out after the answer. A reply is a dict
    with ``"actions"`` [H, D] (see docs/interfaces.md, serving). ``request_options`` go to every
    request: ``mode``, ``temperature``, ``return_tokens``. ``fk``: optional ``fk(q) -> xyz`` for
    the workspace box.
    """

    def __init__(
        self,
        config: ControlConfig,
        limits: JointLimits,
        client,
        *,
        fk: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        request_options: Optional[dict] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config.validate()
        self.config = config
        self.dt = config.dt
        self.limits = limits
        self.client = client
        if not isinstance(client, Policy):
            raise TypeError(f"client {type(client).__name__} is not a Policy: it needs infer(observations, **options) "
                            "(and submit/poll/cancel to be asked without blocking), see vla_robot.policy.interface")
        # submit/poll alone is enough to ask without blocking; cancel is used when it is there
        self.blocking = not (callable(getattr(client, "submit", None)) and callable(getattr(client, "poll", None)))
        self.request_options = dict(request_options or {})
        unknown = sorted(set(self.request_options) - _REQUEST_OPTIONS)
        if unknown:
            raise ValueError(f"request_options {unknown} unknown; allowed: {', '.join(sorted(_REQUEST_OPTIONS))}")
        self.clock = clock
        self.executor = make_executor(config)
        self.executor.action_dim = limits.n  # a chunk for another arm is a bad reply, not a crash
        self.safety = SafetyFilter(limits, config.safety, fk=fk)
        self.watchdog = Watchdog(config.watchdog)
        wd = config.watchdog
        self.safe_action = None if wd.safe_action is None else as_vector(wd.safe_action, limits.n, "watchdog.safe_action")
        if self.safe_action is not None and not limits.contains(self.safe_action):
            raise ValueError(f"watchdog.safe_action {wd.safe_action} lies outside the joint limits")
        self.stats = ControllerStats()
        self._replies: OrderedDict[int, dict] = OrderedDict()
        self._pending: list[_Pending] = []
        self._mode = "idle"
        self._arrivals: list = []
        self._held = False
        self._had_chunk = False

    # --- episode control ---------------------------------------------------------------------
    def reset(self, measured_q, now: float) -> None:
        """A new episode: the arm is at ``measured_q``; the policy drives from ``now``."""
        self.safety.reset(measured_q)
        self.executor.reset()
        self.watchdog.start(now)
        self._drop_pending()  # a late reply to an old request is ignored
        self._replies.clear()
        self._mode = "policy"
        self._held = False
        self._had_chunk = False

    def estop(self, reason: str = "e-stop requested") -> None:
        self.watchdog.estop(reason)

    def reset_estop(self, now: float) -> None:
        """Clear the e-stop latch; the policy resumes from a fresh plan, ramping from where the arm is."""
        self.watchdog.reset_estop()
        self._resume(now)

    def _resume(self, now: float) -> None:
        self.executor.reset()
        self._replies.clear()
        self._drop_pending()
        self._had_chunk = False
        self.watchdog.start(now)
        self.safety.start_ramp()

    # --- the tick ----------------------------------------------------------------------------
    def tick(
        self,
        now: float,
        obs_stamp: Optional[float],
        get_observation: Callable[[], dict],
        teleop=None,
    ) -> TickResult:
        """One control tick at ``now``.

        ``obs_stamp``: capture time of the newest observation (same clock as ``now``), or None;
        ``get_observation()`` builds it (called only when a chunk is requested; the reply comes back
        with it in ``arrivals``, see :class:`Arrival`); ``teleop``: a
        joint target from a human, which then drives instead of the policy (still filtered).
        """
        if self.safety.last is None:
            raise RuntimeError("ChunkController.tick() before reset(measured_q, now)")
        if obs_stamp is not None:
            self.watchdog.observe(obs_stamp)
        self.stats.ticks += 1
        if teleop is not None:
            return self._teleop_tick(now, teleop)
        if self._mode == "teleop":
            self._mode = "policy"
            self._resume(now)
        self._arrivals: list = []
        received = self._collect(now)
        requested = False
        pending = [p.obs_time for p in self._pending]
        if not self.watchdog.estopped and self.executor.needs_chunk(now, pending):
            fresh = obs_stamp is not None and now - obs_stamp <= self.config.watchdog.max_observation_age_s
            if fresh:
                requested = True
                now, got = self._request(now, obs_stamp, get_observation)
                received = got or received
        step = self.executor.step(now)
        ok, why = self.watchdog.check(now)
        chunk = self._replies.get(step.chunk_seq) if step.chunk_seq is not None else None
        if self.watchdog.estopped:
            cmd, source, reason = self.safety.freeze(), "estop", why
        elif not ok or step.action is None:
            reason = why or step.reason
            if ok and self._had_chunk and step.action is None:
                self.stats.starved += 1
            use_safe = not ok and self.safe_action is not None and self.config.watchdog.hold == "safe_action"
            target = self.safe_action if use_safe else self.safety.last
            cmd, source = self.safety.filter(target, self.dt), "hold"
            if not ok and not self._held:  # entering a watchdog hold: the plan is void
                self._held = True
                self.executor.reset()
                self._had_chunk = False
            hold_kind = self.watchdog.last_kind if not ok else step.reason
        else:
            if self._held:  # back from a watchdog hold: ramp from where the arm stands
                self.safety.start_ramp()
                self._held = False
            cmd, source, reason = self.safety.filter(step.action, self.dt), "policy", ""
        if source == "hold":
            self.stats.holds[hold_kind] += 1
        elif source == "estop":
            self.stats.holds["estop"] += 1
        self.stats.sources[source] += 1
        return TickResult(
            now=now,
            command=cmd,
            source=source,
            reason=reason,
            clamps=self.safety.last_clamps,
            raw=None if step.action is None or source != "policy" else step.action,
            chunk=chunk if source == "policy" else None,
            index=step.index if source == "policy" else None,
            blended=step.blended and source == "policy",
            requested=requested,
            received=received,
            arrivals=tuple(self._arrivals),
            watchdog_hold=source == "estop" or (source == "hold" and not ok),
        )

    def _teleop_tick(self, now: float, teleop) -> TickResult:
        if self._mode != "teleop":
            self._mode = "teleop"
            self._drop_pending()
        raw = as_vector(teleop, self.limits.n, "teleop command")
        if self.watchdog.estopped:
            cmd, source, reason = self.safety.freeze(), "estop", f"e-stop latched: {self.watchdog.estop_reason}"
            self.stats.holds["estop"] += 1
        else:
            cmd, source, reason = self.safety.filter(raw, self.dt), "teleop", ""
        self.stats.sources[source] += 1
        return TickResult(now=now, command=cmd, source=source, reason=reason, clamps=self.safety.last_clamps, raw=raw)

    def _drop_pending(self, which=None) -> None:
        """Stop waiting for requests (all by default); the client forgets them, late replies are dropped."""
        for p in list(self._pending if which is None else which):
            self._pending.remove(p)
            cancel = getattr(self.client, "cancel", None)
            if cancel is not None:
                try:
                    cancel(p.request_id)
                except Exception:  # noqa: BLE001 - best effort
                    pass

    def _collect(self, now: float) -> Optional[dict]:
        """Poll every request in flight; returns the last reply that arrived (if any)."""
        got = None
        for p in list(self._pending):
            try:
                reply = self.client.poll(p.request_id)
            except Exception as e:  # noqa: BLE001 - the loop must keep holding safely, and report
                self._pending.remove(p)
                self.stats.errors += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
                continue
            if reply is None:
                if now - p.sent > self.config.request_timeout_s:
                    self._drop_pending([p])
                    self.stats.timeouts += 1
                    self.stats.last_error = f"no reply within request_timeout_s={self.config.request_timeout_s} s"
                continue
            self._pending.remove(p)
            got = self._accept(reply, p.obs_time, now, p.observation) or got
        return got

    def _request(self, now: float, obs_stamp: float, get_observation) -> tuple[float, Optional[dict]]:
        self.stats.requests += 1
        try:
            observation = get_observation()
            if self.blocking:
                self.watchdog.requested(now)
                reply = self.client.infer([observation], **self.request_options)[0]
                now = max(now, self.clock())  # the command goes out after the answer
                return now, self._accept(reply, obs_stamp, now, observation)
            rid = self.client.submit(observation, **self.request_options)
            self._pending.append(_Pending(rid, obs_stamp, now, observation))
            self.watchdog.requested(now)
        except Exception as e:  # noqa: BLE001
            self.stats.errors += 1
            self.stats.last_error = f"{type(e).__name__}: {e}"
            return now, None
        return now, self._collect(now)  # a fast server may have answered already

    def _accept(self, reply, obs_time: float, now: float, observation: dict) -> Optional[dict]:
        if not isinstance(reply, dict) or "actions" not in reply:
            self.stats.errors += 1
            self.stats.last_error = f"reply without 'actions': {type(reply).__name__}"
            return None
        try:
            seq = self.executor.add_chunk(reply["actions"], obs_time, now)
        except ValueError as e:
            self.stats.errors += 1
            self.stats.last_error = f"bad chunk: {e}"
            return None
        self.stats.replies += 1
        self._arrivals.append(Arrival(reply, obs_time, observation, self.request_options))
        self.watchdog.chunk_received(now)
        self._had_chunk = True
        self._replies[seq] = reply
        while len(self._replies) > 8:
            self._replies.popitem(last=False)
        return reply

    # --- for the node ------------------------------------------------------------------------
    def trajectory(self, chunk, time_offset: float = 0.0, obs_time: Optional[float] = None,
                   now: Optional[float] = None) -> dict:
        """A chunk, filtered from the current safe state without changing it, as a JointTrajectory dict.

        With ``obs_time`` and ``now`` the actions whose time (``obs_time + i·dt``) has passed are
        left out, so that time_from_start counts from ``now`` (stamp the message with ``now``).
        """
        arr = np.asarray(chunk, dtype=np.float64)
        if (obs_time is None) != (now is None):
            raise ValueError("give obs_time and now together (or neither)")
        if obs_time is not None:
            skip = max(0, int(np.floor((now - obs_time) / self.dt + 0.5 + 1e-9)) + 1)
            if arr.ndim != 2 or skip >= arr.shape[0]:
                raise ValueError(f"every action of this chunk is in the past ({skip} ticks since its observation)")
            arr = arr[skip:]
        safe = self.safety.preview(arr, self.dt)
        return chunk_to_trajectory(safe, self.dt, self.limits.names, start_q=self.safety.last, time_offset=time_offset)

    def report(self) -> dict:
        """Every count in one place: ticks by source, holds by reason, clamps, executor and watchdog."""
        return {
            "controller": self.stats.as_dict(),
            "safety": self.safety.stats.as_dict(),
            "executor": self.executor.stats.as_dict(),
            "watchdog_holds": dict(self.watchdog.holds),
            "estop": self.watchdog.estop_reason,
        }
