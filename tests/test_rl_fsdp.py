"""FSDP full fine-tuning (vla_robot/rl/distributed.py): 2 gloo processes, as torchrun starts them, make
the same GRPO update of the tiny policy as 1 process on the full batch."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from test_rl_learner import make_group
from vla_robot.policy import load_policy
from vla_robot.rl.config import preset
from vla_robot.rl.learner import Learner

torch.set_num_threads(1)
WORLD = 2
# two AdamW steps of 4 episodes (8 chunks each); micro-batches of 7 chunks (the ranks compute 4 and 3), then
# of 1, which leaves rank 1 without rows: it must still join the forward and the backward
CFG = dict(group_size=4, batch_groups=2, mini_batch_size=4, mode="rl", lr=1e-3, micro_batch_chunks=7)
# Float rounding only: the ranks sum their rows' gradients in another order than one process does, so
# gradients agree to ~1e-7 relative. AdamW's first steps are about lr·g/|g|, so an element whose gradient
# is near zero can move by a visible part of lr on one side only: all but 1 in 1000 weights agree within
# 1e-6, and every weight within 2% of the update's largest move (lr 1e-3, 2 steps: ~2e-3).
CLOSE, FEW, WORST = 1e-6, 1e-3, 0.02


def update(out: dict, out_dir=None) -> Learner:
    """One GRPO update of the tiny policy on two groups of real sampled episodes (the same in every process),
    checkpointed in ``out_dir`` (under FSDP by rank 0, from the gathered weights)."""
    runtime = load_policy(preset="tiny", seed=0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    episodes = make_group(runtime, 0, [1, 0, 0, 1], rng, gen=gen) + make_group(runtime, 1, [0, 0, 1, 0], rng, gen=gen)
    learner = Learner(runtime, preset("tiny", **CFG), out_dir=out_dir)  # under torchrun (WORLD_SIZE 2): sharded
    for e in episodes:
        learner.add(e)
    out["stats"] = learner.step()
    return learner


def _rank(rank: int, port: int, path: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out = {}
    learner = update(out, out_dir)
    model = learner.runtime.model
    out["local"] = sum(p.to_local().numel() for p in model.parameters())
    out["total"] = sum(p.numel() for p in model.parameters())
    full = learner.dist.full_state_dict(model)
    if learner.dist.is_main:
        torch.save({"state": full, **out}, path)
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three processes load torch, timm and transformers: 45-75 s on the 2 shared cores
def test_two_gloo_processes_make_the_one_process_update(tmp_path, monkeypatch):
    path = str(tmp_path / "fsdp.pt")
    mp.spawn(_rank, args=(free_port(), path, str(tmp_path / "out")), nprocs=WORLD, join=True)
    fsdp = torch.load(path, weights_only=False)
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    ref = {}
    learner = update(ref)
    assert learner.dist is None
    assert fsdp["local"] < 0.6 * fsdp["total"]  # rank 0 held about half of the weights: really sharded
    one, two = ref["stats"], fsdp["stats"]
    assert one["opt_steps"] == two["opt_steps"] == 2 and one["tokens"] == two["tokens"]
    assert one["micro_batches"] == two["micro_batches"]
    assert abs(one["loss"] - two["loss"]) < 1e-6 and abs(one["grad_norm"] - two["grad_norm"]) < 1e-5 * one["grad_norm"]
    assert two["ratio_acting"]["n"] == one["ratio_acting"]["n"] > 0
    state = learner.runtime.model.state_dict()
    assert set(fsdp["state"]) == set(state)
    dw = torch.cat([(fsdp["state"][k] - v).abs().flatten() for k, v in state.items()])
    w0 = load_policy(preset="tiny", seed=0).model.state_dict()
    moved = max(float((w0[k] - v).abs().max()) for k, v in state.items())
    print(f"FSDP against one process: max |dw| {float(dw.max()):.3g}, {int((dw > CLOSE).sum())} of {len(dw)} "
          f"weights beyond {CLOSE:g}; largest move {moved:.3g}")
    assert float((dw > CLOSE).float().mean()) < FEW and float(dw.max()) < WORST * moved
    # rank 0's checkpoint holds the whole updated model, as the gathered state dict does
    saved = load_policy(checkpoint=str(tmp_path / "out" / "checkpoint")).model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], fsdp["state"][k]) for k in state)


def test_torchrun_variables_missing_say_how_to_start(monkeypatch):
    from vla_robot.rl import distributed

    runtime = load_policy(preset="tiny", seed=0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.from_env(runtime) is None  # one process: nothing changes
    assert distributed.process_device("cuda") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert [distributed.process_device(d) for d in ("cuda", "cuda:0", "cpu")] == ["cuda:1", "cuda:0", "cpu"]
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="start several learner processes with torchrun"):
        distributed.from_env(runtime)
    assert not torch.distributed.is_initialized()
    # LoRA under torchrun is refused by the learner itself (tests/test_rl_lora.py)
