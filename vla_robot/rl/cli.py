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
    parser.add_argument("--graph-episodes", type=int, default=d.graph_episodes,
                        help="after RL, run this many episodes through the rl_finetune ROS graph (0: none)")
    parser.add_argument("--eval-every", type=int, default=d.eval_every,
                        help="rounds between the periodic evaluations on the first --periodic-eval held-out starts")
    parser.add_argument("--periodic-eval", type=int, default=d.periodic_eval,
                        help="held-out starts in each periodic evaluation (the curve by labelled episodes)")
    parser.add_argument("--max-labelled", type=int, default=d.max_labelled,
                        help="stop RL once this many labelled rollouts were used (on a robot, episodes are what cost)")
    parser.add_argument("--graph-config", default=d.graph_config,
                        help="the parameter file whose policy_node control (executor, safety filter) every twin "
                             "episode runs through (default config/rl_finetune.yaml, the robot's)")
    parser.add_argument("--episode-s", type=float, default=d.episode_s, help="twin episode length, seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def rl_finetune(args: argparse.Namespace) -> int:
    if not args.sim:
        print("rl-finetune on a robot runs as a graph: `vla-robot launch rl_finetune` (policy server, episode manager, "
              "recorder) plus `vla-robot learn --dataset DIR`; add --sim to run the whole loop on the MuJoCo twin.",
              file=sys.stderr)
        return 2
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # the demo's graph stays on this host
    from vla_robot.rl import demo
    from vla_robot.rl.config import RLFinetuneConfig

    cfg = RLFinetuneConfig(seed=args.seed, cubes=args.cubes, rounds=args.rounds, groups_per_round=args.groups_per_round,
                           group_size=args.group_size, demos=args.demos, sft_steps=args.sft_steps,
                           eval_episodes=args.eval_episodes, eval_mode=args.eval_mode, temperature=args.temperature,
                           extra_eval_mode=args.extra_eval_mode, lr=args.lr,
                           mode=args.mode, time_budget_s=args.time_budget, graph_episodes=args.graph_episodes,
                           eval_every=args.eval_every, periodic_eval=args.periodic_eval,
                           max_labelled=args.max_labelled, graph_config=args.graph_config,
                           episode_s=args.episode_s, progress=not args.no_progress)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"rl-finetune: {e}", file=sys.stderr)
        return 2
    demo.run(cfg, args.out)
    return 0


LEARN_HELP = """\
The learner of a real-robot RL session: it follows the recorder's dataset, makes a GRPO update after
every batch_groups complete groups (presets: one update per complete group of group_size = 8 episodes
of one task and start condition), checkpoints to OUT/checkpoint and pushes each new version to the
policy server's weights socket.

The episode manager's scheduler must run groups of the learner's group_size (episode_manager
group_size, default 8; --set group_size=N here): smaller groups never complete, larger ones mix in
the next start condition.

Every update prints one JSON line (also appended to OUT/updates.jsonl) with ratio_acting, the
on-policy check: |r - 1| of the tokens the learner's own version sampled, which must be ~0. Episodes
that cannot be on-policy (another sampling temperature, or a server of another model, dtype or
preprocessing) are refused by name, as are (by default) episodes an operator took over.

Restart-safe: with OUT/checkpoint present, learn carries on from it (version, optimiser, the episodes
already used), so a learner killed at any moment loses and repeats nothing.

The 7B: --preset oft-7b --device cuda --dtype bfloat16 (the dtype the server runs in). It trains a
LoRA adapter (OFT's rank 32) and each update pushes the adapter, not the model; --lora-rank 0 is full
fine-tuning (docs/lora.md).
"""


