"""`vla-robot operator`: the console a person uses beside ``ros2 launch`` (works over SSH, in tmux).

It shows the episode state, the start condition to set up next, the acting policy version and the
success rate per version; single keys start (and confirm a reset), label, discard, stop, e-stop and
release. On a terminal it draws with curses; without one (a pipe) it prints each change and reads
keys from stdin.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time


def operator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manager", default="/episode_manager_node",
                        help="the episode manager node whose ~/start, ~/stop, ~/discard services to call")
    parser.add_argument("--plain", action="store_true", help="no full-screen drawing: print each change")


def operator(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from vla_robot.operator.console import Console
    from vla_robot.operator.ros import OperatorNode

    console = Console(manager=args.manager)
    ctx = rclpy.Context()
    # Ctrl-C is a KeyboardInterrupt here (the screen is put back first), not rclpy's context shutdown
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = OperatorNode(console, manager=args.manager, context=ctx)
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True, name="operator-ros")
    spinner.start()
    try:
        if sys.stdin.isatty() and sys.stdout.isatty() and not args.plain:
            import curses

            curses.wrapper(_screen, console, node)
        else:
            _plain(console, node)
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return 0


def _screen(stdscr, console, node) -> None:  # pragma: no cover - needs a terminal (tested in tmux)
    import curses

    try:
        curses.curs_set(0)
    except curses.error:
        pass
    stdscr.timeout(100)  # redraw ten times a second while no key comes
    while True:
        stdscr.erase()
        height, width = stdscr.getmaxyx()
        for y, line in enumerate(console.lines()[: height - 1]):
            attr = curses.A_REVERSE | curses.A_BOLD if line.startswith("*** E-STOP") else curses.A_NORMAL
            stdscr.addnstr(y, 0, line, max(1, width - 1), attr)
        stdscr.refresh()
        ch = stdscr.getch()
        if ch == -1 or not 0 <= ch < 256:
            continue
        cmd = console.key(chr(ch))
        if cmd is not None and cmd.kind == "quit":
            return
        node.execute(cmd)


def _plain(console, node) -> None:
    """No terminal: print the screen when it changes, take keys from stdin (one character each)."""
    keys: list[str] = []
    closed = threading.Event()

    def read() -> None:
        while True:
            c = sys.stdin.read(1)
            if not c:
                closed.set()
                return
            keys.append(c)

    threading.Thread(target=read, daemon=True, name="operator-keys").start()
    shown = None
    while True:
        lines = console.lines()
        if lines != shown:
            print("\n".join(lines) + "\n", flush=True)
            shown = lines
        while keys:
            k = keys.pop(0)
            if k in "\r\n":
                continue  # the Enter after each typed key of a line-buffered pipe (SPACE starts)
            cmd = console.key(k)
            if cmd is not None and cmd.kind == "quit":
                return
            node.execute(cmd)
        if closed.is_set() and not keys:
            time.sleep(0.5)  # let the last command's answer arrive and print
            print("\n".join(console.lines()), flush=True)
            return
        time.sleep(0.05)
