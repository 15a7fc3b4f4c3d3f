"""`vla-robot record`, `vla-robot evaluate` and `vla-robot dataset info|verify|repair|relabel`.

``record`` and ``evaluate`` run the record_demos / evaluate graph (vla_robot.bringup) in this
process with the recorder node writing the dataset; ``--sim`` puts the MuJoCo twin in place of the
robot (and, for record, the twin's scripted expert in place of the operator; for evaluate, the
twin's success check in place of the human label and an in-process policy server). ``dataset``
works on any folder and needs no ROS.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


# --------------------------------------------------------------------------------------- dataset
def dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("info", "verify", "repair", "relabel"),
                   help="info: what is in it; verify: load every episode with stock LeRobot; repair: roll back an "
                        "unfinished episode / adopt a foreign LeRobot dataset; relabel: change a saved episode's "
                        "label (--episode, --label)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-decode", action="store_true", help="verify: skip decoding first/last video frames")
    p.add_argument("--dry-run", action="store_true", help="repair: only say what would change")
    p.add_argument("--episode", type=int, default=None, help="relabel: the saved episode's index")
    p.add_argument("--label", default=None, help="relabel: the new label, success or failure")
    p.add_argument("--source", default="person", help="relabel: who decided it (default person)")
    p.add_argument("--reason", default="", help="relabel: why, kept with the change")
    p.add_argument("--learner", default=None,
                   help="relabel: a learner's --out folder; says whether it already used the episode")


def dataset(args) -> int:
    from . import tools

    root = Path(args.root)
    try:
        if args.action == "info":
            out = tools.info(root)
            if args.json:
                print(json.dumps(out, indent=2))
            else:
                for k, v in out.items():
                    print(f"{k:>20}: {v}")
            return 0
        if args.action == "verify":
            rep = tools.verify(root, decode=not args.no_decode, progress=not args.json)
            if args.json:
                print(json.dumps(rep.to_json(), indent=2))
            else:
                print(f"{root}: {rep.episodes} episodes, {rep.frames} frames: " + ("OK" if rep.ok else "PROBLEMS"))
                for p in rep.problems:
                    print("  - " + p)
            return 0 if rep.ok else 1
        if args.action == "relabel":
            return _relabel(args)
        out = tools.repair(root, dry_run=args.dry_run)
        print(json.dumps(out, indent=2) if args.json else f"{root}: {out['action']}: {out['detail']}")
        return 0
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"vla-robot dataset {args.action}: {e}", file=sys.stderr)
        return 2


def _relabel(args) -> int:
    """``dataset relabel``: one line in the dataset's relabel log (vla_robot.data.relabel)."""
    from . import relabel

    if args.episode is None or args.label is None:
        raise ValueError("relabel needs --episode N and --label success|failure")
    used = None
    if args.learner is not None:  # before the change: a wrong --learner changes nothing
        from vla_robot.rl.dataset import used_by_learner

        used = used_by_learner(args.learner, args.root, args.episode)
    res = relabel.relabel(args.root, args.episode, args.label, source=args.source, reason=args.reason)
    if args.json:
        print(json.dumps({"episode": res.episode_index, "label": str(res.label), "changed": res.change is not None,
                          "change": res.change.to_json() if res.change else None, "used_by_learner_version": used}))
        return 0
    if res.change is None:
        print(f"episode {res.episode_index} is already labelled {res.label}: nothing changed")
        return 0
    c = res.change
    print(f"episode {c.episode_index}: {c.old_label} -> {c.new_label} (source {c.source}"
          + (f", reason: {c.reason}" if c.reason else "") + f"), logged in {relabel.log_path(args.root)}")
    if used is not None:
        print(f"episode {c.episode_index} was already used by the learner at version {used} (its newest checkpoint); "
              "the new label applies to later uses only")
    return 0


# --------------------------------------------------------------------------------- graph commands
def _common_args(p: argparse.ArgumentParser, default_root: str) -> None:
    from vla_robot.twin.robots import DEFAULT_ROBOT, ROBOT_NAMES

    p.add_argument("--sim", action="store_true", help="the MuJoCo twin is the robot, cameras and success check")
    p.add_argument("--episodes", type=int, default=5, help="episodes to run (evaluate: per task; default 5)")
    p.add_argument("--root", default=default_root, help=f"dataset folder (default {default_root}); resumed if it exists")
    p.add_argument("--repo-id", default=None, help="dataset label, user/name (default from the graph's config)")
    p.add_argument("--task", default="", help="a task NAME (sim: the twin's scene, reach or pick_place; evaluate: a,b "
                                              "for several); the words the policy reads go in --instruction")
    p.add_argument("--instruction", default="",
                   help="the WORDS the policy reads, e.g. 'touch the red cube' (default: the twin scene's own; "
                        "robot: the task's text)")
    p.add_argument("--robot", default=DEFAULT_ROBOT, choices=ROBOT_NAMES)
    p.add_argument("--config", default=None, help="parameter file instead of config/<graph>.yaml")
    p.add_argument("--max-duration", type=float, default=None, help="episode timeout in seconds (sim: sim seconds)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many wall seconds in all")


def _check(args) -> None:
    if args.sim and not args.task:  # name the twin's task so that episodes and the report carry it
        from vla_robot.config import config_dir, read_parameter_file

        args.task = str(read_parameter_file(config_dir() / "sim.yaml").get("twin_node", {}).get("task", ""))
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.repo_id is not None and "/" not in args.repo_id:
        raise ValueError(f"--repo-id must look like user/name, got {args.repo_id!r}")


