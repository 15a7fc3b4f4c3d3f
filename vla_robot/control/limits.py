"""Joint limits of an arm: the facts the safety filter enforces (filled by the twin's robot specs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


def as_vector(value, n: int | None, what: str) -> np.ndarray:
    """``value`` as a float64 1-D array (of length ``n`` when given), or a ValueError naming ``what``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a 1-D sequence of numbers, got {value!r} ({e})") from None
    if arr.ndim == 0 and n is not None:
        arr = np.full(n, float(arr))
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D vector, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{what} must have {n} entries (one per joint), got {arr.shape[0]}")
    return arr


@dataclass
class JointLimits:
    """Per-joint position, velocity and acceleration limits, in the robot's units (rad, rad/s, rad/s²).

    ``gripper_index`` names the gripper entry of the joint vector (negative counts from the end, None
    for an arm without gripper); ``home`` is a safe pose inside the limits (defaults to mid-range).
    Scalars are broadcast to every joint.
    """

    names: Sequence[str]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    gripper_index: Optional[int] = -1
    home: Optional[np.ndarray] = field(default=None)

    def __post_init__(self) -> None:
        self.names = tuple(str(n) for n in self.names)
        n = len(self.names)
        if n == 0:
            raise ValueError("JointLimits needs at least one joint name")
        if len(set(self.names)) != n:
            raise ValueError(f"joint names must be unique, got {list(self.names)}")
        self.lower = as_vector(self.lower, n, "lower")
        self.upper = as_vector(self.upper, n, "upper")
        self.max_velocity = as_vector(self.max_velocity, n, "max_velocity")
        self.max_acceleration = as_vector(self.max_acceleration, n, "max_acceleration")
        for what in ("lower", "upper", "max_velocity", "max_acceleration"):
            if not np.all(np.isfinite(getattr(self, what))):
                raise ValueError(f"{what} must be finite for every joint, got {getattr(self, what).tolist()}")
        bad = np.nonzero(~(self.lower < self.upper))[0]
        if bad.size:
            j = int(bad[0])
            raise ValueError(
                f"joint '{self.names[j]}': lower ({self.lower[j]}) must be < upper ({self.upper[j]})"
            )
        for what in ("max_velocity", "max_acceleration"):
            bad = np.nonzero(~(getattr(self, what) > 0))[0]
            if bad.size:
                j = int(bad[0])
                raise ValueError(f"joint '{self.names[j]}': {what} must be > 0, got {getattr(self, what)[j]}")
        if self.gripper_index is not None:
            if not -n <= int(self.gripper_index) < n:
                raise ValueError(f"gripper_index {self.gripper_index} is out of range for {n} joints")
            self.gripper_index = int(self.gripper_index) % n
        if self.home is None:
            self.home = (self.lower + self.upper) / 2.0
        else:
            self.home = as_vector(self.home, n, "home")
            if not np.all((self.home >= self.lower) & (self.home <= self.upper)):
                raise ValueError(f"home {self.home.tolist()} must lie inside the joint limits")

    @property
    def n(self) -> int:
        return len(self.names)

    def contains(self, q, tol: float = 1e-9) -> bool:
        q = np.asarray(q, dtype=np.float64)
        return bool(np.all(q >= self.lower - tol) and np.all(q <= self.upper + tol))
