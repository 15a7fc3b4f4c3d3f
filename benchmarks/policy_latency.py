"""Per-chunk policy latency: p50/p99 at batch 1 and throughput at batch 8.

CPU: the ``tiny`` preset (what the CPU demo runs). GPU (when CUDA is present): ``oft-7b`` with
random weights in bf16 — the same architecture, so the same cost as real weights; OFT reports
about 0.07 s per chunk (LIBERO, one image + proprio) and our target on an H100 is <= 0.025 s.

Baseline in the same run: OpenVLA-style autoregressive decoding (causal, KV cache, one action
token per step) of the same chunk with the same model, i.e. what parallel decoding replaces.

    .venv/bin/python benchmarks/policy_latency.py [--iters 30] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from vla_robot.policy.normalization import identity_statistics
from vla_robot.policy.runtime import load_policy


def observations(rt, n, seed=0):
    rng = np.random.default_rng(seed)
    c = rt.cfg
    return [
        {
            "images": {cam: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for cam in c.cameras},
            "state": rng.uniform(-1, 1, c.proprio_dim),
            "instruction": "put the red cube in the bowl",
        }
        for _ in range(n)
    ]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters, device, label):
    for _ in range(3):
        fn()
    times = []
    for _ in tqdm(range(iters), desc=label, leave=False, disable=None):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


@torch.inference_mode()
def autoregressive_chunk(rt, batch):
    """Baseline: causal decoding of the chunk one token at a time with a KV cache (greedy)."""
    m = rt.model
    embeds, _, first = m.build_inputs(batch)
    prefix = embeds[:, : int(first[0])]  # BOS, patches, proprio, prompt (batch 1: no padding)
    lm = m.language_model
    S = prefix.shape[1]
    causal = torch.full((S, S), torch.finfo(prefix.dtype).min, device=prefix.device).triu(1)[None, None]
    out = lm(inputs_embeds=prefix, attention_mask=causal, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    embed = lm.get_input_embeddings()
    tokens = []
    for _ in range(m.num_action_tokens):
        tok = logits[:, 31744:32000].argmax(-1) + 31744
        tokens.append(tok)
        out = lm(inputs_embeds=embed(tok)[:, None], past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    return torch.stack(tokens, 1)


@torch.inference_mode()
def bench(name, rt, iters):
    device = rt.device
    obs1, obs8 = observations(rt, 1), observations(rt, 8)
    t1 = timed(lambda: rt.infer(obs1), iters, device, f"{name} parallel b1")
    t8 = timed(lambda: rt.infer(obs8), max(iters // 3, 5), device, f"{name} parallel b8")
    b1 = rt.batch(obs1)
    ta = timed(lambda: autoregressive_chunk(rt, b1), max(iters // 3, 5), device, f"{name} autoregressive b1")
    print(f"\n{name} on {device} ({rt.dtype}), chunk {rt.cfg.chunk_size}x{rt.cfg.action_dim}, cameras {len(rt.cfg.cameras)}:")
    print(f"  parallel decoding, batch 1: p50 {np.median(t1) * 1e3:8.2f} ms  p99 {np.percentile(t1, 99) * 1e3:8.2f} ms"
          f"  min {t1.min() * 1e3:.2f} ms per chunk (min: least disturbed by other load)")
    print(f"  parallel decoding, batch 8: {8 / np.median(t8):8.1f} chunks/s ({np.median(t8) * 1e3:.2f} ms per batch)")
    tm = timed(lambda: rt.model.sample_tokens(b1) if rt.cfg.head == "discrete" else rt.model.l1_actions(b1), max(iters // 3, 5), device, f"{name} model only b1")
    print(f"  of which the model (no preprocessing), b1: p50 {np.median(tm) * 1e3:8.2f} ms")
    print(f"  baseline autoregressive b1: p50 {np.median(ta) * 1e3:8.2f} ms  -> parallel is {np.median(ta) / np.median(t1):.1f}x faster"
          f" (model only: {np.median(ta) / np.median(tm):.1f}x)")
    return np.median(t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the demo machine has 2 cores)")
    ap.add_argument("--gpu-preset", default="oft-7b")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench("tiny", load_policy(preset="tiny", seed=0), args.iters)
    if not torch.cuda.is_available():
        print(f"\n{args.gpu_preset} on GPU: skipped: no CUDA device")
        return
    rt = load_policy(preset=args.gpu_preset, device="cuda", dtype="bfloat16", seed=0)
    if rt.processor.norm_stats is None:  # random weights: any bounds cost the same
        rt.set_norm_stats(identity_statistics(rt.cfg.action_dim, rt.cfg.proprio_dim), "identity")
    p50 = bench(f"{args.gpu_preset} (random weights)", rt, args.iters)
    print(f"  reference: OFT paper ~70 ms per chunk (A100); target on H100 <= 25 ms: {'met' if p50 <= 0.025 else 'NOT met'}")


if __name__ == "__main__":
    main()
