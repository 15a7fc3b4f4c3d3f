"""policy_node: a thin shell around vla_robot.control.ChunkController.

In: ``cameras/<cam>/image_raw`` (best effort), ``joint_states``, ``teleop/command`` and
``teleop/intervention`` (the operator takes over: teleop commands pass through the same safety
filter), ``episode/event`` (drive between ``start`` and ``end``), ``estop`` (latched Bool).
Out: ``arm/command`` (the only arm commander while the policy drives; header.frame_id says
policy / teleop / hold / estop; one target per tick, in the policy's joint names), ``policy/chunk`` (each chunk as a JointTrajectory, stamped with
the observation it was computed from), ``policy/action`` (raw action per tick), ``policy/record``
(rl, with ``return_tokens``: each chunk's on-policy record, vla_robot.data.records: the observation
exactly as sent, the options, tokens, log-probs, version, the server's metadata), ``policy/events``
(fault, version), ``/diagnostics``.

A ros2_control arm (``arm_command.form`` trajectory or positions; ``auto`` picks them for a robot
description whose gripper has a controller of its own, see docs/ros2_control.md) also gets, on
``arm/joint_trajectory`` (bringup remaps it to the joint trajectory controller), the whole remaining
chunk as one JointTrajectory in the hardware's names and units, stamped ``now + arm_command.lead_s``
so the controller merges it on arrival (holds, teleop and e-stop: one point, stamped 0 = at once),
and the gripper's command on its own controller's topic (the description's).

Homing on that path: no arm_node runs there, and this node is the one commander of the arm, with its
safety filter, the joint states and the episode events already in hand; so it homes the arm itself
(the thinnest design: no new node, no change to the episode manager, which waits for the operator's
start as on the arm_node path). On ``reset`` it sends one slow trajectory home through a safety
filter at the ramp speed (drivers/ros2_control.py home_path), reports ``homed`` (error, seconds, stamp) on
``policy/events`` once every measured joint is within ``arm_command.home_tolerance`` of home, and drives an episode
only after that, whenever its ``start`` comes (a fault if home is not reached in time).

Ticks on a wall-clock timer at ``control.control_hz``, or — ``lockstep`` (sim) — once per new
observation from the twin, with the sim's stamps as the clock; the chunk request then blocks, so
the simulated world waits for the policy and runs as fast as the CPU allows.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String, UInt8MultiArray
from trajectory_msgs.msg import JointTrajectory

from vla_robot.config import ConfigError
from vla_robot.control.driver import Arrival, ChunkController
from vla_robot.data import records
from vla_robot.drivers.ros2_control import home_path, lead_ticks, remaining_plan
from vla_robot.nodes import common, convert
from vla_robot.nodes.config import PolicyNodeConfig
from vla_robot.robot.description import resolve_description
from vla_robot.serving.client import PolicyClient, PolicyTimeout, load_curve_key
from vla_robot.twin.robots import robot_spec


#: a policy trajectory's last point is held this much longer (s): the arm stays there either way, but a
#: trajectory near the end of its chunk that a loaded machine delays beyond the lead still ends in the
#: future, so the controller takes it instead of dropping it as late
HOLD_S = 0.5
#: the gripper's own controller takes these (robot description gripper.interface -> message type)
GRIPPER_MSG = {"position_controller": Float64MultiArray, "trajectory_controller": JointTrajectory}


class _LockstepClient:
    """A blocking Policy (``infer`` only) for lockstep sim, so the controller waits for each chunk:
    after a timeout it fails fast until the server answers again."""

    def __init__(self, client: PolicyClient, timeout_s: float, fast_fail_s: float = 0.05):
        self.client, self.timeout_s, self.fast_fail_s = client, timeout_s, fast_fail_s
        self.down = False

    def infer(self, observations, **options):
        try:
            replies = self.client.infer(observations, timeout_s=self.fast_fail_s if self.down else self.timeout_s, **options)
        except PolicyTimeout:
            self.down = True
            raise
        self.down = False
        return replies


class PolicyNode(common.ConfiguredNode, LifecycleNode):
    """A lifecycle node: ``active`` it may command the arm (during episodes); ``deactivate`` makes it
    stop at once, holding the arm where it stands (``ros2 lifecycle set /policy_node deactivate``).
    With ``autostart`` (default) it configures and activates itself."""

    config_class = PolicyNodeConfig
    #: what passes the safety filter before it is published: policy, hold and teleop commands alike
    #: (tests/test_arm_safety.py)
    ARM_SAFETY = {common.ARM_COMMAND: "controller.safety", "arm/joint_trajectory": "controller.safety"}

    def __init__(self, node_name: str = "policy_node", *, client=None, **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: PolicyNodeConfig = self.config
        self.spec = robot_spec(cfg.robot)
        # joint_states in the arm's names and units -> the policy's; limits and home from the same
        self.description = resolve_description(cfg.robot, cfg.robot_description)
        self.names = self.description.names()
        self.dt = cfg.control.dt
        self._own_client = client is None
        self.client = client or PolicyClient(cfg.policy_server, timeout_s=cfg.control.request_timeout_s,
                                             **self._curve_keys())
        self.policy_metadata = self._check_policy()
        options = {"mode": cfg.sampling, "return_tokens": cfg.return_tokens}
        if cfg.sampling == "sample":
            options["temperature"] = cfg.temperature
        ctrl_client = _LockstepClient(self.client, cfg.control.request_timeout_s) if cfg.lockstep else self.client
        self.controller = ChunkController(
            cfg.control, self.description.limits(), ctrl_client, request_options=options, clock=self._control_clock,
            fk=common.workspace_fk(cfg.robot, cfg.control.safety),  # the workspace box needs the robot's kinematics
        )
        self._lock = threading.Lock()  # guards the latest inputs
        self._tick_lock = threading.Lock()  # one tick at a time; a trigger during a tick is dropped
        self._images: dict[str, tuple[np.ndarray, float]] = {}
        self._q: tuple[np.ndarray, float] | None = None
        self._teleop: tuple[np.ndarray, float] | None = None
        self._intervention = False
        self._active = not cfg.wait_for_episode
        self._needs_reset = self._active
        self._instruction = cfg.instruction
        self._last_ticked_stamp = -1.0
        self._min_stamp = -1.0
        self._sim_now = 0.0
        self._faulted = False
        self._version = None
        self._chunk_id = 0
        self._episode_gen = 0  # +1 at every episode start and end: a tick's outputs belong to its episode
        self.ticks = 0

        inputs = ReentrantCallbackGroup()
        for cam in cfg.cameras:
            self.create_subscription(
                Image, common.image_topic(cam), lambda m, c=cam: self._on_image(c, m), common.IMAGE_QOS,
                callback_group=inputs,
            )
        self.create_subscription(JointState, common.JOINT_STATES, self._on_joint_state, common.STATE_QOS,
                                 callback_group=inputs)
        self.create_subscription(JointTrajectory, common.TELEOP_COMMAND, self._on_teleop, common.COMMAND_QOS,
                                 callback_group=inputs)
        self.create_subscription(Bool, common.TELEOP_INTERVENTION, self._on_intervention, common.LATCHED_QOS,
                                 callback_group=inputs)
        self.create_subscription(String, common.EPISODE_EVENTS, self._on_episode_event, common.EPISODE_EVENT_QOS,
                                 callback_group=inputs)
        common.subscribe_estop(self, self._on_estop, inputs)  # latched and plain `ros2 topic pub` publishers alike
        self.command_pub = self.create_publisher(JointTrajectory, common.ARM_COMMAND, common.COMMAND_QOS)
        self._init_trajectory_commands()
        self.chunk_pub = self.create_publisher(JointTrajectory, common.POLICY_CHUNK, common.COMMAND_QOS)
        self.action_pub = self.create_publisher(JointState, common.POLICY_ACTION, common.STATE_QOS)
        self.record_pub = self.create_publisher(UInt8MultiArray, common.POLICY_RECORD, common.RECORD_QOS)
        self.records_published = 0
        self.events_pub = self.create_publisher(String, common.POLICY_EVENTS, common.EVENT_QOS)

        self.diagnostics = common.Diagnostics(self)
        stale = max(0.5, 5 * self.dt)
        self.mon = {"joint_states": self.diagnostics.monitor("joint_states", stale)}
        for cam in cfg.cameras:
            self.mon[cam] = self.diagnostics.monitor(f"camera {cam}", stale)
        self.mon["chunks"] = self.diagnostics.monitor("chunks", cfg.control.watchdog.max_chunk_gap_s)
        self.diagnostics.extra = self._diag
        if not cfg.lockstep:
            self.create_timer(self.dt, self._on_timer, callback_group=MutuallyExclusiveCallbackGroup())
        self._lifecycle_active = False
        if cfg.autostart:
            self.trigger_configure()
            self.trigger_activate()
        self.get_logger().info(
            f"policy node: server {cfg.policy_server}, {cfg.control.control_hz:g} Hz, executor "
            f"{cfg.control.executor.kind}, cameras {cfg.cameras}, {'lockstep (sim)' if cfg.lockstep else 'timer'}"
        )

    def _curve_keys(self) -> dict:
        """The CurveZMQ keys for PolicyClient, checked now: a bad key file stops the node at start."""
        cfg = self.config
        if not cfg.curve_server_key:
            return {}
        for name, key, secret in (("curve_server_key", cfg.curve_server_key, False),
                                  ("curve_client_key", cfg.curve_client_key, True)):
            if key:
                try:
                    load_curve_key(key, secret=secret)
                except Exception as e:  # noqa: BLE001 - zmq.auth raises several kinds for a bad file
                    raise ConfigError(f"parameters of node '{self.get_name()}': '{name}' ({key}): {e}") from None
        return {"curve_server_key": cfg.curve_server_key, "curve_client_key": cfg.curve_client_key or None}

    def _check_policy(self) -> dict | None:
        """Ask the server what it serves and refuse a mismatch (camera order, action size) by name.

        A server that does not answer yet is fine: the watchdog holds the arm until it does."""
        cfg = self.config
        try:
            meta = self.client.metadata(timeout_s=1.0)
        except Exception as e:  # noqa: BLE001 - no server yet, or an old one: checked again by the watchdog
            self.get_logger().warning(f"policy server {cfg.policy_server} did not answer yet ({type(e).__name__}); "
                                      "the arm holds until it does")
            return None
        if list(meta.get("cameras", cfg.cameras)) != list(cfg.cameras):
            raise ConfigError(f"parameters of node '{self.get_name()}': 'cameras' is {cfg.cameras} but the policy at "
                              f"{cfg.policy_server} expects {meta['cameras']} (in that order)")
        if meta.get("action_dim", len(self.names)) != len(self.names):
            raise ConfigError(f"parameters of node '{self.get_name()}': robot '{cfg.robot}' has {len(self.names)} joints "
                              f"but the policy at {cfg.policy_server} outputs {meta['action_dim']} per action")
        self.get_logger().info(f"policy: {meta.get('model')} v{meta.get('version')}, chunk {meta.get('chunk_size')}, "
                               f"cameras {meta.get('cameras')}")
        return meta

    # --- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return TransitionCallbackReturn.SUCCESS  # client and controller are built in the constructor

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._tick_lock:
            self._lifecycle_active = True
            self._needs_reset = True  # resume from where the arm is, ramping
        self.get_logger().info("policy node active: it drives the arm during episodes")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._tick_lock:  # waits for a tick in progress, then no tick runs
            self._lifecycle_active = False
            q = self._q
        if q is not None and self._active:
            self.command_pub.publish(convert.command_to_msg(q[0], self.names, q[1], self.dt, source="hold"))
            if self.form != "point":
                self._send_now(q[0], "hold")
        self.get_logger().warning("policy node deactivated: holding the arm, not commanding it")
        return super().on_deactivate(state)

    # --- clock ----------------------------------------------------------------------------------
    def _control_clock(self) -> float:
        return self._sim_now if self.config.lockstep else time.time()

    # --- inputs ---------------------------------------------------------------------------------
    def _on_image(self, cam: str, msg: Image) -> None:
        try:
            img, stamp = convert.msg_to_image(msg)
        except ValueError as e:
            self.get_logger().warning(f"camera {cam}: dropping a bad image: {e}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._images[cam] = (img, stamp)
        self.mon[cam].tick(latency_s=max(0.0, time.time() - stamp) if not self.config.lockstep else None)
        if self.config.lockstep:
            self._maybe_lockstep_tick()

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, _, stamp = convert.msg_to_joint_state(msg, description=self.description)
        except ValueError as e:
            self.get_logger().warning(f"dropping a bad joint state: {e}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._q = (q, stamp)
        self.mon["joint_states"].tick()
        if self._homing is not None:
            self._check_homing(q)  # (and starts one that waited for this joint state)
        if self.config.lockstep:
            self._maybe_lockstep_tick()

    def _on_teleop(self, msg: JointTrajectory) -> None:
        try:
            q, stamp, _ = convert.msg_to_command(msg, self.names)
        except ValueError as e:
            self.get_logger().warning(f"dropping a bad teleop command: {e}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._teleop = (q, stamp)

    def _on_intervention(self, msg: Bool) -> None:
        with self._lock:
            self._intervention = bool(msg.data)
        self.get_logger().info("operator took over" if msg.data else "operator handed back to the policy")

    def _on_episode_event(self, msg: String) -> None:
        try:
            ev = convert.msg_to_event(msg)
        except ValueError as e:
            self.get_logger().warning(f"ignoring a bad episode event: {e}")
            return
        was_active = False
        with self._lock:
            if ev["type"] in ("start", "end", "reset", "done"):
                self._episode_gen += 1
            if ev["type"] == "start":
                self._active = True
                self._needs_reset = True
                self._faulted = False
                self._version = None  # announce the version again in this episode
                self._instruction = ev.get("instruction") or self.config.instruction
                # drive only on observations of the reset scene (the twin says which), never on older ones
                self._min_stamp = float(ev["stamp"]) if ev.get("stamp") is not None else -1.0
                self._last_ticked_stamp = -1.0
            elif ev["type"] in ("end", "reset", "done"):
                was_active, self._active = self._active, False
        if ev["type"] in ("end", "done") and was_active:
            self._stop_trajectory()  # the rest of the last plan is not the episode's any more
        if ev["type"] == "reset" and self.form != "point" and self.config.arm_command.home_on_reset:
            self._start_homing()
        if self.config.lockstep and ev["type"] == "start":
            self._maybe_lockstep_tick()

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            self.controller.estop("e-stop topic")
            self.get_logger().error("E-STOP: holding the arm until the e-stop is cleared")
            self._stop_trajectory(estop=True)
        elif self.controller.watchdog.estopped:
            self.controller.reset_estop(self._control_clock())
            self.get_logger().warning("e-stop cleared")

    # --- the tick -------------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self.tick(time.time())

    def _maybe_lockstep_tick(self) -> None:
        with self._lock:
            if not self._active or self._q is None:
                return
            stamp = self._q[1]
            if stamp <= self._last_ticked_stamp or stamp < self._min_stamp - 1e-6:
                return
            cams = self.config.cameras
            if any(c not in self._images or self._images[c][1] < stamp for c in cams):
                return  # wait until every camera's frame of this step is in
            self._last_ticked_stamp = stamp
        self._sim_now = stamp
        # wait for a tick in progress instead of dropping this one: in lockstep the twin steps only on our
        # command, so a dropped trigger (the first observation of an episode, while the last tick of the
        # one before still waits for its chunk) would stall the episode
        self.tick(stamp, wait=True)

    def tick(self, now: float, wait: bool = False) -> None:
        """One control tick; ``wait``: after a tick in progress (else a trigger during a tick is dropped)."""
        if not self._tick_lock.acquire(blocking=wait):
            return
        try:
            self._tick(now)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the node while it commands an arm
            self.get_logger().error(f"tick failed: {type(e).__name__}: {e}")
            self._report_fault(f"policy node error: {type(e).__name__}: {e}")
        finally:
            self._tick_lock.release()

    def _tick(self, now: float) -> None:
        with self._lock:
            if (not self._lifecycle_active or not self._active or self._q is None or self._homing is not None
                    or self._q[1] < self._min_stamp - 1e-6):
                return  # (while homing the arm is on its way home: the policy starts from there)
            q, q_stamp = self._q
            images = dict(self._images)
            teleop = self._teleop[0] if (self._intervention and self._teleop is not None) else None
            needs_reset, self._needs_reset = self._needs_reset, False
            instruction = self._instruction
            gen = self._episode_gen
        if needs_reset:
            self.controller.reset(q, now)
        cams = self.config.cameras
        obs_stamp = min([q_stamp] + [images[c][1] for c in cams if c in images]) if all(c in images for c in cams) else None

        def observation():
            return {
                "images": {c: images[c][0] for c in cams},
                "state": np.asarray(q, dtype=np.float32),
                "instruction": instruction,
            }

        r = self.controller.tick(now, obs_stamp, observation, teleop=teleop)
        with self._lock:
            if gen != self._episode_gen:
                # the episode ended while this tick waited for its chunk: its command, chunk and version
                # belong to no episode (published now they would move the arm of the next one, and
                # count the old version in it)
                return
        self.ticks += 1
        # chunks first, each stamped with its own observation: a recorder then knows the chunk
        # before the first command taken from it
        for arrival in r.arrivals:
            self._publish_chunk(arrival)
        ref = None
        if r.source == "policy" and r.chunk is not None:
            # announce the version that acts, not that of every arrival (a stale in-flight reply from
            # the previous version can arrive after a hot-swap and be dropped unexecuted)
            version = int(r.chunk.get("version", 0) or 0)
            if version != self._version:
                self._version = version
                self.events_pub.publish(convert.event_to_msg({"type": "version", "version": version}))
            if r.index is not None and not r.blended:
                cid = r.chunk.get("chunk_id")
                ref = (cid, r.index) if cid is not None else None
        if r.raw is not None and r.source == "policy":  # the raw action of this very command, before it
            self.action_pub.publish(convert.joint_state_to_msg(self.names, r.raw, q_stamp))
        self.command_pub.publish(
            convert.command_to_msg(r.command, self.names, q_stamp, self.dt, source=r.source, chunk=ref))
        if self.form != "point":
            self._send_trajectory(r, now, ref)
        if r.watchdog_hold:
            self._report_fault(f"watchdog: {r.reason}")

    # --- a ros2_control arm: trajectories, the gripper, homing -----------------------------------
    def _init_trajectory_commands(self) -> None:
        cfg = self.config.arm_command
        g = self.description.gripper
        self.form = cfg.form if cfg.form != "auto" else ("point" if g.interface == "with_arm" else "trajectory")
        self._lead = lead_ticks(cfg.lead_s, self.dt)
        # (started, give up at) on the monotonic clock while homing; started None: waiting for a joint state
        self._homing: tuple[float | None, float] | None = None
        self.homings = 0
        self.trajectory_pub = self.gripper_pub = None
        if self.form == "point":
            return
        self.trajectory_pub = self.create_publisher(JointTrajectory, "arm/joint_trajectory", common.COMMAND_QOS)
        if g.interface in GRIPPER_MSG:
            self.gripper_pub = self.create_publisher(GRIPPER_MSG[g.interface], g.topic, common.COMMAND_QOS)
        self.get_logger().info(f"arm commands: {self.form} to the joint trajectory controller, "
                               f"{self._lead} tick(s) ({self._lead * self.dt * 1000:.0f} ms) ahead; gripper "
                               f"{g.interface}" + (f" on {g.topic}" if self.gripper_pub else ""))

    def _send_trajectory(self, r, now: float, ref) -> None:
        """The controller's message for this tick: the remaining plan from ``now + lead``, or (hold,
        teleop, e-stop) this command at once."""
        if r.source != "policy":
            self._send_now(r.command, r.source)
            return
        plan = remaining_plan(self.controller, now, r.command)  # plan[k]: the command for now + k·dt
        lead = self._lead
        if len(plan) > lead + 1:  # from now + lead on; the controller keeps what it has until then
            points, stamp, start = plan[lead + 1:], now + lead * self.dt, plan[lead]
        else:  # the plan ends within the lead: the rest of it from arrival (stamp 0 is never late)
            points, stamp, start = (plan[1:] if len(plan) > 1 else plan), 0.0, None
        frame = "policy" if ref is None else f"policy/c{int(ref[0])}/s{int(ref[1])}"
        self.trajectory_pub.publish(convert.arm_trajectory_msg(
            points, self.dt, self.description, stamp, frame, start_q=start, velocities=self.form == "trajectory",
            hold_s=HOLD_S))
        self._send_gripper(r.command)

    def _send_now(self, q, source: str) -> None:
        """``q`` reached one control period after the controller gets it (stamp 0: never late, and it
        replaces the running trajectory at once)."""
        self.trajectory_pub.publish(convert.arm_trajectory_msg(
            np.asarray(q)[None], self.dt, self.description, 0.0, source, velocities=self.form == "trajectory"))
        self._send_gripper(q)

    def _stop_trajectory(self, estop: bool = False) -> None:
        """Stop what the controller still plays (the rest of a plan, a homing move) where the arm is.
        The e-stop also blocks episodes until the next reset has brought the arm home."""
        if self.form == "point":
            return
        with self._lock:
            q = self._q
            if estop and self._homing is not None:
                self._homing = (time.monotonic(), float("inf"))
        if q is not None:
            self._send_now(q[0], "estop" if estop else "hold")

    def _send_gripper(self, q) -> None:
        if self.gripper_pub is not None:
            self.gripper_pub.publish(convert.gripper_command_msg(q, self.description, self.dt))

    def _start_homing(self) -> None:
        """A slow trajectory home (stamp 0: from where the arm is, at once); done in :meth:`_check_homing`.
        Until then no episode drives the arm (a reset before the first joint state homes on that one)."""
        if not self._lifecycle_active or self.controller.watchdog.estopped:
            self.get_logger().warning("not homing: the node is deactivated or the e-stop is latched")
            return
        with self._lock:
            q = self._q
            self._homing = (None, float("inf")) if q is None else self._homing
        if q is None:
            return
        cfg = self.config
        path = home_path(self.description.limits(), cfg.control.safety, q[0], self.dt,
                         cfg.arm_command.home_timeout_s, fk=common.workspace_fk(cfg.robot, cfg.control.safety))
        self.trajectory_pub.publish(convert.arm_trajectory_msg(
            path, self.dt, self.description, 0.0, "reset", start_q=q[0], velocities=self.form == "trajectory"))
        self._send_gripper(self.description.home)
        t = time.monotonic()
        with self._lock:
            self._homing = (t, t + len(path) * self.dt + cfg.arm_command.home_timeout_s)
        self.homings += 1
        self.get_logger().info(f"homing the arm from {np.round(q[0], 3).tolist()} ({len(path) * self.dt:.1f} s)")

    def _check_homing(self, q: np.ndarray) -> None:
        """On each joint state while homing: home within tolerance (``homed``), or too late (a fault)."""
        err = float(np.max(np.abs(q - self.description.home)))
        now = time.monotonic()
        with self._lock:  # joint states come on several threads: one of them decides
            if self._homing is None or self._homing[1] == -np.inf:  # (-inf: being announced)
                return
            started, give_up = self._homing
            if started is None:  # the reset came before any joint state: home from this one
                outcome, self._homing = "start", (now, float("inf"))
            elif err <= self.config.arm_command.home_tolerance:
                outcome, self._homing = "homed", (started, -np.inf)
            elif now > give_up:  # said once; no episode drives until the arm is home (or the next reset)
                outcome, self._homing = "late", (started, float("inf"))
            else:
                return
        if outcome == "start":
            self._start_homing()
        elif outcome == "homed":  # announced before the first tick may drive
            self.get_logger().info(f"the arm is home (within {err:.3f})")
            self.events_pub.publish(convert.event_to_msg({"type": "homed", "error": err, "seconds": now - started,
                                                          "stamp": time.time()}))
            with self._lock:
                self._homing = None
        else:
            self._report_fault(f"homing: the arm is still {err:.3f} from home after {now - started:.1f} s "
                               f"(arm_command.home_tolerance {self.config.arm_command.home_tolerance})")

    def _publish_chunk(self, arrival: Arrival) -> None:
        reply, stamp = arrival.reply, arrival.obs_time
        self.mon["chunks"].tick(now=time.monotonic())
        self._chunk_id += 1
        reply["chunk_id"] = self._chunk_id  # the controller hands this reply back with each action from it
        version = int(reply.get("version", 0) or 0)
        try:
            traj = self.controller.trajectory(reply["actions"])
            self.chunk_pub.publish(convert.trajectory_to_msg(traj, stamp, frame_id=f"v{version}/c{self._chunk_id}"))
        except ValueError as e:
            self.get_logger().warning(f"chunk {self._chunk_id} not published: {e}", throttle_duration_sec=5.0)
        if self.config.return_tokens and reply.get("tokens") is not None and reply.get("logprobs") is not None:
            if self.policy_metadata is None:  # the server was not up when the node started
                self.policy_metadata = self._check_policy()
            chunk = records.make_chunk(reply, arrival.observation, arrival.options, self._chunk_id, stamp,
                                       self.policy_metadata)
            self.record_pub.publish(convert.record_to_msg(chunk))
            self.records_published += 1

    def _report_fault(self, reason: str) -> None:
        if self._faulted:
            return
        self._faulted = True
        self.get_logger().error(f"FAULT, holding the arm: {reason}")
        self.events_pub.publish(convert.event_to_msg({"type": "fault", "reason": reason}))

    def _diag(self):
        rep = self.controller.report()
        c = rep["controller"]
        level = common.ERROR if rep["estop"] else (common.WARN if self._faulted else common.OK)
        msg = f"e-stop: {rep['estop']}" if rep["estop"] else ("watchdog holding" if self._faulted else "ok")
        values = {
            "active": self._active,
            "lifecycle_active": self._lifecycle_active,
            "ticks": c["ticks"],
            "sources": c["sources"],
            "holds": c["holds"],
            "requests": c["requests"],
            "replies": c["replies"],
            "timeouts": c["timeouts"],
            "errors": c["errors"],
            "last_error": c["last_error"],
            "policy_version": self._version,
            "records_published": self.records_published,
            "watchdog_holds": rep["watchdog_holds"],
        }
        return level, msg, values

    def destroy_node(self):
        if getattr(self, "_own_client", False):
            self.client.close()
        return super().destroy_node()


NODE_CLASS = PolicyNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(PolicyNode, args)


if __name__ == "__main__":
    main()
