"""arm_node: a vla_robot.drivers Arm (lerobot robots such as SO-101, or the twin) on the ROS graph.

Publishes ``joint_states`` at ``state_hz`` (reliable, the device's stamps in ROS time) and takes
``arm/command`` (trajectory_msgs/JointTrajectory: its first point is the target; the same message a
ros2_control joint trajectory controller takes). Between episodes (the episode manager's ``reset``
event, reset_source operator) it brings the arm home through its own SafetyFilter (limits from
``safety``: a ramp at ``ramp_velocity_scale`` of the velocity limit, within the acceleration limit),
so a person can reset the scene beside it. Commands on ``arm/command`` arrive filtered by their
publisher (policy_node, teleop_node: each declares ``ARM_SAFETY``); filtering them again here with
a second state would only lag them.
The e-stop (``estop``, std_msgs/Bool, see common.subscribe_estop) latches here too: the arm holds
where it is, homing stops, and every command is ignored until an explicit release (``data: false``).
For ros2_control arms no arm_node runs: commands go to the controller directly (see bringup).
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory

from vla_robot.config import ConfigError
from vla_robot.drivers.base import DriverError, make_arm
from vla_robot.nodes import common, convert
from vla_robot.nodes.config import ArmNodeConfig
from vla_robot.twin.robots import robot_spec


class ArmNode(common.ConfiguredNode):
    config_class = ArmNodeConfig
    #: what passes the safety filter before this node sends it to the device (tests/test_arm_safety.py)
    ARM_SAFETY = {"homing": "_home_filter"}

    def __init__(self, node_name: str = "arm_node", **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: ArmNodeConfig = self.config
        self.spec = robot_spec(cfg.robot)
        try:
            self.arm = make_arm(cfg.backend, cfg.options)
        except ConfigError as e:
            raise ConfigError(f"options: {e}") from None
        self.arm.connect()
        self.names = list(self.arm.joint_names) or list(self.spec.joint_names)
        if self.names != list(self.spec.joint_names):
            self.arm.close()
            raise ConfigError(f"the {cfg.backend} arm's joints {self.names} differ from robot '{cfg.robot}': "
                              f"{list(self.spec.joint_names)}")
        self._offset = common.wall_offset()
        self._home_filter = common.safety_filter(cfg.robot, cfg.safety)  # its state is the homing move's
        self._homing = False
        self._reset_at = float("-inf")  # ROS time of the last reset event: older commands do not stop homing
        self.estopped = False  # latched by the e-stop topic; only an explicit release clears it
        self.commands = 0  # sent to the device (homing included)
        self.received: Counter[str] = Counter()  # commands taken from arm/command, by source ("stale": ignored)
        # One caller of the device at a time, but not one callback group: rclpy's executor offers a
        # group's ready timer before its ready subscriptions, so with the state timer and the command
        # subscription in one group a read that takes a tick (a loaded machine, a slow bus) starves
        # every command. Separate groups, one lock around the device.
        self._device = threading.RLock()
        self.js_pub = self.create_publisher(JointState, common.JOINT_STATES, common.STATE_QOS)
        self.create_subscription(JointTrajectory, common.ARM_COMMAND, self._on_command, common.COMMAND_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_subscription(String, common.EPISODE_EVENTS, self._on_episode_event, common.EVENT_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        # its own group: an e-stop must not wait behind a command or a homing step
        common.subscribe_estop(self, self._on_estop, MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0 / cfg.state_hz, self._on_timer, callback_group=MutuallyExclusiveCallbackGroup())
        self.diagnostics = common.Diagnostics(self)
        self.mon_cmd = self.diagnostics.monitor("commands", max(cfg.command_timeout_s, 0.5))
        self.diagnostics.extra = lambda: (common.OK, "ok", {"commands": self.commands, "received": dict(self.received),
                                                            "backend": cfg.backend, "estop": self.estopped})
        self.get_logger().info(f"arm: {cfg.backend} ({cfg.robot}), joints {self.names}, state at {cfg.state_hz:g} Hz")

    def _on_timer(self) -> None:
        with self._device:
            try:
                q, dq, stamp = self.arm.read()
            except DriverError as e:
                self.get_logger().error(f"arm read failed: {e}", throttle_duration_sec=2.0)
                return
            if self._homing:  # under the lock: a command that takes over cannot be overwritten by a step home
                self._home_step()
        self.js_pub.publish(convert.joint_state_to_msg(self.names, q, stamp + self._offset, velocity=dq))

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            q, stamp, source = convert.msg_to_command(msg, self.names)
        except ValueError as e:
            self.get_logger().warning(f"dropping a bad arm command: {e}", throttle_duration_sec=5.0)
            return
        with self._device:
            if self.estopped:  # held until the e-stop is released: nobody moves the arm
                self.received["estop"] += 1
                return
            if self._homing and stamp < self._reset_at:
                # sent before the reset, delivered late (a busy process, a queue): it must not undo the homing
                self.received["stale"] += 1
                return
            self._homing = False  # a commander took over
        self.mon_cmd.tick()
        self.received[source] += 1
        self._send(q)

    def _send(self, q) -> None:
        with self._device:
            try:
                self.arm.command(q)
                self.commands += 1
            except (DriverError, ValueError) as e:
                self.get_logger().error(f"arm command refused: {e}", throttle_duration_sec=2.0)

    def _on_estop(self, msg: Bool) -> None:
        with self._device:
            if bool(msg.data) == self.estopped:
                return
            self.estopped = bool(msg.data)
            if not self.estopped:
                self.get_logger().warning("e-stop released: commands are taken again")
                return
            self._homing = False
            try:  # hold where the arm is now: the last target may be far away
                q, _, _ = self.arm.read()
            except DriverError as e:
                self.get_logger().error(f"E-STOP: cannot read the arm to hold it: {e}")
                return
            self._send(q)
        self.get_logger().error("E-STOP: holding the arm where it is; commands are ignored until released")

    def _on_episode_event(self, msg: String) -> None:
        try:
            ev = convert.msg_to_event(msg)
        except ValueError:
            return
        if ev["type"] != "reset":
            return
        self._reset_at = time.time()
        try:
            with self._device:
                q, _, _ = self.arm.read()
        except DriverError as e:
            self.get_logger().error(f"cannot home the arm: {e}")
            return
        with self._device:
            if self.estopped:
                self.get_logger().warning("not homing: the e-stop is latched")
                return
            self._home_filter.reset(q)  # from where the arm is, at rest
            self._homing = True
        self.get_logger().info(f"homing the arm from {np.round(q, 3).tolist()}")

    def _home_step(self) -> None:
        """One state tick of the homing move: the filtered step towards home; done once it rests there."""
        f = self._home_filter
        self._send(f.filter(self.spec.home, 1.0 / self.config.state_hz))
        if not f.ramping and not np.any(np.abs(f.velocity) > 1e-9):
            self._homing = False
            self.get_logger().info("the arm is home")

    def close(self) -> None:
        try:
            self.arm.close()
        except Exception:  # noqa: BLE001
            pass


NODE_CLASS = ArmNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(ArmNode, args)


if __name__ == "__main__":
    main()
