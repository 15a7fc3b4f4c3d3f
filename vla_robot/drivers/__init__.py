"""Device drivers behind two small interfaces: :class:`Camera` and :class:`Arm`.

Backends (``realsense``, ``opencv``, ``lerobot``, ``twin`` …) live in ``vla_robot/drivers/<kind>.py``
and register themselves by name; :func:`make_camera` / :func:`make_arm` pick one by that name and
import it only then, so this package stays light.
"""
from vla_robot.drivers.base import (
    Arm,
    Camera,
    CameraInfo,
    DriverError,
    available,
    backend_class,
    make_arm,
    make_camera,
    register_arm,
    register_camera,
)

__all__ = [
    "Arm",
    "Camera",
    "CameraInfo",
    "DriverError",
    "available",
    "backend_class",
    "make_arm",
    "make_camera",
    "register_arm",
    "register_camera",
]
