"""ros2 launch vla_robot rl_finetune.launch.py [use_sim:=true] [robot:=so101] [arm_driver:=lerobot|ros2_control]
[policy_server:=tcp://host:5555] [task:=NAME] [instruction:='WORDS'] [config:=/path/params.yaml]

Online RL fine-tuning: cameras, arm, policy, teleop (intervention), episode manager, recorder.
The nodes come from vla_robot.bringup.graph("rl_finetune"); `vla-robot launch rl_finetune` runs the same ones in one process.
"""
from vla_robot.nodes.launching import launch_description

GRAPH = "rl_finetune"


def generate_launch_description():
    return launch_description(GRAPH)
