"""A Franka FR3 under ros2_control, end to end on the wall clock (issue 18's done-when).

Separate processes, as ``ros2 launch`` runs them (vla_robot/nodes/processes.py): the policy server
(``vla-robot serve``, a tiny random OFT policy for the Panda twin's 8 joints), the evaluate graph with
``arm_driver: ros2_control`` (bringup: no arm_node, policy_node's trajectories remapped to the JTC)
and config/robots/fr3.yaml as the robot description, and the hardware: the stand-in JTC
(vla_robot/nodes/standin_jtc.py) with the twin's arm behind it and the twin's cameras, in one process
(one simulated world), with 50 ms of latency injected on every trajectory. This test is the operator:
it knocks the arm off home, presses start, waits for the reset (policy_node homes the arm, since no
arm_node runs on this path), confirms it, and labels the episode.

Teleop and the recorder are left out (two cores); their paths are the arm_node graph's.
"""
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
pytest.importorskip("torch")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_robot import bringup  # noqa: E402
from vla_robot.config import config_dir  # noqa: E402
from vla_robot.nodes import common, convert  # noqa: E402
from vla_robot.robot.description import load_description  # noqa: E402

from conftest import Probe  # noqa: E402

pytestmark = pytest.mark.ros
FR3 = str(config_dir() / "robots" / "fr3.yaml")
LATENCY_S = 0.05
TWIN = {"robot": "panda", "task": "reach", "cubes": 1, "image_size": [64, 64], "cameras": ["front", "wrist"],
        "control_hz": 100.0}


def write_params(path: Path) -> Path:
    cams = {c: {"backend": "twin", "session": "fr3", "camera": c, "twin": TWIN} for c in ("front", "wrist")}
    params = {
        "camera_node": {"fps": 30.0, "devices": cams},
        "joint_trajectory_controller": {"robot_description": FR3, "latency_s": LATENCY_S,
                                        "arm": {"session": "fr3", "realtime": True, "twin": TWIN}},
        "policy_node": {"robot": "panda", "robot_description": FR3, "cameras": ["front", "wrist"],
                        "control": {"control_hz": 30.0, "executor": {"kind": "async"},
                                    "safety": {"velocity_scale": 0.5, "acceleration_scale": 0.5},
                                    # generous, as tests/test_nodes_graph.py: this is about the JTC path, not
                                    # the watchdog, and five processes share two cores (a 0.54-s-old frame
                                    # faulted an episode at the default 0.5 s)
                                    "watchdog": {"max_observation_age_s": 3.0, "max_chunk_gap_s": 5.0}}},
        "episode_manager_node": {"mode": "evaluate", "episodes": 1, "max_duration_s": 8.0, "reset_source": "operator",
                                 "label_source": "human", "prompt": False, "instruction": "touch the red cube"},
    }
    class NoAliases(yaml.SafeDumper):  # rcl's parser refuses YAML anchors
        def ignore_aliases(self, data):
            return True

    path.write_text(yaml.dump({k: {"ros__parameters": v} for k, v in params.items()}, Dumper=NoAliases))
    return path


def tiny_fr3_policy(folder: Path) -> Path:
    """The tiny preset for the Panda twin's 8 joints, its actions normalised to home ± 0.3 rad."""
    from vla_robot.policy import load_policy, save_checkpoint
    from vla_robot.policy.normalization import compute_statistics

    home = load_description(FR3).home
    runtime = load_policy(preset="tiny", seed=0, overrides={"action_dim": 8, "proprio_dim": 8,
                                                            "dataset_statistics": ""})
    rng = np.random.default_rng(0)
    samples = home + rng.uniform(-0.3, 0.3, size=(256, 8))
    samples[:, 7] = rng.uniform(0.0, 0.8, size=256)  # the gripper, the twin's Robotiq angle
    runtime.set_norm_stats({"fr3": compute_statistics(samples, samples)}, "fr3")
    save_checkpoint(runtime, folder)
    return folder


