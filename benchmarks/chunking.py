"""Chunk executors under server latency: starved ticks, seam jumps, tracking error, task time.

A simulated arm (first-order lag) follows a scripted joint path; a simulated policy server answers
with chunks that follow the path from the observed state (each chunk a little off, as a learned
policy's are) after a latency drawn from a distribution: fixed, jittery, with occasional stalls.
The whole stack between them is the real one: ChunkController -> executor -> watchdog -> safety.
Simulated time, so the figures do not depend on this machine's load (the CPU cost per tick does).

    .venv/bin/python benchmarks/chunking.py [--horizon 16] [--seeds 3] [--plot runs/chunking.png]

Baseline: open_loop (OpenVLA-OFT's way), in the same run. The script checks, and exits non-zero
when they fail, the two claims of issue 5: async has zero starved ticks while the latency stays
below the horizon, and a smaller seam jump than open loop.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vla_robot.control import ChunkController, ControlConfig, ExecutorConfig, JointLimits, SafetyConfig, WatchdogConfig  # noqa: E402
from vla_robot.control.sim import Latency, PathPolicy, SimArm, SimClock, SimServer  # noqa: E402

HZ = 30.0
DT = 1.0 / HZ


def limits() -> JointLimits:  # an SO-101-like arm: 3 joints and a gripper
    return JointLimits(
        names=["shoulder_pan", "shoulder_lift", "elbow_flex", "gripper"],
        lower=[-1.9, -1.7, -1.6, 0.0],
        upper=[1.9, 1.7, 1.6, 1.0],
        max_velocity=[2.5, 2.5, 2.5, 4.0],
        max_acceleration=[25.0, 25.0, 25.0, 40.0],
    )


def scripted_path(seconds: float = 8.0) -> np.ndarray:
    """A pick-and-place-like joint path sampled at the control rate."""
    t = np.linspace(0.0, 1.0, int(seconds * HZ))[:, None]
    s = 0.5 - 0.5 * np.cos(np.pi * t)  # smooth start and stop
    return np.hstack(
        [
            1.0 * np.sin(2 * np.pi * s),
            0.2 + 0.6 * np.sin(np.pi * s),
            -0.4 - 0.5 * np.sin(3 * np.pi * s),
            0.5 + 0.4 * np.sin(4 * np.pi * s),
        ]
    )


SCENARIOS = {
    "fixed 100ms": Latency(0.10),
    "jitter ~120ms": Latency(0.12, jitter=0.35),
    "near horizon 400ms": Latency(0.40),
    "stalls 3% x 1s": Latency(0.10, stall_p=0.03, stall_s=1.0),
}

EXECUTORS = {
    "open_loop": dict(kind="open_loop"),
    "open_loop K=8": dict(kind="open_loop", open_loop_steps=8),
    "temporal_ensemble": dict(kind="temporal_ensemble", ensemble_decay=0.01),
    "async": dict(kind="async", blend_steps=4),
}


def run(executor: dict, latency: Latency, horizon: int, seed: int, max_s: float = 30.0) -> dict:
    clock = SimClock()
    path = scripted_path()
    policy = PathPolicy(path, horizon, noise=0.02, seed=seed)
    server = SimServer(clock, lambda obs: policy.chunk(obs["state"]), latency, seed=seed)
    cfg = ControlConfig(
        control_hz=HZ,
        executor=ExecutorConfig(**executor),
        safety=SafetyConfig(ramp_velocity_scale=1.0),
        watchdog=WatchdogConfig(max_observation_age_s=0.5, max_chunk_gap_s=2.0),
    )
    ctl = ChunkController(cfg, limits(), server, clock=clock)
    arm = SimArm(path[0], tau=0.04)
    ctl.reset(arm.q, 0.0)
    prev_raw, prev_seq = None, None
    seam_jumps, track_err, cmds, cpu = [], [], [], 0.0
    task_time = math.nan
    for k in range(int(max_s * HZ)):
        now = k * DT
        clock.t = now
        c0 = time.perf_counter()
        r = ctl.tick(now, now, lambda: {"state": arm.q.copy()})
        cpu += time.perf_counter() - c0
        arm.step(r.command, DT)
        cmds.append(r.command)
        if r.source == "policy":
            seq = r.chunk.get("request_id") if r.chunk else None
            if prev_raw is not None and seq != prev_seq:
                seam_jumps.append(float(np.abs(r.raw - prev_raw).max()))
            track_err.append(float(np.abs(r.command - r.chunk["actions"][r.index]).max()))
            prev_raw, prev_seq = r.raw, seq
        if policy.done(arm.q, tol=0.03):
            task_time = now
            break
    stats = ctl.stats
    return {
        "starved": stats.starved,
        "holds": sum(stats.holds.values()),
        "seam_max": max(seam_jumps, default=0.0),
        "seam_p50": float(np.median(seam_jumps)) if seam_jumps else 0.0,
        "track_mean": float(np.mean(track_err)) if track_err else math.nan,
        "task_s": task_time,
        "max_latency": max(server.latencies, default=0.0),
        "requests": stats.requests,
        "us_per_tick": 1e6 * cpu / max(1, stats.ticks),
        "commands": np.asarray(cmds),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--horizon", type=int, default=16, help="actions per chunk (default 16 = 0.53 s at 30 Hz)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of joint 0 under fixed latency")
    args = ap.parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731

    horizon_s = args.horizon * DT
    jobs = [(s, e, seed) for s in SCENARIOS for e in EXECUTORS for seed in range(args.seeds)]
    results: dict = {}
    for scen, ex, seed in tqdm(jobs, desc="runs", leave=False, disable=None):
        results.setdefault((scen, ex), []).append(run(EXECUTORS[ex], SCENARIOS[scen], args.horizon, seed))

    print(f"\nchunk executors at {HZ:.0f} Hz, horizon {args.horizon} actions = {horizon_s * 1e3:.0f} ms, "
          f"{args.seeds} seeds each (mean; seam and starved: worst seed)")
    head = f"{'scenario':<20} {'executor':<18} {'starved':>7} {'holds':>6} {'seam max':>9} {'seam p50':>9} " \
           f"{'track err':>9} {'task s':>7} {'lat max':>8} {'req':>5} {'us/tick':>8}"
    print(head)
    print("-" * len(head))
    summary = {}
    for scen in SCENARIOS:
        for ex in EXECUTORS:
            rs = results[(scen, ex)]
            row = {
                "starved": max(r["starved"] for r in rs),
                "holds": np.mean([r["holds"] for r in rs]),
                "seam_max": max(r["seam_max"] for r in rs),
                "seam_p50": np.mean([r["seam_p50"] for r in rs]),
                "track": np.mean([r["track_mean"] for r in rs]),
                "task": np.mean([r["task_s"] for r in rs]),
                "lat": max(r["max_latency"] for r in rs),
                "req": np.mean([r["requests"] for r in rs]),
                "us": np.mean([r["us_per_tick"] for r in rs]),
            }
            summary[(scen, ex)] = row
            print(f"{scen:<20} {ex:<18} {row['starved']:>7d} {row['holds']:>6.0f} {row['seam_max']:>9.4f} "
                  f"{row['seam_p50']:>9.4f} {row['track']:>9.4f} {row['task']:>7.2f} {row['lat'] * 1e3:>6.0f}ms "
                  f"{row['req']:>5.0f} {row['us']:>8.0f}")
        print()
    print("starved: policy ticks without an action after the first chunk; holds: all ticks held (start-up,")
    print("starved, watchdog); seam: largest step of the executor's output where a new chunk takes over (rad);")
    print("track err: |command - the chunk's action for that tick| (rad); task s: time to finish the path.")

    ok = True
    print("\nchecks (issue 5):")
    for scen in SCENARIOS:
        a, o = summary[(scen, "async")], summary[(scen, "open_loop")]
        if a["lat"] < horizon_s:
            good = a["starved"] == 0
            ok &= good
            print(f"  [{'PASS' if good else 'FAIL'}] {scen}: latency {a['lat'] * 1e3:.0f} ms < horizon -> async starved {a['starved']}")
        good = a["seam_max"] < o["seam_max"]
        ok &= good
        print(f"  [{'PASS' if good else 'FAIL'}] {scen}: async seam {a['seam_max']:.4f} < open_loop seam {o['seam_max']:.4f} rad")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4))
        ref = scripted_path()[:, 0]
        ax.plot(np.arange(len(ref)) * DT, ref, "k--", lw=1, label="scripted path")
        for ex in ("open_loop", "async", "temporal_ensemble"):
            c = run(EXECUTORS[ex], SCENARIOS["fixed 100ms"], args.horizon, 0)["commands"][:, 0]
            ax.plot(np.arange(len(c)) * DT, c, lw=1.2, label=ex)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("joint 0 command (rad)")
        ax.set_title(f"fixed 100 ms latency, horizon {args.horizon}")
        ax.legend()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"\nplot: {args.plot}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
