"""Config dataclasses of the nodes, read from config/*.yaml (ROS 2 parameter files).

Each composes the package configs; see vla_robot/config.py for the loader and NODE_CONFIGS.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PolicyNodeConfig:
    """policy_node: asks the policy server for chunks and drives the arm through the safety filter."""

    policy_server: str = "tcp://127.0.0.1:5555"
    control_hz: float = 30.0
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    instruction: str = ""
    request_timeout_s: float = 2.0

    def validate(self) -> None:
        if not self.control_hz > 0:
            raise ValueError(f"control_hz must be > 0 (Hz), got {self.control_hz}")
        if not self.policy_server.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(
                f"policy_server must be a ZMQ address like tcp://127.0.0.1:5555, got '{self.policy_server}'"
            )
        if not self.cameras:
            raise ValueError("cameras must name at least one camera, in the order the policy expects")
