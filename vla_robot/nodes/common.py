"""What every node shares: typed parameters, QoS per stream, topic names, diagnostics.

A node is built from a config dataclass (vla_robot/nodes/config.py). Its parameters come from a
ROS 2 parameter file (``--params-file``) and overrides, exactly as ``ros2 launch`` passes them; the
node reads every parameter it was given, checks them with the typed loader (unknown keys and wrong
types are errors that name the key), and declares the rest with their defaults so ``ros2 param``
shows the whole config.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import Any, Callable, TypeVar

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from vla_robot.config import ConfigError, from_ros_parameters, to_ros_parameters

T = TypeVar("T")

# --- QoS, chosen per stream ---------------------------------------------------------------------
#: camera images: newest frame only matters; a late frame is worse than a lost one
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.BEST_EFFORT)
#: joint states: small, every one useful; reliable so plain subscribers with default QoS see them
STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: arm commands and chunks: reliable, only the newest matters
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
#: episode events, labels, faults: reliable and deep enough that none is lost in a burst
EVENT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
#: on-policy chunk records (rl): reliable, every one must reach the recorder; one per chunk (a few per
#: second), so 64 deep is seconds of slack for a slow subscriber without blocking the control tick
RECORD_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=64, reliability=ReliabilityPolicy.RELIABLE)
#: episode events (and the twin's reset reports): as EVENT_QOS, and a node that joins late still gets
#: the recent history. Every subscriber uses it: under ``ros2 launch`` nodes start at different times, and
#: a volatile subscriber that starts after the manager misses the first ``reset``. A subscriber must then
#: act only on what is still current (see nodes/episodes.py LatestReset).
EPISODE_EVENT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
#: latched state (e-stop, episode active, camera_info): late joiners get the last value
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

# --- topic names (relative: a namespace applies; remap them in bringup or on the command line) -----
JOINT_STATES = "joint_states"
ARM_COMMAND = "arm/command"  # JointTrajectory; remap to <controller>/joint_trajectory for ros2_control
POLICY_CHUNK = "policy/chunk"  # JointTrajectory, the whole chunk, for inspection
POLICY_ACTION = "policy/action"  # JointState, the raw policy action of each tick (before safety)
POLICY_RECORD = "policy/record"  # UInt8MultiArray: msgpack on-policy record of a chunk (rl; data/records.py)
POLICY_EVENTS = "policy/events"  # String JSON: fault, recovered
TELEOP_COMMAND = "teleop/command"  # JointTrajectory from the operator
TELEOP_INTERVENTION = "teleop/intervention"  # Bool, latched: the operator has taken over
TELEOP_KEYS = "teleop/keys"  # String: key presses for the teleop node from elsewhere (operator console, scripts)
EPISODE_EVENTS = "episode/event"  # String JSON: reset, start, end, save, discard, label_rejected, done
EPISODE_LABEL = "episode/label"  # String JSON {"episode": N, "label": success|failure|discard}: a person's label
TWIN_EVENTS = "twin/events"  # String JSON: reset_done (EPISODE_EVENT_QOS)
# The stand-in world (twin_node mode scene), for a stand-in person only; the episode manager never reads them.
SCENE_READY = "scene/ready"  # String JSON {episode, start_condition, start_id, instruction}, latched
SCENE_SUCCESS = "scene/success"  # Bool at ~10 Hz: the twin's success check of the current scene
TWIN_SUCCESS = "twin/success"  # Bool, every sim step: the task's success check
TWIN_DIVERGENCE = "twin/divergence"  # Float64MultiArray (mirror mode): per-joint shadow twin - measured (rad)
ESTOP = "estop"  # Bool, latched
DIAGNOSTICS = "/diagnostics"


def image_topic(camera: str) -> str:
    return f"cameras/{camera}/image_raw"


def camera_info_topic(camera: str) -> str:
    return f"cameras/{camera}/camera_info"


# --- the e-stop ---------------------------------------------------------------------------------
def subscribe_estop(node: Node, callback: Callable[[Any], None], callback_group=None) -> list:
    """Subscribe ``callback`` (std_msgs/Bool) to the e-stop so that *every* publisher reaches it.

    A plain ``ros2 topic pub /estop std_msgs/msg/Bool "{data: true}"`` offers reliable + VOLATILE;
    a TRANSIENT_LOCAL subscription does not match it and DDS drops its messages without a word. A
    VOLATILE subscription alone would match it, but a node that starts after the e-stop was pressed
    would never learn of it. So: one subscription per durability. Our own latched publishers
    (LATCHED_QOS) reach both, and their messages are passed on once (same publisher, same sequence
    number); a volatile publisher reaches the volatile one only. The callback should still be
    idempotent (latch on True, release on False): on an rclpy without message info a latched
    message arrives twice.
    """
    from std_msgs.msg import Bool

    seen: deque = deque(maxlen=64)
    lock = threading.Lock()

    def once(msg, info) -> None:
        gid = info.get("publisher_gid")
        seq = info.get("publication_sequence_number")
        key = (str(gid), seq if seq is not None else info.get("source_timestamp"))
        with lock:
            if key in seen:
                return
            seen.append(key)
        callback(msg)

    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:  # Humble
        from rclpy.qos_event import SubscriptionEventCallbacks

    cb = once if _WITH_MESSAGE_INFO else callback
    volatile = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    return [
        node.create_subscription(Bool, ESTOP, cb, volatile, callback_group=callback_group),
        # a volatile publisher is expected not to match this one (the volatile subscription takes it): no
        # "incompatible QoS, no messages will be received" warning that would make a person doubt the e-stop
        node.create_subscription(Bool, ESTOP, cb, LATCHED_QOS, callback_group=callback_group,
                                 event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda _event: None)),
    ]


def _message_info_supported() -> bool:
    """rclpy passes (msg, MessageInfo) to two-argument callbacks since Iron; Humble's does not."""
    try:
        from rclpy.subscription import MessageInfo  # noqa: F401
    except ImportError:
        return False
    return True


