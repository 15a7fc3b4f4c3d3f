"""camera_node, arm_node and teleop_node with real rclpy over the twin's driver backends, parameters
from real ROS parameter files, diagnostics; and bad parameters stopping a node at start, key named."""
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_robot.bringup import NodeSpec  # noqa: E402
from vla_robot.config import ConfigError  # noqa: E402
from vla_robot.nodes import common, convert  # noqa: E402
from vla_robot.nodes.arm_node import ArmNode  # noqa: E402
from vla_robot.nodes.camera_node import CameraNode  # noqa: E402
from vla_robot.nodes.episode_manager_node import EpisodeManagerNode  # noqa: E402
from vla_robot.nodes.runner import node_kwargs  # noqa: E402
from vla_robot.nodes.teleop_node import KeyboardTeleop, TeleopNode  # noqa: E402
from vla_robot.twin.robots import robot_spec  # noqa: E402

pytestmark = pytest.mark.ros
TWIN = "{robot: so101, task: reach, image_size: [32, 40], cameras: [front, wrist]}"


def params_file(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return str(p)


def spin_until(ex, cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    return cond()


def test_camera_and_arm_nodes_over_twin_drivers(ros_context, tmp_path):
    f = params_file(tmp_path, f"""
camera_node:
  ros__parameters:
    fps: 20.0
    devices:
      front: {{backend: twin, session: devtest, camera: front, twin: {TWIN}}}
arm_node:
  ros__parameters:
    backend: twin
    robot: so101
    state_hz: 20.0
    options: {{session: devtest, realtime: true, twin: {TWIN}}}
""")
    cam = CameraNode("camera_node", context=ros_context, **node_kwargs(NodeSpec("camera_node", "camera_node", (f,))))
    arm = ArmNode("arm_node", context=ros_context, **node_kwargs(NodeSpec("arm_node", "arm_node", (f,))))
    probe = rclpy.create_node("devprobe", context=ros_context)
    got = {"img": [], "info": [], "js": [], "diag": []}
    probe.create_subscription(Image, "/cameras/front/image_raw", got["img"].append, qos_profile_sensor_data)
    probe.create_subscription(CameraInfo, "/cameras/front/camera_info", got["info"].append, common.LATCHED_QOS)
    probe.create_subscription(JointState, "/joint_states", got["js"].append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 10)
    cmd_pub = probe.create_publisher(JointTrajectory, "/arm/command", common.COMMAND_QOS)
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    for n in (cam, arm, probe):
        ex.add_node(n)
    try:
        assert spin_until(ex, lambda: len(got["img"]) >= 3 and got["info"] and len(got["js"]) >= 3)
        img, stamp = convert.msg_to_image(got["img"][-1])
        assert img.shape == (32, 40, 3) and abs(stamp - time.time()) < 5.0  # device time mapped to ROS time
        info = got["info"][0]
        assert (info.width, info.height) == (40, 32) and info.k[0] > 0 and info.k[8] == 1.0
        q0, _, _ = convert.msg_to_joint_state(got["js"][-1], robot_spec("so101").joint_names)
        # a command moves the (simulated) arm towards the target
        target = q0.copy()
        target[0] += 0.3
        spin_until(ex, lambda: cmd_pub.get_subscription_count() > 0)
        for _ in range(30):
            cmd_pub.publish(convert.command_to_msg(target, robot_spec("so101").joint_names, time.time(), 0.05))
            ex.spin_once(timeout_sec=0.05)
        assert spin_until(ex, lambda: abs(convert.msg_to_joint_state(got["js"][-1])[0][0] - target[0]) < 0.1, 10)
        # keep-last QoS may drop most of a burst while one thread spins every node; the newest arrives
        assert arm.received["policy"] >= 1 and arm.commands >= 1
        # between episodes (reset event) the arm node brings the arm home slowly by itself
        events = probe.create_publisher(String, "/episode/event", common.EPISODE_EVENT_QOS)
        assert spin_until(ex, lambda: events.get_subscription_count() > 0)
        events.publish(convert.event_to_msg({"type": "reset", "episode": 0}))
        home = robot_spec("so101").home
        assert spin_until(ex, lambda: np.abs(convert.msg_to_joint_state(got["js"][-1])[0] - home).max() < 0.05, 15)
        assert spin_until(ex, lambda: any(s.name == "/camera_node" for d in got["diag"] for s in d.status), 5)
        st = next(s for d in got["diag"] for s in d.status if s.name == "/camera_node")
        values = {kv.key: kv.value for kv in st.values}
        assert float(values["camera front.rate_hz"]) > 1.0
    finally:
        ex.shutdown()
        for n in (cam, arm):
            n.close()
            n.destroy_node()
        probe.destroy_node()


def test_keyboard_teleop_core():
    spec = robot_spec("so101")
    kb = KeyboardTeleop(spec, step=0.1)
    assert kb.key(" ") == "no joint state yet: cannot take over"
    kb.sync(spec.home)
    kb.key("2")
    kb.key("w")
    kb.key("w")
    np.testing.assert_allclose(kb.target[1], spec.home[1] + 0.2)
    kb.sync(np.zeros(6))  # not engaged: follows the arm
    assert kb.target[1] == 0.0
    assert kb.key(" ") == "operator drives"
    kb.sync(spec.home)  # engaged: the operator's target stays
    assert kb.target[1] == 0.0
    for _ in range(100):
        kb.key("s")
    assert kb.target[1] == spec.lower[1]  # clipped at the joint limit
    g = spec.gripper_index
    kb.key("g")
    first = kb.target[g]
    kb.key("g")
    assert {first, kb.target[g]} == {spec.gripper_open, spec.gripper_closed}
    assert kb.key("9") == "no joint 9: this arm has 6"
    assert kb.key("x") == "unknown key 'x'"


def test_teleop_node_takes_over_via_keys_topic(ros_context):
    node = TeleopNode("teleop_node", context=ros_context, parameter_overrides=[
        rclpy.parameter.Parameter("rate_hz", value=20.0), rclpy.parameter.Parameter("step", value=0.2)])
    probe = rclpy.create_node("teleprobe", context=ros_context)
    got = {"cmd": [], "iv": []}
    probe.create_subscription(JointTrajectory, "/teleop/command", got["cmd"].append, 10)
    probe.create_subscription(Bool, "/teleop/intervention", got["iv"].append, common.LATCHED_QOS)
    js = probe.create_publisher(JointState, "/joint_states", common.STATE_QOS)
    keys = probe.create_publisher(String, "/teleop/keys", common.EVENT_QOS)
    ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
    ex.add_node(node)
    ex.add_node(probe)
    names = robot_spec("so101").joint_names
    home = robot_spec("so101").home
    try:
        assert spin_until(ex, lambda: js.get_subscription_count() > 0 and keys.get_subscription_count() > 0)
        assert spin_until(ex, lambda: got["iv"] and got["iv"][-1].data is False)
        for _ in range(3):
            js.publish(convert.joint_state_to_msg(names, home, time.time()))
            ex.spin_once(timeout_sec=0.05)
        assert got["cmd"] == []  # not engaged: nothing commanded
        keys.publish(String(data=" 1w"))
        # the timer runs beside the key callback: wait for the command that has the 'w' in it
        assert spin_until(ex, lambda: got["iv"][-1].data is True and len(got["cmd"]) >= 2
                          and abs(convert.msg_to_command(got["cmd"][-1], names)[0][0] - home[0] - 0.2) < 1e-9)
        q, _, source = convert.msg_to_command(got["cmd"][-1], names)
        assert source == "teleop"
        np.testing.assert_allclose(q[1:], home[1:])  # only joint 1 moved
    finally:
        ex.shutdown()
        node.close()
        node.destroy_node()
        probe.destroy_node()


def test_arm_node_homing_is_not_undone_by_commands_sent_before_the_reset(ros_context, tmp_path):
    """A command queued before the reset event and delivered late must not stop the homing; one sent
    after it (an operator taking over) does."""
    f = params_file(tmp_path, f"""
arm_node:
  ros__parameters:
    backend: twin
    robot: so101
    options: {{session: homing, realtime: true, twin: {TWIN}}}
""")
    arm = ArmNode("arm_node", context=ros_context, **node_kwargs(NodeSpec("arm_node", "arm_node", (f,))))
    names = robot_spec("so101").joint_names
    try:
        q = arm.arm.read()[0]
        away = q.copy()
        away[0] += 0.5
        sent_before = time.time()
        arm._on_command(convert.command_to_msg(away, names, sent_before, 0.05))
        time.sleep(0.01)
        arm._on_episode_event(convert.event_to_msg({"type": "reset", "episode": 0}))
        assert arm._homing
        arm._on_command(convert.command_to_msg(away, names, sent_before, 0.05))  # late delivery of an old one
        assert arm._homing and arm.received["stale"] == 1
        arm._on_command(convert.command_to_msg(away, names, time.time(), 0.05, source="teleop"))
        assert not arm._homing and arm.received["teleop"] == 1
    finally:
        arm.close()
        arm.destroy_node()


@pytest.mark.parametrize(
    "text,match",
    [
        ("episode_manager_node:\n  ros__parameters:\n    mode: train\n", "'mode' is 'train'"),
        ("episode_manager_node:\n  ros__parameters:\n    max_duration: 3.0\n", "unknown key 'max_duration'"),
        ("episode_manager_node:\n  ros__parameters:\n    max_duration_s: -2.0\n", "max_duration_s must be"),
    ],
)
def test_bad_parameters_stop_the_node_naming_the_key(ros_context, tmp_path, text, match):
    f = params_file(tmp_path, text)
    spec = NodeSpec("episode_manager_node", "episode_manager_node", (f,))
    with pytest.raises(ConfigError, match=match):
        EpisodeManagerNode("episode_manager_node", context=ros_context, **node_kwargs(spec))


def test_bad_camera_device_names_the_camera(ros_context, tmp_path):
    f = params_file(tmp_path, "camera_node:\n  ros__parameters:\n    devices:\n      front: {backend: twin, colour: red}\n")
    with pytest.raises(ConfigError, match=r"devices.front: .*unknown key 'colour'"):
        CameraNode("camera_node", context=ros_context, **node_kwargs(NodeSpec("camera_node", "camera_node", (f,))))


def test_node_main_exits_with_status_2_on_bad_parameters(tmp_path):
    f = params_file(tmp_path, "episode_manager_node:\n  ros__parameters:\n    label_source: sometimes\n")
    r = subprocess.run(
        [sys.executable, "-m", "vla_robot.nodes.episode_manager_node", "--ros-args", "--params-file", f],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "label_source" in r.stderr and "not starting" in r.stderr


def test_twin_node_mirrors_real_joint_states(ros_context):
    from std_msgs.msg import Float64MultiArray

    from vla_robot.nodes.twin_node import TwinNode

    P = rclpy.parameter.Parameter
    twin = TwinNode("twin_node", context=ros_context, parameter_overrides=[
        P("mode", value="mirror"), P("image_size", value=[32, 32]), P("cameras", value=["front"])])
    probe = rclpy.create_node("mirrorprobe", context=ros_context)
    got = {"img": [], "div": []}
    probe.create_subscription(Image, "/twin/cameras/front/image_raw", got["img"].append, qos_profile_sensor_data)
    probe.create_subscription(Float64MultiArray, "/twin/divergence", got["div"].append, 10)
    js = probe.create_publisher(JointState, "/joint_states", common.STATE_QOS)
    cmd = probe.create_publisher(JointTrajectory, "/arm/command", common.COMMAND_QOS)
    ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
    ex.add_node(twin)
    ex.add_node(probe)
    spec = robot_spec("so101")
    names = spec.joint_names
    try:
        assert spin_until(ex, lambda: js.get_subscription_count() > 0 and cmd.get_subscription_count() > 0
                          and twin.div_pub.get_subscription_count() > 0)
        target = spec.home.copy()
        cmd.publish(convert.command_to_msg(target, names, time.time(), 0.1))
        assert spin_until(ex, lambda: twin.mon_cmd.count > 0, 10)
        # the arm is measured at home, then where no command took it
        for q in (spec.home, spec.home + np.array([0.6, 0, 0, 0, 0, 0])):
            js.publish(convert.joint_state_to_msg(names, q, time.time()))
            n = len(got["img"])
            assert spin_until(ex, lambda: len(got["img"]) > n, 10)
        assert spin_until(ex, lambda: len(got["div"]) >= 2, 5)
        a, _ = convert.msg_to_image(got["img"][0])
        b, _ = convert.msg_to_image(got["img"][-1])
        assert a.shape == (32, 32, 3) and np.abs(a.astype(int) - b.astype(int)).mean() > 0.5  # the view moved
        # the divergence is the twin.mirror.Mirror's: its shadow, commanded to stay at home, stays there
        # (shadow - measured), up to a servo's sag under gravity
        np.testing.assert_allclose(got["div"][-1].data, target - (spec.home + [0.6, 0, 0, 0, 0, 0]), atol=0.01)
    finally:
        ex.shutdown()
        twin.close()
        twin.destroy_node()
        probe.destroy_node()
