"""`vla-robot rl-finetune` (the demo on the twin) and `vla-robot learn` (the learner on a recorded dataset)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def rl_finetune_args(parser: argparse.ArgumentParser) -> None:
    from vla_robot.rl.config import RLFinetuneConfig

    d = RLFinetuneConfig()
    parser.add_argument("--sim", action="store_true",
                        help="run on the MuJoCo twin (SFT warm-up on scripted demonstrations, GRPO, evaluation)")
    parser.add_argument("--out", default="runs/rl_finetune", help="folder for report.json, the plot and the checkpoint")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--cubes", type=int, default=d.cubes,
                        help="cubes on the table: 1 (touch the cube) .. 3 (touch the named one of red, green, blue)")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="GRPO rounds")
    parser.add_argument("--groups-per-round", type=int, default=d.groups_per_round)
    parser.add_argument("--group-size", type=int, default=d.group_size)
    parser.add_argument("--demos", type=int, default=d.demos, help="scripted-expert demonstrations for the SFT warm-up")
    parser.add_argument("--sft-steps", type=int, default=d.sft_steps)
    parser.add_argument("--eval-episodes", type=int, default=d.eval_episodes, help="held-out start states, before and after")
    parser.add_argument("--eval-mode", choices=("greedy", "sample"), default=d.eval_mode,
                        help="headline evaluation: sample (at the rollout temperature) or greedy")
    parser.add_argument("--extra-eval-mode", choices=("", "greedy", "sample"), default=d.extra_eval_mode,
                        help="also evaluate this way on the same start states ('' for none)")
    parser.add_argument("--lr", type=float, default=d.lr, help="GRPO learning rate")
    parser.add_argument("--temperature", type=float, default=d.temperature, help="rollout temperature")
    parser.add_argument("--mode", choices=("rl", "sft", "hybrid"), default=d.mode)
    parser.add_argument("--time-budget", type=float, default=d.time_budget_s, help="seconds; later RL rounds are skipped to stay within")
    parser.add_argument("--served", action=argparse.BooleanOptionalAction, default=d.served,
                        help="roll out through a PolicyServer over ZMQ on 127.0.0.1 with hot-swapped versions (default on)")
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=d.overlap,
                        help="served: the learner updates while the next round rolls out (worth it on more than 2 cores)")
    parser.add_argument("--graph-episodes", type=int, default=d.graph_episodes,
                        help="after RL, run this many episodes through the rl_finetune ROS graph (0: none)")
    parser.add_argument("--safety", action=argparse.BooleanOptionalAction, default=d.safety,
                        help="every twin action through the control core's safety filter, as on the robot")
    parser.add_argument("--velocity-scale", type=float, default=d.velocity_scale,
                        help="safety filter: fraction of the arm's velocity limits")
    parser.add_argument("--acceleration-scale", type=float, default=d.acceleration_scale,
                        help="safety filter: fraction of the arm's acceleration limits")
    parser.add_argument("--episode-s", type=float, default=d.episode_s, help="twin episode length, seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def rl_finetune(args: argparse.Namespace) -> int:
    if not args.sim:
        print("rl-finetune on a robot runs as a graph: `vla-robot launch rl_finetune` (policy server, episode manager, "
              "recorder) plus `vla-robot learn --dataset DIR`; add --sim to run the whole loop on the MuJoCo twin.",
              file=sys.stderr)
        return 2
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # the demo's graph stays on this host
    from vla_robot.rl import demo
    from vla_robot.rl.config import RLFinetuneConfig

    cfg = RLFinetuneConfig(seed=args.seed, cubes=args.cubes, rounds=args.rounds, groups_per_round=args.groups_per_round,
                           group_size=args.group_size, demos=args.demos, sft_steps=args.sft_steps,
                           eval_episodes=args.eval_episodes, eval_mode=args.eval_mode, temperature=args.temperature,
                           extra_eval_mode=args.extra_eval_mode, lr=args.lr,
                           mode=args.mode, time_budget_s=args.time_budget, served=args.served,
                           graph_episodes=args.graph_episodes, overlap=args.overlap, safety=args.safety,
                           velocity_scale=args.velocity_scale, acceleration_scale=args.acceleration_scale,
                           episode_s=args.episode_s, progress=not args.no_progress)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"rl-finetune: {e}", file=sys.stderr)
        return 2
    demo.run(cfg, args.out)
    return 0


def learn_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="the recorder's LeRobotDataset root (episodes with tokens and labels)")
    parser.add_argument("--checkpoint", default="", help="policy to start from (OFT layout); empty: the tiny preset")
    parser.add_argument("--resume", default="", help="a learner checkpoint folder (OUT/checkpoint) to continue from")
    parser.add_argument("--out", default="runs/learner", help="where checkpoints and the log go")
    parser.add_argument("--preset", default="tiny", help="GRPO hyper-parameters: tiny or oft-7b")
    parser.add_argument("--weights", default="", help="the policy server's weights socket, e.g. tcp://127.0.0.1:5556")
    parser.add_argument("--demos", default="", help="a teleop demonstration dataset for the hybrid SFT loss")
    parser.add_argument("--mode", choices=("rl", "sft", "hybrid"), default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a GRPO hyper-parameter, e.g. --set group_size=4")
    parser.add_argument("--since", type=int, default=0, help="first episode index to read")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="stop after this many seconds without a new episode (default: run until interrupted)")
    parser.add_argument("--device", default="cpu")


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def learn(args: argparse.Namespace) -> int:
    from vla_robot.rl.config import preset

    try:
        overrides = _parse_overrides(args.set)
        if args.mode:
            overrides["mode"] = args.mode
        cfg = preset(args.preset, **overrides)
    except ValueError as e:
        print(f"learn: {e}", file=sys.stderr)
        return 2
    if not Path(args.dataset).is_dir():
        print(f"learn: dataset folder {args.dataset} does not exist (expected the recorder's dataset root)", file=sys.stderr)
        return 2
    from vla_robot.policy import load_policy
    from vla_robot.rl.dataset import follow_dataset
    from vla_robot.rl.learner import Learner

    publisher = None
    if args.weights:
        from vla_robot.serving import WeightPublisher

        publisher = WeightPublisher(args.weights)
    publish = (lambda sd, v: publisher.push(sd, v)) if publisher else None

    def log(stats: dict) -> None:
        print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, dict)}, default=float), flush=True)

    if args.resume:
        learner = Learner.resume(args.resume, cfg, out_dir=args.out, publish=publish, log=log)
    else:
        runtime = load_policy(preset=None if args.checkpoint else "tiny", checkpoint=args.checkpoint or None,
                              device=args.device)
        learner = Learner(runtime, cfg, out_dir=args.out, publish=publish, log=log)
    action_dim = learner.runtime.metadata["action_dim"]
    if args.demos:
        from vla_robot.rl.dataset import read_demonstrations

        learner.demos = read_demonstrations(args.demos, learner.runtime)
    print(f"learn: version {learner.version}, reading {args.dataset} from episode {args.since} "
          f"({len(learner.consumed)} already used)", flush=True)
    t0 = time.monotonic()
    try:
        for episode in follow_dataset(args.dataset, action_dim, since=args.since, follow=True,
                                      timeout=args.idle_timeout):
            learner.add(episode)
            learner.step()
    except KeyboardInterrupt:
        pass
    finally:
        if publisher is not None:
            publisher.close()
    print(f"learn: stopped at version {learner.version} after {time.monotonic() - t0:.0f} s", flush=True)
    return 0


__all__ = ["rl_finetune_args", "rl_finetune", "learn_args", "learn"]
