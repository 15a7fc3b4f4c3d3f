"""RecordingSession (the recorder node's logic, no ROS) on a real Recorder: commands become frames,
chunk ids/steps, on-policy records kept whatever their arrival order, latency on the node's clock,
episode events."""
from __future__ import annotations

import numpy as np
import pytest

from vla_robot.data import records
from vla_robot.data.reader import load_episode, read_journal
from vla_robot.data.recorder import Recorder
from vla_robot.data.session import RecordingSession
from vla_robot.rl.dataset import to_learner_episode

NAMES = ["j0", "j1"]


def chunk_record(cid: int, horizon: int, version: int = 0) -> dict:
    """What policy_node publishes for chunk ``cid`` (``horizon`` actions x 2 joints)."""
    obs = {"images": {"front": np.full((16, 24, 3), cid, np.uint8)}, "state": np.array([cid, 0], np.float32),
           "instruction": "wave hello"}
    reply = {"actions": np.zeros((horizon, 2), np.float32), "tokens": np.arange(2 * horizon) + 100 * cid,
             "logprobs": np.full(2 * horizon, -1.0, np.float32), "version": version}
    return records.make_chunk(reply, obs, {"mode": "sample", "temperature": 1.6, "return_tokens": True}, cid,
                              float(cid), {"model": "tiny"})


def test_session_turns_messages_into_episodes(tmp_path):
    root = tmp_path / "ds"
    saved = []
    s = RecordingSession(lambda schema: Recorder(root, schema), ["front"], joint_names=NAMES,
                         on_saved=saved.append)
    img = np.zeros((16, 24, 3), np.uint8)
    # an episode that starts before any stream was seen is refused, loudly
    s.on_event({"type": "start", "episode": 0, "instruction": "wave"})
    assert s.skipped_episodes == 1 and s.recorder is None
    s.on_event({"type": "save", "episode": 0, "label": "success"})  # ignored: nothing was open
    s.on_image("front", img, 0.0)
    s.on_joint_state(["j1", "j0"], np.array([0.1, 0.2]), 1.0, now=100.0)  # reordered to the configured joint order
    assert s.ready.wait(60) and s.recorder is not None
    assert s.on_command(np.zeros(2), 1.0, "policy", 100.0) is False  # no episode running

    s.on_event({"type": "start", "episode": 1, "task": "wave", "instruction": "wave hello", "start_condition": 7})
    s.on_chunk(5, 3, obs_stamp=1.0, now=100.25)  # computed from the joint state that arrived at 100.0
    s.on_record(chunk_record(5, horizon=2, version=3))
    for k in range(3):
        s.on_image("front", img + k, 1.0 + k)
        s.on_joint_state(["j1", "j0"], np.array([k, 10 + k]), 1.0 + k, now=101.0 + k)
        s.on_policy_action(np.array([0.5, 0.5]))
        assert s.on_command(np.array([k, k]), 1.0 + k, "policy", 101.5 + k)
    assert s.on_command(np.array([9, 9]), 4.0, "teleop", 104.5)
    assert not s.on_command(np.array([9, 9]), 4.0, "reset", 104.6)  # resets are not demonstrations
    s.on_event({"type": "end", "episode": 1, "reason": "timeout"})
    assert not s.on_command(np.array([9, 9]), 5.0, "policy", 105.0)  # after the end: not recorded
    s.on_event({"type": "save", "episode": 1, "label": "failure", "label_source": "auto"})
    s.on_event({"type": "start", "episode": 2, "instruction": "wave hello"})
    s.on_command(np.array([1, 1]), 6.0, "policy", 106.0)
    s.on_event({"type": "discard", "episode": 2})
    s.close()

    assert [x["episode_index"] for x in saved] == [0] and saved[0]["length"] == 4
    (rec,) = read_journal(root)
    assert rec.task == "wave hello" and rec.meta["task"] == "wave" and rec.start_condition == "7"
    assert rec.label == "failure" and rec.timeout and rec.meta["end_reason"] == "timeout"
    assert rec.latency_s == [0.25] and rec.interventions == 1 and rec.policy_versions == [3]
    f = load_episode(root, 0).frames
    assert f["observation.state"][:, 0].tolist() == [10, 11, 12, 12]  # reordered to j0, j1
    assert f["action.chunk_id"].tolist() == [5, 5, 5, -1] and f["action.chunk_step"].tolist() == [0, 1, 2, -1]
    (step,) = to_learner_episode(load_episode(root, 0)).steps
    assert step.tokens.tolist() == [500, 501, 502, 503] and step.version == 3
    assert step.executed.tolist() == [True] * 4  # steps 0 and 1 of a 2-step chunk ran under policy
    assert f["control"].tolist() == [0, 0, 0, 1]
    assert f["action.policy"][0].tolist() == [0.5, 0.5] and f["action.policy"][3].tolist() == [0, 0]
    assert f["observation.stamp_ns"].tolist() == [1_000_000_000, 2_000_000_000, 3_000_000_000, 4_000_000_000]


