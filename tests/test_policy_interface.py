"""The one policy interface: the in-process runtime, the ZMQ client (against a real server on
loopback) and the simulated server all implement policy.interface.Policy, give the same chunks for
the same seeds, drive the ChunkController, and refuse bad input with a clear error."""
import time

import numpy as np
import pytest
import torch

from vla_robot.control import ChunkController, ControlConfig, JointLimits, WatchdogConfig
from vla_robot.control.sim import Latency, SimClock, SimServer
from vla_robot.policy import load_policy
from vla_robot.policy.interface import AsyncPolicy, Policy
from vla_robot.serving.client import PolicyClient
from vla_robot.serving.server import PolicyServer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runtime():
    return load_policy(preset="tiny", seed=0)


@pytest.fixture(scope="module")
def client(runtime):
    with PolicyServer(runtime, bind="tcp://127.0.0.1:*", weights_bind=None, max_wait_ms=2) as server:
        with PolicyClient(server.address, timeout_s=20) as c:
            yield c


@pytest.fixture
def sim(runtime):
    meta = runtime.metadata
    chunk = np.zeros((meta["chunk_size"], meta["action_dim"]), np.float32)
    return SimServer(SimClock(), lambda obs: chunk, Latency(0.05))


def make_obs(meta, seed=0):
    rng = np.random.default_rng(seed)
    s = meta["image_size"]
    return {
        "images": {cam: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for cam in meta["cameras"]},
        "state": rng.uniform(-0.5, 0.5, meta["proprio_dim"]).astype(np.float32),
        "instruction": f"pick up cube {seed}",
    }


def wide_limits(n):
    return JointLimits([f"j{i}" for i in range(n)], [-10.0] * n, [10.0] * n, [50.0] * n, [1000.0] * n)


def test_runtime_client_and_sim_server_are_policies(runtime, client, sim):
    for policy in (runtime, client, sim):
        assert isinstance(policy, Policy), type(policy).__name__
    assert isinstance(client, AsyncPolicy) and isinstance(sim, AsyncPolicy)
    assert not isinstance(runtime, AsyncPolicy)  # in-process: infer only, the controller blocks on it
    assert not isinstance(object(), Policy)


def test_seeded_sampling_gives_the_same_chunks_in_process_and_served(runtime, client):
    meta = runtime.metadata
    obs = [make_obs(meta, i) for i in range(3)]
    options = {"mode": "sample", "temperature": 1.6, "return_tokens": True}
    local = runtime.infer(obs, seeds=[7, 8, 9], **options)
    served = client.infer(obs, seeds=[7, 8, 9], **options)
    assert len(local) == len(served) == 3
    for a, b in zip(local, served):
        assert set(a) >= {"actions", "tokens", "logprobs", "version"} and set(b) >= set(a)
        assert a["actions"].dtype == np.float32 and a["actions"].shape == (meta["chunk_size"], meta["action_dim"])
        assert a["tokens"].dtype == np.int64 and a["logprobs"].dtype == np.float32
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_allclose(a["actions"], b["actions"], atol=1e-5)
        np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-4)
        assert a["version"] == b["version"] == runtime.version
    # the seed, not the batch, decides the chunk; another seed gives another one
    alone = client.infer(obs[1:2], seeds=[8], **options)[0]
    np.testing.assert_array_equal(alone["tokens"], local[1]["tokens"])
    assert not np.array_equal(client.infer(obs[1:2], seeds=[80], **options)[0]["tokens"], local[1]["tokens"])
    # without return_tokens the reply still has the keys, empty
    plain = runtime.infer(obs[:1])[0]
    assert plain["tokens"] is None and plain["logprobs"] is None and plain["version"] == runtime.version


def test_the_version_in_a_reply_is_the_weights_that_computed_it(runtime):
    rt = load_policy(preset="tiny", seed=0)
    obs = [make_obs(rt.metadata)]
    before = rt.infer(obs)[0]
    rt.load_weights(runtime.state_dict(), version=5)
    assert before["version"] == 0 and rt.infer(obs)[0]["version"] == 5