_WITH_MESSAGE_INFO = _message_info_supported()


# --- typed parameters ---------------------------------------------------------------------------
_ROS_OWN = {"use_sim_time", "start_type_description_service"}


class ConfiguredNode(Node):
    """A Node whose parameters are one config dataclass (``self.config``).

    ``config`` may be passed directly (tests, the in-process runner); otherwise it is read from the
    node's parameters. Any problem raises :class:`ConfigError` naming the key, before the node
    creates a single publisher.
    """

    config_class: type = object

    def __init__(self, node_name: str, *, config: Any = None, **kwargs):
        kwargs.setdefault("automatically_declare_parameters_from_overrides", True)
        kwargs.setdefault("allow_undeclared_parameters", True)
        super().__init__(node_name, **kwargs)
        if config is None:
            given = {
                name: p.value
                for name, p in self._parameters.items()
                if name not in _ROS_OWN and p.type_ != Parameter.Type.NOT_SET
            }
            config = from_ros_parameters(
                self.config_class, given, source=f"parameters of node '{self.get_fully_qualified_name()}'"
            )
        elif not isinstance(config, self.config_class):
            raise ConfigError(f"{node_name}: config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        # declare everything else with its value, so `ros2 param dump` shows the whole config
        for name, value in to_ros_parameters(config).items():
            if not self.has_parameter(name) and _ros_value_ok(value):
                try:
                    self.declare_parameter(name, value)
                except Exception:  # noqa: BLE001 - an unrepresentable default only hides it from `ros2 param`
                    pass


def _ros_value_ok(value: Any) -> bool:
    if value is None or isinstance(value, dict):
        return False
    if isinstance(value, list):
        return bool(value) and len({type(v) for v in value}) == 1 and not isinstance(value[0], (dict, list))
    return True


def config_with_overrides(config: T, **changes) -> T:
    """A copy of a (nested) config dataclass with dotted keys changed: ``twin.realtime_factor=0``."""
    from vla_robot.config import apply_overrides, from_dict

    flat = {k.replace("__", "."): v for k, v in changes.items()}
    nested = apply_overrides(dataclasses.asdict(config), flat)
    return from_dict(type(config), nested, source=f"{type(config).__name__} overrides")


# --- diagnostics --------------------------------------------------------------------------------
OK, WARN, ERROR, STALE = 0, 1, 2, 3  # DiagnosticStatus levels as ints

class StreamMonitor:
    """Rate, age and latency of one input stream; says when it goes stale, once, and when it is back."""

    def __init__(self, name: str, stale_after_s: float, log: Callable[[str], None], window: int = 60):
        self.name = name
        self.stale_after_s = stale_after_s
        self._log = log
        self._arrivals: deque[float] = deque(maxlen=window)
        self._latencies: deque[float] = deque(maxlen=window)
        self.count = 0
        self.stale = False
        self._lock = threading.Lock()

    def tick(self, now: float | None = None, latency_s: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._arrivals.append(now)
            self.count += 1
            if latency_s is not None:
                self._latencies.append(latency_s)
            if self.stale:
                self.stale = False
                self._log(f"stream '{self.name}' is back ({self.count} messages so far)")

    def rate_hz(self) -> float:
        with self._lock:
            if len(self._arrivals) < 2:
                return 0.0
            span = self._arrivals[-1] - self._arrivals[0]
            return (len(self._arrivals) - 1) / span if span > 0 else 0.0

    def age_s(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            return now - self._arrivals[-1] if self._arrivals else float("inf")

    def check(self, now: float | None = None) -> bool:
        """True when fresh; logs one clear line on the transition to stale."""
        age = self.age_s(now)
        fresh = age <= self.stale_after_s
        if not fresh and not self.stale and self.count > 0:
            self.stale = True
            self._log(
                f"stream '{self.name}' is STALE: no message for {age:.2f} s (limit {self.stale_after_s:.2f} s)"
            )
        return fresh

    def values(self) -> dict[str, str]:
        with self._lock:
            lat = sorted(self._latencies)
        out = {"rate_hz": f"{self.rate_hz():.2f}", "age_s": f"{self.age_s():.3f}", "count": str(self.count)}
        if lat:
            out["latency_p50_ms"] = f"{1000 * lat[len(lat) // 2]:.1f}"
            out["latency_p95_ms"] = f"{1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))]:.1f}"
        return out


class Diagnostics:
    """Publishes the node's stream monitors (and extra key/values) on /diagnostics once a second."""

    def __init__(self, node: Node, period_s: float = 1.0):
        self.node = node
        self.monitors: dict[str, StreamMonitor] = {}
        self.extra: Callable[[], tuple[int, str, dict[str, Any]]] | None = None
        self._pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self._timer = node.create_timer(period_s, self.publish)

    def monitor(self, name: str, stale_after_s: float) -> StreamMonitor:
        m = StreamMonitor(name, stale_after_s, self.node.get_logger().warning)
        self.monitors[name] = m
        return m

    def status(self) -> DiagnosticStatus:
        level, message, values = OK, "ok", {}
        stale = [n for n, m in self.monitors.items() if not m.check() and m.count > 0]
        for name, m in self.monitors.items():
            for k, v in m.values().items():
                values[f"{name}.{k}"] = v
        if stale:
            level, message = WARN, "stale: " + ", ".join(stale)
        if self.extra is not None:
            x_level, x_message, x_values = self.extra()
            values.update({k: str(v) for k, v in x_values.items()})
            if x_level >= level and x_level > OK:  # the node's own state first, stale streams after
                message = x_message if level == OK else f"{x_message}; {message}"
                level = x_level
        st = DiagnosticStatus(level=bytes([level]), name=self.node.get_fully_qualified_name(), message=message)
        st.hardware_id = self.node.get_name()
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return st

    def publish(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.status = [self.status()]
        self._pub.publish(msg)


def wall_offset() -> float:
    """time.time() - time.monotonic(): turns a driver's monotonic stamp into a ROS (wall) stamp."""
    return time.time() - time.monotonic()


def workspace_fk(robot: str, safety) -> Callable[[Any], Any] | None:
    """The robot's forward kinematics for a safety config's workspace box (None when it has no box).

    Every node that builds a SafetyFilter takes its fk from here, so a box is enforced the same way
    everywhere, in the frame of the robot's MuJoCo model (its base).
    """
    if safety.workspace_min is None:
        return None
    from vla_robot.twin.kinematics import end_effector_fk

    return end_effector_fk(robot)


def safety_filter(robot: str, safety):
    """A SafetyFilter for ``robot`` with the config's limits (and the workspace box, through its fk)."""
    from vla_robot.control.safety import SafetyFilter
    from vla_robot.twin.robots import robot_spec

    return SafetyFilter(robot_spec(robot).joint_limits(), safety, fk=workspace_fk(robot, safety))
