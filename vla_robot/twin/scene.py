"""Task scenes: the arm on a table, lights, cameras, and (added by the task) objects.

Cameras are named ``front`` (looks at the workspace from the far side of the table), ``side``,
``top`` and ``wrist`` (rides on the gripper). A calibrated real camera replaces the default pose and
intrinsics of its namesake (:func:`load_camera_calibration`), so the twin renders what that camera
should see: OpenCV intrinsics map onto MuJoCo's ``focalpixel``/``principalpixel`` with
``cx = (W-1)/2 - principalpixel_x``, ``cy = (H-1)/2 - principalpixel_y`` (MuJoCo >= 3.6; a test keeps
this honest), and the OpenCV optical frame is MuJoCo's camera frame times ``diag(1, -1, -1)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np
import yaml

from vla_robot.twin.models import robot_mjspec

__all__ = ["CameraCalibration", "build_scene", "look_at_quat", "load_camera_calibration", "camera_intrinsics",
           "SCENE_LAYOUT"]

# per robot: where the fixed cameras sit and what they look at (base frame, metres), table colour
SCENE_LAYOUT = {
    "so101": {
        "front": ((0.46, 0.0, 0.30), (0.16, 0.0, 0.03), 58.0),
        "side": ((0.22, -0.48, 0.30), (0.2, 0.0, 0.03), 55.0),
        "top": ((0.22, 0.0, 0.70), (0.22, 0.0, 0.0), 45.0),
        "wrist_cam": "wrist_cam",
        "table_rgba": (0.55, 0.52, 0.48, 1.0),
        "floor_half": 1.5,
    },
    "panda": {
        "front": ((1.15, 0.0, 0.62), (0.42, 0.0, 0.08), 50.0),
        "side": ((0.55, -1.0, 0.6), (0.5, 0.0, 0.05), 50.0),
        "top": ((0.5, 0.0, 1.5), (0.5, 0.0, 0.0), 50.0),
        "wrist_cam": "handcam_rgb",
        "table_rgba": (0.55, 0.52, 0.48, 1.0),
        "floor_half": 3.0,
    },
}


def look_at_quat(pos, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """MuJoCo camera quaternion (w x y z) for a camera at ``pos`` looking at ``target``."""
    pos, target = np.asarray(pos, float), np.asarray(target, float)
    z = pos - target  # MuJoCo cameras look along -z
    z /= np.linalg.norm(z)
    x = np.cross(np.asarray(up, float), z)
    if np.linalg.norm(x) < 1e-6:  # looking straight down: pick x along world +y... keep image upright
        x = np.array([0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.stack([x, y, z], axis=1).ravel())
    return q


@dataclass
class CameraCalibration:
    """A real camera's intrinsics (OpenCV ``K`` at ``width x height``) and, optionally, its pose.

    ``T_base_cam`` is the 4x4 pose of the OpenCV optical frame (x right, y down, z forward) in the
    robot base frame, for fixed cameras; for the wrist camera it is the pose in the gripper frame.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    T_base_cam: np.ndarray | None = None


def _matrix(node, shape, what, path) -> np.ndarray:
    data = node.get("data") if isinstance(node, dict) else node
    arr = np.asarray(data, dtype=np.float64)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: '{what}' must have {int(np.prod(shape))} numbers, got {arr.size}")
    return arr.reshape(shape)


def load_camera_calibration(calibration_dir: str | Path, camera: str) -> CameraCalibration | None:
    """Read ``<dir>/<camera>.yaml`` (ROS camera_info YAML) and ``<dir>/<camera>_extrinsics.yaml``.

    The extrinsics file holds ``translation: [x, y, z]`` (m) and ``rotation: [qx, qy, qz, qw]``
    (or a 3x3 ``rotation_matrix``) of the optical frame in the base (or gripper) frame.
    Returns None when there is no camera_info file for ``camera``.
    """
    d = Path(calibration_dir)
    info_path = d / f"{camera}.yaml"
    if not info_path.is_file():
        return None
    info = yaml.safe_load(info_path.read_text()) or {}
    try:
        w, h = int(info["image_width"]), int(info["image_height"])
        K = _matrix(info["camera_matrix"], (3, 3), "camera_matrix", info_path)
    except KeyError as e:
        raise ValueError(f"{info_path}: camera_info YAML lacks {e.args[0]!r} (expected image_width, image_height, "
                         "camera_matrix: {rows: 3, cols: 3, data: [...]})") from None
    D = np.asarray((info.get("distortion_coefficients") or {}).get("data", []) or [], dtype=np.float64)
    T = None
    ext_path = d / f"{camera}_extrinsics.yaml"
    if ext_path.is_file():
        ext = yaml.safe_load(ext_path.read_text()) or {}
        if "translation" not in ext or not ("rotation" in ext or "rotation_matrix" in ext):
            raise ValueError(f"{ext_path}: expected 'translation: [x, y, z]' and 'rotation: [qx, qy, qz, qw]' "
                             "or 'rotation_matrix' (3x3)")
        T = np.eye(4)
        T[:3, 3] = _matrix(ext["translation"], (3,), "translation", ext_path)
        if "rotation_matrix" in ext:
            T[:3, :3] = _matrix(ext["rotation_matrix"], (3, 3), "rotation_matrix", ext_path)
        else:
            qx, qy, qz, qw = _matrix(ext["rotation"], (4,), "rotation", ext_path)
            mat = np.zeros(9)
            mujoco.mju_quat2Mat(mat, np.array([qw, qx, qy, qz]) / np.linalg.norm([qw, qx, qy, qz]))
            T[:3, :3] = mat.reshape(3, 3)
    return CameraCalibration(w, h, K, D, T)


