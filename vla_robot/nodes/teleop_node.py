"""teleop_node: an operator drives the arm — keyboard (in a terminal, no display needed), gamepad
(evdev) or a lerobot leader arm — and can take over from the policy at any time (intervention).

Publishes ``teleop/command`` (JointTrajectory, frame_id ``teleop``) at ``rate_hz`` while engaged,
and ``teleop/intervention`` (Bool, latched): the policy node then forwards the operator's commands
through its safety filter instead of the policy's, and the recorder marks those frames. In
record_demos and the twin graph the command topic is remapped straight to ``arm/command``, so every
command teleop publishes passes its own SafetyFilter first (limits from ``safety``; the ``h`` key
ramps home, it does not jump). The filter starts from the measured arm each time the operator takes
over; behind policy_node a second filter sees only commands already within the limits.

Keys (terminal, or std_msgs/String on ``teleop/keys`` for remote/scripted use)::

    space  take over / hand back          1..9  select a joint
    w / +  move the joint up by `step`    s / -  move it down
    g      open / close the gripper       h      go to the home pose
    e      E-STOP (latched on ``estop``; release it from the operator console or with
           ``ros2 topic pub --once /estop std_msgs/msg/Bool "{data: false}"``)

While the e-stop is latched (from anywhere) the node sends nothing and lets go of the arm: after the
release the operator takes over again explicitly.
"""
from __future__ import annotations

import os
import select
import struct
import sys
import threading

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory

from vla_robot.nodes import common, convert
from vla_robot.nodes.config import TeleopNodeConfig
from vla_robot.twin.robots import RobotSpec, robot_spec


class KeyboardTeleop:
    """Key presses -> a joint target (ROS-free). ``engaged`` says whether the operator drives."""

    def __init__(self, spec: RobotSpec, step: float):
        self.spec = spec
        self.step = step
        self.joint = 0
        self.target: np.ndarray | None = None
        self.engaged = False

    def sync(self, q: np.ndarray) -> None:
        """Follow the measured arm while not engaged, so taking over starts where the arm is."""
        if not self.engaged:
            self.target = np.asarray(q, dtype=np.float64).copy()

    def key(self, k: str) -> str:
        """Apply one key; returns what it did (for the log)."""
        if k == " ":
            if self.target is None:
                return "no joint state yet: cannot take over"
            self.engaged = not self.engaged
            return "operator drives" if self.engaged else "handed back"
        if k.isdigit() and k != "0":
            j = int(k) - 1
            if j >= self.spec.n_joints:
                return f"no joint {k}: this arm has {self.spec.n_joints}"
            self.joint = j
            return f"joint {self.spec.joint_names[j]}"
        if self.target is None:
            return "no joint state yet"
        if k in ("w", "+", "="):
            self._move(self.joint, +self.step)
        elif k in ("s", "-"):
            self._move(self.joint, -self.step)
        elif k == "g":
            g = self.spec.gripper_index
            mid = 0.5 * (self.spec.gripper_open + self.spec.gripper_closed)
            opened = (self.target[g] - mid) * (self.spec.gripper_open - mid) > 0
            self.target[g] = self.spec.gripper_closed if opened else self.spec.gripper_open
        elif k == "h":
            self.target = self.spec.home.copy()
        else:
            return f"unknown key {k!r}"
        return f"target {np.round(self.target, 3).tolist()}"

    def _move(self, j: int, delta: float) -> None:
        self.target[j] = float(np.clip(self.target[j] + delta, self.spec.lower[j], self.spec.upper[j]))