def test_controller_blocks_on_a_plain_policy(runtime):
    """The in-process runtime has infer only: the controller asks with infer([obs]) and waits."""
    meta = runtime.metadata
    obs = make_obs(meta)
    clock = SimClock()
    ctl = ChunkController(ControlConfig(), wide_limits(meta["action_dim"]), runtime, clock=clock)
    assert ctl.blocking
    ctl.reset(obs["state"], 0.0)
    r = ctl.tick(0.0, 0.0, lambda: obs)
    assert r.requested and r.source == "policy", (r.source, r.reason, ctl.stats.last_error)
    want = runtime.infer([obs])[0]
    np.testing.assert_array_equal(r.received["actions"], want["actions"])
    assert r.chunk["version"] == runtime.version
    np.testing.assert_allclose(r.raw, want["actions"][r.index])


def test_controller_does_not_block_on_an_async_policy(runtime, client):
    """The ZMQ client is an AsyncPolicy: the request goes out, ticks hold until the reply is in."""
    meta = runtime.metadata
    obs = make_obs(meta, 3)
    cfg = ControlConfig(request_timeout_s=20.0, watchdog=WatchdogConfig(max_observation_age_s=5.0, max_chunk_gap_s=20.0))
    ctl = ChunkController(cfg, wide_limits(meta["action_dim"]), client)
    assert not ctl.blocking
    t0 = time.monotonic()
    ctl.reset(obs["state"], t0)
    first = ctl.tick(t0, t0, lambda: obs)
    assert first.requested and ctl.stats.requests == 1
    r = first
    while r.source != "policy" and time.monotonic() - t0 < 20.0:
        time.sleep(cfg.dt)
        now = time.monotonic()
        r = ctl.tick(now, now, lambda: obs)
    assert r.source == "policy", (r.reason, ctl.stats.last_error)
    np.testing.assert_allclose(r.chunk["actions"], runtime.infer([obs])[0]["actions"], atol=1e-5)
    assert r.chunk["version"] == runtime.version and ctl.stats.errors == 0


def test_controller_takes_only_a_policy_and_known_options(runtime):
    limits = wide_limits(runtime.metadata["action_dim"])

    class ActOnly:  # the old blocking shape is no longer a policy
        def act(self, observation, **options):
            return {}

    with pytest.raises(TypeError, match="ActOnly is not a Policy: it needs infer"):
        ChunkController(ControlConfig(), limits, ActOnly())
    with pytest.raises(ValueError, match=r"request_options \['seed'\] unknown; allowed: mode, return_tokens, temperature"):
        ChunkController(ControlConfig(), limits, runtime, request_options={"mode": "sample", "seed": 3})


@pytest.mark.parametrize("which", ["runtime", "client", "sim"])
def test_bad_input_is_a_clear_error_in_every_policy(which, request):
    policy = request.getfixturevalue(which)
    obs = make_obs(request.getfixturevalue("runtime").metadata)
    with pytest.raises(ValueError, match="seeds: one per observation expected, got 1 for 2 observations"):
        policy.infer([obs, obs], mode="sample", seeds=[1])
    with pytest.raises(ValueError, match=r"observations\[1\] must be a dict with images, state, instruction; got str"):
        policy.infer([obs, "front.png"])
    with pytest.raises(ValueError, match=r"list of observation dicts .* got dict; wrap a single observation in a list"):
        policy.infer(obs)
    with pytest.raises(ValueError, match=r"seeds\[0\] must be an int or None, got 1.5"):
        policy.infer([obs], mode="sample", seeds=[1.5])
    with pytest.raises(ValueError, match="mode must be one of 'greedy', 'sample', got 'beam'"):
        policy.infer([obs], mode="beam")
