"""What the operator console knows and what its keys do (no ROS here: see operator/ros.py).

The console follows the graph from what it publishes (``episode/event``, ``policy/events``, the
e-stop) and turns a key into a :class:`Command` for the ROS side to carry out. It never decides an
episode's fate itself: the episode manager does, and says so in its events; a label names the
episode it is for, so a key pressed late cannot label the next episode.
"""
from __future__ import annotations

import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from vla_robot.data.schema import Label

KEYS = (
    ("SPACE", "start / confirm reset"),
    ("s", Label.SUCCESS),
    ("f", Label.FAILURE),
    ("d", "discard"),
    ("x", "stop"),
    ("t", "take over / hand back"),
    ("e", "E-STOP"),
    ("r", "release e-stop"),
    ("q", "quit"),
)


@dataclass(frozen=True)
class Command:
    """What a key asks of the graph: ``service`` (start, stop, discard: the manager's Trigger services),
    ``label`` ({"episode": N, "label": ...} on episode/label), ``estop`` (True latches, False releases),
    ``teleop`` (keys for the teleop node: " " takes over or hands back), or ``quit``."""

    kind: str
    arg: Any = None


@dataclass
class Tally:
    success: int = 0
    failure: int = 0

    @property
    def rate(self) -> float:
        n = self.success + self.failure
        return self.success / n if n else float("nan")


