"""Episodes on the twin through the robot's own components, in lockstep.

The shape is openpi's runtime (an environment, an agent, subscribers), run for N twins at once:

- **environment**: N :class:`~vla_robot.twin.env.TwinEnv`, stepped together on simulated time;
- **agent**: per twin, the :class:`~vla_robot.control.ChunkController` that policy_node runs on a
  robot (chunk executor, watchdog, safety filter) with the same :class:`ControlConfig`; the policy
  behind it is any :class:`~vla_robot.policy.interface.Policy`, asked once per tick for every twin
  that wants a chunk (one batched call: SimpleVLA-RL's micro-batch of one prompt x n samples);
- **subscribers**: the learner feed (:class:`EpisodeRecord`: per chunk the record policy_node
  publishes, per tick the chunk id, chunk step and control the recorder writes, turned into learner
  :class:`~vla_robot.rl.episodes.Step` by the robot path's own executed mask), and the report.

A chunk asked for on tick t is answered after that tick's commands went out, so it arrives on tick
t + 1, as a fast server's reply does on the robot. An episode ends at the twin's success check or
after ``max_steps`` ticks, as the episode manager ends it.
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vla_robot.control import ChunkController, ControlConfig
from vla_robot.data import records
from vla_robot.data import schema as S
from vla_robot.rl.episodes import Episode, Step


def chunk_seed(base: int, start: int, chunk: int) -> int:
    """The sampling seed of one chunk query: a pure function of (base, start state, chunk index), so
    two evaluations of different policy versions on the same start states share random numbers."""
    return int(np.random.SeedSequence([int(base), int(start), int(chunk)]).generate_state(1, np.uint64)[0] >> 1)


def policy_observation(env_obs: dict, instruction: str) -> dict:
    """The policy's view of a twin observation (images, state, instruction)."""
    return {"images": env_obs["images"], "state": np.asarray(env_obs["state"], dtype=np.float32),
            "instruction": instruction}


class BatchedRequests:
    """The policy as N controllers see it: each submits on its own; :meth:`flush` answers them all
    with one batched ``policy.infer`` call. ``sample_seed``: each twin's k-th chunk is sampled with
    :func:`chunk_seed` (base, start, k), so the same version replays the same episode."""

    def __init__(self, policy, options: dict, sample_seed: int | None = None):
        self.policy, self.options, self.sample_seed = policy, dict(options), sample_seed
        self._ids = itertools.count(1)
        self._queued: list[tuple[int, int, dict]] = []  # (request id, twin, observation)
        self._answered: dict[int, dict] = {}
        self.starts: list[int] = []
        self.asked: Counter = Counter()  # chunk queries per twin

    def view(self, twin: int) -> "_TwinClient":
        return _TwinClient(self, twin)

    def submit(self, twin: int, observation: dict) -> int:
        rid = next(self._ids)
        self._queued.append((rid, twin, observation))
        return rid

    def poll(self, request_id: int) -> dict | None:
        return self._answered.pop(request_id, None)

    def cancel(self, request_id: int) -> None:
        self._answered.pop(request_id, None)
        self._queued = [q for q in self._queued if q[0] != request_id]

    def drop(self, twin: int) -> None:
        """Forget what a twin whose episode has ended asked for."""
        self._queued = [q for q in self._queued if q[1] != twin]

    def flush(self) -> None:
        if not self._queued:
            return
        seeds = None
        if self.sample_seed is not None:
            seeds = [chunk_seed(self.sample_seed, self.starts[i], self.asked[i]) for _, i, _ in self._queued]
        replies = self.policy.infer([o for _, _, o in self._queued], **self.options, seeds=seeds)
        for (rid, twin, _), reply in zip(self._queued, replies):
            self._answered[rid] = reply
            self.asked[twin] += 1
        self._queued = []


@dataclass
class _TwinClient:
    """One controller's policy (an ``AsyncPolicy``: ``submit``/``poll``/``cancel``) onto the shared batch."""

    batch: BatchedRequests
    twin: int

    def infer(self, observations: Sequence[dict], **options) -> list[dict]:
        ids = [self.submit(o) for o in observations]
        self.batch.flush()
        return [self.poll(i) for i in ids]

    def submit(self, observation: dict, **options) -> int:  # options: the batch's, the same for every twin
        return self.batch.submit(self.twin, observation)

    def poll(self, request_id: int) -> dict | None:
        return self.batch.poll(request_id)

    def cancel(self, request_id: int) -> None:
        self.batch.cancel(request_id)


