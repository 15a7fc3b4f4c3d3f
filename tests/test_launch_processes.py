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
