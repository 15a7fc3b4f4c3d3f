"""GRPO update throughput of the learner: tokens/s and episodes/s, peak memory.

tiny on the CPU always; oft-7b (random weights, bf16) on a GPU when one is available. The baseline
in the same run is a plain teacher-forced SFT step on the same observations and tokens (what any
trainer pays), so the figure to read is the GRPO update's overhead over it.

    .venv/bin/python benchmarks/rl_update.py [--episodes 16] [--steps 4] [--repeats 3]
        [--gpu-episodes 8 --gpu-steps 2 --gpu-mini-batch 2]

oft-7b with AdamW on one GPU (no sharding) peaked at 70.1 GiB with the GPU defaults (H100 80GB and
H200 alike); --gpu-mini-batch 4 took 78.2 GiB. PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True helps.
(Those runs predate the learner's micro-batches of chunks; the GPU case now graphs
``micro_batch_chunks`` chunks at a time.)

The 30-s-episode case (tiny, CPU): one group of --long-episodes episodes of --long-chunks chunks
each (a 30-s episode has 100-200 chunks), updated once by the learner (micro-batches of
``micro_batch_chunks`` chunks, gradients accumulated) and once as before issue 14 (one autograd graph
over every chunk of the mini-batch), each in a fresh process, figures side by side: seconds and the
update's peak resident memory above the process's before it. --skip-long leaves it out.
Measured on the 2-core CI machine (``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_update.py
--repeats 1``), 8 x 150 chunks: micro-batched 7.2 s and 184 MiB, one graph 13.7 s and 2606 MiB.

The same case with a LoRA adapter (``--lora-rank``, default OFT's 32; issue 19) is a third row, and
the 7B's LoRA and full figures that need no GPU are printed beside it as arithmetic from the preset's
shapes (trained values, AdamW state, bytes per hot-swap). The 7B's memory and time on a GPU are not
measured by this run unless a GPU is present; the arithmetic is not a measurement.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from vla_robot.data import schema as S
from vla_robot.policy import load_policy
from vla_robot.policy.normalization import identity_statistics
from vla_robot.rl.config import preset
from vla_robot.rl.episodes import Episode, Step
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
        res = runtime.infer(obs, mode="sample", temperature=1.6, return_tokens=True)
        h = cfg.chunk_size  # every chunk ran whole, as the recorder's frames would say
        executed = S.executed_mask(np.repeat(np.arange(steps), h), np.tile(np.arange(h), steps),
                                   np.full(steps * h, S.CONTROL_POLICY), np.arange(steps), h, cfg.action_dim)
        st = [Step(o, r["tokens"], r["logprobs"], m) for o, r, m in zip(obs, res, executed)]
        out.append(Episode("touch the red cube", i // group_size, st, S.Label.of(i % 2 == 0).reward, runtime.version))
    return out


def big_runtime(name: str, device: str, overrides: dict | None = None):
    """The big preset with random weights in bf16, with the discrete head GRPO needs (OFT's
    published checkpoints have the L1 head; the RL recipe samples tokens)."""
    rt = load_policy(preset=name, device=device, dtype="bfloat16", seed=0, overrides={"head": "discrete", **(overrides or {})})
    if rt.processor.norm_stats is None:  # random weights: any bounds cost the same
        rt.set_norm_stats(identity_statistics(rt.cfg.action_dim, rt.cfg.proprio_dim), "identity")
    return rt


def bench(runtime, episodes: list[Episode], group_size: int, repeats: int, preset_name: str, mini_batch: int) -> dict:
    """Median seconds of one GRPO update (the learner's) and of an SFT pass over the same sequences."""
    cfg = preset(preset_name, group_size=group_size, batch_groups=len(episodes) // group_size,
                 mini_batch_size=mini_batch, mode="rl")
    # the SFT baseline below moves the weights after the episodes were sampled: they are off-policy
    # on purpose here, so the learner's on-policy check has nothing to say
    learner = Learner(runtime, cfg, note=lambda text: None)
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    # baseline: a teacher-forced SFT step over the same (observation, tokens) pairs, with the
    # learner's own optimizer (a second AdamW state would not fit beside a 7B model on one GPU)
    obs = [s.observation for e in episodes for s in e.steps]
    toks = torch.from_numpy(np.stack([s.tokens for e in episodes for s in e.steps]))
    opt = learner.optimizer
    per_step = max(1, mini_batch * len(obs) // len(episodes))  # sequences per SFT step = the GRPO mini-batch's
    base, grpo = [], []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        runtime.model.train()
        for i in range(0, len(obs), per_step):
            loss = -runtime.model.token_logprobs(runtime.batch(obs[i:i + per_step]), toks[i:i + per_step], 1.0).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)  # as the learner does: no gradients alive during the next forward
        runtime.model.eval()
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


def long_episode_update(one_graph: bool, episodes: int, chunks: int, threads: int, lora_rank: int = 0) -> dict:
    """One GRPO update of a group of long episodes on the tiny policy; run in a fresh process."""
    from vla_robot.rl.grpo import grpo_loss

    torch.set_num_threads(threads)
    rt = load_policy(preset="tiny", seed=0)
    eps = synthetic_episodes(rt, episodes, chunks, episodes, np.random.default_rng(0))
    cfg = preset("tiny", group_size=episodes, mode="rl", lora_rank=lora_rank)
    learner = Learner(rt, cfg)
    for e in eps:
        learner.add(e)
    base = _rss_mib()
    t = time.perf_counter()
    if one_graph:  # the update before issue 14: one graph over every chunk of the mini-batch
        rt.model.train()
        adv = torch.tensor([1.0 if e.label else -1.0 for e in eps])
        logp, old, mask = learner.trajectory_logprobs(eps, cfg.temperature)
        loss, _ = grpo_loss(logp, old, adv, mask, cfg.clip_ratio_low, cfg.clip_ratio_high)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.params, cfg.grad_clip)
        learner.optimizer.step()
        learner.optimizer.zero_grad(set_to_none=True)
    else:
        assert learner.step()["opt_steps"] == 1
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    push = sum(t.numel() * t.element_size() for t in learner.adapter.update().values()) if lora_rank else \
        sum(t.numel() * t.element_size() for t in rt.model.state_dict().values())
    return {"seconds": seconds, "peak_mib": peak - base, "micro_batch_chunks": cfg.micro_batch_chunks,
            "trained": sum(p.numel() for p in learner.params), "push_bytes": push}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def long_episode_case(episodes: int, chunks: int, threads: int, lora_rank: int) -> None:
    import multiprocessing as mp

    runs = {}
    for label, args in (("full", (False, episodes, chunks, threads)), ("one graph", (True, episodes, chunks, threads)),
                        ("lora", (False, episodes, chunks, threads, lora_rank))):
        with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # fresh: ru_maxrss is a high-water mark
            runs[label] = pool.apply(long_episode_update, args)
    print(f"\n30-s episodes, tiny on the CPU ({threads} thread(s)): one update of {episodes} episodes x {chunks} chunks")
    print(f"{'update':44} {'seconds':>8} {'peak memory above start':>24} {'trained values':>15} {'hot-swap':>10}")
    n = runs["full"]["micro_batch_chunks"]
    for label, name in (("full", f"full, micro-batched ({n} chunks per graph)"), ("one graph", "full, one graph (before issue 14)"),
                        ("lora", f"LoRA rank {lora_rank}, micro-batched ({n} chunks)")):
        r = runs[label]
        print(f"{name:44} {r['seconds']:8.2f} {r['peak_mib']:20.0f} MiB {r['trained']:15,d} {r['push_bytes'] / 1e6:7.2f} MB")


