"""Intel RealSense colour stream through pyrealsense2: ``make_camera("realsense", serial=..., ...)``.

The colour sensor is opened directly (sensor API, not ``rs.pipeline``) with a small frame queue, so
``read()`` returns the newest frame; stamps are the device's (``system_time`` / ``global_time``
domains, converted to ``time.monotonic()``), or the arrival time for the hardware clock. Intrinsics
come from the stream profile (factory calibration). Works with any ``rs.device`` — a USB camera, or
a ``rs.software_device`` in tests.
"""
from __future__ import annotations

import dataclasses

import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from vla_robot.drivers.base import Camera, CameraModel, DriverError, register_camera


@dataclass
class RealSenseConfig:
    serial: str = ""  # "" = the first RealSense found
    width: int = 640
    height: int = 480
    fps: int = 30
    format: Literal["rgb8", "bgr8"] = "rgb8"
    timeout_s: float = 1.0
    queue_size: int = 2
    frame_id: str = ""

    def validate(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"width, height and fps must be > 0, got {self.width}x{self.height} at {self.fps}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1 frame, got {self.queue_size}")


def _devices() -> list:
    """The RealSense devices connected to this machine (tests replace this with a software device)."""
    import pyrealsense2 as rs

    return list(rs.context().query_devices())


@register_camera("realsense")
class RealSenseCamera(Camera):
    config_class = RealSenseConfig

    def __init__(self, config: Optional[RealSenseConfig] = None):
        self.config = config or RealSenseConfig()
        self.name = self.config.serial or "realsense"
        self._sensor = None
        self._queue = None
        self._info: Optional[CameraModel] = None
        self._last_number = -1

    @property
    def is_connected(self) -> bool:
        return self._sensor is not None

    def connect(self) -> None:
        if self._sensor is not None:
            return
        import pyrealsense2 as rs

        c = self.config
        devices = _devices()
        serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
        if not devices:
            raise DriverError("realsense: no RealSense camera found (check the USB 3 cable and udev rules)")
        if c.serial and c.serial not in serials:
            raise DriverError(f"realsense: no camera with serial {c.serial}; connected: {', '.join(serials)}")
        dev = devices[serials.index(c.serial)] if c.serial else devices[0]
        self.name = dev.get_info(rs.camera_info.serial_number)
        fmt = {"rgb8": rs.format.rgb8, "bgr8": rs.format.bgr8}[c.format]
        for sensor in dev.query_sensors():
            for p in sensor.get_stream_profiles():
                if p.stream_type() != rs.stream.color or p.format() != fmt or p.fps() != c.fps:
                    continue
                v = p.as_video_stream_profile()
                if (v.width(), v.height()) == (c.width, c.height):
                    self._open(sensor, p, rs)
                    return
        offered = sorted({
            f"{p.as_video_stream_profile().width()}x{p.as_video_stream_profile().height()}@{p.fps()} {p.format()}"
            for s in dev.query_sensors() for p in s.get_stream_profiles() if p.stream_type() == rs.stream.color
        })
        raise DriverError(f"realsense {self.name}: no colour stream {c.width}x{c.height}@{c.fps} {c.format}; "
                          f"it offers: {', '.join(offered) or 'none'}")

    def _open(self, sensor, profile, rs) -> None:
        self._queue = rs.frame_queue(self.config.queue_size)
        sensor.open(profile)
        sensor.start(self._queue)
        self._sensor = sensor
        from vla_robot.calibration.realsense import camera_model_from_intrinsics

        intr = profile.as_video_stream_profile().get_intrinsics()
        self._info = dataclasses.replace(
            camera_model_from_intrinsics(intr, camera_name=self.name),
            frame_id=self.config.frame_id or f"realsense_{self.name}_color_optical",
        )
        self._rs = rs

    def read(self) -> tuple[np.ndarray, float]:
        if self._sensor is None:
            raise DriverError("realsense: read() before connect()")
        rs = self._rs
        try:
            frame = self._queue.wait_for_frame(int(self.config.timeout_s * 1000))
        except RuntimeError as e:
            raise DriverError(f"realsense {self.name}: no frame within {self.config.timeout_s} s ({e})") from None
        arrived = time.monotonic()
        # keep only the newest frame if several are queued
        while True:
            ok, newer = self._queue.try_wait_for_frame(0)
            if not ok:
                break
            frame = newer
        v = frame.as_video_frame()
        img = np.asanyarray(v.get_data())
        if self.config.format == "bgr8":
            img = img[:, :, ::-1]
        img = np.array(img, dtype=np.uint8, copy=True)
        domain = frame.get_frame_timestamp_domain()
        if domain in (rs.timestamp_domain.system_time, rs.timestamp_domain.global_time):
            stamp = frame.get_timestamp() / 1000.0 - (time.time() - time.monotonic())
            stamp = min(stamp, arrived)  # never in the future
        else:
            stamp = arrived
        self._last_number = frame.get_frame_number()
        return img, stamp

    def camera_info(self) -> Optional[CameraModel]:
        return self._info

    def close(self) -> None:
        if self._sensor is not None:
            try:
                self._sensor.stop()
                self._sensor.close()
            except RuntimeError:
                pass
            self._sensor = None