def test_messages_while_the_dataset_opens_are_replayed_in_order(tmp_path):
    import threading

    root = tmp_path / "ds"
    gate = threading.Event()

    def slow_open(schema):  # opening a dataset takes seconds on a robot PC (lerobot's import)
        assert gate.wait(60)
        return Recorder(root, schema)

    saved = []
    s = RecordingSession(slow_open, ["front"], joint_names=NAMES, on_saved=saved.append)
    img = np.zeros((16, 24, 3), np.uint8)
    s.on_image("front", img, 0.0)
    s.on_joint_state(NAMES, np.zeros(2), 0.0, now=0.0)
    assert not s.ready.is_set()
    # a whole short episode, then the start of the next, before the dataset is open
    s.on_event({"type": "start", "episode": 0, "instruction": "wave"})
    for k in range(5):
        s.on_joint_state(NAMES, np.array([k, k]), 1.0 + k, now=1.0 + k)
        assert s.on_command(np.array([k, k]), 1.0 + k, "teleop", 1.0 + k)
    s.on_event({"type": "end", "episode": 0, "reason": "success_check"})
    s.on_event({"type": "save", "episode": 0, "label": "success"})
    s.on_event({"type": "start", "episode": 1, "instruction": "wave"})
    assert s.on_command(np.array([7, 7]), 9.0, "teleop", 9.0)
    gate.set()
    assert s.ready.wait(60)
    s.on_command(np.array([8, 8]), 10.0, "teleop", 10.0)  # after the replay: goes straight in
    s.on_event({"type": "save", "episode": 1, "label": "failure"})
    s.close()
    assert [(x["episode_index"], x["label"], x["length"]) for x in saved] == [(0, "success", 5), (1, "failure", 2)]
    assert load_episode(root, 0).frames["action"][:, 0].tolist() == [0, 1, 2, 3, 4]
    assert load_episode(root, 1).frames["action"][:, 0].tolist() == [7, 8]


def test_records_are_kept_whatever_their_arrival_order_and_masks_mark_what_ran(tmp_path):
    """The policy node tags each command with (chunk, action index). An executor that drops the
    actions whose time has passed starts a chunk at index 1: only the actions that ran are marked
    executed. A chunk's record travels on its own topic: it is kept whether it comes before the
    episode's start, after the chunk's first commands, or (up to a grace period) after the save."""
    root = tmp_path / "ds"
    s = RecordingSession(lambda schema: Recorder(root, schema), ["front"], joint_names=NAMES)
    img = np.zeros((16, 24, 3), np.uint8)
    s.on_image("front", img, 0.0)
    s.on_joint_state(NAMES, np.zeros(2), 0.0, now=0.0)
    assert s.ready.wait(60)
    s.on_record(chunk_record(9, horizon=3))  # of no episode: never claimed
    s.on_record(chunk_record(1, horizon=3))  # before the start event reached the recorder
    s.on_event({"type": "start", "episode": 0, "instruction": "wave"})
    s.on_chunk(1, 0, obs_stamp=0.0, now=0.1)  # a chunk of 3 actions x 2 dims
    for step in (1, 2):  # action 0 was already in the past when the chunk arrived
        assert s.on_command(np.zeros(2), 0.1 * step, "policy", 0.2 * step, chunk=(1, step))
    s.on_chunk(2, 0, obs_stamp=0.2, now=0.5)  # the next chunk arrived; the arm follows it from index 0
    assert s.on_command(np.zeros(2), 0.3, "policy", 0.6, chunk=(2, 0))
    s.on_record(chunk_record(3, horizon=3))  # sampled, never executed: on disk, not trained on
    s.on_event({"type": "end", "episode": 0})
    s.on_event({"type": "save", "episode": 0, "label": "success"})
    s.on_record(chunk_record(2, horizon=3))  # after the save (within the grace period): still kept
    s.close()
    assert s.records_outside == 3
    f = load_episode(root, 0).frames
    assert f["action.chunk_id"].tolist() == [1, 1, 2] and f["action.chunk_step"].tolist() == [1, 2, 0]
    assert [c["chunk_id"] for c in records.read_episode(records.episode_path(root, 0))["chunks"]] == [1, 2, 3]
    assert read_journal(root)[0].meta["chunks_without_record"] == 0
    steps = to_learner_episode(load_episode(root, 0), action_dim=2).steps
    assert [st.tokens[0] for st in steps] == [100, 200]  # chunk 3 ran no action: left out
    assert steps[0].executed.tolist() == [False, False, True, True, True, True]  # actions 1 and 2 of chunk 1
    assert steps[1].executed.tolist() == [True, True, False, False, False, False]  # action 0 of chunk 2
    assert steps[0].observation["state"].tolist() == [1, 0] and steps[0].temperature == 1.6


def test_a_joint_state_of_another_arm_is_refused_and_the_last_good_one_kept(tmp_path):
    s = RecordingSession(lambda schema: Recorder(tmp_path / "ds", schema), ["front"], joint_names=NAMES)
    s.on_joint_state(["j0", "j1"], np.array([0.1, 0.2]), 1.0, now=100.0)
    with pytest.raises(ValueError, match=r"without \['j1'\].*another arm on this ROS domain, or set robot_description"):
        s.on_joint_state(["j0", "fr3_joint1"], np.array([9.0, 9.0]), 2.0, now=101.0)
    assert np.allclose(s._q, [0.1, 0.2])
