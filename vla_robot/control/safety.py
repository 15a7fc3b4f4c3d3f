"""Safety filter: every arm command, whatever its source, passes through here before the arm.

Per tick, in order of priority (a later stage never undoes an earlier one):

1. reject a command with NaN/inf (the filter then holds: it brakes to a stop where it is);
2. clamp to the joint position limits (``position``) and the gripper range (``gripper``);
3. limit velocity (``velocity``; ``ramp`` while ramping from the measured pose after a reset) and
   acceleration (``acceleration``), braking early enough to stop exactly at the target: with the
   command's own discrete motion model (velocity first, then position) the stop distance of the
   braking curve is exact, so an output never overshoots a position limit;
4. scale the step back so the end effector stays in the workspace box (``workspace``), when an
   ``fk(q) -> xyz`` is given. A box wall stops the command at once: this stage may exceed the
   acceleration limit, never the position or velocity limits.

Every stage that changes the command is counted in :attr:`SafetyFilter.stats` and listed in
:attr:`SafetyFilter.last_clamps`.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from vla_robot.control.config import SafetyConfig
from vla_robot.control.limits import JointLimits, as_vector

CLAMP_KINDS = ("nonfinite", "position", "gripper", "velocity", "ramp", "acceleration", "workspace", "freeze")
_EPS = 1e-9


@dataclass
class SafetyStats:
    """How often each stage changed a command (ticks), over :attr:`ticks` filtered commands."""

    ticks: int = 0
    counts: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"ticks": self.ticks, **{k: int(self.counts.get(k, 0)) for k in CLAMP_KINDS}}


def braking_speed(distance: np.ndarray, accel: np.ndarray, dt: float) -> np.ndarray:
    """The largest speed from which braking at ``accel`` stops within ``distance`` (>= 0).

    Discrete model: each tick the speed drops by ``accel*dt`` and the position advances by the new
    speed times ``dt``. Starting the tick at speed ``v = (n + f)·a·dt`` the total travel is
    ``dt·Σ_j max(v − j·a·dt, 0)``; this inverts that piecewise-linear function exactly.
    """
    step = accel * dt * dt  # travel of one tick at speed accel*dt
    n = np.floor((-1.0 + np.sqrt(1.0 + 8.0 * distance / step)) / 2.0)
    # travel when starting at v is dt*((n+1)*v - a*dt*n*(n+1)/2) for v in [n*a*dt, (n+1)*a*dt]
    return (distance / dt + accel * dt * n * (n + 1) / 2.0) / (n + 1)


class SafetyFilter:
    """Clamp joint targets to what the arm may safely be told (see the module docstring).

    ``limits``: the robot's :class:`JointLimits`; ``config``: :class:`SafetyConfig`;
    ``fk``: ``fk(q) -> xyz`` of the end effector, required when the config has a workspace box.
    Call :meth:`reset` with the measured pose before the first :meth:`filter` of an episode.
    """

    def __init__(
        self,
        limits: JointLimits,
        config: Optional[SafetyConfig] = None,
        fk: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ) -> None:
        self.limits = limits
        self.config = config = config or SafetyConfig()
        config.validate()
        n = limits.n
        self.lower = limits.lower + config.position_margin
        self.upper = limits.upper - config.position_margin
        g = limits.gripper_index
        if g is not None:
            if config.gripper_min is not None:
                self.lower[g] = max(self.lower[g], config.gripper_min)
            if config.gripper_max is not None:
                self.upper[g] = min(self.upper[g], config.gripper_max)
        bad = np.nonzero(~(self.lower < self.upper))[0]
        if bad.size:
            j = int(bad[0])
            raise ValueError(
                f"joint '{limits.names[j]}': no room left between the limits after position_margin/gripper range "
                f"({self.lower[j]} .. {self.upper[j]})"
            )
        self._gripper_mask = np.zeros(n, dtype=bool)
        if g is not None:
            self._gripper_mask[g] = True
        self.max_velocity = limits.max_velocity * config.velocity_scale
        self.max_acceleration = limits.max_acceleration * config.acceleration_scale
        if config.workspace_min is not None and fk is None:
            # a box that passes validation and does nothing would be worse than no box
            raise ValueError(
                f"safety.workspace_min/max {config.workspace_min} .. {config.workspace_max} is set but no forward "
                "kinematics was given: the box needs the robot's fk(q) -> xyz (nodes use "
                "vla_robot.twin.kinematics.end_effector_fk); remove the box or pass fk"
            )
        self.fk = fk
        if config.workspace_min is not None:
            self.box_min = np.asarray(config.workspace_min, dtype=np.float64)
            self.box_max = np.asarray(config.workspace_max, dtype=np.float64)
        else:
            self.box_min = self.box_max = None
        self.stats = SafetyStats()
        self.last_clamps: tuple[str, ...] = ()
        self._q: Optional[np.ndarray] = None
        self._v = np.zeros(n)
        self._ramping = False
        self._ramp_s = 0.0  # how long the current ramp has lasted

    # --- state -------------------------------------------------------------------------------
    def reset(self, measured_q) -> None:
        """Start from the measured pose (at rest), ramping at reduced speed to the first targets."""
        q = as_vector(measured_q, self.limits.n, "measured_q")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"measured_q must be finite, got {q.tolist()}")
        self._q = q.copy()
        self._v = np.zeros(self.limits.n)
        self._ramping, self._ramp_s = True, 0.0
        self.last_clamps = ()

    def start_ramp(self) -> None:
        """Move at the ramp speed again until the command reaches its target (e.g. after a hold)."""
        self._ramping, self._ramp_s = True, 0.0

    @property
    def last(self) -> Optional[np.ndarray]:
        """The last safe command (the measured pose right after :meth:`reset`)."""
        return None if self._q is None else self._q.copy()

    @property
    def velocity(self) -> np.ndarray:
        return self._v.copy()

    @property
    def ramping(self) -> bool:
        return self._ramping

    # --- filtering ---------------------------------------------------------------------------
    def filter(self, q_cmd, dt: float) -> np.ndarray:
        """The safe command for target ``q_cmd`` one tick of ``dt`` seconds after the last one."""
        if self._q is None:
            raise RuntimeError("SafetyFilter.filter() before reset(measured_q): the filter must know where the arm is")
        if not (isinstance(dt, (int, float, np.floating)) and np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number of seconds > 0, got {dt!r}")
        try:
            target = np.asarray(q_cmd, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"command must be a vector of {self.limits.n} numbers, got {q_cmd!r} ({e})") from None
        if target.shape != (self.limits.n,):
            raise ValueError(
                f"command must have shape ({self.limits.n},) (joints {list(self.limits.names)}), got {target.shape}"
            )
        reasons: list[str] = []
        q, v = self._q, self._v
        # 1. non-finite: hold (brake to a stop where the command is now)
        if not np.all(np.isfinite(target)):
            reasons.append("nonfinite")
            target = q.copy()
        # 2. position limits and gripper range
        clipped = np.clip(target, self.lower, self.upper)
        changed = np.abs(clipped - target) > _EPS
        if np.any(changed & ~self._gripper_mask):
            reasons.append("position")
        if np.any(changed & self._gripper_mask):
            reasons.append("gripper")
        target = clipped
        # 3. velocity, acceleration (with braking), ramp
        q_new, v_new = self._limit_motion(q, v, target, dt, reasons)
        # 4. workspace box
        if self.fk is not None and self.box_min is not None:
            s = self._workspace_fraction(q, q_new)
            if s < 1.0:
                reasons.append("workspace")
                q_new = q + s * (q_new - q)
                v_new = (q_new - q) / dt
        # never leave the limits (nor go further out, when the measured start was outside them)
        lo = np.minimum(self.lower, q)
        hi = np.maximum(self.upper, q)
        net = np.clip(q_new, lo, hi)
        if np.any(np.abs(net - q_new) > _EPS):  # pragma: no cover - guarded by the braking curve
            reasons.append("position")
            q_new, v_new = net, (net - q) / dt
        if self._ramping:
            self._ramp_s += dt
            reached = np.all(np.abs(target - q_new) <= self.config.ramp_tolerance)
            self._ramping = not (reached or self._ramp_s >= self.config.ramp_max_s - _EPS)
        self._q, self._v = q_new, v_new
        self._record(reasons)
        return q_new.copy()

    def freeze(self) -> np.ndarray:
        """Stop dead at the last command (e-stop): velocity to zero at once, whatever the limits."""
        if self._q is None:
            raise RuntimeError("SafetyFilter.freeze() before reset(measured_q)")
        self._v = np.zeros(self.limits.n)
        self._record(["freeze"])
        return self._q.copy()

    def preview(self, chunk, dt: float) -> np.ndarray:
        """Filter a whole chunk [H, D] from the current state without changing it (for trajectories)."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.limits.n:
            raise ValueError(f"chunk must have shape [H, {self.limits.n}], got {chunk.shape}")
        saved = (self._q, self._v, self._ramping, self._ramp_s, copy.deepcopy(self.stats), self.last_clamps)
        try:
            return np.stack([self.filter(a, dt) for a in chunk]) if len(chunk) else chunk.copy()
        finally:
            self._q, self._v, self._ramping, self._ramp_s, self.stats, self.last_clamps = saved

    # --- stages ------------------------------------------------------------------------------
    def _limit_motion(self, q, v, target, dt, reasons):
        vmax = self.max_velocity
        amax = self.max_acceleration
        d = target - q
        dist = np.abs(d)
        speed_wanted = dist / dt
        cap = vmax * self.config.ramp_velocity_scale if self._ramping else vmax
        if np.any(speed_wanted > vmax + _EPS):
            reasons.append("velocity")
        elif self._ramping and np.any(speed_wanted > cap + _EPS):
            reasons.append("ramp")
        speed = np.minimum(np.minimum(speed_wanted, cap), braking_speed(dist, amax, dt))
        v_des = np.sign(d) * speed
        v_new = np.clip(v_des, v - amax * dt, v + amax * dt)
        v_new = np.clip(v_new, -vmax, vmax)
        if np.any(np.abs(v_new - v_des) > _EPS) or np.any(speed < np.minimum(speed_wanted, cap) - _EPS):
            reasons.append("acceleration")
        return q + v_new * dt, v_new

    def _inside(self, q) -> bool:
        x = np.asarray(self.fk(q), dtype=np.float64).reshape(-1)
        if x.shape != (3,):
            raise ValueError(f"fk(q) must return an xyz position (3 numbers), got shape {x.shape}")
        return bool(np.all(np.isfinite(x)) and np.all(x >= self.box_min) and np.all(x <= self.box_max))

    def _box_distance(self, q) -> float:
        x = np.asarray(self.fk(q), dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(x)):
            return np.inf
        return float(np.linalg.norm(np.maximum(self.box_min - x, 0) + np.maximum(x - self.box_max, 0)))

    def _workspace_fraction(self, q, q_new, iterations: int = 12) -> float:
        """The largest fraction of the step q -> q_new that keeps the end effector in the box."""
        if self._inside(q_new):
            return 1.0
        if not self._inside(q):
            # started outside (measured pose): allow only steps that get closer to the box
            return 1.0 if self._box_distance(q_new) < self._box_distance(q) else 0.0
        lo, hi = 0.0, 1.0
        for _ in range(iterations):
            mid = (lo + hi) / 2.0
            if self._inside(q + mid * (q_new - q)):
                lo = mid
            else:
                hi = mid
        return lo

    def _record(self, reasons) -> None:
        self.stats.ticks += 1
        self.stats.counts.update(reasons)
        self.last_clamps = tuple(reasons)
