"""The episode schema: which per-frame features a recorded LeRobotDataset has, and the labels (:class:`Label`).

One source of truth for the field names; the recorder writes them, the reader, the dataset tools,
the evaluation report and the RL learner read them. numpy only.

Per frame (LeRobot adds ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``):

==========================  =======  ==========  ==============================================
key                         dtype    shape       meaning
==========================  =======  ==========  ==============================================
observation.images.<cam>    video    (H, W, 3)   camera image, RGB
observation.state           float32  (n,)        measured joint positions
action                      float32  (m,)        the command actually sent (after the safety filter)
action.policy               float32  (m,)        the raw policy action (zeros when teleop drives)
observation.stamp_ns        int64    (1,)        ROS stamp of the observation, ns (-1: unknown)
action.stamp_ns             int64    (1,)        ROS stamp of the command, ns (-1: unknown)
control                     int8     (1,)        who drove this step: 0 policy, 1 teleop
policy_version              int64    (1,)        policy weights version (-1: no policy)
action.chunk_id             int64    (1,)        id of the policy chunk this step executes (-1: none)
action.chunk_step           int64    (1,)        index of this step's action in that chunk (-1: none)
policy.latency              float32  (1,)        request->reply seconds of the chunk first used here (-1 elsewhere)
episode.label               int8     (1,)        Label.stored: 1 success, 0 failure, -1 unlabelled (as saved)
next.reward                 float32  (1,)        1.0 on the last frame of a successful episode, else 0
next.done                   bool     (1,)        True on the last frame
==========================  =======  ==========  ==============================================

``episode.label`` and ``next.reward`` keep the label the episode was saved with; a later relabel
(:mod:`vla_robot.data.relabel`) is applied by the reader's journal, which is where labels are read.

What the policy sampled for each chunk (tokens, log-probs, the observation as the server saw it) is
not a per-frame column: it is the on-policy record, one file per episode next to the dataset
(:mod:`vla_robot.data.records`); :func:`executed_mask` pairs it with these frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
ACTION_POLICY = "action.policy"
OBS_STAMP = "observation.stamp_ns"
ACTION_STAMP = "action.stamp_ns"
CONTROL = "control"
POLICY_VERSION = "policy_version"
CHUNK_ID = "action.chunk_id"
CHUNK_STEP = "action.chunk_step"
POLICY_LATENCY = "policy.latency"
OLD_TOKENS = "action.tokens"  # per-frame tokens of recorders before the on-policy record (not written)
LABEL = "episode.label"
REWARD = "next.reward"
DONE = "next.done"

CONTROL_POLICY = 0
CONTROL_TELEOP = 1

class Label(StrEnum):
    """An episode's label: the one encoding every layer uses.

    It is a ``str``: ``Label.SUCCESS == "success"``, and JSON, msgpack and ROS events carry the name.
    Three representations, and the only conversions between them:

    * the name (``"success"|"failure"|"unlabelled"``): the journal (:class:`EpisodeRecord`), episode
      events, the episode manager's :class:`~vla_robot.nodes.episodes.EpisodeResult`;
    * :attr:`stored`, 1/0/-1: the frames' ``episode.label`` column (int8), :meth:`from_stored` back;
    * :attr:`reward`, 1/0/None: the learner's :class:`~vla_robot.rl.episodes.Episode` and the GRPO
      scheduler (None: not trained on), :meth:`from_reward` back.

    :meth:`of` parses what callers hand in (a name, a Label, True/False, None).
    """

    SUCCESS = "success"
    FAILURE = "failure"
    UNLABELLED = "unlabelled"

    @classmethod
    def of(cls, label: "Label | str | bool | None") -> "Label":
        """A name, a Label, True/False (success/failure) or None (unlabelled) -> Label; else ValueError."""
        if label is None:
            return cls.UNLABELLED
        if isinstance(label, (bool, np.bool_)):
            return cls.SUCCESS if label else cls.FAILURE
        if isinstance(label, str) and label in cls._value2member_map_:
            return cls(label)
        raise ValueError(f"episode label must be one of {', '.join(cls)} (or True/False/None), got {label!r}")

    @property
    def reward(self) -> int | None:
        """1 success, 0 failure, None unlabelled: what the learner and the scheduler use."""
        return 1 if self is Label.SUCCESS else 0 if self is Label.FAILURE else None

    @classmethod
    def from_reward(cls, reward: int | bool | None) -> "Label":
        if reward is None:
            return cls.UNLABELLED
        if reward in (0, 1):
            return cls.SUCCESS if reward else cls.FAILURE
        raise ValueError(f"a learner label must be 1 (success), 0 (failure) or None (unlabelled), got {reward!r}")

    @property
    def stored(self) -> int:
        """1 success, 0 failure, -1 unlabelled: the dataset's ``episode.label`` column."""
        return -1 if self.reward is None else self.reward

    @classmethod
    def from_stored(cls, value: int) -> "Label":
        v = int(value)
        if v not in (-1, 0, 1):
            raise ValueError(f"a stored episode.label must be 1, 0 or -1, got {value!r}")
        return cls.from_reward(None if v < 0 else v)


