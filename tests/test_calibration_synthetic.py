"""End to end on views rendered by MuJoCo with known camera geometry (vla_robot.calibration.synthetic):
intrinsics within 0.5 px, hand-eye within 0.2 deg and 1 mm in both modes, the landing refinement
orthogonal to 1e-6 and at least as accurate as the rotation-vector baseline, capture through the
driver interface, and the `vla-robot calibrate` chain."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from vla_robot.calibration.board import Board
from vla_robot.calibration.camera_model import CameraModel, load_camera_info, load_extrinsics, save_camera_info
from vla_robot.calibration.capture import capture_views, load_views
from vla_robot.calibration.geometry import make_T, pose_error
from vla_robot.calibration.handeye import calibrate_hand_eye, reprojection_residual
from vla_robot.calibration.intrinsics import CalibrationError, calibrate_intrinsics
from vla_robot.calibration.landing import landing_least_squares, orthogonality_error, rotvec_least_squares
from vla_robot.calibration.synthetic import SimArm, SimCamera, SyntheticRig, default_rig

ROT_DEG, TRANS_MM = 0.2, 1.0


def test_intrinsics_recovered_within_half_pixel_and_bad_views_rejected(tmp_path):
    board = Board(squares_x=9, squares_y=7, square_length=0.03, marker_length=0.022, dictionary="5X5_100")
    truth = CameraModel(K=[[615.0, 0, 313.5], [0, 610.0, 243.5], [0, 0, 1]], D=np.zeros(5), width=640, height=480)
    rig = default_rig("eye_to_hand", seed=2, camera=truth, board=board)
    images = {}
    try:
        for i, q in enumerate(rig.view_joints(20, max_tilt_deg=45)):
            rig.set_joints(q)
            images[f"view_{i:02d}"] = rig.render()
        images["blank"] = np.full_like(images["view_00"], 40)
        cropped = images["view_03"].copy()
        cropped[:, 200:] = 0  # most of the board cut off
        images["cropped"] = cropped
    finally:
        rig.close()
    # a view through another lens (a zoomed camera): a reprojection outlier
    zoom = CameraModel(K=[[760.0, 0, 330.0], [0, 760.0, 230.0], [0, 0, 1]], D=np.zeros(5), width=640, height=480)
    other = default_rig("eye_to_hand", seed=5, camera=zoom, board=board)
    try:
        other.set_joints(other.view_joints(1, max_tilt_deg=40)[0])
        images["other_lens"] = other.render()
    finally:
        other.close()

    res = calibrate_intrinsics(images, board, camera_name="sim")
    cam = res.camera
    errors = np.abs([cam.fx - 615.0, cam.fy - 610.0, cam.cx - 313.5, cam.cy - 243.5])
    assert errors.max() < 0.5, (errors, res.summary())
    assert res.rms_px < 0.5
    assert res.rejected["blank"].startswith("no board found")
    assert "corners" in res.rejected["cropped"]
    assert res.rejected["other_lens"].startswith("reprojection error")
    assert len(res.view_errors_px) == 20
    back = load_camera_info(save_camera_info(cam, tmp_path / "sim.yaml"))
    assert np.allclose(back.K, cam.K) and np.allclose(back.D, cam.D)


def test_intrinsics_with_lens_distortion():
    """A distorted lens (the rig applies the camera's D to the render): K within 1 px and the fitted
    model agrees with the true lens within 1 px on every ray the views observed."""
    import cv2

    board = Board(squares_x=9, squares_y=7, square_length=0.03, marker_length=0.022, dictionary="5X5_100")
    truth = CameraModel(K=[[615.0, 0, 313.5], [0, 610.0, 243.5], [0, 0, 1]], D=[-0.2, 0.06, 0.0008, -0.0005, 0.0],
                        width=640, height=480)
    rig = default_rig("eye_to_hand", seed=1, camera=truth, board=board)
    images = []
    try:
        for q in rig.view_joints(20, max_tilt_deg=45):
            rig.set_joints(q)
            images.append(rig.render())
    finally:
        rig.close()
    res = calibrate_intrinsics(images, board)
    cam = res.camera
    assert np.abs(cam.K - truth.K).max() < 1.0, cam.K
    assert res.rms_px < 0.5 and cam.D[0] < -0.15  # barrel distortion found
    seen = np.concatenate([d.image_points for d in res.detections.values()])
    rays = cv2.undistortPointsIter(seen.reshape(-1, 1, 2), truth.K, truth.D, None, None,
                                   (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)).reshape(-1, 2)
    fitted = cv2.projectPoints(np.c_[rays, np.ones(len(rays))], np.zeros(3), np.zeros(3), cam.K, cam.D)[0].reshape(-1, 2)
    assert np.abs(fitted - seen).max() < 1.0


@pytest.fixture(scope="module", params=["eye_in_hand", "eye_to_hand"])
def captured(request, tmp_path_factory):
    """15 views captured through the driver interface (SimArm/SimCamera), written to disk and read back."""
    mode = request.param
    rig = default_rig(mode, seed=1)
    out = tmp_path_factory.mktemp(mode)
    try:
        capture_views(SimArm(rig), SimCamera(rig), rig.view_joints(15), out, fk=rig.fk,
                      joint_names=rig.joint_names, settle_s=0.0, progress=False)
        views = load_views(out)
        dets = [rig.board.detect(img) for img in views.images]
        fk_check = [rig.fk(q) for q in views.joints]
    finally:
        rig.close()
    return mode, rig, views, dets, fk_check, out


def test_capture_writes_joints_and_gripper_poses(captured):
    mode, rig, views, dets, fk_check, out = captured
    doc = yaml.safe_load((out / "views.yaml").read_text())
    assert doc["joint_names"] == list(rig.joint_names) and len(doc["views"]) == 15
    for T_file, T_fk in zip(views.gripper_poses, fk_check):
        assert pose_error(T_file, T_fk)[0] < 1e-6 and pose_error(T_file, T_fk)[1] < 1e-6
    assert all(d.count >= 15 for d in dets)


def test_hand_eye_within_spec_and_landing_vs_baseline(captured):
    mode, rig, views, dets, _, _ = captured
    res = calibrate_hand_eye(views.gripper_poses, dets, rig.camera, rig.board, mode, names=views.names)
    truth = rig.truth.T_gripper_cam if mode == "eye_in_hand" else rig.truth.T_base_cam
    truth_board = rig.truth.T_base_board if mode == "eye_in_hand" else rig.truth.T_gripper_board
    for name, T in res.methods.items():
        rot, mm = pose_error(T, truth)
        assert rot < ROT_DEG and mm < TRANS_MM, (name, rot, mm)
    rot, mm = pose_error(res.T, truth)
    assert rot < ROT_DEG and mm < TRANS_MM, res.summary()
    assert pose_error(res.T_board, truth_board)[0] < ROT_DEG and pose_error(res.T_board, truth_board)[1] < TRANS_MM
    # landing: on the manifold at the end, and at least as good as the rotation-vector baseline
    assert res.landing.orthogonality < 1e-6 and orthogonality_error(res.T[:3, :3]) < 1e-6
    assert res.landing.cost <= res.baseline.cost * (1 + 1e-9)
    base = make_T(res.baseline.rotations[0], res.baseline.vector[:3])
    rot_b, mm_b = pose_error(base, truth)
    assert rot <= rot_b + 1e-6 and mm <= mm_b + 1e-6
    assert res.rms_px < res.initial_rms_px and res.rms_px < 0.3
    assert res.chosen == "landing" and not res.warnings


def test_landing_lands_from_a_non_orthogonal_start(captured):
    """Started off the manifold (no projection first), landing ends orthogonal at the baseline's optimum."""
    mode, rig, views, dets, _, _ = captured
    residual, _, _ = reprojection_residual(views.gripper_poses, dets, rig.camera, mode)
    t = rig.truth
    A = t.T_gripper_cam if mode == "eye_in_hand" else t.T_base_cam
    B = t.T_base_board if mode == "eye_in_hand" else t.T_gripper_board
    rng = np.random.default_rng(0)
    RA0 = A[:3, :3] + 0.03 * rng.normal(size=(3, 3))
    RB0 = B[:3, :3] + 0.03 * rng.normal(size=(3, 3))
    v0 = np.r_[A[:3, 3], B[:3, 3]] + rng.normal(0, 0.005, 6)
    assert orthogonality_error(RA0) > 1e-2
    land = landing_least_squares(residual, [RA0, RB0], v0)
    U, _, Vt = np.linalg.svd(RA0)
    W, _, Zt = np.linalg.svd(RB0)
    base = rotvec_least_squares(residual, [U @ Vt, W @ Zt], v0)
    assert land.orthogonality < 1e-6
    assert land.cost <= base.cost * (1 + 1e-6)
    rot, mm = pose_error(make_T(land.rotations[0], land.vector[:3]), make_T(base.rotations[0], base.vector[:3]))
    assert rot < 1e-4 and mm < 1e-3
    costs = [c for _, c in land.history]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(costs, costs[1:]))  # every accepted step lowers the cost


