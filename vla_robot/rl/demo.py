"""`vla-robot rl-finetune --sim`: RL fine-tuning of the tiny policy on the MuJoCo twin, end to end,
through the robot's own components.

Every episode here, from the first evaluation to the last GRPO rollout, runs through
:func:`vla_robot.rl.rollout.rollout`: per twin the ChunkController of policy_node with the control
config of ``config/rl_finetune.yaml`` (its executor and its safety filter), the policy asked over
ZMQ as the robot asks it, and per chunk the record policy_node publishes.

1. Demonstrations: the twin's scripted expert through the same safety filter (what the arm can do).
2. SFT warm-up of the tiny OpenVLA-OFT policy (discrete head) on them, so that it succeeds sometimes.
3. Evaluation on held-out start states (disjoint seeds), before RL.
4. GRPO rounds: groups of n rollouts per start state, labelled by the twin's success check, fed to
   the :class:`~vla_robot.rl.learner.Learner`; every few rounds a cheap evaluation on the first
   held-out starts gives the curve by labelled episodes (episodes to +10 and +20 points).
5. Evaluation on the same held-out start states, after RL.
6. The fine-tuned policy in the rl_finetune ROS graph (twin_node, policy_node, episode_manager_node,
   recorder_node), recorded to a LeRobotDataset that the learner reads back; its success rate is
   checked against the twin evaluation of the same version.

Every figure in the report is counted from the episodes run here.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vla_robot.data.report import wilson_interval
from vla_robot.rl.config import RLFinetuneConfig, preset
from vla_robot.rl.episodes import Episode, demo_chunks, demo_episodes
from vla_robot.rl.learner import Learner
from vla_robot.rl.rollout import policy_observation, rollout, rollout_group

EVAL_SEED_OFFSET = 1_000_000  # held-out start states: seeds from here on; training seeds below
GRAPH_START_S, GRAPH_EPISODE_S = 15.0, 9.0  # the ROS graph phase on the 2-core CPU: start-up, per episode (measured)


def rate(episodes: Sequence[Episode]) -> dict:
    """Success with its interval, and the fraction of executed ticks the safety filter changed."""
    return {**success_rate([e.label == 1 for e in episodes]),
            "clamped": sum(e.clamped for e in episodes) / max(1, sum(e.length for e in episodes))}


def success_rate(outcomes: Sequence[bool]) -> dict:
    k, n = sum(bool(o) for o in outcomes), len(outcomes)
    lo, hi = wilson_interval(k, n)
    return {"success": k / n if n else float("nan"), "successes": k, "episodes": n, "ci95": [lo, hi]}


# ---- 1. demonstrations ------------------------------------------------------------------------
def collect_demos(env, seeds: Sequence[int], safety=None, progress=None) -> list[dict]:
    """Scripted-expert episodes: [{"seed", "start", "observations", "actions", "success"}].

    ``safety``: a SafetyConfig; the expert's targets then pass through the robot's safety filter and
    the demonstration holds what the arm executed, so the policy learns motions within the limits."""
    from vla_robot.control import SafetyFilter

    demos = []
    for seed in seeds:
        obs = env.reset(start=int(seed))
        limit = SafetyFilter(env.robot.joint_limits(), safety) if safety is not None else None
        if limit is not None:
            limit.reset(env.joint_positions())
        observations, actions = [], []
        for _ in range(env.max_steps):
            a = env.expert_action()
            a = np.asarray(limit.filter(a, env.control_dt) if limit is not None else a, dtype=np.float32)
            observations.append(policy_observation(obs, env.instruction))
            actions.append(a)
            obs = env.step(a)
            if env.success():
                break
        demos.append({"seed": int(seed), "start": env.start_condition, "observations": observations,
                      "actions": np.stack(actions), "success": bool(env.success())})
        if progress is not None:
            progress.update(1)
    return demos


# ---- 2. SFT warm-up ---------------------------------------------------------------------------
def sft_warmup(runtime, demos: Sequence[dict], steps: int, batch_size: int, lr: float, seed: int = 0,
               progress=None) -> list[float]:
    """Set the dataset statistics from the demonstrations and train OFT's token loss on them."""
    from vla_robot.policy.normalization import compute_statistics

    h, d = runtime.metadata["chunk_size"], runtime.metadata["action_dim"]
    obs, chunks = demo_chunks(demos, h)
    anchors = np.stack([o["state"] for o in obs])  # each chunk's observed state (the delta action space's anchor)
    # statistics of what the model predicts (joint targets, or their per-step changes)
    actions = runtime.processor.to_model_actions(chunks, anchors).reshape(-1, d)
    states = np.concatenate([np.stack([o["state"] for o in dm["observations"]]) for dm in demos])
    runtime.processor.set_norm_stats(compute_statistics(actions, states, num_trajectories=len(demos)), "twin_reach")
    tokens = torch.from_numpy(runtime.processor.actions_to_tokens(chunks, anchors))
    batch = runtime.batch(obs)  # preprocess every frame once
    model = runtime.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(tokens), (batch_size,), generator=gen)
        # cross-entropy over the 256 action bins (what sampling uses); the full-vocabulary loss costs
        # ~6x more on a CPU for the tiny model and adds nothing to its actions
        loss = model.sft_loss(batch.select(idx), tokens[idx], vocab="bins")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# ---- 3/5. evaluation --------------------------------------------------------------------------
