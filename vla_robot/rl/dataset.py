"""Recorded episodes (the recorder's LeRobotDataset and its on-policy records) as learner episodes.

Each saved RL episode has an on-policy record, ``<root>/rl/episode_NNNNNN.msgpack``
(:mod:`vla_robot.data.records`): per policy chunk, the observation exactly as the server saw it
(images lossless, state, instruction), the sampling options, the tokens and behaviour log-probs, the
policy version and the serving policy's identity. Each chunk becomes a
:class:`~vla_robot.rl.episodes.Step` on those inputs; which of its actions the arm executed comes
from the episode's frames (``action.chunk_id``, ``action.chunk_step``, ``control``) through
:func:`vla_robot.data.schema.executed_mask`. A chunk none of whose actions ran under policy control
(a reply that came after a takeover or the episode's end) is left out: it has nothing to train.

An episode the learner cannot use raises :class:`BadEpisode` saying why; :func:`follow_dataset`
skips it, logs the reason and counts it (``follower.skipped``, ``follower.bad``, or ``on_bad``).

Labels come from the journal with the relabel log applied (:func:`vla_robot.data.reader.read_journal`,
:mod:`vla_robot.data.relabel`), never from the frames' ``episode.label`` column, so an episode
relabelled before the learner uses it trains with its newer label; the follower yields an episode
relabelled while it follows again (the learner skips one it already used: see :func:`used_by_learner`).

Which labels it trusts: ``trust`` names the label sources the learner trains on (the journal's
``meta.label_source``: ``human``, ``auto`` the twin's check, ``votes`` the detectors' consensus,
``person`` or another ``--source`` of a relabel); an episode labelled by any other source is not
yielded, as if unlabelled, and counted in ``untrusted``. None (the default) trusts every source.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import numpy as np

from vla_robot.data import records
from vla_robot.data import schema as S
from vla_robot.rl.episodes import Episode, Step, demo_episodes

log = logging.getLogger(__name__)


class BadEpisode(ValueError):
    """A saved episode the learner cannot use: malformed, truncated or token-less (the message says which)."""


def to_learner_episode(rec, action_dim: int | None = None) -> Episode:
    """A :class:`vla_robot.data.reader.Episode` (frames loaded or not) → a learner :class:`Episode`.

    ``action_dim``: when given, chunks of another action size are a :class:`BadEpisode`.
    Raises :class:`BadEpisode` for an episode without a readable, complete on-policy record."""
    where = f"{rec.root} episode {rec.index}"
    try:
        frames = rec.frames if rec.frames is not None else rec.load_frames()
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds for a damaged file
        raise BadEpisode(f"{where}: frames are not readable ({type(e).__name__}: {e})") from None
    n = len(frames.get(S.CONTROL, ()))
    if n != rec.record.length:
        raise BadEpisode(f"{where}: truncated: the journal says {rec.record.length} frames, the data has {n}")
    try:
        file = records.read_episode(records.episode_path(rec.root, rec.index))
    except ValueError as e:
        raise BadEpisode(f"{where}: {e}") from None
    if file["episode_index"] != rec.index or file["length"] != n:
        raise BadEpisode(f"{where}: the on-policy record is of episode {file['episode_index']} with {file['length']} "
                         f"frames, not of this one ({n} frames)")
    chunks = file["chunks"]
    if not chunks:
        raise BadEpisode(f"{where}: token-less: no chunk was recorded with its tokens (policy_node return_tokens "
                         "off, or no reply came)")
    shape = chunks[0]["actions"].shape
    if any(c["actions"].shape != shape for c in chunks) or (action_dim is not None and shape[1] != action_dim):
        raise BadEpisode(f"{where}: chunks of shapes {sorted({tuple(c['actions'].shape) for c in chunks})}; expected "
                         f"one [chunk_size, {action_dim if action_dim is not None else 'action_dim'}]")
    served = chunks[0]["served_by"]
    for c in chunks:
        if c["served_by"] != served:
            diff = sorted(k for k in set(served) | set(c["served_by"]) if served.get(k) != c["served_by"].get(k))
            raise BadEpisode(f"{where}: chunks were served by different policies (they differ in {diff})")
    control = frames[S.CONTROL]
    executed = S.executed_mask(frames[S.CHUNK_ID], frames[S.CHUNK_STEP], control, [c["chunk_id"] for c in chunks],
                               shape[0], shape[1])
    steps = [_step(c, m) for c, m in zip(chunks, executed) if m.any()]
    if not steps:
        raise BadEpisode(f"{where}: token-less: none of its {len(chunks)} recorded chunks executed an action under "
                         "policy control")
    return Episode(task=rec.record.task, start=rec.record.start_condition, steps=steps,
                   label=rec.record.label.reward, version=min(s.version for s in steps),
                   episode_id=episode_id(rec.root, rec.index), length=rec.record.length,
                   intervened=bool(np.any(control == S.CONTROL_TELEOP)), served_by=dict(served))


def episode_id(root: str | Path, index: int) -> str:
    """The learner's id of saved episode ``index`` of ``root``: what its ``consumed`` set holds."""
    return f"{Path(root).resolve()}#{int(index)}"


