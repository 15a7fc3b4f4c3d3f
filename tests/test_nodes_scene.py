"""twin_node mode ``scene``: the stand-in world of a rehearsal, in-process with the twin's real-time arm.

It does at the twin what a person does at a robot between episodes: on the manager's ``reset`` it
sets the scene to the requested start condition (the arm back to its start pose) and says so on
``scene/ready``; ``scene/success`` is the twin's success check of the scene, about 10 Hz. The episode
manager reads neither: with reset_source operator it waits for ``~/start`` as on a robot.
"""
import json
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402

from vla_robot.config import ConfigError, from_dict  # noqa: E402
from vla_robot.nodes import common  # noqa: E402
from vla_robot.nodes.config import ArmNodeConfig, EpisodeManagerNodeConfig, TwinNodeConfig  # noqa: E402

pytestmark = [pytest.mark.ros]

TWIN = {"task": "reach", "cubes": 1, "image_size": [32, 32], "cameras": ["front"]}


def test_start_condition_names_stand_for_fixed_twin_starts():
    from vla_robot.nodes.twin_node import start_state_id

    assert start_state_id(7) == 7 and start_state_id("7") == 7 and start_state_id(None) is None
    assert start_state_id("left") == start_state_id("left") != start_state_id("right")
    assert 0 <= start_state_id("left") < 2**31
    with pytest.raises(ValueError, match="start-state id"):
        start_state_id(True)
    with pytest.raises(ConfigError, match="session must name the twin session"):
        from_dict(TwinNodeConfig, {"mode": "scene", "session": " "})


def test_scene_mode_sets_up_each_start_condition_and_reports_success(ros_context, probe):
    from vla_robot.drivers.twin import find_session
    from vla_robot.nodes.arm_node import ArmNode
    from vla_robot.nodes.episode_manager_node import EpisodeManagerNode
    from vla_robot.nodes.twin_node import TwinNode, start_state_id

    arm = ArmNode(config=from_dict(ArmNodeConfig, {"backend": "twin", "robot": "so101", "options": {
        "session": "scene_test", "realtime": True, "twin": TWIN}}), context=ros_context)
    scene = TwinNode(config=from_dict(TwinNodeConfig, {"mode": "scene", "session": "scene_test"}), context=ros_context)
    manager = EpisodeManagerNode(config=from_dict(EpisodeManagerNodeConfig, {
        "mode": "rl", "task": "reach", "instruction": "touch the red cube", "reset_source": "operator",
        "start_conditions": ["left", "right"], "group_size": 2, "prompt": False}),
        use_terminal=False, context=ros_context)
    probe.collect(common.SCENE_READY, String, common.EVENT_QOS, lambda m: json.loads(m.data))
    probe.collect(common.SCENE_SUCCESS, Bool, common.STATE_QOS, lambda m: (time.monotonic(), m.data))
    ex = MultiThreadedExecutor(num_threads=4, context=ros_context)
    for n in (arm, scene, manager, probe.node):
        ex.add_node(n)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()
    sess = find_session("scene_test")

    wait_for = probe.wait_for

    def ready_for(episode):
        return probe.seen(common.SCENE_READY, lambda r: r["episode"] == episode)

    try:
        assert wait_for(lambda: probe.node.count_publishers(common.SCENE_READY) and
                        manager._events_pub.get_subscription_count() >= 2)
        core = manager.core
        assert core.start()[0] and core.state == "resetting"
        assert wait_for(lambda: ready_for(0)), "no scene/ready for episode 0"
        (r0,) = ready_for(0)
        with sess.lock:
            q_start = sess.env.joint_positions()
            assert sess.env.start_condition == start_state_id("left")
            assert r0 == {"episode": 0, "start_condition": "left", "start_id": start_state_id("left"),
                          "instruction": sess.env.instruction}
        time.sleep(0.3)
        assert core.state == "resetting"  # the manager does not read the scene: the person presses start
        assert core.start()[0] and core.state == "running"
        # scene/success is the twin's check: false now; the twin's expert stands in for a policy that succeeds
        # the expert keeps acting until the scene node has reported the touch (it samples the check at ~10 Hz,
        # so a touch shorter than its period may pass unseen on a loaded machine, and is tried again)
        assert wait_for(lambda: not arm._homing, timeout=15), "arm_node still homes after the reset"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not probe.seen(common.SCENE_SUCCESS, lambda s: s[1]):
            with sess.lock:
                if not sess.env.success():
                    sess.set_target(sess.env.expert_action())
            time.sleep(1 / 30)
        assert probe.seen(common.SCENE_SUCCESS, lambda s: s[1]), "no touch of the cube reported on scene/success"
        success = probe.seen(common.SCENE_SUCCESS)
        assert not success[0][1]
        stamps = [t for t, _ in success]
        assert len(stamps) >= 5 and 3.0 < (len(stamps) - 1) / (stamps[-1] - stamps[0]) < 20.0  # about 10 Hz
        core.stop()
        assert core.label_episode(0, "success")[0]
        # the next episode of the group: the same start, the arm back at its start pose
        assert core.start()[0]
        assert wait_for(lambda: ready_for(1)), "no scene/ready for episode 1"
        assert ready_for(1)[0]["start_id"] == start_state_id("left")
        with sess.lock:
            np.testing.assert_allclose(sess.env.joint_positions(), q_start, atol=2e-2)
            assert not sess.env.success()
    finally:
        ex.shutdown(timeout_sec=5)
        spinner.join(timeout=5)
        for n in (manager, scene, arm):
            getattr(n, "close", lambda: None)()
            n.destroy_node()
