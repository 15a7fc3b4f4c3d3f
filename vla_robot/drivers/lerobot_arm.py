"""Arms (and leader arms) that lerobot drives — SO-100/101, Koch, OMX …: ``make_arm("lerobot", ...)``.

Wraps a lerobot ``Robot`` (``robot_type: so101_follower``) or, read-only, a leader ``Teleoperator``
(``robot_type: so101_leader``) behind :class:`vla_robot.drivers.base.Arm`, converting lerobot's
units to ours: lerobot reports body joints in degrees (``use_degrees``) and the gripper in 0..100;
we use radians and the gripper angle of :mod:`vla_robot.twin.robots`. ``offsets_deg`` is lerobot's
reading at our zero of each body joint (from calibrating against the twin); the gripper maps
linearly from ``gripper_range`` onto the robot spec's closed..open angles.

lerobot must already hold a calibration for ``id`` (``lerobot-calibrate``); this driver never
starts the interactive calibration. ``connect()`` turns each way a start fails (the motor bus SDK
not installed, no such port, no permission, silent motors, no or another calibration) into a
:class:`DriverError` that says what to do, the node's "a device did not start".
"""
from __future__ import annotations

import errno
import importlib
import importlib.metadata
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from vla_robot.drivers.base import Arm, DriverError, register_arm
from vla_robot.twin.robots import check_robot, robot_spec

# robot_type -> module that registers its lerobot config class
_FAMILIES = {
    "so100_follower": "lerobot.robots.so_follower",
    "so101_follower": "lerobot.robots.so_follower",
    "koch_follower": "lerobot.robots.koch_follower",
    "omx_follower": "lerobot.robots.omx_follower",
    "so100_leader": "lerobot.teleoperators.so_leader",
    "so101_leader": "lerobot.teleoperators.so_leader",
    "koch_leader": "lerobot.teleoperators.koch_leader",
    "omx_leader": "lerobot.teleoperators.omx_leader",
}

# The Python module of a motor bus's SDK -> the lerobot extra that installs it. lerobot imports the
# SDK only when it builds the bus, so a missing one shows up then, not at import.
_SDK_EXTRAS = {"scservo_sdk": "feetech", "dynamixel_sdk": "dynamixel"}


def _missing_module(e: ModuleNotFoundError, robot_type: str) -> DriverError:
    name = (e.name or str(e)).split(".")[0]
    extra = _SDK_EXTRAS.get(name)
    if extra is None:
        return DriverError(f"lerobot {robot_type} needs the Python module {name!r}, which is not installed: "
                           f"install the project's requirements (scripts/setup.sh, requirements.txt)")
    try:
        version = "==" + importlib.metadata.version("lerobot")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return DriverError(f"lerobot {robot_type} needs its motor bus SDK, the Python module {name!r}, which is not "
                       f"installed: install lerobot's '{extra}' extra (`pip install 'lerobot[{extra}]{version}'`; "
                       f"scripts/setup.sh does, from requirements.txt)")


def _disconnect_quietly(device) -> None:
    """Close a device that failed to start: the error being raised says why, not a second one from here."""
    try:
        device.disconnect()
    except Exception:  # noqa: BLE001
        pass


