"""Device drivers behind two small interfaces: :class:`Camera` and :class:`Arm`.

Backends (``realsense``, ``opencv``, ``lerobot``, ``twin`` …) live in ``vla_robot/drivers/<kind>.py``
and register themselves by name; :func:`make_camera` / :func:`make_arm` pick one by that name and
import it only then, so this package stays light.
"""
from vla_robot.drivers import base
from vla_robot.drivers.base import (
    Arm,
    Camera,
    CameraModel,
    DriverError,
    available,
    backend_class,
    make_arm,
    make_camera,
    register_arm,
    register_camera,
)

# Backends whose module is not named after their kind, registered lazily (imported on first use).
register_camera("opencv", "vla_robot.drivers.opencv_camera:OpenCVCamera")
register_arm("lerobot", "vla_robot.drivers.lerobot_arm:LeRobotArm")

__all__ = base.__all__  # the public names are base's
