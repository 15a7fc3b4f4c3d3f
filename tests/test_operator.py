"""`vla-robot operator`, the console of the person at the robot: its logic on its own, then a whole rl
episode driven from it (start, label) against the rl_finetune graph on the twin, through the graph's
services and topics only; the e-stop and its release from the console; and the real program in tmux."""
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from vla_robot.operator.console import Command, Console


def test_console_follows_the_events_and_labels_name_their_episode():
    c = Console()
    assert c.key(" ") == Command("service", "start")
    c.on_event({"type": "reset", "episode": 0, "start": "left", "instruction": "touch the red cube"})
    assert c.start_condition == "left" and "set up the start condition" in c.phase
    assert any("start condition: left" in line for line in c.lines())
    assert c.key(" ") == Command("service", "start")  # confirms the reset (reset_source operator)
    c.on_event({"type": "start", "episode": 0, "start_condition": "left"})
    c.on_policy_event({"type": "version", "version": 3})
    assert c.key("s") is None and "running" in c.message  # a label never ends a running episode
    assert c.key("x") == Command("service", "stop")
    c.on_event({"type": "end", "episode": 0, "reason": "stopped"})
    assert c.key("s") == Command("label", {"episode": 0, "label": "success"})
    c.on_event({"type": "save", "episode": 0, "label": "success", "label_source": "human"})
    assert c.key("f") is None  # nothing waits: a late key cannot label the next episode
    # the next episode, a failure under the next version; one discarded
    c.on_event({"type": "reset", "episode": 1, "start": "right"})
    c.on_event({"type": "start", "episode": 1})
    c.on_policy_event({"type": "version", "version": 4})
    c.on_event({"type": "end", "episode": 1, "reason": "timeout"})
    assert c.key("f") == Command("label", {"episode": 1, "label": "failure"})
    c.on_event({"type": "save", "episode": 1, "label": "failure", "label_source": "human"})
    c.on_event({"type": "reset", "episode": 2, "start": "left"})
    c.on_event({"type": "start", "episode": 2})
    assert c.key("d") == Command("service", "discard")  # running: the manager ends and discards it
    c.on_event({"type": "discard", "episode": 2, "reason": "discarded"})
    screen = "\n".join(c.lines())
    assert "v3 1/1 (100%)" in screen and "v4 0/1 (0%)" in screen and "episode 2 discarded" in screen
    c.on_event({"type": "label_rejected", "episode": 7, "reason": "episode 7 is not waiting for its label"})
    assert "not waiting" in c.message
    assert (c.key("e"), c.key("r"), c.key("q")) == (Command("estop", True), Command("estop", False), Command("quit"))
    assert c.key("t") == Command("teleop", " ")
    c.on_intervention(True)
    assert "TELEOP: the operator drives" in "\n".join(c.lines())
    c.on_estop(True)
    assert "E-STOP LATCHED" in "\n".join(c.lines())
    assert c.key("?") is None and "unknown key" in c.message


@pytest.mark.ros
@pytest.mark.slow
def test_a_whole_rl_episode_driven_from_the_console(ros_context):
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    torch = pytest.importorskip("torch")
    from rclpy.executors import MultiThreadedExecutor

    from vla_robot.nodes.runner import GraphRunner
    from vla_robot.operator.ros import OperatorNode

    torch.set_num_threads(1)
    console = Console()
    node = OperatorNode(console, context=ros_context)
    ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()

    def press(k):
        node.execute(console.key(k))

    def wait(cond, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.05)
        return cond()

    try:
        with GraphRunner("rl_finetune", sim=True, serve_policy="tiny", exclude=("recorder_node", "teleop_node"),
                         overrides={"episode_manager_node": {"label_source": "human", "autostart": False,
                                                             "max_duration_s": 1.0, "label_timeout_s": 120.0}}) as g:
            assert wait(lambda: node.clients_["start"].service_is_ready(), 30)
            press(" ")
            assert wait(lambda: console.running or console.waiting_label is not None), console.lines()
            assert console.episode == 0 and console.start_condition is not None
            assert wait(lambda: console.waiting_label == 0), console.lines()  # ran 1 s (sim), waits for a person
            assert not g.results  # nothing decided without the person
            press("s")
            results = g.wait_for_results(1, timeout_s=30)
            assert wait(lambda: console.last.startswith("episode 0 saved"), 10), console.lines()
            (r,) = results
            assert (r.index, r.label, r.label_source, r.saved) == (0, "success", "human", True)
            assert console.version == 0 and console.by_version[0].success == 1
            assert "v0 1/1 (100%)" in "\n".join(console.lines())
            # the e-stop from the console latches in the graph; starting is refused until it is released
            press("e")
            em = g.episode_manager
            assert wait(lambda: em.core.estopped is not None and console.estopped, 10)
            press(" ")
            assert wait(lambda: "start refused" in console.message and "e-stop" in console.message, 10), console.message
            press("r")
            assert wait(lambda: em.core.estopped is None and not console.estopped, 10)
            press(" ")
            assert wait(lambda: console.episode == 1, 30), console.lines()
    finally:
        ex.shutdown()
        node.destroy_node()


