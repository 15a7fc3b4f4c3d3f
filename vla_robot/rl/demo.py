"""`vla-robot rl-finetune --sim`: RL fine-tuning of the tiny policy on the MuJoCo twin, end to end.

1. Demonstrations: the twin's scripted expert on training start states.
2. SFT warm-up of the tiny OpenVLA-OFT policy (discrete head) on them, so that it succeeds sometimes.
3. Evaluation on held-out start states (disjoint seeds), before RL.
4. GRPO rounds: groups of n rollouts per start state at the rollout temperature, labelled by the
   twin's success check, fed to the :class:`~vla_robot.rl.learner.Learner` (dynamic sampling, clip
   0.8/1.28, executed-token masks, hybrid SFT for groups that never succeed).
5. Evaluation on the same held-out start states, after RL; report.json and a plot.
6. The fine-tuned policy in the rl_finetune ROS graph (twin_node, policy_node, episode_manager_node,
   recorder_node) for a few episodes, recorded to a LeRobotDataset that the learner reads back.

Every figure in the report is counted from the episodes run here.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vla_robot.data.report import wilson_interval
from vla_robot.rl.config import RLFinetuneConfig, preset
from vla_robot.rl.episodes import Episode, demo_chunks, demo_episodes
from vla_robot.rl.rollout import policy_observation, rollout, rollout_group
from vla_robot.rl.learner import Learner

EVAL_SEED_OFFSET = 1_000_000  # held-out start states: seeds from here on; training seeds below
GRAPH_START_S, GRAPH_EPISODE_S = 15.0, 4.0  # the ROS graph phase on the 2-core CPU: start-up, per episode


def rate(episodes: Sequence[Episode]) -> dict:
    """Success with its interval, and the fraction of executed steps the safety filter changed."""
    return {**success_rate([e.label == 1 for e in episodes]),
            "clamped": sum(e.clamped for e in episodes) / max(1, sum(e.length for e in episodes))}


def success_rate(outcomes: Sequence[bool]) -> dict:
    k, n = sum(bool(o) for o in outcomes), len(outcomes)
    lo, hi = wilson_interval(k, n)
    return {"success": k / n if n else float("nan"), "successes": k, "episodes": n, "ci95": [lo, hi]}


# ---- the policy, in-process or over ZMQ ---------------------------------------------------------
def local_policy(runtime, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def act(observations: list[dict], mode: str, temperature: float, seeds=None) -> list[dict]:
        with torch.no_grad():
            out = runtime.predict(observations, mode=mode, temperature=temperature, return_tokens=True,
                                  **({"seeds": seeds} if seeds is not None else {"generator": gen}))
        return [dict(r, version=runtime.version) for r in out]

    return act


def served_policy(client, poll_s: float = 0.001):
    """The same call over ZMQ: one request per observation, batched by the server."""

    def act(observations: list[dict], mode: str, temperature: float, seeds=None) -> list[dict]:
        ids = [client.submit(o, mode=mode, temperature=temperature, return_tokens=True,
                             seed=None if seeds is None else seeds[i]) for i, o in enumerate(observations)]
        out: list = [None] * len(ids)
        while True:
            for i, rid in enumerate(ids):
                if out[i] is None:
                    out[i] = client.poll(rid)
            if all(r is not None for r in out):
                return out
            time.sleep(poll_s)

    return act


# ---- 1. demonstrations ------------------------------------------------------------------------
def collect_demos(env, seeds: Sequence[int], progress=None) -> list[dict]:
    """Scripted-expert episodes: [{"seed", "start", "observations", "actions", "success"}]."""
    demos = []
    for seed in seeds:
        obs = env.reset(start=int(seed))
        observations, actions = [], []
        for _ in range(env.max_steps):
            a = np.asarray(env.expert_action(), dtype=np.float32)
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

    h = runtime.metadata["chunk_size"]
    actions = np.concatenate([d["actions"] for d in demos])
    states = np.concatenate([np.stack([o["state"] for o in d["observations"]]) for d in demos])
    runtime.processor.set_norm_stats(compute_statistics(actions, states, num_trajectories=len(demos)), "twin_reach")
    obs, chunks = demo_chunks(demos, h)
    tokens = torch.from_numpy(runtime.processor.actions_to_tokens(chunks))
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
def evaluate(envs, policy, seeds: Sequence[int], mode: str, temperature: float, progress=None,
             sample_seed: int = 0, safety=None) -> list[Episode]:
    """One episode per held-out start state. Sampling is seeded per (start, chunk): the same version
    gives the same episodes again, and before/after share their random numbers."""
    episodes = []
    for i in range(0, len(seeds), len(envs)):
        batch = list(seeds[i: i + len(envs)])
        episodes += rollout(envs[: len(batch)], policy, batch, mode=mode, temperature=temperature, keep_steps=False,
                            sample_seed=sample_seed, safety=safety)
        if progress is not None:
            progress.update(len(batch))
    return episodes


# ---- 6. the fine-tuned policy through the ROS graph --------------------------------------------
def graph_episodes(cfg: RLFinetuneConfig, policy_server: str, root: Path, first_seed: int,
                   action_dim: int, timeout_s: float = 300.0) -> dict:
    """``cfg.graph_episodes`` episodes of the rl_finetune graph as ``ros2 launch vla_robot
    rl_finetune.launch.py use_sim:=true`` runs it: twin_node (arm, cameras, success check), policy_node
    asking this run's policy server (sampling, tokens and log-probs), episode_manager_node labelling with
    the twin's check, recorder_node writing a LeRobotDataset; then the learner reads that dataset back."""
    from vla_robot.data.reader import read_journal
    from vla_robot.nodes.episodes import EpisodeRequest
    from vla_robot.nodes.runner import GraphRunner
    from vla_robot.rl.dataset import follow_dataset

    # the recorder appends to a dataset already there (a second run into the same --out): this run's
    # episodes are the ones after those
    earlier = len(read_journal(root))

    overrides = {
        "twin_node": {"task": cfg.task, "cubes": cfg.cubes, "image_size": [cfg.image_size, cfg.image_size]},
        # as the twin rollouts execute: each chunk whole (open loop), within the safety limits they use
        # (policy_node always filters: with cfg.safety off the rollouts do not, and the report shows the gap)
        "policy_node": {"temperature": cfg.temperature, "control": {
            "executor": {"kind": "open_loop"},
            "safety": {"velocity_scale": cfg.velocity_scale, "acceleration_scale": cfg.acceleration_scale}}},
        "episode_manager_node": {"episodes": cfg.graph_episodes, "max_duration_s": cfg.episode_s,
                                 "label_source": "auto", "prompt": False, "seed": first_seed},
        "recorder_node": {"root": str(root)},
    }
    t0 = time.perf_counter()
    # a simulation: never on the domain of a real robot's graph, nor of another demo running beside it
    domain = 1 + os.getpid() % 100

    # a fresh twin start per episode (seeded), as the rollouts sample them: this phase shows the graph's
    # path, it fills no GRPO group (rl mode's default scheduler would run one start condition 8 times)
    def fresh_starts(i, history):
        return EpisodeRequest(task=cfg.task, seed=first_seed + i)

    with GraphRunner("rl_finetune", sim=True, task=cfg.task, policy_server=policy_server, overrides=overrides,
                     exclude=("teleop_node",), domain_id=domain, scheduler=fresh_starts) as g:
        results = g.record_episodes(cfg.graph_episodes, timeout_s=timeout_s)
        control = g.nodes["policy_node"].controller.report()
        used = g.nodes["policy_node"].config.control
    learned = list(follow_dataset(root, action_dim, since=earlier, follow=False))
    return {**success_rate([r.label == "success" for r in results]), "saved": sum(r.saved for r in results),
            "dataset": str(root), "dataset_earlier_episodes": earlier,
            "policy_versions": sorted({v for r in results for v in r.policy_versions}),
            "learner_episodes": len(learned), "learner_tokens": int(sum(s.executed.sum() for e in learned for s in e.steps)),
            # the safety filter between policy and arm (the twin rollouts pass one only with cfg.safety)
            "control_ticks": control["safety"]["ticks"],
            "control": {"executor": used.executor.kind, "velocity_scale": used.safety.velocity_scale,
                        "acceleration_scale": used.safety.acceleration_scale},
            "safety_clamps": {k: v for k, v in control["safety"].items() if k != "ticks" and v},
            "seconds": time.perf_counter() - t0}


