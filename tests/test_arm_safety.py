"""No code path sends an arm command that the safety filter has not seen (issue 16).

1. In every shipped graph (bringup.graph for each graph x use_sim x arm_driver) every node that
   publishes a JointTrajectory onto the arm's topic (arm/command, or the ros2_control controller's,
   after its remappings) declares the SafetyFilter it passes that topic through (``ARM_SAFETY``), and
   every node that sends to the device itself (arm_node's homing) declares that move's filter.
2. Each such node, driven with a command far beyond the limits configured for it, puts out only
   commands within one tick's velocity and acceleration limits of those configured limits.
"""
import ast
import importlib
import inspect
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")

from vla_robot import bringup  # noqa: E402
from vla_robot.bringup import NodeSpec  # noqa: E402
from vla_robot.nodes import common, convert  # noqa: E402
from vla_robot.nodes.runner import node_kwargs  # noqa: E402
from vla_robot.twin.robots import robot_spec  # noqa: E402

pytestmark = pytest.mark.ros
SPEC = robot_spec("so101")
ARM_TOPICS = {"/" + common.ARM_COMMAND, bringup.JTC_TOPIC}
# tighter than the robot's limits: a node that ignores its configured limits shows it
SAFETY = {"velocity_scale": 0.2, "acceleration_scale": 0.2}
VMAX = SPEC.max_velocity * SAFETY["velocity_scale"]
AMAX = SPEC.max_acceleration * SAFETY["acceleration_scale"]