def lora_arithmetic(preset_name: str, rank: int) -> None:
    """The big preset's LoRA and full figures that follow from its shapes alone (no GPU, no weights)."""
    from vla_robot.policy.modeling import OFTModel
    from vla_robot.policy.runtime import load_preset
    from vla_robot.rl.lora import adapter_bytes

    with torch.device("meta"):  # shapes only
        model = OFTModel(load_preset(preset_name, {"head": "discrete"}))
    a = adapter_bytes(model, rank, 2)
    n, adapter, proprio = a["model_values"], a["adapter_values"], a["fully_trained_values"]
    # bytes per value. Full: bf16 weights, gradients and AdamW's two moments (torch keeps them in the
    # parameter's dtype). LoRA: bf16 weights; the adapter's own float32 values, gradients and moments
    # (rl/lora.py trains it in float32); the proprio projector's bf16 gradients and moments
    full_state = n * (2 + 2 + 4)
    lora_state = n * 2 + adapter * (4 + 4 + 8) + proprio * (2 + 4)
    print(f"\n{preset_name}, discrete head, bf16: ARITHMETIC from the preset's shapes, not a measurement "
          "(its GPU memory and time are unmeasured here; activations come on top, about the same for both)")
    print(f"{'learner':18} {'trained values':>15} {'weights+grads+AdamW':>20} {'hot-swap per update':>20}")
    print(f"{'full fine-tuning':18} {n / 1e9:14.2f}G {full_state / 2**30:16.1f} GiB {a['full_push_bytes'] / 1e9:17.1f} GB")
    print(f"{'LoRA rank ' + str(rank):18} {(adapter + proprio) / 1e6:14.1f}M {lora_state / 2**30:16.1f} GiB "
          f"{a['push_bytes'] / 1e6:17.0f} MB")
    print(f"  LoRA: adapter {adapter / 1e6:.1f}M values (the push carries them in bf16) + the fully trained proprio "
          f"projector {proprio / 1e6:.1f}M; the first push to a server that lacks the base also sends the adapted "
          f"weights' base once ({a['base_values'] / 1e9:.2f}G values, {a['base_values'] * 2 / 1e9:.1f} GB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="chunk queries per episode")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-gpu", action="store_true")
    ap.add_argument("--gpu-preset", default="oft-7b")
    ap.add_argument("--gpu-episodes", type=int, default=8, help="one group of this many rollouts")
    ap.add_argument("--gpu-steps", type=int, default=2, help="chunk queries per episode on the GPU")
    ap.add_argument("--gpu-mini-batch", type=int, default=2, help="trajectories per optimizer step on the GPU")
    ap.add_argument("--long-episodes", type=int, default=8, help="30-s case: episodes (one group)")
    ap.add_argument("--long-chunks", type=int, default=150, help="30-s case: chunks per episode")
    ap.add_argument("--skip-long", action="store_true", help="leave out the 30-s-episode case")
    ap.add_argument("--lora-rank", type=int, default=32, help="the LoRA row of the 30-s case (OFT's rank: 32)")
    ap.add_argument("--only-long", action="store_true", help="only the 30-s case and the 7B arithmetic")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    if args.only_long:
        long_episode_case(args.long_episodes, args.long_chunks, args.threads, args.lora_rank)
        lora_arithmetic(args.gpu_preset, args.lora_rank)
        return
    rows = []
    rt = load_policy(preset="tiny", seed=0)
    eps = synthetic_episodes(rt, args.episodes, args.steps, 8, rng)
    r = bench(rt, eps, 8, args.repeats, "tiny", 16)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("tiny", "cpu", r, f"{rss:.0f} MiB RSS"))

    if torch.cuda.is_available() and not args.skip_gpu:
        big = big_runtime(args.gpu_preset, "cuda")
        weights = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        eps = synthetic_episodes(big, args.gpu_episodes, args.gpu_steps, args.gpu_episodes, rng)
        r = bench(big, eps, args.gpu_episodes, max(1, args.repeats - 1), args.gpu_preset, args.gpu_mini_batch)
        n = sum(p.numel() for p in big.model.parameters()) / 1e9
        rows.append((args.gpu_preset, torch.cuda.get_device_name(), r,
                     f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU peak ({n:.2f}B params, weights {weights:.1f} GiB;"
                     f" AdamW, mini-batch {args.gpu_mini_batch} x {args.gpu_steps} chunks)"))
    else:
        print("oft-7b: no GPU here (or --skip-gpu); tiny on the CPU only")

    print(f"{'model':8} {'device':22} {'episodes':>8} {'tokens':>7} {'GRPO tok/s':>11} {'GRPO ep/s':>10} "
          f"{'SFT tok/s (baseline)':>21} {'GRPO/SFT time':>14}  memory")
    for name, dev, r, mem in rows:
        print(f"{name:8} {dev:22} {r['episodes']:8d} {r['tokens']:7.0f} {r['grpo_tokens_per_s']:11.0f} "
              f"{r['grpo_episodes_per_s']:10.2f} {r['sft_tokens_per_s']:21.0f} {r['grpo_s'] / r['sft_s']:14.2f}  {mem}")
    if not args.skip_long:
        long_episode_case(args.long_episodes, args.long_chunks, args.threads, args.lora_rank)
    lora_arithmetic(args.gpu_preset, args.lora_rank)


if __name__ == "__main__":
    main()
