"""The robot description: the joints the policy drives, what the hardware calls them, and their limits.

A policy is trained on one joint vector: the twin's joint names in its order, arm then gripper, in
the twin's units (``vla_robot.twin.robots``). A real arm under ros2_control names its joints
otherwise (``fr3_joint1``, ``shoulder_pan_joint``), publishes them in any order, and may report the
gripper in other units (the Franka hand's finger in metres, where the Panda twin's gripper is a
Robotiq driver angle). A :class:`RobotDescription` is that mapping, with the position, velocity and
acceleration limits the safety filter enforces, the home pose, and how the gripper is commanded.

Sources, later ones overriding earlier ones per key (``docs/robot_description.md``):

1. a URDF (``urdf:``, a file or the ``robot_description`` XML text): ``<limit lower upper velocity>``
   of each ``<joint>`` (URDF has no acceleration limits);
2. a ``joint_limits:`` block (or file) in ros2_control's ``joint_limits`` form, keyed by hardware
   name: ``min_position``, ``max_position``, ``max_velocity``, ``max_acceleration``, each used only
   where its ``has_*_limits`` flag is not false (the form of ``joint_limits.yaml`` in
   ``UniversalRobots/Universal_Robots_ROS2_Description/config/ur5e/joint_limits.yaml`` and
   ``moveit_resources/panda_moveit_config/config/joint_limits.yaml``; UR's ``!degrees`` tag is read);
3. the joint's own ``lower``, ``upper``, ``velocity``, ``acceleration`` keys.

The twin's robot spec is one more source: :meth:`RobotDescription.from_twin` is the description a
node uses when none is configured, so existing configurations behave as before.

Units: the arm joints' units are the hardware's (radians). The gripper has two: the hardware's
(``open``, ``closed``, its limits) and the policy's (``policy_open``, ``policy_closed``, by default
the twin's); the map between them is linear. Everything a method returns in policy order is in
policy units. ROS-free: numpy, PyYAML and the standard library's XML parser.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import yaml

__all__ = ["DescriptionError", "JointDescription", "GripperDescription", "RobotDescription", "load_description",
           "resolve_description", "reorder_joints", "GRIPPER_INTERFACES"]

#: how the gripper is commanded: ``none`` (no gripper), ``with_arm`` (one more joint of the arm's
#: command: arm_node and the twin), ``position_controller`` (its own forward position controller,
#: std_msgs/Float64MultiArray), ``trajectory_controller`` (a second joint trajectory controller)
GRIPPER_INTERFACES = ("none", "with_arm", "position_controller", "trajectory_controller")
_LIMITS = ("lower", "upper", "velocity", "acceleration")
_UNITS = {"lower": "rad (m for a prismatic joint)", "upper": "rad (m for a prismatic joint)",
          "velocity": "rad/s", "acceleration": "rad/s^2"}


class DescriptionError(ValueError):
    """A robot description that cannot drive the arm; the message names the key and the fix."""


@dataclass(frozen=True)
class JointDescription:
    """One joint: the policy's (and twin's) name, the controller's name, limits in hardware units."""

    name: str
    hardware_name: str
    lower: float
    upper: float
    velocity: float  # > 0, the largest speed either way
    acceleration: float  # > 0


@dataclass(frozen=True)
class GripperDescription:
    """The gripper and how it is commanded (:data:`GRIPPER_INTERFACES`).

    ``open``/``closed`` and the limits are in hardware units; ``policy_open``/``policy_closed`` are
    the same two states in the policy's units (the twin's ``gripper_open``/``gripper_closed``).
    ``topic`` is the controller's command topic for the two controller interfaces.
    """

    interface: str = "none"
    name: str = ""
    hardware_name: str = ""
    topic: str = ""
    open: float = 0.0
    closed: float = 0.0
    lower: float = 0.0
    upper: float = 0.0
    velocity: float = 0.0
    acceleration: float = 0.0
    policy_open: float = 0.0
    policy_closed: float = 0.0

    @property
    def present(self) -> bool:
        return self.interface != "none"

    @property
    def scale(self) -> float:
        """Policy units per hardware unit (negative where closing runs the other way)."""
        return (self.policy_closed - self.policy_open) / (self.closed - self.open)

    @property
    def identity(self) -> bool:
        """Whether policy and hardware units agree (no arithmetic, so no rounding, on the way)."""
        return self.open == self.policy_open and self.closed == self.policy_closed

    def from_hardware(self, x):
        """Hardware units -> policy units (a number or an array)."""
        if self.identity:
            return np.asarray(x, dtype=np.float64)
        return self.policy_open + (np.asarray(x, dtype=np.float64) - self.open) * self.scale

    def to_hardware(self, x):
        """Policy units -> hardware units (a number or an array)."""
        if self.identity:
            return np.asarray(x, dtype=np.float64)
        return self.open + (np.asarray(x, dtype=np.float64) - self.policy_open) / self.scale

    def policy_joint(self) -> JointDescription:
        """The gripper as a joint of the policy's vector: its limits in policy units."""
        lo, hi = sorted(float(self.from_hardware(v)) for v in (self.lower, self.upper))
        s = abs(self.scale)
        return JointDescription(self.name, self.hardware_name, lo, hi, self.velocity * s, self.acceleration * s)


