"""Message <-> array conversion (vla_robot/nodes/convert.py): round trips, over real DDS too, and bad input."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String, UInt8MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_robot.nodes import convert  # noqa: E402

pytestmark = pytest.mark.ros
NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def test_stamp_round_trip_and_bad_values():
    for t in (0.0, 1.5, 1234567.000000001, 99.999999999):
        assert convert.from_stamp(convert.to_stamp(t)) == pytest.approx(t, abs=1e-9)
    st = convert.to_stamp(2.9999999999)
    assert st.nanosec < 1_000_000_000
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="stamp"):
            convert.to_stamp(bad)


def test_image_round_trip_and_encodings():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    back, stamp = convert.msg_to_image(convert.image_to_msg(img, 12.25, "front"))
    np.testing.assert_array_equal(back, img)
    assert stamp == 12.25
    # a bgr8 image with row padding comes back as RGB without the padding
    m = Image(height=5, width=7, encoding="bgr8", step=7 * 3 + 3)
    padded = np.zeros((5, 24), np.uint8)
    padded[:, :21] = img[:, :, ::-1].reshape(5, 21)
    m.data = padded.tobytes()
    np.testing.assert_array_equal(convert.msg_to_image(m)[0], img)
    mono = Image(height=2, width=2, encoding="mono8", step=2, data=bytes([1, 2, 3, 4]))
    assert convert.msg_to_image(mono)[0].shape == (2, 2, 3)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((4, 4), np.uint8), "H×W×3"),
        (np.zeros((4, 4, 3), np.float32), "uint8"),
    ],
)
def test_image_to_msg_rejects_bad_arrays(bad, match):
    with pytest.raises(ValueError, match=match):
        convert.image_to_msg(bad, 0.0)


def test_msg_to_image_rejects_bad_messages():
    with pytest.raises(ValueError, match="encoding '16UC1' is not supported"):
        convert.msg_to_image(Image(height=1, width=1, encoding="16UC1", step=2, data=bytes(2)))
    with pytest.raises(ValueError, match="expected step×height"):
        convert.msg_to_image(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(6)))


def test_joint_state_reorders_by_name_and_rejects_missing():
    q = np.arange(6, dtype=float)
    msg = convert.joint_state_to_msg(NAMES, q, 3.0, velocity=q * 2)
    msg.name = list(reversed(NAMES))
    msg.position = list(reversed(msg.position))
    msg.velocity = list(reversed(msg.velocity))
    pos, vel, stamp = convert.msg_to_joint_state(msg, NAMES)
    np.testing.assert_array_equal(pos, q)
    np.testing.assert_array_equal(vel, q * 2)
    assert stamp == 3.0
    with pytest.raises(ValueError, match=r"lacks joints \['extra'\]"):
        convert.msg_to_joint_state(msg, NAMES + ["extra"])
    with pytest.raises(ValueError, match="6 numbers"):
        convert.joint_state_to_msg(NAMES, [1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="NaN"):
        convert.joint_state_to_msg(NAMES, [np.nan] * 6, 0.0)


def test_chunk_to_msg_fills_velocities_and_ends_at_rest():
    chunk = np.cumsum(np.full((4, 6), 0.1), axis=0)
    msg = convert.chunk_to_msg(chunk, 0.05, NAMES, 7.5, frame_id="v3", start_q=np.zeros(6))
    traj = convert.msg_to_trajectory(msg)
    np.testing.assert_allclose(traj["positions"], chunk)
    np.testing.assert_allclose(traj["velocities"][:-1], 2.0)  # 0.1 per 0.05 s
    assert np.all(traj["velocities"][-1] == 0.0)
    np.testing.assert_allclose(traj["times"], [0.05, 0.1, 0.15, 0.2])
    assert traj["stamp"] == 7.5 and traj["frame_id"] == "v3"
    with pytest.raises(ValueError, match="5 joints per action"):
        convert.chunk_to_msg(np.zeros((4, 5)), 0.05, NAMES, 0.0)
    with pytest.raises(ValueError, match="dt must be"):
        convert.chunk_to_msg(chunk, 0.0, NAMES, 0.0)


def test_command_carries_source_and_stamp():
    msg = convert.command_to_msg(np.ones(6), NAMES, 4.0, 1 / 30, source="teleop")
    q, stamp, source = convert.msg_to_command(msg, NAMES)
    np.testing.assert_array_equal(q, np.ones(6))
    assert (stamp, source) == (4.0, "teleop")
    assert list(msg.points[-1].velocities) == [0.0] * 6
    with pytest.raises(ValueError, match="source must be one of"):
        convert.command_to_msg(np.ones(6), NAMES, 0.0, 0.1, source="human")
    with pytest.raises(ValueError, match="no points"):
        convert.msg_to_trajectory(JointTrajectory(joint_names=NAMES))


def test_records_and_events_round_trip():
    from vla_robot.data import records

    obs = {"images": {"front": np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)},
           "state": np.array([0.1, 0.2], np.float32), "instruction": "wave"}
    reply = {"actions": np.ones((2, 6), np.float32), "tokens": np.arange(12, dtype=np.int64) * 20,
             "logprobs": -np.linspace(0.1, 2.0, 12).astype(np.float32), "version": 2}
    chunk = records.make_chunk(reply, obs, {"mode": "sample", "return_tokens": True}, 5, 1.5, {"model": "tiny", "version": 2})
    back = convert.msg_to_record(convert.record_to_msg(chunk))
    assert (back["chunk_id"], back["version"], back["obs_stamp"]) == (5, 2, 1.5)
    assert back["options"] == {"mode": "sample", "temperature": 1.6, "seed": None}  # the server's default, made explicit
    np.testing.assert_array_equal(back["tokens"], reply["tokens"])
    np.testing.assert_array_equal(back["logprobs"], reply["logprobs"])
    np.testing.assert_array_equal(back["observation"]["images"]["front"], obs["images"]["front"])
    assert back["served_by"] == {"model": "tiny"}
    msg = convert.record_to_msg({**chunk, "logprobs": chunk["logprobs"][:3]})
    with pytest.raises(ValueError, match="'logprobs' must be float32 of shape"):
        convert.msg_to_record(msg)
    with pytest.raises(ValueError, match="not readable"):
        convert.msg_to_record(UInt8MultiArray(data=b"\x01\x02"))
    ev = convert.msg_to_event(convert.event_to_msg({"type": "start", "episode": np.int64(3), "q": np.zeros(2)}))
    assert ev == {"type": "start", "episode": 3, "q": [0.0, 0.0]}
    with pytest.raises(ValueError, match="not JSON"):
        convert.msg_to_event(String(data="{nope"))
    with pytest.raises(ValueError, match="'type'"):
        convert.event_to_msg({"episode": 1})


def test_messages_cross_real_dds(ros_context):
    """Converted messages survive a real publisher -> subscriber hop unchanged."""
    node = rclpy.create_node("convert_test", context=ros_context)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got = {"img": [], "js": [], "traj": []}
    node.create_subscription(Image, "/t/image", got["img"].append, qos)
    node.create_subscription(JointState, "/t/js", got["js"].append, qos)
    node.create_subscription(JointTrajectory, "/t/traj", got["traj"].append, qos)
    pubs = {k: node.create_publisher(t, f"/t/{n}", qos) for k, t, n in
            (("img", Image, "image"), ("js", JointState, "js"), ("traj", JointTrajectory, "traj"))}
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    chunk = np.random.default_rng(1).normal(size=(8, 6))
    deadline = time.monotonic() + 10
    while any(p.get_subscription_count() == 0 for p in pubs.values()) and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.02)
    pubs["img"].publish(convert.image_to_msg(img, 1.5, "front"))
    pubs["js"].publish(convert.joint_state_to_msg(NAMES, chunk[0], 2.5, velocity=chunk[1]))
    pubs["traj"].publish(convert.chunk_to_msg(chunk, 1 / 30, NAMES, 3.5))
    while not all(got.values()) and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.02)
    ex.shutdown()
    node.destroy_node()
    back, stamp = convert.msg_to_image(got["img"][0])
    np.testing.assert_array_equal(back, img)
    assert stamp == 1.5
    q, dq, stamp = convert.msg_to_joint_state(got["js"][0], NAMES)
    np.testing.assert_allclose(q, chunk[0])
    np.testing.assert_allclose(dq, chunk[1])
    np.testing.assert_allclose(convert.msg_to_trajectory(got["traj"][0], NAMES)["positions"], chunk)


def test_policy_command_names_its_chunk_and_action():
    msg = convert.command_to_msg(np.ones(6), NAMES, 4.0, 1 / 30, source="policy", chunk=(12, 3))
    q, stamp, source = convert.msg_to_command(msg, NAMES)
    assert source == "policy" and msg.header.frame_id == "policy/c12/s3"
    assert convert.command_chunk(msg.header.frame_id) == (12, 3)
    for untagged in ("policy", "hold", "teleop", "policy/cx/s1", "v1/c3", "policy/c1/t2"):
        assert convert.command_chunk(untagged) is None
