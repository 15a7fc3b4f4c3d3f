"""Camera models and extrinsics on disk: ROS ``camera_info`` YAML and our extrinsics YAML.

One source of truth for the image geometry: ``calibrate intrinsics`` and ``calibrate realsense``
write these files, the camera node publishes them as ``sensor_msgs/CameraInfo``, and the twin
builds its MuJoCo cameras from them (:func:`mujoco_camera_attributes`, :func:`mujoco_camera_pose`)
so the real and the simulated camera see the same image geometry.

camera_info YAML is the format of ROS ``camera_calibration_parsers`` (what ``cameracalibrator``
writes and ``camera_info_manager`` reads)::

    image_width: 640
    image_height: 480
    camera_name: front
    camera_matrix: {rows: 3, cols: 3, data: [fx, 0, cx, 0, fy, cy, 0, 0, 1]}
    distortion_model: plumb_bob
    distortion_coefficients: {rows: 1, cols: 5, data: [k1, k2, p1, p2, k3]}
    rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    projection_matrix: {rows: 3, cols: 4, data: [fx', 0, cx', 0, 0, fy', cy', 0, 0, 0, 1, 0]}

Extrinsics YAML (one rigid transform, in the order of ROS ``static_transform_publisher``)::

    parent_frame: gripper          # eye-in-hand: the end-effector frame; eye-to-hand: the robot base
    child_frame: wrist_camera_optical   # OpenCV optical frame: x right, y down, z forward
    translation: [x, y, z]         # metres; child origin in the parent frame
    rotation: [qx, qy, qz, qw]     # unit quaternion, parent <- child
    calibration: {...}             # optional free-form metadata (method, views, errors, date)

``T_parent_child`` maps points from the child frame to the parent frame.
Pixel convention is OpenCV's: pixel (0, 0) is the centre of the top-left pixel.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vla_robot.config import read_yaml

__all__ = [
    "CameraModel",
    "Extrinsics",
    "CameraFileError",
    "load_camera_info",
    "save_camera_info",
    "load_extrinsics",
    "save_extrinsics",
    "mujoco_camera_attributes",
    "mujoco_camera_pose",
    "camera_model_from_mujoco",
]

DISTORTION_MODELS = {"plumb_bob": (5,), "rational_polynomial": (8,), "equidistant": (4,), "none": (0,)}
_CAMERA_INFO_KEYS = {
    "image_width", "image_height", "camera_name", "camera_matrix", "distortion_model",
    "distortion_coefficients", "rectification_matrix", "projection_matrix",
}
_EXTRINSICS_KEYS = {"parent_frame", "child_frame", "translation", "rotation", "calibration"}
# MuJoCo camera frame (x right, y up, looking along -z) -> OpenCV optical frame (x right, y down, z forward)
MJ_FROM_CV = np.diag([1.0, -1.0, -1.0])


class CameraFileError(ValueError):
    """A camera_info or extrinsics file is missing, malformed or inconsistent."""


@dataclass
class CameraModel:
    """Pinhole camera with lens distortion, in OpenCV conventions.

    ``K`` 3x3, ``D`` distortion coefficients (plumb_bob: k1 k2 p1 p2 k3), ``width``/``height`` in
    pixels. ``R`` and ``P`` are the ROS rectification and projection matrices (identity and
    ``[K|0]`` for a monocular camera). This is also what a camera driver reports
    (``Camera.camera_info()``) and the camera node publishes as ``sensor_msgs/CameraInfo``.
    """

    K: np.ndarray
    D: np.ndarray
    width: int
    height: int
    distortion_model: str = "plumb_bob"
    camera_name: str = "camera"
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    P: np.ndarray | None = None
    frame_id: str = ""  # optical frame of the images (header.frame_id); not part of camera_info YAML

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.D = np.asarray(self.D, dtype=np.float64).reshape(-1)
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        if self.P is None:
            self.P = np.hstack([self.K, np.zeros((3, 1))])
        self.P = np.asarray(self.P, dtype=np.float64).reshape(3, 4)
        self.width, self.height = int(self.width), int(self.height)
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.width <= 0 or self.height <= 0:
            problems.append(f"image size must be positive, got {self.width}x{self.height}")
        if not np.all(np.isfinite(self.K)) or self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            problems.append(f"camera_matrix needs positive finite fx, fy, got fx={self.K[0, 0]}, fy={self.K[1, 1]}")
        if self.K[2, 2] != 1 or self.K[1, 0] != 0 or self.K[2, 0] != 0 or self.K[2, 1] != 0:
            problems.append(f"camera_matrix must be [fx, s, cx, 0, fy, cy, 0, 0, 1], got {self.K.ravel().tolist()}")
        if self.distortion_model not in DISTORTION_MODELS:
            problems.append(f"distortion_model {self.distortion_model!r} is not one of {sorted(DISTORTION_MODELS)}")
        elif self.distortion_model == "none":
            if np.any(self.D):
                problems.append("distortion_model 'none' needs no (or all-zero) coefficients")
        elif self.D.size not in DISTORTION_MODELS[self.distortion_model] and not (
            self.distortion_model == "plumb_bob" and self.D.size in (4, 5, 8, 12, 14)
        ):
            problems.append(
                f"distortion_model {self.distortion_model} expects {DISTORTION_MODELS[self.distortion_model][0]} "
                f"coefficients, got {self.D.size}"
            )
        if problems:
            raise CameraFileError("; ".join(problems))

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order OpenCV takes."""
        return self.width, self.height

    def to_camera_info(self) -> dict[str, Any]:
        """The ROS camera_info YAML mapping (also the field names of ``sensor_msgs/CameraInfo``)."""

        def mat(a: np.ndarray) -> dict:
            a = np.atleast_2d(a)
            return {"rows": int(a.shape[0]), "cols": int(a.shape[1]), "data": [float(x) for x in a.ravel()]}

        return {
            "image_width": self.width,
            "image_height": self.height,
            "camera_name": self.camera_name,
            "camera_matrix": mat(self.K),
            "distortion_model": self.distortion_model,
            "distortion_coefficients": mat(self.D.reshape(1, -1)),
            "rectification_matrix": mat(self.R),
            "projection_matrix": mat(self.P),
        }

    def scaled(self, width: int, height: int) -> "CameraModel":
        """The same lens at another resolution (same field of view; pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = (self.K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (self.K[1, 2] + 0.5) * sy - 0.5
        return dataclasses.replace(self, K=K, width=width, height=height, P=None)


def _matrix(doc: dict, key: str, rows: int, cols: int | None, path: Path) -> np.ndarray:
    entry = doc.get(key)
    expected = f"'{key}: {{rows: {rows}, cols: {cols if cols is not None else 'N'}, data: [...]}}'"
    if not isinstance(entry, dict) or "data" not in entry:
        raise CameraFileError(f"{path}: '{key}' is missing or not a mapping; expected {expected}")
    data = entry["data"]
    if not isinstance(data, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data):
        raise CameraFileError(f"{path}: '{key}.data' must be a list of numbers, got {data!r}")
    r, c = entry.get("rows", rows), entry.get("cols", cols if cols is not None else len(data))
    if r != rows or (cols is not None and c != cols) or r * c != len(data):
        raise CameraFileError(
            f"{path}: '{key}' is {r}x{c} with {len(data)} numbers; expected {rows}x{cols if cols is not None else 'N'}"
        )
    return np.asarray(data, dtype=np.float64).reshape(r, c)


def load_camera_info(path: str | os.PathLike) -> CameraModel:
    """Read a ROS camera_info YAML file into a :class:`CameraModel` (every key checked)."""
    path = Path(path)
    doc = read_yaml(path, "camera_info file", error=CameraFileError,
                    hint="write one with 'vla-robot calibrate intrinsics' or 'calibrate realsense'")
    if not isinstance(doc, dict):
        raise CameraFileError(f"{path}: expected a camera_info mapping with keys {sorted(_CAMERA_INFO_KEYS)}")
    unknown = sorted(set(doc) - _CAMERA_INFO_KEYS)
    if unknown:
        raise CameraFileError(f"{path}: unknown key(s) {unknown}; a camera_info file has {sorted(_CAMERA_INFO_KEYS)}")
    for key in ("image_width", "image_height"):
        v = doc.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise CameraFileError(f"{path}: '{key}' must be a positive integer (pixels), got {v!r}")
    model = doc.get("distortion_model", "plumb_bob")
    K = _matrix(doc, "camera_matrix", 3, 3, path)
    D = _matrix(doc, "distortion_coefficients", 1, None, path).ravel() if "distortion_coefficients" in doc else np.zeros(5)
    R = _matrix(doc, "rectification_matrix", 3, 3, path) if "rectification_matrix" in doc else np.eye(3)
    P = _matrix(doc, "projection_matrix", 3, 4, path) if "projection_matrix" in doc else None
    try:
        return CameraModel(
            K=K, D=D, width=doc["image_width"], height=doc["image_height"], distortion_model=str(model),
            camera_name=str(doc.get("camera_name", path.stem)), R=R, P=P,
        )
    except CameraFileError as e:
        raise CameraFileError(f"{path}: {e}") from None


def save_camera_info(model: CameraModel, path: str | os.PathLike, comment: str = "") -> Path:
    """Write ``model`` as ROS camera_info YAML; ``comment`` lines go on top as ``# ...``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    body = yaml.safe_dump(model.to_camera_info(), sort_keys=False, default_flow_style=None, width=200)
    path.write_text(head + body)
    return path


