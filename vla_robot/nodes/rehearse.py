"""`vla-robot rehearse rl_finetune`: a real-robot RL session on a stand-in robot, on the wall clock.

Everything a user starts for a session on a robot is started here, the same way, as separate
processes: the policy server (``vla-robot serve``), the rl_finetune graph with one process per node
(as ``ros2 launch`` runs it), and the learner (``vla-robot learn``), all at the same moment. Only two
things stand in for what cannot be here:

* the robot: the twin's real-time camera and arm backends behind the real camera_node and arm_node
  (config/standin.yaml; one process, since camera and arm share one simulated world), and
  twin_node in ``scene`` mode, which sets up each start condition as the person would;
* the person: :mod:`vla_robot.nodes.standin_person`, which starts episodes, confirms resets and
  labels what it saw through the services and topics a person uses.

Every other node runs with config/rl_finetune.yaml as it ships. At the end the command prints what a
person at the robot wants to know (episodes, labels, faults, updates, versions served and acting,
the on-policy ratio of each update, success per version) and writes ``OUT/report.json``.

The served policy starts from ``--checkpoint``, or from the tiny preset warmed up on the twin's
scripted demonstrations (made once, kept in ``OUT/warm``), so that some episodes succeed and GRPO
groups carry a signal; the learner then also gets those demonstrations (``--demos``) for the hybrid
loss, as a user gives it their teleop demonstrations.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from vla_robot.data.schema import Label

GRAPH = "rl_finetune"
HARDWARE = ("camera_node", "arm_node", "twin_node")


def rehearse_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", choices=(GRAPH,), help="the graph to rehearse")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the session runs (wall clock)")
    parser.add_argument("--out", default="runs/rehearsal", help="folder for the dataset, the learner, logs and report")
    parser.add_argument("--checkpoint", default="",
                        help="policy to serve first (OFT layout); default: the tiny preset warmed up on the twin")
    parser.add_argument("--learner-preset", default="tiny", help="the learner's GRPO preset (tiny, oft-7b)")
    parser.add_argument("--learn-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for `vla-robot learn` (repeatable), e.g. --learn-arg=--set=lr=1e-4")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.KEY=VALUE",
                        help="override one node parameter of the graph (repeatable)")
    parser.add_argument("--labels", choices=("twin", "alternate"), default="twin",
                        help="the stand-in person labels what the twin's success check showed (twin), or "
                             "success and failure in turn (alternate: tests of the plumbing)")
    parser.add_argument("--label-source", choices=("human", "votes"), default="human",
                        help="human: the stand-in person labels every episode; votes: the success detectors "
                             "(--detector) vote and the person answers only when the episode manager asks")
    parser.add_argument("--detector", action="append", default=[], metavar="PATH",
                        help="a success detector (folder or .onnx from `vla-robot detector train`) voting with "
                             "--label-source votes (repeatable; the quorum is episode_manager_node.vote_quorum, 2)")
    parser.add_argument("--seed", type=int, default=0)


def rehearse(args: argparse.Namespace) -> int:
    from vla_robot.config import ConfigError

    if args.minutes <= 0:
        print(f"vla-robot rehearse: --minutes must be > 0, got {args.minutes}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        session = Session(out, args)
    except (ConfigError, ValueError) as e:
        print(f"vla-robot rehearse: {e}", file=sys.stderr)
        return 2
    report = session.run(args.minutes * 60.0)
    print(format_report(report))
    return 0 if report["processes_ok"] else 1


# ---- the session ------------------------------------------------------------------------------
class Session:
    """Server, graph, learner and person for one rehearsal in ``out``."""

    def __init__(self, out: Path, args: argparse.Namespace):
        from vla_robot.nodes.cli import parse_sets

        self.out = out.resolve()
        self.args = args
        self.overrides = parse_sets(args.sets)
        if args.label_source == "votes":
            if not args.detector:
                raise ValueError("--label-source votes needs the detectors that vote: --detector PATH (repeatable), "
                                 "trained with `vla-robot detector train` on twin episodes of the stand-in's task")
            manager = self.overrides.setdefault("episode_manager_node", {})
            manager.update({"label_source": "votes", "detectors": [str(Path(d).resolve()) for d in args.detector]})
            manager.setdefault("vote_quorum", min(2, len(args.detector)))
        elif args.detector:
            raise ValueError("--detector is for --label-source votes")
        if self.out.exists() and any(self.out.glob("dataset/*")):
            raise ValueError(f"{self.out} already holds a rehearsal's dataset; give another --out or remove it")
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID") or str(random.Random().randint(1, 100)),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.graph = None

    def run(self, seconds: float) -> dict:
        from tqdm import tqdm

        if self.args.checkpoint:
            checkpoint, demos = Path(self.args.checkpoint), None
        else:
            checkpoint, demos = warm_start(self.out / "warm", seed=self.args.seed)
        from vla_robot.nodes.processes import start_server

        t0 = time.time()
        try:
            self.procs["server"], server, weights = start_server(str(checkpoint), self.logs / "server.log", self.env,
                                                                 weights=True)
            t0 = time.time()  # the session starts once the policy answers, as a person starts when it is up
            self.graph = self._graph(server).start()
            # the learner stands for the GPU box: here it shares the robot PC's cores, at a lower priority
            self._spawn("learner", ["learn", "--dataset", str(self.out / "dataset"), "--weights", weights,
                                    "--checkpoint", str(checkpoint), "--preset", self.args.learner_preset,
                                    "--out", str(self.out / "learner"),
                                    *(["--demos", str(demos)] if demos else []), *self.args.learn_arg], nice=10)
            with tqdm(total=int(seconds), desc="rehearsal", unit="s", disable=None) as bar:
                minute = 0
                while time.time() - t0 < seconds:
                    time.sleep(min(5.0, max(0.0, seconds - (time.time() - t0))))
                    bar.n, progress = int(time.time() - t0), self._progress()
                    bar.set_postfix(progress, refresh=True)
                    if bar.disable and bar.n // 60 > minute:  # no terminal: a line a minute instead of a bar
                        minute = bar.n // 60
                        print(f"rehearsal: {minute} min, {progress}", flush=True)
        finally:
            codes = self._stop()
        report = summarize(self.out, codes, time.time() - t0, self.env["ROS_DOMAIN_ID"])
        (self.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        return report

    def _spawn(self, name: str, argv: list[str], nice: int = 0) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "vla_robot.cli", *argv], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **self.env}, start_new_session=True,
                                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
        log.close()

    def _graph(self, server: str):
        from vla_robot.nodes.processes import ProcessGraph

        specs = standin_graph(server, self.out, self.overrides, labels=self.args.labels, seed=self.args.seed,
                              answer="asked" if self.args.label_source == "votes" else "always")
        return ProcessGraph(specs, self.logs, groups={"hardware": HARDWARE}, env=self.env)

    def _progress(self) -> dict:
        person = read_jsonl(self.out / "person.jsonl")
        saves = [r["event"] for r in person if r.get("event", {}).get("type") == "save"]
        updates = read_jsonl(self.out / "learner" / "updates.jsonl")
        return {"episodes": len(saves), "success": sum(e.get("label") == Label.SUCCESS for e in saves),
                "updates": len(updates)}

    def _stop(self) -> dict[str, int]:
        """The person first (no new episode), then the graph (the recorder finishes), learner, server."""
        codes: dict[str, int] = {}
        if self.graph is not None:
            codes.update(self.graph.stop(timeout_s=30.0, order=("standin_person", "episode_manager_node",
                                                                 "policy_node", "recorder_node")))
        for name in ("learner", "server"):
            p = self.procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(2)  # SIGINT: the learner saves nothing half-done, the server closes its sockets
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            codes[name] = p.returncode
        return codes


def standin_graph(server: str, out: Path, overrides: dict, labels: str = "twin", seed: int = 0,
                  answer: str = "always") -> list:
    """The rl_finetune graph with the stand-in hardware and person (NodeSpecs); ``answer``: the
    person labels every episode (always) or only when the episode manager asks (asked: votes)."""
    from vla_robot.bringup import NodeSpec, graph
    from vla_robot.config import config_dir

    standin = str(config_dir() / "standin.yaml")
    specs = []
    for s in graph(GRAPH, policy_server=server):
        if s.name in ("camera_node", "arm_node"):  # the hardware's sections replaced, not layered
            s = dataclasses.replace(s, parameters=(standin,))
        elif s.name == "episode_manager_node":  # the twin task's episode length (see standin.yaml)
            s = dataclasses.replace(s, parameters=s.parameters + (standin,))
        elif s.name == "recorder_node":
            s = dataclasses.replace(s, overrides=s.overrides + (("root", str(out / "dataset")),))
        specs.append(s)
    specs.append(NodeSpec("twin_node", "twin_node", parameters=(standin,)))
    specs.append(NodeSpec("standin_person", "standin_person", overrides=(
        ("log", str(out / "person.jsonl")), ("labels", labels), ("seed", seed), ("answer", answer))))
    from vla_robot.nodes.runner import with_overrides

    return with_overrides(specs, overrides, GRAPH)


def warm_start(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The tiny preset after the demo's SFT warm-up, and its demonstrations as a LeRobotDataset (made once).

    The twin's scripted expert stands in for a person's teleoperated demonstrations (what
    `vla-robot record` records on a robot). The learner gets them too (``--demos``): the tiny preset
    learns in hybrid mode, where a group that never succeeds trains on the demonstrations instead.
    """
    checkpoint, demos_root = folder / "checkpoint", folder / "demos"
    if (checkpoint / "config.json").is_file() and demos_root.is_dir():
        return checkpoint, demos_root
    import shutil

    import torch
    from tqdm import tqdm

    from vla_robot.policy import load_policy, save_checkpoint
    from vla_robot.rl.config import RLFinetuneConfig
    from vla_robot.rl.demo import collect_demos, sft_warmup
    from vla_robot.twin import make_env

    shutil.rmtree(folder, ignore_errors=True)  # a warm-up cut off half-way
    cfg = RLFinetuneConfig(seed=seed)
    torch.manual_seed(seed)
    env = make_env(cfg.task, seed=seed, image_size=(cfg.image_size, cfg.image_size), episode_s=cfg.episode_s,
                   cubes=cfg.cubes)
    runtime = load_policy(preset="tiny", seed=seed, overrides={"action_space": cfg.action_space})
    with tqdm(total=cfg.demos, desc="warm-up: expert demos", unit="ep", disable=None) as bar:
        demos = [d for d in collect_demos(env, range(seed * 10_000, seed * 10_000 + cfg.demos),
                                          cfg.control_config().safety, bar) if d["success"]]
    with tqdm(total=cfg.sft_steps, desc="warm-up: SFT", unit="step", disable=None) as bar:
        sft_warmup(runtime, demos, cfg.sft_steps, cfg.sft_batch, cfg.sft_lr, seed, bar)
    write_demonstrations(demos, demos_root, list(env.robot.joint_names))
    save_checkpoint(runtime, checkpoint)
    return checkpoint, demos_root


