"""twin_node: the MuJoCo twin on the ROS graph.

``sim`` mode — the twin *is* the robot: it publishes ``cameras/<cam>/image_raw`` (+ latched
``camera_info``), ``joint_states`` and ``twin/success`` on the same topics and QoS as the real
camera and arm nodes, takes ``arm/command``, and resets on the episode manager's ``reset`` event
(answering ``twin/events`` ``reset_done`` with the instruction and start condition). It steps once
per command (lockstep: the sim waits for the policy), at most ``realtime_factor`` × real time
(0 = as fast as commands come), and with the last target when no command comes for
``hold_timeout_s``. Stamps are sim time: the wall time at start plus steps × dt.

``mirror`` mode — real ``joint_states`` drive the twin's joints; it publishes the twin's camera
views on ``twin/cameras/<cam>/image_raw`` and the per-joint divergence (commanded - measured) on
``twin/divergence``.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_robot.nodes import common, convert
from vla_robot.nodes.config import TwinNodeConfig


class TwinNode(common.ConfiguredNode):
    config_class = TwinNodeConfig

    def __init__(self, node_name: str = "twin_node", **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: TwinNodeConfig = self.config
        from vla_robot.twin.env import make_env

        # MuJoCo's EGL context belongs to the thread that made it: one thread owns the env.
        self._env_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin_env")
        self._make_env = lambda task: make_env(
            task=task, robot=cfg.robot, seed=cfg.seed, image_size=tuple(cfg.image_size), cubes=cfg.cubes,
            cameras=tuple(cfg.cameras), control_hz=cfg.control_hz, randomization=cfg.randomization,
        )
        self.task = cfg.task
        self.env = self._env_thread.submit(self._make_env, cfg.task).result()
        self._envs = {cfg.task: self.env}  # one env per task, built when an episode first asks for it
        self.names = list(self.env.robot.joint_names)
        self.dt = 1.0 / cfg.control_hz
        self._t0 = time.time()
        self.steps_total = 0
        self._target: np.ndarray | None = None
        self._last_step_wall = time.monotonic()
        self._episode = -1
        group = MutuallyExclusiveCallbackGroup()  # the env is stepped by one callback at a time
        prefix = "twin/" if cfg.mode == "mirror" else ""
        self.image_pubs = {c: self.create_publisher(Image, prefix + common.image_topic(c), common.IMAGE_QOS)
                           for c in cfg.cameras}
        self.info_pubs = {c: self.create_publisher(CameraInfo, prefix + common.camera_info_topic(c), common.LATCHED_QOS)
                          for c in cfg.cameras}
        if cfg.mode == "sim":
            self.js_pub = self.create_publisher(JointState, common.JOINT_STATES, common.STATE_QOS)
            self.success_pub = self.create_publisher(Bool, common.TWIN_SUCCESS, common.STATE_QOS)
            self.events_pub = self.create_publisher(String, common.TWIN_EVENTS, common.EVENT_QOS)
            self.create_subscription(JointTrajectory, common.ARM_COMMAND, self._on_command, common.COMMAND_QOS,
                                     callback_group=group)
            self.create_subscription(String, common.EPISODE_EVENTS, self._on_episode_event, common.EVENT_QOS,
                                     callback_group=group)
            self.create_timer(min(cfg.hold_timeout_s, 0.1), self._on_hold_timer, callback_group=group)
            self._run(self.env.reset, seed=cfg.seed)
            self._target = self._run(self.env.joint_positions)
            self._publish_camera_info()
            self._publish_observation()
        else:
            self.div_pub = self.create_publisher(Float64MultiArray, common.TWIN_DIVERGENCE, common.STATE_QOS)
            self.create_subscription(JointState, common.JOINT_STATES, self._on_real_joint_state, common.STATE_QOS,
                                     callback_group=group)
            self.create_subscription(JointTrajectory, common.ARM_COMMAND, self._on_command_mirror,
                                     common.COMMAND_QOS, callback_group=group)
            self._run(self.env.reset, seed=cfg.seed)
            self._publish_camera_info()
        self.diagnostics = common.Diagnostics(self)
        self.mon_cmd = self.diagnostics.monitor("commands", max(1.0, 10 * self.dt))
        self.diagnostics.extra = lambda: (common.OK, cfg.mode, {
            "steps": self.steps_total, "episode": self._episode, "sim_time": f"{self.sim_time():.3f}",
            "realtime_factor": cfg.realtime_factor,
        })
        self.get_logger().info(
            f"twin ({cfg.mode}): {cfg.robot}, task {cfg.task}, cameras {cfg.cameras} at {cfg.image_size}, "
            f"{cfg.control_hz:g} Hz, realtime_factor {cfg.realtime_factor:g}"
        )

    # --- time -----------------------------------------------------------------------------------
    def sim_time(self) -> float:
        return self._t0 + self.steps_total * self.dt

    # --- sim mode -------------------------------------------------------------------------------
    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            q, _, _ = convert.msg_to_command(msg, self.names)
        except ValueError as e:
            self.get_logger().warning(f"dropping a bad arm command: {e}", throttle_duration_sec=5.0)
            return
        self.mon_cmd.tick()
        self._target = q
        self._step()

    def _on_hold_timer(self) -> None:
        if time.monotonic() - self._last_step_wall >= self.config.hold_timeout_s:
            self._step()

    def _step(self) -> None:
        f = self.config.realtime_factor
        if f > 0:  # pace: one step per dt / f wall seconds at most
            wait = self._last_step_wall + self.dt / f - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._run(self.env.step, self._target)
        self.steps_total += 1
        self._last_step_wall = time.monotonic()
        self._publish_observation()

    def _on_episode_event(self, msg: String) -> None:
        try:
            ev = convert.msg_to_event(msg)
        except ValueError as e:
            self.get_logger().warning(f"ignoring a bad episode event: {e}")
            return
        if ev["type"] != "reset":
            return
        start = ev.get("start")
        try:
            task = ev.get("task") or self.config.task

            def reset():
                if task not in self._envs:
                    self._envs[task] = self._make_env(task)
                self.env, self.task = self._envs[task], task
                self.env.reset(seed=ev.get("seed"), start=start)
                return self.env.joint_positions(), {
                    "type": "reset_done", "episode": ev.get("episode"), "instruction": self.env.instruction,
                    "start_condition": self.env.start_condition, "max_steps": self.env.max_steps,
                    "task": task}

            self._target, info = self._run(reset)
            self.steps_total += 1  # the reset takes one tick of sim time, so stamps stay increasing
            info["stamp"] = self.sim_time()  # the stamp of the reset scene's observation
        except (ValueError, TypeError, KeyError) as e:
            self.get_logger().error(f"reset of episode {ev.get('episode')} failed: {e}")
            return
        self._episode = ev.get("episode", -1)
        self._last_step_wall = time.monotonic()
        self._publish_observation()  # the new scene first, so every node has seen it when the episode starts
        self.events_pub.publish(convert.event_to_msg(info))

    def _publish_observation(self) -> None:
        obs, success, dq = self._run(lambda: (self.env.observation(), bool(self.env.success()),
                                              self.env.joint_velocities()))
        stamp = self.sim_time()
        for cam, img in obs["images"].items():
            if cam in self.image_pubs:
                self.image_pubs[cam].publish(convert.image_to_msg(img, stamp, frame_id=f"{cam}_optical"))
        self.success_pub.publish(Bool(data=success))
        self.js_pub.publish(convert.joint_state_to_msg(self.names, obs["state"], stamp, velocity=dq))

    def _publish_camera_info(self) -> None:
        h, w = self.config.image_size
        for cam, pub in self.info_pubs.items():
            k = self._run(self.env.camera_matrix, cam)
            pub.publish(convert.camera_info_msg(w, h, time.time(), frame_id=f"{cam}_optical", k=k))

    # --- mirror mode ----------------------------------------------------------------------------
    def _on_command_mirror(self, msg: JointTrajectory) -> None:
        try:
            self._target = convert.msg_to_command(msg, self.names)[0]
        except ValueError:
            pass

    def _on_real_joint_state(self, msg: JointState) -> None:
        try:
            q, dq, stamp = convert.msg_to_joint_state(msg, self.names)
        except ValueError as e:
            self.get_logger().warning(f"mirror: dropping a bad joint state: {e}", throttle_duration_sec=5.0)
            return
        def mirror():
            self.env.set_joint_state(q, dq)
            return self.env.render()

        images = self._run(mirror)
        self.steps_total += 1
        for cam, img in images.items():
            if cam in self.image_pubs:
                self.image_pubs[cam].publish(convert.image_to_msg(img, stamp, frame_id=f"{cam}_optical"))
        if self._target is not None:
            div = Float64MultiArray()
            div.data = (self._target - q).tolist()
            self.div_pub.publish(div)

    def _run(self, fn, *args, **kwargs):
        """Run ``fn`` on the env's own thread and return its result."""
        return self._env_thread.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        try:
            for env in self._envs.values():
                self._run(env.close)
        finally:
            self._env_thread.shutdown(wait=True)


NODE_CLASS = TwinNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(TwinNode, args)


if __name__ == "__main__":
    main()
