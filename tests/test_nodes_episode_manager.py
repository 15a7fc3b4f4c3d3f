"""episode_manager_node over real rclpy: labels that name their episode, rejections on the event topic,
the operator's takeover, and what the operator is told before each episode."""
import json
import threading

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from vla_robot.config import from_dict  # noqa: E402
from vla_robot.nodes import common  # noqa: E402
from vla_robot.nodes.config import EpisodeManagerNodeConfig  # noqa: E402

pytestmark = [pytest.mark.ros]


def test_labels_over_ros_name_their_episode_and_a_takeover_is_recorded(ros_context, probe):
    from vla_robot.nodes.episode_manager_node import EpisodeManagerNode

    manager = EpisodeManagerNode(config=from_dict(EpisodeManagerNodeConfig, {
        "mode": "rl", "task": "pick up the cube", "reset_source": "operator", "start_conditions": ["left", "right"],
        "group_size": 2, "prompt": False}), use_terminal=False, context=ros_context)
    person = probe.node  # the person at the robot: reads the episode events, labels, takes over
    labels = person.create_publisher(String, common.EPISODE_LABEL, common.EVENT_QOS)
    takeover = person.create_publisher(Bool, common.TELEOP_INTERVENTION, common.LATCHED_QOS)
    label_srv = person.create_client(SetBool, "/episode_manager_node/label")
    logged = []
    manager.get_logger().info = lambda text, **kw: logged.append(text)  # what the operator reads
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(manager)
    ex.add_node(person)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()

    wait_for = probe.wait_for

    def last(kind):
        found = probe.events(lambda e: e["type"] == kind)
        return found[-1] if found else None

    def call_label(success):
        assert label_srv.wait_for_service(timeout_sec=10)
        fut = label_srv.call_async(SetBool.Request(data=success))
        assert wait_for(fut.done)
        return fut.result()

    try:
        assert wait_for(lambda: labels.get_subscription_count() and takeover.get_subscription_count())
        core = manager.core
        core.start()
        assert "set up start condition 'left' for episode 0 (group 1: 1/2); then press Enter or call ~/start" in logged
        core.start()
        assert core.state == "running"
        # ~/label while the episode runs: refused, the episode runs on, the refusal is published
        reply = call_label(True)
        assert not reply.success and "still running" in reply.message and core.state == "running"
        assert wait_for(lambda: last("label_rejected") is not None)
        takeover.publish(Bool(data=True))
        assert wait_for(lambda: core._intervened)
        takeover.publish(Bool(data=False))
        core.stop()
        # a label for another episode is rejected; one that names episode 0 saves it
        labels.publish(String(data=json.dumps({"episode": 1, "label": "success"})))
        assert wait_for(lambda: last("label_rejected")["episode"] == 1)
        assert "episode 1 is not waiting for its label" in last("label_rejected")["reason"]
        labels.publish(String(data="not json"))
        assert wait_for(lambda: last("label_rejected")["episode"] is None)
        assert core.state == "labelling"
        labels.publish(String(data=json.dumps({"episode": 0, "label": "failure"})))
        assert wait_for(lambda: last("save") is not None)
        save = last("save")
        assert (save["episode"], save["label"], save["label_source"], save["intervened"]) == (0, "failure", "human", True)
        start = probe.events(lambda e: e["type"] == "start")[0]
        assert start["instruction"] == "pick up the cube" and start["start_condition"] == "left"
    finally:
        ex.shutdown(timeout_sec=5)
        spinner.join(timeout=5)
        manager.destroy_node()
