"""Rigid transforms as 4x4 numpy arrays, and the rotation measures used in reports."""
from __future__ import annotations

import numpy as np

__all__ = ["make_T", "invert", "look_at", "rotation_angle_deg", "pose_error", "skew", "unskew"]


def make_T(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, float).reshape(3, 3)
    T[:3, 3] = np.asarray(t, float).reshape(3)
    return T


def invert(T) -> np.ndarray:
    T = np.asarray(T, float)
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Rotation (columns: camera axes in the parent frame) of an OpenCV optical frame at ``eye``
    looking at ``target`` with ``up`` pointing towards the top of the image."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: 'up' is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.column_stack([x, y, z])


def rotation_angle_deg(R) -> float:
    """Angle of a rotation matrix in degrees (robust near 0 and 180)."""
    R = np.asarray(R, float)
    c = np.clip((np.trace(R) - 1) / 2, -1, 1)
    s = np.linalg.norm(unskew(R - R.T)) / 2
    return float(np.degrees(np.arctan2(s, c)))


def pose_error(T_a, T_b) -> tuple[float, float]:
    """(rotation error in degrees, translation error in millimetres) between two poses."""
    T_a, T_b = np.asarray(T_a, float), np.asarray(T_b, float)
    return rotation_angle_deg(T_a[:3, :3].T @ T_b[:3, :3]), float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]) * 1000)


def skew(w) -> np.ndarray:
    """[w]x, the cross-product matrix: skew(w) @ v == cross(w, v)."""
    x, y, z = np.asarray(w, float).reshape(3)
    return np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])


def unskew(S) -> np.ndarray:
    """The vector of the skew-symmetric part of S (inverse of :func:`skew` on skew matrices)."""
    S = np.asarray(S, float)
    return 0.5 * np.array([S[2, 1] - S[1, 2], S[0, 2] - S[2, 0], S[1, 0] - S[0, 1]])
