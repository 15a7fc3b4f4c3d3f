"""Twin-recorded datasets with ground truth: the cheapest labelled episodes there are.

The MuJoCo twin (:mod:`vla_robot.twin.env`) runs its scripted expert, or the expert with a flaw
(it stops early, or it aims a little off), and the real :class:`~vla_robot.data.recorder.Recorder`
saves each episode into a LeRobotDataset. The label is the twin's own success check at the end of
the episode (``env.success()``), never the mode's intent: a flawed expert that still touches the
cube is a success. The ground truth is also kept in each episode's journal ``meta``
(``twin_success``, ``mode``), so an episode saved *unlabelled* (``labelled`` < 1) still carries
what a person would have said: what the votes benchmark scores against.

::

    truth = record_twin_dataset("runs/det_ds", episodes=40, seed=0)       # ~1 s per 10 episodes here
    truth[0]  # {"episode_index": 0, "success": True, "mode": "expert", "start": 17, "labelled": True}

Small on purpose (64x64 images, 10 Hz, 2 s reach episodes) so that tests and benchmarks record a
few dozen episodes in seconds on a CPU.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# the twin renders headless; the backend must be chosen before mujoco is first imported (as the CLI does)
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from vla_robot.twin.robots import DEFAULT_ROBOT  # noqa: E402

__all__ = ["record_twin_dataset", "MODES"]

# expert: the scripted expert throughout; stop: it freezes at a random point (often hovering just above
# the cube: the near miss a detector must tell apart); offset: the arm's targets carry a small constant
# error (it touches beside the cube, or still close enough to count)
MODES = ("expert", "stop", "offset")


def record_twin_dataset(root: str | Path, episodes: int = 40, *, seed: int = 0, task: str = "reach",
                        robot: str = DEFAULT_ROBOT, image_size: Sequence[int] = (64, 64),
                        cameras: Sequence[str] = ("front", "wrist"), control_hz: float = 10.0,
                        expert_share: float = 0.4, labelled: float = 1.0, progress: bool = False) -> list[dict]:
    """Record ``episodes`` twin episodes into a new (or resumed) dataset at ``root``.

    ``expert_share``: the share of episodes the plain expert runs (the rest are flawed, half each);
    ``labelled``: the share saved with the twin's label (the rest are saved unlabelled, truth in meta).
    Returns one dict per episode: episode_index, success (the twin's check), mode, start, labelled."""
    from tqdm import tqdm

    from vla_robot.data import Recorder, RecorderConfig, Schema
    from vla_robot.twin.env import make_env

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not (0.0 <= expert_share <= 1.0 and 0.0 <= labelled <= 1.0):
        raise ValueError(f"expert_share and labelled are shares in 0..1, got {expert_share}, {labelled}")
    rng = np.random.default_rng(seed)
    env = make_env(task, robot, seed=seed, image_size=tuple(image_size), cameras=tuple(cameras),
                   control_hz=control_hz)
    names = list(env.robot.joint_names)
    schema = Schema({c: tuple(image_size) for c in cameras}, names, names)
    truth = []
    rec = Recorder(root, schema, robot_type=robot,
                   config=RecorderConfig(fps=int(round(control_hz)), fsync=False, put_timeout_s=5.0))
    try:
        for _ in tqdm(range(episodes), desc="twin episodes", unit="ep", disable=not progress):
            start = int(rng.integers(0, 2**31 - 1))
            mode = "expert" if rng.random() < expert_share else str(rng.choice(MODES[1:]))
            success = _run_episode(env, rec, start, mode, rng)
            keep_label = bool(rng.random() < labelled)
            meta = {"twin_success": success, "mode": mode}
            saved = rec.save_episode(success if keep_label else None, meta=meta)
            truth.append({"episode_index": saved.episode_index, "success": success, "mode": mode, "start": start,
                          "labelled": keep_label})
    finally:
        rec.close()
        env.close()
    return truth


def _run_episode(env, rec, start: int, mode: str, rng: np.random.Generator) -> bool:
    """One episode of ``mode`` into the open recorder; returns the twin's success check at its end."""
    obs = env.reset(start=start)
    rec.start_episode(env.instruction, start_condition=start, meta={"mode": mode})
    # the expert touches within the first quarter of the episode: a stop before then is a near miss, or not
    stop_at = int(rng.integers(1, env.max_steps // 4 + 1)) if mode == "stop" else env.max_steps
    offset = np.zeros(len(env.robot.joint_names), np.float32)
    if mode == "offset":
        offset[list(env.robot.arm_joints)] = rng.normal(0.0, 0.06, len(env.robot.arm_joints))
    held = None
    for k in range(env.max_steps):
        if k < stop_at:
            action = np.asarray(env.expert_action(), np.float32) + offset
        else:
            held = env.last_command() if held is None else held
            action = held
        rec.add_frame(obs["images"], obs["state"], action, stamp=k * env.control_dt)
        obs = env.step(action)
    return bool(env.success())
