"""Driver interfaces: the by-name registry, and the twin as a camera and an arm backend."""
import threading
import time

import numpy as np
import pytest

from vla_robot.config import ConfigError
from vla_robot.drivers import (Arm, Camera, DriverError, available, backend_class, make_arm, make_camera,
                               register_arm, register_camera)


# --- registry ------------------------------------------------------------------------------------
def test_registry_reports_unknown_backends_and_bad_registrations():
    with pytest.raises(ValueError, match="unknown camera backend 'nosuchcam'"):
        make_camera("nosuchcam")
    with pytest.raises(ValueError, match="lower_snake_case"):
        make_arm("Bad-Name")
    with pytest.raises(ValueError, match="family"):
        backend_class("gripper", "twin")
    with pytest.raises(TypeError, match="subclass of Camera"):
        register_camera("notacamera", dict)
    with pytest.raises(ValueError, match="module:Class"):
        register_arm("lazyarm", "no_colon_here")


def test_registry_builds_a_registered_backend_with_a_checked_config():
    from dataclasses import dataclass

    @dataclass
    class EchoConfig:
        joints: int = 2
        gain: float = 1.0

        def validate(self):
            if self.joints < 1:
                raise ValueError("joints must be >= 1")

    @register_arm("echo_test")
    class EchoArm(Arm):
        config_class = EchoConfig

        def __init__(self, config):
            self.config = config
            self.joint_names = [f"j{i}" for i in range(config.joints)]
            self.q = np.zeros(config.joints)

        def read(self):
            return self.q.copy(), np.zeros_like(self.q), time.monotonic()

        def command(self, q_target):
            self.q = self.check_command(q_target) * self.config.gain

    assert "echo_test" in available("arm")
    arm = make_arm("echo_test", {"joints": 3}, gain=2.0)
    assert arm.kind == "echo_test" and arm.n_joints == 3
    arm.command([1, 2, 3])
    np.testing.assert_allclose(arm.read()[0], [2, 4, 6])
    with pytest.raises(ValueError, match="expected 3 joint targets"):
        arm.command([1, 2])
    with pytest.raises(ConfigError, match="unknown key 'speed'"):
        make_arm("echo_test", speed=3)
    with pytest.raises(ConfigError, match="'gain' is 'fast'"):
        make_arm("echo_test", gain="fast")
    with pytest.raises(ConfigError, match="joints must be >= 1"):
        make_arm("echo_test", joints=0)
    # lazy registration by "module:Class"
    register_arm("echo_lazy", f"{__name__}:_LazyArm")
    assert backend_class("arm", "echo_lazy") is _LazyArm


class _LazyArm(Arm):
    def read(self):
        return np.zeros(1), np.zeros(1), time.monotonic()

    def command(self, q_target):
        pass


# --- the twin backends ---------------------------------------------------------------------------
mujoco = pytest.importorskip("mujoco")
TWIN = {"image_size": [48, 64], "cameras": ["front", "wrist"]}


def test_twin_backends_are_found_by_name():
    assert backend_class("arm", "twin").__name__ == "TwinArm"
    assert backend_class("camera", "twin").__name__ == "TwinCamera"


def test_twin_arm_and_camera_share_one_simulation():
    arm = make_arm("twin", session="t_share", realtime=False, twin=TWIN)
    cam = make_camera("twin", session="t_share", camera="front", twin=TWIN)
    try:
        assert isinstance(arm, Arm) and isinstance(cam, Camera)
        assert arm.joint_names[-1] == "gripper" and arm.n_joints == 6
        q0, dq0, t0 = arm.read()
        img0, s0 = cam.read()
        assert img0.shape == (48, 64, 3) and img0.dtype == np.uint8
        target = q0.copy()
        target[0] += 0.4  # pan the arm
        for _ in range(15):
            arm.command(target)  # stepped mode: each command advances one control period
        q1, dq1, t1 = arm.read()
        assert abs(q1[0] - target[0]) < 0.02 and t1 > t0
        img1, s1 = cam.read()
        assert s1 == t1  # the image shows the state the arm reported
        assert np.abs(img1.astype(int) - img0.astype(int)).mean() > 0.5  # the camera saw it move
        info = cam.camera_info()
        assert (info.width, info.height) == (64, 48)
        assert info.cx == pytest.approx(31.5) and info.cy == pytest.approx(23.5)
    finally:
        cam.close()
        arm.close()


def test_twin_arm_realtime_mode_tracks_commands_and_cameras_read_from_other_threads():
    arm = make_arm("twin", session="t_rt", twin=TWIN)
    cam = make_camera("twin", session="t_rt", camera="wrist", twin=TWIN)
    try:
        q0, _, t0 = arm.read()
        target = q0.copy()
        target[1] += 0.3
        arm.command(target)
        images = []
        reader = threading.Thread(target=lambda: images.extend(cam.read()[0] for _ in range(3)))
        reader.start()
        reader.join(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and abs(arm.read()[0][1] - target[1]) > 0.02:
            time.sleep(0.05)
        q1, _, t1 = arm.read()
        assert abs(q1[1] - target[1]) < 0.02 and t1 > t0
        assert len(images) == 3 and all(i.shape == (48, 64, 3) for i in images)
    finally:
        cam.close()
        arm.close()


def test_twin_backends_take_config_dataclasses_too():
    from vla_robot.twin.config import TwinArmConfig, TwinCameraConfig, TwinConfig

    twin = TwinConfig(image_size=[40, 40], cameras=["front"])
    arm = make_arm("twin", TwinArmConfig(session="t_dc", realtime=False, twin=twin))
    cam = make_camera("twin", TwinCameraConfig(session="t_dc", camera="top", twin=twin), camera="side")
    try:
        assert arm.session is cam.session and cam.name == "side"
        assert cam.read()[0].shape == (40, 40, 3)
        with pytest.raises(ConfigError, match="expects a TwinCameraConfig"):
            make_camera("twin", twin)
    finally:
        cam.close()
        arm.close()


def test_twin_driver_errors_are_clear():
    arm = make_arm("twin", session="t_err", realtime=False, twin=TWIN)
    try:
        with pytest.raises(ValueError, match="expected 6 joint targets"):
            arm.command(np.zeros(3))
        with pytest.raises(ValueError, match="non-finite"):
            arm.command([0, 0, np.nan, 0, 0, 0])
        with pytest.raises(ValueError, match="different twin config"):
            make_camera("twin", session="t_err", twin={"image_size": [32, 32]})
        with pytest.raises(ConfigError, match="camera must be one of"):
            make_camera("twin", session="t_err", camera="ceiling", twin=TWIN)
    finally:
        arm.close()
    with pytest.raises(DriverError, match="after close"):
        arm.read()


def test_driver_interfaces_and_robot_facts_import_without_mujoco():
    import subprocess
    import sys

    code = ("import sys, vla_robot.drivers, vla_robot.twin.robots as r; r.robot_spec('so101'); "
            "heavy = [m for m in ('mujoco', 'torch', 'rclpy', 'cv2') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
