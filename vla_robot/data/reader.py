"""Reading saved episodes back, while the recorder may still be writing (the RL learner's view).

Only *committed* episodes are visible (see :mod:`vla_robot.data.store`): the reader takes the newest
commit snapshot, whose files are never rewritten, so it needs no lock and never sees a half-saved
episode. Frames come from the episode's parquet file (pyarrow), images from its mp4 (PyAV).

Labels: :func:`read_journal` applies the relabel log (:mod:`vla_robot.data.relabel`) over the labels
recorded in the journal, so ``record.label`` is the newest label. The frames' ``episode.label`` and
``next.reward`` columns keep the label as recorded: read labels from the record, never from them.

::

    for ep in iter_episodes(root, since=0, labelled_only=True, follow=True, timeout=60):
        ep.record.label, ep.record.start_condition          # journal entry (EpisodeRecord)
        ep.frames["action.chunk_id"], ep.frames["control"]  # numpy arrays, one row per frame
        imgs = ep.images(frame_indices=[0, 8, 16])          # {cam: uint8 [k, H, W, 3]}
        since = ep.index + 1                                  # resume point for the next call

Imports pyarrow and av lazily; reading the journal alone needs neither.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from . import relabel
from . import schema as S
from . import store
from .schema import EpisodeRecord

__all__ = ["Episode", "read_journal", "episode_table", "load_episode", "iter_episodes", "dataset_info"]


def _snapshot(root: Path) -> store.Commit | None:
    for _ in range(5):  # the writer may delete an old commit while we read it; take the newest again
        c = store.latest_commit(root)
        if c is None or (c.path / "manifest.json").exists():
            return c
    return store.latest_commit(root)


def read_journal(root: str | Path) -> list[EpisodeRecord]:
    """The committed episodes' journal entries, in episode order ([] for an adopted foreign dataset),
    with the relabel log applied: each ``label`` is the episode's newest."""
    return relabel.apply(_recorded_journal(root), relabel.read_log(root))


def _recorded_journal(root: str | Path) -> list[EpisodeRecord]:
    """The journal entries as the recorder wrote them (labels as recorded)."""
    root = Path(root)
    text = ""
    for _ in range(3):  # the writer may drop an old commit between listing and reading: take the newest again
        c = _snapshot(root)
        if c is None and store.state_dir(root).is_dir():
            return []  # ours, nothing committed yet (a first episode may be half published)
        path = (c.path / store.JOURNAL) if c is not None else root / "meta" / store.JOURNAL
        try:
            text = path.read_text()
            break
        except FileNotFoundError:
            if c is None or not c.path.exists():
                continue
            break  # a commit without a journal: adopted dataset
    recs = [EpisodeRecord.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]
    if c is not None:
        recs = [r for r in recs if r.episode_index < c.episodes]
    return recs


def dataset_info(root: str | Path) -> dict:
    """info.json of the newest commit (or of meta/ when the dataset has no commit)."""
    root = Path(root)
    c = _snapshot(root)
    path = (c.path / "info.json") if c is not None else root / "meta" / "info.json"
    if not path.exists():
        raise FileNotFoundError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    return json.loads(path.read_text())


def episode_table(root: str | Path, _read: dict[str, list[dict]] | None = None) -> dict[int, dict]:
    """LeRobot's episode table (meta/episodes/*.parquet) of the committed episodes, by index.
    ``_read`` caches rows by file across calls (committed files never change)."""
    import pyarrow.parquet as pq

    root = Path(root)
    c = _snapshot(root)
    if c is not None:
        files = sorted(p for p in c.manifest if p.startswith("meta/episodes/"))
    else:
        files = sorted(p.relative_to(root).as_posix() for p in (root / "meta" / "episodes").glob("*/*.parquet"))
    cache = _read if (_read is not None and c is not None) else {}
    out: dict[int, dict] = {}
    for rel in files:
        if rel not in cache:
            cols = [n for n in pq.read_schema(root / rel).names if not n.startswith("stats/")]
            cache[rel] = pq.read_table(root / rel, columns=cols).to_pylist()
        for row in cache[rel]:
            out[int(row["episode_index"])] = row
    return out