def used_by_learner(out_dir: str | Path, root: str | Path, index: int) -> int | None:
    """The version of the newest checkpoint of the learner whose ``--out`` is ``out_dir`` (or that
    checkpoint folder) if it has already used episode ``index`` of ``root``, else None (also when it
    never saved a checkpoint). FileNotFoundError when ``out_dir`` is not a folder."""
    import torch

    from vla_robot.rl.learner import STATE_FILE

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"--learner {out_dir} is not a folder (expected the learner's --out)")
    state_file = next((p for p in (out_dir / STATE_FILE, out_dir / "checkpoint" / STATE_FILE) if p.is_file()), None)
    if state_file is None:
        return None
    state = torch.load(state_file, weights_only=True, map_location="cpu", mmap=True)
    return int(state["version"]) if episode_id(root, index) in set(state["consumed"]) else None


def _step(chunk: dict, executed: np.ndarray) -> Step:
    """One chunk record as a Step (writable copies: the decoded arrays are read-only views of the file)."""
    obs = chunk["observation"]
    observation = {"images": {cam: np.array(img) for cam, img in obs["images"].items()},
                   "state": np.array(obs["state"]), "instruction": obs["instruction"]}
    return Step(observation, np.array(chunk["tokens"]), np.array(chunk["logprobs"]), executed,
                version=chunk["version"], temperature=float(chunk["options"]["temperature"]))


class DatasetFollower:
    """Iterate the labelled episodes of ``root`` as they are saved (catching up on everything saved
    since ``since``); an episode that raises :class:`BadEpisode` is logged, counted and skipped.
    An episode relabelled while following comes again with its new label.

    ``skipped``: how many were skipped; ``bad``: ``[(episode index, reason), ...]``;
    ``on_bad(index, reason)``: called for each (optional). ``trust``: the label sources to train on
    (None: all); ``untrusted``: the episodes left out for their label's source."""

    def __init__(self, root: str | Path, action_dim: int | None = None, since: int = 0, follow: bool = True,
                 poll_s: float = 1.0, timeout: float | None = None,
                 on_bad: Callable[[int, str], None] | None = None, trust: Collection[str] | None = None):
        self.root, self.action_dim, self.since = Path(root), action_dim, int(since)
        self.follow, self.poll_s, self.timeout, self.on_bad = follow, poll_s, timeout, on_bad
        self.trust = None if trust is None else frozenset(trust)
        self.skipped = 0
        self.untrusted = 0
        self.bad: list[tuple[int, str]] = []

    def __iter__(self) -> Iterator[Episode]:
        from vla_robot.data import iter_episodes

        for rec in iter_episodes(self.root, self.since, labelled_only=True, with_frames=False, follow=self.follow,
                                 poll_s=self.poll_s, timeout=self.timeout, relabelled=True):
            source = (rec.record.meta or {}).get("label_source")
            if self.trust is not None and source not in self.trust:
                self.untrusted += 1
                log.info("episode %d not trained on: its label is by %r, not one of the trusted sources %s",
                         rec.index, source, sorted(self.trust))
                continue
            try:
                episode = to_learner_episode(rec, self.action_dim)
            except BadEpisode as e:
                self.skipped += 1
                self.bad.append((rec.index, str(e)))
                log.warning("skipping a bad episode (%d so far): %s", self.skipped, e)
                if self.on_bad is not None:
                    self.on_bad(rec.index, str(e))
                continue
            yield episode


def follow_dataset(root: str | Path, action_dim: int | None = None, since: int = 0, follow: bool = True,
                   poll_s: float = 1.0, timeout: float | None = None,
                   on_bad: Callable[[int, str], None] | None = None,
                   trust: Collection[str] | None = None) -> DatasetFollower:
    """Labelled episodes of ``root`` as they are saved: ``for ep in follow_dataset(root, action_dim): ...``.
    Bad episodes are skipped and counted; ``trust``: the label sources to train on (see :class:`DatasetFollower`)."""
    return DatasetFollower(root, action_dim, since, follow, poll_s, timeout, on_bad, trust)


def read_demonstrations(root: str | Path, runtime) -> dict[str, list[Episode]]:
    """Teleop demonstrations of a recorded dataset, tokenised for the hybrid SFT loss, by task.

    A demonstration labelled failure is left out (unlabelled ones count: a person recorded them to show
    the task). The reader's episode becomes a learner episode here and in :func:`to_learner_episode` only."""
    from vla_robot.data import iter_episodes

    demos = []
    for rec in iter_episodes(root, with_frames=False):
        if rec.record.label is S.Label.FAILURE:
            continue
        frames = rec.load_frames()
        images = rec.images()
        n = len(frames[S.ACTION])
        observations = [{"images": {c: v[f] for c, v in images.items()}, "state": frames[S.STATE][f].astype(np.float32),
                         "instruction": rec.record.task} for f in range(n)]
        demos.append({"start": rec.record.start_condition, "observations": observations,
                      "actions": frames[S.ACTION].astype(np.float32)})
    return demo_episodes(demos, runtime)
