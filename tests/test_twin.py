"""The MuJoCo twin: robot facts, reduced models, the reach task, experts, determinism, cameras."""
import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from vla_robot.config import ConfigError  # noqa: E402
from vla_robot.twin.env import make_env  # noqa: E402
from vla_robot.twin.meshes import read_stl, reduce_mesh, write_stl  # noqa: E402
from vla_robot.twin.models import reduced_mesh_dir, robot_mjspec  # noqa: E402
from vla_robot.twin.robots import robot_spec  # noqa: E402


# --- robot facts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["so101", "panda"])
def test_robot_spec_matches_the_model(name):
    spec = robot_spec(name)
    model = robot_mjspec(name).compile()
    alias = {"panda": {"gripper": "right_driver_joint"}}.get(name, {})
    for i, j in enumerate(spec.joint_names):
        lo, hi = model.joint(alias.get(j, j)).range
        assert spec.lower[i] == pytest.approx(lo, abs=1e-4), j
        assert spec.upper[i] == pytest.approx(hi, abs=1e-4), j
    assert np.all((spec.home >= spec.lower) & (spec.home <= spec.upper))
    assert spec.joint_names[spec.gripper_index] == "gripper"


def test_robot_spec_joint_limits_for_the_safety_filter():
    control = pytest.importorskip("vla_robot.control")
    lim = robot_spec("so101").joint_limits()
    assert isinstance(lim, control.JointLimits)
    assert list(lim.names) == list(robot_spec("so101").joint_names)
    np.testing.assert_allclose(lim.upper, robot_spec("so101").upper)


def test_robot_spec_rejects_unknown_names_and_bad_vectors():
    with pytest.raises(ValueError, match="unknown robot 'ur5'.*panda, so101"):
        robot_spec("ur5")
    with pytest.raises(ValueError, match="6 entries"):
        robot_spec("so101").check_q([0.0] * 5)
    with pytest.raises(ValueError, match="non-finite"):
        robot_spec("so101").check_q([0, 0, np.nan, 0, 0, 0])


# --- meshes and models ---------------------------------------------------------------------------
def test_reduce_mesh_keeps_the_shape_with_fewer_faces(tmp_path):
    # a finely tessellated sphere
    u, v = np.meshgrid(np.linspace(0, np.pi, 60), np.linspace(0, 2 * np.pi, 120), indexing="ij")
    pts = np.stack([np.sin(u) * np.cos(v), np.sin(u) * np.sin(v), np.cos(u)], -1).reshape(-1, 3) * 0.05
    idx = np.arange(60 * 120).reshape(60, 120)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    write_stl(tmp_path / "s.stl", pts, faces)
    v0, f0 = read_stl(tmp_path / "s.stl")
    v1, f1 = reduce_mesh(v0, f0, target_faces=800)
    assert len(f1) <= 800 < len(f0)
    # every reduced vertex still lies near the sphere surface
    assert np.abs(np.linalg.norm(v1, axis=1) - 0.05).max() < 0.005
    with pytest.raises(ValueError, match="target_faces"):
        reduce_mesh(v0, f0, 2)
    (tmp_path / "bad.stl").write_bytes(b"garbage that is not an stl")
    with pytest.raises(ValueError, match="not an STL"):
        read_stl(tmp_path / "bad.stl")


def test_reduced_so101_model_has_the_same_kinematics_and_few_triangles():
    assert any(reduced_mesh_dir("so101").glob("*.stl")), "run 'vla-robot twin build-models'"
    full = robot_mjspec("so101", reduced=False).compile()
    red = robot_mjspec("so101", reduced=True).compile()
    assert red.mesh_facenum.sum() < full.mesh_facenum.sum() / 8
    df, dr = mujoco.MjData(full), mujoco.MjData(red)
    rng = np.random.default_rng(0)
    spec = robot_spec("so101")
    for _ in range(5):
        q = rng.uniform(spec.lower, spec.upper)
        df.qpos[:] = q
        dr.qpos[:] = q
        mujoco.mj_kinematics(full, df)
        mujoco.mj_kinematics(red, dr)
        np.testing.assert_allclose(dr.site("tcp").xpos, df.site("tcp").xpos, atol=1e-9)


# --- the reach task ------------------------------------------------------------------------------
def _run_episode(env, policy, start=None, seed=None):
    env.reset(seed=seed, start=start)
    while not env.done:
        env.advance(policy(env))
        if env.success():
            return True
    return False


@pytest.fixture(scope="module")
def reach():
    env = make_env(task="reach", seed=0, image_size=(64, 64))
    yield env
    env.close()


def test_reach_expert_solves_random_starts(reach):
    wins = sum(_run_episode(reach, lambda e: e.expert_action(), start=s) for s in range(1000, 1050))
    assert wins >= 48, f"expert solved {wins}/50 reach starts"


