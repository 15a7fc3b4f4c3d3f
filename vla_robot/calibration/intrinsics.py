"""Camera intrinsics from ChArUco views: detection, ``cv2.calibrateCamera``, per-view errors, rejection.

Every view that is not used is reported with the reason (no board found, too few corners,
corners on one line, reprojection outlier), and the calibration is run again without the
outliers. Too few usable views is an error that says what to capture.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from vla_robot.calibration.board import Board, Detection
from vla_robot.calibration.camera_model import CameraModel
from vla_robot.calibration.config import IntrinsicsConfig

__all__ = ["CalibrationError", "IntrinsicsResult", "calibrate_intrinsics", "read_images", "view_problem"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class CalibrationError(ValueError):
    """The input cannot give a calibration; the message says what to do."""


@dataclass
class IntrinsicsResult:
    camera: CameraModel
    rms_px: float
    view_errors_px: dict[str, float]           # name -> RMS reprojection error of each used view
    rejected: dict[str, str]                   # name -> reason
    detections: dict[str, Detection] = field(repr=False, default_factory=dict)
    poses: dict[str, np.ndarray] = field(repr=False, default_factory=dict)   # name -> T_cam_board

    def summary(self) -> str:
        c = self.camera
        lines = [
            f"intrinsics from {len(self.view_errors_px)} views ({len(self.rejected)} rejected): RMS {self.rms_px:.3f} px",
            f"  fx {c.fx:.2f}  fy {c.fy:.2f}  cx {c.cx:.2f}  cy {c.cy:.2f}  D {np.array2string(c.D, precision=4)}",
        ]
        lines += [f"  used     {n}: {e:.3f} px" for n, e in self.view_errors_px.items()]
        lines += [f"  rejected {n}: {r}" for n, r in self.rejected.items()]
        return "\n".join(lines)


def read_images(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """All images of a folder (sorted by name) as RGB uint8 arrays."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder of images")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                out[p.name] = None  # reported as unreadable
            else:
                out[p.name] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if not out:
        raise CalibrationError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found; capture views first ('vla-robot calibrate capture')")
    return out


def view_problem(det: Detection, board: Board, min_corners: int) -> str | None:
    """Why a detection cannot be used, or None."""
    if det.count == 0:
        return (
            "no board found" + (f" ({det.markers} markers seen but no corners: check the board definition)" if det.markers else "")
        )
    if det.count < min_corners:
        return f"only {det.count} corners (need {min_corners}): the board is cut off, too far or blurred"
    # corners on one line of the board give no homography
    pts = det.object_points[:, :2] - det.object_points[:, :2].mean(0)
    s = np.linalg.svd(pts, compute_uv=False)
    if s[1] < 1e-6 * max(s[0], 1e-12) or s[1] < 0.5 * board.config.square_length:
        return "corners lie on one line of the board: show more of the board"
    return None


def _flags(cfg: IntrinsicsConfig) -> int:
    flags = 0
    if cfg.fix_k3:
        flags |= cv2.CALIB_FIX_K3
    if cfg.zero_tangent:
        flags |= cv2.CALIB_ZERO_TANGENT_DIST
    if cfg.fix_aspect_ratio:
        flags |= cv2.CALIB_FIX_ASPECT_RATIO
    return flags


def _view_rms(obj, img, rvec, tvec, K, D) -> float:
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, D)
    return float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))


def calibrate_intrinsics(
    images: dict[str, np.ndarray] | Sequence[np.ndarray],
    board: Board,
    config: IntrinsicsConfig | None = None,
    image_size: tuple[int, int] | None = None,
    camera_name: str = "camera",
    progress: bool = False,
) -> IntrinsicsResult:
    """Calibrate from ChArUco views (a name -> RGB image mapping, or a list)."""
    cfg = config or IntrinsicsConfig()
    cfg.validate()
    if not isinstance(images, dict):
        images = {f"view_{i:03d}": im for i, im in enumerate(images)}
    if not images:
        raise CalibrationError("no images given; capture views of the board first")
    rejected: dict[str, str] = {}
    detections: dict[str, Detection] = {}
    items: Iterable = images.items()
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(images), desc="detecting board", unit="img", disable=None)
    for name, img in items:
        if img is None:
            rejected[name] = "unreadable image file"
            continue
        size = (img.shape[1], img.shape[0])
        if image_size is None:
            image_size = size
        elif size != tuple(image_size):
            rejected[name] = f"image size {size[0]}x{size[1]} differs from {image_size[0]}x{image_size[1]}"
            continue
        det = board.detect(img)
        problem = view_problem(det, board, cfg.min_corners)
        if problem:
            rejected[name] = problem
        else:
            detections[name] = det
    _need(len(detections), cfg.min_views, len(images), rejected)

    flags = _flags(cfg)
    while True:
        names = list(detections)
        obj = [detections[n].object_points.astype(np.float32) for n in names]
        img = [detections[n].image_points.astype(np.float32) for n in names]
        try:
            rms, K, D, rvecs, tvecs = cv2.calibrateCamera(obj, img, tuple(image_size), None, None, flags=flags)
        except cv2.error as e:
            raise CalibrationError(
                f"cv2.calibrateCamera failed on {len(names)} views ({e.err}); the views are probably too similar: "
                "tilt the board by 20-45 degrees in different directions and cover the whole image"
            ) from None
        errors = {n: _view_rms(o, i, r, t, K, D) for n, o, i, r, t in zip(names, obj, img, rvecs, tvecs)}
        median = float(np.median(list(errors.values())))
        worst = max(errors, key=errors.get)
        e = errors[worst]
        if e > cfg.max_view_error_px and e > cfg.outlier_factor * median and len(detections) > cfg.min_views:
            rejected[worst] = (
                f"reprojection error {e:.2f} px (> {cfg.max_view_error_px} px and > {cfg.outlier_factor:g}x the median "
                f"{median:.2f} px): motion blur, a bent board or a wrong detection"
            )
            del detections[worst]
            continue
        break
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0:
        raise CalibrationError("calibration diverged (non-finite focal length): capture more varied views")
    cam = CameraModel(K=K, D=D.ravel()[:5] if D.size >= 5 else np.r_[D.ravel(), np.zeros(5 - D.size)],
                      width=image_size[0], height=image_size[1], camera_name=camera_name)
    from vla_robot.calibration.geometry import make_T

    poses = {n: make_T(cv2.Rodrigues(r)[0], t.ravel()) for n, r, t in zip(names, rvecs, tvecs)}
    return IntrinsicsResult(cam, float(rms), errors, rejected, detections, poses)


def _need(usable: int, needed: int, total: int, rejected: dict[str, str]) -> None:
    if usable >= needed:
        return
    reasons: dict[str, int] = {}
    for r in rejected.values():
        key = r.split(":")[0].split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    why = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "none rejected"
    hint = (
        "No view shows the board: check that --board matches the printed board (squares, dictionary, legacy pattern) "
        "and that the board is lit and in focus."
        if rejected and all(r.startswith("no board") for r in rejected.values())
        else f"Capture at least {needed} views with the whole board visible, at 0.3-1 m, tilted 20-45 degrees in different directions."
    )
    raise CalibrationError(f"only {usable} usable views of {total} (need {needed}; rejected - {why}). {hint}")
