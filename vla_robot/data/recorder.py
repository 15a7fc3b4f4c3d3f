"""The durable episode recorder: frames in on the control thread, LeRobotDataset episodes out.

::

    rec = Recorder("runs/demos", Schema(cameras={"front": (480, 640)}, state_names=joints,
                                         action_names=joints), repo_id="local/demos")
    rec.start_episode("pick up the cube", start_condition="seed-3")
    rec.add_frame(images, state, action, stamp=t, control=CONTROL_TELEOP)   # never blocks
    record = rec.save_episode("success")        # durable when it returns (or wait=False -> Future)
    rec.discard_episode()                       # or: nothing of the episode stays on disk
    rec.close()

``add_frame`` validates the frame, copies it into a bounded in-memory queue and returns at once; a
writer thread feeds LeRobot (streaming video encoding, one encoder thread per camera). When the
queue is full (the disk or the encoder cannot keep up) the frame is *dropped and counted*: the
count is returned (``False``), kept in :attr:`Recorder.stats`, logged, and stored with the episode
(``dropped_frames`` in the journal); the observation stamps of the saved frames show where.

Each saved episode is finalized and committed on its own (see :mod:`vla_robot.data.store`), so a
``kill -9`` at any moment loses at most the episode in progress, and a new ``Recorder`` on the same
root resumes the same dataset.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import records as records_mod
from . import schema as S
from . import store
from .config import RecorderConfig
from .schema import EpisodeRecord, Schema

log = logging.getLogger(__name__)

__all__ = ["Recorder", "RecorderError", "RecorderStats"]


class RecorderError(RuntimeError):
    """The writer failed (disk full, encoder crash...); the episode in progress is lost, the dataset is not."""


@dataclass
class RecorderStats:
    episodes_saved: int = 0  # in this dataset, all sessions
    episodes_discarded: int = 0  # this session
    frames_queued: int = 0  # this session
    frames_written: int = 0  # this session
    frames_dropped: int = 0  # this session (queue full)
    episode_frames: int = 0  # frames accepted into the current episode
    episode_dropped: int = 0  # frames dropped in the current episode
    pending: int = 0  # frames waiting for the writer
    last_durable_s: float = float("nan")  # save_episode request -> committed, seconds
    last_save_breakdown: dict = field(default_factory=dict)  # seconds per phase of the last save


def _quiet_libraries() -> None:
    """LeRobot's encoders and `datasets` print per-frame/per-episode noise; keep errors only."""
    try:
        import av

        av.logging.set_level(av.logging.ERROR)
        av.logging.set_libav_level(av.logging.ERROR)  # LeRobot restores FFmpeg's own stderr logger
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its config on every episode otherwise
    except Exception:  # noqa: BLE001 - cosmetics only
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass


