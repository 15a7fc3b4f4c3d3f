"""Twin sim2real tools: domain randomization, mirror mode, system identification."""
import time
from pathlib import Path

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from vla_robot.config import ConfigError  # noqa: E402
from vla_robot.twin.config import RandomizationConfig, TwinConfig  # noqa: E402
from vla_robot.twin.env import _FIELDS, load_randomization, make_env  # noqa: E402
from vla_robot.twin.mirror import Mirror  # noqa: E402
from vla_robot.twin.robots import robot_spec  # noqa: E402
from vla_robot.twin.sysid import JointLog, apply_sysid_file, excitation, fit, record_log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# --- domain randomization ------------------------------------------------------------------------
GROUPS = {
    "lighting": ({"light_intensity": [0.5, 1.5], "light_dir_jitter_deg": 20.0}, {"light_diffuse", "light_dir"}),
    "colours": ({"table_rgb_jitter": 0.2, "object_rgb_jitter": 0.2}, {"geom_rgba"}),
    "cameras": ({"camera_pos_jitter_m": 0.02, "camera_rot_jitter_deg": 3.0, "fovy_jitter_deg": 3.0},
                {"cam_pos", "cam_quat", "cam_fovy"}),
    "friction": ({"friction_scale": [0.5, 1.5]}, {"geom_friction"}),
    "joints": ({"damping_scale": [0.5, 2.0], "armature_scale": [0.5, 2.0]}, {"dof_damping", "dof_armature"}),
    "mass": ({"mass_scale": [0.8, 1.2]}, {"body_mass", "body_inertia"}),
    "servo": ({"kp_scale": [0.8, 1.2]}, {"actuator_gainprm", "actuator_biasprm"}),
    "objects": ({"object_pos_jitter_m": 0.01}, set()),
    "latency": ({"action_latency_steps": [2, 2]}, set()),
}


@pytest.fixture(scope="module")
def plain():
    env = make_env(task="reach", image_size=(32, 32), cameras=("front",))
    env.reset(start=21)
    yield env
    env.close()


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_randomization_changes_what_it_should_and_nothing_else(group, plain):
    options, fields = GROUPS[group]
    env = make_env(task="reach", image_size=(32, 32), cameras=("front",), randomization=options)
    env.reset(start=21)
    changed = {f for f in _FIELDS if not np.array_equal(getattr(env.model, f), getattr(plain.model, f))}
    assert changed == fields
    moved = not np.array_equal(env.data.mocap_pos, plain.data.mocap_pos)
    assert moved == (group == "objects")
    if group == "objects":
        assert np.abs(env.data.mocap_pos - plain.data.mocap_pos).max() <= 0.01 + 1e-12
    np.testing.assert_array_equal(env.joint_positions(), plain.joint_positions())
    assert env.instruction == plain.instruction
    # each reset draws anew, and never compounds on the previous draw
    if fields:
        first = {f: getattr(env.model, f).copy() for f in fields}
        for _ in range(5):
            env.reset(start=21)
        assert any(not np.array_equal(getattr(env.model, f), first[f]) for f in fields)
    if group == "joints":
        ratio = env.model.dof_damping / plain.model.dof_damping
        assert np.all((ratio >= 0.5 - 1e-9) & (ratio <= 2.0 + 1e-9))
    env.close()


def test_action_latency_delays_the_commands():
    env = make_env(task="reach", image_size=(32, 32), cameras=("front",), randomization={"action_latency_steps": [2, 2]})
    env.reset(start=3)
    q0 = env.joint_positions()
    target = env.start.q_arm.copy()
    target[0] += 0.2
    moved = []
    for _ in range(4):
        env.advance(target)
        moved.append(abs(env.joint_positions()[0] - q0[0]) > 1e-3)
    assert moved == [False, False, True, True]
    env.close()


def test_visual_randomization_changes_images_not_physics(plain):
    env = make_env(task="reach", image_size=(32, 32), cameras=("front",),
                   randomization=ROOT / "sim2real/randomization_visual.yaml")
    obs = env.reset(start=21)
    ref = plain.reset(start=21)
    assert np.abs(obs["images"]["front"].astype(int) - ref["images"]["front"].astype(int)).mean() > 2
    for _ in range(5):
        a = env.expert_action()
        env.advance(a)
        plain.advance(a)
    np.testing.assert_array_equal(env.joint_positions(), plain.joint_positions())
    env.close()