def write_demonstrations(demos: list[dict], root: Path, joint_names: list[str]) -> None:
    """Scripted-expert episodes into a LeRobotDataset, as teleop demonstrations (control = teleop)."""
    from vla_robot.data import Recorder
    from vla_robot.data.schema import CONTROL_TELEOP, Schema

    first = demos[0]["observations"][0]
    schema = Schema({c: img.shape[:2] for c, img in first["images"].items()}, joint_names, joint_names)
    with Recorder(root, schema, repo_id="local/standin_demos", robot_type="so101") as rec:
        for d in demos:
            rec.start_episode(first["instruction"], start_condition=d["start"])
            for obs, action in zip(d["observations"], d["actions"]):
                while not rec.add_frame(obs["images"], obs["state"], action, control=CONTROL_TELEOP):
                    time.sleep(0.01)  # the writer is behind: this is no robot, wait for it
            rec.save_episode(Label.SUCCESS)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


# ---- the report -------------------------------------------------------------------------------
def summarize(out: Path, codes: dict[str, int], seconds: float, domain: str) -> dict:
    """What happened, from the files the processes left: the person's log, the dataset, the learner's."""
    from vla_robot.data.reader import read_journal

    person = read_jsonl(out / "person.jsonl")
    events = [r["event"] for r in person if "event" in r]
    ends = [e for e in events if e["type"] == "end"]
    saves = [e for e in events if e["type"] == "save"]
    root = out / "dataset"
    journal = read_journal(root) if root.is_dir() else []
    updates = read_jsonl(out / "learner" / "updates.jsonl")
    by_version: dict[int, list[int]] = defaultdict(list)
    for r in journal:
        if r.label is not Label.UNLABELLED and len(r.policy_versions) == 1:
            by_version[r.policy_versions[0]].append(r.label is Label.SUCCESS)
    first_seen: dict[int, int] = {}
    for r in journal:
        for v in r.policy_versions:
            first_seen.setdefault(v, r.episode_index)
    return {
        "seconds": seconds,
        "ros_domain_id": domain,
        "episodes_ended": len(ends),
        "end_reasons": dict(Counter(e["reason"] for e in ends)),
        "faults": [e.get("fault") for e in ends if e["reason"] == "fault"],
        "fault_fraction": (sum(e["reason"] == "fault" for e in ends) / len(ends)) if ends else 0.0,
        "labels": dict(Counter(e["label"] for e in saves)),
        "label_sources": dict(Counter(e.get("label_source", "") for e in saves)),
        "questions": _questions(person, saves),
        "saved_episodes": len(journal),
        "dropped_frames": sum(r.dropped_frames for r in journal),
        # the rate the graph held: recorded frames (one per arm command) per second of episode
        "recorded_hz": _median([r.length / r.duration_s for r in journal if r.duration_s > 0.5]),
        "recorder_meta": _sum_meta(journal),
        # an update that changed nothing (every group dropped, no demonstrations for an all-fail group) is no update
        "updates": [{k: u.get(k) for k in ("version", "episodes", "groups", "success", "ratio_acting", "seconds")}
                    for u in updates if u.get("opt_steps")],
        "batches_without_update": sum(not u.get("opt_steps") for u in updates),
        "versions_acting": sorted(first_seen),
        "first_episode_of_version": first_seen,
        "success_by_version": {v: {"episodes": len(s), "successes": int(sum(s))} for v, s in sorted(by_version.items())},
        "exit_codes": codes,
        "processes_ok": all(c in (0, -2, 130) for c in codes.values()),
    }


