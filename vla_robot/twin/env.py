"""The twin as a robot: a position-controlled arm stepped at the control rate, rendered cameras,
a task with an instruction, a success check and a scripted expert.

    env = make_env(task="reach", robot="so101", seed=0, image_size=(128, 128))
    obs = env.reset()                       # {"images": {cam: uint8 HxWx3}, "state": float32[n], "time": s}
    while not env.done and not env.success():
        obs = env.step(env.expert_action())  # absolute joint targets, gripper last

Same seed, same actions -> the same episode, bit for bit. ``reset(start=k)`` rebuilds start state
``k`` exactly (its objects and arm pose), while randomization still draws from the env's seed
sequence: that is how GRPO samples several rollouts from one start.
"""
from __future__ import annotations

import atexit
import collections
import math
import os
import weakref
from pathlib import Path
from typing import Any, Callable

import mujoco
import numpy as np

from vla_robot.config import ConfigError, from_dict, load_node_config
from vla_robot.twin.config import RandomizationConfig, TwinConfig
from vla_robot.twin.kinematics import Kinematics
from vla_robot.twin.robots import DEFAULT_ROBOT, RobotSpec, robot_spec
from vla_robot.twin.scene import build_scene, camera_intrinsics
from vla_robot.twin.tasks import TASK_CLASSES, Start

__all__ = ["TwinEnv", "make_env", "twin_config", "load_randomization"]


def load_randomization(path: str | Path) -> RandomizationConfig:
    """A ``sim2real/randomization_*.yaml`` file (ROS parameter form, section ``randomization``)."""
    return load_node_config(RandomizationConfig, path, "randomization")