def learn_args(parser: argparse.ArgumentParser) -> None:
    parser.description = LEARN_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--dataset", required=True,
                        help="the recorder's LeRobotDataset root (episodes with tokens and labels); "
                             "waited for if the recorder has not created it yet")
    parser.add_argument("--checkpoint", default="", help="policy to start from (OFT layout); empty: the tiny preset")
    parser.add_argument("--resume", default="",
                        help="a learner checkpoint folder to continue from (default: OUT/checkpoint when it exists)")
    parser.add_argument("--out", default="runs/learner",
                        help="checkpoints and updates.jsonl; an existing OUT/checkpoint is resumed")
    parser.add_argument("--preset", default="tiny",
                        help="GRPO hyper-parameters: tiny or oft-7b (both: an update per complete group of 8; "
                             "the episode manager's group_size must be the same)")
    parser.add_argument("--weights", default="", help="the policy server's weights socket, e.g. tcp://127.0.0.1:5556")
    parser.add_argument("--curve-server-key", default="",
                        help="the server's public key (server.key from `vla-robot keygen`) for a Curve-encrypted "
                             "weights socket (a server bound beyond loopback)")
    parser.add_argument("--curve-client-key", default="",
                        help="this learner's NAME.key_secret, when the server admits only listed client keys")
    parser.add_argument("--demos", default="", help="a teleop demonstration dataset for the hybrid SFT loss")
    parser.add_argument("--mode", choices=("rl", "sft", "hybrid"), default=None)
    parser.add_argument("--intervened", choices=("skip", "keep"), default=None,
                        help="episodes an operator took over: skip (default: the outcome is not the policy's) "
                             "or keep (train on their policy-executed chunks)")
    parser.add_argument("--lora-rank", type=int, default=None, metavar="R",
                        help="train a peft LoRA adapter of rank R on OFT's target modules (oft-7b: 32) instead of "
                             "every weight; 0: full fine-tuning (tiny's default). Resuming needs the rank it was "
                             "trained with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a GRPO hyper-parameter, e.g. --set group_size=4")
    parser.add_argument("--since", type=int, default=0, help="first episode index to read")
    parser.add_argument("--trust-labels", default="", metavar="SOURCES",
                        help="train only on episodes labelled by these sources, comma-separated, e.g. human,votes "
                             "(human: a person at the episode's end; auto: the twin's check; votes: the success "
                             "detectors' consensus; person: a `dataset relabel`); default: every source")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="stop after this many seconds without a new episode (default: run until interrupted)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (also when resuming)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the learner's weights (also when resuming): float32 on the CPU; bfloat16 for the 7B "
                             "on a GPU. It must be the server's: episodes served in another dtype are refused")


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


def _wait_for_dataset(root: Path, timeout: float | None) -> bool:
    """The learner may start before the recorder has saved anything: wait for its folder (said once)."""
    if root.is_dir():
        return True
    print(f"learn: waiting for the dataset folder {root} (the recorder creates it when it starts)", flush=True)
    t0 = time.monotonic()
    while not root.is_dir():
        if timeout is not None and time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.5)
    print(f"learn: {root} appeared", flush=True)
    return True


def _publisher(args: argparse.Namespace):
    """The weights publisher (Curve keys when given) and a publish function that never stops the learner."""
    from vla_robot.serving import WeightPublisher
    from vla_robot.serving.client import PolicyServerError, PolicyTimeout

    if args.curve_client_key and not args.curve_server_key:
        raise ValueError("--curve-client-key needs --curve-server-key (the server's public key)")
    publisher = WeightPublisher(args.weights, curve_server_key=args.curve_server_key or None,
                                curve_client_key=args.curve_client_key or None)

    def publish(state: dict, version: int, **lora) -> None:
        try:
            r = publisher.push(state, version, **lora)  # lora: the adapter's base name and W0 (rl/lora.py)
            print(f"learn: version {version} serving ({r['bytes'] / 1e6:.1f} MB in {r['seconds']:.2f} s)", flush=True)
        except (PolicyServerError, PolicyTimeout) as e:
            # a server that restarted or is away: the next update sends all weights again
            print(f"learn: version {version} not served: {e}", file=sys.stderr, flush=True)
    return publisher, publish


def learn(args: argparse.Namespace) -> int:
    try:
        cfg = _learn_config(args)
        publisher, publish = _publisher(args) if args.weights else (None, None)
    except (ValueError, OSError) as e:
        print(f"learn: {e}", file=sys.stderr)
        return 2

    def log(stats: dict) -> None:
        print(json.dumps(stats, default=float), flush=True)

    def note(text: str) -> None:
        print(f"learn: {text}", file=sys.stderr, flush=True)

    try:
        learner = _make_learner(args, cfg, out_dir=args.out, publish=publish, log=log, note=note)
    except (ValueError, OSError) as e:
        if publisher is not None:
            publisher.close()
        print(f"learn: {e}", file=sys.stderr)
        return 2
    print(f"learn: version {learner.version}, preset {args.preset}: an update after every {cfg.batch_groups} complete "
          f"group(s) of group_size={cfg.group_size} episodes (the episode manager's scheduler must use group_size "
          f"{cfg.group_size} too); {args.dtype} on {args.device}, temperature {cfg.temperature:g}, "
          f"intervened episodes: {cfg.intervened}", flush=True)
    trained = sum(p.numel() for p in learner.params)
    print(f"learn: LoRA rank {cfg.lora_rank} ({trained:,} trained values; each update pushes the adapter)"
          if cfg.lora_rank else f"learn: full fine-tuning ({trained:,} trained values; each update pushes every weight)",
          flush=True)
    if cfg.mode == "hybrid" and not args.demos:
        print("learn: mode hybrid without --demos: a group that never succeeds is skipped (give --demos DIR, "
              "teleop demonstrations, to learn from them instead)", flush=True)
    t0 = time.monotonic()
    try:
        _follow(args, learner, note)
    except KeyboardInterrupt:
        pass
    finally:
        if publisher is not None:
            publisher.close()
    print(f"learn: stopped at version {learner.version} after {time.monotonic() - t0:.0f} s; skipped "
          f"{dict(learner.skipped) or 'nothing'}", flush=True)
    return 0


