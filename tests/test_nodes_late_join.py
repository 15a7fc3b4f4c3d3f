"""Nodes started as separate processes at different times, as ``ros2 launch`` starts them.

Defect 8 of issue 14: the episode manager publishes episode 0's ``reset`` as soon as it starts; a
twin that starts a few seconds later (its process imports MuJoCo and builds the scene) subscribed
with a volatile QoS and missed it, so every launched graph's first episode ended ``reset_failed``.
In-process graphs cannot show this (the runner waits for every connection before the first tick).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402


pytestmark = [pytest.mark.ros, pytest.mark.slow]

RESET_TIMEOUT_S = 45.0  # generous: a loaded machine may take long to start the twin; the fix needs no wait

PARAMS = f"""
episode_manager_node:
  ros__parameters:
    mode: rl
    task: reach
    autostart: true
    reset_source: twin
    label_source: auto
    reset_timeout_s: {RESET_TIMEOUT_S}
    max_duration_s: 0.5
    start_conditions: [3, 4]
    group_size: 2
    prompt: false
twin_node:
  ros__parameters:
    mode: sim
    task: reach
    cameras: [front]
    image_size: [32, 32]
    hold_timeout_s: 0.05
"""


def _start(module, params, log):
    return subprocess.Popen([sys.executable, "-m", f"vla_robot.nodes.{module}", "--ros-args", "--params-file",
                             str(params)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=dict(os.environ))


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_twin_started_after_the_manager_runs_episode_0(tmp_path, ros_context, probe):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(probe.node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [ex.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)],
                               daemon=True)
    spinner.start()

    seen = probe.events

    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("manager", "twin")}
    manager = _start("episode_manager_node", params, logs["manager"])
    twin = None
    try:
        # the manager is up and has asked for episode 0's reset before the twin exists
        deadline = time.monotonic() + 60
        while not seen(lambda e: e["type"] == "reset") and time.monotonic() < deadline:
            assert manager.poll() is None, (tmp_path / "manager.log").read_text()
            time.sleep(0.1)
        assert seen(lambda e: e["type"] == "reset"), "the manager published no reset"
        time.sleep(2.5)
        twin = _start("twin_node", params, logs["twin"])
        # episode 0 starts, long before the manager would give up on its reset
        deadline = time.monotonic() + RESET_TIMEOUT_S - 5
        while not seen(lambda e: e["type"] == "start") and time.monotonic() < deadline:
            assert twin.poll() is None, (tmp_path / "twin.log").read_text()
            time.sleep(0.1)
        starts = seen(lambda e: e["type"] == "start")
        # the twin acted on the reset once: the next episodes run too (it did not redo an old one)
        deadline = time.monotonic() + 30
        while len(seen(lambda e: e["type"] == "save")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for p in (twin, manager):
            if p is not None:
                _stop(p)
        for f in logs.values():
            f.close()
        stop.set()
        spinner.join(timeout=5)
        ex.shutdown()
    failed = seen(lambda e: e["type"] == "end" and e["reason"] == "reset_failed")
    assert starts and starts[0]["episode"] == 0, (json.dumps(probe.events()), (tmp_path / "manager.log").read_text())
    assert starts[0]["instruction"].startswith("touch") and starts[0]["start_condition"] == 3
    assert not failed, failed
    saves = seen(lambda e: e["type"] == "save")
    assert [e["episode"] for e in saves[:2]] == [0, 1], probe.events()
