"""Config dataclasses of the twin, read with ``vla_robot.config``.

Standard library only at import; ``TwinConfig.validate`` checks the robot against the registry
(``vla_robot.twin.robots``, numpy only).

``TwinConfig`` is what ``make_env`` builds from; ``RandomizationConfig`` is one file in
``sim2real/`` (see ``sim2real/randomization_*.yaml``); ``MirrorConfig`` drives mirror mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["TwinConfig", "RandomizationConfig", "MirrorConfig", "CameraCalibrationFiles", "TwinArmConfig",
           "TwinCameraConfig", "TWIN_CAMERAS", "TASKS", "TASK_CUBES", "check_twin_task"]

TWIN_CAMERAS = ("front", "wrist", "side", "top")
TASKS = ("reach", "pick_place")
TASK_CUBES = {"reach": ("red", "green", "blue"), "pick_place": ("red", "blue")}  # each task's cubes, in order


def check_twin_task(task: str, flag: str = "task") -> str:
    """``task`` if it names a twin scene (one of TASKS); else a ValueError that says which was meant.

    A task names the twin's scene; an instruction is the words the policy reads. Words given as a task
    (``task:="touch the red cube"``) are the usual mix-up, so the error says to pass them as the instruction.
    """
    if task in TASKS:
        return task
    names = ", ".join(TASKS)
    if len(str(task).split()) > 1:
        raise ValueError(f"{flag} '{task}' looks like an instruction (the words the policy reads): use "
                         f"instruction:='{task}' (--instruction); {flag} names a twin scene: {names}")
    raise ValueError(f"{flag} is '{task}'; on the twin a task names its scene, one of {names} "
                     "(the words the policy reads go in instruction:=... / --instruction)")


def _range(name: str, value: list[float], lo: float = 0.0) -> None:
    if len(value) != 2 or not (lo <= value[0] <= value[1]):
        raise ValueError(f"{name} must be [low, high] with {lo} <= low <= high, got {value}")


@dataclass
class RandomizationConfig:
    """Domain randomization drawn at every reset. The defaults change nothing.

    Scales are ``[low, high]`` multipliers drawn uniformly; jitters are the half-width of a uniform
    draw (or the std of a normal draw where noted).
    """

    # lighting
    light_intensity: list[float] = field(default_factory=lambda: [1.0, 1.0])
    light_dir_jitter_deg: float = 0.0
    # colours: table/floor (absolute, per channel) and objects (hue-preserving, per channel)
    table_rgb_jitter: float = 0.0
    object_rgb_jitter: float = 0.0
    # cameras (fixed ones; the wrist camera moves with the arm and jitters by the same rules)
    camera_pos_jitter_m: float = 0.0
    camera_rot_jitter_deg: float = 0.0
    fovy_jitter_deg: float = 0.0
    # objects: extra jitter on the task's sampled positions
    object_pos_jitter_m: float = 0.0
    # physics: multipliers around the model's (or the sysid fit's) values
    friction_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    damping_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    armature_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    mass_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    kp_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # actuation / sensing
    action_latency_steps: list[int] = field(default_factory=lambda: [0, 0])
    joint_noise_std: float = 0.0  # rad, normal noise on the observed joint state

    def validate(self) -> None:
        _range("light_intensity", self.light_intensity)
        for name in ("friction_scale", "damping_scale", "armature_scale", "mass_scale", "kp_scale"):
            _range(name, getattr(self, name), lo=1e-6)
        _range("action_latency_steps", [float(x) for x in self.action_latency_steps])
        for name in ("light_dir_jitter_deg", "table_rgb_jitter", "object_rgb_jitter", "camera_pos_jitter_m",
                     "camera_rot_jitter_deg", "fovy_jitter_deg", "object_pos_jitter_m", "joint_noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return self != RandomizationConfig()


@dataclass
class MirrorConfig:
    """Mirror mode: measured joint states -> twin pose (kinematic, exact)."""

    extrapolate: bool = True  # constant-velocity latency compensation
    max_extrapolation_s: float = 0.1  # never extrapolate further than this
    image_diff: bool = False  # compare twin renders with the real camera images

    def validate(self) -> None:
        if self.max_extrapolation_s < 0:
            raise ValueError(f"max_extrapolation_s must be >= 0 s, got {self.max_extrapolation_s}")


@dataclass
class CameraCalibrationFiles:
    """Calibration files of one real camera that the twin camera of the same name should match.

    ``camera_info``: ROS camera_info YAML (intrinsics); ``extrinsics``: the calibration's extrinsics
    YAML, whose ``parent_frame`` is ``base`` (fixed camera) or a body of the robot model such as
    ``gripper`` (eye-in-hand). Either may be empty. Formats: ``vla_robot.calibration.camera_model``.
    """

    camera: str = ""
    camera_info: str = ""
    extrinsics: str = ""

    def validate(self) -> None:
        if self.camera not in TWIN_CAMERAS:
            raise ValueError(f"camera must be one of {', '.join(TWIN_CAMERAS)}, got {self.camera!r}")
        if not (self.camera_info or self.extrinsics):
            raise ValueError(f"camera {self.camera!r}: give camera_info and/or extrinsics file paths")


@dataclass
class TwinConfig:
    """One twin environment: robot, task, cameras, rates, randomization."""

    robot: str = "so101"  # one of vla_robot.twin.robots.ROBOT_NAMES
    task: Literal["reach", "pick_place"] = "reach"
    cubes: int = 0  # how many of the task's cubes are on the table (reach: 1..3, pick_place: 1..2); 0 = all
    seed: int = 0
    image_size: list[int] = field(default_factory=lambda: [128, 128])  # height, width
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    control_hz: float = 30.0
    max_physics_dt: float = 0.002  # s; the physics step is control period / ceil(period / this)
    episode_s: float = 0.0  # 0: the task's default length
    render: Literal["fast", "quality"] = "fast"  # fast: no shadows/reflections/MSAA (CPU)
    camera_calibration: list[CameraCalibrationFiles] = field(default_factory=list)
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    randomization_file: str = ""  # a sim2real/*.yaml file; overrides 'randomization' when set
    sysid_file: str = ""  # a sim2real sysid result; its joint parameters replace the model's

    def validate(self) -> None:
        from vla_robot.twin.robots import check_robot

        check_robot(self.robot)
        if len(self.image_size) != 2 or min(self.image_size) < 8 or max(self.image_size) > 4096:
            raise ValueError(f"image_size must be [height, width] in pixels (8..4096), got {self.image_size}")
        if not self.cameras:
            raise ValueError("cameras must name at least one camera")
        bad = [c for c in self.cameras if c not in TWIN_CAMERAS]
        if bad:
            raise ValueError(f"cameras: unknown camera {bad[0]!r}; the twin has {', '.join(TWIN_CAMERAS)}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must not repeat, got {self.cameras}")
        if not 0.5 <= self.control_hz <= 1000:
            raise ValueError(f"control_hz must be in 0.5..1000 Hz, got {self.control_hz}")
        if not 1e-5 <= self.max_physics_dt <= 0.01:
            raise ValueError(f"max_physics_dt must be in 1e-5..0.01 s, got {self.max_physics_dt}")
        for c in self.camera_calibration:
            if c.camera not in self.cameras:
                raise ValueError(f"camera_calibration names camera {c.camera!r}, which is not in cameras {self.cameras}")
        if self.episode_s < 0:
            raise ValueError(f"episode_s must be >= 0 (0 = task default), got {self.episode_s}")
        most = len(TASK_CUBES[self.task])
        if not 0 <= self.cubes <= most:
            raise ValueError(f"cubes must be 0 (all) or 1..{most} for task {self.task!r}, got {self.cubes}")


@dataclass
class TwinArmConfig:
    """The twin as an arm driver (``make_arm("twin", ...)``).

    ``session`` names the simulation this arm lives in; twin cameras with the same session render
    it. ``realtime``: a background thread steps the physics at ``twin.control_hz`` holding the last
    command, as a real arm does; otherwise every ``command()`` advances one control period.
    """

    session: str = "default"
    realtime: bool = True
    twin: TwinConfig = field(default_factory=TwinConfig)


@dataclass
class TwinCameraConfig:
    """A camera of the twin as a camera driver (``make_camera("twin", camera="front")``)."""

    session: str = "default"
    camera: str = "front"
    twin: TwinConfig = field(default_factory=TwinConfig)

    def validate(self) -> None:
        if self.camera not in TWIN_CAMERAS:
            raise ValueError(f"camera must be one of {', '.join(TWIN_CAMERAS)}, got {self.camera!r}")
