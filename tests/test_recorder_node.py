"""The on-policy contract through the real nodes, each in its own process as ``ros2 launch`` runs them
(the rl_finetune graph on the stand-in robot: the twin's real-time camera and arm backends; the async executor on policy_node's wall-clock timer), with a real PolicyServer
serving the tiny policy over ZMQ on 127.0.0.1 in this process: each chunk the arm executed is saved
with exactly what the server saw, and at the version that acted the learner's recomputed log-probs
equal the behaviour log-probs."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
torch = pytest.importorskip("torch")


class CapturingRuntime:
    """The tiny runtime, recording every observation the server hands it (server side, after decoding)."""

    def __init__(self, runtime):
        self._rt = runtime
        self.seen: list[dict] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._rt, name)

    def infer(self, observations, **kw):
        with self._lock:
            self.seen.extend({"images": {c: np.array(v) for c, v in o["images"].items()},
                              "state": np.array(o["state"]), "instruction": o["instruction"]} for o in observations)
        return self._rt.infer(observations, **kw)


def fingerprint(obs: dict) -> tuple:
    """An observation's exact content: instruction, state bytes and each camera's dtype, shape and bytes."""
    images = tuple((cam, img.dtype.str, img.shape, img.tobytes()) for cam, img in sorted(obs["images"].items()))
    return obs["instruction"], obs["state"].dtype.str, obs["state"].tobytes(), images


def learner_episodes(root) -> tuple[list, list]:
    """(saved episodes, learner episodes of those with an executed chunk). On a loaded 2-core machine
    an episode can end (a watchdog fault) before any chunk executed: a BadEpisode, skipped."""
    from vla_robot.data.reader import iter_episodes
    from vla_robot.rl.dataset import BadEpisode, to_learner_episode

    saved, good = list(iter_episodes(root)), []
    for rec in saved:
        try:
            good.append((rec, to_learner_episode(rec, action_dim=6)))  # labelled or not: the contract holds
        except BadEpisode as e:
            assert "none of its" in str(e), e  # no executed chunk; never a missing or broken record
    return saved, good


def run_standin(server: str, out, timeout_s: float = 300.0):
    """The stand-in robot graph as processes until the recorder has saved two learner episodes."""
    from vla_robot.nodes.processes import ProcessGraph
    from vla_robot.nodes.rehearse import HARDWARE, standin_graph

    # episodes back to back, saved unlabelled when no label comes (the contract holds whatever the label)
    manager = {"max_duration_s": 2.5, "reset_source": "none", "autostart": True, "label_timeout_s": 0.5}
    specs = [s for s in standin_graph(server, out, {"episode_manager_node": manager})
             if s.name not in ("teleop_node", "standin_person")]
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(120 + os.getpid() % 100)}
    graph = ProcessGraph(specs, out / "logs", groups={"hardware": HARDWARE}, env=env).start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert not graph.exited(), {u: graph.log_text(u)[-2000:] for u in graph.exited()}
            if (out / "dataset").exists() and len(learner_episodes(out / "dataset")[1]) >= 2:
                break
            time.sleep(2.0)
    finally:
        graph.stop(timeout_s=30.0, order=("standin_person", "episode_manager_node", "policy_node", "recorder_node"))
    return learner_episodes(out / "dataset")


@pytest.mark.slow
@pytest.mark.ros
def test_recorded_chunks_reproduce_the_behaviour_logprobs_on_what_the_server_saw(tmp_path):
    from vla_robot.data import records
    from vla_robot.policy import load_policy
    from vla_robot.serving.server import PolicyServer

    torch.set_num_threads(1)
    runtime = load_policy(preset="tiny", seed=0)
    capture = CapturingRuntime(runtime)
    root = tmp_path / "dataset"
    with PolicyServer(capture, bind="tcp://127.0.0.1:*", weights_bind=None).start() as server:
        saved, good = run_standin(server.address, tmp_path)
    assert len(good) >= 2, saved
    # no executed chunk lost its tokens, in any saved episode (whatever the arrival order of its record)
    assert all(rec.record.meta["chunks_without_record"] == 0 for rec in saved)
    sent = {fingerprint(o) for o in capture.seen}
    late = steps = 0
    for rec, ep in good:
        # the server's metadata as policy_node got it: the policy's own (what the learner compares) and more
        assert records.served_by(runtime.metadata).items() <= ep.served_by.items() and ep.served_by["dtype"] == "float32"
        assert ep.steps and all(s.version == 0 and s.temperature == 1.6 for s in ep.steps)
        steps += len(ep.steps)
        for s in ep.steps:  # bit-identical to an observation the server received
            assert s.observation["instruction"] == "touch the red cube"
            assert fingerprint(s.observation) in sent
        # at the version that acted, the learner reproduces the behaviour log-probs
        with torch.no_grad():
            lp = runtime.model.token_logprobs(runtime.batch([s.observation for s in ep.steps]),
                                              torch.as_tensor(np.stack([s.tokens for s in ep.steps])), 1.6)
        np.testing.assert_allclose(lp.numpy(), np.stack([s.logprobs for s in ep.steps]), atol=1e-5, rtol=0)
        # chunks ran ticks after their observation (async executor, wall clock): the frames that executed a
        # chunk are stamped later than the observation it was sampled from, which is what the record keeps
        frames = rec.frames
        stamps = frames["observation.stamp_ns"] / 1e9
        for c in records.read_episode(records.episode_path(root, rec.index))["chunks"]:
            rows = np.flatnonzero(frames["action.chunk_id"] == c["chunk_id"])
            late += bool(len(rows)) and stamps[rows[0]] - c["obs_stamp"] > 1.5 / 30
    assert steps >= 2 and late >= 1
