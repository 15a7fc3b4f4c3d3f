"""The stand-in JTC (vla_robot/nodes/standin_jtc.py) behaves toward a client as ros2_controllers'
joint_trajectory_controller does. Each test names the function of
github.com/ros-controls/ros2_controllers (commit 94e74de, Aug 2026) whose behaviour it checks:
``joint_trajectory_controller/src/joint_trajectory_controller.cpp`` (JTC below),
``joint_trajectory_controller/src/trajectory.cpp`` and ``.../src/joint_trajectory_controller_parameters.yaml``.

The live tests go through real rclpy topics with the twin's physics behind the controller; the merge
tests call the node's own update step (``_install``, then the trajectory's ``sample``) at chosen times,
so they do not depend on the machine's load.
"""
import json
import threading
import time
import uuid

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from vla_robot.nodes import common, convert  # noqa: E402
from vla_robot.nodes.standin_jtc import StandinJtc, StandinJtcConfig  # noqa: E402

from conftest import Probe  # noqa: E402

pytestmark = pytest.mark.ros
TOPIC = "/joint_trajectory_controller/joint_trajectory"
FR3_JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]  # config/robots/fr3.yaml, the stand-in's default
GRIPPER_TOPIC = "/fr3_gripper_position_controller/commands"
STATS = "/joint_trajectory_controller/stats"


def traj(names, points, stamp=0.0, velocities=True):
    """A JointTrajectory: ``points`` = [(time_from_start, positions)], at rest at the end."""
    msg = JointTrajectory()
    msg.header.stamp = convert.to_stamp(stamp)
    msg.joint_names = list(names)
    for i, (t, q) in enumerate(points):
        p = JointTrajectoryPoint(positions=[float(x) for x in q], time_from_start=convert.to_duration(t))
        if velocities:
            p.velocities = [0.0] * len(q) if i == len(points) - 1 else [0.1] * len(q)
        msg.points.append(p)
    return msg


class Rig(Probe):
    """The stand-in JTC, and conftest's Probe as its client, in one context spun in a thread."""

    def __init__(self, ctx, **cfg):
        super().__init__(ctx, "client")
        twin = {"robot": "panda", "control_hz": 100.0, "image_size": [16, 16]}
        config = StandinJtcConfig(arm={"session": f"jtc-{uuid.uuid4().hex[:6]}", "realtime": True, "twin": twin}, **cfg)
        self.jtc = StandinJtc(context=ctx, config=config)
        self.pub = self.node.create_publisher(JointTrajectory, TOPIC, 10)
        self.grip = self.node.create_publisher(Float64MultiArray, GRIPPER_TOPIC, 10)
        self.collect("/joint_states", JointState, common.STATE_QOS)
        self.collect(STATS, String, common.LATCHED_QOS, lambda m: json.loads(m.data))
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.jtc)
        self.ex.add_node(self.node)
        self.stop = False
        self.thread = threading.Thread(target=lambda: [self.ex.spin_once(timeout_sec=0.02)
                                                       for _ in iter(lambda: self.stop, True)], daemon=True)
        self.thread.start()
        assert self.wait(lambda: self.pub.get_subscription_count() > 0 and self.seen("/joint_states"), 10), "no link"

    wait = staticmethod(Probe.wait_for)

    @property
    def states(self):
        return self.seen("/joint_states")

    def q(self):
        msg = self.states[-1]
        return dict(zip(msg.name, msg.position))

    def counts(self):
        stats = self.seen(STATS)
        return stats[-1] if stats else {}

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        self.ex.shutdown()
        self.jtc.close()
        self.jtc.destroy_node()
        self.node.destroy_node()


@pytest.fixture
def rig(ros_context):
    r = Rig(ros_context)
    yield r
    r.close()


def arm_q(rig):
    q = rig.q()
    return np.array([q[n] for n in FR3_JOINTS])


def test_joint_states_carry_hardware_names_and_the_arm_moves_by_physics(rig):
    """joint_state_broadcaster publishes every joint under the hardware's names; JTC's update() sends
    the sampled trajectory to the position interface, and the twin's physics answers."""
    q0 = arm_q(rig)
    assert list(rig.q()) == FR3_JOINTS + ["fr3_finger_joint1"]
    goal = q0.copy()
    goal[0] += 0.3
    rig.pub.publish(traj(FR3_JOINTS, [(0.6, goal)], stamp=0.0))  # stamp 0: start now
    assert rig.wait(lambda: rig.counts().get("accepted") == 1, 5), rig.counts()
    assert rig.wait(lambda: abs(arm_q(rig)[0] - goal[0]) < 0.02, 5), arm_q(rig)
    # physics, not the command echoed: a moving arm reports a velocity
    assert any(abs(m.velocity[0]) > 0.05 for m in rig.states[-200:])


