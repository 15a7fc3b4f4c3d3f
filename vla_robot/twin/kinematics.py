"""Forward and inverse kinematics on a MuJoCo model (for the scripted experts and the mirror).

The IK is damped least squares on the site Jacobian: position first, the tool's approach axis as a
weighted secondary goal (a 5-DoF SO-101 cannot always point straight down), joint limits enforced
by clipping. It works on its own ``MjData`` so the simulation being stepped is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

__all__ = ["Kinematics", "IKResult"]


@dataclass
class IKResult:
    q: np.ndarray  # arm joint positions (the joints passed to Kinematics)
    pos_error: float  # m
    axis_error: float  # rad, angle between the tool axis and the requested one (0 if none asked)
    iterations: int

    @property
    def ok(self) -> bool:
        return self.pos_error < 2e-3


class Kinematics:
    """FK/IK of ``site`` over the hinge ``joints`` (names) of ``model``.

    ``approach_axis`` is the column of the site frame that points out of the gripper (0=x, 1=y, 2=z);
    its sign is given by ``approach_sign``.
    """

    def __init__(self, model: mujoco.MjModel, site: str, joints: list[str], approach_axis: int = 2,
                 approach_sign: float = 1.0):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = model.site(site).id
        self.qadr = np.array([model.joint(j).qposadr[0] for j in joints])
        self.dofadr = np.array([model.joint(j).dofadr[0] for j in joints])
        self.lower = np.array([model.joint(j).range[0] for j in joints])
        self.upper = np.array([model.joint(j).range[1] for j in joints])
        self.approach_axis = approach_axis
        self.approach_sign = approach_sign
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def _set(self, q: np.ndarray, base_qpos: np.ndarray | None) -> None:
        if base_qpos is not None:
            self.data.qpos[:] = base_qpos
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def fk(self, q, base_qpos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and approach direction (3,) for arm joints ``q``."""
        self._set(np.asarray(q, dtype=np.float64), base_qpos)
        xmat = self.data.site_xmat[self.site_id].reshape(3, 3)
        return self.data.site_xpos[self.site_id].copy(), self.approach_sign * xmat[:, self.approach_axis].copy()

    def ik(self, target_pos, q0, approach=None, axis_weight: float = 0.2, iters: int = 200, damping: float = 1e-3,
           base_qpos: np.ndarray | None = None, fixed: tuple[int, ...] = ()) -> IKResult:
        """Joint positions that put the site at ``target_pos`` (and its approach axis near ``approach``).

        ``fixed`` lists indices (into the joint list) that stay at ``q0`` (e.g. the wrist roll).
        """
        target = np.asarray(target_pos, dtype=np.float64)
        q = np.clip(np.asarray(q0, dtype=np.float64).copy(), self.lower, self.upper)
        want = None if approach is None else np.asarray(approach, dtype=np.float64) / np.linalg.norm(approach)
        free = np.array([i not in fixed for i in range(len(q))])
        it = 0
        for it in range(1, iters + 1):
            self._set(q, base_qpos)
            pos = self.data.site_xpos[self.site_id]
            err = target - pos
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
            J = self._jacp[:, self.dofadr]
            e = err
            if want is not None:
                axis = self.approach_sign * self.data.site_xmat[self.site_id].reshape(3, 3)[:, self.approach_axis]
                rot_err = np.cross(axis, want)  # small-angle rotation that turns axis onto want
                J = np.vstack([J, axis_weight * self._jacr[:, self.dofadr]])
                e = np.concatenate([err, axis_weight * rot_err])
            J = J * free
            dq = J.T @ np.linalg.solve(J @ J.T + damping * np.eye(J.shape[0]), e)
            step = np.linalg.norm(dq)
            if step > 0.3:
                dq *= 0.3 / step
            q = np.clip(q + dq, self.lower, self.upper)
            if np.linalg.norm(err) < 1e-4 and step < 1e-5:
                break
        pos, axis = self.fk(q, base_qpos)
        axis_err = 0.0 if want is None else float(np.arccos(np.clip(axis @ want, -1, 1)))
        return IKResult(q=q, pos_error=float(np.linalg.norm(target - pos)), axis_error=axis_err, iterations=it)


def end_effector_fk(robot: str):
    """``fk(q) -> xyz``: the tool centre point (metres, the robot's base frame) for a full joint vector
    ``q`` (gripper included, as commands are), from the robot's own MuJoCo model (no scene).

    The safety filter's workspace box is in this frame; control/ stays numpy-only by taking the callable.
    """
    from vla_robot.twin.models import robot_mjspec
    from vla_robot.twin.robots import robot_spec

    spec = robot_spec(robot)
    arm = list(spec.arm_joints)
    kin = Kinematics(robot_mjspec(robot).compile(), spec.ee_site, [spec.joint_names[i] for i in arm])

    def fk(q) -> np.ndarray:
        return kin.fk(np.asarray(q, dtype=np.float64)[arm])[0]

    return fk
