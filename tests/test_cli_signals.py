"""SIGINT stops a long-running command even when its parent started it with SIGINT ignored (a script's
`cmd &`, a CI runner): Python installs no KeyboardInterrupt handler then, and `kill -INT` did nothing."""
import os
import signal
import subprocess
import sys
import time


def test_serve_stops_on_sigint_inherited_as_ignored(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "vla_robot.cli", "serve", "--preset", "tiny", "--bind", "tcp://127.0.0.1:*",
                          "--weights-bind", "tcp://127.0.0.1:*"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        for line in p.stdout:
            if "Ctrl-C stops" in line or time.monotonic() > deadline:
                break
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and "Traceback" not in rest, rest
    finally:
        if p.poll() is None:
            p.kill()
