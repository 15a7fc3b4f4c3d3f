"""System identification: fit the twin's joint damping / armature / friction loss to logged
trajectories of the real arm, with ``mujoco.sysid`` (box-constrained nonlinear least squares over
parallel rollouts). The result goes to ``sim2real/`` and the twin loads it (``TwinConfig.sysid_file``).

A log is what the arm bridge sees anyway: the commanded joint targets and the measured joint
positions, stamped. Excite the joints with :func:`excitation` (sums of sines around home, inside
the velocity limits); damping and armature are well identified from it, friction loss poorly
(reference/mujoco_twin_calibration.md 3.2: it needs slow ramps and reversals).

    log = JointLog.load("runs/so101_excitation.npz")
    result = fit(log, robot="so101", params=("damping", "armature"))
    result.save("sim2real/sysid_so101.yaml")
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np
import yaml

from vla_robot.twin.robots import DEFAULT_ROBOT, RobotSpec, robot_spec

__all__ = ["JointLog", "SysidResult", "excitation", "record_log", "fit", "apply_sysid_file", "load_sysid"]

PARAMS = ("damping", "armature", "frictionloss")


@dataclass
class JointLog:
    """A logged trajectory: ``t`` (N,) seconds, ``q_cmd`` and ``q_meas`` (N, n_joints) robot units.

    ``q_cmd[i]`` is the target sent at ``t[i]`` and held until ``t[i+1]``; ``q_meas[i]`` was measured at ``t[i]``.
    """

    t: np.ndarray
    q_cmd: np.ndarray
    q_meas: np.ndarray
    robot: str = DEFAULT_ROBOT

    def __post_init__(self) -> None:
        self.t = np.asarray(self.t, dtype=np.float64)
        self.q_cmd = np.asarray(self.q_cmd, dtype=np.float64)
        self.q_meas = np.asarray(self.q_meas, dtype=np.float64)
        n = robot_spec(self.robot).n_joints
        if self.t.ndim != 1 or len(self.t) < 10:
            raise ValueError(f"JointLog: t must be 1-D with at least 10 samples, got shape {self.t.shape}")
        for name in ("q_cmd", "q_meas"):
            arr = getattr(self, name)
            if arr.shape != (len(self.t), n):
                raise ValueError(f"JointLog: {name} must have shape ({len(self.t)}, {n}) for {self.robot}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"JointLog: {name} has non-finite values")
        if not np.all(np.diff(self.t) > 0):
            raise ValueError("JointLog: t must be strictly increasing")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, t=self.t, q_cmd=self.q_cmd, q_meas=self.q_meas, robot=self.robot)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "JointLog":
        with np.load(path) as z:
            missing = {"t", "q_cmd", "q_meas"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: a joint log needs arrays t, q_cmd, q_meas; missing {sorted(missing)}")
            return cls(z["t"], z["q_cmd"], z["q_meas"], str(z["robot"]) if "robot" in z.files else DEFAULT_ROBOT)


def excitation(robot: str | RobotSpec = DEFAULT_ROBOT, duration_s: float = 3.0, control_hz: float = 30.0, seed: int = 0,
               amplitude: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Joint targets for identification: per joint a sum of three sines around home.

    Returns ``(t, q_cmd)``. The amplitude (rad) is scaled down where a joint limit or the
    velocity limit would be hit.
    """
    spec = robot if isinstance(robot, RobotSpec) else robot_spec(robot)
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration_s * control_hz))) / control_hz
    q = np.tile(spec.home, (len(t), 1))
    for j in range(spec.n_joints):
        freqs = rng.uniform(0.3, 2.0, size=3)
        phases = rng.uniform(0, 2 * np.pi, size=3)
        wave = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases)) / 3
        room = min(spec.home[j] - spec.lower[j], spec.upper[j] - spec.home[j]) * 0.9
        vmax = 2 * np.pi * freqs.max()  # rad/s per rad of amplitude, at most
        amp = min(amplitude, room, 0.8 * spec.max_velocity[j] / vmax)
        q[:, j] += amp * wave * np.clip(t / 0.3, 0, 1)  # ramp in over 0.3 s
    return t, q


