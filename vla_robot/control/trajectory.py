"""Action chunk -> a ``trajectory_msgs/JointTrajectory``-shaped dict (no ROS types; the node converts).

Velocities are filled (central differences; the first point's from ``start_q`` when given) so the
joint trajectory controller interpolates cubically, and the last point is at rest, so a policy that
stops sending leaves the arm standing still at the end of the chunk.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from vla_robot.control.limits import as_vector


def chunk_to_trajectory(
    chunk,
    dt: float,
    joint_names: Sequence[str],
    start_q=None,
    time_offset: float = 0.0,
) -> dict:
    """``chunk`` [H, D] of joint targets one ``dt`` apart -> ``{"joint_names", "points"}``.

    Point i is reached at ``time_from_start = time_offset + (i + 1)·dt`` (the arm is at ``start_q``
    at time 0, if given). Each point: ``positions``, ``velocities`` (lists of floats) and
    ``time_from_start`` (seconds, float).
    """
    names = [str(n) for n in joint_names]
    try:
        q = np.asarray(chunk, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"chunk must be a [H, D] array of numbers ({e})") from None
    if q.ndim != 2 or q.shape[0] < 1:
        raise ValueError(f"chunk must have shape [H, D] with H >= 1, got {q.shape}")
    if q.shape[1] != len(names):
        raise ValueError(f"chunk has {q.shape[1]} joints per action but joint_names has {len(names)}: {names}")
    if not np.all(np.isfinite(q)):
        raise ValueError("chunk contains NaN or inf: filter it through the SafetyFilter first")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number of seconds > 0, got {dt!r}")
    if not (isinstance(time_offset, (int, float)) and math.isfinite(time_offset) and time_offset >= 0):
        raise ValueError(f"time_offset must be a finite number of seconds >= 0, got {time_offset!r}")
    before = q[:1] if start_q is None else as_vector(start_q, len(names), "start_q")[None]
    padded = np.concatenate([before, q, q[-1:]], axis=0)  # neighbours of every point
    vel = (padded[2:] - padded[:-2]) / (2 * dt)
    if start_q is None:  # one-sided difference for the first point
        vel[0] = (q[1] - q[0]) / dt if len(q) > 1 else 0.0
    vel[-1] = 0.0  # at rest at the end
    points = [
        {
            "positions": q[i].tolist(),
            "velocities": vel[i].tolist(),
            "time_from_start": float(time_offset + (i + 1) * dt),
        }
        for i in range(len(q))
    ]
    return {"joint_names": names, "points": points}