def _chain(e: BaseException):
    """``e`` and the exceptions it was raised from."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


@dataclass
class LeRobotArmConfig:
    robot_type: str = "so101_follower"
    port: str = "/dev/ttyACM0"
    id: str = "follower"
    calibration_dir: str = ""  # "" = lerobot's default (~/.cache/huggingface/lerobot/calibration)
    robot: str = "so101"  # our robot spec: joint names, limits, gripper angles
    offsets_deg: list[float] = field(default_factory=list)  # lerobot degrees at our zero, per body joint
    gripper_range: list[float] = field(default_factory=lambda: [0.0, 100.0])  # lerobot closed, open
    max_relative_target: Optional[float] = None  # lerobot's own per-step clamp (degrees); None: off

    def validate(self) -> None:
        check_robot(self.robot)
        if self.robot_type not in _FAMILIES and "_" not in self.robot_type:
            raise ValueError(f"robot_type must be a lerobot robot or leader type like so101_follower, got {self.robot_type!r}")
        if not self.port:
            raise ValueError("port must name the servo bus's serial port, e.g. /dev/ttyACM0")
        if len(self.gripper_range) != 2 or self.gripper_range[0] == self.gripper_range[1]:
            raise ValueError(f"gripper_range must be [closed, open] in lerobot units, two different numbers, got {self.gripper_range}")
        if self.max_relative_target is not None and not self.max_relative_target > 0:
            raise ValueError(f"max_relative_target must be > 0 degrees or null, got {self.max_relative_target}")

    @property
    def is_leader(self) -> bool:
        return self.robot_type.endswith("_leader")


@register_arm("lerobot")
class LeRobotArm(Arm):
    config_class = LeRobotArmConfig

    def __init__(self, config: Optional[LeRobotArmConfig] = None):
        self.config = c = config or LeRobotArmConfig()
        self.spec = robot_spec(c.robot)
        self.joint_names = list(self.spec.joint_names)
        n_body = self.spec.n_joints - 1
        if c.offsets_deg and len(c.offsets_deg) != n_body:
            raise ValueError(f"offsets_deg must have {n_body} entries (one per body joint of {c.robot}), got {len(c.offsets_deg)}")
        self._offsets = np.radians(np.asarray(c.offsets_deg or [0.0] * n_body, dtype=np.float64))
        self._device = None
        self._lock = threading.Lock()
        self._last: Optional[tuple[np.ndarray, float]] = None

    # --- units ----------------------------------------------------------------------------------
    def to_ours(self, values: dict) -> np.ndarray:
        """lerobot ``{motor.pos: value}`` -> our joint vector (radians, gripper angle)."""
        try:
            raw = np.array([float(values[f"{n}.pos"]) for n in self.joint_names])
        except KeyError as e:
            raise DriverError(f"lerobot {self.config.robot_type} reports no {e.args[0]}; it has {sorted(values)}") from None
        q = np.empty_like(raw)
        g = self.spec.gripper_index
        body = [i for i in range(len(raw)) if i != g]
        q[body] = np.radians(raw[body]) - self._offsets
        lo, hi = self.config.gripper_range
        q[g] = self.spec.gripper_closed + (raw[g] - lo) / (hi - lo) * (self.spec.gripper_open - self.spec.gripper_closed)
        return q

    def to_lerobot(self, q: np.ndarray) -> dict:
        g = self.spec.gripper_index
        out = {}
        lo, hi = self.config.gripper_range
        k = 0
        for i, n in enumerate(self.joint_names):
            if i == g:
                frac = (q[i] - self.spec.gripper_closed) / (self.spec.gripper_open - self.spec.gripper_closed)
                out[f"{n}.pos"] = float(lo + frac * (hi - lo))
            else:
                out[f"{n}.pos"] = float(math.degrees(q[i] + self._offsets[k]))
                k += 1
        return out

    # --- life cycle -----------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._device is not None

    def connect(self) -> None:
        if self._device is not None:
            return
        c = self.config
        try:
            device = self._make_device()
        except ModuleNotFoundError as e:  # lerobot, or the SDK of the arm's motor bus, is not installed
            raise _missing_module(e, c.robot_type) from None
        try:
            device.connect(calibrate=False)
        except Exception as e:  # noqa: BLE001 - serial errors come in many types
            raise self._connect_error(e) from None
        try:
            calibrated = device.is_calibrated
        except Exception as e:  # noqa: BLE001
            _disconnect_quietly(device)
            raise DriverError(f"lerobot {c.robot_type} on {c.port}: cannot read the motors' calibration "
                              f"({type(e).__name__}: {e})") from None
        if not calibrated:
            _disconnect_quietly(device)
            raise self._calibration_error(device.calibration_fpath)
        self._device = device

    def _make_device(self):
        """lerobot's Robot (or, for a leader, Teleoperator) of ``robot_type``, not yet connected."""
        c = self.config
        module = _FAMILIES.get(c.robot_type)
        if module:
            importlib.import_module(module)
        if c.is_leader:
            from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config as make

            base = TeleoperatorConfig
        else:
            from lerobot.robots import RobotConfig, make_robot_from_config as make

            base = RobotConfig
        try:
            cfg_cls = base.get_choice_class(c.robot_type)
        except Exception:  # noqa: BLE001 - draccus raises its own error types
            raise DriverError(f"lerobot knows no {'leader' if c.is_leader else 'robot'} type {c.robot_type!r}") from None
        kwargs = {"port": c.port, "id": c.id}
        if c.calibration_dir:
            kwargs["calibration_dir"] = Path(c.calibration_dir)
        if not c.is_leader and c.max_relative_target is not None:
            kwargs["max_relative_target"] = c.max_relative_target
        return make(cfg_cls(**kwargs))  # the motor bus imports its SDK here

    def _connect_error(self, e: Exception) -> DriverError:
        """What went wrong opening the bus, in words that say what to do. lerobot wraps the serial
        error (pyserial's SerialException, an OSError with the errno) in a ConnectionError."""
        c = self.config
        os_error = next((x for x in _chain(e) if isinstance(x, OSError) and x.errno), None)
        where = "teleop_node.leader.port" if c.is_leader else "arm_node.options.port"
        code = os_error.errno if os_error is not None else None
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return DriverError(f"no serial port {c.port}: plug the arm's USB cable in (and power it), or set {where} "
                               f"to its port (`lerobot-find-port` names it)")
        if code == errno.EACCES:
            return DriverError(f"no permission to open serial port {c.port}: add the user to the 'dialout' group "
                               f"(`sudo usermod -aG dialout $USER`, then log in again)")
        if code == errno.EBUSY:
            return DriverError(f"serial port {c.port} is in use by another program: stop it, or set {where}")
        return DriverError(f"lerobot {c.robot_type} on {c.port}: cannot connect ({type(e).__name__}: {e}); check that "
                           f"the arm is powered and that {where} names its port")

    def _calibration_error(self, fpath: Path) -> DriverError:
        c = self.config
        kind = "teleop" if c.is_leader else "robot"
        run = f"`lerobot-calibrate --{kind}.type={c.robot_type} --{kind}.port={c.port} --{kind}.id={c.id}"
        if c.calibration_dir:
            run += f" --{kind}.calibration_dir={c.calibration_dir}"
        run += "`"
        if not Path(fpath).is_file():
            return DriverError(f"no calibration for id '{c.id}' at {fpath}: run {run} first, or set id / calibration_dir "
                               f"to an existing calibration")
        return DriverError(f"the motors of '{c.id}' on {c.port} hold another calibration than {fpath}: run {run} "
                           f"(ENTER writes the file's calibration to the motors; 'c' calibrates anew)")

    def read(self) -> tuple[np.ndarray, np.ndarray, float]:
        dev = self._require()
        with self._lock:
            try:
                values = dev.get_action() if self.config.is_leader else dev.get_observation()
            except Exception as e:  # noqa: BLE001
                raise DriverError(f"lerobot {self.config.robot_type}: read failed ({type(e).__name__}: {e})") from None
            stamp = time.monotonic()
            q = self.to_ours(values)
            dq = np.zeros_like(q)
            if self._last is not None and stamp > self._last[1]:
                dq = (q - self._last[0]) / (stamp - self._last[1])
            self._last = (q, stamp)
        return q, dq, stamp

    def command(self, q_target) -> None:
        dev = self._require()
        if self.config.is_leader:
            raise DriverError(f"lerobot {self.config.robot_type} is a leader arm: it can be read, not commanded")
        q = self.spec.clip(self.check_command(q_target))
        with self._lock:
            try:
                dev.send_action(self.to_lerobot(q))
            except Exception as e:  # noqa: BLE001
                raise DriverError(f"lerobot {self.config.robot_type}: command failed ({type(e).__name__}: {e})") from None

    def _require(self):
        if self._device is None:
            raise DriverError(f"lerobot {self.config.robot_type}: not connected (call connect())")
        return self._device

    def close(self) -> None:
        if self._device is not None:
            try:
                self._device.disconnect()
            finally:
                self._device = None