class Evaluation:
    """Held-out start states, each run once per evaluation with the same sampling seeds (see
    :func:`~vla_robot.rl.rollout.chunk_seed`): versions are compared on the same random numbers."""

    def __init__(self, cfg: RLFinetuneConfig, envs, policy, control):
        self.cfg, self.envs, self.policy, self.control = cfg, envs, policy, control
        self.seeds = [EVAL_SEED_OFFSET + cfg.seed * 10_000 + i for i in range(cfg.eval_episodes)]

    def run(self, mode: str, n: int | None = None, progress=None) -> list[Episode]:
        seeds, episodes, k = self.seeds[:n], [], len(self.envs)
        for i in range(0, len(seeds), k):
            batch = seeds[i: i + k]
            episodes += rollout(self.envs[: len(batch)], self.policy, batch, self.control, mode=mode,
                                temperature=self.cfg.temperature, sample_seed=self.cfg.seed)
            if progress is not None:
                progress.update(len(batch))
        return episodes


# ---- 4. GRPO rounds ---------------------------------------------------------------------------
def first_reaching(curve: list[dict], base: float, points: float) -> int | None:
    """Labelled episodes at the first periodic evaluation ``points`` above ``base`` (None: never)."""
    # (counts of a fixed number of starts: rounded, so that 0.47 - 0.27 counts as the +20 it is)
    return next((c["labelled_episodes"] for c in curve if round(100 * (c["success"] - base), 6) >= points), None)