def record_log(env, q_cmd: np.ndarray, t: np.ndarray | None = None) -> JointLog:
    """Drive a twin env (or, by analogy, a real arm) with ``q_cmd`` and log what it measures."""
    q_cmd = np.asarray(q_cmd, dtype=np.float64)
    env.reset()
    env.data.mocap_pos[:, 0] += 10.0  # task objects out of reach: identification needs free motion
    env.set_joint_state(q_cmd[0], np.zeros(env.robot.n_joints))
    env.data.ctrl[env._act] = q_cmd[0] * env._ctrl_scale
    meas = []
    for q in q_cmd:
        meas.append(env.joint_positions())
        env.advance(q)
    t = np.arange(len(q_cmd)) * env.control_dt if t is None else t
    return JointLog(t, q_cmd, np.array(meas), env.robot.name)


@dataclass
class SysidResult:
    robot: str
    values: dict[str, dict[str, float]]  # joint -> param -> value
    nominal: dict[str, dict[str, float]]
    cost: float
    seconds: float
    samples: int
    notes: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"robot": self.robot, "joints": self.values, "nominal": self.nominal,
               "fit": {"cost": float(self.cost), "seconds": round(self.seconds, 2), "samples": self.samples,
                       **self.notes}}
        path.write_text("# System identification of the twin's joints (vla_robot.twin.sysid); loaded by\n"
                        "# TwinConfig.sysid_file. Values replace the model's per-joint parameters.\n"
                        + yaml.safe_dump(doc, sort_keys=False))
        return path


