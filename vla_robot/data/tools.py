"""Dataset tools behind ``vla-robot dataset info|verify|repair``.

* :func:`info` — what is in a dataset (episodes, frames, tasks, labels, cameras, size, commit state).
* :func:`verify` — loads the dataset with *stock* LeRobot (``video_backend="pyav"``) and checks every
  episode: contiguous indices, frame counts of the episode table = data rows = journal, first and
  last frame of every camera decode, and that the folder matches its newest commit.
* :func:`repair` — rolls a dataset of ours back/forward to its newest commit (what the recorder does
  on open), or adopts a LeRobot dataset written elsewhere (verifies it, then commits it).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import reader, records, store
from . import schema as S


def _require_dataset(root: Path) -> None:
    if not (root / "meta" / "info.json").exists():
        if store.state_dir(root).is_dir():
            raise FileNotFoundError(f"{root}: recording started but no episode was saved yet (nothing to read)")
        raise FileNotFoundError(f"{root} is not a LeRobot dataset (no meta/info.json)")


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and store.STATE_DIR not in p.parts) / 1e6


def info(root: str | Path) -> dict:
    root = Path(root)
    _require_dataset(root)
    meta = json.loads((root / "meta" / "info.json").read_text())
    journal = reader.read_journal(root)
    commit = store.latest_commit(root)
    try:
        state = store.recover(root, dry_run=True).describe() if commit else "no commit (not written by vla_robot)"
    except store.DatasetCorruptError as e:
        state = f"DAMAGED: {e}"
    return {
        "root": str(root),
        "codebase_version": meta.get("codebase_version"),
        "robot_type": meta.get("robot_type"),
        "fps": meta.get("fps"),
        "episodes": meta.get("total_episodes"),
        "frames": meta.get("total_frames"),
        "cameras": {k[len(S.IMAGE_PREFIX):]: v["shape"][:2] for k, v in meta["features"].items() if v["dtype"] == "video"},
        "features": sorted(meta["features"]),
        "tasks": dict(Counter(r.task for r in journal)),
        "labels": dict(Counter(r.label for r in journal)),
        "dropped_frames": sum(r.dropped_frames for r in journal),
        "committed_episodes": commit.episodes if commit else None,
        "state": state,
        "size_mb": round(_size_mb(root), 3),
    }


@dataclass
class VerifyReport:
    root: str
    episodes: int = 0
    frames: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"root": self.root, "ok": self.ok, "episodes": self.episodes, "frames": self.frames, "problems": self.problems}


def _check_record(root: Path, index: int, length: int) -> list[str]:
    """Problems of episode ``index``'s on-policy record, if it has one (RL episodes)."""
    path = records.episode_path(root, index)
    if not path.exists():
        return []
    try:
        rec = records.read_episode(path)
    except ValueError as e:
        return [f"episode {index}: {e}"]
    if rec["episode_index"] != index or rec["length"] != length:
        return [f"episode {index}: its on-policy record is of episode {rec['episode_index']} with {rec['length']} "
                f"frames, not of this one ({length} frames)"]
    return []


def verify(root: str | Path, decode: bool = True, progress: bool = False) -> VerifyReport:
    """Load with stock LeRobot and check every episode; problems are listed, not raised."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    _require_dataset(root)
    rep = VerifyReport(str(root))
    if store.latest_commit(root) is not None:
        try:
            state = store.recover(root, dry_run=True)
        except store.DatasetCorruptError as e:
            rep.problems.append(str(e))
        else:
            if state.changed:
                rep.problems.append(f"folder differs from its newest commit ({state.describe()} would fix it): run repair")
    try:
        ds = LeRobotDataset("local/verify", root=root, video_backend="pyav")
    except Exception as e:  # noqa: BLE001 - the point is to report it
        rep.problems.append(f"stock LeRobotDataset cannot load it: {type(e).__name__}: {e}")
        return rep
    rep.episodes, rep.frames = ds.num_episodes, ds.num_frames
    eps = ds.meta.episodes
    indices = [int(i) for i in eps["episode_index"]]
    if indices != list(range(len(indices))):
        rep.problems.append(f"episode indices are not 0..{len(indices) - 1} in order (LeRobot looks episodes up by position)")
    if len(indices) != ds.meta.total_episodes:
        rep.problems.append(f"info.json says {ds.meta.total_episodes} episodes, the episode table has {len(indices)}")
    counts = Counter(int(e) for e in ds.hf_dataset["episode_index"])
    journal = {r.episode_index: r for r in reader.read_journal(root)}
    has_journal = bool(journal) or (root / "meta" / store.JOURNAL).exists()
    iterator = range(len(indices))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="verify", unit="episode", disable=None)
    for pos in iterator:
        ep = eps[pos]
        i, n = int(ep["episode_index"]), int(ep["length"])
        if counts.get(i, 0) != n:
            rep.problems.append(f"episode {i}: episode table says {n} frames, data has {counts.get(i, 0)}")
        if int(ep["dataset_to_index"]) - int(ep["dataset_from_index"]) != n:
            rep.problems.append(f"episode {i}: dataset_from/to_index span != length {n}")
        if has_journal:
            rec = journal.get(i)
            if rec is None:
                rep.problems.append(f"episode {i}: missing from the journal (meta/{store.JOURNAL})")
            elif rec.length != n:
                rep.problems.append(f"episode {i}: journal says {rec.length} frames, episode table {n}")
        rep.problems += _check_record(root, i, n)
        if decode and n:
            for j in (int(ep["dataset_from_index"]), int(ep["dataset_to_index"]) - 1):
                try:
                    item = ds[j]
                except Exception as e:  # noqa: BLE001
                    rep.problems.append(f"episode {i}: frame {j} does not load: {type(e).__name__}: {e}")
                    break
                if int(item["episode_index"]) != i:
                    rep.problems.append(f"episode {i}: global frame {j} belongs to episode {int(item['episode_index'])}")
    extra = set(counts) - set(indices)
    if extra:
        rep.problems.append(f"data has frames of episodes missing from the episode table: {sorted(extra)[:10]}")
    return rep


def repair(root: str | Path, dry_run: bool = False) -> dict:
    """Bring a dataset of ours to its newest commit, or adopt a foreign one. Returns what was done.
    Not while a recorder is writing into ``root`` (it owns the stage that this removes)."""
    root = Path(root)
    if store.state_dir(root).is_dir():  # ours
        rep = store.recover(root, dry_run=dry_run)
        if rep.commit_episodes is not None:
            if not dry_run:
                stage = store.stage_dir(root)
                if stage.exists():  # the recorder rebuilds it; a stale one only wastes space
                    import shutil

                    shutil.rmtree(stage)
            return {"action": "recovered" if rep.changed else "clean", "detail": rep.describe(),
                    "removed": rep.removed, "restored": rep.restored_meta, "dry_run": dry_run}
        if not dry_run:
            store.clear_uncommitted(root)
        return {"action": "cleared", "detail": "no episode had been saved; removed the unfinished first one",
                "dry_run": dry_run}
    _require_dataset(root)
    rep = verify(root)
    if not rep.ok:
        raise ValueError(f"{root} cannot be adopted, stock LeRobot does not read it cleanly: " + "; ".join(rep.problems[:5]))
    if not dry_run:
        store.commit(root, rep.episodes)
    return {"action": "adopted", "detail": f"committed {rep.episodes} episode(s); the recorder can resume it",
            "dry_run": dry_run}
