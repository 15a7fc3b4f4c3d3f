"""Task scenes: the arm on a table, lights, cameras, and (added by the task) objects.

Cameras are named ``front`` (looks at the workspace from the far side of the table), ``side``,
``top`` and ``wrist`` (rides on the gripper). A calibrated real camera replaces the default pose and
intrinsics of its namesake (files written by ``vla-robot calibrate``, read with
``vla_robot.calibration.camera_model``, which also owns the OpenCV <-> MuJoCo camera conversion), so
the twin renders what that camera should see.
"""
from __future__ import annotations


import mujoco
import numpy as np

from vla_robot.twin.models import robot_mjspec
from vla_robot.twin.robots import for_robot

__all__ = ["build_scene", "look_at_quat", "camera_intrinsics", "SCENE_LAYOUT"]

# per registered robot (vla_robot.twin.robots): where the fixed cameras sit and what they look at
# (base frame, metres), the model's wrist camera, calibration frame names, table colour
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
        "frames": {"gripper": "attachment"},  # calibration frame names -> bodies of this model
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


def _apply_calibration(spec: mujoco.MjSpec, cam, files, robot: str, height: int, width: int):
    """Give spec camera ``cam`` the intrinsics (scaled to the rendered size) and pose of a real camera.

    Returns the camera to use from now on (a new one when the extrinsics move it to another body).
    """
    from vla_robot.calibration.camera_model import (
        load_camera_info, load_extrinsics, mujoco_camera_attributes, mujoco_camera_pose)

    if files.extrinsics:
        ext = load_extrinsics(files.extrinsics)
        pos, quat = mujoco_camera_pose(ext.T)
        parent = ext.parent_frame
        if parent in ("base", "world", "base_link"):
            body = spec.worldbody
        else:
            parent = SCENE_LAYOUT[robot].get("frames", {}).get(parent, parent)
            body = next((b for b in spec.bodies if b.name == parent), None)
            if body is None:
                raise ValueError(f"{files.extrinsics}: parent_frame {ext.parent_frame!r} is neither 'base' nor a body "
                                 f"of the {robot} model (bodies: {', '.join(b.name for b in spec.bodies if b.name)})")
        if cam.parent is not body:
            old_name = cam.name
            spec.delete(cam)
            cam = body.add_camera(name=old_name)
        cam.pos = list(pos)
        cam.quat = list(quat)
    if files.camera_info:
        model = load_camera_info(files.camera_info)
        sx, sy = width / model.width, height / model.height  # rendered size may differ from calibrated
        K = model.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        model.K, model.width, model.height = K, width, height
        attrs = mujoco_camera_attributes(model)
        cam.resolution = [float(x) for x in attrs["resolution"].split()]
        cam.sensor_size = [float(x) for x in attrs["sensorsize"].split()]
        cam.focal_pixel = [float(x) for x in attrs["focalpixel"].split()]
        cam.principal_pixel = [float(x) for x in attrs["principalpixel"].split()]
    return cam


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
                calibration=(), reduced: bool = True) -> mujoco.MjSpec:
    """Robot + table + light + cameras. Tasks add their objects to the returned spec.

    ``reduced``: the reduced visual meshes (False: the makers' full meshes, e.g. as a baseline).
    """
    layout = for_robot(SCENE_LAYOUT, robot, "twin/scene.py SCENE_LAYOUT (where the twin's cameras sit)")
    spec = robot_mjspec(robot, reduced=reduced)
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
    spec.worldbody.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[half, half, half / 4],  # 3rd: render grid spacing; a fine grid costs fps
                            rgba=list(layout["table_rgba"]))
    # every twin camera exists in the model; ``cameras`` only says which ones observations render
    for name in ("front", "side", "top", "wrist"):
        if name == "wrist":
            cam = spec.camera(layout["wrist_cam"])
            cam.name = "wrist"
        else:
            pos, target, fovy = layout[name]
            cam = spec.worldbody.add_camera(name=name, pos=list(pos), quat=list(look_at_quat(pos, target)))
            cam.fovy = fovy
        for files in calibration:
            if files.camera == name:
                cam = _apply_calibration(spec, cam, files, robot, h, w)
    return spec
