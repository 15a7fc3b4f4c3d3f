"""An arm under ros2_control (Franka, UR, … or an SO-101 with a ros2_control hardware plugin) behind
the plain :class:`Arm` interface: ``make_arm("ros2_control", robot="panda")``.

For tools that want an ``Arm`` without the node graph (calibration capture, system identification,
scripts): it reads ``joint_states`` (joint_state_broadcaster) and sends each target to the joint
trajectory controller's topic as a one-point ``JointTrajectory`` at rest (the message the graph's
policy node sends there too, made by vla_robot.nodes.convert). Inside the node graph no driver is
needed: bringup remaps ``arm/command`` to the controller.

This is the one driver that speaks ROS; it imports rclpy only in ``connect()``, in a private
context with its own executor thread, so ``import vla_robot.drivers`` stays ROS-free.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from vla_robot.drivers.base import Arm, DriverError, register_arm
from vla_robot.twin.robots import check_robot, robot_spec


@dataclass
class Ros2ControlArmConfig:
    robot: str = "panda"
    joint_states_topic: str = "/joint_states"
    command_topic: str = "/joint_trajectory_controller/joint_trajectory"
    # the controller's joint names, in our order (robot spec order); empty: the robot spec's names
    joint_names: list[str] = field(default_factory=list)
    command_dt: float = 0.1  # time_from_start of each target (s)
    timeout_s: float = 5.0  # wait this long for the first joint state in connect()
    stale_after_s: float = 0.5  # read() fails when the newest joint state is older than this
    domain_id: Optional[int] = None

    def validate(self) -> None:
        check_robot(self.robot)
        for name in ("command_dt", "timeout_s", "stale_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")


@register_arm("ros2_control")
class Ros2ControlArm(Arm):
    config_class = Ros2ControlArmConfig

    def __init__(self, config: Optional[Ros2ControlArmConfig] = None):
        self.config = c = config or Ros2ControlArmConfig()
        self.spec = robot_spec(c.robot)
        self.joint_names = list(c.joint_names or self.spec.joint_names)
        if len(self.joint_names) != self.spec.n_joints:
            raise ValueError(f"joint_names must list {self.spec.n_joints} joints for {c.robot}, got {self.joint_names}")
        self._ctx = None
        self._node = None
        self._executor = None
        self._thread = None
        self._latest: Optional[tuple[np.ndarray, np.ndarray, float]] = None
        self._cond = threading.Condition()

    @property
    def is_connected(self) -> bool:
        return self._node is not None

    def connect(self) -> None:
        if self._node is not None:
            return
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from trajectory_msgs.msg import JointTrajectory

        from vla_robot.nodes import common

        c = self.config
        self._ctx = rclpy.Context()
        rclpy.init(context=self._ctx, **({"domain_id": c.domain_id} if c.domain_id is not None else {}))
        self._node = rclpy.create_node(f"vla_robot_ros2_control_arm_{id(self) % 100000}", context=self._ctx)
        self._node.create_subscription(JointState, c.joint_states_topic, self._on_joint_state, common.STATE_QOS)
        self._pub = self._node.create_publisher(JointTrajectory, c.command_topic, common.COMMAND_QOS)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, daemon=True, name="ros2_control_arm")
        self._thread.start()
        deadline = time.monotonic() + c.timeout_s
        with self._cond:
            while self._latest is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise DriverError(f"ros2_control arm: no joint state on {c.joint_states_topic} within {c.timeout_s} s "
                                      "(is the joint_state_broadcaster running, in this ROS_DOMAIN_ID?)")
                self._cond.wait(left)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self._ctx is not None and self._ctx.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, RuntimeError):
            pass

    def _on_joint_state(self, msg) -> None:
        from vla_robot.nodes import convert

        try:
            q, dq, _ = convert.msg_to_joint_state(msg, self.joint_names)
        except ValueError:
            return  # another robot's joint states on the same topic
        with self._cond:
            self._latest = (q, np.zeros_like(q) if dq is None else dq, time.monotonic())
            self._cond.notify_all()

    def read(self) -> tuple[np.ndarray, np.ndarray, float]:
        if self._node is None:
            raise DriverError("ros2_control arm: read() before connect()")
        with self._cond:
            q, dq, stamp = self._latest
        age = time.monotonic() - stamp
        if age > self.config.stale_after_s:
            raise DriverError(f"ros2_control arm: newest joint state is {age:.2f} s old (limit {self.config.stale_after_s} s)")
        return q.copy(), dq.copy(), stamp

    def command(self, q_target) -> None:
        if self._node is None:
            raise DriverError("ros2_control arm: command() before connect()")
        from vla_robot.nodes import convert

        q = self.spec.clip(self.check_command(q_target))
        self._pub.publish(convert.command_to_msg(q, self.joint_names, time.time(), self.config.command_dt))

    def close(self) -> None:
        import rclpy

        ctx, self._ctx = self._ctx, None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        if self._node is not None:
            self._node.destroy_node()
            self._node = None
        if ctx is not None and ctx.ok():
            rclpy.shutdown(context=ctx)
