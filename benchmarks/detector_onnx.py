"""The success detector on onnxruntime against torch, in the same run: same outputs, and latency.

It records a twin dataset (the twin's success check as the label; vla_robot/detector/synthetic.py),
trains a detector on it (or loads one with ``--detector``), then on the same inputs (the dataset's
episodes, and random ones of the same shapes):

* parity: max |P_onnx - P_torch| over every input; the stated tolerance is 1e-4 on probabilities
  (float32 graphs of a few convolutions; the failure is a wrong export, not rounding);
* latency: p50/p99 of one call at batch 1 and batch 16, torch (eval, no_grad) and onnxruntime (the
  provider ``choose_providers`` picks for ``--device``: CPU by default), on the same number of CPU
  threads (``--threads``, default 1).

    .venv/bin/python benchmarks/detector_onnx.py [--episodes 40] [--detector DIR] [--dataset DIR]
        [--iters 200] [--device cpu|auto|cuda] [--threads 1]

No GPU figures are produced without a GPU: the CUDA rows say "unmeasured".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_robot.data.reader import iter_episodes  # noqa: E402
from vla_robot.detector import SuccessDetector, TrainConfig, episode_features, stack, train_detector  # noqa: E402
from vla_robot.detector.synthetic import record_twin_dataset  # noqa: E402
from vla_robot.detector.train import load_torch  # noqa: E402

TOLERANCE = 1e-4  # |P_onnx - P_torch| on probabilities
BATCHES = (1, 16)


def timed(fn, iters: int) -> dict:
    """p50/p99 milliseconds of ``iters`` calls after 10 warm-up calls."""
    for _ in range(10):
        fn()
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    ms = np.array(t) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "iters": iters}


def batch_of(batch: dict, n: int) -> dict:
    idx = np.arange(n) % len(batch["state"])
    return {k: np.ascontiguousarray(v[idx]) for k, v in batch.items()}


def parity(det: SuccessDetector, model, batch: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    noise = {"images": rng.integers(0, 256, batch["images"].shape, dtype=np.uint8),
             "state": (batch["state"] + rng.normal(0, 0.5, batch["state"].shape)).astype(np.float32)}
    out = {}
    for name, b in (("episodes", batch), ("random", noise)):
        p_onnx = det.predict_features(b)
        with torch.no_grad():
            p_torch = model(torch.from_numpy(b["images"]), torch.from_numpy(b["state"])).numpy()
        out[name] = {"inputs": len(p_onnx), "max_abs_diff": float(np.max(np.abs(p_onnx - p_torch))),
                     "same_label": float(np.mean((p_onnx >= det.threshold) == (p_torch >= det.threshold)))}
    return out


def latency(det: SuccessDetector, model, batch: dict, iters: int) -> list[dict]:
    rows = []
    for n in BATCHES:
        b = batch_of(batch, n)
        images, state = torch.from_numpy(b["images"]), torch.from_numpy(b["state"])

        def run_torch():
            with torch.no_grad():
                model(images, state)

        rows.append({"runtime": f"torch {torch.__version__} (CPU, {torch.get_num_threads()} threads)", "batch": n,
                     **timed(run_torch, iters)})
        rows.append({"runtime": f"onnxruntime ({det.provider})", "batch": n,
                     **timed(lambda: det.predict_features(b), iters)})
    if det.provider != "CUDAExecutionProvider":
        rows += [{"runtime": "onnxruntime (CUDAExecutionProvider)", "batch": n, "p50_ms": None, "p99_ms": None,
                  "iters": 0, "note": "unmeasured (no usable GPU here)"} for n in BATCHES]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", help="an existing detector (folder); default: record twin data and train one")
    ap.add_argument("--dataset", help="a recorded dataset for the inputs (default: record --episodes twin episodes)")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of both torch and onnxruntime (default 1)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    # what this run records and trains is kept (printed paths), not deleted: nothing learned is lost
    work = Path(tempfile.mkdtemp(prefix="detector_onnx_")) if not (args.dataset and args.detector) else None
    ds = Path(args.dataset) if args.dataset else work / "twin"
    if not args.dataset:
        print(f"recording {args.episodes} twin episodes into {ds} ...", flush=True)
        record_twin_dataset(ds, args.episodes, seed=0, progress=True)
    det_dir = Path(args.detector) if args.detector else work / "detector"
    if not args.detector:
        train_detector([ds], det_dir, seed=0, config=TrainConfig(steps=args.steps), progress=True)
    torch.set_num_threads(args.threads)
    det, model = SuccessDetector.load(det_dir, device=args.device, threads=args.threads), load_torch(det_dir)
    batch = stack([episode_features(ep, det.spec) for ep in iter_episodes(ds, with_frames=False)])
    res = {"detector": str(det_dir), "provider": det.provider, "tolerance": TOLERANCE,
           "parity": parity(det, model, batch), "latency": latency(det, model, batch, args.iters)}
    print(f"\n{det_dir} on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.threads} thread(s) each")
    print(f"\nparity (tolerance {TOLERANCE:g} on P(success)):")
    for name, p in res["parity"].items():
        ok = "OK" if p["max_abs_diff"] <= TOLERANCE else "OVER TOLERANCE"
        print(f"  {name:<9} {p['inputs']:>4} inputs: max |P_onnx - P_torch| = {p['max_abs_diff']:.2e}  {ok}; "
              f"same label at {det.threshold:.2f}: {p['same_label']:.0%}")
    print(f"\n{'runtime':<48} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for r in res["latency"]:
        p50 = f"{r['p50_ms']:.3f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.3f}" if r["p99_ms"] is not None else "-"
        print(f"{r['runtime']:<48} {r['batch']:>5} {p50:>8} {p99:>8}  {r.get('note', '')}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    worst = max(p["max_abs_diff"] for p in res["parity"].values())
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
