"""Camera calibration and twin alignment: ChArUco intrinsics, hand-eye extrinsics, landing on SO(3).

Files on disk (the contract with the camera node and the twin, see docs/interfaces.md):
ROS camera_info YAML (:func:`load_camera_info` -> :class:`CameraModel`) and extrinsics YAML
(:func:`load_extrinsics` -> :class:`Extrinsics`). Importing this package is light; the names
below load their modules (OpenCV, SciPy, MuJoCo) on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CameraModel": "camera_model", "Extrinsics": "camera_model", "CameraFileError": "camera_model",
    "load_camera_info": "camera_model", "save_camera_info": "camera_model",
    "load_extrinsics": "camera_model", "save_extrinsics": "camera_model",
    "mujoco_camera_attributes": "camera_model", "mujoco_camera_pose": "camera_model",
    "camera_model_from_mujoco": "camera_model",
    "Board": "board", "Detection": "board", "load_board": "board",
    "CalibrationError": "intrinsics", "calibrate_intrinsics": "intrinsics", "IntrinsicsResult": "intrinsics",
    "calibrate_hand_eye": "handeye", "HandEyeResult": "handeye", "check_motion": "handeye",
    "landing_least_squares": "landing", "landing_descent": "landing", "rotvec_least_squares": "landing",
    "capture_views": "capture", "load_views": "capture",
    "realsense_camera_model": "realsense",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