class Operator(Probe):
    """The person at the robot: conftest's Probe (its own node in this process) with the topics they
    watch, each message kept with the time it came, and the episode manager's start button."""

    KEYS = {"js": "/joint_states", "jtc": bringup.JTC_TOPIC, "events": "/episode/event", "policy": "/policy/events",
            "stats": "/joint_trajectory_controller/stats"}

    def __init__(self, ctx):
        super().__init__(ctx, "operator")
        stamped = lambda conv=None: (lambda m: (time.time(), conv(m) if conv else m))  # noqa: E731
        self.collect(self.KEYS["js"], JointState, common.STATE_QOS, stamped())
        self.collect(self.KEYS["jtc"], JointTrajectory, 100, stamped())
        self.collect(self.KEYS["events"], String, common.EPISODE_EVENT_QOS, stamped(convert.msg_to_event))
        self.collect(self.KEYS["policy"], String, common.EVENT_QOS, stamped(convert.msg_to_event))
        self.collect(self.KEYS["stats"], String, common.LATCHED_QOS, stamped(lambda m: json.loads(m.data)))
        self.jtc_pub = self.node.create_publisher(JointTrajectory, bringup.JTC_TOPIC, 10)
        self.label_pub = self.node.create_publisher(String, "/episode/label", common.EVENT_QOS)
        self.start_cli = self.node.create_client(Trigger, "/episode_manager_node/start")
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.stop = False
        self.thread = threading.Thread(target=lambda: [self.ex.spin_once(timeout_sec=0.02)
                                                       for _ in iter(lambda: self.stop, True)], daemon=True)
        self.thread.start()

    def seen(self, key, pred=None):
        return super().seen(self.KEYS.get(key, key), pred)

    def q(self, description):
        js = self.seen("js")[-1][1]
        return description.from_joint_state(js.name, js.position)[0]

    def press_start(self) -> str:
        assert self.start_cli.wait_for_service(timeout_sec=30), "no ~/start service"
        future = self.start_cli.call_async(Trigger.Request())
        assert wait(future.done, 10)
        return future.result().message

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        self.ex.shutdown()
        self.node.destroy_node()


wait = Probe.wait_for


@pytest.fixture(scope="module")
def run(tmp_path_factory):  # (the tests that use it are slow: a policy server and four processes, ~45 s)
    from vla_robot.nodes.processes import ProcessGraph, start_server

    tmp = tmp_path_factory.mktemp("jtc")
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"],
           "PYTHONUNBUFFERED": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    server, address = None, ""
    graph = None
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    op = Operator(ctx)
    try:
        server, address, _ = start_server(str(tiny_fr3_policy(tmp / "policy")), tmp / "server.log", env)
        params = write_params(tmp / "fr3.yaml")
        specs = [s for s in bringup.graph("evaluate", robot="panda", arm_driver="ros2_control", policy_server=address,
                                          config=str(params))
                 if s.name not in ("teleop_node", "recorder_node")]
        specs.append(bringup.NodeSpec("standin_jtc", "joint_trajectory_controller", parameters=(str(params),)))
        graph = ProcessGraph(specs, tmp / "logs", groups={"hardware": ("camera_node", "joint_trajectory_controller")},
                             env=env).start()
        seen = episode(op, graph, tmp)
    finally:  # all of it stops before the tests look: nothing of it is left on the domain for the next tests
        if graph is not None:
            graph.stop(timeout_s=20)
        op.close()
        rclpy.shutdown(context=ctx)
        if server is not None:
            server.send_signal(2)
            server.wait(timeout=20)
    yield seen


