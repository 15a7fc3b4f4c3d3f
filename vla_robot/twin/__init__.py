"""MuJoCo digital twin: robot models, task scenes, sim-as-robot, mirror, randomization, sysid.

``vla_robot.twin.robots`` (robot facts, numpy only) imports without MuJoCo; everything else is
loaded on first use: ``from vla_robot.twin import make_env``.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "robot_spec": "vla_robot.twin.robots",
    "RobotSpec": "vla_robot.twin.robots",
    "make_env": "vla_robot.twin.env",
    "TwinEnv": "vla_robot.twin.env",
    "TwinConfig": "vla_robot.twin.config",
    "RandomizationConfig": "vla_robot.twin.config",
    "MirrorConfig": "vla_robot.twin.config",
    "Mirror": "vla_robot.twin.mirror",
    "VecTwinEnv": "vla_robot.twin.rollout",
    "open_loop_rollout": "vla_robot.twin.rollout",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vla_robot.twin' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
