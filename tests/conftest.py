"""Test-wide settings: headless rendering, ROS traffic kept on loopback in a private DDS domain."""
import os
import random

# Before anything imports mujoco or rclpy.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture
def ros_context():
    """A fresh rclpy context for one test, shut down afterwards."""
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)


class Probe:
    """A test's own ROS node that collects what the graph publishes (thread-safe), and waits on it.

    ``collect(topic, msg_type, qos, conv=None)`` keeps every message (``conv(msg)`` when given) in
    ``probe.got[topic]``; ``events()`` subscribes to ``episode/event`` (transient local, as every
    subscriber must) once and returns the events so far, as dicts. Add ``probe.node`` to the test's
    executor, or pass ``spin`` (e.g. ``lambda: ex.spin_once(timeout_sec=0.05)``) to :meth:`wait_for`.
    """

    def __init__(self, context, name: str = "probe"):
        import threading

        import rclpy

        self.node = rclpy.create_node(name, context=context)
        self.lock = threading.Lock()
        self.got: dict[str, list] = {}
        self._events = None

    def collect(self, topic: str, msg_type, qos, conv=None) -> list:
        store = self.got.setdefault(topic, [])

        def keep(msg):
            with self.lock:
                store.append(conv(msg) if conv else msg)

        self.node.create_subscription(msg_type, topic, keep, qos)
        return store

    def seen(self, topic: str, pred=None) -> list:
        """A copy of what came on ``topic`` (those for which ``pred`` holds)."""
        with self.lock:
            return [m for m in self.got.get(topic, []) if pred is None or pred(m)]

    def events(self, pred=None) -> list[dict]:
        from std_msgs.msg import String

        from vla_robot.nodes import common, convert

        if self._events is None:
            self._events = self.collect(common.EPISODE_EVENTS, String, common.EPISODE_EVENT_QOS, convert.msg_to_event)
        return self.seen(common.EPISODE_EVENTS, pred)

    @staticmethod
    def wait_for(cond, timeout: float = 20.0, spin=None, step: float = 0.02) -> bool:
        """Poll ``cond`` until it holds or ``timeout`` seconds pass (calling ``spin`` between polls, else sleeping)."""
        import time

        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            spin() if spin else time.sleep(step)
        return bool(cond())


@pytest.fixture
def probe(ros_context):
    """A :class:`Probe` node in the test's ROS context, destroyed afterwards."""
    p = Probe(ros_context)
    p.events()  # subscribed from the start: transient local brings the history anyway, but no gap in order
    try:
        yield p
    finally:
        p.node.destroy_node()
