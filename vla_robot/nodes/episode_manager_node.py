"""episode_manager_node: reset -> run -> label -> save, around the ROS-free EpisodeManager (nodes/episodes.py).

Services (std_srvs): ``~/start`` (Trigger; also confirms an operator reset, and starts the next
episode while a faulted one waits for its label, which is then saved unlabelled), ``~/stop``
(Trigger), ``~/label`` (SetBool: true = success; labels only the episode waiting for its label and
never ends a running one), ``~/discard`` (Trigger: the running or just-ended episode).

Topics in: ``episode/label`` (std_msgs/String JSON ``{"episode": N, "label": "success"|"failure"|
"discard"}``: applied only to episode N while it waits for its label), ``joint_states`` (the robot's
time), ``twin/events`` (reset_done, transient-local), ``twin/success`` (Bool), ``policy/events``
(faults, policy version), ``estop`` (Bool; latched or not, see common.subscribe_estop),
``teleop/intervention`` (Bool, latched: the operator took over; recorded as ``intervened``).

Publishes ``episode/event`` (std_msgs/String JSON, reliable, transient-local: EPISODE_EVENT_QOS):
``reset``, ``start``, ``end``, ``save``, ``discard``, ``label_rejected``, ``done`` (fields in
nodes/episodes.py). Each ``reset`` is also logged for the operator: which start condition to set
up, and the place of the episode in its GRPO group (rl mode).

With ``prompt`` and a terminal on stdin it also asks for the label there: s = success, f = failure,
d = discard, q = stop, Enter = start the next episode (or confirm the reset).

``label_source: votes``: the detectors (``detectors``) vote on each episode and a person is asked
(the ``ask`` event, the log, the terminal) only when they do not agree (vla_robot/detector/votes.py).
The detectors read the episode's frames, which this node keeps while the episode runs: a bounded
buffer (:class:`vla_robot.detector.votes.EpisodeFrames`, at most 256 MB, resized to the detectors' image
size) fed by ``cameras/<cam>/image_raw`` of the detectors' cameras and ``joint_states``. Why a buffer
here and not the recorder's saved episode: the recorder saves an episode only with its label (the
``save`` event carries it), so the saved episode does not exist yet when its label is decided; and a
buffer of the frames the detector reads costs a few MB, needs no dataset path, and works whether or
not a recorder runs. A detector file that is missing or corrupt is logged as an error at start and
every episode waits for a person (nothing is lost: the label timeout keeps it, unlabelled).
"""
from __future__ import annotations

import json
import sys
import threading

from rclpy.callback_groups import ReentrantCallbackGroup
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from vla_robot.nodes import common, convert
from vla_robot.nodes.config import EpisodeManagerNodeConfig
from vla_robot.nodes.episodes import POLICY_MODES, EpisodeManager, describe_reset


