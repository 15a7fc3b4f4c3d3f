"""Demonstration and evaluation episodes: the durable LeRobotDataset recorder, its reader, dataset
tools and the evaluation report.

Light to import: ``Recorder`` (which loads lerobot) and the reader are imported on first use.
"""
from __future__ import annotations

from .config import RecorderConfig, RecorderNodeConfig
from .schema import CONTROL_POLICY, CONTROL_TELEOP, EpisodeRecord, Label, Schema

__all__ = [
    "Recorder", "RecorderError", "RecorderConfig", "RecorderNodeConfig", "Schema", "EpisodeRecord",
    "CONTROL_POLICY", "CONTROL_TELEOP", "Label", "iter_episodes", "load_episode", "read_journal",
]

_LAZY = {
    "Recorder": "recorder", "RecorderError": "recorder",
    "iter_episodes": "reader", "load_episode": "reader", "read_journal": "reader",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