@dataclass
class Episode:
    """A saved episode read back: its journal entry (:class:`EpisodeRecord`), LeRobot's episode-table
    row and, once loaded, its frames.

    The reader's episode (data layer, read side). It becomes the learner's episode in one place,
    :func:`vla_robot.rl.dataset.to_learner_episode`; nothing else converts it.
    """

    root: Path
    record: EpisodeRecord
    row: dict  # LeRobot's episode-table row: data/video file indices, from/to timestamps
    fps: int
    frames: dict[str, np.ndarray] | None = None

    @property
    def index(self) -> int:
        return self.record.episode_index

    def load_frames(self) -> dict[str, np.ndarray]:
        """Every non-video feature of the episode as numpy arrays [frames, ...] (scalars as [frames])."""
        import pyarrow.parquet as pq

        info = dataset_info(self.root)
        rel = info["data_path"].format(chunk_index=self.row["data/chunk_index"], file_index=self.row["data/file_index"])
        table = pq.read_table(self.root / rel, filters=[("episode_index", "=", self.index)])
        out = {}
        for name in table.column_names:
            col = table.column(name).to_pylist()
            arr = np.asarray(col)
            ft = info["features"].get(name)
            if ft is not None and ft["dtype"] not in ("video", "image", "string"):
                arr = arr.astype(ft["dtype"])
                if arr.ndim == 2 and arr.shape[1] == 1:
                    arr = arr[:, 0]
            out[name] = arr
        order = np.argsort(out["frame_index"])
        self.frames = {k: v[order] for k, v in out.items()}
        return self.frames

    def images(self, frame_indices=None, cameras=None) -> dict[str, np.ndarray]:
        """Decoded RGB frames {cam: uint8 [k, H, W, 3]} for the given frame indices (default: all)."""
        import av

        info = dataset_info(self.root)
        cams = list(cameras) if cameras is not None else [
            k[len(S.IMAGE_PREFIX):] for k, v in info["features"].items() if v["dtype"] == "video"
        ]
        n = self.record.length
        want = np.arange(n) if frame_indices is None else np.asarray(frame_indices, dtype=int).reshape(-1)
        if want.size and (want.min() < 0 or want.max() >= n):
            raise ValueError(f"frame indices must be in 0..{n - 1} for episode {self.index}, got {want.tolist()}")
        out = {}
        for cam in cams:
            key = S.IMAGE_PREFIX + cam
            if f"videos/{key}/chunk_index" not in self.row:
                raise ValueError(f"episode {self.index} has no camera {cam!r}; cameras: {cams}")
            rel = info["video_path"].format(video_key=key, chunk_index=self.row[f"videos/{key}/chunk_index"],
                                            file_index=self.row[f"videos/{key}/file_index"])
            t0 = float(self.row[f"videos/{key}/from_timestamp"])
            got: dict[int, np.ndarray] = {}
            wanted = set(int(i) for i in want)
            with av.open(str(self.root / rel)) as container:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    i = int(round((float(frame.time) - t0) * self.fps))
                    if i in wanted:
                        got[i] = frame.to_ndarray(format="rgb24")
                    if i >= n - 1 or len(got) == len(wanted):
                        break
            missing = wanted - set(got)
            if missing:
                raise ValueError(f"episode {self.index} camera {cam!r}: video lacks frames {sorted(missing)[:5]}")
            out[cam] = np.stack([got[int(i)] for i in want]) if len(want) else np.zeros((0,), np.uint8)
        return out


def load_episode(root: str | Path, index: int, with_frames: bool = True) -> Episode:
    root = Path(root)
    recs = {r.episode_index: r for r in read_journal(root)}
    if index not in recs:
        raise KeyError(f"episode {index} is not saved in {root} (saved: {len(recs)})")
    rows = episode_table(root)
    ep = Episode(root, recs[index], rows[index], int(dataset_info(root)["fps"]))
    if with_frames:
        ep.load_frames()
    return ep


def iter_episodes(
    root: str | Path,
    since: int = 0,
    *,
    labelled_only: bool = False,
    with_frames: bool = True,
    follow: bool = False,
    poll_s: float = 0.5,
    timeout: float | None = None,
    relabelled: bool = False,
) -> Iterator[Episode]:
    """Yield saved episodes with index >= ``since`` in order. With ``follow``, keep waiting for new
    ones (as the recorder saves them) until ``timeout`` seconds pass without a new episode.
    ``labelled_only`` skips episodes labelled ``unlabelled``. With ``relabelled`` (and ``follow``),
    an episode already passed whose label is changed (``vla-robot dataset relabel``) while following
    comes again with its new label, out of order: a labelled_only follower gets an episode that was
    unlabelled when it passed it, and a consumer decides what a second look at a used one means."""
    root = Path(root)
    nxt = int(since)
    last_new = time.monotonic()
    table_cache: dict[str, list[dict]] = {}
    seen_changes: int | None = None  # relabel log lines already reflected in what was yielded
    while True:
        changes = relabel.read_log(root)
        journal = relabel.apply(_recorded_journal(root), changes)
        again = set()
        if relabelled and seen_changes is not None:
            again = {c.episode_index for c in changes[seen_changes:] if c.episode_index < nxt}
        seen_changes = len(changes)
        recs = [r for r in journal if r.episode_index >= nxt or r.episode_index in again]
        if recs:
            rows = episode_table(root, table_cache)
            fps = int(dataset_info(root)["fps"])
            for r in recs:
                nxt = max(nxt, r.episode_index + 1)
                if labelled_only and r.label is S.Label.UNLABELLED:
                    continue
                ep = Episode(root, r, rows[r.episode_index], fps)
                if with_frames:
                    ep.load_frames()
                yield ep
            last_new = time.monotonic()
        if not follow:
            return
        if timeout is not None and time.monotonic() - last_new > timeout:
            return
        time.sleep(poll_s)
