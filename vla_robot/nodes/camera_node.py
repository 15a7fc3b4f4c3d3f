"""camera_node: publishes every configured camera as ``cameras/<name>/image_raw`` + ``camera_info``.

Each camera (``devices.<name>: {backend: opencv|realsense|twin, ...options}``) is a
vla_robot.drivers Camera read by its own thread, so a slow camera never delays another. Images go
out best effort with a small queue (a late frame is worse than a lost one), stamped with the
device's capture time (converted to ROS time); camera_info is latched. A camera that delivers no
frame for ``stale_after_s`` is reported once in the log and on /diagnostics.
"""
from __future__ import annotations

import threading
import time

from sensor_msgs.msg import CameraInfo, Image

from vla_robot.config import ConfigError
from vla_robot.drivers.base import DriverError, make_camera
from vla_robot.nodes import common, convert
from vla_robot.nodes.config import CameraNodeConfig


class CameraNode(common.ConfiguredNode):
    config_class = CameraNodeConfig

    def __init__(self, node_name: str = "camera_node", **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: CameraNodeConfig = self.config
        self.cameras = {}
        try:
            for name, dev in cfg.devices.items():
                options = {k: v for k, v in dev.items() if k != "backend"}
                try:
                    self.cameras[name] = make_camera(dev["backend"], options)
                except ConfigError as e:
                    raise ConfigError(f"devices.{name}: {e}") from None
                self.cameras[name].connect()
        except BaseException:
            self.close()
            raise
        self.diagnostics = common.Diagnostics(self)
        self._stop = threading.Event()
        self._threads = []
        self.frames = {name: 0 for name in self.cameras}
        for name, cam in self.cameras.items():
            img_pub = self.create_publisher(Image, common.image_topic(name), common.IMAGE_QOS)
            info_pub = self.create_publisher(CameraInfo, common.camera_info_topic(name), common.LATCHED_QOS)
            mon = self.diagnostics.monitor(f"camera {name}", cfg.stale_after_s)
            t = threading.Thread(target=self._loop, args=(name, cam, img_pub, info_pub, mon), daemon=True,
                                 name=f"camera:{name}")
            self._threads.append(t)
            t.start()
        self.get_logger().info(f"cameras: {', '.join(f'{n} ({c.kind})' for n, c in self.cameras.items())}")

    def _loop(self, name, cam, img_pub, info_pub, mon) -> None:
        period = 1.0 / self.config.fps
        offset = common.wall_offset()
        info_sent = False
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                img, stamp = cam.read()
            except Exception as e:  # noqa: BLE001 - a camera that fails keeps being retried, and says why
                mon.check()
                kind = "" if isinstance(e, DriverError) else f"{type(e).__name__}: "
                self.get_logger().warning(f"camera {name}: {kind}{e}", throttle_duration_sec=5.0)
                self._stop.wait(0.1)
                continue
            ros_stamp = stamp + offset
            frame = f"{name}_optical"
            try:
                msg = convert.image_to_msg(img, ros_stamp, frame_id=frame)
            except ValueError as e:
                self.get_logger().error(f"camera {name}: bad frame from the driver: {e}", throttle_duration_sec=5.0)
                continue
            img_pub.publish(msg)
            mon.tick(latency_s=max(0.0, time.monotonic() - stamp))
            self.frames[name] += 1
            if not info_sent:
                info = cam.camera_info()
                h, w = img.shape[:2]
                if info is not None:
                    msg = convert.camera_info_msg(info.width, info.height, ros_stamp, frame, k=info.K, d=info.D,
                                                   distortion_model=info.distortion_model)
                else:
                    msg = convert.camera_info_msg(w, h, ros_stamp, frame)
                info_pub.publish(msg)
                info_sent = True
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            for t in self._threads:
                t.join(timeout=2.0)
        for cam in self.cameras.values():
            try:
                cam.close()
            except Exception:  # noqa: BLE001
                pass


NODE_CLASS = CameraNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(CameraNode, args)


if __name__ == "__main__":
    main()
