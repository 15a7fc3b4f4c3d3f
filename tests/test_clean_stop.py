"""A clean stop under ``ros2 launch``: one Ctrl-C in launch's terminal gives every node process two
SIGINTs (launch's own and the terminal's, which reaches the whole process group). Every node must
exit 0 with no traceback (no KeyboardInterrupt during close, no RCLError from a publisher whose
context is gone); the recorder closes while it can still publish. The stand-in robot graph runs one process per node (ProcessGraph, as ros2 launch runs it)."""
import os
import signal
import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
torch = pytest.importorskip("torch")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_two_sigints_to_every_node_process_stop_the_graph_with_exit_0_and_no_traceback(tmp_path, ros_context, probe):
    from vla_robot.nodes.processes import ProcessGraph
    from vla_robot.nodes.rehearse import HARDWARE, standin_graph
    from vla_robot.policy import load_policy
    from vla_robot.serving.server import PolicyServer

    torch.set_num_threads(1)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(probe.node)

    def started():
        return probe.events(lambda e: e["type"] == "start")

    manager = {"max_duration_s": 30.0, "reset_source": "none", "autostart": True}
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"]}
    with PolicyServer(load_policy(preset="tiny", seed=0), bind="tcp://127.0.0.1:*", weights_bind=None).start() as server:
        specs = standin_graph(server.address, tmp_path, {"episode_manager_node": manager})
        graph = ProcessGraph(specs, tmp_path / "logs", groups={"hardware": HARDWARE}, env=env).start()
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not started():
                assert not graph.exited(), {u: graph.log_text(u)[-2000:] for u in graph.exited()}
                ex.spin_once(timeout_sec=0.1)
            assert started(), "no episode started"
            time.sleep(1.0)  # an episode in progress: the recorder has frames to finish
            # launch's SIGINT and the terminal's, a moment apart, to every process
            for p in graph.procs.values():
                p.send_signal(signal.SIGINT)
            time.sleep(0.05)
            for p in graph.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            codes = {}
            for unit, p in graph.procs.items():
                try:
                    codes[unit] = p.wait(timeout=60)
                except Exception:  # noqa: BLE001
                    p.kill()
                    codes[unit] = p.wait()
        finally:
            graph.stop(timeout_s=10)
            ex.shutdown()
    logs = {u: graph.log_text(u) for u in graph.procs}
    assert codes == {u: 0 for u in graph.procs}, {u: logs[u][-3000:] for u, c in codes.items() if c != 0}
    bad = {u: t[-3000:] for u, t in logs.items() if "Traceback" in t or "RCLError" in t}
    assert not bad, bad
