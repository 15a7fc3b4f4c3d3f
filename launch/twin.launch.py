"""ros2 launch vla_robot twin.launch.py [use_sim:=true] [robot:=so101] [arm_driver:=lerobot|ros2_control]
[policy_server:=tcp://host:5555] [task:=NAME] [instruction:='WORDS'] [config:=/path/params.yaml]

The MuJoCo twin: mirror a real arm, or (use_sim:=true) drive the simulated arm from the keyboard.
The nodes come from vla_robot.bringup.graph("twin"); `vla-robot launch twin` runs the same ones in one process.
"""
from vla_robot.nodes.launching import launch_description

GRAPH = "twin"


def generate_launch_description():
    return launch_description(GRAPH)
