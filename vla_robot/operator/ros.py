"""The operator console's ROS side: the graph's topics and services, nothing else.

In: ``episode/event`` (transient-local: the history replays on joining), ``policy/events`` (the
acting version), the e-stop (both durabilities, common.subscribe_estop). Out: the episode manager's
``~/start``, ``~/stop``, ``~/discard`` (std_srvs/Trigger), ``episode/label`` (a label names its
episode), ``estop`` (latched Bool: a node that starts later still learns of it).
"""
from __future__ import annotations

import json

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from vla_robot.nodes import common, convert
from vla_robot.operator.console import Command, Console


class OperatorNode(Node):
    def __init__(self, console: Console, manager: str = "/episode_manager_node", **kwargs):
        super().__init__("operator_console", **kwargs)
        self.console = console
        cb = ReentrantCallbackGroup()
        self.create_subscription(String, common.EPISODE_EVENTS, self._on_event, common.EPISODE_EVENT_QOS,
                                 callback_group=cb)
        self.create_subscription(String, common.POLICY_EVENTS, self._on_policy_event, common.EVENT_QOS,
                                 callback_group=cb)
        common.subscribe_estop(self, lambda m: console.on_estop(m.data), cb)
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

    def execute(self, cmd: Command | None) -> None:
        """Carry out a key's command; the answer comes back through the console (``message``)."""
        if cmd is None or cmd.kind == "quit":
            return
        if cmd.kind == "estop":
            self.estop_pub.publish(Bool(data=bool(cmd.arg)))
            self.console.on_reply("e-stop", True, "latched" if cmd.arg else "released")
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