class Training:
    """The GRPO rounds: rollouts through the robot's components, updates, the periodic evaluation."""

    def __init__(self, cfg: RLFinetuneConfig, envs, policy, control, learner: Learner, evaluation: Evaluation,
                 log: Callable[[str], None]):
        self.cfg, self.envs, self.policy, self.control = cfg, envs, policy, control
        self.learner, self.evaluation, self.log = learner, evaluation, log
        self.rounds: list[dict] = []
        self.curve: list[dict] = []  # periodic evaluation: {"round", "labelled_episodes", "version", success...}
        self.labelled = 0
        self.train_seed = cfg.seed * 10_000 + cfg.demos  # fresh start states, never the demonstrations' ones
        self.report: Counter = Counter()

    def check(self, r: int) -> None:
        """The periodic evaluation (first ``cfg.periodic_eval`` held-out starts) after round ``r``."""
        eps = self.evaluation.run(self.cfg.eval_mode, self.cfg.periodic_eval)
        self.curve.append({"round": r, "labelled_episodes": self.labelled, "version": self.learner.version,
                           **rate(eps)})

    def round(self, r: int, progress: bool) -> dict:
        from tqdm import tqdm

        t0 = time.perf_counter()
        episodes = []
        for _ in tqdm(range(self.cfg.groups_per_round), desc=f"round {r}/{self.cfg.rounds} rollouts", unit="group",
                      disable=None if progress else True):
            episodes += rollout_group(self.envs, self.policy, self.train_seed, self.control, mode="sample",
                                      temperature=self.cfg.temperature, report=self.report)
            self.train_seed += 1
        self.labelled += len(episodes)
        fig = {**rate(episodes), "round": r, "rollout_s": time.perf_counter() - t0,
               "labelled_episodes": self.labelled, "acted_by": sorted({e.version for e in episodes})}
        for e in episodes:
            self.learner.add(e)
        stats = self.learner.step(force=True) or {}
        fig.update(version=self.learner.version, update_s=stats.get("seconds", 0.0),
                   **{k: stats.get(k) for k in ("groups_rl", "groups_sft", "groups_dropped", "clip_frac", "approx_kl",
                                                "grad_norm", "loss", "tokens_per_s")})
        self.rounds.append(fig)
        self.log(f"round {r}: rollout success {fig['successes']}/{fig['episodes']} [{fig['ci95'][0]:.2f}, "
                 f"{fig['ci95'][1]:.2f}], groups rl/sft/drop {fig['groups_rl']}/{fig['groups_sft']}/"
                 f"{fig['groups_dropped']}, {self.labelled} labelled episodes, v{self.learner.version}")
        return fig

    def run(self, deadline: float) -> None:
        """Rounds until ``cfg.rounds``, ``cfg.max_labelled`` episodes or the time ``deadline``."""
        self.check(0)
        last = 0.0
        for r in range(1, self.cfg.rounds + 1):
            if time.perf_counter() + last > deadline:
                self.log(f"time budget: stopping RL after {r - 1} rounds")
                break
            if self.labelled >= self.cfg.max_labelled:
                self.log(f"stopping RL after {self.labelled} labelled episodes (max_labelled)")
                break
            t0 = time.perf_counter()
            self.round(r, self.cfg.progress)
            if r % self.cfg.eval_every == 0:
                self.check(r)
                c = self.curve[-1]
                self.log(f"  periodic evaluation after {self.labelled} labelled episodes: {c['successes']}/"
                         f"{c['episodes']} ({self.cfg.eval_mode})")
            last = time.perf_counter() - t0


