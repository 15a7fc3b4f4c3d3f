"""Recording benchmark: two 640x480 cameras at 30 fps plus joint states into the durable Recorder.

Prints, for a control loop that records every tick, against the same loop without recording (the
baseline, run first in the same process): frames dropped (target 0), tick jitter (how late each
tick starts versus its schedule: p50 / p99 / max), time spent inside add_frame, CPU use (cores), and
seconds from save_episode() to durable. Usage:

    .venv/bin/python benchmarks/recording.py [--seconds 60] [--fps 30] [--width 640 --height 480]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vla_robot.data.config import RecorderConfig  # noqa: E402
from vla_robot.data.schema import Schema  # noqa: E402


def frames(h: int, w: int, n_cams: int, seed: int = 0):
    """Camera-like images: a moving scene with sensor noise (noise makes encoding honest)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = ((xx[..., None] * [1, 0, 0] + yy[..., None] * [0, 1, 0]) % 256).astype(np.uint8)
    noise = rng.integers(0, 12, (8, h, w, 3), dtype=np.uint8)
    i = 0
    while True:
        shift = (4 * i) % w
        img = np.roll(base, shift, axis=1) + noise[i % 8]
        yield {f"cam{c}": img if c == 0 else img[::-1] for c in range(n_cams)}
        i += 1


def loop(seconds: float, fps: int, gen, on_tick) -> dict:
    period = 1.0 / fps
    lateness, inside = [], []
    t0 = time.monotonic()
    c0 = os.times()
    n = int(seconds * fps)
    for k in range(n):
        target = t0 + k * period
        now = time.monotonic()
        if now < target:
            time.sleep(target - now)
        start = time.monotonic()
        lateness.append(start - target)
        images = next(gen)
        q = np.sin(np.arange(6, dtype=np.float32) + k * period)
        a = time.monotonic()
        on_tick(k, images, q, start)
        inside.append(time.monotonic() - a)
    wall = time.monotonic() - t0
    c1 = os.times()
    late = np.array(lateness) * 1000
    return {"ticks": n, "wall_s": wall, "cpu_cores": (c1.user + c1.system - c0.user - c0.system) / wall,
            "late_p50_ms": float(np.percentile(late, 50)), "late_p99_ms": float(np.percentile(late, 99)),
            "late_max_ms": float(late.max()), "call_p99_ms": float(np.percentile(np.array(inside) * 1000, 99)),
            "call_max_ms": float(np.max(inside) * 1000)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--vcodec", default=RecorderConfig().vcodec, help="h264, hevc or libsvtav1 (the default)")
    ap.add_argument("--root", default=None, help="dataset folder (default: a temporary one, removed)")
    args = ap.parse_args()

    from vla_robot.data.recorder import Recorder  # imports lerobot (seconds); not part of the timing

    h, w = args.height, args.width
    names = [f"j{i}" for i in range(6)]
    schema = Schema({f"cam{c}": (h, w) for c in range(args.cameras)}, names, names)
    tmp = Path(tempfile.mkdtemp(prefix="vla_rec_bench_"))
    root = Path(args.root) if args.root else tmp / "ds"
    print(f"{args.cameras} camera(s) {w}x{h} @ {args.fps} fps + 6 joints, {args.seconds:.0f} s, codec {args.vcodec}, "
          f"{os.cpu_count()} CPU(s)")

    base = loop(args.seconds, args.fps, frames(h, w, args.cameras), lambda k, im, q, t: None)

    rec = Recorder(root, schema, config=RecorderConfig(fps=args.fps, vcodec=args.vcodec))
    rec.start_episode("benchmark")
    backlog = []

    def tick(k, images, q, t):
        rec.add_frame(images, q, q, stamp=t, action_stamp=t)
        if k % args.fps == 0:
            backlog.append(rec.stats.pending)

    with_rec = loop(args.seconds, args.fps, frames(h, w, args.cameras), tick)
    t_end = time.monotonic()
    r = rec.save_episode("success")
    durable = time.monotonic() - t_end
    stats = rec.stats
    rec.close()
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'':28s}{'baseline':>12s}{'recording':>12s}")
    for key, label in [("late_p50_ms", "tick lateness p50 (ms)"), ("late_p99_ms", "tick lateness p99 (ms)"),
                       ("late_max_ms", "tick lateness max (ms)"), ("call_p99_ms", "tick body p99 (ms)"),
                       ("call_max_ms", "tick body max (ms)"), ("cpu_cores", "CPU use (cores)")]:
        print(f"{label:28s}{base[key]:12.2f}{with_rec[key]:12.2f}")
    print(f"frames offered {with_rec['ticks']}, recorded {r.length}, dropped {stats.frames_dropped} (target 0)")
    print(f"writer backlog max {max(backlog) if backlog else 0} frame(s) of {RecorderConfig(fps=args.fps).max_pending_frames}")
    print(f"episode end -> durable: {durable:.2f} s (save_episode wait), recorder's own figure {stats.last_durable_s:.2f} s")
    print("  of which: " + ", ".join(f"{k} {v:.2f} s" for k, v in stats.last_save_breakdown.items()))
    return 0 if stats.frames_dropped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