def _abs(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def trajectory_publishers(cls) -> list[str]:
    """Topics the node class creates JointTrajectory publishers on (read from its source)."""
    module = importlib.import_module(cls.__module__)
    topics = []
    for call in ast.walk(ast.parse(inspect.getsource(cls))):
        if (isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "create_publisher"
                and len(call.args) >= 2 and ast.unparse(call.args[0]) == "JointTrajectory"):
            topics.append(eval(ast.unparse(call.args[1]), vars(module)))  # noqa: S307 - our own constants
    return topics


def arm_commanders() -> dict[str, set]:
    """executable -> the topics (before remapping) on which it commands the arm, over every shipped graph."""
    found: dict[str, set] = {}
    for name in bringup.GRAPHS:
        for use_sim in (False, True):
            for driver in bringup.ARM_DRIVERS:
                for spec in bringup.graph(name, use_sim=use_sim, arm_driver=driver):
                    cls = importlib.import_module(spec.module).NODE_CLASS
                    remap = {_abs(a): _abs(b) for a, b in spec.remappings}
                    for topic in trajectory_publishers(cls):
                        if remap.get(_abs(topic), _abs(topic)) in ARM_TOPICS:
                            found.setdefault(spec.executable, set()).add(topic)
                    if spec.executable == "arm_node":  # sends to the device itself
                        found.setdefault(spec.executable, set()).add("homing")
    return found


def test_every_arm_command_in_every_shipped_graph_declares_its_safety_filter():
    found = arm_commanders()
    assert {"policy_node", "teleop_node", "arm_node"} <= set(found)  # the enumeration sees what it must
    for executable, topics in found.items():
        cls = importlib.import_module(f"vla_robot.nodes.{executable}").NODE_CLASS
        declared = getattr(cls, "ARM_SAFETY", {})
        missing = topics - set(declared)
        assert not missing, f"{executable} commands the arm on {sorted(missing)} without a declared safety filter"
    # every commander is driven below: a new one needs its drive here
    assert set(found) == set(DRIVES), f"no safety drive for {sorted(set(found) - set(DRIVES))}"


def assert_within_limits(start, commands, dt):
    """Each command within one tick's velocity and acceleration limits of the one before it."""
    q = np.vstack([start, commands])
    v = np.vstack([np.zeros(len(start)), np.diff(q, axis=0) / dt])
    assert np.all(np.abs(v) <= VMAX + 1e-6), f"velocity {np.abs(v).max(axis=0)} over {VMAX}"
    assert np.all(np.abs(np.diff(v, axis=0)) <= AMAX * dt + 1e-6), (
        f"velocity change {np.abs(np.diff(v, axis=0)).max(axis=0)} over one tick's {AMAX * dt}")
    assert np.all(q >= SPEC.lower - 1e-9) and np.all(q <= SPEC.upper + 1e-9)


FAR = SPEC.lower + 0.05  # far from home on every joint


def assert_declared_filters(node):
    """Each filter the node class declares is a SafetyFilter with the configured limits."""
    from functools import reduce

    from vla_robot.control.safety import SafetyFilter

    for what, path in type(node).ARM_SAFETY.items():
        f = reduce(getattr, path.split("."), node)
        assert isinstance(f, SafetyFilter), f"{type(node).__name__}.{path} ({what}) is no SafetyFilter"
        np.testing.assert_allclose(f.max_velocity, VMAX)
        np.testing.assert_allclose(f.max_acceleration, AMAX)


def drive_teleop(ros_context):
    """record_demos: teleop writes straight to the arm; 'h' from a far pose must ramp home."""
    spec = next(s for s in bringup.graph("record_demos") if s.executable == "teleop_node")
    kw = node_kwargs(spec, {"device": "keyboard", "rate_hz": 30.0, "safety": SAFETY})
    from vla_robot.nodes.teleop_node import TeleopNode

    node = TeleopNode("teleop_node", context=ros_context, use_terminal=False, **kw)
    sent = []
    try:
        assert_declared_filters(node)
        assert node.command_pub.topic_name == "/arm/command"  # the remapping is in force
        node.command_pub.publish = lambda m: sent.append(convert.msg_to_command(m, SPEC.joint_names)[0])
        node._on_joint_state(convert.joint_state_to_msg(SPEC.joint_names, FAR, time.time()))
        node.press(" ")
        node.press("h")
        for _ in range(2000):
            node._on_timer()
            if len(sent) > 1 and np.allclose(sent[-1], SPEC.home, atol=1e-6):
                break
        return FAR, np.array(sent), 1.0 / 30.0, SPEC.home
    finally:
        node.close()
        node.destroy_node()


def drive_policy(ros_context):
    """rl_finetune: a policy asking for targets far beyond the joint limits."""
    from vla_robot.nodes.policy_node import PolicyNode

    class FarClient:
        def metadata(self, timeout_s=None):
            return {"model": "fake", "version": 0, "chunk_size": 4, "cameras": ["front"],
                    "action_dim": SPEC.n_joints}

        def infer(self, observations, timeout_s=None, **options):
            return [{"actions": np.tile(SPEC.upper + 2.0, (4, 1)).astype(np.float32), "version": 0} for _ in observations]

        def close(self):
            pass

    spec = next(s for s in bringup.graph("rl_finetune") if s.executable == "policy_node")
    kw = node_kwargs(spec, {"lockstep": True, "cameras": ["front"], "control": {"safety": SAFETY}})
    node = PolicyNode("policy_node", context=ros_context, client=FarClient(), **kw)
    sent = []
    try:
        assert_declared_filters(node)
        node.command_pub.publish = lambda m: sent.append(convert.msg_to_command(m, SPEC.joint_names)[0])
        node._on_episode_event(convert.event_to_msg({"type": "start", "episode": 0, "stamp": 1.0}))
        dt = node.dt
        for k in range(60):
            stamp = 1.0 + k * dt
            q = FAR if not sent else sent[-1]  # the arm follows its commands
            node._on_image("front", convert.image_to_msg(np.zeros((16, 16, 3), np.uint8), stamp))
            node._on_joint_state(convert.joint_state_to_msg(SPEC.joint_names, q, stamp))
        return FAR, np.array(sent), dt, None
    finally:
        node.destroy_node()


def drive_arm_homing(ros_context, tmp_path):
    """arm_node's homing between episodes, from a far pose (a person is resetting the scene beside it)."""
    from vla_robot.nodes.arm_node import ArmNode

    f = tmp_path / "arm.yaml"
    f.write_text("arm_node:\n  ros__parameters:\n    backend: twin\n    robot: so101\n    state_hz: 30.0\n"
                 "    options: {session: safety, realtime: false, twin: {robot: so101, task: reach, "
                 "image_size: [16, 16], cameras: [front]}}\n")
    node = ArmNode("arm_node", context=ros_context, **node_kwargs(NodeSpec("arm_node", "arm_node", (str(f),)),
                                                                   {"safety": SAFETY}))
    sent = []
    pose = {"q": FAR.copy()}

    class FollowingArm:  # measures exactly what it was told: the commands alone show the motion
        joint_names = SPEC.joint_names

        def read(self):
            return pose["q"].copy(), np.zeros(SPEC.n_joints), time.monotonic()

        def command(self, q):
            pose["q"] = np.asarray(q, dtype=np.float64).copy()
            sent.append(pose["q"])

        def close(self):
            pass

    real, node.arm = node.arm, FollowingArm()
    try:
        assert_declared_filters(node)
        node._on_episode_event(convert.event_to_msg({"type": "reset", "episode": 0}))
        for _ in range(5000):
            node._on_timer()
            if sent and np.allclose(sent[-1], SPEC.home, atol=1e-6):
                break
        return FAR, np.array(sent), 1.0 / 30.0, SPEC.home
    finally:
        real.close()
        node.destroy_node()


DRIVES = {"teleop_node": drive_teleop, "policy_node": drive_policy, "arm_node": drive_arm_homing}


@pytest.mark.parametrize("executable", sorted(DRIVES))
def test_a_command_far_beyond_the_limits_comes_out_within_one_ticks_limits(executable, ros_context, tmp_path):
    drive = DRIVES[executable]
    args = (ros_context, tmp_path) if executable == "arm_node" else (ros_context,)
    start, commands, dt, goal = drive(*args)
    assert len(commands) > 1, f"{executable} sent no commands"
    assert_within_limits(start, commands, dt)
    if goal is not None:  # it still gets there
        np.testing.assert_allclose(commands[-1], goal, atol=1e-6)


def test_policy_node_holds_a_target_outside_the_workspace_box_at_the_box(ros_context):
    """The box in policy_node's config is enforced with the robot's forward kinematics (it used to pass
    validation and do nothing): a policy reaching far outside is held at the box wall."""
    from vla_robot.twin.kinematics import end_effector_fk

    fk = end_effector_fk("so101")
    x_home = fk(SPEC.home)
    box_min, box_max = (x_home - [0.05, 0.05, 0.05]).tolist(), (x_home + [0.05, 0.05, 0.05]).tolist()
    target = SPEC.home.copy()
    target[1] += 1.0  # shoulder lift: the tool swings far out of a 10 cm box
    assert np.any(np.abs(fk(target) - x_home) > 0.05)

    from vla_robot.nodes.policy_node import PolicyNode

    class OutClient:
        def metadata(self, timeout_s=None):
            return {"model": "fake", "version": 0, "chunk_size": 4, "cameras": ["front"], "action_dim": SPEC.n_joints}

        def infer(self, observations, timeout_s=None, **options):
            return [{"actions": np.tile(target, (4, 1)).astype(np.float32), "version": 0} for _ in observations]

        def close(self):
            pass

    spec = next(s for s in bringup.graph("evaluate") if s.executable == "policy_node")
    safety = {"workspace_min": box_min, "workspace_max": box_max}
    kw = node_kwargs(spec, {"lockstep": True, "cameras": ["front"], "control": {"safety": safety}})
    node = PolicyNode("policy_node", context=ros_context, client=OutClient(), **kw)
    sent = []
    try:
        node.command_pub.publish = lambda m: sent.append(convert.msg_to_command(m, SPEC.joint_names)[0])
        node._on_episode_event(convert.event_to_msg({"type": "start", "episode": 0, "stamp": 1.0}))
        for k in range(150):
            stamp = 1.0 + k * node.dt
            node._on_image("front", convert.image_to_msg(np.zeros((16, 16, 3), np.uint8), stamp))
            node._on_joint_state(convert.joint_state_to_msg(SPEC.joint_names, sent[-1] if sent else SPEC.home, stamp))
        x = np.array([fk(q) for q in sent])
        assert np.all(x >= np.array(box_min) - 1e-9) and np.all(x <= np.array(box_max) + 1e-9)
        # held at the wall: it got there, and stays
        gap = np.minimum(x[-1] - box_min, np.array(box_max) - x[-1]).min()
        assert gap < 2e-3, f"held {gap} m inside the box, not at its wall"
        np.testing.assert_allclose(sent[-1], sent[-10], atol=1e-6)
    finally:
        node.destroy_node()