@dataclass
class Extrinsics:
    """A rigid transform ``T_parent_child`` (4x4), e.g. a camera's optical frame in the gripper frame."""

    parent_frame: str
    child_frame: str
    T: np.ndarray
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.T = np.asarray(self.T, dtype=np.float64).reshape(4, 4)
        R = self.T[:3, :3]
        if not np.all(np.isfinite(self.T)) or np.abs(R.T @ R - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0:
            raise CameraFileError("extrinsics: the rotation is not a proper rotation matrix (R^T R = I, det R = 1)")
        if not np.allclose(self.T[3], [0, 0, 0, 1]):
            raise CameraFileError("extrinsics: the last row of T must be [0, 0, 0, 1]")

    @property
    def rotation(self) -> np.ndarray:
        return self.T[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.T[:3, 3]

    def quaternion_xyzw(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(self.rotation).as_quat()

    def inverse(self) -> "Extrinsics":
        Ti = np.eye(4)
        Ti[:3, :3] = self.rotation.T
        Ti[:3, 3] = -self.rotation.T @ self.translation
        return Extrinsics(self.child_frame, self.parent_frame, Ti, dict(self.calibration))


def _vector(doc: dict, key: str, n: int, path: Path, what: str) -> np.ndarray:
    v = doc.get(key)
    if (
        not isinstance(v, list) or len(v) != n
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    ):
        raise CameraFileError(f"{path}: '{key}' must be {what}, got {v!r}")
    return np.asarray(v, dtype=np.float64)


def load_extrinsics(path: str | os.PathLike) -> Extrinsics:
    """Read an extrinsics YAML file (see the module docstring for the format)."""
    from scipy.spatial.transform import Rotation

    path = Path(path)
    doc = read_yaml(path, "extrinsics file", error=CameraFileError, hint="write one with 'vla-robot calibrate handeye'")
    if not isinstance(doc, dict):
        raise CameraFileError(f"{path}: expected a mapping with keys {sorted(_EXTRINSICS_KEYS)}")
    unknown = sorted(set(doc) - _EXTRINSICS_KEYS)
    if unknown:
        raise CameraFileError(f"{path}: unknown key(s) {unknown}; an extrinsics file has {sorted(_EXTRINSICS_KEYS)}")
    for key in ("parent_frame", "child_frame"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise CameraFileError(f"{path}: '{key}' must be a frame name (string)")
    t = _vector(doc, "translation", 3, path, "[x, y, z] in metres")
    q = _vector(doc, "rotation", 4, path, "a quaternion [qx, qy, qz, qw]")
    if abs(np.linalg.norm(q) - 1.0) > 1e-3:
        raise CameraFileError(f"{path}: 'rotation' must be a unit quaternion [qx, qy, qz, qw], its norm is {np.linalg.norm(q):.6f}")
    meta = doc.get("calibration") or {}
    if not isinstance(meta, dict):
        raise CameraFileError(f"{path}: 'calibration' must be a mapping of metadata, got {meta!r}")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
    T[:3, 3] = t
    return Extrinsics(doc["parent_frame"], doc["child_frame"], T, meta)


def save_extrinsics(ext: Extrinsics, path: str | os.PathLike, comment: str = "") -> Path:
    """Write ``ext`` as extrinsics YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "parent_frame": ext.parent_frame,
        "child_frame": ext.child_frame,
        "translation": [float(x) for x in ext.translation],
        "rotation": [float(x) for x in ext.quaternion_xyzw()],
    }
    if ext.calibration:
        doc["calibration"] = _plain(ext.calibration)
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200))
    return path


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays -> plain Python for YAML."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# --- MuJoCo cameras ------------------------------------------------------------------------------
def mujoco_camera_attributes(model: CameraModel) -> dict[str, str]:
    """MJCF ``<camera>`` attributes that give a MuJoCo camera the image geometry of ``model``.

    MuJoCo (>= 3.6) renders pixel centres so that ``cx = (W-1)/2 - principalpixel_x`` and
    ``cy = (H-1)/2 - principalpixel_y`` (checked by tests/test_calibration.py). ``sensorsize`` only
    sets the unit of ``focalpixel``; any value with the right aspect ratio works. MuJoCo has no
    skew and no lens distortion: render, then distort with :func:`cv2.remap` if needed.
    """
    if abs(model.K[0, 1]) > 1e-9:
        raise ValueError("mujoco_camera_attributes: MuJoCo cameras have no skew; K[0,1] must be 0")
    w, h = model.width, model.height
    ppx = (w - 1) / 2.0 - model.cx
    ppy = (h - 1) / 2.0 - model.cy
    return {
        "resolution": f"{w} {h}",
        "sensorsize": f"{w * 1e-5:.8g} {h * 1e-5:.8g}",
        "focalpixel": f"{model.fx:.10g} {model.fy:.10g}",
        "principalpixel": f"{ppx:.10g} {ppy:.10g}",
    }


def mujoco_camera_pose(T_parent_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pos`` and ``quat`` (w x y z) of an MJCF camera whose OpenCV optical frame is ``T_parent_cam``."""
    from scipy.spatial.transform import Rotation

    T = np.asarray(T_parent_cam, dtype=np.float64)
    R_mj = T[:3, :3] @ MJ_FROM_CV
    x, y, z, w = Rotation.from_matrix(R_mj).as_quat()
    return T[:3, 3].copy(), np.array([w, x, y, z])


def camera_model_from_mujoco(mj_model: Any, camera: str | int, name: str | None = None) -> CameraModel:
    """The OpenCV :class:`CameraModel` of a camera of a compiled ``mujoco.MjModel`` (no distortion)."""
    import mujoco

    cam_id = camera if isinstance(camera, int) else mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam_id < 0:
        raise ValueError(f"camera {camera!r} not found in the MuJoCo model")
    w, h = (int(v) for v in mj_model.cam_resolution[cam_id])
    sensor = mj_model.cam_sensorsize[cam_id]
    intr = mj_model.cam_intrinsic[cam_id]  # [fx, fy, ppx, ppy] in length units of sensorsize
    if sensor[0] > 0 and sensor[1] > 0:
        fx, fy = intr[0] / sensor[0] * w, intr[1] / sensor[1] * h
        ppx, ppy = intr[2] / sensor[0] * w, intr[3] / sensor[1] * h
    else:
        fy = (h / 2.0) / math.tan(math.radians(float(mj_model.cam_fovy[cam_id])) / 2.0)
        fx, ppx, ppy = fy, 0.0, 0.0
    K = np.array([[fx, 0, (w - 1) / 2.0 - ppx], [0, fy, (h - 1) / 2.0 - ppy], [0, 0, 1]])
    return CameraModel(K=K, D=np.zeros(5), width=w, height=h, camera_name=name or str(camera))
