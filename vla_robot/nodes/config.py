"""Config dataclasses of the nodes, read from config/*.yaml (ROS 2 parameter files).

Each composes the package configs; see vla_robot/config.py for the loader and NODE_CONFIGS.
Nested dataclasses are nested mappings in YAML and dotted ROS parameters (``control.safety.velocity_scale``).
No ROS and no MuJoCo: the robot names come from the registry (:mod:`vla_robot.twin.robots`, numpy only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from vla_robot.control.config import ControlConfig, SafetyConfig
from vla_robot.twin.robots import DEFAULT_ROBOT, check_robot

EPISODE_MODES = ("record", "evaluate", "rl")


def _positive(name: str, value: float, unit: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 ({unit}), got {value!r}")


def check_robot_description(robot: str, path: str, need_twin: bool = False) -> None:
    """A node's ``robot_description`` loads and fits its ``robot``; else the description's error
    (it names the key and the fix), so a bad description stops the node before it starts."""
    if not path:
        return
    from vla_robot.robot.description import resolve_description

    d = resolve_description(robot, path)
    if need_twin and d.twin is None:
        raise ValueError(f"robot_description {path} names no twin: the twin mirrors only an arm it models; add "
                         f"twin: {robot} to the description (its joints named as the twin's)")


@dataclass
class ArmCommandConfig:
    """How policy_node commands the arm (docs/ros2_control.md)."""

    # point: one target per tick, reached in one control period, on arm/command (arm_node, the twin);
    # trajectory: also the whole remaining chunk as one JointTrajectory on arm/joint_trajectory in the
    # hardware's names (bringup remaps it to a ros2_control joint trajectory controller), velocities
    # filled, last point at rest, stamped now + lead_s so the controller merges it on arrival, and the
    # gripper on its own controller; positions: the same chunk without velocities, for a controller that
    # upsamples positions-only chunks (positions_upsampling, ros2_controllers#2491); auto: trajectory
    # unless robot_description's gripper travels with the arm (the twin's, the SO-101's), then point.
    form: Literal["auto", "point", "trajectory", "positions"] = "auto"
    # Trajectory forms: how far ahead of now each one starts (s, rounded up to control periods); it
    # absorbs transport latency and clock offset. 0.1 s: 50 ms of latency never makes one late.
    lead_s: float = 0.1
    # Trajectory forms (no arm_node there): on the episode manager's reset, a slow trajectory home through
    # the safety filter; the policy drives only once every joint is within home_tolerance of home
    # (policy units: rad, the gripper the twin's); a fault after home_timeout_s.
    home_on_reset: bool = True
    home_tolerance: float = 0.03
    home_timeout_s: float = 30.0

    def validate(self) -> None:
        if not (math.isfinite(self.lead_s) and self.lead_s >= 0):
            raise ValueError(f"lead_s must be >= 0 seconds (0.1 absorbs 50 ms of latency), got {self.lead_s}")
        _positive("home_tolerance", self.home_tolerance, "rad")
        _positive("home_timeout_s", self.home_timeout_s, "seconds")


@dataclass
class PolicyNodeConfig:
    """policy_node: asks the policy server for chunks and drives the arm through the safety filter."""

    policy_server: str = "tcp://127.0.0.1:5555"
    robot: str = DEFAULT_ROBOT
    # The arm's description (config/robots/*.yaml): its joint names on joint_states, limits, home and
    # gripper interface. '' = the twin robot's own (joint_states in the twin's names).
    robot_description: str = ""
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    # Instruction used when the episode manager gives none.
    instruction: str = ""
    # greedy | sample (rl mode samples at `temperature` and records tokens/log-probs)
    sampling: Literal["greedy", "sample"] = "greedy"
    temperature: float = 1.6
    # rl: ask for tokens and log-probs, and publish each chunk's on-policy record on policy/record
    return_tokens: bool = False
    # CurveZMQ for a policy server on another machine: the server's public key (a server.key file or
    # its 40-character Z85 text) and, for a server that admits only listed clients, this client's
    # secret key file (NAME.key_secret, from `vla-robot keygen`). Empty: no encryption (loopback).
    curve_server_key: str = ""
    curve_client_key: str = ""
    # Tick on each new observation (sim, lockstep with the twin) instead of a wall-clock timer.
    lockstep: bool = False
    # Drive only between the episode manager's start and end events (false: drive from the start).
    wait_for_episode: bool = True
    # Configure and activate the lifecycle node at start (false: wait for `ros2 lifecycle set`).
    autostart: bool = True
    control: ControlConfig = field(default_factory=ControlConfig)
    # How commands go out: one target per tick, or trajectories for a ros2_control controller.
    arm_command: ArmCommandConfig = field(default_factory=ArmCommandConfig)

    def validate(self) -> None:
        check_robot(self.robot)
        check_robot_description(self.robot, self.robot_description)
        if not self.policy_server.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(
                f"policy_server must be a ZMQ address like tcp://127.0.0.1:5555, got '{self.policy_server}'"
            )
        if not self.cameras:
            raise ValueError("cameras must name at least one camera, in the order the policy expects")
        _positive("temperature", self.temperature, "softmax temperature")
        if self.curve_client_key and not self.curve_server_key:
            raise ValueError("curve_client_key needs curve_server_key (the server's public key): the client key "
                             "only authenticates over an encrypted connection")


@dataclass
class CameraNodeConfig:
    """camera_node: one node publishes every camera of the robot (one reader thread per camera).

    ``devices`` maps a camera name (the topic ``cameras/<name>/image_raw``) to its backend options,
    ``{backend: opencv, index: 0}`` or ``{backend: realsense, serial: '123'}``; the options are
    checked by the backend's own config class (vla_robot/drivers).
    """

    devices: dict = field(default_factory=dict)
    fps: float = 30.0
    # Warn when a camera delivers no frame for this long (seconds).
    stale_after_s: float = 1.0

    def validate(self) -> None:
        if not self.devices:
            raise ValueError(
                "devices must name at least one camera, e.g. devices: {front: {backend: opencv, index: 0}}"
            )
        for name, dev in self.devices.items():
            if not isinstance(dev, dict) or not isinstance(dev.get("backend"), str):
                raise ValueError(
                    f"devices.{name} must be a mapping with a 'backend' (opencv, realsense, twin), got {dev!r}"
                )
        _positive("fps", self.fps, "Hz")
        _positive("stale_after_s", self.stale_after_s, "seconds")


@dataclass
class ArmNodeConfig:
    """arm_node: bridges a lerobot arm (or the twin) to ``joint_states`` and the ``arm/command`` input."""

    backend: str = "lerobot"
    robot: str = DEFAULT_ROBOT
    # backend options, checked by the backend's config class (vla_robot/drivers)
    options: dict = field(default_factory=dict)
    state_hz: float = 30.0
    # Hold the last target when no command came for this long (seconds); 0 disables.
    command_timeout_s: float = 0.5
    # Limits of the homing move between episodes (it runs while a person resets the scene): it
    # ramps at safety.ramp_velocity_scale of the velocity limit, within the acceleration limit.
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def validate(self) -> None:
        check_robot(self.robot)
        _positive("state_hz", self.state_hz, "Hz")
        if not (math.isfinite(self.command_timeout_s) and self.command_timeout_s >= 0):
            raise ValueError(f"command_timeout_s must be >= 0 seconds, got {self.command_timeout_s}")


@dataclass
class TeleopNodeConfig:
    """teleop_node: keyboard (terminal, headless), gamepad or a lerobot leader arm."""

    device: Literal["keyboard", "gamepad", "leader", "none"] = "keyboard"
    robot: str = DEFAULT_ROBOT
    rate_hz: float = 30.0
    # keyboard / gamepad: joint step per key press or per second of full stick (radians)
    step: float = 0.05
    # leader arm: backend options for vla_robot.drivers (kind 'lerobot' with a leader type)
    leader: dict = field(default_factory=dict)
    # gamepad: evdev device path ('' = first gamepad found)
    gamepad_path: str = ""
    # Limits of every command teleop publishes (keys, the 'h' home key, gamepad, leader arm): in
    # record_demos and the twin graph its commands go straight to the arm.
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def validate(self) -> None:
        check_robot(self.robot)
        _positive("rate_hz", self.rate_hz, "Hz")
        _positive("step", self.step, "radians")


@dataclass
class EpisodeManagerNodeConfig:
    """episode_manager_node: reset -> run -> label -> save, with timeouts; modes record / evaluate / rl."""

    mode: Literal["record", "evaluate", "rl"] = "evaluate"
    # The task: on the twin, the scene it sets up (reach, pick_place; the twin gives its instruction);
    # on a robot, a short name of what the arm does, for the dataset and the rl groups (its text is the
    # instruction only if none is set).
    task: str = ""
    # The instruction: the words the policy reads ('' = the twin's own, or on a robot the task's text).
    # In rl and evaluate mode no episode starts without one.
    instruction: str = ""
    # Episodes to run; 0 = until stopped. With autostart the next episode starts by itself.
    episodes: int = 0
    autostart: bool = False
    max_duration_s: float = 30.0
    # Who resets the scene: the twin (sim), an operator (press start), or nobody.
    reset_source: Literal["twin", "operator", "none"] = "operator"
    reset_timeout_s: float = 30.0
    # Who labels: a human (services / terminal), the twin's success check, or the check with a human fallback;
    # votes: success detectors vote and a person is asked only when they do not agree (docs/detector.md, Votes).
    label_source: Literal["human", "auto", "auto_or_human", "votes"] = "human"
    # Wait this long for a human label (seconds); then the episode is saved unlabelled.
    label_timeout_s: float = 120.0
    # votes: the detector files (`vla-robot detector train`), one voter each (different seeds or cameras).
    detectors: list[str] = field(default_factory=list)
    # votes: a voter is sure at P(success) >= vote_threshold (or <= 1 - vote_threshold); an episode is
    # labelled without a person when every voter leans the same way and vote_quorum of them are sure.
    vote_threshold: float = 0.9
    vote_quorum: int = 2
    # votes: the twin's success check (twin/success) is one more voter; only where the twin is the arm or
    # mirrors it (twin_node mode sim or mirror).
    vote_twin: bool = False
    # End the episode as soon as the success check fires (sim).
    end_on_success: bool = True
    # Ask for the label in this terminal (when stdin is a terminal).
    prompt: bool = True
    # First seed handed to the twin; episode i gets seed + i unless a scheduler says otherwise.
    seed: int = 0
    # rl mode: the start conditions GRPO groups are formed over (group_size episodes each, round-robin).
    # On the twin, start-state ids of the task ([0, 1, 2, 3]); on a robot, names the operator is told
    # to set up ([left, center, right]).
    start_conditions: list[Union[int, str]] = field(default_factory=lambda: [0, 1, 2, 3])
    # rl mode: episodes per group. Must equal the learner preset's group_size (rl/config.py), or the
    # learner never sees a complete group.
    group_size: int = 8
    # rl mode: groups filled at once (1: one start condition until its group is complete).
    max_open_groups: int = 1

    def validate(self) -> None:
        if self.episodes < 0:
            raise ValueError(f"episodes must be >= 0 (0 = until stopped), got {self.episodes}")
        for name in ("max_duration_s", "reset_timeout_s", "label_timeout_s"):
            _positive(name, getattr(self, name), "seconds")
        if self.label_source in ("auto", "auto_or_human") and self.reset_source != "twin":
            raise ValueError(
                f"label_source '{self.label_source}' needs the twin's success check, so reset_source must be 'twin'"
            )
        if self.label_source == "votes":
            self._check_votes()
        _start_conditions(self.start_conditions)
        if isinstance(self.group_size, bool) or self.group_size < 2:
            raise ValueError(f"group_size must be an integer >= 2 (a GRPO group compares outcomes; the learner "
                             f"preset's group_size, 8 for tiny and oft-7b), got {self.group_size!r}")
        if isinstance(self.max_open_groups, bool) or self.max_open_groups < 1:
            raise ValueError(f"max_open_groups must be an integer >= 1 (groups filled at once), "
                             f"got {self.max_open_groups!r}")

    def _check_votes(self) -> None:
        from vla_robot.detector.votes import VoteConfig

        if not self.detectors or any(not str(p).strip() for p in self.detectors):
            raise ValueError(f"label_source 'votes' needs detector files: detectors: [runs/detector/seed0.onnx, ...] "
                             f"(from `vla-robot detector train`), got detectors={self.detectors!r}")
        VoteConfig(self.vote_threshold, self.vote_quorum).validate()
        voters = len(self.detectors) + bool(self.vote_twin)
        if self.vote_quorum > voters:
            raise ValueError(f"vote_quorum {self.vote_quorum} is more than the {voters} voter(s) configured "
                             f"({len(self.detectors)} detector(s){' and the twin' if self.vote_twin else ''}): the "
                             "votes could never label an episode; add detectors or lower vote_quorum")


def _start_conditions(starts: list) -> None:
    expected = "e.g. [0, 1, 2, 3] (twin start states) or [left, center, right] (names on a robot)"
    if not starts:
        raise ValueError(f"start_conditions must name at least one start condition, {expected}")
    for s in starts:
        if isinstance(s, int) and s < 0 or isinstance(s, str) and not s.strip():
            raise ValueError(f"start_conditions must be start-state ids >= 0 or non-empty names, {expected}; "
                             f"got {s!r} in {starts}")
    if len({type(s) for s in starts}) > 1:
        raise ValueError(f"start_conditions must be all integers or all names (a ROS parameter holds one type), "
                         f"{expected}; got {starts}")
    if len(set(starts)) != len(starts):
        raise ValueError(f"start_conditions must not repeat one (each is its own group), got {starts}")


@dataclass
class TwinNodeConfig:
    """twin_node: ``sim`` (the twin is the arm, the cameras and the success check), ``mirror``, or
    ``scene`` (the stand-in world: sets up the scene of the twin session ``session`` that camera_node and
    arm_node with backend twin run in this process)."""

    mode: Literal["sim", "mirror", "scene"] = "sim"
    robot: str = DEFAULT_ROBOT
    # mirror: the real arm's description (config/robots/*.yaml), the names of its joint_states; '' = the twin's
    robot_description: str = ""
    task: str = "reach"
    cubes: int = 0  # cubes on the table (reach 1..3, pick_place 1..2); 0 = all of the task's
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: list[int] = field(default_factory=lambda: [128, 128])
    control_hz: float = 30.0
    # sim: sim seconds per wall second at most; 0 = as fast as the commands come (lockstep).
    realtime_factor: float = 0.0
    # sim: step with the last target if no command arrives for this long (wall seconds).
    hold_timeout_s: float = 0.5
    seed: int = 0
    randomization: Optional[Any] = None
    # scene: the name of the twin session (drivers/twin.py) whose scene this node sets up
    session: str = "default"

    def validate(self) -> None:
        check_robot(self.robot)
        if self.robot_description and self.mode != "mirror":
            raise ValueError(f"robot_description is the real arm's, read in mode 'mirror' only; mode is {self.mode!r}: "
                             "remove robot_description (the twin publishes its own joint names)")
        check_robot_description(self.robot, self.robot_description, need_twin=True)
        from vla_robot.twin.config import check_twin_task

        check_twin_task(self.task)  # the scene: words meant for the policy are an instruction
        if self.mode == "scene" and not self.session.strip():
            raise ValueError("session must name the twin session of this process's camera and arm "
                             "(their options' 'session'), e.g. session: standin")
        if not self.cameras:
            raise ValueError("cameras must name at least one twin camera")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size must be [height, width], each >= 8 pixels, got {self.image_size}")
        _positive("control_hz", self.control_hz, "Hz")
        if not (math.isfinite(self.realtime_factor) and self.realtime_factor >= 0):
            raise ValueError(f"realtime_factor must be >= 0 (0 = as fast as possible), got {self.realtime_factor}")
        _positive("hold_timeout_s", self.hold_timeout_s, "seconds")