class TwinEnv:
    """One simulated arm + task. Not thread-safe: one caller steps it (the drivers lock around it)."""

    def __init__(self, config: TwinConfig):
        self.config = config
        self.robot: RobotSpec = robot_spec(config.robot)
        self.task = TASK_CLASSES[config.task](self.robot, config.cubes)
        self.randomization = (load_randomization(config.randomization_file) if config.randomization_file
                              else config.randomization)
        self.image_size = (int(config.image_size[0]), int(config.image_size[1]))
        self.cameras = tuple(config.cameras)
        spec = build_scene(config.robot, self.image_size, self.cameras, config.render, config.camera_calibration)
        self.task.build(spec)
        self.spec = spec
        self.model = spec.compile()
        self.control_dt = 1.0 / config.control_hz
        self.n_substeps = max(1, math.ceil(self.control_dt / config.max_physics_dt - 1e-9))
        self.model.opt.timestep = self.control_dt / self.n_substeps
        if config.sysid_file:
            from vla_robot.twin.sysid import apply_sysid_file

            apply_sysid_file(self.model, config.sysid_file, self.robot)
        self.data = mujoco.MjData(self.model)
        self.task.bind(self.model)
        names, facts = self.robot.joint_names, self.robot.model  # how the MJCF names our joints
        self._qadr = np.array([self.model.joint(facts.joints.get(j, j)).qposadr[0] for j in names])
        self._dadr = np.array([self.model.joint(facts.joints.get(j, j)).dofadr[0] for j in names])
        self._act = np.array([self.model.actuator(facts.actuators.get(j, j)).id for j in names])
        self._ctrl_scale = np.array([facts.ctrl_scale.get(j, 1.0) for j in names])
        self._tcp = self.model.site("tcp").id
        arm_names = [names[i] for i in self.robot.arm_joints]
        axis, sign = facts.approach_axis
        self.kinematics = Kinematics(self.model, "tcp", arm_names, approach_axis=axis, approach_sign=sign)
        self.pinch_kinematics = Kinematics(self.model, "pinch", arm_names, approach_axis=axis, approach_sign=sign)
        self.episode_s = config.episode_s or self.task.default_episode_s
        self.max_steps = int(round(self.episode_s * config.control_hz))
        self._renderer: mujoco.Renderer | None = None
        # an EGL context is current in one thread at a time: envs rendered from several threads
        # (the driver sessions) give it back after every render
        self.release_gl = False
        self._seed_rng = np.random.default_rng(config.seed)
        self._nominal = _snapshot(self.model)
        self.start: Start | None = None
        self.steps = 0
        self._last_cmd = self.robot.home.copy()
        self._latency = 0
        self._queue: collections.deque = collections.deque()
        self._cache: dict[str, Any] = {}
        self._obs_rng = np.random.default_rng(0)

    # --- episode ------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, start: int | None = None) -> dict:
        """Start an episode. ``seed`` reseeds the env's sequence; ``start`` picks the start state id."""
        if seed is not None:
            self._seed_rng = np.random.default_rng(seed)
        start_id = int(self._seed_rng.integers(0, 2**31 - 1)) if start is None else _check_start(start)
        episode_rng = np.random.default_rng(self._seed_rng.integers(0, 2**63 - 1))
        mujoco.mj_resetData(self.model, self.data)
        _restore(self.model, self._nominal)
        self.start = self.task.sample(start_id)
        self._latency = 0
        if self.randomization.enabled:
            from vla_robot.twin.randomize import apply_randomization

            self._latency = apply_randomization(self, self.randomization, episode_rng, self.start)
        self._obs_rng = np.random.default_rng(episode_rng.integers(0, 2**63 - 1))
        self.task.apply(self.model, self.data, self.start)
        q0 = self.start.q_arm
        self.data.qpos[self._qadr] = q0
        self.data.ctrl[self._act] = q0 * self._ctrl_scale
        mujoco.mj_forward(self.model, self.data)
        self._last_cmd = q0.copy()
        self._queue = collections.deque([q0.copy()] * self._latency)
        self.steps = 0
        self._cache = {}
        return self.observation()

    def step(self, q_target) -> dict:
        """Command absolute joint targets (gripper last), advance one control period, observe."""
        self.advance(q_target)
        return self.observation()

    def advance(self, q_target) -> None:
        """:meth:`step` without the observation (no rendering): what a driver loop calls."""
        if self.start is None:
            raise RuntimeError("TwinEnv.step() before reset(): call reset() first")
        q = self.robot.clip(self.robot.check_q(q_target, "q_target"))
        self._last_cmd = q
        if self._latency:
            self._queue.append(q)
            q = self._queue.popleft()
        self.data.ctrl[self._act] = q * self._ctrl_scale
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.steps += 1

    @property
    def done(self) -> bool:
        return self.steps >= self.max_steps

    @property
    def instruction(self) -> str:
        return self.task.instruction(self._started())

    @property
    def start_condition(self) -> int:
        """The id of this episode's start state; ``reset(start=...)`` with it rebuilds the same start."""
        return self._started().start_id

    def success(self) -> bool:
        self._started()
        return self.task.success(self)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's next joint target from the current state (within velocity limits)."""
        self._started()
        return self.task.expert(self)

    # --- state --------------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qadr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._dadr].copy()

    def set_joint_state(self, q, dq=None) -> None:
        """Kinematic set (mirror): joint positions (and velocities), then ``mj_forward``."""
        self.data.qpos[self._qadr] = q
        if dq is not None:
            self.data.qvel[self._dadr] = dq
        mujoco.mj_forward(self.model, self.data)

    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp].copy()

    def last_command(self) -> np.ndarray:
        return self._last_cmd.copy()

    def max_joint_step(self) -> np.ndarray:
        """Largest joint change per control step the velocity limits allow (with 10 % margin)."""
        return 0.9 * self.robot.max_velocity * self.control_dt

    def solve_ik(self, target_pos, q_arm_init, approach=(0.0, 0.0, -1.0), site: str = "tcp",
                 fix_roll: bool | None = None) -> np.ndarray:
        """Arm joints that put ``site`` ('tcp' or 'pinch') at ``target_pos``, from above when the arm can.

        Tries a straight-down approach first, then tilts it away from the base until the position
        is reached. The last arm joint (the wrist roll / flange) stays where ``q_arm_init`` has it
        when ``fix_roll`` (default: on a 5-DoF arm such as the SO-101, whose roll cannot help the position).
        """
        kin = self.pinch_kinematics if site == "pinch" else self.kinematics
        p = np.asarray(target_pos, dtype=np.float64)
        q0 = np.asarray(q_arm_init, dtype=np.float64)[: len(self.robot.arm_joints)]
        radial = np.array([p[0], p[1], 0.0]) / max(np.linalg.norm(p[:2]), 1e-6)
        down = np.asarray(approach, dtype=np.float64)
        best = None
        if fix_roll is None:  # a 5-DoF arm has no joint to spare for the position
            fix_roll = len(self.robot.arm_joints) < 6
        fixed = (len(q0) - 1,) if fix_roll else ()
        for tilt in np.radians([0, 15, 30, 45, 60]):
            want = down * np.cos(tilt) + radial * np.sin(tilt)
            res = kin.ik(p, q0, approach=want, axis_weight=0.3, fixed=fixed)
            if best is None or res.pos_error < best.pos_error - 1e-4:
                best = res
            if res.ok:
                return res.q
        return best.q

    def episode_cache(self, key: str, make: Callable[[], Any]) -> Any:
        """Per-episode memo (cleared by reset), e.g. the expert's IK plan."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # --- observation --------------------------------------------------------------------------
    def observation(self) -> dict:
        q = self.joint_positions()
        if self.randomization.joint_noise_std > 0:
            q = q + self._obs_rng.normal(0.0, self.randomization.joint_noise_std, size=q.shape)
        return {"images": self.render(), "state": q.astype(np.float32), "time": float(self.data.time)}

    def renderer(self) -> mujoco.Renderer:
        if self._renderer is None:
            h, w = self.image_size
            self._renderer = mujoco.Renderer(self.model, h, w)
            _LIVE.add(self)
            _close_at_exit()
            if self.release_gl:
                _release_gl_context()
        return self._renderer

    def render(self, cameras=None) -> dict[str, np.ndarray]:
        """Images of ``cameras`` (default: the configured ones) at the current state."""
        r = self.renderer()
        out = {}
        fast = self.config.render == "fast"
        for cam in cameras or self.cameras:
            r.update_scene(self.data, camera=cam)
            if fast:
                r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            out[cam] = r.render().copy()
        if self.release_gl:
            _release_gl_context()
        return out

    def camera_matrix(self, camera: str) -> np.ndarray:
        """OpenCV ``K`` of the images this env renders for ``camera``."""
        return camera_intrinsics(self.model, camera, *self.image_size)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _started(self) -> Start:
        if self.start is None:
            raise RuntimeError("the episode has not started: call reset() first")
        return self.start


# model fields that randomization (and sysid) may change; restored at every reset
_FIELDS = ("light_diffuse", "light_dir", "geom_rgba", "cam_pos", "cam_quat", "cam_fovy", "cam_intrinsic",
           "geom_friction", "dof_damping", "dof_armature", "body_mass", "body_inertia", "actuator_gainprm",
           "actuator_biasprm", "dof_frictionloss")


def _snapshot(model) -> dict:
    return {f: getattr(model, f).copy() for f in _FIELDS}


def _restore(model, snap: dict) -> None:
    for f, v in snap.items():
        getattr(model, f)[:] = v


_LIVE: "weakref.WeakSet[TwinEnv]" = weakref.WeakSet()
_EXIT_HOOK = []


def _close_at_exit() -> None:
    """Close renderers left open before the GL display goes (its atexit hook is registered when
    the first context is made; ours, registered after it, runs before it)."""
    if not _EXIT_HOOK:
        _EXIT_HOOK.append(True)
        atexit.register(lambda: [env.close() for env in list(_LIVE)])


def _release_gl_context() -> None:
    """Make no OpenGL context current in this thread, so another thread may take it."""
    backend = os.environ.get("MUJOCO_GL", "").lower()
    if backend == "egl":
        from mujoco import egl

        egl.EGL.eglMakeCurrent(egl.EGL_DISPLAY, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_CONTEXT)
    elif backend == "osmesa":
        from mujoco import osmesa

        osmesa.osmesa.OSMesaMakeCurrent(None, None, osmesa.GL.GL_FLOAT, 0, 0)


def _check_start(start) -> int:
    if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)) or not 0 <= start < 2**31:
        raise ValueError(f"start must be a start-state id (an int in 0..2**31-1, e.g. env.start_condition), got {start!r}")
    return int(start)


def make_env(task: str = "reach", robot: str = DEFAULT_ROBOT, seed: int = 0, image_size=(128, 128),
             cameras=("front", "wrist"), control_hz: float = 30.0, randomization=None, **options) -> TwinEnv:
    """Build a :class:`TwinEnv` (see :class:`vla_robot.twin.config.TwinConfig` for ``options``).

    ``randomization``: None (off), a :class:`RandomizationConfig`, a mapping of its fields, or the
    path of a ``sim2real/`` YAML file. Bad values raise ``ConfigError`` naming the key.
    """
    return TwinEnv(twin_config(task, robot, seed, image_size, cameras, control_hz, randomization, **options))


def twin_config(task: str = "reach", robot: str = DEFAULT_ROBOT, seed: int = 0, image_size=(128, 128),
                cameras=("front", "wrist"), control_hz: float = 30.0, randomization=None,
                **options) -> TwinConfig:
    """The validated :class:`TwinConfig` that :func:`make_env` builds from (the same arguments)."""
    data: dict[str, Any] = dict(task=task, robot=robot, seed=seed, image_size=list(image_size),
                                cameras=list(cameras), control_hz=control_hz, **options)
    if isinstance(randomization, (str, Path)):
        data["randomization_file"] = str(randomization)
    elif isinstance(randomization, RandomizationConfig):
        data["randomization"] = {k: getattr(randomization, k) for k in randomization.__dataclass_fields__}
    elif isinstance(randomization, dict):
        data["randomization"] = randomization
    elif randomization is not None:
        raise ConfigError(f"make_env: randomization must be None, a RandomizationConfig, a mapping or a YAML path, "
                          f"got {type(randomization).__name__}")
    return from_dict(TwinConfig, data, source="make_env")
