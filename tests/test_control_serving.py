"""ChunkController over the real ZMQ policy server and client, on the real clock.

The model behind the server is a numpy stand-in that follows a joint path from the observed state
(the policy itself is tested in test_policy.py; loading torch here would cost more than this
whole file). Everything from the client's socket to the safety filter is the real thing.
"""
import numpy as np
import pytest

from vla_robot.control import ChunkController, ControlConfig, ExecutorConfig, JointLimits, RateLoop, WatchdogConfig
from vla_robot.control.sim import PathPolicy, SimArm

zmq = pytest.importorskip("zmq")
from vla_robot.serving.client import PolicyClient  # noqa: E402
from vla_robot.serving.server import PolicyServer  # noqa: E402

HZ = 30.0


class PathRuntime:
    """The runtime interface the server needs (metadata, infer, load_weights), in numpy."""

    def __init__(self, horizon=12):
        t = np.linspace(0, 1, 300)[:, None]
        self.path = np.hstack([0.8 * np.sin(2 * np.pi * t), 0.5 * t, 0.5 + 0.2 * np.sin(4 * np.pi * t)])
        self.policy = PathPolicy(self.path, horizon)
        self.metadata = {"cameras": ["front"], "proprio_dim": 3, "action_dim": 3, "chunk_size": horizon,
                         "image_size": 8, "version": 0, "model": "path"}
        self.version = 0

    def infer(self, observations, *, mode="greedy", temperature=None, return_tokens=False, seeds=None):
        return [{"actions": self.policy.chunk(o["state"]), "tokens": None, "logprobs": None, "version": self.version}
                for o in observations]

    def load_weights(self, state, version):  # pragma: no cover - not used here
        self.version = version


def limits():
    return JointLimits(["j0", "j1", "gripper"], [-2, -2, 0], [2, 2, 1], [3, 3, 5], [40, 40, 80])


def test_controller_drives_through_the_real_server_and_holds_when_it_goes_away():
    runtime = PathRuntime()
    server = PolicyServer(runtime, bind="tcp://127.0.0.1:*", weights_bind=None).start()
    client = PolicyClient(server.address, timeout_s=1.0)
    cfg = ControlConfig(
        control_hz=HZ,
        request_timeout_s=1.0,
        executor=ExecutorConfig(kind="async"),
        watchdog=WatchdogConfig(max_observation_age_s=0.5, max_chunk_gap_s=0.3),
    )
    ctl = ChunkController(cfg, limits(), client)
    arm = SimArm(runtime.path[0], tau=0.03)
    image = np.zeros((8, 8, 3), np.uint8)
    loop = RateLoop(HZ)
    results = []
    stopped_at = None
    try:
        for k, now in enumerate(loop):
            if k == 0:
                ctl.reset(arm.q, now)
            if k == 60:
                server.stop()
                stopped_at = now
            r = ctl.tick(now, now, lambda: {"images": {"front": image}, "state": arm.q.astype(np.float32),
                                            "instruction": "follow the path"})
            arm.step(r.command, 1 / HZ)
            results.append(r)
            if k == 90:
                break
    finally:
        client.close()
        server.stop()
    lim = limits()
    cmds = np.stack([r.command for r in results])
    assert np.all(cmds >= lim.lower) and np.all(cmds <= lim.upper)
    assert np.all(np.abs(np.diff(cmds, axis=0)) <= lim.max_velocity / HZ + 1e-9)
    running = results[:60]
    first = next(i for i, r in enumerate(running) if r.received is not None)
    assert ctl.stats.replies >= 3 and first <= 10
    policy_ticks = [r for r in running[first:] if r.source == "policy"]
    assert len(policy_ticks) >= 0.8 * len(running[first:])  # real clock on a shared machine: allow hiccups
    assert all("version" in r.chunk and "timings" in r.chunk for r in policy_ticks)
    assert runtime.policy.progress > 10  # the arm moved along the path
    # the server is gone: within max_chunk_gap_s (+ the request already in flight) the arm holds still
    after = [r for r in results[60:] if r.now >= stopped_at + 0.3 + 0.4]
    assert after and all(r.source == "hold" for r in after)
    assert ctl.watchdog.holds["no_chunk"] > 0 or ctl.stats.holds["chunk ran out before the next arrived"] > 0
    assert np.abs(after[-1].command - after[-2].command).max() < 1e-6
