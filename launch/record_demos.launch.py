"""ros2 launch vla_robot record_demos.launch.py [use_sim:=true] [robot:=so101] [arm_driver:=lerobot|ros2_control]
[policy_server:=tcp://host:5555] [task:=NAME] [instruction:='WORDS'] [config:=/path/params.yaml]

Teleoperated demonstrations: cameras, arm, teleop, episode manager (record mode), recorder.
The nodes come from vla_robot.bringup.graph("record_demos"); `vla-robot launch record_demos` runs the same ones in one process.
"""
from vla_robot.nodes.launching import launch_description

GRAPH = "record_demos"


def generate_launch_description():
    return launch_description(GRAPH)