@dataclass(frozen=True, eq=False)  # eq would compare the home arrays ambiguously
class RobotDescription:
    """An arm as the policy sees it (``joints`` in policy order, then the gripper) and as its
    controllers see it (hardware names and units). ``home`` is in policy order and units. ``twin``
    names the registered twin robot whose joints and gripper units the policy uses (None: none)."""

    name: str
    joints: tuple[JointDescription, ...]
    gripper: GripperDescription
    home: np.ndarray
    twin: Optional[str] = None
    source: str = ""  # where it was read from, for messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "joints", tuple(self.joints))
        _check_description(self)
        home = np.array(self.home, dtype=np.float64)
        home.setflags(write=False)
        object.__setattr__(self, "home", home)

    # --- names ------------------------------------------------------------------------------------
    @property
    def n_joints(self) -> int:
        """Entries of the policy's joint vector (arm joints, and the gripper if there is one)."""
        return len(self.joints) + (1 if self.gripper.present else 0)

    @property
    def gripper_index(self) -> Optional[int]:
        """The gripper's index in the policy's vector (the last), or None without a gripper."""
        return len(self.joints) if self.gripper.present else None

    def policy_joints(self) -> tuple[JointDescription, ...]:
        """Every joint in policy order with limits in policy units (the gripper's mapped)."""
        return self.joints + ((self.gripper.policy_joint(),) if self.gripper.present else ())

    def names(self) -> list[str]:
        """The policy's (and twin's) joint names, in policy order."""
        return [j.name for j in self.policy_joints()]

    def hardware_names(self) -> list[str]:
        """The controllers' joint names, in policy order (arm joints, then the gripper's)."""
        return [j.hardware_name for j in self.joints] + ([self.gripper.hardware_name] if self.gripper.present else [])

    def arm_hardware_names(self) -> list[str]:
        """The arm joints' hardware names, in policy order: the joints of the arm's controller (with
        the gripper's appended when its interface is ``with_arm``)."""
        return self.hardware_names() if self.gripper.interface == "with_arm" else [j.hardware_name for j in self.joints]

    @property
    def label(self) -> str:
        return f"robot description {self.source or self.name!r}"

    # --- conversion -------------------------------------------------------------------------------
    def from_joint_state(self, names: Sequence[str], positions,
                         velocities=None) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """A joint state in hardware names (any order, extra joints ignored) -> (positions,
        velocities or None) in policy order and units. A missing joint is a ValueError that names it
        and the description's key to fix."""
        names = [str(n) for n in names]
        hw = self.hardware_names()
        try:
            q, dq = reorder_joints(names, hw, positions, velocities)
        except ValueError as e:
            missing = [i for i, h in enumerate(hw) if h not in names]
            keys = ", ".join(f"{self.names()[i]} (hardware_name {hw[i]!r})" for i in missing)
            raise ValueError(f"{e}. {self.label} maps {keys or 'every joint'} to it: set hardware_name to the "
                             "name the controller publishes") from None
        if self.gripper.present:
            g = self.gripper_index
            q = q.copy()
            q[g] = self.gripper.from_hardware(q[g])
            if dq is not None:
                dq = dq.copy()
                dq[g] = dq[g] * self.gripper.scale
        return q, dq

    def to_hardware(self, q) -> np.ndarray:
        """A joint vector in policy order and units -> hardware units, in :meth:`hardware_names` order."""
        q = np.array(q, dtype=np.float64)
        if q.shape != (self.n_joints,):
            raise ValueError(f"{self.label}: a joint vector has {self.n_joints} entries ({', '.join(self.names())}), "
                             f"got shape {q.shape}")
        if self.gripper.present:
            q[-1] = self.gripper.to_hardware(q[-1])
        return q

    def limits(self):
        """The limits the safety filter enforces, as ``vla_robot.control.JointLimits`` (policy order
        and units, with the home pose); the safety config's scale factors apply on top."""
        from vla_robot.control.limits import JointLimits

        pj = self.policy_joints()
        return JointLimits(names=[j.name for j in pj], lower=[j.lower for j in pj], upper=[j.upper for j in pj],
                           max_velocity=[j.velocity for j in pj], max_acceleration=[j.acceleration for j in pj],
                           gripper_index=self.gripper_index, home=self.home.copy())

    @classmethod
    def from_twin(cls, spec) -> "RobotDescription":
        """The description of a registered twin robot (``vla_robot.twin.robots.RobotSpec``): the
        hardware names are the twin's, the gripper travels with the arm (``with_arm``)."""
        n, g = spec.n_joints, spec.gripper_index
        if g != n - 1:
            raise DescriptionError(f"twin robot {spec.name}: its gripper is joint {g}, not the last; a description "
                                   "orders the arm joints first, then the gripper")
        rows = [(spec.joint_names[i], float(spec.lower[i]), float(spec.upper[i]), float(spec.max_velocity[i]),
                 float(spec.max_acceleration[i])) for i in range(n)]
        joints = tuple(JointDescription(nm, nm, lo, up, v, a) for nm, lo, up, v, a in rows[:g])
        nm, lo, up, v, a = rows[g]
        gripper = GripperDescription("with_arm", nm, nm, "", spec.gripper_open, spec.gripper_closed, lo, up, v, a,
                                     spec.gripper_open, spec.gripper_closed)
        return cls(spec.name, joints, gripper, spec.home.copy(), twin=spec.name, source=f"twin robot {spec.name}")


