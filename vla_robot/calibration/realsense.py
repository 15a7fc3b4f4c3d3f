"""RealSense factory intrinsics -> camera_info YAML (the same files ``calibrate intrinsics`` writes).

The factory calibration is per resolution: ask for the resolution you stream. RealSense
Brown-Conrady variants are written as ``plumb_bob`` (as ``realsense2_camera`` does; D4xx colour
streams report ``inverse_brown_conrady`` with near-zero coefficients), Kannala-Brandt as
``equidistant``. Needs Debian ``libusb-1.0-0`` for ``import pyrealsense2``.
"""
from __future__ import annotations

import numpy as np

from vla_robot.calibration.camera_model import CameraModel
from vla_robot.calibration.intrinsics import CalibrationError

__all__ = ["realsense_camera_model", "camera_model_from_intrinsics", "list_video_profiles"]

STREAMS = ("color", "depth", "infrared")


def camera_model_from_intrinsics(intr, camera_name: str = "realsense") -> CameraModel:
    """A :class:`CameraModel` from a ``pyrealsense2.intrinsics``."""
    import pyrealsense2 as rs

    coeffs = np.asarray(list(intr.coeffs), float)
    model = intr.model
    if model == rs.distortion.none:
        dist, D = "plumb_bob", np.zeros(5)
    elif model in (rs.distortion.brown_conrady, rs.distortion.inverse_brown_conrady, rs.distortion.modified_brown_conrady):
        dist, D = "plumb_bob", coeffs[:5]
    elif model == rs.distortion.kannala_brandt4:
        dist, D = "equidistant", coeffs[:4]
    else:
        raise CalibrationError(f"RealSense distortion model {model} has no camera_info equivalent; calibrate this stream with 'calibrate intrinsics'")
    K = np.array([[intr.fx, 0, intr.ppx], [0, intr.fy, intr.ppy], [0, 0, 1]], float)
    return CameraModel(K=K, D=D, width=intr.width, height=intr.height, distortion_model=dist, camera_name=camera_name)


def list_video_profiles(device, stream: str = "color") -> list[tuple[int, int, int, str]]:
    """(width, height, fps, format) of the device's video profiles of ``stream``."""
    import pyrealsense2 as rs

    st = getattr(rs.stream, stream)
    out = set()
    for sensor in device.query_sensors():
        for p in sensor.get_stream_profiles():
            if p.stream_type() == st and p.is_video_stream_profile():
                vp = p.as_video_stream_profile()
                out.add((vp.width(), vp.height(), p.fps(), str(p.format()).split(".")[-1]))
    return sorted(out)


def realsense_camera_model(
    device=None, serial: str | None = None, stream: str = "color", width: int = 640, height: int = 480,
    index: int = 1, camera_name: str | None = None,
) -> CameraModel:
    """Factory intrinsics of ``stream`` at ``width`` x ``height`` from a connected device (or ``device``)."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    import pyrealsense2 as rs

    if device is None:
        devices = list(rs.context().query_devices())
        if not devices:
            raise CalibrationError("no RealSense device connected: plug the camera into a USB 3 port (check 'rs-enumerate-devices')")
        if serial is not None:
            match = [d for d in devices if d.get_info(rs.camera_info.serial_number) == serial]
            if not match:
                found = [d.get_info(rs.camera_info.serial_number) for d in devices]
                raise CalibrationError(f"no RealSense with serial {serial}; connected: {found}")
            device = match[0]
        else:
            device = devices[0]
    st = getattr(rs.stream, stream)
    for sensor in device.query_sensors():
        for p in sensor.get_stream_profiles():
            if p.stream_type() != st or not p.is_video_stream_profile():
                continue
            if stream == "infrared" and p.stream_index() != index:  # infrared 1 (left) and 2 (right)
                continue
            vp = p.as_video_stream_profile()
            if (vp.width(), vp.height()) == (width, height):
                name = camera_name or (f"realsense_{serial}_{stream}" if serial else f"realsense_{stream}")
                return camera_model_from_intrinsics(vp.get_intrinsics(), name)
    sizes = sorted({(w, h) for w, h, _, _ in list_video_profiles(device, stream)})
    raise CalibrationError(f"the RealSense has no {stream} stream at {width}x{height}; available: {sizes or 'none'}")
