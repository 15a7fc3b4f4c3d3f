"""Episodes as the learner sees them, and rollouts of groups on the twin.

An episode is the list of chunk queries the policy answered (observation, sampled action tokens,
their behaviour log-probs, which of those tokens the arm executed), the start condition that
groups it, the policy version that acted and the label (1 success, 0 failure, None unlabelled).
Rollouts run n environments from one start condition in lock-step with one batched policy call
per chunk (SimpleVLA-RL's micro-batch of one prompt x n samples); each executes its chunk open
loop and stops at success or at ``max_steps``, so only executed actions are marked. With a
``SafetyConfig`` every action passes through the control core's :class:`SafetyFilter` before the
twin, as every command of policy_node does before the arm: the policy is trained on the motion the
robot will execute, not on targets the filter would refuse.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

# policy(observations, mode, temperature[, seeds]) -> one result per observation:
#   {"actions": float32 [H, D], "tokens": int64 [H*D], "logprobs": float32 [H*D], "version": int}
# seeds (only passed when a rollout asks for reproducible sampling): one int per observation
PolicyFn = Callable[..., list[dict]]


def chunk_seed(base: int, start: int, chunk: int) -> int:
    """The sampling seed of one chunk query: a pure function of (base, start state, chunk index), so
    two evaluations of different policy versions on the same start states share random numbers."""
    return int(np.random.SeedSequence([int(base), int(start), int(chunk)]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class Step:
    """One chunk query: what the policy saw and what it sampled."""

    observation: dict          # exactly what the server saw: {"images": {cam: uint8 HxWx3 as sent},
                               #   "state": float32[P], "instruction": str}
    tokens: np.ndarray         # int64 [H*D] action token ids, row-major (action i: tokens[i*D:(i+1)*D])
    logprobs: np.ndarray       # float32 [H*D] behaviour log-probs at the rollout temperature
    executed: np.ndarray       # bool [H*D] True for tokens of actions the arm executed
    version: int = -1          # policy version that sampled this chunk (-1: unknown)
    temperature: float | None = None  # the temperature the server sampled (and computed logprobs) at; None: unknown


@dataclass
class Episode:
    task: str
    start: Hashable
    steps: list[Step]
    label: int | None
    version: int
    episode_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    length: int = 0            # env steps executed
    clamped: int = 0           # of those, steps whose action the safety filter changed
    intervened: bool = False   # an operator took over at some step (teleop frames in the recording)
    served_by: dict = field(default_factory=dict)  # the serving policy's identity (server metadata: model,
                                                   # dtype, image_size, ...) when the chunks were sampled

    def validate(self) -> None:
        if self.label not in (0, 1, None):
            raise ValueError(f"episode {self.episode_id}: label must be 1 (success), 0 (failure) or None, got {self.label!r}")
        for i, s in enumerate(self.steps):
            n = s.tokens.shape[0]
            if s.tokens.ndim != 1 or s.logprobs.shape != (n,) or s.executed.shape != (n,):
                raise ValueError(
                    f"episode {self.episode_id} step {i}: tokens, logprobs and executed must be 1-D of one length, got "
                    f"{s.tokens.shape}, {s.logprobs.shape}, {s.executed.shape}"
                )


def executed_mask(n_executed: int, chunk_size: int, action_dim: int) -> np.ndarray:
    """Token mask of a chunk of which the first ``n_executed`` actions were executed."""
    if not 0 <= n_executed <= chunk_size:
        raise ValueError(f"n_executed must be in [0, {chunk_size}] (actions of the chunk), got {n_executed}")
    mask = np.zeros((chunk_size, action_dim), dtype=bool)
    mask[:n_executed] = True
    return mask.reshape(-1)


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


def demo_chunks(demos: Sequence[dict], chunk: int, every: int = 1) -> tuple[list[dict], np.ndarray]:
    """(observation, the next ``chunk`` expert actions, the last one repeated past the end) pairs."""
    obs, acts = [], []
    for d in demos:
        a = d["actions"]
        for t in range(0, len(a), every):
            idx = np.minimum(np.arange(t, t + chunk), len(a) - 1)
            obs.append(d["observations"][t])
            acts.append(a[idx])
    return obs, np.stack(acts)


def demo_episodes(demos: Sequence[dict], runtime) -> dict[str, list[Episode]]:
    """Demonstrations as learner episodes by task (for the hybrid SFT loss), chunked as the policy acts."""
    h, d = runtime.metadata["chunk_size"], runtime.metadata["action_dim"]
    out: dict[str, list[Episode]] = {}
    for dm in demos:
        task = dm["observations"][0]["instruction"]
        obs, acts = demo_chunks([dm], h, every=h)
        toks = runtime.processor.actions_to_tokens(acts)
        steps = [Step(o, t, np.zeros(len(t), np.float32), executed_mask(h, h, d)) for o, t in zip(obs, toks)]
        out.setdefault(task, []).append(Episode(task=task, start=dm["start"], steps=steps, label=1, version=0,
                                                length=len(dm["actions"])))
    return out
