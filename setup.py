"""ament_python build for vla_robot (colcon build) and a plain pip install (pip install -e .)."""
import os
from glob import glob

from setuptools import find_packages, setup

package_name = "vla_robot"

# Every node has a console script of its own (ros2 run vla_robot <node>); vla-robot is the one CLI.
NODES = [
    "camera_node",
    "arm_node",
    "policy_node",
    "teleop_node",
    "episode_manager_node",
    "standin_person",
    "standin_jtc",
    "recorder_node",
    "twin_node",
]


def tree(folder):
    """data_files entries that install `folder` below share/vla_robot, keeping its sub-folders."""
    entries = {}
    for path in glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path) and "__pycache__" not in path:
            target = os.path.join("share", package_name, os.path.dirname(path))
            entries.setdefault(target, []).append(path)
    return sorted(entries.items())


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks"]),
    package_data={package_name: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("models"),
        *tree("calibration"),
        *tree("sim2real"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vla_robot developers",
    maintainer_email="team@vla-robot.dev",
    description="OpenVLA-OFT on a real robot arm with online RL from human labels and a MuJoCo twin",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [f"{n} = vla_robot.nodes.{n}:main" for n in NODES]
        + ["vla-robot = vla_robot.cli:main"],
    },
)
