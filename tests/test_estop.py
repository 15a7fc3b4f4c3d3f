"""The e-stop, as a person at the robot uses it: ``ros2 topic pub --once /estop std_msgs/msg/Bool
"{data: true}"`` (reliable + volatile QoS, from a process outside the project) stops the arm node and
the teleop node, the stop latches until an explicit ``data: false``, and a node that starts after a
latched e-stop was published starts stopped. ros2cli is not installable here: a plain rclpy script
with ros2cli's default QoS stands in for it."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_robot.bringup import NodeSpec  # noqa: E402
from vla_robot.nodes import common, convert  # noqa: E402
from vla_robot.nodes.arm_node import ArmNode  # noqa: E402
from vla_robot.nodes.runner import node_kwargs  # noqa: E402
from vla_robot.nodes.teleop_node import TeleopNode  # noqa: E402
from vla_robot.twin.robots import robot_spec  # noqa: E402

pytestmark = pytest.mark.ros
TWIN = "{robot: so101, task: reach, image_size: [32, 40], cameras: [front]}"
NAMES = robot_spec("so101").joint_names

# What `ros2 topic pub --once /estop std_msgs/msg/Bool "{data: X}"` does: reliable + volatile (depth 1),
# wait for a subscriber, publish once, linger a moment. Nothing of the project is imported.
ROS2_TOPIC_PUB = r"""
import sys, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
from std_msgs.msg import Bool
rclpy.init()
node = rclpy.create_node("ros2cli_stand_in")
pub = node.create_publisher(Bool, "/estop", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                                       durability=DurabilityPolicy.VOLATILE))
deadline = time.monotonic() + 20
while pub.get_subscription_count() < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
print("matched", pub.get_subscription_count(), flush=True)
pub.publish(Bool(data=sys.argv[1] == "true"))
time.sleep(0.5)
node.destroy_node()
rclpy.shutdown()
"""


def topic_pub(data: bool, subscribers: int = 1) -> str:
    r = subprocess.run([sys.executable, "-c", ROS2_TOPIC_PUB, "true" if data else "false", str(subscribers)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


class Spinner:
    def __init__(self, ctx, *nodes):
        self.ex = MultiThreadedExecutor(num_threads=4, context=ctx)
        for n in nodes:
            self.ex.add_node(n)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def close(self):
        self.ex.shutdown(timeout_sec=5)
        self.thread.join(timeout=5)


def wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def arm_node(ctx, tmp_path, session):
    f = tmp_path / "params.yaml"
    f.write_text(f"""
arm_node:
  ros__parameters:
    backend: twin
    robot: so101
    state_hz: 30.0
    options: {{session: {session}, realtime: true, twin: {TWIN}}}