def test_unknown_and_missing_joints_are_rejected(rig):
    """JTC validate_trajectory_msg: 'Incoming joint %s doesn't match the controller's joints' for a
    name the controller lacks; with allow_partial_joints_goal false (its default in
    joint_trajectory_controller_parameters.yaml) a trajectory naming fewer joints is refused with
    'Joints on incoming trajectory don't match the controller joints'. The arm stays put."""
    q0 = arm_q(rig)
    twin_names = [f"joint{i}" for i in range(1, 8)]  # the twin's names, not the hardware's
    rig.pub.publish(traj(twin_names, [(0.5, q0 + 0.3)]))
    rig.pub.publish(traj(FR3_JOINTS[:6], [(0.5, q0[:6] + 0.3)]))
    rig.pub.publish(traj(FR3_JOINTS + ["fr3_finger_joint1"], [(0.5, list(q0 + 0.3) + [0.0])]))
    assert rig.wait(lambda: sum(rig.counts().get("rejected", {}).values()) == 3, 5), rig.counts()
    assert rig.counts()["rejected"] == {"unknown_joint": 1, "joint_count": 2}
    assert rig.counts()["accepted"] == 0
    time.sleep(0.5)
    assert np.allclose(arm_q(rig), q0, atol=0.01)


def test_a_trajectory_that_ends_in_the_past_is_dropped_and_stamp_zero_means_now(rig):
    """JTC validate_trajectory_msg: a non-zero header.stamp whose last point (stamp + time_from_start)
    is before now is refused ('ends in the past'); a stamp of 0 is never late (start now)."""
    q0 = arm_q(rig)
    now = time.time()
    rig.pub.publish(traj(FR3_JOINTS, [(0.1, q0 + 0.2)], stamp=now - 0.5))
    assert rig.wait(lambda: rig.counts().get("late") == 1, 5), rig.counts()
    rig.pub.publish(traj(FR3_JOINTS, [(0.1, q0)], stamp=0.0))
    rig.pub.publish(traj(FR3_JOINTS, [(0.1, q0)], stamp=time.time() - 0.05))  # started late, not over: taken
    assert rig.wait(lambda: rig.counts().get("accepted") == 2, 5), rig.counts()
    assert rig.counts()["started_late"] == 1
    assert np.allclose(arm_q(rig), q0, atol=0.01)


def test_last_point_must_be_at_rest_and_times_must_increase(rig):
    """JTC validate_trajectory_msg: allow_nonzero_velocity_at_trajectory_end is false by default
    ('Velocity of last trajectory point ... is not zero'); time_from_start must strictly increase."""
    q0 = arm_q(rig)
    moving = traj(FR3_JOINTS, [(0.2, q0)])
    moving.points[-1].velocities = [0.1] * 7
    rig.pub.publish(moving)
    rig.pub.publish(traj(FR3_JOINTS, [(0.2, q0), (0.2, q0)]))
    assert rig.wait(lambda: sum(rig.counts().get("rejected", {}).values()) == 2, 5), rig.counts()
    assert rig.counts()["rejected"] == {"end_velocity": 1, "time_order": 1}


def test_injected_latency_drops_what_arrives_after_its_end(ros_context):
    """The same 'ends in the past' check with the message delayed by latency_s on the way in: a
    trajectory whose end is 50 ms after sending is dropped at 150 ms latency; one stamped 0.2 s ahead
    (a lead time longer than the latency) with a 33 ms point is taken, and starts on time."""
    rig = Rig(ros_context, latency_s=0.15)
    try:
        q0 = arm_q(rig)
        rig.pub.publish(traj(FR3_JOINTS, [(0.05, q0)], stamp=time.time()))
        assert rig.wait(lambda: rig.counts().get("late") == 1, 5), rig.counts()
        rig.pub.publish(traj(FR3_JOINTS, [(0.033, q0)], stamp=time.time() + 0.2))
        assert rig.wait(lambda: rig.counts().get("accepted") == 1, 5), rig.counts()
        assert rig.counts()["late"] == 1 and rig.counts()["started_late"] == 0
    finally:
        rig.close()


