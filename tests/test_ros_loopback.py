"""The ROS 2 set-up works: real rclpy publishers and subscribers exchange our message types."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

pytestmark = pytest.mark.ros


def _exchange(ctx, msg_type, topic, make_msg, n=3, timeout=10.0):
    pub_node = rclpy.create_node("loopback_pub", context=ctx)
    sub_node = rclpy.create_node("loopback_sub", context=ctx)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got = []
    sub_node.create_subscription(msg_type, topic, got.append, qos)
    pub = pub_node.create_publisher(msg_type, topic, qos)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(pub_node)
    ex.add_node(sub_node)
    deadline = time.monotonic() + timeout
    # wait for discovery so nothing published is lost
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    sent = [make_msg(i) for i in range(n)]
    for m in sent:
        pub.publish(m)
    while len(got) < n and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    ex.shutdown()
    pub_node.destroy_node()
    sub_node.destroy_node()
    return sent, got


def test_image_round_trip(ros_context):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]

    def make(i):
        m = Image()
        m.header.frame_id = "front"
        m.header.stamp.sec, m.header.stamp.nanosec = 100 + i, 5
        m.height, m.width = frames[i].shape[:2]
        m.encoding, m.step = "rgb8", frames[i].shape[1] * 3
        m.data = frames[i].tobytes()
        return m

    sent, got = _exchange(ros_context, Image, "/test/image_raw", make)
    assert len(got) == 3
    for i, m in enumerate(got):
        img = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
        np.testing.assert_array_equal(img, frames[i])
        assert m.header.stamp.sec == 100 + i and m.encoding == "rgb8"


def test_joint_trajectory_round_trip(ros_context):
    def make(i):
        m = JointTrajectory()
        m.joint_names = ["shoulder_pan", "gripper"]
        for k in range(4):
            p = JointTrajectoryPoint()
            p.positions = [0.1 * k + i, -0.2 * k]
            p.velocities = [0.1, -0.2] if k < 3 else [0.0, 0.0]
            p.time_from_start.nanosec = int(33_333_333 * (k + 1))
            m.points.append(p)
        return m

    sent, got = _exchange(ros_context, JointTrajectory, "/test/joint_trajectory", make)
    assert len(got) == 3
    for i, m in enumerate(got):
        assert list(m.joint_names) == ["shoulder_pan", "gripper"]
        assert len(m.points) == 4
        assert m.points[2].positions[0] == pytest.approx(0.2 + i)
        assert list(m.points[-1].velocities) == [0.0, 0.0]
