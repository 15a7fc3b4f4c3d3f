"""The operator console's ROS side: the graph's topics and services, nothing else.

In: ``episode/event`` (transient-local: the history replays on joining), ``policy/events`` (the
acting version), the e-stop (both durabilities, common.subscribe_estop), ``teleop/intervention``,
``policy/chunk`` (latency) and, for the web page, the camera images. Out: the episode manager's
``~/start``, ``~/stop``, ``~/discard`` (std_srvs/Trigger), ``episode/label`` (a label names its
episode), ``estop`` (latched Bool: a node that starts later still learns of it), ``teleop/keys``
(" ": the teleop node takes over or hands back).
"""
from __future__ import annotations

import json

import threading
import time

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_robot.nodes import common, convert
from vla_robot.operator.console import Command, Console


class OperatorNode(Node):
    def __init__(self, console: Console, manager: str = "/episode_manager_node", cameras: tuple[str, ...] = (),
                 view_width: int = 160, **kwargs):
        super().__init__("operator_console", **kwargs)
        self.console = console
        cb = ReentrantCallbackGroup()
        # the web page's views: the newest frame of each camera, downscaled, as JPEG
        self.view_width = view_width
        self.views: dict[str, bytes] = {}
        self._views_lock = threading.Lock()
        self._view_at: dict[str, float] = {}
        for cam in cameras:
            self.create_subscription(Image, common.image_topic(cam), lambda m, c=cam: self._on_image(c, m),
                                     common.IMAGE_QOS, callback_group=cb)
        self.create_subscription(JointTrajectory, common.POLICY_CHUNK, self._on_chunk, common.COMMAND_QOS,
                                 callback_group=cb)
        self.create_subscription(String, common.EPISODE_EVENTS, self._on_event, common.EPISODE_EVENT_QOS,
                                 callback_group=cb)
        self.create_subscription(String, common.POLICY_EVENTS, self._on_policy_event, common.EVENT_QOS,
                                 callback_group=cb)
        common.subscribe_estop(self, lambda m: console.on_estop(m.data), cb)
        self.create_subscription(Bool, common.TELEOP_INTERVENTION, lambda m: console.on_intervention(m.data),
                                 common.LATCHED_QOS, callback_group=cb)
        self.teleop_keys_pub = self.create_publisher(String, common.TELEOP_KEYS, common.EVENT_QOS)
        self.label_pub = self.create_publisher(String, common.EPISODE_LABEL, common.EVENT_QOS)
        self.estop_pub = self.create_publisher(Bool, common.ESTOP, common.LATCHED_QOS)
        manager = manager.rstrip("/")
        self.clients_ = {name: self.create_client(Trigger, f"{manager}/{name}", callback_group=cb)
                         for name in ("start", "stop", "discard")}

    def _on_event(self, msg: String) -> None:
        try:
            self.console.on_event(convert.msg_to_event(msg))
        except ValueError:
            pass

    def _on_policy_event(self, msg: String) -> None:
        try:
            self.console.on_policy_event(convert.msg_to_event(msg))
        except (ValueError, KeyError, TypeError):
            pass

    def _on_chunk(self, msg: JointTrajectory) -> None:
        # stamped with the observation it was computed from (policy_node): the age on arrival is the latency
        age = time.time() - convert.from_stamp(msg.header.stamp)
        if 0.0 <= age < 60.0:  # a sim-time stamp (lockstep twin) is no wall-clock latency
            self.console.on_chunk_latency(age)

    def _on_image(self, camera: str, msg: Image) -> None:
        now = time.monotonic()
        if now - self._view_at.get(camera, 0.0) < 0.2:  # five views a second are plenty for a person
            return
        self._view_at[camera] = now
        import cv2

        try:
            rgb, _ = convert.msg_to_image(msg)
        except ValueError:
            return
        h, w = rgb.shape[:2]
        if w > self.view_width:
            rgb = cv2.resize(rgb, (self.view_width, max(1, round(h * self.view_width / w))),
                             interpolation=cv2.INTER_AREA)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            with self._views_lock:
                self.views[camera] = jpg.tobytes()

    def view(self, camera: str) -> bytes | None:
        with self._views_lock:
            return self.views.get(camera)

    def execute(self, cmd: Command | None) -> None:
        """Carry out a key's command; the answer comes back through the console (``message``)."""
        if cmd is None or cmd.kind == "quit":
            return
        if cmd.kind == "estop":
            self.estop_pub.publish(Bool(data=bool(cmd.arg)))
            self.console.on_reply("e-stop", True, "latched" if cmd.arg else "released")
        elif cmd.kind == "teleop":
            if self.teleop_keys_pub.get_subscription_count() == 0:
                self.console.on_reply("take over", False, "no teleop node listens on teleop/keys")
                return
            self.teleop_keys_pub.publish(String(data=cmd.arg))
            self.console.on_reply("take over", True, "sent to the teleop node")
        elif cmd.kind == "label":
            self.label_pub.publish(String(data=json.dumps(cmd.arg)))
            self.console.on_reply("label", True, f"episode {cmd.arg['episode']}: {cmd.arg['label']} sent")
        elif cmd.kind == "service":
            client = self.clients_[cmd.arg]
            if not client.service_is_ready():
                self.console.on_reply(cmd.arg, False, f"service {client.srv_name} is not available (is the graph up?)")
                return
            future = client.call_async(Trigger.Request())
            future.add_done_callback(lambda f, what=cmd.arg: self._replied(what, f))

    def _replied(self, what: str, future) -> None:
        try:
            r = future.result()
        except Exception as e:  # noqa: BLE001 - a failed call is shown, not raised into the executor
            self.console.on_reply(what, False, repr(e))
            return
        self.console.on_reply(what, bool(r.success), r.message)
