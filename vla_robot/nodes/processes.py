"""A node graph as separate processes, the way ``ros2 launch`` runs it.

Each process is ``python -m vla_robot.nodes.processes SPECS.json``: it builds the nodes listed in
SPECS.json with exactly what ``ros2 launch`` (and :class:`~vla_robot.nodes.runner.GraphRunner`) give
them (:func:`~vla_robot.nodes.runner.node_kwargs`: parameter files, overrides, remappings), spins them
on one executor and shuts them down cleanly on SIGINT or SIGTERM. One node per process is the
default; nodes that must share memory go in one group (the twin's stand-in hardware: camera_node
and arm_node read one in-process simulation, as a camera and an arm share one physical world).

Separate processes matter on the robot PC: the nodes do not share one GIL, so the policy node's
timer holds its rate while the recorder encodes video, and a QoS mismatch that one process would hide
shows up (the first episode of a graph whose nodes start at different times, for example)::

    with ProcessGraph(specs, log_dir="runs/x/logs", groups={"hardware": ("camera_node", "arm_node")}) as g:
        ...                       # every process runs; g.alive() names the ones that still do
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vla_robot.bringup import NodeSpec

__all__ = ["ProcessGraph", "write_specs", "read_specs", "start_server", "wait_for_server", "free_port"]


def write_specs(specs: Sequence[NodeSpec], path: Path) -> Path:
    path.write_text(json.dumps([dataclasses.asdict(s) for s in specs], indent=1))
    return path


def read_specs(path: str | Path) -> list[NodeSpec]:
    out = []
    for d in json.loads(Path(path).read_text()):
        d["parameters"] = tuple(d["parameters"])
        d["overrides"] = tuple((k, v) for k, v in d["overrides"])
        d["remappings"] = tuple((a, b) for a, b in d["remappings"])
        out.append(NodeSpec(**d))
    return out


class ProcessGraph:
    """Start ``specs`` as processes (one per node, or per group); stop them with SIGINT, then SIGKILL."""

    def __init__(self, specs: Sequence[NodeSpec], log_dir: str | Path | None = None, *,
                 groups: Mapping[str, Sequence[str]] | None = None, env: Mapping[str, str] | None = None):
        """``log_dir``: each process's output in ``<unit>.log`` there; None: on this terminal, as ros2 launch."""
        names = [s.name for s in specs]
        grouped = {n for members in (groups or {}).values() for n in members}
        unknown = grouped - set(names)
        if unknown:
            raise ValueError(f"groups name nodes that are not in the graph: {sorted(unknown)}; nodes: {names}")
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.env = {**os.environ, **(env or {})}
        self.units: dict[str, list[NodeSpec]] = {}
        for gname, members in (groups or {}).items():
            self.units[gname] = [s for s in specs if s.name in members]
        for s in specs:
            if s.name not in grouped:
                self.units[s.name] = [s]
        self.procs: dict[str, subprocess.Popen] = {}
        self._spec_tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> ProcessGraph:
        if self.log_dir is None:
            self._spec_tmp = tempfile.TemporaryDirectory(prefix="vla_robot_graph_")  # removed by stop()
        spec_dir = self.log_dir or Path(self._spec_tmp.name)
        spec_dir.mkdir(parents=True, exist_ok=True)
        for unit, specs in self.units.items():
            spec_file = write_specs(specs, spec_dir / f"{unit}.nodes.json")
            log = open(self.log_dir / f"{unit}.log", "ab") if self.log_dir else None  # noqa: SIM115
            self.procs[unit] = subprocess.Popen(
                [sys.executable, "-m", "vla_robot.nodes.processes", str(spec_file)],
                stdout=log, stderr=subprocess.STDOUT if log else None, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop the children once
            )
            if log is not None:
                log.close()
        return self

    def alive(self) -> list[str]:
        return [u for u, p in self.procs.items() if p.poll() is None]

    def exited(self) -> dict[str, int]:
        """Processes that have ended, with their exit status."""
        return {u: p.returncode for u, p in self.procs.items() if p.poll() is not None}

    def log_text(self, unit: str) -> str:
        path = self.log_dir / f"{unit}.log" if self.log_dir else None
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""

    def stop(self, timeout_s: float = 20.0, order: Sequence[str] = ()) -> dict[str, int]:
        """SIGINT each process (those in ``order`` first, each waited for), SIGKILL what outlives ``timeout_s``."""
        first = [u for u in order if u in self.procs]
        rest = [u for u in self.procs if u not in first]
        deadline = time.monotonic() + timeout_s
        for u in first:
            self._interrupt(u)
            self._wait(u, deadline)
        for u in rest:
            self._interrupt(u)
        for u in rest:
            self._wait(u, deadline)
        if self._spec_tmp is not None:
            self._spec_tmp.cleanup()
            self._spec_tmp = None
        return {u: p.returncode for u, p in self.procs.items()}

    def _interrupt(self, unit: str) -> None:
        p = self.procs[unit]
        if p.poll() is None:
            p.send_signal(signal.SIGINT)

    def _wait(self, unit: str, deadline: float) -> None:
        p = self.procs[unit]
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> ProcessGraph:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(source: str, log: Path | None = None, env: Mapping[str, str] | None = None,
                 weights: bool = False) -> tuple[subprocess.Popen, str, str]:
    """``vla-robot serve`` of a preset or checkpoint folder on free loopback ports, once it answers.

    Returns the process, its request address and its weights address ('' unless ``weights``)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    weights_address = f"tcp://127.0.0.1:{free_port()}" if weights else ""
    kind = "--checkpoint" if Path(source).is_dir() else "--preset"
    out = open(log, "ab") if log else None  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([sys.executable, "-m", "vla_robot.cli", "serve", kind, source, "--bind", address,
                             "--weights-bind", weights_address, "--http-port", "-1"],
                            stdout=out, stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    if out is not None:
        out.close()
    try:
        wait_for_server(address, proc, log)
    except BaseException:
        proc.kill()
        raise
    return proc, address, weights_address


def wait_for_server(address: str, proc: subprocess.Popen, log: Path | None = None, timeout_s: float = 300.0) -> None:
    """Until the server at ``address`` answers (it loads the policy first); its log if it died instead."""
    from vla_robot.serving.client import PolicyClient, PolicyTimeout

    deadline = time.monotonic() + timeout_s
    with PolicyClient(address, timeout_s=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log is not None and log.is_file() else ""
                raise RuntimeError(f"the policy server exited ({proc.returncode})" + (f":\n{tail}" if tail else ""))
            try:
                client.metadata(timeout_s=2.0)
                return
            except PolicyTimeout:
                pass
    raise RuntimeError(f"the policy server at {address} did not answer within {timeout_s:.0f} s"
                       + (f"; see {log}" if log else ""))


def main(argv: list[str] | None = None) -> None:
    """The process host: the nodes of one SPECS.json file, until SIGINT or SIGTERM."""
    from vla_robot.nodes.runner import node_class, node_kwargs, spin_nodes

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m vla_robot.nodes.processes SPECS.json", file=sys.stderr)
        sys.exit(2)
    specs = read_specs(argv[0])
    spin_nodes([(node_class(s), node_kwargs(s)) for s in specs])


if __name__ == "__main__":
    main()