class TeleopNode(common.ConfiguredNode):
    config_class = TeleopNodeConfig
    #: what passes the safety filter before it is published (tests/test_arm_safety.py)
    ARM_SAFETY = {common.TELEOP_COMMAND: "safety"}

    def __init__(self, node_name: str = "teleop_node", *, use_terminal: bool = True, **kwargs):
        super().__init__(node_name, **kwargs)
        cfg: TeleopNodeConfig = self.config
        self.spec = robot_spec(cfg.robot)
        self.names = list(self.spec.joint_names)
        self.keyboard = KeyboardTeleop(self.spec, cfg.step)
        self._lock = threading.Lock()
        self._stamp = 0.0
        self._measured: np.ndarray | None = None
        self.safety = common.safety_filter(cfg.robot, cfg.safety)
        self._filtering = False  # the filter's state follows what was published since the last take-over
        self.estopped = False
        self.leader = None
        self.gamepad = None
        if cfg.device == "leader":
            from vla_robot.drivers.base import make_arm

            self.leader = make_arm("lerobot", cfg.leader)
            self.leader.connect()
        elif cfg.device == "gamepad":
            self.gamepad = _open_gamepad(cfg.gamepad_path)
        # the inputs and the timer share state only under self._lock; one group for all would let the
        # timer (a leader-arm read every tick) starve the joint states and keys (see arm_node)
        inputs = MutuallyExclusiveCallbackGroup()
        self.command_pub = self.create_publisher(JointTrajectory, common.TELEOP_COMMAND, common.COMMAND_QOS)
        self.intervention_pub = self.create_publisher(Bool, common.TELEOP_INTERVENTION, common.LATCHED_QOS)
        self.intervention_pub.publish(Bool(data=False))
        self.estop_pub = self.create_publisher(Bool, common.ESTOP, common.LATCHED_QOS)
        common.subscribe_estop(self, self._on_estop, inputs)
        self.create_subscription(JointState, common.JOINT_STATES, self._on_joint_state, common.STATE_QOS,
                                 callback_group=inputs)
        self.create_subscription(String, common.TELEOP_KEYS, self._on_keys, common.EVENT_QOS, callback_group=inputs)
        self.create_timer(1.0 / cfg.rate_hz, self._on_timer, callback_group=MutuallyExclusiveCallbackGroup())
        self._stop = threading.Event()
        self._tty_thread = None
        if use_terminal and cfg.device == "keyboard" and sys.stdin is not None and sys.stdin.isatty():
            self._tty_thread = threading.Thread(target=self._read_terminal, daemon=True, name="teleop_keys")
            self._tty_thread.start()
        self.get_logger().info(
            f"teleop: {cfg.device}" + ("" if self._tty_thread or cfg.device != "keyboard"
                                       else " (no terminal on stdin: keys only from the teleop/keys topic)")
        )

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, _, stamp = convert.msg_to_joint_state(msg, self.names)
        except ValueError:
            return
        with self._lock:
            self._stamp = stamp
            self._measured = q
            self.keyboard.sync(q)

    def _on_keys(self, msg: String) -> None:
        for k in msg.data:
            self.press(k)

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if bool(msg.data) == self.estopped:
                return
            self.estopped = bool(msg.data)
            was = self.keyboard.engaged
            self.keyboard.engaged = False  # after a release the operator takes over again, explicitly
        if self.estopped:
            self.get_logger().error("E-STOP: teleop sends nothing until it is released")
            if was:
                self.intervention_pub.publish(Bool(data=False))
        else:
            self.get_logger().warning("e-stop released")

    def press(self, k: str) -> None:
        if k == "e":
            self.estop_pub.publish(Bool(data=True))
            self.get_logger().error("key 'e': E-STOP")
            return
        with self._lock:
            if self.estopped and k == " ":
                self.get_logger().warning("key ' ': the e-stop is latched; release it first")
                return
            was = self.keyboard.engaged
            what = self.keyboard.key(k)
            now = self.keyboard.engaged
        self.get_logger().info(f"key {k!r}: {what}")
        if was != now:
            self.intervention_pub.publish(Bool(data=now))

    def _on_timer(self) -> None:
        if self.leader is not None:
            try:
                q, _, _ = self.leader.read()
            except Exception as e:  # noqa: BLE001 - a flaky leader must not stop the node
                self.get_logger().warning(f"leader arm: {e}", throttle_duration_sec=5.0)
                return
            with self._lock:
                self.keyboard.target = np.asarray(q, dtype=np.float64)
        if self.gamepad is not None:
            self._poll_gamepad()
        with self._lock:
            if self.estopped or (not self.keyboard.engaged and self.leader is None):
                self._filtering = False  # the next take-over starts from the measured arm
                return
            command = self._safe(self.keyboard.target)
            stamp = self._stamp
        if command is not None:
            self.command_pub.publish(
                convert.command_to_msg(command, self.names, stamp, 1.0 / self.config.rate_hz, source="teleop")
            )

    def _safe(self, target: np.ndarray | None) -> np.ndarray | None:
        """The filtered command towards ``target`` for this tick (None until the arm has been measured)."""
        if target is None:
            return None
        if not self._filtering:
            if self._measured is None:
                return None  # the filter must start where the arm is
            self.safety.reset(self._measured)
            self._filtering = True
        return self.safety.filter(target, 1.0 / self.config.rate_hz)

    def _poll_gamepad(self) -> None:  # pragma: no cover - needs a gamepad
        for etype, code, value in self.gamepad.events():
            if etype == 1 and value == 1:  # EV_KEY press: A, B, Y
                key = {304: " ", 305: "g", 307: "h"}.get(code)
                if key:
                    self.press(key)
            elif etype == 3:  # EV_ABS: the two sticks drive joints 1..4
                axis = {0: 0, 1: 1, 3: 2, 4: 3}.get(code)
                if axis is not None and abs(value) > 8000:
                    sign = float(np.sign(value)) * (-1.0 if code in (1, 4) else 1.0)
                    with self._lock:
                        if self.keyboard.target is not None:
                            self.keyboard._move(axis, self.config.step * sign)

    def _read_terminal(self) -> None:  # pragma: no cover - needs a terminal
        import termios
        import tty

        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while not self._stop.is_set():
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    self.press(os.read(fd, 1).decode(errors="ignore"))
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    def close(self) -> None:
        self._stop.set()
        if self.leader is not None:
            self.leader.close()
        if self.gamepad is not None:
            self.gamepad.close()


class _Gamepad:  # pragma: no cover - needs a gamepad
    """A Linux evdev device read without extra packages: struct input_event from /dev/input/event*."""

    _EVENT = struct.Struct("llHHi")

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def events(self):
        while True:
            try:
                data = os.read(self.fd, self._EVENT.size * 64)
            except BlockingIOError:
                return
            if not data:
                return
            for i in range(0, len(data) - self._EVENT.size + 1, self._EVENT.size):
                _, _, etype, code, value = self._EVENT.unpack_from(data, i)
                yield etype, code, value

    def close(self) -> None:
        os.close(self.fd)


def _open_gamepad(path: str) -> _Gamepad:  # pragma: no cover - needs a gamepad
    import glob

    paths = [path] if path else sorted(glob.glob("/dev/input/by-id/*-event-joystick"))
    if not paths:
        raise RuntimeError("no gamepad found under /dev/input/by-id/*-event-joystick; set gamepad_path")
    return _Gamepad(paths[0])


NODE_CLASS = TeleopNode


def main(args=None) -> None:
    from vla_robot.nodes.runner import run_single_node

    run_single_node(TeleopNode, args)


if __name__ == "__main__":
    main()
