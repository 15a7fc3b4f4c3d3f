"""recorder_node in the rl_finetune graph on the twin (real rclpy, in-process policy server): the
sampled tokens, log-probs and executed masks the RL learner needs arrive in the dataset."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rclpy")


@pytest.mark.slow
@pytest.mark.ros
def test_rl_graph_records_tokens_logprobs_and_executed_masks(tmp_path):
    from vla_robot.data.reader import iter_episodes
    from vla_robot.nodes.runner import GraphRunner

    root = tmp_path / "rl" / "dataset"
    overrides = {"recorder_node": {"root": str(root)},
                 "episode_manager_node": {"episodes": 1, "max_duration_s": 1.0, "autostart": False, "prompt": False}}
    with GraphRunner("rl_finetune", sim=True, serve_policy="tiny", overrides=overrides) as g:
        session = g.nodes["recorder_node"].session
        assert session.ready.wait(120), "the recorder never saw every stream"
        results = g.run_episodes(1, timeout_s=240)
        deadline = time.monotonic() + 60
        while session.finished < sum(r.saved for r in results) and time.monotonic() < deadline:
            time.sleep(0.05)
    (ep,) = list(iter_episodes(root))
    assert ep.record.label == results[0].label and ep.record.meta["mode"] == "rl"
    f = ep.frames
    token_dim = f["action.tokens"].shape[1]
    assert token_dim == 48  # config/rl_finetune.yaml: chunk 8 x 6 joints of the tiny policy
    first = f["action.tokens"].any(axis=1)
    chunk_ids = f["action.chunk_id"][first]
    assert first.sum() >= 2 and len(set(chunk_ids.tolist())) == first.sum()  # one token set per chunk
    assert np.all(f["action.logprobs"][first] < 0) and not f["action.logprobs"][~first].any()
    toks = f["action.tokens"][first]
    assert toks.min() >= 0 and np.ptp(toks) < 256  # all from the 256 action bins
    executed = f["action.executed"][first]
    assert np.all(executed.sum(axis=1) % 6 == 0) and executed.any(axis=1).all()
    assert np.all(f["policy.latency"][first] >= 0) and ep.record.latency_s
    assert ep.record.policy_versions == [0]
