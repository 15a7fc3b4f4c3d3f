#!/usr/bin/env bash
# Set up everything `make test` and `make demo` need on a fresh machine, and nothing twice:
#   1. Debian packages: libusb (pyrealsense2 imports it), Mesa EGL (MuJoCo renders headless),
#      chromium + chromium-driver and tmux (the operator console's web page and terminal, tested for real).
#   2. A virtual environment in .venv with the pinned set (requirements.txt) and the ROS 2 wheels
#      (requirements-ros.txt; skipped when a ROS 2 install is sourced: its rclpy is used instead).
#   3. vla_robot itself, editable.
# The venv is reused while requirements*.txt and setup.py are unchanged (hash in .venv/.installed).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
DEBS="libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libgles2 chromium chromium-driver tmux"

missing=""
for p in $DEBS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

REQS="requirements.txt"
if [ -z "${ROS_DISTRO:-}" ]; then REQS="$REQS requirements-ros.txt"; fi
want=$(cat $REQS setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.installed" ] && [ "$(cat $VENV/.installed)" = "$want" ]; then
  exit 0
fi

echo "[setup] building $VENV (first time: about 3-4 minutes, ~9 GB)"
if [ -n "${ROS_DISTRO:-}" ]; then
  # Share the sourced ROS 2 install's rclpy and messages with the venv.
  $PY -m venv --system-site-packages "$VENV"
else
  $PY -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
args=""
for r in $REQS; do args="$args -r $r"; done
"$VENV/bin/python" -m pip install --progress-bar off $args
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$VENV/.installed"
echo "[setup] done"
