"""Relabelling saved episodes: an append-only log of label changes that every reader applies.

A person corrects a label (a detector's, or their own) after the episode was saved. Nothing recorded
is rewritten: the episode's frames, its journal entry (``meta/vla_episodes.jsonl``) and its commit
snapshots stay as they were, and the change is one line appended to ``meta/vla_relabels.jsonl``::

    {"episode_index": 3, "old_label": "failure", "new_label": "success", "source": "person",
     "reason": "the cube was in the box", "time": 1716900000.0}

Why a log and not an edit: the frames' ``episode.label`` / ``next.reward`` columns live in parquet
files that are shared by many episodes, hard-linked into the recorder's stage and listed with their
size in each commit's manifest (:mod:`vla_robot.data.store`); rewriting one would be a crash away from
losing other episodes, and recovery would take the new size for damage. So those columns keep the
label as recorded, and **the journal with this log applied is the source of truth for labels**:
:func:`vla_robot.data.reader.read_journal` applies it, and everything in vla_robot reads labels
through it (the learner's follower, the dataset tools, the evaluation report, the rehearsal).

The log is outside the commit snapshots and the files the recorder publishes, so relabelling is
safe while a recorder writes into the dataset and while a learner follows it. A line cut short by a
crash is skipped when read (the command that wrote it never reported success), and the next append
starts on a fresh line.

Standard library only (the reader imports this module).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .schema import EpisodeRecord, Label

log = logging.getLogger(__name__)

LOG = "vla_relabels.jsonl"  # lives in <root>/meta/, next to the journal
__all__ = ["LOG", "Relabel", "RelabelResult", "read_log", "apply", "relabel"]


@dataclass(frozen=True)
class Relabel:
    """One line of the relabel log: episode ``episode_index`` went from ``old_label`` to ``new_label``."""

    episode_index: int
    old_label: Label
    new_label: Label
    source: str = "person"
    reason: str = ""
    time: float = 0.0  # wall-clock time.time() of the change

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "old_label": str(self.old_label), "new_label": str(self.new_label)}

    @classmethod
    def from_json(cls, d: dict) -> "Relabel":
        return cls(int(d["episode_index"]), Label.of(d["old_label"]), Label.of(d["new_label"]),
                   str(d.get("source", "")), str(d.get("reason", "")), float(d.get("time", 0.0)))


@dataclass(frozen=True)
class RelabelResult:
    """What :func:`relabel` did: ``change`` is None when the episode already had that label (a no-op)."""

    episode_index: int
    label: Label  # the episode's label now
    change: Relabel | None


def log_path(root: str | Path) -> Path:
    return Path(root) / "meta" / LOG


def read_log(root: str | Path) -> list[Relabel]:
    """The relabel log of ``root`` in the order written ([] when nothing was ever relabelled)."""
    path = log_path(root)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Relabel.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:  # a line a crash cut short: its command never returned
            log.warning("%s line %d is not a relabel record, ignored (%s)", path, n, e)
    return out


def apply(records: list[EpisodeRecord], changes: list[Relabel]) -> list[EpisodeRecord]:
    """``records`` with each change applied in order (the newest label wins). A changed record is a
    copy whose ``meta`` says so: ``label_source`` is the change's source, ``relabels`` lists the changes,
    and the ``label_confidence`` of the label it replaced (the votes') is gone: it was not this label's
    (the ``votes`` stay: what the detectors said of the episode)."""
    by_index: dict[int, list[Relabel]] = {}
    for c in changes:
        by_index.setdefault(c.episode_index, []).append(c)
    out = []
    for r in records:
        mine = by_index.get(r.episode_index)
        if mine:
            meta = {**{k: v for k, v in r.meta.items() if k != "label_confidence"}, "label_source": mine[-1].source,
                    "relabels": [c.to_json() for c in mine]}
            r = dataclasses.replace(r, label=mine[-1].new_label, meta=meta)
        out.append(r)
    return out


def relabel(root: str | Path, episode: int, label: Label | str, source: str = "person",
            reason: str = "") -> RelabelResult:
    """Give saved episode ``episode`` of the dataset ``root`` the label ``label`` (success or failure).

    Appends one line to the relabel log (durable on return); relabelling to the label it has is a
    no-op (``change`` None). Raises FileNotFoundError for a folder that is not a dataset, ValueError
    for a dataset without an episode journal, an episode that is not saved, or a bad label or source."""
    from . import reader

    root = Path(root)
    new = _check_label(label)
    source = str(source).strip()
    if not source or any(ch in source for ch in "\r\n"):
        raise ValueError(f"--source must be a non-empty single-line name (e.g. person, detector), got {source!r}")
    reader.dataset_info(root)  # FileNotFoundError: not a LeRobot dataset
    path = log_path(root)
    created = not path.exists()
    with path.open("ab+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two relabels at once: each decides on the other's outcome
        current = _current_label(root, int(episode), reader.read_journal(root))
        if current is new:
            return RelabelResult(int(episode), current, None)
        change = Relabel(int(episode), current, new, source, str(reason), time.time())
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")  # a line a crash cut short stays on its own (skipped when read)
        f.write((json.dumps(change.to_json()) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    if created:  # the new file's name must survive a power cut too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return RelabelResult(int(episode), new, change)


def _check_label(label) -> Label:
    try:
        new = Label.of(label)
    except ValueError:
        new = None
    if new not in (Label.SUCCESS, Label.FAILURE):
        raise ValueError(f"--label must be success or failure, got {label!r}")
    return new


def _current_label(root: Path, episode: int, journal: list[EpisodeRecord]) -> Label:
    if not journal:
        from .store import JOURNAL

        raise ValueError(f"{root} has no saved episode in its journal (meta/{JOURNAL}); only datasets recorded by "
                         "vla_robot can be relabelled")
    for r in journal:
        if r.episode_index == episode:
            return r.label
    raise ValueError(f"episode {episode} is not saved in {root}: saved episodes are 0..{len(journal) - 1}")
