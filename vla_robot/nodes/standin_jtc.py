"""standin_jtc: a stand-in for ros2_control's joint_trajectory_controller (JTC), with the twin's arm behind it.

A test fixture a user can also run (``python -m vla_robot.nodes.standin_jtc --ros-args -p ...``): it
behaves toward a client as ros2_controllers' JTC does (checked against its source,
github.com/ros-controls/ros2_controllers, ``joint_trajectory_controller/src/joint_trajectory_controller.cpp``
and ``src/trajectory.cpp``; tests/test_standin_jtc.py cites the function of each behaviour):

* ``~/joint_trajectory`` (trajectory_msgs/JointTrajectory) is checked as ``validate_trajectory_msg``
  checks it: unknown joints, a joint count other than the controller's (partial goals are off by
  default, ``allow_partial_joints_goal: false``), no points, a last point that is not at rest, time
  that does not increase, sizes, effort fields — and a trajectory with a non-zero ``header.stamp``
  whose last point ends before now is dropped ("ends in the past"). Stamp 0 means "start now".
* A valid trajectory waits in a one-message slot for the next update (``topic_callback`` →
  ``add_new_trajectory_msg``: a newer one overwrites it). In ``update`` it is merged with the running
  one (``blend_with_active_trajectory``, ``allow_trajectory_replacement: true`` by default, when the
  running one has more than one point): the old waypoints before the new start time stay, a bridge
  point sampled from the old trajectory at that time joins them to the new points, so the new
  trajectory replaces the remaining old one from its own start time (``header.stamp``, or now when
  that has passed or is 0). Otherwise it replaces the running one outright, timed from its stamp.
* Each update samples the trajectory one update period ahead (``command_next_``): linear between
  points without velocities, cubic with them (``Trajectory::interpolate_between_points``), from the
  measured state at the moment a new trajectory is first sampled (``set_point_before_trajectory_msg``
  with ``state_current_``; ``interpolate_from_desired_state`` takes the last command instead), and
  holding the last point once played out. Accelerations are accepted and ignored (cubic, not quintic).
* The position it commands goes to the twin's simulated arm (vla_robot/drivers/twin.py, stepping its
  physics in real time), so ``joint_states`` (joint_state_broadcaster: every joint, hardware names,
  position and velocity) are the physics' answer, not the commands.

Names, units and the twin come from the arm's robot description (vla_robot/robot/description.py,
default config/robots/fr3.yaml: the controller's joints are ``fr3_joint1..7`` on the Panda twin's
``joint1..7``). The gripper is not one of the controller's joints (unless the description says
``with_arm``): a forward position controller (forward_command_controller's ``~/commands``,
std_msgs/Float64MultiArray with one value per joint; a wrong size is refused) on the description's
gripper topic sets the twin's gripper, in hardware units mapped as the description maps them.

``latency_s`` delays every trajectory by that long before the controller sees it (injected transport
latency, for tests of the client's lead time). Counts (accepted, rejected by reason, late = ended in
the past, started_late = accepted after its start time had passed, merged) are on ``/diagnostics``
and, as JSON, on ``~/stats`` (latched, std_msgs/String).
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_robot.config import ConfigError
from vla_robot.nodes import common, convert

_FLOAT_EPS = float(np.finfo(np.float32).eps)  # validate_trajectory_msg: std::numeric_limits<float>::epsilon()


@dataclass
class StandinJtcConfig:
    # The arm's robot description (vla_robot/robot/description.py): the controller's joints are its
    # hardware names, the twin behind it is its `twin`, the gripper's position controller listens on
    # its gripper topic (units mapped as the description maps them). '' = config/robots/fr3.yaml.
    robot_description: str = ""
    # Options of the twin arm backend behind it (vla_robot/drivers/twin.py TwinArmConfig); its twin
    # robot must be the description's.
    arm: dict = field(default_factory=lambda: {"session": "standin_jtc", "realtime": True,
                                               "twin": {"robot": "panda", "control_hz": 100.0}})
    update_rate: float = 100.0  # the controller manager's update rate (Hz)
    state_publish_rate: float = 50.0  # joint_state_broadcaster (Hz)
    # ros2_controllers' JTC parameters, with its defaults (joint_trajectory_controller_parameters.yaml)
    allow_partial_joints_goal: bool = False
    allow_nonzero_velocity_at_trajectory_end: bool = False
    allow_trajectory_replacement: bool = True
    interpolate_from_desired_state: bool = False
    # Injected latency: each trajectory reaches the controller this long after it was received (s).
    latency_s: float = 0.0

    def validate(self) -> None:
        for name in ("update_rate", "state_publish_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 Hz, got {getattr(self, name)}")
        if not self.latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0 seconds, got {self.latency_s}")


def _description(path: str):
    from vla_robot.config import config_dir
    from vla_robot.robot.description import DescriptionError, load_description

    try:
        d = load_description(path or config_dir() / "robots" / "fr3.yaml")
    except DescriptionError as e:
        raise ConfigError(f"robot_description: {e}") from None
    if d.twin is None:
        raise ConfigError(f"robot_description: {d.label} names no twin; the stand-in drives the twin's arm, so its "
                          "joints must be a twin robot's (twin: panda)")
    if d.gripper.interface == "trajectory_controller":
        raise ConfigError(f"robot_description: {d.label}'s gripper has its own trajectory controller; the stand-in "
                          "serves a position_controller gripper (or one with_arm) only")
    return d


# --- the trajectory, on absolute time ----------------------------------------------------------
@dataclass
class _Point:
    t: float  # absolute time (s)
    q: np.ndarray
    v: Optional[np.ndarray]  # None: positions only (linear interpolation)


class Trajectory:
    """Points on absolute time after a 'point before' (where the arm was when it was first sampled)."""

    def __init__(self, points: list[_Point], before: Optional[_Point] = None):
        self.points = points
        self.before = before

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) at ``t`` (Trajectory::sample): before the first point from the point
        before, between points by interpolate_between_points, after the last one its position, at rest."""
        pts = self.points
        if t >= pts[-1].t:
            return pts[-1].q.copy(), np.zeros_like(pts[-1].q)
        prev = self.before if self.before is not None else pts[0]
        for p in pts:
            if t < p.t:
                return _interpolate(prev, p, t)
            prev = p
        return pts[-1].q.copy(), np.zeros_like(pts[-1].q)  # not reached


