"""What the success detector looks at: a few frames of one episode, from every camera, and the joint state.

:class:`FeatureSpec` says which frames: the last ones (``from_end``, counted back from the last frame)
and a few earlier ones at fixed fractions of the episode (``fractions``), so the detector sees
progress (where the arm came from), not only where it ended. Every camera's frames are resized to
``image_size`` (INTER_AREA), kept uint8; the state rows at the same frames are float32.

One detector input, for one episode (numpy only, no torch; the robot-side runtime uses it too)::

    {"images": uint8 [cameras, K, H, W, 3], "state": float32 [K, D]}

and a batch stacks them on a new first axis (:func:`stack`): ``images`` [N, cameras, K, H, W, 3],
``state`` [N, K, D]. That is exactly what the ONNX graph takes (input names :data:`INPUTS`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["FeatureSpec", "INPUTS", "frame_indices", "features_from_arrays", "episode_features", "stack"]

INPUTS = ("images", "state")  # the ONNX graph's input names, in order; its output is "p_success" [N]


@dataclass(frozen=True)
class FeatureSpec:
    """Which frames and cameras a detector reads, at which image size, and the state's width."""

    cameras: tuple[str, ...]
    state_dim: int
    image_size: tuple[int, int] = (64, 64)  # (height, width)
    from_end: tuple[int, ...] = (0, 2)  # the last frame, and the one 2 before it
    fractions: tuple[float, ...] = (0.25, 0.5)  # earlier frames, as fractions of the episode's length
    state_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(str(c) for c in self.cameras))
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        object.__setattr__(self, "from_end", tuple(int(k) for k in self.from_end))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "state_names", tuple(str(n) for n in self.state_names))
        if not self.cameras:
            raise ValueError("a detector needs at least one camera")
        if int(self.state_dim) < 1:
            raise ValueError(f"state_dim must be >= 1, got {self.state_dim}")
        if min(self.image_size) < 16:
            raise ValueError(f"image_size must be (height, width) >= 16 pixels, got {self.image_size}")
        if not self.from_end or min(self.from_end) < 0:
            raise ValueError(f"from_end must list frames counted back from the last (>= 0), got {self.from_end}")
        if any(not 0.0 <= f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be in 0..1 (of the episode's length), got {self.fractions}")

    @property
    def frames(self) -> int:
        """K: frames per camera in one input."""
        return len(self.fractions) + len(self.from_end)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def frame_indices(length: int, spec: FeatureSpec) -> np.ndarray:
    """The K frame indices of an episode of ``length`` frames, in time order (repeats in a short episode)."""
    if length < 1:
        raise ValueError(f"an episode needs at least one frame, got length {length}")
    early = [int(round(f * (length - 1))) for f in spec.fractions]
    late = [length - 1 - k for k in sorted(spec.from_end, reverse=True)]
    return np.clip(np.array(early + late, dtype=int), 0, length - 1)


def resize_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One frame at the detector's input size, as training saw it (the node's frame buffer uses it too)."""
    if image.shape[:2] == tuple(size):
        return image
    import cv2

    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if images.shape[1:3] == tuple(size):
        return np.ascontiguousarray(images)
    return np.stack([resize_frame(im, size) for im in images])


def features_from_arrays(frames: dict[str, np.ndarray], states: np.ndarray, spec: FeatureSpec,
                         picked: bool = False) -> dict[str, np.ndarray]:
    """One detector input from an episode's arrays: ``frames[cam]`` uint8 [T, H, W, 3] in time order
    and ``states`` [T, D]. With ``picked`` the arrays already hold only the K chosen frames.
    Raises ValueError naming what is wrong (a missing camera, a wrong shape or dtype)."""
    states = np.asarray(states)
    if states.ndim != 2 or states.shape[1] != spec.state_dim:
        raise ValueError(f"states must be [T, {spec.state_dim}] (one joint-state row per frame), got {states.shape}")
    missing = [c for c in spec.cameras if c not in frames]
    if missing:
        raise ValueError(f"frames lack camera(s) {missing}; the detector reads {list(spec.cameras)}, "
                         f"got {sorted(frames)}")
    n = len(states)
    idx = np.arange(n) if picked else frame_indices(n, spec)
    if picked and n != spec.frames:
        raise ValueError(f"picked frames must be the K={spec.frames} chosen ones, got {n}")
    images = []
    for cam in spec.cameras:
        im = frames[cam]
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] != 3:
            got = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
            raise ValueError(f"frames[{cam!r}] must be uint8 [T, H, W, 3] (RGB), got {got}")
        if len(im) != n:
            raise ValueError(f"frames[{cam!r}] has {len(im)} frames but states has {n}: one state row per frame")
        images.append(_resize(im[idx], spec.image_size))
    return {"images": np.stack(images), "state": states[idx].astype(np.float32)}


def episode_features(ep, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """The detector input of a saved episode (a :class:`vla_robot.data.reader.Episode`): decodes only
    the K chosen frames of each camera."""
    from vla_robot.data import schema as S

    frames = ep.frames if ep.frames is not None else ep.load_frames()
    states = np.asarray(frames[S.STATE], np.float32)
    if states.ndim == 1:  # one joint: the reader flattens [T, 1]
        states = states[:, None]
    idx = frame_indices(len(states), spec)
    images = ep.images(frame_indices=idx, cameras=spec.cameras)
    return features_from_arrays(images, states[idx], spec, picked=True)


def stack(features: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A batch of detector inputs: each array gets a leading batch axis."""
    if not features:
        raise ValueError("stack() needs at least one detector input")
    return {k: np.stack([f[k] for f in features]) for k in INPUTS}
