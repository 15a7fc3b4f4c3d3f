"""Capture: drive the arm (real or twin) through poses and record board views with the joint states.

Works with anything that speaks the driver interface of ``vla_robot.drivers.base``:
``arm.read() -> (q, dq, stamp)``, ``arm.command(q_target)``, ``camera.read() -> (image, stamp)``.
The gripper pose of each view comes from forward kinematics of the *measured* joints
(:class:`MujocoKinematics` on the robot's MJCF, or any ``fk(q) -> 4x4``).

On disk (one folder per capture; ``views.yaml`` is rewritten after every view, so an interrupted
capture keeps every finished view)::

    views.yaml
      joint_names: [...]
      base_frame: base
      gripper_frame: gripper
      views:
        - image: 000.png
          joints: [q1, ...]                                   # measured, after settling
          gripper_pose: {translation: [x, y, z], rotation: [qx, qy, qz, qw]}   # T_base_gripper (if fk)
          stamp: 12.345                                        # camera stamp, seconds
    000.png, 001.png, ...
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import yaml

from vla_robot.calibration.geometry import make_T
from vla_robot.calibration.intrinsics import CalibrationError

__all__ = ["capture_views", "load_views", "CapturedViews", "MujocoKinematics", "pose_to_dict", "pose_from_dict"]


def pose_to_dict(T: np.ndarray) -> dict:
    from scipy.spatial.transform import Rotation

    T = np.asarray(T, float)
    return {"translation": [float(x) for x in T[:3, 3]], "rotation": [float(x) for x in Rotation.from_matrix(T[:3, :3]).as_quat()]}


def pose_from_dict(d, where: str) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    if not isinstance(d, dict) or set(d) != {"translation", "rotation"}:
        raise CalibrationError(f"{where}: a pose must be {{translation: [x, y, z], rotation: [qx, qy, qz, qw]}}, got {d!r}")
    t, q = np.asarray(d["translation"], float), np.asarray(d["rotation"], float)
    if t.shape != (3,) or q.shape != (4,) or abs(np.linalg.norm(q) - 1) > 1e-3:
        raise CalibrationError(f"{where}: translation needs 3 numbers and rotation a unit quaternion [qx, qy, qz, qw]")
    return make_T(Rotation.from_quat(q).as_matrix(), t)


class MujocoKinematics:
    """Forward kinematics from a robot MJCF: ``fk(q) -> T_base_<frame>`` for a body or site.

    ``joint_names`` maps the arm's joint vector onto the model's joints (default: the model's
    hinge/slide joints in order). The base is the model's world frame.
    """

    def __init__(self, mjcf: str | os.PathLike, frame: str, joint_names: Sequence[str] | None = None) -> None:
        """``mjcf``: a robot MJCF path, or ``twin:<robot>`` for the twin's model of that robot (the
        frame names of extrinsics files, e.g. ``gripper``, map to its bodies as the twin maps them)."""
        import mujoco

        text = str(mjcf)
        if text.startswith("twin:"):
            from vla_robot.twin.models import robot_mjspec
            from vla_robot.twin.scene import SCENE_LAYOUT

            robot = text.split(":", 1)[1]
            if robot not in SCENE_LAYOUT:
                raise CalibrationError(f"{text}: the twin has no robot {robot!r}; known: {', '.join(SCENE_LAYOUT)}")
            frame = SCENE_LAYOUT[robot].get("frames", {}).get(frame, frame)
            self.model = robot_mjspec(robot).compile()
            path = Path(text)
        else:
            path = Path(mjcf)
            if not path.is_file():
                raise CalibrationError(f"{path}: robot model (MJCF) not found (or use twin:<robot>, e.g. twin:so101)")
            self.model = mujoco.MjModel.from_xml_path(str(path))
        self.data = mujoco.MjData(self.model)
        self._site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, frame)
        self._body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, frame)
        if self._site < 0 and self._body < 0:
            raise CalibrationError(f"{path}: no body or site named {frame!r} (the end-effector frame)")
        if joint_names is None:
            ids = [j for j in range(self.model.njnt) if self.model.jnt_type[j] in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)]
        else:
            ids = []
            for n in joint_names:
                j = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, n)
                if j < 0:
                    raise CalibrationError(f"{path}: no joint named {n!r}")
                ids.append(j)
        self._qadr = np.array([self.model.jnt_qposadr[j] for j in ids], int)

    def __call__(self, q) -> np.ndarray:
        import mujoco

        q = np.asarray(q, float).reshape(-1)
        if q.size > self._qadr.size:
            raise CalibrationError(f"fk: {q.size} joint values but the model maps only {self._qadr.size} joints")
        self.data.qpos[self._qadr[: q.size]] = q
        mujoco.mj_kinematics(self.model, self.data)
        if self._site >= 0:
            return make_T(self.data.site_xmat[self._site].reshape(3, 3), self.data.site_xpos[self._site])
        return make_T(self.data.xmat[self._body].reshape(3, 3), self.data.xpos[self._body])


def _write_index(out: Path, doc: dict) -> None:
    tmp = out / "views.yaml.tmp"
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200))
    os.replace(tmp, out / "views.yaml")


def capture_views(
    arm,
    camera,
    joint_targets: Sequence[Sequence[float]],
    out_dir: str | os.PathLike,
    fk: Callable[[np.ndarray], np.ndarray] | None = None,
    joint_names: Sequence[str] | None = None,
    tolerance: float = 0.01,
    settle_s: float = 0.3,
    timeout_s: float = 15.0,
    command_hz: float = 30.0,
    board=None,
    progress: bool = True,
    base_frame: str = "base",
    gripper_frame: str = "gripper",
) -> list[dict]:
    """Move to each joint target, wait until the arm is there and still, record an image and the joints.

    A target not reached within ``timeout_s`` is skipped with a message (the arm may be blocked or
    the target out of reach); the arm moving during the shot (joints before and after the image
    differ by more than ``tolerance``) retakes the shot once. With ``board`` given, views where the
    board is not found are reported as they happen.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = [np.asarray(t, float).reshape(-1) for t in joint_targets]
    if not targets:
        raise CalibrationError("no joint targets to capture: give a poses file with a list of joint vectors")
    n = targets[0].size
    if any(t.size != n for t in targets):
        raise CalibrationError(f"joint targets have different lengths ({sorted({t.size for t in targets})}); all need {n} values")
    doc = {"joint_names": list(joint_names) if joint_names else None, "base_frame": base_frame, "gripper_frame": gripper_frame, "views": []}
    iterator = enumerate(targets)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(targets), desc="capturing", unit="view", disable=None)
    for i, target in iterator:
        if not _move_to(arm, target, tolerance, timeout_s, command_hz):
            q, _, _ = arm.read()
            print(f"view {i}: target not reached within {timeout_s:g} s (error {np.abs(np.asarray(q) - target).max():.3f}); skipped")
            continue
        time.sleep(settle_s)
        for _attempt in range(2):
            q0, _, _ = arm.read()
            image, stamp = camera.read()
            q1, _, _ = arm.read()
            if np.abs(np.asarray(q1, float) - np.asarray(q0, float)).max() <= tolerance:
                break
            time.sleep(settle_s)
        else:
            print(f"view {i}: the arm kept moving during the shot; skipped")
            continue
        q = 0.5 * (np.asarray(q0, float) + np.asarray(q1, float))
        name = f"{len(doc['views']):03d}.png"
        cv2.imwrite(str(out / name), cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
        view = {"image": name, "joints": [float(x) for x in q], "stamp": float(stamp)}
        if fk is not None:
            view["gripper_pose"] = pose_to_dict(fk(q))
        doc["views"].append(view)
        _write_index(out, doc)
        if board is not None:
            det = board.detect(np.asarray(image))
            if det.count < 8:
                print(f"view {i}: board {'not found' if det.count == 0 else f'only partly seen ({det.count} corners)'}")
    if not doc["views"]:
        raise CalibrationError("no view was captured: check that the arm moves and the targets are reachable")
    return doc["views"]


def _move_to(arm, target, tolerance, timeout_s, command_hz) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        arm.command(target)
        q, dq, _ = arm.read()
        if np.abs(np.asarray(q, float) - target).max() <= tolerance and np.abs(np.asarray(dq, float)).max() <= 10 * tolerance:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0 / command_hz)