def episode(op, graph, tmp) -> dict:
    """Knock the arm off home, run one evaluate episode as the operator, label it; what was seen."""
    d = load_description(FR3)
    logs = lambda: "\n".join(f"--- {u}\n{graph.log_text(u)[-2500:]}" for u in graph.units)  # noqa: E731
    up = lambda: (op.seen("js") and op.jtc_pub.get_subscription_count() > 0) or graph.exited()  # noqa: E731
    assert wait(up, 90) and not graph.exited(), logs()
    off = d.home.copy()
    off[[0, 1, 3]] += [0.4, 0.3, 0.3]
    op.jtc_pub.publish(convert.arm_trajectory_msg(off[None], 1.0, d, 0.0, "test"))  # over 1 s, from arrival
    assert wait(lambda: np.max(np.abs(op.q(d)[:7] - off[:7])) < 0.05, 20), (op.q(d), logs())
    said = op.press_start()
    assert "resetting" in said, (said, logs())
    assert wait(lambda: any(e["type"] == "homed" for _, e in op.seen("policy")), 30), (op.seen("policy"), logs())
    homed_at = next(t for t, e in op.seen("policy") if e["type"] == "homed")
    q_homed = op.q(d)
    op.press_start()  # the scene is reset: go
    assert wait(lambda: any(e["type"] == "end" for _, e in op.seen("events")), 40), (op.seen("events"), logs())
    ep = next(e for _, e in op.seen("events") if e["type"] == "end")["episode"]
    op.label_pub.publish(String(data=json.dumps({"episode": ep, "label": "failure"})))
    wait(lambda: any(e["type"] == "save" for _, e in op.seen("events")), 10)
    time.sleep(0.5)  # the last trajectories reach the controller (50 ms late)
    return {"d": d, "off": off, "homed_at": homed_at, "q_homed": q_homed, "events": [e for _, e in op.seen("events")],
            "policy": [e for _, e in op.seen("policy")], "jtc": op.seen("jtc"), "js": op.seen("js"),
            "stats": op.seen("stats")[-1][1], "logs": logs}


@pytest.mark.slow
def test_the_arm_is_homed_through_the_jtc_before_the_episode(run):
    d, homed = run["d"], [e for e in run["policy"] if e["type"] == "homed"]
    assert homed and homed[0]["error"] <= 0.03, run["policy"]
    assert np.max(np.abs(run["q_homed"] - d.home)) <= 0.05, run["q_homed"]  # measured: physics, not the command
    # on the controller's topic the homing trajectory (frame 'reset') came first, the policy's only after
    # the arm was home (the operator confirmed the reset once it was, as at a robot)
    # (a CI run's probe missed the homing trajectory itself on the controller's topic, while the arm went
    # home from 0.4 rad off: the JTC is the only thing that moves it here)
    frames = [(t, m.header.frame_id) for t, m in run["jtc"]]
    assert min(t for t, f in frames if f.startswith("policy")) > run["homed_at"]


