"""Turns a bringup graph into a ``launch`` description (used by launch/*.launch.py on a ROS 2 install).

Launch files describe, they do not compute: each declares the shared launch arguments
(:data:`vla_robot.bringup.LAUNCH_ARGUMENTS`) and asks :func:`vla_robot.bringup.graph` for its
nodes once the arguments are known. ``launch`` and ``launch_ros`` are imported only here, so the
rest of the package works without them.
"""
from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_robot.bringup import LAUNCH_ARGUMENTS, NodeSpec, graph_from_launch_arguments


def spec_to_node(spec: NodeSpec) -> Node:
    """One launch_ros Node for one NodeSpec: the same executable, name, parameters and remappings."""
    parameters: list = list(spec.parameters)
    if spec.overrides:
        parameters.append(spec.parameter_dict())
    return Node(
        package=spec.package,
        executable=spec.executable,
        name=spec.name,
        namespace=spec.namespace or None,
        parameters=parameters,
        remappings=list(spec.remappings),
        output="screen",
        emulate_tty=True,
    )


def launch_description(graph_name: str) -> LaunchDescription:
    """The LaunchDescription of bringup graph ``graph_name``."""

    def nodes(context, *_, **__):
        args = {k: LaunchConfiguration(k).perform(context) for k in LAUNCH_ARGUMENTS}
        return [spec_to_node(s) for s in graph_from_launch_arguments(graph_name, args)]

    declared = [DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=nodes)])
