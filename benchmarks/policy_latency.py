"""Per-chunk policy latency, eager against static shapes and CUDA graphs, in the same run.

For batch 1, 4 and 8 and each serving mode (``ServingConfig``: eager = dynamic shapes; static =
bucketed shapes without graphs; graphed = a CUDA graph per bucket), it reports the p50 and p99 of a
whole ``runtime.infer`` call, and its split: preprocessing (``runtime.batch``: images, prompt,
proprio, to the device) and the model (the network plus token picking), each timed on its own.

CPU: the ``tiny`` preset (what the CPU demo runs); graphs need CUDA, so that row says
"unavailable (no CUDA)". GPU (when CUDA is present): ``oft-7b`` with random weights in bf16 too —
the same architecture, so the same cost as real weights. Issue 19's target on an H100/H200:
p50 <= 25 ms and p99 <= 35 ms per chunk at batch 1 (OFT reports about 70 ms on A100-class GPUs).

``--autoregressive`` adds OpenVLA-style decoding of the same chunk (causal, KV cache, one action
token per step) at batch 1: what parallel decoding replaces.

    .venv/bin/python benchmarks/policy_latency.py [--iters 30] [--threads 1] [--autoregressive]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from vla_robot.policy.config import ServingConfig
from vla_robot.policy.modeling import pick_tokens
from vla_robot.policy.normalization import identity_statistics
from vla_robot.policy.runtime import load_policy

BATCHES = (1, 4, 8)
MODES = {
    "eager": ServingConfig(graphs="off", static_shapes="off"),
    "static": ServingConfig(graphs="off", static_shapes="on"),
    "graphed": ServingConfig(graphs="auto"),
}


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
    """Seconds of each of ``iters`` calls, after 3 warm-up calls (graph capture happens in those)."""
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
def model_only(rt, batch):
    """What ``infer`` does between preprocessing and decoding the actions."""
    out = rt.serving.outputs(batch)
    return out if rt.cfg.head == "l1" else pick_tokens(out)


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


def ms(t, q):
    return np.percentile(t, q) * 1e3


def bench_mode(rt, mode, iters):
    """Rows of the table for one serving mode, or the reason it cannot run here."""
    rt.configure_serving(MODES[mode])
    if mode == "graphed" and not rt.serving.graphs:
        return f"unavailable (no CUDA: the policy runs on {rt.device})"
    rows = []
    for b in BATCHES:
        obs = observations(rt, b)
        n = iters if b == 1 else max(iters // 2, 5)
        total = timed(lambda: rt.infer(obs), n, rt.device, f"{mode} b{b} infer")
        pre = timed(lambda: rt.batch(obs), n, rt.device, f"{mode} b{b} preprocess")
        batch = rt.batch(obs)
        model = timed(lambda: model_only(rt, batch), n, rt.device, f"{mode} b{b} model")
        rows.append((b, total, pre, model))
    return rows


def bench(name, rt, iters, autoregressive):
    print(f"\n{name} on {rt.device} ({rt.dtype}), chunk {rt.cfg.chunk_size}x{rt.cfg.action_dim}, "
          f"cameras {len(rt.cfg.cameras)}, {iters} calls at batch 1 ({max(iters // 2, 5)} at 4 and 8), times per call:")
    print(f"  {'mode':8} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'chunks/s':>9} {'model p50':>10} {'model p99':>10} {'prep p50':>9}")
    p50 = {}
    for mode in MODES:
        rows = bench_mode(rt, mode, iters)
        if isinstance(rows, str):
            print(f"  {mode}: {rows}")
            continue
        for b, total, pre, model in rows:
            p50[mode, b] = (ms(total, 50), ms(total, 99))
            print(f"  {mode:8} {b:5d} {ms(total, 50):9.2f} {ms(total, 99):9.2f} {b / np.median(total):9.1f} "
                  f"{ms(model, 50):10.2f} {ms(model, 99):10.2f} {ms(pre, 50):9.2f}")
    rt.configure_serving(ServingConfig())
    if autoregressive:
        b1 = rt.batch(observations(rt, 1))
        ta = timed(lambda: autoregressive_chunk(rt, b1), max(iters // 3, 5), rt.device, f"{name} autoregressive b1")
        print(f"  baseline autoregressive decoding, batch 1, model only: p50 {ms(ta, 50):.2f} ms")
    return p50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=30, help="timed calls per batch-1 row (half at batch 4 and 8)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the demo machine has 2 cores)")
    ap.add_argument("--gpu-preset", default="oft-7b")
    ap.add_argument("--autoregressive", action="store_true", help="also time OpenVLA-style token-by-token decoding")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench("tiny", load_policy(preset="tiny", seed=0), args.iters, args.autoregressive)
    if not torch.cuda.is_available():
        print(f"\n{args.gpu_preset} on GPU: skipped: no CUDA device (its figures are unmeasured here)")
        return
    rt = load_policy(preset=args.gpu_preset, device="cuda", dtype="bfloat16", seed=0)
    if rt.processor.norm_stats is None:  # random weights: any bounds cost the same
        rt.set_norm_stats(identity_statistics(rt.cfg.action_dim, rt.cfg.proprio_dim), "identity")
    p50 = bench(f"{args.gpu_preset} (random weights)", rt, args.iters, args.autoregressive)
    best = p50.get(("graphed", 1)) or p50[("eager", 1)]
    verdict = "met" if best[0] <= 25 and best[1] <= 35 else "NOT met"
    print(f"  target at batch 1 (p50 <= 25 ms, p99 <= 35 ms): {verdict} "
          f"({'graphed' if ('graphed', 1) in p50 else 'eager'}: p50 {best[0]:.2f} ms, p99 {best[1]:.2f} ms)")


if __name__ == "__main__":
    main()