class _StuckArm(SimArm):
    """A servo bus that accepts commands but never moves (the lowest-level fault)."""

    def command(self, q_target) -> None:
        pass


def test_capture_skips_unreachable_targets_and_says_so(tmp_path, capsys):
    rig = default_rig("eye_in_hand", seed=3)
    try:
        with pytest.raises(CalibrationError, match="no view was captured"):
            capture_views(_StuckArm(rig), SimCamera(rig), rig.view_joints(2), tmp_path, timeout_s=0.1, settle_s=0, progress=False)
        assert "target not reached" in capsys.readouterr().out
        with pytest.raises(CalibrationError, match="different lengths"):
            capture_views(SimArm(rig), SimCamera(rig), [[0.0] * 6, [0.0] * 5], tmp_path, progress=False)
    finally:
        rig.close()


def test_cli_capture_intrinsics_handeye_chain(tmp_path, capsys):
    from vla_robot.cli import main

    views = tmp_path / "views"
    assert main(["calibrate", "capture", "--arm", "sim", "--out", str(views), "--count", "14", "--seed", "4"]) == 0
    assert main(["calibrate", "intrinsics", "--images", str(views), "--board", str(views / "board.yaml"),
                 "--out", str(tmp_path / "cam.yaml"), "--set", "intrinsics.min_views=6", "--report", str(tmp_path / "rep")]) == 0
    assert main(["calibrate", "handeye", "--mode", "eye_in_hand", "--views", str(views), "--camera", str(tmp_path / "cam.yaml"),
                 "--board", str(views / "board.yaml"), "--out", str(tmp_path / "ext.yaml"), "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "refine landing" in out and "refine rotvec_lsq" in out and "DANIILIDIS" in out
    cam, true_cam = load_camera_info(tmp_path / "cam.yaml"), load_camera_info(views / "truth_camera.yaml")
    assert np.abs(cam.K - true_cam.K).max() < 2.0
    ext, truth = load_extrinsics(tmp_path / "ext.yaml"), load_extrinsics(views / "truth_extrinsics.yaml")
    assert ext.parent_frame == "gripper" and ext.child_frame == "cam_optical"
    rot, mm = pose_error(ext.T, truth.T)
    assert rot < 0.3 and mm < 2.0, (rot, mm)
    report = yaml.safe_load((tmp_path / "rep" / "handeye.json").read_text())
    assert set(report["refinement"]) == {"landing", "rotvec_lsq"} and report["refinement"]["landing"]["orthogonality"] < 1e-6
    assert (tmp_path / "rep" / "handeye.png").stat().st_size > 10_000 and (tmp_path / "rep" / "intrinsics.png").is_file()
    # the twin's camera built from these files sees the board where the calibrated camera expects it
    rig = SyntheticRig(default_rig().board, cam, mode="eye_in_hand", T_gripper_cam=ext.T, seed=9)
    try:
        q = rig.view_joints(1)[0]
        rig.set_joints(q)
        det = rig.board.detect(rig.render())
    finally:
        rig.close()
    assert det.count >= 15


def test_cli_capture_through_the_twin_drivers(tmp_path):
    """`calibrate capture` drives the twin arm through the driver registry, with FK from the twin's model."""
    pytest.importorskip("vla_robot.drivers.twin")
    from vla_robot.cli import main
    from vla_robot.twin.robots import robot_spec

    home = np.asarray(robot_spec("so101").home, float)
    targets = [home, home + [0.2, 0.1, -0.1, -0.1, 0.3, 0.0]]
    (tmp_path / "poses.yaml").write_text(yaml.safe_dump([t.tolist() for t in targets]))
    code = main(["calibrate", "capture", "--arm", "twin", "--camera", "twin", "--camera-option", "camera=wrist",
                 "--poses", str(tmp_path / "poses.yaml"), "--out", str(tmp_path / "views"), "--fk-model", "twin:so101",
                 "--settle", "0.05"])
    assert code == 0
    views = load_views(tmp_path / "views")
    assert len(views.images) == 2 and views.images[0].dtype == np.uint8
    for q, target in zip(views.joints, targets):
        assert np.abs(q - target).max() < 0.02
    moved = pose_error(views.gripper_poses[0], views.gripper_poses[1])
    assert moved[0] > 5 and moved[1] > 10  # the recorded gripper poses follow the joints
