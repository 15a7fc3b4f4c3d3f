"""A small MuJoCo calibration rig: a ChArUco board, a 6-joint arm and a camera with known geometry.

Used by the tests, ``calibrate capture --sim`` and anyone who wants to check the pipeline end to
end without hardware. The arm is a Cartesian robot with a spherical wrist (slide x, y, z, then
hinge z, y, x), so any gripper pose is reachable in closed form (:meth:`SyntheticRig.ik`) while the
gripper pose used for calibration still comes from MuJoCo's forward kinematics of the joint
states, as on a real arm.

- ``eye_in_hand``: the camera rides on the gripper at ``T_gripper_cam``; the board is fixed at
  ``T_base_board``.
- ``eye_to_hand``: the camera is fixed at ``T_base_cam``; the board is held by the gripper at
  ``T_gripper_board`` (also the set-up for intrinsics: the arm waves the board at the camera).

:class:`SimArm` and :class:`SimCamera` speak the driver interface (``Arm.read() -> (q, dq, stamp)``,
``Arm.command(q)``, ``Camera.read() -> (image, stamp)``), so capture code cannot tell them from
real devices.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

from vla_robot.calibration.board import Board
from vla_robot.calibration.camera_model import CameraModel, mujoco_camera_attributes, mujoco_camera_pose
from vla_robot.calibration.geometry import look_at, make_T, invert

__all__ = ["SyntheticRig", "SimArm", "SimCamera", "default_rig"]

JOINTS = ("x", "y", "z", "yaw", "pitch", "roll")


def _fmt(v) -> str:
    return " ".join(f"{float(x):.12g}" for x in np.ravel(v))


@dataclass
class RigTruth:
    camera: CameraModel
    T_base_board: np.ndarray | None = None      # eye_in_hand
    T_gripper_cam: np.ndarray | None = None     # eye_in_hand
    T_base_cam: np.ndarray | None = None        # eye_to_hand
    T_gripper_board: np.ndarray | None = None   # eye_to_hand


class SyntheticRig:
    """Build and render the rig. ``noise_px``: Gaussian pixel noise (grey levels) added to renders.

    The camera renders with ``camera``'s K (MuJoCo intrinsics) and, when ``camera.D`` is not zero,
    its lens distortion (applied to the render with ``cv2.remap``).
    """

    def __init__(
        self,
        board: Board,
        camera: CameraModel,
        mode: Literal["eye_in_hand", "eye_to_hand"] = "eye_in_hand",
        T_gripper_cam: np.ndarray | None = None,
        T_base_board: np.ndarray | None = None,
        T_base_cam: np.ndarray | None = None,
        T_gripper_board: np.ndarray | None = None,
        noise_px: float = 1.0,
        seed: int = 0,
        texture_ppm: float = 2500.0,
        offsamples: int = 0,
    ) -> None:
        import mujoco

        if mode not in ("eye_in_hand", "eye_to_hand"):
            raise ValueError(f"mode must be 'eye_in_hand' or 'eye_to_hand', got {mode!r}")
        self.mode, self.board, self.camera = mode, board, camera
        self.noise_px = float(noise_px)
        self.rng = np.random.default_rng(seed)
        w, h = board.size_m
        self.board_center = np.array([w / 2, h / 2, 0.0])
        if mode == "eye_in_hand":
            T_gripper_cam = make_T(Rotation.from_euler("xyz", [8, -5, 3], degrees=True).as_matrix(), [0.03, -0.02, 0.05]) if T_gripper_cam is None else T_gripper_cam
            T_base_board = make_T(Rotation.from_euler("x", 180, degrees=True).as_matrix(), [0.3, 0.1, 0.0]) if T_base_board is None else T_base_board
            self.truth = RigTruth(camera, T_base_board=np.asarray(T_base_board, float), T_gripper_cam=np.asarray(T_gripper_cam, float))
        else:
            T_gripper_board = make_T(Rotation.from_euler("xyz", [5, 180, -4], degrees=True).as_matrix(), [-w / 2, -h / 2, 0.06]) if T_gripper_board is None else T_gripper_board
            T_base_cam = make_T(look_at([0.0, -0.2, 0.9], [0.0, 0.0, 0.4], up=[0, 1, 0]), [0.0, -0.2, 0.9]) if T_base_cam is None else T_base_cam
            self.truth = RigTruth(camera, T_base_cam=np.asarray(T_base_cam, float), T_gripper_board=np.asarray(T_gripper_board, float))

        # board texture: same margin on each side; texcoord (0,0) is the PNG's top-left corner
        margin = 0.01
        img = board.image(texture_ppm, margin)
        import cv2

        ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
        mw = img.shape[1] / texture_ppm - margin  # far edge incl. rounding of the generated image
        mh = img.shape[0] / texture_ppm - margin
        board_geom = (
            f'<geom type="mesh" mesh="board" material="board" contype="0" conaffinity="0"/>'
        )
        cam_attrs = " ".join(f'{k}="{v}"' for k, v in mujoco_camera_attributes(camera).items())

        def cam_xml(T):
            pos, quat = mujoco_camera_pose(T)
            return f'<camera name="cam" pos="{_fmt(pos)}" quat="{_fmt(quat)}" {cam_attrs}/>'

        def body_xml(T, name, inner):
            pos, quat = T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_quat()[[3, 0, 1, 2]]
            return f'<body name="{name}" pos="{_fmt(pos)}" quat="{_fmt(quat)}">{inner}</body>'

        if mode == "eye_in_hand":
            on_gripper = cam_xml(self.truth.T_gripper_cam)
            in_world = body_xml(self.truth.T_base_board, "board", board_geom)
        else:
            on_gripper = body_xml(self.truth.T_gripper_board, "board", board_geom)
            in_world = cam_xml(self.truth.T_base_cam)
        joints = "".join(
            f'<joint name="{n}" type="slide" axis="{a}" limited="false"/>' for n, a in zip(JOINTS[:3], ("1 0 0", "0 1 0", "0 0 1"))
        ) + "".join(
            f'<joint name="{n}" type="hinge" axis="{a}" limited="false"/>' for n, a in zip(JOINTS[3:], ("0 0 1", "0 1 0", "1 0 0"))
        )
        W, H = camera.width, camera.height
        xml = f"""<mujoco model="calibration_rig">
  <compiler autolimits="true" balanceinertia="true"/>
  <option gravity="0 0 0"/>
  <visual><global offwidth="{max(W, 640)}" offheight="{max(H, 480)}"/><quality shadowsize="0" offsamples="{offsamples}"/>
    <headlight ambient="0.55 0.55 0.55" diffuse="0.45 0.45 0.45" specular="0 0 0"/></visual>
  <asset>
    <texture name="board" type="2d" file="board.png"/>
    <material name="board" texture="board" specular="0" shininess="0" reflectance="0"/>
    <material name="arm" rgba="0.5 0.5 0.55 1"/>
    <mesh name="board" inertia="shell" vertex="{-margin} {-margin} 0  {mw} {-margin} 0  {mw} {mh} 0  {-margin} {mh} 0"
          texcoord="0 0 1 0 1 1 0 1" face="0 2 1 0 3 2"/>
  </asset>
  <worldbody>
    {in_world}
    <body name="gripper">
      {joints}
      <geom type="sphere" size="0.01" material="arm" mass="0.1" contype="0" conaffinity="0"/>
      {on_gripper}
    </body>
  </worldbody>
