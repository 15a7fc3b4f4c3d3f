"""Recorded RL episodes (real recorder, real LeRobotDataset, on-policy records) read back as learner
episodes; bad episodes (token-less, truncated, malformed) are skipped with a reason and counted."""
import numpy as np
import pytest
import torch

from vla_robot.data import Recorder, RecorderConfig, Schema, records
from vla_robot.rl.dataset import BadEpisode, follow_dataset, to_learner_episode

torch.set_num_threads(1)
CHUNK, DIM = 8, 6
TASK = "touch the red cube"


def served_by():
    from vla_robot.policy import load_policy

    return load_policy(preset="tiny", seed=0).metadata


def chunk(rng, cid, meta, version=3):
    obs = {"images": {c: rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for c in ("front", "wrist")},
           "state": rng.normal(size=DIM).astype(np.float32), "instruction": TASK}
    reply = {"actions": rng.normal(size=(CHUNK, DIM)).astype(np.float32),
             "tokens": rng.integers(31744, 32000, CHUNK * DIM), "version": version,
             "logprobs": -rng.uniform(0.1, 5, CHUNK * DIM).astype(np.float32)}
    return records.make_chunk(reply, obs, {"mode": "sample", "temperature": 1.6, "return_tokens": True}, cid,
                              float(cid), meta)


def record(root, rng, labels, meta, with_records=None):
    """Episodes of 10 frames: chunk 0 (8 steps), chunk 1 (1 step), then the operator takes over; a
    third chunk's reply came after the takeover (never executed)."""
    schema = Schema({"front": (32, 32), "wrist": (32, 32)}, [f"j{i}" for i in range(DIM)],
                    [f"j{i}" for i in range(DIM)])
    rec = Recorder(root, schema, config=RecorderConfig(fps=10, fsync=False))
    written = []
    for e, label in enumerate(labels):
        rec.start_episode(TASK, start_condition=7)
        chunks = [chunk(rng, 10 * e + c, meta) for c in range(3)]
        for f in range(10):
            c, step = divmod(f, CHUNK)
            teleop = f == 9
            rec.add_frame({cam: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for cam in ("front", "wrist")},
                          rng.normal(size=DIM), rng.normal(size=DIM), control=int(teleop), policy_version=3,
                          chunk_id=-1 if teleop else 10 * e + c, chunk_step=-1 if teleop else step)
        keep = with_records is None or with_records[e]
        rec.save_episode(label, records=chunks if keep else None)
        written.append(chunks)
    rec.close()
    return written


@pytest.mark.slow
def test_recorded_episodes_become_learner_episodes_on_what_the_server_saw(tmp_path):
    rng = np.random.default_rng(0)
    meta = served_by()
    written = record(tmp_path / "ds", rng, ("success", "unlabelled", "failure"), meta)
    eps = list(follow_dataset(tmp_path / "ds", DIM, follow=False))
    assert [e.label for e in eps] == [1, 0]  # the unlabelled episode never trains
    for e, chunks in zip(eps, [written[0], written[2]]):
        assert e.task == TASK and e.start == "7" and e.version == 3 and e.intervened
        assert e.served_by == records.served_by(meta) and e.served_by["dtype"] == "float32"
        assert len(e.steps) == 2  # the third chunk executed nothing: left out
        for s, c in zip(e.steps, chunks):
            np.testing.assert_array_equal(s.tokens, c["tokens"])
            np.testing.assert_array_equal(s.logprobs, c["logprobs"])
            for cam in ("front", "wrist"):  # lossless, as sent (24x20, not the recorded 32x32 video)
                np.testing.assert_array_equal(s.observation["images"][cam], c["observation"]["images"][cam])
            np.testing.assert_array_equal(s.observation["state"], c["observation"]["state"])
            assert s.observation["instruction"] == TASK and s.version == 3 and s.temperature == 1.6
        assert e.steps[0].executed.all()  # all 8 actions of chunk 0 ran under the policy
        assert e.steps[1].executed.tolist() == [True] * DIM + [False] * (CHUNK - 1) * DIM  # then teleop took over
    # the same episode read twice has the same id, so a restarted learner skips it
    again = list(follow_dataset(tmp_path / "ds", DIM, follow=False))
    assert [e.episode_id for e in again] == [e.episode_id for e in eps]

    # `vla-robot learn` catches up on the saved episodes, updates once and checkpoints (then resumes)
    from vla_robot.cli import main

    out = tmp_path / "learner"
    argv = ["learn", "--dataset", str(tmp_path / "ds"), "--out", str(out), "--set", "group_size=2",
            "--set", "batch_groups=1", "--mode", "rl", "--idle-timeout", "0.5", "--intervened", "keep"]
    assert main(argv) == 0
    state = torch.load(out / "checkpoint" / "learner_state.pt", weights_only=True)
    assert state["version"] == 1 and len(state["consumed"]) == 2
    assert main(argv + ["--resume", str(out / "checkpoint")]) == 0  # nothing new: no second update
    assert torch.load(out / "checkpoint" / "learner_state.pt", weights_only=True)["version"] == 1