@dataclass
class Console:
    """The state of the graph as the operator sees it, and the keys."""

    manager: str = "episode_manager_node"
    phase: str = "waiting for the episode manager"
    episode: int | None = None
    waiting_label: int | None = None  # the episode that waits for its label
    running: bool = False
    instruction: str = ""
    start_condition: Any = None  # to set up (reset) or in use (running)
    version: int | None = None  # the policy version that acts now
    episode_version: int | None = None  # ... that acted in the current episode
    estopped: bool = False
    intervening: bool = False  # the operator drives the arm through teleop (teleop/intervention)
    message: str = ""
    last: str = ""
    by_version: dict = field(default_factory=lambda: defaultdict(Tally))
    done: bool = False
    latencies: deque = field(default_factory=lambda: deque(maxlen=300))  # seconds, observation -> chunk

    def __post_init__(self):
        self._lock = threading.RLock()

    # --- what the graph says --------------------------------------------------------------------
    def on_event(self, ev: dict) -> None:
        """One ``episode/event`` (the history replays on joining: the state follows it)."""
        kind = ev.get("type")
        with self._lock:
            n = ev.get("episode", self.episode)
            if kind == "reset":
                self.episode, self.running, self.waiting_label = n, False, None
                self.start_condition = ev.get("start")
                self.instruction = ev.get("instruction") or self.instruction
                self.episode_version = None
                self.phase = "resetting: set up the start condition below, then SPACE"
            elif kind == "start":
                self.episode, self.running, self.waiting_label = n, True, None
                self.start_condition = ev.get("start_condition", self.start_condition)
                self.instruction = ev.get("instruction") or self.instruction
                self.phase = "running"
            elif kind == "end":
                self.running = False
                self.waiting_label = n
                why = ev.get("reason") or "?"
                fault = f", fault: {ev['fault']}" if ev.get("fault") else ""
                self.phase = f"ended ({why}{fault}): s success, f failure, d discard"
            elif kind == "save":
                self.running, self.waiting_label = False, None
                label = ev.get("label")
                v = self.episode_version if self.episode_version is not None else self.version
                if label in (Label.SUCCESS, Label.FAILURE):  # Tally counts each under its name
                    setattr(self.by_version[v], label, getattr(self.by_version[v], label) + 1)
                self.last = f"episode {n} saved as {label} ({ev.get('label_source', '?')})"
                self.phase = "idle: SPACE starts the next episode"
            elif kind == "discard":
                self.running, self.waiting_label = False, None
                self.last = f"episode {n} discarded ({ev.get('reason', '')})"
                self.phase = "idle: SPACE starts the next episode"
            elif kind == "label_rejected":
                self.message = f"label refused: {ev.get('reason', '')}"
            elif kind == "done":
                self.done, self.running = True, False
                self.phase = "done: the manager ran all its episodes"

    def on_policy_event(self, ev: dict) -> None:
        if ev.get("type") == "version":
            with self._lock:
                self.version = int(ev["version"])
                if self.running:
                    self.episode_version = self.version

    def on_chunk_latency(self, seconds: float) -> None:
        """A chunk arrived ``seconds`` after the observation it was computed from."""
        with self._lock:
            self.latencies.append(float(seconds))

    def latency_histogram(self, edges_ms=(0, 25, 50, 75, 100, 150, 200, 300, 500, 1000)) -> dict:
        """Counts of the recent latencies between ``edges_ms`` (the last bin is open-ended)."""
        with self._lock:
            ms = [1000.0 * x for x in self.latencies]
        counts = [0] * len(edges_ms)
        for x in ms:
            i = max((j for j, e in enumerate(edges_ms) if x >= e), default=0)
            counts[i] += 1
        return {"edges_ms": list(edges_ms), "counts": counts, "n": len(ms)}

    def snapshot(self) -> dict:
        """Everything a screen shows, as plain data (the web page's state)."""
        with self._lock:
            return {
                "lines": self.lines(), "episode": self.episode, "phase": self.phase, "running": self.running,
                "waiting_label": self.waiting_label, "start_condition": self.start_condition,
                "instruction": self.instruction, "version": self.version, "estopped": self.estopped,
                "message": self.message, "last": self.last, "done": self.done, "intervening": self.intervening,
                "by_version": [[v, t.success, t.failure] for v, t in sorted(
                    self.by_version.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))],
                "latency": self.latency_histogram(),
            }

    def on_intervention(self, active: bool) -> None:
        with self._lock:
            self.intervening = bool(active)

    def on_estop(self, active: bool) -> None:
        with self._lock:
            self.estopped = bool(active)

    def on_reply(self, what: str, ok: bool, message: str) -> None:
        """A service's answer."""
        with self._lock:
            self.message = f"{what}: {message}" if ok else f"{what} refused: {message}"

    # --- keys -----------------------------------------------------------------------------------
    def key(self, k: str) -> Command | None:
        """The command for key ``k`` (None: nothing to send; :attr:`message` says why)."""
        with self._lock:
            self.message = ""
            if k in (" ", "\n", "\r"):
                return Command("service", "start")
            if k in ("s", "f"):
                label = Label.SUCCESS if k == "s" else Label.FAILURE
                if self.waiting_label is None:
                    self.message = (f"no episode waits for its label (episode {self.episode} is running: x stops it)"
                                    if self.running else "no episode waits for its label")
                    return None
                return Command("label", {"episode": self.waiting_label, "label": label})
            if k == "d":
                if self.waiting_label is not None:
                    return Command("label", {"episode": self.waiting_label, "label": "discard"})
                return Command("service", "discard")  # the running episode, if any (the manager says)
            if k == "x":
                return Command("service", "stop")
            if k == "t":
                return Command("teleop", " ")
            if k == "e":
                return Command("estop", True)
            if k == "r":
                return Command("estop", False)
            if k == "q":
                return Command("quit")
            self.message = f"unknown key {k!r}"
            return None

    # --- the screen -----------------------------------------------------------------------------
    def lines(self) -> list[str]:
        with self._lock:
            out = ["vla-robot operator" + (f"   [{self.manager}]" if self.manager else "")]
            out.append("*** E-STOP LATCHED: nothing moves; r releases ***" if self.estopped else "e-stop: clear")
            ep = "-" if self.episode is None else str(self.episode)
            out.append(f"episode {ep}: {self.phase}")
            if self.intervening:
                out.append("TELEOP: the operator drives the arm (t hands back)")
            if self.start_condition is not None:
                out.append(f"start condition: {self.start_condition}")
            if self.instruction:
                out.append(f"instruction: {self.instruction}")
            out.append("policy version: " + ("-" if self.version is None else f"v{self.version}"))
            rates = [f"{'v?' if v is None else f'v{v}'} {t.success}/{t.success + t.failure} ({100 * t.rate:.0f}%)"
                     for v, t in sorted(self.by_version.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
            out.append("success per version: " + (", ".join(rates) if rates else "-"))
            out.append("last: " + (self.last or "-"))
            out.append("> " + (self.message or ""))
            out.append("keys: " + "  ".join(f"{k} {what}" for k, what in KEYS))
            return out