def _vec(shape: tuple[int, ...], dtype: str, names=None) -> dict:
    return {"dtype": dtype, "shape": tuple(int(s) for s in shape), "names": names}


@dataclass(frozen=True)
class Schema:
    """The features of one dataset: cameras with their image size, state/action names."""

    cameras: dict[str, tuple[int, int]]  # name -> (height, width)
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", {str(k): (int(v[0]), int(v[1])) for k, v in dict(self.cameras).items()}
                           if all(len(v) == 2 for v in dict(self.cameras).values()) else dict(self.cameras))
        object.__setattr__(self, "state_names", tuple(str(n) for n in self.state_names))
        object.__setattr__(self, "action_names", tuple(str(n) for n in self.action_names))
        if not self.cameras:
            raise ValueError("a dataset needs at least one camera: cameras={'front': (height, width)}")
        for cam, hw in self.cameras.items():
            if not cam or "/" in cam or "." in cam:
                raise ValueError(f"camera name {cam!r} must be non-empty without '/' or '.'")
            if len(hw) != 2 or min(int(v) for v in hw) < 8:
                raise ValueError(f"camera {cam!r}: image size must be (height, width) >= 8 pixels, got {hw!r}")
        if not self.state_names:
            raise ValueError("state_names must name at least one joint")
        if not self.action_names:
            raise ValueError("action_names must name at least one action entry")

    @classmethod
    def from_features(cls, features: dict) -> "Schema":
        """Read the schema back from a dataset's ``info.json`` features."""
        missing = [k for k in (STATE, ACTION, LABEL, CONTROL) if k not in features]
        if missing:
            raise ValueError(f"not a vla_robot dataset: features {missing} are missing")
        if OLD_TOKENS in features:
            raise ValueError(f"recorded with per-frame '{OLD_TOKENS}' columns by a recorder older than the on-policy "
                             "record (rl/episode_*.msgpack); those tokens pair with the wrong observation")
        cams = {
            k[len(IMAGE_PREFIX):]: (int(v["shape"][0]), int(v["shape"][1]))
            for k, v in features.items()
            if k.startswith(IMAGE_PREFIX)
        }
        return cls(cams, tuple(features[STATE]["names"] or ()), tuple(features[ACTION]["names"] or ()))

    @property
    def image_keys(self) -> list[str]:
        return [IMAGE_PREFIX + c for c in self.cameras]

    def features(self) -> dict[str, dict]:
        f: dict[str, dict] = {}
        for cam, (h, w) in self.cameras.items():
            f[IMAGE_PREFIX + cam] = {"dtype": "video", "shape": (int(h), int(w), 3), "names": ["height", "width", "channels"]}
        n, m = len(self.state_names), len(self.action_names)
        f[STATE] = _vec((n,), "float32", list(self.state_names))
        f[ACTION] = _vec((m,), "float32", list(self.action_names))
        f[ACTION_POLICY] = _vec((m,), "float32", list(self.action_names))
        f[OBS_STAMP] = _vec((1,), "int64")  # int64 ns: stock LeRobot reads float64 back as float32
        f[ACTION_STAMP] = _vec((1,), "int64")
        f[CONTROL] = _vec((1,), "int8")
        f[POLICY_VERSION] = _vec((1,), "int64")
        f[CHUNK_ID] = _vec((1,), "int64")
        f[CHUNK_STEP] = _vec((1,), "int64")
        f[POLICY_LATENCY] = _vec((1,), "float32")
        f[LABEL] = _vec((1,), "int8")
        f[REWARD] = _vec((1,), "float32")
        f[DONE] = _vec((1,), "bool")
        return f

    def make_frame(
        self,
        images: dict[str, np.ndarray],
        state,
        action,
        *,
        action_policy=None,
        stamp: float | None = None,
        action_stamp: float | None = None,
        control: int = CONTROL_POLICY,
        policy_version: int = -1,
        chunk_id: int = -1,
        chunk_step: int = -1,
        latency: float | None = None,
    ) -> dict[str, Any]:
        """Check one step's data against the schema and turn it into a LeRobot frame (no task yet).

        Raises ValueError naming the field, what it got and what was expected. Images are copied, so
        the caller may reuse its buffers.
        """
        if not isinstance(images, dict):
            raise ValueError(f"images must be a dict camera -> uint8 HxWx3 array, got {type(images).__name__}")
        if set(images) != set(self.cameras):
            raise ValueError(f"images must have exactly the cameras {sorted(self.cameras)}, got {sorted(images)}")
        frame: dict[str, Any] = {}
        for cam, (h, w) in self.cameras.items():
            img = images[cam]
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != (h, w, 3):
                got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(f"image '{cam}' must be uint8 of shape {(h, w, 3)} (RGB), got {got}")
            frame[IMAGE_PREFIX + cam] = np.array(img, copy=True)
        frame[STATE] = _float_vector(state, len(self.state_names), "state")
        frame[ACTION] = _float_vector(action, len(self.action_names), "action")
        frame[ACTION_POLICY] = (
            np.zeros(len(self.action_names), np.float32)
            if action_policy is None
            else _float_vector(action_policy, len(self.action_names), "action_policy")
        )
        if control not in (CONTROL_POLICY, CONTROL_TELEOP):
            raise ValueError(f"control must be 0 (policy) or 1 (teleop), got {control!r}")
        frame[OBS_STAMP] = np.array([stamp_ns(stamp, "stamp")], np.int64)
        frame[ACTION_STAMP] = np.array([stamp_ns(action_stamp, "action_stamp")], np.int64)
        frame[CONTROL] = np.array([control], np.int8)
        frame[POLICY_VERSION] = np.array([int(policy_version)], np.int64)
        frame[CHUNK_ID] = np.array([int(chunk_id)], np.int64)
        frame[CHUNK_STEP] = np.array([int(chunk_step)], np.int64)
        frame[POLICY_LATENCY] = np.array([-1.0 if latency is None else float(latency)], np.float32)
        frame[LABEL] = np.array([-1], np.int8)
        frame[REWARD] = np.zeros(1, np.float32)
        frame[DONE] = np.zeros(1, bool)
        return frame


