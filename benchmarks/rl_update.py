"""GRPO update throughput of the learner: tokens/s and episodes/s, peak memory.

tiny on the CPU always; oft-7b (random weights, bf16) on a GPU when one is available. The baseline
in the same run is a plain teacher-forced SFT step on the same observations and tokens (what any
trainer pays), so the figure to read is the GRPO update's overhead over it.

    .venv/bin/python benchmarks/rl_update.py [--episodes 16] [--steps 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from vla_robot.policy import load_policy
from vla_robot.rl.config import preset
from vla_robot.rl.episodes import Episode, Step, executed_mask
from vla_robot.rl.learner import Learner


def synthetic_episodes(runtime, n: int, steps: int, group_size: int, rng: np.random.Generator) -> list[Episode]:
    """Episodes the policy really sampled on random observations, half successes in every group."""
    cfg = runtime.cfg
    size = cfg.vision.image_size
    out = []
    for i in range(n):
        obs = [{"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cfg.cameras},
                "state": rng.uniform(-0.5, 0.5, cfg.proprio_dim).astype(np.float32), "instruction": "touch the red cube"}
               for _ in range(steps)]
        res = runtime.predict(obs, mode="sample", temperature=1.6, return_tokens=True)
        st = [Step(o, r["tokens"], r["logprobs"], executed_mask(cfg.chunk_size, cfg.chunk_size, cfg.action_dim))
              for o, r in zip(obs, res)]
        out.append(Episode("touch the red cube", i // group_size, st, int(i % 2 == 0), runtime.version))
    return out


def bench(runtime, episodes: list[Episode], group_size: int, repeats: int, lr: float, mini_batch: int) -> dict:
    cfg = preset("tiny", group_size=group_size, batch_groups=len(episodes) // group_size, mini_batch_size=mini_batch,
                 lr=lr, mode="rl")
    learner = Learner(runtime, cfg)
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    # baseline: a teacher-forced SFT step over the same (observation, tokens) pairs
    obs = [s.observation for e in episodes for s in e.steps]
    toks = torch.from_numpy(np.stack([s.tokens for e in episodes for s in e.steps]))
    opt = torch.optim.AdamW(learner.params, lr=lr)
    base, grpo = [], []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for i in range(0, len(obs), mini_batch):
            loss = -runtime.model.token_logprobs(runtime.batch(obs[i:i + mini_batch]), toks[i:i + mini_batch].to(runtime.device), 1.0).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        base.append(time.perf_counter() - t)
        for e in episodes:
            e.episode_id = e.episode_id + "x"  # a fresh copy each repeat (the learner skips used ids)
            e.version = learner.version
            learner.add(e)
        sync()
        t = time.perf_counter()
        stats = learner.step()
        sync()
        grpo.append(time.perf_counter() - t)
    tokens = stats["tokens"]
    return {"episodes": len(episodes), "tokens": tokens, "grpo_s": float(np.median(grpo)), "sft_s": float(np.median(base)),
            "grpo_tokens_per_s": tokens / np.median(grpo), "grpo_episodes_per_s": len(episodes) / np.median(grpo),
            "sft_tokens_per_s": toks.numel() / np.median(base)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="chunk queries per episode")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-gpu", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    rows = []
    rt = load_policy(preset="tiny", seed=0)
    eps = synthetic_episodes(rt, args.episodes, args.steps, 8, rng)
    r = bench(rt, eps, 8, args.repeats, 3e-4, 16)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("tiny", "cpu", r, f"{rss:.0f} MiB RSS"))

    if torch.cuda.is_available() and not args.skip_gpu:
        torch.cuda.reset_peak_memory_stats()
        big = load_policy(preset="oft-7b", device="cuda", dtype="bfloat16", seed=0)
        eps = synthetic_episodes(big, 2, 1, 2, rng)
        r = bench(big, eps, 2, max(1, args.repeats - 1), 5e-6, 1)
        rows.append(("oft-7b", torch.cuda.get_device_name(), r, f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU peak"))
    else:
        print("oft-7b: no GPU here (or --skip-gpu); tiny on the CPU only")

    print(f"{'model':8} {'device':22} {'episodes':>8} {'tokens':>7} {'GRPO tok/s':>11} {'GRPO ep/s':>10} "
          f"{'SFT tok/s (baseline)':>21} {'GRPO/SFT time':>14}  memory")
    for name, dev, r, mem in rows:
        print(f"{name:8} {dev:22} {r['episodes']:8d} {r['tokens']:7.0f} {r['grpo_tokens_per_s']:11.0f} "
              f"{r['grpo_episodes_per_s']:10.2f} {r['sft_tokens_per_s']:21.0f} {r['grpo_s'] / r['sft_s']:14.2f}  {mem}")


if __name__ == "__main__":
    main()
