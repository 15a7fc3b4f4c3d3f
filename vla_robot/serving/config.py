"""Config of the policy server (``vla-robot serve``), read with :mod:`vla_robot.config`.

Standard library only. Every field is also a ``serve`` command-line flag (``max_batch`` → ``--max-batch``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vla_robot.policy.config import ServingConfig


@dataclass
class ServerConfig:
    """Where the policy server listens and how it batches."""

    bind: str = "tcp://127.0.0.1:5555"  # requests (ZMQ ROUTER); port * picks a free port
    weights_bind: str = "tcp://127.0.0.1:5556"  # hot-swap pushes from the learner; "" turns hot-swap off
    http_port: int = -1  # OFT-compatible POST /act on this port (8777 is OFT's); -1: off
    http_host: str = "127.0.0.1"
    max_batch: int = 8  # requests per forward pass
    max_wait_ms: float = 2.0  # how long a batch waits for other recently active clients
    max_queue: int = 256  # requests waiting beyond this get an 'overloaded' error
    max_message_bytes: int = 64 * 1024 * 1024
    curve_secret_key: str = ""  # server NAME.key_secret file (vla-robot keygen); "" = no encryption
    curve_authorized_keys: str = ""  # folder of client NAME.key files allowed in; "" = any client with the server key
    allow_insecure_remote: bool = False  # serve beyond loopback without Curve (not recommended)
    serving: ServingConfig = field(default_factory=ServingConfig)  # static shapes, CUDA graphs (policy/static.py)

    def validate(self) -> None:
        for name in ("bind", "weights_bind"):
            value = getattr(self, name)
            if value and not value.startswith(("tcp://", "ipc://", "inproc://")):
                raise ValueError(f"{name} must be a ZMQ endpoint like tcp://127.0.0.1:5555, got '{value}'")
        if not (self.http_port == -1 or 0 <= self.http_port <= 65535):
            raise ValueError(f"http_port must be -1 (off) or a port 0..65535, got {self.http_port}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be in [0, 1000] ms, got {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.curve_authorized_keys and not self.curve_secret_key:
            raise ValueError("curve_authorized_keys needs curve_secret_key")