""")
    return ArmNode("arm_node", context=ctx, **node_kwargs(NodeSpec("arm_node", "arm_node", (str(f),))))


def test_a_plain_volatile_estop_stops_the_moving_arm_until_released(ros_context, tmp_path):
    arm = arm_node(ros_context, tmp_path, "estop_arm")
    probe = rclpy.create_node("estop_probe", context=ros_context)
    states = []  # (arm node latched when this state arrived, q, dq)
    lock = threading.Lock()

    def on_js(msg):
        q, dq, _ = convert.msg_to_joint_state(msg, NAMES)
        with lock:
            states.append((arm.estopped, q, dq))

    probe.create_subscription(JointState, "/joint_states", on_js, common.STATE_QOS)
    cmd = probe.create_publisher(JointTrajectory, "/arm/command", common.COMMAND_QOS)
    spin = Spinner(ros_context, arm, probe)
    q0 = arm.arm.read()[0]
    stop_ramp = threading.Event()

    def ramp():  # a commander that keeps moving joint 0 to and fro at 0.6 rad/s, as a policy would at 30 Hz
        target, step = q0.copy(), 0.02
        while not stop_ramp.is_set():
            if abs(target[0] + step - q0[0]) > 0.5:
                step = -step
            target[0] += step
            cmd.publish(convert.command_to_msg(target, NAMES, time.time(), 1 / 30))
            time.sleep(1 / 30)

    commander = threading.Thread(target=ramp, daemon=True)
    try:
        assert wait(lambda: cmd.get_subscription_count() > 0 and len(states) > 3)
        commander.start()
        assert wait(lambda: abs(states[-1][2][0]) > 0.3), "the arm never moved"
        out = topic_pub(True)
        assert "matched 1" in out, f"the arm node has no subscription a volatile publisher matches: {out}"
        assert wait(lambda: arm.estopped, 10), "the arm node ignored a plain `ros2 topic pub` e-stop"
        assert wait(lambda: sum(s[0] for s in states) >= 20, 10)
        with lock:
            after = [(q, dq) for latched, q, dq in states if latched]
        # the measured velocity is ~0 within a couple of control ticks and stays there while the commander keeps
        # sending: the arm holds where it was stopped. Counted in state messages seen after the latch, which
        # include ones measured before it that were still in flight, or a state published twice between two
        # physics steps on a loaded machine (seen: 0.92, 0.63, 0.63, 0.006 rad/s); quiet: 0.27, 0.03, 0.004
        assert np.abs(after[3][1]).max() < 0.1, [np.abs(dq).max() for _, dq in after[:6]]
        held = np.array([q for q, _ in after[3:]])
        assert np.ptp(held, axis=0).max() < 0.01 and max(np.abs(dq).max() for _, dq in after[3:]) < 0.05
        assert arm.received["estop"] > 0  # commands came and were refused
        # an explicit release: the commander's next targets move the arm again
        topic_pub(False)
        assert wait(lambda: not arm.estopped, 10)
        assert wait(lambda: abs(states[-1][1][0] - after[-1][0][0]) > 0.05, 10), "commands after release ignored"
    finally:
        stop_ramp.set()
        spin.close()
        arm.close()
        arm.destroy_node()
        probe.destroy_node()


def test_a_node_started_after_a_latched_estop_starts_stopped(ros_context, tmp_path):
    """Our own e-stop publishers (the operator console, teleop's key) latch: a late node learns of it."""
    probe = rclpy.create_node("estop_latcher", context=ros_context)
    pub = probe.create_publisher(Bool, "/estop", common.LATCHED_QOS)
    pub.publish(Bool(data=True))
    arm = arm_node(ros_context, tmp_path, "estop_late")
    spin = Spinner(ros_context, arm, probe)
    try:
        assert wait(lambda: arm.estopped, 10)
        q = arm.arm.read()[0]
        far = q.copy()
        far[0] += 0.5
        arm._on_command(convert.command_to_msg(far, NAMES, time.time(), 0.05))
        arm._on_episode_event(convert.event_to_msg({"type": "reset", "episode": 0}))  # no homing either
        time.sleep(0.3)
        assert np.abs(arm.arm.read()[0] - q).max() < 0.01 and not arm._homing
    finally:
        spin.close()
        arm.close()
        arm.destroy_node()
        probe.destroy_node()


def test_teleop_stops_sending_on_a_plain_estop_and_has_an_estop_key(ros_context):
    node = TeleopNode("teleop_node", context=ros_context, use_terminal=False,
                      parameter_overrides=[rclpy.parameter.Parameter("rate_hz", value=20.0)])
    probe = rclpy.create_node("teleop_estop_probe", context=ros_context)
    got = {"cmd": [], "estop": []}
    probe.create_subscription(JointTrajectory, "/teleop/command", got["cmd"].append, 10)
    common.subscribe_estop(probe, got["estop"].append)
    js = probe.create_publisher(JointState, "/joint_states", common.STATE_QOS)
    keys = probe.create_publisher(String, "/teleop/keys", common.EVENT_QOS)
    spin = Spinner(ros_context, node, probe)
    home = robot_spec("so101").home
    try:
        assert wait(lambda: js.get_subscription_count() > 0 and keys.get_subscription_count() > 0)
        js.publish(convert.joint_state_to_msg(NAMES, home, time.time()))
        assert wait(lambda: node.keyboard.target is not None)
        keys.publish(String(data=" "))
        assert wait(lambda: len(got["cmd"]) >= 3), "teleop never engaged"
        topic_pub(True)
        assert wait(lambda: node.estopped, 10), "teleop ignored a plain `ros2 topic pub` e-stop"
        time.sleep(0.3)  # a command in flight may still land
        n = len(got["cmd"])
        keys.publish(String(data=" "))  # taking over is refused while latched
        time.sleep(0.6)
        assert len(got["cmd"]) == n and not node.keyboard.engaged
        topic_pub(False)
        assert wait(lambda: not node.estopped, 10)
        time.sleep(0.3)
        assert len(got["cmd"]) == n  # a release does not hand the arm back to teleop by itself
        # the 'e' key latches the e-stop for every node: the latched message reaches the probe (once)
        seen = len(got["estop"])
        keys.publish(String(data="e"))
        assert wait(lambda: node.estopped and any(m.data for m in got["estop"][seen:]), 10)
        time.sleep(0.3)
        assert [m.data for m in got["estop"][seen:]] == [True]
    finally:
        spin.close()
        node.close()
        node.destroy_node()
        probe.destroy_node()


def test_the_policy_node_and_episode_manager_latch_on_a_plain_estop(ros_context):
    from vla_robot.nodes.episode_manager_node import EpisodeManagerNode
    from vla_robot.nodes.policy_node import PolicyNode

    P = rclpy.parameter.Parameter
    policy = PolicyNode("policy_node", context=ros_context,
                        parameter_overrides=[P("policy_server", value="tcp://127.0.0.1:9")])  # no server needed
    manager = EpisodeManagerNode("episode_manager_node", context=ros_context, use_terminal=False,
                                 parameter_overrides=[P("mode", value="evaluate"), P("task", value="reach")])
    spin = Spinner(ros_context, policy, manager)
    try:
        out = topic_pub(True, subscribers=2)
        assert "matched 2" in out, out
        assert wait(lambda: policy.controller.watchdog.estopped and manager.core.estopped is not None, 10)
        assert not manager.core.start()[0]  # no episode starts while it is latched
        topic_pub(False, subscribers=2)
        assert wait(lambda: not policy.controller.watchdog.estopped and manager.core.estopped is None, 10)
    finally:
        spin.close()
        for n in (policy, manager):
            getattr(n, "close", lambda: None)()
            n.destroy_node()