def _learn_config(args: argparse.Namespace):
    """The GRPO hyper-parameters: the preset with --set, --mode and --intervened; checks --resume."""
    from vla_robot.rl.config import preset

    overrides = _parse_overrides(args.set)
    if args.mode:
        overrides["mode"] = args.mode
    if args.intervened:
        overrides["intervened"] = args.intervened
    if args.lora_rank is not None:
        overrides["lora_rank"] = args.lora_rank
    cfg = preset(args.preset, **overrides)
    if args.resume and not Path(args.resume).is_dir():
        raise ValueError(f"--resume {args.resume} is not a folder (expected a learner's OUT/checkpoint)")
    return cfg


def _make_learner(args: argparse.Namespace, cfg, **kw):
    """The learner resumed from --resume or OUT/checkpoint, else new on --checkpoint (or the tiny preset)."""
    from vla_robot.policy import load_policy
    from vla_robot.rl.distributed import process_device
    from vla_robot.rl.learner import Learner, find_checkpoint

    args.device = process_device(args.device)  # under torchrun: this process's own GPU (rl/distributed.py)
    resume = Path(args.resume) if args.resume else find_checkpoint(args.out)
    if resume is not None:
        learner = Learner.resume(resume, cfg, device=args.device, dtype=args.dtype, **kw)
        print(f"learn: resuming from {resume}: version {learner.version}, {len(learner.consumed)} episodes "
              "already used" + (f" (--checkpoint {args.checkpoint} ignored)" if args.checkpoint else ""), flush=True)
        if kw["publish"] is not None and learner.version > 0:
            learner.publish_weights()  # a server that restarted serves it again
    else:
        runtime = load_policy(preset=None if args.checkpoint else "tiny", checkpoint=args.checkpoint or None,
                              device=args.device, dtype=args.dtype)
        learner = Learner(runtime, cfg, **kw)
    if args.demos:
        from vla_robot.rl.dataset import read_demonstrations

        learner.demos = read_demonstrations(args.demos, learner.runtime)
    return learner


def _follow(args: argparse.Namespace, learner, note) -> None:
    """Feed the learner the recorder's episodes as they are saved, updating when groups complete."""
    from vla_robot.rl.dataset import follow_dataset

    if not _wait_for_dataset(Path(args.dataset), args.idle_timeout):
        print(f"learn: no dataset folder {args.dataset} within {args.idle_timeout:g} s; stopping", flush=True)
        return
    print(f"learn: reading {args.dataset} from episode {args.since} ({len(learner.consumed)} already used)", flush=True)

    def on_bad(index: int, reason: str) -> None:
        learner.skipped["bad_episode"] += 1
        note(f"skipped bad episode {index} ({learner.skipped['bad_episode']} so far): {reason}")

    trust = [s.strip() for s in args.trust_labels.split(",") if s.strip()] or None
    if trust:
        print(f"learn: training only on labels by {', '.join(trust)}", flush=True)
    for episode in follow_dataset(args.dataset, learner.runtime.metadata["action_dim"], since=args.since, follow=True,
                                  timeout=args.idle_timeout, on_bad=on_bad, trust=trust):
        try:
            learner.add(episode)
        except ValueError as e:  # a malformed episode the reader let through: never a crash loop
            learner.skipped["invalid"] += 1
            note(f"episode {episode.episode_id} not used: {e}")
            continue
        learner.step()


__all__ = ["rl_finetune_args", "rl_finetune", "learn_args", "learn"]
