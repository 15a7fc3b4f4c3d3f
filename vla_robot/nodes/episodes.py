"""The episode state machine, without ROS: reset -> run -> label -> save.

The node (episode_manager_node.py) feeds it inputs (services, the twin's reset and success
reports, policy faults, the clock) and publishes the events it emits. Everything here is plain
Python so it is tested directly and the RL engineer can drive it with a scheduler.

States::

    idle --start--> resetting --reset_done--> running --end--> labelling --label--> idle (saved)
                        |                       |                  |
                        +--timeout: fault       +-- success check, stop, timeout, fault
                                                                   +--discard / label timeout

Events emitted (dicts with ``type``; the node publishes them as JSON on ``episode/event``):
``reset`` (episode, task, instruction, seed, start), ``start`` (episode, task, instruction,
start_condition), ``end`` (episode, reason, fault), ``save`` (episode, label) or ``discard``
(episode, reason), ``done`` (no more episodes).

Scheduler hook: ``scheduler(index, history) -> EpisodeRequest | None`` (None: stop), or any object
with ``next(version) -> (task, start)`` and ``record(task, start, label)`` (rl.scheduler.GroupScheduler).
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Hashable

__all__ = ["EpisodeRequest", "EpisodeResult", "EpisodeManager", "LABELS", "END_REASONS"]

LABELS = ("success", "failure", "unlabelled")
END_REASONS = ("success_check", "stopped", "timeout", "fault")


@dataclass
class EpisodeRequest:
    """What the next episode is: task, language instruction, and the start condition for the twin."""

    task: str = ""
    instruction: str = ""
    seed: int | None = None
    start: Hashable | None = None
    max_duration_s: float | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class EpisodeResult:
    index: int
    mode: str
    task: str
    instruction: str
    start_condition: Any
    seed: int | None
    end_reason: str  # one of END_REASONS, or "reset_failed"
    label: str  # success | failure | unlabelled
    saved: bool  # False: discarded
    fault: str | None = None
    duration_s: float = 0.0  # robot (or sim) time from start to end
    steps: int = 0  # joint-state updates seen while running
    label_source: str = ""  # human | auto | fault | timeout
    policy_versions: list[int] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.label == "success"

    def to_dict(self) -> dict:
        return asdict(self)


class EpisodeManager:
    """Thread-safe; every input method may be called from any thread. ``tick(now)`` drives timeouts.

    ``emit(event)`` is called for each event, outside the lock. ``clock`` gives wall seconds for
    reset and label timeouts; the episode's own duration is measured on the robot's time, which
    the node passes with :meth:`observe` (sim time in the twin, so a faster-than-real-time sim
    times out on sim seconds).
    """

    IDLE, RESETTING, RUNNING, LABELLING, DONE = "idle", "resetting", "running", "labelling", "done"

    def __init__(
        self,
        config,
        emit: Callable[[dict], None],
        scheduler: Any = None,
        on_result: Callable[[EpisodeResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self._emit = emit
        self.scheduler = scheduler
        self.on_result = on_result
        self.clock = clock
        self.state = self.IDLE
        self.index = -1
        self.results: list[EpisodeResult] = []
        self._lock = threading.RLock()
        self._pending: list[dict] = []
        self._req: EpisodeRequest | None = None
        self._t_state = clock()
        self._robot_t0: float | None = None
        self._robot_now: float | None = None
        self._steps = 0
        self._end: tuple[str, str | None] | None = None
        self._success_seen = False
        self._instruction = ""
        self._start_condition: Any = None
        self._versions: list[int] = []
        self._scheduled = 0
        self.estopped: str | None = None  # the e-stop reason while it is latched

    # --- inputs ---------------------------------------------------------------------------------
    def start(self) -> tuple[bool, str]:
        """Begin the next episode (reset first). In resetting with reset_source operator: confirm the reset."""
        with self._lock:
            if self.estopped is not None:
                return False, f"cannot start: the e-stop is latched ({self.estopped}); clear it first"
            if self.state == self.RESETTING and self.config.reset_source == "operator":
                self._begin_running({})
                out = True, f"episode {self.index} running"
            elif self.state != self.IDLE:
                out = False, f"cannot start: episode {self.index} is {self.state}"
            else:
                out = self._next_episode()
        self._flush()
        return out

    def stop(self) -> tuple[bool, str]:
        """End the running episode now (reason 'stopped'); it then waits for its label."""
        with self._lock:
            if self.state == self.RESETTING:
                self._finish_reset_failed("stopped during reset")
                out = True, f"episode {self.index} abandoned during reset"
            elif self.state != self.RUNNING:
                out = False, f"no episode is running (state {self.state})"
            else:
                self._end_running("stopped")
                out = True, f"episode {self.index} stopped; waiting for its label"
        self._flush()
        return out

    def label(self, success: bool, source: str = "human") -> tuple[bool, str]:
        """Label the episode that just ended (or the running one, which then ends) and save it."""
        with self._lock:
            if self.state == self.RUNNING:
                self._end_running("stopped")
            if self.state != self.LABELLING:
                out = False, f"nothing to label (state {self.state})"
            else:
                self._save("success" if success else "failure", source)
                out = True, f"episode {self.index} saved as {'success' if success else 'failure'}"
        self._flush()
        return out

    def discard(self) -> tuple[bool, str]:
        """Throw the current or just-ended episode away (not saved, not counted)."""
        with self._lock:
            if self.state == self.RUNNING:
                self._end_running("stopped")
            if self.state != self.LABELLING:
                out = False, f"nothing to discard (state {self.state})"
            else:
                self._finish(label="unlabelled", saved=False, source="human")
                out = True, f"episode {self.index} discarded"
        self._flush()
        return out

    def reset_done(self, info: dict) -> None:
        """The twin (or arm) finished the reset of episode ``info['episode']``."""
        with self._lock:
            if self.state == self.RESETTING and info.get("episode", self.index) == self.index:
                self._begin_running(info)
        self._flush()

    def observe(self, robot_time: float) -> None:
        """A new joint state at ``robot_time`` (its stamp): counts steps, drives the duration limit."""
        with self._lock:
            self._robot_now = robot_time
            if self.state == self.RUNNING:
                if self._robot_t0 is None:
                    self._robot_t0 = robot_time
                self._steps += 1
                if robot_time - self._robot_t0 >= self._max_duration():
                    self._end_running("timeout")
        self._flush()

    def success_check(self, success: bool) -> None:
        """The twin's task check for the current step."""
        with self._lock:
            if self.state == self.RUNNING and success:
                self._success_seen = True
                if self.config.end_on_success:
                    self._end_running("success_check")
        self._flush()

    def fault(self, reason: str) -> None:
        """A fault (watchdog, e-stop, lost device): the running episode ends as failed-by-fault."""
        with self._lock:
            if self.state == self.RUNNING:
                self._end_running("fault", reason)
            elif self.state == self.RESETTING:
                self._finish_reset_failed(reason)
        self._flush()

    def estop(self, active: bool, reason: str = "e-stop") -> None:
        """The e-stop latched (ends a running episode as a fault, blocks new ones) or cleared."""
        with self._lock:
            self.estopped = reason if active else None
        if active:
            self.fault(reason)

    def policy_version(self, version: int) -> None:
        with self._lock:
            if self.state == self.RUNNING and (not self._versions or self._versions[-1] != version):
                self._versions.append(int(version))

    def tick(self, now: float | None = None) -> None:
        """Wall-clock timeouts (reset, label) and autostart."""
        now = self.clock() if now is None else now
        with self._lock:
            waited = now - self._t_state
            if self.state == self.RESETTING and self.config.reset_source != "operator":
                if waited > self.config.reset_timeout_s:
                    self._finish_reset_failed(f"reset not done within {self.config.reset_timeout_s:.1f} s")
            elif self.state == self.LABELLING and waited > self.config.label_timeout_s:
                self._save("unlabelled", "timeout")
            elif self.state == self.IDLE and self.config.autostart and self.estopped is None:
                self._next_episode()
        self._flush()

    # --- transitions (lock held) ----------------------------------------------------------------
    def _max_duration(self) -> float:
        if self._req is not None and self._req.max_duration_s:
            return self._req.max_duration_s
        return self.config.max_duration_s

    def _request(self) -> EpisodeRequest | None:
        i = self.index + 1
        cfg = self.config
        if cfg.episodes and self._scheduled >= cfg.episodes:
            return None
        s = self.scheduler
        if s is None:
            return EpisodeRequest(task=cfg.task, instruction=cfg.instruction, seed=cfg.seed + i)
        if hasattr(s, "next") and hasattr(s, "record"):
            version = self._versions[-1] if self._versions else (
                self.results[-1].policy_versions[-1] if self.results and self.results[-1].policy_versions else 0
            )
            task, start = s.next(version)
            return EpisodeRequest(task=task or cfg.task, instruction=cfg.instruction, start=start, seed=cfg.seed + i)
        req = s(i, list(self.results))
        if req is not None and not isinstance(req, EpisodeRequest):
            raise TypeError(f"the scheduler must return an EpisodeRequest or None, got {type(req).__name__}")
        return req

    def _next_episode(self) -> tuple[bool, str]:
        req = self._request()
        if req is None:
            if self.state != self.DONE:
                self._set(self.DONE)
                self._pending.append({"type": "done", "episodes": len(self.results)})
            return False, "no more episodes"
        self.index += 1
        self._scheduled += 1
        self._req = req
        self._steps, self._robot_t0, self._end, self._success_seen = 0, None, None, False
        self._versions = []
        self._instruction = req.instruction or self.config.instruction
        self._start_condition = req.start
        self._set(self.RESETTING)
        self._pending.append(
            {
                "type": "reset",
                "episode": self.index,
                "mode": self.config.mode,
                "task": req.task,
                "instruction": self._instruction,
                "seed": req.seed,
                "start": req.start,
            }
        )
        if self.config.reset_source == "none":
            self._begin_running({})
            return True, f"episode {self.index} running"
        return True, f"episode {self.index} resetting"

    def _begin_running(self, info: dict) -> None:
        self._instruction = info.get("instruction") or self._instruction
        if "start_condition" in info:
            self._start_condition = info["start_condition"]
        self._set(self.RUNNING)
        self._robot_t0 = None
        self._pending.append(
            {
                "type": "start",
                "episode": self.index,
                "mode": self.config.mode,
                "task": self._req.task if self._req else "",
                "instruction": self._instruction,
                "start_condition": self._start_condition,
                # stamp of the first observation of the reset scene (twin), or None: drive on nothing older
                "stamp": info.get("stamp"),
            }
        )

    def _end_running(self, reason: str, fault: str | None = None) -> None:
        self._end = (reason, fault)
        self._set(self.LABELLING)
        self._pending.append({"type": "end", "episode": self.index, "reason": reason, "fault": fault})
        src = self.config.label_source
        if reason == "fault" and self.config.mode in ("evaluate", "rl"):
            self._save("failure", "fault")
        elif src in ("auto", "auto_or_human") and reason in ("success_check", "timeout"):
            self._save("success" if self._success_seen else "failure", "auto")
        elif src == "auto":
            self._save("success" if self._success_seen else "failure", "auto")
        elif self.config.mode == "record" and reason == "success_check":
            self._save("success", "auto")

    def _save(self, label: str, source: str) -> None:
        self._finish(label=label, saved=True, source=source)

    def _finish_reset_failed(self, reason: str) -> None:
        self._end = ("reset_failed", reason)
        self._pending.append({"type": "end", "episode": self.index, "reason": "reset_failed", "fault": reason})
        self._finish(label="unlabelled", saved=False, source="fault")

    def _finish(self, label: str, saved: bool, source: str) -> None:
        reason, fault = self._end or ("stopped", None)
        duration = (self._robot_now - self._robot_t0) if (self._robot_t0 is not None and self._robot_now) else 0.0
        req = self._req or EpisodeRequest()
        result = EpisodeResult(
            index=self.index,
            mode=self.config.mode,
            task=req.task,
            instruction=self._instruction,
            start_condition=self._start_condition,
            seed=req.seed,
            end_reason=reason,
            label=label,
            saved=saved,
            fault=fault,
            duration_s=max(0.0, duration),
            steps=self._steps,
            label_source=source,
            policy_versions=list(self._versions),
            meta=dict(req.meta),
        )
        self.results.append(result)
        if saved:
            self._pending.append({"type": "save", "episode": self.index, "label": label, "label_source": source,
                                  "task": req.task, "start_condition": self._start_condition})
        else:
            self._pending.append({"type": "discard", "episode": self.index, "reason": fault or "discarded"})
        s = self.scheduler
        if s is not None and hasattr(s, "record") and hasattr(s, "next"):
            s.record(req.task or self.config.task, req.start, {"success": 1, "failure": 0}.get(label) if saved else None)
        self._set(self.IDLE)
        if self.on_result is not None:
            self._pending.append({"type": "_result", "result": result})

    def _set(self, state: str) -> None:
        self.state = state
        self._t_state = self.clock()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for ev in pending:
            if ev["type"] == "_result":
                self.on_result(ev["result"])
            else:
                self._emit(ev)

    # --- queries --------------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return self._instruction

    @property
    def running(self) -> bool:
        return self.state == self.RUNNING