</mujoco>"""
        self.xml = xml
        self.model = mujoco.MjModel.from_xml_string(xml, {"board.png": png.tobytes()})
        self.data = mujoco.MjData(self.model)
        self._gripper = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "gripper")
        self._renderer = None
        self._distortion_maps = self._maps(camera) if np.any(camera.D) else None
        mujoco.mj_forward(self.model, self.data)

    @staticmethod
    def _maps(camera: CameraModel):
        """remap() tables that turn MuJoCo's ideal pinhole image into one with ``camera``'s lens distortion."""
        import cv2

        u, v = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
        distorted = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
        if camera.distortion_model == "equidistant":
            ideal = cv2.fisheye.undistortPoints(distorted, camera.K, camera.D[:4], P=camera.K)
        else:
            ideal = cv2.undistortPointsIter(distorted, camera.K, camera.D, None, camera.K,
                                            (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9))
        ideal = ideal.reshape(camera.height, camera.width, 2).astype(np.float32)
        return ideal[..., 0].copy(), ideal[..., 1].copy()

    # --- kinematics -----------------------------------------------------------------------------
    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINTS

    def ik(self, T_base_gripper: np.ndarray) -> np.ndarray:
        """Joint positions that put the gripper at ``T_base_gripper`` (slides xyz, then intrinsic z-y-x)."""
        T = np.asarray(T_base_gripper, float)
        yaw, pitch, roll = Rotation.from_matrix(T[:3, :3]).as_euler("ZYX")
        return np.array([*T[:3, 3], yaw, pitch, roll])

    def fk(self, q: np.ndarray) -> np.ndarray:
        """``T_base_gripper`` from joint positions, by MuJoCo's kinematics."""
        import mujoco

        self.set_joints(q)
        return make_T(self.data.xmat[self._gripper].reshape(3, 3).copy(), self.data.xpos[self._gripper].copy())

    def set_joints(self, q: np.ndarray) -> None:
        import mujoco

        q = np.asarray(q, float).reshape(-1)
        if q.size != 6:
            raise ValueError(f"the rig arm has 6 joints {JOINTS}, got {q.size} values")
        self.data.qpos[:] = q
        self.data.qvel[:] = 0
        mujoco.mj_kinematics(self.model, self.data)

    def T_cam_board(self) -> np.ndarray:
        """The true board pose in the camera's optical frame at the current joint state."""
        G = make_T(self.data.xmat[self._gripper].reshape(3, 3), self.data.xpos[self._gripper])
        t = self.truth
        if self.mode == "eye_in_hand":
            return invert(G @ t.T_gripper_cam) @ t.T_base_board
        return invert(t.T_base_cam) @ G @ t.T_gripper_board

    # --- rendering ------------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """RGB uint8 image of the camera at the current joint state (with pixel noise)."""
        import mujoco

        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.camera.height, self.camera.width)
        mujoco.mj_forward(self.model, self.data)
        self._renderer.update_scene(self.data, camera="cam")
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        img = self._renderer.render()
        if self._distortion_maps is not None:  # MuJoCo renders no lens distortion: add the camera's
            import cv2

            img = cv2.remap(img, *self._distortion_maps, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if self.noise_px > 0:
            img = np.clip(img + self.rng.normal(0, self.noise_px, img.shape), 0, 255).astype(np.uint8)
        return img

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- poses ----------------------------------------------------------------------------------
    def view_joints(self, n: int, distance=(0.32, 0.5), max_tilt_deg: float = 35.0, max_roll_deg: float = 30.0,
                    jitter_m: float = 0.04) -> list[np.ndarray]:
        """``n`` joint vectors whose views show the whole board from well-spread directions."""
        out = []
        for _ in range(n):
            T_cam_board = self._random_cam_board(distance, max_tilt_deg, max_roll_deg, jitter_m)
            t = self.truth
            if self.mode == "eye_in_hand":
                T_base_cam = t.T_base_board @ invert(T_cam_board)
                G = T_base_cam @ invert(t.T_gripper_cam)
            else:
                G = t.T_base_cam @ T_cam_board @ invert(t.T_gripper_board)
            out.append(self.ik(G))
        return out

    def _random_cam_board(self, distance, max_tilt_deg, max_roll_deg, jitter_m) -> np.ndarray:
        rng = self.rng
        tilt = np.radians(max_tilt_deg) * np.sqrt(rng.uniform(0.15, 1.0))
        az = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(*distance)
        # camera on the printed side of the board (board -z), looking at a point near the centre
        direction = np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), -np.cos(tilt)])
        target = self.board_center + np.r_[rng.uniform(-jitter_m, jitter_m, 2), 0.0]
        eye = self.board_center + d * direction
        R_board_cam = look_at(eye, target, up=[0, -1, 0])
        roll = np.radians(rng.uniform(-max_roll_deg, max_roll_deg))
        R_board_cam = R_board_cam @ Rotation.from_rotvec([0, 0, roll]).as_matrix()
        return invert(make_T(R_board_cam, eye))


