"""Recorded RL episodes (real recorder, real LeRobotDataset) read back as learner episodes."""
import numpy as np
import pytest
import torch

from vla_robot.data import Recorder, RecorderConfig, Schema
from vla_robot.rl.dataset import follow_dataset

torch.set_num_threads(1)
CHUNK, DIM = 8, 6


def record(root, rng):
    schema = Schema({"front": (32, 32), "wrist": (32, 32)}, [f"j{i}" for i in range(DIM)],
                    [f"j{i}" for i in range(DIM)], token_dim=CHUNK * DIM)
    rec = Recorder(root, schema, config=RecorderConfig(fps=10, fsync=False))
    written = []
    for label in ("success", "unlabelled", "failure"):
        rec.start_episode("touch the red cube", start_condition=7)
        toks = [rng.integers(31744, 32000, CHUNK * DIM), rng.integers(31744, 32000, CHUNK * DIM)]
        lps = [-rng.uniform(0.1, 5, CHUNK * DIM).astype(np.float32) for _ in range(2)]
        for f in range(10):
            chunk, step = divmod(f, CHUNK)
            teleop = f == 9  # the operator takes over on the last frame
            first = step == 0
            rec.add_frame({c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in ("front", "wrist")},
                          rng.normal(size=DIM), rng.normal(size=DIM), control=int(teleop), policy_version=3,
                          chunk_id=-1 if teleop else chunk, chunk_step=-1 if teleop else step,
                          tokens=toks[chunk] if first else None, logprobs=lps[chunk] if first else None)
        rec.save_episode(label)
        written.append((label, toks, lps))
    rec.close()
    return written


@pytest.mark.slow
def test_recorded_episodes_become_learner_episodes_with_executed_masks(tmp_path):
    rng = np.random.default_rng(0)
    written = record(tmp_path / "ds", rng)
    eps = list(follow_dataset(tmp_path / "ds", DIM, follow=False))
    assert [e.label for e in eps] == [1, 0]  # the unlabelled episode never trains
    for e, (_, toks, lps) in zip(eps, [written[0], written[2]]):
        assert e.task == "touch the red cube" and e.start == "7" and e.version == 3
        assert len(e.steps) == 2
        np.testing.assert_array_equal(e.steps[0].tokens, toks[0])
        np.testing.assert_allclose(e.steps[1].logprobs, lps[1])
        assert e.steps[0].executed.all()  # all 8 actions of chunk 0 ran under the policy
        assert e.steps[1].executed.tolist() == [True] * DIM + [False] * (CHUNK - 1) * DIM  # then teleop took over
        assert e.steps[0].observation["images"]["front"].shape == (32, 32, 3)
        assert e.steps[0].observation["instruction"] == "touch the red cube"
    # the same episode read twice has the same id, so a restarted learner skips it
    again = list(follow_dataset(tmp_path / "ds", DIM, follow=False))
    assert [e.episode_id for e in again] == [e.episode_id for e in eps]

    # `vla-robot learn` catches up on the saved episodes, updates once and checkpoints (then resumes)
    from vla_robot.cli import main

    out = tmp_path / "learner"
    argv = ["learn", "--dataset", str(tmp_path / "ds"), "--out", str(out), "--set", "group_size=2",
            "--set", "batch_groups=1", "--mode", "rl", "--idle-timeout", "0.5"]
    assert main(argv) == 0
    state = torch.load(out / "checkpoint" / "learner_state.pt", weights_only=True)
    assert state["version"] == 1 and len(state["consumed"]) == 2
    assert main(argv + ["--resume", str(out / "checkpoint")]) == 0  # nothing new: no second update
    assert torch.load(out / "checkpoint" / "learner_state.pt", weights_only=True)["version"] == 1
