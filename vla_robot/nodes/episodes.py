"""The episode state machine, without ROS: reset -> run -> label -> save.

The node (episode_manager_node.py) feeds it inputs (services, labels, the twin's reset and success
reports, policy faults, the operator's takeover, the clock) and publishes the events it emits.
Everything here is plain Python so it is tested directly and the RL engineer can drive it with a
scheduler.

States::

    idle --start--> resetting --reset_done / start--> running --end--> labelling --label--> idle (saved)
                        |                               |                  |
                        +--timeout: fault               +-- success check, stop, timeout, fault
                                                                           +--discard / label timeout

Events emitted (dicts with ``type``; the node publishes them as JSON on ``episode/event``):
``reset`` (episode, task, instruction, seed, start, group, run), ``start`` (episode, task,
instruction, start_condition, stamp), ``end`` (episode, reason, fault), ``save`` (episode, label,
label_source, task, start_condition, intervened) or ``discard`` (episode, reason),
``label_rejected`` (episode, label, reason), ``ask`` (episode, reason, votes, label_confidence: with
``label_source: votes``, the votes did not agree and a person's label is wanted), ``done`` (no more
episodes). A ``save`` also carries ``label_confidence`` (1.0 for a person's or the twin's label, the
votes' mean P of the label for ``votes``, None for an unlabelled one) and ``votes`` (each voter's
P(success), when the episode was voted on, whoever labelled it in the end).

Labels name their episode (:meth:`EpisodeManager.label_episode`); a label for any episode but the
one waiting for its label is rejected, never applied to another. :meth:`EpisodeManager.label` (the
``~/label`` service) labels only the episode waiting for its label and never ends a running one.

Faults (rl and evaluate modes): a fault ends the episode, which then waits for its label like any
other; unlabelled after ``label_timeout_s`` (or when the next episode is started, or at once with
``label_source: auto``) it is saved with label ``unlabelled`` and label_source ``fault``: kept on
disk, never trained on, and its group's scheduler hands its start condition out again.

Votes (``label_source: votes``, :mod:`vla_robot.detector.votes`): when an episode ends (not by a
fault) the manager calls ``voter(episode, twin_success) -> Verdict`` on a thread of its own (the
detectors take a while; every input stays responsive meanwhile). A verdict with a label saves the
episode (source ``votes``); one without asks a person (the ``ask`` event) and the episode then waits
exactly as it waits for a person in ``human`` mode: a person's label, a discard, or after
``label_timeout_s`` saved ``unlabelled`` (source ``timeout``) with its votes recorded, kept on disk,
never trained on, and open to ``vla-robot dataset relabel``. A person may label before the votes
are in; their label stands and the late verdict is dropped. A faulted episode is not voted on (the
arm did not do what the policy chose): it waits for a person as in every mode.

Groups (rl mode): without a scheduler of its own the manager asks a
:class:`vla_robot.rl.scheduler.GroupScheduler` over ``{task: start_conditions}`` with
``group_size`` and ``max_open_groups``, so that GRPO groups fill up. Scheduler hook:
``scheduler(index, history) -> EpisodeRequest | None`` (None: stop), or any object with
``next(version) -> (task, start)`` and ``record(task, start, label)`` (rl.scheduler.GroupScheduler).

Instructions: the policy is never given an empty one in rl or evaluate mode. It is the scheduler's
or the ``instruction`` parameter; on the twin (``reset_source: twin``) the twin's own instruction
for the scene; elsewhere an empty instruction falls back to the task's text.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Hashable

from vla_robot.data.schema import Label

__all__ = ["EpisodeRequest", "EpisodeResult", "EpisodeManager", "END_REASONS", "DISCARD", "PERSON_LABELS",
           "LatestReset", "describe_reset"]

#: a person's answer that throws the episode away (not a label: nothing is saved)
DISCARD = "discard"
#: what a person may send on ``episode/label``
PERSON_LABELS = (Label.SUCCESS, Label.FAILURE, DISCARD)
#: modes whose episodes the policy drives: no episode starts without an instruction, faults are not failures
POLICY_MODES = ("evaluate", "rl")
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
    # the GRPO group this episode fills, for the operator: {"number": 2, "slot": 3, "size": 8}
    group: dict | None = None


@dataclass
class EpisodeResult:
    """How one episode ended: the episode manager's episode (the node layer's), one per episode run,
    saved or discarded; passed to ``on_result`` hooks and kept in :attr:`EpisodeManager.results`.

    Its one conversion toward the dataset is :meth:`save_event`: the ``save`` event the recorder
    (data/session.py) turns, with the recorded frames, into the journal's
    :class:`~vla_robot.data.schema.EpisodeRecord`. Toward the GRPO scheduler: ``label.reward``.
    """

    index: int
    mode: str
    task: str
    instruction: str
    start_condition: Any
    seed: int | None
    end_reason: str  # one of END_REASONS, or "reset_failed"
    label: Label
    saved: bool  # False: discarded
    fault: str | None = None
    duration_s: float = 0.0  # robot (or sim) time from start to end
    steps: int = 0  # joint-state updates seen while running
    label_source: str = ""  # human | auto | votes | fault | timeout
    confidence: float | None = None  # of the label: 1.0 a person's or the twin's, the votes' mean P, None unlabelled
    votes: dict = field(default_factory=dict)  # voter -> P(success), when the episode was voted on
    policy_versions: list[int] = field(default_factory=list)
    intervened: bool = False  # the operator took over (teleop/intervention) at some point while it ran
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.label = Label.of(self.label)

    @property
    def success(self) -> bool:
        return self.label is Label.SUCCESS

    def to_dict(self) -> dict:
        return {**asdict(self), "label": str(self.label)}

    def save_event(self) -> dict:
        """The ``save`` event of a saved episode: what the recorder needs to label and save it."""
        if not self.saved:
            raise ValueError(f"episode {self.index} was discarded: it has no save event")
        return {"type": "save", "episode": self.index, "label": str(self.label), "label_source": self.label_source,
                "label_confidence": self.confidence, "votes": dict(self.votes),
                "task": self.task, "start_condition": self.start_condition, "intervened": self.intervened}


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
        voter: Callable[[int, bool], Any] | None = None,
    ):
        self.config = config
        self._emit = emit
        if scheduler is None and config.mode == "rl":
            scheduler = default_scheduler(config)
        self.scheduler = scheduler
        self.on_result = on_result
        self.clock = clock
        # Names this manager's resets: a twin echoes it in reset_done, so a report left over from an
        # earlier manager (transient-local history after a restart) never starts one of ours.
        self.run_id = uuid.uuid4().hex[:12]
        self.state = self.IDLE
        self.index = -1
        self.results: list[EpisodeResult] = []
        self._lock = threading.RLock()
        # held from taking the queued events to their last emit: two threads flushing at once (the
        # executor's tick and a service call) would otherwise emit in the wrong order, e.g. the next
        # episode's reset before the save of the one that ended (re-entrant: a result hook may flush)
        self._flush_lock = threading.RLock()
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
        self._intervening = False  # the operator holds the arm now (latched teleop/intervention)
        self._intervened = False  # ... at some point of the running episode
        self.estopped: str | None = None  # the e-stop reason while it is latched
        self.refused: str | None = None  # why the last attempt to start an episode was refused
        # label_source votes: voter(episode, twin_success) -> detector.votes.Verdict, run on a thread
        self.voter = voter
        self._verdict: Any = None  # the verdict on the episode waiting for its label
        self._vote_threads: list[threading.Thread] = []

    # --- inputs ---------------------------------------------------------------------------------
    def start(self) -> tuple[bool, str]:
        """Begin the next episode (reset first). In resetting with reset_source operator: confirm the reset.

        While a faulted episode waits for its label, starting the next one saves it unlabelled (fault)."""
        with self._lock:
            if self.estopped is not None:
                return False, f"cannot start: the e-stop is latched ({self.estopped}); clear it first"
            if self.state == self.RESETTING and self.config.reset_source == "operator":
                out = self._begin_running({})
            elif self.state == self.LABELLING and self._fault_waits():
                self._save(Label.UNLABELLED, "fault")
                out = self._next_episode()
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
        """Label the episode waiting for its label (``~/label``). Never ends a running episode: a label
        pressed late must not stop and label the next one."""
        with self._lock:
            if self.state == self.LABELLING:
                out = self._apply_label(self.index, Label.of(bool(success)), source)
            else:
                out = self._reject(self.index if self.index >= 0 else None, str(Label.of(bool(success))),
                                   self._not_waiting())
        self._flush()
        return out

    def label_episode(self, episode: Any, label: Any, source: str = "human") -> tuple[bool, str]:
        """A label that names its episode (``episode/label``): applied only if ``episode`` waits for its label."""
        with self._lock:
            if isinstance(episode, bool) or not isinstance(episode, int):
                out = self._reject(None, label, f"a label must name its episode by index, got episode={episode!r}")
            elif label not in PERSON_LABELS:
                out = self._reject(episode, label, f"label must be one of {', '.join(PERSON_LABELS)}, got {label!r}")
            elif self.state != self.LABELLING or episode != self.index:
                why = self._not_waiting() if self.state != self.LABELLING else (
                    f"episode {self.index} is the one waiting for its label")
                out = self._reject(episode, label, f"episode {episode} is not waiting for its label: {why}")
            else:
                out = self._apply_label(episode, label, source)
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
                self._finish(label=Label.UNLABELLED, saved=False, source="human")
                out = True, f"episode {self.index} discarded"
        self._flush()
        return out

    def reset_done(self, info: dict) -> None:
        """The twin (or arm) finished the reset of episode ``info['episode']`` of run ``info['run']``."""
        with self._lock:
            if (self.state == self.RESETTING and info.get("episode", self.index) == self.index
                    and info.get("run", self.run_id) == self.run_id):
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
        """A fault (watchdog, e-stop, lost device): the running episode ends with reason 'fault'."""
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

    def intervention(self, active: bool) -> None:
        """The operator took over the arm (True) or handed it back (False); recorded per episode."""
        with self._lock:
            self._intervening = bool(active)
            if active and self.state == self.RUNNING:
                self._intervened = True

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
                self._save(Label.UNLABELLED, "fault" if self._fault_waits() else "timeout")
            elif self.state == self.IDLE and self.config.autostart and self.estopped is None:
                self._next_episode()
        self._flush()

    # --- transitions (lock held) ----------------------------------------------------------------
    def _max_duration(self) -> float:
        if self._req is not None and self._req.max_duration_s:
            return self._req.max_duration_s
        return self.config.max_duration_s

    def _fault_waits(self) -> bool:
        """The episode waiting for its label ended by a fault in a mode where that is not a failure."""
        return self._end is not None and self._end[0] == "fault" and self.config.mode in POLICY_MODES

    def _not_waiting(self) -> str:
        if self.state == self.RUNNING:
            return (f"episode {self.index} is still running (a label never ends a running episode: "
                    "stop it first with ~/stop)")
        return f"no episode waits for its label (state {self.state})"

    def _reject(self, episode: Any, label: Any, reason: str) -> tuple[bool, str]:
        self._pending.append({"type": "label_rejected", "episode": episode, "label": label, "reason": reason})
        return False, f"label rejected: {reason}"

    def _apply_label(self, episode: int, label: str, source: str) -> tuple[bool, str]:
        if label == DISCARD:
            self._finish(label=Label.UNLABELLED, saved=False, source=source)
            return True, f"episode {episode} discarded"
        self._save(Label.of(label), source)
        return True, f"episode {episode} saved as {label}"

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
            req = EpisodeRequest(task=task or cfg.task, instruction=cfg.instruction, start=start, seed=cfg.seed + i)
            where = s.position(task, start) if hasattr(s, "position") else None
            if where is not None:
                req.group = {"number": where[0], "slot": where[1], "size": getattr(s, "group_size", None)}
            return req
        req = s(i, list(self.results))
        if req is not None and not isinstance(req, EpisodeRequest):
            raise TypeError(f"the scheduler must return an EpisodeRequest or None, got {type(req).__name__}")
        return req

    def _instruction_for(self, req: EpisodeRequest) -> str:
        text = req.instruction or self.config.instruction
        if self.config.reset_source != "twin":  # a robot: the task's text says what to do (the twin has its own)
            text = text or req.task or self.config.task
        return text

    def _next_episode(self) -> tuple[bool, str]:
        req = self._request()
        if req is None:
            if self.state != self.DONE:
                self._set(self.DONE)
                self._pending.append({"type": "done", "episodes": len(self.results)})
            return False, "no more episodes"
        instruction = self._instruction_for(req)
        if not instruction and self.config.mode in POLICY_MODES and self.config.reset_source != "twin":
            self._give_back(req)
            self.refused = (
                f"cannot start episode {self.index + 1}: the policy needs a language instruction and none is set; "
                "set the episode manager's 'instruction' parameter (launch argument instruction:='pick up the "
                "red cube') or its 'task'")
            return False, self.refused
        self.refused = None
        self.index += 1
        self._scheduled += 1
        self._req = req
        self._steps, self._robot_t0, self._end, self._success_seen = 0, None, None, False
        self._versions = []
        self._instruction = instruction
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
                "group": req.group,
                "run": self.run_id,
            }
        )
        if self.config.reset_source == "none":
            return self._begin_running({})
        return True, f"episode {self.index} resetting"

    def _give_back(self, req: EpisodeRequest) -> None:
        """An episode the scheduler handed out does not run: it does not count toward its group."""
        s = self.scheduler
        if s is not None and hasattr(s, "record") and hasattr(s, "next"):
            s.record(req.task, req.start, None)

    def _begin_running(self, info: dict) -> tuple[bool, str]:
        instruction = info.get("instruction") or self._instruction
        if not instruction and self.config.mode in POLICY_MODES:
            self._finish_reset_failed(
                "no instruction for the policy: the reset gave none and the episode manager's 'instruction' "
                "parameter is empty; set it (launch argument instruction:='...')")
            return False, f"episode {self.index} not started: no instruction"
        self._instruction = instruction
        if "start_condition" in info:
            self._start_condition = info["start_condition"]
        self._set(self.RUNNING)
        self._robot_t0 = None
        self._intervened = self._intervening
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
        return True, f"episode {self.index} running"

    def _end_running(self, reason: str, fault: str | None = None) -> None:
        self._end = (reason, fault)
        self._set(self.LABELLING)
        self._pending.append({"type": "end", "episode": self.index, "reason": reason, "fault": fault})
        src = self.config.label_source
        if self._fault_waits():
            if src == "auto":  # nobody will label it: kept, never trained on
                self._save(Label.UNLABELLED, "fault")
            # else it waits for a person's label like any other end (see tick and start)
        elif src == "votes":
            self._pending.append({"type": "_vote", "episode": self.index, "twin": self._success_seen})
        elif src in ("auto", "auto_or_human") and reason in ("success_check", "timeout"):
            self._save(Label.of(self._success_seen), "auto")
        elif src == "auto":
            self._save(Label.of(self._success_seen), "auto")
        elif self.config.mode == "record" and reason == "success_check":
            self._save(Label.SUCCESS, "auto")

    def _save(self, label: Label, source: str) -> None:
        self._finish(label=label, saved=True, source=source)

    # --- votes ------------------------------------------------------------------------------------
    def _start_vote(self, episode: int, twin: bool) -> None:
        """Run the voter for ``episode`` on its own thread (called from _flush, outside the lock)."""
        if self.voter is None:
            from vla_robot.detector.votes import Verdict

            self.vote_done(episode, Verdict(None, None, {}, "no voter is set up (label_source votes without a "
                                                           "voter): a person labels every episode", source=""))
            return

        def run() -> None:
            try:
                verdict = self.voter(episode, twin)
            except Exception as e:  # noqa: BLE001 - a voter that breaks must not lose the episode
                from vla_robot.detector.votes import Verdict

                verdict = Verdict(None, None, {}, f"the votes failed ({type(e).__name__}: {e})", source="")
            self.vote_done(episode, verdict)

        t = threading.Thread(target=run, daemon=True, name=f"votes_{episode}")
        self._vote_threads = [v for v in self._vote_threads if v.is_alive()] + [t]
        t.start()

    def vote_done(self, episode: int, verdict: Any) -> None:
        """The votes on ``episode``: a label saves it (source votes); none asks a person. Dropped when the
        episode no longer waits for its label (a person was quicker, or it was discarded)."""
        with self._lock:
            if self.state == self.LABELLING and self.index == episode:
                self._verdict = verdict
                if verdict.label is not None:
                    self._save(verdict.label, verdict.source)
                else:
                    self._pending.append({"type": "ask", "episode": episode, "reason": verdict.reason,
                                          **verdict.record()})
        self._flush()

    def wait_for_votes(self, timeout: float | None = None) -> bool:
        """Wait for the votes under way (tests, shutdown); False if some are still running after ``timeout``."""
        for t in list(self._vote_threads):
            t.join(timeout)
        return not any(t.is_alive() for t in self._vote_threads)

    def _finish_reset_failed(self, reason: str) -> None:
        self._end = ("reset_failed", reason)
        self._pending.append({"type": "end", "episode": self.index, "reason": "reset_failed", "fault": reason})
        self._finish(label=Label.UNLABELLED, saved=False, source="fault")

    def _finish(self, label: Label, saved: bool, source: str) -> None:
        reason, fault = self._end or ("stopped", None)
        duration = (self._robot_now - self._robot_t0) if (self._robot_t0 is not None and self._robot_now) else 0.0
        req = self._req or EpisodeRequest()
        verdict, self._verdict = self._verdict, None
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
            confidence=_confidence(label, source, verdict),
            votes=dict(verdict.votes) if verdict is not None else {},
            policy_versions=list(self._versions),
            intervened=self._intervened,
            meta=dict(req.meta),
        )
        self.results.append(result)
        if saved:
            self._pending.append(result.save_event())
        else:
            self._pending.append({"type": "discard", "episode": self.index, "reason": fault or "discarded"})
        s = self.scheduler
        if s is not None and hasattr(s, "record") and hasattr(s, "next"):
            # unlabelled (fault, timeout) and discarded episodes do not count: the scheduler hands them out again
            s.record(req.task or self.config.task, req.start, label.reward if saved else None)
        self._set(self.IDLE)
        if self.on_result is not None:
            self._pending.append({"type": "_result", "result": result})

    def _set(self, state: str) -> None:
        self.state = state
        self._t_state = self.clock()

    def _flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            for ev in pending:
                if ev["type"] == "_result":
                    self.on_result(ev["result"])
                elif ev["type"] == "_vote":
                    self._start_vote(ev["episode"], ev["twin"])
                else:
                    self._emit(ev)

    # --- queries --------------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return self._instruction

    @property
    def running(self) -> bool:
        return self.state == self.RUNNING


def _confidence(label: Label, source: str, verdict: Any) -> float | None:
    """How sure the label is: the votes' own confidence, 1.0 for a person's or the twin's, None unlabelled."""
    if label is Label.UNLABELLED:
        return None
    if verdict is not None and source == verdict.source:
        return verdict.confidence
    return 1.0


