"""Mirror mode: the twin follows the real arm and says how far model and reality diverge.

Two views of the same arm live side by side:

- the **kinematic mirror** writes the measured joint positions (and velocities) into the twin and
  runs ``mj_forward``: exact by construction, cheap (tens of microseconds), and what the twin
  cameras render. Latency is compensated by extrapolating the last measurement at constant
  velocity to the time asked for (the camera frame's stamp), never further than
  ``max_extrapolation_s``.
- the **shadow**: a dynamic copy that receives the same joint targets as the real arm and is
  stepped for the time between measurements. Where it ends up versus where the real arm is
  measured is the divergence of the model (joint error, tool-centre-point error). It is re-synced
  to the measurement on :meth:`Mirror.resync` (e.g. at every episode start).

Optionally the twin's render of the measured pose is compared with the real camera image
(mean absolute difference): a calibration drift shows up there first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import mujoco
import numpy as np

from vla_robot.twin.config import MirrorConfig, TwinConfig

__all__ = ["Mirror", "Divergence"]


@dataclass
class Divergence:
    joint_error: np.ndarray  # rad, shadow - measured, per joint
    joint_error_max: float
    tcp_error_m: float  # |tcp(shadow) - tcp(measured)|
    image_diff: dict[str, float]  # camera -> mean |twin render - real image| / 255

    def as_dict(self) -> dict:
        return {"joint_error": self.joint_error.tolist(), "joint_error_max": self.joint_error_max,
                "tcp_error_m": self.tcp_error_m, "image_diff": dict(self.image_diff)}


class Mirror:
    """Mirror of one arm. ``twin`` configures the scene, cameras and robot of both copies."""

    def __init__(self, twin: TwinConfig | None = None, config: MirrorConfig | None = None):
        from vla_robot.twin.env import TwinEnv

        self.config = config or MirrorConfig()
        self.view = TwinEnv(twin or TwinConfig())
        self.shadow = TwinEnv(twin or TwinConfig())
        self.view.reset()
        self.shadow.reset(start=self.view.start_condition)
        self.robot = self.view.robot
        self._q = self.view.joint_positions()
        self._dq = np.zeros_like(self._q)
        self._stamp: float | None = None
        self._shadow_stamp: float | None = None
        self._target = self._q.copy()
        self.updates = 0

    # --- measurements in ----------------------------------------------------------------------
    def update(self, q, dq=None, stamp: float | None = None) -> None:
        """A measured joint state (robot units, gripper last) taken at ``stamp`` (monotonic s)."""
        q = self.robot.check_q(q, "measured joint positions")
        dq = np.zeros_like(q) if dq is None else self.robot.check_q(dq, "measured joint velocities")
        stamp = time.monotonic() if stamp is None else float(stamp)
        if self._stamp is not None and stamp < self._stamp:
            raise ValueError(f"joint state stamps must not go back in time: {stamp} after {self._stamp}")
        self._q, self._dq, self._stamp = q, dq, stamp
        self.view.set_joint_state(q, dq)
        self._advance_shadow(stamp)
        self.updates += 1

    def command(self, q_target) -> None:
        """The joint targets the real arm was just sent (the shadow gets the same)."""
        self._target = self.robot.clip(self.robot.check_q(q_target, "q_target"))

    def resync(self) -> None:
        """Put the shadow where the arm was last measured (start of an episode, after a reset)."""
        self.shadow.set_joint_state(self._q, self._dq)
        self.shadow.data.ctrl[self.shadow._act] = self._q * self.shadow._ctrl_scale
        self.shadow._last_cmd = self._q.copy()
        self._target = self._q.copy()
        self._shadow_stamp = self._stamp

    def _advance_shadow(self, stamp: float) -> None:
        if self._shadow_stamp is None:
            self.resync()
            return
        dt = stamp - self._shadow_stamp
        n = int(dt / self.shadow.model.opt.timestep)
        if n > 0:
            sh = self.shadow
            sh.data.ctrl[sh._act] = self._target * sh._ctrl_scale
            mujoco.mj_step(sh.model, sh.data, nstep=min(n, 10_000))
            self._shadow_stamp += n * sh.model.opt.timestep

    # --- pose out -----------------------------------------------------------------------------
    def pose_at(self, t: float | None = None) -> np.ndarray:
        """The joint positions at time ``t``: the last measurement, extrapolated at constant velocity."""
        if self._stamp is None or t is None or not self.config.extrapolate:
            return self._q.copy()
        lead = float(np.clip(t - self._stamp, 0.0, self.config.max_extrapolation_s))
        return self.robot.clip(self._q + self._dq * lead)

    def sync(self, t: float | None = None) -> np.ndarray:
        """Set the view to :meth:`pose_at` ``t`` (kinematic, exact) and return that pose."""
        q = self.pose_at(t)
        self.view.set_joint_state(q, self._dq)
        return q

    def render(self, cameras=None, t: float | None = None) -> dict[str, np.ndarray]:
        """Twin camera images of the arm's pose at time ``t`` (a camera frame's stamp)."""
        self.sync(t)
        return self.view.render(cameras)

    def tcp(self) -> np.ndarray:
        return self.view.tcp_pos()

    # --- divergence ---------------------------------------------------------------------------
    def divergence(self, real_images: dict[str, np.ndarray] | None = None, t: float | None = None) -> Divergence:
        """Model divergence: shadow vs measured joints and tcp; twin render vs real images."""
        err = self.shadow.joint_positions() - self._q
        tcp_err = float(np.linalg.norm(self.shadow.tcp_pos() - self.view.tcp_pos()))
        diffs: dict[str, float] = {}
        if real_images:
            rendered = self.render(list(real_images), t)
            for cam, real in real_images.items():
                real = np.asarray(real)
                twin = rendered[cam]
                if real.shape != twin.shape:
                    raise ValueError(f"real image of camera '{cam}' is {real.shape}; the twin renders {twin.shape} "
                                     "(set the twin's image_size to the camera's)")
                diffs[cam] = float(np.abs(real.astype(np.int16) - twin.astype(np.int16)).mean() / 255.0)
        return Divergence(err, float(np.max(np.abs(err))), tcp_err, diffs)

    def close(self) -> None:
        self.view.close()
        self.shadow.close()
