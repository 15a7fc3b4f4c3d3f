"""Calibration without rendering: file formats, boards, landing, hand-eye checks on projected points,
RealSense through pyrealsense2's software device, the CLI's error paths."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vla_robot.calibration.board import Board, Detection, load_board
from vla_robot.calibration.camera_model import (
    CameraFileError,
    CameraModel,
    Extrinsics,
    camera_model_from_mujoco,
    load_camera_info,
    load_extrinsics,
    mujoco_camera_attributes,
    mujoco_camera_pose,
    save_camera_info,
    save_extrinsics,
)
from vla_robot.calibration.config import BoardConfig, HandEyeConfig
from vla_robot.calibration.geometry import invert, look_at, make_T, pose_error
from vla_robot.calibration.handeye import calibrate_hand_eye, check_motion
from vla_robot.calibration.intrinsics import CalibrationError
from vla_robot.calibration.landing import landing_descent, landing_field, orthogonality_error
from vla_robot.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CAM = CameraModel(K=[[615.0, 0, 313.5], [0, 610.0, 243.5], [0, 0, 1]], D=[0.05, -0.1, 0.001, -0.0005, 0.0], width=640, height=480, camera_name="front")


# --- files -------------------------------------------------------------------------------------
def test_camera_info_round_trip(tmp_path):
    path = save_camera_info(CAM, tmp_path / "front.yaml", comment="test")
    back = load_camera_info(path)
    assert np.allclose(back.K, CAM.K) and np.allclose(back.D, CAM.D) and back.size == (640, 480)
    assert back.camera_name == "front" and np.allclose(back.P[:, :3], CAM.K)
    assert path.read_text().startswith("# test\n")


@pytest.mark.parametrize("path", sorted((ROOT / "calibration" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_load(path):
    if "extrinsics" in path.name:
        ext = load_extrinsics(path)
        assert orthogonality_error(ext.rotation) < 1e-6 and ext.parent_frame in ("base", "gripper")
    else:
        cam = load_camera_info(path)
        assert 0 < cam.cx < cam.width and 0 < cam.cy < cam.height


def test_front_example_looks_at_the_robot():
    ext = load_extrinsics(ROOT / "calibration/examples/front_camera_extrinsics.yaml")
    view = ext.rotation[:, 2]  # optical axis in the base frame
    to_base = -ext.translation / np.linalg.norm(ext.translation)
    assert view @ to_base > 0.9


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("camera_matrix"), "camera_matrix"),
        (lambda d: d["camera_matrix"].update(rows=2), "camera_matrix"),
        (lambda d: d.update(image_width=-5), "image_width"),
        (lambda d: d.update(image_height="480"), "image_height"),
        (lambda d: d.update(lens="wide"), "unknown key"),
        (lambda d: d["camera_matrix"]["data"].__setitem__(0, -615.0), "fx"),
        (lambda d: d.update(distortion_model="fisheye_magic"), "distortion_model"),
        (lambda d: d["distortion_coefficients"].update(cols=3, data=[0.1, 0.2, 0.3]), "expects 5"),
    ],
)
def test_bad_camera_info_names_the_problem(tmp_path, edit, message):
    import yaml

    doc = CAM.to_camera_info()
    edit(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CameraFileError, match=message):
        load_camera_info(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(CameraFileError, match="not found.*calibrate"):
        load_camera_info(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("image_width: [1, 2\n")
    with pytest.raises(CameraFileError, match="not valid YAML"):
        load_camera_info(tmp_path / "x.yaml")
    with pytest.raises(CameraFileError, match="not found"):
        load_extrinsics(tmp_path / "nope.yaml")


def test_extrinsics_round_trip_and_errors(tmp_path):
    T = make_T(Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix(), [0.1, -0.2, 0.3])
    path = save_extrinsics(Extrinsics("gripper", "wrist_optical", T, {"views": np.int64(12), "rms": np.float32(0.1)}), tmp_path / "e.yaml")
    back = load_extrinsics(path)
    assert np.allclose(back.T, T) and back.calibration["views"] == 12
    assert np.allclose(back.inverse().T @ T, np.eye(4))
    bad = path.read_text().replace("rotation: [", "rotation: [0.5, ")
    path.write_text(bad)
    with pytest.raises(CameraFileError, match="rotation"):
        load_extrinsics(path)
    path.write_text("parent_frame: a\nchild_frame: b\ntranslation: [0, 0]\nrotation: [0, 0, 0, 1]\n")
    with pytest.raises(CameraFileError, match=r"translation.*\[x, y, z\]"):
        load_extrinsics(path)
    path.write_text("parent_frame: a\nchild_frame: b\ntranslation: [0, 0, 0]\nrotation: [0, 0, 0, 2]\n")
    with pytest.raises(CameraFileError, match="unit quaternion"):
        load_extrinsics(path)
    with pytest.raises(CameraFileError, match="proper rotation"):
        Extrinsics("a", "b", np.diag([1.0, 1.0, -1.0, 1.0]))


def test_scaled_camera_keeps_the_field_of_view():
    half = CAM.scaled(320, 240)
    assert half.fx == pytest.approx(307.5) and half.cx == pytest.approx((313.5 + 0.5) / 2 - 0.5)
    assert np.allclose(half.scaled(640, 480).K, CAM.K)


# --- MuJoCo cameras from camera files -----------------------------------------------------------
def _point_scene(cam: CameraModel, T_world_cam, points):
    attrs = " ".join(f'{k}="{v}"' for k, v in mujoco_camera_attributes(cam).items())
    pos, quat = mujoco_camera_pose(T_world_cam)
    geoms = "".join(f'<geom type="sphere" size="0.002" pos="{p[0]} {p[1]} {p[2]}" rgba="1 1 1 1"/>' for p in points)
    return f"""<mujoco><visual><global offwidth="{cam.width}" offheight="{cam.height}"/><quality shadowsize="0" offsamples="0"/>
      <headlight ambient="1 1 1" diffuse="0 0 0" specular="0 0 0"/></visual>
      <worldbody>{geoms}<camera name="c" pos="{' '.join(map(str, pos))}" quat="{' '.join(map(str, quat))}" {attrs}/></worldbody></mujoco>"""


def test_mujoco_camera_from_camera_file_projects_like_opencv():
    """A MuJoCo camera built from a CameraModel puts a 3D point where OpenCV projects it (pixel centres)."""
    import cv2
    import mujoco

    cam = CameraModel(K=[[500.0, 0, 301.25], [0, 480.0, 260.75], [0, 0, 1]], D=np.zeros(5), width=640, height=480)
    T_world_cam = make_T(look_at([0.1, -0.3, 0.8], [0, 0, 0], up=[0, 0, 1]), [0.1, -0.3, 0.8])
    point = np.array([0.02, 0.03, 0.01])
    m = mujoco.MjModel.from_xml_string(_point_scene(cam, T_world_cam, [point]))
    assert np.allclose(camera_model_from_mujoco(m, "c").K, cam.K)
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    r = mujoco.Renderer(m, cam.height, cam.width)
    try:
        r.update_scene(d, camera="c")
        img = r.render()[..., 0].astype(float)
    finally:
        r.close()
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    w = img / img.sum()
    seen = np.array([(w * xs).sum(), (w * ys).sum()])
    T_cam_world = invert(T_world_cam)
    rvec = cv2.Rodrigues(T_cam_world[:3, :3])[0]
    expected = cv2.projectPoints(point.reshape(1, 3), rvec, T_cam_world[:3, 3], cam.K, None)[0].ravel()
    assert np.abs(seen - expected).max() < 0.15, (seen, expected)


# --- boards ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((ROOT / "calibration" / "boards").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_boards_load_and_detect_their_own_image(path):
    board = load_board(path)
    ppm = 2000.0
    img = board.image(ppm, margin_m=0.01)
    det = board.detect(img)
    assert det.count == board.max_corners
    # corners sit where the geometry says (pixel-centre convention)
    expected = det.object_points[:, :2] * ppm + 0.01 * ppm - 0.5
    assert np.abs(det.image_points - expected).max() < 0.3


def test_printable_board_files(tmp_path):
    from PIL import Image

    board = load_board(ROOT / "calibration/boards/charuco_7x5_40mm.yaml")
    png = board.write_png(tmp_path / "b.png", dpi=150, margin_m=0.01)
    im = Image.open(png)
    assert im.size == (round(0.30 / 0.0254 * 150), round(0.22 / 0.0254 * 150))
    assert abs(im.info["dpi"][0] - 150) < 0.05  # PNG stores pixels per metre
    pdf = board.write_pdf(tmp_path / "b.pdf", dpi=100)
    head = pdf.read_bytes()
    assert head.startswith(b"%PDF")
    import re

    box = [float(x) for x in re.search(rb"/MediaBox \[\s*([\d.\s]+)\]", head).group(1).split()]
    assert box[2] == pytest.approx(0.30 / 0.0254 * 72, abs=0.5) and box[3] == pytest.approx(0.22 / 0.0254 * 72, abs=0.5)


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"marker_length": 0.05}, "marker_length"),
        ({"square_length": 40.0, "marker_length": 30.0}, "millimetres"),
        ({"dictionary": "5X5_42"}, "dictionary"),
        ({"squares_x": 20, "squares_y": 20, "dictionary": "4X4_50"}, "needs 200 markers"),
        ({"squares_x": 1}, "squares_x"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"squares_x": "7"}, "squares_x"),
    ],
)
def test_bad_board_definitions(tmp_path, fields, key):
    import yaml

    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(fields))
    with pytest.raises(ConfigError, match=key):
        load_board(path)


def test_detect_rejects_non_images():
    board = Board(BoardConfig())
    with pytest.raises(ValueError, match="uint8"):
        board.detect(np.zeros((10, 10), np.float32))
    assert board.detect(np.zeros((100, 100, 3), np.uint8)).count == 0


# --- landing -----------------------------------------------------------------------------------
def test_landing_descent_solves_procrustes_without_retraction():
    rng = np.random.default_rng(3)
    R_true = Rotation.random(random_state=4).as_matrix()
    A = rng.normal(size=(3, 40))
    B = R_true @ A + 0.01 * rng.normal(size=(3, 40))
    U, _, Vt = np.linalg.svd(B @ A.T)
    R_best = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt

    def f_and_grad(X):
        E = X @ A - B
        return 0.5 * float(np.sum(E * E)), E @ A.T

    X0 = Rotation.random(random_state=5).as_matrix() + 0.05 * rng.normal(size=(3, 3))  # off the manifold
    L = np.linalg.eigvalsh(A @ A.T).max()
    res = landing_descent(f_and_grad, X0, eta=0.5 / L, lam=L, max_iters=5000, tol=1e-11)
    assert res.orthogonality < 1e-8
    assert pose_error(make_T(res.rotations[0], np.zeros(3)), make_T(R_best, np.zeros(3)))[0] < 1e-5
    assert res.history[0][1] > res.cost


def test_landing_field_splits_into_tangent_and_normal_parts():
    rng = np.random.default_rng(0)
    X = Rotation.random(random_state=1).as_matrix()
    G = rng.normal(size=(3, 3))
    L = landing_field(X, G, lam=1.0)
    # on the manifold the field is tangent: d/dt (X^T X) = L^T X + X^T L = 0
    assert np.abs(L.T @ X + X.T @ L).max() < 1e-12
    Y = X @ np.diag([1.1, 1.0, 0.95])  # off the manifold the normal part points back
    step = Y - 0.1 * landing_field(Y, np.zeros((3, 3)), lam=1.0)
    assert orthogonality_error(step) < orthogonality_error(Y)


# --- hand-eye on projected (not rendered) points ------------------------------------------------
BOARD = Board(BoardConfig())


def _project_views(G_list, mode, A, B, noise_px=0.2, rng=None):
    import cv2

    rng = rng or np.random.default_rng(0)
    dets = []
    for G in G_list:
        T_cam_board = invert(A) @ (invert(G) if mode == "eye_in_hand" else G) @ B
        rvec = cv2.Rodrigues(T_cam_board[:3, :3])[0]
        pts = cv2.projectPoints(BOARD.corners, rvec, T_cam_board[:3, 3], CAM.K, CAM.D)[0].reshape(-1, 2)
        pts += rng.normal(0, noise_px, pts.shape)
        dets.append(Detection(np.arange(len(pts)), BOARD.corners.copy(), pts, 17))
    return dets


def _eye_in_hand_setup(rotations_deg, rng):
    A = make_T(Rotation.from_euler("xyz", [5, -3, 90], degrees=True).as_matrix(), [0.04, 0.01, 0.06])
    B = make_T(Rotation.from_euler("x", 180, degrees=True).as_matrix(), [0.3, 0.0, 0.0])
    G_list = []
    for rpy in rotations_deg:
        # the camera looks down at the board from ~0.4 m; the gripper carries it
        R_cam = look_at([0, 0, 0], [0, 0, -1], up=[1, 0, 0]) @ Rotation.from_euler("xyz", rpy, degrees=True).as_matrix()
        centre = B[:3, :3] @ np.r_[BOARD.size_m[0] / 2, BOARD.size_m[1] / 2, 0] + B[:3, 3]
        eye = centre - 0.4 * R_cam[:, 2] + rng.normal(0, 0.01, 3)
        G_list.append(make_T(R_cam, eye) @ invert(A))
    return A, B, G_list


def test_hand_eye_on_projected_points_with_distortion():
    rng = np.random.default_rng(1)
    rots = [rng.uniform(-25, 25, 3) for _ in range(10)]
    A, B, G_list = _eye_in_hand_setup(rots, rng)
    dets = _project_views(G_list, "eye_in_hand", A, B, rng=rng)
    res = calibrate_hand_eye(G_list, dets, CAM, BOARD, "eye_in_hand")
    rot, mm = pose_error(res.T, A)
    assert rot < 0.2 and mm < 1.0, res.summary()
    assert res.landing.orthogonality < 1e-6 and res.chosen == "landing"
    assert res.rms_px < 0.35 and set(res.methods) == {"TSAI", "PARK", "HORAUD", "ANDREFF", "DANIILIDIS"}


def test_degenerate_motions_are_refused_with_advice():
    rng = np.random.default_rng(2)
    A, B, G_list = _eye_in_hand_setup([[0, 0, 0]] * 8, rng)  # translations only
    dets = _project_views(G_list, "eye_in_hand", A, B)
    with pytest.raises(CalibrationError, match="degenerate motion.*rotates at most.*tilted"):
        calibrate_hand_eye(G_list, dets, CAM, BOARD, "eye_in_hand")
    A, B, G_list = _eye_in_hand_setup([[0, 0, a] for a in (-30, -15, 0, 10, 20, 30)], rng)  # one axis
    dets = _project_views(G_list, "eye_in_hand", A, B)
    with pytest.raises(CalibrationError, match="about one axis.*other axes"):
        calibrate_hand_eye(G_list, dets, CAM, BOARD, "eye_in_hand")
    info = check_motion(_eye_in_hand_setup([rng.uniform(-25, 25, 3) for _ in range(6)], rng)[2])
    assert info["axis_spread"] > 0.05 and info["max_relative_rotation_deg"] > 5


def test_too_few_views_and_unusable_views():
    rng = np.random.default_rng(3)
    A, B, G_list = _eye_in_hand_setup([rng.uniform(-25, 25, 3) for _ in range(6)], rng)
    dets = _project_views(G_list, "eye_in_hand", A, B)
    with pytest.raises(CalibrationError, match=r"only 3 usable views of 3 \(need 5\).*Record at least 5"):
        calibrate_hand_eye(G_list[:3], dets[:3], CAM, BOARD, "eye_in_hand")
    empty = Detection(np.zeros(0, int), np.zeros((0, 3)), np.zeros((0, 2)), 0)
    few = Detection(dets[0].ids[:4], dets[0].object_points[:4], dets[0].image_points[:4], 2)
    with pytest.raises(CalibrationError, match="no board found.*only 4 corners"):
        calibrate_hand_eye(G_list[:4] + G_list[:2], dets[:4] + [empty, few], CAM, BOARD, "eye_in_hand")
    with pytest.raises(ValueError, match="one pose per view"):
        calibrate_hand_eye(G_list, dets[:5], CAM, BOARD, "eye_in_hand")
    with pytest.raises(ValueError, match="mode"):
        calibrate_hand_eye(G_list, dets, CAM, BOARD, "eye_on_hand")
    with pytest.raises(ValueError, match="initial_method"):
        calibrate_hand_eye(G_list, dets, CAM, BOARD, "eye_in_hand", HandEyeConfig(methods=["TSAI"]))


def test_intrinsics_refuses_blank_and_too_few_views():
    from vla_robot.calibration.intrinsics import calibrate_intrinsics

    blank = [np.full((480, 640, 3), 128, np.uint8)] * 4
    with pytest.raises(CalibrationError, match="only 0 usable views of 4.*No view shows the board.*--board"):
        calibrate_intrinsics(blank, BOARD)
    board_img = np.stack([BOARD.image(1500.0, 0.02)] * 3, axis=-1)
    with pytest.raises(CalibrationError, match="only 2 usable views of 3.*Capture at least 8"):
        calibrate_intrinsics({"a": board_img, "b": board_img, "c": blank[0]}, BOARD)
    with pytest.raises(CalibrationError, match="no images"):
        calibrate_intrinsics([], BOARD)


# --- RealSense through pyrealsense2's software device -------------------------------------------
def _software_realsense():
    rs = pytest.importorskip("pyrealsense2")
    dev = rs.software_device()
    sensor = dev.add_sensor("Color")
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = 640, 480, 615.2, 614.8, 321.3, 238.9
    intr.model = rs.distortion.inverse_brown_conrady
    intr.coeffs = [0.01, -0.02, 0.001, 0.0005, 0.003]
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = rs.stream.color, 0, 1, 640, 480, 30, 3, rs.format.rgb8
    vs.intrinsics = intr
    sensor.add_video_stream(vs)
    return dev


def test_realsense_factory_intrinsics_to_camera_info(tmp_path):
    from vla_robot.calibration.realsense import realsense_camera_model

    dev = _software_realsense()
    model = realsense_camera_model(device=dev, width=640, height=480, camera_name="front")
    assert model.fx == pytest.approx(615.2, abs=1e-4) and model.cy == pytest.approx(238.9, abs=1e-4)
    assert model.distortion_model == "plumb_bob" and np.allclose(model.D, [0.01, -0.02, 0.001, 0.0005, 0.003], atol=1e-7)
    back = load_camera_info(save_camera_info(model, tmp_path / "rs.yaml"))
    assert np.allclose(back.K, model.K)
    with pytest.raises(CalibrationError, match=r"no color stream at 1280x720; available: \[\(640, 480\)\]"):
        realsense_camera_model(device=dev, width=1280, height=720)


def test_realsense_without_device_says_so():
    rs = pytest.importorskip("pyrealsense2")
    if len(rs.context().query_devices()):
        pytest.skip("a real RealSense is connected")
    from vla_robot.calibration.realsense import realsense_camera_model

    with pytest.raises(CalibrationError, match="no RealSense device connected"):
        realsense_camera_model()


# --- CLI ---------------------------------------------------------------------------------------
class _Run:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def test_cli_board_and_error_paths(tmp_path, capsys, monkeypatch):
    from vla_robot.cli import main

    monkeypatch.chdir(ROOT)

    def _cli(*args):
        code = main(["calibrate", *args])
        captured = capsys.readouterr()
        return _Run(code, captured.out, captured.err)

    r = _cli("board", "--board", "calibration/boards/charuco_5x7_30mm.yaml", "--out", str(tmp_path / "b.png"), str(tmp_path / "b.pdf"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.png").stat().st_size > 1000 and (tmp_path / "b.pdf").read_bytes()[:4] == b"%PDF"
    (tmp_path / "imgs").mkdir()
    r = _cli("intrinsics", "--images", str(tmp_path / "imgs"), "--board", "calibration/boards/charuco_5x7_30mm.yaml", "--out", str(tmp_path / "c.yaml"))
    assert r.returncode == 1 and "no images" in r.stderr and not (tmp_path / "c.yaml").exists()
    r = _cli("intrinsics", "--images", str(tmp_path), "--board", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "c.yaml"))
    assert r.returncode == 1 and "board file not found" in r.stderr
    r = _cli("intrinsics", "--images", str(tmp_path), "--board", "calibration/boards/charuco_5x7_30mm.yaml", "--out", "x.yaml",
             "--set", "intrinsics.min_views=1")
    assert r.returncode == 1 and "min_views" in r.stderr
    r = _cli("handeye", "--mode", "eye_in_hand", "--views", str(tmp_path), "--camera", "calibration/examples/usb_wrist_camera_320x240.yaml",
             "--board", "calibration/boards/charuco_5x7_30mm.yaml", "--out", str(tmp_path / "e.yaml"))
    assert r.returncode == 1 and "views.yaml" in r.stderr and "calibrate capture" in r.stderr
    r = _cli()
    assert r.returncode == 2 and "intrinsics, handeye, capture, board, realsense" in r.stderr
    # the installed entry point reaches the same code
    r = subprocess.run([sys.executable, "-m", "vla_robot.cli", "calibrate", "board", "--board", "calibration/boards/charuco_5x7_30mm.yaml",
                        "--out", str(tmp_path / "b.svg")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "use .png or .pdf" in r.stderr


def test_robot_pose_noise_is_flagged_and_closed_form_stays_close():
    """With 0.5 mm / 0.05 deg kinematic error per pose the refinement (which trusts the poses) is flagged."""
    from vla_robot.calibration.synthetic import default_rig, projected_views

    rig = default_rig("eye_in_hand", seed=0)
    poses, dets, cam = projected_views(rig, 15, pixel_noise=0.2, pose_noise_mm=0.5, pose_noise_deg=0.05, seed=0)
    res = calibrate_hand_eye(poses, dets, cam, rig.board, "eye_in_hand")
    assert any("poses disagree with the images" in w for w in res.warnings)
    rot, mm = pose_error(res.methods["PARK"], rig.truth.T_gripper_cam)
    assert rot < 0.2 and mm < 1.5
    clean_poses, clean_dets, _ = projected_views(rig, 15, pixel_noise=0.2, seed=0)
    assert not calibrate_hand_eye(clean_poses, clean_dets, cam, rig.board, "eye_in_hand").warnings


def test_a_view_with_a_wrong_arm_pose_is_rejected():
    """One view whose joints were read while the arm still moved (2 cm, 3 deg off) is dropped, with the reason."""
    from vla_robot.calibration.synthetic import default_rig, projected_views

    rig = default_rig("eye_to_hand", seed=4)
    poses, dets, cam = projected_views(rig, 12, pixel_noise=0.2, seed=4)
    bad = make_T(Rotation.from_euler("z", 3, degrees=True).as_matrix(), [0.02, 0.0, 0.0])
    poses[5] = poses[5] @ bad
    res = calibrate_hand_eye(poses, dets, cam, rig.board, "eye_to_hand")
    assert set(res.rejected) == {"view_005"} and "inconsistent with the other views" in res.rejected["view_005"]
    rot, mm = pose_error(res.T, rig.truth.T_base_cam)
    assert rot < 0.2 and mm < 1.0 and len(res.views) == 11
    kept = calibrate_hand_eye(poses, dets, cam, rig.board, "eye_to_hand", HandEyeConfig(max_outlier_fraction=0.0))
    assert not kept.rejected and pose_error(kept.T, rig.truth.T_base_cam)[1] > mm  # without rejection: worse


def test_pose_prior_refines_noisy_arm_poses():
    """Given the arm's accuracy, the refinement also corrects each pose and beats trusting the poses."""
    from vla_robot.calibration.synthetic import default_rig, projected_views

    rig = default_rig("eye_in_hand", seed=2)
    poses, dets, cam = projected_views(rig, 15, pixel_noise=0.2, pose_noise_mm=0.5, pose_noise_deg=0.05, seed=2)
    trusting = calibrate_hand_eye(poses, dets, cam, rig.board, "eye_in_hand")
    cfg = HandEyeConfig(pose_sigma_mm=0.5, pose_sigma_deg=0.05)
    res = calibrate_hand_eye(poses, dets, cam, rig.board, "eye_in_hand", cfg)
    truth = rig.truth.T_gripper_cam
    rot, mm = pose_error(res.T, truth)
    assert rot < 0.2 and mm < 1.0, res.summary()
    assert rot < pose_error(trusting.T, truth)[0] and mm < pose_error(trusting.T, truth)[1]
    assert res.landing.orthogonality < 1e-6 and res.landing.cost <= res.baseline.cost * (1 + 1e-6)
    assert res.pose_corrections.shape == (15, 6) and "arm pose corrections" in res.summary()
    assert not any("poses disagree" in w for w in res.warnings)
    with pytest.raises(ValueError, match="give both"):
        HandEyeConfig(pose_sigma_mm=0.5).validate()