def default_rig(mode="eye_in_hand", noise_px=1.0, seed=0, camera: CameraModel | None = None, board: Board | None = None) -> SyntheticRig:
    """The rig of the tests: 7x5 board of 40 mm squares, a 640x480 camera with an off-centre principal point."""
    board = board or Board(squares_x=7, squares_y=5, square_length=0.04, marker_length=0.03, dictionary="5X5_100")
    camera = camera or CameraModel(K=[[615.0, 0, 313.5], [0, 610.0, 243.5], [0, 0, 1]], D=np.zeros(5), width=640, height=480, camera_name="sim")
    return SyntheticRig(board, camera, mode=mode, noise_px=noise_px, seed=seed)


class SimArm:
    """A kinematic arm on the rig: ``command`` moves the joints at once; ``read`` returns them."""

    def __init__(self, rig: SyntheticRig) -> None:
        self.rig = rig
        self.q = np.zeros(6)
        self.joint_names = list(JOINTS)

    def read(self):
        return self.q.copy(), np.zeros(6), time.monotonic()

    def command(self, q_target) -> None:
        self.q = np.asarray(q_target, float).copy()
        self.rig.set_joints(self.q)


class SimCamera:
    """The rig's camera: ``read() -> (RGB image, stamp)``."""

    def __init__(self, rig: SyntheticRig) -> None:
        self.rig = rig

    def read(self):
        return self.rig.render(), time.monotonic()


