"""One full fine-tuning GRPO update in 1 process against FSDP over 2 processes (issue 19).

tiny on the CPU (gloo), at a real episode length: 2 groups of 4 episodes, ``--chunks`` chunks each
(a 30-s episode has 100-200), tokens sampled by the policy itself. Each case runs in fresh
processes; per process it reports the update's seconds and its peak resident memory (ru_maxrss,
which includes torch itself), and the largest weight difference between the two results.
On a 2-core machine two processes share the cores, so FSDP is not faster here: what it buys is
memory per process (weights, gradients and AdamW state sharded), which is what a 7B model needs.
The 7B figures need GPUs (``torchrun --nproc-per-node N``); this script does not estimate them.

    .venv/bin/python benchmarks/fsdp_update.py [--chunks 100] [--world 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time

import numpy as np
import torch
import torch.multiprocessing as mp

from vla_robot.data import schema as S
from vla_robot.policy import load_policy
from vla_robot.rl.config import preset
from vla_robot.rl.episodes import Episode, Step
from vla_robot.rl.learner import Learner


def episodes(runtime, chunks: int) -> list[Episode]:
    """2 groups x 4 episodes of ``chunks`` chunks the policy sampled on random observations, every action executed."""
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    h, d = runtime.cfg.chunk_size, runtime.cfg.action_dim
    out = []
    for start, labels in enumerate(([1, 0, 0, 1], [0, 1, 0, 0])):
        for label in labels:
            obs = [{"images": {c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in runtime.cfg.cameras},
                    "state": rng.uniform(-0.5, 0.5, runtime.cfg.proprio_dim).astype(np.float32),
                    "instruction": "reach the target"} for _ in range(chunks)]
            res = [r for i in range(0, chunks, 16)
                   for r in runtime.infer(obs[i: i + 16], mode="sample", temperature=1.6, return_tokens=True, generator=gen)]
            executed = S.executed_mask(np.repeat(np.arange(chunks), h), np.tile(np.arange(h), chunks),
                                       np.full(chunks * h, S.CONTROL_POLICY), np.arange(chunks), h, d)
            out.append(Episode("reach", start, [Step(o, r["tokens"], r["logprobs"], m) for o, r, m in zip(obs, res, executed)],
                               label, 0))
    return out


def run(chunks: int, path: str | None) -> dict:
    """One update in this process (sharded when torchrun's variables say so); the figures, and the weights."""
    torch.set_num_threads(1)
    runtime = load_policy(preset="tiny", seed=0)
    eps = episodes(runtime, chunks)
    learner = Learner(runtime, preset("tiny", group_size=4, batch_groups=2, mini_batch_size=4, mode="rl"))
    for e in eps:
        learner.add(e)
    t0 = time.perf_counter()
    stats = learner.step()
    out = {"seconds": time.perf_counter() - t0, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "opt_steps": stats["opt_steps"], "tokens": stats["tokens"]}
    state = learner.dist.full_state_dict(runtime.model) if learner.dist else runtime.model.state_dict()
    if path and (learner.dist is None or learner.dist.is_main):
        torch.save({"state": state, **out}, path)
    return out


def _rank(rank: int, world: int, port: int, chunks: int, path: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    out = run(chunks, path)
    figures = [None] * world
    torch.distributed.all_gather_object(figures, out)
    if rank == 0:
        torch.save({"ranks": figures}, path + ".ranks")
    torch.distributed.destroy_process_group()


def _one(chunks: int, path: str) -> None:
    run(chunks, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=100, help="chunks per episode (a 30-s episode has 100-200)")
    ap.add_argument("--world", type=int, default=2, help="FSDP processes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one_path, fsdp_path = f"{tmp}/one.pt", f"{tmp}/fsdp.pt"
        ctx = mp.get_context("spawn")
        p = ctx.Process(target=_one, args=(args.chunks, one_path))
        p.start()
        p.join()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank, args=(args.world, port, args.chunks, fsdp_path), nprocs=args.world, join=True)
        one, fsdp = torch.load(one_path, weights_only=False), torch.load(fsdp_path, weights_only=False)
        ranks = torch.load(fsdp_path + ".ranks", weights_only=False)["ranks"]
    diff = max(float((fsdp["state"][k] - v).abs().max()) for k, v in one["state"].items())
    print(f"tiny, full fine-tuning, one GRPO update: 8 episodes x {args.chunks} chunks, {one['opt_steps']} AdamW steps, "
          f"{one['tokens']:.0f} tokens; CPU, 1 thread per process")
    print(f"  {'case':22} {'seconds':>8} {'peak RSS MiB per process':>26}")
    print(f"  {'1 process':22} {one['seconds']:8.1f} {one['rss_mib']:26.0f}")
    rss = " / ".join(f"{r['rss_mib']:.0f}" for r in ranks)
    case = f"FSDP, {args.world} gloo processes"
    print(f"  {case:22} {max(r['seconds'] for r in ranks):8.1f} {rss:>26}")
    print(f"  largest weight difference between the two: {diff:.3g}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
