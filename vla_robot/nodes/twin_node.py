"""twin_node: the MuJoCo twin on the ROS graph.

``sim`` mode — the twin *is* the robot: it publishes ``cameras/<cam>/image_raw`` (+ latched
``camera_info``), ``joint_states`` and ``twin/success`` on the same topics and QoS as the real
camera and arm nodes, takes ``arm/command``, and resets on the episode manager's ``reset`` event
(answering ``twin/events`` ``reset_done`` with the instruction, start condition and the reset's
``run``, transient-local). It steps once per command (lockstep: the sim waits for the policy), at
most ``realtime_factor`` × real time (0 = as fast as commands come), and with the last target when
no command comes for ``hold_timeout_s``. Stamps are sim time: the wall time at start plus steps × dt.

``mirror`` mode — a :class:`vla_robot.twin.mirror.Mirror` of the real arm: real ``joint_states``
set the twin's joints, ``arm/command`` drives its dynamic shadow. Per joint state it publishes the
twin's camera views on ``twin/cameras/<cam>/image_raw`` (stamped with the joint state) and the
model's divergence on ``twin/divergence``: per joint, where the shadow went under the same commands
minus where the real arm was measured (rad).

``scene`` mode — the stand-in world of a rehearsal. camera_node and arm_node with backend ``twin``
in this same process are the hardware (one TwinSession, named by ``session``, stepped in real time);
this node does what the person at a robot does between episodes: on the manager's ``reset`` it
waits for the arm to come to rest (arm_node homes it), sets the scene to the requested start
condition (the session's env reset with that start; the arm back to its start pose) and publishes
``scene/ready`` (String JSON {episode, start_condition, start_id, instruction}, latched). It
publishes ``scene/success`` (Bool, the twin's success check of the current scene) at about 10 Hz.
Both are for a stand-in person only: the episode manager never reads them, and with reset_source
operator it waits for ``~/start``, as on a robot.

Episode events arrive on the transient-local ``episode/event``: a twin that starts after the
manager gets its history, and resets only to the newest reset of an episode not over yet
(nodes/episodes.py LatestReset). A start condition is a start-state id of the twin's task; a name
(``left``) stands for a fixed start state (:func:`start_state_id`).
"""
from __future__ import annotations

import json
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_robot.nodes import common, convert
from vla_robot.robot.description import resolve_description
from vla_robot.nodes.config import TwinNodeConfig
from vla_robot.nodes.episodes import LatestReset

SCENE_SUCCESS_HZ = 10.0
#: scene mode: the arm counts as at rest below this joint speed (rad/s) ...
SCENE_REST_SPEED = 0.05
#: ... and the scene is set up no sooner than this after the reset event (arm_node starts homing) ...
SCENE_MIN_WAIT_S = 0.5
#: ... and no later than this, at rest or not (an arm that never settles must not stall the session)
SCENE_MAX_WAIT_S = 10.0


def start_state_id(start) -> int | None:
    """The twin start-state id of a start condition: an id as it is, a name such as 'left' a fixed id
    (CRC-32 of the name), None a fresh random start."""
    if start is None:
        return None
    if isinstance(start, bool) or not isinstance(start, (int, str)):
        raise ValueError(f"a start condition is a start-state id (int >= 0) or a name, got {start!r}")
    if isinstance(start, str):
        return int(start) if start.isdigit() else zlib.crc32(start.encode()) % 2**31
    if start < 0:
        raise ValueError(f"a start-state id must be >= 0, got {start}")
    return start