def _apply_calibration(cam, calib: CameraCalibration, height: int, width: int) -> None:
    """Set MuJoCo intrinsics (and pose) of spec camera ``cam`` from an OpenCV calibration."""
    sx, sy = width / calib.width, height / calib.height  # rendered size may differ from calibrated
    fx, fy = calib.K[0, 0] * sx, calib.K[1, 1] * sy
    cx, cy = (calib.K[0, 2] + 0.5) * sx - 0.5, (calib.K[1, 2] + 0.5) * sy - 0.5
    cam.resolution = [width, height]
    cam.sensor_size = [width * 1e-5, height * 1e-5]  # any non-zero size: focal/principal are in pixels
    cam.focal_pixel = [fx, fy]
    cam.principal_pixel = [(width - 1) / 2 - cx, (height - 1) / 2 - cy]
    if calib.T_base_cam is not None:
        R_mj = calib.T_base_cam[:3, :3] @ np.diag([1.0, -1.0, -1.0])
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, R_mj.ravel())
        cam.pos = list(calib.T_base_cam[:3, 3])
        cam.quat = list(q)


def camera_intrinsics(model: mujoco.MjModel, camera: str, height: int, width: int) -> np.ndarray:
    """The OpenCV ``K`` of a rendered ``height x width`` image of ``camera`` in ``model``."""
    cid = model.camera(camera).id
    sensor = model.cam_sensorsize[cid]
    if sensor[0] > 0 and sensor[1] > 0:
        res = model.cam_resolution[cid]
        fx, fy = model.cam_intrinsic[cid][:2]  # focal length in sensor units (same as sensorsize)
        fx, fy = fx / sensor[0] * res[0], fy / sensor[1] * res[1]
        ppx, ppy = model.cam_intrinsic[cid][2:] / sensor * res
        sx, sy = width / res[0], height / res[1]
        fx, fy = fx * sx, fy * sy
        cx = (width - 1) / 2 - ppx * sx
        cy = (height - 1) / 2 - ppy * sy
    else:
        fy = (height / 2) / np.tan(np.radians(model.cam_fovy[cid]) / 2)
        fx = fy
        cx, cy = (width - 1) / 2, (height - 1) / 2
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def build_scene(robot: str, image_size=(128, 128), cameras=("front", "wrist"), render: str = "fast",
                calibration_dir: str = "") -> mujoco.MjSpec:
    """Robot + table + light + cameras. Tasks add their objects to the returned spec."""
    layout = SCENE_LAYOUT[robot]
    spec = robot_mjspec(robot)
    spec.modelname = f"vla_robot_{robot}"
    h, w = int(image_size[0]), int(image_size[1])
    spec.visual.global_.offwidth = max(w, 64)
    spec.visual.global_.offheight = max(h, 64)
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.45, 0.45, 0.45]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    spec.visual.map.znear = 0.01
    if render == "fast":
        spec.visual.quality.shadowsize = 0
        spec.visual.quality.offsamples = 0
    else:
        spec.visual.quality.shadowsize = 2048
        spec.visual.quality.offsamples = 4
    # one light, shadows only in quality mode
    light = spec.worldbody.add_light(name="key", pos=[0.3, -0.3, 1.5], dir=[-0.15, 0.2, -1.0])
    light.diffuse = [0.6, 0.6, 0.6]
    light.castshadow = render != "fast"
    half = layout["floor_half"]
    spec.worldbody.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[half, half, 0.01],
                            rgba=list(layout["table_rgba"]))
    for name in cameras:
        if name == "wrist":
            cam = spec.camera(layout["wrist_cam"])
            cam.name = "wrist"
        else:
            pos, target, fovy = layout[name]
            cam = spec.worldbody.add_camera(name=name, pos=list(pos), quat=list(look_at_quat(pos, target)))
            cam.fovy = fovy
        if calibration_dir:
            calib = load_camera_calibration(calibration_dir, name)
            if calib is not None:
                _apply_calibration(cam, calib, h, w)
    return spec
