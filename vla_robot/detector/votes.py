"""Votes: an episode is labelled without a person only when its voters agree with a margin.

The voters are the learned success detectors (several, from different seeds or cameras:
:mod:`vla_robot.detector`), and the twin's success check when the twin mirrors the arm (a vote of
1.0 or 0.0, one voter among the others: the twin is not the real scene). Each gives P(success).
The person is the last voter: asked only when the others do not agree, and their answer decides
alone (label source ``human``).

The rule (:func:`vote`), with ``threshold`` t and ``quorum`` q from config:

* every voter leans the same way (all P > 0.5, or all P < 0.5): one that leans the other way, or
  sits at 0.5, is a disagreement, and a person is asked;
* at least q of them are sure: P >= t for success, P <= 1 - t for failure. Fewer sure voters is a
  weak consensus, and a person is asked;
* a voter that could not vote (its detector file is missing or corrupt, its prediction failed)
  sends the episode to a person too: the quorum was chosen for the voters configured, and a broken
  one must be seen and fixed, not voted around.

Why this strict: SCRL (reference on test-time RL) shows that majority votes amplify their own
errors when the consensus is weak: a wrong label the learner trusts pushes the policy toward
the mistake, and the next votes are made on its episodes. A question to the person costs seconds;
a wrong label costs an update. HIL-SERL's classifier threshold is 0.85; the default here is 0.9
with a quorum of 2, and ``benchmarks/votes.py`` measures what share that labels alone, and how
accurately, on twin episodes with ground truth.

Every label records its source and confidence: a :class:`Verdict` carries the label (or None:
ask a person), ``source`` (``votes``), ``confidence`` (the mean P of the label over the voters)
and ``votes`` (each voter's P(success)); :meth:`Verdict.record` is what goes into the episode's
``save`` event and from there into the dataset's journal.

Plain Python (numpy for the frame buffer); the detectors themselves are loaded lazily by
:class:`DetectorPanel`, so the episode manager imports this module without torch or onnxruntime.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_robot.data.schema import Label

__all__ = ["VoteConfig", "Verdict", "vote", "DetectorPanel", "EpisodeFrames", "VOTES", "HUMAN", "TWIN"]

#: label sources: the votes agreed; a person labelled; the twin's success check
VOTES, HUMAN, TWIN = "votes", "human", "twin"


@dataclass(frozen=True)
class VoteConfig:
    """``threshold``: how sure a voter must be to count toward the quorum (P >= threshold for
    success, P <= 1 - threshold for failure); ``quorum``: how many sure voters it takes, with every
    voter leaning the same way."""

    threshold: float = 0.9
    quorum: int = 2

    def validate(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.5 < self.threshold <= 1.0):
            raise ValueError(f"vote threshold must be in (0.5, 1] (a voter is sure at P >= threshold or "
                             f"P <= 1 - threshold), got {self.threshold!r}")
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or self.quorum < 1:
            raise ValueError(f"vote quorum must be an integer >= 1 (sure voters that must agree), got {self.quorum!r}")


@dataclass(frozen=True)
class Verdict:
    """What the votes say about one episode: a label, or None (ask a person) with the reason."""

    label: Label | None
    confidence: float | None  # mean P(label) over the voters; for a question: of the side they lean to
    votes: dict[str, float]  # voter -> P(success); a voter that could not vote is absent (see reason)
    reason: str
    source: str = VOTES

    @property
    def asks_person(self) -> bool:
        return self.label is None

    def record(self) -> dict:
        """What a saved episode carries of the vote: its ``label_confidence`` and the ``votes``."""
        conf = None if self.confidence is None else round(float(self.confidence), 4)
        return {"label_confidence": conf, "votes": {k: round(float(v), 4) for k, v in self.votes.items()}}


def vote(probabilities: Mapping[str, float], config: VoteConfig,
         errors: Mapping[str, str] | None = None) -> Verdict:
    """The verdict of voters giving P(success) (``probabilities``); ``errors``: voters that could not
    vote, with why. A voter whose P is not a number in [0, 1] could not vote either."""
    errors = dict(errors or {})
    votes: dict[str, float] = {}
    for name, p in probabilities.items():
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= float(p) <= 1.0:
            errors[name] = f"P(success) must be a number in [0, 1], got {p!r}"
        else:
            votes[name] = float(p)
    if not votes and not errors:
        return _ask(votes, None, "no voter is configured")
    lean = Label.SUCCESS if sum(p > 0.5 for p in votes.values()) * 2 >= len(votes) else Label.FAILURE
    conf = _confidence(votes, lean)
    if errors:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        return _ask(votes, conf, f"{len(errors)} voter(s) could not vote ({why})")
    against = [k for k, p in votes.items() if (p <= 0.5 if lean is Label.SUCCESS else p >= 0.5)]
    if against:
        return _ask(votes, conf, f"voters disagree: {_fmt(votes)}")
    sure = [k for k, p in votes.items() if (p >= config.threshold if lean is Label.SUCCESS
                                            else p <= 1.0 - config.threshold)]
    if len(sure) < config.quorum:
        return _ask(votes, conf, f"weak consensus: {len(sure)} of {len(votes)} voter(s) sure of {lean} at "
                                 f"threshold {config.threshold:g}, quorum {config.quorum} ({_fmt(votes)})")
    return Verdict(lean, conf, votes, f"{len(sure)} of {len(votes)} voters sure of {lean} ({_fmt(votes)})")


def _ask(votes: dict[str, float], confidence: float | None, reason: str) -> Verdict:
    return Verdict(None, confidence, votes, reason, source="")


def _confidence(votes: dict[str, float], label: Label) -> float | None:
    if not votes:
        return None
    return sum(p if label is Label.SUCCESS else 1.0 - p for p in votes.values()) / len(votes)


def _fmt(votes: Mapping[str, float]) -> str:
    return ", ".join(f"{Path(k).name if '/' in k else k} {p:.2f}" for k, p in votes.items())


# ---- the detectors as voters ------------------------------------------------------------------
class DetectorPanel:
    """The configured detector files, each loaded once, as voters named by their path.

    A file that is missing or does not load is not an exception here: it is kept in
    :attr:`errors` (the message says which file and why), and every verdict then asks a person
    (:func:`vote`), so episodes wait for a label instead of being lost or labelled by fewer voters
    than configured. ``load`` defaults to :meth:`vla_robot.detector.SuccessDetector.load`.
    """

    def __init__(self, paths: Sequence[str], load: Callable[[str], object] | None = None):
        self.paths = [str(p) for p in paths]
        self.detectors: dict[str, object] = {}
        self.errors: dict[str, str] = {}
        if load is None:
            from vla_robot.detector import SuccessDetector

            load = SuccessDetector.load
        for path in self.paths:
            try:
                self.detectors[path] = load(path)
            except Exception as e:  # noqa: BLE001 - any failure to load is a voter that cannot vote
                self.errors[path] = f"detector file {path} could not be loaded ({type(e).__name__}: {e})"

    @property
    def cameras(self) -> list[str]:
        """The cameras the loaded detectors read (their ``cameras``), in first-seen order."""
        out: list[str] = []
        for det in self.detectors.values():
            out += [c for c in getattr(det, "cameras", ()) if c not in out]
        return out

    def probabilities(self, frames: dict[str, np.ndarray], states: np.ndarray) -> tuple[dict[str, float], dict[str, str]]:
        """Each loaded detector's P(success) for one episode, and the errors (load or prediction) by voter."""
        probs, errors = {}, dict(self.errors)
        for path, det in self.detectors.items():
            try:
                p = float(det.predict_episode(frames, states))
            except Exception as e:  # noqa: BLE001 - a failed prediction is a voter that cannot vote
                errors[path] = f"detector {path} failed on this episode ({type(e).__name__}: {e})"
                continue
            if math.isfinite(p):
                probs[path] = p
            else:
                errors[path] = f"detector {path} gave P(success) = {p}"
        return probs, errors


