"""Sim episodes through the ROS graph vs the same loop without ROS, in the same run.

Both drive the same twin (reach, SO-101, two 64x64 cameras, 30 Hz) with the same tiny policy
served over ZMQ by one in-process PolicyServer and the same ChunkController settings:

- **graph**: `GraphRunner("rl_finetune", sim=True)` — twin_node, policy_node, episode_manager_node
  (and the recorder unless --no-recorder) on a MultiThreadedExecutor, lockstep on sim time;
- **baseline**: a plain Python loop: env.step -> ChunkController.tick (blocking client) -> env.step.

Printed: sim steps per wall second for each, the graph's overhead factor, and how many times faster
than real time each runs. Use it to size RL runs: episodes/minute = steps/s * 60 / steps per episode.

    MUJOCO_GL=egl .venv/bin/python benchmarks/graph_throughput.py [--episodes 3] [--seconds 2] [--no-recorder]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "93")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def baseline(server_address: str, episodes: int, seconds: float, hz: float = 30.0) -> tuple[int, float]:
    from vla_robot.control.config import ControlConfig
    from vla_robot.control.driver import ChunkController
    from vla_robot.serving.client import PolicyClient
    from vla_robot.twin.env import make_env

    env = make_env(task="reach", robot="so101", image_size=(64, 64), cameras=("front", "wrist"), control_hz=hz)
    client = PolicyClient(server_address, timeout_s=2.0)

    class Blocking:  # infer only: the controller asks and waits, as in lockstep
        def infer(self, observations, **kw):
            return client.infer(observations, **kw)

    steps, t0 = 0, time.perf_counter()
    for ep in range(episodes):
        obs = env.reset(seed=ep)
        sim_t = 0.0
        ctl = ChunkController(ControlConfig(control_hz=hz), env.robot.joint_limits(), Blocking(),
                              request_options={"mode": "sample", "return_tokens": True}, clock=lambda: sim_t)
        ctl.reset(obs["state"], sim_t)
        for _ in range(int(seconds * hz)):
            o = obs
            r = ctl.tick(sim_t, sim_t, lambda: {"images": o["images"], "state": o["state"], "instruction": env.instruction})
            obs = env.step(r.command)
            sim_t += 1.0 / hz
            steps += 1
    wall = time.perf_counter() - t0
    client.close()
    env.close()
    return steps, wall


def graph(episodes: int, seconds: float, recorder: bool, serve: str) -> tuple[int, float, object]:
    from vla_robot.nodes.runner import GraphRunner

    root = tempfile.mkdtemp(prefix="graph_bench_")
    overrides = {"episode_manager_node": {"episodes": episodes, "max_duration_s": seconds, "end_on_success": False}}
    if recorder:
        overrides["recorder_node"] = {"root": root + "/dataset"}
    exclude = ("teleop_node",) + (() if recorder else ("recorder_node",))
    g = GraphRunner("rl_finetune", sim=True, serve_policy=serve, overrides=overrides, exclude=exclude)
    g.start()
    try:
        t0 = time.perf_counter()
        results = g.run_episodes(episodes, timeout_s=600)
        wall = time.perf_counter() - t0
        steps = sum(r.steps for r in results)
        return steps, wall, g
    finally:
        g.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="sim seconds per episode")
    ap.add_argument("--no-recorder", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    steps_g, wall_g, _ = graph(args.episodes, args.seconds, not args.no_recorder, "tiny")

    from vla_robot.policy import load_policy
    from vla_robot.serving.server import PolicyServer

    server = PolicyServer(load_policy(preset="tiny", seed=0), bind="tcp://127.0.0.1:*", weights_bind=None).start()
    try:
        steps_b, wall_b = baseline(server.address, args.episodes, args.seconds)
    finally:
        server.stop()
    rate_g, rate_b = steps_g / wall_g, steps_b / wall_b
    print(f"{'':<28}{'steps':>8}{'wall s':>9}{'steps/s':>10}{'x real time':>13}")
    print(f"{'baseline (no ROS)':<28}{steps_b:>8}{wall_b:>9.2f}{rate_b:>10.1f}{rate_b / 30:>13.2f}")
    label = "graph" + ("" if args.no_recorder else " + recorder")
    print(f"{label:<28}{steps_g:>8}{wall_g:>9.2f}{rate_g:>10.1f}{rate_g / 30:>13.2f}")
    print(f"graph overhead: {rate_b / rate_g:.2f}x the baseline's time per step")
    return 0 if np.isfinite(rate_g) else 1


if __name__ == "__main__":
    sys.exit(main())