class EpisodeManagerNode(common.ConfiguredNode):
    config_class = EpisodeManagerNodeConfig

    def __init__(self, node_name: str = "episode_manager_node", *, scheduler=None, on_result=None,
                 use_terminal: bool = True, **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: EpisodeManagerNodeConfig = self.config
        cb = ReentrantCallbackGroup()
        self._events_pub = self.create_publisher(String, common.EPISODE_EVENTS, common.EPISODE_EVENT_QOS)
        self._result_hooks = [on_result] if on_result else []
        self.voter = self._make_voter(cb) if cfg.label_source == "votes" else None
        self.core = EpisodeManager(cfg, self._publish_event, scheduler=scheduler, on_result=self._on_result,
                                   voter=self.voter)
        self.create_subscription(JointState, common.JOINT_STATES, self._on_joint_state, common.STATE_QOS,
                                 callback_group=cb)
        self.create_subscription(String, common.TWIN_EVENTS, self._on_twin_event, common.EPISODE_EVENT_QOS,
                                 callback_group=cb)
        self.create_subscription(Bool, common.TWIN_SUCCESS, self._on_success, common.STATE_QOS, callback_group=cb)
        self.create_subscription(String, common.POLICY_EVENTS, self._on_policy_event, common.EVENT_QOS,
                                 callback_group=cb)
        common.subscribe_estop(self, self._on_estop, cb)  # reached by latched and plain publishers alike
        self.create_subscription(Bool, common.TELEOP_INTERVENTION, self._on_intervention, common.LATCHED_QOS,
                                 callback_group=cb)
        self.create_subscription(String, common.EPISODE_LABEL, self._on_label, common.EVENT_QOS, callback_group=cb)
        self.create_service(Trigger, "~/start", self._srv(self.core.start), callback_group=cb)
        self.create_service(Trigger, "~/stop", self._srv(self.core.stop), callback_group=cb)
        self.create_service(Trigger, "~/discard", self._srv(self.core.discard), callback_group=cb)
        self.create_service(SetBool, "~/label", self._srv_label, callback_group=cb)
        self._refused: str | None = None
        self.create_timer(0.05, self._on_tick, callback_group=cb)
        self.diagnostics = common.Diagnostics(self)
        self.diagnostics.extra = lambda: (
            common.OK,
            self.core.state,
            {"state": self.core.state, "episode": self.core.index, "results": len(self.core.results),
             "successes": sum(r.success for r in self.core.results)},
        )
        self._prompt_thread = None
        if use_terminal and cfg.prompt and sys.stdin is not None and sys.stdin.isatty():
            self._prompt_thread = threading.Thread(target=self._prompt_loop, daemon=True, name="label_prompt")
            self._prompt_thread.start()
        self.get_logger().info(
            f"episode manager: mode {cfg.mode}, reset by {cfg.reset_source}, labels by {cfg.label_source}, "
            f"{cfg.episodes or 'unlimited'} episodes{' (autostart)' if cfg.autostart else ''}"
            + (f", groups of {cfg.group_size} over start conditions {list(cfg.start_conditions)}"
               if cfg.mode == "rl" and scheduler is None else "")
        )

    def _make_voter(self, cb):
        """The detectors as voters, and the subscriptions that fill their frame buffer."""
        from vla_robot.detector.votes import EpisodeVoter

        voter = EpisodeVoter(self.config)
        for err in voter.errors.values():
            self.get_logger().error(f"label_source votes: {err}. Until it is fixed every episode waits for a person's "
                                    "label (episode/label, ~/label or the terminal); set detectors to files from "
                                    "`vla-robot detector train`")
        for cam in voter.frames.cameras:
            self.create_subscription(Image, common.image_topic(cam), lambda m, c=cam: self._on_image(c, m),
                                     common.IMAGE_QOS, callback_group=cb)
        if voter.panel.detectors:
            self.get_logger().info(f"votes: {len(voter.panel.detectors)} detector(s) on cameras "
                                   f"{', '.join(voter.frames.cameras)}, threshold {self.config.vote_threshold:g}, "
                                   f"quorum {self.config.vote_quorum}" + (", the twin votes" if voter.twin else ""))
        return voter

    # --- outputs --------------------------------------------------------------------------------
    def _publish_event(self, event: dict) -> None:
        self._events_pub.publish(convert.event_to_msg(event))
        t = event["type"]
        if t == "end":
            self.get_logger().info(
                f"episode {event['episode']} ended: {event['reason']}" + (f" ({event['fault']})" if event["fault"] else "")
            )
            waiting = self.core.state == EpisodeManager.LABELLING
            if waiting and event["reason"] == "fault" and self.config.mode in POLICY_MODES:
                self.get_logger().warning(
                    f"episode {event['episode']} ended by a fault: label it if you saw how it went; otherwise it is "
                    f"kept as 'unlabelled' (never trained on) after {self.config.label_timeout_s:g} s or when the "
                    "next episode starts")
            if waiting and self._prompt_thread is not None:
                print(f"\nEpisode {event['episode']} ended ({event['reason']}). Label it: [s]uccess / [f]ailure / "
                      "[d]iscard, then Enter", flush=True)
        elif t == "ask":
            self.get_logger().warning(f"episode {event['episode']}: the votes leave it to a person ({event['reason']}); "
                                      "label it: episode/label, ~/label or the terminal")
            if self._prompt_thread is not None:
                print(f"\nThe votes are unsure about episode {event['episode']}. Label it: [s]uccess / [f]ailure / "
                      "[d]iscard, then Enter", flush=True)
        elif t == "reset":
            if self.voter is not None:  # the last episode's frames were read when it ended
                self.voter.frames.reset()
            text = describe_reset(event, self.config.reset_source)
            self.get_logger().info(text)
            if self._prompt_thread is not None and self.config.reset_source == "operator":
                print(f"\n{text[0].upper()}{text[1:]}", flush=True)
        elif t == "label_rejected":
            self.get_logger().warning(f"label {event['label']!r} for episode {event['episode']} rejected: "
                                      f"{event['reason']}")
        elif t in ("save", "discard", "start", "done"):
            self.get_logger().info(f"episode event: {event}")

    def _on_result(self, result) -> None:
        for hook in self._result_hooks:
            hook(result)

    def add_result_hook(self, hook) -> None:
        self._result_hooks.append(hook)

    # --- inputs ---------------------------------------------------------------------------------
    def _on_tick(self) -> None:
        self.core.tick()
        refused = self.core.refused
        if refused != self._refused:  # say it once, not at every autostart attempt
            self._refused = refused
            if refused:
                self.get_logger().error(refused)

    def _on_label(self, msg: String) -> None:
        try:
            ev = json.loads(msg.data)
        except json.JSONDecodeError:
            ev = None
        if not isinstance(ev, dict):
            self.get_logger().warning(f"episode/label: expected a JSON object {{\"episode\": N, \"label\": ...}}, "
                                      f"got {msg.data[:200]!r}")
            ev = {}
        self.core.label_episode(ev.get("episode"), ev.get("label"))  # a rejection is logged and published

    def _on_intervention(self, msg: Bool) -> None:
        self.core.intervention(bool(msg.data))

    def _on_joint_state(self, msg: JointState) -> None:
        self.core.observe(convert.from_stamp(msg.header.stamp))
        if self.voter is not None and self.core.running:
            try:
                q, _, _ = convert.msg_to_joint_state(msg, self.voter.panel.state_names)
            except ValueError as e:
                self.get_logger().warning(f"votes: joint state not kept: {e}", throttle_duration_sec=5.0)
                return
            self.voter.frames.add_state(q)

    def _on_image(self, cam: str, msg: Image) -> None:
        if not self.core.running:
            return
        try:
            image, _ = convert.msg_to_image(msg)
        except ValueError as e:
            self.get_logger().warning(f"votes: camera {cam}: {e}", throttle_duration_sec=5.0)
            return
        self.voter.frames.add_image(cam, image)

    def _on_twin_event(self, msg: String) -> None:
        try:
            ev = convert.msg_to_event(msg)
        except ValueError as e:
            self.get_logger().warning(f"ignoring a bad twin event: {e}")
            return
        if ev["type"] == "reset_done":
            self.core.reset_done(ev)

    def _on_success(self, msg: Bool) -> None:
        self.core.success_check(bool(msg.data))

    def _on_policy_event(self, msg: String) -> None:
        try:
            ev = convert.msg_to_event(msg)
        except ValueError as e:
            self.get_logger().warning(f"ignoring a bad policy event: {e}")
            return
        if ev["type"] == "fault":
            self.core.fault(str(ev.get("reason", "policy fault")))
        elif ev["type"] == "version":
            self.core.policy_version(int(ev.get("version", 0)))

    def _on_estop(self, msg: Bool) -> None:
        self.core.estop(bool(msg.data), "e-stop")
        if msg.data:
            self.get_logger().error("E-STOP latched: no episode starts until it is cleared")
        else:
            self.get_logger().warning("e-stop cleared")

    def _srv(self, fn):
        def handle(request, response):
            response.success, response.message = fn()
            return response

        return handle

    def _srv_label(self, request, response):
        response.success, response.message = self.core.label(bool(request.data))
        return response

    def _prompt_loop(self) -> None:  # pragma: no cover - needs a terminal
        for line in sys.stdin:
            key = line.strip().lower()[:1]
            if key == "s":
                print(self.core.label(True)[1], flush=True)
            elif key == "f":
                print(self.core.label(False)[1], flush=True)
            elif key == "d":
                print(self.core.discard()[1], flush=True)
            elif key == "q":
                print(self.core.stop()[1], flush=True)
            elif key == "":
                print(self.core.start()[1], flush=True)


NODE_CLASS = EpisodeManagerNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(EpisodeManagerNode, args)


if __name__ == "__main__":
    main()