def test_the_gripper_has_its_own_position_controller(rig):
    """forward_command_controller (forward_controllers_base.cpp ForwardControllersBase::update): one
    value per interface on ~/commands sets the joint; a command of another size is refused. Hardware
    units (the Franka finger, metres) map onto the twin's gripper as the description says."""
    rig.grip.publish(Float64MultiArray(data=[0.01, 0.1]))  # two values for one joint: refused
    rig.grip.publish(Float64MultiArray(data=[0.01]))  # nearly closed: 0.01 of 0.04 m open
    assert rig.wait(lambda: abs(rig.q()["fr3_finger_joint1"] - 0.01) < 0.003, 5), rig.q()
    assert rig.jtc.arm.read()[0][-1] == pytest.approx(0.6, abs=0.06)  # the twin's Robotiq angle, 0 open .. 0.8
    assert rig.counts().get("gripper_commands") == 1


# --- merge on arrival, on the node's own update step ----------------------------------------------
def _node(ros_context, **cfg):
    twin = {"robot": "panda", "control_hz": 100.0, "image_size": [16, 16]}
    return StandinJtc(context=ros_context, config=StandinJtcConfig(
        arm={"session": f"jtc-{uuid.uuid4().hex[:6]}", "realtime": False, "twin": twin}, **cfg))


def _ramp(q0, j, to, t_end, n=10):
    """n points moving joint j from q0[j] linearly to ``to`` by t_end."""
    pts = []
    for k in range(1, n + 1):
        q = q0.copy()
        q[j] = q0[j] + (to - q0[j]) * k / n
        pts.append((t_end * k / n, q))
    return pts


def test_a_new_trajectory_replaces_the_running_one_from_its_own_start_time(ros_context):
    """JTC update() → blend_with_active_trajectory (allow_trajectory_replacement, default true; the
    running trajectory has more than one point): the old waypoints before the new start time stay,
    then a bridge sampled from the old trajectory at that time, then the new points; new_start is the
    stamp when it lies ahead, else now. Trajectory::sample interpolates from the measured state."""
    node = _node(ros_context)
    try:
        q0, dq0 = np.zeros(7), np.zeros(7)
        node._last_cmd = q0.copy()
        t = 1000.0
        node._install(traj(FR3_JOINTS, _ramp(q0, 0, 1.0, 1.0), stamp=t), t, q0, dq0)
        node._holding = False
        assert node._traj.sample(t + 0.5)[0][0] == pytest.approx(0.5, abs=0.02)
        # at t + 0.2 a trajectory arrives that starts at t + 0.5 and sends joint 0 back to -1
        node._install(traj(FR3_JOINTS, _ramp(q0 + 0.5, 0, -1.0, 1.0), stamp=t + 0.5), t + 0.2, q0 + 0.2, dq0)
        old_part = [node._traj.sample(t + s)[0][0] for s in (0.3, 0.4, 0.5)]
        assert old_part == pytest.approx([0.3, 0.4, 0.5], abs=0.02)  # the old one runs until t + 0.5
        assert node._traj.sample(t + 1.5)[0][0] == pytest.approx(-1.0, abs=1e-9)  # then the new one
        assert node.stats["merged"] == 1
        # stamped in the past (but not ended): taken from now, time_from_start counted from arrival
        node._install(traj(FR3_JOINTS, _ramp(q0, 0, 0.3, 1.0), stamp=t + 0.9), t + 1.0, q0, dq0)
        assert node._traj.sample(t + 2.0)[0][0] == pytest.approx(0.3, abs=1e-9)
        assert node._traj.sample(t + 1.5)[0][0] < 0.3 - 0.1
    finally:
        node.close()
        node.destroy_node()


def test_a_single_point_trajectory_is_replaced_outright_and_sampling_is_cubic_with_velocities(ros_context):
    """JTC update(): with a one-point running trajectory (Trajectory::has_nontrivial_msg is false) the
    new one replaces it, timed from its own stamp (Trajectory::update: trajectory_start_time_ =
    header.stamp, 0 = the first sample's time). interpolate_between_points: linear without
    velocities, cubic with them."""
    node = _node(ros_context)
    try:
        q0, dq0 = np.zeros(7), np.zeros(7)
        node._last_cmd = q0.copy()
        t = 50.0
        node._install(traj(FR3_JOINTS, [(1.0, q0 + 1.0)], stamp=0.0, velocities=False), t, q0, dq0)
        assert node._traj.sample(t + 0.25)[0][0] == pytest.approx(0.25)  # linear, from now
        node._holding = False
        node._install(traj(FR3_JOINTS, [(1.0, q0 + 1.0)], stamp=t + 1.0), t + 0.5, q0, dq0)
        assert node.stats["merged"] == 0
        # cubic from rest (the measured velocity 0) to rest over [t + 0.5, t + 2]: smoothstep
        s = 0.25
        assert node._traj.sample(t + 0.5 + 1.5 * s)[0][0] == pytest.approx(3 * s**2 - 2 * s**3)
    finally:
        node.close()
        node.destroy_node()
