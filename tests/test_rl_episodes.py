"""The learner's episode types: demonstrations chunked as the policy acts, the executed mask from
per-frame (chunk id, chunk step, control) as the recorder stores them, and the one label encoding."""
import numpy as np
import pytest
import torch

from vla_robot.data import schema as S
from vla_robot.rl import episodes as E

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runtime():
    from vla_robot.policy import load_policy

    return load_policy(preset="tiny", seed=0)


def test_demonstrations_become_successful_episodes_whose_every_chunk_is_a_target(runtime):
    h, d = runtime.metadata["chunk_size"], runtime.metadata["action_dim"]
    rng = np.random.default_rng(0)
    n = 2 * h + 3  # the last chunk runs past the demo's end: its last action is repeated
    obs = [{"images": {}, "state": np.zeros(6, np.float32), "instruction": "reach"} for _ in range(n)]
    demo = {"start": 4, "observations": obs, "actions": rng.uniform(-0.5, 0.5, (n, d)).astype(np.float32)}
    (ep,) = E.demo_episodes([demo], runtime)["reach"]
    assert (ep.task, ep.start, ep.label, ep.length) == ("reach", 4, S.Label.SUCCESS.reward, n)
    assert len(ep.steps) == 3
    for s in ep.steps:
        assert s.tokens.shape == (h * d,) and s.executed.shape == (h * d,) and s.executed.all()
    np.testing.assert_array_equal(ep.steps[-1].tokens.reshape(h, d)[3:], np.tile(ep.steps[-1].tokens.reshape(h, d)[2],
                                                                                  (h - 3, 1)))
    ep.validate()


def test_an_episode_with_a_label_outside_the_encoding_is_refused():
    step = E.Step({}, np.zeros(6, np.int64), np.zeros(6, np.float32), np.ones(6, bool))
    for label in (1, 0, None):
        E.Episode("reach", 0, [step], label, 0).validate()
    with pytest.raises(ValueError, match=r"episode x: a learner label must be 1 \(success\), 0 \(failure\) or None"):
        E.Episode("reach", 0, [step], "success", 0, episode_id="x").validate()
