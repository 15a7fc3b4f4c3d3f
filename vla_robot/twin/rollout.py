"""Batched rollouts for offline training: many twins stepped together, each with its own seed and
randomization.

- :class:`VecTwinEnv` — closed loop with images (a policy in the loop). ``workers=0`` steps the envs
  in this process; ``workers=k`` spreads them over ``k`` worker processes (each renders with its
  own GL context, so rendering runs in parallel on several cores). Same seeds -> same results
  either way.
- :func:`open_loop_rollout` — physics only, many joint-target sequences at once through
  ``mujoco.rollout`` (multi-threaded C, per-env randomized models allowed): for scoring action
  chunks or fitting dynamics where no images are needed.
"""
from __future__ import annotations

import copy
import multiprocessing as mp
from typing import Any

import mujoco
import numpy as np

from vla_robot.twin.config import TwinConfig

__all__ = ["VecTwinEnv", "open_loop_rollout"]


def _stack(obs: list[dict]) -> dict:
    return {
        "images": {cam: np.stack([o["images"][cam] for o in obs]) for cam in obs[0]["images"]},
        "state": np.stack([o["state"] for o in obs]),
        "time": np.array([o["time"] for o in obs]),
    }


class _Local:
    """A group of envs in this process."""

    def __init__(self, configs: list[TwinConfig]):
        from vla_robot.twin.env import TwinEnv

        self.envs = [TwinEnv(c) for c in configs]

    def call(self, method: str, args: list) -> list:
        out = []
        for env, a in zip(self.envs, args):
            if method == "reset":
                out.append(env.reset(**a))
            elif method == "step":
                out.append(env.step(a))
            elif method == "info":
                out.append({"success": env.success(), "instruction": env.instruction,
                            "start_condition": env.start_condition, "done": env.done})
            elif method == "expert":
                out.append(env.expert_action())
            else:
                raise ValueError(f"unknown method {method!r}")
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn, configs) -> None:
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    group = None
    try:
        group = _Local(configs)
        conn.send(("ok", None))
        while True:
            method, args = conn.recv()
            if method == "close":
                break
            try:
                conn.send(("ok", group.call(method, args)))
            except Exception as e:  # noqa: BLE001 - report to the parent, keep serving
                conn.send(("error", f"{type(e).__name__}: {e}"))
    except Exception as e:  # noqa: BLE001
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        if group is not None:
            group.close()
        conn.close()


class _Remote:
    def __init__(self, ctx, configs: list[TwinConfig]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, configs), daemon=True)
        self.proc.start()
        child.close()
        self.n = len(configs)

    def send(self, method: str, args: list) -> None:
        self.conn.send((method, args))

    def recv(self) -> list:
        status, payload = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"twin worker {self.proc.pid}: {payload}")
        return payload

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)