@pytest.mark.slow
def test_bad_episodes_are_skipped_with_a_reason_and_counted(tmp_path):
    """Defect 5: an episode the learner cannot use (no tokens, a cut-short or damaged record) made the
    learner crash-loop; now each is skipped, logged and counted, and the good ones still come."""
    rng = np.random.default_rng(1)
    root = tmp_path / "ds"
    labels = ("success",) * 6
    record(root, rng, labels, {"model": "tiny"}, with_records=[True, False, True, True, True, True])
    rl = root / "rl"
    data = (rl / "episode_000002.msgpack").read_bytes()
    (rl / "episode_000002.msgpack").write_bytes(data[: len(data) // 2])  # truncated
    (rl / "episode_000003.msgpack").write_bytes(b"\x93not a record")  # malformed
    other = records.protocol.loads((rl / "episode_000004.msgpack").read_bytes())
    (rl / "episode_000004.msgpack").write_bytes(records.encode({**other, "chunks": [
        {k: v for k, v in c.items() if k != "logprobs"} for c in other["chunks"]]}))  # a chunk without log-probs
    seen = []
    follower = follow_dataset(root, DIM, follow=False, on_bad=lambda i, why: seen.append(i))
    eps = list(follower)
    assert [e.episode_id.rsplit("#", 1)[1] for e in eps] == ["0", "5"]
    assert follower.skipped == 4 and seen == [1, 2, 3, 4]
    why = dict(follower.bad)
    assert "has no on-policy record" in why[1]
    assert "truncated or corrupt" in why[2] and "truncated or corrupt" in why[3]
    assert "lacks ['logprobs']" in why[4]
    from vla_robot.data.reader import load_episode

    with pytest.raises(BadEpisode, match="truncated or corrupt"):
        to_learner_episode(load_episode(root, 2))
    with pytest.raises(BadEpisode, match=r"expected one \[chunk_size, 7\]"):
        to_learner_episode(load_episode(root, 0), action_dim=7)
    assert issubclass(BadEpisode, ValueError)


@pytest.mark.slow
def test_recorded_demonstrations_become_sft_episodes_except_the_failed_ones(tmp_path):
    from vla_robot.policy import load_policy
    from vla_robot.rl.dataset import read_demonstrations

    runtime = load_policy(preset="tiny", seed=0)
    h, d = runtime.metadata["chunk_size"], runtime.metadata["action_dim"]
    record(tmp_path / "ds", np.random.default_rng(2), ("success", "failure", "unlabelled"), {"model": "tiny"})
    demos = read_demonstrations(tmp_path / "ds", runtime)
    assert list(demos) == [TASK] and len(demos[TASK]) == 2  # the failed demonstration is left out
    for ep in demos[TASK]:
        assert ep.label == 1 and ep.start == "7" and ep.length == 10 and len(ep.steps) == -(-10 // h)
        assert all(s.executed.shape == (h * d,) and s.executed.all() for s in ep.steps)
        assert ep.steps[0].observation["images"]["front"].shape == (32, 32, 3)
