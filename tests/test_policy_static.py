"""Static-shape serving (vla_robot/policy/static.py) against the eager dynamic path, on the tiny preset.

On the CPU the static path runs the same buffers and padding a CUDA graph replays; the capture itself
is tested only where CUDA is present (test_cuda_graphs_equal_eager)."""
import logging

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vla_robot.config import load_node_config
from vla_robot.policy.config import ServingConfig
from vla_robot.policy.runtime import load_policy
from vla_robot.policy.static import bucket_for

torch.set_num_threads(1)

INSTRUCTIONS = ["pick up the cube", "put the red cube in the blue bowl on the left of the table", "stack",
                "open the drawer and put the cup inside it, then close it"]


def make_obs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"images": {"front": rng.integers(0, 256, (64, 80, 3), dtype=np.uint8),
                        "wrist": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)},
             "state": rng.uniform(-1, 1, 6), "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)]} for i in range(n)]


def both_paths(rt, obs, **kw):
    """(eager dynamic, static) replies of the same runtime for ``obs``."""
    rt.configure_serving(ServingConfig(graphs="off", static_shapes="off"))
    eager = rt.infer(obs, **kw)
    rt.configure_serving(ServingConfig(graphs="off", static_shapes="on", batch_buckets=[1, 2, 4, 8]))
    static = rt.infer(obs, **kw)
    return eager, static


@pytest.fixture(scope="module")
def rt():
    return load_policy(preset="tiny", seed=0)


@pytest.mark.parametrize("n", [1, 3, 6, 11])  # buckets 1, 4, 8, and 11 > 8: pieces of 8 and 4
def test_static_discrete_equals_eager(rt, n):
    obs = make_obs(n, seed=n)
    eager, static = both_paths(rt, obs, return_tokens=True)
    for e, s in zip(eager, static, strict=True):
        assert np.array_equal(e["tokens"], s["tokens"])  # greedy: identical tokens
        np.testing.assert_allclose(s["logprobs"], e["logprobs"], atol=1e-5)
        np.testing.assert_array_equal(s["actions"], e["actions"])
    # sampling with per-row seeds: padding rows draw nothing, so every row's sample is unchanged
    eager, static = both_paths(rt, obs, mode="sample", return_tokens=True, seeds=list(range(n)))
    assert all(np.array_equal(e["tokens"], s["tokens"]) for e, s in zip(eager, static))


@pytest.mark.parametrize("overrides", [{"head": "l1"}, {"head": "l1", "film": True}])
def test_static_l1_actions_within_1e5(overrides):
    rt = load_policy(preset="tiny", seed=0, overrides=overrides)
    obs = make_obs(5, seed=3)
    eager, static = both_paths(rt, obs)
    for e, s in zip(eager, static, strict=True):
        assert np.abs(e["actions"] - s["actions"]).max() < 1e-5
    # and the padding is really there: the static pass ran at bucket 8 with a padded sequence
    (rows, seq_len), = rt.serving._runners
    assert rows == 8 and seq_len % 16 == 0 and seq_len > rt.model.seq_len_for(int(rt.batch(obs).prompt_lengths.max()))


class HostSyncs(TorchDispatchMode):
    """Records the ops that read a device value back to the host or have data-dependent shapes:
    inside CUDA graph capture each of them is an error."""

    SYNCING = ("_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "masked_select", "unique")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNCING:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("head", ["discrete", "l1"])
def test_static_pass_has_no_host_sync(head):
    """What makes the pass capturable, checked where no GPU is: at a given seq_len nothing in
    vision, projector, mask, Llama or head reads a value back (the dynamic pass does: S is the longest
    prompt's, read from the lengths)."""
    rt = load_policy(preset="tiny", seed=0, overrides={"head": head})
    batch = rt.batch(make_obs(2))
    seq_len = rt.model.seq_len_for(int(batch.prompt_lengths.max()) + 5)  # 5 padding positions
    with torch.inference_mode(), HostSyncs() as static:
        rt.model.serving_outputs(batch, seq_len)
    assert static.seen == []
    with torch.inference_mode(), HostSyncs() as dynamic:
        rt.model.serving_outputs(batch)
    assert dynamic.seen  # the detector sees the dynamic pass's read-back


def test_hot_swap_reaches_the_static_buffers(rt):
    """load_weights writes into the same tensors, so buckets (and graphs) stay and serve the new weights;
    weights that moved to new tensors make the buckets go and be rebuilt."""
    obs = make_obs(3, seed=9)
    rt.configure_serving(ServingConfig(static_shapes="on"))
    before = rt.infer(obs, return_tokens=True)
    runners = dict(rt.serving._runners)
    state = rt.state_dict()
    try:
        g = torch.Generator().manual_seed(0)
        rt.load_weights({"language_model.lm_head.weight": torch.randn(state["language_model.lm_head.weight"].shape, generator=g)},
                        version=1, delta=True)
        after = rt.infer(obs, return_tokens=True)
        assert rt.serving._runners == runners  # same buffers
        eager, static = both_paths(rt, obs, return_tokens=True)
        assert any(not np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(after, before))
        assert all(np.array_equal(a["tokens"], e["tokens"]) for a, e in zip(after, eager))
        w = rt.model.projector.fc1.weight
        w.data = w.data.clone()  # same values, new storage: the buckets hold stale addresses
        assert rt.infer(obs, return_tokens=True)[0]["tokens"].tolist() == static[0]["tokens"].tolist()
        assert all(r not in runners.values() for r in rt.serving._runners.values())
    finally:
        rt.load_weights(state, version=0)
        rt.configure_serving(ServingConfig())


def test_graphs_fall_back_on_cpu_with_a_log_line(rt, caplog):
    with caplog.at_level(logging.INFO, logger="vla_robot.policy.static"):
        rt.configure_serving(ServingConfig(graphs="auto"))
    assert "CUDA graphs: unavailable (no CUDA: the policy runs on cpu); serving eager" in caplog.text
    assert rt.serving.describe() == "eager" and not rt.serving.graphs
    assert len(rt.infer(make_obs(2))) == 2


def test_buckets_and_config_errors(tmp_path):
    assert [bucket_for(n, [1, 2, 4, 8]) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="exceed the largest batch bucket 8"):
        bucket_for(9, [1, 2, 4, 8])
    with pytest.raises(ValueError, match="increasing distinct batch sizes"):
        ServingConfig(batch_buckets=[4, 2]).validate()
    with pytest.raises(ValueError, match="graphs 'auto' needs static shapes"):
        ServingConfig(static_shapes="off").validate()
    from vla_robot.serving.config import ServerConfig

    cfg = load_node_config(ServerConfig, "config/policy_server.yaml", "policy_server")
    assert cfg.serving.graphs == "auto" and cfg.serving.batch_buckets == [1, 2, 4, 8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_equal_eager():
    rt = load_policy(preset="tiny", seed=0, device="cuda")
    obs = make_obs(5, seed=1)
    rt.configure_serving(ServingConfig(graphs="off", static_shapes="off"))
    eager = rt.infer(obs, return_tokens=True)
    rt.configure_serving(ServingConfig(graphs="auto"))
    graphed = rt.infer(obs, return_tokens=True)
    assert rt.serving.graphs and rt.serving.describe() == "graphed (1 captured)"
    again = rt.infer(obs, return_tokens=True)  # a replay, not a capture
    for e, g, a in zip(eager, graphed, again, strict=True):
        assert np.array_equal(e["tokens"], g["tokens"]) and np.array_equal(g["tokens"], a["tokens"])
        np.testing.assert_allclose(g["logprobs"], e["logprobs"], atol=1e-4)
