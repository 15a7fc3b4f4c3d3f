"""The real-hardware backends, each faked only at the lowest level: OpenCV reads a real video file,
RealSense a pyrealsense2 software_device, lerobot a simulated servo bus, ros2_control a controller
node on real DDS."""
import contextlib
import threading
import time

import numpy as np
import pytest

from vla_robot.config import ConfigError
from vla_robot.drivers import DriverError, make_arm, make_camera
from vla_robot.twin.robots import robot_spec


# --- OpenCV --------------------------------------------------------------------------------------
@pytest.fixture
def video(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = str(tmp_path / "cam.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    assert w.isOpened()
    for i in range(6):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 250  # red in BGR
        frame[:, :, 1] = 40 * i
        w.write(frame)
    w.release()
    return path


def test_opencv_camera_reads_newest_rgb_frames(video):
    cam = make_camera("opencv", index=video, loop=True, timeout_s=2.0)
    with cam:
        stamps = []
        greens = []
        for _ in range(8):
            img, stamp = cam.read()
            assert img.shape == (48, 64, 3) and img.dtype == np.uint8
            assert abs(int(img[..., 0].mean()) - 250) < 12 and img[..., 2].mean() < 12  # RGB order
            stamps.append(stamp)
            greens.append(int(img[..., 1].mean()))
        assert all(b > a for a, b in zip(stamps, stamps[1:]))  # each read is a newer frame
        assert abs(stamps[-1] - time.monotonic()) < 2.0
        assert len(set(np.round(np.array(greens) / 40))) >= 3  # frames advance through the file
    assert not cam.is_connected


def test_opencv_camera_errors(video, tmp_path):
    with pytest.raises(DriverError, match="cannot open"):
        make_camera("opencv", index=str(tmp_path / "missing.avi")).connect()
    with pytest.raises(ConfigError, match="width and height"):
        make_camera("opencv", width=640)
    cam = make_camera("opencv", index=video, loop=False, timeout_s=0.5)
    with cam, pytest.raises(DriverError, match="no new frame within 0.5 s"):
        for _ in range(20):
            cam.read()


# --- RealSense -----------------------------------------------------------------------------------
class SoftwareRealSense:
    """A pyrealsense2 software_device with one colour stream, fed by a thread."""

    def __init__(self, rs, serial="123456789", w=64, h=48, fps=30):
        self.rs = rs
        self.dev = rs.software_device()
        self.sensor = self.dev.add_sensor("RGB Camera")
        intr = rs.intrinsics()
        intr.width, intr.height, intr.ppx, intr.ppy, intr.fx, intr.fy = w, h, w / 2, h / 2, 55.0, 56.0
        intr.model, intr.coeffs = rs.distortion.brown_conrady, [0.1, -0.05, 0.0, 0.0, 0.01]
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp = rs.stream.color, 0, 0, w, h, fps, 3
        vs.fmt, vs.intrinsics = rs.format.rgb8, intr
        self.profile = self.sensor.add_video_stream(vs).as_video_stream_profile()
        self.dev.register_info(rs.camera_info.serial_number, serial)
        self.w, self.h, self.fps = w, h, fps
        self._stop = False
        self._keep = []
        self.thread = threading.Thread(target=self._feed, daemon=True)

    def _feed(self):
        rs, i = self.rs, 0
        while not self._stop:
            img = np.zeros((self.h, self.w, 3), np.uint8)
            img[..., 0] = 200
            img[..., 1] = i % 250
            f = rs.software_video_frame()
            f.pixels, f.bpp, f.stride = img, 3, self.w * 3
            f.timestamp, f.domain, f.frame_number = time.time() * 1000, rs.timestamp_domain.system_time, i
            f.profile = self.profile
            self._keep = (self._keep + [img])[-8:]
            self.sensor.on_video_frame(f)
            i += 1
            time.sleep(1 / self.fps)


@pytest.fixture
def realsense(monkeypatch):
    rs = pytest.importorskip("pyrealsense2")
    import vla_robot.drivers.realsense as rsdrv

    fake = SoftwareRealSense(rs)
    monkeypatch.setattr(rsdrv, "_devices", lambda: [fake.dev])
    fake.thread.start()
    yield fake
    fake._stop = True
    fake.thread.join(timeout=2)


def test_realsense_reads_frames_and_intrinsics(realsense):
    cam = make_camera("realsense", serial="123456789", width=64, height=48, fps=30)
    with cam:
        img, stamp = cam.read()
        img2, stamp2 = cam.read()
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img[..., 0].mean() == 200
        assert stamp2 > stamp and abs(stamp2 - time.monotonic()) < 1.0
        info = cam.camera_info()
        assert (info.width, info.height) == (64, 48)
        assert (info.fx, info.fy, info.cx, info.cy) == pytest.approx((55.0, 56.0, 32.0, 24.0))
        np.testing.assert_allclose(info.D, [0.1, -0.05, 0.0, 0.0, 0.01], atol=1e-6)


def test_realsense_errors_name_what_exists(realsense):
    with pytest.raises(DriverError, match="no camera with serial 42; connected: 123456789"):
        make_camera("realsense", serial="42", width=64, height=48).connect()
    with pytest.raises(DriverError, match=r"no colour stream 640x480@30 rgb8; it offers: 64x48@30"):
        make_camera("realsense", width=640, height=480).connect()
    with pytest.raises(ConfigError, match="fps"):
        make_camera("realsense", fps=0)


# --- lerobot, over a simulated Feetech bus ----------------------------------------------------------
class SimulatedBus:
    """Stands in for lerobot's FeetechMotorsBus: servos that move towards their goal on every read."""

    instances: list = []

    def __init__(self, port, motors, calibration=None, **_):
        self.port, self.motors, self.calibration = port, motors, calibration
        self.present = {m: 0.0 for m in motors}
        self.present["gripper"] = 50.0
        self.goal = dict(self.present)
        self.is_connected = False
        self.is_calibrated = True
        self.writes = []
        SimulatedBus.instances.append(self)

    def connect(self, handshake=True):
        if "missing" in self.port:
            raise ConnectionError(f"could not open port {self.port}")
        self.is_connected = True

    def disconnect(self, disable_torque=True):
        self.is_connected = False

    @contextlib.contextmanager
    def torque_disabled(self, motors=None):
        yield

    def configure_motors(self, *a, **k):
        pass

    def disable_torque(self, *a, **k):
        pass

    def enable_torque(self, *a, **k):
        pass

    def write(self, name, motor, value, **_):
        self.writes.append((name, motor, value))

    def sync_read(self, name, motors=None):
        assert name == "Present_Position"
        for m in self.present:  # first-order servo response
            self.present[m] += 0.5 * (self.goal[m] - self.present[m])
        return dict(self.present)

    def sync_write(self, name, values):
        assert name == "Goal_Position"
        self.goal.update(values)


@pytest.fixture
def sim_bus(monkeypatch, tmp_path):
    pytest.importorskip("lerobot")
    import lerobot.robots.so_follower.so_follower as follower
    import lerobot.teleoperators.so_leader.so_leader as leader

    SimulatedBus.instances = []
    monkeypatch.setattr(follower, "FeetechMotorsBus", SimulatedBus)
    monkeypatch.setattr(leader, "FeetechMotorsBus", SimulatedBus)
    return tmp_path


@pytest.mark.slow  # importing lerobot alone takes ~15 s on a busy 2-core machine
def test_lerobot_arm_converts_units_both_ways(sim_bus):
    spec = robot_spec("so101")
    arm = make_arm("lerobot", port="/dev/sim0", id="t", calibration_dir=str(sim_bus),
                   offsets_deg=[0.0, 10.0, 0.0, 0.0, 0.0], gripper_range=[0.0, 100.0])
    with arm:
        q, dq, stamp = arm.read()
        assert q.shape == (6,) and abs(stamp - time.monotonic()) < 1.0
        assert q[1] == pytest.approx(-np.radians(10.0))  # lerobot 0 deg is -10 deg from our zero
        g = spec.gripper_index
        assert q[g] == pytest.approx(0.5 * (spec.gripper_open + spec.gripper_closed))  # 50 of 0..100
        target = np.array([0.3, 0.2, -0.4, 0.1, 0.0, spec.gripper_open])
        arm.command(target)
        bus = SimulatedBus.instances[-1]
        assert bus.goal["shoulder_pan"] == pytest.approx(np.degrees(0.3))
        assert bus.goal["shoulder_lift"] == pytest.approx(np.degrees(0.2) + 10.0)
        assert bus.goal["gripper"] == pytest.approx(100.0)
        for _ in range(30):
            q, dq, _ = arm.read()
        np.testing.assert_allclose(q, target, atol=1e-3)  # the servos got there, in our units
        with pytest.raises(ValueError, match="expected 6 joint targets"):
            arm.command(np.zeros(5))
    assert not bus.is_connected


def test_lerobot_errors_and_read_only_leader(sim_bus):
    with pytest.raises(DriverError, match="cannot connect.*could not open port"):
        make_arm("lerobot", port="/dev/missing", calibration_dir=str(sim_bus)).connect()
    with pytest.raises(DriverError, match="knows no robot type 'so999_follower'"):
        make_arm("lerobot", robot_type="so999_follower", calibration_dir=str(sim_bus)).connect()
    with pytest.raises(ConfigError, match="gripper_range"):
        make_arm("lerobot", gripper_range=[5.0, 5.0])
    leader = make_arm("lerobot", robot_type="so101_leader", port="/dev/sim1", id="l", calibration_dir=str(sim_bus))
    with leader:
        q, _, _ = leader.read()
        assert q.shape == (6,)
        with pytest.raises(DriverError, match="leader arm: it can be read, not commanded"):
            leader.command(q)


# --- ros2_control, against a controller node on real DDS -------------------------------------------
@pytest.mark.ros
def test_ros2_control_arm_reads_joint_states_and_commands_the_controller(ros_context):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from vla_robot.nodes import common, convert

    spec = robot_spec("panda")
    names = [f"fr3_{n}" for n in spec.joint_names]
    node = rclpy.create_node("fake_controller_manager", context=ros_context)
    state = {"q": spec.home.copy(), "got": []}

    def on_traj(msg):
        state["got"].append(msg)
        state["q"] = convert.msg_to_trajectory(msg, names)["positions"][-1]

    node.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", on_traj, 10)
    pub = node.create_publisher(JointState, "/joint_states", common.STATE_QOS)
    node.create_timer(0.02, lambda: pub.publish(convert.joint_state_to_msg(names, state["q"], time.time())))
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    stop = threading.Event()
    t = threading.Thread(target=lambda: [ex.spin_once(timeout_sec=0.02) for _ in iter(stop.is_set, True)], daemon=True)
    t.start()
    arm = make_arm("ros2_control", robot="panda", joint_names=names, timeout_s=15.0)
    try:
        arm.connect()
        q, _, _ = arm.read()
        np.testing.assert_allclose(q, spec.home)
        target = spec.home + 0.05
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not np.allclose(arm.read()[0], target):
            arm.command(target)
            time.sleep(0.05)
        np.testing.assert_allclose(arm.read()[0], target)
        msg = state["got"][-1]
        assert list(msg.joint_names) == names and list(msg.points[-1].velocities) == [0.0] * 8
    finally:
        arm.close()
        stop.set()
        t.join(timeout=2)
        ex.shutdown()
        node.destroy_node()
    with pytest.raises(DriverError, match="no joint state on /nothing"):
        make_arm("ros2_control", robot="panda", joint_states_topic="/nothing", timeout_s=0.5).connect()


def test_driver_modules_stay_light():
    """Importing the backends pulls in neither rclpy nor torch (ros2_control imports rclpy only in connect())."""
    import subprocess
    import sys

    code = ("import sys, vla_robot.drivers.ros2_control, vla_robot.drivers.opencv_camera, "
            "vla_robot.drivers.realsense, vla_robot.drivers.lerobot_arm; "
            "print(sorted(m for m in ('rclpy', 'torch', 'lerobot', 'pyrealsense2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
