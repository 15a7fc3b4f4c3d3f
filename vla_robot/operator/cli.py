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
    parser.add_argument("--web", metavar="[HOST:]PORT", default="",
                        help="also serve the console as a web page (e.g. 8088 on loopback; 0.0.0.0:8088 for a phone "
                             "on the robot's network: a token is then required and printed)")
    parser.add_argument("--token", default=None, help="the web page's token (default: made up when bound beyond loopback)")
    parser.add_argument("--cameras", default="front,wrist", help="camera views on the web page (comma-separated)")


def operator(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from vla_robot.operator.console import Console
    from vla_robot.operator.ros import OperatorNode

    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops as cleanly as Ctrl-C
    console = Console(manager=args.manager)
    ctx = rclpy.Context()
    # Ctrl-C is a KeyboardInterrupt here (the screen is put back first), not rclpy's context shutdown
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    cameras = tuple(c for c in args.cameras.split(",") if c) if args.web else ()
    try:
        web_host, web_port = _host_port(args.web) if args.web else ("", 0)
    except ValueError as e:
        print(f"vla-robot operator: {e}", file=sys.stderr)
        rclpy.try_shutdown(context=ctx)
        return 2
    node = OperatorNode(console, manager=args.manager, cameras=cameras, context=ctx)
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True, name="operator-ros")
    spinner.start()
    web = None
    try:
        if args.web:
            from vla_robot.operator.web import OperatorWeb

            try:
                web = OperatorWeb(console, node, host=web_host, port=web_port, token=args.token,
                                  cameras=cameras).start()
            except OSError as e:
                print(f"vla-robot operator: cannot serve the web page on {args.web}: {e}", file=sys.stderr)
                return 2
            print(f"operator web page: {web.url}", flush=True)
        if args.web and not sys.stdin.isatty():
            threading.Event().wait()  # the page is the console; Ctrl-C (SIGINT) stops
        elif sys.stdin.isatty() and sys.stdout.isatty() and not args.plain:
            import curses

            curses.wrapper(_screen, console, node)
        else:
            _plain(console, node)
    except KeyboardInterrupt:
        pass
    finally:
        if web is not None:
            web.close()
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=5.0)  # no thread may be inside rclpy when its context goes
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        n = int(port)
    except ValueError:
        n = -1
    if not 0 <= n < 65536:
        raise ValueError(f"--web takes [HOST:]PORT (e.g. 8088 or 0.0.0.0:8088), got {text!r}")
    return host.strip("[]") or "127.0.0.1", n


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