def _questions(person: list[dict], saves: list[dict]) -> dict:
    """How often the person was asked for a label (``ask`` events), per saved episode, and how the
    votes' own labels compare with what the person saw of the same episodes."""
    asked = {r["event"]["episode"] for r in person if r.get("event", {}).get("type") == "ask"}
    saw = {r["episode"]: r["succeeded"] for r in person if r.get("action") == "saw"}
    voted = [e for e in saves if e.get("label_source") == "votes" and e["episode"] in saw]
    right = sum((e["label"] == Label.SUCCESS) == saw[e["episode"]] for e in voted)
    return {"asked": len(asked), "episodes": len(saves),
            "per_episode": len(asked) / len(saves) if saves else None,
            "labelled_by_votes": sum(e.get("label_source") == "votes" for e in saves),
            "votes_right": right, "votes_scored": len(voted)}


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def _sum_meta(journal) -> dict:
    """Integer counters the recorder keeps per episode in its journal meta (lost chunks and the like)."""
    total: Counter = Counter()
    for r in journal:
        for k, v in (r.meta or {}).items():
            if isinstance(v, int) and not isinstance(v, bool) and k != "episode":
                total[k] += v
    return dict(total)


def format_report(r: dict) -> str:
    lines = [f"rehearsal: {r['seconds'] / 60:.1f} min on the wall clock (ROS domain {r['ros_domain_id']})",
             f"  episodes ended  {r['episodes_ended']}  ({', '.join(f'{k} {v}' for k, v in r['end_reasons'].items())})",
             f"  faults          {len(r['faults'])} ({100 * r['fault_fraction']:.1f}%)"
             + (f": {Counter(r['faults']).most_common(2)}" if r["faults"] else ""),
             f"  labels          {r['labels']} by {r.get('label_sources', {})}",
             *([f"  questions       {q['asked']} for {q['episodes']} saved episodes ({q['per_episode']:.2f} per "
                f"episode); the votes labelled {q['labelled_by_votes']}, {q['votes_right']}/{q['votes_scored']} "
                "as the person saw them"] if (q := r.get("questions") or {}).get("asked") or q.get("labelled_by_votes") else []),
             f"  saved episodes  {r['saved_episodes']}, dropped frames {r['dropped_frames']}, "
             f"recorded at {r['recorded_hz'] or 0:.1f} Hz (median)"
             + (f", {r['recorder_meta']}" if r["recorder_meta"] else ""),
             f"  updates         {len(r['updates'])}"
             + (f" ({r['batches_without_update']} batch(es) of groups gave no update)" if r["batches_without_update"] else "")]
    for u in r["updates"]:
        ra = u.get("ratio_acting") or {}
        ratio = (f"|r-1| median {ra.get('median_abs', float('nan')):.2e}, mean {ra.get('mean_abs', float('nan')):.2e} "
                 f"over {ra.get('n', 0)} tokens") if ra.get("n") else "no tokens of the acting version"
        lines.append(f"    -> v{u['version']}: {u.get('episodes')} episodes, success {u.get('success', 0):.2f}, {ratio}, "
                     f"{u.get('seconds', 0):.1f} s")
    lines.append("  versions acting " + ", ".join(f"v{v} from episode {e}" for v, e in
                                                   sorted(r["first_episode_of_version"].items())))
    lines.append("  success by version " + ", ".join(f"v{v} {s['successes']}/{s['episodes']}" for v, s in
                                                      r["success_by_version"].items()))
    bad = {k: c for k, c in r["exit_codes"].items() if c not in (0, -2, 130)}
    lines.append("  processes       " + ("all stopped cleanly" if not bad else f"exited badly: {bad}"))
    return "\n".join(lines)


__all__ = ["rehearse_args", "rehearse", "standin_graph", "summarize", "format_report", "warm_start"]
