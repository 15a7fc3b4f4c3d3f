"""Hand-eye calibration: the five OpenCV methods, their agreement, and a joint reprojection refinement.

Modes (OpenCV's names):

* ``eye_in_hand``: the camera rides on the gripper, the board is fixed in the workspace. Unknowns
  ``A = T_gripper_cam`` and ``B = T_base_board``.
* ``eye_to_hand``: the camera is fixed, the gripper holds the board. Unknowns ``A = T_base_cam``
  and ``B = T_gripper_board``.

Both are one model: a board corner ``p`` seen in view ``i`` is at ``A^-1 M_i B p`` in the camera,
with ``M_i = T_base_gripper_i^-1`` (eye-in-hand) or ``T_base_gripper_i`` (eye-to-hand). The closed-form
methods (TSAI, PARK, HORAUD, ANDREFF, DANIILIDIS; ``method=`` passed by keyword, see
reference/mujoco_twin_calibration.md 4.1) give a start; the refinement minimizes the reprojection
error of every corner in every view over ``(R_A, t_A, R_B, t_B)``, with the rotations refined by
the landing algorithm (:mod:`vla_robot.calibration.landing`) and, in the same run, by the
rotation-vector least-squares baseline; both results and costs are reported.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal, Sequence

import cv2
import numpy as np

from vla_robot.calibration.board import Board, Detection
from vla_robot.calibration.camera_model import CameraModel
from vla_robot.calibration.config import HandEyeConfig
from vla_robot.calibration.geometry import invert, make_T, pose_error, rotation_angle_deg
from vla_robot.calibration.intrinsics import CalibrationError, view_problem
from vla_robot.calibration.landing import RefineResult, landing_least_squares, rotvec_least_squares

__all__ = [
    "HandEyeResult",
    "calibrate_hand_eye",
    "opencv_hand_eye",
    "check_motion",
    "board_pose",
    "undistort_points",
    "METHODS",
]

Mode = Literal["eye_in_hand", "eye_to_hand"]
METHODS = {
    "TSAI": cv2.CALIB_HAND_EYE_TSAI,
    "PARK": cv2.CALIB_HAND_EYE_PARK,
    "HORAUD": cv2.CALIB_HAND_EYE_HORAUD,
    "ANDREFF": cv2.CALIB_HAND_EYE_ANDREFF,
    "DANIILIDIS": cv2.CALIB_HAND_EYE_DANIILIDIS,
}


def undistort_points(points: np.ndarray, camera: CameraModel) -> np.ndarray:
    """Pixel points with the lens distortion removed (ideal pinhole pixels of ``camera.K``)."""
    pts = np.asarray(points, np.float64).reshape(-1, 1, 2)
    if not np.any(camera.D) or camera.distortion_model == "none":
        return pts.reshape(-1, 2).copy()
    if camera.distortion_model == "equidistant":
        out = cv2.fisheye.undistortPoints(pts, camera.K, camera.D[:4], P=camera.K)
    else:
        out = cv2.undistortPoints(pts, camera.K, camera.D, P=camera.K)
    return out.reshape(-1, 2)


def _project(K: np.ndarray, pc: np.ndarray) -> np.ndarray:
    z = pc[:, 2]
    x, y = pc[:, 0] / z, pc[:, 1] / z
    return np.column_stack([K[0, 0] * x + K[0, 1] * y + K[0, 2], K[1, 1] * y + K[1, 2]])


def board_pose(det: Detection, camera: CameraModel) -> tuple[np.ndarray, float]:
    """``T_cam_board`` from one detection by PnP, and its RMS reprojection error in pixels."""
    ideal = undistort_points(det.image_points, camera)
    ok, rvec, tvec = cv2.solvePnP(det.object_points, ideal, camera.K, None, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise CalibrationError("PnP failed")
    rvec, tvec = cv2.solvePnPRefineLM(det.object_points, ideal, camera.K, None, rvec, tvec)
    T = make_T(cv2.Rodrigues(rvec)[0], tvec.ravel())
    pc = det.object_points @ T[:3, :3].T + T[:3, 3]
    err = float(np.sqrt(np.mean(np.sum((_project(camera.K, pc) - ideal) ** 2, axis=1))))
    return T, err


def check_motion(T_base_gripper: Sequence[np.ndarray], config: HandEyeConfig | None = None) -> dict:
    """Raise :class:`CalibrationError` when the gripper motions cannot determine the hand-eye transform.

    Hand-eye needs relative rotations of several degrees about at least two different axes
    (rotations about a single axis leave the translation along it unknown; pure translations leave
    the rotation unknown). Returns the measures: largest relative rotation and axis spread.
    """
    cfg = config or HandEyeConfig()
    axes, angles = [], []
    for Ga, Gb in itertools.combinations(T_base_gripper, 2):
        R = Ga[:3, :3].T @ Gb[:3, :3]
        ang = rotation_angle_deg(R)
        angles.append(ang)
        if ang >= cfg.min_rotation_deg:
            w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
            if np.linalg.norm(w) > 1e-9:
                axes.append(w / np.linalg.norm(w))
            else:  # 180 degrees: axis from the symmetric part
                vals, vecs = np.linalg.eigh(R + np.eye(3))
                axes.append(vecs[:, -1])
    max_angle = max(angles) if angles else 0.0
    if not axes:
        raise CalibrationError(
            f"degenerate motion: the gripper rotates at most {max_angle:.1f} degrees between views (need "
            f">= {cfg.min_rotation_deg:g} degrees about two or more different axes). Pure translations cannot give the "
            "camera rotation: record poses where the wrist is tilted 15-45 degrees in different directions."
        )
    A = np.array(axes)
    ev = np.sort(np.linalg.eigvalsh(A.T @ A / len(A)))[::-1]
    spread = float(ev[1] / ev[0])
    if spread < cfg.min_axis_spread:
        axis = np.linalg.eigh(A.T @ A)[1][:, -1]
        raise CalibrationError(
            f"degenerate motion: all gripper rotations are about one axis (~{np.round(axis, 2).tolist()} in the gripper "
            f"frame; axis spread {spread:.3f} < {cfg.min_axis_spread}). The translation along that axis cannot be "
            "recovered: add poses that rotate the wrist about other axes (tilt, not just turn)."
        )
    return {"max_relative_rotation_deg": float(max_angle), "axis_spread": spread, "rotating_pairs": len(axes)}


def opencv_hand_eye(
    T_base_gripper: Sequence[np.ndarray], T_cam_board: Sequence[np.ndarray], mode: Mode, methods: Sequence[str] = tuple(METHODS)
) -> dict[str, np.ndarray]:
    """``A`` (``T_gripper_cam`` or ``T_base_cam``) from each OpenCV method."""
    if mode == "eye_in_hand":
        G = [np.asarray(T, float) for T in T_base_gripper]          # gripper -> base
    elif mode == "eye_to_hand":
        G = [invert(T) for T in T_base_gripper]                     # base -> gripper (OpenCV's recipe)
    else:
        raise ValueError(f"mode must be 'eye_in_hand' or 'eye_to_hand', got {mode!r}")
    Rg, tg = [T[:3, :3] for T in G], [T[:3, 3].reshape(3, 1) for T in G]
    Rt, tt = [T[:3, :3] for T in T_cam_board], [T[:3, 3].reshape(3, 1) for T in T_cam_board]
    out = {}
    for name in methods:
        R, t = cv2.calibrateHandEye(Rg, tg, Rt, tt, method=METHODS[name])  # keyword: positional 5th is an output
        if R is None or not np.all(np.isfinite(R)) or not np.all(np.isfinite(t)):
            continue
        U, _, Vt = np.linalg.svd(R)  # OpenCV returns R orthogonal to ~1e-9; make it exact for the start
        out[name] = make_T(U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt, t.ravel())
    return out


def reprojection_residual(
    T_base_gripper: Sequence[np.ndarray], detections: Sequence[Detection], camera: CameraModel, mode: Mode,
    pose_sigma: tuple[float, float, float] | None = None,
):
    """The joint reprojection residual ``r(Xs=[R_A, R_B], v)``, the ``M_i``, and the Jacobian sparsity.

    A corner ``p`` of view ``i`` is predicted at ``K * R_A^T (M_i (R_B p + t_B) - t_A)``; ``R_A^T`` rather
    than ``R_A^-1`` makes the cost defined (and smooth) for any 3x3 matrix, as the landing iterates need.
    ``v = [t_A, t_B]`` and the residual is in (undistorted) pixels.

    With ``pose_sigma = (sigma_px, sigma_mm, sigma_deg)`` the arm's poses are not trusted exactly:
    each view gets a correction ``T_base_gripper_i <- [R_i Exp(w_i), t_i + d_i]`` (appended to ``v``,
    6 per view) with a Gaussian prior of the arm's accuracy, and the residual is whitened (pixels /
    sigma_px, corrections / their sigma): the maximum-likelihood estimate when both the images and
    the arm's kinematics are noisy.
    """
    if mode not in ("eye_in_hand", "eye_to_hand"):
        raise ValueError(f"mode must be 'eye_in_hand' or 'eye_to_hand', got {mode!r}")
    obj = np.concatenate([d.object_points for d in detections])
    img = np.concatenate([undistort_points(d.image_points, camera) for d in detections])
    idx = np.concatenate([np.full(d.count, i) for i, d in enumerate(detections)])
    Ms = np.array([invert(Tg) if mode == "eye_in_hand" else np.asarray(Tg, float) for Tg in T_base_gripper])
    K = camera.K
    V = len(detections)

    if pose_sigma is None:
        M_R, M_t = Ms[idx, :3, :3], Ms[idx, :3, 3]

        def residual(Xs, v):
            RA, RB = Xs
            pb = obj @ RB.T + v[3:6]
            pm = np.einsum("nij,nj->ni", M_R, pb) + M_t
            pc = (pm - v[0:3]) @ RA  # row-wise R_A^T (p - t_A)
            return (_project(K, pc) - img).ravel()

        return residual, Ms, None

    from scipy.spatial.transform import Rotation

    s_px, s_mm, s_deg = pose_sigma
    if s_px <= 0 or s_mm <= 0 or s_deg <= 0:
        raise ValueError(f"pose_sigma must be three positive numbers (px, mm, deg), got {pose_sigma}")
    s_m, s_rad = s_mm / 1000.0, np.radians(s_deg)
    GR = np.array([np.asarray(T, float)[:3, :3] for T in T_base_gripper])
    Gt = np.array([np.asarray(T, float)[:3, 3] for T in T_base_gripper])

    def residual(Xs, v):
        RA, RB = Xs
        d = v[6:].reshape(V, 6)
        R = GR @ Rotation.from_rotvec(d[:, :3]).as_matrix()
        t = Gt + d[:, 3:]
        pb = obj @ RB.T + v[3:6]
        if mode == "eye_in_hand":  # M = G^-1: R^T (x - t)
            pm = np.einsum("nji,nj->ni", R[idx], pb - t[idx])
        else:  # M = G
            pm = np.einsum("nij,nj->ni", R[idx], pb) + t[idx]
        pc = (pm - v[0:3]) @ RA
        return np.r_[(_project(K, pc) - img).ravel() / s_px, (d[:, :3] / s_rad).ravel(), (d[:, 3:] / s_m).ravel()]

    n_img = 2 * len(obj)
    rows_view = np.repeat(idx, 2)
    sparsity = np.zeros((n_img + 6 * V, 12 + 6 * V), bool)
    sparsity[:n_img, :12] = True
    for i in range(V):
        for k in range(6):
            col = 12 + 6 * i + k
            sparsity[:n_img, col] = rows_view == i
            sparsity[n_img + (3 * i + k if k < 3 else 3 * V + 3 * i + k - 3), col] = True
    return residual, Ms, sparsity


def _average_pose(Ts: Sequence[np.ndarray]) -> np.ndarray:
    M = np.mean([T[:3, :3] for T in Ts], axis=0)
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
    return make_T(R, np.mean([T[:3, 3] for T in Ts], axis=0))


@dataclass
class HandEyeResult:
    mode: Mode
    T: np.ndarray                               # refined A: T_gripper_cam (eye_in_hand) or T_base_cam
    T_board: np.ndarray                         # refined B: T_base_board (eye_in_hand) or T_gripper_board
    methods: dict[str, np.ndarray]              # closed-form A of each OpenCV method
    method_rms_px: dict[str, float]             # reprojection RMS of each method (with its best B)
    spread: dict[str, float]                    # largest pairwise disagreement between the methods
    landing: RefineResult
    baseline: RefineResult
    initial_rms_px: float
    rms_px: float
    chosen: str                                 # "landing" (or "rotvec_lsq" if landing ended worse)
    views: list[str]
    rejected: dict[str, str]
    motion: dict
    view_errors_px: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    n_points: int = 0                           # corners in the refinement
    method_deviation: dict[str, tuple[float, float]] = field(default_factory=dict)  # (deg, mm) from the refined T
    pose_corrections: np.ndarray | None = None  # per view [w (rad), d (m)] when the arm's poses were refined too

    @property
    def parent_frame(self) -> str:
        return "gripper" if self.mode == "eye_in_hand" else "base"

    def summary(self) -> str:
        from scipy.spatial.transform import Rotation

        lines = [f"hand-eye ({self.mode}) from {len(self.views)} views ({len(self.rejected)} rejected); "
                 f"motion: max relative rotation {self.motion['max_relative_rotation_deg']:.1f} deg, axis spread {self.motion['axis_spread']:.2f}"]
        for name, T in self.methods.items():
            rv = Rotation.from_matrix(T[:3, :3]).as_rotvec(degrees=True)
            lines.append(f"  {name:<10s} t [mm] {np.array2string(T[:3, 3] * 1000, precision=2)}  rotvec [deg] "
                         f"{np.array2string(rv, precision=3)}  reprojection RMS {self.method_rms_px[name]:.3f} px  "
                         f"off refined by {self.method_deviation[name][0]:.3f} deg, {self.method_deviation[name][1]:.2f} mm")
        lines.append(f"  agreement: methods differ by up to {self.spread['rotation_deg']:.3f} deg and {self.spread['translation_mm']:.2f} mm")
        for r in (self.landing, self.baseline):
            lines.append(
                f"  refine {r.method:<10s}: cost {r.cost:.6g}, "
                f"{r.iterations} iterations, {r.evaluations} residual evaluations, {r.seconds * 1000:.1f} ms, "
                f"max|R^T R - I| {r.orthogonality:.1e}"
            )
        d_rot, d_mm = pose_error(make_T(self.landing.rotations[0], self.landing.vector[:3]),
                                 make_T(self.baseline.rotations[0], self.baseline.vector[:3]))
        lines.append(f"  landing vs baseline: {d_rot:.2e} deg, {d_mm:.2e} mm apart; chosen: {self.chosen}; "
                     f"RMS {self.initial_rms_px:.3f} px -> {self.rms_px:.3f} px")
        if self.pose_corrections is not None:
            c = self.pose_corrections
            lines.append(f"  arm pose corrections (prior from pose_sigma): up to {np.degrees(np.linalg.norm(c[:, :3], axis=1)).max():.3f} deg, "
                         f"{np.linalg.norm(c[:, 3:], axis=1).max() * 1000:.2f} mm")
        lines += [f"  rejected {n}: {r}" for n, r in self.rejected.items()]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def calibrate_hand_eye(
    T_base_gripper: Sequence[np.ndarray],
    detections: Sequence[Detection],
    camera: CameraModel,
    board: Board,
    mode: Mode = "eye_in_hand",
    config: HandEyeConfig | None = None,
    names: Sequence[str] | None = None,
) -> HandEyeResult:
    """Hand-eye calibration from gripper poses (forward kinematics) and board detections, one per view."""
    cfg = config or HandEyeConfig()
    cfg.validate()
    if mode not in ("eye_in_hand", "eye_to_hand"):
        raise ValueError(f"mode must be 'eye_in_hand' or 'eye_to_hand', got {mode!r}")
    if len(T_base_gripper) != len(detections):
        raise ValueError(f"{len(T_base_gripper)} gripper poses but {len(detections)} board views; give one pose per view")
    names = list(names) if names is not None else [f"view_{i:03d}" for i in range(len(detections))]
    rejected: dict[str, str] = {}
    used, used_dets, G, T_cb, errs = [], [], [], [], {}
    for name, Tg, det in zip(names, T_base_gripper, detections):
        Tg = np.asarray(Tg, float)
        if Tg.shape != (4, 4) or not np.all(np.isfinite(Tg)) or abs(np.linalg.det(Tg[:3, :3]) - 1) > 1e-3:
            rejected[name] = "gripper pose is not a 4x4 rigid transform"
            continue
        problem = view_problem(det, board, cfg.min_corners)
        if problem:
            rejected[name] = problem
            continue
        T, err = board_pose(det, camera)
        if err > cfg.max_view_error_px:
            rejected[name] = f"board pose fits badly ({err:.2f} px > {cfg.max_view_error_px} px): wrong intrinsics or a bad detection"
            continue
        used.append(name)
        used_dets.append(det)
        G.append(Tg)
        T_cb.append(T)
        errs[name] = err
    if len(used) < cfg.min_views:
        why = "; ".join(f"{n}: {r}" for n, r in list(rejected.items())[:5])
        raise CalibrationError(
            f"only {len(used)} usable views of {len(names)} (need {cfg.min_views}){' - ' + why if why else ''}. "
            f"Record at least {cfg.min_views} poses with the whole board in view and the wrist tilted differently in each."
        )
    max_drop = int(cfg.max_outlier_fraction * len(used))
    while True:
        sigma_px = max(float(np.median(list(errs.values()))) / np.sqrt(2), 0.05)  # per coordinate, from the PnP fits
        solved = _solve(G, T_cb, used_dets, camera, mode, cfg, sigma_px)
        per_view = solved["per_view_rms"]
        median = float(np.median(per_view))
        worst = int(np.argmax(per_view))
        if (per_view[worst] > max(cfg.outlier_factor * median, cfg.outlier_min_px) and max_drop > 0
                and len(used) > cfg.min_views):
            rejected[used[worst]] = (
                f"inconsistent with the other views ({per_view[worst]:.2f} px vs median {median:.2f} px after the joint fit): "
                "its gripper pose or image is off (arm still moving, wrong joint reading, a bad detection)"
            )
            for lst in (used, used_dets, G, T_cb):
                del lst[worst]
            errs = {k: v for k, v in errs.items() if k in used}
            max_drop -= 1
            continue
        break
    motion, methods, method_rms, spread, landing, baseline, r0, best, n = (
        solved[k] for k in ("motion", "methods", "method_rms", "spread", "landing", "baseline", "r0", "best", "n"))
    warnings = list(solved["warnings"])
    T = make_T(best.rotations[0], best.vector[:3])
    T_board = make_T(best.rotations[1], best.vector[3:6])
    deviation = {name: pose_error(A, T) for name, A in methods.items()}
    rms = solved["rms"]
    pnp = float(np.median(list(errs.values())))
    if rms > 3 * pnp and rms > 0.5 and solved["pose_corrections"] is None:
        warnings.append(
            f"the joint reprojection RMS ({rms:.2f} px) is far above the single-view PnP fits ({pnp:.2f} px): the arm's "
            "poses disagree with the images (kinematic error, or poses and images not taken at the same moment). "
            "The refinement trusts the poses, so here it can be worse than the closed-form methods: give the arm's "
            "accuracy (handeye.pose_sigma_mm, handeye.pose_sigma_deg) to refine the poses too"
        )
    off = [f"{m} ({d[0]:.2f} deg, {d[1]:.1f} mm)" for m, d in deviation.items()
           if d[0] > cfg.disagreement_deg or d[1] > cfg.disagreement_mm]
    if off:
        warnings.append(
            f"OpenCV methods far from the refined result: {', '.join(off)}; if most methods are off, check the arm's "
            "forward kinematics, the time sync of poses and images, and add more varied poses"
        )
    res = HandEyeResult(
        mode=mode, T=T, T_board=T_board, methods=methods, method_rms_px=method_rms, spread=spread,
        landing=landing, baseline=baseline, initial_rms_px=float(np.sqrt(r0 @ r0 / n)),
        rms_px=rms, chosen=best.method, views=used, rejected=rejected,
        motion=motion, view_errors_px=errs, warnings=warnings, n_points=n, method_deviation=deviation,
        pose_corrections=solved["pose_corrections"],
    )
    return res


def _solve(G, T_cb, dets, camera, mode, cfg, sigma_px) -> dict:
    """Closed-form methods, then the joint refinement (landing and baseline) on one set of views."""
    motion = check_motion(G, cfg)
    methods = opencv_hand_eye(G, T_cb, mode, cfg.methods)
    if cfg.initial_method not in methods:
        raise CalibrationError(f"OpenCV {cfg.initial_method} gave no solution; the poses are probably degenerate")
    n = sum(d.count for d in dets)
    residual, Ms, _ = reprojection_residual(G, dets, camera, mode)  # pixels, poses as given
    use_prior = cfg.pose_sigma_mm > 0 and cfg.pose_sigma_deg > 0
    if use_prior:
        objective, _, sparsity = reprojection_residual(G, dets, camera, mode, (sigma_px, cfg.pose_sigma_mm, cfg.pose_sigma_deg))
        extra = np.zeros(6 * len(dets))
    else:
        objective, sparsity, extra = residual, None, np.zeros(0)

    def board_for(A):
        return _average_pose([invert(Ms[i]) @ A @ T_cb[i] for i in range(len(dets))])

    method_rms = {}
    for name, A in methods.items():
        B = board_for(A)
        r = residual([A[:3, :3], B[:3, :3]], np.r_[A[:3, 3], B[:3, 3]])
        method_rms[name] = float(np.sqrt(r @ r / n))
    pairs = list(itertools.combinations(methods.values(), 2))
    spread = {
        "rotation_deg": max((pose_error(a, b)[0] for a, b in pairs), default=0.0),
        "translation_mm": max((pose_error(a, b)[1] for a, b in pairs), default=0.0),
    }
    A0 = methods[cfg.initial_method]
    B0 = board_for(A0)
    x0_rot, x0_vec = [A0[:3, :3], B0[:3, :3]], np.r_[A0[:3, 3], B0[:3, 3], extra]
    landing = landing_least_squares(objective, x0_rot, x0_vec, eta=cfg.landing_eta, lam=cfg.landing_lambda,
                                    max_iters=cfg.landing_max_iters, tol=cfg.landing_tol, jac_sparsity=sparsity)
    baseline = rotvec_least_squares(objective, x0_rot, x0_vec)
    warnings = []
    best = landing if landing.cost <= baseline.cost * (1 + 1e-6) + 1e-12 else baseline
    if best is baseline:
        warnings.append(f"landing ended at a higher cost ({landing.cost:.6g}) than the baseline ({baseline.cost:.6g}); using the baseline")
    if use_prior:  # the image residual with the corrected poses, in pixels
        r = objective(best.rotations, best.vector)[: 2 * n].reshape(-1, 2) * sigma_px
    else:
        r = residual(best.rotations, best.vector).reshape(-1, 2)
    bounds = np.cumsum([0] + [d.count for d in dets])
    per_view = np.array([np.sqrt(np.mean(np.sum(r[a:b] ** 2, axis=1))) for a, b in zip(bounds[:-1], bounds[1:])])
    return {"motion": motion, "methods": methods, "method_rms": method_rms, "spread": spread, "landing": landing,
            "baseline": baseline, "r0": residual(x0_rot, x0_vec[:6]), "best": best, "n": n, "warnings": warnings,
            "per_view_rms": per_view, "rms": float(np.sqrt(np.mean(np.sum(r ** 2, axis=1)))),
            "pose_corrections": best.vector[6:].reshape(-1, 6) if use_prior else None}
