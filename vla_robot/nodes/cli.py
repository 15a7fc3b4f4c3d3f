"""`vla-robot launch GRAPH`: run a bringup graph (the nodes ros2 launch would start).

On a robot each node runs in its own process, as ``ros2 launch`` runs them (``--processes``, the
default without ``--sim``): the policy node's timer then holds its rate while the recorder encodes
video. With ``--sim`` the lockstep graph runs in this process.

    vla-robot launch rl_finetune --sim --serve tiny --episodes 4
    vla-robot launch evaluate --policy-server tcp://gpu-box:5555 --set episode_manager_node.max_duration_s=20

``--set node.key=value`` overrides one parameter of one node (value in YAML syntax, dotted keys for
nested configs: ``policy_node.control.safety.velocity_scale=0.3``). Without ``--episodes`` the graph
runs until Ctrl-C; with it, the command runs that many episodes, prints a summary and exits.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def launch_args(parser: argparse.ArgumentParser) -> None:
    from vla_robot.bringup import ARM_DRIVERS, GRAPHS
    from vla_robot.twin.robots import DEFAULT_ROBOT, ROBOT_NAMES

    parser.add_argument("graph", choices=GRAPHS, help="which node graph to run")
    parser.add_argument("--sim", action="store_true", help="the MuJoCo twin is the arm, the cameras and the success check")
    parser.add_argument("--robot", default=DEFAULT_ROBOT, choices=ROBOT_NAMES)
    parser.add_argument("--arm-driver", default="lerobot", choices=ARM_DRIVERS)
    parser.add_argument("--policy-server", default="", help="ZMQ address of a running policy server")
    parser.add_argument("--serve", default=None, metavar="PRESET_OR_DIR",
                        help="also start a policy server in this process (a preset such as 'tiny', or a checkpoint folder)")
    parser.add_argument("--task", default="",
                        help="a task NAME (sim: the twin's scene, reach or pick_place; robot: a short name of what "
                             "the arm does); the words the policy reads go in --instruction")
    parser.add_argument("--instruction", default="",
                        help="the WORDS the policy reads, e.g. 'touch the red cube' (robot: default the task's "
                             "text; sim: the twin scene's own)")
    parser.add_argument("--config", default=None, help="parameter file to use instead of config/<graph>.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.KEY=VALUE",
                        help="override one node parameter (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="NODE", help="leave a node out (repeatable)")
    parser.add_argument("--episodes", type=int, default=0, help="run this many episodes, then exit (0: run until Ctrl-C)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up on --episodes after this many seconds")
    parser.add_argument("--results", default=None, help="write the episode results as JSON here")
    parser.add_argument("--processes", action=argparse.BooleanOptionalAction, default=None,
                        help="each node in its own process, as ros2 launch runs them (default: on for a robot, "
                             "off with --sim, whose lockstep graph runs in one process)")


def parse_sets(sets: list[str]) -> dict[str, dict]:
    """``["node.key=value", ...]`` -> ``{node: {key: value}}`` (values parsed as YAML)."""
    from vla_robot.config import ConfigError, parse_override

    out: dict[str, dict] = {}
    for text in sets:
        key, value = parse_override(text)
        node, _, param = key.partition(".")
        if not node or not param:
            raise ConfigError(f"--set '{text}' must name a node and a parameter: NODE.KEY=VALUE "
                              "(e.g. episode_manager_node.max_duration_s=20)")
        out.setdefault(node, {})[param] = value
    return out


def launch(args: argparse.Namespace) -> int:
    from vla_robot.config import ConfigError
    from vla_robot.drivers.base import DriverError

    try:
        overrides = parse_sets(args.sets)
        if args.episodes < 0:
            raise ConfigError(f"--episodes must be >= 0, got {args.episodes}")
        if args.episodes:
            overrides.setdefault("episode_manager_node", {}).setdefault("episodes", args.episodes)
        if args.sim:
            import torch  # noqa: F401 - only to keep the in-process server economical on shared CPUs

            torch.set_num_threads(max(1, torch.get_num_threads() // 2))
        from vla_robot.nodes.runner import GraphRunner

        if args.processes if args.processes is not None else not args.sim:
            return _launch_processes(args, overrides)
        if args.sim and not args.serve and not args.policy_server:
            args.serve = "tiny"
            print("vla-robot launch: --sim without --serve or --policy-server: serving the 'tiny' preset in this "
                  "process", file=sys.stderr)

        runner = GraphRunner(
            args.graph, sim=args.sim, robot=args.robot, arm_driver=args.arm_driver, task=args.task,
            instruction=args.instruction,
            config=args.config, policy_server=args.policy_server, serve_policy=args.serve,
            overrides=overrides, exclude=tuple(args.exclude),
        )
        runner.start()
    except ConfigError as e:
        print(f"vla-robot launch: {e}", file=sys.stderr)
        return 2
    except DriverError as e:
        print(f"vla-robot launch: a device did not start: {e}", file=sys.stderr)
        return 1
    try:
        if args.episodes:
            return _run_episodes(runner, args)
        print(f"running graph '{args.graph}' ({', '.join(runner.nodes)}); Ctrl-C to stop", flush=True)
        while runner._spin_thread.is_alive():
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        runner.close()


def _launch_processes(args, overrides: dict) -> int:
    """The graph with a process per node (and the server, with --serve), until Ctrl-C or --episodes are done."""
    from vla_robot.bringup import graph
    from vla_robot.data.schema import Label
    from vla_robot.nodes.processes import ProcessGraph, start_server
    from vla_robot.nodes.runner import with_overrides

    specs = [s for s in graph(args.graph, use_sim=args.sim, robot=args.robot, arm_driver=args.arm_driver,
                              policy_server=args.policy_server, task=args.task, instruction=args.instruction,
                              config=args.config)
             if s.executable not in args.exclude and s.name not in args.exclude]
    specs = with_overrides(specs, overrides, args.graph)  # a bad --set stops here, before any process starts
    server = None
    if args.serve:
        server, address, _ = start_server(args.serve)
        if any(s.name == "policy_node" for s in specs):
            specs = with_overrides(specs, {"policy_node": {"policy_server": address}}, args.graph)
    procs = ProcessGraph(specs).start()
    print(f"running graph '{args.graph}', a process per node ({', '.join(procs.procs)}); Ctrl-C to stop", flush=True)
    watch = _EpisodeWatch() if args.episodes else None
    try:
        deadline = time.monotonic() + (args.timeout if args.episodes else float("inf"))
        while procs.alive() and time.monotonic() < deadline and not (watch and watch.done.wait(0.5)):
            time.sleep(0.0 if watch else 0.5)
        if watch is not None:
            watch.settle(timeout_s=60.0)
    except KeyboardInterrupt:
        pass
    finally:
        codes = procs.stop()
        if server is not None:
            server.send_signal(2)
            server.wait(timeout=30)
        if watch is not None:
            watch.close()
    bad = {u: c for u, c in codes.items() if c not in (0, -2)}
    if bad:
        print(f"vla-robot launch: processes that did not stop cleanly: {bad}", file=sys.stderr)
    if watch is not None:
        saves = [e for e in watch.events if e["type"] == "save"]
        for e in saves:
            print(f"episode {e['episode']}: {e['label']} ({e.get('label_source', '')}), start {e.get('start_condition')}")
        print(f"{sum(e['label'] == Label.SUCCESS for e in saves)}/{len(saves)} successful")
        return 1 if bad or not watch.done.is_set() else 0
    return 1 if bad else 0


class _EpisodeWatch:
    """The episode manager's events, from this process, until it says ``done``."""

    def __init__(self):
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from vla_robot.nodes import common, convert

        self.events: list[dict] = []
        self.done = threading.Event()
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("launch_episode_watch", context=self.context)

        self.recorded: list[dict] = []  # the recorder's saved / save_failed reports

        def on_event(msg):
            ev = convert.msg_to_event(msg)
            self.events.append(ev)
            if ev["type"] == "done":
                self.done.set()

        self.node.create_subscription(String, common.EPISODE_EVENTS, on_event, common.EPISODE_EVENT_QOS)
        self.node.create_subscription(String, "recorder/events", lambda m: self.recorded.append(convert.msg_to_event(m)),
                                      common.EVENT_QOS)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        # spun in short steps until close() asks it to stop, then joined: a thread still inside rclpy when
        # the interpreter exits aborts the process ("terminate called without an active exception")
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.1)

    def settle(self, timeout_s: float) -> None:
        """Until the recorder has reported every saved episode durable (or failed), so stopping loses none."""
        deadline = time.monotonic() + timeout_s
        saves = sum(e["type"] == "save" for e in self.events)
        while len(self.recorded) < saves and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self.thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _run_episodes(runner, args) -> int:
    from tqdm import tqdm

    bar = tqdm(total=args.episodes, desc=f"{args.graph} episodes", unit="ep", disable=None)
    results: list = []
    deadline = time.monotonic() + args.timeout
    while len(results) < args.episodes and time.monotonic() < deadline:
        got = runner.run_episodes(1, timeout_s=max(1.0, deadline - time.monotonic()))
        if not got:
            break
        results.extend(got)
        bar.update(len(got))
        bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
        if runner.episode_manager.core.state == "done":
            break
    bar.close()
    for r in results:
        print(f"episode {r.index}: {r.label:<10} ({r.end_reason}{', ' + r.fault if r.fault else ''}) "
              f"{r.steps} steps, {r.duration_s:.2f} s, start {r.start_condition}, '{r.instruction}'")
    n = len(results)
    print(f"{sum(r.success for r in results)}/{n} successful, {sum(r.end_reason == 'fault' for r in results)} faults")
    if args.results:
        with open(args.results, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=1, default=str)
    return 0 if n == args.episodes else 1
