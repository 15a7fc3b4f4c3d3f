"""An arm under ros2_control (Franka, UR, … or an SO-101 with a ros2_control hardware plugin) behind
the plain :class:`Arm` interface: ``make_arm("ros2_control", robot="panda")``.

For tools that want an ``Arm`` without the node graph (calibration capture, system identification,
scripts): it reads ``joint_states`` (joint_state_broadcaster) and sends each target to the joint
trajectory controller's topic as a one-point ``JointTrajectory`` at rest (the message the graph's
policy node sends there too, made by vla_robot.nodes.convert). Inside the node graph no driver is
needed: bringup remaps ``arm/command`` to the controller.

This is the one driver that speaks ROS; it imports rclpy only in ``connect()``, in a private
context with its own executor thread, so ``import vla_robot.drivers`` stays ROS-free. Each target is
stamped 0 ("start on arrival"): a joint trajectory controller never drops it as late.

The graph's policy node drives a ros2_control arm with whole trajectories instead (its
``arm_command``, docs/ros2_control.md); what it plans for that lives here, ROS-free:
:func:`remaining_plan` (the rest of the running chunk as the controller would command it),
:func:`lead_ticks` and :func:`home_path` (the slow move home between episodes).
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from vla_robot.drivers.base import Arm, DriverError, register_arm
from vla_robot.twin.robots import check_robot, robot_spec


def lead_ticks(lead_s: float, dt: float) -> int:
    """The lead time in whole control periods (rounded up): a trajectory starts this many ticks ahead."""
    return max(0, int(np.ceil(lead_s / dt - 1e-9)))


def remaining_plan(controller, now: float, first) -> np.ndarray:
    """[N, D]: ``first`` (this tick's safe command) and the safe commands of the ticks after ``now``
    while no new chunk arrives, one control period apart.

    The executor is stepped on a copy (``step`` keeps bookkeeping: the async executor remembers what it
    emitted, the ensemble prunes old chunks), and the safety filter previews the actions from this tick's
    command without changing its state, so the plan is what the coming ticks would send, untouched."""
    ex = copy.deepcopy(controller.executor)
    dt = controller.dt
    actions = []
    for k in range(1, ex.actions_left(now) + 1):
        a = ex.step(now + k * dt).action
        if a is None:
            break
        actions.append(a)
    first = np.asarray(first, dtype=np.float64)[None]
    if not actions:
        return first
    return np.vstack([first, controller.safety.preview(np.asarray(actions), dt)])


def home_path(limits, safety, q0, dt: float, max_s: float, fk=None) -> np.ndarray:
    """[N, D]: a slow move from ``q0`` to ``limits.home``, one safe command per ``dt``: the safety filter
    (``safety``, a SafetyConfig) at its ramp speed all the way (``velocity_scale`` ×
    ``ramp_velocity_scale``), within the acceleration limit, ending at rest at home (at most ``max_s``)."""
    import dataclasses

    from vla_robot.control.safety import SafetyFilter

    slow = dataclasses.replace(safety, velocity_scale=safety.velocity_scale * safety.ramp_velocity_scale)
    f = SafetyFilter(limits, slow, fk=fk)
    f.reset(q0)
    home = np.asarray(limits.home, dtype=np.float64)
    path = []
    for _ in range(max(1, int(np.ceil(max_s / dt)))):
        path.append(f.filter(home, dt))
        if np.all(np.abs(path[-1] - home) < 1e-9) and not np.any(np.abs(f.velocity) > 1e-9):
            break
    return np.asarray(path)


@dataclass
class Ros2ControlArmConfig:
    robot: str = "panda"
    joint_states_topic: str = "/joint_states"
    command_topic: str = "/joint_trajectory_controller/joint_trajectory"
    # the controller's joint names, in our order (robot spec order); empty: the robot spec's names
    joint_names: list[str] = field(default_factory=list)
    # or the arm's robot description (config/robots/*.yaml): joint states in its hardware names and units,
    # the arm's joints to command_topic and the gripper to its own controller (then joint_names is unused)
    robot_description: str = ""
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
        self.description = None
        if c.robot_description:
            from vla_robot.robot.description import resolve_description

            self.description = resolve_description(c.robot, c.robot_description)
        self.joint_names = list(c.joint_names or self.spec.joint_names) if self.description is None else \
            self.description.names()
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
        g = self.description.gripper if self.description is not None else None
        self._gripper_pub = None
        if g is not None and g.interface in ("position_controller", "trajectory_controller"):
            from std_msgs.msg import Float64MultiArray

            kind = Float64MultiArray if g.interface == "position_controller" else JointTrajectory
            self._gripper_pub = self._node.create_publisher(kind, g.topic, common.COMMAND_QOS)
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
            if self.description is not None:
                q, dq, _ = convert.msg_to_joint_state(msg, description=self.description)
            else:
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

        q = self.check_command(q_target)
        if self.description is None:
            q = self.spec.clip(q)
        else:  # the description's limits (policy units), not the twin's
            lim = self.description.limits()
            q = np.clip(q, lim.lower, lim.upper)
        # stamp 0: start on arrival (a stamped one-point trajectory is dropped once latency exceeds command_dt)
        dt = self.config.command_dt
        if self.description is None:
            self._pub.publish(convert.command_to_msg(q, self.joint_names, 0.0, dt))
            return
        self._pub.publish(convert.arm_trajectory_msg(q[None], dt, self.description, 0.0))
        if self._gripper_pub is not None:
            self._gripper_pub.publish(convert.gripper_command_msg(q, self.description, dt))

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