def load_sysid(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sysid result not found (write one with 'vla-robot twin sysid')")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc.get("joints"), dict) or "robot" not in doc:
        raise ValueError(f"{path}: a sysid result needs 'robot' and 'joints: {{joint: {{damping: ..., ...}}}}'")
    for joint, vals in doc["joints"].items():
        if not isinstance(vals, dict) or set(vals) - set(PARAMS):
            raise ValueError(f"{path}: joints.{joint} must map some of {PARAMS} to numbers, got {vals!r}")
    return doc


def apply_sysid_file(model: mujoco.MjModel, path: str | Path, robot: RobotSpec) -> None:
    """Write a sysid result's joint parameters into a compiled model."""
    doc = load_sysid(path)
    if doc["robot"] != robot.name:
        raise ValueError(f"{path}: fitted for robot '{doc['robot']}', the twin runs '{robot.name}'")
    for joint, vals in doc["joints"].items():
        dof = model.joint(joint).dofadr[0]
        for key, value in vals.items():
            {"damping": model.dof_damping, "armature": model.dof_armature,
             "frictionloss": model.dof_frictionloss}[key][dof] = float(value)


def _sysid_spec(robot: str, timestep: float) -> mujoco.MjSpec:
    from vla_robot.twin.models import robot_mjspec

    spec = robot_mjspec(robot)
    # Contacts are off: drop the meshes, which only cost compile time (the fit recompiles the
    # model for every evaluation). Bodies whose inertia came from their geoms keep it, explicitly.
    compiled = spec.compile()
    for body in spec.bodies:
        if not body.name or body.name == "world":
            continue
        b = compiled.body(body.name)
        body.mass = float(b.mass[0])
        body.ipos = list(b.ipos)
        body.iquat = list(b.iquat)
        body.inertia = list(b.inertia)
        body.fullinertia = [np.nan] * 6  # the compiled (principal) inertia replaces a full one
        body.explicitinertial = True
    for geom in list(spec.geoms):
        if geom.type == mujoco.mjtGeom.mjGEOM_MESH:
            spec.delete(geom)
    for mesh in list(spec.meshes):
        spec.delete(mesh)
    for sensor in list(spec.sensors):  # only the joint positions we log (the Panda ships 58 sensor values)
        spec.delete(sensor)
    spec.option.timestep = timestep
    spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
    for j in _sysid_joints(robot_spec(robot)):
        spec.add_sensor(name=f"{j}_pos", type=mujoco.mjtSensor.mjSENS_JOINTPOS, objtype=mujoco.mjtObj.mjOBJ_JOINT,
                        objname=j)
    return spec


def _sysid_joints(rs: RobotSpec) -> list[str]:
    """The joints a fit can identify: all but the robot's ``model.no_sysid`` (e.g. the Panda gripper)."""
    return [j for j in rs.joint_names if j not in rs.model.no_sysid]


def _get(spec, joint, key) -> float:
    v = getattr(spec.joint(joint), key)
    return float(np.atleast_1d(v)[0])


def _set(spec, joint, key, value) -> None:
    cur = getattr(spec.joint(joint), key)
    if np.ndim(cur):  # MuJoCo >= 3.x stores damping as a vector (polynomial coefficients)
        cur = np.array(cur, dtype=np.float64)
        cur[0] = value
        setattr(spec.joint(joint), key, cur)
    else:
        setattr(spec.joint(joint), key, float(value))


def fit(log: JointLog, robot: str | None = None, params=("damping", "armature"), joints=None,
        physics_dt: float = 0.002, bounds=(0.2, 5.0), optimizer: str = "mujoco", max_iters: int = 50,
        initial: dict | None = None) -> SysidResult:
    """Fit ``params`` of ``joints`` (default: all but the Panda gripper) to ``log``.

    Each parameter is searched within ``bounds`` times its nominal (model) value, starting from
    ``initial`` (joint -> param -> value) or the nominal.
    """
    from mujoco import rollout, sysid

    robot = robot or log.robot
    rs = robot_spec(robot)
    bad = [p for p in params if p not in PARAMS]
    if bad:
        raise ValueError(f"unknown sysid parameter {bad[0]!r}; fit some of {PARAMS}")
    names = _sysid_joints(rs)
    joints = list(joints) if joints else names
    unknown = [j for j in joints if j not in names]
    if unknown:
        raise ValueError(f"cannot fit joint {unknown[0]!r}; joints of {robot}: {', '.join(names)}")
    period = float(np.median(np.diff(log.t)))
    n_sub = max(1, int(np.ceil(period / physics_dt - 1e-9)))
    dt = period / n_sub
    spec = _sysid_spec(robot, dt)
    model = spec.compile()
    # zero-order hold of the commands at the physics rate (what the servo saw)
    n = len(log.t)
    t_fine = log.t[0] + np.arange((n - 1) * n_sub + 1) * dt
    ctrl_fine = np.repeat(log.q_cmd, n_sub, axis=0)[: len(t_fine)]
    act_names = [model.actuator(i).name for i in range(model.nu)]
    col = {j: rs.joint_names.index(j) for j in rs.joint_names}
    ctrl = np.stack([ctrl_fine[:, col[a]] if a in col else np.zeros(len(t_fine)) for a in act_names], axis=1)
    sensor_cols = [col[model.sensor(i).name[: -len("_pos")]] if model.sensor(i).name[: -len("_pos")] in col else None
                   for i in range(model.nsensor)]
    meas = np.stack([log.q_meas[:, c] for c in sensor_cols if c is not None], axis=1)
    qpos0 = np.zeros(model.nq)
    for j in names:
        qpos0[model.joint(j).qposadr[0]] = log.q_meas[0, col[j]]
    x0 = sysid.create_initial_state(model, qpos0, np.zeros(model.nv), np.zeros(model.na))
    control_ts = sysid.TimeSeries(t_fine, ctrl)
    # rollout sensors see the state before each physics step, stamped with the time after it
    sensor_ts = sysid.TimeSeries.from_names(log.t + dt, meas, model)

    pdict = sysid.ParameterDict()
    nominal: dict[str, dict[str, float]] = {}
    for j in joints:
        nominal[j] = {}
        for p in params:
            nom = _get(spec, j, p)
            nominal[j][p] = nom
            start = (initial or {}).get(j, {}).get(p, nom)
            lo, hi = nom * bounds[0], max(nom * bounds[1], 1e-6)
            prm = sysid.Parameter(f"{j}.{p}", nominal=nom, min_value=lo, max_value=hi,
                                  modifier=lambda s, v, j=j, p=p: _set(s, j, p, v.value[0]))
            prm.value[:] = float(np.clip(start, lo, hi))
            pdict.add(prm)
    ms = sysid.ModelSequences(f"{robot}_joints", spec, "log", x0, control_ts, sensor_ts)
    residual_fn = sysid.build_residual_fn(models_sequences=[ms])
    t0 = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()) as out:  # the optimizer prints every iteration
        opt, res = sysid.optimize(initial_params=pdict, residual_fn=residual_fn, optimizer=optimizer,
                                  verbose=False, max_iters=max_iters)
    last = [line for line in out.getvalue().splitlines() if line.strip()]
    values = {j: {p: float(opt[f"{j}.{p}"].value[0]) for p in params} for j in joints}
    del rollout  # imported so a missing mujoco.rollout fails here with a clear ImportError
    r, *_ = residual_fn(opt.as_vector(), opt)
    cost = float(0.5 * np.sum(np.concatenate(r) ** 2))
    return SysidResult(robot, values, nominal, cost, time.monotonic() - t0, n,
                       {"optimizer": optimizer, "params": list(params), "physics_dt": dt,
                        "termination": last[-1] if last else ""})