def _overrides(args, n_episodes: int) -> dict:
    rec = {"root": str(Path(args.root).resolve())}
    if args.repo_id:
        rec["repo_id"] = args.repo_id
    em = {"episodes": n_episodes, "prompt": sys.stdin is not None and sys.stdin.isatty() and not args.sim,
          "autostart": False}  # episodes start once the dataset is open (see _run)
    if args.max_duration:
        em["max_duration_s"] = float(args.max_duration)
    out = {"recorder_node": rec, "episode_manager_node": em}
    if getattr(args, "teleop", None) and not args.sim:
        out["teleop_node"] = {"device": args.teleop}
    return out


def _run(graph_name: str, args, serve_policy: str | None, expert: bool) -> tuple[list, int, float]:
    """Run ``args.episodes`` episodes of the graph; returns (episode results, episodes before, seconds)."""
    from tqdm import tqdm

    from vla_robot.nodes.runner import GraphRunner

    from . import reader

    root = Path(args.root)
    before = len(reader.read_journal(root)) if root.exists() else 0
    runner = GraphRunner(graph_name, sim=args.sim, robot=args.robot, task=args.task, instruction=args.instruction,
                         config=args.config,
                         serve_policy=serve_policy, overrides=_overrides(args, args.episodes),
                         exclude=("teleop_node",) if expert else ())
    t0 = time.monotonic()
    with runner:
        if expert:
            from rclpy.node import Node

            from vla_robot.nodes.recorder_node import SimExpertTeleop

            helper = Node("sim_expert_teleop", context=runner.context)
            SimExpertTeleop(helper, runner.nodes["twin_node"])
            runner.nodes[helper.get_name()] = helper  # the runner shuts it down with the graph
            runner.executor.add_node(helper)
        print("waiting for the cameras and joint states, opening the dataset ...", file=sys.stderr)
        bar = tqdm(total=args.episodes, desc=graph_name, unit="episode", disable=None)

        def shown(results, rec):
            s = rec.stats if rec is not None else None
            elapsed = time.monotonic() - t0
            bar.set_postfix_str(
                f"last={results[-1].label}{'' if results[-1].saved else ' (discarded)'} time={elapsed:.0f}s "
                f"fps={(s.frames_queued / elapsed) if s else 0:.1f} dropped={s.frames_dropped if s else 0}")
            bar.update(1)

        try:
            results = runner.record_episodes(args.episodes, timeout_s=max(1.0, t0 + args.timeout - time.monotonic()),
                                             on_episode=shown)
        finally:
            bar.close()
    return results, before, time.monotonic() - t0


def record_args(p: argparse.ArgumentParser) -> None:
    _common_args(p, "runs/demos/dataset")
    p.add_argument("--teleop", choices=("keyboard", "gamepad", "leader"), default=None,
                   help="operator device (default from the config; --sim: the twin's scripted expert)")


def record(args) -> int:
    """Record teleoperated demonstrations (``--sim``: the twin's scripted expert demonstrates)."""
    try:
        _check(args)
        results, before, seconds = _run("record_demos", args, serve_policy=None, expert=args.sim)
    except (ValueError, RuntimeError) as e:
        print(f"vla-robot record: {e}", file=sys.stderr)
        return 2
    from . import reader

    journal = reader.read_journal(args.root)
    new = journal[before:]
    saved = sum(r.saved for r in results)
    print(f"{len(results)} episode(s) in {seconds:.0f} s: {saved} saved, {len(results) - saved} discarded; "
          f"dataset {args.root} now has {len(journal)} episode(s) "
          f"({sum(r.dropped_frames for r in new)} dropped frame(s) in this session)")
    return 0 if len(new) == saved and len(results) == args.episodes else 1


def evaluate_args(p: argparse.ArgumentParser) -> None:
    _common_args(p, "runs/evaluate/dataset")
    p.add_argument("--out", default=None, help="report folder (default: <root>/../report)")
    p.add_argument("--policy", default=None,
                   help="serve this preset or checkpoint folder in-process (default with --sim: tiny; "
                        "without: use the policy server named in the config)")


def evaluate(args) -> int:
    """Run ``--episodes`` labelled episodes per task (``--task a,b``) with the greedy policy, then the report."""
    import copy

    try:
        _check(args)
        serve = args.policy or ("tiny" if args.sim else None)
        tasks = [t.strip() for t in args.task.split(",") if t.strip()] or [""]
        before, seconds = None, 0.0
        for task in tasks:
            one = copy.copy(args)
            one.task = task
            _, b, sec = _run("evaluate", one, serve_policy=serve, expert=False)
            before = b if before is None else before
            seconds += sec
    except (ValueError, RuntimeError) as e:
        print(f"vla-robot evaluate: {e}", file=sys.stderr)
        return 2
    from . import reader
    from .report import evaluation_report, write_report

    args.episodes *= len(tasks)
    journal = reader.read_journal(args.root)[before:]
    fps = reader.dataset_info(args.root)["fps"] if journal else None
    rep = evaluation_report(journal, fps=fps, title=f"Evaluation: {Path(args.root).name}, {len(journal)} episode(s)")
    out = Path(args.out) if args.out else Path(args.root).resolve().parent / "report"
    paths = write_report(rep, out)
    o = rep["overall"]
    rate = "–" if o["success_rate"] is None else f"{100 * o['success_rate']:.1f}%"
    print(f"{len(journal)} episode(s) in {seconds:.0f} s; success {o['successes']}/{o['labelled']} = {rate} "
          f"(95% CI {100 * o['wilson95'][0]:.1f}–{100 * o['wilson95'][1]:.1f}%); report: {paths['markdown']}")
    return 0 if len(journal) == args.episodes else 1