def test_reach_success_is_not_fooled_by_a_random_policy(reach):
    rng = np.random.default_rng(7)
    spec = reach.robot

    def random_policy(env):  # random targets within the velocity limits around the last command
        return env.last_command() + rng.uniform(-1, 1, spec.n_joints) * env.max_joint_step() * 3

    wins = sum(_run_episode(reach, random_policy, start=s) for s in range(2000, 2050))
    assert wins <= 2, f"a random policy 'succeeded' {wins}/50 times"


def test_reach_touching_the_wrong_cube_is_no_success(reach):
    reach.reset(start=5)
    other = next(c for c in reach.task.colours if c != reach.start.target)
    pos = reach.data.mocap_pos[reach.task.mocap[other]] + [0, 0, reach.task.geo.cube_half + reach.task.touch_offset]
    q = reach.solve_ik(pos, reach.start.q_arm)
    reach.set_joint_state(np.r_[q, reach.joint_positions()[-1]])
    assert np.linalg.norm(reach.tcp_pos() - pos) < 0.005
    assert not reach.success()
    q = reach.solve_ik(reach.task.touch_point(reach), reach.start.q_arm)
    reach.set_joint_state(np.r_[q, reach.joint_positions()[-1]])
    assert reach.success()


def test_fewer_cubes_put_only_those_in_the_scene_and_the_expert_still_solves_it():
    env = make_env(task="reach", cubes=1, seed=0, image_size=(48, 48))
    assert env.task.colours == ["red"]
    assert [env.model.body(i).name for i in range(env.model.nbody) if env.model.body(i).name.startswith("cube_")] == ["cube_red"]
    wins = sum(_run_episode(env, lambda e: e.expert_action(), start=s) for s in range(1000, 1010))
    assert env.instruction == "touch the red cube" and wins >= 9
    env.close()
    two = make_env(task="reach", cubes=2, image_size=(32, 32))
    two.reset(start=3)
    assert two.task.colours == ["red", "green"] and two.start.target in ("red", "green")
    two.close()
    with pytest.raises(ConfigError, match=r"cubes must be 0 \(all\) or 1..3 for task 'reach', got 4"):
        make_env(task="reach", cubes=4)
    with pytest.raises(ConfigError, match=r"1..2 for task 'pick_place'"):
        make_env(task="pick_place", cubes=3)


def test_observation_format_and_instruction(reach):
    obs = reach.reset(start=3)
    assert set(obs) == {"images", "state", "time"}
    assert set(obs["images"]) == {"front", "wrist"}
    for img in obs["images"].values():
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 5
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (6,)
    assert reach.instruction == f"touch the {reach.start.target} cube"
    assert reach.start_condition == 3
    assert reach.max_steps == 60


def test_same_seed_gives_the_identical_episode():
    def episode(seed):
        env = make_env(task="reach", seed=seed, image_size=(48, 48))
        obs = [env.reset()]
        rng = np.random.default_rng(1)
        for _ in range(8):
            obs.append(env.step(env.expert_action() + rng.normal(0, 0.01, 6)))
        env.close()
        return env.start_condition, obs

    (s1, a), (s2, b), (s3, c) = episode(11), episode(11), episode(12)
    assert s1 == s2 and s1 != s3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["state"], y["state"])
        for cam in x["images"]:
            np.testing.assert_array_equal(x["images"][cam], y["images"][cam])
    assert not np.array_equal(a[-1]["images"]["front"], c[-1]["images"]["front"])


def test_reset_with_a_start_id_rebuilds_that_start(reach):
    reach.reset(seed=1)
    sid = reach.start_condition
    cubes = reach.data.mocap_pos.copy()
    q = reach.joint_positions()
    for _ in range(5):
        reach.advance(reach.expert_action())
    reach.reset(seed=99)
    assert not np.allclose(reach.data.mocap_pos, cubes)
    reach.reset(start=sid)
    np.testing.assert_array_equal(reach.data.mocap_pos, cubes)
    np.testing.assert_array_equal(reach.joint_positions(), q)