# ---- the episode's frames, for the detectors --------------------------------------------------
@dataclass
class EpisodeFrames:
    """The frames of the running episode a detector reads, in bounded memory.

    A frame is taken at each image of the first camera, with the newest image of every other camera
    and the newest joint state. The last ``tail`` frames are kept as they came (the detector reads
    the end of the episode most); the earlier ones are thinned by halving whenever more than
    ``max_frames`` are held, so they stay spread evenly over the whole episode however long it ran
    (30 s at 30 Hz of two 480x640 cameras would be 3 GB; 64 frames are 120 MB). ``stride`` is how
    many camera images one kept early frame stands for.
    """

    cameras: Sequence[str]
    max_frames: int = 64
    tail: int = 16
    _early: list = field(default_factory=list)
    _recent: list = field(default_factory=list)
    _latest: dict = field(default_factory=dict)
    _state: np.ndarray | None = None
    _seen: int = 0
    stride: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)  # images and states come on several threads

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("EpisodeFrames needs at least one camera (the detectors' cameras)")
        if not 1 <= self.tail < self.max_frames:
            raise ValueError(f"need 1 <= tail < max_frames, got tail={self.tail}, max_frames={self.max_frames}")

    def reset(self) -> None:
        with self._lock:
            self._early, self._recent, self._latest = [], [], {}
            self._state, self._seen, self.stride = None, 0, 1

    def add_state(self, q) -> None:
        with self._lock:
            self._state = np.asarray(q, dtype=np.float32)

    def add_image(self, camera: str, image: np.ndarray) -> None:
        if camera in self.cameras:
            with self._lock:
                self._add(camera, image)

    def _add(self, camera: str, image: np.ndarray) -> None:
        self._latest[camera] = image
        if camera != self.cameras[0] or self._state is None or len(self._latest) < len(self.cameras):
            return  # a frame needs every camera and a joint state
        self._recent.append(({c: self._latest[c] for c in self.cameras}, self._state))
        if len(self._recent) > self.tail:
            old = self._recent.pop(0)
            if self._seen % self.stride == 0:
                self._early.append(old)
            self._seen += 1
            if len(self._early) > self.max_frames - self.tail:
                self._early, self.stride = self._early[::2], self.stride * 2

    def __len__(self) -> int:
        return len(self._early) + len(self._recent)

    def snapshot(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(frames {camera: (T, H, W, 3) uint8}, states (T, D)) in time order; ValueError when empty."""
        with self._lock:
            kept = self._early + self._recent
        if not kept:
            raise ValueError("no frame of this episode was seen (no image of every camera with a joint state)")
        frames = {c: np.stack([f[c] for f, _ in kept]) for c in self.cameras}
        return frames, np.stack([s for _, s in kept])