class TwinNode(common.ConfiguredNode):
    config_class = TwinNodeConfig

    def __init__(self, node_name: str = "twin_node", **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: TwinNodeConfig = self.config
        self._episode = -1
        self.steps_total = 0
        self.dt = 1.0 / cfg.control_hz
        self._t0 = time.time()
        self._envs: dict = {}
        self._env_thread = None
        self._resets = LatestReset()
        group = MutuallyExclusiveCallbackGroup()  # the env is stepped by one callback at a time
        if cfg.mode == "scene":
            self._init_scene(group)
        else:
            self._init_env(group)
        self.diagnostics = common.Diagnostics(self)
        self.mon_cmd = self.diagnostics.monitor("commands", max(1.0, 10 * self.dt))
        self.diagnostics.extra = lambda: (common.OK, cfg.mode, {
            "steps": self.steps_total, "episode": self._episode, "sim_time": f"{self.sim_time():.3f}",
            "realtime_factor": cfg.realtime_factor,
        })
        self.get_logger().info(
            f"twin (scene): sets up the scene of twin session '{cfg.session}'" if cfg.mode == "scene" else
            f"twin ({cfg.mode}): {cfg.robot}, task {cfg.task}, cameras {cfg.cameras} at {cfg.image_size}, "
            f"{cfg.control_hz:g} Hz, realtime_factor {cfg.realtime_factor:g}"
        )

    def _subscribe_episode_events(self) -> None:
        # its own group: a history burst is taken at once, not between env steps
        self.create_subscription(String, common.EPISODE_EVENTS, self._on_episode_event, common.EPISODE_EVENT_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())

    def _init_env(self, group) -> None:
        cfg: TwinNodeConfig = self.config
        from vla_robot.twin.env import TwinEnv, twin_config

        # MuJoCo's EGL context belongs to the thread that made it: one thread owns the env.
        self._env_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin_env")
        self._twin_config = lambda task: twin_config(
            task=task, robot=cfg.robot, seed=cfg.seed, image_size=tuple(cfg.image_size), cubes=cfg.cubes,
            cameras=tuple(cfg.cameras), control_hz=cfg.control_hz, randomization=cfg.randomization,
        )
        self._make_env = lambda task: TwinEnv(self._twin_config(task))
        self.task = cfg.task
        if cfg.mode == "mirror":
            from vla_robot.twin.mirror import Mirror

            self.mirror = self._run(Mirror, self._twin_config(cfg.task))
            self.env = self.mirror.view  # what the twin cameras show
            # the real arm's joint_states, in its names and units -> the twin's
            self.description = resolve_description(cfg.robot, cfg.robot_description)
        else:
            self.env = self._run(self._make_env, cfg.task)
            self._envs = {cfg.task: self.env}  # one env per task, built when an episode first asks for it
        self.names = list(self.env.robot.joint_names)
        prefix = "twin/" if cfg.mode == "mirror" else ""
        self.image_pubs = {c: self.create_publisher(Image, prefix + common.image_topic(c), common.IMAGE_QOS)
                           for c in cfg.cameras}
        self.info_pubs = {c: self.create_publisher(CameraInfo, prefix + common.camera_info_topic(c), common.LATCHED_QOS)
                          for c in cfg.cameras}
        if cfg.mode == "sim":
            self._last_step_wall = time.monotonic()
            self.js_pub = self.create_publisher(JointState, common.JOINT_STATES, common.STATE_QOS)
            self.success_pub = self.create_publisher(Bool, common.TWIN_SUCCESS, common.STATE_QOS)
            self.events_pub = self.create_publisher(String, common.TWIN_EVENTS, common.EPISODE_EVENT_QOS)
            self.create_subscription(JointTrajectory, common.ARM_COMMAND, self._on_command, common.COMMAND_QOS,
                                     callback_group=group)
            self._subscribe_episode_events()
            self.create_timer(min(self.config.hold_timeout_s, 0.1), self._on_hold_timer, callback_group=group)
            self.create_timer(0.05, self._on_reset_timer, callback_group=group)
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
            self._publish_camera_info()

    def _init_scene(self, group) -> None:
        self._scene_reset: tuple[dict, float] | None = None  # (reset event, when it became current)
        self._no_session_said = False
        self.ready_pub = self.create_publisher(String, common.SCENE_READY, common.LATCHED_QOS)
        self.scene_success_pub = self.create_publisher(Bool, common.SCENE_SUCCESS, common.STATE_QOS)
        self._subscribe_episode_events()
        self.create_timer(0.05, self._on_scene_timer, callback_group=group)
        self.create_timer(1.0 / SCENE_SUCCESS_HZ, self._on_scene_success_timer, callback_group=group)

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
        self._resets.offer(ev)  # acted on by the reset timer, once a history burst is over

    def _on_reset_timer(self) -> None:
        ev = self._resets.take()
        if ev is not None:
            self._reset_sim(ev)

    def _reset_sim(self, ev: dict) -> None:
        try:
            start = start_state_id(ev.get("start"))
            task = ev.get("task") or self.config.task

            def reset():
                if task not in self._envs:
                    self._envs[task] = self._make_env(task)
                self.env, self.task = self._envs[task], task
                self.env.reset(seed=ev.get("seed"), start=start)
                return self.env.joint_positions(), {
                    "type": "reset_done", "episode": ev.get("episode"), "run": ev.get("run"),
                    "instruction": self.env.instruction, "start_condition": self.env.start_condition,
                    "max_steps": self.env.max_steps, "task": task}

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

    # --- scene mode -----------------------------------------------------------------------------
    def _session(self):
        from vla_robot.drivers.twin import find_session

        sess = find_session(self.config.session)
        if sess is None and not self._no_session_said:
            self._no_session_said = True
            self.get_logger().error(
                f"scene: no twin session '{self.config.session}' in this process; run twin_node in the process of "
                f"camera_node and arm_node whose backend is twin with session '{self.config.session}'")
        return sess

    def _on_scene_timer(self) -> None:
        ev = self._resets.take()
        now = time.monotonic()
        if ev is not None:
            self._scene_reset = (ev, now)
        if self._scene_reset is None:
            return
        ev, since = self._scene_reset
        sess = self._session()
        if sess is None or now - since < SCENE_MIN_WAIT_S:
            return
        with sess.lock:
            moving = float(np.abs(sess.env.joint_velocities()).max()) > SCENE_REST_SPEED
        if moving and now - since < SCENE_MAX_WAIT_S:
            return  # as a person would: wait until arm_node has brought the arm home
        self._scene_reset = None
        self._set_scene(sess, ev)

    def _set_scene(self, sess, ev: dict) -> None:
        try:
            start = start_state_id(ev.get("start"))
            sess.reset(seed=ev.get("seed"), start=start)
        except (ValueError, TypeError) as e:
            self.get_logger().error(f"scene: cannot set up episode {ev.get('episode')}: {e}")
            return
        with sess.lock:
            info = {"episode": ev.get("episode"), "start_condition": ev.get("start"),
                    "start_id": sess.env.start_condition, "instruction": sess.env.instruction}
        self._episode = ev.get("episode", -1)
        wanted = ev.get("instruction")
        if wanted and wanted != info["instruction"]:
            self.get_logger().warning(f"scene: episode {info['episode']}'s instruction is {wanted!r} but this scene's "
                                      f"task asks {info['instruction']!r}")
        self.ready_pub.publish(String(data=json.dumps(info)))
        self.get_logger().info(f"scene ready for episode {info['episode']}: start condition "
                               f"{info['start_condition']!r} (twin start {info['start_id']}), '{info['instruction']}'")

    def _on_scene_success_timer(self) -> None:
        sess = self._session()
        if sess is None:
            return
        with sess.lock:
            success = sess.env.start is not None and bool(sess.env.success())
        self.scene_success_pub.publish(Bool(data=success))

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
            self._run(self.mirror.command, convert.msg_to_command(msg, self.names)[0])
        except ValueError as e:
            self.get_logger().warning(f"mirror: dropping a bad arm command: {e}", throttle_duration_sec=5.0)
            return
        self.mon_cmd.tick()

    def _on_real_joint_state(self, msg: JointState) -> None:
        def follow(q, dq, stamp):
            self.mirror.update(q, dq, stamp)
            return self.mirror.render(t=stamp), self.mirror.divergence()

        try:
            q, dq, stamp = convert.msg_to_joint_state(msg, description=self.description)
            images, divergence = self._run(follow, q, dq, stamp)
        except ValueError as e:  # a malformed message, or a stamp older than the last one
            self.get_logger().warning(f"mirror: dropping a joint state: {e}", throttle_duration_sec=5.0)
            return
        self.steps_total += 1
        for cam, img in images.items():
            if cam in self.image_pubs:
                self.image_pubs[cam].publish(convert.image_to_msg(img, stamp, frame_id=f"{cam}_optical"))
        self.div_pub.publish(Float64MultiArray(data=divergence.joint_error.tolist()))

    def _run(self, fn, *args, **kwargs):
        """Run ``fn`` on the env's own thread and return its result."""
        return self._env_thread.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        if self._env_thread is None:  # scene mode: the session belongs to the camera and arm
            return
        try:
            for env in self._envs.values():
                self._run(env.close)
            if self.config.mode == "mirror":
                self._run(self.mirror.close)
        finally:
            self._env_thread.shutdown(wait=True)


NODE_CLASS = TwinNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(TwinNode, args)


if __name__ == "__main__":
    main()
