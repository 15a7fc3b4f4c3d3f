"""standin_person: a process that does what the person at the robot does, through what they use.

It stands in for the operator of an rl_finetune session on the twin's stand-in robot, and uses only
the person's interfaces: the episode manager's ``~/start`` (begin an episode, then confirm that the
scene is reset) and ``~/stop`` services, and the ``episode/label`` topic that names the episode a label
is for. Its eyes are the stand-in world's ``scene/ready`` (the scene is set up for episode N) and
``scene/success`` (the twin's success check, which a person judges by looking); the episode
manager never sees those. Each action comes after a human-like delay drawn from
``[min_delay_s, max_delay_s]``:

* idle: press start; on ``reset`` of episode N, wait for the scene, then press start again;
* running: when the task succeeds, press stop (a person does not wait out a finished episode);
* ended: label it success if the task succeeded during it, failure otherwise; if it ended by a
  fault, press start without a label (a person who saw the arm freeze neither rewards nor punishes
  it: the manager keeps it unlabelled, never trained on).

``answer: asked`` (for ``label_source: votes``): the person labels an episode only when the episode
manager asks (its ``ask`` event: the votes did not agree), and otherwise waits for the votes' ``save``
before pressing start again; :attr:`questions` counts the questions. It still writes down what it saw
of every episode (``{"action": "saw", "episode", "succeeded"}``) so the report can score the votes.

Every episode event and every action goes, one JSON object per line, to ``log`` (the rehearsal's
report reads it). ``labels: alternate`` labels success and failure in turn whatever happened: for
tests of the plumbing, where the twin's success rate would only add noise.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Literal

from rclpy.callback_groups import ReentrantCallbackGroup
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from vla_robot.data.schema import Label
from vla_robot.nodes import common, convert


@dataclass
class StandinPersonConfig:
    manager: str = "episode_manager_node"  # the episode manager's node name (its services live under it)
    min_delay_s: float = 0.4
    max_delay_s: float = 1.2
    stop_on_success: bool = True
    labels: Literal["twin", "alternate"] = "twin"
    # always: label every episode when it ends; asked: only when the episode manager asks (label_source votes)
    answer: Literal["always", "asked"] = "always"
    log: str = ""  # JSON lines of events and actions ('' = none)
    seed: int = 0

    def validate(self) -> None:
        if not 0 <= self.min_delay_s <= self.max_delay_s:
            raise ValueError(f"need 0 <= min_delay_s <= max_delay_s, got {self.min_delay_s} and {self.max_delay_s}")


class StandinPerson(common.ConfiguredNode):
    config_class = StandinPersonConfig

    def __init__(self, node_name: str = "standin_person", **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: StandinPersonConfig = self.config
        self.rng = random.Random(cfg.seed)
        self._lock = threading.Lock()
        self._log = open(cfg.log, "a") if cfg.log else None  # noqa: SIM115 - closed in close()
        self.state = "idle"  # idle -> starting -> resetting -> running -> ended -> (labelled) idle
        self.episode = -1
        self.ready: set[int] = set()
        self.succeeded = False
        self.labelled = 0
        self.questions = 0  # ask events for an episode (answer: asked)
        self._due: tuple[float, str] | None = (time.monotonic() + self._delay(), "start")
        cb = ReentrantCallbackGroup()
        srv = f"/{cfg.manager}"
        self.start_cli = self.create_client(Trigger, f"{srv}/start", callback_group=cb)
        self.stop_cli = self.create_client(Trigger, f"{srv}/stop", callback_group=cb)
        self.label_pub = self.create_publisher(String, common.EPISODE_LABEL, common.EVENT_QOS)
        self.create_subscription(String, common.EPISODE_EVENTS, self._on_event, common.EPISODE_EVENT_QOS,
                                 callback_group=cb)
        self.create_subscription(String, common.SCENE_READY, self._on_ready, common.LATCHED_QOS,
                                 callback_group=cb)
        self.create_subscription(Bool, common.SCENE_SUCCESS, self._on_success, common.STATE_QOS, callback_group=cb)
        self.create_timer(0.05, self._on_timer, callback_group=cb)

    def _delay(self) -> float:
        return self.rng.uniform(self.config.min_delay_s, self.config.max_delay_s)

    def _write(self, record: dict) -> None:
        if self._log is not None:
            self._log.write(json.dumps({"t": time.time(), **record}, default=str) + "\n")
            self._log.flush()

    # --- what the person sees ----------------------------------------------------------------------
    def _on_event(self, msg: String) -> None:
        ev = convert.msg_to_event(msg)
        self._write({"event": ev})
        t, n = ev["type"], ev.get("episode")
        with self._lock:
            if t == "reset":
                self.state, self.episode, self.succeeded = "resetting", int(n), False
                self._due = None  # wait for the scene
                if self.episode in self.ready:
                    self._due = (time.monotonic() + self._delay(), "confirm")
            elif t == "start" and n == self.episode:
                self.state = "running"
                self._due = None
            elif t == "end" and n == self.episode:
                self.state = "ended"
                self._write({"action": "saw", "episode": self.episode, "succeeded": self.succeeded})
                # a fault: leave it unlabelled (the manager keeps it, never trained on) and go on
                fault = ev.get("reason") == "fault"
                if fault or self.config.answer == "always":
                    self._due = (time.monotonic() + self._delay(), "start" if fault else "label")
            elif t == "ask" and n == self.episode and self.state == "ended":
                self.questions += 1
                self._due = (time.monotonic() + self._delay(), "label")
            elif t in ("save", "discard") and n == self.episode:
                self.state = "idle"
                self._due = (time.monotonic() + self._delay(), "start")
            elif t == "done":
                self.state, self._due = "done", None

    def _on_ready(self, msg: String) -> None:
        info = json.loads(msg.data)
        with self._lock:
            self.ready.add(int(info.get("episode", -1)))
            if self.state == "resetting" and info.get("episode") == self.episode and self._due is None:
                self._due = (time.monotonic() + self._delay(), "confirm")

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            if self.state == "running" and msg.data and not self.succeeded:
                self.succeeded = True
                if self.config.stop_on_success:
                    self._due = (time.monotonic() + self._delay(), "stop")

    # --- what the person does ----------------------------------------------------------------------
    def _on_timer(self) -> None:
        with self._lock:
            if self._due is None or time.monotonic() < self._due[0]:
                return
            action, self._due = self._due[1], None
            episode, succeeded = self.episode, self.succeeded
        if action in ("start", "confirm"):
            self._call(self.start_cli, action, episode)
        elif action == "stop":
            self._call(self.stop_cli, action, episode)
        elif action == "label":
            label = self._label(succeeded)
            self.label_pub.publish(String(data=json.dumps({"episode": episode, "label": label})))
            self.labelled += 1
            self._write({"action": "label", "episode": episode, "label": label})

    def _label(self, succeeded: bool) -> Label:
        if self.config.labels == "alternate":
            return Label.of(self.labelled % 2 == 0)
        return Label.of(bool(succeeded))

    def _call(self, client, action: str, episode: int) -> None:
        if not client.service_is_ready():
            with self._lock:  # the manager is not up yet: try again shortly
                self._due = (time.monotonic() + 0.5, action)
            return
        future = client.call_async(Trigger.Request())

        def done(f):
            reply = f.result()
            self._write({"action": action, "episode": episode, "ok": bool(reply.success), "message": reply.message})
            if action == "start" and not reply.success:
                with self._lock:  # e.g. the manager is still labelling: look again later
                    if self.state == "idle" and self._due is None:
                        self._due = (time.monotonic() + 1.0, "start")

        future.add_done_callback(done)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


NODE_CLASS = StandinPerson


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(StandinPerson, args)


if __name__ == "__main__":
    main()
