"""Config dataclasses of the data part (recorder, evaluation), read with :mod:`vla_robot.config`.

Standard library only, so every node and CLI can load them without importing lerobot.
"""
from __future__ import annotations

from dataclasses import dataclass, field

VIDEO_CODECS = ("h264", "hevc", "libsvtav1")


@dataclass
class RecorderConfig:
    """How the :class:`vla_robot.data.recorder.Recorder` writes a LeRobotDataset."""

    fps: int = 30
    # libsvtav1 at LeRobot's preset 12 keeps up with 2x640x480@30 on a loaded 2-core box (libx264 at its
    # default preset does not: benchmarks/recording.py); both ship in PyAV's wheel and decode with pyav
    vcodec: str = "libsvtav1"
    encoder_threads: int = 1  # per camera; 1 keeps a 2-core robot PC responsive
    # frames waiting for the writer, in seconds of recording, before add_frame drops: a loaded robot PC stalls
    # the writer for a few seconds now and then (2 s lost 27 frames in a 10-minute rehearsal); 5 s of
    # 2x640x480 is about 280 MB
    max_pending_s: float = 5.0
    put_timeout_s: float = 0.0  # how long add_frame may wait for room (0: never blocks the control loop)
    fsync: bool = True  # fsync every saved episode's files before it counts as durable (power loss)
    keep_commits: int = 2  # commit snapshots kept under <root>/.vla_recorder

    def validate(self) -> None:
        if not (isinstance(self.fps, int) and 1 <= self.fps <= 1000):
            raise ValueError(f"fps must be an integer in 1..1000 (frames per second), got {self.fps!r}")
        if self.vcodec not in VIDEO_CODECS:
            raise ValueError(f"vcodec must be one of {', '.join(VIDEO_CODECS)}, got {self.vcodec!r}")
        if self.encoder_threads < 1:
            raise ValueError(f"encoder_threads must be >= 1, got {self.encoder_threads}")
        if not self.max_pending_s > 0:
            raise ValueError(f"max_pending_s must be > 0 seconds, got {self.max_pending_s}")
        if self.put_timeout_s < 0:
            raise ValueError(f"put_timeout_s must be >= 0 seconds, got {self.put_timeout_s}")
        if self.keep_commits < 1:
            raise ValueError(f"keep_commits must be >= 1, got {self.keep_commits}")

    @property
    def max_pending_frames(self) -> int:
        return max(2, int(round(self.max_pending_s * self.fps)))


@dataclass
class RecorderNodeConfig:
    """recorder_node: records the graph's episodes into a LeRobotDataset.

    It listens on the standard topics of vla_robot.nodes.common (remap to change them): camera
    images, ``joint_states``, ``arm/command`` (one frame per command while an episode runs),
    ``policy/action``, ``policy/chunk``, ``policy/record`` (on-policy chunk records, saved to
    ``<root>/rl/``) and ``episode/event``; it publishes
    ``recorder/events`` (saved / save_failed, JSON). Image sizes and joint names come from the
    first messages.
    """

    root: str = "runs/dataset"
    repo_id: str = "local/vla_robot"
    robot_type: str = "so101"
    task: str = ""  # used when the episode manager gives no instruction
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    joint_names: list[str] = field(default_factory=list)  # empty: from the first joint_states
    # The arm's description (config/robots/*.yaml): joint_states in its hardware names and units are
    # recorded in the policy's (its names, order and units); '' = joint_states as they come.
    robot_description: str = ""
    recorder: RecorderConfig = field(default_factory=RecorderConfig)

    def validate(self) -> None:
        if not self.root:
            raise ValueError("root must name the dataset folder")
        if "/" not in self.repo_id:
            raise ValueError(f"repo_id must look like 'user/name', got {self.repo_id!r}")
        if not self.cameras:
            raise ValueError("cameras must name at least one camera")
        if self.robot_description:
            from vla_robot.robot.description import load_description

            names = load_description(self.robot_description).names()  # its own error names the key
            if self.joint_names and self.joint_names != names:
                raise ValueError(f"joint_names {self.joint_names} are not robot_description's {names}: "
                                 "leave joint_names empty (the description names the joints)")
        self.recorder.validate()
