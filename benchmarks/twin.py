"""Twin benchmark: physics steps/s, render fps per camera resolution (reduced vs full meshes, the
baseline, measured in the same run), env step rate with two cameras, mirror updates/s.

    python benchmarks/twin.py [--robot so101] [--quick]

Targets (issue 6, 2-core CPU): render >= 100 fps at 128x128 per camera, physics >= 50x real time,
mirror >= 1 kHz. On a shared machine the figures drop with the load average printed in the header.
"""
import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from vla_robot.twin.bench import run_bench  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--robot", default="so101", choices=["so101", "panda"])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    run_bench(a.robot, quick=a.quick)
