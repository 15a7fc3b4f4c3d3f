"""`vla-robot launch --processes`: the graph with a process per node, as ros2 launch runs it."""
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ros]


def test_launch_runs_each_node_in_its_own_process_and_counts_the_episodes(tmp_path):
    pytest.importorskip("rclpy")
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}  # the command sets what it needs
    proc = subprocess.run(
        [sys.executable, "-m", "vla_robot.cli", "launch", "evaluate", "--sim", "--processes", "--serve", "tiny",
         "--episodes", "2", "--set", "episode_manager_node.max_duration_s=2.0",
         "--set", f"recorder_node.root={tmp_path / 'dataset'}"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "a process per node (twin_node, policy_node, teleop_node, episode_manager_node, recorder_node)" in out
    assert "/2 successful" in out, out[-2000:]
    assert "Traceback" not in out, out[-4000:]
    assert "did not stop cleanly" not in out


def test_a_set_for_a_node_not_in_the_graph_stops_before_any_process_starts():
    proc = subprocess.run(
        [sys.executable, "-m", "vla_robot.cli", "launch", "evaluate", "--sim", "--processes", "--serve", "tiny",
         "--set", "no_such_node.max_duration_s=2.0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no_such_node" in proc.stderr and "its nodes: twin_node, policy_node" in proc.stderr
    assert "serving" not in proc.stdout + proc.stderr  # no server was started for a graph that cannot run


def test_overrides_join_each_nodes_own_with_nested_keys_dotted():
    from vla_robot.bringup import graph
    from vla_robot.nodes.runner import with_overrides

    specs = with_overrides(graph("evaluate", use_sim=True), {"policy_node": {"control": {"control_hz": 15.0}}},
                           "evaluate")
    policy = next(s for s in specs if s.name == "policy_node")
    assert ("control.control_hz", 15.0) in policy.overrides
    assert all(("control.control_hz", 15.0) not in s.overrides for s in specs if s.name != "policy_node")
