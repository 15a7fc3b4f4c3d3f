"""USB / V4L2 cameras (or a video file, or a GStreamer/RTSP URL) through OpenCV: ``make_camera("opencv", ...)``.

A background thread grabs frames as fast as the device delivers them and keeps only the newest, so
``read()`` never returns a frame that sat in the driver's buffer (OpenCV's queue would otherwise
hand out frames several hundred milliseconds old). ``read()`` waits for a frame newer than the one
it returned last, up to ``timeout_s``, and raises :class:`DriverError` when none comes.

Intrinsics come from a ``camera_info`` YAML (``calibration_file``, vla_robot.calibration format),
scaled to the delivered resolution, or are absent.
"""
from __future__ import annotations

import dataclasses

import threading
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from vla_robot.drivers.base import Camera, CameraModel, DriverError, register_camera


@dataclass
class OpenCVCameraConfig:
    """``index``: a device number (0 = /dev/video0), a device path, a video file or a stream URL."""

    index: Union[int, str] = 0
    width: int = 0  # 0: the device's default
    height: int = 0
    fps: float = 0.0  # 0: the device's default
    fourcc: str = ""  # e.g. MJPG: most USB cameras reach 30 fps at 640x480+ only with MJPG
    timeout_s: float = 1.0
    loop: bool = False  # a video file starts again at its end (tests, replays)
    calibration_file: str = ""
    frame_id: str = ""

    def validate(self) -> None:
        if isinstance(self.index, int) and self.index < 0:
            raise ValueError(f"index must be a device number >= 0, a path or a URL, got {self.index}")
        if self.width < 0 or self.height < 0 or (self.width == 0) != (self.height == 0):
            raise ValueError(f"width and height must both be > 0 (or both 0 for the default), got {self.width}x{self.height}")
        if self.fps < 0:
            raise ValueError(f"fps must be >= 0 (0 = default), got {self.fps}")
        if self.fourcc and len(self.fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters like MJPG or YUYV, got {self.fourcc!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")


@register_camera("opencv")
class OpenCVCamera(Camera):
    config_class = OpenCVCameraConfig

    def __init__(self, config: Optional[OpenCVCameraConfig] = None):
        self.config = config or OpenCVCameraConfig()
        self.name = str(self.config.index)
        self._cap = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._frame: Optional[np.ndarray] = None
        self._stamp = 0.0
        self._seq = 0
        self._read_seq = 0
        self._error: Optional[str] = None
        self._info: Optional[CameraModel] = None
        self.frames = 0

    @property
    def is_connected(self) -> bool:
        return self._cap is not None

    def connect(self) -> None:
        if self._cap is not None:
            return
        import cv2

        c = self.config
        cap = cv2.VideoCapture(c.index)
        if not cap.isOpened():
            raise DriverError(f"opencv camera {c.index!r}: cannot open it (no such device, busy, or no permission)")
        if c.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc))
        if c.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
        if c.fps:
            cap.set(cv2.CAP_PROP_FPS, c.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise DriverError(f"opencv camera {c.index!r}: opened but delivered no frame")
        h, w = frame.shape[:2]
        if c.width and (w, h) != (c.width, c.height):
            cap.release()
            raise DriverError(f"opencv camera {c.index!r}: asked for {c.width}x{c.height}, the device gives {w}x{h}")
        self._cap = cap
        self._period = 1.0 / cap.get(cv2.CAP_PROP_FPS) if isinstance(c.index, str) and cap.get(cv2.CAP_PROP_FPS) > 0 else 0.0
        self._publish(frame)
        if c.calibration_file:
            self._info = _load_info(c.calibration_file, w, h, c.frame_id)
        self._stop.clear()
        self._thread = threading.Thread(target=self._grab_loop, daemon=True, name=f"opencv:{c.index}")
        self._thread.start()

    def _publish(self, bgr: np.ndarray) -> None:
        rgb = np.ascontiguousarray(bgr[:, :, ::-1]) if bgr.ndim == 3 else np.repeat(bgr[:, :, None], 3, axis=2)
        with self._cond:
            self._frame, self._stamp = rgb, time.monotonic()
            self._seq += 1
            self.frames += 1
            self._cond.notify_all()

    def _grab_loop(self) -> None:
        import cv2

        cap = self._cap
        is_file = isinstance(self.config.index, str) and self._period > 0
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok or frame is None:
                if is_file and self.config.loop:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                with self._cond:
                    self._error = "the device stopped delivering frames"
                    self._cond.notify_all()
                self._stop.wait(0.05)
                continue
            self._error = None
            self._publish(frame)
            if is_file:  # a file plays at its own frame rate, like a camera
                self._stop.wait(self._period)

    def read(self) -> tuple[np.ndarray, float]:
        if self._cap is None:
            raise DriverError(f"opencv camera {self.config.index!r}: read() before connect()")
        deadline = time.monotonic() + self.config.timeout_s
        with self._cond:
            while self._seq == self._read_seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f" ({self._error})" if self._error else ""
                    raise DriverError(
                        f"opencv camera {self.config.index!r}: no new frame within {self.config.timeout_s} s{why}"
                    )
                self._cond.wait(left)
            self._read_seq = self._seq
            return self._frame, self._stamp

    def camera_info(self) -> Optional[CameraModel]:
        return self._info

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _load_info(path: str, width: int, height: int, frame_id: str) -> CameraModel:
    from vla_robot.calibration import load_camera_info

    model = load_camera_info(path)
    if (model.width, model.height) != (width, height):
        model = model.scaled(width, height)
    return dataclasses.replace(model, frame_id=frame_id or model.camera_name)