def test_shipped_randomization_configs_load_and_bad_ones_are_rejected(tmp_path):
    for path in sorted((ROOT / "sim2real").glob("randomization_*.yaml")):
        assert isinstance(load_randomization(path), RandomizationConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("randomization:\n  ros__parameters:\n    friction_scale: [1.5, 0.5]\n")
    with pytest.raises(ConfigError, match="friction_scale"):
        load_randomization(bad)
    bad.write_text("randomization:\n  ros__parameters:\n    lighting: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'lighting'"):
        load_randomization(bad)


# --- mirror --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mirror():
    m = Mirror(TwinConfig(image_size=[48, 48], cameras=["front"]))
    yield m
    m.close()


def test_mirror_reproduces_the_measured_pose_exactly(mirror):
    spec = robot_spec("so101")
    rng = np.random.default_rng(0)
    ref = mujoco.MjData(mirror.view.model)
    for _ in range(10):
        q = rng.uniform(spec.lower, spec.upper)
        mirror.update(q, stamp=time.monotonic())
        np.testing.assert_array_equal(mirror.view.joint_positions(), q)
        ref.qpos[:] = mirror.view.data.qpos
        ref.qpos[mirror.view._qadr] = q
        mujoco.mj_kinematics(mirror.view.model, ref)
        np.testing.assert_allclose(mirror.tcp(), ref.site_xpos[mirror.view._tcp], atol=1e-12)


def test_mirror_latency_compensation_beats_the_raw_measurement(mirror):
    mirror.config.extrapolate = True
    home = robot_spec("so101").home
    err_raw, err_comp = [], []
    latency = 0.05
    for k in range(30):
        t = 1e6 + k / 30
        q = home + 0.3 * np.sin(2 * np.pi * 0.5 * t) * np.r_[1, 1, 1, 0, 0, 0]
        dq = 0.3 * 2 * np.pi * 0.5 * np.cos(2 * np.pi * 0.5 * t) * np.r_[1, 1, 1, 0, 0, 0]
        mirror.update(q, dq, stamp=t)
        frame_t = t + latency  # the camera frame is newer than the joint state
        truth = home + 0.3 * np.sin(2 * np.pi * 0.5 * frame_t) * np.r_[1, 1, 1, 0, 0, 0]
        err_raw.append(np.abs(q - truth).max())
        err_comp.append(np.abs(mirror.pose_at(frame_t) - truth).max())
    assert np.mean(err_comp) < 0.2 * np.mean(err_raw)
    # never extrapolates further than max_extrapolation_s
    far = mirror.pose_at(frame_t + 10.0)
    np.testing.assert_allclose(far, robot_spec("so101").clip(q + dq * mirror.config.max_extrapolation_s))


def test_mirror_divergence_tracks_model_error_and_images():
    twin = TwinConfig(image_size=[48, 48], cameras=["front"])
    mirror = Mirror(twin)
    real = make_env(task="reach", image_size=(48, 48), cameras=("front",))
    try:
        real.reset(start=mirror.view.start_condition)
        q, _ = real.joint_positions(), None
        mirror.update(real.joint_positions(), real.joint_velocities(), stamp=0.0)
        target = q + np.r_[0.3, 0.2, 0, 0, 0, 0]
        for k in range(1, 16):  # same model on both sides: no divergence
            mirror.command(target)
            real.advance(target)
            mirror.update(real.joint_positions(), real.joint_velocities(), stamp=k * real.control_dt)
        same = mirror.divergence({"front": real.render()["front"]}, t=15 * real.control_dt)
        assert same.joint_error_max < 0.02 and same.tcp_error_m < 0.005
        assert same.image_diff["front"] < 0.01
        # a "real" arm with much more damping lags behind the shadow
        real.model.dof_damping[:6] *= 20
        mirror.resync()
        target2 = target - np.r_[0.4, 0.3, 0, 0, 0, 0]
        for k in range(16, 22):
            mirror.command(target2)
            real.advance(target2)
            mirror.update(real.joint_positions(), real.joint_velocities(), stamp=k * real.control_dt)
        diverged = mirror.divergence({"front": np.zeros((48, 48, 3), np.uint8)})
        assert diverged.joint_error_max > 0.05 and diverged.tcp_error_m > 0.01
        assert diverged.image_diff["front"] > 0.2
        with pytest.raises(ValueError, match="stamps must not go back"):
            mirror.update(q, stamp=0.0)
        with pytest.raises(ValueError, match="6 entries"):
            mirror.update(q[:3])
        with pytest.raises(ValueError, match="image_size"):
            mirror.divergence({"front": np.zeros((10, 10, 3), np.uint8)})
    finally:
        real.close()
        mirror.close()


# --- system identification -----------------------------------------------------------------------
def test_sysid_recovers_known_joint_parameters(tmp_path):
    env = make_env(task="reach", image_size=(16, 16), cameras=("front",))
    joints = ["shoulder_pan", "shoulder_lift", "elbow_flex"]
    truth = {}
    for j, (fd, fa) in zip(joints, [(1.6, 0.7), (1.3, 1.4), (0.7, 1.25)]):
        dof = env.model.joint(j).dofadr[0]
        env._nominal["dof_damping"][dof] *= fd
        env._nominal["dof_armature"][dof] *= fa
        truth[j] = {"damping": env._nominal["dof_damping"][dof], "armature": env._nominal["dof_armature"][dof]}
    t, q = excitation("so101", duration_s=2.0, control_hz=30.0, seed=1)
    log = record_log(env, q, t)
    env.close()
    log.q_meas += np.random.default_rng(0).normal(0, 1e-3, log.q_meas.shape)  # 1 mrad encoder noise
    log = JointLog.load(log.save(tmp_path / "log.npz"))
    result = fit(log, joints=joints, params=("damping", "armature"))
    for j in joints:
        for p in ("damping", "armature"):
            assert result.values[j][p] == pytest.approx(truth[j][p], rel=0.10), (j, p, result.values[j][p], truth[j][p])
    # the result file feeds the twin
    path = result.save(tmp_path / "sysid_so101.yaml")
    fitted = make_env(task="reach", image_size=(16, 16), cameras=("front",), sysid_file=str(path))
    dof = fitted.model.joint("elbow_flex").dofadr[0]
    assert fitted.model.dof_damping[dof] == pytest.approx(result.values["elbow_flex"]["damping"])
    fitted.close()


def test_sysid_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least 10 samples"):
        JointLog(np.arange(3), np.zeros((3, 6)), np.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"q_meas must have shape \(20, 6\)"):
        JointLog(np.arange(20.0), np.zeros((20, 6)), np.zeros((20, 5)))
    with pytest.raises(ValueError, match="strictly increasing"):
        JointLog(np.r_[np.arange(10.0), 3.0], np.zeros((11, 6)), np.zeros((11, 6)))
    log = JointLog(np.arange(20) / 30, np.zeros((20, 6)), np.zeros((20, 6)))
    with pytest.raises(ValueError, match="unknown sysid parameter 'stiffness'"):
        fit(log, params=("stiffness",))
    with pytest.raises(ValueError, match="cannot fit joint 'knee'"):
        fit(log, joints=["knee"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: so101\njoints: {elbow_flex: {stiffness: 3}}\n")
    env = make_env(task="reach", image_size=(16, 16), cameras=("front",))
    with pytest.raises(ValueError, match="joints.elbow_flex must map"):
        apply_sysid_file(env.model, bad, env.robot)
    env.close()


def test_sysid_on_the_panda_recovers_damping():
    env = make_env(task="reach", robot="panda", image_size=(16, 16), cameras=("front",))
    dof = env.model.joint("joint2").dofadr[0]
    env._nominal["dof_damping"][dof] *= 1.4
    t, q = excitation("panda", duration_s=1.5, control_hz=30.0, seed=2)
    log = record_log(env, q, t)
    env.close()
    result = fit(log, joints=["joint2", "joint4"], params=("damping",), max_iters=20)
    assert result.values["joint2"]["damping"] == pytest.approx(1.4 * result.nominal["joint2"]["damping"], rel=0.05)
    assert result.values["joint4"]["damping"] == pytest.approx(result.nominal["joint4"]["damping"], rel=0.05)
