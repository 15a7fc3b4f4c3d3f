"""The two device interfaces every backend implements, and the by-name backend registry.

A backend is a class derived from :class:`Camera` or :class:`Arm` with a ``config_class``
(a dataclass, stdlib/numpy only) and a constructor ``__init__(self, config)``. It registers under a
name (LeRobot style)::

    @register_camera("opencv")
    class OpenCVCamera(Camera):
        config_class = OpenCVCameraConfig
        ...

so that a YAML key or a CLI flag picks it: ``make_camera("opencv", {"index": 0})``. Backends load
lazily: asking for kind ``"foo"`` that nobody registered yet imports ``vla_robot.drivers.foo``
(whose decorators register it), so ``import vla_robot.drivers`` never imports pyrealsense2, lerobot
or mujoco. A plugin package registers its own kinds the same way, or with a ``"module:Class"``
string that is imported on first use.

Conventions (docs/interfaces.md): images are ``uint8`` RGB ``H x W x 3``; joint vectors are 1-D
float arrays in the robot's units with the gripper last; stamps are ``time.monotonic()`` seconds.

This module imports only the standard library, numpy, PyYAML and :mod:`vla_robot.config`; intrinsics
are :class:`vla_robot.calibration.camera_model.CameraModel`, the one camera model of the stack.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

from vla_robot.calibration.camera_model import CameraModel
from vla_robot.config import ConfigError, from_dict

__all__ = [
    "Arm",
    "Camera",
    "CameraModel",
    "DriverError",
    "available",
    "backend_class",
    "make_arm",
    "make_camera",
    "register_arm",
    "register_camera",
]


class DriverError(RuntimeError):
    """A device failed at run time (disconnected, timed out, refused a command)."""


class _Device(abc.ABC):
    """Shared life cycle: ``connect()`` (idempotent), ``close()`` (idempotent), context manager."""

    config_class: type | None = None
    kind: str = ""  # the registry name, set by the register decorators

    def connect(self) -> None:
        """Open the device. Backends that open in the constructor may leave this a no-op."""

    def close(self) -> None:
        """Release the device. Safe to call twice."""

    @property
    def is_connected(self) -> bool:
        return True

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Camera(_Device):
    """A colour camera. ``read()`` returns the newest frame and the time it was taken."""

    name: str = "camera"

    @abc.abstractmethod
    def read(self) -> tuple[np.ndarray, float]:
        """The newest image (``uint8`` RGB ``H x W x 3``) and its stamp (``time.monotonic()`` s).

        Raises :class:`DriverError` when no frame arrives in the backend's timeout.
        """

    def camera_info(self) -> CameraModel | None:
        """Intrinsics of the images ``read()`` returns (the calibration module's model), when known."""
        return None


class Arm(_Device):
    """A position-controlled arm whose last joint is the gripper.

    ``command(q_target)`` takes absolute joint position targets (robot units, gripper last);
    it does not block until they are reached.
    """

    joint_names: list[str] = []

    @abc.abstractmethod
    def read(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Measured joint positions, velocities and their stamp (``time.monotonic()`` s)."""

    @abc.abstractmethod
    def command(self, q_target: np.ndarray) -> None:
        """Send absolute joint position targets (length ``len(joint_names)``)."""

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    def check_command(self, q_target) -> np.ndarray:
        """``q_target`` as a finite float64 vector of the arm's length, or a ValueError that says why."""
        q = np.asarray(q_target, dtype=np.float64)
        if q.ndim != 1 or q.shape[0] != self.n_joints:
            raise ValueError(
                f"{type(self).__name__}.command: expected {self.n_joints} joint targets "
                f"({', '.join(self.joint_names)}), got an array of shape {q.shape}"
            )
        if not np.all(np.isfinite(q)):
            bad = [self.joint_names[i] for i in np.flatnonzero(~np.isfinite(q))]
            raise ValueError(f"{type(self).__name__}.command: non-finite target for {', '.join(bad)}: {q.tolist()}")
        return q


# --- registry -----------------------------------------------------------------------------------

_FAMILIES = ("camera", "arm")
_BASES: dict[str, type] = {"camera": Camera, "arm": Arm}
# family -> kind -> class or "module:Class" (resolved on first use)
_REGISTRY: dict[str, dict[str, Any]] = {"camera": {}, "arm": {}}
_LOCK = threading.Lock()
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

D = TypeVar("D", bound=type)


def _register(family: str, kind: str, target: Any = None):
    if not _NAME.match(kind):
        raise ValueError(f"backend name must be lower_snake_case (like 'opencv' or 'twin'), got {kind!r}")

    def put(cls):
        if isinstance(cls, str):
            if ":" not in cls:
                raise ValueError(f"a lazy {family} backend must be 'module:Class', got {cls!r}")
        elif not (isinstance(cls, type) and issubclass(cls, _BASES[family])):
            raise TypeError(f"{family} backend '{kind}' must be a subclass of {_BASES[family].__name__}, got {cls!r}")
        else:
            cls.kind = kind
        with _LOCK:
            _REGISTRY[family][kind] = cls
        return cls

    return put(target) if target is not None else put


def register_camera(kind: str, target: type | str | None = None) -> Callable[[D], D] | Any:
    """Register a :class:`Camera` backend under ``kind``: as a decorator, or with a class/``"module:Class"``."""
    return _register("camera", kind, target)


def register_arm(kind: str, target: type | str | None = None) -> Callable[[D], D] | Any:
    """Register an :class:`Arm` backend under ``kind``: as a decorator, or with a class/``"module:Class"``."""
    return _register("arm", kind, target)


def backend_class(family: str, kind: str) -> type:
    """The class registered for ``kind`` in ``family`` ('camera' or 'arm'), importing it on demand.

    An unregistered kind is looked for in ``vla_robot.drivers.<kind>``; importing that module
    registers its backends.
    """
    if family not in _FAMILIES:
        raise ValueError(f"driver family must be one of {_FAMILIES}, got {family!r}")
    if not isinstance(kind, str) or not _NAME.match(kind):
        raise ValueError(f"{family} backend name must be lower_snake_case, got {kind!r}")
    entry = _REGISTRY[family].get(kind)
    if entry is None:
        try:
            importlib.import_module(f"vla_robot.drivers.{kind}")
        except ModuleNotFoundError as e:
            if e.name != f"vla_robot.drivers.{kind}":
                raise  # the backend exists but a dependency of it is missing: say which
        entry = _REGISTRY[family].get(kind)
    if entry is None:
        known = ", ".join(sorted(available(family))) or "none"
        raise ValueError(f"unknown {family} backend '{kind}'; registered {family} backends: {known}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        _register(family, kind, cls)
        entry = cls
    return entry


def available(family: str) -> list[str]:
    """The kinds registered so far in ``family`` (lazy modules not yet imported are not listed)."""
    if family not in _FAMILIES:
        raise ValueError(f"driver family must be one of {_FAMILIES}, got {family!r}")
    return sorted(_REGISTRY[family])


def _build(family: str, kind: str, config: Any, overrides: dict):
    cls = backend_class(family, kind)
    cfg_cls = cls.config_class
    if cfg_cls is None:
        if config or overrides:
            raise ConfigError(f"{family} backend '{kind}' takes no configuration, got {config or overrides!r}")
        return cls()
    if config is None:
        data: dict = {}
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        if not isinstance(config, cfg_cls):
            raise ConfigError(
                f"{family} backend '{kind}' expects a {cfg_cls.__name__} config, got {type(config).__name__}"
            )
        init = {f.name for f in dataclasses.fields(config) if f.init}
        data = {k: v for k, v in dataclasses.asdict(config).items() if k in init}  # nested configs too
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise ConfigError(
            f"{family} backend '{kind}': config must be a mapping or a {cfg_cls.__name__}, got {type(config).__name__}"
        )
    data.update(overrides)
    cfg = from_dict(cfg_cls, data, source=f"{family} backend '{kind}'")
    return cls(cfg)


def make_camera(kind: str, config: Any = None, **overrides) -> Camera:
    """Build the camera backend ``kind`` from a config mapping/dataclass plus keyword overrides.

    Bad keys or values raise :class:`vla_robot.config.ConfigError` naming the key and the expected form.
    """
    return _build("camera", kind, config, overrides)


def make_arm(kind: str, config: Any = None, **overrides) -> Arm:
    """Build the arm backend ``kind`` from a config mapping/dataclass plus keyword overrides."""
    return _build("arm", kind, config, overrides)
