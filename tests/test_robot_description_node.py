"""policy_node with a robot description (issue 18): joint_states in a Franka FR3's names, in any
order, make it tick, and its safety filter enforces the description's limits."""
import numpy as np
import pytest

pytest.importorskip("rclpy")
import rclpy  # noqa: E402

from vla_robot.config import config_dir  # noqa: E402
from vla_robot.nodes import convert  # noqa: E402
from vla_robot.nodes.policy_node import PolicyNode  # noqa: E402
from vla_robot.robot import load_description  # noqa: E402

FR3 = config_dir() / "robots" / "fr3.yaml"

pytestmark = pytest.mark.ros


class HoldClient:
    """Stands in for the policy server: a chunk that stays where the arm is."""

    def metadata(self, timeout_s=None):
        return {"model": "fake", "version": 0, "chunk_size": 4, "cameras": ["front"], "action_dim": 8}

    def infer(self, observations, timeout_s=None, **options):
        (observation,) = observations
        self.state = np.asarray(observation["state"], dtype=np.float64)
        return [{"actions": np.tile(self.state, (4, 1)).astype(np.float32), "version": 0, "chunk_id": 1}]

    def close(self):
        pass


def test_policy_node_ticks_on_fr3_joint_states(ros_context):
    fr3 = load_description(FR3)
    client = HoldClient()
    node = PolicyNode("policy_node", context=ros_context, client=client, parameter_overrides=[
        rclpy.parameter.Parameter("robot", value="panda"),
        rclpy.parameter.Parameter("robot_description", value=str(FR3)),
        rclpy.parameter.Parameter("lockstep", value=True),
        rclpy.parameter.Parameter("cameras", value=["front"]),
    ])
    sent = []
    node.command_pub.publish = sent.append
    try:
        limits = node.controller.limits
        np.testing.assert_array_equal(limits.upper, fr3.limits().upper)  # the FR3's limits, not the Panda twin's
        assert limits.names == tuple(fr3.names())
        node._on_episode_event(convert.event_to_msg({"type": "start", "episode": 0, "stamp": 1.0}))
        q_policy = np.array([0.1, -0.7, 0.0, -2.0, 0.0, 1.6, 0.7, 0.4])
        names = fr3.hardware_names() + ["fr3_finger_joint2"]
        values = np.append(fr3.to_hardware(q_policy), 0.02)
        order = [4, 8, 0, 7, 2, 6, 1, 5, 3]
        node._on_image("front", convert.image_to_msg(np.zeros((16, 16, 3), np.uint8), 1.0))
        node._on_joint_state(convert.joint_state_to_msg([names[i] for i in order], values[order], 1.0))
        np.testing.assert_allclose(node._q[0], q_policy)
        assert node.ticks == 1 and len(sent) == 1  # it ticked and commanded the arm
        np.testing.assert_allclose(client.state, q_policy, atol=1e-6)  # the policy saw its own units
    finally:
        node.destroy_node()


def test_recorder_records_fr3_joint_states_in_the_policys_names_and_units(ros_context, tmp_path):
    from vla_robot.nodes.recorder_node import RecorderNode

    fr3 = load_description(FR3)
    node = RecorderNode("recorder_node", context=ros_context, parameter_overrides=[
        rclpy.parameter.Parameter("root", value=str(tmp_path / "dataset")),
        rclpy.parameter.Parameter("cameras", value=["front"]),
        rclpy.parameter.Parameter("robot_description", value="robots/fr3.yaml"),
    ])
    try:
        q_policy = np.array([0.1, -0.7, 0.0, -2.0, 0.0, 1.6, 0.7, 0.8])
        names = fr3.hardware_names()[::-1]
        node._on_joint_state(convert.joint_state_to_msg(names, fr3.to_hardware(q_policy)[::-1], 1.0))
        assert node.session.joint_names == fr3.names()  # the dataset's state columns are the policy's
        np.testing.assert_allclose(node.session._q, q_policy, atol=1e-6)
        node._on_joint_state(convert.joint_state_to_msg(names[1:], np.zeros(7), 2.0))  # missing a joint: dropped
        np.testing.assert_allclose(node.session._q, q_policy, atol=1e-6)
    finally:
        node.destroy_node()


def test_a_bad_description_stops_policy_node_naming_the_key(tmp_path):
    """As launched: `python -m vla_robot.nodes.policy_node --ros-args --params-file` exits with status 2
    (bad parameters) and the description's error, before it talks to any server."""
    import subprocess
    import sys

    import yaml

    bad = yaml.safe_load(FR3.read_text())
    bad["joints"][3]["hardware_name"] = "fr3_joint3"  # two joints on one hardware joint
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"policy_node": {"ros__parameters": {
        "robot": "panda", "robot_description": str(tmp_path / "bad.yaml")}}}))
    r = subprocess.run([sys.executable, "-m", "vla_robot.nodes.policy_node", "--ros-args", "--params-file",
                        str(params)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "not starting" in r.stderr
    assert "'joints[3].hardware_name' 'fr3_joint3' is also 'joints[2].hardware_name'" in r.stderr, r.stderr[-2000:]


def test_twin_mirror_follows_fr3_joint_states(ros_context):
    pytest.importorskip("mujoco")
    from vla_robot.nodes.twin_node import TwinNode

    fr3 = load_description(FR3)
    P = rclpy.parameter.Parameter
    twin = TwinNode("twin_node", context=ros_context, parameter_overrides=[
        P("mode", value="mirror"), P("robot", value="panda"), P("robot_description", value="robots/fr3.yaml"),
        P("image_size", value=[32, 32]), P("cameras", value=["front"])])
    try:
        q_policy = np.array([0.1, -0.5, 0.0, -2.0, 0.0, 1.6, 0.7, 0.4])
        names, values = fr3.hardware_names()[::-1], fr3.to_hardware(q_policy)[::-1]
        twin._on_real_joint_state(convert.joint_state_to_msg(names, values, 1.0, velocity=np.zeros(8)))
        assert twin.steps_total == 1 and twin.mirror.updates == 1
        np.testing.assert_allclose(twin.mirror._q, q_policy)  # in the twin's units: the gripper 0.4, not 0.02 m
    finally:
        twin.close()
        twin.destroy_node()
