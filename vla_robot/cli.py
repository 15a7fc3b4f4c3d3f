"""`vla-robot`: one command-line entry point for every part of the stack.

Subcommands are implemented next to the code they drive (``vla_robot/<part>/cli.py``) and are
imported only when used, so ``vla-robot --help`` is instant and the robot PC needs no torch to run
``vla-robot launch``. Each entry of :data:`COMMANDS` names ``module:name``; that module provides
``<name>_args(parser)`` to declare the arguments and ``<name>(args) -> int`` to run.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# command -> (module:function, one-line help, the issue that builds it)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("vla_robot.serving.cli:serve", "serve a policy over ZMQ (and OFT-compatible HTTP)"),
    "keygen": ("vla_robot.serving.cli:keygen", "make a CurveZMQ key pair for remote serving"),
    "policy": ("vla_robot.policy.cli:policy", "inspect a checkpoint or preset, run one forward pass"),
    "launch": ("vla_robot.nodes.cli:launch", "run a node graph (rl_finetune, record_demos, evaluate, twin), a process per node as ros2 launch does"),
    "record": ("vla_robot.data.cli:record", "record teleoperated demonstrations into a LeRobotDataset"),
    "evaluate": ("vla_robot.data.cli:evaluate", "run labelled evaluation episodes and write a report"),
    "dataset": ("vla_robot.data.cli:dataset", "inspect, verify, repair or relabel a recorded dataset"),
    "rl-finetune": ("vla_robot.rl.cli:rl_finetune", "improve the policy online from success labels (GRPO)"),
    "learn": ("vla_robot.rl.cli:learn", "run the RL learner on a dataset that is being recorded"),
    "rehearse": ("vla_robot.nodes.rehearse:rehearse",
                 "a real-robot RL session on a stand-in robot: server, graph, learner, a stand-in person"),
    "operator": ("vla_robot.operator.cli:operator",
                 "the console of the person at the robot: start, label, stop, e-stop (beside ros2 launch)"),
    "twin": ("vla_robot.twin.cli:twin", "MuJoCo digital twin: view, mirror, bench, sysid"),
    "calibrate": ("vla_robot.calibration.cli:calibrate", "camera intrinsics and hand-eye calibration"),
    "detector": ("vla_robot.detector.cli:detector", "train a learned success detector, run it on onnxruntime"),
}


# commands that may build the MuJoCo twin or render a scene (calibrate capture --arm sim): they need an
# OpenGL platform chosen before mujoco is imported, or stop with "an OpenGL platform library has not been loaded"
TWIN_COMMANDS = frozenset({"launch", "record", "evaluate", "rl-finetune", "rehearse", "twin", "calibrate", "detector"})


def headless_gl(command: str | None) -> None:
    """Choose MUJOCO_GL=egl (headless rendering, with or without a display) for a twin command, unless the
    user chose a backend. The one place that does it; node processes started from here inherit it."""
    if command in TWIN_COMMANDS:
        os.environ.setdefault("MUJOCO_GL", "egl")
        if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
            os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def _resolve(command: str):
    target, _ = COMMANDS[command]
    module_name, func = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            return None, None
        raise
    return getattr(module, func + "_args"), getattr(module, func)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-robot",
        description="OpenVLA-OFT on a robot arm: serve, drive, record, evaluate, fine-tune with RL, mirror in MuJoCo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            add_args, _ = _resolve(name)
            if add_args is not None:
                add_args(p)
    return parser


def interruptible() -> None:
    """SIGINT stops every command, as its "Ctrl-C stops" says, even when the parent ignored SIGINT.

    A process started in the background of a non-interactive shell (`cmd &` in a script, CI runners)
    inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler: `kill -INT`, or
    a launcher stopping its children with SIGINT as ros2 launch does, would do nothing at all."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    interruptible()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    headless_gl(command)  # before any module that may import mujoco
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _, run = _resolve(args.command)
    if run is None:
        print(
            f"vla-robot {args.command}: not built yet in this version ({COMMANDS[args.command][0].split(':')[0]} "
            "is missing). Nothing was run.",
            file=sys.stderr,
        )
        return 3
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling of it (while loading, say): no traceback
        print(f"vla-robot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
