"""ros2 launch vla_robot evaluate.launch.py [use_sim:=true] [robot:=so101] [arm_driver:=lerobot|ros2_control]
[policy_server:=tcp://host:5555] [task:=NAME] [instruction:='WORDS'] [config:=/path/params.yaml]

Labelled evaluation episodes: cameras, arm, policy, teleop, episode manager (evaluate mode), recorder.
The nodes come from vla_robot.bringup.graph("evaluate"); `vla-robot launch evaluate` runs the same ones in one process.
"""
from vla_robot.nodes.launching import launch_description

GRAPH = "evaluate"


def generate_launch_description():
    return launch_description(GRAPH)