@pytest.mark.slow
def test_commands_are_accepted_and_none_is_late_at_50_ms_latency(run):
    stats, logs = run["stats"], run["logs"]
    print("stand-in JTC:", json.dumps(stats))  # (pytest -s: the margins the lead left)
    policy = [m for _, m in run["jtc"] if m.header.frame_id.startswith("policy")]
    # how many ticks drive (rather than hold for a chunk) depends on the load: 90-123 per 4 s on a quiet
    # machine, 9 per 8 s in a loaded run. What the JTC path must do holds for every one of them (below)
    assert len(policy) >= 5, (len(policy), logs())
    assert stats["rejected"] == {} and stats["late"] == 0, json.dumps(stats) + logs()
    # the lead time covers the latency: most are merged at their own start time. A loaded 2-core machine
    # delays some ticks past the lead (a quarter of them in one CI run); those start from arrival, not dropped
    assert stats["started_late"] <= 0.5 * stats["accepted"], stats
    assert stats["accepted"] >= len(policy) and stats["gripper_commands"] >= len(policy) // 2, stats
    # the whole remaining chunk, in the hardware's names, velocities filled, the last point at rest
    # (how much of a chunk remains when it arrives depends on the server's latency: as few as 3 points under load)
    assert max(len(m.points) for m in policy) >= 2  # the point form sends 1
    m = policy[len(policy) // 2]
    assert list(m.joint_names) == [f"fr3_joint{i}" for i in range(1, 8)]
    assert all(len(p.velocities) == 7 for p in m.points) and list(m.points[-1].velocities) == [0.0] * 7


@pytest.mark.slow
def test_the_episode_runs_to_its_end_and_is_labelled(run):
    ends = [e for e in run["events"] if e["type"] == "end"]
    assert [e["reason"] for e in ends] == ["timeout"], (run["events"], run["logs"]())
    assert not [e for e in run["policy"] if e["type"] == "fault"], run["policy"]
    saves = [e for e in run["events"] if e["type"] == "save"]
    assert saves and saves[0]["label"] == "failure"


# --- the policy node's ros2_control path in one process (fast) ------------------------------------
class InProcess:
    """policy_node (a simulated policy server in-process) and the stand-in JTC in one context; this
    test publishes the camera and the episode events."""

    def __init__(self, ctx, chunk, **arm_command):
        from vla_robot.control.config import ControlConfig, WatchdogConfig
        from vla_robot.control.sim import Latency, SimServer
        from vla_robot.nodes.config import ArmCommandConfig, PolicyNodeConfig
        from vla_robot.nodes.policy_node import PolicyNode
        from vla_robot.nodes.standin_jtc import StandinJtc, StandinJtcConfig

        twin = {"robot": "panda", "control_hz": 100.0, "image_size": [16, 16]}
        self.jtc = StandinJtc(context=ctx, config=StandinJtcConfig(
            robot_description=FR3, arm={"session": f"fr3-{id(self)}", "realtime": True, "twin": twin}))
        server = SimServer(time.time, lambda obs: chunk, Latency(0.03))
        # one process, a shared 2-core machine: joint states can pause for half a second; this is about
        # what is sent, not the watchdog (tests/test_control_*.py)
        control = ControlConfig(control_hz=30.0, watchdog=WatchdogConfig(max_observation_age_s=3.0, max_chunk_gap_s=5.0))
        cfg = PolicyNodeConfig(robot="panda", robot_description=FR3, cameras=["front"],
                               control=control, arm_command=ArmCommandConfig(**arm_command))
        self.policy = PolicyNode(context=ctx, config=cfg, client=server,
                                 cli_args=["--ros-args", "-r", f"arm/joint_trajectory:={bringup.JTC_TOPIC}"])
        self.op = Operator(ctx)
        self.image_pub = self.op.node.create_publisher(Image,
                                                       "/cameras/front/image_raw", common.IMAGE_QOS)
        self.event_pub = self.op.node.create_publisher(String, "/episode/event", common.EPISODE_EVENT_QOS)
        self.op.node.create_timer(1 / 30, lambda: self.image_pub.publish(
            convert.image_to_msg(np.zeros((16, 16, 3), np.uint8), time.time())))
        self.ex = rclpy.executors.MultiThreadedExecutor(num_threads=3, context=ctx)
        for n in (self.jtc, self.policy):
            self.ex.add_node(n)
        # spin(), not a loop of spin_once(): a multi-threaded executor's spin_once returns at once while a
        # timer's callback still runs in its pool, so such a loop spins on the GIL and starves every node
        # here (seen: joint states and chunks seconds apart, the arm stalling half-way)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()
        assert wait(lambda: self.op.seen("js") and self.event_pub.get_subscription_count() > 0, 20)

    def event(self, **ev):
        self.event_pub.publish(convert.event_to_msg(ev))

    def close(self):
        self.ex.shutdown()
        self.thread.join(timeout=5)
        self.op.close()
        for n in (self.policy, self.jtc):
            getattr(n, "close", lambda: None)()
            n.destroy_node()


def test_no_policy_command_before_home_then_chunks_in_hardware_names_stamped_ahead(ros_context):
    """A start that comes while the arm is still on its way home waits for it; then each tick's
    trajectory is the rest of the chunk in fr3_joint names, stamped now + lead (3 ticks at 30 Hz),
    points one control period apart, velocities filled, at rest at the end; the gripper goes to its
    own controller and never into the arm's trajectory."""
    d = load_description(FR3)
    target = d.home + np.array([0.15, 0, 0, 0, 0, 0, 0, 0.4])
    rig = InProcess(ros_context, np.tile(target, (8, 1)).astype(np.float32))
    try:
        q0 = rig.op.q(d)
        assert np.max(np.abs(q0 - d.home)) > 0.03  # the twin starts off the FR3's home: homing has work
        rig.event(type="reset", episode=0)
        assert wait(lambda: any(m.header.frame_id == "reset" for _, m in rig.op.seen("jtc")), 10)
        rig.event(type="start", episode=0, instruction="reach")  # while the arm is on its way home
        assert wait(lambda: any(e["type"] == "homed" for _, e in rig.op.seen("policy")), 20), rig.op.seen("policy")
        homed_at = next(e["stamp"] for _, e in rig.op.seen("policy") if e["type"] == "homed")
        # the arm goes toward the chunk's target. (Not asserted: that it gets there. In one process on two
        # cores chunks can run out between replies, and each hold commands the controller's own last command,
        # which lags the plan already sent by the lead: the arm then creeps, seen in about 1 run in 4.)
        assert wait(lambda: rig.op.q(d)[0] > d.home[0] + 0.05, 30), rig.op.q(d)
        msgs = rig.op.seen("jtc")
        policy = [(t, m) for t, m in msgs if m.header.frame_id.startswith("policy")]
        # every policy trajectory was made after the arm was home: received after it, and a stamped one's
        # stamp is its tick's now + lead (one stamped 0, the rest of a plan shorter than the lead, has none)
        assert policy and min(t for t, _ in policy) >= homed_at, (policy[0][0], homed_at)
        ticks = [convert.from_stamp(m.header.stamp) - 0.1 for _, m in policy if convert.from_stamp(m.header.stamp)]
        assert all(t >= homed_at - 1e-3 for t in ticks), (min(ticks), homed_at)
        assert [m.header.frame_id for _, m in msgs][0] == "reset"
        t, m = policy[len(policy) // 2]
        assert list(m.joint_names) == [f"fr3_joint{i}" for i in range(1, 8)]
        stamp = convert.from_stamp(m.header.stamp)
        # stamped now + 0.1 s: at most that far ahead of its receipt (received after now), late only by a lag
        assert stamp == 0.0 or -0.3 < stamp - t <= 0.1 + 1e-3, (stamp, t)
        times = [convert.from_duration(p.time_from_start) for p in m.points]
        assert np.allclose(np.diff(times[:-1]), 1 / 30) and list(m.points[-1].velocities) == [0.0] * 7
        counts = rig.jtc.counts()
        # never refused for its joints or shape; one process on a loaded machine can stall a delivery past
        # the trajectory's end (seen once in CI), which the controller rightly drops as late
        assert set(counts["rejected"]) <= {"late"} and counts["rejected"].get("late", 0) <= 2, counts
        assert counts["gripper_commands"] > 0, counts
        # the gripper, through its own controller (hardware metres there, the twin's angle here)
        assert wait(lambda: rig.op.q(d)[7] > d.home[7] + 0.1, 10), rig.op.q(d)
    finally:
        rig.close()


def test_auto_form_keeps_one_target_per_tick_for_an_arm_whose_gripper_travels_with_it(ros_context):
    """arm_command.form auto: the twin's description (gripper with_arm) keeps the arm_node/twin path's
    one target per tick on arm/command and sends no trajectory."""
    from vla_robot.control.sim import Latency, SimServer
    from vla_robot.nodes.config import PolicyNodeConfig
    from vla_robot.nodes.policy_node import PolicyNode

    node = PolicyNode(context=ros_context, config=PolicyNodeConfig(robot="panda", cameras=["front"]),
                      client=SimServer(time.time, lambda obs: np.zeros((8, 8)), Latency(0.0)))
    try:
        assert node.form == "point" and node.trajectory_pub is None and node.gripper_pub is None
    finally:
        node.destroy_node()


def test_the_ros2_control_arm_driver_reads_and_commands_through_the_description(ros_context):
    """make_arm("ros2_control", robot_description=fr3.yaml) (tools: calibration, scripts): joint states in
    fr3 names come back in the policy's order and units; a target goes to the JTC in fr3 names (the
    gripper not among them) and the gripper to its own controller; the stand-in takes both."""
    from vla_robot.drivers.base import make_arm
    from vla_robot.nodes.standin_jtc import StandinJtc, StandinJtcConfig

    d = load_description(FR3)
    jtc = StandinJtc(context=ros_context, config=StandinJtcConfig(arm={
        "session": "fr3-driver", "realtime": True, "twin": {"robot": "panda", "control_hz": 100.0, "image_size": [16, 16]}}))
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(jtc)
    stop = threading.Event()
    t = threading.Thread(target=lambda: [ex.spin_once(timeout_sec=0.02) for _ in iter(stop.is_set, True)], daemon=True)
    t.start()
    arm = make_arm("ros2_control", robot="panda", robot_description=FR3, timeout_s=15.0)
    try:
        arm.connect()
        assert arm.joint_names == d.names()
        target = d.home + np.array([0.1, 0, 0, 0, 0, 0, 0, 0.5])
        assert wait(lambda: (arm.command(target), np.allclose(arm.read()[0], target, atol=0.03))[1], 15), arm.read()
        counts = jtc.counts()
        assert counts["rejected"] == {} and counts["accepted"] > 0 and counts["gripper_commands"] > 0, counts
    finally:
        arm.close()
        stop.set()
        t.join(timeout=2)
        ex.shutdown()
        jtc.close()
        jtc.destroy_node()


def test_an_estop_during_homing_stops_the_arm_where_it_is_and_no_episode_drives(ros_context):
    """The e-stop cuts the homing trajectory short (a hold at the measured pose, stamped 0, replaces it
    at once) and, with the arm not home, a start does not make the policy drive."""
    from std_msgs.msg import Bool

    d = load_description(FR3)
    rig = InProcess(ros_context, np.tile(d.home, (8, 1)).astype(np.float32))
    try:
        estop = rig.op.node.create_publisher(Bool, "/estop", common.LATCHED_QOS)
        off = d.home.copy()
        off[0] += 0.4  # far from home, so the homing move is still under way when the e-stop comes
        rig.op.jtc_pub.publish(convert.arm_trajectory_msg(off[None], 1.0, d, 0.0, "test"))
        assert wait(lambda: abs(rig.op.q(d)[0] - off[0]) < 0.05, 20), rig.op.q(d)
        n_test = len(rig.op.seen("jtc"))
        rig.event(type="reset", episode=0)
        assert wait(lambda: any(m.header.frame_id == "reset" for _, m in rig.op.seen("jtc")[n_test:]), 10)
        estop.publish(Bool(data=True))
        assert wait(lambda: any(m.header.frame_id == "estop" for _, m in rig.op.seen("jtc")), 10), \
            [m.header.frame_id for _, m in rig.op.seen("jtc")]
        time.sleep(0.3)
        q = rig.op.q(d)
        n_sent = len(rig.op.seen("jtc"))
        estop.publish(Bool(data=False))
        rig.event(type="start", episode=0, instruction="reach")
        time.sleep(1.0)
        # stopped, and stays: not home, so no episode drives and nothing moves the arm on. (Measured, the
        # twin's arm still settles a few hundredths of a radian into the hold: that is its servo, not a command)
        after = [m.header.frame_id for _, m in rig.op.seen("jtc")[n_sent:]]
        assert set(after) <= {"hold", "estop"}, after
        assert not [m for _, m in rig.op.seen("jtc") if m.header.frame_id.startswith("policy")]
        assert np.allclose(rig.op.q(d), q, atol=0.05)
        assert not any(e["type"] == "homed" for _, e in rig.op.seen("policy"))
    finally:
        rig.close()
