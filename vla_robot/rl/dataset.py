"""Recorded episodes (the recorder's LeRobotDataset) as learner episodes.

The recorder stores, on the first frame of each policy chunk, the sampled action tokens and their
log-probs; :func:`vla_robot.data.schema.executed_mask` says which of those actions the arm executed
under policy control (a teleop takeover or an early stop leaves the rest out). Each chunk becomes a
:class:`~vla_robot.rl.episodes.Step` with the observation the policy was asked about: the recorded
images and joint state of that frame and the episode's task as the instruction.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vla_robot.data import schema as S
from vla_robot.rl.episodes import Episode, Step, demo_episodes

_LABELS = {"success": 1, "failure": 0, "unlabelled": None}


def to_learner_episode(rec, action_dim: int) -> Episode:
    """A :class:`vla_robot.data.reader.Episode` (frames loaded or not) → a learner :class:`Episode`."""
    frames = rec.frames if rec.frames is not None else rec.load_frames()
    if S.TOKENS not in frames:
        raise ValueError(f"{rec.root} episode {rec.index} has no '{S.TOKENS}': record RL episodes with "
                         "token_dim = chunk_size * action_dim")
    chunk_id, chunk_step = frames[S.CHUNK_ID], frames[S.CHUNK_STEP]
    control, tokens = frames[S.CONTROL], frames[S.TOKENS]
    first = np.zeros(len(chunk_id), bool)  # the frame that carries each chunk's tokens
    seen = set()
    for f, cid in enumerate(chunk_id):
        if cid >= 0 and cid not in seen:
            seen.add(int(cid))
            first[f] = True
    executed = S.executed_mask(chunk_id, chunk_step, control, tokens.shape[1], action_dim, first)
    idx = np.flatnonzero(first)
    images = rec.images(idx) if len(idx) else {}
    task = rec.record.task
    steps = [Step({"images": {c: v[j] for c, v in images.items()}, "state": frames[S.STATE][f].astype(np.float32),
                   "instruction": task}, tokens[f].astype(np.int64), frames[S.LOGPROBS][f].astype(np.float32),
                  executed[f]) for j, f in enumerate(idx)]
    versions = [int(v) for v in frames[S.POLICY_VERSION][idx]] if len(idx) else [0]
    return Episode(task=task, start=rec.record.start_condition, steps=steps, label=_LABELS.get(rec.record.label),
                   version=min(versions), episode_id=f"{Path(rec.root).resolve()}#{rec.index}",
                   length=rec.record.length)


def follow_dataset(root: str | Path, action_dim: int, since: int = 0, follow: bool = True,
                   poll_s: float = 1.0, timeout: float | None = None) -> Iterator[Episode]:
    """Labelled episodes of ``root`` as they are saved (catches up on everything saved before)."""
    from vla_robot.data import iter_episodes

    for rec in iter_episodes(root, since, labelled_only=True, with_frames=True, follow=follow, poll_s=poll_s,
                             timeout=timeout):
        yield to_learner_episode(rec, action_dim)


def read_demonstrations(root: str | Path, runtime) -> dict[str, list[Episode]]:
    """Teleop demonstrations of a recorded dataset, tokenised for the hybrid SFT loss, by task."""
    from vla_robot.data import iter_episodes

    demos = []
    for rec in iter_episodes(root, with_frames=True):
        frames = rec.frames
        images = rec.images()
        n = len(frames[S.ACTION])
        observations = [{"images": {c: v[f] for c, v in images.items()}, "state": frames[S.STATE][f].astype(np.float32),
                         "instruction": rec.record.task} for f in range(n)]
        demos.append({"start": rec.record.start_condition, "observations": observations,
                      "actions": frames[S.ACTION].astype(np.float32), "success": rec.record.label != "failure"})
    return demo_episodes([d for d in demos if d["success"]], runtime)
