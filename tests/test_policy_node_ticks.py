"""policy_node at an episode boundary, lockstep (sim): a tick still waiting for its chunk when the
episode ends must not act in the next episode, and the next episode's first tick must not be lost."""
import threading

import numpy as np
import pytest

pytest.importorskip("rclpy")
import rclpy  # noqa: E402

from vla_robot.nodes import convert  # noqa: E402
from vla_robot.nodes.policy_node import PolicyNode  # noqa: E402
from vla_robot.twin.robots import robot_spec  # noqa: E402

SPEC = robot_spec("so101")


class BlockingClient:
    """Stands in for the policy server: the first request waits until released (a slow chunk), each
    reply carries the version it was asked under."""

    def __init__(self):
        self.version = 0
        self.release = threading.Event()
        self.first_asked = threading.Event()
        self.calls = 0

    def metadata(self, timeout_s=None):
        return {"model": "fake", "version": self.version, "chunk_size": 4, "cameras": ["front"],
                "action_dim": SPEC.n_joints}

    def infer(self, observations, timeout_s=None, **options):
        (observation,) = observations  # the controller asks for one chunk at a time
        self.calls += 1
        version = self.version
        if self.calls == 1:
            self.first_asked.set()
            assert self.release.wait(10), "the test never released the first request"
        target = np.asarray(observation["state"], dtype=np.float64) + 0.01
        return [{"actions": np.tile(target, (4, 1)).astype(np.float32), "version": version, "chunk_id": self.calls}]

    def close(self):
        pass


def observe(node, stamp):
    node._on_image("front", convert.image_to_msg(np.zeros((16, 16, 3), np.uint8), stamp))
    node._on_joint_state(convert.joint_state_to_msg(SPEC.joint_names, SPEC.home, stamp))


def event(node, ev):
    node._on_episode_event(convert.event_to_msg(ev))


def test_a_tick_that_outlives_its_episode_does_not_act_in_the_next(ros_context):
    client = BlockingClient()
    node = PolicyNode("policy_node", context=ros_context, client=client, parameter_overrides=[
        rclpy.parameter.Parameter("lockstep", value=True),
        rclpy.parameter.Parameter("cameras", value=["front"]),
    ])
    sent = []  # (what, version or source) in publishing order
    node.command_pub.publish = lambda m: sent.append(("command", m.header.frame_id.split("/")[0]))
    node.events_pub.publish = lambda m: sent.append((convert.msg_to_event(m)["type"], convert.msg_to_event(m).get("version")))
    try:
        event(node, {"type": "start", "episode": 0, "stamp": 1.0})
        old = threading.Thread(target=observe, args=(node, 1.0))  # episode 0's tick: its chunk is slow
        old.start()
        assert client.first_asked.wait(10)
        # meanwhile episode 0 ends, the learner swaps in version 1, episode 1 starts and observes
        event(node, {"type": "end", "episode": 0})
        client.version = 1
        event(node, {"type": "start", "episode": 1, "stamp": 2.0})
        new = threading.Thread(target=observe, args=(node, 2.0))
        new.start()
        mark = len(sent)
        client.release.set()  # the slow version-0 chunk arrives now, in episode 1
        old.join(10)
        new.join(10)
        assert not old.is_alive() and not new.is_alive()
        after = sent[mark:]
        # episode 1 saw only version 1, and its first observation was not dropped: it got a command
        assert after == [("version", 1), ("command", "policy")], sent
        assert node.ticks == 1  # only the episode-1 tick counted; the stale one published nothing
    finally:
        client.release.set()
        node.destroy_node()
