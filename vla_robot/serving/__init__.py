"""Policy server and client: ZMQ + msgpack with raw numpy buffers, batching, hot-swap, OFT HTTP.

- :mod:`vla_robot.serving.protocol` — the wire format, imported by both ends.
- :mod:`vla_robot.serving.client` — ``PolicyClient`` (numpy, zmq, msgpack only: runs on the robot PC).
- :mod:`vla_robot.serving.server` — ``PolicyServer`` around a policy runtime.
- :mod:`vla_robot.serving.batching` — dynamic batching and swaps between batches.
- :mod:`vla_robot.serving.weights` — ``WeightPublisher`` (learner side) and the receiving end.
- :mod:`vla_robot.serving.http` — the OpenVLA-OFT-compatible ``POST /act``.

Names are imported lazily, so ``from vla_robot.serving import PolicyClient`` loads no server code.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "PolicyClient": "vla_robot.serving.client",
    "PolicyServerError": "vla_robot.serving.client",
    "PolicyTimeout": "vla_robot.serving.client",
    "PolicyServer": "vla_robot.serving.server",
    "WeightPublisher": "vla_robot.serving.weights",
    "ServerConfig": "vla_robot.serving.config",
    "PROTOCOL_VERSION": "vla_robot.serving.protocol",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vla_robot.serving' has no attribute '{name}'")