class VecTwinEnv:
    """``n`` twins of one task; env ``i`` is seeded ``seed + i`` (or ``seeds[i]``).

    Observations are stacked: ``{"images": {cam: uint8 [n, H, W, 3]}, "state": [n, joints], "time": [n]}``.
    """

    def __init__(self, n: int, task: str = "reach", robot: str = "so101", seed: int = 0, seeds=None,
                 image_size=(64, 64), cameras=("front", "wrist"), control_hz: float = 30.0, randomization=None,
                 workers: int = 0, **options):
        from vla_robot.twin.env import make_env  # validates the options once, with clear errors

        if n < 1:
            raise ValueError(f"VecTwinEnv needs n >= 1 envs, got {n}")
        seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"seeds must have {n} entries, got {len(seeds)}")
        probe = make_env(task=task, robot=robot, seed=seeds[0], image_size=image_size, cameras=cameras,
                         control_hz=control_hz, randomization=randomization, **options)
        base = probe.config
        probe.close()
        self.configs = [TwinConfig(**{**base.__dict__, "seed": s}) for s in seeds]
        self.n = n
        self.workers = max(0, min(int(workers), n))
        if self.workers == 0:
            self._groups: list[Any] = [_Local(self.configs)]
        else:
            ctx = mp.get_context("spawn")
            split = np.array_split(np.arange(n), self.workers)
            self._groups = [_Remote(ctx, [self.configs[i] for i in idx]) for idx in split]
            for g in self._groups:
                g.recv()  # started
        self._sizes = [len(g.envs) if isinstance(g, _Local) else g.n for g in self._groups]
        self.infos: list[dict] = []

    def _call(self, method: str, args: list) -> list:
        chunks, k = [], 0
        for size in self._sizes:
            chunks.append(args[k:k + size])
            k += size
        if self.workers == 0:
            return self._groups[0].call(method, chunks[0])
        for g, a in zip(self._groups, chunks):
            g.send(method, a)
        out: list = []
        for g in self._groups:
            out.extend(g.recv())
        return out

    def reset(self, starts=None, seeds=None) -> dict:
        """Reset all envs; ``starts[i]`` / ``seeds[i]`` as in ``TwinEnv.reset`` (None: the env's sequence)."""
        starts = [None] * self.n if starts is None else list(starts)
        seeds = [None] * self.n if seeds is None else list(seeds)
        if len(starts) != self.n or len(seeds) != self.n:
            raise ValueError(f"starts and seeds must have {self.n} entries")
        obs = _stack(self._call("reset", [{"start": s, "seed": sd} for s, sd in zip(starts, seeds)]))
        self.infos = self._call("info", [None] * self.n)
        return obs

    def step(self, actions) -> dict:
        """Step every env with its row of ``actions`` ([n, joints] absolute joint targets)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] != self.n:
            raise ValueError(f"actions must be [n_envs={self.n}, joints], got shape {actions.shape}")
        obs = _stack(self._call("step", list(actions)))
        self.infos = self._call("info", [None] * self.n)
        return obs

    def expert_actions(self) -> np.ndarray:
        return np.stack(self._call("expert", [None] * self.n))

    def success(self) -> np.ndarray:
        return np.array([i["success"] for i in self.infos])

    @property
    def instructions(self) -> list[str]:
        return [i["instruction"] for i in self.infos]

    @property
    def start_conditions(self) -> list[int]:
        return [i["start_condition"] for i in self.infos]

    def close(self) -> None:
        for g in self._groups:
            g.close()
        self._groups = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_loop_rollout(env, q_targets: np.ndarray, initial_q: np.ndarray | None = None,
                      randomize: bool = False, seed: int = 0, nthread: int = 2) -> np.ndarray:
    """Joint positions after each control step for a batch of joint-target sequences.

    ``q_targets``: [batch, steps, joints] (robot units, held for one control period each);
    ``initial_q``: [batch, joints] (default: the env's current joints). With ``randomize``, each
    sequence runs on a model randomized by ``env.randomization`` (physics groups) with its own
    seed. Returns [batch, steps, joints]. The env's scene objects take part (collisions).
    """
    from mujoco import rollout

    from vla_robot.twin.randomize import apply_randomization

    q_targets = np.asarray(q_targets, dtype=np.float64)
    if q_targets.ndim != 3 or q_targets.shape[2] != env.robot.n_joints:
        raise ValueError(f"q_targets must be [batch, steps, {env.robot.n_joints}], got shape {q_targets.shape}")
    batch, steps, _ = q_targets.shape
    m, d = env.model, env.data
    q0 = np.tile(env.joint_positions(), (batch, 1)) if initial_q is None else np.asarray(initial_q, np.float64)
    # per-step controls at the physics rate (zero-order hold)
    ctrl = np.tile(d.ctrl, (batch, steps * env.n_substeps, 1))
    held = np.repeat(np.clip(q_targets, env.robot.lower, env.robot.upper), env.n_substeps, axis=1)
    ctrl[:, :, env._act] = held * env._ctrl_scale
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state0 = np.zeros((batch, mujoco.mj_stateSize(m, spec)))
    scratch = mujoco.MjData(m)
    for b in range(batch):
        mujoco.mj_copyData(scratch, m, d)
        scratch.qpos[env._qadr] = q0[b]
        scratch.qvel[:] = 0
        mujoco.mj_getState(m, scratch, state0[b], spec)
    # Mocap poses (the task's fixed objects) are not part of the physics state and rollout resets
    # its data: carry them in the model, as the default poses that a reset restores.
    base = copy.copy(m)
    mocap_bodies = np.flatnonzero(m.body_mocapid >= 0)
    base.body_pos[mocap_bodies] = d.mocap_pos[m.body_mocapid[mocap_bodies]]
    base.body_quat[mocap_bodies] = d.mocap_quat[m.body_mocapid[mocap_bodies]]
    models = base
    if randomize:
        rng = np.random.default_rng(seed)
        models = []
        for _ in range(batch):
            mb = copy.copy(base)
            apply_randomization(_ModelView(env, mb), env.randomization, np.random.default_rng(rng.integers(2**63)),
                                copy.deepcopy(env.start))
            models.append(mb)
    datas = [mujoco.MjData(m) for _ in range(max(1, nthread))]
    # the solver's warm start is not part of the state: start every rollout from the env's own
    warm = np.tile(d.qacc_warmstart, (batch, 1))
    state, _ = rollout.rollout(models, datas, state0, ctrl, initial_warmstart=warm)
    qpos_cols = 1 + env._qadr  # state rows: [time, qpos..., qvel..., ...]
    return state[:, env.n_substeps - 1::env.n_substeps][:, :steps, qpos_cols]


class _ModelView:
    """Just enough of a TwinEnv for apply_randomization to work on another model."""

    def __init__(self, env, model):
        self.model = model
        self.robot = env.robot