def test_bad_input_gets_clear_errors(reach):
    fresh = make_env(task="reach", image_size=(32, 32))
    with pytest.raises(RuntimeError, match="reset"):
        fresh.step(fresh.robot.home)
    fresh.close()
    reach.reset(start=1)
    with pytest.raises(ValueError, match="6 entries"):
        reach.step(np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        reach.step(np.full(6, np.inf))
    with pytest.raises(ValueError, match="start must be a start-state id"):
        reach.reset(start="abc")
    with pytest.raises(ConfigError, match="cameras"):
        make_env(cameras=("front", "ceiling"))
    with pytest.raises(ConfigError, match="task"):
        make_env(task="dance")
    with pytest.raises(ConfigError, match="image_size"):
        make_env(image_size=(4, 4))


def test_targets_beyond_the_joint_limits_are_clipped(reach):
    reach.reset(start=2)
    far = reach.robot.upper + 1.0
    for _ in range(30):
        reach.advance(far)
    q = reach.joint_positions()
    assert np.all(q <= reach.robot.upper + 0.05)


# --- cameras -------------------------------------------------------------------------------------
def test_calibrated_camera_projects_like_opencv(tmp_path):
    """A cube seen by a twin camera built from camera_info + extrinsics lands where K [R|t] says."""
    cm = pytest.importorskip("vla_robot.calibration.camera_model")
    K = np.array([[300.0, 0, 170.0], [0, 310.0, 115.0], [0, 0, 1]])
    cm.save_camera_info(cm.CameraModel(K=K, D=np.zeros(5), width=320, height=240, camera_name="top"),
                        tmp_path / "top.yaml")
    # optical frame looking straight down from 0.6 m above (0.2, 0.05)
    T = np.eye(4)
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = [0.2, 0.05, 0.6]
    cm.save_extrinsics(cm.Extrinsics("base", "top_optical", T), tmp_path / "top_ext.yaml")
    env = make_env(task="reach", image_size=(240, 320), cameras=("top",),
                   camera_calibration=[{"camera": "top", "camera_info": str(tmp_path / "top.yaml"),
                                        "extrinsics": str(tmp_path / "top_ext.yaml")}])
    np.testing.assert_allclose(env.camera_matrix("top"), K, atol=1e-6)
    env.reset(start=4)
    env.set_joint_state(np.array([1.9, -1.7, 1.6, 0.0, 0.0, 0.0]))  # arm folded away to the side
    img = env.render()["top"].astype(int)
    for colour in env.task.colours:
        p = env.data.mocap_pos[env.task.mocap[colour]] + [0, 0, env.task.geo.cube_half]  # top face centre
        pc = T[:3, :3].T @ (p - T[:3, 3])
        uv = (K @ pc)[:2] / pc[2]
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        mask = {"red": (r > g + 80) & (r > b + 80), "green": (g > r + 50) & (g > b + 50),
                "blue": (b > r + 80) & (b > g + 50)}[colour]
        ys, xs = np.nonzero(mask)
        assert len(xs) > 20, colour
        assert abs(xs.mean() - uv[0]) < 1.0 and abs(ys.mean() - uv[1]) < 1.0, (colour, xs.mean(), ys.mean(), uv)
    env.close()


# --- pick and place ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pick():
    env = make_env(task="pick_place", seed=0, image_size=(48, 48))
    yield env
    env.close()


@pytest.mark.slow
def test_pick_place_expert_solves_random_starts(pick):
    wins = sum(_run_episode(pick, lambda e: e.expert_action(), start=s) for s in range(3000, 3050))
    assert wins >= 48, f"expert solved {wins}/50 pick-and-place starts"


def test_pick_place_success_is_not_fooled_by_a_random_policy(pick):
    rng = np.random.default_rng(3)

    def random_policy(env):
        return env.last_command() + rng.uniform(-1, 1, env.robot.n_joints) * env.max_joint_step() * 3

    # a random arm can shove a cube onto the plate now and then (about 1 % over 100 starts): that
    # is "on the plate" as far as any check can tell, so the bar is the 5 %
    wins = sum(_run_episode(pick, random_policy, start=s) for s in range(4000, 4040))
    assert wins <= 2, f"a random policy 'succeeded' {wins}/40 times"


def test_pick_place_success_needs_the_named_cube_on_the_plate_and_released(pick):
    pick.reset(start=8)
    assert pick.instruction == f"put the {pick.start.target} cube on the plate"
    assert not pick.success()
    plate = pick.start.objects["plate"]
    other = next(c for c in pick.task.colours if c != pick.start.target)
    h = pick.task.geo.cube_half

    def put(colour, xy):
        a = pick.task.cube_qadr[colour]
        pick.data.qpos[a:a + 7] = [xy[0], xy[1], h + 0.004, 1, 0, 0, 0]
        for _ in range(10):
            pick.advance(pick.last_command())

    put(other, plate[:2])
    assert not pick.success(), "the other cube on the plate is no success"
    put(other, [0.0, -0.3])
    put(pick.start.target, plate[:2] + pick.task.geo.plate_half + 0.01)
    assert not pick.success(), "next to the plate is no success"
    put(pick.start.target, plate[:2])
    assert pick.success()


# --- the Panda (ros2_control labs) ---------------------------------------------------------------
@pytest.mark.parametrize("task", ["reach", pytest.param("pick_place", marks=pytest.mark.slow)])
def test_panda_experts_solve_random_starts(task):
    env = make_env(task=task, robot="panda", image_size=(32, 32), cameras=("front",))
    wins = sum(_run_episode(env, lambda e: e.expert_action(), start=s) for s in range(5000, 5020))
    env.close()
    assert wins >= 19, f"Panda {task} expert solved {wins}/20 starts"