def projected_views(rig: SyntheticRig, n: int, pixel_noise: float = 0.2, pose_noise_mm: float = 0.0,
                    pose_noise_deg: float = 0.0, seed: int = 0, distortion=None):
    """Hand-eye views of ``rig`` without rendering: corners projected by OpenCV (with ``distortion``,
    a plumb_bob vector, if given) plus Gaussian pixel noise, and gripper poses with optional
    robot-pose noise (as a real arm's kinematic error). Returns ``(T_base_gripper list, detections,
    camera)``; the camera carries the distortion so the detections are consistent with it."""
    import cv2

    from vla_robot.calibration.board import Detection

    rng = np.random.default_rng(seed)
    camera = rig.camera if distortion is None else CameraModel(
        K=rig.camera.K, D=np.asarray(distortion, float), width=rig.camera.width, height=rig.camera.height)
    poses, dets = [], []
    for q in rig.view_joints(n):
        G = rig.fk(q)
        T_cb = rig.T_cam_board()
        rvec = cv2.Rodrigues(T_cb[:3, :3])[0]
        pts = cv2.projectPoints(rig.board.corners, rvec, T_cb[:3, 3], camera.K, camera.D)[0].reshape(-1, 2)
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < camera.width) & (pts[:, 1] >= 0) & (pts[:, 1] < camera.height)
        ids = np.flatnonzero(inside)
        pts = pts[ids] + rng.normal(0, pixel_noise, (len(ids), 2))
        dets.append(Detection(ids, rig.board.corners[ids].copy(), pts, len(ids)))
        if pose_noise_mm or pose_noise_deg:
            dR = Rotation.from_rotvec(np.radians(pose_noise_deg) * rng.normal(size=3)).as_matrix()
            G = make_T(G[:3, :3] @ dR, G[:3, 3] + rng.normal(0, pose_noise_mm / 1000, 3))
        poses.append(G)
    return poses, dets, camera