def reorder_joints(have: Sequence[str], want: Sequence[str], positions, velocities=None,
                   what: str = "joint state") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``positions`` (and ``velocities``) named by ``have`` -> ordered by ``want`` (extra joints
    dropped); a ValueError naming the missing joints. The one reordering of joint vectors
    (``vla_robot.nodes.convert`` and :meth:`RobotDescription.from_joint_state` use it)."""
    have, want = list(have), list(want)
    pos = np.asarray(positions, dtype=np.float64)
    vel = None if velocities is None or len(velocities) == 0 else np.asarray(velocities, dtype=np.float64)
    if pos.ndim != 1 or (have and len(have) != len(pos)):
        raise ValueError(f"{what} has {len(have)} names but {pos.size} positions")
    if vel is not None and vel.shape != pos.shape:
        raise ValueError(f"{what} has {len(pos)} positions but {vel.size} velocities")
    if have == want:
        return pos, vel
    missing = [n for n in want if n not in have]
    if missing or not have:
        raise ValueError(f"{what} lacks joints {missing or want}; it has {have}")
    idx = [have.index(n) for n in want]
    return pos[idx], (vel[idx] if vel is not None else None)


# --- checks ----------------------------------------------------------------------------------------
def _check_joint(label: str, key: str, j: JointDescription) -> None:
    for attr in ("name", "hardware_name"):
        if not isinstance(getattr(j, attr), str) or not getattr(j, attr).strip():
            raise DescriptionError(f"{label}: '{key}.{attr}' must be a non-empty name, got {getattr(j, attr)!r}")
    for attr in _LIMITS:
        v = getattr(j, attr)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v):
            raise DescriptionError(f"{label}: '{key}.{attr}' must be a finite number ({_UNITS[attr]}), got {v!r}")
    if not j.lower < j.upper:
        raise DescriptionError(f"{label}: '{key}' ({j.name}) has lower {j.lower} >= upper {j.upper}: "
                               "lower must be below upper (check the sign and the order)")
    for attr in ("velocity", "acceleration"):
        if not getattr(j, attr) > 0:
            raise DescriptionError(f"{label}: '{key}.{attr}' ({j.name}) is {getattr(j, attr)}: a limit must be > 0 "
                                   f"({_UNITS[attr]}); give the joint's real {attr} limit")


def _check_gripper(label: str, g: GripperDescription) -> None:
    if g.interface not in GRIPPER_INTERFACES:
        raise DescriptionError(f"{label}: 'gripper.interface' must be one of {', '.join(GRIPPER_INTERFACES)}, "
                               f"got {g.interface!r}")
    if not g.present:
        return
    _check_joint(label, "gripper", JointDescription(g.name, g.hardware_name, g.lower, g.upper, g.velocity,
                                                     g.acceleration))
    for a, b, keys in ((g.open, g.closed, "open/closed"),
                       (g.policy_open, g.policy_closed, "policy_open/policy_closed")):
        if not (math.isfinite(a) and math.isfinite(b)) or a == b:
            raise DescriptionError(f"{label}: 'gripper.{keys}' are {a} and {b}: give two different finite positions "
                                   "(fully open, fully closed)")
    if g.interface in ("position_controller", "trajectory_controller") and not g.topic.strip():
        raise DescriptionError(f"{label}: 'gripper.topic' is empty: a {g.interface} gripper needs its controller's "
                               "command topic (e.g. /gripper_controller/commands)")


def _check_description(d: RobotDescription) -> None:
    label = f"robot description {d.source or d.name!r}"
    if not isinstance(d.name, str) or not d.name.strip():
        raise DescriptionError(f"{label}: 'name' must name the robot (e.g. name: fr3)")
    if not d.joints:
        raise DescriptionError(f"{label}: 'joints' lists no joint: list the arm's joints in policy order")
    for i, j in enumerate(d.joints):
        _check_joint(label, f"joints[{i}]", j)
    _check_gripper(label, d.gripper)
    keys = [f"joints[{i}]" for i in range(len(d.joints))] + (["gripper"] if d.gripper.present else [])
    for attr, rule in (("name", "each policy joint has a name of its own"),
                       ("hardware_name", "one hardware joint cannot stand for two policy joints")):
        seen: dict[str, str] = {}
        for key, j in zip(keys, d.joints + ((d.gripper,) if d.gripper.present else ())):
            v = getattr(j, attr)
            if v in seen:
                raise DescriptionError(f"{label}: '{key}.{attr}' {v!r} is also '{seen[v]}.{attr}': {rule}; "
                                       "fix one of the two")
            seen[v] = key
    if d.twin is not None:
        _check_twin(label, d)
    _check_home(label, d)


def _check_twin(label: str, d: RobotDescription) -> None:
    from vla_robot.twin.robots import check_robot, robot_spec

    try:
        spec = robot_spec(check_robot(d.twin))
    except ValueError as e:
        raise DescriptionError(f"{label}: 'twin': {e}") from None
    names = [j.name for j in d.joints] + ([d.gripper.name] if d.gripper.present else [])
    if names != list(spec.joint_names):
        raise DescriptionError(f"{label}: the joints' names {names} are not twin {d.twin}'s {list(spec.joint_names)}: "
                               "a joint's 'name' is the policy's (the twin's), in its order; the controller's name "
                               "goes in 'hardware_name'")


def _check_home(label: str, d: RobotDescription) -> None:
    home = np.asarray(d.home, dtype=np.float64) if d.home is not None else None
    pj = d.policy_joints()
    if home is None or home.shape != (len(pj),) or not np.all(np.isfinite(home)):
        raise DescriptionError(f"{label}: 'home' must be {len(pj)} finite numbers, the home pose in policy order "
                               f"({', '.join(j.name for j in pj)}; the gripper in policy units), got "
                               f"{None if d.home is None else np.asarray(d.home).tolist()}")
    for i, (v, j) in enumerate(zip(home, pj)):
        if not j.lower <= v <= j.upper:
            raise DescriptionError(f"{label}: 'home[{i}]' ({j.name}) = {v} lies outside its limits "
                                   f"[{j.lower}, {j.upper}]: move the home pose inside the limits")


# --- loading ---------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML with UR's ``!degrees`` tag (Universal_Robots_ROS2_Description's joint_limits.yaml)."""


