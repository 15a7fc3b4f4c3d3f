"""Per-episode durability for a LeRobotDataset: a private working copy, ordered publication, commits.

LeRobot 0.4.4 keeps parquet footers and the episode table in memory until ``finalize()``, so a hard
kill loses the whole session, and while it saves an episode the files on disk disagree for a moment.
So LeRobot never writes into the dataset folder that people read. It writes into a *stage*::

    <root>/                          the published dataset: stock LeRobot can read it at every instant
    <root>/rl/episode_NNNNNN.msgpack the on-policy record of each saved RL episode (vla_robot.data.records)
    <root>/.vla_recorder/stage/      LeRobot's working copy: hard links to the published (immutable)
                                     data/video/episode-table/record files, own copies of the meta files
    <root>/.vla_recorder/commit-N/   snapshot after N episodes: meta files + manifest of every file

After each episode the recorder finalizes the stage (each episode gets its own data, video and
episode-table files, as LeRobot starts new files when a dataset is reopened) and :func:`publish`
brings the new files into ``root`` in an order that keeps it readable: videos and on-policy records, episode table,
tasks, stats and journal first (nothing refers to them yet), then the data file, then ``info.json``
(atomic rename) which makes the episode count visible. Then the commit snapshot is written (created
under a temporary name, renamed into place). On opening, :func:`recover` rolls ``root`` forward
(publication finished, commit missing) or back to the newest commit (publication cut short).

Standard library only.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STATE_DIR = ".vla_recorder"
JOURNAL = "vla_episodes.jsonl"  # lives in <root>/meta/
META_FILES = ("info.json", "stats.json", "tasks.parquet", JOURNAL)
# rl/: the per-episode on-policy records (vla_robot.data.records), published and committed with their
# episode like its data and video, so a kill -9 never leaves a saved episode without its record nor a
# record of a torn episode (rollback removes files that are not in the commit's manifest)
TRACKED_DIRS = ("data", "videos", "meta/episodes", "rl")


class DatasetCorruptError(RuntimeError):
    """A committed file of the dataset is missing or truncated; recovery cannot restore it."""


@dataclass
class Commit:
    path: Path
    episodes: int
    manifest: dict[str, int]  # relative path -> size in bytes


@dataclass
class RecoveryReport:
    commit_episodes: int | None  # None: nothing committed (new, empty or foreign dataset)
    restored_meta: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rolled_forward: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.restored_meta or self.removed or self.rolled_forward)

    def describe(self) -> str:
        if self.rolled_forward:
            return f"completed the commit of episode {self.commit_episodes - 1} (its publication had finished)"
        if not self.changed:
            return "clean"
        return (f"rolled back to {self.commit_episodes} committed episode(s): restored {len(self.restored_meta)} "
                f"meta file(s), removed {len(self.removed)} file(s) of an unfinished episode")


def state_dir(root: Path) -> Path:
    return Path(root) / STATE_DIR


def stage_dir(root: Path) -> Path:
    return state_dir(root) / "stage"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def tracked_files(root: Path) -> dict[str, int]:
    """Every file under data/, videos/, meta/episodes/ and rl/, relative path -> size."""
    root = Path(root)
    out: dict[str, int] = {}
    for d in TRACKED_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for dirpath, _, files in os.walk(base):
            for f in files:
                p = Path(dirpath) / f
                out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


def list_commits(root: Path) -> list[Commit]:
    """Complete commits, oldest first."""
    sd = state_dir(root)
    commits = []
    if not sd.is_dir():
        return commits
    for p in sd.iterdir():
        if p.is_dir() and p.name.startswith("commit-") and not p.name.endswith(".tmp"):
            try:
                manifest = json.loads((p / "manifest.json").read_text())
            except (OSError, ValueError):
                continue  # being deleted by the writer right now
            commits.append(Commit(p, int(manifest["episodes"]), {k: int(v) for k, v in manifest["files"].items()}))
    commits.sort(key=lambda c: c.episodes)
    return commits


def latest_commit(root: Path) -> Commit | None:
    commits = list_commits(root)
    return commits[-1] if commits else None


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # filesystem without hard links
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _copy_atomic(src: Path, dst: Path, fsync: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    if fsync:
        _fsync_file(tmp)
    os.replace(tmp, dst)


def prepare_stage(root: Path) -> Path:
    """(Re)build LeRobot's working copy from the published dataset; returns its path."""
    root = Path(root)
    stage = stage_dir(root)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for rel in tracked_files(root):
        _link_or_copy(root / rel, stage / rel)
    for f in META_FILES:
        if (root / "meta" / f).exists():
            shutil.copy2(root / "meta" / f, stage / "meta" / f)
    return stage


def _publish_order(rel: str) -> int:
    return 0 if rel.startswith(("videos/", "rl/")) else 1 if rel.startswith("meta/") else 2


