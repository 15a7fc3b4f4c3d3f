"""Configs of the control package: chunk executor, safety filter, watchdog (stdlib only).

Loaded with :mod:`vla_robot.config` from the ``control:`` mapping of a node's parameters::

    control:
      control_hz: 30.0
      executor: {kind: async, request_threshold: 4, blend_steps: 4}
      safety: {velocity_scale: 0.5, workspace_min: [0.05, -0.3, 0.0], workspace_max: [0.45, 0.3, 0.4]}
      watchdog: {max_observation_age_s: 0.3, max_chunk_gap_s: 1.0}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

ExecutorKind = Literal["open_loop", "temporal_ensemble", "async"]


def _positive(name: str, value: float, unit: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 ({unit}), got {value!r}")


@dataclass
class ExecutorConfig:
    """How a chunk [H, D] of future joint targets becomes one target per control tick."""

    kind: ExecutorKind = "async"
    # open_loop: execute the first K actions of each chunk, then ask again (0 = the whole chunk).
    open_loop_steps: int = 0
    # temporal_ensemble: ACT's weights w_i = exp(-m * i), i = 0 the oldest chunk covering the tick.
    ensemble_decay: float = 0.01
    # async: ask for the next chunk when at most this many actions of the current one are left.
    # With adaptive_threshold the executor raises it to latency_margin x the measured latency
    # (in ticks) + 1.
    # Until the first chunk arrives it asks again every request_threshold ticks.
    request_threshold: int = 4
    adaptive_threshold: bool = True
    # adaptive: plan for latencies up to this multiple of the largest of the last 16 seen (jitter
    # beyond what was seen so far would otherwise starve the arm for a tick or two)
    latency_margin: float = 1.5
    # async: ticks over which the seam between the old plan and a newly arrived chunk fades out
    # (0 = switch at once).
    blend_steps: int = 4
    # async: at most this many requests in flight (the server batches them). A chunk that arrives
    # after latency L is useful for H - L ticks, so latencies near the horizon H need about
    # L / (H - L) requests in flight; with 1, it starves whenever L > H / 2.
    max_in_flight: int = 4

    def validate(self) -> None:
        if self.open_loop_steps < 0:
            raise ValueError(f"open_loop_steps must be >= 0 (0 = whole chunk), got {self.open_loop_steps}")
        if not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
            raise ValueError(f"ensemble_decay must be a finite number >= 0, got {self.ensemble_decay}")
        if not (math.isfinite(self.latency_margin) and self.latency_margin >= 1.0):
            raise ValueError(f"latency_margin must be a number >= 1 (a multiple of the latency seen), got {self.latency_margin}")
        if self.request_threshold < 0:
            raise ValueError(f"request_threshold must be >= 0 actions, got {self.request_threshold}")
        if self.blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0 ticks, got {self.blend_steps}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 request, got {self.max_in_flight}")


@dataclass
class SafetyConfig:
    """Limits applied to every arm command, whatever its source (policy, teleop, hold)."""

    # Fractions of the robot's JointLimits.max_velocity / max_acceleration that commands may use.
    velocity_scale: float = 1.0
    acceleration_scale: float = 1.0
    # Keep commands this far (robot units) inside the joint position limits.
    position_margin: float = 0.0
    # End-effector box (metres, in the frame of the fk callable); both or neither.
    workspace_min: Optional[list[float]] = None
    workspace_max: Optional[list[float]] = None
    # Gripper range inside the gripper joint's limits; null = the joint limits.
    gripper_min: Optional[float] = None
    gripper_max: Optional[float] = None
    # After reset (episode start, resume after a hold) move at this fraction of the velocity limit
    # until the command has reached the requested target (within ramp_tolerance) once, or for at
    # most ramp_max_s seconds. The bound matters: a policy's targets move on every tick, so a
    # command may never "reach" one, and an unbounded ramp would hold the arm at a quarter speed
    # for the whole episode.
    ramp_velocity_scale: float = 0.25
    ramp_tolerance: float = 0.02
    ramp_max_s: float = 0.5

    def validate(self) -> None:
        for name in ("velocity_scale", "acceleration_scale", "ramp_velocity_scale", "ramp_tolerance"):
            _positive(name, getattr(self, name), "a fraction" if "scale" in name else "robot units")
        _positive("ramp_max_s", self.ramp_max_s, "seconds")
        for name in ("velocity_scale", "acceleration_scale", "ramp_velocity_scale"):
            if getattr(self, name) > 1.0:
                raise ValueError(f"{name} is a fraction of the robot's limit and must be <= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.position_margin) and self.position_margin >= 0):
            raise ValueError(f"position_margin must be a finite number >= 0, got {self.position_margin}")
        if (self.workspace_min is None) != (self.workspace_max is None):
            raise ValueError("workspace_min and workspace_max must be given together (or both null)")
        if self.workspace_min is not None:
            lo, hi = self.workspace_min, self.workspace_max
            if len(lo) != 3 or len(hi) != 3:
                raise ValueError(f"workspace_min/max must be [x, y, z] (3 numbers each), got {lo} and {hi}")
            if not all(math.isfinite(a) and math.isfinite(b) and a < b for a, b in zip(lo, hi)):
                raise ValueError(f"workspace_min must be < workspace_max on every axis, got {lo} and {hi}")
        if self.gripper_min is not None and self.gripper_max is not None and not self.gripper_min < self.gripper_max:
            raise ValueError(f"gripper_min must be < gripper_max, got {self.gripper_min} and {self.gripper_max}")


@dataclass
class WatchdogConfig:
    """When to stop following the policy and hold."""

    # Hold when the newest observation is older than this (seconds, monotonic clock).
    max_observation_age_s: float = 0.5
    # Hold when a request has waited this long without any new chunk arriving (seconds).
    max_chunk_gap_s: float = 1.5
    # What to hold: the last safe command, or safe_action (a joint vector, robot units).
    hold: Literal["last", "safe_action"] = "last"
    safe_action: Optional[list[float]] = None

    def validate(self) -> None:
        _positive("max_observation_age_s", self.max_observation_age_s, "seconds")
        _positive("max_chunk_gap_s", self.max_chunk_gap_s, "seconds")
        if self.hold == "safe_action" and not self.safe_action:
            raise ValueError("hold is 'safe_action' but safe_action is not set (a list of joint targets)")
        if self.safe_action is not None and not all(math.isfinite(v) for v in self.safe_action):
            raise ValueError(f"safe_action must be finite joint targets, got {self.safe_action}")


@dataclass
class ControlConfig:
    """Everything between the policy client and the arm."""

    control_hz: float = 30.0
    # Give up on a request after this long (seconds) and ask again.
    request_timeout_s: float = 2.0
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)

    def validate(self) -> None:
        _positive("control_hz", self.control_hz, "Hz")
        _positive("request_timeout_s", self.request_timeout_s, "seconds")
        self.executor.validate()
        self.safety.validate()
        self.watchdog.validate()

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz
