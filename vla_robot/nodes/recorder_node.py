"""recorder_node: the graph's episodes into a durable LeRobotDataset (a shell over
vla_robot.data.session.RecordingSession and vla_robot.data.recorder.Recorder).

In: ``cameras/<cam>/image_raw``, ``joint_states``, ``arm/command`` (each command while an episode
runs is one frame; header.frame_id says policy / teleop / hold), ``policy/action`` (raw action),
``policy/chunk`` (chunk ids and latency), ``policy/record`` (rl: each chunk's on-policy record,
saved with its episode as ``<root>/rl/episode_NNNNNN.msgpack``), ``episode/event`` (start / end /
save / discard from the episode manager).
Out: ``recorder/events`` (std_msgs/String JSON: ``saved`` with episode_index, label, length,
dropped_frames, seconds_to_durable; or ``save_failed``), ``/diagnostics`` (frames, drops, backlog).

Also here: :class:`SimExpertTeleop`, the twin's scripted expert as the operator for
``vla-robot record --sim`` (publishes ``arm/command`` with source ``teleop`` on each sim step).
"""
from __future__ import annotations

import logging
import time

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String, UInt8MultiArray
from trajectory_msgs.msg import JointTrajectory

from vla_robot.control.config import SafetyConfig
from vla_robot.data.config import RecorderNodeConfig
from vla_robot.data.session import RecordingSession
from vla_robot.nodes import common, convert
from vla_robot.robot.description import load_description

RECORDER_EVENTS = "recorder/events"


class _RosLogHandler(logging.Handler):
    """Route the recorder's Python log records to the node's ROS logger."""

    def __init__(self, node: Node):
        super().__init__(logging.WARNING)
        self.node = node

    def emit(self, record: logging.LogRecord) -> None:
        msg = self.format(record)
        # one call site per severity: rclpy refuses a call site whose severity changes between calls
        if record.levelno >= logging.ERROR:
            self.node.get_logger().error(msg)
        else:
            self.node.get_logger().warning(msg)


class RecorderNode(common.ConfiguredNode):
    config_class = RecorderNodeConfig

    def __init__(self, node_name: str = "recorder_node", **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: RecorderNodeConfig = self.config
        self._log_handler = _RosLogHandler(self)
        logging.getLogger("vla_robot.data").addHandler(self._log_handler)
        self.events_pub = self.create_publisher(String, RECORDER_EVENTS, common.EVENT_QOS)
        # joint_states in the arm's names and units -> the policy's (None: recorded as they come)
        self.description = load_description(cfg.robot_description) if cfg.robot_description else None
        names = cfg.joint_names or (self.description.names() if self.description else None)
        self.session = RecordingSession(self._make_recorder, cfg.cameras,
                                        joint_names=names, default_task=cfg.task,
                                        on_saved=self._on_saved)
        streams = ReentrantCallbackGroup()
        events = MutuallyExclusiveCallbackGroup()  # start/save/discard in order
        for cam in cfg.cameras:
            self.create_subscription(Image, common.image_topic(cam), lambda m, c=cam: self._on_image(c, m),
                                     common.IMAGE_QOS, callback_group=streams)
        self.create_subscription(JointState, common.JOINT_STATES, self._on_joint_state, common.STATE_QOS,
                                 callback_group=streams)
        # The policy node publishes a chunk and the raw action before the command of the same tick;
        # these subscriptions come first so that an executor serving several ready messages at once
        # (in subscription order) hands them over before the command. Records need no such order.
        self.create_subscription(JointTrajectory, common.POLICY_CHUNK, self._on_chunk, common.COMMAND_QOS,
                                 callback_group=events)
        self.create_subscription(UInt8MultiArray, common.POLICY_RECORD, self._on_record, common.RECORD_QOS,
                                 callback_group=events)
        self.create_subscription(JointState, common.POLICY_ACTION, self._on_policy_action, common.STATE_QOS,
                                 callback_group=events)
        self.create_subscription(JointTrajectory, common.ARM_COMMAND, self._on_command, common.COMMAND_QOS,
                                 callback_group=events)
        self.create_subscription(String, common.EPISODE_EVENTS, self._on_event, common.EPISODE_EVENT_QOS,
                                 callback_group=events)
        self.diagnostics = common.Diagnostics(self)
        self.diagnostics.extra = self._diag
        self.get_logger().info(f"recording into {cfg.root} (cameras {', '.join(cfg.cameras)})")

    # --- message in -> session call ---------------------------------------------------------------
    def _make_recorder(self, schema):
        from vla_robot.data.recorder import Recorder

        cfg: RecorderNodeConfig = self.config
        rec = Recorder(cfg.root, schema, repo_id=cfg.repo_id, robot_type=cfg.robot_type, config=cfg.recorder)
        self.get_logger().info(f"dataset {cfg.root}: {rec.num_episodes} episode(s) already saved"
                               + (f"; {rec.recovery.describe()}" if rec.recovery and rec.recovery.changed else ""))
        return rec

    def _on_image(self, cam: str, msg: Image) -> None:
        try:
            image, stamp = convert.msg_to_image(msg)
        except ValueError as e:
            self.get_logger().warning(f"camera {cam}: {e}", throttle_duration_sec=5.0)
            return
        self.session.on_image(cam, image, stamp)

    def _on_joint_state(self, msg: JointState) -> None:
        # A joint state the recording cannot use is dropped with a warning: raising here would end the
        # executor thread that also carries the cameras.
        try:
            if self.description is None:
                q, _, stamp = convert.msg_to_joint_state(msg)
                self.session.on_joint_state(list(msg.name), q, stamp, time.monotonic())
            else:
                q, _, stamp = convert.msg_to_joint_state(msg, description=self.description)
                self.session.on_joint_state(self.description.names(), q, stamp, time.monotonic())
        except ValueError as e:
            self.get_logger().warning(f"joint state not recorded: {e}", throttle_duration_sec=5.0)

    def _on_policy_action(self, msg: JointState) -> None:
        q, _, _ = convert.msg_to_joint_state(msg, self.session.joint_names)
        self.session.on_policy_action(q)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _on_chunk(self, msg: JointTrajectory) -> None:
        fid = msg.header.frame_id  # "v<version>/c<chunk id>"
        try:
            version, chunk = fid.split("/")
            self.session.on_chunk(int(chunk[1:]), int(version[1:]), convert.from_stamp(msg.header.stamp),
                                  time.monotonic())
        except ValueError:
            self.get_logger().warning(f"policy chunk with unexpected frame_id {fid!r}; expected v<version>/c<id>",
                                      throttle_duration_sec=5.0)

    def _on_record(self, msg: UInt8MultiArray) -> None:
        try:
            chunk = convert.msg_to_record(msg)
        except ValueError as e:
            self.get_logger().error(f"on-policy record not kept: {e}", throttle_duration_sec=5.0)
            return
        self.session.on_record(chunk)

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            q, stamp, source = convert.msg_to_command(msg, self.session.joint_names)
        except ValueError as e:
            self.get_logger().warning(f"arm command not recorded: {e}", throttle_duration_sec=5.0)
            return
        self.session.on_command(q, stamp, source, self._now(), chunk=convert.command_chunk(msg.header.frame_id))

    def _on_event(self, msg: String) -> None:
        try:
            self.session.on_event(convert.msg_to_event(msg))
        except (ValueError, RuntimeError) as e:
            self.get_logger().error(f"episode event not handled: {e}")

    def _on_saved(self, info: dict) -> None:
        if info["type"] == "saved":
            self.get_logger().info(f"episode {info['episode_index']} saved ({info['label']}, {info['length']} frames, "
                                   f"{info['dropped_frames']} dropped, durable in {info['seconds_to_durable']:.2f} s)")
        self.events_pub.publish(convert.event_to_msg(info))

    def _diag(self):
        rec = self.session.recorder
        if rec is None:
            return common.OK, "waiting for the first episode", {}
        s = rec.stats
        level = common.WARN if s.episode_dropped else common.OK
        return level, f"{s.episodes_saved} episodes saved", {
            "episodes_saved": s.episodes_saved, "frames_written": s.frames_written, "frames_dropped": s.frames_dropped,
            "episode_frames": s.episode_frames, "episode_dropped": s.episode_dropped, "backlog": s.pending,
            "last_durable_s": f"{s.last_durable_s:.3f}", "records_outside_episodes": self.session.records_outside,
        }

    def close(self) -> None:
        logging.getLogger("vla_robot.data").removeHandler(self._log_handler)
        self.session.close()


class SimExpertTeleop:
    """The twin's scripted expert as the operator (record --sim): on each new joint state while an
    episode runs it asks the twin node's env for ``expert_action()`` and publishes it on
    ``arm/command`` with source ``teleop``, through a SafetyFilter on the robot's limits as every arm
    command (no slow ramp: the expert's targets are already a step from the measured arm). Needs the
    twin node in the same process."""

    def __init__(self, node: Node, twin_node):
        self.node = node
        self.twin = twin_node
        self.names = list(twin_node.names)
        self.dt = twin_node.dt
        self.running = False
        self._last = -1.0
        self.safety = common.safety_filter(twin_node.config.robot, SafetyConfig(ramp_velocity_scale=1.0))
        self._filtering = False  # reset from the measured arm at each episode's first command
        cb = MutuallyExclusiveCallbackGroup()
        self.pub = node.create_publisher(JointTrajectory, common.ARM_COMMAND, common.COMMAND_QOS)
        node.create_subscription(JointState, common.JOINT_STATES, self._on_js, common.STATE_QOS, callback_group=cb)
        node.create_subscription(String, common.EPISODE_EVENTS, self._on_event, common.EVENT_QOS, callback_group=cb)

    def _on_event(self, msg: String) -> None:
        ev = convert.msg_to_event(msg)
        if ev["type"] == "start":
            self.running, self._filtering = True, False
        elif ev["type"] in ("end", "save", "discard", "reset"):
            self.running = False

    def _on_js(self, msg: JointState) -> None:
        stamp = convert.from_stamp(msg.header.stamp)
        if not self.running or stamp <= self._last:
            return
        self._last = stamp
        q = self.twin._env_thread.submit(self.twin.env.expert_action).result()
        if not self._filtering:
            self.safety.reset(convert.msg_to_joint_state(msg, self.names)[0])
            self._filtering = True
        q = self.safety.filter(q, self.dt)
        self.pub.publish(convert.command_to_msg(q, self.names, stamp, self.dt, source="teleop"))


NODE_CLASS = RecorderNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(RecorderNode, args)


if __name__ == "__main__":
    main()