def stamp_ns(seconds: float | None, what: str = "stamp") -> int:
    """ROS stamp in float seconds -> int64 nanoseconds (-1 for None)."""
    if seconds is None:
        return -1
    s = float(seconds)
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"{what} must be a finite time in seconds >= 0, got {seconds!r}")
    return int(round(s * 1e9))


def stamps_s(ns: np.ndarray) -> np.ndarray:
    """int64 ns stamps -> float64 seconds, NaN where unknown (-1)."""
    ns = np.asarray(ns).reshape(-1)
    return np.where(ns >= 0, ns / 1e9, np.nan)


def _float_vector(x, n: int, what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a vector of {n} numbers, got {x!r}") from e
    if a.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be finite, got {a}")
    return a


def executed_mask(chunk_id, chunk_step, control, chunk_ids, chunk_size: int, action_dim: int) -> np.ndarray:
    """Which tokens of each chunk in ``chunk_ids`` the arm executed under policy control.

    From the frames (``chunk_id``, ``chunk_step``, ``control``, one entry per frame): action ``k`` of
    chunk ``c`` (tokens ``k*action_dim .. (k+1)*action_dim``) counts as executed when some frame has
    chunk id ``c``, chunk step ``k`` and control 0 (policy). A teleop takeover, a hold or an early end
    leaves the rest out; a chunk no frame executed gets an all-False row.
    Returns bool [len(chunk_ids), chunk_size * action_dim].
    """
    chunk_id = np.asarray(chunk_id).reshape(-1)
    chunk_step = np.asarray(chunk_step).reshape(-1)
    control = np.asarray(control).reshape(-1)
    if not (len(chunk_id) == len(chunk_step) == len(control)):
        raise ValueError(f"chunk_id, chunk_step and control need one entry per frame, got "
                         f"{len(chunk_id)}, {len(chunk_step)}, {len(control)}")
    if chunk_size <= 0 or action_dim <= 0:
        raise ValueError(f"chunk_size and action_dim must be > 0, got {chunk_size}, {action_dim}")
    done = (control == CONTROL_POLICY) & (chunk_id >= 0) & (chunk_step >= 0) & (chunk_step < chunk_size)
    executed: dict[int, set[int]] = {}
    for cid, k in zip(chunk_id[done], chunk_step[done]):
        executed.setdefault(int(cid), set()).add(int(k))
    out = np.zeros((len(chunk_ids), chunk_size, action_dim), bool)
    for row, cid in enumerate(chunk_ids):
        for k in executed.get(int(cid), ()):
            out[row, k] = True
    return out.reshape(len(chunk_ids), chunk_size * action_dim)


def count_interventions(control: np.ndarray) -> tuple[int, int]:
    """(number of teleop takeovers during the episode, frames under teleop). A takeover is a 0->1 switch."""
    c = np.asarray(control).reshape(-1).astype(int)
    if len(c) == 0:
        return 0, 0
    starts = int(np.sum((c[1:] == CONTROL_TELEOP) & (c[:-1] == CONTROL_POLICY)))
    return starts, int(np.sum(c == CONTROL_TELEOP))


@dataclass
class EpisodeRecord:
    """One saved episode, as listed in the dataset's episode journal (``meta/vla_episodes.jsonl``).

    The data layer's episode: the recorder writes it, everything that reads a dataset gets it. Built
    in one place, ``Recorder._save`` (data/recorder.py), from the recorded frames and the episode
    manager's ``save`` event (:meth:`vla_robot.nodes.episodes.EpisodeResult.save_event`). Read back it
    is the ``record`` of a :class:`vla_robot.data.reader.Episode`, which
    :func:`vla_robot.rl.dataset.to_learner_episode` turns into the learner's episode.
    """

    episode_index: int
    task: str
    label: Label  # a name on disk; any accepted by Label.of on the way in
    length: int
    start_condition: str | None = None  # str() of the start id (the twin's: int(record.start_condition))
    policy_versions: list[int] = field(default_factory=list)  # distinct versions that acted
    dropped_frames: int = 0
    interventions: int = 0
    intervention_frames: int = 0
    duration_s: float = 0.0  # last - first observation stamp
    timeout: bool = False
    latency_s: list[float] = field(default_factory=list)  # request->reply of each policy chunk
    recorded_at: float = 0.0  # wall-clock time.time() when it became durable
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.label = Label.of(self.label)

    def to_json(self) -> dict:
        return {**self.__dict__, "label": str(self.label)}

    @classmethod
    def from_json(cls, d: dict) -> "EpisodeRecord":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
