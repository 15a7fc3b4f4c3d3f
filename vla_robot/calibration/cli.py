"""``vla-robot calibrate intrinsics|handeye|capture|board|realsense``.

Typical session::

    vla-robot calibrate board --board calibration/boards/charuco_7x5_40mm.yaml --out board.pdf   # print at 100 %
    vla-robot calibrate capture --arm sim --out runs/calib/views                 # or a real/twin arm driver
    vla-robot calibrate intrinsics --images runs/calib/views --board BOARD.yaml --out calibration/front.yaml
    vla-robot calibrate handeye --mode eye_in_hand --views runs/calib/views --camera calibration/front.yaml \\
        --board BOARD.yaml --out calibration/front_extrinsics.yaml
    vla-robot calibrate realsense --out calibration/d435_color.yaml             # factory intrinsics
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["calibrate_args", "calibrate"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="ROS parameter file with a 'calibrate' section (CalibrateConfig)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. intrinsics.min_views=5 or handeye.initial_method=TSAI")
    p.add_argument("--report", help="folder for report.json and plots")


def calibrate_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="calib_command", metavar="STEP")

    p = sub.add_parser("intrinsics", help="ChArUco intrinsics -> ROS camera_info YAML")
    p.add_argument("--images", required=True, help="folder of board images (png/jpg)")
    p.add_argument("--board", required=True, help="board definition YAML (calibration/boards/)")
    p.add_argument("--out", required=True, help="camera_info YAML to write")
    p.add_argument("--camera-name", default=None, help="camera_name in the file (default: the file's stem)")
    _common(p)

    p = sub.add_parser("handeye", help="hand-eye extrinsics (5 OpenCV methods + landing refinement)")
    p.add_argument("--mode", required=True, choices=["eye_in_hand", "eye_to_hand"])
    p.add_argument("--views", required=True, help="capture folder with views.yaml and images")
    p.add_argument("--camera", required=True, help="camera_info YAML of the camera")
    p.add_argument("--board", required=True, help="board definition YAML")
    p.add_argument("--out", required=True, help="extrinsics YAML to write")
    p.add_argument("--fk-model", help="robot MJCF (or twin:so101, twin:panda) for forward kinematics (when views.yaml has no gripper poses)")
    p.add_argument("--ee-frame", default="gripper", help="end-effector body or site in --fk-model")
    p.add_argument("--camera-frame", default=None, help="child frame name (default: <camera_name>_optical)")
    p.add_argument("--parent-frame", default=None, help="parent frame name (default: gripper / base by mode)")
    _common(p)

    p = sub.add_parser("capture", help="drive the arm through poses and record board views with joint states")
    p.add_argument("--out", required=True, help="capture folder to write (views.yaml + images)")
    p.add_argument("--arm", default="sim", help="'sim' (the built-in MuJoCo rig) or an arm driver name (vla_robot.drivers)")
    p.add_argument("--camera", default=None, help="camera driver name (with a driver arm), e.g. twin, realsense, opencv")
    p.add_argument("--arm-option", action="append", default=[], metavar="KEY=VALUE", help="arm driver config (YAML values)")
    p.add_argument("--camera-option", action="append", default=[], metavar="KEY=VALUE",
                   help="camera driver config, e.g. camera=wrist for the twin")
    p.add_argument("--poses", help="YAML list of joint vectors to visit (required with a driver arm)")
    p.add_argument("--fk-model", help="robot MJCF (or twin:so101, twin:panda) for forward kinematics of the recorded joints")
    p.add_argument("--ee-frame", default="gripper", help="end-effector body or site in --fk-model")
    p.add_argument("--board", help="board YAML: report views where the board is not found")
    p.add_argument("--sim-mode", default="eye_in_hand", choices=["eye_in_hand", "eye_to_hand"], help="rig set-up for --arm sim")
    p.add_argument("--count", type=int, default=15, help="views to generate for --arm sim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settle", type=float, default=0.3, help="seconds to wait at each pose before the shot")

    p = sub.add_parser("board", help="write a printable board (PNG/PDF at true scale)")
    p.add_argument("--board", required=True, help="board definition YAML")
    p.add_argument("--out", required=True, nargs="+", help="files to write: .png and/or .pdf")
    p.add_argument("--dpi", type=float, default=300.0)
    p.add_argument("--margin-mm", type=float, default=10.0)

    p = sub.add_parser("realsense", help="RealSense factory intrinsics -> camera_info YAML")
    p.add_argument("--out", required=True)
    p.add_argument("--serial", default=None)
    p.add_argument("--stream", default="color", choices=["color", "depth", "infrared"])
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--camera-name", default=None)


def _config(args):
    from vla_robot.calibration.config import CalibrateConfig
    from vla_robot.config import apply_overrides, from_dict, parse_override, read_parameter_file

    params: dict = {}
    if getattr(args, "config", None):
        sections = read_parameter_file(args.config)
        params = sections.get("calibrate", {})
    overrides = dict(parse_override(s) for s in getattr(args, "set", []) or [])
    params = apply_overrides(params, overrides) if overrides else params
    return from_dict(CalibrateConfig, params, source=f"{getattr(args, 'config', None) or '--set'} [calibrate]")


def calibrate(args) -> int:
    from vla_robot.calibration.camera_model import CameraFileError
    from vla_robot.calibration.intrinsics import CalibrationError
    from vla_robot.config import ConfigError

    step = getattr(args, "calib_command", None)
    if step is None:
        print("vla-robot calibrate: choose a step: intrinsics, handeye, capture, board, realsense (see --help)", file=sys.stderr)
        return 2
    try:
        return {"intrinsics": _intrinsics, "handeye": _handeye, "capture": _capture, "board": _board, "realsense": _realsense}[step](args)
    except (CalibrationError, CameraFileError, ConfigError) as e:
        print(f"vla-robot calibrate {step}: {e}", file=sys.stderr)
        return 1


def _write_report(folder: str | None, name: str, doc: dict, plot) -> None:
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, default=float))
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    plot(fig)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    print(f"report: {out / (name + '.json')}, {out / (name + '.png')}")


def _intrinsics(args) -> int:
    from vla_robot.calibration.board import load_board
    from vla_robot.calibration.camera_model import save_camera_info
    from vla_robot.calibration.intrinsics import calibrate_intrinsics, read_images

    cfg = _config(args)
    board = load_board(args.board)
    images = read_images(args.images)
    res = calibrate_intrinsics(images, board, cfg.intrinsics, camera_name=args.camera_name or Path(args.out).stem, progress=True)
    print(res.summary())
    save_camera_info(res.camera, args.out, comment=(
        f"vla-robot calibrate intrinsics: {len(res.view_errors_px)} views of {args.board} from {args.images}, "
        f"RMS {res.rms_px:.3f} px ({len(res.rejected)} rejected)"))
    print(f"wrote {args.out}")

    def plot(fig):
        ax = fig.add_subplot(1, 2, 1)
        names = list(res.view_errors_px)
        ax.bar(range(len(names)), [res.view_errors_px[n] for n in names])
        ax.axhline(res.rms_px, color="k", ls="--", label=f"overall RMS {res.rms_px:.3f} px")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel("view RMS reprojection error [px]")
        ax.set_title(f"intrinsics: {len(names)} views used, {len(res.rejected)} rejected")
        ax.legend()
        ax = fig.add_subplot(1, 2, 2)  # coverage: distortion is only known where corners were seen
        for n in names:
            p = res.detections[n].image_points
            ax.plot(p[:, 0], p[:, 1], ".", ms=2)
        ax.set_xlim(0, res.camera.width)
        ax.set_ylim(res.camera.height, 0)
        ax.set_aspect("equal")
        ax.set_title("corners used (fill the image, corners included)")

    _write_report(args.report, "intrinsics", {
        "camera": res.camera.to_camera_info(), "rms_px": res.rms_px, "view_errors_px": res.view_errors_px, "rejected": res.rejected,
    }, plot)
    return 0


def _handeye(args) -> int:
    import numpy as np

    from vla_robot.calibration.board import load_board
    from vla_robot.calibration.camera_model import Extrinsics, load_camera_info, save_extrinsics
    from vla_robot.calibration.capture import MujocoKinematics, load_views
    from vla_robot.calibration.geometry import make_T, pose_error
    from vla_robot.calibration.handeye import calibrate_hand_eye

    cfg = _config(args)
    board = load_board(args.board)
    camera = load_camera_info(args.camera)
    fk = MujocoKinematics(args.fk_model, args.ee_frame) if args.fk_model else None
    views = load_views(args.views, fk=fk)
    dets, poses, names = [], [], []
    for name, img, T in zip(views.names, views.images, views.gripper_poses):
        if img is None:
            print(f"  {name}: unreadable image, skipped")
            continue
        if (img.shape[1], img.shape[0]) != camera.size:
            print(f"  {name}: image {img.shape[1]}x{img.shape[0]} but the camera file is {camera.width}x{camera.height}; skipped")
            continue
        dets.append(board.detect(img))
        poses.append(T)
        names.append(name)
    res = calibrate_hand_eye(poses, dets, camera, board, args.mode, cfg.handeye, names)
    print(res.summary())
    parent = args.parent_frame or res.parent_frame
    child = args.camera_frame or f"{camera.camera_name}_optical"
    meta = {
        "mode": args.mode, "refinement": res.chosen, "initial_method": cfg.handeye.initial_method,
        "views": len(res.views), "rejected": len(res.rejected), "reprojection_rms_px": round(res.rms_px, 4),
        "method_spread_deg": round(res.spread["rotation_deg"], 4), "method_spread_mm": round(res.spread["translation_mm"], 3),
        "board_pose": {"parent_frame": "base" if args.mode == "eye_in_hand" else "gripper",
                       "translation": [float(x) for x in res.T_board[:3, 3]],
                       "rotation": [float(x) for x in Extrinsics("a", "b", res.T_board).quaternion_xyzw()]},
    }
    save_extrinsics(Extrinsics(parent, child, res.T, meta), args.out,
                    comment=f"vla-robot calibrate handeye --mode {args.mode}: T_{parent}_{child} (OpenCV optical frame)")
    print(f"wrote {args.out}")

    def plot(fig):
        ax = fig.add_subplot(1, 2, 1)
        floor = min(res.landing.cost, res.baseline.cost)
        for r in (res.landing, res.baseline):
            h = np.array(r.history)
            ax.semilogy(h[:, 0], np.maximum(h[:, 1] - floor, 1e-12), marker=".", label=f"{r.method}: final {r.cost:.6g}")
        ax.set_xlabel("residual evaluations")
        ax.set_ylabel("cost - best final cost [px^2]")
        ax.set_title("refinement")
        ax.legend()
        ax = fig.add_subplot(1, 2, 2)
        ref = res.T
        names_m = list(res.methods)
        errs = [pose_error(res.methods[m], ref) for m in names_m]
        ax.bar(range(len(names_m)), [e[0] for e in errs], width=0.4, label="rotation [deg]")
        ax.bar(np.arange(len(names_m)) + 0.4, [e[1] / 10 for e in errs], width=0.4, label="translation [cm]")
        ax.set_xticks(range(len(names_m)), names_m, fontsize=7)
        ax.set_title("OpenCV methods vs refined")
        ax.legend()

    _write_report(args.report, "handeye", {
        "mode": args.mode, "T": res.T.tolist(), "T_board": res.T_board.tolist(),
        "methods": {k: v.tolist() for k, v in res.methods.items()}, "method_rms_px": res.method_rms_px,
        "spread": res.spread, "initial_rms_px": res.initial_rms_px, "rms_px": res.rms_px, "chosen": res.chosen,
        "refinement": {r.method: {"cost": r.cost, "iterations": r.iterations, "evaluations": r.evaluations,
                                  "seconds": r.seconds, "orthogonality": r.orthogonality} for r in (res.landing, res.baseline)},
        "motion": res.motion, "rejected": res.rejected, "warnings": res.warnings,
        "landing_vs_baseline": dict(zip(("rotation_deg", "translation_mm"), pose_error(
            make_T(res.landing.rotations[0], res.landing.vector[:3]), make_T(res.baseline.rotations[0], res.baseline.vector[:3])))),
    }, plot)
    return 0


def _capture(args) -> int:
    import numpy as np
    import yaml

    from vla_robot.calibration.board import load_board
    from vla_robot.calibration.capture import MujocoKinematics, capture_views
    from vla_robot.calibration.intrinsics import CalibrationError

    board = load_board(args.board) if args.board else None
    if args.arm == "sim":
        from vla_robot.calibration.camera_model import Extrinsics, save_camera_info, save_extrinsics
        from vla_robot.calibration.synthetic import SimArm, SimCamera, SyntheticRig, default_rig

        rig = default_rig(args.sim_mode, seed=args.seed)
        if board is not None:
            rig.close()
            rig = SyntheticRig(board, rig.camera, mode=args.sim_mode, seed=args.seed)
        arm, cam = SimArm(rig), SimCamera(rig)
        targets = _read_poses(args.poses) if args.poses else rig.view_joints(args.count)
        fk = rig.fk if not args.fk_model else MujocoKinematics(args.fk_model, args.ee_frame)
        names = list(rig.joint_names)
        out = Path(args.out)
        try:
            capture_views(arm, cam, targets, out, fk=fk, joint_names=names, settle_s=0.0, board=rig.board)
        finally:
            rig.close()
        # the rig's true geometry, to compare calibration results with
        save_camera_info(rig.camera, out / "truth_camera.yaml", comment="true intrinsics of the simulated camera")
        T = rig.truth.T_gripper_cam if args.sim_mode == "eye_in_hand" else rig.truth.T_base_cam
        save_extrinsics(Extrinsics("gripper" if args.sim_mode == "eye_in_hand" else "base", "sim_optical", T),
                        out / "truth_extrinsics.yaml", comment="true camera pose of the simulated rig")
        (out / "board.yaml").write_text(yaml.safe_dump(vars(rig.board.config), sort_keys=False))
        print(f"wrote {len(targets)} views to {out} (truth_camera.yaml, truth_extrinsics.yaml and board.yaml beside them)")
        return 0
    if not args.poses:
        raise CalibrationError("--poses is required with a driver arm: a YAML list of joint vectors to visit")
    arm, cam = _drivers(args)
    fk = MujocoKinematics(args.fk_model, args.ee_frame) if args.fk_model else None
    if fk is None:
        print("note: no --fk-model; views.yaml gets joints only; give --fk-model to 'calibrate handeye' later")
    try:
        capture_views(arm, cam, _read_poses(args.poses), args.out, fk=fk, settle_s=args.settle, board=board,
                      joint_names=getattr(arm, "joint_names", None))
    finally:
        for device in (cam, arm):
            close = getattr(device, "close", None)
            if callable(close):
                close()
    print(f"wrote {args.out}")
    return 0


def _read_poses(path):
    import numpy as np
    import yaml

    from vla_robot.calibration.intrinsics import CalibrationError

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CalibrationError(f"{path}: cannot read the poses file: {e}") from None
    if isinstance(doc, dict):
        doc = doc.get("poses")
    if not isinstance(doc, list) or not doc or not all(isinstance(q, list) and q for q in doc):
        raise CalibrationError(f"{path}: expected a YAML list of joint vectors (or 'poses: [[...], ...]')")
    return [np.asarray(q, float) for q in doc]


def _drivers(args):
    """Arm and camera backends by name from the driver registry (``vla_robot.drivers.make_arm/make_camera``)."""
    from vla_robot.calibration.intrinsics import CalibrationError
    from vla_robot.config import parse_override
    from vla_robot.drivers import make_arm, make_camera

    if not args.camera:
        raise CalibrationError("--camera NAME is required with a driver arm (e.g. --arm twin --camera twin --camera-option camera=wrist)")
    arm_cfg = dict(parse_override(o) for o in args.arm_option)
    cam_cfg = dict(parse_override(o) for o in args.camera_option)
    try:
        arm = make_arm(args.arm, arm_cfg)
    except ValueError as e:  # unknown backend or bad config (ConfigError is a ValueError)
        raise CalibrationError(f"--arm {args.arm}: {e}") from None
    try:
        cam = make_camera(args.camera, cam_cfg)
    except ValueError as e:
        arm.close()
        raise CalibrationError(f"--camera {args.camera}: {e}") from None
    return arm, cam


def _board(args) -> int:
    from vla_robot.calibration.board import load_board

    board = load_board(args.board)
    for out in args.out:
        suffix = Path(out).suffix.lower()
        if suffix == ".png":
            board.write_png(out, dpi=args.dpi, margin_m=args.margin_mm / 1000)
        elif suffix == ".pdf":
            board.write_pdf(out, dpi=args.dpi, margin_m=args.margin_mm / 1000)
        else:
            print(f"vla-robot calibrate board: {out}: unknown format {suffix or '(none)'}; use .png or .pdf", file=sys.stderr)
            return 2
        w, h = board.size_m
        print(f"wrote {out}: {board.config.squares_x}x{board.config.squares_y} squares, "
              f"{(w + 2 * args.margin_mm / 1000) * 1000:.0f} x {(h + 2 * args.margin_mm / 1000) * 1000:.0f} mm; print at 100 %")
    return 0


def _realsense(args) -> int:
    from vla_robot.calibration.camera_model import save_camera_info
    from vla_robot.calibration.realsense import realsense_camera_model

    try:
        model = realsense_camera_model(serial=args.serial, stream=args.stream, width=args.width, height=args.height,
                                       camera_name=args.camera_name)
    except ImportError as e:
        print(f"vla-robot calibrate realsense: pyrealsense2 does not import ({e}); install Debian libusb-1.0-0", file=sys.stderr)
        return 1
    save_camera_info(model, args.out, comment=f"RealSense factory intrinsics, {args.stream} {args.width}x{args.height}")
    print(f"wrote {args.out}: fx {model.fx:.2f} fy {model.fy:.2f} cx {model.cx:.2f} cy {model.cy:.2f} ({model.distortion_model})")
    return 0
