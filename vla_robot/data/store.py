"""Per-episode durability for a LeRobotDataset on disk: commit snapshots and crash recovery.

LeRobot 0.4.4 keeps parquet footers and the episode table in memory until ``finalize()``, so a hard
kill loses the whole session. The recorder therefore finalizes after every episode (each episode
then lives in its own data, video and episode-table files, since LeRobot starts new files when a
dataset is reopened) and *commits*: it fsyncs the new files and writes a snapshot directory

    <root>/.vla_recorder/commit-<n episodes>/   info.json stats.json tasks.parquet vla_episodes.jsonl
                                                 manifest.json  (every data/video/episode-table file + size)

created under a temporary name and renamed into place (the rename is the commit point). On
opening, :func:`recover` rolls the dataset back to the newest commit: it restores the meta files,
deletes files no commit knows (the episode that was being written) and temporary images. Files of
committed episodes are never rewritten, so rollback cannot damage them.

Standard library only.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = ".vla_recorder"
JOURNAL = "vla_episodes.jsonl"  # lives in <root>/meta/
META_FILES = ("info.json", "stats.json", "tasks.parquet", JOURNAL)
TRACKED_DIRS = ("data", "videos", "meta/episodes")


class DatasetCorruptError(RuntimeError):
    """A committed file of the dataset is missing or truncated; recovery cannot restore it."""


@dataclass
class Commit:
    path: Path
    episodes: int
    manifest: dict[str, int]  # relative path -> size in bytes


@dataclass
class RecoveryReport:
    commit_episodes: int | None  # None: no commit (empty or foreign dataset)
    restored_meta: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.restored_meta or self.removed)

    def describe(self) -> str:
        if not self.changed:
            return "clean"
        return (f"rolled back to {self.commit_episodes} committed episode(s): restored {len(self.restored_meta)} "
                f"meta file(s), removed {len(self.removed)} uncommitted file(s)")


def state_dir(root: Path) -> Path:
    return Path(root) / STATE_DIR


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
    """Every file under data/, videos/ and meta/episodes/, relative path -> size."""
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
                continue  # cannot happen for a renamed commit; ignore rather than trust it
            commits.append(Commit(p, int(manifest["episodes"]), {k: int(v) for k, v in manifest["files"].items()}))
    commits.sort(key=lambda c: c.episodes)
    return commits


def latest_commit(root: Path) -> Commit | None:
    commits = list_commits(root)
    return commits[-1] if commits else None


def commit(root: Path, episodes: int, new_files: list[str] | None = None, fsync: bool = True, keep: int = 2) -> Commit:
    """Make the dataset's current on-disk state the recovery point (``episodes`` saved episodes)."""
    root = Path(root)
    sd = state_dir(root)
    sd.mkdir(exist_ok=True)
    files = tracked_files(root)
    if fsync:
        prev = latest_commit(root)
        known = prev.manifest if prev else {}
        for rel in files:
            if rel not in known:
                _fsync_file(root / rel)
        for name in META_FILES:
            if (root / "meta" / name).exists():
                _fsync_file(root / "meta" / name)
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
    if final.exists():  # re-commit of the same count (e.g. after repair)
        shutil.rmtree(final)
    os.rename(tmp, final)
    if fsync:
        _fsync_dir(sd)
    for old in list_commits(root)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Commit(final, episodes, files)


def recover(root: Path, dry_run: bool = False) -> RecoveryReport:
    """Roll ``root`` back to its newest commit. Raises :class:`DatasetCorruptError` when a committed
    file is gone or shorter than committed (that data cannot be brought back)."""
    root = Path(root)
    c = latest_commit(root)
    if c is None:
        return RecoveryReport(None)
    rep = RecoveryReport(c.episodes)
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
                    tmp = cur.with_name(cur.name + ".restore")
                    shutil.copy2(snap, tmp)
                    os.replace(tmp, cur)
        elif cur.exists():
            rep.removed.append(f"meta/{f}")
            if not dry_run:
                cur.unlink()
    # temporary PNGs / partial encoder output of the lost episode
    for stray in [root / "images", *root.glob("tmp*")]:
        if stray.exists():
            rep.removed.append(stray.relative_to(root).as_posix() + ("/" if stray.is_dir() else ""))
            if not dry_run:
                shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
    if not dry_run:
        for d in TRACKED_DIRS:  # empty folders left by removed files
            base = root / d
            if base.is_dir():
                for dirpath, _, _ in os.walk(base, topdown=False):
                    if Path(dirpath) != base and not os.listdir(dirpath):
                        os.rmdir(dirpath)
    return rep
