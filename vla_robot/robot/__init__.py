"""The robot as the stack drives it: joint names in policy order mapped to the hardware's, limits,
home pose and gripper interface (:mod:`vla_robot.robot.description`). ROS-free."""
from vla_robot.robot.description import (
    GRIPPER_INTERFACES,
    DescriptionError,
    GripperDescription,
    JointDescription,
    RobotDescription,
    load_description,
    reorder_joints,
    resolve_description,
)

__all__ = ["GRIPPER_INTERFACES", "DescriptionError", "GripperDescription", "JointDescription", "RobotDescription",
           "load_description", "reorder_joints", "resolve_description"]
