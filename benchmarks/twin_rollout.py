"""What running the twin through the robot's components costs: rl/rollout.py against the old loop.

The demo used to roll out with a loop of its own: each twin executed its chunk whole and open loop,
with no executor, watchdog or safety filter, one batched policy call per chunk. Every twin episode
now runs the ChunkController of policy_node with config/rl_finetune.yaml's control (async executor,
safety filter 0.5/0.5), which asks for a chunk about twice as often. This script times both on the
same tiny policy, the same twins and the same start states, in one run:

    .venv/bin/python benchmarks/twin_rollout.py [--episodes 64] [--envs 8]

It prints, per path, episodes per second, policy calls per episode (each one batched over the
twins), rendered observations per episode, and the success rate (the policy here is untrained: the
figure is a cost, not a skill). The baseline loop below exists only in this file, as the yardstick.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from vla_robot.policy import load_policy  # noqa: E402
from vla_robot.rl.config import RLFinetuneConfig  # noqa: E402
from vla_robot.rl.rollout import policy_observation, rollout  # noqa: E402
from vla_robot.twin import make_env  # noqa: E402


class Counting:
    """The policy, counting its calls and the observations it was asked about."""

    def __init__(self, policy):
        self.policy, self.calls, self.observations = policy, 0, 0

    def infer(self, observations, **options):
        self.calls += 1
        self.observations += len(observations)
        return self.policy.infer(observations, **options)


def old_loop(envs, policy, starts) -> list[bool]:
    """The yardstick: whole chunks open loop, no executor, no filter (the demo's loop until issue 15)."""
    obs = [policy_observation(env.reset(start=int(s)), env.instruction) for env, s in zip(envs, starts)]
    done, success = [False] * len(envs), [False] * len(envs)
    while not all(done):
        active = [i for i in range(len(envs)) if not done[i]]
        replies = policy.infer([obs[i] for i in active], mode="sample", temperature=1.0, return_tokens=True)
        for i, reply in zip(active, replies):
            env = envs[i]
            for action in reply["actions"]:
                env.advance(action)
                success[i] = env.success()
                done[i] = success[i] or env.steps >= env.max_steps
                if done[i]:
                    break
            if not done[i]:
                obs[i] = policy_observation(env.observation(), env.instruction)
    return success


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--envs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RLFinetuneConfig()
    control = cfg.control_config()
    envs = [make_env(cfg.task, seed=i, image_size=(cfg.image_size, cfg.image_size), episode_s=cfg.episode_s,
                     cubes=cfg.cubes) for i in range(args.envs)]
    runtime = load_policy(preset="tiny", seed=0, overrides={"action_space": cfg.action_space})
    starts = [1_000_000 + i for i in range(args.episodes)]
    rows = []
    for name in ("old loop (whole chunks, no filter)", "robot components (rl_finetune.yaml control)"):
        policy, ok, ticks, t0 = Counting(runtime), [], 0, time.perf_counter()
        report: Counter = Counter()
        for k in range(0, len(starts), len(envs)):
            batch = starts[k: k + len(envs)]
            if name.startswith("old"):
                ok += old_loop(envs[: len(batch)], policy, batch)
            else:
                eps = rollout(envs[: len(batch)], policy, batch, control, report=report)
                ok += [e.label == 1 for e in eps]
            ticks += sum(env.steps for env in envs[: len(batch)])
        seconds = time.perf_counter() - t0
        rows.append((name, len(ok) / seconds, policy.calls / len(ok) * len(envs), policy.observations / len(ok),
                     ticks / len(ok), np.mean(ok), seconds))
    print(f"{args.episodes} episodes of {cfg.episode_s:g} s on {args.envs} twins, tiny policy ({cfg.action_space}), "
          f"1 thread")
    print(f"{'path':48s} {'episodes/s':>10s} {'calls/ep':>10s} {'obs/ep':>7s} {'ticks/ep':>8s} {'success':>8s} "
          f"{'seconds':>8s}")
    for r in rows:
        print(f"{r[0]:48s} {r[1]:10.2f} {r[2]:10.1f} {r[3]:7.1f} {r[4]:8.1f} {r[5]:8.2f} {r[6]:8.1f}")
    print(f"cost of the robot's components: {rows[0][1] / rows[1][1]:.2f}x the old loop's time per episode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
