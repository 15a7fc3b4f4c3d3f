"""Episodes as the learner sees them.

An episode is the list of chunk queries the policy answered (observation, sampled action tokens,
their behaviour log-probs, which of those tokens the arm executed), the start condition that
groups it, the policy version that acted and the label (:attr:`vla_robot.data.schema.Label.reward`:
1 success, 0 failure, None unlabelled).

Which tokens were executed is always :func:`vla_robot.data.schema.executed_mask`, from per-frame
(chunk id, chunk step, control), as the recorder stores them.
"""
from __future__ import annotations

import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vla_robot.data import schema as S


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
    """One episode as the learner trains on it (the RL layer's episode).

    Made in one place per source: a recorded episode (:class:`vla_robot.data.reader.Episode`) by
    :func:`vla_robot.rl.dataset.to_learner_episode`; scripted or teleop demonstrations by
    :func:`demo_episodes` (via :func:`vla_robot.rl.dataset.read_demonstrations` for recorded ones);
    twin rollouts by :mod:`vla_robot.rl.rollout`. ``label`` is a :attr:`Label.reward
    <vla_robot.data.schema.Label.reward>`: ``Label.of(x).reward`` in, ``Label.from_reward(label)`` out.
    """

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
        try:
            S.Label.from_reward(self.label)
        except ValueError as e:
            raise ValueError(f"episode {self.episode_id}: {e}") from None
        for i, s in enumerate(self.steps):
            n = s.tokens.shape[0]
            if s.tokens.ndim != 1 or s.logprobs.shape != (n,) or s.executed.shape != (n,):
                raise ValueError(
                    f"episode {self.episode_id} step {i}: tokens, logprobs and executed must be 1-D of one length, got "
                    f"{s.tokens.shape}, {s.logprobs.shape}, {s.executed.shape}"
                )


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
        toks = runtime.processor.actions_to_tokens(acts, np.stack([o["state"] for o in obs]))
        # every action of every chunk is a target, the last one repeated past the demo's end included
        ids = np.arange(len(toks))
        executed = S.executed_mask(np.repeat(ids, h), np.tile(np.arange(h), len(ids)),
                                   np.full(len(ids) * h, S.CONTROL_POLICY), ids, h, d)
        steps = [Step(o, t, np.zeros(len(t), np.float32), m) for o, t, m in zip(obs, toks, executed)]
        out.setdefault(task, []).append(Episode(task=task, start=dm["start"], steps=steps,
                                                label=S.Label.SUCCESS.reward, version=0, length=len(dm["actions"])))
    return out
