"""Run a whole bringup graph in one process: every node on one rclpy MultiThreadedExecutor.

The nodes get exactly what ``ros2 launch`` would give them — the graph's parameter files, its
parameter overrides and remappings, as ``--ros-args`` — so the in-process graph *is* the launched
graph. Optionally the policy server runs in the same process (a preset such as ``tiny`` or a
checkpoint folder), bound to a free port on 127.0.0.1.

For programs (the RL loop, tests)::

    from vla_robot.nodes.runner import GraphRunner
    with GraphRunner("rl_finetune", sim=True, serve_policy="tiny",
                     overrides={"episode_manager_node": {"episodes": 8}}) as g:
        results = g.run_episodes(8, timeout_s=300)       # list[EpisodeResult]

``run_single_node`` is every node's ``main()`` (``ros2 run vla_robot <node>``).
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from vla_robot.bringup import NodeSpec, graph
from vla_robot.config import ConfigError

__all__ = ["GraphRunner", "run_single_node", "spin_nodes", "node_class", "node_kwargs", "with_overrides"]


def node_class(spec_or_executable: NodeSpec | str) -> type:
    """The Node class of an executable: ``vla_robot.nodes.<executable>.NODE_CLASS``."""
    exe = spec_or_executable.executable if isinstance(spec_or_executable, NodeSpec) else spec_or_executable
    module = importlib.import_module(f"vla_robot.nodes.{exe}")
    cls = getattr(module, "NODE_CLASS", None)
    if cls is None:  # fall back to the one Node subclass the module defines
        found = [v for v in vars(module).values()
                 if isinstance(v, type) and issubclass(v, Node) and v.__module__ == module.__name__]
        if len(found) != 1:
            raise RuntimeError(f"vla_robot.nodes.{exe} must define NODE_CLASS (its rclpy Node class)")
        cls = found[0]
    return cls


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def with_overrides(specs: list[NodeSpec], overrides: dict[str, dict[str, Any]], graph_name: str) -> list[NodeSpec]:
    """``specs`` with ``{node: {key: value}}`` (``--set``) added to each node's overrides, nested keys dotted.

    A node that is not in the graph is a ConfigError that lists the graph's nodes."""
    import dataclasses

    names = [s.name for s in specs]
    unknown = set(overrides) - set(names)
    if unknown:
        raise ConfigError(f"--set names nodes that are not in graph '{graph_name}': {sorted(unknown)}; "
                          f"its nodes: {', '.join(names)}")
    return [dataclasses.replace(s, overrides=s.overrides + tuple(_flatten(overrides.get(s.name, {})).items()))
            for s in specs]