_Loader.add_constructor("!degrees", lambda loader, node: math.radians(float(loader.construct_scalar(node))))

_TOP_KEYS = ("name", "twin", "urdf", "joint_limits", "joints", "gripper", "home")
_JOINT_KEYS = ("name", "hardware_name") + _LIMITS
_GRIPPER_KEYS = _JOINT_KEYS + ("interface", "topic", "open", "closed", "policy_open", "policy_closed")


def _read_yaml(path: Path, label: str, key: str) -> Any:
    if not path.is_file():
        raise DescriptionError(f"{label}: '{key}' file {path} does not exist: give the path of the file "
                               "(relative paths are relative to the description file)")
    try:
        return yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        raise DescriptionError(f"{label}: '{key}' file {path} is not valid YAML: {e}") from None


def _find(path: Path) -> Path:
    """``path`` as given, or else inside the shipped config folder, so ``robots/fr3.yaml`` works
    from any directory and in a colcon install."""
    from vla_robot.config import config_dir

    try:
        if path.is_file() or path.is_absolute() or not (config_dir() / path).is_file():
            return path
    except OSError:  # a name too long for the file system: not a file either way
        return path
    return config_dir() / path


def load_description(source: "str | Path | Mapping[str, Any]") -> RobotDescription:
    """A :class:`RobotDescription` from a YAML file (relative to the working directory, or else to
    the config folder: ``robots/fr3.yaml``) or a mapping of the same form (see the module's doc and
    config/robots/*.yaml); :class:`DescriptionError` naming the key and the fix."""
    if isinstance(source, Mapping):
        return _build(dict(source), str(source.get("name", "<dict>")), Path.cwd(), default_name=None)
    text = str(source)
    if text.lstrip().startswith("<"):  # ROS's robot_description parameter holds URDF XML; ours is a path
        raise DescriptionError("robot_description here is the path of a description YAML (config/robots/*.yaml), "
                               "not URDF XML: write a description whose urdf: key holds the URDF (file or XML)")
    path = _find(Path(text))
    label = f"robot description {str(path)!r}"
    if not path.is_file():
        raise DescriptionError(f"{label} does not exist: give the path of a description YAML (examples in "
                               "config/robots/)")
    if path.suffix.lower() in (".urdf", ".xacro", ".xml"):
        raise DescriptionError(f"{label} is a URDF, not a description: write a description YAML that names it in "
                               "urdf: and maps its joints (config/robots/fr3.yaml shows the form)")
    data = _read_yaml(path, label, "robot_description")
    if not isinstance(data, Mapping):
        raise DescriptionError(f"{label}: expected a mapping with keys {', '.join(_TOP_KEYS)}, "
                               f"got {type(data).__name__}")
    return _build(dict(data), str(path), path.parent, default_name=path.stem)


