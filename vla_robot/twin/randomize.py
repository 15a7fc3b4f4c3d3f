"""Domain randomization, drawn at every reset from the episode's random stream.

Each group touches only its own model fields (a test checks this), all of which the env restores
to their nominal values before the next draw:

- lighting: ``light_diffuse`` (intensity), ``light_dir`` (direction jitter)
- colours: ``geom_rgba`` of the table, and of the task objects (jittered around their colour, so
  "the red cube" stays red)
- cameras: ``cam_pos``, ``cam_quat``, ``cam_fovy`` (intrinsics-calibrated cameras keep their fovy)
- object poses: the start's sampled object positions (x, y) get extra jitter
- physics: ``geom_friction`` (sliding), ``dof_damping``, ``dof_armature``, ``body_mass`` +
  ``body_inertia``, position-servo gains ``actuator_gainprm``/``actuator_biasprm``
- actuation/sensing: action latency in control steps (returned), joint-state noise (in the env)
"""
from __future__ import annotations

import mujoco
import numpy as np

from vla_robot.twin.config import RandomizationConfig

__all__ = ["apply_randomization"]


def _uniform(rng: np.random.Generator, lo_hi, size=None):
    lo, hi = lo_hi
    return rng.uniform(lo, hi, size=size) if hi > lo else (np.full(size, lo) if size else lo)


def _small_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, axis, np.radians(rng.uniform(-max_deg, max_deg)))
    return q


def apply_randomization(env, cfg: RandomizationConfig, rng: np.random.Generator, start) -> int:
    """Randomize ``env.model`` (and ``start``'s object positions) in place; returns the action latency."""
    m = env.model
    # Draw every group in a fixed order, whether enabled or not, so that enabling one group does
    # not shift the random numbers another group sees.
    draws = {
        "light": (_uniform(rng, cfg.light_intensity, size=m.nlight), [_small_rotation(rng, cfg.light_dir_jitter_deg)
                                                                      for _ in range(m.nlight)]),
        "table": rng.uniform(-1, 1, size=3),
        "objects": rng.uniform(-1, 1, size=(m.ngeom, 3)),
        "cam_pos": rng.uniform(-1, 1, size=(m.ncam, 3)),
        "cam_rot": [_small_rotation(rng, cfg.camera_rot_jitter_deg) for _ in range(m.ncam)],
        "fovy": rng.uniform(-1, 1, size=m.ncam),
        "obj_pos": rng.uniform(-1, 1, size=(len(start.objects), 2)),
        "friction": _uniform(rng, cfg.friction_scale),
        "damping": _uniform(rng, cfg.damping_scale, size=m.nv),
        "armature": _uniform(rng, cfg.armature_scale, size=m.nv),
        "mass": _uniform(rng, cfg.mass_scale, size=m.nbody),
        "kp": _uniform(rng, cfg.kp_scale, size=m.nu),
        "latency": int(rng.integers(cfg.action_latency_steps[0], cfg.action_latency_steps[1] + 1)),
    }
    if cfg.light_intensity != [1.0, 1.0]:
        m.light_diffuse[:] = np.clip(m.light_diffuse * draws["light"][0][:, None], 0, 1)
    if cfg.light_dir_jitter_deg > 0:
        for i, q in enumerate(draws["light"][1]):
            d = np.zeros(3)
            mujoco.mju_rotVecQuat(d, m.light_dir[i], q)
            m.light_dir[i] = d
    if cfg.table_rgb_jitter > 0:
        g = m.geom("table").id
        m.geom_rgba[g, :3] = np.clip(m.geom_rgba[g, :3] + cfg.table_rgb_jitter * draws["table"], 0, 1)
    if cfg.object_rgb_jitter > 0:
        for name in _object_geoms(m):
            g = m.geom(name).id
            m.geom_rgba[g, :3] = np.clip(m.geom_rgba[g, :3] * (1 + cfg.object_rgb_jitter * draws["objects"][g]), 0, 1)
    if cfg.camera_pos_jitter_m > 0:
        m.cam_pos[:] = m.cam_pos + cfg.camera_pos_jitter_m * draws["cam_pos"]
    if cfg.camera_rot_jitter_deg > 0:
        for i, q in enumerate(draws["cam_rot"]):
            out = np.zeros(4)
            mujoco.mju_mulQuat(out, m.cam_quat[i], q)
            m.cam_quat[i] = out
    if cfg.fovy_jitter_deg > 0:
        free = m.cam_sensorsize[:, 0] == 0  # calibrated cameras keep their intrinsics
        m.cam_fovy[free] = m.cam_fovy[free] + cfg.fovy_jitter_deg * draws["fovy"][free]
    if cfg.object_pos_jitter_m > 0:
        for k, name in enumerate(sorted(start.objects)):
            start.objects[name][:2] += cfg.object_pos_jitter_m * draws["obj_pos"][k]
    if cfg.friction_scale != [1.0, 1.0]:
        m.geom_friction[:, 0] *= draws["friction"]
    if cfg.damping_scale != [1.0, 1.0]:
        m.dof_damping[:] = m.dof_damping * draws["damping"]
    if cfg.armature_scale != [1.0, 1.0]:
        m.dof_armature[:] = m.dof_armature * draws["armature"]
    if cfg.mass_scale != [1.0, 1.0]:
        m.body_mass[:] = m.body_mass * draws["mass"]
        m.body_inertia[:] = m.body_inertia * draws["mass"][:, None]
    if cfg.kp_scale != [1.0, 1.0]:
        servo = m.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE
        m.actuator_gainprm[servo, 0] *= draws["kp"][servo]
        m.actuator_biasprm[servo, 1] *= draws["kp"][servo]
    return draws["latency"]


def _object_geoms(m: mujoco.MjModel) -> list[str]:
    names = [m.geom(i).name for i in range(m.ngeom)]
    return [n for n in names if n.startswith("cube_") or n == "plate"]