@pytest.mark.ros
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_console_runs_in_a_terminal_in_tmux(tmp_path):
    """The real program on a real terminal (curses in tmux, as over SSH): it draws, takes keys, quits."""
    pytest.importorskip("rclpy")
    session = f"vlaop{os.getpid()}"
    env = f"ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}"
    cmd = f"env {env} {sys.executable} -m vla_robot.cli operator; echo EXIT=$? > {tmp_path}/rc; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", cmd], check=True)

    def screen():
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def wait(cond, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.1)
        return cond()

    try:
        assert wait(lambda: "vla-robot operator" in screen()), screen()
        assert "SPACE start / confirm reset" in screen() and "e-stop: clear" in screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True)
        assert wait(lambda: "no episode waits for its label" in screen()), screen()
        subprocess.run(["tmux", "send-keys", "-t", session, " "], check=True)  # no manager in this domain
        assert wait(lambda: "start refused" in screen() and "not available" in screen()), screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "e"], check=True)  # its own latched e-stop comes back
        assert wait(lambda: "E-STOP LATCHED" in screen()), screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "r"], check=True)
        assert wait(lambda: "e-stop: clear" in screen()), screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        assert wait(lambda: (tmp_path / "rc").exists(), 20), screen()
        assert (tmp_path / "rc").read_text().strip() == "EXIT=0"
        assert "Traceback" not in screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


@pytest.mark.ros
def test_take_over_from_the_console_goes_through_the_teleop_node(ros_context, probe):
    """'t' takes over through the teleop node (its keys topic), as the keyboard beside the arm would;
    the console shows it from teleop/intervention; 't' again hands back."""
    pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    from rclpy.executors import MultiThreadedExecutor
    from sensor_msgs.msg import JointState

    from vla_robot.nodes import common, convert
    from vla_robot.nodes.teleop_node import TeleopNode
    from vla_robot.operator.ros import OperatorNode
    from vla_robot.twin.robots import robot_spec

    console = Console()
    op = OperatorNode(console, context=ros_context)
    teleop = TeleopNode("teleop_node", context=ros_context, use_terminal=False)
    js = probe.node.create_publisher(JointState, "/joint_states", common.STATE_QOS)
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    for n in (op, teleop, probe.node):
        ex.add_node(n)
    threading.Thread(target=ex.spin, daemon=True).start()
    wait = probe.wait_for

    try:
        spec = robot_spec("so101")
        assert wait(lambda: js.get_subscription_count() > 0 and op.teleop_keys_pub.get_subscription_count() > 0)
        js.publish(convert.joint_state_to_msg(list(spec.joint_names), spec.home, time.time()))
        assert wait(lambda: teleop.keyboard.target is not None)
        op.execute(console.key("t"))
        assert wait(lambda: teleop.keyboard.engaged and console.intervening), console.lines()
        op.execute(console.key("t"))
        assert wait(lambda: not teleop.keyboard.engaged and not console.intervening), console.lines()
    finally:
        ex.shutdown()
        teleop.close()
        for n in (op, teleop):
            n.destroy_node()
