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

Why this strict: SCRL (arXiv 2603.19880, test-time RL with majority-vote pseudo-labels) shows that
votes amplify their own errors when the consensus is weak, and keeps only strict-consensus labels.
A wrong label the learner trusts pushes the policy toward the mistake, and the next votes are made
on its episodes; a question to the person costs seconds, a wrong label costs an update. HIL-SERL's classifier threshold is 0.85; the default here is 0.9
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
from vla_robot.detector.features import resize_frame

__all__ = ["VoteConfig", "Verdict", "vote", "DetectorPanel", "EpisodeFrames", "EpisodeVoter", "VOTES", "HUMAN", "TWIN"]

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
            try:
                from vla_robot.detector import SuccessDetector
            except ImportError as e:  # e.g. no onnxruntime on this machine: no detector can vote
                self.errors = {p: f"detector file {p} could not be loaded: the success detector cannot run here "
                                  f"({type(e).__name__}: {e})" for p in self.paths}
                return
            load = SuccessDetector.load
        for path in self.paths:
            try:
                self.detectors[path] = load(path)
            except Exception as e:  # noqa: BLE001 - any failure to load is a voter that cannot vote
                self.errors[path] = f"detector file {path} could not be loaded ({type(e).__name__}: {e})"

    @property
    def cameras(self) -> list[str]:
        """The cameras the loaded detectors read (their ``spec.cameras``), in first-seen order."""
        out: list[str] = []
        for det in self.detectors.values():
            out += [c for c in getattr(getattr(det, "spec", det), "cameras", ()) if c not in out]
        return out

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The input size every loaded detector reads (their ``spec.image_size``), or None when they differ."""
        sizes = {tuple(det.spec.image_size) for det in self.detectors.values() if hasattr(det, "spec")}
        return sizes.pop() if len(sizes) == 1 and len(self.detectors) and all(
            hasattr(d, "spec") for d in self.detectors.values()) else None

    @property
    def state_names(self) -> list[str] | None:
        """The joint order the detectors were trained on (their ``spec.state_names``), None when unknown."""
        for det in self.detectors.values():
            names = getattr(getattr(det, "spec", None), "state_names", ())
            if names:
                return list(names)
        return None

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
    """The frames of the running episode the detectors read, in bounded memory.

    A frame is taken at each image of the first camera, with the newest image of every other camera
    and the newest joint state. Images are resized to ``image_size`` (the detectors' own input size,
    INTER_AREA as the detector resizes, so nothing changes for it) when given: a 30-s episode at 30 Hz
    of two cameras at 64x64 is 22 MB, kept whole. Past ``max_bytes`` every second frame is dropped and
    from then on only every ``stride``-th frame is kept, so the frames stay evenly spread over the
    whole episode, as the detector's fractions of the episode expect (its "2 frames before the last"
    then means 2 strides).
    """

    cameras: Sequence[str]
    image_size: tuple[int, int] | None = None  # (height, width); None: as the camera sends them
    max_bytes: int = 256 << 20
    _kept: list = field(default_factory=list)
    _latest: dict = field(default_factory=dict)
    _state: np.ndarray | None = None
    _seen: int = 0
    _bytes: int = 0
    stride: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)  # images and states come on several threads

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("EpisodeFrames needs at least one camera (the detectors' cameras)")
        self.cameras = list(self.cameras)

    def reset(self) -> None:
        with self._lock:
            self._kept, self._latest, self._state = [], {}, None
            self._seen, self._bytes, self.stride = 0, 0, 1

    def add_state(self, q) -> None:
        with self._lock:
            self._state = np.asarray(q, dtype=np.float32)

    def add_image(self, camera: str, image: np.ndarray) -> None:
        if camera not in self.cameras:
            return
        if self.image_size is not None:
            image = resize_frame(image, self.image_size)
        with self._lock:
            self._latest[camera] = image
            if camera != self.cameras[0] or self._state is None or len(self._latest) < len(self.cameras):
                return  # a frame needs every camera and a joint state
            self._seen += 1
            if (self._seen - 1) % self.stride:
                return
            frame = {c: self._latest[c] for c in self.cameras}
            self._kept.append((frame, self._state))
            self._bytes += sum(im.nbytes for im in frame.values()) + self._state.nbytes
            if self._bytes > self.max_bytes and len(self._kept) > 2:
                self._kept, self.stride = self._kept[::2], self.stride * 2
                self._bytes //= 2

    def __len__(self) -> int:
        return len(self._kept)

    def snapshot(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(frames {camera: (T, H, W, 3) uint8}, states (T, D)) in time order; ValueError when empty."""
        with self._lock:
            kept = list(self._kept)
        if not kept:
            raise ValueError("no frame of this episode was seen (no image of every camera with a joint state)")
        frames = {c: np.stack([f[c] for f, _ in kept]) for c in self.cameras}
        return frames, np.stack([s for _, s in kept])


# ---- the episode manager's voter --------------------------------------------------------------
class EpisodeVoter:
    """``voter(episode, twin_success) -> Verdict`` for :class:`vla_robot.nodes.episodes.EpisodeManager`:
    the detector files of ``detectors`` read :attr:`frames` (which the episode manager node fills from
    the camera topics and joint states while an episode runs), and the twin's success check votes too
    when ``vote_twin``. ``config``: anything with ``detectors``, ``vote_threshold``, ``vote_quorum`` and
    ``vote_twin`` (the node's EpisodeManagerNodeConfig). ``errors`` of the panel are the detector files
    that did not load: every verdict then asks a person, and the node logs them at start."""

    def __init__(self, config, panel: DetectorPanel | None = None, max_bytes: int = 256 << 20):
        self.rule = VoteConfig(config.vote_threshold, config.vote_quorum)
        self.rule.validate()
        self.twin = bool(config.vote_twin)
        self.panel = panel if panel is not None else DetectorPanel(config.detectors)
        # with no detector loaded there is nothing to read; one camera keeps the buffer well-formed
        self.frames = EpisodeFrames(self.panel.cameras or ["front"], self.panel.image_size, max_bytes)

    @property
    def errors(self) -> dict[str, str]:
        return self.panel.errors

    def __call__(self, episode: int, twin_success: bool) -> Verdict:
        probs: dict[str, float] = {}
        errors = dict(self.panel.errors)
        if self.panel.detectors:
            try:
                frames, states = self.frames.snapshot()
            except ValueError as e:
                errors.update({p: f"episode {episode}: {e}" for p in self.panel.detectors})
            else:
                probs, errors = self.panel.probabilities(frames, states)
        if self.twin:
            probs[TWIN] = 1.0 if twin_success else 0.0
        return vote(probs, self.rule, errors)
