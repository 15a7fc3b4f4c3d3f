"""Batched twin rollouts: vectorized envs (in-process and worker processes) and open-loop physics."""
import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from vla_robot.twin.env import make_env  # noqa: E402
from vla_robot.twin.rollout import VecTwinEnv, open_loop_rollout  # noqa: E402


def _run(workers):
    with VecTwinEnv(3, task="reach", seed=5, image_size=(32, 32), workers=workers) as vec:
        obs = vec.reset()
        for _ in range(12):
            obs = vec.step(vec.expert_actions())
        return obs, vec.success(), vec.instructions, vec.start_conditions


def test_vectorized_envs_match_across_worker_processes_and_keep_their_own_seeds():
    local, remote = _run(0), _run(2)
    for cam in local[0]["images"]:
        assert local[0]["images"][cam].shape == (3, 32, 32, 3)
        np.testing.assert_array_equal(local[0]["images"][cam], remote[0]["images"][cam])
    np.testing.assert_array_equal(local[0]["state"], remote[0]["state"])
    assert local[2:] == remote[2:]
    assert len(set(local[3])) == 3  # three seeds, three different starts
    # each env equals a single env with its seed
    env = make_env(task="reach", seed=6, image_size=(32, 32))
    env.reset()
    for _ in range(12):
        obs = env.step(env.expert_action())
    np.testing.assert_array_equal(obs["state"], local[0]["state"][1])
    env.close()


def test_vectorized_env_rejects_bad_input():
    with VecTwinEnv(2, image_size=(16, 16), cameras=("front",)) as vec:
        vec.reset(starts=[4, 4])
        assert vec.start_conditions == [4, 4]
        with pytest.raises(ValueError, match=r"actions must be \[n_envs=2, joints\]"):
            vec.step(np.zeros((3, 6)))
        with pytest.raises(ValueError, match="starts and seeds must have 2 entries"):
            vec.reset(starts=[1])
    with pytest.raises(ValueError, match="n >= 1"):
        VecTwinEnv(0)


def test_open_loop_rollout_matches_stepping_and_randomizes_per_sequence():
    env = make_env(task="reach", image_size=(16, 16), cameras=("front",))
    env.reset(start=5)
    rng = np.random.default_rng(0)
    targets = env.joint_positions() + rng.normal(0, 0.05, (3, 10, 6)).cumsum(axis=1)
    out = open_loop_rollout(env, targets)
    assert out.shape == (3, 10, 6)
    for b in range(3):
        env.reset(start=5)
        for k in range(10):
            env.advance(targets[b, k])
            np.testing.assert_allclose(out[b, k], env.joint_positions(), atol=1e-9)
    dr = make_env(task="reach", image_size=(16, 16), cameras=("front",), randomization={"damping_scale": [0.3, 3.0]})
    dr.reset(start=5)
    same = np.repeat(targets[:1], 3, axis=0)
    rand = open_loop_rollout(dr, same, randomize=True, seed=1)
    assert np.abs(rand[0] - rand[1]).max() > 1e-3  # each sequence ran on its own model
    np.testing.assert_array_equal(rand, open_loop_rollout(dr, same, randomize=True, seed=1))
    with pytest.raises(ValueError, match=r"q_targets must be \[batch, steps, 6\]"):
        open_loop_rollout(env, np.zeros((3, 6)))
    env.close()
    dr.close()