def _interpolate(a: _Point, b: _Point, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Trajectory::interpolate_between_points: cubic when both points have velocities, else linear;
    clamped to the segment (outside it, linear: no extrapolation)."""
    T = b.t - a.t
    s = min(max(t - a.t, 0.0), T)
    if T <= 0:
        return b.q.copy(), np.zeros_like(b.q)
    if a.v is None or b.v is None or s in (0.0, T):
        vel = (b.q - a.q) / T
        return a.q + vel * s, vel
    c2 = (-3 * a.q + 3 * b.q - 2 * a.v * T - b.v * T) / T**2
    c3 = (2 * a.q - 2 * b.q + a.v * T + b.v * T) / T**3
    return a.q + a.v * s + c2 * s**2 + c3 * s**3, a.v + 2 * c2 * s + 3 * c3 * s**2


# --- what the controller checks ----------------------------------------------------------------
def validate_trajectory(msg: JointTrajectory, joints: list[str], now: float, cfg: StandinJtcConfig
                        ) -> Optional[tuple[str, str]]:
    """None if the controller takes ``msg``, else (kind, the controller's error text): the checks of
    JointTrajectoryController::validate_trajectory_msg, in its order."""
    names = list(msg.joint_names)
    if not cfg.allow_partial_joints_goal and len(names) != len(joints):
        return "joint_count", "Joints on incoming trajectory don't match the controller joints."
    if not names:
        return "empty", "Empty joint names on incoming trajectory."
    if not msg.points:
        return "empty", "Empty trajectory received."
    for n in names:
        if n not in joints:
            return "unknown_joint", f"Incoming joint {n} doesn't match the controller's joints."
    if not cfg.allow_nonzero_velocity_at_trajectory_end:
        for n, v in zip(names, msg.points[-1].velocities):
            if abs(v) > _FLOAT_EPS:
                return "end_velocity", f"Velocity of last trajectory point of joint {n} is not zero: {v:.15f}"
    stamp = convert.from_stamp(msg.header.stamp)
    if stamp != 0.0:
        end = stamp + convert.from_duration(msg.points[-1].time_from_start)
        if end < now:
            return "late", (f"Received trajectory with non-zero start time ({stamp:f}) that ends in the past "
                            f"({end:f})")
    return _validate_points(msg, len(names))


def _validate_points(msg: JointTrajectory, n: int) -> Optional[tuple[str, str]]:
    prev = 0.0
    for i, p in enumerate(msg.points):
        t = convert.from_duration(p.time_from_start)
        if i > 0 and t <= prev:
            return "time_order", (f"Time between points {i - 1} and {i} is not strictly increasing, it is "
                                  f"{prev:f} and {t:f} respectively")
        prev = t
        for what, values, may_be_empty in (("positions", p.positions, False), ("velocities", p.velocities, True),
                                            ("accelerations", p.accelerations, True)):
            if not (may_be_empty and len(values) == 0) and len(values) != n:
                return "size", (f"Mismatch between joint_names size ({n}) and {what} ({len(values)}) at point "
                                f"#{i}.")
        if len(p.effort):
            return "effort", ("Trajectories with effort fields are only supported for controllers using the "
                              "'effort' command interface.")
    return None


# --- the node -----------------------------------------------------------------------------------
class StandinJtc(common.ConfiguredNode):
    config_class = StandinJtcConfig

    def __init__(self, node_name: str = "joint_trajectory_controller", **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: StandinJtcConfig = self.config
        from vla_robot.drivers.base import make_arm

        self.desc = d = _description(cfg.robot_description)
        try:
            self.arm = make_arm("twin", cfg.arm)
        except ConfigError as e:
            raise ConfigError(f"arm: {e}") from None
        if self.arm.spec.name != d.twin:
            self.arm.close()
            raise ConfigError(f"arm: its twin robot is {self.arm.spec.name!r} but {d.label}'s twin is {d.twin!r}; set "
                              f"arm.twin.robot: {d.twin}")
        twin_names = list(self.arm.joint_names)
        self._twin_idx = [twin_names.index(n) for n in d.names()]  # policy order (the twin's names) in the twin
        self.joints = d.arm_hardware_names()  # the controller's joints
        self._n_arm = len(self.joints)  # the first entries of the policy vector
        self._gripper_own = d.gripper.interface == "position_controller"
        self.period = 1.0 / cfg.update_rate
        self._lock = threading.Lock()
        self._inbox: deque = deque()  # (deliver at, msg): the injected latency
        self._new: Optional[JointTrajectory] = None  # new_trajectory_msg_: one slot, the newest wins
        self._traj: Optional[Trajectory] = None
        self._holding = True  # on_activate: set_hold_position
        q, _, _ = self.arm.read()
        self._target = q[self._twin_idx].copy()  # what the twin arm is told, in policy order and units
        self._last_cmd = d.to_hardware(self._target)[: self._n_arm]  # the controller's last command
        self.stats = Counter()
        self.rejected: Counter = Counter()
        self._margins: deque = deque(maxlen=1000)  # start time - delivery time of stamped trajectories (s)
        self.last_error = ""
        self._stats_dirty = True

        group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(JointTrajectory, "~/joint_trajectory", self._on_trajectory, 10, callback_group=group)
        if self._gripper_own:
            self.create_subscription(Float64MultiArray, d.gripper.topic, self._on_gripper, 10, callback_group=group)
        self.js_pub = self.create_publisher(JointState, common.JOINT_STATES, common.STATE_QOS)
        self.stats_pub = self.create_publisher(String, "~/stats", common.LATCHED_QOS)
        self.create_timer(self.period, self._update, callback_group=group)
        self.create_timer(1.0 / cfg.state_publish_rate, self._publish_state,
                          callback_group=MutuallyExclusiveCallbackGroup())
        self.diagnostics = common.Diagnostics(self)
        self.diagnostics.extra = lambda: (common.WARN if self.rejected else common.OK,
                                          self.last_error or "ok", self.counts())
        self.get_logger().info(f"stand-in JTC ({d.label}): joints {self.joints} on twin {d.twin}, "
                               f"{cfg.update_rate:g} Hz, injected latency {cfg.latency_s * 1000:.0f} ms"
                               + (f", gripper on {d.gripper.topic}" if self._gripper_own else ""))

    # --- inputs ---------------------------------------------------------------------------------
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        with self._lock:
            self.stats["received"] += 1
            self._inbox.append((time.time() + self.config.latency_s, msg))
        if self.config.latency_s == 0:
            self._deliver(time.time())

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 1:  # ForwardControllersBase::update: "command size ... does not match"
            self.get_logger().error(f"command size ({len(msg.data)}) does not match number of interfaces (1)",
                                    throttle_duration_sec=1.0)
            return
        with self._lock:
            self._target[-1] = float(self.desc.gripper.from_hardware(msg.data[0]))
            self.stats["gripper_commands"] += 1
            self._stats_dirty = True

    def _deliver(self, now: float) -> None:
        """topic_callback for each message whose latency has passed: validate, then the one-message slot."""
        while True:
            with self._lock:
                if not self._inbox or self._inbox[0][0] > now:
                    return
                _, msg = self._inbox.popleft()
            bad = validate_trajectory(msg, self.joints, time.time(), self.config)
            with self._lock:
                if bad is not None:
                    self.rejected[bad[0]] += 1
                    self.last_error = bad[1]
                else:
                    self.stats["accepted"] += 1
                    stamp = convert.from_stamp(msg.header.stamp)
                    if stamp != 0.0:  # how long before its start it came (< 0: started late, merged from now)
                        self._margins.append(stamp - time.time())
                        self.stats["started_late"] += self._margins[-1] < 0
                    self._new = msg
                    self._holding = False
                self._stats_dirty = True
            if bad is not None:
                self.get_logger().error(bad[1], throttle_duration_sec=1.0)

    # --- the update -----------------------------------------------------------------------------
    def _update(self) -> None:
        now = time.time()
        self._deliver(now)
        try:
            q, dq, _ = self.arm.read()
        except Exception as e:  # noqa: BLE001 - the simulation thread failed: say so, keep the node up
            self.get_logger().error(f"twin arm: {e}", throttle_duration_sec=2.0)
            return
        with self._lock:
            new, self._new = self._new, None
            if new is not None:
                hw_q, hw_dq = self._hardware_state(q, dq)
                self._install(new, now, hw_q[: self._n_arm], hw_dq[: self._n_arm])
            if self._traj is not None:
                cmd, _ = self._traj.sample(now + self.period)  # command_next_: one update ahead
                self._last_cmd = cmd
                full = self.desc.to_hardware(self._target)
                full[: self._n_arm] = cmd
                self._target = self._policy_units(full)
            target = q.copy()
            target[self._twin_idx] = self._target
        try:
            self.arm.command(target)
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"twin arm refused the command: {e}", throttle_duration_sec=2.0)
        if self._stats_dirty:
            self._stats_dirty = False
            self.stats_pub.publish(String(data=json.dumps(self.counts())))

    def _install(self, msg: JointTrajectory, now: float, q: np.ndarray, dq: np.ndarray) -> None:
        """update(): merge with the running trajectory (blend_with_active_trajectory) or replace it."""
        points = self._points(msg)
        stamp = convert.from_stamp(msg.header.stamp)
        before = _Point(now, self._last_cmd.copy(), None) if self.config.interpolate_from_desired_state \
            else _Point(now, q.copy(), dq.copy())
        old = self._traj
        if (self.config.allow_trajectory_replacement and old is not None and len(old.points) > 1
                and not self._holding):
            start = stamp if stamp > now else now  # new_start: its stamp, or now when that has passed (or is 0)
            new = [_Point(start + p.t, p.q, p.v) for p in points]
            prefix = [p for p in old.points if now < p.t < start]
            if start < new[0].t:  # the bridge: the old trajectory where the new one takes over
                bq, bv = old.sample(start)
                prefix.append(_Point(start, bq, bv))
            self._traj = Trajectory(prefix + new, before)
            self.stats["merged"] += 1
        else:  # legacy: replace, timed from the stamp (0: from now)
            t0 = stamp if stamp != 0.0 else now
            self._traj = Trajectory([_Point(t0 + p.t, p.q, p.v) for p in points], before)

    def _points(self, msg: JointTrajectory) -> list[_Point]:
        """The points in the controller's joint order (sort_to_local_joint_order), time relative to the
        start; joints a partial goal leaves out hold their last command (fill_partial_goal)."""
        names = list(msg.joint_names)
        out = []
        for p in msg.points:
            q = self._last_cmd.copy()
            v = np.zeros(len(self.joints)) if len(p.velocities) else None
            for k, n in enumerate(names):
                j = self.joints.index(n)
                q[j] = p.positions[k]
                if v is not None:
                    v[j] = p.velocities[k]
            out.append(_Point(convert.from_duration(p.time_from_start), q, v))
        return out

    # --- outputs --------------------------------------------------------------------------------
    def _hardware_state(self, q: np.ndarray, dq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The twin's joints -> the hardware's (description order, hardware units)."""
        hq = self.desc.to_hardware(q[self._twin_idx])
        hdq = dq[self._twin_idx].copy()
        if self.desc.gripper.present:
            hdq[-1] /= self.desc.gripper.scale
        return hq, hdq

    def _policy_units(self, hw: np.ndarray) -> np.ndarray:
        out = np.array(hw, dtype=np.float64)
        if self.desc.gripper.present:
            out[-1] = self.desc.gripper.from_hardware(out[-1])
        return out

    def _publish_state(self) -> None:
        try:
            q, dq, _ = self.arm.read()
        except Exception:  # noqa: BLE001 - reported by the update
            return
        hq, hdq = self._hardware_state(q, dq)
        self.js_pub.publish(convert.joint_state_to_msg(self.desc.hardware_names(), hq, time.time(), velocity=hdq))

    def counts(self) -> dict:
        with self._lock:
            return {**{k: self.stats[k] for k in ("received", "accepted", "merged", "started_late",
                                                   "gripper_commands")},
                    "rejected": dict(self.rejected), "late": self.rejected.get("late", 0),
                    "margin_ms": {k: round(1000 * float(f(self._margins)), 1) for k, f in
                                  (("min", np.min), ("median", np.median))} if self._margins else {},
                    "last_error": self.last_error}

    def close(self) -> None:
        try:
            self.arm.close()
        except Exception:  # noqa: BLE001
            pass


NODE_CLASS = StandinJtc


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(StandinJtc, args)


if __name__ == "__main__":
    main()
