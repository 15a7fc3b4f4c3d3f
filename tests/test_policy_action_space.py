"""The policy's action space: absolute joint targets, or per-step deltas anchored at the observed state."""
import numpy as np
import pytest

from vla_robot.policy import load_policy
from vla_robot.policy.normalization import compute_statistics


def runtime(space: str):
    rt = load_policy(preset="tiny", seed=0, overrides={"action_space": space})
    assert rt.metadata["action_space"] == space
    return rt


def test_delta_actions_round_trip_through_tokens_anchored_at_the_state():
    rt = runtime("delta")
    p = rt.processor
    rng = np.random.default_rng(0)
    states = rng.uniform(-1, 1, size=(5, 6))
    chunks = states[:, None, :] + np.cumsum(rng.uniform(-0.05, 0.05, size=(5, 8, 6)), axis=1)
    deltas = p.to_model_actions(chunks, states)
    np.testing.assert_allclose(deltas[:, 0], chunks[:, 0] - states)  # the first from the observed state
    np.testing.assert_allclose(deltas[:, 1:], np.diff(chunks, axis=1))  # then from the previous target
    np.testing.assert_allclose(p.from_model_actions(deltas, states), chunks, atol=1e-12)
    p.set_norm_stats(compute_statistics(deltas.reshape(-1, 6), states, num_trajectories=5))
    back = p.tokens_to_actions(p.actions_to_tokens(chunks, states), states)
    # 256 bins over the deltas' range: each step is off by at most half a bin, summed over the chunk
    bin_width = (deltas.max(axis=(0, 1)) - deltas.min(axis=(0, 1))) / 255
    assert np.all(np.abs(back - chunks) <= 8 * bin_width + 1e-6)


def test_served_delta_chunks_start_at_the_observed_state_and_move_by_small_steps():
    rt = runtime("delta")
    step = 0.02
    stats = compute_statistics(np.random.default_rng(1).uniform(-step, step, size=(400, 6)),
                               np.zeros((400, 6)), num_trajectories=4)
    rt.set_norm_stats(stats)
    obs = {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in ("front", "wrist")},
           "state": np.full(6, 0.3, np.float32), "instruction": "touch the red cube"}
    (reply,) = rt.infer([obs], mode="sample", temperature=1.0, seeds=[5])
    moves = np.abs(np.diff(np.concatenate([obs["state"][None], reply["actions"]]), axis=0))
    assert np.all(moves <= step + 1e-4)  # whatever was sampled, a step stays within the statistics' range


def test_absolute_is_unchanged_and_delta_needs_the_states():
    rt = runtime("absolute")
    chunks = np.random.default_rng(2).uniform(-1, 1, size=(3, 8, 6))
    assert rt.processor.to_model_actions(chunks) is not None
    np.testing.assert_array_equal(rt.processor.to_model_actions(chunks), chunks)
    d = runtime("delta").processor
    with pytest.raises(ValueError, match="needs the observed states"):
        d.to_model_actions(chunks)
    with pytest.raises(ValueError, match=r"states have shape \(2, 6\); expected \(3, 6\)"):
        d.to_model_actions(chunks, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="needs proprio_dim == action_dim"):
        load_policy(preset="tiny", overrides={"action_space": "delta", "proprio_dim": 4})
    with pytest.raises(ValueError, match="action_space"):
        load_policy(preset="tiny", overrides={"action_space": "velocity"})


def test_a_delta_checkpoint_loads_back_as_delta(tmp_path):
    from vla_robot.policy import save_checkpoint

    rt = runtime("delta")
    save_checkpoint(rt, tmp_path / "ckpt")
    assert load_policy(checkpoint=str(tmp_path / "ckpt")).metadata["action_space"] == "delta"