def node_kwargs(spec: NodeSpec, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor keywords that give a node what ``ros2 launch`` gives it for ``spec``."""
    cli = ["--ros-args"]
    for f in spec.parameters:
        if not Path(f).is_file():
            raise ConfigError(f"parameter file {f} of node '{spec.name}' not found")
        cli += ["--params-file", str(f)]
    for src, dst in spec.remappings:
        cli += ["-r", f"{src}:={dst}"]
    merged = _flatten({**spec.parameter_dict(), **(overrides or {})})
    params = [Parameter(k, value=v) for k, v in merged.items() if v is not None]
    kw: dict[str, Any] = {"cli_args": cli, "use_global_arguments": False, "parameter_overrides": params}
    if spec.namespace:
        kw["namespace"] = spec.namespace
    return kw


class GraphRunner:
    """A bringup graph, running in this process (see the module docstring)."""

    def __init__(
        self,
        graph_name: str,
        *,
        sim: bool = False,
        robot: str = "so101",
        arm_driver: str = "lerobot",
        task: str = "",
        instruction: str = "",
        config: str | None = None,
        policy_server: str = "",
        serve_policy: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        exclude: tuple[str, ...] = (),
        node_extra: dict[str, dict[str, Any]] | None = None,
        scheduler: Any = None,
        threads: int = 4,
        domain_id: int | None = None,
        log_level: str | None = None,
    ):
        self.specs = [s for s in graph(graph_name, use_sim=sim, robot=robot, arm_driver=arm_driver,
                                       policy_server=policy_server, task=task, config=config,
                                       instruction=instruction)
                      if s.executable not in exclude and s.name not in exclude]
        self.graph_name = graph_name
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        unknown = set(self.overrides) - {s.name for s in self.specs}
        if unknown:
            raise ConfigError(f"overrides for nodes not in graph '{graph_name}': {sorted(unknown)}; "
                              f"its nodes: {', '.join(s.name for s in self.specs)}")
        self.serve_policy = serve_policy
        self.node_extra = node_extra or {}
        self.scheduler = scheduler
        self.threads = threads
        self.domain_id = domain_id
        self.log_level = log_level  # the nodes' ROS log level ("warn": only what needs a look); None: ROS's default
        self.context: rclpy.Context | None = None
        self.executor: MultiThreadedExecutor | None = None
        self.nodes: dict[str, Node] = {}
        self.server = None
        self.results: list = []
        self.recorder_events: list[dict] = []
        self._monitor: Node | None = None
        self._results_cv = threading.Condition()
        self._spin_thread: threading.Thread | None = None

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> "GraphRunner":
        self.context = rclpy.Context()
        init_kw = {"context": self.context,
                   "args": ["--ros-args", "--log-level", self.log_level] if self.log_level else []}
        if self.domain_id is not None:
            init_kw["domain_id"] = self.domain_id
        rclpy.init(**init_kw)
        try:
            if self.serve_policy:
                self._start_server()
            for spec in self.specs:
                self._add_node(spec)
            self.executor = MultiThreadedExecutor(num_threads=self.threads, context=self.context)
            for node in self.nodes.values():
                self.executor.add_node(node)
            if any(s.executable == "recorder_node" for s in self.specs):
                self._monitor = self._make_recorder_monitor()
                self.executor.add_node(self._monitor)
            self.wait_for_connections()  # discovery runs in DDS threads: no spinning needed, no episode starts early
            self._spin_thread = threading.Thread(target=self._spin, daemon=True, name=f"graph:{self.graph_name}")
            self._spin_thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def _start_server(self) -> None:
        from vla_robot.policy import load_policy
        from vla_robot.serving.server import PolicyServer

        import torch

        # The model shares this process with every node's threads: one intra-op thread, so torch's
        # spinning OpenMP workers do not starve the camera, arm and control loops of CPU.
        torch.set_num_threads(1)
        src = self.serve_policy
        runtime = load_policy(checkpoint=src) if os.path.isdir(src) else load_policy(preset=src, seed=0)
        self.server = PolicyServer(runtime, bind="tcp://127.0.0.1:*", weights_bind="tcp://127.0.0.1:*").start()
        for spec in self.specs:
            if spec.executable == "policy_node":
                self.overrides.setdefault(spec.name, {})["policy_server"] = self.server.address

    def _add_node(self, spec: NodeSpec) -> None:
        cls = node_class(spec)
        kw = node_kwargs(spec, self.overrides.get(spec.name))
        kw.update(self.node_extra.get(spec.name, {}))
        if spec.executable in ("teleop_node", "episode_manager_node"):
            # one terminal, one reader: the operator's keys when recording demos, else the label prompt
            owner = "teleop_node" if self.graph_name == "record_demos" else "episode_manager_node"
            kw.setdefault("use_terminal", spec.executable == owner)
        if spec.executable == "episode_manager_node":
            kw.setdefault("scheduler", self.scheduler)
            kw.setdefault("on_result", self._on_result)
        try:
            node = cls(spec.name, context=self.context, **kw)
        except ConfigError as e:
            raise ConfigError(f"node '{spec.name}' did not start: {e}") from None
        self.nodes[spec.name] = node

    def _make_recorder_monitor(self) -> Node:
        """A helper node that counts the recorder's saved / save_failed reports (see :meth:`settle`)."""
        from std_msgs.msg import String

        from vla_robot.nodes import common, convert

        node = rclpy.create_node("graph_runner_monitor", context=self.context)

        def on_event(msg):
            try:
                ev = convert.msg_to_event(msg)
            except ValueError:
                return
            with self._results_cv:
                self.recorder_events.append(ev)
                self._results_cv.notify_all()

        node.create_subscription(String, "recorder/events", on_event, common.EVENT_QOS)
        return node

    def settle(self, timeout_s: float = 30.0) -> bool:
        """Wait until the recorder has reported every saved episode as durable (or failed); True when it has."""
        if self._monitor is None:
            return True
        deadline = time.monotonic() + timeout_s
        with self._results_cv:
            while True:
                want = sum(r.saved for r in self.results)
                have = sum(e.get("type") in ("saved", "save_failed") for e in self.recorder_events)
                left = deadline - time.monotonic()
                if have >= want or left <= 0:
                    return have >= want
                self._results_cv.wait(timeout=min(left, 0.2))

    def wait_for_connections(self, timeout_s: float = 15.0) -> bool:
        """Wait until every subscription in the graph is matched to every publisher of its topic in the
        graph (DDS discovery), so nothing published at the start is lost. False on timeout."""
        pubs: dict[str, int] = {}
        nodes = list(self.nodes.values()) + ([self._monitor] if self._monitor is not None else [])
        for node in nodes:
            for p in node.publishers:
                pubs[p.topic_name] = pubs.get(p.topic_name, 0) + 1
        subs = [s for node in nodes for s in node.subscriptions
                if s.topic_name in pubs and s.topic_name != "/parameter_events"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            missing = [s.topic_name for s in subs if s.get_publisher_count() < pubs[s.topic_name]]
            if not missing:
                return True
            time.sleep(0.05)
        first = next(iter(self.nodes.values()), None)
        if first is not None:
            first.get_logger().warning(f"graph not fully connected after {timeout_s:.0f} s: {sorted(set(missing))}")
        return False

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass

    def close(self, settle_s: float = 10.0) -> None:
        """Stop the graph; first give the recorder up to ``settle_s`` to make the last episodes durable."""
        if self.executor is not None and self._spin_thread is not None and self._spin_thread.is_alive():
            self.settle(settle_s)
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=5.0)
        if self._spin_thread is not None:  # no callback may run on a node being destroyed
            self._spin_thread.join(timeout=5.0)
        if self._monitor is not None:
            self._monitor.destroy_node()
            self._monitor = None
        for node in list(self.nodes.values())[::-1]:
            close = getattr(node, "close", None)
            try:
                if callable(close):
                    close()
                node.destroy_node()
            except Exception:  # noqa: BLE001 - tear everything down regardless
                pass
        self.nodes.clear()
        if self.context is not None and self.context.ok():
            rclpy.shutdown(context=self.context)
        self.stop_policy_server()

    def __enter__(self) -> "GraphRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def stop_policy_server(self) -> None:
        """Stop the in-process policy server (the policy node's watchdog then holds the arm)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    # --- episodes -------------------------------------------------------------------------------
    @property
    def episode_manager(self):
        for node in self.nodes.values():
            if hasattr(node, "core") and node.__class__.__name__ == "EpisodeManagerNode":
                return node
        raise RuntimeError(f"graph '{self.graph_name}' has no episode manager")

    def _on_result(self, result) -> None:
        with self._results_cv:
            self.results.append(result)
            self._results_cv.notify_all()

    def wait_for_results(self, n: int, timeout_s: float = 600.0, progress: Callable | None = None) -> list:
        """Block until ``n`` episode results are in (or the timeout passes); returns them all."""
        deadline = time.monotonic() + timeout_s
        with self._results_cv:
            while len(self.results) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not self._spin_thread.is_alive():
                    break
                self._results_cv.wait(timeout=min(left, 0.5))
                if progress is not None:
                    progress(len(self.results))
            return list(self.results)

    def run_episodes(self, n: int, timeout_s: float = 600.0) -> list:
        """Run ``n`` more episodes (starting each when the manager does not autostart) and return their results."""
        em = self.episode_manager
        target = len(self.results) + n
        deadline = time.monotonic() + timeout_s
        while len(self.results) < target and time.monotonic() < deadline:
            if not em.config.autostart and em.core.state == em.core.IDLE:
                em.core.start()
            done = len(self.results)
            self.wait_for_results(done + 1, timeout_s=min(1.0, max(0.0, deadline - time.monotonic())))
            if em.core.state == em.core.DONE:
                # the manager turns DONE as it closes its last episode, a moment before that episode's
                # result reaches us: give it time to arrive instead of returning without it
                self.wait_for_results(target, timeout_s=min(5.0, max(0.0, deadline - time.monotonic())))
                break
        return self.results[target - n:]

    def record_episodes(self, n: int, timeout_s: float = 600.0, on_episode: Callable | None = None) -> list:
        """:meth:`run_episodes` with the recorder: wait until it has opened its dataset, run ``n``
        episodes one by one (``on_episode(results, recorder)`` after each), then wait until it has
        saved every episode the manager kept. Raises ``RuntimeError`` if the recorder never opens."""
        session = self.nodes["recorder_node"].session
        # count from now: with autostart, episodes also end between our calls, and on a loaded machine the
        # first one can end before the recorder reports ready (it records it all the same)
        first = seen = len(self.results)
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        if not session.ready.wait(max(1.0, min(180.0, deadline - t0))) or session.recorder is None:
            raise RuntimeError("the recorder could not open the dataset (no camera images / joint states, or an error above)")
        while seen - first < n and time.monotonic() < deadline:
            self.run_episodes(1, timeout_s=max(1.0, deadline - time.monotonic()))
            now = min(len(self.results), first + n)
            if now == seen:
                break
            for i in range(seen + 1, now + 1):
                if on_episode is not None:
                    on_episode(self.results[first:i], session.recorder)
            seen = now
        results = self.results[first:seen]
        # the recorder saves after the episode manager's save event: wait until it has done so
        want = sum(r.saved for r in results)
        while session.finished < want and time.monotonic() < deadline + 60:
            time.sleep(0.05)
        return results


def run_single_node(cls: type, args: list[str] | None = None) -> None:
    """``main()`` of every node (``ros2 run vla_robot <node>``): see :func:`spin_nodes`."""
    spin_nodes([(cls, {})], init_args=args)


def spin_nodes(builders: list[tuple[type, dict[str, Any]]], init_args: list[str] | None = None) -> None:
    """rclpy.init, build each ``(cls, kwargs)``, spin on one MultiThreadedExecutor, shut down cleanly.

    The first SIGINT or SIGTERM asks for a clean stop: spinning ends, callbacks in flight finish, then
    every node closes (the recorder finishes its episode files) while the ROS context is still valid,
    and the process exits 0. Further signals are ignored: under ``ros2 launch`` one Ctrl-C delivers two
    SIGINTs (launch's and the terminal's, which reaches the whole process group), and a second
    KeyboardInterrupt in the middle of a close, or a close after rclpy's own handler shut the context
    down (``RCLError: publisher's context is invalid``), would end in tracebacks and a non-zero status.
    launch's SIGKILL escalation still ends a process that does not stop. Bad parameters stop the
    process at start with the key named (exit status 2); a device that does not start, with status 1.
    """
    import signal

    from rclpy.signals import SignalHandlerOptions

    from vla_robot.drivers.base import DriverError

    stop = threading.Event()

    def on_signal(signum, frame) -> None:  # noqa: ARG001 - no printing here: it may interrupt a print
        stop.set()
        # from now on ignored, at the OS level: Python's finalization puts back the default handler of a
        # signal it handles, and a second SIGINT arriving then would kill the stopped process with -2
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)

    # ours, not rclpy's: rclpy's handler shuts the context down at once, before the nodes have closed
    rclpy.init(args=init_args, signal_handler_options=SignalHandlerOptions.NO)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    nodes = []
    try:
        for cls, kwargs in builders:
            nodes.append(cls(**kwargs))
    except (ConfigError, DriverError) as e:
        what = "bad parameters, not starting" if isinstance(e, ConfigError) else "a device did not start"
        print(f"[{builders[len(nodes)][0].__name__}] {what}: {e}", file=sys.stderr)
        for node in nodes:
            _close_node(node)
        rclpy.try_shutdown()
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    executor = MultiThreadedExecutor(num_threads=4)
    for node in nodes:
        executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.2)  # bounded: a signal is seen within 0.2 s
    except ExternalShutdownException:
        pass
    executor.shutdown(timeout_sec=10.0)  # callbacks in flight finish; none starts on a node being closed
    failed = []
    for node in nodes:
        try:
            _close_node(node)
        except Exception as e:  # noqa: BLE001 - close every node, then say which one failed
            failed.append(f"{type(node).__name__}: {e!r}")
    rclpy.try_shutdown()
    if failed:
        print("closing failed: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


def _close_node(node) -> None:
    close = getattr(node, "close", None)
    if callable(close):
        close()
    node.destroy_node()