def default_scheduler(config):
    """rl mode's scheduler: GRPO groups of ``group_size`` episodes per (task, start condition)."""
    from vla_robot.rl.scheduler import GroupScheduler

    return GroupScheduler({config.task: list(config.start_conditions)}, group_size=config.group_size,
                          max_open=config.max_open_groups)


def describe_reset(ev: dict, reset_source: str) -> str:
    """What the operator is told on a ``reset`` event: which start condition to set up, in which group."""
    n, start, group = ev.get("episode"), ev.get("start"), ev.get("group")
    where = f" (group {group['number']}: {group['slot']}/{group['size']})" if group else ""
    if reset_source == "twin":
        return f"episode {n}: the twin resets to start condition {start!r}{where}"
    what = f"set up start condition '{start}'" if start is not None else "reset the scene"
    then = "; then press Enter or call ~/start" if reset_source == "operator" else ""
    return f"{what} for episode {n}{where}{then}"


class LatestReset:
    """Which ``reset`` to act on, from episode events that may arrive as a late joiner's history.

    ``episode/event`` is transient-local: a node that starts after the episode manager first gets
    its recent history in one burst (resets of episodes long over among them). Only the newest
    reset whose episode has not ended since is acted on: :meth:`offer` every event in order;
    :meth:`take` returns that reset once no event has arrived for ``settle_s`` (a burst is over),
    and then only once.
    """

    def __init__(self, settle_s: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.settle_s = settle_s
        self.clock = clock
        self._pending: dict | None = None
        self._last = float("-inf")
        self._lock = threading.Lock()

    def offer(self, ev: dict) -> None:
        with self._lock:
            self._last = self.clock()
            t = ev.get("type")
            if t == "reset":
                self._pending = ev
            elif self._pending is not None and (
                t == "done" or (t in ("end", "save", "discard") and ev.get("episode") == self._pending.get("episode"))
            ):
                self._pending = None  # that episode is over: its scene is not wanted any more

    def take(self, now: float | None = None) -> dict | None:
        now = self.clock() if now is None else now
        with self._lock:
            if self._pending is None or now - self._last < self.settle_s:
                return None
            ev, self._pending = self._pending, None
            return ev