@dataclass
class EpisodeRecord:
    """The learner feed of one twin: what the robot's recorder keeps, per chunk and per tick."""

    chunks: list[dict] = field(default_factory=list)  # records.make_chunk of every reply, in arrival order
    chunk_id: list[int] = field(default_factory=list)  # per tick: the chunk the command came from (-1: none)
    chunk_step: list[int] = field(default_factory=list)  # per tick: the action's index in that chunk
    clamped: int = 0  # ticks whose command the safety filter changed
    holds: int = 0  # ticks the controller held (waiting for a chunk, or the watchdog)

    def on_tick(self, result, metadata: dict | None) -> None:
        for arrival in result.arrivals:
            arrival.reply["chunk_id"] = cid = len(self.chunks) + 1  # as policy_node numbers them
            if arrival.reply.get("tokens") is not None:
                self.chunks.append(records.make_chunk(arrival.reply, arrival.observation, arrival.options, cid,
                                                      arrival.obs_time, metadata))
        ref = result.source == "policy" and result.chunk is not None and not result.blended
        self.chunk_id.append(int(result.chunk["chunk_id"]) if ref else -1)
        self.chunk_step.append(int(result.index) if ref else -1)
        self.clamped += bool(result.clamps)
        self.holds += result.source == "hold"

    def steps(self) -> list[Step]:
        """Learner steps: the chunks of which the arm executed at least one action, with their masks."""
        if not self.chunks:
            return []
        h, d = self.chunks[0]["actions"].shape
        control = np.full(len(self.chunk_id), S.CONTROL_POLICY)
        masks = S.executed_mask(self.chunk_id, self.chunk_step, control, [c["chunk_id"] for c in self.chunks], h, d)
        return [Step(c["observation"], c["tokens"], c["logprobs"], m, version=c["version"],
                     temperature=float(c["options"]["temperature"]))
                for c, m in zip(self.chunks, masks) if m.any()]


def rollout(envs: Sequence, policy, starts: Sequence[int], control: ControlConfig, *, mode: str = "sample",
            temperature: float = 1.0, sample_seed: int | None = None, metadata: dict | None = None,
            report: Counter | None = None) -> list[Episode]:
    """Twin i from start state ``starts[i]`` until success or ``max_steps``, through the robot's
    controller with ``control``; labels from the twin's success check.

    ``report``: a Counter that gets the controllers' hold reasons and clamp kinds added."""
    if len(starts) != len(envs):
        raise ValueError(f"rollout: one start state per env expected, got {len(starts)} for {len(envs)} envs")
    control.validate()
    batch = BatchedRequests(policy, {"mode": mode, "temperature": float(temperature), "return_tokens": True},
                            sample_seed)
    ctrls, feeds = [], [EpisodeRecord() for _ in envs]
    for i, (env, s) in enumerate(zip(envs, starts)):
        env.reset(start=int(s))
        if abs(env.control_dt - control.dt) > 1e-9:
            raise ValueError(f"the twin runs at {1 / env.control_dt:g} Hz but control_hz is {control.control_hz:g}; "
                             "make them equal")
        ctrl = ChunkController(control, env.robot.joint_limits(), batch.view(i),
                               request_options=dict(batch.options))
        ctrl.reset(env.joint_positions(), 0.0)
        ctrls.append(ctrl)
    batch.starts = [env.start_condition for env in envs]
    done, success = [False] * len(envs), [False] * len(envs)
    for tick in itertools.count():
        now = tick * control.dt
        for i in (i for i in range(len(envs)) if not done[i]):
            env = envs[i]
            result = ctrls[i].tick(now, now, lambda env=env: policy_observation(env.observation(), env.instruction))
            env.advance(result.command)  # no rendering: only the observations asked for are rendered
            feeds[i].on_tick(result, metadata)
            success[i] = env.success()
            done[i] = success[i] or env.steps >= env.max_steps
            if done[i]:
                batch.drop(i)
        if all(done):
            break
        batch.flush()
    if report is not None:
        for c in ctrls:
            report.update({f"hold: {k}": v for k, v in c.stats.holds.items()})
            report.update({f"clamp: {k}": v for k, v in c.safety.stats.counts.items() if k != "ticks"})
    return [_episode(env, feed, ok, s) for env, feed, ok, s in zip(envs, feeds, success, batch.starts)]


def _episode(env, feed: EpisodeRecord, success: bool, start: int) -> Episode:
    steps = feed.steps()
    return Episode(task=env.instruction, start=start, steps=steps, label=S.Label.of(bool(success)).reward,
                   version=min((s.version for s in steps), default=0), length=env.steps, clamped=feed.clamped)


def rollout_group(envs: Sequence, policy, start: int, control: ControlConfig, **kwargs) -> list[Episode]:
    """A GRPO group: every twin from start state ``start``."""
    return rollout(envs, policy, [start] * len(envs), control, **kwargs)
