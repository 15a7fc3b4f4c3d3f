"""The twin behind the driver interfaces: ``make_arm("twin")`` and ``make_camera("twin")``.

Arm and cameras of one *session* share one :class:`vla_robot.twin.env.TwinEnv`: the arm commands
and (in real-time mode) a background thread steps its physics at the control rate holding the last
target, as a servo does; each camera renders the current state when read. Nothing above the driver
interface can tell it from a real arm: same joint names and units, ``time.monotonic()`` stamps,
non-blocking ``command()``.

The episode manager (sim mode) resets the scene and asks for success through :func:`twin_session`.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from vla_robot.drivers.base import Arm, Camera, CameraModel, DriverError, register_arm, register_camera
from vla_robot.twin.config import TwinArmConfig, TwinCameraConfig, TwinConfig

__all__ = ["TwinArm", "TwinCamera", "TwinSession", "twin_session", "find_session", "close_session"]

_SESSIONS: dict[str, "TwinSession"] = {}
_SESSIONS_LOCK = threading.Lock()


class TwinSession:
    """One shared simulation: the env, a lock around it, and an optional real-time stepping thread."""

    def __init__(self, name: str, config: TwinConfig):
        from vla_robot.twin.env import TwinEnv

        self.name = name
        self.config = config
        self.env = TwinEnv(config)
        self.env.release_gl = True  # cameras render from whichever thread reads them
        self.lock = threading.RLock()
        self.env.reset()
        self._target = self.env.joint_positions()
        self._users = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stamp = time.monotonic()
        self.error: BaseException | None = None

    # --- the arm side -------------------------------------------------------------------------
    def set_target(self, q: np.ndarray) -> None:
        with self.lock:
            self._target = self.env.robot.clip(q)

    def advance(self) -> None:
        with self.lock:
            self.env.advance(self._target)
            self.stamp = time.monotonic()

    def reset(self, seed: int | None = None, start: int | None = None) -> dict:
        """New episode (sim mode): the arm holds its start pose until commanded."""
        with self.lock:
            obs = self.env.reset(seed=seed, start=start)
            self._target = self.env.joint_positions()
            self.stamp = time.monotonic()
            return obs

    def start_realtime(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"twin-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        period = self.env.control_dt
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                self.advance()
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:  # fell behind (a loaded machine): do not try to catch up in a burst
                    next_t = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - surfaced to the next read()
            self.error = e

    def stop_realtime(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None

    def check(self) -> None:
        if self.error is not None:
            raise DriverError(f"twin session '{self.name}': the simulation thread failed: {self.error!r}")

    def close(self) -> None:
        self.stop_realtime()
        with self.lock:
            self.env.close()


def twin_session(name: str = "default", config: TwinConfig | None = None) -> TwinSession:
    """The session ``name``, created with ``config`` (default TwinConfig) if it does not exist yet.

    Asking for an existing session with a different config is an error (two devices would
    disagree about the scene).
    """
    with _SESSIONS_LOCK:
        sess = _SESSIONS.get(name)
        if sess is None:
            sess = TwinSession(name, config or TwinConfig())
            _SESSIONS[name] = sess
        elif config is not None and config != sess.config:
            raise ValueError(
                f"twin session '{name}' already runs with a different twin config; give both devices the same "
                f"'twin' section or another session name (running: {dataclasses.asdict(sess.config)}, "
                f"asked: {dataclasses.asdict(config)})"
            )
        return sess


def find_session(name: str) -> TwinSession | None:
    """The running session ``name`` of this process, or None (never creates one)."""
    with _SESSIONS_LOCK:
        return _SESSIONS.get(name)


def close_session(name: str = "default") -> None:
    """Stop and forget session ``name`` (its devices stop working)."""
    with _SESSIONS_LOCK:
        sess = _SESSIONS.pop(name, None)
    if sess is not None:
        sess.close()


def _acquire(name: str, config: TwinConfig) -> TwinSession:
    sess = twin_session(name, config)
    with _SESSIONS_LOCK:
        sess._users += 1
    return sess


def _release(sess: TwinSession) -> None:
    with _SESSIONS_LOCK:
        sess._users -= 1
        last = sess._users <= 0 and _SESSIONS.get(sess.name) is sess
        if last:
            _SESSIONS.pop(sess.name)
    if last:
        sess.close()


@register_arm("twin")
class TwinArm(Arm):
    """The twin's arm. Joint names, limits and units are those of ``robot_spec(config.twin.robot)``."""

    config_class = TwinArmConfig

    def __init__(self, config: TwinArmConfig | None = None):
        self.config = config or TwinArmConfig()
        self.session = _acquire(self.config.session, self.config.twin)
        self.spec = self.session.env.robot
        self.joint_names = list(self.spec.joint_names)
        self._closed = False
        if self.config.realtime:
            self.session.start_realtime()

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def read(self) -> tuple[np.ndarray, np.ndarray, float]:
        self._check_open()
        with self.session.lock:
            env = self.session.env
            return env.joint_positions(), env.joint_velocities(), self.session.stamp

    def command(self, q_target) -> None:
        self._check_open()
        q = self.check_command(q_target)
        self.session.set_target(q)
        if not self.config.realtime:
            self.session.advance()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self.session)

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError("twin arm: used after close()")
        self.session.check()


@register_camera("twin")
class TwinCamera(Camera):
    """One camera of the twin: renders the session's current state on every ``read()``."""

    config_class = TwinCameraConfig

    def __init__(self, config: TwinCameraConfig | None = None):
        self.config = config or TwinCameraConfig()
        self.session = _acquire(self.config.session, self.config.twin)
        self.name = self.config.camera
        self._closed = False

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def read(self) -> tuple[np.ndarray, float]:
        if self._closed:
            raise DriverError(f"twin camera '{self.name}': used after close()")
        self.session.check()
        with self.session.lock:
            stamp = self.session.stamp
            image = self.session.env.render([self.name])[self.name]
        return image, stamp

    def camera_info(self) -> CameraModel:
        env = self.session.env
        h, w = env.image_size
        return CameraModel(K=env.camera_matrix(self.name), D=np.zeros(5), width=w, height=h,
                           camera_name=self.name, frame_id=f"{self.name}_optical")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self.session)
