"""Rollouts of groups on the twin (moved from rl/episodes.py; being rebuilt on the robot's components)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vla_robot.rl.episodes import Episode, Step, executed_mask

# policy(observations, mode, temperature[, seeds]) -> one result per observation:
#   {"actions": float32 [H, D], "tokens": int64 [H*D], "logprobs": float32 [H*D], "version": int}
# seeds (only passed when a rollout asks for reproducible sampling): one int per observation
PolicyFn = Callable[..., list[dict]]


def chunk_seed(base: int, start: int, chunk: int) -> int:
    """The sampling seed of one chunk query: a pure function of (base, start state, chunk index), so
    two evaluations of different policy versions on the same start states share random numbers."""
    return int(np.random.SeedSequence([int(base), int(start), int(chunk)]).generate_state(1, np.uint64)[0] >> 1)


def rollout_group(envs: Sequence, policy: PolicyFn, start: int, **kwargs) -> list[Episode]:
    """A GRPO group: every env from start state ``start``; labels from env.success()."""
    return rollout(envs, policy, [start] * len(envs), **kwargs)


def rollout(
    envs: Sequence, policy: PolicyFn, starts: Sequence[int], *, mode: str = "sample", temperature: float = 1.6,
    task: str = "", keep_steps: bool = True, sample_seed: int | None = None, safety=None,
) -> list[Episode]:
    """Env i from start state ``starts[i]`` until success or ``max_steps``, one batched policy call per chunk.

    ``sample_seed``: each chunk query gets the seed :func:`chunk_seed` (base, start, chunk index), so the
    same policy samples the same episode again (for evaluations; GRPO groups leave it out, their members
    must differ).

    ``safety``: a ``vla_robot.control.SafetyConfig``; each env's actions then pass through a
    SafetyFilter on its robot's limits, reset to the measured pose at the episode's start."""
    if len(starts) != len(envs):
        raise ValueError(f"rollout: one start state per env expected, got {len(starts)} for {len(envs)} envs")
    obs = [policy_observation(env.reset(start=int(s)), env.instruction) for env, s in zip(envs, starts)]
    filters = [None] * len(envs)
    if safety is not None:
        from vla_robot.control import SafetyFilter

        filters = [SafetyFilter(env.robot.joint_limits(), safety) for env in envs]
        for f, env in zip(filters, envs):
            f.reset(env.joint_positions())
    clamped = [0] * len(envs)
    starts = [env.start_condition for env in envs]
    n = len(envs)
    steps: list[list[Step]] = [[] for _ in range(n)]
    done = [False] * n
    success = [False] * n
    t = [0] * n
    versions = [0] * n
    queries = [0] * n  # chunk queries so far, per env
    while not all(done):
        active = [i for i in range(n) if not done[i]]
        queried = [obs[i] for i in active]
        if sample_seed is None:
            results = policy(queried, mode, temperature)
        else:
            results = policy(queried, mode, temperature, seeds=[chunk_seed(sample_seed, starts[i], queries[i])
                                                                for i in active])
        for i in active:
            queries[i] += 1
        for i, query, res in zip(active, queried, results):
            versions[i] = int(res.get("version", 0))
            chunk = np.asarray(res["actions"])
            h, d = chunk.shape
            k = 0
            env = envs[i]
            while k < h and not done[i]:
                action = chunk[k]
                if filters[i] is not None:
                    action = filters[i].filter(action, env.control_dt)
                    clamped[i] += bool(filters[i].last_clamps)
                _advance(env, action)  # no rendering inside the chunk: nobody looks at those frames
                k += 1
                t[i] += 1
                if env.success():
                    done[i], success[i] = True, True
                elif t[i] >= env.max_steps:
                    done[i] = True
            if not done[i]:
                obs[i] = policy_observation(env.observation(), env.instruction)
            if keep_steps and res.get("tokens") is not None:
                steps[i].append(Step(query, np.asarray(res["tokens"], dtype=np.int64),
                                     np.asarray(res["logprobs"], dtype=np.float32), executed_mask(k, h, d),
                                     version=versions[i], temperature=float(temperature)))
    return [Episode(task=task or envs[i].instruction, start=starts[i], steps=steps[i], label=int(success[i]),
                    version=versions[i], length=t[i], clamped=clamped[i]) for i in range(n)]


def _advance(env, q) -> None:
    """One control step; without rendering where the env offers it (``TwinEnv.advance``)."""
    advance = getattr(env, "advance", None)
    if advance is not None:
        advance(q)
    else:
        env.step(q)


def policy_observation(env_obs: dict, instruction: str) -> dict:
    """The policy's view of a twin observation (images, state, instruction)."""
    return {"images": env_obs["images"], "state": np.asarray(env_obs["state"], dtype=np.float32),
            "instruction": instruction}


