"""Between the policy and the arm: chunk executors, safety filter, watchdog, fixed-rate loop.

Pure Python + numpy (no ROS, no torch). The data flow of one tick, in :class:`ChunkController`::

    client (submit/poll or act) -> ChunkExecutor -> Watchdog (may veto: hold) -> SafetyFilter -> arm
"""
from vla_robot.control.config import ControlConfig, ExecutorConfig, SafetyConfig, WatchdogConfig
from vla_robot.control.driver import ChunkController, ControllerStats, TickResult
from vla_robot.control.executors import (
    AsyncExecutor,
    ChunkExecutor,
    ExecutorStep,
    OpenLoopExecutor,
    TemporalEnsembleExecutor,
    make_executor,
)
from vla_robot.control.limits import JointLimits
from vla_robot.control.loop import RateLoop, TickStats
from vla_robot.control.safety import CLAMP_KINDS, SafetyFilter, SafetyStats
from vla_robot.control.trajectory import chunk_to_trajectory
from vla_robot.control.watchdog import Watchdog

__all__ = [
    "AsyncExecutor",
    "CLAMP_KINDS",
    "ChunkController",
    "ChunkExecutor",
    "ControlConfig",
    "ControllerStats",
    "ExecutorConfig",
    "ExecutorStep",
    "JointLimits",
    "OpenLoopExecutor",
    "RateLoop",
    "SafetyConfig",
    "SafetyFilter",
    "SafetyStats",
    "TemporalEnsembleExecutor",
    "TickResult",
    "TickStats",
    "Watchdog",
    "WatchdogConfig",
    "chunk_to_trajectory",
    "make_executor",
]