@dataclass
class CapturedViews:
    names: list[str]
    images: list[np.ndarray | None]
    joints: list[np.ndarray]
    gripper_poses: list[np.ndarray] | None
    joint_names: list[str] | None


def load_views(folder: str | os.PathLike, fk: Callable[[np.ndarray], np.ndarray] | None = None) -> CapturedViews:
    """Read a capture folder; gripper poses from the file or, if ``fk`` is given, from the joints."""
    folder = Path(folder)
    index = folder / "views.yaml"
    if not index.is_file():
        raise CalibrationError(f"{index}: not found; record views with 'vla-robot calibrate capture' (format in vla_robot/calibration/capture.py)")
    try:
        doc = yaml.safe_load(index.read_text())
    except yaml.YAMLError as e:
        raise CalibrationError(f"{index}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("views"), list):
        raise CalibrationError(f"{index}: expected a mapping with a 'views' list")
    names, images, joints, poses = [], [], [], []
    for k, v in enumerate(doc["views"]):
        where = f"{index} views[{k}]"
        if not isinstance(v, dict) or "image" not in v or "joints" not in v:
            raise CalibrationError(f"{where}: each view needs 'image' and 'joints'")
        img = cv2.imread(str(folder / v["image"]), cv2.IMREAD_COLOR)
        names.append(str(v["image"]))
        images.append(None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        q = np.asarray(v["joints"], float)
        joints.append(q)
        if fk is not None:
            poses.append(fk(q))
        elif "gripper_pose" in v:
            poses.append(pose_from_dict(v["gripper_pose"], where))
        else:
            poses = None
            fk_missing = where
            break
    if poses is None:
        raise CalibrationError(f"{fk_missing}: no gripper_pose; give the robot model for forward kinematics (--fk-model MJCF --ee-frame NAME)")
    return CapturedViews(names, images, joints, poses, doc.get("joint_names"))
