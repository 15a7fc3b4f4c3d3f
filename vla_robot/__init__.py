"""vla_robot: OpenVLA-OFT on a real robot arm, improved there by online RL from human labels.

The package root stays light: importing it loads neither rclpy nor torch. Import the part you need
(``vla_robot.policy``, ``vla_robot.serving.client``, ``vla_robot.control`` …).
"""
__version__ = "0.1.0"