class Recorder:
    """Writes episodes into a LeRobotDataset v3 at ``root`` (created, or resumed after recovery)."""

    def __init__(
        self,
        root: str | os.PathLike,
        schema: Schema,
        repo_id: str = "local/vla_robot",
        robot_type: str | None = None,
        config: RecorderConfig | None = None,
    ):
        self.config = config or RecorderConfig()
        self.config.validate()
        if "/" not in repo_id:
            raise ValueError(f"repo_id must look like 'user/name', got {repo_id!r}")
        self.root = Path(root).resolve()
        self.schema = schema
        self.repo_id = repo_id
        self.robot_type = robot_type
        self.recovery: store.RecoveryReport | None = None
        self._stats = RecorderStats()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._items: collections.deque = collections.deque()
        self._pending_frames = 0
        self._episode_open = False
        self._closed = False
        self._writer_error: BaseException | None = None

        _quiet_libraries()
        self._ds = self._open()
        self._stats.episodes_saved = self._ds.meta.total_episodes
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side (control loop)
    @property
    def stats(self) -> RecorderStats:
        with self._lock:
            self._stats.pending = self._pending_frames
            d = dict(self._stats.__dict__)
            d["last_save_breakdown"] = dict(d["last_save_breakdown"])
            return RecorderStats(**d)

    @property
    def num_episodes(self) -> int:
        """Episodes saved and durable in the dataset."""
        with self._lock:
            return self._stats.episodes_saved

    @property
    def episode_open(self) -> bool:
        return self._episode_open

    def start_episode(self, task: str, start_condition: Any = None, meta: dict | None = None) -> None:
        """Begin an episode for instruction ``task``; ``start_condition`` groups episodes for GRPO."""
        self._check_usable()
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty instruction string, got {task!r}")
        if self._episode_open:
            raise RuntimeError("an episode is already open: save_episode() or discard_episode() it first")
        if meta is not None:
            try:
                json.dumps(meta)
            except (TypeError, ValueError) as e:
                raise ValueError(f"episode meta must be JSON-serializable: {e}") from e
        sc = None if start_condition is None else str(start_condition)  # one type in the journal (GRPO groups)
        with self._cv:
            self._stats.episode_frames = 0
            self._stats.episode_dropped = 0
            self._items.append(("start", task, sc, dict(meta or {})))
            self._cv.notify()
        self._episode_open = True

    def add_frame(self, images: dict[str, np.ndarray], state, action, *, wait_s: float | None = None,
                  **fields) -> bool:
        """Queue one step (see :meth:`Schema.make_frame` for the fields). Returns False when the
        frame was dropped because the writer is behind (after ``wait_s``, default the config's
        ``put_timeout_s``: a control loop must not wait long); raises ValueError for malformed data."""
        if not self._episode_open:
            raise RuntimeError("add_frame() before start_episode(): no episode is open")
        self._check_usable()
        frame = self.schema.make_frame(images, state, action, **fields)
        deadline = time.monotonic() + (self.config.put_timeout_s if wait_s is None else wait_s)
        with self._cv:
            while self._pending_frames >= self.config.max_pending_frames:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cv.wait(remaining):
                    if self._pending_frames < self.config.max_pending_frames:
                        break
                    self._stats.frames_dropped += 1
                    self._stats.episode_dropped += 1
                    n = self._stats.episode_dropped
                    if n == 1 or n % 30 == 0:
                        log.warning("recorder: writer is behind, dropped %d frame(s) in this episode", n)
                    return False
            self._items.append(("frame", frame))
            self._pending_frames += 1
            self._stats.frames_queued += 1
            self._stats.episode_frames += 1
            self._cv.notify()
        return True

    def save_episode(self, label: S.Label | str | bool | None = S.Label.UNLABELLED, *, timeout_reached: bool = False,
                     meta: dict | None = None, records=None, wait: bool = True,
                     timeout: float | None = None):
        """Label and save the open episode. With ``wait`` returns its :class:`EpisodeRecord` once it is
        durable; otherwise a ``concurrent.futures.Future`` of it. An empty episode is a ValueError.

        ``records``: the episode's on-policy chunk records (:func:`vla_robot.data.records.make_chunk`),
        written losslessly to ``rl/episode_NNNNNN.msgpack`` and made durable together with the episode;
        or a callable that returns them, called on the writer thread once the episode's frames are written
        (records that travel on another topic than the commands may still be on their way)."""
        label = S.Label.of(label)  # a bad label fails here, in the caller, before anything is queued
        if not callable(records):
            for c in records or ():
                records_mod.check_chunk(c)
        if not self._episode_open:
            raise RuntimeError("save_episode() with no open episode: call start_episode() first")
        self._check_usable()
        with self._cv:
            if self._stats.episode_frames == 0:
                raise ValueError("cannot save an empty episode (no frame was recorded); discard_episode() it")
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._items.append(("save", label, bool(timeout_reached), dict(meta or {}),
                                records if callable(records) else list(records or ()),
                                self._stats.episode_dropped, time.monotonic(), fut))
            self._cv.notify()
        self._episode_open = False
        return fut.result(timeout) if wait else fut

    def discard_episode(self, wait: bool = True, timeout: float | None = None):
        """Drop the open episode: nothing of it stays on disk (re-record starts cleanly)."""
        if not self._episode_open:
            raise RuntimeError("discard_episode() with no open episode")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._items.append(("discard", fut))
            self._stats.episodes_discarded += 1
            self._cv.notify()
        self._episode_open = False
        return fut.result(timeout) if wait else fut

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued frame has reached LeRobot (for tests and benchmarks)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._items.append(("flush", fut))
            self._cv.notify()
        fut.result(timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Discard an open episode, stop the writer and finalize the dataset. Idempotent."""
        if self._closed:
            return
        if self._episode_open:
            log.warning("recorder: closing with an open episode; it is discarded")
            self.discard_episode(wait=False)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._items.append(("close", fut))
            self._cv.notify()
        self._closed = True
        if self._thread.is_alive():
            fut.result(timeout)
            self._thread.join(timeout)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("the recorder is closed")
        if not self._thread.is_alive():
            raise RecorderError(f"the recorder's writer thread has stopped: {self._writer_error!r}")

    # ------------------------------------------------------------------ dataset open / recovery
    def _lerobot_kwargs(self) -> dict:
        c = self.config
        return dict(
            streaming_encoding=True,
            vcodec=c.vcodec,
            encoder_threads=c.encoder_threads,
            encoder_queue_maxsize=max(2, c.fps // 2),
        )

    def _open(self):
        """Recover ``root``, rebuild the stage from it and open LeRobot there (created if new)."""
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        root = self.root
        ours = store.state_dir(root).is_dir()
        if root.exists() and not ours:
            info_path = root / "meta" / "info.json"
            if info_path.exists():
                raise ValueError(
                    f"{root} holds a LeRobot dataset that was not written by this recorder; run "
                    f"`vla-robot dataset repair --root {root}` to adopt it, or choose another --root"
                )
            if any(root.iterdir()):
                raise ValueError(f"{root} exists, is not empty and is not a LeRobot dataset; choose another --root")
        if ours:
            self.recovery = store.recover(root)
            if self.recovery.changed:
                log.warning("recorder: %s: %s", root, self.recovery.describe())
        if store.latest_commit(root) is not None:  # resume
            self._check_schema(json.loads((root / "meta" / "info.json").read_text()))
            store.prepare_stage(root)
            return self._resume_lerobot()
        store.clear_uncommitted(root)  # nothing was ever saved here
        store.state_dir(root).mkdir(parents=True, exist_ok=True)
        return LeRobotDataset.create(
            self.repo_id, fps=self.config.fps, features=self.schema.features(), root=store.stage_dir(root),
            robot_type=self.robot_type, use_videos=True, **self._lerobot_kwargs(),
        )

    def _check_schema(self, info: dict) -> None:
        try:
            have = Schema.from_features(info["features"])
        except ValueError as e:
            raise ValueError(f"{self.root} was recorded with a different schema ({e}); record into another --root") from None
        if have != self.schema:
            raise ValueError(
                f"{self.root} was recorded with a different schema: dataset has {have}, this recorder "
                f"wants {self.schema}; record into another --root"
            )
        if int(info["fps"]) != self.config.fps:
            raise ValueError(f"{self.root} was recorded at {info['fps']} fps, this recorder runs at {self.config.fps}")

    def _reopen(self) -> None:
        self._ds = self._resume_lerobot()

    def _resume_lerobot(self):
        """LeRobot's writer resumed on the stage, like ``LeRobotDataset(repo_id, root)`` does for
        ``lerobot-record --resume`` but without loading every recorded frame into `datasets`' cache
        (that constructor copies the whole dataset into ~/.cache on each call: quadratic when the
        recorder reopens after every episode). Attribute for attribute what ``LeRobotDataset.create``
        sets up (lerobot 0.4.4), with the metadata read from disk; the next save then starts new
        data/video/episode files, exactly as after the public constructor."""
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
        from lerobot.datasets.video_utils import StreamingVideoEncoder, resolve_vcodec

        kw = self._lerobot_kwargs()
        ds = LeRobotDataset.__new__(LeRobotDataset)
        ds.meta = LeRobotDatasetMetadata(self.repo_id, root=store.stage_dir(self.root))
        ds.repo_id, ds.root, ds.revision = ds.meta.repo_id, ds.meta.root, None
        ds.tolerance_s, ds.image_writer = 1e-4, None
        ds.batch_encoding_size, ds.episodes_since_last_encoding = 1, 0
        ds.vcodec, ds._encoder_threads = resolve_vcodec(kw["vcodec"]), kw["encoder_threads"]
        ds.episode_buffer = ds.create_episode_buffer()
        ds.episodes = None
        ds.hf_dataset = ds.create_hf_dataset()  # empty: writing never reads it
        ds.image_transforms = ds.delta_timestamps = ds.delta_indices = ds._absolute_to_relative_idx = None
        ds.video_backend = "pyav"
        ds.writer = ds.latest_episode = ds._current_file_start_frame = None
        ds._lazy_loading, ds._recorded_frames, ds._writer_closed_for_reading = False, ds.meta.total_frames, False
        ds._streaming_encoder = StreamingVideoEncoder(
            fps=ds.meta.fps, vcodec=ds.vcodec, pix_fmt="yuv420p", g=2, crf=30, preset=None,
            queue_maxsize=kw["encoder_queue_maxsize"], encoder_threads=kw["encoder_threads"],
        )
        return ds

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        task = None
        episode_failed: BaseException | None = None
        start_meta: tuple[Any, dict] = (None, {})
        while True:
            with self._cv:
                while not self._items:
                    self._cv.wait()
                item = self._items.popleft()
            kind = item[0]
            try:
                if kind == "frame":
                    try:
                        if episode_failed is None:
                            self._write_frame(item[1], task)
                    except Exception as e:  # noqa: BLE001 - reported at save
                        log.exception("recorder: writing a frame failed; the episode will not be saved")
                        episode_failed = e
                    finally:
                        with self._cv:
                            self._pending_frames -= 1
                            self._cv.notify_all()
                elif kind == "start":
                    _, task, sc, meta = item
                    start_meta = (sc, meta)
                    episode_failed = None
                elif kind == "save":
                    _, label, timed_out, meta, chunks, dropped, t_request, fut = item
                    if episode_failed is not None:
                        self._reset_after_error()
                        fut.set_exception(RecorderError(f"episode not saved, writing it failed: {episode_failed!r}"))
                    else:
                        try:
                            rec = self._save(task, label, timed_out, {**start_meta[1], **meta}, start_meta[0], dropped,
                                             chunks)
                        except Exception as e:  # noqa: BLE001
                            log.exception("recorder: saving the episode failed; rolling back to the last commit")
                            self._reset_after_error()
                            fut.set_exception(RecorderError(f"saving the episode failed: {e!r}"))
                        else:
                            with self._lock:
                                self._stats.episodes_saved = rec.episode_index + 1
                                self._stats.last_durable_s = time.monotonic() - t_request
                            fut.set_result(rec)
                            self._reopen()  # ready for the next episode (not part of "durable")
                elif kind == "discard":
                    self._clear_buffer()
                    episode_failed = None
                    item[1].set_result(None)
                elif kind == "flush":
                    item[1].set_result(None)
                elif kind == "close":
                    self._clear_buffer()
                    self._ds.finalize()
                    item[1].set_result(None)
                    return
            except BaseException as e:  # noqa: BLE001 - keep the thread's death visible
                self._writer_error = e
                log.exception("recorder: writer thread failed")
                for it in list(self._items) + [item]:
                    if it and isinstance(it[-1], concurrent.futures.Future) and not it[-1].done():
                        it[-1].set_exception(RecorderError(f"writer thread failed: {e!r}"))
                return

    def _write_frame(self, frame: dict, task: str) -> None:
        ds = self._ds
        enc = getattr(ds, "_streaming_encoder", None)
        queues = getattr(enc, "_frame_queues", None) or {}
        # LeRobot's encoder drops a frame after waiting 0.1 s for room; wait here instead, off the
        # control loop (our own bounded queue takes the backpressure and counts what it drops).
        deadline = time.monotonic() + 30.0
        while any(q.full() for q in queues.values()):
            if time.monotonic() > deadline:
                raise RecorderError("video encoder made no progress for 30 s")
            time.sleep(0.002)
        frame["task"] = task
        ds.add_frame(frame)
        dropped = sum((getattr(enc, "_dropped_frames", None) or {}).values()) if enc is not None else 0
        if dropped:
            raise RecorderError(f"LeRobot's video encoder dropped {dropped} frame(s); the episode's video would be short")
        with self._lock:
            self._stats.frames_written += 1

    def _clear_buffer(self) -> None:
        ds = self._ds
        if ds.episode_buffer is not None and ds.episode_buffer.get("size", 0) > 0:
            ds.clear_episode_buffer(delete_images=True)
        elif getattr(ds, "_streaming_encoder", None) is not None:
            ds._streaming_encoder.cancel_episode()
        ds.episode_buffer = None
        stage = store.stage_dir(self.root)
        for stray in stage.glob("tmp*"):  # encoder temp folders of the dropped episode
            shutil.rmtree(stray, ignore_errors=True) if stray.is_dir() else stray.unlink(missing_ok=True)
        images = stage / "images"
        if images.is_dir():
            shutil.rmtree(images, ignore_errors=True)

    def _reset_after_error(self) -> None:
        try:
            self._clear_buffer()
            self._ds.finalize()
        except Exception:  # noqa: BLE001
            log.exception("recorder: cleaning up after a failed episode")
        self._ds = self._open()

    def _write_records(self, chunks: list[dict], index: int, length: int, chunk_id: np.ndarray,
                       control: np.ndarray) -> dict:
        """The episode's on-policy records into the stage (published with the episode); what the journal
        says about them. A policy chunk that frames executed but that has no record cannot train: counted."""
        path = records_mod.episode_path(store.stage_dir(self.root), index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(records_mod.encode_episode(chunks, index, length))
        os.replace(tmp, path)
        have = {c["chunk_id"] for c in chunks}
        executed = {int(c) for c, k in zip(chunk_id, control) if c >= 0 and k == S.CONTROL_POLICY}
        missing = sorted(executed - have)
        if missing:
            log.warning("recorder: episode %d: %d executed chunk(s) without an on-policy record (ids %s)",
                        index, len(missing), missing[:10])
        return {"onpolicy_chunks": len(chunks), "chunks_without_record": len(missing)}

    def _save(self, task: str, label: S.Label, timed_out: bool, meta: dict, start_condition, dropped: int,
              chunks) -> EpisodeRecord:
        ds = self._ds
        buf = ds.episode_buffer
        n = int(buf["size"])
        index = int(buf["episode_index"])
        buf[S.LABEL] = [np.array([label.stored], np.int8)] * n
        reward = np.zeros((n, 1), np.float32)
        done = np.zeros((n, 1), bool)
        done[-1] = True
        if label is S.Label.SUCCESS:
            reward[-1] = 1.0
        buf[S.REWARD] = list(reward)
        buf[S.DONE] = list(done)
        control = np.concatenate(buf[S.CONTROL])
        if callable(chunks):
            chunks = chunks()
            for c in chunks:
                records_mod.check_chunk(c)
        if chunks:
            meta = {**meta, **self._write_records(chunks, index, n, np.concatenate(buf[S.CHUNK_ID]), control)}
        stamps = S.stamps_s(np.concatenate(buf[S.OBS_STAMP]))
        finite = stamps[np.isfinite(stamps)]
        latency = np.concatenate(buf[S.POLICY_LATENCY])
        versions = np.concatenate(buf[S.POLICY_VERSION])
        interventions, teleop_frames = S.count_interventions(control)

        _quiet_libraries()  # LeRobot's progress-bar guard turns `datasets` bars back on
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Converting input from bool", category=RuntimeWarning)
            ds.save_episode()  # finishes the video encoders, writes parquet, moves the mp4s, stats
        t1 = time.monotonic()
        ds.finalize()
        t2 = time.monotonic()

        rec = EpisodeRecord(
            episode_index=index,
            task=task,
            label=label,
            length=n,
            start_condition=start_condition,
            policy_versions=sorted({int(v) for v, c in zip(versions, control) if v >= 0 and c == S.CONTROL_POLICY}),
            dropped_frames=int(dropped),
            interventions=interventions,
            intervention_frames=teleop_frames,
            duration_s=float(finite[-1] - finite[0]) if len(finite) > 1 else 0.0,
            timeout=timed_out,
            latency_s=[round(float(x), 6) for x in latency[latency >= 0]],
            recorded_at=time.time(),
            meta=meta,
        )
        journal = store.stage_dir(self.root) / "meta" / store.JOURNAL
        old = journal.read_text() if journal.exists() else ""
        tmp = journal.with_name(journal.name + ".tmp")
        tmp.write_text(old + json.dumps(rec.to_json()) + "\n")
        os.replace(tmp, journal)
        store.publish(self.root, index + 1, fsync=self.config.fsync, keep=self.config.keep_commits)
        with self._lock:
            self._stats.last_save_breakdown = {"lerobot_save_episode": t1 - t0, "finalize": t2 - t1,
                                               "journal_publish_commit": time.monotonic() - t2}
        return rec