# ---- 6. the fine-tuned policy through the ROS graph --------------------------------------------
def graph_episodes(cfg: RLFinetuneConfig, policy_server: str, root: Path, first_seed: int,
                   action_dim: int, timeout_s: float = 600.0) -> dict:
    """``cfg.graph_episodes`` episodes of the rl_finetune graph as ``ros2 launch vla_robot
    rl_finetune.launch.py use_sim:=true`` runs it: twin_node (arm, cameras, success check), policy_node
    asking this run's policy server with config/rl_finetune.yaml's control, episode_manager_node
    labelling with the twin's check, recorder_node writing a LeRobotDataset; then the learner reads
    that dataset back."""
    from vla_robot.data.reader import read_journal
    from vla_robot.nodes.episodes import EpisodeRequest
    from vla_robot.nodes.runner import GraphRunner
    from vla_robot.rl.dataset import follow_dataset

    earlier = len(read_journal(root))  # a second run into the same --out appends: this run's come after
    overrides = {
        "twin_node": {"task": cfg.task, "cubes": cfg.cubes, "image_size": [cfg.image_size, cfg.image_size]},
        "policy_node": {"temperature": cfg.temperature},
        "episode_manager_node": {"episodes": cfg.graph_episodes, "max_duration_s": cfg.episode_s,
                                 "label_source": "auto", "prompt": False, "seed": first_seed},
        "recorder_node": {"root": str(root)},
    }
    t0 = time.perf_counter()
    domain = 1 + os.getpid() % 100  # a simulation: never on the domain of a robot's graph, nor another demo's

    # a fresh seeded twin start per episode, as the evaluation draws them (no GRPO group to fill here)
    def fresh_starts(i, history):
        return EpisodeRequest(task=cfg.task, seed=first_seed + i)

    with GraphRunner("rl_finetune", sim=True, task=cfg.task, policy_server=policy_server, overrides=overrides,
                     exclude=("teleop_node",), domain_id=domain, scheduler=fresh_starts, log_level="warn") as g:
        results = g.record_episodes(cfg.graph_episodes, timeout_s=timeout_s)
        control = g.nodes["policy_node"].controller.report()
        used = g.nodes["policy_node"].config.control
    learned = list(follow_dataset(root, action_dim, since=earlier, follow=False))
    return {**success_rate([r.success for r in results]), "saved": sum(r.saved for r in results),
            "dataset": str(root), "dataset_earlier_episodes": earlier,
            "policy_versions": sorted({v for r in results for v in r.policy_versions}),
            "learner_episodes": len(learned), "learner_tokens": int(sum(s.executed.sum() for e in learned for s in e.steps)),
            "control_ticks": control["safety"]["ticks"],
            "control": {"executor": used.executor.kind, "velocity_scale": used.safety.velocity_scale,
                        "acceleration_scale": used.safety.acceleration_scale},
            "safety_clamps": {k: v for k, v in control["safety"].items() if k != "ticks" and v},
            "seconds": time.perf_counter() - t0}


# ---- the whole run ----------------------------------------------------------------------------
@contextmanager
def served(cfg: RLFinetuneConfig, runtime, out: Path, log: Callable[[str], None]):
    """The policy as the robot sees it: a PolicyServer on loopback, versions hot-swapped by the learner.
    Yields (policy, publish, server address)."""
    from vla_robot.policy import load_policy, save_checkpoint
    from vla_robot.serving import PolicyClient, PolicyServer, WeightPublisher

    save_checkpoint(runtime, out / "sft_checkpoint")
    server = PolicyServer(load_policy(checkpoint=str(out / "sft_checkpoint")), bind="tcp://127.0.0.1:*",
                          weights_bind="tcp://127.0.0.1:*", max_batch=cfg.group_size).start()
    client = PolicyClient(server.address, timeout_s=120)
    publisher = WeightPublisher(server.weights_address)
    log(f"policy served at {server.address}, weights at {server.weights_address}")
    try:
        yield client, publisher.push, server.address
    finally:
        publisher.close()
        client.close()
        server.stop()


def warm_up(cfg: RLFinetuneConfig, env, runtime, control, timings: dict, log) -> tuple[list[dict], list[float]]:
    """Steps 1-2: filtered expert demonstrations, then the SFT warm-up on them."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=cfg.demos, desc="expert demos", unit="ep", disable=None if cfg.progress else True) as bar:
        demos = collect_demos(env, range(cfg.seed * 10_000, cfg.seed * 10_000 + cfg.demos), control.safety, bar)
    demos = [d for d in demos if d["success"]]
    if not demos:
        raise RuntimeError("the scripted expert succeeded in none of the demonstration episodes; check the twin task")
    timings["demos_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tqdm(total=cfg.sft_steps, desc="SFT warm-up", unit="step", disable=None if cfg.progress else True) as bar:
        losses = sft_warmup(runtime, demos, cfg.sft_steps, cfg.sft_batch, cfg.sft_lr, cfg.seed, bar)
    timings["sft_s"] = time.perf_counter() - t0
    log(f"SFT: {len(demos)} demonstrations, loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f} "
        f"in {timings['sft_s']:.0f} s")
    return demos, losses


def evaluate_twice(cfg: RLFinetuneConfig, evaluation: Evaluation, when: str, timings: dict) -> dict:
    """The headline evaluation and the extra one (same starts, same seeds)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=cfg.eval_episodes, desc=f"eval {when} RL", unit="ep", disable=None if cfg.progress else True) as bar:
        main = evaluation.run(cfg.eval_mode, progress=bar)
    extra = evaluation.run(cfg.extra_eval_mode) if cfg.extra_eval_mode else []
    timings[f"eval_{when}_s"] = time.perf_counter() - t0
    return {"main": main, "extra": extra, "versions": sorted({e.version for e in main})}