def publish(root: Path, episodes: int, fsync: bool = True, keep: int = 2) -> Commit:
    """Bring the stage's finished episode into ``root`` (always readable on the way) and commit it."""
    root = Path(root)
    stage = stage_dir(root)
    have, new = tracked_files(root), tracked_files(stage)
    for rel, size in have.items():
        if new.get(rel) != size:
            raise RuntimeError(f"published file {rel} was changed or removed in the stage; refusing to publish")
    added = sorted((rel for rel in new if rel not in have), key=lambda r: (_publish_order(r), r))
    if fsync:
        for rel in added:
            _fsync_file(stage / rel)
    for rel in added:
        if _publish_order(rel) == 2:
            continue
        _link_or_copy(stage / rel, root / rel)
    for f in ("tasks.parquet", "stats.json", JOURNAL):
        if (stage / "meta" / f).exists():
            _copy_atomic(stage / "meta" / f, root / "meta" / f, fsync)
    for rel in added:
        if _publish_order(rel) == 2:
            _link_or_copy(stage / rel, root / rel)
    if fsync:
        for d in {(root / rel).parent for rel in added}:
            _fsync_dir(d)
    _copy_atomic(stage / "meta" / "info.json", root / "meta" / "info.json", fsync)  # the count flips here
    return commit(root, episodes, fsync=fsync, keep=keep)


def commit(root: Path, episodes: int, fsync: bool = True, keep: int = 2) -> Commit:
    """Snapshot ``root``'s current state as the recovery point for ``episodes`` saved episodes."""
    root = Path(root)
    sd = state_dir(root)
    sd.mkdir(exist_ok=True)
    files = tracked_files(root)
    name = f"commit-{episodes:06d}"
    tmp = sd / (name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for f in META_FILES:
        src = root / "meta" / f
        if src.exists():
            shutil.copy2(src, tmp / f)
    (tmp / "manifest.json").write_text(json.dumps({"episodes": episodes, "files": files, "time": time.time()}, indent=1))
    if fsync:
        for p in tmp.iterdir():
            _fsync_file(p)
        _fsync_dir(tmp)
    final = sd / name
    if final.exists():  # re-commit of the same count (adopt / repair)
        shutil.rmtree(final)
    os.rename(tmp, final)
    if fsync:
        _fsync_dir(sd)
    for old in list_commits(root)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Commit(final, episodes, files)


def _published_episodes(root: Path) -> int | None:
    try:
        return int(json.loads((root / "meta" / "info.json").read_text())["total_episodes"])
    except (OSError, ValueError, KeyError):
        return None


def _journal_lines(root: Path) -> int:
    try:
        return sum(1 for line in (root / "meta" / JOURNAL).read_text().splitlines() if line.strip())
    except OSError:
        return 0


def recover(root: Path, dry_run: bool = False) -> RecoveryReport:
    """Bring ``root`` to a committed state: roll forward a finished publication, else roll back to
    the newest commit. Raises :class:`DatasetCorruptError` when a committed file is gone or shorter
    than committed (that data cannot be brought back)."""
    root = Path(root)
    c = latest_commit(root)
    if c is None:
        if state_dir(root).is_dir() and _published_episodes(root) == 1 and _journal_lines(root) == 1:
            if not dry_run:  # the first episode was fully published; only its commit is missing
                commit(root, 1)
            return RecoveryReport(1, rolled_forward=True)
        return RecoveryReport(None)
    bad = []
    for rel, size in c.manifest.items():
        p = root / rel
        if not p.is_file():
            bad.append(f"{rel} (missing)")
        elif p.stat().st_size < size:
            bad.append(f"{rel} (size {p.stat().st_size} < committed {size})")
    if bad:
        raise DatasetCorruptError(
            f"{root}: {len(bad)} file(s) of committed episodes are damaged: {', '.join(bad[:5])}"
            + (" ..." if len(bad) > 5 else "") + "; restore them from a backup"
        )
    n_pub = _published_episodes(root)
    if n_pub == c.episodes + 1 and _journal_lines(root) == n_pub:
        # info.json is renamed into place last: the publication of the next episode had finished
        if not dry_run:
            commit(root, n_pub)
        return RecoveryReport(n_pub, rolled_forward=True)
    rep = RecoveryReport(c.episodes)
    for rel in tracked_files(root):
        if rel not in c.manifest:
            rep.removed.append(rel)
            if not dry_run:
                (root / rel).unlink()
    for f in META_FILES:
        snap, cur = c.path / f, root / "meta" / f
        if snap.exists():
            if not cur.exists() or cur.read_bytes() != snap.read_bytes():
                rep.restored_meta.append(f"meta/{f}")
                if not dry_run:
                    _copy_atomic(snap, cur, fsync=True)
        elif cur.exists():
            rep.removed.append(f"meta/{f}")
            if not dry_run:
                cur.unlink()
    for stray in [*root.glob("meta/*.part"), *(p for d in TRACKED_DIRS for p in (root / d).rglob("*.part")),
                  root / "images", *root.glob("tmp*")]:
        if stray.exists():
            rep.removed.append(stray.relative_to(root).as_posix())
            if not dry_run:
                shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
    if not dry_run:
        _remove_empty_dirs(root)
    return rep


def _remove_empty_dirs(root: Path) -> None:
    for d in TRACKED_DIRS:
        base = root / d
        if base.is_dir():
            for dirpath, _, _ in os.walk(base, topdown=False):
                if Path(dirpath) != base and not os.listdir(dirpath):
                    os.rmdir(dirpath)


def clear_uncommitted(root: Path) -> None:
    """A dataset of ours with no commit holds no saved episode: remove what a cut-short first save left."""
    root = Path(root)
    for d in ("data", "videos", "meta", "images", "rl"):
        if (root / d).exists():
            shutil.rmtree(root / d)
    if stage_dir(root).exists():
        shutil.rmtree(stage_dir(root))