def _build(data: dict, source: str, base: Path, default_name: Optional[str]) -> RobotDescription:
    label = f"robot description {source!r}"
    name = data.get("name") or default_name
    if not name:
        raise DescriptionError(f"{label}: 'name' is missing: name the robot (e.g. name: fr3)")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise DescriptionError(f"{label}: unknown key(s) {unknown}; the keys are {', '.join(_TOP_KEYS)}")
    twin = data.get("twin")
    urdf = _urdf_limits(data["urdf"], label, base) if data.get("urdf") else None
    block = _joint_limits_block(data.get("joint_limits"), label, base)
    joints_in = data.get("joints")
    if not isinstance(joints_in, list) or not joints_in:
        raise DescriptionError(f"{label}: 'joints' must list the arm's joints in policy order, each "
                               "{name, hardware_name, lower, upper, velocity, acceleration}; got "
                               f"{joints_in!r}")
    joints = tuple(_joint(entry, f"joints[{i}]", _JOINT_KEYS, urdf, block, label) for i, entry in enumerate(joints_in))
    gripper = _gripper(data.get("gripper"), twin, urdf, block, label)
    return RobotDescription(name=str(name), joints=joints, gripper=gripper,
                            home=_home(data.get("home"), label), twin=twin, source=source)


def _home(value: Any, label: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DescriptionError(f"{label}: 'home' must be a list of numbers (the home pose in policy order), "
                               f"got {value!r}") from None


def _joint_fields(entry: Any, key: str, keys: Sequence[str], urdf: Optional[dict], block: dict,
                  label: str) -> dict:
    """The fields of one joint entry, its limits merged: URDF < joint_limits block < the entry's own."""
    if not isinstance(entry, Mapping):
        raise DescriptionError(f"{label}: '{key}' must be a mapping like {{name: joint1, hardware_name: fr3_joint1, "
                               f"lower: -2.7, upper: 2.7, velocity: 2.6, acceleration: 10}}, got {entry!r}")
    unknown = sorted(set(entry) - set(keys))
    if unknown:
        raise DescriptionError(f"{label}: '{key}' has unknown key(s) {unknown}; its keys are {', '.join(keys)}")
    f = dict(entry)
    if not f.get("name"):
        raise DescriptionError(f"{label}: '{key}.name' is missing: give the policy's (twin's) name of the joint")
    f.setdefault("hardware_name", f["name"])
    hw = f["hardware_name"]
    if urdf is not None and hw not in urdf:
        raise DescriptionError(f"{label}: '{key}.hardware_name' {hw!r} is not a joint of the URDF (it has "
                               f"{', '.join(sorted(urdf)) or 'no joints'}): fix the name or the URDF")
    merged = {**(urdf or {}).get(hw, {}), **block.get(hw, {}), **{k: f[k] for k in _LIMITS if k in f}}
    for k in _LIMITS:
        if k not in merged:
            fix = ("the URDF has no acceleration limits: add acceleration: <rad/s^2> to the joint, or "
                   "max_acceleration to a joint_limits: block") if k == "acceleration" else (
                   f"neither a URDF nor joint_limits gives it: add {k}: <{_UNITS[k]}> to the joint, or a urdf: "
                   "whose <limit> has it")
            raise DescriptionError(f"{label}: '{key}.{k}' ({f['name']}) is not given and {fix}")
        try:
            merged[k] = float(merged[k])
        except (TypeError, ValueError):
            raise DescriptionError(f"{label}: '{key}.{k}' must be a number ({_UNITS[k]}), got {merged[k]!r}") from None
    return {**f, **merged}


def _joint(entry, key, keys, urdf, block, label) -> JointDescription:
    f = _joint_fields(entry, key, keys, urdf, block, label)
    return JointDescription(str(f["name"]), str(f["hardware_name"]), *(f[k] for k in _LIMITS))


def _gripper(entry: Any, twin: Optional[str], urdf: Optional[dict], block: dict, label: str) -> GripperDescription:
    if entry is None or (isinstance(entry, Mapping) and entry.get("interface", "none") == "none"):
        return GripperDescription()
    if not isinstance(entry, Mapping) or "interface" not in entry:
        raise DescriptionError(f"{label}: 'gripper' must be a mapping with an 'interface' "
                               f"({', '.join(GRIPPER_INTERFACES)}), got {entry!r}")
    f = _joint_fields({"name": "gripper", **entry}, "gripper", _GRIPPER_KEYS, urdf, block, label)
    for k in ("open", "closed"):
        if k not in f:
            raise DescriptionError(f"{label}: 'gripper.{k}' is missing: give the gripper's {k} position in hardware "
                                   "units (the Franka hand: open 0.04, closed 0.0 metres per finger)")
    if twin is not None and "policy_open" not in f and "policy_closed" not in f:
        from vla_robot.twin.robots import ROBOTS

        if twin in ROBOTS:  # an unknown twin is reported by the description's own check
            f["policy_open"], f["policy_closed"] = ROBOTS[twin].gripper_open, ROBOTS[twin].gripper_closed
    f.setdefault("policy_open", f["open"])
    f.setdefault("policy_closed", f["closed"])
    try:
        nums = {k: float(f[k]) for k in ("open", "closed", "policy_open", "policy_closed")}
    except (TypeError, ValueError):
        raise DescriptionError(f"{label}: 'gripper' open/closed/policy_open/policy_closed must be numbers, "
                               f"got {entry!r}") from None
    return GripperDescription(interface=str(f["interface"]), name=str(f["name"]), hardware_name=str(f["hardware_name"]),
                              topic=str(f.get("topic", "")), **nums, **{k: f[k] for k in _LIMITS})


def _urdf_limits(value: Any, label: str, base: Path) -> dict[str, dict[str, float]]:
    """hardware joint name -> the limits its URDF ``<limit>`` gives, as ros2_control takes them
    (``joint_limits/include/joint_limits/joint_limits_urdf.hpp``, ``getJointLimits``): lower/upper
    of revolute and prismatic joints only, |velocity|, no acceleration. Unlike urdfdom, a missing
    lower/upper is not read as 0 (a joint that could not move): it must then come from YAML."""
    if not isinstance(value, str):
        raise DescriptionError(f"{label}: 'urdf' must be a file path or the robot_description XML text, got {value!r}")
    if value.lstrip().startswith("<"):
        text, where = value, "the robot_description XML"
    else:
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        if not path.is_file():
            raise DescriptionError(f"{label}: 'urdf' file {path} does not exist: give a URDF path (relative to the "
                                   "description) or the robot_description XML itself")
        text, where = path.read_text(), f"URDF {path}"
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        line, col = e.position
        src = text.splitlines()[line - 1].strip() if 0 < line <= len(text.splitlines()) else ""
        raise DescriptionError(f"{label}: 'urdf': {where} does not parse: {e} (the line: {src[:120]!r}): fix the "
                               "XML (a .xacro must be expanded first: xacro robot.urdf.xacro > robot.urdf)") from None
    if root.tag != "robot":
        raise DescriptionError(f"{label}: 'urdf': {where} has root <{root.tag}>, expected <robot>")
    out: dict[str, dict[str, float]] = {}
    for joint in root.iter("joint"):
        name, limit = joint.get("name"), joint.find("limit")
        out[name] = {}
        if limit is None:
            continue
        for k in ("lower", "upper", "velocity"):
            if k in limit.attrib and (k == "velocity" or joint.get("type") in ("revolute", "prismatic")):
                try:
                    out[name][k] = abs(float(limit.attrib[k])) if k == "velocity" else float(limit.attrib[k])
                except ValueError:
                    raise DescriptionError(f"{label}: 'urdf': {where}: joint {name!r} <limit {k}="
                                           f"\"{limit.attrib[k]}\"> is not a number (a xacro expression? expand "
                                           "the xacro first)") from None
    return out


# ros2_control's key -> ours, and the flag that must be true for it to count
_BLOCK_KEYS = {"min_position": ("lower", "has_position_limits"), "max_position": ("upper", "has_position_limits"),
               "max_velocity": ("velocity", "has_velocity_limits"),
               "max_acceleration": ("acceleration", "has_acceleration_limits")}


def _joint_limits_block(value: Any, label: str, base: Path) -> dict[str, dict[str, float]]:
    """hardware joint name -> limits from a ros2_control ``joint_limits`` block (a mapping, or a file
    holding one, optionally under a top-level ``joint_limits:``).

    Read as ros2_control reads it (``joint_limits/include/joint_limits/joint_limits_rosparam.hpp``,
    ``get_joint_limits``): a value counts only where its ``has_*_limits`` flag is true, position
    limits only with both ``min_position`` and ``max_position``."""
    if value is None:
        return {}
    if isinstance(value, str):
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        value = _read_yaml(path, label, "joint_limits")
    if isinstance(value, Mapping) and set(value) == {"joint_limits"}:
        value = value["joint_limits"]
    if not isinstance(value, Mapping):
        raise DescriptionError(f"{label}: 'joint_limits' must map hardware joint names to ros2_control limits "
                               "({has_velocity_limits: true, max_velocity: 2.6, has_acceleration_limits: true, "
                               f"max_acceleration: 10}}), got {value!r}")
    out: dict[str, dict[str, float]] = {}
    for name, lim in value.items():
        if not isinstance(lim, Mapping):
            continue  # MoveIt's default_velocity_scaling_factor and the like
        got = {ours: lim[theirs] for theirs, (ours, flag) in _BLOCK_KEYS.items()
               if theirs in lim and lim.get(flag) is True}
        if not ("lower" in got and "upper" in got):
            got.pop("lower", None), got.pop("upper", None)
        out[str(name)] = got
    return out


def resolve_description(robot: str, path: str = "") -> RobotDescription:
    """The description a node drives: the file at ``path`` (:func:`load_description`), or (no path)
    the twin robot ``robot``'s.

    A description that names a twin must name the node's ``robot``: the policy, the twin and the
    workspace kinematics are that robot's."""
    from vla_robot.twin.robots import robot_spec

    if not path:
        return RobotDescription.from_twin(robot_spec(robot))
    d = load_description(path)
    if d.twin is not None and d.twin != robot:
        raise DescriptionError(f"{d.label}: its twin is {d.twin!r} but the node's robot is {robot!r}: set robot: "
                               f"{d.twin} beside robot_description (or fix the description's twin:)")
    return d
