"""OpenVLA-OFT policy runtime: model, checkpoint I/O, processor, action tokenizer, normalisation.

No ROS and no networking. ``vla_robot.policy.config``, ``.normalization`` and ``.action_tokenizer``
need only numpy; the rest needs torch, imported when first used::

    from vla_robot.policy import load_policy
    runtime = load_policy(preset="tiny", seed=0)
    chunk = runtime.infer([{"images": {...}, "state": q, "instruction": "pick up the cube"}])[0]["actions"]

``runtime`` is a :class:`Policy` (``vla_robot.policy.interface``), as the serving client is.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Policy": "vla_robot.policy.interface",
    "AsyncPolicy": "vla_robot.policy.interface",
    "load_policy": "vla_robot.policy.runtime",
    "PolicyRuntime": "vla_robot.policy.runtime",
    "build_model": "vla_robot.policy.runtime",
    "load_preset": "vla_robot.policy.runtime",
    "list_presets": "vla_robot.policy.runtime",
    "save_checkpoint": "vla_robot.policy.checkpoint",
    "load_checkpoint": "vla_robot.policy.checkpoint",
    "CheckpointError": "vla_robot.policy.checkpoint",
    "OFTModel": "vla_robot.policy.modeling",
    "PolicyBatch": "vla_robot.policy.modeling",
    "PolicyProcessor": "vla_robot.policy.processor",
    "compute_statistics": "vla_robot.policy.normalization",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla_robot.policy' has no attribute '{name}'")
