"""From a stream of robot messages to recorded episodes (the recorder node's logic, without ROS).

The recorder node feeds a :class:`RecordingSession` the latest camera images, joint states, raw
policy actions, policy chunks, the policy's on-policy chunk records and the episode manager's
events; every arm command (the control step, after the safety filter) becomes one frame while an
episode runs:

* ``policy.latency`` of a chunk = its arrival - the arrival of the joint state it was computed
  from (both on the node's clock);
* observation = the newest image of each camera and the newest joint state; ``stamp`` = the
  command's stamp (the observation it was computed from), ``action_stamp`` = when it was seen;
* ``control`` = teleop when the command's source is ``teleop``, policy otherwise;
* chunk bookkeeping: the policy node tags each policy command with the chunk and the index of the
  action it executes (``policy/c<id>/s<index>`` in ``header.frame_id``); the frame gets ``chunk_id``
  and ``chunk_step`` = that index, exactly, whichever executor ran (actions dropped because their
  time had passed are never marked executed). Untagged policy commands fall back to counting steps
  from the chunk's arrival.
* on-policy records (:mod:`vla_robot.data.records`: what the server saw and sampled, per chunk) are
  kept from the episode's start until its save, in whatever order they arrive relative to the
  commands, and saved with it; which of their actions ran comes from the frames when it is read.

Events (``episode/event`` JSON): ``start`` opens an episode (task = instruction), ``end`` stops
taking frames, ``save`` labels and saves it (``end`` reason ``timeout`` marks a timeout),
``discard`` drops it. The Recorder is created in the background as soon as every stream has been
seen (image sizes and joint names come from the wire); events and frames that arrive while it opens
wait in a bounded backlog and are replayed in order.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import numpy as np

from .schema import CONTROL_POLICY, CONTROL_TELEOP, Label, Schema

log = logging.getLogger(__name__)

COMMAND_SOURCES_RECORDED = ("policy", "teleop", "hold")


class RecordingSession:
    def __init__(self, make_recorder: Callable[[Schema], object], cameras: list[str],
                 joint_names: list[str] | None = None, default_task: str = "",
                 on_saved: Callable[[dict], None] | None = None):
        if not cameras:
            raise ValueError("cameras must name at least one camera")
        self.make_recorder = make_recorder
        self.cameras = list(cameras)
        self.joint_names = list(joint_names) if joint_names else None
        self.default_task = default_task
        self.on_saved = on_saved
        self.recorder = None
        self._lock = threading.Lock()
        self._images: dict[str, tuple[np.ndarray, float]] = {}
        self._q: np.ndarray | None = None
        self._seen: collections.deque = collections.deque(maxlen=600)  # (joint-state stamp, when it arrived)
        self._raw: np.ndarray | None = None
        self._version = -1
        self._chunk: tuple[int, float | None] | None = None  # (chunk id, latency)
        self._chunk_step = 0
        self._chunk_seen: set[int] = set()  # chunk ids that already have a frame in this episode
        self._records: dict[int, dict] = {}  # on-policy chunk records of the open episode, by chunk id
        # records that came while no episode was open: a record and the episode events travel on different
        # topics from different nodes, so a chunk's record may come before its episode's start (or after its
        # save); kept a while and claimed by chunk id when an episode whose frames executed it is saved
        self._stray: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self.max_stray = 32  # records (real cameras: ~1.8 MB each)
        self.record_grace_s = 1.0  # a saved episode waits this long for the records of its executed chunks
        self.records_outside = 0  # records that came while no episode was open (most are claimed later)
        self.records_seen = 0  # 0: the policy publishes none (return_tokens off): a save waits for none
        self._running = False
        self._open = False
        self._end_reason: str | None = None
        self.frames = 0
        self.skipped_episodes = 0
        self.saved: list[dict] = []
        self.finished = 0  # save requests completed (saved or failed)
        self._creating: threading.Thread | None = None
        self._gate = threading.Lock()  # orders the backlog replay before newer messages
        self._backlog: collections.deque = collections.deque()  # events and frames while the dataset opens
        self.max_backlog = 3000  # frames (about 100 s at 30 Hz, small images in sim; bounded memory)
        self.backlog_dropped = 0
        self._rec_open = False  # the Recorder has an open episode
        self._create_error: BaseException | None = None
        self.ready = threading.Event()  # the Recorder exists (set once; creation starts with the first full set of streams)

    # --- streams ----------------------------------------------------------------------------------
    def on_image(self, camera: str, image: np.ndarray, stamp: float) -> None:
        if camera in self.cameras:
            with self._lock:
                self._images[camera] = (image, stamp)
            self._maybe_prepare()

    def on_joint_state(self, names: list[str], q: np.ndarray, stamp: float | None = None, now: float | None = None) -> None:
        with self._lock:
            if stamp is not None and now is not None:
                self._seen.append((stamp, now))
            if self.joint_names is None:
                self.joint_names = list(names)
            if list(names) != self.joint_names:
                missing = [n for n in self.joint_names if n not in names]
                if missing:
                    raise ValueError(f"a joint state without {missing} (it has {list(names)}); the recording's joints "
                                     f"are {self.joint_names}: another arm on this ROS domain, or set robot_description")
                idx = [list(names).index(n) for n in self.joint_names]
                q = np.asarray(q)[idx]
            self._q = np.asarray(q, dtype=np.float32)
        self._maybe_prepare()

    def _maybe_prepare(self) -> None:
        """Open the dataset in the background once every stream has been seen (opening takes seconds:
        lerobot's import), so the first episode does not wait for it."""
        with self._lock:
            if self._creating is not None or self._q is None or any(c not in self._images for c in self.cameras):
                return
            schema = Schema({c: self._images[c][0].shape[:2] for c in self.cameras}, list(self.joint_names),
                            list(self.joint_names))
            self._creating = threading.Thread(target=self._create, args=(schema,), daemon=True, name="recorder-open")
        self._creating.start()

    def _create(self, schema: Schema) -> None:
        rec = None
        try:
            rec = self.make_recorder(schema)
        except BaseException as e:  # noqa: BLE001 - reported now and at every start
            self._create_error = e
            log.error("recorder: cannot open the dataset: %s", e)
        with self._gate:
            self.recorder = rec
        # replay what arrived while opening, in order, before anything newer: newer messages keep joining
        # the backlog until it is empty, so the replay never blocks the subscriptions, and it waits for the
        # writer instead of dropping (these frames are in memory already)
        while True:
            with self._gate:
                if not self._backlog:
                    self.ready.set()
                    return
                kind, item, extra = self._backlog.popleft()
            if kind == "event":
                self._apply_event(item, extra)
            else:
                self._submit(item, wait_s=30.0)

    def on_policy_action(self, raw: np.ndarray) -> None:
        with self._lock:
            self._raw = np.asarray(raw, dtype=np.float32)

    def on_chunk(self, chunk_id: int, version: int, obs_stamp: float, now: float) -> None:
        """A chunk computed from the observation stamped ``obs_stamp`` arrived at ``now``. Its latency is
        measured on this node's clock: arrival of the chunk - arrival of that observation's joint state
        (so it holds with sim stamps too); None when that observation was not seen."""
        with self._lock:
            arrived = next((t for s, t in reversed(self._seen) if abs(s - obs_stamp) < 1e-6), None)
            latency = (now - arrived) if arrived is not None else None
            self._chunk = (int(chunk_id), latency)
            self._chunk_step = 0
            self._version = int(version)

    def on_record(self, chunk: dict) -> None:
        """An on-policy chunk record (checked by the caller, :func:`records.decode_chunk`). Kept with the
        open episode whether it comes before or after the commands that execute the chunk."""
        with self._lock:
            self.records_seen += 1
            if not self._open:
                self.records_outside += 1
                self._stray[int(chunk["chunk_id"])] = chunk
                while len(self._stray) > self.max_stray:
                    self._stray.popitem(last=False)
                return
            self._records[int(chunk["chunk_id"])] = chunk

    def _claim_records(self, got: dict[int, dict], executed: set[int]):
        """The records of a saved episode, for the recorder's writer thread to call once the episode's frames
        are written: those that came while it was open, and, by chunk id, those of chunks it executed that
        came outside it (before its start, or up to ``record_grace_s`` after its save)."""

        def claim() -> list[dict]:
            deadline = time.monotonic() + self.record_grace_s
            while True:
                with self._lock:
                    for cid in [c for c in executed if c not in got and c in self._stray]:
                        got[cid] = self._stray.pop(cid)
                    done = executed <= set(got) or not self.records_seen
                if done or time.monotonic() >= deadline:
                    return list(got.values())
                time.sleep(0.02)

        return claim

    def on_command(self, q_target: np.ndarray, stamp: float, source: str, now: float,
                   chunk: tuple[int, int] | None = None) -> bool:
        """One control step. Returns True when it became a frame (or waits in the backlog).

        ``chunk`` = (chunk id, index of the action in it), as the policy node tags its commands; without
        it, steps are counted from the chunk's arrival (a producer that does not tag its commands).
        """
        if source not in COMMAND_SOURCES_RECORDED:
            return False
        with self._lock:
            if not (self._running and self._open):
                return False
            if self._q is None or any(c not in self._images for c in self.cameras):
                return False
            images = {c: self._images[c][0] for c in self.cameras}
            kw: dict = dict(stamp=stamp, action_stamp=now)
            if source == "teleop":
                kw["control"] = CONTROL_TELEOP
            else:
                kw["control"] = CONTROL_POLICY
                kw["policy_version"] = self._version
                if self._raw is not None and source == "policy":
                    kw["action_policy"] = self._raw
                if source == "policy" and chunk is not None:
                    cid, step = int(chunk[0]), int(chunk[1])
                    kw["chunk_id"], kw["chunk_step"] = cid, step
                    if cid not in self._chunk_seen:  # first frame of this chunk: its latency
                        self._chunk_seen.add(cid)
                        if self._chunk is not None and self._chunk[0] == cid:
                            kw["latency"] = self._chunk[1]
                elif self._chunk is not None and source == "policy":
                    cid, latency = self._chunk
                    kw["chunk_id"], kw["chunk_step"] = cid, self._chunk_step
                    self._chunk_seen.add(cid)
                    if self._chunk_step == 0:
                        kw["latency"] = latency
                    self._chunk_step += 1
            frame = (images, self._q, np.asarray(q_target, np.float32), kw)
        if not self.ready.is_set():
            with self._gate:
                if not self.ready.is_set():
                    if len(self._backlog) >= self.max_backlog:
                        self.backlog_dropped += 1
                        return False
                    self._backlog.append(("frame", frame, None))
                    return True
        return self._submit(frame)

    def _submit(self, frame, wait_s: float | None = None) -> bool:
        if self.recorder is None or not self._rec_open:
            return False
        images, q, target, kw = frame
        try:
            ok = self.recorder.add_frame(images, q, target, wait_s=wait_s, **kw)
        except (ValueError, RuntimeError) as e:
            log.error("recorder: frame rejected: %s", e)
            return False
        self.frames += int(ok)
        return ok

    # --- episode events ---------------------------------------------------------------------------
    def on_event(self, ev: dict) -> None:
        """Episode events. The gating (which commands become frames) changes at once; what the
        Recorder does (start/save/discard) waits in the backlog while the dataset is opening."""
        kind = ev.get("type")
        if kind not in ("start", "end", "save", "discard"):
            return
        with self._lock:
            if kind == "start":
                if self._creating is None:
                    self.skipped_episodes += 1
                    self._running = self._open = False
                    log.error("recorder: episode %s started before every camera (%s) and joint_states were seen; "
                              "not recorded", ev.get("episode"), ", ".join(self.cameras))
                    return
                self._running = self._open = True
                self._end_reason = None
                self._chunk, self._records = None, {}
                self._chunk_seen = set()
            elif kind == "end":
                self._running = False
                self._end_reason = ev.get("reason")
            else:
                if not self._open:
                    return
                self._running = self._open = False
                if kind == "save":
                    ev = {**ev, "records": self._claim_records(self._records, set(self._chunk_seen))}
                self._records = {}
            end_reason = self._end_reason
        if not self.ready.is_set():
            with self._gate:
                if not self.ready.is_set():
                    self._backlog.append(("event", ev, end_reason))
                    return
        self._apply_event(ev, end_reason)

    def _apply_event(self, ev: dict, end_reason: str | None) -> None:
        kind = ev["type"]
        rec = self.recorder
        if rec is None:
            if kind == "start":
                self.skipped_episodes += 1
                log.error("recorder: episode %s not recorded: the dataset could not be opened (%s)",
                          ev.get("episode"), self._create_error)
            return
        if kind == "start":
            if self._rec_open:  # a start without save/discard: the old one is lost, say so
                log.warning("recorder: episode started while the previous one was open; discarding it")
                rec.discard_episode(wait=False)
            task = ev.get("instruction") or ev.get("task") or self.default_task or "task"
            meta = {k: ev[k] for k in ("episode", "mode", "task") if k in ev}
            rec.start_episode(task, start_condition=ev.get("start_condition"), meta=meta)
            self._rec_open = True
        elif kind in ("save", "discard") and self._rec_open:
            self._rec_open = False
            if kind == "save" and rec.stats.episode_frames > 0:
                fut = rec.save_episode(ev.get("label", Label.UNLABELLED), timeout_reached=end_reason == "timeout",
                                       meta={"label_source": ev.get("label_source"), "end_reason": end_reason,
                                             # how sure the label is, and each voter's P(success) (label_source votes)
                                             **{k: ev[k] for k in ("label_confidence", "votes") if ev.get(k) not in (None, {})}},
                                       records=ev.get("records"), wait=False)
                fut.add_done_callback(self._saved)
            else:
                if kind == "save":
                    log.warning("recorder: episode %s had no frame; nothing saved", ev.get("episode"))
                rec.discard_episode(wait=False)

    def _saved(self, fut) -> None:
        try:
            r = fut.result()
        except Exception as e:  # noqa: BLE001
            log.error("recorder: saving failed: %s", e)
            info = {"type": "save_failed", "error": str(e)}
            self.finished += 1
        else:
            info = {"type": "saved", "episode_index": r.episode_index, "label": r.label, "length": r.length,
                    "dropped_frames": r.dropped_frames, "seconds_to_durable": self.recorder.stats.last_durable_s,
                    "wall_time": time.time()}
            self.saved.append(info)
            self.finished += 1
        if self.on_saved is not None:
            self.on_saved(info)

    def close(self) -> None:
        if self._creating is not None:
            self._creating.join()
        if self.recorder is not None:
            self.recorder.close()