def run(cfg: RLFinetuneConfig, out_dir: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """The demo; returns the report (also written to ``out_dir/report.json`` with a plot)."""
    from vla_robot.policy import load_policy
    from vla_robot.twin import make_env

    cfg.validate()
    torch.set_num_threads(max(1, cfg.threads))
    t_start, timings = time.perf_counter(), {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    control = cfg.control_config()
    envs = [make_env(cfg.task, seed=cfg.seed + i, image_size=(cfg.image_size, cfg.image_size), episode_s=cfg.episode_s,
                     cubes=cfg.cubes) for i in range(cfg.group_size)]
    runtime = load_policy(preset="tiny", seed=cfg.seed, overrides={"action_space": cfg.action_space})
    demos, sft_losses = warm_up(cfg, envs[0], runtime, control, timings, log)
    with served(cfg, runtime, out, log) as (policy, publish, address):
        evaluation = Evaluation(cfg, envs, policy, control)
        before = evaluate_twice(cfg, evaluation, "before", timings)
        log(f"before RL: {rate(before['main'])['successes']}/{cfg.eval_episodes} ({cfg.eval_mode})")
        learner = Learner(runtime, train_config(cfg), demos=demo_episodes(demos, runtime), seed=cfg.seed,
                          publish=publish)
        training = Training(cfg, envs, policy, control, learner, evaluation, log)
        reserve = 1.2 * timings["eval_before_s"] + (GRAPH_START_S + GRAPH_EPISODE_S * cfg.graph_episodes)
        t0 = time.perf_counter()
        training.run(deadline=t_start + cfg.time_budget_s - reserve)
        timings["rl_s"] = time.perf_counter() - t0
        after = evaluate_twice(cfg, evaluation, "after", timings)
        graph = None
        if cfg.graph_episodes:
            graph = graph_episodes(cfg, address, out / "dataset", EVAL_SEED_OFFSET // 2 + cfg.seed * 10_000,
                                   runtime.metadata["action_dim"])
            timings["graph_s"] = graph["seconds"]
            log(f"ROS graph: {graph['successes']}/{graph['episodes']} succeeded with version(s) "
                f"{graph['policy_versions']}; {graph['saved']} recorded, {graph['learner_episodes']} read back")
    learner.save(out)
    timings["total_s"] = time.perf_counter() - t_start
    report = make_report(cfg, control, before, after, training, graph, demos, sft_losses, timings, learner, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, out / "rl_finetune.png")
    reach = report["labelled_episodes_to"]
    log(f"success ({cfg.eval_mode}) {report['success_before']:.2f} -> {report['success_after']:.2f} on "
        f"{cfg.eval_episodes} held-out episodes ({report['improvement_points']:+.0f} points) after "
        f"{training.labelled} labelled episodes (+10 at {reach['+10']}, +20 at {reach['+20']}) in "
        f"{timings['total_s']:.0f} s; report: {out / 'report.json'}")
    return report


def train_config(cfg: RLFinetuneConfig):
    return preset(cfg.preset, group_size=cfg.group_size, temperature=cfg.temperature, lr=cfg.lr,
                  batch_groups=cfg.groups_per_round, mode=cfg.mode, mini_batch_size=cfg.mini_batch_size,
                  ppo_epochs=cfg.ppo_epochs)


def make_report(cfg, control, before, after, training: Training, graph, demos, sft_losses, timings, learner,
                out: Path) -> dict:
    rb, ra = rate(before["main"]), rate(after["main"])
    base = training.curve[0]["success"] if training.curve else rb["success"]
    agree = None
    if graph is not None:  # the graph's interval and the twin evaluation's overlap: the same policy behaviour
        agree = graph["ci95"][0] <= ra["ci95"][1] and ra["ci95"][0] <= graph["ci95"][1]
    return {
        "success_before": rb["success"], "success_after": ra["success"],
        "success_before_ci95": rb["ci95"], "success_after_ci95": ra["ci95"],
        "improvement_points": round(100 * (ra["success"] - rb["success"]), 6),
        "eval_episodes": len(after["main"]), "eval_mode": cfg.eval_mode,
        "eval_seeds": [training.evaluation.seeds[0], training.evaluation.seeds[-1]],
        "clamped_before": rb["clamped"], "clamped_after": ra["clamped"],
        "rollout_temperature": cfg.temperature,
        "other_eval": ({"mode": cfg.extra_eval_mode, "before": rate(before["extra"]), "after": rate(after["extra"])}
                       if cfg.extra_eval_mode else None),
        "labelled_episodes": training.labelled,
        "labelled_episodes_to": {"+10": first_reaching(training.curve, base, 10),
                                 "+20": first_reaching(training.curve, base, 20)},
        "periodic_eval": training.curve, "rounds": training.rounds, "control_report": dict(training.report),
        "policy_version": learner.version, "versions_in_eval_after": after["versions"],
        "graph": graph, "graph_agrees_with_eval": agree, "demonstrations": len(demos),
        "sft_loss": {"first": sft_losses[0], "last20": float(np.mean(sft_losses[-20:]))},
        "control": asdict(control), "timings_s": timings, "config": asdict(cfg), "grpo": asdict(train_config(cfg)),
        "checkpoint": str(out / "checkpoint"),
    }


def plot(report: dict, path: Path) -> None:
    """Success by labelled episodes: the rollouts per round, the periodic and the final evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rounds, curve = report["rounds"], report["periodic_eval"]
    if rounds:
        ax.plot([r["labelled_episodes"] for r in rounds], [r["success"] for r in rounds], "o", markersize=3,
                alpha=0.35, color="tab:blue", label=f"GRPO rollouts per round ({rounds[0]['episodes']} episodes)")
    if curve:
        xs = [c["labelled_episodes"] for c in curve]
        err = np.array([[c["success"] - c["ci95"][0] for c in curve], [c["ci95"][1] - c["success"] for c in curve]])
        ax.errorbar(xs, [c["success"] for c in curve], yerr=err, fmt="-s", capsize=2, color="tab:orange",
                    label=f"periodic eval ({curve[0]['episodes']} held-out starts)")
        for pts, style in ((10, ":"), (20, "--")):
            ax.axhline(curve[0]["success"] + pts / 100, ls=style, color="gray", lw=1, label=f"+{pts} points")
    end = report["labelled_episodes"]
    for x, key in ((0, "before"), (end, "after")):
        s, ci = report[f"success_{key}"], report[f"success_{key}_ci95"]
        ax.errorbar([x], [s], yerr=[[s - ci[0]], [ci[1] - s]], fmt="D", capsize=4, markersize=7, color="black",
                    label=f"held-out eval ({report['eval_episodes']} starts)" if key == "before" else None)
    ax.set_xlabel("labelled episodes (GRPO rollouts)")
    ax.set_ylabel(f"success rate ({report['eval_mode']}, 95 % Wilson)")
    ax.set_ylim(0, 1)
    ax.set_title(f"RL on the twin, safety filter on: {report['success_before']:.2f} -> {report['success_after']:.2f}")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