# ---- the whole run ----------------------------------------------------------------------------
def run(cfg: RLFinetuneConfig, out_dir: str | Path, *, policy_factory: Callable | None = None,
        log: Callable[[str], None] = print) -> dict:
    """The demo; returns the report (also written to ``out_dir/report.json`` with a plot)."""
    from tqdm import tqdm

    from vla_robot.policy import load_policy
    from vla_robot.twin import make_env

    cfg.validate()
    torch.set_num_threads(max(1, cfg.threads))
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grpo = preset(cfg.preset, group_size=cfg.group_size, temperature=cfg.temperature, lr=cfg.lr,
                  batch_groups=cfg.groups_per_round, mode=cfg.mode, mini_batch_size=cfg.mini_batch_size,
                  ppo_epochs=cfg.ppo_epochs)
    envs = [make_env(cfg.task, seed=cfg.seed + i, image_size=(cfg.image_size, cfg.image_size), episode_s=cfg.episode_s,
                     cubes=cfg.cubes) for i in range(cfg.group_size)]
    runtime = load_policy(preset="tiny", seed=cfg.seed)
    timings = {}

    # 1-2. demonstrations and SFT warm-up
    t0 = time.perf_counter()
    with tqdm(total=cfg.demos, desc="expert demos", unit="ep", disable=None if cfg.progress else True) as bar:
        demos = collect_demos(envs[0], range(cfg.seed * 10_000, cfg.seed * 10_000 + cfg.demos), bar)
    demos = [d for d in demos if d["success"]]
    if not demos:
        raise RuntimeError("the scripted expert succeeded in none of the demonstration episodes; check the twin task")
    timings["demos_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tqdm(total=cfg.sft_steps, desc="SFT warm-up", unit="step", disable=None if cfg.progress else True) as bar:
        sft_losses = sft_warmup(runtime, demos, cfg.sft_steps, cfg.sft_batch, cfg.sft_lr, cfg.seed, bar)
    timings["sft_s"] = time.perf_counter() - t0
    log(f"SFT: {len(demos)} demonstrations, loss {sft_losses[0]:.3f} -> {np.mean(sft_losses[-20:]):.3f} "
        f"in {timings['sft_s']:.0f} s")

    server = client = publisher = None
    publish = None
    if cfg.served:  # the policy as the robot sees it: a server on loopback, versions hot-swapped by the learner
        from vla_robot.policy import save_checkpoint
        from vla_robot.serving import PolicyClient, PolicyServer, WeightPublisher

        save_checkpoint(runtime, out / "sft_checkpoint")
        server = PolicyServer(load_policy(checkpoint=str(out / "sft_checkpoint")), bind="tcp://127.0.0.1:*",
                              weights_bind="tcp://127.0.0.1:*", max_batch=cfg.group_size).start()
        client = PolicyClient(server.address, timeout_s=120)
        publisher = WeightPublisher(server.weights_address)
        policy = served_policy(client)
        publish = lambda sd, v: publisher.push(sd, v)  # noqa: E731
        log(f"policy served at {server.address}, weights at {server.weights_address}")
    else:
        policy = (policy_factory or local_policy)(runtime)
    eval_seeds = [EVAL_SEED_OFFSET + cfg.seed * 10_000 + i for i in range(cfg.eval_episodes)]
    safety = cfg.safety_config()

    def evaluate_both(when: str) -> tuple[list[Episode], list[Episode]]:
        """The headline evaluation and the extra one, on the held-out starts with the same sampling seeds."""
        t0 = time.perf_counter()
        with tqdm(total=len(eval_seeds), desc=f"eval {when} RL", unit="ep", disable=None if cfg.progress else True) as bar:
            main = evaluate(envs, policy, eval_seeds, cfg.eval_mode, cfg.temperature, bar, sample_seed=cfg.seed,
                            safety=safety)
        extra = (evaluate(envs, policy, eval_seeds, cfg.extra_eval_mode, cfg.temperature, sample_seed=cfg.seed,
                          safety=safety)
                 if cfg.extra_eval_mode else [])
        timings[f"eval_{when}_s"] = time.perf_counter() - t0
        return main, extra

    # 3. before
    before, extra_before = evaluate_both("before")
    log(f"before RL: {rate(before)['successes']}/{len(before)} ({cfg.eval_mode})"
        + (f", {rate(extra_before)['successes']}/{len(extra_before)} ({cfg.extra_eval_mode})" if extra_before else ""))

    # 4. GRPO rounds. Served, the learner updates on round r while round r+1 rolls out with the version
    # before it, as on the robot, where episodes keep coming while the learner trains: the stored
    # behaviour log-probs and versions keep each update right for the version that acted (staleness 1).
    learner = Learner(runtime, grpo, demos=demo_episodes(demos, runtime), seed=cfg.seed, publish=publish)
    overlap = cfg.overlap and cfg.served  # in-process rollouts would share the learner's model
    updates = ThreadPoolExecutor(1, thread_name_prefix="learner") if overlap else None
    rounds: list[dict] = []
    pending: tuple[dict, Future] | None = None
    train_seed = cfg.seed * 10_000 + cfg.demos  # fresh start states, never the demonstrations' ones
    t_rl = time.perf_counter()
    # what must still fit after the last round: the evaluation again, and the ROS graph episodes
    reserve = 1.2 * timings["eval_before_s"] + (GRAPH_START_S + GRAPH_EPISODE_S * cfg.graph_episodes
                                                 if cfg.served and cfg.graph_episodes else 0.0)

    def finish(fig: dict, stats: dict | None) -> None:
        stats = stats or {}
        fig.update(version=learner.version, update_s=stats.get("seconds", 0.0),
                   **{k: stats.get(k) for k in ("groups_rl", "groups_sft", "groups_dropped", "clip_frac", "approx_kl",
                                                "grad_norm", "loss", "tokens_per_s")})
        rounds.append(fig)
        log(f"round {fig['round']}: rollout success {fig['successes']}/{fig['episodes']} "
            f"[{fig['ci95'][0]:.2f}, {fig['ci95'][1]:.2f}], groups rl/sft/drop "
            f"{fig['groups_rl']}/{fig['groups_sft']}/{fig['groups_dropped']}, clip {fig['clip_frac'] or 0:.3f}, "
            f"v{learner.version}")

    last_round = 0.0
    for r in range(cfg.rounds):
        elapsed = time.perf_counter() - t_start
        if elapsed + last_round + reserve > cfg.time_budget_s:
            log(f"time budget: stopping RL after {r} rounds ({elapsed:.0f} s elapsed of {cfg.time_budget_s:.0f})")
            break
        t0 = time.perf_counter()
        episodes = []
        for _ in tqdm(range(cfg.groups_per_round), desc=f"round {r + 1}/{cfg.rounds} rollouts", unit="group",
                      disable=None if cfg.progress else True):
            episodes += rollout_group(envs, policy, train_seed, mode="sample", temperature=cfg.temperature,
                                      safety=safety)
            train_seed += 1
        fig = rate(episodes)
        fig.update(round=r + 1, rollout_s=time.perf_counter() - t0,
                   acted_by=sorted({e.version for e in episodes}))
        if pending is not None:  # the update on the round before has to end before its learner takes more
            finish(pending[0], pending[1].result())
            pending = None
        for e in episodes:
            learner.add(e)
        if updates is not None:
            pending = (fig, updates.submit(learner.step, True))
        else:
            finish(fig, learner.step(force=True))
        last_round = time.perf_counter() - t0
    if pending is not None:
        finish(pending[0], pending[1].result())
    if updates is not None:
        updates.shutdown()
    timings["rl_s"] = time.perf_counter() - t_rl

    # 5. after
    after, extra_after = evaluate_both("after")
    versions_served = sorted({e.version for e in after})
    graph = None
    if server is not None and cfg.graph_episodes:
        with tqdm(total=1, desc="ROS graph episodes", unit="run", disable=None if cfg.progress else True) as bar:
            graph = graph_episodes(cfg, server.address, out / "dataset", EVAL_SEED_OFFSET // 2 + cfg.seed * 10_000,
                                   runtime.metadata["action_dim"])
            bar.update(1)
        timings["graph_s"] = graph["seconds"]
        log(f"ROS graph: {graph['successes']}/{graph['episodes']} episodes succeeded with policy version(s) "
            f"{graph['policy_versions']}; {graph['saved']} recorded to {graph['dataset']}, "
            f"{graph['learner_episodes']} read back by the learner; the safety filter clamped "
            f"{graph['safety_clamps'].get('velocity', 0)}/{graph['control_ticks']} ticks for velocity")
    if server is not None:
        publisher.close()
        client.close()
        server.stop()
    learner.save(out)
    timings["total_s"] = time.perf_counter() - t_start

    rb, ra = rate(before), rate(after)
    report = {
        "success_before": rb["success"], "success_after": ra["success"],
        "success_before_ci95": rb["ci95"], "success_after_ci95": ra["ci95"],
        "improvement_points": 100 * (ra["success"] - rb["success"]),
        "eval_episodes": len(after), "eval_mode": cfg.eval_mode, "eval_seeds": [eval_seeds[0], eval_seeds[-1]],
        "rollout_temperature": cfg.temperature,
        "other_eval": ({"mode": cfg.extra_eval_mode, "before": rate(extra_before), "after": rate(extra_after)}
                       if cfg.extra_eval_mode else None),
        "rounds": rounds, "policy_version": learner.version, "versions_in_eval_after": versions_served,
        "served": cfg.served, "graph": graph, "demonstrations": len(demos),
        "sft_loss": {"first": sft_losses[0], "last20": float(np.mean(sft_losses[-20:]))},
        "timings_s": timings, "config": asdict(cfg), "grpo": asdict(grpo),
        "checkpoint": str(out / "checkpoint"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, out / "rl_finetune.png")
    log(f"success ({cfg.eval_mode}) {rb['success']:.2f} -> {ra['success']:.2f} on {len(after)} held-out episodes "
        f"({report['improvement_points']:+.0f} points) in {timings['total_s']:.0f} s; report: {out / 'report.json'}")
    if extra_after:
        log(f"success ({cfg.extra_eval_mode}) {rate(extra_before)['success']:.2f} -> {rate(extra_after)['success']:.2f}")
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = report["rounds"]
    xs = [r["round"] for r in rounds]
    ys = [r["success"] for r in rounds]
    err = np.array([[r["success"] - r["ci95"][0] for r in rounds], [r["ci95"][1] - r["success"] for r in rounds]])
    if rounds:
        ax.errorbar(xs, ys, yerr=err, fmt="o", markersize=3, capsize=0, alpha=0.35, color="tab:blue",
                    label=f"GRPO rollouts per round ({rounds[0]['episodes']} episodes, fresh training starts)")
        k = np.cumsum([r["successes"] for r in rounds])
        n = np.cumsum([r["episodes"] for r in rounds])
        w = 10
        pooled = [(k[i] - (k[i - w] if i >= w else 0)) / (n[i] - (n[i - w] if i >= w else 0)) for i in range(len(rounds))]
        ax.plot(xs, pooled, "-", color="tab:blue", lw=2, label=f"rollouts pooled over the last {w} rounds")
    n_r = (xs[-1] if xs else 0) + 1
    for x, key, label in ((0, "before", "before RL"), (n_r, "after", "after RL")):
        s, ci = report[f"success_{key}"], report[f"success_{key}_ci95"]
        ax.errorbar([x], [s], yerr=[[s - ci[0]], [ci[1] - s]], fmt="s", capsize=4, markersize=8,
                    label=f"{label}: held-out eval ({report['eval_mode']}, n={report['eval_episodes']})")
    other = report.get("other_eval")
    if other:  # the other evaluation mode (greedy: SimpleVLA-RL's validation), same start states
        for x, key in ((0, "before"), (n_r, "after")):
            s, ci = other[key]["success"], other[key]["ci95"]
            ax.errorbar([x + 0.25 * n_r / 10], [s], yerr=[[s - ci[0]], [ci[1] - s]], fmt="D", mfc="none", capsize=3,
                        color="tab:gray", label=f"{other['mode']} eval (same starts)" if key == "before" else None)
    ax.set_xlabel("GRPO round")
    ax.set_ylabel("success rate (95 % Wilson)")
    ax.set_ylim(0, 1)
    ax.set_title(f"RL fine-tuning on the twin: {report['success_before']:.2f} -> {report['success_after']:.2f}")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
